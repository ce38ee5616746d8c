//! Per-instance state directories under `<root>/instances/<id>/`.
//!
//! Each holds the writable layer (`upper/`, `work/`), an empty `rootfs/`
//! mount point, and `meta.json` naming the image, isolation and the duet
//! process that owns it (pid + start time, so a reused pid is not mistaken
//! for a live owner). `duet gc` removes directories whose owner is gone,
//! unless the instance was kept with `--keep`.

use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// What `meta.json` records about an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMeta {
    /// Unique id (`<name>-<hex>`).
    pub id: String,
    /// Spec name.
    pub name: String,
    /// Image it runs from.
    pub image: String,
    /// `container` or `vm`.
    pub isolation: String,
    /// Owning duet process.
    pub owner_pid: i32,
    /// Owner's start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub owner_start: u64,
    /// Kept after exit (`--keep`): not garbage.
    pub kept: bool,
    /// Exit status, once the workload ended.
    pub exit_code: Option<i32>,
    /// Given with `--name`: a handle no other instance may take.
    #[serde(default)]
    pub named: bool,
    /// Run with `-d`: a monitor process owns it (`owner_pid`).
    #[serde(default)]
    pub detached: bool,
    /// The command it runs (for `duet ps`).
    #[serde(default)]
    pub command: Vec<String>,
    /// When the instance was created, Unix time in milliseconds.
    #[serde(default)]
    pub created_ms: u64,
    /// Lifecycle state, kept by the owner.
    #[serde(default)]
    pub state: RunState,
}

/// Where an instance is in its lifecycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Made; the workload has not started.
    #[default]
    Created,
    /// The workload runs (`pid` is its init or VMM).
    Running,
    /// Ended; waiting to be started again (`--restart`).
    Restarting,
    /// Ended for good (`exit`).
    Exited,
}

/// The mutable part of an instance's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Lifecycle state.
    pub status: Status,
    /// Host pid of the workload's init (container) or of the VMM.
    pub pid: Option<i32>,
    /// Its start time in clock ticks since boot (see [`process_start_time`]).
    pub pid_start: Option<u64>,
    /// How the workload ended (last run).
    pub exit: Option<crate::runtime::WorkloadExit>,
    /// Unix ms of the last start.
    pub started_ms: Option<u64>,
    /// Unix ms of the last exit.
    pub finished_ms: Option<u64>,
    /// Restart policy (`no`, `on-failure[:N]`, `always`).
    #[serde(default)]
    pub restart_policy: String,
    /// Times the monitor restarted the workload.
    #[serde(default)]
    pub restarts: u32,
    /// Ended by `duet stop` / `duet kill` (not restarted).
    #[serde(default)]
    pub stopped_by_user: bool,
}

/// Unix time now in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Errors around instance directories.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Filesystem error on an instance path.
    #[error("instance directory {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No such instance.
    #[error("no instance `{0}` (see `duet ps`)")]
    NotFound(String),
    /// `--name` given that another instance already has.
    #[error("the name `{name}` is already in use by instance `{id}`; remove it (`duet rm {id}`) or choose another name")]
    NameInUse {
        /// The name.
        name: String,
        /// The instance that has it.
        id: String,
    },
    /// A name duet cannot use as a handle.
    #[error("invalid instance name `{0}`: use letters, digits, `_`, `.` and `-`, starting with a letter or digit (at most 64)")]
    BadName(String),
    /// A name or id prefix that fits more than one instance.
    #[error("`{given}` could mean any of {} instances: {}; give more of the id", .ids.len(), .ids.join(", "))]
    Ambiguous {
        /// What was asked for.
        given: String,
        /// The instances it fits.
        ids: Vec<String>,
    },
    /// meta.json unreadable.
    #[error("instance metadata {} is corrupt", path.display())]
    Meta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstanceError + '_ {
    move |source| InstanceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One instance's state directory.
#[derive(Debug, Clone)]
pub struct InstanceDir {
    path: PathBuf,
    meta: InstanceMeta,
}

/// Start time of a process, in clock ticks since boot, or None if it is
/// gone or a zombie.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    // A zombie (or dead) process has ended; only its reaper is late.
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

fn random_hex() -> String {
    let mut buf = [0u8; 6];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // Fall back to time + pid; uniqueness is re-checked by create_dir.
        let t = crate::clock::monotonic_ns() ^ ((std::process::id() as u64) << 32);
        buf.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    hex::encode(buf)
}

impl InstanceDir {
    /// `<root>/instances`.
    pub fn base(root: &Path) -> PathBuf {
        root.join("instances")
    }

    /// Creates a fresh instance directory owned by this process.
    pub fn create(
        root: &Path,
        name: &str,
        image: &str,
        isolation: &str,
    ) -> Result<InstanceDir, InstanceError> {
        Self::create_with(root, name, image, isolation, false)
    }

    /// As [`InstanceDir::create`]; with `named` (`--name`) the name is a
    /// handle no other instance may have: checked and taken under a lock
    /// (`<root>/names.lock`), so two parallel runs cannot both get it.
    pub fn create_with(
        root: &Path,
        name: &str,
        image: &str,
        isolation: &str,
        named: bool,
    ) -> Result<InstanceDir, InstanceError> {
        Self::create_init(root, name, image, isolation, named, |_| {})
    }

    /// As [`InstanceDir::create_with`], with `init` filling in more of the
    /// metadata before it is first written.
    pub fn create_init(
        root: &Path,
        name: &str,
        image: &str,
        isolation: &str,
        named: bool,
        init: impl FnOnce(&mut InstanceMeta),
    ) -> Result<InstanceDir, InstanceError> {
        let base = Self::base(root);
        crate::paths::make_private(root).map_err(io_err(root))?;
        std::fs::create_dir_all(&base).map_err(io_err(&base))?;
        let _lock = if named {
            if !valid_name(name) {
                return Err(InstanceError::BadName(name.to_string()));
            }
            let lock = NamesLock::take(root)?;
            for id in Self::list_ids(root)? {
                if let Ok(d) = Self::open(root, &id) {
                    if d.meta.name == name {
                        return Err(InstanceError::NameInUse {
                            name: name.to_string(),
                            id,
                        });
                    }
                }
            }
            Some(lock)
        } else {
            None
        };
        let pid = std::process::id() as i32;
        let mut init = Some(init);
        loop {
            let id = format!("{name}-{}", random_hex());
            let path = base.join(&id);
            match std::fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
            let mut dir = InstanceDir {
                meta: InstanceMeta {
                    id,
                    name: name.to_string(),
                    image: image.to_string(),
                    isolation: isolation.to_string(),
                    owner_pid: pid,
                    owner_start: process_start_time(pid).unwrap_or(0),
                    kept: false,
                    exit_code: None,
                    named,
                    detached: false,
                    command: Vec::new(),
                    created_ms: unix_ms(),
                    state: RunState::default(),
                },
                path,
            };
            if let Some(f) = init.take() {
                f(&mut dir.meta);
            }
            let made = (|| {
                for sub in ["upper", "work", "rootfs"] {
                    let p = dir.path.join(sub);
                    std::fs::create_dir(&p).map_err(io_err(&p))?;
                }
                dir.save()
            })();
            if let Err(e) = made {
                let _ = std::fs::remove_dir_all(&dir.path);
                return Err(e);
            }
            return Ok(dir);
        }
    }

    /// Opens an existing instance by id.
    pub fn open(root: &Path, id: &str) -> Result<InstanceDir, InstanceError> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(InstanceError::NotFound(id.to_string()));
        }
        let path = Self::base(root).join(id);
        let mp = path.join("meta.json");
        let text = match std::fs::read_to_string(&mp) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(InstanceError::NotFound(id.to_string()))
            }
            Err(e) => return Err(io_err(&mp)(e)),
        };
        let meta = serde_json::from_str(&text).map_err(|source| InstanceError::Meta {
            path: mp.clone(),
            source,
        })?;
        Ok(InstanceDir { path, meta })
    }

    /// Finds the instance `what` names, as Docker does: its whole id, else
    /// its name, else a prefix of exactly one id. A name or prefix that fits
    /// several instances is refused with their ids.
    pub fn find(root: &Path, what: &str) -> Result<InstanceDir, InstanceError> {
        if what.is_empty() || what.contains('/') || what.starts_with('.') {
            return Err(InstanceError::NotFound(what.to_string()));
        }
        let ids = Self::list_ids(root)?;
        if ids.iter().any(|i| i == what) {
            return Self::open(root, what);
        }
        let named: Vec<String> = ids
            .iter()
            .filter(|i| Self::open(root, i).is_ok_and(|d| d.meta.name == what))
            .cloned()
            .collect();
        let candidates = if named.is_empty() {
            ids.into_iter().filter(|i| i.starts_with(what)).collect()
        } else {
            named
        };
        match candidates.as_slice() {
            [] => Err(InstanceError::NotFound(what.to_string())),
            [one] => Self::open(root, one),
            _ => Err(InstanceError::Ambiguous {
                given: what.to_string(),
                ids: candidates,
            }),
        }
    }

    /// All instance ids under `root` (directories, whether or not meta is readable).
    pub fn list_ids(root: &Path) -> Result<Vec<String>, InstanceError> {
        let base = Self::base(root);
        let rd = match std::fs::read_dir(&base) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&base)(e)),
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn save(&self) -> Result<(), InstanceError> {
        let mp = self.path.join("meta.json");
        let tmp = self.path.join("meta.json.tmp");
        let text = serde_json::to_string_pretty(&self.meta).expect("meta serializes");
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &mp).map_err(io_err(&mp))
    }

    /// Instance id.
    pub fn id(&self) -> &str {
        &self.meta.id
    }
    /// Metadata.
    pub fn meta(&self) -> &InstanceMeta {
        &self.meta
    }
    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The state root this instance lives under (`<root>/instances/<id>` -> `<root>`).
    pub fn state_root(&self) -> &Path {
        self.path
            .parent()
            .and_then(Path::parent)
            .expect("instance paths are <root>/instances/<id>")
    }
    /// Writable layer (overlay upperdir).
    pub fn upper(&self) -> PathBuf {
        self.path.join("upper")
    }
    /// Overlay workdir (same file system as `upper`).
    pub fn work(&self) -> PathBuf {
        self.path.join("work")
    }
    /// Mount point for the instance's root.
    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    /// Whether the duet process that created this instance is still running.
    pub fn owner_alive(&self) -> bool {
        process_start_time(self.meta.owner_pid).is_some_and(|s| s == self.meta.owner_start)
    }

    /// Changes the metadata with `f` and writes it (whole, by rename).
    pub fn update(&mut self, f: impl FnOnce(&mut InstanceMeta)) -> Result<(), InstanceError> {
        f(&mut self.meta);
        self.save()
    }

    /// Re-reads the metadata from disk (another process owns it).
    pub fn reload(&mut self) -> Result<(), InstanceError> {
        let root = self.state_root().to_path_buf();
        *self = Self::open(&root, &self.meta.id.clone())?;
        Ok(())
    }

    /// `spec.json`: the resolved spec the instance runs (image defaults merged in).
    pub fn spec_path(&self) -> PathBuf {
        self.path.join("spec.json")
    }

    /// Writes the resolved spec (see [`InstanceDir::spec_path`]).
    pub fn save_spec(&self, spec: &crate::WorkloadSpec) -> Result<(), InstanceError> {
        let p = self.spec_path();
        let text = serde_json::to_string_pretty(spec).expect("spec serializes");
        std::fs::write(&p, text).map_err(io_err(&p))
    }

    /// Reads the resolved spec back.
    pub fn load_spec(&self) -> Result<crate::WorkloadSpec, InstanceError> {
        let p = self.spec_path();
        let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
        serde_json::from_str(&text).map_err(|source| InstanceError::Meta { path: p, source })
    }

    /// Whether the workload's recorded pid is still the same live process.
    pub fn workload_alive(&self) -> bool {
        match (self.meta.state.pid, self.meta.state.pid_start) {
            (Some(pid), Some(start)) => process_start_time(pid) == Some(start),
            _ => false,
        }
    }

    /// Records the exit status and whether to keep the writable layer.
    pub fn finish(&mut self, exit_code: Option<i32>, keep: bool) -> Result<(), InstanceError> {
        self.meta.state.status = Status::Exited;
        self.meta.state.pid = None;
        self.meta.exit_code = exit_code;
        self.meta.kept = keep;
        self.save()
    }

    /// Removes the whole directory.
    pub fn remove(self) -> Result<(), InstanceError> {
        remove_instance_path(&self.path)
    }
}

/// Names usable as handles: as Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// An exclusive flock on `<root>/names.lock` while names are checked and taken.
struct NamesLock(#[allow(dead_code)] std::fs::File);

impl NamesLock {
    fn take(root: &Path) -> Result<NamesLock, InstanceError> {
        let p = root.join("names.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(&p))?;
        crate::paths::flock_exclusive(&f).map_err(io_err(&p))?;
        Ok(NamesLock(f))
    }
}

/// Removes an instance directory; a missing one is fine.
pub fn remove_instance_path(path: &Path) -> Result<(), InstanceError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_open_list_remove() {
        let t = tempfile::tempdir().unwrap();
        let d = InstanceDir::create(t.path(), "web", "busybox", "container").unwrap();
        assert!(d.id().starts_with("web-"));
        assert!(d.upper().is_dir() && d.work().is_dir() && d.rootfs().is_dir());
        assert!(d.owner_alive());
        assert_eq!(d.state_root(), t.path());
        let ids = InstanceDir::list_ids(t.path()).unwrap();
        assert_eq!(ids, vec![d.id().to_string()]);
        let mut o = InstanceDir::open(t.path(), d.id()).unwrap();
        assert_eq!(o.meta(), d.meta());
        o.finish(Some(3), true).unwrap();
        let o2 = InstanceDir::open(t.path(), d.id()).unwrap();
        assert!(o2.meta().kept);
        assert_eq!(o2.meta().exit_code, Some(3));
        o2.remove().unwrap();
        assert!(InstanceDir::list_ids(t.path()).unwrap().is_empty());
    }

    #[test]
    fn names_are_unique_handles() {
        let t = tempfile::tempdir().unwrap();
        let web = InstanceDir::create_with(t.path(), "web", "busybox", "container", true).unwrap();
        let e = InstanceDir::create_with(t.path(), "web", "busybox", "vm", true).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("`web`") && m.contains(web.id()), "{m}");
        // Unnamed instances may share a (spec) name; they are found by id.
        InstanceDir::create(t.path(), "db", "busybox", "vm").unwrap();
        InstanceDir::create(t.path(), "db", "busybox", "vm").unwrap();
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(
                matches!(
                    InstanceDir::create_with(t.path(), bad, "busybox", "vm", true),
                    Err(InstanceError::BadName(_))
                ),
                "{bad}"
            );
        }
        // Parallel creates of one name: exactly one wins.
        let root = t.path().to_path_buf();
        let wins: usize = (0..8)
            .map(|_| {
                let r = root.clone();
                std::thread::spawn(move || {
                    InstanceDir::create_with(&r, "race", "busybox", "vm", true).is_ok() as usize
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(wins, 1);
    }

    #[test]
    fn dead_owner_is_detected() {
        let t = tempfile::tempdir().unwrap();
        let mut d = InstanceDir::create(t.path(), "x", "busybox", "vm").unwrap();
        d.meta.owner_start += 1; // as if the pid had been reused
        assert!(!d.owner_alive());
    }

    #[test]
    fn open_rejects_paths_and_missing() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            InstanceDir::open(t.path(), "../etc"),
            Err(InstanceError::NotFound(_))
        ));
        assert!(matches!(
            InstanceDir::open(t.path(), "nope"),
            Err(InstanceError::NotFound(_))
        ));
    }

    #[test]
    fn find_by_id_name_or_unique_prefix() {
        let t = tempfile::tempdir().unwrap();
        let web = InstanceDir::create(t.path(), "web", "busybox", "container").unwrap();
        let db1 = InstanceDir::create(t.path(), "db", "busybox", "vm").unwrap();
        let db2 = InstanceDir::create(t.path(), "db", "busybox", "vm").unwrap();
        assert_eq!(
            InstanceDir::find(t.path(), web.id()).unwrap().id(),
            web.id()
        );
        assert_eq!(InstanceDir::find(t.path(), "web").unwrap().id(), web.id());
        assert_eq!(InstanceDir::find(t.path(), "we").unwrap().id(), web.id());
        assert_eq!(
            InstanceDir::find(t.path(), &db1.id()[..6]).unwrap().id(),
            db1.id()
        );
        let e = InstanceDir::find(t.path(), "db").unwrap_err().to_string();
        assert!(e.contains(db1.id()) && e.contains(db2.id()), "{e}");
        assert!(matches!(
            InstanceDir::find(t.path(), "nope"),
            Err(InstanceError::NotFound(_))
        ));
        assert!(matches!(
            InstanceDir::find(t.path(), "../x"),
            Err(InstanceError::NotFound(_))
        ));
    }
}
