//! Where duet keeps its state: `DUET_ROOT` (default `/var/lib/duet`).

use std::path::PathBuf;

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
