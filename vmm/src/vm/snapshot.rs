//! Taking a snapshot of a running VM (format: [`crate::snapshot`]). The
//! waiting thread does it between two events: it pauses the vCPUs (each
//! hands over its own state), stops the device host threads, reads the VM
//! and device state, writes RAM, writable disks and state, then starts the
//! host threads again and lets the vCPUs go on. The VM keeps running.

use super::{Running, Slot, Vm};
use crate::snapshot::{
    self, DevicesState, DiskState, HostCpu, SnapshotError, SnapshotState, VirtioDeviceState,
    VirtioState, WriteStats,
};
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;

/// A snapshot asked of a running VM.
pub struct SnapshotRequest {
    /// Where it goes (an empty file, open for writing).
    pub out: File,
    /// Opaque data kept in the snapshot ([`SnapshotState::user`]).
    pub user: serde_json::Value,
    /// Where the answer goes.
    pub reply: Sender<Result<WriteStats, String>>,
}

/// Asks a running VM for snapshots, from any thread.
#[derive(Clone)]
pub struct SnapshotHandle {
    tx: Sender<SnapshotRequest>,
    wake: crate::event::EventSender,
}

impl SnapshotHandle {
    /// Pauses the VM, writes its snapshot to `out`, lets it go on; blocks
    /// until done.
    pub fn snapshot(&self, out: File, user: serde_json::Value) -> Result<WriteStats, String> {
        let (reply, rx) = channel();
        self.tx
            .send(SnapshotRequest { out, user, reply })
            .map_err(|_| "the VM is not running".to_string())?;
        let _ = self.wake.send(crate::event::VmEvent::Control);
        rx.recv()
            .map_err(|_| "the VM ended before its snapshot was written".to_string())?
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vm {
    /// A handle that asks this VM, once it runs, for snapshots.
    pub fn snapshot_handle(&self) -> SnapshotHandle {
        SnapshotHandle {
            tx: self.snapshots_tx.clone(),
            wake: self.events_tx.clone(),
        }
    }

    /// Refuses what a snapshot cannot hold (see [`crate::snapshot`]).
    fn check_snapshottable(&self) -> Result<(), SnapshotError> {
        let no = |m: &str| Err(SnapshotError::Unsupported(m.to_string()));
        if !self.options.irqchip {
            return no("it has no in-kernel irqchip");
        }
        if self.options.shared_memory || !self.fs.is_empty() {
            return no("it has a virtio-fs share, whose queues live in virtiofsd");
        }
        Ok(())
    }

    pub(super) fn take_snapshot(
        &self,
        running: &mut Running,
        out: &File,
        user: serde_json::Value,
    ) -> Result<WriteStats, SnapshotError> {
        self.check_snapshottable()?;
        self.pause.request(running.handles.len());
        let signal = crate::vcpu::kick_signal();
        let paused = self.pause.wait_paused(
            || {
                for (_, h) in &running.handles {
                    let _ = vmm_sys_util::signal::Killable::kill(h, signal);
                }
            },
            || {
                self.stop.load(Ordering::Acquire)
                    || running.handles.iter().any(|(_, h)| h.is_finished())
            },
        );
        let vcpus = match paused {
            Ok(v) => v,
            Err(e) => {
                self.pause.resume();
                return Err(e);
            }
        };
        // Nothing may touch guest memory or the queues while they are written.
        std::mem::take(&mut running.host_threads)
            .into_iter()
            .for_each(crate::devices::virtio::host_thread::HostThread::stop);
        let written = self.write_snapshot(out, user, vcpus);
        let restarted = self.spawn_host_threads(&running.filter);
        self.pause.resume();
        match restarted {
            Ok(t) => running.host_threads = t,
            Err(e) => {
                // The guest goes on without host-side I/O: say so loudly.
                return Err(SnapshotError::io(
                    "restarting the device host threads after the snapshot",
                    e,
                ));
            }
        }
        written
    }

    fn write_snapshot(
        &self,
        out: &File,
        user: serde_json::Value,
        vcpus: Vec<crate::snapshot::VcpuState>,
    ) -> Result<WriteStats, SnapshotError> {
        if let Some(v) = &self.vsock {
            let n = lock(v).device().connections();
            if n > 0 {
                return Err(SnapshotError::Unsupported(format!(
                    "{n} vsock connection(s) to the guest are open (a `duet exec`?); \
                     snapshot it when none are"
                )));
            }
        }
        let (devices, disks) = self.device_states()?;
        let state = SnapshotState {
            format: snapshot::FORMAT_VERSION,
            duet_version: env!("CARGO_PKG_VERSION").to_string(),
            host: HostCpu::current(),
            guest_kernel: self.kernel_identity.clone(),
            memory_mib: self.options.memory_mib,
            memory: Vec::new(),
            vm: snapshot::capture_vm(&self.fd)?,
            vcpus,
            devices,
            user,
        };
        let disk_refs: Vec<(usize, &File)> = disks.iter().map(|(i, f)| (*i, f)).collect();
        snapshot::write(out, state, &self.memory, &disk_refs)
    }

    /// The devices' state, and the writable disks to copy (slot, file).
    fn device_states(&self) -> Result<(DevicesState, Vec<(usize, File)>), SnapshotError> {
        let serial = match &self.serial {
            Some(s) => lock(s).state(),
            None => return Err(SnapshotError::Unsupported("it has no console".into())),
        };
        let ready_sent = self
            .exit_port
            .as_ref()
            .is_some_and(|p| lock(p).ready_sent());
        let mut virtio = Vec::new();
        let mut copies = Vec::new();
        for (n, slot) in self.slots.iter().enumerate() {
            let (device, transport) = match *slot {
                Slot::Disk(i) => {
                    let t = lock(&self.disks[i]);
                    let b = t.device();
                    if !b.read_only() {
                        let f = b
                            .file()
                            .try_clone()
                            .map_err(|e| SnapshotError::io("duplicating a disk's fd", e))?;
                        copies.push((n, f));
                    }
                    (
                        VirtioDeviceState::Block(DiskState {
                            serial: b.serial(),
                            read_only: b.read_only(),
                            size: b.size(),
                            copy: None,
                        }),
                        t.save_state(),
                    )
                }
                Slot::Vsock => {
                    let t = lock(self.vsock.as_ref().expect("slot names it"));
                    (VirtioDeviceState::Vsock, t.save_state())
                }
                Slot::Net => {
                    let t = lock(self.net.as_ref().expect("slot names it"));
                    (
                        VirtioDeviceState::Net {
                            mac: t.device().mac(),
                        },
                        t.save_state(),
                    )
                }
                Slot::Fs(_) => {
                    return Err(SnapshotError::Unsupported(
                        "it has a device a snapshot cannot hold".into(),
                    ))
                }
            };
            virtio.push(VirtioState { device, transport });
        }
        Ok((
            DevicesState {
                serial,
                ready_sent,
                virtio,
            },
            copies,
        ))
    }
}
