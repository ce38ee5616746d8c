//! The guest's root file system for a VM run: an initramfs built from the
//! image's layers plus duet's guest init, and the kernel command line that
//! starts that init. This is the `DUET_VM_ROOTFS=initramfs` path; by
//! default the layers are virtio-blk disks and the initramfs holds only the
//! init and the run's config ([`crate::disks`]).
//!
//! The initrd is two newc cpio archives loaded back to back (the kernel
//! unpacks concatenated archives in order):
//! 1. the image part, cached under `<DUET_ROOT>/vm/initramfs/<key>.cpio`:
//!    the layers merged bottom first with whiteouts applied, `/duet/init`,
//!    and `/dev/console` if the image has none; built once per layer list
//!    and init binary;
//! 2. the run part, written per instance: `/duet/workload.json`.
//!
//! Both are uncompressed. Measured on the busybox image with a release
//! duet-init: 3.6 MB raw, 1.7 MB with gzip -6, and inflating it took 29 ms on
//! the host, i.e. seconds in the 50-100x slower nested testbed, while the raw
//! archive costs only a copy into guest memory that is freed after unpacking.
//! Each archive's length is a multiple of 4, so the second starts where the
//! first ends. Keep the init small: a debug build with debuginfo is ~25 MB,
//! a release or stripped one ~2 MB.
//!
//! cpio newc has no xattrs: file capabilities and SELinux labels of the image
//! do not reach the guest (issue 4's block-device layers keep them).

pub mod cpio;
pub mod merge;

pub use duet_init::config::{GuestWorkload, INIT_PATH, WORKLOAD_PATH};
use duet_shared::runtime::Launch;
use duet_shared::spec::WorkloadSpec;
use merge::{MergedTree, Node, NodeKind};
use sha2::{Digest, Sha256};
use std::io::{BufWriter, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bumped whenever the image part's layout changes, so old cache files are
/// never reused.
const CACHE_FORMAT: &str = "duet-initramfs-v1";
/// Where the guest init is installed system-wide.
pub const SYSTEM_INIT_PATH: &str = "/usr/local/lib/duet/duet-init";
/// Environment variable naming the guest init binary explicitly.
pub const INIT_ENV: &str = "DUET_INIT";

/// Errors building the initramfs; each names the file or layer involved.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// File system error on a named path.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing one entry of the archive failed.
    #[error("cannot write initramfs entry {}", path.display())]
    Archive {
        /// The entry's path inside the guest.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// cpio newc stores sizes in 32 bits.
    #[error("{} is {size} bytes; an initramfs (cpio newc) holds files up to 4 GiB - 1", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// `layer_dirs` and `layer_digests` do not describe the same layers.
    #[error("{dirs} layer directories but {digests} layer digests")]
    LayerMismatch {
        /// Number of directories.
        dirs: usize,
        /// Number of digests.
        digests: usize,
    },
    /// No guest init binary anywhere duet looks.
    #[error("no guest init binary (duet-init) found; looked at {}. Build it with `cargo build -p duet-init` (it lands next to duet in target/.../debug/), or set {INIT_ENV}=/path/to/duet-init", list_paths(tried))]
    InitNotFound {
        /// Every path tried, in order.
        tried: Vec<PathBuf>,
    },
    /// The init is not a static x86-64 ELF, so the guest could not run it.
    #[error("guest init {} is not a statically linked x86-64 ELF executable ({reason}); build it with `cargo build -p duet-init`, which links it statically", path.display())]
    InitNotStatic {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
}

fn list_paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What [`build_initramfs`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitramfsInfo {
    /// The cached image part (merged layers + init); load it first.
    pub image_cpio: PathBuf,
    /// Whether `image_cpio` was already in the cache.
    pub cache_hit: bool,
    /// Size of `image_cpio` in bytes.
    pub image_bytes: u64,
    /// The per-run part (`out`: the workload config); load it right after.
    pub run_cpio: PathBuf,
    /// Size of `run_cpio` in bytes.
    pub run_bytes: u64,
    /// Time spent in [`build_initramfs`] (cache lookup or merge, plus run part).
    pub elapsed: Duration,
}

impl InitramfsInfo {
    /// The files that make up the initrd, in load order, back to back.
    pub fn parts(&self) -> [&Path; 2] {
        [&self.image_cpio, &self.run_cpio]
    }

    /// Total initrd size: where the run part ends when loaded after the image part.
    pub fn total_bytes(&self) -> u64 {
        self.image_bytes + self.run_bytes
    }

    /// Reads the whole initrd (both parts concatenated) into `buf`, which
    /// must be exactly [`InitramfsInfo::total_bytes`] long (e.g. guest memory).
    pub fn read_into(&self, buf: &mut [u8]) -> Result<(), RootfsError> {
        if buf.len() as u64 != self.total_bytes() {
            return Err(RootfsError::Io {
                what: "initrd buffer size differs from",
                path: self.run_cpio.clone(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        let (first, second) = buf.split_at_mut(self.image_bytes as usize);
        for (path, part) in [(&self.image_cpio, first), (&self.run_cpio, second)] {
            std::fs::File::open(path)
                .and_then(|mut f| f.read_exact(part))
                .map_err(io_err("cannot read initramfs", path))?;
        }
        Ok(())
    }

    /// Writes both parts into one file `dest` (a copy of the image part: ~1 ms
    /// for busybox; loading [`InitramfsInfo::parts`] directly avoids it).
    pub fn concatenate(&self, dest: &Path) -> Result<(), RootfsError> {
        let mut out = std::fs::File::create(dest).map_err(io_err("cannot create initrd", dest))?;
        for part in self.parts() {
            let mut f = std::fs::File::open(part).map_err(io_err("cannot read initramfs", part))?;
            std::io::copy(&mut f, &mut out).map_err(io_err("cannot write initrd", dest))?;
        }
        Ok(())
    }
}

/// Builds the initrd for one VM run: the cached image part for these layers
/// and init (built now if missing) and the per-run part at `out`.
///
/// `store_root` is the state root (`DUET_ROOT`); `layer_dirs` are the unpacked
/// layers bottom first and `layer_digests` their digests, in the same order.
pub fn build_initramfs(
    store_root: &Path,
    layer_dirs: &[PathBuf],
    layer_digests: &[String],
    init_binary: &Path,
    workload: &GuestWorkload,
    out: &Path,
) -> Result<InitramfsInfo, RootfsError> {
    let t0 = Instant::now();
    if layer_dirs.len() != layer_digests.len() {
        return Err(RootfsError::LayerMismatch {
            dirs: layer_dirs.len(),
            digests: layer_digests.len(),
        });
    }
    let key = image_cache_key(layer_digests, init_binary)?;
    let cache_dir = store_root.join("vm/initramfs");
    let image_cpio = cache_dir.join(format!("{key}.cpio"));
    let cache_hit = is_complete_archive(&image_cpio);
    if !cache_hit {
        check_static_elf(init_binary)?;
        std::fs::create_dir_all(&cache_dir)
            .map_err(io_err("cannot create initramfs cache", &cache_dir))?;
        let mut tree = MergedTree::from_layers(layer_dirs)?;
        add_guest_files(&mut tree, init_binary)?;
        write_atomically(&image_cpio, |w| tree.write_cpio(w))?;
    }
    let image_bytes = std::fs::metadata(&image_cpio)
        .map_err(io_err("cannot stat", &image_cpio))?
        .len();
    let run_bytes = write_run_cpio(workload, out)?;
    Ok(InitramfsInfo {
        image_cpio,
        cache_hit,
        image_bytes,
        run_cpio: out.to_path_buf(),
        run_bytes,
        elapsed: t0.elapsed(),
    })
}

/// `PATH` a workload gets when neither spec nor image sets one (duet-container's too).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The guest config of a launch: [`guest_workload`] of its spec, with the
/// console as the workload's terminal when the run asked for one (`-t`),
/// at the size of duet's own terminal (80x24 without one).
pub fn launch_workload(launch: &duet_shared::runtime::Launch<'_>) -> GuestWorkload {
    let mut w = guest_workload(launch.spec, launch.network);
    if launch.options.tty {
        let (rows, cols) = crate::agent::terminal_size().unwrap_or((24, 80));
        w.tty = Some(duet_init::config::TtySize { rows, cols });
        // As `docker run -t` sets it: programs then know what they talk to.
        if !w.env.iter().any(|e| e.starts_with("TERM=")) {
            w.env.push("TERM=xterm".into());
            w.env.sort();
        }
    }
    w
}

/// The guest config for a resolved spec (image defaults already merged in),
/// with the same environment a container gets: the spec's env plus `PATH`,
/// `HOSTNAME` (= the instance name, also the guest's hostname) and
/// `HOME=/root` where missing, sorted by name.
pub fn guest_workload(
    spec: &WorkloadSpec,
    network: Option<&duet_shared::runtime::VmNetwork>,
) -> GuestWorkload {
    let mut env = spec.env.clone();
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    env.entry("HOSTNAME".into())
        .or_insert_with(|| spec.name.clone());
    env.entry("HOME".into()).or_insert_with(|| "/root".into());
    GuestWorkload {
        argv: spec.command.clone(),
        env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        workdir: spec.workdir.clone().unwrap_or_else(|| "/".into()),
        hostname: spec.name.clone(),
        pids_max: spec.resources.pids_max,
        // The VM has a vsock device (runtime.rs): `duet exec` reaches it.
        agent: true,
        user: spec.user_ids().map(|u| duet_init::config::GuestUser {
            uid: u.uid,
            gid: u.gid,
            additional_gids: u.groups,
        }),
        files: network
            .map(|n| {
                [
                    ("/etc/resolv.conf", &n.resolv_conf),
                    ("/etc/hosts", &n.hosts),
                ]
                .into_iter()
                .map(|(path, content)| duet_init::files::GuestFile {
                    path: path.into(),
                    content: content.clone().into_bytes(),
                    read_only: false,
                })
                .collect()
            })
            .unwrap_or_default(),
        network: network.map(|n| duet_init::config::GuestNetwork {
            address: n.address,
            prefix: n.prefix,
            gateway: Some(n.gateway),
            mac: Some(n.mac),
        }),
        template: false,
        tty: None,
    }
}

/// [`build_initramfs`] for a backend's [`Launch`], plus the two parts joined
/// into one file for a loader that takes a single initrd: returns the info
/// and `<instance dir>/initrd.cpio` (the run part is `workload.cpio` there).
pub fn build_for_launch(
    store_root: &Path,
    launch: &Launch<'_>,
    init_binary: &Path,
) -> Result<(InitramfsInfo, PathBuf), RootfsError> {
    let dir = launch.instance.path();
    let info = build_initramfs(
        store_root,
        &launch.layers,
        &launch.image.layers,
        init_binary,
        &launch_workload(launch),
        &dir.join("workload.cpio"),
    )?;
    let initrd = dir.join("initrd.cpio");
    info.concatenate(&initrd)?;
    Ok((info, initrd))
}

/// The cache file name for a layer list and init binary (hex sha256).
///
/// The init enters by identity (device, inode, size, mtime, ctime), not by
/// content: hashing a ~25 MB debug build of it would cost every run far more
/// than the stat, and any rebuild or replacement changes its ctime, so a stale
/// image part can never be served.
pub fn image_cache_key(
    layer_digests: &[String],
    init_binary: &Path,
) -> Result<String, RootfsError> {
    let m =
        std::fs::metadata(init_binary).map_err(io_err("cannot stat guest init", init_binary))?;
    let mut h = Sha256::new();
    h.update(CACHE_FORMAT.as_bytes());
    for d in layer_digests {
        h.update(b"\nlayer ");
        h.update(d.as_bytes());
    }
    h.update(
        format!(
            "\ninit {} {} {} {}.{} {}.{}",
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        )
        .as_bytes(),
    );
    Ok(hex::encode(h.finalize()))
}

/// Adds what duet puts into every guest: `/duet/init`, and `/dev/console`
/// (so the kernel can give the init its stdio) if the image lacks one.
fn add_guest_files(tree: &mut MergedTree, init_binary: &Path) -> Result<(), RootfsError> {
    let m =
        std::fs::metadata(init_binary).map_err(io_err("cannot stat guest init", init_binary))?;
    let duet_dir = Path::new(INIT_PATH.trim_start_matches('/'))
        .parent()
        .expect("INIT_PATH has a directory")
        .to_path_buf();
    tree.put(duet_dir, Node::dir(0o755));
    tree.put(
        PathBuf::from(INIT_PATH.trim_start_matches('/')),
        Node {
            kind: NodeKind::File {
                source: init_binary.to_path_buf(),
                size: m.len(),
                link: None,
            },
            mode: libc::S_IFREG | 0o755,
            uid: 0,
            gid: 0,
            mtime: m.mtime(),
        },
    );
    if tree
        .get(Path::new("dev"))
        .is_none_or(|n| n.kind != NodeKind::Dir)
    {
        tree.put(PathBuf::from("dev"), Node::dir(0o755));
    }
    if tree.get(Path::new("dev/console")).is_none() {
        tree.put(
            PathBuf::from("dev/console"),
            Node {
                kind: NodeKind::Special {
                    rdev: libc::makedev(5, 1),
                },
                mode: libc::S_IFCHR | 0o600,
                uid: 0,
                gid: 0,
                mtime: 0,
            },
        );
    }
    Ok(())
}

/// Writes the per-run archive (`/duet/workload.json`) to `out`; returns its size.
fn write_run_cpio(workload: &GuestWorkload, out: &Path) -> Result<u64, RootfsError> {
    let json = workload.to_json();
    if json.len() > duet_init::config::MAX_CONFIG_BYTES {
        return Err(RootfsError::TooLarge {
            path: PathBuf::from(WORKLOAD_PATH),
            size: json.len() as u64,
        });
    }
    let h = cpio::CpioHeader {
        ino: 1,
        mode: libc::S_IFREG | 0o644,
        nlink: 1,
        filesize: json.len() as u32,
        ..Default::default()
    };
    let f = std::fs::File::create(out).map_err(io_err("cannot create initramfs", out))?;
    let mut w = cpio::CpioWriter::new(BufWriter::new(f));
    w.entry(&h, WORKLOAD_PATH.trim_start_matches('/').as_bytes(), &json)
        .and_then(|()| w.finish())
        .map_err(io_err("cannot write initramfs", out))?;
    Ok(std::fs::metadata(out)
        .map_err(io_err("cannot stat", out))?
        .len())
}

/// Writes an archive to a temporary name next to `dest` and renames it into
/// place, so a concurrent or interrupted build never leaves a partial file.
fn write_atomically(
    dest: &Path,
    fill: impl FnOnce(&mut cpio::CpioWriter<BufWriter<std::fs::File>>) -> Result<(), RootfsError>,
) -> Result<(), RootfsError> {
    let tmp = dest.with_extension(format!(
        "cpio.tmp.{}.{}",
        std::process::id(),
        duet_shared::clock::monotonic_ns()
    ));
    let result = (|| {
        let f = std::fs::File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
        let mut w = cpio::CpioWriter::new(BufWriter::with_capacity(1 << 18, f));
        fill(&mut w)?;
        w.finish().map_err(io_err("cannot write", &tmp))?;
        std::fs::rename(&tmp, dest).map_err(io_err("cannot move initramfs into place:", dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether `p` exists and ends with a cpio trailer (a complete archive).
fn is_complete_archive(p: &Path) -> bool {
    // Trailer entry: 110-byte header + "TRAILER!!!\0", padded to 124 bytes.
    const TRAILER_ENTRY: u64 = 124;
    let Ok(mut f) = std::fs::File::open(p) else {
        return false;
    };
    let mut tail = [0u8; TRAILER_ENTRY as usize];
    f.seek(SeekFrom::End(-(TRAILER_ENTRY as i64)))
        .and_then(|_| f.read_exact(&mut tail))
        .is_ok()
        && tail.starts_with(b"070701")
        && &tail[110..121] == b"TRAILER!!!\0"
}

/// Checks that `p` is an x86-64 ELF executable without a program interpreter.
fn check_static_elf(p: &Path) -> Result<(), RootfsError> {
    let bad = |reason| RootfsError::InitNotStatic {
        path: p.to_path_buf(),
        reason,
    };
    let mut f = std::fs::File::open(p).map_err(io_err("cannot open guest init", p))?;
    let mut ehdr = [0u8; 64];
    f.read_exact(&mut ehdr)
        .map_err(|_| bad("too short for an ELF header"))?;
    if &ehdr[..4] != b"\x7fELF" {
        return Err(bad("no ELF magic"));
    }
    // ELFCLASS64, little endian, EM_X86_64.
    if ehdr[4] != 2 || ehdr[5] != 1 || u16::from_le_bytes([ehdr[18], ehdr[19]]) != 62 {
        return Err(bad("not a 64-bit little-endian x86-64 ELF"));
    }
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().expect("8 bytes"));
    let phentsize = u64::from(u16::from_le_bytes([ehdr[54], ehdr[55]]));
    let phnum = u64::from(u16::from_le_bytes([ehdr[56], ehdr[57]]));
    if phentsize < 4 {
        return Err(bad("malformed program headers"));
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff))
        .and_then(|_| f.read_exact(&mut ph))
        .map_err(|_| bad("truncated program headers"))?;
    const PT_INTERP: u32 = 3;
    if ph
        .chunks(phentsize as usize)
        .any(|e| u32::from_le_bytes(e[..4].try_into().expect("4 bytes")) == PT_INTERP)
    {
        return Err(bad("it is dynamically linked"));
    }
    Ok(())
}

/// Finds the guest init: `$DUET_INIT`, else `duet-init` next to the running
/// executable (or one directory up when that is cargo's `deps/`), else the
/// installed one: `<prefix>/lib/duet/duet-init` for `<prefix>/bin/duet`, then
/// [`SYSTEM_INIT_PATH`].
pub fn find_init_binary() -> Result<PathBuf, RootfsError> {
    if let Some(p) = std::env::var_os(INIT_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RootfsError::InitNotFound { tried: vec![p] })
        };
    }
    let mut tried = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        tried.push(dir.join("duet-init"));
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(up) = dir.parent() {
                tried.push(up.join("duet-init"));
            }
        }
    }
    // Installed: <prefix>/lib/duet/duet-init beside <prefix>/bin/duet, then SYSTEM_INIT_PATH.
    tried.extend(duet_shared::paths::installed("duet-init"));
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(RootfsError::InitNotFound { tried }),
    }
}

/// The guest kernel command line for a duet-init guest: the VMM's
/// [`crate::BASE_CMDLINE`] (serial console, `reboot=k`, `panic=-1`, no
/// probing of absent hardware) plus what the init needs, before any device
/// options (e.g. `virtio_mmio.device=`) the VMM appends:
///
/// - `rdinit=/duet/init`: duet's init runs from the initramfs;
/// - unless `kernel_log`, `quiet loglevel=1`: only emergencies (a panic) reach
///   the console, so the kernel log stays off the workload's output.
pub fn kernel_cmdline(kernel_log: bool) -> String {
    format!(
        "{} rdinit={INIT_PATH} {}",
        crate::BASE_CMDLINE,
        if kernel_log {
            "loglevel=7"
        } else {
            "quiet loglevel=1"
        }
    )
}

#[cfg(test)]
mod tests;
