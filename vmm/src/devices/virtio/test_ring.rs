//! A hand-rolled driver's side of one split virtqueue on virtio-queue's
//! mock rings, for the device tests: put chains on the avail ring, read
//! what the device put on the used ring.

use crate::memory::GuestMemory;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestAddress;

/// One queue as its driver sees it.
pub struct DriverRing<'m> {
    ring: MockSplitQueue<'m, GuestMemory>,
    len: u16,
    next_desc: u16,
    avail: u16,
    seen: u16,
}

impl<'m> DriverRing<'m> {
    /// A ring of `len` entries at `at` in `mem`.
    pub fn new(mem: &'m GuestMemory, at: u64, len: u16) -> DriverRing<'m> {
        DriverRing {
            ring: MockSplitQueue::create(mem, GuestAddress(at), len),
            len,
            next_desc: 0,
            avail: 0,
            seen: 0,
        }
    }

    /// The device's view of it.
    pub fn queue(&self) -> Queue {
        self.ring.create_queue().unwrap()
    }

    /// Puts a chain of (addr, len, device-writable) on the avail ring; its head.
    pub fn submit(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc + n > self.len {
            self.next_desc = 0;
        }
        let first = self.next_desc;
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { first + i as u16 + 1 };
            let d = SplitDescriptor::new(addr, len, flags, next);
            self.ring
                .desc_table()
                .store(first + i as u16, RawDescriptor::from(d))
                .unwrap();
        }
        self.ring
            .avail()
            .ring()
            .ref_at((self.avail % self.len) as usize)
            .unwrap()
            .store(first);
        self.avail = self.avail.wrapping_add(1);
        self.ring.avail().idx().store(self.avail);
        self.next_desc += n;
        first
    }

    /// (head, length) of each chain the device returned since the last call.
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        let idx = self.ring.used().idx().load();
        while self.seen != idx {
            let e = self
                .ring
                .used()
                .ring()
                .ref_at((self.seen % self.len) as usize)
                .unwrap()
                .load();
            self.seen = self.seen.wrapping_add(1);
            out.push((e.id() as u16, e.len()));
        }
        out
    }
}
