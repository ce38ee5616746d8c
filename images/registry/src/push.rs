//! `duet push NAME [REF]`: an image of the store (pulled, imported or made
//! by `duet commit`) to a registry, as an OCI image: each layer archived
//! again from the store's unpacked tree as a tar (its digest is the
//! diff_id), gzip-compressed unless asked not to, streamed to the registry
//! in chunks without being held in memory, then the config, then the
//! manifest last, so the tag never names an image whose blobs are not all
//! there.

use crate::pull::{auth_for, client_for, with_who};
use crate::{reference, PullOptions, RegistryError};
use duet_shared::image::{archive_layers, config_json, ImageStore};
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::path::PathBuf;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP_LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// How `duet push` sends layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LayerCompression {
    /// gzip, as `docker push` sends them (every registry and engine reads it).
    #[default]
    Gzip,
    /// The tar as it is: no CPU spent, more bytes sent and stored.
    None,
}

/// One layer as it is sent: the file, its digest (hex), length and media type.
struct Blob {
    file: std::fs::File,
    sha: String,
    len: u64,
    media_type: &'static str,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// gzip of the layer tar `tar` into `out` (created), read back from its start.
/// Deterministic (level 1, no name, mtime 0): the same layer pushed again has
/// the same digest, so a registry that has it is not sent it twice. Level 1
/// is about three times as fast as the default for a few per cent more bytes.
fn gzip_layer(mut tar: std::fs::File, out: &std::path::Path) -> Result<Blob, RegistryError> {
    use std::io::{Seek, Write};
    let io = |what: &'static str| {
        let path = out.to_path_buf();
        move |source| RegistryError::Io { what, path, source }
    };
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(io("cannot create"))?;
    tar.seek(std::io::SeekFrom::Start(0))
        .map_err(io("cannot read the layer tar for"))?;
    let hashing = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, f),
        hasher: Sha256::new(),
        len: 0,
    };
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(hashing, flate2::Compression::fast());
    std::io::copy(&mut tar, &mut gz).map_err(io("cannot compress into"))?;
    let mut hashing = gz.finish().map_err(io("cannot compress into"))?;
    hashing.flush().map_err(io("cannot write"))?;
    let Hashing { inner, hasher, len } = hashing;
    let mut file = inner
        .into_inner()
        .map_err(|e| io("cannot write")(e.into_error()))?;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(io("cannot read"))?;
    Ok(Blob {
        file,
        sha: hex::encode(hasher.finalize()),
        len,
        media_type: GZIP_LAYER_TYPE,
    })
}
/// Bytes per PATCH of a chunked blob upload.
const CHUNK: usize = 4 << 20;

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The reference pushed to, as the registry names it.
    pub reference: String,
    /// The manifest's digest (`sha256:...`): pulling this reference by it
    /// gives the same image.
    pub digest: String,
    /// Layers in the image.
    pub layers: usize,
    /// Bytes sent (layers the registry lacked).
    pub bytes: u64,
    /// Layers the repository already had: not sent again.
    pub present: usize,
}

/// Pushes image `name` of `store` to `target` (a reference).
pub fn push(
    store: &ImageStore,
    name: &str,
    target: &str,
    opts: &PullOptions,
    compression: LayerCompression,
) -> Result<Pushed, RegistryError> {
    let image = store.get(name)?;
    let r = reference::parse(target)?;
    let client = client_for(store.root(), &r, opts)?;
    let scratch = store.scratch("push")?;
    let result = (|| {
        let (layers, warnings) = archive_layers(store, &image, &scratch)?;
        if !opts.quiet {
            for w in warnings {
                eprintln!("duet: {w}");
            }
        }
        let mut blobs = Vec::new();
        for (i, (file, sha, len)) in layers.into_iter().enumerate() {
            let blob = match compression {
                LayerCompression::None => Blob {
                    file,
                    sha: sha.clone(),
                    len,
                    media_type: LAYER_TYPE,
                },
                LayerCompression::Gzip => {
                    gzip_layer(file, &scratch.join(format!("layer-{i}.tar.gz")))?
                }
            };
            blobs.push((blob, sha));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| RegistryError::Io {
                what: "cannot start the upload thread for",
                path: PathBuf::from(target),
                source,
            })?;
        rt.block_on(push_async(&client, &r, &image, blobs, opts))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn push_async(
    client: &Client,
    r: &Reference,
    image: &duet_shared::image::Image,
    layers: Vec<(Blob, String)>,
    opts: &PullOptions,
) -> Result<Pushed, RegistryError> {
    let what = r.whole();
    let (auth, who) = auth_for(r, opts)?;
    let registry = r.registry().to_string();
    let fail = |e| with_who(RegistryError::from_oci(&what, e), &who, &registry);
    client
        .auth(r, &auth, RegistryOperation::Push)
        .await
        .map_err(fail)?;
    let (mut descriptors, mut diff_ids) = (Vec::new(), Vec::new());
    let (mut bytes, mut present) = (0u64, 0usize);
    for (i, (blob, diff_id)) in layers.into_iter().enumerate() {
        let Blob {
            file,
            sha,
            len,
            media_type,
        } = blob;
        let digest = format!("sha256:{sha}");
        diff_ids.push(diff_id);
        let descriptor = serde_json::json!({
            "mediaType": media_type, "digest": digest, "size": len,
        });
        // A HEAD of the blob: a layer the repository has is not sent again.
        if client.blob_exists(r, &digest).await.map_err(fail)? {
            if !opts.quiet {
                eprintln!(
                    "duet: layer {}/{} {digest} is already in the registry",
                    i + 1,
                    image.layers.len()
                );
            }
            present += 1;
            descriptors.push(descriptor);
            continue;
        }
        if !opts.quiet {
            eprintln!(
                "duet: pushing layer {}/{} {digest} ({:.1} MB)",
                i + 1,
                image.layers.len(),
                len as f64 / 1e6
            );
        }
        client
            .push_blob_stream(r, chunks(file), &digest, Some(len))
            .await
            .map_err(fail)?;
        bytes += len;
        descriptors.push(descriptor);
    }
    let config = config_json(image, &diff_ids);
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    let config_len = config.len();
    client
        .push_blob(r, config, &config_digest)
        .await
        .map_err(fail)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": CONFIG_TYPE, "digest": config_digest, "size": config_len },
        "layers": descriptors,
    }))
    .expect("a JSON value serializes");
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
    client
        .push_manifest_raw(r, manifest, http::HeaderValue::from_static(MANIFEST_TYPE))
        .await
        .map_err(fail)?;
    Ok(Pushed {
        reference: what,
        digest,
        layers: diff_ids.len(),
        bytes,
        present,
    })
}

/// `file` from its start as a stream of [`CHUNK`]-byte pieces. The reads
/// block the upload thread briefly; it does nothing else meanwhile.
fn chunks(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0;
        while n < CHUNK {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some((Err(e.into()), None)),
            }
        }
        if n == 0 {
            return None;
        }
        buf.truncate(n);
        Some((Ok(bytes::Bytes::from(buf)), Some(f)))
    })
}

/// Where `duet push` without a target sends `name`: itself, if it names a
/// registry (a host with a dot or a port, or `localhost`).
pub fn names_a_registry(name: &str) -> bool {
    let first = name.split('/').next().unwrap_or_default();
    name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost")
}
