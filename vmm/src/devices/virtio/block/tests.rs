//! virtio-blk and the virtio-mmio transport against virtio-queue's mock
//! driver (`MockSplitQueue`): well-formed requests of every kind, any
//! framing, and malformed chains that must end in an error status, never a
//! panic.

use super::*;
use crate::bus::BusDevice;
use crate::devices::virtio::mmio::{MmioTransport, MAGIC, VERSION};
use std::io::{Read, Seek, SeekFrom, Write};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vmm_sys_util::eventfd::EventFd;

const QLEN: u16 = 16;
const SECTORS: u64 = 64;
/// Guest buffers live from here on (the mock rings sit at 0).
const BUF: u64 = 0x10_0000;
const MEM_END: u64 = 0x100_0000;

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
}

/// A disk whose sector n is filled with the byte n.
fn disk(read_only: bool) -> (tempfile::NamedTempFile, Block) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for s in 0..SECTORS {
        f.write_all(&[s as u8; SECTOR_SIZE as usize]).unwrap();
    }
    let b = Block::open(&BlockConfig {
        path: f.path().to_path_buf(),
        read_only,
        serial: "duet-layer-0".into(),
    })
    .unwrap();
    (f, b)
}

fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

/// One descriptor: (guest address, length, device-writable).
type D = (u64, u32, bool);

/// Puts one chain of `descs` at descriptor index `first` and makes it available.
fn submit(q: &MockSplitQueue<GuestMemory>, first: u16, descs: &[D]) {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, w))| {
            let last = i + 1 == descs.len();
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { first + i as u16 + 1 };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect();
    q.add_desc_chains(&raw, first).unwrap();
}

/// Runs the device on the queue; returns the used elements (id, len) added.
fn run(
    block: &mut Block,
    mock: &MockSplitQueue<GuestMemory>,
    mem: &GuestMemory,
) -> Vec<(u32, u32)> {
    let mut q: Queue = mock.create_queue().unwrap();
    block.process_queue(0, &mut q, mem).unwrap();
    used(mock)
}

fn used(mock: &MockSplitQueue<GuestMemory>) -> Vec<(u32, u32)> {
    let n = mock.used().idx().load();
    (0..n)
        .map(|i| {
            let e = mock.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

fn byte(mem: &GuestMemory, at: u64) -> u8 {
    mem.read_obj(GuestAddress(at)).unwrap()
}

fn bytes(mem: &GuestMemory, at: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(at)).unwrap();
    v
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn read_spanning_several_buffers() {
    let mem = memory();
    let (_f, mut blk) = disk(true);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 3), GuestAddress(BUF))
        .unwrap();
    // Data in three buffers of different sizes, not contiguous, then the status.
    submit(
        &mock,
        0,
        &[
            (BUF, 16, false),
            (BUF + 0x1000, 512, true),
            (BUF + 0x3000, 1024, true),
            (BUF + 0x2000, 512, true),
            (BUF + 0x5000, 1, true),
        ],
    );
    assert_eq!(run(&mut blk, &mock, &mem), vec![(0, 2049)]);
    assert_eq!(byte(&mem, BUF + 0x5000), OK);
    assert_eq!(bytes(&mem, BUF + 0x1000, 512), vec![3u8; 512]);
    assert_eq!(bytes(&mem, BUF + 0x3000, 512), vec![4u8; 512]);
    assert_eq!(bytes(&mem, BUF + 0x3200, 512), vec![5u8; 512]);
    assert_eq!(bytes(&mem, BUF + 0x2000, 512), vec![6u8; 512]);
    let c = blk.counters();
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.read_bytes"], 2048);
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.errors"], 0);
}

#[test]
fn any_framing_header_split_and_status_inside_the_data_buffer() {
    let mem = memory();
    let (_f, mut blk) = disk(true);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    let h = header(VIRTIO_BLK_T_IN, 9);
    mem.write_slice(&h[..8], GuestAddress(BUF)).unwrap();
    mem.write_slice(&h[8..], GuestAddress(BUF + 0x100)).unwrap();
    submit(
        &mock,
        0,
        &[
            (BUF, 8, false),
            (BUF + 0x100, 8, false),
            (BUF + 0x1000, 513, true),
        ],
    );
    assert_eq!(run(&mut blk, &mock, &mem), vec![(0, 513)]);
    assert_eq!(bytes(&mem, BUF + 0x1000, 512), vec![9u8; 512]);
    assert_eq!(byte(&mem, BUF + 0x1000 + 512), OK);
}

#[test]
fn write_reaches_the_file_and_flush_succeeds() {
    let mem = memory();
    let (mut f, mut blk) = disk(false);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    mem.write_slice(&header(VIRTIO_BLK_T_OUT, 2), GuestAddress(BUF))
        .unwrap();
    mem.write_slice(&[0xaa; 512], GuestAddress(BUF + 0x1000))
        .unwrap();
    mem.write_slice(&[0xbb; 512], GuestAddress(BUF + 0x2000))
        .unwrap();
    mem.write_slice(&header(VIRTIO_BLK_T_FLUSH, 0), GuestAddress(BUF + 0x3000))
        .unwrap();
    submit(
        &mock,
        0,
        &[
            (BUF, 16, false),
            (BUF + 0x1000, 512, false),
            (BUF + 0x2000, 512, false),
            (BUF + 0x4000, 1, true),
        ],
    );
    submit(
        &mock,
        4,
        &[(BUF + 0x3000, 16, false), (BUF + 0x4001, 1, true)],
    );
    assert_eq!(run(&mut blk, &mock, &mem), vec![(0, 1), (4, 1)]);
    assert_eq!(
        (byte(&mem, BUF + 0x4000), byte(&mem, BUF + 0x4001)),
        (OK, OK)
    );
    let mut back = vec![0u8; 3 * 512];
    f.as_file_mut().seek(SeekFrom::Start(512)).unwrap();
    f.as_file_mut().read_exact(&mut back).unwrap();
    assert_eq!(&back[..512], &[1u8; 512][..], "sector 1 untouched");
    assert_eq!(&back[512..1024], &[0xaa; 512][..]);
    assert_eq!(&back[1024..], &[0xbb; 512][..]);
    let c = blk.counters();
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.write_bytes"], 1024);
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.flushes"], 1);
}

#[test]
fn write_to_a_read_only_disk_is_an_io_error() {
    let mem = memory();
    let (mut f, mut blk) = disk(true);
    assert_ne!(blk.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(blk.features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    mem.write_slice(&header(VIRTIO_BLK_T_OUT, 0), GuestAddress(BUF))
        .unwrap();
    mem.write_slice(&[0xee; 512], GuestAddress(BUF + 0x1000))
        .unwrap();
    submit(
        &mock,
        0,
        &[
            (BUF, 16, false),
            (BUF + 0x1000, 512, false),
            (BUF + 0x2000, 1, true),
        ],
    );
    assert_eq!(run(&mut blk, &mock, &mem), vec![(0, 1)]);
    assert_eq!(byte(&mem, BUF + 0x2000), IOERR);
    let mut first = [0u8; 512];
    f.as_file_mut().seek(SeekFrom::Start(0)).unwrap();
    f.as_file_mut().read_exact(&mut first).unwrap();
    assert_eq!(first, [0u8; 512], "the file is unchanged");
    assert_eq!(blk.counters()["virtio.virtio-blk.duet-layer-0.errors"], 1);
}

#[test]
fn get_id_returns_the_serial_nul_padded() {
    let mem = memory();
    let (_f, mut blk) = disk(true);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    mem.write_slice(&header(VIRTIO_BLK_T_GET_ID, 0), GuestAddress(BUF))
        .unwrap();
    mem.write_slice(&[0xff; 20], GuestAddress(BUF + 0x1000))
        .unwrap();
    submit(
        &mock,
        0,
        &[
            (BUF, 16, false),
            (BUF + 0x1000, 20, true),
            (BUF + 0x2000, 1, true),
        ],
    );
    assert_eq!(run(&mut blk, &mock, &mem), vec![(0, 21)]);
    assert_eq!(byte(&mem, BUF + 0x2000), OK);
    let mut want = b"duet-layer-0".to_vec();
    want.resize(20, 0);
    assert_eq!(bytes(&mem, BUF + 0x1000, 20), want);
}

/// Submits one chain and returns (used len, status byte at `status`).
fn one(blk: &mut Block, mem: &GuestMemory, descs: &[D], status: u64) -> (u32, u8) {
    let mock = MockSplitQueue::create(mem, GuestAddress(0), QLEN);
    mem.write_obj(0x77u8, GuestAddress(status)).unwrap();
    submit(&mock, 0, descs);
    let u = run(blk, &mock, mem);
    assert_eq!(u.len(), 1, "exactly one used element");
    (u[0].1, byte(mem, status))
}

#[test]
fn malformed_requests_get_an_error_status() {
    let mem = memory();
    let (_f, mut blk) = disk(false);
    let st = BUF + 0x8000;
    let status_desc = (st, 1, true);

    // Sector past the end, and a sector number that overflows.
    for sector in [SECTORS, SECTORS - 1, u64::MAX] {
        mem.write_slice(&header(VIRTIO_BLK_T_IN, sector), GuestAddress(BUF))
            .unwrap();
        let r = one(
            &mut blk,
            &mem,
            &[(BUF, 16, false), (BUF + 0x1000, 1024, true), status_desc],
            st,
        );
        assert_eq!(r, (1, IOERR), "sector {sector}");
    }
    // The last sector itself is fine.
    mem.write_slice(&header(VIRTIO_BLK_T_IN, SECTORS - 1), GuestAddress(BUF))
        .unwrap();
    let r = one(
        &mut blk,
        &mem,
        &[(BUF, 16, false), (BUF + 0x1000, 512, true), status_desc],
        st,
    );
    assert_eq!(r, (513, OK));

    // A write-only header: the device cannot read a request at all.
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 0), GuestAddress(BUF))
        .unwrap();
    let r = one(
        &mut blk,
        &mem,
        &[(BUF, 16, true), (BUF + 0x1000, 512, true), status_desc],
        st,
    );
    assert_eq!(r, (1, IOERR), "write-only header");

    // A header shorter than 16 bytes.
    let r = one(&mut blk, &mem, &[(BUF, 8, false), status_desc], st);
    assert_eq!(r, (1, IOERR), "short header");

    // Data that is not a whole number of sectors.
    let r = one(
        &mut blk,
        &mem,
        &[(BUF, 16, false), (BUF + 0x1000, 100, true), status_desc],
        st,
    );
    assert_eq!(r, (1, IOERR), "partial sector");

    // A readable descriptor after a writable one.
    mem.write_slice(&header(VIRTIO_BLK_T_OUT, 0), GuestAddress(BUF))
        .unwrap();
    let r = one(
        &mut blk,
        &mem,
        &[
            (BUF, 16, false),
            (BUF + 0x2000, 1, true),
            (BUF + 0x1000, 512, false),
            status_desc,
        ],
        st,
    );
    assert_eq!(r, (1, IOERR), "misordered");

    // A data buffer outside guest memory.
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 0), GuestAddress(BUF))
        .unwrap();
    let r = one(
        &mut blk,
        &mem,
        &[(BUF, 16, false), (MEM_END - 256, 512, true), status_desc],
        st,
    );
    assert_eq!(r, (1, IOERR), "buffer past guest memory");

    // An unknown request type.
    mem.write_slice(&header(0x77, 0), GuestAddress(BUF))
        .unwrap();
    let r = one(&mut blk, &mem, &[(BUF, 16, false), status_desc], st);
    assert_eq!(r, (1, VIRTIO_BLK_S_UNSUPP as u8), "unknown type");

    let c = blk.counters();
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.errors"], 9);
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.malformed"], 0);
}

#[test]
fn a_chain_without_a_status_byte_is_returned_empty() {
    let mem = memory();
    let (_f, mut blk) = disk(false);
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 0), GuestAddress(BUF))
        .unwrap();
    // Only readable descriptors: nowhere to write a status.
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    submit(&mock, 0, &[(BUF, 16, false), (BUF + 0x1000, 512, false)]);
    // A status descriptor outside guest memory.
    submit(&mock, 2, &[(BUF, 16, false), (MEM_END + 0x1000, 1, true)]);
    // The device keeps serving the next, well-formed request.
    submit(
        &mock,
        4,
        &[
            (BUF, 16, false),
            (BUF + 0x1000, 512, true),
            (BUF + 0x2000, 1, true),
        ],
    );
    assert_eq!(run(&mut blk, &mock, &mem), vec![(0, 0), (2, 0), (4, 513)]);
    assert_eq!(byte(&mem, BUF + 0x2000), OK);
    assert_eq!(
        blk.counters()["virtio.virtio-blk.duet-layer-0.malformed"],
        2
    );
}

#[test]
fn a_looping_chain_ends() {
    let mem = memory();
    let (_f, mut blk) = disk(false);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    // Descriptor 0 names itself as next: the chain is cut at the queue size.
    let d = SplitDescriptor::new(BUF, 16, VRING_DESC_F_NEXT as u16, 0);
    mock.add_desc_chains(&[RawDescriptor::from(d)], 0).unwrap();
    assert_eq!(run(&mut blk, &mock, &mem), vec![(0, 0)]);
}

#[test]
fn an_avail_index_far_ahead_fails_the_queue_not_the_vmm() {
    let mem = memory();
    let (_f, mut blk) = disk(false);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    mock.avail().idx().store(QLEN + 5);
    let mut q: Queue = mock.create_queue().unwrap();
    let err = blk.process_queue(0, &mut q, &mem).unwrap_err();
    assert!(err.to_string().contains("virtio-blk.duet-layer-0"), "{err}");
}

#[test]
fn open_checks_serial_and_size() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(1000).unwrap();
    let cfg = |serial: &str| BlockConfig {
        path: f.path().to_path_buf(),
        read_only: true,
        serial: serial.into(),
    };
    assert!(matches!(
        Block::open(&cfg("x")),
        Err(BlockError::Size { .. })
    ));
    assert!(matches!(
        Block::open(&cfg("a-serial-longer-than-20")),
        Err(BlockError::Serial(_))
    ));
    assert!(matches!(
        Block::open(&cfg("has space")),
        Err(BlockError::Serial(_))
    ));
    let missing = BlockConfig {
        path: "/nonexistent/disk.img".into(),
        read_only: true,
        serial: "d".into(),
    };
    let e = Block::open(&missing).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
}

// --- the transport, driven the way Linux's virtio_mmio driver does ----------

fn rd(t: &mut MmioTransport<Block>, reg: u32) -> u32 {
    let mut d = [0u8; 4];
    t.read(0, u64::from(reg), &mut d);
    u32::from_le_bytes(d)
}

fn wr(t: &mut MmioTransport<Block>, reg: u32, v: u32) {
    t.write(0, u64::from(reg), &v.to_le_bytes());
}

/// Probes, negotiates `features` and sets up queue 0 on `mock`'s rings.
fn bring_up(
    t: &mut MmioTransport<Block>,
    mock: &MockSplitQueue<GuestMemory>,
    features: u64,
) -> u32 {
    assert_eq!(rd(t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
    assert_eq!(rd(t, VIRTIO_MMIO_VERSION), VERSION);
    assert_eq!(rd(t, VIRTIO_MMIO_DEVICE_ID), 2);
    wr(t, VIRTIO_MMIO_STATUS, 0);
    wr(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    wr(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
    wr(t, VIRTIO_MMIO_STATUS, s);
    let status = rd(t, VIRTIO_MMIO_STATUS);
    if status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
        return status;
    }
    setup_queue(
        t,
        u32::from(QLEN),
        [
            mock.desc_table_addr().0,
            mock.avail_addr().0,
            mock.used_addr().0,
        ],
    );
    wr(t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
    rd(t, VIRTIO_MMIO_STATUS)
}

/// Programs queue 0 with `num` entries and rings at [desc, avail, used],
/// then writes QueueReady = 1; returns what QueueReady reads back.
fn setup_queue(t: &mut MmioTransport<Block>, num: u32, rings: [u64; 3]) -> u32 {
    wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(rd(t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(rd(t, VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    wr(t, VIRTIO_MMIO_QUEUE_NUM, num);
    for (lo, addr) in [
        VIRTIO_MMIO_QUEUE_DESC_LOW,
        VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        VIRTIO_MMIO_QUEUE_USED_LOW,
    ]
    .into_iter()
    .zip(rings)
    {
        wr(t, lo, addr as u32);
        wr(t, lo + 4, (addr >> 32) as u32);
    }
    wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    rd(t, VIRTIO_MMIO_QUEUE_READY)
}

fn transport(
    read_only: bool,
) -> (
    tempfile::NamedTempFile,
    MmioTransport<Block>,
    EventFd,
    GuestMemory,
) {
    let mem = memory();
    let (f, blk) = disk(read_only);
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(blk, mem.clone(), irq.try_clone().unwrap());
    (f, t, irq, mem)
}

#[test]
fn transport_negotiates_and_serves_a_notified_queue() {
    let (_f, mut t, irq, mem) = transport(true);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
        1,
        "VERSION_1 (bit 32)"
    );
    wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let low = rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES);
    assert_ne!(low & (1 << VIRTIO_BLK_F_RO), 0);
    // Config space: capacity in sectors, read in two 32-bit halves like Linux does.
    let mut cap = [0u8; 4];
    t.read(0, 0x100, &mut cap);
    assert_eq!(u32::from_le_bytes(cap), SECTORS as u32);
    t.read(0, 0x104, &mut cap);
    assert_eq!(u32::from_le_bytes(cap), 0);

    let features = F_VERSION_1 | u64::from(low);
    let status = bring_up(&mut t, &mock, features);
    assert_ne!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0, "status {status:#x}");
    assert_eq!(t.acked_features(), features);

    mem.write_slice(&header(VIRTIO_BLK_T_IN, 1), GuestAddress(BUF))
        .unwrap();
    submit(
        &mock,
        0,
        &[
            (BUF, 16, false),
            (BUF + 0x1000, 512, true),
            (BUF + 0x2000, 1, true),
        ],
    );
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(irq.read().unwrap(), 1, "one interrupt");
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(used(&mock), vec![(0, 513)]);
    assert_eq!(bytes(&mem, BUF + 0x1000, 512), vec![1u8; 512]);
    let c = t.counters();
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.notifies"], 1);
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.interrupts"], 1);
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.requests"], 1);

    // Reset brings everything back to square one.
    wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(t.acked_features(), 0);
}

#[test]
fn transport_refuses_features_without_version_1_or_not_offered() {
    let (_f, mut t, _irq, mem) = transport(true);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    let status = bring_up(&mut t, &mock, 0);
    assert_eq!(
        status & VIRTIO_CONFIG_S_FEATURES_OK,
        0,
        "legacy driver refused"
    );
    let status = bring_up(&mut t, &mock, F_VERSION_1 | (1 << VIRTIO_BLK_F_FLUSH));
    assert_eq!(
        status & VIRTIO_CONFIG_S_FEATURES_OK,
        0,
        "FLUSH is not offered on RO"
    );
    let status = bring_up(&mut t, &mock, F_VERSION_1);
    assert_ne!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
}

#[test]
fn transport_marks_a_broken_queue_needs_reset_and_keeps_running() {
    let (_f, mut t, irq, mem) = transport(false);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    let status = bring_up(&mut t, &mock, F_VERSION_1 | F_EVENT_IDX);
    assert_ne!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    mock.avail().idx().store(QLEN * 3);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_ne!(
        rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(irq.read().unwrap(), 1);
    // Further notifies are ignored until a reset, not served from a bad queue.
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(
        t.counters()["virtio.virtio-blk.duet-layer-0.queue_failures"],
        1
    );
    // Nonsense accesses are counted, not fatal.
    t.write(0, 0x51, &[1]);
    let mut d = [0u8; 2];
    t.read(0, 0x70, &mut d);
    wr(&mut t, 0x300, 5);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 9);
    assert!(t.counters()["virtio.virtio-blk.duet-layer-0.ignored_accesses"] >= 4);
    // After a reset the device works again.
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x8000), QLEN);
    let status = bring_up(&mut t, &mock, F_VERSION_1);
    assert_eq!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_ne!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
}

#[test]
fn transport_with_rings_outside_memory_needs_reset_at_driver_ok() {
    let (_f, mut t, _irq, mem) = transport(false);
    let far = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    // Program a used ring beyond guest memory.
    assert_eq!(rd(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    wr(&mut t, VIRTIO_MMIO_STATUS, s);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, u32::from(QLEN));
    wr(
        &mut t,
        VIRTIO_MMIO_QUEUE_DESC_LOW,
        far.desc_table_addr().0 as u32,
    );
    wr(
        &mut t,
        VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        far.avail_addr().0 as u32,
    );
    wr(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, (MEM_END - 4) as u32);
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    wr(
        &mut t,
        VIRTIO_MMIO_STATUS,
        s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_ne!(
        rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(t.counters()["virtio.virtio-blk.duet-layer-0.requests"], 0);
}

// --- a hostile driver: rings and registers driven directly ------------------

/// The steering tests' avail ring: the device's own DMA target.
const AVAIL: u64 = BUF + 0x1_0000;
/// Where, inside the 512 bytes read over the avail ring, the request header sits.
const HEADER_IN_AVAIL: u64 = 64;

/// One sector that, read over the avail ring at [`AVAIL`], sets avail.idx
/// to `idx` (every ring entry names head 0) and rewrites the request header
/// to read `next_sector`.
fn steering_sector(idx: u16, next_sector: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[2..4].copy_from_slice(&idx.to_le_bytes());
    let h = header(VIRTIO_BLK_T_IN, next_sector);
    s[HEADER_IN_AVAIL as usize..HEADER_IN_AVAIL as usize + 16].copy_from_slice(&h);
    s
}

/// A disk whose sector s, read over the avail ring, makes one more request
/// available (idx s + 2) that reads sector s + 1; the last sector makes none.
fn steering_disk(sectors: u64) -> (tempfile::NamedTempFile, Block) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for s in 0..sectors {
        let idx = if s + 1 == sectors { s + 1 } else { s + 2 };
        f.write_all(&steering_sector(idx as u16, s + 1)).unwrap();
    }
    let b = Block::open(&BlockConfig {
        path: f.path().to_path_buf(),
        read_only: true,
        serial: "duet-layer-0".into(),
    })
    .unwrap();
    (f, b)
}

/// Brings up a transport whose queue 0 has one chain (head 0): the header
/// inside the avail ring, a 512-byte read over the avail ring itself, a status.
fn steered_transport(blk: Block) -> (MmioTransport<Block>, EventFd, GuestMemory, GuestAddress) {
    let mem = memory();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(blk, mem.clone(), irq.try_clone().unwrap());
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    submit(
        &mock,
        0,
        &[
            (AVAIL + HEADER_IN_AVAIL, 16, false),
            (AVAIL, 512, true),
            (BUF + 0x2000, 1, true),
        ],
    );
    mem.write_slice(&steering_sector(1, 0), GuestAddress(AVAIL))
        .unwrap();
    assert_eq!(
        bring_up_rings(
            &mut t,
            [mock.desc_table_addr().0, AVAIL, mock.used_addr().0],
            F_VERSION_1
        ) & VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_DRIVER_OK
    );
    let used = mock.used_addr();
    (t, irq, mem.clone(), used)
}

/// Like [`bring_up`], with rings at explicit addresses.
fn bring_up_rings(t: &mut MmioTransport<Block>, rings: [u64; 3], features: u64) -> u32 {
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    wr(t, VIRTIO_MMIO_STATUS, 0);
    wr(t, VIRTIO_MMIO_STATUS, s);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    wr(t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
    setup_queue(t, u32::from(QLEN), rings);
    wr(
        t,
        VIRTIO_MMIO_STATUS,
        s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    rd(t, VIRTIO_MMIO_STATUS)
}

fn requests(t: &MmioTransport<Block>) -> u64 {
    t.counters()["virtio.virtio-blk.duet-layer-0.requests"]
}

#[test]
fn one_notify_does_bounded_work_when_the_devices_dma_moves_the_avail_index() {
    const SECTORS: u64 = 300;
    let (_f, blk) = steering_disk(SECTORS);
    let (mut t, irq, mem, used_ring) = steered_transport(blk);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    let first = requests(&t);
    assert!(
        (1..=u64::from(QLEN)).contains(&first),
        "one notify served {first} requests; at most the queue size ({QLEN}) may be"
    );
    // The device asks the driver back (an interrupt) and leaves the rest for later exits.
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(
        t.counters()["virtio.virtio-blk.duet-layer-0.budget_yields"],
        1
    );
    // Each further notify serves at most another queue's worth; nothing is lost.
    let mut notifies = 1;
    while requests(&t) < SECTORS {
        let before = requests(&t);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        notifies += 1;
        assert!(requests(&t) - before <= u64::from(QLEN));
        assert!(notifies <= SECTORS, "no progress");
    }
    assert_eq!(requests(&t), SECTORS);
    let used_idx: u16 = mem.read_obj(used_ring.unchecked_add(2)).unwrap();
    assert_eq!(u64::from(used_idx), SECTORS);
    assert_eq!(byte(&mem, BUF + 0x2000), OK);
}

#[test]
fn work_left_at_the_budget_continues_on_the_drivers_next_register_access() {
    let (_f, blk) = steering_disk(40);
    let (mut t, _irq, _mem, _) = steered_transport(blk);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(requests(&t), u64::from(QLEN));
    // Linux's interrupt handler reads InterruptStatus: the device goes on.
    assert_ne!(
        rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_VRING,
        0
    );
    assert_eq!(requests(&t), 2 * u64::from(QLEN));
    wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(requests(&t), 40);
    // The pass that ran on the ACK raised again, after the ACK cleared the bit.
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    // Nothing left: further accesses do no work.
    rd(&mut t, VIRTIO_MMIO_STATUS);
    assert_eq!(requests(&t), 40);
}

#[test]
fn a_request_larger_than_the_advertised_limit_is_refused() {
    let mem = memory();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.as_file_mut().set_len(128 << 20).unwrap();
    let mut blk = Block::open(&BlockConfig {
        path: f.path().to_path_buf(),
        read_only: true,
        serial: "duet-layer-0".into(),
    })
    .unwrap();
    // size_max is announced, so a conforming driver never builds such a request.
    assert_ne!(
        blk.features() & (1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_SIZE_MAX),
        0
    );
    let mut size_max = [0u8; 4];
    blk.read_config(8, &mut size_max);
    let size_max = u64::from(u32::from_le_bytes(size_max));
    assert!(size_max >= 4096);
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 0), GuestAddress(BUF))
        .unwrap();
    // 14 overlapping 4 MiB buffers: 56 MiB into 4 MiB of guest RAM.
    let mut descs = vec![(BUF, 16, false)];
    descs.extend((0..14).map(|_| (BUF + 0x1000, 4 << 20, true)));
    descs.push((BUF + 0x80_0000, 1, true));
    let r = one(&mut blk, &mem, &descs, BUF + 0x80_0000);
    assert_eq!(r, (1, IOERR));
    assert_eq!(
        blk.counters()["virtio.virtio-blk.duet-layer-0.read_bytes"],
        0
    );
}

#[test]
fn indirect_descriptors_are_refused_without_the_feature() {
    use virtio_bindings::virtio_ring::{VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT};
    let mem = memory();
    let (_f, mut blk) = disk(true);
    assert_eq!(blk.features() & (1 << VIRTIO_RING_F_INDIRECT_DESC), 0);
    let table = BUF + 0x4000;
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 7), GuestAddress(BUF))
        .unwrap();
    mem.write_obj(0x77u8, GuestAddress(BUF + 0x2000)).unwrap();
    for (i, (addr, len, flags)) in [
        (BUF, 16, VRING_DESC_F_NEXT),
        (BUF + 0x1000, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT),
        (BUF + 0x2000, 1, VRING_DESC_F_WRITE),
    ]
    .into_iter()
    .enumerate()
    {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, i as u16 + 1));
        mem.write_obj(d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    let d = SplitDescriptor::new(table, 48, VRING_DESC_F_INDIRECT as u16, 0);
    mock.add_desc_chains(&[RawDescriptor::from(d)], 0).unwrap();
    assert_eq!(run(&mut blk, &mock, &mem), vec![(0, 0)]);
    assert_eq!(byte(&mem, BUF + 0x2000), 0x77, "no status written");
    assert_eq!(bytes(&mem, BUF + 0x1000, 512), vec![0u8; 512]);
    let c = blk.counters();
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.read_bytes"], 0);
    assert_eq!(c["virtio.virtio-blk.duet-layer-0.malformed"], 1);
}

/// Brings a fresh transport to FEATURES_OK and programs queue 0 with `num`
/// and `rings`; returns the transport, its interrupt and what QueueReady reads.
fn misprogrammed(
    num: u32,
    rings: [u64; 3],
) -> (
    tempfile::NamedTempFile,
    MmioTransport<Block>,
    EventFd,
    GuestMemory,
    u32,
) {
    let (f, mut t, irq, mem) = transport(false);
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    wr(&mut t, VIRTIO_MMIO_STATUS, s);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(&mut t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
    let ready = setup_queue(&mut t, num, rings);
    (f, t, irq, mem, ready)
}

#[test]
fn every_bad_queue_configuration_fails_the_device_with_needs_reset() {
    let mem = memory();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
    let good = [
        mock.desc_table_addr().0,
        mock.avail_addr().0,
        mock.used_addr().0,
    ];
    let q = u32::from(QLEN);
    let cases: [(&str, u32, [u64; 3]); 10] = [
        ("QueueNum 0", 0, good),
        (
            "QueueNum above the maximum",
            2 * u32::from(QUEUE_SIZE),
            good,
        ),
        ("QueueNum not a power of two", 12, good),
        ("QueueNum beyond 16 bits", 0x1_0010, good),
        (
            "descriptor table not 16-aligned",
            q,
            [good[0] + 8, good[1], good[2]],
        ),
        (
            "avail ring not 2-aligned",
            q,
            [good[0], good[1] + 1, good[2]],
        ),
        (
            "used ring not 4-aligned",
            q,
            [good[0], good[1], good[2] + 2],
        ),
        (
            "used ring past guest memory",
            q,
            [good[0], good[1], MEM_END - 4],
        ),
        (
            "descriptor table above 4 GiB",
            q,
            [good[0] | 1 << 32, good[1], good[2]],
        ),
        (
            "avail ring wrapping the address space",
            q,
            [good[0], u64::MAX - 1, good[2]],
        ),
    ];
    for (what, num, rings) in cases {
        let (_f, mut t, irq, mem, ready) = misprogrammed(num, rings);
        assert_eq!(ready, 0, "{what}: QueueReady must be refused");
        let status = rd(&mut t, VIRTIO_MMIO_STATUS);
        assert_ne!(
            status & VIRTIO_CONFIG_S_NEEDS_RESET,
            0,
            "{what}: {status:#x}"
        );
        assert_ne!(
            rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
            0,
            "{what}: config-change interrupt"
        );
        assert!(irq.read().unwrap() >= 1, "{what}");
        // DRIVER_OK and a notify afterwards serve nothing.
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), QLEN);
        submit(&mock, 0, &[(BUF, 16, false), (BUF + 0x2000, 1, true)]);
        wr(
            &mut t,
            VIRTIO_MMIO_STATUS,
            status | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(requests(&t), 0, "{what}");
        // A reset clears it and a good configuration works again.
        assert_ne!(
            bring_up(&mut t, &mock, F_VERSION_1) & VIRTIO_CONFIG_S_DRIVER_OK,
            0,
            "{what}: after reset"
        );
        assert_eq!(
            rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
    }
}

#[test]
fn one_pass_stops_after_its_byte_budget() {
    let mem = memory();
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(64 << 20).unwrap();
    let mut blk = Block::open(&BlockConfig {
        path: f.path().to_path_buf(),
        read_only: true,
        serial: "duet-layer-0".into(),
    })
    .unwrap();
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 0), GuestAddress(BUF))
        .unwrap();
    // 16 reads of 8 MiB each (all into the same buffer): 128 MiB in one kick.
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), 64);
    for i in 0..16u16 {
        submit(
            &mock,
            3 * i,
            &[
                (BUF, 16, false),
                (BUF + 0x1000, 8 << 20, true),
                (BUF + 0x90_0000 + u64::from(i), 1, true),
            ],
        );
    }
    let mut q: Queue = mock.create_queue().unwrap();
    let per_pass = (BYTES_PER_PASS / (8 << 20)) as usize;
    let mut passes = 0;
    loop {
        let out = blk.process_queue(0, &mut q, &mem).unwrap();
        passes += 1;
        let served = used(&mock).len();
        assert!(
            served <= passes * per_pass,
            "pass {passes}: {served} served"
        );
        assert!(out.interrupt);
        if !out.more {
            break;
        }
    }
    assert_eq!(used(&mock).len(), 16);
    assert_eq!(passes, 16 / per_pass);
    assert_eq!(
        blk.counters()["virtio.virtio-blk.duet-layer-0.read_bytes"],
        128 << 20
    );
}
