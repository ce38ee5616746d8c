//! The workload config the host places at [`WORKLOAD_PATH`] in the initramfs.
//!
//! Format: JSON through serde. argv and env are arbitrary strings (quotes,
//! spaces, newlines, non-ASCII), so an own line format would need its own
//! escaping rules and tests; serde_json is already linked into the init via
//! duet-shared, and the host writes this very struct, so both sides cannot
//! drift apart.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the host puts the workload config inside the guest.
pub const WORKLOAD_PATH: &str = "/duet/workload.json";
/// Where the init binary sits in the initramfs (the kernel's `rdinit=`).
pub const INIT_PATH: &str = "/duet/init";
/// Largest config the init reads; anything bigger is refused, not truncated.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

/// What the guest init runs, with which environment, where, under which name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestWorkload {
    /// Command and arguments; `argv[0]` is looked up in the env's `PATH`.
    pub argv: Vec<String>,
    /// The workload's whole environment, `KEY=VALUE` entries (nothing inherited).
    pub env: Vec<String>,
    /// Absolute working directory of the workload.
    pub workdir: String,
    /// Hostname the guest gets.
    pub hostname: String,
    /// Limit on the number of workload processes (cgroup `pids.max`).
    #[serde(default)]
    pub pids_max: Option<u64>,
    /// Run the guest agent (`duet exec`, `crate::agent`) on vsock port
    /// `duet_shared::guest_abi::AGENT_PORT` beside the workload.
    #[serde(default)]
    pub agent: bool,
    /// The workload's user; `None`: root.
    #[serde(default)]
    pub user: Option<GuestUser>,
    /// Files placed in the root before the workload starts
    /// ([`crate::files`]: what an engine bind-mounts from the host).
    #[serde(default)]
    pub files: Vec<crate::files::GuestFile>,
    /// `eth0` on duet's bridge (the virtio-net device); `None`: only `lo`.
    #[serde(default)]
    pub network: Option<GuestNetwork>,
    /// A warm-start template: mount the root, then wait on vsock port
    /// `duet_shared::guest_abi::WARM_PORT` for the real workload
    /// ([`WarmStart`]); the rest of this config is not used.
    #[serde(default)]
    pub template: bool,
    /// The console is the workload's terminal (`duet run -t`): echo, line
    /// editing, `\n` -> `\r\n` and signals from the keyboard, at this size;
    /// `None`: the console passes bytes through untouched, as a pipe would.
    #[serde(default)]
    pub tty: Option<TtySize>,
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What a clone of a warm-start template gets on
/// `duet_shared::guest_abi::WARM_PORT`: its workload and what must differ
/// between clones of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmStart {
    /// The workload (hostname included).
    pub workload: GuestWorkload,
    /// Bytes mixed into the guest's RNG and credited (clones of one snapshot
    /// would otherwise share its state).
    pub seed: Vec<u8>,
    /// The host's wall clock (ns since the epoch): the guest's stopped at the snapshot.
    pub unix_time_ns: u64,
    /// A fresh /etc/machine-id (32 hex digits), written where the image has one.
    pub machine_id: String,
}

/// How the init configures `eth0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNetwork {
    /// The guest's address.
    pub address: std::net::Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway, if any.
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// The MAC `eth0` takes first, if given (the device's own: a clone of a
    /// snapshot still has its template's).
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
}

/// The ids the workload runs as (an OCI `process.user`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestUser {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// Why a workload config cannot be used; each message names the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read workload config {}", path.display())]
    Read {
        /// Config file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("workload config {} is {size} bytes, more than the {MAX_CONFIG_BYTES} accepted", path.display())]
    TooLarge {
        /// Config file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Not JSON of the expected shape.
    #[error("workload config {} is not valid", path.display())]
    Parse {
        /// Config file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Valid JSON, but a value the init cannot use.
    #[error("workload config {}: {message}", path.display())]
    Invalid {
        /// Config file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
}

impl GuestWorkload {
    /// Serializes the config as the host writes it.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("GuestWorkload always serializes")
    }

    /// Parses and validates a config; `path` only names the file in errors.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<GuestWorkload, ConfigError> {
        let w: GuestWorkload =
            serde_json::from_slice(bytes).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        w.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(w)
    }

    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<GuestWorkload, ConfigError> {
        use std::io::Read;
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::open(path).map_err(read_err)?;
        let size = f.metadata().map_err(read_err)?.len();
        if size > MAX_CONFIG_BYTES as u64 {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                size,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        f.take(MAX_CONFIG_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        GuestWorkload::from_json(&bytes, path)
    }

    /// Checks what JSON cannot express: the message names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if self.argv.is_empty() {
            return Err("`argv` is empty: there is no command to run".into());
        }
        if self.argv[0].is_empty() {
            return Err("`argv[0]` is empty".into());
        }
        for (i, a) in self.argv.iter().enumerate() {
            if a.contains('\0') {
                return Err(format!("`argv[{i}]` contains a NUL byte"));
            }
        }
        for (i, e) in self.env.iter().enumerate() {
            if e.contains('\0') {
                return Err(format!("`env[{i}]` contains a NUL byte"));
            }
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => return Err(format!("`env[{i}]` = {e:?} is not KEY=VALUE")),
            }
        }
        if !self.workdir.starts_with('/') || self.workdir.contains('\0') {
            return Err(format!(
                "`workdir` = {:?} is not an absolute path",
                self.workdir
            ));
        }
        // Linux's limit on a UTS name (HOST_NAME_MAX).
        if self.hostname.len() > 64 || self.hostname.contains('\0') {
            return Err(format!(
                "`hostname` = {:?} is longer than 64 bytes or contains NUL",
                self.hostname
            ));
        }
        crate::files::validate(&self.files)?;
        if self.pids_max == Some(0) {
            return Err("`pids_max` is 0: the workload could not even start".into());
        }
        Ok(())
    }

    /// The `PATH` value of the workload's environment, if it sets one.
    pub fn path_var(&self) -> Option<&str> {
        self.env.iter().find_map(|e| e.strip_prefix("PATH="))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GuestWorkload {
        GuestWorkload {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo \"hi\"\n'x' ü".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "A=b=c".into(), "EMPTY=".into()],
            workdir: "/tmp".into(),
            hostname: "duet".into(),
            pids_max: Some(64),
            agent: true,
            user: Some(GuestUser {
                uid: 1000,
                gid: 100,
                additional_gids: vec![10],
            }),
            files: vec![crate::files::GuestFile {
                path: "/etc/hosts".into(),
                content: b"127.0.0.1 localhost\n".to_vec(),
                read_only: true,
            }],
            network: Some(GuestNetwork {
                address: std::net::Ipv4Addr::new(10, 89, 0, 2),
                prefix: 16,
                gateway: Some(std::net::Ipv4Addr::new(10, 89, 0, 1)),
                mac: Some([0x02, 0xd0, 10, 89, 0, 2]),
            }),
            template: false,
            tty: None,
        }
    }

    #[test]
    fn json_round_trip() {
        let w = sample();
        let back = GuestWorkload::from_json(&w.to_json(), Path::new("t.json")).unwrap();
        assert_eq!(back, w);
        let mut none = w.clone();
        none.pids_max = None;
        let back = GuestWorkload::from_json(&none.to_json(), Path::new("t.json")).unwrap();
        assert_eq!(back.pids_max, None);
    }

    #[test]
    fn pids_max_may_be_omitted() {
        let j = br#"{"argv":["true"],"env":[],"workdir":"/","hostname":"h"}"#;
        let w = GuestWorkload::from_json(j, Path::new("w.json")).unwrap();
        assert_eq!(w.pids_max, None);
        assert_eq!(w.argv, ["true"]);
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let p = Path::new("/duet/workload.json");
        let e = GuestWorkload::from_json(b"{not json", p).unwrap_err();
        assert!(e.to_string().contains("/duet/workload.json"), "{e}");
        let j = br#"{"argv":[],"env":[],"workdir":"/","hostname":"h"}"#;
        let e = GuestWorkload::from_json(j, p).unwrap_err().to_string();
        assert!(
            e.contains("/duet/workload.json") && e.contains("argv"),
            "{e}"
        );
        let j = br#"{"argv":["x"],"env":["NOEQUALS"],"workdir":"/","hostname":"h"}"#;
        let e = GuestWorkload::from_json(j, p).unwrap_err().to_string();
        assert!(e.contains("env[0]"), "{e}");
        let j = br#"{"argv":["x"],"env":[],"workdir":"rel","hostname":"h"}"#;
        let e = GuestWorkload::from_json(j, p).unwrap_err().to_string();
        assert!(e.contains("workdir"), "{e}");
        let j = br#"{"argv":["x"],"env":[],"workdir":"/","hostname":"h","extra":1}"#;
        assert!(GuestWorkload::from_json(j, p).is_err());
    }

    #[test]
    fn load_reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("workload.json");
        std::fs::write(&p, sample().to_json()).unwrap();
        assert_eq!(GuestWorkload::load(&p).unwrap(), sample());
        let missing = dir.path().join("nope.json");
        let e = GuestWorkload::load(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.json"), "{e}");
    }

    #[test]
    fn path_var_finds_path() {
        assert_eq!(sample().path_var(), Some("/usr/bin:/bin"));
        let mut w = sample();
        w.env.retain(|e| !e.starts_with("PATH="));
        assert_eq!(w.path_var(), None);
    }
}
