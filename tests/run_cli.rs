//! `duet run` options through the real binary: `--isolation` over the spec's
//! `isolation`, and the container's CPU quota really holding a busy workload
//! to its `vcpus` (needs root).

mod common;
use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn spec(env: &Env, name: &str, isolation: &str) -> String {
    let p = env.root().join(format!("{isolation}.toml"));
    std::fs::write(
        &p,
        format!(
            "name = \"{name}\"\nimage = \"busybox\"\ncommand = [\"sh\", \"-c\", \"echo kernel $(uname -r)\"]\nisolation = \"{isolation}\"\n"
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

/// The spec says vm, `--isolation container` wins (and the reverse): the
/// container runs on the host kernel; the VM path is recognised by its
/// kernel lookup (a missing DUET_KERNEL is named), so no guest is needed.
#[test]
fn isolation_flag_overrides_the_spec() {
    if skip_unless_root("isolation_flag_overrides_the_spec") {
        return;
    }
    let env = Env::new();
    let name = unique("iso");
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let vm_spec = spec(&env, &name, "vm");
    let ct_spec = spec(&env, &name, "container");
    let no_kernel = "/nonexistent/duet-test-vmlinux";

    // Spec vm, flag container: a container, on the host's kernel.
    let o = env
        .cmd(&[
            "run",
            "--isolation",
            "container",
            "--report",
            "json",
            "--spec",
            &vm_spec,
        ])
        .env("DUET_KERNEL", no_kernel)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!("kernel {}\n", host_kernel.trim())),
        "{out}"
    );
    let json = &out[out.find('{').unwrap()..];
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(report["isolation"], "container", "{json}");

    // The spec alone (vm) is honoured: it goes for the guest kernel.
    let o = env
        .cmd(&["run", "--spec", &vm_spec])
        .env("DUET_KERNEL", no_kernel)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains(no_kernel), "{}", stderr(&o));

    // Spec container, flag vm: the VM path, not a container.
    let o = env
        .cmd(&["run", "--isolation", "vm", "--spec", &ct_spec])
        .env("DUET_KERNEL", no_kernel)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains(no_kernel), "{}", stderr(&o));
    assert!(!stdout(&o).contains("kernel"), "{}", stdout(&o));
    env.assert_clean(&name);
}

/// Processes below `pid` (children, grandchildren, ...).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(pp) = stat_fields(p).and_then(|f| f.get(1).and_then(|s| s.parse().ok())) {
            parent_of.push((p, pp));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let me = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == me)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Fields of /proc/PID/stat after the command name: [state, ppid, ...].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of `pids`, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| stat_fields(p))
        // utime and stime are fields 14 and 15 of stat; index 11 and 12 here.
        .map(|f| f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap())
        .sum()
}

/// The directory of `pid`'s cgroup with the CPU controller (v1 `cpu`, or v2).
fn cpu_cgroup_dir(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let path = path.trim_start_matches('/');
        let candidates: Vec<PathBuf> = if ctrls.is_empty() {
            vec![
                PathBuf::from("/sys/fs/cgroup").join(path),
                PathBuf::from("/sys/fs/cgroup/unified").join(path),
            ]
        } else if ctrls.split(',').any(|c| c == "cpu") {
            vec![
                PathBuf::from("/sys/fs/cgroup").join(ctrls).join(path),
                PathBuf::from("/sys/fs/cgroup/cpu").join(path),
            ]
        } else {
            continue;
        };
        if let Some(d) = candidates
            .into_iter()
            .find(|d| d.join("cpu.max").is_file() || d.join("cpu.cfs_quota_us").is_file())
        {
            return Some(d);
        }
    }
    None
}

/// A counter (`nr_periods`, `nr_throttled`) from a cgroup's cpu.stat (v1 and v2 both have them).
fn cpu_stat(dir: &std::path::Path, key: &str) -> u64 {
    std::fs::read_to_string(dir.join("cpu.stat"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {}/cpu.stat", dir.display()))
}

/// Three busy loops under `--vcpus 1` get at most about one CPU, and the
/// kernel reports throttling: the quota is real, not just written. A host too
/// busy to give the container nearly one CPU cannot show throttling (the
/// container then gets less than its quota anyway), so several windows are
/// tried; if none gets there the test says so (and fails under strict).
#[test]
fn cpu_quota_holds_busy_loops_to_one_cpu() {
    let test = "cpu_quota_holds_busy_loops_to_one_cpu";
    if skip_unless_root(test) {
        return;
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if ncpu < 2 && skip(test, "needs 2 CPUs to show a 1-CPU quota") {
        return;
    }
    let env = Env::new();
    let name = unique("cpu");
    let loops = ncpu + 1;
    let script =
        format!("for i in $(seq {loops}); do (while :; do :; done) & done; sleep 30; kill -9 -1");
    let mut child = env
        .cmd(&[
            "run", "--name", &name, "--vcpus", "1", "busybox", "--", "sh", "-c", &script,
        ])
        .spawn()
        .unwrap();
    // Wait for the loops: `loops` busy descendants besides sh and sleep.
    let t = Instant::now();
    let (pids, dir) = loop {
        let pids = descendants(child.id());
        let dir = pids.iter().find_map(|&p| cpu_cgroup_dir(p));
        if let (true, Some(dir)) = (pids.len() >= loops + 2, dir) {
            break (pids, dir);
        }
        assert!(t.elapsed() < Duration::from_secs(15), "loops never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The quota as written: one period's worth of runtime per period.
    let quota = match std::fs::read_to_string(dir.join("cpu.max")) {
        Ok(v2) => v2.trim().to_string(),
        Err(_) => ["cpu.cfs_quota_us", "cpu.cfs_period_us"]
            .map(|f| {
                std::fs::read_to_string(dir.join(f))
                    .unwrap()
                    .trim()
                    .to_string()
            })
            .join(" "),
    };
    assert_eq!(quota, "100000 100000", "{}", dir.display());
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut conclusive = None;
    let mut windows = Vec::new();
    let periods0 = cpu_stat(&dir, "nr_periods");
    for _ in 0..6 {
        let (t0, c0) = (Instant::now(), cpu_ticks(&pids));
        let th0 = cpu_stat(&dir, "nr_throttled");
        std::thread::sleep(Duration::from_millis(2000));
        let (c1, th1) = (cpu_ticks(&pids), cpu_stat(&dir, "nr_throttled"));
        let wall = t0.elapsed().as_secs_f64();
        let cpus = (c1 - c0) as f64 / hz / wall;
        windows.push((cpus, th1 - th0));
        // Generous: tick accounting and the quota period blur the edges.
        assert!(
            cpus <= 1.25,
            "{loops} busy loops used {cpus:.2} CPUs under a 1-CPU quota ({})",
            dir.display()
        );
        if cpus >= 0.9 {
            conclusive = Some((cpus, th1 - th0));
            break;
        }
    }
    // Bandwidth control is on for the loops' cgroup: the kernel counts its periods.
    let periods = cpu_stat(&dir, "nr_periods") - periods0;
    // SAFETY: signalling the duet we spawned; it stops its container.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    env.assert_clean(&name);
    eprintln!("CPUs used, throttled periods per window: {windows:?}; {periods} quota periods");
    assert!(periods > 0, "no CFS bandwidth periods in {}", dir.display());
    match conclusive {
        Some((cpus, throttled)) => assert!(
            throttled > 0,
            "{cpus:.2} CPUs used and never throttled: no quota in {}",
            dir.display()
        ),
        None => {
            skip(
                test,
                &format!("the host is too busy to tell: the container got {windows:?} (CPUs, throttled periods)"),
            );
        }
    }
}
