//! Containers on a pure cgroup v2 machine (most distributions), run inside
//! the testbed's outer Linux because this project's hosts are v1/v2 hybrids
//! (see /work/shared/notes/hosts.md): limits are enforced through v2 files.

mod common;
use common::testbed::{case, Case};
use std::collections::BTreeMap;
use std::sync::OnceLock;

static CASES: OnceLock<Result<BTreeMap<String, Case>, String>> = OnceLock::new();
const SCRIPT: &str = "cgroup2-cases.sh";

fn get(test: &str, name: &str) -> Option<&'static Case> {
    case(test, &CASES, SCRIPT, name)
}

#[test]
fn testbed_is_pure_cgroup2() {
    let Some(c) = get("testbed_is_pure_cgroup2", "layout") else {
        return;
    };
    assert!(c.output.contains("cgroup2 /sys/fs/cgroup"), "{}", c.output);
    assert!(
        !c.output.lines().any(|l| l.starts_with("cgroup ")),
        "v1 mounted:\n{}",
        c.output
    );
}

#[test]
fn v2_container_runs() {
    let Some(c) = get("v2_container_runs", "echo") else {
        return;
    };
    assert_eq!((c.rc, c.output.as_str()), (0, "hi\n"));
}

#[test]
fn v2_memory_limit_kills_with_137() {
    let Some(c) = get("v2_memory_limit_kills_with_137", "memory") else {
        return;
    };
    assert_eq!(c.rc, 137, "{}", c.output);
    let ok = get("v2_memory_limit_kills_with_137", "memory_ok").unwrap();
    assert_eq!(ok.rc, 0, "{}", ok.output);
}

#[test]
fn v2_pids_limit_stops_a_fork_bomb() {
    let Some(c) = get("v2_pids_limit_stops_a_fork_bomb", "pids") else {
        return;
    };
    assert!(!c.output.contains("spawned=100"), "{}", c.output);
    assert!(c.output.contains("fork"), "{}", c.output);
}

#[test]
fn v2_the_callers_limit_covers_the_container() {
    let Some(c) = get("v2_the_callers_limit_covers_the_container", "caller_limit") else {
        return;
    };
    assert!(c.output.contains("exit=137"), "{}", c.output);
    // Only the caller's own scope is left below its slice: no duet/, no instance.
    let dirs: Vec<&str> = c.output.lines().filter(|l| l.starts_with('/')).collect();
    assert_eq!(
        dirs,
        ["/sys/fs/cgroup/caller.slice/job.scope"],
        "{}",
        c.output
    );
}

/// `duet exec` joins the instance's (one, v2) cgroup and leaves it again.
#[test]
fn v2_exec_joins_the_instance_cgroup() {
    let Some(c) = get("v2_exec_joins_the_instance_cgroup", "exec") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert_eq!(
        c.output, "0::/\nv2exec\nprocs=2\nafter=1\n",
        "exec'd processes outside the instance cgroup, or left in it"
    );
}

#[test]
fn v2_no_cgroups_or_instances_left() {
    let Some(c) = get("v2_no_cgroups_or_instances_left", "leftovers") else {
        return;
    };
    assert_eq!(c.output, "0\n0\n");
}
