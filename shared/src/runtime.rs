//! The trait both isolations implement, and what a run is given.

use crate::image::Image;
use crate::instance::InstanceDir;
use crate::report::RunReport;
use crate::spec::WorkloadSpec;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How a workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadExit {
    /// Exited with this status.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl WorkloadExit {
    /// The status duet itself exits with: the code, or 128+N for signal N.
    pub fn shell_code(self) -> i32 {
        match self {
            WorkloadExit::Code(c) => c,
            WorkloadExit::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for WorkloadExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkloadExit::Code(c) => write!(f, "code {c}"),
            WorkloadExit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// Run-time options from the command line that are not part of the spec.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Kill the workload (or stop the VM) after this long.
    pub timeout: Option<Duration>,
    /// VM: show the guest kernel's console log.
    pub console: bool,
    /// Narrate each step on stderr (`--explain`).
    pub explain: bool,
    /// Container: the cgroup (a path inside each hierarchy) to nest duet's
    /// cgroups under instead of the caller's own (`--cgroup-parent`).
    pub cgroup_parent: Option<PathBuf>,
    /// Container: give the workload a pty of its own even when duet's
    /// stdio is not a terminal (`-t`; with a terminal it always gets one).
    pub tty: bool,
    /// VM: restore this snapshot (`duet snapshot`) instead of booting.
    pub from_snapshot: Option<PathBuf>,
    /// VM: restore the image's warm-start template (built on first use)
    /// and hand the guest this run's workload, instead of booting.
    pub warm: bool,
}

/// Everything a backend needs to start one instance: the resolved spec
/// (image defaults merged in), the image's layers, and its instance directory.
pub struct Launch<'a> {
    /// Spec with the image's default command, env and workdir merged in.
    pub spec: &'a WorkloadSpec,
    /// The resolved image.
    pub image: &'a Image,
    /// Unpacked layer directories, bottom layer first.
    pub layers: Vec<PathBuf>,
    /// This instance's state directory (writable layer lives here).
    pub instance: &'a InstanceDir,
    /// Command-line options.
    pub options: &'a RunOptions,
    /// A microVM's place on duet's bridge (made by the CLI's network
    /// wrapper before the VM); `None`: no network device.
    pub network: Option<&'a VmNetwork>,
}

/// What a microVM on duet's bridge gets: its tap, already on the bridge
/// (the VMM only reads and writes it), and what the guest configures.
#[derive(Debug, Clone)]
pub struct VmNetwork {
    /// The tap, opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a
    /// 12-byte vnet header.
    pub tap: std::sync::Arc<std::os::fd::OwnedFd>,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The guest's address.
    pub address: std::net::Ipv4Addr,
    /// Prefix length of the bridge's subnet.
    pub prefix: u8,
    /// Default gateway (the bridge).
    pub gateway: std::net::Ipv4Addr,
    /// The guest's /etc/resolv.conf.
    pub resolv_conf: String,
    /// The guest's /etc/hosts.
    pub hosts: String,
}

/// A command to run inside a running instance (`duet exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// argv; `command[0]` is looked up in the workload's PATH.
    pub command: Vec<String>,
    /// `KEY=VALUE` added to (and overriding) the workload's environment.
    pub env: Vec<String>,
    /// Working directory; `None`: the workload's.
    pub workdir: Option<String>,
    /// A pty of its own (`-t`) instead of pipes.
    pub tty: bool,
    /// Keep stdin open and relay it (`-i`).
    pub interactive: bool,
    /// The ids to run as; `None`: the workload's own (root in a guest).
    /// Used by the microVM's guest agent (an OCI exec's `process.user`).
    #[serde(default)]
    pub user: Option<ExecUser>,
}

/// uid, gid and supplementary groups of an exec'd command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// Boxed error a backend returns; the CLI prints its whole `source()` chain.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Host-side cgroups for one instance, made by the container backend's
/// cgroup code and handed to the VM backend by the CLI (`src/backends.rs`),
/// so that the jailed VMM runs in an instance cgroup of its own and neither
/// backend depends on the other.
pub trait HostCgroups: Send + Sync {
    /// Creates the cgroups of instance `id` with these limits (below
    /// `parent`, or the caller's cgroup); removed when the lease is dropped.
    fn create(
        &self,
        id: &str,
        resources: &crate::Resources,
        parent: Option<&std::path::Path>,
    ) -> Result<Box<dyn CgroupLease>, BackendError>;
}

/// The cgroups of one instance while it runs.
pub trait CgroupLease: Send {
    /// The `cgroup.procs` files a process writes itself into to join them.
    fn procs_files(&self) -> Vec<PathBuf>;
    /// The cgroup directories, for reports and `--explain`.
    fn dirs(&self) -> Vec<PathBuf>;
    /// Kills anything left inside and removes them.
    fn destroy(self: Box<Self>) -> Result<(), BackendError>;
}

/// One isolation technology, as a lifecycle: the OCI runtime's create,
/// start, state, kill and delete, plus wait and exec. `duet run` is
/// [`Runtime::run`] (create + start + wait + delete in one process); `duet
/// run -d` does the same in a per-instance monitor that outlives the CLI.
pub trait Runtime: Send + Sync {
    /// `container` or `vm`.
    fn isolation(&self) -> &'static str;

    /// Makes everything ready (root, cgroups, namespaces or the VM's disks)
    /// without starting the workload. Stamps the phases before `ready`.
    /// On error everything the backend created is already torn down.
    fn create(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
    ) -> Result<Box<dyn Instance>, BackendError>;

    /// Runs `request` inside the running instance recorded in `dir`, with
    /// the workload's namespaces, limits and privileges; its status.
    fn exec(&self, dir: &InstanceDir, request: &ExecRequest) -> Result<WorkloadExit, BackendError>;

    /// Sends `signal` to the workload of the running instance recorded in
    /// `dir` that this process does not own (a foreground `duet run`'s;
    /// a detached one's goes through its monitor).
    fn kill_recorded(&self, dir: &InstanceDir, signal: i32) -> Result<(), BackendError>;

    /// Removes what a crashed run of this backend may have left for
    /// instance `id` (cgroups, devices, processes). Used by `duet gc`.
    fn gc_instance(&self, id: &str) -> Result<(), BackendError>;

    /// Runs the workload to completion: create, start, wait, delete.
    fn run(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
    ) -> Result<WorkloadExit, BackendError> {
        let mut instance = self.create(launch, report)?;
        let ran = instance.start(report).and_then(|()| instance.wait(report));
        let deleted = instance.delete();
        let exit = ran?;
        deleted?;
        Ok(exit)
    }
}

/// One created instance, held by the process that owns it (`duet run`, or
/// the monitor of a detached instance). Dropping it without
/// [`Instance::delete`] still kills the workload.
pub trait Instance: Send {
    /// Lets the workload run (the container's init execs it; the VM boots).
    fn start(&mut self, report: &mut RunReport) -> Result<(), BackendError>;
    /// Created, running or exited (as far as this owner has seen).
    fn state(&self) -> crate::instance::Status;
    /// Host pid of the workload's init (container) or of the VMM.
    fn pid(&self) -> i32;
    /// Readable once the workload has ended and [`Instance::wait`] will not
    /// block (a pidfd), for owners that wait on many things at once.
    fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_>;
    /// Sends `signal` to the workload (in a VM, through the guest).
    fn kill(&self, signal: i32) -> Result<(), BackendError>;
    /// Waits until the workload has ended (or the run's timeout, or a stop
    /// signal to this process, ended it); stamps `exited`.
    fn wait(&mut self, report: &mut RunReport) -> Result<WorkloadExit, BackendError>;
    /// Removes what the instance made on the host (cgroups, processes);
    /// the instance directory is its owner's.
    fn delete(self: Box<Self>) -> Result<(), BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn shell_codes() {
        assert_eq!(WorkloadExit::Code(7).shell_code(), 7);
        assert_eq!(WorkloadExit::Signal(9).shell_code(), 137);
    }
}
