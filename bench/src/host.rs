//! Facts about the machine a report was measured on: CPU, kernel, cgroup
//! layout, and what kind of KVM `/dev/kvm` is (hardware or something else).

use duet_probe::parse::{meminfo_kib, mountinfo, MountEntry};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How cgroups are mounted under `/sys/fs/cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupLayout {
    /// `/sys/fs/cgroup` is the unified cgroup2 hierarchy.
    V2,
    /// v1 controller hierarchies plus a cgroup2 mount (usually `/sys/fs/cgroup/unified`).
    Hybrid,
    /// v1 controller hierarchies only.
    V1,
    /// No cgroup file system is mounted there.
    None,
}

impl CgroupLayout {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            CgroupLayout::V2 => "cgroup v2",
            CgroupLayout::Hybrid => "cgroup v1/v2 hybrid",
            CgroupLayout::V1 => "cgroup v1",
            CgroupLayout::None => "no cgroups mounted",
        }
    }
}

/// Classifies the cgroup layout from mountinfo entries.
pub fn cgroup_layout(mounts: &[MountEntry]) -> CgroupLayout {
    let under = |m: &&MountEntry| m.mount_point.starts_with("/sys/fs/cgroup");
    if mounts
        .iter()
        .any(|m| m.mount_point == "/sys/fs/cgroup" && m.fs_type == "cgroup2")
    {
        return CgroupLayout::V2;
    }
    let v1 = mounts.iter().filter(under).any(|m| m.fs_type == "cgroup");
    let v2 = mounts.iter().filter(under).any(|m| m.fs_type == "cgroup2");
    match (v1, v2) {
        (true, true) => CgroupLayout::Hybrid,
        (true, false) => CgroupLayout::V1,
        (false, true) => CgroupLayout::Hybrid,
        (false, false) => CgroupLayout::None,
    }
}

/// What serves `/dev/kvm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "modules")]
pub enum KvmKind {
    /// `kvm_intel` (VMX) or `kvm_amd` (SVM): hardware virtualization.
    Hardware(String),
    /// Another KVM module (e.g. `kvm_pvm`): the API works, guests may be emulated.
    Other(Vec<String>),
    /// No KVM module found.
    Absent,
}

/// KVM facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmFacts {
    /// `/dev/kvm` exists.
    pub dev_kvm: bool,
    /// Module that serves it.
    pub kind: KvmKind,
    /// `vmx` or `svm` if `/proc/cpuinfo` lists it.
    pub cpu_flag: Option<String>,
    /// Hardware KVM with the CPU flag: guests run at native speed.
    pub accelerated: bool,
}

/// Classifies KVM from loaded module names (`kvm_intel`, `kvm-amd`, ...).
pub fn kvm_kind(modules: &[String]) -> KvmKind {
    let norm: Vec<String> = modules.iter().map(|m| m.replace('-', "_")).collect();
    if let Some(hw) = norm.iter().find(|m| *m == "kvm_intel" || *m == "kvm_amd") {
        return KvmKind::Hardware(hw.clone());
    }
    let others: Vec<String> = norm
        .iter()
        .filter(|m| m.starts_with("kvm_"))
        .cloned()
        .collect();
    if !others.is_empty() {
        KvmKind::Other(others)
    } else if norm.iter().any(|m| m == "kvm") {
        KvmKind::Other(vec!["kvm".to_string()])
    } else {
        KvmKind::Absent
    }
}

/// KVM module names from `/proc/modules` text, else from `/sys/module` (built-in or
/// when `/proc/modules` is absent, as on kernels without module support).
fn kvm_modules() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_to_string("/proc/modules")
        .map(|t| {
            t.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with("kvm"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Ok(d) = std::fs::read_dir("/sys/module") {
        for e in d.filter_map(Result::ok) {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("kvm") && !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names.sort();
    names
}

/// The machine a report was measured on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Online CPUs.
    pub cpus: u32,
    /// MemTotal, KiB.
    pub mem_total_kib: u64,
    /// `uname -r`.
    pub kernel_release: String,
    /// `uname -v`.
    pub kernel_version: String,
    /// cgroup layout.
    pub cgroup_layout: CgroupLayout,
    /// KVM.
    pub kvm: KvmFacts,
}

/// CPU model and virtualization flag from `/proc/cpuinfo` text.
pub fn cpuinfo(text: &str) -> (String, Option<String>) {
    let model = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let flag = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "flags").then_some(v)
        })
        .and_then(|flags| {
            flags
                .split_whitespace()
                .find(|f| *f == "vmx" || *f == "svm")
                .map(str::to_string)
        });
    (model, flag)
}

/// Reads the host facts now.
pub fn collect() -> HostFacts {
    let (cpu_model, cpu_flag) =
        cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
    let mounts = mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    let kind = kvm_kind(&kvm_modules());
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0) as u32;
    // SAFETY: utsname is plain old data; uname fills the struct we own.
    let (release, version) = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        libc::uname(&mut u);
        let s = |f: &[libc::c_char]| {
            std::ffi::CStr::from_ptr(f.as_ptr())
                .to_string_lossy()
                .into_owned()
        };
        (s(&u.release), s(&u.version))
    };
    HostFacts {
        cpu_model,
        cpus,
        mem_total_kib: meminfo_kib(
            &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
            "MemTotal",
        )
        .unwrap_or(0),
        kernel_release: release,
        kernel_version: version,
        cgroup_layout: cgroup_layout(&mounts),
        kvm: KvmFacts {
            dev_kvm: Path::new("/dev/kvm").exists(),
            accelerated: matches!(kind, KvmKind::Hardware(_)) && cpu_flag.is_some(),
            kind,
            cpu_flag,
        },
    }
}

impl HostFacts {
    /// One line for a report header.
    pub fn summary(&self) -> String {
        let kvm = match (&self.kvm.kind, self.kvm.dev_kvm) {
            (_, false) => "no /dev/kvm".to_string(),
            (KvmKind::Hardware(m), true) => format!("hardware KVM ({m})"),
            (KvmKind::Other(m), true) => {
                format!("/dev/kvm from {} (not hardware-accelerated)", m.join(", "))
            }
            (KvmKind::Absent, true) => "/dev/kvm present, module unknown".to_string(),
        };
        format!(
            "{} ({} CPUs, {:.1} GiB), Linux {}, {}, {}",
            self.cpu_model,
            self.cpus,
            self.mem_total_kib as f64 / 1048576.0,
            self.kernel_release,
            self.cgroup_layout.name(),
            kvm
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_from_mountinfo() {
        let hybrid = mountinfo(
            "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        );
        assert_eq!(cgroup_layout(&hybrid), CgroupLayout::Hybrid);
        let v2 = mountinfo("30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n");
        assert_eq!(cgroup_layout(&v2), CgroupLayout::V2);
        let v1 = mountinfo(
            "30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n\
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        );
        assert_eq!(cgroup_layout(&v1), CgroupLayout::V1);
        assert_eq!(cgroup_layout(&[]), CgroupLayout::None);
    }

    #[test]
    fn kvm_kinds() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            kvm_kind(&v(&["kvm", "kvm_intel"])),
            KvmKind::Hardware("kvm_intel".into())
        );
        assert_eq!(
            kvm_kind(&v(&["kvm-amd", "kvm"])),
            KvmKind::Hardware("kvm_amd".into())
        );
        assert_eq!(
            kvm_kind(&v(&["kvm", "kvm_pvm"])),
            KvmKind::Other(vec!["kvm_pvm".into()])
        );
        assert_eq!(kvm_kind(&v(&["ext4"])), KvmKind::Absent);
    }

    #[test]
    fn cpuinfo_model_and_flag() {
        let t = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu vme svm sse\n";
        assert_eq!(
            cpuinfo(t),
            ("AMD EPYC 7B13".to_string(), Some("svm".to_string()))
        );
        let t = "model name\t: AMD EPYC\nflags\t\t: fpu vme sse\n";
        assert_eq!(cpuinfo(t).1, None);
    }

    #[test]
    fn collect_here() {
        let h = collect();
        assert!(h.cpus >= 1 && h.mem_total_kib > 0);
        assert!(!h.kernel_release.is_empty());
        assert!(h.summary().contains(&h.kernel_release));
    }
}
