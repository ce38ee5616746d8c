//! An OCI bundle's `config.json` as a container init's plan.
//!
//! [`build`] turns the parsed config ([`oci_spec::runtime::Spec`]) into the
//! same [`ChildPlan`] machinery duet's own containers use, plus the clone
//! flags and the fds the init needs. What duet cannot honour is refused with
//! an error naming the config field ([`OciError`]); nothing is ignored
//! silently. The order of the init's steps follows runc's:
//!
//! 1. join the namespaces given by path (`setns`); with a new cgroup
//!    namespace, wait until `create` has put the init in its cgroups (and
//!    run the `prestart`/`createRuntime` hooks), then unshare it;
//! 2. the root: `/` a recursive slave (then `linux.rootfsPropagation`), the
//!    bundle's root bound onto itself (nodev), every `mounts` entry in
//!    order, each destination resolved inside the root without following a
//!    symlink out of it ([`crate::child_oci`]); the default devices and
//!    `linux.devices`, the `/dev/fd` symlinks; `/dev` remounted read-only;
//!    without a new cgroup namespace, the wait for the cgroups and hooks
//!    here, so the mounts overlap the cgroup join; `pivot_root`;
//! 3. hostname, sysctls, then `maskedPaths`, `readonlyPaths` (`/proc/sys`
//!    among them) and `root.readonly`; `lo` up in a new network namespace,
//!    a new session, the terminal (`--console-socket`), `oomScoreAdj`,
//!    rlimits;
//! 4. every fd but 0-2, the setup channel and the start fifo closed; the
//!    bounding set; seccomp here unless `noNewPrivileges` (installing it
//!    later would need CAP_SYS_ADMIN); `process.user`; `cwd`; the other
//!    capability sets; no_new_privs; argv\[0\] looked up (so `create`
//!    fails with "executable file not found", which engines turn into 127);
//!    "created" reported, then the init blocks on the start fifo; seccomp
//!    (with no_new_privs), execve.
//!
//! Devices: every mount but `/dev` and devpts is forced `nodev`, and `/dev` holds only
//! the default devices and `linux.devices` and is read-only once made, so
//! no other device can be opened whatever `linux.resources.devices` allows
//! (stricter than a devices cgroup, and the same on cgroup v1 and v2; on
//! v1 the rules are also written to the devices controller).

use crate::capabilities::CapabilityPlan;
use crate::child_oci::{CapSets, InRoot, Leaf, OciDevice, OciMount, OciStep};
use crate::plan::{self, ChildPlan, PlanError, Step};
use crate::seccomp::SeccompPrograms;
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// A config field duet cannot honour, or a bad value; names the field.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A field that is not supported.
    #[error("{field}: {why}")]
    Unsupported {
        /// The JSON path of the field (`linux.namespaces[2]`).
        field: String,
        /// Why.
        why: String,
    },
    /// A file the config names could not be opened.
    #[error("{field}: {path}")]
    Open {
        /// The field.
        field: String,
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A string with a NUL byte, or a command missing.
    #[error(transparent)]
    Plan(#[from] PlanError),
}

fn unsupported(field: impl Into<String>, why: impl Into<String>) -> OciError {
    OciError::Unsupported {
        field: field.into(),
        why: why.into(),
    }
}

fn cs(field: &str, s: impl AsRef<[u8]>) -> Result<CString, OciError> {
    CString::new(s.as_ref()).map_err(|_| {
        unsupported(
            field,
            format!("`{}` holds a NUL byte", String::from_utf8_lossy(s.as_ref())),
        )
    })
}

/// Splits an absolute path inside the root into its components; `..` is refused.
pub fn in_root(field: &str, p: &Path) -> Result<InRoot, OciError> {
    let mut names = Vec::new();
    let mut prefixes = Vec::new();
    let mut acc = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                acc.push(n);
                names.push(cs(field, n.as_encoded_bytes())?);
                prefixes.push(cs(field, acc.as_os_str().as_encoded_bytes())?);
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(unsupported(
                    field,
                    format!(
                        "`{}`: `..` is not allowed in a path inside the container",
                        p.display()
                    ),
                ))
            }
        }
    }
    Ok(InRoot {
        prefixes,
        names,
        shown: p.display().to_string(),
    })
}

/// Makes `dest` (absolute, inside the container) exist below `rootfs`,
/// following the image's symlinks the way the kernel would if `rootfs` were
/// `/` (absolute targets restart at the root, `..` stops there), creating
/// missing directories (and, with `leaf` File, an empty file last). Returns
/// the symlink-free path inside the root. The init resolves that again
/// with `RESOLVE_IN_ROOT` before it mounts, so whatever the image holds,
/// nothing outside the root is reached (runc's MkdirAllInRoot).
pub fn prepare_in_root(
    rootfs: &Path,
    dest: &Path,
    leaf: Leaf,
    field: &str,
) -> Result<PathBuf, OciError> {
    let err = |why: String| unsupported(field, format!("`{}`: {why}", dest.display()));
    let mut todo: std::collections::VecDeque<std::ffi::OsString> = dest
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let cand = cur.join(&c);
        let host = rootfs.join(&cand);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(err("too many levels of symbolic links".into()));
                }
                let target = std::fs::read_link(&host).map_err(|e| err(e.to_string()))?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                let mut parts: Vec<std::ffi::OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .collect();
                while let Some(p) = parts.pop() {
                    todo.push_front(p);
                }
            }
            Ok(m) => {
                if !m.is_dir() && !todo.is_empty() {
                    return Err(err(format!("{} is not a directory", cand.display())));
                }
                cur = cand;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let made = if todo.is_empty() && leaf == Leaf::File {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&host)
                        .map(drop)
                } else {
                    std::fs::create_dir(&host)
                };
                made.map_err(|e| err(format!("creating {}: {e}", cand.display())))?;
                cur = cand;
            }
            Err(e) => return Err(err(e.to_string())),
        }
    }
    Ok(Path::new("/").join(cur))
}

/// [`prepare_in_root`] for the directory of `p`, then `p`'s last name below it.
fn node_in_root(rootfs: &Path, p: &Path, field: &str) -> Result<InRoot, OciError> {
    in_root(field, p)?; // refuses `..`
    let name = p
        .file_name()
        .ok_or_else(|| unsupported(field, format!("`{}` has no file name", p.display())))?;
    let dir = prepare_in_root(
        rootfs,
        p.parent().unwrap_or(Path::new("/")),
        Leaf::Dir,
        field,
    )?;
    in_root(field, &dir.join(name))
}

/// What `create` needs besides the plan.
pub struct OciInit {
    /// The init's plan.
    pub plan: ChildPlan,
    /// CLONE_NEW* flags for clone3.
    pub clone_flags: u64,
    /// fds the plan refers to (namespace files, console socket, fifo); kept open until clone.
    pub fds: Vec<OwnedFd>,
    /// A pid namespace to join (`linux.namespaces` pid with a path, as a
    /// pod sharing its process namespace has): entered by the creating
    /// thread (setns) right before the clone, so the init is born in it.
    pub join_pid: Option<OwnedFd>,
}

/// Inputs besides the config.
pub struct OciInputs<'a> {
    /// The bundle directory (relative `root.path` and bind sources are below it).
    pub bundle: &'a Path,
    /// O_PATH fd of the start fifo.
    pub fifo: OwnedFd,
    /// The connected `--console-socket`, when `process.terminal` is set.
    pub console: Option<OwnedFd>,
    /// The container's cgroup directories (for `cgroup` mounts on v1: each is bound).
    pub cgroup_dirs: &'a [(bool, PathBuf)],
    /// Seccomp programs from `linux.seccomp` (none: no filter).
    pub seccomp: Arc<SeccompPrograms>,
    /// Whether `linux.seccomp` was given.
    pub has_seccomp: bool,
    /// `/proc/sys/kernel/cap_last_cap`.
    pub last_cap: u32,
    /// The name of the init's new session keyring; none with `--no-new-keyring`.
    pub keyring: Option<&'a str>,
}

fn ns_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => 0x80,
    }
}

/// MS_* flags, propagation and data of a mount's options.
struct MountOptions {
    flags: libc::c_ulong,
    clear: libc::c_ulong,
    propagation: libc::c_ulong,
    bind: bool,
    recursive: bool,
    data: Vec<String>,
}

fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: 0,
        clear: 0,
        propagation: 0,
        bind: false,
        recursive: false,
        data: Vec::new(),
    };
    for opt in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "silent" => (libc::MS_SILENT, 0),
            "loud" => (0, libc::MS_SILENT),
            "bind" => {
                o.bind = true;
                (0, 0)
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                (0, 0)
            }
            p @ ("private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
            | "unbindable" | "runbindable") => {
                let base = match p.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "shared" => libc::MS_SHARED,
                    "slave" => libc::MS_SLAVE,
                    _ => libc::MS_UNBINDABLE,
                };
                o.propagation = base | if p.starts_with('r') { libc::MS_REC } else { 0 };
                (0, 0)
            }
            other => {
                o.data.push(other.to_string());
                (0, 0)
            }
        };
        o.flags = (o.flags | set) & !clear;
        o.clear |= clear;
    }
    o
}

const DEFAULT_DEVICES: &[(&str, u32, u32)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// v1 devices rules for the nodes the runtime makes: the default devices,
/// `linux.devices`, the container's own ptys (`/dev/pts/*`, `/dev/ptmx`).
pub fn devices_allowed(spec: &Spec) -> Vec<String> {
    let mut v: Vec<String> = DEFAULT_DEVICES
        .iter()
        .map(|&(_, ma, mi)| format!("c {ma}:{mi} rwm"))
        .collect();
    v.push("c 5:2 rwm".into());
    v.push("c 136:* rwm".into());
    use oci_spec::runtime::LinuxDeviceType as T;
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        let t = match d.typ() {
            T::B => "b",
            T::P => continue,
            _ => "c",
        };
        v.push(format!("{t} {}:{} rwm", d.major(), d.minor()));
    }
    v
}

const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/core", "/proc/kcore"),
];

/// Sysctls a container may set: those its own namespaces hold (as runc checks).
fn namespaced_sysctl(
    key: &str,
    netns_new: bool,
    ipcns_new: bool,
    utsns_new: bool,
) -> Result<(), String> {
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        return if ipcns_new {
            Ok(())
        } else {
            Err("needs a new ipc namespace".into())
        };
    }
    if key.starts_with("net.") {
        return if netns_new {
            Ok(())
        } else {
            Err("needs a network namespace of the container's own".into())
        };
    }
    if key == "kernel.domainname" || key == "kernel.hostname" {
        return if utsns_new {
            Ok(())
        } else {
            Err("needs a new uts namespace".into())
        };
    }
    Err("not a namespaced sysctl: it would change the host".into())
}

/// `process.rlimits[].type` names and their RLIMIT_* numbers.
const RLIMITS: &[(&str, libc::__rlimit_resource_t)] = &[
    ("RLIMIT_CPU", libc::RLIMIT_CPU),
    ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE),
    ("RLIMIT_DATA", libc::RLIMIT_DATA),
    ("RLIMIT_STACK", libc::RLIMIT_STACK),
    ("RLIMIT_CORE", libc::RLIMIT_CORE),
    ("RLIMIT_RSS", libc::RLIMIT_RSS),
    ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
    ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
    ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK),
    ("RLIMIT_AS", libc::RLIMIT_AS),
    ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS),
    ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING),
    ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE),
    ("RLIMIT_NICE", libc::RLIMIT_NICE),
    ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO),
    ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME),
];

fn cap_mask(field: &str, set: Option<&oci_spec::runtime::Capabilities>) -> Result<u64, OciError> {
    use std::str::FromStr;
    let mut m = 0u64;
    for c in set.into_iter().flatten() {
        // oci-spec displays `NET_BIND_SERVICE`; caps parses `CAP_NET_BIND_SERVICE`.
        let name = c.to_string();
        let name = if name.starts_with("CAP_") {
            name
        } else {
            format!("CAP_{name}")
        };
        let cap = caps::Capability::from_str(&name)
            .map_err(|_| unsupported(field, format!("unknown capability {name}")))?;
        m |= cap.bitmask();
    }
    Ok(m)
}

/// What duet cannot do for a process (of `create` or `exec`), refused by field.
fn check_process(process: &Process) -> Result<(), OciError> {
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(unsupported("process.args", "empty"));
    }
    if process.command_line().is_some() {
        return Err(unsupported("process.commandLine", "Windows only"));
    }
    for (field, set) in [
        (
            "process.selinuxLabel",
            process
                .selinux_label()
                .as_ref()
                .is_some_and(|m| !m.is_empty()),
        ),
        ("process.ioPriority", process.io_priority().is_some()),
        ("process.scheduler", process.scheduler().is_some()),
        (
            "process.execCPUAffinity",
            process.exec_cpu_affinity().is_some(),
        ),
        ("process.user.umask", process.user().umask().is_some()),
    ] {
        if set {
            return Err(unsupported(field, "not supported by duet"));
        }
    }
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim() == "Y");
        if enabled {
            return Err(unsupported(
                "process.apparmorProfile",
                format!("`{profile}`: AppArmor profiles are not applied by duet (AppArmor is enabled on this host)"),
            ));
        }
    }

    Ok(())
}

/// `/proc/sys/kernel/cap_last_cap` (40 if unreadable).
pub(crate) fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The steps that make the process itself, from its own session to the
/// argv\[0\] check: shared by `create`'s init and `exec`.
pub(crate) struct ProcessSteps {
    /// The steps, in order.
    pub(crate) steps: Vec<Step>,
    /// Fds the steps use (the console socket).
    pub(crate) fds: Vec<OwnedFd>,
    /// `process.env`.
    pub(crate) env: BTreeMap<String, String>,
    /// The capabilities kept.
    pub(crate) caps: CapabilityPlan,
    /// `process.noNewPrivileges`: seccomp then goes last, after the caller's own steps.
    pub(crate) nnp: bool,
}

/// A new session, its own session keyring (`keyring`: its name), the
/// terminal (`console`, required when `process.terminal`), `oomScoreAdj`,
/// rlimits, every other fd closed, the bounding set, seccomp (unless
/// `noNewPrivileges`: the caller then installs it last), the user, `cwd`,
/// the other capability sets, no_new_privs, argv\[0\] looked up.
pub(crate) fn process_steps(
    process: &Process,
    console: Option<OwnedFd>,
    keyring: Option<&str>,
    has_seccomp: bool,
    last_cap: u32,
) -> Result<ProcessSteps, OciError> {
    check_process(process)?;
    let mut steps = Vec::new();
    let mut fds = Vec::new();
    steps.push(Step::NewSession);
    if let Some(name) = keyring {
        steps.push(Step::Oci(OciStep::SessionKeyring(cs(
            "session keyring",
            name,
        )?)));
    }
    if process.terminal().unwrap_or(false) {
        let sock = console.ok_or_else(|| {
            unsupported("process.terminal", "set, but no --console-socket was given")
        })?;
        let size = process
            .console_size()
            .map_or((24, 80), |b| (b.height() as u16, b.width() as u16));
        steps.push(Step::Oci(OciStep::ConsoleSocket {
            sock: sock.as_raw_fd(),
            size,
        }));
        fds.push(sock);
    }
    if let Some(adj) = process.oom_score_adj() {
        steps.push(Step::Oci(OciStep::WriteFile {
            path: cs("process.oomScoreAdj", "/proc/self/oom_score_adj")?,
            value: cs("process.oomScoreAdj", adj.to_string())?,
        }));
    }
    for (i, r) in process.rlimits().iter().flatten().enumerate() {
        let name = r.typ().to_string();
        let key = if name.starts_with("RLIMIT_") {
            name.clone()
        } else {
            format!(
                "RLIMIT_{}",
                name.trim_start_matches("Rlimit").to_ascii_uppercase()
            )
        };
        let (name, resource) = match RLIMITS.iter().find(|(n, _)| *n == key) {
            Some(&(n, r)) => (n, r),
            None => {
                return Err(unsupported(
                    format!("process.rlimits[{i}].type"),
                    format!("unknown {name}"),
                ))
            }
        };
        steps.push(Step::Oci(OciStep::Rlimit {
            resource,
            soft: r.soft(),
            hard: r.hard(),
            name,
        }));
    }

    // Privileges.
    let c = process.capabilities().as_ref();
    let sets = CapSets {
        bounding: cap_mask(
            "process.capabilities.bounding",
            c.and_then(|c| c.bounding().as_ref()),
        )?,
        effective: cap_mask(
            "process.capabilities.effective",
            c.and_then(|c| c.effective().as_ref()),
        )?,
        permitted: cap_mask(
            "process.capabilities.permitted",
            c.and_then(|c| c.permitted().as_ref()),
        )?,
        inheritable: cap_mask(
            "process.capabilities.inheritable",
            c.and_then(|c| c.inheritable().as_ref()),
        )?,
        ambient: cap_mask(
            "process.capabilities.ambient",
            c.and_then(|c| c.ambient().as_ref()),
        )?,
        last_cap,
    };
    let nnp = process.no_new_privileges().unwrap_or(false);
    steps.push(Step::CloseOtherFds);
    steps.push(Step::Oci(OciStep::DropBounding(sets)));
    if has_seccomp && !nnp {
        steps.push(Step::Seccomp);
    }
    let user = process.user();
    steps.push(Step::Oci(OciStep::SetUser {
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
    }));
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(unsupported(
            "process.cwd",
            format!("`{}` is not absolute", cwd.display()),
        ));
    }
    steps.push(Step::Workdir(cs(
        "process.cwd",
        cwd.as_os_str().as_encoded_bytes(),
    )?));
    steps.push(Step::Umask(0o022));
    steps.push(Step::Oci(OciStep::SetCaps(sets)));
    if nnp {
        steps.push(Step::NoNewPrivs);
    }
    steps.push(Step::CloseInheritedFds);
    steps.push(Step::Oci(OciStep::CheckExecutable));
    let mut env = BTreeMap::new();
    for (i, kv) in process.env().iter().flatten().enumerate() {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            unsupported(
                format!("process.env[{i}]"),
                format!("`{kv}` is not KEY=VALUE"),
            )
        })?;
        env.insert(k.to_string(), v.to_string());
    }
    // OCI gives the environment whole: no HOSTNAME/HOME defaults are added,
    // but argv[0] is searched in its PATH (or the default one).
    let caps = CapabilityPlan {
        keep: sets.permitted,
        last_cap,
    };
    Ok(ProcessSteps {
        steps,
        fds,
        env,
        caps,
        nnp,
    })
}

/// The init's plan for `spec`.
pub fn build(spec: &Spec, inputs: OciInputs<'_>) -> Result<OciInit, OciError> {
    let mut fds: Vec<OwnedFd> = Vec::new();
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| unsupported("process", "missing (duet runs a process)"))?;
    let args = process.args().clone().unwrap_or_default();
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| unsupported("linux", "missing"))?;
    for (field, set) in [
        (
            "linux.uidMappings",
            linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()),
        ),
        (
            "linux.gidMappings",
            linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty()),
        ),
        ("linux.intelRdt", linux.intel_rdt().is_some()),
        ("linux.memoryPolicy", linux.memory_policy().is_some()),
        ("linux.personality", linux.personality().is_some()),
        ("linux.timeOffsets", linux.time_offsets().is_some()),
        (
            "linux.netDevices",
            linux.net_devices().as_ref().is_some_and(|m| !m.is_empty()),
        ),
        (
            "linux.mountLabel",
            linux.mount_label().as_ref().is_some_and(|m| !m.is_empty()),
        ),
    ] {
        if set {
            return Err(unsupported(field, "not supported by duet"));
        }
    }
    check_process(process)?;

    // Namespaces.
    let mut clone_flags: u64 = 0;
    let mut steps: Vec<Step> = Vec::new();
    let mut new_ns = 0;
    let mut joined = 0;
    let mut cgroup_ns = false;
    let mut join_pid = None;
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        let field = format!("linux.namespaces[{i}]");
        let flag = ns_flag(ns.typ());
        match (ns.typ(), ns.path()) {
            (LinuxNamespaceType::User | LinuxNamespaceType::Time, _) => {
                return Err(unsupported(
                    field,
                    format!("{:?} namespaces are not supported by duet", ns.typ()),
                ))
            }
            (LinuxNamespaceType::Pid, Some(p)) => {
                let f = std::fs::File::open(p).map_err(|source| OciError::Open {
                    field: format!("{field}.path"),
                    path: p.display().to_string(),
                    source,
                })?;
                join_pid = Some(OwnedFd::from(f));
                joined |= flag;
            }
            (LinuxNamespaceType::Mount | LinuxNamespaceType::Cgroup, Some(p)) => {
                return Err(unsupported(
                    field,
                    format!(
                        "joining an existing {:?} namespace ({}) is not supported",
                        ns.typ(),
                        p.display()
                    ),
                ))
            }
            (LinuxNamespaceType::Cgroup, None) => cgroup_ns = true,
            (_, None) => {
                clone_flags |= flag as u64;
                new_ns |= flag;
            }
            (_, Some(p)) => {
                let f = std::fs::File::open(p).map_err(|source| OciError::Open {
                    field: format!("{field}.path"),
                    path: p.display().to_string(),
                    source,
                })?;
                let fd: OwnedFd = f.into();
                steps.push(Step::Oci(OciStep::JoinNamespace {
                    fd: fd.as_raw_fd(),
                    nstype: flag,
                    path: p.display().to_string(),
                }));
                fds.push(fd);
                joined |= flag;
            }
        }
    }
    if new_ns & libc::CLONE_NEWNS == 0 {
        return Err(unsupported(
            "linux.namespaces",
            "a mount namespace of the container's own is required",
        ));
    }
    if (new_ns | joined) & libc::CLONE_NEWPID == 0 {
        return Err(unsupported(
            "linux.namespaces",
            "sharing the host's pid namespace is not supported",
        ));
    }
    // The init waits here for `create` to put it in its cgroups (and run
    // the hooks) only where the next step needs that: a new cgroup namespace
    // is rooted at the cgroup joined. Otherwise it waits right before
    // pivot_root, as runc's hooks run, so its mounts overlap the join, whose
    // v1 cgroup.procs write costs an RCU grace period (~10 ms).
    if cgroup_ns {
        steps.push(Step::WaitForParent);
        steps.push(Step::UnshareCgroupNamespace);
    }

    // The root.
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| unsupported("root", "missing"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        inputs.bundle.join(root.path())
    };
    let rootfs = rootfs.canonicalize().map_err(|source| OciError::Open {
        field: "root.path".into(),
        path: rootfs.display().to_string(),
        source,
    })?;
    steps.push(Step::MakeRootSlave);
    if let Some(p) = linux
        .rootfs_propagation()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        let o = parse_options(&[p.to_string()]);
        if o.propagation == 0 {
            return Err(unsupported(
                "linux.rootfsPropagation",
                format!("`{p}` is not a propagation type"),
            ));
        }
        steps.push(Step::Oci(OciStep::RootPropagation(o.propagation)));
    }
    let rootfs_c = cs("root.path", rootfs.as_os_str().as_encoded_bytes())?;
    steps.push(Step::Oci(OciStep::BindRootfs(rootfs_c.clone())));
    steps.push(Step::Chdir(rootfs_c));
    steps.push(Step::Umask(0));

    // Mounts.
    let mut dev_mounted = false;
    let mut devpts = false;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let field = format!("mounts[{i}]");
        let dest = m.destination();
        if !dest.is_absolute() {
            return Err(unsupported(
                format!("{field}.destination"),
                format!("`{}` is not absolute", dest.display()),
            ));
        }
        let o = parse_options(m.options().as_deref().unwrap_or_default());
        let typ = m.typ().as_deref().unwrap_or("");
        let bind = o.bind || typ == "bind";
        let bind_file = bind && {
            let source = m.source().clone().unwrap_or_default();
            let src = if source.is_absolute() {
                source
            } else {
                inputs.bundle.join(source)
            };
            std::fs::metadata(&src).is_ok_and(|m| !m.is_dir())
        };
        let dfield = format!("{field}.destination");
        in_root(&dfield, dest)?; // refuses `..`
        let resolved = prepare_in_root(
            &rootfs,
            dest,
            if bind_file { Leaf::File } else { Leaf::Dir },
            &dfield,
        )?;
        let at = in_root(&dfield, &resolved)?;
        let is_dev = at.prefixes.len() == 1 && at.names[0].as_bytes() == b"dev";
        dev_mounted |= is_dev && !bind;
        devpts |= typ == "devpts" && at.shown.trim_end_matches('/') == "/dev/pts";
        // Everything but /dev itself and devpts (which holds only ptys) is
        // nodev (see the module docs).
        let flags = o.flags
            | if is_dev || typ == "devpts" {
                0
            } else {
                libc::MS_NODEV
            };
        if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
            return Err(unsupported(
                format!("{field}.uidMappings"),
                "id-mapped mounts are not supported",
            ));
        }
        if typ == "cgroup" || typ == "cgroup2" {
            push_cgroup_mount(&mut steps, &at, &o, inputs.cgroup_dirs, &field)?;
            continue;
        }
        let source = m.source().clone().unwrap_or_default();
        let (source, leaf) = if bind {
            let src = if source.is_absolute() {
                source.clone()
            } else {
                inputs.bundle.join(&source)
            };
            let meta = std::fs::metadata(&src).map_err(|e| OciError::Open {
                field: format!("{field}.source"),
                path: src.display().to_string(),
                source: e,
            })?;
            (src, if meta.is_dir() { Leaf::Dir } else { Leaf::File })
        } else {
            (
                if source.as_os_str().is_empty() {
                    PathBuf::from(typ)
                } else {
                    source
                },
                Leaf::Dir,
            )
        };
        if !bind && typ.is_empty() {
            return Err(unsupported(
                format!("{field}.type"),
                "missing (and not a bind mount)",
            ));
        }
        let data = (!o.data.is_empty()).then(|| o.data.join(","));
        steps.push(Step::Oci(OciStep::Mount(OciMount {
            at,
            leaf,
            source: cs(
                &format!("{field}.source"),
                source.as_os_str().as_encoded_bytes(),
            )?,
            fstype: (!bind)
                .then(|| cs(&format!("{field}.type"), typ))
                .transpose()?,
            flags,
            data: data
                .map(|d| cs(&format!("{field}.options"), d))
                .transpose()?,
            bind,
            recursive: o.recursive,
            propagation: o.propagation,
        })));
    }

    // Devices.
    let mut devices: Vec<(String, OciDevice)> = Vec::new();
    for &(path, major, minor) in DEFAULT_DEVICES {
        devices.push((
            path.to_string(),
            OciDevice {
                at: node_in_root(&rootfs, Path::new(path), "default devices")?,
                kind: libc::S_IFCHR,
                major,
                minor,
                mode: 0o666,
                uid: 0,
                gid: 0,
            },
        ));
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        let field = format!("linux.devices[{i}]");
        use oci_spec::runtime::LinuxDeviceType as T;
        let kind = match d.typ() {
            T::C | T::U => libc::S_IFCHR,
            T::B => libc::S_IFBLK,
            T::P => libc::S_IFIFO,
            T::A => {
                return Err(unsupported(
                    format!("{field}.type"),
                    "`a` is not a device type",
                ))
            }
        };
        let shown = d.path().display().to_string();
        devices.retain(|(p, _)| *p != shown);
        devices.push((
            shown,
            OciDevice {
                at: node_in_root(&rootfs, d.path(), &format!("{field}.path"))?,
                kind,
                major: d.major() as u32,
                minor: d.minor() as u32,
                mode: d.file_mode().unwrap_or(0o666) & 0o7777,
                uid: d.uid().unwrap_or(0),
                gid: d.gid().unwrap_or(0),
            },
        ));
    }
    steps.extend(
        devices
            .into_iter()
            .map(|(_, d)| Step::Oci(OciStep::Device(d))),
    );
    for &(link, target) in DEV_SYMLINKS {
        steps.push(Step::Oci(OciStep::Symlink {
            at: node_in_root(&rootfs, Path::new(link), "default symlinks")?,
            target: cs("default symlinks", target)?,
        }));
    }
    if devpts {
        steps.push(Step::Oci(OciStep::Symlink {
            at: node_in_root(&rootfs, Path::new("/dev/ptmx"), "default symlinks")?,
            target: cs("default symlinks", "pts/ptmx")?,
        }));
    }
    if dev_mounted {
        steps.push(Step::Oci(OciStep::RemountReadOnly(in_root(
            "/dev",
            Path::new("/dev"),
        )?)));
    }
    if !cgroup_ns {
        steps.push(Step::WaitForParent);
    }
    steps.push(Step::StampRootfsReady);
    steps.push(Step::PivotRoot);
    steps.push(Step::StampPivotDone);
    // The process's surroundings.
    if let Some(h) = spec.hostname().as_deref() {
        if new_ns & libc::CLONE_NEWUTS == 0 && joined & libc::CLONE_NEWUTS == 0 {
            return Err(unsupported(
                "hostname",
                "needs a uts namespace of the container's own",
            ));
        }
        steps.push(Step::Hostname(cs("hostname", h)?));
    }
    if spec.domainname().as_deref().is_some_and(|d| !d.is_empty()) {
        return Err(unsupported("domainname", "not supported by duet"));
    }
    let sysctls: BTreeMap<_, _> = linux
        .sysctl()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    for (k, v) in &sysctls {
        namespaced_sysctl(
            k,
            new_ns & libc::CLONE_NEWNET != 0 || joined & libc::CLONE_NEWNET != 0,
            new_ns & libc::CLONE_NEWIPC != 0 || joined & libc::CLONE_NEWIPC != 0,
            new_ns & libc::CLONE_NEWUTS != 0 || joined & libc::CLONE_NEWUTS != 0,
        )
        .map_err(|why| unsupported(format!("linux.sysctl.{k}"), why))?;
        steps.push(Step::Oci(OciStep::WriteFile {
            path: cs("linux.sysctl", format!("/proc/sys/{}", k.replace('.', "/")))?,
            value: cs("linux.sysctl", v)?,
        }));
    }
    // Masked and read-only paths last: /proc/sys is read-only after them.
    for p in linux.masked_paths().iter().flatten() {
        steps.push(Step::Mask(cs(
            "linux.maskedPaths",
            p.trim_start_matches('/'),
        )?));
    }
    for p in linux.readonly_paths().iter().flatten() {
        steps.push(Step::ReadOnly(cs(
            "linux.readonlyPaths",
            p.trim_start_matches('/'),
        )?));
    }
    if root.readonly().unwrap_or(false) {
        steps.push(Step::Oci(OciStep::RootReadOnly));
    }

    if new_ns & libc::CLONE_NEWNET != 0 {
        steps.push(Step::LoopbackUp);
    }
    let tail = process_steps(
        process,
        inputs.console,
        inputs.keyring,
        inputs.has_seccomp,
        inputs.last_cap,
    )?;
    steps.extend(tail.steps);
    fds.extend(tail.fds);
    let fifo = inputs.fifo;
    steps.push(Step::Oci(OciStep::AwaitStartFifo(fifo.as_raw_fd())));
    if inputs.has_seccomp && tail.nnp {
        steps.push(Step::Seccomp);
    }
    let keep_fd = fifo.as_raw_fd();
    fds.push(fifo);
    let mut plan = plan::assemble(steps, &args, tail.env, tail.caps, inputs.seccomp)?;
    plan.outlives_parent = true;
    plan.keep_fd = keep_fd;
    Ok(OciInit {
        plan,
        clone_flags,
        fds,
        join_pid,
    })
}

/// A `cgroup` mount: cgroup2 itself on a pure-v2 host (the cgroup
/// namespace shows the container's own subtree); on v1 or hybrid hosts a
/// tmpfs with the container's own directory of each hierarchy bound below
/// it (read-only unless the mount says `rw`), as runc does.
fn push_cgroup_mount(
    steps: &mut Vec<Step>,
    at: &InRoot,
    o: &MountOptions,
    dirs: &[(bool, PathBuf)],
    field: &str,
) -> Result<(), OciError> {
    let flags = o.flags | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let v2_only = !dirs.is_empty() && dirs.iter().all(|(v2, _)| *v2);
    if v2_only {
        steps.push(Step::Oci(OciStep::Mount(OciMount {
            at: at.clone(),
            leaf: Leaf::Dir,
            source: cs(field, "cgroup2")?,
            fstype: Some(cs(field, "cgroup2")?),
            flags,
            data: None,
            bind: false,
            recursive: false,
            propagation: 0,
        })));
        return Ok(());
    }
    steps.push(Step::Oci(OciStep::Mount(OciMount {
        at: at.clone(),
        leaf: Leaf::Dir,
        source: cs(field, "tmpfs")?,
        fstype: Some(cs(field, "tmpfs")?),
        flags: flags & !libc::MS_RDONLY,
        data: Some(cs(field, "mode=755")?),
        bind: false,
        recursive: false,
        propagation: 0,
    })));
    for (v2, dir) in dirs {
        // The hierarchy's mount point name: `memory`, `cpu,cpuacct`, `unified`.
        let name = hierarchy_name(dir, *v2);
        let dest = Path::new(&at.shown).join(&name);
        steps.push(Step::Oci(OciStep::Mount(OciMount {
            at: in_root(field, &dest)?,
            leaf: Leaf::Dir,
            source: cs(field, dir.as_os_str().as_encoded_bytes())?,
            fstype: None,
            flags,
            data: None,
            bind: true,
            recursive: false,
            propagation: 0,
        })));
    }
    if o.flags & libc::MS_RDONLY != 0 {
        steps.push(Step::Oci(OciStep::RemountReadOnly(at.clone())));
    }
    Ok(())
}

/// `memory` for `/sys/fs/cgroup/memory/docker/abc`: the component right
/// below `/sys/fs/cgroup` (`unified` for a hybrid host's v2 tree).
fn hierarchy_name(dir: &Path, v2: bool) -> String {
    let base = Path::new("/sys/fs/cgroup");
    match dir
        .strip_prefix(base)
        .ok()
        .and_then(|r| r.components().next())
    {
        Some(Component::Normal(n)) => n.to_string_lossy().into_owned(),
        _ if v2 => "unified".into(),
        _ => "cgroup".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_the_root_are_split_and_dotdot_refused() {
        let r = in_root("mounts[0].destination", Path::new("/dev/pts")).unwrap();
        assert_eq!(r.prefixes, [c"dev".to_owned(), c"dev/pts".to_owned()]);
        assert_eq!(r.names, [c"dev".to_owned(), c"pts".to_owned()]);
        let e = in_root("mounts[3].destination", Path::new("/etc/../../x"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("mounts[3].destination: `/etc/../../x`"),
            "{e}"
        );
    }

    #[test]
    fn mount_options_become_flags_propagation_and_data() {
        let o = parse_options(
            &["nosuid", "rbind", "ro", "rslave", "mode=755", "size=64k"].map(String::from),
        );
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_RDONLY);
        assert!(o.bind && o.recursive);
        assert_eq!(o.propagation, libc::MS_SLAVE | libc::MS_REC);
        assert_eq!(o.data, ["mode=755", "size=64k"]);
        let o = parse_options(&["ro", "rw"].map(String::from));
        assert_eq!(o.flags & libc::MS_RDONLY, 0);
    }

    #[test]
    fn only_namespaced_sysctls_are_taken() {
        assert!(namespaced_sysctl("net.ipv4.ip_forward", true, true, true).is_ok());
        assert!(namespaced_sysctl("net.ipv4.ip_forward", false, true, true).is_err());
        assert!(namespaced_sysctl("kernel.shmmax", true, true, true).is_ok());
        assert!(namespaced_sysctl("vm.overcommit_memory", true, true, true).is_err());
        assert!(namespaced_sysctl("kernel.panic", true, true, true).is_err());
    }

    #[test]
    fn cgroup_hierarchy_names() {
        assert_eq!(
            hierarchy_name(Path::new("/sys/fs/cgroup/memory/docker/a"), false),
            "memory"
        );
        assert_eq!(
            hierarchy_name(Path::new("/sys/fs/cgroup/cpu,cpuacct/x"), false),
            "cpu,cpuacct"
        );
        assert_eq!(
            hierarchy_name(Path::new("/sys/fs/cgroup/unified/x"), true),
            "unified"
        );
    }
}
