//! `exec` of an OCI runtime: one more process in a running container, as
//! `runc exec` runs it (containerd's shim uses it for `docker exec` and
//! CRI's ExecSync).
//!
//! The process comes from `--process process.json` (or the container's own
//! `process` with the command line's overrides, built by the CLI). It is
//! made the way duet's own `exec` makes one ([`crate::exec`]): a helper
//! forked here is written into the container's cgroups, joins the init's
//! namespaces through its pidfd and clones, with CLONE_PARENT, the process
//! itself, which is then in the container's pid namespace and this
//! process's child. That process goes through the same steps as the
//! container's init from its own session on ([`oci::process_steps`]): the
//! terminal (a pty from the container's devpts, sent to
//! `--console-socket`), rlimits, every other fd closed, capabilities,
//! seccomp from the container's config, user, cwd, no_new_privs.
//!
//! Stdio is this process's own fds 0-2 (the shim's pipes), or the pty.
//! With `detach` this returns as soon as the process has exec'd: it is left
//! to the caller's subreaper (the shim), which reaps it by the pid in
//! `--pid-file`; without it, this waits and returns the exit.

use crate::channel::{Channel, ParentMsg};
use crate::exec::{read_setup, Target};
use crate::oci::{self, OciError};
use crate::oci_cgroup::OciCgroup;
use crate::oci_runtime::OciRunError;
use crate::plan::{self, Step, EXEC_NAMESPACES};
use crate::seccomp::SeccompPrograms;
use crate::{signals, Init};
use duet_shared::WorkloadExit;
use oci_spec::runtime::Process;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

/// What `exec` is asked to do.
pub struct ExecRequest<'a> {
    /// Container id.
    pub id: &'a str,
    /// The init's pid and start time, as `create` recorded them.
    pub init: (i32, u64),
    /// The container's cgroups.
    pub cgroup: &'a OciCgroup,
    /// The process to run.
    pub process: &'a Process,
    /// The container's `linux.seccomp`, compiled, or none.
    pub seccomp: Option<Arc<SeccompPrograms>>,
    /// `--console-socket` (required when `process.terminal`).
    pub console_socket: Option<&'a Path>,
    /// `--detach`.
    pub detach: bool,
    /// Join a new session keyring (unless the container was made with `--no-new-keyring`).
    pub new_keyring: bool,
}

/// How `exec` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Execed {
    /// The process runs (pid in the caller's pid namespace).
    Detached(i32),
    /// The process ended (without `detach`).
    Exited(WorkloadExit),
}

/// Runs `req.process` in the container.
pub fn exec(req: &ExecRequest<'_>) -> Result<Execed, OciRunError> {
    let mut guard = signals::RunGuard::enter();
    let target = Target::open_pid(req.id, req.init.0, req.init.1)
        .map_err(|e| OciRunError::NotRunning(e.to_string()))?;
    let console = crate::oci_runtime::console_for(Some(req.process), req.console_socket)?;
    let last_cap = oci::last_cap();
    let has_seccomp = req.seccomp.is_some();
    let keyring = req
        .new_keyring
        .then(|| crate::oci_runtime::keyring_name(req.id));
    let tail = oci::process_steps(
        req.process,
        console,
        keyring.as_deref(),
        has_seccomp,
        last_cap,
    )?;
    let mut steps = vec![
        Step::WaitForParent,
        Step::JoinNamespaces {
            pidfd: target.pidfd.as_raw_fd(),
            flags: EXEC_NAMESPACES,
            ns_files: target
                .ns_files
                .iter()
                .map(|(fd, flag)| (fd.as_raw_fd(), *flag))
                .collect(),
        },
        Step::ForkIntoPidNamespace,
        Step::NotDumpable,
    ];
    steps.extend(tail.steps);
    if has_seccomp && tail.nnp {
        steps.push(Step::Seccomp);
    }
    let args = req.process.args().clone().unwrap_or_default();
    let mut plan = plan::assemble(
        steps,
        &args,
        tail.env,
        tail.caps,
        req.seccomp
            .clone()
            .unwrap_or_else(|| Arc::new(SeccompPrograms::none())),
    )
    .map_err(OciError::from)?;
    plan.outlives_parent = req.detach;

    let (parent_end, child_end) = Channel::pair().map_err(|source| OciRunError::Io {
        what: "creating the setup socketpair".into(),
        source,
    })?;
    let helper =
        Init::spawn_with_flags(0, &plan, &child_end, None).map_err(|source| OciRunError::Io {
            what: "forking the exec helper".into(),
            source,
        })?;
    drop(child_end);
    drop(tail.fds);
    guard.register(helper.pidfd.as_raw_fd());
    // Dropped on error: the helper is killed and reaped.
    req.cgroup.add_pid(helper.pid)?;
    let _ = parent_end.send_raw(&ParentMsg::Go.encode());
    let setup = read_setup(&parent_end);
    let mut helper = helper;
    let _ = helper.reap();
    let mut command_guard = signals::RunGuard::enter();
    drop(guard);
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
        let step = &plan.steps[step as usize];
        let arg0 = || String::from_utf8_lossy(plan.argv[0].as_bytes()).into_owned();
        return Err(match (step, errno) {
            (Step::Oci(crate::child_oci::OciStep::CheckExecutable), libc::EACCES) => {
                OciRunError::NotExecutable(arg0())
            }
            (Step::Oci(crate::child_oci::OciStep::CheckExecutable), _) => {
                OciRunError::NotFound(arg0())
            }
            (Step::JoinNamespaces { .. }, libc::ESRCH)
            | (Step::ForkIntoPidNamespace, libc::ENOMEM) => {
                OciRunError::NotRunning(format!("container \"{}\" is not running", req.id))
            }
            _ => OciRunError::Step {
                step: step.describe(),
                source: io::Error::from_raw_os_error(errno),
            },
        });
    }
    let Some(mut command) = command else {
        return Err(OciRunError::InitDied(
            "the exec helper died during setup".into(),
        ));
    };
    if !setup.ready || setup.exec_failed.is_some() {
        let exit = command
            .reap()
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|e| e.to_string());
        return Err(OciRunError::InitDied(format!(
            "the exec'd process ended before it ran ({exit})"
        )));
    }
    if req.detach {
        // Not ours to kill on drop: the shim reaps it.
        command.reaped = true;
        command_guard.unregister();
        return Ok(Execed::Detached(command.pid));
    }
    let waited = command.wait_exit(None).and_then(|_| command.reap());
    command_guard.unregister();
    let exit = waited.map_err(|source| OciRunError::Io {
        what: format!("waiting for pid {}", command.pid),
        source,
    })?;
    Ok(Execed::Exited(match signals::received() {
        Some(sig) => WorkloadExit::Signal(sig),
        None => exit,
    }))
}
