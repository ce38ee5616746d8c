//! `duet bench startup`: N timed starts after a warm-up, per runner.
//!
//! A [`Starter`] starts one instance to completion and says how long it took.
//! [`DuetStarter`] runs duet itself as a subprocess with `--report json`, so
//! the number is the real end-to-end cost a user pays, and the RunReport's
//! phases break it down; peers ([`crate::oci::OciStarter`]) give wall time only.
//! The harness's own cost per run is measured by [`measure_harness_overhead`].

use crate::stats::{summarize, Summary};
use crate::Kind;
use duet_shared::clock::monotonic_ns;
use duet_shared::RunReport;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Errors of one start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The runner's program could not be spawned.
    #[error("spawning {program}")]
    Spawn {
        /// Program path.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The run exited unsuccessfully.
    #[error("{program} exited with {status}: {stderr}")]
    Exit {
        /// Program path.
        program: String,
        /// Exit status as text.
        status: String,
        /// Last lines of its stderr.
        stderr: String,
    },
    /// duet's stdout held no parseable RunReport.
    #[error("{program}: no RunReport JSON on stdout ({reason})")]
    Report {
        /// Program path.
        program: String,
        /// Why parsing failed.
        reason: String,
    },
    /// A runner-specific failure.
    #[error("{0}")]
    Other(String),
}

/// Whether a row holds numbers, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum RowStatus {
    /// Measured.
    Measured,
    /// Not run: the runner is missing or refuses this host (the reason says which).
    Unavailable(String),
    /// Tried and failed.
    Failed(String),
}

/// One timed start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartSample {
    /// Harness-measured wall time from spawn to exit, ms.
    pub wall_ms: f64,
    /// From spawn to the runner's own t0 (duet only), ms: process exec cost.
    pub spawn_to_t0_ms: Option<f64>,
    /// From the runner's last stamp to the harness seeing it exit (duet only), ms.
    pub last_stamp_to_exit_ms: Option<f64>,
    /// The run's phase timeline (duet only).
    pub report: Option<RunReport>,
}

/// Starts one instance to completion.
pub trait Starter {
    /// Row label, e.g. `duet container` or `runc 1.1.5`.
    fn label(&self) -> String;
    /// What kind of isolation the row measures.
    fn kind(&self) -> Kind;
    /// Starts instance number `i` and waits for it to finish.
    fn start_once(&mut self, i: usize) -> Result<StartSample, StartError>;
}

/// Lets a long run show progress (the CLI plugs an indicatif bar in here).
pub trait Progress {
    /// `done` of `total` steps of `label` finished.
    fn tick(&mut self, label: &str, done: usize, total: usize);
}

/// A [`Progress`] that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn tick(&mut self, _: &str, _: usize, _: usize) {}
}

/// How many runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupConfig {
    /// Timed runs (issue default: 20).
    pub runs: usize,
    /// Untimed runs first (page cache, image unpacking, lazy init).
    pub warmup: usize,
}

impl Default for StartupConfig {
    fn default() -> Self {
        StartupConfig {
            runs: 20,
            warmup: 1,
        }
    }
}

/// Distribution of one segment of the startup bar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentStat {
    /// `exec` (spawn to t0), a phase name (time since the previous phase), or `exit`.
    pub name: String,
    /// Its distribution over the runs, ms.
    pub ms: Summary,
}

/// Startup numbers for one runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartupResult {
    /// Row label.
    pub label: String,
    /// Container, VM or bare process.
    pub kind: Kind,
    /// Whether it was measured.
    pub status: RowStatus,
    /// Timed runs asked for.
    pub runs: usize,
    /// Warm-up runs.
    pub warmup: usize,
    /// Wall time distribution, ms.
    pub wall_ms: Option<Summary>,
    /// Per-segment distributions in timeline order (duet rows); their medians
    /// stack into the chart's bar (a sum of medians, not the median of sums).
    pub segments: Vec<SegmentStat>,
    /// Every timed sample's wall time, ms, in run order.
    pub samples_ms: Vec<f64>,
}

impl StartupResult {
    /// A row for a runner that could not be run here.
    pub fn unavailable(label: &str, kind: Kind, reason: &str) -> StartupResult {
        StartupResult {
            label: label.to_string(),
            kind,
            status: RowStatus::Unavailable(reason.to_string()),
            runs: 0,
            warmup: 0,
            wall_ms: None,
            segments: Vec::new(),
            samples_ms: Vec::new(),
        }
    }
}

/// Groups per-run segment durations by name, keeping first-seen order.
fn segments_of(samples: &[StartSample]) -> Vec<SegmentStat> {
    let mut names: Vec<String> = Vec::new();
    let mut values: Vec<Vec<f64>> = Vec::new();
    let mut push = |name: &str, v: f64| {
        let i = match names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                names.push(name.to_string());
                values.push(Vec::new());
                names.len() - 1
            }
        };
        values[i].push(v);
    };
    for s in samples {
        let Some(r) = &s.report else { continue };
        if let Some(e) = s.spawn_to_t0_ms {
            push("exec", e);
        }
        for (phase, _, delta) in r.rows().into_iter().skip(1) {
            push(phase.name(), delta as f64 / 1e6);
        }
        if let Some(x) = s.last_stamp_to_exit_ms {
            push("exit", x);
        }
    }
    names
        .into_iter()
        .zip(values)
        .filter_map(|(name, v)| {
            Some(SegmentStat {
                name,
                ms: summarize(&v)?,
            })
        })
        .collect()
}

/// Runs `cfg.warmup` untimed then `cfg.runs` timed starts. The first failure
/// ends the row as [`RowStatus::Failed`] with its message.
pub fn run(
    cfg: &StartupConfig,
    starter: &mut dyn Starter,
    progress: &mut dyn Progress,
) -> StartupResult {
    let label = starter.label();
    let total = cfg.warmup + cfg.runs;
    let mut samples = Vec::with_capacity(cfg.runs);
    let mut status = RowStatus::Measured;
    for i in 0..total {
        match starter.start_once(i) {
            Ok(s) if i >= cfg.warmup => samples.push(s),
            Ok(_) => {}
            Err(e) => {
                status = RowStatus::Failed(crate::error_chain(&e));
                break;
            }
        }
        progress.tick(&label, i + 1, total);
    }
    result_of(label, starter.kind(), status, cfg, &samples)
}

fn result_of(
    label: String,
    kind: Kind,
    status: RowStatus,
    cfg: &StartupConfig,
    samples: &[StartSample],
) -> StartupResult {
    let samples_ms: Vec<f64> = samples.iter().map(|s| s.wall_ms).collect();
    StartupResult {
        label,
        kind,
        status,
        runs: cfg.runs,
        warmup: cfg.warmup,
        wall_ms: summarize(&samples_ms),
        segments: segments_of(samples),
        samples_ms,
    }
}

/// Like [`run`] for several starters at once, interleaved: run `i` of
/// every starter before run `i + 1` of any, so drift of a noisy machine
/// (frequency, page cache, other load) falls on all rows alike. A failed
/// row stops; the others go on.
pub fn run_interleaved(
    cfg: &StartupConfig,
    starters: &mut [Box<dyn Starter>],
    progress: &mut dyn Progress,
) -> Vec<StartupResult> {
    let total = cfg.warmup + cfg.runs;
    let mut samples: Vec<Vec<StartSample>> = starters.iter().map(|_| Vec::new()).collect();
    let mut status: Vec<RowStatus> = starters.iter().map(|_| RowStatus::Measured).collect();
    for i in 0..total {
        for (k, st) in starters.iter_mut().enumerate() {
            if status[k] != RowStatus::Measured {
                continue;
            }
            match st.start_once(i) {
                Ok(s) if i >= cfg.warmup => samples[k].push(s),
                Ok(_) => {}
                Err(e) => status[k] = RowStatus::Failed(crate::error_chain(&e)),
            }
            progress.tick(&st.label(), i + 1, total);
        }
    }
    starters
        .iter()
        .zip(samples)
        .zip(status)
        .map(|((st, samples), status)| result_of(st.label(), st.kind(), status, cfg, &samples))
        .collect()
}

/// What [`timed_spawn`] saw.
pub struct TimedOutput {
    /// `CLOCK_MONOTONIC` ns just before spawn.
    pub spawned_ns: u64,
    /// `CLOCK_MONOTONIC` ns just after wait returned.
    pub exited_ns: u64,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// Exit status.
    pub status: std::process::ExitStatus,
}

/// Spawns `cmd` with stdout/stderr captured and waits, stamping both ends on
/// `CLOCK_MONOTONIC` (the clock duet's RunReport uses). Every subprocess
/// runner goes through here, and so does the overhead measurement.
pub fn timed_spawn(cmd: &mut Command) -> Result<TimedOutput, std::io::Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned_ns = monotonic_ns();
    let mut child = cmd.spawn()?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    // Both pipes drained from this thread with poll(2): no reader thread to
    // create per run (that alone cost ~0.1 ms, a tenth of the budget).
    let out_pipe = child.stdout.take().expect("stdout piped");
    let err_pipe = child.stderr.take().expect("stderr piped");
    drain_both(out_pipe, err_pipe, &mut stdout, &mut stderr)?;
    let status = child.wait()?;
    let exited_ns = monotonic_ns();
    Ok(TimedOutput {
        spawned_ns,
        exited_ns,
        stdout,
        stderr,
        status,
    })
}

/// Reads two pipes to EOF, whichever has data first.
fn drain_both(
    mut out: std::process::ChildStdout,
    mut err: std::process::ChildStderr,
    out_buf: &mut Vec<u8>,
    err_buf: &mut Vec<u8>,
) -> Result<(), std::io::Error> {
    use std::os::fd::AsRawFd;
    let (mut out_open, mut err_open) = (true, true);
    let mut chunk = [0u8; 16 * 1024];
    while out_open || err_open {
        let mut fds = [
            libc::pollfd {
                fd: if out_open { out.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if err_open { err.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll reads and writes the two pollfd structs we own; negative fds are ignored.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if out_open && fds[0].revents != 0 {
            match out.read(&mut chunk)? {
                0 => out_open = false,
                k => out_buf.extend_from_slice(&chunk[..k]),
            }
        }
        if err_open && fds[1].revents != 0 {
            match err.read(&mut chunk)? {
                0 => err_open = false,
                k => err_buf.extend_from_slice(&chunk[..k]),
            }
        }
    }
    Ok(())
}

/// Last few lines of captured output, for error messages.
/// [`timed_spawn`] of `cmd` that must exit 0; `program` names it in errors.
pub fn timed_ok(cmd: &mut Command, program: &str) -> Result<TimedOutput, StartError> {
    let out = timed_spawn(cmd).map_err(|source| StartError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(StartError::Exit {
            program: program.to_string(),
            status: out.status.to_string(),
            stderr: tail(&out.stderr),
        });
    }
    Ok(out)
}

impl StartSample {
    /// A sample of only the harness's wall time (peers, lifecycle rows).
    pub fn wall(out: &TimedOutput) -> StartSample {
        StartSample {
            wall_ms: (out.exited_ns - out.spawned_ns) as f64 / 1e6,
            spawn_to_t0_ms: None,
            last_stamp_to_exit_ms: None,
            report: None,
        }
    }
}

pub fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Finds and parses the RunReport `duet run --report json` prints after the
/// workload's own output.
pub fn parse_run_report(stdout: &[u8]) -> Result<RunReport, String> {
    let s = String::from_utf8_lossy(stdout);
    let start = s
        .rfind("{\n  \"schema\"")
        .or_else(|| s.find('{'))
        .ok_or_else(|| "no `{` in output".to_string())?;
    serde_json::from_str(s[start..].trim()).map_err(|e| e.to_string())
}

/// Runs `duet run --isolation I --report json [extra] IMAGE -- COMMAND`.
#[derive(Debug, Clone)]
pub struct DuetStarter {
    /// Path of the duet binary (usually `std::env::current_exe()`).
    pub duet: PathBuf,
    /// `container` or `vm`.
    pub isolation: String,
    /// Image name (e.g. `busybox`).
    pub image: String,
    /// Workload command (e.g. `["true"]`).
    pub command: Vec<String>,
    /// Extra `duet run` arguments (e.g. `--memory 128`).
    pub extra_args: Vec<String>,
    /// The row's label when not `duet <isolation>` (e.g. `duet vm --warm`).
    pub label: Option<String>,
    /// The state root of its runs (`DUET_ROOT`); `None`: the caller's.
    pub root: Option<PathBuf>,
}

impl DuetStarter {
    /// The full argument list after the program name.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "run".to_string(),
            "--isolation".to_string(),
            self.isolation.clone(),
            "--report".to_string(),
            "json".to_string(),
            // Startup as the peers (runc, crun, Firecracker) have it: no network.
            "--network".to_string(),
            "none".to_string(),
        ];
        a.extend(self.extra_args.iter().cloned());
        a.push(self.image.clone());
        a.push("--".to_string());
        a.extend(self.command.iter().cloned());
        a
    }
}

impl Starter for DuetStarter {
    fn label(&self) -> String {
        self.label
            .clone()
            .unwrap_or_else(|| format!("duet {}", self.isolation))
    }

    fn kind(&self) -> Kind {
        Kind::of_isolation(&self.isolation)
    }

    fn start_once(&mut self, _i: usize) -> Result<StartSample, StartError> {
        let program = self.duet.display().to_string();
        let mut cmd = Command::new(&self.duet);
        cmd.args(self.args());
        if let Some(r) = &self.root {
            cmd.env("DUET_ROOT", r);
        }
        let out = timed_spawn(&mut cmd).map_err(|source| StartError::Spawn {
            program: program.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(StartError::Exit {
                program,
                status: out.status.to_string(),
                stderr: tail(&out.stderr),
            });
        }
        let report = parse_run_report(&out.stdout)
            .map_err(|reason| StartError::Report { program, reason })?;
        let last = report
            .phases
            .iter()
            .map(|p| p.at_ns)
            .max()
            .unwrap_or(report.t0_ns);
        Ok(StartSample {
            wall_ms: (out.exited_ns - out.spawned_ns) as f64 / 1e6,
            spawn_to_t0_ms: Some(report.t0_ns.saturating_sub(out.spawned_ns) as f64 / 1e6),
            last_stamp_to_exit_ms: Some(out.exited_ns.saturating_sub(last) as f64 / 1e6),
            report: Some(report),
        })
    }
}

/// A [`Starter`] from a closure, for backends wired in-process.
pub struct FnStarter<F: FnMut(usize) -> Result<StartSample, StartError>> {
    /// Row label.
    pub label: String,
    /// Container, VM or process.
    pub kind: Kind,
    /// Starts instance `i`.
    pub start: F,
}

impl<F: FnMut(usize) -> Result<StartSample, StartError>> Starter for FnStarter<F> {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn kind(&self) -> Kind {
        self.kind
    }
    fn start_once(&mut self, i: usize) -> Result<StartSample, StartError> {
        (self.start)(i)
    }
}

/// The harness's own cost per run, and how it was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HarnessOverhead {
    /// Samples per side.
    pub samples: usize,
    /// `Command::new("/bin/true").status()`: spawn + wait, nothing captured, ms.
    pub raw_spawn_ms: Summary,
    /// The same program through [`timed_spawn`] (pipes, poll, stamps), ms.
    pub harness_spawn_ms: Summary,
    /// Parsing a 12-phase RunReport from captured stdout, ms.
    pub parse_ms: Summary,
    /// median(harness) - median(raw) + median(parse): what the harness adds per run, ms.
    pub overhead_ms: f64,
    /// How it was measured, in one sentence.
    pub method: String,
}

/// A RunReport as duet prints it, with every phase, for the parse timing.
fn sample_report_json() -> String {
    use duet_shared::Phase::*;
    let mut r = RunReport::start("container", "bench", "busybox");
    let t0 = r.t0_ns;
    for (i, p) in [
        SpecLoaded,
        RootfsReady,
        NamespacesCreated,
        CgroupApplied,
        PivotDone,
        VmCreated,
        KernelLoaded,
        VcpusStarted,
        Ready,
        Exited,
        CleanedUp,
    ]
    .into_iter()
    .enumerate()
    {
        r.mark_at(p, t0 + (i as u64 + 1) * 1_000_000);
    }
    r.exit = Some(duet_shared::WorkloadExit::Code(0));
    r.to_json()
}

/// Measures what the harness adds to each run: interleaved raw and harness
/// spawns of `/bin/true`, plus the RunReport parse (done after the clock stops,
/// but counted anyway).
pub fn measure_harness_overhead(samples: usize) -> Result<HarnessOverhead, StartError> {
    let program = "/bin/true";
    let samples = samples.max(3);
    let json = sample_report_json();
    let mut raw = Vec::with_capacity(samples);
    let mut harness = Vec::with_capacity(samples);
    let mut parse = Vec::with_capacity(samples);
    let spawn_err = |source| StartError::Spawn {
        program: program.to_string(),
        source,
    };
    for _ in 0..samples {
        let t = monotonic_ns();
        Command::new(program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(spawn_err)?;
        raw.push((monotonic_ns() - t) as f64 / 1e6);
        let out = timed_spawn(&mut Command::new(program)).map_err(spawn_err)?;
        harness.push((out.exited_ns - out.spawned_ns) as f64 / 1e6);
        let t = monotonic_ns();
        parse_run_report(json.as_bytes()).map_err(|reason| StartError::Report {
            program: "sample RunReport".to_string(),
            reason,
        })?;
        parse.push((monotonic_ns() - t) as f64 / 1e6);
    }
    let raw_spawn_ms = summarize(&raw).expect("samples >= 3");
    let harness_spawn_ms = summarize(&harness).expect("samples >= 3");
    let parse_ms = summarize(&parse).expect("samples >= 3");
    Ok(HarnessOverhead {
        samples,
        overhead_ms: (harness_spawn_ms.median - raw_spawn_ms.median).max(0.0) + parse_ms.median,
        raw_spawn_ms,
        harness_spawn_ms,
        parse_ms,
        method: format!(
            "{samples} interleaved pairs of /bin/true: spawn+wait with nothing captured vs the \
             harness's timed spawn (stdout/stderr pipes drained with poll, CLOCK_MONOTONIC stamps); \
             plus parsing a 12-phase RunReport"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_shared::Phase;

    fn sample(wall: f64, deltas: &[(Phase, u64)]) -> StartSample {
        let mut r = RunReport::start("container", "t", "busybox");
        let mut t = r.t0_ns;
        for (p, d) in deltas {
            t += d;
            r.mark_at(*p, t);
        }
        StartSample {
            wall_ms: wall,
            spawn_to_t0_ms: Some(1.0),
            last_stamp_to_exit_ms: Some(0.5),
            report: Some(r),
        }
    }

    #[test]
    fn segments_follow_timeline_order() {
        let s = vec![
            sample(
                10.0,
                &[(Phase::RootfsReady, 2_000_000), (Phase::Ready, 4_000_000)],
            ),
            sample(
                12.0,
                &[(Phase::RootfsReady, 3_000_000), (Phase::Ready, 6_000_000)],
            ),
        ];
        let seg = segments_of(&s);
        let names: Vec<&str> = seg.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["exec", "rootfs_ready", "ready", "exit"]);
        assert_eq!(seg[1].ms.median, 2.5);
        assert_eq!(seg[2].ms.max, 6.0);
    }

    struct Flaky(usize);
    impl Starter for Flaky {
        fn label(&self) -> String {
            "flaky".into()
        }
        fn kind(&self) -> Kind {
            Kind::Process
        }
        fn start_once(&mut self, i: usize) -> Result<StartSample, StartError> {
            if i == self.0 {
                return Err(StartError::Other("boom".into()));
            }
            Ok(StartSample {
                wall_ms: i as f64,
                spawn_to_t0_ms: None,
                last_stamp_to_exit_ms: None,
                report: None,
            })
        }
    }

    #[test]
    fn warmup_is_not_timed_and_failure_ends_row() {
        let cfg = StartupConfig { runs: 3, warmup: 2 };
        let r = run(&cfg, &mut Flaky(usize::MAX), &mut NoProgress);
        assert_eq!(r.samples_ms, vec![2.0, 3.0, 4.0]);
        assert_eq!(r.wall_ms.unwrap().median, 3.0);
        assert_eq!(r.status, RowStatus::Measured);
        let r = run(&cfg, &mut Flaky(3), &mut NoProgress);
        assert_eq!(r.status, RowStatus::Failed("boom".into()));
        assert_eq!(r.samples_ms, vec![2.0]);
    }

    #[test]
    fn run_report_found_after_workload_output() {
        let json = sample_report_json();
        let out = format!("hello from the workload {{not json}}\n{json}\n");
        let r = parse_run_report(out.as_bytes()).unwrap();
        assert_eq!(r.phases.len(), 12);
        assert!(parse_run_report(b"no report").is_err());
    }

    #[test]
    fn duet_args_put_command_after_separator() {
        let s = DuetStarter {
            duet: "/usr/bin/duet".into(),
            isolation: "vm".into(),
            image: "busybox".into(),
            command: vec!["true".into()],
            extra_args: vec!["--memory".into(), "128".into()],
            label: None,
            root: None,
        };
        assert_eq!(
            s.args().join(" "),
            "run --isolation vm --report json --network none --memory 128 busybox -- true"
        );
    }

    #[test]
    fn duet_starter_against_fake_duet_script() {
        // A stand-in duet: prints workload output then a RunReport, like `duet run --report json`.
        let dir = tempfile::tempdir().unwrap();
        let json_path = dir.path().join("r.json");
        std::fs::write(&json_path, sample_report_json()).unwrap();
        let script = dir.path().join("duet");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho workload-output\ncat {}\n",
                json_path.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut s = DuetStarter {
            duet: script,
            isolation: "container".into(),
            image: "busybox".into(),
            command: vec!["true".into()],
            extra_args: vec![],
            label: Some("duet container as a test".into()),
            root: None,
        };
        assert_eq!(s.label(), "duet container as a test");
        let r = run(
            &StartupConfig { runs: 2, warmup: 0 },
            &mut s,
            &mut NoProgress,
        );
        assert_eq!(r.status, RowStatus::Measured, "{r:?}");
        assert_eq!(r.label, "duet container as a test");
        assert!(r.segments.iter().any(|x| x.name == "pivot_done"));
    }

    #[test]
    fn timed_spawn_captures_both_pipes_without_deadlock() {
        // 200 KB on each pipe: more than a pipe buffer, so both must be drained together.
        let out = timed_spawn(Command::new("/bin/sh").args([
            "-c",
            "head -c 200000 /dev/zero; head -c 200000 /dev/zero >&2; echo end; exit 3",
        ]))
        .unwrap();
        assert_eq!(out.stdout.len(), 200_004);
        assert_eq!(out.stderr.len(), 200_000);
        assert_eq!(out.status.code(), Some(3));
        assert!(out.exited_ns > out.spawned_ns);
    }

    #[test]
    fn harness_overhead_is_under_one_ms() {
        let o = measure_harness_overhead(50).unwrap();
        println!(
            "raw {:.3} ms, harness {:.3} ms, parse {:.4} ms => overhead {:.3} ms",
            o.raw_spawn_ms.median, o.harness_spawn_ms.median, o.parse_ms.median, o.overhead_ms
        );
        assert!(o.overhead_ms < 1.0, "{o:?}");
    }
}
