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
    wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(rd(t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(rd(t, VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    wr(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(QLEN));
    for (lo, addr) in [
        (VIRTIO_MMIO_QUEUE_DESC_LOW, mock.desc_table_addr()),
        (VIRTIO_MMIO_QUEUE_AVAIL_LOW, mock.avail_addr()),
        (VIRTIO_MMIO_QUEUE_USED_LOW, mock.used_addr()),
    ] {
        wr(t, lo, addr.0 as u32);
        wr(t, lo + 4, (addr.0 >> 32) as u32);
    }
    wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    wr(t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
    rd(t, VIRTIO_MMIO_STATUS)
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
