//! The VM runtime's side of snapshots: what every VM carries for `duet
//! snapshot` (its control socket, its spec and image in the snapshot, the
//! guest kernel's identity), and a run restored from a snapshot (`duet run
//! --from-snapshot`): the same image's layer disks, and the instance's own
//! copy of the writable disk as it was at the snapshot.

use super::VmRuntimeError;
use crate::snapshot::{self, SnapshotError, VirtioDeviceState};
use crate::{disks, SnapshotConfig, VmConfig, VmmError};
use duet_shared::image::layer_image;
use duet_shared::image::ImageStore;
use duet_shared::{Launch, Phase, RunReport, WorkloadSpec};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What duet keeps in a snapshot ([`snapshot::SnapshotState::user`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotUser {
    /// The instance's spec (image defaults merged in).
    pub spec: WorkloadSpec,
    /// The image's name.
    pub image: String,
    /// Its layer digests, bottom first.
    pub layers: Vec<String>,
}

impl SnapshotUser {
    /// Reads it back from a snapshot.
    pub fn from_state(state: &snapshot::SnapshotState) -> Result<SnapshotUser, SnapshotError> {
        serde_json::from_value(state.user.clone()).map_err(|e| {
            SnapshotError::Invalid(format!("it does not hold a duet instance's spec: {e}"))
        })
    }
}

/// Identity of the guest kernel file: its name, size, modification time
/// and inode. Cheap (no hashing of a 30 MB file on every boot) and changes
/// whenever the kernel is rebuilt or replaced; a byte-identical copy
/// elsewhere counts as another kernel, which errs on the safe side.
pub fn kernel_identity(kernel: &Path) -> Option<String> {
    let m = std::fs::metadata(kernel).ok()?;
    Some(format!(
        "{} size {} mtime {}.{:09} inode {}:{}",
        kernel.file_name()?.to_string_lossy(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.dev(),
        m.ino()
    ))
}

/// The snapshot side of every VM run.
pub fn config(launch: &Launch<'_>, kernel: &Path) -> SnapshotConfig {
    let user = SnapshotUser {
        spec: launch.spec.clone(),
        image: launch.image.name.clone(),
        layers: launch.image.layers.clone(),
    };
    SnapshotConfig {
        control_socket: Some(launch.instance.path().join(crate::control::SOCKET)),
        user: serde_json::to_value(&user).unwrap_or_default(),
        kernel_identity: kernel_identity(kernel),
        restore: None,
    }
}

/// What a clone restored on duet's bridge tells its guest ([`crate::agent::renumber`]):
/// its own tap's MAC and lease, not the snapshotted VM's.
pub fn network_update(
    n: &duet_shared::runtime::VmNetwork,
) -> duet_shared::agent_abi::NetworkUpdate {
    duet_shared::agent_abi::NetworkUpdate {
        mac: n.mac,
        address: n.address,
        prefix: n.prefix,
        gateway: Some(n.gateway),
        resolv_conf: n.resolv_conf.clone(),
        hosts: n.hosts.clone(),
    }
}

fn invalid(path: &Path, m: String) -> VmRuntimeError {
    VmRuntimeError::Vmm(VmmError::Snapshot(SnapshotError::Invalid(format!(
        "{}: {m}",
        path.display()
    ))))
}

/// Opens and checks the snapshot at `path` for this host.
pub fn open_checked(path: &Path) -> Result<snapshot::Snapshot, VmRuntimeError> {
    let file = std::fs::File::open(path).map_err(|e| {
        VmmError::Snapshot(SnapshotError::io(
            format!("opening the snapshot {}", path.display()),
            e,
        ))
    })?;
    let snap = snapshot::open(file).map_err(|e| match e {
        SnapshotError::Invalid(m) => invalid(path, m),
        e => VmRuntimeError::Vmm(e.into()),
    })?;
    snap.state
        .check_host()
        .map_err(|e| invalid(path, e.to_string()))?;
    Ok(snap)
}

/// Whether the snapshot has a network device (its clone needs a place on the bridge).
pub fn has_network(snap: &snapshot::Snapshot) -> bool {
    snap.state
        .devices
        .virtio
        .iter()
        .any(|v| matches!(v.device, VirtioDeviceState::Net { .. }))
}

/// Makes `cfg` restore the snapshot at `path` instead of booting: checks
/// it against this duet's kernel and the instance's image, then gives the
/// VM the image's layer disks and a copy of the snapshot's writable disk
/// in the instance directory.
pub fn prepare_restore(
    launch: &Launch<'_>,
    path: &Path,
    cfg: &mut VmConfig,
    report: &mut RunReport,
) -> Result<(), VmRuntimeError> {
    let snap = open_checked(path)?;
    if snap.state.guest_kernel != cfg.snapshots.kernel_identity {
        return Err(invalid(
            path,
            format!(
                "the snapshot was taken with another guest kernel ({}); this duet boots {} ({}): \
                 take the snapshot again",
                snap.state.guest_kernel.as_deref().unwrap_or("unknown"),
                cfg.kernel.display(),
                cfg.snapshots
                    .kernel_identity
                    .as_deref()
                    .unwrap_or("unknown")
            ),
        ));
    }
    let user = SnapshotUser::from_state(&snap.state).map_err(|e| invalid(path, e.to_string()))?;
    if user.layers != launch.image.layers {
        return Err(invalid(
            path,
            format!(
                "image `{}` has changed since the snapshot (its layers differ): its disks would \
                 not match what the guest has cached",
                launch.image.name
            ),
        ));
    }
    match (has_network(&snap), launch.network.is_some()) {
        (true, false) => {
            return Err(invalid(
                path,
                "the snapshotted VM had a network device: its clone needs network `bridge`".into(),
            ))
        }
        (false, true) => {
            return Err(invalid(
                path,
                "the snapshotted VM had no network device: its clone cannot have one".into(),
            ))
        }
        _ => {}
    }
    let has_disks = snap
        .state
        .devices
        .virtio
        .iter()
        .any(|v| matches!(v.device, VirtioDeviceState::Block(_)));
    cfg.disks = Vec::new();
    if has_disks {
        let root = launch.instance.state_root();
        let store = ImageStore::open(root)?;
        let images = layer_image::ensure_layer_images(&store, &launch.image.layers)?;
        let scratch = launch.instance.path().join(disks::SCRATCH_FILE);
        let paths: Vec<_> = images.iter().map(|i| i.path.clone()).collect();
        cfg.disks = disks::disk_configs(&paths, &scratch);
        for v in &snap.state.devices.virtio {
            let VirtioDeviceState::Block(d) = &v.device else {
                continue;
            };
            let Some(copy) = d.copy else { continue };
            if d.serial != disks::SCRATCH_SERIAL {
                return Err(invalid(
                    path,
                    format!("it has a writable disk {} that duet did not make", d.serial),
                ));
            }
            let out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&scratch)
                .map_err(|e| {
                    VmmError::Snapshot(SnapshotError::io(
                        format!("creating {}", scratch.display()),
                        e,
                    ))
                })?;
            snap.extract_disk(copy, &out)?;
        }
    }
    cfg.initrd = None;
    cfg.snapshots.restore = Some(path.to_path_buf());
    report.mark(Phase::RootfsReady);
    report.counters.insert("restored_from_snapshot".into(), 1);
    Ok(())
}

impl From<SnapshotError> for VmRuntimeError {
    fn from(e: SnapshotError) -> Self {
        VmRuntimeError::Vmm(VmmError::Snapshot(e))
    }
}
