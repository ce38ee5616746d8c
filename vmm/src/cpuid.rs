//! Per-vCPU CPUID, derived from KVM_GET_SUPPORTED_CPUID: each vCPU gets its
//! own APIC id and the package size, and every vCPU sees the "hypervisor"
//! bit (without it Linux never looks for kvm-clock and stalls calibrating
//! its TSC against the PIT; see shared/notes/hosts.md).

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID.1:ECX bit 31, "running under a hypervisor".
pub const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 24, TSC-deadline timer (KVM emulates it but does not report it).
pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:EDX bit 28, multi-threading (logical processor count in EBX is valid).
pub const EDX_HTT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Rewrites `entries` (a copy of the supported CPUID) for vCPU `apic_id` of `vcpu_count`.
pub fn adjust_for_vcpu(
    entries: &mut [kvm_cpuid_entry2],
    apic_id: u8,
    vcpu_count: u32,
    tsc_deadline: bool,
) {
    let count = vcpu_count.clamp(1, 255);
    // Bits needed to number the vCPUs of the package.
    let core_shift = 32 - (count - 1).leading_zeros();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx =
                    (e.ebx & 0x0000_00ff) | (u32::from(apic_id) << 24) | (count << 16) | (8 << 8); // CLFLUSH line size in 8-byte units
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            // Cores per package - 1, bits 31:26 (only where the leaf describes a cache).
            4 if e.eax & 0x1f != 0 => {
                e.eax = (e.eax & 0x03ff_ffff) | ((count - 1).min(63) << 26);
            }
            0xb | 0x1f => {
                // One thread per core, `count` cores per package.
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_shift;
                        e.ebx = count;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
                e.edx = u32::from(apic_id);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0x11,
            ebx: 0xdead_beef,
            ecx: 0x1,
            edx: EDX_HTT,
            ..Default::default()
        }
    }

    #[test]
    fn leaf_1_gets_apic_id_count_and_hypervisor_bit() {
        let mut e = vec![entry(0, 0), entry(1, 0)];
        adjust_for_vcpu(&mut e, 3, 4, true);
        assert_eq!(e[1].ebx >> 24, 3);
        assert_eq!((e[1].ebx >> 16) & 0xff, 4);
        assert_eq!(e[1].ebx & 0xff, 0xef, "brand index kept");
        assert_ne!(e[1].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[1].ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(e[1].edx & EDX_HTT, 0);
        assert_eq!(e[0].ebx, 0xdead_beef, "other leaves untouched");
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = vec![entry(1, 0)];
        adjust_for_vcpu(&mut e, 0, 1, false);
        assert_eq!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
    }

    #[test]
    fn topology_leaf_carries_x2apic_id() {
        let mut e = vec![entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        adjust_for_vcpu(&mut e, 5, 6, false);
        assert!(e.iter().all(|l| l.edx == 5));
        assert_eq!((e[0].ebx, e[0].ecx >> 8), (1, LEVEL_TYPE_SMT));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx >> 8), (3, 6, LEVEL_TYPE_CORE));
        assert_eq!((e[2].ebx, e[2].ecx), (0, 2));
    }
}
