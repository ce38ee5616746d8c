//! One vCPU's KVM state: read on its own thread while it is paused (after
//! a KVM_RUN that returned EINTR, so any pending port or MMIO access is
//! complete, as the KVM API asks before saving), written before its thread
//! starts. The order of both is Firecracker's (`vstate/vcpu/x86_64.rs`).

use super::{SnapshotError, VcpuState};
use kvm_bindings::{kvm_msr_entry, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::VcpuFd;

/// MSRs per KVM_GET_MSRS call.
const MSR_CHUNK: usize = 64;

/// Reads vCPU `id`'s state; `msr_index` is KVM_GET_MSR_INDEX_LIST. MSRs
/// KVM lists but cannot read on this vCPU are left out.
pub fn capture_vcpu(fd: &VcpuFd, id: u32, msr_index: &[u32]) -> Result<VcpuState, SnapshotError> {
    let k = |ioctl| move |e| SnapshotError::kvm(ioctl, Some(id), e);
    let mp_state = fd.get_mp_state().map_err(k("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(k("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(k("KVM_GET_SREGS"))?;
    let xsave = fd.get_xsave().map_err(k("KVM_GET_XSAVE"))?;
    let xcrs = fd.get_xcrs().map_err(k("KVM_GET_XCRS"))?;
    let debugregs = fd.get_debug_regs().map_err(k("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(k("KVM_GET_LAPIC"))?;
    let msrs = read_msrs(fd, id, msr_index)?;
    let events = fd.get_vcpu_events().map_err(k("KVM_GET_VCPU_EVENTS"))?;
    let cpuid = fd
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(k("KVM_GET_CPUID2"))?
        .as_slice()
        .to_vec();
    let tsc_khz = fd.get_tsc_khz().ok();
    Ok(VcpuState {
        id,
        cpuid,
        msrs,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        events,
        mp_state,
        tsc_khz,
    })
}

/// KVM_GET_MSRS in chunks. KVM stops at the first MSR it cannot read and
/// returns how many it read: that one is skipped and the rest retried.
fn read_msrs(fd: &VcpuFd, id: u32, index: &[u32]) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut out: Vec<kvm_msr_entry> = Vec::with_capacity(index.len());
    let mut rest: &[u32] = index;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| {
            SnapshotError::Invalid(format!("building the MSR list of vCPU {id}: {e:?}"))
        })?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(|e| SnapshotError::kvm("KVM_GET_MSRS", Some(id), e))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        // Skip the one that failed (if any), go on after it.
        let consumed = if n < chunk.len() { n + 1 } else { n };
        rest = &rest[consumed..];
    }
    Ok(out)
}

/// Environment variable (`1`) for nested KVM under QEMU's TCG only (duet's
/// testbed): restore the task register as an available 64-bit TSS (type 9)
/// instead of the busy one (11) KVM reports.
///
/// KVM_GET_SREGS on AMD always sets TR's busy bit (the hardware does not
/// keep it), and a busy TSS is what real CPUs hold; but QEMU's emulated CPU
/// refuses every user-space `in`/`out` unless the cached TR type is 9
/// (`check_io` in target/i386/tcg/seg_helper.c), so a restored guest's
/// ioperm(2) grants stop working there and duet-init cannot report the
/// workload's exit. Never set it on hardware: Intel's VM entry refuses a
/// TR of type 9.
pub const TCG_TSS_QUIRK_ENV: &str = "DUET_TCG_TSS_QUIRK";

/// [`TCG_TSS_QUIRK_ENV`]'s change, when `on`.
fn tcg_tss_quirk(sregs: &mut kvm_bindings::kvm_sregs, on: bool) {
    const BUSY_TSS64: u8 = 0xb;
    const AVAILABLE_TSS64: u8 = 0x9;
    if on && sregs.tr.type_ == BUSY_TSS64 {
        sregs.tr.type_ = AVAILABLE_TSS64;
    }
}

/// Writes `s` into a new vCPU (before it first runs).
pub fn restore_vcpu(fd: &VcpuFd, s: &VcpuState) -> Result<(), SnapshotError> {
    let id = s.id;
    let k = |ioctl| move |e| SnapshotError::kvm(ioctl, Some(id), e);
    if let Some(khz) = s.tsc_khz {
        // Keeps the guest's TSC rate where the host's differs (a scaling-capable
        // host); where KVM cannot scale, a same-rate request still succeeds.
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz).map_err(k("KVM_SET_TSC_KHZ"))?;
        }
    }
    let cpuid = CpuId::from_entries(&s.cpuid)
        .map_err(|e| SnapshotError::Invalid(format!("CPUID of vCPU {id}: {e:?}")))?;
    fd.set_cpuid2(&cpuid).map_err(k("KVM_SET_CPUID2"))?;
    fd.set_mp_state(s.mp_state).map_err(k("KVM_SET_MP_STATE"))?;
    fd.set_regs(&s.regs).map_err(k("KVM_SET_REGS"))?;
    let mut sregs = s.sregs;
    tcg_tss_quirk(
        &mut sregs,
        std::env::var_os(TCG_TSS_QUIRK_ENV).is_some_and(|v| v == "1"),
    );
    fd.set_sregs(&sregs).map_err(k("KVM_SET_SREGS"))?;
    // SAFETY: a kvm_xsave read from KVM_GET_XSAVE of the same layout (the
    // legacy 4 KiB area: no dynamic features, so no larger buffer is needed).
    unsafe { fd.set_xsave(&s.xsave) }.map_err(k("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&s.xcrs).map_err(k("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&s.debugregs)
        .map_err(k("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&s.lapic).map_err(k("KVM_SET_LAPIC"))?;
    for chunk in s.msrs.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk)
            .map_err(|e| SnapshotError::Invalid(format!("MSRs of vCPU {id}: {e:?}")))?;
        let n = fd.set_msrs(&msrs).map_err(k("KVM_SET_MSRS"))?;
        if n < chunk.len() {
            return Err(SnapshotError::MsrRefused {
                vcpu: id,
                msr: chunk[n].index,
            });
        }
    }
    fd.set_vcpu_events(&s.events)
        .map_err(k("KVM_SET_VCPU_EVENTS"))?;
    // Tells a kvm-clock guest it was paused, so its watchdogs do not fire
    // on the gap. Not every guest uses kvm-clock: failure is harmless.
    let _ = fd.kvmclock_ctrl();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tcg_tss_quirk_only_marks_a_busy_tss_available_when_asked() {
        let mut s = kvm_bindings::kvm_sregs::default();
        s.tr.type_ = 0xb;
        tcg_tss_quirk(&mut s, false);
        assert_eq!(s.tr.type_, 0xb);
        tcg_tss_quirk(&mut s, true);
        assert_eq!(s.tr.type_, 0x9);
        s.tr.type_ = 0x3;
        tcg_tss_quirk(&mut s, true);
        assert_eq!(s.tr.type_, 0x3);
    }
}
