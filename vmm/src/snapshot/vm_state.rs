//! VM-wide KVM state: the in-kernel irqchip (two PICs and the IO-APIC),
//! the PIT and the kvm-clock. Read while every vCPU is paused; written
//! after the irqchip and PIT were created and before any vCPU runs
//! (Firecracker's order: PIT, clock, irqchip).

use super::{SnapshotError, VmState};
use kvm_bindings::{
    kvm_irqchip, KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;

fn irqchip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut c)
        .map_err(|e| SnapshotError::kvm("KVM_GET_IRQCHIP", None, e))?;
    Ok(c)
}

/// Reads the VM's state.
pub fn capture_vm(fd: &VmFd) -> Result<VmState, SnapshotError> {
    let pit = fd
        .get_pit2()
        .map_err(|e| SnapshotError::kvm("KVM_GET_PIT2", None, e))?;
    let clock = fd
        .get_clock()
        .map_err(|e| SnapshotError::kvm("KVM_GET_CLOCK", None, e))?;
    Ok(VmState {
        pic_master: irqchip(fd, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(fd, KVM_IRQCHIP_IOAPIC)?,
        pit,
        clock,
    })
}

/// Writes `s` into a new VM.
pub fn restore_vm(fd: &VmFd, s: &VmState) -> Result<(), SnapshotError> {
    fd.set_pit2(&s.pit)
        .map_err(|e| SnapshotError::kvm("KVM_SET_PIT2", None, e))?;
    let mut clock = s.clock;
    // KVM_SET_CLOCK accepts only the flags it knows how to set; the
    // TSC-stable flag is an output of KVM_GET_CLOCK.
    clock.flags &= !KVM_CLOCK_TSC_STABLE;
    fd.set_clock(&clock)
        .map_err(|e| SnapshotError::kvm("KVM_SET_CLOCK", None, e))?;
    for (chip, what) in [
        (&s.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&s.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        if chip.chip_id != what {
            return Err(SnapshotError::Invalid(format!(
                "irqchip state {} has chip id {}",
                what, chip.chip_id
            )));
        }
        fd.set_irqchip(chip)
            .map_err(|e| SnapshotError::kvm("KVM_SET_IRQCHIP", None, e))?;
    }
    Ok(())
}
