//! The i8042 keyboard controller, only as far as `reboot=k` needs it: a
//! write of 0xfe to port 0x64 (pulse the CPU reset line) ends the VM.
//!
//! The status port reads [`STATUS`]: input buffer empty, so the reboot
//! path's wait for it ends at once (answering 0xff cost 65,536 exits, see
//! shared/notes/hosts.md), and output buffer full with the data port
//! reading 0, so Linux's i8042 driver drains 16 bytes at probe time and
//! reports "No controller found" (about 35 exits). A status of 0 instead
//! made the driver poll 10,000 times for a control byte that never came,
//! measured in the nested testbed; duet's guests need no keyboard.

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
/// Status port value: output buffer full (bit 0), input buffer empty (bit 1 clear).
pub const STATUS: u8 = 0x01;
/// Input-buffer-full bit of the status port, which the reboot path waits to clear.
pub const STATUS_IBF: u8 = 0x02;

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
            *first = if addr == u64::from(COMMAND_PORT) {
                STATUS
            } else {
                self.device.read((addr - u64::from(DATA_PORT)) as u8)
            };
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
    fn status_says_input_empty_output_full_and_fe_resets() {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut k = I8042::new(tx, stop.clone());
        let mut st = [0xffu8];
        k.read(0x64, 0, &mut st);
        assert_eq!(st[0] & STATUS_IBF, 0, "reboot's kb_wait must not spin");
        assert_eq!(st[0] & 1, 1, "Linux's i8042_flush gives up after 16 reads");
        let mut d = [0xffu8];
        k.read(0x60, 0, &mut d);
        assert_eq!(d, [0]);
        k.write(0x64, 0, &[0xd1]);
        k.write(0x60, 0, &[0xfe]);
        assert!(rx.try_recv().is_err(), "0xfe on the data port is no reset");
        assert!(!stop.load(Ordering::SeqCst));
        k.write(0x64, 0, &[0xfe]);
        assert!(matches!(rx.try_recv(), Ok(VmEvent::Reset { .. })));
        assert!(stop.load(Ordering::SeqCst));
    }
}
