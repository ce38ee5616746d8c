//! `duet run --isolation vm` with its jailed VMM, end to end through the CLI
//! on this host: a tiny ELF "kernel" stands in for Linux (this host's KVM
//! runs tiny guests but cannot boot Linux; tests/vm_testbed.rs does that).
//! Exit status, SIGTERM, kill -9 + `duet gc`, and the jail's settings.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A tiny ELF "vmlinux" of `code` at `paddr` ([`duet_vmm::loader::tiny_elf`]).
fn tiny_elf(paddr: u64, code: &[u8]) -> Vec<u8> {
    duet_vmm::loader::tiny_elf(paddr, code, code.len() as u64)
}

/// Says ready, reports exit status 7, then spins until the VMM stops it.
const EXIT7: &[u8] = &[
    0x66, 0xba, 0x10, 0x05, // mov dx, 0x510 (ready)
    0xee, // out dx, al
    0x66, 0xba, 0x14, 0x05, // mov dx, 0x514 (exit)
    0xb8, 0x07, 0x00, 0x00, 0x00, // mov eax, 7
    0xef, // out dx, eax
    0xeb, 0xfe, // jmp $
];

/// Says ready, then halts for good (HLT waits inside KVM with the irqchip).
const WAIT: &[u8] = &[
    0x66, 0xba, 0x10, 0x05, // mov dx, 0x510 (ready)
    0xee, // out dx, al
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt
];

/// Halts for good without saying ready (a guest still booting, as far as
/// the host can tell: console input stays closed).
const HALT: &[u8] = &[
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt
];

/// Says ready (input reaches a guest from its ready write on, as duet-init
/// writes it right before the workload starts), waits for a byte on COM1,
/// echoes it, exits with it as status.
const ECHO_BYTE: &[u8] = &[
    0x66, 0xba, 0x10, 0x05, // mov dx, 0x510 (ready)
    0xee, // out dx, al
    0x66, 0xba, 0xfd, 0x03, // 5: mov dx, 0x3fd (line status)
    0xec, // in al, dx
    0xa8, 0x01, // test al, 1 (data ready)
    0x74, 0xf7, // jz 5
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xec, // in al, dx
    0x88, 0xc3, // mov bl, al
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x88, 0xd8, // mov al, bl
    0xee, // out dx, al (echo)
    0x0f, 0xb6, 0xc3, // movzx eax, bl
    0x66, 0xba, 0x14, 0x05, // mov dx, 0x514 (exit)
    0xef, // out dx, eax
    0xeb, 0xfe, // jmp $
];

/// Whether this host can run these tests; skips (see [`skip`]) otherwise.
fn can_run(test: &str) -> bool {
    if skip_unless_root(test) {
        return false;
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        skip(test, &format!("needs /dev/kvm ({e})"));
        return false;
    }
    if !duet_bin().with_file_name("duet-init").is_file() {
        skip(
            test,
            "needs duet-init beside duet (cargo build --workspace)",
        );
        return false;
    }
    true
}

/// `duet run --isolation vm --name NAME EXTRA.. busybox -- true` booting `kernel`.
fn vm_cmd(env: &Env, kernel: &Path, name: &str, extra: &[&str]) -> Command {
    let mut args = vec!["run", "--isolation", "vm", "--name", name, "--memory", "64"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["busybox", "--", "true"]);
    let mut c = env.cmd(&args);
    c.env("DUET_KERNEL", kernel)
        .env("DUET_INIT", duet_bin().with_file_name("duet-init"))
        .env_remove("DUET_VMM_JAIL")
        .env_remove("DUET_VMM_UID")
        .env_remove("DUET_VMM_GID");
    c
}

fn write_kernel(env: &Env, code: &[u8]) -> PathBuf {
    let k = env.root().join("tiny-vmlinux");
    std::fs::write(&k, tiny_elf(0x100_0000, code)).unwrap();
    k
}

/// The jailed VMM's PID once it runs the guest (privileges dropped).
fn jailed_vmm(env: &Env, duet: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for id in env.instances() {
            let f = env.root().join("instances").join(id).join("vmm.pid");
            let Ok(p) = std::fs::read_to_string(&f) else {
                continue;
            };
            let Ok(pid) = p.trim().parse::<i32>() else {
                continue;
            };
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if duet_vmm::jail::status_is_jailed(&s) {
                return pid;
            }
        }
        if let Some(st) = duet.try_wait().unwrap() {
            panic!("duet ended ({st}) before its VMM was jailed");
        }
        assert!(Instant::now() < deadline, "no jailed VMM appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The VMM runs in `duet/<instance id>` (below duet's caller's cgroup), with
/// memory limited to the guest's 64 MiB plus the VMM's headroom.
fn assert_vmm_in_its_instance_cgroup(env: &Env, vmm: i32) {
    let id = env.instances().pop().expect("one instance");
    let cg = std::fs::read_to_string(format!("/proc/{vmm}/cgroup")).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let memory = cg
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, list, path) = (f.next()?, f.next()?, f.next()?);
            let v1 = list.split(',').any(|c| c == "memory");
            let v2 = list.is_empty() && !mounts.contains(" - cgroup cgroup rw,memory");
            (v1 || v2).then(|| path.to_string())
        })
        .expect("a memory cgroup line");
    assert!(
        memory.ends_with(&format!("/duet/{id}")),
        "the VMM is not in its instance's cgroup: {memory}\n{cg}"
    );
    let dir = cgroups_named(id.split('-').next().unwrap())
        .into_iter()
        .find(|d| {
            d.ends_with(&id)
                && (d.join("memory.max").exists() || d.join("memory.limit_in_bytes").exists())
        })
        .expect("the VMM's memory cgroup directory");
    let limit = std::fs::read_to_string(dir.join("memory.max"))
        .or_else(|_| std::fs::read_to_string(dir.join("memory.limit_in_bytes")))
        .unwrap();
    let want = (64 + duet_vmm::runtime::VMM_CGROUP_HEADROOM_MIB) << 20;
    assert_eq!(limit.trim(), want.to_string(), "{}", dir.display());
}

/// Whether `pid` is gone (or reused by something that is not a jailed VMM).
fn gone_within(pid: i32, t: Duration) -> bool {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if !duet_vmm::jail::status_is_jailed(&s) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn jailed_vm_reports_the_guest_exit_status_jailed_and_unjailed() {
    let test = "jailed_vm_reports_the_guest_exit_status_jailed_and_unjailed";
    if !can_run(test) {
        return;
    }
    let env = Env::new();
    let kernel = write_kernel(&env, EXIT7);
    let o = vm_cmd(&env, &kernel, "exit7", &["--timings"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert!(err.contains("jail_uid"), "the run was not jailed:\n{err}");
    let o = vm_cmd(&env, &kernel, "exit7", &["--timings"])
        .env("DUET_VMM_JAIL", "off")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert!(!err.contains("jail_uid"), "{err}");
    env.assert_clean("exit7");
}

#[test]
fn sigterm_to_duet_stops_the_jailed_vmm_and_leaves_nothing() {
    let test = "sigterm_to_duet_stops_the_jailed_vmm_and_leaves_nothing";
    if !can_run(test) {
        return;
    }
    let env = Env::new();
    let kernel = write_kernel(&env, WAIT);
    let mut duet = vm_cmd(&env, &kernel, "term", &[]).spawn().unwrap();
    let vmm = jailed_vmm(&env, &mut duet);
    assert_ne!(vmm as u32, duet.id(), "the VMM is a process of its own");
    assert_vmm_in_its_instance_cgroup(&env, vmm);
    // SAFETY: plain kill of our child.
    assert_eq!(unsafe { libc::kill(duet.id() as i32, libc::SIGTERM) }, 0);
    let st = duet.wait().unwrap();
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{st}");
    assert!(
        gone_within(vmm, Duration::from_secs(10)),
        "VMM {vmm} outlived duet"
    );
    env.assert_clean("term");
}

#[test]
fn kill9_of_duet_takes_the_jailed_vmm_and_gc_cleans_up() {
    let test = "kill9_of_duet_takes_the_jailed_vmm_and_gc_cleans_up";
    if !can_run(test) {
        return;
    }
    let env = Env::new();
    let kernel = write_kernel(&env, WAIT);
    let mut duet = vm_cmd(&env, &kernel, "nine", &[]).spawn().unwrap();
    let vmm = jailed_vmm(&env, &mut duet);
    duet.kill().unwrap(); // SIGKILL
    duet.wait().unwrap();
    assert!(
        gone_within(vmm, Duration::from_secs(10)),
        "VMM {vmm} outlived a killed duet (parent-death signal)"
    );
    assert_eq!(
        env.instances().len(),
        1,
        "kill -9 leaves the instance to gc"
    );
    let o = env.run(&["gc"]);
    assert!(o.status.success(), "{}", stderr(&o));
    env.assert_clean("nine");
}

#[test]
fn bad_jail_settings_are_refused_before_any_vm() {
    let test = "bad_jail_settings_are_refused_before_any_vm";
    if !can_run(test) {
        return;
    }
    let env = Env::new();
    let kernel = write_kernel(&env, EXIT7);
    for (var, value, says) in [
        ("DUET_VMM_JAIL", "maybe", "use `on` or `off`"),
        ("DUET_VMM_UID", "0", "not root"),
        ("DUET_VMM_GID", "nobody", "DUET_VMM_GID"),
    ] {
        let o = vm_cmd(&env, &kernel, "badjail", &[])
            .env(var, value)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(125), "{var}={value}: {err}");
        assert!(err.contains(says) && err.contains(var), "{err}");
    }
    env.assert_clean("badjail");
}

#[test]
fn console_input_and_output_cross_the_jail() {
    let test = "console_input_and_output_cross_the_jail";
    if !can_run(test) {
        return;
    }
    let env = Env::new();
    let kernel = write_kernel(&env, ECHO_BYTE);
    let mut child = vm_cmd(&env, &kernel, "echo", &[])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"A").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(i32::from(b'A')), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "A");
    env.assert_clean("echo");
}

#[test]
fn a_vmm_that_does_not_stop_is_killed_after_the_grace() {
    let test = "a_vmm_that_does_not_stop_is_killed_after_the_grace";
    if !can_run(test) {
        return;
    }
    let env = Env::new();
    let kernel = write_kernel(&env, WAIT);
    let mut duet = vm_cmd(&env, &kernel, "stuck", &[]).spawn().unwrap();
    let vmm = jailed_vmm(&env, &mut duet);
    // A stopped VMM cannot act on the SIGTERM duet passes on, as a VMM stuck
    // in device code could not: duet must SIGKILL it after its grace.
    // SAFETY: plain kills of the VMM and of our child.
    unsafe {
        assert_eq!(libc::kill(vmm, libc::SIGSTOP), 0);
        assert_eq!(libc::kill(duet.id() as i32, libc::SIGTERM), 0);
    }
    let t = Instant::now();
    let st = duet.wait().unwrap();
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{st}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(30),
        "killed after {took:?}"
    );
    assert!(gone_within(vmm, Duration::from_secs(10)), "VMM {vmm} left");
    env.assert_clean("stuck");
}

/// Voluntary context switches per thread of `pid`, vCPU threads left out.
fn host_side_switches(pid: i32) -> std::collections::BTreeMap<String, u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"));
    let mut out = std::collections::BTreeMap::new();
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let name = field("Name:").unwrap_or_default();
        if name.starts_with("duet-vcpu") {
            continue;
        }
        let n = field("voluntary_ctxt_switches:").and_then(|v| v.parse().ok());
        if let Some(n) = n {
            out.insert(
                format!("{pid}/{} {name}", t.file_name().to_string_lossy()),
                n,
            );
        }
    }
    out
}

#[test]
fn a_running_vms_host_side_sleeps_instead_of_waking_on_timers() {
    let test = "a_running_vms_host_side_sleeps_instead_of_waking_on_timers";
    if !can_run(test) {
        return;
    }
    let env = Env::new();
    // A guest that never says ready: console input stays closed, the VM
    // runs. On a busy host every wake-up of the VMM's or duet's threads
    // preempts a vCPU; they must wait on fds (the guest's events, the
    // child's exit, a stop signal), not check on timers.
    let kernel = write_kernel(&env, HALT);
    let mut duet = vm_cmd(&env, &kernel, "asleep", &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let vmm = jailed_vmm(&env, &mut duet);
    std::thread::sleep(Duration::from_millis(500));
    let pids = [duet.id() as i32, vmm];
    let sample = || -> std::collections::BTreeMap<String, u64> {
        pids.iter().flat_map(|&p| host_side_switches(p)).collect()
    };
    let before = sample();
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let after = sample();
    assert!(duet.try_wait().unwrap().is_none(), "duet ended early");
    // Per thread, threads present at both looks (none may come or go).
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    let per_thread: Vec<(String, u64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(before[k])))
        .collect();
    // A stop signal wakes the waiting threads at once, not at their next
    // safety-net check (1 s): SIGTERM to the end of duet, VM stopped.
    let t = Instant::now();
    // SAFETY: plain kill of our child.
    assert_eq!(unsafe { libc::kill(duet.id() as i32, libc::SIGTERM) }, 0);
    let st = duet.wait().unwrap();
    let stopped_in = t.elapsed();
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{st}");
    assert!(gone_within(vmm, Duration::from_secs(10)), "VMM {vmm} left");
    env.assert_clean("asleep");
    // What remains are safety nets: the VM's waiting thread and the jail's
    // parent at most once a second, the vsock device's connection timeouts
    // twice a second. A 50 ms timer alone would be 60 in this window.
    let woke: u64 = per_thread.iter().map(|(_, n)| n).sum();
    println!("host threads woke {woke} times in {window:?}: {per_thread:?}; SIGTERM to exit {stopped_in:?}");
    assert!(
        woke <= 25,
        "duet's and its VMM's host threads woke {woke} times in {window:?} of an idle VM: {per_thread:?}"
    );
    assert!(
        stopped_in < Duration::from_millis(700),
        "SIGTERM took {stopped_in:?} to stop the VM"
    );
}
