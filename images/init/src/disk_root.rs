//! The workload's root on virtio-blk disks (duet-vmm's default): the image's
//! layers as read-only erofs disks, a scratch ext4 disk for overlayfs's
//! upper and work directories, the same structure a container gets on the
//! host. The host names the disks by serial (the order of `/dev/vdX` is not
//! promised): layer n (0 = bottom) is `duet-layer-<n>`, the scratch disk is
//! `duet-scratch`.
//!
//! In the guest, [`enter`] finds the disks through `/sys/block/*/serial`,
//! mounts each layer read-only under `/duet/layers/<n>`, the scratch disk on
//! `/duet/scratch`, overlayfs on `/duet/root`, moves `/dev` into it and
//! makes it the root (MS_MOVE onto `/` + chroot, as switch_root does: the
//! initramfs cannot be pivoted away). The init's own binary stays in the
//! initramfs underneath; the workload sees only the overlay.

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Serial of the scratch (writable) disk.
pub const SCRATCH_SERIAL: &str = "duet-scratch";
/// Prefix of layer disk serials: layer n (0 = bottom) is `duet-layer-<n>`.
pub const LAYER_SERIAL_PREFIX: &str = "duet-layer-";
/// Where layer n is mounted.
pub const LAYERS_DIR: &str = "/duet/layers";
/// Where the scratch disk is mounted.
pub const SCRATCH_DIR: &str = "/duet/scratch";
/// Where the overlay is assembled before it becomes `/`.
pub const NEW_ROOT: &str = "/duet/root";
/// The host writes a [`DiskRoot`] here (next to the workload config) when
/// the root is on disks; without the file the initramfs is the root.
pub const DISK_ROOT_PATH: &str = "/duet/disk-root.json";
/// The host writes an [`FsRoot`] here when the root is a host directory
/// shared over virtio-fs (an OCI bundle's rootfs).
pub const FS_ROOT_PATH: &str = "/duet/fs-root.json";
/// How long to wait for the disks to appear.
const DISK_WAIT: Duration = Duration::from_secs(2);

/// Serial of layer disk `n`.
pub fn layer_serial(n: usize) -> String {
    format!("{LAYER_SERIAL_PREFIX}{n}")
}

/// Reads a root description at `path`: `None` if the host wrote none.
fn load_optional<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, DiskRootError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DiskRootError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| DiskRootError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// What [`DISK_ROOT_PATH`] says: the root is on disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRoot {
    /// Number of layer disks (`duet-layer-0` .. `duet-layer-<layers-1>`).
    pub layers: u32,
}

impl DiskRoot {
    /// The JSON the host writes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("DiskRoot always serializes")
    }

    /// Reads `path`: `None` if it does not exist (the root is the initramfs).
    pub fn load(path: &Path) -> Result<Option<DiskRoot>, DiskRootError> {
        load_optional(path)
    }
}

/// What [`FS_ROOT_PATH`] says: the root is the virtio-fs share `tag`,
/// mounted directly (the host's directory is already the merged tree; the
/// workload's writes land in it, as they would in a container's rootfs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsRoot {
    /// The share's mount tag.
    pub tag: String,
    /// Mount it read-only (an OCI `root.readonly`).
    #[serde(default)]
    pub read_only: bool,
    /// More shares mounted inside the root once it is `/` (an engine's
    /// directory volumes), in order.
    #[serde(default)]
    pub mounts: Vec<FsMount>,
}

/// A virtio-fs share mounted at a path of the workload's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsMount {
    /// The share's mount tag.
    pub tag: String,
    /// Absolute path in the root (made if missing).
    pub target: String,
    /// Mount it read-only.
    #[serde(default)]
    pub read_only: bool,
}

impl FsRoot {
    /// The JSON the host writes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("FsRoot always serializes")
    }

    /// Reads `path`: `None` if it does not exist.
    pub fn load(path: &Path) -> Result<Option<FsRoot>, DiskRootError> {
        load_optional(path)
    }
}

/// Mounts the virtio-fs share as the new root and switches into it.
pub fn enter_fs(root: &FsRoot) -> Result<(), DiskRootError> {
    let mut flags = MsFlags::empty();
    if root.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount_at(&root.tag, Path::new(NEW_ROOT), "virtiofs", flags, None)?;
    switch_into_new_root()?;
    // After the switch: every path (symlinks too) resolves inside the guest's root.
    for m in &root.mounts {
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if m.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        mount_at(&m.tag, Path::new(&m.target), "virtiofs", flags, None)?;
    }
    Ok(())
}

/// Why the disk root could not be set up; each names its disk or path.
#[derive(Debug, thiserror::Error)]
pub enum DiskRootError {
    /// The disk root description cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The disk root description is not valid JSON for [`DiskRoot`].
    #[error("{} is not a valid disk root description", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A disk the config names never appeared.
    #[error("no disk with serial {serial} (found: {})", if found.is_empty() { "none".to_string() } else { found.join(", ") })]
    Missing {
        /// The serial looked for.
        serial: String,
        /// `serial=device` pairs that were there.
        found: Vec<String>,
    },
    /// A directory could not be created.
    #[error("cannot create {}", path.display())]
    MkDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A mount failed.
    #[error("cannot mount {what} on {}", target.display())]
    Mount {
        /// What was mounted.
        what: String,
        /// Where.
        target: PathBuf,
        /// Cause.
        #[source]
        source: Errno,
    },
    /// Switching into the new root failed.
    #[error("cannot switch root to {NEW_ROOT} ({step})")]
    Switch {
        /// Which step.
        step: &'static str,
        /// Cause.
        #[source]
        source: Errno,
    },
}

/// `serial -> device name` for every block device under `sys_block`
/// (`/sys/block`); devices without a readable serial are skipped.
pub fn disks_by_serial(sys_block: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(sys_block) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(s) = std::fs::read_to_string(e.path().join("serial")) {
            let s = s.trim_end_matches(['\n', '\0']).trim();
            if !s.is_empty() {
                out.insert(s.to_string(), name);
            }
        }
    }
    out
}

/// The devices for `root` (layers bottom first, then scratch) from a serial map.
pub fn resolve(
    root: &DiskRoot,
    by_serial: &BTreeMap<String, String>,
) -> Result<(Vec<String>, String), DiskRootError> {
    let find = |serial: String| match by_serial.get(&serial) {
        Some(dev) => Ok(dev.clone()),
        None => Err(DiskRootError::Missing {
            serial,
            found: by_serial.iter().map(|(s, d)| format!("{s}={d}")).collect(),
        }),
    };
    let layers = (0..root.layers as usize)
        .map(|n| find(layer_serial(n)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((layers, find(SCRATCH_SERIAL.to_string())?))
}

/// overlayfs options: top layer first in `lowerdir`, upper and work on the scratch disk.
pub fn overlay_options(layers: u32) -> String {
    let lower: Vec<String> = (0..layers)
        .rev()
        .map(|n| format!("{LAYERS_DIR}/{n}"))
        .collect();
    format!(
        "lowerdir={},upperdir={SCRATCH_DIR}/upper,workdir={SCRATCH_DIR}/work",
        lower.join(":")
    )
}

fn mkdir_p(path: &Path) -> Result<(), DiskRootError> {
    std::fs::create_dir_all(path).map_err(|source| DiskRootError::MkDir {
        path: path.to_path_buf(),
        source,
    })
}

fn mount_at(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), DiskRootError> {
    mkdir_p(target)?;
    mount(Some(source), target, Some(fstype), flags, data).map_err(|e| DiskRootError::Mount {
        what: format!("{fstype} {source}"),
        target: target.to_path_buf(),
        source: e,
    })
}

/// Finds the disks (waiting up to 2 s for them), mounts layers, scratch and
/// the overlay, moves `/dev` into it and makes it the root. Needs `/dev`
/// (devtmpfs) mounted; mounts sysfs on a temporary directory for the lookup.
pub fn enter(root: &DiskRoot) -> Result<(), DiskRootError> {
    let sys = Path::new("/duet/sys");
    mount_at(
        "sysfs",
        sys,
        "sysfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    let deadline = Instant::now() + DISK_WAIT;
    let resolved = loop {
        match resolve(root, &disks_by_serial(&sys.join("block"))) {
            Ok(r) => break Ok(r),
            Err(e) if Instant::now() >= deadline => break Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let _ = nix::mount::umount(sys);
    let (layers, scratch) = resolved?;
    for (n, dev) in layers.iter().enumerate() {
        mount_at(
            &format!("/dev/{dev}"),
            &Path::new(LAYERS_DIR).join(n.to_string()),
            "erofs",
            MsFlags::MS_RDONLY,
            None,
        )?;
    }
    // No lazy inode-table zeroing: it would write the whole table in the background.
    mount_at(
        &format!("/dev/{scratch}"),
        Path::new(SCRATCH_DIR),
        "ext4",
        MsFlags::MS_NOATIME,
        Some("noinit_itable"),
    )?;
    mkdir_p(&Path::new(SCRATCH_DIR).join("upper"))?;
    mkdir_p(&Path::new(SCRATCH_DIR).join("work"))?;
    mount_at(
        "overlay",
        Path::new(NEW_ROOT),
        "overlay",
        MsFlags::empty(),
        Some(&overlay_options(root.layers)),
    )?;
    switch_into_new_root()
}

/// Moves `/dev` into [`NEW_ROOT`] and makes it the root (MS_MOVE onto `/`
/// and chroot, as switch_root does: the initramfs cannot be pivoted away).
fn switch_into_new_root() -> Result<(), DiskRootError> {
    let new_dev = Path::new(NEW_ROOT).join("dev");
    mkdir_p(&new_dev)?;
    mount(
        Some("/dev"),
        &new_dev,
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(|source| DiskRootError::Mount {
        what: "/dev (move)".into(),
        target: new_dev.clone(),
        source,
    })?;
    let step = |step| move |source| DiskRootError::Switch { step, source };
    nix::unistd::chdir(NEW_ROOT).map_err(step("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(step("move onto /"))?;
    nix::unistd::chroot(".").map_err(step("chroot"))?;
    nix::unistd::chdir("/").map_err(step("chdir /"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_round_trips_and_is_optional() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk-root.json");
        assert!(DiskRoot::load(&p).unwrap().is_none());
        std::fs::write(&p, DiskRoot { layers: 3 }.to_json()).unwrap();
        assert_eq!(DiskRoot::load(&p).unwrap(), Some(DiskRoot { layers: 3 }));
        std::fs::write(&p, b"{\"layers\": -1}").unwrap();
        let e = DiskRoot::load(&p).unwrap_err().to_string();
        assert!(e.contains("disk-root.json"), "{e}");
    }

    #[test]
    fn fs_root_round_trips_and_refuses_unknown_fields() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fs-root.json");
        assert!(FsRoot::load(&p).unwrap().is_none());
        let r = FsRoot {
            tag: "duet-root".into(),
            read_only: true,
            mounts: vec![FsMount {
                tag: "duet-vol-0".into(),
                target: "/data".into(),
                read_only: false,
            }],
        };
        std::fs::write(&p, r.to_json()).unwrap();
        assert_eq!(FsRoot::load(&p).unwrap(), Some(r));
        std::fs::write(&p, br#"{"tag":"x","shell":"/bin/sh"}"#).unwrap();
        let e = FsRoot::load(&p).unwrap_err().to_string();
        assert!(e.contains("fs-root.json"), "{e}");
    }

    #[test]
    fn overlay_lists_the_top_layer_first() {
        assert_eq!(
            overlay_options(3),
            "lowerdir=/duet/layers/2:/duet/layers/1:/duet/layers/0,\
             upperdir=/duet/scratch/upper,workdir=/duet/scratch/work"
        );
        assert_eq!(
            overlay_options(1),
            "lowerdir=/duet/layers/0,upperdir=/duet/scratch/upper,workdir=/duet/scratch/work"
        );
    }

    #[test]
    fn disks_are_found_by_serial_not_order() {
        let d = tempfile::tempdir().unwrap();
        for (dev, serial) in [
            ("vda", Some("duet-scratch")),
            ("vdb", Some("duet-layer-1\n")),
            ("vdc", Some("duet-layer-0")),
            ("loop0", None),
        ] {
            std::fs::create_dir(d.path().join(dev)).unwrap();
            if let Some(s) = serial {
                std::fs::write(d.path().join(dev).join("serial"), s).unwrap();
            }
        }
        let map = disks_by_serial(d.path());
        let (layers, scratch) = resolve(&DiskRoot { layers: 2 }, &map).unwrap();
        assert_eq!(layers, ["vdc", "vdb"]);
        assert_eq!(scratch, "vda");
        let e = resolve(&DiskRoot { layers: 3 }, &map).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("duet-layer-2") && m.contains("duet-scratch=vda"),
            "{m}"
        );
    }
}
