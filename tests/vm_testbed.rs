//! Real Linux microVMs booted by duet's own VMM, inside the nested-KVM
//! testbed (tests/testbed/run): this host's /dev/kvm cannot boot Linux (see
//! `duet doctor`), the testbed's can. One testbed boot runs every case in
//! tests/testbed/vm-cases.sh; each test below checks one case.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

struct Case {
    output: String,
    rc: i32,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn guest_kernel() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("duet/kernel/current/vmlinux")
}

fn duet_init() -> PathBuf {
    duet_bin().with_file_name("duet-init")
}

/// Why the testbed cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !is_root() {
        return Some("needs root".into());
    }
    if which("qemu-system-x86_64").is_none() {
        return Some("needs qemu-system-x86_64 (apt-get install qemu-system-x86)".into());
    }
    if !guest_kernel().is_file() {
        return Some(format!(
            "needs the guest kernel {} (images/kernel/build.sh)",
            guest_kernel().display()
        ));
    }
    if !duet_init().is_file() {
        return Some(format!(
            "needs {} (cargo build --workspace)",
            duet_init().display()
        ));
    }
    None
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// Runs all cases in one testbed boot (once per test binary).
fn cases() -> &'static Result<BTreeMap<String, Case>, String> {
    static CASES: OnceLock<Result<BTreeMap<String, Case>, String>> = OnceLock::new();
    CASES.get_or_init(|| {
        let out = std::process::Command::new(repo().join("tests/testbed/run"))
            .args(["--timeout", "900", "--file"])
            .arg(repo().join("tests/testbed/vm-cases.sh"))
            .args(["--", "sh", "/testbed/files/vm-cases.sh"])
            .env("DUET_BIN", duet_bin())
            .env("DUET_INIT", duet_init())
            .output()
            .map_err(|e| format!("cannot start tests/testbed/run: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "testbed output:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.code() == Some(125) {
            return Err(format!(
                "the testbed itself failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(parse(&text))
    })
}

fn parse(text: &str) -> BTreeMap<String, Case> {
    let mut cases = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("=== BEGIN ") {
            current = Some((name.to_string(), String::new()));
        } else if let Some(rest) = line.strip_prefix("=== END ") {
            if let (Some((name, output)), Some((_, rc))) = (current.take(), rest.split_once(" rc="))
            {
                cases.insert(
                    name,
                    Case {
                        output,
                        rc: rc.trim().parse().unwrap_or(-1),
                    },
                );
            }
        } else if let Some((_, out)) = current.as_mut() {
            out.push_str(line);
            out.push('\n');
        }
    }
    cases
}

/// The case `name`, or None when the test must skip.
fn case(test: &str, name: &str) -> Option<&'static Case> {
    if let Some(why) = missing() {
        skip(test, &format!("the nested-KVM testbed {why}"));
        return None;
    }
    match cases() {
        Ok(c) => Some(
            c.get(name)
                .unwrap_or_else(|| panic!("case {name} did not run; cases: {:?}", c.keys())),
        ),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn vm_echo() {
    let Some(c) = case("vm_echo", "echo") else {
        return;
    };
    assert_eq!((c.rc, c.output.as_str()), (0, "hi\n"));
}

#[test]
fn vm_exit_status_propagates() {
    let Some(c) = case("vm_exit_status_propagates", "exit7") else {
        return;
    };
    assert_eq!(c.rc, 7, "{}", c.output);
}

#[test]
fn vm_runs_its_own_kernel() {
    let Some(c) = case("vm_runs_its_own_kernel", "uname") else {
        return;
    };
    let outer = &cases().as_ref().unwrap()["outer_uname"];
    assert_eq!(c.rc, 0, "{}", c.output);
    let guest = c.output.trim();
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(!guest.is_empty());
    assert_ne!(guest, outer.output.trim(), "guest kernel = testbed kernel");
    assert_ne!(guest, host.trim(), "guest kernel = host kernel");
}

#[test]
fn vm_env_workdir_hostname_from_spec() {
    let Some(c) = case("vm_env_workdir_hostname_from_spec", "envwd") else {
        return;
    };
    assert_eq!((c.rc, c.output.as_str()), (0, "hello there\n/tmp\nenvwd\n"));
}

#[test]
fn vm_two_vcpus() {
    let Some(c) = case("vm_two_vcpus", "vcpus2") else {
        return;
    };
    assert_eq!((c.rc, c.output.trim()), (0, "2"));
}

#[test]
fn vm_memory_size() {
    let Some(c) = case("vm_memory_size", "mem256") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    let kb: u64 = c.output.split_whitespace().nth(1).unwrap().parse().unwrap();
    // The kernel keeps some of the 256 MiB for itself.
    assert!((200 * 1024..=256 * 1024).contains(&kb), "MemTotal {kb} kB");
}

#[test]
fn vm_missing_command_is_127() {
    let Some(c) = case("vm_missing_command_is_127", "missing_cmd") else {
        return;
    };
    assert_eq!(c.rc, 127, "{}", c.output);
    assert!(c.output.contains("/no/such/program"), "{}", c.output);
}

#[test]
fn vm_timings_name_vm_phases() {
    let Some(c) = case("vm_timings_name_vm_phases", "timings") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    for phase in [
        "vm_created",
        "kernel_loaded",
        "vcpus_started",
        "ready",
        "exited",
    ] {
        assert!(c.output.contains(phase), "no {phase}:\n{}", c.output);
    }
}

#[test]
fn vm_timeout_stops_a_hung_guest() {
    let Some(c) = case("vm_timeout_stops_a_hung_guest", "timeout") else {
        return;
    };
    assert_eq!(c.rc, 137, "{}", c.output);
    assert!(c.output.contains("timeout"), "{}", c.output);
}

#[test]
fn vm_guest_panic_is_an_error_with_console_lines() {
    let Some(c) = case("vm_guest_panic_is_an_error_with_console_lines", "panic") else {
        return;
    };
    assert_ne!(c.rc, 0, "{}", c.output);
    assert!(
        c.output.contains("Kernel panic"),
        "the last console lines should show the panic:\n{}",
        c.output
    );
}

#[test]
fn vm_kernel_log_only_with_console() {
    let Some(quiet) = case("vm_kernel_log_only_with_console", "quiet") else {
        return;
    };
    assert_eq!((quiet.rc, quiet.output.as_str()), (0, "only-this\n"));
    let c = &cases().as_ref().unwrap()["console"];
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(
        c.output.contains("Linux version"),
        "--console shows the kernel log:\n{}",
        c.output
    );
    assert!(c.output.contains("after-boot"), "{}", c.output);
}

#[test]
fn vm_runs_leave_no_instances() {
    let Some(c) = case("vm_runs_leave_no_instances", "leftovers") else {
        return;
    };
    assert_eq!(c.output.trim(), "0");
}

// --- issue 4: the guest's root on virtio-blk disks --------------------------

/// The value of counter `name` in a `--timings` table.
fn counter(output: &str, name: &str) -> Option<u64> {
    output.lines().find_map(|l| {
        l.trim()
            .strip_prefix(name)?
            .strip_prefix(": ")?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn vm_disk_root_is_an_overlay_of_layer_disks() {
    let Some(c) = case("vm_disk_root_is_an_overlay_of_layer_disks", "disk_first") else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    assert!(c.output.contains("disk-root-ok"), "{}", c.output);
    let root = c
        .output
        .lines()
        .find(|l| l.starts_with("overlay / overlay"))
        .unwrap_or_else(|| panic!("no overlay root in /proc/mounts:\n{}", c.output));
    assert!(
        root.contains("/duet/layers/0,upperdir=/duet/scratch/upper,workdir=/duet/scratch/work"),
        "{root}"
    );
    // One disk per layer plus the scratch disk.
    let built = counter(&c.output, "layer_images_built").expect("layer_images_built");
    assert_eq!(
        counter(&c.output, "rootfs_disks"),
        Some(built + 1),
        "{}",
        c.output
    );
}

#[test]
fn vm_layer_image_is_built_once_and_reused() {
    let Some(first) = case("vm_layer_image_is_built_once_and_reused", "disk_first") else {
        return;
    };
    let second = &cases().as_ref().unwrap()["disk_second"];
    assert_eq!(second.rc, 0, "{}", second.output);
    let built = counter(&first.output, "layer_images_built");
    assert!(built.is_some_and(|n| n >= 1), "{}", first.output);
    assert_eq!(
        counter(&second.output, "layer_images_built"),
        Some(0),
        "{}",
        second.output
    );
}

#[test]
fn vm_writes_land_on_the_scratch_disk_not_the_layer() {
    let Some(c) = case(
        "vm_writes_land_on_the_scratch_disk_not_the_layer",
        "disk_keep",
    ) else {
        return;
    };
    assert_eq!(c.rc, 0, "{}", c.output);
    for want in ["landed-marker-42", "layer-unchanged", "scratch-has-it"] {
        assert!(c.output.contains(want), "no {want}:\n{}", c.output);
    }
    assert!(!c.output.contains("layer-has-it"), "{}", c.output);
    // The 1 GiB scratch disk costs its ext4 metadata plus what was written.
    let kib: u64 = c
        .output
        .lines()
        .find_map(|l| l.strip_prefix("scratch allocated "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no allocation line:\n{}", c.output));
    assert!(kib < 8 * 1024, "scratch disk allocates {kib} KiB");
}

#[test]
fn vm_two_vms_share_one_layer_file_and_see_pristine_data() {
    let Some(c) = case(
        "vm_two_vms_share_one_layer_file_and_see_pristine_data",
        "disk_two_vms",
    ) else {
        return;
    };
    // Per layer file: the inode each VM's duet holds open.
    let mut by_path: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for l in c.output.lines() {
        if let Some(rest) = l.strip_prefix("layer-inode ") {
            let w: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!(w.len(), 3, "{l}");
            by_path.entry(w[1]).or_default().push((w[0], w[2]));
        }
    }
    assert!(!by_path.is_empty(), "no layer disks open:\n{}", c.output);
    for (path, holders) in &by_path {
        assert_eq!(
            holders.len(),
            2,
            "{path} should be open in both VMs:\n{}",
            c.output
        );
        assert_ne!(holders[0].0, holders[1].0, "two different duet processes");
        assert_eq!(holders[0].1, holders[1].1, "{path}: different inodes");
    }
    assert!(
        c.output.contains("a rc=0") && c.output.contains("a: 1"),
        "{}",
        c.output
    );
    // B sees no trace of A's write, and the image's own /etc/hosts.
    assert!(c.output.contains("b rc=0"), "{}", c.output);
    let b: Vec<&str> = c
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("b: "))
        .collect();
    assert_eq!(b.len(), 2, "{}", c.output);
    assert_eq!(b[0], "0", "B saw A's write:\n{}", c.output);
    assert_ne!(
        b[1], "0",
        "B's /etc/hosts lost its localhost lines:\n{}",
        c.output
    );
}

#[test]
fn vm_disk_boot_is_within_10_percent_of_initramfs_boot() {
    let Some(c) = case(
        "vm_disk_boot_is_within_10_percent_of_initramfs_boot",
        "boot_compare",
    ) else {
        return;
    };
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for l in c.output.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 3 && w[0] == "boot" {
            if let Ok(ms) = w[2].parse::<f64>() {
                times.entry(w[1]).or_default().push(ms);
            }
        }
    }
    let median = |mode: &str| {
        let mut v = times.get(mode).cloned().unwrap_or_default();
        assert!(v.len() >= 3, "too few {mode} boots:\n{}", c.output);
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (disks, initramfs) = (median("disks"), median("initramfs"));
    eprintln!(
        "boot to ready: disks {disks:.1} ms, initramfs {initramfs:.1} ms, ratio {:.3}",
        disks / initramfs
    );
    assert!(
        disks <= initramfs * 1.1,
        "disks {disks:.1} ms vs initramfs {initramfs:.1} ms:\n{}",
        c.output
    );
}
