//! Docker with duet's microVM runtime: a private dockerd inside the
//! nested-KVM testbed (this host's /dev/kvm cannot boot Linux) with
//! `--runtime duet-vm` (duet-runc with runtimeArgs `--isolation vm`): each
//! container is a microVM whose root is the container's rootfs over
//! virtio-fs. One testbed boot runs tests/testbed/docker-vm-cases.sh; each
//! test below checks one case. dockerd, containerd, the runc v2 shim, runc
//! (dockerd insists on finding it) and the docker CLI are packed with their
//! libraries from the host's Debian packages.

mod common;
use common::testbed::{self, Case};
use duet_shared::testing::skip_unless_program;
use std::collections::BTreeMap;
use std::sync::OnceLock;

static CASES: OnceLock<Result<BTreeMap<String, Case>, String>> = OnceLock::new();
const SCRIPT: &str = "docker-vm-cases.sh";
const PROGRAMS: &[(&str, &str)] = &[
    ("dockerd", "docker.io"),
    ("docker", "docker.io"),
    ("containerd", "containerd"),
    ("containerd-shim-runc-v2", "containerd"),
    ("runc", "runc"),
    ("/usr/lib/qemu/virtiofsd", "qemu-system-common"),
    // `docker run -p` without iptables.
    ("docker-proxy", "docker.io"),
];

fn case(test: &str, name: &str) -> Option<&'static Case> {
    let mut extra = Vec::new();
    for (prog, pkg) in PROGRAMS {
        if skip_unless_program(test, prog, pkg) {
            return None;
        }
        extra.push("--with-libs".to_string());
        extra.push(
            duet_shared::testing::find_program(prog)
                .unwrap()
                .display()
                .to_string(),
        );
    }
    testbed::case_with(test, &CASES, SCRIPT, name, &extra)
}

fn ok(test: &str, name: &str) -> Option<&'static Case> {
    let up = case(test, "dockerd_up")?;
    assert_eq!(
        up.rc, 0,
        "the private dockerd did not start:\n{}",
        up.output
    );
    case(test, name)
}

#[test]
fn docker_vm_run_prints_and_passes_exit_codes() {
    let t = "docker_vm_run_prints_and_passes_exit_codes";
    let Some(c) = ok(t, "docker_vm_echo") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(c.output.contains("hi-from-a-microvm\n"), "{}", c.output);
    let c = case(t, "docker_vm_exit7").unwrap();
    assert_eq!(c.rc, 7, "{}", c.output);
    let c = case(t, "docker_vm_missing").unwrap();
    assert_eq!(c.rc, 127, "{}", c.output);
    assert!(c.output.contains("/no/such/program"), "{}", c.output);
}

#[test]
fn docker_vm_env_workdir_user_and_own_kernel() {
    let Some(c) = ok(
        "docker_vm_env_workdir_user_and_own_kernel",
        "docker_vm_env_user",
    ) else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(c.output.contains("hello 1000:1000 /root\n"), "{}", c.output);
    // The guest kernel duet builds, not the testbed's (Debian's cloud kernel).
    let guest = c.output.lines().last().unwrap_or_default();
    assert!(!guest.contains("cloud"), "{}", c.output);
}

#[test]
fn docker_vm_run_t_goes_through_the_console_socket() {
    let Some(c) = ok(
        "docker_vm_run_t_goes_through_the_console_socket",
        "docker_vm_tty",
    ) else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    // The guest's console is the workload's terminal, at the pty's size
    // (none here: the client has no terminal, so 24x80).
    for want in ["stdin-is-a-tty\n", "24 80\n", "through-a-pty\n"] {
        assert!(c.output.contains(want), "{want:?} in {:?}", c.output);
    }
}

#[test]
fn docker_vm_detached_logs_exec_diff_stop_rm() {
    let Some(c) = ok(
        "docker_vm_detached_logs_exec_diff_stop_rm",
        "docker_vm_detached",
    ) else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    for want in [
        "logs: detached-up\n",
        "exec: in-guest\n",
        "exec-rc 5\n",
        // dockerd sees the guest's write in the container's rootfs.
        "diff: 1\n",
        "stopped\nexit-code 0\nremoved\n",
    ] {
        assert!(c.output.contains(want), "missing {want:?}:\n{}", c.output);
    }
}

#[test]
fn docker_vm_kill_gives_137_and_leaves_nothing() {
    let t = "docker_vm_kill_gives_137_and_leaves_nothing";
    let Some(c) = ok(t, "docker_vm_kill") else {
        return;
    };
    assert!(
        c.output.contains("killed\nexit-code 137\nremoved\n"),
        "{}",
        c.output
    );
    let c = case(t, "docker_vm_leftovers").unwrap();
    assert!(
        c.output
            .ends_with("containers 0\nkeepers 0\nvirtiofsd 0\nvmms 0\n"),
        "{}",
        c.output
    );
}

#[test]
fn docker_vm_volumes_are_shared_and_ro_is_enforced() {
    let Some(c) = ok(
        "docker_vm_volumes_are_shared_and_ro_is_enforced",
        "docker_vm_volumes",
    ) else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(
        c.output
            .contains("from-the-host\nro-refused\nhost-sees: from-the-guest\n"),
        "{}",
        c.output
    );
}

#[test]
fn docker_vm_exec_runs_as_the_containers_user() {
    let Some(c) = ok(
        "docker_vm_exec_runs_as_the_containers_user",
        "docker_vm_exec_user",
    ) else {
        return;
    };
    assert!(
        c.output
            .contains("exec-ids: 1000:1000\nexec-root-ids: 0:0\nremoved\n"),
        "{}",
        c.output
    );
}

/// With Docker's bridge network the VM takes the address Docker gave the
/// container (duet_network::engine): reached by it and through `-p`.
#[test]
fn docker_vm_gets_the_containers_address_and_published_ports() {
    let t = "docker_vm_gets_the_containers_address_and_published_ports";
    let Some(up) = case(t, "dockerd_bridged_up") else {
        return;
    };
    assert_eq!(
        up.rc, 0,
        "the bridged dockerd did not start:\n{}",
        up.output
    );
    let c = case(t, "docker_vm_published").unwrap();
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(c.output.contains("docker-ip 172.17."), "{}", c.output);
    assert!(
        c.output.contains("by-address: vm-behind-docker"),
        "{}",
        c.output
    );
    assert!(
        c.output.contains("published: vm-behind-docker"),
        "{}",
        c.output
    );
    assert!(c.output.contains("guest-eth0: 1"), "{}", c.output);
    assert!(c.output.contains("removed"), "{}", c.output);
}

/// `--read-only` with an image that has no /run: the guest init cannot
/// make the mount point on the read-only root and goes without it (an
/// engine's pause image is such a root).
#[test]
fn docker_vm_read_only_root_without_run() {
    let t = "docker_vm_read_only_root_without_run";
    let Some(c) = ok(t, "docker_vm_read_only") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    // (dockerd may warn about IPv4 forwarding first.)
    assert!(c.output.ends_with("ro-ok\nro-root\n"), "{}", c.output);
}
