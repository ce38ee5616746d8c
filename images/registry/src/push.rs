//! `duet push NAME [REF]`: an image of the store (pulled, imported or made
//! by `duet commit`) to a registry, as an OCI image. A layer the registry
//! is known to have (see [`crate::sources`]) is named by that blob, after
//! a HEAD in the target repository or a mount from another repository of
//! the registry; any other layer is archived again from the store's
//! unpacked tree as a tar (its digest is the diff_id), gzip-compressed
//! unless asked not to, and streamed to the registry in chunks without
//! being held in memory. Then the config, then the manifest last, so the
//! tag never names an image whose blobs are not all there.

use crate::manifest::Compression;
use crate::pull::{auth_for, client_for, with_who};
use crate::sources::{self, oci_layer_type, LayerSource};
use crate::{reference, PullOptions, RegistryError};
use duet_shared::image::{config_json, write_layer_tar, HashingWriter, ImageStore};
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// How `duet push` sends layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LayerCompression {
    /// gzip, as `docker push` sends them (every registry and engine reads it).
    #[default]
    Gzip,
    /// The tar as it is: no CPU spent, more bytes sent and stored.
    None,
}

impl LayerCompression {
    fn blob(self) -> Compression {
        match self {
            LayerCompression::Gzip => Compression::Gzip,
            LayerCompression::None => Compression::None,
        }
    }
}

/// Known places of a layer tried before it is archived and sent.
const MAX_TRIES: usize = 4;

/// One layer archived for sending: the file (at its start) and where it
/// will be once sent.
struct Archived {
    file: std::fs::File,
    path: PathBuf,
    place: LayerSource,
}

/// Archives layer `layer` of `store` into `out` (created), compressed as
/// asked, hashing the tar (the diff_id) and the blob as they are written:
/// one pass, and the tar of a gzip layer never lands on disk.
/// The gzip is deterministic (level 1, no name, mtime 0): the same layer
/// pushed again has the same digest, so a registry that has it is not sent
/// it twice. Level 1 is about three times as fast as the default for a few
/// per cent more bytes.
fn archive(
    store: &ImageStore,
    layer: &str,
    out: &Path,
    compression: LayerCompression,
    place: (&str, &str),
) -> Result<(Archived, Vec<String>), RegistryError> {
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
    let blob = HashingWriter::new(BufWriter::with_capacity(1 << 20, f));
    let dir = store.layer_dir(layer);
    let (blob, diff_id, warnings) = match compression {
        LayerCompression::None => {
            let mut blob = blob;
            let warnings = write_layer_tar(&dir, &mut blob)?;
            (blob, None, warnings)
        }
        LayerCompression::Gzip => {
            let gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(blob, flate2::Compression::fast());
            let mut tar = HashingWriter::new(gz);
            let warnings = write_layer_tar(&dir, &mut tar)?;
            let (gz, diff_id, _) = tar.finish();
            let blob = gz.finish().map_err(io("cannot compress into"))?;
            (blob, Some(diff_id), warnings)
        }
    };
    let (buffered, sha, len) = blob.finish();
    let mut file = buffered
        .into_inner()
        .map_err(|e| io("cannot write")(e.into_error()))?;
    file.flush().map_err(io("cannot write"))?;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(io("cannot read"))?;
    let (registry, repository) = place;
    Ok((
        Archived {
            file,
            path: out.to_path_buf(),
            place: LayerSource {
                registry: registry.to_string(),
                repository: repository.to_string(),
                digest: format!("sha256:{sha}"),
                size: len,
                media_type: oci_layer_type(compression.blob()).to_string(),
                // A plain tar is its own diff_id.
                diff_id: diff_id.unwrap_or(sha),
            },
        },
        warnings,
    ))
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
    /// Layers mounted from another repository of the registry: not sent.
    pub mounted: usize,
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
        // One thread: archiving a layer blocks it, and nothing else runs.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| RegistryError::Io {
                what: "cannot start the upload thread for",
                path: PathBuf::from(target),
                source,
            })?;
        rt.block_on(push_async(
            &client,
            &r,
            store,
            &image,
            &scratch,
            opts,
            compression,
        ))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// How a layer came to be in the target repository.
enum Placed {
    /// It was there already.
    Present,
    /// Mounted from another repository of the registry (the hint's).
    Mounted,
    /// Archived and sent.
    Sent,
}

/// A known place of `layer` (see [`sources`]) whose blob the target
/// repository has, or can mount from another repository of its registry.
/// A hint the registry does not confirm is passed over, whatever the
/// reason: the layer is then archived and sent, and that upload reports
/// any real trouble with the registry.
async fn known_place(
    client: &Client,
    r: &Reference,
    store: &ImageStore,
    layer: &str,
    compression: LayerCompression,
) -> Option<(LayerSource, Placed)> {
    let (registry, repository) = (r.resolve_registry(), r.repository());
    let mut asked = HashSet::new();
    let candidates = sources::candidates(store, layer, registry, repository, compression.blob());
    for s in candidates.into_iter().take(MAX_TRIES) {
        // A HEAD that fails is no answer either way: the hint is passed over.
        if asked.insert(s.digest.clone()) && client.blob_exists(r, &s.digest).await.unwrap_or(false)
        {
            return Some((s, Placed::Present));
        }
        if s.repository != repository {
            let from = Reference::with_tag(
                r.registry().to_string(),
                s.repository.clone(),
                "latest".to_string(),
            );
            // A registry that cannot mount it (the source repository lost
            // it, or the credentials do not reach it) answers otherwise
            // than 201: the layer is then archived and sent.
            if client.mount_blob(r, &from, &s.digest).await.is_ok() {
                return Some((s, Placed::Mounted));
            }
        }
    }
    None
}

async fn push_async(
    client: &Client,
    r: &Reference,
    store: &ImageStore,
    image: &duet_shared::image::Image,
    scratch: &Path,
    opts: &PullOptions,
    compression: LayerCompression,
) -> Result<Pushed, RegistryError> {
    let what = r.whole();
    let (auth, who) = auth_for(r, opts)?;
    let registry = r.registry().to_string();
    let fail = |e| with_who(RegistryError::from_oci(&what, e), &who, &registry);
    client
        .auth(r, &auth, RegistryOperation::Push)
        .await
        .map_err(fail)?;
    let here = (r.resolve_registry(), r.repository());
    let (mut descriptors, mut diff_ids) = (Vec::new(), Vec::new());
    let (mut bytes, mut present, mut mounted) = (0u64, 0usize, 0usize);
    let n = image.layers.len();
    for (i, layer) in image.layers.iter().enumerate() {
        let (place, how) = match known_place(client, r, store, layer, compression).await {
            Some(found) => found,
            None => {
                let (a, warnings) = archive(
                    store,
                    layer,
                    &scratch.join(format!("layer-{i}")),
                    compression,
                    here,
                )?;
                if !opts.quiet {
                    for w in warnings {
                        eprintln!("duet: {w}");
                    }
                }
                let Archived { file, path, place } = a;
                // A HEAD of the blob: one the repository has is not sent again.
                let how = if client.blob_exists(r, &place.digest).await.map_err(fail)? {
                    Placed::Present
                } else {
                    if !opts.quiet {
                        eprintln!(
                            "duet: pushing layer {}/{n} {} ({:.1} MB)",
                            i + 1,
                            place.digest,
                            place.size as f64 / 1e6
                        );
                    }
                    client
                        .push_blob_stream(r, chunks(file), &place.digest, Some(place.size))
                        .await
                        .map_err(fail)?;
                    bytes += place.size;
                    Placed::Sent
                };
                let _ = std::fs::remove_file(path);
                (place, how)
            }
        };
        match how {
            Placed::Present => {
                present += 1;
                if !opts.quiet {
                    eprintln!(
                        "duet: layer {}/{n} {} is already in the repository",
                        i + 1,
                        place.digest
                    );
                }
            }
            Placed::Mounted => {
                mounted += 1;
                if !opts.quiet {
                    // The hint's repository, before the record below names the target.
                    eprintln!(
                        "duet: layer {}/{n} {} mounted from {}",
                        i + 1,
                        place.digest,
                        place.repository
                    );
                }
            }
            Placed::Sent => {}
        }
        descriptors.push(serde_json::json!({
            "mediaType": place.media_type, "digest": place.digest, "size": place.size,
        }));
        diff_ids.push(place.diff_id.clone());
        // The target has it now: a later push elsewhere may mount it from here.
        sources::record(
            store,
            layer,
            LayerSource {
                registry: here.0.to_string(),
                repository: here.1.to_string(),
                ..place
            },
        );
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
        mounted,
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
