//! `duet image save`: an image as a `docker save` archive (`manifest.json`,
//! a config, one `<sha256>/layer.tar` per layer, bottom first), which
//! `docker load`, `skopeo copy docker-archive:...` and `duet image import`
//! read. Each layer is archived again from the store's unpacked tree
//! (whiteouts back to `.wh.` files), so its tar digest is that of the new
//! tar; the config written lists those as its diff_ids.

use super::commit::write_layer_tar;
use super::hashing::HashingWriter;
use super::store::{io_err, remove_tree};
use super::{Image, ImageError, ImageStore};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom};
use std::path::Path;

/// The name `docker load` gives the image: `repo:tag` (a plain name gets
/// `:latest`; a digest-named image none, it cannot be a tag).
fn repo_tag(name: &str) -> Option<String> {
    if name.contains('@') {
        return None;
    }
    let has_tag = name.rsplit_once(':').is_some_and(|(_, t)| !t.contains('/'));
    Some(if has_tag {
        name.to_string()
    } else {
        format!("{name}:latest")
    })
}

/// The image config `docker load` expects (an OCI image config too),
/// with these diff_ids.
pub fn config_json(image: &Image, diff_ids: &[String]) -> Vec<u8> {
    let c = &image.config;
    let mut config = serde_json::json!({
        "Env": c.env,
        "Cmd": c.cmd,
    });
    if !c.entrypoint.is_empty() {
        config["Entrypoint"] = c.entrypoint.clone().into();
    }
    if let Some(w) = &c.workdir {
        config["WorkingDir"] = w.clone().into();
    }
    if let Some(u) = &c.user {
        config["User"] = u.clone().into();
    }
    if !c.exposed_ports.is_empty() {
        let ports: serde_json::Map<String, serde_json::Value> = c
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), serde_json::json!({})))
            .collect();
        config["ExposedPorts"] = ports.into();
    }
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids.iter().map(|d| format!("sha256:{d}")).collect::<Vec<_>>(),
        },
    }))
    .expect("a JSON value serializes")
}

/// One layer archived again from the store: the open tar (at its start),
/// its sha256 (hex) and length.
type LayerTar = (File, String, u64);

/// Archives each of `image`'s layers, bottom first, into `dir`
/// (`layer-N.tar`), hashing each as it is written; also returns warnings
/// (sockets not archived).
fn archive_layers(
    store: &ImageStore,
    image: &Image,
    dir: &Path,
) -> Result<(Vec<LayerTar>, Vec<String>), ImageError> {
    let mut warnings = Vec::new();
    let mut layers = Vec::new();
    for (i, d) in image.layers.iter().enumerate() {
        let p = dir.join(format!("layer-{i}.tar"));
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(io_err("cannot create", &p))?;
        let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, f));
        warnings.extend(write_layer_tar(&store.layer_dir(d), &mut out)?);
        let (buffered, sha, len) = out.finish();
        let mut f = buffered
            .into_inner()
            .map_err(|e| io_err("cannot write", &p)(e.into_error()))?;
        f.seek(SeekFrom::Start(0))
            .map_err(io_err("cannot rewind", &p))?;
        layers.push((f, sha, len));
    }
    Ok((layers, warnings))
}

/// Writes `image` to `out` (replaced atomically: a failed save leaves
/// no file); returns warnings (sockets not archived).
pub fn save_image(
    store: &ImageStore,
    image: &Image,
    out: &Path,
) -> Result<Vec<String>, ImageError> {
    let scratch = store.scratch("save")?;
    let result = (|| {
        let (mut layers, warnings) = archive_layers(store, image, &scratch)?;
        let diff_ids: Vec<String> = layers.iter().map(|l| l.1.clone()).collect();
        let config = config_json(image, &diff_ids);
        let config_name = format!("{}.json", hex::encode(Sha256::digest(&config)));
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": config_name,
            "RepoTags": repo_tag(&image.name).into_iter().collect::<Vec<_>>(),
            "Layers": diff_ids.iter().map(|d| format!("{d}/layer.tar")).collect::<Vec<_>>(),
        }]))
        .expect("a JSON value serializes");
        let tmp = out.with_file_name(format!(
            ".{}.duet-save-{}",
            out.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        let written = (|| {
            let f = File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
            let mut b = tar::Builder::new(f);
            let mut add = |name: &str, len: u64, data: &mut dyn Read| {
                let mut h = tar::Header::new_ustar();
                h.set_mode(0o644);
                h.set_size(len);
                h.set_mtime(0);
                b.append_data(&mut h, name, data)
                    .map_err(io_err("cannot write", &tmp))
            };
            for (f, sha, len) in &mut layers {
                add(&format!("{sha}/layer.tar"), *len, f)?;
            }
            add(&config_name, config.len() as u64, &mut config.as_slice())?;
            add(
                "manifest.json",
                manifest.len() as u64,
                &mut manifest.as_slice(),
            )?;
            b.into_inner()
                .and_then(|f| f.sync_all())
                .map_err(io_err("cannot write", &tmp))?;
            std::fs::rename(&tmp, out).map_err(io_err("cannot write", out))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map(|()| warnings)
    })();
    remove_tree(&scratch)?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_tags_are_what_docker_load_accepts() {
        assert_eq!(repo_tag("myimage").as_deref(), Some("myimage:latest"));
        assert_eq!(repo_tag("debian:12").as_deref(), Some("debian:12"));
        assert_eq!(
            repo_tag("127.0.0.1:5000/team/app").as_deref(),
            Some("127.0.0.1:5000/team/app:latest")
        );
        assert_eq!(repo_tag("app@sha256:00"), None);
    }
}
