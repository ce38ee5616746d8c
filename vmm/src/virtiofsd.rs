//! The virtio-fs backend process: virtiofsd sharing one host directory on
//! a vhost-user socket ([`crate::devices::virtio::fs`] is the device side).
//!
//! duet starts it outside the VMM's jail, as root: virtiofsd sandboxes
//! itself (new mount, pid and net namespaces and a pivot_root into the
//! shared directory, its own seccomp filter), so every path a guest asks
//! for is resolved inside the shared directory, symlinks included; duet
//! makes that directory a `nodev,nosuid` mount for it first
//! ([`confine_share`]: no device node in the share opens a host device,
//! and a read-only share is read-only there). It ends
//! when the VMM closes the connection (the VMM holds the only one), and with
//! the thread that started it (parent-death signal), so a `kill -9` of duet
//! leaves no backend behind.
//!
//! Two implementations exist: QEMU's C virtiofsd (Debian bookworm's
//! `qemu-system-common`, `/usr/lib/qemu/virtiofsd`) and the Rust one
//! (package `virtiofsd`, `/usr/libexec/virtiofsd`); their option syntax
//! differs, so duet asks `--help` which one it has.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the virtiofsd binary explicitly.
pub const ENV: &str = "DUET_VIRTIOFSD";
/// Where the Debian packages install it, in the order tried.
pub const KNOWN_PATHS: &[&str] = &["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];
/// How long virtiofsd gets to create its socket.
const START_WAIT: Duration = Duration::from_secs(10);

/// Errors finding or starting virtiofsd.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    /// No binary anywhere duet looks.
    #[error("no virtiofsd found (looked at ${ENV}, {}, and virtiofsd on PATH): apt-get install qemu-system-common (bookworm) or virtiofsd", KNOWN_PATHS.join(", "))]
    NotFound,
    /// It could not be started.
    #[error("cannot start virtiofsd {}", path.display())]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The directory to share cannot be inspected (missing, not accessible).
    #[error("cannot share {} over virtio-fs", dir.display())]
    Share {
        /// The directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// It exited or made no socket in time.
    #[error("virtiofsd sharing {} did not come up ({why}); its log: {}", source_dir.display(), log.display())]
    NotUp {
        /// The shared directory.
        source_dir: PathBuf,
        /// What happened.
        why: String,
        /// Its stderr.
        log: PathBuf,
    },
}

/// The virtiofsd binary: `$DUET_VIRTIOFSD`, a known path, or `PATH`.
pub fn find() -> Result<PathBuf, VirtiofsdError> {
    if let Some(p) = std::env::var_os(ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(VirtiofsdError::NotFound)
        };
    }
    KNOWN_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| duet_shared::testing::find_program("virtiofsd"))
        .ok_or(VirtiofsdError::NotFound)
}

/// A running virtiofsd; dropping it ends it (if the VMM did not already).
#[derive(Debug)]
pub struct Virtiofsd {
    child: Child,
    socket: PathBuf,
}

fn is_rust_virtiofsd(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--shared-dir"))
}

/// The arguments for `bin` to share `dir` on `socket`.
fn args(rust: bool, dir: &Path, socket: &Path, read_only: bool) -> Vec<String> {
    let socket = format!("--socket-path={}", socket.display());
    if rust {
        let mut a = vec![
            socket,
            format!("--shared-dir={}", dir.display()),
            "--cache=auto".into(),
            "--sandbox=namespace".into(),
            "--log-level=error".into(),
        ];
        if read_only {
            a.push("--readonly".into());
        }
        a
    } else {
        // The C virtiofsd has no read-only mode: the guest mounts the share
        // read-only instead (duet_init's FsRoot).
        vec![
            socket,
            "-o".into(),
            format!("source={}", dir.display()),
            "-o".into(),
            "cache=auto".into(),
            "-o".into(),
            "sandbox=namespace".into(),
            "-o".into(),
            "log_level=err".into(),
        ]
    }
}

/// The flags of the share's bind in virtiofsd's namespace: `nodev`,
/// `nosuid`, what the directory's mount already has (a remount would drop
/// `ro` or `noexec` otherwise), and `ro` for a read-only share, so that a
/// guest which remounts its side read-write still cannot write (QEMU's C
/// virtiofsd has no read-only mode of its own).
fn share_flags(dir: &Path, read_only: bool) -> std::io::Result<libc::c_ulong> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs fills the struct; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NODEV | libc::MS_NOSUID;
    for (st_flag, ms_flag) in [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    Ok(flags)
}

/// In the (forked, not yet exec'd) backend: a mount namespace of its own
/// in which the shared directory is a bind of itself with `flags`
/// ([`share_flags`]: `nodev,nosuid`, read-only if asked).
///
/// Why: virtiofsd opens what the guest opens, with its own privileges, and
/// keeps CAP_MKNOD; a device node in the share (one the guest made, or one
/// an image's layer carried) would otherwise open the *host's* device (a
/// guest reading the host's disk through `mknod sda b 8 0`). On a nodev
/// mount the kernel refuses to open device nodes at all. The host's own
/// mounts are untouched (the namespace is private and ends with virtiofsd).
fn confine_share(dir: &std::ffi::CStr, flags: libc::c_ulong) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: unshare and mount with valid C strings or nulls.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            std::ptr::null(),
            dir.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        ))
    }
}

/// `__SO_ACCEPTCON` in /proc/net/unix's Flags column: the socket listens.
const SO_ACCEPTCON: u32 = 1 << 16;

/// Whether a Unix socket bound at `path` (absolute) listens in this
/// network namespace, from /proc/net/unix
/// (`Num RefCount Protocol Flags Type St Inode Path`).
fn listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return path.exists();
    };
    listening_in(&table, path)
}

fn listening_in(table: &str, path: &Path) -> bool {
    let want = path.as_os_str().as_encoded_bytes();
    table.lines().skip(1).any(|line| {
        // Seven columns (the inode is space-padded), then " " and the path.
        let mut rest = line;
        let mut cols = Vec::with_capacity(7);
        for _ in 0..7 {
            rest = rest.trim_start_matches(' ');
            let end = rest.find(' ').unwrap_or(rest.len());
            cols.push(&rest[..end]);
            rest = &rest[end..];
        }
        rest.strip_prefix(' ').is_some_and(|p| p.as_bytes() == want)
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & SO_ACCEPTCON != 0)
    })
}

impl Virtiofsd {
    /// Starts `bin` sharing `dir` on `socket` (replaced if it exists);
    /// its stderr goes to `log`. Returns once the socket listens.
    pub fn start(
        bin: &Path,
        dir: &Path,
        socket: &Path,
        log: &Path,
        read_only: bool,
    ) -> Result<Virtiofsd, VirtiofsdError> {
        let _ = std::fs::remove_file(socket);
        let spawn_err = |source| VirtiofsdError::Spawn {
            path: bin.to_path_buf(),
            source,
        };
        // Absolute, so the path the kernel lists in /proc/net/unix is the
        // one `listening` looks for.
        let socket = &std::path::absolute(socket).map_err(spawn_err)?;
        let log_file = std::fs::File::create(log).map_err(spawn_err)?;
        let mut cmd = Command::new(bin);
        cmd.args(args(is_rust_virtiofsd(bin), dir, socket, read_only))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let dir_c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| {
            spawn_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "NUL in the shared directory's path",
            ))
        })?;
        let flags = share_flags(dir, read_only).map_err(|source| VirtiofsdError::Share {
            dir: dir.to_path_buf(),
            source,
        })?;
        // SAFETY: the closure only makes async-signal-safe system calls
        // (prctl, unshare, mount) on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                confine_share(&dir_c, flags)
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        let mut d = Virtiofsd {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + START_WAIT;
        let not_up = |why: String| VirtiofsdError::NotUp {
            source_dir: dir.to_path_buf(),
            why,
            log: log.to_path_buf(),
        };
        // The file appears at bind(2), before listen(2): a connect in
        // between is refused. Probing with a connect would use up the one
        // session virtiofsd serves, so ask the kernel whether it listens.
        while !listening(socket) {
            if let Ok(Some(status)) = d.child.try_wait() {
                return Err(not_up(format!("it exited with {status}")));
            }
            if Instant::now() >= deadline {
                return Err(not_up(format!("no listening socket after {START_WAIT:?}")));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(d)
    }

    /// Its vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `grace` for it to end by itself (it does once the VMM
    /// disconnects), then kills it.
    pub fn stop(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_listening_socket_at_the_path_counts() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00000000 0001 01    51 /run/a.sock\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 52 /run/b.sock\n\
            0000000000000000: 00000002 00000000 00010000 0001 01    53 /run/b.sock2\n";
        assert!(!super::listening_in(table, Path::new("/run/a.sock")));
        assert!(super::listening_in(table, Path::new("/run/b.sock")));
        assert!(!super::listening_in(table, Path::new("/run/b")));
        assert!(!super::listening_in(table, Path::new("/run/c.sock")));
    }

    use super::*;

    #[test]
    fn both_implementations_get_their_own_syntax() {
        let c = args(false, Path::new("/b/rootfs"), Path::new("/s.sock"), true);
        assert!(c.contains(&"source=/b/rootfs".to_string()), "{c:?}");
        assert!(c.contains(&"--socket-path=/s.sock".to_string()));
        let r = args(true, Path::new("/b/rootfs"), Path::new("/s.sock"), true);
        assert!(r.contains(&"--shared-dir=/b/rootfs".to_string()), "{r:?}");
        assert!(r.contains(&"--readonly".to_string()));
    }

    #[test]
    fn starts_and_ends_with_its_socket() {
        let test = "virtiofsd::tests::starts_and_ends_with_its_socket";
        if duet_shared::testing::skip_unless_root(test, "virtiofsd's namespace sandbox") {
            return;
        }
        let Ok(bin) = find() else {
            duet_shared::testing::skip(test, "no virtiofsd (apt-get install qemu-system-common)");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let socket = d.path().join("fs.sock");
        let log = d.path().join("virtiofsd.log");
        let v = Virtiofsd::start(&bin, d.path(), &socket, &log, false).unwrap();
        assert!(socket.exists());
        let pid = v.pid();
        drop(v);
        assert!(!socket.exists());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        let e = Virtiofsd::start(&bin, &d.path().join("missing"), &socket, &log, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains("virtio-fs"), "{e}");
    }
}
