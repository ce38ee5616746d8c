//! Routing of port I/O and MMIO exits to devices, with an exit counter per
//! device and per unknown address (reads of unknown addresses return 0xff,
//! writes are ignored). The guest chooses the unknown addresses, so only the
//! first [`MAX_UNKNOWN_ADDRESSES`] get a counter of their own; the rest are
//! summed in `vm_exits.<kind>.unknown.other`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device on a bus.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `addr` (`offset` from the range base).
    fn read(&mut self, addr: u64, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `addr` (`offset` from the range base).
    fn write(&mut self, addr: u64, offset: u64, data: &[u8]);
}

/// A device shared between vCPU threads.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// New range overlaps a registered one.
    #[error("{kind} range {base:#x}+{len:#x} for device {name} overlaps device {other}")]
    Overlap {
        /// "io" or "mmio".
        kind: &'static str,
        /// New device.
        name: String,
        /// Its base.
        base: u64,
        /// Its length.
        len: u64,
        /// Device already there.
        other: String,
    },
    /// Zero-length range.
    #[error("{kind} range for device {name} is empty")]
    Empty {
        /// "io" or "mmio".
        kind: &'static str,
        /// Device.
        name: String,
    },
}

/// Distinct unknown addresses counted one by one, per bus.
pub const MAX_UNKNOWN_ADDRESSES: usize = 64;

/// Exit counts at addresses no device claims, bounded in size.
#[derive(Default)]
struct UnknownExits {
    by_addr: BTreeMap<u64, u64>,
    other: u64,
}

struct Range {
    base: u64,
    len: u64,
    name: String,
    device: SharedDevice,
    exits: AtomicU64,
}

/// An address space (port I/O or MMIO) of devices.
pub struct Bus {
    kind: &'static str,
    ranges: Vec<Range>,
    unknown: Mutex<UnknownExits>,
}

impl Bus {
    /// An empty bus; `kind` ("io" or "mmio") names it in counters and errors.
    pub fn new(kind: &'static str) -> Bus {
        Bus {
            kind,
            ranges: Vec::new(),
            unknown: Mutex::new(UnknownExits::default()),
        }
    }

    /// Adds `device` at `base..base+len`.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty {
                kind: self.kind,
                name: name.to_string(),
            });
        }
        if let Some(other) = self
            .ranges
            .iter()
            .find(|r| base < r.base + r.len && r.base < base.saturating_add(len))
        {
            return Err(BusError::Overlap {
                kind: self.kind,
                name: name.to_string(),
                base,
                len,
                other: other.name.clone(),
            });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(
            at,
            Range {
                base,
                len,
                name: name.to_string(),
                device,
                exits: AtomicU64::new(0),
            },
        );
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<&Range> {
        let i = self.ranges.partition_point(|r| r.base <= addr);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (addr < r.base + r.len).then_some(r)
    }

    fn count_unknown(&self, addr: u64) {
        let mut u = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        let full = u.by_addr.len() >= MAX_UNKNOWN_ADDRESSES;
        match u.by_addr.get_mut(&addr) {
            Some(n) => *n += 1,
            None if full => u.other += 1,
            None => {
                u.by_addr.insert(addr, 1);
            }
        }
    }

    /// Serves a guest read; returns whether a device handled it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some(r) => {
                r.exits.fetch_add(1, Ordering::Relaxed);
                r.device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(addr, addr - r.base, data);
                true
            }
            None => {
                self.count_unknown(addr);
                data.fill(0xff);
                false
            }
        }
    }

    /// Serves a guest write; returns whether a device handled it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some(r) => {
                r.exits.fetch_add(1, Ordering::Relaxed);
                r.device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(addr, addr - r.base, data);
                true
            }
            None => {
                self.count_unknown(addr);
                false
            }
        }
    }

    /// Exit counts: `vm_exits.<kind>.<device>`, `vm_exits.<kind>.unknown.<addr>`
    /// and (past [`MAX_UNKNOWN_ADDRESSES`]) `vm_exits.<kind>.unknown.other`.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for r in &self.ranges {
            *out.entry(format!("vm_exits.{}.{}", self.kind, r.name))
                .or_insert(0) += r.exits.load(Ordering::Relaxed);
        }
        let u = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        for (addr, n) in &u.by_addr {
            out.insert(format!("vm_exits.{}.unknown.{addr:#x}", self.kind), *n);
        }
        if u.other > 0 {
            out.insert(format!("vm_exits.{}.unknown.other", self.kind), u.other);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        log: Vec<(char, u64, u64, Vec<u8>)>,
        value: u8,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, addr: u64, offset: u64, data: &mut [u8]) {
            data.fill(self.value);
            self.log.push(('r', addr, offset, data.to_vec()));
        }
        fn write(&mut self, addr: u64, offset: u64, data: &[u8]) {
            self.log.push(('w', addr, offset, data.to_vec()));
        }
    }

    fn dev(value: u8) -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder {
            value,
            ..Default::default()
        }))
    }

    #[test]
    fn accesses_reach_the_right_device_with_offsets() {
        let a = dev(0xaa);
        let b = dev(0xbb);
        let mut bus = Bus::new("io");
        bus.insert("a", 0x3f8, 8, a.clone()).unwrap();
        bus.insert("b", 0x60, 1, b.clone()).unwrap();
        bus.insert("b", 0x64, 1, b.clone()).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [0xaa]);
        assert!(bus.write(0x64, &[0xfe]));
        assert!(bus.read(0x60, &mut d));
        assert_eq!(d, [0xbb]);
        assert_eq!(a.lock().unwrap().log, vec![('r', 0x3fd, 5, vec![0xaa])]);
        assert_eq!(
            b.lock().unwrap().log,
            vec![('w', 0x64, 0, vec![0xfe]), ('r', 0x60, 0, vec![0xbb])]
        );
        let c = bus.counters();
        assert_eq!(c["vm_exits.io.a"], 1);
        assert_eq!(c["vm_exits.io.b"], 2);
    }

    #[test]
    fn unknown_addresses_read_ff_and_are_counted() {
        let mut bus = Bus::new("mmio");
        bus.insert("x", 0xd000_0000, 0x1000, dev(1)).unwrap();
        let mut d = [0u8; 4];
        assert!(!bus.read(0xd000_1000, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.write(0xcfff_ffff, &[1]));
        assert!(!bus.write(0xcfff_ffff, &[1]));
        let c = bus.counters();
        assert_eq!(c["vm_exits.mmio.unknown.0xd0001000"], 1);
        assert_eq!(c["vm_exits.mmio.unknown.0xcfffffff"], 2);
        assert_eq!(c["vm_exits.mmio.x"], 0);
    }

    #[test]
    fn a_storm_of_distinct_unknown_addresses_keeps_the_table_at_its_cap() {
        let mut bus = Bus::new("mmio");
        bus.insert("x", 0xd000_0000, 0x1000, dev(1)).unwrap();
        let mut d = [0u8; 4];
        // A guest touching every page of a 4 GiB hole, once each, twice over.
        for round in 0..2 {
            for page in 0..100_000u64 {
                let addr = 0x1_0000_0000 + page * 0x1000;
                if round == 0 {
                    assert!(!bus.read(addr, &mut d));
                } else {
                    assert!(!bus.write(addr, &[1]));
                }
            }
        }
        let c = bus.counters();
        let unknown: Vec<_> = c
            .iter()
            .filter(|(k, _)| k.starts_with("vm_exits.mmio.unknown."))
            .collect();
        assert_eq!(unknown.len(), 64 + 1, "64 addresses and one 'other'");
        assert_eq!(unknown.iter().map(|(_, n)| **n).sum::<u64>(), 200_000);
        // The first addresses seen keep exact counts; the rest are summed.
        assert_eq!(c["vm_exits.mmio.unknown.0x100000000"], 2);
        assert_eq!(c["vm_exits.mmio.unknown.other"], 200_000 - 2 * 64);
    }

    #[test]
    fn overlaps_and_empty_ranges_are_refused() {
        let mut bus = Bus::new("io");
        bus.insert("a", 0x100, 0x10, dev(0)).unwrap();
        let err = bus.insert("b", 0x10f, 1, dev(0)).unwrap_err();
        assert!(err.to_string().contains("overlaps device a"), "{err}");
        assert!(bus.insert("c", 0xf0, 0x11, dev(0)).is_err());
        assert!(bus.insert("d", 0x110, 1, dev(0)).is_ok());
        assert!(bus.insert("e", 0xf0, 0x10, dev(0)).is_ok());
        assert!(matches!(
            bus.insert("f", 0x200, 0, dev(0)),
            Err(BusError::Empty { .. })
        ));
    }
}
