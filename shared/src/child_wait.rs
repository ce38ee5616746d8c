//! Waiting for a child process with a deadline, without polling in a sleep
//! loop: poll(2) on a pidfd wakes the moment the child exits.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::time::Instant;

/// pidfd_open(2) of `pid`.
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until `child` exits or `deadline` passes (`None`: no deadline);
/// `Ok(None)`: still running. Kernels without pidfds (before 5.3) get a
/// `try_wait` every millisecond instead.
pub fn wait_until(
    child: &mut Child,
    deadline: Option<Instant>,
) -> std::io::Result<Option<ExitStatus>> {
    let pidfd = pidfd_open(child.id() as i32).ok();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        let left = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(None),
            },
            None => None,
        };
        let Some(fd) = &pidfd else {
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        };
        let ms = left.map_or(-1, |l| l.as_millis().clamp(1, i32::MAX as u128) as i32);
        let mut fds = [libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll reads and writes the one pollfd we own.
        if unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn returns_at_exit_and_at_the_deadline() {
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let t = Instant::now();
        let r = wait_until(&mut c, Some(Instant::now() + Duration::from_millis(50))).unwrap();
        assert!(r.is_none());
        assert!(t.elapsed() < Duration::from_secs(2));
        c.kill().unwrap();
        let s = wait_until(&mut c, None).unwrap().expect("exited");
        assert!(!s.success());
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let t = Instant::now();
        assert!(
            wait_until(&mut c, Some(Instant::now() + Duration::from_secs(10)))
                .unwrap()
                .is_some_and(|s| s.success())
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
