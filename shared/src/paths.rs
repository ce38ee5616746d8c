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
