//! Property tests: virtio-blk against random descriptor tables and avail
//! rings, as a hostile driver could lay them out. Whatever the rings say,
//! the device never panics, writes guest memory only where the used ring
//! is or a device-writable descriptor of the table points, never changes
//! the disk's size, and serves at most one queue's worth of chains per call.
//! A second property drives the MMIO transport with random register
//! accesses. Each test asserts how many cases ran.

use super::*;
use crate::bus::BusDevice;
use crate::devices::virtio::mmio::MmioTransport;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use virtio_queue::desc::split::Descriptor;

/// Requests served and data bytes moved over all cases (the generator must
/// reach real work, not only malformed rings).
static SERVED: AtomicU64 = AtomicU64::new(0);
static MOVED: AtomicU64 = AtomicU64::new(0);
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM: two regions with a hole between them.
const REGIONS: [(u64, usize); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const MAX_QUEUE: u16 = 32;
const DISK_SECTORS: u64 = 64;

#[derive(Debug, Clone)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
    /// A request header written at `addr` first: (type, sector).
    header: Option<(u32, u64)>,
}

#[derive(Debug, Clone)]
struct Case {
    size_log2: u32,
    event_idx: bool,
    read_only: bool,
    descs: Vec<Desc>,
    avail_flags: u16,
    /// How far avail.idx runs ahead of the device: taken modulo size + 1,
    /// unless `wild` (then more than the size is likely, an error).
    ahead: u16,
    wild: bool,
    ring: Vec<u16>,
    used_event: u16,
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0x3000u64..0x1_0000,
        3 => 0x2_0000u64..0x3_0000,
        1 => 0u64..0x3000,
        1 => 0x1_0000u64..0x2_0000,
        1 => 0x2_f000u64..0x4_0000,
        1 => any::<u64>(),
    ]
}

fn desc() -> impl Strategy<Value = Desc> {
    (
        addr(),
        prop_oneof![
            3 => 0u32..64,
            3 => 500u32..1100,
            1 => Just(512u32),
            1 => any::<u32>(),
        ],
        prop_oneof![4 => 0u16..8, 1 => any::<u16>()],
        0u16..MAX_QUEUE + 4,
        proptest::option::of((
            prop_oneof![Just(0u32), Just(1), Just(4), Just(8), any::<u32>()],
            prop_oneof![3 => 0u64..DISK_SECTORS + 4, 1 => any::<u64>()],
        )),
    )
        .prop_map(|(addr, len, flags, next, header)| Desc {
            addr,
            len,
            flags,
            next,
            header,
        })
}

/// A buffer address in RAM with room for 2 KiB.
fn ram_addr() -> impl Strategy<Value = u64> {
    prop_oneof![0x3000u64..0xe000, 0x2_0000u64..0x2_e000]
}

/// Tables of header, data and status triples (a well-formed driver's
/// layout), with about one descriptor in eight replaced by a random one.
fn plausible_table() -> impl Strategy<Value = Vec<Desc>> {
    let slot = (
        desc(),
        0u8..8,
        ram_addr(),
        1u32..4,
        any::<bool>(),
        0u64..DISK_SECTORS,
    );
    proptest::collection::vec(slot, MAX_QUEUE as usize).prop_map(|slots| {
        slots
            .into_iter()
            .enumerate()
            .map(|(i, (random, pick, addr, k, write, sector))| {
                let next = i as u16 + 1;
                let (len, flags, header) = match (pick, i % 3) {
                    (0, _) => return random,
                    (_, 0) => (16, VRING_DESC_F_NEXT, Some((u32::from(write), sector))),
                    (_, 1) if write => (512 * k, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, None),
                    (_, 1) => (512 * k, VRING_DESC_F_NEXT, None),
                    _ => (1, VRING_DESC_F_WRITE, None),
                };
                Desc {
                    addr,
                    len,
                    flags: flags as u16,
                    next,
                    header,
                }
            })
            .collect()
    })
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![1 => 0u32..2, 4 => 2u32..6],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            proptest::collection::vec(desc(), MAX_QUEUE as usize),
            plausible_table(),
        ],
        any::<u16>(),
        (any::<u16>(), proptest::bool::weighted(0.1)),
        proptest::collection::vec(
            prop_oneof![
                4 => (0u16..MAX_QUEUE / 3).prop_map(|k| 3 * k),
                4 => 0u16..MAX_QUEUE,
                1 => any::<u16>(),
            ],
            MAX_QUEUE as usize,
        ),
        any::<u16>(),
    )
        .prop_map(
            |(
                size_log2,
                event_idx,
                read_only,
                descs,
                avail_flags,
                (ahead, wild),
                ring,
                used_event,
            )| {
                Case {
                    size_log2,
                    event_idx,
                    read_only,
                    descs,
                    avail_flags,
                    ahead,
                    wild,
                    ring,
                    used_event,
                }
            },
        )
}

fn memory() -> GuestMemory {
    let ranges: Vec<_> = REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    GuestMemory::from_ranges(&ranges).unwrap()
}

fn snapshot(mem: &GuestMemory) -> Vec<Vec<u8>> {
    REGIONS
        .iter()
        .map(|&(a, l)| {
            let mut v = vec![0u8; l];
            mem.read_slice(&mut v, GuestAddress(a)).unwrap();
            v
        })
        .collect()
}

fn disk(read_only: bool) -> (tempfile::NamedTempFile, Block) {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(DISK_SECTORS * SECTOR_SIZE).unwrap();
    let b = Block::open(&BlockConfig {
        path: f.path().to_path_buf(),
        read_only,
        serial: "prop".into(),
    })
    .unwrap();
    (f, b)
}

fn avail_idx(case: &Case) -> u16 {
    if case.wild {
        case.ahead
    } else {
        case.ahead % ((1 << case.size_log2) + 1)
    }
}

/// Lays `case` out in guest memory; returns the queue the device sees.
fn lay_out(case: &Case, mem: &GuestMemory) -> Queue {
    let size = 1u16 << case.size_log2;
    for (i, d) in case.descs.iter().take(size as usize).enumerate() {
        if let Some((kind, sector)) = d.header {
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            // Only where it fits in RAM (and not over the rings' own descriptors).
            let _ = mem.write_slice(&h, GuestAddress(d.addr));
        }
        let raw = Descriptor::new(d.addr, d.len, d.flags, d.next);
        mem.write_obj(raw, GuestAddress(DESC + 16 * i as u64))
            .unwrap();
    }
    mem.write_obj(case.avail_flags, GuestAddress(AVAIL))
        .unwrap();
    mem.write_obj(avail_idx(case), GuestAddress(AVAIL + 2))
        .unwrap();
    for (i, &head) in case.ring.iter().take(size as usize).enumerate() {
        // Mostly heads inside the table; the rest (a head past it fails the queue) as drawn.
        let head = if head < 0x8000 { head % size } else { head };
        mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * i as u64))
            .unwrap();
    }
    mem.write_obj(
        case.used_event,
        GuestAddress(AVAIL + 4 + 2 * u64::from(size)),
    )
    .unwrap();
    let mut q = Queue::new(MAX_QUEUE).unwrap();
    q.try_set_size(size).unwrap();
    q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
    q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
    q.set_event_idx(case.event_idx);
    q.set_ready(true);
    assert!(q.is_valid(mem));
    q
}

/// Whether the device may have written guest byte `at`: the used ring (with
/// avail_event), or inside a device-writable descriptor of the table.
fn may_write(case: &Case, size: u16, at: u64) -> bool {
    let used_end = USED + 4 + 8 * u64::from(size) + 2;
    (USED..used_end).contains(&at)
        || case.descs.iter().take(size as usize).any(|d| {
            d.flags & VRING_DESC_F_WRITE as u16 != 0
                && at >= d.addr
                && at - d.addr < u64::from(d.len)
        })
}

fn check(case: Case) -> Result<(), TestCaseError> {
    let mem = memory();
    let (f, mut blk) = disk(case.read_only);
    let mut q = lay_out(&case, &mem);
    let size = q.size();
    let before = snapshot(&mem);
    let result = blk.process_queue(0, &mut q, &mem);
    let c = blk.counters();
    let requests = c["virtio.virtio-blk.prop.requests"];
    prop_assert!(
        requests <= u64::from(size),
        "{requests} requests, queue of {size}"
    );
    if avail_idx(&case) > size {
        prop_assert!(
            result.is_err(),
            "avail index {} ahead of {size}",
            avail_idx(&case)
        );
    }
    SERVED.fetch_add(requests, Ordering::Relaxed);
    MOVED.fetch_add(
        c["virtio.virtio-blk.prop.read_bytes"] + c["virtio.virtio-blk.prop.write_bytes"],
        Ordering::Relaxed,
    );
    let after = snapshot(&mem);
    for (r, (b, a)) in REGIONS.iter().zip(before.iter().zip(&after)) {
        for (i, (x, y)) in b.iter().zip(a).enumerate() {
            if x != y {
                let at = r.0 + i as u64;
                prop_assert!(may_write(&case, size, at), "byte {at:#x} written");
            }
        }
    }
    prop_assert_eq!(
        f.as_file().metadata().unwrap().len(),
        DISK_SECTORS * SECTOR_SIZE
    );
    Ok(())
}

fn run_cases<S: Strategy>(
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u32 {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let ran = Cell::new(0u32);
    let result = runner.run(&strategy, |v| {
        ran.set(ran.get() + 1);
        test(v)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    ran.get()
}

#[test]
fn random_descriptor_tables_and_avail_rings_stay_inside_what_the_driver_offered() {
    let ran = run_cases(512, case(), check);
    let (served, moved) = (
        SERVED.load(Ordering::Relaxed),
        MOVED.load(Ordering::Relaxed),
    );
    eprintln!(
        "virtio-blk descriptor chains: {ran} random cases, {served} requests, {moved} bytes moved"
    );
    assert_eq!(ran, 512);
    assert!(served > 0 && moved > 0);
}

/// One register access: (offset, value, is_write).
fn access() -> impl Strategy<Value = (u64, u32, bool)> {
    let reg = prop_oneof![
        Just(VIRTIO_MMIO_STATUS),
        Just(VIRTIO_MMIO_QUEUE_NOTIFY),
        Just(VIRTIO_MMIO_QUEUE_NUM),
        Just(VIRTIO_MMIO_QUEUE_READY),
        Just(VIRTIO_MMIO_QUEUE_SEL),
        Just(VIRTIO_MMIO_DRIVER_FEATURES),
        Just(VIRTIO_MMIO_DRIVER_FEATURES_SEL),
        Just(VIRTIO_MMIO_QUEUE_DESC_LOW),
        Just(VIRTIO_MMIO_QUEUE_AVAIL_LOW),
        Just(VIRTIO_MMIO_QUEUE_USED_LOW),
        Just(VIRTIO_MMIO_QUEUE_USED_HIGH),
        Just(VIRTIO_MMIO_INTERRUPT_ACK),
        Just(VIRTIO_MMIO_INTERRUPT_STATUS),
        0u32..0x200,
    ];
    let value = prop_oneof![
        0u32..16,
        Just(0x3000),
        Just(0x2_0000),
        Just(0xf),
        Just(1 << 0),
        any::<u32>(),
    ];
    (reg, value, any::<bool>()).prop_map(|(r, v, w)| (u64::from(r), v, w))
}

use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

#[test]
fn random_register_accesses_never_panic_and_each_does_bounded_work() {
    let strategy = (case(), proptest::collection::vec(access(), 1..200));
    let ran = run_cases(256, strategy, |(case, accesses)| {
        let mem = memory();
        let _ = lay_out(&case, &mem);
        let (_f, blk) = disk(case.read_only);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t = MmioTransport::new(blk, mem.clone(), irq);
        let mut last = 0;
        for (offset, v, write) in accesses {
            if write {
                t.write(0, offset, &v.to_le_bytes());
            } else {
                let mut d = [0u8; 4];
                t.read(0, offset, &mut d);
            }
            let now = t.counters()["virtio.virtio-blk.prop.requests"];
            prop_assert!(now - last <= u64::from(QUEUE_SIZE));
            last = now;
        }
        Ok(())
    });
    eprintln!("virtio-mmio register sequences: {ran} random cases");
    assert_eq!(ran, 256);
}
