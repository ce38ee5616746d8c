//! Moving bytes between virtqueue chains and host buffers, for the devices
//! whose host side is a stream or a tap (vsock, net): a chain's segments,
//! checked against guest memory, read and written in order.

use super::block::direct_chain;
use crate::memory::GuestMemory;
use std::num::Wrapping;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

/// A nonblocking read; Ok(None) when nothing is there.
pub(super) fn read_nb(fd: RawFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    loop {
        // SAFETY: reads into a valid buffer of its length from a descriptor we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Segments (address, length) of a chain's readable or writable part, or
/// None if it has an indirect descriptor or the other kind mixed in.
pub(super) fn segments(
    mem: &GuestMemory,
    queue: &Queue,
    head: u16,
    writable: bool,
) -> Option<Vec<(GuestAddress, usize)>> {
    let mut out = Vec::new();
    for d in direct_chain(mem, GuestAddress(queue.desc_table()), queue.size(), head) {
        if d.refers_to_indirect_table() || d.is_write_only() != writable {
            return None;
        }
        out.push((d.addr(), d.len() as usize));
    }
    Some(out)
}

/// Copies `out.len()` bytes starting `skip` bytes into `segs`; false if
/// they are too short or not guest memory.
pub(super) fn read_from(
    mem: &GuestMemory,
    segs: &[(GuestAddress, usize)],
    skip: usize,
    out: &mut [u8],
) -> bool {
    let mut skip = skip;
    let mut filled = 0;
    for &(addr, len) in segs {
        if filled == out.len() {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(out.len() - filled);
        let Some(at) = addr.checked_add(skip as u64) else {
            return false;
        };
        if mem.read_slice(&mut out[filled..filled + n], at).is_err() {
            return false;
        }
        filled += n;
        skip = 0;
    }
    filled == out.len()
}

/// Copies `data` to the start of `segs`; false if it does not fit or a
/// segment is not guest memory.
pub(super) fn write_to(mem: &GuestMemory, segs: &[(GuestAddress, usize)], data: &[u8]) -> bool {
    let mut left = data;
    for &(addr, len) in segs {
        if left.is_empty() {
            break;
        }
        let n = len.min(left.len());
        if mem.write_slice(&left[..n], addr).is_err() {
            return false;
        }
        left = &left[n..];
    }
    left.is_empty()
}

/// Total length of segments that all lie in guest memory, or None.
pub(super) fn checked_capacity(mem: &GuestMemory, segs: &[(GuestAddress, usize)]) -> Option<usize> {
    let mut total = 0usize;
    for &(addr, len) in segs {
        if len == 0 {
            continue;
        }
        let end = addr.checked_add(len as u64 - 1)?;
        if !vm_memory::GuestMemoryBackend::check_range(mem, addr, len) || end < addr {
            return None;
        }
        total = total.checked_add(len)?;
    }
    Some(total)
}

pub(super) fn has_more(queue: &Queue, mem: &GuestMemory) -> Result<bool, virtio_queue::Error> {
    let idx = queue.avail_idx(mem, Ordering::Acquire)?;
    Ok(idx != Wrapping(queue.next_avail()))
}

/// One notify of queue `index` on a device with an rx and a tx queue
/// (vsock, net): a tx notify runs a tx pass and then an rx pass (answers
/// and waiting data may now fit), an rx notify an rx pass (new buffers),
/// each through `pass(queue index, queue)` -> (used buffers added, work
/// left). Queues not `ready()` are left alone; left-over work counts in
/// `budget_yields` and interrupts the driver so it comes back.
pub(super) fn serve_rx_tx(
    device: &str,
    index: usize,
    (rx, tx): (usize, usize),
    queues: &mut [Queue],
    mem: &GuestMemory,
    budget_yields: &mut u64,
    mut pass: impl FnMut(usize, &mut Queue) -> Result<(bool, bool), virtio_queue::Error>,
) -> Result<super::QueueOutcome, super::QueueFailure> {
    let fail = |queue: usize, source| super::QueueFailure {
        device: device.into(),
        queue,
        source,
    };
    let mut out = super::QueueOutcome::default();
    let order: &[usize] = if index == tx {
        &[tx, rx]
    } else if index == rx {
        &[rx]
    } else {
        &[]
    };
    for &qi in order {
        let Some(q) = queues.get_mut(qi).filter(|q| q.ready()) else {
            continue;
        };
        let (used, more) = pass(qi, q).map_err(|e| fail(qi, e))?;
        out.more |= more;
        if used && q.needs_notification(mem).map_err(|e| fail(qi, e))? {
            out.interrupt = true;
        }
    }
    if out.more {
        *budget_yields += 1;
        // Left-over work must reach the driver: interrupt so it comes back.
        out.interrupt = true;
    }
    Ok(out)
}
