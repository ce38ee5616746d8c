//! `duet exec`: one more command inside a running container, held to the
//! same restrictions as its workload.
//!
//! [`exec`] follows `runc exec`'s shape, with duet's own plan machinery
//! ([`plan::build_exec`], run by [`crate::child::child_main`]):
//! 1. find the container's init from the instance metadata (`state.pid`,
//!    checked against `state.pid_start` so a reused pid is never joined)
//!    and open a pidfd and its `/proc/PID/ns/*` files;
//! 2. fork a helper (still in duet's namespaces) and write it into the
//!    init's cgroup in every hierarchy, v1 and v2 (`/proc/PID/cgroup`);
//! 3. the helper joins the init's mount, pid, uts, ipc, net and cgroup
//!    namespaces (one `setns` on the pidfd, or one per namespace file on
//!    kernels before 5.8) and forks, with CLONE_PARENT, the command's
//!    process: that one is in the container's pid namespace and is duet's
//!    own child, so duet waits for it on a pidfd;
//! 4. the command's process becomes non-dumpable, starts a session, gets its
//!    stdio (below), closes every other inherited fd, changes to the
//!    workdir, drops to the workload's capabilities, sets no_new_privs,
//!    installs the workload's seccomp filter and execs, searching the
//!    workload's PATH; a failed exec gives the shell's 127/126.
//!
//! Stdio: with `tty` the command gets a new pty from the container's own
//! devpts on fds 0-2, as its controlling terminal, relayed by
//! [`console::Relay`]. Without it, fds of duet that are no terminals are
//! passed through; a terminal never is (the command could type into the
//! caller's shell with TIOCSTI): those fds get pipes that duet relays.
//! Without `interactive`, stdin is /dev/null.
//!
//! SIGINT/SIGTERM/SIGHUP/SIGQUIT to duet while the command runs kill it (see
//! [`signals`]) and [`exec`] returns `WorkloadExit::Signal(N)` (130, 143, ...).

use crate::capabilities::CapabilityPlan;
use crate::channel::{Channel, ChildMsg, ParentMsg};
use crate::plan::{ExecSpec, PlanError, Step};
use crate::seccomp::SeccompError;
use crate::stdio::{PipeRelay, StdioSetup};
use crate::{console, plan, seccomp, signals, Init};
use duet_shared::instance::{process_start_time, InstanceError, Status};
use duet_shared::runtime::ExecRequest;
use duet_shared::{InstanceDir, WorkloadExit};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Errors of `duet exec` into a container; each names the instance.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The request has no command.
    #[error("exec into `{instance}`: no command given")]
    NoCommand {
        /// Instance id.
        instance: String,
    },
    /// The instance is not a container.
    #[error("instance `{instance}` is a {isolation}, not a container")]
    NotAContainer {
        /// Instance id.
        instance: String,
        /// Its isolation.
        isolation: String,
    },
    /// The instance's workload is not running.
    #[error("instance `{instance}` is not running (status: {status})")]
    NotRunning {
        /// Instance id.
        instance: String,
        /// Its recorded status.
        status: &'static str,
    },
    /// The recorded init is gone (or its pid now belongs to another process).
    #[error("instance `{instance}` is not running: its init (pid {pid}) is gone")]
    InitGone {
        /// Instance id.
        instance: String,
        /// The pid recorded for its init.
        pid: i32,
    },
    /// The init's pidfd or namespace files could not be opened.
    #[error("instance `{instance}`: opening {what} of its init (pid {pid})")]
    Target {
        /// Instance id.
        instance: String,
        /// pidfd or the namespace file.
        what: String,
        /// The init's pid.
        pid: i32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `spec.json` could not be read.
    #[error("instance `{instance}`: reading its spec")]
    Spec {
        /// Instance id.
        instance: String,
        /// Cause.
        #[source]
        source: InstanceError,
    },
    /// An `env` entry without `=`.
    #[error("exec into `{instance}`: env `{entry}`: expected KEY=VALUE")]
    BadEnv {
        /// Instance id.
        instance: String,
        /// The entry.
        entry: String,
    },
    /// The command, env or workdir cannot be handed to the kernel.
    #[error("exec into `{instance}`")]
    Plan {
        /// Instance id.
        instance: String,
        /// Cause.
        #[source]
        source: PlanError,
    },
    /// Building the seccomp filter failed.
    #[error("exec into `{instance}`")]
    Seccomp {
        /// Instance id.
        instance: String,
        /// Cause.
        #[source]
        source: SeccompError,
    },
    /// Reading where the init's cgroups are.
    #[error("instance `{instance}`: reading {}", path.display())]
    CgroupInfo {
        /// Instance id.
        instance: String,
        /// `/proc/PID/cgroup`, `/proc/self/cgroup` or mountinfo.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// One of the init's cgroup hierarchies is not mounted where duet runs.
    #[error("instance `{instance}`: its cgroup `{line}` is in a hierarchy not mounted here")]
    CgroupUnmounted {
        /// Instance id.
        instance: String,
        /// The `/proc/PID/cgroup` line.
        line: String,
    },
    /// Moving the command into the init's cgroup failed.
    #[error("instance `{instance}`: joining its cgroup {}", dir.display())]
    CgroupJoin {
        /// Instance id.
        instance: String,
        /// The cgroup directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Pipes, /dev/null or the socketpair could not be made.
    #[error("exec into `{instance}`: {what}")]
    Setup {
        /// Instance id.
        instance: String,
        /// What was being made.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A step of the helper or the command's process failed.
    #[error("exec into `{instance}`: {step}")]
    Step {
        /// Instance id.
        instance: String,
        /// What the step was doing.
        step: String,
        /// errno from the child.
        #[source]
        source: io::Error,
    },
    /// The workdir does not exist in the container.
    #[error("exec into `{instance}`: workdir `{workdir}` does not exist in the container")]
    WorkdirMissing {
        /// Instance id.
        instance: String,
        /// The workdir.
        workdir: String,
    },
    /// The helper or the command's process died before the command ran.
    #[error("exec into `{instance}`: the exec helper died during setup ({exit})")]
    HelperDied {
        /// Instance id.
        instance: String,
        /// How it ended.
        exit: WorkloadExit,
    },
    /// Waiting for a process failed.
    #[error("exec into `{instance}`: waiting for pid {pid}")]
    Wait {
        /// Instance id.
        instance: String,
        /// The process.
        pid: i32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// duet was told to stop before the command started.
    #[error("exec into `{instance}`: interrupted by signal {signal} before the command started")]
    Interrupted {
        /// Instance id.
        instance: String,
        /// The signal.
        signal: i32,
    },
}

/// Namespace files joined on kernels that take no pidfd in setns, in this order.
const NS_FILES: [(&str, libc::c_int); 6] = [
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

/// How long the relays may go on copying after the command has exited.
const RELAY_GRACE: Duration = Duration::from_millis(500);

/// The running init, checked to be the recorded process.
pub(crate) struct Target {
    pub(crate) pid: i32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) ns_files: Vec<(OwnedFd, libc::c_int)>,
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Created => "created",
        Status::Running => "running",
        Status::Restarting => "restarting",
        Status::Exited => "exited",
    }
}

/// pidfd_open(2).
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process behind `pidfd` has exited (its pidfd is readable).
fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, without waiting.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

pub(crate) fn open_cloexec(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open with a NUL-terminated path we own.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Target {
    /// The init recorded in `dir`, if it runs: pidfd and namespace files
    /// opened first, then checked against the recorded start time, so every
    /// fd is known to belong to the recorded process.
    fn open(dir: &InstanceDir) -> Result<Target, ExecError> {
        let m = dir.meta();
        let instance = m.id.clone();
        if m.isolation != "container" {
            return Err(ExecError::NotAContainer {
                instance,
                isolation: m.isolation.clone(),
            });
        }
        if m.state.status != Status::Running {
            return Err(ExecError::NotRunning {
                instance,
                status: status_name(m.state.status),
            });
        }
        let (Some(pid), Some(start)) = (m.state.pid, m.state.pid_start) else {
            return Err(ExecError::NotRunning {
                instance,
                status: "running, but no init pid recorded",
            });
        };
        Target::open_pid(&instance, pid, start)
    }

    /// The process `pid`, checked to have started at `start` (clock ticks).
    pub(crate) fn open_pid(instance: &str, pid: i32, start: u64) -> Result<Target, ExecError> {
        let instance = instance.to_string();
        let gone = || ExecError::InitGone {
            instance: instance.clone(),
            pid,
        };
        let target_err = |what: String, source: io::Error| {
            if source.raw_os_error() == Some(libc::ESRCH)
                || source.kind() == io::ErrorKind::NotFound
            {
                gone()
            } else {
                ExecError::Target {
                    instance: instance.clone(),
                    what,
                    pid,
                    source,
                }
            }
        };
        if pid <= 0 {
            return Err(gone());
        }
        let pidfd = pidfd_open(pid).map_err(|e| target_err("a pidfd".into(), e))?;
        let mut ns_files = Vec::new();
        for (ns, flag) in NS_FILES {
            let p = PathBuf::from(format!("/proc/{pid}/ns/{ns}"));
            let fd = open_cloexec(&p, libc::O_RDONLY)
                .map_err(|e| target_err(p.display().to_string(), e))?;
            ns_files.push((fd, flag));
        }
        if process_start_time(pid) != Some(start) || has_exited(&pidfd) {
            return Err(gone());
        }
        Ok(Target {
            pid,
            pidfd,
            ns_files,
        })
    }
}

/// `KEY=VALUE` entries split, in order (a later one wins).
fn parse_env(instance: &str, env: &[String]) -> Result<Vec<(String, String)>, ExecError> {
    env.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(ExecError::BadEnv {
                instance: instance.to_string(),
                entry: kv.clone(),
            }),
        })
        .collect()
}

/// The cgroup directories the command must join to be in the init's cgroups.
fn cgroups_to_join(instance: &str, pid: i32) -> Result<Vec<PathBuf>, ExecError> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|source| ExecError::CgroupInfo {
            instance: instance.to_string(),
            path: p,
            source,
        })
    };
    let target = read(PathBuf::from(format!("/proc/{pid}/cgroup")))?;
    let own = read(PathBuf::from("/proc/self/cgroup"))?;
    let mountinfo = read(PathBuf::from("/proc/self/mountinfo"))?;
    crate::cgroup::dirs_to_join(&target, &own, &mountinfo).map_err(|line| {
        ExecError::CgroupUnmounted {
            instance: instance.to_string(),
            line,
        }
    })
}

/// What the helper and the command's process said during setup.
#[derive(Default)]
pub(crate) struct Setup {
    pub(crate) forked: Option<(i32, OwnedFd)>,
    pub(crate) console: Option<OwnedFd>,
    pub(crate) step_failed: Option<(u32, i32)>,
    pub(crate) exec_failed: Option<(i32, bool)>,
    pub(crate) ready: bool,
}

/// Reads messages until every holder of the child end has closed it (the
/// helper exited, the command exec'd or died).
pub(crate) fn read_setup(chan: &Channel) -> Setup {
    let mut out = Setup::default();
    while let Ok(Some((msg, fd))) = chan.recv_child_with_fd() {
        match msg {
            ChildMsg::Forked { pid } => {
                if let Some(fd) = fd {
                    out.forked = Some((pid, fd));
                }
            }
            ChildMsg::Console => out.console = fd,
            ChildMsg::StepFailed { step, errno } => {
                // The first failure is the cause.
                out.step_failed.get_or_insert((step, errno));
            }
            ChildMsg::ExecFailed {
                errno,
                interpreter_missing,
            } => out.exec_failed = Some((errno, interpreter_missing)),
            ChildMsg::Stamps { .. } => out.ready = true,
            // Only a run's init is created and waits for start.
            ChildMsg::Created { .. } => {}
        }
    }
    out
}

/// Sends `signal` to the init of the running container recorded in `dir`
/// (through a pidfd checked against the recorded start time, so a reused
/// pid is never signalled).
pub fn kill(dir: &InstanceDir, signal: i32) -> Result<(), ExecError> {
    let t = Target::open(dir)?;
    // SAFETY: pidfd_send_signal on a pidfd we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            t.pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r != 0 {
        return Err(ExecError::Target {
            instance: dir.id().to_string(),
            what: format!("signal {signal}"),
            pid: t.pid,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `request` inside the running container recorded in `dir`.
pub fn exec(dir: &InstanceDir, request: &ExecRequest) -> Result<WorkloadExit, ExecError> {
    let instance = dir.id().to_string();
    let mut helper_guard = signals::RunGuard::enter();
    if let Some(signal) = signals::received() {
        return Err(ExecError::Interrupted { instance, signal });
    }
    if request.command.is_empty() {
        return Err(ExecError::NoCommand { instance });
    }
    let target = Target::open(dir)?;
    let spec = dir.load_spec().map_err(|source| ExecError::Spec {
        instance: instance.clone(),
        source,
    })?;
    let overrides = parse_env(&instance, &request.env)?;
    let workdir = request
        .workdir
        .clone()
        .or_else(|| spec.workdir.clone())
        .unwrap_or_else(|| "/".to_string());
    let cgroups = cgroups_to_join(&instance, target.pid)?;
    let setup_err = |what| {
        let instance = instance.clone();
        move |source| ExecError::Setup {
            instance,
            what,
            source,
        }
    };
    let stdio = StdioSetup::new(request.tty, request.interactive)
        .map_err(setup_err("making the command's stdio"))?;
    let seccomp = seccomp::compile().map_err(|source| ExecError::Seccomp {
        instance: instance.clone(),
        source,
    })?;
    let plan = plan::build_exec(
        &ExecSpec {
            pidfd: target.pidfd.as_raw_fd(),
            ns_files: target
                .ns_files
                .iter()
                .map(|(fd, flag)| (fd.as_raw_fd(), *flag))
                .collect(),
            hostname: &spec.name,
            workdir: &workdir,
            command: &request.command,
            env: &spec.env,
            env_overrides: &overrides,
            stdio: stdio.plan,
            user: spec.user_ids(),
        },
        CapabilityPlan::for_this_process(),
        Arc::new(seccomp),
    )
    .map_err(|source| ExecError::Plan {
        instance: instance.clone(),
        source,
    })?;

    let (parent_end, child_end) =
        Channel::pair().map_err(setup_err("creating the sync socketpair"))?;
    let spawn_err = setup_err("forking the exec helper");
    let helper = Init::spawn_with_flags(0, &plan, &child_end, None).map_err(spawn_err)?;
    drop(child_end);
    drop(stdio.child_ends);
    helper_guard.register(helper.pidfd.as_raw_fd());
    for dir in &cgroups {
        let procs = dir.join("cgroup.procs");
        if let Err(source) = std::fs::write(&procs, helper.pid.to_string()) {
            drop(helper); // killed and reaped
            return Err(ExecError::CgroupJoin {
                instance,
                dir: dir.clone(),
                source,
            });
        }
    }
    // A helper that already failed has closed its end: EPIPE, and its message waits for us.
    let _ = parent_end.send_raw(&ParentMsg::Go.encode());
    let setup = read_setup(&parent_end);
    let mut helper = helper;
    let helper_exit = helper.reap().map_err(|source| ExecError::Wait {
        instance: instance.clone(),
        pid: helper.pid,
        source,
    })?;
    // Entered before the helper's guard is dropped: no stop signal in between
    // takes its default action (which would leave the command to its death signal).
    let mut command_guard = signals::RunGuard::enter();
    drop(helper_guard);
    let command = setup.forked.map(|(pid, pidfd)| {
        command_guard.register(pidfd.as_raw_fd());
        Init {
            pid,
            pidfd,
            reaped: false,
        }
    });
    if let Some((step, errno)) = setup.step_failed {
        drop(command); // killed and reaped
        if let Some(sig) = signals::received() {
            return Ok(WorkloadExit::Signal(sig));
        }
        let step = &plan.steps[step as usize];
        return Err(match (step, errno) {
            (Step::Workdir(_), libc::ENOENT | libc::ENOTDIR) => {
                ExecError::WorkdirMissing { instance, workdir }
            }
            // The init died meanwhile: its pid namespace takes no new processes.
            (Step::JoinNamespaces { .. }, libc::ESRCH)
            | (Step::ForkIntoPidNamespace, libc::ENOMEM) => ExecError::InitGone {
                instance,
                pid: target.pid,
            },
            _ => ExecError::Step {
                instance,
                step: step.describe(),
                source: io::Error::from_raw_os_error(errno),
            },
        });
    }
    let Some(mut command) = command else {
        if let Some(sig) = signals::received() {
            return Ok(WorkloadExit::Signal(sig));
        }
        return Err(ExecError::HelperDied {
            instance,
            exit: helper_exit,
        });
    };
    let wait_err = |pid| {
        let instance = instance.clone();
        move |source| ExecError::Wait {
            instance,
            pid,
            source,
        }
    };
    if let Some((errno, interp)) = setup.exec_failed {
        command.reap().map_err(wait_err(command.pid))?;
        let (msg, code) = crate::exec_failure_message(&request.command[0], errno, interp);
        eprintln!("duet: {msg}");
        return Ok(WorkloadExit::Code(code));
    }
    if !setup.ready {
        let exit = command.reap().map_err(wait_err(command.pid))?;
        if let Some(sig) = signals::received() {
            return Ok(WorkloadExit::Signal(sig));
        }
        return Err(ExecError::HelperDied { instance, exit });
    }

    // The command runs.
    let relay = match (setup.console, stdio.console) {
        (Some(master), Some(spec)) => match console::Relay::start(master, spec) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("duet: cannot relay the command's terminal: {e}");
                None
            }
        },
        _ => None,
    };
    let pipes = match PipeRelay::start(stdio.copies) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("duet: cannot relay the command's stdio: {e}");
            None
        }
    };
    let waited = command
        .wait_exit(None)
        .and_then(|_| command.reap())
        .map_err(wait_err(command.pid));
    command_guard.unregister();
    if let Some(relay) = relay {
        relay.finish(RELAY_GRACE);
    }
    if let Some(p) = pipes {
        p.finish(RELAY_GRACE);
    }
    let exit = waited?;
    Ok(match signals::received() {
        Some(sig) => WorkloadExit::Signal(sig),
        None => exit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stdio::pipe;
    use duet_shared::instance::RunState;
    use std::time::Instant;

    fn instance(t: &Path, isolation: &str, state: RunState) -> InstanceDir {
        let mut d = InstanceDir::create(t, "web", "busybox", isolation).unwrap();
        d.update(|m| m.state = state).unwrap();
        d
    }

    fn request(cmd: &[&str]) -> ExecRequest {
        ExecRequest {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn instances_not_running_are_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let d = instance(t.path(), "container", RunState::default());
        let e = exec(&d, &request(&["true"])).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("instance `{}` is not running (status: created)", d.id())
        );
        let d = instance(
            t.path(),
            "container",
            RunState {
                status: Status::Exited,
                ..Default::default()
            },
        );
        let e = exec(&d, &request(&["true"])).unwrap_err().to_string();
        assert!(e.contains(d.id()) && e.contains("exited"), "{e}");
        let d = instance(t.path(), "vm", RunState::default());
        let e = exec(&d, &request(&["true"])).unwrap_err().to_string();
        assert!(e.contains(d.id()) && e.contains("not a container"), "{e}");
    }

    #[test]
    fn a_dead_or_reused_pid_is_not_joined() {
        let t = tempfile::tempdir().unwrap();
        // This process, with a start time it does not have: a reused pid.
        let me = std::process::id() as i32;
        let d = instance(
            t.path(),
            "container",
            RunState {
                status: Status::Running,
                pid: Some(me),
                pid_start: Some(process_start_time(me).unwrap() + 1),
                ..Default::default()
            },
        );
        let e = exec(&d, &request(&["true"])).unwrap_err();
        assert!(
            matches!(&e, ExecError::InitGone { pid, .. } if *pid == me),
            "{e}"
        );
        assert!(e.to_string().contains(d.id()), "{e}");
        // A child that has exited and been reaped.
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        let start = process_start_time(pid);
        c.wait().unwrap();
        let d = instance(
            t.path(),
            "container",
            RunState {
                status: Status::Running,
                pid: Some(pid),
                pid_start: start.or(Some(1)),
                ..Default::default()
            },
        );
        let e = exec(&d, &request(&["true"])).unwrap_err();
        assert!(matches!(e, ExecError::InitGone { .. }), "{e}");
    }

    #[test]
    fn an_empty_command_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = instance(t.path(), "container", RunState::default());
        let e = exec(&d, &request(&[])).unwrap_err().to_string();
        assert_eq!(e, format!("exec into `{}`: no command given", d.id()));
    }

    #[test]
    fn env_entries_need_an_equals_sign() {
        assert_eq!(
            parse_env("i", &["A=1".into(), "B==2".into(), "C=".into()]).unwrap(),
            [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "=2".to_string()),
                ("C".to_string(), String::new())
            ]
        );
        for bad in ["A", "=1"] {
            let e = parse_env("web-1", &[bad.into()]).unwrap_err().to_string();
            assert_eq!(
                e,
                format!("exec into `web-1`: env `{bad}`: expected KEY=VALUE")
            );
        }
    }

    /// The fallback for kernels without setns on a pidfd (before 5.8): the
    /// same plan machinery joins through `/proc/PID/ns/*` alone; and the
    /// pidfd way, for comparison.
    #[test]
    fn namespaces_are_joined_through_files_or_the_pidfd() {
        let test = "namespaces_are_joined_through_files_or_the_pidfd";
        if duet_shared::testing::skip_unless_root(test, "setns needs CAP_SYS_ADMIN")
            || duet_shared::testing::skip_unless_program(test, "unshare", "util-linux")
        {
            return;
        }
        let mut target = std::process::Command::new("unshare")
            .args([
                "--uts",
                "sh",
                "-c",
                "hostname duet-ns-test && exec sleep 30",
            ])
            .spawn()
            .unwrap();
        let pid = target.id() as i32;
        let t = Instant::now();
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n"
        {
            assert!(t.elapsed() < Duration::from_secs(10), "target never slept");
            std::thread::sleep(Duration::from_millis(10));
        }
        let uts = open_cloexec(Path::new(&format!("/proc/{pid}/ns/uts")), libc::O_RDONLY).unwrap();
        let pidfd = pidfd_open(pid).unwrap();
        for via_pidfd in [false, true] {
            let (r, w) = pipe().unwrap();
            let steps = vec![
                Step::JoinNamespaces {
                    pidfd: if via_pidfd { pidfd.as_raw_fd() } else { -1 },
                    flags: libc::CLONE_NEWUTS,
                    ns_files: vec![(uts.as_raw_fd(), libc::CLONE_NEWUTS)],
                },
                Step::Stdio([0, w.as_raw_fd(), 2]),
            ];
            let env = [("PATH".to_string(), plan::DEFAULT_PATH.to_string())].into();
            let plan = plan::assemble(
                steps,
                &["uname".to_string(), "-n".to_string()],
                env,
                CapabilityPlan::for_this_process(),
                Arc::new(seccomp::compile().unwrap()),
            )
            .unwrap();
            let (parent_end, child_end) = Channel::pair().unwrap();
            let mut child = Init::spawn_with_flags(0, &plan, &child_end, None).unwrap();
            drop(child_end);
            drop(w);
            let setup = read_setup(&parent_end);
            assert!(
                setup.step_failed.is_none(),
                "via pidfd {via_pidfd}: {:?}",
                setup.step_failed
            );
            let mut out = String::new();
            io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
            assert_eq!(child.reap().unwrap(), WorkloadExit::Code(0));
            assert_eq!(out, "duet-ns-test\n", "via pidfd {via_pidfd}");
        }
        let _ = target.kill();
        let _ = target.wait();
    }
}
