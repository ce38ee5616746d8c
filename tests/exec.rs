//! `duet exec` into running containers, through the real `duet` binary (needs root).

mod common;
use common::*;
use duet_shared::instance::{InstanceDir, Status};
use duet_shared::WorkloadSpec;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A container started by [`start_running`] (`duet run -d`): removed
/// (`duet rm -f`) and `duet gc` run on drop, also when the test fails.
struct Running<'a> {
    env: &'a Env,
    name: String,
    id: String,
    /// Host pid of the container's init (the workload).
    pid: i32,
    /// Host pid of its monitor.
    monitor: i32,
    stopped: bool,
}

impl Running<'_> {
    /// The processes in the instance's cgroup (memory hierarchy first).
    fn procs(&self) -> Vec<i32> {
        let mut dirs = cgroups_named(&self.name);
        dirs.sort_by_key(|d| !d.to_string_lossy().contains("memory"));
        dirs.first()
            .and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|t| t.lines().filter_map(|l| l.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Waits until the instance's cgroup holds exactly `n` processes.
    fn wait_procs(&self, n: usize, within: Duration) -> Vec<i32> {
        let t = Instant::now();
        loop {
            let p = self.procs();
            if p.len() == n || t.elapsed() > within {
                return p;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Removes the instance (`duet rm -f`): its workload is killed.
    fn stop(&mut self) -> Option<Output> {
        if std::mem::replace(&mut self.stopped, true) {
            return None;
        }
        Some(self.env.run(&["rm", "-f", &self.id]))
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(o) = self.stop() {
            if std::thread::panicking() {
                eprintln!("duet run of {}: {}\n{}", self.name, o.status, stderr(&o));
            }
        }
        if self.env.instances().contains(&self.id) {
            let _ = self.env.run(&["rm", &self.id]);
        }
        let _ = self.env.run(&["gc"]);
    }
}

/// The TOML of `spec` (name, command, env, workdir).
fn spec_toml(spec: &WorkloadSpec) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let mut t = format!("name = {}\nimage = {}\n", q(&spec.name), q(&spec.image));
    let cmd: Vec<String> = spec.command.iter().map(|c| q(c)).collect();
    t += &format!("command = [{}]\n", cmd.join(", "));
    if let Some(w) = &spec.workdir {
        t += &format!("workdir = {}\n", q(w));
    }
    t += "[env]\n";
    for (k, v) in &spec.env {
        t += &format!("{k} = {}\n", q(v));
    }
    t
}

/// Starts `spec` (busybox) with `duet run -d --spec`; returns once its
/// workload runs (as `run -d` does), with the pids its monitor recorded.
fn start_running<'a>(env: &'a Env, spec: &WorkloadSpec, run_args: &[&str]) -> Running<'a> {
    let file = env.root().join(format!("{}.toml", spec.name));
    std::fs::write(&file, spec_toml(spec)).unwrap();
    let mut args = vec!["run", "-d", "--spec", file.to_str().unwrap()];
    args.extend_from_slice(run_args);
    let o = env.run(&args);
    assert!(o.status.success(), "duet run -d: {}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let inst = InstanceDir::open(env.root(), &id).unwrap();
    assert_eq!(inst.meta().state.status, Status::Running);
    Running {
        env,
        name: spec.name.clone(),
        pid: inst.meta().state.pid.unwrap(),
        monitor: inst.meta().owner_pid,
        id,
        stopped: false,
    }
}

/// A busybox spec named `name` running `command`.
fn busybox(name: &str, command: &[&str]) -> WorkloadSpec {
    let mut s = WorkloadSpec::for_image("busybox", command.iter().map(|c| c.to_string()).collect());
    s.name = name.to_string();
    s
}

/// `duet exec ARGS` with this env's root.
fn exec(env: &Env, args: &[&str]) -> Output {
    let mut a = vec!["exec"];
    a.extend_from_slice(args);
    env.run(&a)
}

/// `duet exec ARGS` that must succeed; its stdout.
fn exec_ok(env: &Env, args: &[&str]) -> String {
    let o = exec(env, args);
    assert!(
        o.status.success(),
        "duet exec {args:?}: {}\n{}",
        o.status,
        stderr(&o)
    );
    stdout(&o)
}

/// `script -qec 'CMD' /dev/null`: CMD with a terminal on its stdin, stdout and stderr.
fn under_script(env: &Env, cmd: &str) -> Output {
    Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .env("DUET_ROOT", env.root())
        .stdin(Stdio::null())
        .output()
        .expect("spawn script")
}

/// Whether `pid` exists and is no zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

fn duet_quoted() -> String {
    format!("'{}'", duet_bin().display())
}

#[test]
fn exec_output_and_exit_codes() {
    if skip_unless_root("exec_output_and_exit_codes") {
        return;
    }
    let env = Env::new();
    let name = unique("xcodes");
    let c = start_running(&env, &busybox(&name, &["sleep", "60"]), &[]);
    assert_eq!(exec_ok(&env, &[&name, "echo", "hi", "-n"]), "hi -n\n");
    let o = exec(&env, &[&name, "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(stderr(&o), "err\n");
    let o = exec(&env, &[&name, "no-such-command"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("command not found: no-such-command"),
        "{}",
        stderr(&o)
    );
    let o = exec(&env, &[&name, "/etc/os-release"]);
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    // Killed by a signal: 128+N, as for a run.
    let o = exec(&env, &[&name, "sh", "-c", "kill -SEGV $$"]);
    assert_eq!(o.status.code(), Some(139), "{}", stderr(&o));
    // By id prefix too.
    assert_eq!(
        exec_ok(&env, &[&c.id[..c.id.len() - 3], "echo", "x"]),
        "x\n"
    );
    drop(c);
    env.assert_clean(&name);
}

#[test]
fn exec_gets_the_workloads_env_and_workdir() {
    if skip_unless_root("exec_gets_the_workloads_env_and_workdir") {
        return;
    }
    let env = Env::new();
    let name = unique("xenv");
    let mut spec = busybox(&name, &["sleep", "60"]);
    spec.env = BTreeMap::from([
        ("FOO".to_string(), "from-spec".to_string()),
        ("KEEP".to_string(), "kept".to_string()),
    ]);
    spec.workdir = Some("/etc".into());
    let c = start_running(&env, &spec, &[]);
    let show = "echo $FOO $KEEP $NEW; pwd; echo $PATH; echo $HOSTNAME";
    let out = exec_ok(&env, &[&name, "sh", "-c", show]);
    assert_eq!(
        out,
        format!(
            "from-spec kept\n/etc\n{}\n{name}\n",
            duet_container::plan::DEFAULT_PATH
        )
    );
    // The workload itself sees the same.
    let workload = std::fs::read(format!("/proc/{}/environ", c.pid)).unwrap();
    let workload = String::from_utf8_lossy(&workload);
    assert!(workload.contains("FOO=from-spec\0"), "{workload}");
    let out = exec_ok(
        &env,
        &[
            "-e",
            "FOO=over",
            "-e",
            "NEW=1",
            "-e",
            "PATH=/bin",
            "-w",
            "/tmp",
            &name,
            "sh",
            "-c",
            show,
        ],
    );
    assert_eq!(out, format!("over kept 1\n/tmp\n/bin\n{name}\n"));
    // PATH lookup follows the command's PATH.
    let o = exec(&env, &["-e", "PATH=/nowhere", &name, "true"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    let o = exec(&env, &["-w", "/no/such/dir", &name, "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/no/such/dir") && stderr(&o).contains(&name),
        "{}",
        stderr(&o)
    );
    let o = exec(&env, &["-e", "NOEQUALS", &name, "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("NOEQUALS"), "{}", stderr(&o));
    drop(c);
    env.assert_clean(&name);
}

#[test]
fn exec_joins_the_containers_namespaces() {
    if skip_unless_root("exec_joins_the_containers_namespaces") {
        return;
    }
    let env = Env::new();
    let name = unique("xns");
    let c = start_running(
        &env,
        &busybox(
            &name,
            &[
                "sh",
                "-c",
                "echo written-by-workload > /marker; exec sleep 60",
            ],
        ),
        &[],
    );
    let t = Instant::now();
    while std::fs::read_to_string(format!("/proc/{}/comm", c.pid)).unwrap_or_default() != "sleep\n"
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "workload never slept"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = exec_ok(
        &env,
        &[
            &name,
            "sh",
            "-c",
            "hostname; cat /marker; tr '\\0' ' ' < /proc/1/cmdline; echo; echo $$; \
             ls /proc | grep -c '^[0-9]'; \
             for n in mnt pid uts ipc net cgroup; do echo $n $(readlink /proc/self/ns/$n); done",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], name, "{out}");
    assert_eq!(lines[1], "written-by-workload", "{out}");
    assert_eq!(lines[2], "sleep 60 ", "pid 1 is the workload:\n{out}");
    let me: u32 = lines[3].parse().unwrap();
    assert!(
        me > 1 && me < 100,
        "pid {me} is not the container's:\n{out}"
    );
    let procs: u32 = lines[4].parse().unwrap();
    assert!(procs <= 4, "sees {procs} processes:\n{out}");
    assert!(!Path::new("/marker").exists() || std::fs::read_to_string("/marker").is_err());
    for l in &lines[5..] {
        let (ns, inside) = l.split_once(' ').unwrap();
        let init = std::fs::read_link(format!("/proc/{}/ns/{ns}", c.pid)).unwrap();
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_eq!(
            inside,
            init.to_string_lossy(),
            "{ns}: not the workload's\n{out}"
        );
        assert_ne!(inside, host.to_string_lossy(), "{ns}: the host's\n{out}");
    }
    assert_eq!(lines.len(), 11, "{out}");
    drop(c);
    env.assert_clean(&name);
}

#[test]
fn exec_has_no_more_privilege_than_the_workload() {
    if skip_unless_root("exec_has_no_more_privilege_than_the_workload") {
        return;
    }
    let env = Env::new();
    let name = unique("xcaps");
    let c = start_running(&env, &busybox(&name, &["sleep", "60"]), &[]);
    let fields = [
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
    ];
    let pick = |status: &str| -> Vec<String> {
        status
            .lines()
            .filter(|l| fields.iter().any(|f| l.starts_with(&format!("{f}:"))))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    let inside = pick(&exec_ok(&env, &[&name, "cat", "/proc/self/status"]));
    let workload = pick(&std::fs::read_to_string(format!("/proc/{}/status", c.pid)).unwrap());
    assert_eq!(inside.len(), fields.len(), "{inside:?}");
    assert_eq!(inside, workload, "exec differs from the workload");
    assert!(inside.contains(&"NoNewPrivs: 1".to_string()), "{inside:?}");
    assert!(inside.contains(&"Seccomp: 2".to_string()), "{inside:?}");
    let eff = inside.iter().find(|l| l.starts_with("CapEff")).unwrap();
    let eff = u64::from_str_radix(eff.split(' ').nth(1).unwrap(), 16).unwrap();
    assert_eq!(eff & (1 << 21), 0, "CAP_SYS_ADMIN kept");
    // The seccomp filter is the workload's: no new user namespace, no mount.
    let o = exec(&env, &[&name, "unshare", "-U", "true"]);
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Operation not permitted"),
        "{}",
        stderr(&o)
    );
    // In the workload's cgroups (the cgroup namespace root, as for the init).
    let cg = exec_ok(
        &env,
        &[
            &name,
            "sh",
            "-c",
            "cat /proc/self/cgroup; echo --; cat /proc/1/cgroup",
        ],
    );
    let (own, init) = cg.split_once("--\n").unwrap();
    assert_eq!(own, init, "{cg}");
    assert!(own.lines().all(|l| l.ends_with(":/")), "{cg}");
    drop(c);
    env.assert_clean(&name);
}

#[test]
fn exec_tty_and_the_callers_terminal() {
    if skip_unless_root("exec_tty_and_the_callers_terminal")
        || skip_unless_program("exec_tty_and_the_callers_terminal", "script", "bsdutils")
    {
        return;
    }
    let env = Env::new();
    let name = unique("xtty");
    let c = start_running(&env, &busybox(&name, &["sleep", "60"]), &[]);
    let d = duet_quoted();
    // -t: a pty of the container's own devpts, the controlling terminal.
    let o = under_script(
        &env,
        &format!("{d} exec -t {name} sh -c 'tty; tty <&2; exit 5'"),
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(5), "{out}\n{}", stderr(&o));
    let ttys: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(ttys.len(), 2, "{out}");
    assert!(
        ttys[0].starts_with("/dev/pts/") && ttys[0] == ttys[1],
        "{out}"
    );
    // -t without a terminal around duet works too.
    let o = exec(
        &env,
        &["-t", &name, "sh", "-c", "tty; echo \"$(stty size)\""],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("/dev/pts/"), "{}", stdout(&o));
    assert!(stdout(&o).contains("24 80"), "{}", stdout(&o));
    // -it from a pipe: input reaches the pty.
    let mut ch = env
        .cmd(&["exec", "-it", &name, "sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(ch.stdin.as_mut().unwrap(), b"echo typed-$((6*7))\nexit 3\n")
        .unwrap();
    let o = ch.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    assert!(stdout(&o).contains("typed-42"), "{}", stdout(&o));
    // Without -t, a caller's terminal is never handed over: pipes instead.
    let o = under_script(
        &env,
        &format!(
            "{d} exec -i {name} sh -c 'tty; for f in 0 1 2; do readlink /proc/self/fd/$f; done'"
        ),
    );
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0], "not a tty", "{out}");
    for l in &lines[1..] {
        assert!(l.starts_with("pipe:["), "{out}");
    }
    // Without -i, stdin is /dev/null even on a terminal.
    let o = under_script(&env, &format!("{d} exec {name} readlink /proc/self/fd/0"));
    assert_eq!(stdout(&o).trim(), "/dev/null", "{}", stdout(&o));
    drop(c);
    env.assert_clean(&name);
}

#[test]
fn exec_stdin_only_with_interactive() {
    if skip_unless_root("exec_stdin_only_with_interactive") {
        return;
    }
    let env = Env::new();
    let name = unique("xin");
    let c = start_running(&env, &busybox(&name, &["sleep", "60"]), &[]);
    let feed = |args: &[&str]| {
        let mut ch = env
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(ch.stdin.as_mut().unwrap(), b"piped input\n").unwrap();
        drop(ch.stdin.take());
        ch.wait_with_output().unwrap()
    };
    let o = feed(&["exec", "-i", &name, "cat"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "piped input\n");
    let o = feed(&["exec", &name, "cat"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "stdin without -i must be /dev/null");
    drop(c);
    env.assert_clean(&name);
}

#[test]
fn exec_does_not_pass_on_inherited_fds() {
    if skip_unless_root("exec_does_not_pass_on_inherited_fds") {
        return;
    }
    let env = Env::new();
    let name = unique("xfd");
    let c = start_running(&env, &busybox(&name, &["sleep", "60"]), &[]);
    let root_dir = std::fs::File::open("/").unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&root_dir);
    for tty in [false, true] {
        let mut cmd = env.cmd(&["exec"]);
        if tty {
            cmd.arg("-t");
        }
        cmd.args([
            &name,
            "sh",
            "-c",
            "ls /proc/self/fd | tr '\\n' ' '; test -e /proc/self/fd/9 && echo LEAKED; true",
        ]);
        // SAFETY: dup2 between fork and exec of the duet child only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 9) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(!out.contains("LEAKED"), "fd 9 reached the command: {out}");
        // 0, 1, 2 and the directory ls reads.
        assert_eq!(out.trim(), "0 1 2 3", "tty {tty}: {out}");
    }
    drop(c);
    env.assert_clean(&name);
}

#[test]
fn exec_errors_name_the_instance() {
    if skip_unless_root("exec_errors_name_the_instance") {
        return;
    }
    let env = Env::new();
    let o = exec(&env, &["no-such-instance", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no instance `no-such-instance`"),
        "{}",
        stderr(&o)
    );
    // Usage: no command.
    let o = exec(&env, &["x"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    // A microVM that does not run: no agent answers (VM exec itself: the
    // testbed's vm_exec_* cases).
    let vm = InstanceDir::create(env.root(), "xvm", "busybox", "vm").unwrap();
    let o = exec(&env, &[vm.id(), "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(vm.id()) && stderr(&o).contains("not running"),
        "{}",
        stderr(&o)
    );
    vm.remove().unwrap();

    // An instance whose init died with its owner (kill -9): the metadata
    // still says running.
    let name = unique("xgone");
    let c = start_running(&env, &busybox(&name, &["sleep", "60"]), &[]);
    // SAFETY: kill -9 of the monitor this test started.
    unsafe { libc::kill(c.monitor, libc::SIGKILL) };
    let t = Instant::now();
    while running(c.pid) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = exec(&env, &[&name, "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "instance `{}` is not running: its init (pid {}) is gone",
            c.id, c.pid
        )),
        "{}",
        stderr(&o)
    );
    // As the lifecycle will record it.
    let mut inst = InstanceDir::open(env.root(), &c.id).unwrap();
    inst.update(|m| m.state.status = Status::Exited).unwrap();
    let o = exec(&env, &[&name, "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "instance `{}` is not running (status: exited)",
            c.id
        )),
        "{}",
        stderr(&o)
    );
    drop(c);
    env.assert_clean(&name);
}

#[test]
fn exec_leaves_nothing_and_stops_on_signals() {
    if skip_unless_root("exec_leaves_nothing_and_stops_on_signals") {
        return;
    }
    let env = Env::new();
    let name = unique("xleak");
    let c = start_running(&env, &busybox(&name, &["sleep", "60"]), &[]);
    let cgroups = {
        let mut v = cgroups_named(&name);
        v.sort();
        v
    };
    assert_eq!(c.procs(), [c.pid]);
    for _ in 0..3 {
        let pid: i32 = exec_ok(&env, &[&name, "sh", "-c", "echo $$"])
            .trim()
            .parse()
            .unwrap();
        assert!(pid > 1);
        assert_eq!(c.procs(), [c.pid], "the exec'd process is still there");
    }
    let mut now = cgroups_named(&name);
    now.sort();
    assert_eq!(now, cgroups, "exec made or removed cgroups");
    for (sig, code) in [
        (libc::SIGTERM, 143),
        (libc::SIGINT, 130),
        (libc::SIGKILL, 137),
    ] {
        let mut ch = env.cmd(&["exec", &name, "sleep", "100"]).spawn().unwrap();
        let procs = c.wait_procs(2, Duration::from_secs(10));
        assert_eq!(procs.len(), 2, "the exec'd sleep never joined the cgroup");
        let sleep = *procs.iter().find(|p| **p != c.pid).unwrap();
        // SAFETY: we signal only the duet process we spawned.
        unsafe { libc::kill(ch.id() as i32, sig) };
        let t = Instant::now();
        let status = ch.wait().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
        if sig == libc::SIGKILL {
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(sig)
            );
        } else {
            assert_eq!(status.code(), Some(code), "after signal {sig}");
        }
        // Gone (on SIGKILL of duet, through its parent-death signal; with
        // duet gone nobody but the container's init can reap it, and `sleep`
        // never does: a zombie inside the container is all that may remain).
        assert_eq!(
            c.wait_procs(1, Duration::from_secs(5)),
            [c.pid],
            "signal {sig}"
        );
        assert!(!running(sleep), "sleep {sleep} survived signal {sig}");
    }
    drop(c);
    env.assert_clean(&name);
}
