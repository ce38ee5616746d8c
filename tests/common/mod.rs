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
    let mut todo = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let n = e.file_name().to_string_lossy().into_owned();
            if dir.file_name().is_some_and(|d| d == "duet") && n.starts_with(&prefix) {
                found.push(e.path());
            } else if depth < 12 {
                todo.push((e.path(), depth + 1));
            }
        }
    }
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
