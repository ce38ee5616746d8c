//! Cgroups for one container: `<parent>/duet/<instance id>` under each hierarchy used.
//!
//! `<parent>` is, as runc does it, the cgroup of the process that runs duet
//! (so whatever limits its caller lives under still cover the container),
//! or `DUET_CGROUP_PARENT` / `duet run --cgroup-parent` ([`CgroupParent`]).
//! On cgroup v2 a cgroup that holds processes cannot also have children
//! with controllers enabled (the "no internal processes" rule), and duet's
//! own cgroup holds duet: there the parent of duet's cgroup is used, unless
//! duet's cgroup is a systemd `.slice` (runc's rule, for the same reason).
//!
//! Two layouts exist in the wild and duet supports both:
//! - pure cgroup v2: one `cgroup2` mount (usually `/sys/fs/cgroup`) carrying
//!   every controller;
//! - v1 or v1/v2 hybrid: one `cgroup` mount per controller (or per group of
//!   co-mounted controllers), plus possibly a `cgroup2` mount that carries
//!   only what v1 left over (on duet's development hosts: hugetlb).
//!
//! [`CgroupLayout::from_mountinfo`] reads the mounts; [`CgroupLayout::plan`]
//! picks, per controller duet needs, the v1 hierarchy that carries it or else
//! the v2 one. Every path is derived from the mount points it is given, so the
//! tests run against a temp dir of fixture files.

use duet_shared::Resources;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Directory under each hierarchy root that holds duet's cgroups.
pub const DUET_CGROUP_DIR: &str = "duet";

/// Period of the CPU quota, microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// How long teardown waits for a cgroup's processes to die.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors while detecting, creating, filling or removing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory could not be read, written, created or removed.
    #[error("cgroup {action} {}", path.display())]
    Io {
        /// What duet was doing (`write`, `mkdir`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A limit needs a controller that no mounted hierarchy offers.
    #[error("no cgroup hierarchy offers the `{controller}` controller (needed for {why}); mounted cgroups: {mounts}")]
    MissingController {
        /// Controller name.
        controller: &'static str,
        /// The spec field that needs it.
        why: &'static str,
        /// What was found, for the reader.
        mounts: String,
    },
    /// Processes stayed in a cgroup after being killed.
    #[error("cgroup {} still has processes {pids:?} after SIGKILL", path.display())]
    NotDrained {
        /// The cgroup directory.
        path: PathBuf,
        /// What `cgroup.procs` still listed.
        pids: Vec<i32>,
    },
    /// An instance id that cannot name a cgroup.
    #[error("instance id `{0}` cannot name a cgroup")]
    BadId(String),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A resource controller duet sets limits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    /// `memory`: memory_mib.
    Memory,
    /// `pids`: pids_max.
    Pids,
    /// `cpu`: vcpus as a CFS quota.
    Cpu,
}

impl Controller {
    /// Kernel name of the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }

    /// The spec field that makes duet need this controller.
    fn field(self) -> &'static str {
        match self {
            Controller::Memory => "resources.memory_mib",
            Controller::Pids => "resources.pids_max",
            Controller::Cpu => "resources.vcpus",
        }
    }

    /// Controllers a run with `resources` needs.
    pub fn needed(resources: &Resources) -> Vec<Controller> {
        let mut v = vec![Controller::Memory, Controller::Cpu];
        if resources.pids_max.is_some() {
            v.push(Controller::Pids);
        }
        v.sort();
        v
    }
}

/// Which cgroup file systems are mounted where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLayout {
    /// v1 mounts: mount point and the controllers (super options) it carries.
    pub v1: Vec<(PathBuf, Vec<String>)>,
    /// The cgroup2 mount point, if any.
    pub v2: Option<PathBuf>,
}

/// Undoes the octal escapes (`\040` for space) mountinfo uses in paths.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl CgroupLayout {
    /// Parses `/proc/self/mountinfo` text. The first mount of each v1
    /// controller and the first cgroup2 mount win (bind mounts come later);
    /// a mount hidden by a later mount on the same or a parent directory
    /// (e.g. a tmpfs + cgroup2 stacked over the v1 tree) is ignored.
    pub fn from_mountinfo(text: &str) -> CgroupLayout {
        // (mount point, fstype, super options), in mount order.
        let mut mounts: Vec<(PathBuf, &str, &str)> = Vec::new();
        for line in text.lines() {
            // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if fields.len() < 5 || right.len() < 3 {
                continue;
            }
            mounts.push((
                PathBuf::from(unescape_mountinfo(fields[4])),
                right[0],
                right[2],
            ));
        }
        let mut layout = CgroupLayout::default();
        for (i, (mount, fstype, options)) in mounts.iter().enumerate() {
            if mounts[i + 1..]
                .iter()
                .any(|(later, _, _)| mount.starts_with(later))
            {
                continue; // shadowed
            }
            match *fstype {
                "cgroup2" if layout.v2.is_none() => layout.v2 = Some(mount.clone()),
                "cgroup" => {
                    let controllers: Vec<String> = options
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                        .filter(|o| !o.starts_with("no") && *o != "clone_children" && *o != "xattr")
                        .map(str::to_string)
                        .collect();
                    let already = layout
                        .v1
                        .iter()
                        .any(|(_, c)| c.iter().any(|x| controllers.contains(x)));
                    if !controllers.is_empty() && !already {
                        layout.v1.push((mount.clone(), controllers));
                    }
                }
                _ => {}
            }
        }
        layout
    }

    /// Reads the calling process's mount table.
    pub fn detect() -> Result<CgroupLayout, CgroupError> {
        let p = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(p).map_err(io_err("read", p))?;
        Ok(CgroupLayout::from_mountinfo(&text))
    }

    /// Controllers the v2 hierarchy offers (its root's `cgroup.controllers`).
    fn v2_controllers(&self) -> Vec<String> {
        let Some(root) = &self.v2 else {
            return Vec::new();
        };
        std::fs::read_to_string(root.join("cgroup.controllers"))
            .map(|t| t.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .v1
            .iter()
            .map(|(p, c)| format!("v1 {} ({})", p.display(), c.join(",")))
            .collect();
        if let Some(p) = &self.v2 {
            parts.push(format!(
                "v2 {} ({})",
                p.display(),
                self.v2_controllers().join(" ")
            ));
        }
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join("; ")
        }
    }

    /// The hierarchies that carry `needed`: a v1 mount where the controller
    /// is bound to v1, the v2 mount otherwise; `duet/` right under each root.
    pub fn plan(&self, needed: &[Controller]) -> Result<Vec<Hierarchy>, CgroupError> {
        self.plan_under(needed, &CgroupParent::Fixed(PathBuf::new()))
    }

    /// Like [`CgroupLayout::plan`], with `duet/` below `parent` in each hierarchy.
    pub fn plan_under(
        &self,
        needed: &[Controller],
        parent: &CgroupParent,
    ) -> Result<Vec<Hierarchy>, CgroupError> {
        let v2_has = self.v2_controllers();
        let mut out: Vec<Hierarchy> = Vec::new();
        for &c in needed {
            let v1 = self
                .v1
                .iter()
                .find(|(_, cs)| cs.iter().any(|x| x == c.name()));
            let (version, mount) = match (v1, &self.v2) {
                (Some((m, _)), _) => (CgroupVersion::V1, m.clone()),
                (None, Some(m)) if v2_has.iter().any(|x| x == c.name()) => {
                    (CgroupVersion::V2, m.clone())
                }
                _ => {
                    return Err(CgroupError::MissingController {
                        controller: c.name(),
                        why: c.field(),
                        mounts: self.describe(),
                    })
                }
            };
            match out.iter_mut().find(|h| h.mount == mount) {
                Some(h) => h.controllers.push(c),
                None => out.push(Hierarchy {
                    version,
                    parent: parent.path_in(version, c, &mount),
                    mount,
                    controllers: vec![c],
                }),
            }
        }
        Ok(out)
    }

    /// Every hierarchy root where duet might have made a cgroup (for `gc`).
    pub fn all_roots(&self) -> Vec<(CgroupVersion, PathBuf)> {
        let mut v: Vec<(CgroupVersion, PathBuf)> = self
            .v1
            .iter()
            .map(|(p, _)| (CgroupVersion::V1, p.clone()))
            .collect();
        if let Some(p) = &self.v2 {
            v.push((CgroupVersion::V2, p.clone()));
        }
        v
    }
}

/// cgroup v1 or v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy per-controller hierarchies.
    V1,
    /// The unified hierarchy.
    V2,
}

/// One mounted hierarchy and the controllers duet uses in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// v1 or v2.
    pub version: CgroupVersion,
    /// Mount point (the hierarchy's root as this process sees it).
    pub mount: PathBuf,
    /// The cgroup (relative to `mount`) that holds duet's `duet/` directory.
    pub parent: PathBuf,
    /// Controllers whose limits go into this hierarchy.
    pub controllers: Vec<Controller>,
}

/// Environment variable naming the cgroup (a path inside each hierarchy)
/// under which duet makes its `duet/` directory instead of the caller's.
pub const CGROUP_PARENT_ENV: &str = "DUET_CGROUP_PARENT";

/// Where below each hierarchy's root duet's `duet/` directory goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupParent {
    /// The same path in every hierarchy (`--cgroup-parent`, [`CGROUP_PARENT_ENV`], tests).
    Fixed(PathBuf),
    /// The invoking process's own cgroups, as `/proc/self/cgroup` lists them.
    Caller(String),
}

impl CgroupParent {
    /// `explicit` if given, else [`CGROUP_PARENT_ENV`], else the caller's own cgroups.
    pub fn detect(explicit: Option<&Path>) -> CgroupParent {
        if let Some(p) = explicit {
            return CgroupParent::Fixed(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os(CGROUP_PARENT_ENV).filter(|p| !p.is_empty()) {
            return CgroupParent::Fixed(PathBuf::from(p));
        }
        CgroupParent::Caller(std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default())
    }

    /// The parent (relative to the hierarchy root) for `controller` in a
    /// hierarchy of `version` mounted at `mount`. A caller's cgroup that is
    /// not visible under `mount` (a mount of a sub-tree) falls back to the root.
    pub fn path_in(&self, version: CgroupVersion, controller: Controller, mount: &Path) -> PathBuf {
        let rel = |p: &str| -> PathBuf {
            Path::new(p)
                .components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .collect()
        };
        match self {
            CgroupParent::Fixed(p) => rel(&p.to_string_lossy()),
            CgroupParent::Caller(text) => {
                let own = text.lines().find_map(|l| {
                    let mut f = l.splitn(3, ':');
                    let (_, list, path) = (f.next()?, f.next()?, f.next()?);
                    let hit = match version {
                        CgroupVersion::V2 => list.is_empty(),
                        CgroupVersion::V1 => list.split(',').any(|c| c == controller.name()),
                    };
                    hit.then(|| rel(path))
                });
                let Some(mut own) = own else {
                    return PathBuf::new();
                };
                if version == CgroupVersion::V2
                    && !own.as_os_str().is_empty()
                    && !own.to_string_lossy().ends_with(".slice")
                {
                    own.pop();
                }
                if mount.join(&own).is_dir() {
                    own
                } else {
                    PathBuf::new()
                }
            }
        }
    }
}

impl Hierarchy {
    /// `<mount>/<parent>/duet`: where this hierarchy keeps duet's cgroups.
    pub fn duet_dir(&self) -> PathBuf {
        self.mount.join(&self.parent).join(DUET_CGROUP_DIR)
    }
}

/// Checks that an instance id is one path component.
fn check_id(id: &str) -> Result<(), CgroupError> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(CgroupError::BadId(id.to_string()));
    }
    Ok(())
}

/// Writes `value` to an existing cgroup file (never creates it).
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err("open", path))?;
    f.write_all(value.as_bytes()).map_err(io_err("write", path))
}

/// Like [`write_file`], but a file the kernel does not offer (no swap
/// accounting, ...) is skipped.
fn write_optional(path: &Path, value: &str) -> Result<(), CgroupError> {
    match write_file(path, value) {
        Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn mkdir_ok_if_exists(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("mkdir", path)(e)),
    }
}

/// Makes sure `dir/cgroup.subtree_control` enables `controllers` (v2).
fn enable_subtree(dir: &Path, controllers: &[Controller]) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let have = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !have.split_whitespace().any(|x| x == c.name()))
        .map(|c| format!("+{}", c.name()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write_file(&path, &missing.join(" "))
}

/// The limit files and values for one hierarchy, in the order they are written.
pub fn limit_writes(h: &Hierarchy, r: &Resources) -> Vec<(&'static str, String, bool)> {
    let mut w = Vec::new();
    let mem = r.memory_mib * 1024 * 1024;
    let quota = u64::from(r.vcpus) * CPU_PERIOD_US;
    for c in &h.controllers {
        match (h.version, c) {
            (CgroupVersion::V2, Controller::Memory) => {
                w.push(("memory.max", mem.to_string(), false));
                w.push(("memory.swap.max", "0".to_string(), true));
            }
            (CgroupVersion::V1, Controller::Memory) => {
                w.push(("memory.limit_in_bytes", mem.to_string(), false));
                w.push(("memory.memsw.limit_in_bytes", mem.to_string(), true));
            }
            (_, Controller::Pids) => {
                if let Some(n) = r.pids_max {
                    w.push(("pids.max", n.to_string(), false));
                }
            }
            (CgroupVersion::V2, Controller::Cpu) => {
                w.push(("cpu.max", format!("{quota} {CPU_PERIOD_US}"), false));
            }
            (CgroupVersion::V1, Controller::Cpu) => {
                w.push(("cpu.cfs_period_us", CPU_PERIOD_US.to_string(), false));
                w.push(("cpu.cfs_quota_us", quota.to_string(), false));
            }
        }
    }
    w
}

/// One container's cgroup directories. Removed by [`Cgroup::destroy`]; a
/// dropped, undestroyed `Cgroup` destroys itself (best effort).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<(CgroupVersion, PathBuf)>,
}

impl Cgroup {
    /// Creates `duet/<id>` in each hierarchy and writes the limits. On error,
    /// whatever was created is removed again.
    pub fn create(
        hierarchies: &[Hierarchy],
        id: &str,
        r: &Resources,
    ) -> Result<Cgroup, CgroupError> {
        check_id(id)?;
        let mut cg = Cgroup { dirs: Vec::new() };
        for h in hierarchies {
            let parent = h.duet_dir();
            if h.version == CgroupVersion::V2 {
                // Every level from the root down must pass the controllers on.
                let mut level = h.mount.clone();
                enable_subtree(&level, &h.controllers)?;
                for c in h.parent.components() {
                    level.push(c);
                    enable_subtree(&level, &h.controllers)?;
                }
            }
            let dir = parent.join(id);
            // A run that just removed its own instance may remove the then
            // empty `duet/` meanwhile (see `destroy`): make it again and retry.
            let mut tries = 0;
            loop {
                tries += 1;
                let made = mkdir_ok_if_exists(&parent)
                    .and_then(|()| match h.version {
                        CgroupVersion::V2 => enable_subtree(&parent, &h.controllers),
                        CgroupVersion::V1 => Ok(()),
                    })
                    .and_then(|()| mkdir_ok_if_exists(&dir));
                match made {
                    Ok(()) => break,
                    Err(CgroupError::Io { ref source, .. })
                        if source.kind() == io::ErrorKind::NotFound && tries < 5 => {}
                    Err(e) => return Err(e),
                }
            }
            cg.dirs.push((h.version, dir.clone()));
            for (file, value, optional) in limit_writes(h, r) {
                let p = dir.join(file);
                if optional {
                    write_optional(&p, &value)?;
                } else {
                    write_file(&p, &value)?;
                }
            }
        }
        Ok(cg)
    }

    /// The cgroup directories, one per hierarchy.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(_, p)| p.as_path())
    }

    /// Moves process `pid` into every directory of this cgroup.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        let s = pid.to_string();
        for (_, d) in &self.dirs {
            write_file(&d.join("cgroup.procs"), &s)?;
        }
        Ok(())
    }

    /// Kills every process left in the cgroup and removes its directories.
    pub fn destroy(mut self) -> Result<(), CgroupError> {
        let dirs = std::mem::take(&mut self.dirs);
        let mut first_err = None;
        for (v, d) in dirs {
            if let Err(e) = remove_cgroup_dir(v, &d) {
                first_err.get_or_insert(e);
            }
            remove_empty_duet_dir(&d);
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Removes `duet/` above an instance's cgroup once no instance is left in
/// it, so duet leaves nothing in its caller's cgroup (whose owner, e.g.
/// systemd for a session scope, wants to remove it later). Fails quietly
/// while other instances are there.
fn remove_empty_duet_dir(instance_dir: &Path) {
    if let Some(parent) = instance_dir.parent() {
        if parent.file_name().is_some_and(|n| n == DUET_CGROUP_DIR) {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for (v, d) in std::mem::take(&mut self.dirs) {
            let _ = remove_cgroup_dir(v, &d);
            remove_empty_duet_dir(&d);
        }
    }
}

/// Pids listed in a cgroup directory's `cgroup.procs`.
pub fn cgroup_pids(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let p = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&p).map_err(io_err("read", &p))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// SIGKILLs everything in cgroup `dir`, waits until it is empty, removes it.
/// A directory that does not exist is fine.
pub fn remove_cgroup_dir(version: CgroupVersion, dir: &Path) -> Result<(), CgroupError> {
    // Fast path: an empty cgroup (the normal case: the pid namespace died with its init).
    match std::fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    let kill_file = dir.join("cgroup.kill");
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let pids = loop {
        if version == CgroupVersion::V2 && kill_file.exists() {
            let _ = write_file(&kill_file, "1");
        }
        let pids = match cgroup_pids(dir) {
            Ok(p) => p,
            Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        for &pid in &pids {
            // SAFETY: kill(2) with a pid read from our own cgroup; no memory is touched.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                if pids.is_empty() {
                    return Err(io_err("rmdir", dir)(e));
                }
                break pids;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    Err(CgroupError::NotDrained {
        path: dir.to_path_buf(),
        pids,
    })
}

/// Removes what a crashed run left for instance `id` in every hierarchy of `layout`.
pub fn gc_instance(layout: &CgroupLayout, id: &str) -> Result<(), CgroupError> {
    check_id(id)?;
    let mut first_err = None;
    for (v, root) in layout.all_roots() {
        for dir in find_instance_dirs(&root, id) {
            if let Err(e) = remove_cgroup_dir(v, &dir) {
                first_err.get_or_insert(e);
            }
            remove_empty_duet_dir(&dir);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Walks the cgroup directories below `root`, at most [`GC_SEARCH_DEPTH`]
/// levels down, calling `visit` with each; the walk goes below one only
/// when `visit` returns true. cgroupfs has no symlinks, and file_type()
/// would not follow one anyway.
pub fn walk_cgroup_dirs(root: &Path, mut visit: impl FnMut(&Path) -> bool) {
    let mut todo = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            if visit(&path) && depth < GC_SEARCH_DEPTH {
                todo.push((path, depth + 1));
            }
        }
    }
}

/// Removes every empty `duet/` directory (no instance in it) below the
/// roots of `layout`, which a run that crashed between removing its own
/// cgroup and its parent left; returns those removed. One that holds an
/// instance fails to go (EBUSY), and a create that finds its `duet/` gone
/// under it starts again, so this is safe beside running instances.
pub fn gc_empty_duet_dirs(layout: &CgroupLayout) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for (_, root) in layout.all_roots() {
        walk_cgroup_dirs(&root, |path| {
            let gone = path.file_name().is_some_and(|n| n == DUET_CGROUP_DIR)
                && std::fs::remove_dir(path).is_ok();
            if gone {
                removed.push(path.to_path_buf());
            }
            !gone
        });
    }
    removed
}

/// Levels of cgroups below a root that `gc` searches for `duet/<id>`.
pub const GC_SEARCH_DEPTH: usize = 12;

/// Every `.../duet/<id>` directory below `root`, whatever parent the run
/// that made it used (the caller's cgroup then may differ from gc's).
pub fn find_instance_dirs(root: &Path, id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let at_root = root.join(DUET_CGROUP_DIR).join(id);
    if at_root.is_dir() {
        found.push(at_root);
    }
    walk_cgroup_dirs(root, |dir| {
        let candidate = dir.join(DUET_CGROUP_DIR).join(id);
        if candidate.is_dir() {
            found.push(candidate);
        }
        true
    });
    found
}

/// The container backend's cgroups for other backends' instances (the
/// jailed VMM of a microVM): `duet/<id>` below the caller's cgroup with
/// memory and cpu limits, as for a container.
#[derive(Debug, Default, Clone, Copy)]
pub struct InstanceCgroups;

impl duet_shared::runtime::HostCgroups for InstanceCgroups {
    fn create(
        &self,
        id: &str,
        resources: &Resources,
        parent: Option<&Path>,
    ) -> Result<Box<dyn duet_shared::runtime::CgroupLease>, duet_shared::runtime::BackendError>
    {
        let layout = CgroupLayout::detect()?;
        let hierarchies = layout.plan_under(
            &Controller::needed(resources),
            &CgroupParent::detect(parent),
        )?;
        Ok(Box::new(Cgroup::create(&hierarchies, id, resources)?))
    }
}

impl duet_shared::runtime::CgroupLease for Cgroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    fn destroy(self: Box<Self>) -> Result<(), duet_shared::runtime::BackendError> {
        Ok(Cgroup::destroy(*self)?)
    }
}

/// One line of `/proc/PID/cgroup`: the process's cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Hierarchy id (0: the v2 hierarchy).
    pub hierarchy: u32,
    /// v1 controllers (or `name=...`), comma-separated; empty for v2.
    pub controllers: String,
    /// The cgroup, relative to the reader's cgroup namespace root.
    pub path: String,
}

impl Membership {
    /// v1 or v2.
    pub fn version(&self) -> CgroupVersion {
        if self.hierarchy == 0 && self.controllers.is_empty() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        }
    }
}

/// Parses `/proc/PID/cgroup` text (`id:controllers:path` lines).
pub fn parse_memberships(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            Some(Membership {
                hierarchy: f.next()?.parse().ok()?,
                controllers: f.next()?.to_string(),
                path: f.next()?.to_string(),
            })
        })
        .collect()
}

/// The directory of `m` as this process sees the hierarchies mounted
/// (`mountinfo`: its `/proc/self/mountinfo`): the first cgroup mount of
/// that hierarchy, not hidden by a later mount, whose root holds the path.
pub fn membership_dir(m: &Membership, mountinfo: &str) -> Option<PathBuf> {
    // (root, mount point, fstype, super options), in mount order.
    let mut mounts: Vec<(String, PathBuf, &str, &str)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if fields.len() < 5 || right.len() < 3 {
            continue;
        }
        mounts.push((
            unescape_mountinfo(fields[3]),
            PathBuf::from(unescape_mountinfo(fields[4])),
            right[0],
            right[2],
        ));
    }
    let wanted: Vec<&str> = m.controllers.split(',').collect();
    mounts
        .iter()
        .enumerate()
        .find_map(|(i, (root, point, fstype, options))| {
            let fits = match m.version() {
                CgroupVersion::V2 => *fstype == "cgroup2",
                CgroupVersion::V1 => {
                    *fstype == "cgroup"
                        && wanted.iter().all(|w| options.split(',').any(|o| o == *w))
                }
            };
            let shadowed = mounts[i + 1..]
                .iter()
                .any(|(_, later, _, _)| point.starts_with(later));
            if !fits || shadowed {
                return None;
            }
            let rest = if root == "/" {
                m.path.as_str()
            } else {
                let rest = m.path.strip_prefix(root.as_str())?;
                if !rest.is_empty() && !rest.starts_with('/') {
                    return None;
                }
                rest
            };
            Some(point.join(rest.trim_start_matches('/')))
        })
}

/// The cgroup directories a process must join to be where `target` (its
/// `/proc/PID/cgroup`) is, given where it is now (`own`, its
/// `/proc/self/cgroup`): one per hierarchy whose path differs. A hierarchy
/// that is not mounted here comes back as `Err` with its line.
pub fn dirs_to_join(target: &str, own: &str, mountinfo: &str) -> Result<Vec<PathBuf>, String> {
    let own = parse_memberships(own);
    let mut dirs = Vec::new();
    for m in parse_memberships(target) {
        let same = own.iter().any(|o| {
            o.hierarchy == m.hierarchy && o.controllers == m.controllers && o.path == m.path
        });
        if same {
            continue;
        }
        match membership_dir(&m, mountinfo) {
            Some(d) => dirs.push(d),
            None => return Err(format!("{}:{}:{}", m.hierarchy, m.controllers, m.path)),
        }
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_removes_an_empty_duet_parent_and_keeps_one_in_use() {
        if duet_shared::testing::skip_unless_root(
            "gc_removes_an_empty_duet_parent_and_keeps_one_in_use",
            "to make cgroups",
        ) {
            return;
        }
        let layout = CgroupLayout::detect().unwrap();
        let (_, root) = layout.all_roots().into_iter().next().unwrap();
        // Below a cgroup of this test's own, so nothing else is in them.
        let own = root.join(format!("duet-gc-test-{}", std::process::id()));
        let empty = own.join("a").join(DUET_CGROUP_DIR);
        let in_use = own.join("b").join(DUET_CGROUP_DIR).join("instance");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::create_dir_all(&in_use).unwrap();
        let removed = gc_empty_duet_dirs(&layout);
        let left_a = empty.exists();
        let left_b = in_use.exists();
        for d in [in_use.clone(), in_use.parent().unwrap().to_path_buf()] {
            let _ = std::fs::remove_dir(d);
        }
        for d in [&empty, &own.join("a"), &own.join("b"), &own] {
            let _ = std::fs::remove_dir(d);
        }
        assert!(removed.contains(&empty), "{removed:?}");
        assert!(!left_a, "the empty duet/ is gone");
        assert!(left_b, "a duet/ with an instance in it stays");
        assert!(!own.exists());
    }

    /// This development host's mountinfo (v1/v2 hybrid, cpu and cpuacct apart).
    const HYBRID: &str = "\
24 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A typical systemd distribution: pure v2.
    const PURE_V2: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
26 23 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    /// Older Docker-era hosts co-mount cpu and cpuacct, and bind mounts repeat.
    const COMOUNTED: &str = "\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
90 88 0:27 / /var/lib/x/memory rw,relatime - cgroup cgroup rw,memory
91 88 0:40 / /mnt/with\\040space rw,relatime - cgroup cgroup rw,pids
";

    #[test]
    fn detects_hybrid_layout() {
        let l = CgroupLayout::from_mountinfo(HYBRID);
        assert_eq!(l.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let names: Vec<_> =
            l.v1.iter()
                .map(|(p, c)| (p.to_str().unwrap(), c.join(",")))
                .collect();
        assert_eq!(
            names,
            vec![
                ("/sys/fs/cgroup/cpu", "cpu".to_string()),
                ("/sys/fs/cgroup/cpuacct", "cpuacct".to_string()),
                ("/sys/fs/cgroup/memory", "memory".to_string()),
                ("/sys/fs/cgroup/pids", "pids".to_string()),
            ]
        );
        // v1 wins for controllers bound there, even though a v2 mount exists.
        let plan = l
            .plan(&[Controller::Memory, Controller::Pids, Controller::Cpu])
            .unwrap();
        assert!(plan.iter().all(|h| h.version == CgroupVersion::V1));
        assert_eq!(plan.len(), 3);
    }

    #[test]
    fn detects_pure_v2_layout() {
        let l = CgroupLayout::from_mountinfo(PURE_V2);
        assert!(l.v1.is_empty());
        assert_eq!(l.v2, Some(PathBuf::from("/sys/fs/cgroup")));
    }

    /// This host after `unshare -m`, tmpfs + cgroup2 mounted over /sys/fs/cgroup.
    const V2_OVER_HYBRID: &str = "\
47 46 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
48 47 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
51 47 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
55 47 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
57 47 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
63 47 0:39 / /sys/fs/cgroup rw,relatime - tmpfs none rw
64 63 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 none rw
";

    #[test]
    fn shadowed_mounts_are_ignored() {
        let l = CgroupLayout::from_mountinfo(V2_OVER_HYBRID);
        assert!(l.v1.is_empty(), "{l:?}");
        assert_eq!(l.v2, Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn comounted_bind_mounts_and_escapes() {
        let l = CgroupLayout::from_mountinfo(COMOUNTED);
        assert_eq!(l.v1.len(), 3, "{l:?}");
        assert_eq!(l.v1[0].1, vec!["cpu".to_string(), "cpuacct".to_string()]);
        assert_eq!(l.v1[1].0, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(l.v1[2].0, PathBuf::from("/mnt/with space"));
        let plan = l.plan(&[Controller::Memory, Controller::Cpu]).unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[1].mount, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
    }

    /// A v2 root in a temp dir offering `controllers`.
    fn v2_fixture(controllers: &str) -> (tempfile::TempDir, CgroupLayout) {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(t.path().join("cgroup.subtree_control"), "").unwrap();
        let layout = CgroupLayout {
            v1: Vec::new(),
            v2: Some(t.path().to_path_buf()),
        };
        (t, layout)
    }

    fn touch(dir: &Path, files: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for f in files {
            std::fs::write(dir.join(f), "").unwrap();
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn v2_missing_controller_is_named() {
        let (_t, l) = v2_fixture("cpuset hugetlb");
        let e = l.plan(&[Controller::Memory]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("`memory`") && msg.contains("resources.memory_mib"),
            "{msg}"
        );
        assert!(msg.contains("hugetlb"), "{msg}");
    }

    #[test]
    fn v2_limits_and_subtree_control() {
        let (t, l) = v2_fixture("cpuset cpu io memory pids");
        let r = Resources {
            memory_mib: 64,
            vcpus: 2,
            pids_max: Some(100),
        };
        let plan = l.plan(&Controller::needed(&r)).unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(
            plan[0].controllers,
            vec![Controller::Memory, Controller::Pids, Controller::Cpu]
        );
        let leaf = t.path().join("duet/inst-1");
        // The fixture stands in for the kernel: the files exist once the dir does.
        touch(&t.path().join("duet"), &["cgroup.subtree_control"]);
        touch(
            &leaf,
            &["memory.max", "pids.max", "cpu.max", "cgroup.procs"],
        );
        let cg = Cgroup::create(&plan, "inst-1", &r).unwrap();
        assert_eq!(
            read(&t.path().join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(
            read(&t.path().join("duet/cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(read(&leaf.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(&leaf.join("pids.max")), "100");
        assert_eq!(read(&leaf.join("cpu.max")), "200000 100000");
        // No swap accounting in this fixture: memory.swap.max is skipped, not created.
        assert!(!leaf.join("memory.swap.max").exists());
        cg.add_pid(4242).unwrap();
        assert_eq!(read(&leaf.join("cgroup.procs")), "4242");
        assert_eq!(cg.dirs().collect::<Vec<_>>(), vec![leaf.as_path()]);
        std::mem::forget(cg); // fixture dirs hold files: rmdir would fail, as it should
    }

    #[test]
    fn v2_swap_limit_written_when_offered() {
        let (t, l) = v2_fixture("cpu memory");
        let r = Resources::default();
        let plan = l.plan(&Controller::needed(&r)).unwrap();
        let leaf = t.path().join("duet/x");
        touch(&t.path().join("duet"), &["cgroup.subtree_control"]);
        touch(&leaf, &["memory.max", "memory.swap.max", "cpu.max"]);
        std::fs::write(t.path().join("cgroup.subtree_control"), "cpu memory").unwrap();
        let cg = Cgroup::create(&plan, "x", &r).unwrap();
        assert_eq!(read(&leaf.join("memory.swap.max")), "0");
        assert_eq!(read(&leaf.join("cpu.max")), "100000 100000");
        // Already enabled at the root: left alone.
        assert_eq!(read(&t.path().join("cgroup.subtree_control")), "cpu memory");
        std::mem::forget(cg);
    }

    #[test]
    fn v1_limits_per_hierarchy() {
        let t = tempfile::tempdir().unwrap();
        let (mem, pids, cpu) = (
            t.path().join("memory"),
            t.path().join("pids"),
            t.path().join("cpu"),
        );
        let l = CgroupLayout {
            v1: vec![
                (cpu.clone(), vec!["cpu".into()]),
                (mem.clone(), vec!["memory".into()]),
                (pids.clone(), vec!["pids".into()]),
            ],
            v2: None,
        };
        let r = Resources {
            memory_mib: 32,
            vcpus: 1,
            pids_max: Some(16),
        };
        let plan = l.plan(&Controller::needed(&r)).unwrap();
        assert_eq!(plan.len(), 3);
        touch(
            &mem.join("duet/i"),
            &[
                "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                "cgroup.procs",
            ],
        );
        touch(&pids.join("duet/i"), &["pids.max", "cgroup.procs"]);
        touch(
            &cpu.join("duet/i"),
            &["cpu.cfs_period_us", "cpu.cfs_quota_us", "cgroup.procs"],
        );
        let cg = Cgroup::create(&plan, "i", &r).unwrap();
        assert_eq!(
            read(&mem.join("duet/i/memory.limit_in_bytes")),
            (32u64 << 20).to_string()
        );
        assert_eq!(
            read(&mem.join("duet/i/memory.memsw.limit_in_bytes")),
            (32u64 << 20).to_string()
        );
        assert_eq!(read(&pids.join("duet/i/pids.max")), "16");
        assert_eq!(read(&cpu.join("duet/i/cpu.cfs_period_us")), "100000");
        assert_eq!(read(&cpu.join("duet/i/cpu.cfs_quota_us")), "100000");
        cg.add_pid(7).unwrap();
        for d in [&mem, &pids, &cpu] {
            assert_eq!(read(&d.join("duet/i/cgroup.procs")), "7");
        }
        std::mem::forget(cg);
    }

    #[test]
    fn failed_create_names_the_file_and_cleans_up() {
        let t = tempfile::tempdir().unwrap();
        let mem = t.path().join("memory");
        std::fs::create_dir(&mem).unwrap();
        let l = CgroupLayout {
            v1: vec![
                (mem.clone(), vec!["memory".into()]),
                (mem.clone(), vec!["cpu".into()]),
            ],
            v2: None,
        };
        let plan = l.plan(&[Controller::Memory]).unwrap();
        // The leaf dir gets created, but has no memory.limit_in_bytes: like a kernel without memcg.
        let e = Cgroup::create(&plan, "i", &Resources::default()).unwrap_err();
        assert!(e.to_string().contains("memory.limit_in_bytes"), "{e}");
        assert!(!mem.join("duet/i").exists(), "leaf removed on error");
    }

    #[test]
    fn bad_ids_are_refused() {
        let l = CgroupLayout::default();
        assert!(matches!(
            gc_instance(&l, "../x"),
            Err(CgroupError::BadId(_))
        ));
        assert!(matches!(gc_instance(&l, ""), Err(CgroupError::BadId(_))));
        assert!(gc_instance(&l, "fine-id").is_ok());
    }

    #[test]
    fn removing_a_missing_cgroup_is_fine() {
        let t = tempfile::tempdir().unwrap();
        remove_cgroup_dir(CgroupVersion::V2, &t.path().join("nope")).unwrap();
    }

    #[test]
    fn parent_is_the_callers_cgroup_v1_and_its_parent_on_v2() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path();
        std::fs::create_dir_all(m.join("process_api/abc")).unwrap();
        std::fs::create_dir_all(m.join("user.slice/user-0.slice/session-1.scope")).unwrap();
        let caller = CgroupParent::Caller(
            "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/\n\
             0::/user.slice/user-0.slice/session-1.scope\n"
                .into(),
        );
        assert_eq!(
            caller.path_in(CgroupVersion::V1, Controller::Memory, m),
            PathBuf::from("process_api/abc")
        );
        assert_eq!(
            caller.path_in(CgroupVersion::V1, Controller::Cpu, m),
            PathBuf::new()
        );
        // v2: a scope holds duet itself, so its parent slice is used (runc's rule).
        assert_eq!(
            caller.path_in(CgroupVersion::V2, Controller::Memory, m),
            PathBuf::from("user.slice/user-0.slice")
        );
        let slice = CgroupParent::Caller("0::/user.slice/user-0.slice\n".into());
        assert_eq!(
            slice.path_in(CgroupVersion::V2, Controller::Pids, m),
            PathBuf::from("user.slice/user-0.slice")
        );
        // Not visible under this mount (a sub-tree mount, another namespace): the root.
        let gone = CgroupParent::Caller("4:memory:/elsewhere\n".into());
        assert_eq!(
            gone.path_in(CgroupVersion::V1, Controller::Memory, m),
            PathBuf::new()
        );
        let fixed = CgroupParent::Fixed(PathBuf::from("/../a/./b"));
        assert_eq!(
            fixed.path_in(CgroupVersion::V2, Controller::Memory, m),
            PathBuf::from("a/b"),
            "`..` never climbs out of the hierarchy"
        );
    }

    #[test]
    fn v2_parent_levels_pass_the_controllers_on() {
        let (t, l) = v2_fixture("memory pids cpu");
        let deep = t.path().join("a.slice/b.slice");
        touch(&t.path().join("a.slice"), &["cgroup.subtree_control"]);
        touch(&deep, &["cgroup.subtree_control"]);
        touch(&deep.join("duet"), &["cgroup.subtree_control"]);
        touch(&deep.join("duet/x-1"), &["memory.max", "cpu.max"]);
        let plan = l
            .plan_under(
                &[Controller::Memory, Controller::Cpu],
                &CgroupParent::Fixed("a.slice/b.slice".into()),
            )
            .unwrap();
        assert_eq!(plan[0].duet_dir(), deep.join("duet"));
        let r = Resources::default();
        let cg = Cgroup::create(&plan, "x-1", &r).unwrap();
        for level in [
            t.path().to_path_buf(),
            t.path().join("a.slice"),
            deep.clone(),
            deep.join("duet"),
        ] {
            assert_eq!(
                read(&level.join("cgroup.subtree_control")),
                "+memory +cpu",
                "{}",
                level.display()
            );
        }
        assert_eq!(
            find_instance_dirs(t.path(), "x-1"),
            vec![deep.join("duet/x-1")]
        );
        std::mem::forget(cg);
    }

    #[test]
    fn memberships_map_to_mounted_dirs() {
        let target = "\
9:name=systemd:/
4:memory:/process_api/abc/duet/web-1
8:pids:/duet/web-1
1:cpu:/duet/web-1
0::/
";
        let own = "9:name=systemd:/\n4:memory:/process_api/abc\n8:pids:/\n1:cpu:/\n0::/\n";
        let mi = HYBRID.to_string()
            + "42 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n";
        let ms = parse_memberships(target);
        assert_eq!(ms.len(), 5);
        assert_eq!(ms[4].version(), CgroupVersion::V2);
        assert_eq!(ms[1].version(), CgroupVersion::V1);
        let dirs = dirs_to_join(target, own, &mi).unwrap();
        assert_eq!(
            dirs,
            [
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/duet/web-1"),
                PathBuf::from("/sys/fs/cgroup/pids/duet/web-1"),
                PathBuf::from("/sys/fs/cgroup/cpu/duet/web-1"),
            ]
        );
        // Pure v2: the one line.
        let dirs = dirs_to_join("0::/user.slice/duet/x\n", "0::/user.slice/sh\n", PURE_V2).unwrap();
        assert_eq!(dirs, [PathBuf::from("/sys/fs/cgroup/user.slice/duet/x")]);
        // Co-mounted controllers, and a mount of a sub-tree.
        let m = Membership {
            hierarchy: 3,
            controllers: "cpu,cpuacct".into(),
            path: "/duet/x".into(),
        };
        assert_eq!(
            membership_dir(&m, COMOUNTED),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/duet/x"))
        );
        let sub = "50 1 0:29 /kubepods /cg/cpu rw - cgroup cgroup rw,cpu,cpuacct\n";
        let m2 = Membership {
            path: "/kubepods/pod1".into(),
            ..m.clone()
        };
        assert_eq!(
            membership_dir(&m2, sub),
            Some(PathBuf::from("/cg/cpu/pod1"))
        );
        let m3 = Membership {
            path: "/kubepodsX".into(),
            ..m.clone()
        };
        assert_eq!(membership_dir(&m3, sub), None);
        // A hierarchy not mounted here is named.
        let e = dirs_to_join("5:devices:/duet/x\n", "5:devices:/\n", PURE_V2).unwrap_err();
        assert_eq!(e, "5:devices:/duet/x");
    }
}
