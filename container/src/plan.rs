//! What the container's init does between clone and execve, as data.
//!
//! The parent builds a [`ChildPlan`] (every path, option string, argv and
//! envp already a C string) and the child walks its [`Step`]s with raw
//! syscalls and no allocation (see `child.rs`). Keeping the plan as data lets
//! the tests check the order and contents of the setup without root, and lets
//! the parent name the exact step, path and device when the child reports a
//! failure by step number.

use crate::capabilities::CapabilityPlan;
use crate::seccomp::SeccompPrograms;
use duet_shared::spec::UserIds;
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Mount data the kernel takes at most (one page).
pub const MAX_MOUNT_DATA: usize = 4095;

/// PATH used when the image and spec set none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths hidden from the container (OCI default `maskedPaths`), relative to its root.
pub const MASKED_PATHS: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Paths made read-only (OCI default `readonlyPaths`), relative to the root.
pub const READONLY_PATHS: &[&str] = &[
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Character devices created in the container's /dev: name, major, minor.
pub const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Errors while turning a launch into a plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A string handed to the kernel contains a NUL byte.
    #[error("{what} contains a NUL byte: {value:?}")]
    Nul {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: String,
    },
    /// A layer path overlayfs cannot take in `lowerdir=`.
    #[error("layer directory {} contains `:` or `,`, which overlayfs options cannot carry", .0.display())]
    LayerPath(PathBuf),
    /// Too many/long layers for one mount call.
    #[error("overlay options for {layers} layers are {len} bytes, more than the kernel's {MAX_MOUNT_DATA}")]
    TooManyLayers {
        /// Number of layers.
        layers: usize,
        /// Bytes of the option string.
        len: usize,
    },
    /// No layers at all.
    #[error("image has no layers")]
    NoLayers,
    /// The command is empty.
    #[error("spec field `command` is empty")]
    NoCommand,
}

/// One setup action of the container's init.
#[derive(Debug)]
pub enum Step {
    /// Make every mount a slave of the host's, so nothing propagates back.
    MakeRootSlave,
    /// mount(2).
    Mount {
        /// Source (device or directory).
        source: CString,
        /// Mount point.
        target: CString,
        /// File system type.
        fstype: CString,
        /// MS_* flags.
        flags: libc::c_ulong,
        /// Options string.
        data: Option<CString>,
    },
    /// chdir(2).
    Chdir(CString),
    /// mkdir(2); an existing directory is fine.
    Mkdir(CString, libc::mode_t),
    /// mknod(2) of a character device, mode 0666.
    CharDevice {
        /// Path.
        path: CString,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// symlink(2); an existing link is fine.
    Symlink {
        /// What the link points to.
        target: CString,
        /// The link itself.
        link: CString,
    },
    /// Hide a path: bind /dev/null over a file, a read-only tmpfs over a
    /// directory; a missing path is fine.
    Mask(CString),
    /// Bind a path over itself read-only; a missing path is fine.
    ReadOnly(CString),
    /// Record the rootfs-ready time.
    StampRootfsReady,
    /// pivot_root into the current directory and detach the old root.
    PivotRoot,
    /// Record the pivot-done time.
    StampPivotDone,
    /// sethostname(2).
    Hostname(CString),
    /// Bring up `lo` in the new network namespace.
    LoopbackUp,
    /// Wait for the parent's [`crate::channel::ParentMsg::Go`] (cgroup joined).
    WaitForParent,
    /// Enter a new cgroup namespace rooted at the cgroup just joined.
    UnshareCgroupNamespace,
    /// chdir to the workload's working directory.
    Workdir(CString),
    /// umask(2).
    Umask(libc::mode_t),
    /// Drop capabilities to [`ChildPlan::caps`].
    DropCapabilities,
    /// setgroups(groups), setresgid, setresuid: the workload's user.
    User {
        /// User id.
        uid: u32,
        /// Group id.
        gid: u32,
        /// Every group of the process, `gid` first (allocated before the
        /// fork: the child only passes the pointer).
        groups: Vec<u32>,
    },
    /// PR_SET_NO_NEW_PRIVS.
    NoNewPrivs,
    /// Install [`ChildPlan::seccomp`].
    Seccomp,
    /// Tell duet the instance is created (with the phase stamps) and wait
    /// for [`crate::channel::ParentMsg::Start`] before execve.
    AwaitStart,
    /// setsid(2): the workload leads a new session, so it has no
    /// controlling terminal but the one [`Step::Console`] gives it.
    NewSession,
    /// Open the workload's own pty and send its master to duet
    /// ([`crate::console`]).
    Console(crate::console::ConsoleSpec),
    /// Mark every fd above 2 close-on-exec (close_range), so nothing duet's
    /// caller left open reaches the workload.
    CloseInheritedFds,
    /// `duet exec`: join the namespaces of a running container's init, with
    /// one setns on its pidfd where the kernel takes that (5.8+), else one
    /// setns per `/proc/PID/ns/*` file.
    JoinNamespaces {
        /// pidfd of the init (-1: use the files only).
        pidfd: i32,
        /// CLONE_NEW* flags of every namespace joined.
        flags: libc::c_int,
        /// The fallback: open `/proc/PID/ns/*` fds with their CLONE_NEW* flag, in joining order.
        ns_files: Vec<(i32, libc::c_int)>,
    },
    /// `duet exec`: clone3 with CLONE_PARENT, so the following steps run in
    /// the joined pid namespace as a child of duet itself; the process that
    /// forked sends duet the new child's pidfd ([`crate::channel::ChildMsg::Forked`]) and exits.
    ForkIntoPidNamespace,
    /// PR_SET_DUMPABLE 0 until execve: while it still holds duet's memory
    /// and fds, the container's processes cannot open its `/proc/PID/*`
    /// (`exe`, `fd`, `mem`) even after its capabilities are dropped.
    NotDumpable,
    /// dup2 these fds onto 0, 1 and 2 (the same number: left as it is).
    Stdio([i32; 3]),
    /// Close every fd above 2 except the setup channel, before anything the
    /// container controls (its workdir, say `/proc/self/fd/N`) is looked up.
    CloseOtherFds,
    /// The steps only an OCI bundle needs ([`crate::child_oci`]).
    Oci(crate::child_oci::OciStep),
}

fn show(c: &CString) -> String {
    String::from_utf8_lossy(c.as_bytes()).into_owned()
}

impl Step {
    /// What the step does, naming its paths, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Step::MakeRootSlave => "making / a recursive slave mount".into(),
            Step::Mount { target, flags, .. } if flags & libc::MS_REMOUNT != 0 => {
                format!("remounting {} read-only", show(target))
            }
            Step::Mount {
                source,
                target,
                fstype,
                data,
                ..
            } => {
                let mut s = format!(
                    "mounting {} ({}) on {}",
                    show(source),
                    show(fstype),
                    show(target)
                );
                if let Some(d) = data {
                    s.push_str(&format!(" with options `{}`", show(d)));
                }
                s
            }
            Step::Chdir(p) => format!("changing directory to {}", show(p)),
            Step::Mkdir(p, _) => format!("creating directory {}", show(p)),
            Step::CharDevice { path, major, minor } => {
                format!("creating device {} ({major}:{minor})", show(path))
            }
            Step::Symlink { target, link } => {
                format!("creating symlink {} -> {}", show(link), show(target))
            }
            Step::Mask(p) => format!("masking {}", show(p)),
            Step::ReadOnly(p) => format!("making {} read-only", show(p)),
            Step::StampRootfsReady | Step::StampPivotDone => "reading the clock".into(),
            Step::PivotRoot => "pivot_root into the overlay root".into(),
            Step::Hostname(h) => format!("setting hostname `{}`", show(h)),
            Step::LoopbackUp => "bringing up the loopback interface lo".into(),
            Step::WaitForParent => "waiting for duet to place the container in its cgroup".into(),
            Step::UnshareCgroupNamespace => "creating the cgroup namespace".into(),
            Step::Workdir(p) => format!("changing to workdir `{}` (spec field `workdir`)", show(p)),
            Step::Umask(m) => format!("setting umask {m:o}"),
            Step::DropCapabilities => "dropping capabilities".into(),
            Step::User { uid, gid, groups } => {
                format!(
                    "switching to user {uid}:{gid}, groups {groups:?} (spec field `user`, or the \
                     image's, with its groups in the image's /etc/group)"
                )
            }
            Step::NoNewPrivs => "setting no_new_privs".into(),
            Step::Seccomp => "installing the seccomp filter".into(),
            Step::AwaitStart => "waiting for `start` (the instance is created)".into(),
            Step::NewSession => "starting a new session (setsid)".into(),
            Step::Console(_) => "opening the workload's terminal (/dev/ptmx)".into(),
            Step::CloseInheritedFds => "closing inherited file descriptors".into(),
            Step::JoinNamespaces { .. } => {
                "joining the container's mount, pid, uts, ipc, net and cgroup namespaces".into()
            }
            Step::ForkIntoPidNamespace => "forking into the container's pid namespace".into(),
            Step::NotDumpable => "making the process non-dumpable".into(),
            Step::Stdio(_) => "setting up stdin, stdout and stderr".into(),
            Step::CloseOtherFds => "closing inherited file descriptors".into(),
            Step::Oci(o) => o.describe(),
        }
    }
}

/// Everything the container's init needs, prepared by the parent.
pub struct ChildPlan {
    /// Setup steps, in order.
    pub steps: Vec<Step>,
    /// argv of the workload.
    pub argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    /// Environment (`KEY=VALUE`), sorted by key.
    pub envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// Directories to search when argv\[0\] has no `/` (the container's PATH).
    pub search_path: Option<CString>,
    /// Capabilities kept.
    pub caps: CapabilityPlan,
    /// Seccomp programs installed last.
    pub seccomp: Arc<SeccompPrograms>,
    /// An OCI `create`: the init outlives the process that cloned it (no
    /// parent-death signal) and, once `start` has released it, reports
    /// nothing more over the setup channel (nobody reads it then).
    pub outlives_parent: bool,
    /// One more fd [`Step::CloseOtherFds`] keeps (the OCI start fifo), or -1.
    pub keep_fd: i32,
}

impl std::fmt::Debug for ChildPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildPlan")
            .field("steps", &self.steps)
            .field("argv", &self.argv)
            .field("envp", &self.envp)
            .field("search_path", &self.search_path)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl ChildPlan {
    /// NULL-terminated argv for execve.
    pub fn argv_ptr(&self) -> *const *const libc::c_char {
        self.argv_ptrs.as_ptr()
    }
    /// NULL-terminated envp for execve.
    pub fn envp_ptr(&self) -> *const *const libc::c_char {
        self.envp_ptrs.as_ptr()
    }
}

/// What a container's root and process look like, resolved from a launch.
#[derive(Debug, Clone)]
pub struct RootfsSpec<'a> {
    /// Lower layers, bottom first.
    pub layers: &'a [PathBuf],
    /// Overlay upperdir.
    pub upper: PathBuf,
    /// Overlay workdir.
    pub work: PathBuf,
    /// Mount point of the overlay.
    pub rootfs: PathBuf,
    /// Hostname.
    pub hostname: &'a str,
    /// Working directory inside.
    pub workdir: &'a str,
    /// argv.
    pub command: &'a [String],
    /// Environment.
    pub env: &'a BTreeMap<String, String>,
    /// The workload's fds 0-2: a new pty, or pipes dup2'ed over the ones
    /// that are terminals; `None`: duet's own, inherited.
    pub stdio: Option<ChildStdio>,
    /// `--network host`: the host's network namespace (no `lo` to bring up).
    pub host_network: bool,
    /// The workload's ids, resolved from the image; `None`: root.
    pub user: Option<UserIds>,
}

fn cstr(what: &'static str, s: impl AsRef<[u8]>) -> Result<CString, PlanError> {
    CString::new(s.as_ref()).map_err(|_| PlanError::Nul {
        what,
        value: String::from_utf8_lossy(s.as_ref()).into_owned(),
    })
}

fn path_c(what: &'static str, p: &Path) -> Result<CString, PlanError> {
    cstr(what, p.as_os_str().as_bytes())
}

/// `lowerdir=TOP:...:BOTTOM,upperdir=U,workdir=W` for overlayfs.
pub fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> Result<String, PlanError> {
    if layers.is_empty() {
        return Err(PlanError::NoLayers);
    }
    for p in layers.iter().map(PathBuf::as_path).chain([upper, work]) {
        let b = p.as_os_str().as_bytes();
        if b.contains(&b':') || b.contains(&b',') {
            return Err(PlanError::LayerPath(p.to_path_buf()));
        }
    }
    let lower: Vec<&OsStr> = layers.iter().rev().map(|p| p.as_os_str()).collect();
    let lower = lower
        .iter()
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(":");
    let s = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.to_string_lossy(),
        work.to_string_lossy()
    );
    if s.len() > MAX_MOUNT_DATA {
        return Err(PlanError::TooManyLayers {
            layers: layers.len(),
            len: s.len(),
        });
    }
    Ok(s)
}

/// The environment: spec env, plus PATH, HOSTNAME and HOME defaults when missing.
pub fn environment(env: &BTreeMap<String, String>, hostname: &str) -> BTreeMap<String, String> {
    let mut e = env.clone();
    e.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    e.entry("HOSTNAME".into())
        .or_insert_with(|| hostname.into());
    e.entry("HOME".into()).or_insert_with(|| "/root".into());
    e
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Step {
    Step::Mount {
        source: CString::new(source).expect("static"),
        target: CString::new(target).expect("static"),
        fstype: CString::new(fstype).expect("static"),
        flags,
        data: data.map(|d| CString::new(d).expect("static")),
    }
}

fn c(s: &str) -> CString {
    CString::new(s).expect("static string without NUL")
}

/// Builds the full plan for one container.
pub fn build(
    r: &RootfsSpec<'_>,
    caps: CapabilityPlan,
    seccomp: Arc<SeccompPrograms>,
) -> Result<ChildPlan, PlanError> {
    if r.command.is_empty() {
        return Err(PlanError::NoCommand);
    }
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let rootfs = path_c("rootfs path", &r.rootfs)?;
    let mut s = vec![
        Step::MakeRootSlave,
        Step::Mount {
            source: c("overlay"),
            target: rootfs.clone(),
            fstype: c("overlay"),
            // nodev: CAP_MKNOD stays (OCI default), but a node made on the
            // root cannot be opened. No devices cgroup is needed for that.
            flags: libc::MS_NODEV,
            data: Some(cstr(
                "overlay options",
                overlay_options(r.layers, &r.upper, &r.work)?,
            )?),
        },
        Step::StampRootfsReady,
        Step::Chdir(rootfs),
        Step::Umask(0),
        // Relative paths from here on: the overlay root is the cwd.
        Step::Mkdir(c("proc"), 0o555),
        mount("proc", "proc", "proc", nosuid_nodev_noexec, None),
        Step::Mkdir(c("dev"), 0o755),
        mount(
            "tmpfs",
            "dev",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        ),
    ];
    for &(name, major, minor) in DEVICES {
        s.push(Step::CharDevice {
            path: c(&format!("dev/{name}")),
            major,
            minor,
        });
    }
    s.extend([
        Step::Mkdir(c("dev/pts"), 0o755),
        mount(
            "devpts",
            "dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        Step::Symlink {
            target: c("pts/ptmx"),
            link: c("dev/ptmx"),
        },
        Step::Mkdir(c("dev/shm"), 0o1777),
        mount(
            "shm",
            "dev/shm",
            "tmpfs",
            nosuid_nodev_noexec,
            Some("mode=1777,size=65536k"),
        ),
        Step::Mkdir(c("dev/mqueue"), 0o755),
        mount("mqueue", "dev/mqueue", "mqueue", nosuid_nodev_noexec, None),
        Step::Symlink {
            target: c("/proc/self/fd"),
            link: c("dev/fd"),
        },
        Step::Symlink {
            target: c("/proc/self/fd/0"),
            link: c("dev/stdin"),
        },
        Step::Symlink {
            target: c("/proc/self/fd/1"),
            link: c("dev/stdout"),
        },
        Step::Symlink {
            target: c("/proc/self/fd/2"),
            link: c("dev/stderr"),
        },
        // /dev is the one writable place without nodev: freeze it.
        mount(
            "tmpfs",
            "dev",
            "tmpfs",
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_STRICTATIME,
            None,
        ),
        Step::Mkdir(c("sys"), 0o555),
        mount(
            "sysfs",
            "sys",
            "sysfs",
            nosuid_nodev_noexec | libc::MS_RDONLY,
            None,
        ),
    ]);
    s.extend(MASKED_PATHS.iter().map(|p| Step::Mask(c(p))));
    s.extend(READONLY_PATHS.iter().map(|p| Step::ReadOnly(c(p))));
    s.extend([
        Step::PivotRoot,
        Step::StampPivotDone,
        Step::Hostname(cstr("hostname (spec field `name`)", r.hostname)?),
    ]);
    if !r.host_network {
        s.push(Step::LoopbackUp);
    }
    s.extend([
        Step::WaitForParent,
        Step::UnshareCgroupNamespace,
        Step::NewSession,
    ]);
    match r.stdio {
        Some(ChildStdio::Console(c)) => s.push(Step::Console(c)),
        Some(ChildStdio::Fds(fds)) => s.push(Step::Stdio(fds)),
        None => {}
    }
    s.extend(restrictions(r.workdir, &r.user)?);
    // Created: everything is ready; execve waits for `start`.
    s.push(Step::AwaitStart);

    assemble(s, r.command, environment(r.env, r.hostname), caps, seccomp)
}

/// The last steps before execve, the same for a run's workload and for an
/// exec'd command, so exec never gets more than the workload has: no fd
/// but 0-2 (closed before the workdir, the first path the image chooses:
/// a workdir of `/proc/self/fd/N` must not reach a directory duet's caller
/// left open), the workdir, umask, capabilities, the user (its change
/// of uid empties the effective and permitted sets, as with Docker),
/// no_new_privs, seccomp.
fn restrictions(workdir: &str, user: &Option<UserIds>) -> Result<Vec<Step>, PlanError> {
    let mut s = vec![
        Step::CloseOtherFds,
        Step::Workdir(cstr(
            "workdir",
            if workdir.is_empty() { "/" } else { workdir },
        )?),
        Step::Umask(0o022),
        Step::DropCapabilities,
    ];
    if let Some(u) = user {
        s.push(Step::User {
            uid: u.uid,
            gid: u.gid,
            groups: u.groups.clone(),
        });
    }
    s.extend([Step::NoNewPrivs, Step::CloseInheritedFds, Step::Seccomp]);
    Ok(s)
}

/// A plan of `steps` that ends in execve of `command` with `env`.
pub(crate) fn assemble(
    steps: Vec<Step>,
    command: &[String],
    env: BTreeMap<String, String>,
    caps: CapabilityPlan,
    seccomp: Arc<SeccompPrograms>,
) -> Result<ChildPlan, PlanError> {
    if command.is_empty() {
        return Err(PlanError::NoCommand);
    }
    let argv = command
        .iter()
        .map(|a| cstr("command", a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| cstr("env", format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    let search_path = if command[0].contains('/') {
        None
    } else {
        Some(cstr(
            "env PATH",
            env.get("PATH").map_or(DEFAULT_PATH, String::as_str),
        )?)
    };
    let argv_ptrs = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp_ptrs = envp
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    Ok(ChildPlan {
        steps,
        argv,
        argv_ptrs,
        envp,
        envp_ptrs,
        search_path,
        caps,
        seccomp,
        outlives_parent: false,
        keep_fd: -1,
    })
}

/// How a workload or an exec'd command gets its stdin, stdout and stderr
/// (see [`crate::stdio`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStdio {
    /// A new pty in the container's devpts on all three (`-t`).
    Console(crate::console::ConsoleSpec),
    /// These (inherited) fds, dup2'ed onto 0, 1 and 2.
    Fds([i32; 3]),
}

/// What `duet exec` runs in a running container, resolved by the parent.
#[derive(Debug, Clone)]
pub struct ExecSpec<'a> {
    /// pidfd of the container's init (-1: join through `ns_files` only).
    pub pidfd: i32,
    /// `/proc/PID/ns/*` fds of the init and their CLONE_NEW* flag.
    pub ns_files: Vec<(i32, libc::c_int)>,
    /// Hostname of the container (the `HOSTNAME` default).
    pub hostname: &'a str,
    /// Working directory inside.
    pub workdir: &'a str,
    /// argv.
    pub command: &'a [String],
    /// The workload's environment (spec with the image's merged in).
    pub env: &'a BTreeMap<String, String>,
    /// `KEY=VALUE` overrides.
    pub env_overrides: &'a [(String, String)],
    /// Its stdio.
    pub stdio: ChildStdio,
    /// The workload's (uid, gid): an exec runs as the workload's user.
    pub user: Option<UserIds>,
}

/// Namespaces `duet exec` joins: every one the container's init has of its own.
pub const EXEC_NAMESPACES: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP;

/// The plan of a `duet exec` helper: wait for duet (cgroups joined), join
/// the init's namespaces, fork into its pid namespace, then the workload's
/// own restrictions in the same order as [`build`] gives them.
pub fn build_exec(
    e: &ExecSpec<'_>,
    caps: CapabilityPlan,
    seccomp: Arc<SeccompPrograms>,
) -> Result<ChildPlan, PlanError> {
    let mut s = vec![
        Step::WaitForParent,
        Step::JoinNamespaces {
            pidfd: e.pidfd,
            flags: EXEC_NAMESPACES,
            ns_files: e.ns_files.clone(),
        },
        Step::ForkIntoPidNamespace,
        Step::NotDumpable,
        Step::NewSession,
    ];
    s.push(match e.stdio {
        ChildStdio::Console(c) => Step::Console(c),
        ChildStdio::Fds(fds) => Step::Stdio(fds),
    });
    s.extend(restrictions(e.workdir, &e.user)?);
    let mut env = environment(e.env, e.hostname);
    for (k, v) in e.env_overrides {
        env.insert(k.clone(), v.clone());
    }
    assemble(s, e.command, env, caps, seccomp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_for(command: &[String], env: &BTreeMap<String, String>) -> ChildPlan {
        let layers = vec![PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
        let r = RootfsSpec {
            layers: &layers,
            upper: "/i/upper".into(),
            work: "/i/work".into(),
            rootfs: "/i/rootfs".into(),
            hostname: "web",
            workdir: "/srv",
            command,
            env,
            stdio: None,
            host_network: false,
            user: Some(UserIds {
                uid: 1000,
                gid: 50,
                groups: vec![50, 33],
            }),
        };
        build(
            &r,
            CapabilityPlan {
                keep: 1,
                last_cap: 40,
            },
            Arc::new(crate::seccomp::compile().unwrap()),
        )
        .unwrap()
    }

    fn position(p: &ChildPlan, f: impl Fn(&Step) -> bool) -> usize {
        p.steps.iter().position(f).expect("step present")
    }

    #[test]
    fn overlay_lists_layers_top_first() {
        let layers = vec![
            PathBuf::from("/a"),
            PathBuf::from("/b"),
            PathBuf::from("/c"),
        ];
        assert_eq!(
            overlay_options(&layers, Path::new("/u"), Path::new("/w")).unwrap(),
            "lowerdir=/c:/b:/a,upperdir=/u,workdir=/w"
        );
        assert!(matches!(
            overlay_options(&[], Path::new("/u"), Path::new("/w")),
            Err(PlanError::NoLayers)
        ));
        let e = overlay_options(&[PathBuf::from("/x:y")], Path::new("/u"), Path::new("/w"))
            .unwrap_err();
        assert!(e.to_string().contains("/x:y"), "{e}");
        let many: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/var/lib/duet/layers/sha256/{i:064}/fs")))
            .collect();
        assert!(matches!(
            overlay_options(&many, Path::new("/u"), Path::new("/w")),
            Err(PlanError::TooManyLayers { layers: 100, .. })
        ));
    }

    #[test]
    fn steps_are_ordered_safely() {
        let p = plan_for(&["echo".into(), "hi".into()], &BTreeMap::new());
        assert!(
            matches!(p.steps[0], Step::MakeRootSlave),
            "propagation first"
        );
        let overlay = position(
            &p,
            |s| matches!(s, Step::Mount { fstype, .. } if fstype.as_bytes() == b"overlay"),
        );
        let chdir = position(&p, |s| matches!(s, Step::Chdir(_)));
        let proc_ = position(
            &p,
            |s| matches!(s, Step::Mount { fstype, .. } if fstype.as_bytes() == b"proc"),
        );
        let mask = position(
            &p,
            |s| matches!(s, Step::Mask(m) if m.as_bytes() == b"proc/kcore"),
        );
        let ro = position(
            &p,
            |s| matches!(s, Step::ReadOnly(m) if m.as_bytes() == b"proc/sys"),
        );
        let pivot = position(&p, |s| matches!(s, Step::PivotRoot));
        let wait = position(&p, |s| matches!(s, Step::WaitForParent));
        let cgns = position(&p, |s| matches!(s, Step::UnshareCgroupNamespace));
        let caps = position(&p, |s| matches!(s, Step::DropCapabilities));
        let nnp = position(&p, |s| matches!(s, Step::NoNewPrivs));
        let close = position(&p, |s| matches!(s, Step::CloseOtherFds));
        let workdir = position(&p, |s| matches!(s, Step::Workdir(_)));
        assert!(
            close < workdir,
            "no inherited fd is open when the workdir is looked up"
        );
        assert!(overlay < chdir && chdir < proc_ && proc_ < mask && mask < pivot && ro < pivot);
        assert!(pivot < wait && wait < cgns && cgns < caps && caps < nnp);
        // The user changes after the capability drop (which needs root's
        // caps) and before no_new_privs and seccomp.
        let user = position(
            &p,
            |s| matches!(s, Step::User { uid: 1000, gid: 50, groups } if groups == &[50, 33]),
        );
        assert!(caps < user && user < nnp);
        assert!(
            matches!(p.steps.last(), Some(Step::AwaitStart)),
            "the created init waits for start last"
        );
        assert!(
            matches!(p.steps[p.steps.len() - 2], Step::Seccomp),
            "seccomp is the last setup step"
        );
        match &p.steps[overlay] {
            Step::Mount { target, data, .. } => {
                assert_eq!(target.as_bytes(), b"/i/rootfs");
                assert_eq!(
                    data.as_ref().unwrap().as_bytes(),
                    b"lowerdir=/l/top:/l/bottom,upperdir=/i/upper,workdir=/i/work"
                );
            }
            _ => unreachable!(),
        }
        for m in [
            "proc/kcore",
            "proc/keys",
            "proc/timer_list",
            "proc/sched_debug",
            "sys/firmware",
        ] {
            assert!(
                p.steps
                    .iter()
                    .any(|s| matches!(s, Step::Mask(x) if x.as_bytes() == m.as_bytes())),
                "{m}"
            );
        }
        let devs: Vec<String> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::CharDevice { path, .. } => Some(show(path)),
                _ => None,
            })
            .collect();
        assert_eq!(
            devs,
            [
                "dev/null",
                "dev/zero",
                "dev/full",
                "dev/random",
                "dev/urandom",
                "dev/tty"
            ]
        );
        assert!(p
            .steps
            .iter()
            .any(|s| matches!(s, Step::Hostname(h) if h.as_bytes() == b"web")));
        assert!(p
            .steps
            .iter()
            .any(|s| matches!(s, Step::Workdir(h) if h.as_bytes() == b"/srv")));
    }

    #[test]
    fn env_defaults_and_path_search() {
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "1".to_string());
        let p = plan_for(&["echo".into()], &env);
        let envs: Vec<String> = p.envp.iter().map(show).collect();
        assert_eq!(
            envs,
            [
                "A=1",
                "HOME=/root",
                "HOSTNAME=web",
                &format!("PATH={DEFAULT_PATH}")
            ]
        );
        assert_eq!(
            p.search_path.as_ref().unwrap().as_bytes(),
            DEFAULT_PATH.as_bytes()
        );
        env.insert("PATH".to_string(), "/opt/bin".to_string());
        let p = plan_for(&["/bin/echo".into(), "x".into()], &env);
        assert!(p.search_path.is_none(), "absolute command: no search");
        assert!(p.envp.iter().any(|e| e.as_bytes() == b"PATH=/opt/bin"));
        // argv pointer array is NULL-terminated.
        // SAFETY: argv_ptrs has argv.len() + 1 entries.
        unsafe {
            assert!(!(*p.argv_ptr().add(1)).is_null());
            assert!((*p.argv_ptr().add(2)).is_null());
        }
    }

    #[test]
    fn bad_strings_are_named() {
        let layers = vec![PathBuf::from("/l")];
        let env = BTreeMap::new();
        let cmd = vec!["a\0b".to_string()];
        let r = RootfsSpec {
            layers: &layers,
            upper: "/u".into(),
            work: "/w".into(),
            rootfs: "/r".into(),
            hostname: "h",
            workdir: "/",
            command: &cmd,
            env: &env,
            stdio: None,
            host_network: false,
            user: None,
        };
        let caps = CapabilityPlan {
            keep: 0,
            last_cap: 40,
        };
        let sec = Arc::new(crate::seccomp::compile().unwrap());
        let e = build(&r, caps, sec.clone()).unwrap_err();
        assert!(e.to_string().starts_with("command contains a NUL"), "{e}");
        let r = RootfsSpec { command: &[], ..r };
        assert!(matches!(build(&r, caps, sec), Err(PlanError::NoCommand)));
    }

    #[test]
    fn describe_names_paths() {
        let p = plan_for(&["true".into()], &BTreeMap::new());
        let all: Vec<String> = p.steps.iter().map(Step::describe).collect();
        assert!(all
            .iter()
            .any(|d| d.contains("overlay") && d.contains("/i/rootfs")));
        assert!(all
            .iter()
            .any(|d| d == "changing to workdir `/srv` (spec field `workdir`)"));
        assert!(all.iter().any(|d| d == "creating device dev/null (1:3)"));
    }

    #[test]
    fn exec_plan_joins_forks_then_restricts_like_the_workload() {
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "1".to_string());
        env.insert("B".to_string(), "2".to_string());
        let cmd = vec!["ls".to_string(), "-l".to_string()];
        let overrides = vec![
            ("B".to_string(), "over".to_string()),
            ("PATH".to_string(), "/opt/bin".to_string()),
        ];
        let p = build_exec(
            &ExecSpec {
                pidfd: 7,
                ns_files: vec![(8, libc::CLONE_NEWUTS)],
                hostname: "web",
                workdir: "/srv",
                command: &cmd,
                env: &env,
                env_overrides: &overrides,
                stdio: ChildStdio::Fds([10, 1, 2]),
                user: None,
            },
            CapabilityPlan {
                keep: 1,
                last_cap: 40,
            },
            Arc::new(crate::seccomp::compile().unwrap()),
        )
        .unwrap();
        let at = |f: &dyn Fn(&Step) -> bool| position(&p, f);
        let join = at(&|s| {
            matches!(s, Step::JoinNamespaces { pidfd: 7, flags, ns_files }
                if *flags == EXEC_NAMESPACES && ns_files == &[(8, libc::CLONE_NEWUTS)])
        });
        let fork = at(&|s| matches!(s, Step::ForkIntoPidNamespace));
        let dumpable = at(&|s| matches!(s, Step::NotDumpable));
        let session = at(&|s| matches!(s, Step::NewSession));
        let stdio = at(&|s| matches!(s, Step::Stdio([10, 1, 2])));
        let close = at(&|s| matches!(s, Step::CloseOtherFds));
        let workdir = at(&|s| matches!(s, Step::Workdir(w) if w.as_bytes() == b"/srv"));
        let caps = at(&|s| matches!(s, Step::DropCapabilities));
        let nnp = at(&|s| matches!(s, Step::NoNewPrivs));
        assert!(matches!(p.steps[0], Step::WaitForParent), "cgroups first");
        assert!(join < fork && fork + 1 == dumpable && dumpable < session);
        assert!(session < stdio && stdio < close && close < workdir);
        assert!(workdir < caps && caps < nnp);
        assert!(matches!(p.steps.last(), Some(Step::Seccomp)));
        assert!(!p
            .steps
            .iter()
            .any(|s| matches!(s, Step::Mount { .. } | Step::PivotRoot | Step::Hostname(_))));
        let envs: Vec<String> = p.envp.iter().map(show).collect();
        assert_eq!(
            envs,
            [
                "A=1",
                "B=over",
                "HOME=/root",
                "HOSTNAME=web",
                "PATH=/opt/bin"
            ]
        );
        assert_eq!(p.search_path.as_ref().unwrap().as_bytes(), b"/opt/bin");
        let console = ChildStdio::Console(crate::console::ConsoleSpec {
            on: [true; 3],
            size: (24, 80),
        });
        let p = build_exec(
            &ExecSpec {
                pidfd: 7,
                ns_files: vec![],
                hostname: "web",
                workdir: "",
                command: &cmd,
                env: &env,
                env_overrides: &[],
                stdio: console,
                user: None,
            },
            CapabilityPlan {
                keep: 1,
                last_cap: 40,
            },
            Arc::new(crate::seccomp::compile().unwrap()),
        )
        .unwrap();
        let session = position(&p, |s| matches!(s, Step::NewSession));
        let pty = position(&p, |s| matches!(s, Step::Console(_)));
        assert!(session < pty, "the pty becomes the new session's terminal");
        assert!(p
            .steps
            .iter()
            .any(|s| matches!(s, Step::Workdir(w) if w.as_bytes() == b"/")));
    }
}
