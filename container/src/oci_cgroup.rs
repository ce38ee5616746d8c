//! `linux.cgroupsPath` and `linux.resources` of an OCI bundle, in every
//! mounted hierarchy (v1 controllers, the v2 unified tree, or both on a
//! hybrid host), as runc's cgroupfs driver places them.
//!
//! An absolute `cgroupsPath` (`/docker/<id>`, what dockerd and containerd
//! pass with the cgroupfs driver) is taken below each hierarchy's root; a
//! relative one below `duet/`; none gives `duet/<id>`. The systemd form
//! (`slice:prefix:name`) is refused. `..` never appears in a path written to.

use crate::cgroup::{remove_cgroup_dir, CgroupLayout, CgroupVersion};
use oci_spec::runtime::LinuxResources;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Errors, each naming the config field or the file.
#[derive(Debug, thiserror::Error)]
pub enum OciCgroupError {
    /// A path that is not a plain cgroup path.
    #[error("linux.cgroupsPath `{0}`: {1}")]
    BadPath(String, &'static str),
    /// A limit duet cannot set.
    #[error("linux.resources.{0}: {1}")]
    Unsupported(&'static str, String),
    /// A cgroup file could not be written.
    #[error("{action} {path}")]
    Io {
        /// What.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Layout detection or removal failed.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
}

/// The cgroup path (relative to each hierarchy's root) for a container.
pub fn relative_path(cgroups_path: Option<&Path>, id: &str) -> Result<PathBuf, OciCgroupError> {
    let Some(p) = cgroups_path else {
        return Ok(PathBuf::from("duet").join(id));
    };
    let shown = p.display().to_string();
    if shown.contains(':') && !shown.starts_with('/') {
        return Err(OciCgroupError::BadPath(
            shown,
            "the systemd driver's slice:prefix:name form is not supported (duet uses cgroupfs paths)",
        ));
    }
    let mut out = PathBuf::new();
    if p.is_relative() {
        out.push("duet");
    }
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(OciCgroupError::BadPath(shown, "`..` is not allowed"))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(OciCgroupError::BadPath(
            shown,
            "the root cgroup is not a container's",
        ));
    }
    Ok(out)
}

/// The container's directories, one per hierarchy; removed by [`OciCgroup::destroy`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OciCgroup {
    /// (v2?, directory) per hierarchy.
    pub dirs: Vec<(bool, PathBuf)>,
    /// The levels above `dirs` that duet owns (`duet/` and what is below it),
    /// removed by [`OciCgroup::destroy`] once empty, deepest first. A path
    /// the engine chose (`/docker/...`) owns none: its parents are the engine's.
    #[serde(default)]
    pub parents: Vec<PathBuf>,
}

/// How often a create starts again when a parent it made or found (`duet/`)
/// is removed under it by the last instance leaving it.
const CREATE_TRIES: usize = 5;

/// The levels of `rel` below `mount` that duet owns: `duet` and each level
/// between it and `rel`'s last one, none when `rel` is not below `duet/`.
fn owned_parents(mount: &Path, rel: &Path) -> Vec<PathBuf> {
    let parts: Vec<_> = rel.components().collect();
    if parts.first().is_none_or(|c| c.as_os_str() != "duet") {
        return Vec::new();
    }
    let mut level = mount.to_path_buf();
    let mut out = Vec::new();
    for c in &parts[..parts.len().saturating_sub(1)] {
        level.push(c);
        out.push(level.clone());
    }
    out
}

/// Removes each of `parents` that is empty, deepest first. One that still
/// holds another instance stays (EBUSY / ENOTEMPTY), as does a missing one.
fn remove_empty_parents(parents: &[PathBuf]) {
    let mut sorted: Vec<&PathBuf> = parents.iter().collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    sorted.dedup();
    for p in sorted {
        let _ = std::fs::remove_dir(p);
    }
}

/// Whether `e` says a parent vanished under a create (another instance's
/// removal of an empty `duet/`): then the create starts again. Only a
/// directory being made, or a parent level's `cgroup.subtree_control`,
/// can vanish so; a limit file missing from the instance's own directory
/// (a controller file this kernel does not offer) is an error at once.
fn parent_vanished(e: &OciCgroupError) -> bool {
    matches!(e, OciCgroupError::Io { action, path, source }
        if source.kind() == std::io::ErrorKind::NotFound
            && (*action == "creating"
                || path.file_name() == Some(std::ffi::OsStr::new("cgroup.subtree_control"))))
}

fn write(path: &Path, value: &str) -> Result<(), OciCgroupError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| OciCgroupError::Io {
            action: "opening",
            path: path.to_path_buf(),
            source,
        })?;
    f.write_all(value.as_bytes())
        .map_err(|source| OciCgroupError::Io {
            action: "writing",
            path: path.to_path_buf(),
            source,
        })
}

/// `(controller, file, value)` writes for `r`, v1 or v2 names.
fn limit_writes(
    r: &LinuxResources,
    v2: bool,
) -> Result<Vec<(&'static str, &'static str, String)>, OciCgroupError> {
    let mut w = Vec::new();
    if let Some(m) = r.memory() {
        if let Some(limit) = m.limit().filter(|&l| l > 0) {
            w.push((
                "memory",
                if v2 {
                    "memory.max"
                } else {
                    "memory.limit_in_bytes"
                },
                limit.to_string(),
            ));
            if let Some(swap) = m.swap().filter(|&s| s > 0) {
                if v2 {
                    // v2 counts swap alone; OCI's swap is memory + swap.
                    let only = (swap - limit).max(0);
                    w.push(("memory", "memory.swap.max", only.to_string()));
                } else {
                    w.push(("memory", "memory.memsw.limit_in_bytes", swap.to_string()));
                }
            }
        }
        if let Some(res) = m.reservation().filter(|&r| r > 0) {
            w.push((
                "memory",
                if v2 {
                    "memory.low"
                } else {
                    "memory.soft_limit_in_bytes"
                },
                res.to_string(),
            ));
        }
        if m.kernel().is_some_and(|k| k > 0) || m.kernel_tcp().is_some_and(|k| k > 0) {
            return Err(OciCgroupError::Unsupported(
                "memory.kernel",
                "kernel memory limits are not supported (deprecated in the kernel)".into(),
            ));
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(shares) = c.shares().filter(|&s| s > 0) {
            if v2 {
                // runc's conversion of shares (2-262144) to weight (1-10000).
                let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
                w.push(("cpu", "cpu.weight", weight.to_string()));
            } else {
                w.push(("cpu", "cpu.shares", shares.to_string()));
            }
        }
        let period = c.period().filter(|&p| p > 0);
        if let Some(quota) = c.quota().filter(|&q| q != 0) {
            let period = period.unwrap_or(100_000);
            if v2 {
                let q = if quota < 0 {
                    "max".to_string()
                } else {
                    quota.to_string()
                };
                w.push(("cpu", "cpu.max", format!("{q} {period}")));
            } else {
                w.push(("cpu", "cpu.cfs_period_us", period.to_string()));
                w.push(("cpu", "cpu.cfs_quota_us", quota.to_string()));
            }
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            w.push(("cpuset", "cpuset.cpus", cpus.to_string()));
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            w.push(("cpuset", "cpuset.mems", mems.to_string()));
        }
        if c.realtime_runtime().is_some_and(|r| r != 0) {
            return Err(OciCgroupError::Unsupported(
                "cpu.realtimeRuntime",
                "real-time scheduling budgets are not supported".into(),
            ));
        }
    }
    if let Some(p) = r.pids() {
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".into()
        };
        w.push(("pids", "pids.max", v));
    }
    if !v2 {
        for d in r.devices().iter().flatten() {
            let file = if d.allow() {
                "devices.allow"
            } else {
                "devices.deny"
            };
            let typ = d.typ().map_or("a".to_string(), |t| t.as_str().to_string());
            let num = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
            let rule = if typ == "a" {
                "a".to_string()
            } else {
                format!(
                    "{typ} {}:{} {}",
                    num(d.major()),
                    num(d.minor()),
                    d.access().as_deref().unwrap_or("rwm")
                )
            };
            w.push(("devices", file, rule));
        }
    }
    if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(OciCgroupError::Unsupported(
            "hugepageLimits",
            "not supported".into(),
        ));
    }
    if r.rdma().as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(OciCgroupError::Unsupported("rdma", "not supported".into()));
    }
    if r.unified().as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(OciCgroupError::Unsupported(
            "unified",
            "not supported".into(),
        ));
    }
    Ok(w)
}

/// Whether a v1 mount carries `controller` (its mount point's last name
/// lists the controllers, as `cpu,cpuacct`).
fn carries(mount: &Path, controllers: &[String], controller: &str) -> bool {
    controllers.iter().any(|c| c == controller)
        || mount
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.split(',').any(|c| c == controller))
}

impl OciCgroup {
    /// Makes `rel` in every hierarchy and writes the limits of `r`.
    /// On error, what was made is removed again.
    /// `devices_allowed`: v1 devices rules written after the config's
    /// (the nodes the runtime itself makes, as runc allows its defaults).
    pub fn create(
        rel: &Path,
        r: Option<&LinuxResources>,
        devices_allowed: &[String],
    ) -> Result<OciCgroup, OciCgroupError> {
        let layout = CgroupLayout::detect()?;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut cg = OciCgroup {
                dirs: Vec::new(),
                parents: Vec::new(),
            };
            match cg.make_all(&layout, rel, r, devices_allowed) {
                Ok(()) => return Ok(cg),
                Err(e) => {
                    let _ = cg.destroy();
                    if !(parent_vanished(&e) && tries < CREATE_TRIES) {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn make_all(
        &mut self,
        layout: &CgroupLayout,
        rel: &Path,
        r: Option<&LinuxResources>,
        devices_allowed: &[String],
    ) -> Result<(), OciCgroupError> {
        let mut v1_writes = r
            .map(|r| limit_writes(r, false))
            .transpose()?
            .unwrap_or_default();
        v1_writes.extend(
            devices_allowed
                .iter()
                .map(|d| ("devices", "devices.allow", d.clone())),
        );
        let v2_writes = r
            .map(|r| limit_writes(r, true))
            .transpose()?
            .unwrap_or_default();
        for (mount, controllers) in &layout.v1 {
            // Named hierarchies without controllers (name=systemd) are skipped.
            if controllers.iter().all(|c| c.starts_with("name=")) {
                continue;
            }
            let dir = mount.join(rel);
            self.parents.extend(owned_parents(mount, rel));
            std::fs::create_dir_all(&dir).map_err(|source| OciCgroupError::Io {
                action: "creating",
                path: dir.clone(),
                source,
            })?;
            self.dirs.push((false, dir.clone()));
            if carries(mount, controllers, "cpuset") {
                // A new v1 cpuset is empty: inherit the parent's before joining.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    inherit_cpuset(mount, rel, f)?;
                }
            }
            for (ctl, file, value) in &v1_writes {
                if carries(mount, controllers, ctl) {
                    write(&dir.join(file), value)?;
                }
            }
        }
        if let Some(mount) = &layout.v2 {
            let available =
                std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
            let wanted: Vec<&str> = v2_writes
                .iter()
                .map(|(c, _, _)| *c)
                .filter(|c| available.split_whitespace().any(|a| a == *c))
                .collect();
            // Every level from the root down passes the controllers on.
            self.parents.extend(owned_parents(mount, rel));
            let mut level = mount.clone();
            for c in rel.components() {
                for ctl in &wanted {
                    let sc = level.join("cgroup.subtree_control");
                    let have = std::fs::read_to_string(&sc).unwrap_or_default();
                    if !have.split_whitespace().any(|h| h == *ctl) {
                        write(&sc, &format!("+{ctl}"))?;
                    }
                }
                level.push(c);
                // Another create may make a shared parent (`duet/`) at the same time.
                match std::fs::create_dir(&level) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(source) => {
                        return Err(OciCgroupError::Io {
                            action: "creating",
                            path: level.clone(),
                            source,
                        })
                    }
                }
            }
            self.dirs.push((true, level.clone()));
            for (ctl, file, value) in &v2_writes {
                if wanted.contains(ctl) {
                    write(&level.join(file), value)?;
                } else if layout.v1.is_empty() {
                    return Err(OciCgroupError::Unsupported(
                        "(cgroup v2)",
                        format!(
                            "controller `{ctl}` is not enabled at {} (for {file})",
                            mount.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Moves `pid` into every directory.
    pub fn add_pid(&self, pid: i32) -> Result<(), OciCgroupError> {
        self.add_pid_to(pid, true)
    }

    /// Moves `pid` into every directory, or (`v2` false) every v1 one.
    pub fn add_pid_to(&self, pid: i32, v2: bool) -> Result<(), OciCgroupError> {
        for (is_v2, d) in &self.dirs {
            if v2 || !is_v2 {
                write(&d.join("cgroup.procs"), &pid.to_string())?;
            }
        }
        Ok(())
    }

    /// Writes new limits (`update`) into the existing directories: each
    /// value into every hierarchy that has its file; a controller none has
    /// is an error. Devices rules are not changed, as with runc. A v1 pair
    /// that must change in the other order (memory above the old
    /// memory+swap) is retried once.
    pub fn update(&self, r: &LinuxResources) -> Result<(), OciCgroupError> {
        let mut pending = Vec::new();
        let mut taken = std::collections::BTreeSet::new();
        let mut wanted = std::collections::BTreeSet::new();
        for (v2, d) in &self.dirs {
            for (ctl, file, value) in limit_writes(r, *v2)? {
                if ctl == "devices" {
                    continue;
                }
                wanted.insert(ctl);
                let path = d.join(file);
                if path.exists() {
                    taken.insert(ctl);
                    pending.push((path, value));
                }
            }
        }
        if let Some(ctl) = wanted.iter().find(|c| !taken.contains(*c)) {
            return Err(OciCgroupError::Unsupported(
                "(update)",
                format!("the {ctl} controller is in none of this container's cgroups"),
            ));
        }
        let mut failed = Vec::new();
        for (path, value) in &pending {
            if write(path, value).is_err() {
                failed.push((path, value));
            }
        }
        for (path, value) in failed {
            write(path, value)?;
        }
        Ok(())
    }

    /// The v2 directory, if there is one.
    pub fn v2_dir(&self) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(v2, _)| *v2)
            .map(|(_, d)| d.as_path())
    }

    /// The pids in the container's cgroup (v2 if there, else the first v1 one).
    pub fn pids(&self) -> Vec<i32> {
        let dir = self.dirs.iter().find(|(v2, _)| *v2).or(self.dirs.first());
        dir.map(|(_, d)| crate::cgroup::cgroup_pids(d).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The directory and file that freeze the container: the v1 freezer
    /// controller where one is mounted (hybrid hosts, where engines use
    /// it), else the v2 cgroup's own `cgroup.freeze`.
    fn freezer(&self) -> Option<(bool, PathBuf)> {
        let v1 = self
            .dirs
            .iter()
            .find(|(v2, d)| !*v2 && d.join("freezer.state").exists());
        let v2 = self
            .dirs
            .iter()
            .find(|(v2, d)| *v2 && d.join("cgroup.freeze").exists());
        v1.or(v2).cloned()
    }

    /// Whether the container's processes are frozen.
    pub fn frozen(&self) -> bool {
        self.freezer()
            .is_some_and(|(v2, d)| freezer_says(v2, &d, true))
    }

    /// Freezes (`true`) or thaws every process of the container, and waits
    /// until the kernel says it is done (up to 10 s).
    pub fn freeze(&self, freeze: bool) -> Result<(), OciCgroupError> {
        let Some((v2, d)) = self.freezer() else {
            return Err(OciCgroupError::Io {
                action: "finding a freezer for",
                path: self
                    .dirs
                    .first()
                    .map(|(_, d)| d.clone())
                    .unwrap_or_default(),
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            });
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if v2 {
                write(&d.join("cgroup.freeze"), if freeze { "1" } else { "0" })?;
            } else {
                write(
                    &d.join("freezer.state"),
                    if freeze { "FROZEN" } else { "THAWED" },
                )?;
            }
            if freezer_says(v2, &d, freeze) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(OciCgroupError::Io {
                    action: "waiting for the freezer of",
                    path: d,
                    source: std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Kills what is left and removes every directory.
    pub fn destroy(self) -> Result<(), OciCgroupError> {
        let mut first = None;
        for (v2, d) in self.dirs.iter().rev() {
            let v = if *v2 {
                CgroupVersion::V2
            } else {
                CgroupVersion::V1
            };
            if let Err(e) = remove_cgroup_dir(v, d) {
                first.get_or_insert(OciCgroupError::from(e));
            }
        }
        remove_empty_parents(&self.parents);
        first.map_or(Ok(()), Err)
    }
}

/// Whether the freezer in `d` reports the state `frozen` (done, not on the
/// way: v1's FREEZING is neither).
fn freezer_says(v2: bool, d: &Path, frozen: bool) -> bool {
    if v2 {
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        std::fs::read_to_string(d.join("cgroup.events")).is_ok_and(|s| s.lines().any(|l| l == want))
    } else {
        let want = if frozen { "FROZEN" } else { "THAWED" };
        std::fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == want)
    }
}

/// Copies `file` from the nearest configured ancestor down to `rel` (v1 cpuset).
fn inherit_cpuset(mount: &Path, rel: &Path, file: &str) -> Result<(), OciCgroupError> {
    let mut level = mount.to_path_buf();
    let mut value = std::fs::read_to_string(level.join(file)).unwrap_or_default();
    for c in rel.components() {
        level.push(c);
        let here = std::fs::read_to_string(level.join(file)).unwrap_or_default();
        if here.trim().is_empty() && !value.trim().is_empty() {
            write(&level.join(file), value.trim())?;
        } else {
            value = here;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duet_owns_the_levels_below_duet_and_not_an_engines_parents() {
        let m = Path::new("/sys/fs/cgroup/pids");
        assert_eq!(owned_parents(m, Path::new("duet/c1")), vec![m.join("duet")]);
        assert_eq!(
            owned_parents(m, Path::new("duet/k8s/pod1")),
            vec![m.join("duet"), m.join("duet/k8s")]
        );
        assert!(owned_parents(m, Path::new("docker/c1")).is_empty());
        assert!(owned_parents(m, Path::new("kubepods/duet/c1")).is_empty());
    }

    #[test]
    fn empty_parents_go_deepest_first_and_a_shared_one_stays() {
        let t = tempfile::tempdir().unwrap();
        let duet = t.path().join("duet");
        std::fs::create_dir_all(duet.join("k8s")).unwrap();
        std::fs::create_dir_all(duet.join("other-instance")).unwrap();
        remove_empty_parents(&[duet.clone(), duet.join("k8s")]);
        assert!(!duet.join("k8s").exists(), "the empty level is removed");
        assert!(duet.is_dir(), "a parent another instance is in stays");
        std::fs::remove_dir(duet.join("other-instance")).unwrap();
        remove_empty_parents(&[duet.join("k8s"), duet.clone(), duet.clone()]);
        assert!(!duet.exists(), "the last one out removes it");
    }

    #[test]
    fn destroy_leaves_no_parent_duet_made_in_any_hierarchy() {
        if duet_shared::testing::skip_unless_root(
            "destroy_leaves_no_parent_duet_made_in_any_hierarchy",
            "to make cgroups",
        ) {
            return;
        }
        // A level of this test's own below `duet/`, so tests running beside
        // it (whose instances share `duet/`) do not change what is seen.
        let own = format!("unit-{}", std::process::id());
        let rel = Path::new("duet").join(&own).join("c1");
        let cg = OciCgroup::create(&rel, None, &[]).unwrap();
        assert!(!cg.dirs.is_empty());
        for (_, d) in &cg.dirs {
            assert!(d.is_dir(), "{} made", d.display());
        }
        let tops: Vec<PathBuf> = cg
            .dirs
            .iter()
            .map(|(_, d)| d.parent().unwrap().to_path_buf())
            .collect();
        cg.destroy().unwrap();
        for t in tops {
            assert!(!t.exists(), "{} left behind", t.display());
        }
    }

    #[test]
    fn only_a_vanished_parent_starts_a_create_again() {
        let gone = |action, path: &str| OciCgroupError::Io {
            action,
            path: PathBuf::from(path),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let m = "/sys/fs/cgroup";
        assert!(parent_vanished(&gone(
            "creating",
            &format!("{m}/pids/duet/c1")
        )));
        assert!(parent_vanished(&gone(
            "opening",
            &format!("{m}/unified/duet/cgroup.subtree_control")
        )));
        assert!(!parent_vanished(&gone(
            "opening",
            &format!("{m}/memory/duet/c1/memory.memsw.limit_in_bytes")
        )));
        let denied = OciCgroupError::Io {
            action: "creating",
            path: PathBuf::from(format!("{m}/pids/duet/c1")),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(!parent_vanished(&denied));
    }

    #[test]
    fn cgroups_paths_stay_below_the_hierarchy() {
        assert_eq!(relative_path(None, "c1").unwrap(), PathBuf::from("duet/c1"));
        assert_eq!(
            relative_path(Some(Path::new("/docker/abc")), "abc").unwrap(),
            PathBuf::from("docker/abc")
        );
        assert_eq!(
            relative_path(Some(Path::new("k8s/pod1")), "x").unwrap(),
            PathBuf::from("duet/k8s/pod1")
        );
        for bad in ["/a/../../etc", "../x", "/"] {
            let e = relative_path(Some(Path::new(bad)), "x")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("linux.cgroupsPath `{bad}`")), "{e}");
        }
        let e = relative_path(Some(Path::new("system.slice:docker:abc")), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("systemd"), "{e}");
    }

    #[test]
    fn limits_have_v1_and_v2_names() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":33554432,"swap":67108864},"cpu":{"shares":1024,"quota":50000,"period":100000},"pids":{"limit":64},
               "devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}]}"#,
        )
        .unwrap();
        let v1 = limit_writes(&r, false).unwrap();
        assert!(v1.contains(&("memory", "memory.limit_in_bytes", "33554432".into())));
        assert!(v1.contains(&("memory", "memory.memsw.limit_in_bytes", "67108864".into())));
        assert!(v1.contains(&("cpu", "cpu.cfs_quota_us", "50000".into())));
        assert!(v1.contains(&("pids", "pids.max", "64".into())));
        assert!(v1.contains(&("devices", "devices.deny", "a".into())));
        assert!(v1.contains(&("devices", "devices.allow", "c 1:3 rwm".into())));
        let v2 = limit_writes(&r, true).unwrap();
        assert!(v2.contains(&("memory", "memory.max", "33554432".into())));
        assert!(v2.contains(&("memory", "memory.swap.max", "33554432".into())));
        assert!(v2.contains(&("cpu", "cpu.max", "50000 100000".into())));
        assert!(v2.contains(&("cpu", "cpu.weight", "39".into())));
        assert!(!v2.iter().any(|(c, _, _)| *c == "devices"));
    }
}
