//! `<state root>/network.toml` (else the machine's `/etc/duet/network.toml`):
//! duet's bridge, its subnet, and the network instances get when neither
//! the spec nor `--network` names one.
//!
//! ```toml
//! bridge = "duet0"
//! subnet = "10.89.0.0/16"
//! default = "bridge"   # or "none", "host"
//! ```

use crate::NetError;
use duet_shared::netspec::NetworkMode;
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The file's name in the state root.
pub const FILE: &str = "network.toml";
/// The machine's file, used when the state root has none.
pub const SYSTEM_FILE: &str = "/etc/duet/network.toml";

/// duet's network as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Bridge name (at most 15 bytes, as every interface name).
    pub bridge: String,
    /// The bridge's subnet; its first address is the gateway.
    pub subnet: Ipv4Net,
    /// The mode of instances that do not name one.
    pub default: NetworkMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    bridge: Option<String>,
    subnet: Option<String>,
    default: Option<NetworkMode>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bridge: "duet0".into(),
            subnet: "10.89.0.0/16".parse().expect("constant"),
            default: NetworkMode::Bridge,
        }
    }
}

/// Interface names: 1-15 bytes of letters, digits and `-_.`, as the kernel
/// takes them (no `/`, no whitespace, not `.` or `..`).
pub fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl NetworkConfig {
    /// The config of state root `root`: its `network.toml`, else
    /// [`SYSTEM_FILE`], else the defaults.
    pub fn load(root: &Path) -> Result<NetworkConfig, NetError> {
        for path in [root.join(FILE), PathBuf::from(SYSTEM_FILE)] {
            match std::fs::read_to_string(&path) {
                Ok(text) => return Self::parse(&text, &path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(NetError::io(format!("reading {}", path.display()), e)),
            }
        }
        Ok(Self::default())
    }

    /// Parses the file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<NetworkConfig, NetError> {
        let bad = |field: &str, why: String| NetError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            why,
        };
        let f: File = toml::from_str(text).map_err(|e| bad("-", e.message().to_string()))?;
        let mut c = Self::default();
        if let Some(b) = f.bridge {
            if !valid_ifname(&b) {
                return Err(bad(
                    "bridge",
                    format!("`{b}` is not an interface name (1-15 of a-z, A-Z, 0-9, -_.)"),
                ));
            }
            c.bridge = b;
        }
        if let Some(s) = f.subnet {
            let net: Ipv4Net = s.parse().map_err(|_| {
                bad(
                    "subnet",
                    format!("`{s}` is not an IPv4 prefix like 10.89.0.0/16"),
                )
            })?;
            if net.trunc() != net {
                return Err(bad(
                    "subnet",
                    format!("`{s}` has host bits set (did you mean {}?)", net.trunc()),
                ));
            }
            if !(8..=29).contains(&net.prefix_len()) {
                return Err(bad(
                    "subnet",
                    format!("`{s}`: the prefix length must be 8 to 29"),
                ));
            }
            c.subnet = net;
        }
        if let Some(d) = f.default {
            c.default = d;
        }
        Ok(c)
    }

    /// The bridge's own address, the instances' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }

    /// Where this network keeps its leases and lock, below the state root.
    pub fn state_dir(&self, root: &Path) -> PathBuf {
        root.join("network").join(&self.bridge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let p = Path::new("/r/network.toml");
        let c = NetworkConfig::parse("", p).unwrap();
        assert_eq!(c, NetworkConfig::default());
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 89, 0, 1));
        let c = NetworkConfig::parse(
            "bridge = \"lab1\"\nsubnet = \"192.168.77.0/24\"\ndefault = \"none\"\n",
            p,
        )
        .unwrap();
        assert_eq!(c.bridge, "lab1");
        assert_eq!(c.gateway(), Ipv4Addr::new(192, 168, 77, 1));
        assert_eq!(c.default, NetworkMode::None);
    }

    #[test]
    fn bad_values_name_file_and_field() {
        let p = Path::new("/r/network.toml");
        for (text, field) in [
            ("bridge = \"a/b\"", "bridge"),
            ("bridge = \"averyveryverylongname\"", "bridge"),
            ("subnet = \"10.89.0.1/16\"", "subnet"),
            ("subnet = \"10.0.0.0/31\"", "subnet"),
            ("subnet = \"nope\"", "subnet"),
        ] {
            let e = NetworkConfig::parse(text, p).unwrap_err().to_string();
            assert!(
                e.contains("/r/network.toml") && e.contains(field),
                "{text}: {e}"
            );
        }
        assert!(NetworkConfig::parse("colour = 1", p).is_err());
    }
}
