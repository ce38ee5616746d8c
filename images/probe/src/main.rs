//! `duet-probe`: prints a [`duet_probe::ProbeReport`] as JSON on stdout.
//!
//! Usage: `duet-probe [--canary PATH --token T] [--host-pid N --host-pid-start TICKS] [--compact]`
//! (or the `DUET_PROBE_*` environment variables). Safe on the host as root:
//! nothing it does changes the host.
//!
//! `duet-probe --tiocsti TEXT` is a separate, hostile test mode (never part
//! of the report, which also runs on the host): it pushes TEXT into the
//! input of the terminal on fd 0 with TIOCSTI, as a workload trying to type
//! into the shell that started it would, and prints `tiocsti: ok` or
//! `tiocsti: <errno>`. duet's tests use it to show a container cannot.

use std::process::ExitCode;

/// The `--tiocsti TEXT` mode: see the crate docs.
fn tiocsti(text: &str) -> ExitCode {
    for b in text.bytes() {
        // SAFETY: TIOCSTI reads one byte from a local.
        let r = unsafe { libc::ioctl(0, libc::TIOCSTI, &b) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            println!(
                "tiocsti: {}",
                duet_probe::attempt::errno_name(e.raw_os_error().unwrap_or(0))
            );
            return ExitCode::from(1);
        }
    }
    println!("tiocsti: ok");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 2 && args[0] == "--tiocsti" {
        return tiocsti(&args[1]);
    }
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
