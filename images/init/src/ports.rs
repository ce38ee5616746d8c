//! duet's ready/exit I/O ports, written from user space with `out`.
//!
//! PID 1 gets access to exactly these ports with ioperm(2) (the guest kernel
//! needs CONFIG_X86_IOPL_IOPERM); the workload's child drops it again right
//! before execve, so a workload cannot forge duet's reports.
//!
//! For tests on a host (init run as PID 1 of a PID namespace, where `out`
//! would reach the host's real ports), `DUET_INIT_FAKE_PORTS=<file>` in the
//! init's own environment makes it append `ready` / `exit <value>` lines to
//! that file instead. In a guest only the VMM's kernel command line could set
//! it, and the workload's environment is never the init's.

use duet_shared::guest_abi::{EXIT_PORT, EXIT_PORT_WIDTH, READY_PORT, READY_VALUE};
use nix::errno::Errno;

/// Why the ports cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot get access to duet's I/O port {port:#x} (ioperm; the guest kernel needs CONFIG_X86_IOPL_IOPERM)"
)]
pub struct PortError {
    /// The port that was refused.
    pub port: u16,
    /// Cause.
    #[source]
    pub source: Errno,
}

/// The environment variable that selects the host-test log instead of ports.
pub const FAKE_PORTS_ENV: &str = "DUET_INIT_FAKE_PORTS";

/// Permission to write duet's two ports from this process.
#[derive(Debug)]
pub struct GuestPorts {
    /// `Some(file)`: host test mode, reports are lines appended to the file.
    fake: Option<std::path::PathBuf>,
}

fn ioperm(port: u16, width: usize, on: bool) -> Result<(), PortError> {
    // SAFETY: ioperm only changes this task's I/O permission bitmap.
    let rc = unsafe { libc::ioperm(port.into(), width as libc::c_ulong, on.into()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(PortError {
            port,
            source: Errno::last(),
        })
    }
}

impl GuestPorts {
    /// Asks the kernel for access to the ready and exit ports.
    pub fn open() -> Result<GuestPorts, PortError> {
        if let Some(f) = std::env::var_os(FAKE_PORTS_ENV).filter(|f| !f.is_empty()) {
            return Ok(GuestPorts {
                fake: Some(f.into()),
            });
        }
        ioperm(READY_PORT, 1, true)?;
        ioperm(EXIT_PORT, EXIT_PORT_WIDTH, true)?;
        Ok(GuestPorts { fake: None })
    }

    fn log(&self, file: &std::path::Path, line: &str) {
        use std::io::Write;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file);
        if let Err(e) = f.and_then(|mut f| writeln!(f, "{line}")) {
            eprintln!("duet-init: cannot write {}: {e}", file.display());
        }
    }

    /// Reports "about to exec the workload" (one byte to the ready port).
    pub fn ready(&self) {
        if let Some(f) = &self.fake {
            return self.log(f, "ready");
        }
        // SAFETY: `open` granted this port; in a duet guest it is the VMM's
        // ready device, the write has no effect on memory or registers.
        unsafe {
            core::arch::asm!("out dx, al", in("dx") READY_PORT, in("al") READY_VALUE,
                options(nomem, nostack, preserves_flags));
        }
    }

    /// Reports the encoded exit status (one 4-byte write to the exit port).
    pub fn exit_status(&self, value: u32) {
        const _: () = assert!(EXIT_PORT_WIDTH == 4, "exit port is written with outl");
        if let Some(f) = &self.fake {
            return self.log(f, &format!("exit {value:#x}"));
        }
        // SAFETY: `open` granted these 4 ports; in a duet guest they are the
        // VMM's exit device, the write has no effect on memory or registers.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") EXIT_PORT, in("eax") value,
                options(nomem, nostack, preserves_flags));
        }
    }

    /// Gives the access up (before the workload's execve).
    pub fn release(&self) {
        if self.fake.is_some() {
            return;
        }
        let _ = ioperm(READY_PORT, 1, false);
        let _ = ioperm(EXIT_PORT, EXIT_PORT_WIDTH, false);
    }
}
