//! `duet bench network`: the servers of duet-bench's network module on the
//! host's loopback, in a container and in a microVM on duet's bridge, all
//! inside a network namespace (and a state root) of this run's own, so the
//! bridge, veths, taps and nftables table never touch the host's network.

use super::*;
use duet_bench::network::{self, NetConfig, NetworkResult};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;

/// Options of the network scenario.
#[derive(Args, Clone, Debug)]
pub struct NetArgs {
    /// Timed 1-byte round trips per row.
    #[arg(long, default_value_t = NetConfig::default().pings)]
    pub pings: usize,
    /// MiB sent in the bulk TCP row.
    #[arg(long, default_value_t = NetConfig::default().bulk_mib)]
    pub bulk_mib: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = NetConfig::default().http_clients)]
    pub http_clients: usize,
    /// HTTP requests in all.
    #[arg(long, default_value_t = NetConfig::default().http_requests)]
    pub http_requests: usize,
}

impl NetArgs {
    pub(super) fn config(&self) -> NetConfig {
        NetConfig {
            pings: self.pings.max(1),
            bulk_mib: self.bulk_mib.max(1),
            http_clients: self.http_clients.max(1),
            http_requests: self.http_requests.max(1),
        }
    }

    /// The same options for an inner run (the testbed's).
    pub(super) fn args(&self) -> Vec<String> {
        [
            ("--pings", self.pings),
            ("--bulk-mib", self.bulk_mib),
            ("--http-clients", self.http_clients),
            ("--http-requests", self.http_requests),
        ]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
    }
}

pub(super) fn say_network(r: &NetworkResult) {
    eprintln!(
        "  network {:<28} {}",
        r.label,
        row_summary(&r.status, || format!(
            "rtt p50 {:.1} us p99 {:.1} us, {:.0} Mbit/s, HTTP {:.0} req/s p99 {:.2} ms",
            r.rtt_p50_us, r.rtt_p99_us, r.throughput_mbit_s, r.http_rps, r.http_p99_ms
        ))
    );
}

/// The host baseline's HTTP port (the instances use 80).
const HOST_HTTP_PORT: u16 = 18_080;
/// How long an instance's servers may take to listen (a guest boots first).
const READY: Duration = Duration::from_secs(180);

impl Bench {
    /// Rows for the host loopback (with `baseline`) and each of `native`.
    pub(super) fn network(
        &mut self,
        a: &NetArgs,
        native: &[Isolation],
        baseline: bool,
    ) -> Result<()> {
        let cfg = a.config();
        let exe = self.exe.clone();
        // A state root of its own (a scratch directory `duet gc` removes if
        // the bench dies; short, as instance sockets live below it): its
        // bridge, leases and instances go with it.
        let root = Scratch::new(&self.image.store, "net")?;
        let rows = std::thread::scope(|s| {
            s.spawn(|| in_own_netns(&exe, root.path(), native, baseline, cfg))
                .join()
                .unwrap_or_else(|_| Err("the network bench thread panicked".into()))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        for r in rows {
            say_network(&r);
            self.report.network.push(r);
        }
        Ok(())
    }
}

/// Runs on a thread that has left the host's network namespace: everything
/// it starts (busybox, duet, monitors, VMMs, nft) is born in the new one,
/// which ends with the thread.
fn in_own_netns(
    exe: &Path,
    root: &Path,
    native: &[Isolation],
    baseline: bool,
    cfg: NetConfig,
) -> Result<Vec<NetworkResult>, String> {
    leave_host_netns()?;
    let mut rows = Vec::new();
    if baseline {
        rows.push(host_row(cfg));
    }
    if native.is_empty() {
        return Ok(rows);
    }
    std::fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    for iso in native {
        rows.push(instance_row(exe, root, *iso, cfg));
    }
    Ok(rows)
}

/// Moves the calling thread into a new network namespace with `lo` up:
/// what it starts from then on is born there, and the namespace ends with
/// the thread and its children. For the benches that make a bridge.
pub(super) fn leave_host_netns() -> Result<(), String> {
    // SAFETY: unshare of this thread's network namespace only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "a network namespace for the bench: {}",
            std::io::Error::last_os_error()
        ));
    }
    let lo = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    if !lo.is_ok_and(|s| s.success()) {
        return Err("`ip link set lo up` in the bench's network namespace failed".into());
    }
    Ok(())
}

fn host_row(cfg: NetConfig) -> NetworkResult {
    let label = "host loopback";
    let Some(bb) = duet_shared::testing::find_program("busybox") else {
        return NetworkResult::unavailable(label, Kind::Process, "needs busybox (busybox-static)");
    };
    let child = Command::new(bb)
        .args(["sh", "-c", &network::server_script(HOST_HTTP_PORT)])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return NetworkResult::unavailable(label, Kind::Process, &format!("busybox: {e}"))
        }
    };
    let r = network::wait_listening(Ipv4Addr::LOCALHOST, HOST_HTTP_PORT, READY)
        .and_then(|()| network::wait_listening(Ipv4Addr::LOCALHOST, network::SINK_PORT, READY))
        .map(|()| {
            network::measure(
                label,
                Kind::Process,
                Ipv4Addr::LOCALHOST,
                HOST_HTTP_PORT,
                cfg,
            )
        });
    // The servers are this group's (nc forks a child per connection).
    // SAFETY: a signal to the process group of a child we started.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
    r.unwrap_or_else(|why| NetworkResult::unavailable(label, Kind::Process, &why))
}

fn instance_row(exe: &Path, root: &Path, iso: Isolation, cfg: NetConfig) -> NetworkResult {
    let label = format!("duet {iso}");
    let kind = Kind::of_isolation(&iso.to_string());
    let duet = |args: &[&str]| {
        Command::new(exe)
            .args(args)
            .env("DUET_ROOT", root)
            .stdin(std::process::Stdio::null())
            .output()
    };
    let script = network::server_script(network::HTTP_PORT);
    let iso_s = iso.to_string();
    let out = match duet(&[
        "run",
        "-d",
        "--network",
        "bridge",
        "--isolation",
        &iso_s,
        "busybox",
        "--",
        "sh",
        "-c",
        &script,
    ]) {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            return NetworkResult::failed(
                &label,
                kind,
                format!("duet run -d: {}", startup::tail(&o.stderr)),
            )
        }
        Err(e) => return NetworkResult::unavailable(&label, kind, &format!("duet: {e}")),
    };
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let addr = InstanceDir::open(root, &id)
        .ok()
        .and_then(|d| crate::network::recorded(d.path()))
        .map(|a| a.address);
    let r = match addr {
        None => Err(format!("instance {id} has no address on the bridge")),
        Some(addr) => network::wait_listening(addr, network::HTTP_PORT, READY)
            .and_then(|()| network::wait_listening(addr, network::SINK_PORT, READY))
            .map(|()| network::measure(&label, kind, addr, network::HTTP_PORT, cfg)),
    };
    let _ = duet(&["rm", "-f", &id]);
    r.unwrap_or_else(|why| NetworkResult::failed(&label, kind, why))
}
