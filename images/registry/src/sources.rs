//! Where a stored layer is known to be in registries: the compressed blob a
//! pull fetched it as, or a push sent it as, by registry and repository.
//! Kept beside the layer (`layers/sha256/<diff_id>/sources.json`), so it
//! goes with the layer.
//!
//! `duet push` uses it as Docker uses its distribution metadata: a layer
//! the target repository has already is not sent; one that another
//! repository of the same registry has is mounted from there (a
//! cross-repository blob mount, no bytes sent); and a pulled layer goes
//! back as the very blob it was pulled as, instead of being archived and
//! compressed again. A pull records only a blob it checked against the
//! layer itself (its digest, then its diff_id); a push, only what it sent
//! or found through such a hint. It is a cache of hints: the registry is
//! asked whether the target repository has the blob (HEAD) or can mount
//! it before the manifest names it, and a missing, unreadable or
//! malformed hint only means the layer is archived and sent.

use crate::manifest::Compression;
use duet_shared::image::ImageStore;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One place a layer is known to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSource {
    /// The registry's host as the client resolves it
    /// (`index.docker.io` for `docker.io`).
    pub registry: String,
    /// The repository in it (`library/debian`).
    pub repository: String,
    /// The blob's digest (`sha256:...`).
    pub digest: String,
    /// The blob's length in bytes.
    pub size: u64,
    /// Its OCI media type (a Docker one is recorded as its OCI equal).
    pub media_type: String,
    /// sha256 (hex) of the blob uncompressed: the diff_id a config lists.
    pub diff_id: String,
}

/// The file name beside a layer's `fs/`.
const FILE: &str = "sources.json";
/// Places kept per layer, newest first (Docker keeps a few per layer too).
const MAX_SOURCES: usize = 16;
/// Larger files are not read (they were not written by duet).
const MAX_FILE: u64 = 64 << 10;

/// The OCI media type of a layer blob with `c`.
pub fn oci_layer_type(c: Compression) -> &'static str {
    match c {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

fn file_of(store: &ImageStore, layer: &str) -> PathBuf {
    store.layer_path(layer).join(FILE)
}

/// The places layer `layer` (a diff_id, hex) is known to be, newest first.
pub fn read(store: &ImageStore, layer: &str) -> Vec<LayerSource> {
    read_file(&file_of(store, layer))
}

fn read_file(p: &Path) -> Vec<LayerSource> {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(p) else {
        return Vec::new();
    };
    let mut bytes = Vec::new();
    if f.take(MAX_FILE + 1).read_to_end(&mut bytes).is_err() || bytes.len() as u64 > MAX_FILE {
        return Vec::new();
    }
    let all: Vec<LayerSource> = serde_json::from_slice(&bytes).unwrap_or_default();
    all.into_iter().filter(LayerSource::well_formed).collect()
}

impl LayerSource {
    /// Whether every field can go into a request and a manifest as it is
    /// (a file edited by hand, or damaged, is no hint).
    fn well_formed(&self) -> bool {
        let hex64 = |h: &str| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        self.digest.strip_prefix("sha256:").is_some_and(hex64)
            && hex64(&self.diff_id)
            && !self.registry.is_empty()
            && !self.repository.is_empty()
            && self
                .repository
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
            && [Compression::None, Compression::Gzip, Compression::Zstd]
                .iter()
                .any(|&c| self.media_type == oci_layer_type(c))
    }
}

/// Records that layer `layer` is `s`. Best effort: a layer directory lent
/// by another store (a symlink) is left alone, and two pulls recording at
/// once may lose one hint, which costs a later push an upload, no more.
pub fn record(store: &ImageStore, layer: &str, s: LayerSource) {
    let dir = store.layer_path(layer);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        _ => return,
    }
    let p = dir.join(FILE);
    let mut all = read_file(&p);
    all.retain(|o| {
        (
            o.registry.as_str(),
            o.repository.as_str(),
            o.digest.as_str(),
        ) != (
            s.registry.as_str(),
            s.repository.as_str(),
            s.digest.as_str(),
        )
    });
    all.insert(0, s);
    all.truncate(MAX_SOURCES);
    let tmp = dir.join(format!(".{FILE}.{}", std::process::id()));
    let json = serde_json::to_vec(&all).expect("sources serialize");
    if std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, &p))
        .is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The places of `layer` in `registry` whose blob has compression `want`:
/// those in `repository` first, then the other repositories.
pub fn candidates(
    store: &ImageStore,
    layer: &str,
    registry: &str,
    repository: &str,
    want: Compression,
) -> Vec<LayerSource> {
    let mut c: Vec<LayerSource> = read(store, layer)
        .into_iter()
        .filter(|s| s.registry == registry && s.media_type == oci_layer_type(want))
        .collect();
    // A stable sort: newest first within each group.
    c.sort_by_key(|s| s.repository != repository);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn src(repo: &str, digest: &str, c: Compression) -> LayerSource {
        LayerSource {
            registry: "reg:5000".into(),
            repository: repo.into(),
            digest: digest.into(),
            size: 3,
            media_type: oci_layer_type(c).into(),
            diff_id: "d".repeat(64),
        }
    }

    /// Recorded places come back newest first, the target's repository
    /// before others, only of the registry and compression asked for; one
    /// place recorded twice is kept once; the list is bounded.
    #[test]
    fn places_are_kept_per_layer_and_offered_in_order() {
        let t = tempfile::tempdir().unwrap();
        let store = ImageStore::open(t.path()).unwrap();
        let layer = "a".repeat(64);
        // No layer directory: nothing is recorded, nothing offered.
        record(&store, &layer, src("x/one", D1, Compression::Gzip));
        assert!(read(&store, &layer).is_empty());
        std::fs::create_dir_all(store.layer_dir(&layer)).unwrap();
        record(&store, &layer, src("x/one", D1, Compression::Gzip));
        record(&store, &layer, src("x/two", D1, Compression::Gzip));
        record(&store, &layer, src("x/two", D2, Compression::None));
        record(&store, &layer, src("x/one", D1, Compression::Gzip));
        let mut other = src("x/one", D1, Compression::Gzip);
        other.registry = "elsewhere".into();
        record(&store, &layer, other);
        assert_eq!(read(&store, &layer).len(), 4);
        let got: Vec<String> = candidates(&store, &layer, "reg:5000", "x/two", Compression::Gzip)
            .into_iter()
            .map(|s| s.repository)
            .collect();
        assert_eq!(got, ["x/two", "x/one"]);
        let got = candidates(&store, &layer, "reg:5000", "x/one", Compression::None);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].digest, D2);
        // A malformed place (a damaged or hand-edited file) is not offered.
        let mut bad = src("x/one", "sha256:../../etc", Compression::Gzip);
        record(&store, &layer, bad.clone());
        bad.digest = D1.into();
        bad.repository = "X/Upper?q".into();
        record(&store, &layer, bad);
        assert_eq!(read(&store, &layer).len(), 4);
        for i in 0..40 {
            record(
                &store,
                &layer,
                src(&format!("r/{i}"), D1, Compression::Gzip),
            );
        }
        let all = read(&store, &layer);
        assert_eq!(all.len(), MAX_SOURCES);
        assert_eq!(all[0].repository, "r/39");
        // A corrupt or oversized file is no hint at all, and is replaced.
        std::fs::write(file_of(&store, &layer), b"{not json").unwrap();
        assert!(read(&store, &layer).is_empty());
        std::fs::write(file_of(&store, &layer), vec![b' '; MAX_FILE as usize + 1]).unwrap();
        assert!(read(&store, &layer).is_empty());
        record(&store, &layer, src("x/one", D1, Compression::Gzip));
        assert_eq!(read(&store, &layer).len(), 1);
    }

    /// A layer lent by another store (a symlink) is not written through.
    #[test]
    fn a_borrowed_layer_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let store = ImageStore::open(t.path()).unwrap();
        let lender = tempfile::tempdir().unwrap();
        let layer = "b".repeat(64);
        std::os::unix::fs::symlink(lender.path(), store.layer_path(&layer)).unwrap();
        record(&store, &layer, src("x/one", D1, Compression::Gzip));
        assert!(!lender.path().join(FILE).exists());
    }
}
