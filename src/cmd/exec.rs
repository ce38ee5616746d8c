//! `duet exec` and `duet kill`: a command in, or a signal to, a running
//! instance. The VM half (through the guest agent, `duet_vmm::agent`); the
//! container arm is written separately and merged by the lead.

use anyhow::{bail, Context, Result};
use duet_shared::instance::InstanceDir;
use duet_shared::paths::state_root;
use duet_shared::runtime::ExecRequest;

/// `duet exec [-i] [-t] [-e K=V] [-w DIR] INSTANCE COMMAND...`
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Keep stdin open and pass it to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal (a pty in the instance).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE), over the workload's.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the instance (default: the workload's).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Instance: id, name or a unique id prefix (see `duet ps`).
    pub instance: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs the command; returns the status duet exits with (the command's,
/// 128+N for signal N).
pub fn exec(args: ExecArgs) -> Result<i32> {
    for e in &args.env {
        if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            bail!("-e {e:?}: expected KEY=VALUE");
        }
    }
    let dir = InstanceDir::find(&state_root(), &args.instance)?;
    let req = ExecRequest {
        command: args.command,
        env: args.env,
        workdir: args.workdir,
        tty: args.tty,
        interactive: args.interactive,
    };
    match dir.meta().isolation.as_str() {
        "vm" => {
            let exit = duet_vmm::agent::exec(&dir, &req)
                .with_context(|| format!("duet exec into {}", dir.id()))?;
            Ok(exit.shell_code())
        }
        other => bail!(
            "duet exec into {other} instance {}: not in this build (the VM half only)",
            dir.id()
        ),
    }
}

/// `duet kill [-s SIGNAL] INSTANCE`
#[derive(clap::Args, Debug)]
pub struct KillArgs {
    /// Signal: a number or a name (TERM, SIGKILL, ...).
    #[arg(short = 's', long, default_value = "TERM")]
    pub signal: String,
    /// Instance: id, name or a unique id prefix (see `duet ps`).
    pub instance: String,
}

/// A signal number from a number or a name with or without `SIG`.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("signal {n} is out of range (1-64)");
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Ok(match name {
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
        _ => bail!("unknown signal {s:?} (use a number or e.g. TERM, KILL, INT, HUP, USR1)"),
    })
}

/// Sends the signal to the instance's workload.
pub fn kill(args: KillArgs) -> Result<()> {
    let signal = parse_signal(&args.signal)?;
    let dir = InstanceDir::find(&state_root(), &args.instance)?;
    match dir.meta().isolation.as_str() {
        "vm" => {
            duet_vmm::agent::kill(&dir, signal).with_context(|| format!("duet kill {}", dir.id()))
        }
        other => bail!(
            "duet kill of {other} instance {}: not in this build (the VM half only)",
            dir.id()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_or_name() {
        assert_eq!(parse_signal("15").unwrap(), 15);
        assert_eq!(parse_signal("TERM").unwrap(), 15);
        assert_eq!(parse_signal("sigkill").unwrap(), 9);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }
}
