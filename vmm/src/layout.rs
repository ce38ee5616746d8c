//! Where things live in guest physical memory (the x86_64 boot layout).
//!
//! Low memory follows the Linux boot protocol and Firecracker's choices:
//! GDT/IDT at 0x500, zero page at 0x7000, boot stack below 0x9000, page
//! tables from 0x9000, command line at 0x20000, MP table in the last KiB
//! below 640 KiB, kernel above 1 MiB.

/// Boot GDT (5 entries: null, null, code 0x10, data 0x18, TSS 0x20).
pub const GDT_ADDR: u64 = 0x500;
/// Boot IDT (a single empty entry: any exception triple-faults).
pub const IDT_ADDR: u64 = 0x530;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table (CR3).
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of the page directories (one per identity-mapped GiB).
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line accepted, including the terminating NUL (x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; RAM below it is usable, the MP table sits here.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP floating pointer and configuration table.
pub const MPTABLE_ADDR: u64 = EBDA_START;
/// Memory at and above 1 MiB ("high memory" for the boot protocol).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole: RAM beyond this moves above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Where KVM puts its three-page TSS for real-mode emulation (inside the MMIO hole).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// IO-APIC MMIO base, as the MP table announces it.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC MMIO base, as the MP table announces it.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Kernel alignment written into boot_params for ELF kernels (16 MiB, like Firecracker).
pub const KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// Bytes in a page.
pub const PAGE_SIZE: u64 = 0x1000;

// The boot structures must not overlap (checked at compile time).
const _: () = {
    assert!(GDT_ADDR + 5 * 8 <= IDT_ADDR);
    assert!(IDT_ADDR + 8 <= ZERO_PAGE_ADDR);
    assert!(ZERO_PAGE_ADDR + PAGE_SIZE <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_ADDR);
    assert!(PML4_ADDR + PAGE_SIZE <= PDPT_ADDR);
    assert!(PDPT_ADDR + PAGE_SIZE <= PD_ADDR);
    assert!(PD_ADDR + 4 * PAGE_SIZE <= CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX_SIZE as u64 <= MPTABLE_ADDR);
    assert!(MPTABLE_ADDR < HIMEM_START);
};
