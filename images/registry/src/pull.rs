//! `duet pull`: manifest (through an index to the platform's image),
//! config, then every layer the store lacks: downloaded in parallel (at
//! most `parallel` at a time), verified, unpacked by the store's confined
//! unpacker and checked against the config's diff_id. The image's record
//! is written last, so an interrupted pull leaves no image and no
//! half-written layer; its partial downloads resume on the next pull and
//! `duet gc` removes them.

use crate::blob::{self, sha256_hex, Partial, Progress};
use crate::manifest::{self, Manifest, Platform, MAX_MANIFEST};
use crate::{reference, RegistryError};
use duet_shared::image::{Image, ImageConfig, ImageSource, ImageStore, DEFAULT_PATH};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to pick from an index.
    pub platform: Platform,
    /// Plain HTTP to a registry on this machine (127.0.0.0/8, ::1, localhost).
    pub insecure: bool,
    /// Registries (`host:port`) to reach over plain HTTP wherever they are.
    pub insecure_registries: Vec<String>,
    /// User and password; `None`: the docker config's, else anonymous.
    pub credentials: Option<(String, String)>,
    /// Progress bars on stderr (a terminal); else one line per layer.
    pub progress: bool,
    /// Print nothing but errors.
    pub quiet: bool,
    /// Layers downloaded at once.
    pub parallel: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            insecure: false,
            insecure_registries: Vec::new(),
            credentials: None,
            progress: false,
            quiet: false,
            parallel: 3,
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The stored image.
    pub image: Image,
    /// Layers downloaded by this pull.
    pub fetched_layers: usize,
    /// Layers the store had already.
    pub present_layers: usize,
    /// Bytes downloaded (compressed).
    pub fetched_bytes: u64,
}

/// The TLS provider reqwest's rustls uses (ring: no C toolchain needed).
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The client for `r`'s registry; `root` holds [`NO_TLS_ROOT`] if needed.
/// Call it before the runtime's threads start.
fn client_for(root: &Path, r: &Reference, opts: &PullOptions) -> Result<Client, RegistryError> {
    install_tls_provider();
    let registry = r.registry().to_string();
    let plain = opts.insecure_registries.contains(&registry)
        || (opts.insecure && reference::is_loopback(r));
    if opts.insecure && !plain {
        return Err(RegistryError::Network {
            what: r.whole(),
            message: format!(
                "--insecure allows plain HTTP to a registry on this machine only; {registry} is not (name it with --insecure-registry {registry} to send layers and credentials to it unencrypted)"
            ),
        });
    }
    let protocol = if plain {
        ClientProtocol::HttpsExcept(vec![r.resolve_registry().to_string()])
    } else {
        ClientProtocol::Https
    };
    ensure_roots(root, plain, r)?;
    let config = ClientConfig {
        protocol,
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        user_agent: concat!("duet/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    // Client::new would fall back to a default client, which panics on
    // a machine without CA certificates (see `ensure_roots`).
    Client::try_from(config).map_err(|e| RegistryError::Network {
        what: r.whole(),
        message: format!(
            "cannot set up the HTTP client for {registry}: {}",
            crate::error_chain(&e)
        ),
    })
}

/// The HTTP client (reqwest with rustls) needs at least one trusted root
/// or it panics while it is built. Without the system's CA certificates a
/// plain-HTTP registry is still reached (the roots then are only
/// [`NO_TLS_ROOT`], written under the state root and named by
/// SSL_CERT_FILE); an HTTPS one gets an error saying what to install.
/// Called before any thread starts (it sets an environment variable).
fn ensure_roots(root: &Path, plain: bool, r: &Reference) -> Result<(), RegistryError> {
    if !rustls_native_certs::load_native_certs().certs.is_empty() {
        return Ok(());
    }
    if !plain {
        return Err(RegistryError::Network {
            what: r.whole(),
            message: format!(
                "this machine has no CA certificates to verify https://{} with (install the ca-certificates package, or set SSL_CERT_FILE)",
                r.resolve_registry()
            ),
        });
    }
    let p = root.join("no-tls-root.pem");
    std::fs::create_dir_all(root)
        .and_then(|()| std::fs::write(&p, NO_TLS_ROOT))
        .map_err(|source| RegistryError::Io {
            what: "cannot write",
            path: p.clone(),
            source,
        })?;
    std::env::set_var("SSL_CERT_FILE", &p);
    Ok(())
}

/// The only trust anchor of a client for a plain-HTTP registry on a
/// machine without CA certificates: a self-signed certificate whose
/// private key was thrown away when it was made, so no server can
/// present a chain to it (TLS through such a client always fails).
const NO_TLS_ROOT: &str = "-----BEGIN CERTIFICATE-----
MIIBuzCCAWGgAwIBAgIUFps1F34ifcabeZ7zga3nUCBTCRgwCgYIKoZIzj0EAwIw
MjEwMC4GA1UEAwwnZHVldCBwbGFpbi1IVFRQIHJlZ2lzdHJ5IGNsaWVudDogbm8g
VExTMCAXDTI2MTIwNDIwNDMxM1oYDzIxMjYxMTEwMjA0MzEzWjAyMTAwLgYDVQQD
DCdkdWV0IHBsYWluLUhUVFAgcmVnaXN0cnkgY2xpZW50OiBubyBUTFMwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAToybqFYBb/YXesRbozU0SY3Ajk2UKwwlxu/Be/
MBCY6nB+V8BjVF4mgzlumLhswJGFycF0v6RIfiCpc9KzAybco1MwUTAdBgNVHQ4E
FgQUkJWInlxc4sQiuqADnWBg23a+HEIwHwYDVR0jBBgwFoAUkJWInlxc4sQiuqAD
nWBg23a+HEIwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiA0RlcQ
mQB2E1X4SLj71sMdh72hzAztF2RxM2A98FlcagIhAJl8CBszKd2q9lRE70bi+Y48
sxBjtW+T4l//c84y/Jsn
-----END CERTIFICATE-----
";

/// The credentials for `r`, and words that name where they came from.
fn auth_for(r: &Reference, opts: &PullOptions) -> Result<(RegistryAuth, String), RegistryError> {
    let creds = match &opts.credentials {
        Some(c) => Some((c.clone(), "the command line".to_string())),
        None => crate::auth::credentials(r.registry())?
            .map(|c| (c, crate::auth::config_path().display().to_string())),
    };
    Ok(match creds {
        Some(((u, p), from)) => (
            RegistryAuth::Basic(u.clone(), p),
            format!("the credentials of user `{u}` (from {from})"),
        ),
        None => (RegistryAuth::Anonymous, "anonymous access".to_string()),
    })
}

/// Says who was refused, and how to log in when nobody was named.
fn with_who(e: RegistryError, who: &str, registry: &str) -> RegistryError {
    match e {
        RegistryError::Unauthorized { what, .. } => RegistryError::Unauthorized {
            what,
            who: who.to_string(),
            hint: if who == "anonymous access" {
                format!("; log in with `duet login {registry}`")
            } else {
                String::new()
            },
        },
        e => e,
    }
}

/// Checks `bytes` against `digest`.
fn verify(bytes: &[u8], digest: &str, what: &str) -> Result<(), RegistryError> {
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if actual != digest {
        return Err(RegistryError::DigestMismatch {
            what: what.to_string(),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

/// A manifest by reference, at most [`MAX_MANIFEST`] bytes, with the sha256
/// of its bytes (checked against the reference's digest if it names one).
async fn fetch_manifest(
    client: &Client,
    r: &Reference,
    auth: &RegistryAuth,
    what: &str,
) -> Result<(Vec<u8>, String), RegistryError> {
    let (bytes, _) = client
        .pull_manifest_raw(r, auth, manifest::ACCEPTED)
        .await
        .map_err(|e| RegistryError::from_oci(what, e))?;
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(RegistryError::Manifest {
            what: what.to_string(),
            message: format!("the manifest is larger than {} MiB", MAX_MANIFEST >> 20),
        });
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if let Some(want) = r.digest() {
        verify(&bytes, want, what)?;
    }
    Ok((bytes.to_vec(), digest))
}

/// A small blob (the config) into memory, size and digest checked.
async fn fetch_small(
    client: &Client,
    r: &Reference,
    digest: &str,
    size: u64,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    if size > MAX_MANIFEST {
        return Err(RegistryError::Manifest {
            what: what.to_string(),
            message: format!(
                "the image config is {size} bytes, more than {} MiB",
                MAX_MANIFEST >> 20
            ),
        });
    }
    let mut s = client
        .pull_blob_stream(r, digest)
        .await
        .map_err(|e| RegistryError::from_oci(what, e))?;
    let mut out = Vec::new();
    while let Some(chunk) = s.stream.next().await {
        let chunk = chunk.map_err(|e| RegistryError::Network {
            what: what.to_string(),
            message: e.to_string(),
        })?;
        if (out.len() + chunk.len()) as u64 > size {
            return Err(RegistryError::SizeMismatch {
                what: what.to_string(),
                expected: size,
                got: format!("more than {size}"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    if out.len() as u64 != size {
        return Err(RegistryError::SizeMismatch {
            what: what.to_string(),
            expected: size,
            got: out.len().to_string(),
        });
    }
    verify(&out, digest, what)?;
    Ok(out)
}

/// The run defaults of an image config.
fn config_from(c: &oci_spec::image::ImageConfiguration) -> ImageConfig {
    let Some(rc) = c.config() else {
        return ImageConfig {
            env: vec![DEFAULT_PATH.to_string()],
            ..Default::default()
        };
    };
    let mut env = rc.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_string());
    }
    ImageConfig {
        env,
        cmd: rc.cmd().clone().unwrap_or_default(),
        entrypoint: rc.entrypoint().clone().unwrap_or_default(),
        workdir: rc.working_dir().clone().filter(|w| !w.is_empty()),
        user: rc.user().clone().filter(|u| !u.is_empty()),
        exposed_ports: rc.exposed_ports().clone().unwrap_or_default(),
    }
}

/// One layer to fetch.
struct Todo {
    index: usize,
    digest: String,
    size: u64,
    diff_id: String,
    what: String,
}

/// Progress of one layer: an indicatif bar, or nothing.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    total: Option<indicatif::ProgressBar>,
}

impl Progress for Bar {
    fn advance(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        if let Some(t) = &self.total {
            t.inc(n);
        }
    }
}

/// Pulls `text` (a reference) into the store; returns the stored image.
pub fn pull(store: &ImageStore, text: &str, opts: &PullOptions) -> Result<Pulled, RegistryError> {
    let r = reference::parse(text)?;
    let client = client_for(store.root(), &r, opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| RegistryError::Io {
            what: "cannot start the download threads for",
            path: PathBuf::from(text),
            source,
        })?;
    rt.block_on(pull_async(
        store.root().to_path_buf(),
        client,
        r,
        opts.clone(),
    ))
}

async fn pull_async(
    root: PathBuf,
    client: Client,
    r: Reference,
    opts: PullOptions,
) -> Result<Pulled, RegistryError> {
    let store = ImageStore::open(&root)?;
    let name = reference::store_name(&r);
    let (auth, who) = auth_for(&r, &opts)?;
    let registry = r.registry().to_string();
    let who_err = |e| with_who(e, &who, &registry);
    client
        .auth(&r, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| who_err(RegistryError::from_oci(&r.whole(), e)))?;
    let (bytes, mut digest) = fetch_manifest(&client, &r, &auth, &r.whole())
        .await
        .map_err(who_err)?;
    let image_manifest = match manifest::parse(&bytes, &r.whole())? {
        Manifest::Image(m) => m,
        Manifest::Index(index) => {
            let d = manifest::select(&index, &opts.platform, &r.whole())?;
            let d = d.digest().to_string();
            sha256_hex(&d, &r.whole())?;
            let by_digest = r.clone_with_digest(d.clone());
            let what = format!("{} ({})", r.whole(), opts.platform);
            let (bytes, got) = fetch_manifest(&client, &by_digest, &auth, &what)
                .await
                .map_err(who_err)?;
            verify(&bytes, &d, &what)?;
            digest = got;
            match manifest::parse(&bytes, &what)? {
                Manifest::Image(m) => m,
                Manifest::Index(_) => {
                    return Err(RegistryError::Manifest {
                        what,
                        message: "the index's entry for the platform is another index".into(),
                    })
                }
            }
        }
    };
    let cfg_desc = image_manifest.config();
    let cfg_digest = cfg_desc.digest().to_string();
    let cfg_what = format!("{}: config {cfg_digest}", r.whole());
    sha256_hex(&cfg_digest, &cfg_what)?;
    let cfg_bytes = fetch_small(&client, &r, &cfg_digest, cfg_desc.size(), &cfg_what).await?;
    let cfg: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(&cfg_bytes).map_err(|e| RegistryError::Manifest {
            what: cfg_what.clone(),
            message: format!("bad image config: {e}"),
        })?;
    let (os, arch) = (cfg.os().to_string(), cfg.architecture().to_string());
    if os != opts.platform.os || arch != opts.platform.architecture {
        return Err(RegistryError::Manifest {
            what: r.whole(),
            message: format!(
                "the image is for {os}/{arch}, not {} (choose another with --platform; duet runs what this machine's CPU runs)",
                opts.platform
            ),
        });
    }
    let diff_ids = cfg.rootfs().diff_ids();
    let layers = image_manifest.layers();
    if diff_ids.len() != layers.len() {
        return Err(RegistryError::Manifest {
            what: cfg_what,
            message: format!(
                "the config lists {} diff_ids for the manifest's {} layers",
                diff_ids.len(),
                layers.len()
            ),
        });
    }
    let mut todo = Vec::new();
    let mut hexes = Vec::new();
    for (i, (l, diff)) in layers.iter().zip(diff_ids).enumerate() {
        let d = l.digest().to_string();
        let what = format!("{}: layer {} of {} ({d})", r.whole(), i + 1, layers.len());
        manifest::layer_compression(l.media_type().as_ref(), &what)?;
        sha256_hex(&d, &what)?;
        let diff_hex = sha256_hex(diff, &what)?.to_string();
        hexes.push(diff_hex.clone());
        if store.layer_dir(&diff_hex).is_dir() || todo.iter().any(|t: &Todo| t.diff_id == diff_hex)
        {
            continue;
        }
        todo.push(Todo {
            index: i,
            digest: d,
            size: l.size(),
            diff_id: diff_hex,
            what,
        });
    }
    let present = layers.len() - todo.len();
    let multi = (opts.progress && !opts.quiet).then(indicatif::MultiProgress::new);
    let total = multi.as_ref().map(|m| {
        let b = m.add(indicatif::ProgressBar::new(
            todo.iter().map(|t| t.size).sum(),
        ));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        b.set_prefix(name.clone());
        b
    });
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for t in todo.iter() {
        let bar = Bar {
            bar: multi.as_ref().map(|m| {
                let b = m.add(indicatif::ProgressBar::new(t.size));
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix:>14} [{bar:30}] {bytes}/{total_bytes}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(t.digest[7..19].to_string());
                b
            }),
            total: total.clone(),
        };
        let (client, r, root, sem) = (client.clone(), r.clone(), root.clone(), sem.clone());
        let (index, digest, size, diff_id, what) = (
            t.index,
            t.digest.clone(),
            t.size,
            t.diff_id.clone(),
            t.what.clone(),
        );
        let quiet = opts.quiet || opts.progress;
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("the semaphore stays open");
            let fetched =
                fetch_layer(&client, &r, &root, &digest, size, &diff_id, &bar, &what).await?;
            if let Some(b) = &bar.bar {
                b.finish();
            }
            if !quiet {
                eprintln!("{}: pulled ({:.1} MB)", &digest[..19], size as f64 / 1e6);
            }
            Ok::<_, RegistryError>((index, fetched))
        });
    }
    let mut fetched_bytes = 0;
    while let Some(done) = set.join_next().await {
        let got = done
            .map_err(|e| RegistryError::Network {
                what: r.whole(),
                message: format!("a download task failed: {e}"),
            })
            .and_then(|x| x);
        match got {
            Ok((_, n)) => fetched_bytes += n,
            Err(e) => {
                // The other downloads end here (their locks with them).
                set.shutdown().await;
                if e.is_bad_content() {
                    // A registry that serves wrong content is not resumed
                    // from: nothing of this pull is kept.
                    for t in &todo {
                        if let Ok(hex) = sha256_hex(&t.digest, &t.what) {
                            let _ = std::fs::remove_file(
                                blob::partial_dir(&root).join(format!("sha256-{hex}")),
                            );
                        }
                    }
                }
                return Err(e);
            }
        }
    }
    if let Some(t) = &total {
        t.finish();
    }
    // Every layer is in the store: no partial download of them is needed.
    for l in layers {
        if let Ok(hex) = sha256_hex(l.digest().as_ref(), "") {
            blob::remove_partial(&root, hex);
        }
    }
    let image = Image {
        name,
        layers: hexes,
        config: config_from(&cfg),
        source: Some(ImageSource {
            reference: r.whole(),
            digest,
            platform: opts.platform.to_string(),
        }),
    };
    store.put(&image)?;
    Ok(Pulled {
        image,
        fetched_layers: todo.len(),
        present_layers: present,
        fetched_bytes,
    })
}

/// Downloads and unpacks one layer; returns the bytes fetched.
#[allow(clippy::too_many_arguments)]
async fn fetch_layer(
    client: &Client,
    r: &Reference,
    root: &Path,
    digest: &str,
    size: u64,
    diff_id: &str,
    bar: &Bar,
    what: &str,
) -> Result<u64, RegistryError> {
    let hex = sha256_hex(digest, what)?.to_string();
    let lock_root = root.to_path_buf();
    let mut partial = tokio::task::spawn_blocking(move || Partial::open(&lock_root, &hex))
        .await
        .expect("the lock task does not panic")?;
    let store = ImageStore::open(root)?;
    if store.layer_dir(diff_id).is_dir() {
        // Another pull stored it while this one waited for the lock.
        partial.remove();
        return Ok(0);
    }
    // Unpack while it downloads: the layer lands in the store only once
    // complete, and is checked (digest, then diff_id) before any image
    // refers to it.
    let (tx, rx) = blob::Streamed::channel();
    let (unpack_root, unpack_what) = (root.to_path_buf(), what.to_string());
    let unpacker = tokio::task::spawn_blocking(move || {
        let store = ImageStore::open(&unpack_root)?;
        duet_shared::image::add_layer_reporting(&store, rx, Path::new(&unpack_what))
            .map_err(RegistryError::from)
    });
    let fetched = blob::fetch(client, r, digest, size, &mut partial, bar, what, Some(&tx)).await;
    let streamed = matches!(fetched, Ok((_, true)));
    if streamed {
        // (The unpacker may be done already: gzip ends at its trailer.)
        let _ = tx.send(blob::Piece::End).await;
    }
    // Without End the unpacker fails and leaves nothing.
    drop(tx);
    let unpacked = unpacker.await.expect("the unpack task does not panic");
    let fetched = match fetched {
        Ok((n, _)) => n,
        Err(e) => {
            // An unpack that finished before the digest was found wrong
            // stored a layer nothing refers to: not kept either.
            if let Ok((got, _)) = &unpacked {
                ImageStore::open(root)?.remove_layer_if_unused(got)?;
            }
            if e.is_bad_content() {
                partial.remove();
            }
            return Err(e);
        }
    };
    let (root, diff_id, what) = (root.to_path_buf(), diff_id.to_string(), what.to_string());
    if streamed {
        if let Ok(got) = unpacked {
            partial.remove();
            return check_diff_id(&root, got, &diff_id, &what).map(|()| fetched);
        }
        // The streamed unpack failed: try once more from the verified file,
        // which reports the error with the file's name.
    }
    tokio::task::spawn_blocking(move || unpack(&root, partial, &diff_id, &what))
        .await
        .expect("the unpack task does not panic")?;
    Ok(fetched)
}

/// Warns of what the unpack skipped; a layer that is not `diff_id` is
/// removed again (unless an image uses it) and refused.
fn check_diff_id(
    root: &Path,
    (got, warnings): (String, Vec<String>),
    diff_id: &str,
    what: &str,
) -> Result<(), RegistryError> {
    for w in warnings {
        eprintln!("duet: warning: {w}");
    }
    if got != diff_id {
        ImageStore::open(root)?.remove_layer_if_unused(&got)?;
        return Err(RegistryError::DiffIdMismatch {
            what: what.to_string(),
            expected: format!("sha256:{diff_id}"),
            actual: got,
        });
    }
    Ok(())
}

/// Unpacks a verified blob from its file into the store and checks its diff_id.
fn unpack(root: &Path, partial: Partial, diff_id: &str, what: &str) -> Result<(), RegistryError> {
    let store = ImageStore::open(root)?;
    let f = partial.reader()?;
    let got = duet_shared::image::add_layer_reporting(&store, f, Path::new(what));
    partial.remove();
    check_diff_id(root, got?, diff_id, what)
}

/// `duet login`: checks user and password against `registry` and stores
/// them in the docker config; returns its path.
pub fn login(
    root: &Path,
    registry: &str,
    user: &str,
    password: &str,
    opts: &PullOptions,
) -> Result<PathBuf, RegistryError> {
    // A repository that need not exist: the registry checks the
    // credentials before it looks the repository up.
    let r = reference::parse(&format!("{registry}/duet-login-check:latest"))?;
    let client = client_for(root, &r, opts)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RegistryError::Io {
            what: "cannot start the network thread for",
            path: PathBuf::from(registry),
            source,
        })?;
    let auth = RegistryAuth::Basic(user.to_string(), password.to_string());
    let who = format!("the credentials of user `{user}`");
    rt.block_on(async {
        client
            .auth(&r, &auth, RegistryOperation::Pull)
            .await
            .map_err(|e| with_who(RegistryError::from_oci(registry, e), &who, registry))?;
        match client.fetch_manifest_digest(&r, &auth).await {
            Ok(_) => Ok(()),
            Err(e) => match with_who(RegistryError::from_oci(registry, e), &who, registry) {
                RegistryError::NotFound { .. } => Ok(()),
                e => Err(e),
            },
        }
    })?;
    crate::auth::store(r.registry(), user, password)
}
