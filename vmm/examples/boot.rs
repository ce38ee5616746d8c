//! Boots a kernel with duet's VMM, without the rest of duet: for trying
//! kernels and initrds by hand and for timing boots in the nested testbed.
//!
//! usage: boot KERNEL [--initrd FILE] [--cmdline STR] [--append STR]
//!             [--mem MIB] [--vcpus N] [--timeout SECS] [--console]
//!        boot --doctor
//!
//! Guest output goes to stdout (all of it with --console, else only what
//! follows the guest's ready write); the outcome, phase timings and exit
//! counters go to stderr. Exits with the workload's status, or 1.

use duet_shared::report::RunReport;
use duet_vmm::{run_vm, ConsoleMode, VmConfig, BASE_CMDLINE};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut cfg = VmConfig {
        snapshots: Default::default(),
        kernel: PathBuf::new(),
        initrd: None,
        cmdline: BASE_CMDLINE.to_string(),
        memory_mib: 256,
        vcpus: 1,
        timeout: Some(Duration::from_secs(120)),
        console: ConsoleMode::Workload,
        stdin: false,
        disks: Vec::new(),
        agent_socket: None,
        fs: Vec::new(),
        net: None,
    };
    let next = |what: &str, args: &mut dyn Iterator<Item = String>| {
        args.next().unwrap_or_else(|| {
            eprintln!("boot: {what} needs a value");
            std::process::exit(2)
        })
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--doctor" => {
                println!("{}", duet_vmm::doctor::diagnose());
                return;
            }
            "--initrd" => cfg.initrd = Some(next("--initrd", &mut args).into()),
            "--cmdline" => cfg.cmdline = next("--cmdline", &mut args),
            "--append" => {
                cfg.cmdline.push(' ');
                cfg.cmdline.push_str(&next("--append", &mut args));
            }
            "--mem" => cfg.memory_mib = next("--mem", &mut args).parse().expect("--mem MIB"),
            "--vcpus" => cfg.vcpus = next("--vcpus", &mut args).parse().expect("--vcpus N"),
            "--timeout" => {
                let secs: f64 = next("--timeout", &mut args)
                    .parse()
                    .expect("--timeout SECS");
                cfg.timeout = Some(Duration::from_secs_f64(secs));
            }
            "--console" => cfg.console = ConsoleMode::Forward,
            "--stdin" => cfg.stdin = true,
            other if cfg.kernel.as_os_str().is_empty() && !other.starts_with("--") => {
                cfg.kernel = other.into()
            }
            other => {
                eprintln!("boot: unknown argument {other}");
                std::process::exit(2)
            }
        }
    }
    if cfg.kernel.as_os_str().is_empty() {
        eprintln!("usage: boot KERNEL [--initrd FILE] [--cmdline STR] [--append STR] [--mem MIB] [--vcpus N] [--timeout SECS] [--console] | --doctor");
        std::process::exit(2)
    }
    let mut report = RunReport::start("vm", "boot", "-");
    let code = match run_vm(&cfg, &mut report) {
        Ok(outcome) => {
            report.exit = outcome.workload_exit().ok();
            eprint!("{}", report.table());
            match outcome.workload_exit() {
                Ok(exit) => exit.shell_code(),
                Err(failure) => {
                    eprintln!("boot: {failure}");
                    1
                }
            }
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(s) = cur {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                cur = s.source();
            }
            eprintln!("boot: {msg}");
            1
        }
    };
    std::process::exit(code)
}
