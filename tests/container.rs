//! Containers, run for real through the `duet` binary (needs root).

mod common;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn run_ok(env: &Env, args: &[&str]) -> String {
    let o = env.run(args);
    assert!(
        o.status.success(),
        "duet {args:?} failed: {}\n{}",
        o.status,
        stderr(&o)
    );
    stdout(&o)
}

#[test]
fn echo_and_exit_codes() {
    if skip_unless_root("echo_and_exit_codes") {
        return;
    }
    let env = Env::new();
    let name = unique("echo");
    assert_eq!(
        run_ok(
            &env,
            &["run", "--name", &name, "busybox", "--", "echo", "hi"]
        ),
        "hi\n"
    );
    let o = env.run(&[
        "run", "--name", &name, "busybox", "--", "sh", "-c", "exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let o = env.run(&["run", "--name", &name, "busybox", "--", "/no/such/program"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(stderr(&o).contains("/no/such/program"), "{}", stderr(&o));
    // The workload is PID 1 of its namespace, which ignores signals it has no
    // handler for, but not a fault: a stack overflow is SIGSEGV, so 128+11.
    let o = env.run(&[
        "run",
        "--name",
        &name,
        "busybox",
        "--",
        "sh",
        "-c",
        "ulimit -s 256; f() { f; }; f",
    ]);
    assert_eq!(o.status.code(), Some(139), "{}", stderr(&o));
    env.assert_clean(&name);
}

/// Usage errors are duet's own failures: 125, as the README promises (not
/// clap's 2, which a workload may return too); help is not an error.
#[test]
fn usage_errors_exit_125() {
    let env = Env::new();
    for args in [
        &["run", "--no-such-flag", "busybox"][..],
        &["no-such-command"][..],
        &["run", "--isolation", "hypervisor", "busybox", "--", "true"][..],
        &["rm"][..],
    ] {
        let o = env.run(args);
        assert_eq!(o.status.code(), Some(125), "duet {args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).starts_with("error: "),
            "duet {args:?}: {}",
            stderr(&o)
        );
    }
    let o = env.run(&["--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("Usage"), "{}", stdout(&o));
    assert!(env.instances().is_empty());
}

/// `--timings` names exactly the container's phases, in the order they happen.
#[test]
fn timings_name_the_container_phases_in_order() {
    if skip_unless_root("timings_name_the_container_phases_in_order") {
        return;
    }
    let env = Env::new();
    let name = unique("tim");
    let o = env.run(&["run", "--timings", "--name", &name, "busybox", "--", "true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The parent joins the cgroup while the child builds the root: those two
    // may come in either order; the rest is fixed.
    let phases = timing_phases(&stderr(&o));
    let mut sorted = phases.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "cgroup_applied",
            "cleaned_up",
            "exited",
            "namespaces_created",
            "pivot_done",
            "ready",
            "rootfs_ready",
            "spec_loaded",
            "start"
        ],
        "{}",
        stderr(&o)
    );
    assert_eq!(phases[..3], ["start", "spec_loaded", "namespaces_created"]);
    let at = |p: &str| phases.iter().position(|q| q == p).unwrap();
    assert!(at("rootfs_ready") < at("pivot_done"), "{phases:?}");
    assert_eq!(
        phases[6..],
        ["ready", "exited", "cleaned_up"],
        "{}",
        stderr(&o)
    );
    env.assert_clean(&name);
}

#[test]
fn namespaces_pid1_hostname_and_host_processes() {
    if skip_unless_root("namespaces_pid1_hostname_and_host_processes") {
        return;
    }
    let env = Env::new();
    let name = unique("ns");
    let out = run_ok(
        &env,
        &["run", "--name", &name, "busybox", "--", "sh", "-c",
          "echo pid=$$; hostname; ls /proc | grep -c '^[0-9]'; ip -o link | wc -l; \
           for n in cgroup ipc mnt net pid uts user; do echo ns $n $(readlink /proc/self/ns/$n); done"],
    );
    let lines: Vec<&str> = out.lines().collect();
    // Every namespace but the user namespace (none yet) is the container's own.
    for l in out.lines().filter(|l| l.starts_with("ns ")) {
        let mut w = l.split_whitespace().skip(1);
        let (ns, inside) = (w.next().unwrap(), w.next().unwrap_or(""));
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let host = host.to_string_lossy();
        assert!(inside.starts_with(&format!("{ns}:[")), "{l}\n{out}");
        if ns == "user" {
            assert_eq!(inside, host, "{out}");
        } else {
            assert_ne!(inside, host, "the {ns} namespace is the host's:\n{out}");
        }
    }
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ns ")).count(),
        7,
        "{out}"
    );
    assert_eq!(lines[0], "pid=1", "{out}");
    assert_eq!(lines[1], name, "{out}");
    let procs: u32 = lines[2].trim().parse().unwrap();
    assert!(
        procs <= 4,
        "sees {procs} processes: host processes leak in\n{out}"
    );
    let links: u32 = lines[3].trim().parse().unwrap();
    assert_eq!(links, 1, "a new network namespace has only lo\n{out}");
    env.assert_clean(&name);
}

#[test]
fn dev_proc_sys_and_masked_paths() {
    if skip_unless_root("dev_proc_sys_and_masked_paths") {
        return;
    }
    let env = Env::new();
    let name = unique("dev");
    let out = run_ok(
        &env,
        &["run", "--name", &name, "busybox", "--", "sh", "-c",
          "for d in null zero full random urandom tty ptmx; do test -c /dev/$d && echo ok-$d; done; \
           test -d /dev/pts && echo ok-pts; test -d /dev/shm && echo ok-shm; \
           echo x > /sys/kernel/foo 2>/dev/null || echo ro-sys; \
           echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null || echo ro-procsys; \
           for f in kcore keys timer_list sched_debug; do [ -e /proc/$f ] && echo masked-$f=$(wc -c < /proc/$f); done; echo h > /proc/sysrq-trigger 2>/dev/null || echo ro-sysrq; \
           grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; grep CapEff /proc/self/status"],
    );
    for want in [
        "ok-null",
        "ok-zero",
        "ok-full",
        "ok-random",
        "ok-urandom",
        "ok-tty",
        "ok-ptmx",
        "ok-pts",
        "ok-shm",
        "ro-sys",
        "ro-procsys",
        "ro-sysrq",
    ] {
        assert!(out.lines().any(|l| l == want), "missing {want}:\n{out}");
    }
    // The masked /proc files that exist on this kernel read as empty
    // (/proc/timer_list is several KiB on the host).
    let masked: Vec<&str> = out.lines().filter(|l| l.starts_with("masked-")).collect();
    assert!(
        masked.iter().any(|l| l.starts_with("masked-timer_list")),
        "{out}"
    );
    assert!(
        masked.iter().all(|l| l.ends_with("=0")),
        "masked paths readable:\n{out}"
    );
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // OCI default set = 0x00000000a80425fb; CAP_SYS_ADMIN (bit 21) must be gone.
    let cap = out.lines().find(|l| l.starts_with("CapEff")).unwrap();
    let v = u64::from_str_radix(cap.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(v & (1 << 21), 0, "CAP_SYS_ADMIN kept: {cap}");
    assert_eq!(v, 0xa80425fb, "not the OCI default set: {cap}");
    env.assert_clean(&name);
}

/// A user namespace needs no capability, so only the seccomp filter (which
/// denies unshare) stops `unshare -U`; without the filter this run succeeds.
#[test]
fn seccomp_refuses_a_user_namespace() {
    if skip_unless_root("seccomp_refuses_a_user_namespace") {
        return;
    }
    let env = Env::new();
    let name = unique("seccomp");
    let o = env.run(&[
        "run", "--name", &name, "busybox", "--", "unshare", "-U", "true",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("unshare: unshare(0x10000000): Operation not permitted"),
        "{}",
        stderr(&o)
    );
    env.assert_clean(&name);
}

#[test]
fn env_and_workdir_from_spec() {
    if skip_unless_root("env_and_workdir_from_spec") {
        return;
    }
    let env = Env::new();
    let name = unique("spec");
    let spec = env.root().join("w.toml");
    std::fs::write(
        &spec,
        format!("name = \"{name}\"\nimage = \"busybox\"\ncommand = [\"/bin/sh\", \"-c\", \"echo $GREETING; pwd\"]\nenv = {{ GREETING = \"hello there\" }}\nworkdir = \"/tmp\"\n"),
    )
    .unwrap();
    let out = run_ok(&env, &["run", "--spec", spec.to_str().unwrap()]);
    assert_eq!(out, "hello there\n/tmp\n");
    // A workdir that does not exist is an error naming it, and leaves nothing.
    let o = env.run(&["run", "--name", &name, "busybox", "--", "true"]);
    assert!(o.status.success());
    std::fs::write(
        &spec,
        format!(
            "name = \"{name}\"\nimage = \"busybox\"\ncommand = [\"true\"]\nworkdir = \"/nope\"\n"
        ),
    )
    .unwrap();
    let o = env.run(&["run", "--spec", spec.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nope"), "{}", stderr(&o));
    env.assert_clean(&name);
}

#[test]
fn memory_limit_kills_with_137() {
    if skip_unless_root("memory_limit_kills_with_137") {
        return;
    }
    let env = Env::new();
    let name = unique("oom");
    // dd allocates a 200 MiB buffer and fills it: past a 32 MiB limit.
    let o = env.run(&[
        "run",
        "--name",
        &name,
        "--memory",
        "32",
        "busybox",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=200M",
        "count=1",
    ]);
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    // The same with room to spare succeeds.
    let o = env.run(&[
        "run",
        "--name",
        &name,
        "--memory",
        "512",
        "busybox",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=200M",
        "count=1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    env.assert_clean(&name);
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    if skip_unless_root("pids_limit_stops_a_fork_bomb") {
        return;
    }
    let env = Env::new();
    let name = unique("pids");
    let spec = env.root().join("p.toml");
    std::fs::write(
        &spec,
        format!("name = \"{name}\"\nimage = \"busybox\"\ncommand = [\"sh\", \"-c\", \"n=0; while [ $n -lt 100 ]; do sleep 30 & n=$((n+1)); done; echo spawned=$n\"]\n[resources]\npids_max = 16\n"),
    )
    .unwrap();
    let start = Instant::now();
    let o = env.run(&["run", "--spec", spec.to_str().unwrap()]);
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        !all.contains("spawned=100"),
        "100 processes under pids_max=16:\n{all}"
    );
    assert!(all.contains("fork"), "expected a fork failure:\n{all}");
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "sleepers outlived the container"
    );
    env.assert_clean(&name);
}

#[test]
fn instances_from_one_image_stay_pristine() {
    if skip_unless_root("instances_from_one_image_stay_pristine") {
        return;
    }
    let env = Env::new();
    let name = unique("pristine");
    // A writes and deletes while B runs at the same time; neither sees the other,
    // and the image is unchanged afterwards.
    let a = env
        .cmd(&[
            "run",
            "--name",
            &name,
            "busybox",
            "--",
            "sh",
            "-c",
            "echo A > /etc/db; rm /etc/passwd; sleep 1; cat /etc/db",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let b = run_ok(
        &env,
        &[
            "run",
            "--name",
            &format!("{name}-b"),
            "busybox",
            "--",
            "sh",
            "-c",
            "cat /etc/db 2>/dev/null || echo no-db; test -f /etc/passwd && echo has-passwd",
        ],
    );
    assert_eq!(b, "no-db\nhas-passwd\n");
    let a = a.wait_with_output().unwrap();
    assert_eq!(stdout(&a), "A\n");
    let c = run_ok(
        &env,
        &[
            "run",
            "--name",
            &format!("{name}-c"),
            "busybox",
            "--",
            "sh",
            "-c",
            "cat /etc/db 2>/dev/null || echo no-db; test -f /etc/passwd && echo has-passwd",
        ],
    );
    assert_eq!(c, "no-db\nhas-passwd\n");
    env.assert_clean(&name);
}

#[test]
fn fifty_in_parallel_leave_nothing() {
    if skip_unless_root("fifty_in_parallel_leave_nothing") {
        return;
    }
    let env = Env::new();
    let name = unique("par");
    // Create the image once so all 50 share it.
    run_ok(&env, &["run", "--name", &name, "busybox", "--", "true"]);
    let children: Vec<_> = (0..50)
        .map(|i| {
            env.cmd(&[
                "run",
                "--name",
                &format!("{name}-{i}"),
                "busybox",
                "--",
                "sh",
                "-c",
                &format!("echo {i} > /tmp/x; cat /tmp/x"),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "instance {i}: {}", stderr(&o));
        assert_eq!(stdout(&o), format!("{i}\n"));
    }
    env.assert_clean(&name);
}

#[test]
fn stop_signals_clean_up() {
    if skip_unless_root("stop_signals_clean_up") {
        return;
    }
    let env = Env::new();
    let name = unique("sig");
    for (sig, code) in [
        (libc::SIGTERM, 143),
        (libc::SIGINT, 130),
        (libc::SIGHUP, 129),
        (libc::SIGQUIT, 131),
    ] {
        let mut c = env
            .cmd(&["run", "--name", &name, "busybox", "--", "sleep", "100"])
            .spawn()
            .unwrap();
        // Wait until the workload runs (its cgroup exists).
        let t = Instant::now();
        while cgroups_named(&name).is_empty() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: we signal only the duet process we spawned.
        unsafe { libc::kill(c.id() as i32, sig) };
        let t = Instant::now();
        let status = c.wait().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "duet took {:?} to stop",
            t.elapsed()
        );
        assert_eq!(status.code(), Some(code), "after signal {sig}");
        env.assert_clean(&name);
    }
}

#[test]
fn timeout_stops_the_workload() {
    if skip_unless_root("timeout_stops_the_workload") {
        return;
    }
    let env = Env::new();
    let name = unique("tmo");
    let t = Instant::now();
    let o = env.run(&[
        "run",
        "--name",
        &name,
        "--timeout",
        "0.5",
        "busybox",
        "--",
        "sleep",
        "100",
    ]);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    env.assert_clean(&name);
}

#[test]
fn gc_after_kill_9_removes_leftovers() {
    if skip_unless_root("gc_after_kill_9_removes_leftovers") {
        return;
    }
    let env = Env::new();
    let name = unique("gc");
    let mut c = env
        .cmd(&["run", "--name", &name, "busybox", "--", "sleep", "4242"])
        .spawn()
        .unwrap();
    let t = Instant::now();
    while cgroups_named(&name).is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    c.kill().unwrap(); // SIGKILL: duet gets no chance to clean up
    c.wait().unwrap();
    assert_eq!(
        env.instances().len(),
        1,
        "kill -9 should leave the instance dir for gc"
    );
    let o = env.run(&["gc"]);
    assert!(o.status.success(), "{}", stderr(&o));
    env.assert_clean(&name);
    // No `sleep 4242` of ours (a number no other test sleeps) survives (the container died with duet).
    let ps = std::process::Command::new("sh")
        .args(["-c", "ps -eo args | grep -c '^sleep 4242$' || true"])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&ps).trim(),
        "0",
        "container process survived kill -9 of duet"
    );
}

#[test]
fn keep_ps_rm() {
    if skip_unless_root("keep_ps_rm") {
        return;
    }
    let env = Env::new();
    let name = unique("keep");
    let o = env.run(&[
        "run",
        "--keep",
        "--name",
        &name,
        "busybox",
        "--",
        "sh",
        "-c",
        "echo kept > /data",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids = env.instances();
    assert_eq!(ids.len(), 1);
    let upper = env
        .root()
        .join("instances")
        .join(&ids[0])
        .join("upper/data");
    assert_eq!(std::fs::read_to_string(upper).unwrap(), "kept\n");
    let ps = stdout(&env.run(&["ps", "-a"]));
    assert!(ps.contains(&ids[0]) && ps.contains("kept"), "{ps}");
    // gc leaves kept instances alone.
    assert!(env.run(&["gc"]).status.success());
    assert_eq!(env.instances().len(), 1);
    assert!(env.run(&["rm", &ids[0]]).status.success());
    env.assert_clean(&name);
}

#[test]
fn docker_save_with_whiteout_runs() {
    if skip_unless_root("docker_save_with_whiteout_runs") {
        return;
    }
    let env = Env::new();
    let name = unique("dsave");
    run_ok(&env, &["run", "--name", &name, "busybox", "--", "true"]);
    // Layer 1: the busybox layer as a tar; layer 2: deletes /etc/passwd, adds /data/file.
    let store = duet_shared::image::ImageStore::open(env.root()).unwrap();
    let bb = store.get("busybox").unwrap();
    let mut l1 = tar::Builder::new(Vec::new());
    l1.follow_symlinks(false);
    l1.append_dir_all(".", store.layer_dir(&bb.layers[0]))
        .unwrap();
    let l1 = l1.into_inner().unwrap();
    let mut l2 = tar::Builder::new(Vec::new());
    for (p, d) in [
        ("etc/.wh.passwd", &b""[..]),
        ("data/file", &b"from layer 2\n"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(d.len() as u64);
        l2.append_data(&mut h, p, d).unwrap();
    }
    let l2 = l2.into_inner().unwrap();
    let cfg = br#"{"config":{"Cmd":["/bin/sh","-c","cat /data/file; test -e /etc/passwd && echo passwd-present || echo passwd-deleted"],"Env":["PATH=/bin:/usr/bin"]}}"#;
    let man = br#"[{"Config":"c.json","RepoTags":["t:1"],"Layers":["1/layer.tar","2/layer.tar"]}]"#;
    let mut outer = tar::Builder::new(Vec::new());
    for (p, d) in [
        ("manifest.json", &man[..]),
        ("c.json", &cfg[..]),
        ("1/layer.tar", &l1[..]),
        ("2/layer.tar", &l2[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(d.len() as u64);
        outer.append_data(&mut h, p, d).unwrap();
    }
    let tarball = env.root().join("saved.tar");
    std::fs::File::create(&tarball)
        .unwrap()
        .write_all(&outer.into_inner().unwrap())
        .unwrap();
    run_ok(
        &env,
        &[
            "image",
            "import",
            tarball.to_str().unwrap(),
            "--name",
            "saved",
        ],
    );
    let ls = run_ok(&env, &["image", "ls"]);
    assert!(ls.contains("saved") && ls.contains("busybox"), "{ls}");
    let out = run_ok(&env, &["run", "--name", &name, "saved"]);
    assert_eq!(out, "from layer 2\npasswd-deleted\n");
    env.assert_clean(&name);
}

#[test]
fn bad_input_is_named_and_leaves_nothing() {
    let env = Env::new();
    let spec = env.root().join("bad.toml");
    std::fs::write(&spec, "image = \"busybox\"\n[resources]\nmemory_mb = 12\n").unwrap();
    let o = env.run(&["run", "--spec", spec.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(125));
    let e = stderr(&o);
    assert!(e.contains("bad.toml:3:1") && e.contains("memory_mb"), "{e}");
    let o = env.run(&["run", "nosuchimage", "--", "true"]);
    let e = stderr(&o);
    assert!(e.contains("nosuchimage") && e.contains("busybox"), "{e}");
    assert!(env.instances().is_empty());
    // One line, no panic.
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn commit_makes_an_image_of_only_the_changes() {
    if skip_unless_root("commit_makes_an_image_of_only_the_changes") {
        return;
    }
    let env = Env::new();
    let name = unique("commit");
    let o = env.run(&[
        "run",
        "--keep",
        "--name",
        &name,
        "busybox",
        "--",
        "sh",
        "-c",
        "head -c 300000 /dev/urandom > /data.bin; echo v2 > /etc/version; rm /etc/passwd",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = env.instances().pop().unwrap();
    let out = run_ok(&env, &["commit", &id, "derived"]);
    assert!(out.contains("derived"), "{out}");
    // The new image runs and sees the change, the deletion included.
    let out = run_ok(&env, &["run", "--name", &format!("{name}-2"), "derived", "--", "sh", "-c",
        "wc -c < /data.bin; cat /etc/version; test -e /etc/passwd && echo passwd || echo no-passwd"]);
    assert_eq!(out, "300000\nv2\nno-passwd\n");
    // The committed layer holds only the change: ~300 kB, not the image.
    let store = duet_shared::image::ImageStore::open(env.root()).unwrap();
    let img = store.get("derived").unwrap();
    let base = store.get("busybox").unwrap();
    assert_eq!(
        img.layers.len(),
        base.layers.len() + 1,
        "one new layer on top"
    );
    assert_eq!(img.layers[..base.layers.len()], base.layers[..]);
    let top = img.layers.last().unwrap();
    let size: u64 = std::fs::read_to_string(store.layer_path(top).join("size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        (300_000..340_000).contains(&size),
        "committed layer is {size} bytes"
    );
    // The base image is untouched.
    let out = run_ok(
        &env,
        &[
            "run",
            "--name",
            &format!("{name}-3"),
            "busybox",
            "--",
            "sh",
            "-c",
            "test -e /etc/passwd && echo passwd",
        ],
    );
    assert_eq!(out, "passwd\n");
    assert!(env.run(&["rm", &id]).status.success());
    env.assert_clean(&name);
}

/// The memory hierarchy's mount and this process's cgroup in it (v1 or v2).
fn own_memory_cgroup() -> Option<(PathBuf, PathBuf)> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let v1 = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let r: Vec<&str> = right.split(' ').collect();
        (r[0] == "cgroup" && r[2].split(',').any(|o| o == "memory"))
            .then(|| PathBuf::from(left.split(' ').nth(4).unwrap()))
    });
    let (mount, own) = match v1 {
        Some(m) => {
            let own = cg.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, list, path) = (f.next()?, f.next()?, f.next()?);
                list.split(',')
                    .any(|c| c == "memory")
                    .then(|| path.to_string())
            })?;
            (m, own)
        }
        None => {
            let m = mounts.lines().find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                right
                    .starts_with("cgroup2 ")
                    .then(|| PathBuf::from(left.split(' ').nth(4).unwrap()))
            })?;
            let own = cg
                .lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))?;
            (m, own)
        }
    };
    Some((mount.clone(), mount.join(own.trim_start_matches('/'))))
}

#[test]
fn the_callers_memory_limit_still_covers_the_container() {
    let test = "the_callers_memory_limit_still_covers_the_container";
    if skip_unless_root(test) {
        return;
    }
    let Some((mount, own)) = own_memory_cgroup() else {
        skip(test, "no memory cgroup hierarchy mounted");
        return;
    };
    let v2 =
        !mount.join("memory.limit_in_bytes").exists() && mount.join("cgroup.controllers").exists();
    // A cgroup for "the caller" (what a user's slice or a CI job's limit would be):
    // 96 MiB. duet runs inside it; the container asks for 512 MiB and uses 200.
    // (The limit leaves room for duet itself, ~40 MiB as a debug build: at
    // a tighter one the OOM killer may pick duet before dd has grown.)
    let caller = own.join(format!("duet-test-caller-{}", std::process::id()));
    std::fs::create_dir(&caller).unwrap();
    let limit = if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    std::fs::write(caller.join(limit), (96u64 << 20).to_string()).unwrap();
    // On v2 the caller's cgroup holds duet, so duet nests under its parent (runc's
    // rule): put duet one level deeper, in a leaf below the limited cgroup.
    let leaf = if v2 {
        std::fs::write(caller.join("cgroup.subtree_control"), "+memory").unwrap();
        let l = caller.join("duet-leaf");
        std::fs::create_dir(&l).unwrap();
        l
    } else {
        caller.clone()
    };
    let procs = leaf.join("cgroup.procs");
    let env = Env::new();
    let name = unique("callerlimit");
    let mut cmd = env.cmd(&[
        "run",
        "--name",
        &name,
        "--memory",
        "512",
        "busybox",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=200M",
        "count=1",
    ]);
    let procs_c = std::ffi::CString::new(procs.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: open/write/close in the forked child before exec: async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let fd = libc::open(procs_c.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    // duet leaves nothing in its caller's cgroup, not even an empty `duet/`.
    let left: Vec<_> = std::fs::read_dir(&leaf)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .collect();
    let rm = |d: &Path| {
        for _ in 0..100 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    if v2 {
        rm(&leaf);
    }
    rm(&caller);
    assert_eq!(
        o.status.code(),
        Some(137),
        "200 MiB inside a caller limited to 96 MiB must be OOM-killed: {}",
        stderr(&o)
    );
    assert!(left.is_empty(), "left in the caller's cgroup: {left:?}");
    assert!(!caller.exists(), "the caller's cgroup could not be removed");
    env.assert_clean(&name);
}

#[test]
fn instances_are_named_by_name_or_id_prefix() {
    if skip_unless_root("instances_are_named_by_name_or_id_prefix") {
        return;
    }
    let env = Env::new();
    let name = unique("named");
    run_ok(
        &env,
        &[
            "run",
            "--keep",
            "--name",
            &name,
            "busybox",
            "--",
            "sh",
            "-c",
            "echo x > /f",
        ],
    );
    // By name (the issue's example: `run --name web`, then `commit web img`).
    let img = format!("{name}-img");
    run_ok(&env, &["commit", &name, &img]);
    assert_eq!(run_ok(&env, &["run", &img, "--", "cat", "/f"]), "x\n");
    // --name is a handle: a second instance may not take it.
    let o = env.run(&["run", "--keep", "--name", &name, "busybox", "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("already in use"), "{}", stderr(&o));
    run_ok(&env, &["rm", &name]);
    // Two kept instances of one spec name (no --name; the spec's `name` is
    // their hostname): that name is ambiguous, a unique id prefix is not.
    let spec = env.root().join("w.toml");
    std::fs::write(
        &spec,
        format!("name = \"{name}\"\nimage = \"busybox\"\ncommand = [\"true\"]\n"),
    )
    .unwrap();
    let spec = spec.to_str().unwrap();
    run_ok(&env, &["run", "--keep", "--spec", spec]);
    run_ok(&env, &["run", "--keep", "--spec", spec]);
    let mut ids = env.instances();
    ids.sort();
    assert_eq!(ids.len(), 2);
    let o = env.run(&["rm", &name]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&ids[0]) && stderr(&o).contains(&ids[1]),
        "{}",
        stderr(&o)
    );
    // The shortest prefix that tells the two apart.
    let n = (1..=ids[0].len())
        .find(|&n| ids[0][..n] != ids[1][..n])
        .unwrap();
    run_ok(&env, &["rm", &ids[0][..n]]);
    assert_eq!(env.instances(), vec![ids[1].clone()]);
    run_ok(&env, &["rm", &name]);
    let o = env.run(&["rm", &name]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains(&format!("no instance `{name}`")),
        "{}",
        stderr(&o)
    );
    env.assert_clean(&name);
}

/// A workdir of `/proc/self/fd/N` (an image's WORKDIR, say) must not reach
/// a directory duet's caller left open as fd N: that cwd would be on the
/// host, outside the container's root (runc's CVE-2024-21626).
#[test]
fn workdir_cannot_reach_an_inherited_fd() {
    if skip_unless_root("workdir_cannot_reach_an_inherited_fd") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let name = unique("wdfd");
    let host_dir = env.root().join("host-dir");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("HOST_FILE"), "").unwrap();
    let spec = env.root().join("w.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"{name}\"\nimage = \"busybox\"\nworkdir = \"/proc/self/fd/9\"\n\
             command = [\"sh\", \"-c\", \"ls; ls ..\"]\n"
        ),
    )
    .unwrap();
    let dir = std::fs::File::open(&host_dir).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&dir);
    let mut cmd = env.cmd(&["run", "--spec", spec.to_str().unwrap()]);
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
    assert!(
        !stdout(&o).contains("HOST_FILE") && !stdout(&o).contains("host-dir"),
        "the workload's cwd is the host's {}:\n{}",
        host_dir.display(),
        stdout(&o)
    );
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("/proc/self/fd/9"), "{}", stderr(&o));
    env.assert_clean(&name);
}
