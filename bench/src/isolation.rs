//! `duet bench isolation`: the probe's facts from the host, a container and a
//! VM, side by side, each row marked shared or isolated with a one-line why.
//!
//! The host side creates a [`Canary`] (a file holding a random token) and
//! passes its path, token and the harness's own PID + start time to every
//! probe; the backends only have to run `duet-probe` with those arguments and
//! hand back its stdout.

use duet_probe::attempt::{AttemptOutcome, AttemptResult};
use duet_probe::ProbeReport;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors of the isolation scenario.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// The canary file could not be written.
    #[error("writing canary {path}")]
    Canary {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The probe could not be run.
    #[error("running probe {program}")]
    Spawn {
        /// The probe binary.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The probe's output was not a ProbeReport.
    #[error("{origin}: probe output is not a ProbeReport")]
    Parse {
        /// Where the output came from (`host`, `container`, ...).
        origin: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// A host file holding a random token; removed on drop.
#[derive(Debug)]
pub struct Canary {
    /// Path on the host.
    pub path: PathBuf,
    /// The token.
    pub token: String,
}

impl Canary {
    /// Creates `dir/duet-canary-<token prefix>` holding a fresh 128-bit token.
    pub fn create(dir: &Path) -> Result<Canary, IsolationError> {
        let mut bytes = [0u8; 16];
        let token = match std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        {
            Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            Err(source) => {
                return Err(IsolationError::Canary {
                    path: "/dev/urandom".to_string(),
                    source,
                })
            }
        };
        let path = dir.join(format!("duet-canary-{}", &token[..8]));
        std::fs::write(&path, format!("{token}\n")).map_err(|source| IsolationError::Canary {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Canary { path, token })
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Arguments for `duet-probe`: the canary and this process's PID + start time.
pub fn probe_args(canary: &Canary) -> Vec<String> {
    let me = std::process::id();
    let mut a = vec![
        "--canary".to_string(),
        canary.path.display().to_string(),
        "--token".to_string(),
        canary.token.clone(),
    ];
    if let Some(start) = duet_probe::pid_start_ticks(me) {
        a.extend([
            "--host-pid".to_string(),
            me.to_string(),
            "--host-pid-start".to_string(),
            start.to_string(),
        ]);
    }
    a
}

/// Parses a probe's stdout; `origin` names it in errors.
pub fn parse_probe(stdout: &[u8], origin: &str) -> Result<ProbeReport, IsolationError> {
    let s = String::from_utf8_lossy(stdout);
    let start = s.find('{').unwrap_or(0);
    serde_json::from_str(s[start..].trim()).map_err(|source| IsolationError::Parse {
        origin: origin.to_string(),
        source,
    })
}

/// Runs the probe binary directly on the host.
pub fn probe_on_host(probe: &Path, args: &[String]) -> Result<ProbeReport, IsolationError> {
    let out = Command::new(probe)
        .args(args)
        .output()
        .map_err(|source| IsolationError::Spawn {
            program: probe.display().to_string(),
            source,
        })?;
    parse_probe(&out.stdout, "host")
}

/// A row's mark for one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The column shares this with the host.
    Shared,
    /// The column has its own, or is refused.
    Isolated,
    /// The fact says nothing either way here.
    NotApplicable,
}

/// One column's value in a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    /// What the probe saw.
    pub value: String,
    /// Shared or isolated (host column: none).
    pub verdict: Option<Verdict>,
    /// One line: why.
    pub why: String,
}

/// One fact across columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationRow {
    /// The fact, e.g. `kernel`, `reboot(2)`.
    pub fact: String,
    /// One cell per column, host first.
    pub cells: Vec<Cell>,
}

impl IsolationRow {
    /// True if the non-host columns' verdicts differ from each other.
    pub fn differs(&self) -> bool {
        let v: Vec<_> = self.cells.iter().skip(1).map(|c| c.verdict).collect();
        v.windows(2).any(|w| w[0] != w[1])
    }
}

/// The side-by-side table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationTable {
    /// Column labels, host first.
    pub columns: Vec<String>,
    /// Rows.
    pub rows: Vec<IsolationRow>,
    /// Columns that could not be probed, with the reason.
    pub missing: Vec<(String, String)>,
}

/// Context of one column, relative to the host.
struct Rel<'a> {
    host: &'a ProbeReport,
    me: &'a ProbeReport,
}

impl Rel<'_> {
    fn same_kernel(&self) -> bool {
        match (&self.host.kernel.boot_id, &self.me.kernel.boot_id) {
            (Some(a), Some(b)) => a == b,
            _ => {
                self.host.kernel.release == self.me.kernel.release
                    && self.host.kernel.version == self.me.kernel.version
            }
        }
    }
    /// Same namespace as the host (meaningful only on the same kernel).
    fn same_ns(&self, ns: &str) -> bool {
        self.same_kernel()
            && self.host.namespaces.contains_key(ns)
            && self.host.namespaces.get(ns) == self.me.namespaces.get(ns)
    }
}

fn cell(value: String, verdict: Verdict, why: &str) -> Cell {
    Cell {
        value,
        verdict: Some(verdict),
        why: why.to_string(),
    }
}

fn host_cell(value: String) -> Cell {
    Cell {
        value,
        verdict: None,
        why: "reference".to_string(),
    }
}

fn ns_row(
    fact: &str,
    ns: &str,
    value: impl Fn(&ProbeReport) -> String,
    cols: &[(String, ProbeReport)],
    host: &ProbeReport,
    own: &str,
    shared: &str,
) -> IsolationRow {
    let mut cells = vec![host_cell(value(host))];
    for (_, me) in cols {
        let r = Rel { host, me };
        cells.push(if !r.same_kernel() {
            cell(
                value(me),
                Verdict::Isolated,
                "own kernel: its namespaces are not the host's at all",
            )
        } else if r.same_ns(ns) {
            cell(value(me), Verdict::Shared, shared)
        } else {
            cell(value(me), Verdict::Isolated, own)
        });
    }
    IsolationRow {
        fact: fact.to_string(),
        cells,
    }
}

fn attempt_value(o: &AttemptOutcome) -> String {
    let r = match o.result {
        AttemptResult::Allowed => "allowed",
        AttemptResult::Refused => "refused",
        AttemptResult::Unavailable => "unavailable",
        AttemptResult::Error => "error",
    };
    format!("{r} ({}: {})", o.step, o.detail)
}

/// An attempt row: refused is isolated; allowed is shared only when it would
/// act on the host (same kernel and, where given, same namespace).
fn attempt_row(
    fact: &str,
    pick: fn(&ProbeReport) -> &AttemptOutcome,
    ns: Option<&str>,
    cols: &[(String, ProbeReport)],
    host: &ProbeReport,
    shared_why: &str,
    own_ns_why: &str,
) -> IsolationRow {
    let mut cells = vec![host_cell(attempt_value(pick(host)))];
    for (_, me) in cols {
        let r = Rel { host, me };
        let o = pick(me);
        let v = attempt_value(o);
        cells.push(match o.result {
            AttemptResult::Refused => {
                cell(v, Verdict::Isolated, "refused: the kernel denies it here")
            }
            AttemptResult::Unavailable | AttemptResult::Error => cell(
                v,
                Verdict::NotApplicable,
                "not possible here for a reason other than permission",
            ),
            AttemptResult::Allowed if !r.same_kernel() => cell(
                v,
                Verdict::Isolated,
                "allowed, but it acts on the guest's own kernel only",
            ),
            AttemptResult::Allowed if ns.is_some_and(|n| !r.same_ns(n)) => {
                cell(v, Verdict::Isolated, own_ns_why)
            }
            AttemptResult::Allowed => cell(v, Verdict::Shared, shared_why),
        });
    }
    IsolationRow {
        fact: fact.to_string(),
        cells,
    }
}

fn value_row(
    fact: &str,
    value: impl Fn(&ProbeReport) -> String,
    cols: &[(String, ProbeReport)],
    host: &ProbeReport,
    same_why: &str,
    differ_why: &str,
) -> IsolationRow {
    let mut cells = vec![host_cell(value(host))];
    for (_, me) in cols {
        let v = value(me);
        cells.push(if !(Rel { host, me }).same_kernel() {
            // A guest's capabilities, filters and sizes belong to its own kernel:
            // equal to the host's or not, they say nothing shared.
            cell(
                v,
                Verdict::Isolated,
                &format!("own kernel: this is the guest's, not the host's ({differ_why})"),
            )
        } else if v == value(host) {
            cell(v, Verdict::Shared, same_why)
        } else {
            cell(v, Verdict::Isolated, differ_why)
        });
    }
    IsolationRow {
        fact: fact.to_string(),
        cells,
    }
}

/// Adds the row "VMM process (host side)" after the kernel row: for each
/// column on its own kernel (a VM), `vmm` says what the process running that
/// guest holds on the host (`duet_vmm::jail::describe`); a column on the
/// host's kernel has no VMM. The probe runs inside the guest and cannot see
/// this; the jail test (`vmm/tests/jail.rs`, testbed `jail_inspect`) checks it.
pub fn add_vmm_row(
    t: &mut IsolationTable,
    host: &ProbeReport,
    cols: &[(String, ProbeReport)],
    vmm: &VmmJail,
) {
    let mut cells = vec![host_cell("no VMM".to_string())];
    for (_, me) in cols {
        cells.push(if (Rel { host, me }).same_kernel() {
            cell(
                "no VMM".to_string(),
                Verdict::NotApplicable,
                "the workload's own processes run on the host kernel",
            )
        } else if vmm.jailed {
            cell(
                vmm.holds.clone(),
                Verdict::Isolated,
                "a guest that escapes into the VMM gets an unprivileged, empty jail",
            )
        } else {
            cell(
                vmm.holds.clone(),
                Verdict::Shared,
                "a guest that escapes into the VMM is root on the host",
            )
        })
    }
    let at = t
        .rows
        .iter()
        .position(|r| r.fact == "kernel")
        .map_or(0, |i| i + 1);
    t.rows.insert(
        at,
        IsolationRow {
            fact: "VMM process (host side)".to_string(),
            cells,
        },
    );
}

/// What the VMM process holds on the host, for [`add_vmm_row`].
#[derive(Debug, Clone)]
pub struct VmmJail {
    /// Whether it is jailed.
    pub jailed: bool,
    /// One line: its uid, capabilities, namespaces and root.
    pub holds: String,
}

/// Builds the table: `host` first, then each `(label, report)` column.
pub fn compare(host: &ProbeReport, cols: &[(String, ProbeReport)]) -> IsolationTable {
    let mut rows = Vec::new();
    // Kernel.
    let mut cells = vec![host_cell(format!(
        "{} {}",
        host.kernel.release, host.kernel.version
    ))];
    for (_, me) in cols {
        let v = format!("{} {}", me.kernel.release, me.kernel.version);
        cells.push(if (Rel { host, me }).same_kernel() {
            cell(
                v,
                Verdict::Shared,
                "same kernel: a kernel bug reachable from here reaches the host",
            )
        } else {
            cell(
                v,
                Verdict::Isolated,
                "own kernel: the host kernel is reachable only through virtual hardware",
            )
        });
    }
    rows.push(IsolationRow {
        fact: "kernel".to_string(),
        cells,
    });
    // Processes.
    let procs = |r: &ProbeReport| {
        format!(
            "{} visible, PID 1 = {}",
            r.visible_processes,
            r.pid1_name.as_deref().unwrap_or("?")
        )
    };
    let mut cells = vec![host_cell(procs(host))];
    for (_, me) in cols {
        let seen = me.host_pid.as_ref().is_some_and(|h| h.visible);
        cells.push(if seen {
            cell(
                procs(me),
                Verdict::Shared,
                "host processes are visible (and signalable with the right capability)",
            )
        } else {
            cell(
                procs(me),
                Verdict::Isolated,
                "the harness's own host PID is not visible from here",
            )
        });
    }
    rows.push(IsolationRow {
        fact: "processes".to_string(),
        cells,
    });
    rows.push(ns_row(
        "hostname (UTS)",
        "uts",
        |r| r.hostname.clone(),
        cols,
        host,
        "own UTS namespace: its hostname is its own",
        "same UTS namespace as the host",
    ));
    rows.push(ns_row(
        "mounts",
        "mnt",
        |r| {
            format!(
                "{} mounts, / is {}",
                r.mount_count,
                r.root_fs_type.as_deref().unwrap_or("?")
            )
        },
        cols,
        host,
        "own mount namespace: its mount table is its own",
        "same mount table as the host",
    ));
    rows.push(ns_row(
        "network",
        "net",
        |r| r.network_interfaces.join(","),
        cols,
        host,
        "own network namespace: its interfaces are its own",
        "same network stack as the host",
    ));
    rows.push(ns_row(
        "IPC",
        "ipc",
        |r| r.namespaces.get("ipc").cloned().unwrap_or_default(),
        cols,
        host,
        "own IPC namespace",
        "same System V IPC and POSIX queues as the host",
    ));
    rows.push(ns_row(
        "users",
        "user",
        |r| {
            r.uid_map
                .iter()
                .map(|m| format!("{}->{}x{}", m.inside, m.outside, m.count))
                .collect::<Vec<_>>()
                .join(" ")
        },
        cols,
        host,
        "own user namespace: its root maps to an unprivileged host uid",
        "root inside is root on the host",
    ));
    rows.push(ns_row(
        "cgroup",
        "cgroup",
        |r| {
            r.cgroups
                .iter()
                .find(|c| c.controllers.iter().any(|x| x == "memory") || c.hierarchy == 0)
                .map(|c| c.path.clone())
                .unwrap_or_default()
        },
        cols,
        host,
        "own cgroup namespace: sees only its own subtree",
        "sees the host's cgroup tree",
    ));
    rows.push(value_row(
        "capabilities",
        |r| format!("{} effective", r.capabilities.effective.len()),
        cols,
        host,
        "same effective capabilities as the host side",
        "a different capability set",
    ));
    rows.push(value_row(
        "seccomp / no_new_privs",
        |r| {
            format!(
                "seccomp {}, nnp {}",
                r.seccomp_mode.map_or("?".to_string(), |m| m.to_string()),
                r.no_new_privs.map_or("?".to_string(), |b| b.to_string())
            )
        },
        cols,
        host,
        "same syscall filtering as the host side",
        "syscalls filtered differently",
    ));
    rows.push(value_row(
        "memory (MemTotal)",
        |r| format!("{} MiB", r.mem_total_kib.unwrap_or(0) / 1024),
        cols,
        host,
        "sees the host's memory (limits, if any, are cgroup accounting)",
        "its own pre-allocated memory",
    ));
    rows.push(value_row(
        "CPUs",
        |r| format!("{} online", r.cpus_online),
        cols,
        host,
        "sees the host's CPUs",
        "its own vCPUs",
    ));
    // Canary.
    let canary = |r: &ProbeReport| {
        if !r.canary.requested {
            "not asked".to_string()
        } else if r.canary.found_at.is_empty() {
            format!("not found ({} entries searched)", r.canary.entries_examined)
        } else {
            format!("found at {}", r.canary.found_at.join(", "))
        }
    };
    let mut cells = vec![host_cell(canary(host))];
    for (_, me) in cols {
        cells.push(if !me.canary.requested {
            cell(canary(me), Verdict::NotApplicable, "no canary was passed")
        } else if me.canary.found_at.is_empty() {
            cell(
                canary(me),
                Verdict::Isolated,
                "the host's canary file is not reachable",
            )
        } else {
            cell(
                canary(me),
                Verdict::Shared,
                "a host file is readable from here",
            )
        });
    }
    rows.push(IsolationRow {
        fact: "host canary file".to_string(),
        cells,
    });
    rows.push(attempt_row(
        "load kernel module",
        |r| &r.attempts.load_kernel_module,
        None,
        cols,
        host,
        "could load code into the kernel the host runs",
        "",
    ));
    rows.push(attempt_row(
        "mount tmpfs",
        |r| &r.attempts.mount_tmpfs,
        Some("user"),
        cols,
        host,
        "has CAP_SYS_ADMIN over the host's user namespace",
        "allowed inside its own user namespace only",
    ));
    rows.push(attempt_row(
        "raw socket",
        |r| &r.attempts.raw_socket,
        Some("net"),
        cols,
        host,
        "raw packets on the host's network stack",
        "raw packets on its own network namespace only",
    ));
    rows.push(attempt_row(
        "write hostname",
        |r| &r.attempts.write_hostname,
        Some("uts"),
        cols,
        host,
        "could rename the host",
        "renames its own UTS namespace only",
    ));
    rows.push(attempt_row(
        "open /proc/sysrq-trigger",
        |r| &r.attempts.open_sysrq_trigger,
        None,
        cols,
        host,
        "could trigger SysRq actions (crash, reboot) on the host kernel",
        "",
    ));
    rows.push(attempt_row(
        "reboot(2)",
        |r| &r.attempts.reboot,
        Some("pid"),
        cols,
        host,
        "CAP_SYS_BOOT in the host's PID namespace: could reboot the host",
        "would only end its own PID namespace's init",
    ));
    IsolationTable {
        columns: std::iter::once("host".to_string())
            .chain(cols.iter().map(|(l, _)| l.clone()))
            .collect(),
        rows,
        missing: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_probe::ProbeInput;

    fn outcome(result: AttemptResult, detail: &str) -> AttemptOutcome {
        AttemptOutcome {
            result,
            step: "s".into(),
            errno: None,
            detail: detail.into(),
        }
    }

    /// A fake container: same kernel, own namespaces except user, refused attempts.
    fn containerized(host: &ProbeReport) -> ProbeReport {
        let mut c = host.clone();
        for ns in ["pid", "mnt", "net", "uts", "ipc", "cgroup"] {
            c.namespaces.insert(ns.into(), format!("{ns}:[1]"));
        }
        c.visible_processes = 1;
        c.host_pid = Some(duet_probe::HostPidResult {
            pid: 1,
            visible: false,
            other_process_with_same_pid: true,
        });
        c.canary.found_at.clear();
        c.attempts.reboot = outcome(AttemptResult::Allowed, "EINVAL");
        c.attempts.load_kernel_module = outcome(AttemptResult::Refused, "EPERM");
        c
    }

    /// A fake VM: other kernel.
    fn vm(host: &ProbeReport) -> ProbeReport {
        let mut v = containerized(host);
        v.kernel.boot_id = Some("other".into());
        v.kernel.release = "6.1.0-duet".into();
        v.attempts.load_kernel_module = outcome(AttemptResult::Allowed, "ENOEXEC");
        v.mem_total_kib = Some(256 * 1024);
        v
    }

    fn row<'a>(t: &'a IsolationTable, fact: &str) -> &'a IsolationRow {
        t.rows.iter().find(|r| r.fact == fact).unwrap()
    }

    #[test]
    fn vmm_row_says_what_the_jail_holds_for_vm_columns_only() {
        let host = duet_probe::collect(&ProbeInput {
            canary_path: None,
            canary_token: None,
            host_pid: None,
        });
        let cols = vec![
            ("container".to_string(), containerized(&host)),
            ("vm".to_string(), vm(&host)),
        ];
        for (jailed, verdict) in [(true, Verdict::Isolated), (false, Verdict::Shared)] {
            let mut t = compare(&host, &cols);
            let jail = VmmJail {
                jailed,
                holds: "jailed: uid 900000+, no capabilities".into(),
            };
            add_vmm_row(&mut t, &host, &cols, &jail);
            assert_eq!(t.rows[0].fact, "kernel");
            let r = &t.rows[1];
            assert_eq!(r.fact, "VMM process (host side)");
            assert_eq!(r.cells[1].verdict, Some(Verdict::NotApplicable));
            assert_eq!(r.cells[1].value, "no VMM");
            assert_eq!(r.cells[2].verdict, Some(verdict));
            assert_eq!(r.cells[2].value, jail.holds);
        }
    }

    #[test]
    fn verdicts_for_container_and_vm() {
        let dir = tempfile::tempdir().unwrap();
        let canary = Canary::create(dir.path()).unwrap();
        let me = std::process::id();
        let mut host = duet_probe::collect(&ProbeInput {
            canary_path: Some(canary.path.clone()),
            canary_token: Some(canary.token.clone()),
            host_pid: Some((me, duet_probe::pid_start_ticks(me).unwrap())),
        });
        // On the host it is found at its path (and via /proc/1/root, same root).
        let at = canary.path.display().to_string();
        assert!(host.canary.found_at.contains(&at), "{:?}", host.canary);
        host.attempts.reboot = outcome(AttemptResult::Allowed, "EINVAL");
        let cols = vec![
            ("container".to_string(), containerized(&host)),
            ("vm".to_string(), vm(&host)),
        ];
        let t = compare(&host, &cols);
        assert_eq!(t.columns, ["host", "container", "vm"]);
        let k = row(&t, "kernel");
        assert_eq!(k.cells[1].verdict, Some(Verdict::Shared));
        assert!(k.cells[1].why.contains("kernel bug"));
        assert_eq!(k.cells[2].verdict, Some(Verdict::Isolated));
        assert!(k.differs());
        assert_eq!(
            row(&t, "processes").cells[1].verdict,
            Some(Verdict::Isolated)
        );
        assert_eq!(row(&t, "users").cells[1].verdict, Some(Verdict::Shared));
        assert_eq!(row(&t, "mounts").cells[1].verdict, Some(Verdict::Isolated));
        let reboot = row(&t, "reboot(2)");
        assert_eq!(reboot.cells[1].verdict, Some(Verdict::Isolated));
        assert!(reboot.cells[1].why.contains("PID namespace"));
        let km = row(&t, "load kernel module");
        assert_eq!(km.cells[1].verdict, Some(Verdict::Isolated));
        assert_eq!(km.cells[2].verdict, Some(Verdict::Isolated));
        assert!(km.cells[2].why.contains("guest"));
        assert_eq!(
            row(&t, "memory (MemTotal)").cells[2].verdict,
            Some(Verdict::Isolated)
        );
        // The fake VM keeps the host's seccomp mode: on its own kernel that is still not shared.
        let sc = row(&t, "seccomp / no_new_privs");
        assert_eq!(sc.cells[2].value, sc.cells[0].value);
        assert_eq!(sc.cells[2].verdict, Some(Verdict::Isolated));
        assert!(sc.cells[2].why.starts_with("own kernel"));
        assert_eq!(
            row(&t, "host canary file").cells[1].verdict,
            Some(Verdict::Isolated)
        );
        // The host itself as a column shares everything it can.
        let same = compare(&host, &[("again".to_string(), host.clone())]);
        assert_eq!(row(&same, "kernel").cells[1].verdict, Some(Verdict::Shared));
        assert_eq!(
            row(&same, "host canary file").cells[1].verdict,
            Some(Verdict::Shared)
        );
        assert_eq!(
            row(&same, "reboot(2)").cells[1].verdict,
            Some(Verdict::Shared)
        );
        let path = canary.path.clone();
        drop(canary);
        assert!(!path.exists());
    }

    #[test]
    fn probe_args_carry_canary_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let c = Canary::create(dir.path()).unwrap();
        assert_eq!(c.token.len(), 32);
        let a = probe_args(&c);
        let cl = duet_probe::parse_command_line(&a, |_| None).unwrap();
        assert_eq!(cl.input.canary_token.as_deref(), Some(c.token.as_str()));
        assert_eq!(cl.input.host_pid.unwrap().0, std::process::id());
        assert!(parse_probe(b"not json", "x").is_err());
    }
}
