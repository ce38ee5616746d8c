//! The jailed VMM (duet_vmm::jail), checked from the host while it runs a
//! tiny ELF "kernel" that says ready and then halts (with the in-kernel
//! irqchip, HLT waits inside KVM at no cost): no capabilities, an
//! unprivileged uid, namespaces of its own, a root holding only its kernel,
//! initrd, disks and /dev/kvm, and none of the caller's descriptors.
//! Needs root and a /dev/kvm that runs tiny guests (this host's does).

mod common;
use common::{kvm_usable, tiny_elf};
use duet_shared::report::{Phase, RunReport};
use duet_vmm::devices::virtio::BlockConfig;
use duet_vmm::jail::{self, JailConfig};
use duet_vmm::{ConsoleMode, VmConfig, VmEnd};
use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Files under `dir`, relative, directories included (without following links).
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

#[test]
fn jailed_vmm_has_no_capabilities_own_namespaces_and_an_empty_root() {
    let test = "jailed_vmm_has_no_capabilities_own_namespaces_and_an_empty_root";
    if duet_shared::testing::skip_unless_root(test, "namespaces, mounts, a uid switch") {
        return;
    }
    if !kvm_usable() {
        return;
    }
    // Ready, one console byte, then HLT forever: the VM waits until stopped.
    let code = [
        0x66, 0xba, 0x10, 0x05, // mov dx, 0x510 (ready)
        0xee, // out dx, al
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'j', // mov al, 'j'
        0xee, // out dx, al
        0xf4, // hlt
        0xeb, 0xfd, // jmp hlt
    ];
    std::fs::create_dir_all("/var/tmp/duet-tests").unwrap();
    let dir = tempfile::Builder::new()
        .prefix("jail-")
        .tempdir_in("/var/tmp/duet-tests")
        .unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, tiny_elf(0x100_0000, &code)).unwrap();
    let initrd = dir.path().join("initrd.cpio");
    std::fs::write(&initrd, [0u8; 512]).unwrap();
    let layer = dir.path().join("layer.img");
    std::fs::write(&layer, vec![0u8; 4096]).unwrap();
    let scratch = dir.path().join("scratch.img");
    std::fs::write(&scratch, vec![0u8; 4096]).unwrap();
    let instance = dir.path().join("instance");
    std::fs::create_dir(&instance).unwrap();

    // A descriptor the caller leaves open across everything (no CLOEXEC):
    // the jailed VMM must not hold it.
    let canary = dir.path().join("canary");
    std::fs::write(&canary, "host secret\n").unwrap();
    let c = CString::new(canary.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path; the descriptor is closed at the end of the test.
    let canary_fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
    assert!(canary_fd > 2);

    let cfg = VmConfig {
        snapshots: Default::default(),
        kernel,
        initrd: Some(initrd),
        cmdline: "console=ttyS0".into(),
        memory_mib: 32,
        vcpus: 1,
        timeout: Some(Duration::from_secs(120)),
        console: ConsoleMode::Workload,
        stdin: false,
        disks: vec![
            BlockConfig {
                path: layer,
                read_only: true,
                serial: "layer0".into(),
            },
            BlockConfig {
                path: scratch,
                read_only: false,
                serial: "scratch".into(),
            },
        ],
        agent_socket: Some(instance.join(duet_vmm::agent::SOCKET)),
        fs: Vec::new(),
        net: None,
    };
    let j = JailConfig::for_instance(dir.path(), &instance, "tiny-0123abcd").unwrap();
    let (uid, gid) = (j.uid, j.gid);
    let pid_file = j.pid_file.clone().unwrap();
    let started = Instant::now();
    let vm = std::thread::spawn(move || {
        let mut report = RunReport::start("vm", "tiny", "none");
        let outcome = jail::run_jailed(&cfg, &j, &mut report);
        (outcome, report)
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let pid = loop {
        let p = std::fs::read_to_string(&pid_file).unwrap_or_default();
        if p.trim().parse::<i32>().is_ok() {
            break p.trim().to_string();
        }
        assert!(Instant::now() < deadline, "no {}", pid_file.display());
        std::thread::sleep(Duration::from_millis(5));
    };
    // Jailed, and its vCPU thread running under the seccomp filter as before
    // the jail (the threads start right after the privileges are dropped).
    let seccomp_thread = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("status"))
                    .unwrap_or_default()
                    .contains("Seccomp:\t2")
            })
    };
    let status = loop {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if jail::status_is_jailed(&s) && seccomp_thread() {
            break s;
        }
        assert!(
            Instant::now() < deadline && !vm.is_finished(),
            "the VMM never dropped its privileges or started a filtered vCPU:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let jailed_after = started.elapsed();

    // The agent socket: bound outside the jail, served inside by the vsock
    // thread (accept4 under the seccomp filter: a refused syscall would
    // kill the VMM with SIGSYS). This guest has no vsock driver, so the
    // connection only waits.
    let sock = instance.join(duet_vmm::agent::SOCKET);
    let mut client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    std::io::Write::write_all(&mut client, b"CONNECT 1024\n").unwrap();

    // Credentials: exact ids, no groups, every capability set empty.
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in\n{status}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid:"), vec![uid.to_string().as_str(); 4]);
    assert_eq!(field("Gid:"), vec![gid.to_string().as_str(); 4]);
    assert_eq!(field("Groups:"), Vec::<&str>::new());
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(set), vec!["0000000000000000"], "{set}");
    }
    assert_eq!(field("NoNewPrivs:"), vec!["1"]);
    // Not dumpable: its /proc files belong to root, not to its uid.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(meta.uid(), 0, "the VMM is dumpable");
    // A session of its own (no controlling terminal shared with duet's caller).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let session = after_comm.split_whitespace().nth(3).unwrap();
    assert_eq!(session, pid, "session of the VMM: {stat}");
    // Namespaces: its own mount, pid, net, ipc, uts; the host's user namespace.
    for kind in ["mnt", "pid", "net", "ipc", "uts"] {
        assert_ne!(ns(&pid, kind), ns("self", kind), "{kind} namespace shared");
    }
    assert_eq!(ns(&pid, "user"), ns("self", "user"));

    // Its root: the jail, holding exactly what it boots and /dev/kvm.
    let root = tree(Path::new(&format!("/proc/{pid}/root")));
    let want: BTreeSet<String> = [
        "kernel",
        "initrd",
        "disk0-layer.img",
        "disk1-scratch.img",
        "dev",
        "dev/kvm",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(root, want);
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(
        !mountinfo.lines().any(|l| l.contains(" /proc ")),
        "no /proc in the jail:\n{mountinfo}"
    );

    // Descriptors: stdio, its pipes to duet, KVM, eventfds, the disks and
    // two /proc files opened before the pivot. Not the canary.
    let mut fds = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let n: i32 = e.file_name().to_string_lossy().parse().unwrap();
        let target = std::fs::read_link(e.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        fds.push((n, target));
    }
    let canary_name = canary.display().to_string();
    for (n, target) in &fds {
        assert!(
            !target.contains(&canary_name),
            "fd {n} is the canary: {fds:?}"
        );
        let expected = *n <= 2
            || target.starts_with("pipe:[")
            || target.starts_with("anon_inode:kvm-vm")
            || target.starts_with("anon_inode:kvm-vcpu:")
            || target == "anon_inode:[eventfd]"
            || target == "/dev/kvm"
            || target == "/disk0-layer.img"
            || target == "/disk1-scratch.img"
            || target.starts_with("socket:[")
            || target.ends_with("/smaps")
            || target.ends_with("/status");
        assert!(expected, "unexpected fd {n} -> {target}: {fds:?}");
    }
    assert!(
        fds.iter().any(|(_, t)| t.starts_with("anon_inode:kvm-vm")),
        "{fds:?}"
    );

    // SIGTERM stops the jailed VM like duet's own stop path (after a pause,
    // so the guest's ready write, its first instruction, has been handled).
    std::thread::sleep(Duration::from_millis(200));
    let p: i32 = pid.parse().unwrap();
    // SAFETY: plain kill of the VMM's host PID.
    assert_eq!(unsafe { libc::kill(p, libc::SIGTERM) }, 0);
    let (outcome, report) = vm.join().unwrap();
    let outcome = outcome.unwrap();
    assert_eq!(outcome.end, VmEnd::Interrupted(libc::SIGTERM));
    // The socket went with the run; the waiting client was closed.
    assert!(!sock.exists(), "{} left behind", sock.display());
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut client, &mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        fds.iter().any(|(_, t)| t.starts_with("socket:[")),
        "the agent socket did not reach the jail: {fds:?}"
    );
    for phase in [
        Phase::VmCreated,
        Phase::KernelLoaded,
        Phase::VcpusStarted,
        Phase::Ready,
        Phase::Exited,
    ] {
        assert!(
            report.since_start_ns(phase).is_some(),
            "{phase:?} missing: {report:?}"
        );
    }
    assert_eq!(report.counters["jail_uid"], u64::from(uid));
    assert!(report.counters["jail_setup_us"] > 0);
    assert!(report.counters.contains_key("vmm_rss_kib"), "{report:?}");
    eprintln!(
        "jail setup (namespaces, mounts, pivot_root, privilege drop): {} us; \
         seen jailed from the host after {:?}",
        report.counters["jail_setup_us"], jailed_after
    );

    // Nothing left: no process, no pid file, no mount on the host.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            !jail::status_is_jailed(&s)
        }
    );
    assert!(!pid_file.exists());
    assert!(
        !instance.join("jail").exists(),
        "the empty jail directory is removed"
    );
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains(&dir.path().display().to_string()),
        "a jail mount reached the host"
    );
    // SAFETY: the canary descriptor opened above.
    unsafe { libc::close(canary_fd) };
}

#[test]
fn a_failure_inside_the_jail_comes_back_with_its_cause() {
    let test = "a_failure_inside_the_jail_comes_back_with_its_cause";
    if duet_shared::testing::skip_unless_root(test, "namespaces, mounts, a uid switch") {
        return;
    }
    if !kvm_usable() {
        return;
    }
    std::fs::create_dir_all("/var/tmp/duet-tests").unwrap();
    let dir = tempfile::Builder::new()
        .prefix("jail-")
        .tempdir_in("/var/tmp/duet-tests")
        .unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, tiny_elf(0x100_0000, &[0xf4])).unwrap();
    // 100 bytes: not a whole number of sectors, refused by virtio-blk.
    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, [0u8; 100]).unwrap();
    let cfg = VmConfig {
        snapshots: Default::default(),
        kernel,
        initrd: None,
        cmdline: String::new(),
        memory_mib: 32,
        vcpus: 1,
        timeout: Some(Duration::from_secs(60)),
        console: ConsoleMode::Workload,
        stdin: false,
        disks: vec![BlockConfig {
            path: odd,
            read_only: true,
            serial: "odd".into(),
        }],
        agent_socket: None,
        fs: Vec::new(),
        net: None,
    };
    let instance = dir.path().join("instance");
    std::fs::create_dir(&instance).unwrap();
    let j = JailConfig::for_instance(dir.path(), &instance, "odd-1").unwrap();
    let mut report = RunReport::start("vm", "odd", "none");
    let err = jail::run_jailed(&cfg, &j, &mut report).unwrap_err();
    let mut msg = err.to_string();
    let mut cur = std::error::Error::source(&err);
    while let Some(c) = cur {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cur = c.source();
    }
    assert!(
        msg.contains("jailed VMM") && msg.contains("disk0-odd.img"),
        "{msg}"
    );
}
