//! duet as an OCI runtime: the command line dockerd and containerd's
//! `io.containerd.runc.v2` shim speak to runc, when the binary is started
//! as `duet-runc` (a symlink to `duet`; `scripts/install.sh` makes one).
//!
//! `duet-runc [--root DIR] [--log F] [--log-format text|json]
//! [--isolation container|vm] COMMAND ...` with the commands of the OCI
//! runtime command line (create, start, state, kill, delete) and runc's
//! (exec, update, ps, list, features, pause/resume). Argument structs come from
//! `liboci-cli` (youki's), the config from `oci-spec`; the container work
//! is in `duet_container::oci*`.
//!
//! Isolation: `--isolation` (dockerd's `runtimeArgs`), else `vm` when
//! started as `duet-runc-vm` (containerd's `BinaryName`), else the
//! bundle's annotation `io.duet.isolation`; default container. With vm the
//! bundle runs in a microVM ([`vm`]).

mod exec;
mod state;
mod vm;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use duet_container::oci_runtime::{self, CreateRequest, OciRunError};
use oci_spec::runtime::Spec;
use state::{Dir, Record};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The annotation that picks the isolation per container.
pub const ISOLATION_ANNOTATION: &str = "io.duet.isolation";

/// Default `--root`.
const DEFAULT_ROOT: &str = "/run/duet-runc";

#[derive(Parser, Debug)]
#[command(
    name = "duet-runc",
    version,
    about = "duet as an OCI runtime (runc's command line)"
)]
struct Cli {
    #[command(flatten)]
    global: liboci_cli::GlobalOpts,
    /// container (namespaces on the host kernel) or vm (a microVM).
    #[arg(long, global = true)]
    isolation: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    #[command(flatten)]
    Standard(liboci_cli::StandardCmd),
    #[command(flatten)]
    Common(Box<liboci_cli::CommonCmd>),
    /// The process a VM container's pid file names (started by create).
    #[command(name = "__vm-keeper", hide = true)]
    VmKeeper {
        /// Container id.
        id: String,
    },
    /// Relays one exec into a VM container through its guest agent.
    #[command(name = "__vm-exec", hide = true)]
    VmExec {
        /// Container id.
        id: String,
        /// The file holding the request (JSON), removed once read.
        request: PathBuf,
    },
}

/// Where errors go: stderr, and `--log` in the format asked.
struct Log {
    file: Option<PathBuf>,
    json: bool,
}

impl Log {
    fn error(&self, msg: &str) {
        eprintln!("duet-runc: {msg}");
        let Some(p) = &self.file else { return };
        let line = if self.json {
            serde_json::json!({"level": "error", "msg": msg, "time": state::now_rfc3339()})
                .to_string()
        } else {
            format!("time=\"{}\" level=error msg={msg:?}", state::now_rfc3339())
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Whether this process was started as the OCI runtime.
pub fn invoked_as_runtime() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .is_some_and(|n| n.starts_with("duet-runc"))
}

/// `vm` when started as `duet-runc-vm` (a symlink for containerd's
/// `BinaryName`, which cannot pass `--isolation vm`).
fn argv0_isolation() -> Option<&'static str> {
    let a = std::env::args_os().next()?;
    let name = Path::new(&a).file_name()?.to_string_lossy().into_owned();
    (name == "duet-runc-vm").then_some("vm")
}

/// The OCI runtime's main.
pub fn main() -> ExitCode {
    let cli: Cli = match crate::parse_args(2) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let log = Log {
        file: cli.global.log.clone(),
        json: cli.global.log_format.as_deref() == Some("json"),
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            log.error(&crate::cmd::error_chain(&e));
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    if cli.global.systemd_cgroup {
        bail!("--systemd-cgroup: duet manages cgroups through cgroupfs only (configure the engine's cgroup driver as cgroupfs)");
    }
    if let Some(f) = cli.global.log_format.as_deref() {
        if f != "json" && f != "text" {
            bail!("--log-format `{f}`: use text or json");
        }
    }
    let root = cli
        .global
        .root
        .clone()
        .unwrap_or_else(|| DEFAULT_ROOT.into());
    use liboci_cli::StandardCmd as S;
    match cli.command {
        Cmd::Standard(S::Create(a)) => {
            let isolation = cli.isolation.as_deref().or(argv0_isolation());
            create(&root, isolation, &a)
        }
        Cmd::Standard(S::Start(a)) => start(&root, &a.container_id),
        Cmd::Standard(S::State(a)) => {
            let dir = Dir::of(&root, &a.container_id)?;
            let r = dir.load(&a.container_id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&state::state_json(&dir, &r))?
            );
            Ok(0)
        }
        Cmd::Standard(S::Kill(a)) => kill(&root, &a.container_id, &a.signal, a.all),
        Cmd::Standard(S::Delete(a)) => delete(&root, &a.container_id, a.force),
        Cmd::Common(c) => common(&root, *c),
        Cmd::VmKeeper { id } => vm::keeper(&root, &id),
        Cmd::VmExec { id, request } => vm::exec_relay(&root, &id, &request),
    }
}

fn common(root: &Path, c: liboci_cli::CommonCmd) -> Result<u8> {
    use liboci_cli::CommonCmd as C;
    let root = root.to_path_buf();
    match c {
        C::Features(_) => {
            println!("{}", serde_json::to_string_pretty(&features())?);
            Ok(0)
        }
        C::Ps(a) => {
            let dir = Dir::of(&root, &a.container_id)?;
            let r = dir.load(&a.container_id)?;
            if a.format != "json" {
                bail!("ps --format {}: duet prints json only", a.format);
            }
            println!("{}", serde_json::to_string(&r.cgroup.pids())?);
            Ok(0)
        }
        C::List(_) => {
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if let Ok(dir) = Dir::of(&root, &id) {
                    if let Ok(r) = dir.load(&id) {
                        println!("{id}\t{}\t{}", r.pid, state::status(&dir, &r));
                    }
                }
            }
            Ok(0)
        }
        C::Exec(a) => exec::exec(&root, &a),
        C::Update(a) => update(&root, &a),
        C::Pause(a) => pause(&root, &a.container_id, true),
        C::Resume(a) => pause(&root, &a.container_id, false),
        other => bail!("{}: not supported by duet", command_name(&other)),
    }
}

fn command_name(c: &liboci_cli::CommonCmd) -> &'static str {
    use liboci_cli::CommonCmd as C;
    match c {
        C::Checkpointt(_) => "checkpoint",
        C::Events(_) => "events",
        C::Exec(_) => "exec",
        C::Features(_) => "features",
        C::List(_) => "list",
        C::Pause(_) => "pause",
        C::Ps(_) => "ps",
        C::Resume(_) => "resume",
        C::Run(_) => "run",
        C::Update(_) => "update",
        C::Spec(_) => "spec",
    }
}

/// `features`: what this runtime honours (runtime-spec features.md).
fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync",
            "async", "dirsync", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime",
            "relatime", "norelatime", "strictatime", "nostrictatime", "silent", "loud", "bind",
            "rbind", "private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable",
            "runbindable"],
        "linux": {
            "namespaces": ["mount", "pid", "network", "ipc", "uts", "cgroup"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {"io.duet.isolation": "container|vm"}
    })
}

fn load_spec(bundle: &Path) -> Result<Spec> {
    let p = bundle.join("config.json");
    Spec::load(&p).with_context(|| format!("bundle {}: config.json", bundle.display()))
}

/// Runs the hooks of `kind` with the state on stdin (runtime-spec config.md#posix-platform-hooks).
fn run_hooks(spec: &Spec, kind: &'static str, state: &state::StateJson) -> Result<(), OciRunError> {
    let Some(hooks) = spec.hooks().as_ref() else {
        return Ok(());
    };
    let list = match kind {
        "prestart" => hooks.prestart(),
        "createRuntime" => hooks.create_runtime(),
        "poststart" => hooks.poststart(),
        "poststop" => hooks.poststop(),
        _ => &None,
    };
    let input = serde_json::to_vec(state).unwrap_or_default();
    for (index, h) in list.iter().flatten().enumerate() {
        let path = h.path().display().to_string();
        let fail = |why: String| OciRunError::Hook {
            kind,
            index,
            path: path.clone(),
            why,
        };
        let mut cmd = std::process::Command::new(h.path());
        if let Some(args) = h.args() {
            if let Some((first, rest)) = args.split_first() {
                use std::os::unix::process::CommandExt;
                cmd.arg0(first).args(rest);
            }
        }
        cmd.env_clear();
        for kv in h.env().iter().flatten() {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input);
        }
        // Read in a thread: a hook that writes much to stderr must not block on a full pipe.
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut e, &mut s);
                s
            })
        });
        let deadline = h
            .timeout()
            .map(|t| Instant::now() + Duration::from_secs(t.max(1) as u64));
        // A hook is on create's critical path: woken by its pidfd, not a poll interval.
        match duet_shared::child_wait::wait_until(&mut child, deadline) {
            Err(e) => return Err(fail(e.to_string())),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "timed out after {}s",
                    h.timeout().unwrap_or(0)
                )));
            }
            Ok(Some(status)) if !status.success() => {
                let err = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
                return Err(fail(format!("{status}: {}", err.trim())));
            }
            Ok(Some(_)) => {}
        }
    }
    Ok(())
}

fn create(root: &Path, isolation: Option<&str>, a: &liboci_cli::Create) -> Result<u8> {
    let bundle = a
        .bundle
        .canonicalize()
        .with_context(|| format!("bundle {}", a.bundle.display()))?;
    let spec = load_spec(&bundle)?;
    let annotations: std::collections::BTreeMap<String, String> = spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let isolation = isolation
        .map(str::to_string)
        .or_else(|| annotations.get(ISOLATION_ANNOTATION).cloned())
        .unwrap_or_else(|| "container".into());
    match isolation.as_str() {
        "container" | "vm" => {}
        other => bail!("isolation `{other}` (--isolation or annotation {ISOLATION_ANNOTATION}): use container or vm"),
    }
    if a.preserve_fds > 0 {
        bail!("--preserve-fds {}: not supported by duet", a.preserve_fds);
    }
    let dir = Dir::of(root, &a.container_id)?;
    std::fs::create_dir_all(root).with_context(|| format!("--root {}", root.display()))?;
    match std::fs::create_dir(&dir.path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("container with id \"{}\" already exists", a.container_id)
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.path.display())),
    }
    let made = if isolation == "vm" {
        vm::create(root, &dir, &bundle, &spec, annotations, a)
    } else {
        create_in(&dir, &bundle, &spec, annotations, a)
    };
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&dir.path);
    }
    made
}

fn create_in(
    dir: &Dir,
    bundle: &Path,
    spec: &Spec,
    annotations: std::collections::BTreeMap<String, String>,
    a: &liboci_cli::Create,
) -> Result<u8> {
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => {
            let c = compile_seccomp(s)?;
            Some(std::sync::Arc::new(c))
        }
        None => None,
    };
    let rootfs = spec
        .root()
        .as_ref()
        .map(|r| bundle.join(r.path()))
        .unwrap_or_default();
    let created = state::now_rfc3339();
    let hook_state = |pid: i32| state::StateJson {
        oci_version: state::OCI_VERSION.into(),
        id: a.container_id.clone(),
        status: "creating".into(),
        pid,
        bundle: bundle.to_path_buf(),
        rootfs: rootfs.clone(),
        created: created.clone(),
        annotations: annotations.clone(),
    };
    let hooks = |kind: &'static str, pid: i32| run_hooks(spec, kind, &hook_state(pid));
    let fifo = dir.fifo();
    let c = oci_runtime::create(&CreateRequest {
        id: &a.container_id,
        bundle,
        spec,
        fifo: &fifo,
        console_socket: a.console_socket.as_deref(),
        hooks: &hooks,
        seccomp,
        timeout: Duration::from_secs(60),
        new_keyring: !a.no_new_keyring,
    })?;
    let record = Record {
        id: a.container_id.clone(),
        pid: c.pid,
        pid_start: duet_shared::instance::process_start_time(c.pid),
        bundle: bundle.to_path_buf(),
        rootfs,
        annotations,
        created,
        cgroup: c.cgroup,
        isolation: "container".into(),
        no_new_keyring: a.no_new_keyring,
    };
    let saved = dir.save(&record).and_then(|()| match &a.pid_file {
        Some(p) => write_pid_file(p, c.pid),
        None => Ok(()),
    });
    if let Err(e) = saved {
        kill_all(&record, libc::SIGKILL);
        let _ = record.cgroup.destroy();
        return Err(e);
    }
    Ok(0)
}

/// Writes the pid file atomically (containerd reads it as soon as it exists).
fn write_pid_file(p: &Path, pid: i32) -> Result<()> {
    let tmp = p.with_extension("duet-tmp");
    std::fs::write(&tmp, pid.to_string()).with_context(|| format!("--pid-file {}", p.display()))?;
    std::fs::rename(&tmp, p).with_context(|| format!("--pid-file {}", p.display()))
}

fn start(root: &Path, id: &str) -> Result<u8> {
    let dir = Dir::of(root, id)?;
    let r = dir.load(id)?;
    match state::status(&dir, &r) {
        "created" => {}
        s => bail!("cannot start container \"{id}\": it is {s}, not created"),
    }
    let fifo = dir.fifo();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(&fifo)
        .with_context(|| format!("opening {}", fifo.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = false;
    while Instant::now() < deadline {
        let mut b = [0u8; 1];
        // SAFETY: read into a local byte from the fifo we opened.
        let n = unsafe { libc::read(f.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            got = true;
            break;
        }
        if !state::alive(&r) {
            break;
        }
        let mut p = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        unsafe { libc::poll(&mut p, 1, 20) };
    }
    let _ = std::fs::remove_file(&fifo);
    if !got {
        bail!("cannot start container \"{id}\": its init is gone");
    }
    let spec = load_spec(&r.bundle).ok();
    if let Some(spec) = spec {
        let st = state::state_json(&dir, &r);
        // poststart failures are logged, not fatal (runtime-spec).
        if let Err(e) = run_hooks(&spec, "poststart", &st) {
            eprintln!("duet-runc: {e}");
        }
    }
    Ok(0)
}

/// `update`: new resource limits, from `--resources FILE` (`-`: stdin; a
/// `linux.resources` object) or runc's flags.
fn update(root: &Path, a: &liboci_cli::Update) -> Result<u8> {
    for (set, flag) in [
        (a.blkio_weight.is_some(), "--blkio-weight"),
        (a.cpu_rt_period.is_some(), "--cpu-rt-period"),
        (a.cpu_rt_runtime.is_some(), "--cpu-rt-runtime"),
        (a.l3_cache_schema.is_some(), "--l3-cache-schema"),
        (a.mem_bw_schema.is_some(), "--mem-bw-schema"),
    ] {
        if set && a.resources.is_none() {
            bail!("update {flag}: not supported by duet");
        }
    }
    let dir = Dir::of(root, &a.container_id)?;
    let r = dir.load(&a.container_id)?;
    if state::status(&dir, &r) == "stopped" {
        bail!(
            "cannot update container \"{}\": it is stopped",
            a.container_id
        );
    }
    let resources: oci_spec::runtime::LinuxResources = match &a.resources {
        Some(p) => {
            let text = if p.as_os_str() == "-" {
                let mut t = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut t)?;
                t
            } else {
                std::fs::read(p).with_context(|| format!("--resources {}", p.display()))?
            };
            serde_json::from_slice(&text).with_context(|| {
                format!("--resources {}: not a linux.resources object", p.display())
            })?
        }
        None => {
            let mut v = serde_json::json!({});
            let mut set = |section: &str, key: &str, value: serde_json::Value| {
                v[section][key] = value;
            };
            if let Some(m) = a.memory {
                set("memory", "limit", m.into());
            }
            if let Some(m) = a.memory_reservation {
                set("memory", "reservation", m.into());
            }
            if let Some(m) = a.memory_swap {
                set("memory", "swap", m.into());
            }
            if let Some(c) = a.cpu_share {
                set("cpu", "shares", c.into());
            }
            if let Some(c) = a.cpu_quota {
                set("cpu", "quota", c.into());
            }
            if let Some(c) = a.cpu_period {
                set("cpu", "period", c.into());
            }
            if let Some(c) = &a.cpuset_cpus {
                set("cpu", "cpus", c.clone().into());
            }
            if let Some(c) = &a.cpuset_mems {
                set("cpu", "mems", c.clone().into());
            }
            if let Some(p) = a.pids_limit {
                set("pids", "limit", p.into());
            }
            serde_json::from_value(v)?
        }
    };
    r.cgroup
        .update(&resources)
        .with_context(|| format!("updating container \"{}\"", a.container_id))?;
    Ok(0)
}

/// `pause` (freeze every process of the container) or `resume`.
fn pause(root: &Path, id: &str, freeze: bool) -> Result<u8> {
    let dir = Dir::of(root, id)?;
    let r = dir.load(id)?;
    match (state::status(&dir, &r), freeze) {
        ("running", true) | ("paused", false) => {}
        (s, true) => bail!("cannot pause container \"{id}\": it is {s}, not running"),
        (s, false) => bail!("cannot resume container \"{id}\": it is {s}, not paused"),
    }
    r.cgroup
        .freeze(freeze)
        .with_context(|| format!("container \"{id}\": the cgroup freezer"))?;
    Ok(0)
}

/// Signals the init, or (`all`) every process in its cgroup.
fn kill_all(r: &Record, sig: i32) {
    for pid in r.cgroup.pids() {
        // SAFETY: kill(2) with a pid read from the container's own cgroup.
        unsafe { libc::kill(pid, sig) };
    }
}

fn signal_init(r: &Record, sig: i32) -> Result<()> {
    // SAFETY: pidfd_open with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, r.pid, 0) };
    if fd < 0 {
        // runc's words: containerd's shim treats "container not running" as
        // "already exited", which a kill racing the exit is.
        bail!(
            "cannot signal container \"{}\": container not running",
            r.id
        );
    }
    // SAFETY: the pidfd is new and ours.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // The pidfd was opened before this check: if the start time matches, it is the init.
    if !state::alive(r) {
        // runc's words: containerd's shim treats "container not running" as
        // "already exited", which a kill racing the exit is.
        bail!(
            "cannot signal container \"{}\": container not running",
            r.id
        );
    }
    // SAFETY: pidfd_send_signal on our pidfd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context(format!("signalling container \"{}\"", r.id));
    }
    Ok(())
}

fn kill(root: &Path, id: &str, signal: &str, all: bool) -> Result<u8> {
    let sig = crate::cmd::lifecycle::parse_signal(signal).map_err(anyhow::Error::msg)?;
    let dir = Dir::of(root, id)?;
    let r = dir.load(id)?;
    if r.isolation == "vm" {
        // The workload is inside the guest: --all reaches it the same way.
        vm::kill(&dir, &r, sig)?;
        return Ok(0);
    }
    if all {
        kill_all(&r, sig);
        return Ok(0);
    }
    signal_init(&r, sig)?;
    Ok(0)
}

fn delete(root: &Path, id: &str, force: bool) -> Result<u8> {
    let dir = Dir::of(root, id)?;
    let r = match dir.load(id) {
        Ok(r) => r,
        // A directory left without a record (a crash between mkdir and save).
        Err(e) if dir.path.is_dir() && !dir.path.join("state.json").exists() => {
            let _ = e;
            std::fs::remove_dir_all(&dir.path)?;
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    let status = state::status(&dir, &r);
    if status != "stopped" {
        if !force {
            bail!("cannot delete container \"{id}\" that is not stopped: {status}");
        }
        kill_all(&r, libc::SIGKILL);
        let _ = signal_init(&r, libc::SIGKILL);
        // A frozen (v1) process takes the kill only once thawed.
        if r.cgroup.frozen() {
            let _ = r.cgroup.freeze(false);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while state::alive(&r) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    r.cgroup
        .clone()
        .destroy()
        .with_context(|| format!("removing the cgroups of container \"{id}\""))?;
    if r.isolation == "vm" {
        vm::remove_sockets(&dir);
    }
    if let Ok(spec) = load_spec(&r.bundle) {
        let mut st = state::state_json(&dir, &r);
        st.status = "stopped".into();
        if let Err(e) = run_hooks(&spec, "poststop", &st) {
            eprintln!("duet-runc: {e}");
        }
    }
    std::fs::remove_dir_all(&dir.path)
        .with_context(|| format!("removing {}", dir.path.display()))?;
    Ok(0)
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// `linux.seccomp` as the init's seccomp programs; what cannot be applied is logged.
fn compile_seccomp(
    s: &oci_spec::runtime::LinuxSeccomp,
) -> Result<duet_container::seccomp::SeccompPrograms> {
    let f = duet_container::oci_seccomp::translate(s).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Names this x86_64 table does not know (other architectures' calls)
    // are skipped, as libseccomp does, without a word: engines put stderr
    // of a successful create into their error paths.
    Ok(f.programs)
}
