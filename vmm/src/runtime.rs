//! `duet run --isolation vm`: the [`Runtime`] that boots a microVM per run.
//!
//! Recipe: find the guest kernel and init, build the initramfs from the
//! image's layers (cached per image) plus this run's workload config, boot
//! it with [`crate::run_vm`], and turn how the VM ended into the workload's
//! exit status (or an error with the last console lines).

use crate::rootfs::{self, RootfsError};
use crate::{run_vm, ConsoleMode, GuestFailure, VmConfig, VmEnd, VmmError};
use duet_shared::runtime::BackendError;
use duet_shared::{Launch, Phase, RunReport, Runtime, WorkloadExit};
use std::path::PathBuf;

/// Environment variable naming the guest kernel (ELF vmlinux or bzImage).
pub const KERNEL_ENV: &str = "DUET_KERNEL";
/// Environment variable whose words are appended to the guest kernel's
/// command line (debugging, like Firecracker's `boot_args`).
pub const KERNEL_APPEND_ENV: &str = "DUET_KERNEL_APPEND";
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
    /// The VMM failed.
    #[error("microVM")]
    Vmm(#[from] VmmError),
    /// The guest ended without reporting the workload's exit status.
    #[error("the guest did not report an exit status")]
    Guest(#[from] GuestFailure),
}

/// Finds the guest kernel: `$DUET_KERNEL`, the build cache's `current`
/// kernel, then [`SYSTEM_KERNEL_PATH`].
pub fn find_kernel() -> Result<PathBuf, VmRuntimeError> {
    if let Some(p) = std::env::var_os(KERNEL_ENV).filter(|p| !p.is_empty()) {
        // An explicit path is used as given: the loader names it if it is missing or bad.
        return Ok(PathBuf::from(p));
    }
    let tried = vec![
        duet_shared::paths::cache_dir().join("kernel/current/vmlinux"),
        PathBuf::from(SYSTEM_KERNEL_PATH),
    ];
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(VmRuntimeError::KernelNotFound { tried }),
    }
}

/// The microVM backend.
#[derive(Debug, Default)]
pub struct VmRuntime {}

impl VmRuntime {
    /// A runtime; all lookups happen per run.
    pub fn new() -> VmRuntime {
        VmRuntime {}
    }

    fn run_inner(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
    ) -> Result<WorkloadExit, VmRuntimeError> {
        let kernel = find_kernel()?;
        let opts = launch.options;
        let mut cfg = VmConfig {
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
        };
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
        let (info, initrd) = rootfs::build_for_launch(launch.instance.state_root(), launch, &init)?;
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
        let _guard = crate::signals::RunGuard::enter();
        let outcome = run_vm(&cfg, report)?;
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

impl Runtime for VmRuntime {
    fn isolation(&self) -> &'static str {
        "vm"
    }

    fn run(
        &self,
        launch: &Launch<'_>,
        report: &mut RunReport,
    ) -> Result<WorkloadExit, BackendError> {
        Ok(self.run_inner(launch, report)?)
    }

    /// A VM lives in duet's own process (its threads die with it) and its
    /// files live in the instance directory, which `duet gc` removes: there
    /// is nothing else to collect.
    fn gc_instance(&self, _id: &str) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
