//! Snapshots of a running microVM, and restoring one in a new process.
//!
//! What is saved follows Firecracker's snapshot (`src/vmm/src/vstate`,
//! `docs/snapshotting`): per vCPU the KVM state a guest can observe
//! (CPUID, MSRs, general, segment, debug and extended registers, the local
//! APIC, pending events, the MP state, the TSC frequency), per VM the
//! irqchip (both PICs, the IO-APIC), the PIT and the kvm-clock, then the
//! devices duet's VMM emulates (COM1, the ready/exit port, every
//! virtio-mmio transport with its queues) and guest memory.
//!
//! # The file
//! One file, so a snapshot is copied or removed as one thing:
//!
//! | offset | what |
//! |---|---|
//! | 0 | header ([`HEADER_LEN`] bytes): magic `DUETSNAP`, format version, where the state is, its SHA-256 |
//! | [`HEADER_LEN`] | guest RAM, each region at the offset the state names (4 KiB aligned); zero pages are holes |
//! | after RAM | a copy of every writable disk, as it was at the pause (sparse too) |
//! | end | the state, JSON ([`SnapshotState`]) |
//!
//! Restoring maps each RAM region of the file `MAP_PRIVATE`: pages load on
//! first touch and N clones of one snapshot share every page none of them
//! wrote (copy on write, [`memory::map_snapshot_memory`]).
//!
//! A network device is saved with its queues but not its tap: the
//! restoring caller gives a tap of its own, and a frame in flight at the
//! pause is lost (as on a real link). The guest keeps the address and MAC
//! it had until it is told others (duet's runtime does it through the guest
//! agent before a clone counts as started).
//!
//! # What is refused
//! - taking a snapshot of a VM with a virtio-fs share (its queues live in
//!   virtiofsd, out of duet's reach) or open vsock connections (their state
//!   lives in the host thread and the peer's socket);
//! - restoring a file whose magic, format version, checksum or size is
//!   wrong, written by another duet version, or on a host CPU of another
//!   vendor or model (CPUID and MSRs would not match what the guest saw);
//!   see [`SnapshotState::check_host`]. The guest kernel is the caller's
//!   to check ([`SnapshotState::guest_kernel`]).
//!
//! Nothing in a snapshot names a host path: the restoring caller gives the
//! read-only disks (matched by serial and size, [`DiskState`]) and where
//! each writable disk's copy goes, so a hostile snapshot file cannot make
//! duet open a file of its choosing.

mod file;
mod pause;
mod state;
mod vcpu_state;
mod vm_state;

pub use file::{open, write, Snapshot, WriteStats};
pub use pause::PauseGate;
pub use state::*;
pub use vcpu_state::{capture_vcpu, restore_vcpu};
pub use vm_state::{capture_vm, restore_vm};

/// First bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"DUETSNAP";
/// Version of the layout and of [`SnapshotState`]; a different one is refused.
pub const FORMAT_VERSION: u32 = 2;
/// Bytes before guest RAM.
pub const HEADER_LEN: u64 = 4096;

/// Errors taking or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The VM has something a snapshot cannot hold.
    #[error("cannot snapshot this VM: {0}")]
    Unsupported(String),
    /// A KVM ioctl failed.
    #[error("{ioctl}{}", vcpu.map(|v| format!(" on vCPU {v}")).unwrap_or_default())]
    Kvm {
        /// Which ioctl.
        ioctl: &'static str,
        /// vCPU, if a vCPU ioctl.
        vcpu: Option<u32>,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM refused an MSR when restoring.
    #[error("KVM_SET_MSRS on vCPU {vcpu}: MSR {msr:#x} was refused")]
    MsrRefused {
        /// vCPU.
        vcpu: u32,
        /// The first MSR not set.
        msr: u32,
    },
    /// The vCPUs did not pause in time.
    #[error("vCPU {vcpu} did not pause within {} s", pause::PAUSE_WAIT.as_secs())]
    PauseTimeout {
        /// The first vCPU that did not.
        vcpu: u32,
    },
    /// The VM ended while it was being paused.
    #[error("the VM ended before it could be paused")]
    Ended,
    /// Reading or writing the file failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a snapshot duet can restore.
    #[error("{0}")]
    Invalid(String),
}

impl SnapshotError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn kvm(ioctl: &'static str, vcpu: Option<u32>, source: kvm_ioctls::Error) -> Self {
        SnapshotError::Kvm {
            ioctl,
            vcpu,
            source,
        }
    }
}
