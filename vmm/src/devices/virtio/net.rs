//! virtio-net backed by a tap device on duet's bridge, in user space.
//!
//! The parent (unjailed, privileged) opens the tap with `IFF_VNET_HDR` and
//! a 12-byte header (virtio 1.x's `virtio_net_hdr` with `num_buffers`) and
//! puts it on the bridge; the jailed VMM only reads and writes that fd. So
//! a frame crosses with no translation: the guest's header and frame are
//! written to the tap as they are, and what the tap reads is copied into an
//! rx chain, `num_buffers` set to 1. No offloads are offered (no checksum,
//! no TSO, no mergeable buffers): the guest sends whole frames it has
//! checksummed, at most [`MAX_FRAME`] bytes.
//!
//! Why user space and not vhost-net: vhost-net needs `/dev/vhost-net` in
//! the VMM's jail and the `vhost_net` host module loaded (duet never loads
//! host modules), and moves the parsing of guest-controlled rings into the
//! host kernel, the same reasons as for vsock ([`super::vsock`]). It costs
//! a copy per frame and a VM exit per tx notify (EVENT_IDX is not offered
//! either, so every tx chain is seen at once); `duet bench network` shows
//! what that costs next to a container's veth.
//!
//! Queues: rx (0, device to guest) and tx (1). tx is served on the vCPU
//! that notifies it; rx by the device's host thread ([`HostThread`]) when
//! the tap is readable, and by a vCPU that posts new rx buffers. A frame
//! read from the tap while the guest has no rx buffer waits in the device
//! (one frame), and the tap is not polled until a buffer comes. The guest
//! is hostile: chains with the wrong kind of descriptor, outside guest
//! memory or too short are returned unused and counted in `malformed`, and
//! each pass serves at most a queue's worth of chains and
//! [`BYTES_PER_PASS`] bytes. A frame whose source MAC is not the device's
//! is dropped (`spoofed_dropped`): no guest speaks on the bridge as another
//! instance, and a clone restored from a snapshot says nothing under its
//! template's MAC until duet's runtime has given its guest the clone's own
//! (the device's MAC is the clone's from the restore on).
//!
//! [`HostThread`]: super::host_thread::HostThread

use super::ring_io::{
    checked_capacity, has_more, read_from, read_nb, segments, serve_rx_tx, write_to,
};
use super::{QueueFailure, QueueOutcome, VirtioDevice, F_VERSION_1};
use crate::memory::GuestMemory;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

/// virtio device type of a network card.
pub const TYPE_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// Feature bit: the device has a MAC address in config space.
pub const F_MAC: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
/// Queue size of rx and tx.
pub const QUEUE_SIZE: u16 = 256;
/// Receive queue.
pub const RX: usize = 0;
/// Transmit queue.
pub const TX: usize = 1;
/// The virtio 1.x net header (with `num_buffers`), also the tap's.
pub const HDR_LEN: usize = 12;
/// Largest frame (header included) either way: an Ethernet frame of a
/// 1500-byte MTU with a VLAN tag fits many times over; bigger ones are
/// dropped (no offloads, so the guest never makes them).
pub const MAX_FRAME: usize = HDR_LEN + 65_550;
/// Bytes moved per pass over a queue before the work is left for the next.
pub const BYTES_PER_PASS: usize = 4 << 20;

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    rx_frames: u64,
    tx_frames: u64,
    rx_bytes: u64,
    tx_bytes: u64,
    rx_dropped: u64,
    tx_dropped: u64,
    malformed: u64,
    spoofed: u64,
    budget_yields: u64,
}

/// The virtio-net device.
pub struct Net {
    name: String,
    tap: OwnedFd,
    config: [u8; 6],
    acked_features: u64,
    /// A frame read from the tap that no rx buffer took yet.
    pending: Option<Vec<u8>>,
    /// The tap may have data (poll it only when false).
    tap_readable: bool,
    wake: EventFd,
    changed: bool,
    stats: Stats,
}

impl Net {
    /// A device on `tap` (opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    /// and a 12-byte vnet header; made nonblocking here) with MAC `mac`.
    pub fn new(tap: OwnedFd, mac: [u8; 6]) -> std::io::Result<Net> {
        // SAFETY: fcntl on a descriptor we own, integer arguments.
        let flags = unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0
            || unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Net {
            name: "virtio-net".into(),
            tap,
            config: mac,
            acked_features: 0,
            pending: None,
            tap_readable: true,
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            changed: false,
            stats: Stats::default(),
        })
    }

    /// The MAC in config space.
    pub fn mac(&self) -> [u8; 6] {
        self.config
    }

    fn flush_wake(&mut self) {
        if std::mem::take(&mut self.changed) {
            let _ = self.wake.write(1);
        }
    }

    fn process_tx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<(bool, bool), virtio_queue::Error> {
        let mut chains = queue.size();
        let mut bytes = 0usize;
        let mut used = false;
        let mut buf = Vec::new();
        while chains > 0 && bytes < BYTES_PER_PASS {
            let Some(chain) = queue.iter(mem)?.next() else {
                break;
            };
            let head = chain.head_index();
            chains -= 1;
            let segs = segments(mem, queue, head, false);
            let len = segs.as_deref().and_then(|s| checked_capacity(mem, s));
            match (segs, len) {
                (Some(segs), Some(len)) if (HDR_LEN..=MAX_FRAME).contains(&len) => {
                    buf.resize(len, 0);
                    if read_from(mem, &segs, 0, &mut buf) {
                        bytes += len;
                        self.send(&buf);
                    } else {
                        self.stats.malformed += 1;
                    }
                }
                _ => self.stats.malformed += 1,
            }
            queue.add_used(mem, head, 0)?;
            used = true;
        }
        let spent = chains == 0 || bytes >= BYTES_PER_PASS;
        Ok((used, spent && has_more(queue, mem)?))
    }

    /// One frame to the tap; a full tap queue drops it (as a switch would).
    fn send(&mut self, frame: &[u8]) {
        // Only frames from the device's own MAC leave: a guest cannot pose
        // as another instance on the bridge, and a clone restored from a
        // snapshot sends nothing under its template's MAC before it is told
        // its own (see the module doc).
        if frame.get(HDR_LEN + 6..HDR_LEN + 12) != Some(&self.config[..]) {
            self.stats.spoofed += 1;
            return;
        }
        // SAFETY: writes a valid buffer of its length to the tap we own.
        let n = unsafe { libc::write(self.tap.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n == frame.len() as isize {
            self.stats.tx_frames += 1;
            self.stats.tx_bytes += (frame.len() - HDR_LEN) as u64;
        } else {
            self.stats.tx_dropped += 1;
        }
    }

    /// The next frame from the tap (or the one waiting), if any.
    fn next_frame(&mut self) -> Option<Vec<u8>> {
        if let Some(f) = self.pending.take() {
            return Some(f);
        }
        if !self.tap_readable {
            return None;
        }
        let mut buf = vec![0u8; MAX_FRAME];
        match read_nb(self.tap.as_raw_fd(), &mut buf) {
            Ok(Some(n)) if n >= HDR_LEN => {
                buf.truncate(n);
                Some(buf)
            }
            // Nothing there (or the tap went away): poll it again.
            _ => {
                self.tap_readable = false;
                self.changed = true;
                None
            }
        }
    }

    fn process_rx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<(bool, bool), virtio_queue::Error> {
        let mut chains = queue.size();
        let mut bytes = 0usize;
        let mut used = false;
        while chains > 0 && bytes < BYTES_PER_PASS {
            let Some(mut frame) = self.next_frame() else {
                break;
            };
            let Some(chain) = queue.iter(mem)?.next() else {
                // No buffer: the frame waits, the tap is left alone until one comes.
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            chains -= 1;
            let segs = segments(mem, queue, head, true);
            let cap = segs.as_deref().and_then(|s| checked_capacity(mem, s));
            let len = match (segs, cap) {
                (Some(segs), Some(cap)) if cap >= HDR_LEN => {
                    // num_buffers: one buffer per frame without MRG_RXBUF.
                    frame[10..12].copy_from_slice(&1u16.to_le_bytes());
                    if frame.len() > cap {
                        self.stats.rx_dropped += 1;
                        0
                    } else if write_to(mem, &segs, &frame) {
                        self.stats.rx_frames += 1;
                        self.stats.rx_bytes += (frame.len() - HDR_LEN) as u64;
                        bytes += frame.len();
                        frame.len() as u32
                    } else {
                        self.stats.malformed += 1;
                        0
                    }
                }
                _ => {
                    self.stats.malformed += 1;
                    0
                }
            };
            queue.add_used(mem, head, len)?;
            used = true;
        }
        let spent = chains == 0 || bytes >= BYTES_PER_PASS;
        let waiting = self.pending.is_some() || self.tap_readable;
        Ok((used, spent && waiting && has_more(queue, mem)?))
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: &super::Activation<'_>) -> Result<(), String> {
        self.acked_features = a.acked_features;
        self.tap_readable = true;
        self.changed = true;
        self.flush_wake();
        Ok(())
    }

    fn reset(&mut self) {
        self.acked_features = 0;
        self.pending = None;
        self.changed = true;
        self.flush_wake();
    }

    fn process(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemory,
    ) -> Result<QueueOutcome, QueueFailure> {
        let mut yields = self.stats.budget_yields;
        let out = serve_rx_tx(
            "virtio-net",
            index,
            (RX, TX),
            queues,
            mem,
            &mut yields,
            |qi, q| {
                if qi == TX {
                    self.process_tx(q, mem)
                } else {
                    // A vCPU posted rx buffers (or tx freed the way): a waiting frame may go now.
                    self.process_rx(q, mem)
                }
            },
        );
        self.stats.budget_yields = yields;
        self.flush_wake();
        out
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        let s = self.stats;
        [
            ("rx_frames", s.rx_frames),
            ("tx_frames", s.tx_frames),
            ("rx_bytes", s.rx_bytes),
            ("tx_bytes", s.tx_bytes),
            ("rx_dropped", s.rx_dropped),
            ("tx_dropped", s.tx_dropped),
            ("malformed", s.malformed),
            ("spoofed_dropped", s.spoofed),
            ("budget_yields", s.budget_yields),
        ]
        .into_iter()
        .map(|(k, v)| (format!("virtio.{}.{k}", self.name), v))
        .collect()
    }
}

/// The host thread polls the tap while no frame waits for an rx buffer.
#[derive(Debug, Clone, Copy)]
pub struct TapToken;

impl super::host_thread::HostSide for Net {
    type Token = TapToken;
    const RX: usize = RX;
    const THREAD: &'static str = "duet-net";
    fn wake_fd(&self) -> std::io::Result<EventFd> {
        self.wake.try_clone()
    }
    fn poll_set(&self) -> Vec<(RawFd, i16, TapToken)> {
        if self.pending.is_some() || self.tap_readable {
            Vec::new()
        } else {
            vec![(self.tap.as_raw_fd(), libc::POLLIN, TapToken)]
        }
    }
    fn host_io(&mut self, ready: &[(TapToken, i16)], _now: Instant) {
        if !ready.is_empty() {
            self.tap_readable = true;
        }
    }
}

#[cfg(test)]
mod tests;
