//! A microVM whose root is a host directory shared over virtio-fs: how
//! `duet-runc --isolation vm` runs an OCI bundle, whose rootfs the engine's
//! snapshotter prepared. The workload's writes land in that directory, as
//! they would in a container's, so the engine sees them (`docker diff`,
//! `docker cp`, `docker commit`).
//!
//! Recipe: start virtiofsd on the rootfs ([`crate::virtiofsd`]), write an
//! init-only initramfs whose `fs-root.json` tells duet-init to mount the
//! share as `/` ([`crate::disks::GuestRoot::Fs`]), boot the jailed VMM with
//! a virtio-fs device connected to virtiofsd and the guest agent's vsock
//! (exec and kill, [`crate::agent`]), and turn how the VM ended into the
//! workload's exit. The VMM closing its connection ends virtiofsd.
//! Directory volumes get a share (and a virtiofsd) each, mounted by the
//! guest init inside the root.

use crate::disks::{self, FsRoot, GuestRoot};
use crate::jail;
use crate::rootfs::{self, GuestWorkload};
use crate::runtime::{find_kernel, VmRuntimeError};
use crate::virtiofsd::Virtiofsd;
use crate::{ConsoleMode, FsShare, VmConfig, VmEnd};
use duet_shared::{RunReport, WorkloadExit};
use std::path::PathBuf;
use std::time::Duration;

/// The mount tag of the root share.
pub const ROOT_TAG: &str = "duet-root";
/// virtiofsd's socket in the instance directory.
pub const FS_SOCKET: &str = "virtiofs.sock";
/// virtiofsd's stderr in the instance directory.
pub const FS_LOG: &str = "virtiofsd.log";

/// What to boot.
#[derive(Debug, Clone)]
pub struct BundleVm {
    /// Instance id (names the jail's uid lease).
    pub id: String,
    /// The directory that becomes the guest's `/`.
    pub rootfs: PathBuf,
    /// Mount it read-only in the guest.
    pub read_only: bool,
    /// The workload, as duet-init runs it.
    pub workload: GuestWorkload,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// The instance's directory: agent socket, virtiofsd socket and log,
    /// initrd, jail.
    pub instance_dir: PathBuf,
    /// Where the agent's and virtiofsd's sockets go: a short path, as a
    /// Unix socket's path is limited to 107 bytes and an engine's instance
    /// directories are long (`/run/containerd/io.containerd.runtime.v2.task/<ns>/<64 hex>/`).
    pub socket_dir: PathBuf,
    /// Where shared VM state lives (initramfs cache, jail id leases).
    pub state_root: PathBuf,
    /// Forward the whole guest console (kernel log too), not only the workload's output.
    pub console: bool,
    /// Host directories mounted inside the root, each over a share of its own.
    pub volumes: Vec<Volume>,
    /// A virtio-net device (the engine's address, see duet_network::engine).
    pub net: Option<crate::NetDevice>,
}

/// A host directory the guest mounts at `target` (an engine's volume).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    /// The host directory.
    pub source: PathBuf,
    /// Absolute path in the guest's root.
    pub target: String,
    /// Read-only for the guest.
    pub read_only: bool,
}

/// Most volumes per VM (each takes a virtio-mmio slot and a virtiofsd).
pub const MAX_VOLUMES: usize = 8;

/// Boots `b` and waits for its workload; the VM's output goes to stdout
/// and stdin feeds its console, as in `duet run --isolation vm`.
pub fn run(b: &BundleVm, report: &mut RunReport) -> Result<WorkloadExit, VmRuntimeError> {
    let kernel = find_kernel()?;
    let init = rootfs::find_init_binary()?;
    let bin = crate::virtiofsd::find()?;
    // One virtiofsd per share: the root first, then each volume.
    let mut shares = Vec::new();
    let mut backends = Vec::new();
    let mut share = |dir: &std::path::Path,
                     socket: PathBuf,
                     log: PathBuf,
                     tag: String,
                     read_only: bool|
     -> Result<(), VmRuntimeError> {
        let d = Virtiofsd::start(&bin, dir, &socket, &log, read_only)?;
        shares.push(FsShare {
            socket: d.socket().to_path_buf(),
            tag,
        });
        backends.push(d);
        Ok(())
    };
    share(
        &b.rootfs,
        b.socket_dir.join(FS_SOCKET),
        b.instance_dir.join(FS_LOG),
        ROOT_TAG.into(),
        b.read_only,
    )?;
    let mut mounts = Vec::new();
    // duet-runc refuses more than MAX_VOLUMES at create, with the field.
    for (n, v) in b.volumes.iter().enumerate() {
        let tag = format!("duet-vol-{n}");
        share(
            &v.source,
            b.socket_dir.join(format!("vol-{n}.sock")),
            b.instance_dir.join(format!("virtiofsd-vol-{n}.log")),
            tag.clone(),
            v.read_only,
        )?;
        mounts.push(duet_init::disk_root::FsMount {
            tag,
            target: v.target.clone(),
            read_only: v.read_only,
        });
    }
    let root = FsRoot {
        tag: ROOT_TAG.into(),
        read_only: b.read_only,
        mounts,
    };
    let initrd = disks::build_initramfs(
        &b.state_root,
        &b.instance_dir,
        &init,
        &b.workload,
        GuestRoot::Fs(&root),
    )?;
    let cfg = VmConfig {
        snapshots: Default::default(),
        kernel,
        initrd: Some(initrd.initrd),
        cmdline: rootfs::kernel_cmdline(b.console),
        memory_mib: b.memory_mib,
        vcpus: b.vcpus,
        timeout: None,
        console: if b.console {
            ConsoleMode::Forward
        } else {
            ConsoleMode::Workload
        },
        stdin: true,
        disks: Vec::new(),
        agent_socket: Some(b.socket_dir.join(crate::agent::SOCKET)),
        fs: shares,
        net: b.net.clone(),
    };
    let jail = jail::JailConfig::for_instance(&b.state_root, &b.instance_dir, &b.id)
        .map_err(crate::VmmError::from)?;
    // SIGINT/TERM/HUP/QUIT stop the VM (passed on to the jailed VMM).
    let _guard = crate::signals::RunGuard::enter();
    let outcome = jail::run_jailed(&cfg, &jail, report);
    // The VMM held the only connections: each virtiofsd ends by itself.
    for d in backends {
        d.stop(Duration::from_secs(2));
    }
    let outcome = outcome?;
    match outcome.end {
        VmEnd::Interrupted(sig) => Ok(WorkloadExit::Signal(sig)),
        _ => Ok(outcome.workload_exit()?),
    }
}
