//! duet's ready/exit device (ports and encoding: duet_shared::guest_abi).
//! The first ready write stamps the time and starts console forwarding; the
//! first exit status write stamps the time and stops the VM. Later writes
//! are ignored, so a guest cannot flood the VMM with events.

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
    /// Ready and exit are reported once each: a guest writing the ports in
    /// a loop must not fill the event channel (or the report's timeline).
    ready_sent: bool,
    exit_sent: bool,
}

impl ExitPort {
    /// A device reporting to `events`, stopping through `stop`, gating `console`.
    pub fn new(events: EventSender, stop: Arc<AtomicBool>, console: Arc<Console>) -> ExitPort {
        ExitPort {
            events,
            stop,
            console,
            ready_sent: false,
            exit_sent: false,
        }
    }
}

impl ExitPort {
    /// Whether the guest already said ready.
    pub fn ready_sent(&self) -> bool {
        self.ready_sent
    }

    /// A restored guest that said ready before its snapshot: forward its
    /// console from the start and never report ready again.
    pub fn restore_ready(&mut self, ready_sent: bool) {
        if ready_sent {
            self.ready_sent = true;
            self.console.start_forwarding();
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
            if !self.ready_sent {
                self.ready_sent = true;
                self.console.start_forwarding();
                let _ = self.events.send(VmEvent::Ready { at_ns });
            }
        } else if addr == u64::from(EXIT_PORT) && offset == 0 && !self.exit_sent {
            self.exit_sent = true;
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
    fn a_guest_writing_ready_and_exit_in_a_loop_sends_each_event_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let console = Console::new(ConsoleMode::Workload, Box::new(std::io::sink()));
        let mut p = ExitPort::new(tx, stop, console);
        for _ in 0..10_000 {
            p.write(0x510, 0, &[1]);
        }
        for _ in 0..10_000 {
            p.write(0x514, 0, &7u32.to_le_bytes());
        }
        let events: Vec<_> = rx.try_iter().collect();
        assert_eq!(events.len(), 2, "{:?}", &events[..events.len().min(4)]);
        assert!(matches!(events[0], VmEvent::Ready { .. }));
        assert!(matches!(events[1], VmEvent::Exit { status: 7, .. }));
    }

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
