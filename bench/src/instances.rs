//! Idle instances for `duet bench memory` and `duet bench density`.
//!
//! An [`IdleLauncher`] starts an instance that stays up until stopped and
//! names the processes that hold its memory. [`CommandIdle`] covers any
//! subprocess that prints a ready line (duet itself: `duet run ... -- sh -c
//! 'echo duet-ready; exec sleep 1000000'`, or a bare process as a baseline);
//! [`crate::oci::OciIdle`] covers runc/crun. Every instance stops on drop, and
//! [`interrupt`] turns Ctrl-C into a flag the scenarios poll, so an
//! interrupted density run still stops everything it started.

use crate::memory::{mem_available_kib, tree_memory, Rollup};
use crate::startup::{Progress, RowStatus};
use crate::stats::{summarize, Summary};
use crate::Kind;
use duet_shared::clock::monotonic_ns;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors starting or stopping an idle instance.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Starting failed.
    #[error("start: {0}")]
    Start(String),
    /// Stopping failed.
    #[error("stop: {0}")]
    Stop(String),
    /// Ctrl-C arrived.
    #[error("interrupted")]
    Interrupted,
}

/// A running idle instance.
pub trait IdleInstance {
    /// Processes whose trees hold the instance's memory.
    fn root_pids(&self) -> Vec<u32>;
    /// Name for messages.
    fn name(&self) -> String;
    /// Stops it and removes what it left (idempotent; also done on drop).
    fn stop(&mut self) -> Result<(), LaunchError>;
    /// The id its runtime knows it by (for `exec`), if it has one.
    fn handle(&self) -> Option<String> {
        None
    }
}

/// Starts idle instances of one kind.
pub trait IdleLauncher {
    /// Row label.
    fn label(&self) -> String;
    /// What kind of isolation it measures.
    fn kind(&self) -> Kind;
    /// Starts instance `i` and returns once it is up (ready).
    fn start_idle(&mut self, i: usize) -> Result<Box<dyn IdleInstance>, LaunchError>;
}

/// Ctrl-C (SIGINT) and SIGTERM as a flag the scenarios poll between starts.
pub mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    /// Installs the handler for SIGINT and SIGTERM (the CLI calls this before a scenario).
    pub fn install() {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }

    /// True once a signal arrived (or [`raise`] was called).
    pub fn requested() -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }

    /// Sets the flag as if Ctrl-C had been pressed.
    pub fn raise() {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    /// Clears the flag (between scenarios, and in tests).
    pub fn clear() {
        INTERRUPTED.store(false, Ordering::SeqCst);
    }
}

/// Runs a command as an idle instance; it is up once it prints `ready_line`
/// on stdout (or at once if `None`).
#[derive(Debug, Clone)]
pub struct CommandIdle {
    /// Row label.
    pub label: String,
    /// Container, VM or bare process.
    pub kind: Kind,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Line that says the instance is up.
    pub ready_line: Option<String>,
    /// Longest wait for the ready line.
    pub ready_timeout: Duration,
}

impl CommandIdle {
    /// `duet run --isolation I IMAGE -- sh -c 'echo duet-ready; exec sleep 1000000'`.
    pub fn duet(
        duet: &std::path::Path,
        isolation: &str,
        image: &str,
        extra_args: &[String],
    ) -> CommandIdle {
        let mut argv = vec![
            duet.display().to_string(),
            "run".to_string(),
            "--isolation".to_string(),
            isolation.to_string(),
            // Density without networking, as the peers it is compared with.
            "--network".to_string(),
            "none".to_string(),
        ];
        argv.extend(extra_args.iter().cloned());
        argv.extend(
            [
                image,
                "--",
                "sh",
                "-c",
                "echo duet-ready; exec sleep 1000000",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        CommandIdle {
            label: format!("duet {isolation}"),
            kind: Kind::of_isolation(isolation),
            argv,
            ready_line: Some("duet-ready".to_string()),
            ready_timeout: Duration::from_secs(120),
        }
    }
}

/// A subprocess instance: SIGTERM on stop, SIGKILL if it has not exited after 5 s.
pub struct ChildInstance {
    child: Child,
    name: String,
    stopped: bool,
}

impl IdleLauncher for CommandIdle {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn kind(&self) -> Kind {
        self.kind
    }

    fn start_idle(&mut self, i: usize) -> Result<Box<dyn IdleInstance>, LaunchError> {
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| LaunchError::Start("empty command".to_string()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(if self.ready_line.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LaunchError::Start(format!("spawning {program}: {e}")))?;
        let mut inst = ChildInstance {
            name: format!("{} #{i} (pid {})", self.label, child.id()),
            stopped: false,
            child: {
                if let Some(ready) = &self.ready_line {
                    let out = child.stdout.take().expect("stdout piped");
                    let ready = ready.clone();
                    let (tx, rx) = std::sync::mpsc::channel();
                    std::thread::spawn(move || {
                        let mut lines = BufReader::new(out).lines();
                        let ok = lines
                            .by_ref()
                            .any(|l| l.map(|l| l.trim() == ready).unwrap_or(false));
                        let _ = tx.send(ok);
                        // Keep draining so the instance never blocks on a full pipe.
                        for _ in lines {}
                    });
                    match rx.recv_timeout(self.ready_timeout) {
                        Ok(true) => {}
                        other => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(LaunchError::Start(format!(
                                "{program}: no `{}` line ({})",
                                self.ready_line.as_deref().unwrap_or(""),
                                match other {
                                    Ok(_) => "exited first".to_string(),
                                    Err(_) => format!("timeout {:?}", self.ready_timeout),
                                }
                            )));
                        }
                    }
                }
                child
            },
        };
        if let Ok(Some(st)) = inst.child.try_wait() {
            inst.stopped = true;
            return Err(LaunchError::Start(format!(
                "{program} exited at once: {st}"
            )));
        }
        Ok(Box::new(inst))
    }
}

impl IdleInstance for ChildInstance {
    fn root_pids(&self) -> Vec<u32> {
        vec![self.child.id()]
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn stop(&mut self) -> Result<(), LaunchError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child, which we have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(LaunchError::Stop(format!(
                        "{}: ignored SIGTERM for 5 s, killed",
                        self.name
                    )));
                }
                Err(e) => return Err(LaunchError::Stop(format!("{}: wait: {e}", self.name))),
            }
        }
    }
}

impl Drop for ChildInstance {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Stops every instance, collecting failures as text.
fn stop_all(instances: &mut Vec<Box<dyn IdleInstance>>) -> Vec<String> {
    let mut errs = Vec::new();
    for mut i in instances.drain(..) {
        if let Err(e) = i.stop() {
            errs.push(format!("{}: {e}", i.name()));
        }
    }
    errs
}

/// Memory of one idle instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryResult {
    /// Row label.
    pub label: String,
    /// Container, VM or bare process.
    pub kind: Kind,
    /// Whether it was measured.
    pub status: RowStatus,
    /// Instances measured one after another.
    pub samples: usize,
    /// PSS of the instance's processes, KiB.
    pub pss_kib: Option<Summary>,
    /// Private part (pages only this instance maps), KiB.
    pub private_kib: Option<Summary>,
    /// Its proportional share of pages shared with others (libraries, image files in page cache), KiB.
    pub shared_kib: Option<Summary>,
    /// Processes in the instance (last sample).
    pub processes: usize,
    /// Last sample's full rollup.
    pub last_rollup: Option<Rollup>,
    /// Backend counters that explain a VM's memory (guest pages touched, VMM overhead), if the backend gives them.
    pub notes: Vec<String>,
}

/// Starts `samples` instances one at a time, lets each settle, measures its PSS, stops it.
pub fn measure_memory(
    launcher: &mut dyn IdleLauncher,
    samples: usize,
    settle: Duration,
) -> MemoryResult {
    let label = launcher.label();
    let (mut pss, mut private, mut shared) = (Vec::new(), Vec::new(), Vec::new());
    let mut status = RowStatus::Measured;
    let mut processes = 0;
    let mut last = None;
    for i in 0..samples.max(1) {
        if interrupt::requested() {
            status = RowStatus::Failed("interrupted".to_string());
            break;
        }
        let mut inst = match launcher.start_idle(i) {
            Ok(x) => x,
            Err(e) => {
                status = RowStatus::Failed(crate::error_chain(&e));
                break;
            }
        };
        std::thread::sleep(settle);
        let m = tree_memory(&inst.root_pids());
        processes = m.pids.len();
        pss.push(m.total.pss_kib as f64);
        private.push(m.total.private_kib() as f64);
        shared.push(m.total.shared_share_kib() as f64);
        last = Some(m.total);
        if let Err(e) = inst.stop() {
            status = RowStatus::Failed(crate::error_chain(&e));
            break;
        }
    }
    MemoryResult {
        label,
        kind: launcher.kind(),
        status,
        samples: pss.len(),
        pss_kib: summarize(&pss),
        private_kib: summarize(&private),
        shared_kib: summarize(&shared),
        processes,
        last_rollup: last,
        notes: Vec::new(),
    }
}

/// What to try in a density run.
#[derive(Debug, Clone, PartialEq)]
pub struct DensityConfig {
    /// Instance counts to measure at, ascending (issue: 10, 50, 100, ...).
    pub steps: Vec<usize>,
    /// Never more than this many instances (`--max`).
    pub max: usize,
    /// Stop before the instances would use more than this, KiB (default: half of MemAvailable).
    pub budget_kib: u64,
    /// Pause after each batch before measuring.
    pub settle: Duration,
}

impl DensityConfig {
    /// 10, 50, 100, 200, 500, 1000, ... up to `max`, with half of MemAvailable as budget.
    pub fn up_to(max: usize) -> DensityConfig {
        let mut steps = Vec::new();
        let mut base = 1;
        'outer: loop {
            for m in [10, 20, 50] {
                let k = m * base;
                if k > max {
                    break 'outer;
                }
                if k != 20 {
                    steps.push(k);
                }
            }
            base *= 10;
        }
        if steps.last() != Some(&max) && max > 0 {
            steps.push(max);
        }
        DensityConfig {
            steps,
            max,
            budget_kib: mem_available_kib().unwrap_or(0) / 2,
            settle: Duration::from_millis(500),
        }
    }
}

/// One measured point of a density curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DensityPoint {
    /// Instances running.
    pub k: usize,
    /// Time to start all `k`, one after another, ms.
    pub start_all_ms: f64,
    /// Sum of PSS over all instances, KiB.
    pub pss_total_kib: u64,
    /// `pss_total_kib / k`.
    pub pss_per_instance_kib: f64,
    /// Drop in MemAvailable since before the first start, KiB (includes kernel and page cache).
    pub mem_available_drop_kib: i64,
}

/// A density curve for one kind of instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DensityResult {
    /// Row label.
    pub label: String,
    /// Container, VM or bare process.
    pub kind: Kind,
    /// Whether it was measured (Failed still keeps the points reached).
    pub status: RowStatus,
    /// Measured points.
    pub points: Vec<DensityPoint>,
    /// Why the curve ends where it does.
    pub stopped_because: String,
    /// Instances that failed to stop during cleanup (should be empty).
    pub cleanup_errors: Vec<String>,
}

/// Starts instances up to each step, measuring memory and cumulative start
/// time; stops at `max`, at the memory budget, on the first failure or on
/// Ctrl-C. Every started instance is stopped before returning.
pub fn run_density(
    cfg: &DensityConfig,
    launcher: &mut dyn IdleLauncher,
    progress: &mut dyn Progress,
) -> DensityResult {
    run_density_observed(cfg, launcher, progress, &mut |_, _| {})
}

/// Called at each density point with the instances running then.
pub type DensityObserver<'a> = dyn FnMut(&DensityPoint, &[Box<dyn IdleInstance>]) + 'a;

/// [`run_density`], calling `observe` at each measured point with the
/// instances running then (e.g. to measure their disk use before they stop).
pub fn run_density_observed(
    cfg: &DensityConfig,
    launcher: &mut dyn IdleLauncher,
    progress: &mut dyn Progress,
    observe: &mut DensityObserver<'_>,
) -> DensityResult {
    let label = launcher.label();
    let baseline = mem_available_kib().unwrap_or(0) as i64;
    let mut instances: Vec<Box<dyn IdleInstance>> = Vec::new();
    let mut points = Vec::new();
    let mut start_ns_total: u64 = 0;
    let mut status = RowStatus::Measured;
    let target = cfg
        .steps
        .iter()
        .copied()
        .filter(|&k| k <= cfg.max)
        .max()
        .unwrap_or(0);
    let mut stopped_because = format!("reached {target} instances");
    'steps: for &k in cfg.steps.iter().filter(|&&k| k <= cfg.max) {
        if let Some(p) = points.last() {
            let p: &DensityPoint = p;
            let projected = p.pss_per_instance_kib * k as f64;
            if cfg.budget_kib > 0 && projected > cfg.budget_kib as f64 {
                stopped_because = format!(
                    "{k} instances would need ~{:.0} MiB, over the {:.0} MiB budget",
                    projected / 1024.0,
                    cfg.budget_kib as f64 / 1024.0
                );
                break;
            }
        }
        while instances.len() < k {
            if interrupt::requested() {
                stopped_because = "interrupted (Ctrl-C)".to_string();
                status = RowStatus::Failed("interrupted".to_string());
                break 'steps;
            }
            let t = monotonic_ns();
            match launcher.start_idle(instances.len()) {
                Ok(inst) => instances.push(inst),
                Err(e) => {
                    stopped_because = format!("instance {} failed to start", instances.len() + 1);
                    status = RowStatus::Failed(crate::error_chain(&e));
                    break 'steps;
                }
            }
            start_ns_total += monotonic_ns() - t;
            progress.tick(&label, instances.len(), target);
        }
        std::thread::sleep(cfg.settle);
        let roots: Vec<u32> = instances.iter().flat_map(|i| i.root_pids()).collect();
        let mem = tree_memory(&roots);
        let point = DensityPoint {
            k,
            start_all_ms: start_ns_total as f64 / 1e6,
            pss_total_kib: mem.total.pss_kib,
            pss_per_instance_kib: mem.total.pss_kib as f64 / k as f64,
            mem_available_drop_kib: baseline - mem_available_kib().unwrap_or(0) as i64,
        };
        observe(&point, &instances);
        points.push(point);
    }
    let cleanup_errors = stop_all(&mut instances);
    DensityResult {
        label,
        kind: launcher.kind(),
        status,
        points,
        stopped_because,
        cleanup_errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::startup::NoProgress;
    use std::sync::Mutex;

    /// The interrupt flag is process-global: tests that touch it take turns.
    pub(crate) static FLAG_LOCK: Mutex<()> = Mutex::new(());

    fn sleeper() -> CommandIdle {
        CommandIdle {
            label: "sleep".into(),
            kind: Kind::Process,
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo up; exec sleep 1000".into(),
            ],
            ready_line: Some("up".into()),
            ready_timeout: Duration::from_secs(10),
        }
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    #[test]
    fn steps_up_to_max() {
        assert_eq!(DensityConfig::up_to(100).steps, vec![10, 50, 100]);
        assert_eq!(
            DensityConfig::up_to(1000).steps,
            vec![10, 50, 100, 200, 500, 1000]
        );
        assert_eq!(DensityConfig::up_to(30).steps, vec![10, 30]);
    }

    #[test]
    fn command_instance_waits_for_ready_and_stops() {
        let mut l = sleeper();
        let mut i = l.start_idle(0).unwrap();
        let pid = i.root_pids()[0];
        assert!(alive(pid));
        i.stop().unwrap();
        assert!(!alive(pid));
        let mut bad = CommandIdle {
            ready_line: Some("never".into()),
            ..sleeper()
        };
        bad.argv = vec!["/bin/true".into()];
        assert!(matches!(bad.start_idle(0), Err(LaunchError::Start(_))));
    }

    #[test]
    fn memory_of_idle_process() {
        let _g = FLAG_LOCK.lock().unwrap();
        interrupt::clear();
        let r = measure_memory(&mut sleeper(), 2, Duration::from_millis(50));
        assert_eq!(r.status, RowStatus::Measured, "{r:?}");
        assert_eq!(r.samples, 2);
        assert!(r.pss_kib.unwrap().median > 0.0);
        assert!(r.processes >= 1);
    }

    #[test]
    fn density_measures_points_and_cleans_up() {
        let _g = FLAG_LOCK.lock().unwrap();
        interrupt::clear();
        let cfg = DensityConfig {
            steps: vec![2, 4],
            max: 4,
            budget_kib: 0,
            settle: Duration::from_millis(20),
        };
        let r = run_density(&cfg, &mut sleeper(), &mut NoProgress);
        assert_eq!(r.status, RowStatus::Measured, "{r:?}");
        assert_eq!(r.points.len(), 2);
        assert!(r.points[1].pss_total_kib > r.points[0].pss_total_kib / 2);
        assert!(r.points[1].start_all_ms >= r.points[0].start_all_ms);
        assert!(r.cleanup_errors.is_empty());
    }

    /// Raises the interrupt after `after` starts, recording every pid it started.
    struct InterruptAfter {
        inner: CommandIdle,
        after: usize,
        pids: std::rc::Rc<std::cell::RefCell<Vec<u32>>>,
    }

    impl IdleLauncher for InterruptAfter {
        fn label(&self) -> String {
            "interrupting".into()
        }
        fn kind(&self) -> Kind {
            Kind::Process
        }
        fn start_idle(&mut self, i: usize) -> Result<Box<dyn IdleInstance>, LaunchError> {
            let inst = self.inner.start_idle(i)?;
            self.pids.borrow_mut().extend(inst.root_pids());
            if i + 1 == self.after {
                interrupt::raise();
            }
            Ok(inst)
        }
    }

    #[test]
    fn ctrl_c_during_density_leaves_nothing_behind() {
        let _g = FLAG_LOCK.lock().unwrap();
        interrupt::clear();
        let pids = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut l = InterruptAfter {
            inner: sleeper(),
            after: 3,
            pids: pids.clone(),
        };
        let cfg = DensityConfig {
            steps: vec![10],
            max: 10,
            budget_kib: 0,
            settle: Duration::from_millis(1),
        };
        let r = run_density(&cfg, &mut l, &mut NoProgress);
        interrupt::clear();
        assert_eq!(r.stopped_because, "interrupted (Ctrl-C)");
        assert_eq!(pids.borrow().len(), 3);
        for pid in pids.borrow().iter() {
            assert!(!alive(*pid), "pid {pid} survived");
        }
    }

    #[test]
    fn observer_sees_every_point_with_its_instances() {
        let _g = FLAG_LOCK.lock().unwrap();
        interrupt::clear();
        let cfg = DensityConfig {
            steps: vec![1, 3],
            max: 3,
            budget_kib: 0,
            settle: Duration::from_millis(10),
        };
        let mut seen = Vec::new();
        let r = run_density_observed(&cfg, &mut sleeper(), &mut NoProgress, &mut |p, insts| {
            let pids: Vec<u32> = insts.iter().flat_map(|i| i.root_pids()).collect();
            assert!(pids.iter().all(|&p| alive(p)), "observed while running");
            seen.push((p.k, pids.len()));
        });
        assert_eq!(r.status, RowStatus::Measured, "{r:?}");
        assert_eq!(seen, vec![(1, 1), (3, 3)]);
    }

    #[test]
    fn budget_stops_the_curve() {
        let _g = FLAG_LOCK.lock().unwrap();
        interrupt::clear();
        let cfg = DensityConfig {
            steps: vec![1, 1000],
            max: 1000,
            budget_kib: 1,
            settle: Duration::from_millis(10),
        };
        let r = run_density(&cfg, &mut sleeper(), &mut NoProgress);
        assert_eq!(r.points.len(), 1);
        assert!(
            r.stopped_because.contains("budget"),
            "{}",
            r.stopped_because
        );
    }
}
