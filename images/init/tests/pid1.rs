//! Runs the real duet-init binary as PID 1 of fresh PID/mount/UTS/IPC
//! namespaces, chrooted into a small busybox root, with duet's I/O ports
//! replaced by a log file (`DUET_INIT_FAKE_PORTS`). This exercises mounts,
//! config parsing, hostname, env, workdir, command lookup, exec, reaping,
//! exit-status encoding and the final reboot() (which in a PID namespace
//! ends the namespace with SIGHUP instead of resetting a machine).
//!
//! Needs root, util-linux `unshare`, `chroot` and a static busybox; each test
//! says plainly why it skips otherwise.

use duet_init::config::GuestWorkload;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "pwd", "hostname", "env", "sleep", "true", "ls", "stty", "tr", "grep",
];

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (namespaces, mounts, chroot)".into());
    }
    for tool in ["unshare", "chroot"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("needs `{tool}` on PATH"));
        }
    }
    match busybox() {
        None => Some("needs a static busybox (apt-get install busybox-static)".into()),
        Some(_) => None,
    }
}

struct Outcome {
    stdout: String,
    stderr: String,
    ports: String,
    status: std::process::ExitStatus,
}

fn make_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("duet")).unwrap();
    std::fs::create_dir_all(root.join("work/sub")).unwrap();
    std::fs::copy(busybox().unwrap(), root.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::copy(env!("CARGO_BIN_EXE_duet-init"), root.join("duet/init")).unwrap();
    root
}

fn run_raw(config: &[u8]) -> Outcome {
    run_raw_with(config, |_| {})
}

fn run_with(w: &GuestWorkload, prepare: impl FnOnce(&Path)) -> Outcome {
    run_raw_with(&w.to_json(), prepare)
}

/// duet-init as PID 1 of new namespaces, chrooted into `root`.
fn init_in(root: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--pid", "--fork", "--mount", "--uts", "--ipc"])
        .args(["--propagation", "private", "chroot"])
        .arg(root)
        .arg("/duet/init")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DUET_INIT_FAKE_PORTS", "/ports.log");
    c
}

fn run_raw_with(config: &[u8], prepare: impl FnOnce(&Path)) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    prepare(&root);
    std::fs::write(root.join("duet/workload.json"), config).unwrap();
    let out = init_in(&root).stdin(Stdio::null()).output().unwrap();
    Outcome {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ports: std::fs::read_to_string(root.join("ports.log")).unwrap_or_default(),
        status: out.status,
    }
}

/// Runs `w` with a new pty's slave as init's fds 0-2 (its console, as the
/// guest's serial console is); what came out of the master.
fn run_on_pty(w: &GuestWorkload) -> String {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    std::fs::write(root.join("duet/workload.json"), w.to_json()).unwrap();
    let (master, slave) = duet_init::agent::pty().unwrap();
    let mut child = init_in(&root)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Until every slave is closed (EIO from the master).
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    child.wait().unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn run(w: &GuestWorkload) -> Outcome {
    run_raw(&w.to_json())
}

fn workload(script: &str) -> GuestWorkload {
    GuestWorkload {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into(), "FOO=bar baz".into()],
        workdir: "/work/sub".into(),
        hostname: "duet-guest".into(),
        pids_max: None,
        agent: false,
        user: None,
        files: Vec::new(),
        network: None,
        template: false,
        tty: None,
    }
}

macro_rules! skip_unless_possible {
    () => {
        if let Some(why) = skip_reason() {
            if duet_shared::testing::skip(&duet_shared::testing::this_test(), &why) {
                return;
            }
        }
    };
}

/// With `tty` (`duet run -t`), the console is the workload's terminal: the
/// size the host gave, echo and line editing on, `\n` written as `\r\n`;
/// without, the console passes bytes through as a pipe would (no echo, no
/// line editing, no `\r`).
#[test]
fn a_tty_workload_has_the_console_as_its_terminal() {
    skip_unless_possible!();
    let script = "stty size; stty -a | tr ' ;' '\\n\\n' | grep -x -e echo -e -echo -e icanon -e -icanon -e opost -e -opost -e onlcr; test -t 0 && echo on-a-tty";
    let mut w = workload(script);
    w.tty = Some(duet_init::config::TtySize {
        rows: 30,
        cols: 100,
    });
    let out = run_on_pty(&w);
    for want in [
        "30 100\r\n",
        "\necho\r\n",
        "\nicanon\r\n",
        "\nopost\r\n",
        "\nonlcr\r\n",
        "on-a-tty\r\n",
    ] {
        assert!(out.contains(want), "{want:?} in {out:?}");
    }
    assert!(
        !out.contains("-echo") && !out.contains("-icanon") && !out.contains("-opost"),
        "{out:?}"
    );
    w.tty = None;
    let out = run_on_pty(&w);
    for want in ["\n-echo\n", "\n-opost\n", "on-a-tty\n"] {
        assert!(out.contains(want), "{want:?} in {out:?}");
    }
    assert!(!out.contains('\r'), "{out:?}");
}

#[test]
fn runs_the_workload_and_reports_ready_then_exit_status() {
    skip_unless_possible!();
    let o = run(&workload(
        "echo hi; echo \"$FOO\"; pwd; hostname; echo $$; env | sort; exit 7",
    ));
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        &lines[..4],
        ["hi", "bar baz", "/work/sub", "duet-guest"],
        "stdout: {}\nstderr: {}",
        o.stdout,
        o.stderr
    );
    // The workload is PID 2: the init is PID 1 and forked it first.
    assert_eq!(lines[4], "2");
    // Exactly the given env (sh adds PWD/SHLVL of its own; nothing from the init).
    let env: Vec<&str> = lines[5..].to_vec();
    assert!(
        env.contains(&"FOO=bar baz") && env.contains(&"PATH=/bin"),
        "{env:?}"
    );
    assert!(
        !env.iter().any(|e| e.starts_with("DUET_INIT_FAKE_PORTS")),
        "{env:?}"
    );
    assert_eq!(o.ports, "ready\nexit 0x7\n", "stderr: {}", o.stderr);
    // reboot(RB_AUTOBOOT) in a PID namespace ends it with SIGHUP.
    assert_eq!(o.status.signal(), Some(libc::SIGHUP), "{:?}", o.status);
}

#[test]
fn missing_command_is_127_after_ready() {
    skip_unless_possible!();
    let mut w = workload("");
    w.argv = vec!["no-such-command".into(), "arg".into()];
    let o = run(&w);
    assert!(
        o.stderr
            .contains("duet-init: command not found: no-such-command"),
        "stderr: {}",
        o.stderr
    );
    // Ready came first: as in a container, the lookup is part of the exec.
    assert_eq!(o.ports, "ready\nexit 0x7f\n");
}

#[test]
fn missing_interpreter_is_127_with_its_own_message() {
    skip_unless_possible!();
    let mut w = workload("");
    w.argv = vec!["/work/script".into()];
    let o = run_with(&w, |root| {
        let p = root.join("work/script");
        std::fs::write(&p, "#!/no/such/interpreter\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    });
    assert!(o.stderr.contains("interpreter"), "stderr: {}", o.stderr);
    assert_eq!(o.ports, "ready\nexit 0x7f\n");
}

#[test]
fn killed_workload_reports_the_signal() {
    skip_unless_possible!();
    let o = run(&workload("kill -9 $$"));
    assert_eq!(o.ports, "ready\nexit 0x109\n", "stderr: {}", o.stderr);
}

#[test]
fn orphans_are_reaped_and_do_not_delay_the_exit() {
    skip_unless_possible!();
    // The background sleep re-parents to the init; the workload's own exit
    // is what ends the run, not the orphan.
    let t = std::time::Instant::now();
    let o = run(&workload("sleep 30 & exit 3"));
    assert_eq!(o.ports, "ready\nexit 0x3\n", "stderr: {}", o.stderr);
    assert!(t.elapsed().as_secs() < 20, "waited for the orphan");
}

#[test]
fn bad_workdir_is_an_init_failure_naming_it() {
    skip_unless_possible!();
    let mut w = workload("true");
    w.workdir = "/does/not/exist".into();
    let o = run(&w);
    assert!(o.stderr.contains("/does/not/exist"), "stderr: {}", o.stderr);
    // EXIT_INIT_FAILED | InitFailure::Setup, and never "ready".
    assert_eq!(o.ports, "exit 0x203\n");
}

#[test]
fn broken_config_is_an_init_failure_naming_the_file() {
    skip_unless_possible!();
    let o = run_raw(b"{\"argv\": [");
    assert!(
        o.stderr.contains("/duet/workload.json"),
        "stderr: {}",
        o.stderr
    );
    // EXIT_INIT_FAILED | InitFailure::Config.
    assert_eq!(o.ports, "exit 0x202\n");
}

#[test]
fn guest_file_systems_are_mounted() {
    skip_unless_possible!();
    let o = run(&workload(
        "cat /proc/self/mounts | while read dev dir fs rest; do echo \"$dir $fs\"; done; \
         ls -d /tmp /sys/kernel /dev/null",
    ));
    for want in [
        "/proc proc",
        "/sys sysfs",
        "/dev devtmpfs",
        "/dev/pts devpts",
        "/dev/shm tmpfs",
        "/run tmpfs",
        "/tmp",
        "/sys/kernel",
        "/dev/null",
    ] {
        assert!(
            o.stdout.lines().any(|l| l == want),
            "missing {want:?} in:\n{}\nstderr: {}",
            o.stdout,
            o.stderr
        );
    }
    assert_eq!(o.ports, "ready\nexit 0x0\n");
}

#[test]
fn pids_max_limits_the_workload_or_says_why_it_cannot() {
    skip_unless_possible!();
    let mut w = workload(
        "cat /sys/fs/cgroup/workload/pids.max; \
         for i in 1 2 3 4 5 6; do sleep 2 & done 2>/dev/null; echo forked; wait",
    );
    w.pids_max = Some(3);
    let o = run(&w);
    if o.ports == "exit 0x203\n" {
        // Hosts whose pids controller is bound to cgroup v1 (like ours) have
        // none in a fresh cgroup2 mount; a guest kernel has only v2.
        assert!(
            o.stderr.contains("no `pids` controller") && o.stderr.contains("pids_max = 3"),
            "stderr: {}",
            o.stderr
        );
        return;
    }
    assert!(
        o.stdout.starts_with("3\n"),
        "stdout: {}\nstderr: {}",
        o.stdout,
        o.stderr
    );
    // sh + 2 sleeps fit under 3; the other 4 forks fail (sh reports them).
    assert!(o.stderr.contains("fork"), "stderr: {}", o.stderr);
}

#[test]
fn refuses_to_run_unless_pid_1() {
    let o = Command::new(env!("CARGO_BIN_EXE_duet-init"))
        .env("DUET_INIT_FAKE_PORTS", "/nonexistent/ports.log")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("only as PID 1"));
}

#[test]
fn the_exec_agent_leaves_the_workload_and_its_exit_status_alone() {
    skip_unless_possible!();
    // With the agent on, the init forks it after the workload: the workload
    // is still PID 2, the exit status is still the workload's, and the run
    // ends when the workload does (whether or not this host has vsock for
    // the agent to listen on).
    let mut w = workload("echo $$; sleep 0.2; exit 5");
    w.agent = true;
    let t = std::time::Instant::now();
    let o = run(&w);
    assert_eq!(o.stdout.lines().next(), Some("2"), "stderr: {}", o.stderr);
    assert_eq!(o.ports, "ready\nexit 0x5\n", "stderr: {}", o.stderr);
    assert!(t.elapsed() < std::time::Duration::from_secs(20));
}
