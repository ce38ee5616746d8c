//! Images: an ordered list of shared, read-only, content-addressed layers
//! plus a config (env, cmd, workdir), stored under `<root>/`:
//!
//! ```text
//! layers/sha256/<hex>/fs/        unpacked layer (overlay whiteouts as 0:0 char devices)
//! layers/sha256/<hex>/size       bytes of the layer's uncompressed tar
//! images/<name>.json             manifest: layer digests bottom first + config
//! ```
//! A layer's digest is the sha256 of its uncompressed tar stream (the OCI
//! `diff_id`), so the same layer imported twice is unpacked once.

mod beneath;
mod borrow;
mod busybox;
mod commit;
#[cfg(test)]
mod confinement_tests;
pub mod escape;
mod hashing;
mod import;
pub mod layer_image;
mod layout;
#[cfg(test)]
mod outer_tests;
#[cfg(test)]
mod proptests;
mod read_ahead;
mod save;
mod store;
#[cfg(test)]
mod tests;
mod unpack;
mod user;
pub mod whiteout;

pub use busybox::{ensure_probe_layer, find_probe, PROBE_ENV, PROBE_IN_IMAGE, SYSTEM_PROBE_PATH};
pub use commit::{commit_upper, write_layer_tar, Committed};
pub use hashing::HashingWriter;
pub use import::{
    add_layer, add_layer_reporting, import_tarball, ImportFormat, ImportOptions, Imported,
    DEFAULT_PATH, MAX_INDEX_DEPTH, MAX_JSON,
};
pub use save::{config_json, save_image};
pub use store::{valid_reference_name, ImageError, ImageStore};
pub use user::resolve_user;
pub use whiteout::{is_opaque, is_whiteout, OPAQUE_MARKER, WHITEOUT_PREFIX};

use serde::{Deserialize, Serialize};

/// Name of the image duet builds from the host's busybox-static on first use.
pub const BUSYBOX_IMAGE: &str = "busybox";

/// What an image says about how to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Default arguments (Docker's `Cmd`): replaced by a command given at run.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Docker's `Entrypoint`: put before the command, given or default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Default working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// The user to run as (`uid`, `uid:gid`, or a name in the image's /etc/passwd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Ports the image says it listens on (`80/tcp`); informational.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
}

impl ImageConfig {
    /// The argv to run, as Docker combines them: the entrypoint, then the
    /// given command (or, if none, the default one).
    pub fn argv(&self, command: &[String]) -> Vec<String> {
        let mut argv = self.entrypoint.clone();
        argv.extend_from_slice(if command.is_empty() {
            &self.cmd
        } else {
            command
        });
        argv
    }
}

/// Where a pulled image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    /// The whole reference pulled (`docker.io/library/debian:12`).
    pub reference: String,
    /// Digest of the image manifest (`sha256:...`).
    pub digest: String,
    /// The platform chosen (`linux/amd64`).
    pub platform: String,
}

/// An image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Name in the store.
    pub name: String,
    /// Layer digests (hex sha256), bottom layer first.
    pub layers: Vec<String>,
    /// Run defaults.
    pub config: ImageConfig,
    /// The registry it was pulled from; `None` for an imported or committed image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageSource>,
}
