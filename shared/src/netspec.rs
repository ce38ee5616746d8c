//! The network part of a workload spec: the mode, published ports and DNS
//! servers (spec fields `network`, `ports`, `dns`; `--network`, `-p`,
//! `--dns` on the command line).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How an instance reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// An address on duet's bridge, NAT for egress, published ports (as Docker's default).
    Bridge,
    /// Only `lo`.
    None,
    /// The host's own network namespace (containers only).
    Host,
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
        })
    }
}

impl FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bridge" => Ok(NetworkMode::Bridge),
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            other => Err(format!(
                "unknown network `{other}`: expected `bridge`, `none` or `host`"
            )),
        }
    }
}

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One published port: `HOSTPORT:PORT[/tcp|udp]`, or `PORT[/proto]` for
/// a host port duet picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortMapping {
    /// Port on the host; `None` until duet picks a free one.
    pub host: Option<u16>,
    /// Port inside the instance.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(h) = self.host {
            write!(f, "{h}:")?;
        }
        write!(f, "{}/{}", self.port, self.protocol.name())
    }
}

fn port_number(s: &str, which: &str, whole: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "`{whole}`: {which} `{s}` is not a port number (1-65535)"
        )),
    }
}

impl FromStr for PortMapping {
    type Err = String;
    fn from_str(whole: &str) -> Result<Self, String> {
        let (ports, protocol) = match whole.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some((_, other)) => {
                return Err(format!(
                    "`{whole}`: protocol `{other}` is not `tcp` or `udp`"
                ))
            }
            None => (whole, Protocol::Tcp),
        };
        let (host, port) = match ports.split_once(':') {
            Some((h, p)) => (Some(port_number(h, "host port", whole)?), p),
            None => (None, ports),
        };
        Ok(PortMapping {
            host,
            port: port_number(port, "port", whole)?,
            protocol,
        })
    }
}

impl TryFrom<String> for PortMapping {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PortMapping> for String {
    fn from(p: PortMapping) -> String {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_as_docker_writes_them() {
        let p: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(
            (p.host, p.port, p.protocol),
            (Some(8080), 80, Protocol::Tcp)
        );
        let p: PortMapping = "53:5353/udp".parse().unwrap();
        assert_eq!(
            (p.host, p.port, p.protocol),
            (Some(53), 5353, Protocol::Udp)
        );
        let p: PortMapping = "80".parse().unwrap();
        assert_eq!((p.host, p.port), (None, 80));
        assert_eq!(p.to_string(), "80/tcp");
        assert_eq!(
            "8080:80/tcp".parse::<PortMapping>().unwrap().to_string(),
            "8080:80/tcp"
        );
    }

    #[test]
    fn bad_ports_name_the_part() {
        for (s, part) in [
            ("0:80", "host port `0`"),
            ("x:80", "host port `x`"),
            ("80:70000", "port `70000`"),
            ("80/sctp", "protocol `sctp`"),
            ("", "port ``"),
        ] {
            let e = s.parse::<PortMapping>().unwrap_err();
            assert!(e.contains(part), "{s}: {e}");
        }
    }

    #[test]
    fn modes_round_trip() {
        for m in [NetworkMode::Bridge, NetworkMode::None, NetworkMode::Host] {
            assert_eq!(m.to_string().parse::<NetworkMode>().unwrap(), m);
        }
        assert!("nat".parse::<NetworkMode>().unwrap_err().contains("`nat`"));
    }
}
