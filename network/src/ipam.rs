//! Address leases: one file per address in use, `<network dir>/leases/<addr>`,
//! holding the owning instance's id.
//!
//! A lease is taken by creating its file with `O_EXCL`, so parallel runs
//! (separate processes, no shared lock) never get the same address, and a
//! crashed owner's lease is still on disk for `duet gc` to find by owner.

use crate::NetError;
use ipnet::Ipv4Net;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The leases of one subnet.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    subnet: Ipv4Net,
}

impl Ipam {
    /// The leases kept in `dir` (made if missing) for `subnet`.
    pub fn open(dir: &Path, subnet: Ipv4Net) -> Result<Ipam, NetError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| NetError::io(format!("creating {}", dir.display()), e))?;
        Ok(Ipam {
            dir: dir.to_path_buf(),
            subnet,
        })
    }

    /// Host addresses instances may get: all but the network address, the
    /// gateway (the first host address) and the broadcast address.
    fn candidates(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.subnet.network()) + 2;
        let last = u32::from(self.subnet.broadcast()) - 1;
        (first..=last).map(Ipv4Addr::from)
    }

    /// Takes the lowest free address for `owner`.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr, NetError> {
        for addr in self.candidates() {
            let path = self.dir.join(addr.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(mut f) => {
                    if let Err(e) = f.write_all(owner.as_bytes()) {
                        let _ = std::fs::remove_file(&path);
                        return Err(NetError::io(format!("writing {}", path.display()), e));
                    }
                    return Ok(addr);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(NetError::io(format!("creating {}", path.display()), e)),
            }
        }
        Err(NetError::Exhausted(self.subnet))
    }

    /// Gives `addr` back.
    pub fn release(&self, addr: Ipv4Addr) -> Result<(), NetError> {
        let path = self.dir.join(addr.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetError::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Every lease: address and owner.
    pub fn leases(&self) -> Result<Vec<(Ipv4Addr, String)>, NetError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(NetError::io(format!("reading {}", self.dir.display()), e)),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let Some(addr) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            // A lease being written has no owner yet; it still counts.
            let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
            out.push((addr, owner));
        }
        out.sort();
        Ok(out)
    }

    /// The addresses leased to `owner`.
    pub fn owned_by(&self, owner: &str) -> Result<Vec<Ipv4Addr>, NetError> {
        Ok(self
            .leases()?
            .into_iter()
            .filter(|(_, o)| o == owner)
            .map(|(a, _)| a)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_first_and_released_ones_come_back() {
        let d = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(d.path(), "10.9.0.0/29".parse().unwrap()).unwrap();
        let a = ipam.allocate("a").unwrap();
        let b = ipam.allocate("b").unwrap();
        assert_eq!(
            (a, b),
            ("10.9.0.2".parse().unwrap(), "10.9.0.3".parse().unwrap())
        );
        ipam.release(a).unwrap();
        assert_eq!(ipam.allocate("c").unwrap(), a);
        assert_eq!(ipam.owned_by("b").unwrap(), vec![b]);
    }

    #[test]
    fn a_full_subnet_says_so() {
        let d = tempfile::tempdir().unwrap();
        // /29: .0 network, .1 gateway, .7 broadcast: five addresses.
        let ipam = Ipam::open(d.path(), "10.9.0.0/29".parse().unwrap()).unwrap();
        let got: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&i.to_string()).unwrap())
            .collect();
        assert_eq!(got.last().unwrap().to_string(), "10.9.0.6");
        let e = ipam.allocate("x").unwrap_err().to_string();
        assert!(e.contains("10.9.0.0/29"), "{e}");
    }

    #[test]
    fn parallel_allocations_are_unique() {
        let d = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(d.path(), "10.9.0.0/24".parse().unwrap()).unwrap();
        let got: Vec<Ipv4Addr> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..50)
                .map(|i| {
                    let ipam = ipam.clone();
                    s.spawn(move || ipam.allocate(&format!("i{i}")).unwrap())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut uniq = got.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), 50);
        assert_eq!(ipam.leases().unwrap().len(), 50);
    }
}
