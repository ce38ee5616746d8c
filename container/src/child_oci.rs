//! The init's steps that only an OCI bundle needs (see [`crate::oci`]).
//!
//! Like the rest of [`crate::child`], this runs between clone and execve:
//! no allocation, raw syscalls, every string prepared by the parent.
//!
//! Paths the bundle names inside its root (mount destinations, device
//! nodes, symlinks) are resolved with `openat2(RESOLVE_IN_ROOT)` from the
//! root the init has changed into, one component at a time, creating what
//! is missing with `mkdirat` below the fd of the component before it; the
//! mount then goes onto `/proc/self/fd/N` of the resolved fd. A symlink in
//! a hostile image (`/etc -> /`, `/dev -> /host/dev`) is followed as if the
//! root were `/`, so it can never lead out of the container's root (the
//! class of CVE-2021-30465 / runc's "securejoin" fixes).

use crate::capabilities::errno;
use crate::channel::{Channel, ChildMsg};
use crate::child::{check, mount};
use crate::plan::ChildPlan;
use std::ffi::{CStr, CString};

/// A path inside the container's root, split by the parent: `prefixes[i]`
/// is components `0..=i` joined with `/`, `names[i]` is component `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InRoot {
    /// Cumulative prefixes (`dev`, `dev/pts`).
    pub prefixes: Vec<CString>,
    /// The components (`dev`, `pts`).
    pub names: Vec<CString>,
    /// The path as the bundle wrote it, for messages.
    pub shown: String,
}

/// What to make at the last component when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// A directory (mount points of file systems and of directory binds).
    Dir,
    /// An empty file (mount point of a file bind, e.g. `/etc/hosts`).
    File,
}

/// One mount of the bundle's `mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciMount {
    /// Destination.
    pub at: InRoot,
    /// What the destination must be when it is missing.
    pub leaf: Leaf,
    /// Source (a host path for binds).
    pub source: CString,
    /// File system type; `None` for binds.
    pub fstype: Option<CString>,
    /// MS_* flags (no bind, no propagation).
    pub flags: libc::c_ulong,
    /// File-system-specific options.
    pub data: Option<CString>,
    /// A bind mount (MS_BIND), recursive with `rbind`.
    pub bind: bool,
    /// `rbind`.
    pub recursive: bool,
    /// MS_SHARED/MS_SLAVE/MS_PRIVATE/MS_UNBINDABLE (| MS_REC), or 0.
    pub propagation: libc::c_ulong,
}

/// A device node of `linux.devices` or the OCI default set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciDevice {
    /// Where.
    pub at: InRoot,
    /// S_IFCHR, S_IFBLK or S_IFIFO.
    pub kind: libc::mode_t,
    /// Numbers.
    pub major: u32,
    /// Numbers.
    pub minor: u32,
    /// Permission bits.
    pub mode: libc::mode_t,
    /// Owner.
    pub uid: libc::uid_t,
    /// Group.
    pub gid: libc::gid_t,
}

/// The five capability sets of `process.capabilities` as masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSets {
    /// Bounding.
    pub bounding: u64,
    /// Effective.
    pub effective: u64,
    /// Permitted.
    pub permitted: u64,
    /// Inheritable.
    pub inheritable: u64,
    /// Ambient.
    pub ambient: u64,
    /// `/proc/sys/kernel/cap_last_cap`.
    pub last_cap: u32,
}

/// A step of an OCI init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciStep {
    /// setns into a namespace file the parent opened (`linux.namespaces[].path`).
    JoinNamespace {
        /// The open namespace file.
        fd: i32,
        /// Its CLONE_NEW* type.
        nstype: libc::c_int,
        /// `linux.namespaces[].path`, for messages.
        path: String,
    },
    /// Bind the root file system onto itself (recursive), nodev.
    BindRootfs(CString),
    /// `mount(NULL, "/", NULL, flags)`: `linux.rootfsPropagation`.
    RootPropagation(libc::c_ulong),
    /// One of `mounts`.
    Mount(OciMount),
    /// A device node.
    Device(OciDevice),
    /// A symlink `at` -> `target` (the `/dev/fd` family).
    Symlink {
        /// Where.
        at: InRoot,
        /// Its target.
        target: CString,
    },
    /// Remount this mount read-only, keeping its other flags (`/dev`, once populated).
    RemountReadOnly(InRoot),
    /// After pivot_root: remount `/` read-only (`root.readonly`).
    RootReadOnly,
    /// setrlimit (`process.rlimits`).
    Rlimit {
        /// RLIMIT_*.
        resource: u32,
        /// Soft limit.
        soft: u64,
        /// Hard limit.
        hard: u64,
        /// `RLIMIT_NOFILE` etc., for messages.
        name: &'static str,
    },
    /// Write `value` to `path` (sysctls under /proc/sys, oom_score_adj).
    WriteFile {
        /// Absolute path.
        path: CString,
        /// Value.
        value: CString,
    },
    /// Drop everything outside `bounding` from the bounding set (while still root).
    DropBounding(CapSets),
    /// setgroups, setresgid, setresuid (`process.user`), keeping capabilities.
    SetUser {
        /// uid.
        uid: libc::uid_t,
        /// gid.
        gid: libc::gid_t,
        /// `additionalGids`.
        groups: Vec<libc::gid_t>,
    },
    /// capset of effective/permitted/inheritable, then the ambient set.
    SetCaps(CapSets),
    /// `process.terminal`: a new pty in the container's devpts on fds 0-2,
    /// its master sent over `--console-socket`.
    ConsoleSocket {
        /// The connected console socket.
        sock: i32,
        /// Rows and columns.
        size: (u16, u16),
    },
    /// argv\[0\] must resolve to an executable before `create` succeeds.
    CheckExecutable,
    /// A new session keyring of this name (runc's default): keyrings are
    /// not namespaced, so the workload must not inherit the caller's.
    SessionKeyring(CString),
    /// Report "created" to `create`, then block opening the start fifo
    /// until `start` opens it for reading.
    AwaitStartFifo(i32),
}

impl OciStep {
    /// What the step does, naming its path or field.
    pub fn describe(&self) -> String {
        match self {
            OciStep::JoinNamespace { path, .. } => format!("joining namespace {path}"),
            OciStep::BindRootfs(p) => format!("bind-mounting the root {}", show(p)),
            OciStep::RootPropagation(_) => "setting linux.rootfsPropagation".into(),
            OciStep::Mount(m) => format!(
                "mounting {} ({}) on {}",
                show(&m.source),
                m.fstype.as_deref().map_or("bind".into(), show),
                m.at.shown
            ),
            OciStep::Device(d) => format!("creating device {}", d.at.shown),
            OciStep::Symlink { at, .. } => format!("creating symlink {}", at.shown),
            OciStep::RemountReadOnly(at) => format!("remounting {} read-only", at.shown),
            OciStep::RootReadOnly => "remounting the root read-only (root.readonly)".into(),
            OciStep::Rlimit { name, .. } => format!("setting process.rlimits {name}"),
            OciStep::WriteFile { path, .. } => format!("writing {}", show(path)),
            OciStep::DropBounding(_) => "dropping the bounding capability set".into(),
            OciStep::SetUser { uid, gid, .. } => {
                format!("switching to process.user {uid}:{gid}")
            }
            OciStep::SetCaps(_) => "setting process.capabilities".into(),
            OciStep::ConsoleSocket { .. } => "sending the terminal to --console-socket".into(),
            OciStep::CheckExecutable => "looking up process.args[0]".into(),
            OciStep::SessionKeyring(n) => format!("joining a new session keyring {}", show(n)),
            OciStep::AwaitStartFifo(_) => "waiting for `start`".into(),
        }
    }
}

fn show(c: &CStr) -> String {
    String::from_utf8_lossy(c.to_bytes()).into_owned()
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// openat2(AT_FDCWD, path, O_PATH, RESOLVE_IN_ROOT): the cwd (the
/// container's root) is `/` while `path` resolves.
fn open_in_root(path: &CStr) -> Result<i32, i32> {
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a NUL-terminated path and an open_how we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as i32)
    }
}

fn close(fd: i32) {
    // SAFETY: closing an fd this module opened.
    unsafe { libc::close(fd) };
}

/// Resolves `at` in the root, creating missing directories (and `leaf`
/// for the last component); returns an O_PATH fd of it.
fn resolve(at: &InRoot, leaf: Option<Leaf>) -> Result<i32, i32> {
    let n = at.prefixes.len();
    if n == 0 {
        return open_in_root(c".");
    }
    if leaf.is_none() {
        return open_in_root(&at.prefixes[n - 1]);
    }
    let mut parent = open_in_root(c".")?;
    for i in 0..n {
        match open_in_root(&at.prefixes[i]) {
            Ok(fd) => {
                close(parent);
                parent = fd;
                continue;
            }
            Err(libc::ENOENT) => {}
            Err(e) => {
                close(parent);
                return Err(e);
            }
        }
        let last = i + 1 == n;
        let name = at.names[i].as_ptr();
        // SAFETY: *at calls below the O_PATH fd of the component before,
        // with a single-component name: nothing is followed.
        let made = unsafe {
            if last && leaf == Some(Leaf::File) {
                let f = libc::openat(
                    parent,
                    name,
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o644,
                );
                if f >= 0 {
                    libc::close(f);
                    0
                } else {
                    -1
                }
            } else {
                libc::mkdirat(parent, name, 0o755)
            }
        };
        if made != 0 && errno() != libc::EEXIST {
            let e = errno();
            close(parent);
            return Err(e);
        }
        let next = open_in_root(&at.prefixes[i]);
        close(parent);
        parent = next?;
    }
    Ok(parent)
}

/// `/proc/self/fd/N` for `fd`, NUL-terminated in `buf`.
fn fd_path(fd: i32, buf: &mut [u8; 40]) -> &CStr {
    let prefix = b"/proc/self/fd/";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut n = fd.max(0) as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[prefix.len() + i] = digits[len - 1 - i];
    }
    buf[prefix.len() + len] = 0;
    CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"/proc/self/fd/")
}

/// MS_* flags a bind remount must repeat to keep what the mount has.
fn kept_flags(path: &CStr) -> Result<libc::c_ulong, i32> {
    // SAFETY: statvfs writes into a zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above, with a NUL-terminated path.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    let mut f = 0;
    for (st_flag, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
        (libc::ST_RDONLY, libc::MS_RDONLY),
    ] {
        if st.f_flag & st_flag != 0 {
            f |= ms;
        }
    }
    Ok(f)
}

/// Bind-remounts `path` with its flags plus `add`.
fn remount_adding(path: &CStr, add: libc::c_ulong) -> Result<(), i32> {
    let keep = kept_flags(path)?;
    mount(
        c"none",
        path,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | keep | add,
        None,
    )
}

fn do_mount(m: &OciMount) -> Result<(), i32> {
    let fd = resolve(&m.at, Some(m.leaf))?;
    let mut buf = [0u8; 40];
    let target = fd_path(fd, &mut buf);
    let r = if m.bind {
        let rec = if m.recursive { libc::MS_REC } else { 0 };
        mount(&m.source, target, None, libc::MS_BIND | rec, None)
    } else {
        mount(
            &m.source,
            target,
            m.fstype.as_deref(),
            m.flags,
            m.data.as_deref(),
        )
    };
    close(fd);
    r?;
    // The fd names what is now covered: resolve again to reach the new mount.
    let fd = resolve(&m.at, None)?;
    let mut buf = [0u8; 40];
    let target = fd_path(fd, &mut buf);
    let mut r = Ok(());
    if m.bind && m.flags != 0 {
        r = remount_adding(target, m.flags);
    }
    if r.is_ok() && m.propagation != 0 {
        r = mount(c"none", target, None, m.propagation, None);
    }
    close(fd);
    r
}

fn do_device(d: &OciDevice) -> Result<(), i32> {
    let n = d.at.prefixes.len();
    if n == 0 {
        return Err(libc::EINVAL);
    }
    // The parent directory: every component but the last, made if missing.
    let mut parent = open_in_root(c".")?;
    for i in 0..n - 1 {
        let next = match open_in_root(&d.at.prefixes[i]) {
            Err(libc::ENOENT) => {
                // SAFETY: mkdirat below the previous component's fd.
                let r = unsafe { libc::mkdirat(parent, d.at.names[i].as_ptr(), 0o755) };
                if r != 0 && errno() != libc::EEXIST {
                    Err(errno())
                } else {
                    open_in_root(&d.at.prefixes[i])
                }
            }
            other => other,
        };
        close(parent);
        parent = next?;
    }
    let name = d.at.names[n - 1].as_ptr();
    // SAFETY: mknodat/fchownat below the parent's fd with a one-component name.
    let r = unsafe {
        let r = libc::mknodat(
            parent,
            name,
            d.kind | d.mode,
            libc::makedev(d.major, d.minor),
        );
        if r != 0 && errno() == libc::EEXIST {
            0
        } else if r != 0 {
            -1
        } else {
            libc::fchownat(parent, name, d.uid, d.gid, libc::AT_SYMLINK_NOFOLLOW)
        }
    };
    let e = errno();
    close(parent);
    if r != 0 {
        return Err(e);
    }
    Ok(())
}

fn do_symlink(at: &InRoot, target: &CStr) -> Result<(), i32> {
    let n = at.prefixes.len();
    if n == 0 {
        return Err(libc::EINVAL);
    }
    let parent = if n == 1 {
        open_in_root(c".")?
    } else {
        open_in_root(&at.prefixes[n - 2])?
    };
    // SAFETY: symlinkat below the parent's fd with a one-component name.
    let r = unsafe { libc::symlinkat(target.as_ptr(), parent, at.names[n - 1].as_ptr()) };
    let e = errno();
    close(parent);
    if r != 0 && e != libc::EEXIST {
        return Err(e);
    }
    Ok(())
}

fn set_caps(c: &CapSets) -> Result<(), i32> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [
        Data {
            effective: c.effective as u32,
            permitted: c.permitted as u32,
            inheritable: c.inheritable as u32,
        },
        Data {
            effective: (c.effective >> 32) as u32,
            permitted: (c.permitted >> 32) as u32,
            inheritable: (c.inheritable >> 32) as u32,
        },
    ];
    // SAFETY: capset reads the header and two data structs we own.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) } != 0 {
        return Err(errno());
    }
    // SAFETY: prctl with integer arguments (EINVAL on kernels without ambient sets).
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    // The kernel lets only capabilities both permitted and inheritable be
    // ambient; others in the config are skipped, as runc does.
    let ambient = c.ambient & c.permitted & c.inheritable;
    for cap in 0..=c.last_cap.min(63) {
        if ambient & (1u64 << cap) != 0 {
            // SAFETY: prctl with integer arguments.
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            };
            if r != 0 {
                return Err(errno());
            }
        }
    }
    Ok(())
}

fn drop_bounding(c: &CapSets) -> Result<(), i32> {
    for cap in 0..=c.last_cap.min(63) {
        if c.bounding & (1u64 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 && errno() != libc::EINVAL {
            return Err(errno());
        }
    }
    Ok(())
}

fn set_user(uid: libc::uid_t, gid: libc::gid_t, groups: &[libc::gid_t]) -> Result<(), i32> {
    // SAFETY: raw id syscalls with integer arguments and a slice we own.
    unsafe {
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return Err(errno());
        }
        if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
            return Err(errno());
        }
        if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
            return Err(errno());
        }
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0))
    }
}

fn write_file(path: &CStr, value: &CStr) -> Result<(), i32> {
    // SAFETY: open/write/close of a path and value we own.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let b = value.to_bytes();
        let n = libc::write(fd, b.as_ptr().cast(), b.len());
        let e = errno();
        libc::close(fd);
        if n != b.len() as isize {
            return Err(if n < 0 { e } else { libc::EIO });
        }
    }
    Ok(())
}

fn console_socket(sock: i32, size: (u16, u16)) -> Result<(), i32> {
    let spec = crate::console::ConsoleSpec {
        on: [true; 3],
        size,
    };
    let master = crate::console::open_in_child(&spec)?;
    let sent = crate::channel::send_fd(sock, b"duet-console", master);
    close(master);
    close(sock);
    sent
}

fn session_keyring(name: &CStr) -> Result<(), i32> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a NUL-terminated name we own.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    match r {
        r if r >= 0 => Ok(()),
        // A kernel without keys has no keyring to inherit either.
        _ if errno() == libc::ENOSYS => Ok(()),
        _ => Err(errno()),
    }
}

/// Whether argv\[0\] resolves (through the plan's PATH) to something executable.
fn check_executable(plan: &ChildPlan) -> Result<(), i32> {
    let ok = |path: *const libc::c_char| -> Result<(), i32> {
        // SAFETY: stat/access with a NUL-terminated path.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(path, &mut st) != 0 {
                return Err(errno());
            }
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(libc::EACCES);
            }
            check(libc::access(path, libc::X_OK))
        }
    };
    crate::child::search_command(plan, ok)
}

fn await_start(fifo: i32, chan: &Channel, rootfs_ready: u64, pivot_done: u64) -> Result<(), i32> {
    chan.send_raw(
        &ChildMsg::Created {
            rootfs_ready,
            pivot_done,
        }
        .encode(),
    )?;
    let mut buf = [0u8; 40];
    let path = fd_path(fifo, &mut buf);
    // SAFETY: open blocks until `start` opens the fifo for reading; then
    // one byte tells it the workload goes on.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        let e = errno();
        libc::close(fd);
        libc::close(fifo);
        if n != 1 {
            return Err(e);
        }
    }
    Ok(())
}

/// Runs one OCI step.
pub fn run(
    step: &OciStep,
    plan: &ChildPlan,
    chan: &Channel,
    rootfs_ready: u64,
    pivot_done: u64,
) -> Result<(), i32> {
    match step {
        // SAFETY: setns on an fd the parent opened, with its own type.
        OciStep::JoinNamespace { fd, nstype, .. } => check(unsafe { libc::setns(*fd, *nstype) }),
        OciStep::BindRootfs(p) => {
            mount(p, p, None, libc::MS_BIND | libc::MS_REC, None)?;
            remount_adding(p, libc::MS_NODEV)
        }
        OciStep::RootPropagation(flags) => mount(c"none", c"/", None, *flags, None),
        OciStep::Mount(m) => do_mount(m),
        OciStep::Device(d) => do_device(d),
        OciStep::Symlink { at, target } => do_symlink(at, target),
        OciStep::RemountReadOnly(at) => {
            let fd = resolve(at, None)?;
            let mut buf = [0u8; 40];
            let r = remount_adding(fd_path(fd, &mut buf), libc::MS_RDONLY);
            close(fd);
            r
        }
        OciStep::RootReadOnly => remount_adding(c"/", libc::MS_RDONLY | libc::MS_NODEV),
        OciStep::Rlimit {
            resource,
            soft,
            hard,
            ..
        } => {
            let lim = libc::rlimit {
                rlim_cur: *soft,
                rlim_max: *hard,
            };
            // SAFETY: setrlimit reads the struct we own.
            check(unsafe { libc::setrlimit(*resource as _, &lim) })
        }
        OciStep::WriteFile { path, value } => write_file(path, value),
        OciStep::DropBounding(c) => drop_bounding(c),
        OciStep::SetUser { uid, gid, groups } => set_user(*uid, *gid, groups),
        OciStep::SetCaps(c) => set_caps(c),
        OciStep::ConsoleSocket { sock, size } => console_socket(*sock, *size),
        OciStep::CheckExecutable => check_executable(plan),
        OciStep::SessionKeyring(name) => session_keyring(name),
        OciStep::AwaitStartFifo(fd) => await_start(*fd, chan, rootfs_ready, pivot_done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths_are_spelled_out() {
        let mut b = [0u8; 40];
        assert_eq!(fd_path(7, &mut b).to_str().unwrap(), "/proc/self/fd/7");
        let mut b = [0u8; 40];
        assert_eq!(
            fd_path(1234, &mut b).to_str().unwrap(),
            "/proc/self/fd/1234"
        );
        let mut b = [0u8; 40];
        assert_eq!(fd_path(0, &mut b).to_str().unwrap(), "/proc/self/fd/0");
    }
}
