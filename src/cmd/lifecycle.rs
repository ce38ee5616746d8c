//! `duet stop`, `kill`, `wait`, `logs`, `inspect`: detached instances
//! after `duet run -d`, through their monitor (src/monitor/).

use crate::monitor::{control, log, REPORT_FILE};
use anyhow::{bail, Context, Result};
use control::{Request, Response};
use duet_shared::instance::Status;
use duet_shared::paths::state_root;
use duet_shared::{InstanceDir, WorkloadExit};
use std::time::Duration;

/// The instance `what` names (name, id or unique id prefix).
pub fn find(what: &str) -> Result<InstanceDir> {
    Ok(InstanceDir::find(&state_root(), what)?)
}

/// Sends `req` to the monitor of `dir`; `None` if none answers.
fn ask(dir: &InstanceDir, req: &Request) -> Result<Option<Option<WorkloadExit>>> {
    match control::request(dir, req)? {
        None => Ok(None),
        Some(Response::Ok { exit }) => Ok(Some(exit)),
        Some(Response::Error { message }) => bail!("instance `{}`: {message}", dir.id()),
    }
}

/// The exit recorded in `dir` once it has ended for good.
fn recorded_exit(dir: &mut InstanceDir) -> Result<Option<WorkloadExit>> {
    dir.reload()?;
    let m = dir.meta();
    Ok(match m.state.status {
        Status::Exited => m.state.exit,
        _ if m.kept => m.exit_code.map(WorkloadExit::Code),
        _ => None,
    })
}

/// Refuses instances no monitor owns (foreground runs have no socket).
fn lost(dir: &InstanceDir) -> anyhow::Error {
    if !dir.meta().detached && dir.owner_alive() {
        anyhow::anyhow!(
            "instance `{}` runs in the foreground (duet pid {}); stop it there (Ctrl-C)",
            dir.id(),
            dir.meta().owner_pid
        )
    } else {
        anyhow::anyhow!(
            "instance `{}` is not running and its monitor is gone (`duet gc` removes what is left)",
            dir.id()
        )
    }
}

/// `duet stop [-t SECS] NAME...`.
pub fn stop(names: &[String], grace: Duration) -> Result<()> {
    for what in names {
        let mut dir = find(what)?;
        if recorded_exit(&mut dir)?.is_none() {
            let req = Request::Stop {
                grace_ms: grace.as_millis() as u64,
            };
            if ask(&dir, &req)?.is_none() && recorded_exit(&mut dir)?.is_none() {
                return Err(lost(&dir));
            }
        }
        println!("{}", dir.meta().name);
    }
    Ok(())
}

/// `duet kill [-s SIG] NAME...`.
pub fn kill(names: &[String], signal: i32) -> Result<()> {
    for what in names {
        let mut dir = find(what)?;
        if recorded_exit(&mut dir)?.is_some() {
            bail!("instance `{}` is not running", dir.id());
        }
        if ask(&dir, &Request::Kill { signal })?.is_none() {
            // No monitor: a foreground `duet run`'s workload is signalled
            // directly (through the backend: a pidfd, or the guest agent).
            if dir.meta().detached || !dir.owner_alive() {
                return Err(lost(&dir));
            }
            let isolation = match dir.meta().isolation.as_str() {
                "vm" => duet_shared::Isolation::Vm,
                _ => duet_shared::Isolation::Container,
            };
            crate::backends::for_isolation(isolation)
                .kill_recorded(&dir, signal)
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        println!("{}", dir.meta().name);
    }
    Ok(())
}

/// `duet wait NAME...`: prints each exit status (as `docker wait`, duet
/// itself then exits 0).
pub fn wait(names: &[String]) -> Result<()> {
    for what in names {
        let mut dir = find(what)?;
        let exit = match recorded_exit(&mut dir)? {
            Some(e) => e,
            None => match ask(&dir, &Request::Wait)? {
                Some(Some(e)) => e,
                _ => match recorded_exit(&mut dir)? {
                    Some(e) => e,
                    None => return Err(lost(&dir)),
                },
            },
        };
        println!("{}", exit.shell_code());
    }
    Ok(())
}

/// Parses a signal: a number, `TERM` or `SIGTERM`.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("`{s}`: signal numbers go from 1 to 64"))
        };
    }
    let name = s.trim_start_matches("SIG").to_ascii_uppercase();
    let n = match name.as_str() {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        _ => {
            return Err(format!(
                "`{s}`: unknown signal (use a number or e.g. TERM, KILL, HUP)"
            ))
        }
    };
    Ok(n)
}

/// The name of signal `n` (`SIGTERM`), or `signal N`.
pub fn signal_name(n: i32) -> String {
    let name = match n {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {n}"),
    };
    name.to_string()
}

/// `duet logs [-f] [--tail N] NAME`.
pub fn logs(what: &str, follow: bool, tail: Option<usize>) -> Result<()> {
    use std::io::Write;
    let mut dir = find(what)?;
    let (all, mut offset) = log::read_all(dir.path())
        .with_context(|| format!("reading the log of instance `{}`", dir.id()))?;
    let shown = match tail {
        Some(n) => log::tail(&all, n),
        None => &all[..],
    };
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut print = |recs: &[log::Record]| -> Result<()> {
        for r in recs {
            match r.s {
                log::Stream::Out => out.write_all(r.l.as_bytes())?,
                log::Stream::Err => err.write_all(r.l.as_bytes())?,
            }
        }
        out.flush()?;
        Ok(())
    };
    print(shown)?;
    if !follow {
        return Ok(());
    }
    let path = dir.path().join(log::LOG_FILE);
    loop {
        let ended = recorded_exit(&mut dir)?.is_some() || !dir.owner_alive();
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0; // rotated: the new file starts over
        }
        let (recs, next) = log::read_from(&path, offset)?;
        offset = next;
        print(&recs)?;
        if ended && recs.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `duet inspect NAME...`: JSON of spec, state, pids, timeline and paths.
pub fn inspect(names: &[String]) -> Result<()> {
    let mut out = Vec::new();
    for what in names {
        let dir = find(what)?;
        let m = dir.meta();
        let spec = dir.load_spec().ok();
        let report: Option<serde_json::Value> = std::fs::read(dir.path().join(REPORT_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        out.push(serde_json::json!({
            "id": m.id,
            "name": m.name,
            "image": m.image,
            "isolation": m.isolation,
            "command": m.command,
            "created_ms": m.created_ms,
            "detached": m.detached,
            "status": status_text(&dir),
            "state": m.state,
            "owner": {"pid": m.owner_pid, "alive": dir.owner_alive()},
            "spec": spec,
            "timeline": report,
            "paths": {
                "dir": dir.path(),
                "upper": dir.upper(),
                "log": dir.path().join(log::LOG_FILE),
                "socket": control::socket_path(&dir),
            },
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// How `duet ps` describes an instance's status.
pub fn status_text(dir: &InstanceDir) -> String {
    let m = dir.meta();
    let exit_text = |e: Option<WorkloadExit>| match e {
        Some(WorkloadExit::Code(c)) => format!("exited {c}"),
        Some(WorkloadExit::Signal(s)) => format!("killed by {}", signal_name(s)),
        None => "exited".to_string(),
    };
    if !m.detached {
        return if m.kept {
            format!(
                "kept, exited {}",
                m.exit_code.map(|c| c.to_string()).unwrap_or("?".into())
            )
        } else if dir.owner_alive() {
            format!("running (duet pid {})", m.owner_pid)
        } else {
            "stale (duet gc removes it)".to_string()
        };
    }
    let alive = dir.owner_alive();
    match m.state.status {
        Status::Exited => exit_text(m.state.exit),
        _ if !alive => "monitor lost (duet gc removes it)".to_string(),
        Status::Created => "created".to_string(),
        Status::Running if m.state.restarts > 0 => {
            format!("running (restarts: {})", m.state.restarts)
        }
        Status::Running => "running".to_string(),
        Status::Restarting => format!(
            "restarting ({}, {})",
            m.state.restarts,
            exit_text(m.state.exit)
        ),
    }
}

/// Whether `duet ps` without `-a` lists it: it runs (or its monitor is lost).
pub fn is_live(dir: &InstanceDir) -> bool {
    let m = dir.meta();
    if m.detached {
        m.state.status != Status::Exited
    } else {
        !m.kept && dir.owner_alive()
    }
}
