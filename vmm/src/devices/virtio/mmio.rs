//! The virtio-mmio transport, register layout version 2 (virtio 1.x
//! "modern"): what a driver probes (magic, version, device id), feature
//! negotiation in two 32-bit halves, queue setup by 64-bit ring addresses,
//! QueueNotify, the interrupt status/acknowledge pair, and device config
//! space from offset 0x100.
//!
//! A guest that misprograms the transport never stops the VMM: accesses of
//! the wrong width or to unknown registers are counted and ignored, and a
//! queue the device cannot use sets DEVICE_NEEDS_RESET (with a config-change
//! interrupt, as the virtio spec asks) until the driver resets the device:
//! a QueueNum of 0, above QueueNumMax or not a power of two; ring addresses
//! off the split ring's alignment (descriptor table 16, avail 2, used 4);
//! rings outside guest memory (checked when the driver writes QueueReady,
//! which then reads back 0, and again at DRIVER_OK); an avail index that
//! runs ahead of the ring.
//!
//! Work per exit is bounded: a QueueNotify runs one bounded pass of the
//! device ([`QueueOutcome`](super::QueueOutcome)`::more`); what is left
//! waits for the driver's next access to the transport (any register but
//! QueueNotify, which runs its own pass), each access running one more pass.

use super::{VirtioDevice, F_EVENT_IDX, F_VERSION_1};
use crate::bus::BusDevice;
use crate::memory::GuestMemory;
use std::collections::BTreeMap;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// "virt" in little endian, the first register of every virtio-mmio device.
pub const MAGIC: u32 = 0x7472_6976;
/// Register layout version of the modern (virtio 1.x) transport.
pub const VERSION: u32 = 2;
/// Vendor id the devices report ("duet" in little endian).
pub const VENDOR_ID: u32 = 0x7465_7564;

/// A virtio device on the MMIO bus.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemory,
    irq: EventFd,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    notifies: u64,
    interrupts: u64,
    ignored_accesses: u64,
    queue_failures: u64,
    resumed_passes: u64,
    /// Queues whose last pass stopped at its budget with work left.
    pending: Vec<bool>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`; it reaches guest memory through `mem` and interrupts
    /// the guest by writing to `irq` (an irqfd on its GSI).
    pub fn new(device: D, mem: GuestMemory, irq: EventFd) -> MmioTransport<D> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect();
        let pending = vec![false; device.queue_max_sizes().len()];
        MmioTransport {
            pending,
            resumed_passes: 0,
            device,
            mem,
            irq,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            notifies: 0,
            interrupts: 0,
            ignored_accesses: 0,
            queue_failures: 0,
        }
    }

    /// The device behind the transport.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, for work that does not come from the driver (a host-side
    /// event); queue work goes through [`MmioTransport::process_from_host`].
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// One bounded pass over queue `index` started by the host side (a
    /// socket became readable), not by a QueueNotify: nothing happens unless
    /// the device is live and the queue ready; the driver is interrupted if
    /// the pass asks for it. Returns whether work is left (call again).
    pub fn process_from_host(&mut self, index: usize) -> bool {
        if !self.live() || self.queues.get(index).is_none_or(|q| !q.ready()) {
            return false;
        }
        self.run_queue(index);
        self.pending.get(index).copied().unwrap_or(false)
    }

    /// Registers and queues, for a snapshot (taken while no vCPU runs).
    pub fn save_state(&self) -> crate::snapshot::TransportState {
        crate::snapshot::TransportState {
            status: self.status,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
        }
    }

    /// Puts a new transport into the state a snapshot saved, and activates
    /// its device if the driver had. Refuses queues that do not fit the
    /// device (count, sizes) or this guest memory, and features the device
    /// never offered: a snapshot file is not trusted.
    pub fn restore_state(&mut self, s: &crate::snapshot::TransportState) -> Result<(), String> {
        let name = self.device.name().to_string();
        if s.queues.len() != self.queues.len() {
            return Err(format!(
                "{name}: {} queues saved, the device has {}",
                s.queues.len(),
                self.queues.len()
            ));
        }
        if s.acked_features & !self.device.features() != 0 {
            return Err(format!("{name}: saved features the device does not offer"));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, (q, max)) in s
            .queues
            .iter()
            .zip(self.device.queue_max_sizes())
            .enumerate()
        {
            if q.max_size != *max {
                return Err(format!(
                    "{name}: queue {i} has max size {}, saved {}",
                    max, q.max_size
                ));
            }
            let queue = Queue::try_from(virtio_queue::QueueState::from(q))
                .map_err(|e| format!("{name}: queue {i}: {e}"))?;
            if queue.ready() && !queue.is_valid(&self.mem) {
                return Err(format!("{name}: queue {i} lies outside guest memory"));
            }
            queues.push(queue);
        }
        self.queues = queues;
        self.status = s.status;
        self.acked_features = s.acked_features;
        self.queue_sel = s.queue_sel;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.interrupt_status = s.interrupt_status;
        self.config_generation = s.config_generation;
        if self.live() {
            self.device
                .activate(&super::Activation {
                    acked_features: self.acked_features,
                    queues: &self.queues,
                    mem: &self.mem,
                    irq: &self.irq,
                })
                .map_err(|e| format!("{name}: activating: {e}"))?;
        }
        if self.interrupt_status != 0 {
            // An interrupt the guest had not acknowledged stays pending.
            let _ = self.irq.write(1);
        }
        Ok(())
    }

    /// The device status register (ACKNOWLEDGE, DRIVER, FEATURES_OK, ...).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Transport and device counters: `virtio.<name>.notifies`, `.interrupts`, ...
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let name = self.device.name();
        let mut c = self.device.counters();
        for (k, v) in [
            ("notifies", self.notifies),
            ("interrupts", self.interrupts),
            ("ignored_accesses", self.ignored_accesses),
            ("queue_failures", self.queue_failures),
            ("resumed_passes", self.resumed_passes),
        ] {
            c.insert(format!("virtio.{name}.{k}"), v);
        }
        c
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn raise(&mut self, why: u32) {
        self.interrupt_status |= why;
        self.interrupts += 1;
        // A full eventfd counter still means "interrupt pending": nothing is lost.
        let _ = self.irq.write(1);
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.pending.fill(false);
    }

    /// The device cannot go on until the driver resets it.
    fn needs_reset(&mut self) {
        self.queue_failures += 1;
        self.pending.fill(false);
        if self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0 {
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
            self.config_generation = self.config_generation.wrapping_add(1);
            self.raise(VIRTIO_MMIO_INT_CONFIG);
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (clearing them takes a reset).
        if value & self.status != self.status {
            self.ignored_accesses += 1;
            return;
        }
        let added = value & !self.status;
        let mut new = value;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.device.features();
            let ok = self.status & VIRTIO_CONFIG_S_DRIVER != 0
                && self.acked_features & !offered == 0
                && self.acked_features & F_VERSION_1 != 0;
            if !ok {
                // The driver reads the status back and gives up on the device.
                new &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if new & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                self.ignored_accesses += 1;
                return;
            }
            let event_idx = self.acked_features & F_EVENT_IDX != 0;
            let mut valid = true;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
                if q.ready() && !q.is_valid(&self.mem) {
                    valid = false;
                }
            }
            self.status = new;
            let activated = valid
                && self
                    .device
                    .activate(&super::Activation {
                        acked_features: self.acked_features,
                        queues: &self.queues,
                        mem: &self.mem,
                        irq: &self.irq,
                    })
                    .is_ok();
            if !activated {
                self.needs_reset();
            }
            return;
        }
        self.status = new;
    }

    fn features_ok(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    fn live(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == 0
    }

    fn notify(&mut self, index: u32) {
        self.notifies += 1;
        let i = index as usize;
        if !self.live() || self.queues.get(i).is_none_or(|q| !q.ready()) {
            self.ignored_accesses += 1;
            return;
        }
        self.run_queue(i);
    }

    /// One bounded pass of the device over queue `i` (live and ready).
    fn run_queue(&mut self, i: usize) {
        match self.device.process(i, &mut self.queues, &self.mem) {
            Ok(out) => {
                self.pending[i] = out.more;
                if out.interrupt {
                    self.raise(VIRTIO_MMIO_INT_VRING);
                }
            }
            Err(_) => self.needs_reset(),
        }
    }

    /// Goes on with work an earlier pass left at its budget: one more pass
    /// per pending queue, on this access.
    fn resume_pending(&mut self) {
        for i in 0..self.pending.len() {
            if !self.pending[i] {
                continue;
            }
            self.pending[i] = false;
            if self.live() && self.queues[i].ready() {
                self.resumed_passes += 1;
                self.run_queue(i);
            }
        }
    }

    /// Makes the selected queue ready if its configuration is usable;
    /// otherwise refuses (QueueReady stays 0) and fails the device.
    fn queue_ready(&mut self) {
        let failed = self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0;
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            self.ignored_accesses += 1;
            return;
        };
        q.set_ready(true);
        // is_valid: every ring lies in guest memory (sizes and alignment
        // were checked as they were written).
        if failed || !q.is_valid(&self.mem) {
            q.set_ready(false);
            self.needs_reset();
        }
    }

    /// A QueueNum, QueueDesc, QueueAvail or QueueUsed write to a queue that
    /// is not ready; a value the split ring cannot have fails the device.
    fn write_queue_config(&mut self, offset: u32, v: u32) {
        let Some(q) = self.selected_queue().filter(|q| !q.ready()) else {
            self.ignored_accesses += 1;
            return;
        };
        let half = |old: u64| {
            if offset.is_multiple_of(8) {
                (old & !0xffff_ffff) | u64::from(v)
            } else {
                (old & 0xffff_ffff) | (u64::from(v) << 32)
            }
        };
        let ok = match offset & !4 {
            VIRTIO_MMIO_QUEUE_NUM => u16::try_from(v)
                .map_err(|_| virtio_queue::Error::InvalidSize)
                .and_then(|n| q.try_set_size(n)),
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                q.try_set_desc_table_address(GuestAddress(half(q.desc_table())))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                q.try_set_avail_ring_address(GuestAddress(half(q.avail_ring())))
            }
            _ => q.try_set_used_ring_address(GuestAddress(half(q.used_ring()))),
        };
        if ok.is_err() {
            self.needs_reset();
        }
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            VIRTIO_MMIO_INTERRUPT_STATUS if self.device.backend_interrupts() && self.live() => {
                self.interrupt_status | VIRTIO_MMIO_INT_VRING
            }
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // No shared memory regions: a length of all ones says so.
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            _ => {
                self.ignored_accesses += 1;
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, v: u32) {
        // Queue registers may change only while the queue is not ready.
        let queue_setup = self.features_ok() && !self.live();
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES
                if self.status & VIRTIO_CONFIG_S_DRIVER != 0 && !self.features_ok() =>
            {
                match self.driver_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => self.ignored_accesses += 1,
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_READY if queue_setup && v == 1 => self.queue_ready(),
            VIRTIO_MMIO_QUEUE_READY if queue_setup => match self.selected_queue() {
                Some(q) => q.set_ready(false),
                None => self.ignored_accesses += 1,
            },
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH
                if queue_setup =>
            {
                self.write_queue_config(offset, v)
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !v,
            VIRTIO_MMIO_STATUS => self.set_status(v),
            _ => self.ignored_accesses += 1,
        }
    }

    fn write_access(&mut self, _addr: u64, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            // virtio-blk's config space is read-only for duet's disks.
            self.ignored_accesses += 1;
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.ignored_accesses += 1;
            return;
        };
        if !offset.is_multiple_of(4) {
            self.ignored_accesses += 1;
            return;
        }
        self.write_register(offset as u32, u32::from_le_bytes(bytes));
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, _addr: u64, offset: u64, data: &mut [u8]) {
        // Before the read, so that InterruptStatus reports what this pass raises.
        self.resume_pending();
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.ignored_accesses += 1;
            data.fill(0);
            return;
        }
        let v = self.read_register(offset as u32);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, addr: u64, offset: u64, data: &[u8]) {
        self.write_access(addr, offset, data);
        // After the write, so that an InterruptACK does not clear what this pass raises.
        if offset != u64::from(VIRTIO_MMIO_QUEUE_NOTIFY) {
            self.resume_pending();
        }
    }
}

/// The bits a driver sets, in order, to bring a device up (for tests and docs).
pub const DRIVER_INIT_SEQUENCE: [u32; 4] = [
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_DRIVER_OK,
];
