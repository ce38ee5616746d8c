//! Where duet keeps its state: `DUET_ROOT` (default `/var/lib/duet`).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Default state root when `DUET_ROOT` is not set.
pub const DEFAULT_ROOT: &str = "/var/lib/duet";

/// The state root: `$DUET_ROOT`, or `/var/lib/duet`.
pub fn state_root() -> PathBuf {
    match std::env::var_os("DUET_ROOT") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_ROOT),
    }
}

/// duet's cache for build products that live outside the repo (guest kernels):
/// `$XDG_CACHE_HOME/duet`, else `$HOME/.cache/duet`, else `/var/cache/duet`.
pub fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("duet");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache/duet");
    }
    PathBuf::from("/var/cache/duet")
}

/// Where `scripts/install.sh` puts duet's companion files (guest init, probe,
/// guest kernel, the testbed scripts) with the default prefix `/usr/local`.
pub const SYSTEM_LIB_DIR: &str = "/usr/local/lib/duet";

/// `<prefix>/lib/duet` when the running executable is `<prefix>/bin/<name>`:
/// the companion files of an install under any prefix (or DESTDIR).
pub fn lib_dir_of_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?;
    (bin.file_name()? == "bin").then(|| bin.parent().map(|p| p.join("lib/duet")))?
}

/// Where an installed companion file `name` (e.g. `duet-init`,
/// `testbed/run`) may be, in order: beside this binary's prefix
/// ([`lib_dir_of_exe`]), then under [`SYSTEM_LIB_DIR`].
pub fn installed(name: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = lib_dir_of_exe().into_iter().map(|d| d.join(name)).collect();
    let system = PathBuf::from(SYSTEM_LIB_DIR).join(name);
    if !v.contains(&system) {
        v.push(system);
    }
    v
}

/// Creates the state root (and its parents) if needed and makes it 0700.
///
/// Everything duet keeps is below it: image layers, instances' writable
/// layers (with whatever setuid files or device nodes a container made) and
/// VM disks. No other user may reach them, or a file planted by a workload
/// would be a setuid-root program for every local user. A root that exists
/// and belongs to this user is tightened to 0700; one owned by someone else
/// is refused (duet would be sharing its state with that user).
pub fn make_private(root: &Path) -> std::io::Result<()> {
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(root)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "state root {} is not a directory",
            root.display()
        )));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(std::io::Error::other(format!(
            "state root {} belongs to uid {}, not to this user (uid {me})",
            root.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Blocks until `f` holds an exclusive flock(2), through EINTR.
pub fn flock_exclusive(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor borrowed for the call; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_root_is_made_private() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let fresh = t.path().join("a/b/state");
        make_private(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        make_private(&open).unwrap();
        assert_eq!(std::fs::metadata(&open).unwrap().mode() & 0o777, 0o700);
        let file = t.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(make_private(&file).is_err());
    }
}
