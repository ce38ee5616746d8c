//! The guest's network: `lo` up always, and `eth0` (the virtio-net device
//! on duet's bridge) with its address, netmask and default route when the
//! workload config has a network. Plain ioctls (SIOCSIFADDR,
//! SIOCSIFNETMASK, SIOCSIFFLAGS, SIOCADDRT, SIOCSIFHWADDR), as the init has
//! no netlink library and needs nothing more.
//!
//! [`renumber`] gives a running guest's `eth0` another MAC and address: a
//! clone restored from a snapshot of a VM on the bridge still has its
//! template's, which its own tap's neighbours must not see twice.

use crate::config::GuestNetwork;
use std::net::Ipv4Addr;

/// Which step failed, and how.
#[derive(Debug, thiserror::Error)]
#[error("network setup: {step}: {source}")]
pub struct NetError {
    step: String,
    #[source]
    source: std::io::Error,
}

/// `struct ifreq` with an address (or flags in the first two bytes).
#[repr(C)]
struct IfreqAddr {
    name: [u8; libc::IFNAMSIZ],
    addr: libc::sockaddr_in,
    _pad: [u8; 8],
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn ifreq(name: &str, a: Ipv4Addr) -> IfreqAddr {
    let mut r = IfreqAddr {
        name: [0; libc::IFNAMSIZ],
        addr: sockaddr(a),
        _pad: [0; 8],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    r
}

struct Sock(i32);

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: closing the socket this struct owns.
        unsafe { libc::close(self.0) };
    }
}

fn check(r: i32, step: impl FnOnce() -> String) -> Result<(), NetError> {
    if r < 0 {
        return Err(NetError {
            step: step(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn up(s: &Sock, name: &str) -> Result<(), NetError> {
    let mut r = ifreq(name, Ipv4Addr::UNSPECIFIED);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq-sized struct we own.
    check(
        unsafe { libc::ioctl(s.0, libc::SIOCGIFFLAGS, &mut r) },
        || format!("reading the flags of {name}"),
    )?;
    // The flags are the first two bytes of the union, where the address's family is.
    let flags = r.addr.sin_family | libc::IFF_UP as u16;
    r.addr.sin_family = flags;
    // SAFETY: as above.
    check(unsafe { libc::ioctl(s.0, libc::SIOCSIFFLAGS, &r) }, || {
        format!("bringing {name} up")
    })
}

fn socket() -> Result<Sock, NetError> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, || "a socket for the ioctls".into())?;
    Ok(Sock(fd))
}

/// `struct ifreq` with a hardware address.
#[repr(C)]
struct IfreqHw {
    name: [u8; libc::IFNAMSIZ],
    addr: libc::sockaddr,
    _pad: [u8; 8],
}

fn set_mac(s: &Sock, name: &str, mac: [u8; 6]) -> Result<(), NetError> {
    // SAFETY: an all-zero sockaddr is valid.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::ARPHRD_ETHER;
    for (d, b) in addr.sa_data.iter_mut().zip(mac) {
        *d = b as libc::c_char;
    }
    let mut r = IfreqHw {
        name: [0; libc::IFNAMSIZ],
        addr,
        _pad: [0; 8],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    let shown = mac.map(|b| format!("{b:02x}")).join(":");
    // SAFETY: SIOCSIFHWADDR reads an ifreq-sized struct we own.
    check(unsafe { libc::ioctl(s.0, libc::SIOCSIFHWADDR, &r) }, || {
        format!("setting the MAC {shown} on {name}")
    })
}

/// `eth0` of a running guest gets `net`'s MAC, address, netmask and
/// default route (the old address, and the routes through it, go).
pub fn renumber(net: &GuestNetwork) -> Result<(), NetError> {
    configure_eth0(&socket()?, net)
}

/// `lo` up; with `net`, `eth0` configured (its MAC first, if given) and up
/// and the default route via the gateway.
pub fn configure(net: Option<&GuestNetwork>) -> Result<(), NetError> {
    let s = socket()?;
    up(&s, "lo")?;
    match net {
        Some(n) => configure_eth0(&s, n),
        None => Ok(()),
    }
}

fn configure_eth0(s: &Sock, n: &GuestNetwork) -> Result<(), NetError> {
    if let Some(mac) = n.mac {
        // virtio-net changes its MAC while up (IFF_LIVE_ADDR_CHANGE).
        set_mac(s, "eth0", mac)?;
    }
    if n.prefix > 32 {
        return Err(NetError {
            step: format!("prefix /{}", n.prefix),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(n.prefix)).unwrap_or(0));
    // SAFETY: SIOCSIFADDR/SIOCSIFNETMASK read an ifreq-sized struct we own.
    check(
        unsafe { libc::ioctl(s.0, libc::SIOCSIFADDR, &ifreq("eth0", n.address)) },
        || format!("setting the address {} on eth0", n.address),
    )?;
    // SAFETY: as above.
    check(
        unsafe { libc::ioctl(s.0, libc::SIOCSIFNETMASK, &ifreq("eth0", mask)) },
        || format!("setting the netmask {mask} on eth0"),
    )?;
    up(s, "eth0")?;
    let Some(gateway) = n.gateway else {
        return Ok(());
    };
    // SAFETY: an all-zero rtentry is valid (null rt_dev, zero addresses).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    let as_sockaddr = |a: Ipv4Addr| {
        // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes).
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sockaddr(a)) }
    };
    rt.rt_dst = as_sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = as_sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = as_sockaddr(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT reads the rtentry we own.
    let r = unsafe { libc::ioctl(s.0, libc::SIOCADDRT, &rt) };
    // A default route that outlived a renumbering is the one wanted.
    if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    check(r, || format!("adding the default route via {gateway}"))
}
