//! The workload spec: one TOML file that both isolations read.
//!
//! ```toml
//! name = "hello"
//! image = "busybox"
//! command = ["/bin/sh", "-c", "echo hi"]
//! env = { GREETING = "hi" }
//! workdir = "/"
//! isolation = "container"     # or "vm"
//! network = "bridge"         # or "none", "host"; default: the state root's (bridge)
//! ports = ["8080:80/tcp"]     # HOSTPORT:PORT[/tcp|udp], or PORT for a free host port
//! dns = ["192.0.2.53"]        # default: the host's resolvers
//! [resources]
//! memory_mib = 128
//! vcpus = 1
//! pids_max = 256
//! ```

pub use crate::netspec::{NetworkMode, PortMapping, Protocol};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which kind of isolation runs the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Namespaces and cgroups on the shared host kernel.
    Container,
    /// A KVM microVM with its own guest kernel.
    Vm,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::Container => "container",
            Isolation::Vm => "vm",
        })
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "container" => Ok(Isolation::Container),
            "vm" => Ok(Isolation::Vm),
            other => Err(format!(
                "unknown isolation `{other}`: expected `container` or `vm`"
            )),
        }
    }
}

/// Resource limits: cgroup limits for a container, the machine size for a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit (container) or guest RAM (VM), MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// CPU quota in whole CPUs (container) or vCPU count (VM).
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Maximum number of tasks (container) / processes inside the guest (VM).
    #[serde(default)]
    pub pids_max: Option<u64>,
}

fn default_memory_mib() -> u64 {
    128
}
fn default_vcpus() -> u32 {
    1
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            memory_mib: default_memory_mib(),
            vcpus: default_vcpus(),
            pids_max: None,
        }
    }
}

/// A workload: what to run, from which image, with which limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Instance name; also the hostname inside.
    #[serde(default = "default_name")]
    pub name: String,
    /// Image name in the store (e.g. `busybox`).
    pub image: String,
    /// argv; empty means the image's default command.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment added to the image's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; `None` means the image's (or `/`).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Isolation named in the file; `--isolation` overrides it.
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// Limits.
    #[serde(default)]
    pub resources: Resources,
    /// How it reaches the network; `None`: the state root's default
    /// (`bridge` unless `network.toml` says otherwise).
    #[serde(default)]
    pub network: Option<NetworkMode>,
    /// Published ports (bridge network only).
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// DNS servers for the instance's resolv.conf; empty: the host's.
    #[serde(default)]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// The user to run as: `uid[:gid]`, or `name[:group]` from the image's
    /// /etc/passwd and /etc/group; `None`: the image's user, else root.
    /// `duet run` resolves it to `uid:gid` before a backend sees it.
    #[serde(default)]
    pub user: Option<String>,
    /// Supplementary group ids of the workload besides the user's group:
    /// `duet run` fills them in from the image's /etc/group (the groups
    /// that list the user by name), as Docker does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
}

/// A workload's ids: who it runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    /// Every group of the process: `gid` first, then the supplementary ones.
    pub groups: Vec<u32>,
}

fn default_name() -> String {
    "duet".to_string()
}

/// Largest guest/container memory duet accepts, MiB (sanity bound, 1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Smallest memory a workload may ask for, MiB.
pub const MIN_MEMORY_MIB: u64 = 4;
/// Most vCPUs duet configures (the MP table and APIC ids are laid out for this many).
pub const MAX_VCPUS: u32 = 64;

/// A spec that could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read spec {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or a field of the wrong type/name.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A field with a value duet cannot use.
    #[error("{}: field `{field}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

impl WorkloadSpec {
    /// A spec for `IMAGE [-- CMD...]` given on the command line.
    pub fn for_image(image: &str, command: Vec<String>) -> WorkloadSpec {
        WorkloadSpec {
            name: default_name(),
            image: image.to_string(),
            command,
            env: BTreeMap::new(),
            workdir: None,
            isolation: None,
            resources: Resources::default(),
            network: None,
            ports: Vec::new(),
            dns: Vec::new(),
            user: None,
            groups: Vec::new(),
        }
    }

    /// The resolved user as (uid, gid): `uid:gid`, or `uid` (gid 0, as runc
    /// does for a uid the image's /etc/passwd lacks); `None` for root or a
    /// name not resolved yet.
    pub fn numeric_user(&self) -> Option<(u32, u32)> {
        parse_numeric_user(self.user.as_deref()?)
    }

    /// [`numeric_user`](Self::numeric_user) with the process's groups.
    pub fn user_ids(&self) -> Option<UserIds> {
        let (uid, gid) = self.numeric_user()?;
        let mut groups = vec![gid];
        groups.extend(self.groups.iter().filter(|g| **g != gid));
        groups.dedup();
        Some(UserIds { uid, gid, groups })
    }

    /// Reads, parses and validates a spec file.
    pub fn load(path: &Path) -> Result<WorkloadSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates spec text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<WorkloadSpec, SpecError> {
        let spec: WorkloadSpec = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            let key = e.span().and_then(|s| key_at(text, s.start));
            let mut message = e.message().trim().to_string();
            if let Some(k) = key {
                if !message.contains(&format!("`{k}`")) {
                    message = format!("field `{k}`: {message}");
                }
            }
            SpecError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        })?;
        spec.validate(path)?;
        Ok(spec)
    }

    /// Checks values that parse but cannot be run; names the field.
    pub fn validate(&self, path: &Path) -> Result<(), SpecError> {
        let bad = |field: &'static str, message: String| SpecError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        if !valid_name(&self.name) {
            return Err(bad(
                "name",
                format!(
                    "`{}` is not a valid instance name (1-63 of a-z, A-Z, 0-9, '-', '_', '.', not starting with '.' or '-'; it becomes the hostname)",
                    self.name
                ),
            ));
        }
        if self.image.is_empty() {
            return Err(bad("image", "must not be empty".into()));
        }
        if self.command.first().is_some_and(|c| c.is_empty()) {
            return Err(bad(
                "command",
                "the program (first element) is empty".into(),
            ));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(bad("command", "an argument contains a NUL byte".into()));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(bad(
                    "env",
                    format!("`{k}` is not a valid variable name (no '=', no NUL, not empty)"),
                ));
            }
        }
        if let Some(u) = &self.user {
            let ok = !u.is_empty()
                && u.len() <= 64
                && u.split(':').count() <= 2
                && u.split(':').all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                });
            if !ok {
                return Err(bad(
                    "user",
                    format!("`{u}` is not uid[:gid] or name[:group]"),
                ));
            }
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return Err(bad("workdir", format!("`{w}` must be an absolute path")));
            }
        }
        let r = &self.resources;
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&r.memory_mib) {
            return Err(bad(
                "resources.memory_mib",
                format!(
                    "{} is out of range {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                    r.memory_mib
                ),
            ));
        }
        if !(1..=MAX_VCPUS).contains(&r.vcpus) {
            return Err(bad(
                "resources.vcpus",
                format!("{} is out of range 1..={MAX_VCPUS}", r.vcpus),
            ));
        }
        if r.pids_max == Some(0) {
            return Err(bad("resources.pids_max", "must be at least 1".into()));
        }
        if !self.ports.is_empty()
            && matches!(self.network, Some(NetworkMode::None | NetworkMode::Host))
        {
            return Err(bad(
                "ports",
                format!(
                    "ports are published from duet's bridge; network `{}` has none",
                    self.network.expect("matched")
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.ports {
            if let Some(h) = p.host {
                if !seen.insert((h, p.protocol)) {
                    return Err(bad(
                        "ports",
                        format!("host port {h}/{} is published twice", p.protocol.name()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Instance names become hostnames and directory names.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
        // A leading `-` would read as an option wherever the name is passed on.
        && !name.starts_with('-')
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// The `key` of a `key = value` line containing `offset`, for messages.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('[') && !key.starts_with('#')).then(|| key.to_string())
}

/// `uid[:gid]` as numbers; a missing gid is 0.
pub fn parse_numeric_user(u: &str) -> Option<(u32, u32)> {
    match u.split_once(':') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => Some((u.parse().ok()?, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<WorkloadSpec, SpecError> {
        WorkloadSpec::parse(t, Path::new("w.toml"))
    }

    #[test]
    fn full_example_parses() {
        let s = parse(
            r#"
name = "hello"
image = "busybox"
command = ["/bin/sh", "-c", "echo hi"]
env = { GREETING = "hi" }
workdir = "/"
isolation = "vm"
[resources]
memory_mib = 256
vcpus = 2
pids_max = 64
"#,
        )
        .unwrap();
        assert_eq!(s.name, "hello");
        assert_eq!(s.command, vec!["/bin/sh", "-c", "echo hi"]);
        assert_eq!(s.env.get("GREETING").unwrap(), "hi");
        assert_eq!(s.isolation, Some(Isolation::Vm));
        assert_eq!(s.resources.memory_mib, 256);
        assert_eq!(s.resources.vcpus, 2);
        assert_eq!(s.resources.pids_max, Some(64));
    }

    #[test]
    fn defaults_apply() {
        let s = parse("image = \"busybox\"\n").unwrap();
        assert_eq!(s.resources, Resources::default());
        assert!(s.command.is_empty());
        assert_eq!(s.isolation, None);
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let e = parse("image = \"busybox\"\n[resources]\nmemory = 12\n").unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("w.toml:3:1:"), "{m}");
        assert!(m.contains("memory"), "{m}");
    }

    #[test]
    fn wrong_type_names_field_and_position() {
        let e = parse("image = \"busybox\"\n[resources]\nvcpus = \"two\"\n").unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("w.toml:3:9:"), "{m}");
        assert!(m.contains("`vcpus`"), "{m}");
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("image = \"busybox\nname = 1\n").unwrap_err();
        assert!(matches!(e, SpecError::Parse { line: 1, .. }), "{e}");
    }

    #[test]
    fn missing_image_is_an_error() {
        let m = parse("name = \"x\"\n").unwrap_err().to_string();
        assert!(m.contains("image"), "{m}");
    }

    #[test]
    fn bad_isolation_value() {
        let m = parse("image = \"b\"\nisolation = \"jail\"\n")
            .unwrap_err()
            .to_string();
        assert!(m.contains("w.toml:2:"), "{m}");
        assert!(m.contains("jail"), "{m}");
    }

    #[test]
    fn validation_names_fields() {
        let cases = [
            ("image = \"b\"\nname = \"a b\"\n", "`name`"),
            ("image = \"b\"\nworkdir = \"rel\"\n", "`workdir`"),
            (
                "image = \"b\"\n[resources]\nmemory_mib = 1\n",
                "`resources.memory_mib`",
            ),
            (
                "image = \"b\"\n[resources]\nvcpus = 0\n",
                "`resources.vcpus`",
            ),
            (
                "image = \"b\"\n[resources]\npids_max = 0\n",
                "`resources.pids_max`",
            ),
            ("image = \"b\"\ncommand = [\"\"]\n", "`command`"),
            ("image = \"b\"\nenv = { \"A=B\" = \"x\" }\n", "`env`"),
            ("image = \"\"\n", "`image`"),
        ];
        for (text, field) in cases {
            let m = parse(text).unwrap_err().to_string();
            assert!(m.contains(field), "{text:?} -> {m}");
            assert!(m.starts_with("w.toml"), "{m}");
        }
    }

    #[test]
    fn isolation_from_str() {
        assert_eq!("vm".parse::<Isolation>().unwrap(), Isolation::Vm);
        assert!("kvm".parse::<Isolation>().is_err());
    }
}
