//! The VM and its boot recipe, one named step per method (Firecracker's
//! builder order): KVM + memory -> irqchip/PIT -> devices -> kernel, initrd,
//! command line, zero page -> GDT, page tables, MP table -> vCPUs -> run.
//!
//! Tiny-guest tests use the same steps with raw code instead of a kernel.

use crate::boot_params::{self, BootInfo, BootParamsError};
use crate::bus::{Bus, BusError, SharedDevice};
use crate::console::{Console, ConsoleMode};
use crate::devices::virtio::host_thread::HostThread;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::{self, Block, BlockConfig, MmioTransport, VhostUserFs, Vsock};
use crate::devices::{serial, ExitPort, SerialDevice, I8042};
use crate::event::{VcpuStop, VmEvent};
use crate::gdt::{self, GdtError};
use crate::layout::{KVM_TSS_ADDR, ZERO_PAGE_ADDR};
use crate::loader::{self, LoadedKernel, LoaderError};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::mptable::{self, MptableError};
use crate::paging::{self, PagingError};
use crate::regs::CpuMode;
use crate::seccomp::{self, SeccompError};
use crate::vcpu::{self, ExitCounters, Vcpu, VcpuContext, VcpuError};
use crate::{VmEnd, VmOutcome};
use duet_shared::guest_abi::{self, GuestExit, EXIT_PORT, EXIT_PORT_WIDTH, READY_PORT};
use duet_shared::report::{Phase, RunReport};
use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

/// How long vCPU threads get to leave KVM_RUN once kicked.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Errors from the VM's boot steps and run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The configuration is unusable.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// /dev/kvm could not be opened.
    #[error("opening /dev/kvm (is KVM available and accessible?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// KVM's API version is not 12.
    #[error("/dev/kvm reports API version {0}, duet needs 12")]
    KvmApiVersion(i32),
    /// A KVM capability duet needs is missing.
    #[error("/dev/kvm lacks capability {0}")]
    KvmCapability(&'static str),
    /// KVM_CREATE_VM failed.
    #[error("KVM_CREATE_VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// Guest memory step failed.
    #[error("setting up guest memory")]
    Memory(#[from] MemoryError),
    /// KVM_SET_TSS_ADDR failed.
    #[error("KVM_SET_TSS_ADDR")]
    SetTssAddress(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("KVM_CREATE_IRQCHIP")]
    CreateIrqchip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("KVM_CREATE_PIT2")]
    CreatePit(#[source] kvm_ioctls::Error),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// An eventfd for a device could not be created.
    #[error("creating the interrupt eventfd of {device}")]
    EventFd {
        /// Device.
        device: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// KVM_IRQFD failed.
    #[error("KVM_IRQFD for {device} on GSI {gsi}")]
    Irqfd {
        /// Device.
        device: &'static str,
        /// Interrupt line.
        gsi: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A device could not be placed on a bus.
    #[error("attaching a device")]
    Bus(#[from] BusError),
    /// Devices were attached twice.
    #[error("legacy devices are already attached")]
    DevicesAttached,
    /// Raw guest code could not be written.
    #[error("writing {len} bytes of guest code at {addr:#x}")]
    WriteCode {
        /// Guest address.
        addr: u64,
        /// Length.
        len: usize,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Kernel or initrd loading failed.
    #[error("loading the guest kernel")]
    Loader(#[from] LoaderError),
    /// Command line or zero page failed.
    #[error("writing boot parameters")]
    BootParams(#[from] BootParamsError),
    /// GDT/IDT failed.
    #[error("writing descriptor tables")]
    Gdt(#[from] GdtError),
    /// Page tables failed.
    #[error("writing page tables")]
    Paging(#[from] PagingError),
    /// MP table failed.
    #[error("writing the MP table")]
    Mptable(#[from] MptableError),
    /// vCPU creation, configuration or start failed.
    #[error("setting up vCPUs")]
    Vcpu(#[from] VcpuError),
    /// No vCPUs were created before run.
    #[error("the VM has no vCPUs (call create_vcpus first)")]
    NoVcpus,
    /// The seccomp filter could not be built.
    #[error("preparing the VMM seccomp filter")]
    Seccomp(#[from] SeccompError),
    /// The console input thread could not start.
    #[error("spawning the console input thread")]
    InputThread(#[source] std::io::Error),
    /// A device's host thread (vsock, net) could not start.
    #[error("spawning a virtio device's host thread")]
    VsockThread(#[source] std::io::Error),
    /// The agent socket could not be bound.
    #[error("binding the socket {} (agent or control)", path.display())]
    AgentSocket {
        /// The socket's path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A virtio-blk disk could not be opened.
    #[error("attaching a virtio-blk disk")]
    Block(#[from] virtio::block::BlockError),
    /// More virtio devices than interrupt lines for them.
    #[error(
        "{wanted} virtio devices requested; duet's VMM places at most {} (one IRQ each, {}-{})",
        virtio::MAX_DEVICES,
        virtio::FIRST_IRQ,
        virtio::LAST_IRQ
    )]
    TooManyDevices {
        /// Devices asked for, in total.
        wanted: usize,
    },
    /// virtio devices need the in-kernel irqchip for their irqfd.
    #[error("virtio devices need the in-kernel irqchip (VmOptions::irqchip)")]
    NoIrqchip,
    /// A virtio-fs backend's socket refused the connection.
    #[error("cannot connect to the virtio-fs backend (virtiofsd) at {}", socket.display())]
    FsConnect {
        /// Its socket.
        socket: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The virtio-fs backend could not be set up.
    #[error(transparent)]
    Fs(#[from] crate::devices::virtio::fs::FsError),
    /// A snapshot could not be taken or restored.
    #[error("snapshot")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// The VMM jail could not be set up, or the jailed VMM failed.
    #[error("jailed VMM")]
    Jail(#[from] crate::jail::JailError),
    /// A vCPU thread did not leave KVM_RUN after being kicked.
    #[error("vCPU {vcpu} did not stop within {} s of being kicked", STOP_GRACE.as_secs())]
    StopTimeout {
        /// vCPU index.
        vcpu: u32,
    },
}

/// Sizes and switches of a VM.
#[derive(Debug, Clone, Copy)]
pub struct VmOptions {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Create the in-kernel irqchip (PIC, IO-APIC, LAPICs) and PIT. Without
    /// it HLT exits to duet, which tiny guests use to stop.
    pub irqchip: bool,
    /// Run VMM threads under the seccomp filter.
    pub seccomp: bool,
    /// Back guest RAM with a memfd mapped shared, so that a vhost-user
    /// backend can map it too ([`memory::create_shared_guest_memory`]).
    pub shared_memory: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            memory_mib: 128,
            vcpus: 1,
            irqchip: true,
            seccomp: true,
            shared_memory: false,
        }
    }
}

/// Where guest console input comes from.
#[derive(Debug, Default)]
pub enum ConsoleInput {
    /// No input.
    #[default]
    None,
    /// duet's standard input.
    Stdin,
    /// Any readable file descriptor (a pipe in tests).
    Fd(OwnedFd),
}

/// The console: mode, output sink and input source.
pub struct ConsoleConfig {
    /// Forward everything, or only the workload's output.
    pub mode: ConsoleMode,
    /// Where forwarded output goes.
    pub sink: Box<dyn Write + Send>,
    /// Where input comes from.
    pub input: ConsoleInput,
}

/// A KVM VM with guest memory, devices and (once created) vCPUs.
pub struct Vm {
    // Field order matters: the VM fd (and its memory slots) go before the memory.
    vcpus: Vec<Vcpu>,
    fd: VmFd,
    kvm: Kvm,
    memory: GuestMemory,
    options: VmOptions,
    io_bus: Bus,
    mmio_bus: Bus,
    events_tx: std::sync::mpsc::Sender<VmEvent>,
    events_rx: Receiver<VmEvent>,
    stop: Arc<AtomicBool>,
    console: Option<Arc<Console>>,
    serial: Option<Arc<Mutex<SerialDevice>>>,
    input: ConsoleInput,
    disks: Vec<Arc<Mutex<MmioTransport<Block>>>>,
    vsock: Option<Arc<Mutex<MmioTransport<Vsock>>>>,
    fs: Vec<Arc<Mutex<MmioTransport<VhostUserFs>>>>,
    net: Option<Arc<Mutex<MmioTransport<Net>>>>,
    exit_port: Option<Arc<Mutex<ExitPort>>>,
    /// The virtio devices in slot order.
    slots: Vec<Slot>,
    pause: Arc<crate::snapshot::PauseGate>,
    snapshots_tx: std::sync::mpsc::Sender<SnapshotRequest>,
    snapshots_rx: Receiver<SnapshotRequest>,
    /// Identity of the guest kernel, written into snapshots.
    kernel_identity: Option<String>,
}

mod restore;
mod snapshot;
pub use restore::RestoreConfig;
pub use snapshot::{SnapshotHandle, SnapshotRequest};

/// What sits on a virtio-mmio slot (index into the Vm's list of its kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Disk(usize),
    Vsock,
    Fs(usize),
    Net,
}

/// A virtio device's transport, shared by the vCPUs and its host thread.
type Shared<D> = Arc<Mutex<MmioTransport<D>>>;

impl Vm {
    /// Steps 1-3: open KVM, create the VM and its memory, and (if asked) the
    /// in-kernel irqchip and PIT.
    pub fn new(options: VmOptions) -> Result<Vm, VmmError> {
        if options.vcpus == 0 || options.vcpus > mptable::MAX_VCPUS {
            return Err(VmmError::Config(format!(
                "vcpus = {}: duet supports 1..={}",
                options.vcpus,
                mptable::MAX_VCPUS
            )));
        }
        let kvm = open_kvm()?;
        let fd = kvm.create_vm().map_err(VmmError::CreateVm)?;
        let memory = if options.shared_memory {
            memory::create_shared_guest_memory(options.memory_mib)?
        } else {
            memory::create_guest_memory(options.memory_mib)?
        };
        Vm::with_memory(options, kvm, fd, memory)
    }

    /// The rest of [`Vm::new`] once guest memory exists (a restore maps it
    /// from the snapshot instead).
    fn with_memory(
        options: VmOptions,
        kvm: Kvm,
        fd: VmFd,
        memory: GuestMemory,
    ) -> Result<Vm, VmmError> {
        memory::register_memory(&fd, &memory)?;
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(VmmError::SetTssAddress)?;
        if options.irqchip {
            create_irqchip_and_pit(&fd)?;
        }
        let (events_tx, events_rx) = channel();
        let (snapshots_tx, snapshots_rx) = channel();
        Ok(Vm {
            slots: Vec::new(),
            snapshots_tx,
            snapshots_rx,
            vcpus: Vec::new(),
            fd,
            kvm,
            memory,
            options,
            io_bus: Bus::new("io"),
            mmio_bus: Bus::new("mmio"),
            events_tx,
            events_rx,
            stop: Arc::new(AtomicBool::new(false)),
            console: None,
            serial: None,
            input: ConsoleInput::None,
            disks: Vec::new(),
            vsock: None,
            fs: Vec::new(),
            net: None,
            exit_port: None,
            pause: Arc::new(crate::snapshot::PauseGate::default()),
            kernel_identity: None,
        })
    }

    /// Names the guest kernel in snapshots of this VM (a digest), so a
    /// restore can refuse a snapshot of another kernel.
    pub fn set_kernel_identity(&mut self, identity: Option<String>) {
        self.kernel_identity = identity;
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The VM's options.
    pub fn options(&self) -> VmOptions {
        self.options
    }

    /// Step 4: COM1 (IRQ 4 via irqfd), the i8042 and duet's ready/exit ports.
    pub fn attach_legacy_devices(&mut self, console: ConsoleConfig) -> Result<(), VmmError> {
        self.attach_legacy_devices_with(console, None)
    }

    /// [`Vm::attach_legacy_devices`], with COM1 in a saved state.
    fn attach_legacy_devices_with(
        &mut self,
        console: ConsoleConfig,
        serial_state: Option<&crate::snapshot::SerialState>,
    ) -> Result<(), VmmError> {
        if self.console.is_some() {
            return Err(VmmError::DevicesAttached);
        }
        let con = Console::new(console.mode, console.sink);
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::EventFd {
            device: "serial",
            source,
        })?;
        if self.options.irqchip {
            self.fd
                .register_irqfd(&irq, serial::COM1_IRQ)
                .map_err(|source| VmmError::Irqfd {
                    device: "serial",
                    gsi: serial::COM1_IRQ,
                    source,
                })?;
        }
        let serial = match serial_state {
            Some(st) => {
                // A restored guest's UART is running already: nothing would lose input.
                con.open_input();
                SerialDevice::from_state(irq, con.clone(), st).map_err(VmmError::Config)?
            }
            None => SerialDevice::new(irq, con.clone()),
        };
        let serial = Arc::new(Mutex::new(serial));
        self.io_bus.insert(
            "serial",
            u64::from(serial::COM1_PORT),
            u64::from(serial::COM1_LEN),
            serial.clone(),
        )?;
        let i8042: SharedDevice = Arc::new(Mutex::new(I8042::new(
            self.events_tx.clone(),
            self.stop.clone(),
        )));
        self.io_bus.insert(
            "i8042",
            u64::from(crate::devices::i8042::DATA_PORT),
            1,
            i8042.clone(),
        )?;
        self.io_bus.insert(
            "i8042",
            u64::from(crate::devices::i8042::COMMAND_PORT),
            1,
            i8042,
        )?;
        let exit_port = Arc::new(Mutex::new(ExitPort::new(
            self.events_tx.clone(),
            self.stop.clone(),
            con.clone(),
        )));
        self.exit_port = Some(exit_port.clone());
        let exit: SharedDevice = exit_port;
        self.io_bus
            .insert("exit_port", u64::from(READY_PORT), 1, exit.clone())?;
        self.io_bus.insert(
            "exit_port",
            u64::from(EXIT_PORT),
            EXIT_PORT_WIDTH as u64,
            exit,
        )?;
        self.console = Some(con);
        self.serial = Some(serial);
        self.input = console.input;
        Ok(())
    }

    /// Step 4b: virtio-blk disks on virtio-mmio, in order after any already
    /// attached (device n at [`virtio::slot`]`(n)`, its interrupt an irqfd).
    /// Returns the kernel command line options announcing them.
    pub fn attach_disks(&mut self, disks: &[BlockConfig]) -> Result<String, VmmError> {
        if disks.is_empty() {
            return Ok(String::new());
        }
        if !self.options.irqchip {
            return Err(VmmError::NoIrqchip);
        }
        let wanted = self.virtio_devices() + disks.len();
        if wanted > virtio::MAX_DEVICES {
            return Err(VmmError::TooManyDevices { wanted });
        }
        let mut options = Vec::new();
        for cfg in disks {
            let (base, irq) = virtio::slot(self.virtio_devices()).expect("count checked above");
            let block = Block::open(cfg)?;
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::EventFd {
                device: "virtio-blk",
                source,
            })?;
            self.fd
                .register_irqfd(&evt, irq)
                .map_err(|source| VmmError::Irqfd {
                    device: "virtio-blk",
                    gsi: irq,
                    source,
                })?;
            let name = virtio::VirtioDevice::name(&block).to_string();
            let transport = Arc::new(Mutex::new(MmioTransport::new(
                block,
                self.memory.clone(),
                evt,
            )));
            self.mmio_bus
                .insert(&name, base, virtio::MMIO_SIZE, transport.clone())?;
            self.slots.push(Slot::Disk(self.disks.len()));
            self.disks.push(transport);
            options.push(virtio::cmdline_option(base, irq));
        }
        Ok(options.join(" "))
    }

    fn virtio_devices(&self) -> usize {
        self.disks.len()
            + usize::from(self.vsock.is_some())
            + self.fs.len()
            + usize::from(self.net.is_some())
    }

    /// Puts `device` on the next virtio-mmio slot with an irqfd of its
    /// own; returns its transport and the command line option announcing it.
    fn attach_virtio<D: virtio::VirtioDevice + 'static>(
        &mut self,
        kind: &'static str,
        name: &str,
        make: impl FnOnce(&GuestMemory) -> Result<D, VmmError>,
    ) -> Result<(Shared<D>, String), VmmError> {
        if !self.options.irqchip {
            return Err(VmmError::NoIrqchip);
        }
        let wanted = self.virtio_devices() + 1;
        let Some((base, irq)) = virtio::slot(self.virtio_devices()) else {
            return Err(VmmError::TooManyDevices { wanted });
        };
        let device = make(&self.memory)?;
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::EventFd {
            device: kind,
            source,
        })?;
        self.fd
            .register_irqfd(&evt, irq)
            .map_err(|source| VmmError::Irqfd {
                device: kind,
                gsi: irq,
                source,
            })?;
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            self.memory.clone(),
            evt,
        )));
        self.mmio_bus
            .insert(name, base, virtio::MMIO_SIZE, transport.clone())?;
        Ok((transport, virtio::cmdline_option(base, irq)))
    }

    /// Step 4c: the virtio-vsock device (guest CID 3), whose host side is
    /// `listener`, a listening Unix stream socket (see
    /// [`virtio::vsock`]). Returns the kernel command line option announcing it.
    pub fn attach_vsock(&mut self, listener: OwnedFd) -> Result<String, VmmError> {
        if self.vsock.is_some() {
            return Err(VmmError::DevicesAttached);
        }
        let (t, opt) = self.attach_virtio("virtio-vsock", "virtio-vsock", |_| {
            Vsock::new(listener).map_err(|source| VmmError::EventFd {
                device: "virtio-vsock",
                source,
            })
        })?;
        self.slots.push(Slot::Vsock);
        self.vsock = Some(t);
        Ok(opt)
    }

    /// Step 4e: a virtio-net device on `tap` (opened by the caller with a
    /// 12-byte vnet header, see [`virtio::net`]) with MAC `mac`. Returns the
    /// kernel command line option announcing it.
    pub fn attach_net(&mut self, tap: OwnedFd, mac: [u8; 6]) -> Result<String, VmmError> {
        if self.net.is_some() {
            return Err(VmmError::DevicesAttached);
        }
        let (t, opt) = self.attach_virtio("virtio-net", "virtio-net", |_| {
            Net::new(tap, mac).map_err(|source| VmmError::EventFd {
                device: "virtio-net",
                source,
            })
        })?;
        self.slots.push(Slot::Net);
        self.net = Some(t);
        Ok(opt)
    }

    /// Step 4d: a virtio-fs device whose backend (virtiofsd) is at the other
    /// end of `backend`, exporting its directory under `tag`. Needs guest
    /// memory the backend can map ([`VmOptions::shared_memory`]). Returns
    /// the kernel command line option announcing it.
    pub fn attach_fs(
        &mut self,
        backend: std::os::unix::net::UnixStream,
        tag: &str,
    ) -> Result<String, VmmError> {
        let name = format!("virtio-fs.{tag}");
        let (t, opt) = self.attach_virtio("virtio-fs", &name, |mem| {
            Ok(VhostUserFs::connect(backend, tag, mem)?)
        })?;
        self.slots.push(Slot::Fs(self.fs.len()));
        self.fs.push(t);
        Ok(opt)
    }

    /// Adds a port I/O device at `base..base+len`.
    pub fn add_io_device(
        &mut self,
        name: &str,
        base: u16,
        len: u16,
        device: SharedDevice,
    ) -> Result<(), VmmError> {
        Ok(self
            .io_bus
            .insert(name, u64::from(base), u64::from(len), device)?)
    }

    /// Adds an MMIO device at `base..base+len`.
    pub fn add_mmio_device(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), VmmError> {
        Ok(self.mmio_bus.insert(name, base, len, device)?)
    }

    /// Copies raw guest code (tiny guests) to `addr`.
    pub fn write_code(&self, addr: u64, code: &[u8]) -> Result<(), VmmError> {
        self.memory
            .write_slice(code, GuestAddress(addr))
            .map_err(|source| VmmError::WriteCode {
                addr,
                len: code.len(),
                source,
            })
    }

    /// Step 5: kernel, initrd, command line and zero page. Returns the kernel.
    pub fn load_linux(
        &self,
        kernel: &Path,
        initrd: Option<&Path>,
        cmdline: &str,
    ) -> Result<LoadedKernel, VmmError> {
        let mib = self.options.memory_mib;
        let loaded = loader::load_kernel(&self.memory, mib, kernel)?;
        let initrd = initrd
            .map(|p| loader::load_initrd(&self.memory, mib, &loaded, p))
            .transpose()?;
        let cmdline_len = boot_params::write_cmdline(&self.memory, cmdline)?;
        let params = boot_params::build(
            mib,
            &BootInfo {
                cmdline_len,
                initrd,
                setup_header: loaded.setup_header,
            },
        )?;
        boot_params::write_boot_params(&self.memory, &params)?;
        Ok(loaded)
    }

    /// Step 6a: GDT, IDT and identity page tables for a 64-bit entry; returns CR3.
    pub fn setup_long_mode(&self) -> Result<u64, VmmError> {
        gdt::write_boot_tables(&self.memory)?;
        Ok(paging::write_identity_map(&self.memory)?)
    }

    /// Step 6b: the MP table announcing every vCPU.
    pub fn write_mptable(&self) -> Result<(), VmmError> {
        Ok(mptable::write_mptable(&self.memory, self.options.vcpus)?)
    }

    /// Step 7: creates and configures all vCPUs to start in `mode` (with an
    /// irqchip, vCPUs other than 0 wait for the guest's INIT/SIPI).
    pub fn create_vcpus(&mut self, mode: CpuMode) -> Result<(), VmmError> {
        let supported = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::SupportedCpuid)?;
        let tsc_deadline = self.kvm.check_extension(Cap::TscDeadlineTimer);
        for id in 0..self.options.vcpus {
            let vcpu = Vcpu::create(&self.fd, id)?;
            vcpu.configure(
                &supported,
                self.options.vcpus,
                tsc_deadline,
                mode,
                self.options.irqchip,
            )?;
            self.vcpus.push(vcpu);
        }
        Ok(())
    }

    /// KVM_GET_SUPPORTED_CPUID (for diagnostics).
    pub fn supported_cpuid(&self) -> Result<CpuId, VmmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::SupportedCpuid)
    }

    /// Step 8: runs the vCPUs until the guest ends, fails, or `timeout`
    /// passes. Stamps VcpusStarted, Ready and Exited into `report`.
    pub fn run(
        mut self,
        timeout: Option<Duration>,
        report: &mut RunReport,
    ) -> Result<VmOutcome, VmmError> {
        if self.vcpus.is_empty() {
            return Err(VmmError::NoVcpus);
        }
        let filter = if self.options.seccomp {
            Some(Arc::new(seccomp::vmm_thread_filter()?))
        } else {
            None
        };
        vcpu::register_kick_handler()?;
        let io_bus = Arc::new(std::mem::replace(&mut self.io_bus, Bus::new("io")));
        let mmio_bus = Arc::new(std::mem::replace(&mut self.mmio_bus, Bus::new("mmio")));
        // The MSRs a snapshot saves; an empty list where KVM cannot tell
        // (a snapshot then fails loudly at restore, not here).
        let msr_index = self
            .kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default();
        let ctx = Arc::new(VcpuContext {
            io_bus: io_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            stop: self.stop.clone(),
            events: self.events_tx.clone(),
            filter: filter.clone(),
            exits: ExitCounters::default(),
            pause: self.pause.clone(),
            msr_index: Arc::new(msr_index),
        });
        let input = match std::mem::take(&mut self.input) {
            ConsoleInput::None => None,
            source => match (&self.serial, &self.console) {
                (Some(serial), Some(console)) => Some(InputThread::spawn(
                    source,
                    serial.clone(),
                    console.clone(),
                    filter.clone(),
                )?),
                _ => None,
            },
        };
        let host_threads = self
            .spawn_host_threads(&filter)
            .map_err(VmmError::VsockThread)?;
        let mut handles: Vec<(u32, JoinHandle<()>)> = Vec::new();
        let started = Instant::now();
        // Stamped before the first thread starts: vCPU 0 may reach the
        // guest's ready write before this thread gets to run again.
        let started_ns = duet_shared::clock::monotonic_ns();
        for vcpu in std::mem::take(&mut self.vcpus) {
            let id = vcpu.id();
            match vcpu::spawn(vcpu, ctx.clone()) {
                Ok(h) => handles.push((id, h)),
                Err(e) => {
                    let _ = stop_vcpus(&self.stop, handles);
                    host_threads.into_iter().for_each(HostThread::stop);
                    return Err(e.into());
                }
            }
        }
        report.mark_at(Phase::VcpusStarted, started_ns);

        let events = self.events_tx.clone();
        let relay = crate::signals::SignalRelay::spawn(
            Box::new(move || {
                let _ = events.send(VmEvent::Signal);
            }),
            filter.clone(),
        );
        let mut running = Running {
            handles,
            host_threads,
            filter,
            relay,
        };
        let end = self.wait_for_end(started, timeout, report, &mut running);
        // A vCPU parked by a snapshot that failed half-way must not block the stop.
        self.pause.resume();
        let stopped = stop_vcpus(&self.stop, running.handles);
        if let Some(input) = input {
            input.stop();
        }
        running.host_threads.into_iter().for_each(HostThread::stop);
        drop(running.relay);
        stopped?;

        let mut counters: BTreeMap<String, u64> = BTreeMap::new();
        counters.extend(io_bus.counters());
        counters.extend(mmio_bus.counters());
        for disk in &self.disks {
            counters.extend(disk.lock().unwrap_or_else(|p| p.into_inner()).counters());
        }
        if let Some(v) = &self.vsock {
            counters.extend(v.lock().unwrap_or_else(|p| p.into_inner()).counters());
        }
        if let Some(n) = &self.net {
            counters.extend(n.lock().unwrap_or_else(|p| p.into_inner()).counters());
        }
        for f in &self.fs {
            counters.extend(f.lock().unwrap_or_else(|p| p.into_inner()).counters());
        }
        counters.insert(
            "vm_exits.total".into(),
            ctx.exits.total.load(Ordering::Relaxed),
        );
        counters.insert("vm_exits.hlt".into(), ctx.exits.hlt.load(Ordering::Relaxed));
        counters.insert(
            "vm_exits.interrupted".into(),
            ctx.exits.interrupted.load(Ordering::Relaxed),
        );
        let console_tail = match &self.console {
            Some(c) => {
                c.flush();
                counters.insert("console_bytes".into(), c.bytes_written());
                c.tail()
            }
            None => Vec::new(),
        };
        report
            .counters
            .extend(counters.iter().map(|(k, v)| (k.clone(), *v)));
        Ok(VmOutcome {
            end,
            console_tail,
            counters,
        })
    }

    /// A VM stopped from outside (signal, timeout) may have said ready just
    /// before: stamp that too, so the timeline does not lose it.
    fn stamp_pending_ready(&self, report: &mut RunReport) {
        while let Ok(ev) = self.events_rx.try_recv() {
            if let VmEvent::Ready { at_ns } = ev {
                report.mark_at(Phase::Ready, at_ns);
            }
        }
    }

    /// One host thread per device with a host side (vsock, net).
    fn spawn_host_threads(
        &self,
        filter: &Option<Arc<seccompiler::BpfProgram>>,
    ) -> std::io::Result<Vec<HostThread>> {
        let mut host_threads = Vec::new();
        let spawned = (|| {
            if let Some(t) = &self.vsock {
                host_threads.push(HostThread::spawn(t.clone(), filter.clone())?);
            }
            if let Some(t) = &self.net {
                host_threads.push(HostThread::spawn(t.clone(), filter.clone())?);
            }
            Ok(())
        })();
        match spawned {
            Ok(()) => Ok(host_threads),
            Err(e) => {
                host_threads.into_iter().for_each(HostThread::stop);
                Err(e)
            }
        }
    }

    fn wait_for_end(
        &self,
        started: Instant,
        timeout: Option<Duration>,
        report: &mut RunReport,
        running: &mut Running,
    ) -> VmEnd {
        let mut halted = 0;
        // Stop signals arrive as VmEvent::Signal through the relay; without
        // one, wake up this often to notice SIGINT/SIGTERM (crate::signals).
        // The long wait is only a safety net: a guest that runs idle keeps
        // this thread asleep (every wake-up preempts a vCPU on a busy host).
        let signal_poll = if running.relay.is_some() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(50)
        };
        loop {
            if let Some(sig) = crate::signals::received() {
                self.stamp_pending_ready(report);
                report.mark(Phase::Exited);
                return VmEnd::Interrupted(sig);
            }
            let slice = match timeout {
                Some(t) => match t.checked_sub(started.elapsed()) {
                    Some(left) => left.min(signal_poll),
                    None => {
                        self.stamp_pending_ready(report);
                        report.mark(Phase::Exited);
                        return VmEnd::Timeout(t);
                    }
                },
                None => signal_poll,
            };
            let event = match self.events_rx.recv_timeout(slice) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => unreachable!("Vm holds a sender"),
            };
            let (end, at_ns) = match event {
                VmEvent::Ready { at_ns } => {
                    report.mark_at(Phase::Ready, at_ns);
                    continue;
                }
                VmEvent::Signal => continue,
                VmEvent::Control => {
                    while let Ok(req) = self.snapshots_rx.try_recv() {
                        let r = self
                            .take_snapshot(running, &req.out, req.user)
                            .map_err(|e| crate::error_with_causes(&e));
                        let _ = req.reply.send(r);
                    }
                    continue;
                }
                VmEvent::Exit { status, at_ns } => match guest_abi::decode_exit(status) {
                    GuestExit::Workload(exit) => (VmEnd::Exited(exit), at_ns),
                    GuestExit::InitFailed(stage) => (VmEnd::InitFailed(stage), at_ns),
                },
                VmEvent::Reset { at_ns } => (VmEnd::Reset, at_ns),
                VmEvent::VcpuStopped { vcpu, stop, at_ns } => match stop {
                    VcpuStop::Halted => {
                        halted += 1;
                        if halted < self.options.vcpus {
                            continue;
                        }
                        (VmEnd::Halted, at_ns)
                    }
                    VcpuStop::Shutdown { rip } => (VmEnd::Shutdown { vcpu, rip }, at_ns),
                    VcpuStop::InternalError { suberror, rip } => (
                        VmEnd::InternalError {
                            vcpu,
                            suberror,
                            rip,
                        },
                        at_ns,
                    ),
                    VcpuStop::FailEntry { reason } => (VmEnd::FailEntry { vcpu, reason }, at_ns),
                    VcpuStop::SystemEvent { kind } => (VmEnd::SystemEvent { vcpu, kind }, at_ns),
                    VcpuStop::Unhandled { exit } => (VmEnd::UnhandledExit { vcpu, exit }, at_ns),
                    VcpuStop::Failed { what } => (VmEnd::VcpuFailed { vcpu, what }, at_ns),
                },
            };
            report.mark_at(Phase::Exited, at_ns);
            return end;
        }
    }
}

fn open_kvm() -> Result<Kvm, VmmError> {
    let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(VmmError::KvmApiVersion(version));
    }
    for (cap, name) in [
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmmError::KvmCapability(name));
        }
    }
    Ok(kvm)
}

fn create_irqchip_and_pit(fd: &VmFd) -> Result<(), VmmError> {
    fd.create_irq_chip().map_err(VmmError::CreateIrqchip)?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    fd.create_pit2(pit).map_err(VmmError::CreatePit)
}

/// What runs while the VM runs: vCPU threads, device host threads.
struct Running {
    handles: Vec<(u32, JoinHandle<()>)>,
    host_threads: Vec<HostThread>,
    filter: Option<Arc<seccompiler::BpfProgram>>,
    /// Wakes [`Vm::wait_for_end`] on a stop signal (`None`: it checks every
    /// 50 ms); ends when dropped.
    relay: Option<crate::signals::SignalRelay>,
}

/// Sets the stop flag, kicks every vCPU thread until it leaves KVM_RUN, joins them.
fn stop_vcpus(stop: &AtomicBool, handles: Vec<(u32, JoinHandle<()>)>) -> Result<(), VmmError> {
    stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + STOP_GRACE;
    let signal = vcpu::kick_signal();
    let mut result = Ok(());
    for (id, handle) in handles {
        while !handle.is_finished() {
            if Instant::now() > deadline {
                result = Err(VmmError::StopTimeout { vcpu: id });
                break;
            }
            let _ = handle.kill(signal);
            std::thread::sleep(Duration::from_millis(1));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }
    result
}

/// Feeds console input into the UART from its own thread.
struct InputThread {
    stop: EventFd,
    handle: JoinHandle<()>,
}

impl InputThread {
    fn spawn(
        source: ConsoleInput,
        serial: Arc<Mutex<SerialDevice>>,
        console: Arc<Console>,
        filter: Option<Arc<seccompiler::BpfProgram>>,
    ) -> Result<InputThread, VmmError> {
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::InputThread)?;
        let stop_rx = stop.try_clone().map_err(VmmError::InputThread)?;
        let handle = std::thread::Builder::new()
            .name("duet-console-in".into())
            .stack_size(vcpu::VMM_THREAD_STACK)
            .spawn(move || {
                if let Some(f) = filter {
                    if seccomp::install(&f, "console input").is_err() {
                        return;
                    }
                }
                let owned;
                let fd = match source {
                    ConsoleInput::Stdin => libc::STDIN_FILENO,
                    ConsoleInput::Fd(fd) => {
                        owned = fd;
                        owned.as_raw_fd()
                    }
                    ConsoleInput::None => return,
                };
                // Nothing is read before the guest may take it (see Console):
                // wait for that without a timer (no wake-ups while it boots).
                while !console.input_is_open() {
                    let stopped = match console.input_opened_fd() {
                        Some(opened) => poll_in(Some(opened), &stop_rx, -1).0,
                        None => poll_in(None, &stop_rx, 10).0,
                    };
                    if stopped {
                        return;
                    }
                }
                pump_input(fd, &stop_rx, &serial);
            })
            .map_err(VmmError::InputThread)?;
        Ok(InputThread { stop, handle })
    }

    fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.handle.join();
    }
}

/// Waits for `fd` (and `stop`); returns false when stop fired.
fn poll_in(fd: Option<RawFd>, stop: &EventFd, timeout_ms: i32) -> (bool, bool) {
    let mut fds = [
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: fd.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if n < 0 {
        return (false, false);
    }
    let stopped = fds[0].revents != 0;
    let readable = fds[1].revents != 0;
    (stopped, readable)
}

/// Copies bytes from `fd` into the UART until `stop` fires. At end of input
/// it sends one Ctrl-D, which a guest tty in canonical mode reads as EOF.
fn pump_input(fd: RawFd, stop: &EventFd, serial: &Mutex<SerialDevice>) {
    let mut eof = false;
    loop {
        let (stopped, readable) = poll_in((!eof).then_some(fd), stop, -1);
        if stopped {
            return;
        }
        if !readable {
            continue;
        }
        let mut buf = [0u8; 64];
        // SAFETY: reads into a stack buffer of the given length from a descriptor we own or borrow.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let chunk: Vec<u8> = match n {
            n if n > 0 => buf[..n as usize].to_vec(),
            0 => {
                eof = true;
                vec![0x04]
            }
            _ => {
                let errno = std::io::Error::last_os_error().raw_os_error();
                if errno == Some(libc::EINTR) || errno == Some(libc::EAGAIN) {
                    continue;
                }
                eof = true;
                continue;
            }
        };
        let mut rest: &[u8] = &chunk;
        while !rest.is_empty() {
            let taken = serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .enqueue_input(rest);
            rest = &rest[taken..];
            if !rest.is_empty() && poll_in(None, stop, 10).0 {
                return;
            }
        }
    }
}

/// The Linux entry mode for a loaded kernel.
pub fn linux_entry(kernel: &LoadedKernel, cr3: u64) -> CpuMode {
    CpuMode::Long {
        rip: kernel.entry,
        rsi: ZERO_PAGE_ADDR,
        cr3,
    }
}
