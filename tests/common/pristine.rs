//! The PostgreSQL image of the pristine-db tests, built once per test
//! binary by images/postgres/build.sh into a state root kept beside its
//! cache (~/.cache/duet/postgres/test-store): a 210 MB image is not
//! rebuilt per test, and build.sh's stamp rebuilds it when the script or
//! seed.sql change.

use super::{duet_bin, skip_unless_program, skip_unless_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The image build.sh makes.
pub const IMAGE: &str = "duet-postgres:15";

/// Skips unless root, busybox and debootstrap are here; else the state
/// root holding the built image.
pub fn store(test: &str) -> Option<&'static Path> {
    if skip_unless_root(test) || skip_unless_program(test, "/usr/sbin/debootstrap", "debootstrap") {
        return None;
    }
    static STORE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = STORE.get_or_init(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"))
            .join("duet/postgres");
        let root = cache.join("test-store");
        std::fs::create_dir_all(&root).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/postgres/build.sh");
        // flock: another test binary may build it at the same time.
        let out = Command::new("flock")
            .arg(cache.join("test-store.lock"))
            .arg(&script)
            .arg("--duet")
            .arg(duet_bin())
            .env("DUET_ROOT", &root)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(root)
        } else {
            Err(format!(
                "images/postgres/build.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    match r {
        Ok(p) => Some(p),
        Err(e) => panic!("{e}"),
    }
}
