//! virtio-net driven through its queues in guest memory against a
//! datagram socketpair standing in for the tap (both keep frame
//! boundaries, one frame per read): frames both ways, a frame waiting for
//! an rx buffer, and hostile chains refused without a panic. The real tap
//! on a bridge is exercised by the network tests in the testbed.

use super::*;
use crate::devices::virtio::host_thread::HostSide;
use crate::devices::virtio::test_ring::DriverRing;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixDatagram;
use vm_memory::{Bytes, GuestAddress};

const QLEN: u16 = 16;
const MEM_END: u64 = 0x100_0000;
const BUF: u64 = 0x10_0000;
const MAC: [u8; 6] = [0x02, 0xd0, 0xe7, 0, 0, 2];

struct Guest<'m> {
    mem: &'m GuestMemory,
    rx: DriverRing<'m>,
    tx: DriverRing<'m>,
    queues: Vec<Queue>,
    dev: Net,
    /// The other end of the "tap".
    wire: UnixDatagram,
    next_buf: u64,
    rx_bufs: BTreeMap<u16, (u64, u32)>,
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
}

impl<'m> Guest<'m> {
    fn new(mem: &'m GuestMemory) -> Guest<'m> {
        let (tap, wire) = UnixDatagram::pair().unwrap();
        wire.set_nonblocking(true).unwrap();
        // SAFETY: into_raw_fd gives up ownership of a valid fd.
        let tap = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(tap)) };
        let rx = DriverRing::new(mem, 0, QLEN);
        let tx = DriverRing::new(mem, 0x4000, QLEN);
        let queues = vec![rx.queue(), tx.queue()];
        Guest {
            mem,
            rx,
            tx,
            queues,
            dev: Net::new(tap, MAC).unwrap(),
            wire,
            next_buf: BUF,
            rx_bufs: BTreeMap::new(),
        }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next_buf;
        self.next_buf += len.div_ceil(0x1000) * 0x1000;
        assert!(self.next_buf < MEM_END);
        a
    }

    fn process(&mut self, index: usize) -> QueueOutcome {
        self.dev.process(index, &mut self.queues, self.mem).unwrap()
    }

    /// The guest sends header + frame, in two descriptors.
    fn send(&mut self, frame: &[u8]) -> QueueOutcome {
        let h = self.alloc(HDR_LEN as u64);
        let d = self.alloc(frame.len() as u64);
        self.mem
            .write_slice(&[0u8; HDR_LEN], GuestAddress(h))
            .unwrap();
        self.mem.write_slice(frame, GuestAddress(d)).unwrap();
        self.tx
            .submit(&[(h, HDR_LEN as u32, false), (d, frame.len() as u32, false)]);
        self.process(TX)
    }

    fn rx_buffer(&mut self, len: u32) {
        let a = self.alloc(u64::from(len));
        let head = self.rx.submit(&[(a, len, true)]);
        self.rx_bufs.insert(head, (a, len));
    }

    /// What the host thread does when the tap is readable.
    fn host_pass(&mut self) {
        self.dev
            .host_io(&[(TapToken, libc::POLLIN)], Instant::now());
        self.process(RX);
    }

    /// Frames (header included) the guest received since the last call.
    fn received(&mut self) -> Vec<Vec<u8>> {
        self.rx
            .used()
            .into_iter()
            .map(|(head, len)| {
                let (a, _) = self.rx_bufs[&head];
                let mut b = vec![0u8; len as usize];
                self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
                b
            })
            .collect()
    }

    fn counter(&self, name: &str) -> u64 {
        self.dev.counters()[&format!("virtio.virtio-net.{name}")]
    }

    fn activate(&mut self) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        self.dev
            .activate(&crate::devices::virtio::Activation {
                acked_features: F_VERSION_1 | F_MAC,
                queues: &self.queues,
                mem: self.mem,
                irq: &irq,
            })
            .unwrap();
    }
}

/// A frame to and from the device's MAC.
fn frame(n: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![fill; n];
    f[..6].copy_from_slice(&MAC);
    f[6..12].copy_from_slice(&MAC);
    f
}

#[test]
fn frames_from_another_mac_do_not_leave() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut other = frame(98, 0xab);
    other[6..12].copy_from_slice(&[0x02, 0xd0, 0xe7, 0, 0, 9]);
    // Shorter than an Ethernet header: no source MAC at all.
    let short = vec![0u8; 10];
    for f in [&other, &short] {
        g.send(f);
    }
    let mut got = vec![0u8; 4096];
    assert!(
        g.wire.recv(&mut got).is_err(),
        "a spoofed frame reached the tap"
    );
    assert_eq!(g.counter("spoofed_dropped"), 2);
    assert_eq!(g.counter("tx_frames"), 0);
    // Its chains are still given back to the guest.
    assert_eq!(g.tx.used().len(), 2);
    // The device's own MAC goes out.
    g.send(&frame(98, 0xab));
    assert!(g.wire.recv(&mut got).is_ok());
}

#[test]
fn identity_features_and_mac() {
    let mem = memory();
    let g = Guest::new(&mem);
    assert_eq!(g.dev.device_type(), 1);
    assert_eq!(
        g.dev.features() & (F_VERSION_1 | F_MAC),
        F_VERSION_1 | F_MAC
    );
    let mut mac = [0u8; 8];
    g.dev.read_config(0, &mut mac);
    assert_eq!(&mac[..6], &MAC);
    assert_eq!(&mac[6..], &[0, 0], "past the config space reads 0");
}

#[test]
fn frames_go_out_whole_with_their_header() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let f = frame(98, 0xab);
    let out = g.send(&f);
    assert!(out.interrupt);
    let mut got = vec![0u8; 4096];
    let n = g.wire.recv(&mut got).unwrap();
    assert_eq!(n, HDR_LEN + f.len());
    assert_eq!(&got[HDR_LEN..n], &f[..]);
    assert_eq!(g.tx.used().len(), 1);
    assert_eq!(g.counter("tx_frames"), 1);
    assert_eq!(g.counter("tx_bytes"), f.len() as u64);
}

#[test]
fn frames_come_in_with_num_buffers_one() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.activate();
    g.rx_buffer(2048);
    g.rx_buffer(2048);
    let f = frame(60, 0x11);
    let mut wire_frame = vec![0u8; HDR_LEN];
    wire_frame.extend(&f);
    g.wire.send(&wire_frame).unwrap();
    g.host_pass();
    let got = g.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), HDR_LEN + f.len());
    assert_eq!(u16::from_le_bytes([got[0][10], got[0][11]]), 1);
    assert_eq!(&got[0][HDR_LEN..], &f[..]);
    // Drained: the host thread polls the tap again.
    assert_eq!(g.dev.poll_set().len(), 1);
}

#[test]
fn a_frame_waits_for_an_rx_buffer_and_the_tap_is_left_alone() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.activate();
    let f = frame(64, 0x22);
    let mut w = vec![0u8; HDR_LEN];
    w.extend(&f);
    g.wire.send(&w).unwrap();
    g.host_pass();
    assert!(g.received().is_empty());
    assert!(
        g.dev.poll_set().is_empty(),
        "no tap polling while a frame waits"
    );
    g.rx_buffer(2048);
    g.process(RX);
    let got = g.received();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0][HDR_LEN..], &f[..]);
}

#[test]
fn hostile_chains_are_refused_without_panics() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.activate();
    // tx: a device-writable descriptor, a chain shorter than the header,
    // one outside guest memory, one bigger than MAX_FRAME.
    let a = g.alloc(4096);
    g.tx.submit(&[(a, 64, true)]);
    g.tx.submit(&[(a, 4, false)]);
    g.tx.submit(&[(MEM_END - 16, 64, false)]);
    let big = g.alloc(MAX_FRAME as u64 + 4096);
    g.tx.submit(&[(big, MAX_FRAME as u32 + 1, false)]);
    g.process(TX);
    assert_eq!(g.tx.used().len(), 4, "every chain is returned");
    assert_eq!(g.counter("malformed"), 4);
    assert_eq!(g.counter("tx_frames"), 0);
    let mut buf = [0u8; 64];
    assert!(g.wire.recv(&mut buf).is_err(), "nothing reached the tap");
    // rx: a read-only buffer and one too small for the frame.
    let r = g.alloc(4096);
    let ro = g.rx.submit(&[(r, 2048, false)]);
    g.rx_bufs.insert(ro, (r, 2048));
    g.rx_buffer(32);
    let mut w = vec![0u8; HDR_LEN];
    w.extend(frame(500, 0x33));
    g.wire.send(&w).unwrap();
    g.wire.send(&w).unwrap();
    g.host_pass();
    let got = g.received();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|b| b.is_empty()), "both returned empty");
    assert_eq!(g.counter("malformed"), 5);
    assert_eq!(g.counter("rx_dropped"), 1);
}
