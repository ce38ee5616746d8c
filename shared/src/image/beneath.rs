//! File operations confined to one directory (a layer's root, or the scratch
//! directory an outer archive is unpacked into), whatever the names and
//! symlinks in an archive say.
//!
//! Every path is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)`
//! relative to a directory fd of the root, and the final component is then
//! used through an `*at` call that does not follow it (`O_NOFOLLOW`,
//! `AT_SYMLINK_NOFOLLOW`, `unlinkat`, `mknodat`, `symlinkat`, `linkat`
//! without `AT_SYMLINK_FOLLOW`). No path string is ever handed to a
//! path-based call, so nothing is resolved against the host's `/`.
//!
//! Why `RESOLVE_IN_ROOT` rather than `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`:
//! IN_ROOT resolves an archive's own symlinks the way the workload will see
//! them (an absolute target or a `..` is clamped to the root, as in a chroot),
//! so real layers that write through a symlink they ship (`lib -> usr/lib`)
//! and `docker save` archives whose duplicate layers are symlinks
//! (`<id>/layer.tar -> ../<other>/layer.tar`) still import, while no
//! resolution can reach a host path. NO_SYMLINKS would refuse both.
//! `RESOLVE_NO_MAGICLINKS` keeps `/proc`-style links out, `RESOLVE_NO_XDEV`
//! keeps resolution on the store's own file system.

use rustix::fs::{AtFlags, Dev, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// The flags every resolution under a [`Beneath`] root uses.
fn resolve_flags() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV
}

/// A directory that every operation is confined to.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
}

/// An entry named by its (already resolved) parent directory and last component.
pub struct At<'a> {
    /// The parent directory, resolved beneath the root.
    pub dir: OwnedFd,
    /// The final component, never followed.
    pub name: &'a OsStr,
}

impl Beneath {
    /// Opens `root` (itself a real directory, not a symlink) as the confining root.
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath { root: fd })
    }

    /// Opens `rel` beneath the root, following symlinks only within it.
    pub fn open_in_root(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        self.resolve(rel, flags)
    }

    fn resolve(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        loop {
            match rustix::fs::openat2(
                &self.root,
                rel,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                resolve_flags(),
            ) {
                // openat2 asks callers to retry when a rename raced the lookup.
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                r => return r.map_err(io::Error::from),
            }
        }
    }

    /// The directory `rel` beneath the root, created (0755) with its missing
    /// parents as `mkdir -p` would, but never outside the root.
    pub fn dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY;
        match self.resolve(rel, flags) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            r => return r,
        }
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return self.resolve(rel, flags);
        };
        let pfd = self.dir(parent)?;
        match rustix::fs::mkdirat(&pfd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        // A dangling symlink in the way stays ENOENT here: an error, not a loop.
        self.resolve(rel, flags).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOENT) {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "a symlink on the way leads to no directory inside the root",
                )
            } else {
                e
            }
        })
    }

    /// The parent directory of `rel` (created if missing) and its last component.
    pub fn parent_of<'a>(&self, rel: &'a Path) -> io::Result<At<'a>> {
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let dir = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        Ok(At { dir, name })
    }

    /// The parent directory of `rel` if it exists (nothing is created).
    pub fn existing_parent_of<'a>(&self, rel: &'a Path) -> io::Result<At<'a>> {
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let dir = self.resolve(
            rel.parent().unwrap_or(Path::new("")),
            OFlags::RDONLY | OFlags::DIRECTORY,
        )?;
        Ok(At { dir, name })
    }
}

impl At<'_> {
    /// `lstat` of the entry; None if it does not exist.
    pub fn lstat(&self) -> io::Result<Option<Stat>> {
        match rustix::fs::statat(&self.dir, self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(s)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the entry (a directory with everything in it); missing is fine.
    pub fn remove_all(&self) -> io::Result<()> {
        remove_all_at(self.dir.as_fd(), self.name)
    }

    /// Creates a directory.
    pub fn mkdir(&self, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::mkdirat(
            &self.dir,
            self.name,
            Mode::from_raw_mode(mode),
        )?)
    }

    /// Opens the entry as a directory without following a symlink.
    pub fn open_dir(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.dir,
            self.name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// Creates a new regular file (fails if anything is there), open for writing.
    pub fn create_file(&self) -> io::Result<std::fs::File> {
        let fd = rustix::fs::openat(
            &self.dir,
            self.name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(std::fs::File::from(fd))
    }

    /// Creates a symlink pointing at `target` (stored as is, never resolved here).
    pub fn symlink(&self, target: &Path) -> io::Result<()> {
        Ok(rustix::fs::symlinkat(target, &self.dir, self.name)?)
    }

    /// Creates a hard link to `source` (itself not followed if it is a symlink).
    pub fn hard_link_from(&self, source: &At<'_>) -> io::Result<()> {
        Ok(rustix::fs::linkat(
            &source.dir,
            source.name,
            &self.dir,
            self.name,
            AtFlags::empty(),
        )?)
    }

    /// Creates a fifo or a device node.
    pub fn mknod(&self, kind: FileType, mode: u32, dev: Dev) -> io::Result<()> {
        Ok(rustix::fs::mknodat(
            &self.dir,
            self.name,
            kind,
            Mode::from_raw_mode(mode),
            dev,
        )?)
    }

    /// Sets owner, not following a symlink.
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        Ok(rustix::fs::chownat(
            &self.dir,
            self.name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Sets the mode of an entry this import just created as a non-symlink
    /// (checked here): `fchmodat` has no portable no-follow flag, and the
    /// scratch tree is written only by this process, so the name cannot turn
    /// into a symlink between the check and the call.
    pub fn chmod_non_symlink(&self, mode: u32) -> io::Result<()> {
        match self.lstat()? {
            Some(s) if FileType::from_raw_mode(s.st_mode) != FileType::Symlink => {
                Ok(rustix::fs::chmodat(
                    &self.dir,
                    self.name,
                    Mode::from_raw_mode(mode),
                    AtFlags::empty(),
                )?)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file, directory or node",
            )),
        }
    }

    /// Sets access and modification time to `mtime` (seconds), not following a symlink.
    pub fn set_mtime(&self, mtime: i64) -> io::Result<()> {
        Ok(rustix::fs::utimensat(
            &self.dir,
            self.name,
            &timestamps(mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }
}

/// Access and modification time both set to `mtime` seconds.
pub fn timestamps(mtime: i64) -> rustix::fs::Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn remove_all_at(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => s,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?);
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(&sub)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(std::ffi::OsString::from(
                <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(n),
            ));
        }
    }
    for n in names {
        remove_all_at(sub.as_fd(), &n)?;
    }
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}
