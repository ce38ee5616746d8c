//! Importing tarballs into the store: a plain rootfs tarball (one layer), a
//! `docker save` archive (`manifest.json` + layer tars), or an OCI image
//! layout (`oci-layout`, `index.json`, `blobs/sha256/...`). Layers may be
//! gzip-compressed.
//!
//! The outer archive is unpacked into a scratch directory by the same
//! confined unpacker as layers (see `unpack`), and its members (manifests,
//! configs, indexes, layers) are opened beneath that directory only, must be
//! regular files, and JSON members are read up to [`MAX_JSON`] bytes, so a
//! member that is a symlink to `/etc/passwd` or `/dev/zero` reads nothing
//! of the host's and an index that refers to itself ends.

use super::beneath::Beneath;
use super::escape::escaped;
use super::store::{io_err, remove_tree};
use super::unpack::{safe_relative, unpack, Flavor};
use super::whiteout::{decompressed, unpack_layer};
use super::{Image, ImageConfig, ImageError, ImageStore};
use rustix::fs::{FileType, OFlags};
use serde::Deserialize;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Largest JSON member (manifest, index, config, `oci-layout`) read from an archive.
pub const MAX_JSON: u64 = 4 << 20;
/// Deepest chain of nested OCI indexes followed to reach an image manifest.
pub const MAX_INDEX_DEPTH: usize = 8;

/// How `image import` reads its tarball.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImportFormat {
    /// An OCI layout if a valid `oci-layout` and `index.json` are at the top,
    /// a `docker save` archive if a valid `manifest.json` is, else a rootfs.
    #[default]
    Auto,
    /// The tarball is one layer: the root file system itself.
    Rootfs,
    /// A `docker save` archive.
    Docker,
    /// An OCI image layout.
    Oci,
}

impl std::str::FromStr for ImportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ImportFormat::Auto),
            "rootfs" => Ok(ImportFormat::Rootfs),
            "docker" => Ok(ImportFormat::Docker),
            "oci" => Ok(ImportFormat::Oci),
            _ => Err(format!(
                "unknown format `{s}` (auto, rootfs, docker or oci)"
            )),
        }
    }
}

impl std::fmt::Display for ImportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImportFormat::Auto => "auto",
            ImportFormat::Rootfs => "rootfs",
            ImportFormat::Docker => "docker",
            ImportFormat::Oci => "oci",
        })
    }
}

/// Options of [`import_tarball`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// How to read the tarball.
    pub format: ImportFormat,
    /// Replace an existing image of the same name.
    pub force: bool,
}

/// What an import made, and what it did not bring over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The stored image.
    pub image: Image,
    /// The format the tarball was read as (never `Auto`).
    pub format: ImportFormat,
    /// Things the user should know (device nodes not created, skipped entries).
    pub warnings: Vec<String>,
}

/// Adds one layer (tar stream, maybe gzip) to the store; returns its digest.
/// A layer already present is not unpacked again.
pub fn add_layer(
    store: &ImageStore,
    tar: impl Read + 'static,
    what: &Path,
) -> Result<String, ImageError> {
    add_layer_reporting(store, tar, what).map(|(d, _)| d)
}

/// [`add_layer`], also returning warnings about what was not unpacked.
pub(crate) fn add_layer_reporting(
    store: &ImageStore,
    tar: impl Read + 'static,
    what: &Path,
) -> Result<(String, Vec<String>), ImageError> {
    let scratch = store.scratch("layer")?;
    let result = (|| {
        let fs = scratch.join("fs");
        std::fs::create_dir(&fs).map_err(io_err("cannot create", &fs))?;
        let reader = decompressed(tar).map_err(io_err("cannot read", what))?;
        let u = unpack_layer(reader, &fs, what)?;
        let size = scratch.join("size");
        std::fs::write(&size, u.tar_bytes.to_string()).map_err(io_err("cannot write", &size))?;
        let dest = store.layer_path(&u.digest);
        if !dest.join("fs").is_dir() {
            // rename() is atomic; losing a race to another importer of the same layer is fine.
            if let Err(e) = std::fs::rename(&scratch, &dest) {
                if !dest.join("fs").is_dir() {
                    return Err(io_err("cannot store layer", &dest)(e));
                }
            }
        }
        let mut warnings = u.warnings;
        if !u.skipped_devices.is_empty() {
            warnings.push(format!(
                "{}: {} device node(s) not created (duet never creates device nodes from an image; a container gets its own /dev): {}",
                super::escape::shown(what),
                u.skipped_devices.len(),
                u.skipped_devices.join(", ")
            ));
        }
        Ok((u.digest, warnings))
    })();
    remove_tree(&scratch)?;
    result
}

/// Imports `file` as image `name`. An existing image of that name is
/// replaced only with `opts.force`.
pub fn import_tarball(
    store: &ImageStore,
    file: &Path,
    name: &str,
    opts: &ImportOptions,
) -> Result<Imported, ImageError> {
    if !crate::spec::valid_name(name) {
        return Err(ImageError::BadName(name.to_string()));
    }
    if !opts.force && store.contains(name) {
        return Err(ImageError::Exists(name.to_string()));
    }
    let open = || open_regular(file);
    let format = match opts.format {
        ImportFormat::Auto => detect(open()?, file)?,
        f => f,
    };
    let (image, warnings) = match format {
        ImportFormat::Docker | ImportFormat::Oci => {
            let scratch = store.scratch("import")?;
            let r = (|| {
                let reader = decompressed(open()?).map_err(io_err("cannot read", file))?;
                unpack(reader, &scratch, file, Flavor::Outer)?;
                let dir = Beneath::open(&scratch).map_err(io_err("cannot open", &scratch))?;
                if format == ImportFormat::Docker {
                    import_docker_save(store, &dir, file, name)
                } else {
                    import_oci_layout(store, &dir, file, name)
                }
            })();
            remove_tree(&scratch)?;
            r?
        }
        _ => {
            let (digest, warnings) = add_layer_reporting(store, open()?, file)?;
            let image = Image {
                name: name.to_string(),
                layers: vec![digest],
                config: ImageConfig {
                    env: vec![DEFAULT_PATH.to_string()],
                    cmd: vec!["/bin/sh".to_string()],
                    workdir: None,
                },
            };
            (image, warnings)
        }
    };
    store.put(&image)?;
    Ok(Imported {
        image,
        format: if format == ImportFormat::Auto {
            ImportFormat::Rootfs
        } else {
            format
        },
        warnings,
    })
}

/// PATH given to images that do not set one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Opens the tarball given on the command line; a fifo, device or
/// directory is refused (it is read twice, and must end).
fn open_regular(file: &Path) -> Result<File, ImageError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(file)
        .map_err(io_err("cannot open", file))?;
    let m = f.metadata().map_err(io_err("cannot stat", file))?;
    if !m.is_file() {
        return Err(ImageError::Format {
            path: file.to_path_buf(),
            message: "not a regular file".into(),
        });
    }
    Ok(f)
}

/// Reads the first pass over the tarball: which layout it is, if any. A
/// layout is recognized only when its required members parse, so a rootfs
/// that happens to hold an `index.json` or `manifest.json` stays a rootfs.
fn detect(f: File, what: &Path) -> Result<ImportFormat, ImageError> {
    let reader = decompressed(f).map_err(io_err("cannot read", what))?;
    let mut a = tar::Archive::new(reader);
    let bad = |e: std::io::Error| ImageError::Format {
        path: what.to_path_buf(),
        message: format!("not a tar archive: {e}"),
    };
    let mut count = 0usize;
    let mut oci_layout = None;
    let mut has_index = false;
    let mut manifest = None;
    for e in a.entries().map_err(bad)? {
        let mut e = e.map_err(bad)?;
        count += 1;
        let top = {
            let p = e.path().map_err(bad)?;
            let s = p.to_string_lossy();
            s.trim_start_matches("./").trim_end_matches('/').to_string()
        };
        let regular = e.header().entry_type().is_file();
        let small = e.size() <= MAX_JSON;
        let mut body = || -> Result<Vec<u8>, ImageError> {
            let mut v = Vec::new();
            (&mut e).take(MAX_JSON).read_to_end(&mut v).map_err(bad)?;
            Ok(v)
        };
        match top.as_str() {
            "oci-layout" if regular && small => oci_layout = Some(body()?),
            "index.json" if regular => has_index = true,
            "manifest.json" if regular && small => manifest = Some(body()?),
            _ => {}
        }
    }
    if count == 0 {
        return Err(ImageError::Format {
            path: what.to_path_buf(),
            message: "the archive is empty".into(),
        });
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct OciLayoutFile {
        #[allow(dead_code)]
        image_layout_version: String,
    }
    if has_index
        && oci_layout
            .and_then(|b| serde_json::from_slice::<OciLayoutFile>(&b).ok())
            .is_some()
    {
        return Ok(ImportFormat::Oci);
    }
    if manifest
        .and_then(|b| serde_json::from_slice::<Vec<DockerManifest>>(&b).ok())
        .is_some_and(|m| !m.is_empty())
    {
        return Ok(ImportFormat::Docker);
    }
    Ok(ImportFormat::Rootfs)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
}

/// Opens archive member `rel` beneath `dir` (symlinks resolve inside the
/// archive only) and requires a regular file.
fn open_member(dir: &Beneath, rel: &str, what: &Path) -> Result<File, ImageError> {
    let shown = escaped(rel.as_bytes());
    let bad = |message: String| ImageError::Format {
        path: what.to_path_buf(),
        message,
    };
    let p = safe_relative(Path::new(rel))
        .filter(|_| !Path::new(rel).is_absolute())
        .ok_or_else(|| bad(format!("path `{shown}` escapes the archive")))?;
    let fd = dir
        .open_in_root(&p, OFlags::RDONLY | OFlags::NONBLOCK)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                bad(format!(
                    "`{shown}` is missing (or is a symlink that leads nowhere inside the archive)"
                ))
            } else {
                io_err("cannot open archive member", &what.join(rel))(e)
            }
        })?;
    let st =
        rustix::fs::fstat(&fd).map_err(|e| io_err("cannot stat", &what.join(rel))(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(bad(format!("`{shown}` is not a regular file")));
    }
    Ok(File::from(fd))
}

/// Reads and parses JSON member `rel`, at most [`MAX_JSON`] bytes of it.
fn read_json<T: for<'de> Deserialize<'de>>(
    dir: &Beneath,
    rel: &str,
    what: &Path,
) -> Result<T, ImageError> {
    let shown = escaped(rel.as_bytes());
    let bad = |message: String| ImageError::Format {
        path: what.to_path_buf(),
        message,
    };
    let f = open_member(dir, rel, what)?;
    let mut text = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut text)
        .map_err(io_err("cannot read", &what.join(rel)))?;
    if text.len() as u64 > MAX_JSON {
        return Err(bad(format!(
            "`{shown}` is larger than {} MiB, too large for image metadata",
            MAX_JSON >> 20
        )));
    }
    serde_json::from_slice(&text).map_err(|e| bad(format!("bad {shown}: {e}")))
}

fn config_from(cfg: ConfigFile) -> ImageConfig {
    let rc = cfg.config.unwrap_or_default();
    let mut cmd = rc.entrypoint.unwrap_or_default();
    cmd.extend(rc.cmd.unwrap_or_default());
    let mut env = rc.env.unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_string());
    }
    ImageConfig {
        env,
        cmd,
        workdir: rc.working_dir.filter(|w| !w.is_empty()),
    }
}

fn add_layers(
    store: &ImageStore,
    dir: &Beneath,
    paths: &[String],
    what: &Path,
) -> Result<(Vec<String>, Vec<String>), ImageError> {
    let mut digests = Vec::new();
    let mut warnings = Vec::new();
    for rel in paths {
        let f = open_member(dir, rel, what)?;
        let (d, w) = add_layer_reporting(store, f, &what.join(rel))?;
        digests.push(d);
        warnings.extend(w);
    }
    Ok((digests, warnings))
}

fn import_docker_save(
    store: &ImageStore,
    dir: &Beneath,
    what: &Path,
    name: &str,
) -> Result<(Image, Vec<String>), ImageError> {
    let manifests: Vec<DockerManifest> = read_json(dir, "manifest.json", what)?;
    let m = manifests
        .into_iter()
        .next()
        .ok_or_else(|| ImageError::Format {
            path: what.to_path_buf(),
            message: "manifest.json lists no image".into(),
        })?;
    let cfg: ConfigFile = read_json(dir, &m.config, what)?;
    let (layers, warnings) = add_layers(store, dir, &m.layers, what)?;
    let image = Image {
        name: name.to_string(),
        layers,
        config: config_from(cfg),
    };
    Ok((image, warnings))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// `blobs/sha256/<hex>` for a `sha256:<64 hex>` digest; anything else is refused.
fn blob_path(digest: &str, what: &Path) -> Result<String, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ImageError::Format {
            path: what.to_path_buf(),
            message: format!(
                "unsupported digest `{}` (only sha256:<64 hex digits>)",
                escaped(digest.as_bytes())
            ),
        })?;
    Ok(format!("blobs/sha256/{hex}"))
}

fn import_oci_layout(
    store: &ImageStore,
    dir: &Beneath,
    what: &Path,
    name: &str,
) -> Result<(Image, Vec<String>), ImageError> {
    let bad = |message: String| ImageError::Format {
        path: what.to_path_buf(),
        message,
    };
    let mut index: OciIndex = read_json(dir, "index.json", what)?;
    let mut seen = std::collections::HashSet::new();
    // Follow nested indexes (multi-platform) to the first image manifest.
    let manifest: OciManifest = loop {
        let d = index
            .manifests
            .into_iter()
            .next()
            .ok_or_else(|| bad("an index lists no manifest".into()))?;
        let p = blob_path(&d.digest, what)?;
        if d.media_type.contains("index") || d.media_type.contains("manifest.list") {
            if !seen.insert(d.digest.clone()) {
                return Err(bad(format!(
                    "index {} refers back to itself (a cycle of indexes)",
                    escaped(d.digest.as_bytes())
                )));
            }
            if seen.len() > MAX_INDEX_DEPTH {
                return Err(bad(format!(
                    "indexes nest deeper than {MAX_INDEX_DEPTH} levels"
                )));
            }
            index = read_json(dir, &p, what)?;
        } else {
            break read_json(dir, &p, what)?;
        }
    };
    let cfg: ConfigFile = read_json(dir, &blob_path(&manifest.config.digest, what)?, what)?;
    let paths = manifest
        .layers
        .iter()
        .map(|l| blob_path(&l.digest, what))
        .collect::<Result<Vec<_>, _>>()?;
    let (layers, warnings) = add_layers(store, dir, &paths, what)?;
    let image = Image {
        name: name.to_string(),
        layers,
        config: config_from(cfg),
    };
    Ok((image, warnings))
}
