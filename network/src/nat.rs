//! duet's nftables table: masquerade for egress from the bridge's subnet,
//! and DNAT of published host ports to instances.
//!
//! One table per bridge (`ip duet_<bridge>`) holds two maps, `tcp_ports`
//! and `udp_ports`, from a host port to `address . port`; publishing a port
//! adds one element, so nothing else in the table changes per instance and
//! every rule is duet's own. The table is made with the first instance on
//! the bridge and deleted with the last (see [`crate::Network`]). Changes
//! go to `nft -f -` as nft commands, what the table holds is read back with
//! `nft -j` (JSON).

use crate::NetError;
use duet_shared::netspec::Protocol;
use ipnet::Ipv4Net;
use serde_json::Value;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The table of bridge `bridge`.
pub fn table_name(bridge: &str) -> String {
    let safe: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("duet_{safe}")
}

fn map_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp_ports",
        Protocol::Udp => "udp_ports",
    }
}

fn spawn_err(e: std::io::Error) -> NetError {
    if e.kind() == std::io::ErrorKind::NotFound {
        NetError::Other(
            "nft is not installed (Debian package nftables): bridge networking needs it".into(),
        )
    } else {
        NetError::io("running nft", e)
    }
}

fn check(out: &std::process::Output, what: impl FnOnce() -> String) -> Result<(), NetError> {
    if out.status.success() {
        return Ok(());
    }
    let mut why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if why.is_empty() {
        why = format!("{} (no message)", out.status);
    }
    Err(NetError::Nft { what: what(), why })
}

/// Runs `nft ARGS` (a query) and returns its output.
fn nft(args: &[&str]) -> Result<String, NetError> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(spawn_err)?;
    check(&out, || args.join(" "))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs an nft script. Written as nft's own commands, not JSON: Debian 12's
/// nft 1.0.6 crashes (SIGSEGV) on a JSON `dnat` from a map. Every name and
/// number in it is duet's own or validated (interface names, ports,
/// addresses), so nothing in it comes unchecked from a spec.
fn apply(script: &str) -> Result<(), NetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::io("running nft", e))?;
    check(&out, || {
        script.lines().next().unwrap_or_default().trim().to_string()
    })
}

/// Whether the table exists.
pub fn exists(table: &str) -> Result<bool, NetError> {
    match nft(&["list", "table", "ip", table]) {
        Ok(_) => Ok(true),
        Err(NetError::Nft { why, .. }) if why.contains("No such file") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes the table of `bridge` for `subnet` unless it exists.
pub fn ensure(table: &str, bridge: &str, subnet: Ipv4Net) -> Result<(), NetError> {
    if exists(table)? {
        return Ok(());
    }
    let mut s = format!("table ip {table} {{\n");
    for p in [Protocol::Tcp, Protocol::Udp] {
        s += &format!(
            "  map {} {{ type inet_service : ipv4_addr . inet_service; }}\n",
            map_name(p)
        );
    }
    let dnat = || {
        [Protocol::Tcp, Protocol::Udp]
            .iter()
            .map(|p| {
                format!(
                    "    fib daddr type local dnat ip to {} dport map @{}\n",
                    p.name(),
                    map_name(*p)
                )
            })
            .collect::<String>()
    };
    s += &format!("  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n{}  }}\n", dnat());
    s += &format!(
        "  chain output {{\n    type nat hook output priority -100; policy accept;\n{}  }}\n",
        dnat()
    );
    // Egress: the subnet leaves through any other link as the host. A
    // published port reached from the host itself (127.0.0.1:PORT, with
    // route_localnet on the bridge) or from another instance (hairpin):
    // the reply must come back through the host, so the source becomes the bridge.
    s += &format!(
        "  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n\
         \x20   ip saddr {subnet} oifname != \"{bridge}\" masquerade\n\
         \x20   oifname \"{bridge}\" ip saddr 127.0.0.0/8 masquerade\n\
         \x20   oifname \"{bridge}\" ip saddr {subnet} ct status dnat masquerade\n  }}\n}}\n"
    );
    apply(&s)
}

/// Deletes the table; a missing one is fine.
pub fn remove(table: &str) -> Result<(), NetError> {
    if !exists(table)? {
        return Ok(());
    }
    apply(&format!("delete table ip {table}\n"))
}

/// DNAT host port `host_port` (`p`) to `addr:port`; an error if that host port is published already.
pub fn publish(
    table: &str,
    p: Protocol,
    host_port: u16,
    addr: Ipv4Addr,
    port: u16,
) -> Result<(), NetError> {
    apply(&format!(
        "create element ip {table} {} {{ {host_port} : {addr} . {port} }}\n",
        map_name(p)
    ))
    .map_err(|e| match e {
        NetError::Nft { why, .. } if why.contains("File exists") => NetError::PortTaken {
            port: host_port,
            protocol: p.name(),
            by: "another duet instance".into(),
        },
        other => other,
    })
}

/// Stops publishing host port `host_port` (`p`); a port not published is fine.
pub fn unpublish(table: &str, p: Protocol, host_port: u16) -> Result<(), NetError> {
    let r = apply(&format!(
        "delete element ip {table} {} {{ {host_port} }}\n",
        map_name(p)
    ));
    match r {
        Err(NetError::Nft { why, .. }) if why.contains("No such file") => Ok(()),
        other => other,
    }
}

/// One published port as the table has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Protocol.
    pub protocol: Protocol,
    /// Host port.
    pub host_port: u16,
    /// Instance address.
    pub addr: Ipv4Addr,
    /// Instance port.
    pub port: u16,
}

/// Every published port in the table (none if there is no table).
pub fn published(table: &str) -> Result<Vec<Published>, NetError> {
    if !exists(table)? {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for p in [Protocol::Tcp, Protocol::Udp] {
        let text = nft(&["-j", "list", "map", "ip", table, map_name(p)])?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| NetError::Other(format!("nft's JSON for {table}: {e}")))?;
        out.extend(parse_elements(&v, p));
    }
    Ok(out)
}

fn parse_elements(v: &Value, protocol: Protocol) -> Vec<Published> {
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for e in item["map"]["elem"].as_array().into_iter().flatten() {
            let host_port = e[0].as_u64();
            let concat = &e[1]["concat"];
            let addr = concat[0].as_str().and_then(|s| s.parse().ok());
            let port = concat[1].as_u64();
            if let (Some(h), Some(addr), Some(port)) = (host_port, addr, port) {
                out.push(Published {
                    protocol,
                    host_port: h as u16,
                    addr,
                    port: port as u16,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_parse_from_nfts_json() {
        let v: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"map": {"family": "ip", "name": "tcp_ports", "table": "duet_duet0", "type": "inet_service", "handle": 4, "map": "ipv4_addr . inet_service", "elem": [[8080, {"concat": ["10.89.0.5", 80]}]]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            parse_elements(&v, Protocol::Tcp),
            vec![Published {
                protocol: Protocol::Tcp,
                host_port: 8080,
                addr: "10.89.0.5".parse().unwrap(),
                port: 80
            }]
        );
        assert_eq!(table_name("duet-0.x"), "duet_duet_0_x");
    }
}
