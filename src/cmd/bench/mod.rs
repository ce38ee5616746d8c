//! `duet bench startup|memory|density|isolation|all`: the duet-bench
//! scenarios wired to duet's own backends (as `duet run` subprocesses, the
//! cost a user pays) and to the peers found on this host (runc, crun).
//!
//! The VM peer (QEMU microvm on duet's kernel, initramfs and command line,
//! duet-bench's `qemu` module) comes with the VM rows, measured where they are.
//!
//! VM rows run natively only where KVM accelerates (`duet doctor`). Elsewhere
//! they run inside the nested-KVM testbed (`tests/testbed/run`) when it is
//! available: one testbed boot runs `duet bench <scenario> --isolation vm
//! --vm-via native --report-json -` (and the probe, for `isolation`), and the
//! VM rows of that report are merged into this one, with the report header
//! saying where they were measured. Without a testbed the VM rows say why
//! they are missing.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use duet_bench::disk::{usage_bytes_one_fs, DiskResult};
use duet_bench::host::HostFacts;
use duet_bench::instances::{
    interrupt, measure_memory, run_density, run_density_observed, CommandIdle, DensityConfig,
    DensityResult, IdleLauncher, MemoryResult,
};
use duet_bench::isolation::{self, Canary};
use duet_bench::report::{render_html, render_json, render_markdown, Report};
use duet_bench::startup::{self, DuetStarter, RowStatus, StartupConfig, StartupResult};
use duet_bench::{firecracker, oci, qemu, Kind};
use duet_probe::ProbeReport;
use duet_shared::image::{Image, ImageStore};
use duet_shared::paths::state_root;
use duet_shared::{InstanceDir, Isolation};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod first_run;
mod network;
mod pristine;
mod progress;
mod testbed;
pub use network::NetArgs;
pub use pristine::PristineArgs;
pub use progress::{spinner, Bars};
pub use testbed::*;

/// Where VM rows are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VmVia {
    /// Natively if this host's KVM accelerates (`duet doctor`), else in the testbed if available.
    Auto,
    /// On this host's /dev/kvm, whatever the doctor says.
    Native,
    /// Inside the nested-KVM testbed (tests/testbed/run).
    Testbed,
    /// Not at all.
    Skip,
}

/// Options every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// Isolations to measure, comma-separated (default: container,vm).
    #[arg(long, value_delimiter = ',')]
    pub isolation: Vec<Isolation>,
    /// Write report.json, report.md and report.html into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the report as JSON to this file (`-`: stdout, and no Markdown there).
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Leave out the peer runtimes (runc, crun) and the bare-process baseline.
    #[arg(long)]
    pub no_peers: bool,
    /// Where VM rows run.
    #[arg(long, value_enum, default_value_t = VmVia::Auto)]
    pub vm_via: VmVia,
    /// Timed VM starts when VMs run in the testbed (each takes seconds there).
    #[arg(long, default_value_t = 3)]
    pub testbed_runs: usize,
}

/// Options of the startup scenario.
#[derive(Args, Clone, Debug)]
pub struct StartupArgs {
    /// Timed runs per runner.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Firecracker binary for the Firecracker peer row (default:
    /// `firecracker` on PATH; without one the row says how to get it).
    /// Where VM rows run in the testbed, it is packed in with its libraries.
    #[arg(long, value_name = "PATH")]
    pub firecracker: Option<PathBuf>,
}

/// Options of the memory scenario.
#[derive(Args, Clone, Debug)]
pub struct MemoryArgs {
    /// Idle instances measured one after another, per runner.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
}

/// Options of the density scenario.
#[derive(Args, Clone, Debug)]
pub struct DensityArgs {
    /// Most idle instances to run at once (steps 10, 50, 100, 200, 500, ... up to this).
    #[arg(long, default_value_t = 50)]
    pub max: usize,
}

/// `duet bench` scenarios.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Start-to-exit time of `true` in busybox: N runs per isolation and peer, with phases.
    Startup {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        startup: StartupArgs,
    },
    /// Host memory (PSS, private/shared) of one idle instance of each kind.
    Memory {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        memory: MemoryArgs,
    },
    /// K idle instances at once: memory per instance and time to start them all.
    Density {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        density: DensityArgs,
    },
    /// The isolation probe on the host, in a container and in a VM, side by side.
    Isolation {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// TCP latency and throughput and an HTTP server under load, from the
    /// host to the same servers on its loopback, in a container and in a VM
    /// (in a network namespace of the bench's own).
    Network {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        network: NetArgs,
    },
    /// Claim 8 with a real PostgreSQL: N tests that each need a pristine
    /// database, from one shared server reset between tests, a container
    /// per test and a microVM per test (in a network namespace of the
    /// bench's own). The image comes from images/postgres/build.sh.
    PristineDb {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        pristine: PristineArgs,
    },
    /// Every scenario.
    All {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        startup: StartupArgs,
        #[command(flatten)]
        memory: MemoryArgs,
        #[command(flatten)]
        density: DensityArgs,
        #[command(flatten)]
        network: NetArgs,
        #[command(flatten)]
        pristine: PristineArgs,
    },
}

/// Which scenarios one invocation runs, with their options.
#[derive(Debug, Clone, Default)]
struct Plan {
    startup: Option<StartupArgs>,
    memory: Option<MemoryArgs>,
    density: Option<DensityArgs>,
    isolation: bool,
    network: Option<NetArgs>,
    pristine: Option<PristineArgs>,
}

/// Settle time before an idle instance's memory is read.
const SETTLE: Duration = Duration::from_millis(500);
/// Most VMs a density run starts inside the testbed (2 GiB outer machine, seconds per boot).
const TESTBED_DENSITY_MAX: usize = 3;

/// A scratch directory under `<state root>/tmp` (`duet gc` removes it if we die), removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// Creates `<store>/tmp/<what>-<pid>-<ns>`.
    pub fn new(store: &ImageStore, what: &str) -> Result<Scratch> {
        let p = store.root().join("tmp").join(format!(
            "{what}-{}-{}",
            std::process::id(),
            duet_shared::clock::monotonic_ns()
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Scratch(p))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The busybox image the scenarios run, with `/bin/duet-probe` when a probe binary exists.
pub struct BenchImage {
    /// The store.
    pub store: ImageStore,
    /// The image as stored.
    pub image: Image,
    /// The probe binary on the host, if found.
    pub probe: Option<PathBuf>,
}

impl BenchImage {
    /// Opens the store and makes sure busybox carries the current probe.
    pub fn prepare() -> Result<BenchImage> {
        let store = ImageStore::open(&state_root())?;
        let probe = duet_shared::image::find_probe();
        let image = match &probe {
            Some(p) => duet_shared::image::ensure_probe_layer(&store, p)
                .with_context(|| format!("adding probe {} to the busybox image", p.display()))?,
            None => store.get(duet_shared::image::BUSYBOX_IMAGE)?,
        };
        Ok(BenchImage {
            store,
            image,
            probe,
        })
    }

    /// The busybox layer's tree (the peers' root file system).
    pub fn busybox_rootfs(&self) -> PathBuf {
        self.store.layer_dir(&self.image.layers[0])
    }

    /// Whether `/bin/duet-probe` is in the image, or why not.
    pub fn probe_missing(&self) -> Option<String> {
        let has = self
            .store
            .layer_dirs(&self.image)
            .iter()
            .any(|d| d.join(duet_shared::image::PROBE_IN_IMAGE).is_file());
        (!has).then(|| {
            format!(
                "the busybox image has no /bin/duet-probe: no duet-probe binary next to {} or at {} \
                 (build it with `cargo build -p duet-probe`, or set {})",
                current_exe_dir().display(),
                duet_shared::image::SYSTEM_PROBE_PATH,
                duet_shared::image::PROBE_ENV
            )
        })
    }
}

fn current_exe_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

/// Runs `/bin/duet-probe ARGS` in a `duet run --isolation I busybox` and parses its report.
pub fn probe_in(isolation: Isolation, args: &[String]) -> Result<ProbeReport> {
    let exe = std::env::current_exe().context("locating the duet binary")?;
    let label = format!("duet {isolation}");
    let out = Command::new(&exe)
        .args(probe_run_args(isolation, args))
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "{label}: duet run ... /bin/duet-probe exited with {}: {}",
            out.status,
            startup::tail(&out.stderr)
        );
    }
    Ok(isolation::parse_probe(&out.stdout, &label)?)
}

/// `duet run` arguments that run the probe in busybox under `isolation`.
pub fn probe_run_args(isolation: Isolation, args: &[String]) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--isolation",
        &isolation.to_string(),
        "--hostname",
        "duet-probe",
        "--network",
        "none",
        "busybox",
        "--",
        "/bin/duet-probe",
        "--compact",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(args.iter().cloned());
    a
}

/// The probe on the host: the duet-probe binary if found, else `duet probe` (same code).
pub fn probe_on_host(probe: Option<&Path>, args: &[String]) -> Result<ProbeReport> {
    let (bin, args) = match probe {
        Some(p) => (p.to_path_buf(), args.to_vec()),
        None => {
            let mut a = vec!["probe".to_string()];
            a.extend(args.iter().cloned());
            (
                std::env::current_exe().context("locating the duet binary")?,
                a,
            )
        }
    };
    Ok(isolation::probe_on_host(&bin, &args)?)
}

fn memory_unavailable(label: &str, kind: Kind, why: &str) -> MemoryResult {
    MemoryResult {
        label: label.to_string(),
        kind,
        status: RowStatus::Unavailable(why.to_string()),
        samples: 0,
        pss_kib: None,
        private_kib: None,
        shared_kib: None,
        processes: 0,
        last_rollup: None,
        notes: Vec::new(),
    }
}

fn density_unavailable(label: &str, kind: Kind, why: &str) -> DensityResult {
    DensityResult {
        label: label.to_string(),
        kind,
        status: RowStatus::Unavailable(why.to_string()),
        points: Vec::new(),
        stopped_because: why.to_string(),
        cleanup_errors: Vec::new(),
    }
}

fn row_summary(status: &RowStatus, measured: impl FnOnce() -> String) -> String {
    match status {
        RowStatus::Measured => measured(),
        RowStatus::Unavailable(w) => format!("not run: {w}"),
        RowStatus::Failed(w) => format!("FAILED: {w}"),
    }
}

/// The whole run's state.
struct Bench {
    exe: PathBuf,
    host: HostFacts,
    image: BenchImage,
    scratch: Scratch,
    bars: Bars,
    report: Report,
}

impl Bench {
    fn duet_starter(&self, iso: Isolation) -> DuetStarter {
        DuetStarter {
            duet: self.exe.clone(),
            isolation: iso.to_string(),
            image: "busybox".into(),
            command: vec!["true".into()],
            extra_args: vec![],
            label: None,
            root: None,
        }
    }

    /// duet's rows, then the container peers (`peers`) and, with a VM row
    /// here, the QEMU microvm peer (`vm_peers`).
    fn startup(
        &mut self,
        a: &StartupArgs,
        isolations: &[Isolation],
        peers: bool,
        vm_peers: bool,
    ) -> Result<()> {
        let cfg = StartupConfig {
            runs: a.runs,
            warmup: a.warmup,
        };
        for &iso in isolations {
            let r = startup::run(&cfg, &mut self.duet_starter(iso), &mut self.bars);
            self.bars.clear();
            say_startup(&r);
            self.report.startup.push(r);
            if interrupt::requested() {
                return Ok(());
            }
            if iso == Isolation::Vm {
                // The warm start: a restore of the image's template. The
                // untimed first run builds the template (if not cached).
                let mut warm = self.duet_starter(iso);
                warm.extra_args.push("--warm".into());
                warm.label = Some("duet vm --warm".into());
                let wcfg = StartupConfig {
                    runs: cfg.runs,
                    warmup: cfg.warmup.max(1),
                };
                let r = startup::run(&wcfg, &mut warm, &mut self.bars);
                self.bars.clear();
                say_startup(&r);
                self.report.startup.push(r);
                if interrupt::requested() {
                    return Ok(());
                }
            }
        }
        if !interrupt::requested() {
            self.first_run_rows(&cfg, isolations);
        }
        self.lifecycle_rows(&cfg, isolations, peers);
        // Under Docker: runc and duet for containers; duet next to duet-vm
        // where VMs run, so the report shows what the VM costs there.
        let mut docker_rows: Vec<&str> = Vec::new();
        if peers && isolations.contains(&Isolation::Container) {
            docker_rows.extend(["runc", "duet"]);
        }
        if vm_peers && isolations.contains(&Isolation::Vm) {
            if !docker_rows.contains(&"duet") {
                docker_rows.push("duet");
            }
            docker_rows.push("duet-vm");
        }
        if !docker_rows.is_empty() && !interrupt::requested() {
            self.docker_run_rows(&cfg, &docker_rows);
        }
        if peers {
            let rows = oci::peer_startup(
                &cfg,
                self.host.cgroup_layout,
                &self.image.busybox_rootfs(),
                self.scratch.path(),
                &["/bin/true"],
                &mut self.bars,
            )?;
            self.bars.clear();
            for r in rows {
                say_startup(&r);
                self.report.startup.push(r);
            }
        }
        // The VM peers on duet's own guest: QEMU microvm, then Firecracker.
        for firecracker_row in [false, true] {
            if !vm_peers || !isolations.contains(&Isolation::Vm) || interrupt::requested() {
                break;
            }
            let src = self.guest_source();
            let dir = self.scratch.path().to_path_buf();
            let (r, note) = if firecracker_row {
                let fc = a.firecracker.as_deref();
                firecracker::peer_startup(&cfg, &src, fc, &dir, &mut self.bars)
            } else {
                qemu::peer_startup(&cfg, &src, &dir, &mut self.bars)
            };
            self.bars.clear();
            say_startup(&r);
            self.report.startup.push(r);
            self.report.notes.extend(note);
        }
        Ok(())
    }

    /// Pull + unpack + start from an empty state root, per isolation, from
    /// a registry of the bench's own ([`first_run`]).
    fn first_run_rows(&mut self, cfg: &StartupConfig, isolations: &[Isolation]) {
        let label = |iso: Isolation| first_run::FirstRun::label_for(&iso.to_string());
        let reg = first_run::LocalRegistry::start(self.scratch.path())
            .and_then(|reg| first_run::push_busybox(&self.exe, &reg).map(|r| (reg, r)));
        let (_reg, reference) = match reg {
            Ok(r) => r,
            Err(why) => {
                for &iso in isolations {
                    let r = StartupResult::unavailable(
                        &label(iso),
                        Kind::of_isolation(&iso.to_string()),
                        &why,
                    );
                    say_startup(&r);
                    self.report.startup.push(r);
                }
                return;
            }
        };
        // Every run is a first run (an empty state root): none is a warm-up.
        let cfg = StartupConfig { warmup: 0, ..*cfg };
        for &iso in isolations {
            let mut inner = self.duet_starter(iso);
            inner.image = reference.clone();
            inner.extra_args.push("--insecure".into());
            let mut st = first_run::FirstRun {
                inner,
                roots: self.scratch.path().join("first-run"),
            };
            let r = startup::run(&cfg, &mut st, &mut self.bars);
            self.bars.clear();
            say_startup(&r);
            self.report.startup.push(r);
            if interrupt::requested() {
                return;
            }
        }
    }

    /// `run -d` until running and the `exec ID true` round trip, for
    /// duet's isolations here and (with `peers`) `runc exec`/`crun exec`.
    fn lifecycle_rows(&mut self, cfg: &StartupConfig, isolations: &[Isolation], peers: bool) {
        use duet_bench::lifecycle::{DetachStarter, ExecStarter};
        let mut starters: Vec<Box<dyn startup::Starter>> = Vec::new();
        let root = self.image.store.root().to_path_buf();
        for &iso in isolations {
            starters.push(Box::new(DetachStarter {
                duet: self.exe.clone(),
                isolation: iso.to_string(),
                image: "busybox".into(),
            }));
            let exe = self.exe.clone();
            starters.push(Box::new(ExecStarter {
                label: format!("duet exec {iso} (true)"),
                launcher: Box::new(duet_bench::detached::DetachedIdle::new(
                    &self.exe,
                    &root,
                    &iso.to_string(),
                    "busybox",
                )),
                argv: Box::new(move |id| {
                    [
                        exe.display().to_string(),
                        "exec".into(),
                        id.into(),
                        "true".into(),
                    ]
                    .to_vec()
                }),
                instance: None,
            }));
        }
        if peers {
            match oci::peer_idle(
                self.host.cgroup_layout,
                &self.image.busybox_rootfs(),
                self.scratch.path(),
            ) {
                Ok((ok, skipped)) => {
                    for l in ok {
                        let peer = l.peer.clone();
                        starters.push(Box::new(ExecStarter {
                            label: format!("{} exec (true)", peer.label()),
                            launcher: Box::new(l),
                            argv: Box::new(move |id| {
                                match peer.command(&["exec", id, "/bin/true"]) {
                                    Some(c) => std::iter::once(c.get_program())
                                        .chain(c.get_args())
                                        .map(|a| a.to_string_lossy().into_owned())
                                        .collect(),
                                    None => vec!["false".into()],
                                }
                            }),
                            instance: None,
                        }));
                    }
                    for (label, why) in skipped {
                        let r = StartupResult::unavailable(
                            &format!("{label} exec (true)"),
                            duet_bench::Kind::Container,
                            &why,
                        );
                        say_startup(&r);
                        self.report.lifecycle.push(r);
                    }
                }
                Err(e) => self.report.notes.push(format!(
                    "exec peers not measured: {}",
                    duet_bench::error_chain(&e)
                )),
            }
            match self.docker_exec_starter() {
                Ok(st) => starters.push(st),
                Err(why) => {
                    let r = StartupResult::unavailable(
                        "docker exec (true)",
                        duet_bench::Kind::Container,
                        &why,
                    );
                    say_startup(&r);
                    self.report.lifecycle.push(r);
                }
            }
        }
        for mut st in starters {
            if interrupt::requested() {
                return;
            }
            let r = startup::run(cfg, st.as_mut(), &mut self.bars);
            self.bars.clear();
            say_startup(&r);
            self.report.lifecycle.push(r);
        }
    }

    /// `docker run --rm IMAGE true` of one private dockerd with each of
    /// `labels` as its OCI runtime (`runc`; `duet`, i.e. `duet-runc`;
    /// `duet-vm`, i.e. `duet-runc --isolation vm`), interleaved run by run.
    fn docker_run_rows(&mut self, cfg: &StartupConfig, labels: &[&str]) {
        use duet_bench::docker::{DockerRunStarter, RuntimeEntry};
        let link = self.scratch.path().join("duet-runc");
        let _ = std::fs::remove_file(&link);
        let engine = std::os::unix::fs::symlink(&self.exe, &link)
            .map_err(|e| format!("symlink {}: {e}", link.display()))
            .and_then(|()| {
                self.private_dockerd(&[
                    RuntimeEntry {
                        name: "duet".into(),
                        path: link.clone(),
                        args: vec![],
                    },
                    RuntimeEntry {
                        name: "duet-vm".into(),
                        path: link,
                        args: vec!["--isolation".into(), "vm".into()],
                    },
                ])
            });
        let engine = match engine {
            Ok(e) => std::rc::Rc::new(e),
            Err(why) => {
                for &l in labels {
                    let r = StartupResult::unavailable(
                        &format!("docker run --rm --runtime {l} (true)"),
                        docker_kind(l),
                        &why,
                    );
                    say_startup(&r);
                    self.report.startup.push(r);
                }
                return;
            }
        };
        let version = engine.version();
        let mut starters: Vec<Box<dyn startup::Starter>> = labels
            .iter()
            .map(|l| {
                Box::new(DockerRunStarter {
                    engine: std::rc::Rc::clone(&engine),
                    image: "duet-bench-busybox".into(),
                    runtime: l.to_string(),
                    label: format!("docker {version} run --rm --runtime {l} (true)"),
                    kind: docker_kind(l),
                }) as Box<dyn startup::Starter>
            })
            .collect();
        let rows = startup::run_interleaved(cfg, &mut starters, &mut self.bars);
        self.bars.clear();
        drop(starters);
        for r in rows {
            say_startup(&r);
            self.report.startup.push(r);
        }
    }

    /// A private dockerd with `runtimes` besides runc and the busybox image
    /// imported as `duet-bench-busybox`, or why there is none.
    fn private_dockerd(
        &self,
        runtimes: &[duet_bench::docker::RuntimeEntry],
    ) -> Result<duet_bench::docker::Dockerd, String> {
        use duet_bench::docker::{self, Dockerd};
        if let Some(why) = docker::unavailable() {
            return Err(why);
        }
        let engine = Dockerd::start(runtimes).map_err(|e| duet_bench::error_chain(&e))?;
        engine
            .import_rootfs(&self.image.busybox_rootfs(), "duet-bench-busybox")
            .map_err(|e| duet_bench::error_chain(&e))?;
        Ok(engine)
    }

    /// `docker exec ID true` into an idle busybox container of a private
    /// dockerd (runc), or why there is none.
    fn docker_exec_starter(&self) -> Result<Box<dyn startup::Starter>, String> {
        use duet_bench::docker::DockerIdle;
        let engine = self.private_dockerd(&[])?;
        let label = format!("docker {} exec (true)", engine.version());
        let host = engine.host_flag();
        let engine = std::rc::Rc::new(engine);
        Ok(Box::new(duet_bench::lifecycle::ExecStarter {
            label: label.clone(),
            launcher: Box::new(DockerIdle {
                engine,
                image: "duet-bench-busybox".into(),
                runtime: None,
                label,
            }),
            argv: Box::new(move |id| {
                ["docker", &host, "exec", id, "true"]
                    .map(String::from)
                    .to_vec()
            }),
            instance: None,
        }))
    }

    /// The guest `duet run --isolation vm busybox -- true` boots, for QEMU.
    fn guest_source(&self) -> qemu::GuestSource {
        let mut cmdline = duet_vmm::rootfs::kernel_cmdline(false);
        if let Ok(extra) = std::env::var(duet_vmm::runtime::KERNEL_APPEND_ENV) {
            if !extra.trim().is_empty() {
                cmdline = format!("{cmdline} {}", extra.trim());
            }
        }
        let resources = duet_shared::Resources::default();
        qemu::GuestSource {
            duet: self.exe.clone(),
            state_root: state_root(),
            kernel: duet_vmm::runtime::find_kernel().map_err(|e| duet_bench::error_chain(&e)),
            cmdline,
            memory_mib: resources.memory_mib,
            vcpus: resources.vcpus,
            image: "busybox".into(),
            command: vec!["true".into()],
        }
    }

    fn memory(&mut self, a: &MemoryArgs, isolations: &[Isolation], peers: bool) -> Result<()> {
        for &iso in isolations {
            let mut l = CommandIdle::duet(&self.exe, &iso.to_string(), "busybox", &[]);
            let r = measure_memory(&mut l, a.samples, SETTLE);
            say_memory(&r);
            self.report.memory.push(r);
            if interrupt::requested() {
                return Ok(());
            }
        }
        if peers {
            let bb = self.image.busybox_rootfs().join("bin/busybox");
            let mut base = CommandIdle {
                label: "bare process (busybox sh, sleep)".into(),
                kind: Kind::Process,
                argv: vec![
                    bb.display().to_string(),
                    "sh".into(),
                    "-c".into(),
                    format!("echo duet-ready; exec {} sleep 1000000", bb.display()),
                ],
                ready_line: Some("duet-ready".into()),
                ready_timeout: Duration::from_secs(10),
            };
            let r = measure_memory(&mut base, a.samples, SETTLE);
            say_memory(&r);
            self.report.memory.push(r);
            let (ok, skipped) = oci::peer_idle(
                self.host.cgroup_layout,
                &self.image.busybox_rootfs(),
                self.scratch.path(),
            )?;
            for mut l in ok {
                let r = measure_memory(&mut l, a.samples, SETTLE);
                say_memory(&r);
                self.report.memory.push(r);
            }
            for (label, why) in skipped {
                let r = memory_unavailable(&label, Kind::Container, &why);
                say_memory(&r);
                self.report.memory.push(r);
            }
        }
        Ok(())
    }

    fn density(&mut self, a: &DensityArgs, isolations: &[Isolation], peers: bool) -> Result<()> {
        let cfg = DensityConfig::up_to(a.max);
        // duet's own instances: the curve, plus their disk use at each point.
        for &iso in isolations {
            if interrupt::requested() {
                return Ok(());
            }
            let mut l = CommandIdle::duet(&self.exe, &iso.to_string(), "busybox", &[]);
            let label = l.label.clone();
            let layers = self.image.store.layer_dirs(&self.image.image);
            let root = self.image.store.root().to_path_buf();
            let mut disk = None;
            let r = run_density_observed(&cfg, &mut l, &mut self.bars, &mut |p, insts| {
                let pids: Vec<u32> = insts.iter().flat_map(|i| i.root_pids()).collect();
                disk = Some(disk_of(&label, &root, &layers, p.k, &pids));
            });
            self.bars.clear();
            say_density(&r);
            self.report.density.push(r);
            match disk {
                Some(Ok(d)) => {
                    eprintln!(
                        "  disk    {:<28} image {:.1} MiB once, {} instances added {:.1} MiB",
                        d.label,
                        d.image_bytes as f64 / 1048576.0,
                        d.instances,
                        d.instances_bytes as f64 / 1048576.0
                    );
                    self.report.disk.push(d);
                }
                Some(Err(e)) => self.report.notes.push(format!(
                    "disk use of {label} instances not measured: {}",
                    crate::cmd::error_chain(&e)
                )),
                None => {}
            }
        }
        // Warm-started microVMs: clones of the image's template, whose
        // unwritten pages are one copy for all of them (MAP_PRIVATE).
        if isolations.contains(&Isolation::Vm) && !interrupt::requested() {
            let warm = vec!["--warm".to_string()];
            // The template first, so the curve's baseline already holds it.
            let built = std::process::Command::new(&self.exe)
                .args(["run", "--warm", "busybox", "--", "true"])
                .stdout(std::process::Stdio::null())
                .output();
            match built {
                Ok(o) if o.status.success() => {
                    let mut l = CommandIdle::duet(&self.exe, "vm", "busybox", &warm);
                    l.label = "duet vm --warm".into();
                    let r = run_density(&cfg, &mut l, &mut self.bars);
                    self.bars.clear();
                    say_density(&r);
                    self.report.density.push(r);
                }
                failed => {
                    let why = match failed {
                        Ok(o) => format!(
                            "building the warm-start template failed: {}",
                            String::from_utf8_lossy(&o.stderr).trim()
                        ),
                        Err(e) => format!("cannot start {}: {e}", self.exe.display()),
                    };
                    let mut r = density_unavailable("duet vm --warm", Kind::Vm, &why);
                    r.status = RowStatus::Failed(why);
                    say_density(&r);
                    self.report.density.push(r);
                }
            }
        }
        // The same instances left to their monitors (`run -d`): the monitor's
        // cost against the foreground duet process beside each.
        for &iso in isolations {
            if interrupt::requested() {
                return Ok(());
            }
            let root = self.image.store.root().to_path_buf();
            let mut l = duet_bench::detached::DetachedIdle::new(
                &self.exe,
                &root,
                &iso.to_string(),
                "busybox",
            );
            // The monitor process alone (its tree less the init or VMM):
            // what detaching costs per instance, in each isolation.
            let mut alone = None;
            let r = run_density_observed(&cfg, &mut l, &mut self.bars, &mut |p, insts| {
                let pss: u64 = insts
                    .iter()
                    .flat_map(|i| i.root_pids())
                    .filter_map(|pid| duet_bench::memory::rollup_of(pid).ok())
                    .map(|r| r.pss_kib)
                    .sum();
                alone = Some((p.k, pss as f64 / p.k.max(1) as f64));
            });
            self.bars.clear();
            say_density(&r);
            if let Some((k, kib)) = alone {
                let note = format!(
                    "{}: the monitor process alone is {kib:.0} KiB PSS per instance ({k} instances)",
                    r.label
                );
                eprintln!("  {note}");
                self.report.notes.push(note);
            }
            self.report.density.push(r);
        }
        let mut launchers: Vec<Box<dyn IdleLauncher>> = Vec::new();
        if peers {
            let (ok, skipped) = oci::peer_idle(
                self.host.cgroup_layout,
                &self.image.busybox_rootfs(),
                self.scratch.path(),
            )?;
            launchers.extend(ok.into_iter().map(|l| Box::new(l) as Box<dyn IdleLauncher>));
            for (label, why) in skipped {
                let r = density_unavailable(&label, Kind::Container, &why);
                say_density(&r);
                self.report.density.push(r);
            }
        }
        for mut l in launchers {
            if interrupt::requested() {
                break;
            }
            let r = run_density(&cfg, l.as_mut(), &mut self.bars);
            self.bars.clear();
            say_density(&r);
            self.report.density.push(r);
        }
        Ok(())
    }

    /// Host probe + native columns; `extra` columns (from the testbed) are appended.
    fn isolation(
        &mut self,
        isolations: &[Isolation],
        canary: &Canary,
        extra: Vec<(String, Result<ProbeReport>)>,
    ) -> Result<()> {
        let args = isolation::probe_args(canary);
        let host =
            probe_on_host(self.image.probe.as_deref(), &args).context("probe on the host")?;
        let mut cols = Vec::new();
        let mut missing = Vec::new();
        for &iso in isolations {
            let label = format!("duet {iso}");
            if let Some(why) = self.image.probe_missing() {
                missing.push((label, why));
                continue;
            }
            eprintln!("  probing inside {label}");
            match probe_in(iso, &args) {
                Ok(r) => cols.push((label, r)),
                Err(e) => missing.push((label, crate::cmd::error_chain(&e))),
            }
        }
        for (label, r) in extra {
            match r {
                Ok(r) => cols.push((label, r)),
                Err(e) => missing.push((label, crate::cmd::error_chain(&e))),
            }
        }
        let mut t = isolation::compare(&host, &cols);
        isolation::add_vmm_row(&mut t, &host, &cols, &crate::cmd::vmm_jail());
        t.missing = missing;
        for (l, why) in &t.missing {
            eprintln!("  {l}: not probed: {why}");
            self.report
                .notes
                .push(format!("isolation column {l} missing: {why}"));
        }
        self.report.isolation = Some(t);
        Ok(())
    }
}

/// Disk of `k` running duet instances (their instance directories, found by
/// the `duet run` PIDs that own them, without the mounted root) against the
/// image's layers, counted once.
fn disk_of(
    label: &str,
    root: &Path,
    layers: &[PathBuf],
    k: usize,
    owner_pids: &[u32],
) -> Result<DiskResult> {
    let layer_refs: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
    let image_bytes = usage_bytes_one_fs(&layer_refs)?;
    let mut dirs = Vec::new();
    for id in InstanceDir::list_ids(root)? {
        let Ok(inst) = InstanceDir::open(root, &id) else {
            continue;
        };
        let owner = inst.meta().owner_pid;
        if owner > 0 && owner_pids.contains(&(owner as u32)) {
            dirs.push(inst.path().to_path_buf());
        }
    }
    if dirs.len() != owner_pids.len() {
        bail!(
            "found {} instance directories under {} for {} running instances",
            dirs.len(),
            root.display(),
            owner_pids.len()
        );
    }
    let dir_refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    Ok(DiskResult {
        label: label.to_string(),
        image_bytes,
        instances: k as u64,
        instances_bytes: usage_bytes_one_fs(&dir_refs)?,
    })
}

fn say_startup(r: &StartupResult) {
    eprintln!(
        "  startup {:<28} {}",
        r.label,
        row_summary(&r.status, || {
            let w = r.wall_ms.expect("measured rows have samples");
            format!(
                "median {:.2} ms (min {:.2}, p90 {:.2}, {} runs)",
                w.median, w.min, w.p90, w.n
            )
        })
    );
}

fn say_memory(r: &MemoryResult) {
    eprintln!(
        "  memory  {:<28} {}",
        r.label,
        row_summary(&r.status, || {
            let p = r.pss_kib.map(|s| s.median).unwrap_or(0.0);
            format!(
                "PSS {:.1} MiB, {} processes ({} samples)",
                p / 1024.0,
                r.processes,
                r.samples
            )
        })
    );
}

fn say_density(r: &DensityResult) {
    let last = r.points.last();
    eprintln!(
        "  density {:<28} {}{}",
        r.label,
        match last {
            Some(p) => format!(
                "{} instances in {:.0} ms, {:.1} MiB PSS each; ",
                p.k,
                p.start_all_ms,
                p.pss_per_instance_kib / 1024.0
            ),
            None => String::new(),
        },
        row_summary(&r.status, || format!("ended: {}", r.stopped_because))
    );
    for e in &r.cleanup_errors {
        eprintln!("    cleanup error: {e}");
    }
}

/// Entry point of `duet bench`.
pub fn bench(c: BenchCommand) -> Result<()> {
    let (common, plan) = match c {
        BenchCommand::Startup { common, startup } => (
            common,
            Plan {
                startup: Some(startup),
                ..Plan::default()
            },
        ),
        BenchCommand::Memory { common, memory } => (
            common,
            Plan {
                memory: Some(memory),
                ..Plan::default()
            },
        ),
        BenchCommand::Density { common, density } => (
            common,
            Plan {
                density: Some(density),
                ..Plan::default()
            },
        ),
        BenchCommand::Isolation { common } => (
            common,
            Plan {
                isolation: true,
                ..Plan::default()
            },
        ),
        BenchCommand::Network { common, network } => (
            common,
            Plan {
                network: Some(network),
                ..Plan::default()
            },
        ),
        BenchCommand::PristineDb { common, pristine } => (
            common,
            Plan {
                pristine: Some(pristine),
                ..Plan::default()
            },
        ),
        BenchCommand::All {
            common,
            startup,
            memory,
            density,
            network,
            pristine,
        } => (
            common,
            Plan {
                startup: Some(startup),
                memory: Some(memory),
                density: Some(density),
                isolation: true,
                network: Some(network),
                pristine: Some(pristine),
            },
        ),
    };
    if let Some(p) = &plan.pristine {
        p.check()?;
    }
    run_plan(&common, &plan)
}

fn run_plan(common: &CommonArgs, plan: &Plan) -> Result<()> {
    let isolations = if common.isolation.is_empty() {
        vec![Isolation::Container, Isolation::Vm]
    } else {
        let mut v = common.isolation.clone();
        v.dedup();
        v
    };
    interrupt::install();
    let host = duet_bench::host::collect();
    let mut report = Report::new(host.clone());
    if plan.startup.is_some() {
        report.harness = Some(startup::measure_harness_overhead(50)?);
    }
    let image = BenchImage::prepare()?;
    let scratch = Scratch::new(&image.store, "bench")?;
    let mut b = Bench {
        exe: std::env::current_exe().context("locating the duet binary")?,
        host,
        image,
        scratch,
        bars: Bars::new(),
        report,
    };
    eprintln!("duet bench: host {}", b.host.summary());
    if cfg!(debug_assertions) {
        b.report.notes.push(format!(
            "duet is a debug build ({}): its own start-up and memory are larger than a release build's",
            b.exe.display()
        ));
    }
    let peers = !common.no_peers;
    let want_vm = isolations.contains(&Isolation::Vm);
    let vm_place = if want_vm {
        place_vm(common.vm_via)
    } else {
        VmPlace::Missing("not asked for".into())
    };
    let mut native: Vec<Isolation> = isolations
        .iter()
        .copied()
        .filter(|i| *i == Isolation::Container)
        .collect();
    if want_vm {
        match &vm_place {
            VmPlace::Native(env) => {
                native.push(Isolation::Vm);
                if let Some(e) = env {
                    b.report.vm_environment = Some(e.clone());
                }
            }
            VmPlace::Testbed(_, line) => {
                eprintln!("duet bench: VM rows run in the nested-KVM testbed ({line})")
            }
            VmPlace::Missing(why) => eprintln!("duet bench: no VM rows: {why}"),
        }
    }
    let canary = if plan.isolation {
        Some(Canary::create(b.scratch.path())?)
    } else {
        None
    };
    // Peers are containers (and a bare process): they come with the container rows.
    let peer_rows = peers && isolations.contains(&Isolation::Container);
    if let Some(a) = &plan.startup {
        eprintln!(
            "duet bench startup: {} runs after {} warm-up",
            a.runs, a.warmup
        );
        b.startup(a, &native, peer_rows, peers)?;
    }
    if let Some(a) = plan.memory.as_ref().filter(|_| !interrupt::requested()) {
        eprintln!(
            "duet bench memory: {} idle instance(s) per runner",
            a.samples
        );
        b.memory(a, &native, peer_rows)?;
    }
    if let Some(a) = plan.density.as_ref().filter(|_| !interrupt::requested()) {
        eprintln!("duet bench density: up to {} idle instances", a.max);
        b.density(a, &native, peer_rows)?;
    }
    if let Some(a) = plan.network.as_ref().filter(|_| !interrupt::requested()) {
        eprintln!(
            "duet bench network: from this side to servers on loopback, in a container and in a VM"
        );
        b.network(a, &native, peers)?;
    }
    if let Some(a) = plan.pristine.as_ref().filter(|_| !interrupt::requested()) {
        eprintln!(
            "duet bench pristine-db: {} tests, each with its own pristine PostgreSQL ({} at a time)",
            a.tests,
            a.sweep()
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", then ")
        );
        b.pristine(a, &native)?;
    }
    let mut extra_cols = Vec::new();
    if want_vm && !interrupt::requested() {
        match &vm_place {
            VmPlace::Native(_) => {}
            VmPlace::Testbed(tb, line) => {
                let vm = vm_in_testbed(&mut b, tb, line, common, plan, canary.as_ref());
                match vm {
                    Ok(col) => extra_cols.extend(col),
                    Err(e) => {
                        let why =
                            format!("the testbed run failed: {}", crate::cmd::error_chain(&e));
                        eprintln!("duet bench: {why}");
                        add_vm_missing(&mut b.report, plan, &why, peers, &mut extra_cols);
                    }
                }
            }
            VmPlace::Missing(why) => {
                add_vm_missing(&mut b.report, plan, why, peers, &mut extra_cols)
            }
        }
    }
    if let Some(canary) = canary.as_ref().filter(|_| !interrupt::requested()) {
        eprintln!("duet bench isolation: probe on the host and inside each isolation");
        b.isolation(&native, canary, extra_cols)?;
    }
    if interrupt::requested() {
        b.report
            .notes
            .push("interrupted (Ctrl-C): the report holds what was measured before".into());
    }
    // Rows measured here; from the testbed, the inner run's note says it.
    if let VmPlace::Native(_) = &vm_place {
        for q in vm_peer_ratios(&b.report) {
            eprintln!("duet bench: {q}");
            b.report.notes.push(q);
        }
    }
    write_outputs(&b.report, common)?;
    if interrupt::requested() {
        bail!("interrupted");
    }
    // A test that saw data not its own is a broken isolation, not a slow
    // row: the run fails (as it does when a test could not reach its database).
    let unclean: Vec<&duet_bench::pristine::PristineResult> = b
        .report
        .pristine
        .iter()
        .filter(|p| !p.failures.is_empty())
        .collect();
    if let Some(first) = unclean.first() {
        bail!(
            "pristine-db: {} test(s) in {} row(s) failed: each must reach a pristine database \
             of its own and see only its own writes; first: {}",
            unclean.iter().map(|p| p.tests - p.passed).sum::<usize>(),
            unclean.len(),
            first.failures[0]
        );
    }
    Ok(())
}

/// Rows (or isolation columns) saying why VM numbers are missing; with
/// `peers`, the QEMU microvm row too.
fn add_vm_missing(
    r: &mut Report,
    plan: &Plan,
    why: &str,
    peers: bool,
    cols: &mut Vec<(String, Result<ProbeReport>)>,
) {
    let label = "duet vm";
    if plan.startup.is_some() {
        r.startup
            .push(StartupResult::unavailable(label, Kind::Vm, why));
        for l in ["duet run -d vm (to running)", "duet exec vm (true)"] {
            r.lifecycle
                .push(StartupResult::unavailable(l, Kind::Vm, why));
        }
        if peers {
            let q = StartupResult::unavailable(&qemu::detect().label(), Kind::Vm, why);
            say_startup(&q);
            r.startup.push(q);
            let explicit = plan.startup.as_ref().and_then(|a| a.firecracker.as_deref());
            let f =
                StartupResult::unavailable(&firecracker::detect(explicit).label(), Kind::Vm, why);
            say_startup(&f);
            r.startup.push(f);
        }
    }
    if plan.memory.is_some() {
        r.memory.push(memory_unavailable(label, Kind::Vm, why));
    }
    if plan.density.is_some() {
        r.density.push(density_unavailable(label, Kind::Vm, why));
    }
    if plan.isolation {
        cols.push((label.to_string(), Err(anyhow::anyhow!("{why}"))));
    }
    if plan.network.is_some() {
        let n = duet_bench::network::NetworkResult::unavailable(label, Kind::Vm, why);
        network::say_network(&n);
        r.network.push(n);
    }
    if let Some(a) = &plan.pristine {
        for p in pristine::unavailable_rows(a, &[Isolation::Vm], why) {
            pristine::say_pristine(&p);
            r.pristine.push(p);
        }
    }
}

/// A row saying a scenario failed for `label`.
fn add_failed_row(r: &mut Report, scenario: &str, label: &str, iso: &str, why: String) {
    let k = Kind::of_isolation(iso);
    match scenario {
        "startup" => r.startup.push(StartupResult {
            status: RowStatus::Failed(why),
            ..StartupResult::unavailable(label, k, "")
        }),
        "memory" => r.memory.push(MemoryResult {
            status: RowStatus::Failed(why),
            ..memory_unavailable(label, k, "")
        }),
        "network" => r
            .network
            .push(duet_bench::network::NetworkResult::failed(label, k, why)),
        "pristine-db" => {
            let iso = if k == Kind::Vm {
                Isolation::Vm
            } else {
                Isolation::Container
            };
            let args = PristineArgs {
                tests: 0,
                parallel: vec![0],
                pg_image: String::new(),
                vm_memory: 0,
            };
            for mut p in pristine::unavailable_rows(&args, &[iso], "") {
                p.label = format!("{} (testbed)", p.label);
                p.status = RowStatus::Failed(why.clone());
                r.pristine.push(p);
            }
        }
        _ => r.density.push(DensityResult {
            status: RowStatus::Failed(why.clone()),
            stopped_because: why,
            ..density_unavailable(label, k, "")
        }),
    }
}

fn write_outputs(r: &Report, common: &CommonArgs) -> Result<()> {
    let json = render_json(r);
    let md = render_markdown(r);
    if let Some(dir) = &common.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let html = render_html(r).context("drawing the report's charts")?;
        for (name, text) in [
            ("report.json", &json),
            ("report.md", &md),
            ("report.html", &html),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        }
        eprintln!(
            "duet bench: wrote {0}/report.json, {0}/report.md, {0}/report.html",
            dir.display()
        );
    }
    let json_to_stdout = common.report_json.as_deref() == Some(Path::new("-"));
    match &common.report_json {
        Some(_) if json_to_stdout => println!("{json}"),
        Some(p) => std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?,
        None => {}
    }
    if !json_to_stdout {
        print!("{md}");
    }
    Ok(())
}

/// Memory of one idle instance, for `duet demo` (one sample, shorter settle).
pub fn demo_memory(isolation: Isolation) -> Result<MemoryResult> {
    let exe = std::env::current_exe().context("locating the duet binary")?;
    let mut l = CommandIdle::duet(&exe, &isolation.to_string(), "busybox", &[]);
    Ok(measure_memory(&mut l, 1, Duration::from_millis(300)))
}

/// What a `docker run --runtime NAME` row measures.
fn docker_kind(runtime: &str) -> duet_bench::Kind {
    if runtime == "duet-vm" {
        duet_bench::Kind::Vm
    } else {
        duet_bench::Kind::Container
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_parse_with_rc_and_stderr() {
        let text = "noise\n=== BEGIN a\nline 1\r\nline 2\n=== END a rc=3\n\
                    === BEGIN a.stderr\noops\n=== END a.stderr rc=0\n=== BEGIN cut\npartial\n";
        let s = parse_sections(text);
        assert_eq!(s["a"].output, "line 1\nline 2\n");
        assert_eq!(s["a"].rc, 3);
        assert_eq!(s["a.stderr"].output, "oops\n");
        assert!(
            !s.contains_key("cut"),
            "an unterminated section is not a result"
        );
        let e = section_ok(&s, "a").unwrap_err().to_string();
        assert!(e.contains("exited with 3") && e.contains("oops"), "{e}");
        assert!(section_ok(&s, "nope").is_err());
    }

    #[test]
    fn quoting_survives_sh() {
        let words = vec![
            "printf".to_string(),
            "%s|".into(),
            "it's a \"test\" $HOME".into(),
        ];
        let line = testbed_section("q", &words);
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{TESTBED_PRELUDE}{line}"))
            .output()
            .unwrap();
        let s = parse_sections(&String::from_utf8_lossy(&out.stdout));
        // printf printed no newline: the END marker shares its line.
        assert_eq!(s["q"].output, "it's a \"test\" $HOME|");
        assert_eq!(s["q"].rc, 0);
        assert!(s.contains_key("outer_kernel"));
    }

    #[test]
    fn inner_bench_args_parse_as_a_bench_command() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(subcommand)]
            c: BenchCommand,
        }
        let a = inner_bench_args("startup", "vm", false, &["--runs".into(), "3".into()]);
        // Drop "duet bench": clap sees the program name then the subcommand.
        let t =
            T::try_parse_from(std::iter::once("bench".to_string()).chain(a[2..].iter().cloned()))
                .unwrap();
        match t.c {
            BenchCommand::Startup { common, startup } => {
                assert_eq!(common.isolation, vec![Isolation::Vm]);
                assert_eq!(common.vm_via, VmVia::Native);
                assert!(common.no_peers);
                assert_eq!(common.report_json.as_deref(), Some(Path::new("-")));
                assert_eq!(startup.runs, 3);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn inner_vm_startup_keeps_its_peers_when_asked() {
        let a = inner_bench_args("startup", "vm", true, &[]);
        assert!(!a.iter().any(|w| w == "--no-peers"), "{a:?}");
        assert!(inner_bench_args("memory", "vm", false, &[])
            .iter()
            .any(|w| w == "--no-peers"));
    }

    #[test]
    fn peer_ratios_compare_rows_of_one_place() {
        let mut r = Report::new(duet_bench::host::collect());
        let row = |label: &str, v: f64| StartupResult {
            wall_ms: duet_bench::stats::summarize(&[v]),
            status: RowStatus::Measured,
            ..StartupResult::unavailable(label, Kind::Vm, "")
        };
        r.startup.push(row("duet vm (testbed)", 3000.0));
        r.startup.push(row("qemu microvm 7.2.22", 100.0));
        assert!(vm_peer_ratios(&r).is_empty(), "native QEMU vs testbed duet");
        r.startup.push(row("qemu microvm 7.2.22 (testbed)", 2000.0));
        let n = vm_peer_ratios(&r);
        assert!(
            n.len() == 1 && n[0].contains("duet/QEMU 1.50x") && n[0].contains("(testbed)"),
            "{n:?}"
        );
        r.startup
            .push(row("firecracker 1.17.0-dev (testbed)", 4000.0));
        let n = vm_peer_ratios(&r);
        assert!(
            n.len() == 2 && n[1].contains("duet/Firecracker 0.75x"),
            "{n:?}"
        );
    }

    #[test]
    fn testbed_ratio_needs_both_rows() {
        let mut r = Report::new(duet_bench::host::collect());
        assert!(testbed_ratio(&r).is_none());
        let row = |label: &str, kind, v: f64| StartupResult {
            wall_ms: duet_bench::stats::summarize(&[v]),
            status: RowStatus::Measured,
            ..StartupResult::unavailable(label, kind, "")
        };
        r.startup.push(row("duet vm (testbed)", Kind::Vm, 5000.0));
        assert!(testbed_ratio(&r).is_none());
        r.startup
            .push(row("duet container (testbed)", Kind::Container, 50.0));
        assert!(testbed_ratio(&r).unwrap().contains("100x"));
    }

    #[test]
    fn doctor_line_is_one_sentence() {
        let d = duet_vmm::doctor::DoctorReport {
            verdict: duet_vmm::doctor::Verdict::Emulated,
            instructions_per_sec: Some(1.5e6),
            iterations: 1,
            loop_time: None,
            cpu_virt_flag: None,
            kvm_modules: vec![],
            error: None,
            advice: "First sentence here. Second one.".into(),
        };
        assert_eq!(doctor_line(&d), "KVM emulated: First sentence here.");
    }
}
