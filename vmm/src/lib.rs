//! duet-vmm: duet's own virtual machine monitor on KVM.
//!
//! [`run_vm`] boots a Linux kernel (ELF vmlinux or bzImage) with an initrd
//! in a microVM: guest memory, 64-bit entry, in-kernel irqchip and PIT,
//! COM1, i8042, duet's ready/exit ports (`duet_shared::guest_abi`) and
//! virtio-blk disks and a virtio-vsock device on virtio-mmio
//! ([`devices::virtio`]; the vsock's host side is the instance's
//! `agent.sock`, through which [`agent`] runs `duet exec` in the guest),
//! with one thread per vCPU under a seccomp filter. [`Vm`] exposes the
//! same boot steps one by one for tiny hand-written guests, and
//! [`doctor`] tells whether this host's KVM really accelerates.

pub mod agent;
pub mod boot_params;
pub mod bundle;
pub mod bus;
pub mod console;
pub mod control;
pub mod cpuid;
pub mod devices;
pub mod disks;
pub mod doctor;
pub mod event;
pub mod gdt;
pub mod jail;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod memory_usage;
pub mod mptable;
pub mod paging;
pub mod regs;
pub mod rootfs;
pub mod runtime;
pub mod scratch_mount;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod vcpu;
pub mod virtiofsd;
pub mod vm;

pub use console::{ConsoleMode, SharedBuffer};
pub use regs::CpuMode;
pub use vm::{ConsoleConfig, ConsoleInput, Vm, VmOptions, VmmError};

use duet_shared::guest_abi::InitFailure;
use duet_shared::report::{Phase, RunReport};
use duet_shared::runtime::WorkloadExit;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Kernel command line options duet's guests should start with: serial
/// console, reset through the i8042 on reboot, reboot at once on panic (so a
/// panic ends the VM instead of hanging), and no probing for hardware that
/// is not there (one UART instead of four saves 18 exits). Add `quiet` to
/// keep the kernel log (two exits per byte) off the UART.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off nomodule \
    8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest kernel: ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Initial ramdisk (cpio archive), if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (see [`BASE_CMDLINE`]).
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Stop the VM after this long.
    pub timeout: Option<Duration>,
    /// Which guest output reaches stdout.
    pub console: ConsoleMode,
    /// Forward duet's stdin to the guest's serial console.
    pub stdin: bool,
    /// virtio-blk disks, announced on the command line in this order
    /// (the guest finds them by serial, not by order).
    pub disks: Vec<devices::virtio::BlockConfig>,
    /// Where the VMM listens for host connections to guest vsock ports
    /// (`<instance>/agent.sock`, [`agent::SOCKET`]): with it the VM gets a
    /// virtio-vsock device. The socket is bound before the VM boots (by the
    /// jail's parent, outside the jail) and removed when the run ends.
    pub agent_socket: Option<PathBuf>,
    /// Host directories shared over virtio-fs: each backend (virtiofsd)
    /// listens on `socket`; the VMM connects before the jail and the guest
    /// mounts the share by `tag`. Guest memory is then a shared memfd.
    pub fs: Vec<FsShare>,
    /// A virtio-net device on this tap (already on duet's bridge) with this MAC.
    pub net: Option<NetDevice>,
    /// Snapshots of this VM, and restoring one instead of booting.
    pub snapshots: SnapshotConfig,
}

/// The snapshot side of a [`VmConfig`] ([`snapshot`]).
#[derive(Debug, Clone, Default)]
pub struct SnapshotConfig {
    /// Where the VMM listens for `duet snapshot` (`<instance>/vmm.sock`,
    /// [`control::SOCKET`]); bound before the VM starts, like the agent socket.
    pub control_socket: Option<PathBuf>,
    /// Kept in every snapshot of this VM (duet: the instance's spec and image).
    pub user: serde_json::Value,
    /// Identity of the guest kernel, written into snapshots.
    pub kernel_identity: Option<String>,
    /// Restore this snapshot instead of booting: `kernel` and `initrd` are
    /// then not used, and `disks` are matched to the saved ones by serial.
    pub restore: Option<PathBuf>,
}

/// The virtio-net device of [`VmConfig::net`].
#[derive(Debug, Clone)]
pub struct NetDevice {
    /// The tap (IFF_VNET_HDR, 12-byte header); kept open across the jail.
    pub tap: std::sync::Arc<std::os::fd::OwnedFd>,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

/// One virtio-fs share of [`VmConfig::fs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// The tag the guest mounts (`mount -t virtiofs TAG DIR`).
    pub tag: String,
}

/// Connects to every share's backend (outside the jail, as root).
pub(crate) fn connect_fs(
    shares: &[FsShare],
) -> Result<Vec<(std::os::unix::net::UnixStream, String)>, VmmError> {
    shares
        .iter()
        .map(|s| {
            std::os::unix::net::UnixStream::connect(&s.socket)
                .map(|c| (c, s.tag.clone()))
                .map_err(|source| VmmError::FsConnect {
                    socket: s.socket.clone(),
                    source,
                })
        })
        .collect()
}

/// `e` and its causes, `: `-separated, as the CLI prints a chain (for
/// errors that must travel as text: the jailed VMM's, doctor's findings).
pub(crate) fn error_with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How a VM ended (serde: the jailed VMM sends it to duet, see [`jail`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VmEnd {
    /// The guest wrote the workload's exit status to the exit port.
    Exited(WorkloadExit),
    /// The guest init reported that it failed at this stage.
    InitFailed(InitFailure),
    /// i8042 reset (reboot, or a panic with `panic=-1`) without an exit status.
    Reset,
    /// Every vCPU executed HLT (only VMs without an irqchip).
    Halted,
    /// Triple fault or shutdown (KVM_EXIT_SHUTDOWN).
    Shutdown {
        /// vCPU that faulted.
        vcpu: u32,
        /// Its RIP, if readable.
        rip: Option<u64>,
    },
    /// KVM could not continue the guest (KVM_EXIT_INTERNAL_ERROR).
    InternalError {
        /// vCPU.
        vcpu: u32,
        /// KVM suberror (1 = instruction emulation failed).
        suberror: u32,
        /// Its RIP, if readable.
        rip: Option<u64>,
    },
    /// The hardware refused to enter the guest.
    FailEntry {
        /// vCPU.
        vcpu: u32,
        /// Hardware reason code.
        reason: u64,
    },
    /// The guest requested a system event (KVM_EXIT_SYSTEM_EVENT).
    SystemEvent {
        /// vCPU.
        vcpu: u32,
        /// KVM_SYSTEM_EVENT_* type.
        kind: u32,
    },
    /// The guest caused an exit duet does not handle.
    UnhandledExit {
        /// vCPU.
        vcpu: u32,
        /// The exit.
        exit: String,
    },
    /// KVM_RUN failed or the vCPU thread could not start.
    VcpuFailed {
        /// vCPU.
        vcpu: u32,
        /// What failed.
        what: String,
    },
    /// The timeout passed first.
    Timeout(Duration),
    /// duet received this stop signal (SIGINT/SIGTERM) and stopped the VM.
    Interrupted(i32),
}

impl VmEnd {
    /// One-line description ("the guest triple-faulted on vCPU 0 at rip 0x...").
    pub fn describe(&self) -> String {
        let rip = |r: &Option<u64>| r.map(|r| format!(" at rip {r:#x}")).unwrap_or_default();
        match self {
            VmEnd::Exited(e) => format!("the workload exited with {e}"),
            VmEnd::InitFailed(stage) => {
                format!("the guest init failed (stage: {})", stage.name())
            }
            VmEnd::Reset => {
                "the guest reset (rebooted or panicked) without reporting an exit status".into()
            }
            VmEnd::Halted => "every vCPU halted".into(),
            VmEnd::Shutdown { vcpu, rip: r } => format!(
                "the guest shut down (triple fault) on vCPU {vcpu}{}",
                rip(r)
            ),
            VmEnd::InternalError {
                vcpu,
                suberror,
                rip: r,
            } => format!(
                "KVM internal error {suberror}{} on vCPU {vcpu}{}",
                if *suberror == 1 {
                    " (instruction emulation failed: this host's KVM may not accelerate, see `duet doctor`)"
                } else {
                    ""
                },
                rip(r)
            ),
            VmEnd::FailEntry { vcpu, reason } => {
                format!("KVM could not enter vCPU {vcpu} (hardware reason {reason:#x})")
            }
            VmEnd::SystemEvent { vcpu, kind } => {
                format!("vCPU {vcpu} requested system event {kind}")
            }
            VmEnd::UnhandledExit { vcpu, exit } => {
                format!("vCPU {vcpu} stopped on an unhandled exit: {exit}")
            }
            VmEnd::VcpuFailed { vcpu, what } => format!("vCPU {vcpu} failed: {what}"),
            VmEnd::Timeout(t) => format!("the VM was stopped after the {:?} timeout", t),
            VmEnd::Interrupted(sig) => format!("the VM was stopped by signal {sig} to duet"),
        }
    }
}

/// The result of running a VM.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// How it ended.
    pub end: VmEnd,
    /// The last console lines (kernel log included), for error messages.
    pub console_tail: Vec<String>,
    /// Exit counters (`vm_exits.io.serial`, `vm_exits.total`, ...).
    pub counters: BTreeMap<String, u64>,
}

/// A VM that ended without a workload exit status.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{}", end.describe(), tail_text(console_tail))]
pub struct GuestFailure {
    /// How the VM ended.
    pub end: VmEnd,
    /// The last console lines.
    pub console_tail: Vec<String>,
}

fn tail_text(lines: &[String]) -> String {
    if lines.is_empty() {
        "; the guest wrote nothing to its console".into()
    } else {
        let mut s = String::from("; last console lines:");
        for l in lines {
            s.push_str("\n  | ");
            s.push_str(l);
        }
        s
    }
}

impl VmOutcome {
    /// The workload's exit, or an error saying how the VM ended instead.
    pub fn workload_exit(&self) -> Result<WorkloadExit, GuestFailure> {
        match self.end {
            VmEnd::Exited(e) => Ok(e),
            _ => Err(GuestFailure {
                end: self.end.clone(),
                console_tail: self.console_tail.clone(),
            }),
        }
    }
}

/// Boots `cfg` with guest output on stdout. See [`run_vm_with_sink`].
pub fn run_vm(cfg: &VmConfig, report: &mut RunReport) -> Result<VmOutcome, VmmError> {
    run_vm_with_sink(cfg, report, Box::new(std::io::stdout()))
}

/// Boots `cfg`, sending forwarded console output to `sink`. Stamps
/// VmCreated, KernelLoaded, VcpusStarted, Ready (the guest's ready write)
/// and Exited, and adds the exit counters to `report.counters`.
pub fn run_vm_with_sink(
    cfg: &VmConfig,
    report: &mut RunReport,
    sink: Box<dyn Write + Send>,
) -> Result<VmOutcome, VmmError> {
    let agent = cfg
        .agent_socket
        .as_deref()
        .map(agent::bind_listener)
        .transpose()?;
    let (fd, _socket_file) = match agent {
        Some((fd, file)) => (Some(fd), Some(file)),
        None => (None, None),
    };
    let fs = connect_fs(&cfg.fs)?;
    let control = cfg
        .snapshots
        .control_socket
        .as_deref()
        .map(control::bind_listener)
        .transpose()?;
    let (control_fd, _control_file) = match control {
        Some((fd, file)) => (Some(fd), Some(file)),
        None => (None, None),
    };
    boot_and_run(cfg, report, sink, None, fd, fs, control_fd)
}

/// What the jailed VMM ([`jail`]) adds to a run.
pub(crate) struct RunHooks<'a> {
    /// Runs once every file, KVM fd and device is set up, right before the
    /// vCPUs start: where the jail drops its privileges.
    pub before_vcpus: &'a mut dyn FnMut() -> Result<(), VmmError>,
    /// `/proc/self` files opened before the jail hid `/proc`.
    pub proc_files: Option<&'a memory_usage::ProcFiles>,
}

/// The boot recipe of [`run_vm_with_sink`], with the jail's hooks.
pub(crate) fn boot_and_run(
    cfg: &VmConfig,
    report: &mut RunReport,
    sink: Box<dyn Write + Send>,
    mut hooks: Option<RunHooks<'_>>,
    agent_listener: Option<std::os::fd::OwnedFd>,
    fs: Vec<(std::os::unix::net::UnixStream, String)>,
    control_listener: Option<std::os::fd::OwnedFd>,
) -> Result<VmOutcome, VmmError> {
    check_config(cfg)?;
    let vm = match &cfg.snapshots.restore {
        Some(path) => restore(cfg, path, report, sink, agent_listener, &fs)?,
        None => boot(cfg, report, sink, agent_listener, fs)?,
    };
    let proc_files = match hooks.as_mut() {
        Some(h) => {
            (h.before_vcpus)()?;
            h.proc_files
        }
        None => None,
    };
    let control = control_listener
        .map(|l| control::ControlServer::spawn(l, vm.snapshot_handle(), cfg.snapshots.user.clone()))
        .transpose()
        .map_err(VmmError::VsockThread)?;
    // `run` consumes the VM; this handle keeps the guest memory mapped
    // past it so its resident size can be measured (memory_usage).
    let memory = vm.memory().clone();
    let outcome = vm.run(cfg.timeout, report);
    if let Some(c) = control {
        c.stop();
    }
    let outcome = outcome?;
    memory_usage::record_with(&memory, report, proc_files);
    Ok(outcome)
}

/// A VM in the state of the snapshot at `path` (disks: `cfg.disks`).
fn restore(
    cfg: &VmConfig,
    path: &std::path::Path,
    report: &mut RunReport,
    sink: Box<dyn Write + Send>,
    agent_listener: Option<std::os::fd::OwnedFd>,
    fs: &[(std::os::unix::net::UnixStream, String)],
) -> Result<Vm, VmmError> {
    if !fs.is_empty() {
        return Err(snapshot::SnapshotError::Unsupported(
            "a restored VM cannot get virtio-fs shares".into(),
        )
        .into());
    }
    let t = std::time::Instant::now();
    let file = std::fs::File::open(path).map_err(|e| {
        snapshot::SnapshotError::io(format!("opening the snapshot {}", path.display()), e)
    })?;
    let snap = snapshot::open(file)?;
    let vm = Vm::restore(
        &snap,
        vm::RestoreConfig {
            console: ConsoleConfig {
                mode: cfg.console,
                sink,
                input: if cfg.stdin {
                    ConsoleInput::Stdin
                } else {
                    ConsoleInput::None
                },
            },
            disks: cfg.disks.clone(),
            agent_listener,
            net: cfg
                .net
                .as_ref()
                .map(|n| {
                    n.tap
                        .try_clone()
                        .map(|tap| (tap, n.mac))
                        .map_err(|source| VmmError::EventFd {
                            device: "virtio-net",
                            source,
                        })
                })
                .transpose()?,
            seccomp: true,
        },
    )?;
    report.mark(Phase::VmCreated);
    report
        .counters
        .insert("snapshot_restore_us".into(), t.elapsed().as_micros() as u64);
    report
        .counters
        .insert("snapshot_mapped_bytes".into(), snap.state.memory_mib << 20);
    Ok(vm)
}

/// A new VM with `cfg`'s kernel, initrd, devices and vCPUs, ready to run.
fn boot(
    cfg: &VmConfig,
    report: &mut RunReport,
    sink: Box<dyn Write + Send>,
    agent_listener: Option<std::os::fd::OwnedFd>,
    fs: Vec<(std::os::unix::net::UnixStream, String)>,
) -> Result<Vm, VmmError> {
    let mut vm = Vm::new(VmOptions {
        memory_mib: cfg.memory_mib,
        vcpus: cfg.vcpus,
        irqchip: true,
        seccomp: true,
        shared_memory: !fs.is_empty(),
    })?;
    report.mark(Phase::VmCreated);
    vm.attach_legacy_devices(ConsoleConfig {
        mode: cfg.console,
        sink,
        input: if cfg.stdin {
            ConsoleInput::Stdin
        } else {
            ConsoleInput::None
        },
    })?;
    let mut device_options = vm.attach_disks(&cfg.disks)?;
    if let Some(l) = agent_listener {
        let o = vm.attach_vsock(l)?;
        if !device_options.is_empty() {
            device_options.push(' ');
        }
        device_options.push_str(&o);
    }
    for (stream, tag) in fs {
        let o = vm.attach_fs(stream, &tag)?;
        if !device_options.is_empty() {
            device_options.push(' ');
        }
        device_options.push_str(&o);
    }
    if let Some(n) = &cfg.net {
        let tap = n.tap.try_clone().map_err(|source| VmmError::EventFd {
            device: "virtio-net",
            source,
        })?;
        let o = vm.attach_net(tap, n.mac)?;
        if !device_options.is_empty() {
            device_options.push(' ');
        }
        device_options.push_str(&o);
    }
    let cmdline = if device_options.is_empty() {
        cfg.cmdline.clone()
    } else {
        format!("{} {device_options}", cfg.cmdline)
    };
    let kernel = vm.load_linux(&cfg.kernel, cfg.initrd.as_deref(), &cmdline)?;
    report.mark(Phase::KernelLoaded);
    let cr3 = vm.setup_long_mode()?;
    vm.write_mptable()?;
    vm.create_vcpus(vm::linux_entry(&kernel, cr3))?;
    vm.set_kernel_identity(cfg.snapshots.kernel_identity.clone());
    Ok(vm)
}

/// Checks what can be checked before touching KVM: the kernel file (its
/// format and size against memory_mib) and the vCPU count.
pub fn check_config(cfg: &VmConfig) -> Result<(), VmmError> {
    if cfg.snapshots.restore.is_some() {
        // Sizes and vCPUs come from the snapshot, checked as it is opened.
        return Ok(());
    }
    if cfg.vcpus == 0 || cfg.vcpus > mptable::MAX_VCPUS {
        return Err(VmmError::Config(format!(
            "vcpus = {}: duet supports 1..={}",
            cfg.vcpus,
            mptable::MAX_VCPUS
        )));
    }
    let info = loader::inspect_kernel(&cfg.kernel)?;
    if info.needed_end > memory::low_memory_end(cfg.memory_mib) {
        return Err(loader::LoaderError::KernelDoesNotFit {
            path: cfg.kernel.clone(),
            needed_end: info.needed_end,
            memory_mib: cfg.memory_mib,
        }
        .into());
    }
    if let Some(initrd) = &cfg.initrd {
        if !initrd.exists() {
            return Err(loader::LoaderError::InitrdMissing {
                path: initrd.clone(),
            }
            .into());
        }
    }
    Ok(())
}
