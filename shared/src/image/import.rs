//! Importing tarballs into the store: a plain rootfs tarball (one layer), a
//! `docker save` archive (`manifest.json` + layer tars), or an OCI image
//! layout (`oci-layout`, `index.json`, `blobs/sha256/...`). Layers may be
//! gzip-compressed.
//!
//! The outer archive is unpacked into a scratch directory by the same
//! confined unpacker as layers (see `unpack`) and read from there by
//! `layout`, so a member that is a symlink to `/etc/passwd` or `/dev/zero`
//! reads nothing of the host's and an index that refers to itself ends.

use super::beneath::Beneath;
use super::layout::{import_docker_save, import_oci_layout, DockerManifest};
use super::read_ahead::ReadAhead;
use super::store::{io_err, remove_tree};
use super::unpack::{unpack, unpack_layer_digesting, Flavor};
use super::whiteout::decompressed;
use super::{Image, ImageConfig, ImageError, ImageStore};
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
    tar: impl Read + Send + 'static,
    what: &Path,
) -> Result<String, ImageError> {
    add_layer_reporting(store, tar, what).map(|(d, _)| d)
}

/// [`add_layer`], also returning warnings about what was not unpacked.
pub fn add_layer_reporting(
    store: &ImageStore,
    tar: impl Read + Send + 'static,
    what: &Path,
) -> Result<(String, Vec<String>), ImageError> {
    let scratch = store.scratch("layer")?;
    let result = (|| {
        let fs = scratch.join("fs");
        std::fs::create_dir(&fs).map_err(io_err("cannot create", &fs))?;
        let reader = decompressed(tar).map_err(io_err("cannot read", what))?;
        // Decompressed and hashed on a thread of its own while this one
        // creates the files.
        let ahead = ReadAhead::spawn(reader).map_err(io_err("cannot start reading", what))?;
        let u = unpack_layer_digesting(ahead, &fs, what)?;
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
    super::store::check_name(name)?;
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
                    ..Default::default()
                },
                source: None,
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
