//! duet-probe: what isolation looks like from inside.
//!
//! [`collect`] gathers facts (kernel, processes, mounts, capabilities, cgroup,
//! id maps, CPUs, memory) and makes the attempts in [`attempt`] that should
//! fail when isolated. Nothing it does changes the host, so the same binary
//! runs on the host, in a container and in a VM, and duet-bench compares the
//! three [`ProbeReport`]s side by side.

pub mod attempt;
pub mod parse;

use parse::{CgroupEntry, IdMapEntry};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Current [`ProbeReport::schema`]; bumped on incompatible change.
pub const PROBE_SCHEMA: u32 = 1;

/// Environment variable naming the canary file (same as `--canary`).
pub const ENV_CANARY: &str = "DUET_PROBE_CANARY";
/// Environment variable holding the canary's token (same as `--token`).
pub const ENV_TOKEN: &str = "DUET_PROBE_TOKEN";
/// Environment variable holding a host PID (same as `--host-pid`).
pub const ENV_HOST_PID: &str = "DUET_PROBE_HOST_PID";
/// Environment variable holding that PID's start time in ticks (same as `--host-pid-start`).
pub const ENV_HOST_PID_START: &str = "DUET_PROBE_HOST_PID_START";

/// What the caller (the host side) tells the probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeInput {
    /// Path of the canary file as the host created it.
    pub canary_path: Option<PathBuf>,
    /// Random token the canary holds.
    pub canary_token: Option<String>,
    /// A PID on the host, with its start time (`/proc/<pid>/stat` field 22).
    pub host_pid: Option<(u32, u64)>,
}

/// Kernel identity as seen from inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFacts {
    /// `uname -r`.
    pub release: String,
    /// `uname -v` (build number and date: differs between two kernels of one release).
    pub version: String,
    /// `/proc/sys/kernel/random/boot_id`: identical only within one running kernel.
    pub boot_id: Option<String>,
}

/// Effective capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `CapEff` as hex, e.g. `000001fffeffffff`.
    pub effective_hex: Option<String>,
    /// Names of the effective capabilities.
    pub effective: Vec<String>,
}

/// Result of the canary search.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryResult {
    /// Whether a canary path and token were given.
    pub requested: bool,
    /// Paths where a file holding the token was found.
    pub found_at: Vec<String>,
    /// Directory entries looked at (the search is bounded).
    pub entries_examined: u32,
}

/// Whether a given host process is visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPidResult {
    /// The host PID asked about.
    pub pid: u32,
    /// `/proc/<pid>` exists with the same start time: the host process is visible.
    pub visible: bool,
    /// `/proc/<pid>` exists but is another process (a different start time).
    pub other_process_with_same_pid: bool,
}

/// Everything the probe prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Schema version ([`PROBE_SCHEMA`]).
    pub schema: u32,
    /// Kernel identity.
    pub kernel: KernelFacts,
    /// `uname -n`.
    pub hostname: String,
    /// `/proc/1/comm`.
    pub pid1_name: Option<String>,
    /// Numeric entries in `/proc`.
    pub visible_processes: u32,
    /// Interfaces in `/proc/net/dev`.
    pub network_interfaces: Vec<String>,
    /// Lines of `/proc/self/mountinfo`.
    pub mount_count: u32,
    /// File system type of `/`.
    pub root_fs_type: Option<String>,
    /// `/proc/self/ns/*` link targets, e.g. `pid` -> `pid:[4026531836]`.
    pub namespaces: BTreeMap<String, String>,
    /// Effective capabilities.
    pub capabilities: Capabilities,
    /// `Seccomp` from status: 0 disabled, 1 strict, 2 filter.
    pub seccomp_mode: Option<u32>,
    /// `NoNewPrivs` from status.
    pub no_new_privs: Option<bool>,
    /// `/proc/self/cgroup`.
    pub cgroups: Vec<CgroupEntry>,
    /// `/proc/self/uid_map`.
    pub uid_map: Vec<IdMapEntry>,
    /// `/proc/self/gid_map`.
    pub gid_map: Vec<IdMapEntry>,
    /// Online CPUs (`sysconf(_SC_NPROCESSORS_ONLN)`).
    pub cpus_online: u32,
    /// CPUs in this process's affinity mask.
    pub cpus_allowed: u32,
    /// `MemTotal` from `/proc/meminfo`, KiB.
    pub mem_total_kib: Option<u64>,
    /// Canary search.
    pub canary: CanaryResult,
    /// Host PID visibility, if a host PID was given.
    pub host_pid: Option<HostPidResult>,
    /// Attempts that should fail when isolated.
    pub attempts: attempt::Attempts,
    /// Facts that could not be read, as `path: error`.
    pub unreadable: Vec<String>,
}

impl ProbeReport {
    /// Pretty JSON, as the binary prints it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("ProbeReport serializes")
    }
}

/// Errors of the probe's command line.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// An argument was not understood.
    #[error("argument `{0}`: unknown (expected --canary PATH, --token T, --host-pid N, --host-pid-start TICKS, --compact)")]
    UnknownArgument(String),
    /// An option lacked its value.
    #[error("argument `{0}`: missing value")]
    MissingValue(String),
    /// A numeric value did not parse.
    #[error("{what} `{value}`: not a number")]
    NotANumber {
        /// Option or variable name.
        what: String,
        /// The text given.
        value: String,
    },
    /// `--host-pid` without `--host-pid-start` or the other way round.
    #[error(
        "--host-pid and --host-pid-start (or {ENV_HOST_PID} and {ENV_HOST_PID_START}) go together"
    )]
    HostPidIncomplete,
}

/// Options of the binary: the [`ProbeInput`] plus output format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandLine {
    /// What to probe for.
    pub input: ProbeInput,
    /// One-line JSON instead of pretty.
    pub compact: bool,
}

fn number<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, ProbeError> {
    value.parse().map_err(|_| ProbeError::NotANumber {
        what: what.to_string(),
        value: value.to_string(),
    })
}

/// Parses arguments (after the program name), with environment variables as defaults.
pub fn parse_command_line(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<CommandLine, ProbeError> {
    let mut canary = env(ENV_CANARY);
    let mut token = env(ENV_TOKEN);
    let mut pid = env(ENV_HOST_PID);
    let mut start = env(ENV_HOST_PID_START);
    let mut compact = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| ProbeError::MissingValue(a.clone()))
        };
        match a.as_str() {
            "--canary" => canary = Some(value()?),
            "--token" => token = Some(value()?),
            "--host-pid" => pid = Some(value()?),
            "--host-pid-start" => start = Some(value()?),
            "--compact" => compact = true,
            other => return Err(ProbeError::UnknownArgument(other.to_string())),
        }
    }
    let host_pid = match (pid, start) {
        (Some(p), Some(s)) => Some((number("--host-pid", &p)?, number("--host-pid-start", &s)?)),
        (None, None) => None,
        _ => return Err(ProbeError::HostPidIncomplete),
    };
    Ok(CommandLine {
        input: ProbeInput {
            canary_path: canary.map(PathBuf::from),
            canary_token: token,
            host_pid,
        },
        compact,
    })
}

/// Reads a small text file, recording failures in `unreadable`.
fn read(path: &str, unreadable: &mut Vec<String>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) => {
            unreadable.push(format!("{path}: {e}"));
            None
        }
    }
}

fn uname() -> (String, String, String) {
    // SAFETY: utsname is plain old data; zeroed is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct we own.
    unsafe { libc::uname(&mut u) };
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&u.release), field(&u.version), field(&u.nodename))
}

fn cpus_allowed() -> u32 {
    // SAFETY: cpu_set_t is plain old data; zeroed is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity fills the set we own, of the size we pass.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: CPU_COUNT reads the set we own.
    unsafe { libc::CPU_COUNT(&set) as u32 }
}

fn count_processes() -> u32 {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count() as u32
        })
        .unwrap_or(0)
}

fn namespaces() -> BTreeMap<String, String> {
    ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"]
        .iter()
        .filter_map(|ns| {
            let target = std::fs::read_link(format!("/proc/self/ns/{ns}")).ok()?;
            Some((ns.to_string(), target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Longest walk of the canary search, in directory entries.
pub const CANARY_MAX_ENTRIES: u32 = 20_000;
/// Deepest directory level the canary search descends to.
pub const CANARY_MAX_DEPTH: u32 = 4;

fn holds_token(path: &Path, token: &str) -> bool {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut buf = Vec::new();
    if f.take(4096).read_to_end(&mut buf).is_err() {
        return false;
    }
    String::from_utf8_lossy(&buf).contains(token)
}

fn walk(dir: &Path, name: &std::ffi::OsStr, token: &str, depth: u32, res: &mut CanaryResult) {
    if depth > CANARY_MAX_DEPTH || res.entries_examined >= CANARY_MAX_ENTRIES {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        res.entries_examined += 1;
        if res.entries_examined >= CANARY_MAX_ENTRIES {
            return;
        }
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if ["/proc", "/sys", "/dev"]
                .iter()
                .any(|p| path == Path::new(p))
            {
                continue;
            }
            walk(&path, name, token, depth + 1, res);
        } else if ft.is_file() && e.file_name() == name && holds_token(&path, token) {
            let s = path.to_string_lossy().into_owned();
            if !res.found_at.contains(&s) {
                res.found_at.push(s);
            }
        }
    }
}

/// Looks for the canary: at its path, under `/host`, `/mnt`, `/proc/1/root`
/// and `/proc/<host pid>/root`, then by name in a bounded walk (depth
/// [`CANARY_MAX_DEPTH`], [`CANARY_MAX_ENTRIES`] entries) of `/`, `/host`, `/mnt`.
pub fn search_canary(input: &ProbeInput) -> CanaryResult {
    let (Some(path), Some(token)) = (&input.canary_path, &input.canary_token) else {
        return CanaryResult::default();
    };
    let mut res = CanaryResult {
        requested: true,
        ..CanaryResult::default()
    };
    let rel = path.strip_prefix("/").unwrap_or(path);
    let mut direct = vec![path.clone()];
    let mut prefixes = vec![
        "/host".to_string(),
        "/mnt".to_string(),
        "/proc/1/root".to_string(),
    ];
    if let Some((pid, _)) = input.host_pid {
        prefixes.push(format!("/proc/{pid}/root"));
    }
    direct.extend(prefixes.iter().map(|p| Path::new(p).join(rel)));
    for p in direct {
        res.entries_examined += 1;
        if p.is_file() && holds_token(&p, token) {
            let s = p.to_string_lossy().into_owned();
            if !res.found_at.contains(&s) {
                res.found_at.push(s);
            }
        }
    }
    if let Some(name) = path.file_name() {
        for root in ["/", "/host", "/mnt"] {
            walk(Path::new(root), name, token, 1, &mut res);
        }
    }
    res
}

/// Whether host PID `pid` (started at `start` ticks) is visible here.
pub fn check_host_pid(pid: u32, start: u64) -> HostPidResult {
    let here = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse::stat_starttime(&s));
    HostPidResult {
        pid,
        visible: here == Some(start),
        other_process_with_same_pid: matches!(here, Some(t) if t != start),
    }
}

/// Start time (`/proc/<pid>/stat` field 22, ticks after boot) of a process, for `--host-pid-start`.
pub fn pid_start_ticks(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse::stat_starttime(&s))
}

/// Gathers every fact and makes every attempt.
pub fn collect(input: &ProbeInput) -> ProbeReport {
    let mut unreadable = Vec::new();
    let (release, version, hostname) = uname();
    let boot_id =
        read("/proc/sys/kernel/random/boot_id", &mut unreadable).map(|s| s.trim().to_string());
    let pid1_name = read("/proc/1/comm", &mut unreadable).map(|s| s.trim().to_string());
    let status = read("/proc/self/status", &mut unreadable)
        .map(|s| parse::status(&s))
        .unwrap_or_default();
    let mounts = read("/proc/self/mountinfo", &mut unreadable)
        .map(|s| parse::mountinfo(&s))
        .unwrap_or_default();
    let root_fs_type = mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == "/")
        .map(|m| m.fs_type.clone());
    let network_interfaces = read("/proc/net/dev", &mut unreadable)
        .map(|s| parse::net_dev(&s))
        .unwrap_or_default();
    let cgroups = read("/proc/self/cgroup", &mut unreadable)
        .map(|s| parse::cgroup(&s))
        .unwrap_or_default();
    let uid_map = read("/proc/self/uid_map", &mut unreadable)
        .map(|s| parse::id_map(&s))
        .unwrap_or_default();
    let gid_map = read("/proc/self/gid_map", &mut unreadable)
        .map(|s| parse::id_map(&s))
        .unwrap_or_default();
    let mem_total_kib =
        read("/proc/meminfo", &mut unreadable).and_then(|s| parse::meminfo_kib(&s, "MemTotal"));
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    ProbeReport {
        schema: PROBE_SCHEMA,
        kernel: KernelFacts {
            release,
            version,
            boot_id,
        },
        hostname,
        pid1_name,
        visible_processes: count_processes(),
        network_interfaces,
        mount_count: mounts.len() as u32,
        root_fs_type,
        namespaces: namespaces(),
        capabilities: Capabilities {
            effective_hex: status.cap_eff.map(|c| format!("{c:016x}")),
            effective: status.cap_eff.map(parse::cap_names).unwrap_or_default(),
        },
        seccomp_mode: status.seccomp,
        no_new_privs: status.no_new_privs,
        cgroups,
        uid_map,
        gid_map,
        cpus_online: online.max(0) as u32,
        cpus_allowed: cpus_allowed(),
        mem_total_kib,
        canary: search_canary(input),
        host_pid: input.host_pid.map(|(p, s)| check_host_pid(p, s)),
        attempts: attempt::all(),
        unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_line_takes_args_over_env() {
        let env = |k: &str| match k {
            ENV_CANARY => Some("/env/path".to_string()),
            ENV_TOKEN => Some("envtok".to_string()),
            _ => None,
        };
        let c = parse_command_line(&args(&["--token", "argtok", "--compact"]), env).unwrap();
        assert_eq!(c.input.canary_path, Some(PathBuf::from("/env/path")));
        assert_eq!(c.input.canary_token.as_deref(), Some("argtok"));
        assert!(c.compact);
        let c = parse_command_line(
            &args(&["--host-pid", "12", "--host-pid-start", "345"]),
            |_| None,
        )
        .unwrap();
        assert_eq!(c.input.host_pid, Some((12, 345)));
        assert!(matches!(
            parse_command_line(&args(&["--host-pid", "12"]), |_| None),
            Err(ProbeError::HostPidIncomplete)
        ));
        assert!(matches!(
            parse_command_line(&args(&["--host-pid", "x", "--host-pid-start", "1"]), |_| {
                None
            }),
            Err(ProbeError::NotANumber { .. })
        ));
        assert!(matches!(
            parse_command_line(&args(&["--token"]), |_| None),
            Err(ProbeError::MissingValue(_))
        ));
        assert!(matches!(
            parse_command_line(&args(&["--bogus"]), |_| None),
            Err(ProbeError::UnknownArgument(_))
        ));
    }

    #[test]
    fn canary_found_at_its_path_and_not_with_wrong_token() {
        let dir = std::env::temp_dir().join(format!("duet-probe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("canary-file");
        std::fs::write(&path, "token-abc123\n").unwrap();
        let mut input = ProbeInput {
            canary_path: Some(path.clone()),
            canary_token: Some("token-abc123".into()),
            host_pid: None,
        };
        let r = search_canary(&input);
        assert!(r.requested);
        assert!(
            r.found_at.contains(&path.to_string_lossy().into_owned()),
            "{r:?}"
        );
        assert!(r.entries_examined <= CANARY_MAX_ENTRIES + 8);
        input.canary_token = Some("other-token".into());
        let r = search_canary(&input);
        assert!(r.found_at.is_empty(), "{r:?}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!search_canary(&ProbeInput::default()).requested);
    }

    #[test]
    fn own_pid_is_visible_and_wrong_start_is_not() {
        let me = std::process::id();
        let start = pid_start_ticks(me).unwrap();
        let r = check_host_pid(me, start);
        assert!(r.visible && !r.other_process_with_same_pid);
        let r = check_host_pid(me, start + 1);
        assert!(!r.visible && r.other_process_with_same_pid);
    }

    #[test]
    fn collect_on_this_host_is_consistent() {
        let me = std::process::id();
        let r = collect(&ProbeInput {
            host_pid: Some((me, pid_start_ticks(me).unwrap())),
            ..ProbeInput::default()
        });
        assert_eq!(r.schema, PROBE_SCHEMA);
        assert!(!r.kernel.release.is_empty());
        assert!(r.visible_processes >= 1);
        assert!(r.mount_count >= 1);
        assert!(r.cpus_online >= 1 && r.cpus_allowed >= 1);
        assert!(r.mem_total_kib.unwrap() > 0);
        assert!(r.namespaces.contains_key("pid"));
        assert!(r.host_pid.as_ref().unwrap().visible);
        let back: ProbeReport = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }
}
