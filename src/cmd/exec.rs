//! `duet exec`: run one more command inside a running instance.

use anyhow::{bail, Result};
use clap::Args;
use duet_shared::paths::state_root;
use duet_shared::runtime::ExecRequest;
use duet_shared::InstanceDir;

/// Arguments of `duet exec` (Docker's shape).
#[derive(Args)]
pub struct ExecArgs {
    /// Keep stdin open and pass it to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal of its own (a pty inside the instance).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Environment KEY=VALUE, added to (and overriding) the workload's.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside; default: the workload's.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The instance (id, name or unique id prefix), then the command and its arguments.
    ///
    /// The instance as `duet ps` shows it; the command is looked up in the
    /// workload's PATH. Everything after the instance belongs to the
    /// command, as in Docker.
    #[arg(
        required = true,
        num_args = 2..,
        trailing_var_arg = true,
        value_names = ["INSTANCE", "COMMAND"],
    )]
    target: Vec<String>,
}

impl ExecArgs {
    /// The instance named.
    pub fn instance(&self) -> &str {
        &self.target[0]
    }
    /// The command and its arguments (without a `--` right after the instance).
    pub fn command(&self) -> &[String] {
        match &self.target[1..] {
            [dashes, rest @ ..] if dashes == "--" && !rest.is_empty() => rest,
            command => command,
        }
    }
}

/// `duet exec`; returns the exit code duet should exit with (the command's).
pub fn exec(args: ExecArgs) -> Result<i32> {
    let root = state_root();
    let inst = InstanceDir::find(&root, args.instance())?;
    let request = ExecRequest {
        command: args.command().to_vec(),
        env: args.env,
        workdir: args.workdir,
        tty: args.tty,
        interactive: args.interactive,
        user: None,
    };
    let isolation = match inst.meta().isolation.as_str() {
        "container" => duet_shared::Isolation::Container,
        "vm" => duet_shared::Isolation::Vm,
        other => bail!(
            "instance `{}` has an unknown isolation `{other}`",
            inst.id()
        ),
    };
    let exit = crate::backends::for_isolation(isolation)
        .exec(&inst, &request)
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(exit.shell_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        exec: ExecArgs,
    }

    fn parse(args: &[&str]) -> ExecArgs {
        Cli::try_parse_from([&["duet-exec"][..], args].concat())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .exec
    }

    #[test]
    fn docker_shaped_arguments() {
        let a = parse(&[
            "-it", "-e", "A=1", "--env", "B=2", "-w", "/x", "web", "ls", "-l", "--color",
        ]);
        assert!(a.interactive && a.tty);
        assert_eq!(a.env, ["A=1", "B=2"]);
        assert_eq!(a.workdir.as_deref(), Some("/x"));
        assert_eq!(a.instance(), "web");
        assert_eq!(a.command(), ["ls", "-l", "--color"]);
        // Everything after the instance belongs to the command, as in Docker.
        let a = parse(&["web", "-i", "cat"]);
        assert!(!a.interactive);
        assert_eq!(a.command(), ["-i", "cat"]);
        let a = parse(&["web", "--", "sh", "-c", "exit 3"]);
        assert_eq!(a.command(), ["sh", "-c", "exit 3"]);
        assert!(
            Cli::try_parse_from(["duet-exec", "web"]).is_err(),
            "a command is required"
        );
    }
}
