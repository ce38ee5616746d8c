//! The QEMU microvm peer row of `duet bench startup`, through the real
//! binary: measured where duet's VM rows are (hardware KVM natively, else
//! the nested-KVM testbed, which makes this test take a minute or two), or
//! a row saying why not. Either way the row must be there.

mod common;
use common::*;
use duet_bench::report::Report;
use duet_bench::startup::RowStatus;
use duet_bench::Kind;

#[test]
fn bench_startup_has_a_qemu_microvm_row_with_samples_or_a_reason() {
    let test = "bench_startup_has_a_qemu_microvm_row_with_samples_or_a_reason";
    if skip_unless_root(test) {
        return;
    }
    let env = Env::new();
    let out = env.run(&[
        "bench",
        "startup",
        "--isolation",
        "vm",
        "--runs",
        "2",
        "--testbed-runs",
        "2",
        "--report-json",
        "-",
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let r: Report = serde_json::from_str(&stdout(&out)).expect("only JSON on stdout");
    let row = |prefix: &str| {
        r.startup
            .iter()
            .find(|s| s.label.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` row: {:?}\n{err}", r.startup))
    };
    let qemu = row("qemu microvm");
    let duet = row("duet vm");
    assert_eq!(qemu.kind, Kind::Vm);
    // Measured in the same place as duet's VM row: both in the testbed or both not.
    assert_eq!(
        qemu.label.ends_with(" (testbed)"),
        duet.label.ends_with(" (testbed)"),
        "{} / {}",
        qemu.label,
        duet.label
    );
    println!("{}: {:?} {:?}", qemu.label, qemu.status, qemu.samples_ms);
    match &qemu.status {
        RowStatus::Measured => {
            assert_eq!(qemu.samples_ms.len(), 2, "{qemu:?}");
            let w = qemu.wall_ms.expect("measured rows have a summary");
            assert!(
                w.min > 0.0 && w.min <= w.median && w.median <= w.max,
                "{w:?}"
            );
            assert!(
                r.notes
                    .iter()
                    .any(|n| n.contains("-M microvm") && n.contains("initrd.cpio")),
                "no note on how QEMU was measured: {:?}",
                r.notes
            );
        }
        RowStatus::Unavailable(why) | RowStatus::Failed(why) => {
            assert!(!why.trim().is_empty(), "{qemu:?}");
            assert!(qemu.samples_ms.is_empty() || matches!(qemu.status, RowStatus::Failed(_)));
            // Where duet's VM row was measured, QEMU on the same kernel must run too.
            assert_ne!(
                duet.status,
                RowStatus::Measured,
                "duet vm measured but QEMU not: {why}\n{err}"
            );
        }
    }
    // The kept instance that gave QEMU its initramfs is gone.
    assert_eq!(env.instances(), Vec::<String>::new());
}

/// Where VMs cannot run at all (no accelerated KVM, no testbed), the row is
/// still there, with the reason.
#[test]
fn qemu_row_says_why_when_vms_cannot_run() {
    let test = "qemu_row_says_why_when_vms_cannot_run";
    if skip_unless_root(test) {
        return;
    }
    let env = Env::new();
    let out = env
        .cmd(&[
            "bench",
            "startup",
            "--isolation",
            "vm",
            "--vm-via",
            "testbed",
            "--runs",
            "2",
            "--report-json",
            "-",
        ])
        .env("DUET_TESTBED_RUN", "/nonexistent/tests/testbed/run")
        .output()
        .expect("spawn duet");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let r: Report = serde_json::from_str(&stdout(&out)).expect("only JSON on stdout");
    let qemu = r
        .startup
        .iter()
        .find(|s| s.label.starts_with("qemu microvm"))
        .unwrap_or_else(|| panic!("no qemu row: {:?}\n{err}", r.startup));
    match &qemu.status {
        RowStatus::Unavailable(why) => {
            assert!(why.contains("testbed cannot run either"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert!(qemu.samples_ms.is_empty());
}
