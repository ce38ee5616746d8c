//! The container's seccomp filter, built with `seccompiler`.
//!
//! A deny list with default allow: the system calls Docker's default profile
//! refuses to a container without CAP_SYS_ADMIN & co. return EPERM, and
//! `clone3` returns ENOSYS (as in Docker) so that libc falls back to `clone`,
//! whose namespace flags the filter can inspect. Compiled once in the parent;
//! the child installs it with one prctl per program as its last step.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Errors while building the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules.
    #[error("building the seccomp filter ({what})")]
    Build {
        /// Which program.
        what: &'static str,
        /// Cause.
        #[source]
        source: seccompiler::BackendError,
    },
}

/// System calls refused with EPERM, by name and number (x86_64).
pub const DENIED_SYSCALLS: &[(&str, libc::c_long)] = &[
    // Kernel code and the machine itself.
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("acct", libc::SYS_acct),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("vhangup", libc::SYS_vhangup),
    ("uselib", libc::SYS_uselib),
    ("ustat", libc::SYS_ustat),
    ("sysfs", libc::SYS_sysfs),
    ("_sysctl", libc::SYS__sysctl),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("userfaultfd", libc::SYS_userfaultfd),
    // File handles bypass the mount namespace ("shocker").
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    // Keys are not namespaced.
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("keyctl", libc::SYS_keyctl),
    // Time is not namespaced.
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    // Namespaces and mounts: a container does not rearrange its own.
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
];

/// The compiled programs, installed in this order.
#[derive(Debug, Clone)]
pub struct SeccompPrograms {
    /// Installed in this order (the kernel runs the last one installed
    /// first; among equal actions the first result it sees wins).
    pub programs: Vec<BpfProgram>,
}

impl SeccompPrograms {
    /// No filter at all (an OCI config without `linux.seccomp`).
    pub fn none() -> SeccompPrograms {
        SeccompPrograms {
            programs: Vec::new(),
        }
    }
}

fn arch() -> TargetArch {
    TargetArch::x86_64
}

/// Compiles the filter (tens of microseconds).
pub fn compile() -> Result<SeccompPrograms, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED_SYSCALLS
        .iter()
        .map(|&(_, nr)| (nr, Vec::new()))
        .collect();
    let build = |what| move |source| SeccompError::Build { what, source };
    let newuser = libc::CLONE_NEWUSER as u64;
    let cond = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(newuser),
        newuser,
    )
    .map_err(build("clone CLONE_NEWUSER"))?;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![cond]).map_err(build("clone CLONE_NEWUSER"))?],
    );
    let eperm = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch(),
    )
    .map_err(build("EPERM list"))?;
    let enosys = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )
    .map_err(build("clone3"))?;
    // ENOSYS for clone3, then EPERM for the denied list (and clone with
    // CLONE_NEWUSER).
    Ok(SeccompPrograms {
        programs: vec![
            enosys.try_into().map_err(build("clone3"))?,
            eperm.try_into().map_err(build("EPERM list"))?,
        ],
    })
}

/// Installs one program on the calling thread (needs no_new_privs or
/// CAP_SYS_ADMIN). Raw prctl only: safe between clone and execve.
pub fn install(program: &BpfProgram) -> Result<(), i32> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        // seccompiler's sock_filter has the kernel's layout (u16, u8, u8, u32).
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the kernel copies `len` instructions from `filter`, which points
    // into `program`, alive for the duration of the call.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const _,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(crate::capabilities::errno());
    }
    Ok(())
}

/// Installs every program, in order (after no_new_privs, or with CAP_SYS_ADMIN).
pub fn install_all(p: &SeccompPrograms) -> Result<(), i32> {
    for program in &p.programs {
        install(program)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`probe`] tried, in order: the errno of each (0 if it succeeded).
    #[derive(Debug, PartialEq, Eq)]
    struct Tried {
        init_module: i32,
        clone3: i32,
        keyctl: i32,
        unshare_newuser: i32,
    }

    /// In a forked child: optionally set no_new_privs + the filter, then try
    /// `init_module` on a junk image, `clone3`, `keyctl` and
    /// `unshare(CLONE_NEWUSER)`; the errnos come back through a pipe.
    fn probe(with_filter: bool) -> Tried {
        let progs = compile().unwrap();
        let (rfd, wfd) = {
            let mut fds = [0; 2];
            // SAFETY: pipe2 writes two fds into the array we own.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            (fds[0], fds[1])
        };
        // SAFETY: the child only makes raw syscalls and _exits; no allocation, no locks.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if with_filter {
                // SAFETY: prctl with integer arguments.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                if install_all(&progs).is_err() {
                    // SAFETY: _exit never returns.
                    unsafe { libc::_exit(99) };
                }
            }
            let errno_of = |r: libc::c_long| {
                if r >= 0 {
                    0
                } else {
                    crate::capabilities::errno()
                }
            };
            let junk = [0x7fu8, b'E', b'L', b'F', 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
            // SAFETY: init_module reads `junk.len()` bytes and a NUL-terminated
            // parameter string; a junk image never loads.
            let e1 = errno_of(unsafe {
                libc::syscall(
                    libc::SYS_init_module,
                    junk.as_ptr(),
                    junk.len(),
                    c"".as_ptr(),
                )
            });
            // SAFETY: clone3 with a NULL args pointer and size 0 fails with EINVAL
            // in the kernel, or ENOSYS/EPERM in a filter, and creates nothing.
            let e2 = errno_of(unsafe {
                libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize)
            });
            // KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_USER_KEYRING (-4), created if
            // missing: any process may do this, no capability involved.
            // SAFETY: integer arguments only.
            let e3 = errno_of(unsafe {
                libc::syscall(libc::SYS_keyctl, 0 as libc::c_long, -4 as libc::c_long, 1)
            });
            // A new user namespace needs no capability (this child is single-threaded).
            // SAFETY: integer argument; only this child's namespaces change.
            let e4 = errno_of(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as libc::c_long);
            let out = [e1, e2, e3, e4];
            // SAFETY: write from a stack array to our pipe.
            unsafe { libc::write(wfd, out.as_ptr().cast(), 16) };
            // SAFETY: _exit never returns.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(wfd) };
        let mut out = [0i32; 4];
        // SAFETY: reading 16 bytes into the array we own.
        let n = unsafe { libc::read(rfd, out.as_mut_ptr().cast(), 16) };
        let mut status = 0;
        // SAFETY: reaping the child we forked; closing our read end.
        unsafe {
            libc::waitpid(pid, &mut status, 0);
            libc::close(rfd);
        }
        assert_eq!(n, 16, "child exited with status {status:#x}");
        Tried {
            init_module: out[0],
            clone3: out[1],
            keyctl: out[2],
            unshare_newuser: out[3],
        }
    }

    #[test]
    fn filter_refuses_init_module_clone3_keyctl_and_userns() {
        assert_eq!(
            probe(true),
            Tried {
                init_module: libc::EPERM,
                clone3: libc::ENOSYS,
                keyctl: libc::EPERM,
                unshare_newuser: libc::EPERM,
            }
        );
    }

    /// The same calls without the filter: what the filter refuses, the kernel
    /// (and the capabilities) would have allowed, so the test above is not hollow.
    #[test]
    fn without_filter_clone3_keyctl_and_userns_are_allowed() {
        let t = probe(false);
        assert_eq!(t.clone3, libc::EINVAL, "{t:?}");
        assert_eq!(t.keyctl, 0, "{t:?}");
        assert_eq!(t.unshare_newuser, 0, "{t:?}");
    }

    #[test]
    fn without_filter_init_module_fails_otherwise() {
        if duet_shared::testing::skip_unless_root(
            "without_filter_init_module_fails_otherwise",
            "only root gets past init_module's CAP_SYS_MODULE check",
        ) {
            return;
        }
        let t = probe(false);
        assert_ne!(
            t.init_module,
            libc::EPERM,
            "the kernel itself refused with EPERM: the filter test proves nothing"
        );
        assert_ne!(t.init_module, 0);
    }

    #[test]
    fn deny_list_has_the_required_calls() {
        for name in [
            "kexec_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "reboot",
            "swapon",
            "bpf",
            "perf_event_open",
        ] {
            assert!(DENIED_SYSCALLS.iter().any(|(n, _)| *n == name), "{name}");
        }
        let mut nrs: Vec<_> = DENIED_SYSCALLS.iter().map(|(_, nr)| *nr).collect();
        nrs.sort();
        nrs.dedup();
        assert_eq!(
            nrs.len(),
            DENIED_SYSCALLS.len(),
            "duplicate syscall numbers"
        );
    }
}
