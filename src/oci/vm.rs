//! `duet-runc --isolation vm` (or the annotation `io.duet.isolation=vm`):
//! the bundle runs in a microVM whose root is the bundle's rootfs, shared
//! over virtio-fs ([`duet_vmm::bundle`]).
//!
//! The process the engine gets in `--pid-file` is the *keeper*: duet-runc
//! itself, re-executed as `duet-runc __vm-keeper ID`, placed in the
//! container's cgroups. Until `start` it blocks on the start fifo, as a
//! container's init does; then it starts virtiofsd and the jailed VMM (both
//! its children, so both in the container's cgroups: `docker stats`,
//! `update`, `pause` and `ps` see the whole VM) and exits with the
//! workload's exit code, so the shim's wait on it is the container's exit.
//! `kill` reaches the workload inside through the guest agent (a keeper
//! whose guest does not answer yet, or one not started, is signalled
//! itself: it stops the VM on TERM/INT, and SIGKILL ends VMM and virtiofsd
//! with it by their parent-death signal). `exec` runs a relay,
//! `duet-runc __vm-exec`, that speaks to the agent with the exec's stdio;
//! with `--detach` the shim waits on the relay as on an exec'd process.
//!
//! What config.json asks is mapped onto the guest (args, env, cwd, user,
//! hostname, root.readonly, memory and CPU limits, pids limit, terminal,
//! hooks); what a guest cannot honour is refused, naming the field:
//! - mounts of other file systems at paths the guest init does not
//!   provide, more than [`duet_vmm::bundle::MAX_VOLUMES`] directory
//!   volumes. Bind mounts of directories (volumes) get a virtio-fs share
//!   each; bind mounts of small regular files (Docker's `/etc/hosts`,
//!   `resolv.conf`, `hostname`) are copied into the guest at create;
//! - joining another container's pid or mount namespace, and user
//!   namespaces. Network, IPC and UTS namespace paths (a pod's sandbox) are
//!   accepted: the microVM has its own kernel, so its own IPC and hostname
//!   (taken from the engine's `/etc/hostname`), and no network device yet.
//!
//! Capabilities, seccomp, rlimits, no_new_privileges, masked and read-only
//! paths and AppArmor confine a process that shares the host's kernel; the
//! workload here has a kernel of its own and runs as the guest's root or
//! the configured user, so they are not applied (as Kata does by default).

use super::state::{self, Dir, Record};
use anyhow::{bail, Context, Result};
use duet_container::oci_cgroup::OciCgroup;
use duet_vmm::bundle::BundleVm;
use duet_vmm::rootfs::GuestWorkload;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The keeper's hidden command.
pub const KEEPER_COMMAND: &str = "__vm-keeper";
/// The exec relay's hidden command.
pub const EXEC_COMMAND: &str = "__vm-exec";
/// Guest RAM without a memory limit in the config.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// The least guest RAM a memory limit may leave (the guest kernel's own needs).
pub const MIN_MEMORY_MIB: u64 = 32;
/// Added to the config's memory limit for the container's cgroup: the VMM
/// and virtiofsd live there beside guest RAM.
pub const CGROUP_HEADROOM_MIB: u64 = 96;
/// Destinations the guest init mounts itself.
const GUEST_MOUNTS: &[&str] = &[
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
];
/// How long `kill` waits for the guest agent before it signals the keeper.
const AGENT_KILL_WAIT: Duration = Duration::from_millis(500);

/// What `create` hands the keeper (`vm.json` in the container's directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeeperConfig {
    id: String,
    rootfs: PathBuf,
    read_only: bool,
    workload: GuestWorkload,
    #[serde(default)]
    volumes: Vec<duet_vmm::bundle::Volume>,
    memory_mib: u64,
    vcpus: u32,
    state_root: PathBuf,
    /// The agent's and virtiofsd's sockets ([`socket_dir`]).
    socket_dir: PathBuf,
    /// Where the keeper lives, network-wise.
    #[serde(default)]
    netns: EngineNetns,
}

/// Where VM containers' sockets live: a Unix socket's path is limited to
/// 107 bytes, and engines' bundle and state paths are long.
pub const SOCKET_ROOT: &str = "/run/duet-vm";

/// A fresh, short socket directory for container `id` (recorded in vm.json).
fn socket_dir(id: &str) -> PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    // FNV-1a of the id, the pid and the time: short and unique enough, and
    // recorded, so nothing has to recompute it.
    let salt = format!(
        "{id}/{}/{}",
        std::process::id(),
        duet_shared::clock::monotonic_ns()
    );
    for b in salt.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    Path::new(SOCKET_ROOT).join(format!("{h:016x}"))
}

fn load_config(dir: &Dir) -> Result<KeeperConfig> {
    let p = dir.path.join("vm.json");
    serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
        .with_context(|| format!("{}: not a keeper config", p.display()))
}

/// The container's agent socket.
fn agent_socket(dir: &Dir) -> Result<PathBuf> {
    Ok(load_config(dir)?.socket_dir.join(duet_vmm::agent::SOCKET))
}

/// Removes the socket directory of a VM container (delete, after its keeper is gone).
pub fn remove_sockets(dir: &Dir) {
    if let Ok(c) = load_config(dir) {
        let _ = std::fs::remove_dir_all(&c.socket_dir);
    }
}

/// The guest's view of a bundle, or the field that cannot be honoured.
struct Translated {
    workload: GuestWorkload,
    volumes: Vec<duet_vmm::bundle::Volume>,
    memory_mib: u64,
    vcpus: u32,
    read_only: bool,
    terminal: bool,
    netns: EngineNetns,
}

/// The network namespace the keeper (and so the VM's tap) lives in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
enum EngineNetns {
    /// No network namespace in the config (the host's): the VM gets no device.
    #[default]
    Host,
    /// A new one, which the engine fills (Docker's libnetwork hook).
    New,
    /// One the engine made (a pod's, a CNI plugin's), joined by path.
    Path(PathBuf),
}

fn translate(spec: &Spec, rootfs: &Path, id: &str) -> Result<Translated> {
    let Some(p) = spec.process() else {
        bail!("config.json: `process` is missing (isolation vm needs a process to run)");
    };
    let argv = p.args().clone().unwrap_or_default();
    if argv.is_empty() {
        bail!("config.json: `process.args` is empty");
    }
    let u = p.user();
    let additional = u.additional_gids().clone().unwrap_or_default();
    let user = (u.uid() != 0 || u.gid() != 0 || !additional.is_empty()).then(|| {
        duet_init::config::GuestUser {
            uid: u.uid(),
            gid: u.gid(),
            additional_gids: additional,
        }
    });
    let linux = spec.linux().as_ref();
    let mut netns = EngineNetns::Host;
    for (i, ns) in linux
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        match (ns.typ(), ns.path()) {
            (LinuxNamespaceType::User, _) => bail!(
                "config.json: linux.namespaces[{i}] (user): isolation vm runs the workload in a guest kernel of its own, without user namespaces"
            ),
            // The network namespace the engine prepares for the container
            // (new, or a pod's by path) is where the keeper lives: the
            // engine's address goes to the VM (duet_network::engine).
            (LinuxNamespaceType::Network, None) => netns = EngineNetns::New,
            (LinuxNamespaceType::Network, Some(p)) => netns = EngineNetns::Path(p.clone()),
            // A pod's containers join its sandbox's IPC and UTS namespaces
            // (CRI). A microVM has its own kernel and so its own IPC and
            // hostname (the pod's hostname comes from its /etc/hostname
            // bind, below). So these joins are accepted, and the pod's VMs
            // share none of them: what a VM per pod (as Kata) would add.
            (LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts, _) | (_, None) => {}
            (t, Some(path)) => bail!(
                "config.json: linux.namespaces[{i}] ({t:?} at {}): a microVM cannot join another container's namespace",
                path.display()
            ),
        }
    }
    if linux.is_some_and(|l| l.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())) {
        bail!("config.json: linux.uidMappings: not supported with isolation vm");
    }
    let mut files = Vec::new();
    let mut volumes = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let dest = m.destination().display().to_string();
        let options = m.options().clone().unwrap_or_default();
        let bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        if !bind {
            if GUEST_MOUNTS.contains(&dest.as_str()) {
                continue;
            }
            bail!(
                "config.json: mounts[{i}] ({} on {dest}): isolation vm mounts only {} itself",
                m.typ().as_deref().unwrap_or("?"),
                GUEST_MOUNTS.join(", ")
            );
        }
        let source = m.source().clone().unwrap_or_default();
        let meta = std::fs::metadata(&source)
            .with_context(|| format!("config.json: mounts[{i}] source {}", source.display()))?;
        if meta.is_dir() {
            if volumes.len() == duet_vmm::bundle::MAX_VOLUMES {
                bail!(
                    "config.json: mounts[{i}] (bind of {} on {dest}): isolation vm shares at most {} directory volumes",
                    source.display(),
                    duet_vmm::bundle::MAX_VOLUMES
                );
            }
            volumes.push(duet_vmm::bundle::Volume {
                source: source.clone(),
                target: dest,
                read_only: options.iter().any(|o| o == "ro"),
            });
            continue;
        }
        if !meta.is_file() {
            bail!(
                "config.json: mounts[{i}] (bind of {} on {dest}): isolation vm shares directories and copies regular files; this is neither",
                source.display()
            );
        }
        if meta.len() > duet_init::files::MAX_FILE_BYTES as u64 {
            bail!(
                "config.json: mounts[{i}] (bind of {} on {dest}): {} bytes; isolation vm copies bound files of at most {} bytes",
                source.display(),
                meta.len(),
                duet_init::files::MAX_FILE_BYTES
            );
        }
        let content = std::fs::read(&source)
            .with_context(|| format!("config.json: mounts[{i}] source {}", source.display()))?;
        files.push(duet_init::files::GuestFile {
            path: dest,
            content,
            read_only: options.iter().any(|o| o == "ro"),
        });
    }
    let resources = linux.and_then(|l| l.resources().as_ref());
    let memory_mib = match resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|&l| l > 0)
    {
        Some(limit) => {
            let mib = limit as u64 >> 20;
            if mib < MIN_MEMORY_MIB {
                bail!(
                    "config.json: linux.resources.memory.limit = {limit} bytes: a microVM needs at least {MIN_MEMORY_MIB} MiB"
                );
            }
            mib
        }
        None => DEFAULT_MEMORY_MIB,
    };
    let vcpus = resources
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p) as u32),
            _ => None,
        })
        .unwrap_or(1)
        .clamp(1, duet_vmm::mptable::MAX_VCPUS);
    let pids_max = resources
        .and_then(|r| r.pids().as_ref())
        .map(|p| p.limit())
        .filter(|&l| l > 0)
        .map(|l| l as u64);
    // Without a hostname in the config (a pod's container, which joins the
    // pod's UTS namespace), the engine's /etc/hostname names it.
    let hostname = spec.hostname().clone().or_else(|| {
        files
            .iter()
            .find(|f| f.path == "/etc/hostname")
            .map(|f| String::from_utf8_lossy(&f.content).trim().to_string())
            .filter(|h| !h.is_empty() && h.len() <= 64)
    });
    let workload = GuestWorkload {
        argv,
        env: p.env().clone().unwrap_or_default(),
        workdir: p.cwd().display().to_string(),
        hostname: hostname.unwrap_or_else(|| id.chars().take(64).collect()),
        pids_max,
        agent: true,
        user,
        files,
        network: None,
        template: false,
        // The keeper's stdio is then the engine's pty: the guest console
        // becomes the workload's terminal (its size is the pty's, from the
        // keeper on).
        tty: p
            .terminal()
            .unwrap_or(false)
            .then_some(duet_init::config::TtySize { rows: 24, cols: 80 }),
    };
    workload
        .validate()
        .map_err(|m| anyhow::anyhow!("config.json: {m}"))?;
    if !rootfs.is_dir() {
        bail!(
            "config.json: root.path {} is not a directory",
            rootfs.display()
        );
    }
    Ok(Translated {
        workload,
        volumes,
        memory_mib,
        vcpus,
        read_only: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        terminal: p.terminal().unwrap_or(false),
        netns,
    })
}

/// The container's cgroup limits: the config's, with room for the VMM and
/// virtiofsd beside guest RAM.
fn cgroup_resources(spec: &Spec) -> Option<oci_spec::runtime::LinuxResources> {
    let mut r = spec.linux().as_ref()?.resources().clone()?;
    if let Some(mut m) = *r.memory() {
        let extra = (CGROUP_HEADROOM_MIB << 20) as i64;
        if let Some(l) = m.limit().filter(|&l| l > 0) {
            m.set_limit(Some(l + extra));
        }
        if let Some(s) = m.swap().filter(|&s| s > 0) {
            m.set_swap(Some(s + extra));
        }
        r.set_memory(Some(m));
    }
    // The guest enforces pids.max on its own processes (duet-init); the
    // VMM's threads are not the workload's.
    r.set_pids(None);
    Some(r)
}

/// A pty pair; the master goes to the console socket, the slave (raw, so
/// the guest's own terminal does the line discipline) becomes the stdio of
/// the process that relays it.
fn console_pty(socket: &Path) -> Result<OwnedFd> {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors; the other arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("openpty for the console");
    }
    // SAFETY: both descriptors are new and ours.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: termios calls on our own pty slave.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(slave.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
    let s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("--console-socket {}", socket.display()))?;
    duet_container::channel::send_fd(s.as_raw_fd(), b"console", master.as_raw_fd())
        .map_err(std::io::Error::from_raw_os_error)
        .with_context(|| format!("sending the console to {}", socket.display()))?;
    Ok(slave)
}

/// Makes `slave` the stdio and controlling terminal of `cmd`'s process.
fn on_terminal(cmd: &mut std::process::Command, slave: &OwnedFd) -> Result<()> {
    cmd.stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave.try_clone()?);
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    Ok(())
}

/// Where shared VM state (initramfs cache, jail id leases) lives under `--root`.
fn state_root(root: &Path) -> PathBuf {
    root.join(".duet-vm")
}

/// `create` of a bundle with isolation vm: checks and translates the
/// config, makes the cgroups, starts the keeper (blocked until `start`).
pub fn create(
    root: &Path,
    dir: &Dir,
    bundle: &Path,
    spec: &Spec,
    annotations: std::collections::BTreeMap<String, String>,
    a: &liboci_cli::Create,
) -> Result<u8> {
    let rootfs = spec
        .root()
        .as_ref()
        .map(|r| bundle.join(r.path()))
        .unwrap_or_default();
    let t = translate(spec, &rootfs, &a.container_id)?;
    // Everything a boot needs must be there now: create fails, not start.
    duet_vmm::runtime::find_kernel()?;
    duet_vmm::rootfs::find_init_binary()?;
    duet_vmm::virtiofsd::find()?;
    if t.terminal && a.console_socket.is_none() {
        bail!("config.json: process.terminal is true but no --console-socket was given");
    }
    let state_root = state_root(root);
    std::fs::create_dir_all(&state_root)
        .with_context(|| format!("creating {}", state_root.display()))?;
    let cfg = KeeperConfig {
        id: a.container_id.clone(),
        rootfs: rootfs.clone(),
        read_only: t.read_only,
        workload: t.workload,
        volumes: t.volumes,
        memory_mib: t.memory_mib,
        vcpus: t.vcpus,
        state_root,
        socket_dir: socket_dir(&a.container_id),
        netns: t.netns.clone(),
    };
    let cfg_path = dir.path.join("vm.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    let fifo = dir.fifo();
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
    // SAFETY: mkfifo with a NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mkfifo {}", fifo.display()));
    }
    let rel = duet_container::oci_cgroup::relative_path(
        spec.linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_deref()),
        &a.container_id,
    )?;
    let cgroup = OciCgroup::create(&rel, cgroup_resources(spec).as_ref(), &[])
        .with_context(|| format!("the cgroups of container \"{}\"", a.container_id))?;
    let created = state::now_rfc3339();
    let started = (|| -> Result<Record> {
        let mut cmd = std::process::Command::new("/proc/self/exe");
        in_netns(&mut cmd, &t.netns)?;
        cmd.arg0("duet-runc")
            .arg("--root")
            .arg(root)
            .arg(KEEPER_COMMAND)
            .arg(&a.container_id);
        match (&a.console_socket, t.terminal) {
            (Some(s), true) => on_terminal(&mut cmd, &console_pty(s)?)?,
            _ => {
                // SAFETY: setsid is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::setsid();
                        Ok(())
                    });
                }
            }
        }
        let child = cmd.spawn().context("starting the microVM's keeper")?;
        let pid = child.id() as i32;
        let record = Record {
            id: a.container_id.clone(),
            pid,
            pid_start: duet_shared::instance::process_start_time(pid),
            bundle: bundle.to_path_buf(),
            rootfs: rootfs.clone(),
            annotations: annotations.clone(),
            created: created.clone(),
            cgroup: cgroup.clone(),
            isolation: "vm".into(),
            no_new_keyring: a.no_new_keyring,
        };
        // Dropping a Child neither kills nor waits: the shim (a subreaper) reaps it.
        drop(child);
        cgroup
            .add_pid(pid)
            .with_context(|| format!("moving the keeper {pid} into its cgroups"))?;
        Ok(record)
    })();
    let record = match started {
        Ok(r) => r,
        Err(e) => {
            let _ = cgroup.destroy();
            return Err(e);
        }
    };
    let hook_state = state::StateJson {
        oci_version: state::OCI_VERSION.into(),
        id: a.container_id.clone(),
        status: "created".into(),
        pid: record.pid,
        bundle: bundle.to_path_buf(),
        rootfs,
        created,
        annotations,
    };
    let saved = super::run_hooks(spec, "prestart", &hook_state)
        .and_then(|()| super::run_hooks(spec, "createRuntime", &hook_state))
        .map_err(anyhow::Error::from)
        .and_then(|()| dir.save(&record))
        .and_then(|()| match &a.pid_file {
            Some(p) => super::write_pid_file(p, record.pid),
            None => Ok(()),
        });
    if let Err(e) = saved {
        super::kill_all(&record, libc::SIGKILL);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while state::alive(&record) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = record.cgroup.destroy();
        return Err(e);
    }
    Ok(0)
}

/// The keeper is born in a new network namespace, or joins the engine's.
fn in_netns(cmd: &mut std::process::Command, netns: &EngineNetns) -> Result<()> {
    match netns {
        EngineNetns::Host => {}
        EngineNetns::New => {
            // SAFETY: unshare is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        EngineNetns::Path(p) => {
            let f = std::fs::File::open(p).with_context(|| {
                format!("config.json: linux.namespaces (network at {})", p.display())
            })?;
            let fd: OwnedFd = f.into();
            // SAFETY: setns is async-signal-safe; the fd lives in the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }
    Ok(())
}

/// Whether the keeper's network namespace is one the engine made for
/// containers: never the host's (pid 1's), whose address must not move.
fn own_netns(netns: &EngineNetns) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    match netns {
        EngineNetns::Host => false,
        EngineNetns::New | EngineNetns::Path(_) => {
            let mine = id("/proc/self/ns/net");
            mine.is_some() && mine != id("/proc/1/ns/net")
        }
    }
}

/// The engine's address for the VM (see duet_network::engine), if its
/// namespace has one.
fn engine_network(
    netns: &EngineNetns,
) -> Result<Option<(duet_vmm::NetDevice, duet_init::config::GuestNetwork)>> {
    if !own_netns(netns) {
        return Ok(None);
    }
    let Some(l) = duet_network::engine::take_over()
        .context("giving the engine's network address to the microVM")?
    else {
        return Ok(None);
    };
    let a = l.address.octets();
    let dev = duet_vmm::NetDevice {
        tap: std::sync::Arc::new(l.tap),
        mac: [0x02, 0xd0, a[0], a[1], a[2], a[3]],
    };
    let guest = duet_init::config::GuestNetwork {
        address: l.address,
        prefix: l.prefix,
        gateway: l.gateway,
        mac: Some(dev.mac),
    };
    Ok(Some((dev, guest)))
}

/// The keeper: waits for `start`, then boots the VM and exits with the
/// workload's exit code.
pub fn keeper(root: &Path, id: &str) -> Result<u8> {
    let dir = Dir::of(root, id)?;
    let cfg = load_config(&dir)?;
    // Blocks until `start` opens the fifo for reading, as a container's init does.
    let mut fifo = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.fifo())
        .with_context(|| format!("opening {}", dir.fifo().display()))?;
    std::io::Write::write_all(&mut fifo, b"0")?;
    drop(fifo);
    std::fs::create_dir_all(&cfg.socket_dir)
        .with_context(|| format!("creating {}", cfg.socket_dir.display()))?;
    // After `start`: the engine's hook (libnetwork-setkey) has filled the namespace by now.
    let net = engine_network(&cfg.netns)?;
    let mut workload = cfg.workload;
    workload.network = net.as_ref().map(|(_, g)| *g);
    // With a terminal, the engine's pty is fd 0 here: the guest's console
    // starts at its size and follows it.
    let _follower = workload.tty.as_mut().map(|size| {
        if let Some((rows, cols)) = duet_vmm::agent::terminal_size() {
            *size = duet_init::config::TtySize { rows, cols };
        }
        duet_vmm::agent::ConsoleFollower::start(
            &cfg.id,
            &cfg.socket_dir.join(duet_vmm::agent::SOCKET),
            0,
            Some((size.rows, size.cols)),
        )
    });
    let b = BundleVm {
        id: cfg.id,
        rootfs: cfg.rootfs,
        read_only: cfg.read_only,
        workload,
        net: net.map(|(d, _)| d),
        memory_mib: cfg.memory_mib,
        vcpus: cfg.vcpus,
        instance_dir: dir.path.clone(),
        socket_dir: cfg.socket_dir.clone(),
        state_root: cfg.state_root,
        console: std::env::var_os("DUET_VM_CONSOLE").is_some_and(|v| v == "1"),
        volumes: cfg.volumes,
    };
    let mut report = duet_shared::RunReport::start("vm", id, "oci-bundle");
    let exit = duet_vmm::bundle::run(&b, &mut report);
    let _ = std::fs::remove_dir_all(&cfg.socket_dir);
    Ok(exit?.shell_code().clamp(0, 255) as u8)
}

/// `kill` of a VM container.
pub fn kill(dir: &Dir, r: &Record, sig: i32) -> Result<()> {
    if state::status(dir, r) != "created" {
        let sock = agent_socket(dir)?;
        if duet_vmm::agent::kill_path(&r.id, &sock, sig, AGENT_KILL_WAIT).is_ok() {
            return Ok(());
        }
    }
    super::signal_init(r, sig)
}

/// The agent's request for an OCI process.
fn request_of(p: &oci_spec::runtime::Process) -> Result<duet_shared::ExecRequest> {
    let argv = p.args().clone().unwrap_or_default();
    if argv.is_empty() {
        bail!("exec: the process has no args");
    }
    let u = p.user();
    let additional_gids = u.additional_gids().clone().unwrap_or_default();
    let user = (u.uid() != 0 || u.gid() != 0 || !additional_gids.is_empty()).then(|| {
        duet_shared::runtime::ExecUser {
            uid: u.uid(),
            gid: u.gid(),
            additional_gids,
        }
    });
    Ok(duet_shared::ExecRequest {
        command: argv,
        env: p.env().clone().unwrap_or_default(),
        workdir: Some(p.cwd().display().to_string()),
        tty: p.terminal().unwrap_or(false),
        interactive: true,
        user,
    })
}

/// `exec` into a VM container: a relay process per exec (see the module doc).
pub fn exec(
    root: &Path,
    r: &Record,
    process: &oci_spec::runtime::Process,
    a: &liboci_cli::Exec,
) -> Result<u8> {
    let req = request_of(process)?;
    // The request goes in a file only root can read, not on the relay's
    // command line, which every user can read in /proc (env may hold secrets).
    let dir = Dir::of(root, &r.id)?;
    let req_path = dir.path.join(format!(
        "exec-{}-{}.json",
        std::process::id(),
        duet_shared::clock::monotonic_ns()
    ));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&req_path)
            .with_context(|| format!("writing {}", req_path.display()))?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec(&req)?)?;
    }
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0("duet-runc")
        .arg("--root")
        .arg(root)
        .arg(EXEC_COMMAND)
        .arg(&r.id)
        .arg(&req_path);
    match (&a.console_socket, req.tty) {
        (Some(s), true) => on_terminal(&mut cmd, &console_pty(s)?)?,
        (None, true) => bail!("exec: process.terminal is true but no --console-socket was given"),
        _ => {}
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&req_path);
            return Err(e).context("starting the exec relay");
        }
    };
    let pid = child.id() as i32;
    if a.detach {
        if let Some(p) = &a.pid_file {
            if let Err(e) = super::write_pid_file(p, pid) {
                let _ = child.kill();
                return Err(e);
            }
        }
        return Ok(0);
    }
    let status = child.wait()?;
    Ok(status.code().unwrap_or(128 + 9).clamp(0, 255) as u8)
}

/// The relay: runs the request in the file `request` (removed once read)
/// through the guest agent with this process's stdio.
pub fn exec_relay(root: &Path, id: &str, request: &Path) -> Result<u8> {
    let dir = Dir::of(root, id)?;
    let text = std::fs::read(request).with_context(|| format!("reading {}", request.display()));
    let _ = std::fs::remove_file(request);
    let req: duet_shared::ExecRequest =
        serde_json::from_slice(&text?).context("the exec relay's request")?;
    // SAFETY: fds 1 and 2 stay open for the process's life; ManuallyDrop never closes them.
    let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
    // SAFETY: as above.
    let mut err = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(2) });
    let io = duet_vmm::agent::ExecIo {
        stdin: Some(0),
        stdout: &mut *out,
        stderr: &mut *err,
        terminal: req.tty.then_some(0),
    };
    let exit = duet_vmm::agent::exec_with(id, &agent_socket(&dir)?, &req, io)?;
    Ok(exit.shell_code().clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}]}
        })
    }

    #[test]
    fn limits_and_user_reach_the_guest() {
        let d = tempfile::tempdir().unwrap();
        let mut j = base();
        j["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 10, "additionalGids": [5]});
        j["linux"]["resources"] = serde_json::json!({
            "memory": {"limit": 64i64 << 20},
            "cpu": {"quota": 150000, "period": 100000},
            "pids": {"limit": 20}
        });
        let t = translate(&spec(j.clone()), d.path(), "c1").unwrap();
        assert_eq!(t.memory_mib, 64);
        assert_eq!(t.vcpus, 2);
        assert_eq!(t.workload.pids_max, Some(20));
        assert_eq!(t.workload.user.as_ref().unwrap().additional_gids, [5]);
        let r = cgroup_resources(&spec(j)).unwrap();
        assert_eq!(
            r.memory().as_ref().unwrap().limit(),
            Some((64 + CGROUP_HEADROOM_MIB as i64) << 20)
        );
        assert!(r.pids().is_none());
    }

    #[test]
    fn what_a_guest_cannot_honour_is_refused_by_field() {
        let d = tempfile::tempdir().unwrap();
        let vol = d.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|j| {
                    j["linux"]["namespaces"] =
                        serde_json::json!([{"type": "pid", "path": "/proc/1/ns/pid"}])
                }),
                "linux.namespaces[0]",
            ),
            (
                Box::new(|j| j["linux"]["namespaces"] = serde_json::json!([{"type": "user"}])),
                "linux.namespaces[0] (user)",
            ),
            (
                Box::new(
                    |j| j["mounts"] = serde_json::json!([{"destination": "/n", "type": "bind", "source": "/dev/null", "options": ["rbind"]}]),
                ),
                "mounts[0] (bind of /dev/null on /n)",
            ),
            (
                Box::new(move |j| {
                    let many: Vec<_> = (0..=duet_vmm::bundle::MAX_VOLUMES)
                        .map(|n| serde_json::json!({"destination": format!("/v{n}"), "type": "bind", "source": vol, "options": ["rbind"]}))
                        .collect();
                    j["mounts"] = serde_json::Value::Array(many);
                }),
                "at most 8 directory volumes",
            ),
            (
                Box::new(|j| {
                    j["mounts"] = serde_json::json!([{"destination": "/x", "type": "tmpfs", "source": "tmpfs"}])
                }),
                "mounts[0] (tmpfs on /x)",
            ),
            (
                Box::new(|j| {
                    j["linux"]["resources"] = serde_json::json!({"memory": {"limit": 8i64 << 20}})
                }),
                "memory.limit",
            ),
            (
                Box::new(|j| j["process"]["args"] = serde_json::json!([])),
                "process.args",
            ),
        ];
        for (edit, want) in cases {
            let mut j = base();
            edit(&mut j);
            let e = translate(&spec(j), d.path(), "c1")
                .err()
                .expect(want)
                .to_string();
            assert!(e.contains(want) && e.contains("config.json"), "{want}: {e}");
        }
    }

    #[test]
    fn files_are_copied_volumes_shared_and_guest_mounts_pass() {
        let d = tempfile::tempdir().unwrap();
        let hosts = d.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let mut j = base();
        j["mounts"] = serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind", "ro"]}
        ]);
        j["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/data", "type": "bind", "source": d.path(), "options": ["rbind", "ro"]}
        ));
        let t = translate(&spec(j), d.path(), "c1").unwrap();
        assert_eq!(t.volumes.len(), 1);
        assert_eq!(
            (t.volumes[0].target.as_str(), t.volumes[0].read_only),
            ("/data", true)
        );
        assert_eq!(t.workload.files.len(), 1);
        assert_eq!(t.workload.files[0].path, "/etc/hosts");
        assert!(t.workload.files[0].read_only);
        assert_eq!(t.workload.files[0].content, b"127.0.0.1 localhost\n");
    }
}
