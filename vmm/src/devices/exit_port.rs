//! duet's ready/exit device (ports and encoding: duet_shared::guest_abi).
//! A ready write stamps the time and starts console forwarding; an exit
//! status write stamps the time and stops the VM.

use crate::bus::BusDevice;
use crate::console::Console;
use crate::event::{EventSender, VmEvent};
use duet_shared::clock::monotonic_ns;
use duet_shared::guest_abi::{EXIT_PORT, READY_PORT};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The ready/exit port pair.
pub struct ExitPort {
    events: EventSender,
    stop: Arc<AtomicBool>,
    console: Arc<Console>,
}

impl ExitPort {
    /// A device reporting to `events`, stopping through `stop`, gating `console`.
    pub fn new(events: EventSender, stop: Arc<AtomicBool>, console: Arc<Console>) -> ExitPort {
        ExitPort {
            events,
            stop,
            console,
        }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _addr: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, addr: u64, offset: u64, data: &[u8]) {
        let at_ns = monotonic_ns();
        if addr == u64::from(READY_PORT) {
            self.console.start_forwarding();
            let _ = self.events.send(VmEvent::Ready { at_ns });
        } else if addr == u64::from(EXIT_PORT) && offset == 0 {
            let mut raw = [0u8; 4];
            let n = data.len().min(4);
            raw[..n].copy_from_slice(&data[..n]);
            self.stop.store(true, Ordering::SeqCst);
            self.console.flush();
            let _ = self.events.send(VmEvent::Exit {
                status: u32::from_le_bytes(raw),
                at_ns,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::{ConsoleMode, SharedBuffer};

    #[test]
    fn ready_then_exit() {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let buf = SharedBuffer::default();
        let console = Console::new(ConsoleMode::Workload, Box::new(buf.clone()));
        let mut p = ExitPort::new(tx, stop.clone(), console.clone());
        console.write_guest_bytes(b"kernel log\n");
        p.write(0x510, 0, &[1]);
        console.write_guest_bytes(b"hi\n");
        assert_eq!(buf.contents(), "hi\n");
        assert!(matches!(rx.try_recv(), Ok(VmEvent::Ready { .. })));
        assert!(!stop.load(Ordering::SeqCst));
        p.write(0x514, 0, &0x107u32.to_le_bytes());
        match rx.try_recv() {
            Ok(VmEvent::Exit { status, .. }) => assert_eq!(status, 0x107),
            other => panic!("{other:?}"),
        }
        assert!(stop.load(Ordering::SeqCst));
    }
}
