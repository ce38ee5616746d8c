//! Real runs of runc (the Debian package) on a busybox rootfs: a short startup
//! bench, idle instances for memory and density (with Ctrl-C), and the probe
//! inside a runc container compared with the probe on the host.
//! Needs root, runc and /bin/busybox (busybox-static); says why it skips otherwise.

use duet_bench::host::{self, CgroupLayout};
use duet_bench::instances::{interrupt, measure_memory, run_density, DensityConfig};
use duet_bench::isolation::{compare, parse_probe, probe_args, probe_on_host, Canary, Verdict};
use duet_bench::oci::{self, BundleSpec, OciIdle, OciPeer, OciStarter};
use duet_bench::report::{render_html, render_json, render_markdown, Report};
use duet_bench::startup::{self, timed_spawn, NoProgress, RowStatus, StartupConfig};
use duet_shared::testing::{skip, skip_unless_program};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Tests share the interrupt flag and runc's state directory: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn runc_or_skip(test: &str) -> Option<OciPeer> {
    let layout = host::collect().cgroup_layout;
    let peer = oci::detect("runc", layout);
    if let Some(why) = &peer.unavailable {
        skip(test, why);
        return None;
    }
    if skip_unless_program(test, "/bin/busybox", "busybox-static") {
        return None;
    }
    Some(peer)
}

fn bundle(dir: &Path, args: &[&str]) -> PathBuf {
    let rootfs = dir.join("rootfs");
    oci::make_busybox_rootfs(&rootfs, Path::new("/bin/busybox")).unwrap();
    let b = dir.join("bundle");
    oci::write_bundle(&b, &BundleSpec::new(&rootfs, args)).unwrap();
    b
}

#[test]
fn runc_startup_bench_three_runs() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(peer) = runc_or_skip("runc_startup_bench_three_runs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut starter = OciStarter {
        peer,
        bundle: bundle(dir.path(), &["/bin/true"]),
    };
    let r = startup::run(
        &StartupConfig { runs: 3, warmup: 1 },
        &mut starter,
        &mut NoProgress,
    );
    println!("{r:?}");
    assert_eq!(r.status, RowStatus::Measured, "{r:?}");
    let w = r.wall_ms.unwrap();
    assert_eq!(w.n, 3);
    assert!(w.min > 0.5 && w.max < 10_000.0, "{w:?}");
    // The row validates as part of a report: JSON round-trips, HTML draws it.
    let mut report = Report::new(host::collect());
    report.harness = Some(startup::measure_harness_overhead(20).unwrap());
    report.startup.push(r);
    let json = render_json(&report);
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    assert!(render_html(&report).unwrap().contains("<svg"));
    assert!(render_markdown(&report).contains("runc"));
}

#[test]
fn peer_startup_rows_run_or_say_why() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if skip_unless_program(
        "peer_startup_rows_run_or_say_why",
        "/bin/busybox",
        "busybox-static",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    oci::make_busybox_rootfs(&rootfs, Path::new("/bin/busybox")).unwrap();
    let layout = host::collect().cgroup_layout;
    let rows = oci::peer_startup(
        &StartupConfig { runs: 2, warmup: 0 },
        layout,
        &rootfs,
        dir.path(),
        &["/bin/true"],
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(rows.len(), 2, "runc and crun");
    for (row, peer) in rows.iter().zip(oci::detect_peers(layout)) {
        match &peer.unavailable {
            Some(why) => assert_eq!(row.status, RowStatus::Unavailable(why.clone())),
            None => assert_eq!(row.status, RowStatus::Measured, "{row:?}"),
        }
    }
}

#[test]
fn runc_memory_and_density_clean_up_also_on_ctrl_c() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(peer) = runc_or_skip("runc_memory_and_density_clean_up_also_on_ctrl_c") else {
        return;
    };
    let binary = peer.binary.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("duet-bench-test-{}", std::process::id());
    let mut idle = OciIdle {
        peer,
        bundle: bundle(dir.path(), &["sleep", "1000000"]),
        prefix: prefix.clone(),
    };
    interrupt::clear();
    let m = measure_memory(&mut idle, 1, Duration::from_millis(200));
    assert_eq!(m.status, RowStatus::Measured, "{m:?}");
    assert!(m.pss_kib.unwrap().median > 0.0, "{m:?}");
    let cfg = DensityConfig {
        steps: vec![2, 4],
        max: 4,
        budget_kib: 0,
        settle: Duration::from_millis(200),
    };
    let d = run_density(&cfg, &mut idle, &mut NoProgress);
    assert_eq!(d.status, RowStatus::Measured, "{d:?}");
    assert_eq!(d.points.len(), 2);
    assert!(d.cleanup_errors.is_empty(), "{:?}", d.cleanup_errors);
    assert!(oci::list_ids(&binary, &prefix).is_empty());
    // Ctrl-C arriving while instances run: everything is stopped.
    let stopper = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(300));
        interrupt::raise();
    });
    let cfg = DensityConfig {
        steps: vec![200],
        max: 200,
        budget_kib: 0,
        settle: Duration::from_millis(10),
    };
    let d = run_density(&cfg, &mut idle, &mut NoProgress);
    stopper.join().unwrap();
    interrupt::clear();
    assert_eq!(d.stopped_because, "interrupted (Ctrl-C)", "{d:?}");
    assert!(d.cleanup_errors.is_empty(), "{:?}", d.cleanup_errors);
    let left = oci::list_ids(&binary, &prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn probe_binary() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    [
        "x86_64-unknown-linux-gnu/debug",
        "x86_64-unknown-linux-gnu/release",
        "debug",
        "release",
    ]
    .iter()
    .map(|p| target.join(p).join("duet-probe"))
    .find(|p| p.is_file())
}

#[test]
fn probe_in_runc_versus_host() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(peer) = runc_or_skip("probe_in_runc_versus_host") else {
        return;
    };
    let Some(probe) = probe_binary() else {
        skip(
            "probe_in_runc_versus_host",
            "build the probe first (cargo build -p duet-probe)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let canary = Canary::create(dir.path()).unwrap();
    let args = probe_args(&canary);
    let host = probe_on_host(&probe, &args).unwrap();
    let rootfs = dir.path().join("rootfs");
    oci::make_busybox_rootfs(&rootfs, Path::new("/bin/busybox")).unwrap();
    std::fs::copy(&probe, rootfs.join("bin/duet-probe")).unwrap();
    let mut argv = vec!["/bin/duet-probe"];
    argv.extend(args.iter().map(String::as_str));
    let b = dir.path().join("bundle");
    oci::write_bundle(&b, &BundleSpec::new(&rootfs, &argv)).unwrap();
    let id = format!("duet-bench-probe-{}", std::process::id());
    let out = timed_spawn(
        Command::new(peer.binary.as_ref().unwrap())
            .arg("run")
            .arg("--bundle")
            .arg(&b)
            .arg(&id),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inside = parse_probe(&out.stdout, "runc").unwrap();
    let t = compare(&host, &[(peer.label(), inside)]);
    let verdict = |fact: &str| t.rows.iter().find(|r| r.fact == fact).unwrap().cells[1].verdict;
    println!("{}", serde_json::to_string_pretty(&t).unwrap());
    assert_eq!(verdict("kernel"), Some(Verdict::Shared));
    assert_eq!(verdict("processes"), Some(Verdict::Isolated));
    assert_eq!(verdict("mounts"), Some(Verdict::Isolated));
    assert_eq!(verdict("hostname (UTS)"), Some(Verdict::Isolated));
    assert_eq!(verdict("host canary file"), Some(Verdict::Isolated));
    assert_eq!(
        verdict("users"),
        Some(Verdict::Shared),
        "runc spec has no user namespace"
    );
    assert_eq!(verdict("reboot(2)"), Some(Verdict::Isolated));
    assert_eq!(verdict("mount tmpfs"), Some(Verdict::Isolated));
}

/// crun refuses the v1/v2 hybrid layout; there it runs in a private mount
/// namespace with cgroup2 at /sys/fs/cgroup and no resources in its config,
/// and its rows say "no cgroup limits". Startup and an idle instance both run
/// and clean up, and the host's /sys/fs/cgroup is untouched.
#[test]
fn crun_runs_and_says_when_it_has_no_cgroup_limits() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "crun_runs_and_says_when_it_has_no_cgroup_limits";
    if skip_unless_program(test, "crun", "crun") {
        return;
    }
    let layout = host::collect().cgroup_layout;
    let peer = oci::detect("crun", layout);
    if let Some(why) = &peer.unavailable {
        skip(test, why);
        return;
    }
    if skip_unless_program(test, "/bin/busybox", "busybox-static") {
        return;
    }
    let hybrid = layout == CgroupLayout::Hybrid;
    assert_eq!(
        peer.label().ends_with(", no cgroup limits"),
        hybrid,
        "{}",
        peer.label()
    );
    let host_cgroup_mounts = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains("/sys/fs/cgroup"))
            .count()
    };
    let before = host_cgroup_mounts();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    oci::make_busybox_rootfs(&rootfs, Path::new("/bin/busybox")).unwrap();
    let bundle = dir.path().join("bundle");
    oci::write_bundle(&bundle, &peer.bundle_spec(&rootfs, &["/bin/true"])).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["linux"].get("resources").is_none(), hybrid, "{cfg}");
    let r = startup::run(
        &StartupConfig { runs: 2, warmup: 0 },
        &mut OciStarter {
            peer: peer.clone(),
            bundle,
        },
        &mut NoProgress,
    );
    assert_eq!(r.status, RowStatus::Measured, "{r:?}");
    assert_eq!(r.label, peer.label());

    let prefix = format!("duet-bench-crun-test-{}", std::process::id());
    let idle_bundle = dir.path().join("idle");
    oci::write_bundle(
        &idle_bundle,
        &peer.bundle_spec(&rootfs, &["sleep", "1000000"]),
    )
    .unwrap();
    let mut idle = OciIdle {
        peer: peer.clone(),
        bundle: idle_bundle,
        prefix: prefix.clone(),
    };
    let m = measure_memory(&mut idle, 1, Duration::from_millis(200));
    assert_eq!(m.status, RowStatus::Measured, "{m:?}");
    let binary = peer.binary.clone().unwrap();
    assert!(
        oci::list_ids(&binary, &prefix).is_empty(),
        "crun containers left"
    );
    assert_eq!(
        host_cgroup_mounts(),
        before,
        "the host's cgroup mounts changed"
    );
}
