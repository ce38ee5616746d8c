//! Restoring a snapshot into a new VM in this process: the same steps as a
//! boot where they make the same thing (KVM, irqchip and PIT, COM1, the
//! virtio-mmio slots in their saved order), then the saved state over
//! them, Firecracker's order: devices, VM (PIT, clock, irqchip), vCPUs.
//! Guest RAM is the snapshot file mapped copy-on-write. [`Vm::run`] then
//! goes on where the guest was paused.

use super::{ConsoleConfig, Vm, VmOptions, VmmError};
use crate::devices::virtio::BlockConfig;
use crate::snapshot::{self, Snapshot, SnapshotError, VirtioDeviceState};
use crate::vcpu::Vcpu;
use std::os::fd::OwnedFd;

/// What the restoring caller provides: host resources are never taken
/// from the snapshot file.
pub struct RestoreConfig {
    /// The console.
    pub console: ConsoleConfig,
    /// One disk per saved disk, matched by serial: read-only disks as
    /// they were, writable ones where their copy was extracted to
    /// ([`Snapshot::extract_disk`]).
    pub disks: Vec<BlockConfig>,
    /// The vsock device's host side, if the snapshot has one.
    pub agent_listener: Option<OwnedFd>,
    /// The network device's tap and MAC, if the snapshot has one (a tap of
    /// this VM's own: never the snapshotted VM's).
    pub net: Option<(OwnedFd, [u8; 6])>,
    /// Run VMM threads under the seccomp filter.
    pub seccomp: bool,
}

fn invalid(m: String) -> VmmError {
    VmmError::Snapshot(SnapshotError::Invalid(m))
}

impl Vm {
    /// A VM in the state `snap` saved, ready to [`Vm::run`].
    pub fn restore(snap: &Snapshot, cfg: RestoreConfig) -> Result<Vm, VmmError> {
        let s = &snap.state;
        s.check_host()?;
        s.check_shape(snap.len)?;
        let options = VmOptions {
            memory_mib: s.memory_mib,
            vcpus: s.vcpus.len() as u32,
            irqchip: true,
            seccomp: cfg.seccomp,
            shared_memory: false,
        };
        let kvm = super::open_kvm()?;
        let fd = kvm.create_vm().map_err(VmmError::CreateVm)?;
        let memory = crate::memory::map_snapshot_memory(&snap.file, &s.memory, s.memory_mib)?;
        let mut vm = Vm::with_memory(options, kvm, fd, memory)?;
        vm.kernel_identity = s.guest_kernel.clone();
        vm.attach_legacy_devices_with(cfg.console, Some(&s.devices.serial))?;
        if let Some(p) = &vm.exit_port {
            p.lock()
                .unwrap_or_else(|p| p.into_inner())
                .restore_ready(s.devices.ready_sent);
        }
        let mut listener = cfg.agent_listener;
        let mut net = cfg.net;
        let mut used = vec![false; cfg.disks.len()];
        for (n, v) in s.devices.virtio.iter().enumerate() {
            match &v.device {
                VirtioDeviceState::Block(d) => {
                    let i = cfg
                        .disks
                        .iter()
                        .position(|c| c.serial == d.serial)
                        .ok_or_else(|| {
                            invalid(format!("no disk was given for the saved disk {}", d.serial))
                        })?;
                    let c = &cfg.disks[i];
                    if c.read_only != d.read_only {
                        return Err(invalid(format!(
                            "disk {}: saved {}, given {}",
                            d.serial,
                            if d.read_only { "read-only" } else { "writable" },
                            if c.read_only { "read-only" } else { "writable" }
                        )));
                    }
                    used[i] = true;
                    vm.attach_disks(std::slice::from_ref(c))?;
                    let t = vm.disks.last().expect("just attached").clone();
                    let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
                    if t.device().size() != d.size {
                        return Err(invalid(format!(
                            "disk {}: {} has {} bytes, the snapshot's had {}",
                            d.serial,
                            c.path.display(),
                            t.device().size(),
                            d.size
                        )));
                    }
                    t.restore_state(&v.transport).map_err(invalid)?;
                }
                VirtioDeviceState::Vsock => {
                    let l = listener.take().ok_or_else(|| {
                        invalid("the snapshot has a vsock device; no agent socket was given".into())
                    })?;
                    vm.attach_vsock(l)?;
                    let t = vm.vsock.as_ref().expect("just attached");
                    t.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .restore_state(&v.transport)
                        .map_err(invalid)?;
                }
                VirtioDeviceState::Net { .. } => {
                    let (tap, mac) = net.take().ok_or_else(|| {
                        invalid("the snapshot has a network device; no tap was given for it".into())
                    })?;
                    vm.attach_net(tap, mac)?;
                    let t = vm.net.as_ref().expect("just attached");
                    t.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .restore_state(&v.transport)
                        .map_err(invalid)?;
                }
            }
            debug_assert_eq!(vm.slots.len(), n + 1);
        }
        if net.is_some() {
            return Err(invalid(
                "a network device was given but the snapshot has none".into(),
            ));
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(invalid(format!(
                "disk {} was given but the snapshot has no such disk",
                cfg.disks[i].serial
            )));
        }
        snapshot::restore_vm(&vm.fd, &s.vm)?;
        for v in &s.vcpus {
            let vcpu = Vcpu::create(&vm.fd, v.id)?;
            snapshot::restore_vcpu(vcpu.fd(), v)?;
            vm.vcpus.push(vcpu);
        }
        Ok(vm)
    }
}
