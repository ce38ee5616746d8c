//! Pulling images from OCI registries (the distribution API v2, through
//! the `oci-client` crate) into duet's image store: references as Docker
//! writes them, credentials from Docker's config, a platform picked from
//! an index, every blob verified as it streams, layers fetched in
//! parallel (bounded) and stored once by their content digest.

pub mod auth;
pub mod blob;
pub mod manifest;
mod progress;
mod pull;
mod push;
pub mod reference;
pub mod sources;

pub use manifest::Platform;
pub use pull::{login, pull, PullOptions, Pulled};
pub use push::{names_a_registry, push, LayerCompression, Pushed};

use std::path::PathBuf;

/// What went wrong in a pull; each names the image, blob or file.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Not a reference Docker would accept.
    #[error("`{reference}` is not an image reference: {message}")]
    BadReference { reference: String, message: String },
    /// The docker config's credentials cannot be read.
    #[error("{}: {message}", path.display())]
    Credentials { path: PathBuf, message: String },
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A manifest, index or config duet cannot use.
    #[error("{what}: {message}")]
    Manifest { what: String, message: String },
    /// The index has no image for the platform.
    #[error("{what}: no image for platform {want}; the index offers {}", if offered.is_empty() { "none".to_string() } else { offered.join(", ") })]
    NoPlatform {
        what: String,
        want: String,
        offered: Vec<String>,
    },
    /// The registry refused the credentials (or asked for some).
    #[error("{what}: the registry refused {who} (HTTP 401/403){hint}")]
    Unauthorized {
        what: String,
        who: String,
        hint: String,
    },
    /// The registry does not have it.
    #[error("{what}: not found in the registry ({message})")]
    NotFound { what: String, message: String },
    /// HTTP, TLS or protocol failure.
    #[error("{what}: {message}")]
    Network { what: String, message: String },
    /// A blob's content is not the digest its descriptor names.
    #[error("{what}: the registry sent content with digest {actual}, not {expected}; nothing was stored")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// A blob is not the size its descriptor names.
    #[error("{what}: expected {expected} bytes, the registry sent {got}")]
    SizeMismatch {
        what: String,
        expected: u64,
        got: String,
    },
    /// A layer unpacked to another digest than the config's diff_id.
    #[error("{what}: it unpacks to sha256:{actual}, but the image config says {expected}; the layer was not kept")]
    DiffIdMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// The image store refused it.
    #[error(transparent)]
    Store(#[from] duet_shared::image::ImageError),
}

impl RegistryError {
    /// Whether the registry sent content other than what its descriptors
    /// name (not a network failure a resume could finish).
    pub fn is_bad_content(&self) -> bool {
        match self {
            RegistryError::DigestMismatch { .. } | RegistryError::DiffIdMismatch { .. } => true,
            RegistryError::SizeMismatch { got, .. } => got.starts_with("more"),
            _ => false,
        }
    }

    /// Names `what` in an error of the distribution client.
    pub(crate) fn from_oci(what: &str, e: oci_client::errors::OciDistributionError) -> Self {
        use oci_client::errors::OciDistributionError as E;
        let what = what.to_string();
        match e {
            E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => {
                RegistryError::Unauthorized {
                    what,
                    who: "anonymous access".into(),
                    hint: String::new(),
                }
            }
            E::ImageManifestNotFoundError(m) => RegistryError::NotFound { what, message: m },
            E::ServerError {
                code: 404,
                url,
                message,
            } => RegistryError::NotFound {
                what,
                message: format!("{url}: {message}"),
            },
            E::RegistryError { envelope, url } => {
                let text = envelope.to_string();
                let lower = text.to_lowercase();
                if lower.contains("unauthorized") || lower.contains("denied") {
                    RegistryError::Unauthorized {
                        what,
                        who: "anonymous access".into(),
                        hint: String::new(),
                    }
                } else if lower.contains("unknown") || lower.contains("not found") {
                    RegistryError::NotFound {
                        what,
                        message: format!("{url}: {text}"),
                    }
                } else {
                    RegistryError::Network {
                        what,
                        message: format!("{url}: {text}"),
                    }
                }
            }
            e => RegistryError::Network {
                what,
                message: error_chain(&e),
            },
        }
    }
}

/// An error with its sources, `: `-joined (reqwest hides the cause in them).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
