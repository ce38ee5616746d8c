//! `duet-runc exec`, `pause` and `resume`, as containerd's shim uses them
//! for `docker exec`, CRI's ExecSync and `docker pause`: the process joins
//! the running container (namespaces, cgroups, seccomp) with the settings
//! of its own process spec, detached or waited for, with a terminal.

mod common;

use common::oci::{cgroups_named, read_pid, reap, recv_fd, Rt};
use common::{skip_unless_root, stderr, stdout, unique};
use std::time::{Duration, Instant};

fn ns(pid: i32, which: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{which}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn oci_exec_joins_the_container_with_its_own_process_settings() {
    let test = "oci_exec_joins_the_container_with_its_own_process_settings";
    if skip_unless_root(test) {
        return;
    }
    let rt = Rt::new();
    let b = rt.bundle("b", &["sleep", "1000"], |c| {
        c["process"]["user"]["gid"] = 7.into();
        c["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let id = unique("ociexec");
    let init = rt.create(&b, &id);
    rt.ok(&["start", &id]);

    // Command-line overrides on the container's own process.
    let o = rt.run(&[
        "exec",
        "--env",
        "FOO=bar",
        "--cwd",
        "/dev",
        "--user",
        "1000:1001",
        &id,
        "sh",
        "-c",
        "echo foo=$FOO; hostname; id -u; id -g; pwd; cat /proc/1/cmdline; echo; exit 4",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "foo=bar",
            "duet-peer",
            "1000",
            "1001",
            "/dev",
            "sleep\u{0}1000\u{0}"
        ],
        "{out}"
    );

    // --user UID alone keeps the process's gid (the config's 7), as runc.
    assert_eq!(
        rt.ok(&[
            "exec",
            "--user",
            "1000",
            &id,
            "sh",
            "-c",
            "echo $(id -u):$(id -g)"
        ]),
        "1000:7\n"
    );

    // The container's seccomp filter holds for exec'd processes too.
    let o = rt.run(&["exec", &id, "mkdir", "/dev/shm/x"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Operation not permitted"),
        "mkdir was not refused by seccomp: {}",
        stderr(&o)
    );

    // --process, as the shim passes it: its own env, user and capabilities.
    let process = rt.dir.path().join("process.json");
    std::fs::write(
        &process,
        serde_json::to_vec(&serde_json::json!({
            "args": ["sh", "-c", "echo from-process $X; grep CapEff /proc/self/status"],
            "env": ["PATH=/bin", "X=1"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": [], "effective": [], "permitted": []},
            "noNewPrivileges": true
        }))
        .unwrap(),
    )
    .unwrap();
    let o = rt.run(&["exec", "--process", process.to_str().unwrap(), &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "from-process 1\nCapEff:\t0000000000000000\n",
        "{}",
        stderr(&o)
    );

    // An argv[0] that is not there: the message engines turn into 127.
    let o = rt.run(&["exec", &id, "no-such-command"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("\"no-such-command\": executable file not found in $PATH"),
        "{}",
        stderr(&o)
    );

    // --detach: returns while the process runs, in the init's namespaces
    // and cgroups, and the pid file names it.
    let pid_file = rt.dir.path().join("exec.pid");
    let t = Instant::now();
    rt.ok(&[
        "exec",
        "--detach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sleep",
        "1000",
    ]);
    assert!(t.elapsed() < Duration::from_secs(5), "--detach waited");
    let pid = read_pid(&pid_file);
    for which in ["pid", "mnt", "net", "ipc", "uts", "cgroup"] {
        assert_eq!(ns(pid, which), ns(init, which), "{which} namespace");
    }
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap(),
        std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap()
    );
    let pids: Vec<i32> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(pids.contains(&pid) && pids.contains(&init), "{pids:?}");

    // kill --all reaches it; both end; exec into a stopped container is refused.
    rt.ok(&["kill", "--all", &id, "KILL"]);
    assert_eq!(
        reap(pid, Duration::from_secs(10)),
        Some(128 + libc::SIGKILL)
    );
    assert_eq!(
        reap(init, Duration::from_secs(10)),
        Some(128 + libc::SIGKILL)
    );
    assert_eq!(rt.status(&id), "stopped");
    let o = rt.run(&["exec", &id, "true"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("stopped"), "{}", stderr(&o));
    rt.ok(&["delete", &id]);
    assert!(cgroups_named(&id).is_empty(), "{:?}", cgroups_named(&id));
}

#[test]
fn oci_exec_tty_goes_to_the_console_socket() {
    let test = "oci_exec_tty_goes_to_the_console_socket";
    if skip_unless_root(test) {
        return;
    }
    let rt = Rt::new();
    let b = rt.bundle("b", &["sleep", "1000"], |_| {});
    let id = unique("ociexect");
    rt.create(&b, &id);
    rt.ok(&["start", &id]);
    let sock_path = rt.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let mut child = rt
        .cmd(&[
            "exec",
            "--tty",
            "--console-socket",
            sock_path.to_str().unwrap(),
            &id,
            "sh",
            "-c",
            "tty; exit 2",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    let master = recv_fd(&conn);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    let mut got = Vec::new();
    let mut f = std::fs::File::from(master);
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = std::io::Read::read(&mut f, &mut buf) {
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("/dev/pts/"), "{text}");
    rt.ok(&["delete", "--force", &id]);
}

fn size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn oci_pause_freezes_every_process_and_resume_thaws_them() {
    let test = "oci_pause_freezes_every_process_and_resume_thaws_them";
    if skip_unless_root(test) {
        return;
    }
    let rt = Rt::new();
    let out = rt.dir.path().join("ticks");
    let b = rt.bundle(
        "b",
        &["sh", "-c", "while true; do echo tick; sleep 0.02; done"],
        |_| {},
    );
    let id = unique("ocipause");
    let init = rt.create_logged(&b, &id, &out).unwrap();
    let o = rt.run(&["resume", &id]);
    assert!(stderr(&o).contains("not paused"), "{}", stderr(&o));
    rt.ok(&["start", &id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while size(&out) == 0 {
        assert!(Instant::now() < deadline, "no ticks");
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.ok(&["pause", &id]);
    assert_eq!(rt.status(&id), "paused");
    let frozen = size(&out);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(size(&out), frozen, "ticks while paused");
    let o = rt.run(&["exec", &id, "true"]);
    assert!(stderr(&o).contains("paused"), "{}", stderr(&o));
    let o = rt.run(&["pause", &id]);
    assert!(stderr(&o).contains("not running"), "{}", stderr(&o));
    rt.ok(&["resume", &id]);
    assert_eq!(rt.status(&id), "running");
    let deadline = Instant::now() + Duration::from_secs(10);
    while size(&out) == frozen {
        assert!(Instant::now() < deadline, "no ticks after resume");
        std::thread::sleep(Duration::from_millis(20));
    }
    // delete --force of a paused container kills it (a v1 freezer holds
    // even SIGKILL until thawed).
    rt.ok(&["pause", &id]);
    rt.ok(&["delete", "--force", &id]);
    assert_eq!(
        reap(init, Duration::from_secs(10)),
        Some(128 + libc::SIGKILL)
    );
    assert!(cgroups_named(&id).is_empty(), "{:?}", cgroups_named(&id));
}
