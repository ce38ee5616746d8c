//! Memory attributable to a process tree: PSS from `/proc/<pid>/smaps_rollup`,
//! split into private and shared, summed over the tree.
//!
//! PSS (proportional set size) charges each shared page to its N users as
//! 1/N: summing PSS over all instances never counts a shared page twice,
//! which is what "how much memory does one more instance cost" needs.

use serde::{Deserialize, Serialize};
use std::ops::AddAssign;

/// Errors reading memory figures.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A `/proc` file could not be read (the process may have exited).
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The rollup text lacked the `Pss:` line.
    #[error("{path}: no `Pss:` line")]
    NoPss {
        /// The file.
        path: String,
    },
}

/// The `smaps_rollup` figures duet reports, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    /// Resident set size (shared pages counted in full).
    pub rss_kib: u64,
    /// Proportional set size.
    pub pss_kib: u64,
    /// PSS of anonymous memory.
    pub pss_anon_kib: u64,
    /// PSS of file-backed memory (binaries, libraries, image layers in page cache).
    pub pss_file_kib: u64,
    /// PSS of shmem/tmpfs.
    pub pss_shmem_kib: u64,
    /// Clean pages shared with other processes.
    pub shared_clean_kib: u64,
    /// Dirty pages shared with other processes.
    pub shared_dirty_kib: u64,
    /// Clean pages only this process maps.
    pub private_clean_kib: u64,
    /// Dirty pages only this process maps.
    pub private_dirty_kib: u64,
    /// Swapped out.
    pub swap_kib: u64,
}

impl Rollup {
    /// Memory no other process shares (private clean + dirty).
    pub fn private_kib(&self) -> u64 {
        self.private_clean_kib + self.private_dirty_kib
    }

    /// This tree's proportional share of pages it shares with others (PSS minus private).
    pub fn shared_share_kib(&self) -> u64 {
        self.pss_kib.saturating_sub(self.private_kib())
    }
}

impl AddAssign for Rollup {
    fn add_assign(&mut self, o: Rollup) {
        self.rss_kib += o.rss_kib;
        self.pss_kib += o.pss_kib;
        self.pss_anon_kib += o.pss_anon_kib;
        self.pss_file_kib += o.pss_file_kib;
        self.pss_shmem_kib += o.pss_shmem_kib;
        self.shared_clean_kib += o.shared_clean_kib;
        self.shared_dirty_kib += o.shared_dirty_kib;
        self.private_clean_kib += o.private_clean_kib;
        self.private_dirty_kib += o.private_dirty_kib;
        self.swap_kib += o.swap_kib;
    }
}

/// Parses `smaps_rollup` text; `path` only names the source in errors.
pub fn parse_smaps_rollup(text: &str, path: &str) -> Result<Rollup, MemoryError> {
    let mut r = Rollup::default();
    let mut saw_pss = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        match key {
            "Rss" => r.rss_kib = v,
            "Pss" => {
                r.pss_kib = v;
                saw_pss = true;
            }
            "Pss_Anon" => r.pss_anon_kib = v,
            "Pss_File" => r.pss_file_kib = v,
            "Pss_Shmem" => r.pss_shmem_kib = v,
            "Shared_Clean" => r.shared_clean_kib = v,
            "Shared_Dirty" => r.shared_dirty_kib = v,
            "Private_Clean" => r.private_clean_kib = v,
            "Private_Dirty" => r.private_dirty_kib = v,
            "Swap" => r.swap_kib = v,
            _ => {}
        }
    }
    if saw_pss {
        Ok(r)
    } else {
        Err(MemoryError::NoPss {
            path: path.to_string(),
        })
    }
}

/// Reads the rollup of one process.
pub fn rollup_of(pid: u32) -> Result<Rollup, MemoryError> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(|source| MemoryError::Read {
        path: path.clone(),
        source,
    })?;
    parse_smaps_rollup(&text, &path)
}

/// Parent PID (field 4) from `/proc/<pid>/stat` text.
pub fn stat_ppid(text: &str) -> Option<u32> {
    let after = &text[text.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// `roots` and all their descendants, found by scanning `/proc/*/stat`.
pub fn process_tree(roots: &[u32]) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(d) = std::fs::read_dir("/proc") {
        for e in d.filter_map(Result::ok) {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some(pp) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| stat_ppid(&t))
            {
                parent_of.push((pid, pp));
            }
        }
    }
    let mut tree: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        for &(child, parent) in &parent_of {
            if parent == p && !tree.contains(&child) {
                tree.push(child);
            }
        }
        i += 1;
    }
    tree
}

/// Memory of a whole process tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeMemory {
    /// Processes counted.
    pub pids: Vec<u32>,
    /// Sum of their rollups.
    pub total: Rollup,
}

/// Sums the rollups of `roots` and their descendants; processes that exit
/// while being read are skipped (they no longer hold memory).
pub fn tree_memory(roots: &[u32]) -> TreeMemory {
    let mut total = Rollup::default();
    let mut pids = Vec::new();
    for pid in process_tree(roots) {
        if let Ok(r) = rollup_of(pid) {
            total += r;
            pids.push(pid);
        }
    }
    TreeMemory { pids, total }
}

/// `MemAvailable` now, KiB.
pub fn mem_available_kib() -> Option<u64> {
    duet_probe::parse::meminfo_kib(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "\
55f1c2a00000-7ffd5b3fe000 ---p 00000000 00:00 0                          [rollup]
Rss:                1540 kB
Pss:                 412 kB
Pss_Dirty:           120 kB
Pss_Anon:            120 kB
Pss_File:            292 kB
Pss_Shmem:             0 kB
Shared_Clean:       1300 kB
Shared_Dirty:          0 kB
Private_Clean:       120 kB
Private_Dirty:       120 kB
Referenced:         1540 kB
Anonymous:           120 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
Swap:                  8 kB
SwapPss:               8 kB
Locked:                0 kB
";

    #[test]
    fn parses_rollup_fixture() {
        let r = parse_smaps_rollup(ROLLUP, "fixture").unwrap();
        assert_eq!(r.rss_kib, 1540);
        assert_eq!(r.pss_kib, 412);
        assert_eq!(r.pss_anon_kib, 120);
        assert_eq!(r.pss_file_kib, 292);
        assert_eq!(r.shared_clean_kib, 1300);
        assert_eq!(r.private_kib(), 240);
        assert_eq!(r.shared_share_kib(), 172);
        assert_eq!(r.swap_kib, 8);
        // Pss_Dirty must not be mistaken for Pss.
        assert!(matches!(
            parse_smaps_rollup("Pss_Dirty: 5 kB\n", "x"),
            Err(MemoryError::NoPss { .. })
        ));
    }

    #[test]
    fn sums_add_up() {
        let r = parse_smaps_rollup(ROLLUP, "fixture").unwrap();
        let mut t = Rollup::default();
        t += r;
        t += r;
        assert_eq!(t.pss_kib, 824);
        assert_eq!(t.private_kib(), 480);
    }

    #[test]
    fn ppid_with_odd_comm() {
        assert_eq!(stat_ppid("77 (a ) b) S 12 77 77 0"), Some(12));
        assert_eq!(stat_ppid("garbage"), None);
    }

    #[test]
    fn live_tree_includes_child() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let tree = process_tree(&[me]);
        assert!(tree.contains(&child.id()), "{tree:?}");
        let m = tree_memory(&[child.id()]);
        assert_eq!(m.pids, vec![child.id()]);
        assert!(m.total.pss_kib > 0 && m.total.rss_kib >= m.total.pss_kib);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(mem_available_kib().unwrap() > 0);
    }
}
