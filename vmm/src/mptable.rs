//! The Intel MultiProcessor table, so a guest without ACPI finds every vCPU,
//! the IO-APIC and how ISA interrupts are wired (MP spec 1.4).
//!
//! Layout at [`MPTABLE_ADDR`]: the 16-byte floating pointer "_MP_", then the
//! configuration table "PCMP" with one processor entry per vCPU, the ISA bus,
//! the IO-APIC, one interrupt entry per IO-APIC pin and the two local
//! interrupt entries (ExtINT on LINT0, NMI on LINT1).

use crate::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR};
use crate::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

/// Most vCPUs duet boots (keeps the table well inside the reserved area below 1 MiB).
pub const MAX_VCPUS: u32 = 32;
/// IO-APIC input pins announced (and wired 1:1 to ISA IRQs 0-23).
pub const IOAPIC_PINS: u8 = 24;

const MPC_SPEC: u8 = 4; // MP spec 1.4
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURES: u32 = 0x201; // FPU | APIC
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LOCALINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;

/// Errors building or writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// vCPU count outside 1..=MAX_VCPUS.
    #[error("MP table: {vcpus} vCPUs requested, duet supports 1..={MAX_VCPUS}")]
    VcpuCount {
        /// Requested count.
        vcpus: u32,
    },
    /// Guest memory write failed.
    #[error("writing the MP table at {MPTABLE_ADDR:#x}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The IO-APIC's id: the first one after the vCPUs' APIC ids.
pub fn ioapic_id(vcpus: u32) -> u8 {
    vcpus as u8
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer and configuration table for `vcpus` vCPUs,
/// to be placed at guest address `base`.
pub fn build(base: u64, vcpus: u32) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MptableError::VcpuCount { vcpus });
    }
    let ioapic = ioapic_id(vcpus);
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(id as u8);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // type, irqtype, irqflag (u16: conforming), srcbus, srcbusirq, dstapic, dstirq
        entries.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, pin, ioapic, pin]);
        count += 1;
    }
    // ExtINT from the PIC to LINT0 of every local APIC, NMI to LINT1.
    entries.extend_from_slice(&[ENTRY_LOCALINT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCALINT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(MPC_SPEC);
    header.push(0); // checksum, patched below
    header.extend_from_slice(b"DUET    ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    header.push(0); // extended table checksum
    header.push(0); // reserved
    debug_assert_eq!(header.len(), HEADER_LEN);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&((base + FLOATING_LEN as u64) as u32).to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(MPC_SPEC);
    floating.push(0); // checksum, patched below
    floating.extend_from_slice(&[0u8; 5]); // features: configuration table present
    floating[10] = checksum(&floating);

    let mut out = floating;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `vcpus` vCPUs at [`MPTABLE_ADDR`].
pub fn write_mptable(mem: &GuestMemory, vcpus: u32) -> Result<(), MptableError> {
    let bytes = build(MPTABLE_ADDR, vcpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDR))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_are_zero_and_pointer_is_right() {
        for vcpus in [1, 2, 7, MAX_VCPUS] {
            let t = build(MPTABLE_ADDR, vcpus).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, MPTABLE_ADDR + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "configuration table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]) as u32;
            assert_eq!(count, vcpus + 1 + 1 + u32::from(IOAPIC_PINS) + 2);
            let lapic = u32::from_le_bytes(table[36..40].try_into().unwrap());
            assert_eq!(lapic, LAPIC_ADDR);
        }
    }

    #[test]
    fn one_processor_entry_per_vcpu_with_bsp_first() {
        let t = build(MPTABLE_ADDR, 3).unwrap();
        let entries = &t[16 + HEADER_LEN..];
        for id in 0..3usize {
            let e = &entries[id * 20..id * 20 + 20];
            assert_eq!(e[0], ENTRY_PROCESSOR);
            assert_eq!(e[1] as usize, id);
            assert_eq!(e[3], if id == 0 { 3 } else { 1 });
        }
        let bus = &entries[60..68];
        assert_eq!(bus[0], ENTRY_BUS);
        assert_eq!(&bus[2..], b"ISA   ");
        let io = &entries[68..76];
        assert_eq!((io[0], io[1]), (ENTRY_IOAPIC, 3));
        assert_eq!(
            u32::from_le_bytes(io[4..8].try_into().unwrap()),
            IOAPIC_ADDR
        );
        let irq4 = &entries[76 + 4 * 8..76 + 5 * 8];
        assert_eq!(irq4, &[ENTRY_IOINT, 0, 0, 0, 0, 4, 3, 4]);
    }

    #[test]
    fn fits_below_1_mib_and_rejects_bad_counts() {
        let t = build(MPTABLE_ADDR, MAX_VCPUS).unwrap();
        assert!(MPTABLE_ADDR + t.len() as u64 <= crate::layout::HIMEM_START);
        assert!(matches!(
            build(MPTABLE_ADDR, 0),
            Err(MptableError::VcpuCount { vcpus: 0 })
        ));
        assert!(build(MPTABLE_ADDR, MAX_VCPUS + 1).is_err());
    }
}
