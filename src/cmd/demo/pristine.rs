//! `duet demo --scenario pristine-db`: the classic answer's own test case,
//! for teaching. Five tests that each need a pristine PostgreSQL, provided
//! the four ways `duet bench pristine-db` measures (one shared server reset
//! between tests, a container per test, a cold microVM per test, a microVM
//! clone of a snapshot per test), run by that bench at a small scale and
//! shown as a table with a one-line reading per way. With `--explain`
//! each way is told before it runs, and what the numbers say after.
//!
//! The bench does the work (and the isolation checks: a test that sees
//! another's rows fails it); this module only chooses the scale, narrates
//! and shows the result, so the demo and the benchmark cannot drift apart.

use super::{term_width, wrap, Narrator};
use crate::cmd::bench::VmVia;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use duet_bench::pristine::{reading, PristineResult, Strategy, DEFAULT_IMAGE};
use duet_bench::startup::RowStatus;
use duet_shared::image::ImageStore;
use std::process::{Command, Stdio};

/// Tests per way: enough to see a pattern, few enough to watch.
const TESTS: usize = 5;
/// Instances at once in the per-test ways.
const PARALLEL: usize = 2;

/// What each way is, in plain words.
fn story(s: Strategy) -> &'static str {
    match s {
        Strategy::SharedReset => {
            "The classic way: one PostgreSQL for the whole suite. The tests run one after \
             another, and after each the database is dropped and made again from its seed \
             template, so the next test finds it pristine. Cheap in memory, but serial: the \
             suite takes N times (test + reset)."
        }
        Strategy::Container => {
            "One container per test, 2 at a time: each starts PostgreSQL from the same image \
             layers (shared, read-only, in the page cache once) with its own writable layer, \
             so its database files start as the image's bytes and its writes stay its own. \
             This is the answer's claim: a pristine copy per test, in parallel, cheaply."
        }
        Strategy::Vm => {
            "One cold-booted microVM per test, 2 at a time: the same image as disks, but each \
             instance boots its own Linux kernel first, then starts PostgreSQL. Isolation is \
             stronger (another kernel); the price is the boot and a guest's own memory."
        }
        Strategy::VmClone => {
            "One microVM clone per test, 2 at a time: a template VM is booted once until \
             PostgreSQL accepts connections, snapshotted, and removed; each test then gets a \
             clone restored from that snapshot (its RAM mapped copy-on-write, its own copy of \
             the disk, and its own MAC and address on duet's bridge). No boot, no PostgreSQL \
             start: the clone goes on where the template was."
        }
    }
}

fn vm_via_arg(v: VmVia) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_else(|| "auto".into())
}

/// Runs the scenario; fails if any way failed (a test saw what it must not).
pub(super) fn demo(args: &super::DemoArgs, n: &Narrator) -> Result<()> {
    let root = duet_shared::paths::state_root();
    let store = ImageStore::open(&root)?;
    if !store.contains(DEFAULT_IMAGE) {
        bail!(
            "no image `{DEFAULT_IMAGE}` in {}: `images/postgres/build.sh` in duet's source tree \
             makes it (Debian bookworm with PostgreSQL 15 and a seeded database, ~210 MB)",
            root.display()
        );
    }
    n.step("the question: why containers for testing?");
    n.say(
        "The classic answer: thousands of tests that each need a pristine copy of a database \
         can each get one, started in parallel from the same image, instead of resetting one \
         shared database between tests, \"and try doing that with a full VM\". Here are 5 \
         tests, each of which checks that it sees exactly the seed data plus its own writes \
         and nothing of any other test, run four ways on this machine.",
    );
    for s in [
        Strategy::SharedReset,
        Strategy::Container,
        Strategy::Vm,
        Strategy::VmClone,
    ] {
        n.step(s.describe());
        n.say(story(s));
    }
    n.step(&format!(
        "running the {TESTS} tests each way (duet bench pristine-db --tests {TESTS} --parallel {PARALLEL})"
    ));
    let exe = std::env::current_exe().context("finding duet's own binary")?;
    let out = Command::new(&exe)
        .args([
            "bench",
            "pristine-db",
            "--tests",
            &TESTS.to_string(),
            "--parallel",
            &PARALLEL.to_string(),
            "--vm-via",
            &vm_via_arg(args.vm_via),
            "--report-json",
            "-",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} bench pristine-db", exe.display()))?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .context("reading the bench's report (it printed no JSON)")?;
    let rows: Vec<PristineResult> = serde_json::from_value(report["pristine"].clone())
        .context("the bench's report has no pristine-db rows")?;
    show(&rows);
    if args.explain {
        conclude(n, &rows);
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| matches!(r.status, RowStatus::Failed(_)))
        .map(|r| r.label.as_str())
        .collect();
    if !failed.is_empty() || !out.status.success() {
        bail!(
            "the pristine-db demo failed: {}",
            if failed.is_empty() {
                "see the bench's messages above".to_string()
            } else {
                failed.join(", ")
            }
        );
    }
    Ok(())
}

/// The table: one line per way, then its reading.
fn show(rows: &[PristineResult]) {
    let w = term_width();
    println!();
    println!(
        "{:<50} {:>7} {:>9} {:>11} {:>9}",
        "a pristine database per test", "passed", "suite", "ready p50", "memory"
    );
    println!("{}", "-".repeat(w.min(90)));
    for r in rows {
        match &r.status {
            RowStatus::Measured => println!(
                "{:<50} {:>7} {:>7.2} s {:>8.0} ms {:>5.1} MiB",
                r.label,
                format!("{}/{}", r.passed, r.tests),
                r.suite_s,
                r.ready_p50_ms,
                r.pss_mib
            ),
            RowStatus::Unavailable(why) if why.starts_with("not run") => {
                println!("{:<50} {why}", r.label)
            }
            RowStatus::Unavailable(why) => println!("{:<50} not run: {why}", r.label),
            RowStatus::Failed(why) => println!("{:<50} FAILED: {why}", r.label),
        }
        let rd = reading(r, rows);
        for l in wrap(&rd, w.saturating_sub(4).max(40)) {
            println!("    {l}");
        }
    }
    println!(
        "\n(memory: PSS of one instance, the shared server's for the classic way; ready: start \
         to accepting connections)"
    );
}

/// What the numbers say, in words.
fn conclude(n: &Narrator, rows: &[PristineResult]) {
    let get = |s: Strategy| {
        rows.iter()
            .find(|r| r.strategy == s && r.status == RowStatus::Measured)
    };
    n.step("what this run says");
    if let (Some(shared), Some(ct)) = (get(Strategy::SharedReset), get(Strategy::Container)) {
        n.say(&format!(
            "A container per test took {:.2}x the shared server's suite. The claim is about \
             scale: with {TESTS} tests and {PARALLEL} at a time, a reset ({:.0} ms here) is \
             cheap; with thousands of tests and many cores the parallel way wins by the \
             number of tests running at once, and no test can leave anything for the next.",
            ct.suite_s / shared.suite_s.max(0.001),
            shared.reset_p50_ms.unwrap_or(0.0)
        ));
    }
    if let (Some(vm), Some(ct)) = (get(Strategy::Vm), get(Strategy::Container)) {
        n.say(&format!(
            "A cold microVM per test was ready {:.1}x later than a container and used {:.1}x \
             its memory: the guest kernel boots first and keeps its own page cache.",
            vm.ready_p50_ms / ct.ready_p50_ms.max(0.001),
            vm.pss_mib / ct.pss_mib.max(0.001)
        ));
    }
    if let Some(cl) = get(Strategy::VmClone) {
        let vs = get(Strategy::Vm)
            .map(|vm| {
                format!(
                    ", {:.2}x a cold microVM's",
                    cl.ready_p50_ms / vm.ready_p50_ms.max(0.001)
                )
            })
            .unwrap_or_default();
        n.say(&format!(
            "A clone of a snapshot was ready in {:.0} ms{vs}: \"try doing that with a full VM\" \
             has another answer once the VM does not boot. The template cost {:.1} s once.",
            cl.ready_p50_ms,
            cl.template_s.unwrap_or(0.0)
        ));
    }
}
