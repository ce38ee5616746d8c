//! Reading an unpacked `docker save` archive or OCI image layout: its
//! members (manifests, configs, indexes, layers) are opened beneath the
//! scratch directory only (symlinks resolve inside the archive, never to a
//! host file), must be regular files, and JSON members are read up to
//! [`MAX_JSON`] bytes; nested indexes end at a cycle or at
//! [`MAX_INDEX_DEPTH`].

use super::beneath::Beneath;
use super::escape::escaped;
use super::import::{add_layer_reporting, DEFAULT_PATH, MAX_INDEX_DEPTH, MAX_JSON};
use super::store::io_err;
use super::unpack::safe_relative;
use super::{Image, ImageConfig, ImageError, ImageStore};
use rustix::fs::{FileType, OFlags};
use serde::Deserialize;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// One image of a `docker save` `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DockerManifest {
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
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
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
    let mut env = rc.env.unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_string());
    }
    ImageConfig {
        env,
        cmd: rc.cmd.unwrap_or_default(),
        entrypoint: rc.entrypoint.unwrap_or_default(),
        workdir: rc.working_dir.filter(|w| !w.is_empty()),
        user: rc.user.filter(|u| !u.is_empty()),
        exposed_ports: rc.exposed_ports.unwrap_or_default().into_keys().collect(),
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

pub(super) fn import_docker_save(
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
        source: None,
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

pub(super) fn import_oci_layout(
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
        source: None,
    };
    Ok((image, warnings))
}
