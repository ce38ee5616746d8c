//! COM1: a 16550A UART (vm-superio) at port 0x3f8 on IRQ 4. Its interrupt is
//! an EventFd registered with KVM as an irqfd, so raising it costs no exit;
//! vm-superio raises the THR-empty interrupt the Linux 8250 driver waits for.

use crate::bus::BusDevice;
use crate::console::{Console, ConsoleWriter};
use std::sync::Arc;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 register count.
pub const COM1_LEN: u16 = 8;
/// COM1 interrupt line (ISA IRQ / GSI).
pub const COM1_IRQ: u32 = 4;

/// The UART's interrupt: a write to an EventFd (an irqfd when the VM has an irqchip).
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// COM1 on the I/O bus.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, ConsoleWriter>,
}

impl SerialDevice {
    /// A UART that interrupts through `irq` and writes to `console`.
    pub fn new(irq: EventFd, console: Arc<Console>) -> SerialDevice {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), ConsoleWriter(console)),
        }
    }

    /// A UART in the state a snapshot saved (registers and unread input).
    pub fn from_state(
        irq: EventFd,
        console: Arc<Console>,
        state: &crate::snapshot::SerialState,
    ) -> Result<SerialDevice, String> {
        Serial::from_state(
            &state.into(),
            IrqTrigger(irq),
            NoEvents,
            ConsoleWriter(console),
        )
        .map(|uart| SerialDevice { uart })
        .map_err(|e| format!("serial state: {e:?}"))
    }

    /// Its registers and unread input, for a snapshot.
    pub fn state(&self) -> crate::snapshot::SerialState {
        self.uart.state().into()
    }

    /// Queues input bytes for the guest; returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _addr: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, _addr: u64, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            // Output errors (closed sink) and interrupt errors must not stop the guest.
            let _ = self.uart.write(offset as u8, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::{ConsoleMode, SharedBuffer};

    #[test]
    fn bytes_reach_the_console_and_raise_thr_empty() {
        let buf = SharedBuffer::default();
        let console = Console::new(ConsoleMode::Forward, Box::new(buf.clone()));
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(evt.try_clone().unwrap(), console);
        s.write(0x3f9, 1, &[0x02]); // IER: THR empty interrupt on
        assert_eq!(evt.read().unwrap(), 1, "enabling THRE interrupts fires one");
        let mut iir = [0u8];
        s.read(0x3fa, 2, &mut iir); // acknowledge
        s.write(0x3f8, 0, b"h");
        s.write(0x3f8, 0, b"i");
        assert_eq!(buf.contents(), "hi");
        assert!(evt.read().unwrap() >= 1, "THR empty interrupt after output");
    }

    #[test]
    fn input_is_readable_by_the_guest() {
        let console = Console::new(ConsoleMode::Forward, Box::new(std::io::sink()));
        let mut s = SerialDevice::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), console);
        assert_eq!(s.enqueue_input(b"ab"), 2);
        let mut lsr = [0u8];
        s.read(0x3fd, 5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut d = [0u8];
        s.read(0x3f8, 0, &mut d);
        assert_eq!(d, *b"a");
    }
}
