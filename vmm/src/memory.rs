//! Guest RAM: anonymous mappings (vm-memory) registered with KVM as memory slots.
//!
//! RAM up to [`MMIO_GAP_START`] is one region at 0; anything beyond moves
//! above 4 GiB so the 32-bit MMIO hole (IO-APIC, LAPIC, devices) stays free.

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

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
    GuestMemory::from_ranges(&ram_ranges(memory_mib))
        .map_err(|source| MemoryError::Map { memory_mib, source })
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
    }
}
