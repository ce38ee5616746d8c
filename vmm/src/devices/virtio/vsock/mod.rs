//! virtio-vsock with Firecracker's "hybrid vsock over a Unix socket" host
//! side: the guest sees an ordinary virtio-vsock device (CID [`GUEST_CID`])
//! and uses AF_VSOCK stream sockets; the host side is one listening Unix
//! stream socket (`<instance>/agent.sock`, [`crate::agent::SOCKET`]). A host
//! process connects to it and writes `CONNECT <port>\n`; the device sends
//! the guest a connection request to that vsock port and, once the guest
//! accepts, answers `OK <hostport>\n` on the Unix connection, after which
//! bytes flow both ways between the Unix connection and the guest's vsock
//! stream. Connections the guest starts are refused (RST): duet only needs
//! host-to-guest (`duet exec` reaching the guest agent).
//!
//! Why not vhost-vsock: vhost-vsock needs `/dev/vhost-vsock` inside the
//! VMM's jail and the `vhost_vsock` host module loaded (duet never loads
//! host modules), gives the VM a CID in a host-wide namespace, and moves the
//! device's parsing of guest-controlled rings into the host kernel, a
//! kernel attack surface duet otherwise avoids. The hybrid device is plain
//! user-space code in the jailed, unprivileged, seccomp-filtered VMM: its
//! only host resource is a listening socket that the unjailed parent binds
//! and passes in (so the jail needs no bind mount and no file system access).
//!
//! Queues: rx (device to guest), tx (guest to device), event (never used:
//! it only carries transport resets for live migration). Only VERSION_1 is
//! offered: no EVENT_IDX, no SEQPACKET.
//!
//! Flow control is virtio-vsock's credit scheme. Each side announces
//! `buf_alloc` (its receive buffer for the connection) and `fwd_cnt` (bytes
//! it has consumed) in every header; a sender may have at most
//! `peer.buf_alloc - (sent - peer.fwd_cnt)` bytes in flight. The device
//! announces [`CONN_BUF_ALLOC`] per connection and buffers what the Unix
//! peer has not read yet up to that much; a guest that sends past its credit
//! gets its connection reset. It sends the guest a credit update when it has
//! forwarded a quarter of the buffer since the last one (or when asked), and
//! reads from the Unix side only as much as the guest's credit allows.
//!
//! The guest is hostile: every header field is checked (CIDs, type, op,
//! length against the chain and [`MAX_PKT_DATA`]), bad chains (too short,
//! outside guest memory, indirect, looping) are returned unused and counted
//! in `malformed`, unknown connections get RST, connections are limited to
//! [`MAX_CONNECTIONS`], queued resets to [`MAX_PENDING_RESETS`], and each
//! pass over a queue serves at most a queue's worth of chains and
//! [`BYTES_PER_PASS`] bytes (the transport resumes the rest, as for
//! virtio-blk).
//!
//! Two threads drive the device, both under its transport's lock: a vCPU
//! that notifies rx or tx (guest packets, new rx buffers), and the device's
//! own host thread ([`super::host_thread::HostThread`]) that polls the listening socket
//! and the Unix connections and moves host data into the rx queue.

mod packet;

pub use packet::*;

use super::ring_io::{
    checked_capacity, has_more, read_from, read_nb, segments, serve_rx_tx, write_to,
};
use super::{QueueFailure, QueueOutcome, VirtioDevice, F_VERSION_1, TYPE_VSOCK};
use crate::memory::GuestMemory;
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
#[cfg(test)]
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// The guest's context id (2 is the host; 0, 1 and u32::MAX are reserved).
pub const GUEST_CID: u64 = 3;
/// The host's context id.
pub const HOST_CID: u64 = 2;
/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Queue indexes.
pub const RX: usize = 0;
/// Guest to device.
pub const TX: usize = 1;
/// Events (unused).
pub const EVENT: usize = 2;
/// Largest data part of one packet the device accepts or sends.
pub const MAX_PKT_DATA: usize = 64 << 10;
/// Receive buffer the device announces per connection (`buf_alloc`).
pub const CONN_BUF_ALLOC: u32 = 256 << 10;
/// Open host connections at most; more are closed as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Resets for unknown connections queued at most (beyond: dropped).
pub const MAX_PENDING_RESETS: usize = 256;
/// Data one pass moves at most (it finishes the packet that crosses the line).
pub const BYTES_PER_PASS: usize = 4 << 20;
/// A host connection must send its `CONNECT` line within this time.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// The guest must accept a connection within this time.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `CONNECT <port>\n` line.
const LINE_MAX: usize = 32;
/// Local ports of host connections start here (as in Firecracker).
const FIRST_HOST_PORT: u32 = 1 << 30;
/// Connections accepted per host pass.
const ACCEPTS_PER_PASS: usize = 16;

/// Where a host connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Accepted; its `CONNECT <port>` line is not complete yet.
    AwaitingLine(Vec<u8>),
    /// The request went (or goes) to the guest; no answer yet.
    Connecting,
    /// Data flows.
    Established,
    /// The guest shut down: flush what is buffered to the host, then close.
    Closing,
}

#[derive(Debug)]
struct Conn {
    fd: OwnedFd,
    state: State,
    since: Instant,
    guest_port: u32,
    /// Guest data the Unix peer has not taken yet.
    to_host: VecDeque<u8>,
    /// Bytes written to the Unix peer (wrapping).
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: u32,
    /// Bytes sent to the guest (wrapping).
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The host thread saw the Unix side readable.
    readable: bool,
    /// The Unix peer hung up: no more polling (poll would report it again
    /// and again); rx passes read what is left, then reset the guest's end.
    hup: bool,
    send_request: bool,
    send_credit_update: bool,
}

impl Conn {
    /// Bytes the guest can take now.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn known_to_guest(&self) -> bool {
        !matches!(self.state, State::AwaitingLine(_))
    }
}

/// What the poll set's entries stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The listening socket.
    Listener,
    /// A host connection, by its local port.
    Conn(u32),
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    connections: u64,
    refused: u64,
    rx_packets: u64,
    tx_packets: u64,
    rx_bytes: u64,
    tx_bytes: u64,
    resets_sent: u64,
    malformed: u64,
    budget_yields: u64,
}

/// What the next rx packet is.
enum Next {
    Reset,
    Control(u32, u16),
    Data(u32),
}

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    name: String,
    listener: OwnedFd,
    conns: BTreeMap<u32, Conn>,
    resets: VecDeque<Header>,
    next_port: u32,
    acked_features: u64,
    wake: EventFd,
    /// The poll set may have changed since the host thread last built it.
    changed: bool,
    stats: Stats,
    config: [u8; 8],
}

/// A nonblocking send without SIGPIPE; Ok(0) when the socket is full.
fn send_nb(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: sends from a valid buffer of its length on a socket we own.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Parses `CONNECT <port>` (the line without its newline).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let s = s.strip_suffix('\r').unwrap_or(s);
    let port = s.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

impl Vsock {
    /// A device serving host connections that arrive on `listener` (a
    /// listening Unix stream socket; made nonblocking here).
    pub fn new(listener: OwnedFd) -> std::io::Result<Vsock> {
        // SAFETY: fcntl on a descriptor we own, integer arguments.
        let flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0
            || unsafe {
                libc::fcntl(
                    listener.as_raw_fd(),
                    libc::F_SETFL,
                    flags | libc::O_NONBLOCK,
                )
            } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Vsock {
            name: "virtio-vsock".into(),
            listener,
            conns: BTreeMap::new(),
            resets: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
            acked_features: 0,
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            changed: false,
            stats: Stats::default(),
            config: GUEST_CID.to_le_bytes(),
        })
    }

    /// An eventfd written whenever the poll set may have changed (for the
    /// host thread; clone it before that thread's seccomp filter is on).
    pub fn wake_fd(&self) -> std::io::Result<EventFd> {
        self.wake.try_clone()
    }

    /// Number of open host connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn mark_changed(&mut self) {
        self.changed = true;
    }

    fn flush_wake(&mut self) {
        if std::mem::take(&mut self.changed) {
            let _ = self.wake.write(1);
        }
    }

    /// What the host thread should poll: the listener, and each connection
    /// for reading (its line; data the guest has credit for) or writing
    /// (data buffered for the host). POLLHUP/POLLERR come regardless.
    pub fn poll_set(&self) -> Vec<(RawFd, i16, Token)> {
        let mut set = vec![(self.listener.as_raw_fd(), libc::POLLIN, Token::Listener)];
        for (&port, c) in self.conns.iter().filter(|(_, c)| !c.hup) {
            let mut ev = 0;
            match c.state {
                State::AwaitingLine(_) => ev |= libc::POLLIN,
                State::Connecting => {}
                State::Established => {
                    if !c.readable && c.peer_credit() > 0 {
                        ev |= libc::POLLIN;
                    }
                    if !c.to_host.is_empty() {
                        ev |= libc::POLLOUT;
                    }
                }
                State::Closing => {
                    if !c.to_host.is_empty() {
                        ev |= libc::POLLOUT;
                    }
                }
            }
            set.push((c.fd.as_raw_fd(), ev, Token::Conn(port)));
        }
        set
    }

    fn reset_header(&self, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: GUEST_CID,
            src_port,
            dst_port,
            len: 0,
            kind: TYPE_STREAM,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    fn queue_reset(&mut self, h: Header) {
        if self.resets.len() < MAX_PENDING_RESETS {
            self.resets.push_back(h);
        }
    }

    /// Closes host connection `port`; tells the guest (RST) if it knows it.
    fn kill(&mut self, port: u32) {
        if let Some(c) = self.conns.remove(&port) {
            if c.known_to_guest() {
                let h = self.reset_header(port, c.guest_port);
                self.queue_reset(h);
            }
            self.mark_changed();
        }
    }

    fn alloc_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self.next_port.wrapping_add(1).max(FIRST_HOST_PORT);
            if !self.conns.contains_key(&p) {
                return p;
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPTS_PER_PASS {
            // SAFETY: accept4 on our listening socket; no peer address wanted.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: accept4 just returned this descriptor; nobody else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if self.conns.len() >= MAX_CONNECTIONS {
                self.stats.refused += 1;
                continue;
            }
            let port = self.alloc_port();
            self.stats.connections += 1;
            self.conns.insert(
                port,
                Conn {
                    fd,
                    state: State::AwaitingLine(Vec::new()),
                    since: now,
                    guest_port: 0,
                    to_host: VecDeque::new(),
                    fwd_cnt: 0,
                    fwd_cnt_sent: 0,
                    rx_cnt: 0,
                    peer_buf_alloc: 0,
                    peer_fwd_cnt: 0,
                    readable: false,
                    hup: false,
                    send_request: false,
                    send_credit_update: false,
                },
            );
            self.mark_changed();
        }
    }

    fn read_line(&mut self, port: u32, now: Instant) {
        let Some(c) = self.conns.get_mut(&port) else {
            return;
        };
        let State::AwaitingLine(line) = &mut c.state else {
            return;
        };
        let mut buf = [0u8; LINE_MAX];
        let room = LINE_MAX - line.len();
        match read_nb(c.fd.as_raw_fd(), &mut buf[..room]) {
            Ok(None) => return,
            Ok(Some(0)) | Err(_) => {
                self.kill(port);
                return;
            }
            Ok(Some(n)) => line.extend_from_slice(&buf[..n]),
        }
        let Some(nl) = line.iter().position(|&b| b == b'\n') else {
            if line.len() >= LINE_MAX {
                self.stats.refused += 1;
                self.kill(port);
            }
            return;
        };
        // Nothing may follow the line before the answer.
        let parsed = (nl + 1 == line.len())
            .then(|| parse_connect(&line[..nl]))
            .flatten();
        match parsed {
            Some(guest_port) => {
                c.guest_port = guest_port;
                c.state = State::Connecting;
                c.since = now;
                c.send_request = true;
                self.mark_changed();
            }
            None => {
                self.stats.refused += 1;
                self.kill(port);
            }
        }
    }

    /// Writes buffered guest data to the host; false if the host is gone.
    fn flush_to_host(c: &mut Conn) -> bool {
        while !c.to_host.is_empty() {
            let (a, _) = c.to_host.as_slices();
            match send_nb(c.fd.as_raw_fd(), a) {
                Ok(0) => return true,
                Ok(n) => {
                    c.to_host.drain(..n);
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                }
                Err(_) => return false,
            }
        }
        true
    }

    fn after_forward(c: &mut Conn) {
        if c.fwd_cnt.wrapping_sub(c.fwd_cnt_sent) >= CONN_BUF_ALLOC / 4 {
            c.send_credit_update = true;
        }
    }

    /// The host thread's work after poll: accept connections, read
    /// `CONNECT` lines, flush buffered data, note readable connections,
    /// close hung-up or timed-out ones.
    pub fn host_io(&mut self, ready: &[(Token, i16)], now: Instant) {
        for &(token, rev) in ready {
            let port = match token {
                Token::Listener => {
                    if rev & libc::POLLIN != 0 {
                        self.accept(now);
                    }
                    continue;
                }
                Token::Conn(p) => p,
            };
            let Some(c) = self.conns.get_mut(&port) else {
                continue;
            };
            let hup = rev & (libc::POLLHUP | libc::POLLERR) != 0;
            match c.state {
                State::AwaitingLine(_) => {
                    if rev & libc::POLLIN != 0 || hup {
                        self.read_line(port, now);
                    }
                }
                State::Connecting => {
                    if hup {
                        self.kill(port);
                    }
                }
                State::Established | State::Closing => {
                    if rev & libc::POLLOUT != 0 {
                        if !Self::flush_to_host(c) {
                            self.kill(port);
                            continue;
                        }
                        Self::after_forward(c);
                        if c.to_host.is_empty() {
                            if c.state == State::Closing {
                                self.kill(port);
                                continue;
                            }
                            if c.fwd_cnt != c.fwd_cnt_sent {
                                c.send_credit_update = true;
                            }
                        }
                        self.changed = true;
                    }
                    let Some(c) = self.conns.get_mut(&port) else {
                        continue;
                    };
                    if c.state == State::Established && (rev & libc::POLLIN != 0 || hup) {
                        c.readable = true;
                        c.hup = hup;
                        self.changed = true;
                    } else if hup {
                        self.kill(port);
                    }
                }
            }
        }
        let expired: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| match c.state {
                State::AwaitingLine(_) => now.duration_since(c.since) > LINE_TIMEOUT,
                State::Connecting => now.duration_since(c.since) > CONNECT_TIMEOUT,
                _ => false,
            })
            .map(|(&p, _)| p)
            .collect();
        for p in expired {
            self.kill(p);
        }
        // The host thread rebuilds its poll set after every pass anyway.
        self.changed = false;
    }

    /// Handles one packet from the guest.
    fn handle_packet(&mut self, h: &Header, data: &[u8]) {
        if h.src_cid != GUEST_CID || h.dst_cid != HOST_CID {
            self.stats.malformed += 1;
            return;
        }
        let known = self
            .conns
            .get(&h.dst_port)
            .is_some_and(|c| c.known_to_guest() && c.guest_port == h.src_port);
        if h.kind != TYPE_STREAM || !known {
            if h.op != OP_RST {
                let r = self.reset_header(h.dst_port, h.src_port);
                self.queue_reset(r);
            }
            if known {
                self.kill(h.dst_port);
            }
            return;
        }
        let port = h.dst_port;
        let c = self.conns.get_mut(&port).expect("known above");
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        self.changed = true;
        match (h.op, &c.state) {
            (OP_RESPONSE, State::Connecting) => {
                c.state = State::Established;
                let ok = format!("OK {port}\n");
                if !matches!(send_nb(c.fd.as_raw_fd(), ok.as_bytes()), Ok(n) if n == ok.len()) {
                    self.kill(port);
                }
            }
            (OP_RW, State::Established) => {
                if c.to_host.len() + data.len() > CONN_BUF_ALLOC as usize {
                    // Past the credit the device announced.
                    self.stats.malformed += 1;
                    self.kill(port);
                    return;
                }
                c.to_host.extend(data);
                if !Self::flush_to_host(c) {
                    self.kill(port);
                    return;
                }
                Self::after_forward(c);
            }
            (OP_CREDIT_UPDATE, State::Established | State::Closing) => {}
            (OP_CREDIT_REQUEST, State::Established | State::Closing) => {
                c.send_credit_update = true;
            }
            (OP_SHUTDOWN, State::Established | State::Closing) => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    c.state = State::Closing;
                    c.readable = false;
                    if c.to_host.is_empty() {
                        self.kill(port);
                    }
                }
            }
            (OP_RST, _) => {
                // The guest forgot it: no RST back.
                self.conns.remove(&port);
            }
            _ => {
                self.stats.malformed += 1;
                self.kill(port);
            }
        }
    }

    /// One tx chain: header, data, handled. Returns the data bytes.
    fn handle_tx_chain(&mut self, mem: &GuestMemory, queue: &Queue, head: u16) -> usize {
        let Some(segs) = segments(mem, queue, head, false) else {
            self.stats.malformed += 1;
            return 0;
        };
        let mut hb = [0u8; HDR_LEN];
        if !read_from(mem, &segs, 0, &mut hb) {
            self.stats.malformed += 1;
            return 0;
        }
        let h = Header::from_bytes(&hb);
        self.stats.tx_packets += 1;
        let len = h.len as usize;
        let mut data = Vec::new();
        let fits = len <= MAX_PKT_DATA && {
            data.resize(len, 0);
            read_from(mem, &segs, HDR_LEN, &mut data)
        };
        if !fits || (h.op != OP_RW && len != 0) {
            self.stats.malformed += 1;
            if self
                .conns
                .get(&h.dst_port)
                .is_some_and(|c| c.known_to_guest() && c.guest_port == h.src_port)
            {
                self.kill(h.dst_port);
            }
            return 0;
        }
        self.stats.tx_bytes += len as u64;
        self.handle_packet(&h, &data);
        len
    }

    fn process_tx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<(bool, bool), virtio_queue::Error> {
        let mut chains = queue.size();
        let mut bytes = 0usize;
        let mut used = false;
        while chains > 0 && bytes < BYTES_PER_PASS {
            let Some(chain) = queue.iter(mem)?.next() else {
                break;
            };
            let head = chain.head_index();
            bytes += self.handle_tx_chain(mem, queue, head);
            queue.add_used(mem, head, 0)?;
            used = true;
            chains -= 1;
        }
        let spent = chains == 0 || bytes >= BYTES_PER_PASS;
        Ok((used, spent && has_more(queue, mem)?))
    }

    /// The next rx packet to send, if any.
    fn next_rx(&self) -> Option<Next> {
        if !self.resets.is_empty() {
            return Some(Next::Reset);
        }
        for (&port, c) in &self.conns {
            if c.send_request {
                return Some(Next::Control(port, OP_REQUEST));
            }
            if c.send_credit_update && c.known_to_guest() {
                return Some(Next::Control(port, OP_CREDIT_UPDATE));
            }
        }
        self.conns
            .iter()
            .find(|(_, c)| c.state == State::Established && c.readable && c.peer_credit() > 0)
            .map(|(&p, _)| Next::Data(p))
    }

    fn conn_header(&mut self, port: u32, op: u16, len: u32) -> Header {
        let c = self.conns.get_mut(&port).expect("caller checked");
        c.fwd_cnt_sent = c.fwd_cnt;
        c.send_credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: GUEST_CID,
            src_port: port,
            dst_port: c.guest_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: c.fwd_cnt,
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
        let mut buf = Vec::new();
        while chains > 0 && bytes < BYTES_PER_PASS {
            let Some(next) = self.next_rx() else {
                break;
            };
            let Some(chain) = queue.iter(mem)?.next() else {
                break;
            };
            let head = chain.head_index();
            chains -= 1;
            let segs = segments(mem, queue, head, true);
            let cap = segs.as_deref().and_then(|s| checked_capacity(mem, s));
            let (Some(segs), Some(cap)) = (segs, cap.filter(|&c| c >= HDR_LEN)) else {
                // Unusable buffer: returned empty; the packet waits for the next.
                self.stats.malformed += 1;
                queue.add_used(mem, head, 0)?;
                used = true;
                continue;
            };
            let (h, data_len) = match next {
                Next::Reset => {
                    let h = self.resets.pop_front().expect("next_rx saw one");
                    self.stats.resets_sent += 1;
                    (h, 0)
                }
                Next::Control(port, op) => {
                    if op == OP_REQUEST {
                        if let Some(c) = self.conns.get_mut(&port) {
                            c.send_request = false;
                        }
                    }
                    (self.conn_header(port, op, 0), 0)
                }
                Next::Data(port) => {
                    let c = self.conns.get_mut(&port).expect("next_rx saw it");
                    let max = (cap - HDR_LEN)
                        .min(MAX_PKT_DATA)
                        .min(c.peer_credit() as usize);
                    buf.resize(max, 0);
                    match read_nb(c.fd.as_raw_fd(), &mut buf) {
                        Ok(None) => {
                            c.readable = false;
                            self.changed = true;
                            queue.go_to_previous_position();
                            chains += 1;
                            continue;
                        }
                        Ok(Some(n)) if n > 0 => {
                            c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                            (self.conn_header(port, OP_RW, n as u32), n)
                        }
                        _ => {
                            // The host side closed (or failed): reset the guest's end.
                            let guest_port = c.guest_port;
                            self.conns.remove(&port);
                            self.changed = true;
                            self.stats.resets_sent += 1;
                            (self.reset_header(port, guest_port), 0)
                        }
                    }
                }
            };
            let mut pkt = Vec::with_capacity(HDR_LEN + data_len);
            pkt.extend_from_slice(&h.to_bytes());
            pkt.extend_from_slice(&buf[..data_len]);
            // The capacity check above makes this fit in guest memory.
            let len = if write_to(mem, &segs, &pkt) {
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += data_len as u64;
                pkt.len() as u32
            } else {
                self.stats.malformed += 1;
                0
            };
            queue.add_used(mem, head, len)?;
            used = true;
            bytes += data_len;
        }
        let spent = chains == 0 || bytes >= BYTES_PER_PASS;
        let more = spent && self.next_rx().is_some() && has_more(queue, mem)?;
        Ok((used, more))
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: &super::Activation<'_>) -> Result<(), String> {
        self.acked_features = a.acked_features;
        self.mark_changed();
        self.flush_wake();
        Ok(())
    }

    fn reset(&mut self) {
        // Every host connection ends (its peer reads EOF); the guest forgot them.
        self.conns.clear();
        self.resets.clear();
        self.acked_features = 0;
        self.mark_changed();
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
            "virtio-vsock",
            index,
            (RX, TX),
            queues,
            mem,
            &mut yields,
            |qi, q| {
                if qi == TX {
                    self.process_tx(q, mem)
                } else {
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
            ("connections", s.connections),
            ("refused", s.refused),
            ("rx_packets", s.rx_packets),
            ("tx_packets", s.tx_packets),
            ("rx_bytes", s.rx_bytes),
            ("tx_bytes", s.tx_bytes),
            ("resets_sent", s.resets_sent),
            ("malformed", s.malformed),
            ("budget_yields", s.budget_yields),
        ]
        .into_iter()
        .map(|(k, v)| (format!("virtio.{}.{k}", self.name), v))
        .collect()
    }
}

#[cfg(test)]
mod tests;

impl super::host_thread::HostSide for Vsock {
    type Token = Token;
    const RX: usize = RX;
    const THREAD: &'static str = "duet-vsock";
    fn wake_fd(&self) -> std::io::Result<EventFd> {
        Vsock::wake_fd(self)
    }
    fn poll_set(&self) -> Vec<(RawFd, i16, Token)> {
        Vsock::poll_set(self)
    }
    fn host_io(&mut self, ready: &[(Token, i16)], now: Instant) {
        Vsock::host_io(self, ready, now)
    }
}
