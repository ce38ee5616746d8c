//! `duet-runc exec`: the process from `--process process.json` (what
//! containerd's shim passes), or the container's own `process` with the
//! command line's overrides (`exec ID CMD...`, as with runc by hand).

use super::state::{self, Dir};
use anyhow::{bail, Context, Result};
use duet_container::oci_exec::{self, ExecRequest, Execed};
use oci_spec::runtime::{Capability, Process};
use std::path::Path;
use std::str::FromStr;

/// The process `a` asks for.
fn process_of(a: &liboci_cli::Exec, spec: &oci_spec::runtime::Spec) -> Result<Process> {
    if let Some(p) = &a.process {
        let text = std::fs::read(p).with_context(|| format!("--process {}", p.display()))?;
        return serde_json::from_slice(&text)
            .with_context(|| format!("--process {}: not an OCI process", p.display()));
    }
    if a.command.is_empty() {
        bail!("exec: give --process FILE or a command");
    }
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(a.command.clone()));
    let mut env = p.env().clone().unwrap_or_default();
    env.extend(a.env.iter().map(|(k, v)| format!("{k}={v}")));
    p.set_env(Some(env));
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    p.set_terminal(Some(a.tty));
    if let Some((uid, gid)) = a.user {
        // As runc: `--user UID` keeps the process's gid, `UID:GID` sets both.
        let mut u = p.user().clone();
        u.set_uid(uid);
        if let Some(gid) = gid {
            u.set_gid(gid);
        }
        p.set_user(u);
    }
    if !a.additional_gids.is_empty() {
        let mut u = p.user().clone();
        u.set_additional_gids(Some(a.additional_gids.clone()));
        p.set_user(u);
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !a.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &a.cap {
            let c = Capability::from_str(name)
                .map_err(|_| anyhow::anyhow!("--cap {name}: unknown capability"))?;
            let add = |set: &Option<oci_spec::runtime::Capabilities>| {
                let mut set = set.clone().unwrap_or_default();
                set.insert(c);
                Some(set)
            };
            let (b, e, p) = (
                add(caps.bounding()),
                add(caps.effective()),
                add(caps.permitted()),
            );
            caps.set_bounding(b).set_effective(e).set_permitted(p);
        }
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}

/// `exec`: the exit code of the process, or 0 once it runs (`--detach`).
pub fn exec(root: &Path, a: &liboci_cli::Exec) -> Result<u8> {
    for (set, flag) in [
        (a.preserve_fds > 0, "--preserve-fds"),
        (a.cgroup.is_some(), "--cgroup"),
        (a.process_label.is_some(), "--process-label"),
        (a.apparmor.is_some(), "--apparmor"),
    ] {
        if set {
            bail!("exec {flag}: not supported by duet");
        }
    }
    let dir = Dir::of(root, &a.container_id)?;
    let r = dir.load(&a.container_id)?;
    match state::status(&dir, &r) {
        "created" | "running" => {}
        "paused" if a.ignore_paused => {}
        s => bail!("cannot exec in container \"{}\": it is {s}", a.container_id),
    }
    let spec = super::load_spec(&r.bundle)?;
    let process = process_of(a, &spec)?;
    if r.isolation == "vm" {
        return super::vm::exec(root, &r, &process, a);
    }
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Some(std::sync::Arc::new(super::compile_seccomp(s)?)),
        None => None,
    };
    let Some(start) = r.pid_start else {
        bail!("container \"{}\" is not running", a.container_id);
    };
    let done = oci_exec::exec(&ExecRequest {
        id: &a.container_id,
        init: (r.pid, start),
        cgroup: &r.cgroup,
        process: &process,
        seccomp,
        console_socket: a.console_socket.as_deref(),
        detach: a.detach,
        new_keyring: !r.no_new_keyring,
    })?;
    match done {
        Execed::Detached(pid) => {
            if let Some(p) = &a.pid_file {
                if let Err(e) = super::write_pid_file(p, pid) {
                    // SAFETY: kill(2) of the process just made, our child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return Err(e);
                }
            }
            Ok(0)
        }
        Execed::Exited(exit) => Ok(exit.shell_code().clamp(0, 255) as u8),
    }
}
