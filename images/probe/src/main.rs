//! `duet-probe`: prints a [`duet_probe::ProbeReport`] as JSON on stdout.
//!
//! Usage: `duet-probe [--canary PATH --token T] [--host-pid N --host-pid-start TICKS] [--compact]`
//! (or the `DUET_PROBE_*` environment variables). Safe on the host as root:
//! nothing it does changes the host.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cl = match duet_probe::parse_command_line(&args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("duet-probe: {e}");
            return ExitCode::from(2);
        }
    };
    let report = duet_probe::collect(&cl.input);
    if cl.compact {
        println!(
            "{}",
            serde_json::to_string(&report).expect("ProbeReport serializes")
        );
    } else {
        println!("{}", report.to_json());
    }
    ExitCode::SUCCESS
}
