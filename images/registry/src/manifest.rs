//! Manifests as a registry serves them: an image index (OCI) or manifest
//! list (Docker) picks one image manifest per platform; an image manifest
//! names a config blob and layer blobs. Parsed with oci-spec's image types;
//! Docker schema 2 media types are accepted next to OCI's, schema 1 is
//! refused.

use crate::RegistryError;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

/// Media types asked for when fetching a manifest.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or config read from a registry.
pub const MAX_MANIFEST: u64 = 4 << 20;

/// The platform to pull: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// Architecture in Go's names (`amd64`, `arm64`).
    pub architecture: String,
    /// Variant (`v8`), if asked for.
    pub variant: Option<String>,
}

impl Platform {
    /// This machine's: linux and the host's architecture.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts[..] {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: parts
                    .get(2)
                    .map(|v| v.to_string())
                    .filter(|v| !v.is_empty()),
            }),
            _ => Err(format!("`{s}` is not os/arch[/variant] (e.g. linux/amd64)")),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A parsed manifest.
#[derive(Debug)]
pub enum Manifest {
    /// An index or manifest list.
    Index(Box<ImageIndex>),
    /// One image.
    Image(Box<ImageManifest>),
}

/// Parses manifest bytes; `what` names it in errors.
pub fn parse(bytes: &[u8], what: &str) -> Result<Manifest, RegistryError> {
    let bad = |message: String| RegistryError::Manifest {
        what: what.to_string(),
        message,
    };
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let media_type = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return Err(bad(
            "Docker schema 1 manifests (deprecated since 2017) are not supported".into(),
        ));
    }
    let is_index = media_type == OCI_INDEX
        || media_type == DOCKER_LIST
        || (media_type.is_empty() && v.get("manifests").is_some());
    if is_index {
        return serde_json::from_value(v)
            .map(|i| Manifest::Index(Box::new(i)))
            .map_err(|e| bad(format!("bad image index: {e}")));
    }
    if !(media_type.is_empty() || media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST) {
        return Err(bad(format!(
            "media type `{media_type}` is not an image manifest or index"
        )));
    }
    serde_json::from_value(v)
        .map(|m| Manifest::Image(Box::new(m)))
        .map_err(|e| bad(format!("bad image manifest: {e}")))
}

/// The index entry for `want`; the error lists what the index offers.
pub fn select<'a>(
    index: &'a ImageIndex,
    want: &Platform,
    what: &str,
) -> Result<&'a Descriptor, RegistryError> {
    let offered: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| {
            let mut s = format!("{}/{}", p.os(), p.architecture());
            if let Some(v) = p.variant() {
                s.push('/');
                s.push_str(v);
            }
            s
        })
        .collect();
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == want.os
                    && p.architecture().to_string() == want.architecture
                    && want
                        .variant
                        .as_ref()
                        .is_none_or(|v| p.variant().as_deref() == Some(v.as_str()))
            })
        })
        .ok_or_else(|| RegistryError::NoPlatform {
            what: what.to_string(),
            want: want.to_string(),
            offered,
        })
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// A layer's compression, or why duet does not unpack it.
pub fn layer_compression(media_type: &str, what: &str) -> Result<Compression, RegistryError> {
    let c = match media_type {
        "application/vnd.oci.image.layer.v1.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd" => Compression::Zstd,
        m if m.contains("foreign") || m.contains("nondistributable") => {
            return Err(RegistryError::Manifest {
                what: what.to_string(),
                message: format!("layer media type `{m}` is a foreign layer (fetched from outside the registry), which duet does not pull"),
            })
        }
        m => {
            return Err(RegistryError::Manifest {
                what: what.to_string(),
                message: format!("layer media type `{m}` is not a tar layer duet can unpack"),
            })
        }
    };
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> ImageIndex {
        let json = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "size": 10, "digest": format!("sha256:{}", "a".repeat(64)),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_MANIFEST, "size": 10, "digest": format!("sha256:{}", "b".repeat(64)),
                 "platform": {"os": "linux", "architecture": "amd64"}}
            ]
        });
        match parse(&serde_json::to_vec(&json).unwrap(), "t").unwrap() {
            Manifest::Index(i) => *i,
            Manifest::Image(_) => panic!("an index"),
        }
    }

    #[test]
    fn the_asked_platform_is_chosen_and_a_missing_one_lists_the_others() {
        let i = index();
        let amd = select(&i, &"linux/amd64".parse().unwrap(), "t").unwrap();
        assert!(amd.digest().to_string().ends_with(&"b".repeat(64)));
        let arm = select(&i, &"linux/arm64/v8".parse().unwrap(), "t").unwrap();
        assert!(arm.digest().to_string().ends_with(&"a".repeat(64)));
        let e = select(&i, &"linux/s390x".parse().unwrap(), "img")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("linux/s390x") && e.contains("linux/arm64/v8") && e.contains("img"),
            "{e}"
        );
    }

    #[test]
    fn schema1_and_unknown_media_types_are_refused() {
        let e = parse(br#"{"schemaVersion": 1, "name": "x"}"#, "img")
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema 1") && e.contains("img"), "{e}");
        let e = parse(br#"{"schemaVersion": 2, "mediaType": "text/html"}"#, "img")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("text/html"), "{e}");
        assert!(layer_compression(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "l"
        )
        .is_err());
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd", "l").unwrap(),
            Compression::Zstd
        );
    }

    #[test]
    fn platforms_parse_and_print() {
        assert_eq!(
            "linux/arm64/v8".parse::<Platform>().unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert!("linux".parse::<Platform>().is_err());
        assert_eq!(Platform::host().os, "linux");
    }
}
