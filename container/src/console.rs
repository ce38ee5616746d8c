//! The workload's terminal with `-t`: a pty of its own, never the caller's.
//!
//! A workload that holds the terminal duet was started from could type into
//! the caller's shell (TIOCSTI), change its modes or read what the user
//! types after duet exits. So, as `docker run -t` does, the container's init
//! opens a new pty *inside* the container's own devpts (so `tty` and ttyname
//! work there), makes it the controlling terminal of the workload's new
//! session, puts it on those of fds 0-2 that were terminals (all three when
//! none was), and sends the master to duet over the setup channel. duet
//! relays bytes between its own terminal and the master ([`Relay`]); when
//! stdin is a terminal it is put in raw mode for the run, so keys (Ctrl-C
//! too) go to the workload's pty, which turns them into signals for the
//! workload's foreground process group, as in Docker. Without `-t`,
//! [`crate::stdio`] puts relayed pipes where duet has terminals.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which of fds 0, 1, 2 are terminals, and the terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsoleSpec {
    /// `on[n]`: fd n is a terminal and gets the workload's pty.
    pub on: [bool; 3],
    /// Rows and columns to give the new pty.
    pub size: (u16, u16),
}

impl ConsoleSpec {
    /// Looks at this process's fds 0-2; `None` when none is a terminal.
    pub fn detect() -> Option<ConsoleSpec> {
        // SAFETY: isatty only inspects the fd.
        let on = [0, 1, 2].map(|fd| unsafe { libc::isatty(fd) } == 1);
        if !on.iter().any(|&t| t) {
            return None;
        }
        let fd = on.iter().position(|&t| t).expect("one is a tty") as i32;
        Some(ConsoleSpec {
            on,
            size: window_size(fd).unwrap_or((24, 80)),
        })
    }

    /// The fd the pty's output is copied to: stdout if it is a terminal,
    /// else stderr, else the terminal on stdin.
    fn output_fd(&self) -> i32 {
        if self.on[1] {
            1
        } else if self.on[2] {
            2
        } else {
            0
        }
    }
}

fn window_size(fd: i32) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; TIOCGWINSZ writes one.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: ioctl writes into the winsize we own.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

fn set_window_size(fd: i32, (rows, cols): (u16, u16)) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: ioctl reads the winsize we own.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// Write end of the self-pipe that SIGWINCH pokes, or -1.
static WINCH_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_winch(_: libc::c_int) {
    let fd = WINCH_PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; one byte from a static.
        unsafe { libc::write(fd, b"w".as_ptr().cast(), 1) };
    }
}

/// The caller's terminal modes, restored on drop.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: i32) -> Option<RawMode> {
        // SAFETY: termios is plain data filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr/tcsetattr on fd 0 with termios structs we own.
        unsafe {
            if libc::tcgetattr(fd, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(fd, libc::TCSADRAIN, &t) != 0 {
                return None;
            }
            Some(RawMode { saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the modes saved from the same fd.
        unsafe { libc::tcsetattr(0, libc::TCSADRAIN, &self.saved) };
    }
}

/// Copies between duet's terminal and the workload's pty master until the
/// workload's side of the pty is closed (the container is gone).
pub struct Relay {
    thread: Option<JoinHandle<()>>,
    stop_w: OwnedFd,
    _raw: Option<RawMode>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// write(2) of all of `buf`, waiting while a non-blocking fd is full.
pub(crate) fn write_all(fd: i32, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: writes from a buffer we own.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            buf = &buf[n as usize..];
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: poll on one pollfd we own.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
            _ => return false,
        }
    }
    true
}

impl Relay {
    /// Starts relaying for `master` as described by `spec`.
    pub fn start(master: OwnedFd, spec: ConsoleSpec) -> io::Result<Relay> {
        let (stop_r, stop_w) = pipe()?;
        // Only a foreground duet owns the keyboard: a background job that
        // changed the terminal's modes or read it would be stopped (SIGTTOU,
        // SIGTTIN) and would steal input from the shell. In the background
        // the workload still gets its pty, for its output only. A stdin
        // that is no terminal (`duet exec -it` fed from a pipe) is relayed as is.
        // SAFETY: isatty, tcgetpgrp and getpgrp only read process state.
        let foreground =
            spec.on[0] && unsafe { libc::isatty(0) == 0 || libc::tcgetpgrp(0) == libc::getpgrp() };
        let spec = ConsoleSpec {
            on: [foreground, spec.on[1], spec.on[2]],
            ..spec
        };
        let raw = if spec.on[0] { RawMode::enter(0) } else { None };
        let (winch_r, winch_w) = pipe()?;
        if spec.on[0] {
            WINCH_PIPE.store(winch_w.as_raw_fd(), Ordering::SeqCst);
            // SAFETY: a zeroed sigaction with a handler that only calls write(2).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_winch as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(libc::SIGWINCH, &sa, std::ptr::null_mut());
            }
        }
        let out = spec.output_fd();
        let thread = std::thread::Builder::new()
            .name("duet-console".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                relay_loop(&master, spec, out, &stop_r, &winch_r);
                WINCH_PIPE.store(-1, Ordering::SeqCst);
                drop(winch_w);
            })?;
        Ok(Relay {
            thread: Some(thread),
            stop_w,
            _raw: raw,
        })
    }

    /// Waits (up to `grace`) for the pty's remaining output to be copied,
    /// then stops the relay and restores the terminal.
    pub fn finish(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            // SAFETY: one byte into our own pipe.
            unsafe { libc::write(self.stop_w.as_raw_fd(), b"s".as_ptr().cast(), 1) };
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            // SAFETY: one byte into our own pipe.
            unsafe { libc::write(self.stop_w.as_raw_fd(), b"s".as_ptr().cast(), 1) };
            let _ = t.join();
        }
    }
}

fn relay_loop(master: &OwnedFd, spec: ConsoleSpec, out: i32, stop: &OwnedFd, winch: &OwnedFd) {
    let m = master.as_raw_fd();
    let mut stdin_open = spec.on[0];
    let mut buf = [0u8; 16 * 1024];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: m,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: winch.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on pollfds we own.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[0].revents != 0 {
            // SAFETY: reads into a buffer we own.
            let n = unsafe { libc::read(m, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                if !write_all(out, &buf[..n as usize]) {
                    return;
                }
            } else if n == 0
                || !matches!(
                    io::Error::last_os_error().raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN)
                )
            {
                // EIO: every holder of the workload's side has closed it.
                return;
            }
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[2].revents != 0 {
            let mut b = [0u8; 64];
            // SAFETY: drains our own pipe into a local buffer.
            while unsafe { libc::read(winch.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) } > 0 {}
            if let Some(size) = window_size(0) {
                set_window_size(m, size);
            }
        }
        if fds[3].revents != 0 {
            // SAFETY: reads into a buffer we own.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                if !write_all(m, &buf[..n as usize]) {
                    return;
                }
            } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                stdin_open = false;
            }
        }
    }
}

/// Child side, after pivot_root and setsid: opens a pty in the container's
/// devpts, makes it the controlling terminal, puts it on the fds `spec`
/// names and returns the master fd (raw, for SCM_RIGHTS). No allocation.
pub fn open_in_child(spec: &ConsoleSpec) -> Result<i32, i32> {
    let errno = crate::capabilities::errno;
    // SAFETY: raw syscalls on fds this function opens, with a static path
    // and integer/struct arguments it owns.
    unsafe {
        let m = libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if m < 0 {
            return Err(errno());
        }
        let fail = |e: i32| {
            libc::close(m);
            Err(e)
        };
        let unlock: libc::c_int = 0;
        if libc::ioctl(m, libc::TIOCSPTLCK, &unlock) != 0 {
            return fail(errno());
        }
        let s = libc::ioctl(m, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
        if s < 0 {
            return fail(errno());
        }
        set_window_size(s, spec.size);
        if libc::ioctl(s, libc::TIOCSCTTY, 0) != 0 {
            let e = errno();
            libc::close(s);
            return fail(e);
        }
        for fd in 0..3 {
            if spec.on[fd as usize] && libc::dup2(s, fd) < 0 {
                let e = errno();
                libc::close(s);
                return fail(e);
            }
        }
        if s > 2 {
            libc::close(s);
        }
        Ok(m)
    }
}
