//! Small files the host hands the workload beside its root: what an OCI
//! engine bind-mounts from the host into a container (Docker's
//! `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`), for a guest whose
//! root is shared over virtio-fs. The host copies their contents into the
//! workload config at create; [`place`] writes each to a scratch file on
//! the guest's `/dev` (a tmpfs), bind-mounts it over its target in the
//! root (read-only if asked) and unlinks the scratch name, so the
//! workload sees the file at its path and nowhere else, and the engine's
//! rootfs on the host is not written (beyond an empty target file that
//! did not exist, as runc creates one for a bind mount).
//!
//! Runs after the switch into the workload's root, so every path, symlinks
//! included, resolves inside the guest's own root: nothing reaches the host.

use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// At most this many files per workload.
pub const MAX_FILES: usize = 32;
/// At most this many bytes per file.
pub const MAX_FILE_BYTES: usize = 256 << 10;

/// One file to place in the workload's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestFile {
    /// Absolute path in the workload's root.
    pub path: String,
    /// Its contents.
    pub content: Vec<u8>,
    /// Bind it read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// Why a file could not be placed; names the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot place {path} in the workload's root ({step}: {source})")]
pub struct FileError {
    /// The target path.
    pub path: String,
    /// What failed.
    pub step: &'static str,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// Checks the list as the config's validation does; the message names the entry.
pub fn validate(files: &[GuestFile]) -> Result<(), String> {
    if files.len() > MAX_FILES {
        return Err(format!(
            "`files` has {} entries, at most {MAX_FILES}",
            files.len()
        ));
    }
    for (i, f) in files.iter().enumerate() {
        let p = Path::new(&f.path);
        let clean = p.is_absolute()
            && !f.path.contains('\0')
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
            && p.components().count() > 1;
        if !clean {
            return Err(format!(
                "`files[{i}].path` = {:?} is not an absolute path without `..` below /",
                f.path
            ));
        }
        if f.content.len() > MAX_FILE_BYTES {
            return Err(format!(
                "`files[{i}]` ({}) is {} bytes, at most {MAX_FILE_BYTES}",
                f.path,
                f.content.len()
            ));
        }
    }
    Ok(())
}

/// Places every file (see the module doc). Needs `/dev` mounted.
pub fn place(files: &[GuestFile]) -> Result<(), FileError> {
    for (n, f) in files.iter().enumerate() {
        let err = |step: &'static str| {
            let path = f.path.clone();
            move |source| FileError { path, step, source }
        };
        let scratch = PathBuf::from(format!("/dev/.duet-file-{n}"));
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&scratch)
            .map_err(err("writing its contents"))?;
        w.write_all(&f.content)
            .map_err(err("writing its contents"))?;
        drop(w);
        let target = Path::new(&f.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(err("creating its directory"))?;
        }
        if std::fs::symlink_metadata(target).is_err() {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(target)
                .map_err(err("creating the mount point"))?;
        }
        let to_io = |e: nix::errno::Errno| std::io::Error::from_raw_os_error(e as i32);
        mount(
            Some(&scratch),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err("bind mount")(to_io(e)))?;
        if f.read_only {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| err("read-only remount")(to_io(e)))?;
        }
        // The mount keeps the inode: the scratch name can go.
        std::fs::remove_file(&scratch).map_err(err("removing the scratch name"))?;
    }
    Ok(())
}

/// Gives files that are already placed new contents, in place (a running
/// guest's `/etc/hosts` after its address changed): the workload keeps
/// seeing them at their paths, with no mount stacked on the old. A target
/// that is not there yet is placed as [`place`] does.
pub fn rewrite(files: &[GuestFile]) -> Result<(), FileError> {
    for f in files {
        let err = |step: &'static str| {
            let path = f.path.clone();
            move |source| FileError { path, step, source }
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&f.path)
        {
            Ok(mut w) => w
                .write_all(&f.content)
                .map_err(err("writing its new contents"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => place(std::slice::from_ref(f))?,
            Err(e) => return Err(err("opening it for its new contents")(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, len: usize) -> GuestFile {
        GuestFile {
            path: path.into(),
            content: vec![b'x'; len],
            read_only: false,
        }
    }

    #[test]
    fn rewrite_replaces_the_contents_of_a_placed_file_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        std::fs::write(&p, "10.89.0.2 old-and-longer-than-the-new-one\n").unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        let f = GuestFile {
            path: p.to_string_lossy().into_owned(),
            content: b"10.89.0.3 new\n".to_vec(),
            read_only: false,
        };
        rewrite(&[f]).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "10.89.0.3 new\n");
        let same = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        assert_eq!(ino, same, "the file was replaced, not rewritten");
    }

    #[test]
    fn paths_must_be_absolute_and_stay_below_root() {
        assert!(validate(&[file("/etc/hosts", 10)]).is_ok());
        for bad in ["etc/hosts", "/", "/etc/../../x", "/a\0b"] {
            let e = validate(&[file("/ok", 1), file(bad, 1)]).unwrap_err();
            assert!(e.contains("files[1].path"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn sizes_and_counts_are_bounded() {
        let e = validate(&[file("/big", MAX_FILE_BYTES + 1)]).unwrap_err();
        assert!(e.contains("files[0]") && e.contains("/big"), "{e}");
        let many: Vec<_> = (0..=MAX_FILES)
            .map(|i| file(&format!("/f{i}"), 1))
            .collect();
        assert!(validate(&many).unwrap_err().contains("entries"));
    }
}
