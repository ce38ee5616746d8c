//! A container's record in the OCI runtime's `--root`: `<root>/<id>/state.json`
//! (what `create` made: pid and its start time, bundle, cgroups) next to
//! `exec.fifo` (present until `start`). The status is not stored but read
//! off the system each time, so a crash of anything never leaves a stale one.

use anyhow::{bail, Context, Result};
use duet_container::oci_cgroup::OciCgroup;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The OCI runtime-spec version duet implements.
pub const OCI_VERSION: &str = "1.0.2";

/// What `create` recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Container id.
    pub id: String,
    /// The init's pid.
    pub pid: i32,
    /// Its start time (clock ticks after boot), against pid reuse.
    pub pid_start: Option<u64>,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The root file system.
    pub rootfs: PathBuf,
    /// `annotations` of config.json.
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 creation time.
    pub created: String,
    /// Cgroup directories.
    pub cgroup: OciCgroup,
    /// `container` (the only one so far).
    pub isolation: String,
    /// Made with `--no-new-keyring` (exec'd processes then keep theirs too).
    #[serde(default)]
    pub no_new_keyring: bool,
}

/// The `state` JSON (runtime-spec's State, plus runc's `rootfs` and `created`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateJson {
    /// Spec version.
    pub oci_version: String,
    /// Id.
    pub id: String,
    /// creating, created, running, paused or stopped.
    pub status: String,
    /// Init pid (0 once stopped).
    pub pid: i32,
    /// Bundle.
    pub bundle: PathBuf,
    /// Root.
    pub rootfs: PathBuf,
    /// Creation time.
    pub created: String,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

/// One container's directory in the root.
pub struct Dir {
    /// `<root>/<id>`.
    pub path: PathBuf,
}

impl Dir {
    /// The directory of `id` (which must be a plain name) below `root`.
    pub fn of(root: &Path, id: &str) -> Result<Dir> {
        let path = duet_container::oci_runtime::state_dir(root, id).map_err(anyhow::Error::msg)?;
        Ok(Dir { path })
    }

    /// The start fifo.
    pub fn fifo(&self) -> PathBuf {
        self.path.join("exec.fifo")
    }

    /// Reads the record; a missing one is "does not exist" (containerd matches that text).
    pub fn load(&self, id: &str) -> Result<Record> {
        let p = self.path.join("state.json");
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("container \"{id}\" does not exist")
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        serde_json::from_slice(&text)
            .with_context(|| format!("{}: not a state record", p.display()))
    }

    /// Writes the record atomically.
    pub fn save(&self, r: &Record) -> Result<()> {
        let p = self.path.join("state.json");
        let tmp = self.path.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(r)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("renaming to {}", p.display()))
    }
}

/// Whether the recorded init still runs (same pid and start time, not a zombie).
pub fn alive(r: &Record) -> bool {
    r.pid > 0
        && duet_shared::instance::process_start_time(r.pid).is_some_and(|t| Some(t) == r.pid_start)
}

/// The status as the runtime spec names it.
pub fn status(dir: &Dir, r: &Record) -> &'static str {
    if !alive(r) {
        "stopped"
    } else if dir.fifo().exists() {
        "created"
    } else if r.cgroup.frozen() {
        "paused"
    } else {
        "running"
    }
}

/// The `state` JSON of a record.
pub fn state_json(dir: &Dir, r: &Record) -> StateJson {
    let status = status(dir, r);
    StateJson {
        oci_version: OCI_VERSION.into(),
        id: r.id.clone(),
        status: status.into(),
        pid: if status == "stopped" { 0 } else { r.pid },
        bundle: r.bundle.clone(),
        rootfs: r.rootfs.clone(),
        created: r.created.clone(),
        annotations: r.annotations.clone(),
    }
}

/// Now, as RFC 3339 UTC with nanoseconds (what runc writes).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (year, month, day, h, m, sec) = duet_shared::clock::civil_utc(d.as_secs());
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}.{:09}Z",
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_the_right_shape() {
        let s = now_rfc3339();
        assert_eq!(s.len(), "2026-12-02T10:00:00.000000000Z".len(), "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && s.as_bytes()[10] == b'T',
            "{s}"
        );
    }
}
