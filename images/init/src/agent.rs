//! The guest agent: `duet exec` and `duet kill` for a microVM.
//!
//! PID 1 forks it right after the workload (so it knows the workload's pid)
//! when the workload config asks for it ([`crate::config::GuestWorkload::agent`]).
//! It listens on vsock port `AGENT_PORT` (any CID) and forks one session
//! process per connection, so a slow or hostile session never blocks the
//! next; PID 1 keeps reaping orphans and reporting the workload's exit as
//! before. Protocol: `duet_shared::agent_abi`.
//!
//! An exec runs where the workload runs: the same root (PID 1 already
//! switched into it), the workload's environment with the request's
//! `KEY=VALUE`s over it, its working directory unless the request names
//! one, the same uid (root: duet's VM workloads have no user switch), its
//! cgroup when `pids_max` made one, in a session of its own. With `tty` the
//! command gets a pty from the guest's devpts as controlling terminal;
//! otherwise pipes (stdin /dev/null unless `interactive`). The session
//! relays stdin/stdout/stderr as frames, resizes the pty on request, and
//! ends with the exit status. A command that cannot be found exits 127, one
//! that cannot be executed 126, with the message on its stderr.

use crate::command;
use crate::config::GuestWorkload;
use duet_shared::agent_abi::{self, Decoder, Frame, Reply, Request};
use duet_shared::runtime::{ExecRequest, WorkloadExit};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// What a session needs to know about the workload.
#[derive(Debug, Clone)]
pub struct AgentContext {
    /// The workload's config (environment, workdir).
    pub workload: GuestWorkload,
    /// The workload's process (the target of `Kill`).
    pub workload_pid: i32,
    /// `cgroup.procs` of the workload's cgroup, if it has one.
    pub cgroup_procs: Option<String>,
}

/// How long a connection may take to send its request.
const REQUEST_TIMEOUT_S: libc::time_t = 10;
/// After the command exited, how long its output may still take to drain
/// (a background process holding the pipes would otherwise hold the exec).
const DRAIN_MS: i32 = 2000;

fn last_err(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A listening vsock stream socket on `port` (any CID).
pub fn listen_vsock(port: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: socket() with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_err("socket(AF_VSOCK)"));
    }
    // SAFETY: a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zeroed is a valid start.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    addr.svm_port = port;
    // SAFETY: a valid sockaddr_vm of its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(last_err(&format!("bind vsock port {port}")));
    }
    // SAFETY: listen on our socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        return Err(last_err("listen"));
    }
    Ok(fd)
}

/// The next connection on `listener`; waits through EINTR, and sleeps
/// 100 ms after other errors (EMFILE and the like) rather than spin.
pub fn accept(listener: &OwnedFd) -> OwnedFd {
    loop {
        // SAFETY: accept4 on our listener; no peer address wanted.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a new descriptor that only we hold.
            return unsafe { OwnedFd::from_raw_fd(fd) };
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Accepts connections forever, one forked session each. Never returns.
pub fn serve(listener: OwnedFd, ctx: &AgentContext) -> ! {
    // Sessions are reaped by the kernel (no zombies in this process).
    // SAFETY: SIG_IGN for SIGCHLD runs no code of ours.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    loop {
        let conn = accept(&listener);
        // SAFETY: this process is single-threaded; the child only serves
        // the connection and _exits.
        match unsafe { libc::fork() } {
            0 => {
                drop(listener);
                // SAFETY: back to the default, so the session can wait for its command.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                serve_connection(conn, ctx);
                // SAFETY: ends the session process without PID 1's destructors.
                unsafe { libc::_exit(0) }
            }
            _ => drop(conn),
        }
    }
}

fn write_all(fd: RawFd, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: writes from a valid buffer to a descriptor we hold.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads once; Ok(0) at end of stream (EIO from a pty master counts as that).
fn read_some(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: reads into a valid buffer from a descriptor we hold.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EIO) => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Serves one connection: reads the request, runs it, answers.
pub fn serve_connection(conn: OwnedFd, ctx: &AgentContext) {
    let fd = conn.as_raw_fd();
    let tv = libc::timeval {
        tv_sec: REQUEST_TIMEOUT_S,
        tv_usec: 0,
    };
    // SAFETY: a valid timeval of its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 16 << 10];
    let req: Request = loop {
        match dec.take_message() {
            Ok(Some(r)) => break r,
            Ok(None) => {}
            Err(e) => {
                let _ = write_all(fd, &agent_abi::encode_line(&Reply::Error(e.to_string())));
                return;
            }
        }
        match read_some(fd, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => dec.push(&buf[..n]),
        }
    };
    // With a tty the host sends the terminal's size right after the
    // request, so the command starts with it (no race with a later resize).
    let mut size = None;
    if let Request::Exec(r) = &req {
        if r.tty {
            let first = loop {
                match dec.take_frame() {
                    Ok(Some(f)) => break Some(f),
                    Ok(None) => {}
                    Err(_) => break None,
                }
                match read_some(fd, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => dec.push(&buf[..n]),
                }
            };
            match first {
                Some(Frame::Resize { rows, cols }) => size = Some((rows, cols)),
                _ => {
                    let msg = "expected the terminal size after a tty exec request";
                    let _ = write_all(fd, &agent_abi::encode_line(&Reply::Error(msg.into())));
                    return;
                }
            }
        }
    }
    let none = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: as above; no timeout from now on.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&none as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    match req {
        Request::Kill { signal } => {
            // SAFETY: kill with plain integers.
            let reply = if unsafe { libc::kill(ctx.workload_pid, signal) } == 0 {
                Reply::Ok
            } else {
                Reply::Error(format!(
                    "cannot send signal {signal} to the workload (pid {}): {}",
                    ctx.workload_pid,
                    std::io::Error::last_os_error()
                ))
            };
            let _ = write_all(fd, &agent_abi::encode_line(&reply));
        }
        Request::Exec(r) => exec(fd, dec, &r, size, ctx),
        Request::Network(u) => {
            let reply = match renumber(&u) {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::Error(e),
            };
            let _ = write_all(fd, &agent_abi::encode_line(&reply));
        }
        Request::ConsoleSize { rows, cols } => {
            let reply = match console_size(rows, cols) {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::Error(format!("cannot resize the console: {e}")),
            };
            let _ = write_all(fd, &agent_abi::encode_line(&reply));
        }
    }
}

/// [`Request::ConsoleSize`]: the console's window size. The agent keeps
/// the console as fd 0 from PID 1 (out of its session: TIOCSWINSZ needs no
/// controlling terminal); the kernel signals the console's foreground
/// group, the workload.
fn console_size(rows: u16, cols: u16) -> std::io::Result<()> {
    // SAFETY: isatty on a descriptor number.
    if unsafe { libc::isatty(0) } != 1 {
        return Err(std::io::Error::other("the agent has no console"));
    }
    set_size(0, rows, cols)
}

/// [`Request::Network`]: `eth0`'s new MAC, address and route, then the
/// new `/etc/resolv.conf` and `/etc/hosts` written over the old ones.
fn renumber(u: &agent_abi::NetworkUpdate) -> Result<(), String> {
    let net = crate::config::GuestNetwork {
        address: u.address,
        prefix: u.prefix,
        gateway: u.gateway,
        mac: Some(u.mac),
    };
    crate::net::renumber(&net).map_err(|e| e.to_string())?;
    let files: Vec<_> = [
        ("/etc/resolv.conf", &u.resolv_conf),
        ("/etc/hosts", &u.hosts),
    ]
    .into_iter()
    .map(|(path, content)| crate::files::GuestFile {
        path: path.into(),
        content: content.clone().into_bytes(),
        read_only: false,
    })
    .collect();
    crate::files::validate(&files)?;
    crate::files::rewrite(&files).map_err(|e| e.to_string())
}

/// The environment of an exec: the workload's, then the request's over it.
pub fn merged_env(base: &[String], extra: &[String]) -> Vec<String> {
    let key = |e: &str| {
        e.split_once('=')
            .map_or(e.to_string(), |(k, _)| k.to_string())
    };
    let mut out: Vec<String> = base.to_vec();
    for e in extra {
        let k = key(e);
        out.retain(|o| key(o) != k);
        out.push(e.clone());
    }
    out
}

/// Pipe with both ends close-on-exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_err("pipe2"));
    }
    // SAFETY: two new descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets a terminal's window size (the kernel sends SIGWINCH to its
/// foreground group): an exec's pty, or the console.
pub fn set_size(master: RawFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on our pty master.
    if unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(last_err("TIOCSWINSZ"));
    }
    Ok(())
}

/// A pty pair (master, slave), both close-on-exec.
pub fn pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two descriptors; no name, termios or size given.
    if unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    } != 0
    {
        return Err(last_err("openpty (is devpts mounted on /dev/pts?)"));
    }
    for fd in [m, s] {
        // SAFETY: fcntl on descriptors we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: as above.
    Ok(unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) })
}

fn cstrings(v: &[String]) -> Option<Vec<CString>> {
    v.iter().map(|s| CString::new(s.as_bytes()).ok()).collect()
}

/// The command's stdio: what it gets as 0, 1, 2 and what the session keeps.
struct Plumbing {
    /// Descriptors the child dups to 0, 1 and 2.
    child: [RawFd; 3],
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    master: Option<RawFd>,
    /// The child's ends, closed in the session once it forked.
    keep: Vec<OwnedFd>,
}

/// The descriptors of a started command.
struct Started {
    pid: i32,
    /// Where its stdin goes (pipe or pty master), if anywhere.
    stdin: Option<OwnedFd>,
    /// Its stdout (pipe or pty master).
    stdout: OwnedFd,
    /// Its stderr (pipe; none with a pty).
    stderr: Option<OwnedFd>,
    /// The pty master, for resizes.
    master: Option<RawFd>,
}

fn start(r: &ExecRequest, size: Option<(u16, u16)>, ctx: &AgentContext) -> Result<Started, String> {
    let w = &ctx.workload;
    if r.command.is_empty() || r.command[0].is_empty() {
        return Err("no command given".into());
    }
    let env = merged_env(&w.env, &r.env);
    let workdir = r.workdir.clone().unwrap_or_else(|| w.workdir.clone());
    if !std::path::Path::new(&workdir).is_dir() {
        return Err(format!(
            "working directory {workdir} does not exist in the instance"
        ));
    }
    let argv = cstrings(&r.command).ok_or("the command contains a NUL byte")?;
    let envp = cstrings(&env).ok_or("the environment contains a NUL byte")?;
    let cwd = CString::new(workdir.clone()).map_err(|_| "the workdir contains a NUL byte")?;
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .map(str::to_string);
    let procs = ctx.cgroup_procs.clone();
    let Plumbing {
        child: child_fds,
        stdin,
        stdout,
        stderr,
        master,
        keep: _keep,
    } = if r.tty {
        let (m, s) = pty().map_err(|e| e.to_string())?;
        if let Some((rows, cols)) = size.filter(|&(r, c)| r > 0 && c > 0) {
            let _ = set_size(m.as_raw_fd(), rows, cols);
        }
        let m2 = m.try_clone().map_err(|e| e.to_string())?;
        let sfd = s.as_raw_fd();
        let mraw = m.as_raw_fd();
        Plumbing {
            child: [sfd, sfd, sfd],
            stdin: Some(m2),
            stdout: m,
            stderr: None,
            master: Some(mraw),
            keep: vec![s],
        }
    } else {
        let (out_r, out_w) = pipe().map_err(|e| e.to_string())?;
        let (err_r, err_w) = pipe().map_err(|e| e.to_string())?;
        let (in_r, in_w) = if r.interactive {
            let (a, b) = pipe().map_err(|e| e.to_string())?;
            (a, Some(b))
        } else {
            let null = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
            (OwnedFd::from(null), None)
        };
        Plumbing {
            child: [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
            stdin: in_w,
            stdout: out_r,
            stderr: Some(err_r),
            master: None,
            keep: vec![in_r, out_w, err_w],
        }
    };
    // SAFETY: the session process is single-threaded; the child only sets
    // up its descriptors and execs (or _exits).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY (whole block): plain system calls on descriptors this
        // child holds; it ends in execve or _exit.
        unsafe {
            libc::setsid();
            if r.tty {
                libc::ioctl(child_fds[0], libc::TIOCSCTTY, 0);
            }
            for (i, &fd) in child_fds.iter().enumerate() {
                libc::dup2(fd, i as i32);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            for sig in [libc::SIGPIPE, libc::SIGTTOU, libc::SIGCHLD] {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        if let Some(p) = &procs {
            let _ = std::fs::write(p, std::process::id().to_string());
        }
        if let Some(u) = &r.user {
            let groups: Vec<libc::gid_t> = u.additional_gids.clone();
            // SAFETY: plain id changes in the forked child; groups first,
            // while it may still change them.
            let failed = unsafe {
                libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setresgid(u.gid, u.gid, u.gid) != 0
                    || libc::setresuid(u.uid, u.uid, u.uid) != 0
            };
            if failed {
                child_msg(&format!(
                    "cannot switch to user {}:{}: {}",
                    u.uid,
                    u.gid,
                    std::io::Error::last_os_error()
                ));
                // SAFETY: ends the forked child.
                unsafe { libc::_exit(command::EXIT_NOT_EXECUTABLE as i32) }
            }
        }
        // SAFETY: chdir to a valid C string.
        if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
            child_msg(&format!(
                "cannot change to workdir {workdir}: {}",
                std::io::Error::last_os_error()
            ));
            // SAFETY: ends the forked child.
            unsafe { libc::_exit(command::EXIT_NOT_EXECUTABLE as i32) }
        }
        let file = match command::resolve(&r.command[0], path_var.as_deref()) {
            Ok(f) => f,
            Err(e) => {
                child_msg(&e.to_string());
                // SAFETY: ends the forked child.
                unsafe { libc::_exit(e.exit_code() as i32) }
            }
        };
        let file = CString::new(file.into_os_string().into_encoded_bytes()).expect("no NUL");
        let mut av: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        av.push(std::ptr::null());
        let mut ev: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
        ev.push(std::ptr::null());
        // SAFETY: NULL-terminated arrays of valid C strings.
        unsafe { libc::execve(file.as_ptr(), av.as_ptr(), ev.as_ptr()) };
        let e = std::io::Error::last_os_error();
        let code = if e.raw_os_error() == Some(libc::ENOENT) {
            child_msg(&format!(
                "cannot run {}: its interpreter (ELF loader or #! line) is missing",
                r.command[0]
            ));
            command::EXIT_NOT_FOUND
        } else {
            child_msg(&format!("cannot execute {}: {e}", file.to_string_lossy()));
            command::EXIT_NOT_EXECUTABLE
        };
        // SAFETY: ends the forked child.
        unsafe { libc::_exit(code as i32) }
    }
    Ok(Started {
        pid,
        stdin,
        stdout,
        stderr,
        master,
    })
}

/// A message on the forked command's stderr (fd 2 itself: no std lock or
/// output capture inherited from the parent's threads).
fn child_msg(msg: &str) {
    let line = format!("duet-init: {msg}\n");
    let _ = write_all(2, line.as_bytes());
}

fn exit_of(status: i32) -> WorkloadExit {
    if libc::WIFSIGNALED(status) {
        WorkloadExit::Signal(libc::WTERMSIG(status))
    } else {
        WorkloadExit::Code(libc::WEXITSTATUS(status))
    }
}

fn exec(
    conn: RawFd,
    mut dec: Decoder,
    r: &ExecRequest,
    size: Option<(u16, u16)>,
    ctx: &AgentContext,
) {
    let started = match start(r, size, ctx) {
        Ok(s) => s,
        Err(msg) => {
            let _ = write_all(conn, &agent_abi::encode_line(&Reply::Error(msg)));
            return;
        }
    };
    if write_all(conn, &agent_abi::encode_line(&Reply::Ok)).is_err() {
        // SAFETY: kill our own command's process group.
        unsafe { libc::kill(-started.pid, libc::SIGKILL) };
        return;
    }
    let exit = relay(conn, &mut dec, started);
    if let Some(e) = exit {
        let _ = write_all(conn, &agent_abi::encode_frame(&Frame::Exit(e)));
    }
    // SAFETY: shutdown on our socket; the host reads EOF after the exit frame.
    unsafe { libc::shutdown(conn, libc::SHUT_RDWR) };
}

/// Moves data until the command ended and its output drained; returns its
/// exit, or None if the host went away (the command was killed then).
fn relay(conn: RawFd, dec: &mut Decoder, s: Started) -> Option<WorkloadExit> {
    // SAFETY: pidfd_open of our own child.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, s.pid, 0) } as RawFd;
    let pidfd = (pidfd >= 0).then(|| {
        // SAFETY: a new descriptor.
        unsafe { OwnedFd::from_raw_fd(pidfd) }
    });
    let mut stdin = s.stdin;
    let mut stdin_pending: Vec<u8> = Vec::new();
    let mut stdin_eof = false;
    let mut out = Some(s.stdout);
    let mut err = s.stderr;
    let mut status: Option<i32> = None;
    let mut host_open = true;
    let mut buf = vec![0u8; agent_abi::MAX_FRAME];
    let wait_nohang = |status: &mut Option<i32>| {
        let mut st = 0;
        // SAFETY: waitpid on our child with a valid out pointer.
        if status.is_none() && unsafe { libc::waitpid(s.pid, &mut st, libc::WNOHANG) } == s.pid {
            *status = Some(st);
        }
    };
    loop {
        wait_nohang(&mut status);
        if status.is_some() && out.is_none() && err.is_none() {
            break;
        }
        let want_stdin_write = stdin.is_some() && !stdin_pending.is_empty();
        let mut fds = vec![
            libc::pollfd {
                fd: if host_open && stdin_pending.len() < (1 << 20) {
                    conn
                } else {
                    -1
                },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: out.as_ref().map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: err.as_ref().map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if want_stdin_write {
                    stdin.as_ref().map_or(-1, |f| f.as_raw_fd())
                } else {
                    -1
                },
                events: libc::POLLOUT,
                revents: 0,
            },
            libc::pollfd {
                fd: match (&pidfd, status) {
                    (Some(p), None) => p.as_raw_fd(),
                    _ => -1,
                },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Without a pidfd, look for the exit now and then; once it exited,
        // the output gets DRAIN_MS to end.
        let timeout = if status.is_some() {
            DRAIN_MS
        } else if pidfd.is_none() {
            100
        } else {
            -1
        };
        // SAFETY: a valid pollfd array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            continue;
        }
        if n == 0 && status.is_some() {
            break; // output held open by something else: report anyway
        }
        if fds[0].revents != 0 {
            match read_some(conn, &mut buf) {
                Ok(0) | Err(_) => host_open = false,
                Ok(k) => dec.push(&buf[..k]),
            }
            loop {
                match dec.take_frame() {
                    Ok(Some(Frame::Stdin(d))) => {
                        if stdin.is_some() && !stdin_eof {
                            stdin_pending.extend_from_slice(&d)
                        }
                    }
                    Ok(Some(Frame::StdinEof)) => stdin_eof = true,
                    Ok(Some(Frame::Resize { rows, cols })) => {
                        if let Some(m) = s.master {
                            let _ = set_size(m, rows, cols);
                        }
                    }
                    Ok(Some(_)) | Err(_) => host_open = false,
                    Ok(None) => break,
                }
            }
            if !host_open {
                // The host is gone: nobody waits for this command any more.
                // SAFETY: kill our command's process group (it called setsid).
                unsafe { libc::kill(-s.pid, libc::SIGKILL) };
                let mut st = 0;
                // SAFETY: reap it.
                unsafe { libc::waitpid(s.pid, &mut st, 0) };
                return None;
            }
        }
        if fds[3].revents != 0 {
            if let Some(f) = &stdin {
                // SAFETY: writes from a valid buffer to our pipe / pty.
                let k = unsafe {
                    libc::write(
                        f.as_raw_fd(),
                        stdin_pending.as_ptr().cast(),
                        stdin_pending.len().min(4096),
                    )
                };
                if k > 0 {
                    stdin_pending.drain(..k as usize);
                } else if k < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    stdin = None;
                    stdin_pending.clear();
                }
            }
        }
        if stdin_eof && stdin_pending.is_empty() && s.master.is_none() {
            stdin = None; // closes the pipe: the command reads EOF
        }
        for (i, stream) in [(1usize, &mut out), (2, &mut err)] {
            if fds[i].revents == 0 {
                continue;
            }
            let Some(f) = stream.as_ref() else { continue };
            match read_some(f.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => *stream = None,
                Ok(k) => {
                    let frame = if i == 1 {
                        Frame::Stdout(buf[..k].to_vec())
                    } else {
                        Frame::Stderr(buf[..k].to_vec())
                    };
                    if write_all(conn, &agent_abi::encode_frame(&frame)).is_err() {
                        host_open = false;
                    }
                }
            }
        }
    }
    let st = match status {
        Some(st) => st,
        None => {
            let mut st = 0;
            // SAFETY: waitpid on our child.
            unsafe { libc::waitpid(s.pid, &mut st, 0) };
            st
        }
    };
    Some(exit_of(st))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_env_overrides_the_workloads() {
        let base = vec!["PATH=/bin".to_string(), "A=1".into(), "B=2".into()];
        let extra = vec!["A=x=y".to_string(), "C=3".into()];
        assert_eq!(
            merged_env(&base, &extra),
            vec!["PATH=/bin", "B=2", "A=x=y", "C=3"]
        );
    }
}
