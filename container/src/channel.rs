//! Typed messages between duet and the container's init before it execs.
//!
//! A `SOCK_SEQPACKET` socketpair with `SOCK_CLOEXEC`: every message arrives
//! whole, and when the child's execve succeeds its end closes, so the parent
//! reads end-of-file: "the workload is running". Messages are fixed-size
//! little arrays encoded without allocation, because the child side runs
//! between clone and execve.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Bytes in one encoded message.
pub const MSG_LEN: usize = 40;

/// What the child tells the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildMsg {
    /// Setup done; execve comes next. `CLOCK_MONOTONIC` ns of the phases.
    Stamps {
        /// Overlay root mounted.
        rootfs_ready: u64,
        /// pivot_root done.
        pivot_done: u64,
        /// Immediately before execve.
        ready: u64,
    },
    /// Setup step number `step` of the plan failed with `errno`.
    StepFailed {
        /// Index into the child plan's steps.
        step: u32,
        /// errno.
        errno: i32,
    },
    /// execve of the workload failed.
    ExecFailed {
        /// errno of the last attempt (ENOENT: not found).
        errno: i32,
        /// The file exists but its ELF interpreter or `#!` interpreter does not.
        interpreter_missing: bool,
    },
    /// Setup done (the instance is created); the child waits for
    /// [`ParentMsg::Start`]. `CLOCK_MONOTONIC` ns of the phases.
    Created {
        /// Overlay root mounted.
        rootfs_ready: u64,
        /// pivot_root done.
        pivot_done: u64,
    },
    /// The workload's terminal is ready; the pty master travels with this
    /// message as SCM_RIGHTS ([`Channel::send_with_fd`]).
    Console,
    /// `duet exec`: the command's process was forked into the container's
    /// pid namespace as duet's child; its pidfd travels with this message.
    Forked {
        /// Its host pid.
        pid: i32,
    },
}

/// What the parent tells the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentMsg {
    /// The child is in its cgroup: go on with the setup.
    Go,
    /// The instance is started: exec the workload.
    Start,
}

const TAG_STAMPS: u32 = 1;
const TAG_STEP_FAILED: u32 = 2;
const TAG_EXEC_FAILED: u32 = 3;
const TAG_GO: u32 = 4;
const TAG_CONSOLE: u32 = 5;
const TAG_CREATED: u32 = 6;
const TAG_START: u32 = 7;
const TAG_FORKED: u32 = 8;

fn put_u32(b: &mut [u8; MSG_LEN], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8; MSG_LEN], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl ChildMsg {
    /// Fixed-size encoding.
    pub fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        match *self {
            ChildMsg::Stamps {
                rootfs_ready,
                pivot_done,
                ready,
            } => {
                put_u32(&mut b, 0, TAG_STAMPS);
                put_u64(&mut b, 8, rootfs_ready);
                put_u64(&mut b, 16, pivot_done);
                put_u64(&mut b, 24, ready);
            }
            ChildMsg::StepFailed { step, errno } => {
                put_u32(&mut b, 0, TAG_STEP_FAILED);
                put_u32(&mut b, 4, step);
                put_u32(&mut b, 8, errno as u32);
            }
            ChildMsg::ExecFailed {
                errno,
                interpreter_missing,
            } => {
                put_u32(&mut b, 0, TAG_EXEC_FAILED);
                put_u32(&mut b, 4, errno as u32);
                put_u32(&mut b, 8, u32::from(interpreter_missing));
            }
            ChildMsg::Console => put_u32(&mut b, 0, TAG_CONSOLE),
            ChildMsg::Created {
                rootfs_ready,
                pivot_done,
            } => {
                put_u32(&mut b, 0, TAG_CREATED);
                put_u64(&mut b, 8, rootfs_ready);
                put_u64(&mut b, 16, pivot_done);
            }
            ChildMsg::Forked { pid } => {
                put_u32(&mut b, 0, TAG_FORKED);
                put_u32(&mut b, 4, pid as u32);
            }
        }
        b
    }

    /// Decodes a message; `None` for anything malformed.
    pub fn decode(b: &[u8]) -> Option<ChildMsg> {
        if b.len() != MSG_LEN {
            return None;
        }
        match get_u32(b, 0) {
            TAG_STAMPS => Some(ChildMsg::Stamps {
                rootfs_ready: get_u64(b, 8),
                pivot_done: get_u64(b, 16),
                ready: get_u64(b, 24),
            }),
            TAG_STEP_FAILED => Some(ChildMsg::StepFailed {
                step: get_u32(b, 4),
                errno: get_u32(b, 8) as i32,
            }),
            TAG_EXEC_FAILED => Some(ChildMsg::ExecFailed {
                errno: get_u32(b, 4) as i32,
                interpreter_missing: get_u32(b, 8) != 0,
            }),
            TAG_CONSOLE => Some(ChildMsg::Console),
            TAG_CREATED => Some(ChildMsg::Created {
                rootfs_ready: get_u64(b, 8),
                pivot_done: get_u64(b, 16),
            }),
            TAG_FORKED => Some(ChildMsg::Forked {
                pid: get_u32(b, 4) as i32,
            }),
            _ => None,
        }
    }
}

impl ParentMsg {
    /// Fixed-size encoding.
    pub fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        match self {
            ParentMsg::Go => put_u32(&mut b, 0, TAG_GO),
            ParentMsg::Start => put_u32(&mut b, 0, TAG_START),
        }
        b
    }

    /// Decodes a message; `None` for anything malformed.
    pub fn decode(b: &[u8]) -> Option<ParentMsg> {
        if b.len() != MSG_LEN {
            return None;
        }
        match get_u32(b, 0) {
            TAG_GO => Some(ParentMsg::Go),
            TAG_START => Some(ParentMsg::Start),
            _ => None,
        }
    }
}

/// One end of the parent/child socketpair.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair: (parent end, child end), both close-on-exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two new fds into the array we own.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Sends one message; returns the errno on failure. No allocation.
    pub fn send_raw(&self, b: &[u8; MSG_LEN]) -> Result<(), i32> {
        loop {
            // SAFETY: sends MSG_LEN bytes from a buffer we own; MSG_NOSIGNAL
            // turns a closed peer into EPIPE instead of SIGPIPE.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    b.as_ptr().cast(),
                    MSG_LEN,
                    libc::MSG_NOSIGNAL,
                )
            };
            if n == MSG_LEN as isize {
                return Ok(());
            }
            let e = crate::capabilities::errno();
            if n < 0 && e == libc::EINTR {
                continue;
            }
            return Err(if n < 0 { e } else { libc::EPROTO });
        }
    }

    /// Receives one message: `Ok(None)` at end-of-file. No allocation.
    pub fn recv_raw(&self, b: &mut [u8; MSG_LEN]) -> Result<Option<usize>, i32> {
        loop {
            // SAFETY: receives at most MSG_LEN bytes into a buffer we own.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), b.as_mut_ptr().cast(), MSG_LEN, 0) };
            if n > 0 {
                return Ok(Some(n as usize));
            }
            if n == 0 {
                return Ok(None);
            }
            let e = crate::capabilities::errno();
            if e != libc::EINTR {
                return Err(e);
            }
        }
    }

    /// Sends one message with `fd` attached (SCM_RIGHTS). No allocation.
    pub fn send_with_fd(&self, b: &[u8; MSG_LEN], fd: i32) -> Result<(), i32> {
        send_fd(self.fd.as_raw_fd(), b, fd)
    }

    /// Parent side: next message from the child, `None` at end-of-file.
    pub fn recv_child(&self) -> io::Result<Option<ChildMsg>> {
        Ok(self.recv_child_with_fd()?.map(|(m, _)| m))
    }

    /// Parent side: next message and the fd sent with it, if any (received
    /// close-on-exec). `None` at end-of-file.
    pub fn recv_child_with_fd(&self) -> io::Result<Option<(ChildMsg, Option<OwnedFd>)>> {
        let mut b = [0u8; MSG_LEN];
        let mut cbuf = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: MSG_LEN,
        };
        // SAFETY: msghdr is plain data pointing at locals that outlive the
        // call; the kernel writes at most msg_controllen bytes of cmsgs.
        let (n, fd) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&cbuf);
            let n = loop {
                let n = libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
                if n >= 0 {
                    break n as usize;
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            };
            let mut fd = None;
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
                    // Only the first fd is ours to keep; a second is closed by its OwnedFd.
                    let owned = OwnedFd::from_raw_fd(raw);
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            (n, fd)
        };
        if n == 0 {
            return Ok(None);
        }
        match ChildMsg::decode(&b[..n]) {
            Some(m) => Ok(Some((m, fd))),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed message from container init",
            )),
        }
    }

    /// Raw fd (for the child, which must not drop the `OwnedFd` before exec).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// Sends `b` with `fd` attached (SCM_RIGHTS) on the socket `sock`. No allocation.
pub fn send_fd(sock: i32, b: &[u8], fd: i32) -> Result<(), i32> {
    // A cmsg buffer for one fd, aligned for cmsghdr.
    #[repr(C)]
    struct CmsgBuf {
        _align: [libc::cmsghdr; 0],
        bytes: [u8; 64],
    }
    let mut cbuf = CmsgBuf {
        _align: [],
        bytes: [0; 64],
    };
    let mut iov = libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    };
    // SAFETY: msghdr is plain data; every pointer in it points at locals
    // that outlive the sendmsg call, and CMSG_* stay inside `cbuf`.
    unsafe {
        let space = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize;
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.bytes.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        loop {
            let n = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
            if n == b.len() as isize {
                return Ok(());
            }
            let e = crate::capabilities::errno();
            if n < 0 && e == libc::EINTR {
                continue;
            }
            return Err(if n < 0 { e } else { libc::EPROTO });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            ChildMsg::Stamps {
                rootfs_ready: 1,
                pivot_done: u64::MAX,
                ready: 3,
            },
            ChildMsg::StepFailed {
                step: 7,
                errno: libc::ENOENT,
            },
            ChildMsg::ExecFailed {
                errno: libc::EACCES,
                interpreter_missing: true,
            },
            ChildMsg::Console,
            ChildMsg::Forked { pid: 4242 },
        ] {
            assert_eq!(ChildMsg::decode(&m.encode()), Some(m));
        }
        assert_eq!(
            ParentMsg::decode(&ParentMsg::Go.encode()),
            Some(ParentMsg::Go)
        );
        assert_eq!(ChildMsg::decode(&ParentMsg::Go.encode()), None);
        assert_eq!(ChildMsg::decode(&[1, 0, 0]), None);
    }

    #[test]
    fn pair_delivers_whole_messages_then_eof() {
        let (p, c) = Channel::pair().unwrap();
        let m = ChildMsg::StepFailed { step: 2, errno: 5 };
        c.send_raw(&m.encode()).unwrap();
        drop(c);
        assert_eq!(p.recv_child().unwrap(), Some(m));
        assert_eq!(p.recv_child().unwrap(), None);
        // The peer is gone: send reports EPIPE rather than raising SIGPIPE.
        assert_eq!(p.send_raw(&ParentMsg::Go.encode()), Err(libc::EPIPE));
    }

    #[test]
    fn an_fd_travels_with_a_message() {
        let (p, c) = Channel::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        c.send_with_fd(&ChildMsg::Console.encode(), f.as_raw_fd())
            .unwrap();
        let (m, fd) = p.recv_child_with_fd().unwrap().unwrap();
        assert_eq!(m, ChildMsg::Console);
        let fd = fd.expect("an fd came along");
        assert_ne!(fd.as_raw_fd(), f.as_raw_fd());
        // The received fd is close-on-exec.
        // SAFETY: fcntl F_GETFD on an fd we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
