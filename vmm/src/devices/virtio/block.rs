//! virtio-blk: a disk backed by a host file, read-only or read-write.
//!
//! Features: VERSION_1, EVENT_IDX, SEG_MAX (so Linux sends many segments per
//! request instead of one), SIZE_MAX (which with SEG_MAX bounds a request to
//! [`MAX_REQUEST_BYTES`]), RO for read-only disks, FLUSH for writable ones.
//! Not INDIRECT_DESC: a chain with an indirect descriptor is refused.
//! Requests: IN (read), OUT (write), FLUSH, GET_ID (the serial number Linux
//! shows as `/sys/block/vdX/serial`; duet's guest init finds disks by it).
//!
//! A request is parsed as virtio 1.x allows any framing (no assumption that
//! header, data and status sit in separate descriptors): the readable part of
//! the chain is a byte stream whose first 16 bytes are the header (and the
//! rest the data of a write); the writable part is a byte stream whose last
//! byte is the status (and the rest the buffer of a read). Data moves between
//! the file and guest memory with preadv/pwritev straight into the guest's
//! buffers, one system call per request.
//!
//! Malformed requests get VIRTIO_BLK_S_IOERR (or UNSUPP for unknown types)
//! and the device keeps serving: a header shorter than 16 bytes (e.g. a
//! write-only header), readable descriptors after writable ones, a data
//! length that is not a multiple of 512, sectors past the end, buffers
//! outside guest memory, a write to a read-only disk. A chain with no
//! writable byte at all has nowhere to put a status: it is returned with
//! length 0 and counted in `virtio.<name>.malformed`, as is a chain with an
//! indirect descriptor (INDIRECT_DESC was not negotiated).
//!
//! The work of one notification is bounded, whatever the driver puts in the
//! rings (a hostile guest can make the device's own DMA move the avail index,
//! so "until the ring is empty" may be never): at most one queue's worth of
//! chains and [`BYTES_PER_PASS`] of data per pass. Work left over is reported
//! ([`QueueOutcome::more`]); the transport interrupts the driver and goes on
//! at its next register access (Linux's interrupt handler reads
//! InterruptStatus), so each exit does a bounded amount and the vCPU thread
//! always gets back to its stop flag.

use super::{
    QueueFailure, QueueOutcome, VirtioDevice, F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, TYPE_BLOCK,
};
use crate::memory::GuestMemory;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// Bytes per sector (the unit of the request header and the capacity).
pub const SECTOR_SIZE: u64 = 512;
/// Entries of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of a request header: type (u32), reserved (u32), sector (u64).
const HEADER_LEN: usize = 16;
/// Longest serial number (GET_ID answers 20 bytes, NUL-padded).
pub const SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Data segments per request announced in seg_max (queue size less header and status).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Offset of seg_max in struct virtio_blk_config.
const CONFIG_SEG_MAX: usize = 12;
/// Offset of size_max (largest data segment) in struct virtio_blk_config.
const CONFIG_SIZE_MAX: usize = 8;
/// Largest data segment announced in size_max. Linux's default largest
/// request (max_sectors_kb 1280) takes 10 such segments.
pub const SIZE_MAX: u32 = 128 << 10;
/// Largest request the device serves (seg_max segments of size_max bytes);
/// a driver that keeps to the config space never sends more. Larger ones
/// get VIRTIO_BLK_S_IOERR.
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Data one pass over the queue moves before it yields (it finishes the
/// request that crosses the line): with [`MAX_REQUEST_BYTES`], an exit
/// copies at most about 64 MiB.
pub const BYTES_PER_PASS: u64 = 32 << 20;
/// Bytes of config space served (capacity, size_max, seg_max, geometry, blk_size).
const CONFIG_LEN: usize = 24;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file cannot be opened.
    #[error("cannot open disk image {} for virtio-blk {serial}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Serial of the disk.
        serial: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The backing file's size is not a whole number of sectors.
    #[error("disk image {} is {size} bytes, not a multiple of 512", path.display())]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The serial number is too long or not printable ASCII.
    #[error("virtio-blk serial {0:?} must be 1-20 printable ASCII characters")]
    Serial(String),
}

/// What to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Backing file.
    pub path: PathBuf,
    /// Refuse writes (and offer VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// Serial number the guest sees (`/sys/block/vdX/serial`).
    pub serial: String,
}

/// Per-disk statistics.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    requests: u64,
    read_bytes: u64,
    write_bytes: u64,
    flushes: u64,
    errors: u64,
    malformed: u64,
    budget_yields: u64,
}

/// A virtio-blk device backed by a file.
#[derive(Debug)]
pub struct Block {
    name: String,
    path: PathBuf,
    file: File,
    read_only: bool,
    serial: [u8; SERIAL_LEN],
    sectors: u64,
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    stats: Stats,
}

/// A request's status and how many bytes the device wrote into the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Done {
    status: u8,
    data_written: u32,
    /// Bytes moved between the file and guest memory.
    moved: u64,
}

impl Done {
    fn status(status: u32) -> Done {
        Done {
            status: status as u8,
            data_written: 0,
            moved: 0,
        }
    }
}

/// A chain split into its readable and writable parts (guest address, length).
struct Parts {
    readable: Vec<(GuestAddress, usize)>,
    writable: Vec<(GuestAddress, usize)>,
    /// A readable descriptor came after a writable one.
    misordered: bool,
    /// The chain has an indirect descriptor (and INDIRECT_DESC is off).
    indirect: bool,
}

impl Block {
    /// The backing file (a snapshot copies a writable disk from it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the disk refuses writes.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The serial the guest sees.
    pub fn serial(&self) -> String {
        let end = self
            .serial
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(SERIAL_LEN);
        String::from_utf8_lossy(&self.serial[..end]).into_owned()
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.sectors * 512
    }

    /// Opens `cfg.path` (read-only or read-write) as a disk.
    pub fn open(cfg: &BlockConfig) -> Result<Block, BlockError> {
        let serial = cfg.serial.as_bytes();
        if serial.is_empty()
            || serial.len() > SERIAL_LEN
            || !serial.iter().all(|b| b.is_ascii_graphic())
        {
            return Err(BlockError::Serial(cfg.serial.clone()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&cfg.path)
            .map_err(|source| BlockError::Open {
                path: cfg.path.clone(),
                serial: cfg.serial.clone(),
                source,
            })?;
        let size = file
            .metadata()
            .map_err(|source| BlockError::Open {
                path: cfg.path.clone(),
                serial: cfg.serial.clone(),
                source,
            })?
            .len();
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::Size {
                path: cfg.path.clone(),
                size,
            });
        }
        let sectors = size / SECTOR_SIZE;
        let mut config = [0u8; CONFIG_LEN];
        config[..8].copy_from_slice(&sectors.to_le_bytes());
        config[CONFIG_SEG_MAX..CONFIG_SEG_MAX + 4].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[CONFIG_SIZE_MAX..CONFIG_SIZE_MAX + 4].copy_from_slice(&SIZE_MAX.to_le_bytes());
        let mut id = [0u8; SERIAL_LEN];
        id[..serial.len()].copy_from_slice(serial);
        Ok(Block {
            name: format!("virtio-blk.{}", cfg.serial),
            path: cfg.path.clone(),
            file,
            read_only: cfg.read_only,
            serial: id,
            sectors,
            config,
            acked_features: 0,
            stats: Stats::default(),
        })
    }

    /// The backing file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    fn split(chain: impl Iterator<Item = Descriptor>) -> Parts {
        let mut parts = Parts {
            readable: Vec::new(),
            writable: Vec::new(),
            misordered: false,
            indirect: false,
        };
        for d in chain {
            parts.indirect |= d.refers_to_indirect_table();
            let seg = (d.addr(), d.len() as usize);
            if d.is_write_only() {
                parts.writable.push(seg);
            } else {
                parts.misordered |= !parts.writable.is_empty();
                parts.readable.push(seg);
            }
        }
        parts
    }

    /// Handles one chain; returns the used length to report (0 if no
    /// status could be written) and the data bytes moved.
    fn handle_chain(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemory>,
        queue: &Queue,
        mem: &GuestMemory,
    ) -> (u32, u64) {
        self.stats.requests += 1;
        let parts = if self.acked_features & F_INDIRECT_DESC != 0 {
            Self::split(chain)
        } else {
            // virtio-queue's iterator would follow an indirect table: walk
            // the chain here, reading each descriptor once, and stop at one.
            Self::split(direct_chain(
                mem,
                GuestAddress(queue.desc_table()),
                queue.size(),
                chain.head_index(),
            ))
        };
        if parts.indirect {
            self.stats.malformed += 1;
            return (0, 0);
        }
        let Some(status_at) = last_byte(&parts.writable) else {
            self.stats.malformed += 1;
            return (0, 0);
        };
        let mut data_in = parts.writable.clone();
        truncate_segments(&mut data_in, 1);
        let done = if parts.misordered {
            Done::status(VIRTIO_BLK_S_IOERR)
        } else {
            self.execute(&parts.readable, &data_in, mem)
        };
        if done.status != VIRTIO_BLK_S_OK as u8 {
            self.stats.errors += 1;
        }
        match mem.write_obj(done.status, status_at) {
            Ok(()) => (done.data_written + 1, done.moved),
            Err(_) => {
                self.stats.malformed += 1;
                (0, done.moved)
            }
        }
    }

    fn execute(
        &mut self,
        readable: &[(GuestAddress, usize)],
        data_in: &[(GuestAddress, usize)],
        mem: &GuestMemory,
    ) -> Done {
        let mut header = [0u8; HEADER_LEN];
        let Some(data_out) = gather(readable, &mut header, mem) else {
            return Done::status(VIRTIO_BLK_S_IOERR);
        };
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        match kind {
            VIRTIO_BLK_T_IN => self.transfer(sector, data_in, mem, Direction::Read),
            VIRTIO_BLK_T_OUT if self.read_only => Done::status(VIRTIO_BLK_S_IOERR),
            VIRTIO_BLK_T_OUT => self.transfer(sector, &data_out, mem, Direction::Write),
            VIRTIO_BLK_T_FLUSH => {
                self.stats.flushes += 1;
                if self.read_only || self.file.sync_data().is_ok() {
                    Done::status(VIRTIO_BLK_S_OK)
                } else {
                    Done::status(VIRTIO_BLK_S_IOERR)
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                let mut left = &self.serial[..];
                let mut written = 0u32;
                for &(addr, len) in data_in {
                    let n = len.min(left.len());
                    if mem.write_slice(&left[..n], addr).is_err() {
                        return Done::status(VIRTIO_BLK_S_IOERR);
                    }
                    left = &left[n..];
                    written += n as u32;
                }
                Done {
                    status: VIRTIO_BLK_S_OK as u8,
                    data_written: written,
                    moved: 0,
                }
            }
            _ => Done::status(VIRTIO_BLK_S_UNSUPP),
        }
    }

    fn transfer(
        &mut self,
        sector: u64,
        segments: &[(GuestAddress, usize)],
        mem: &GuestMemory,
        dir: Direction,
    ) -> Done {
        let len: u64 = segments.iter().map(|s| s.1 as u64).sum();
        let in_range = sector
            .checked_add(len / SECTOR_SIZE)
            .is_some_and(|end| end <= self.sectors);
        if !len.is_multiple_of(SECTOR_SIZE) || !in_range || len > MAX_REQUEST_BYTES {
            return Done::status(VIRTIO_BLK_S_IOERR);
        }
        let Some(slices) = guest_slices(segments, mem) else {
            return Done::status(VIRTIO_BLK_S_IOERR);
        };
        let offset = sector * SECTOR_SIZE;
        if transfer_all(&self.file, offset, &slices, dir).is_err() {
            return Done::status(VIRTIO_BLK_S_IOERR);
        }
        match dir {
            Direction::Read => {
                self.stats.read_bytes += len;
                Done {
                    status: VIRTIO_BLK_S_OK as u8,
                    data_written: len as u32,
                    moved: len,
                }
            }
            Direction::Write => {
                self.stats.write_bytes += len;
                Done {
                    moved: len,
                    ..Done::status(VIRTIO_BLK_S_OK)
                }
            }
        }
    }
}

/// The descriptors of the chain at `head` in the table at `table` (`size`
/// entries), each read once: it ends at a descriptor without NEXT, a next
/// index outside the table, after `size` descriptors (a loop), before the
/// chain passes 2^32 bytes, or with an indirect descriptor (returned last,
/// so the caller sees it).
pub(super) fn direct_chain(
    mem: &GuestMemory,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> impl Iterator<Item = Descriptor> + '_ {
    let mut next = Some(head);
    let mut left = size;
    let mut bytes = 0u32;
    std::iter::from_fn(move || {
        let index = next.take()?;
        if index >= size || left == 0 {
            return None;
        }
        left -= 1;
        let at = table.checked_add(u64::from(index) * 16)?;
        let d: Descriptor = mem.read_obj(at).ok()?;
        bytes = bytes.checked_add(d.len())?;
        if d.has_next() && !d.refers_to_indirect_table() {
            next = Some(d.next());
        }
        Some(d)
    })
}

/// Address of the last byte of a list of segments.
fn last_byte(segments: &[(GuestAddress, usize)]) -> Option<GuestAddress> {
    let &(addr, len) = segments.iter().rev().find(|s| s.1 > 0)?;
    addr.0.checked_add(len as u64 - 1).map(GuestAddress)
}

/// Drops the last `n` bytes of a list of segments.
fn truncate_segments(segments: &mut Vec<(GuestAddress, usize)>, mut n: usize) {
    while n > 0 {
        let Some(last) = segments.last_mut() else {
            return;
        };
        if last.1 > n {
            last.1 -= n;
            return;
        }
        n -= last.1;
        segments.pop();
    }
}

/// Reads the first `out.len()` bytes of `segments` into `out`; returns the
/// rest of the segments, or None if they are too short or not guest memory.
fn gather(
    segments: &[(GuestAddress, usize)],
    out: &mut [u8],
    mem: &GuestMemory,
) -> Option<Vec<(GuestAddress, usize)>> {
    let mut filled = 0;
    let mut rest = Vec::new();
    for &(addr, len) in segments {
        if filled < out.len() {
            let n = len.min(out.len() - filled);
            mem.read_slice(&mut out[filled..filled + n], addr).ok()?;
            filled += n;
            if n < len {
                rest.push((addr.checked_add(n as u64)?, len - n));
            }
        } else {
            rest.push((addr, len));
        }
    }
    (filled == out.len()).then_some(rest)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// Host views of guest buffers, or None if any byte is not guest RAM.
fn guest_slices<'m>(
    segments: &[(GuestAddress, usize)],
    mem: &'m GuestMemory,
) -> Option<Vec<vm_memory::VolatileSlice<'m, ()>>> {
    let mut out = Vec::with_capacity(segments.len());
    for &(addr, len) in segments {
        if len == 0 {
            continue;
        }
        for s in mem.get_slices(addr, len) {
            out.push(s.ok()?);
        }
    }
    Some(out)
}

/// Moves all of `slices` from/to the file at `offset` (preadv/pwritev, looping on short transfers).
fn transfer_all(
    file: &File,
    mut offset: u64,
    slices: &[vm_memory::VolatileSlice<'_, ()>],
    dir: Direction,
) -> std::io::Result<()> {
    let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
    let mut iov: Vec<libc::iovec> = guards
        .iter()
        .zip(slices)
        .map(|(g, s)| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: s.len(),
        })
        .collect();
    let mut first = 0;
    while first < iov.len() {
        let batch = &iov[first..iov.len().min(first + 1024)];
        // SAFETY: every iovec points into guest memory that `guards` keep
        // mapped for the whole call and spans exactly its slice's length; the
        // kernel only reads (pwritev) or writes (preadv) those bytes.
        let n = unsafe {
            match dir {
                Direction::Read => libc::preadv(
                    file.as_raw_fd(),
                    batch.as_ptr(),
                    batch.len() as i32,
                    offset as i64,
                ),
                Direction::Write => libc::pwritev(
                    file.as_raw_fd(),
                    batch.as_ptr(),
                    batch.len() as i32,
                    offset as i64,
                ),
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        offset += n as u64;
        let mut n = n as usize;
        while n > 0 {
            let v = &mut iov[first];
            if n >= v.iov_len {
                n -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: advancing within the same buffer, by less than its length.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                v.iov_len -= n;
                n = 0;
            }
        }
        while first < iov.len() && iov[first].iov_len == 0 {
            first += 1;
        }
    }
    Ok(())
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        let mut f =
            F_VERSION_1 | F_EVENT_IDX | (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_SIZE_MAX);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: &super::Activation<'_>) -> Result<(), String> {
        self.acked_features = a.acked_features;
        Ok(())
    }

    fn reset(&mut self) {
        self.acked_features = 0;
    }

    fn process(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemory,
    ) -> Result<QueueOutcome, QueueFailure> {
        match queues.get_mut(index) {
            Some(q) => self.process_queue(index, q, mem),
            None => Ok(QueueOutcome::default()),
        }
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        let s = self.stats;
        [
            ("requests", s.requests),
            ("read_bytes", s.read_bytes),
            ("write_bytes", s.write_bytes),
            ("flushes", s.flushes),
            ("errors", s.errors),
            ("malformed", s.malformed),
            ("budget_yields", s.budget_yields),
        ]
        .into_iter()
        .map(|(k, v)| (format!("virtio.{}.{k}", self.name), v))
        .collect()
    }
}

impl Block {
    /// Serves queue `index` (the one request queue): one bounded pass.
    pub fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<QueueOutcome, QueueFailure> {
        let fail = |name: &str, source| QueueFailure {
            device: name.to_string(),
            queue: index,
            source,
        };
        let mut chains_left = queue.size();
        let mut moved = 0u64;
        let mut used_any = false;
        let mut more = false;
        loop {
            queue
                .disable_notification(mem)
                .map_err(|e| fail(&self.name, e))?;
            while chains_left > 0 && moved < BYTES_PER_PASS {
                let chain = match queue.iter(mem) {
                    Ok(mut it) => it.next(),
                    Err(e) => return Err(fail(&self.name, e)),
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let (len, bytes) = self.handle_chain(chain, queue, mem);
                queue
                    .add_used(mem, head, len)
                    .map_err(|e| fail(&self.name, e))?;
                used_any = true;
                chains_left -= 1;
                moved += bytes;
            }
            let spent = chains_left == 0 || moved >= BYTES_PER_PASS;
            if spent && has_more(queue, mem).map_err(|e| fail(&self.name, e))? {
                // Notifications stay off: the transport comes back for the rest.
                more = true;
                break;
            }
            if !queue
                .enable_notification(mem)
                .map_err(|e| fail(&self.name, e))?
            {
                break;
            }
            if spent {
                more = true;
                break;
            }
        }
        if more {
            self.stats.budget_yields += 1;
        }
        let wanted = used_any
            && queue
                .needs_notification(mem)
                .map_err(|e| fail(&self.name, e))?;
        // Work left over: interrupt whatever the suppression says, so that
        // the driver comes back (and its register accesses resume the work).
        Ok(QueueOutcome {
            interrupt: wanted || (more && used_any),
            more,
        })
    }
}

/// Whether the driver made chains available that the device has not taken.
fn has_more(queue: &Queue, mem: &GuestMemory) -> Result<bool, virtio_queue::Error> {
    let idx = queue.avail_idx(mem, Ordering::Acquire)?;
    Ok(idx != Wrapping(queue.next_avail()))
}

#[cfg(test)]
mod chain_props;
#[cfg(test)]
mod tests;
