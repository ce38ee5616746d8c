//! `duet run --isolation vm`: the [`Runtime`] that boots a microVM per run.
//!
//! Recipe: find the guest kernel and init, prepare the guest's root file
//! system, boot it with [`crate::run_vm`], and turn how the VM ended into
//! the workload's exit status (or an error with the last console lines).
//!
//! Two ways to give the guest its root ([`RootfsMode`], `DUET_VM_ROOTFS`):
//! - `disks` (default): the image's layers as read-only erofs disks (built
//!   once per layer and shared by every VM), a sparse per-instance ext4
//!   scratch disk as overlayfs upper layer, and an initramfs holding only the
//!   init and the workload config ([`crate::disks`]);
//! - `initramfs`: the layers merged into the initramfs (cached per image;
//!   [`crate::rootfs`]), everything in guest RAM, writes lost at exit.

use crate::disks::{self, DiskError};
use crate::jail;
use crate::rootfs::{self, RootfsError};
use crate::{run_vm, ConsoleMode, GuestFailure, VmConfig, VmEnd, VmmError};
use duet_shared::image::layer_image::{self, LayerImageError};
use duet_shared::image::{ImageError, ImageStore};
use duet_shared::runtime::BackendError;
use duet_shared::{Instance, Launch, Phase, RunReport, Runtime, WorkloadExit};
use std::path::PathBuf;

pub mod snapshots;
pub mod templates;

/// What a created VM boots as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Boot {
    /// The run's own workload (or a restore of `--from-snapshot`/`--warm`).
    Normal,
    /// A warm-start template: root mounted, then duet-init waits ([`templates`]).
    Template,
}

/// Environment variable naming the guest kernel (ELF vmlinux or bzImage).
pub const KERNEL_ENV: &str = "DUET_KERNEL";
/// Environment variable whose words are appended to the guest kernel's
/// command line (debugging, like Firecracker's `boot_args`).
pub const KERNEL_APPEND_ENV: &str = "DUET_KERNEL_APPEND";
/// Environment variable choosing the guest root: `disks` (default) or `initramfs`.
pub const ROOTFS_ENV: &str = "DUET_VM_ROOTFS";
/// Where `scripts/install.sh` puts the guest kernel.
pub const SYSTEM_KERNEL_PATH: &str = "/usr/local/lib/duet/vmlinux";

/// Errors of a VM run.
#[derive(Debug, thiserror::Error)]
pub enum VmRuntimeError {
    /// No guest kernel where duet looks for one.
    #[error("no guest kernel found (tried {}); build it with `images/kernel/build.sh` or set {KERNEL_ENV}", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    KernelNotFound {
        /// Paths looked at, in order.
        tried: Vec<PathBuf>,
    },
    /// Building the guest's root file system failed.
    #[error("preparing the guest's initramfs")]
    Rootfs(#[from] RootfsError),
    /// `DUET_VM_ROOTFS` has a value duet does not know.
    #[error("{ROOTFS_ENV}={0:?}: use `disks` or `initramfs`")]
    RootfsMode(String),
    /// The image store could not be opened.
    #[error("opening the image store")]
    Store(#[from] ImageError),
    /// A layer's disk image could not be built.
    #[error("preparing the layer disks")]
    LayerImage(#[from] LayerImageError),
    /// The scratch disk or the init-only initramfs could not be made.
    #[error("preparing the guest's disks")]
    Disk(#[from] DiskError),
    /// The VMM failed.
    #[error("microVM")]
    Vmm(#[from] VmmError),
    /// The guest ended without reporting the workload's exit status.
    #[error("the guest did not report an exit status")]
    Guest(#[from] GuestFailure),
    /// The VMM's cgroups could not be made.
    #[error("the VMM's cgroups")]
    Cgroup(#[source] duet_shared::runtime::BackendError),
    /// The virtio-fs backend could not be found or started.
    #[error(transparent)]
    Virtiofsd(#[from] crate::virtiofsd::VirtiofsdError),
    /// A warm start failed: its template, or the hand-over to the clone.
    #[error("warm start of image `{image}`")]
    Template {
        /// The image.
        image: String,
        /// What failed.
        #[source]
        source: templates::TemplateError,
    },
    /// A clone restored from a snapshot of a VM on the bridge could not be
    /// given its own MAC and address (its guest agent did not do it).
    #[error("giving the restored guest its own address {address} on duet's bridge")]
    Renumber {
        /// The address it was to get.
        address: std::net::Ipv4Addr,
        /// What failed.
        #[source]
        source: crate::agent::AgentError,
    },
}

/// Removes the VMM's cgroups when the run ends, however it ends.
struct CgroupGuard(Option<Box<dyn duet_shared::runtime::CgroupLease>>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            if let Err(e) = c.destroy() {
                eprintln!("duet: removing the VMM's cgroups: {e}");
            }
        }
    }
}

/// Finds the guest kernel: `$DUET_KERNEL`, the build cache's `current`
/// kernel, then the installed one (`<prefix>/lib/duet/vmlinux` for
/// `<prefix>/bin/duet`, then [`SYSTEM_KERNEL_PATH`]).
pub fn find_kernel() -> Result<PathBuf, VmRuntimeError> {
    if let Some(p) = std::env::var_os(KERNEL_ENV).filter(|p| !p.is_empty()) {
        // An explicit path is used as given: the loader names it if it is missing or bad.
        return Ok(PathBuf::from(p));
    }
    let mut tried = vec![duet_shared::paths::cache_dir().join("kernel/current/vmlinux")];
    tried.extend(duet_shared::paths::installed("vmlinux"));
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(VmRuntimeError::KernelNotFound { tried }),
    }
}

/// How the guest gets its root file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsMode {
    /// Layer disks + scratch disk + overlayfs in the guest.
    Disks,
    /// Layers merged into the initramfs.
    Initramfs,
}

impl RootfsMode {
    /// The mode `DUET_VM_ROOTFS` asks for (unset or empty: [`RootfsMode::Disks`]).
    pub fn from_env() -> Result<RootfsMode, VmRuntimeError> {
        match std::env::var(ROOTFS_ENV) {
            Err(_) => Ok(RootfsMode::Disks),
            Ok(v) => match v.as_str() {
                "" | "disks" => Ok(RootfsMode::Disks),
                "initramfs" => Ok(RootfsMode::Initramfs),
                _ => Err(VmRuntimeError::RootfsMode(v)),
            },
        }
    }
}

/// Memory the VMM's cgroup allows beyond the guest's RAM: the VMM's own
/// heap, stacks and page tables, and page cache of the disk images it
/// reads (which the kernel reclaims before it would OOM-kill).
pub const VMM_CGROUP_HEADROOM_MIB: u64 = 64;

/// The microVM backend.
#[derive(Default)]
pub struct VmRuntime {
    host_cgroups: Option<Box<dyn duet_shared::runtime::HostCgroups>>,
}

impl std::fmt::Debug for VmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmRuntime")
            .field("host_cgroups", &self.host_cgroups.is_some())
            .finish()
    }
}

impl VmRuntime {
    /// A runtime; all lookups happen per run. Its VMM runs in the caller's
    /// cgroup unless [`VmRuntime::with_host_cgroups`] gives it its own.
    pub fn new() -> VmRuntime {
        VmRuntime { host_cgroups: None }
    }

    /// Runs each jailed VMM in cgroups of its own instance, made by `c`
    /// (memory: guest RAM + [`VMM_CGROUP_HEADROOM_MIB`]; cpu: its vCPUs).
    pub fn with_host_cgroups(c: Box<dyn duet_shared::runtime::HostCgroups>) -> VmRuntime {
        VmRuntime {
            host_cgroups: Some(c),
        }
    }

    /// Everything before the boot: kernel, init, disks or initramfs, the
    /// jail and the VMM's cgroups.
    pub(crate) fn create_vm(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
        boot: Boot,
    ) -> Result<Vm, VmRuntimeError> {
        let kernel = find_kernel()?;
        let opts = launch.options;
        let mut cfg = VmConfig {
            snapshots: Default::default(),
            kernel,
            initrd: None,
            cmdline: match std::env::var(KERNEL_APPEND_ENV) {
                Ok(extra) if !extra.trim().is_empty() => {
                    format!("{} {}", rootfs::kernel_cmdline(opts.console), extra.trim())
                }
                _ => rootfs::kernel_cmdline(opts.console),
            },
            memory_mib: launch.spec.resources.memory_mib,
            vcpus: launch.spec.resources.vcpus,
            timeout: opts.timeout,
            console: if opts.console {
                ConsoleMode::Forward
            } else {
                ConsoleMode::Workload
            },
            stdin: true,
            disks: Vec::new(),
            // Every VM run has an instance: `duet exec` reaches its guest agent here.
            agent_socket: Some(launch.instance.path().join(crate::agent::SOCKET)),
            fs: Vec::new(),
            net: launch.network.map(|n| crate::NetDevice {
                tap: n.tap.clone(),
                mac: n.mac,
            }),
        };
        cfg.snapshots = snapshots::config(launch, &cfg.kernel);
        // A missing or bad kernel, or too little memory for it, fails before any work.
        crate::check_config(&cfg)?;
        let kernel = &cfg.kernel;
        let init = rootfs::find_init_binary()?;
        if opts.explain {
            eprintln!(
                "duet: guest kernel {}, guest init {}",
                kernel.display(),
                init.display()
            );
        }
        let mut warm = None;
        let mut renumber = None;
        let mode = match boot {
            // The template's root is always the shared layer disks.
            Boot::Template => RootfsMode::Disks,
            Boot::Normal => RootfsMode::from_env()?,
        };
        match (&opts.from_snapshot, mode) {
            (None, _) if opts.warm && boot == Boot::Normal => {
                let key = templates::key_for(launch, &cfg, &init)?;
                let (path, built) = templates::ensure(self, launch, &key).map_err(|source| {
                    VmRuntimeError::Template {
                        image: launch.image.name.clone(),
                        source,
                    }
                })?;
                snapshots::prepare_restore(launch, &path, &mut cfg, report)?;
                report
                    .counters
                    .insert("warm_template_built".into(), u64::from(built));
                if opts.explain {
                    eprintln!(
                        "duet: warm start from the template {} ({}), the workload handed over on vsock port {}",
                        path.display(),
                        if built { "built now" } else { "cached" },
                        duet_shared::guest_abi::WARM_PORT
                    );
                }
                warm = Some(templates::warm_start(rootfs::launch_workload(launch)));
            }
            (Some(path), _) => {
                snapshots::prepare_restore(launch, path, &mut cfg, report)?;
                // The guest still has its template's MAC and address.
                renumber = launch.network.map(snapshots::network_update);
                if opts.explain {
                    eprintln!(
                        "duet: restoring the snapshot {} (RAM mapped copy-on-write, {} disk(s))",
                        path.display(),
                        cfg.disks.len()
                    );
                }
            }
            (None, RootfsMode::Initramfs) => {
                let (info, initrd) =
                    rootfs::build_for_launch(launch.instance.state_root(), launch, &init)?;
                report.mark(Phase::RootfsReady);
                report
                    .counters
                    .insert("initramfs_bytes".into(), info.total_bytes());
                if opts.explain {
                    eprintln!(
                        "duet: initramfs {} ({} bytes), booting {} MiB / {} vCPU(s)",
                        initrd.display(),
                        info.total_bytes(),
                        launch.spec.resources.memory_mib,
                        launch.spec.resources.vcpus
                    );
                }
                cfg.initrd = Some(initrd);
            }
            (None, RootfsMode::Disks) => {
                prepare_disks(launch, &init, &mut cfg, report, boot == Boot::Template)?;
            }
        }
        let guard = crate::signals::RunGuard::enter();
        let mut vm = Vm {
            cfg,
            jail: None,
            cgroup: CgroupGuard(None),
            guard: Some(guard),
            done: eventfd()?,
            thread: None,
            pid: 0,
            exit: None,
            instance: launch.instance.clone(),
            killed_with: std::sync::atomic::AtomicI32::new(0),
            warm,
            handover_us: None,
            renumber,
            renumber_us: None,
            terminal: None,
            tty: launch.options.tty && boot != Boot::Template,
        };
        match jail::JailMode::from_env().map_err(VmmError::from)? {
            jail::JailMode::On => {
                let mut j = jail::JailConfig::for_instance(
                    launch.instance.state_root(),
                    launch.instance.path(),
                    launch.instance.id(),
                )
                .map_err(VmmError::from)?;
                if let Some(c) = &self.host_cgroups {
                    let mut r = launch.spec.resources.clone();
                    r.memory_mib += VMM_CGROUP_HEADROOM_MIB;
                    // pids_max limits the guest's processes (duet-init applies it
                    // inside); the VMM's threads are not the workload's.
                    r.pids_max = None;
                    let lease = c
                        .create(launch.instance.id(), &r, opts.cgroup_parent.as_deref())
                        .map_err(VmRuntimeError::Cgroup)?;
                    j.cgroup_procs = lease.procs_files();
                    if opts.explain {
                        for d in lease.dirs() {
                            eprintln!(
                                "duet: VMM cgroup {} ({} MiB = guest RAM + {} MiB, {} CPU(s))",
                                d.display(),
                                r.memory_mib,
                                VMM_CGROUP_HEADROOM_MIB,
                                r.vcpus
                            );
                        }
                    }
                    vm.cgroup = CgroupGuard(Some(lease));
                }
                if opts.explain {
                    eprintln!(
                        "duet: VMM jail: uid {} gid {}, root {} (kernel, initrd, disks, dev/kvm), \
                         own mount/pid/net/ipc/uts namespaces, no capabilities",
                        j.uid,
                        j.gid,
                        j.dir.display()
                    );
                }
                vm.jail = Some(j);
            }
            jail::JailMode::Off => {
                if opts.explain {
                    eprintln!(
                        "duet: {}=off: the VMM runs unjailed in duet's process",
                        jail::JAIL_ENV
                    );
                }
            }
        }
        Ok(vm)
    }
}

/// How long [`Instance::kill`] waits for the guest agent before it
/// signals the VMM instead.
const KILL_AGENT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a restored clone's agent may take to take its new address.
const RENUMBER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the VM's thread hands back: the outcome and the timeline it stamped.
type VmThreadResult = (Result<crate::VmOutcome, VmmError>, RunReport);

/// A created microVM: disks, jail and cgroups ready; [`Instance::start`]
/// boots it on a thread of the owner (the jailed VMM is that thread's
/// child and dies with it, PR_SET_PDEATHSIG).
pub struct Vm {
    cfg: VmConfig,
    jail: Option<jail::JailConfig>,
    cgroup: CgroupGuard,
    guard: Option<crate::signals::RunGuard>,
    /// eventfd the VM's thread writes once the VM has ended.
    done: std::os::fd::OwnedFd,
    thread: Option<std::thread::JoinHandle<VmThreadResult>>,
    pid: i32,
    exit: Option<WorkloadExit>,
    /// Its instance (for the guest agent's socket).
    instance: duet_shared::InstanceDir,
    /// The last signal [`Instance::kill`] sent the VMM (0: none): a VMM
    /// that then dies without a result ended by that signal.
    killed_with: std::sync::atomic::AtomicI32,
    /// A warm start's hand-over, sent once the restored VM runs.
    warm: Option<duet_init::config::WarmStart>,
    /// How long the warm start's hand-over took (the `warm_handover_us` counter).
    handover_us: Option<u64>,
    /// A restored clone's own network identity, sent once it runs.
    renumber: Option<duet_shared::agent_abi::NetworkUpdate>,
    /// How long that took (the `network_renumber_us` counter).
    renumber_us: Option<u64>,
    /// With `-t`: the console's size sent along as duet's terminal changes,
    /// and that terminal raw (the guest's console does the line editing),
    /// until the VM ends.
    terminal: Option<(Option<crate::agent::RawMode>, crate::agent::ConsoleFollower)>,
    /// Whether the run asked for a terminal.
    tty: bool,
}

fn eventfd() -> Result<std::os::fd::OwnedFd, VmRuntimeError> {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd takes plain values and returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(VmRuntimeError::Vmm(VmmError::EventFd {
            device: "the VM's end",
            source: std::io::Error::last_os_error(),
        }));
    }
    // SAFETY: a new fd nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

impl Vm {
    fn exit_of(
        outcome: crate::VmOutcome,
        report: &mut RunReport,
    ) -> Result<WorkloadExit, VmRuntimeError> {
        match outcome.end {
            VmEnd::Timeout(t) => {
                eprintln!(
                    "duet: timeout: the VM was stopped after {:.1}s",
                    t.as_secs_f64()
                );
                report.counters.insert("timed_out".into(), 1);
                Ok(WorkloadExit::Signal(libc::SIGKILL))
            }
            VmEnd::Interrupted(sig) => Ok(WorkloadExit::Signal(sig)),
            _ => Ok(outcome.workload_exit()?),
        }
    }
}

impl Instance for Vm {
    fn start(&mut self, report: &mut RunReport) -> Result<(), BackendError> {
        if self.thread.is_some() {
            return Ok(());
        }
        let cfg = self.cfg.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let jail = self.jail.clone().map(|mut j| {
            j.notify_pid = Some(tx.clone());
            j
        });
        if jail.is_none() {
            let _ = tx.send(std::process::id() as i32);
        }
        drop(tx);
        if self.tty {
            let raw = crate::agent::RawMode::enter(0);
            let follower = crate::agent::ConsoleFollower::start(
                self.instance.id(),
                &self.instance.path().join(crate::agent::SOCKET),
                if raw.is_some() { 0 } else { 1 },
                // Sent once at the first look too: the terminal may have
                // changed since the guest's config was written.
                None,
            );
            self.terminal = Some((raw, follower));
        }
        let mut thread_report = report.clone();
        // SAFETY: dup of an fd we own; the thread owns the copy.
        let done = self
            .done
            .try_clone()
            .map_err(|e| Box::new(e) as BackendError)?;
        let thread = std::thread::Builder::new()
            .name("duet-vm".into())
            .spawn(move || {
                let outcome = match &jail {
                    Some(j) => jail::run_jailed(&cfg, j, &mut thread_report),
                    None => run_vm(&cfg, &mut thread_report),
                };
                let one: u64 = 1;
                // SAFETY: an 8-byte write to our eventfd.
                unsafe {
                    libc::write(
                        std::os::fd::AsRawFd::as_raw_fd(&done),
                        (&one as *const u64).cast(),
                        8,
                    )
                };
                (outcome, thread_report)
            })
            .map_err(|e| Box::new(e) as BackendError)?;
        self.thread = Some(thread);
        // The pid arrives right after the fork; a VMM that failed before it
        // closes the channel and `wait` reports why.
        self.pid = rx.recv().unwrap_or(0);
        if let Some(w) = self.warm.take() {
            if self.pid != 0 {
                let t = std::time::Instant::now();
                let handed = templates::hand_over(self.instance.id(), self.instance.path(), w);
                self.handover_us = Some(t.elapsed().as_micros() as u64);
                if let Err(source) = handed {
                    // A clone without its workload would only wait: stop it.
                    if self.jail.is_some() {
                        // SAFETY: kill with plain values on our unreaped child.
                        unsafe { libc::kill(self.pid, libc::SIGKILL) };
                    }
                    return Err(Box::new(VmRuntimeError::Template {
                        image: self.instance.meta().image.clone(),
                        source,
                    }));
                }
            }
        }
        if let Some(u) = self.renumber.take() {
            if self.pid != 0 {
                let t = std::time::Instant::now();
                let done = crate::agent::renumber(&self.instance, &u, RENUMBER_WAIT);
                self.renumber_us = Some(t.elapsed().as_micros() as u64);
                if let Err(source) = done {
                    // A clone with its template's address must not stay on the bridge.
                    if self.jail.is_some() {
                        // SAFETY: kill with plain values on our unreaped child.
                        unsafe { libc::kill(self.pid, libc::SIGKILL) };
                    } else {
                        crate::signals::request_stop(libc::SIGKILL);
                    }
                    return Err(Box::new(VmRuntimeError::Renumber {
                        address: u.address,
                        source,
                    }));
                }
            }
        }
        Ok(())
    }

    fn state(&self) -> duet_shared::instance::Status {
        use duet_shared::instance::Status;
        match (&self.exit, &self.thread) {
            (Some(_), _) => Status::Exited,
            (None, Some(_)) => Status::Running,
            (None, None) => Status::Created,
        }
    }

    fn pid(&self) -> i32 {
        self.pid
    }

    fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.done.as_fd()
    }

    fn kill(&self, signal: i32) -> Result<(), BackendError> {
        if self.thread.is_none() || self.exit.is_some() {
            return Ok(());
        }
        // The workload gets the signal inside the guest, from the agent; a
        // guest whose agent does not answer soon (still booting) is
        // stopped by signalling the VMM instead.
        if crate::agent::kill_within(&self.instance, signal, KILL_AGENT_WAIT).is_ok() {
            return Ok(());
        }
        if self.jail.is_none() {
            crate::signals::request_stop(signal);
            return Ok(());
        }
        // The jailed VMM stops the VM on SIGINT/TERM/HUP/QUIT as duet does
        // and dies of SIGKILL. It runs in a PID namespace of its own, as
        // PID 1 there, so a recycled pid cannot be this one while the
        // thread has not reaped it.
        if self.pid > 0 {
            self.killed_with
                .store(signal, std::sync::atomic::Ordering::SeqCst);
            // SAFETY: kill with plain values on our unreaped child.
            unsafe { libc::kill(self.pid, signal) };
        }
        Ok(())
    }

    fn wait(&mut self, report: &mut RunReport) -> Result<WorkloadExit, BackendError> {
        if let Some(e) = self.exit {
            return Ok(e);
        }
        let Some(t) = self.thread.take() else {
            return Err("the VM was never started".into());
        };
        let joined = t.join();
        // duet's terminal is itself again before anything is printed.
        self.terminal = None;
        let (outcome, r) = joined.map_err(|_| "the VM's thread panicked")?;
        *report = r;
        if let Some(us) = self.handover_us {
            report.counters.insert("warm_handover_us".into(), us);
        }
        if let Some(us) = self.renumber_us {
            report.counters.insert("network_renumber_us".into(), us);
        }
        let killed = self.killed_with.load(std::sync::atomic::Ordering::SeqCst);
        let outcome = match outcome {
            // The VMM died of the signal `kill` sent it (SIGKILL): that is how it ended.
            Err(VmmError::Jail(jail::JailError::Died { .. })) if killed != 0 => {
                self.exit = Some(WorkloadExit::Signal(killed));
                return Ok(WorkloadExit::Signal(killed));
            }
            o => o,
        };
        let exit = Vm::exit_of(outcome.map_err(VmRuntimeError::from)?, report)?;
        self.exit = Some(exit);
        Ok(exit)
    }

    fn delete(mut self: Box<Self>) -> Result<(), BackendError> {
        if let Some(t) = self.thread.take() {
            // Deleting a VM that still runs stops it first.
            if self.jail.is_some() && self.pid > 0 {
                // SAFETY: as in kill.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            }
            let _ = t.join();
        }
        self.guard.take();
        Ok(())
    }
}

/// Layer images (built on first use), the instance's scratch disk and the
/// init-only initramfs; fills `cfg.disks` and `cfg.initrd`. Counters:
/// `layer_images_built` (0 once every layer has its image), `rootfs_disks`,
/// `initramfs_bytes`, `scratch_template_built`.
fn prepare_disks(
    launch: &Launch<'_>,
    init: &std::path::Path,
    cfg: &mut VmConfig,
    report: &mut RunReport,
    template: bool,
) -> Result<(), VmRuntimeError> {
    let root = launch.instance.state_root();
    let layers = &launch.image.layers;
    let wanted = layers.len() + 1;
    if wanted > crate::devices::virtio::MAX_DEVICES {
        return Err(VmmError::TooManyDevices { wanted }.into());
    }
    let store = ImageStore::open(root)?;
    let images = layer_image::ensure_layer_images(&store, layers)?;
    let built = images.iter().filter(|i| i.built).count() as u64;
    let scratch = disks::create_scratch(root, launch.instance.path())?;
    let mut workload = rootfs::launch_workload(launch);
    if template {
        // Each clone brings its own workload, terminal included.
        workload.template = true;
        workload.tty = None;
    }
    let disk_root = disks::DiskRoot {
        layers: layers.len() as u32,
    };
    let initrd = disks::build_initramfs(
        root,
        launch.instance.path(),
        init,
        &workload,
        disks::GuestRoot::Disks(&disk_root),
    )?;
    let paths: Vec<_> = images.iter().map(|i| i.path.clone()).collect();
    cfg.disks = disks::disk_configs(&paths, &scratch.path);
    cfg.initrd = Some(initrd.initrd.clone());
    report.mark(Phase::RootfsReady);
    for (k, v) in [
        ("layer_images_built", built),
        ("rootfs_disks", cfg.disks.len() as u64),
        ("initramfs_bytes", initrd.bytes),
        ("scratch_template_built", u64::from(scratch.template_built)),
    ] {
        report.counters.insert(k.into(), v);
    }
    if launch.options.explain {
        for i in &images {
            eprintln!(
                "duet: layer disk {} ({}, {:.1} ms)",
                i.path.display(),
                if i.built { "built now" } else { "reused" },
                i.elapsed.as_secs_f64() * 1e3
            );
        }
        eprintln!(
            "duet: scratch disk {} ({:.1} ms), initramfs {} ({} bytes), booting {} MiB / {} vCPU(s)",
            scratch.path.display(),
            scratch.elapsed.as_secs_f64() * 1e3,
            initrd.initrd.display(),
            initrd.bytes,
            launch.spec.resources.memory_mib,
            launch.spec.resources.vcpus
        );
    }
    Ok(())
}

impl Runtime for VmRuntime {
    fn isolation(&self) -> &'static str {
        "vm"
    }

    fn create(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
    ) -> Result<Box<dyn Instance>, BackendError> {
        Ok(Box::new(self.create_vm(launch, report, Boot::Normal)?))
    }

    fn exec(
        &self,
        dir: &duet_shared::InstanceDir,
        request: &duet_shared::ExecRequest,
    ) -> Result<WorkloadExit, BackendError> {
        Ok(crate::agent::exec(dir, request)?)
    }

    fn kill_recorded(
        &self,
        dir: &duet_shared::InstanceDir,
        signal: i32,
    ) -> Result<(), BackendError> {
        Ok(crate::agent::kill(dir, signal)?)
    }

    /// The jailed VMM is a child of duet that dies with it (parent-death
    /// signal SIGKILL); its mounts live in its own mount namespace and vanish
    /// with it; its files (and the empty jail directory) live in the
    /// instance directory, which `duet gc` removes: nothing else to collect.
    fn gc_instance(&self, _id: &str) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_mode_comes_from_the_environment() {
        // One test touches the variable, so parallel tests do not race on it.
        std::env::remove_var(ROOTFS_ENV);
        assert_eq!(RootfsMode::from_env().unwrap(), RootfsMode::Disks);
        std::env::set_var(ROOTFS_ENV, "initramfs");
        assert_eq!(RootfsMode::from_env().unwrap(), RootfsMode::Initramfs);
        std::env::set_var(ROOTFS_ENV, "floppy");
        let e = RootfsMode::from_env().unwrap_err().to_string();
        assert!(e.contains("floppy") && e.contains("initramfs"), "{e}");
        std::env::remove_var(ROOTFS_ENV);
    }

    #[test]
    fn kernel_not_found_says_how_to_build() {
        let e = VmRuntimeError::KernelNotFound {
            tried: vec![PathBuf::from("/x/vmlinux")],
        };
        let m = e.to_string();
        assert!(
            m.contains("/x/vmlinux") && m.contains("images/kernel/build.sh"),
            "{m}"
        );
    }
}
