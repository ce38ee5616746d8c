//! Unpacking a tar stream into a directory that nothing in the archive can
//! leave: an image layer (whiteouts turned into overlayfs's form, see
//! `whiteout`) or the outer `docker save` / OCI layout archive.
//!
//! duet writes its own per-entry unpacker instead of tar-rs's `unpack_in`:
//! tar-rs checks names for `..` but then calls path-based `std::fs`
//! functions on `dest.join(name)`, which follow any symlink an earlier entry
//! planted (`x -> /etc`, then `x/passwd`), and whiteouts and opaque markers
//! need the same confinement anyway. Here every operation goes through
//! [`Beneath`], which resolves names inside the root only.

use super::beneath::{timestamps, At, Beneath};
use super::escape::escaped;
use super::store::io_err;
use super::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use super::ImageError;
use rustix::fs::{FileType, XattrFlags};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Largest logical size of a GNU sparse entry duet unpacks: its holes are
/// kept, but tar-rs hands them over as zeros to read, so a sparse entry that
/// claims a petabyte would keep the import busy for days.
pub const MAX_SPARSE_SIZE: u64 = 16 << 30;

/// AUFS metadata names (`.wh..wh.plnk`, `.wh..wh.aufs`) start with this;
/// they are skipped, as Docker does.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// xattrs an archive may not set: overlayfs reads `trusted.overlay.*` on
/// lower layers (redirects, metacopy), so only duet's own opaque marker,
/// made from `.wh..wh..opq`, may put them there.
const REFUSED_XATTR_PREFIX: &str = "trusted.overlay.";

/// What is being unpacked, which decides what entries mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// An image layer: whiteouts, owners, modes, mtimes and xattrs are kept;
    /// device nodes are skipped and reported.
    Layer,
    /// An outer archive (`docker save`, OCI layout): only directories,
    /// regular files and links; anything else is refused.
    Outer,
}

/// Result of unpacking one tar stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 (hex) of the uncompressed tar stream.
    pub digest: String,
    /// Bytes of the uncompressed tar stream.
    pub tar_bytes: u64,
    /// Device nodes that were not created (names escaped for printing).
    pub skipped_devices: Vec<String>,
    /// Other things worth telling the user (already escaped).
    pub warnings: Vec<String>,
}

/// A reader that hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Unpacks an (uncompressed) layer tar stream into `dest`, converting
/// whiteouts, and returns its digest. `what` names the source in errors.
pub fn unpack_layer(tar: impl Read, dest: &Path, what: &Path) -> Result<Unpacked, ImageError> {
    unpack(tar, dest, what, Flavor::Layer)
}

/// Unpacks an (uncompressed) tar stream of `flavor` into `dest`.
pub fn unpack(
    tar: impl Read,
    dest: &Path,
    what: &Path,
    flavor: Flavor,
) -> Result<Unpacked, ImageError> {
    // tar reads 512-byte headers one by one: a buffer keeps those from
    // becoming one decompressor call each.
    let hr = HashingReader {
        inner: io::BufReader::with_capacity(COPY_BUF, tar),
        hasher: Sha256::new(),
        bytes: 0,
    };
    unpack_digesting(hr, dest, what, flavor)
}

/// A tar stream that computes its own digest: [`HashingReader`] as it is
/// read, or a [`super::read_ahead::ReadAhead`] on its thread.
pub trait Digesting: Read {
    /// Reads the rest of the stream; the sha256 (hex) and length of all of it.
    fn finish(self) -> io::Result<(String, u64)>;
}

impl<R: Read> Digesting for HashingReader<R> {
    fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex::encode(self.hasher.finalize()), self.bytes))
    }
}

/// [`unpack_layer`] of a stream that hashes itself.
pub fn unpack_layer_digesting(
    tar: impl Digesting,
    dest: &Path,
    what: &Path,
) -> Result<Unpacked, ImageError> {
    unpack_digesting(tar, dest, what, Flavor::Layer)
}

fn unpack_digesting(
    mut hr: impl Digesting,
    dest: &Path,
    what: &Path,
    flavor: Flavor,
) -> Result<Unpacked, ImageError> {
    let mut u = Unpacker {
        root: Beneath::open(dest).map_err(io_err("cannot open", dest))?,
        archive: what.to_path_buf(),
        flavor,
        // SAFETY: geteuid has no preconditions and cannot fail.
        chown: unsafe { libc::geteuid() } == 0,
        dir_times: Vec::new(),
        skipped: HashSet::new(),
        skipped_devices: Vec::new(),
        warnings: Vec::new(),
        buf: vec![0u8; COPY_BUF],
    };
    {
        let mut archive = tar::Archive::new(&mut hr);
        let entries = archive
            .entries()
            .map_err(|e| u.bad(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| u.bad(format!("corrupt tar entry: {e}")))?;
            u.entry(&mut entry)?;
        }
    }
    u.finish()?;
    // Hash the trailing blocks too, so the digest is that of the whole stream.
    let (digest, tar_bytes) = hr.finish().map_err(|e| u.bad(format!("read error: {e}")))?;
    Ok(Unpacked {
        digest,
        tar_bytes,
        skipped_devices: u.skipped_devices,
        warnings: u.warnings,
    })
}

struct Unpacker {
    root: Beneath,
    archive: PathBuf,
    flavor: Flavor,
    /// Whether to give entries their owners (only root can).
    chown: bool,
    /// Directory mtimes, set at the end (later entries would change them).
    dir_times: Vec<(PathBuf, i64)>,
    /// Entries not created (device nodes), so hard links to them are skipped too.
    skipped: HashSet<PathBuf>,
    skipped_devices: Vec<String>,
    warnings: Vec<String>,
    /// The copy buffer for file contents, one for all files of the layer.
    buf: Vec<u8>,
}

/// Bytes read at once from the tar stream and into a file's contents.
const COPY_BUF: usize = 256 * 1024;

/// The metadata of one entry, from its header.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Unpacker {
    fn bad(&self, message: String) -> ImageError {
        ImageError::Format {
            path: self.archive.clone(),
            message,
        }
    }

    fn fail<'a>(
        &'a self,
        what: &'static str,
        entry: &'a str,
    ) -> impl FnOnce(io::Error) -> ImageError + 'a {
        move |source| ImageError::Entry {
            archive: self.archive.clone(),
            entry: entry.to_string(),
            what,
            source,
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry.path_bytes().into_owned();
        let shown = escaped(&raw);
        let path = Path::new(OsStr::from_bytes(&raw));
        if is_layer_root(path) {
            return Ok(()); // "./": the root directory itself
        }
        let rel = safe_relative(path)
            .ok_or_else(|| self.bad(format!("entry `{shown}` escapes the layer")))?;
        let name = rel.file_name().unwrap_or_default().as_bytes();
        if self.flavor == Flavor::Layer {
            if name == OPAQUE_MARKER.as_bytes() {
                let dir = self
                    .root
                    .dir(rel.parent().unwrap_or(Path::new("")))
                    .map_err(self.fail("create the directory of opaque marker", &shown))?;
                return rustix::fs::fsetxattr(
                    &dir,
                    "trusted.overlay.opaque",
                    b"y",
                    XattrFlags::empty(),
                )
                .map_err(|e| self.fail("mark opaque the directory of", &shown)(e.into()));
            }
            if name.starts_with(AUFS_META_PREFIX) {
                return Ok(());
            }
            if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                return self.whiteout(&rel, target, &shown);
            }
        }
        let header = entry.header();
        let kind = header.entry_type();
        let device = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
        let meta = Meta {
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            uid: header.uid().unwrap_or(0) as u32,
            gid: header.gid().unwrap_or(0) as u32,
            mtime: header.mtime().unwrap_or(0) as i64,
            xattrs: if self.flavor == Flavor::Layer {
                xattrs(entry).map_err(self.fail("read the xattrs of", &shown))?
            } else {
                Vec::new()
            },
        };
        let at = self
            .root
            .parent_of(&rel)
            .map_err(self.fail("create the parent directory of", &shown))?;
        use tar::EntryType as T;
        match kind {
            T::Directory => self.directory(&rel, &at, &meta, &shown),
            T::Regular | T::Continuous | T::GNUSparse => {
                self.regular(entry, &at, &meta, &shown, kind.is_gnu_sparse())
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.bad(format!("symlink `{shown}` has no target")))?
                    .into_owned();
                at.remove_all().map_err(self.fail("replace", &shown))?;
                at.symlink(Path::new(OsStr::from_bytes(&target)))
                    .map_err(self.fail("create symlink", &shown))?;
                self.owner_and_time(&at, &meta, &shown)
            }
            T::Link => self.hard_link(entry, &rel, &at, &shown),
            T::Fifo if self.flavor == Flavor::Layer => {
                at.remove_all().map_err(self.fail("replace", &shown))?;
                at.mknod(FileType::Fifo, 0o600, 0)
                    .map_err(self.fail("create fifo", &shown))?;
                self.owner_mode_time(&at, &meta, &shown)
            }
            T::Char | T::Block if self.flavor == Flavor::Layer => {
                let (major, minor) = device;
                if kind == T::Char && major == 0 && minor == 0 {
                    // Already an overlayfs whiteout: keep it as one.
                    at.remove_all().map_err(self.fail("replace", &shown))?;
                    return at
                        .mknod(FileType::CharacterDevice, 0, 0)
                        .map_err(self.fail("create whiteout", &shown));
                }
                // Device nodes are not created: an image's /dev is made at run
                // time, and a node in a layer directory on the host would let
                // anyone who can reach the store open a host device.
                let c = if kind == T::Char { 'c' } else { 'b' };
                self.skipped_devices
                    .push(format!("{shown} ({c} {major}:{minor})"));
                self.skipped.insert(rel);
                Ok(())
            }
            T::XGlobalHeader => Ok(()),
            other if self.flavor == Flavor::Layer => {
                self.warnings.push(format!(
                    "skipped entry `{shown}` of unsupported tar type {:?}",
                    other
                ));
                Ok(())
            }
            other => Err(self.bad(format!(
                "member `{shown}` is a {}: only directories, regular files and links belong in an image archive",
                kind_name(other)
            ))),
        }
    }

    fn whiteout(&mut self, rel: &Path, target: &[u8], shown: &str) -> Result<(), ImageError> {
        if target.is_empty() || target == b"." || target == b".." {
            return Err(self.bad(format!(
                "whiteout `{shown}` names no file (`.wh.` followed by `{}`)",
                escaped(target)
            )));
        }
        let parent = self
            .root
            .dir(rel.parent().unwrap_or(Path::new("")))
            .map_err(self.fail("create the directory of whiteout", shown))?;
        let at = At {
            dir: parent,
            name: OsStr::from_bytes(target),
        };
        at.remove_all()
            .map_err(self.fail("remove what whiteout hides:", shown))?;
        at.mknod(FileType::CharacterDevice, 0, 0)
            .map_err(self.fail("create whiteout", shown))
    }

    fn directory(
        &mut self,
        rel: &Path,
        at: &At<'_>,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), ImageError> {
        match at.lstat().map_err(self.fail("stat", shown))? {
            Some(s) if FileType::from_raw_mode(s.st_mode) == FileType::Directory => {}
            Some(_) => {
                at.remove_all().map_err(self.fail("replace", shown))?;
                at.mkdir(0o700)
                    .map_err(self.fail("create directory", shown))?;
            }
            None => at
                .mkdir(0o700)
                .map_err(self.fail("create directory", shown))?,
        }
        let fd = at.open_dir().map_err(self.fail("open directory", shown))?;
        self.fd_meta(&fd, meta, shown)?;
        self.dir_times.push((rel.to_path_buf(), meta.mtime));
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        at: &At<'_>,
        meta: &Meta,
        shown: &str,
        sparse: bool,
    ) -> Result<(), ImageError> {
        if sparse && entry.size() > MAX_SPARSE_SIZE {
            return Err(self.bad(format!(
                "sparse file `{shown}` claims {} bytes, more than duet unpacks ({} GiB)",
                entry.size(),
                MAX_SPARSE_SIZE >> 30
            )));
        }
        // Created first (O_EXCL, never through a symlink); only an entry in
        // the way (an earlier entry of this archive at the same path) costs
        // a removal.
        let mut f = match at.create_file() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                at.remove_all().map_err(self.fail("replace", shown))?;
                at.create_file().map_err(self.fail("create", shown))?
            }
            Err(e) => return Err(self.fail("create", shown)(e)),
        };
        copy_keeping_holes(entry, &mut f, &mut self.buf).map_err(self.fail("write", shown))?;
        self.fd_meta(&f, meta, shown)?;
        rustix::fs::futimens(&f, &timestamps(meta.mtime))
            .map_err(|e| self.fail("set the mtime of", shown)(e.into()))
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        at: &At<'_>,
        shown: &str,
    ) -> Result<(), ImageError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| self.bad(format!("hard link `{shown}` has no target")))?
            .into_owned();
        let source_rel = safe_relative(Path::new(OsStr::from_bytes(&target))).ok_or_else(|| {
            self.bad(format!(
                "hard link `{shown}` points outside the layer (`{}`)",
                escaped(&target)
            ))
        })?;
        if self.skipped.contains(&source_rel) {
            self.skipped.insert(rel.to_path_buf());
            return Ok(());
        }
        let source = self
            .root
            .existing_parent_of(&source_rel)
            .map_err(self.fail("find the target of hard link", shown))?;
        let src = source
            .lstat()
            .map_err(self.fail("stat the target of hard link", shown))?;
        let dst = at.lstat().map_err(self.fail("stat", shown))?;
        if let (Some(s), Some(d)) = (&src, &dst) {
            if (s.st_dev, s.st_ino) == (d.st_dev, d.st_ino) {
                return Ok(()); // already the same file
            }
        }
        at.remove_all().map_err(self.fail("replace", shown))?;
        at.hard_link_from(&source)
            .map_err(self.fail("create hard link", shown))
    }

    /// Owner, mode and xattrs through an open fd of the entry.
    fn fd_meta(&mut self, fd: &impl AsFd, meta: &Meta, shown: &str) -> Result<(), ImageError> {
        if self.flavor == Flavor::Outer {
            return Ok(());
        }
        if self.chown {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )
            .map_err(|e| self.fail("set the owner of", shown)(e.into()))?;
        }
        // After chown, which clears setuid/setgid bits.
        rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(meta.mode))
            .map_err(|e| self.fail("set the mode of", shown)(e.into()))?;
        for (k, v) in &meta.xattrs {
            match rustix::fs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty()) {
                Ok(()) => {}
                // The store's file system does not keep this xattr namespace: say so.
                Err(rustix::io::Errno::NOTSUP) => self.warnings.push(format!(
                    "xattr `{}` of `{shown}` not kept (the store's file system does not support it)",
                    escaped(k.as_bytes())
                )),
                Err(e) => return Err(self.fail("set an xattr of", shown)(e.into())),
            }
        }
        Ok(())
    }

    fn owner_and_time(&self, at: &At<'_>, meta: &Meta, shown: &str) -> Result<(), ImageError> {
        if self.flavor == Flavor::Outer {
            return Ok(());
        }
        if self.chown {
            at.chown(meta.uid, meta.gid)
                .map_err(self.fail("set the owner of", shown))?;
        }
        at.set_mtime(meta.mtime)
            .map_err(self.fail("set the mtime of", shown))
    }

    fn owner_mode_time(&self, at: &At<'_>, meta: &Meta, shown: &str) -> Result<(), ImageError> {
        if self.chown {
            at.chown(meta.uid, meta.gid)
                .map_err(self.fail("set the owner of", shown))?;
        }
        at.chmod_non_symlink(meta.mode)
            .map_err(self.fail("set the mode of", shown))?;
        at.set_mtime(meta.mtime)
            .map_err(self.fail("set the mtime of", shown))
    }

    fn finish(&mut self) -> Result<(), ImageError> {
        for (rel, mtime) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            let shown = escaped(rel.as_os_str().as_bytes());
            // The directory may have been replaced or whited out since.
            if let Ok(at) = self.root.existing_parent_of(&rel) {
                match at.set_mtime(mtime) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.fail("set the mtime of", &shown)(e)),
                }
            }
        }
        Ok(())
    }
}

/// The `SCHILY.xattr.*` pax records of an entry, less those overlayfs reads.
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if !name.starts_with(REFUSED_XATTR_PREFIX) && !name.is_empty() {
                    out.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(out)
}

/// Copies `src` into `f`, seeking over 4 KiB blocks of zeros so they stay
/// holes (GNU sparse entries arrive with their holes as zeros).
fn copy_keeping_holes(
    src: &mut impl Read,
    f: &mut std::fs::File,
    buf: &mut [u8],
) -> io::Result<u64> {
    const BLOCK: usize = 4096;
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    // A slice comparison is one memcmp, fast in debug builds too.
    let zero = |b: &[u8]| b == &ZEROS[..b.len()];
    let mut len = 0u64;
    // Whether the file ends in a hole, which only set_len makes part of it.
    let mut trailing_hole = false;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match src.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        // One write per run of data blocks, one seek per run of zero blocks.
        let mut at = 0;
        while at < n {
            let hole = zero(&buf[at..n.min(at + BLOCK)]);
            let mut end = n.min(at + BLOCK);
            while end < n && zero(&buf[end..n.min(end + BLOCK)]) == hole {
                end = n.min(end + BLOCK);
            }
            if hole {
                f.seek(SeekFrom::Current((end - at) as i64))?;
            } else {
                f.write_all(&buf[at..end])?;
            }
            trailing_hole = hole;
            at = end;
        }
        len += n as u64;
        if n < buf.len() {
            break;
        }
    }
    if trailing_hole {
        f.set_len(len)?;
    }
    Ok(len)
}

fn kind_name(t: tar::EntryType) -> &'static str {
    use tar::EntryType as T;
    match t {
        T::Char => "character device",
        T::Block => "block device",
        T::Fifo => "fifo",
        _ => "entry of an unsupported type",
    }
}

/// Whether a tar path names the archive root itself (`.`, `./`, `/`).
fn is_layer_root(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::CurDir | Component::RootDir))
}

/// `path` without root, `.` or `..` components; None if it would escape.
pub(crate) fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

#[cfg(test)]
mod copy_tests {
    use super::copy_keeping_holes;
    use std::io::Read;

    /// Runs of data and zeros, across the copy buffer's edges, come out as
    /// they went in; whole zero blocks become holes.
    #[test]
    fn runs_of_data_and_zeros_are_copied_exactly() {
        let mut src = Vec::new();
        src.extend((0..5000u32).map(|i| (i % 251 + 1) as u8));
        src.extend(std::iter::repeat_n(0u8, 3 * 4096 + 100));
        src.extend([7u8; 3]);
        src.extend(std::iter::repeat_n(0u8, 40 * 4096));
        src.extend([9u8; 4096 * 5]);
        src.extend(std::iter::repeat_n(0u8, 4096 + 17));
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        for buf_len in [4096, 8192, 3 * 4096 + 5, 256 * 1024] {
            let mut f = std::fs::File::create(&p).unwrap();
            let mut buf = vec![0xAAu8; buf_len];
            let n = copy_keeping_holes(&mut &src[..], &mut f, &mut buf).unwrap();
            assert_eq!(n, src.len() as u64);
            drop(f);
            let mut got = Vec::new();
            std::fs::File::open(&p)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            assert!(got == src, "buffer of {buf_len}: contents differ");
            let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&p).unwrap());
            assert!(
                blocks * 512 < src.len() as u64 / 2,
                "buffer of {buf_len}: the 40 zero blocks are a hole ({blocks} sectors)"
            );
        }
    }
}
