//! virtio-vsock driven directly through its queues in guest memory (a
//! hand-rolled driver on virtio-queue's mock rings) against real Unix
//! sockets on the host side: the handshake, data both ways, credit, resets,
//! shutdown, and hostile descriptors and headers that must be refused
//! without a panic.

use super::*;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;

const QLEN: u16 = 16;
const MEM_END: u64 = 0x100_0000;
/// Guest buffers are carved from here on.
const BUF: u64 = 0x10_0000;
const GUEST_PORT: u32 = 1024;

struct Guest<'m> {
    mem: &'m GuestMemory,
    rx: MockSplitQueue<'m, GuestMemory>,
    tx: MockSplitQueue<'m, GuestMemory>,
    queues: Vec<Queue>,
    dev: Vsock,
    next_buf: u64,
    rx_desc: u16,
    tx_desc: u16,
    rx_avail: u16,
    tx_avail: u16,
    rx_seen: u16,
    /// rx head index -> its (address, length) segments.
    rx_chains: BTreeMap<u16, Vec<(u64, u32)>>,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
}

impl<'m> Guest<'m> {
    fn new(mem: &'m GuestMemory) -> Guest<'m> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let l = UnixListener::bind(&path).unwrap();
        let dev = Vsock::new(OwnedFd::from(l)).unwrap();
        let rx = MockSplitQueue::create(mem, GuestAddress(0), QLEN);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x4000), QLEN);
        let ev = MockSplitQueue::create(mem, GuestAddress(0x8000), QLEN);
        let queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            ev.create_queue().unwrap(),
        ];
        Guest {
            mem,
            rx,
            tx,
            queues,
            dev,
            next_buf: BUF,
            rx_desc: 0,
            tx_desc: 0,
            rx_avail: 0,
            tx_avail: 0,
            rx_seen: 0,
            rx_chains: BTreeMap::new(),
            _dir: dir,
            path,
        }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next_buf;
        self.next_buf += len.div_ceil(0x1000) * 0x1000;
        assert!(self.next_buf < MEM_END);
        a
    }

    /// Puts a chain of (addr, len, writable) on `tx` or rx; returns its head.
    fn submit(&mut self, on_tx: bool, descs: &[(u64, u32, bool)]) -> u16 {
        let n = descs.len() as u16;
        let (q, next, avail) = if on_tx {
            (&self.tx, &mut self.tx_desc, &mut self.tx_avail)
        } else {
            (&self.rx, &mut self.rx_desc, &mut self.rx_avail)
        };
        if *next + n > QLEN {
            *next = 0;
        }
        let first = *next;
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = SplitDescriptor::new(
                addr,
                len,
                flags,
                if last { 0 } else { first + i as u16 + 1 },
            );
            q.desc_table()
                .store(first + i as u16, RawDescriptor::from(d))
                .unwrap();
        }
        q.avail()
            .ring()
            .ref_at((*avail % QLEN) as usize)
            .unwrap()
            .store(first);
        *avail = avail.wrapping_add(1);
        q.avail().idx().store(*avail);
        *next += n;
        first
    }

    /// Gives the device one rx buffer (header + `data` bytes).
    fn rx_buffer(&mut self, data: u32) {
        let h = self.alloc(HDR_LEN as u64);
        let d = self.alloc(u64::from(data));
        let segs = vec![(h, HDR_LEN as u32), (d, data)];
        let head = self.submit(false, &[(h, HDR_LEN as u32, true), (d, data, true)]);
        self.rx_chains.insert(head, segs);
    }

    fn process(&mut self, index: usize) -> QueueOutcome {
        self.dev.process(index, &mut self.queues, self.mem).unwrap()
    }

    /// The guest sends one packet (header and data in separate descriptors).
    fn send(&mut self, h: Header, data: &[u8]) -> QueueOutcome {
        let ha = self.alloc(HDR_LEN as u64);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(ha))
            .unwrap();
        let mut descs = vec![(ha, HDR_LEN as u32, false)];
        if !data.is_empty() {
            let da = self.alloc(data.len() as u64);
            self.mem.write_slice(data, GuestAddress(da)).unwrap();
            descs.push((da, data.len() as u32, false));
        }
        self.submit(true, &descs);
        self.process(TX)
    }

    /// Packets the device put on rx since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        let idx = self.rx.used().idx().load();
        while self.rx_seen != idx {
            let e = self
                .rx
                .used()
                .ring()
                .ref_at((self.rx_seen % QLEN) as usize)
                .unwrap()
                .load();
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let segs = &self.rx_chains[&(e.id() as u16)];
            let mut bytes = Vec::new();
            for &(a, l) in segs {
                let mut b = vec![0u8; l as usize];
                self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
                bytes.extend(b);
            }
            if e.len() == 0 {
                out.push((Header::default(), Vec::new()));
                continue;
            }
            bytes.truncate(e.len() as usize);
            let h = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
            assert_eq!(h.len as usize, bytes.len() - HDR_LEN, "{h:?}");
            out.push((h, bytes[HDR_LEN..].to_vec()));
        }
        out
    }

    /// One pass of the host thread: poll (briefly), host_io, an rx pass.
    fn host_pass(&mut self) {
        let set = self.dev.poll_set();
        let mut fds: Vec<libc::pollfd> = set
            .iter()
            .map(|&(fd, events, _)| libc::pollfd {
                fd,
                events,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid pollfd array.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        let ready: Vec<(Token, i16)> = fds
            .iter()
            .zip(&set)
            .filter(|(p, _)| p.revents != 0)
            .map(|(p, s)| (s.2, p.revents))
            .collect();
        self.dev.host_io(&ready, Instant::now());
        self.process(RX);
    }

    fn guest_header(
        &self,
        host_port: u32,
        op: u16,
        len: u32,
        buf_alloc: u32,
        fwd_cnt: u32,
    ) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: GUEST_PORT,
            dst_port: host_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// A host client connected through the handshake; returns it and the
    /// device's port for it. The guest announces `buf_alloc`.
    fn connect(&mut self, buf_alloc: u32) -> (UnixStream, u32) {
        let mut c = UnixStream::connect(&self.path).unwrap();
        c.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
            .unwrap();
        self.rx_buffer(4096);
        let mut req = Vec::new();
        for _ in 0..20 {
            self.host_pass();
            req.extend(self.received());
            if !req.is_empty() {
                break;
            }
        }
        assert_eq!(req.len(), 1, "{req:?}");
        let h = req[0].0;
        assert_eq!(
            (h.op, h.src_cid, h.dst_cid, h.dst_port),
            (OP_REQUEST, HOST_CID, GUEST_CID, GUEST_PORT)
        );
        assert!(h.src_port >= FIRST_HOST_PORT, "{h:?}");
        assert_eq!(h.buf_alloc, CONN_BUF_ALLOC);
        let port = h.src_port;
        self.send(self.guest_header(port, OP_RESPONSE, 0, buf_alloc, 0), &[]);
        let mut ok = [0u8; 32];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = c.read(&mut ok).unwrap();
        assert_eq!(&ok[..n], format!("OK {port}\n").as_bytes());
        (c, port)
    }

    fn counter(&self, name: &str) -> u64 {
        self.dev.counters()[&format!("virtio.virtio-vsock.{name}")]
    }
}

fn read_exactly(c: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    c.read_exact(&mut v).unwrap();
    v
}

/// Reads until EOF (or a reset) within the read timeout.
fn read_to_end(c: &mut UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = c.read_to_end(&mut v);
    v
}

#[test]
fn config_space_and_features() {
    let mem = memory();
    let g = Guest::new(&mem);
    let mut cid = [0u8; 8];
    g.dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let mut past = [0xffu8; 4];
    g.dev.read_config(8, &mut past);
    assert_eq!(past, [0; 4]);
    assert_eq!(g.dev.features(), F_VERSION_1);
    assert_eq!(g.dev.queue_max_sizes().len(), 3);
    assert_eq!(g.dev.device_type(), 19);
}

#[test]
fn connect_then_data_both_ways() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut c, port) = g.connect(64 << 10);
    // Guest to host.
    let out = g.send(g.guest_header(port, OP_RW, 5, 64 << 10, 0), b"hello");
    assert!(!out.more);
    assert_eq!(read_exactly(&mut c, 5), b"hello");
    // Host to guest.
    c.write_all(b"world").unwrap();
    g.rx_buffer(4096);
    let mut got = Vec::new();
    for _ in 0..20 {
        g.host_pass();
        got.extend(g.received());
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got.len(), 1);
    let (h, data) = &got[0];
    assert_eq!(
        (h.op, h.src_port, h.dst_port, data.as_slice()),
        (OP_RW, port, GUEST_PORT, &b"world"[..])
    );
    assert_eq!(h.fwd_cnt, 5, "the device forwarded 5 bytes");
    assert_eq!(g.counter("rx_bytes"), 5);
    assert_eq!(g.counter("tx_bytes"), 5);
    assert_eq!(g.counter("malformed"), 0);
}

#[test]
fn host_data_waits_for_the_guests_credit() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut c, port) = g.connect(8);
    c.write_all(&[7u8; 20]).unwrap();
    for _ in 0..4 {
        g.rx_buffer(4096);
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        g.host_pass();
        got.extend(g.received());
    }
    let total: usize = got.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(
        total, 8,
        "only buf_alloc bytes may go before a credit update: {got:?}"
    );
    // The guest consumed them: 8 more may come.
    g.send(g.guest_header(port, OP_CREDIT_UPDATE, 0, 8, 8), &[]);
    for _ in 0..5 {
        g.host_pass();
        got.extend(g.received());
    }
    let total: usize = got.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(total, 16, "{got:?}");
    // A credit request is answered with the device's own credit.
    g.send(g.guest_header(port, OP_CREDIT_REQUEST, 0, 8, 8), &[]);
    let r = g.received();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].0.op, r[0].0.buf_alloc),
        (OP_CREDIT_UPDATE, CONN_BUF_ALLOC)
    );
}

#[test]
fn forwarding_a_quarter_buffer_sends_a_credit_update() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut c, port) = g.connect(64 << 10);
    g.rx_buffer(4096);
    let chunk = vec![1u8; MAX_PKT_DATA];
    g.send(
        g.guest_header(port, OP_RW, chunk.len() as u32, 64 << 10, 0),
        &chunk,
    );
    assert_eq!(read_exactly(&mut c, chunk.len()).len(), chunk.len());
    let r = g.received();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (r[0].0.op, r[0].0.fwd_cnt),
        (OP_CREDIT_UPDATE, MAX_PKT_DATA as u32)
    );
}

#[test]
fn a_guest_past_its_credit_is_reset() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut c, port) = g.connect(64 << 10);
    g.rx_buffer(4096);
    let chunk = vec![2u8; MAX_PKT_DATA];
    // The host reads nothing: the socket buffer fills, then the device's.
    for _ in 0..16 {
        g.send(
            g.guest_header(port, OP_RW, chunk.len() as u32, 64 << 10, 0),
            &chunk,
        );
        if g.dev.connections() == 0 {
            break;
        }
    }
    assert_eq!(g.dev.connections(), 0);
    assert!(g.counter("malformed") >= 1);
    g.rx_buffer(4096);
    g.rx_buffer(4096);
    g.process(RX);
    let r = g.received();
    assert!(
        r.iter().any(|(h, _)| h.op == OP_RST && h.src_port == port),
        "{r:?}"
    );
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let all = read_to_end(&mut c);
    assert!(
        all.len() <= 16 * MAX_PKT_DATA,
        "the host got what was forwarded, then EOF"
    );
}

#[test]
fn guest_reset_closes_the_host_connection() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut c, port) = g.connect(64 << 10);
    g.send(g.guest_header(port, OP_RST, 0, 0, 0), &[]);
    assert_eq!(g.dev.connections(), 0);
    assert!(read_to_end(&mut c).is_empty());
    g.rx_buffer(4096);
    g.process(RX);
    assert!(g.received().is_empty(), "no RST answers a RST");
}

#[test]
fn guest_shutdown_flushes_then_closes_and_resets() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut c, port) = g.connect(64 << 10);
    g.rx_buffer(4096);
    g.send(g.guest_header(port, OP_RW, 4, 64 << 10, 0), b"last");
    let mut h = g.guest_header(port, OP_SHUTDOWN, 0, 64 << 10, 0);
    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(h, &[]);
    assert_eq!(read_to_end(&mut c), b"last");
    let r = g.received();
    assert!(
        r.iter().any(|(h, _)| h.op == OP_RST && h.src_port == port),
        "{r:?}"
    );
    assert_eq!(g.dev.connections(), 0);
}

#[test]
fn host_hang_up_resets_the_guests_end() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (c, port) = g.connect(64 << 10);
    drop(c);
    g.rx_buffer(4096);
    let mut r = Vec::new();
    for _ in 0..10 {
        g.host_pass();
        r.extend(g.received());
        if !r.is_empty() {
            break;
        }
    }
    assert!(
        r.iter().any(|(h, _)| h.op == OP_RST && h.src_port == port),
        "{r:?}"
    );
    assert_eq!(g.dev.connections(), 0);
}

#[test]
fn bad_connect_lines_are_refused() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    for line in [
        &b"HELLO\n"[..],
        b"CONNECT x\n",
        b"CONNECT 99999999999\n",
        &[b'A'; 40],
    ] {
        let mut c = UnixStream::connect(&g.path).unwrap();
        c.write_all(line).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..4 {
            g.host_pass();
        }
        assert!(read_to_end(&mut c).is_empty(), "{line:?}");
    }
    assert_eq!(g.dev.connections(), 0);
    assert_eq!(g.counter("refused"), 4);
}

#[test]
fn packets_for_unknown_connections_get_a_reset() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.rx_buffer(4096);
    // A guest-initiated connection (to the host): refused.
    g.send(g.guest_header(5000, OP_REQUEST, 0, 4096, 0), &[]);
    let r = g.received();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].0.op, r[0].0.dst_port, r[0].0.src_port),
        (OP_RST, GUEST_PORT, 5000)
    );
    // Data for a connection that does not exist: reset too.
    g.rx_buffer(4096);
    g.send(
        g.guest_header(FIRST_HOST_PORT + 9, OP_RW, 3, 4096, 0),
        b"abc",
    );
    assert_eq!(g.received()[0].0.op, OP_RST);
    // A wrong source CID is dropped without an answer.
    let mut h = g.guest_header(5000, OP_REQUEST, 0, 4096, 0);
    h.src_cid = HOST_CID;
    g.rx_buffer(4096);
    g.send(h, &[]);
    assert!(g.received().is_empty());
    assert_eq!(g.counter("malformed"), 1);
}

#[test]
fn reset_floods_are_bounded() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    for i in 0..(MAX_PENDING_RESETS + 100) as u32 {
        g.send(g.guest_header(7000 + i, OP_REQUEST, 0, 0, 0), &[]);
    }
    assert_eq!(g.dev.resets.len(), MAX_PENDING_RESETS);
}

#[test]
fn hostile_tx_descriptors_are_refused_without_panics() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut c, port) = g.connect(64 << 10);
    let before = g.counter("malformed");
    // A header shorter than 44 bytes.
    let a = g.alloc(16);
    g.submit(true, &[(a, 10, false)]);
    g.process(TX);
    // A length past the data the chain holds.
    let h = g.guest_header(port, OP_RW, 1000, 64 << 10, 0);
    let ha = g.alloc(64);
    mem.write_slice(&h.to_bytes(), GuestAddress(ha)).unwrap();
    g.submit(true, &[(ha, HDR_LEN as u32 + 10, false)]);
    g.process(TX);
    assert_eq!(
        g.dev.connections(),
        0,
        "a bad packet on a connection resets it"
    );
    assert!(read_to_end(&mut c).is_empty());
    // A huge length, a descriptor outside guest memory, a writable tx descriptor.
    let h = g.guest_header(port, OP_RW, u32::MAX, 0, 0);
    mem.write_slice(&h.to_bytes(), GuestAddress(ha)).unwrap();
    g.submit(true, &[(ha, HDR_LEN as u32, false)]);
    g.submit(true, &[(MEM_END + 0x1000, 4096, false)]);
    g.submit(true, &[(0xffff_ffff_ffff_f000, 0x2000, false)]);
    g.submit(true, &[(ha, HDR_LEN as u32, true)]);
    g.process(TX);
    // A loop: descriptor 0 -> 1 -> 0.
    let l = g.alloc(64);
    let d0 = SplitDescriptor::new(l, 22, VRING_DESC_F_NEXT as u16, 1);
    let d1 = SplitDescriptor::new(l, 22, VRING_DESC_F_NEXT as u16, 0);
    g.tx.desc_table().store(0, RawDescriptor::from(d0)).unwrap();
    g.tx.desc_table().store(1, RawDescriptor::from(d1)).unwrap();
    g.tx.avail()
        .ring()
        .ref_at((g.tx_avail % QLEN) as usize)
        .unwrap()
        .store(0);
    g.tx_avail = g.tx_avail.wrapping_add(1);
    g.tx.avail().idx().store(g.tx_avail);
    g.process(TX);
    assert!(
        g.counter("malformed") >= before + 6,
        "{:?}",
        g.dev.counters()
    );
    // Every chain was returned to the guest.
    assert_eq!(g.tx.used().idx().load(), g.tx_avail);
}

#[test]
fn hostile_rx_buffers_are_returned_empty_and_the_packet_waits() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.send(g.guest_header(5000, OP_REQUEST, 0, 0, 0), &[]); // queues one RST
                                                            // Read-only, too small, outside memory: each comes back with length 0.
    let a = g.alloc(4096);
    let h0 = g.submit(false, &[(a, 4096, false)]);
    g.rx_chains.insert(h0, vec![(a, 4096)]);
    let h1 = g.submit(false, &[(a, 10, true)]);
    g.rx_chains.insert(h1, vec![(a, 10)]);
    let h2 = g.submit(false, &[(MEM_END - 8, 4096, true)]);
    g.rx_chains.insert(h2, vec![]);
    g.process(RX);
    let r = g.received();
    assert_eq!(r.len(), 3);
    assert!(r
        .iter()
        .all(|(h, d)| *h == Header::default() && d.is_empty()));
    assert_eq!(g.counter("malformed"), 3);
    // A good buffer then gets the packet.
    g.rx_buffer(4096);
    g.process(RX);
    let r = g.received();
    assert_eq!((r.len(), r[0].0.op), (1, OP_RST));
}

#[test]
fn an_avail_index_far_ahead_is_a_queue_failure_not_a_panic() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.tx.avail().idx().store(QLEN * 3);
    assert!(g.dev.process(TX, &mut g.queues, &mem).is_err());
}

#[test]
fn work_per_pass_is_bounded_by_the_queue_size() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    // A full tx queue of bogus packets, then a pass: at most QLEN chains.
    for i in 0..QLEN as u32 {
        g.send_no_process(g.guest_header(9000 + i, OP_CREDIT_UPDATE, 0, 0, 0));
    }
    g.process(TX);
    assert_eq!(g.tx.used().idx().load(), QLEN);
}

impl Guest<'_> {
    fn send_no_process(&mut self, h: Header) {
        let ha = self.alloc(HDR_LEN as u64);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(ha))
            .unwrap();
        self.submit(true, &[(ha, HDR_LEN as u32, false)]);
    }
}

#[test]
fn reset_of_the_device_closes_every_connection() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut c, _) = g.connect(64 << 10);
    g.dev.reset();
    assert_eq!(g.dev.connections(), 0);
    assert!(read_to_end(&mut c).is_empty());
}
