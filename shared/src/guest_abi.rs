//! The "ready / exit" device: how a guest tells duet's VMM that the workload
//! is about to start and how it ended. The one place these ports are defined.
//!
//! Two x86 I/O ports, written by the guest init (images/init) and served by
//! the VMM (vmm/src/devices/exit_port.rs):
//!
//! | port            | access            | meaning                                            |
//! |-----------------|-------------------|----------------------------------------------------|
//! | [`READY_PORT`]  | 1-byte `out`      | [`READY_VALUE`]: "about to execve the workload"    |
//! | [`EXIT_PORT`]   | 4-byte `out` (u32)| workload status, encoded by [`encode_exit`]        |
//!
//! Exit status encoding (u32): bits 0-7 hold the exit code, or the signal
//! number when [`EXIT_SIGNALED`] (bit 8) is set. [`EXIT_INIT_FAILED`] (bit 9)
//! means the init itself failed before or instead of running the workload;
//! bits 0-7 then hold an [`InitFailure`] stage. Bits 10-31 are zero.
//!
//! The VMM stamps `Phase::Ready` when the ready write exits to it and stops
//! the VM as soon as the exit status is written; the guest need not reboot.
//! Reads of either port return 0.
//!
//! The guest init reaches the ports with `ioperm(2)`, so the guest kernel
//! needs `CONFIG_X86_IOPL_IOPERM=y` (tinyconfig leaves it off).

use crate::runtime::WorkloadExit;

/// The vsock port duet-init's agent listens on in the guest (`duet exec`
/// and `Kill` requests, protocol in `crate::agent_abi`); the guest is CID 3.
pub const AGENT_PORT: u32 = 1024;
/// The vsock port a warm-start template guest waits on for the workload of
/// the clone it becomes (duet-init's `warm` module; one JSON line).
pub const WARM_PORT: u32 = 1025;
/// Guest writes [`READY_VALUE`] (one byte) here right before it execs the workload.
pub const READY_PORT: u16 = 0x510;
/// The byte written to [`READY_PORT`].
pub const READY_VALUE: u8 = 1;
/// Guest writes the encoded exit status (u32, one 4-byte `out`) here.
pub const EXIT_PORT: u16 = 0x514;
/// Width in bytes of the write to [`EXIT_PORT`].
pub const EXIT_PORT_WIDTH: usize = 4;
/// Bits 0-7: exit code, signal number or init failure stage.
pub const EXIT_CODE_MASK: u32 = 0xff;
/// Bit 8: the workload was killed by the signal in bits 0-7.
pub const EXIT_SIGNALED: u32 = 1 << 8;
/// Bit 9: the guest init failed; bits 0-7 say at which stage ([`InitFailure`]).
pub const EXIT_INIT_FAILED: u32 = 1 << 9;

/// Where the guest init failed (bits 0-7 of an [`EXIT_INIT_FAILED`] status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum InitFailure {
    /// Any failure not listed below.
    Other = 0,
    /// Mounting /proc, /sys, /dev or the workload root failed.
    Mount = 1,
    /// The workload configuration could not be read or parsed.
    Config = 2,
    /// Applying env, workdir or user failed.
    Setup = 3,
    /// `execve` of the workload failed (e.g. command not found).
    Exec = 4,
    /// Waiting for the workload failed.
    Wait = 5,
}

impl InitFailure {
    /// The stage for a raw byte (unknown values map to [`InitFailure::Other`]).
    pub fn from_byte(b: u8) -> InitFailure {
        match b {
            1 => InitFailure::Mount,
            2 => InitFailure::Config,
            3 => InitFailure::Setup,
            4 => InitFailure::Exec,
            5 => InitFailure::Wait,
            _ => InitFailure::Other,
        }
    }

    /// Short lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            InitFailure::Other => "other",
            InitFailure::Mount => "mount",
            InitFailure::Config => "config",
            InitFailure::Setup => "setup",
            InitFailure::Exec => "exec",
            InitFailure::Wait => "wait",
        }
    }
}

/// A decoded [`EXIT_PORT`] value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// The workload ran and ended like this.
    Workload(WorkloadExit),
    /// The guest init failed at this stage.
    InitFailed(InitFailure),
}

/// Encodes a workload's end for [`EXIT_PORT`]; codes and signals are truncated to 8 bits.
pub fn encode_exit(exit: WorkloadExit) -> u32 {
    match exit {
        WorkloadExit::Code(c) => (c as u32) & EXIT_CODE_MASK,
        WorkloadExit::Signal(s) => EXIT_SIGNALED | ((s as u32) & EXIT_CODE_MASK),
    }
}

/// Encodes an init failure for [`EXIT_PORT`].
pub fn encode_init_failure(stage: InitFailure) -> u32 {
    EXIT_INIT_FAILED | stage as u32
}

/// Decodes a value written to [`EXIT_PORT`]; bits 10-31 are ignored.
pub fn decode_exit(raw: u32) -> GuestExit {
    let low = (raw & EXIT_CODE_MASK) as u8;
    if raw & EXIT_INIT_FAILED != 0 {
        GuestExit::InitFailed(InitFailure::from_byte(low))
    } else if raw & EXIT_SIGNALED != 0 {
        GuestExit::Workload(WorkloadExit::Signal(i32::from(low)))
    } else {
        GuestExit::Workload(WorkloadExit::Code(i32::from(low)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_round_trip() {
        for exit in [
            WorkloadExit::Code(0),
            WorkloadExit::Code(7),
            WorkloadExit::Code(255),
            WorkloadExit::Signal(9),
            WorkloadExit::Signal(15),
        ] {
            assert_eq!(decode_exit(encode_exit(exit)), GuestExit::Workload(exit));
        }
    }

    #[test]
    fn encoding_is_the_documented_one() {
        assert_eq!(encode_exit(WorkloadExit::Code(7)), 7);
        assert_eq!(encode_exit(WorkloadExit::Signal(9)), 0x109);
        assert_eq!(encode_init_failure(InitFailure::Exec), 0x204);
        assert_eq!(decode_exit(0x204), GuestExit::InitFailed(InitFailure::Exec));
        // Init failure wins over the signal bit.
        assert_eq!(
            decode_exit(0x301),
            GuestExit::InitFailed(InitFailure::Mount)
        );
        assert_eq!(
            decode_exit(0xffff_fc00 | 3),
            GuestExit::Workload(WorkloadExit::Code(3))
        );
    }

    #[test]
    fn ports_do_not_overlap() {
        let ready = READY_PORT..READY_PORT + 1;
        let exit = EXIT_PORT..EXIT_PORT + EXIT_PORT_WIDTH as u16;
        assert!(ready.end <= exit.start || exit.end <= ready.start);
    }
}
