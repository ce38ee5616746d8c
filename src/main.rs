//! duet: run one workload as a container or as a microVM, and measure the difference.
//!
//! This file is the command line only; each subcommand lives in `cmd/`.

mod backends;
mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "duet",
    version,
    about = "Run the same workload as a container or a microVM, and measure the difference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workload: `duet run busybox -- echo hi`, or `duet run --spec w.toml`.
    Run(cmd::run::RunArgs),
    /// Manage images: import, ls, rm.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Run a command in a running instance: `duet exec [-i] [-t] v1 sh`.
    Exec(cmd::exec::ExecArgs),
    /// Send a signal to a running instance's workload (default TERM).
    Kill(cmd::exec::KillArgs),
    /// List instances kept with `--keep` (and running ones).
    Ps,
    /// Remove kept instances.
    Rm {
        /// Instances: id, name or a unique id prefix (see `duet ps`).
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Turn a kept instance's writable layer into a new image on top of its image.
    Commit {
        /// Instance: id, name or a unique id prefix (see `duet ps`).
        instance: String,
        /// Name of the new image.
        image: String,
    },
    /// Remove what crashed or killed duet runs left behind (cgroups, processes, instance directories).
    Gc,
    /// Check whether this host can run microVMs at hardware speed, and what to do if not.
    Doctor,
    /// Measure containers against microVMs (and runc/crun): startup, memory, density, isolation.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Print, as JSON, what isolation looks like from here (kernel, namespaces, attempts).
    Probe(cmd::probe::ProbeArgs),
    /// Run one small workload both ways and show the difference side by side.
    Demo(cmd::demo::DemoArgs),
}

/// Exit status for usage errors and for failures of duet itself (not of
/// the workload), as the README promises; the same as docker's and runc's.
const DUET_FAILED: u8 = 125;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(DUET_FAILED),
            };
        }
    };
    let result = match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Image(c) => cmd::image::image(c).map(|()| 0),
        Command::Exec(a) => cmd::exec::exec(a),
        Command::Kill(a) => cmd::exec::kill(a).map(|()| 0),
        Command::Ps => cmd::instances::ps().map(|()| 0),
        Command::Rm { ids } => cmd::instances::rm(&ids).map(|()| 0),
        Command::Gc => cmd::instances::gc().map(|()| 0),
        Command::Commit { instance, image } => {
            cmd::instances::commit(&instance, &image).map(|()| 0)
        }
        Command::Doctor => {
            let report = duet_vmm::doctor::diagnose();
            println!("{report}");
            println!("{}", cmd::bench::doctor_testbed_line());
            Ok(0)
        }
        Command::Bench(c) => cmd::bench::bench(c).map(|()| 0),
        Command::Probe(a) => cmd::probe::probe(a).map(|()| 0),
        Command::Demo(a) => cmd::demo::demo(a).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("duet: {}", cmd::error_chain(&e));
            ExitCode::from(DUET_FAILED)
        }
    }
}
