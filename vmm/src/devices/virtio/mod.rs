//! virtio devices on the virtio-mmio transport (virtio 1.x, register layout
//! version 2), with split virtqueues from the `virtio-queue` crate.
//!
//! - [`mmio::MmioTransport`]: the registers a driver probes and configures
//!   through, feature negotiation, queue setup, and the interrupt (an
//!   EventFd registered with KVM as an irqfd, so raising it costs no exit).
//! - [`block::Block`]: a virtio-blk disk backed by a file, read-only or
//!   read-write, with flush and a serial number (GET_ID).
//! - [`fs::VhostUserFs`]: virtio-fs whose queues a vhost-user backend
//!   (virtiofsd) serves from its own process, on guest memory it maps.
//! - [`vsock::Vsock`]: virtio-vsock, guest stream sockets reached from the
//!   host through a Unix socket (Firecracker's hybrid design), served by a
//!   host-side thread of its own besides the vCPU exits.
//!
//! Devices are placed at [`MMIO_BASE`] + n * [`MMIO_SIZE`] on IRQ
//! [`FIRST_IRQ`] + n and announced to Linux with
//! `virtio_mmio.device=4K@<base>:<irq>` ([`cmdline_option`]).
//!
//! Queue notifications are plain MMIO exits handled on the vCPU thread that
//! wrote QueueNotify (no ioeventfd and no worker thread). Why: a request
//! costs the same two exits either way for the interrupt (the virtio-mmio
//! driver reads InterruptStatus and writes InterruptACK), the notify exit is
//! the one an ioeventfd would move into the kernel, and EVENT_IDX already
//! lets the driver skip most notifies while requests are in flight; on the
//! 1-CPU testbed a worker thread could not run beside the vCPU anyway, and
//! the disks' data is in the host page cache, so the vCPU waits microseconds.
//! Every register access is counted per device (`vm_exits.mmio.<device>`),
//! and the device counts notifies, requests and interrupts, so the choice
//! can be revisited with numbers.
//!
//! Because that work runs on a vCPU thread while it holds the device's lock,
//! it is bounded per exit whatever the guest puts in the rings: one pass
//! serves at most a queue's worth of chains and a fixed amount of data, and
//! what is left waits for the driver's next register access
//! ([`QueueOutcome::more`]). So the thread always returns to its stop flag,
//! and the VM stops within the grace period (`vm::STOP_GRACE`) even if the
//! guest makes the device's own DMA refill the avail ring.

pub mod block;
pub mod fs;
pub mod host_thread;
pub mod mmio;
pub mod net;
mod ring_io;
#[cfg(test)]
pub(crate) mod test_ring;
pub mod vsock;

pub use block::{Block, BlockConfig};
pub use fs::VhostUserFs;
pub use mmio::MmioTransport;
pub use vsock::Vsock;

use std::collections::BTreeMap;
use virtio_queue::Queue;

/// Guest-physical address of the first virtio-mmio device.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Bytes of MMIO space per device (registers + config space).
pub const MMIO_SIZE: u64 = 0x1000;
/// Interrupt line (IO-APIC pin / GSI) of the first device; the next ones follow.
pub const FIRST_IRQ: u32 = 5;
/// Highest interrupt line a device may use (the MP table announces pins 0-23).
pub const LAST_IRQ: u32 = 23;
/// How many virtio-mmio devices fit on their own interrupt lines.
pub const MAX_DEVICES: usize = (LAST_IRQ - FIRST_IRQ + 1) as usize;

/// virtio device type of a block device.
pub const TYPE_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// virtio device type of a file system (virtio-fs) device.
pub const TYPE_FS: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;
/// virtio device type of a socket (vsock) device.
pub const TYPE_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

/// Feature bit: the device follows virtio 1.x (required by the modern transport).
pub const F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: descriptors may point at tables of descriptors (never
/// offered by duet's devices, so such chains are refused).
pub const F_INDIRECT_DESC: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// Feature bit: used_event/avail_event suppress notifications and interrupts.
pub const F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Where device n sits: (MMIO base, IRQ), or None past [`MAX_DEVICES`].
pub fn slot(n: usize) -> Option<(u64, u32)> {
    (n < MAX_DEVICES).then(|| (MMIO_BASE + n as u64 * MMIO_SIZE, FIRST_IRQ + n as u32))
}

/// The kernel command line option announcing a device at `base` on `irq`.
pub fn cmdline_option(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// Copies config space `config` from `offset` into `data`; bytes past its
/// end read as 0 (what every device's [`VirtioDevice::read_config`] does).
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| config.get(o as usize))
            .copied()
            .unwrap_or(0);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation<'a> {
    /// Features the driver acknowledged.
    pub acked_features: u64,
    /// The queues as the driver configured them (check `ready()`).
    pub queues: &'a [Queue],
    /// Guest memory.
    pub mem: &'a crate::memory::GuestMemory,
    /// The device's interrupt: an irqfd on its GSI.
    pub irq: &'a vmm_sys_util::eventfd::EventFd,
}

/// What a queue's processing asks of the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueOutcome {
    /// Interrupt the driver (used buffers were added and it wants to know).
    pub interrupt: bool,
    /// The device stopped at its per-pass budget with chains still
    /// available: the transport must call again (bounded work per exit).
    pub more: bool,
}

/// The queue itself is unusable (bad ring addresses, an avail index that
/// runs ahead by more than the queue size): the device needs a reset.
#[derive(Debug, thiserror::Error)]
#[error("virtqueue {queue} of {device}: {source}")]
pub struct QueueFailure {
    /// Device name.
    pub device: String,
    /// Queue index.
    pub queue: usize,
    /// What virtio-queue reported.
    #[source]
    pub source: virtio_queue::Error,
}

/// A virtio device behind a transport: its identity, features, config space
/// and the work done when the driver notifies a queue.
pub trait VirtioDevice: Send {
    /// virtio device type (2 = block).
    fn device_type(&self) -> u32;
    /// Name used in counters and errors (`virtio-blk.duet-layer-0`).
    fn name(&self) -> &str;
    /// Features offered to the driver (must include [`F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device config space at `offset`; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver's features were accepted and it set DRIVER_OK. An error
    /// (a vhost-user backend that refused the rings) fails the device
    /// (DEVICE_NEEDS_RESET); the message is counted, not shown to the guest.
    fn activate(&mut self, activation: &Activation<'_>) -> Result<(), String>;
    /// Whether used buffers are signalled by another process writing the
    /// transport's irqfd directly (a vhost-user backend): the transport then
    /// cannot set the used-buffer bit of InterruptStatus itself, so it reads
    /// as set while the device is live (the driver then checks its rings,
    /// which costs nothing when they are empty).
    fn backend_interrupts(&self) -> bool {
        false
    }
    /// The driver reset the device.
    fn reset(&mut self);
    /// Processes what the driver made available on queue `index`, up to a
    /// bounded amount of work per call (see [`QueueOutcome::more`]). A
    /// device may use its other queues too (vsock answers on its rx queue
    /// what arrives on tx): it must touch only those that are `ready()`.
    fn process(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &crate::memory::GuestMemory,
    ) -> Result<QueueOutcome, QueueFailure>;
    /// Device counters (`virtio.<name>.requests`, ...).
    fn counters(&self) -> BTreeMap<String, u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_documented_layout() {
        assert_eq!(slot(0), Some((0xd000_0000, 5)));
        assert_eq!(slot(2), Some((0xd000_2000, 7)));
        assert_eq!(slot(MAX_DEVICES - 1).map(|s| s.1), Some(LAST_IRQ));
        assert_eq!(slot(MAX_DEVICES), None);
        assert_eq!(
            cmdline_option(0xd000_0000, 5),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
    }
}
