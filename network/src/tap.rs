//! A microVM's tap device: `/dev/net/tun` with IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR and a 12-byte vnet header (virtio 1.x's, so the VMM's
//! virtio-net passes frames through untranslated). Not persistent: the tap
//! goes when the last fd to it closes (the VMM's and its parent's), so a
//! killed VMM leaves no tap behind.

use crate::NetError;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// The vnet header the VMM's virtio-net uses.
pub const VNET_HDR_LEN: libc::c_int = 12;

#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens tap `name` (made if missing).
pub fn open(name: &str) -> Result<OwnedFd, NetError> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(NetError::Other(format!("tap name {name} is too long")));
    }
    let err = |what: &str| {
        let e = std::io::Error::last_os_error();
        NetError::io(format!("{what} (tap {name})"), e)
    };
    // SAFETY: open(2) of a constant path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(err("opening /dev/net/tun"));
    }
    // SAFETY: a new fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq-sized struct we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(err("TUNSETIFF"));
    }
    let hdr = VNET_HDR_LEN;
    // SAFETY: TUNSETVNETHDRSZ reads an int we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &hdr) } < 0 {
        return Err(err("TUNSETVNETHDRSZ"));
    }
    Ok(fd)
}
