//! `duet bench pristine-db` with microVMs: one testbed boot (the bench
//! starts it: the image goes in as a `duet image save` archive), 4 tests,
//! 2 at a time, as cold-booted VMs and as clones of a snapshot of a ready
//! server, next to the container strategies in the same emulated machine.

mod common;

use common::duet_bin;
use common::pristine::{store, IMAGE};
use std::process::{Command, Stdio};

#[test]
fn each_test_gets_a_pristine_database_in_its_own_microvm() {
    let test = "each_test_gets_a_pristine_database_in_its_own_microvm";
    if let Some(why) = common::testbed::missing() {
        common::skip(test, &why);
        return;
    }
    let Some(root) = store(test) else {
        return;
    };
    let out = common::output_within(
        Command::new(duet_bin())
            .args([
                "bench",
                "pristine-db",
                "--isolation",
                "vm",
                "--vm-via",
                "testbed",
                "--tests",
                "4",
                "--parallel",
                "2",
                "--pg-image",
                IMAGE,
                "--report-json",
                "-",
            ])
            .env("DUET_ROOT", root)
            .stdin(Stdio::null()),
        std::time::Duration::from_secs(30 * 60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["pristine"].as_array().unwrap();
    let by = |s: &str| {
        rows.iter()
            .find(|r| r["strategy"] == s)
            .unwrap_or_else(|| panic!("no {s} row: {err}"))
    };
    // Where each row's time went, for the log.
    for s in ["container", "vm", "vm-clone"] {
        let r = by(s);
        let f = |k: &str| r[k].as_f64().unwrap_or(-1.0);
        println!(
            "{}: suite {:.1} s, ready p50 {:.0} ms, test p50 {:.0} ms, removal p50 {:.0} ms, template {:.1} s",
            r["label"],
            f("suite_s"),
            f("ready_p50_ms"),
            f("test_p50_ms"),
            f("removal_p50_ms"),
            f("template_s")
        );
    }
    let vm = by("vm");
    assert_eq!(vm["status"]["state"], "measured", "{vm}");
    assert_eq!(
        (vm["tests"].as_u64(), vm["passed"].as_u64()),
        (Some(4), Some(4)),
        "{vm}"
    );
    assert!(vm["label"].as_str().unwrap().ends_with("(testbed)"), "{vm}");
    for f in [
        "ready_p50_ms",
        "pss_mib",
        "disk_mib",
        "suite_s",
        "test_p50_ms",
        "removal_p50_ms",
    ] {
        assert!(vm[f].as_f64().unwrap() > 0.0, "{f}: {vm}");
    }
    // A microVM's memory is its own guest's: more than a container's.
    let ct = by("container");
    assert_eq!(ct["status"]["state"], "measured", "{ct}");
    assert!(
        vm["pss_mib"].as_f64() > ct["pss_mib"].as_f64(),
        "{vm}\n{ct}"
    );
    // Clones of one snapshot: each on its own address, each passed (saw the
    // seed and only its own writes), the template's boot counted apart.
    let clone = by("vm-clone");
    assert_eq!(clone["status"]["state"], "measured", "{clone}");
    assert_eq!(
        (clone["tests"].as_u64(), clone["passed"].as_u64()),
        (Some(4), Some(4)),
        "{clone}"
    );
    for f in [
        "ready_p50_ms",
        "pss_mib",
        "disk_mib",
        "suite_s",
        "template_s",
        "test_p50_ms",
        "removal_p50_ms",
    ] {
        assert!(clone[f].as_f64().unwrap() > 0.0, "{f}: {clone}");
    }
    assert!(
        clone["template_s"].as_f64() < clone["suite_s"].as_f64(),
        "{clone}"
    );
}
