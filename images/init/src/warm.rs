//! Warm start: a template guest waits here, root mounted, for the workload
//! of the clone it is about to become.
//!
//! The host boots the template once with [`crate::GuestWorkload::template`]
//! set, probes [`duet_shared::guest_abi::WARM_PORT`] until it answers,
//! snapshots the VM and ends it. Every restored clone resumes inside
//! [`wait`], gets one JSON line ([`WarmStart`]) from the host, answers
//! `ok`, and [`apply`] makes it a machine of its own before the workload
//! runs: clones of one snapshot would otherwise share the RNG's state, the
//! wall clock of the snapshot and the machine id.
//!
//! The protocol is one line each way because the listener must survive a
//! snapshot: a connection that opens and closes without a byte is the
//! host's readiness probe and the wait goes on.

use crate::config::WarmStart;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;

/// The longest request accepted (a workload config; files included).
pub const MAX_REQUEST: usize = 4 << 20;

/// Waits on `port` for a [`WarmStart`]; answers `ok` to the one that parses.
pub fn wait(port: u32) -> std::io::Result<WarmStart> {
    let listener = crate::agent::listen_vsock(port)?;
    loop {
        let conn = crate::agent::accept(&listener);
        let mut conn = std::fs::File::from(conn);
        match read_line(&mut conn) {
            // The readiness probe, or a host that gave up: keep waiting.
            Ok(None) => continue,
            Ok(Some(line)) => match serde_json::from_slice::<WarmStart>(&line) {
                Ok(w) => {
                    let _ = conn.write_all(b"ok\n");
                    return Ok(w);
                }
                Err(e) => {
                    let _ = conn.write_all(format!("error: {e}\n").as_bytes());
                }
            },
            Err(e) => eprintln!("duet-init: warm start: {e}"),
        }
    }
}

/// One line without its newline; `None` for a connection closed before any byte.
fn read_line(conn: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the request ended without a newline",
                ))
            };
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return Ok(Some(line));
        }
        if line.len() > MAX_REQUEST {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a request longer than {MAX_REQUEST} bytes"),
            ));
        }
    }
}

/// `RNDADDENTROPY` from linux/random.h: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`. Entropy added to a ready CRNG only
/// reaches its output at the next scheduled reseed (up to a minute later
/// on 6.x); this makes the clone's very next read come from the new seed.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Makes this clone its own machine: the host's seed mixed into the RNG
/// (and credited), the wall clock set, a fresh /etc/machine-id where the
/// image has one. Each failure is reported and the rest still applied.
pub fn apply(w: &WarmStart) {
    if let Err(e) = reseed(&w.seed) {
        eprintln!("duet-init: warm start: reseeding the RNG: {e}");
    }
    let ts = libc::timespec {
        tv_sec: (w.unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (w.unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        eprintln!(
            "duet-init: warm start: setting the clock: {}",
            std::io::Error::last_os_error()
        );
    }
    let id = std::path::Path::new("/etc/machine-id");
    if valid_machine_id(&w.machine_id) && id.is_file() {
        if let Err(e) = std::fs::write(id, format!("{}\n", w.machine_id)) {
            eprintln!("duet-init: warm start: writing /etc/machine-id: {e}");
        }
    }
}

/// 32 lowercase hex digits, as machine-id(5) wants.
pub fn valid_machine_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn reseed(seed: &[u8]) -> std::io::Result<()> {
    if seed.is_empty() {
        return Ok(());
    }
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut req = Vec::with_capacity(8 + seed.len());
    req.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    req.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    req.extend_from_slice(seed);
    // SAFETY: RNDADDENTROPY reads the header and buf_size bytes after it,
    // all inside `req`.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, req.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_none_and_a_line_is_its_bytes() {
        assert_eq!(read_line(&mut &b""[..]).unwrap(), None);
        assert_eq!(
            read_line(&mut &b"{\"a\":1}\nrest"[..]).unwrap(),
            Some(b"{\"a\":1}".to_vec())
        );
        let e = read_line(&mut &b"no newline"[..]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn an_endless_request_is_refused() {
        let big = vec![b'x'; MAX_REQUEST + 8192];
        let e = read_line(&mut &big[..]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn machine_ids_are_32_lowercase_hex_digits() {
        assert!(valid_machine_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_machine_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!valid_machine_id("../../etc/passwd"));
        assert!(!valid_machine_id(""));
    }

    #[test]
    fn rndaddentropy_is_the_kernels_number() {
        // _IOW('R', 0x03, int[2]): dir write (1) << 30 | size 8 << 16 | 'R' << 8 | 3.
        assert_eq!(
            RNDADDENTROPY,
            (1 << 30) | (8 << 16) | ((b'R' as u64) << 8) | 3
        );
        assert_eq!(RNDRESEEDCRNG, ((b'R' as u64) << 8) | 7);
    }
}
