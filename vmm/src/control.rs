//! The VMM's control socket, `<instance>/vmm.sock` ([`SOCKET`]): how `duet
//! snapshot` reaches a running VM. Like the agent socket it is bound by
//! root outside the jail (mode 0600) and the VMM gets the listening fd, so
//! only root on the host can connect, and the jail needs no path to it.
//!
//! One request per connection: a JSON line (`{"op":"snapshot"}`) with the
//! open destination file attached (SCM_RIGHTS: the caller opens it as
//! itself, the jailed VMM never opens a host path); one JSON line back,
//! `{"ok":{...}}` with [`WriteStats`] or `{"error":"..."}`.
//!
//! Hand-written rather than a gRPC or HTTP API (Firecracker's): one
//! request kind, one local client, and the fd passing that Unix sockets do
//! directly.

use crate::snapshot::WriteStats;
use crate::vm::SnapshotHandle;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// Name of the control socket in the instance directory.
pub const SOCKET: &str = "vmm.sock";
/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 << 10;
/// How long a client may take to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(5);

/// A request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Pause, write a snapshot into the attached file, go on.
    Snapshot,
}

/// The answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Done.
    Ok {
        /// Bytes of RAM written.
        memory_bytes_written: u64,
        /// Bytes of writable disks copied.
        disk_bytes_written: u64,
        /// The snapshot's size (with holes).
        file_len: u64,
        /// How long the guest was paused, in microseconds.
        paused_us: u64,
    },
    /// Refused or failed.
    Error(String),
}

/// The server thread of a running VM.
pub struct ControlServer {
    stop: EventFd,
    handle: JoinHandle<()>,
}

impl ControlServer {
    /// Serves `listener` for `vm` until stopped; `user` goes into every snapshot.
    pub fn spawn(
        listener: OwnedFd,
        vm: SnapshotHandle,
        user: serde_json::Value,
    ) -> std::io::Result<ControlServer> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_rx = stop.try_clone()?;
        let listener = UnixListener::from(listener);
        listener.set_nonblocking(true)?;
        let handle = std::thread::Builder::new()
            .name("duet-vmm-control".into())
            .stack_size(crate::vcpu::VMM_THREAD_STACK)
            .spawn(move || serve(&listener, &stop_rx, &vm, &user))?;
        Ok(ControlServer { stop, handle })
    }

    /// Stops and joins the thread.
    pub fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.handle.join();
    }
}

fn serve(listener: &UnixListener, stop: &EventFd, vm: &SnapshotHandle, user: &serde_json::Value) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        if let Ok((conn, _)) = listener.accept() {
            let reply = handle(&conn, vm, user).unwrap_or_else(Reply::Error);
            if let Ok(mut line) = serde_json::to_vec(&reply) {
                line.push(b'\n');
                let _ = (&conn).write_all(&line);
            }
        }
    }
}

/// Reads the request line and the fd that came with it.
fn handle(
    conn: &UnixStream,
    vm: &SnapshotHandle,
    user: &serde_json::Value,
) -> Result<Reply, String> {
    conn.set_nonblocking(false).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(REQUEST_WAIT))
        .map_err(|e| e.to_string())?;
    let (first, fd) =
        recv_with_fd(conn.as_raw_fd()).map_err(|e| format!("reading the request: {e}"))?;
    let mut line = first;
    if !line.contains(&b'\n') {
        let mut rest = Vec::new();
        BufReader::new(conn)
            .take(MAX_REQUEST)
            .read_until(b'\n', &mut rest)
            .map_err(|e| format!("reading the request: {e}"))?;
        line.extend(rest);
    }
    let req: Request =
        serde_json::from_slice(line.trim_ascii()).map_err(|e| format!("bad request: {e}"))?;
    match req {
        Request::Snapshot => {
            let fd = fd.ok_or("a snapshot request needs the destination file attached")?;
            let t = std::time::Instant::now();
            let s: WriteStats = vm.snapshot(std::fs::File::from(fd), user.clone())?;
            Ok(Reply::Ok {
                memory_bytes_written: s.memory_bytes_written,
                disk_bytes_written: s.disk_bytes_written,
                file_len: s.file_len,
                paused_us: t.elapsed().as_micros() as u64,
            })
        }
    }
}

/// One recvmsg: the bytes and at most one fd (any others are closed).
fn recv_with_fd(sock: RawFd) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; 4096];
    let mut cmsg = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.len();
    // SAFETY: msg points at live buffers of the lengths given.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    let mut fd = None;
    // SAFETY: walks the control buffer the kernel filled, with libc's macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count =
                    ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    let f = OwnedFd::from_raw_fd(data.add(i).read_unaligned());
                    if fd.is_none() {
                        fd = Some(f);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((buf, fd))
}

/// Sends `line` with `fd` attached.
fn send_with_fd(sock: RawFd, line: &[u8], fd: RawFd) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: line.as_ptr() as *mut libc::c_void,
        iov_len: line.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    let mut cmsg = vec![0u8; space];
    // SAFETY: as in recv_with_fd.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer holds exactly one cmsg with one fd.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        (libc::CMSG_DATA(c) as *mut RawFd).write_unaligned(fd);
    }
    // SAFETY: msg points at live buffers.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if (n as usize) < line.len() {
        // A request line is a few dozen bytes: a stream socket takes it whole.
        return Err(std::io::Error::other("the request was sent only in part"));
    }
    Ok(())
}

/// Errors of [`snapshot`].
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens.
    #[error("no VMM listens at {} (is the instance a running VM?)", path.display())]
    NotRunning {
        /// The socket.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("talking to the VMM at {}", path.display())]
    Io {
        /// The socket.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM refused or failed.
    #[error("{0}")]
    Refused(String),
}

/// Asks the VMM listening at `socket` for a snapshot into `out`.
pub fn snapshot(socket: &Path, out: &std::fs::File) -> Result<Reply, ControlError> {
    let conn = UnixStream::connect(socket).map_err(|source| ControlError::NotRunning {
        path: socket.to_path_buf(),
        source,
    })?;
    let io = |source| ControlError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut line = serde_json::to_vec(&Request::Snapshot).expect("serialisable");
    line.push(b'\n');
    send_with_fd(conn.as_raw_fd(), &line, out.as_raw_fd()).map_err(io)?;
    let mut answer = Vec::new();
    BufReader::new(&conn)
        .take(MAX_REQUEST)
        .read_until(b'\n', &mut answer)
        .map_err(io)?;
    if answer.is_empty() {
        return Err(ControlError::Refused(
            "the VMM closed the connection without an answer (did the VM end?)".into(),
        ));
    }
    match serde_json::from_slice::<Reply>(answer.trim_ascii()) {
        Ok(Reply::Error(e)) => Err(ControlError::Refused(e)),
        Ok(ok) => Ok(ok),
        Err(e) => Err(ControlError::Refused(format!(
            "unreadable answer from the VMM: {e}"
        ))),
    }
}

/// Binds the control socket (as [`crate::agent::bind_listener`] does the agent's).
pub fn bind_listener(path: &Path) -> Result<(OwnedFd, crate::agent::SocketFile), crate::VmmError> {
    crate::agent::bind_listener(path)
}
