//! The benchmark report: JSON (versioned schema), Markdown, and an HTML page
//! with SVG charts, plus "what the classic answer claims vs what we measured",
//! built only from the numbers in the report.

use crate::charts;
use crate::disk::DiskResult;
use crate::host::HostFacts;
use crate::instances::{DensityResult, MemoryResult};
use crate::isolation::{IsolationTable, Verdict};
use crate::startup::{HarnessOverhead, RowStatus, StartupResult};
use crate::Kind;
use serde::{Deserialize, Serialize};

/// Current [`Report::schema`]; bumped on incompatible change.
pub const BENCH_SCHEMA: u32 = 4;

/// Everything one `duet bench` run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Schema version ([`BENCH_SCHEMA`]).
    pub schema: u32,
    /// `duet-bench <version>`.
    pub generator: String,
    /// Seconds since the epoch when the report was made.
    pub created_unix_s: u64,
    /// The machine.
    pub host: HostFacts,
    /// Where VM rows ran when not natively (e.g. "nested-KVM testbed: ..."), shown in the header.
    pub vm_environment: Option<String>,
    /// The harness's own cost per run.
    pub harness: Option<HarnessOverhead>,
    /// `duet bench startup` rows.
    pub startup: Vec<StartupResult>,
    /// `duet bench startup`'s lifecycle rows: `run -d` to running and the
    /// `exec` round trip (duet and the OCI peers).
    #[serde(default)]
    pub lifecycle: Vec<StartupResult>,
    /// `duet bench memory` rows.
    pub memory: Vec<MemoryResult>,
    /// `duet bench density` curves.
    pub density: Vec<DensityResult>,
    /// Disk for N instances.
    pub disk: Vec<DiskResult>,
    /// `duet bench isolation` table.
    pub isolation: Option<IsolationTable>,
    /// `duet bench network` rows.
    #[serde(default)]
    pub network: Vec<crate::network::NetworkResult>,
    /// `duet bench pristine-db` rows.
    #[serde(default)]
    pub pristine: Vec<crate::pristine::PristineResult>,
    /// Free-form notes (what was not measured and why).
    pub notes: Vec<String>,
}

impl Report {
    /// An empty report for this host, stamped now.
    pub fn new(host: HostFacts) -> Report {
        Report {
            schema: BENCH_SCHEMA,
            generator: format!("duet-bench {}", env!("CARGO_PKG_VERSION")),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            host,
            vm_environment: None,
            harness: None,
            startup: Vec::new(),
            lifecycle: Vec::new(),
            memory: Vec::new(),
            density: Vec::new(),
            disk: Vec::new(),
            isolation: None,
            network: Vec::new(),
            pristine: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// One row of "what the classic answer claims vs what we measured".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRow {
    /// Short topic.
    pub topic: String,
    /// What the classic answer claims.
    pub claimed: String,
    /// What this run measured (numbers from this report only).
    pub measured: String,
    /// One line: what it means.
    pub reading: String,
}

const NOT_MEASURED: &str = "not measured in this run";

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// Like [`mib`], but small amounts in KiB (a container's writable layer is a few KiB).
fn size(kib: f64) -> String {
    if kib < 1024.0 {
        format!("{kib:.0} KiB")
    } else {
        mib(kib)
    }
}

fn medians(rows: &[StartupResult], kind: Kind) -> Vec<(String, f64)> {
    rows.iter()
        .filter(|r| r.kind == kind)
        .filter_map(|r| Some((r.label.clone(), r.wall_ms?.median)))
        .collect()
}

fn list(xs: &[(String, String)]) -> String {
    xs.iter()
        .map(|(l, v)| format!("{l}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn start_claim(r: &Report) -> ClaimRow {
    let c = medians(&r.startup, Kind::Container);
    let v = medians(&r.startup, Kind::Vm);
    let all: Vec<(String, String)> = c
        .iter()
        .chain(v.iter())
        .map(|(l, m)| (l.clone(), format!("median {}", ms(*m))))
        .collect();
    let fastest = |xs: &[(String, f64)]| xs.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
    let reading = match (c.is_empty(), v.is_empty()) {
        (false, false) => {
            let (fc, fv) = (fastest(&c), fastest(&v));
            format!(
                "the fastest VM started in {} ({}), {:.0}x the fastest container ({})",
                ms(fv),
                if fv < 60_000.0 {
                    "not minutes"
                } else {
                    "minutes, as claimed"
                },
                fv / fc,
                ms(fc)
            )
        }
        (false, true) => format!(
            "containers started in {}: {} a second, as claimed; no VM row measured",
            ms(fastest(&c)),
            if fastest(&c) < 1000.0 {
                "well under"
            } else {
                "over"
            }
        ),
        (true, false) => format!("VM start {}; no container row measured", ms(fastest(&v))),
        (true, true) => NOT_MEASURED.to_string(),
    };
    let reading = match (&r.vm_environment, v.is_empty()) {
        (Some(_), false) => {
            format!("{reading} (the VM was not on hardware KVM: see the header for where it ran)")
        }
        _ => reading,
    };
    ClaimRow {
        topic: "start time".to_string(),
        claimed: "a full virtualized system usually takes minutes to start; containers take seconds, often less than a second".to_string(),
        measured: if all.is_empty() { NOT_MEASURED.to_string() } else { list(&all) },
        reading,
    }
}

fn last_point(r: &Report, kind: Kind) -> Vec<(String, usize, f64)> {
    r.density
        .iter()
        .filter(|d| d.kind == kind)
        .filter_map(|d| {
            let p = d.points.last()?;
            Some((d.label.clone(), p.k, p.pss_per_instance_kib))
        })
        .collect()
}

fn layers_claim(r: &Report) -> ClaimRow {
    let mut measured = Vec::new();
    for d in &r.disk {
        measured.push((
            d.label.clone(),
            format!(
                "disk: image {} once + {} for {} instances ({} each)",
                mib(d.image_bytes as f64 / 1024.0),
                mib(d.instances_bytes as f64 / 1024.0),
                d.instances,
                size(d.instances_bytes as f64 / 1024.0 / d.instances.max(1) as f64)
            ),
        ));
    }
    let c = last_point(r, Kind::Container);
    let v = last_point(r, Kind::Vm);
    for (l, k, per) in c.iter().chain(v.iter()) {
        measured.push((
            l.clone(),
            format!("memory: {} per instance at K={k}", mib(*per)),
        ));
    }
    let reading = match (c.first(), v.first()) {
        (Some(c), Some(v)) => format!(
            "one more VM costs {} of memory against {} for one more container ({:.0}x)",
            mib(v.2),
            mib(c.2),
            v.2 / c.2.max(1.0)
        ),
        _ if !r.disk.is_empty() => {
            "disk per instance is the writable part only; the image is stored once".to_string()
        }
        _ => NOT_MEASURED.to_string(),
    };
    ClaimRow {
        topic: "shared layers (disk and memory for N instances)".to_string(),
        claimed: "1000 containers from a 1 GB image share the bulk of the 1 GB; VMs need 1 GB x number of VMs".to_string(),
        measured: if measured.is_empty() { NOT_MEASURED.to_string() } else { list(&measured) },
        reading,
    }
}

fn kernel_claim(r: &Report) -> ClaimRow {
    let Some(t) = &r.isolation else {
        return ClaimRow {
            topic: "shared kernel".to_string(),
            claimed: "containers share the host kernel; a VM boots its own".to_string(),
            measured: NOT_MEASURED.to_string(),
            reading: NOT_MEASURED.to_string(),
        };
    };
    let row = t.rows.iter().find(|r| r.fact == "kernel");
    let mut measured = Vec::new();
    let mut shared = Vec::new();
    let mut own = Vec::new();
    if let Some(row) = row {
        for (col, cell) in t.columns.iter().zip(&row.cells) {
            measured.push((col.clone(), cell.value.clone()));
            match cell.verdict {
                Some(Verdict::Shared) => shared.push(col.clone()),
                Some(Verdict::Isolated) => own.push(col.clone()),
                _ => {}
            }
        }
    }
    let reading = format!(
        "same running kernel as the host (same boot_id): {}; own kernel: {}",
        if shared.is_empty() {
            "none".to_string()
        } else {
            shared.join(", ")
        },
        if own.is_empty() {
            "none".to_string()
        } else {
            own.join(", ")
        }
    );
    ClaimRow {
        topic: "shared kernel".to_string(),
        claimed: "containers share the host kernel; a VM boots its own".to_string(),
        measured: list(&measured),
        reading,
    }
}

fn density_claim(r: &Report) -> ClaimRow {
    let c: Vec<&DensityResult> = r
        .density
        .iter()
        .filter(|d| d.kind == Kind::Container)
        .collect();
    let mut measured = Vec::new();
    let mut reading = Vec::new();
    for d in &c {
        if let Some(p) = d.points.last() {
            measured.push((
                d.label.clone(),
                format!(
                    "{} instances started in {} ({} each), {} PSS each; curve ended: {}",
                    p.k,
                    ms(p.start_all_ms),
                    ms(p.start_all_ms / p.k as f64),
                    mib(p.pss_per_instance_kib),
                    d.stopped_because
                ),
            ));
            if p.pss_per_instance_kib > 0.0 {
                reading.push(format!(
                    "{}: memory alone would allow ~{:.0} such idle instances on this host's {} (extrapolated)",
                    d.label,
                    r.host.mem_total_kib as f64 / p.pss_per_instance_kib,
                    mib(r.host.mem_total_kib as f64)
                ));
            }
        }
    }
    ClaimRow {
        topic: "density".to_string(),
        claimed: "thousands of containers on a host, and it won't even blink".to_string(),
        measured: if measured.is_empty() {
            NOT_MEASURED.to_string()
        } else {
            list(&measured)
        },
        reading: if reading.is_empty() {
            NOT_MEASURED.to_string()
        } else {
            reading.join("; ")
        },
    }
}

/// The claims section, from this report's numbers only.
pub fn claims(r: &Report) -> Vec<ClaimRow> {
    vec![
        start_claim(r),
        layers_claim(r),
        kernel_claim(r),
        density_claim(r),
        testing_claim(r),
    ]
}

fn testing_claim(r: &Report) -> ClaimRow {
    use crate::pristine::{reading, Strategy};
    let measured: Vec<(String, String)> = r
        .pristine
        .iter()
        .filter(|p| p.status == RowStatus::Measured)
        .map(|p| {
            (
                p.label.clone(),
                format!(
                    "{} tests in {:.2} s, ready {} (median)",
                    p.tests,
                    p.suite_s,
                    ms(p.ready_p50_ms)
                ),
            )
        })
        .collect();
    let readings: Vec<String> = r
        .pristine
        .iter()
        .filter(|p| p.strategy != Strategy::SharedReset)
        .map(|p| reading(p, &r.pristine))
        .filter(|t| !t.is_empty())
        .collect();
    ClaimRow {
        topic: "testing (pristine database per test)".to_string(),
        claimed: "each of thousands of tests can get its own pristine copy of a database, \
                  started in parallel from the same image snapshot"
            .to_string(),
        measured: if measured.is_empty() {
            NOT_MEASURED.to_string()
        } else {
            list(&measured)
        },
        reading: if readings.is_empty() {
            NOT_MEASURED.to_string()
        } else {
            readings.join("; ")
        },
    }
}

/// The report as pretty JSON.
pub fn render_json(r: &Report) -> String {
    serde_json::to_string_pretty(r).expect("Report serializes")
}

fn status_text(s: &RowStatus) -> String {
    match s {
        RowStatus::Measured => "measured".to_string(),
        RowStatus::Unavailable(why) => format!("not run: {why}"),
        RowStatus::Failed(why) => format!("failed: {why}"),
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn summary_cells(s: Option<crate::stats::Summary>, f: fn(f64) -> String) -> [String; 4] {
    match s {
        Some(s) => [f(s.min), f(s.median), f(s.p90), f(s.max)],
        None => ["-".into(), "-".into(), "-".into(), "-".into()],
    }
}

/// Plain tables: (title, header, rows). Shared by Markdown and HTML.
fn tables(r: &Report) -> Vec<(String, Vec<String>, Vec<Vec<String>>)> {
    let mut out = Vec::new();
    let claim_rows = claims(r)
        .into_iter()
        .map(|c| vec![c.topic, c.claimed, c.measured, c.reading])
        .collect();
    out.push((
        "What the classic answer claims vs what we measured".to_string(),
        vec![
            "topic".into(),
            "claimed".into(),
            "measured here".into(),
            "reading".into(),
        ],
        claim_rows,
    ));
    if !r.startup.is_empty() {
        out.push((
            "Startup (wall time, spawn to exit)".to_string(),
            wall_header(),
            wall_rows(&r.startup),
        ));
        let mut phase_rows = Vec::new();
        for s in &r.startup {
            for seg in &s.segments {
                let [a, b, c, d] = summary_cells(Some(seg.ms), ms);
                phase_rows.push(vec![s.label.clone(), seg.name.clone(), a, b, c, d]);
            }
        }
        if !phase_rows.is_empty() {
            out.push((
                "Startup phases (time since the previous phase)".to_string(),
                ["runner", "phase", "min", "median", "p90", "max"]
                    .map(String::from)
                    .to_vec(),
                phase_rows,
            ));
        }
    }
    if !r.network.is_empty() {
        let rows = r
            .network
            .iter()
            .map(|n| {
                let measured = n.status == RowStatus::Measured;
                let cell = |v: f64, unit: &str| {
                    if measured {
                        format!("{v:.1} {unit}")
                    } else {
                        "-".into()
                    }
                };
                vec![
                    n.label.clone(),
                    cell(n.rtt_p50_us, "us"),
                    cell(n.rtt_p99_us, "us"),
                    cell(n.throughput_mbit_s, "Mbit/s"),
                    cell(n.http_rps, "req/s"),
                    cell(n.http_p99_ms, "ms"),
                    status_text(&n.status),
                    crate::network::reading(n, &r.network),
                ]
            })
            .collect();
        out.push((
            "Network (from the host side to a server inside: 1-byte TCP round trip, bulk TCP, HTTP under load)".to_string(),
            [
                "target",
                "rtt p50",
                "rtt p99",
                "bulk TCP",
                "HTTP",
                "HTTP p99",
                "status",
                "reading",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        ));
    }
    if !r.pristine.is_empty() {
        let rows = r
            .pristine
            .iter()
            .map(|p| {
                let m = p.status == RowStatus::Measured;
                let cell = |t: String| if m { t } else { "-".into() };
                vec![
                    p.label.clone(),
                    format!("{} / {}", p.tests, p.parallel),
                    cell(format!("{}/{}", p.passed, p.tests)),
                    cell(format!("{:.2} s", p.suite_s)),
                    cell(format!("{} / {}", ms(p.ready_p50_ms), ms(p.ready_p99_ms))),
                    cell(p.reset_p50_ms.map(ms).unwrap_or_else(|| "-".into())),
                    cell(format!(
                        "{} / {}",
                        p.test_p50_ms.map(ms).unwrap_or_else(|| "-".into()),
                        p.removal_p50_ms.map(ms).unwrap_or_else(|| "-".into())
                    )),
                    cell(format!("{:.0} MiB", p.peak_mem_mib)),
                    cell(format!("{:.1} MiB", p.pss_mib)),
                    cell(format!("{:.1} MiB", p.disk_mib)),
                    status_text(&p.status),
                    crate::pristine::reading(p, &r.pristine),
                ]
            })
            .collect();
        out.push((
            "Pristine database per test (PostgreSQL 15; N tests, each must see the seed and only its own writes)".to_string(),
            [
                "strategy",
                "tests / at once",
                "passed",
                "suite",
                "ready p50 / p99",
                "reset p50",
                "test / removal p50",
                "peak host memory",
                "PSS per instance",
                "written per instance",
                "status",
                "reading",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        ));
    }
    if !r.lifecycle.is_empty() {
        out.push((
            "Lifecycle (`run -d` until running; `exec ID true` round trip)".to_string(),
            wall_header(),
            wall_rows(&r.lifecycle),
        ));
    }
    if !r.memory.is_empty() {
        let rows = r
            .memory
            .iter()
            .map(|m| {
                let med =
                    |s: Option<crate::stats::Summary>| s.map_or("-".to_string(), |s| mib(s.median));
                vec![
                    m.label.clone(),
                    med(m.pss_kib),
                    med(m.private_kib),
                    med(m.shared_kib),
                    m.processes.to_string(),
                    status_text(&m.status),
                ]
            })
            .collect();
        out.push((
            "Memory of one idle instance (median PSS)".to_string(),
            [
                "runner",
                "PSS",
                "private",
                "shared share",
                "processes",
                "status",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        ));
    }
    if !r.density.is_empty() {
        let mut rows = Vec::new();
        for d in &r.density {
            for p in &d.points {
                rows.push(vec![
                    d.label.clone(),
                    p.k.to_string(),
                    ms(p.start_all_ms),
                    mib(p.pss_total_kib as f64),
                    mib(p.pss_per_instance_kib),
                    mib(p.mem_available_drop_kib as f64),
                ]);
            }
            rows.push(vec![
                d.label.clone(),
                "-".into(),
                format!("ended: {}", d.stopped_because),
                status_text(&d.status),
                if d.cleanup_errors.is_empty() {
                    "cleanup ok".into()
                } else {
                    format!("cleanup errors: {}", d.cleanup_errors.join("; "))
                },
                String::new(),
            ]);
        }
        out.push((
            "Density".to_string(),
            [
                "runner",
                "K",
                "start all K",
                "PSS total",
                "PSS per instance",
                "MemAvailable drop",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        ));
    }
    if !r.disk.is_empty() {
        let rows = r
            .disk
            .iter()
            .map(|d| {
                vec![
                    d.label.clone(),
                    mib(d.image_bytes as f64 / 1024.0),
                    d.instances.to_string(),
                    mib(d.instances_bytes as f64 / 1024.0),
                ]
            })
            .collect();
        out.push((
            "Disk for N instances".to_string(),
            ["runner", "image (once)", "instances", "added by instances"]
                .map(String::from)
                .to_vec(),
            rows,
        ));
    }
    if let Some(t) = &r.isolation {
        let mut header = vec!["fact".to_string()];
        header.extend(t.columns.iter().cloned());
        let rows = t
            .rows
            .iter()
            .map(|row| {
                let mut cells = vec![row.fact.clone()];
                for c in &row.cells {
                    cells.push(match c.verdict {
                        None => c.value.clone(),
                        Some(v) => format!(
                            "{} — {}: {}",
                            c.value,
                            match v {
                                Verdict::Shared => "SHARED",
                                Verdict::Isolated => "isolated",
                                Verdict::NotApplicable => "n/a",
                            },
                            c.why
                        ),
                    });
                }
                cells
            })
            .collect();
        out.push((
            "Isolation (probe run on each side)".to_string(),
            header,
            rows,
        ));
    }
    out
}

/// Columns of a table of wall times per runner.
fn wall_header() -> Vec<String> {
    ["runner", "runs", "min", "median", "p90", "max", "status"]
        .map(String::from)
        .to_vec()
}

/// One row per runner: its wall-time distribution and status.
fn wall_rows(rows: &[StartupResult]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|s| {
            let [a, b, c, d] = summary_cells(s.wall_ms, ms);
            vec![
                s.label.clone(),
                s.runs.to_string(),
                a,
                b,
                c,
                d,
                status_text(&s.status),
            ]
        })
        .collect()
}

fn header_lines(r: &Report) -> Vec<String> {
    let mut h = vec![format!("Host: {}", r.host.summary())];
    let measured_vm = r
        .startup
        .iter()
        .map(|s| (s.kind, &s.status))
        .chain(r.memory.iter().map(|m| (m.kind, &m.status)))
        .chain(r.density.iter().map(|d| (d.kind, &d.status)))
        .any(|(k, st)| k == Kind::Vm && *st == RowStatus::Measured);
    if let Some(vm) = &r.vm_environment {
        h.push(format!("VM rows: {vm}"));
    } else if measured_vm && !r.host.kvm.accelerated {
        h.push(
            "VM rows: measured on this host's KVM, which does not accelerate; not representative of hardware KVM"
                .to_string(),
        );
    }
    if let Some(o) = &r.harness {
        h.push(format!(
            "Harness overhead per run: {:.3} ms (raw spawn of /bin/true {}, through the harness {}, RunReport parse {}; {})",
            o.overhead_ms,
            ms(o.raw_spawn_ms.median),
            ms(o.harness_spawn_ms.median),
            ms(o.parse_ms.median),
            o.method
        ));
    }
    h.push(format!(
        "{}, schema {}, created {}",
        r.generator,
        r.schema,
        utc_date_time(r.created_unix_s)
    ));
    h
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the epoch.
pub fn utc_date_time(unix_s: u64) -> String {
    let (year, month, day, h, m, sec) = duet_shared::clock::civil_utc(unix_s);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{sec:02} UTC")
}

/// The report as Markdown.
pub fn render_markdown(r: &Report) -> String {
    let mut s = String::from("# duet bench: container vs VM, measured here\n\n");
    for l in header_lines(r) {
        s.push_str(&format!("- {}\n", md_escape(&l)));
    }
    for (title, header, rows) in tables(r) {
        s.push_str(&format!(
            "\n## {title}\n\n| {} |\n|{}\n",
            header.join(" | "),
            "---|".repeat(header.len())
        ));
        for row in rows {
            let cells: Vec<String> = row.iter().map(|c| md_escape(c)).collect();
            s.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
    }
    if !r.notes.is_empty() {
        s.push_str("\n## Notes\n\n");
        for n in &r.notes {
            s.push_str(&format!("- {}\n", md_escape(n)));
        }
    }
    s
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report as one self-contained HTML page with inline SVG charts.
pub fn render_html(r: &Report) -> Result<String, charts::ChartError> {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>duet bench</title>\n<style>\
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:14px}\
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.chart{margin:1em 0}</style></head><body>\n\
<h1>duet bench: container vs VM, measured here</h1>\n<ul>\n",
    );
    for l in header_lines(r) {
        s.push_str(&format!("<li>{}</li>\n", html_escape(&l)));
    }
    s.push_str("</ul>\n");
    let mut charts_html = String::new();
    let mut svgs = charts::startup_svgs(&r.startup)?;
    svgs.extend(charts::density_memory_svg(&r.density)?);
    svgs.extend(charts::network_svgs(&r.network)?);
    svgs.extend(charts::density_time_svg(&r.density)?);
    svgs.extend(charts::pristine_svgs(&r.pristine)?);
    for svg in svgs {
        charts_html.push_str(&format!("<div class=\"chart\">{svg}</div>\n"));
    }
    for (i, (title, header, rows)) in tables(r).into_iter().enumerate() {
        s.push_str(&format!("<h2>{}</h2>\n<table><tr>", html_escape(&title)));
        for h in header {
            s.push_str(&format!("<th>{}</th>", html_escape(&h)));
        }
        s.push_str("</tr>\n");
        for row in rows {
            s.push_str("<tr>");
            for c in row {
                s.push_str(&format!("<td>{}</td>", html_escape(&c)));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</table>\n");
        if i == 0 && !charts_html.is_empty() {
            s.push_str("<h2>Charts</h2>\n");
            s.push_str(&charts_html);
        }
    }
    if !r.notes.is_empty() {
        s.push_str("<h2>Notes</h2>\n<ul>\n");
        for n in &r.notes {
            s.push_str(&format!("<li>{}</li>\n", html_escape(n)));
        }
        s.push_str("</ul>\n");
    }
    s.push_str("</body></html>\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{CgroupLayout, KvmFacts, KvmKind};
    use crate::instances::DensityPoint;
    use crate::isolation::{Cell, IsolationRow};
    use crate::startup::SegmentStat;
    use crate::stats::summarize;

    /// A report with fixed numbers, the same on every machine.
    pub(crate) fn fixture() -> Report {
        let host = HostFacts {
            cpu_model: "Test CPU".into(),
            cpus: 2,
            mem_total_kib: 24 * 1024 * 1024,
            kernel_release: "6.18.0-test".into(),
            kernel_version: "#1 SMP".into(),
            cgroup_layout: CgroupLayout::Hybrid,
            kvm: KvmFacts {
                dev_kvm: true,
                kind: KvmKind::Other(vec!["kvm_pvm".into()]),
                cpu_flag: None,
                accelerated: false,
            },
        };
        let s = |v: &[f64]| summarize(v).unwrap();
        let mut r = Report::new(host);
        r.created_unix_s = 1_700_000_000;
        r.generator = "duet-bench test".into();
        r.vm_environment = Some("nested-KVM testbed (QEMU TCG, kvm-amd inside)".into());
        r.harness = Some(HarnessOverhead {
            samples: 3,
            raw_spawn_ms: s(&[0.5, 0.6, 0.7]),
            harness_spawn_ms: s(&[0.6, 0.7, 0.8]),
            parse_ms: s(&[0.01, 0.01, 0.01]),
            overhead_ms: 0.11,
            method: "fixture".into(),
        });
        r.startup = vec![
            StartupResult {
                label: "duet container".into(),
                kind: Kind::Container,
                status: RowStatus::Measured,
                runs: 3,
                warmup: 1,
                wall_ms: Some(s(&[10.0, 11.0, 12.0])),
                segments: vec![
                    SegmentStat {
                        name: "exec".into(),
                        ms: s(&[1.0, 1.0, 1.0]),
                    },
                    SegmentStat {
                        name: "rootfs_ready".into(),
                        ms: s(&[3.0, 4.0, 5.0]),
                    },
                    SegmentStat {
                        name: "ready".into(),
                        ms: s(&[5.0, 5.0, 5.0]),
                    },
                ],
                samples_ms: vec![10.0, 11.0, 12.0],
            },
            StartupResult {
                label: "duet vm".into(),
                kind: Kind::Vm,
                status: RowStatus::Measured,
                runs: 3,
                warmup: 1,
                wall_ms: Some(s(&[900.0, 1000.0, 1100.0])),
                segments: vec![
                    SegmentStat {
                        name: "exec".into(),
                        ms: s(&[1.0, 1.0, 1.0]),
                    },
                    SegmentStat {
                        name: "vm_created".into(),
                        ms: s(&[5.0, 5.0, 5.0]),
                    },
                    SegmentStat {
                        name: "ready".into(),
                        ms: s(&[890.0, 990.0, 1090.0]),
                    },
                ],
                samples_ms: vec![900.0, 1000.0, 1100.0],
            },
            StartupResult::unavailable(
                "crun",
                Kind::Container,
                "crun refuses cgroup v1/v2 hybrid hosts",
            ),
        ];
        r.memory = vec![MemoryResult {
            label: "duet container".into(),
            kind: Kind::Container,
            status: RowStatus::Measured,
            samples: 1,
            pss_kib: Some(s(&[1024.0])),
            private_kib: Some(s(&[512.0])),
            shared_kib: Some(s(&[512.0])),
            processes: 2,
            last_rollup: None,
            notes: vec![],
        }];
        let pt = |k: usize, per: f64| DensityPoint {
            k,
            start_all_ms: k as f64 * 10.0,
            pss_total_kib: (per * k as f64) as u64,
            pss_per_instance_kib: per,
            mem_available_drop_kib: (per * k as f64 * 1.5) as i64,
        };
        r.density = vec![
            DensityResult {
                label: "duet container".into(),
                kind: Kind::Container,
                status: RowStatus::Measured,
                points: vec![pt(10, 1100.0), pt(50, 1000.0)],
                stopped_because: "reached 50 instances".into(),
                cleanup_errors: vec![],
            },
            DensityResult {
                label: "duet vm".into(),
                kind: Kind::Vm,
                status: RowStatus::Measured,
                points: vec![pt(10, 40960.0)],
                stopped_because: "reached 10 instances".into(),
                cleanup_errors: vec![],
            },
        ];
        r.disk = vec![DiskResult {
            label: "duet container".into(),
            image_bytes: 2 << 20,
            instances: 10,
            instances_bytes: 40960,
        }];
        r.isolation = Some(IsolationTable {
            columns: vec!["host".into(), "duet container".into(), "duet vm".into()],
            rows: vec![IsolationRow {
                fact: "kernel".into(),
                cells: vec![
                    Cell {
                        value: "6.18".into(),
                        verdict: None,
                        why: "reference".into(),
                    },
                    Cell {
                        value: "6.18".into(),
                        verdict: Some(Verdict::Shared),
                        why: "same kernel".into(),
                    },
                    Cell {
                        value: "6.1".into(),
                        verdict: Some(Verdict::Isolated),
                        why: "own kernel".into(),
                    },
                ],
            }],
            missing: vec![],
        });
        r.pristine = vec![
            crate::pristine::PristineResult {
                suite_s: 4.0,
                reset_p50_ms: Some(110.0),
                ..crate::pristine::PristineResult::unavailable(
                    "one shared server, reset between tests",
                    crate::pristine::Strategy::SharedReset,
                    16,
                    1,
                    "",
                )
            },
            crate::pristine::PristineResult {
                status: RowStatus::Measured,
                passed: 16,
                suite_s: 2.0,
                ready_p50_ms: 90.0,
                ready_p99_ms: 150.0,
                pss_mib: 30.0,
                disk_mib: 15.0,
                peak_mem_mib: 120.0,
                ..crate::pristine::PristineResult::unavailable(
                    "one container per test",
                    crate::pristine::Strategy::Container,
                    16,
                    2,
                    "",
                )
            },
        ];
        r.pristine[0].status = RowStatus::Measured;
        r.pristine[0].passed = 16;
        r.notes = vec!["VM peers (QEMU microvm) not run yet".into()];
        r
    }

    fn golden_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/report.json")
    }

    /// The JSON layout is the schema: a change here without bumping
    /// BENCH_SCHEMA breaks readers. Regenerate with DUET_UPDATE_GOLDEN=1.
    #[test]
    fn json_matches_golden_schema() {
        let json = render_json(&fixture());
        if std::env::var_os("DUET_UPDATE_GOLDEN").is_some() {
            std::fs::write(golden_path(), &json).unwrap();
        }
        let golden = std::fs::read_to_string(golden_path())
            .expect("golden file (run with DUET_UPDATE_GOLDEN=1 once)");
        assert_eq!(
            json.trim_end(),
            golden.trim_end(),
            "report JSON changed: bump BENCH_SCHEMA and regenerate"
        );
        let back: Report = serde_json::from_str(&golden).unwrap();
        assert_eq!(back, fixture());
        assert_eq!(back.schema, BENCH_SCHEMA);
    }

    #[test]
    fn claims_come_from_numbers() {
        let c = claims(&fixture());
        assert_eq!(c.len(), 5);
        assert!(
            c[4].measured
                .contains("one container per test: 16 tests in 2.00 s"),
            "{:?}",
            c[4]
        );
        assert!(
            c[4].reading.contains("0.50x the shared server's"),
            "{:?}",
            c[4]
        );
        assert!(c[4].reading.contains("the claim holds here"), "{:?}", c[4]);
        assert!(
            c[0].measured.contains("duet container: median 11.0 ms"),
            "{:?}",
            c[0]
        );
        assert!(c[0].reading.contains("not minutes"), "{:?}", c[0]);
        assert!(c[0].reading.contains("91x"), "{:?}", c[0]);
        assert!(c[1].reading.contains("40.0 MiB"), "{:?}", c[1]);
        assert!(
            c[1].measured.contains("10 instances (4 KiB each)"),
            "{:?}",
            c[1]
        );
        assert!(
            c[2].reading.contains("duet container") && c[2].reading.contains("own kernel: duet vm"),
            "{:?}",
            c[2]
        );
        assert!(c[3].measured.contains("50 instances"), "{:?}", c[3]);
        let empty = claims(&Report::new(fixture().host));
        assert!(
            empty.iter().all(|c| c.measured == NOT_MEASURED),
            "{empty:?}"
        );
    }

    #[test]
    fn markdown_has_every_section() {
        let md = render_markdown(&fixture());
        for s in [
            "## What the classic answer claims",
            "## Startup (wall",
            "## Startup phases",
            "## Memory",
            "## Density",
            "## Disk",
            "## Isolation",
            "crun refuses cgroup v1/v2 hybrid hosts",
            "nested-KVM testbed",
            "Harness overhead per run: 0.110 ms",
        ] {
            assert!(md.contains(s), "missing {s}:\n{md}");
        }
    }

    #[test]
    fn html_contains_the_charts() {
        let html = render_html(&fixture()).unwrap();
        if let Some(path) = std::env::var_os("DUET_BENCH_DUMP_HTML") {
            std::fs::write(path, &html).unwrap();
        }
        assert_eq!(
            html.matches("<svg").count(),
            6,
            "startup (containers, VMs) + two density charts + two pristine-db charts"
        );
        assert!(html.contains("Pristine database per test: time for the whole suite"));
        // Stacked bars: one rect per segment per measured row, labelled phases in the legend.
        assert!(html.contains("rootfs_ready") && html.contains("vm_created"));
        assert!(html.contains("Density: memory per instance"));
        assert!(
            html.contains("<polyline") || html.contains("<path"),
            "density lines drawn"
        );
        assert!(html.contains("duet container"));
        // No charts when nothing was measured, and the page still renders.
        let empty = render_html(&Report::new(fixture().host)).unwrap();
        assert!(!empty.contains("<svg"));
    }

    /// One SVG element: tag, attributes, and the text up to the next tag.
    struct SvgEl {
        tag: String,
        attrs: std::collections::BTreeMap<String, String>,
        text: String,
    }

    impl SvgEl {
        fn num(&self, k: &str) -> f64 {
            self.attrs
                .get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        }
    }

    /// A small SVG tokenizer, enough for what plotters writes.
    fn svg_elements(svg: &str) -> Vec<SvgEl> {
        let mut out = Vec::new();
        for chunk in svg.split('<').skip(1) {
            if chunk.starts_with('/') || chunk.starts_with('?') || chunk.starts_with('!') {
                continue;
            }
            let Some((inside, text)) = chunk.split_once('>') else {
                continue;
            };
            let inside = inside.trim_end_matches('/');
            let (tag, mut rest) = inside.split_once(' ').unwrap_or((inside, ""));
            let mut attrs = std::collections::BTreeMap::new();
            while let Some((k, after)) = rest.split_once("=\"") {
                let Some((v, after)) = after.split_once('"') else {
                    break;
                };
                attrs.insert(k.trim().to_string(), v.to_string());
                rest = after;
            }
            out.push(SvgEl {
                tag: tag.to_string(),
                attrs,
                text: text.trim().to_string(),
            });
        }
        out
    }

    /// Every chart's legend sits right of its plot: no bar, point or line
    /// reaches under a legend entry (they used to cover the tallest bars),
    /// and the header prints the date, not unix seconds.
    #[test]
    fn html_legends_sit_beside_the_plot_and_dates_are_dates() {
        let r = fixture();
        let html = render_html(&r).unwrap();
        assert!(
            html.contains("created 2023-11-14 22:13:20 UTC"),
            "no date in the header"
        );
        assert!(!html.contains("unix"), "unix seconds still shown");
        let phases: Vec<String> = r
            .startup
            .iter()
            .flat_map(|s| s.segments.iter().map(|g| g.name.clone()))
            .collect();
        let labels: Vec<String> = r.density.iter().map(|d| d.label.clone()).collect();
        let svgs: Vec<&str> = html
            .split("<svg")
            .skip(1)
            .map(|s| s.split("</svg>").next().unwrap())
            .collect();
        assert_eq!(svgs.len(), 6);
        // The last two (pristine-db bars) name their rows on the x axis,
        // not in a legend.
        for (i, svg) in svgs.iter().enumerate().take(4) {
            let els = svg_elements(&format!("<svg{svg}"));
            let width = els[0].num("width");
            // The plot area: where the mesh (grid lines) is drawn.
            let plot_right = els
                .iter()
                .filter(|e| e.tag == "line")
                .map(|e| e.num("x1").max(e.num("x2")))
                .fold(0f64, f64::max);
            assert!(plot_right > 0.0, "chart {i}: no mesh");
            // Data marks (filled non-white rectangles, circles) lie in it.
            let mut right = 0f64;
            for e in &els {
                let fill = e.attrs.get("fill").map(String::as_str).unwrap_or("none");
                match e.tag.as_str() {
                    "rect"
                        if fill != "#FFFFFF"
                            && fill != "none"
                            && e.num("width") > 0.0
                            && e.num("x") < plot_right =>
                    {
                        right = right.max(e.num("x") + e.num("width"));
                    }
                    "circle" => right = right.max(e.num("cx") + e.num("r")),
                    _ => {}
                }
            }
            assert!(right > 0.0, "chart {i} has no data marks");
            assert!(right <= plot_right + 1.0, "chart {i}: data beyond the plot");
            // The legend: the series names (phases for startup, rows for density).
            let names: Vec<&String> = if i < 2 {
                phases
                    .iter()
                    .filter(|p| els.iter().any(|e| e.tag == "text" && &e.text == *p))
                    .collect()
            } else {
                labels.iter().collect()
            };
            assert!(!names.is_empty(), "chart {i}: no legend");
            for name in names {
                let t = els
                    .iter()
                    .find(|e| e.tag == "text" && &e.text == name)
                    .unwrap_or_else(|| panic!("chart {i}: no legend entry {name}"));
                let x = t.num("x");
                assert_eq!(
                    t.attrs.get("text-anchor").map(String::as_str),
                    Some("start")
                );
                assert!(
                    x > plot_right,
                    "chart {i}: legend entry {name} at x={x} is inside the plot (up to x={plot_right})"
                );
                assert!(
                    x >= width - f64::from(charts::LEGEND_W) && x < width,
                    "{name} at {x}"
                );
            }
        }
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc_date_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date_time(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_date_time(1_798_761_599), "2026-12-31 23:59:59 UTC");
    }
}
