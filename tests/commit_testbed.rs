//! The same image under both isolations (issue 4): `duet commit` of a kept
//! instance's writable layer, made in a VM (scratch disk) or a container
//! (overlay upper dir), runs under the other isolation. VMs need the
//! nested-KVM testbed on hosts like ours, so all cases run there.

mod common;
use common::testbed::{case, Case};
use std::collections::BTreeMap;
use std::sync::OnceLock;

static CASES: OnceLock<Result<BTreeMap<String, Case>, String>> = OnceLock::new();
const SCRIPT: &str = "commit-cases.sh";

fn get(test: &str, name: &str) -> Option<&'static Case> {
    case(test, &CASES, SCRIPT, name)
}

fn committed_bytes(c: &Case) -> u64 {
    // "imgvm: 2 layers, new layer sha256:0123456789ab (NNN bytes)"
    let open = c.output.rfind('(').expect("commit prints the layer size");
    c.output[open + 1..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn vm_changes_committed_run_in_a_container() {
    let Some(w) = get("vm_changes_committed_run_in_a_container", "vm_write") else {
        return;
    };
    assert_eq!(w.rc, 0, "{}", w.output);
    let c = get("", "vm_commit").unwrap();
    assert_eq!(c.rc, 0, "{}", c.output);
    // Only the change: the 200 kB blob, a small file, a whiteout, plus tar headers.
    let bytes = committed_bytes(c);
    assert!(
        (200_000..240_000).contains(&bytes),
        "committed layer {bytes} bytes:\n{}",
        c.output
    );
    let r = get("", "vm_to_container").unwrap();
    assert_eq!(
        (r.rc, r.output.as_str()),
        (0, "written-in-vm\nno-passwd\n200000\n")
    );
    let v = get("", "vm_to_vm").unwrap();
    assert_eq!((v.rc, v.output.as_str()), (0, "written-in-vm\nno-passwd\n"));
}

#[test]
fn container_changes_committed_run_in_a_vm() {
    let Some(w) = get("container_changes_committed_run_in_a_vm", "ct_write") else {
        return;
    };
    assert_eq!(w.rc, 0, "{}", w.output);
    let c = get("", "ct_commit").unwrap();
    assert_eq!(c.rc, 0, "{}", c.output);
    let r = get("", "ct_to_vm").unwrap();
    assert_eq!(
        (r.rc, r.output.as_str()),
        (0, "written-in-container\nno-vi\n")
    );
}

#[test]
fn base_image_untouched_and_nothing_left() {
    let Some(b) = get("base_image_untouched_and_nothing_left", "base_vm") else {
        return;
    };
    assert_eq!((b.rc, b.output.as_str()), (0, "no-note\npasswd\n"));
    let c = get("", "cleanup").unwrap();
    assert_eq!((c.rc, c.output.trim()), (0, "0"));
}
