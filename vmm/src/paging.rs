//! Identity page tables for the 64-bit entry: the first 4 GiB mapped 1:1
//! with 2 MiB pages (one PML4 entry, four PDPT entries, four page
//! directories), enough for the kernel, its boot data and the MMIO hole.

use crate::layout::{PDPT_ADDR, PD_ADDR, PML4_ADDR};
use crate::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

/// GiB of address space identity-mapped.
pub const MAPPED_GIB: u64 = 4;
const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Errors writing page tables.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// Guest memory write failed.
    #[error("writing the boot page table at {addr:#x} (guest memory too small?)")]
    Write {
        /// Guest address of the table.
        addr: u64,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// One 4 KiB table: its guest address and 512 entries.
pub type PageTable = (u64, Vec<u64>);

/// The page tables as (address, entries), PML4 first.
pub fn identity_tables() -> Vec<PageTable> {
    let mut pml4 = vec![0u64; 512];
    pml4[0] = PDPT_ADDR | PRESENT_RW;
    let mut pdpt = vec![0u64; 512];
    let mut tables = Vec::new();
    let mut pds = Vec::new();
    for gib in 0..MAPPED_GIB {
        let pd_addr = PD_ADDR + gib * 0x1000;
        pdpt[gib as usize] = pd_addr | PRESENT_RW;
        let pd: Vec<u64> = (0..512u64)
            .map(|i| ((gib * 512 + i) << 21) | PRESENT_RW | PAGE_SIZE_2M)
            .collect();
        pds.push((pd_addr, pd));
    }
    tables.push((PML4_ADDR, pml4));
    tables.push((PDPT_ADDR, pdpt));
    tables.extend(pds);
    tables
}

/// Writes the identity map and returns the CR3 value.
pub fn write_identity_map(mem: &GuestMemory) -> Result<u64, PagingError> {
    for (addr, entries) in identity_tables() {
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| PagingError::Write { addr, source })?;
    }
    Ok(PML4_ADDR)
}

/// Walks the tables in `mem` like the MMU would (4-level, 2 MiB pages);
/// returns the physical address for `virt`, if mapped.
pub fn translate(mem: &GuestMemory, cr3: u64, virt: u64) -> Option<u64> {
    let read = |addr: u64| mem.read_obj::<u64>(GuestAddress(addr)).ok();
    let pml4e = read(cr3 + ((virt >> 39) & 0x1ff) * 8)?;
    if pml4e & 1 == 0 {
        return None;
    }
    let pdpte = read((pml4e & !0xfff) + ((virt >> 30) & 0x1ff) * 8)?;
    if pdpte & 1 == 0 {
        return None;
    }
    let pde = read((pdpte & !0xfff) + ((virt >> 21) & 0x1ff) * 8)?;
    if pde & 1 == 0 || pde & PAGE_SIZE_2M == 0 {
        return None;
    }
    Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (virt & 0x1f_ffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_do_not_overlap_other_boot_data() {
        let tables = identity_tables();
        assert_eq!(tables.len(), 2 + MAPPED_GIB as usize);
        let end = tables.last().unwrap().0 + 0x1000;
        assert!(end <= crate::layout::CMDLINE_ADDR);
    }

    #[test]
    fn identity_map_translates_1_to_1() {
        let mem = crate::memory::create_guest_memory(1).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        assert_eq!(cr3, PML4_ADDR);
        for addr in [
            0u64,
            0x1234,
            0x20_0000,
            0x100_0000 + 5,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, addr), Some(addr), "{addr:#x}");
        }
        assert_eq!(translate(&mem, cr3, 1 << 32), None);
    }

    #[test]
    fn entries_are_present_writable_large_pages() {
        let tables = identity_tables();
        let pd0 = &tables[2].1;
        assert_eq!(pd0[0], 0x83);
        assert_eq!(pd0[1], 0x20_0083);
        assert_eq!(tables[1].1[3], (PD_ADDR + 0x3000) | 3);
        assert_eq!(tables[1].1[4], 0);
    }
}
