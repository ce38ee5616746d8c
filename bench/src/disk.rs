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

fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) -> Result<(), DiskError> {
    let err = |source| DiskError::Read {
        path: p.display().to_string(),
        source,
    };
    let md = std::fs::symlink_metadata(p).map_err(err)?;
    if seen.insert((md.dev(), md.ino())) {
        *total += md.blocks() * 512;
    }
    if md.is_dir() {
        for e in std::fs::read_dir(p).map_err(err)? {
            walk(&e.map_err(err)?.path(), seen, total)?;
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
    }
}
