//! The seccomp filter duet's VMM threads (vCPUs, console input) run under,
//! installed by each thread on itself after its setup, with no_new_privs.
//!
//! Allow-list: KVM_RUN (plus KVM_GET_REGS/SREGS for error reports, and the
//! read-only KVM_GET_* of a vCPU's own state a snapshot takes on the
//! paused vCPU's thread, as Firecracker's vCPU filter allows) as the only
//! ioctls; read/write/poll for the console and eventfds; preadv/pwritev/fdatasync
//! for virtio-blk disks; accept4 and sendto for virtio-vsock's Unix socket side
//! (its thread, and vCPU threads forwarding guest data); sendmsg/recvmsg
//! for the virtio-fs device's vhost-user socket; futex and
//! memory management for Rust's runtime (mprotect without PROT_EXEC); signal return for the kick signal;
//! thread exit. Anything else kills the process (SIGSYS).

use kvm_bindings::{
    kvm_cpuid2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
// What crate::snapshot::capture_vcpu reads.
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler rejected the rules.
    #[error("building the VMM seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    /// Installing it on the thread failed.
    #[error("installing the seccomp filter on the {thread} thread")]
    Install {
        /// Thread name.
        thread: String,
        /// Cause.
        #[source]
        source: seccompiler::Error,
    },
}

/// Syscalls allowed with any arguments.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    // virtio-blk requests are served on the vCPU thread that notified.
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fdatasync,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // virtio-vsock's host side: its thread accepts connections on the
    // agent socket; data goes out with send(MSG_NOSIGNAL) (no SIGPIPE).
    libc::SYS_accept4,
    libc::SYS_sendto,
    // virtio-fs: the vCPU thread that sets DRIVER_OK (or resets the
    // device) sends the rings' addresses and eventfds to the vhost-user
    // backend over the connected socket (SCM_RIGHTS) and reads its replies.
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_madvise,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
];

/// The ioctl request numbers a running vCPU thread may issue.
pub fn allowed_ioctls() -> [u64; 12] {
    [
        KVM_RUN() as u64,
        KVM_GET_REGS() as u64,
        KVM_GET_SREGS() as u64,
        KVM_GET_MSRS() as u64,
        KVM_GET_LAPIC() as u64,
        KVM_GET_CPUID2() as u64,
        KVM_GET_MP_STATE() as u64,
        KVM_GET_VCPU_EVENTS() as u64,
        KVM_GET_DEBUGREGS() as u64,
        KVM_GET_TSC_KHZ() as u64,
        KVM_GET_XSAVE() as u64,
        KVM_GET_XCRS() as u64,
    ]
}

/// Compiles the VMM thread filter.
pub fn vmm_thread_filter() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    let ioctl_rules = allowed_ioctls()
        .iter()
        .map(|&req| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                req,
            )
            .map_err(SeccompError::Build)?])
            .map_err(SeccompError::Build)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    // malloc grows its per-thread arenas with mprotect; never allow PROT_EXEC.
    let no_exec = SeccompRule::new(vec![SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )
    .map_err(SeccompError::Build)?])
    .map_err(SeccompError::Build)?;
    rules.insert(libc::SYS_mprotect, vec![no_exec]);
    // Rust's debug builds check that a descriptor is open before closing it.
    let getfd = SeccompRule::new(vec![SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::F_GETFD as u64,
    )
    .map_err(SeccompError::Build)?])
    .map_err(SeccompError::Build)?;
    rules.insert(libc::SYS_fcntl, vec![getfd]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        std::env::consts::ARCH
            .try_into()
            .map_err(SeccompError::Build)?,
    )
    .map_err(SeccompError::Build)?;
    filter.try_into().map_err(SeccompError::Build)
}

/// Installs `filter` on the calling thread (sets no_new_privs first).
pub fn install(filter: &BpfProgram, thread: &str) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(|source| SeccompError::Install {
        thread: thread.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernel_ones() {
        // From linux/kvm.h on x86_64.
        assert_eq!(
            allowed_ioctls(),
            [
                0xae80,
                0x8090_ae81,
                0x8138_ae83,
                0xc008_ae88,
                0x8400_ae8e,
                0xc008_ae91,
                0x8004_ae98,
                0x8040_ae9f,
                0x8080_aea1,
                0xaea3,
                0x9000_aea4,
                0x8188_aea6,
            ]
        );
    }

    #[test]
    fn filter_confines_a_thread_with_no_new_privs() {
        let filter = vmm_thread_filter().unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            install(&filter, "test").unwrap();
            let v: Vec<u8> = vec![1; 1 << 20]; // mmap/munmap stay allowed
                                               // SAFETY: gettid has no arguments and no side effects.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            tid_tx.send((tid, v.len())).unwrap();
            done_rx.recv().unwrap();
        });
        let (tid, len) = tid_rx.recv().unwrap();
        assert_eq!(len, 1 << 20);
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        assert!(status.contains("Seccomp:\t2"), "{status}");
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn a_syscall_off_the_list_kills_the_process() {
        let filter = vmm_thread_filter().unwrap();
        // SAFETY: the child only calls async-signal-safe functions (prctl,
        // seccomp, a raw syscall, _exit) before it ends.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if install(&filter, "child").is_err() {
                // SAFETY: _exit ends the forked child without running destructors.
                unsafe { libc::_exit(3) };
            }
            // SAFETY: getppid takes no arguments; the filter should kill us here.
            unsafe { libc::syscall(libc::SYS_getppid) };
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child we forked; status is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status), "child exited with {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
