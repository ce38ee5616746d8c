//! Attempts that should fail under isolation, each made so that it cannot
//! change the host even when it succeeds (the probe also runs on the host, as root).
//!
//! Every attempt runs in a forked child: a seccomp filter that kills on a
//! syscall (SIGSYS) then costs the child, not the probe, and the mount attempt's
//! private mount namespace dies with the child. The child only makes raw
//! syscalls on data prepared before the fork and reports `(step, errno)` over a pipe.

use serde::{Deserialize, Serialize};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptResult {
    /// The permission check passed: from here the operation is possible.
    Allowed,
    /// The kernel (capabilities, LSM, seccomp, read-only mount) refused it.
    Refused,
    /// Not possible for a reason other than permission (no such file, no kernel support).
    Unavailable,
    /// The probe could not make the attempt (fork or pipe failed).
    Error,
}

/// The outcome of one attempt, with the syscall that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptOutcome {
    /// Verdict.
    pub result: AttemptResult,
    /// The syscall whose result decided the verdict (e.g. `init_module`, `unshare`).
    pub step: String,
    /// errno of that syscall, if it failed.
    pub errno: Option<i32>,
    /// Symbolic errno (`EPERM`) or `killed by signal N`.
    pub detail: String,
}

/// The attempts the probe makes, one field per row of the isolation table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    /// `init_module` on a 16-byte zero buffer: EPERM = refused, ENOEXEC = allowed.
    pub load_kernel_module: AttemptOutcome,
    /// Mount a tmpfs (in a forked child's private mount namespace).
    pub mount_tmpfs: AttemptOutcome,
    /// `socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)`, closed at once.
    pub raw_socket: AttemptOutcome,
    /// Write the current value back to `/proc/sys/kernel/hostname`.
    pub write_hostname: AttemptOutcome,
    /// Open `/proc/sysrq-trigger` for writing (nothing is written).
    pub open_sysrq_trigger: AttemptOutcome,
    /// `reboot(2)` with an invalid magic: EINVAL = CAP_SYS_BOOT check passed.
    pub reboot: AttemptOutcome,
}

/// Symbolic name of the errno values the attempts produce.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::ENOEXEC => "ENOEXEC",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EKEYREJECTED => "EKEYREJECTED",
        libc::ENOKEY => "ENOKEY",
        libc::EBADMSG => "EBADMSG",
        libc::ENODATA => "ENODATA",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

/// What the forked child reported: the step that ended it and its errno (0 = success).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildReport {
    /// Step index and errno (0 when the last step succeeded).
    Finished { step: u8, errno: i32 },
    /// The child died on this signal before reporting.
    Killed(i32),
    /// fork/pipe failed, or the child said nothing.
    Failed(i32),
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs `f` in a forked child; `f` returns `(step, errno)` and must only make
/// raw syscalls (no allocation, no locks): the parent may have other threads.
fn in_child(f: impl FnOnce() -> (u8, i32)) -> ChildReport {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return ChildReport::Failed(last_errno());
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: the child only runs `f` (raw syscalls on pre-built data), write and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = last_errno();
        // SAFETY: closing the fds we just created.
        unsafe {
            libc::close(rd);
            libc::close(wr);
        }
        return ChildReport::Failed(e);
    }
    if pid == 0 {
        let (step, errno) = f();
        let mut msg = [0u8; 5];
        msg[0] = step;
        msg[1..].copy_from_slice(&errno.to_le_bytes());
        // SAFETY: writing our stack buffer to our pipe, then leaving without running atexit handlers.
        unsafe {
            libc::write(wr, msg.as_ptr().cast(), msg.len());
            libc::_exit(0);
        }
    }
    // SAFETY: closing the parent's copy of the write end.
    unsafe { libc::close(wr) };
    let mut msg = [0u8; 5];
    // SAFETY: reading into our stack buffer from our pipe.
    let n = unsafe { libc::read(rd, msg.as_mut_ptr().cast(), msg.len()) };
    // SAFETY: closing our read end.
    unsafe { libc::close(rd) };
    let mut status = 0;
    loop {
        // SAFETY: waiting for the child we forked; status is ours.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid || (r < 0 && last_errno() != libc::EINTR) {
            break;
        }
    }
    if n == 5 {
        ChildReport::Finished {
            step: msg[0],
            errno: i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]),
        }
    } else if libc::WIFSIGNALED(status) {
        ChildReport::Killed(libc::WTERMSIG(status))
    } else {
        ChildReport::Failed(0)
    }
}

/// Turns a child's report into an outcome: `steps` names each step; `classify`
/// maps the final errno (0 = success) of the deciding step to a verdict.
fn outcome(
    report: ChildReport,
    steps: &[&str],
    classify: impl Fn(u8, i32) -> AttemptResult,
) -> AttemptOutcome {
    match report {
        ChildReport::Finished { step, errno } => AttemptOutcome {
            result: classify(step, errno),
            step: steps
                .get(usize::from(step))
                .copied()
                .unwrap_or("?")
                .to_string(),
            errno: (errno != 0).then_some(errno),
            detail: if errno == 0 {
                "succeeded".to_string()
            } else {
                errno_name(errno)
            },
        },
        ChildReport::Killed(sig) => AttemptOutcome {
            result: AttemptResult::Refused,
            step: steps.first().copied().unwrap_or("?").to_string(),
            errno: None,
            detail: format!("killed by signal {sig} (seccomp kill?)"),
        },
        ChildReport::Failed(e) => AttemptOutcome {
            result: AttemptResult::Error,
            step: "fork".to_string(),
            errno: (e != 0).then_some(e),
            detail: format!("could not run the attempt: {}", errno_name(e)),
        },
    }
}

/// Verdict for a plain "permission denied or not" syscall.
fn permission(errno: i32) -> AttemptResult {
    match errno {
        0 => AttemptResult::Allowed,
        libc::EPERM | libc::EACCES | libc::EROFS => AttemptResult::Refused,
        _ => AttemptResult::Unavailable,
    }
}

/// `init_module` on a buffer shorter than an ELF header. The kernel checks
/// CAP_SYS_MODULE (in the initial user namespace) and `modules_disabled` first
/// (EPERM), then rejects the buffer as too short (ENOEXEC): nothing can load.
pub fn load_kernel_module() -> AttemptOutcome {
    let buf = [0u8; 16];
    let params = c"";
    let r = in_child(|| {
        // SAFETY: init_module reads `buf.len()` bytes from our buffer and the empty param string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_init_module,
                buf.as_ptr(),
                buf.len() as libc::c_ulong,
                params.as_ptr(),
            )
        };
        (0, if rc == 0 { 0 } else { last_errno() })
    });
    outcome(r, &["init_module"], |_, e| match e {
        libc::EPERM => AttemptResult::Refused,
        libc::ENOSYS => AttemptResult::Unavailable,
        // Success cannot happen with this buffer; any other error came after
        // the permission check.
        _ => AttemptResult::Allowed,
    })
}

/// Mounts a 4 KiB tmpfs on `/` inside a private mount namespace of a forked
/// child; the namespace (and the mount) vanish when the child exits.
pub fn mount_tmpfs() -> AttemptOutcome {
    let root = c"/";
    let tmpfs = c"tmpfs";
    let source = c"duet-probe";
    let opts = c"size=4k";
    let r = in_child(|| {
        // SAFETY: unshare affects only this forked child.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return (0, last_errno());
        }
        // SAFETY: changes propagation of the child's own copy of the mount tree only.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return (1, last_errno());
        }
        // SAFETY: mounts in the child's private namespace; all strings are NUL-terminated statics.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                root.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                opts.as_ptr().cast(),
            )
        };
        (2, if rc == 0 { 0 } else { last_errno() })
    });
    outcome(
        r,
        &["unshare(CLONE_NEWNS)", "mount(MS_PRIVATE)", "mount(tmpfs)"],
        |_, e| permission(e),
    )
}

/// Opens and closes a raw ICMP socket (CAP_NET_RAW in the network namespace's owner).
pub fn raw_socket() -> AttemptOutcome {
    let r = in_child(|| {
        // SAFETY: plain socket call; the fd is closed at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        if fd < 0 {
            return (0, last_errno());
        }
        // SAFETY: closing the fd we opened.
        unsafe { libc::close(fd) };
        (0, 0)
    });
    outcome(r, &["socket(AF_INET, SOCK_RAW)"], |_, e| permission(e))
}

/// Writes the current hostname back to `/proc/sys/kernel/hostname`, so a
/// success changes nothing (a rename by someone else in the microseconds
/// between read and write would be undone; nothing else can happen).
pub fn write_hostname() -> AttemptOutcome {
    let path = c"/proc/sys/kernel/hostname";
    let current = match std::fs::read("/proc/sys/kernel/hostname") {
        Ok(mut v) => {
            while v.last() == Some(&b'\n') {
                v.pop();
            }
            v
        }
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(0);
            return AttemptOutcome {
                result: AttemptResult::Unavailable,
                step: "read /proc/sys/kernel/hostname".to_string(),
                errno: Some(errno),
                detail: errno_name(errno),
            };
        }
    };
    let r = in_child(|| {
        // SAFETY: path is a NUL-terminated static.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return (0, last_errno());
        }
        // SAFETY: writes our buffer (the unchanged hostname) to the fd we opened.
        let n = unsafe { libc::write(fd, current.as_ptr().cast(), current.len()) };
        let e = if n < 0 { last_errno() } else { 0 };
        // SAFETY: closing the fd we opened.
        unsafe { libc::close(fd) };
        (1, e)
    });
    outcome(r, &["open(O_WRONLY)", "write(same value)"], |_, e| {
        permission(e)
    })
}

/// Opens `/proc/sysrq-trigger` for writing and closes it without writing.
pub fn open_sysrq_trigger() -> AttemptOutcome {
    let path = c"/proc/sysrq-trigger";
    let r = in_child(|| {
        // SAFETY: path is a NUL-terminated static; the fd is closed unwritten.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return (0, last_errno());
        }
        // SAFETY: closing the fd we opened.
        unsafe { libc::close(fd) };
        (0, 0)
    });
    outcome(r, &["open(O_WRONLY)"], |_, e| permission(e))
}

/// `reboot(0, 0, LINUX_REBOOT_CMD_CAD_OFF, NULL)`. kernel/reboot.c checks
/// `ns_capable(pid_ns->user_ns, CAP_SYS_BOOT)` (EPERM) before the magic
/// numbers (EINVAL), so the invalid magic can only fail, and EINVAL tells that
/// the permission check passed. In a child PID namespace a valid call would
/// only end that namespace's init.
pub fn reboot() -> AttemptOutcome {
    let r = in_child(|| {
        // SAFETY: magic1 = 0 is never accepted: the call returns EPERM or EINVAL and does nothing.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_reboot,
                0 as libc::c_long,
                0 as libc::c_long,
                libc::LINUX_REBOOT_CMD_CAD_OFF as libc::c_long,
                std::ptr::null::<libc::c_void>(),
            )
        };
        (0, if rc == 0 { 0 } else { last_errno() })
    });
    outcome(r, &["reboot(invalid magic)"], |_, e| match e {
        libc::EINVAL => AttemptResult::Allowed,
        libc::EPERM => AttemptResult::Refused,
        0 => AttemptResult::Allowed,
        _ => AttemptResult::Unavailable,
    })
}

/// Makes every attempt.
pub fn all() -> Attempts {
    Attempts {
        load_kernel_module: load_kernel_module(),
        mount_tmpfs: mount_tmpfs(),
        raw_socket: raw_socket(),
        write_hostname: write_hostname(),
        open_sysrq_trigger: open_sysrq_trigger(),
        reboot: reboot(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn child_reports_step_and_errno() {
        assert_eq!(
            in_child(|| (2, libc::EPERM)),
            ChildReport::Finished {
                step: 2,
                errno: libc::EPERM
            }
        );
        let killed = in_child(|| {
            // SAFETY: the forked child kills itself.
            unsafe { libc::raise(libc::SIGKILL) };
            (0, 0)
        });
        assert_eq!(killed, ChildReport::Killed(libc::SIGKILL));
    }

    #[test]
    fn outcome_names_step_and_errno() {
        let o = outcome(
            ChildReport::Finished {
                step: 1,
                errno: libc::EPERM,
            },
            &["a", "b"],
            |_, e| permission(e),
        );
        assert_eq!(o.result, AttemptResult::Refused);
        assert_eq!(o.step, "b");
        assert_eq!(o.detail, "EPERM");
        let k = outcome(ChildReport::Killed(31), &["x"], |_, e| permission(e));
        assert_eq!(k.result, AttemptResult::Refused);
        assert!(k.detail.contains("31"));
    }

    #[test]
    fn reboot_never_succeeds_and_matches_cap_sys_boot() {
        let o = reboot();
        assert_ne!(o.detail, "succeeded", "{o:?}");
        let caps = crate::parse::status(&std::fs::read_to_string("/proc/self/status").unwrap());
        let has_boot = caps.cap_eff.unwrap_or(0) & (1 << 22) != 0;
        let expected = if has_boot {
            AttemptResult::Allowed
        } else {
            AttemptResult::Refused
        };
        assert_eq!(o.result, expected, "{o:?}");
    }

    #[test]
    fn kernel_module_attempt_never_loads() {
        let o = load_kernel_module();
        assert_ne!(o.detail, "succeeded", "{o:?}");
        if !is_root() {
            assert_eq!(o.result, AttemptResult::Refused, "{o:?}");
        } else {
            println!("as root: {o:?}");
        }
    }

    #[test]
    fn hostname_write_keeps_the_hostname() {
        let before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let o = write_hostname();
        let after = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(before, after, "{o:?}");
        if !is_root() {
            assert_eq!(o.result, AttemptResult::Refused, "{o:?}");
        }
    }

    #[test]
    fn mount_attempt_leaves_mount_table_unchanged() {
        // Other processes may mount concurrently, so look only for our source name.
        let o = mount_tmpfs();
        let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!after.contains("duet-probe"), "{o:?}");
        if !is_root() {
            assert_eq!(o.result, AttemptResult::Refused, "{o:?}");
        } else {
            println!("as root: {o:?}");
        }
    }
}
