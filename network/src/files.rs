//! `/etc/resolv.conf` and `/etc/hosts` for an instance on the bridge, and
//! writing them into a container's root from outside.

use crate::NetError;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::Path;

/// The DNS servers an instance gets when none are given: the host's
/// (`/etc/resolv.conf`), without loopback ones (a local stub resolver such
/// as systemd-resolved's 127.0.0.53 is not reachable from the bridge), as
/// Docker does; Google's public servers if none remain, as Docker does too.
pub fn host_dns(resolv_conf: &str) -> Vec<Ipv4Addr> {
    let found: Vec<Ipv4Addr> = resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
        })
        .filter(|a| !a.is_loopback())
        .collect();
    if found.is_empty() {
        vec![Ipv4Addr::new(8, 8, 8, 8), Ipv4Addr::new(8, 8, 4, 4)]
    } else {
        found
    }
}

/// resolv.conf naming `servers`.
pub fn resolv_conf(servers: &[Ipv4Addr]) -> String {
    let mut s = String::from("# written by duet for this instance\n");
    for a in servers {
        s.push_str(&format!("nameserver {a}\n"));
    }
    s
}

/// /etc/hosts: loopback names and the instance's own address and hostname.
pub fn hosts(address: Ipv4Addr, hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
    )
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Writes `contents` as `etc/<name>` below the root directory `root` (a
/// container's `/proc/PID/root`, opened by the caller): `etc` must be a
/// real directory in that root (made if missing), whatever is at `name`
/// (a symlink out of the root, a fifo) is replaced by a new regular file.
/// Nothing outside the root is followed or opened.
pub fn write_etc(root: &Path, name: &str, contents: &str) -> Result<(), NetError> {
    let what = || format!("writing /etc/{name} into the instance");
    let io = |e: rustix::io::Errno| NetError::io(what(), e.into());
    let root_fd: OwnedFd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io)?;
    let etc_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let etc = match rustix::fs::openat2(&root_fd, "etc", etc_flags, Mode::empty(), resolve_flags())
    {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            rustix::fs::mkdirat(&root_fd, "etc", Mode::from_raw_mode(0o755)).map_err(io)?;
            rustix::fs::openat2(&root_fd, "etc", etc_flags, Mode::empty(), resolve_flags())
                .map_err(io)?
        }
        Err(e) => return Err(io(e)),
    };
    match rustix::fs::unlinkat(&etc, name, rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(io(e)),
    }
    let fd = rustix::fs::openat2(
        &etc,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
        resolve_flags(),
    )
    .map_err(io)?;
    std::fs::File::from(fd)
        .write_all(contents.as_bytes())
        .map_err(|e| NetError::io(what(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_dns_leaves_out_loopback_stubs() {
        assert_eq!(
            host_dns("nameserver 127.0.0.53\nnameserver 192.0.2.1\n# c\nsearch x\n"),
            vec![Ipv4Addr::new(192, 0, 2, 1)]
        );
        assert_eq!(host_dns("nameserver 127.0.0.53\n").len(), 2);
    }

    #[test]
    fn a_symlink_in_the_root_is_replaced_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(&victim, root.path().join("etc/resolv.conf")).unwrap();
        write_etc(root.path(), "resolv.conf", "nameserver 192.0.2.1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        let meta = std::fs::symlink_metadata(root.path().join("etc/resolv.conf")).unwrap();
        assert!(meta.is_file());
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap(),
            "nameserver 192.0.2.1\n"
        );
    }

    #[test]
    fn an_etc_symlink_out_of_the_root_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc")).unwrap();
        assert!(write_etc(root.path(), "hosts", "x").is_err());
        assert!(!outside.path().join("hosts").exists());
    }

    #[test]
    fn a_missing_etc_is_made() {
        let root = tempfile::tempdir().unwrap();
        write_etc(
            root.path(),
            "hosts",
            &hosts(Ipv4Addr::new(10, 89, 0, 2), "web"),
        )
        .unwrap();
        let h = std::fs::read_to_string(root.path().join("etc/hosts")).unwrap();
        assert!(h.contains("10.89.0.2\tweb"));
    }
}
