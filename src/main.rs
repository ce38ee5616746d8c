//! duet: run one workload as a container or as a microVM, and measure the difference.
//!
//! This file is the command line only; each subcommand lives in `cmd/`.

mod backends;
mod cmd;
mod monitor;
mod network;
mod oci;

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
    Run(Box<cmd::run::RunArgs>),
    /// Manage images: import, ls, rm.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Pull an image from a registry: `duet pull debian:12`, `duet pull --insecure 127.0.0.1:5000/app`.
    Pull(cmd::pull::PullArgs),
    /// Push an image of the store to a registry: `duet push myapp 127.0.0.1:5000/team/myapp:1`.
    Push(cmd::pull::PushArgs),
    /// Store registry credentials (checked first) where Docker keeps them: `duet login HOST -u USER --password-stdin`.
    Login(cmd::pull::LoginArgs),
    /// Run a command inside a running instance: `duet exec [-i] [-t] NAME CMD [ARG...]`.
    Exec(cmd::exec::ExecArgs),
    /// List running instances (-a: also ended, kept and stale ones).
    Ps {
        /// All instances, not only running ones.
        #[arg(short, long)]
        all: bool,
    },
    /// Remove instances that ended (-f: running ones too, killed first).
    Rm {
        /// Kill a running instance first (SIGKILL).
        #[arg(short, long)]
        force: bool,
        /// Instances: id, name or a unique id prefix (see `duet ps`).
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Stop detached instances: SIGTERM, then SIGKILL after the grace period.
    Stop {
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        /// Instances: name, id or a unique id prefix.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Send a signal to detached instances' workloads.
    Kill {
        /// Signal: a number or a name (TERM, SIGKILL, HUP, ...).
        #[arg(short = 's', long, default_value = "KILL", value_parser = cmd::lifecycle::parse_signal)]
        signal: i32,
        /// Instances: name, id or a unique id prefix.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Wait until detached instances end; print their exit status.
    Wait {
        /// Instances: name, id or a unique id prefix.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Show a detached instance's output.
    Logs {
        /// Keep following the output until the instance ends.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Instance: name, id or a unique id prefix.
        instance: String,
    },
    /// Print instances' spec, state, pids, timeline and paths as JSON.
    Inspect {
        /// Instances: name, id or a unique id prefix.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// The per-instance monitor of `run -d` (started by duet itself).
    #[command(name = "__monitor", hide = true)]
    Monitor {
        /// Instance id.
        id: String,
    },
    /// Turn a kept instance's writable layer into a new image on top of its image.
    Commit {
        /// Instance: id, name or a unique id prefix (see `duet ps`).
        instance: String,
        /// Name of the new image.
        image: String,
    },
    /// Pause a running microVM, write its snapshot to FILE, let it go on
    /// (start a copy with `duet run --from-snapshot FILE`).
    Snapshot {
        /// Instance: name, id or a unique id prefix.
        instance: String,
        /// The snapshot file to write (must not exist).
        file: std::path::PathBuf,
    },
    /// Remove what crashed or killed duet runs left behind (cgroups, processes, instance directories).
    Gc,
    /// duet's bridge network: `duet network ls`, `duet network rm`.
    #[command(subcommand)]
    Network(cmd::network::NetworkCommand),
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

/// The command line, or the exit code after clap printed help, the
/// version (0) or a usage error (`usage_error`).
fn parse_args<C: Parser>(usage_error: u8) -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        let _ = e.print();
        match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
            _ => ExitCode::from(usage_error),
        }
    })
}

fn main() -> ExitCode {
    if oci::invoked_as_runtime() {
        return oci::main();
    }
    let cli: Cli = match parse_args(DUET_FAILED) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Run(args) => cmd::run::run(*args),
        Command::Exec(args) => cmd::exec::exec(args),
        Command::Image(c) => cmd::image::image(c).map(|()| 0),
        Command::Pull(a) => cmd::pull::pull(&a).map(|()| 0),
        Command::Push(a) => cmd::pull::push(&a).map(|()| 0),
        Command::Login(a) => cmd::pull::login(&a).map(|()| 0),
        Command::Ps { all } => cmd::instances::ps(all).map(|()| 0),
        Command::Rm { force, ids } => cmd::instances::rm(&ids, force).map(|()| 0),
        Command::Stop { time, ids } => {
            cmd::lifecycle::stop(&ids, std::time::Duration::from_secs(time)).map(|()| 0)
        }
        Command::Kill { signal, ids } => cmd::lifecycle::kill(&ids, signal).map(|()| 0),
        Command::Wait { ids } => cmd::lifecycle::wait(&ids).map(|()| 0),
        Command::Logs {
            follow,
            tail,
            instance,
        } => cmd::lifecycle::logs(&instance, follow, tail).map(|()| 0),
        Command::Inspect { ids } => cmd::lifecycle::inspect(&ids).map(|()| 0),
        Command::Monitor { id } => Ok(monitor::main(&id)),
        Command::Gc => cmd::instances::gc().map(|()| 0),
        Command::Snapshot { instance, file } => {
            cmd::snapshot::snapshot(&instance, &file).map(|()| 0)
        }
        Command::Network(c) => cmd::network::network(c).map(|()| 0),
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
