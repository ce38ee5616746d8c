//! Read-only file-system images of layers, for microVMs: each layer gets,
//! once, `layers/sha256/<hex>/layer.erofs` next to its unpacked `fs/`, built
//! with `mkfs.erofs` (Debian's erofs-utils). Every VM that uses the layer
//! attaches that same file read-only as a virtio-blk disk, so the host page
//! cache holds one copy of it for all of them, as overlayfs lowerdirs do for
//! containers.
//!
//! erofs rather than ext4 (`mkfs.ext4 -d`): measured on the busybox layer
//! (2.0 MB, 289 entries) on the development host, mkfs.erofs took ~20-50 ms
//! and wrote a 2.0 MB image; mkfs.ext4 -d took ~40 ms and needs its size
//! chosen up front (8 MiB, of which 3.2 MB were used: too small fails, too
//! large wastes). erofs images are exactly as large as their content, are
//! read-only by construction (a guest cannot mount one read-write by
//! mistake), and keep what the unpacked layer holds: ownership, modes,
//! mtimes (`--preserve-mtime`), xattrs, overlay whiteouts (0:0 character
//! devices) and `trusted.overlay.opaque` (checked by a test). Data is left
//! uncompressed: decompressing in the guest would cost CPU on every boot,
//! and the host page cache holds the image once anyway.
//!
//! Builds are atomic (a temporary file renamed into place) and serialized per
//! layer by a lock file, so concurrent first runs build once and every VM
//! attaches the same inode.

use super::store::ImageStore;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// File name of a layer's image inside its layer directory.
pub const LAYER_IMAGE_FILE: &str = "layer.erofs";
/// Chunk size of chunk-based erofs files (holes are kept per chunk; erofs
/// reads them since Linux 5.15, duet's guest kernel is 6.1).
pub const EROFS_CHUNK: u32 = 4096;
/// The tool that builds layer images.
pub const MKFS_EROFS: &str = "mkfs.erofs";

/// Errors building a layer image; each names the layer or file.
#[derive(Debug, thiserror::Error)]
pub enum LayerImageError {
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
    /// mkfs.erofs is not installed.
    #[error("cannot run {MKFS_EROFS} to build the disk image of layer sha256:{digest} (install it with `apt-get install erofs-utils`)")]
    MkfsMissing {
        /// Layer digest.
        digest: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// mkfs.erofs ran and failed.
    #[error("{MKFS_EROFS} failed for layer sha256:{digest} ({status}): {stderr}")]
    MkfsFailed {
        /// Layer digest.
        digest: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The image is not a whole number of 512-byte sectors (a disk must be).
    #[error("layer image {} is {size} bytes, not a multiple of 512", path.display())]
    Size {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LayerImageError + 'a {
    move |source| LayerImageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A layer's disk image and what getting it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerImage {
    /// Layer digest (hex sha256).
    pub digest: String,
    /// The image file.
    pub path: PathBuf,
    /// Whether this call built it (false: it was already there).
    pub built: bool,
    /// Time spent (lookup, or lock + build).
    pub elapsed: Duration,
}

/// Where the image of layer `digest` lives.
pub fn layer_image_path(store: &ImageStore, digest: &str) -> PathBuf {
    store.layer_path(digest).join(LAYER_IMAGE_FILE)
}

/// The image of layer `digest`, built now if it does not exist yet.
pub fn ensure_layer_image(store: &ImageStore, digest: &str) -> Result<LayerImage, LayerImageError> {
    let t0 = Instant::now();
    let path = layer_image_path(store, digest);
    let done = |built| LayerImage {
        digest: digest.to_string(),
        path: path.clone(),
        built,
        elapsed: t0.elapsed(),
    };
    if path.is_file() {
        return Ok(done(false));
    }
    let layer_dir = store.layer_path(digest);
    let lock_path = layer_dir.join(".layer-image.lock");
    let lock = File::create(&lock_path).map_err(io_err("cannot create lock file", &lock_path))?;
    crate::paths::flock_exclusive(&lock).map_err(io_err("cannot lock", &lock_path))?;
    // Another process may have built it while this one waited.
    if path.is_file() {
        return Ok(done(false));
    }
    build(&store.layer_dir(digest), &path, digest)?;
    Ok(done(true))
}

/// [`ensure_layer_image`] for each layer, bottom first.
pub fn ensure_layer_images(
    store: &ImageStore,
    digests: &[String],
) -> Result<Vec<LayerImage>, LayerImageError> {
    digests
        .iter()
        .map(|d| ensure_layer_image(store, d))
        .collect()
}

/// Builds an erofs image of `tree` at `dest` through a temporary file.
fn build(tree: &Path, dest: &Path, digest: &str) -> Result<(), LayerImageError> {
    let tmp = dest.with_extension(format!(
        "erofs.tmp.{}.{}",
        std::process::id(),
        crate::clock::monotonic_ns()
    ));
    let result = (|| {
        let out = Command::new(MKFS_EROFS)
            .arg("--quiet")
            .arg("--preserve-mtime")
            // Chunk-based files keep holes: without it mkfs.erofs writes every
            // hole of a sparse file as zeros (a 1 GiB hole became a 1 GiB image).
            .arg(format!("--chunksize={EROFS_CHUNK}"))
            .arg(&tmp)
            .arg(tree)
            .output()
            .map_err(|source| LayerImageError::MkfsMissing {
                digest: digest.to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(LayerImageError::MkfsFailed {
                digest: digest.to_string(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let f = File::open(&tmp).map_err(io_err("cannot open", &tmp))?;
        let size = f.metadata().map_err(io_err("cannot stat", &tmp))?.len();
        if size % 512 != 0 {
            return Err(LayerImageError::Size {
                path: dest.to_path_buf(),
                size,
            });
        }
        f.sync_all().map_err(io_err("cannot sync", &tmp))?;
        std::fs::rename(&tmp, dest).map_err(io_err("cannot move layer image into place:", dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Whether mkfs.erofs runs; otherwise the calling test skips (see crate::testing).
    fn have_mkfs() -> bool {
        let ok = Command::new(MKFS_EROFS).arg("--help").output().is_ok();
        ok || !crate::testing::skip(
            &crate::testing::this_test(),
            &format!("{MKFS_EROFS} is not installed (apt-get install erofs-utils)"),
        )
    }

    fn store_with_layer(digest: &str) -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let fs = store.layer_dir(digest);
        std::fs::create_dir_all(fs.join("etc")).unwrap();
        std::fs::write(fs.join("etc/hello"), "hello\n").unwrap();
        (dir, store)
    }

    #[test]
    fn built_once_then_reused_with_the_same_inode() {
        if !have_mkfs() {
            return;
        }
        let (_d, store) = store_with_layer("aa");
        let first = ensure_layer_image(&store, "aa").unwrap();
        assert!(first.built);
        assert_eq!(first.path, store.layer_path("aa").join("layer.erofs"));
        let ino = std::fs::metadata(&first.path).unwrap().ino();
        let again = ensure_layer_images(&store, &["aa".to_string()]).unwrap();
        assert!(!again[0].built);
        assert_eq!(std::fs::metadata(&again[0].path).unwrap().ino(), ino);
        // An erofs superblock (magic 0xe0f5e1e2 at offset 1024).
        let bytes = std::fs::read(&first.path).unwrap();
        assert_eq!(&bytes[1024..1028], &0xe0f5_e1e2u32.to_le_bytes());
        assert_eq!(bytes.len() % 512, 0);
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(store.layer_path("aa"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp.")), "{names:?}");
    }

    #[test]
    fn a_failed_build_names_the_layer_and_leaves_nothing() {
        if !have_mkfs() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        // The layer directory exists but its fs/ tree does not.
        std::fs::create_dir_all(store.layer_path("bb")).unwrap();
        let e = ensure_layer_image(&store, "bb").unwrap_err();
        assert!(e.to_string().contains("sha256:bb"), "{e}");
        assert!(!layer_image_path(&store, "bb").exists());
        let leftovers = std::fs::read_dir(store.layer_path("bb"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != ".layer-image.lock")
            .count();
        assert_eq!(leftovers, 0);
    }

    /// A sparse file in a layer stays sparse in its image (mkfs.erofs
    /// without `--chunksize` writes every hole out as zeros).
    #[test]
    fn sparse_files_do_not_expand_in_the_layer_image() {
        if !have_mkfs() {
            return;
        }
        let (_d, store) = store_with_layer("dd");
        let f = File::create(store.layer_dir("dd").join("sparse")).unwrap();
        f.set_len(256 << 20).unwrap();
        drop(f);
        let img = ensure_layer_image(&store, "dd").unwrap();
        let m = std::fs::metadata(&img.path).unwrap();
        assert!(
            m.len() < 8 << 20 && m.blocks() * 512 < 8 << 20,
            "a 256 MiB hole made a {} byte image ({} blocks)",
            m.len(),
            m.blocks()
        );
    }

    /// Whiteouts, opaque directories and ownership survive into the image
    /// (mounting it needs root and loop devices).
    #[test]
    fn whiteouts_opaque_dirs_and_owners_survive() {
        if !have_mkfs() {
            return;
        }
        if crate::testing::skip_unless_root(
            "whiteouts_opaque_dirs_and_owners_survive",
            "mknod of a whiteout, trusted.* xattrs, loop mount",
        ) {
            return;
        }
        let (_d, store) = store_with_layer("cc");
        let fs = store.layer_dir("cc");
        std::fs::create_dir_all(fs.join("opaque/sub")).unwrap();
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let wh = c(&fs.join("gone"));
        // SAFETY: a NUL-terminated path; creates a 0:0 character device (an overlay whiteout).
        assert_eq!(
            unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR | 0o644, 0) },
            0
        );
        let od = c(&fs.join("opaque"));
        // SAFETY: NUL-terminated path, name and a 1-byte value that outlive the call.
        let r = unsafe {
            libc::setxattr(
                od.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        std::os::unix::fs::chown(fs.join("etc/hello"), Some(1000), Some(1001)).unwrap();
        let img = ensure_layer_image(&store, "cc").unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(&img.path)
            .arg(mnt.path())
            .status()
            .unwrap();
        if !st.success()
            && crate::testing::skip(
                "whiteouts_opaque_dirs_and_owners_survive",
                &format!("cannot loop-mount an erofs image here ({st})"),
            )
        {
            return;
        }
        let check = || {
            let m = std::fs::symlink_metadata(mnt.path().join("gone")).unwrap();
            assert_eq!(m.mode() & libc::S_IFMT, libc::S_IFCHR);
            assert_eq!(m.rdev(), 0);
            let h = std::fs::metadata(mnt.path().join("etc/hello")).unwrap();
            assert_eq!((h.uid(), h.gid()), (1000, 1001));
            let mut v = [0u8; 4];
            let od = c(&mnt.path().join("opaque"));
            // SAFETY: NUL-terminated path and name; `v` is a writable buffer of its length.
            let n = unsafe {
                libc::getxattr(
                    od.as_ptr(),
                    c"trusted.overlay.opaque".as_ptr(),
                    v.as_mut_ptr().cast(),
                    v.len(),
                )
            };
            assert_eq!(n, 1);
            assert_eq!(v[0], b'y');
        };
        let res = std::panic::catch_unwind(check);
        let _ = Command::new("umount").arg(mnt.path()).status();
        if let Err(p) = res {
            std::panic::resume_unwind(p);
        }
    }
}
