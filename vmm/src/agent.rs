//! `duet exec` / `duet kill` for a running microVM, host side: talks to
//! the guest agent (duet-init's `agent`) through the VMM's virtio-vsock
//! device, whose host side is the Unix socket [`SOCKET`] in the instance
//! directory (hybrid vsock, see [`crate::devices::virtio::vsock`]).
//!
//! [`exec`] connects, sends `CONNECT <AGENT_PORT>`, waits for `OK`, sends
//! the request and relays the CLI's stdio as frames
//! (`duet_shared::agent_abi`) until the exit frame. With `tty` and a
//! terminal on stdin, the terminal is put in raw mode for the exec's
//! length and its size is sent at the start and on every SIGWINCH.
//!
//! No tokio: one poll(2) loop over the socket, stdin and a SIGWINCH pipe
//! is the whole relay.

use crate::VmmError;
use duet_shared::agent_abi::{self, Decoder, Frame, ProtocolError, Reply, Request, AGENT_PORT};
use duet_shared::runtime::{ExecRequest, WorkloadExit};
use duet_shared::InstanceDir;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The agent socket's file name in the instance directory.
pub const SOCKET: &str = "agent.sock";

/// How long [`exec`] and [`kill`] retry while the guest does not accept
/// the connection yet (still booting, agent not listening).
pub const AGENT_WAIT: Duration = Duration::from_secs(15);

/// Removes the socket file when the run ends.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds and listens on `path` (a stale socket file from a killed run is
/// replaced). Returns the listening descriptor and the guard that removes
/// the file.
pub fn bind_listener(path: &Path) -> Result<(OwnedFd, SocketFile), VmmError> {
    let err = |source| VmmError::AgentSocket {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path).map_err(err)?
        }
        _ => {}
    }
    let l = UnixListener::bind(path).map_err(err)?;
    let file = SocketFile(path.to_path_buf());
    // Only duet's own user (root) may exec into the instance.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(err)?;
    Ok((OwnedFd::from(l), file))
}

/// Errors of [`exec`] and [`kill`]; each names the instance.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No VMM listens for the instance.
    #[error("instance {id} is not running (no live agent socket at {})", path.display())]
    NotRunning {
        /// Instance id.
        id: String,
        /// The socket looked for.
        path: PathBuf,
    },
    /// The VMM is there but the guest agent never accepted.
    #[error(
        "instance {id}: the guest agent did not accept a connection within {}s \
         (the guest may still be booting, or its duet-init runs no agent)",
        AGENT_WAIT.as_secs()
    )]
    NoAgent {
        /// Instance id.
        id: String,
    },
    /// The agent refused the request.
    #[error("instance {id}: {message}")]
    Refused {
        /// Instance id.
        id: String,
        /// The agent's message.
        message: String,
    },
    /// The other side broke the protocol.
    #[error("instance {id}: bad answer from the guest agent")]
    Protocol {
        /// Instance id.
        id: String,
        /// What was wrong.
        #[source]
        source: ProtocolError,
    },
    /// The connection failed.
    #[error("instance {id}: talking to the guest agent")]
    Io {
        /// Instance id.
        id: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent closed the connection before the exit status.
    #[error("instance {id}: the guest agent closed the connection before the command's exit status (did the VM stop?)")]
    Lost {
        /// Instance id.
        id: String,
    },
}

/// A connection to the guest agent, past the hybrid-vsock handshake.
struct Conn {
    id: String,
    stream: UnixStream,
    dec: Decoder,
}

impl Conn {
    fn io(&self, source: std::io::Error) -> AgentError {
        AgentError::Io {
            id: self.id.clone(),
            source,
        }
    }

    fn proto(&self, source: ProtocolError) -> AgentError {
        AgentError::Protocol {
            id: self.id.clone(),
            source,
        }
    }

    /// Reads until a line is complete; None at EOF first.
    fn line(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(l) = self.dec.take_line().map_err(|e| self.proto(e))? {
                return Ok(Some(l));
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => self.dec.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    /// Sends `req` and reads the agent's reply.
    fn request(&mut self, req: &Request) -> Result<(), AgentError> {
        self.request_then(req, None)
    }

    /// Sends `req` (and `frame` right after it) and reads the agent's reply.
    fn request_then(&mut self, req: &Request, frame: Option<&Frame>) -> Result<(), AgentError> {
        let mut msg = agent_abi::encode_line(req);
        if let Some(f) = frame {
            msg.extend(agent_abi::encode_frame(f));
        }
        self.stream.write_all(&msg).map_err(|e| self.io(e))?;
        let Some(line) = self.line()? else {
            return Err(AgentError::Lost {
                id: self.id.clone(),
            });
        };
        match serde_json::from_slice::<Reply>(&line) {
            Ok(Reply::Ok) => Ok(()),
            Ok(Reply::Error(message)) => Err(AgentError::Refused {
                id: self.id.clone(),
                message,
            }),
            Err(e) => Err(self.proto(ProtocolError::BadMessage(e.to_string()))),
        }
    }
}

/// Connects to the agent of the instance in `dir` (retrying while the guest
/// does not accept yet, up to [`AGENT_WAIT`]).
fn connect(dir: &InstanceDir) -> Result<Conn, AgentError> {
    connect_path(dir.id(), &dir.path().join(SOCKET), AGENT_WAIT)
}

fn connect_path(id: &str, path: &Path, wait: Duration) -> Result<Conn, AgentError> {
    connect_port(id, path, AGENT_PORT, wait)
}

/// A stream to guest vsock `port` through the instance's hybrid-vsock
/// socket at `path`, past the `CONNECT`/`OK` handshake (retrying while the
/// guest does not accept yet, up to `wait`). The warm-start hand-over
/// ([`crate::runtime::templates`]) uses it beside the agent.
pub fn open_port(
    id: &str,
    path: &Path,
    port: u32,
    wait: Duration,
) -> Result<UnixStream, AgentError> {
    let c = connect_port(id, path, port, wait)?;
    if c.dec.buffered() != 0 {
        // The guest spoke first: nothing on these ports does.
        return Err(AgentError::Protocol {
            id: id.to_string(),
            source: ProtocolError::BadMessage("bytes before the request".into()),
        });
    }
    Ok(c.stream)
}

fn connect_port(id: &str, path: &Path, port: u32, wait: Duration) -> Result<Conn, AgentError> {
    let deadline = Instant::now() + wait;
    // Short retries first (a restored guest accepts within milliseconds),
    // then at most every 200 ms (a booting one takes seconds).
    let mut pause = Duration::from_millis(2);
    loop {
        let stream = match UnixStream::connect(path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(AgentError::NotRunning {
                    id: id.to_string(),
                    path: path.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(AgentError::Io {
                    id: id.to_string(),
                    source,
                })
            }
        };
        let mut c = Conn {
            id: id.to_string(),
            stream,
            dec: Decoder::new(),
        };
        c.stream
            .set_read_timeout(Some(wait.max(Duration::from_secs(1))))
            .map_err(|e| c.io(e))?;
        c.stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .map_err(|e| c.io(e))?;
        // Reset by the guest (nobody listens yet) or closed by the device: retry.
        let answered = match c.line() {
            Ok(Some(l)) => l.starts_with(b"OK "),
            Ok(None) => false,
            Err(AgentError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                false
            }
            Err(e) => return Err(e),
        };
        if answered {
            c.stream.set_read_timeout(None).map_err(|e| c.io(e))?;
            return Ok(c);
        }
        if Instant::now() >= deadline {
            return Err(AgentError::NoAgent { id: id.to_string() });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Sends `signal` to the workload of the instance in `dir`.
pub fn kill(dir: &InstanceDir, signal: i32) -> Result<(), AgentError> {
    let mut c = connect(dir)?;
    c.request(&Request::Kill { signal })
}

/// As [`kill`], waiting at most `wait` for the agent to answer.
pub fn kill_within(dir: &InstanceDir, signal: i32, wait: Duration) -> Result<(), AgentError> {
    let mut c = connect_path(dir.id(), &dir.path().join(SOCKET), wait)?;
    c.request(&Request::Kill { signal })
}

/// As [`kill_within`], on the agent socket at `path` (an OCI container's
/// directory rather than a duet instance's).
pub fn kill_path(id: &str, path: &Path, signal: i32, wait: Duration) -> Result<(), AgentError> {
    let mut c = connect_path(id, path, wait)?;
    c.request(&Request::Kill { signal })
}

/// Gives the guest of `dir` the network identity `update` (a clone restored
/// from a snapshot), waiting at most `wait` for its agent.
pub fn renumber(
    dir: &InstanceDir,
    update: &agent_abi::NetworkUpdate,
    wait: Duration,
) -> Result<(), AgentError> {
    let mut c = connect_path(dir.id(), &dir.path().join(SOCKET), wait)?;
    c.request(&Request::Network(update.clone()))
}

/// Where an exec's output goes and its input comes from.
pub struct ExecIo<'a> {
    /// Read for the command's stdin (with `interactive`).
    pub stdin: Option<RawFd>,
    /// The command's stdout.
    pub stdout: &'a mut dyn Write,
    /// The command's stderr.
    pub stderr: &'a mut dyn Write,
    /// A terminal whose size the command's pty follows (with `tty`).
    pub terminal: Option<RawFd>,
}

/// Runs `req` in the instance in `dir` with duet's own stdio; returns how
/// the command ended.
pub fn exec(dir: &InstanceDir, req: &ExecRequest) -> Result<WorkloadExit, AgentError> {
    // SAFETY: isatty on the standard descriptors.
    let stdin_tty = unsafe { libc::isatty(0) } == 1;
    let _raw = (req.tty && stdin_tty).then(|| RawMode::enter(0)).flatten();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let io = ExecIo {
        stdin: req.interactive.then_some(0),
        stdout: &mut out,
        stderr: &mut err,
        terminal: (req.tty && stdin_tty).then_some(0),
    };
    exec_with(dir.id(), &dir.path().join(SOCKET), req, io)
}

/// [`exec`] on the agent socket at `path` with the given stdio.
pub fn exec_with(
    id: &str,
    path: &Path,
    req: &ExecRequest,
    io: ExecIo<'_>,
) -> Result<WorkloadExit, AgentError> {
    let mut c = connect_path(id, path, AGENT_WAIT)?;
    // With a tty the terminal's size follows the request at once (0 x 0:
    // none), so the command starts with it.
    let size = match (req.tty, io.terminal.and_then(window_size)) {
        (true, Some((rows, cols))) => Some(Frame::Resize { rows, cols }),
        (true, None) => Some(Frame::Resize { rows: 0, cols: 0 }),
        (false, _) => None,
    };
    c.request_then(&Request::Exec(req.clone()), size.as_ref())?;
    relay(&mut c, io)
}

/// The SIGWINCH handler's pipe (write end), -1 when none.
static WINCH_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_winch(_: libc::c_int) {
    let fd = WINCH_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; one byte from a static.
        unsafe { libc::write(fd, [0u8].as_ptr().cast(), 1) };
    }
}

fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills a winsize.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0).then_some((ws.ws_row, ws.ws_col))
}

fn relay(c: &mut Conn, io: ExecIo<'_>) -> Result<WorkloadExit, AgentError> {
    // SIGWINCH -> a byte on a pipe, polled below.
    let winch = match io.terminal {
        Some(_) => {
            let mut fds = [0; 2];
            // SAFETY: pipe2 writes two descriptors.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == 0 {
                WINCH_FD.store(fds[1], Ordering::Relaxed);
                // SAFETY: installs a handler that only calls write(2).
                unsafe {
                    libc::signal(libc::SIGWINCH, on_winch as *const () as libc::sighandler_t)
                };
                // A resize between the request and the handler still
                // counts: the loop sends the size once more.
                on_winch(libc::SIGWINCH);
                Some(fds)
            } else {
                None
            }
        }
        None => None,
    };
    let result = relay_loop(c, io, winch.map(|f| f[0]));
    if let Some(fds) = winch {
        // SAFETY: restore the default and close our pipe.
        unsafe {
            libc::signal(libc::SIGWINCH, libc::SIG_DFL);
            WINCH_FD.store(-1, Ordering::Relaxed);
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
    result
}

/// Sends what `out` holds without blocking; drops what was sent.
fn flush_nb(c: &Conn, out: &mut Vec<u8>) -> Result<(), AgentError> {
    while !out.is_empty() {
        // SAFETY: sends from a valid buffer on our socket; no SIGPIPE.
        let n = unsafe {
            libc::send(
                c.stream.as_raw_fd(),
                out.as_ptr().cast(),
                out.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock => Ok(()),
                std::io::ErrorKind::Interrupted => continue,
                _ => Err(c.io(e)),
            };
        }
        out.drain(..n as usize);
    }
    Ok(())
}

/// Writes all of `d` to the command's output, waiting out a full
/// non-blocking pipe (an engine's pipes are often O_NONBLOCK: a Go
/// program's are) instead of dropping what did not fit; a reader that is
/// gone ends the writing.
fn write_out(w: &mut dyn Write, mut d: &[u8]) {
    while !d.is_empty() {
        match w.write(d) {
            Ok(0) => return,
            Ok(n) => d = &d[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(_) => return,
        }
    }
    let _ = w.flush();
}

/// Input buffered for the guest at most before stdin is no longer read.
const OUT_HIGH_WATER: usize = 1 << 20;

fn relay_loop(
    c: &mut Conn,
    io: ExecIo<'_>,
    winch: Option<RawFd>,
) -> Result<WorkloadExit, AgentError> {
    let mut stdin = io.stdin;
    let mut buf = vec![0u8; agent_abi::MAX_FRAME];
    // Never block on a write to the guest: it may be blocked writing output
    // to us, and only our reading frees it.
    let mut out: Vec<u8> = Vec::new();
    loop {
        while let Some(f) = c.dec.take_frame().map_err(|e| c.proto(e))? {
            match f {
                Frame::Stdout(d) => write_out(io.stdout, &d),
                Frame::Stderr(d) => write_out(io.stderr, &d),
                Frame::Exit(e) => return Ok(e),
                _ => return Err(c.proto(ProtocolError::BadFrame(0))),
            }
        }
        flush_nb(c, &mut out)?;
        let mut fds = [
            libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events: libc::POLLIN | if out.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            },
            libc::pollfd {
                fd: match stdin {
                    Some(fd) if out.len() < OUT_HIGH_WATER => fd,
                    _ => -1,
                },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: winch.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: a valid pollfd array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(c.io(e));
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(AgentError::Lost { id: c.id.clone() });
                }
                Ok(k) => c.dec.push(&buf[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(c.io(e)),
            }
        }
        if fds[1].revents != 0 {
            let fd = stdin.expect("polled");
            // SAFETY: reads into a valid buffer from our stdin.
            let k = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            let err = std::io::Error::last_os_error().kind();
            let frame = if k > 0 {
                Frame::Stdin(buf[..k as usize].to_vec())
            } else if k == 0
                || !matches!(
                    err,
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                )
            {
                stdin = None;
                Frame::StdinEof
            } else {
                // (A non-blocking stdin with nothing to read is not its end.)
                continue;
            };
            out.extend(agent_abi::encode_frame(&frame));
        }
        if fds[2].revents != 0 {
            let mut b = [0u8; 64];
            // SAFETY: drains our nonblocking pipe.
            unsafe { libc::read(winch.expect("polled"), b.as_mut_ptr().cast(), b.len()) };
            if let Some((rows, cols)) = io.terminal.and_then(window_size) {
                out.extend(agent_abi::encode_frame(&Frame::Resize { rows, cols }));
            }
        }
    }
}

/// The size of duet's own terminal (stdin's, else stdout's), if it has one.
pub fn terminal_size() -> Option<(u16, u16)> {
    [0, 1].into_iter().find_map(nonzero_window_size)
}

/// The size of terminal `fd`, unless it has none (0x0: a pty nobody sized).
fn nonzero_window_size(fd: RawFd) -> Option<(u16, u16)> {
    window_size(fd).filter(|&(rows, cols)| rows > 0 && cols > 0)
}

/// How often a [`ConsoleFollower`] looks at its terminal's size.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Keeps a microVM workload's console at the size of terminal `fd` (duet's
/// own with `duet run -t`, or an engine's pty): looked at every
/// [`FOLLOW_EVERY`] and sent to the guest agent ([`Request::ConsoleSize`])
/// whenever it changed, until dropped. Looked at rather than waited on
/// with SIGWINCH: a shim resizes an engine's pty from its master side,
/// which signals nothing to the process holding the slave.
pub struct ConsoleFollower {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ConsoleFollower {
    /// Follows `fd` for the instance `id` whose agent listens at `socket`;
    /// `sent` is the size the guest has already (its workload config's).
    pub fn start(id: &str, socket: &Path, fd: RawFd, sent: Option<(u16, u16)>) -> ConsoleFollower {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, id, socket) = (stop.clone(), id.to_string(), socket.to_path_buf());
        let _ = std::thread::Builder::new()
            .name("duet-tty-size".into())
            .spawn(move || {
                let mut last = sent;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(FOLLOW_EVERY);
                    let now = nonzero_window_size(fd);
                    let Some((rows, cols)) = now.filter(|_| now != last) else {
                        continue;
                    };
                    // A guest still booting has no agent yet: tried again
                    // at the next look. One that does not answer within a
                    // second is given up on until then.
                    let sent =
                        connect_path(&id, &socket, Duration::from_millis(500)).and_then(|mut c| {
                            let _ = c.stream.set_read_timeout(Some(Duration::from_secs(1)));
                            c.request(&Request::ConsoleSize { rows, cols })
                        });
                    match sent {
                        Ok(()) => last = now,
                        // An agent that says no (no console, or an older
                        // init without ConsoleSize) will not say yes later.
                        Err(AgentError::Refused { .. }) => break,
                        Err(_) => {}
                    }
                }
            });
        ConsoleFollower { stop }
    }
}

impl Drop for ConsoleFollower {
    fn drop(&mut self) {
        // Not joined: the thread ends at its next look, and the run's end
        // does not wait for it.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The terminal in raw mode until dropped.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts terminal `fd` in raw mode; None if it is not a terminal.
    pub fn enter(fd: RawFd) -> Option<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        // SAFETY: cfmakeraw edits our copy; tcsetattr applies it.
        unsafe {
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
                return None;
            }
        }
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings saved in `enter`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests;
