//! The QEMU microvm peer row of `duet bench startup`, through the real
//! binary: measured where duet's VM rows are (hardware KVM natively, else
//! the nested-KVM testbed, which makes this test take a minute or two), or
//! a row saying why not. Either way the row must be there; where duet's VM
//! rows were measured, they are checked too (phases, lifecycle, first run).

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
    let mut args = vec![
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
    ];
    // The Firecracker peer, where this checkout has the team's binary
    // (../shared/peers, see its README; never part of duet): measured like
    // QEMU. Without it the row must say how to get one.
    let fc = firecracker_peer();
    let fc_arg = fc.as_ref().map(|p| p.display().to_string());
    if let Some(p) = &fc_arg {
        args.extend(["--firecracker", p.as_str()]);
    }
    let out = env.run(&args);
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
    match &duet.status {
        RowStatus::Measured => vm_rows_are_phased_with_lifecycle_and_first_run(&r, duet, &err),
        RowStatus::Failed(why) => panic!("duet's VM row failed: {why}\n{err}"),
        // Strict (CI) runs must measure duet's VM rows, where the testbed is.
        RowStatus::Unavailable(why) => {
            skip(test, &format!("duet's VM rows were not measured: {why}"));
        }
    }
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
    let firecracker = row("firecracker");
    assert_eq!(firecracker.kind, Kind::Vm);
    assert_eq!(
        firecracker.label.ends_with(" (testbed)"),
        duet.label.ends_with(" (testbed)"),
        "{} / {}",
        firecracker.label,
        duet.label
    );
    println!(
        "{}: {:?} {:?}",
        firecracker.label, firecracker.status, firecracker.samples_ms
    );
    match (&firecracker.status, &fc) {
        (RowStatus::Measured, Some(_)) => {
            assert_eq!(firecracker.samples_ms.len(), 2, "{firecracker:?}");
            assert!(
                r.notes
                    .iter()
                    .any(|n| n.contains("--no-api --config-file") && n.contains("initrd.cpio")),
                "no note on how Firecracker was measured: {:?}",
                r.notes
            );
        }
        (RowStatus::Measured, None) => {} // a firecracker on PATH
        (RowStatus::Unavailable(why) | RowStatus::Failed(why), given) => {
            assert!(!why.trim().is_empty(), "{firecracker:?}");
            if given.is_none() && duet.status == RowStatus::Measured {
                assert!(why.contains("--firecracker PATH"), "{why}");
            } else {
                // Given a Firecracker, it must run where duet's VM row did.
                assert_ne!(
                    duet.status,
                    RowStatus::Measured,
                    "duet vm measured but Firecracker not: {why}\n{err}"
                );
            }
        }
    }
    // The kept instances that gave QEMU and Firecracker their initramfs are gone.
    assert_eq!(env.instances(), Vec::<String>::new());
}

/// The team's static Firecracker beside this checkout (../shared/peers).
fn firecracker_peer() -> Option<std::path::PathBuf> {
    let p = common::testbed::repo().join("../shared/peers/firecracker");
    p.is_file().then(|| std::fs::canonicalize(&p).unwrap_or(p))
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

/// duet's own VM rows from the same run (measured where QEMU's was, so
/// one testbed boot serves both tests): the startup phases, the lifecycle
/// rows of a microVM, and its first run from a registry.
fn vm_rows_are_phased_with_lifecycle_and_first_run(
    r: &Report,
    vm: &duet_bench::startup::StartupResult,
    err: &str,
) {
    let at = if vm.label.ends_with(" (testbed)") {
        let env_line = r.vm_environment.as_deref().unwrap_or_default();
        assert!(env_line.contains("nested-KVM testbed"), "{env_line}");
        " (testbed)"
    } else {
        ""
    };
    assert_eq!(vm.label, format!("duet vm{at}"));
    assert_eq!(vm.samples_ms.len(), 2, "{vm:?}");
    for phase in ["vm_created", "kernel_loaded", "vcpus_started", "ready"] {
        assert!(
            vm.segments.iter().any(|s| s.name == phase),
            "no {phase}: {:?}",
            vm.segments
        );
    }
    for label in [
        format!("duet run -d vm (to running){at}"),
        format!("duet exec vm (true){at}"),
    ] {
        let row = r
            .lifecycle
            .iter()
            .find(|s| s.label == label)
            .unwrap_or_else(|| panic!("no `{label}` row: {:?}\n{err}", r.lifecycle));
        assert_eq!(row.status, RowStatus::Measured, "{row:?}\n{err}");
        assert!(!row.samples_ms.is_empty(), "{row:?}");
    }
    // The first run of a microVM: its image pulled from a registry,
    // unpacked, its layer disks made, booted.
    let first = format!("duet vm first run (pull + unpack + start){at}");
    let row = r
        .startup
        .iter()
        .find(|s| s.label == first)
        .unwrap_or_else(|| panic!("no `{first}` row: {:?}\n{err}", r.startup));
    match &row.status {
        // A host without Debian's docker-registry has no registry to pull
        // from: a skip, which fails under DUET_TEST_STRICT (CI has one).
        RowStatus::Unavailable(why) if why.contains("docker-registry") => {
            skip(&duet_shared::testing::this_test(), why);
        }
        s => assert_eq!(*s, RowStatus::Measured, "{row:?}\n{err}"),
    }
    // No container was asked for: no native container row.
    assert!(!r.startup.iter().any(|s| s.label == "duet container"));
}
