//! `duet bench network`: what isolation costs a networked workload, measured
//! from the host side against the same busybox servers on the host's
//! loopback (the baseline), in a container on duet's bridge, and in a
//! microVM on the same bridge (tap + duet's virtio-net):
//!
//! - TCP request/response latency: one connection, 1-byte ping-pong with
//!   TCP_NODELAY against `nc -ll -e cat` (p50, p99 of the round trips);
//! - bulk TCP throughput: one connection sending [`NetConfig::bulk_mib`]
//!   MiB into `nc -ll -e dd of=/dev/null`, timed until the server closes;
//! - an HTTP server under load: `httpd` (busybox) serving one 4 KiB file to
//!   [`NetConfig::http_clients`] concurrent clients, each GET on a new
//!   connection (busybox httpd has no keep-alive): requests/s and p99.
//!
//! The client is this process (std sockets, no extra tool), so every row
//! shares it. The caller runs all of it inside a network namespace of its
//! own, so the bridge, veths, taps and nftables table it needs never touch
//! the host's network.

use crate::startup::RowStatus;
use crate::stats;
use crate::Kind;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Ports the server script listens on inside an instance.
pub const ECHO_PORT: u16 = 7000;
/// Bulk sink port.
pub const SINK_PORT: u16 = 7001;
/// HTTP port.
pub const HTTP_PORT: u16 = 80;
/// The file the HTTP rows fetch, and its size.
pub const HTTP_PATH: &str = "/f";
/// Bytes of [`HTTP_PATH`].
pub const HTTP_BYTES: usize = 4096;

/// The servers, as one busybox `sh -c` script (host baseline and instances
/// alike); it runs until killed. `port80` is the HTTP port to use (the host
/// baseline takes an unprivileged one beside the instances' 80).
pub fn server_script(http_port: u16) -> String {
    format!(
        "mkdir -p /tmp/www && head -c {HTTP_BYTES} /dev/zero > /tmp/www{HTTP_PATH} && \
         (nc -ll -p {ECHO_PORT} -e cat &) && \
         (nc -ll -p {SINK_PORT} -e dd of=/dev/null bs=65536 2>/dev/null &) && \
         exec httpd -f -p {http_port} -h /tmp/www"
    )
}

/// How much each row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Timed round trips (after 200 untimed).
    pub pings: usize,
    /// MiB sent in the bulk row.
    pub bulk_mib: usize,
    /// Concurrent HTTP clients.
    pub http_clients: usize,
    /// Requests in all.
    pub http_requests: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            pings: 2000,
            bulk_mib: 256,
            http_clients: 8,
            http_requests: 4000,
        }
    }
}

/// One target's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkResult {
    /// `host loopback`, `duet container`, `duet vm`, with `(testbed)` where it ran there.
    pub label: String,
    /// What it is.
    pub kind: Kind,
    /// Measured, or why not.
    pub status: RowStatus,
    /// What was measured with.
    pub config: NetConfig,
    /// 1-byte round trip, median, microseconds.
    pub rtt_p50_us: f64,
    /// 1-byte round trip, 99th percentile, microseconds.
    pub rtt_p99_us: f64,
    /// Bulk TCP, Mbit/s.
    pub throughput_mbit_s: f64,
    /// HTTP requests per second, all clients together.
    pub http_rps: f64,
    /// HTTP request latency (connect to last byte), 99th percentile, ms.
    pub http_p99_ms: f64,
}

impl NetworkResult {
    /// A row whose measuring failed, saying how.
    pub fn failed(label: &str, kind: Kind, why: String) -> NetworkResult {
        NetworkResult {
            status: RowStatus::Failed(why),
            ..NetworkResult::unavailable(label, kind, "")
        }
    }

    /// A row that could not be measured, saying why.
    pub fn unavailable(label: &str, kind: Kind, why: &str) -> NetworkResult {
        NetworkResult {
            label: label.into(),
            kind,
            status: RowStatus::Unavailable(why.into()),
            config: NetConfig::default(),
            rtt_p50_us: 0.0,
            rtt_p99_us: 0.0,
            throughput_mbit_s: 0.0,
            http_rps: 0.0,
            http_p99_ms: 0.0,
        }
    }
}

fn io(what: &str, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

/// Waits until `addr:port` accepts a connection (a guest boots first).
pub fn wait_listening(addr: Ipv4Addr, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let to = SocketAddr::from((addr, port));
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("{to} did not accept within {timeout:?}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn ping_pong(addr: Ipv4Addr, n: usize) -> Result<Vec<f64>, String> {
    let mut s = TcpStream::connect((addr, ECHO_PORT)).map_err(|e| io("connect echo", e))?;
    s.set_nodelay(true).map_err(|e| io("TCP_NODELAY", e))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| io("timeout", e))?;
    let mut b = [0u8; 1];
    let mut out = Vec::with_capacity(n);
    for i in 0..200 + n {
        let t = Instant::now();
        s.write_all(b"x").map_err(|e| io("echo write", e))?;
        s.read_exact(&mut b).map_err(|e| io("echo read", e))?;
        if i >= 200 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

fn bulk(addr: Ipv4Addr, mib: usize) -> Result<f64, String> {
    let mut s = TcpStream::connect((addr, SINK_PORT)).map_err(|e| io("connect sink", e))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| io("timeout", e))?;
    let chunk = vec![0u8; 64 << 10];
    let t = Instant::now();
    for _ in 0..mib * 16 {
        s.write_all(&chunk).map_err(|e| io("bulk write", e))?;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| io("bulk shutdown", e))?;
    // The sink closes once it has read everything.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let secs = t.elapsed().as_secs_f64();
    Ok((mib as f64 * 8.0 * 1024.0 * 1024.0) / secs / 1e6)
}

fn http_get(addr: Ipv4Addr, port: u16) -> Result<f64, String> {
    let t = Instant::now();
    let mut s = TcpStream::connect((addr, port)).map_err(|e| io("connect http", e))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| io("timeout", e))?;
    s.write_all(format!("GET {HTTP_PATH} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| io("http write", e))?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).map_err(|e| io("http read", e))?;
    if !body.starts_with(b"HTTP/1.") || body.len() < HTTP_BYTES {
        return Err(format!(
            "http: a short or bad answer ({} bytes)",
            body.len()
        ));
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn http_load(
    addr: Ipv4Addr,
    port: u16,
    clients: usize,
    requests: usize,
) -> Result<(f64, f64), String> {
    let each = requests.div_ceil(clients.max(1));
    let t = Instant::now();
    let results: Vec<Result<Vec<f64>, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients.max(1))
            .map(|_| s.spawn(move || (0..each).map(|_| http_get(addr, port)).collect()))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("an HTTP client panicked".into()))
            })
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    for r in results {
        lat.extend(r?);
    }
    let rps = lat.len() as f64 / secs;
    Ok((rps, percentile(&mut lat, 0.99)))
}

/// The `q` quantile (0..=1) of `v`, sorted in place; 0 if empty.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    stats::percentile_sorted(v, q * 100.0).unwrap_or(0.0)
}

/// Measures the servers at `addr` (HTTP on `http_port`).
pub fn measure(
    label: &str,
    kind: Kind,
    addr: Ipv4Addr,
    http_port: u16,
    cfg: NetConfig,
) -> NetworkResult {
    let run = || -> Result<NetworkResult, String> {
        let mut rtt = ping_pong(addr, cfg.pings)?;
        let p50 = stats::summarize(&rtt).map(|s| s.median).unwrap_or(0.0);
        let p99 = percentile(&mut rtt, 0.99);
        let mbit = bulk(addr, cfg.bulk_mib)?;
        let (rps, http_p99) = http_load(addr, http_port, cfg.http_clients, cfg.http_requests)?;
        Ok(NetworkResult {
            label: label.into(),
            kind,
            status: RowStatus::Measured,
            config: cfg,
            rtt_p50_us: p50,
            rtt_p99_us: p99,
            throughput_mbit_s: mbit,
            http_rps: rps,
            http_p99_ms: http_p99,
        })
    };
    run().unwrap_or_else(|why| NetworkResult::failed(label, kind, why))
}

/// A row's "reading": what it costs next to the row below it in isolation
/// (VM against container, container against the host's loopback), from
/// the same run and place (native or testbed).
pub fn reading(row: &NetworkResult, rows: &[NetworkResult]) -> String {
    if row.status != RowStatus::Measured {
        return String::new();
    }
    let testbed = row.label.contains("(testbed)");
    let (peer_kind, what) = match row.kind {
        Kind::Process => return "the baseline: the host's loopback, no isolation".into(),
        Kind::Container => (
            Kind::Process,
            "against the host's loopback: a veth pair and the bridge on the same kernel",
        ),
        Kind::Vm => (
            Kind::Container,
            "against the container: each frame also crosses the tap, duet's VMM (a VM exit per notify) and a guest kernel",
        ),
    };
    let Some(peer) = rows.iter().find(|r| {
        r.status == RowStatus::Measured
            && r.kind == peer_kind
            && r.label.contains("(testbed)") == testbed
    }) else {
        return String::new();
    };
    format!(
        "{what}: latency {:.1}x, throughput {:.2}x, HTTP req/s {:.2}x",
        row.rtt_p50_us / peer.rtt_p50_us,
        row.throughput_mbit_s / peer.throughput_mbit_s,
        row.http_rps / peer.http_rps
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_rank() {
        let mut v: Vec<f64> = (1..=101).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.99), 100.0);
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn the_script_starts_the_three_servers() {
        let s = server_script(8080);
        for want in [
            "-p 7000 -e cat",
            "-p 7001 -e dd",
            "httpd -f -p 8080",
            "head -c 4096",
        ] {
            assert!(s.contains(want), "{s}");
        }
    }
}
