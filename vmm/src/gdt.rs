//! The boot GDT for the 64-bit Linux entry: code at selector 0x10 and data
//! at 0x18 (`__BOOT_CS` / `__BOOT_DS` in the x86 boot protocol), plus a TSS.

use crate::layout::{GDT_ADDR, IDT_ADDR};
use crate::memory::GuestMemory;
use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

/// Selector of the 64-bit code segment.
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the data segment.
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the task state segment.
pub const TSS_SELECTOR: u16 = 0x20;

/// Errors writing descriptor tables.
#[derive(Debug, thiserror::Error)]
pub enum GdtError {
    /// Guest memory write failed.
    #[error("writing the boot {table} at {addr:#x}")]
    Write {
        /// "GDT" or "IDT".
        table: &'static str,
        /// Guest address.
        addr: u64,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Packs a segment descriptor. `flags` holds the access byte (bits 0-7) and
/// the G/DB/L/AVL nibble (bits 12-15), as in Linux's `GDT_ENTRY` macro.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, null, code (long mode), data, TSS.
pub const BOOT_GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The segment register value KVM wants for descriptor `entry` at `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages.
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
    }
}

/// Segment for the descriptor at `selector` in [`BOOT_GDT`].
pub fn boot_segment(selector: u16) -> kvm_segment {
    segment_from_gdt(BOOT_GDT[usize::from(selector >> 3)], selector)
}

/// Writes [`BOOT_GDT`] and an empty IDT into guest memory.
pub fn write_boot_tables(mem: &GuestMemory) -> Result<(), GdtError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        let addr = GDT_ADDR + (i as u64) * 8;
        mem.write_obj(*entry, GuestAddress(addr))
            .map_err(|source| GdtError::Write {
                table: "GDT",
                addr,
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|source| GdtError::Write {
            table: "IDT",
            addr: IDT_ADDR,
            source,
        })
}

/// Limit value for the GDTR.
pub const GDT_LIMIT: u16 = (BOOT_GDT.len() * 8 - 1) as u16;
/// Limit value for the IDTR (one empty 8-byte entry).
pub const IDT_LIMIT: u16 = 7;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_linux_boot_descriptors() {
        // Values the kernel's own boot GDT uses for __BOOT_CS / __BOOT_DS.
        assert_eq!(BOOT_GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[4], 0x008f_8b00_0000_ffff);
        assert_eq!(usize::from(CODE_SELECTOR >> 3), 2);
        assert_eq!(usize::from(DATA_SELECTOR >> 3), 3);
    }

    #[test]
    fn code_segment_is_64_bit() {
        let cs = boot_segment(CODE_SELECTOR);
        assert_eq!(cs.selector, 0x10);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
        assert_eq!(cs.unusable, 0);
        let ds = boot_segment(DATA_SELECTOR);
        assert_eq!((ds.l, ds.db, ds.type_, ds.g), (0, 1, 3, 1));
        let tr = boot_segment(TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1));
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        let s = segment_from_gdt(e, 0x8);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.g, 0);
        assert_eq!(s.db, 1);
    }

    #[test]
    fn tables_are_written() {
        let mem = crate::memory::create_guest_memory(1).unwrap();
        write_boot_tables(&mem).unwrap();
        let cs: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 0x10)).unwrap();
        assert_eq!(cs, BOOT_GDT[2]);
        assert!(GDT_ADDR + u64::from(GDT_LIMIT) < IDT_ADDR);
    }
}
