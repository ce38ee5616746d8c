//! `duet bench pristine-db`: N test cases that each need a pristine
//! PostgreSQL (duet-bench's `pristine` module has the test and the
//! measures), provided four ways, each measured in this run:
//!
//! 1. one shared server (a container), tests one after another, `app`
//!    dropped and made again from the `seed` template after each;
//! 2. one container per test, P at a time, from the image's layers with
//!    its own writable layer;
//! 3. one cold-booted microVM per test, P at a time;
//! 4. one microVM clone per test restored from a snapshot of a ready
//!    server: a template VM is booted once until PostgreSQL accepts
//!    connections, snapshotted (`duet snapshot`) and removed; every test
//!    then gets `duet run -d --from-snapshot`, a clone with its own MAC,
//!    address and copy of the scratch disk, P at a time. The template's
//!    boot and snapshot count in the suite's time (and are shown apart).
//!
//! Everything runs in a network namespace and a state root of the bench's
//! own (the image is borrowed from the user's store, not copied), so the
//! bridge, leases and instances go with it.

use super::*;
use duet_bench::memory::tree_memory;
use duet_bench::pristine::{self, InstanceSample, PristineResult, Strategy};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Options of the pristine-db scenario.
#[derive(Args, Clone, Debug)]
pub struct PristineArgs {
    /// Test cases per strategy.
    #[arg(long, default_value_t = 50)]
    pub tests: usize,
    /// Instances at once in the per-test strategies; a comma-separated
    /// list (`1,2,4`) measures each per-test strategy once per value.
    #[arg(long, value_delimiter = ',', default_values_t = [4])]
    pub parallel: Vec<usize>,
    /// The PostgreSQL image (images/postgres/build.sh makes it).
    #[arg(long, default_value = pristine::DEFAULT_IMAGE)]
    pub pg_image: String,
    /// Guest memory of each microVM, MiB.
    #[arg(long, default_value_t = 256)]
    pub vm_memory: u32,
}

impl PristineArgs {
    /// The same options for an inner run (the testbed's), with at most
    /// `tests` tests and `parallel` at once there.
    pub(super) fn args(&self, tests: usize, parallel: usize) -> Vec<String> {
        let capped = self.capped(tests, parallel);
        let sweep: Vec<String> = capped.sweep().iter().map(|p| p.to_string()).collect();
        vec![
            "--tests".into(),
            capped.tests.to_string(),
            "--parallel".into(),
            sweep.join(","),
            "--pg-image".into(),
            self.pg_image.clone(),
            "--vm-memory".into(),
            self.vm_memory.to_string(),
        ]
    }

    /// These options with at most `tests` tests and `parallel` at once.
    pub(super) fn capped(&self, tests: usize, parallel: usize) -> PristineArgs {
        PristineArgs {
            tests: self.tests.min(tests),
            parallel: self.parallel.iter().map(|p| (*p).min(parallel)).collect(),
            ..self.clone()
        }
    }

    /// The values of P to measure: each once, in the order given, none
    /// above the number of tests (a P of 0 is refused by [`check`]).
    ///
    /// [`check`]: PristineArgs::check
    pub(super) fn sweep(&self) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        for p in &self.parallel {
            let p = (*p).clamp(1, self.tests.max(1));
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Refuses options no run can honour.
    pub(super) fn check(&self) -> Result<()> {
        if self.tests == 0 {
            bail!("--tests: at least 1");
        }
        if self.parallel.is_empty() || self.parallel.contains(&0) {
            bail!("--parallel: one or more counts of at least 1 (e.g. 4, or 1,2,4)");
        }
        Ok(())
    }

    /// A per-test strategy's row label: with P in it when several are measured.
    fn label(&self, s: Strategy, parallel: usize) -> String {
        if s == Strategy::SharedReset || self.sweep().len() < 2 {
            s.describe().to_string()
        } else {
            format!("{}, {parallel} at a time", s.describe())
        }
    }
}

pub(super) fn say_pristine(r: &PristineResult) {
    eprintln!(
        "  pristine-db {:<46} {}",
        r.label,
        row_summary(&r.status, || {
            format!(
            "{}/{} passed, suite {:.2} s, ready p50 {:.0} ms p99 {:.0} ms, peak {:.0} MiB, {:.1} MiB/instance, {:.1} MiB written{}",
            r.passed,
            r.tests,
            r.suite_s,
            r.ready_p50_ms,
            r.ready_p99_ms,
            r.peak_mem_mib,
            r.pss_mib,
            r.disk_mib,
            r.reset_p50_ms
                .map(|m| format!(", reset p50 {m:.0} ms"))
                .unwrap_or_default()
                + &r.test_p50_ms
                    .map(|m| format!(", test p50 {m:.0} ms"))
                    .unwrap_or_default()
                + &r.removal_p50_ms
                    .map(|m| format!(", removal p50 {m:.0} ms"))
                    .unwrap_or_default()
                + &r.template_s
                    .map(|t| format!(", template {t:.1} s"))
                    .unwrap_or_default()
        )
        })
    );
}

/// How long one instance may take to accept connections (a guest boots first).
const READY: Duration = Duration::from_secs(180);

/// The strategies of `isolations`, in the order they run.
fn strategies(isolations: &[Isolation]) -> Vec<Strategy> {
    let mut v = Vec::new();
    if isolations.contains(&Isolation::Container) {
        v.extend([Strategy::SharedReset, Strategy::Container]);
    }
    if isolations.contains(&Isolation::Vm) {
        v.extend([Strategy::Vm, Strategy::VmClone]);
    }
    v
}

/// Rows saying why `isolations`' strategies were not measured.
pub(super) fn unavailable_rows(
    a: &PristineArgs,
    isolations: &[Isolation],
    why: &str,
) -> Vec<PristineResult> {
    let mut rows = Vec::new();
    for s in strategies(isolations) {
        let sweep = if s == Strategy::SharedReset {
            vec![1]
        } else {
            a.sweep()
        };
        for p in sweep {
            rows.push(PristineResult::unavailable(
                &a.label(s, p),
                s,
                a.tests,
                p,
                why,
            ));
        }
    }
    rows
}

impl Bench {
    /// The rows of the strategies of `native`.
    pub(super) fn pristine(&mut self, a: &PristineArgs, native: &[Isolation]) -> Result<()> {
        if native.is_empty() {
            return Ok(());
        }
        let rows = match self.pristine_rows(a, native) {
            Ok(rows) => rows,
            Err(e) => unavailable_rows(a, native, &crate::cmd::error_chain(&e)),
        };
        for r in rows {
            say_pristine(&r);
            self.report.pristine.push(r);
        }
        Ok(())
    }

    fn pristine_rows(&self, a: &PristineArgs, native: &[Isolation]) -> Result<Vec<PristineResult>> {
        let lender = &self.image.store;
        if !lender.contains(&a.pg_image) {
            bail!(
                "no image `{}` in {}: images/postgres/build.sh makes it",
                a.pg_image,
                lender.root().display()
            );
        }
        let root = Scratch::new(lender, "pg")?;
        ImageStore::open(root.path())?
            .borrow_image(lender, &a.pg_image)
            .with_context(|| format!("lending `{}` to the bench's state root", a.pg_image))?;
        let exe = self.exe.clone();
        let a = a.clone();
        std::thread::scope(|s| {
            s.spawn(|| in_own_netns(&exe, root.path(), &a, native))
                .join()
                .unwrap_or_else(|_| Err("the pristine-db bench thread panicked".into()))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// What every instance start needs.
struct Ctx<'a> {
    exe: &'a Path,
    root: &'a Path,
    a: &'a PristineArgs,
    /// The template's snapshot, for [`Strategy::VmClone`].
    snapshot: Option<PathBuf>,
}

impl Ctx<'_> {
    fn duet(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new(self.exe)
            .args(args)
            .env("DUET_ROOT", self.root)
            .stdin(std::process::Stdio::null())
            .output()
    }

    /// `duet run -d` of the image as `strategy` wants it; the instance is
    /// removed when the returned handle goes.
    fn start(&self, strategy: Strategy) -> Result<Started<'_>, String> {
        let mem = self.a.vm_memory.to_string();
        let snap = self.snapshot.as_deref().map(Path::to_string_lossy);
        let args: Vec<&str> = match (strategy, &snap) {
            // A clone is on the bridge as its template was, with its own address.
            (Strategy::VmClone, Some(f)) => vec!["run", "-d", "--from-snapshot", f],
            (Strategy::VmClone, None) => return Err("no template snapshot was taken".into()),
            (Strategy::Vm, _) => vec![
                "run",
                "-d",
                "--network",
                "bridge",
                "--isolation",
                "vm",
                "--memory",
                &mem,
                &self.a.pg_image,
            ],
            (Strategy::SharedReset | Strategy::Container, _) => vec![
                "run",
                "-d",
                "--network",
                "bridge",
                "--isolation",
                "container",
                &self.a.pg_image,
            ],
        };
        let out = self
            .duet(&args)
            .map_err(|e| format!("{}: {e}", self.exe.display()))?;
        if !out.status.success() {
            return Err(format!("duet run -d: {}", startup::tail(&out.stderr)));
        }
        let mut started = Started {
            ctx: self,
            id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            dir: None,
            addr: None,
        };
        let dir = InstanceDir::open(self.root, &started.id)
            .map_err(|e| format!("instance {}: {e}", started.id))?;
        started.addr = Some(
            crate::network::recorded(dir.path())
                .map(|n| SocketAddr::new(IpAddr::V4(n.address), pristine::PORT))
                .ok_or_else(|| format!("instance {} has no address on the bridge", started.id))?,
        );
        started.dir = Some(dir);
        Ok(started)
    }
}

/// A started instance: removed (`duet rm -f`) on drop.
struct Started<'a> {
    ctx: &'a Ctx<'a>,
    id: String,
    dir: Option<InstanceDir>,
    addr: Option<SocketAddr>,
}

impl Started<'_> {
    fn addr(&self) -> SocketAddr {
        self.addr.expect("set by Ctx::start")
    }

    fn dir(&self) -> &InstanceDir {
        self.dir.as_ref().expect("set by Ctx::start")
    }

    /// PSS of the monitor's process tree (it holds the container's
    /// processes, or the VMM), KiB.
    fn pss_kib(&self) -> u64 {
        tree_memory(&[self.dir().meta().owner_pid as u32])
            .total
            .pss_kib
    }

    /// Allocated bytes of its writable layer: a container's upper
    /// directory, a VM's scratch disk (its fresh ext4's metadata included).
    fn disk_bytes(&self) -> u64 {
        let p = self.dir().path();
        let layer = match std::fs::symlink_metadata(p.join(duet_vmm::disks::SCRATCH_FILE)) {
            Ok(_) => p.join(duet_vmm::disks::SCRATCH_FILE),
            Err(_) => p.join("upper"),
        };
        usage_bytes_one_fs(&[&layer]).unwrap_or(0)
    }

    /// Its sample once its tests are done: its writable layer measured,
    /// then the instance removed, the removal timed.
    fn finish(self, ready: Duration, pss_kib: u64, tests: Vec<Duration>) -> InstanceSample {
        let disk_bytes = self.disk_bytes();
        let t = Instant::now();
        drop(self);
        InstanceSample {
            ready,
            pss_kib,
            disk_bytes,
            tests,
            removal: t.elapsed(),
        }
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        let _ = self.ctx.duet(&["rm", "-f", &self.id]);
    }
}

/// Runs on a thread that has left the host's network namespace: everything
/// it starts is born in the new one, which ends with the thread.
fn in_own_netns(
    exe: &Path,
    root: &Path,
    a: &PristineArgs,
    isolations: &[Isolation],
) -> Result<Vec<PristineResult>, String> {
    super::network::leave_host_netns()?;
    let ctx = Ctx {
        exe,
        root,
        a,
        snapshot: None,
    };
    let mut rows = Vec::new();
    for s in strategies(isolations) {
        if interrupt::requested() {
            break;
        }
        if s == Strategy::SharedReset {
            rows.push(shared_reset(&ctx));
            continue;
        }
        for p in a.sweep() {
            if interrupt::requested() {
                break;
            }
            rows.push(match s {
                Strategy::VmClone => clones(&ctx, p),
                _ => per_test(&ctx, s, p, Instant::now(), None),
            });
        }
    }
    Ok(rows)
}

fn stop_requested() -> bool {
    interrupt::requested()
}

/// Strategy 1: one server, every test after the other, a reset after each.
fn shared_reset(ctx: &Ctx) -> PristineResult {
    let (tests, label) = (ctx.a.tests, Strategy::SharedReset.describe());
    let fail = |why: String| PristineResult::failed(label, Strategy::SharedReset, tests, 1, why);
    let peak = pristine::PeakMemory::start();
    let t0 = Instant::now();
    let inst = match ctx.start(Strategy::SharedReset) {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    let ready = match pristine::wait_ready(inst.addr(), t0, READY, &stop_requested) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let pss_kib = inst.pss_kib();
    let mut outcomes = Vec::with_capacity(tests);
    let mut resets = Vec::with_capacity(tests);
    let mut times = Vec::with_capacity(tests);
    for n in 0..tests {
        if interrupt::requested() {
            return fail("interrupted".into());
        }
        let t = Instant::now();
        outcomes.push(pristine::run_test(inst.addr(), n));
        times.push(t.elapsed());
        let r0 = Instant::now();
        if let Err(e) = pristine::reset(inst.addr()) {
            return fail(e);
        }
        resets.push(r0.elapsed());
    }
    let sample = inst.finish(ready, pss_kib, times);
    let suite = t0.elapsed();
    PristineResult::from_suite(
        label,
        Strategy::SharedReset,
        1,
        suite,
        &[sample],
        &resets,
        peak.stop(),
        &outcomes,
    )
}

/// One instance's life in a per-test strategy: start, ready, test, measure, remove.
fn one_instance(ctx: &Ctx, s: Strategy, n: usize) -> (Option<InstanceSample>, Result<(), String>) {
    let t0 = Instant::now();
    let inst = match ctx.start(s) {
        Ok(i) => i,
        Err(e) => return (None, Err(format!("test-{n}: {e}"))),
    };
    let ready = match pristine::wait_ready(inst.addr(), t0, READY, &stop_requested) {
        Ok(d) => d,
        Err(e) => return (None, Err(format!("test-{n} ({}): {e}", inst.id))),
    };
    let pss_kib = inst.pss_kib();
    let t = Instant::now();
    let outcome = pristine::run_test(inst.addr(), n);
    let sample = inst.finish(ready, pss_kib, vec![t.elapsed()]);
    (Some(sample), outcome)
}

/// How long `duet snapshot` of the template may keep being refused for a
/// vsock connection still open (a probe the guest has not torn down yet).
const SNAPSHOT_RETRY: Duration = Duration::from_secs(10);

/// Strategy 4: the template booted to accepting connections, snapshotted
/// and removed; then a clone of it per test, P at a time. Each P gets its
/// own template, so every row's suite time and peak memory include one.
fn clones(ctx: &Ctx, parallel: usize) -> PristineResult {
    let s = Strategy::VmClone;
    let tests = ctx.a.tests;
    let fail =
        |why: String| PristineResult::failed(&ctx.a.label(s, parallel), s, tests, parallel, why);
    let peak = pristine::PeakMemory::start();
    let t0 = Instant::now();
    let snap = ctx
        .root
        .join(format!("pg-template-{}.snap", std::process::id()));
    // The snapshot goes with the row, however it ends.
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _remove = Remove(&snap);
    {
        let template = match ctx.start(Strategy::Vm) {
            Ok(t) => t,
            Err(e) => return fail(format!("the template: {e}")),
        };
        if let Err(e) = pristine::wait_ready(template.addr(), t0, READY, &stop_requested) {
            return fail(format!("the template ({}): {e}", template.id));
        }
        let f = snap.to_string_lossy();
        let deadline = Instant::now() + SNAPSHOT_RETRY;
        loop {
            let out = match ctx.duet(&["snapshot", &template.id, &f]) {
                Ok(o) => o,
                Err(e) => return fail(format!("duet snapshot: {e}")),
            };
            if out.status.success() {
                break;
            }
            let why = startup::tail(&out.stderr);
            if !(why.contains("vsock") && Instant::now() < deadline) {
                return fail(format!("duet snapshot of the template: {why}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let template_s = t0.elapsed().as_secs_f64();
    let clone_ctx = Ctx {
        snapshot: Some(snap.clone()),
        ..*ctx
    };
    let mut row = per_test(&clone_ctx, s, parallel, t0, Some(peak));
    row.template_s = Some(template_s);
    row
}

/// Strategies 2 to 4: an instance per test, P at a time. The suite's time
/// and peak memory count from `t0` and `peak` (the clones': from before
/// their template).
fn per_test(
    ctx: &Ctx,
    s: Strategy,
    parallel: usize,
    t0: Instant,
    peak: Option<pristine::PeakMemory>,
) -> PristineResult {
    let (tests, label) = (ctx.a.tests, ctx.a.label(s, parallel));
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::with_capacity(tests));
    let peak = peak.unwrap_or_else(pristine::PeakMemory::start);
    std::thread::scope(|sc| {
        for _ in 0..parallel {
            sc.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= tests || interrupt::requested() {
                    break;
                }
                let r = one_instance(ctx, s, n);
                done.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            });
        }
    });
    let suite = t0.elapsed();
    let peak = peak.stop();
    if interrupt::requested() {
        return PristineResult::failed(&label, s, tests, parallel, "interrupted".into());
    }
    let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    let samples: Vec<InstanceSample> = done.iter().filter_map(|(s, _)| s.clone()).collect();
    let outcomes: Vec<Result<(), String>> = done.into_iter().map(|(_, o)| o).collect();
    PristineResult::from_suite(&label, s, parallel, suite, &samples, &[], peak, &outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(tests: usize, parallel: &[usize]) -> PristineArgs {
        PristineArgs {
            tests,
            parallel: parallel.to_vec(),
            pg_image: "pg".into(),
            vm_memory: 256,
        }
    }

    #[test]
    fn the_sweep_keeps_each_p_once_and_none_above_the_tests() {
        assert_eq!(args(50, &[4]).sweep(), [4]);
        assert_eq!(args(50, &[1, 2, 2, 4]).sweep(), [1, 2, 4]);
        assert_eq!(args(3, &[1, 4, 8]).sweep(), [1, 3]);
        assert!(args(4, &[0]).check().is_err());
        assert!(args(4, &[]).check().is_err());
        assert!(args(0, &[1]).check().is_err());
        assert!(args(4, &[1, 2]).check().is_ok());
    }

    #[test]
    fn labels_name_p_only_when_several_are_measured() {
        let one = args(50, &[4]);
        assert_eq!(
            one.label(Strategy::Vm, 4),
            "one cold-booted microVM per test"
        );
        let sweep = args(50, &[1, 4]);
        assert_eq!(
            sweep.label(Strategy::Container, 4),
            "one container per test, 4 at a time"
        );
        assert_eq!(
            sweep.label(Strategy::SharedReset, 1),
            "one shared server, reset between tests"
        );
    }

    #[test]
    fn the_testbed_gets_the_sweep_capped_to_its_own_limits() {
        let a = args(50, &[1, 2, 4]);
        let inner = a.args(4, 2);
        let at = |flag: &str| inner[inner.iter().position(|x| x == flag).unwrap() + 1].clone();
        assert_eq!(at("--tests"), "4");
        assert_eq!(at("--parallel"), "1,2");
    }
}
