//! The second VM peer: Firecracker booting duet's own guest.
//!
//! As with [`crate::qemu`]: the same guest kernel, the same initramfs (a
//! kept `duet run --keep` instance's `initrd.cpio`), the same kernel
//! command line, vCPU count and memory as `duet run --isolation vm`, so the
//! row differs from `duet vm` in the VMM only. Firecracker runs without
//! its API server, from a config file ([`config_json`]: `boot-source` and
//! `machine-config`, no drives, no network):
//! `firecracker --no-api --config-file CFG`. duet-init's ready/exit port
//! writes go nowhere there; it then resets the machine through the i8042
//! (`reboot=k`), on which Firecracker ends.
//!
//! Firecracker is a peer to measure against, never part of duet: the
//! binary is the user's (`--firecracker PATH`, or `firecracker` on PATH),
//! and without one the row says how to get it.

use crate::qemu::{boot_once, failed_row, prepare_guest, GuestSource, MicrovmSpec};
use crate::startup::{
    self, Progress, StartError, StartSample, Starter, StartupConfig, StartupResult,
};
use crate::Kind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The program looked up on PATH.
pub const PROGRAM: &str = "firecracker";
/// Row label before the version number.
pub const LABEL: &str = "firecracker";
/// Longest one boot may take before it counts as hung.
pub const RUN_TIMEOUT: Duration = crate::qemu::RUN_TIMEOUT;

/// Firecracker as found (or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerPeer {
    /// The binary, if found.
    pub binary: Option<PathBuf>,
    /// First line of `--version`.
    pub version: Option<String>,
    /// Why it cannot run here; `None` if it should.
    pub unavailable: Option<String>,
}

impl FirecrackerPeer {
    /// `firecracker 1.17.0-dev`: the label and Firecracker's version number.
    pub fn label(&self) -> String {
        match self.version.as_deref().and_then(version_number) {
            Some(v) => format!("{LABEL} {v}"),
            None => LABEL.to_string(),
        }
    }
}

/// The version number in `Firecracker v1.17.0-dev`.
pub fn version_number(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
}

/// Why Firecracker cannot run, before trying: `explicit` is the
/// `--firecracker` path given, `found` the binary looked up.
pub fn refusal_reason(
    explicit: Option<&Path>,
    found: Option<&Path>,
    kvm_device: bool,
) -> Option<String> {
    match (explicit, found) {
        (Some(p), None) => {
            return Some(format!(
                "--firecracker {}: not an executable file",
                p.display()
            ))
        }
        (None, None) => {
            return Some(format!(
                "no Firecracker: give its binary with --firecracker PATH, or put `{PROGRAM}` on \
                 PATH (a peer to measure against, not part of duet)"
            ))
        }
        _ => {}
    }
    if !kvm_device {
        return Some("no /dev/kvm: Firecracker needs KVM".to_string());
    }
    None
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds Firecracker (`explicit`, else on PATH) and asks it for its version.
pub fn detect(explicit: Option<&Path>) -> FirecrackerPeer {
    let binary = match explicit {
        Some(p) => Some(p.to_path_buf()).filter(|p| executable(p)),
        None => crate::oci::which(PROGRAM),
    };
    let version = binary.as_ref().and_then(|b| {
        let out = Command::new(b)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(|l| l.trim().to_string())
    });
    FirecrackerPeer {
        unavailable: refusal_reason(explicit, binary.as_deref(), Path::new("/dev/kvm").exists()),
        binary,
        version,
    }
}

/// Firecracker's `--config-file` for `spec`: the kernel, initramfs and
/// command line, vCPUs and memory; no drives, no network interfaces.
pub fn config_json(spec: &MicrovmSpec) -> String {
    let v = serde_json::json!({
        "boot-source": {
            "kernel_image_path": spec.kernel,
            "initrd_path": spec.initrd,
            "boot_args": spec.cmdline,
        },
        "drives": [],
        "machine-config": {
            "vcpu_count": spec.vcpus,
            "mem_size_mib": spec.memory_mib,
        },
    });
    serde_json::to_string_pretty(&v).expect("a JSON value serialises")
}

/// Boots Firecracker on a config file once per start.
#[derive(Debug, Clone)]
pub struct FirecrackerStarter {
    /// The Firecracker found by [`detect`].
    pub peer: FirecrackerPeer,
    /// Its config file ([`config_json`]).
    pub config: PathBuf,
    /// A run still going after this is killed and fails the row.
    pub timeout: Duration,
}

/// Firecracker's arguments (after the program name).
pub fn args(config: &Path) -> Vec<String> {
    vec![
        "--no-api".into(),
        "--config-file".into(),
        config.display().to_string(),
    ]
}

impl Starter for FirecrackerStarter {
    fn label(&self) -> String {
        self.peer.label()
    }

    fn kind(&self) -> Kind {
        Kind::Vm
    }

    fn start_once(&mut self, _i: usize) -> Result<StartSample, StartError> {
        let binary = self
            .peer
            .binary
            .clone()
            .ok_or_else(|| StartError::Other(format!("{PROGRAM} not found")))?;
        boot_once(&binary, &args(&self.config), self.timeout)
    }
}

/// The Firecracker startup row and a note saying what was measured and
/// how (`None` when it did not run). `workdir` holds the initramfs copy
/// and the config file.
pub fn peer_startup(
    cfg: &StartupConfig,
    src: &GuestSource,
    explicit: Option<&Path>,
    workdir: &Path,
    progress: &mut dyn Progress,
) -> (StartupResult, Option<String>) {
    let peer = detect(explicit);
    let label = peer.label();
    let dest = workdir.join("firecracker-initrd.cpio");
    let (spec, initrd_bytes) =
        match prepare_guest(cfg, src, &label, peer.unavailable.as_deref(), &dest) {
            Ok(g) => g,
            Err(row) => return (*row, None),
        };
    let config = workdir.join("firecracker.json");
    if let Err(e) = std::fs::write(&config, config_json(&spec)) {
        let _ = std::fs::remove_file(&dest);
        let why = format!("writing {}: {e}", config.display());
        return (failed_row(cfg, &label, why), None);
    }
    let mut starter = FirecrackerStarter {
        peer: peer.clone(),
        config: config.clone(),
        timeout: RUN_TIMEOUT,
    };
    let row = startup::run(cfg, &mut starter, progress);
    let _ = std::fs::remove_file(&dest);
    let _ = std::fs::remove_file(&config);
    let note = format!(
        "{label}: {} timed runs after {} warm-up of `{} {}`, wall time from spawn to exit \
         (as for duet vm); its config: boot-source = the same guest kernel ({}), the same \
         initramfs (the {}-byte initrd.cpio of a kept `duet run --isolation vm {} -- {}`, \
         instance removed) and duet's kernel command line; machine-config = {} vCPU, {} MiB; \
         no drives or network; the guest's duet-init runs `{}` then resets through the i8042, \
         which ends Firecracker; a run counts only if it exits 0 with no kernel panic or \
         duet-init error on the console",
        cfg.runs,
        cfg.warmup,
        starter
            .peer
            .binary
            .as_deref()
            .unwrap_or(Path::new(PROGRAM))
            .display(),
        args(Path::new("CFG")).join(" "),
        spec.kernel.display(),
        initrd_bytes,
        src.image,
        src.command.join(" "),
        src.vcpus,
        src.memory_mib,
        src.command.join(" "),
    );
    (row, Some(note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::startup::{run, NoProgress, RowStatus};

    fn spec() -> MicrovmSpec {
        MicrovmSpec {
            kernel: "/k/vmlinux".into(),
            initrd: "/i/initrd.cpio".into(),
            cmdline: "console=ttyS0 reboot=k quiet".into(),
            memory_mib: 128,
            vcpus: 1,
        }
    }

    #[test]
    fn config_boots_duets_guest_without_devices() {
        let v: serde_json::Value = serde_json::from_str(&config_json(&spec())).unwrap();
        assert_eq!(v["boot-source"]["kernel_image_path"], "/k/vmlinux");
        assert_eq!(v["boot-source"]["initrd_path"], "/i/initrd.cpio");
        assert_eq!(
            v["boot-source"]["boot_args"],
            "console=ttyS0 reboot=k quiet"
        );
        assert_eq!(v["machine-config"]["vcpu_count"], 1);
        assert_eq!(v["machine-config"]["mem_size_mib"], 128);
        assert_eq!(v["drives"], serde_json::json!([]));
        assert!(v.get("network-interfaces").is_none());
    }

    #[test]
    fn label_and_reasons() {
        assert_eq!(
            version_number("Firecracker v1.17.0-dev"),
            Some("1.17.0-dev")
        );
        assert_eq!(version_number("Firecracker version"), None);
        let p = FirecrackerPeer {
            binary: None,
            version: Some("Firecracker v1.17.0-dev".into()),
            unavailable: None,
        };
        assert_eq!(p.label(), "firecracker 1.17.0-dev");
        let fc = Path::new("/opt/fc");
        assert!(refusal_reason(Some(fc), None, true)
            .unwrap()
            .contains("--firecracker /opt/fc: not an executable"));
        assert!(refusal_reason(None, None, true)
            .unwrap()
            .contains("--firecracker PATH"));
        assert!(refusal_reason(None, Some(fc), false)
            .unwrap()
            .contains("/dev/kvm"));
        assert_eq!(refusal_reason(Some(fc), Some(fc), true), None);
    }

    #[test]
    fn an_explicit_path_that_is_no_program_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("firecracker");
        std::fs::write(&plain, "not a program").unwrap();
        let p = detect(Some(&plain));
        assert_eq!(p.binary, None);
        assert!(p.unavailable.unwrap().contains("not an executable"));
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    }

    fn starter(binary: PathBuf, config: PathBuf) -> FirecrackerStarter {
        FirecrackerStarter {
            peer: FirecrackerPeer {
                binary: Some(binary),
                version: None,
                unavailable: None,
            },
            config,
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn starter_passes_the_config_and_checks_the_console() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("fc.json");
        std::fs::write(&cfg, config_json(&spec())).unwrap();
        // A stand-in Firecracker: no API, reads its config, prints a console line.
        let ok = script(
            d.path(),
            "fc-ok",
            "[ \"$1 $2\" = '--no-api --config-file' ] || exit 9\n\
             grep -q mem_size_mib \"$3\" || exit 8\n\
             echo booted; sleep 0.05",
        );
        let r = run(
            &StartupConfig { runs: 2, warmup: 1 },
            &mut starter(ok, cfg.clone()),
            &mut NoProgress,
        );
        assert_eq!(r.status, RowStatus::Measured, "{r:?}");
        assert_eq!(r.kind, Kind::Vm);
        assert!(r.samples_ms.iter().all(|&w| w >= 50.0), "{r:?}");
        let bad = script(d.path(), "fc-bad", "echo 'duet-init: no workload'");
        let r = run(
            &StartupConfig { runs: 1, warmup: 0 },
            &mut starter(bad, cfg.clone()),
            &mut NoProgress,
        );
        assert!(
            matches!(&r.status, RowStatus::Failed(w) if w.contains("duet-init")),
            "{r:?}"
        );
        let exit = script(d.path(), "fc-exit", "echo 'Error: KVM'; exit 1");
        let r = run(
            &StartupConfig { runs: 1, warmup: 0 },
            &mut starter(exit, cfg),
            &mut NoProgress,
        );
        assert!(matches!(&r.status, RowStatus::Failed(_)), "{r:?}");
    }
}
