//! Where guest serial output goes: forwarded live, or (workload mode) held
//! back until the guest init says "ready" so the kernel log stays off the
//! workload's output. The last lines are always kept for error messages.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Console lines kept for error messages.
pub const TAIL_LINES: usize = 20;
const MAX_LINE: usize = 512;

/// What happens to guest console output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsoleMode {
    /// Everything the guest writes goes to the sink as it arrives (kernel log included).
    Forward,
    /// Output before the guest's ready write (the kernel log) is only kept
    /// in the tail; output after it goes to the sink.
    #[default]
    Workload,
}

struct Inner {
    sink: Box<dyn Write + Send>,
    forwarding: bool,
    tail: VecDeque<String>,
    line: Vec<u8>,
    bytes: u64,
}

/// The guest console: a sink plus the tail of recent lines.
pub struct Console {
    inner: Mutex<Inner>,
    /// Whether input may go to the guest yet: in workload mode from its
    /// ready write on (or at once for a restored guest). A booting kernel's
    /// UART driver empties the FIFO when it starts, so keystrokes typed
    /// ahead would be lost; held back, they wait in duet's own stdin until
    /// the workload runs. In forward mode (the whole console, kernel
    /// included, is the user's) input goes at once.
    input_open: std::sync::atomic::AtomicBool,
    /// Readable once input is open, so the input thread can wait in poll(2)
    /// instead of waking up on a timer while the guest boots (every wake-up
    /// preempts a vCPU on a busy host). `None` if the eventfd could not be
    /// made: the input thread then checks every 10 ms.
    opened: Option<vmm_sys_util::eventfd::EventFd>,
}

impl Console {
    /// A console writing to `sink` in `mode`.
    pub fn new(mode: ConsoleMode, sink: Box<dyn Write + Send>) -> Arc<Console> {
        Arc::new(Console {
            inner: Mutex::new(Inner {
                sink,
                forwarding: mode == ConsoleMode::Forward,
                tail: VecDeque::with_capacity(TAIL_LINES + 1),
                line: Vec::new(),
                bytes: 0,
            }),
            input_open: std::sync::atomic::AtomicBool::new(mode == ConsoleMode::Forward),
            opened: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .ok(),
        })
    }

    /// Lets input reach the guest (its workload runs, or it was restored).
    pub fn open_input(&self) {
        self.input_open
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(e) = &self.opened {
            let _ = e.write(1);
        }
    }

    /// An fd that becomes readable once [`Console::open_input`] ran (it
    /// stays readable); lives as long as the console.
    pub fn input_opened_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.opened.as_ref().map(|e| e.as_raw_fd())
    }

    /// Whether input may reach the guest ([`Console::open_input`]).
    pub fn input_is_open(&self) -> bool {
        self.input_open.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes bytes the guest wrote to its serial port.
    pub fn write_guest_bytes(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        inner.bytes += bytes.len() as u64;
        for &b in bytes {
            match b {
                b'\n' => {
                    let line = String::from_utf8_lossy(&inner.line).into_owned();
                    inner.line.clear();
                    inner.tail.push_back(line);
                    if inner.tail.len() > TAIL_LINES {
                        inner.tail.pop_front();
                    }
                }
                b'\r' => {}
                _ if inner.line.len() < MAX_LINE => inner.line.push(b),
                _ => {}
            }
        }
        if inner.forwarding {
            // A closed or full sink must not stop the guest: output is dropped.
            let _ = inner.sink.write_all(bytes);
        }
    }

    /// Flushes the sink.
    pub fn flush(&self) {
        let _ = self.lock().sink.flush();
    }

    /// Starts forwarding (called on the guest's ready write).
    pub fn start_forwarding(&self) {
        let mut inner = self.lock();
        inner.forwarding = true;
        let _ = inner.sink.flush();
        drop(inner);
        self.open_input();
    }

    /// The last lines the guest wrote (a trailing partial line included).
    pub fn tail(&self) -> Vec<String> {
        let inner = self.lock();
        let mut lines: Vec<String> = inner.tail.iter().cloned().collect();
        if !inner.line.is_empty() {
            lines.push(String::from_utf8_lossy(&inner.line).into_owned());
            if lines.len() > TAIL_LINES {
                lines.remove(0);
            }
        }
        lines
    }

    /// Bytes the guest has written in total.
    pub fn bytes_written(&self) -> u64 {
        self.lock().bytes
    }
}

/// `Write` adapter the UART model writes into.
pub struct ConsoleWriter(pub Arc<Console>);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_guest_bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush();
        Ok(())
    }
}

/// A sink collecting into a shared buffer (tests, doctor).
#[derive(Clone, Default)]
pub struct SharedBuffer(pub Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// What was written so far, lossily decoded.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_mode_hides_output_until_ready() {
        let buf = SharedBuffer::default();
        let c = Console::new(ConsoleMode::Workload, Box::new(buf.clone()));
        c.write_guest_bytes(b"[0.1] kernel boots\r\n");
        assert_eq!(buf.contents(), "");
        c.start_forwarding();
        c.write_guest_bytes(b"hi\r\n");
        assert_eq!(buf.contents(), "hi\r\n");
        assert_eq!(c.tail(), vec!["[0.1] kernel boots", "hi"]);
        assert_eq!(c.bytes_written(), 24);
    }

    #[test]
    fn forward_mode_passes_everything() {
        let buf = SharedBuffer::default();
        let c = Console::new(ConsoleMode::Forward, Box::new(buf.clone()));
        c.write_guest_bytes(b"a\nb");
        assert_eq!(buf.contents(), "a\nb");
        assert_eq!(c.tail(), vec!["a", "b"]);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let c = Console::new(ConsoleMode::Workload, Box::new(std::io::sink()));
        for i in 0..100 {
            c.write_guest_bytes(format!("line {i}\n").as_bytes());
        }
        let t = c.tail();
        assert_eq!(t.len(), TAIL_LINES);
        assert_eq!(t[0], "line 80");
        assert_eq!(t[TAIL_LINES - 1], "line 99");
    }
}
