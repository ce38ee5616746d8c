//! The per-instance monitor of a detached instance (`duet run -d`), as
//! conmon or a containerd shim: one small process per instance, the same
//! for both isolations, that owns the workload once the CLI has returned.
//!
//! `duet run -d` makes the instance directory, writes `spec.json` and
//! `launch.json`, and starts `duet __monitor ID` in a session of its own
//! with a pipe on fd 3. The monitor puts pipes on its fds 1 and 2 (the
//! container's init and the VMM inherit them), creates and starts the
//! instance through the [`Runtime`](duet_shared::Runtime) lifecycle, writes
//! `ok` (or the error) on fd 3 and closes it, and from then on:
//! - relays the workload's output into the bounded log ([`log`]);
//! - waits for the end on the instance's exit fd (a pidfd for containers):
//!   an exit cannot be missed, as it can with a SIGCHLD loop;
//! - records status, pid, exit and the timeline (`report.json`) in the
//!   instance directory;
//! - restarts it as `--restart` says, with a doubling back-off;
//! - answers `duet stop/kill/wait` on `monitor.sock` ([`control`]).
//!
//! It dies with its workload and takes it along: the init has
//! PR_SET_PDEATHSIG(SIGKILL) towards the monitor, the VMM too, so `kill -9`
//! of a monitor leaves nothing running, and `duet gc` removes the rest.

pub mod control;
pub mod log;

use crate::backends;
use anyhow::{anyhow, bail, Context, Result};
use control::{Request, Response};
use duet_shared::image::ImageStore;
use duet_shared::instance::{process_start_time, unix_ms, Status};
use duet_shared::paths::state_root;
use duet_shared::{
    Instance, InstanceDir, Isolation, Launch, RunOptions, RunReport, Runtime, WorkloadExit,
};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

/// What `launch.json` tells the monitor beyond the spec.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DetachedLaunch {
    /// `--timeout` in seconds.
    pub timeout_secs: Option<f64>,
    /// `--console` (VM).
    pub console: bool,
    /// `--cgroup-parent`.
    pub cgroup_parent: Option<PathBuf>,
    /// `--restart`.
    pub restart: RestartPolicy,
    /// `--rm`: remove the instance when it has ended for good.
    pub remove: bool,
    /// `-t`: the workload gets a pty (its output still goes to the log).
    #[serde(default)]
    pub tty: bool,
    /// `--from-snapshot` (VM).
    #[serde(default)]
    pub from_snapshot: Option<PathBuf>,
    /// VM: a warm start from the image's template (`--warm`).
    #[serde(default)]
    pub warm: bool,
}

/// `--restart no|on-failure[:N]|always`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Never (the default).
    #[default]
    No,
    /// After a non-zero exit, at most `max` times (None: without bound).
    OnFailure {
        /// Most restarts.
        max: Option<u32>,
    },
    /// After every exit, unless stopped with `duet stop`/`kill`.
    Always,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<RestartPolicy, String> {
        match s {
            "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "on-failure" => Ok(RestartPolicy::OnFailure { max: None }),
            _ => match s.strip_prefix("on-failure:") {
                Some(n) => n
                    .parse()
                    .map(|n| RestartPolicy::OnFailure { max: Some(n) })
                    .map_err(|_| {
                        format!("`{s}`: the retry count after `on-failure:` must be a number")
                    }),
                None => Err(format!("`{s}`: use no, on-failure[:N] or always")),
            },
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartPolicy::No => write!(f, "no"),
            RestartPolicy::Always => write!(f, "always"),
            RestartPolicy::OnFailure { max: None } => write!(f, "on-failure"),
            RestartPolicy::OnFailure { max: Some(n) } => write!(f, "on-failure:{n}"),
        }
    }
}

impl RestartPolicy {
    /// Whether an exit after `restarts` restarts is followed by another.
    pub fn restarts_after(self, exit: WorkloadExit, restarts: u32) -> bool {
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure { max } => {
                exit != WorkloadExit::Code(0) && max.is_none_or(|m| restarts < m)
            }
        }
    }
}

/// The launch file in an instance directory.
pub const LAUNCH_FILE: &str = "launch.json";
/// The timeline of the last run in an instance directory.
pub const REPORT_FILE: &str = "report.json";
/// Environment variable naming the monitor's readiness fd.
const READY_FD_ENV: &str = "DUET_MONITOR_READY_FD";
/// The fd the readiness pipe is put on in the monitor.
const READY_FD: RawFd = 3;

/// First restart back-off; it doubles per restart up to [`MAX_BACKOFF`],
/// and starts over once a run lasted [`BACKOFF_RESET`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const BACKOFF_RESET: Duration = Duration::from_secs(10);

/// CLI side: starts the monitor of `dir` and waits until it says the
/// workload runs. Errors carry the monitor's message.
pub fn spawn(dir: &InstanceDir) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe for the monitor");
    }
    // SAFETY: both fds are new and ours.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let exe = std::env::current_exe().context("finding duet's own executable")?;
    let tx_raw = tx.as_raw_fd();
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("__monitor")
        .arg(dir.id())
        .env(READY_FD_ENV, READY_FD.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears FD_CLOEXEC on the copy: the monitor inherits fd 3.
            if libc::dup2(tx_raw, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The monitor stays (reparented to init or the subreaper once duet
    // exits); its status is reaped there.
    let _child = cmd.spawn().context("starting the instance's monitor")?;
    drop(tx);
    let mut answer = String::new();
    let _ = std::fs::File::from(rx).read_to_string(&mut answer);
    let answer = answer.trim();
    if answer == "ok" {
        return Ok(());
    }
    if let Some(msg) = answer.strip_prefix("error: ") {
        bail!("{msg}");
    }
    if let Some(rest) = answer.strip_prefix("exit ") {
        let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
        bail!(ExitedAtStart {
            code: code.parse().unwrap_or(125),
            message: msg.to_string()
        });
    }
    bail!(
        "the monitor of instance `{}` ended before the workload started (see `duet logs {}`)",
        dir.id(),
        dir.id()
    )
}

/// The workload ended at once (e.g. command not found): its status.
#[derive(Debug)]
pub struct ExitedAtStart {
    /// Exit status for the CLI.
    pub code: i32,
    /// What the workload or duet said.
    pub message: String,
}

impl std::fmt::Display for ExitedAtStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (exit status {})", self.message, self.code)
    }
}

impl std::error::Error for ExitedAtStart {}

/// `duet __monitor ID`: the monitor process. Returns its exit status.
pub fn main(id: &str) -> i32 {
    let ready = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
        // SAFETY: the CLI put the pipe on this fd for us alone.
        .map(|fd| unsafe { std::fs::File::from_raw_fd(fd) });
    std::env::remove_var(READY_FD_ENV);
    let mut ready = Ready(ready);
    match run(id, &mut ready) {
        Ok(()) => 0,
        Err(e) => {
            let msg = crate::cmd::error_chain(&e);
            ready.say(&format!("error: {msg}"));
            eprintln!("duet: monitor: {msg}");
            125
        }
    }
}

/// The readiness pipe to the CLI; said once, then closed.
struct Ready(Option<std::fs::File>);

impl Ready {
    fn say(&mut self, what: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "{}", what.replace('\n', " "));
        }
    }
}

/// A pipe with a close-on-exec read end (kept) and an inheritable write end
/// put on `target` (1 or 2) of this process.
fn pipe_onto(target: RawFd) -> Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe for the workload's output");
    }
    // SAFETY: new fds, ours; dup2 onto our own stdio fd.
    unsafe {
        // The write end blocks (a workload must not see EAGAIN).
        libc::fcntl(fds[1], libc::F_SETFL, 0);
        if libc::dup2(fds[1], target) < 0 {
            return Err(std::io::Error::last_os_error()).context("dup2 of the output pipe");
        }
        libc::close(fds[1]);
        Ok(OwnedFd::from_raw_fd(fds[0]))
    }
}

fn run(id: &str, ready: &mut Ready) -> Result<()> {
    let root = state_root();
    let mut dir = InstanceDir::open(&root, id)?;
    let me = std::process::id() as i32;
    dir.update(|m| {
        m.owner_pid = me;
        m.owner_start = process_start_time(me).unwrap_or(0);
    })?;
    let spec = dir.load_spec()?;
    let lp = dir.path().join(LAUNCH_FILE);
    let launch_cfg: DetachedLaunch = serde_json::from_slice(
        &std::fs::read(&lp).with_context(|| format!("reading {}", lp.display()))?,
    )
    .with_context(|| format!("parsing {}", lp.display()))?;
    let store = ImageStore::open(&root)?;
    let image = store.get(&spec.image)?;
    let isolation = spec.isolation.unwrap_or(Isolation::Container);
    let backend = backends::for_isolation(isolation);
    let out = pipe_onto(1)?;
    let err = pipe_onto(2)?;
    let socket = control::socket_path(&dir);
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    listener.set_nonblocking(true)?;
    let options = RunOptions {
        timeout: launch_cfg.timeout_secs.map(Duration::from_secs_f64),
        console: launch_cfg.console,
        explain: false,
        cgroup_parent: launch_cfg.cgroup_parent.clone(),
        tty: launch_cfg.tty,
        from_snapshot: launch_cfg.from_snapshot.clone(),
        warm: launch_cfg.warm,
    };
    let log = Rc::new(RefCell::new(log::LogWriter::open(dir.path())?));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("the monitor's event loop")?;
    let local = tokio::task::LocalSet::new();
    let m = Monitor {
        dir: RefCell::new(dir),
        backend,
        instance: RefCell::new(None),
        stopped: std::cell::Cell::new(false),
        end: tokio::sync::watch::channel(None).0,
        wake: tokio::sync::Notify::new(),
        log,
    };
    let result = local.block_on(&rt, async {
        let m = Rc::new(m);
        tokio::task::spawn_local(serve(listener, m.clone()));
        tokio::task::spawn_local(pump(out, log::Stream::Out, m.log.clone()));
        tokio::task::spawn_local(pump(err, log::Stream::Err, m.log.clone()));
        let r = supervise(&m, &spec, &image, &store, &options, &launch_cfg, ready).await;
        // Let the answers to `wait`/`stop` go out before the monitor ends.
        tokio::time::sleep(Duration::from_millis(30)).await;
        r
    });
    let _ = std::fs::remove_file(&socket);
    let remove = launch_cfg.remove;
    drop(local);
    if remove {
        let dir = InstanceDir::open(&root, id)?;
        dir.remove()?;
    }
    result
}

/// The monitor's state, shared by its tasks (one thread).
struct Monitor {
    dir: RefCell<InstanceDir>,
    backend: Box<dyn Runtime>,
    instance: RefCell<Option<Box<dyn Instance>>>,
    /// `duet stop`/`kill` asked: no more restarts.
    stopped: std::cell::Cell<bool>,
    /// The final exit, once the workload has ended for good.
    end: tokio::sync::watch::Sender<Option<WorkloadExit>>,
    /// Ends a restart back-off early (stop/kill during it).
    wake: tokio::sync::Notify,
    log: Rc<RefCell<log::LogWriter>>,
}

impl Monitor {
    fn record(&self, f: impl FnOnce(&mut duet_shared::instance::InstanceMeta)) {
        if let Err(e) = self.dir.borrow_mut().update(f) {
            eprintln!("duet: monitor: {e}");
        }
    }

    fn kill(&self, signal: i32) -> Result<(), String> {
        match &*self.instance.borrow() {
            Some(i) => i.kill(signal).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// Creates, starts and watches the workload until it has ended for good.
async fn supervise(
    m: &Rc<Monitor>,
    spec: &duet_shared::WorkloadSpec,
    image: &duet_shared::image::Image,
    store: &ImageStore,
    options: &RunOptions,
    cfg: &DetachedLaunch,
    ready: &mut Ready,
) -> Result<()> {
    let mut backoff = FIRST_BACKOFF;
    let mut first = true;
    loop {
        let dir = m.dir.borrow().clone();
        let launch = Launch {
            spec,
            image,
            layers: store.layer_dirs(image),
            instance: &dir,
            options,
            network: None,
        };
        let mut report = RunReport::start(m.backend.isolation(), &spec.name, &spec.image);
        let created = m
            .backend
            .create(&launch, &mut report)
            .and_then(|mut i| i.start(&mut report).map(|()| i));
        let instance = match created {
            Ok(i) => i,
            Err(e) if first => return Err(anyhow!(e)),
            Err(e) => {
                // A restart that cannot create: record it and give up.
                let msg = format!(
                    "duet: restarting failed: {}\n",
                    crate::cmd::error_chain(&anyhow!(e))
                );
                let _ = m.log.borrow_mut().write(log::Stream::Err, msg.as_bytes());
                let exit = WorkloadExit::Code(125);
                m.record(|meta| {
                    meta.state.status = Status::Exited;
                    meta.state.exit = Some(exit);
                    meta.exit_code = Some(exit.shell_code());
                    meta.state.finished_ms = Some(unix_ms());
                });
                m.end.send_replace(Some(exit));
                return Ok(());
            }
        };
        let pid = instance.pid();
        let started = std::time::Instant::now();
        m.record(|meta| {
            meta.state.status = Status::Running;
            meta.state.pid = Some(pid);
            meta.state.pid_start = process_start_time(pid);
            meta.state.started_ms = Some(unix_ms());
        });
        let exit_fd = instance.exit_fd().as_raw_fd();
        *m.instance.borrow_mut() = Some(instance);
        // SAFETY: the fd belongs to the instance in `m.instance`, which
        // outlives `waiter` (dropped before the instance is taken out).
        let waiter = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                Fd(exit_fd),
                tokio::io::Interest::READABLE,
            )?
        };
        if first {
            first = false;
            // A workload that could not even exec (126/127) fails the run here.
            if poll_now(exit_fd) {
                let exit = finish_run(m, &mut report).await;
                if let Some(WorkloadExit::Code(c @ (126 | 127))) = exit {
                    let said = last_err_line(m);
                    end_for_good(m, WorkloadExit::Code(c));
                    ready.say(&format!("exit {c} {said}"));
                    return Ok(());
                }
                ready.say("ok");
                if let Some(e) = exit {
                    if !restart_or_end(m, cfg, e, started, &mut backoff).await {
                        return Ok(());
                    }
                }
                continue;
            }
            ready.say("ok");
            // Setup's garbage (spec, image index, plan, seccomp programs)
            // goes back to the kernel: one monitor runs per instance.
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
        }
        let _ = waiter.readable().await?;
        drop(waiter);
        let Some(exit) = finish_run(m, &mut report).await else {
            return Ok(());
        };
        if !restart_or_end(m, cfg, exit, started, &mut backoff).await {
            return Ok(());
        }
    }
}

/// Whether `fd` is readable right now.
fn poll_now(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// The last line the run wrote to its stderr log, for the CLI.
fn last_err_line(m: &Monitor) -> String {
    let dir = m.dir.borrow().path().to_path_buf();
    let (recs, _) = log::read_all(&dir).unwrap_or_default();
    recs.iter()
        .rev()
        .find(|r| r.s == log::Stream::Err && !r.l.trim().is_empty())
        .map(|r| r.l.trim().trim_start_matches("duet: ").to_string())
        .unwrap_or_else(|| "the workload ended at once".to_string())
}

/// Reaps the ended run, drains its output, deletes what it made and
/// records its exit and timeline. `None` if waiting failed (recorded).
async fn finish_run(m: &Monitor, report: &mut RunReport) -> Option<WorkloadExit> {
    let inst = m.instance.borrow_mut().take()?;
    let mut inst = inst;
    let waited = inst.wait(report);
    if let Err(e) = inst.delete() {
        eprintln!("duet: monitor: removing the run's resources: {e}");
    }
    // Let the pumps copy what the workload wrote last.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let dir = m.dir.borrow().path().to_path_buf();
    let _ = std::fs::write(dir.join(REPORT_FILE), report.to_json());
    match waited {
        Ok(exit) => {
            m.record(|meta| {
                meta.state.exit = Some(exit);
                meta.exit_code = Some(exit.shell_code());
                meta.state.finished_ms = Some(unix_ms());
            });
            Some(exit)
        }
        Err(e) => {
            eprintln!("duet: monitor: waiting for the workload: {e}");
            let exit = WorkloadExit::Code(125);
            end_for_good(m, exit);
            None
        }
    }
}

fn end_for_good(m: &Monitor, exit: WorkloadExit) {
    m.record(|meta| {
        meta.state.status = Status::Exited;
        meta.state.exit = Some(exit);
        meta.exit_code = Some(exit.shell_code());
        meta.state.finished_ms.get_or_insert(unix_ms());
    });
    m.end.send_replace(Some(exit));
}

/// After an exit: restarts (true, after the back-off) or ends for good (false).
async fn restart_or_end(
    m: &Monitor,
    cfg: &DetachedLaunch,
    exit: WorkloadExit,
    started: std::time::Instant,
    backoff: &mut Duration,
) -> bool {
    let restarts = m.dir.borrow().meta().state.restarts;
    if m.stopped.get() || !cfg.restart.restarts_after(exit, restarts) {
        end_for_good(m, exit);
        return false;
    }
    if started.elapsed() >= BACKOFF_RESET {
        *backoff = FIRST_BACKOFF;
    }
    m.record(|meta| {
        meta.state.status = Status::Restarting;
        meta.state.restarts += 1;
    });
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = m.wake.notified() => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    if m.stopped.get() {
        end_for_good(m, exit);
        return false;
    }
    true
}

/// A raw fd for AsyncFd (owned elsewhere, outlives the AsyncFd).
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Copies one output pipe into the log.
async fn pump(fd: OwnedFd, stream: log::Stream, log: Rc<RefCell<log::LogWriter>>) {
    // SAFETY: the AsyncFd owns the pipe's read end and never replaces it.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    let Ok(afd) = afd else {
        return;
    };
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        match guard.try_io(|f| {
            // SAFETY: read into our buffer from our nonblocking pipe.
            let n = unsafe { libc::read(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => {
                let _ = log.borrow_mut().write(stream, &buf[..n]);
            }
            Ok(Err(_)) => return,
            Err(_would_block) => continue,
        }
    }
}

/// Answers the CLI on the control socket.
async fn serve(listener: std::os::unix::net::UnixListener, m: Rc<Monitor>) {
    let Ok(listener) = tokio::net::UnixListener::from_std(listener) else {
        return;
    };
    while let Ok((conn, _)) = listener.accept().await {
        tokio::task::spawn_local(answer(conn, m.clone()));
    }
}

async fn answer(conn: tokio::net::UnixStream, m: Rc<Monitor>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    if tokio::io::BufReader::new(r)
        .read_line(&mut line)
        .await
        .is_err()
    {
        return;
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
        Ok(Request::Kill { signal }) => {
            m.stopped.set(true);
            m.record(|meta| meta.state.stopped_by_user = true);
            m.wake.notify_one();
            match m.kill(signal) {
                Ok(()) => Response::Ok { exit: None },
                Err(message) => Response::Error { message },
            }
        }
        Ok(Request::Stop { grace_ms }) => {
            m.stopped.set(true);
            m.record(|meta| meta.state.stopped_by_user = true);
            m.wake.notify_one();
            let mut end = m.end.subscribe();
            let mut first = m.end.subscribe();
            let _ = m.kill(libc::SIGTERM);
            let ended = tokio::time::timeout(
                Duration::from_millis(grace_ms),
                first.wait_for(|e| e.is_some()),
            )
            .await;
            if ended.is_err() {
                let _ = m.kill(libc::SIGKILL);
            }
            let exit = *end.wait_for(|e| e.is_some()).await.expect("sender lives");
            Response::Ok { exit }
        }
        Ok(Request::Wait) => {
            let mut end = m.end.subscribe();
            let exit = *end.wait_for(|e| e.is_some()).await.expect("sender lives");
            Response::Ok { exit }
        }
    };
    let mut text = serde_json::to_string(&resp).expect("response serializes");
    text.push('\n');
    let _ = w.write_all(text.as_bytes()).await;
}
