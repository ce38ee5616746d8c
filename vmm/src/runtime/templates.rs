//! Warm start (`duet run --isolation vm --warm`): a microVM restored from
//! a template snapshot instead of booted.
//!
//! A template is the image booted once with duet-init in template mode: it
//! mounts the root (layer disks + a fresh scratch disk), then waits on
//! vsock port [`WARM_PORT`] ([`duet_init::warm`]). duet probes that port
//! until the guest accepts, snapshots the VM through its control socket
//! and ends it. Every warm run then restores the template like `--from-
//! snapshot` does (RAM mapped copy-on-write, its own copy of the scratch
//! disk) and hands the guest a [`WarmStart`]: its workload, a fresh RNG
//! seed, the wall clock and a new machine id.
//!
//! A clone on duet's bridge restores a template that has a network device
//! (on no bridge: see [`template_network`]) with its own tap, and its
//! guest configures `eth0` at the hand-over with the clone's MAC and
//! lease, as a cold boot would.
//!
//! Templates live in `<root>/templates/<key>.snap`, keyed by everything
//! the template's guest already depends on ([`TemplateKey`]): duet (its
//! version and binary), the guest kernel and init, the kernel command line,
//! the image's layers, guest memory and vCPUs. Any change gives another
//! key, so a new template is built on the next warm run; `duet gc` removes
//! templates whose key no longer matches, `duet image rm` those of the
//! image. Builds of one key are serialised by `<key>.lock`; the file
//! appears only complete (written beside, then renamed).

use super::{snapshots, Boot, VmRuntime, VmRuntimeError};
use crate::agent::{self, AgentError};
use crate::control::{self, ControlError};
use duet_init::config::WarmStart;
use duet_shared::guest_abi::WARM_PORT;
use duet_shared::{Instance, InstanceDir, Launch, RunOptions, RunReport};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The templates' directory under the state root.
pub const DIR: &str = "templates";
/// How long a template guest may take to reach the warm-start wait (a
/// nested, emulated testbed boots in seconds; hardware KVM in well under one).
const BOOT_WAIT: Duration = Duration::from_secs(120);
/// How long a clone may take to accept its workload.
const HANDOVER_WAIT: Duration = Duration::from_secs(30);

/// Everything a template's guest already depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateKey {
    /// duet's version and the identity of its binary (a rebuilt duet may
    /// have another device model).
    pub duet: String,
    /// The guest kernel's identity ([`snapshots::kernel_identity`]).
    pub kernel: String,
    /// duet-init's identity.
    pub init: String,
    /// The kernel command line the template booted with.
    pub cmdline: String,
    /// The image's layer digests, bottom first.
    pub layers: Vec<String>,
    /// Guest RAM.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Whether it has a network device (a clone on duet's bridge needs one;
    /// its guest configures it, with the clone's MAC, at the hand-over).
    #[serde(default)]
    pub network: bool,
}

impl TemplateKey {
    /// The file-name key: the first 32 hex digits of the SHA-256 of the key's JSON.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("a key serialises");
        hex::encode(&Sha256::digest(&json)[..16])
    }
}

/// What `<key>.json` beside a template says about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateMeta {
    /// Its key.
    pub key: TemplateKey,
    /// The image it was built from (by name, at the time).
    pub image: String,
    /// When it was written (ms since the epoch).
    pub created_ms: u64,
    /// How long the build took (boot to the wait + snapshot), ms.
    pub build_ms: u64,
}

/// Errors of a template build or a warm start's hand-over.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file of the template cache.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The template's instance directory.
    #[error("the template's instance")]
    Instance(#[from] duet_shared::instance::InstanceError),
    /// The template VM did not start.
    #[error("booting the template VM")]
    Boot(#[source] Box<VmRuntimeError>),
    /// The template VM ended or failed on its way to the wait.
    #[error("the template VM did not reach the warm-start wait: {0}")]
    NotReady(String),
    /// The snapshot of the template failed.
    #[error("the template's snapshot")]
    Snapshot(#[from] ControlError),
    /// The clone did not take its workload.
    #[error("handing the workload to the restored guest")]
    Handover(#[source] AgentError),
    /// The clone answered the hand-over with something else than `ok`.
    #[error("the restored guest refused its workload: {0}")]
    Refused(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `<root>/templates`.
pub fn dir(root: &Path) -> PathBuf {
    root.join(DIR)
}

/// The identity of duet itself: version and the running binary.
fn duet_identity() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| snapshots::kernel_identity(&p))
        .unwrap_or_else(|| "unknown binary".into());
    format!("{} {exe}", env!("CARGO_PKG_VERSION"))
}

/// The key of `launch`'s template, booted as `cfg` says with `init`.
pub fn key_for(
    launch: &Launch<'_>,
    cfg: &crate::VmConfig,
    init: &Path,
) -> Result<TemplateKey, VmRuntimeError> {
    let unknown = |what: &str, p: &Path| {
        VmRuntimeError::Vmm(crate::VmmError::Snapshot(
            crate::snapshot::SnapshotError::Invalid(format!(
                "cannot read the {what} {} for a warm-start template",
                p.display()
            )),
        ))
    };
    Ok(TemplateKey {
        duet: duet_identity(),
        kernel: cfg
            .snapshots
            .kernel_identity
            .clone()
            .ok_or_else(|| unknown("guest kernel", &cfg.kernel))?,
        init: snapshots::kernel_identity(init).ok_or_else(|| unknown("guest init", init))?,
        cmdline: cfg.cmdline.clone(),
        layers: launch.image.layers.clone(),
        memory_mib: cfg.memory_mib,
        vcpus: cfg.vcpus,
        network: launch.network.is_some(),
    })
}

/// The network device of a template whose clones go on duet's bridge: a
/// datagram socket pair's end as its "tap", on no bridge at all. The
/// template's guest never configures `eth0` (it is snapshotted before), so
/// nothing is sent; each clone gets a tap of its own at restore. The other
/// end is returned, to keep open while the template runs (a closed peer
/// would make the "tap" readable at end of file forever).
fn template_network() -> Result<
    (
        duet_shared::runtime::VmNetwork,
        std::os::unix::net::UnixDatagram,
    ),
    TemplateError,
> {
    let (tap, peer) =
        std::os::unix::net::UnixDatagram::pair().map_err(|source| TemplateError::Io {
            path: PathBuf::from("<the template's network device>"),
            source,
        })?;
    let unset = std::net::Ipv4Addr::UNSPECIFIED;
    Ok((
        duet_shared::runtime::VmNetwork {
            tap: std::sync::Arc::new(std::os::fd::OwnedFd::from(tap)),
            mac: [0x02, 0xd0, 0, 0, 0, 0],
            address: unset,
            prefix: 0,
            gateway: unset,
            resolv_conf: String::new(),
            hosts: String::new(),
        },
        peer,
    ))
}

/// An exclusive flock(2) on a file, held until drop.
struct Lock(#[allow(dead_code)] std::fs::File);

impl Lock {
    fn take(path: &Path) -> Result<Lock, TemplateError> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        duet_shared::paths::flock_exclusive(&f).map_err(io(path))?;
        Ok(Lock(f))
    }
}

/// The template for `key`: the cached file, or one built now from
/// `launch`'s image (`true` when built).
pub fn ensure(
    runtime: &VmRuntime,
    launch: &Launch<'_>,
    key: &TemplateKey,
) -> Result<(PathBuf, bool), TemplateError> {
    let root = launch.instance.state_root();
    let dir = dir(root);
    duet_shared::paths::make_private(root).map_err(io(root))?;
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let hash = key.hash();
    let path = dir.join(format!("{hash}.snap"));
    if path.is_file() {
        return Ok((path, false));
    }
    let _lock = Lock::take(&dir.join(format!("{hash}.lock")))?;
    // Another run may have built it while this one waited for the lock.
    if path.is_file() {
        return Ok((path, false));
    }
    let started = Instant::now();
    let tmp = dir.join(format!(".{hash}.{}.tmp", std::process::id()));
    let built = build(runtime, launch, &tmp);
    if let Err(e) = built {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let meta = TemplateMeta {
        key: key.clone(),
        image: launch.image.name.clone(),
        created_ms: duet_shared::instance::unix_ms(),
        build_ms: started.elapsed().as_millis() as u64,
    };
    // The metadata first: `gc` removes a template without it.
    let mp = dir.join(format!("{hash}.json"));
    let placed = std::fs::write(
        &mp,
        serde_json::to_vec_pretty(&meta).expect("meta serialises"),
    )
    .map_err(io(&mp))
    .and_then(|()| std::fs::rename(&tmp, &path).map_err(io(&path)));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if launch.options.explain {
        eprintln!(
            "duet: built the warm-start template {} of image `{}` in {:.2}s",
            path.display(),
            launch.image.name,
            started.elapsed().as_secs_f64()
        );
    }
    Ok((path, true))
}

/// Boots the template VM in an instance of its own (so `duet gc` finds it
/// after a crash), snapshots it at the wait into `out`, and ends it.
fn build(runtime: &VmRuntime, launch: &Launch<'_>, out: &Path) -> Result<(), TemplateError> {
    let root = launch.instance.state_root();
    let inst = InstanceDir::create(root, "template", &launch.image.name, "vm")?;
    let options = RunOptions {
        console: launch.options.console,
        explain: launch.options.explain,
        cgroup_parent: launch.options.cgroup_parent.clone(),
        ..Default::default()
    };
    let (network, _peer) = match launch.network {
        Some(_) => {
            let (n, peer) = template_network()?;
            (Some(n), Some(peer))
        }
        None => (None, None),
    };
    let tlaunch = Launch {
        spec: launch.spec,
        image: launch.image,
        layers: launch.layers.clone(),
        instance: &inst,
        options: &options,
        network: network.as_ref(),
    };
    let mut report = RunReport::start("vm", &launch.spec.name, &launch.spec.image);
    let result = (|| {
        let mut vm = runtime
            .create_vm(&tlaunch, &mut report, Boot::Template)
            .map_err(|e| TemplateError::Boot(Box::new(e)))?;
        let r = vm
            .start(&mut report)
            .map_err(|e| TemplateError::NotReady(e.to_string()))
            .and_then(|()| snapshot_at_wait(&mut vm, &inst, out, &mut report));
        let _ = Box::new(vm).delete();
        r
    })();
    let _ = inst.remove();
    result
}

/// Whether the VM's thread has signalled its end (a non-blocking poll of its eventfd).
fn ended(vm: &super::Vm) -> bool {
    let mut p = libc::pollfd {
        fd: vm.exit_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

fn snapshot_at_wait(
    vm: &mut super::Vm,
    inst: &InstanceDir,
    out: &Path,
    report: &mut RunReport,
) -> Result<(), TemplateError> {
    let sock = inst.path().join(agent::SOCKET);
    let deadline = Instant::now() + BOOT_WAIT;
    loop {
        if ended(vm) {
            let why = match vm.wait(report) {
                Ok(exit) => format!("it ended first ({exit:?})"),
                Err(e) => {
                    let mut m = e.to_string();
                    let mut src = std::error::Error::source(e.as_ref());
                    while let Some(s) = src {
                        m.push_str(&format!(": {s}"));
                        src = s.source();
                    }
                    m
                }
            };
            return Err(TemplateError::NotReady(why));
        }
        // The probe: accepted, then closed without a byte (the guest waits on).
        match agent::open_port(inst.id(), &sock, WARM_PORT, Duration::from_millis(500)) {
            Ok(stream) => {
                drop(stream);
                break;
            }
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(TemplateError::NotReady(format!(
                    "no answer on vsock port {WARM_PORT} within {}s: {e}",
                    BOOT_WAIT.as_secs()
                )))
            }
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(io(out))?;
    let control = inst.path().join(control::SOCKET);
    // The probe's connection is torn down by the guest a moment later; a
    // snapshot refuses open connections, so it is retried until then.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match control::snapshot(&control, &file) {
            Ok(_) => return file.sync_all().map_err(io(out)),
            Err(ControlError::Refused(m)) if m.contains("vsock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What a clone is handed: the workload, and what must differ per clone.
pub fn warm_start(workload: duet_init::GuestWorkload) -> WarmStart {
    let mut seed = vec![0u8; 64];
    let mut id = [0u8; 16];
    for buf in [&mut seed[..], &mut id[..]] {
        // SAFETY: getrandom writes at most buf.len() bytes into buf.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert_eq!(n, buf.len() as isize, "getrandom failed");
    }
    WarmStart {
        workload,
        seed,
        unix_time_ns: 0,
        machine_id: hex::encode(id),
    }
}

/// Hands `warm` to the restored guest of `dir` (its agent socket), with
/// the wall clock of now; waits for its `ok`.
pub fn hand_over(id: &str, dir: &Path, mut warm: WarmStart) -> Result<(), TemplateError> {
    let sock = dir.join(agent::SOCKET);
    let mut stream =
        agent::open_port(id, &sock, WARM_PORT, HANDOVER_WAIT).map_err(TemplateError::Handover)?;
    warm.unix_time_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut line = serde_json::to_vec(&warm).expect("a warm start serialises");
    line.push(b'\n');
    let lost = |source| {
        TemplateError::Handover(AgentError::Io {
            id: id.to_string(),
            source,
        })
    };
    stream.set_read_timeout(Some(HANDOVER_WAIT)).map_err(lost)?;
    stream.write_all(&line).map_err(lost)?;
    // The guest's answer is a word or a message: at most 4 KiB of it.
    let mut answer = String::new();
    BufReader::new(std::io::Read::take(&stream, 4096))
        .read_line(&mut answer)
        .map_err(lost)?;
    match answer.trim_end() {
        "ok" => Ok(()),
        "" => Err(TemplateError::Refused(
            "it closed the connection without an answer".into(),
        )),
        other => Err(TemplateError::Refused(other.to_string())),
    }
}

/// The templates in `root`, with their metadata (unreadable ones as `None`).
pub fn list(root: &Path) -> Vec<(PathBuf, Option<TemplateMeta>)> {
    let Ok(rd) = std::fs::read_dir(dir(root)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "snap") {
            let meta = std::fs::read(p.with_extension("json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            out.push((p, meta));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Removes one template (its snapshot, metadata and lock file).
pub fn remove(path: &Path) -> std::io::Result<()> {
    std::fs::remove_file(path)?;
    let _ = std::fs::remove_file(path.with_extension("json"));
    let _ = std::fs::remove_file(path.with_extension("lock"));
    Ok(())
}

/// Removes the templates built from an image with these layers (`duet
/// image rm`); returns how many.
pub fn remove_for_layers(root: &Path, layers: &[String]) -> usize {
    list(root)
        .into_iter()
        .filter(|(_, m)| m.as_ref().is_some_and(|m| m.key.layers == layers))
        .filter(|(p, _)| remove(p).is_ok())
        .count()
}

/// Removes the templates whose key `stale` says no longer holds (or whose
/// metadata is unreadable), and partial builds of processes that are gone.
/// Returns what it removed.
pub fn gc(root: &Path, stale: impl Fn(&TemplateKey) -> bool) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for (p, meta) in list(root) {
        if meta.is_none_or(|m| stale(&m.key)) && remove(&p).is_ok() {
            removed.push(p);
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir(root)) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_suffix(".tmp")
                .and_then(|n| n.rsplit('.').next())
                .and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|p| duet_shared::instance::process_start_time(p).is_none())
                && std::fs::remove_file(e.path()).is_ok()
            {
                removed.push(e.path());
            }
        }
    }
    removed
}

/// What a template's key must match to be of use now: this duet, the
/// guest kernel and init it would boot, and an image in the store.
/// Looked up once for all templates (`duet gc`).
pub struct Current {
    duet: String,
    kernel: Option<String>,
    init: Option<String>,
    images: Vec<Vec<String>>,
}

impl Current {
    /// This duet, kernel and init; `images` are the store's images' layers.
    pub fn now(images: Vec<Vec<String>>) -> Current {
        Current {
            duet: duet_identity(),
            kernel: super::find_kernel()
                .ok()
                .and_then(|k| snapshots::kernel_identity(&k)),
            init: crate::rootfs::find_init_binary()
                .ok()
                .and_then(|i| snapshots::kernel_identity(&i)),
            images,
        }
    }

    /// Whether `key` still matches.
    pub fn matches(&self, key: &TemplateKey) -> bool {
        key.duet == self.duet
            && self.kernel.as_deref() == Some(key.kernel.as_str())
            && self.init.as_deref() == Some(key.init.as_str())
            && self.images.contains(&key.layers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TemplateKey {
        TemplateKey {
            duet: "0.1.0 duet size 1".into(),
            kernel: "vmlinux size 2".into(),
            init: "duet-init size 3".into(),
            cmdline: "console=ttyS0".into(),
            layers: vec!["aa".into(), "bb".into()],
            memory_mib: 256,
            vcpus: 1,
            network: false,
        }
    }

    #[test]
    fn every_part_of_the_key_changes_its_hash() {
        let base = key().hash();
        assert_eq!(base.len(), 32);
        assert_eq!(base, key().hash());
        let variants: [fn(&mut TemplateKey); 8] = [
            |k| k.duet.push('x'),
            |k| k.kernel.push('x'),
            |k| k.init.push('x'),
            |k| k.cmdline.push_str(" quiet"),
            |k| k.layers.push("cc".into()),
            |k| k.memory_mib = 512,
            |k| k.vcpus = 2,
            |k| k.network = true,
        ];
        for change in variants {
            let mut k = key();
            change(&mut k);
            assert_ne!(k.hash(), base, "{k:?}");
        }
    }

    #[test]
    fn gc_removes_stale_templates_and_dead_partials_only() {
        let root = tempfile::tempdir().unwrap();
        let d = dir(root.path());
        std::fs::create_dir_all(&d).unwrap();
        let write = |name: &str, k: &TemplateKey| {
            let p = d.join(format!("{name}.snap"));
            std::fs::write(&p, b"x").unwrap();
            let m = TemplateMeta {
                key: k.clone(),
                image: "img".into(),
                created_ms: 0,
                build_ms: 0,
            };
            std::fs::write(p.with_extension("json"), serde_json::to_vec(&m).unwrap()).unwrap();
            p
        };
        let keep = write("keep", &key());
        let mut old = key();
        old.kernel = "an old kernel".into();
        let stale = write("stale", &old);
        let no_meta = d.join("nometa.snap");
        std::fs::write(&no_meta, b"x").unwrap();
        // A partial build of a live process (this one) and of a dead one.
        let live = d.join(format!(".k.{}.tmp", std::process::id()));
        std::fs::write(&live, b"x").unwrap();
        let dead = d.join(".k.999999999.tmp");
        std::fs::write(&dead, b"x").unwrap();
        let removed = gc(root.path(), |k| k.kernel != key().kernel);
        assert!(keep.exists() && live.exists());
        assert!(!stale.exists() && !stale.with_extension("json").exists());
        assert!(!no_meta.exists() && !dead.exists());
        assert_eq!(removed.len(), 3, "{removed:?}");
    }
}
