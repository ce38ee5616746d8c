//! `duet image import|ls|save|rm`.

use anyhow::{Context, Result};
use clap::Subcommand;
use duet_shared::image::{import_tarball, ImageStore, ImportFormat, ImportOptions};
use duet_shared::paths::state_root;
use std::path::PathBuf;

/// Image subcommands.
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import a rootfs tarball, a `docker save` tarball or an OCI image layout (tar, optionally gzip).
    Import {
        /// The tarball.
        file: PathBuf,
        /// Name for the image.
        #[arg(long)]
        name: String,
        /// Replace an existing image of that name.
        #[arg(long)]
        force: bool,
        /// How to read the tarball: auto (an OCI layout or `docker save`
        /// archive only if its `oci-layout`/`manifest.json` parse), rootfs, docker, oci.
        #[arg(long, default_value = "auto")]
        format: ImportFormat,
    },
    /// List images.
    Ls,
    /// Write an image as a `docker save` archive (for `docker load`,
    /// `skopeo copy docker-archive:FILE ...`, or `duet image import`).
    Save {
        /// The image.
        name: String,
        /// The archive to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Remove images (and layers no other image uses).
    Rm {
        /// Image names, or manifest digests of pulled images
        /// (`sha256:...`, or at least 12 of its hex digits).
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs an image subcommand.
pub fn image(c: ImageCommand) -> Result<()> {
    let store = ImageStore::open(&state_root())?;
    match c {
        ImageCommand::Import {
            file,
            name,
            force,
            format,
        } => {
            let got = import_tarball(&store, &file, &name, &ImportOptions { format, force })
                .with_context(|| format!("importing {} as `{name}`", file.display()))?;
            for w in &got.warnings {
                eprintln!("duet: warning: {w}");
            }
            let img = got.image;
            println!(
                "{} ({} layers, read as {})",
                img.name,
                img.layers.len(),
                got.format
            );
        }
        ImageCommand::Ls => {
            println!(
                "{:<40} {:<12} {:<19} {:>6} {:>10}  AGE",
                "REPOSITORY", "TAG", "DIGEST", "LAYERS", "SIZE"
            );
            for img in store.list()? {
                let size: u64 = img
                    .layers
                    .iter()
                    .filter_map(|d| std::fs::read_to_string(store.layer_path(d).join("size")).ok())
                    .filter_map(|s| s.trim().parse::<u64>().ok())
                    .sum();
                let (repo, tag) = split_name(&img.name);
                let digest = img
                    .source
                    .as_ref()
                    .map(|s| s.digest.chars().take(19).collect::<String>())
                    .unwrap_or_else(|| "-".into());
                let age = store
                    .modified(&img.name)
                    .and_then(|t| t.elapsed().ok())
                    .map(human_age)
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{repo:<40} {tag:<12} {digest:<19} {:>6} {:>8.1}MB  {age}",
                    img.layers.len(),
                    size as f64 / 1e6
                );
            }
        }
        ImageCommand::Save { name, output } => {
            let img = store.get(&name)?;
            let warnings = duet_shared::image::save_image(&store, &img, &output)
                .with_context(|| format!("saving `{name}` to {}", output.display()))?;
            for w in &warnings {
                eprintln!("duet: warning: {w}");
            }
            println!(
                "saved {name} ({} layers) to {}",
                img.layers.len(),
                output.display()
            );
        }
        ImageCommand::Rm { names } => {
            for n in names.iter().flat_map(|n| by_name_or_digest(&store, n)) {
                let layers = store.get(&n)?.layers;
                let removed = store.remove(&n)?;
                let templates =
                    duet_vmm::runtime::templates::remove_for_layers(&state_root(), &layers);
                print!("removed {n} ({} layers freed", removed.len());
                if templates > 0 {
                    print!(", {templates} warm-start template(s)");
                }
                println!(")");
            }
        }
    }
    Ok(())
}

/// `team/app:1` -> (`team/app`, `1`); `app@sha256:..` -> (`app`, `<digest>`);
/// a plain name has no tag (`-`).
fn split_name(name: &str) -> (String, String) {
    if let Some((repo, _)) = name.split_once('@') {
        return (repo.to_string(), "<digest>".into());
    }
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (name.to_string(), "-".into()),
    }
}

fn human_age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} seconds ago"),
        60..=3599 => format!("{} minutes ago", s / 60),
        3600..=86399 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

/// The images `arg` names: itself, or the pulled images whose manifest
/// digest is `arg` (`sha256:<hex>` or a hex prefix of 12 or more digits).
fn by_name_or_digest(store: &ImageStore, arg: &str) -> Vec<String> {
    let hex = arg.strip_prefix("sha256:").unwrap_or(arg);
    let digest_like = hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if store.contains(arg) {
        return vec![arg.to_string()];
    }
    if !digest_like {
        // `debian` is stored as `debian:latest`.
        return vec![super::pull::local_name(store, arg).unwrap_or_else(|| arg.to_string())];
    }
    let hits: Vec<String> = store
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| {
            i.source
                .as_ref()
                .is_some_and(|s| s.digest.trim_start_matches("sha256:").starts_with(hex))
        })
        .map(|i| i.name)
        .collect();
    if hits.is_empty() {
        vec![arg.to_string()]
    } else {
        hits
    }
}
