//! The saved state, as serde structs (JSON in the file's last part).

use super::{SnapshotError, FORMAT_VERSION};
use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};

/// Everything but guest RAM and disk contents.
#[derive(Serialize, Deserialize)]
pub struct SnapshotState {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// The duet version that wrote it (`CARGO_PKG_VERSION`).
    pub duet_version: String,
    /// The host CPU it was taken on.
    pub host: HostCpu,
    /// Identity of the guest kernel (the caller's choice, a digest), checked by the caller.
    pub guest_kernel: Option<String>,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// RAM regions and where they are in the file.
    pub memory: Vec<RegionState>,
    /// irqchip, PIT, clock.
    pub vm: VmState,
    /// One per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Emulated devices.
    pub devices: DevicesState,
    /// Opaque data of the caller (duet keeps the instance's spec here).
    pub user: serde_json::Value,
}

/// The CPU a snapshot's CPUID and MSRs came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCpu {
    /// CPUID leaf 0 vendor string ("GenuineIntel", "AuthenticAMD").
    pub vendor: String,
    /// CPUID leaf 1 EAX: stepping, model, family.
    pub signature: u32,
}

impl HostCpu {
    /// This host's CPU.
    pub fn current() -> HostCpu {
        // CPUID is available on every x86_64 CPU; leaves 0 and 1 always exist.
        let (l0, l1) = (std::arch::x86_64::__cpuid(0), std::arch::x86_64::__cpuid(1));
        let mut vendor = Vec::with_capacity(12);
        for r in [l0.ebx, l0.edx, l0.ecx] {
            vendor.extend_from_slice(&r.to_le_bytes());
        }
        HostCpu {
            vendor: String::from_utf8_lossy(&vendor).into_owned(),
            signature: l1.eax,
        }
    }

    /// "AuthenticAMD family 0x17 model 0x31 stepping 0".
    pub fn describe(&self) -> String {
        let s = self.signature;
        let base_family = (s >> 8) & 0xf;
        let family = if base_family == 0xf {
            base_family + ((s >> 20) & 0xff)
        } else {
            base_family
        };
        let model = ((s >> 4) & 0xf) | (((s >> 16) & 0xf) << 4);
        format!(
            "{} family {family:#x} model {model:#x} stepping {}",
            self.vendor,
            s & 0xf
        )
    }
}

/// One guest RAM region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    /// Guest physical start.
    pub guest_addr: u64,
    /// Bytes.
    pub size: u64,
    /// Where its bytes start in the file.
    pub file_offset: u64,
}

/// VM-wide KVM state.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// Master PIC (KVM_IRQCHIP_PIC_MASTER).
    pub pic_master: kvm_irqchip,
    /// Slave PIC.
    pub pic_slave: kvm_irqchip,
    /// IO-APIC.
    pub ioapic: kvm_irqchip,
    /// PIT channels.
    pub pit: kvm_pit_state2,
    /// kvm-clock.
    pub clock: kvm_clock_data,
}

/// One vCPU's KVM state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index (APIC id).
    pub id: u32,
    /// CPUID as set on the vCPU.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every MSR KVM saves for this vCPU (KVM_GET_MSR_INDEX_LIST) that it could read.
    pub msrs: Vec<kvm_msr_entry>,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE, AVX state (the 4 KiB legacy XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
    /// Runnable, halted, waiting for SIPI.
    pub mp_state: kvm_mp_state,
    /// TSC frequency in kHz (None where KVM cannot report it).
    pub tsc_khz: Option<u32>,
}

/// The emulated devices.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DevicesState {
    /// COM1.
    pub serial: SerialState,
    /// Whether the guest already said ready (console forwarding started).
    pub ready_sent: bool,
    /// virtio-mmio devices, in slot order (slot n at `virtio::slot(n)`).
    pub virtio: Vec<VirtioState>,
}

/// vm-superio's `SerialState`, with serde.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Input not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for vm_superio::serial::SerialState {
    fn from(s: &SerialState) -> Self {
        vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// One virtio-mmio device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VirtioState {
    /// What the device is.
    pub device: VirtioDeviceState,
    /// Its transport and queues.
    pub transport: TransportState,
}

/// The device behind a transport.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum VirtioDeviceState {
    /// virtio-blk.
    Block(DiskState),
    /// virtio-vsock (guest CID 3, host side: the restoring VMM's agent socket).
    Vsock,
    /// virtio-net: the MAC the guest read at probe. The restoring caller
    /// gives a tap (and MAC) of its own; telling the guest its new MAC and
    /// address is the caller's too (duet's guest agent, `Request::Network`):
    /// clones of one snapshot must not share either.
    Net {
        /// The saved device's MAC.
        mac: [u8; 6],
    },
}

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskState {
    /// The serial the guest sees.
    pub serial: String,
    /// Read-only disk.
    pub read_only: bool,
    /// Size in bytes (a read-only disk given at restore must have it).
    pub size: u64,
    /// For a writable disk: where its copy is in the file.
    pub copy: Option<FileRange>,
}

/// Bytes of the snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRange {
    /// Start.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// A virtio-mmio transport's registers and its queues.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// Device status.
    pub status: u32,
    /// Features the driver acknowledged.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Queues, in index order.
    pub queues: Vec<QueueState>,
}

/// virtio-queue's `QueueState`, with serde.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Next avail index the device reads.
    pub next_avail: u16,
    /// Next used index the device writes.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx_enabled: bool,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Avail ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
}

impl From<virtio_queue::QueueState> for QueueState {
    fn from(q: virtio_queue::QueueState) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<&QueueState> for virtio_queue::QueueState {
    fn from(q: &QueueState) -> Self {
        virtio_queue::QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl SnapshotState {
    /// Refuses a snapshot this VMM cannot restore on this host: another
    /// format or duet version, another CPU vendor or model.
    pub fn check_host(&self) -> Result<(), SnapshotError> {
        if self.format != FORMAT_VERSION {
            return Err(SnapshotError::Invalid(format!(
                "snapshot format {} (this duet reads format {FORMAT_VERSION})",
                self.format
            )));
        }
        let ours = env!("CARGO_PKG_VERSION");
        if self.duet_version != ours {
            return Err(SnapshotError::Invalid(format!(
                "the snapshot was written by duet {}, this is duet {ours}: take it again",
                self.duet_version
            )));
        }
        let cpu = HostCpu::current();
        if self.host != cpu {
            return Err(SnapshotError::Invalid(format!(
                "the snapshot was taken on a {}, this host has a {}: its CPUID and MSRs \
                 would not match what the guest saw",
                self.host.describe(),
                cpu.describe()
            )));
        }
        Ok(())
    }

    /// Checks what the rest of the state must agree with: RAM regions as
    /// duet lays them out for `memory_mib`, vCPUs numbered 0..n, devices
    /// within the virtio-mmio slots.
    pub fn check_shape(&self, file_len: u64) -> Result<(), SnapshotError> {
        let bad = |m: String| Err(SnapshotError::Invalid(m));
        if !(crate::memory::MIN_MEMORY_MIB..=crate::memory::MAX_MEMORY_MIB)
            .contains(&self.memory_mib)
        {
            return bad(format!("memory_mib {} is out of range", self.memory_mib));
        }
        let expected = crate::memory::ram_ranges(self.memory_mib);
        if expected.len() != self.memory.len()
            || expected
                .iter()
                .zip(&self.memory)
                .any(|((a, s), r)| a.0 != r.guest_addr || *s as u64 != r.size)
        {
            return bad("its RAM regions do not match its memory size".into());
        }
        for r in &self.memory {
            if r.file_offset % 4096 != 0
                || r.file_offset
                    .checked_add(r.size)
                    .is_none_or(|e| e > file_len)
            {
                return bad(format!(
                    "RAM region at {:#x} lies outside the file ({file_len} bytes): truncated?",
                    r.guest_addr
                ));
            }
        }
        if self.vcpus.is_empty()
            || self.vcpus.len() > crate::mptable::MAX_VCPUS as usize
            || self
                .vcpus
                .iter()
                .enumerate()
                .any(|(i, v)| v.id as usize != i)
        {
            return bad("its vCPUs are not numbered 0..n".into());
        }
        if self.devices.virtio.len() > crate::devices::virtio::MAX_DEVICES {
            return bad("it has more virtio devices than slots".into());
        }
        for v in &self.devices.virtio {
            if let VirtioDeviceState::Block(d) = &v.device {
                if let Some(c) = d.copy {
                    if c.offset.checked_add(c.len).is_none_or(|e| e > file_len) {
                        return bad(format!(
                            "the copy of disk {} lies outside the file: truncated?",
                            d.serial
                        ));
                    }
                }
                if d.read_only == d.copy.is_some() {
                    return bad(format!(
                        "disk {}: a writable disk needs its copy, a read-only one has none",
                        d.serial
                    ));
                }
            }
        }
        Ok(())
    }
}
