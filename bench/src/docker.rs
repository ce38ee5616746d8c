//! A private Docker engine (Debian's `docker.io`), started for one benchmark
//! or test and stopped at the end: its own data root, exec root, pid file,
//! socket and daemon.json, in a mount namespace of its own (`unshare -m`,
//! so its overlay and shm mounts never appear on the host), with no bridge,
//! no iptables, no ip_forward and no masquerading (the host's network and
//! sysctls stay as they are), and its containers' cgroups under a parent of
//! their own that [`Dockerd::stop`] removes.
//!
//! Used by `duet bench startup` for the `docker exec` row and by the tests
//! that run duet as Docker's OCI runtime.

use crate::instances::{IdleInstance, IdleLauncher, LaunchError};
use crate::Kind;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Why the engine could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// A program is missing.
    #[error("{program} not found (apt-get install docker.io)")]
    Missing {
        /// Which.
        program: &'static str,
    },
    /// Not root: dockerd needs it.
    #[error("a private dockerd needs root")]
    NotRoot,
    /// An I/O step failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// dockerd did not answer in time, or a docker command failed.
    #[error("{what}: {detail}")]
    Failed {
        /// What was being done.
        what: String,
        /// dockerd's log tail or the command's stderr.
        detail: String,
    },
}

/// An OCI runtime to register with the engine (`runtimes` in daemon.json).
#[derive(Debug, Clone)]
pub struct RuntimeEntry {
    /// Name for `docker run --runtime NAME`.
    pub name: String,
    /// The runtime binary.
    pub path: PathBuf,
    /// Arguments dockerd puts before the runtime's subcommand.
    pub args: Vec<String>,
}

/// A running private dockerd; stopped (and its directory removed) on drop.
pub struct Dockerd {
    dir: PathBuf,
    pid: i32,
    cgroup_parent: String,
    stopped: bool,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DockerError {
    let what = what.into();
    move |source| DockerError::Io { what, source }
}

/// Why no private dockerd can run here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(DockerError::NotRoot.to_string());
    }
    for program in ["dockerd", "docker", "containerd", "unshare"] {
        if crate::oci::which(program).is_none() {
            return Some(format!("{program} not found (apt-get install docker.io)"));
        }
    }
    None
}

impl Dockerd {
    /// Starts dockerd with `runtimes` registered; returns once it answers.
    /// The directory is short-named below /tmp (containerd's socket path
    /// inside the exec root must fit a sockaddr_un).
    pub fn start(runtimes: &[RuntimeEntry]) -> Result<Dockerd, DockerError> {
        if let Some(why) = unavailable() {
            return Err(DockerError::Failed {
                what: "starting a private dockerd".into(),
                detail: why,
            });
        }
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let dir = PathBuf::from(format!("/tmp/duet-dockerd-{tag}"));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut rt = serde_json::Map::new();
        for r in runtimes {
            rt.insert(
                r.name.clone(),
                serde_json::json!({ "path": r.path, "runtimeArgs": r.args }),
            );
        }
        let cgroup_parent = format!("duet-test-docker-{tag}");
        let config = serde_json::json!({
            "runtimes": rt,
            "cgroup-parent": format!("/{cgroup_parent}"),
        });
        let cfg_path = dir.join("daemon.json");
        std::fs::write(&cfg_path, config.to_string())
            .map_err(io_err(format!("writing {}", cfg_path.display())))?;
        let log = std::fs::File::create(dir.join("dockerd.log"))
            .map_err(io_err("creating dockerd.log"))?;
        let d = |p: &str| dir.join(p).display().to_string();
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "dockerd"])
            .args(["--data-root", &d("data"), "--exec-root", &d("exec")])
            .args([
                "--pidfile",
                &d("dockerd.pid"),
                "--config-file",
                &d("daemon.json"),
            ])
            .arg(format!("--host=unix://{}", d("docker.sock")))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .args([
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_err("dup of dockerd.log"))?)
            .stderr(log)
            // Its own process group: a Ctrl-C of the bench is for the bench.
            .process_group(0);
        let child = cmd.spawn().map_err(io_err("spawning unshare -m dockerd"))?;
        let mut engine = Dockerd {
            dir,
            pid: child.id() as i32,
            cgroup_parent,
            stopped: false,
        };
        // unshare execs dockerd: the child is dockerd itself, reaped in stop.
        drop(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = engine
                .cmd(&["version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(engine);
            }
            if Instant::now() > deadline || !alive(engine.pid) {
                let detail = engine.log_tail();
                engine.stop();
                return Err(DockerError::Failed {
                    what: "a private dockerd did not start".into(),
                    detail,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's version (e.g. `20.10.24+dfsg1`).
    pub fn version(&self) -> String {
        self.cmd(&["version", "--format", "{{.Server.Version}}"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// `-H unix://SOCKET`: the client flag that picks this engine.
    pub fn host_flag(&self) -> String {
        format!("--host=unix://{}", self.socket().display())
    }

    /// `docker ARGS` against this engine.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.dir.join("client"))
            .args(args);
        c
    }

    /// The engine's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// dockerd's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The last lines of dockerd's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `docker import` of a root file system directory as `name`.
    pub fn import_rootfs(&self, rootfs: &Path, name: &str) -> Result<(), DockerError> {
        self.import_rootfs_with(rootfs, name, &[])
    }

    /// `docker import --change C...` (Dockerfile lines such as `ENV A=1`).
    pub fn import_rootfs_with(
        &self,
        rootfs: &Path,
        name: &str,
        changes: &[&str],
    ) -> Result<(), DockerError> {
        let what = format!("docker import of {} as {name}", rootfs.display());
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(io_err(format!("{what}: spawning tar")))?;
        let mut args = vec!["import"];
        for c in changes {
            args.extend(["--change", c]);
        }
        args.extend(["-", name]);
        let out = self
            .cmd(&args)
            .stdin(tar.stdout.take().expect("piped"))
            .output()
            .map_err(io_err(format!("{what}: spawning docker")))?;
        let _ = tar.wait();
        if !out.status.success() {
            return Err(DockerError::Failed {
                what,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Removes every container, stops dockerd (TERM, then KILL after 20 s),
    /// and removes its directory and its containers' cgroup parent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if alive(self.pid) {
            if let Ok(o) = self.cmd(&["ps", "-aq"]).stderr(Stdio::null()).output() {
                let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids.iter().map(String::as_str));
                    let _ = self
                        .cmd(&args)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
            // SAFETY: signals the dockerd this value started (our child, not yet reaped).
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid || r < 0 {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: as above; then a blocking reap of the same child.
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                    libc::waitpid(self.pid, &mut status, 0);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_own_shims(&self.dir);
        remove_cgroup_parent(&self.cgroup_parent);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0): it has ended once /proc says Z.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    matches!(state, Some(s) if s != "Z")
}

/// Shims outlive their containerd by design; one whose container could not
/// be removed (a failed test, a runtime error) would stay: end those of
/// the engine whose state lives in `dir` (their command line names it),
/// and only those. Also used by the CRI test's private containerd.
pub fn kill_own_shims(dir: &Path) {
    let me = dir.display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("containerd-shim") && cmd.contains(&me) {
            // SAFETY: kill(2) of a shim of the engine this value started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes `/sys/fs/cgroup/**/NAME` (v1 hierarchies and the v2 one), with
/// whatever empty children docker left in it.
pub fn remove_cgroup_parent(name: &str) {
    let mut dirs = vec![PathBuf::from("/sys/fs/cgroup").join(name)];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        dirs.extend(rd.flatten().map(|e| e.path().join(name)));
    }
    for d in dirs.into_iter().filter(|d| d.is_dir()) {
        remove_tree(&d);
    }
}

fn remove_tree(d: &Path) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(d);
}

/// Idle `docker run -d --network none IMAGE sleep 1000000` containers of
/// one engine (for the `docker exec` row).
pub struct DockerIdle {
    /// The engine.
    pub engine: Rc<Dockerd>,
    /// Image (imported with [`Dockerd::import_rootfs`]).
    pub image: String,
    /// `--runtime NAME`, or the engine's default (runc).
    pub runtime: Option<String>,
    /// Row label.
    pub label: String,
}

/// One idle docker container.
pub struct DockerInstance {
    engine: Rc<Dockerd>,
    id: String,
    pid: u32,
    removed: bool,
}

impl IdleLauncher for DockerIdle {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn kind(&self) -> Kind {
        Kind::Container
    }

    fn start_idle(&mut self, _i: usize) -> Result<Box<dyn IdleInstance>, LaunchError> {
        let mut args = vec!["run", "-d", "--network", "none"];
        if let Some(r) = &self.runtime {
            args.extend(["--runtime", r]);
        }
        args.extend([self.image.as_str(), "sleep", "1000000"]);
        let out = self
            .engine
            .cmd(&args)
            .output()
            .map_err(|e| LaunchError::Start(format!("docker run -d: {e}")))?;
        if !out.status.success() {
            return Err(LaunchError::Start(format!(
                "docker run -d: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let pid = self
            .engine
            .cmd(&["inspect", "--format", "{{.State.Pid}}", &id])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0);
        Ok(Box::new(DockerInstance {
            engine: Rc::clone(&self.engine),
            id,
            pid,
            removed: false,
        }))
    }
}

impl IdleInstance for DockerInstance {
    fn root_pids(&self) -> Vec<u32> {
        vec![self.pid]
    }

    fn name(&self) -> String {
        format!("docker container {}", &self.id[..self.id.len().min(12)])
    }

    fn stop(&mut self) -> Result<(), LaunchError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let out = self
            .engine
            .cmd(&["rm", "-f", &self.id])
            .output()
            .map_err(|e| LaunchError::Stop(format!("docker rm -f: {e}")))?;
        if !out.status.success() {
            return Err(LaunchError::Stop(format!(
                "docker rm -f {}: {}",
                self.id,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn handle(&self) -> Option<String> {
        Some(self.id.clone())
    }
}

impl Drop for DockerInstance {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// `docker run --rm --network none --runtime R IMAGE true`, timed from the
/// client's spawn to its exit: what a Docker user waits for per container,
/// with the engine's OCI runtime picked by name (runc or duet).
pub struct DockerRunStarter {
    /// The engine.
    pub engine: Rc<Dockerd>,
    /// Image (imported with [`Dockerd::import_rootfs`]).
    pub image: String,
    /// `--runtime NAME`.
    pub runtime: String,
    /// Row label.
    pub label: String,
    /// Container, or VM for a runtime that boots a microVM (`duet-vm`).
    pub kind: Kind,
}

impl crate::startup::Starter for DockerRunStarter {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn kind(&self) -> Kind {
        self.kind
    }

    fn start_once(
        &mut self,
        _i: usize,
    ) -> Result<crate::startup::StartSample, crate::startup::StartError> {
        let mut cmd = self.engine.cmd(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--runtime",
            &self.runtime,
            &self.image,
            "true",
        ]);
        let out =
            crate::startup::timed_ok(&mut cmd, &format!("docker run --runtime {}", self.runtime))?;
        Ok(crate::startup::StartSample::wall(&out))
    }
}
