//! What vCPU threads and devices tell the thread that waits for the VM.

use std::sync::mpsc::Sender;

/// Why a vCPU thread stopped on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// KVM_EXIT_HLT (only without the in-kernel irqchip).
    Halted,
    /// KVM_EXIT_SHUTDOWN: triple fault or shutdown request.
    Shutdown {
        /// Guest RIP when it happened, if readable.
        rip: Option<u64>,
    },
    /// KVM_EXIT_INTERNAL_ERROR (e.g. emulation failure).
    InternalError {
        /// KVM's suberror code (1 = emulation failure).
        suberror: u32,
        /// Guest RIP when it happened, if readable.
        rip: Option<u64>,
    },
    /// KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// KVM_EXIT_SYSTEM_EVENT (shutdown/reset/crash request).
    SystemEvent {
        /// KVM_SYSTEM_EVENT_* type.
        kind: u32,
    },
    /// An exit reason duet does not handle.
    Unhandled {
        /// Description.
        exit: String,
    },
    /// KVM_RUN itself failed, or the thread could not start.
    Failed {
        /// What failed.
        what: String,
    },
}

/// A message to the waiting thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// A control request (a snapshot) is queued for the waiting thread.
    Control,
    /// A stop signal arrived ([`crate::signals`]); the waiting thread reads which.
    Signal,
    /// The guest wrote the ready port.
    Ready {
        /// CLOCK_MONOTONIC ns at the exit.
        at_ns: u64,
    },
    /// The guest wrote its exit status.
    Exit {
        /// Raw value (see duet_shared::guest_abi).
        status: u32,
        /// CLOCK_MONOTONIC ns at the exit.
        at_ns: u64,
    },
    /// The guest asked the i8042 for a CPU reset.
    Reset {
        /// CLOCK_MONOTONIC ns at the exit.
        at_ns: u64,
    },
    /// A vCPU thread stopped.
    VcpuStopped {
        /// vCPU index.
        vcpu: u32,
        /// Why.
        stop: VcpuStop,
        /// CLOCK_MONOTONIC ns when it stopped.
        at_ns: u64,
    },
}

/// Sending half of the VM event channel.
pub type EventSender = Sender<VmEvent>;
