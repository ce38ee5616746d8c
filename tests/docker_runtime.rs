//! duet as Docker's OCI runtime: a private dockerd (Debian's docker.io,
//! started and stopped by each test, see `duet_bench::docker`) with
//! `--add-runtime duet=duet-runc`, driving duet through containerd's
//! `io.containerd.runc.v2` shim exactly as it drives runc (create, start,
//! state, exec, pause, resume, kill, delete).

mod common;

use common::{duet_bin, pids_with, skip, stderr, stdout};
use duet_bench::docker::{Dockerd, RuntimeEntry};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// A private engine with duet registered as `duet`, and a busybox image
/// (every applet, an /etc/passwd with a user 1000, ENV and WORKDIR set by
/// the image) imported as `duet-busybox`.
struct Engine {
    _dir: tempfile::TempDir,
    docker: Dockerd,
}

fn engine(test: &str) -> Option<Engine> {
    if let Some(why) = duet_bench::docker::unavailable() {
        skip(test, &why);
        return None;
    }
    if !Path::new("/bin/busybox").exists() {
        skip(
            test,
            "/bin/busybox missing (apt-get install busybox-static)",
        );
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("duet-docker-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let runtime = dir.path().join("duet-runc");
    std::os::unix::fs::symlink(duet_bin(), &runtime).unwrap();
    let rootfs = dir.path().join("rootfs");
    make_rootfs(&rootfs);
    let docker = Dockerd::start(&[RuntimeEntry {
        name: "duet".into(),
        path: runtime,
        args: vec![],
    }])
    .unwrap_or_else(|e| panic!("{test}: {e}"));
    docker
        .import_rootfs_with(
            &rootfs,
            "duet-busybox",
            &["ENV FROM_IMAGE=yes", "WORKDIR /srv", "CMD [\"sh\"]"],
        )
        .unwrap();
    Some(Engine { _dir: dir, docker })
}

fn make_rootfs(rootfs: &Path) {
    duet_bench::oci::make_busybox_rootfs(rootfs, Path::new("/bin/busybox")).unwrap();
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    std::fs::create_dir_all(rootfs.join("srv")).unwrap();
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:alice:/srv:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nalice:x:1000:\n").unwrap();
}

impl Engine {
    fn docker(&self, args: &[&str]) -> Output {
        self.docker.cmd(args).output().unwrap()
    }

    /// `docker run --rm --runtime duet ARGS...` (ARGS include the image).
    fn run(&self, args: &[&str]) -> Output {
        let mut a = vec!["run", "--rm", "--runtime", "duet", "--network", "none"];
        a.extend_from_slice(args);
        self.docker(&a)
    }

    /// `docker run -d --runtime duet --network none ARGS...`: the id.
    fn run_d(&self, args: &[&str]) -> String {
        let mut a = vec!["run", "-d", "--runtime", "duet", "--network", "none"];
        a.extend_from_slice(args);
        self.ok(&a).trim().to_string()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}\n{}",
            stderr(&o),
            self.docker.log_tail()
        );
        stdout(&o)
    }

    /// The full id of container `name`.
    fn id(&self, name: &str) -> String {
        self.ok(&["inspect", "--format", "{{.Id}}", name])
            .trim()
            .to_string()
    }
}

/// Cgroup directories whose name contains `id` anywhere below /sys/fs/cgroup.
fn cgroups_named(id: &str) -> Vec<PathBuf> {
    common::cgroup_dirs_where(|_, name| name.to_string_lossy().contains(id))
}

#[test]
fn docker_run_with_duet_gives_output_exit_codes_and_limits() {
    let test = "docker_run_with_duet_gives_output_exit_codes_and_limits";
    let Some(e) = engine(test) else { return };
    let img = "duet-busybox";
    let o = e.run(&[img, "echo", "hi"]);
    assert_eq!(stdout(&o), "hi\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(e.run(&[img, "sh", "-c", "exit 7"]).status.code(), Some(7));
    let o = e.run(&[img, "no-such-command"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    // The image's ENV and WORKDIR, the command line's -e, -w and -u.
    let show = "echo $FROM_IMAGE $FOO $(pwd) $(id -u) $(id -g)";
    let o = e.run(&[img, "sh", "-c", show]);
    assert_eq!(stdout(&o), "yes /srv 0 0\n", "{}", stderr(&o));
    let o = e.run(&[
        "-e", "FOO=bar", "-w", "/tmp", "-u", "alice", img, "sh", "-c", show,
    ]);
    assert_eq!(stdout(&o), "yes bar /tmp 1000 1000\n", "{}", stderr(&o));
    // --read-only, --cap-drop ALL.
    let o = e.run(&["--read-only", img, "touch", "/x"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    let o = e.run(&[
        "--cap-drop",
        "ALL",
        img,
        "grep",
        "CapEff",
        "/proc/self/status",
    ]);
    assert_eq!(stdout(&o), "CapEff:\t0000000000000000\n", "{}", stderr(&o));
    let o = e.run(&[img, "grep", "CapEff", "/proc/self/status"]);
    assert_ne!(stdout(&o), "CapEff:\t0000000000000000\n");
    // -m 32m: a 64 MiB buffer is killed by the OOM killer: 137.
    let o = e.run(&[
        "-m",
        "32m",
        "--memory-swap",
        "32m",
        img,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    // -t: a pty from the container's own devpts.
    let o = e.run(&["-t", img, "tty"]);
    assert!(stdout(&o).starts_with("/dev/pts/"), "{}", stdout(&o));
    // docker kill: 137.
    let id = e.run_d(&[img, "sleep", "1000"]);
    e.ok(&["kill", &id]);
    assert_eq!(e.ok(&["wait", &id]).trim(), "137");
    e.ok(&["rm", &id]);
    assert!(cgroups_named(&id).is_empty(), "{:?}", cgroups_named(&id));
}

#[test]
fn docker_detached_logs_exec_stop_rm_with_duet() {
    let test = "docker_detached_logs_exec_stop_rm_with_duet";
    let Some(e) = engine(test) else { return };
    let img = "duet-busybox";
    let id = e.run_d(&[
        "--name",
        "web",
        "--hostname",
        "webhost",
        img,
        "sh",
        "-c",
        "echo up; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    assert_eq!(id, e.id("web"));
    assert_eq!(
        e.ok(&["inspect", "--format", "{{.HostConfig.Runtime}}", "web"]),
        "duet\n"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stdout(&e.docker(&["logs", "web"])).contains("up") {
        assert!(Instant::now() < deadline, "no log line");
        std::thread::sleep(Duration::from_millis(50));
    }
    // docker exec: output, exit code, user, missing command, terminal.
    assert_eq!(
        e.ok(&["exec", "web", "sh", "-c", "echo in $(hostname) $FROM_IMAGE"]),
        "in webhost yes\n"
    );
    assert_eq!(
        e.docker(&["exec", "web", "sh", "-c", "exit 5"])
            .status
            .code(),
        Some(5)
    );
    assert_eq!(e.ok(&["exec", "-u", "1000", "web", "id", "-u"]), "1000\n");
    let o = e.docker(&["exec", "web", "no-such-command"]);
    assert!(matches!(o.status.code(), Some(126 | 127)), "{o:?}");
    let o = e.ok(&["exec", "-t", "web", "tty"]);
    assert!(o.starts_with("/dev/pts/"), "{o}");
    // Processes exec'd with -d are in the container and end with it.
    e.ok(&["exec", "-d", "web", "sleep", "4242"]);
    // docker pause / unpause: the cgroup freezer.
    e.ok(&["pause", "web"]);
    assert_eq!(
        e.ok(&["inspect", "--format", "{{.State.Status}}", "web"])
            .trim(),
        "paused"
    );
    e.ok(&["unpause", "web"]);
    assert_eq!(e.ok(&["exec", "web", "echo", "thawed"]), "thawed\n");
    // docker update: new limits in the container's cgroups.
    e.ok(&[
        "update",
        "--memory",
        "64m",
        "--memory-swap",
        "64m",
        "--pids-limit",
        "50",
        "web",
    ]);
    let read = |file: &str| -> Vec<String> {
        cgroups_named(&id)
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .map(|s| s.trim().to_string())
            .collect()
    };
    let memory = [read("memory.limit_in_bytes"), read("memory.max")].concat();
    assert_eq!(memory, ["67108864"], "memory limit after docker update");
    assert_eq!(read("pids.max"), ["50"]);
    // docker stop: TERM reaches the workload, which exits 0.
    e.ok(&["stop", "-t", "10", "web"]);
    assert!(stdout(&e.docker(&["logs", "web"])).contains("bye"));
    assert_eq!(
        e.ok(&["inspect", "--format", "{{.State.ExitCode}}", "web"])
            .trim(),
        "0"
    );
    assert!(
        pids_with("4242").is_empty(),
        "exec'd process outlived the container"
    );
    e.ok(&["rm", "web"]);
    assert!(cgroups_named(&id).is_empty(), "{:?}", cgroups_named(&id));

    // kill -9 of the shim, then docker rm -f: nothing is left.
    let id = e.run_d(&[img, "sleep", "4343"]);
    let shims: Vec<i32> = pids_with("containerd-shim")
        .into_iter()
        .filter(|&p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(&id)
        })
        .collect();
    assert!(!shims.is_empty(), "no shim for {id}");
    for p in shims {
        // SAFETY: kill(2) of a shim of our private engine's container.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let _ = e.docker(&["rm", "-f", &id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(pids_with("4343").is_empty() && cgroups_named(&id).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "left after kill -9 of the shim and rm -f: pids {:?}, cgroups {:?}",
            pids_with("4343"),
            cgroups_named(&id)
        );
        let _ = e.docker(&["rm", "-f", &id]);
        std::thread::sleep(Duration::from_millis(200));
    }
}
