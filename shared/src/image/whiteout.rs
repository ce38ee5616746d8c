//! Layer unpacking with OCI/AUFS whiteouts turned into overlayfs's own form.
//!
//! In a layer tarball `dir/.wh.name` deletes `dir/name` from the layers below
//! and `dir/.wh..wh..opq` hides everything below `dir`. overlayfs spells the
//! same things as a 0:0 character device named `name` and the xattr
//! `trusted.overlay.opaque=y` on `dir` (what containerd's overlay snapshotter
//! does), so an unpacked layer can be used as a lowerdir directly.

use super::store::io_err;
use super::ImageError;
use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub use super::unpack::{unpack_layer, Unpacked};

/// File-name prefix that marks a whiteout in a layer tarball.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// File name that marks its directory as opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Opens a possibly gzip- or zstd-compressed tar stream (detected by magic bytes).
pub fn decompressed(mut r: impl Read + Send + 'static) -> io::Result<Box<dyn Read + Send>> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        let n = r.read(&mut magic[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let chained = io::Cursor::new(magic[..got].to_vec()).chain(r);
    if got >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(chained)))
    } else if got == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        let d = ruzstd::decoding::StreamingDecoder::new(chained)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(chained))
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths from tar have no NUL")
}

/// Creates an overlayfs whiteout (0:0 character device) at `p`.
pub fn make_whiteout(p: &Path) -> Result<(), ImageError> {
    let c = cpath(p);
    // SAFETY: c is a valid NUL-terminated path; mknod does not retain it.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
    if r != 0 {
        return Err(io_err("cannot create whiteout", p)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Marks a directory opaque for overlayfs.
pub fn set_opaque(dir: &Path) -> Result<(), ImageError> {
    let c = cpath(dir);
    let name = c"trusted.overlay.opaque";
    // SAFETY: both strings are NUL-terminated; value is a 1-byte buffer we own.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if r != 0 {
        return Err(io_err("cannot mark opaque", dir)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether `p` is an overlayfs whiteout.
pub fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether `dir` carries the opaque xattr.
pub fn is_opaque(dir: &Path) -> bool {
    let c = cpath(dir);
    let mut buf = [0u8; 4];
    // SAFETY: NUL-terminated strings; buf is ours and its length is passed.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

#[cfg(test)]
mod tests {
    use super::super::unpack::safe_relative;
    use super::*;
    use sha2::{Digest, Sha256};
    use std::path::PathBuf;

    pub(crate) fn tar_with(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn digest_is_sha256_of_stream() {
        let t = tempfile::tempdir().unwrap();
        let data = tar_with(&[("a/", None), ("a/f", Some(b"x"))]);
        let u = unpack_layer(&data[..], t.path(), Path::new("t.tar")).unwrap();
        assert_eq!(u.digest, hex::encode(Sha256::digest(&data)));
        assert_eq!(u.tar_bytes, data.len() as u64);
        assert_eq!(std::fs::read(t.path().join("a/f")).unwrap(), b"x");
    }

    #[test]
    fn whiteouts_become_overlay_form() {
        if crate::testing::skip_unless_root(
            "whiteouts_become_overlay_form",
            "creating 0:0 char devices and trusted.* xattrs",
        ) {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let data = tar_with(&[
            ("etc/", None),
            ("etc/.wh.motd", Some(b"")),
            ("opt/.wh..wh..opq", Some(b"")),
        ]);
        unpack_layer(&data[..], t.path(), Path::new("t.tar")).unwrap();
        let m = std::fs::symlink_metadata(t.path().join("etc/motd")).unwrap();
        assert!(is_whiteout(&m));
        assert!(!t.path().join("etc/.wh.motd").exists());
        assert!(is_opaque(&t.path().join("opt")));
        assert!(!is_opaque(&t.path().join("etc")));
    }

    #[test]
    fn escaping_paths_are_refused() {
        assert_eq!(safe_relative(Path::new("../x")), None);
        assert_eq!(
            safe_relative(Path::new("/a/./b")),
            Some(PathBuf::from("a/b"))
        );
        let t = tempfile::tempdir().unwrap();
        let mut raw = tar_with(&[("zz/f", Some(b"x"))]);
        // Patch the name field in place to "../f" (tar::Builder refuses to write it).
        raw[..4].copy_from_slice(b"../f");
        raw[4..100].fill(0);
        // Fix the header checksum.
        let mut h = tar::Header::from_byte_slice(&raw[..512]).clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        let e = unpack_layer(&raw[..], t.path(), Path::new("evil.tar")).unwrap_err();
        assert!(e.to_string().contains("evil.tar"), "{e}");
    }

    #[test]
    fn gzip_is_detected() {
        use std::io::Write;
        let data = tar_with(&[("f", Some(b"hello"))]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let mut out = Vec::new();
        decompressed(io::Cursor::new(gz))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        let mut plain = Vec::new();
        decompressed(io::Cursor::new(data.clone()))
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, data);
    }
}
