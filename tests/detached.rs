//! Detached instances (`duet run -d`) of containers, through the real CLI:
//! the monitor, ps, logs, stop, kill, wait, rm, inspect, names, restarts,
//! and what is left after a monitor is killed. (VMs: the testbed cases
//! `vm_detached_*` in tests/testbed/vm-cases.sh.)

mod common;

use common::{cgroups_named, skip_unless_root, stderr, stdout, unique, Env};
use std::time::{Duration, Instant};

/// Removes everything a test started, also when it fails.
struct Cleanup<'a>(&'a Env);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in self.0.instances() {
            let _ = self.0.run(&["rm", "-f", &id]);
        }
        let _ = self.0.run(&["gc"]);
    }
}

fn ok(env: &Env, args: &[&str]) -> String {
    let o = env.run(args);
    assert!(
        o.status.success(),
        "duet {args:?} failed ({:?}): {}{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn meta(env: &Env, id: &str) -> serde_json::Value {
    let p = env.root().join("instances").join(id).join("meta.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Waits until `f` holds (or panics after `secs`).
fn until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ps_line(env: &Env, all: bool, name: &str) -> Option<String> {
    let out = if all {
        ok(env, &["ps", "-a"])
    } else {
        ok(env, &["ps"])
    };
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(str::to_string)
}

fn alive(pid: i64) -> bool {
    duet_shared::instance::process_start_time(pid as i32).is_some()
}

#[test]
fn run_d_ps_logs_stop_wait_rm() {
    if skip_unless_root("run_d_ps_logs_stop_wait_rm") {
        return;
    }
    let env = Env::new();
    let _c = Cleanup(&env);
    let name = unique("web");
    let t = Instant::now();
    let id = ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "busybox",
            "--",
            "sh",
            "-c",
            "echo hello; echo oops >&2; trap '' TERM; while true; do sleep 0.1; done",
        ],
    );
    let id = id.trim().to_string();
    assert!(id.starts_with(&format!("{name}-")), "{id}");
    assert!(t.elapsed() < Duration::from_secs(10));
    let line = ps_line(&env, false, &name).expect("ps lists it");
    assert!(
        line.contains("running") && line.contains("busybox") && line.contains("container"),
        "{line}"
    );
    assert!(line.contains(&id), "{line}");
    let m = meta(&env, &id);
    let pid = m["state"]["pid"].as_i64().unwrap();
    let monitor = m["owner_pid"].as_i64().unwrap();
    assert!(alive(pid) && alive(monitor));
    until(10, "the output in the log", || {
        let o = env.run(&["logs", &name]);
        stdout(&o).contains("hello") && stderr(&o).contains("oops")
    });
    // stop: the workload ignores SIGTERM (and, as PID 1, has no handler
    // either), so it ends by SIGKILL after the grace period.
    let t = Instant::now();
    ok(&env, &["stop", "-t", "1", &name]);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "stopped after {took:?}, before the grace period"
    );
    assert!(!alive(pid), "workload still alive after stop");
    until(10, "the monitor to end", || !alive(monitor));
    assert_eq!(ok(&env, &["wait", &name]).trim(), "137");
    assert!(
        ps_line(&env, false, &name).is_none(),
        "ps without -a lists only running ones"
    );
    let line = ps_line(&env, true, &name).expect("ps -a lists it");
    assert!(line.contains("killed by SIGKILL"), "{line}");
    // gc leaves an ended detached instance alone: its status and log stay.
    ok(&env, &["gc"]);
    assert_eq!(env.instances(), vec![id.clone()]);
    assert!(stdout(&env.run(&["logs", &id])).contains("hello"));
    ok(&env, &["rm", &name]);
    env.assert_clean(&name);
}

#[test]
fn wait_prints_the_exit_code_and_failures_to_exec_fail_the_run() {
    if skip_unless_root("wait_prints_the_exit_code_and_failures_to_exec_fail_the_run") {
        return;
    }
    let env = Env::new();
    let _c = Cleanup(&env);
    let name = unique("seven");
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "busybox",
            "--",
            "sh",
            "-c",
            "sleep 0.3; exit 7",
        ],
    );
    let o = env.run(&["wait", &name]);
    assert_eq!(stdout(&o).trim(), "7");
    assert_eq!(
        o.status.code(),
        Some(0),
        "as docker wait, the code is printed"
    );
    ok(&env, &["rm", &name]);
    // A command that cannot run fails `run -d` itself, with the shell's status.
    let bad = unique("bad");
    let o = env.run(&[
        "run",
        "-d",
        "--name",
        &bad,
        "busybox",
        "--",
        "no-such-command",
    ]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(stderr(&o).contains("no-such-command"), "{}", stderr(&o));
    assert!(ps_line(&env, true, &bad).unwrap().contains("exited 127"));
    ok(&env, &["rm", &bad]);
    env.assert_clean(&name);
    env.assert_clean(&bad);
}

#[test]
fn names_are_unique_and_every_command_takes_name_or_id_prefix() {
    if skip_unless_root("names_are_unique_and_every_command_takes_name_or_id_prefix") {
        return;
    }
    let env = Env::new();
    let _c = Cleanup(&env);
    let name = unique("nm");
    let id = ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "busybox",
            "--",
            "sh",
            "-c",
            "echo up; sleep 30",
        ],
    );
    let id = id.trim().to_string();
    let o = env.run(&["run", "-d", "--name", &name, "busybox", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains(&id) && stderr(&o).contains("in use"),
        "{}",
        stderr(&o)
    );
    let o = env.run(&["run", "--name", &name, "busybox", "--", "true"]);
    assert_eq!(
        o.status.code(),
        Some(125),
        "a foreground run may not take it either"
    );
    assert_eq!(env.instances().len(), 1, "refused runs leave nothing");
    // The id prefix (more than the name) works for each command.
    let prefix = &id[..name.len() + 4];
    until(10, "output", || {
        stdout(&env.run(&["logs", prefix])).contains("up")
    });
    let v: serde_json::Value = serde_json::from_str(&ok(&env, &["inspect", prefix])).unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["state"]["status"], "running");
    assert!(v[0]["state"]["pid"].as_i64().unwrap() > 0);
    assert_eq!(v[0]["spec"]["command"][0], "sh");
    ok(&env, &["kill", "-s", "TERM", prefix]); // PID 1 without a handler: ignored
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        ps_line(&env, false, &name).is_some(),
        "SIGTERM is ignored by a PID 1 without handler"
    );
    ok(&env, &["kill", prefix]); // default SIGKILL
    assert_eq!(ok(&env, &["wait", prefix]).trim(), "137");
    let o = env.run(&["rm", "nope-nothing"]);
    assert!(stderr(&o).contains("nope-nothing"), "{}", stderr(&o));
    for cmd in ["stop", "kill", "wait", "logs", "inspect"] {
        let o = env.run(&[cmd, "nope-nothing"]);
        assert_eq!(o.status.code(), Some(125), "{cmd}");
        assert!(
            stderr(&o).contains("no instance `nope-nothing`"),
            "{cmd}: {}",
            stderr(&o)
        );
    }
    ok(&env, &["rm", prefix]);
    env.assert_clean(&name);
}

#[test]
fn restart_on_failure_restarts_n_times_then_stops() {
    if skip_unless_root("restart_on_failure_restarts_n_times_then_stops") {
        return;
    }
    let env = Env::new();
    let _c = Cleanup(&env);
    let name = unique("rs");
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--restart",
            "on-failure:2",
            "busybox",
            "--",
            "sh",
            "-c",
            "echo run; exit 3",
        ],
    );
    assert_eq!(ok(&env, &["wait", &name]).trim(), "3");
    let o = env.run(&["logs", &name]);
    assert_eq!(
        stdout(&o).matches("run").count(),
        3,
        "first run + 2 restarts: {}",
        stdout(&o)
    );
    let id = env.instances().pop().unwrap();
    assert_eq!(meta(&env, &id)["state"]["restarts"], 2);
    ok(&env, &["rm", &name]);
    // always: restarts until stopped; stop ends the restarts.
    let name2 = unique("rsa");
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            &name2,
            "--restart",
            "always",
            "busybox",
            "--",
            "sh",
            "-c",
            "echo again; sleep 0.05",
        ],
    );
    until(20, "two restarts", || {
        let id = env.instances().pop().unwrap();
        meta(&env, &id)["state"]["restarts"].as_u64().unwrap() >= 2
    });
    ok(&env, &["stop", "-t", "1", &name2]);
    let line = ps_line(&env, true, &name2).unwrap();
    assert!(line.contains("exited") || line.contains("killed"), "{line}");
    let o = env.run(&[
        "run",
        "-d",
        "--restart",
        "sometimes",
        "busybox",
        "--",
        "true",
    ]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("sometimes"), "{}", stderr(&o));
    ok(&env, &["rm", &name2]);
    env.assert_clean(&name);
    env.assert_clean(&name2);
}

#[test]
fn killed_monitor_takes_its_workload_and_gc_removes_the_rest() {
    if skip_unless_root("killed_monitor_takes_its_workload_and_gc_removes_the_rest") {
        return;
    }
    let env = Env::new();
    let _c = Cleanup(&env);
    let name = unique("lost");
    let id = ok(
        &env,
        &["run", "-d", "--name", &name, "busybox", "--", "sleep", "60"],
    );
    let id = id.trim();
    let m = meta(&env, id);
    let pid = m["state"]["pid"].as_i64().unwrap();
    let monitor = m["owner_pid"].as_i64().unwrap();
    // SAFETY: kill of the monitor this test started.
    unsafe { libc::kill(monitor as i32, libc::SIGKILL) };
    until(10, "the workload to die with its monitor", || !alive(pid));
    let line = ps_line(&env, false, &name).expect("still listed");
    assert!(line.contains("monitor lost"), "{line}");
    assert!(
        !cgroups_named(&name).is_empty(),
        "the cgroups are still there before gc"
    );
    let o = env.run(&["wait", &name]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("monitor is gone"), "{}", stderr(&o));
    ok(&env, &["gc"]);
    env.assert_clean(&name);
}

#[test]
fn rm_refuses_a_running_instance_unless_forced() {
    if skip_unless_root("rm_refuses_a_running_instance_unless_forced") {
        return;
    }
    let env = Env::new();
    let _c = Cleanup(&env);
    let name = unique("rmf");
    ok(
        &env,
        &["run", "-d", "--name", &name, "busybox", "--", "sleep", "60"],
    );
    let o = env.run(&["rm", &name]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("is running"), "{}", stderr(&o));
    ok(&env, &["rm", "-f", &name]);
    env.assert_clean(&name);
    // --rm: gone by itself once ended.
    let n2 = unique("auto");
    ok(
        &env,
        &["run", "-d", "--rm", "--name", &n2, "busybox", "--", "true"],
    );
    until(10, "the instance to remove itself", || {
        env.instances().is_empty()
    });
    env.assert_clean(&n2);
}

#[test]
fn a_detached_instance_survives_the_cli_and_its_terminal() {
    if skip_unless_root("a_detached_instance_survives_the_cli_and_its_terminal") {
        return;
    }
    if common::skip_unless_program(
        "a_detached_instance_survives_the_cli_and_its_terminal",
        "/usr/bin/script",
        "bsdutils",
    ) {
        return;
    }
    let env = Env::new();
    let _c = Cleanup(&env);
    let name = unique("tty");
    // `script` gives duet a terminal and closes it (hangup) when duet returns.
    let cmd = format!(
        "{} run -d --name {name} busybox -- sleep 60",
        common::duet_bin().display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("DUET_ROOT", env.root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::thread::sleep(Duration::from_millis(300));
    let line = ps_line(&env, false, &name).expect("listed");
    assert!(line.contains("running"), "{line}");
    ok(&env, &["rm", "-f", &name]);
    env.assert_clean(&name);
}

/// 100 instances started with `run -d` in parallel, then stopped and
/// removed: nothing is left (mounts, cgroups, processes, sockets, dirs).
#[test]
fn hundred_parallel_detached_then_stop_and_rm_leave_nothing() {
    if skip_unless_root("hundred_parallel_detached_then_stop_and_rm_leave_nothing") {
        return;
    }
    let env = Env::new();
    let _c = Cleanup(&env);
    let base = unique("par");
    let names: Vec<String> = (0..100).map(|i| format!("{base}x{i}")).collect();
    let started: Vec<_> = names
        .iter()
        .map(|n| {
            env.cmd(&["run", "-d", "--name", n, "busybox", "--", "sleep", "120"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in started {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(env.instances().len(), 100);
    let pids: Vec<(i64, i64)> = env
        .instances()
        .iter()
        .map(|id| {
            let m = meta(&env, id);
            (
                m["state"]["pid"].as_i64().unwrap(),
                m["owner_pid"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut args = vec!["stop", "-t", "0"];
    args.extend(names.iter().map(String::as_str));
    ok(&env, &args);
    let mut args = vec!["rm"];
    args.extend(names.iter().map(String::as_str));
    ok(&env, &args);
    until(10, "every monitor to end", || {
        pids.iter().all(|(_, m)| !alive(*m))
    });
    for (p, _) in &pids {
        assert!(!alive(*p), "workload {p} left");
    }
    assert!(env.instances().is_empty());
    env.assert_clean(&base);
}

#[test]
fn dash_t_gives_the_workload_a_pty_of_its_own() {
    if skip_unless_root("dash_t_gives_the_workload_a_pty_of_its_own") {
        return;
    }
    let env = Env::new();
    let _c = Cleanup(&env);
    // No terminal anywhere: pipes without -t, a pty of the container's own with it.
    let o = env.run(&["run", "busybox", "--", "tty"]);
    assert_eq!(stdout(&o).trim(), "not a tty");
    assert_eq!(o.status.code(), Some(1));
    let o = env.run(&["run", "-t", "busybox", "--", "tty"]);
    let t = stdout(&o);
    assert!(t.trim().starts_with("/dev/pts/"), "{t:?} {}", stderr(&o));
    let name = unique("dt");
    ok(
        &env,
        &[
            "run",
            "-d",
            "-t",
            "--name",
            &name,
            "busybox",
            "--",
            "sh",
            "-c",
            "tty; echo done",
        ],
    );
    assert_eq!(ok(&env, &["wait", &name]).trim(), "0");
    let logs = stdout(&env.run(&["logs", &name]));
    assert!(
        logs.contains("/dev/pts/") && logs.contains("done"),
        "{logs}"
    );
    ok(&env, &["rm", &name]);
    let o = env.run(&["run", "-d", "-i", "busybox", "--", "cat"]);
    assert_eq!(o.status.code(), Some(125));
    env.assert_clean(&name);
}
