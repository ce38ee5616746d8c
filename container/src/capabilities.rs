//! The capability set a container keeps: the OCI/Docker default.
//!
//! The parent computes the masks ([`CapabilityPlan::for_this_process`]); the
//! child applies them with raw syscalls ([`CapabilityPlan::apply`]), because
//! it runs between clone and execve where it must not allocate.

use caps::Capability;

/// Capabilities a container keeps (runc's and Docker's default set).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Bit mask (bit N = capability N) of [`DEFAULT_CAPABILITIES`].
pub fn default_mask() -> u64 {
    DEFAULT_CAPABILITIES.iter().fold(0, |m, c| m | c.bitmask())
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Which capabilities the child keeps, resolved in the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilityPlan {
    /// Mask kept in the effective, permitted, inheritable and bounding sets.
    pub keep: u64,
    /// Highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`).
    pub last_cap: u32,
}

/// Reads the calling thread's permitted set.
fn permitted_now() -> u64 {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData structs (version 3) into `data`, which we own.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if r != 0 {
        return u64::MAX;
    }
    u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32)
}

impl CapabilityPlan {
    /// The default set, limited to what this process holds (the development
    /// hosts' root lacks CAP_SYS_RESOURCE; asking for a capability we do not
    /// have would make capset fail).
    pub fn for_this_process() -> CapabilityPlan {
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        CapabilityPlan {
            keep: default_mask() & permitted_now(),
            last_cap,
        }
    }

    /// Drops everything outside `keep` from the bounding set, clears the
    /// ambient set, and sets effective = permitted = inheritable = `keep`.
    /// Raw syscalls only: safe between clone and execve. Returns the errno.
    pub fn apply(&self) -> Result<(), i32> {
        for cap in 0..=self.last_cap {
            if self.keep & (1u64 << cap) != 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments only.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            // EINVAL: a capability this kernel does not know; nothing to drop.
            if r != 0 && errno() != libc::EINVAL {
                return Err(errno());
            }
        }
        // SAFETY: prctl with integer arguments only. Fails with EINVAL on
        // kernels without ambient capabilities (< 4.3), which then have none to clear.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
        let hdr = CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        };
        let lo = self.keep as u32;
        let hi = (self.keep >> 32) as u32;
        let data = [
            CapData {
                effective: lo,
                permitted: lo,
                inheritable: lo,
            },
            CapData {
                effective: hi,
                permitted: hi,
                inheritable: hi,
            },
        ];
        // SAFETY: capset reads the header and two CapData structs we own.
        let r = unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) };
        if r != 0 {
            return Err(errno());
        }
        Ok(())
    }
}

/// The calling thread's errno.
pub(crate) fn errno() -> i32 {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_is_the_oci_one() {
        // Bits: CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6,
        // SETUID 7, SETPCAP 8, NET_BIND_SERVICE 10, NET_RAW 13, SYS_CHROOT 18,
        // MKNOD 27, AUDIT_WRITE 29, SETFCAP 31.
        let expected: u64 = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31]
            .iter()
            .fold(0, |m, b| m | (1 << b));
        assert_eq!(default_mask(), expected);
        assert_eq!(default_mask() & Capability::CAP_SYS_ADMIN.bitmask(), 0);
        assert_eq!(default_mask() & Capability::CAP_SYS_MODULE.bitmask(), 0);
        assert_eq!(default_mask() & Capability::CAP_NET_ADMIN.bitmask(), 0);
    }

    #[test]
    fn plan_never_asks_for_more_than_we_hold() {
        let p = CapabilityPlan::for_this_process();
        assert_eq!(p.keep & !default_mask(), 0);
        assert_eq!(p.keep & !permitted_now(), 0);
        assert!(p.last_cap >= 31);
    }

    /// Applies the plan in a forked child and checks what the kernel reports.
    #[test]
    fn apply_drops_sys_admin_everywhere() {
        if permitted_now() & Capability::CAP_SYS_ADMIN.bitmask() == 0
            && duet_shared::testing::skip(
                "apply_drops_sys_admin_everywhere",
                "needs root with CAP_SYS_ADMIN to show the drop",
            )
        {
            return;
        }
        let plan = CapabilityPlan::for_this_process();
        // SAFETY: the child only makes raw syscalls and _exits; no allocation, no locks.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match plan.apply() {
                Err(_) => 10,
                Ok(()) => {
                    let eff = permitted_now();
                    // SAFETY: prctl with integer arguments only.
                    let bnd_admin = unsafe {
                        libc::prctl(
                            libc::PR_CAPBSET_READ,
                            Capability::CAP_SYS_ADMIN.index() as libc::c_ulong,
                            0,
                            0,
                            0,
                        )
                    };
                    // SAFETY: same.
                    let bnd_chown = unsafe {
                        libc::prctl(
                            libc::PR_CAPBSET_READ,
                            Capability::CAP_CHOWN.index() as libc::c_ulong,
                            0,
                            0,
                            0,
                        )
                    };
                    if eff != plan.keep {
                        11
                    } else if bnd_admin != 0 {
                        12
                    } else if bnd_chown != 1 {
                        13
                    } else {
                        0
                    }
                }
            };
            // SAFETY: _exit never returns and runs no destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child we just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0, "child check failed");
    }
}
