//! Parsers for the `/proc` files the probe reads. Pure functions over text so
//! they are unit-tested with fixture text, without root or a particular host.

use serde::{Deserialize, Serialize};

/// The fields of `/proc/<pid>/status` the probe reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusFields {
    /// `CapEff`: effective capability bits.
    pub cap_eff: Option<u64>,
    /// `Seccomp`: 0 disabled, 1 strict, 2 filter.
    pub seccomp: Option<u32>,
    /// `NoNewPrivs`.
    pub no_new_privs: Option<bool>,
}

/// Parses `/proc/<pid>/status` text; missing or malformed fields stay `None`.
pub fn status(text: &str) -> StatusFields {
    let mut out = StatusFields::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "CapEff" => out.cap_eff = u64::from_str_radix(value, 16).ok(),
            "Seccomp" => out.seccomp = value.parse().ok(),
            "NoNewPrivs" => out.no_new_privs = value.parse::<u8>().ok().map(|v| v != 0),
            _ => {}
        }
    }
    out
}

/// One line of `/proc/<pid>/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// Mount id.
    pub id: u32,
    /// Parent mount id.
    pub parent: u32,
    /// Root of the mount within its file system.
    pub root: String,
    /// Mount point, relative to the reader's root.
    pub mount_point: String,
    /// File system type (e.g. `overlay`, `ext4`, `tmpfs`).
    pub fs_type: String,
    /// Mount source (device or pseudo name).
    pub source: String,
}

/// Undoes the octal escapes (`\040` for space, ...) mountinfo uses in paths.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/<pid>/mountinfo`; malformed lines are skipped.
pub fn mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 6 || r.len() < 2 {
                return None;
            }
            Some(MountEntry {
                id: l[0].parse().ok()?,
                parent: l[1].parse().ok()?,
                root: unescape_octal(l[3]),
                mount_point: unescape_octal(l[4]),
                fs_type: r[0].to_string(),
                source: unescape_octal(r[1]),
            })
        })
        .collect()
}

/// One line of `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupEntry {
    /// Hierarchy id (0 is the unified v2 hierarchy).
    pub hierarchy: u32,
    /// Controllers bound to the hierarchy (empty for v2).
    pub controllers: Vec<String>,
    /// Path of the process's cgroup, relative to the reader's cgroup namespace root.
    pub path: String,
}

/// Parses `/proc/<pid>/cgroup` (v1, hybrid or v2); malformed lines are skipped.
pub fn cgroup(text: &str) -> Vec<CgroupEntry> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(CgroupEntry {
                hierarchy,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// One line of `/proc/<pid>/uid_map` or `gid_map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapEntry {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id in the parent namespace it maps to.
    pub outside: u32,
    /// Length of the range.
    pub count: u32,
}

impl IdMapEntry {
    /// True for the identity map of the initial user namespace (`0 0 4294967295`).
    pub fn is_identity_full(&self) -> bool {
        self.inside == 0 && self.outside == 0 && self.count == u32::MAX
    }
}

/// Parses `/proc/<pid>/uid_map` / `gid_map`; malformed lines are skipped.
pub fn id_map(text: &str) -> Vec<IdMapEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace().map(|x| x.parse::<u32>());
            Some(IdMapEntry {
                inside: f.next()?.ok()?,
                outside: f.next()?.ok()?,
                count: f.next()?.ok()?,
            })
        })
        .collect()
}

/// Interface names from `/proc/net/dev` (the reader's network namespace).
pub fn net_dev(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, _) = line.split_once(':')?;
            let name = name.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// A `Key:   N kB` value from `/proc/meminfo`, in KiB.
pub fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Field 22 of `/proc/<pid>/stat`: start time in clock ticks after boot.
/// The command name (field 2) may hold spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn stat_starttime(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    // After ')' come fields 3.. ; starttime is field 22, i.e. index 19 here.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Capability names by bit number (linux/capability.h, up to CAP_CHECKPOINT_RESTORE).
pub const CAP_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// Names of the capabilities set in `bits` (unknown bits as `cap_<n>`).
pub fn cap_names(bits: u64) -> Vec<String> {
    (0..64)
        .filter(|b| bits & (1u64 << b) != 0)
        .map(|b| match CAP_NAMES.get(b) {
            Some(n) => format!("cap_{n}"),
            None => format!("cap_{b}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nUid:\t0\t0\t0\t0\n\
CapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n\
CapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\n\
Seccomp_filters:\t0\nSpeculation_Store_Bypass:\tthread vulnerable\n";

    #[test]
    fn status_reads_caps_seccomp_nnp() {
        let s = status(STATUS);
        assert_eq!(s.cap_eff, Some(0x1fffeffffff));
        assert_eq!(s.seccomp, Some(0));
        assert_eq!(s.no_new_privs, Some(false));
        let s = status("CapEff:\t00000000a80425fb\nNoNewPrivs:\t1\nSeccomp:\t2\n");
        assert_eq!(s.cap_eff, Some(0xa80425fb));
        assert_eq!(s.seccomp, Some(2));
        assert_eq!(s.no_new_privs, Some(true));
        assert_eq!(status("garbage\nCapEff:\tzz\n"), StatusFields::default());
    }

    #[test]
    fn cap_names_decode_docker_default_set() {
        // Docker's default set: chown dac_override fowner fsetid kill setgid setuid
        // setpcap net_bind_service net_raw sys_chroot mknod audit_write setfcap.
        let names = cap_names(0xa80425fb);
        assert_eq!(names.len(), 14, "{names:?}");
        assert!(names.contains(&"cap_net_raw".to_string()));
        assert!(!names.contains(&"cap_sys_admin".to_string()));
        // This host's root lacks only sys_resource (bit 24) below bit 41.
        let host = cap_names(0x1fffeffffff);
        assert_eq!(host.len(), 40);
        assert!(!host.contains(&"cap_sys_resource".to_string()));
        assert_eq!(cap_names(1 << 50), vec!["cap_50".to_string()]);
    }

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
23 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
24 22 0:23 / /dev rw,nosuid shared:2 master:1 - tmpfs tmpfs rw,mode=755
25 22 8:1 /data/my\\040dir /mnt/with\\040space rw - ext4 /dev/sda1 rw
broken line without separator
";

    #[test]
    fn mountinfo_parses_optional_fields_and_escapes() {
        let m = mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].mount_point, "/");
        assert_eq!(m[0].fs_type, "overlay");
        assert_eq!(m[2].fs_type, "tmpfs");
        assert_eq!(m[2].parent, 22);
        assert_eq!(m[3].root, "/data/my dir");
        assert_eq!(m[3].mount_point, "/mnt/with space");
        assert_eq!(m[3].source, "/dev/sda1");
    }

    #[test]
    fn cgroup_parses_hybrid_and_v2() {
        let hybrid = "12:pids:/user.slice/x\n4:cpu,cpuacct:/duet/abc\n0::/user.slice\n";
        let c = cgroup(hybrid);
        assert_eq!(c.len(), 3);
        assert_eq!(c[1].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(c[1].path, "/duet/abc");
        assert_eq!(c[2].hierarchy, 0);
        assert!(c[2].controllers.is_empty());
        let v2 = cgroup("0::/\n");
        assert_eq!(v2[0].path, "/");
        // Named v1 hierarchy with a colon-free name, and a path containing ':'.
        let named = cgroup("1:name=systemd:/a:b\n");
        assert_eq!(named[0].controllers, vec!["name=systemd"]);
        assert_eq!(named[0].path, "/a:b");
    }

    #[test]
    fn id_map_parses_identity_and_ranges() {
        let m = id_map("         0          0 4294967295\n");
        assert_eq!(m.len(), 1);
        assert!(m[0].is_identity_full());
        let m = id_map("0 100000 65536\n65536 1000 1\nbad\n");
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0],
            IdMapEntry {
                inside: 0,
                outside: 100000,
                count: 65536
            }
        );
        assert!(!m[0].is_identity_full());
        assert!(id_map("").is_empty());
    }

    #[test]
    fn net_dev_lists_interfaces() {
        let t = "Inter-|   Receive                            |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes\n    \
lo:  1000      10    0    0    0     0          0         0     1000\n  \
eth0: 2000      20    0    0    0     0          0         0     2000\n";
        assert_eq!(net_dev(t), vec!["lo", "eth0"]);
    }

    #[test]
    fn meminfo_and_stat() {
        let mi = "MemTotal:       24589100 kB\nMemFree:        1000 kB\nMemAvailable:   2000 kB\n";
        assert_eq!(meminfo_kib(mi, "MemTotal"), Some(24589100));
        assert_eq!(meminfo_kib(mi, "MemAvailable"), Some(2000));
        assert_eq!(meminfo_kib(mi, "Swap"), None);
        // comm with spaces and a ')' inside.
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000000 200";
        assert_eq!(stat_starttime(stat), Some(98765));
        assert_eq!(stat_starttime("1 (x) S 0"), None);
    }
}
