//! Guest RAM: anonymous mappings (vm-memory) registered with KVM as memory
//! slots; or, for a VM with a vhost-user device, one memfd mapped shared,
//! so the device's backend process can map the same pages
//! ([`create_shared_guest_memory`]).
//!
//! RAM up to [`MMIO_GAP_START`] is one region at 0; anything beyond moves
//! above 4 GiB so the 32-bit MMIO hole (IO-APIC, LAPIC, devices) stays free.

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
    MmapRegion,
};

/// Guest physical memory as duet maps it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Smallest guest the builder accepts (page tables and boot data need the first 64 KiB).
pub const MIN_MEMORY_MIB: u64 = 1;
/// Largest guest the builder accepts.
pub const MAX_MEMORY_MIB: u64 = 256 * 1024;

/// Errors creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Size outside what duet supports.
    #[error("guest memory of {memory_mib} MiB is out of range ({MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB)")]
    Size {
        /// Requested size.
        memory_mib: u64,
    },
    /// mmap of the guest RAM failed.
    #[error("cannot map {memory_mib} MiB of guest memory")]
    Map {
        /// Requested size.
        memory_mib: u64,
        /// Cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// Building the guest RAM mapping failed.
    #[error("cannot map {memory_mib} MiB of guest memory")]
    Mmap {
        /// Requested size.
        memory_mib: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} at {guest_addr:#x} ({size:#x} bytes)")]
    Register {
        /// Memory slot number.
        slot: u32,
        /// Guest physical start.
        guest_addr: u64,
        /// Length in bytes.
        size: u64,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The RAM ranges (guest address, bytes) for `memory_mib` of memory.
pub fn ram_ranges(memory_mib: u64) -> Vec<(GuestAddress, usize)> {
    let bytes = memory_mib << 20;
    if bytes <= MMIO_GAP_START {
        vec![(GuestAddress(0), bytes as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (bytes - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// Highest guest-physical address below 4 GiB that is RAM, plus one.
pub fn low_memory_end(memory_mib: u64) -> u64 {
    (memory_mib << 20).min(MMIO_GAP_START)
}

/// Maps `memory_mib` MiB of anonymous guest RAM (pages are touched lazily).
pub fn create_guest_memory(memory_mib: u64) -> Result<GuestMemory, MemoryError> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
        return Err(MemoryError::Size { memory_mib });
    }
    let mut regions = Vec::new();
    for (guest_addr, size) in ram_ranges(memory_mib) {
        let mapping = map_huge_aligned(size).map_err(|e| MemoryError::Mmap {
            memory_mib,
            source: std::io::Error::other(e.to_string()),
        })?;
        regions.push(GuestRegionMmap::new(mapping, guest_addr).ok_or_else(|| {
            MemoryError::Mmap {
                memory_mib,
                source: std::io::Error::other("guest region wraps the address space"),
            }
        })?);
    }
    let memory = GuestMemory::from_regions(regions).map_err(|e| MemoryError::Mmap {
        memory_mib,
        source: std::io::Error::other(e.to_string()),
    })?;
    advise_huge_pages(&memory);
    Ok(memory)
}

/// Guest RAM that another process can map: one memfd (`duet-guest-ram`)
/// holding every RAM range back to back, each mapped `MAP_SHARED` at its
/// offset. vhost-user backends (virtiofsd) get the memfd and the offsets in
/// SET_MEM_TABLE and read and write guest buffers directly.
///
/// Only VMs with such a device use it: shmem pages get transparent huge
/// pages only where the host's `shmem_enabled` allows (often `never`), so
/// anonymous memory stays the default.
pub fn create_shared_guest_memory(memory_mib: u64) -> Result<GuestMemory, MemoryError> {
    use std::os::fd::FromRawFd;
    use vm_memory::FileOffset;
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
        return Err(MemoryError::Size { memory_mib });
    }
    let fail = |source: std::io::Error| MemoryError::Mmap { memory_mib, source };
    // SAFETY: memfd_create with a NUL-terminated name and plain flags.
    let fd = unsafe { libc::memfd_create(c"duet-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor nobody else owns.
    let file = std::sync::Arc::new(unsafe { std::fs::File::from_raw_fd(fd) });
    file.set_len(memory_mib << 20).map_err(fail)?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (guest_addr, size) in ram_ranges(memory_mib) {
        let mapping = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| fail(std::io::Error::other(e.to_string())))?;
        offset += size as u64;
        regions.push(GuestRegionMmap::new(mapping, guest_addr).ok_or_else(|| {
            fail(std::io::Error::other(
                "guest region wraps the address space",
            ))
        })?);
    }
    let memory = GuestMemory::from_regions(regions)
        .map_err(|e| fail(std::io::Error::other(e.to_string())))?;
    advise_huge_pages(&memory);
    Ok(memory)
}

/// Guest RAM of a restored VM: each region of the snapshot file mapped
/// `MAP_PRIVATE` at its offset, so pages are read from the file on first
/// touch, a write copies the page into this VM only, and clones of one
/// snapshot share every page none of them wrote (the page cache holds one
/// copy). The file may be open read-only.
pub fn map_snapshot_memory(
    file: &std::fs::File,
    regions: &[crate::snapshot::RegionState],
    memory_mib: u64,
) -> Result<GuestMemory, MemoryError> {
    use vm_memory::FileOffset;
    let fail = |source: std::io::Error| MemoryError::Mmap { memory_mib, source };
    let mut out = Vec::new();
    for r in regions {
        let dup = file.try_clone().map_err(fail)?;
        let mapping = MmapRegionBuilder::new(r.size as usize)
            .with_file_offset(FileOffset::new(dup, r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| fail(std::io::Error::other(e.to_string())))?;
        out.push(
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr)).ok_or_else(|| {
                fail(std::io::Error::other(
                    "guest region wraps the address space",
                ))
            })?,
        );
    }
    GuestMemory::from_regions(out).map_err(|e| fail(std::io::Error::other(e.to_string())))
}

/// Huge page size the guest RAM mapping is aligned to.
pub const HUGE_PAGE: usize = 2 << 20;

/// Maps `size` bytes of anonymous RAM, owned (and unmapped) by vm-memory,
/// 2 MiB-aligned whenever the kernel allows it.
///
/// Guest-physical 2 MiB pages can only be backed by host huge pages when
/// the host address is 2 MiB-aligned too. Kernels from 6.7 align large
/// anonymous mappings by themselves; for older ones (and the testbed's 6.1)
/// we do what QEMU's `qemu_ram_mmap` achieves with an over-sized reservation:
/// reserve `size + 2 MiB` without access, leave an exactly `size`-byte hole at
/// a 2 MiB boundary inside it, let vm-memory map into that hole (the kernel's
/// top-down search takes the highest gap that fits, which this hole is made
/// to be), then drop the guards. vm-memory refuses MAP_FIXED and does not
/// unmap raw pointers, so this keeps the mapping its own. If the hole is not
/// taken (another gap fit first, or a thread mapped into it) the region is
/// still correct, only not aligned. Measured effect in the testbed: see
/// bench/vmm/RESULTS.md.
fn map_huge_aligned(size: usize) -> Result<MmapRegion, vm_memory::mmap::MmapRegionError> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let build = || {
        MmapRegionBuilder::new(size)
            .with_mmap_prot(prot)
            .with_mmap_flags(flags)
            .build()
    };
    // SAFETY: a fresh PROT_NONE reservation nobody else references.
    let reserve = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size + HUGE_PAGE,
            libc::PROT_NONE,
            flags,
            -1,
            0,
        )
    };
    if reserve == libc::MAP_FAILED {
        return build();
    }
    let start = reserve as usize;
    let hole = (start + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    // SAFETY: [hole, hole + size) lies inside our own reservation.
    unsafe { libc::munmap(hole as *mut libc::c_void, size) };
    let region = build();
    // SAFETY: the guards are the parts of our reservation around the hole; the
    // region vm-memory mapped never overlaps them (it was not MAP_FIXED).
    unsafe {
        if hole > start {
            libc::munmap(reserve, hole - start);
        }
        let tail = start + size + HUGE_PAGE - (hole + size);
        if tail > 0 {
            libc::munmap((hole + size) as *mut libc::c_void, tail);
        }
    }
    region
}

/// Asks for transparent huge pages on guest RAM, as QEMU does: the guest
/// then faults its memory in 2 MiB at a time instead of 4 KiB, and KVM can
/// map it with large pages where host and guest alignment agree (kernels
/// from 6.7 align large anonymous mappings to 2 MiB by themselves).
/// Measured in the nested testbed (bench/vmm/RESULTS.md): without it the
/// memory-heavy boot steps (per-CPU setup, unpacking the initramfs) ran
/// several times slower than under QEMU. Advice only: failure is ignored.
fn advise_huge_pages(memory: &GuestMemory) {
    for region in memory.iter() {
        let len = region.len() as usize;
        if let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) {
            // SAFETY: the range is exactly this region's live mapping; MADV_HUGEPAGE
            // changes only how the kernel backs it, never its contents.
            unsafe { libc::madvise(host.cast(), len, libc::MADV_HUGEPAGE) };
        }
    }
}

/// Registers every region of `memory` with the VM as a KVM memory slot.
pub fn register_memory(vm: &VmFd, memory: &GuestMemory) -> Result<(), MemoryError> {
    for (slot, region) in memory.iter().enumerate() {
        let slot = slot as u32;
        let guest_addr = region.start_addr().0;
        let size = region.len();
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .expect("offset 0 is inside every region");
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping behind `host` is owned by `memory`, which the
        // caller keeps alive for as long as the VM (Vm owns both and drops the
        // VM file descriptor first).
        unsafe { vm.set_user_memory_region(desc) }.map_err(|source| MemoryError::Register {
            slot,
            guest_addr,
            size,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range_at_zero() {
        assert_eq!(ram_ranges(256), vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(low_memory_end(256), 256 << 20);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let r = ram_ranges(4096);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[0].1 + r[1].1, 4096 << 20);
        assert_eq!(low_memory_end(4096), MMIO_GAP_START);
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(
            create_guest_memory(0),
            Err(MemoryError::Size { memory_mib: 0 })
        ));
        let m = create_guest_memory(2).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert!(create_shared_guest_memory(0).is_err());
    }

    #[test]
    fn shared_memory_is_one_memfd_at_increasing_offsets() {
        use vm_memory::Bytes;
        let m = create_shared_guest_memory(4096).unwrap();
        let offsets: Vec<u64> = m
            .iter()
            .map(|r| r.file_offset().expect("file backed").start())
            .collect();
        assert_eq!(offsets, [0, MMIO_GAP_START]);
        // Another mapping of the memfd sees what the guest wrote.
        m.write_obj(0x1234_5678u32, GuestAddress(0x1000)).unwrap();
        let r = m.iter().next().unwrap();
        let f = r.file_offset().unwrap().file();
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(f, &mut b, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
    }
}

#[cfg(test)]
mod alignment_tests {
    use super::*;

    #[test]
    fn guest_ram_is_huge_page_aligned_and_usable() {
        let mem = create_guest_memory(64).unwrap();
        let region = mem.iter().next().unwrap();
        // The hole placement can lose a race with another mapping in a threaded
        // test process; it must succeed in most attempts.
        let aligned = (0..8)
            .map(|_| create_guest_memory(64).unwrap())
            .filter(|m| {
                let r = m.iter().next().unwrap();
                (r.get_host_address(MemoryRegionAddress(0)).unwrap() as usize)
                    .is_multiple_of(HUGE_PAGE)
            })
            .count();
        assert!(
            aligned >= 6,
            "only {aligned}/8 guest RAM mappings were 2 MiB-aligned"
        );
        assert_eq!(region.len(), 64 << 20);
        use vm_memory::Bytes;
        mem.write_obj(0xdead_beefu32, GuestAddress((64 << 20) - 4))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress((64 << 20) - 4)).unwrap(),
            0xdead_beef
        );
    }
}
