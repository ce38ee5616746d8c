//! `duet bench pristine-db` at small scale (4 tests, 1 and then 2 at a time) with a
//! real PostgreSQL in containers on this host: every strategy's row is
//! measured and its tests passed; a database tampered with in the image
//! fails the run loudly; Ctrl-C leaves nothing behind. (The microVM rows:
//! tests/pristine_testbed.rs.)
//!
//! The image comes from images/postgres/build.sh (debootstrap, cached in
//! ~/.cache/duet/postgres/), into a state root kept beside that cache, so
//! the 210 MB image is built once, not per test. The bench runs its
//! instances in a state root and network namespace of its own below it.

mod common;

use common::duet_bin;
use common::pristine::store;
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::pristine::IMAGE;

/// `duet ARGS`, failing the test (with where it waited) after 15 minutes.
fn duet(root: &Path, args: &[&str]) -> Output {
    common::output_within(
        Command::new(duet_bin())
            .args(args)
            .env("DUET_ROOT", root)
            .stdin(Stdio::null()),
        Duration::from_secs(15 * 60),
    )
}

/// The bench at small scale, `parallel` at a time (a list: once per
/// value); its report, exit status and pid.
fn bench(root: &Path, image: &str, parallel: &str) -> (Value, Output, u32) {
    let (out, pid) = common::run_within(
        Command::new(duet_bin())
            .args([
                "bench",
                "pristine-db",
                "--isolation",
                "container",
                "--tests",
                "4",
                "--parallel",
                parallel,
                "--pg-image",
                image,
                "--report-json",
                "-",
            ])
            .env("DUET_ROOT", root)
            .stdin(Stdio::null()),
        Duration::from_secs(15 * 60),
    );
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out, pid)
}

/// Nothing of the bench run `pid` is left: no scratch root of its own
/// (`<root>/tmp/pg-<pid>-*`, which held its instances), no mount below
/// it, no process started with it (monitors, postgres). Other tests run
/// benches in the same store at the same time: only this run's count.
fn assert_nothing_left(root: &Path, pid: u32) {
    let prefix = format!("pg-{pid}-");
    let scratch: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(scratch.is_empty(), "scratch roots left: {scratch:?}");
    let mine = root
        .join("tmp")
        .join(&prefix)
        .to_string_lossy()
        .into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&mine), "mounts left under {mine}*");
    let procs = processes_of(&mine);
    assert!(procs.is_empty(), "processes left of {mine}*: {procs:?}");
}

/// Processes whose command line or environment (a monitor's DUET_ROOT)
/// names `needle`.
fn processes_of(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let hit = ["cmdline", "environ"].iter().any(|f| {
            let b = std::fs::read(e.path().join(f)).unwrap_or_default();
            String::from_utf8_lossy(&b).contains(needle)
        });
        if hit {
            out.push(pid);
        }
    }
    out
}

#[test]
fn every_container_strategy_gives_each_test_a_pristine_database() {
    let Some(root) = store("every_container_strategy_gives_each_test_a_pristine_database") else {
        return;
    };
    let (report, out, pid) = bench(root, IMAGE, "1,2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let rows = report["pristine"].as_array().unwrap();
    let strategies: Vec<&str> = rows
        .iter()
        .map(|r| r["strategy"].as_str().unwrap())
        .collect();
    // The per-test strategy once per P, the shared server once.
    assert_eq!(
        strategies,
        ["shared-reset", "container", "container"],
        "{err}"
    );
    let labels: Vec<&str> = rows.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(
        labels,
        [
            "one shared server, reset between tests",
            "one container per test, 1 at a time",
            "one container per test, 2 at a time"
        ]
    );
    for r in rows {
        assert_eq!(r["status"]["state"], "measured", "{r}");
        assert_eq!(
            (r["tests"].as_u64(), r["passed"].as_u64()),
            (Some(4), Some(4)),
            "{r}"
        );
        for f in [
            "suite_s",
            "ready_p50_ms",
            "ready_p99_ms",
            "pss_mib",
            "disk_mib",
            "test_p50_ms",
            "removal_p50_ms",
        ] {
            assert!(r[f].as_f64().unwrap() > 0.0, "{f} in {r}");
        }
    }
    assert!(rows[0]["reset_p50_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        (&rows[1]["parallel"], &rows[2]["parallel"]),
        (&1.into(), &2.into())
    );
    // A container's own writes: its copy-ups of the files PostgreSQL
    // wrote, never the 210 MB image.
    assert!(rows[2]["disk_mib"].as_f64().unwrap() < 200.0, "{}", rows[2]);
    assert!(err.contains("4/4 passed"), "{err}");
    assert_nothing_left(root, pid);
}

#[test]
fn a_database_tampered_with_in_the_image_fails_the_run() {
    let Some(root) = store("a_database_tampered_with_in_the_image_fails_the_run") else {
        return;
    };
    // The seed plus one row that no test wrote, committed as an image of its own.
    let keeper = format!("pg-tamper-{}", std::process::id());
    let image = format!("duet-postgres:tampered-{}", std::process::id());
    let o = duet(
        root,
        &[
            "run",
            "--keep",
            "--name",
            &keeper,
            "--network",
            "none",
            IMAGE,
            "--",
            "sh",
            "-euc",
            "pg_ctl -w -o '-c listen_addresses=' start >/dev/null; \
             psql -q -h /tmp -d app -c \"INSERT INTO test_writes VALUES ('intruder', 1)\"; \
             pg_ctl -w -m fast stop >/dev/null",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = duet(root, &["commit", &keeper, &image]);
    let _ = duet(root, &["rm", "-f", &keeper]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let (report, out, pid) = bench(root, &image, "2");
    let _ = duet(root, &["image", "rm", &image]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a tampered database passed: {err}");
    assert!(
        err.contains("pristine-db: ") && err.contains("not pristine at the start"),
        "{err}"
    );
    // The shared server's first test sees the intruder; its reset (from
    // the untouched `seed` template) hides it from the rest. Every
    // container of the image starts with it.
    let rows = report["pristine"].as_array().unwrap();
    for (r, passed) in rows.iter().zip([3, 0]) {
        assert_eq!(r["status"]["state"], "failed", "{r}");
        let why = r["status"]["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"));
        assert!(why.contains("not pristine at the start"), "{why}");
        assert!(why.contains("test_writes rows 1 (expected 0)"), "{why}");
        assert!(why.contains("intruder (1)"), "{why}");
        assert_eq!(r["passed"], passed, "{r}");
    }
    assert_eq!(rows.len(), 2);
    assert_nothing_left(root, pid);
}

#[test]
fn ctrl_c_in_the_middle_leaves_nothing_behind() {
    let Some(root) = store("ctrl_c_in_the_middle_leaves_nothing_behind") else {
        return;
    };
    let child = Command::new(duet_bin())
        .args([
            "bench",
            "pristine-db",
            "--isolation",
            "container",
            "--tests",
            "400",
            "--parallel",
            "2",
        ])
        .env("DUET_ROOT", root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut child = child;
    let mine = format!("pg-{pid}-");
    // Until the container-per-test suite is under way: an instance in the
    // bench's own state root, after the shared server's row.
    let t0 = Instant::now();
    let running = loop {
        let n: usize = std::fs::read_dir(root.join("tmp"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&mine))
            .map(|e| {
                std::fs::read_dir(e.path().join("instances"))
                    .map(|d| d.count())
                    .unwrap_or(0)
            })
            .sum();
        if n > 0 && t0.elapsed() > Duration::from_secs(8) {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(120) || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(running, "no instance appeared: {err}");
    assert!(
        !out.status.success() && out.status.signal().is_none(),
        "{:?}: {err}",
        out.status
    );
    assert!(err.contains("interrupted"), "{err}");
    assert_nothing_left(root, pid);
    let gc = duet(root, &["gc"]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
}

/// `duet demo --scenario pristine-db`: the story, the bench run by the
/// demo itself, its table with every container way measured and 5/5
/// passed, the microVM ways named as not run (`--vm-via skip`), and the
/// conclusions from this run's numbers.
#[test]
fn the_demo_tells_the_pristine_database_story_from_a_real_run() {
    let Some(root) = store("the_demo_tells_the_pristine_database_story_from_a_real_run") else {
        return;
    };
    let out = duet(
        root,
        &[
            "demo",
            "--scenario",
            "pristine-db",
            "--vm-via",
            "skip",
            "--explain",
        ],
    );
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{text}\n{err}");
    let line = |label: &str| {
        text.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` row:\n{text}"))
            .to_string()
    };
    for label in [
        "one shared server, reset between tests",
        "one container per test",
    ] {
        let l = line(label);
        assert!(l.contains("5/5"), "{l}");
    }
    for label in [
        "one cold-booted microVM per test",
        "one microVM clone of a snapshot per test",
    ] {
        let l = line(label);
        assert!(l.contains("not run (--vm-via skip)"), "{l}");
    }
    // The narration (stderr): each way told before it runs, the reading after.
    assert!(err.contains("One container per test, 2 at a time"), "{err}");
    assert!(err.contains("A container per test took"), "{err}");
}
