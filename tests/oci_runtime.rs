//! duet as an OCI runtime (`duet-runc`), driven as containerd's shim and
//! dockerd drive runc: the raw sequence create -> state -> start -> exec ->
//! kill -> delete, the console socket, errors that name the field, hostile
//! bundles, and nothing left behind.
//!
//! The test process is a child subreaper (PR_SET_CHILD_SUBREAPER), as a
//! shim is: the container's init outlives `duet-runc create` and is
//! reparented to it, which reaps it.

mod common;

use common::oci::{cgroups_named, mounts_under, reap, recv_fd, Rt};
use common::{skip_unless_root, stderr, unique};
use std::time::{Duration, Instant};

#[test]
fn oci_create_state_start_kill_delete() {
    let test = "oci_create_state_start_kill_delete";
    if skip_unless_root(test) {
        return;
    }
    let rt = Rt::new();
    let out = rt.dir.path().join("out.txt");
    let b = rt.bundle(
        "b1",
        &["sh", "-c", "echo started $(hostname); trap 'echo got TERM; exit 3' TERM; while true; do sleep 0.05; done"],
        |_| {},
    );
    let id = unique("oci");
    // The pid file is written, and it names the init.
    let pid = rt.create_logged(&b, &id, &out).unwrap();
    assert_eq!(rt.status(&id), "created");
    let st: serde_json::Value = serde_json::from_str(&rt.ok(&["state", &id])).unwrap();
    assert_eq!(st["pid"], pid);
    assert_eq!(st["bundle"], b.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(st["ociVersion"], "1.0.2");
    // Created: the workload has not run.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "",
        "ran before start"
    );
    // Its cgroup exists, named by the default path duet/<id>.
    assert!(!cgroups_named(&id).is_empty(), "no cgroup for {id}");
    let pids: Vec<i32> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", &id])).unwrap();
    assert_eq!(pids, [pid]);
    rt.ok(&["start", &id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&out).unwrap().contains("started") {
        assert!(Instant::now() < deadline, "no output after start");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(rt.status(&id), "running");
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("started duet-peer"));
    // A second start is refused.
    let o = rt.run(&["start", &id]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("running, not created"),
        "{}",
        stderr(&o)
    );
    // delete without --force refuses a running container.
    let o = rt.run(&["delete", &id]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not stopped"), "{}", stderr(&o));
    rt.ok(&["kill", &id, "TERM"]);
    assert_eq!(
        reap(pid, Duration::from_secs(10)),
        Some(3),
        "exit status after TERM"
    );
    assert!(std::fs::read_to_string(&out).unwrap().contains("got TERM"));
    assert_eq!(rt.status(&id), "stopped");
    let o = rt.run(&["kill", &id, "KILL"]);
    assert!(!o.status.success(), "kill of a stopped container");
    rt.ok(&["delete", &id]);
    assert!(!rt.root().join(&id).exists(), "state dir left");
    assert!(
        cgroups_named(&id).is_empty(),
        "cgroups left: {:?}",
        cgroups_named(&id)
    );
    assert!(
        mounts_under(&b).is_empty(),
        "mounts left: {:?}",
        mounts_under(&b)
    );
    let o = rt.run(&["state", &id]);
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

#[test]
fn oci_delete_force_kills_a_created_and_a_running_container() {
    let test = "oci_delete_force_kills_a_created_and_a_running_container";
    if skip_unless_root(test) {
        return;
    }
    let rt = Rt::new();
    let b = rt.bundle("b", &["sleep", "1000"], |_| {});
    for start in [false, true] {
        let id = unique("ocif");
        let pid_file = rt.dir.path().join(format!("{id}.pid"));
        rt.ok(&[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ]);
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if start {
            rt.ok(&["start", &id]);
        }
        rt.ok(&["delete", "--force", &id]);
        assert_eq!(
            reap(pid, Duration::from_secs(10)),
            Some(128 + libc::SIGKILL)
        );
        assert!(!rt.root().join(&id).exists());
        assert!(
            cgroups_named(&id).is_empty(),
            "cgroups left: {:?}",
            cgroups_named(&id)
        );
    }
    assert!(
        mounts_under(&b).is_empty(),
        "mounts left: {:?}",
        mounts_under(&b)
    );
}

#[test]
fn oci_terminal_goes_to_the_console_socket() {
    let test = "oci_terminal_goes_to_the_console_socket";
    if skip_unless_root(test) {
        return;
    }
    let rt = Rt::new();
    let b = rt.bundle("bt", &["sh", "-c", "tty; stty size; exit 5"], |c| {
        c["process"]["terminal"] = true.into();
        c["process"]["consoleSize"] = serde_json::json!({"height": 30, "width": 100});
    });
    let sock_path = rt.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let id = unique("ocit");
    let pid_file = rt.dir.path().join("pid");
    let o = rt.run(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--console-socket",
        sock_path.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);
    assert!(o.status.success(), "create: {}", stderr(&o));
    let (conn, _) = listener.accept().unwrap();
    let master = recv_fd(&conn);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    rt.ok(&["start", &id]);
    assert_eq!(reap(pid, Duration::from_secs(10)), Some(5));
    let mut got = Vec::new();
    let mut f = std::fs::File::from(master);
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("30 100"), "{text}");
    rt.ok(&["delete", &id]);
    // terminal without a socket is refused, naming the field.
    let o = rt.run(&["create", "--bundle", b.to_str().unwrap(), &unique("ocit")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("process.terminal"), "{}", stderr(&o));
}

#[test]
fn oci_errors_name_the_field_and_leave_nothing() {
    let test = "oci_errors_name_the_field_and_leave_nothing";
    if skip_unless_root(test) {
        return;
    }
    let rt = Rt::new();
    let log = rt.dir.path().join("log.json");
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "user namespace",
            Box::new(|c| {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"type": "user"}))
            }),
            "linux.namespaces[5]",
        ),
        (
            "dotdot destination",
            Box::new(|c| {
                c["mounts"].as_array_mut().unwrap().push(serde_json::json!({"destination": "/tmp/../../x", "type": "tmpfs", "source": "tmpfs"}))
            }),
            "mounts[7].destination",
        ),
        (
            "host sysctl",
            Box::new(|c| c["linux"]["sysctl"] = serde_json::json!({"vm.overcommit_memory": "1"})),
            "linux.sysctl.vm.overcommit_memory",
        ),
        (
            "systemd cgroups path",
            Box::new(|c| c["linux"]["cgroupsPath"] = "system.slice:docker:x".into()),
            "linux.cgroupsPath",
        ),
        (
            "missing binary",
            Box::new(|c| c["process"]["args"] = serde_json::json!(["/no/such/binary"])),
            "executable file not found",
        ),
    ];
    for (i, (what, edit, expect)) in cases.into_iter().enumerate() {
        let b = rt.bundle(&format!("e{i}"), &["true"], edit);
        let id = unique("ocie");
        let o = rt.run(&[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "create",
            "--bundle",
            b.to_str().unwrap(),
            &id,
        ]);
        assert!(!o.status.success(), "{what}: created");
        assert!(stderr(&o).contains(expect), "{what}: {}", stderr(&o));
        assert!(!rt.root().join(&id).exists(), "{what}: state dir left");
        assert!(cgroups_named(&id).is_empty(), "{what}: cgroups left");
        assert!(mounts_under(&b).is_empty(), "{what}: mounts left");
    }
    // Every error went to --log as a JSON line.
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), 5, "{lines}");
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["level"], "error");
        assert!(v["msg"].is_string() && v["time"].is_string());
    }
    // An id used twice.
    let b = rt.bundle("twice", &["sleep", "100"], |_| {});
    let id = unique("ocie");
    rt.ok(&["create", "--bundle", b.to_str().unwrap(), &id]);
    let o = rt.run(&["create", "--bundle", b.to_str().unwrap(), &id]);
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    rt.ok(&["delete", "-f", &id]);
    // Ids that are not one plain name.
    for bad in ["../x", "a/b", ".."] {
        let o = rt.run(&["create", "--bundle", b.to_str().unwrap(), bad]);
        assert!(stderr(&o).contains("container id"), "{bad}: {}", stderr(&o));
    }
}

/// A hostile image whose directories are symlinks out of its root: every
/// mount, device and symlink the bundle asks for lands inside the root.
#[test]
fn oci_mount_destinations_cannot_follow_symlinks_out_of_the_root() {
    let test = "oci_mount_destinations_cannot_follow_symlinks_out_of_the_root";
    if skip_unless_root(test) {
        return;
    }
    let rt = Rt::new();
    let host = rt.dir.path().join("host-victim");
    std::fs::create_dir_all(&host).unwrap();
    let host_s = host.to_str().unwrap().to_string();
    let b = rt.bundle("hostile", &["sh", "-c", "ls /evil; test -e /evil/dir/x && echo inside"], |c| {
        let m = c["mounts"].as_array_mut().unwrap();
        // A tmpfs on /evil/dir, a file bind on /evil/file, a relative-symlink escape.
        m.push(serde_json::json!({"destination": "/evil/dir", "type": "tmpfs", "source": "tmpfs"}));
        m.push(serde_json::json!({"destination": "/rel/dir", "type": "tmpfs", "source": "tmpfs"}));
        m.push(serde_json::json!({"destination": "/evil/file", "type": "bind", "source": "/etc/hostname", "options": ["bind", "ro"]}));
        c["linux"]["devices"] = serde_json::json!([{"path": "/evil/dev/null2", "type": "c", "major": 1, "minor": 3}]);
    });
    let rootfs = b.join("rootfs");
    // /evil -> the host directory (absolute), /rel -> ../../../.. + host (relative).
    std::os::unix::fs::symlink(&host, rootfs.join("evil")).unwrap();
    let up = "../".repeat(12);
    std::os::unix::fs::symlink(
        format!("{up}{}", host_s.trim_start_matches('/')),
        rootfs.join("rel"),
    )
    .unwrap();
    let id = unique("ocih");
    let pid_file = rt.dir.path().join("pid");
    let o = rt.run(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);
    if o.status.success() {
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        rt.ok(&["start", &id]);
        reap(pid, Duration::from_secs(10));
        rt.ok(&["delete", "-f", &id]);
    }
    let left: Vec<_> = std::fs::read_dir(&host)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "the bundle reached the host directory: {left:?} ({})",
        stderr(&o)
    );
    assert!(
        mounts_under(&host).is_empty(),
        "a mount on the host: {:?}",
        mounts_under(&host)
    );
    // What the symlinks asked for was made inside the root instead.
    let inside = rootfs.join(host_s.trim_start_matches('/'));
    assert!(
        inside.join("dir").is_dir(),
        "{} not made inside the root ({})",
        inside.display(),
        stderr(&o)
    );
    assert!(
        mounts_under(&b).is_empty(),
        "mounts left: {:?}",
        mounts_under(&b)
    );
}

/// Whether this process may lower its oom_score_adj (CAP_SYS_RESOURCE;
/// some sandboxes lack it even for root).
fn has_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << 24) != 0
}

/// `process.oomScoreAdj` is applied by the init: raised always, lowered
/// (CRI's pause container asks for -998) where the caller may.
#[test]
fn oci_oom_score_adj_is_applied() {
    let test = "oci_oom_score_adj_is_applied";
    if skip_unless_root(test) {
        return;
    }
    let rt = Rt::new();
    let mut values: Vec<i32> = vec![500];
    if has_sys_resource() {
        values.push(-998);
    } else {
        eprintln!("{test}: lowering left out: this host's root lacks CAP_SYS_RESOURCE");
    }
    for v in values {
        let b = rt.bundle(
            &format!("b{v}"),
            &["cat", "/proc/self/oom_score_adj"],
            |c| {
                c["process"]["oomScoreAdj"] = v.into();
            },
        );
        let id = unique(&format!("ocioom{}", v.unsigned_abs()));
        let out = rt.dir.path().join(format!("oom{v}.out"));
        let pid = rt
            .create_logged(&b, &id, &out)
            .unwrap_or_else(|e| panic!("create: {e}"));
        rt.ok(&["start", &id]);
        assert_eq!(reap(pid, Duration::from_secs(10)), Some(0));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("{v}\n"));
        rt.ok(&["delete", &id]);
    }
}

/// Keyrings are not namespaced: the init (and an exec'd process) joins a
/// new session keyring of its own, named after the container, as runc
/// does, unless `--no-new-keyring`.
#[test]
fn oci_init_gets_a_session_keyring_of_its_own() {
    let test = "oci_init_gets_a_session_keyring_of_its_own";
    if skip_unless_root(test) {
        return;
    }
    let rt = Rt::new();
    // /proc/keys unmasked, to see which keyrings the workload has.
    let b = rt.bundle("b", &["sh", "-c", "cat /proc/keys; sleep 100"], |c| {
        c["linux"]["maskedPaths"] = serde_json::json!([]);
    });
    for no_new in [false, true] {
        let id = unique(if no_new { "ocikeyno" } else { "ocikey" });
        let out = rt.dir.path().join(format!("{id}.out"));
        let pid = if no_new {
            let pid_file = rt.dir.path().join(format!("{id}.pid"));
            let status = rt
                .cmd(&[
                    "create",
                    "--no-new-keyring",
                    "--bundle",
                    b.to_str().unwrap(),
                    "--pid-file",
                    pid_file.to_str().unwrap(),
                    &id,
                ])
                .stdin(std::process::Stdio::null())
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            common::oci::read_pid(&pid_file)
        } else {
            rt.create_logged(&b, &id, &out).unwrap()
        };
        rt.ok(&["start", &id]);
        let name = format!("duet:{id}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&out).unwrap().contains("keyring") {
            assert!(Instant::now() < deadline, "no /proc/keys output");
            std::thread::sleep(Duration::from_millis(20));
        }
        let keys = std::fs::read_to_string(&out).unwrap();
        assert_eq!(keys.contains(&name), !no_new, "{keys}");
        let exec_keys = rt.ok(&["exec", &id, "cat", "/proc/keys"]);
        assert_eq!(exec_keys.contains(&name), !no_new, "{exec_keys}");
        rt.ok(&["delete", "--force", &id]);
        let _ = reap(pid, Duration::from_secs(10));
    }
}
