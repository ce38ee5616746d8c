//! Real Linux microVMs booted by duet's own VMM, inside the nested-KVM
//! testbed (tests/testbed/run): this host's /dev/kvm cannot boot Linux (see
//! `duet doctor`), the testbed's can. One testbed boot runs every case in
//! tests/testbed/vm-cases.sh; each test below checks one case.

mod common;
use common::testbed::{self, Case};
use common::timing_phases;
use std::collections::BTreeMap;
use std::sync::OnceLock;

static CASES: OnceLock<Result<BTreeMap<String, Case>, String>> = OnceLock::new();
const SCRIPT: &str = "vm-cases.sh";

/// The case `name`, or None when the test must skip. util-linux's
/// `script`, where this host has it, goes in too: it gives `duet run -t`
/// a terminal (the cases that need it say so without it).
fn case(test: &str, name: &str) -> Option<&'static Case> {
    let extra: Vec<String> = duet_shared::testing::find_program("script")
        .map(|p| vec!["--with-libs".to_string(), p.display().to_string()])
        .unwrap_or_default();
    testbed::case_with(test, &CASES, SCRIPT, name, &extra)
}

/// Every case, once the testbed ran (call after [`case`] returned Some).
fn cases() -> &'static Result<BTreeMap<String, Case>, String> {
    CASES.get().expect("case() ran the testbed first")
}

#[test]
fn vm_echo() {
    let Some(c) = case("vm_echo", "echo") else {
        return;
    };
    assert_eq!((c.rc, c.output.as_str()), (0, "hi\n"));
}

#[test]
fn vm_exit_status_propagates() {
    let Some(c) = case("vm_exit_status_propagates", "exit7") else {
        return;
    };
    assert_eq!(c.rc, 7, "{}", c.output);
}

#[test]
fn vm_runs_its_own_kernel() {
    let Some(c) = case("vm_runs_its_own_kernel", "uname") else {
        return;
    };
    let outer = &cases().as_ref().unwrap()["outer_uname"];
    assert_eq!(c.rc, 0, "{}", c.output);
    let guest = c.output.trim();
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(!guest.is_empty());
    assert_ne!(guest, outer.output.trim(), "guest kernel = testbed kernel");
    assert_ne!(guest, host.trim(), "guest kernel = host kernel");
}

#[test]
fn vm_env_workdir_hostname_from_spec() {
    let Some(c) = case("vm_env_workdir_hostname_from_spec", "envwd") else {
        return;
    };
    assert_eq!((c.rc, c.output.as_str()), (0, "hello there\n/tmp\nenvwd\n"));
}

#[test]
fn vm_two_vcpus() {
    let Some(c) = case("vm_two_vcpus", "vcpus2") else {
        return;
    };
    assert_eq!((c.rc, c.output.trim()), (0, "2"));
}

#[test]
fn vm_memory_size() {
    let Some(c) = case("vm_memory_size", "mem256") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    let kb: u64 = c.output.split_whitespace().nth(1).unwrap().parse().unwrap();
    // The kernel keeps some of the 256 MiB for itself.
    assert!((200 * 1024..=256 * 1024).contains(&kb), "MemTotal {kb} kB");
}

#[test]
fn vm_missing_command_is_127() {
    let Some(c) = case("vm_missing_command_is_127", "missing_cmd") else {
        return;
    };
    assert_eq!(c.rc, 127, "{}", c.output);
    assert!(c.output.contains("/no/such/program"), "{}", c.output);
}

#[test]
fn vm_timings_name_vm_phases() {
    let Some(c) = case("vm_timings_name_vm_phases", "timings") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert_eq!(
        timing_phases(&c.output),
        [
            "start",
            "spec_loaded",
            "rootfs_ready",
            "vm_created",
            "kernel_loaded",
            "vcpus_started",
            "ready",
            "exited",
            "cleaned_up"
        ],
        "{}",
        c.output
    );
}

#[test]
fn vm_timeout_stops_a_hung_guest() {
    let Some(c) = case("vm_timeout_stops_a_hung_guest", "timeout") else {
        return;
    };
    assert_eq!(c.rc, 137, "{}", c.output);
    assert!(c.output.contains("timeout"), "{}", c.output);
}

#[test]
fn vm_guest_panic_is_an_error_with_console_lines() {
    let Some(c) = case("vm_guest_panic_is_an_error_with_console_lines", "panic") else {
        return;
    };
    assert_ne!(c.rc, 0, "{}", c.output);
    assert!(
        c.output.contains("Kernel panic"),
        "the last console lines should show the panic:\n{}",
        c.output
    );
}

#[test]
fn vm_kernel_log_only_with_console() {
    let Some(quiet) = case("vm_kernel_log_only_with_console", "quiet") else {
        return;
    };
    assert_eq!((quiet.rc, quiet.output.as_str()), (0, "only-this\n"));
    let c = &cases().as_ref().unwrap()["console"];
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(
        c.output.contains("Linux version"),
        "--console shows the kernel log:\n{}",
        c.output
    );
    assert!(c.output.contains("after-boot"), "{}", c.output);
}

#[test]
fn vm_runs_leave_no_instances() {
    let Some(c) = case("vm_runs_leave_no_instances", "leftovers") else {
        return;
    };
    assert_eq!(c.output.trim(), "0");
}

// --- issue 4: the guest's root on virtio-blk disks --------------------------

/// The value of counter `name` in a `--timings` table.
fn counter(output: &str, name: &str) -> Option<u64> {
    output.lines().find_map(|l| {
        l.trim()
            .strip_prefix(name)?
            .strip_prefix(": ")?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn vm_disk_root_is_an_overlay_of_layer_disks() {
    let Some(c) = case("vm_disk_root_is_an_overlay_of_layer_disks", "disk_first") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(c.output.contains("disk-root-ok"), "{}", c.output);
    let root = c
        .output
        .lines()
        .find(|l| l.starts_with("overlay / overlay"))
        .unwrap_or_else(|| panic!("no overlay root in /proc/mounts:\n{}", c.output));
    assert!(
        root.contains("/duet/layers/0,upperdir=/duet/scratch/upper,workdir=/duet/scratch/work"),
        "{root}"
    );
    // One disk per layer plus the scratch disk.
    let built = counter(&c.output, "layer_images_built").expect("layer_images_built");
    assert_eq!(
        counter(&c.output, "rootfs_disks"),
        Some(built + 1),
        "{}",
        c.output
    );
}

#[test]
fn vm_layer_image_is_built_once_and_reused() {
    let Some(first) = case("vm_layer_image_is_built_once_and_reused", "disk_first") else {
        return;
    };
    let second = &cases().as_ref().unwrap()["disk_second"];
    assert_eq!(second.rc, 0, "{}", second.output);
    let built = counter(&first.output, "layer_images_built");
    assert!(built.is_some_and(|n| n >= 1), "{}", first.output);
    assert_eq!(
        counter(&second.output, "layer_images_built"),
        Some(0),
        "{}",
        second.output
    );
}

#[test]
fn vm_writes_land_on_the_scratch_disk_not_the_layer() {
    let Some(c) = case(
        "vm_writes_land_on_the_scratch_disk_not_the_layer",
        "disk_keep",
    ) else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    for want in ["landed-marker-42", "layer-unchanged", "scratch-has-it"] {
        assert!(c.output.contains(want), "no {want}:\n{}", c.output);
    }
    assert!(!c.output.contains("layer-has-it"), "{}", c.output);
    // The 1 GiB scratch disk costs its ext4 metadata plus what was written.
    let kib: u64 = c
        .output
        .lines()
        .find_map(|l| l.strip_prefix("scratch allocated "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no allocation line:\n{}", c.output));
    assert!(kib < 8 * 1024, "scratch disk allocates {kib} KiB");
}

#[test]
fn vm_two_vms_share_one_layer_file_and_see_pristine_data() {
    let Some(c) = case(
        "vm_two_vms_share_one_layer_file_and_see_pristine_data",
        "disk_two_vms",
    ) else {
        return;
    };
    // Per layer file: the inode each VM's duet holds open.
    let mut by_path: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for l in c.output.lines() {
        if let Some(rest) = l.strip_prefix("layer-inode ") {
            let w: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!(w.len(), 3, "{l}");
            by_path.entry(w[1]).or_default().push((w[0], w[2]));
        }
    }
    assert!(!by_path.is_empty(), "no layer disks open:\n{}", c.output);
    for (path, holders) in &by_path {
        assert_eq!(
            holders.len(),
            2,
            "{path} should be open in both VMs:\n{}",
            c.output
        );
        assert_ne!(holders[0].0, holders[1].0, "two different duet processes");
        assert_eq!(holders[0].1, holders[1].1, "{path}: different inodes");
    }
    assert!(
        c.output.contains("a rc=0") && c.output.contains("a: 1"),
        "{}",
        c.output
    );
    // B sees no trace of A's write, and the image's own /etc/hosts.
    assert!(c.output.contains("b rc=0"), "{}", c.output);
    let b: Vec<&str> = c
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("b: "))
        .collect();
    assert_eq!(b.len(), 2, "{}", c.output);
    assert_eq!(b[0], "0", "B saw A's write:\n{}", c.output);
    assert_ne!(
        b[1], "0",
        "B's /etc/hosts lost its localhost lines:\n{}",
        c.output
    );
}

// --- issue 9 class 8: the VMM is jailed -------------------------------------

/// The words after `prefix` on each line that starts with it.
fn lines_after<'a>(output: &'a str, prefix: &str) -> Vec<&'a str> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .collect()
}

#[test]
fn vm_jailed_vmm_holds_no_capabilities_own_namespaces_and_only_its_files() {
    let Some(c) = case(
        "vm_jailed_vmm_holds_no_capabilities_own_namespaces_and_only_its_files",
        "jail_inspect",
    ) else {
        return;
    };
    let out = &c.output;
    assert_eq!(c.rc, 0, "{out}");
    assert!(out.contains("rc=0") && out.contains("guest-done"), "{out}");
    // A child of duet (not duet itself), as an unprivileged uid from the
    // jail range, in no supplementary group.
    let vmm = lines_after(out, "vmm-pid ");
    assert_eq!(vmm.len(), 1, "{out}");
    let w: Vec<&str> = vmm[0].split_whitespace().collect();
    assert_eq!(w[1], "parent", "{out}");
    let field = |name: &str| -> Vec<&str> {
        lines_after(out, name)
            .first()
            .unwrap_or_else(|| panic!("no {name} in\n{out}"))
            .split_whitespace()
            .collect()
    };
    for ids in [field("Uid:"), field("Gid:")] {
        assert_eq!(ids.len(), 4, "{out}");
        let id: u32 = ids[0].parse().unwrap();
        assert!((900_000..1_000_000).contains(&id), "{out}");
        assert!(ids.iter().all(|i| *i == ids[0]), "{out}");
    }
    assert!(field("Groups:").is_empty(), "{out}");
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(set), vec!["0000000000000000"], "{set}\n{out}");
    }
    assert_eq!(field("NoNewPrivs:"), vec!["1"], "{out}");
    // Namespaces of its own, except user and cgroup (it stays in duet's cgroup).
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        assert!(out.contains(&format!("ns {ns} own")), "{ns}\n{out}");
    }
    assert!(out.contains("ns user shared"), "{out}");
    // Its root: the kernel, the initrd, the disks and /dev/kvm, nothing else.
    let root = lines_after(out, "root ");
    let mut layers = 0;
    for entry in &root {
        match *entry {
            "." | "./dev" | "./dev/kvm" | "./kernel" | "./initrd" => {}
            e if e.starts_with("./disk") && e.ends_with("-layer.erofs") => layers += 1,
            e if e.starts_with("./disk") && e.ends_with("-scratch.ext4") => {}
            e => panic!("unexpected {e} in the jail's root:\n{out}"),
        }
    }
    assert!(layers >= 1, "{out}");
    assert_eq!(root.len(), 5 + layers + 1, "{out}");
    // Descriptors: stdio, its pipes to duet, KVM, eventfds, disks, the two
    // /proc files; never the caller's fd 7 (the outer root directory).
    for fd in lines_after(out, "fd ") {
        let (n, target) = fd.split_once(' ').unwrap_or((fd, ""));
        let n: u32 = n.parse().unwrap();
        assert_ne!(target, "/", "the caller's fd reached the VMM:\n{out}");
        let expected = n <= 2
            || target.starts_with("pipe:[")
            || target.starts_with("anon_inode:kvm-vm")
            || target.starts_with("anon_inode:kvm-vcpu:")
            || target == "anon_inode:[eventfd]"
            || target == "/dev/kvm"
            // The agent socket's listener (bound outside the jail, issue 10).
            || target.starts_with("socket:[")
            || (target.starts_with("/disk") && target.contains('-'))
            || target.ends_with("/smaps")
            || target.ends_with("/status");
        assert!(expected, "unexpected VMM fd {fd}:\n{out}");
    }
    assert!(out.contains("outer-mounts-under-instances 0"), "{out}");
}

fn assert_stopped_cleanly(c: &Case, rc: i32) {
    let out = &c.output;
    assert_eq!(c.rc, 0, "{out}");
    assert!(out.contains(&format!("duet rc={rc}")), "{out}");
    assert!(out.contains("vmm-gone"), "the VMM outlived duet:\n{out}");
    assert!(out.contains("instances-after-gc 0"), "{out}");
    assert!(out.contains("mounts-left 0"), "{out}");
    assert!(out.contains("processes-left 0"), "{out}");
}

#[test]
fn vm_sigterm_stops_the_jailed_vmm_and_cleans_up() {
    let Some(c) = case(
        "vm_sigterm_stops_the_jailed_vmm_and_cleans_up",
        "vm_sigterm",
    ) else {
        return;
    };
    assert_stopped_cleanly(c, 128 + 15);
    assert!(c.output.contains("instances-before-gc 0"), "{}", c.output);
}

#[test]
fn vm_sigint_stops_the_jailed_vmm_and_cleans_up() {
    let Some(c) = case("vm_sigint_stops_the_jailed_vmm_and_cleans_up", "vm_sigint") else {
        return;
    };
    assert_stopped_cleanly(c, 128 + 2);
    assert!(c.output.contains("instances-before-gc 0"), "{}", c.output);
}

#[test]
fn vm_kill9_of_duet_takes_the_jailed_vmm_and_gc_cleans_up() {
    let Some(c) = case(
        "vm_kill9_of_duet_takes_the_jailed_vmm_and_gc_cleans_up",
        "vm_kill9",
    ) else {
        return;
    };
    assert_stopped_cleanly(c, 128 + 9);
    // kill -9 leaves the instance directory until gc.
    assert!(c.output.contains("instances-before-gc 1"), "{}", c.output);
}

/// A line `<prefix><value>` of a case's output, the value trimmed.
fn value_of<'a>(c: &'a Case, prefix: &str) -> &'a str {
    c.output
        .lines()
        .find_map(|l| l.trim_end().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line:\n{}", c.output))
        .trim()
}

#[test]
fn vm_pids_max_stops_a_fork_bomb() {
    let Some(c) = case("vm_pids_max_stops_a_fork_bomb", "vm_pids") else {
        return;
    };
    // The guest init's workload cgroup carries the spec's limit...
    assert_eq!(
        c.output.lines().next().map(str::trim),
        Some("8"),
        "{}",
        c.output
    );
    // ...and the shell cannot fork past it.
    assert!(!c.output.contains("spawned=40"), "{}", c.output);
    assert!(c.output.contains("fork"), "{}", c.output);
    assert_ne!(c.rc, 0, "{}", c.output);
}

#[test]
fn vm_initramfs_root_boots() {
    let Some(c) = case("vm_initramfs_root_boots", "vm_initramfs_root") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(c.output.contains("initramfs-root-ok"), "{}", c.output);
    // No virtio-blk disk: the root is the initramfs itself.
    assert!(!c.output.contains("/dev/vd"), "{}", c.output);
    let lines: Vec<&str> = c.output.lines().collect();
    let ok = lines
        .iter()
        .position(|l| l.trim() == "initramfs-root-ok")
        .unwrap();
    assert_eq!(
        lines[ok - 1].trim(),
        "0",
        "virtio disks seen:\n{}",
        c.output
    );
}

/// One signal case: the workload ran, duet exited with `rc`, nothing is left.
fn signal_case(test: &str, name: &str, rc: &str) {
    let Some(c) = case(test, name) else {
        return;
    };
    assert!(c.output.contains("workload-running"), "{}", c.output);
    assert_eq!(
        value_of(c, "instances while running: "),
        "1",
        "{}",
        c.output
    );
    assert_eq!(value_of(c, "duet rc="), rc, "{}", c.output);
    for left in [
        "instances left: ",
        "duet processes left: ",
        "mounts left: ",
        "cgroups left: ",
    ] {
        assert_eq!(value_of(c, left), "0", "{left}\n{}", c.output);
    }
}

#[test]
fn vm_sigint_stops_the_vm_and_cleans_up() {
    signal_case("vm_sigint_stops_the_vm_and_cleans_up", "vm_sigint", "130");
}

#[test]
fn vm_sigterm_stops_the_vm_and_cleans_up() {
    signal_case("vm_sigterm_stops_the_vm_and_cleans_up", "vm_sigterm", "143");
}

#[test]
fn vm_kill_9_leaves_what_gc_removes() {
    let test = "vm_kill_9_leaves_what_gc_removes";
    signal_case(test, "vm_kill9", "137");
    if let Some(c) = case(test, "vm_kill9") {
        assert_eq!(
            value_of(c, "instances after kill -9: "),
            "1",
            "{}",
            c.output
        );
        assert_eq!(value_of(c, "gc rc="), "0", "{}", c.output);
    }
}

/// `duet bench isolation` with a VM column, measured in a real VM: the
/// guest's own kernel, hostname and processes, and no host canary.
#[test]
fn vm_bench_isolation_has_a_vm_column() {
    let Some(c) = case("vm_bench_isolation_has_a_vm_column", "vm_bench_isolation") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    let json = &c.output[c.output.find('{').expect("a JSON report")..];
    let r: duet_bench::report::Report = serde_json::from_str(json).expect("a bench report");
    let t = r.isolation.expect("an isolation table");
    assert_eq!(t.columns, ["host", "duet vm"], "{:?}", t.missing);
    assert!(t.missing.is_empty(), "{:?}", t.missing);
    use duet_bench::isolation::Verdict;
    for fact in ["kernel", "hostname (UTS)", "processes", "host canary file"] {
        let row = t
            .rows
            .iter()
            .find(|row| row.fact == fact)
            .unwrap_or_else(|| panic!("no {fact} row"));
        assert_eq!(
            row.cells[1].verdict,
            Some(Verdict::Isolated),
            "{fact}: {row:?}"
        );
    }
}

#[test]
fn vm_detached_run_ps_logs_stop_wait_rm() {
    let Some(c) = case("vm_detached_run_ps_logs_stop_wait_rm", "vm_detached") else {
        return;
    };
    let out = &c.output;
    assert_eq!(c.rc, 0, "{out}");
    assert!(
        out.lines().next().is_some_and(|l| l.starts_with("vmd-")),
        "run -d prints the id first: {out}"
    );
    assert!(
        out.contains("ps: vmd ") && out.contains(" running ") && out.contains(" vm "),
        "{out}"
    );
    assert!(out.contains("logs: vm-up"), "{out}");
    assert!(
        out.contains("vmm-running") && out.contains("stopped") && out.contains("vmm-gone"),
        "{out}"
    );
    assert!(out.contains("exec: hi-from-exec"), "{out}");
    assert!(out.contains("exec-rc 7"), "{out}");
    // The workload ignores SIGTERM (delivered inside the guest by the
    // agent): stop kills it after the 3 s grace period.
    let took: u64 = value_of(c, "stop-took ").parse().unwrap();
    assert!(
        took >= 2,
        "stopped after {took} s, before the grace period: {out}"
    );
    assert!(out.contains("wait: 137"), "{out}");
    assert!(
        out.contains("ps-a: vmd ") && out.contains("killed by SIGKILL"),
        "{out}"
    );
    assert!(
        out.contains("removed") && out.contains("instances-left 0"),
        "{out}"
    );
}

#[test]
fn vm_detached_lost_monitor_takes_the_vmm_and_gc_cleans_up() {
    let Some(c) = case(
        "vm_detached_lost_monitor_takes_the_vmm_and_gc_cleans_up",
        "vm_detached_lost",
    ) else {
        return;
    };
    let out = &c.output;
    assert!(out.contains("vmm-gone"), "{out}");
    assert!(
        out.contains("ps: vml ") && out.contains("monitor lost"),
        "{out}"
    );
    assert!(
        out.contains("gc-ok") && out.contains("instances-left 0"),
        "{out}"
    );
    assert!(out.contains("cgroups-left 0"), "{out}");
}

#[test]
fn vm_detached_restart_on_failure_boots_again() {
    let Some(c) = case(
        "vm_detached_restart_on_failure_boots_again",
        "vm_detached_restart",
    ) else {
        return;
    };
    let out = &c.output;
    assert!(out.contains("wait: 3"), "{out}");
    assert!(out.contains("boots: 2"), "first boot + one restart: {out}");
    assert!(out.contains("restarts: 1"), "{out}");
    assert!(
        out.contains("ps-a: vmr ") && out.contains("exited 3"),
        "{out}"
    );
    assert!(out.contains("removed"), "{out}");
}

// --- issue 10: duet exec / duet kill into a running microVM -------------------

#[test]
fn vm_exec_becomes_ready_on_a_running_vm() {
    let Some(c) = case("vm_exec_becomes_ready_on_a_running_vm", "exec_ready") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(
        c.output.contains("agent.sock mode srw-------"),
        "{}",
        c.output
    );
}

#[test]
fn vm_exec_echo_prints_hi() {
    let Some(c) = case("vm_exec_echo_prints_hi", "exec_echo") else {
        return;
    };
    assert_eq!((c.rc, c.output.as_str()), (0, "hi\n"));
}

#[test]
fn vm_exec_exit_status_propagates() {
    let Some(c) = case("vm_exec_exit_status_propagates", "exec_exit7") else {
        return;
    };
    assert_eq!(c.rc, 7, "{}", c.output);
}

#[test]
fn vm_exec_missing_command_is_127() {
    let Some(c) = case("vm_exec_missing_command_is_127", "exec_missing") else {
        return;
    };
    assert_eq!(c.rc, 127, "{}", c.output);
    assert!(c.output.contains("command not found: nope"), "{}", c.output);
}

#[test]
fn vm_exec_tty_gets_a_guest_pty() {
    let Some(c) = case("vm_exec_tty_gets_a_guest_pty", "exec_tty") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(c.output.trim().starts_with("/dev/pts/"), "{:?}", c.output);
}

/// `duet run -t` in a microVM: the guest's console is the workload's
/// terminal (at 24x80: script(1)'s pty has no size of its own), and what is
/// typed reaches an interactive shell there, whose exit status is duet's.
#[test]
fn vm_run_t_gives_the_workload_the_console_as_its_terminal() {
    let test = "vm_run_t_gives_the_workload_the_console_as_its_terminal";
    if duet_shared::testing::skip_unless_program(test, "script", "util-linux") {
        return;
    }
    let Some(c) = case(
        "vm_run_t_gives_the_workload_the_console_as_its_terminal",
        "run_tty",
    ) else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    for want in ["stdin-is-a-tty\n", "24 80\n", "TERM=xterm\n"] {
        assert!(c.output.contains(want), "{want:?} in {:?}", c.output);
    }
    let c = &cases().as_ref().unwrap()["run_tty_typed"];
    assert_eq!(c.rc, 5, "{}", c.output);
    assert!(c.output.contains("typed-42"), "{:?}", c.output);
}

#[test]
fn vm_exec_sees_the_workloads_root() {
    let Some(c) = case("vm_exec_sees_the_workloads_root", "exec_root") else {
        return;
    };
    assert_eq!((c.rc, c.output.as_str()), (0, "written-by-the-workload\n"));
}

#[test]
fn vm_exec_env_and_workdir() {
    let Some(c) = case("vm_exec_env_and_workdir", "exec_env_workdir") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    let lines: Vec<&str> = c.output.lines().collect();
    assert_eq!(lines[..2], ["from-exec", "/tmp"], "{}", c.output);
    // The workload's environment (the image's PATH) is the base.
    assert!(lines[2].contains("/bin"), "{}", c.output);
}

#[test]
fn vm_exec_relays_stdin_with_i_only() {
    let Some(c) = case("vm_exec_relays_stdin_with_i_only", "exec_stdin") else {
        return;
    };
    assert_eq!((c.rc, c.output.as_str()), (0, "line1\nline2\nstdin-done\n"));
    let c = &cases().as_ref().unwrap()["exec_stdin_not_without_i"];
    assert_eq!(c.output, "rc=0\n");
}

#[test]
fn vm_kill_delivers_sigterm_to_the_workload() {
    let Some(c) = case("vm_kill_delivers_sigterm_to_the_workload", "exec_kill") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(c.output.contains("out: got-term"), "{}", c.output);
    assert!(c.output.contains("run rc=3"), "{}", c.output);
}

#[test]
fn vm_exec_after_the_run_is_not_running_and_nothing_is_left() {
    let Some(c) = case(
        "vm_exec_after_the_run_is_not_running_and_nothing_is_left",
        "exec_after_exit",
    ) else {
        return;
    };
    assert_eq!(c.rc, 125, "{}", c.output);
    assert!(
        c.output.contains("no instance `v1`") || c.output.contains("not running"),
        "{}",
        c.output
    );
    let l = &cases().as_ref().unwrap()["exec_leftovers"];
    assert_eq!(
        l.output, "instances 0\nsockets 0\nvmm processes 0\n",
        "{}",
        l.output
    );
}

// --- issue 11: duet-runc --isolation vm (the bundle's rootfs over virtio-fs) ---

#[test]
fn oci_vm_create_start_exec_kill_delete() {
    let Some(c) = case("oci_vm_create_start_exec_kill_delete", "oci_vm_sequence") else {
        return;
    };
    let o = &c.output;
    assert_eq!(c.rc, 0, "{o}");
    for want in [
        "pid-file-written\nstatus created\nstatus running\n",
        "out: vm-up in /tmp as ocivm\n",
        "exec: hello from ocivm in /tmp\n",
        "exec-hosts: 10.1.2.3 from-the-engine\n",
        // Its root is the virtio-fs share, under a kernel of its own.
        "exec-root: duet-root / virtiofs\nguest-kernel-differs\n",
        "exec-rc 7\n",
        // The guest's writes land in the bundle's rootfs on the host.
        "host-sees: written-in-guest\n",
        "host-sees-exec: from-exec\n",
        "detached-rc 0 pid-file yes\n",
        "status stopped\ngot-term\ndeleted\nkeeper-left 0\ndirs-left 0\n",
    ] {
        assert!(o.contains(want), "missing {want:?} in:\n{o}");
    }
    // keeper, VMM and virtiofsd are all in the container's cgroup.
    let n: u32 = o
        .split("ps: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(n >= 3, "ps listed {n} processes:\n{o}");
}

#[test]
fn oci_vm_kill9_of_the_keeper_leaves_nothing() {
    let Some(c) = case("oci_vm_kill9_of_the_keeper_leaves_nothing", "oci_vm_kill9") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(
        c.output
            .ends_with("status stopped\ndeleted\nvirtiofsd-left 0\nvmm-left 0\ncgroups-left 0\n"),
        "{}",
        c.output
    );
}

#[test]
fn oci_vm_kill9_of_the_vmm_stops_the_container_and_leaves_nothing() {
    let Some(c) = case(
        "oci_vm_kill9_of_the_vmm_stops_the_container_and_leaves_nothing",
        "oci_vm_kill9_vmm",
    ) else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(
        c.output.ends_with(
            "vmm-killed\nstatus stopped\ndeleted\nvirtiofsd-left 0\nkeeper-left 0\nsockets-left 0\n"
        ),
        "{}",
        c.output
    );
}

#[test]
fn oci_vm_refuses_a_device_bind_by_field() {
    let Some(c) = case("oci_vm_refuses_a_device_bind_by_field", "oci_vm_refusal") else {
        return;
    };
    let o = &c.output;
    assert!(
        o.contains("mounts[0] (bind of /dev/null on /n)") && o.contains("rc=1\n0\n"),
        "{o}"
    );
}
