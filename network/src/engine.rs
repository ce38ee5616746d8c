//! A microVM in a network namespace an engine prepared (Docker's
//! libnetwork, a CNI plugin): the engine gave the namespace a link (`eth0`
//! of a veth pair) with an address and a default route, as it would a
//! container. duet hands that address to the guest: the link loses it and
//! joins a bridge in the same namespace with the VM's tap, so frames from
//! the engine's side reach the guest, which answers with the address the
//! engine gave out (`docker run -p`, `docker inspect`'s IPAddress and the
//! pod IP all stay right). Kata Containers does the same with a TC
//! redirect; a bridge needs no traffic-control modules. Everything here
//! lives in the namespace and ends with it.

use crate::link::{self, LinkAddress};
use crate::NetError;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

/// The bridge made in the engine's namespace.
pub const BRIDGE: &str = "duetbr0";
/// The VM's tap there.
pub const TAP: &str = "duettap0";

/// What the guest configures: the engine's address for it.
#[derive(Debug)]
pub struct EngineLink {
    /// The tap, on the bridge with the engine's link.
    pub tap: OwnedFd,
    /// The address the engine gave, prefix and gateway.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway, if the engine set one.
    pub gateway: Option<Ipv4Addr>,
    /// The engine's link.
    pub link: String,
}

/// In the calling thread's network namespace: the first link (not `lo`)
/// with an IPv4 address gives it up and is bridged with a new tap. `None`
/// if there is no such link (`--network none`): the VM gets no device.
pub fn take_over() -> Result<Option<EngineLink>, NetError> {
    let (addrs, gateway) = link::ipv4_config()?;
    let Some(LinkAddress {
        link: name,
        address,
        prefix,
    }) = addrs.into_iter().next()
    else {
        return Ok(None);
    };
    link::remove_address(&name, address, prefix)?;
    link::plain_bridge(BRIDGE)?;
    link::attach(&name, BRIDGE)?;
    let tap = crate::tap::open(TAP)?;
    link::attach(TAP, BRIDGE)?;
    Ok(Some(EngineLink {
        tap,
        address,
        prefix,
        gateway,
        link: name,
    }))
}
