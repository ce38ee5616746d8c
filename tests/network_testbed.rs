//! duet's bridge network with microVMs (issue 12): a tap on the bridge per
//! VM, the VMM's virtio-net device, eth0 configured by duet-init. VMs need
//! the nested-KVM testbed on hosts like ours, so the cases run there, in a
//! network namespace of the testbed's, once for the whole file.

mod common;
use common::testbed::{case_with, Case};
use std::collections::BTreeMap;
use std::sync::OnceLock;

static CASES: OnceLock<Result<BTreeMap<String, Case>, String>> = OnceLock::new();
const SCRIPT: &str = "network-cases.sh";

fn get(test: &str, name: &str) -> Option<&'static Case> {
    // nft and its libraries go into the testbed (the table of duet's bridge).
    let extra = ["--with-libs".to_string(), "/usr/sbin/nft".to_string()];
    case_with(test, &CASES, SCRIPT, name, &extra)
}

fn ok(name: &str) -> &'static Case {
    let c = get("", name).unwrap_or_else(|| panic!("case {name} missing"));
    assert_eq!(c.rc, 0, "{name}: {}", c.output);
    c
}

#[test]
fn a_server_in_a_vm_by_address_and_through_a_published_port() {
    let Some(up) = get(
        "a_server_in_a_vm_by_address_and_through_a_published_port",
        "vm_up",
    ) else {
        return;
    };
    assert_eq!(up.rc, 0, "{}", up.output);
    let ps = ok("ps");
    assert!(
        ps.output.contains("10.89.0.2 8080->80/tcp"),
        "{}",
        ps.output
    );
    let want = "hello-from-vmweb";
    assert!(ok("vm_by_address").output.contains(want));
    assert!(ok("vm_published").output.contains(want));
    let e = ok("vm_eth0");
    assert!(e.output.contains("inet 10.89.0.2/16"), "{}", e.output);
    assert!(e.output.contains("default via 10.89.0.1"), "{}", e.output);
    assert!(e.output.contains("nameserver"), "{}", e.output);
    assert!(e.output.contains("10.89.0.2\tvmweb"), "{}", e.output);
}

#[test]
fn a_container_and_a_vm_reach_each_other_by_address() {
    let Some(up) = get("a_container_and_a_vm_reach_each_other_by_address", "ct_up") else {
        return;
    };
    assert_eq!(up.rc, 0, "{}", up.output);
    assert!(ok("ct_to_vm").output.contains("hello-from-vmweb"));
    assert!(ok("vm_to_ct").output.contains("hello-from-ctweb"));
}

#[test]
fn nothing_is_left_after_rm_and_after_kill9_plus_gc() {
    let Some(rm) = get("nothing_is_left_after_rm_and_after_kill9_plus_gc", "rm") else {
        return;
    };
    assert_eq!(rm.rc, 0, "{}", rm.output);
    assert_eq!(
        ok("left_after_rm").output.trim(),
        "links=1 rules=0 leases=0"
    );
    assert_eq!(ok("vm_k9_up").rc, 0);
    assert_eq!(ok("vm_k9").output.trim(), "links=1 rules=0 leases=0");
}
