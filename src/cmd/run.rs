//! `duet run`: resolve spec and image, make an instance, hand it to a backend.

use crate::backends;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use duet_shared::image::ImageStore;
use duet_shared::paths::state_root;
use duet_shared::spec::{NetworkMode, PortMapping};
use duet_shared::{InstanceDir, Isolation, Launch, Phase, RunOptions, RunReport, WorkloadSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Report formats for `--report`.
#[derive(Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    /// The phase table (same as --timings).
    Table,
    /// The RunReport as JSON.
    Json,
}

/// Arguments of `duet run`.
#[derive(Args)]
pub struct RunArgs {
    /// container (namespaces on the host kernel) or vm (KVM microVM with its own kernel); overrides the spec.
    #[arg(long)]
    pub isolation: Option<Isolation>,
    /// Workload spec (TOML).
    #[arg(long, conflicts_with = "image")]
    pub spec: Option<PathBuf>,
    /// Image to run when no spec is given (e.g. busybox).
    #[arg(required_unless_present_any = ["spec", "from_snapshot"])]
    pub image: Option<String>,
    /// Start a microVM from a snapshot (`duet snapshot`) instead of booting
    /// one: the workload goes on where it was, with the snapshot's spec. A
    /// snapshot of a VM on the bridge gives its clone a MAC and address of
    /// its own there (-p publishes the clone's ports).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["spec", "image"])]
    pub from_snapshot: Option<PathBuf>,
    /// Start the microVM warm: restore a snapshot of the image's template
    /// (booted once per image, guest kernel, memory and vCPUs, and cached)
    /// and hand the guest this run's workload, instead of booting a kernel.
    /// Implies --isolation vm; on duet's bridge the clone gets its own MAC
    /// and address at the hand-over.
    #[arg(long, conflicts_with = "from_snapshot")]
    pub warm: bool,
    /// When to pull the image from its registry: always, missing (only if
    /// the store lacks it) or never. The built-in `busybox` is never pulled.
    #[arg(long, value_enum, default_value_t = super::pull::PullPolicy::Missing)]
    pub pull: super::pull::PullPolicy,
    #[command(flatten)]
    pub registry: super::pull::RegistryArgs,
    /// Instance name: a handle no other instance may have (see `duet ps`),
    /// and the hostname inside unless --hostname is given.
    #[arg(long)]
    pub name: Option<String>,
    /// Hostname inside (the spec's `name`); not a handle, so many instances may share it.
    #[arg(long)]
    pub hostname: Option<String>,
    /// User to run as: uid[:gid] or name[:group] from the image; overrides the spec and the image.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Memory in MiB (cgroup limit / guest RAM); overrides the spec.
    #[arg(long)]
    pub memory: Option<u64>,
    /// CPUs (cgroup quota / vCPUs); overrides the spec.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Environment KEY=VALUE, added to the spec's.
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Print the phase timeline on stderr after the run.
    #[arg(long)]
    pub timings: bool,
    /// Print the run report on stdout after the run, in this format.
    #[arg(long)]
    pub report: Option<ReportFormat>,
    /// Keep the instance's writable layer after exit (see `duet ps`, `duet commit`).
    #[arg(long)]
    pub keep: bool,
    /// Stop the workload after this many seconds (e.g. 2.5; at most a year).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// VM: show the guest kernel's console log.
    #[arg(long)]
    pub console: bool,
    /// Narrate each step on stderr.
    #[arg(long)]
    pub explain: bool,
    /// Container: put duet's cgroups under this cgroup (a path inside each
    /// hierarchy) instead of under the cgroup duet runs in.
    #[arg(long, value_name = "CGROUP")]
    pub cgroup_parent: Option<PathBuf>,
    /// Give the workload a terminal: a pty of its own (container), or the
    /// guest's console as its terminal at the size of duet's (microVM).
    /// Without it, those of duet's stdin, stdout and stderr that are
    /// terminals reach a container's workload as pipes that duet relays, as
    /// in Docker.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin open for the workload (the default in the foreground; a
    /// detached instance has no stdin).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Detach: leave the workload to a monitor process and print its id once it runs
    /// (see `duet ps`, `logs`, `exec`, `stop`, `wait`, `rm`).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// With -d: restart the workload when it ends: no, on-failure[:N] or always.
    #[arg(long, value_name = "POLICY", default_value = "no", requires = "detach")]
    pub restart: crate::monitor::RestartPolicy,
    /// With -d: remove the instance once it has ended for good.
    #[arg(long, requires = "detach")]
    pub rm: bool,
    /// bridge (an address on duet's bridge, NAT, published ports; the
    /// default), none (only lo) or host (the host's network; containers only).
    #[arg(long)]
    pub network: Option<NetworkMode>,
    /// Publish a port: HOSTPORT:PORT[/tcp|udp], or PORT for a free host
    /// port (see `duet ps`); repeatable; bridge network only.
    #[arg(short = 'p', long = "publish", value_name = "[HOSTPORT:]PORT[/PROTO]")]
    pub publish: Vec<PortMapping>,
    /// A DNS server for the instance's resolv.conf (repeatable; default: the host's).
    #[arg(long)]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Command and arguments, after `--`; default: the spec's or the image's.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Longest `--timeout` accepted: a year (longer is surely a typo).
const MAX_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// `--timeout SECONDS`: a finite, positive number of seconds up to a year.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() {
        return Err(format!("`{s}` is not a finite number of seconds"));
    }
    if secs <= 0.0 {
        return Err(format!("`{s}`: the timeout must be more than 0 seconds"));
    }
    if secs > MAX_TIMEOUT_SECS {
        return Err(format!(
            "`{s}`: the timeout may be at most {MAX_TIMEOUT_SECS} seconds (a year)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The spec kept in the snapshot at `path`; what a restored guest already
/// has in its memory cannot be overridden.
fn snapshot_spec(args: &RunArgs, path: &Path) -> Result<(WorkloadSpec, PathBuf)> {
    for (given, flag) in [
        (!args.command.is_empty(), "a command"),
        (args.hostname.is_some(), "--hostname"),
        (args.user.is_some(), "--user"),
        (args.memory.is_some(), "--memory"),
        (args.vcpus.is_some(), "--vcpus"),
        (!args.env.is_empty(), "--env"),
        (args.network.is_some(), "--network"),
        (!args.dns.is_empty(), "--dns"),
        (args.tty, "-t"),
    ] {
        if given {
            bail!("{flag} does not go with --from-snapshot: the restored guest keeps what it had when the snapshot was taken (on duet's bridge, with an address of its own; -p publishes its ports)");
        }
    }
    if args.isolation == Some(Isolation::Container) {
        bail!("--from-snapshot restores a microVM: --isolation container does not go with it");
    }
    let snap = duet_vmm::runtime::snapshots::open_checked(path)?;
    let user = duet_vmm::runtime::snapshots::SnapshotUser::from_state(&snap.state)
        .with_context(|| path.display().to_string())?;
    let mut spec = user.spec;
    spec.isolation = Some(Isolation::Vm);
    // A clone of a VM on the bridge gets a place of its own there (its
    // guest is told its new MAC and address); ports are the clone's own.
    let bridged = duet_vmm::runtime::snapshots::has_network(&snap);
    spec.network = Some(if bridged {
        NetworkMode::Bridge
    } else {
        NetworkMode::None
    });
    spec.ports = args.publish.clone();
    if !bridged && !spec.ports.is_empty() {
        bail!(
            "{}: --publish: the snapshotted VM had no network device, so its clone has no address to publish",
            path.display()
        );
    }
    Ok((spec, path.to_path_buf()))
}

/// Builds the effective spec from the file or IMAGE plus command-line overrides.
fn effective_spec(args: &RunArgs) -> Result<(WorkloadSpec, PathBuf)> {
    if let Some(p) = &args.from_snapshot {
        return snapshot_spec(args, p);
    }
    let (mut spec, origin) = match &args.spec {
        Some(p) => (WorkloadSpec::load(p)?, p.clone()),
        None => {
            let image = args
                .image
                .as_deref()
                .expect("clap requires IMAGE without --spec");
            (
                WorkloadSpec::for_image(image, Vec::new()),
                PathBuf::from("<command line>"),
            )
        }
    };
    if !args.command.is_empty() {
        spec.command = args.command.clone();
    }
    if let Some(u) = &args.user {
        spec.user = Some(u.clone());
    }
    if let Some(n) = args.hostname.as_ref().or(args.name.as_ref()) {
        spec.name = n.clone();
    }
    if let Some(m) = args.memory {
        spec.resources.memory_mib = m;
    }
    if let Some(v) = args.vcpus {
        spec.resources.vcpus = v;
    }
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env `{kv}`: expected KEY=VALUE");
        };
        spec.env.insert(k.to_string(), v.to_string());
    }
    if let Some(i) = args.isolation {
        spec.isolation = Some(i);
    }
    if let Some(n) = args.network {
        spec.network = Some(n);
    }
    if args.warm {
        warm_spec(&mut spec, &origin)?;
    }
    spec.ports.extend(args.publish.iter().copied());
    spec.dns.extend(args.dns.iter().copied());
    spec.validate(&origin)?;
    Ok((spec, origin))
}

/// `--warm`: a microVM (unless the spec says container: refused).
fn warm_spec(spec: &mut WorkloadSpec, origin: &Path) -> Result<()> {
    if spec.isolation == Some(Isolation::Container) {
        bail!(
            "{}: --warm restores a microVM from a template: it does not go with isolation `container`",
            origin.display()
        );
    }
    spec.isolation = Some(Isolation::Vm);
    Ok(())
}

/// The network the instance gets: the spec's (or `--network`), else the
/// state root's default; `host` is refused for a microVM (a guest has its
/// own kernel and network stack).
fn resolve_network(spec: &mut WorkloadSpec, origin: &Path, root: &Path) -> Result<()> {
    let isolation = spec.isolation.unwrap_or(Isolation::Container);
    let mode = match spec.network {
        Some(m) => m,
        None => duet_network::NetworkConfig::load(root)?.default,
    };
    if isolation == Isolation::Vm && mode == NetworkMode::Host {
        bail!("{}: network `host` is for containers only: a microVM has its own kernel and network stack", origin.display());
    }
    if mode != NetworkMode::Bridge && !spec.ports.is_empty() {
        bail!("{}: field `ports` (-p): ports are published from duet's bridge; network `{mode}` has none", origin.display());
    }
    spec.network = Some(mode);
    Ok(())
}

/// Merges the image's defaults into the spec: the argv as Docker makes it
/// (entrypoint + the given command, or + the image's), env (spec wins),
/// workdir.
pub fn merge_image_defaults(spec: &mut WorkloadSpec, image: &duet_shared::image::Image) {
    spec.command = image.config.argv(&spec.command);
    for kv in &image.config.env {
        if let Some((k, v)) = kv.split_once('=') {
            spec.env
                .entry(k.to_string())
                .or_insert_with(|| v.to_string());
        }
    }
    if spec.user.is_none() {
        spec.user = image.config.user.clone();
    }
    if spec.workdir.is_none() {
        spec.workdir = Some(
            image
                .config
                .workdir
                .clone()
                .unwrap_or_else(|| "/".to_string()),
        );
    }
}

/// The spec's user (or the image's) as `uid:gid`, from the image's
/// /etc/passwd and /etc/group; root stays `None`.
fn resolve_spec_user(
    spec: &mut WorkloadSpec,
    store: &ImageStore,
    image: &duet_shared::image::Image,
    origin: &Path,
) -> Result<()> {
    let Some(u) = spec.user.clone() else {
        return Ok(());
    };
    let (uid, gid, groups) = duet_shared::image::resolve_user(&store.layer_dirs(image), &u)
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: field `user` (image `{}`): {e}",
                origin.display(),
                image.name
            )
        })?;
    spec.user = (uid != 0 || gid != 0 || !groups.is_empty()).then(|| format!("{uid}:{gid}"));
    spec.groups = groups;
    Ok(())
}

/// `duet run`; returns the exit code duet should exit with.
pub fn run(args: RunArgs) -> Result<i32> {
    let (mut spec, origin) = effective_spec(&args)?;
    let root = state_root();
    resolve_network(&mut spec, &origin, &root)?;
    let isolation = spec.isolation.unwrap_or(Isolation::Container);
    let backend = backends::for_isolation(isolation);
    let mut report = RunReport::start(backend.isolation(), &spec.name, &spec.image);
    let store = ImageStore::open(&root)?;
    let image = match &args.from_snapshot {
        // A snapshot's spec had the image's defaults merged when it first ran.
        Some(_) => store.get(&spec.image),
        None => Ok(
            super::pull::resolve_image(&store, &spec.image, args.pull, &args.registry)
                .with_context(|| format!("{}: field `image`", origin.display()))?,
        ),
    }
    .with_context(|| format!("{}: field `image`", origin.display()))?;
    if args.from_snapshot.is_none() {
        // The stored name (`debian` was pulled as `debian:latest`): what a
        // detached instance's monitor and `duet commit` look up later.
        spec.image = image.name.clone();
        merge_image_defaults(&mut spec, &image);
        resolve_spec_user(&mut spec, &store, &image, &origin)?;
    }
    if spec.command.is_empty() {
        bail!(
            "image `{}` has no default command; give one after `--` or in the spec's `command`",
            image.name
        );
    }
    report.mark(Phase::SpecLoaded);
    let options = RunOptions {
        timeout: args.timeout,
        console: args.console,
        explain: args.explain,
        cgroup_parent: args.cgroup_parent.clone(),
        tty: args.tty,
        from_snapshot: args.from_snapshot.clone(),
        warm: args.warm,
    };
    if args.detach {
        return run_detached(&args, &root, &spec, &image, backend.isolation());
    }
    let instance = InstanceDir::create_init(
        &root,
        args.name.as_deref().unwrap_or(&spec.name),
        &image.name,
        backend.isolation(),
        args.name.is_some(),
        |m| m.command = spec.command.clone(),
    )?;
    let mut instance = instance;
    let launch = Launch {
        spec: &spec,
        image: &image,
        layers: store.layer_dirs(&image),
        instance: &instance,
        options: &options,
        network: None,
    };
    let result = run_foreground(backend.as_ref(), &launch, &mut report);
    let exit_code = result.as_ref().ok().map(|e| e.shell_code());
    let keep = args.keep && result.is_ok();
    let cleanup = if keep {
        instance
            .finish(exit_code, true)
            .map_err(anyhow::Error::from)
    } else {
        remove_instance(instance.path())
    };
    report.mark(Phase::CleanedUp);
    let exit = result.map_err(|e| anyhow::anyhow!(e))?;
    cleanup?;
    report.exit = Some(exit);
    if keep {
        eprintln!("duet: kept instance {}", instance.id());
    }
    if args.timings {
        eprint!("{}", report.table());
    }
    match args.report {
        Some(ReportFormat::Json) => println!("{}", report.to_json()),
        Some(ReportFormat::Table) => print!("{}", report.table()),
        None => {}
    }
    Ok(exit.shell_code())
}

/// create + start + wait + delete in this process, recording the
/// workload's pid in the instance (for `duet exec` and `ps`).
fn run_foreground(
    backend: &dyn duet_shared::Runtime,
    launch: &Launch<'_>,
    report: &mut RunReport,
) -> Result<duet_shared::WorkloadExit, duet_shared::runtime::BackendError> {
    let mut inst = backend.create(launch, report)?;
    let ran = inst.start(report).and_then(|()| {
        let pid = inst.pid();
        let mut dir = launch.instance.clone();
        let _ = dir.update(|m| {
            m.state.status = duet_shared::instance::Status::Running;
            m.state.pid = Some(pid);
            m.state.pid_start = duet_shared::instance::process_start_time(pid);
        });
        inst.wait(report)
    });
    let deleted = inst.delete();
    let exit = ran?;
    deleted?;
    Ok(exit)
}

/// `duet run -d`: the instance goes to a monitor; prints its id once it runs.
fn run_detached(
    args: &RunArgs,
    root: &Path,
    spec: &WorkloadSpec,
    image: &duet_shared::image::Image,
    isolation: &str,
) -> Result<i32> {
    use crate::monitor::{self, DetachedLaunch};
    for (given, flag) in [
        (args.keep, "--keep"),
        (args.timings, "--timings"),
        (args.report.is_some(), "--report"),
        (args.explain, "--explain"),
        (args.interactive, "-i"),
    ] {
        if given {
            bail!("{flag} does not go with -d (a detached instance stays until `duet rm`; see `duet inspect` for its timeline)");
        }
    }
    let instance = InstanceDir::create_init(
        root,
        args.name.as_deref().unwrap_or(&spec.name),
        &image.name,
        isolation,
        args.name.is_some(),
        |m| {
            m.command = spec.command.clone();
            m.detached = true;
            m.state.restart_policy = args.restart.to_string();
        },
    )?;
    let prepared = (|| -> Result<()> {
        instance.save_spec(spec)?;
        let cfg = DetachedLaunch {
            timeout_secs: args.timeout.map(|t| t.as_secs_f64()),
            console: args.console,
            cgroup_parent: args.cgroup_parent.clone(),
            restart: args.restart,
            remove: args.rm,
            tty: args.tty,
            from_snapshot: args.from_snapshot.clone(),
            warm: args.warm,
        };
        let p = instance.path().join(monitor::LAUNCH_FILE);
        std::fs::write(&p, serde_json::to_vec_pretty(&cfg)?)
            .with_context(|| format!("writing {}", p.display()))?;
        monitor::spawn(&instance)
    })();
    match prepared {
        Ok(()) => {
            println!("{}", instance.id());
            Ok(0)
        }
        Err(e) => match e.downcast_ref::<monitor::ExitedAtStart>() {
            // The workload ran and ended at once: the instance stays, as it ended.
            Some(x) => {
                eprintln!("duet: {}: {}", instance.id(), x.message);
                Ok(x.code)
            }
            None => {
                let id = instance.id().to_string();
                for b in crate::backends::all() {
                    let _ = b.gc_instance(&id);
                }
                let _ = remove_instance(instance.path());
                Err(e)
            }
        },
    }
}

fn remove_instance(p: &Path) -> Result<()> {
    duet_shared::instance::remove_instance_path(p).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_shared::image::{Image, ImageConfig};

    #[test]
    fn image_defaults_fill_gaps_but_spec_wins() {
        let mut spec = WorkloadSpec::for_image("x", vec![]);
        spec.env.insert("A".into(), "spec".into());
        let img = Image {
            name: "x".into(),
            layers: vec![],
            config: ImageConfig {
                env: vec!["A=image".into(), "B=image".into()],
                cmd: vec!["/bin/sh".into()],
                workdir: Some("/srv".into()),
                ..Default::default()
            },
            source: None,
        };
        merge_image_defaults(&mut spec, &img);
        assert_eq!(spec.command, vec!["/bin/sh"]);
        assert_eq!(spec.env["A"], "spec");
        assert_eq!(spec.env["B"], "image");
        assert_eq!(spec.workdir.as_deref(), Some("/srv"));
    }
}
