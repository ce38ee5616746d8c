//! duet-network: instances on one Linux bridge of duet's, in both isolations.
//!
//! [`Network::attach`] gives an instance an address on the bridge (making
//! the bridge, duet's nftables table and `ip_forward` on first use) and
//! publishes its ports; [`Network::connect_container`] then gives a
//! container its `eth0` (a veth pair), or the VM backend puts a tap on the
//! bridge ([`Network::tap_name`]). [`Network::detach`] undoes one
//! instance, [`Network::gc_owner`] what a crashed one left, and the last
//! instance to go takes the bridge, the table and the `ip_forward` change
//! with it. The state (leases, a lock) lives below the state root, in
//! `network/<bridge>/`.

#![warn(missing_docs)]

pub mod config;
pub mod engine;
pub mod files;
pub mod ipam;
pub mod link;
pub mod nat;
pub mod tap;

pub use config::NetworkConfig;
use duet_shared::netspec::{PortMapping, Protocol};
use ipam::Ipam;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What went wrong, naming the file, link, table or port.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A system call or file.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request.
    #[error("{what}: {why}")]
    Netlink {
        /// The request.
        what: String,
        /// The kernel's answer.
        why: String,
    },
    /// An `nft` command.
    #[error("nft {what}: {why}")]
    Nft {
        /// The command.
        what: String,
        /// nft's stderr.
        why: String,
    },
    /// `network.toml`.
    #[error("{}: field `{field}`: {why}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// No address left.
    #[error("no free address left in {0}")]
    Exhausted(ipnet::Ipv4Net),
    /// A host port in use.
    #[error("host port {port}/{protocol} is already in use by {by}")]
    PortTaken {
        /// The port.
        port: u16,
        /// `tcp` or `udp`.
        protocol: &'static str,
        /// Who has it.
        by: String,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl NetError {
    fn io(what: impl Into<String>, source: std::io::Error) -> NetError {
        NetError::Io {
            what: what.into(),
            source,
        }
    }
}

/// One instance's place on the bridge, as its owner records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The bridge.
    pub bridge: String,
    /// The instance's address.
    pub address: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// Its default gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// Published ports, host ports filled in.
    pub ports: Vec<PortMapping>,
    /// Its DNS servers.
    pub dns: Vec<Ipv4Addr>,
}

impl Attachment {
    /// The host end of a container's veth pair.
    pub fn veth_name(&self) -> String {
        veth_name(self.address)
    }

    /// A microVM's tap.
    pub fn tap_name(&self) -> String {
        tap_name(self.address)
    }

    /// The MAC of an instance's eth0 (a container's veth end, a microVM's
    /// virtio-net): locally administered, from its address.
    pub fn mac(&self) -> [u8; 6] {
        let a = self.address.octets();
        [0x02, 0xd0, a[0], a[1], a[2], a[3]]
    }
}

fn veth_name(a: Ipv4Addr) -> String {
    format!("dv{:08x}", u32::from(a))
}

fn tap_name(a: Ipv4Addr) -> String {
    format!("dt{:08x}", u32::from(a))
}

/// duet's network of one state root.
pub struct Network {
    cfg: NetworkConfig,
    dir: PathBuf,
    ipam: Ipam,
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl Network {
    /// The network of state root `root` (`network.toml` there, or the defaults).
    pub fn open(root: &Path) -> Result<Network, NetError> {
        let cfg = NetworkConfig::load(root)?;
        let dir = cfg.state_dir(root);
        let ipam = Ipam::open(&dir.join("leases"), cfg.subnet)?;
        Ok(Network { cfg, dir, ipam })
    }

    /// Its configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    fn table(&self) -> String {
        nat::table_name(&self.cfg.bridge)
    }

    /// Holds the network's lock: bringing the bridge up and down and
    /// publishing ports happen one process at a time.
    fn lock(&self) -> Result<std::fs::File, NetError> {
        let p = self.dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| NetError::io(format!("opening {}", p.display()), e))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| NetError::io(format!("locking {}", p.display()), e.into()))?;
        Ok(f)
    }

    /// The bridge with its address, `route_localnet` on it (so that
    /// 127.0.0.1:PORT reaches a published port), `ip_forward` (the old
    /// value kept for [`Network::down_if_idle`]) and the nftables table.
    fn up(&self) -> Result<(), NetError> {
        let c = &self.cfg;
        link::ensure_bridge(&c.bridge, c.gateway(), c.subnet.prefix_len())?;
        let rl = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", c.bridge);
        std::fs::write(&rl, "1").map_err(|e| NetError::io(format!("writing {rl}"), e))?;
        let saved = self.dir.join("ip_forward.saved");
        let now = std::fs::read_to_string(IP_FORWARD)
            .map_err(|e| NetError::io(format!("reading {IP_FORWARD}"), e))?;
        if now.trim() != "1" {
            std::fs::write(&saved, now.trim())
                .map_err(|e| NetError::io(format!("writing {}", saved.display()), e))?;
            std::fs::write(IP_FORWARD, "1")
                .map_err(|e| NetError::io(format!("writing {IP_FORWARD}"), e))?;
        }
        nat::ensure(&self.table(), &c.bridge, c.subnet)
    }

    /// With no lease left: the table, the bridge and the `ip_forward` change go.
    fn down_if_idle(&self) -> Result<(), NetError> {
        if !self.ipam.leases()?.is_empty() {
            return Ok(());
        }
        self.down()
    }

    fn down(&self) -> Result<(), NetError> {
        nat::remove(&self.table())?;
        link::delete(&self.cfg.bridge)?;
        let saved = self.dir.join("ip_forward.saved");
        if let Ok(old) = std::fs::read_to_string(&saved) {
            std::fs::write(IP_FORWARD, old.trim())
                .map_err(|e| NetError::io(format!("writing {IP_FORWARD}"), e))?;
            let _ = std::fs::remove_file(&saved);
        }
        Ok(())
    }

    /// An address for instance `owner`, its ports published (`None` host
    /// ports get a free one) and its DNS servers (`dns`, or the host's).
    /// On error nothing of it is left.
    pub fn attach(
        &self,
        owner: &str,
        ports: &[PortMapping],
        dns: &[Ipv4Addr],
    ) -> Result<Attachment, NetError> {
        let _lock = self.lock()?;
        let made = self.up().and_then(|()| self.ipam.allocate(owner));
        let address = match made {
            Ok(a) => a,
            Err(e) => {
                let _ = self.down_if_idle();
                return Err(e);
            }
        };
        let dns = if dns.is_empty() {
            files::host_dns(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        } else {
            dns.to_vec()
        };
        let mut att = Attachment {
            bridge: self.cfg.bridge.clone(),
            address,
            prefix: self.cfg.subnet.prefix_len(),
            gateway: self.cfg.gateway(),
            ports: Vec::new(),
            dns,
        };
        // What the table publishes, listed once and kept up to date here
        // (the lock keeps every other process out of it meanwhile).
        let mut taken = if ports.is_empty() {
            Vec::new()
        } else {
            match nat::published(&self.table()) {
                Ok(t) => t,
                Err(e) => {
                    self.undo(&att);
                    return Err(e);
                }
            }
        };
        for p in ports {
            match self.publish(p, address, &mut taken) {
                Ok(done) => att.ports.push(done),
                Err(e) => {
                    self.undo(&att);
                    return Err(e);
                }
            }
        }
        Ok(att)
    }

    fn publish(
        &self,
        p: &PortMapping,
        address: Ipv4Addr,
        taken: &mut Vec<nat::Published>,
    ) -> Result<PortMapping, NetError> {
        let by_duet = |port: u16| {
            taken
                .iter()
                .any(|t| t.protocol == p.protocol && t.host_port == port)
        };
        let host = match p.host {
            Some(h) => {
                if by_duet(h) {
                    return Err(NetError::PortTaken {
                        port: h,
                        protocol: p.protocol.name(),
                        by: "another duet instance".into(),
                    });
                }
                if !host_port_free(p.protocol, h) {
                    return Err(NetError::PortTaken {
                        port: h,
                        protocol: p.protocol.name(),
                        by: "a process on the host".into(),
                    });
                }
                h
            }
            None => (0..64)
                .filter_map(|_| free_host_port(p.protocol))
                .find(|&h| !by_duet(h))
                .ok_or_else(|| NetError::Other("no free host port found".into()))?,
        };
        nat::publish(&self.table(), p.protocol, host, address, p.port)?;
        taken.push(nat::Published {
            protocol: p.protocol,
            host_port: host,
            addr: address,
            port: p.port,
        });
        Ok(PortMapping {
            host: Some(host),
            ..*p
        })
    }

    /// Unpublishes, releases and (if it was the last) takes the network down; errors ignored.
    fn undo(&self, att: &Attachment) {
        let table = self.table();
        for p in &att.ports {
            if let Some(h) = p.host {
                let _ = nat::unpublish(&table, p.protocol, h);
            }
        }
        let _ = self.ipam.release(att.address);
        let _ = self.down_if_idle();
    }

    /// Gives the container whose init is `pid` its `eth0` on the bridge (a
    /// veth pair), and writes its `/etc/resolv.conf` and `/etc/hosts`
    /// (into the instance's own root: its writable layer, not the image).
    pub fn connect_container(
        &self,
        att: &Attachment,
        pid: i32,
        hostname: &str,
    ) -> Result<(), NetError> {
        let ns_path = format!("/proc/{pid}/ns/net");
        let ns = std::fs::File::open(&ns_path)
            .map_err(|e| NetError::io(format!("opening {ns_path}"), e))?;
        link::veth_into(
            &att.veth_name(),
            &att.bridge,
            ns.as_fd(),
            link::Inside {
                address: att.address,
                prefix: att.prefix,
                gateway: att.gateway,
                mac: att.mac(),
            },
        )?;
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        files::write_etc(&root, "resolv.conf", &files::resolv_conf(&att.dns))
            .and_then(|()| files::write_etc(&root, "hosts", &files::hosts(att.address, hostname)))
            .inspect_err(|_| {
                let _ = link::delete(&att.veth_name());
            })
    }

    /// A microVM's tap on the bridge (its fd: the tap goes when the last
    /// copy closes), and the guest's resolv.conf and hosts.
    pub fn tap_for_vm(&self, att: &Attachment) -> Result<OwnedFd, NetError> {
        let name = att.tap_name();
        let fd = tap::open(&name)?;
        link::attach(&name, &att.bridge)?;
        Ok(fd)
    }

    /// Removes what [`Network::attach`] and [`Network::connect_container`]
    /// made for one instance.
    pub fn detach(&self, att: &Attachment) -> Result<(), NetError> {
        let _lock = self.lock()?;
        let table = self.table();
        let mut first = None;
        for p in &att.ports {
            if let Some(h) = p.host {
                if let Err(e) = nat::unpublish(&table, p.protocol, h) {
                    first.get_or_insert(e);
                }
            }
        }
        // Gone with the container's network namespace (or the tap's last fd) already, most often.
        for name in [att.veth_name(), att.tap_name()] {
            if let Err(e) = link::delete(&name) {
                first.get_or_insert(e);
            }
        }
        self.ipam.release(att.address)?;
        self.down_if_idle()?;
        first.map_or(Ok(()), Err)
    }

    /// Removes what instance `owner` left (its leases, their links and
    /// published ports) after a crash; `duet gc`.
    pub fn gc_owner(&self, owner: &str) -> Result<(), NetError> {
        let _lock = self.lock()?;
        let mine = self.ipam.owned_by(owner)?;
        if mine.is_empty() {
            return Ok(());
        }
        let table = self.table();
        for p in nat::published(&table)? {
            if mine.contains(&p.addr) {
                nat::unpublish(&table, p.protocol, p.host_port)?;
            }
        }
        for a in mine {
            link::delete(&veth_name(a))?;
            link::delete(&tap_name(a))?;
            self.ipam.release(a)?;
        }
        self.down_if_idle()
    }

    /// `duet network rm`: takes the bridge, the table and the `ip_forward`
    /// change down; refused while an instance holds an address.
    pub fn remove(&self) -> Result<(), NetError> {
        let _lock = self.lock()?;
        let leases = self.ipam.leases()?;
        if let Some((addr, owner)) = leases.first() {
            return Err(NetError::Other(format!(
                "network {} is in use: {} instance(s), {owner} at {addr} among them (duet rm -f them first)",
                self.cfg.bridge,
                leases.len()
            )));
        }
        self.down()
    }

    /// Every lease: address and owning instance.
    pub fn leases(&self) -> Result<Vec<(Ipv4Addr, String)>, NetError> {
        self.ipam.leases()
    }
}

/// Whether nothing on the host listens on (TCP) or is bound to (UDP) `port`.
fn host_port_free(p: Protocol, port: u16) -> bool {
    let at = (Ipv4Addr::UNSPECIFIED, port);
    match p {
        Protocol::Tcp => std::net::TcpListener::bind(at).is_ok(),
        Protocol::Udp => std::net::UdpSocket::bind(at).is_ok(),
    }
}

/// A port the kernel considers free now (its ephemeral range).
fn free_host_port(p: Protocol) -> Option<u16> {
    let at = (Ipv4Addr::UNSPECIFIED, 0);
    match p {
        Protocol::Tcp => std::net::TcpListener::bind(at).ok()?.local_addr().ok(),
        Protocol::Udp => std::net::UdpSocket::bind(at).ok()?.local_addr().ok(),
    }
    .map(|a| a.port())
}
