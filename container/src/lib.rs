//! duet-container: the workload as a namespaced container on the host kernel.
//!
//! [`ContainerRuntime::run`] follows one recipe:
//! 1. build the child's [`plan`] in the parent: overlay options, mounts,
//!    devices, masked paths, argv/envp, capability masks, seccomp programs;
//! 2. clone3 the container's init into new mount, pid, uts, ipc and net
//!    namespaces (with a pidfd);
//! 3. while the child mounts its overlay root (inside its own mount
//!    namespace: the host never sees it, so a killed duet cannot leak a
//!    mount), the parent creates `duet/<id>` cgroups with the limits, moves
//!    the child in and tells it to go on ([`channel`]);
//! 4. the child enters a cgroup namespace, drops capabilities, sets
//!    no_new_privs, installs the seccomp filter, reports its timestamps and
//!    execs the workload ([`child`]);
//! 5. the parent waits on the pidfd (timeout, SIGINT/SIGTERM: [`signals`]),
//!    reaps the init and removes the cgroups.
//!
//! For the CLI: call [`Runtime::run`] and exit with
//! `exit.shell_code()`. Do not install SIGINT/SIGTERM handlers of your own:
//! the run installs one that kills the container and makes `run` return
//! `WorkloadExit::Signal(2 or 15)`, i.e. 130/143. A timeout kills the
//! workload and returns `Signal(9)` (137) with `counters["timed_out"] = 1`
//! and a one-line message on stderr; a command that cannot be executed
//! returns `Code(127)` (not found) or `Code(126)`, also with a message.
//! The run stamps `namespaces_created`, `cgroup_applied`, `rootfs_ready`,
//! `pivot_done`, `ready` and `exited`; `start`, `spec_loaded` and
//! `cleaned_up` are the caller's. With `options.explain` the cgroups and
//! every setup step are printed to stderr before the clone.
//!
//! [`exec::exec`] runs one more command inside a running container, with
//! the workload's namespaces, cgroups and restrictions (`duet exec`).

#![warn(missing_docs)]

pub mod capabilities;
pub mod cgroup;
pub mod channel;
pub mod child;
pub mod child_oci;
pub mod console;
pub mod exec;
pub mod oci;
pub mod oci_cgroup;
pub mod oci_exec;
pub mod oci_runtime;
pub mod oci_seccomp;
pub mod plan;
pub mod seccomp;
pub mod signals;
pub mod stdio;

use crate::capabilities::CapabilityPlan;
use crate::cgroup::{Cgroup, CgroupError, CgroupLayout, CgroupVersion, Controller, Hierarchy};
use crate::channel::{Channel, ChildMsg, ParentMsg};
use crate::plan::{ChildPlan, PlanError, RootfsSpec, Step};
use crate::seccomp::SeccompError;
use duet_shared::runtime::BackendError;
use duet_shared::{Instance, Launch, Phase, RunReport, Runtime, WorkloadExit};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors of a container run.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// Preparing the child's setup failed.
    #[error("preparing the container")]
    Plan(#[from] PlanError),
    /// Building the seccomp filter failed.
    #[error("preparing the container")]
    Seccomp(#[from] SeccompError),
    /// Creating, filling or removing the cgroups failed.
    #[error("container cgroups")]
    Cgroup(#[from] CgroupError),
    /// The parent/child socketpair could not be made.
    #[error("creating the container's sync socketpair")]
    Channel(#[source] io::Error),
    /// Making the pipes that stand in for duet's terminals.
    #[error("making the workload's stdin, stdout and stderr")]
    Stdio(#[source] io::Error),
    /// clone3 failed.
    #[error("cloning the container init into new mount/pid/uts/ipc/net namespaces")]
    Clone(#[source] io::Error),
    /// A setup step inside the container failed.
    #[error("container setup: {step}")]
    Step {
        /// What the step was doing, with its paths.
        step: String,
        /// errno from the child.
        #[source]
        source: io::Error,
    },
    /// The workdir does not exist in the container's root.
    #[error("workdir `{0}` (spec field `workdir`) does not exist in the container")]
    WorkdirMissing(String),
    /// The container's init died before it could exec the workload.
    #[error("container init died during setup ({0})")]
    InitDied(WorkloadExit),
    /// Waiting for the container failed.
    #[error("waiting for the container init (pid {pid})")]
    Wait {
        /// Host pid of the init.
        pid: i32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// duet was told to stop before the container started.
    #[error("interrupted by signal {0} before the container started")]
    Interrupted(i32),
}

/// The container backend. Cheap to create; holds no state between runs.
#[derive(Debug, Default, Clone)]
pub struct ContainerRuntime {}

impl ContainerRuntime {
    /// A runtime; all detection happens per run.
    pub fn new() -> ContainerRuntime {
        ContainerRuntime {}
    }
}

/// clone3's argument block up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// clone3 argument sizes: without and with the `cgroup` field (Linux 5.7).
const CLONE_ARGS_SIZE_VER0: usize = 64;
const CLONE_ARGS_SIZE_VER2: usize = 88;

/// clone3 flag: start the child in the cgroup given by `CloneArgs::cgroup`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Namespaces the container init starts in (cgroup comes later, from inside).
const NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET) as u64;

/// The container init, as the parent holds it: killed and reaped on drop
/// unless [`Init::wait`] reaped it.
struct Init {
    pid: i32,
    pidfd: OwnedFd,
    reaped: bool,
}

impl Init {
    /// Clones the init with `flags` (the new namespaces; `duet exec`:
    /// none); the child runs [`child::child_main`] and never returns here.
    /// With `cgroup_dir` (a v2 cgroup directory fd) the init starts inside
    /// that cgroup (CLONE_INTO_CGROUP), which spares the migration through
    /// cgroup.procs and its RCU grace period.
    fn spawn_with_flags(
        flags: u64,
        plan: &ChildPlan,
        child_end: &Channel,
        cgroup_dir: Option<&OwnedFd>,
    ) -> io::Result<Init> {
        let mut pidfd: libc::c_int = -1;
        let mut args = CloneArgs {
            flags: flags | libc::CLONE_PIDFD as u64,
            pidfd: &mut pidfd as *mut libc::c_int as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..Default::default()
        };
        let mut size = CLONE_ARGS_SIZE_VER0;
        if let Some(fd) = cgroup_dir {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = fd.as_raw_fd() as u64;
            size = CLONE_ARGS_SIZE_VER2;
        }
        // SAFETY: fork-style clone3 (no new stack): the child continues on a
        // copy of this stack and only runs child_main, which never returns,
        // never allocates and ends in execve or _exit.
        let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, size) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            child::child_main(plan, child_end);
        }
        // SAFETY: clone3 stored a new pidfd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        Ok(Init {
            pid: r as i32,
            pidfd,
            reaped: false,
        })
    }

    fn kill(&self) {
        // SAFETY: pidfd_send_signal on our own pidfd; cannot hit a recycled pid.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    /// Waits until the init has exited (or `deadline`); true if it has.
    fn wait_exit(&self, deadline: Option<Instant>) -> io::Result<bool> {
        loop {
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    left.as_millis().clamp(1, i32::MAX as u128) as i32
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one pollfd we own.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r > 0 {
                return Ok(true);
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }

    /// Reaps the init (blocking) and decodes its status.
    fn reap(&mut self) -> io::Result<WorkloadExit> {
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child, writing into a local.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) };
            if r == self.pid {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        self.reaped = true;
        Ok(if libc::WIFSIGNALED(status) {
            WorkloadExit::Signal(libc::WTERMSIG(status))
        } else {
            WorkloadExit::Code(libc::WEXITSTATUS(status))
        })
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = self.reap();
        }
    }
}

/// Opens a directory as an O_PATH fd (for CLONE_INTO_CGROUP).
fn open_dir(dir: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    Ok(f.into())
}

/// What the child said before exec (or before failing).
#[derive(Default)]
struct SetupOutcome {
    created: Option<(u64, u64)>,
    stamps: Option<(u64, u64, u64)>,
    step_failed: Option<(u32, i32)>,
    exec_failed: Option<(i32, bool)>,
    console: Option<OwnedFd>,
    timed_out: bool,
}

/// Waits until `fd` is readable or `deadline` passes; false on timeout.
fn readable_before(fd: i32, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: poll on one pollfd we own.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 || (r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted) {
            return true; // readable, or an error the following recv reports
        }
    }
}

/// Reads the child's messages until its end closes (exec or exit), or with
/// `until_created` until it says it is created. Past `deadline` the init
/// is killed, which closes its end.
fn read_child(
    chan: &Channel,
    init: &Init,
    mut deadline: Option<Instant>,
    until_created: bool,
) -> SetupOutcome {
    let mut out = SetupOutcome::default();
    loop {
        if let Some(d) = deadline {
            if !readable_before(chan.raw_fd(), d) {
                init.kill();
                out.timed_out = true;
                deadline = None;
                continue;
            }
        }
        // Errors reading count as end-of-file: the init's status tells the rest.
        let Ok(Some((msg, fd))) = chan.recv_child_with_fd() else {
            return out;
        };
        match msg {
            ChildMsg::Console => out.console = fd,
            ChildMsg::Created {
                rootfs_ready,
                pivot_done,
            } => {
                out.created = Some((rootfs_ready, pivot_done));
                if until_created {
                    return out;
                }
            }
            ChildMsg::Stamps {
                rootfs_ready,
                pivot_done,
                ready,
            } => out.stamps = Some((rootfs_ready, pivot_done, ready)),
            ChildMsg::StepFailed { step, errno } => out.step_failed = Some((step, errno)),
            ChildMsg::ExecFailed {
                errno,
                interpreter_missing,
            } => out.exec_failed = Some((errno, interpreter_missing)),
            // Only `duet exec` forks (see exec.rs); a run's init never does.
            ChildMsg::Forked { .. } => {}
        }
    }
}

/// The message and exit status for a failed execve, as a shell would give.
pub fn exec_failure_message(command: &str, errno: i32, interpreter_missing: bool) -> (String, i32) {
    if errno == libc::ENOENT && interpreter_missing {
        (
            format!("cannot run {command}: its interpreter (ELF loader or #! line) is missing in the image"),
            child::NOT_FOUND_STATUS,
        )
    } else if errno == libc::ENOENT {
        (
            format!("command not found: {command}"),
            child::NOT_FOUND_STATUS,
        )
    } else if errno == libc::EACCES {
        (
            format!("permission denied: {command}"),
            child::CANNOT_EXECUTE_STATUS,
        )
    } else {
        (
            format!(
                "cannot execute {command}: {}",
                io::Error::from_raw_os_error(errno)
            ),
            child::CANNOT_EXECUTE_STATUS,
        )
    }
}

impl ContainerRuntime {
    /// Runs one container; see the crate docs for the recipe.
    pub fn run_container(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
    ) -> Result<WorkloadExit, ContainerError> {
        let mut c = self.create_container(launch, report)?;
        c.run_to_end(report)
    }

    /// Runs one container with its cgroups in `hierarchies` (normally
    /// [`CgroupLayout::plan`] of the host's mounts; tests pass others).
    pub fn run_with_hierarchies(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
        hierarchies: &[Hierarchy],
    ) -> Result<WorkloadExit, ContainerError> {
        let guard = signals::RunGuard::enter();
        if let Some(sig) = signals::received() {
            return Err(ContainerError::Interrupted(sig));
        }
        let mut c = self.create_in_hierarchies(launch, report, hierarchies, guard)?;
        c.run_to_end(report)
    }

    /// Creates one container (step 1-4 of the recipe, up to the exec).
    pub fn create_container(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
    ) -> Result<Container, ContainerError> {
        let guard = signals::RunGuard::enter();
        if let Some(sig) = signals::received() {
            return Err(ContainerError::Interrupted(sig));
        }
        let layout = CgroupLayout::detect()?;
        let parent = cgroup::CgroupParent::detect(launch.options.cgroup_parent.as_deref());
        let hierarchies =
            layout.plan_under(&Controller::needed(&launch.spec.resources), &parent)?;
        self.create_in_hierarchies(launch, report, &hierarchies, guard)
    }

    fn create_in_hierarchies(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
        hierarchies: &[Hierarchy],
        mut guard: signals::RunGuard,
    ) -> Result<Container, ContainerError> {
        let spec = launch.spec;
        let explain = launch.options.explain;
        let workdir = spec.workdir.as_deref().unwrap_or("/");
        let host_network = spec.network == Some(duet_shared::spec::NetworkMode::Host);
        let namespaces = if host_network {
            NAMESPACES & !(libc::CLONE_NEWNET as u64)
        } else {
            NAMESPACES
        };
        let stdio =
            stdio::StdioSetup::for_run(launch.options.tty).map_err(ContainerError::Stdio)?;
        let plan = plan::build(
            &RootfsSpec {
                layers: &launch.layers,
                upper: launch.instance.upper(),
                work: launch.instance.work(),
                rootfs: launch.instance.rootfs(),
                hostname: &spec.name,
                workdir,
                command: &spec.command,
                env: &spec.env,
                stdio: match stdio.plan {
                    // Nothing to replace: the init keeps duet's fds 0-2.
                    plan::ChildStdio::Fds([0, 1, 2]) => None,
                    other => Some(other),
                },
                host_network,
                user: spec.user_ids(),
            },
            CapabilityPlan::for_this_process(),
            Arc::new(seccomp::compile()?),
        )?;
        if explain {
            for h in hierarchies {
                let names: Vec<&str> = h.controllers.iter().map(|c| c.name()).collect();
                eprintln!(
                    "duet: cgroup {:?} {}/{} for {}",
                    h.version,
                    h.duet_dir().display(),
                    launch.instance.id(),
                    names.join(",")
                );
            }
            for s in &plan.steps {
                eprintln!("duet: container init: {}", s.describe());
            }
        }

        let plan_console = plan.steps.iter().find_map(|s| match s {
            Step::Console(c) => Some(*c),
            _ => None,
        });
        let deadline = launch.options.timeout.map(|t| Instant::now() + t);
        let (parent_end, child_end) = Channel::pair().map_err(ContainerError::Channel)?;
        let id = launch.instance.id();
        let v2_only = hierarchies.len() == 1 && hierarchies[0].version == CgroupVersion::V2;
        let (init, cgroup) = if v2_only {
            // Pure v2: make the cgroup first and clone straight into it.
            let cgroup = Cgroup::create(hierarchies, id, &spec.resources)?;
            let dir = cgroup.dirs().next().expect("one hierarchy");
            let dir_fd = open_dir(dir).map_err(|source| CgroupError::Io {
                action: "open",
                path: dir.to_path_buf(),
                source,
            })?;
            let spawned = Init::spawn_with_flags(namespaces, &plan, &child_end, Some(&dir_fd));
            report.mark(Phase::NamespacesCreated);
            match spawned {
                Ok(init) => (init, cgroup),
                // Kernels before 5.7 know no CLONE_INTO_CGROUP: migrate instead.
                Err(e) if matches!(e.raw_os_error(), Some(libc::E2BIG | libc::EINVAL)) => {
                    let init = Init::spawn_with_flags(namespaces, &plan, &child_end, None)
                        .map_err(ContainerError::Clone)?;
                    if let Err(e) = cgroup.add_pid(init.pid) {
                        drop(init);
                        return Err(e.into());
                    }
                    (init, cgroup)
                }
                Err(e) => return Err(ContainerError::Clone(e)),
            }
        } else {
            let init = Init::spawn_with_flags(namespaces, &plan, &child_end, None)
                .map_err(ContainerError::Clone)?;
            report.mark(Phase::NamespacesCreated);
            // The child mounts its root meanwhile; the parent makes its cgroups.
            let cgroup = Cgroup::create(hierarchies, id, &spec.resources)
                .and_then(|cg| cg.add_pid(init.pid).map(|()| cg));
            match cgroup {
                Ok(cg) => (init, cg),
                Err(e) => {
                    drop(init); // kill + reap before removing what is left of the cgroups
                    return Err(e.into());
                }
            }
        };
        drop(child_end);
        drop(stdio.child_ends);
        guard.register(init.pidfd.as_raw_fd());
        report.mark(Phase::CgroupApplied);
        let mut c = Container {
            init,
            cgroup: Some(cgroup),
            chan: parent_end,
            guard,
            deadline,
            timeout: launch.options.timeout,
            name: spec.name.clone(),
            command: spec.command[0].clone(),
            console: None,
            plan_console,
            relay: None,
            pipe_copies: stdio.copies,
            pipes: None,
            exit: None,
            started: false,
        };
        // A child that already failed has closed its end: EPIPE, and its message waits for us.
        let _ = c.chan.send_raw(&ParentMsg::Go.encode());
        let setup = read_child(&c.chan, &c.init, deadline, true);
        c.console = setup.console;

        if setup.timed_out && setup.created.is_none() {
            c.finish_failed()?;
            c.exit = Some(timed_out(&c.name, c.timeout, report));
            return Ok(c);
        }
        if let Some((step, errno)) = setup.step_failed {
            c.finish_failed()?;
            if let Some(sig) = signals::received() {
                c.exit = Some(WorkloadExit::Signal(sig));
                return Ok(c);
            }
            let step = &plan.steps[step as usize];
            if let (Step::Workdir(_), libc::ENOENT | libc::ENOTDIR) = (step, errno) {
                return Err(ContainerError::WorkdirMissing(workdir.to_string()));
            }
            return Err(ContainerError::Step {
                step: step.describe(),
                source: io::Error::from_raw_os_error(errno),
            });
        }
        let Some((rootfs_ready, pivot_done)) = setup.created else {
            let status = c.finish_failed()?;
            if let Some(sig) = signals::received() {
                c.exit = Some(WorkloadExit::Signal(sig));
                return Ok(c);
            }
            return Err(ContainerError::InitDied(status));
        };
        report.mark_at(Phase::RootfsReady, rootfs_ready);
        report.mark_at(Phase::PivotDone, pivot_done);
        Ok(c)
    }
}

/// A created container, held by its owner: the init waits before its
/// execve until [`Container::start`]. Dropped without
/// [`Instance::delete`], the init is killed and reaped (its cgroups stay
/// for `duet gc`).
pub struct Container {
    init: Init,
    cgroup: Option<Cgroup>,
    chan: Channel,
    guard: signals::RunGuard,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    name: String,
    command: String,
    console: Option<OwnedFd>,
    plan_console: Option<console::ConsoleSpec>,
    relay: Option<console::Relay>,
    /// duet's ends of the pipes that stand in for its terminals, relayed from start.
    pipe_copies: Vec<(i32, OwnedFd, stdio::Direction)>,
    pipes: Option<stdio::PipeRelay>,
    /// Known before wait: the run ended during setup or exec.
    exit: Option<WorkloadExit>,
    started: bool,
}

impl Container {
    /// Reaps an init that ended during setup and removes its cgroups.
    fn finish_failed(&mut self) -> Result<WorkloadExit, ContainerError> {
        let status = self.reap();
        if let Some(cg) = self.cgroup.take() {
            cg.destroy()?;
        }
        status
    }

    fn reap(&mut self) -> Result<WorkloadExit, ContainerError> {
        let exit = self.init.reap().map_err(|source| ContainerError::Wait {
            pid: self.init.pid,
            source,
        })?;
        self.guard.unregister();
        Ok(exit)
    }

    /// Lets the init exec the workload; stamps `ready`. A failed execve
    /// prints a shell-like message and ends the run with 127 or 126.
    pub fn start_container(&mut self, report: &mut RunReport) -> Result<(), ContainerError> {
        if self.exit.is_some() || self.started {
            return Ok(());
        }
        self.started = true;
        // A child that already died has closed its end: its status tells.
        let _ = self.chan.send_raw(&ParentMsg::Start.encode());
        let setup = read_child(&self.chan, &self.init, self.deadline, false);
        if setup.timed_out && setup.exec_failed.is_none() && setup.stamps.is_none() {
            let _ = self.reap();
            self.exit = Some(timed_out(&self.name, self.timeout, report));
            return Ok(());
        }
        if let Some((errno, interp)) = setup.exec_failed {
            self.reap()?;
            let (msg, code) = exec_failure_message(&self.command, errno, interp);
            eprintln!("duet: {msg}");
            let exit = WorkloadExit::Code(code);
            report.exit = Some(exit);
            self.exit = Some(exit);
            return Ok(());
        }
        let Some((_, _, ready)) = setup.stamps else {
            let status = self.reap()?;
            self.exit = Some(match signals::received() {
                Some(sig) => WorkloadExit::Signal(sig),
                None => return Err(ContainerError::InitDied(status)),
            });
            return Ok(());
        };
        report.mark_at(Phase::Ready, ready);
        self.relay = match (self.console.take(), self.plan_console) {
            (Some(master), Some(spec)) => match console::Relay::start(master, spec) {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("duet: cannot relay the workload's terminal: {e}");
                    None
                }
            },
            _ => None,
        };
        self.pipes = match stdio::PipeRelay::start(std::mem::take(&mut self.pipe_copies)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("duet: cannot relay the workload's stdio: {e}");
                None
            }
        };
        Ok(())
    }

    /// Waits for the workload (killing it at the run's timeout) and reaps it.
    pub fn wait_container(
        &mut self,
        report: &mut RunReport,
    ) -> Result<WorkloadExit, ContainerError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let pid = self.init.pid;
        let killed = self
            .init
            .wait_exit(self.deadline)
            .and_then(|exited| {
                if !exited {
                    self.init.kill();
                    self.init.wait_exit(None)?;
                }
                Ok(!exited)
            })
            .map_err(|source| ContainerError::Wait { pid, source })?;
        let mut exit = self.reap()?;
        report.mark(Phase::Exited);
        if let Some(relay) = self.relay.take() {
            // The pty's last output is copied before duet prints anything more.
            relay.finish(Duration::from_millis(500));
        }
        if let Some(pipes) = self.pipes.take() {
            pipes.finish(Duration::from_millis(500));
        }
        if let Some(sig) = signals::received() {
            report
                .counters
                .insert("stopped_by_signal".into(), sig as u64);
            exit = WorkloadExit::Signal(sig);
        } else if killed {
            exit = timed_out(&self.name, self.timeout, report);
        }
        report.exit = Some(exit);
        self.exit = Some(exit);
        Ok(exit)
    }

    /// Kills what is left and removes the cgroups.
    pub fn delete_container(mut self) -> Result<(), ContainerError> {
        if !self.init.reaped {
            self.init.kill();
            let _ = self.reap();
        }
        if let Some(relay) = self.relay.take() {
            relay.finish(Duration::from_millis(100));
        }
        if let Some(pipes) = self.pipes.take() {
            pipes.finish(Duration::from_millis(100));
        }
        match self.cgroup.take() {
            Some(cg) => Ok(cg.destroy()?),
            None => Ok(()),
        }
    }

    /// start + wait + delete, for the one-process `duet run`.
    fn run_to_end(&mut self, report: &mut RunReport) -> Result<WorkloadExit, ContainerError> {
        let ran = self
            .start_container(report)
            .and_then(|()| self.wait_container(report));
        if !self.init.reaped {
            self.init.kill();
            let _ = self.reap();
        }
        let destroyed = match self.cgroup.take() {
            Some(cg) => cg.destroy().map_err(ContainerError::from),
            None => Ok(()),
        };
        let exit = ran?;
        destroyed?;
        Ok(exit)
    }
}

impl Instance for Container {
    fn start(&mut self, report: &mut RunReport) -> Result<(), BackendError> {
        Ok(self.start_container(report)?)
    }

    fn state(&self) -> duet_shared::instance::Status {
        use duet_shared::instance::Status;
        if self.exit.is_some() || self.init.reaped {
            Status::Exited
        } else if self.started {
            Status::Running
        } else {
            Status::Created
        }
    }

    fn pid(&self) -> i32 {
        self.init.pid
    }

    fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.init.pidfd.as_fd()
    }

    fn kill(&self, signal: i32) -> Result<(), BackendError> {
        if self.init.reaped {
            return Ok(());
        }
        // SAFETY: pidfd_send_signal on our own pidfd; cannot hit a recycled pid.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.init.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(Box::new(e));
            }
        }
        Ok(())
    }

    fn wait(&mut self, report: &mut RunReport) -> Result<WorkloadExit, BackendError> {
        Ok(self.wait_container(report)?)
    }

    fn delete(self: Box<Self>) -> Result<(), BackendError> {
        Ok(self.delete_container()?)
    }
}

/// Records and reports a run killed by `options.timeout`: SIGKILL, exit 137.
fn timed_out(name: &str, timeout: Option<Duration>, report: &mut RunReport) -> WorkloadExit {
    report.counters.insert("timed_out".into(), 1);
    eprintln!(
        "duet: {name}: killed after the {} timeout",
        fmt_duration(timeout.unwrap_or_default())
    );
    let exit = WorkloadExit::Signal(libc::SIGKILL);
    report.exit = Some(exit);
    exit
}

fn fmt_duration(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

impl Runtime for ContainerRuntime {
    fn isolation(&self) -> &'static str {
        "container"
    }

    fn create(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
    ) -> Result<Box<dyn Instance>, BackendError> {
        Ok(Box::new(self.create_container(launch, report)?))
    }

    fn run(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
    ) -> Result<WorkloadExit, BackendError> {
        Ok(self.run_container(launch, report)?)
    }

    fn exec(
        &self,
        dir: &duet_shared::InstanceDir,
        request: &duet_shared::ExecRequest,
    ) -> Result<WorkloadExit, BackendError> {
        Ok(exec::exec(dir, request)?)
    }

    fn kill_recorded(
        &self,
        dir: &duet_shared::InstanceDir,
        signal: i32,
    ) -> Result<(), BackendError> {
        Ok(exec::kill(dir, signal)?)
    }

    fn gc_instance(&self, id: &str) -> Result<(), BackendError> {
        let layout = CgroupLayout::detect()?;
        cgroup::gc_instance(&layout, id)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failures_read_like_a_shell() {
        assert_eq!(
            exec_failure_message("nope", libc::ENOENT, false),
            ("command not found: nope".to_string(), 127)
        );
        assert_eq!(exec_failure_message("/x", libc::EACCES, false).1, 126);
        assert!(exec_failure_message("/x", libc::ENOENT, true)
            .0
            .contains("interpreter"));
    }
}
