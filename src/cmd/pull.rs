//! `duet pull`, `duet login`, and the implicit pull of `duet run REF`
//! (`--pull always|missing|never`).

use anyhow::{bail, Context, Result};
use duet_registry::{Platform, PullOptions};
use duet_shared::image::{Image, ImageStore, BUSYBOX_IMAGE};
use std::io::IsTerminal;

/// How to reach registries (shared by pull, run and login).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// The platform to pick from a multi-platform image (os/arch[/variant]).
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<Platform>,
    /// Allow plain HTTP to a registry on this machine (127.0.0.1, ::1, localhost).
    #[arg(long)]
    pub insecure: bool,
    /// Allow plain HTTP to this registry (HOST:PORT) wherever it is.
    #[arg(long, value_name = "HOST:PORT")]
    pub insecure_registry: Vec<String>,
}

impl RegistryArgs {
    fn options(&self, quiet: bool) -> PullOptions {
        PullOptions {
            platform: self.platform.clone().unwrap_or_else(Platform::host),
            insecure: self.insecure,
            insecure_registries: self.insecure_registry.clone(),
            progress: std::io::stderr().is_terminal(),
            quiet,
            ..Default::default()
        }
    }
}

/// `duet pull`.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Image reference: `debian`, `library/debian:12`, `host:5000/team/app@sha256:...`.
    pub reference: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print only the image's name.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `duet push`.
#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// The image in the store (pulled, imported or made by `duet commit`).
    pub image: String,
    /// Where to: `host:5000/team/app:1`; default the image's own name, if it names a registry.
    pub target: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How layers are sent: gzip (as `docker push` does) or none.
    #[arg(long, value_enum, default_value_t = Compression::Gzip)]
    pub compression: Compression,
    /// Print only the pushed manifest's digest.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `duet push --compression`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip layers (`application/vnd.oci.image.layer.v1.tar+gzip`).
    Gzip,
    /// Plain tar layers (`application/vnd.oci.image.layer.v1.tar`).
    None,
}

/// `duet login`.
#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// Registry (`host:port`; `docker.io` for Docker Hub).
    pub registry: String,
    /// User name.
    #[arg(short, long)]
    pub username: String,
    /// Read the password from standard input (the only way: never on the command line).
    #[arg(long, required = true)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub registry_args: RegistryArgs,
}

/// When `duet run` pulls.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Every run pulls (the registry's tag may have moved).
    Always,
    /// Only an image the store lacks.
    #[default]
    Missing,
    /// Never: the store's image or an error.
    Never,
}

fn pull_now(
    store: &ImageStore,
    reference: &str,
    args: &RegistryArgs,
    quiet: bool,
) -> Result<Image> {
    let got = duet_registry::pull(store, reference, &args.options(quiet))?;
    if !quiet {
        let src = got
            .image
            .source
            .as_ref()
            .expect("a pulled image has a source");
        eprintln!(
            "duet: pulled {} ({}, {}): {} layer(s) downloaded ({:.1} MB), {} already present",
            got.image.name,
            src.digest,
            src.platform,
            got.fetched_layers,
            got.fetched_bytes as f64 / 1e6,
            got.present_layers
        );
    }
    Ok(got.image)
}

/// `duet pull REF`.
pub fn pull(a: &PullArgs) -> Result<()> {
    let store = ImageStore::open(&duet_shared::paths::state_root())?;
    let img = pull_now(&store, &a.reference, &a.registry, a.quiet)
        .with_context(|| format!("pulling `{}`", a.reference))?;
    println!("{}", img.name);
    Ok(())
}

/// `duet push IMAGE [TARGET]`.
pub fn push(a: &PushArgs) -> Result<()> {
    let store = ImageStore::open(&duet_shared::paths::state_root())?;
    let name = local_name(&store, &a.image).unwrap_or_else(|| a.image.clone());
    let target = match &a.target {
        Some(t) => t.clone(),
        None if duet_registry::names_a_registry(&name) => name.clone(),
        None => bail!(
            "pushing `{name}`: its name names no registry; give a target such as \
             127.0.0.1:5000/{name}"
        ),
    };
    let compression = match a.compression {
        Compression::Gzip => duet_registry::LayerCompression::Gzip,
        Compression::None => duet_registry::LayerCompression::None,
    };
    let pushed = duet_registry::push(
        &store,
        &name,
        &target,
        &a.registry.options(a.quiet),
        compression,
    )
    .with_context(|| format!("pushing `{name}` to {target}"))?;
    if !a.quiet {
        eprintln!(
            "duet: pushed {name} to {} ({} layer(s), {:.1} MB sent, {} already there, {} mounted from another repository)",
            pushed.reference,
            pushed.layers,
            pushed.bytes as f64 / 1e6,
            pushed.present,
            pushed.mounted
        );
    }
    println!("{}", pushed.digest);
    Ok(())
}

/// `duet login REGISTRY -u USER --password-stdin`.
pub fn login(a: &LoginArgs) -> Result<()> {
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .context("reading the password from standard input")?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("no password on standard input");
    }
    let path = duet_registry::login(
        &duet_shared::paths::state_root(),
        &a.registry,
        &a.username,
        password,
        &a.registry_args.options(true),
    )
    .with_context(|| format!("logging in to {}", a.registry))?;
    println!("Login Succeeded (credentials stored in {})", path.display());
    Ok(())
}

/// The stored name `name` goes by: itself, or the reference's normal form
/// (`debian` is stored as `debian:latest`).
pub fn local_name(store: &ImageStore, name: &str) -> Option<String> {
    if store.contains(name) {
        return Some(name.to_string());
    }
    let r = duet_registry::reference::parse(name).ok()?;
    let n = duet_registry::reference::store_name(&r);
    store.contains(&n).then_some(n)
}

/// The image `duet run` runs: from the store, pulled as `policy` says.
/// The built-in `busybox` (no registry part) is never pulled.
pub fn resolve_image(
    store: &ImageStore,
    name: &str,
    policy: PullPolicy,
    args: &RegistryArgs,
) -> Result<Image> {
    let local = local_name(store, name);
    let builtin = name == BUSYBOX_IMAGE;
    match policy {
        PullPolicy::Never => Ok(store.get(local.as_deref().unwrap_or(name))?),
        PullPolicy::Missing | PullPolicy::Always if builtin => Ok(store.get(name)?),
        PullPolicy::Missing if local.is_some() => Ok(store.get(&local.expect("checked"))?),
        _ => {
            if duet_registry::reference::parse(name).is_err() {
                return Ok(store.get(name)?);
            }
            if policy == PullPolicy::Missing && std::io::stderr().is_terminal() {
                eprintln!("duet: image `{name}` is not in the store: pulling it");
            }
            match pull_now(store, name, args, false) {
                Ok(img) => Ok(img),
                Err(e) => {
                    let missing = match &local {
                        Some(n) => {
                            return Err(e.context(format!(
                                "pulling `{name}` (the store's `{n}` was not used: --pull always)"
                            )))
                        }
                        None => store.get(name).err(),
                    };
                    match missing {
                        Some(m) => Err(e.context(format!("{m}; and pulling it failed"))),
                        None => Err(e.context(format!("pulling `{name}`"))),
                    }
                }
            }
        }
    }
}
