//! Snapshots of real Linux microVMs (issue 13): `duet snapshot` of a
//! running VM, `duet run --from-snapshot` clones that go on where it was
//! and keep their own writes, bad snapshots refused, nothing left after a
//! killed restore. VMs need the nested-KVM testbed on hosts like ours, so
//! the cases run there once for the whole file (tests/testbed/snapshot-cases.sh).

mod common;
use common::testbed::{case_with, Case};
use std::collections::BTreeMap;
use std::sync::OnceLock;

static CASES: OnceLock<Result<BTreeMap<String, Case>, String>> = OnceLock::new();
const SCRIPT: &str = "snapshot-cases.sh";

fn get(test: &str, name: &str) -> Option<&'static Case> {
    // nft for the one case on duet's bridge (a VM with a network device).
    let extra = ["--with-libs".to_string(), "/usr/sbin/nft".to_string()];
    case_with(test, &CASES, SCRIPT, name, &extra)
}

fn ok(name: &str) -> &'static Case {
    let c = get("", name).unwrap_or_else(|| panic!("case {name} missing"));
    assert_eq!(c.rc, 0, "{name}: {}", c.output);
    c
}

fn refused(name: &str, words: &[&str]) {
    let c = get("", name).unwrap_or_else(|| panic!("case {name} missing"));
    assert_eq!(
        c.rc, 125,
        "{name} must fail as duet's own error: {}",
        c.output
    );
    for w in words {
        assert!(c.output.contains(w), "{name}: no `{w}` in: {}", c.output);
    }
}

/// `first=N last=M snapshot=S` of a case.
fn counts(c: &Case) -> BTreeMap<String, u64> {
    c.output
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

#[test]
fn a_restored_vm_counts_on_from_its_snapshot_and_sees_its_files() {
    let Some(up) = get(
        "a_restored_vm_counts_on_from_its_snapshot_and_sees_its_files",
        "src_up",
    ) else {
        return;
    };
    assert_eq!(up.rc, 0, "{}", up.output);
    ok("src_counting");
    let s = ok("snapshot");
    assert!(s.output.contains("guest paused"), "{}", s.output);
    refused("snapshot_again_refused", &["exists"]);
    ok("src_goes_on");
    ok("a_up");
    let a = counts(ok("a_counting"));
    let (first, last, snap) = (a["first"], a["last"], a["snapshot"]);
    assert!(snap >= 5, "{a:?}");
    // The shell variable survived: the clone's first line continues the
    // count (a booted guest would start at 1).
    assert!(first > 1 && first + 2 >= snap, "{a:?}");
    assert!(last >= first, "{a:?}");
    assert_eq!(ok("a_file").output.trim(), "written-before-the-snapshot");
}

#[test]
fn clones_of_one_snapshot_keep_their_own_writes() {
    let Some(b) = get("clones_of_one_snapshot_keep_their_own_writes", "b_up") else {
        return;
    };
    assert_eq!(b.rc, 0, "{}", b.output);
    assert_eq!(ok("a_writes").output.trim(), "mine-is-a");
    ok("b_counting");
    let f = counts(ok("b_first"));
    assert!(f["first"] > 1, "{f:?}");
    let seen = ok("b_sees_not_a").output.clone();
    assert!(seen.contains("written-before-the-snapshot"), "{seen}");
    assert!(
        seen.contains("No such file"),
        "clone b sees clone a's file: {seen}"
    );
    assert_eq!(ok("a_still_has_its_own").output.trim(), "mine-is-a");
    ok("clones_rm");
}

#[test]
fn bad_snapshots_and_other_kernels_are_refused() {
    let Some(_) = get("bad_snapshots_and_other_kernels_are_refused", "corrupted") else {
        return;
    };
    refused("corrupted", &["/tmp/snap1", "checksum"]);
    refused("truncated", &["/tmp/snap1", "truncated"]);
    refused(
        "too_short",
        &["/etc/passwd", "too short to be a duet snapshot"],
    );
    refused("not_a_snapshot", &["vmlinux", "not a duet snapshot"]);
    refused(
        "other_kernel",
        &["another guest kernel", "/tmp/other-vmlinux"],
    );
    refused("no_overrides", &["--memory", "--from-snapshot"]);
    refused("container_refused", &["nosuch"]);
    // A refused restore leaves no instance behind.
    assert_eq!(ok("left_after_refusals").output.trim(), "instances=0");
}

#[test]
fn a_vm_with_a_network_device_is_not_snapshotted() {
    let Some(up) = get("a_vm_with_a_network_device_is_not_snapshotted", "net_up") else {
        return;
    };
    assert_eq!(up.rc, 0, "{}", up.output);
    refused("net_refused", &["network device", "--network none"]);
    assert_eq!(ok("net_nothing_written").output.trim(), "0");
    ok("net_rm");
}

#[test]
fn nothing_is_left_after_a_killed_restore_and_gc() {
    let Some(up) = get("nothing_is_left_after_a_killed_restore_and_gc", "k9_up") else {
        return;
    };
    assert_eq!(up.rc, 0, "{}", up.output);
    assert_eq!(ok("k9").output.trim(), "instances=0 procs=0 mounts=0");
}
