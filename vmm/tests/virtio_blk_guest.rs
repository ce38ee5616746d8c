//! virtio-blk through a real vCPU on the host's /dev/kvm: a tiny 64-bit
//! guest plays the driver. The test lays out the virtqueue in guest memory
//! (virtio-queue's mock driver) and a table of (MMIO address, value) register
//! writes; the guest performs the writes through real MMIO exits (probe,
//! feature negotiation, queue setup, QueueNotify) and exits with the
//! request's status byte plus the first data byte.
//! Skips (and says why) when /dev/kvm cannot be opened.

mod common;
use common::kvm_usable;
use duet_shared::report::RunReport;
use duet_shared::runtime::WorkloadExit;
use duet_vmm::devices::virtio::{self, BlockConfig};
use duet_vmm::{ConsoleConfig, ConsoleInput, ConsoleMode, CpuMode, Vm, VmEnd, VmOptions};
use std::io::Write;
use std::time::Duration;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const CODE: u64 = 0x10_0000;
const RINGS: u64 = 0x11_0000;
const HEADER: u64 = 0x12_0000;
const DATA: u64 = 0x12_1000;
const STATUS: u64 = 0x12_2000;
const TABLE: u64 = 0x13_0000;

/// Guest code that performs every (address, value) write of the table at
/// TABLE (ended by address 0), then loads `rdi` for what follows.
fn table_writes_then_rdi(rdi: u64) -> Vec<u8> {
    let mut c = vec![0x48, 0xbe]; // mov rsi, TABLE
    c.extend_from_slice(&TABLE.to_le_bytes());
    c.extend_from_slice(&[
        0x48, 0x8b, 0x3e, // loop: mov rdi, [rsi]
        0x48, 0x85, 0xff, // test rdi, rdi
        0x74, 0x0b, // jz done
        0x8b, 0x46, 0x08, // mov eax, [rsi+8]
        0x89, 0x07, // mov [rdi], eax
        0x48, 0x83, 0xc6, 0x10, // add rsi, 16
        0xeb, 0xed, // jmp loop
        0x48, 0xbf, // done: mov rdi, imm64
    ]);
    c.extend_from_slice(&rdi.to_le_bytes());
    c
}

/// The guest: performs the table's writes, then exits with [STATUS] + [DATA].
fn driver_code() -> Vec<u8> {
    let mut c = table_writes_then_rdi(STATUS);
    c.extend_from_slice(&[0x0f, 0xb6, 0x07]); // movzx eax, byte [rdi]
    c.extend_from_slice(&[0x0f, 0xb6, 0x8f]); // movzx ecx, byte [rdi + DATA - STATUS]
    c.extend_from_slice(&((DATA as i64 - STATUS as i64) as i32).to_le_bytes());
    c.extend_from_slice(&[
        0x01, 0xc8, // add eax, ecx
        0xba, 0x14, 0x05, 0x00, 0x00, // mov edx, 0x514 (exit port)
        0xef, // out dx, eax
        0xf4, // hlt
    ]);
    c
}

/// The register writes Linux's virtio_mmio driver makes to bring up queue 0
/// with its rings at [desc, avail, used] (and, if `notify`, to notify it).
fn register_writes(base: u64, rings: [GuestAddress; 3], notify: bool) -> Vec<(u64, u32)> {
    let s1 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
    let s2 = s1 | VIRTIO_CONFIG_S_DRIVER;
    let s3 = s2 | VIRTIO_CONFIG_S_FEATURES_OK;
    let mut w = vec![
        (VIRTIO_MMIO_STATUS, 0),
        (VIRTIO_MMIO_STATUS, s1),
        (VIRTIO_MMIO_STATUS, s2),
        (VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1),
        (VIRTIO_MMIO_DRIVER_FEATURES, 1), // VERSION_1
        (VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0),
        (VIRTIO_MMIO_DRIVER_FEATURES, 0),
        (VIRTIO_MMIO_STATUS, s3),
        (VIRTIO_MMIO_QUEUE_SEL, 0),
        (VIRTIO_MMIO_QUEUE_NUM, 16),
    ];
    for (reg, addr) in [
        VIRTIO_MMIO_QUEUE_DESC_LOW,
        VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        VIRTIO_MMIO_QUEUE_USED_LOW,
    ]
    .into_iter()
    .zip(rings)
    {
        w.push((reg, addr.0 as u32));
        w.push((reg + 4, (addr.0 >> 32) as u32));
    }
    w.push((VIRTIO_MMIO_QUEUE_READY, 1));
    w.push((VIRTIO_MMIO_STATUS, s3 | VIRTIO_CONFIG_S_DRIVER_OK));
    if notify {
        w.push((VIRTIO_MMIO_QUEUE_NOTIFY, 0));
    }
    w.into_iter()
        .map(|(reg, v)| (base + u64::from(reg), v))
        .collect()
}

/// Boots the driver guest against a 16-sector disk (sector n filled with
/// byte n) and one request chain `descs`; returns how the VM ended and its counters.
fn run_driver(
    header: [u8; 16],
    descs: &[(u64, u32, bool)],
) -> Option<(VmEnd, std::collections::BTreeMap<String, u64>)> {
    if !kvm_usable() {
        return None;
    }
    let mut disk = tempfile::NamedTempFile::new().unwrap();
    for s in 0..16u8 {
        disk.write_all(&[s; 512]).unwrap();
    }
    let mut vm = Vm::new(VmOptions {
        memory_mib: 2,
        vcpus: 1,
        irqchip: true,
        seccomp: true,
        shared_memory: false,
    })
    .expect("create VM");
    vm.attach_legacy_devices(ConsoleConfig {
        mode: ConsoleMode::Forward,
        sink: Box::new(std::io::sink()),
        input: ConsoleInput::None,
    })
    .unwrap();
    let options = vm
        .attach_disks(&[BlockConfig {
            path: disk.path().to_path_buf(),
            read_only: true,
            serial: "duet-layer-0".into(),
        }])
        .unwrap();
    assert_eq!(options, "virtio_mmio.device=4K@0xd0000000:5");
    let mem = vm.memory().clone();
    let mock = MockSplitQueue::create(&mem, GuestAddress(RINGS), 16);
    mem.write_slice(&header, GuestAddress(HEADER)).unwrap();
    mem.write_obj(0x77u8, GuestAddress(STATUS)).unwrap();
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, w))| {
            let last = i + 1 == descs.len();
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            RawDescriptor::from(Descriptor::new(addr, len, flags, i as u16 + 1))
        })
        .collect();
    mock.add_desc_chains(&raw, 0).unwrap();
    let (base, _irq) = virtio::slot(0).unwrap();
    let mut table = Vec::new();
    let rings = [mock.desc_table_addr(), mock.avail_addr(), mock.used_addr()];
    for (addr, v) in register_writes(base, rings, true) {
        table.extend_from_slice(&addr.to_le_bytes());
        table.extend_from_slice(&u64::from(v).to_le_bytes());
    }
    table.extend_from_slice(&[0u8; 16]);
    mem.write_slice(&table, GuestAddress(TABLE)).unwrap();
    vm.write_code(CODE, &driver_code()).unwrap();
    let cr3 = vm.setup_long_mode().unwrap();
    vm.create_vcpus(CpuMode::Long {
        rip: CODE,
        rsi: 0,
        cr3,
    })
    .unwrap();
    let mut report = RunReport::start("vm", "virtio", "none");
    let outcome = vm.run(Some(Duration::from_secs(60)), &mut report).unwrap();
    Some((outcome.end, outcome.counters))
}

fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

#[test]
fn a_guest_reads_a_sector_through_virtio_mmio() {
    let Some((end, c)) = run_driver(
        header(0, 5),
        &[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    ) else {
        return;
    };
    // status OK (0) + the sector's fill byte (5).
    assert_eq!(end, VmEnd::Exited(WorkloadExit::Code(5)), "{c:?}");
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.read_bytes"], 512);
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.notifies"], 1);
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.interrupts"], 1);
    // Every register write was one MMIO exit to the device.
    assert_eq!(c["vm_exits.mmio.virtio-blk.duet-layer-0"], 19);
}

#[test]
fn a_malformed_chain_from_the_guest_is_an_io_error_and_the_vm_goes_on() {
    // Write-only header, and a write to a read-only disk: IOERR (1) + untouched data (0).
    for descs in [
        [(HEADER, 16, true), (DATA, 512, true), (STATUS, 1, true)],
        [(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)],
    ] {
        let h = if descs[1].2 {
            header(0, 5)
        } else {
            header(1, 5)
        };
        let Some((end, c)) = run_driver(h, &descs) else {
            return;
        };
        assert_eq!(end, VmEnd::Exited(WorkloadExit::Code(1)), "{c:?}");
        assert_eq!(c["virtio.virtio-blk.duet-layer-0.errors"], 1);
        assert_eq!(c["virtio.virtio-blk.duet-layer-0.read_bytes"], 0);
    }
}

/// The hostile guest: performs the table's writes, then writes QueueNotify forever.
fn notify_forever_code(notify: u64) -> Vec<u8> {
    let mut c = table_writes_then_rdi(notify);
    c.extend_from_slice(&[
        0x31, 0xc0, // xor eax, eax
        0x89, 0x07, // spin: mov [rdi], eax
        0xeb, 0xfc, // jmp spin
    ]);
    c
}

/// The avail ring of the steering guest, and the header inside its 512 bytes.
const AVAIL: u64 = 0x14_0000;
const HEADER_IN_AVAIL: usize = 64;

#[test]
fn a_guest_that_steers_the_devices_dma_into_its_avail_ring_is_still_stopped_on_time() {
    if !kvm_usable() {
        return;
    }
    // 65536 sectors: sector s, read over the avail ring, makes request s + 1
    // available (idx s + 2, wrapping like the index) and points the header,
    // which sits in the same 512 bytes, at sector s + 1. Once started, the
    // queue is never empty: an endless stream of requests from one notify.
    const SECTORS: usize = 1 << 16;
    let mut image = vec![0u8; SECTORS * 512];
    for (s, sector) in image.chunks_mut(512).enumerate() {
        sector[2..4].copy_from_slice(&((s + 2) as u16).to_le_bytes());
        let h = header(0, ((s + 1) % SECTORS) as u64);
        sector[HEADER_IN_AVAIL..HEADER_IN_AVAIL + 16].copy_from_slice(&h);
    }
    let mut disk = tempfile::NamedTempFile::new().unwrap();
    disk.write_all(&image).unwrap();
    let mut vm = Vm::new(VmOptions {
        memory_mib: 2,
        vcpus: 1,
        irqchip: true,
        seccomp: true,
        shared_memory: false,
    })
    .expect("create VM");
    vm.attach_legacy_devices(ConsoleConfig {
        mode: ConsoleMode::Forward,
        sink: Box::new(std::io::sink()),
        input: ConsoleInput::None,
    })
    .unwrap();
    vm.attach_disks(&[BlockConfig {
        path: disk.path().to_path_buf(),
        read_only: true,
        serial: "duet-layer-0".into(),
    }])
    .unwrap();
    let mem = vm.memory().clone();
    let mock = MockSplitQueue::create(&mem, GuestAddress(RINGS), 16);
    let chain = [
        (AVAIL + HEADER_IN_AVAIL as u64, 16, 0),
        (AVAIL, 512, VRING_DESC_F_WRITE),
        (STATUS, 1, VRING_DESC_F_WRITE),
    ];
    let raw: Vec<RawDescriptor> = chain
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, w))| {
            let flags = if i + 1 < chain.len() {
                w | VRING_DESC_F_NEXT
            } else {
                w
            };
            RawDescriptor::from(Descriptor::new(addr, len, flags as u16, i as u16 + 1))
        })
        .collect();
    mock.add_desc_chains(&raw, 0).unwrap();
    mem.write_slice(&image[..512], GuestAddress(AVAIL)).unwrap();
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    let (base, _irq) = virtio::slot(0).unwrap();
    let rings = [
        mock.desc_table_addr(),
        GuestAddress(AVAIL),
        mock.used_addr(),
    ];
    let mut table = Vec::new();
    for (addr, v) in register_writes(base, rings, false) {
        table.extend_from_slice(&addr.to_le_bytes());
        table.extend_from_slice(&u64::from(v).to_le_bytes());
    }
    table.extend_from_slice(&[0u8; 16]);
    mem.write_slice(&table, GuestAddress(TABLE)).unwrap();
    vm.write_code(
        CODE,
        &notify_forever_code(base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY)),
    )
    .unwrap();
    let cr3 = vm.setup_long_mode().unwrap();
    vm.create_vcpus(CpuMode::Long {
        rip: CODE,
        rsi: 0,
        cr3,
    })
    .unwrap();
    let mut report = RunReport::start("vm", "virtio", "none");
    let timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let outcome = vm
        .run(Some(timeout), &mut report)
        .expect("the VM stops within the grace period");
    let took = started.elapsed();
    let c = outcome.counters;
    assert_eq!(outcome.end, VmEnd::Timeout(timeout), "{c:?}");
    assert!(took < timeout + Duration::from_secs(2), "took {took:?}");
    let requests = c["virtio.virtio-blk.duet-layer-0.requests"];
    let notifies = c["virtio.virtio-blk.duet-layer-0.notifies"];
    assert!(requests > 16, "the guest kept the device busy: {c:?}");
    assert!(
        requests <= 16 * notifies,
        "at most a queue's worth per notify: {c:?}"
    );
}
