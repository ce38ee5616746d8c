//! Disk used by images and instances: allocated blocks under a directory,
//! each inode counted once (hard-linked layer files are not double-counted).

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Errors measuring disk use.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A directory could not be read.
    #[error("reading {path}")]
    Read {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Bytes allocated (st_blocks x 512) under `path`, not following symlinks,
/// counting each (device, inode) once across all `paths`.
pub fn usage_bytes(paths: &[&Path]) -> Result<u64, DiskError> {
    let mut seen = HashSet::new();
    let mut total = 0;
    for p in paths {
        walk(p, &mut seen, &mut total)?;
    }
    Ok(total)
}

/// Like [`usage_bytes`], but never descends into another file system than
/// the one each path is on: an instance directory's mounted root (overlay)
/// shows the image, which is not the instance's own disk use.
pub fn usage_bytes_one_fs(paths: &[&Path]) -> Result<u64, DiskError> {
    let mut seen = HashSet::new();
    let mut total = 0;
    for p in paths {
        let dev = std::fs::symlink_metadata(p)
            .map_err(|source| DiskError::Read {
                path: p.display().to_string(),
                source,
            })?
            .dev();
        walk_dev(p, Some(dev), &mut seen, &mut total)?;
    }
    Ok(total)
}

fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) -> Result<(), DiskError> {
    walk_dev(p, None, seen, total)
}

fn walk_dev(
    p: &Path,
    only_dev: Option<u64>,
    seen: &mut HashSet<(u64, u64)>,
    total: &mut u64,
) -> Result<(), DiskError> {
    let err = |source| DiskError::Read {
        path: p.display().to_string(),
        source,
    };
    let md = std::fs::symlink_metadata(p).map_err(err)?;
    if only_dev.is_some_and(|d| d != md.dev()) {
        return Ok(());
    }
    if seen.insert((md.dev(), md.ino())) {
        *total += md.blocks() * 512;
    }
    if md.is_dir() {
        for e in std::fs::read_dir(p).map_err(err)? {
            walk_dev(&e.map_err(err)?.path(), only_dev, seen, total)?;
        }
    }
    Ok(())
}

/// Disk for N instances of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskResult {
    /// Row label (e.g. `duet container`).
    pub label: String,
    /// Image's layers, bytes (counted once).
    pub image_bytes: u64,
    /// Instances measured.
    pub instances: u64,
    /// Everything the instances added on top of the image (writable layers or disk images), bytes.
    pub instances_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::write(&a, vec![7u8; 64 * 1024]).unwrap();
        let one = usage_bytes(&[d.path()]).unwrap();
        std::fs::hard_link(&a, d.path().join("b")).unwrap();
        let linked = usage_bytes(&[d.path()]).unwrap();
        assert!(one >= 64 * 1024, "{one}");
        assert_eq!(one, linked);
        std::fs::write(d.path().join("c"), vec![1u8; 64 * 1024]).unwrap();
        assert!(usage_bytes(&[d.path()]).unwrap() >= one + 64 * 1024);
        assert!(usage_bytes(&[Path::new("/nonexistent/x")]).is_err());
        // On one file system both walks agree.
        assert_eq!(
            usage_bytes_one_fs(&[d.path()]).unwrap(),
            usage_bytes(&[d.path()]).unwrap()
        );
    }

    #[test]
    fn one_fs_walk_skips_other_file_systems() {
        // /proc is its own file system: / counted with it would include it.
        let Ok(root) = std::fs::symlink_metadata("/") else {
            return;
        };
        let proc_dev = std::fs::symlink_metadata("/proc").unwrap().dev();
        assert_ne!(root.dev(), proc_dev, "/proc is a separate mount");
        // Walking /proc/self from / 's device counts nothing of /proc.
        let mut seen = HashSet::new();
        let mut total = 0;
        walk_dev(
            Path::new("/proc/self"),
            Some(root.dev()),
            &mut seen,
            &mut total,
        )
        .unwrap();
        assert_eq!(total, 0);
        assert!(seen.is_empty());
    }
}
