//! SIGINT/SIGTERM/SIGHUP/SIGQUIT while a VM runs: stop the VM, let duet clean up and exit.
//!
//! The handler only records the signal and writes an eventfd (both
//! async-signal-safe); the threads that wait for a VM's end wait on that
//! eventfd ([`wake_fd`]) next to their other events, see [`received`], and
//! stop the vCPUs as they would on a timeout. Waiting on an fd instead of
//! checking on a timer keeps a running VM's host side asleep: every timer
//! wake-up preempts a vCPU on a busy host (measured in the nested testbed,
//! bench/vmm/RESULTS.md). Outside a run the default action is restored and
//! the signal re-raised, so Ctrl-C still ends duet at once.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Once;

static RECEIVED: AtomicI32 = AtomicI32::new(0);
static ACTIVE_RUNS: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();
/// This process's wake-up eventfd (-1: none).
static WAKE: AtomicI32 = AtomicI32::new(-1);

fn new_eventfd() -> RawFd {
    // SAFETY: eventfd takes plain flags and returns a new fd or -1.
    unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }
}

/// Makes [`wake_fd`] readable (async-signal-safe: one write).
fn wake() {
    let fd = WAKE.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: an 8-byte write from a valid u64 to our eventfd.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

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
    wake();
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
    wake();
}

/// An fd that turns readable once a stop signal arrived or [`request_stop`]
/// ran, to wait on with poll(2) (`None` before the first [`RunGuard`], or
/// if no eventfd could be made: wait on a timer then). It stays readable,
/// so stop polling it once [`received`] says a signal came; a wake-up
/// without one (a forked child's, before it exec'd) is drained with
/// [`drain_wake`].
pub fn wake_fd() -> Option<RawFd> {
    let fd = WAKE.load(Ordering::SeqCst);
    (fd >= 0).then_some(fd)
}

/// Empties [`wake_fd`] after a wake-up that [`received`] does not explain.
pub fn drain_wake() {
    if let Some(fd) = wake_fd() {
        let mut v = 0u64;
        // SAFETY: an 8-byte read into a valid u64 from our nonblocking eventfd.
        unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    }
}

/// In a forked child (the jailed VMM): stops writing to the parent's
/// eventfd at once (the child closes inherited fds, and a reused number
/// must never get the handler's bytes). Async-signal-safe.
pub fn forget_wake_fd() {
    WAKE.store(-1, Ordering::SeqCst);
}

/// In that child, once its inherited fds are closed: an eventfd of its own.
pub fn renew_wake_fd() {
    let fd = new_eventfd();
    if fd >= 0 {
        WAKE.store(fd, Ordering::SeqCst);
    }
}

/// Marks a VM run in progress; SIGINT/SIGTERM/SIGHUP/SIGQUIT stop it while the guard lives.
pub struct RunGuard(());

impl RunGuard {
    /// Installs the handler (once) and counts this run.
    pub fn enter() -> RunGuard {
        INSTALL.call_once(|| {
            // Before the handler can run: it writes to this fd.
            let fd = new_eventfd();
            if fd >= 0 {
                WAKE.store(fd, Ordering::SeqCst);
            }
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

/// A thread that waits on [`wake_fd`] and calls `notify` once a stop
/// signal came, so a thread waiting on a channel (the VM's end) hears of it
/// without checking on a timer. Ends when dropped.
pub struct SignalRelay {
    stop: std::sync::Arc<vmm_sys_util::eventfd::EventFd>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl SignalRelay {
    /// Starts the relay (`None` without a wake-up fd, a thread, or its
    /// seccomp filter: the waiter then keeps its timer). The thread gets
    /// `filter` before it reports that it runs.
    pub fn spawn(
        notify: Box<dyn Fn() + Send>,
        filter: Option<std::sync::Arc<seccompiler::BpfProgram>>,
    ) -> Option<SignalRelay> {
        use std::os::fd::AsRawFd;
        let wake = wake_fd()?;
        let stop = std::sync::Arc::new(
            vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).ok()?,
        );
        let stop_rx = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("duet-signals".into())
            .stack_size(crate::vcpu::VMM_THREAD_STACK)
            .spawn(move || {
                let filtered =
                    filter.is_none_or(|f| crate::seccomp::install(&f, "signal relay").is_ok());
                let _ = ready_tx.send(filtered);
                if !filtered {
                    return;
                }
                loop {
                    let mut fds = [stop_rx.as_raw_fd(), wake].map(|fd| libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    // SAFETY: two valid pollfds for the duration of the call.
                    if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } <= 0 {
                        continue;
                    }
                    let broken = libc::POLLERR | libc::POLLNVAL;
                    if fds[0].revents != 0 || fds[1].revents & broken != 0 {
                        return;
                    }
                    // Drained before the check: a signal after it writes again.
                    drain_wake();
                    if received().is_some() {
                        notify();
                        return;
                    }
                }
            })
            .ok()?;
        let relay = SignalRelay {
            stop,
            handle: Some(handle),
        };
        // A relay that could not take its filter is no relay.
        ready_rx.recv().unwrap_or(false).then_some(relay)
    }
}

impl Drop for SignalRelay {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
