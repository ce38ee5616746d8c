//! vCPUs: creation, boot configuration (CPUID, MSRs, registers, LAPIC), and
//! the thread that runs each one, routing its exits to the buses.
//!
//! Stopping follows Firecracker: the waiting thread sets a stop flag and
//! sends [`kick_signal`] to each vCPU thread; the handler sets the thread's
//! `kvm_run.immediate_exit`, so KVM_RUN returns EINTR whether the signal
//! lands inside KVM_RUN or just before it.

use crate::bus::Bus;
use crate::cpuid;
use crate::event::{EventSender, VcpuStop, VmEvent};
use crate::regs::{self, CpuMode, RegsError};
use crate::seccomp;
use duet_shared::clock::monotonic_ns;
use kvm_bindings::{kvm_run, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use seccompiler::BpfProgram;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("KVM_CREATE_VCPU for vCPU {vcpu}")]
    Create {
        /// vCPU index.
        vcpu: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_CPUID2 failed.
    #[error("KVM_SET_CPUID2 on vCPU {vcpu}")]
    SetCpuid {
        /// vCPU index.
        vcpu: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Register, MSR or LAPIC setup failed.
    #[error("initial register state")]
    Regs(#[from] RegsError),
    /// The kick signal handler could not be installed.
    #[error("installing the vCPU kick signal handler")]
    SignalHandler(#[source] vmm_sys_util::errno::Error),
    /// The thread could not be spawned.
    #[error("spawning the thread for vCPU {vcpu}")]
    Spawn {
        /// vCPU index.
        vcpu: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// One vCPU, created and (once configured) ready to run.
pub struct Vcpu {
    id: u32,
    fd: VcpuFd,
}

impl Vcpu {
    /// KVM_CREATE_VCPU with index `id` (also its APIC id).
    pub fn create(vm: &VmFd, id: u32) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { vcpu: id, source })?;
        Ok(Vcpu { id, fd })
    }

    /// The vCPU index.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its KVM fd (restoring a snapshot writes its state through it).
    pub(crate) fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Sets CPUID (from `supported`), boot MSRs, registers for `mode`, and
    /// the LAPIC LINT pins when the VM has an in-kernel irqchip.
    pub fn configure(
        &self,
        supported: &CpuId,
        vcpu_count: u32,
        tsc_deadline: bool,
        mode: CpuMode,
        irqchip: bool,
    ) -> Result<(), VcpuError> {
        let mut cpuid = supported.clone();
        cpuid::adjust_for_vcpu(
            cpuid.as_mut_slice(),
            self.id as u8,
            vcpu_count,
            tsc_deadline,
        );
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::SetCpuid {
                vcpu: self.id,
                source,
            })?;
        regs::set_boot_msrs(&self.fd, self.id)?;
        regs::set_boot_registers(&self.fd, self.id, mode)?;
        if irqchip {
            regs::set_lint(&self.fd, self.id)?;
        }
        Ok(())
    }
}

/// Exit counts shared by all vCPU threads.
#[derive(Default)]
pub struct ExitCounters {
    /// Every return from KVM_RUN.
    pub total: AtomicU64,
    /// KVM_EXIT_HLT.
    pub hlt: AtomicU64,
    /// KVM_RUN interrupted by a signal (kicks).
    pub interrupted: AtomicU64,
}

/// What every vCPU thread shares.
pub struct VcpuContext {
    /// Port I/O devices.
    pub io_bus: Arc<Bus>,
    /// MMIO devices.
    pub mmio_bus: Arc<Bus>,
    /// Set when the VM must stop.
    pub stop: Arc<AtomicBool>,
    /// Where stop reasons go.
    pub events: EventSender,
    /// Filter each thread installs on itself before its first KVM_RUN.
    pub filter: Option<Arc<BpfProgram>>,
    /// Exit counters.
    pub exits: ExitCounters,
    /// Where a snapshot asks the vCPUs to pause ([`crate::snapshot::PauseGate`]).
    pub pause: Arc<crate::snapshot::PauseGate>,
    /// KVM_GET_MSR_INDEX_LIST: the MSRs a paused vCPU saves.
    pub msr_index: Arc<Vec<u32>>,
}

thread_local! {
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN_PTR.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, set by
            // `run_vcpu` while it owns the VcpuFd and cleared before the fd
            // (and its mapping) is dropped. A volatile byte store is
            // async-signal-safe and is how KVM documents immediate_exit.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// The signal that kicks a vCPU thread out of KVM_RUN (SIGRTMIN).
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the kick handler (once per process).
pub fn register_kick_handler() -> Result<(), VcpuError> {
    static REGISTERED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick))
        .map_err(VcpuError::SignalHandler)
}

/// Stack size of the VMM's own threads (vCPUs, console input). Rust's
/// default is 2 MiB, which on hosts with transparent huge pages set to
/// `always` can be backed by one huge page: 2 MiB of RSS per thread for a
/// loop that needs a few KiB. Below 2 MiB a stack can never get a huge page.
pub const VMM_THREAD_STACK: usize = 512 << 10;

/// Starts the thread running `vcpu`.
pub fn spawn(vcpu: Vcpu, ctx: Arc<VcpuContext>) -> Result<JoinHandle<()>, VcpuError> {
    let id = vcpu.id;
    std::thread::Builder::new()
        .name(format!("duet-vcpu{id}"))
        .stack_size(VMM_THREAD_STACK)
        .spawn(move || run_vcpu(vcpu, &ctx))
        .map_err(|source| VcpuError::Spawn { vcpu: id, source })
}

enum Step {
    Continue,
    Interrupted,
    Stop(VcpuStop),
}

fn guest_rip(fd: &VcpuFd) -> Option<u64> {
    fd.get_regs().ok().map(|r| r.rip)
}

fn run_vcpu(mut vcpu: Vcpu, ctx: &VcpuContext) {
    let id = vcpu.id;
    let run_ptr: *mut kvm_run = vcpu.fd.get_kvm_run();
    KVM_RUN_PTR.with(|p| p.set(run_ptr));
    let stop = run_loop(&mut vcpu, ctx);
    KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
    if let Some(stop) = stop {
        let _ = ctx.events.send(VmEvent::VcpuStopped {
            vcpu: id,
            stop,
            at_ns: monotonic_ns(),
        });
    }
}

/// Runs until the stop flag is set (returns None) or the vCPU stops by itself.
fn run_loop(vcpu: &mut Vcpu, ctx: &VcpuContext) -> Option<VcpuStop> {
    if let Some(filter) = &ctx.filter {
        if let Err(e) = seccomp::install(filter, &format!("vCPU {}", vcpu.id)) {
            return Some(VcpuStop::Failed {
                what: format!("{e}: {}", error_chain(&e)),
            });
        }
    }
    loop {
        if ctx.stop.load(Ordering::Acquire) {
            return None;
        }
        let step = match vcpu.fd.run() {
            Ok(exit) => {
                ctx.exits.total.fetch_add(1, Ordering::Relaxed);
                match exit {
                    VcpuExit::IoIn(port, data) => {
                        ctx.io_bus.read(u64::from(port), data);
                        Step::Continue
                    }
                    VcpuExit::IoOut(port, data) => {
                        ctx.io_bus.write(u64::from(port), data);
                        Step::Continue
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        ctx.mmio_bus.read(addr, data);
                        Step::Continue
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        ctx.mmio_bus.write(addr, data);
                        Step::Continue
                    }
                    VcpuExit::Hlt => {
                        ctx.exits.hlt.fetch_add(1, Ordering::Relaxed);
                        Step::Stop(VcpuStop::Halted)
                    }
                    VcpuExit::Shutdown => Step::Stop(VcpuStop::Shutdown { rip: None }),
                    VcpuExit::InternalError => Step::Stop(VcpuStop::InternalError {
                        suberror: 0,
                        rip: None,
                    }),
                    VcpuExit::FailEntry(reason, _) => Step::Stop(VcpuStop::FailEntry { reason }),
                    VcpuExit::SystemEvent(kind, _) => Step::Stop(VcpuStop::SystemEvent { kind }),
                    VcpuExit::Intr => Step::Interrupted,
                    other => Step::Stop(VcpuStop::Unhandled {
                        exit: format!("{other:?}"),
                    }),
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Interrupted,
            Err(e) => Step::Stop(VcpuStop::Failed {
                what: format!("KVM_RUN: {e}"),
            }),
        };
        match step {
            Step::Continue => {}
            Step::Interrupted => {
                ctx.exits.interrupted.fetch_add(1, Ordering::Relaxed);
                vcpu.fd.set_kvm_immediate_exit(0);
                // KVM_RUN returned EINTR: the access of the last exit is
                // complete, the state consistent; a snapshot may read it.
                if ctx.pause.requested() {
                    let state = crate::snapshot::capture_vcpu(&vcpu.fd, vcpu.id, &ctx.msr_index)
                        .map_err(|e| crate::error_with_causes(&e));
                    ctx.pause
                        .park(vcpu.id, state, &|| ctx.stop.load(Ordering::Acquire));
                }
            }
            Step::Stop(mut stop) => {
                match &mut stop {
                    VcpuStop::Shutdown { rip } => *rip = guest_rip(&vcpu.fd),
                    VcpuStop::InternalError { suberror, rip } => {
                        let run = vcpu.fd.get_kvm_run();
                        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kernel
                        // fills the `internal` member of the exit union.
                        *suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                        *rip = guest_rip(&vcpu.fd);
                    }
                    _ => {}
                }
                return Some(stop);
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
