//! A workload's stdio when duet's own are terminals, for `duet run` and
//! `duet exec` alike.
//!
//! A terminal is never handed to a workload: it could type into the caller's
//! shell (TIOCSTI), change the terminal's modes or read what the user types
//! after duet exits. With `-t` the workload gets a new pty of its own
//! ([`crate::console`]); without it, as in Docker, every fd of duet's that is
//! a terminal is replaced by a pipe that duet relays ([`PipeRelay`]), and
//! fds that are no terminals (pipes, files) are passed through unchanged.

use crate::console::ConsoleSpec;
use crate::plan::ChildStdio;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A pipe: (read end, write end), both close-on-exec.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl on an fd we own (our end of a pipe, never an inherited one).
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn isatty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the fd.
    unsafe { libc::isatty(fd) == 1 }
}

/// What the command's stdio will be, and duet's side of it.
pub(crate) struct StdioSetup {
    pub(crate) plan: ChildStdio,
    /// Ends only the command needs: closed in duet once the helper is forked.
    pub(crate) child_ends: Vec<OwnedFd>,
    /// duet's ends of the pipes: (from, to) pairs to copy.
    pub(crate) copies: Vec<(i32, OwnedFd, Direction)>,
    /// `-t`: how to relay the pty.
    pub(crate) console: Option<ConsoleSpec>,
}

/// Which way a relayed pipe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// duet's fd -> the command's stdin pipe.
    In,
    /// The command's pipe -> duet's fd.
    Out,
}

impl StdioSetup {
    /// `duet run`'s workload: with `tty` a pty on the fds that are
    /// terminals (on all three when none is: `run -d -t`, whose output goes to
    /// the monitor's log); without, pipes for the terminals, stdin included.
    pub(crate) fn for_run(tty: bool) -> io::Result<StdioSetup> {
        if !tty {
            return StdioSetup::new(false, true);
        }
        let spec = ConsoleSpec::detect().unwrap_or(ConsoleSpec {
            on: [true; 3],
            size: (24, 80),
        });
        Ok(StdioSetup {
            plan: ChildStdio::Console(spec),
            child_ends: Vec::new(),
            copies: Vec::new(),
            console: Some(spec),
        })
    }

    /// `duet exec`'s command: `tty` gives it a pty on all three fds;
    /// without `interactive` its stdin is /dev/null.
    pub(crate) fn new(tty: bool, interactive: bool) -> io::Result<StdioSetup> {
        if tty {
            let size = ConsoleSpec::detect().map_or((24, 80), |c| c.size);
            let pty = ConsoleSpec {
                on: [true; 3],
                size,
            };
            return Ok(StdioSetup {
                plan: ChildStdio::Console(pty),
                child_ends: Vec::new(),
                copies: Vec::new(),
                console: Some(ConsoleSpec {
                    on: [interactive, true, true],
                    size,
                }),
            });
        }
        let mut s = StdioSetup {
            plan: ChildStdio::Fds([0, 1, 2]),
            child_ends: Vec::new(),
            copies: Vec::new(),
            console: None,
        };
        let mut fds = [0, 1, 2];
        // SAFETY: tcgetpgrp and getpgrp only read process state.
        let foreground = unsafe { libc::tcgetpgrp(0) == libc::getpgrp() };
        if !interactive || (isatty(0) && !foreground) {
            // A background job reading the terminal would be stopped: no input then.
            let null = crate::exec::open_cloexec(Path::new("/dev/null"), libc::O_RDONLY)?;
            fds[0] = null.as_raw_fd();
            s.child_ends.push(null);
        } else if isatty(0) {
            let (r, w) = pipe()?;
            set_nonblocking(&w);
            fds[0] = r.as_raw_fd();
            s.child_ends.push(r);
            s.copies.push((0, w, Direction::In));
        }
        for (fd, slot) in [(1, 1usize), (2, 2)] {
            if isatty(fd) {
                let (r, w) = pipe()?;
                fds[slot] = w.as_raw_fd();
                s.child_ends.push(w);
                s.copies.push((fd, r, Direction::Out));
            }
        }
        s.plan = ChildStdio::Fds(fds);
        Ok(s)
    }
}

/// Copies between duet's terminal fds and the command's pipes, one thread
/// per pipe, until end-of-file or [`PipeRelay::finish`].
pub(crate) struct PipeRelay {
    outputs: Vec<JoinHandle<()>>,
    input: Option<JoinHandle<()>>,
    stop_w: OwnedFd,
}

/// Waits until `fd` is ready for `events` or `stop` is readable; false on stop.
fn wait_ready(fd: i32, events: libc::c_short, stop: i32) -> bool {
    loop {
        let mut fds = [
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on pollfds we own.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return r > 0 && fds[1].revents == 0;
    }
}

/// Copies `from` to `to` until end-of-file, an error or `stop`.
fn copy_until_eof(from: i32, to: i32, stop: i32) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if !wait_ready(from, libc::POLLIN, stop) {
            return;
        }
        // SAFETY: reads into a buffer we own.
        let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return;
        }
        if n < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN) => continue,
                _ => return,
            }
        }
        let mut rest = &buf[..n as usize];
        while !rest.is_empty() {
            // SAFETY: writes from a buffer we own.
            let w = unsafe { libc::write(to, rest.as_ptr().cast(), rest.len()) };
            if w > 0 {
                rest = &rest[w as usize..];
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                // Only our own pipe ends are non-blocking: wait for room, or stop.
                Some(libc::EAGAIN) if wait_ready(to, libc::POLLOUT, stop) => {}
                _ => return,
            }
        }
    }
}

impl PipeRelay {
    pub(crate) fn start(copies: Vec<(i32, OwnedFd, Direction)>) -> io::Result<Option<PipeRelay>> {
        if copies.is_empty() {
            return Ok(None);
        }
        let (stop_r, stop_w) = pipe()?;
        let stop_r = Arc::new(stop_r);
        let mut relay = PipeRelay {
            outputs: Vec::new(),
            input: None,
            stop_w,
        };
        for (fd, ours, dir) in copies {
            let stop = Arc::clone(&stop_r);
            let t = std::thread::Builder::new()
                .name("duet-exec-relay".into())
                .stack_size(128 * 1024)
                .spawn(move || match dir {
                    // Dropping our write end when stdin ends gives the command end-of-file.
                    Direction::In => copy_until_eof(fd, ours.as_raw_fd(), stop.as_raw_fd()),
                    Direction::Out => copy_until_eof(ours.as_raw_fd(), fd, stop.as_raw_fd()),
                })?;
            match dir {
                Direction::In => relay.input = Some(t),
                Direction::Out => relay.outputs.push(t),
            }
        }
        Ok(Some(relay))
    }

    /// Lets the outputs drain (up to `grace`: a background process of the
    /// command may hold them open), then stops every copy.
    pub(crate) fn finish(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.outputs.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.stop();
    }

    fn stop(&mut self) {
        // SAFETY: one byte into our own pipe; it stays unread, so every thread sees it.
        unsafe { libc::write(self.stop_w.as_raw_fd(), b"s".as_ptr().cast(), 1) };
        for t in self.outputs.drain(..).chain(self.input.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for PipeRelay {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_copies_until_end_of_file() {
        let (from_r, from_w) = pipe().unwrap();
        let (to_r, to_w) = pipe().unwrap();
        let relay = PipeRelay::start(vec![(to_w.as_raw_fd(), from_r, Direction::Out)])
            .unwrap()
            .unwrap();
        let mut w = std::fs::File::from(from_w);
        io::Write::write_all(&mut w, b"hello").unwrap();
        drop(w);
        relay.finish(Duration::from_secs(5));
        drop(to_w);
        let mut got = String::new();
        io::Read::read_to_string(&mut std::fs::File::from(to_r), &mut got).unwrap();
        assert_eq!(got, "hello");
    }
}
