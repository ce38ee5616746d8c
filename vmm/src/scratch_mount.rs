//! Reading a kept VM instance's writable layer on the host, for `duet commit`.
//!
//! A VM's writable layer lives on its scratch disk (ext4, `upper/` and
//! `work/` at its root, see `disks`). To read it, a forked child enters a
//! private mount namespace, mounts the disk read-only through a loop device
//! (util-linux `mount -o loop,ro`, which sets the loop device to detach on
//! unmount) and runs the caller's function on `upper/`. The mount exists only
//! in that namespace and disappears with the child, so nothing is left on the
//! host even if duet is killed meanwhile.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors reading a scratch disk.
#[derive(Debug, thiserror::Error)]
pub enum ScratchMountError {
    /// The instance has no scratch disk.
    #[error("{} does not exist: this VM instance kept no writable layer (it ran from an initramfs)", path.display())]
    NoScratch {
        /// Expected scratch disk path.
        path: PathBuf,
    },
    /// fork failed.
    #[error("cannot fork to mount {}", path.display())]
    Fork {
        /// The scratch disk.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The child failed (its message is on stderr).
    #[error("reading the writable layer on {} failed (exit status {status})", path.display())]
    Child {
        /// The scratch disk.
        path: PathBuf,
        /// Child's exit status.
        status: i32,
    },
}

fn child_main(
    scratch: &Path,
    f: &mut dyn FnMut(&Path) -> Result<(), String>,
) -> Result<(), String> {
    // SAFETY: unshare affects only this (single-threaded, freshly forked) process.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNS): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: static NUL-terminated strings; makes our mounts invisible to the host.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(format!(
            "making / private: {}",
            std::io::Error::last_os_error()
        ));
    }
    let dir = std::env::temp_dir().join(format!("duet-scratch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out = Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,ro,nosuid,nodev,noexec"])
        .arg(scratch)
        .arg(&dir)
        .output();
    let result = match out {
        Ok(o) if o.status.success() => {
            let r = f(&dir.join("upper"));
            let _ = Command::new("umount").arg(&dir).status();
            r
        }
        Ok(o) => Err(format!(
            "mount -o loop,ro {}: {}",
            scratch.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run mount (util-linux): {e}")),
    };
    let _ = std::fs::remove_dir(&dir);
    result
}

/// Runs `f` on the `upper/` directory of the VM instance's scratch disk
/// `scratch`, in a forked child (see the module docs). `f`'s effects must
/// be on files (it runs in the child); its error text is printed there.
pub fn with_upper(
    scratch: &Path,
    f: &mut dyn FnMut(&Path) -> Result<(), String>,
) -> Result<(), ScratchMountError> {
    if !scratch.is_file() {
        return Err(ScratchMountError::NoScratch {
            path: scratch.to_path_buf(),
        });
    }
    // SAFETY: duet calls this from its single-threaded CLI; the child only
    // runs ordinary code and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(ScratchMountError::Fork {
            path: scratch.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        let code = match child_main(scratch, f) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("duet: {e}");
                1
            }
        };
        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child we just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    if code != 0 {
        return Err(ScratchMountError::Child {
            path: scratch.to_path_buf(),
            status: code,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_scratch_is_named() {
        let e = with_upper(Path::new("/nonexistent/scratch.ext4"), &mut |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/scratch.ext4"), "{e}");
    }

    #[test]
    fn reads_upper_of_an_ext4_image() {
        let test = "reads_upper_of_an_ext4_image";
        if duet_shared::testing::skip_unless_root(test, "loop mounts")
            || duet_shared::testing::skip_unless_program(test, "mkfs.ext4", "e2fsprogs")
        {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("upper/etc")).unwrap();
        std::fs::create_dir_all(src.join("work")).unwrap();
        std::fs::write(src.join("upper/etc/from-vm"), b"hello").unwrap();
        let img = t.path().join("scratch.ext4");
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&src)
            .arg(&img)
            .arg("8M")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let out = t.path().join("seen");
        let out2 = out.clone();
        with_upper(&img, &mut move |upper| {
            let data = std::fs::read(upper.join("etc/from-vm")).map_err(|e| e.to_string())?;
            std::fs::write(&out2, data).map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"hello");
        // Nothing stays mounted on the host.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains("duet-scratch-"), "{mounts}");
    }
}
