//! `duet image import|ls|rm`.

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
    /// Remove images (and layers no other image uses).
    Rm {
        /// Image names.
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
            println!("{:<24} {:>6} {:>10}  TOP LAYER", "NAME", "LAYERS", "SIZE");
            for img in store.list()? {
                let size: u64 = img
                    .layers
                    .iter()
                    .filter_map(|d| std::fs::read_to_string(store.layer_path(d).join("size")).ok())
                    .filter_map(|s| s.trim().parse::<u64>().ok())
                    .sum();
                let top = img
                    .layers
                    .last()
                    .map(|d| &d[..12.min(d.len())])
                    .unwrap_or("-");
                println!(
                    "{:<24} {:>6} {:>8.1}MB  sha256:{top}",
                    img.name,
                    img.layers.len(),
                    size as f64 / 1e6
                );
            }
        }
        ImageCommand::Rm { names } => {
            for n in names {
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
