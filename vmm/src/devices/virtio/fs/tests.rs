//! virtio-fs against a real backend: Debian's virtiofsd on a temporary
//! directory, the transport driven as Linux's virtio_mmio driver does, and
//! FUSE requests put on the request queue by virtio-queue's mock driver.
//! No guest: the test is the driver, virtiofsd serves the rings in the
//! shared guest memory and signals the irqfd, so this runs on any host
//! (needs root: virtiofsd sandboxes itself in namespaces).

use super::*;
use crate::bus::BusDevice;
use crate::devices::virtio::mmio::MmioTransport;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Bytes;

const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
const QLEN: u16 = 16;
/// Buffers live from here on (the two queues' rings sit below).
const BUF: u64 = 0x10_0000;

const FUSE_LOOKUP: u32 = 1;
const FUSE_MKDIR: u32 = 9;
const FUSE_OPEN: u32 = 14;
const FUSE_INIT: u32 = 26;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;

struct Backend {
    fsd: crate::virtiofsd::Virtiofsd,
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

/// virtiofsd as duet starts it ([`crate::virtiofsd::Virtiofsd`]) sharing a
/// directory that holds `hello` ("hi there\n") and `null-node` (a device
/// node: char 1:3, the host's /dev/null).
fn backend(test: &str, read_only: bool) -> Option<Backend> {
    if duet_shared::testing::skip_unless_root(test, "virtiofsd's namespace sandbox")
        || duet_shared::testing::skip_unless_program(test, VIRTIOFSD, "qemu-system-common")
    {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello"), "hi there\n").unwrap();
    let node = std::ffi::CString::new(
        share
            .join("null-node")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: mknod with a valid path.
    assert_eq!(
        unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
        0
    );
    let socket = dir.path().join("fs.sock");
    let fsd = crate::virtiofsd::Virtiofsd::start(
        Path::new(VIRTIOFSD),
        &share,
        &socket,
        &dir.path().join("virtiofsd.log"),
        read_only,
    )
    .unwrap();
    Some(Backend {
        fsd,
        _dir: dir,
        socket,
    })
}

fn connect(socket: &Path, mem: &GuestMemory) -> VhostUserFs {
    let s = UnixStream::connect(socket).unwrap();
    VhostUserFs::connect(s, "duet-root", mem).unwrap()
}

fn rd(t: &mut MmioTransport<VhostUserFs>, reg: u32) -> u32 {
    let mut d = [0u8; 4];
    t.read(0, u64::from(reg), &mut d);
    u32::from_le_bytes(d)
}

fn wr(t: &mut MmioTransport<VhostUserFs>, reg: u32, v: u32) {
    t.write(0, u64::from(reg), &v.to_le_bytes());
}

/// Negotiates every offered feature and sets up both queues on `mocks`.
fn bring_up(t: &mut MmioTransport<VhostUserFs>, mocks: &[MockSplitQueue<GuestMemory>]) -> u32 {
    assert_eq!(rd(t, VIRTIO_MMIO_DEVICE_ID), TYPE_FS);
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    wr(t, VIRTIO_MMIO_STATUS, 0);
    wr(t, VIRTIO_MMIO_STATUS, s);
    // Everything offered but EVENT_IDX: this driver does not move used_event,
    // so with it the backend would rightly skip interrupts.
    for sel in 0..2 {
        wr(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
        let f = rd(t, VIRTIO_MMIO_DEVICE_FEATURES) & !((F_EVENT_IDX >> (32 * sel)) as u32);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, f);
    }
    wr(t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
    for (i, m) in mocks.iter().enumerate() {
        wr(t, VIRTIO_MMIO_QUEUE_SEL, i as u32);
        assert_eq!(rd(t, VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
        wr(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(QLEN));
        for (lo, addr) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, m.desc_table_addr().0),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, m.avail_addr().0),
            (VIRTIO_MMIO_QUEUE_USED_LOW, m.used_addr().0),
        ] {
            wr(t, lo, addr as u32);
            wr(t, lo + 4, (addr >> 32) as u32);
        }
        wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }
    wr(
        t,
        VIRTIO_MMIO_STATUS,
        s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    rd(t, VIRTIO_MMIO_STATUS)
}

fn in_header(len: usize, opcode: u32, unique: u64, nodeid: u64) -> Vec<u8> {
    let mut h = vec![0u8; IN_HEADER];
    h[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4..8].copy_from_slice(&opcode.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h[16..24].copy_from_slice(&nodeid.to_le_bytes());
    h
}

/// Puts a request (`out` read by the device, `reply` bytes writable; its
/// unique id must be `first` + 1, FUSE has no id 0) as chain `first` on the
/// mock queue, notifies queue 1 and waits for the
/// backend's interrupt; returns (error, reply body).
fn request(
    t: &mut MmioTransport<VhostUserFs>,
    irq: &EventFd,
    mem: &GuestMemory,
    mock: &MockSplitQueue<GuestMemory>,
    first: u16,
    out: &[u8],
    reply: usize,
) -> (i32, Vec<u8>) {
    let out_at = BUF + u64::from(first) * 0x2000;
    let in_at = out_at + 0x1000;
    mem.write_slice(out, GuestAddress(out_at)).unwrap();
    let descs = [
        SplitDescriptor::new(
            out_at,
            out.len() as u32,
            VRING_DESC_F_NEXT as u16,
            first + 1,
        ),
        SplitDescriptor::new(in_at, reply as u32, VRING_DESC_F_WRITE as u16, 0),
    ];
    let raw: Vec<RawDescriptor> = descs.into_iter().map(RawDescriptor::from).collect();
    mock.add_desc_chains(&raw, first).unwrap();
    let used_before = mock.used().idx().load();
    wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    let mut p = libc::pollfd {
        fd: irq.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while mock.used().idx().load() == used_before {
        assert!(Instant::now() < deadline, "virtiofsd never answered");
        // SAFETY: poll on one pollfd we own.
        unsafe { libc::poll(&mut p, 1, 100) };
    }
    // The backend signals the transport's irqfd itself, right after the used index.
    // SAFETY: poll on one pollfd we own.
    unsafe { libc::poll(&mut p, 1, 5000) };
    assert!(irq.read().unwrap() >= 1, "no interrupt from the backend");
    assert_ne!(
        rd(t, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_VRING,
        0
    );
    let mut r = vec![0u8; reply];
    mem.read_slice(&mut r, GuestAddress(in_at)).unwrap();
    let len = u32::from_le_bytes(r[0..4].try_into().unwrap()) as usize;
    let error = i32::from_le_bytes(r[4..8].try_into().unwrap());
    assert_eq!(
        u64::from_le_bytes(r[8..16].try_into().unwrap()),
        u64::from(first) + 1,
        "reply to another request"
    );
    (error, r[OUT_HEADER..len.max(OUT_HEADER)].to_vec())
}

/// A driver's session with `b`: the transport brought up on two mock
/// queues, FUSE_INIT done (chain 0).
struct Session<'a> {
    t: MmioTransport<VhostUserFs>,
    irq: EventFd,
    mem: &'a GuestMemory,
    mocks: [MockSplitQueue<'a, GuestMemory>; 2],
}

impl Session<'_> {
    fn request(&mut self, first: u16, out: &[u8], reply: usize) -> (i32, Vec<u8>) {
        request(
            &mut self.t,
            &self.irq,
            self.mem,
            &self.mocks[1],
            first,
            out,
            reply,
        )
    }
}

/// `mem`: shared guest memory the caller keeps (the mock rings borrow it).
fn session<'a>(b: &Backend, mem: &'a GuestMemory) -> Session<'a> {
    let fs = connect(&b.socket, mem);
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(fs, mem.clone(), irq.try_clone().unwrap());
    let mocks = [
        MockSplitQueue::create(mem, GuestAddress(0), QLEN),
        MockSplitQueue::create(mem, GuestAddress(0x8000), QLEN),
    ];
    let status = bring_up(&mut t, &mocks);
    assert_eq!(
        status & VIRTIO_CONFIG_S_NEEDS_RESET,
        0,
        "status {status:#x}"
    );
    let mut s = Session { t, irq, mem, mocks };
    let mut init = in_header(IN_HEADER + 64, FUSE_INIT, 1, 0);
    let mut body = [0u8; 64];
    body[0..4].copy_from_slice(&7u32.to_le_bytes());
    body[4..8].copy_from_slice(&36u32.to_le_bytes());
    init.extend_from_slice(&body);
    let (error, _) = s.request(0, &init, OUT_HEADER + 64);
    assert_eq!(error, 0, "FUSE_INIT failed");
    s
}

/// LOOKUP of `name` in the root (chain `first`): (error, nodeid).
fn lookup(s: &mut Session, first: u16, name: &str) -> (i32, u64) {
    let mut req = in_header(
        IN_HEADER + name.len() + 1,
        FUSE_LOOKUP,
        u64::from(first) + 1,
        1,
    );
    req.extend_from_slice(name.as_bytes());
    req.push(0);
    let (error, entry) = s.request(first, &req, OUT_HEADER + 128);
    let nodeid = if error == 0 {
        u64::from_le_bytes(entry[0..8].try_into().unwrap())
    } else {
        0
    };
    (error, nodeid)
}

#[test]
fn a_device_node_in_the_share_never_opens_the_hosts_device() {
    let Some(b) = backend(
        "a_device_node_in_the_share_never_opens_the_hosts_device",
        false,
    ) else {
        return;
    };
    let mem = crate::memory::create_shared_guest_memory(16).unwrap();
    let mut s = session(&b, &mem);
    let (error, node) = lookup(&mut s, 2, "null-node");
    assert_eq!(error, 0, "LOOKUP null-node");
    // FUSE_OPEN O_RDWR of the node: the share is nodev for virtiofsd.
    let mut open = in_header(IN_HEADER + 8, FUSE_OPEN, 5, node);
    open.extend_from_slice(&(libc::O_RDWR as u32).to_le_bytes());
    open.extend_from_slice(&0u32.to_le_bytes());
    let (error, _) = s.request(4, &open, OUT_HEADER + 16);
    // QEMU's virtiofsd refuses special files itself (EBADF); below it, the
    // share is nodev (EACCES) in the backend's namespace.
    assert!(
        [-libc::EACCES, -libc::EBADF].contains(&error),
        "a device node opened through virtiofsd (error {error})"
    );
    let opts = share_mount_options(&b);
    assert!(
        opts.contains(&"nodev".to_string()) && opts.contains(&"nosuid".to_string()),
        "{opts:?}"
    );
    assert!(opts.contains(&"rw".to_string()), "{opts:?}");
}

/// The mount options of the share in virtiofsd's mount namespace.
fn share_mount_options(b: &Backend) -> Vec<String> {
    let share = b._dir.path().join("share");
    let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", b.fsd.pid())).unwrap();
    // virtiofsd pivots into the share: there it is `/` (or still its own path).
    let line = info
        .lines()
        .rfind(|l| {
            let mp = l.split(' ').nth(4);
            mp == Some("/") || mp == Some(share.to_str().unwrap())
        })
        .unwrap_or_else(|| {
            panic!(
                "no mount of {} in virtiofsd's namespace:\n{info}",
                share.display()
            )
        });
    line.split(' ')
        .nth(5)
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect()
}

#[test]
fn a_read_only_share_refuses_writes_in_the_backend_itself() {
    let Some(b) = backend(
        "a_read_only_share_refuses_writes_in_the_backend_itself",
        true,
    ) else {
        return;
    };
    let mem = crate::memory::create_shared_guest_memory(16).unwrap();
    let mut s = session(&b, &mem);
    // FUSE_MKDIR "made" in the root, as a guest that remounted read-write would send it.
    let mut mkdir = in_header(IN_HEADER + 8 + 5, FUSE_MKDIR, 3, 1);
    mkdir.extend_from_slice(&0o755u32.to_le_bytes());
    mkdir.extend_from_slice(&0u32.to_le_bytes());
    mkdir.extend_from_slice(b"made\0");
    let (error, _) = s.request(2, &mkdir, OUT_HEADER + 128);
    assert_eq!(error, -libc::EROFS);
    let opts = share_mount_options(&b);
    assert!(opts.contains(&"ro".to_string()), "{opts:?}");
    assert!(!b._dir.path().join("share/made").exists());
}

#[test]
fn virtiofsd_serves_fuse_requests_from_the_shared_rings() {
    let Some(b) = backend(
        "virtiofsd_serves_fuse_requests_from_the_shared_rings",
        false,
    ) else {
        return;
    };
    let mem = crate::memory::create_shared_guest_memory(16).unwrap();
    let fs = connect(&b.socket, &mem);
    assert!(fs.features() & F_VERSION_1 != 0);
    let mut config = [0u8; MAX_TAG_LEN + 4];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..9], b"duet-root");
    assert_eq!(config[MAX_TAG_LEN..], 1u32.to_le_bytes());
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(fs, mem.clone(), irq.try_clone().unwrap());
    let mocks = [
        MockSplitQueue::create(&mem, GuestAddress(0), QLEN),
        MockSplitQueue::create(&mem, GuestAddress(0x8000), QLEN),
    ];
    let status = bring_up(&mut t, &mocks);
    assert_eq!(
        status & VIRTIO_CONFIG_S_NEEDS_RESET,
        0,
        "status {status:#x}"
    );
    assert_ne!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0);

    // FUSE_INIT, as the guest's virtio_fs driver starts.
    let mut init = in_header(IN_HEADER + 64, FUSE_INIT, 1, 0);
    let mut body = [0u8; 64];
    body[0..4].copy_from_slice(&7u32.to_le_bytes());
    body[4..8].copy_from_slice(&36u32.to_le_bytes());
    init.extend_from_slice(&body);
    let (error, out) = request(&mut t, &irq, &mem, &mocks[1], 0, &init, OUT_HEADER + 64);
    assert_eq!(error, 0, "FUSE_INIT failed");
    assert_eq!(u32::from_le_bytes(out[0..4].try_into().unwrap()), 7);

    // LOOKUP of the shared file: its size comes from the host directory.
    let mut lookup = in_header(IN_HEADER + 6, FUSE_LOOKUP, 3, 1);
    lookup.extend_from_slice(b"hello\0");
    let (error, entry) = request(&mut t, &irq, &mem, &mocks[1], 2, &lookup, OUT_HEADER + 128);
    assert_eq!(error, 0, "LOOKUP hello failed");
    // fuse_entry_out: nodeid, generation, 2 valid times, 2 nsecs, then fuse_attr (ino, size).
    assert_eq!(u64::from_le_bytes(entry[48..56].try_into().unwrap()), 9);

    let mut missing = in_header(IN_HEADER + 8, FUSE_LOOKUP, 5, 1);
    missing.extend_from_slice(b"missing\0");
    let (error, _) = request(&mut t, &irq, &mem, &mocks[1], 4, &missing, OUT_HEADER + 128);
    assert_eq!(error, -libc::ENOENT);

    let c = t.counters();
    assert_eq!(c["virtio.virtio-fs.duet-root.activations"], 1);
    assert_eq!(c["virtio.virtio-fs.duet-root.backend_errors"], 0);
    assert_eq!(c["virtio.virtio-fs.duet-root.kicks"], 3);
    // A driver reset stops the rings in the backend, which still answers.
    wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(t.counters()["virtio.virtio-fs.duet-root.backend_errors"], 0);
}

#[test]
fn private_guest_memory_is_refused_with_the_tag() {
    let Some(b) = backend("private_guest_memory_is_refused_with_the_tag", false) else {
        return;
    };
    let mem = crate::memory::create_guest_memory(16).unwrap();
    let s = UnixStream::connect(&b.socket).unwrap();
    let e = VhostUserFs::connect(s, "duet-root", &mem).err().unwrap();
    assert!(matches!(e, FsError::PrivateMemory { .. }), "{e}");
    assert!(e.to_string().contains("duet-root"), "{e}");
}

#[test]
fn a_backend_that_is_gone_fails_with_the_step() {
    let (a, b) = UnixStream::pair().unwrap();
    drop(b);
    let mem = crate::memory::create_shared_guest_memory(4).unwrap();
    let e = VhostUserFs::connect(a, "duet-root", &mem).err().unwrap();
    let m = e.to_string();
    assert!(m.contains("duet-root") && m.contains("vhost-user"), "{m}");
}
