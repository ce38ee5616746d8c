//! `duet probe`: what isolation looks like from here, as JSON.
//!
//! The same code as the static `duet-probe` binary that the built-in busybox
//! image carries as `/bin/duet-probe` (see `duet_shared::image::find_probe`):
//! `duet probe` on the host and `/bin/duet-probe` inside a container or VM
//! print the same schema, which `duet bench isolation` compares.

use anyhow::{Context, Result};
use clap::Args;

/// Arguments of `duet probe`.
#[derive(Args)]
pub struct ProbeArgs {
    /// Probe options, passed through: `--canary PATH --token T`,
    /// `--host-pid N --host-pid-start TICKS`, `--compact`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs the probe in this process and prints its report.
pub fn probe(a: ProbeArgs) -> Result<()> {
    let cl = duet_probe::parse_command_line(&a.args, |k| std::env::var(k).ok())?;
    let report = duet_probe::collect(&cl.input);
    if cl.compact {
        println!(
            "{}",
            serde_json::to_string(&report).context("serializing the probe report")?
        );
    } else {
        println!("{}", report.to_json());
    }
    Ok(())
}
