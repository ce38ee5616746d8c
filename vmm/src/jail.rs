//! The VMM jail, after Firecracker's jailer (`src/jailer/src/env.rs`,
//! `docs/jailer.md`): the process that runs the guest holds nothing a
//! guest which escaped into it could use against the host.
//!
//! Why a forked child and not a re-exec: `duet run` hosts the VMM in its own
//! process, and the VMM's boot steps, console sink and report already work
//! there. A `fork` keeps all of that (no second entry point, no
//! serialised `VmConfig`, console output straight to the inherited stdout),
//! and the parent stays outside the jail to relay signals, enforce the
//! deadline and clean up the instance as before. Only the result comes back
//! over a pipe (report and outcome as JSON). The child never returns into
//! the caller: it `_exit`s. glibc's `fork` leaves malloc usable in the
//! child even when the caller has other threads (a test harness); the child
//! takes no std lock another thread could have held (no std stdout or
//! environment: the plan is computed before the fork, console output goes
//! through a raw descriptor, `FdSink`).
//!
//! Cost: a few milliseconds natively (`jail_setup_us` 1-8 ms on a loaded
//! 2-core host, most of it the new network namespace and the mounts); about
//! 140 ms inside the nested-KVM testbed, which is 50-100x slower.
//!
//! The steps, in Firecracker's order where it has one:
//! 1. parent: `unshare(CLONE_NEWPID)` on its own thread, `fork` (the child
//!    is PID 1 of a new PID namespace), `setns` back to its PID namespace;
//! 2. child: parent-death signal SIGKILL (so `kill -9 duet` takes the VMM
//!    with it); close every inherited descriptor but stdin, stdout, stderr,
//!    its two pipes and the agent's listening socket (bound by the parent
//!    before the fork, [`crate::agent`]; the virtio-vsock device's host
//!    side) (`close_range`: issue 9 class 2); `setsid`, so the
//!    caller's terminal is not its controlling terminal (no TIOCSTI);
//! 3. new mount, IPC, UTS and network namespaces (the VMM has no NIC;
//!    [`JailConfig::host_network`] keeps the host's for one that will);
//!    join the cgroups asked for;
//! 4. `/` becomes recursively private, so nothing mounted below reaches the
//!    host and everything vanishes with the namespace; a small tmpfs on
//!    `<instance>/jail` receives read-only bind mounts of the kernel,
//!    initrd and read-only disks, read-write binds of writable disks, and a
//!    bind of `/dev/kvm`; the tmpfs is remounted read-only; `pivot_root`
//!    into it and detach the old root;
//! 5. as root still, inside the jail: open `/dev/kvm`, create the VM, its
//!    memory, devices and vCPUs, load the kernel (so no file in the jail
//!    has to be chowned and the host's `/dev/kvm` keeps its owner);
//!    `/proc/self/smaps` and `status` are opened before the pivot, for the
//!    end-of-run memory figures ([`ProcFiles`]); the jail has no `/proc`;
//! 6. right before the vCPUs start: empty the bounding and ambient sets,
//!    `setgroups([])`, `setresgid`/`setresuid` to the jail's ids, zero
//!    every remaining capability set, `PR_SET_NO_NEW_PRIVS`, not dumpable,
//!    re-arm the parent-death signal (a uid change clears it) and check the
//!    parent is still there;
//! 7. the per-thread seccomp filter of [`crate::seccomp`] as before (vCPU
//!    and console threads; the thread waiting for the VM's end is not
//!    filtered, as before the jail).
//!
//! The jail's uid and gid: `DUET_VMM_UID` / `DUET_VMM_GID`, else a fresh
//! uid per VM from [`UID_BASE`]..[`UID_BASE`]+[`UID_COUNT`] (gid = uid):
//! the first id from a hash of the instance id on that no running VM of the
//! same state root holds ([`lease_fresh_id`]: a `flock` in
//! `<state_root>/jail-ids`, released when duet ends, kill -9 included).
//! Such ids own no file on the host. VMs of different state roots may meet
//! on an id; even then each VMM is non-dumpable and in its own PID
//! namespace, so it cannot ptrace or signal the other.
//!
//! `DUET_VMM_JAIL=off` runs the VMM in duet's process as before (debugging
//! only: a guest that escapes into it is then root on the host).

use crate::memory_usage::ProcFiles;
use crate::{VmConfig, VmEnd, VmOutcome, VmmError};
use duet_shared::report::RunReport;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `on` (default) or `off`: whether `duet run --isolation vm` jails its VMM.
pub const JAIL_ENV: &str = "DUET_VMM_JAIL";
/// The jail's uid (default: a fresh one per VM, see [`fresh_id`]).
pub const UID_ENV: &str = "DUET_VMM_UID";
/// The jail's gid (default: the jail's uid).
pub const GID_ENV: &str = "DUET_VMM_GID";
/// First uid (and gid) of the range fresh jail ids come from.
pub const UID_BASE: u32 = 900_000;
/// How many ids that range holds.
pub const UID_COUNT: u32 = 100_000;
/// Name of the jail root under the instance directory.
pub const JAIL_DIR: &str = "jail";
/// Name of the file under the instance directory holding the VMM's host PID.
pub const PID_FILE: &str = "vmm.pid";
/// The hostname in the VMM's UTS namespace.
pub const HOSTNAME: &str = "duet-vmm";

/// After a stop signal was passed on, how long the VMM gets before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// Longest the jail's parent sleeps without an event: a safety net only
/// (the result pipe, a pidfd and the signal eventfd wake it).
const WAIT_CAP: Duration = Duration::from_secs(1);
/// Beyond the VM's own timeout, how long the parent waits before SIGKILL
/// (boot set-up in the child, which starts the VM's clock later, plus the
/// vCPUs' 5 s stop grace).
const DEADLINE_GRACE: Duration = Duration::from_secs(15);

/// Errors setting up or running the jailed VMM.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// `DUET_VMM_JAIL` has a value duet does not know.
    #[error("{JAIL_ENV}={0:?}: use `on` or `off`")]
    Mode(String),
    /// `DUET_VMM_UID` / `DUET_VMM_GID` is not a usable id.
    #[error("{var}={value:?}: expected a number from 1 to 4294967294 (not root)")]
    Id {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The jail needs root.
    #[error(
        "the VMM jail needs root (namespaces, mounts, a uid switch); run duet as root, \
         or set {JAIL_ENV}=off to run the VMM unjailed with your own privileges"
    )]
    NotRoot,
    /// The jail directory could not be made.
    #[error("creating the jail directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A step of the parent's side failed.
    #[error("{what}")]
    Setup {
        /// The step.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The jailed VMM reported an error (its whole cause chain).
    #[error("{0}")]
    Vmm(String),
    /// The jailed VMM ended without reporting a result.
    #[error("the jailed VMM (pid {pid}) ended without a result: {status}")]
    Died {
        /// Its host PID.
        pid: i32,
        /// How it ended.
        status: String,
    },
    /// Its result could not be parsed.
    #[error("reading the jailed VMM's result")]
    Result(#[source] serde_json::Error),
}

/// Whether the VMM runs jailed (`DUET_VMM_JAIL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailMode {
    /// Jailed (the default).
    On,
    /// In duet's own process with duet's privileges.
    Off,
}

impl JailMode {
    /// The mode `DUET_VMM_JAIL` asks for (unset or empty: [`JailMode::On`]).
    pub fn from_env() -> Result<JailMode, JailError> {
        match std::env::var(JAIL_ENV) {
            Err(_) => Ok(JailMode::On),
            Ok(v) => match v.as_str() {
                "" | "on" | "1" => Ok(JailMode::On),
                "off" | "0" => Ok(JailMode::Off),
                _ => Err(JailError::Mode(v)),
            },
        }
    }
}

/// Where and as whom the VMM is jailed.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// Empty directory the jail's root is mounted on (`<instance>/jail`).
    pub dir: PathBuf,
    /// uid the VMM runs the guest as.
    pub uid: u32,
    /// gid the VMM runs the guest as.
    pub gid: u32,
    /// Where the parent writes the VMM's host PID while it runs.
    pub pid_file: Option<PathBuf>,
    /// `cgroup.procs` files the VMM writes itself into before it drops
    /// its privileges (the instance's cgroups).
    pub cgroup_procs: Vec<PathBuf>,
    /// Stay in the host's network namespace (for a VM with a NIC; duet's
    /// VMM has none yet, so [`JailConfig::for_instance`] says false).
    pub host_network: bool,
    /// The lease that keeps `uid` this VM's alone while the config lives
    /// (None when the ids came from the environment).
    pub lease: Option<std::sync::Arc<IdLease>>,
    /// Told the VMM's host PID as soon as it is forked (the lifecycle's
    /// `pid`, see [`crate::runtime`]).
    pub notify_pid: Option<std::sync::mpsc::Sender<i32>>,
}

/// A jail id held by this process: an exclusive `flock` on
/// `<dir>/<id>.lock`, released when the lease is dropped or the process
/// dies (kill -9 included), so no two running VMs of one state root share
/// an id. The lock files stay (empty, one per id ever used).
#[derive(Debug)]
pub struct IdLease {
    /// The id.
    pub id: u32,
    _file: std::fs::File,
}

/// Leases the first free id from [`fresh_id`]`(seed)` on (wrapping inside
/// the range), with its lock file in `dir`.
pub fn lease_fresh_id(dir: &Path, seed: &str) -> Result<IdLease, JailError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir_err = |source| JailError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(dir_err)?;
    let first = fresh_id(seed) - UID_BASE;
    for k in 0..UID_COUNT {
        let id = UID_BASE + (first + k) % UID_COUNT;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{id}.lock")))
            .map_err(dir_err)?;
        // SAFETY: flock on a descriptor we own; LOCK_NB never blocks.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(IdLease { id, _file: file });
        }
    }
    Err(JailError::Dir {
        path: dir.to_path_buf(),
        source: std::io::Error::other(format!("all {UID_COUNT} jail ids are in use")),
    })
}

/// Where [`JailConfig::for_instance`] keeps its id leases, under the state root.
pub const LEASE_DIR: &str = "jail-ids";

impl JailConfig {
    /// The jail of instance `id` in `instance_dir`: ids from the environment,
    /// or else a fresh one leased in `<state_root>/jail-ids` ([`lease_fresh_id`]).
    pub fn for_instance(
        state_root: &Path,
        instance_dir: &Path,
        id: &str,
    ) -> Result<JailConfig, JailError> {
        let (uid, lease) = match id_from_env(UID_ENV)? {
            Some(uid) => (uid, None),
            None => {
                let l = lease_fresh_id(&state_root.join(LEASE_DIR), id)?;
                (l.id, Some(std::sync::Arc::new(l)))
            }
        };
        let gid = id_from_env(GID_ENV)?.unwrap_or(uid);
        Ok(JailConfig {
            dir: instance_dir.join(JAIL_DIR),
            uid,
            gid,
            pid_file: Some(instance_dir.join(PID_FILE)),
            cgroup_procs: Vec::new(),
            host_network: false,
            lease,
            notify_pid: None,
        })
    }
}

fn id_from_env(var: &'static str) -> Result<Option<u32>, JailError> {
    match std::env::var(var) {
        Err(_) => Ok(None),
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => parse_id(&v)
            .map(Some)
            .ok_or(JailError::Id { var, value: v }),
    }
}

/// A uid/gid that is neither root nor the "no id" value `(uid_t)-1`.
fn parse_id(v: &str) -> Option<u32> {
    v.parse::<u32>().ok().filter(|&n| n != 0 && n != u32::MAX)
}

/// The jail id of instance `id`: [`UID_BASE`] + a hash of the id modulo
/// [`UID_COUNT`]. Instance ids carry a random part, so each VM gets its own.
pub fn fresh_id(id: &str) -> u32 {
    let d = sha2::Sha256::digest(id.as_bytes());
    UID_BASE + u32::from_le_bytes([d[0], d[1], d[2], d[3]]) % UID_COUNT
}

/// One line saying what the VMM process holds on the host under `mode`
/// (the isolation table's "VMM process" row, `duet run --explain`).
pub fn describe(mode: JailMode) -> String {
    match mode {
        JailMode::On => format!(
            "jailed: uid/gid {UID_BASE}+ (fresh per VM), no capabilities (all five sets \
             empty), no_new_privs, own mnt/pid/net/ipc/uts namespaces, root = a read-only \
             tmpfs holding only kernel, initrd, disks and /dev/kvm; its instance's cgroup \
             (guest RAM + headroom); seccomp on the vCPU, console and vsock threads; the \
             agent socket is bound outside and passed in as a descriptor"
        ),
        JailMode::Off => format!(
            "unjailed ({JAIL_ENV}=off): duet's own process, the caller's uid, capabilities \
             and namespaces; seccomp on the vCPU threads only"
        ),
    }
}

// ---------------------------------------------------------------------------
// What the jailed VMM sends back.

#[derive(Serialize, Deserialize)]
enum WireResult {
    Ok {
        report: RunReport,
        end: VmEnd,
        console_tail: Vec<String>,
        counters: BTreeMap<String, u64>,
    },
    Err(String),
}

// ---------------------------------------------------------------------------
// Parent side.

/// Boots `cfg` in a jailed child process (see the module doc) and waits for
/// it. Stamps the same phases and counters as [`crate::run_vm`], plus
/// `jail_uid`, `jail_gid` and `jail_setup_us` (the jail's own work in the
/// child: namespaces, mounts, pivot_root, privilege drop).
pub fn run_jailed(
    cfg: &VmConfig,
    jail: &JailConfig,
    report: &mut RunReport,
) -> Result<VmOutcome, VmmError> {
    crate::check_config(cfg)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot.into());
    }
    match std::fs::create_dir(&jail.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(JailError::Dir {
                path: jail.dir.clone(),
                source,
            }
            .into())
        }
    }
    let (result_rx, result_tx) = pipe()?;
    let (alive_rx, alive_tx) = pipe()?;
    let mut plan = JailPlan::new(cfg, jail)?;
    // The agent socket is bound here, by root outside the jail; the VMM
    // gets the listening descriptor (kept across its fd clean-up), so the
    // jail needs neither a bind mount nor write access to the instance.
    let (agent_fd, _agent_file) = match cfg.agent_socket.as_deref() {
        Some(p) => {
            let (fd, file) = crate::agent::bind_listener(p)?;
            (Some(fd), Some(file))
        }
        None => (None, None),
    };
    plan.agent_fd = agent_fd.as_ref().map(|f| f.as_raw_fd());
    // The control socket (`duet snapshot`) likewise.
    let (control_fd, _control_file) = match cfg.snapshots.control_socket.as_deref() {
        Some(p) => {
            let (fd, file) = crate::control::bind_listener(p)?;
            (Some(fd), Some(file))
        }
        None => (None, None),
    };
    plan.control_fd = control_fd.as_ref().map(|f| f.as_raw_fd());
    // virtio-fs backends are reached from here too; the VMM keeps the
    // connected sockets and never sees their paths.
    let fs = crate::connect_fs(&cfg.fs)?;
    plan.fs_fds = fs.iter().map(|(s, t)| (s.as_raw_fd(), t.clone())).collect();
    let child_report = report.clone();
    let pid = fork_into_new_pid_namespace()?;
    if pid == 0 {
        // The parent's wake-up eventfd is closed below; a signal must
        // never write into whatever reuses its number.
        crate::signals::forget_wake_fd();
        drop(result_rx);
        drop(alive_tx);
        child_main(&plan, child_report, result_tx, alive_rx);
    }
    drop(result_tx);
    drop(alive_rx);
    // Only the VMM holds the listeners: once it ends, connections are refused.
    drop(agent_fd);
    drop(control_fd);
    // And only it holds the backends' connections: virtiofsd ends with it.
    drop(fs);
    if let Some(tx) = &jail.notify_pid {
        let _ = tx.send(pid);
    }
    if let Some(p) = &jail.pid_file {
        // Whole or not at all: a reader never sees an empty file.
        let tmp = p.with_extension("pid.tmp");
        if std::fs::write(&tmp, format!("{pid}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
    let waited = wait_for_child(pid, &result_rx, cfg.timeout);
    if let Some(p) = &jail.pid_file {
        let _ = std::fs::remove_file(p);
    }
    drop(alive_tx);
    // Its tmpfs lived in the VMM's mount namespace, gone with it: on the
    // host the jail is an empty directory.
    let _ = std::fs::remove_dir(&jail.dir);
    let Waited {
        bytes,
        status,
        killed,
    } = waited?;
    if bytes.is_empty() {
        // A VMM that did not stop by itself in time ends as its stop would have.
        let end = match killed {
            Some(Kill::AfterSignal(sig)) => Some(VmEnd::Interrupted(sig)),
            Some(Kill::Deadline) => cfg.timeout.map(VmEnd::Timeout),
            None => None,
        };
        if let Some(end) = end {
            report.mark(duet_shared::report::Phase::Exited);
            report.counters.insert("jail_vmm_killed".into(), 1);
            return Ok(VmOutcome {
                end,
                console_tail: vec![format!(
                    "(duet killed the jailed VMM, pid {pid}: it did not stop in time)"
                )],
                counters: BTreeMap::new(),
            });
        }
        return Err(JailError::Died {
            pid,
            status: describe_status(status),
        }
        .into());
    }
    match serde_json::from_slice::<WireResult>(&bytes).map_err(JailError::Result)? {
        WireResult::Ok {
            report: r,
            end,
            console_tail,
            counters,
        } => {
            *report = r;
            Ok(VmOutcome {
                end,
                console_tail,
                counters,
            })
        }
        WireResult::Err(msg) => Err(JailError::Vmm(msg).into()),
    }
}

/// A pipe, both ends close-on-exec (so no other child of this process inherits them).
fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(JailError::Setup {
            what: "pipe2 for the jailed VMM",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks a child that is PID 1 of a new PID namespace; returns its host PID
/// (0 in the child). Only the calling thread's `pid_for_children` changes,
/// and it is set back before returning, so later children of duet (and other
/// threads) are unaffected.
fn fork_into_new_pid_namespace() -> Result<i32, JailError> {
    let own =
        std::fs::File::open("/proc/thread-self/ns/pid").map_err(|source| JailError::Setup {
            what: "opening /proc/thread-self/ns/pid",
            source,
        })?;
    // SAFETY: unshare takes flags only; CLONE_NEWPID affects this thread's future children.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(JailError::Setup {
            what: "unshare(CLONE_NEWPID) for the VMM",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: glibc's fork runs its atfork handlers (malloc stays usable in
    // the child); the child runs only `child_main`, which never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        return Ok(0);
    }
    let fork_err = std::io::Error::last_os_error();
    // SAFETY: `own` is a PID namespace fd; joining our own active namespace
    // resets pid_for_children.
    let back = unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) };
    if pid < 0 {
        return Err(JailError::Setup {
            what: "fork of the VMM",
            source: fork_err,
        });
    }
    if back != 0 {
        // The child exists, but this thread would put later children into
        // its namespace: kill it and refuse.
        let source = std::io::Error::last_os_error();
        // SAFETY: `pid` is our child; kill and waitpid take plain values.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(JailError::Setup {
            what: "setns back to duet's PID namespace",
            source,
        });
    }
    Ok(pid)
}

/// Why the parent SIGKILLed the VMM.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// It outstayed [`KILL_GRACE`] after this stop signal was passed on.
    AfterSignal(i32),
    /// It outstayed the VM's timeout plus [`DEADLINE_GRACE`].
    Deadline,
}

/// What [`wait_for_child`] saw.
struct Waited {
    /// The result the child wrote (empty if it died first).
    bytes: Vec<u8>,
    /// Its wait status.
    status: i32,
    /// Whether (and why) the parent killed it.
    killed: Option<Kill>,
}

/// Reads the child's result until EOF and reaps it. Passes SIGINT/SIGTERM
/// on (crate::signals), SIGKILLs it when it outstays the grace after that
/// or the deadline: a VMM stuck in device code still stops.
fn wait_for_child(pid: i32, rx: &OwnedFd, timeout: Option<Duration>) -> Result<Waited, JailError> {
    let started = Instant::now();
    let deadline = timeout.map(|t| t + DEADLINE_GRACE);
    let mut forwarded: Option<(Instant, i32)> = None;
    let mut killed: Option<Kill> = None;
    let mut bytes = Vec::new();
    // The child's exit and a stop signal wake this loop through fds; a
    // timer only where one of them is missing (kernels before 5.3 have no
    // pidfd), so a running VM's parent stays asleep.
    let pidfd = duet_shared::child_wait::pidfd_open(pid).ok();
    loop {
        let wake = crate::signals::wake_fd().filter(|_| forwarded.is_none() && killed.is_none());
        let mut fds = vec![libc::pollfd {
            fd: rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        fds.extend(
            pidfd
                .as_ref()
                .map(|p| p.as_raw_fd())
                .into_iter()
                .chain(wake)
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                }),
        );
        let mut wait = if pidfd.is_some() && (wake.is_some() || forwarded.is_some()) {
            WAIT_CAP
        } else {
            Duration::from_millis(50)
        };
        if let Some((t, _)) = forwarded {
            wait = wait.min(KILL_GRACE.saturating_sub(t.elapsed()));
        }
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_sub(started.elapsed()));
        }
        let ms = (wait.as_millis() as i32).max(1);
        // SAFETY: valid pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        let woken = wake.is_some() && fds.last().is_some_and(|f| f.revents != 0);
        if woken && crate::signals::received().is_none() {
            crate::signals::drain_wake();
        }
        let readable = n > 0 && fds[0].revents != 0;
        if readable {
            let mut buf = [0u8; 16 << 10];
            // SAFETY: reads into a stack buffer of its length from our pipe end.
            let got = unsafe { libc::read(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match got {
                0 => break,
                g if g > 0 => bytes.extend_from_slice(&buf[..g as usize]),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(JailError::Setup {
                            what: "reading the jailed VMM's result",
                            source: e,
                        });
                    }
                }
            }
        }
        if !readable && exited(pid) {
            // The child is gone but something else (a process that forked
            // from duet meanwhile) holds the pipe's write end: its result
            // was written before it exited; take what is there and stop
            // waiting for an EOF that may never come.
            drain_nonblocking(rx, &mut bytes);
            break;
        }
        if killed.is_some() {
            continue;
        }
        if let (Some(sig), None) = (crate::signals::received(), forwarded) {
            // SAFETY: `pid` is our unreaped child.
            unsafe { libc::kill(pid, sig) };
            forwarded = Some((Instant::now(), sig));
        }
        killed = match forwarded {
            Some((t, sig)) if t.elapsed() > KILL_GRACE => Some(Kill::AfterSignal(sig)),
            _ if deadline.is_some_and(|d| started.elapsed() > d) => Some(Kill::Deadline),
            _ => None,
        };
        if killed.is_some() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(JailError::Setup {
                what: "waitpid for the jailed VMM",
                source: e,
            });
        }
    }
    Ok(Waited {
        bytes,
        status,
        killed,
    })
}

/// Whether child `pid` has exited (it is not reaped: waitpid does that).
fn exited(pid: i32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with WNOWAIT leaves it to waitpid.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is set by waitid when a child changed state (0 otherwise).
    r == 0 && unsafe { info.si_pid() } == pid
}

/// Reads what the pipe holds now, without waiting for more.
fn drain_nonblocking(rx: &OwnedFd, bytes: &mut Vec<u8>) {
    let mut buf = [0u8; 16 << 10];
    loop {
        let mut fds = [libc::pollfd {
            fd: rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd; a zero timeout never blocks.
        if unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) } <= 0 {
            return;
        }
        // SAFETY: reads into a stack buffer of its length from our pipe end.
        let got = unsafe { libc::read(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            return;
        }
        bytes.extend_from_slice(&buf[..got as usize]);
    }
}

fn describe_status(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let hint = match sig {
            libc::SIGSYS => " (SIGSYS: a syscall off the VMM's seccomp list)",
            libc::SIGKILL => " (SIGKILL: killed, or it outstayed its deadline)",
            _ => "",
        };
        format!("killed by signal {sig}{hint}")
    } else {
        format!("exit status {}", libc::WEXITSTATUS(status))
    }
}

// ---------------------------------------------------------------------------
// The jail's file system plan, computed in the parent (the child must not
// read the environment or allocate much before it owns its process).

/// One file bind-mounted into the jail.
#[derive(Debug, Clone)]
struct JailFile {
    source: PathBuf,
    /// Name under the jail root.
    name: String,
    read_only: bool,
}

/// Everything the child needs, prepared before the fork.
struct JailPlan {
    dir: PathBuf,
    uid: u32,
    gid: u32,
    cgroup_procs: Vec<PathBuf>,
    host_network: bool,
    files: Vec<JailFile>,
    /// `cfg` with every path rewritten to its place in the jail.
    jailed: VmConfig,
    /// The agent's listening socket, inherited across the fork.
    agent_fd: Option<RawFd>,
    /// Connected virtio-fs backend sockets and their tags, inherited too.
    fs_fds: Vec<(RawFd, String)>,
    /// The control socket's listener, inherited too.
    control_fd: Option<RawFd>,
}

/// Where /dev/kvm appears inside the jail.
const JAIL_KVM: &str = "dev/kvm";

impl JailPlan {
    fn new(cfg: &VmConfig, jail: &JailConfig) -> Result<JailPlan, JailError> {
        let mut files = Vec::new();
        let mut jailed = cfg.clone();
        let mut add = |source: &Path, name: String, read_only: bool| -> PathBuf {
            files.push(JailFile {
                source: source.to_path_buf(),
                name: name.clone(),
                read_only,
            });
            Path::new("/").join(name)
        };
        match &cfg.snapshots.restore {
            // A restore needs neither kernel nor initrd: both are in its RAM.
            Some(snap) => {
                jailed.snapshots.restore = Some(add(snap, "snapshot".into(), true));
            }
            None => {
                jailed.kernel = add(&cfg.kernel, "kernel".into(), true);
                if let Some(i) = &cfg.initrd {
                    jailed.initrd = Some(add(i, "initrd".into(), true));
                }
            }
        }
        // Not paths in the jail: the VMM gets the bound sockets.
        jailed.agent_socket = None;
        jailed.snapshots.control_socket = None;
        jailed.fs = Vec::new();
        for (n, d) in cfg.disks.iter().enumerate() {
            let base = d
                .path
                .file_name()
                .map(|b| String::from_utf8_lossy(b.as_bytes()).replace('/', "_"))
                .unwrap_or_else(|| "disk".into());
            let name = format!("disk{n}-{base}");
            jailed.disks[n].path = add(&d.path, name, d.read_only);
        }
        Ok(JailPlan {
            dir: jail.dir.clone(),
            uid: jail.uid,
            gid: jail.gid,
            cgroup_procs: jail.cgroup_procs.clone(),
            host_network: jail.host_network,
            files,
            jailed,
            agent_fd: None,
            fs_fds: Vec::new(),
            control_fd: None,
        })
    }
}

// ---------------------------------------------------------------------------
// Child side.

/// The jailed VMM: sets up the jail, boots the VM, sends the result, exits.
fn child_main(plan: &JailPlan, mut report: RunReport, result: OwnedFd, alive: OwnedFd) -> ! {
    let t0 = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        child_run(plan, &mut report, &result, &alive, t0)
    }));
    let wire = match outcome {
        Ok(Ok(o)) => WireResult::Ok {
            report,
            end: o.end.clone(),
            console_tail: o.console_tail,
            counters: o.counters,
        },
        Ok(Err(msg)) => WireResult::Err(msg),
        Err(_) => WireResult::Err("the jailed VMM panicked".into()),
    };
    if let Ok(bytes) = serde_json::to_vec(&wire) {
        // SAFETY: `result` is our pipe end; the File is forgotten, not closed twice.
        let mut f =
            std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(result.as_raw_fd()) });
        let _ = f.write_all(&bytes);
    }
    // SAFETY: ends the child at once, without running the parent's atexit
    // handlers or destructors (temp dirs of a test harness, for instance).
    unsafe { libc::_exit(0) }
}

fn os_err(what: impl std::fmt::Display) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn check(rc: libc::c_int, what: impl std::fmt::Display) -> Result<(), String> {
    if rc < 0 {
        Err(os_err(what))
    } else {
        Ok(())
    }
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", p.display()))
}

fn child_run(
    plan: &JailPlan,
    report: &mut RunReport,
    result: &OwnedFd,
    alive: &OwnedFd,
    t0: Instant,
) -> Result<VmOutcome, String> {
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
        "PR_SET_PDEATHSIG",
    )?;
    parent_alive(alive)?;
    let mut keep = vec![result.as_raw_fd(), alive.as_raw_fd()];
    keep.extend(plan.agent_fd);
    keep.extend(plan.control_fd);
    keep.extend(plan.fs_fds.iter().map(|(fd, _)| *fd));
    // The tap the parent put on the bridge: the VMM's only network resource.
    keep.extend(plan.jailed.net.iter().map(|n| n.tap.as_raw_fd()));
    close_inherited_fds(&keep)?;
    // Stop signals the parent passes on wake the VM's waiting thread through it.
    crate::signals::renew_wake_fd();
    // SAFETY: connected sockets inherited by the fork and kept open above;
    // this process owns its copies.
    let fs: Vec<_> = plan
        .fs_fds
        .iter()
        .map(|(fd, tag)| {
            (
                unsafe { std::os::unix::net::UnixStream::from_raw_fd(*fd) },
                tag.clone(),
            )
        })
        .collect();
    // SAFETY: the parent's listening socket, inherited by the fork and kept
    // open above; this process owns its copy and never returns to the caller.
    let agent = plan.agent_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: as above, for the control socket's listener.
    let control = plan
        .control_fd
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    // A session of its own: the caller's terminal (still its stdin/stdout)
    // is no longer its controlling terminal, so a VMM taken over by the
    // guest cannot push input into the caller's shell with TIOCSTI. duet
    // passes SIGINT from that terminal on (wait_for_child).
    // SAFETY: setsid takes no arguments; a forked child is no group leader.
    check(unsafe { libc::setsid() }, "setsid")?;
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if !plan.host_network {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare takes flags only; this process has a single thread.
    check(
        unsafe { libc::unshare(flags) },
        "unshare(mnt, ipc, uts, net)",
    )?;
    let host = CString::new(HOSTNAME).expect("no NUL");
    // SAFETY: a valid buffer of the given length.
    check(
        unsafe { libc::sethostname(host.as_ptr(), HOSTNAME.len()) },
        "sethostname",
    )?;
    for procs in &plan.cgroup_procs {
        // "0" is the writing process, in cgroup v1 and v2 alike.
        std::fs::write(procs, "0").map_err(|e| format!("joining {}: {e}", procs.display()))?;
    }
    let proc_files = ProcFiles::open_self().map_err(|e| crate::error_with_causes(&e))?;
    build_root(plan)?;
    pivot_into(&plan.dir)?;
    // Jail cost: namespaces, mounts and pivot here, the privilege drop below
    // (VM creation and kernel loading in between are not the jail's).
    let mut setup_us = t0.elapsed().as_micros() as u64;
    let _guard = crate::signals::RunGuard::enter();
    let (uid, gid) = (plan.uid, plan.gid);
    let mut drop_now = || -> Result<(), VmmError> {
        let t = Instant::now();
        drop_privileges(uid, gid, alive).map_err(JailError::Vmm)?;
        setup_us += t.elapsed().as_micros() as u64;
        Ok(())
    };
    let outcome = crate::boot_and_run(
        &plan.jailed,
        report,
        Box::new(FdSink(libc::STDOUT_FILENO)),
        Some(crate::RunHooks {
            before_vcpus: &mut drop_now,
            proc_files: Some(&proc_files),
        }),
        agent,
        fs,
        control,
    )
    .map_err(|e| crate::error_with_causes(&e))?;
    report.counters.insert("jail_uid".into(), u64::from(uid));
    report.counters.insert("jail_gid".into(), u64::from(gid));
    report.counters.insert("jail_setup_us".into(), setup_us);
    Ok(outcome)
}

/// Fails when the parent is gone (its end of `alive` closed).
fn parent_alive(alive: &OwnedFd) -> Result<(), String> {
    let mut fds = [libc::pollfd {
        fd: alive.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd; timeout 0 does not block.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    if n > 0 && fds[0].revents & (libc::POLLHUP | libc::POLLIN) != 0 {
        return Err("duet ended while its VMM was starting".into());
    }
    Ok(())
}

/// Closes every descriptor but 0, 1, 2 and `keep` (issue 9 class 2: nothing
/// the caller of duet left open reaches the VMM, hence the guest).
fn close_inherited_fds(keep: &[RawFd]) -> Result<(), String> {
    let mut keep: Vec<u32> = keep.iter().map(|&f| f as u32).collect();
    keep.extend([0, 1, 2]);
    keep.sort_unstable();
    keep.dedup();
    let mut lo = 0u32;
    for k in keep.iter().copied().chain(std::iter::once(u32::MAX)) {
        if k > lo {
            let hi = k - 1;
            // SAFETY: close_range takes plain integers; it closes only
            // descriptors of this (single-threaded) process.
            let rc = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) };
            if rc != 0 {
                return close_listed_fds(&keep);
            }
        }
        lo = k.saturating_add(1);
    }
    Ok(())
}

/// The close_range fallback (kernels before 5.9): close what /proc/self/fd lists.
fn close_listed_fds(keep: &[u32]) -> Result<(), String> {
    let rd = std::fs::read_dir("/proc/self/fd").map_err(|e| format!("/proc/self/fd: {e}"))?;
    let fds: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if !keep.contains(&fd) {
            // SAFETY: closes a descriptor this process holds and will not use.
            unsafe { libc::close(fd as RawFd) };
        }
    }
    Ok(())
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let src = source.map(cstr).transpose()?;
    let tgt = cstr(target)?;
    let fst = fstype.map(|f| CString::new(f).expect("no NUL"));
    let dat = data.map(|d| CString::new(d).expect("no NUL"));
    // SAFETY: every pointer is a valid NUL-terminated string or null.
    let rc = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fst.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            dat.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast::<libc::c_void>()),
        )
    };
    check(
        rc,
        format_args!(
            "mount {} on {}",
            source.map_or("-".into(), |s| s.display().to_string()),
            target.display()
        ),
    )
}

/// Bind-mounts `source` onto a new empty file `target`, then sets its flags.
fn bind_file(source: &Path, target: &Path, flags: libc::c_ulong) -> Result<(), String> {
    std::fs::File::create(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    mount(Some(source), target, None, libc::MS_BIND, None)?;
    mount(
        None,
        target,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | flags,
        None,
    )
}

/// The jail root: a tmpfs on `plan.dir` holding only the bound files and
/// `dev/kvm`, read-only once filled.
fn build_root(plan: &JailPlan) -> Result<(), String> {
    let root = Path::new("/");
    mount(None, root, None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let tmpfs_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(
        Some(Path::new("tmpfs")),
        &plan.dir,
        Some("tmpfs"),
        tmpfs_flags,
        Some("mode=0755,size=64k,nr_inodes=64"),
    )?;
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for f in &plan.files {
        let flags = if f.read_only {
            hardened | libc::MS_RDONLY
        } else {
            hardened
        };
        bind_file(&f.source, &plan.dir.join(&f.name), flags)?;
    }
    let dev = plan.dir.join("dev");
    std::fs::create_dir(&dev).map_err(|e| format!("creating {}: {e}", dev.display()))?;
    bind_file(
        Path::new("/dev/kvm"),
        &plan.dir.join(JAIL_KVM),
        libc::MS_NOSUID | libc::MS_NOEXEC,
    )?;
    mount(
        None,
        &plan.dir,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | tmpfs_flags,
        None,
    )
}

/// `pivot_root` into `dir` (the `pivot_root(".", ".")` idiom: the old root
/// is stacked on the new one, then detached).
fn pivot_into(dir: &Path) -> Result<(), String> {
    let d = cstr(dir)?;
    let dot = CString::new(".").expect("no NUL");
    let slash = CString::new("/").expect("no NUL");
    // SAFETY: valid NUL-terminated paths.
    check(unsafe { libc::chdir(d.as_ptr()) }, "chdir into the jail")?;
    // SAFETY: as above; pivot_root has no libc wrapper.
    check(
        unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int },
        "pivot_root into the jail",
    )?;
    // SAFETY: as above.
    check(
        unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) },
        "detaching the old root",
    )?;
    // SAFETY: as above.
    check(unsafe { libc::chdir(slash.as_ptr()) }, "chdir /")
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability and switches to `uid`/`gid` for good.
fn drop_privileges(uid: u32, gid: u32, alive: &OwnedFd) -> Result<(), String> {
    // Bounding set first: dropping from it needs CAP_SETPCAP, which the uid
    // switch below takes away.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break; // past the kernel's last capability
            }
            return Err(os_err(format_args!("PR_CAPBSET_DROP {cap}")));
        }
    }
    // SAFETY: prctl with integer arguments.
    check(
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        },
        "clearing the ambient capabilities",
    )?;
    // SAFETY: an empty list.
    check(
        unsafe { libc::setgroups(0, std::ptr::null()) },
        "setgroups([])",
    )?;
    // SAFETY: plain ids.
    check(
        unsafe { libc::setresgid(gid, gid, gid) },
        format_args!("setresgid {gid}"),
    )?;
    // SAFETY: plain ids. With every uid non-zero (and no SECBIT_KEEP_CAPS)
    // the kernel clears the permitted, effective and ambient sets.
    check(
        unsafe { libc::setresuid(uid, uid, uid) },
        format_args!("setresuid {uid}"),
    )?;
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and two data structs, as _LINUX_CAPABILITY_VERSION_3 wants.
    check(
        unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int },
        "capset to nothing",
    )?;
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        "PR_SET_NO_NEW_PRIVS",
    )?;
    // Not dumpable whatever fs.suid_dumpable says: no process of the same
    // uid (another VM's, by a hash collision) may ptrace it or read its memory.
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) },
        "PR_SET_DUMPABLE 0",
    )?;
    // A credential change clears the parent-death signal: set it again, then
    // make sure the parent did not die in between.
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
        "PR_SET_PDEATHSIG",
    )?;
    parent_alive(alive)?;
    // Verify rather than trust: nothing is left in any set.
    let mut got = [CapData::default(); 2];
    // SAFETY: as for capset; capget writes two data structs.
    check(
        unsafe { libc::syscall(libc::SYS_capget, &mut header, got.as_mut_ptr()) as libc::c_int },
        "capget",
    )?;
    if got
        .iter()
        .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
    {
        return Err("capabilities left after the uid switch".into());
    }
    // SAFETY: prctl with integer arguments; 0 = CAP_CHOWN must be gone now.
    if unsafe { libc::prctl(libc::PR_CAPBSET_READ, 0, 0, 0, 0) } != 0 {
        return Err("the bounding set still holds CAP_CHOWN".into());
    }
    Ok(())
}

/// Console output straight to a descriptor (no std lock a forked child
/// could find held by a thread that is not there).
struct FdSink(RawFd);

impl Write for FdSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            // SAFETY: writes from a valid buffer of its length to a descriptor we hold.
            let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `pid`'s `/proc/<pid>/status` says it holds no capability in any
/// set and runs as neither root uid nor gid (for tests and `duet doctor`).
pub fn status_is_jailed(status: &str) -> bool {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let caps_zero = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
        .iter()
        .all(|f| field(f).is_some_and(|v| v.chars().all(|c| c == '0')));
    let ids_not_root = ["Uid:", "Gid:"]
        .iter()
        .all(|f| field(f).is_some_and(|v| v.split_whitespace().all(|id| id != "0")));
    caps_zero && ids_not_root && field("NoNewPrivs:") == Some("1")
}

#[cfg(test)]
mod tests {

    /// A process that outlives the VMM and holds the result pipe's write
    /// end (a sibling duet forked meanwhile) must not keep duet waiting.
    #[test]
    fn a_leaked_write_end_does_not_outlast_the_child() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: new descriptors, ours.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let w = tx.as_raw_fd();
        // The holder: a `sleep` that keeps a copy of the write end.
        let mut holder = {
            use std::os::unix::process::CommandExt;
            let mut c = std::process::Command::new("sleep");
            c.arg("30");
            // SAFETY: dup2 in the child before exec (async-signal-safe).
            unsafe {
                c.pre_exec(move || {
                    if libc::dup2(w, 7) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            c.spawn().unwrap()
        };
        // The "VMM": writes its result and exits.
        // SAFETY: fork; the child only writes and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: write from a static buffer, then _exit.
            unsafe {
                libc::write(w, b"result".as_ptr().cast(), 6);
                libc::_exit(0);
            }
        }
        drop(tx);
        let t = Instant::now();
        let got = wait_for_child(pid, &rx, Some(Duration::from_secs(20))).unwrap();
        let _ = holder.kill();
        let _ = holder.wait();
        assert_eq!(got.bytes, b"result");
        assert!(libc::WIFEXITED(got.status) && libc::WEXITSTATUS(got.status) == 0);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "waited {:?}",
            t.elapsed()
        );
    }

    use super::*;
    use duet_shared::guest_abi::InitFailure;
    use duet_shared::runtime::WorkloadExit;

    #[test]
    fn fresh_ids_are_in_range_stable_and_differ_per_instance() {
        let a = fresh_id("busybox-0123abcd");
        assert_eq!(a, fresh_id("busybox-0123abcd"));
        assert!((UID_BASE..UID_BASE + UID_COUNT).contains(&a), "{a}");
        let distinct: std::collections::BTreeSet<u32> =
            (0..50).map(|i| fresh_id(&format!("vm-{i:08x}"))).collect();
        assert!(distinct.len() >= 49, "{distinct:?}");
    }

    #[test]
    fn leased_ids_are_unique_while_held_and_free_again_after() {
        let dir = tempfile::tempdir().unwrap();
        // The same seed twice: the second lease moves on to the next id.
        let a = lease_fresh_id(dir.path(), "same").unwrap();
        let b = lease_fresh_id(dir.path(), "same").unwrap();
        assert_eq!(a.id, fresh_id("same"));
        assert_ne!(a.id, b.id);
        assert!((UID_BASE..UID_BASE + UID_COUNT).contains(&b.id));
        let a_id = a.id;
        drop(a);
        assert_eq!(lease_fresh_id(dir.path(), "same").unwrap().id, a_id);
        let fresh = dir.path().join("new");
        drop(lease_fresh_id(&fresh, "x").unwrap());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&fresh).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }

    #[test]
    fn ids_refuse_root_and_garbage() {
        assert_eq!(parse_id("900123"), Some(900_123));
        for bad in ["0", "-1", "4294967295", "root", "1.5", ""] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn jail_mode_and_ids_come_from_the_environment() {
        // One test touches these variables, so parallel tests do not race on them.
        std::env::remove_var(JAIL_ENV);
        assert_eq!(JailMode::from_env().unwrap(), JailMode::On);
        std::env::set_var(JAIL_ENV, "off");
        assert_eq!(JailMode::from_env().unwrap(), JailMode::Off);
        std::env::set_var(JAIL_ENV, "maybe");
        let e = JailMode::from_env().unwrap_err().to_string();
        assert!(e.contains("maybe") && e.contains("off"), "{e}");
        std::env::remove_var(JAIL_ENV);

        let state = tempfile::tempdir().unwrap();
        let dir = &state.path().join("instances/vm-1");
        std::env::remove_var(UID_ENV);
        std::env::remove_var(GID_ENV);
        let j = JailConfig::for_instance(state.path(), dir, "vm-1").unwrap();
        assert_eq!((j.uid, j.gid), (fresh_id("vm-1"), fresh_id("vm-1")));
        assert!(j.lease.is_some());
        assert_eq!(j.dir, dir.join("jail"));
        assert_eq!(j.pid_file.as_deref(), Some(dir.join("vmm.pid").as_path()));
        assert!(!j.host_network);
        std::env::set_var(UID_ENV, "12345");
        let j = JailConfig::for_instance(state.path(), dir, "vm-1").unwrap();
        assert_eq!((j.uid, j.gid), (12345, 12345));
        assert!(j.lease.is_none());
        std::env::set_var(GID_ENV, "777");
        let j = JailConfig::for_instance(state.path(), dir, "vm-1").unwrap();
        assert_eq!(j.gid, 777);
        std::env::set_var(UID_ENV, "0");
        let e = JailConfig::for_instance(state.path(), dir, "vm-1")
            .unwrap_err()
            .to_string();
        assert!(e.contains(UID_ENV) && e.contains("not root"), "{e}");
        std::env::remove_var(UID_ENV);
        std::env::remove_var(GID_ENV);
    }

    #[test]
    fn every_vm_end_survives_the_pipe() {
        let ends = [
            VmEnd::Exited(WorkloadExit::Code(3)),
            VmEnd::Exited(WorkloadExit::Signal(9)),
            VmEnd::InitFailed(InitFailure::Exec),
            VmEnd::Reset,
            VmEnd::Halted,
            VmEnd::Shutdown {
                vcpu: 1,
                rip: Some(0x10),
            },
            VmEnd::InternalError {
                vcpu: 0,
                suberror: 1,
                rip: None,
            },
            VmEnd::FailEntry { vcpu: 0, reason: 7 },
            VmEnd::SystemEvent { vcpu: 0, kind: 2 },
            VmEnd::UnhandledExit {
                vcpu: 0,
                exit: "x".into(),
            },
            VmEnd::VcpuFailed {
                vcpu: 0,
                what: "y".into(),
            },
            VmEnd::Timeout(Duration::from_millis(1500)),
            VmEnd::Interrupted(15),
        ];
        for e in ends {
            let json = serde_json::to_string(&e).unwrap();
            let back: VmEnd = serde_json::from_str(&json).unwrap();
            assert_eq!(back, e, "{json}");
        }
    }

    #[test]
    fn plan_puts_every_file_at_the_jail_root() {
        let cfg = VmConfig {
            snapshots: Default::default(),
            kernel: "/cache/kernel/current/vmlinux".into(),
            initrd: Some("/state/instances/x/init.cpio".into()),
            cmdline: String::new(),
            memory_mib: 64,
            vcpus: 1,
            timeout: None,
            console: crate::ConsoleMode::Workload,
            stdin: false,
            disks: crate::disks::disk_configs(
                &["/state/layers/sha256/ab/layer.erofs".into()],
                Path::new("/state/instances/x/scratch.ext4"),
            ),
            agent_socket: None,
            fs: Vec::new(),
            net: None,
        };
        let state = tempfile::tempdir().unwrap();
        let jail =
            JailConfig::for_instance(state.path(), Path::new("/state/instances/x"), "x").unwrap();
        let plan = JailPlan::new(&cfg, &jail).unwrap();
        assert_eq!(plan.jailed.kernel, Path::new("/kernel"));
        assert_eq!(plan.jailed.initrd.as_deref(), Some(Path::new("/initrd")));
        let disks: Vec<_> = plan.jailed.disks.iter().map(|d| d.path.clone()).collect();
        assert_eq!(
            disks,
            vec![
                PathBuf::from("/disk0-layer.erofs"),
                PathBuf::from("/disk1-scratch.ext4")
            ]
        );
        let ro: Vec<bool> = plan.files.iter().map(|f| f.read_only).collect();
        assert_eq!(ro, vec![true, true, true, false]);
    }

    #[test]
    fn jailed_status_needs_every_set_empty_and_no_root_ids() {
        let good = "Uid:\t900001\t900001\t900001\t900001\nGid:\t900001\t900001\t900001\t900001\n\
            CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
            CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        assert!(status_is_jailed(good));
        assert!(!status_is_jailed(&good.replace(
            "CapBnd:\t0000000000000000",
            "CapBnd:\t000001ffffffffff"
        )));
        assert!(!status_is_jailed(&good.replace("Uid:\t900001", "Uid:\t0")));
        assert!(!status_is_jailed(
            &good.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0")
        ));
    }
}
