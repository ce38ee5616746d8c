//! A private OCI runtime root for the tests that drive `duet-runc`: a
//! `duet-runc` symlink, busybox bundles, and helpers to reap reparented
//! inits and find what a container left.

use super::{duet_bin, stderr, stdout};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A state root, a `duet-runc` symlink and a busybox bundle, all removed at the end.
pub struct Rt {
    pub dir: tempfile::TempDir,
}

pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

impl Rt {
    pub fn new() -> Rt {
        become_subreaper();
        let dir = tempfile::Builder::new()
            .prefix("duet-oci-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::os::unix::fs::symlink(duet_bin(), dir.path().join("duet-runc")).unwrap();
        Rt { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A bundle `name` with runc spec's defaults running `args`, edited by `edit`.
    pub fn bundle(
        &self,
        name: &str,
        args: &[&str],
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> PathBuf {
        let b = self.dir.path().join(name);
        let rootfs = b.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        duet_bench::oci::make_busybox_rootfs(&rootfs, Path::new("/bin/busybox")).unwrap();
        for a in ["tty", "stty", "grep", "readlink", "mkdir", "touch", "trap"] {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
        }
        let spec = duet_bench::oci::BundleSpec::new(&rootfs, args);
        let mut config = duet_bench::oci::bundle_config(&spec);
        edit(&mut config);
        std::fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        b
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.dir.path().join("duet-runc"));
        c.arg("--root").arg(self.root()).args(args);
        c
    }

    /// Runs duet-runc with its output in files, waiting for its exit only:
    /// a created init inherits stdout and stderr and holds them open (as it
    /// holds a shim's pipes), so reading them to end-of-file would wait for
    /// the container.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_cmd(self.cmd(args))
    }

    pub fn run_cmd(&self, mut cmd: Command) -> Output {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (o, e) = (
            self.dir.path().join(format!("cmd{n}.out")),
            self.dir.path().join(format!("cmd{n}.err")),
        );
        let status = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&o).unwrap())
            .stderr(std::fs::File::create(&e).unwrap())
            .status()
            .unwrap();
        Output {
            status,
            stdout: std::fs::read(&o).unwrap(),
            stderr: std::fs::read(&e).unwrap(),
        }
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "duet-runc {args:?}: {}", stderr(&o));
        stdout(&o)
    }

    /// `create` of `bundle` as `id`; the init's pid.
    pub fn create(&self, bundle: &Path, id: &str) -> i32 {
        let out = self.dir.path().join(format!("{id}.out"));
        self.create_logged(bundle, id, &out)
            .unwrap_or_else(|e| panic!("duet-runc create {id}: {e}"))
    }

    /// `create` of `bundle` as `id` with the init's stdout (and the
    /// workload's) in the file `out` (files, not pipes: the init holds
    /// them until it ends); the init's pid, or create's stderr.
    pub fn create_logged(&self, bundle: &Path, id: &str, out: &Path) -> Result<i32, String> {
        let pid_file = self.dir.path().join(format!("{id}.pid"));
        let err = self.dir.path().join(format!("{id}.create-err"));
        let status = self
            .cmd(&[
                "create",
                "--bundle",
                bundle.to_str().unwrap(),
                "--pid-file",
                pid_file.to_str().unwrap(),
                id,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        if !status.success() {
            return Err(std::fs::read_to_string(&err).unwrap_or_default());
        }
        Ok(read_pid(&pid_file))
    }

    pub fn status(&self, id: &str) -> String {
        let s: serde_json::Value = serde_json::from_str(&self.ok(&["state", id])).unwrap();
        s["status"].as_str().unwrap().to_string()
    }
}

impl Drop for Rt {
    /// A failed test leaves no container: delete --force whatever is left.
    fn drop(&mut self) {
        for e in std::fs::read_dir(self.root())
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = self.run(&["delete", "--force", &id]);
        }
    }
}

/// The pid in a pid file.
pub fn read_pid(p: &Path) -> i32 {
    std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
}

/// Reaps `pid` (a reparented init); its exit code, or 128+signal.
pub fn reap(pid: i32, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a process reparented to us (we are a subreaper).
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            });
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// cgroup directories `duet/<id>` (the default cgroupsPath) in any hierarchy.
pub fn cgroups_named(id: &str) -> Vec<PathBuf> {
    super::cgroup_dirs_where(|parent, name| {
        parent.file_name().is_some_and(|d| d == "duet") && name == id
    })
}

pub fn mounts_under(p: &Path) -> Vec<String> {
    let p = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&p))
        .map(String::from)
        .collect()
}

/// Receives one fd over a Unix stream (SCM_RIGHTS).
pub fn recv_fd(sock: &std::os::unix::net::UnixStream) -> OwnedFd {
    let mut buf = [0u8; 64];
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: recvmsg into buffers we own; CMSG_* stay within cbuf.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, 0);
        assert!(n > 0, "recvmsg: {}", std::io::Error::last_os_error());
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(!cmsg.is_null(), "no fd received");
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
        OwnedFd::from_raw_fd(fd)
    }
}
