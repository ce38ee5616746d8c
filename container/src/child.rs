//! The container's init between clone and execve.
//!
//! Runs in a copy of the parent's address space made by a fork-style clone3,
//! possibly while other parent threads held locks (the allocator's, stdio's):
//! so this code never allocates, never panics on purpose, never touches
//! Rust's stdio, and ends in execve or `_exit`. Everything it needs was
//! prepared by the parent in a [`ChildPlan`].

use crate::capabilities::errno;
use crate::channel::{Channel, ChildMsg, ParentMsg, MSG_LEN};
use crate::plan::{ChildPlan, Step};
use duet_shared::clock::monotonic_ns;
use std::ffi::CStr;

/// Exit status of an init whose setup failed (the parent reports the reason).
pub const SETUP_FAILED_STATUS: i32 = 125;
/// Exit status when the command was not found (as in shells).
pub const NOT_FOUND_STATUS: i32 = 127;
/// Exit status when the command was found but could not be executed.
pub const CANNOT_EXECUTE_STATUS: i32 = 126;

pub(crate) fn check(r: libc::c_int) -> Result<(), i32> {
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// mount(2) with an optional data string.
pub(crate) fn mount(
    source: &CStr,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<(), i32> {
    // SAFETY: every pointer is a NUL-terminated string we own or NULL.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), CStr::as_ptr),
            flags,
            data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    })
}

/// `struct ifreq` as far as SIOCGIFFLAGS/SIOCSIFFLAGS use it.
#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn loopback_up() -> Result<(), i32> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: the ioctls read/write an ifreq-sized struct we own.
    let r = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            -1
        } else {
            req.flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        }
    };
    let e = errno();
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    if r != 0 {
        return Err(e);
    }
    Ok(())
}

fn mask(path: &CStr) -> Result<(), i32> {
    match mount(c"dev/null", path, None, libc::MS_BIND, None) {
        Ok(()) => Ok(()),
        Err(libc::ENOENT) => Ok(()),
        // A directory: cover it with an empty read-only tmpfs.
        Err(libc::ENOTDIR) => mount(
            c"tmpfs",
            path,
            Some(c"tmpfs"),
            libc::MS_RDONLY,
            Some(c"size=0"),
        ),
        Err(e) => Err(e),
    }
}

fn read_only(path: &CStr) -> Result<(), i32> {
    match mount(path, path, None, libc::MS_BIND | libc::MS_REC, None) {
        Ok(()) => {}
        Err(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let flags = libc::MS_BIND
        | libc::MS_REMOUNT
        | libc::MS_RDONLY
        | libc::MS_REC
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC;
    mount(path, path, None, flags, None)
}

fn pivot_root() -> Result<(), i32> {
    // pivot_root(".", "."): the old root ends up stacked on the new one and is
    // detached right away (runc's trick; no temporary directory needed).
    // SAFETY: raw syscalls with static NUL-terminated strings.
    unsafe {
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
            return Err(errno());
        }
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
        check(libc::chdir(c"/".as_ptr()))
    }
}

struct Stamps {
    rootfs_ready: u64,
    pivot_done: u64,
}

fn run_step(step: &Step, plan: &ChildPlan, chan: &Channel, stamps: &mut Stamps) -> Result<(), i32> {
    match step {
        Step::MakeRootSlave => mount(c"none", c"/", None, libc::MS_REC | libc::MS_SLAVE, None),
        Step::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => mount(source, target, Some(fstype), *flags, data.as_deref()),
        // SAFETY: chdir with a NUL-terminated path we own.
        Step::Chdir(p) | Step::Workdir(p) => check(unsafe { libc::chdir(p.as_ptr()) }),
        // SAFETY: mkdir with a NUL-terminated path we own.
        Step::Mkdir(p, mode) => match check(unsafe { libc::mkdir(p.as_ptr(), *mode) }) {
            Err(libc::EEXIST) => Ok(()),
            r => r,
        },
        Step::CharDevice { path, major, minor } => {
            // SAFETY: mknod with a NUL-terminated path we own.
            check(unsafe {
                libc::mknod(
                    path.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(*major, *minor),
                )
            })
        }
        // SAFETY: symlink with NUL-terminated strings we own.
        Step::Symlink { target, link } => {
            match check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }) {
                Err(libc::EEXIST) => Ok(()),
                r => r,
            }
        }
        Step::Mask(p) => mask(p),
        Step::ReadOnly(p) => read_only(p),
        Step::StampRootfsReady => {
            stamps.rootfs_ready = monotonic_ns();
            Ok(())
        }
        Step::PivotRoot => pivot_root(),
        Step::StampPivotDone => {
            stamps.pivot_done = monotonic_ns();
            Ok(())
        }
        // SAFETY: sethostname reads len bytes of a string we own.
        Step::Hostname(h) => check(unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) }),
        Step::LoopbackUp => loopback_up(),
        Step::WaitForParent => {
            let mut b = [0u8; MSG_LEN];
            match chan.recv_raw(&mut b)? {
                Some(n) if ParentMsg::decode(&b[..n]) == Some(ParentMsg::Go) => Ok(()),
                // The parent went away or said something else: stop here.
                _ => Err(libc::ECANCELED),
            }
        }
        // SAFETY: unshare with a constant flag.
        Step::UnshareCgroupNamespace => check(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) }),
        Step::Umask(m) => {
            // SAFETY: umask cannot fail.
            unsafe { libc::umask(*m) };
            Ok(())
        }
        Step::DropCapabilities => plan.caps.apply(),
        Step::User { uid, gid, groups } => {
            // SAFETY: raw syscalls with integer arguments and an array the plan owns.
            unsafe {
                check(
                    libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr())
                        as libc::c_int,
                )?;
                check(libc::syscall(libc::SYS_setresgid, *gid, *gid, *gid) as libc::c_int)?;
                check(libc::syscall(libc::SYS_setresuid, *uid, *uid, *uid) as libc::c_int)
            }
        }
        // SAFETY: prctl with integer arguments.
        Step::NoNewPrivs => check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }),
        Step::Seccomp => crate::seccomp::install_all(&plan.seccomp),
        Step::AwaitStart => {
            chan.send_raw(
                &ChildMsg::Created {
                    rootfs_ready: stamps.rootfs_ready,
                    pivot_done: stamps.pivot_done,
                }
                .encode(),
            )?;
            let mut b = [0u8; MSG_LEN];
            match chan.recv_raw(&mut b)? {
                Some(n) if ParentMsg::decode(&b[..n]) == Some(ParentMsg::Start) => Ok(()),
                // duet deleted the instance (or went away) before starting it.
                _ => Err(libc::ECANCELED),
            }
        }
        // SAFETY: setsid has no arguments.
        Step::NewSession => match unsafe { libc::setsid() } {
            -1 => Err(errno()),
            _ => Ok(()),
        },
        Step::Console(spec) => {
            let master = crate::console::open_in_child(spec)?;
            let sent = chan.send_with_fd(&ChildMsg::Console.encode(), master);
            // SAFETY: closing the master we opened; duet holds its own copy now.
            unsafe { libc::close(master) };
            sent
        }
        Step::CloseInheritedFds => close_inherited_fds(),
        Step::JoinNamespaces {
            pidfd,
            flags,
            ns_files,
        } => join_namespaces(*pidfd, *flags, ns_files),
        Step::ForkIntoPidNamespace => fork_into_pid_namespace(chan, plan.outlives_parent),
        // SAFETY: prctl with integer arguments.
        Step::NotDumpable => check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }),
        Step::Stdio(fds) => {
            for (target, &fd) in fds.iter().enumerate() {
                // SAFETY: dup2 onto 0-2 of fds the parent opened for this child.
                if fd != target as i32 && unsafe { libc::dup2(fd, target as i32) } < 0 {
                    return Err(errno());
                }
            }
            Ok(())
        }
        Step::CloseOtherFds => close_other_fds(chan.raw_fd(), plan.keep_fd),
        Step::Oci(o) => {
            crate::child_oci::run(o, plan, chan, stamps.rootfs_ready, stamps.pivot_done)
        }
    }
}

/// setns into every namespace in `flags` of the process behind `pidfd` at
/// once (Linux 5.8+); on older kernels, which take no pidfd here (EINVAL),
/// one setns per open `/proc/PID/ns/*` file.
fn join_namespaces(
    pidfd: i32,
    flags: libc::c_int,
    ns_files: &[(i32, libc::c_int)],
) -> Result<(), i32> {
    if pidfd >= 0 {
        // SAFETY: setns on a pidfd the parent opened, with constant flags.
        match check(unsafe { libc::setns(pidfd, flags) }) {
            Err(libc::EINVAL) => {}
            r => return r,
        }
    }
    for &(fd, nstype) in ns_files {
        // SAFETY: setns on an open namespace file with its own type.
        check(unsafe { libc::setns(fd, nstype) })?;
    }
    Ok(())
}

/// Clones (CLONE_PARENT, so the new process is duet's child and duet can
/// wait for it) into the pid namespace joined before. The new process
/// returns `Ok` and goes on with the plan; this one sends duet the new
/// process's pidfd and exits.
fn fork_into_pid_namespace(chan: &Channel, outlives_parent: bool) -> Result<(), i32> {
    let mut pidfd: libc::c_int = -1;
    let args = crate::CloneArgs {
        flags: (libc::CLONE_PARENT | libc::CLONE_PIDFD) as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        // clone3 wants 0 with CLONE_PARENT: the child inherits our exit signal (SIGCHLD).
        exit_signal: 0,
        ..Default::default()
    };
    // SAFETY: fork-style clone3 (no new stack) of a single-threaded process;
    // the child goes on with the plan's steps, which never allocate.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const crate::CloneArgs,
            crate::CLONE_ARGS_SIZE_VER0,
        )
    };
    if r < 0 {
        return Err(errno());
    }
    if r == 0 {
        // The death signal is not inherited: if duet dies, so does this
        // command (unless it is an OCI `exec --detach`, left to the shim).
        if !outlives_parent {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        }
        return Ok(());
    }
    let sent = chan.send_with_fd(&ChildMsg::Forked { pid: r as i32 }.encode(), pidfd);
    // SAFETY: _exit ends this process without running destructors; the
    // pidfd closes with it (duet holds its own copy).
    unsafe { libc::_exit(if sent.is_ok() { 0 } else { SETUP_FAILED_STATUS }) }
}

/// Closes every fd above 2 except `keep` (the setup channel) and `also` (-1: none).
fn close_other_fds(keep: i32, also: i32) -> Result<(), i32> {
    let (a, b) = if also < 0 || also == keep {
        (keep, keep)
    } else {
        (keep.min(also), keep.max(also))
    };
    let ranges = [(3, a - 1), (a + 1, b - 1), (b + 1, i32::MAX)];
    for (lo, hi) in ranges {
        if lo > hi {
            continue;
        }
        // SAFETY: close_range with integer arguments.
        let r = unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi as u32, 0u32) };
        if r == 0 {
            continue;
        }
        // Kernels before 5.9 lack close_range: close one by one up to the fd limit.
        // SAFETY: getrlimit writes into a local.
        let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_cur.min(1 << 20) as i32
        } else {
            1 << 16
        };
        for fd in lo..hi.min(max - 1) + 1 {
            // SAFETY: closing a possibly unused fd only returns EBADF.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Marks every fd above 2 close-on-exec: the setup channel still works until
/// execve, and nothing else the caller of duet left open survives it.
fn close_inherited_fds() -> Result<(), i32> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.11 lack CLOSE_RANGE_CLOEXEC: set FD_CLOEXEC one by one
    // up to the fd limit (no allocation, so no /proc/self/fd listing here).
    // SAFETY: getrlimit writes into a local.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as i32
    } else {
        1 << 16
    };
    for fd in 3..max {
        // SAFETY: fcntl on a possibly closed fd only returns EBADF.
        unsafe {
            let f = libc::fcntl(fd, libc::F_GETFD);
            if f >= 0 && f & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, f | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// Resets what the parent's process state would otherwise leak into the workload.
fn reset_signals() {
    // SAFETY: plain libc calls on a zeroed sigset and default dispositions.
    unsafe {
        for sig in [
            libc::SIGPIPE,
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
        ] {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// execve of the workload, searching `plan.search_path` when argv\[0\] has
/// no `/`. Returns only on failure: (errno, interpreter_missing).
pub(crate) fn exec(plan: &ChildPlan) -> (i32, bool) {
    let try_one = |path: *const libc::c_char| -> (i32, bool) {
        // SAFETY: path, argv and envp are NUL-terminated strings / NULL-terminated arrays we own.
        unsafe { libc::execve(path, plan.argv_ptr(), plan.envp_ptr()) };
        let e = errno();
        // ENOENT for a file that exists: its ELF loader or #! interpreter is missing.
        // SAFETY: access with a NUL-terminated path.
        let exists = e == libc::ENOENT && unsafe { libc::access(path, libc::F_OK) } == 0;
        (e, exists)
    };
    search_command(plan, |path| match try_one(path) {
        (
            e @ (libc::EACCES
            | libc::ENOENT
            | libc::ENOTDIR
            | libc::ESTALE
            | libc::ENODEV
            | libc::ETIMEDOUT),
            false,
        ) => Err(e),
        other => Ok(other),
    })
    .unwrap_or_else(|e| (e, false))
}

/// Tries argv\[0\] as it is when it has a `/`, else each of the plan's
/// PATH directories joined with it, until `try_one` returns `Ok`. An `Err`
/// of EACCES is remembered (the shell's rule: "permission denied" beats
/// "not found"), any other `Err` means "try the next". No allocation.
pub(crate) fn search_command<R>(
    plan: &ChildPlan,
    mut try_one: impl FnMut(*const libc::c_char) -> Result<R, i32>,
) -> Result<R, i32> {
    let Some(search) = &plan.search_path else {
        return try_one(plan.argv[0].as_ptr());
    };
    let cmd = plan.argv[0].as_bytes();
    let mut buf = [0u8; 4096];
    let mut seen_eacces = false;
    for dir in search.as_bytes().split(|&b| b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let len = dir.len() + 1 + cmd.len();
        if len + 1 > buf.len() {
            continue;
        }
        buf[..dir.len()].copy_from_slice(dir);
        buf[dir.len()] = b'/';
        buf[dir.len() + 1..len].copy_from_slice(cmd);
        buf[len] = 0;
        match try_one(buf.as_ptr().cast()) {
            Ok(r) => return Ok(r),
            Err(libc::EACCES) => seen_eacces = true,
            Err(_) => {}
        }
    }
    Err(if seen_eacces {
        libc::EACCES
    } else {
        libc::ENOENT
    })
}

/// The container's init: set up, report, exec. Never returns.
pub fn child_main(plan: &ChildPlan, chan: &Channel) -> ! {
    if !plan.outlives_parent {
        // SAFETY: prctl with integer arguments; if duet dies, so does the container.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    }
    reset_signals();
    let mut stamps = Stamps {
        rootfs_ready: 0,
        pivot_done: 0,
    };
    for (i, step) in plan.steps.iter().enumerate() {
        if let Err(errno) = run_step(step, plan, chan, &mut stamps) {
            let _ = chan.send_raw(
                &ChildMsg::StepFailed {
                    step: i as u32,
                    errno,
                }
                .encode(),
            );
            // SAFETY: _exit ends the process without running destructors.
            unsafe { libc::_exit(SETUP_FAILED_STATUS) };
        }
    }
    let msg = ChildMsg::Stamps {
        rootfs_ready: stamps.rootfs_ready,
        pivot_done: stamps.pivot_done,
        ready: monotonic_ns(),
    };
    if chan.send_raw(&msg.encode()).is_err() && !plan.outlives_parent {
        // SAFETY: as above.
        unsafe { libc::_exit(SETUP_FAILED_STATUS) };
    }
    let (errno, interpreter_missing) = exec(plan);
    let _ = chan.send_raw(
        &ChildMsg::ExecFailed {
            errno,
            interpreter_missing,
        }
        .encode(),
    );
    let status = if errno == libc::ENOENT {
        NOT_FOUND_STATUS
    } else {
        CANNOT_EXECUTE_STATUS
    };
    // SAFETY: as above.
    unsafe { libc::_exit(status) }
}
