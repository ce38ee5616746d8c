//! The VM peer: QEMU's `microvm` machine booting duet's own guest.
//!
//! Same guest kernel, same initramfs, same kernel command line, same vCPU
//! count and memory as `duet run --isolation vm`, so the row differs from
//! `duet vm` in the VMM only. The initramfs is the `initrd.cpio` a
//! `duet run --keep --isolation vm IMAGE -- COMMAND` leaves in its instance
//! directory (image part + duet-init + that run's workload.json), copied
//! aside before the kept instance is removed with `duet rm`
//! ([`keep_initrd`]). Inside the guest duet-init runs the workload exactly
//! as under duet; its ready/exit port writes go nowhere on QEMU, then it
//! resets the machine through the i8042 (`reboot=k`) and QEMU exits
//! because of `-no-reboot`.
//!
//! The command line is the one tests/testbed/bench-vmm.sh measured
//! (bench/vmm/RESULTS.md): `qemu-system-x86_64 -M microvm -enable-kvm -cpu
//! host -m MEM -smp VCPUS -nodefaults -no-user-config -nographic -no-reboot
//! -serial stdio -device i8042 -kernel K -initrd I -append CMDLINE`
//! ([`microvm_args`]). A run's wall time is taken like duet's own rows:
//! `CLOCK_MONOTONIC` just before spawn to just after wait ([`QemuStarter`]).

use crate::startup::{
    self, tail, Progress, StartError, StartSample, Starter, StartupConfig, StartupResult,
    TimedOutput,
};
use crate::Kind;
use duet_shared::clock::monotonic_ns;
use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The QEMU program the row runs.
pub const QEMU_PROGRAM: &str = "qemu-system-x86_64";
/// Row label before the version number.
pub const LABEL: &str = "qemu microvm";
/// Longest one boot may take before it counts as hung (the testbed's
/// boots take seconds; a silent guest there is a failure to report).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// QEMU as found (or not) on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuPeer {
    /// Path of `qemu-system-x86_64`, if found.
    pub binary: Option<PathBuf>,
    /// First line of `--version`.
    pub version: Option<String>,
    /// Why it cannot run here; `None` if it should.
    pub unavailable: Option<String>,
}

impl QemuPeer {
    /// `qemu microvm 7.2.22`: the label and QEMU's version number.
    pub fn label(&self) -> String {
        match self.version.as_deref().and_then(version_number) {
            Some(v) => format!("{LABEL} {v}"),
            None => LABEL.to_string(),
        }
    }
}

/// The version number in `QEMU emulator version 7.2.22 (Debian ...)`.
pub fn version_number(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "version")?;
    words.next()
}

/// Why QEMU microvm cannot run on a host with these facts, before trying.
pub fn refusal_reason(found: bool, kvm_device: bool) -> Option<String> {
    if !found {
        return Some(format!(
            "{QEMU_PROGRAM} is not installed (apt-get install qemu-system-x86)"
        ));
    }
    if !kvm_device {
        return Some("no /dev/kvm: QEMU microvm runs with -enable-kvm here".to_string());
    }
    None
}

/// Finds `qemu-system-x86_64` and asks it for its version. Whether this
/// host's KVM accelerates is the caller's call (it decides where VM rows
/// run); here only a missing program or a missing /dev/kvm is a reason.
pub fn detect() -> QemuPeer {
    let binary = crate::oci::which(QEMU_PROGRAM);
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
    QemuPeer {
        unavailable: refusal_reason(binary.is_some(), Path::new("/dev/kvm").exists()),
        binary,
        version,
    }
}

/// What QEMU boots: duet's guest, as duet would boot it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MicrovmSpec {
    /// Guest kernel (duet's: `duet_vmm::runtime::find_kernel()`).
    pub kernel: PathBuf,
    /// Initramfs (a kept duet instance's `initrd.cpio`).
    pub initrd: PathBuf,
    /// Kernel command line (duet's: `duet_vmm::rootfs::kernel_cmdline(false)`).
    pub cmdline: String,
    /// Guest RAM, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
}

/// QEMU's arguments for `spec` (after the program name).
pub fn microvm_args(spec: &MicrovmSpec) -> Vec<String> {
    let mut a: Vec<String> = [
        "-M",
        "microvm",
        "-enable-kvm",
        "-cpu",
        "host",
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        &spec.vcpus.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        "i8042",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push("-kernel".into());
    a.push(spec.kernel.display().to_string());
    a.push("-initrd".into());
    a.push(spec.initrd.display().to_string());
    a.push("-append".into());
    a.push(spec.cmdline.clone());
    a
}

/// Console lines that mean the guest did not run the workload to its end
/// although QEMU exited cleanly (a panic resets too, with `panic=-1`).
pub fn console_failure(console: &str) -> Option<String> {
    console
        .lines()
        .map(str::trim)
        .find(|l| l.contains("Kernel panic") || l.starts_with("duet-init:"))
        .map(str::to_string)
}

/// Boots QEMU microvm on [`MicrovmSpec`] once per start.
#[derive(Debug, Clone)]
pub struct QemuStarter {
    /// The QEMU found by [`detect`].
    pub peer: QemuPeer,
    /// What it boots.
    pub spec: MicrovmSpec,
    /// A run still going after this is killed and fails the row.
    pub timeout: Duration,
}

impl Starter for QemuStarter {
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
            .ok_or_else(|| StartError::Other(format!("{QEMU_PROGRAM} not installed")))?;
        boot_once(&binary, &microvm_args(&self.spec), self.timeout)
    }
}

/// One boot of a VM peer (QEMU, Firecracker): `binary ARGS`, timed from
/// spawn to exit like duet's own rows; it counts only if the VMM exits 0
/// with no kernel panic or duet-init error on the console
/// ([`console_failure`]), within `timeout` (else it is killed).
pub fn boot_once(
    binary: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<StartSample, StartError> {
    let program = binary.display().to_string();
    let mut cmd = Command::new(binary);
    cmd.args(args);
    let out = spawn_with_deadline(&mut cmd, timeout).map_err(|source| StartError::Spawn {
        program: program.clone(),
        source,
    })?;
    let Some(out) = out else {
        return Err(StartError::Other(format!(
            "{program} still running after {} s (killed): the guest hung",
            timeout.as_secs()
        )));
    };
    if !out.status.success() {
        return Err(StartError::Exit {
            program,
            status: out.status.to_string(),
            stderr: tail(&[out.stdout.as_slice(), out.stderr.as_slice()].concat()),
        });
    }
    if let Some(line) = console_failure(&String::from_utf8_lossy(&out.stdout)) {
        return Err(StartError::Other(format!(
            "{program} exited but the guest failed: {line}"
        )));
    }
    Ok(StartSample {
        wall_ms: (out.exited_ns - out.spawned_ns) as f64 / 1e6,
        spawn_to_t0_ms: None,
        last_stamp_to_exit_ms: None,
        report: None,
    })
}

/// An anonymous in-memory file for a child's output: nothing to drain
/// while it runs, so waiting can be one poll with a deadline.
fn memfd(name: &CStr) -> std::io::Result<File> {
    // SAFETY: name is a valid NUL-terminated string; the call creates a new fd.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Like [`startup::timed_spawn`] (same stamps: `CLOCK_MONOTONIC` just before
/// spawn and just after wait), with the output going to memory files and a
/// deadline: `Ok(None)` if the program was still running after `timeout`
/// (it is killed).
pub fn spawn_with_deadline(
    cmd: &mut Command,
    timeout: Duration,
) -> std::io::Result<Option<TimedOutput>> {
    let mut out_f = memfd(c"duet-bench-stdout")?;
    let mut err_f = memfd(c"duet-bench-stderr")?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out_f.try_clone()?))
        .stderr(Stdio::from(err_f.try_clone()?));
    let spawned_ns = monotonic_ns();
    let spawned = std::time::Instant::now();
    let mut child = cmd.spawn()?;
    let exited = duet_shared::child_wait::wait_until(&mut child, Some(spawned + timeout));
    if !matches!(exited, Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
        return exited.map(|_| None);
    }
    let status = child.wait()?;
    let exited_ns = monotonic_ns();
    let read_all = |f: &mut File| -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        f.rewind()?;
        f.read_to_end(&mut v)?;
        Ok(v)
    };
    Ok(Some(TimedOutput {
        spawned_ns,
        exited_ns,
        stdout: read_all(&mut out_f)?,
        stderr: read_all(&mut err_f)?,
        status,
    }))
}

/// What `duet run --keep` printed: the kept instance's id.
pub fn kept_instance_id(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("duet: kept instance "))
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
}

/// An initramfs copied out of a kept duet instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptInitrd {
    /// The copy.
    pub path: PathBuf,
    /// Its size, bytes.
    pub bytes: u64,
    /// The instance it came from (already removed).
    pub instance: String,
}

/// Runs `duet run --isolation vm --keep --memory M IMAGE -- COMMAND`, copies
/// the kept instance's `initrd.cpio` to `dest`, then removes the instance
/// with `duet rm` (also when the copy fails). `state_root` is duet's
/// (`DUET_ROOT`), where the instance directory is.
pub fn keep_initrd(
    duet: &Path,
    state_root: &Path,
    memory_mib: u64,
    image: &str,
    command: &[&str],
    dest: &Path,
) -> Result<KeptInitrd, String> {
    // QEMU gets duet's initramfs but none of duet's disks: keep an instance
    // whose whole root is in its initramfs.
    let out = Command::new(duet)
        .env("DUET_VM_ROOTFS", "initramfs")
        .args([
            "run",
            "--isolation",
            "vm",
            "--network",
            "none",
            "--keep",
            "--memory",
        ])
        .arg(memory_mib.to_string())
        .arg(image)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawning {}: {e}", duet.display()))?;
    let err = String::from_utf8_lossy(&out.stderr);
    let id = kept_instance_id(&err);
    let copied = match (&id, out.status.success()) {
        (Some(id), true) => {
            let src = duet_shared::InstanceDir::base(state_root)
                .join(id)
                .join("initrd.cpio");
            if id.contains('/') || id.starts_with('.') {
                Err(format!(
                    "`duet run --keep` printed a strange instance id `{id}`"
                ))
            } else {
                std::fs::copy(&src, dest).map_err(|e| {
                    format!(
                        "copying kept instance {id}'s {} to {}: {e}",
                        src.display(),
                        dest.display()
                    )
                })
            }
        }
        (_, ok) => Err(format!(
            "`duet run --keep --isolation vm {image} -- {}` {}: {}",
            command.join(" "),
            if ok {
                "printed no kept instance id".to_string()
            } else {
                format!("exited with {}", out.status)
            },
            tail(&out.stderr)
        )),
    };
    if let Some(id) = &id {
        let rm = Command::new(duet)
            .args(["rm", id])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("spawning {} rm {id}: {e}", duet.display()))?;
        if !rm.status.success() {
            return Err(format!("duet rm {id}: {}", tail(&rm.stderr)));
        }
    }
    let bytes = copied?;
    Ok(KeptInitrd {
        path: dest.to_path_buf(),
        bytes,
        instance: id.unwrap_or_default(),
    })
}

/// Where the guest comes from: duet's kernel and command line, and the duet
/// binary that makes the initramfs.
#[derive(Debug, Clone)]
pub struct GuestSource {
    /// The duet binary.
    pub duet: PathBuf,
    /// duet's state root (`DUET_ROOT`).
    pub state_root: PathBuf,
    /// duet's guest kernel, or why there is none.
    pub kernel: Result<PathBuf, String>,
    /// duet's kernel command line.
    pub cmdline: String,
    /// Guest RAM duet's VM row uses, MiB.
    pub memory_mib: u64,
    /// vCPUs duet's VM row uses.
    pub vcpus: u32,
    /// Image (e.g. `busybox`).
    pub image: String,
    /// Workload (e.g. `["true"]`).
    pub command: Vec<String>,
}

/// What a VM peer boots, prepared for the row `label`: duet's guest as a
/// [`MicrovmSpec`], its initramfs copied to `dest` out of a kept instance
/// ([`keep_initrd`]; the caller removes the copy), with the copy's size;
/// or the row saying why not (the peer `unavailable`, no kernel, or the
/// initramfs could not be made).
pub fn prepare_guest(
    cfg: &StartupConfig,
    src: &GuestSource,
    label: &str,
    unavailable: Option<&str>,
    dest: &Path,
) -> Result<(MicrovmSpec, u64), Box<StartupResult>> {
    if let Some(why) = unavailable {
        return Err(Box::new(StartupResult::unavailable(label, Kind::Vm, why)));
    }
    let kernel = src
        .kernel
        .clone()
        .map_err(|why| Box::new(StartupResult::unavailable(label, Kind::Vm, &why)))?;
    let command: Vec<&str> = src.command.iter().map(String::as_str).collect();
    let initrd = keep_initrd(
        &src.duet,
        &src.state_root,
        src.memory_mib,
        &src.image,
        &command,
        dest,
    )
    .map_err(|why| {
        Box::new(failed_row(
            cfg,
            label,
            format!("preparing the initramfs: {why}"),
        ))
    })?;
    let spec = MicrovmSpec {
        kernel,
        initrd: initrd.path,
        cmdline: src.cmdline.clone(),
        memory_mib: src.memory_mib,
        vcpus: src.vcpus,
    };
    Ok((spec, initrd.bytes))
}

/// A VM peer's row that failed before its runs.
pub fn failed_row(cfg: &StartupConfig, label: &str, why: String) -> StartupResult {
    StartupResult {
        status: startup::RowStatus::Failed(why),
        runs: cfg.runs,
        warmup: cfg.warmup,
        ..StartupResult::unavailable(label, Kind::Vm, "")
    }
}

/// The `qemu microvm` startup row and a note saying what was measured and
/// how (or `None` when it did not run). `workdir` holds the initramfs copy.
pub fn peer_startup(
    cfg: &StartupConfig,
    src: &GuestSource,
    workdir: &Path,
    progress: &mut dyn Progress,
) -> (StartupResult, Option<String>) {
    let peer = detect();
    let label = peer.label();
    let dest = workdir.join("qemu-initrd.cpio");
    let (spec, initrd_bytes) =
        match prepare_guest(cfg, src, &label, peer.unavailable.as_deref(), &dest) {
            Ok(g) => g,
            Err(row) => return (*row, None),
        };
    let mut starter = QemuStarter {
        peer: peer.clone(),
        spec,
        timeout: RUN_TIMEOUT,
    };
    let row = startup::run(cfg, &mut starter, progress);
    let _ = std::fs::remove_file(&dest);
    let note = format!(
        "{label}: {} timed runs after {} warm-up of `{} {}`, wall time from spawn to exit \
         (as for duet vm); same guest kernel ({}), same initramfs (the {}-byte initrd.cpio of \
         a kept `duet run --isolation vm {} -- {}`, instance removed), duet's kernel command \
         line, {} vCPU, {} MiB; the guest's duet-init runs `{}` then resets through the i8042 \
         and QEMU exits (-no-reboot); a run counts only if QEMU exits 0 with no kernel panic \
         or duet-init error on the console",
        cfg.runs,
        cfg.warmup,
        QEMU_PROGRAM,
        microvm_args(&starter.spec).join(" "),
        starter.spec.kernel.display(),
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
    fn args_are_bench_vmm_command_line() {
        assert_eq!(
            microvm_args(&spec()).join(" "),
            "-M microvm -enable-kvm -cpu host -m 128 -smp 1 -nodefaults -no-user-config \
             -nographic -no-reboot -serial stdio -device i8042 -kernel /k/vmlinux \
             -initrd /i/initrd.cpio -append console=ttyS0 reboot=k quiet"
        );
    }

    #[test]
    fn label_and_reasons() {
        assert_eq!(
            version_number("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)"),
            Some("7.2.22")
        );
        let p = QemuPeer {
            binary: None,
            version: Some("QEMU emulator version 7.2.22 (Debian)".into()),
            unavailable: None,
        };
        assert_eq!(p.label(), "qemu microvm 7.2.22");
        assert!(refusal_reason(false, true)
            .unwrap()
            .contains("not installed"));
        assert!(refusal_reason(true, false).unwrap().contains("/dev/kvm"));
        assert_eq!(refusal_reason(true, true), None);
    }

    #[test]
    fn console_failures_are_found() {
        assert_eq!(console_failure("\r\n"), None);
        assert!(console_failure("[ 1.0] Kernel panic - not syncing: x\n").is_some());
        assert!(console_failure("duet-init: cannot mount /proc\r\n").is_some());
    }

    #[test]
    fn kept_id_parsed_from_stderr() {
        assert_eq!(
            kept_instance_id("noise\nduet: kept instance busybox-1a2b\n").as_deref(),
            Some("busybox-1a2b")
        );
        assert_eq!(kept_instance_id("duet: error\n"), None);
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    }

    fn starter(binary: PathBuf, timeout: Duration) -> QemuStarter {
        QemuStarter {
            peer: QemuPeer {
                binary: Some(binary),
                version: None,
                unavailable: None,
            },
            spec: spec(),
            timeout,
        }
    }

    #[test]
    fn starter_times_runs_and_checks_the_console() {
        let d = tempfile::tempdir().unwrap();
        // A stand-in QEMU: checks its arguments, prints a console line, exits 0.
        let ok = script(
            d.path(),
            "qemu-ok",
            "case \"$*\" in *'-M microvm'*'-append console=ttyS0 reboot=k quiet') ;; *) exit 9 ;; esac\n\
             echo booted; sleep 0.05",
        );
        let r = run(
            &StartupConfig { runs: 3, warmup: 1 },
            &mut starter(ok, Duration::from_secs(10)),
            &mut NoProgress,
        );
        assert_eq!(r.status, RowStatus::Measured, "{r:?}");
        assert_eq!(r.kind, Kind::Vm);
        assert_eq!(r.samples_ms.len(), 3);
        assert!(r.samples_ms.iter().all(|&w| w >= 50.0), "{r:?}");
        let panic = script(d.path(), "qemu-panic", "echo 'Kernel panic - not syncing'");
        let r = run(
            &StartupConfig { runs: 1, warmup: 0 },
            &mut starter(panic, Duration::from_secs(10)),
            &mut NoProgress,
        );
        assert!(
            matches!(&r.status, RowStatus::Failed(w) if w.contains("Kernel panic")),
            "{r:?}"
        );
    }

    #[test]
    fn hung_run_is_killed_at_the_deadline() {
        let d = tempfile::tempdir().unwrap();
        let hang = script(d.path(), "qemu-hang", "exec sleep 30");
        let t = monotonic_ns();
        let r = run(
            &StartupConfig { runs: 1, warmup: 0 },
            &mut starter(hang, Duration::from_millis(300)),
            &mut NoProgress,
        );
        let took_ms = (monotonic_ns() - t) / 1_000_000;
        assert!(
            matches!(&r.status, RowStatus::Failed(w) if w.contains("hung")),
            "{r:?}"
        );
        assert!(took_ms < 5_000, "took {took_ms} ms");
    }

    #[test]
    fn keep_initrd_copies_then_removes_the_instance() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let log = d.path().join("log");
        // A stand-in duet: `run` makes an instance with an initrd.cpio and
        // says it kept it; `rm` is logged.
        let inst = root.join("instances/busybox-x1");
        let duet = script(
            d.path(),
            "duet",
            &format!(
                "echo \"$*\" >> {log}\ncase \"$1\" in\n run) mkdir -p {inst} && printf 'initrd' > {inst}/initrd.cpio \
                 && echo 'duet: kept instance busybox-x1' >&2 ;;\n rm) rm -rf {inst} ;;\nesac",
                log = log.display(),
                inst = inst.display()
            ),
        );
        let dest = d.path().join("copy.cpio");
        let k = keep_initrd(&duet, &root, 128, "busybox", &["true"], &dest).unwrap();
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(k.bytes, 6);
        assert_eq!(k.instance, "busybox-x1");
        assert_eq!(std::fs::read(&dest).unwrap(), b"initrd");
        assert!(
            calls.contains("run --isolation vm --network none --keep --memory 128 busybox -- true"),
            "{calls}"
        );
        assert!(calls.contains("rm busybox-x1"), "{calls}");
        assert!(!inst.exists());
    }
}
