//! `create` of an OCI bundle in the container isolation: cgroups, the start
//! fifo, the init cloned into its namespaces and left waiting for `start`.
//!
//! As with runc, the process that runs `create` exits once the init waits:
//! the init is then a child of the engine's shim (a subreaper) or of init,
//! which reaps it; `start` releases it by opening the fifo; `state`, `kill`
//! and `delete` find it by the pid and start time recorded in the state
//! directory (see the CLI's `src/oci/`).

use crate::channel::{Channel, ParentMsg};
use crate::oci::{self, OciError, OciInputs};
use crate::oci_cgroup::{self, OciCgroup, OciCgroupError};
use crate::seccomp::SeccompPrograms;
use crate::{read_child, Init};
use oci_spec::runtime::Spec;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors of `create`, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum OciRunError {
    /// The config cannot be honoured.
    #[error(transparent)]
    Config(#[from] OciError),
    /// Cgroups.
    #[error(transparent)]
    Cgroup(#[from] OciCgroupError),
    /// Seccomp.
    #[error("linux.seccomp: {0}")]
    Seccomp(String),
    /// A step of the init failed.
    #[error("container init: {step}: {source}")]
    Step {
        /// What it was doing.
        step: String,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// argv\[0\] not found (engines map this message to exit code 127).
    #[error("exec: \"{0}\": executable file not found in $PATH")]
    NotFound(String),
    /// argv\[0\] not executable (126).
    #[error("exec: \"{0}\": permission denied")]
    NotExecutable(String),
    /// Other I/O.
    #[error("{what}")]
    Io {
        /// What.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The container is not running (exec into it).
    #[error("{0}")]
    NotRunning(String),
    /// The init ended before it was created.
    #[error("container init died during setup ({0})")]
    InitDied(String),
    /// A hook failed.
    #[error("hooks.{kind}[{index}] ({path}): {why}")]
    Hook {
        /// `prestart`, `createRuntime`...
        kind: &'static str,
        /// Index.
        index: usize,
        /// Program.
        path: String,
        /// What happened.
        why: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> OciRunError {
    let what = what.into();
    move |source| OciRunError::Io { what, source }
}

/// What `create` made.
#[derive(Debug)]
pub struct Created {
    /// The init's pid (in the caller's pid namespace).
    pub pid: i32,
    /// Its cgroup directories.
    pub cgroup: OciCgroup,
}

/// What `create` is asked to do.
pub struct CreateRequest<'a> {
    /// Container id.
    pub id: &'a str,
    /// Bundle directory.
    pub bundle: &'a Path,
    /// The parsed config.json.
    pub spec: &'a Spec,
    /// Where the start fifo goes (`<state dir>/exec.fifo`).
    pub fifo: &'a Path,
    /// `--console-socket`.
    pub console_socket: Option<&'a Path>,
    /// Runs the hooks of one kind with the state JSON for `pid` (the CLI
    /// knows the state's shape); `Err` stops the create.
    pub hooks: &'a dyn Fn(&'static str, i32) -> Result<(), OciRunError>,
    /// Compiled `linux.seccomp`, or none.
    pub seccomp: Option<Arc<SeccompPrograms>>,
    /// How long setup may take.
    pub timeout: Duration,
    /// A new session keyring for the init (unless `--no-new-keyring`).
    pub new_keyring: bool,
}

fn mkfifo(path: &Path) -> Result<OwnedFd, OciRunError> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io_err(format!("fifo path {}", path.display()))(io::ErrorKind::InvalidInput.into())
    })?;
    // SAFETY: mkfifo/open with a NUL-terminated path we own.
    unsafe {
        // 0622: the workload's user (any uid) opens it for writing.
        if libc::mkfifo(c.as_ptr(), 0o622) != 0 {
            return Err(io_err(format!("creating {}", path.display()))(
                io::Error::last_os_error(),
            ));
        }
        libc::chmod(c.as_ptr(), 0o622);
        let fd = libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io_err(format!("opening {}", path.display()))(
                io::Error::last_os_error(),
            ));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The connected `--console-socket` when `process.terminal` asks for a
/// terminal (create and exec alike); without a socket the process steps
/// refuse `process.terminal`, naming it.
pub(crate) fn console_for(
    process: Option<&oci_spec::runtime::Process>,
    socket: Option<&Path>,
) -> Result<Option<OwnedFd>, OciRunError> {
    let terminal = process.and_then(|p| p.terminal()).unwrap_or(false);
    match (terminal, socket) {
        (true, Some(path)) => {
            let s = std::os::unix::net::UnixStream::connect(path)
                .map_err(io_err(format!("--console-socket {}", path.display())))?;
            Ok(Some(s.into()))
        }
        _ => Ok(None),
    }
}

/// The name of container `id`'s session keyring.
pub(crate) fn keyring_name(id: &str) -> String {
    format!("duet:{id}")
}

/// Runs `f` (a clone) with this thread's children's pid namespace set to
/// `ns`, then back to its own.
fn in_pid_namespace<T>(ns: &OwnedFd, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    use std::os::fd::AsRawFd;
    let own = crate::exec::open_cloexec(Path::new("/proc/thread-self/ns/pid"), libc::O_RDONLY)?;
    // SAFETY: setns on fds we own; CLONE_NEWPID only changes the namespace
    // of this thread's future children.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let r = f();
    // SAFETY: as above, back to this thread's own.
    if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) } != 0 && r.is_ok() {
        return Err(io::Error::last_os_error());
    }
    r
}

/// Creates the container; returns once its init waits for `start`.
pub fn create(req: &CreateRequest<'_>) -> Result<Created, OciRunError> {
    let linux = req.spec.linux().as_ref();
    let rel = oci_cgroup::relative_path(linux.and_then(|l| l.cgroups_path().as_deref()), req.id)?;
    let cgroup = OciCgroup::create(
        &rel,
        linux.and_then(|l| l.resources().as_ref()),
        &oci::devices_allowed(req.spec),
    )?;
    let made = create_in(req, &cgroup);
    match made {
        Ok(pid) => Ok(Created { pid, cgroup }),
        Err(e) => {
            let _ = cgroup.destroy();
            let _ = std::fs::remove_file(req.fifo);
            Err(e)
        }
    }
}

fn create_in(req: &CreateRequest<'_>, cgroup: &OciCgroup) -> Result<i32, OciRunError> {
    let fifo = mkfifo(req.fifo)?;
    let console = console_for(req.spec.process().as_ref(), req.console_socket)?;
    let last_cap = oci::last_cap();
    let has_seccomp = req.seccomp.is_some();
    let keyring = req.new_keyring.then(|| keyring_name(req.id));
    let init = oci::build(
        req.spec,
        OciInputs {
            bundle: req.bundle,
            fifo,
            console,
            cgroup_dirs: &cgroup.dirs,
            seccomp: req
                .seccomp
                .clone()
                .unwrap_or_else(|| Arc::new(SeccompPrograms::none())),
            has_seccomp,
            last_cap,
            keyring: keyring.as_deref(),
        },
    )?;
    let (parent_end, child_end) =
        Channel::pair().map_err(io_err("creating the setup socketpair"))?;
    // Born in its v2 cgroup (CLONE_INTO_CGROUP): a migration afterwards
    // costs an RCU grace period (~10 ms); v1 hierarchies have no such way
    // and are joined after the clone. Kernels before 5.7 refuse the flag.
    let v2_fd = cgroup
        .v2_dir()
        .and_then(|d| crate::exec::open_cloexec(d, libc::O_RDONLY | libc::O_DIRECTORY).ok());
    let spawn = |into: Option<&OwnedFd>| match &init.join_pid {
        None => Init::spawn_with_flags(init.clone_flags, &init.plan, &child_end, into),
        Some(ns) => in_pid_namespace(ns, || {
            Init::spawn_with_flags(init.clone_flags, &init.plan, &child_end, into)
        }),
    };
    let (spawned, into_v2) = match spawn(v2_fd.as_ref()) {
        Err(e)
            if v2_fd.is_some()
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOSYS | libc::E2BIG)
                ) =>
        {
            (spawn(None), false)
        }
        r => (r, v2_fd.is_some()),
    };
    let mut child = spawned.map_err(io_err("cloning the container init"))?;
    drop(child_end);
    drop(init.fds);
    cgroup.add_pid_to(child.pid, !into_v2)?;
    (req.hooks)("prestart", child.pid)?;
    (req.hooks)("createRuntime", child.pid)?;
    let _ = parent_end.send_raw(&ParentMsg::Go.encode());
    let setup = read_child(
        &parent_end,
        &child,
        Some(Instant::now() + req.timeout),
        true,
    );
    if setup.created.is_some() {
        let pid = child.pid;
        // The init stays: it is no longer ours to kill on drop.
        child.reaped = true;
        return Ok(pid);
    }
    let status = child
        .reap()
        .map(|s| format!("{s:?}"))
        .unwrap_or_else(|e| e.to_string());
    if setup.timed_out {
        return Err(OciRunError::InitDied(format!(
            "setup took longer than {:?}",
            req.timeout
        )));
    }
    if let Some((step, errno)) = setup.step_failed {
        let plan_step = &init.plan.steps[step as usize];
        if matches!(
            plan_step,
            crate::plan::Step::Oci(crate::child_oci::OciStep::CheckExecutable)
        ) {
            let arg0 = String::from_utf8_lossy(init.plan.argv[0].as_bytes()).into_owned();
            return Err(if errno == libc::EACCES {
                OciRunError::NotExecutable(arg0)
            } else {
                OciRunError::NotFound(arg0)
            });
        }
        return Err(OciRunError::Step {
            step: plan_step.describe(),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    Err(OciRunError::InitDied(status))
}

/// The state directory path for `id` below `root`, refusing ids that are
/// not one plain path component.
pub fn state_dir(root: &Path, id: &str) -> Result<PathBuf, String> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+:@".contains(&b));
    if !ok {
        return Err(format!(
            "container id `{id}`: use letters, digits and ._-+:@ only"
        ));
    }
    Ok(root.join(id))
}
