//! SIGINT/SIGTERM/SIGHUP/SIGQUIT while a VM runs: stop the VM, let duet clean up and exit.
//!
//! The handler only records the signal (async-signal-safe); the thread that
//! waits for the VM's end polls [`received`] between events and stops the
//! vCPUs as it would on a timeout. Outside a run the default action is
//! restored and the signal re-raised, so Ctrl-C still ends duet at once.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Once;

static RECEIVED: AtomicI32 = AtomicI32::new(0);
static ACTIVE_RUNS: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

extern "C" fn on_stop_signal(sig: libc::c_int) {
    if ACTIVE_RUNS.load(Ordering::SeqCst) == 0 {
        // SAFETY: signal and raise are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// The stop signal received during a run, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Stops every VM this process runs, as a stop signal would (the
/// lifecycle's `kill` of an unjailed VM, which runs in this process).
pub fn request_stop(sig: i32) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// Marks a VM run in progress; SIGINT/SIGTERM/SIGHUP/SIGQUIT stop it while the guard lives.
pub struct RunGuard(());

impl RunGuard {
    /// Installs the handler (once) and counts this run.
    pub fn enter() -> RunGuard {
        INSTALL.call_once(|| {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                // SAFETY: a zeroed sigaction with a valid handler and empty mask is well-formed;
                // the handler does only async-signal-safe work.
                unsafe {
                    let mut sa: libc::sigaction = std::mem::zeroed();
                    sa.sa_sigaction = on_stop_signal as *const () as usize;
                    libc::sigemptyset(&mut sa.sa_mask);
                    sa.sa_flags = libc::SA_RESTART;
                    libc::sigaction(sig, &sa, std::ptr::null_mut());
                }
            }
        });
        ACTIVE_RUNS.fetch_add(1, Ordering::SeqCst);
        RunGuard(())
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        ACTIVE_RUNS.fetch_sub(1, Ordering::SeqCst);
    }
}
