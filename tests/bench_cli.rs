//! `duet probe`, `duet bench` and `duet demo` through the real binary:
//! the probe's JSON, a short real startup bench with its report files, the
//! isolation probe inside a container, Ctrl-C during a density run, and the
//! demo's container half. Containers need root; each test says why it skips.

mod common;
use common::*;
use duet_bench::report::Report;
use duet_bench::startup::RowStatus;
use duet_probe::ProbeReport;
use std::time::{Duration, Instant};

/// The probe binary cargo builds beside duet (the busybox image takes it from there).
#[test]
fn probe_prints_json_with_schema() {
    let env = Env::new();
    let out = env.run(&["probe"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: ProbeReport = serde_json::from_str(&stdout(&out)).expect("probe JSON");
    assert_eq!(r.schema, duet_probe::PROBE_SCHEMA);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(r.kernel.release, release.trim());
    assert!(r.namespaces.contains_key("pid"), "{:?}", r.namespaces);
    // --compact is one line; a bad argument is an error naming it.
    let out = env.run(&["probe", "--compact"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim_end().lines().count(), 1);
    let out = env.run(&["probe", "--bogus"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--bogus"), "{}", stderr(&out));
}

#[test]
fn bench_startup_writes_json_markdown_and_html() {
    if skip_unless_root("bench_startup_writes_json_markdown_and_html") {
        return;
    }
    let env = Env::new();
    let out_dir = env.root().join("report");
    let out = env.run(&[
        "bench",
        "startup",
        "--runs",
        "3",
        "--isolation",
        "container",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json = std::fs::read_to_string(out_dir.join("report.json")).unwrap();
    let r: Report = serde_json::from_str(&json).expect("report.json parses as a Report");
    assert_eq!(r.schema, duet_bench::report::BENCH_SCHEMA);
    let c = r
        .startup
        .iter()
        .find(|s| s.label == "duet container")
        .unwrap_or_else(|| panic!("no duet container row: {json}"));
    assert_eq!(c.status, RowStatus::Measured, "{c:?}");
    assert_eq!(c.samples_ms.len(), 3);
    assert!(c.samples_ms.iter().all(|&ms| ms > 0.0 && ms < 10_000.0));
    for phase in ["exec", "namespaces_created", "pivot_done", "ready", "exit"] {
        assert!(
            c.segments.iter().any(|s| s.name == phase),
            "no {phase} segment: {:?}",
            c.segments
        );
    }
    // runc: measured where installed and allowed, otherwise a row that says why.
    let runc = r
        .startup
        .iter()
        .find(|s| s.label.starts_with("runc"))
        .unwrap_or_else(|| panic!("no runc row: {json}"));
    match &runc.status {
        RowStatus::Measured => assert_eq!(runc.samples_ms.len(), 3),
        RowStatus::Unavailable(why) | RowStatus::Failed(why) => {
            assert!(!why.is_empty(), "{runc:?}")
        }
    }
    // crun: installed, it runs even on a v1/v2 hybrid host (outside its
    // cgroups there), and then the label says it had no cgroup limits.
    let crun = r
        .startup
        .iter()
        .find(|s| s.label.starts_with("crun"))
        .unwrap_or_else(|| panic!("no crun row: {json}"));
    if duet_shared::testing::find_program("crun").is_some() {
        assert_eq!(crun.status, RowStatus::Measured, "{crun:?}");
        let hybrid =
            duet_bench::host::collect().cgroup_layout == duet_bench::host::CgroupLayout::Hybrid;
        assert_eq!(
            crun.label.ends_with(", no cgroup limits"),
            hybrid,
            "{}",
            crun.label
        );
    }
    // The first run: pull (from the bench's own registry) + unpack + start,
    // from an empty state root each time; the pull is in spec_loaded.
    let first = r
        .startup
        .iter()
        .find(|s| s.label == "duet container first run (pull + unpack + start)")
        .unwrap_or_else(|| panic!("no first-run row: {json}"));
    if duet_shared::testing::find_program("docker-registry").is_some() {
        assert_eq!(first.status, RowStatus::Measured, "{first:?}");
        assert_eq!(first.samples_ms.len(), 3);
        let pull = first.segments.iter().find(|s| s.name == "spec_loaded");
        let start = c.segments.iter().find(|s| s.name == "spec_loaded");
        assert!(
            pull.unwrap().ms.median > start.unwrap().ms.median,
            "a pull takes longer than reading a stored image: {first:?}"
        );
    } else {
        assert!(
            matches!(&first.status, RowStatus::Unavailable(w) if w.contains("docker-registry")),
            "{first:?}"
        );
    }
    // Lifecycle rows: `run -d` to running and the exec round trip, with
    // runc's exec beside them (measured, or a row that says why not).
    for label in [
        "duet run -d container (to running)",
        "duet exec container (true)",
    ] {
        let row = r
            .lifecycle
            .iter()
            .find(|s| s.label == label)
            .unwrap_or_else(|| panic!("no `{label}` row: {:?}", r.lifecycle));
        assert_eq!(row.status, RowStatus::Measured, "{row:?}");
        assert_eq!(row.samples_ms.len(), 3, "{row:?}");
    }
    let runc_exec = r
        .lifecycle
        .iter()
        .find(|s| s.label.starts_with("runc") && s.label.ends_with("exec (true)"))
        .unwrap_or_else(|| panic!("no runc exec row: {:?}", r.lifecycle));
    if let RowStatus::Unavailable(why) | RowStatus::Failed(why) = &runc_exec.status {
        assert!(!why.is_empty(), "{runc_exec:?}");
    }
    let lifecycle_md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(lifecycle_md.contains("Lifecycle"), "{lifecycle_md}");
    // docker exec, through a private dockerd where the engine is installed.
    let docker_exec = r
        .lifecycle
        .iter()
        .find(|s| s.label.starts_with("docker") && s.label.ends_with("exec (true)"))
        .unwrap_or_else(|| panic!("no docker exec row: {:?}", r.lifecycle));
    match duet_bench::docker::unavailable() {
        None => assert_eq!(docker_exec.status, RowStatus::Measured, "{docker_exec:?}"),
        Some(why) => assert_eq!(docker_exec.status, RowStatus::Unavailable(why)),
    }
    // Only containers were asked for: no VM row, no testbed.
    assert!(r.startup.iter().all(|s| s.kind != duet_bench::Kind::Vm));
    let h = r.harness.expect("harness overhead measured");
    assert!(h.overhead_ms >= 0.0 && h.samples >= 3, "{h:?}");
    let html = std::fs::read_to_string(out_dir.join("report.html")).unwrap();
    assert!(html.contains("<svg"), "no chart in report.html");
    assert!(html.contains("duet container"));
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(md.contains("## Startup"), "{md}");
    assert_eq!(stdout(&out), md, "the Markdown is also printed");
    assert_eq!(env.instances(), Vec::<String>::new(), "instances left");
    let scratch: Vec<_> = std::fs::read_dir(env.root().join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(scratch.is_empty(), "scratch left in tmp/: {scratch:?}");
}

/// Facts from `duet probe` on the host and `/bin/duet-probe` in a container.
#[test]
fn probe_inside_container_has_own_hostname_and_pid_namespace() {
    let test = "probe_inside_container_has_own_hostname_and_pid_namespace";
    if skip_unless_root_and_probe(test) {
        return;
    }
    let env = Env::new();
    let host = env.run(&["probe", "--compact"]);
    assert!(host.status.success(), "{}", stderr(&host));
    let host: ProbeReport = serde_json::from_str(&stdout(&host)).unwrap();
    let name = unique("probe");
    let out = env.run(&[
        "run",
        "--name",
        &name,
        "busybox",
        "--",
        "/bin/duet-probe",
        "--compact",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inside: ProbeReport = serde_json::from_str(&stdout(&out)).expect("probe JSON");
    assert_eq!(inside.hostname, name);
    assert_ne!(inside.hostname, host.hostname);
    assert_ne!(inside.namespaces["pid"], host.namespaces["pid"]);
    assert_ne!(inside.namespaces["uts"], host.namespaces["uts"]);
    assert_eq!(inside.kernel.boot_id, host.kernel.boot_id, "same kernel");
    assert!(inside.visible_processes < host.visible_processes);
    env.assert_clean(&name);
}

#[test]
fn bench_isolation_table_for_a_container() {
    let test = "bench_isolation_table_for_a_container";
    if skip_unless_root_and_probe(test) {
        return;
    }
    let env = Env::new();
    let out = env.run(&[
        "bench",
        "isolation",
        "--isolation",
        "container",
        "--report-json",
        "-",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Report = serde_json::from_str(&stdout(&out)).expect("only JSON on stdout");
    let t = r.isolation.expect("isolation table");
    assert_eq!(t.columns, ["host", "duet container"]);
    assert!(t.missing.is_empty(), "{:?}", t.missing);
    let verdict = |fact: &str| {
        t.rows
            .iter()
            .find(|row| row.fact == fact)
            .and_then(|row| row.cells[1].verdict)
            .unwrap_or_else(|| panic!("no {fact} row"))
    };
    use duet_bench::isolation::Verdict;
    assert_eq!(verdict("kernel"), Verdict::Shared);
    assert_eq!(verdict("hostname (UTS)"), Verdict::Isolated);
    assert_eq!(verdict("processes"), Verdict::Isolated);
    assert_eq!(verdict("host canary file"), Verdict::Isolated);
    assert_eq!(env.instances(), Vec::<String>::new());
}

/// SIGINT to `duet bench density` mid-run: it stops every instance it started.
#[test]
fn ctrl_c_during_density_leaves_no_instances() {
    if skip_unless_root("ctrl_c_during_density_leaves_no_instances") {
        return;
    }
    let env = Env::new();
    let mut child = env
        .cmd(&[
            "bench",
            "density",
            "--isolation",
            "container",
            "--no-peers",
            "--max",
            "200",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a few instances run, then interrupt the harness only.
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.instances().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "no instances appeared within 60 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "bench ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an interrupted bench fails: {err}");
    assert!(err.contains("interrupted"), "{err}");
    // The instances' duet processes are gone, and so are their directories.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.instances().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(env.instances(), Vec::<String>::new(), "{err}");
    let root = env.root().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&root), "mounts left under {root}");
}

#[test]
fn demo_shows_the_container_half_and_why_the_vm_half_is_missing() {
    let test = "demo_shows_the_container_half_and_why_the_vm_half_is_missing";
    if skip_unless_root_and_probe(test) {
        return;
    }
    let env = Env::new();
    // A testbed that does not exist: the VM half must say why it is missing.
    let out = env
        .cmd(&["demo", "--vm-via", "testbed"])
        .env("DUET_TESTBED_RUN", "/nonexistent/tests/testbed/run")
        .env("COLUMNS", "120")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{}", text, stderr(&out));
    // Long lines are wrapped to the terminal: compare with single spaces.
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    for want in [
        "hello from duet-demo",
        &format!("kernel {}", release.trim()),
        "PID 1 is sh",
        "Startup timeline",
        "namespaces_created",
        "PSS",
        "testbed cannot run either",
        "/nonexistent/tests/testbed/run does not exist",
    ] {
        assert!(flat.contains(want), "no `{want}` in:\n{text}");
    }
    // Only the container was probed: the rows it shares with the host are listed.
    assert!(text.contains("SHARED with the host"), "{text}");
    assert_eq!(env.instances(), Vec::<String>::new());
}

/// `duet bench ARGS --report-json -` for containers only, parsed; stderr for messages.
fn bench_json(env: &Env, args: &[&str]) -> (Report, String) {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--isolation", "container", "--report-json", "-"]);
    let out = env.run(&all);
    let err = stderr(&out);
    assert!(out.status.success(), "duet {all:?}: {err}");
    let r: Report = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("stdout is not a report ({e}): {}\n{err}", stdout(&out)));
    (r, err)
}

#[test]
fn bench_memory_measures_an_idle_container() {
    if skip_unless_root("bench_memory_measures_an_idle_container") {
        return;
    }
    let env = Env::new();
    let (r, err) = bench_json(&env, &["memory", "--no-peers", "--samples", "2"]);
    let c = r
        .memory
        .iter()
        .find(|m| m.label == "duet container")
        .unwrap_or_else(|| panic!("no duet container row: {:?}\n{err}", r.memory));
    assert_eq!(c.status, RowStatus::Measured, "{c:?}\n{err}");
    assert_eq!(c.samples, 2);
    let pss = c.pss_kib.as_ref().expect("PSS measured");
    // An idle busybox sh: more than nothing, far less than a VM's guest RAM.
    assert!(pss.median > 0.0 && pss.median < 64.0 * 1024.0, "{pss:?}");
    assert!(c.processes >= 1, "{c:?}");
    assert!(r.startup.is_empty() && r.density.is_empty(), "{r:?}");
    assert_eq!(env.instances(), Vec::<String>::new(), "instances left");
}

#[test]
fn bench_density_starts_and_stops_k_containers() {
    if skip_unless_root("bench_density_starts_and_stops_k_containers") {
        return;
    }
    let env = Env::new();
    let (r, err) = bench_json(&env, &["density", "--no-peers", "--max", "3"]);
    let d = r
        .density
        .iter()
        .find(|d| d.label == "duet container")
        .unwrap_or_else(|| panic!("no duet container curve: {:?}\n{err}", r.density));
    assert_eq!(d.status, RowStatus::Measured, "{d:?}\n{err}");
    let ks: Vec<usize> = d.points.iter().map(|p| p.k).collect();
    assert_eq!(ks, [3], "{d:?}");
    let p = &d.points[0];
    assert!(p.pss_total_kib > 0 && p.pss_per_instance_kib > 0.0, "{p:?}");
    assert!(p.start_all_ms > 0.0, "{p:?}");
    assert!(d.cleanup_errors.is_empty(), "{d:?}");
    assert_eq!(env.instances(), Vec::<String>::new(), "instances left");
}

/// `bench all` (small counts) writes every section into all three report files.
#[test]
fn bench_all_writes_every_scenario() {
    let test = "bench_all_writes_every_scenario";
    if skip_unless_root_and_probe(test) {
        return;
    }
    let env = Env::new();
    let dir = env.root().join("all");
    let out = env.run(&[
        "bench",
        "all",
        "--isolation",
        "container",
        "--no-peers",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--samples",
        "1",
        "--max",
        "2",
        "--pings",
        "100",
        "--bulk-mib",
        "8",
        "--http-requests",
        "100",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let r: Report =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let startup = r
        .startup
        .iter()
        .find(|s| s.label == "duet container")
        .unwrap_or_else(|| panic!("no startup row: {:?}\n{err}", r.startup));
    assert_eq!(startup.status, RowStatus::Measured, "{startup:?}");
    assert_eq!(startup.samples_ms.len(), 2);
    let mem = r
        .memory
        .iter()
        .find(|m| m.label == "duet container")
        .unwrap_or_else(|| panic!("no memory row: {:?}\n{err}", r.memory));
    assert_eq!(mem.status, RowStatus::Measured, "{mem:?}");
    let density = r
        .density
        .iter()
        .find(|d| d.label == "duet container")
        .unwrap_or_else(|| panic!("no density curve: {:?}\n{err}", r.density));
    assert_eq!(density.points.iter().map(|p| p.k).collect::<Vec<_>>(), [2]);
    let iso = r.isolation.as_ref().expect("isolation table");
    assert!(!iso.rows.is_empty(), "{iso:?}");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        r.network.iter().any(|n| n.label == "duet container"),
        "no network row: {:?}",
        r.network
    );
    // This state root has no PostgreSQL image: the rows say how to make one.
    assert_eq!(r.pristine.len(), 2, "{:?}", r.pristine);
    for p in &r.pristine {
        assert!(
            matches!(&p.status, RowStatus::Unavailable(w) if w.contains("images/postgres/build.sh")),
            "{p:?}"
        );
    }
    for section in [
        "## Startup",
        "## Memory",
        "## Density",
        "## Isolation",
        "## Network",
        "## Pristine database per test",
    ] {
        assert!(md.contains(section), "no {section} in report.md:\n{md}");
    }
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg"), "no chart in report.html");
    assert_eq!(env.instances(), Vec::<String>::new(), "instances left");
}

/// Host links whose names duet's network gives (its bridge, veths, taps).
fn duet_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == "duet0" || n.starts_with("dv") || n.starts_with("dt"))
        .collect()
}

/// `duet bench network` for a container: the host loopback baseline and
/// the container on the bridge, measured in the bench's own network
/// namespace, so the host gets no bridge, veth or nftables table.
#[test]
fn bench_network_measures_the_host_loopback_and_a_container() {
    if skip_unless_root("bench_network_measures_the_host_loopback_and_a_container") {
        return;
    }
    let env = Env::new();
    let before = duet_links();
    let (r, err) = bench_json(
        &env,
        &[
            "network",
            "--pings",
            "300",
            "--bulk-mib",
            "16",
            "--http-requests",
            "200",
        ],
    );
    let row = |label: &str| {
        r.network
            .iter()
            .find(|n| n.label == label)
            .unwrap_or_else(|| panic!("no {label} row: {:?}\n{err}", r.network))
    };
    for label in ["host loopback", "duet container"] {
        let n = row(label);
        assert_eq!(n.status, RowStatus::Measured, "{n:?}\n{err}");
        assert!(n.rtt_p50_us > 0.0 && n.rtt_p99_us >= n.rtt_p50_us, "{n:?}");
        assert!(n.throughput_mbit_s > 0.0 && n.http_rps > 0.0, "{n:?}");
        assert_eq!(n.config.pings, 300);
    }
    let reading = duet_bench::network::reading(row("duet container"), &r.network);
    assert!(
        reading.contains("latency") && reading.contains("x"),
        "{reading}"
    );
    assert_eq!(duet_links(), before, "the bench touched the host's links");
    let nft = std::process::Command::new("nft")
        .args(["list", "table", "ip", "duet_duet0"])
        .output()
        .unwrap();
    assert!(!nft.status.success(), "a duet table on the host");
}
