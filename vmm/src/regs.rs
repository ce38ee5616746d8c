//! Initial vCPU state: general and segment registers for the 64-bit Linux
//! entry (or real mode for tiny guests), FPU, boot MSRs, and the local APIC
//! LINT pins.

use crate::gdt::{self, CODE_SELECTOR, DATA_SELECTOR, GDT_LIMIT, IDT_LIMIT, TSS_SELECTOR};
use crate::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR};
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;

/// IA32_MTRR_DEF_TYPE: MTRRs enabled, default type write-back.
pub const MTRR_DEF_TYPE_WB: u64 = 0x806;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// How a vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// 64-bit long mode with the boot GDT and identity page tables at `cr3`;
    /// `rsi` carries the zero page address for Linux.
    Long {
        /// Entry point.
        rip: u64,
        /// Value of RSI (zero page for Linux).
        rsi: u64,
        /// Page table root.
        cr3: u64,
    },
    /// 16-bit real mode with CS base 0: `ip` is the physical entry (below 64 KiB).
    Real {
        /// Entry point.
        ip: u16,
    },
}

/// Errors setting vCPU state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// An ioctl on the vCPU failed.
    #[error("{ioctl} on vCPU {vcpu}")]
    Ioctl {
        /// Which ioctl.
        ioctl: &'static str,
        /// vCPU index.
        vcpu: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only some MSRs.
    #[error("KVM_SET_MSRS on vCPU {vcpu}: MSR {msr:#x} was refused")]
    MsrRefused {
        /// vCPU index.
        vcpu: u32,
        /// First MSR not set.
        msr: u32,
    },
    /// The MSR list could not be built.
    #[error("building the MSR list for vCPU {vcpu}")]
    MsrList {
        /// vCPU index.
        vcpu: u32,
    },
}

/// General registers for `mode`.
pub fn boot_regs(mode: CpuMode) -> kvm_regs {
    match mode {
        CpuMode::Long { rip, rsi, .. } => kvm_regs {
            rflags: 0x2,
            rip,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi,
            ..Default::default()
        },
        CpuMode::Real { ip } => kvm_regs {
            rflags: 0x2,
            rip: u64::from(ip),
            rsp: 0,
            ..Default::default()
        },
    }
}

/// Applies `mode` to the special registers KVM reported for a fresh vCPU.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: CpuMode) -> kvm_sregs {
    match mode {
        CpuMode::Long { cr3, .. } => {
            let data = gdt::boot_segment(DATA_SELECTOR);
            sregs.cs = gdt::boot_segment(CODE_SELECTOR);
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = gdt::boot_segment(TSS_SELECTOR);
            sregs.gdt.base = GDT_ADDR;
            sregs.gdt.limit = GDT_LIMIT;
            sregs.idt.base = IDT_ADDR;
            sregs.idt.limit = IDT_LIMIT;
            sregs.cr0 |= CR0_PE | CR0_PG;
            sregs.cr3 = cr3;
            sregs.cr4 |= CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        CpuMode::Real { .. } => {
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
        }
    }
    sregs
}

/// The MSRs every vCPU starts with (Firecracker's boot set).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets general, special and FPU registers of vCPU `vcpu` for `mode`.
pub fn set_boot_registers(fd: &VcpuFd, vcpu: u32, mode: CpuMode) -> Result<(), RegsError> {
    let err = |ioctl| {
        move |source| RegsError::Ioctl {
            ioctl,
            vcpu,
            source,
        }
    };
    let sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    fd.set_sregs(&boot_sregs(sregs, mode))
        .map_err(err("KVM_SET_SREGS"))?;
    fd.set_regs(&boot_regs(mode)).map_err(err("KVM_SET_REGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(err("KVM_SET_FPU"))
}

/// Writes [`boot_msrs`] into vCPU `vcpu`.
pub fn set_boot_msrs(fd: &VcpuFd, vcpu: u32) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::MsrList { vcpu })?;
    let set = fd.set_msrs(&msrs).map_err(|source| RegsError::Ioctl {
        ioctl: "KVM_SET_MSRS",
        vcpu,
        source,
    })?;
    if set != entries.len() {
        return Err(RegsError::MsrRefused {
            vcpu,
            msr: entries[set].index,
        });
    }
    Ok(())
}

fn lvt_with_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Routes LINT0 to ExtINT (the PIC) and LINT1 to NMI, as a BIOS would.
pub fn set_lint(fd: &VcpuFd, vcpu: u32) -> Result<(), RegsError> {
    let mut lapic = fd.get_lapic().map_err(|source| RegsError::Ioctl {
        ioctl: "KVM_GET_LAPIC",
        vcpu,
        source,
    })?;
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[off + i] as u8);
        let v = lvt_with_mode(u32::from_le_bytes(bytes), mode);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *b as _;
        }
    }
    fd.set_lapic(&lapic).map_err(|source| RegsError::Ioctl {
        ioctl: "KVM_SET_LAPIC",
        vcpu,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_sregs() {
        let s = boot_sregs(
            kvm_sregs::default(),
            CpuMode::Long {
                rip: 0x100_0000,
                rsi: 0x7000,
                cr3: 0x9000,
            },
        );
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(s.ss.selector, 0x18);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.gdt.base, s.gdt.limit), (GDT_ADDR, 39));
        assert_eq!(s.idt.base, IDT_ADDR);
    }

    #[test]
    fn linux_entry_regs() {
        let r = boot_regs(CpuMode::Long {
            rip: 0x100_0000,
            rsi: 0x7000,
            cr3: 0x9000,
        });
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, 0x7000, 0x8ff0, 2)
        );
    }

    #[test]
    fn msrs_include_write_back_mtrr_default() {
        let m = boot_msrs();
        let def = m.iter().find(|e| e.index == 0x2ff).unwrap();
        assert_eq!(def.data, 0x806);
    }

    #[test]
    fn lvt_mode_bits() {
        assert_eq!(lvt_with_mode(0x0001_0000, APIC_MODE_EXTINT), 0x0001_0700);
        assert_eq!(lvt_with_mode(0x0000_0700, APIC_MODE_NMI), 0x0000_0400);
    }
}
