//! `duet pull`: manifest (through an index to the platform's image),
//! config, then every layer the store lacks: downloaded in parallel (at
//! most `parallel` at a time), verified, unpacked by the store's confined
//! unpacker and checked against the config's diff_id. The image's record
//! is written last, so an interrupted pull leaves no image and no
//! half-written layer; its partial downloads resume on the next pull and
//! `duet gc` removes them.

use crate::blob::{self, sha256_hex, Partial};
use crate::manifest::{self, Manifest, Platform, MAX_MANIFEST};
use crate::progress::{Bar, Bars};
use crate::sources::{self, oci_layer_type, LayerSource};
use crate::{reference, RegistryError};
use duet_shared::image::{Image, ImageConfig, ImageSource, ImageStore, DEFAULT_PATH};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::{ImageConfiguration, ImageManifest};
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
pub(crate) fn client_for(
    root: &Path,
    r: &Reference,
    opts: &PullOptions,
) -> Result<Client, RegistryError> {
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
pub(crate) fn auth_for(
    r: &Reference,
    opts: &PullOptions,
) -> Result<(RegistryAuth, String), RegistryError> {
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
pub(crate) fn with_who(e: RegistryError, who: &str, registry: &str) -> RegistryError {
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
    digest: String,
    size: u64,
    diff_id: String,
    what: String,
    compression: manifest::Compression,
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

/// The image manifest for the platform (through an index if `r` names
/// one), and its digest.
async fn resolve_manifest(
    client: &Client,
    r: &Reference,
    auth: &RegistryAuth,
    platform: &Platform,
    who_err: &dyn Fn(RegistryError) -> RegistryError,
) -> Result<(Box<ImageManifest>, String), RegistryError> {
    let (bytes, digest) = fetch_manifest(client, r, auth, &r.whole())
        .await
        .map_err(who_err)?;
    let index = match manifest::parse(&bytes, &r.whole())? {
        Manifest::Image(m) => return Ok((m, digest)),
        Manifest::Index(index) => index,
    };
    let d = manifest::select(&index, platform, &r.whole())?
        .digest()
        .to_string();
    sha256_hex(&d, &r.whole())?;
    let what = format!("{} ({platform})", r.whole());
    let (bytes, got) = fetch_manifest(client, &r.clone_with_digest(d.clone()), auth, &what)
        .await
        .map_err(who_err)?;
    verify(&bytes, &d, &what)?;
    match manifest::parse(&bytes, &what)? {
        Manifest::Image(m) => Ok((m, got)),
        Manifest::Index(_) => Err(RegistryError::Manifest {
            what,
            message: "the index's entry for the platform is another index".into(),
        }),
    }
}

/// The image's config blob, for `platform`'s CPU and with a diff_id per layer.
async fn fetch_config(
    client: &Client,
    r: &Reference,
    m: &ImageManifest,
    platform: &Platform,
) -> Result<ImageConfiguration, RegistryError> {
    let desc = m.config();
    let digest = desc.digest().to_string();
    let what = format!("{}: config {digest}", r.whole());
    sha256_hex(&digest, &what)?;
    let bytes = fetch_small(client, r, &digest, desc.size(), &what).await?;
    let cfg: ImageConfiguration =
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Manifest {
            what: what.clone(),
            message: format!("bad image config: {e}"),
        })?;
    let (os, arch) = (cfg.os().to_string(), cfg.architecture().to_string());
    if os != platform.os || arch != platform.architecture {
        return Err(RegistryError::Manifest {
            what: r.whole(),
            message: format!(
                "the image is for {os}/{arch}, not {platform} (choose another with --platform; duet runs what this machine's CPU runs)"
            ),
        });
    }
    let (ids, layers) = (cfg.rootfs().diff_ids().len(), m.layers().len());
    if ids != layers {
        return Err(RegistryError::Manifest {
            what,
            message: format!("the config lists {ids} diff_ids for the manifest's {layers} layers"),
        });
    }
    Ok(cfg)
}

/// Every layer's diff_id (hex, bottom first), and the layers the store lacks.
fn plan_layers(
    store: &ImageStore,
    r: &Reference,
    m: &ImageManifest,
    cfg: &ImageConfiguration,
) -> Result<(Vec<String>, Vec<Todo>), RegistryError> {
    let layers = m.layers();
    let mut todo: Vec<Todo> = Vec::new();
    let mut hexes = Vec::new();
    for (i, (l, diff)) in layers.iter().zip(cfg.rootfs().diff_ids()).enumerate() {
        let d = l.digest().to_string();
        let what = format!("{}: layer {} of {} ({d})", r.whole(), i + 1, layers.len());
        let compression = manifest::layer_compression(l.media_type().as_ref(), &what)?;
        sha256_hex(&d, &what)?;
        let diff_hex = sha256_hex(diff, &what)?.to_string();
        hexes.push(diff_hex.clone());
        if store.layer_dir(&diff_hex).is_dir() || todo.iter().any(|t| t.diff_id == diff_hex) {
            continue;
        }
        todo.push(Todo {
            digest: d,
            size: l.size(),
            diff_id: diff_hex,
            what,
            compression,
        });
    }
    Ok((hexes, todo))
}

/// Downloads `todo`, `parallel` at a time; the bytes fetched. On the
/// first failure the other downloads stop; wrong content also takes the
/// pull's partial downloads with it.
async fn download_all(
    client: &Client,
    r: &Reference,
    root: &Path,
    todo: &[Todo],
    bars: &Bars,
    parallel: usize,
) -> Result<u64, RegistryError> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for t in todo {
        let bar = bars.layer(t.size, &t.digest[7..19]);
        let (client, r, root, sem) = (client.clone(), r.clone(), root.to_path_buf(), sem.clone());
        let (digest, size, diff_id, what, compression) = (
            t.digest.clone(),
            t.size,
            t.diff_id.clone(),
            t.what.clone(),
            t.compression,
        );
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("the semaphore stays open");
            let (n, checked) =
                fetch_layer(&client, &r, &root, &digest, size, &diff_id, &bar, &what).await?;
            if checked {
                // Where this layer is in the registry, for a later push (see
                // `sources`). Only a blob this pull checked against the
                // layer (its digest, then its diff_id) is recorded: a
                // manifest may pair a layer the store has with any blob.
                sources::record(
                    &ImageStore::open(&root)?,
                    &diff_id,
                    LayerSource {
                        registry: r.resolve_registry().to_string(),
                        repository: r.repository().to_string(),
                        digest: digest.clone(),
                        size,
                        media_type: oci_layer_type(compression).to_string(),
                        diff_id: diff_id.clone(),
                    },
                );
            }
            bar.done();
            Ok::<_, RegistryError>(n)
        });
    }
    let mut fetched = 0;
    while let Some(done) = set.join_next().await {
        let got = done
            .map_err(|e| RegistryError::Network {
                what: r.whole(),
                message: format!("a download task failed: {e}"),
            })
            .and_then(|x| x);
        match got {
            Ok(n) => fetched += n,
            Err(e) => {
                // The other downloads end here (their locks with them).
                set.shutdown().await;
                if e.is_bad_content() {
                    // A registry that serves wrong content is not resumed
                    // from: nothing of this pull is kept.
                    for t in todo {
                        if let Ok(hex) = sha256_hex(&t.digest, &t.what) {
                            let _ = std::fs::remove_file(
                                blob::partial_dir(root).join(format!("sha256-{hex}")),
                            );
                        }
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(fetched)
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
    let (m, digest) = resolve_manifest(&client, &r, &auth, &opts.platform, &who_err).await?;
    let cfg = fetch_config(&client, &r, &m, &opts.platform).await?;
    let (hexes, todo) = plan_layers(&store, &r, &m, &cfg)?;
    let bars = Bars::new(
        opts.progress,
        opts.quiet,
        todo.iter().map(|t| t.size).sum(),
        &name,
    );
    let fetched_bytes = download_all(&client, &r, &root, &todo, &bars, opts.parallel).await?;
    bars.finish();
    // Every layer is in the store: no partial download of them is needed.
    for l in m.layers() {
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
        present_layers: m.layers().len() - todo.len(),
        fetched_bytes,
    })
}

/// Downloads and unpacks one layer; returns the bytes fetched, and whether
/// this pull checked the blob against the layer (false: another pull
/// stored the layer while this one waited).
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
) -> Result<(u64, bool), RegistryError> {
    let hex = sha256_hex(digest, what)?.to_string();
    let lock_root = root.to_path_buf();
    let mut partial = tokio::task::spawn_blocking(move || Partial::open(&lock_root, &hex))
        .await
        .expect("the lock task does not panic")?;
    let store = ImageStore::open(root)?;
    if store.layer_dir(diff_id).is_dir() {
        // Another pull stored it while this one waited for the lock.
        partial.remove();
        return Ok((0, false));
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
            return check_diff_id(&root, got, &diff_id, &what).map(|()| (fetched, true));
        }
        // The streamed unpack failed: try once more from the verified file,
        // which reports the error with the file's name.
    }
    tokio::task::spawn_blocking(move || unpack(&root, partial, &diff_id, &what))
        .await
        .expect("the unpack task does not panic")?;
    Ok((fetched, true))
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
