//! Loading the guest kernel (ELF vmlinux or bzImage, via linux-loader) and
//! the initrd into guest memory, with errors that name the file.

use crate::layout::{HIMEM_START, PAGE_SIZE};
use crate::memory::GuestMemory;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, GuestAddress};

/// How to get a kernel when none is found.
pub const KERNEL_BUILD_HINT: &str = "build it with `images/kernel/build.sh`";
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const XLF_KERNEL_64: u16 = 1;

/// Errors loading the kernel or the initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel file does not exist.
    #[error("kernel {} not found: {KERNEL_BUILD_HINT}", path.display())]
    KernelMissing {
        /// Path given.
        path: PathBuf,
    },
    /// The kernel file cannot be opened or read.
    #[error("cannot read kernel {}", path.display())]
    ReadKernel {
        /// Path given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Neither an ELF nor a bzImage.
    #[error("{} is not a kernel: {detail} (expected an x86_64 ELF vmlinux or a bzImage)", path.display())]
    NotAKernel {
        /// Path given.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// Guest memory too small for the kernel.
    #[error("kernel {} needs at least {} MiB of guest memory (it occupies up to {needed_end:#x}) but the VM has {memory_mib} MiB: raise memory_mib", path.display(), needed_end.div_ceil(1 << 20))]
    KernelDoesNotFit {
        /// Path given.
        path: PathBuf,
        /// Highest guest-physical byte the kernel occupies, plus one.
        needed_end: u64,
        /// Guest memory size.
        memory_mib: u64,
    },
    /// linux-loader failed.
    #[error("loading kernel {} into guest memory", path.display())]
    LoadKernel {
        /// Path given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initrd file does not exist.
    #[error("initrd {} not found", path.display())]
    InitrdMissing {
        /// Path given.
        path: PathBuf,
    },
    /// The initrd cannot be read.
    #[error("cannot read initrd {}", path.display())]
    ReadInitrd {
        /// Path given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Guest memory too small for kernel plus initrd.
    #[error("guest memory of {memory_mib} MiB cannot hold the kernel (up to {kernel_end:#x}) and initrd {} ({size} bytes): raise memory_mib", path.display())]
    InitrdDoesNotFit {
        /// Path given.
        path: PathBuf,
        /// Initrd size in bytes.
        size: u64,
        /// End of the kernel in guest memory.
        kernel_end: u64,
        /// Guest memory size.
        memory_mib: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("copying initrd {} to guest address {addr:#x}", path.display())]
    CopyInitrd {
        /// Path given.
        path: PathBuf,
        /// Guest address.
        addr: u64,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Kernel image formats duet boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// Uncompressed ELF `vmlinux`: entered at its ELF entry (startup_64).
    Elf,
    /// Compressed `bzImage`: entered at the 64-bit entry, 0x200 past its load address.
    BzImage,
}

/// What the header of a kernel file says, before anything is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelInfo {
    /// Format.
    pub format: KernelFormat,
    /// Highest guest-physical address the kernel needs (including bss or
    /// decompression space), plus one.
    pub needed_end: u64,
    /// Highest address the initrd may end at (bzImage `initrd_addr_max` + 1).
    pub initrd_limit: u64,
}

/// A kernel placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Format.
    pub format: KernelFormat,
    /// 64-bit entry point (guest physical = virtual under the identity map).
    pub entry: u64,
    /// End of the kernel's footprint; the initrd must start at or above it.
    pub end: u64,
    /// Highest address the initrd may end at.
    pub initrd_limit: u64,
    /// bzImage setup header to copy into the zero page.
    pub setup_header: Option<setup_header>,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn open_kernel(path: &Path) -> Result<File, LoaderError> {
    File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            LoaderError::KernelMissing {
                path: path.to_path_buf(),
            }
        } else {
            LoaderError::ReadKernel {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Reads the kernel's headers: its format and how much memory it needs.
pub fn inspect_kernel(path: &Path) -> Result<KernelInfo, LoaderError> {
    let mut file = open_kernel(path)?;
    let read_err = |source| LoaderError::ReadKernel {
        path: path.to_path_buf(),
        source,
    };
    let not_kernel = |detail: &str| LoaderError::NotAKernel {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let mut head = vec![0u8; 0x280];
    let n = read_up_to(&mut file, &mut head).map_err(read_err)?;
    head.truncate(n);
    if head.starts_with(b"\x7fELF") {
        if head.len() < 64 {
            return Err(not_kernel("truncated ELF header"));
        }
        if head[4] != 2 || head[5] != 1 || u16_at(&head, 18) != EM_X86_64 {
            return Err(not_kernel("ELF file is not 64-bit little-endian x86_64"));
        }
        let phoff = u64_at(&head, 32);
        let phentsize = u16_at(&head, 54) as usize;
        let phnum = u16_at(&head, 56) as usize;
        if phentsize != 56 || phnum == 0 {
            return Err(not_kernel("ELF file has no usable program headers"));
        }
        let mut phdrs = vec![0u8; phentsize * phnum];
        file.seek(SeekFrom::Start(phoff)).map_err(read_err)?;
        file.read_exact(&mut phdrs).map_err(read_err)?;
        let needed_end = phdrs
            .chunks(phentsize)
            .filter(|p| u32_at(p, 0) == PT_LOAD)
            .map(|p| u64_at(p, 24).saturating_add(u64_at(p, 40)))
            .max()
            .ok_or_else(|| not_kernel("ELF file has no loadable segment"))?;
        return Ok(KernelInfo {
            format: KernelFormat::Elf,
            needed_end,
            initrd_limit: u64::MAX,
        });
    }
    if head.len() >= 0x264 && u32_at(&head, 0x202) == 0x5372_6448 {
        let version = u16_at(&head, 0x206);
        if version < 0x20c || u16_at(&head, 0x236) & XLF_KERNEL_64 == 0 {
            return Err(not_kernel(&format!(
                "bzImage (boot protocol {}.{}) has no 64-bit entry point",
                version >> 8,
                version & 0xff
            )));
        }
        let code32_start = u64::from(u32_at(&head, 0x214)).max(HIMEM_START);
        let align = u64::from(u32_at(&head, 0x230)).max(1);
        let pref_address = u64_at(&head, 0x258);
        let init_size = u64::from(u32_at(&head, 0x260));
        let run_at = code32_start.div_ceil(align) * align;
        let needed_end = run_at.max(pref_address) + init_size;
        let initrd_limit = u64::from(u32_at(&head, 0x22c)) + 1;
        return Ok(KernelInfo {
            format: KernelFormat::BzImage,
            needed_end,
            initrd_limit,
        });
    }
    Err(not_kernel("no ELF magic and no bzImage \"HdrS\" header"))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Loads the kernel at `path` into `mem` (a guest of `memory_mib` MiB).
pub fn load_kernel(
    mem: &GuestMemory,
    memory_mib: u64,
    path: &Path,
) -> Result<LoadedKernel, LoaderError> {
    let info = inspect_kernel(path)?;
    let low_end = crate::memory::low_memory_end(memory_mib);
    if info.needed_end > low_end {
        return Err(LoaderError::KernelDoesNotFit {
            path: path.to_path_buf(),
            needed_end: info.needed_end,
            memory_mib,
        });
    }
    let mut file = open_kernel(path)?;
    let load_err = |source| LoaderError::LoadKernel {
        path: path.to_path_buf(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match info.format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok(LoadedKernel {
                format: KernelFormat::Elf,
                entry: r.kernel_load.0,
                end: r.kernel_end.max(info.needed_end),
                initrd_limit: info.initrd_limit,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok(LoadedKernel {
                format: KernelFormat::BzImage,
                entry: r.kernel_load.0 + 0x200,
                end: r.kernel_end.max(info.needed_end),
                initrd_limit: info.initrd_limit,
                setup_header: r.setup_header,
            })
        }
    }
}

/// Where an initrd of `size` bytes goes: page-aligned, as high as possible
/// below both `low_end` and `limit`, and not below `kernel_end`.
pub fn initrd_address(size: u64, kernel_end: u64, low_end: u64, limit: u64) -> Option<u64> {
    let top = low_end.min(limit);
    let addr = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// Copies the initrd at `path` into the top of low memory; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemory,
    memory_mib: u64,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<(u64, u64), LoaderError> {
    let mut file = File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            LoaderError::InitrdMissing {
                path: path.to_path_buf(),
            }
        } else {
            LoaderError::ReadInitrd {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let size = file
        .metadata()
        .map_err(|source| LoaderError::ReadInitrd {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let low_end = crate::memory::low_memory_end(memory_mib);
    let addr = initrd_address(size, kernel.end, low_end, kernel.initrd_limit).ok_or(
        LoaderError::InitrdDoesNotFit {
            path: path.to_path_buf(),
            size,
            kernel_end: kernel.end,
            memory_mib,
        },
    )?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| LoaderError::CopyInitrd {
            path: path.to_path_buf(),
            addr,
            source,
        })?;
    Ok((addr, size))
}

/// A minimal x86_64 ELF "vmlinux": one PT_LOAD segment of `code` at
/// `paddr` (`memsz` bytes in memory), entered there in 64-bit mode. What the
/// tiny-guest tests on an emulating /dev/kvm boot instead of a Linux kernel.
pub fn tiny_elf(paddr: u64, code: &[u8], memsz: u64) -> Vec<u8> {
    let mut f = vec![0u8; 64 + 56];
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little-endian
    f[6] = 1; // version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = &mut f[64..120];
    ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
    ph[16..24].copy_from_slice(&paddr.to_le_bytes());
    ph[24..32].copy_from_slice(&paddr.to_le_bytes());
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[40..48].copy_from_slice(&memsz.to_le_bytes());
    f.extend_from_slice(code);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) use super::tiny_elf;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn missing_kernel_says_how_to_build_it() {
        let err = inspect_kernel(Path::new("/nonexistent/vmlinux")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/vmlinux"), "{msg}");
        assert!(msg.contains("images/kernel/build.sh"), "{msg}");
    }

    #[test]
    fn a_text_file_is_not_a_kernel() {
        let f = file_with(b"#!/bin/sh\necho hello\n");
        let err = inspect_kernel(f.path()).unwrap_err();
        assert!(matches!(err, LoaderError::NotAKernel { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(&f.path().display().to_string()) && msg.contains("not a kernel"),
            "{msg}"
        );
    }

    #[test]
    fn a_32_bit_elf_is_refused() {
        let mut elf = tiny_elf(0x100000, &[0xf4], 1);
        elf[4] = 1;
        let f = file_with(&elf);
        assert!(matches!(
            inspect_kernel(f.path()),
            Err(LoaderError::NotAKernel { .. })
        ));
    }

    #[test]
    fn elf_is_loaded_at_its_physical_address() {
        let f = file_with(&tiny_elf(0x20_0000, &[0x90, 0xf4], 0x1000));
        let mem = crate::memory::create_guest_memory(4).unwrap();
        let k = load_kernel(&mem, 4, f.path()).unwrap();
        assert_eq!(k.format, KernelFormat::Elf);
        assert_eq!(k.entry, 0x20_0000);
        assert_eq!(k.end, 0x20_1000);
        let b: [u8; 2] = mem.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!(b, [0x90, 0xf4]);
    }

    #[test]
    fn kernel_larger_than_memory_is_refused_by_name() {
        let f = file_with(&tiny_elf(0x100_0000, &[0xf4], 0x80_0000));
        let mem = crate::memory::create_guest_memory(16).unwrap();
        let err = load_kernel(&mem, 16, f.path()).unwrap_err();
        assert!(matches!(
            err,
            LoaderError::KernelDoesNotFit {
                needed_end: 0x180_0000,
                ..
            }
        ));
        assert!(err.to_string().contains("raise memory_mib"));
    }

    #[test]
    fn bzimage_header_is_understood() {
        let mut img = vec![0u8; 0x1000];
        img[0x1f1] = 1; // setup_sects
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
        img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        img[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes());
        let f = file_with(&img);
        let info = inspect_kernel(f.path()).unwrap();
        assert_eq!(info.format, KernelFormat::BzImage);
        assert_eq!(info.needed_end, 0x140_0000);
        assert_eq!(info.initrd_limit, 0x8000_0000);
        let mem = crate::memory::create_guest_memory(32).unwrap();
        let k = load_kernel(&mem, 32, f.path()).unwrap();
        assert_eq!(k.entry, 0x10_0200);
        assert_eq!(k.end, 0x140_0000);
        assert!(k.setup_header.is_some());
        // No 64-bit entry: refused.
        img[0x236] = 0;
        let f = file_with(&img);
        assert!(matches!(
            inspect_kernel(f.path()),
            Err(LoaderError::NotAKernel { .. })
        ));
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory() {
        assert_eq!(
            initrd_address(0x1800, 0x20_0000, 0x100_0000, u64::MAX),
            Some(0xff_e000)
        );
        assert_eq!(
            initrd_address(0x1000, 0x20_0000, 0x100_0000, 0x80_0000),
            Some(0x7f_f000)
        );
        assert_eq!(
            initrd_address(0xf0_0000, 0x20_0000, 0x100_0000, u64::MAX),
            None
        );
        assert_eq!(initrd_address(0x200_0000, 0, 0x100_0000, u64::MAX), None);
    }

    #[test]
    fn initrd_is_copied_and_too_big_one_is_refused() {
        let kernel = file_with(&tiny_elf(0x20_0000, &[0xf4], 0x1000));
        let mem = crate::memory::create_guest_memory(4).unwrap();
        let k = load_kernel(&mem, 4, kernel.path()).unwrap();
        let initrd = file_with(b"07070100");
        let (addr, size) = load_initrd(&mem, 4, &k, initrd.path()).unwrap();
        assert_eq!((addr, size), (0x3f_f000, 8));
        let b: [u8; 8] = mem.read_obj(GuestAddress(addr)).unwrap();
        assert_eq!(&b, b"07070100");
        let big = file_with(&vec![0u8; 3 << 20]);
        let err = load_initrd(&mem, 4, &k, big.path()).unwrap_err();
        assert!(matches!(err, LoaderError::InitrdDoesNotFit { .. }));
        assert!(err.to_string().contains(&big.path().display().to_string()));
        let err = load_initrd(&mem, 4, &k, Path::new("/nonexistent/initrd")).unwrap_err();
        assert!(matches!(err, LoaderError::InitrdMissing { .. }));
    }
}
