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
    /// Instance: id, name or a unique id prefix (see `duet ps`).
    pub instance: String,
    /// Command and arguments, looked up in the workload's PATH.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `duet exec`; returns the exit code duet should exit with (the command's).
pub fn exec(args: ExecArgs) -> Result<i32> {
    let root = state_root();
    let inst = InstanceDir::find(&root, &args.instance)?;
    let request = ExecRequest {
        command: args.command,
        env: args.env,
        workdir: args.workdir,
        tty: args.tty,
        interactive: args.interactive,
    };
    let exit = match inst.meta().isolation.as_str() {
        "container" => duet_container::exec::exec(&inst, &request)?,
        "vm" => bail!(
            "instance `{}` is a microVM: exec into a microVM needs the guest agent, which duet does not have yet",
            inst.id()
        ),
        other => bail!("instance `{}` has an unknown isolation `{other}`", inst.id()),
    };
    Ok(exit.shell_code())
}
