//! End-to-end: real containers from a hand-made busybox lower layer.
//!
//! Needs root, overlayfs and /bin/busybox (Debian: busybox-static); each test
//! says why it skips otherwise. Output is captured through files the
//! workload writes into its root, which land in the instance's upper layer.

use duet_container::cgroup::{
    find_instance_dirs, CgroupLayout, CgroupVersion, Controller, Hierarchy, DUET_CGROUP_DIR,
};
use duet_container::{ContainerError, ContainerRuntime};
use duet_shared::image::{Image, ImageConfig};
use duet_shared::{
    InstanceDir, Launch, Phase, RunOptions, RunReport, Runtime, WorkloadExit, WorkloadSpec,
};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const BUSYBOX: &str = "/bin/busybox";

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (namespaces, mounts, cgroups)".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!("needs {BUSYBOX} (apt-get install busybox-static)"));
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.contains("overlay") {
        return Some("needs overlayfs in the kernel".into());
    }
    None
}

/// Returns from the test (after [`duet_shared::testing::skip`]) when it cannot run here.
macro_rules! require_root {
    () => {
        if let Some(why) = skip_reason() {
            if duet_shared::testing::skip(&duet_shared::testing::this_test(), &why) {
                return;
            }
        }
    };
}

/// A lower layer with busybox and its applet links, made once per test
/// binary under cargo's per-target test scratch directory (no /tmp leftovers).
fn lower() -> &'static Path {
    static LOWER: OnceLock<PathBuf> = OnceLock::new();
    LOWER.get_or_init(|| {
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = scratch.join(format!("duet-container-lower-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["bin", "tmp", "etc", "srv/data"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
        let list = std::process::Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
            }
        }
        std::fs::write(dir.join("junk.ko"), b"\x7fELF this is not a kernel module").unwrap();
        std::fs::write(dir.join("etc/pristine"), b"original\n").unwrap();
        // Lowers of earlier test runs whose process is gone are stale: remove them.
        for e in std::fs::read_dir(scratch).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("duet-container-lower-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        dir
    })
}

struct Ran {
    result: Result<WorkloadExit, ContainerError>,
    report: RunReport,
    instance: InstanceDir,
    _root: tempfile::TempDir,
}

impl Ran {
    fn exit(&self) -> WorkloadExit {
        match &self.result {
            Ok(e) => *e,
            Err(e) => panic!("run failed: {e} ({:?})", std::error::Error::source(e)),
        }
    }
    /// A file the workload wrote (from the upper layer).
    fn out(&self, name: &str) -> String {
        std::fs::read_to_string(self.instance.upper().join(name)).unwrap_or_default()
    }
}

fn run_with(command: &[&str], edit: impl FnOnce(&mut WorkloadSpec, &mut RunOptions)) -> Ran {
    let root = tempfile::Builder::new()
        .prefix("duet-root-")
        .tempdir()
        .unwrap();
    let mut spec =
        WorkloadSpec::for_image("busybox", command.iter().map(|s| s.to_string()).collect());
    spec.name = "box".into();
    let mut options = RunOptions::default();
    edit(&mut spec, &mut options);
    let instance = InstanceDir::create(root.path(), &spec.name, "busybox", "container").unwrap();
    let image = Image {
        name: "busybox".into(),
        layers: Vec::new(),
        config: ImageConfig::default(),
        source: None,
    };
    let launch = Launch {
        spec: &spec,
        image: &image,
        layers: vec![lower().to_path_buf()],
        instance: &instance,
        options: &options,
        network: None,
    };
    let mut report = RunReport::start("container", &spec.name, "busybox");
    let result = ContainerRuntime::new().run_container(&launch, &mut report);
    assert_nothing_left(&instance);
    Ran {
        result,
        report,
        instance,
        _root: root,
    }
}

fn run(command: &[&str]) -> Ran {
    run_with(command, |_, _| {})
}

fn sh(script: &str) -> Ran {
    run(&["/bin/sh", "-c", script])
}

/// No cgroup directory and no host-visible mount remain for the instance.
fn assert_nothing_left(instance: &InstanceDir) {
    let layout = CgroupLayout::detect().unwrap();
    for (_, root) in layout.all_roots() {
        let d = root.join(DUET_CGROUP_DIR).join(instance.id());
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(instance.path().to_str().unwrap()),
        "a mount under {} is visible on the host",
        instance.path().display()
    );
}

#[test]
fn echo_pid1_hostname_and_timeline() {
    require_root!();
    let r = sh("echo hi > /out; echo $$ >> /out; hostname >> /out");
    assert_eq!(r.exit(), WorkloadExit::Code(0));
    assert_eq!(r.out("out"), "hi\n1\nbox\n");
    for p in [
        Phase::NamespacesCreated,
        Phase::CgroupApplied,
        Phase::RootfsReady,
        Phase::PivotDone,
        Phase::Ready,
        Phase::Exited,
    ] {
        assert!(
            r.report.since_start_ns(p).is_some(),
            "{p:?} not stamped: {}",
            r.report.table()
        );
    }
    let at = |p| r.report.since_start_ns(p).unwrap();
    assert!(at(Phase::RootfsReady) <= at(Phase::PivotDone));
    assert!(at(Phase::PivotDone) <= at(Phase::Ready));
    assert!(
        at(Phase::CgroupApplied) <= at(Phase::Ready),
        "exec only after the cgroup is joined"
    );
    assert!(at(Phase::Ready) <= at(Phase::Exited));
}

#[test]
fn exit_codes_and_signals() {
    require_root!();
    assert_eq!(sh("exit 7").exit(), WorkloadExit::Code(7));
    assert_eq!(run(&["true"]).exit(), WorkloadExit::Code(0));
    assert_eq!(run(&["false"]).exit(), WorkloadExit::Code(1));
    // A child killed by a signal: the shell reports 128+9.
    let r = sh("sh -c 'kill -9 $$'; echo $? > /out");
    assert_eq!(r.out("out"), "137\n");
}

#[test]
fn timeout_kills_the_workload() {
    require_root!();
    let started = std::time::Instant::now();
    let r = run_with(&["sleep", "30"], |_, o| {
        o.timeout = Some(Duration::from_millis(300))
    });
    assert_eq!(r.exit(), WorkloadExit::Signal(libc::SIGKILL));
    assert_eq!(r.report.counters.get("timed_out"), Some(&1));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn host_processes_are_invisible() {
    require_root!();
    let r = sh("ls /proc | grep -c '^[0-9]' > /out");
    let n: u32 = r.out("out").trim().parse().unwrap();
    // sh, ls, grep (and the subshell) at most.
    assert!(n <= 4, "{n} pids visible");
}

#[test]
fn env_and_workdir() {
    require_root!();
    let r = run_with(
        &[
            "/bin/sh",
            "-c",
            "echo $GREETING > /out; pwd >> /out; echo $PATH >> /out",
        ],
        |s, _| {
            s.env.insert("GREETING".into(), "hello there".into());
            s.workdir = Some("/srv/data".into());
        },
    );
    assert_eq!(r.exit(), WorkloadExit::Code(0));
    assert_eq!(
        r.out("out"),
        "hello there\n/srv/data\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
}

#[test]
fn missing_workdir_is_an_error_naming_it() {
    require_root!();
    let r = run_with(&["true"], |s, _| s.workdir = Some("/no/such/dir".into()));
    let e = r.result.unwrap_err();
    assert!(matches!(e, ContainerError::WorkdirMissing(_)), "{e:?}");
    assert!(e.to_string().contains("/no/such/dir"), "{e}");
}

#[test]
fn missing_command_exits_127() {
    require_root!();
    assert_eq!(run(&["no-such-command"]).exit(), WorkloadExit::Code(127));
    assert_eq!(run(&["/bin/nope"]).exit(), WorkloadExit::Code(127));
    assert_eq!(
        run(&["/etc/pristine"]).exit(),
        WorkloadExit::Code(126),
        "not executable"
    );
}

#[test]
fn memory_limit_kills_with_sigkill() {
    require_root!();
    let r = run_with(
        &[
            "/bin/sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived > /out",
        ],
        |s, _| s.resources.memory_mib = 32,
    );
    assert_eq!(r.exit().shell_code(), 137, "{:?}", r.exit());
    assert_eq!(r.out("out"), "");
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    require_root!();
    let bomb = "i=0; while [ $i -lt 100 ]; do sleep 5 & i=$((i+1)); done 2>/dev/null; ls /proc | grep -c '^[0-9]' > /out";
    // Control: without a limit all 100 start (and die with the pid namespace when sh exits).
    let free = run(&["/bin/sh", "-c", bomb]);
    assert_eq!(free.exit(), WorkloadExit::Code(0));
    let n: u32 = free.out("out").trim().parse().unwrap();
    assert!(n > 100, "only {n} processes without a limit");
    // Limited: busybox sh gives up when fork fails, before it can count.
    let r = run_with(&["/bin/sh", "-c", bomb], |s, _| {
        s.resources.pids_max = Some(16)
    });
    let out = r.out("out");
    match out.trim().parse::<u32>() {
        Ok(n) => assert!(n <= 16, "{n} processes with pids_max 16"),
        Err(_) => assert_ne!(r.exit(), WorkloadExit::Code(0), "fork bomb ran unhindered"),
    }
}

/// A new user namespace needs no capability, so only the seccomp filter
/// (unshare is on its deny list) stops `unshare -U` here.
#[test]
fn seccomp_refuses_a_user_namespace() {
    require_root!();
    let r = sh("unshare -U true 2> /out; echo rc=$? >> /out");
    let out = r.out("out");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.ends_with("rc=1\n"), "{out}");
}

#[test]
fn capabilities_masks_and_readonly_paths() {
    require_root!();
    let r = sh("grep -E 'CapEff|CapBnd|NoNewPrivs|Seccomp:' /proc/self/status > /out; \
         for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug; do [ -e $f ] && echo \"masked $f $(wc -c < $f)\" >> /out; done; \
         echo \"acpi $(ls -A /proc/acpi | wc -l) firmware $(ls -A /sys/firmware | wc -l)\" >> /out; \
         (echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null && echo sys-writable >> /out; \
         touch /sys/x 2>/dev/null && echo sysfs-writable >> /out; \
         ls -l /dev/null /dev/ptmx /dev/pts/ptmx >> /out; \
         mount -t tmpfs none /tmp 2>/dev/null && echo mounted >> /out; echo end >> /out");
    let out = r.out("out");
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    let masked: Vec<&str> = out.lines().filter(|l| l.starts_with("masked ")).collect();
    let on_host = [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
    ]
    .iter()
    .filter(|p| std::fs::read(p).is_ok_and(|b| !b.is_empty()))
    .count();
    assert!(
        on_host == 0 || !masked.is_empty(),
        "masked files not visible at all: {out}"
    );
    assert!(
        masked.iter().all(|l| l.ends_with(" 0")),
        "masked file has content: {out}"
    );
    assert!(
        out.contains("\nacpi 0 firmware 0\n"),
        "/proc/acpi or /sys/firmware not masked: {out}"
    );
    assert!(!out.contains("writable"), "{out}");
    assert!(!out.contains("mounted"), "{out}");
    assert!(out.contains("/dev/ptmx -> pts/ptmx"), "{out}");
    assert!(out.ends_with("end\n"), "{out}");
}

/// CAP_MKNOD is kept (OCI default), but no device node made inside can be opened.
#[test]
fn made_device_nodes_cannot_be_opened() {
    require_root!();
    let r = sh("mknod /tmp/nul c 1 3 && echo made >> /out; \
         echo x 2>> /out > /tmp/nul || echo refused >> /out; \
         mknod /dev/mem2 c 1 1 2>/dev/null || echo dev-read-only >> /out; \
         echo x > /dev/null && head -c 3 /dev/zero | wc -c >> /out; \
         echo x > /dev/shm/f && echo shm-ok >> /out");
    let out = r.out("out");
    assert!(out.contains("made\n"), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    assert!(out.contains("refused\ndev-read-only\n3\nshm-ok\n"), "{out}");
}

#[test]
fn writes_stay_in_the_instance() {
    require_root!();
    let r = sh("echo changed > /etc/pristine; cat /etc/pristine > /out");
    assert_eq!(r.out("out"), "changed\n");
    assert_eq!(
        std::fs::read_to_string(lower().join("etc/pristine")).unwrap(),
        "original\n"
    );
    let r2 = sh("cat /etc/pristine > /out");
    assert_eq!(r2.out("out"), "original\n");
}

#[test]
fn parallel_instances_all_succeed() {
    require_root!();
    let handles: Vec<_> = (0..8)
        .map(|i| std::thread::spawn(move || sh(&format!("echo {i} > /out")).out("out")))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), format!("{i}\n"));
    }
}

/// `duet gc` after a kill -9: processes in a leftover cgroup are killed and the cgroup removed.
#[test]
fn gc_removes_a_leftover_cgroup_with_processes() {
    require_root!();
    let layout = CgroupLayout::detect().unwrap();
    let hier = layout.plan(&[Controller::Memory]).unwrap();
    let id = format!("gc-test-{}", std::process::id());
    let dir = hier[0].mount.join(DUET_CGROUP_DIR).join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
    ContainerRuntime::new().gc_instance(&id).unwrap();
    assert!(!dir.exists());
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}

/// Real cgroup v2 teardown through cgroup.kill, on the host's v2 mount
/// (on the hybrid development hosts it carries no controllers, which teardown does not need).
#[test]
fn v2_teardown_uses_cgroup_kill() {
    require_root!();
    let layout = CgroupLayout::detect().unwrap();
    let Some(v2) = layout.v2.clone() else {
        duet_shared::testing::skip(
            &duet_shared::testing::this_test(),
            "no cgroup2 mount on this host",
        );
        return;
    };
    let id = format!("v2-test-{}", std::process::id());
    let parent = v2.join(DUET_CGROUP_DIR);
    let _ = std::fs::create_dir(&parent);
    let dir = parent.join(&id);
    std::fs::create_dir(&dir).unwrap();
    if !dir.join("cgroup.kill").exists() {
        std::fs::remove_dir(&dir).unwrap();
        duet_shared::testing::skip(
            "v2_teardown_uses_cgroup_kill",
            "kernel without cgroup.kill (< 5.14)",
        );
        return;
    }
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
    duet_container::cgroup::remove_cgroup_dir(CgroupVersion::V2, &dir).unwrap();
    assert!(!dir.exists());
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}

/// Pure-v2 path (clone3 with CLONE_INTO_CGROUP, cgroup.kill teardown) on the
/// host's cgroup2 mount. The hybrid development hosts bind memory/pids/cpu to
/// v1, so this runs without controllers: it proves placement and cleanup,
/// while the v2 limit files are covered by the fixture tests.
#[test]
fn v2_clone_into_cgroup_places_the_init() {
    require_root!();
    let layout = CgroupLayout::detect().unwrap();
    let Some(v2) = layout.v2.clone() else {
        duet_shared::testing::skip(
            &duet_shared::testing::this_test(),
            "no cgroup2 mount on this host",
        );
        return;
    };
    let hier = vec![Hierarchy {
        version: CgroupVersion::V2,
        mount: v2.clone(),
        parent: Default::default(),
        controllers: Vec::new(),
    }];
    let root = tempfile::tempdir().unwrap();
    let spec = WorkloadSpec::for_image("busybox", vec!["sleep".into(), "1".into()]);
    let instance = InstanceDir::create(root.path(), "v2", "busybox", "container").unwrap();
    let dir = v2.join(DUET_CGROUP_DIR).join(instance.id());
    let watcher = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            for _ in 0..300 {
                if let Ok(p) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    if let Some(pid) = p.lines().next() {
                        return std::fs::read_to_string(format!("/proc/{pid}/comm"))
                            .unwrap_or_default();
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            String::new()
        })
    };
    let image = Image {
        name: "busybox".into(),
        layers: Vec::new(),
        config: ImageConfig::default(),
        source: None,
    };
    let options = RunOptions::default();
    let launch = Launch {
        spec: &spec,
        image: &image,
        layers: vec![lower().to_path_buf()],
        instance: &instance,
        options: &options,
        network: None,
    };
    let mut report = RunReport::start("container", "v2", "busybox");
    let exit = ContainerRuntime::new()
        .run_with_hierarchies(&launch, &mut report, &hier)
        .unwrap();
    assert_eq!(exit, WorkloadExit::Code(0));
    let seen = watcher.join().unwrap();
    assert!(
        !seen.is_empty(),
        "nothing ever appeared in {}",
        dir.display()
    );
    assert!(!dir.exists(), "v2 cgroup left behind");
    assert_nothing_left(&instance);
}

/// Helper subprocess, not a test: runs one long container and exits with its
/// shell code, so the tests below can signal or kill -9 a real process that
/// runs a container. Ignored, so it is never counted; [`start_helper`] runs
/// it with `--ignored --exact`.
#[test]
#[ignore = "helper subprocess of the signal and kill -9 tests below"]
fn helper_long_container() {
    let Ok(root) = std::env::var("DUET_TEST_HELPER_ROOT") else {
        eprintln!("helper_long_container is not a test: start_helper runs it");
        return;
    };
    let root = PathBuf::from(root);
    let spec = WorkloadSpec::for_image("busybox", vec!["sleep".into(), "60".into()]);
    let instance = InstanceDir::create(&root, "helper", "busybox", "container").unwrap();
    std::fs::write(root.join("id"), instance.id()).unwrap();
    let image = Image {
        name: "busybox".into(),
        layers: Vec::new(),
        config: ImageConfig::default(),
        source: None,
    };
    let options = RunOptions::default();
    let launch = Launch {
        spec: &spec,
        image: &image,
        layers: vec![PathBuf::from(
            std::env::var("DUET_TEST_HELPER_LOWER").unwrap(),
        )],
        instance: &instance,
        options: &options,
        network: None,
    };
    let mut report = RunReport::start("container", "helper", "busybox");
    let exit = ContainerRuntime::new().run(&launch, &mut report).unwrap();
    std::process::exit(exit.shell_code());
}

/// Starts the helper; returns it and its instance id once its workload runs.
fn start_helper(root: &Path) -> (std::process::Child, String) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_long_container",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DUET_TEST_HELPER_ROOT", root)
        .env("DUET_TEST_HELPER_LOWER", lower())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let layout = CgroupLayout::detect().unwrap();
    let mem = layout.plan(&[Controller::Memory]).unwrap()[0].mount.clone();
    for _ in 0..500 {
        if let Ok(id) = std::fs::read_to_string(root.join("id")) {
            // Running: the cgroup (nested below this process's) holds the workload
            // (sleep) as its init.
            let procs = find_instance_dirs(&mem, &id)
                .first()
                .and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
                .unwrap_or_default();
            if let Some(pid) = procs.lines().next() {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "sleep" {
                    return (child, id);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("helper container did not start");
}

fn cgroups_of(id: &str) -> Vec<PathBuf> {
    let layout = CgroupLayout::detect().unwrap();
    layout
        .all_roots()
        .into_iter()
        .flat_map(|(_, r)| find_instance_dirs(&r, id))
        .collect()
}

#[test]
fn sigint_and_sigterm_kill_the_container_and_clean_up() {
    require_root!();
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let root = tempfile::tempdir().unwrap();
        let (mut child, id) = start_helper(root.path());
        // SAFETY: signalling the helper process we started.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "signal {sig}");
        assert!(
            cgroups_of(&id).is_empty(),
            "cgroups left: {:?}",
            cgroups_of(&id)
        );
    }
}

#[test]
fn kill_9_leaves_only_what_gc_removes() {
    require_root!();
    let root = tempfile::tempdir().unwrap();
    let (mut child, id) = start_helper(root.path());
    let layout = CgroupLayout::detect().unwrap();
    let mem = find_instance_dirs(&layout.plan(&[Controller::Memory]).unwrap()[0].mount, &id)
        .pop()
        .expect("the helper's memory cgroup");
    let init: i32 = std::fs::read_to_string(mem.join("cgroup.procs"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // pdeathsig: the container's init (and with it its pid namespace) dies with duet.
    for _ in 0..500 {
        if !Path::new(&format!("/proc/{init}")).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !Path::new(&format!("/proc/{init}")).exists(),
        "container init {init} survived duet"
    );
    // The overlay was mounted only inside the container's mount namespace.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(root.path().to_str().unwrap()));
    assert!(
        !cgroups_of(&id).is_empty(),
        "expected the killed run's cgroups to remain"
    );
    ContainerRuntime::new().gc_instance(&id).unwrap();
    assert!(cgroups_of(&id).is_empty(), "gc left {:?}", cgroups_of(&id));
}

/// What a lifecycle test needs for one instance of the busybox lower.
struct Fixture {
    _root: tempfile::TempDir,
    spec: WorkloadSpec,
    instance: InstanceDir,
    image: Image,
    options: RunOptions,
}

impl Fixture {
    fn new(name: &str, command: &[&str]) -> Fixture {
        let root = tempfile::Builder::new()
            .prefix("duet-root-")
            .tempdir()
            .unwrap();
        let spec =
            WorkloadSpec::for_image("busybox", command.iter().map(|s| s.to_string()).collect());
        let instance = InstanceDir::create(root.path(), name, "busybox", "container").unwrap();
        Fixture {
            _root: root,
            spec,
            instance,
            image: Image {
                name: "busybox".into(),
                layers: Vec::new(),
                config: ImageConfig::default(),
                source: None,
            },
            options: RunOptions::default(),
        }
    }

    fn launch(&self) -> Launch<'_> {
        Launch {
            spec: &self.spec,
            image: &self.image,
            layers: vec![lower().to_path_buf()],
            instance: &self.instance,
            options: &self.options,
            network: None,
        }
    }
}

/// The lifecycle one step at a time: `create` sets everything up but the
/// workload has not run; `start` execs it; `kill` and `wait` end it;
/// `delete` leaves nothing.
#[test]
fn lifecycle_create_does_not_start_the_workload() {
    require_root!();
    use duet_shared::instance::Status;
    let f = Fixture::new("life", &["sh", "-c", "echo ran > /marker; exec sleep 100"]);
    let instance = &f.instance;
    let mut report = RunReport::start("container", "life", "busybox");
    let mut c = ContainerRuntime::new()
        .create(&f.launch(), &mut report)
        .unwrap();
    assert_eq!(c.state(), Status::Created);
    assert!(report.since_start_ns(Phase::RootfsReady).is_some());
    assert!(
        report.since_start_ns(Phase::Ready).is_none(),
        "ready is stamped at start"
    );
    let pid = c.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !instance.upper().join("marker").exists(),
        "the workload ran before start"
    );
    c.start(&mut report).unwrap();
    assert_eq!(c.state(), Status::Running);
    assert!(report.since_start_ns(Phase::Ready).is_some());
    let t = std::time::Instant::now();
    while !instance.upper().join("marker").exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(instance.upper().join("marker").exists());
    c.kill(libc::SIGKILL).unwrap();
    assert_eq!(
        c.wait(&mut report).unwrap(),
        WorkloadExit::Signal(libc::SIGKILL)
    );
    assert_eq!(c.state(), Status::Exited);
    c.delete().unwrap();
    assert_nothing_left(instance);
}

/// An instance created and deleted without ever starting: the init never
/// execs the workload and nothing is left.
#[test]
fn lifecycle_delete_before_start_leaves_nothing() {
    require_root!();
    let f = Fixture::new("nostart", &["sh", "-c", "echo ran > /marker"]);
    let mut report = RunReport::start("container", "nostart", "busybox");
    let c = ContainerRuntime::new()
        .create(&f.launch(), &mut report)
        .unwrap();
    let pid = c.pid();
    c.delete().unwrap();
    assert!(duet_shared::instance::process_start_time(pid).is_none());
    assert!(!f.instance.upper().join("marker").exists());
    assert_nothing_left(&f.instance);
}
