//! Peer runtimes that take an OCI bundle (`runc`, `crun`): detection with the
//! reason a peer cannot run here, a busybox rootfs, the bundle's config.json,
//! and runners for startup ([`OciStarter`]) and idle instances ([`OciIdle`]).
//!
//! VM peers (QEMU microvm on the same kernel and initramfs) are not here yet:
//! they need duet's kernel and initramfs, which come with the VM backend.

use crate::host::CgroupLayout;
use crate::instances::{IdleInstance, IdleLauncher, LaunchError};
use crate::startup::{tail, timed_spawn, StartError, StartSample, Starter};
use crate::Kind;
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Errors building a rootfs or bundle.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A file or directory could not be created.
    #[error("writing {path}")]
    Write {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Write {
        path: path.display().to_string(),
        source,
    }
}

/// Busybox applets linked in the rootfs.
pub const APPLETS: &[&str] = &[
    "sh", "true", "false", "sleep", "echo", "cat", "ls", "ps", "mount", "hostname", "id", "env",
    "printf", "uname",
];

/// Builds a minimal busybox root file system in `dir` from a static busybox
/// (e.g. `/bin/busybox` from Debian's busybox-static).
pub fn make_busybox_rootfs(dir: &Path, busybox: &Path) -> Result<(), OciError> {
    for d in [
        "bin", "sbin", "proc", "dev", "sys", "tmp", "etc", "root", "mnt",
    ] {
        let p = dir.join(d);
        std::fs::create_dir_all(&p).map_err(write_err(&p))?;
    }
    let bb = dir.join("bin/busybox");
    std::fs::copy(busybox, &bb).map_err(write_err(&bb))?;
    for a in APPLETS {
        let link = dir.join("bin").join(a);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(write_err(&link))?;
        }
    }
    let passwd = dir.join("etc/passwd");
    std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/sh\n").map_err(write_err(&passwd))?;
    Ok(())
}

/// What goes into a bundle's config.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSpec {
    /// Absolute path of the root file system.
    pub rootfs: PathBuf,
    /// Process arguments.
    pub args: Vec<String>,
    /// Hostname inside.
    pub hostname: String,
    /// Mount the root read-only (runc spec's default).
    pub readonly_root: bool,
    /// Include runc spec's default deny-all device cgroup rule.
    pub devices_rule: bool,
    /// Extra environment (`KEY=VALUE`).
    pub env: Vec<String>,
}

impl BundleSpec {
    /// `runc spec`'s defaults (minus the terminal) for `args` on `rootfs`.
    pub fn new(rootfs: &Path, args: &[&str]) -> BundleSpec {
        BundleSpec {
            rootfs: rootfs.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            hostname: "duet-peer".to_string(),
            readonly_root: true,
            devices_rule: true,
            env: Vec::new(),
        }
    }
}

/// The OCI runtime-spec config.json for `spec`, modelled on `runc spec`'s
/// default (no terminal: runs are not interactive).
pub fn bundle_config(spec: &BundleSpec) -> serde_json::Value {
    let caps = serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let mut env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    env.extend(spec.env.iter().cloned());
    let mut config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": spec.args,
            "env": env,
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": spec.rootfs, "readonly": spec.readonly_root},
        "hostname": spec.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    });
    // Without the device rule there is no `linux.resources` at all: crun
    // outside the host's cgroups must not be asked for any limit.
    if spec.devices_rule {
        config["linux"]["resources"] =
            serde_json::json!({"devices": [{"allow": false, "access": "rwm"}]});
    }
    config
}

/// Writes `bundle/config.json` for `spec`.
pub fn write_bundle(bundle: &Path, spec: &BundleSpec) -> Result<(), OciError> {
    std::fs::create_dir_all(bundle).map_err(write_err(bundle))?;
    let p = bundle.join("config.json");
    let text = serde_json::to_string_pretty(&bundle_config(spec)).expect("config serializes");
    std::fs::write(&p, text).map_err(write_err(&p))
}

/// How a peer runtime meets the host's cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerCgroups {
    /// As installed: in the host's mount namespace, with the host's cgroups.
    #[default]
    Host,
    /// crun on a v1/v2 hybrid host, which it refuses: every invocation runs
    /// in a private mount namespace with a cgroup2 file system mounted at
    /// /sys/fs/cgroup, with `--cgroup-manager=disabled`, and its bundle has no
    /// `linux.resources`. It runs, but under no cgroup limit at all.
    PrivateNoLimits,
}

/// An OCI runtime found (or not) on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciPeer {
    /// `runc` or `crun`.
    pub name: String,
    /// Path of its binary, if found.
    pub binary: Option<PathBuf>,
    /// First line of `--version`.
    pub version: Option<String>,
    /// Why it cannot run here; `None` if it should.
    pub unavailable: Option<String>,
    /// How it is run with respect to the host's cgroups.
    #[serde(default)]
    pub cgroups: PeerCgroups,
}

impl OciPeer {
    /// Row label: name and version number, and what is left out of its run.
    pub fn label(&self) -> String {
        let base = match &self.version {
            Some(v) => format!("{} {}", self.name, v.split_whitespace().last().unwrap_or(v)),
            None => self.name.clone(),
        };
        match self.cgroups {
            PeerCgroups::Host => base,
            PeerCgroups::PrivateNoLimits => format!("{base}, no cgroup limits"),
        }
    }

    /// A command running this runtime with `args`, the way [`OciPeer::cgroups`] says.
    /// None if it is not installed.
    pub fn command(&self, args: &[&str]) -> Option<Command> {
        let mut c = Command::new(self.binary.as_ref()?);
        if self.cgroups == PeerCgroups::PrivateNoLimits {
            c.arg("--cgroup-manager=disabled");
            // SAFETY: the closure runs in the forked child before execve and
            // makes only raw system calls (async-signal-safe), no allocation.
            unsafe { c.pre_exec(private_cgroup2_namespace) };
        }
        c.args(args);
        Some(c)
    }

    /// The bundle spec this peer runs `args` on `rootfs` with.
    pub fn bundle_spec(&self, rootfs: &Path, args: &[&str]) -> BundleSpec {
        let mut s = BundleSpec::new(rootfs, args);
        s.devices_rule = self.cgroups == PeerCgroups::Host;
        s
    }
}

/// In a forked child: a private mount namespace (nothing propagates back to
/// the host) whose /sys/fs/cgroup is a fresh cgroup2 mount, which is what crun
/// accepts instead of the host's v1/v2 hybrid.
fn private_cgroup2_namespace() -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    // SAFETY: raw system calls with NUL-terminated static strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return fail();
        }
        let none = c"none".as_ptr();
        if libc::mount(
            none,
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return fail();
        }
        if libc::mount(
            none,
            c"/sys/fs/cgroup".as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        ) != 0
        {
            return fail();
        }
    }
    Ok(())
}

/// Finds `name` in `$PATH` (plus the sbin directories root's PATH usually has).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Why `name` cannot run on a host like this one, before trying it: the
/// reasons are the stable facts of ../shared/notes/hosts.md.
pub fn refusal_reason(name: &str, found: bool, root: bool, layout: CgroupLayout) -> Option<String> {
    if !found {
        return Some(format!("{name} is not installed (not in PATH)"));
    }
    if !root {
        return Some(format!(
            "{name} needs root here (rootless mode needs a user-namespace spec)"
        ));
    }
    let _ = layout; // crun's refusal of the hybrid layout is met by PeerCgroups::PrivateNoLimits.
    None
}

/// How `name` meets the host's cgroups: crun refuses a v1/v2 hybrid host
/// ("cgroups in hybrid mode not supported"), so there it runs outside them.
pub fn peer_cgroups(name: &str, layout: CgroupLayout) -> PeerCgroups {
    if name == "crun" && layout == CgroupLayout::Hybrid {
        PeerCgroups::PrivateNoLimits
    } else {
        PeerCgroups::Host
    }
}

/// Detects one OCI runtime.
pub fn detect(name: &str, layout: CgroupLayout) -> OciPeer {
    let binary = which(name);
    let version = binary.as_ref().and_then(|b| {
        let out = Command::new(b).arg("--version").output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(|l| l.trim().to_string())
    });
    OciPeer {
        name: name.to_string(),
        unavailable: refusal_reason(name, binary.is_some(), is_root(), layout),
        binary,
        version,
        cgroups: peer_cgroups(name, layout),
    }
}

/// `runc` and `crun` as found here.
pub fn detect_peers(layout: CgroupLayout) -> Vec<OciPeer> {
    ["runc", "crun"].iter().map(|n| detect(n, layout)).collect()
}

fn container_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-{}-{i}", std::process::id())
}

/// `<runtime> delete -f <id>`, ignoring the outcome (cleanup of a failed run).
fn force_delete(peer: &OciPeer, id: &str) {
    if let Some(mut c) = peer.command(&["delete", "-f", id]) {
        let _ = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `<runtime> run --bundle B <id>` to completion: one timed start.
pub struct OciStarter {
    /// The runtime.
    pub peer: OciPeer,
    /// Bundle directory (config.json inside).
    pub bundle: PathBuf,
}

impl Starter for OciStarter {
    fn label(&self) -> String {
        self.peer.label()
    }

    fn kind(&self) -> Kind {
        Kind::Container
    }

    fn start_once(&mut self, i: usize) -> Result<StartSample, StartError> {
        let id = container_id("duet-bench", i);
        // Absolute: crun resolves a relative bundle path after it has moved.
        let bundle = std::path::absolute(&self.bundle).unwrap_or_else(|_| self.bundle.clone());
        let bundle = bundle.to_string_lossy();
        let mut cmd = self
            .peer
            .command(&["run", "--bundle", &bundle, &id])
            .ok_or_else(|| StartError::Other(format!("{} not installed", self.peer.name)))?;
        let program = self.peer.name.clone();
        let out = timed_spawn(&mut cmd).map_err(|source| StartError::Spawn {
            program: program.clone(),
            source,
        })?;
        if !out.status.success() {
            force_delete(&self.peer, &id);
            return Err(StartError::Exit {
                program,
                status: out.status.to_string(),
                stderr: tail(&out.stderr),
            });
        }
        Ok(StartSample {
            wall_ms: (out.exited_ns - out.spawned_ns) as f64 / 1e6,
            spawn_to_t0_ms: None,
            last_stamp_to_exit_ms: None,
            report: None,
        })
    }
}

/// Starts detached idle containers (`run -d` of a bundle whose process sleeps).
pub struct OciIdle {
    /// The runtime.
    pub peer: OciPeer,
    /// Bundle whose process stays up (e.g. `sleep 1000000`).
    pub bundle: PathBuf,
    /// Container id prefix; ids are `<prefix>-<pid>-<i>`.
    pub prefix: String,
}

/// A detached OCI container; killed and deleted on [`IdleInstance::stop`] or drop.
pub struct OciInstance {
    peer: OciPeer,
    binary: PathBuf,
    id: String,
    pid: u32,
    stopped: bool,
}

impl IdleLauncher for OciIdle {
    fn label(&self) -> String {
        self.peer.label()
    }

    fn kind(&self) -> Kind {
        Kind::Container
    }

    fn start_idle(&mut self, i: usize) -> Result<Box<dyn IdleInstance>, LaunchError> {
        let binary = self
            .peer
            .binary
            .clone()
            .ok_or_else(|| LaunchError::Start(format!("{} not installed", self.peer.name)))?;
        let id = container_id(&self.prefix, i);
        // A detached container inherits runc's stdio: a pipe would stay open
        // for the container's life, so stderr goes to a file read afterwards.
        let err_path = std::env::temp_dir().join(format!("{id}.stderr"));
        let err_file = std::fs::File::create(&err_path)
            .map_err(|e| LaunchError::Start(format!("creating {}: {e}", err_path.display())))?;
        let bundle = std::path::absolute(&self.bundle).unwrap_or_else(|_| self.bundle.clone());
        let status = self
            .peer
            .command(&["run", "-d", "--bundle", &bundle.to_string_lossy(), &id])
            .expect("binary checked above")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file)
            .status();
        let stderr = std::fs::read(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&err_path);
        let status = status
            .map_err(|e| LaunchError::Start(format!("spawning {}: {e}", binary.display())))?;
        if !status.success() {
            force_delete(&self.peer, &id);
            return Err(LaunchError::Start(format!(
                "{} run -d {id}: {}",
                binary.display(),
                tail(&stderr)
            )));
        }
        let state = self
            .peer
            .command(&["state", &id])
            .expect("binary checked above")
            .output()
            .map_err(|e| LaunchError::Start(format!("{} state {id}: {e}", binary.display())))?;
        let pid = serde_json::from_slice::<serde_json::Value>(&state.stdout)
            .ok()
            .and_then(|v| v.get("pid")?.as_u64())
            .filter(|&p| p > 0);
        let Some(pid) = pid else {
            force_delete(&self.peer, &id);
            return Err(LaunchError::Start(format!(
                "{} state {id}: no pid ({})",
                binary.display(),
                tail(&state.stderr)
            )));
        };
        Ok(Box::new(OciInstance {
            peer: self.peer.clone(),
            binary,
            id,
            pid: pid as u32,
            stopped: false,
        }))
    }
}

impl IdleInstance for OciInstance {
    fn root_pids(&self) -> Vec<u32> {
        vec![self.pid]
    }

    fn name(&self) -> String {
        self.id.clone()
    }

    fn stop(&mut self) -> Result<(), LaunchError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if let Some(mut c) = self.peer.command(&["kill", &self.id, "KILL"]) {
            let _ = c
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let out = self
            .peer
            .command(&["delete", "-f", &self.id])
            .expect("a started instance's runtime is installed")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                LaunchError::Stop(format!("{} delete {}: {e}", self.binary.display(), self.id))
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LaunchError::Stop(format!(
                "{} delete -f {}: {}",
                self.binary.display(),
                self.id,
                tail(&out.stderr)
            )))
        }
    }

    fn handle(&self) -> Option<String> {
        Some(self.id.clone())
    }
}

impl Drop for OciInstance {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Startup rows for every OCI peer: runs the available ones on `rootfs`
/// (bundle written under `workdir`) and returns a [`crate::startup::StartupResult::unavailable`]
/// row with the reason for the others.
pub fn peer_startup(
    cfg: &crate::startup::StartupConfig,
    layout: CgroupLayout,
    rootfs: &Path,
    workdir: &Path,
    command: &[&str],
    progress: &mut dyn crate::startup::Progress,
) -> Result<Vec<crate::startup::StartupResult>, OciError> {
    let mut rows = Vec::new();
    for peer in detect_peers(layout) {
        rows.push(match &peer.unavailable {
            Some(why) => {
                crate::startup::StartupResult::unavailable(&peer.label(), Kind::Container, why)
            }
            None => {
                let bundle = workdir.join(format!("peer-bundle-{}", peer.name));
                write_bundle(&bundle, &peer.bundle_spec(rootfs, command))?;
                crate::startup::run(cfg, &mut OciStarter { peer, bundle }, progress)
            }
        });
    }
    Ok(rows)
}

/// Launchers for the peers that can run, and `(label, reason)` for the others.
pub type PeerIdle = (Vec<OciIdle>, Vec<(String, String)>);

/// Idle launchers for the OCI peers that can run here (bundle `sleep 1000000`
/// on `rootfs`, written under `workdir`), and `(label, reason)` for the others.
pub fn peer_idle(
    layout: CgroupLayout,
    rootfs: &Path,
    workdir: &Path,
) -> Result<PeerIdle, OciError> {
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for peer in detect_peers(layout) {
        match &peer.unavailable {
            Some(why) => skipped.push((peer.label(), why.clone())),
            None => {
                let bundle = workdir.join(format!("peer-idle-bundle-{}", peer.name));
                write_bundle(&bundle, &peer.bundle_spec(rootfs, &["sleep", "1000000"]))?;
                ok.push(OciIdle {
                    prefix: format!("duet-bench-{}", peer.name),
                    peer,
                    bundle,
                })
            }
        }
    }
    Ok((ok, skipped))
}

/// Ids of containers `<runtime> list` knows that start with `prefix`.
pub fn list_ids(binary: &Path, prefix: &str) -> Vec<String> {
    let Ok(out) = Command::new(binary).args(["list", "-q"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_reasons() {
        assert!(refusal_reason("runc", false, true, CgroupLayout::V2)
            .unwrap()
            .contains("not installed"));
        assert!(refusal_reason("runc", true, false, CgroupLayout::V2)
            .unwrap()
            .contains("root"));
        // crun on a hybrid host runs outside the host's cgroups instead, and says so.
        assert_eq!(
            refusal_reason("crun", true, true, CgroupLayout::Hybrid),
            None
        );
        assert_eq!(
            peer_cgroups("crun", CgroupLayout::Hybrid),
            PeerCgroups::PrivateNoLimits
        );
        assert_eq!(peer_cgroups("crun", CgroupLayout::V2), PeerCgroups::Host);
        assert_eq!(
            peer_cgroups("runc", CgroupLayout::Hybrid),
            PeerCgroups::Host
        );
        let crun = OciPeer {
            name: "crun".into(),
            binary: None,
            version: Some("crun version 1.8.1".into()),
            unavailable: None,
            cgroups: PeerCgroups::PrivateNoLimits,
        };
        assert_eq!(crun.label(), "crun 1.8.1, no cgroup limits");
        let c = bundle_config(&crun.bundle_spec(Path::new("/r"), &["true"]));
        assert!(c["linux"].get("resources").is_none(), "{c}");
        assert_eq!(refusal_reason("crun", true, true, CgroupLayout::V2), None);
        assert_eq!(
            refusal_reason("runc", true, true, CgroupLayout::Hybrid),
            None
        );
    }

    #[test]
    fn config_follows_spec() {
        let mut s = BundleSpec::new(Path::new("/r"), &["/bin/true"]);
        let c = bundle_config(&s);
        assert_eq!(c["process"]["args"][0], "/bin/true");
        assert_eq!(c["process"]["terminal"], false);
        assert_eq!(c["root"]["path"], "/r");
        assert_eq!(c["linux"]["resources"]["devices"][0]["allow"], false);
        assert_eq!(c["linux"]["namespaces"].as_array().unwrap().len(), 5);
        s.devices_rule = false;
        s.env.push("A=b".into());
        let c = bundle_config(&s);
        assert!(c["linux"].get("resources").is_none());
        assert_eq!(c["process"]["env"][1], "A=b");
    }

    #[test]
    fn busybox_rootfs_has_applets() {
        let bb = Path::new("/bin/busybox");
        if duet_shared::testing::skip_unless_program(
            "busybox_rootfs_has_applets",
            "/bin/busybox",
            "busybox-static",
        ) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        make_busybox_rootfs(d.path(), bb).unwrap();
        let out = Command::new(d.path().join("bin/sh"))
            .args(["-c", "echo ok"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
        // Idempotent.
        make_busybox_rootfs(d.path(), bb).unwrap();
    }

    #[test]
    fn label_uses_version_number() {
        let p = OciPeer {
            name: "runc".into(),
            binary: None,
            version: Some("runc version 1.1.5+ds1".into()),
            unavailable: None,
            cgroups: PeerCgroups::Host,
        };
        assert_eq!(p.label(), "runc 1.1.5+ds1");
    }
}
