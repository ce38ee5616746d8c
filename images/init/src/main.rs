//! duet-init: PID 1 inside a duet microVM.
//!
//! 1. mount /dev (devtmpfs) and make sure stdio is the console;
//! 2. get access to duet's ready/exit I/O ports (see duet_shared::guest_abi);
//! 3. read /duet/workload.json; if /duet/disk-root.json exists, mount the
//!    layer disks, the scratch disk and overlayfs and switch root into it
//!    (duet_init::disk_root);
//! 4. mount /proc, /sys, /dev/pts, /dev/shm, /run; create /tmp if absent;
//!    set the hostname, apply pids_max (cgroup v2);
//! 5. fork: the child joins the cgroup, chdirs, writes "ready", resolves the
//!    command and execs it with stdio on the console; then, if the config
//!    asks, fork the exec agent (duet_init::agent, vsock port 1024);
//! 6. PID 1 reaps every process (orphans re-parent to it) until the
//!    workload's own process exits, drains the console, syncs (the scratch
//!    disk must hold the workload's writes), writes the exit status, and reboots (`reboot=k`: an i8042 reset the VMM treats as stop).
//!
//! Every failure before the workload runs is printed on the console and
//! reported as "init failed", so the host never waits on a guest that gave up.

use duet_init::command;
use duet_init::config::{ConfigError, GuestWorkload, WORKLOAD_PATH};
use duet_init::disk_root::{self, DiskRoot, DiskRootError, FsRoot, DISK_ROOT_PATH, FS_ROOT_PATH};
use duet_init::files;
use duet_init::ports::{GuestPorts, PortError};
use duet_init::status;
use duet_shared::guest_abi::InitFailure;
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};
use std::error::Error;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the workload's cgroup lives when `pids_max` is set.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const WORKLOAD_CGROUP: &str = "/sys/fs/cgroup/workload";

/// What can stop the init before the workload runs; each names its object.
#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("cannot create {}", path.display())]
    MkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: Errno,
    },
    #[error("no console: cannot open /dev/console or /dev/ttyS0")]
    Console(#[source] Errno),
    #[error(transparent)]
    Ports(#[from] PortError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot set up the workload's root")]
    DiskRoot(#[from] DiskRootError),
    #[error(transparent)]
    Files(#[from] files::FileError),
    #[error("cannot set the hostname to {0:?}")]
    Hostname(String, #[source] Errno),
    #[error("warm start: waiting for the workload")]
    Warm(#[source] std::io::Error),
    #[error(transparent)]
    Net(#[from] duet_init::net::NetError),
    #[error("cannot apply pids_max = {limit}: {}", path.display())]
    Cgroup {
        limit: u64,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot apply pids_max = {0}: cgroup v2 has no `pids` controller (the guest kernel needs CONFIG_CGROUPS and CONFIG_CGROUP_PIDS)")]
    NoPidsController(u64),
    #[error("cannot create the workload's status pipe")]
    Pipe(#[source] Errno),
    #[error("cannot fork the workload")]
    Fork(#[source] Errno),
    #[error("the workload's setup failed (message above)")]
    ChildSetup,
    #[error("lost the workload's process {0} (waitpid)")]
    Wait(Pid, #[source] Errno),
}

impl InitError {
    /// The stage the host is told about (duet_shared::guest_abi::InitFailure).
    fn stage(&self) -> InitFailure {
        match self {
            InitError::MkDir { .. }
            | InitError::Mount { .. }
            | InitError::Console(_)
            | InitError::DiskRoot(_)
            | InitError::Files(_) => InitFailure::Mount,
            InitError::Config(_) => InitFailure::Config,
            InitError::Hostname(..)
            | InitError::Net(_)
            | InitError::Cgroup { .. }
            | InitError::NoPidsController(_)
            | InitError::ChildSetup => InitFailure::Setup,
            InitError::Pipe(_) | InitError::Fork(_) => InitFailure::Exec,
            InitError::Wait(..) => InitFailure::Wait,
            InitError::Ports(_) | InitError::Warm(_) => InitFailure::Other,
        }
    }
}

fn main() {
    let pid = std::process::id();
    if pid != 1 {
        // It mounts over / and reboots the machine: never do that on a host.
        eprintln!(
            "duet-init: this is the init of duet's microVM guests and runs only as PID 1 \
             (it was started as PID {pid}); refusing to run"
        );
        std::process::exit(2);
    }
    // /dev first: without it there may be no console to report anything on.
    let early = mount_dev().and_then(|()| ensure_console());
    let ports = match GuestPorts::open() {
        Ok(p) => p,
        Err(e) => {
            // Nothing can report "init failed" now; the reset alone tells the
            // host the guest ended without a status.
            print_error(&InitError::Ports(e));
            power_off();
        }
    };
    if let Err(e) = early {
        fail(&ports, &e);
    }
    let code = match boot(&ports) {
        Ok(code) => code,
        Err(e) => fail(&ports, &e),
    };
    drain_console();
    // The VMM stops the guest at the exit status: flush the scratch disk first.
    nix::unistd::sync();
    ports.exit_status(code);
    power_off();
}

/// Everything after the console and ports exist; returns the encoded exit status.
fn boot(ports: &GuestPorts) -> Result<u32, InitError> {
    // Both files are in the initramfs: read them before the root changes.
    let w = GuestWorkload::load(Path::new(WORKLOAD_PATH))?;
    if let Some(root) = DiskRoot::load(Path::new(DISK_ROOT_PATH))? {
        disk_root::enter(&root)?;
    } else if let Some(root) = FsRoot::load(Path::new(FS_ROOT_PATH))? {
        disk_root::enter_fs(&root)?;
    }
    mount_rest()?;
    let w = if w.template {
        // Snapshotted here; each clone continues with its own workload.
        let warm =
            duet_init::warm::wait(duet_shared::guest_abi::WARM_PORT).map_err(InitError::Warm)?;
        duet_init::warm::apply(&warm);
        warm.workload
    } else {
        w
    };
    files::place(&w.files)?;
    nix::unistd::sethostname(&w.hostname)
        .map_err(|e| InitError::Hostname(w.hostname.clone(), e))?;
    duet_init::net::configure(w.network.as_ref())?;
    if let Some(limit) = w.pids_max {
        setup_pids_cgroup(limit)?;
    }
    match w.tty {
        Some(size) => terminal_console(size),
        None => quiet_console(),
    }
    run_workload(&w, ports)
}

fn mkdir(path: &str, mode: u32) -> Result<(), InitError> {
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(InitError::MkDir {
            path: path.into(),
            source,
        }),
    }
}

/// [`mkdir`], except that a read-only root without the directory is
/// `Ok(false)` (nothing is mounted there) rather than an error.
fn optional_dir(path: &str, mode: u32) -> Result<bool, InitError> {
    match mkdir(path, mode) {
        Ok(()) => Ok(true),
        Err(InitError::MkDir { source, .. })
            if source.raw_os_error() == Some(libc::EROFS) && !Path::new(path).exists() =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn mount_fs(
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    match mount(Some(fstype), target, Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        // Already there (a kernel with DEVTMPFS_MOUNT, or a re-exec): fine.
        Err(Errno::EBUSY) => Ok(()),
        Err(source) => Err(InitError::Mount {
            fstype,
            target,
            source,
        }),
    }
}

fn mount_dev() -> Result<(), InitError> {
    mkdir("/dev", 0o755)?;
    mount_fs("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755"))
}

/// Makes fds 0-2 the console if the kernel could not open one for us.
fn ensure_console() -> Result<(), InitError> {
    let missing: Vec<i32> = (0..3)
        .filter(|&fd| nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let open = |p: &str| {
        nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY,
            nix::sys::stat::Mode::empty(),
        )
    };
    let fd = open("/dev/console")
        .or_else(|_| open("/dev/ttyS0"))
        .map_err(InitError::Console)?;
    for target in missing {
        if fd != target {
            nix::unistd::dup2(fd, target).map_err(InitError::Console)?;
        }
    }
    if fd > 2 {
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

fn mount_rest() -> Result<(), InitError> {
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mkdir("/proc", 0o555)?;
    mount_fs("proc", "/proc", nse, None)?;
    mkdir("/sys", 0o555)?;
    mount_fs("sysfs", "/sys", nse, None)?;
    mkdir("/dev/pts", 0o755)?;
    mount_fs(
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666"),
    )?;
    mkdir("/dev/shm", 0o1777)?;
    mount_fs(
        "tmpfs",
        "/dev/shm",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    // A read-only root (an engine's sandbox image, `docker run --read-only`)
    // may lack /run or /tmp and cannot get them: the workload goes without,
    // as it would in a container of that image.
    if optional_dir("/run", 0o755)? {
        mount_fs(
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        )?;
    }
    // The initramfs root is already in RAM: /tmp needs to exist, not a mount.
    if !Path::new("/tmp").exists() && optional_dir("/tmp", 0o1777)? {
        // The umask took the sticky/other bits off; put them back.
        std::fs::set_permissions("/tmp", std::fs::Permissions::from_mode(0o1777)).map_err(
            |source| InitError::MkDir {
                path: "/tmp".into(),
                source,
            },
        )?;
    }
    // The links a container's /dev has too; devtmpfs does not make them.
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    Ok(())
}

/// Mounts cgroup2 and creates the workload's cgroup with `pids.max = limit`.
fn setup_pids_cgroup(limit: u64) -> Result<(), InitError> {
    let err = |path: &str| {
        let path = PathBuf::from(path);
        move |source| InitError::Cgroup {
            limit,
            path,
            source,
        }
    };
    mount_fs(
        "cgroup2",
        CGROUP_ROOT,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    let available = format!("{CGROUP_ROOT}/cgroup.controllers");
    let controllers = std::fs::read_to_string(&available).map_err(err(&available))?;
    if !controllers.split_whitespace().any(|c| c == "pids") {
        return Err(InitError::NoPidsController(limit));
    }
    let control = format!("{CGROUP_ROOT}/cgroup.subtree_control");
    std::fs::write(&control, "+pids").map_err(err(&control))?;
    mkdir(WORKLOAD_CGROUP, 0o755)?;
    let max = format!("{WORKLOAD_CGROUP}/pids.max");
    std::fs::write(&max, limit.to_string()).map_err(err(&max))
}

/// Console output passes through unchanged (no `\n` -> `\r\n`, as a container's
/// stdout would) and input is not echoed back into the workload's output.
fn quiet_console() {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, OutputFlags, SetArg};
    let stdin = std::io::stdin();
    if let Ok(mut t) = tcgetattr(&stdin) {
        t.output_flags.remove(OutputFlags::OPOST);
        t.local_flags
            .remove(LocalFlags::ECHO | LocalFlags::ECHONL | LocalFlags::ECHOE);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &t);
    }
}

/// The console as the workload's terminal (`duet run -t`): the line
/// discipline a terminal has (echo, line editing, `\n` -> `\r\n`, ^C and
/// ^Z as signals to the foreground group), at the size of the host's.
/// The host side passes keystrokes through raw.
fn terminal_console(size: duet_init::config::TtySize) {
    use nix::sys::termios::{tcgetattr, tcsetattr, InputFlags, LocalFlags, OutputFlags, SetArg};
    let stdin = std::io::stdin();
    if let Ok(mut t) = tcgetattr(&stdin) {
        t.input_flags.insert(InputFlags::ICRNL);
        t.output_flags
            .insert(OutputFlags::OPOST | OutputFlags::ONLCR);
        t.local_flags.insert(
            LocalFlags::ECHO
                | LocalFlags::ECHOE
                | LocalFlags::ECHOK
                | LocalFlags::ECHOCTL
                | LocalFlags::ECHOKE
                | LocalFlags::ICANON
                | LocalFlags::ISIG
                | LocalFlags::IEXTEN,
        );
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &t);
    }
    let _ = duet_init::agent::set_size(0, size.rows, size.cols);
}

/// Starts the workload and waits for it, reaping every other process meanwhile.
fn run_workload(w: &GuestWorkload, ports: &GuestPorts) -> Result<u32, InitError> {
    // Everything the child needs is prepared before fork.
    let argv: Vec<CString> = w.argv.iter().map(|a| cstring(a)).collect();
    let env: Vec<CString> = w.env.iter().map(|e| cstring(e)).collect();
    let path_var = w.path_var().map(str::to_string);
    // The child writes one byte here if its setup fails; exec closes it.
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(InitError::Pipe)?;

    // The console's session belongs to init, not to the workload: when a
    // session leader with a controlling terminal exits, the kernel hangs the
    // terminal up and drops output the UART has not sent yet (slow in a VM:
    // every byte is an exit). So init leads the session and owns the
    // console, the workload runs as its foreground process group (^C still
    // reaches it), and its exit hangs nothing up: init drains the console
    // before reporting the exit status. SIGTTOU is ignored so init may take
    // the foreground back and drain from a background group.
    let _ = nix::unistd::setsid();
    // SAFETY: TIOCSCTTY takes an int argument; SIG_IGN runs no code of ours.
    unsafe {
        libc::ioctl(0, libc::TIOCSCTTY, 0);
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
    }

    // SAFETY: PID 1 is single-threaded, so the child may allocate and use
    // std freely; it only returns into `exec_workload`, which never returns.
    match unsafe { fork() }.map_err(InitError::Fork)? {
        ForkResult::Child => {
            drop(rd);
            exec_workload(w, &argv, &env, path_var.as_deref(), ports, wr)
        }
        ForkResult::Parent { child } => {
            drop(wr);
            if w.agent {
                start_agent(w, child, ports);
            }
            let mut setup_failed = [0u8; 1];
            let n = std::fs::File::from(rd).read(&mut setup_failed).unwrap_or(0);
            let status = wait_for(child)?;
            // SAFETY: plain ioctl on the console; SIGTTOU is ignored (above).
            unsafe { libc::tcsetpgrp(0, libc::getpgrp()) };
            if n > 0 {
                return Err(InitError::ChildSetup);
            }
            Ok(status::encode_wait(status))
        }
    }
}

/// Forks the guest agent (`duet exec`, duet_init::agent). Its failures are
/// printed and leave the workload alone: it runs whether or not exec works.
fn start_agent(w: &GuestWorkload, workload: Pid, ports: &GuestPorts) {
    let ctx = duet_init::agent::AgentContext {
        workload: w.clone(),
        workload_pid: workload.as_raw(),
        cgroup_procs: w
            .pids_max
            .map(|_| format!("{WORKLOAD_CGROUP}/cgroup.procs")),
    };
    // SAFETY: PID 1 is single-threaded; the child runs only the agent,
    // which never returns.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // Neither the agent nor what it runs may write duet's ports.
            ports.release();
            // Out of the console's session: ^C on the console is the workload's.
            let _ = nix::unistd::setsid();
            match duet_init::agent::listen_vsock(duet_shared::guest_abi::AGENT_PORT) {
                Ok(l) => duet_init::agent::serve(l, &ctx),
                Err(e) => {
                    eprintln!("duet-init: the exec agent cannot listen: {e}");
                    // SAFETY: ends the forked agent without PID 1's destructors.
                    unsafe { libc::_exit(1) }
                }
            }
        }
        Ok(ForkResult::Parent { .. }) => {}
        Err(e) => eprintln!("duet-init: cannot fork the exec agent: {e}"),
    }
}

fn cstring(s: &str) -> CString {
    // validate() refused NUL bytes already.
    CString::new(s).expect("config strings have no NUL")
}

/// Reaps children until `child` ends; returns how it ended.
fn wait_for(child: Pid) -> Result<WaitStatus, InitError> {
    loop {
        match waitpid(None, None) {
            Ok(s @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)))
                if pid == child =>
            {
                return Ok(s)
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(InitError::Wait(child, e)),
        }
    }
}

/// The child: joins the cgroup, enters workdir, reports ready, execs.
///
/// Setup failures before "ready" are init failures; a command that cannot
/// be run after it exits 127/126 with a message, as in a shell or container.
fn exec_workload(
    w: &GuestWorkload,
    argv: &[CString],
    env: &[CString],
    path_var: Option<&str>,
    ports: &GuestPorts,
    setup_pipe: OwnedFd,
) -> ! {
    let setup_failed = |msg: String| -> ! {
        eprintln!("duet-init: {msg}");
        let _ = std::fs::File::from(setup_pipe.try_clone().expect("dup pipe")).write_all(b"!");
        // SAFETY: _exit ends this forked child without running PID 1's
        // atexit handlers or flushing buffers it shares with the parent.
        unsafe { libc::_exit(1) }
    };
    // Foreground process group of init's console session (see run_workload).
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    // SAFETY: plain ioctl on the console; SIGTTOU is still ignored here.
    unsafe { libc::tcsetpgrp(0, libc::getpid()) };
    reset_signals();
    if w.pids_max.is_some() {
        let procs = format!("{WORKLOAD_CGROUP}/cgroup.procs");
        if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
            setup_failed(format!("cannot join the workload cgroup: {procs}: {e}"));
        }
    }
    if let Some(u) = &w.user {
        // Groups first: after setuid the process may no longer change them.
        let groups: Vec<_> = u
            .additional_gids
            .iter()
            .map(|&g| Gid::from_raw(g))
            .collect();
        if let Err(e) = nix::unistd::setgroups(&groups)
            .and_then(|()| {
                nix::unistd::setresgid(
                    Gid::from_raw(u.gid),
                    Gid::from_raw(u.gid),
                    Gid::from_raw(u.gid),
                )
            })
            .and_then(|()| {
                nix::unistd::setresuid(
                    Uid::from_raw(u.uid),
                    Uid::from_raw(u.uid),
                    Uid::from_raw(u.uid),
                )
            })
        {
            setup_failed(format!(
                "cannot switch to user {}:{}: {}",
                u.uid,
                u.gid,
                e.desc()
            ));
        }
    }
    if let Err(e) = nix::unistd::chdir(w.workdir.as_str()) {
        setup_failed(format!(
            "cannot change to workdir {}: {}",
            w.workdir,
            e.desc()
        ));
    }
    // "ready" marks the same point as in a container: setup done, the
    // command's lookup and exec are next (a missing command still counts as
    // started, and its message goes out after the VMM starts forwarding).
    ports.ready();
    // The workload must not be able to forge duet's ready/exit reports.
    ports.release();
    let file = match command::resolve(&w.argv[0], path_var) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("duet-init: {e}");
            // SAFETY: as above, _exit in the forked child.
            unsafe { libc::_exit(e.exit_code() as i32) }
        }
    };
    let file = CString::new(file.into_os_string().into_encoded_bytes()).expect("path has no NUL");
    let err = nix::unistd::execve(&file, argv, env).unwrap_err();
    let code = if err == Errno::ENOENT {
        // The file exists (resolve checked): its ELF loader or #! interpreter does not.
        eprintln!(
            "duet-init: cannot run {}: its interpreter (ELF loader or #! line) is missing in the image",
            w.argv[0]
        );
        command::EXIT_NOT_FOUND
    } else {
        eprintln!(
            "duet-init: cannot execute {}: {}",
            file.to_string_lossy(),
            err.desc()
        );
        command::EXIT_NOT_EXECUTABLE
    };
    // SAFETY: as above, _exit in the forked child.
    unsafe { libc::_exit(code as i32) }
}

/// Undoes what the Rust runtime set up for PID 1: SIGPIPE ignored (which
/// exec would pass on to the workload) and any blocked signals.
fn reset_signals() {
    use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
    // SAFETY: installing SIG_DFL runs no handler code of ours.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    // SAFETY: as above; init ignores SIGTTOU, the workload must not.
    let _ = unsafe { signal(Signal::SIGTTOU, SigHandler::SigDfl) };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

fn print_error(e: &dyn Error) {
    let mut msg = format!("duet-init: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Prints the error, reports "init failed" and resets the machine.
fn fail(ports: &GuestPorts, e: &InitError) -> ! {
    print_error(e);
    drain_console();
    ports.exit_status(status::init_failed(e.stage()));
    power_off()
}

/// Waits until the UART has sent everything written so far: the VMM may stop
/// the guest as soon as it sees the exit status.
fn drain_console() {
    let _ = std::io::stdout().flush();
    let _ = nix::sys::termios::tcdrain(std::io::stdout().as_fd());
    let _ = nix::sys::termios::tcdrain(std::io::stderr().as_fd());
}

/// Resets the guest; with `reboot=k` the VMM sees an i8042 reset and stops.
fn power_off() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT).unwrap_err();
    print_error(&err);
    // PID 1 exiting panics the kernel, and panic=-1 resets at once.
    std::process::exit(1)
}
