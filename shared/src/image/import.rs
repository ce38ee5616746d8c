//! Importing tarballs into the store: a plain rootfs tarball (one layer), a
//! `docker save` archive (`manifest.json` + layer tars), or an OCI image
//! layout (`oci-layout`, `index.json`, `blobs/sha256/...`). Layers may be
//! gzip-compressed.

use super::store::{io_err, remove_tree};
use super::whiteout::{decompressed, unpack_layer};
use super::{Image, ImageConfig, ImageError, ImageStore};
use serde::Deserialize;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Adds one layer (tar stream, maybe gzip) to the store; returns its digest.
/// A layer already present is not unpacked again.
pub fn add_layer(
    store: &ImageStore,
    tar: impl Read + 'static,
    what: &Path,
) -> Result<String, ImageError> {
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
        Ok(u.digest)
    })();
    remove_tree(&scratch)?;
    result
}

/// Imports `file` as image `name` (replacing an image of that name).
pub fn import_tarball(store: &ImageStore, file: &Path, name: &str) -> Result<Image, ImageError> {
    if !crate::spec::valid_name(name) {
        return Err(ImageError::BadName(name.to_string()));
    }
    let open = || File::open(file).map_err(io_err("cannot open", file));
    let top = top_level_names(open()?, file)?;
    let image = if top.iter().any(|n| n == "manifest.json") || top.iter().any(|n| n == "index.json")
    {
        let scratch = store.scratch("import")?;
        let r = (|| {
            let reader = decompressed(open()?).map_err(io_err("cannot read", file))?;
            let mut a = tar::Archive::new(reader);
            a.unpack(&scratch).map_err(|e| ImageError::Format {
                path: file.to_path_buf(),
                message: format!("cannot unpack archive: {e}"),
            })?;
            if scratch.join("manifest.json").is_file() {
                import_docker_save(store, &scratch, file, name)
            } else {
                import_oci_layout(store, &scratch, file, name)
            }
        })();
        remove_tree(&scratch)?;
        r?
    } else {
        let digest = add_layer(store, open()?, file)?;
        Image {
            name: name.to_string(),
            layers: vec![digest],
            config: ImageConfig {
                env: vec![DEFAULT_PATH.to_string()],
                cmd: vec!["/bin/sh".to_string()],
                workdir: None,
            },
        }
    };
    store.put(&image)?;
    Ok(image)
}

/// PATH given to images that do not set one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn top_level_names(f: File, what: &Path) -> Result<Vec<String>, ImageError> {
    let reader = decompressed(f).map_err(io_err("cannot read", what))?;
    let mut a = tar::Archive::new(reader);
    let bad = |e: std::io::Error| ImageError::Format {
        path: what.to_path_buf(),
        message: format!("not a tar archive: {e}"),
    };
    let mut names = Vec::new();
    let mut count = 0usize;
    for e in a.entries().map_err(bad)? {
        let e = e.map_err(bad)?;
        count += 1;
        let p = e.path().map_err(bad)?;
        let s = p.to_string_lossy();
        let s = s.trim_start_matches("./").trim_end_matches('/');
        if !s.is_empty() && !s.contains('/') {
            names.push(s.to_string());
        }
    }
    if count == 0 {
        return Err(ImageError::Format {
            path: what.to_path_buf(),
            message: "the archive is empty".into(),
        });
    }
    Ok(names)
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

fn read_json<T: for<'de> Deserialize<'de>>(p: &Path, what: &Path) -> Result<T, ImageError> {
    let text = std::fs::read(p).map_err(|_| ImageError::Format {
        path: what.to_path_buf(),
        message: format!(
            "missing {}",
            p.file_name().unwrap_or_default().to_string_lossy()
        ),
    })?;
    serde_json::from_slice(&text).map_err(|e| ImageError::Format {
        path: what.to_path_buf(),
        message: format!("bad {}: {e}", p.display()),
    })
}

/// Joins `rel` under `dir`, refusing absolute paths and `..`.
fn inside(dir: &Path, rel: &str, what: &Path) -> Result<PathBuf, ImageError> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(ImageError::Format {
            path: what.to_path_buf(),
            message: format!("path `{rel}` escapes the archive"),
        });
    }
    Ok(dir.join(p))
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
    dir: &Path,
    paths: &[String],
    what: &Path,
) -> Result<Vec<String>, ImageError> {
    let mut digests = Vec::new();
    for rel in paths {
        let p = inside(dir, rel, what)?;
        let f = File::open(&p).map_err(|_| ImageError::Format {
            path: what.to_path_buf(),
            message: format!("layer `{rel}` named in the manifest is missing"),
        })?;
        digests.push(add_layer(store, f, &what.join(rel))?);
    }
    Ok(digests)
}

fn import_docker_save(
    store: &ImageStore,
    dir: &Path,
    what: &Path,
    name: &str,
) -> Result<Image, ImageError> {
    let manifests: Vec<DockerManifest> = read_json(&dir.join("manifest.json"), what)?;
    let m = manifests
        .into_iter()
        .next()
        .ok_or_else(|| ImageError::Format {
            path: what.to_path_buf(),
            message: "manifest.json lists no image".into(),
        })?;
    let cfg: ConfigFile = read_json(&inside(dir, &m.config, what)?, what)?;
    let layers = add_layers(store, dir, &m.layers, what)?;
    Ok(Image {
        name: name.to_string(),
        layers,
        config: config_from(cfg),
    })
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

fn blob_path(digest: &str, what: &Path) -> Result<String, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| ImageError::Format {
            path: what.to_path_buf(),
            message: format!("unsupported digest `{digest}` (only sha256)"),
        })?;
    Ok(format!("blobs/sha256/{hex}"))
}

fn import_oci_layout(
    store: &ImageStore,
    dir: &Path,
    what: &Path,
    name: &str,
) -> Result<Image, ImageError> {
    let mut index: OciIndex = read_json(&dir.join("index.json"), what)?;
    // Follow nested indexes (multi-platform) to the first image manifest.
    let manifest: OciManifest = loop {
        let d = index
            .manifests
            .into_iter()
            .next()
            .ok_or_else(|| ImageError::Format {
                path: what.to_path_buf(),
                message: "index.json lists no manifest".into(),
            })?;
        let p = inside(dir, &blob_path(&d.digest, what)?, what)?;
        if d.media_type.contains("index") || d.media_type.contains("manifest.list") {
            index = read_json(&p, what)?;
        } else {
            break read_json(&p, what)?;
        }
    };
    let cfg: ConfigFile = read_json(
        &inside(dir, &blob_path(&manifest.config.digest, what)?, what)?,
        what,
    )?;
    let paths = manifest
        .layers
        .iter()
        .map(|l| blob_path(&l.digest, what))
        .collect::<Result<Vec<_>, _>>()?;
    let layers = add_layers(store, dir, &paths, what)?;
    Ok(Image {
        name: name.to_string(),
        layers,
        config: config_from(cfg),
    })
}
