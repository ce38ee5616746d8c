//! Links and addresses over rtnetlink: duet's bridge, a container's veth
//! pair (its inner end `eth0` born in the container's network namespace),
//! a VM's tap on the bridge.
//!
//! rtnetlink is asynchronous; each call here runs its requests on a
//! current-thread tokio runtime of its own and returns when they are done,
//! so callers (the CLI, the monitor, duet-runc) stay synchronous. Requests
//! for another network namespace run on a thread that has joined it: a
//! netlink socket belongs to the namespace it was opened in.

use crate::NetError;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |e| NetError::Netlink {
        what,
        why: match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            other => other.to_string(),
        },
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// Runs `f` with a netlink handle of the calling thread's network
/// namespace; from inside a tokio runtime (the monitor's), on a scratch
/// thread of the same namespace, as a runtime cannot block on another.
fn with_handle<T: Send>(
    f: impl AsyncFnOnce(Handle) -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|s| {
            s.spawn(|| block_on_handle(f))
                .join()
                .unwrap_or_else(|_| Err(NetError::Other("a netlink thread panicked".into())))
        });
    }
    block_on_handle(f)
}

fn block_on_handle<T>(f: impl AsyncFnOnce(Handle) -> Result<T, NetError>) -> Result<T, NetError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| NetError::io("starting a netlink runtime", e))?;
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetError::io("opening a netlink socket", e))?;
        let task = tokio::spawn(conn);
        let r = f(handle).await;
        task.abort();
        r
    })
}

/// Runs `f` on a thread inside the network namespace `netns` (an fd of
/// `/proc/PID/ns/net` or a pidfd).
fn in_netns<T: Send>(
    netns: BorrowedFd<'_>,
    f: impl FnOnce() -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    let raw = netns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns of this thread only (a scratch thread that ends here).
            if unsafe { libc::setns(raw, libc::CLONE_NEWNET) } != 0 {
                return Err(NetError::io(
                    "joining the instance's network namespace",
                    std::io::Error::last_os_error(),
                ));
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(NetError::Other("a netlink thread panicked".into())))
    })
}

async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("looking up link {name}"))(e)),
    }
}

/// Whether link `name` exists in this network namespace.
pub fn exists(name: &str) -> Result<bool, NetError> {
    with_handle(async |h| Ok(index_of(&h, name).await?.is_some()))
}

/// Makes bridge `name` with address `gateway/prefix` and brings it up;
/// a bridge already there is left as it is (address added if missing).
pub fn ensure_bridge(name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
    with_handle(async |h| {
        let index = match index_of(&h, name).await? {
            Some(i) => i,
            None => {
                let r = h.link().add(LinkBridge::new(name).build()).execute().await;
                match r {
                    Ok(()) => {}
                    Err(e) if is_errno(&e, libc::EEXIST) => {}
                    Err(e) => return Err(nl_err(format!("creating bridge {name}"))(e)),
                }
                index_of(&h, name)
                    .await?
                    .ok_or_else(|| NetError::Other(format!("bridge {name} vanished")))?
            }
        };
        match h
            .address()
            .add(index, IpAddr::V4(gateway), prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            Err(e) => return Err(nl_err(format!("adding {gateway}/{prefix} to {name}"))(e)),
        }
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("bringing {name} up")))
    })
}

/// Deletes link `name`; a missing link is fine.
pub fn delete(name: &str) -> Result<(), NetError> {
    with_handle(async |h| {
        let Some(index) = index_of(&h, name).await? else {
            return Ok(());
        };
        match h.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(nl_err(format!("deleting link {name}"))(e)),
        }
    })
}

/// Puts link `name` on `bridge` and brings it up.
pub fn attach(name: &str, bridge: &str) -> Result<(), NetError> {
    with_handle(async |h| {
        let br = index_of(&h, bridge)
            .await?
            .ok_or_else(|| NetError::Other(format!("bridge {bridge} is gone")))?;
        let index = index_of(&h, name)
            .await?
            .ok_or_else(|| NetError::Other(format!("link {name} is gone")))?;
        h.link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(br)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!("putting {name} on {bridge}")))
    })
}

/// What the instance's end of the network looks like from inside.
#[derive(Debug, Clone, Copy)]
pub struct Inside {
    /// Its address.
    pub address: Ipv4Addr,
    /// Prefix length of the bridge's subnet.
    pub prefix: u8,
    /// The default gateway (the bridge).
    pub gateway: Ipv4Addr,
    /// eth0's MAC, derived from the address (as Docker's are): an address
    /// freed and leased again comes back with the same MAC, so the host's
    /// neighbour entry for it (which outlives the old veth by seconds) stays
    /// right. A random MAC per veth left a reused address unreachable until
    /// that entry was probed again (a connect took ~12 s in the pristine-db
    /// bench).
    pub mac: [u8; 6],
}

/// A veth pair: `host` on `bridge`, its peer born as `eth0` in the network
/// namespace `netns`, which then gets the address, `lo` and `eth0` up, and
/// the default route.
pub fn veth_into(
    host: &str,
    bridge: &str,
    netns: BorrowedFd<'_>,
    inside: Inside,
) -> Result<(), NetError> {
    with_handle(async |h| {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name("eth0".to_string())
            .address(inside.mac.to_vec())
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, "eth0")
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        h.link()
            .add(msg)
            .execute()
            .await
            .map_err(nl_err(format!("creating veth {host} (eth0 inside)")))
    })?;
    let configured = attach(host, bridge).and_then(|()| {
        in_netns(netns, || {
            with_handle(async |h| {
                for name in ["lo", "eth0"] {
                    let index = index_of(&h, name)
                        .await?
                        .ok_or_else(|| NetError::Other(format!("{name} missing inside")))?;
                    if name == "eth0" {
                        h.address()
                            .add(index, IpAddr::V4(inside.address), inside.prefix)
                            .execute()
                            .await
                            .map_err(nl_err(format!(
                                "adding {}/{} to eth0",
                                inside.address, inside.prefix
                            )))?;
                    }
                    h.link()
                        .set(LinkUnspec::new_with_index(index).up().build())
                        .execute()
                        .await
                        .map_err(nl_err(format!("bringing {name} up inside")))?;
                }
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(inside.gateway)
                    .build();
                h.route().add(route).execute().await.map_err(nl_err(format!(
                    "adding the default route via {}",
                    inside.gateway
                )))
            })
        })
    });
    if configured.is_err() {
        let _ = delete(host);
    }
    configured
}

/// An IPv4 address on a link of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddress {
    /// The link's name.
    pub link: String,
    /// The address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
}

/// Every IPv4 address on a link other than `lo`, and the default gateway.
pub fn ipv4_config() -> Result<(Vec<LinkAddress>, Option<Ipv4Addr>), NetError> {
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    with_handle(async |h| {
        let mut names = std::collections::BTreeMap::new();
        let mut links = h.link().get().execute();
        while let Some(m) = links.try_next().await.map_err(nl_err("listing links"))? {
            let name = m.attributes.iter().find_map(|a| match a {
                rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let Some(n) = name {
                names.insert(m.header.index, n);
            }
        }
        let mut out = Vec::new();
        let mut addrs = h.address().get().execute();
        while let Some(m) = addrs
            .try_next()
            .await
            .map_err(nl_err("listing addresses"))?
        {
            let Some(name) = names.get(&m.header.index).filter(|n| *n != "lo") else {
                continue;
            };
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(v4)) = a {
                    out.push(LinkAddress {
                        link: name.clone(),
                        address: *v4,
                        prefix: m.header.prefix_len,
                    });
                }
            }
        }
        let mut gateway = None;
        let mut routes = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = routes.try_next().await.map_err(nl_err("listing routes"))? {
            if r.header.destination_prefix_length != 0 {
                continue;
            }
            for a in &r.attributes {
                if let RouteAttribute::Gateway(RouteAddress::Inet(g)) = a {
                    gateway.get_or_insert(*g);
                }
            }
        }
        Ok((out, gateway))
    })
}

/// Removes `address/prefix` from link `name`.
pub fn remove_address(name: &str, address: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
    with_handle(async |h| {
        let index = index_of(&h, name)
            .await?
            .ok_or_else(|| NetError::Other(format!("link {name} is gone")))?;
        let mut addrs = h
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(IpAddr::V4(address))
            .set_prefix_length_filter(prefix)
            .execute();
        while let Some(m) = addrs
            .try_next()
            .await
            .map_err(nl_err(format!("listing the addresses of {name}")))?
        {
            h.address()
                .del(m)
                .execute()
                .await
                .map_err(nl_err(format!("removing {address}/{prefix} from {name}")))?;
        }
        Ok(())
    })
}

/// A bridge without an address, up (a VM's: it joins the engine's link and the tap).
pub fn plain_bridge(name: &str) -> Result<(), NetError> {
    with_handle(async |h| {
        match h.link().add(LinkBridge::new(name).build()).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            Err(e) => return Err(nl_err(format!("creating bridge {name}"))(e)),
        }
        let index = index_of(&h, name)
            .await?
            .ok_or_else(|| NetError::Other(format!("bridge {name} vanished")))?;
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("bringing {name} up")))
    })
}
