//! The i8042 keyboard controller, only as far as `reboot=k` needs it: a
//! write of 0xfe to port 0x64 (pulse the CPU reset line) ends the VM.
//! Reads return 0, so the guest's "input buffer full?" wait loop on the
//! status port ends at once instead of spinning through 65,536 exits.

use crate::bus::BusDevice;
use crate::event::{EventSender, VmEvent};
use duet_shared::clock::monotonic_ns;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vm_superio::{I8042Device, Trigger};

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Status (read) / command (write) port.
pub const COMMAND_PORT: u16 = 0x64;

/// Reset line: stops the vCPUs and tells the waiting thread.
pub struct ResetTrigger {
    events: EventSender,
    stop: Arc<AtomicBool>,
}

impl Trigger for ResetTrigger {
    type E = ();

    fn trigger(&self) -> Result<(), ()> {
        self.stop.store(true, Ordering::SeqCst);
        // The receiver outlives the devices; a send error means the VM is gone anyway.
        let _ = self.events.send(VmEvent::Reset {
            at_ns: monotonic_ns(),
        });
        Ok(())
    }
}

/// The i8042 on ports 0x60 and 0x64.
pub struct I8042 {
    device: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// An i8042 whose reset command sets `stop` and sends [`VmEvent::Reset`].
    pub fn new(events: EventSender, stop: Arc<AtomicBool>) -> I8042 {
        I8042 {
            device: I8042Device::new(ResetTrigger { events, stop }),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, addr: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.device.read((addr - u64::from(DATA_PORT)) as u8);
        }
    }

    fn write(&mut self, addr: u64, _offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            let _ = self
                .device
                .write((addr - u64::from(DATA_PORT)) as u8, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_zero_and_fe_resets() {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut k = I8042::new(tx, stop.clone());
        let mut st = [0xffu8];
        k.read(0x64, 0, &mut st);
        assert_eq!(st, [0]);
        k.write(0x64, 0, &[0xd1]);
        k.write(0x60, 0, &[0xfe]);
        assert!(rx.try_recv().is_err(), "0xfe on the data port is no reset");
        assert!(!stop.load(Ordering::SeqCst));
        k.write(0x64, 0, &[0xfe]);
        assert!(matches!(rx.try_recv(), Ok(VmEvent::Reset { .. })));
        assert!(stop.load(Ordering::SeqCst));
    }
}
