//! The guest's root file system on virtio-blk disks, the same structure a
//! container gets: the image's layers as read-only lower layers (one erofs
//! disk per layer, `duet_shared::image::layer_image`), and a per-instance
//! scratch disk (ext4) holding overlayfs's upper and work directories. The
//! guest init finds the disks by serial ([`layer_serial`], [`SCRATCH_SERIAL`]),
//! mounts overlayfs over them and switches root into it; the initramfs only
//! carries the init and the workload config.
//!
//! The scratch disk is a sparse [`SCRATCH_BYTES`] file in the instance
//! directory. It is formatted on the host, not by the guest: the guest would
//! need a mkfs binary (and its libraries) in the initramfs and would format
//! with emulated-guest CPU. On the host, `mkfs.ext4` of a 1 GiB sparse file
//! took 5.6 ms (no journal, lazy inode tables: 656 KB allocated; with the
//! default journal 5.9 ms but 33 MB allocated), and a sparse copy of a
//! formatted template 2.1 ms with `cp`, well under a millisecond in process.
//! So duet formats one template per state root (`vm/scratch/`), once, and
//! gives every instance a sparse copy: no process spawn per run (slow in the
//! nested testbed), and an instance's disk costs the ~600 KB of ext4
//! metadata plus what it writes. No journal: the disk is private to one
//! guest, which syncs before it reports its exit status.

use crate::devices::virtio::BlockConfig;
use crate::rootfs::cpio::{CpioHeader, CpioWriter};
use duet_init::config::{GuestWorkload, INIT_PATH, WORKLOAD_PATH};
pub use duet_init::disk_root::{layer_serial, DiskRoot, FsRoot, SCRATCH_SERIAL};
use duet_init::disk_root::{DISK_ROOT_PATH, FS_ROOT_PATH};

/// Where the guest's root comes from, as the init is told in its initramfs.
#[derive(Debug, Clone, Copy)]
pub enum GuestRoot<'a> {
    /// Layer disks and a scratch disk ([`DiskRoot`], `/duet/disk-root.json`).
    Disks(&'a DiskRoot),
    /// A virtio-fs share ([`FsRoot`], `/duet/fs-root.json`).
    Fs(&'a FsRoot),
}

impl GuestRoot<'_> {
    fn file(&self) -> (&'static str, Vec<u8>) {
        match self {
            GuestRoot::Disks(d) => (DISK_ROOT_PATH, d.to_json()),
            GuestRoot::Fs(f) => (FS_ROOT_PATH, f.to_json()),
        }
    }
}
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Size of an instance's scratch disk (sparse).
pub const SCRATCH_BYTES: u64 = 1 << 30;
/// File name of the scratch disk in the instance directory.
pub const SCRATCH_FILE: &str = "scratch.ext4";
/// Bumped when the template's format options change.
const TEMPLATE_FORMAT: &str = "v1";
/// Bumped when the init-only initramfs layout changes.
const INITRAMFS_FORMAT: &str = "duet-initramfs-disks-v1";

/// Errors preparing the disks; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// File system error on a named path.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// mke2fs could not be started.
    #[error("cannot run mke2fs to format the scratch disk template {} (install it with `apt-get install e2fsprogs`)", path.display())]
    MkfsMissing {
        /// The template.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// mke2fs failed.
    #[error("mke2fs -t ext4 failed on {} ({status}): {stderr}", path.display())]
    MkfsFailed {
        /// The template.
        path: PathBuf,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Its stderr.
        stderr: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The disks of a VM: `layer_images` (bottom first) read-only, then the
/// scratch disk read-write.
pub fn disk_configs(layer_images: &[PathBuf], scratch: &Path) -> Vec<BlockConfig> {
    let mut disks: Vec<BlockConfig> = layer_images
        .iter()
        .enumerate()
        .map(|(n, p)| BlockConfig {
            path: p.clone(),
            read_only: true,
            serial: layer_serial(n),
        })
        .collect();
    disks.push(BlockConfig {
        path: scratch.to_path_buf(),
        read_only: false,
        serial: SCRATCH_SERIAL.into(),
    });
    disks
}

/// What [`create_scratch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scratch {
    /// The instance's scratch disk.
    pub path: PathBuf,
    /// Whether the shared template had to be formatted first.
    pub template_built: bool,
    /// Time spent.
    pub elapsed: Duration,
}

/// The formatted, empty template under `state_root` (formatted now if missing).
pub fn scratch_template(state_root: &Path) -> Result<(PathBuf, bool), DiskError> {
    let dir = state_root.join("vm/scratch");
    let path = dir.join(format!("ext4-{SCRATCH_BYTES}-{TEMPLATE_FORMAT}.img"));
    if path.is_file() {
        return Ok((path, false));
    }
    std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).map_err(io_err("cannot create lock file", &lock_path))?;
    duet_shared::paths::flock_exclusive(&lock).map_err(io_err("cannot lock", &lock_path))?;
    if path.is_file() {
        return Ok((path, false));
    }
    let tmp = path.with_extension(format!(
        "img.tmp.{}.{}",
        std::process::id(),
        duet_shared::clock::monotonic_ns()
    ));
    let result = (|| {
        let f = File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
        f.set_len(SCRATCH_BYTES)
            .map_err(io_err("cannot size", &tmp))?;
        drop(f);
        // overlayfs's upper and work directories exist from the start, so the
        // guest creates (and later writes back) nothing before the workload.
        let skeleton = dir.join(format!(
            "skeleton.{}.{}",
            std::process::id(),
            duet_shared::clock::monotonic_ns()
        ));
        for sub in ["upper", "work"] {
            let d = skeleton.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err("cannot create", &d))?;
        }
        let out = Command::new("mke2fs")
            .args([
                "-t",
                "ext4",
                "-q",
                "-F",
                "-O",
                "^has_journal",
                "-E",
                "nodiscard,lazy_itable_init=1",
                "-m",
                "0",
                "-L",
                SCRATCH_SERIAL,
            ])
            .arg("-d")
            .arg(&skeleton)
            .arg(&tmp)
            .output();
        let _ = std::fs::remove_dir_all(&skeleton);
        let out = out.map_err(|source| DiskError::MkfsMissing {
            path: path.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(DiskError::MkfsFailed {
                path: path.clone(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        std::fs::rename(&tmp, &path).map_err(io_err("cannot move into place", &path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| (path, true))
}

/// Gives the instance at `instance_dir` its scratch disk: a sparse copy of
/// the template (allocated: the template's ext4 metadata only).
pub fn create_scratch(state_root: &Path, instance_dir: &Path) -> Result<Scratch, DiskError> {
    let t0 = Instant::now();
    let path = instance_dir.join(SCRATCH_FILE);
    // A restarted instance (`--restart`) keeps its writable layer, as in Docker.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file()) {
        return Ok(Scratch {
            path,
            template_built: false,
            elapsed: t0.elapsed(),
        });
    }
    let (template, template_built) = scratch_template(state_root)?;
    sparse_copy(&template, &path)?;
    Ok(Scratch {
        path,
        template_built,
        elapsed: t0.elapsed(),
    })
}

/// Copies `src` to a new file `dest` of the same size, only its data
/// extents (SEEK_DATA/SEEK_HOLE + copy_file_range): holes stay holes.
pub fn sparse_copy(src: &Path, dest: &Path) -> Result<(), DiskError> {
    let from = File::open(src).map_err(io_err("cannot open", src))?;
    let size = from.metadata().map_err(io_err("cannot stat", src))?.len();
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(io_err("cannot create", dest))?;
    to.set_len(size).map_err(io_err("cannot size", dest))?;
    let extents = data_extents(&from, 0, size).map_err(io_err("cannot read", src))?;
    for (data, end) in extents {
        let mut pos = data;
        while pos < end {
            let mut src_off = pos as i64;
            let mut dst_off = pos as i64;
            // SAFETY: both descriptors are open for the call; the offsets are
            // valid pointers to local i64s the kernel updates.
            let n = unsafe {
                libc::copy_file_range(
                    from.as_raw_fd(),
                    &mut src_off,
                    to.as_raw_fd(),
                    &mut dst_off,
                    (end - pos) as usize,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io_err("cannot copy into", dest)(e));
            }
            if n == 0 {
                break;
            }
            pos += n as u64;
        }
    }
    Ok(())
}

/// The data extents of `f` within `[start, end)` (SEEK_DATA/SEEK_HOLE),
/// so a sparse file's holes are neither read nor copied; a file system
/// without SEEK_DATA reports the whole range as data.
pub fn data_extents(f: &File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let seek = |at: u64, whence| {
        // SAFETY: lseek on a descriptor we hold; no memory is involved.
        let r = unsafe { libc::lseek(f.as_raw_fd(), at as libc::off_t, whence) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    };
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let data = match seek(at, libc::SEEK_DATA) {
            Ok(d) => d,
            // No data after `at`.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(vec![(at, end)]),
            Err(e) => return Err(e),
        };
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.min(end);
        out.push((data, hole));
        at = hole;
    }
    Ok(out)
}

/// What [`build_initramfs`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOnlyInitramfs {
    /// The initrd to load (init part + run part, one file in the instance directory).
    pub initrd: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Whether the cached init part was reused.
    pub cache_hit: bool,
}

fn dir_entry(ino: u32) -> CpioHeader {
    CpioHeader {
        ino,
        mode: libc::S_IFDIR | 0o755,
        nlink: 2,
        ..Default::default()
    }
}

/// The initrd of a disk-root VM: `/duet/init` and `/dev/console` (cached
/// per init binary under `vm/initramfs/`), then `/duet/workload.json` and
/// `/duet/disk-root.json` (which tells the init to mount `root`), joined
/// into `<instance_dir>/initrd.cpio`.
pub fn build_initramfs(
    state_root: &Path,
    instance_dir: &Path,
    init_binary: &Path,
    workload: &GuestWorkload,
    root: GuestRoot<'_>,
) -> Result<InitOnlyInitramfs, DiskError> {
    let (root_path, root_json) = root.file();
    let m =
        std::fs::metadata(init_binary).map_err(io_err("cannot stat guest init", init_binary))?;
    let mut h = Sha256::new();
    h.update(
        format!(
            "{INITRAMFS_FORMAT}\n{} {} {} {}.{} {}.{}",
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        )
        .as_bytes(),
    );
    let dir = state_root.join("vm/initramfs");
    let cached = dir.join(format!("init-{}.cpio", hex::encode(h.finalize())));
    let cache_hit = cached.is_file();
    if !cache_hit {
        std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        let tmp = cached.with_extension(format!(
            "cpio.tmp.{}.{}",
            std::process::id(),
            duet_shared::clock::monotonic_ns()
        ));
        let result = (|| {
            let f = File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
            let mut w = CpioWriter::new(BufWriter::new(f));
            let init =
                File::open(init_binary).map_err(io_err("cannot read guest init", init_binary))?;
            let size = u32::try_from(m.len()).map_err(|_| {
                io_err("guest init too large for cpio:", init_binary)(std::io::Error::from(
                    std::io::ErrorKind::InvalidData,
                ))
            })?;
            let init_name = INIT_PATH.trim_start_matches('/');
            (|| -> std::io::Result<()> {
                w.entry(&dir_entry(1), b"dev", &[])?;
                w.entry(
                    &CpioHeader {
                        ino: 2,
                        mode: libc::S_IFCHR | 0o600,
                        nlink: 1,
                        rdev_major: 5,
                        rdev_minor: 1,
                        ..Default::default()
                    },
                    b"dev/console",
                    &[],
                )?;
                w.entry(&dir_entry(3), b"duet", &[])?;
                w.entry_from(
                    &CpioHeader {
                        ino: 4,
                        mode: libc::S_IFREG | 0o755,
                        nlink: 1,
                        filesize: size,
                        ..Default::default()
                    },
                    init_name.as_bytes(),
                    init,
                )?;
                w.finish()?.flush()
            })()
            .map_err(io_err("cannot write", &tmp))?;
            std::fs::rename(&tmp, &cached).map_err(io_err("cannot move into place", &cached))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
    }
    let initrd = instance_dir.join("initrd.cpio");
    std::fs::copy(&cached, &initrd).map_err(io_err("cannot write initrd", &initrd))?;
    let out = OpenOptions::new()
        .append(true)
        .open(&initrd)
        .map_err(io_err("cannot write initrd", &initrd))?;
    let mut w = CpioWriter::new(BufWriter::new(out));
    (|| -> std::io::Result<()> {
        for (ino, path, data) in [
            (5, WORKLOAD_PATH, workload.to_json()),
            (6, root_path, root_json),
        ] {
            let header = CpioHeader {
                ino,
                mode: libc::S_IFREG | 0o644,
                nlink: 1,
                filesize: data.len() as u32,
                ..Default::default()
            };
            w.entry(&header, path.trim_start_matches('/').as_bytes(), &data)?;
        }
        w.finish()?.flush()
    })()
    .map_err(io_err("cannot write initrd", &initrd))?;
    let bytes = std::fs::metadata(&initrd)
        .map_err(io_err("cannot stat", &initrd))?
        .len();
    Ok(InitOnlyInitramfs {
        initrd,
        bytes,
        cache_hit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_layers_bottom_first_then_scratch() {
        let d = disk_configs(
            &[PathBuf::from("/l/0.erofs"), PathBuf::from("/l/1.erofs")],
            Path::new("/i/scratch.ext4"),
        );
        let got: Vec<_> = d
            .iter()
            .map(|c| (c.serial.as_str(), c.read_only, c.path.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("duet-layer-0", true, "/l/0.erofs"),
                ("duet-layer-1", true, "/l/1.erofs"),
                ("duet-scratch", false, "/i/scratch.ext4"),
            ]
        );
    }

    #[test]
    fn sparse_copy_keeps_holes_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 32 << 20).unwrap();
        drop(f);
        let dest = dir.path().join("dest");
        sparse_copy(&src, &dest).unwrap();
        let a = std::fs::read(&src).unwrap();
        let b = std::fs::read(&dest).unwrap();
        assert!(a == b, "contents differ");
        let blocks = std::fs::metadata(&dest).unwrap().blocks();
        assert!(blocks * 512 < 1 << 20, "{blocks} blocks allocated");
        // An existing destination is never overwritten.
        assert!(sparse_copy(&src, &dest).is_err());
    }

    #[test]
    fn scratch_is_a_sparse_copy_of_one_template() {
        if Command::new("mke2fs").arg("-V").output().is_err()
            && duet_shared::testing::skip(
                "scratch_is_a_sparse_copy_of_one_template",
                "mke2fs is not installed (apt-get install e2fsprogs)",
            )
        {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let first = create_scratch(root.path(), a.path()).unwrap();
        let second = create_scratch(root.path(), b.path()).unwrap();
        assert!(first.template_built && !second.template_built);
        let m = std::fs::metadata(&second.path).unwrap();
        assert_eq!(m.len(), SCRATCH_BYTES);
        assert!(
            m.blocks() * 512 < 4 << 20,
            "{} bytes allocated",
            m.blocks() * 512
        );
        // An ext4 superblock (magic 0xef53 at 1024 + 56) without a journal.
        let sb = {
            use std::os::unix::fs::FileExt;
            let mut sb = [0u8; 1024];
            File::open(&second.path)
                .unwrap()
                .read_exact_at(&mut sb, 1024)
                .unwrap();
            sb
        };
        assert_eq!(&sb[56..58], &0xef53u16.to_le_bytes());
        let compat = u32::from_le_bytes(sb[92..96].try_into().unwrap());
        assert_eq!(compat & 0x4, 0, "has_journal is off");
        // overlayfs's directories are already there.
        if let Ok(out) = Command::new("debugfs")
            .args(["-R", "ls /"])
            .arg(&second.path)
            .output()
        {
            let listing = String::from_utf8_lossy(&out.stdout);
            assert!(
                listing.contains("upper") && listing.contains("work"),
                "{listing}"
            );
        }
    }

    #[test]
    fn init_only_initramfs_holds_init_console_and_config() {
        let root = tempfile::tempdir().unwrap();
        let inst = tempfile::tempdir().unwrap();
        let init = root.path().join("fake-init");
        std::fs::write(&init, b"\x7fELF not really").unwrap();
        let w = GuestWorkload {
            argv: vec!["/bin/true".into()],
            env: vec![],
            workdir: "/".into(),
            hostname: "h".into(),
            pids_max: None,
            agent: false,
            user: None,
            files: Vec::new(),
            network: None,
            template: false,
            tty: None,
        };
        let dr = DiskRoot { layers: 1 };
        let first =
            build_initramfs(root.path(), inst.path(), &init, &w, GuestRoot::Disks(&dr)).unwrap();
        assert!(!first.cache_hit);
        let again =
            build_initramfs(root.path(), inst.path(), &init, &w, GuestRoot::Disks(&dr)).unwrap();
        assert!(again.cache_hit);
        assert_eq!(first.bytes, again.bytes);
        let bytes = std::fs::read(&again.initrd).unwrap();
        assert_eq!(bytes.len() as u64, again.bytes);
        let text = String::from_utf8_lossy(&bytes);
        for name in [
            "dev/console",
            "duet/init",
            "duet/workload.json",
            "TRAILER!!!",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(text.contains("/bin/true"));
        assert!(bytes.len() < 4096, "{} bytes", bytes.len());
    }
}
