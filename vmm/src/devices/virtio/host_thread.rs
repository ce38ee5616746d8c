//! A device's host thread, for devices whose data also arrives from the
//! host side (vsock's Unix connections, net's tap): it polls the device's
//! host fds (poll(2), the set rebuilt from [`HostSide::poll_set`] after
//! every wake-up), does the host-side I/O under the transport's lock
//! ([`HostSide::host_io`]) and runs one rx pass, so host data reaches the
//! guest without waiting for a guest exit. The vCPU threads keep their
//! loop: they only write the device's wake eventfd when the poll set may
//! have changed. It runs under the VMM's seccomp filter like the vCPU
//! threads.

use super::{MmioTransport, VirtioDevice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use vmm_sys_util::eventfd::EventFd;

/// How often the thread wakes up without an event (connection timeouts).
const TICK_MS: i32 = 500;

/// What the host thread needs of a device.
pub trait HostSide: VirtioDevice + 'static {
    /// Names one polled fd in [`HostSide::host_io`].
    type Token: Copy + Send;
    /// The queue host data goes to.
    const RX: usize;
    /// The thread's name.
    const THREAD: &'static str;
    /// An eventfd written whenever the poll set may have changed (cloned
    /// before the thread's seccomp filter is on).
    fn wake_fd(&self) -> std::io::Result<EventFd>;
    /// The host fds to poll now, with their events.
    fn poll_set(&self) -> Vec<(RawFd, i16, Self::Token)>;
    /// The I/O those that are ready allow.
    fn host_io(&mut self, ready: &[(Self::Token, i16)], now: Instant);
}

/// The running host thread.
pub struct HostThread {
    stop: EventFd,
    handle: JoinHandle<()>,
}

impl HostThread {
    /// Starts the thread for `transport`; `filter` is installed on it first.
    pub fn spawn<D: HostSide>(
        transport: Arc<Mutex<MmioTransport<D>>>,
        filter: Option<Arc<seccompiler::BpfProgram>>,
    ) -> std::io::Result<HostThread> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_rx = stop.try_clone()?;
        let wake = lock(&transport).device().wake_fd()?;
        let handle = std::thread::Builder::new()
            .name(D::THREAD.into())
            .stack_size(crate::vcpu::VMM_THREAD_STACK)
            .spawn(move || {
                if let Some(f) = filter {
                    if crate::seccomp::install(&f, D::THREAD).is_err() {
                        return;
                    }
                }
                run(&transport, &stop_rx, &wake);
            })?;
        Ok(HostThread { stop, handle })
    }

    /// Stops and joins the thread.
    pub fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.handle.join();
    }
}

fn lock<D: VirtioDevice>(
    t: &Mutex<MmioTransport<D>>,
) -> std::sync::MutexGuard<'_, MmioTransport<D>> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

fn run<D: HostSide>(transport: &Mutex<MmioTransport<D>>, stop: &EventFd, wake: &EventFd) {
    let mut again = false;
    loop {
        let set = lock(transport).device().poll_set();
        let mut fds: Vec<libc::pollfd> = [stop.as_raw_fd(), wake.as_raw_fd()]
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .chain(set.iter().map(|&(fd, events, _)| libc::pollfd {
                fd,
                events,
                revents: 0,
            }))
            .collect();
        let timeout = if again { 0 } else { TICK_MS };
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        if fds[1].revents != 0 {
            let _ = wake.read();
        }
        let ready: Vec<(D::Token, i16)> = fds[2..]
            .iter()
            .zip(&set)
            .filter(|(p, _)| p.revents != 0)
            .map(|(p, &(_, _, token))| (token, p.revents))
            .collect();
        let mut t = lock(transport);
        t.device_mut().host_io(&ready, Instant::now());
        again = t.process_from_host(D::RX);
    }
}
