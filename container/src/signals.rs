//! SIGINT/SIGTERM/SIGHUP/SIGQUIT while containers run: kill them, let duet clean up and exit.
//!
//! The init of a pid namespace ignores signals it has no handler for, so
//! forwarding Ctrl-C would do nothing; duet SIGKILLs its containers instead.
//! [`ContainerRuntime::run`](crate::ContainerRuntime) installs the handler on
//! first use and registers each container's pidfd while it runs. The handler
//! only does async-signal-safe work: it records the signal and sends SIGKILL
//! through every registered pidfd (a pidfd cannot hit a recycled pid). The
//! run then sees its container die, removes its cgroups and returns
//! `WorkloadExit::Signal(N)` for the signal duet received, so the CLI's usual
//! `exit(exit.shell_code())` gives 130 for SIGINT and 143 for SIGTERM.
//! While no run is in progress the handler restores the default action and
//! re-raises, so duet still dies of Ctrl-C as usual outside a run.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Once;

/// Containers one process can run at once and still kill on a signal.
const SLOTS: usize = 256;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicI32 = AtomicI32::new(-1);
static PIDFDS: [AtomicI32; SLOTS] = [EMPTY; SLOTS];
static ACTIVE_RUNS: AtomicUsize = AtomicUsize::new(0);
static RECEIVED: AtomicI32 = AtomicI32::new(0);
static INSTALL: Once = Once::new();

/// Signals that stop duet's containers.
pub const STOP_SIGNALS: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

extern "C" fn on_stop_signal(sig: libc::c_int) {
    if ACTIVE_RUNS.load(Ordering::SeqCst) == 0 {
        // Not inside a run: behave as if duet had no handler.
        // SAFETY: signal and raise are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    RECEIVED.store(sig, Ordering::SeqCst);
    kill_registered();
}

fn kill_registered() {
    for slot in &PIDFDS {
        let fd = slot.load(Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: pidfd_send_signal is a raw, async-signal-safe syscall on an fd we registered.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }
}

fn install() {
    INSTALL.call_once(|| {
        for sig in STOP_SIGNALS {
            // SAFETY: a zeroed sigaction with a valid handler, empty mask and
            // SA_RESTART; the handler only uses async-signal-safe calls.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_stop_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}

/// The stop signal duet received during a run, if any (sticky: the process
/// is expected to exit after the run returns).
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// A run in progress: counts as active and may register its container.
#[derive(Debug)]
pub struct RunGuard {
    slot: Option<usize>,
}

impl RunGuard {
    /// Marks a run as in progress (installing the handler on first use).
    pub fn enter() -> RunGuard {
        install();
        ACTIVE_RUNS.fetch_add(1, Ordering::SeqCst);
        RunGuard { slot: None }
    }

    /// Registers the container's pidfd; if a stop signal already arrived,
    /// kills it right away. Returns false if every slot is taken (the
    /// container then runs without signal protection; its pdeathsig still
    /// kills it if duet dies).
    pub fn register(&mut self, pidfd: i32) -> bool {
        for (i, slot) in PIDFDS.iter().enumerate() {
            if slot
                .compare_exchange(-1, pidfd, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                self.slot = Some(i);
                if received().is_some() {
                    kill_registered();
                }
                return true;
            }
        }
        false
    }

    /// Forgets the pidfd (before it is closed).
    pub fn unregister(&mut self) {
        if let Some(i) = self.slot.take() {
            PIDFDS[i].store(-1, Ordering::SeqCst);
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.unregister();
        ACTIVE_RUNS.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused() {
        let mut a = RunGuard::enter();
        let mut b = RunGuard::enter();
        // fds that are not pidfds: pidfd_send_signal fails harmlessly if ever called.
        assert!(a.register(1_000_000));
        assert!(b.register(1_000_001));
        let (sa, sb) = (a.slot.unwrap(), b.slot.unwrap());
        assert_ne!(sa, sb);
        a.unregister();
        assert_eq!(PIDFDS[sa].load(Ordering::SeqCst), -1);
        drop(b);
        assert_eq!(PIDFDS[sb].load(Ordering::SeqCst), -1);
    }
}
