//! Helpers for the integration tests: run the real `duet` binary against a
//! private state root, and check that runs leave nothing behind.

#![allow(dead_code)]

pub mod oci;
pub mod pristine;
pub mod testbed;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The duet binary cargo built for these tests.
pub fn duet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_duet"))
}

pub use duet_shared::testing::{is_root, skip, skip_unless_program};

/// Skips (see [`skip`]) unless root and a static busybox are available.
pub fn skip_unless_root(test: &str) -> bool {
    if !is_root() {
        return skip(
            test,
            "needs root (containers need namespaces, mounts and cgroups)",
        );
    }
    skip_unless_program(test, "/bin/busybox", "busybox-static")
}

/// Skips (see [`skip`]) unless root, busybox and the static `duet-probe`
/// beside duet (which the busybox image then carries) are available.
pub fn skip_unless_root_and_probe(test: &str) -> bool {
    if skip_unless_root(test) {
        return true;
    }
    let probe = duet_bin().with_file_name("duet-probe");
    if !probe.is_file() {
        return skip(
            test,
            &format!("needs {} (cargo build -p duet-probe)", probe.display()),
        );
    }
    false
}

/// A private DUET_ROOT for one test.
pub struct Env {
    pub root: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        // Under /var/tmp, not /tmp: overlayfs upper dirs need a real file system, and
        // some hosts mount /tmp as tmpfs with options overlay dislikes.
        std::fs::create_dir_all("/var/tmp/duet-tests").unwrap();
        let root = tempfile::Builder::new()
            .prefix("root-")
            .tempdir_in("/var/tmp/duet-tests")
            .unwrap();
        // No bridge on the development host: instances get no network
        // unless a test asks for one (tests/network.rs, in a network
        // namespace of its own).
        std::fs::write(root.path().join("network.toml"), "default = \"none\"\n").unwrap();
        Env { root }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `duet ARGS` with this env's DUET_ROOT.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(duet_bin());
        c.args(args)
            .env("DUET_ROOT", self.root())
            .stdin(Stdio::null());
        c
    }

    /// Runs `duet ARGS` and captures its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn duet")
    }

    /// Instance directories currently present.
    pub fn instances(&self) -> Vec<String> {
        match std::fs::read_dir(self.root().join("instances")) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Asserts no instance directory, no mount under this root and no cgroup
    /// named after `name` is left.
    pub fn assert_clean(&self, name: &str) {
        assert_eq!(
            self.instances(),
            Vec::<String>::new(),
            "instance directories left behind"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.root().to_string_lossy().into_owned();
        assert!(!mounts.contains(&root), "mounts left under {root}");
        let left = cgroups_named(name);
        assert!(left.is_empty(), "cgroups left behind: {left:?}");
    }
}

/// cgroup directories `duet/<name>-*` anywhere under any hierarchy in
/// /sys/fs/cgroup (duet nests them below its caller's cgroup).
pub fn cgroups_named(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let prefix = format!("{name}-");
    duet_container::cgroup::walk_cgroup_dirs(Path::new("/sys/fs/cgroup"), |p| {
        let hit = p
            .parent()
            .and_then(|d| d.file_name())
            .is_some_and(|d| d == "duet")
            && p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix));
        if hit {
            found.push(p.to_path_buf());
        }
        !hit
    });
    found
}

/// A unique instance name for one test.
pub fn unique(name: &str) -> String {
    format!("{name}{}", std::process::id())
}

/// `duet ARGS` in `env`, which must succeed; its stdout.
pub fn ok(env: &Env, args: &[&str]) -> String {
    let o = env.run(args);
    assert!(
        o.status.success(),
        "duet {args:?}: {}\n{}",
        o.status,
        stderr(&o)
    );
    stdout(&o)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The phase names of a `--timings` table (`  <phase>  <ms> ms  <ms> ms`), in order.
pub fn timing_phases(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (l.starts_with("  ") && w.len() == 5 && w[2] == "ms" && w[4] == "ms")
                .then(|| w[0].to_string())
        })
        .collect()
}

/// Pids whose command line (NUL-separated) contains `needle`.
pub fn pids_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Cgroup directories below /sys/fs/cgroup (12 levels deep at most) for
/// which `pred(parent, name)` holds; below a match nothing is searched.
pub fn cgroup_dirs_where(pred: impl Fn(&Path, &std::ffi::OsStr) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = todo.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if pred(&dir, &e.file_name()) {
                found.push(e.path());
            } else if depth < 12 {
                todo.push((e.path(), depth + 1));
            }
        }
    }
    found
}

/// `cmd`'s output, as `Command::output` gives it, but never waiting more
/// than `limit`. The child runs in a process group of its own; one still
/// running at the limit has the whole group sent SIGINT (duet cleans up on
/// it, and a bench's own deadlines are shorter than the grace), then
/// SIGKILL [`GRACE`] later, and the test fails with what the group printed
/// so far and where each of its threads was waiting. So a hang in CI is a
/// failure that says where, not a job that runs out of time.
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    run_within(cmd, limit).0
}

/// How long a child sent SIGINT by [`run_within`] may take to clean up:
/// longer than the pristine-db bench's longest deadline (one test case).
pub const GRACE: std::time::Duration =
    duet_bench::pristine::TEST_LIMIT.saturating_add(std::time::Duration::from_secs(30));

/// [`output_within`], with the child's pid.
pub fn run_within(cmd: &mut Command, limit: std::time::Duration) -> (Output, u32) {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // Each stream is read into a buffer the caller can look at without
    // waiting for its end: a grandchild that outlives a kill keeps it open.
    let reader = |mut r: Box<dyn Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mine = Arc::clone(&buf);
        let t = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = r.read(&mut chunk) {
                mine.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (t, buf)
    };
    let (out_t, out) = reader(Box::new(child.stdout.take().unwrap()));
    let (err_t, err) = reader(Box::new(child.stderr.take().unwrap()));
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    let t0 = Instant::now();
    let pid = child.id() as i32;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() >= limit {
            let waits = waits_below(pid);
            // SAFETY: signals to the process group this function made.
            unsafe { libc::kill(-pid, libc::SIGINT) };
            let t1 = Instant::now();
            while child.try_wait().unwrap().is_none() && t1.elapsed() < GRACE {
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: as above; whatever of the group is left.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "{:?} did not finish within {} s; where it waited:\n{waits}\n\
                 stdout:\n{}\nstderr:\n{}",
                cmd,
                limit.as_secs(),
                text(&out),
                text(&err),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (_, _) = (out_t.join(), err_t.join());
    let output = Output {
        status,
        stdout: std::mem::take(&mut *out.lock().unwrap()),
        stderr: std::mem::take(&mut *err.lock().unwrap()),
    };
    (output, child.id())
}

/// For `pid` and every process below it: its command line and, per
/// thread, its name and the kernel function it sleeps in (`wchan`).
fn waits_below(pid: i32) -> String {
    let mut lines = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let proc_dir = PathBuf::from(format!("/proc/{p}"));
        let cmd = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        lines.push(format!("{p}: {}", cmd.trim()));
        for t in std::fs::read_dir(proc_dir.join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let read = |f: &str| {
                std::fs::read_to_string(t.path().join(f))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            lines.push(format!(
                "  thread {} {}: {}",
                t.file_name().to_string_lossy(),
                read("comm"),
                read("wchan")
            ));
            let children = read("children");
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    lines.join("\n")
}
