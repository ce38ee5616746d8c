//! Host memory a VM run costs: the VMM process's resident set, the part of
//! it that is guest RAM the guest touched, and the rest (the VMM overhead).
//!
//! Measured at the end of a run, after the vCPUs stopped but while the guest
//! memory is still mapped (see [`crate::run_vm_with_sink`]), from one read of
//! `/proc/self/smaps`:
//! - `vmm_rss_kib`: the sum of `Rss:` over every mapping of the process
//!   (what `/proc/self/smaps_rollup` reports, taken from the same page walk
//!   as the guest part so both describe one moment);
//! - `guest_touched_kib`: `Rss:` of the mappings that lie inside the host
//!   address ranges of the guest memory regions (vm-memory's
//!   `GuestMemoryMmap`); a mapping that only partly overlaps a region (the
//!   kernel merged it with a neighbour) is measured page by page with
//!   `mincore(2)` over the overlap instead;
//! - `vmm_overhead_kib` = `vmm_rss_kib` - `guest_touched_kib`;
//! - `vmm_peak_rss_kib`: `VmHWM:` of `/proc/self/status`, the largest RSS the
//!   process had so far (guest pages included).
//!
//! duet's VMM is the `duet` process itself, or (jailed, [`crate::jail`]) a
//! fork of it, so the overhead includes the CLI's own memory (image store,
//! initramfs building, report) that the VMM process maps: that is the VMM's
//! process, which is how Firecracker counts its overhead (its whole process
//! minus guest memory). The jailed VMM has no `/proc`; it reads the two files
//! through descriptors opened before its pivot_root ([`ProcFiles`]). Kernel-side memory (KVM's page tables for
//! the guest, vCPU state) is in no process's RSS, for duet or any VMM.

use crate::memory::GuestMemory;
use duet_shared::report::RunReport;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// One mapping of a `/proc/<pid>/smaps` listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// First host address.
    pub start: u64,
    /// One past the last host address.
    pub end: u64,
    /// Its `Rss:` in KiB.
    pub rss_kib: u64,
}

/// A host address range `[start, end)` holding guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRange {
    /// First host address.
    pub start: u64,
    /// One past the last host address.
    pub end: u64,
}

/// The figures of one measurement, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryUsage {
    /// Resident set of the whole process.
    pub vmm_rss_kib: u64,
    /// Resident guest RAM (pages the guest, or the loader, touched).
    pub guest_touched_kib: u64,
    /// Peak resident set of the process so far (`VmHWM`), if readable.
    pub vmm_peak_rss_kib: Option<u64>,
}

impl MemoryUsage {
    /// RSS that is not guest RAM: the VMM's own cost.
    pub fn overhead_kib(&self) -> u64 {
        self.vmm_rss_kib.saturating_sub(self.guest_touched_kib)
    }

    /// The report counters (`vmm_rss_kib`, `guest_touched_kib`,
    /// `vmm_overhead_kib`, and `vmm_peak_rss_kib` when known).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut c = vec![
            ("vmm_rss_kib", self.vmm_rss_kib),
            ("guest_touched_kib", self.guest_touched_kib),
            ("vmm_overhead_kib", self.overhead_kib()),
        ];
        if let Some(peak) = self.vmm_peak_rss_kib {
            c.push(("vmm_peak_rss_kib", peak));
        }
        c
    }
}

/// Errors reading this process's memory figures.
#[derive(Debug, thiserror::Error)]
pub enum MemoryUsageError {
    /// A /proc file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The smaps text had no mapping with an `Rss:` line.
    #[error("{path} lists no mapping with an Rss: line")]
    Empty {
        /// The file.
        path: &'static str,
    },
    /// mincore(2) failed on a guest range.
    #[error("mincore on guest memory at {start:#x} ({len} bytes)")]
    Mincore {
        /// Host address.
        start: u64,
        /// Length in bytes.
        len: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Parses a `/proc/<pid>/smaps` listing into its mappings and their `Rss:`.
///
/// A mapping starts with a header line `start-end perms offset dev inode
/// [path]` (hex addresses); its `Rss:` line follows among the field lines.
/// Mappings without an `Rss:` line are left out.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut current: Option<(u64, u64)> = None;
    for line in text.lines() {
        if let Some((start, end)) = parse_header(line) {
            current = Some((start, end));
            continue;
        }
        if let (Some((start, end)), Some(kib)) = (current, field_kib(line, "Rss:")) {
            out.push(Mapping {
                start,
                end,
                rss_kib: kib,
            });
            // One Rss: per mapping; ignore anything until the next header.
            current = None;
        }
    }
    out
}

/// `start-end ...` with hex addresses, as smaps and maps headers are.
fn parse_header(line: &str) -> Option<(u64, u64)> {
    let range = line.split_ascii_whitespace().next()?;
    let (a, b) = range.split_once('-')?;
    let start = u64::from_str_radix(a, 16).ok()?;
    let end = u64::from_str_radix(b, 16).ok()?;
    (end >= start).then_some((start, end))
}

/// The KiB value of a `Name:   123 kB` line, if `line` is that field.
pub fn field_kib(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?;
    let mut words = rest.split_ascii_whitespace();
    let value = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// Finds `name` (e.g. `VmHWM:`) in a `/proc/<pid>/status` text, in KiB.
pub fn status_kib(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| field_kib(l, name))
}

/// Sums the RSS of every mapping, and of those inside `ranges`.
///
/// Returns `(total_kib, guest_kib, partial)`, where `partial` lists the
/// overlaps of guest ranges with mappings that extend beyond them: their
/// RSS cannot be split from smaps, so they are neither in `guest_kib` nor
/// left out of `total_kib`; [`measure`] counts them with mincore.
pub fn split_rss(mappings: &[Mapping], ranges: &[HostRange]) -> (u64, u64, Vec<HostRange>) {
    let mut total = 0;
    let mut guest = 0;
    let mut partial = Vec::new();
    for m in mappings {
        total += m.rss_kib;
        for r in ranges {
            let lo = m.start.max(r.start);
            let hi = m.end.min(r.end);
            if lo >= hi {
                continue;
            }
            if m.start >= r.start && m.end <= r.end {
                guest += m.rss_kib;
            } else {
                partial.push(HostRange { start: lo, end: hi });
            }
        }
    }
    (total, guest, partial)
}

/// Host address ranges of every region of `memory`.
pub fn guest_ranges(memory: &GuestMemory) -> Vec<HostRange> {
    memory
        .iter()
        .filter_map(|region| {
            let host = region.get_host_address(MemoryRegionAddress(0)).ok()? as u64;
            Some(HostRange {
                start: host,
                end: host + region.len(),
            })
        })
        .collect()
}

/// Resident KiB of `[range.start, range.end)` of this process, by mincore(2).
fn resident_kib_mincore(range: HostRange) -> Result<u64, MemoryUsageError> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let start = range.start & !(page - 1);
    let len = range.end - start;
    let pages = len.div_ceil(page) as usize;
    let mut vec = vec![0u8; pages];
    // SAFETY: `start` is page aligned and `[start, start + len)` lies inside
    // mappings of this process (the guest memory, kept mapped by the caller);
    // `vec` has one byte per page of that range, as mincore writes.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, len as usize, vec.as_mut_ptr()) };
    if rc != 0 {
        return Err(MemoryUsageError::Mincore {
            start,
            len,
            source: std::io::Error::last_os_error(),
        });
    }
    let resident = vec.iter().filter(|b| **b & 1 == 1).count() as u64;
    Ok(resident * page / 1024)
}

const SMAPS: &str = "/proc/self/smaps";
const STATUS: &str = "/proc/self/status";

/// `/proc/self/smaps` and `/proc/self/status`, opened while `/proc` was
/// reachable: the jailed VMM (crate::jail) has no `/proc` in its root and
/// measures itself through these. A seq_file re-read from offset 0 shows
/// the process as it is at the time of the read, not of the open.
#[derive(Debug)]
pub struct ProcFiles {
    smaps: std::fs::File,
    status: std::fs::File,
}

impl ProcFiles {
    /// Opens both files of the calling process.
    pub fn open_self() -> Result<ProcFiles, MemoryUsageError> {
        let open = |path: &'static str| {
            std::fs::File::open(path).map_err(|source| MemoryUsageError::Read { path, source })
        };
        Ok(ProcFiles {
            smaps: open(SMAPS)?,
            status: open(STATUS)?,
        })
    }
}

/// The whole of `file`, read again from its start.
fn reread(mut file: &std::fs::File) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Measures this process now; `memory` must stay mapped meanwhile.
pub fn measure(memory: &GuestMemory) -> Result<MemoryUsage, MemoryUsageError> {
    measure_with(memory, None)
}

/// [`measure`], reading `files` instead of opening `/proc/self` when given.
pub fn measure_with(
    memory: &GuestMemory,
    files: Option<&ProcFiles>,
) -> Result<MemoryUsage, MemoryUsageError> {
    let text = match files {
        Some(f) => reread(&f.smaps),
        None => std::fs::read_to_string(SMAPS),
    }
    .map_err(|source| MemoryUsageError::Read {
        path: SMAPS,
        source,
    })?;
    let mappings = parse_smaps(&text);
    if mappings.is_empty() {
        return Err(MemoryUsageError::Empty { path: SMAPS });
    }
    let (total, mut guest, partial) = split_rss(&mappings, &guest_ranges(memory));
    for r in partial {
        guest += resident_kib_mincore(r)?;
    }
    let peak = match files {
        Some(f) => reread(&f.status),
        None => std::fs::read_to_string(STATUS),
    }
    .ok()
    .and_then(|s| status_kib(&s, "VmHWM:"));
    Ok(MemoryUsage {
        vmm_rss_kib: total,
        guest_touched_kib: guest.min(total),
        vmm_peak_rss_kib: peak,
    })
}

/// Measures and adds the counters to `report`; a failure is recorded as
/// the counter `memory_usage_failed` = 1 instead (a missing /proc must not
/// fail the run).
pub fn record(memory: &GuestMemory, report: &mut RunReport) {
    record_with(memory, report, None)
}

/// [`record`] through [`measure_with`].
pub fn record_with(memory: &GuestMemory, report: &mut RunReport, files: Option<&ProcFiles>) {
    match measure_with(memory, files) {
        Ok(usage) => {
            for (k, v) in usage.counters() {
                report.counters.insert(k.into(), v);
            }
        }
        Err(_) => {
            report.counters.insert("memory_usage_failed".into(), 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
55d0c0a00000-55d0c0a2c000 r--p 00000000 00:1d 123                        /usr/local/bin/duet
Size:                176 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                 176 kB
Pss:                 176 kB
Private_Clean:       176 kB
VmFlags: rd mr mw me sd
7f1200000000-7f1208000000 rw-p 00000000 00:00 0 
Size:             131072 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:               23456 kB
Pss:               23456 kB
Anonymous:         23456 kB
AnonHugePages:      2048 kB
VmFlags: rd wr mr mw me nr sd
7f1208000000-7f1208021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                  12 kB
VmFlags: rd wr mr mw me ac sd
7ffc8a1d0000-7ffc8a1f1000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  20 kB
THPeligible:    0
VmFlags: rd wr mr mw me gd ac
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Size:                  4 kB
Rss:                   0 kB
VmFlags: ex
";

    #[test]
    fn parses_every_mapping_with_its_rss() {
        let m = parse_smaps(FIXTURE);
        assert_eq!(m.len(), 5);
        assert_eq!(
            m[1],
            Mapping {
                start: 0x7f1200000000,
                end: 0x7f1208000000,
                rss_kib: 23456
            }
        );
        assert_eq!(m[4].start, 0xffffffffff600000);
        assert_eq!(
            m.iter().map(|m| m.rss_kib).sum::<u64>(),
            176 + 23456 + 12 + 20
        );
    }

    #[test]
    fn guest_mapping_is_split_from_the_rest() {
        let m = parse_smaps(FIXTURE);
        let guest = [HostRange {
            start: 0x7f1200000000,
            end: 0x7f1208000000,
        }];
        let (total, g, partial) = split_rss(&m, &guest);
        assert_eq!(total, 176 + 23456 + 12 + 20);
        assert_eq!(g, 23456);
        assert!(partial.is_empty());
        let usage = MemoryUsage {
            vmm_rss_kib: total,
            guest_touched_kib: g,
            vmm_peak_rss_kib: None,
        };
        assert_eq!(usage.overhead_kib(), 176 + 12 + 20);
        let names: Vec<_> = usage.counters().iter().map(|c| c.0).collect();
        assert_eq!(
            names,
            ["vmm_rss_kib", "guest_touched_kib", "vmm_overhead_kib"]
        );
    }

    #[test]
    fn a_merged_mapping_is_reported_as_partial() {
        let m = parse_smaps(FIXTURE);
        // Guest range covering the second half of the big mapping only.
        let guest = [HostRange {
            start: 0x7f1204000000,
            end: 0x7f1208000000,
        }];
        let (_, g, partial) = split_rss(&m, &guest);
        assert_eq!(g, 0);
        assert_eq!(partial, guest.to_vec());
    }

    #[test]
    fn headers_and_fields() {
        assert_eq!(
            parse_header("00400000-00401000 r-xp 0 0:0 0"),
            Some((0x400000, 0x401000))
        );
        assert_eq!(parse_header("Rss:  4 kB"), None);
        assert_eq!(parse_header("VmFlags: rd ex"), None);
        assert_eq!(field_kib("Rss:                 176 kB", "Rss:"), Some(176));
        assert_eq!(field_kib("RssAnon:  1 kB", "Rss:"), None);
        assert_eq!(field_kib("Pss:  1 kB", "Rss:"), None);
        let status =
            "Name:\tduet\nVmPeak:\t  300000 kB\nVmHWM:\t  140000 kB\nVmRSS:\t  139000 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(140000));
        assert_eq!(status_kib(status, "VmRSS:"), Some(139000));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn touched_guest_pages_show_up_in_this_process() {
        let memory = crate::memory::create_guest_memory(8).unwrap();
        let before = measure(&memory).unwrap();
        assert!(before.vmm_rss_kib > 0);
        // Touch 2 MiB of the 8 MiB guest.
        let ranges = guest_ranges(&memory);
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0].end - ranges[0].start, 8 << 20);
        use vm_memory::{Bytes, GuestAddress};
        for off in (0..(2u64 << 20)).step_by(4096) {
            memory.write_obj(1u8, GuestAddress(off)).unwrap();
        }
        let after = measure(&memory).unwrap();
        assert!(
            after.guest_touched_kib >= before.guest_touched_kib + 2048,
            "{before:?} -> {after:?}"
        );
        assert!(after.vmm_rss_kib >= after.guest_touched_kib);
        assert!(after.vmm_peak_rss_kib.is_some());
        // mincore agrees with smaps on the touched part.
        assert!(resident_kib_mincore(ranges[0]).unwrap() >= 2048);
    }
}
