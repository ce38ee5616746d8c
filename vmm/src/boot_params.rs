//! The Linux zero page (`struct boot_params`): e820 memory map, command
//! line pointer, initrd location, and the setup header fields a 64-bit
//! direct boot needs (Documentation/arch/x86/boot.rst).

use crate::layout::{
    CMDLINE_ADDR, CMDLINE_MAX_SIZE, EBDA_START, HIMEM_START, KERNEL_ALIGNMENT, ZERO_PAGE_ADDR,
};
use crate::memory::{ram_ranges, GuestMemory};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// Boot protocol magic "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags bit: kernel loaded high (at 1 MiB or above).
const LOADED_HIGH: u8 = 0x01;
/// loadflags bit: heap_end_ptr is valid.
const CAN_USE_HEAP: u8 = 0x80;

/// Errors building the zero page or writing the command line.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// The command line holds a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The command line is too long.
    #[error("kernel command line is {len} bytes; the limit is {} bytes", CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong {
        /// Its length.
        len: usize,
    },
    /// Too many e820 entries for the zero page.
    #[error("{entries} e820 entries do not fit in the zero page")]
    E820TooLong {
        /// Entry count.
        entries: usize,
    },
    /// Guest memory write failed.
    #[error("writing the {what} at {addr:#x}")]
    Write {
        /// "command line" or "zero page".
        what: &'static str,
        /// Guest address.
        addr: u64,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// One e820 map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type ([`E820_RAM`]).
    pub kind: u32,
}

/// The e820 map for `memory_mib`: RAM below the EBDA, then RAM from 1 MiB
/// (split around the 32-bit MMIO hole for large guests).
pub fn e820_map(memory_mib: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    for (start, len) in ram_ranges(memory_mib) {
        let end = start.0 + len as u64;
        let start = start.0.max(HIMEM_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// What goes into the zero page besides the memory map.
#[derive(Debug, Clone, Default)]
pub struct BootInfo {
    /// Command line length in bytes, without the NUL.
    pub cmdline_len: usize,
    /// Initrd guest address and size.
    pub initrd: Option<(u64, u64)>,
    /// bzImage setup header (None for an ELF vmlinux).
    pub setup_header: Option<setup_header>,
}

/// Builds the zero page for a guest of `memory_mib` MiB.
pub fn build(memory_mib: u64, info: &BootInfo) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = info.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(memory_mib);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::E820TooLong { entries: map.len() });
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the NUL-terminated command line at [`CMDLINE_ADDR`]; returns its length.
pub fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<usize, BootParamsError> {
    let bytes = cmdline.as_bytes();
    if bytes.contains(&0) {
        return Err(BootParamsError::CmdlineNul);
    }
    if bytes.len() >= CMDLINE_MAX_SIZE {
        return Err(BootParamsError::CmdlineTooLong { len: bytes.len() });
    }
    let mut with_nul = bytes.to_vec();
    with_nul.push(0);
    mem.write_slice(&with_nul, GuestAddress(CMDLINE_ADDR))
        .map_err(|source| BootParamsError::Write {
            what: "command line",
            addr: CMDLINE_ADDR,
            source,
        })?;
    Ok(bytes.len())
}

/// Writes `params` at [`ZERO_PAGE_ADDR`].
pub fn write_boot_params(mem: &GuestMemory, params: &boot_params) -> Result<(), BootParamsError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|source| BootParamsError::Write {
            what: "zero page",
            addr: ZERO_PAGE_ADDR,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn zero_page_layout_matches_the_boot_protocol() {
        assert_eq!(size_of::<boot_params>(), 4096);
        assert_eq!(offset_of!(boot_params, e820_entries), 0x1e8);
        assert_eq!(offset_of!(boot_params, hdr), 0x1f1);
        assert_eq!(offset_of!(boot_params, e820_table), 0x2d0);
        // Offsets inside the zero page of the header fields set here.
        let hdr = offset_of!(boot_params, hdr);
        assert_eq!(hdr + offset_of!(setup_header, header), 0x202);
        assert_eq!(hdr + offset_of!(setup_header, type_of_loader), 0x210);
        assert_eq!(hdr + offset_of!(setup_header, ramdisk_image), 0x218);
        assert_eq!(hdr + offset_of!(setup_header, cmd_line_ptr), 0x228);
        assert_eq!(hdr + offset_of!(setup_header, cmdline_size), 0x238);
    }

    #[test]
    fn e820_small_guest() {
        let map = e820_map(256);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: (256 << 20) - HIMEM_START,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_large_guest_skips_the_hole() {
        let map = e820_map(4096);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, crate::layout::MMIO_GAP_START);
        assert_eq!(map[2].addr, 1 << 32);
        assert_eq!(map[2].size, (4096u64 << 20) - crate::layout::MMIO_GAP_START);
    }

    #[test]
    fn e820_tiny_guest_has_only_low_ram() {
        assert_eq!(e820_map(1).len(), 1);
    }

    #[test]
    fn fields_are_filled() {
        let p = build(
            128,
            &BootInfo {
                cmdline_len: 12,
                initrd: Some((0x700_0000, 0x1234)),
                setup_header: None,
            },
        )
        .unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.cmdline_size }, 12);
        assert_eq!({ hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ hdr.kernel_alignment }, KERNEL_ALIGNMENT);
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table[1];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (HIMEM_START, (128 << 20) - HIMEM_START, 1)
        );
    }

    #[test]
    fn bzimage_header_is_kept() {
        let hdr = setup_header {
            version: 0x20f,
            init_size: 0x99,
            ..Default::default()
        };
        let p = build(
            64,
            &BootInfo {
                cmdline_len: 0,
                initrd: None,
                setup_header: Some(hdr),
            },
        )
        .unwrap();
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.init_size }, 0x99);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn cmdline_is_nul_terminated_and_checked() {
        let mem = crate::memory::create_guest_memory(1).unwrap();
        assert_eq!(write_cmdline(&mem, "console=ttyS0 quiet").unwrap(), 19);
        let mut buf = [0u8; 20];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 quiet\0");
        assert!(matches!(
            write_cmdline(&mem, "a\0b"),
            Err(BootParamsError::CmdlineNul)
        ));
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_cmdline(&mem, &long),
            Err(BootParamsError::CmdlineTooLong { len }) if len == CMDLINE_MAX_SIZE
        ));
    }

    #[test]
    fn zero_page_is_written_where_rsi_points() {
        let mem = crate::memory::create_guest_memory(2).unwrap();
        let p = build(2, &BootInfo::default()).unwrap();
        write_boot_params(&mem, &p).unwrap();
        let magic: u32 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x202)).unwrap();
        assert_eq!(magic, HDRS_MAGIC);
        let n: u8 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x1e8)).unwrap();
        assert_eq!(n, 2);
    }
}
