//! The OCI runtime-spec `linux.seccomp` section (the one Docker always puts
//! in a bundle's config.json) as duet's [`SeccompPrograms`], which the
//! child installs unchanged with [`seccomp::install_all`](crate::seccomp::install_all).
//!
//! [`translate`] follows runc (libcontainer/seccomp over libseccomp), the
//! runtime Docker's profiles are written for, with the differences listed
//! below. Only x86_64 is filtered.
//!
//! # Filters, joined into one program
//!
//! A seccompiler filter has one action for all the rules that match and one
//! for everything else, so a profile with several actions takes several
//! filters, tried in this order:
//!
//! 1. the ENOSYS guard (below);
//! 2. the *default* filter: every system call named by an entry, with that
//!    entry's argument conditions, -> allow; anything else ->
//!    `defaultAction` (with `defaultErrnoRet`, EPERM if absent, for ERRNO);
//! 3. for each distinct action of the entries other than allow, a filter
//!    "those entries (with their conditions) -> that action, anything else
//!    -> allow", ordered as the kernel ranks actions (KILL_PROCESS,
//!    KILL_THREAD, TRAP, ERRNO, TRACE, LOG), then by their first entry in
//!    the config: of two entries that match one call, the stronger action
//!    wins, and between two ERRNO (or TRACE) values the earlier entry.
//!
//! They are joined into one BPF program: every "return allow" of a filter
//! but the last becomes a jump to the start of the next one, so the first
//! filter that does not allow decides. This gives the result stacked
//! filters would give, where the kernel keeps the result of highest
//! precedence (and, among equal ones, that of the filter installed last),
//! but for a tie between two entry filters of equal rank (the earlier entry
//! wins here): apart from those, at most one stage refuses a given call.
//! The guard refuses
//! only numbers no entry names; the default filter refuses only calls that
//! match no entry's rule; an entry filter refuses only calls that match one
//! of its entries, which the default filter allowed. The result is the
//! action of the matching entry, else `defaultAction`.
//!
//! The joined program is the one entry of [`SeccompPrograms::programs`],
//! installed with one prctl. (As separate stacked filters, each install
//! after the first must get its own prctl past the filters already
//! installed, which fails for an allow list that does not name `prctl`, or
//! a deny list that refuses it.)
//!
//! # Semantics
//!
//! - Actions: SCMP_ACT_ALLOW; SCMP_ACT_ERRNO with `errnoRet` (EPERM if
//!   absent, at most 4095, the kernel's MAX_ERRNO); SCMP_ACT_KILL and
//!   SCMP_ACT_KILL_THREAD (kill the thread, as libseccomp's SCMP_ACT_KILL);
//!   SCMP_ACT_KILL_PROCESS; SCMP_ACT_TRAP; SCMP_ACT_TRACE with `errnoRet` as
//!   the tracer's data (EPERM if absent, as runc and the runtime-spec say;
//!   at most 65535); SCMP_ACT_LOG. SCMP_ACT_NOTIFY, `listenerPath` and an
//!   `errnoRet` on an action that takes none (the runtime-spec says to fail)
//!   are errors naming the field.
//! - An entry whose action equals `defaultAction` is dropped, as runc does
//!   (libseccomp refuses such rules): it would change nothing for a call it
//!   alone matches.
//! - Names: looked up in the `syscalls` crate's x86_64 table (generated
//!   from the kernel's). Names it does not know (other architectures' calls
//!   like `socketcall`, or calls newer than the table) are skipped, as runc
//!   and libseccomp skip them, and returned in
//!   [`OciSeccompFilter::skipped_syscalls`] for the caller to log.
//! - Arguments: `index` 0 to 5 (else an error naming the field); SCMP_CMP_NE,
//!   _LT, _LE, _EQ, _GE, _GT compare the argument with `value`;
//!   SCMP_CMP_MASKED_EQ is `(arg & value) == valueTwo` (valueTwo 0 if
//!   absent). All comparisons are 64-bit (`SeccompCmpArgLen::Qword`), as
//!   libseccomp's `SCMP_CMP` and hence runc: `value` is compared with the
//!   whole register, also for an argument the kernel reads as a 32-bit
//!   `int` (a profile means the same here as under Docker; 32-bit
//!   comparisons would let the upper half of such a register pass unseen).
//! - The conditions of one entry are ANDed into one rule; the rules of one
//!   system call (several entries naming it) are ORed. When one entry
//!   compares the same argument index more than once, runc instead adds
//!   every condition of that entry as a rule of its own (ORed, including
//!   those on other indexes: libseccomp cannot AND two comparisons of one
//!   argument); duet does the same, so such a profile means what it means
//!   under Docker. Docker's default profile has no such entry.
//! - Unknown actions, operators, architectures and flags are refused by
//!   oci-spec's deserializer already ("unknown variant ...").
//! - `architectures`: SCMP_ARCH_X86_64, SCMP_ARCH_X86, SCMP_ARCH_X32 and
//!   SCMP_ARCH_NATIVE are accepted, others are ignored and returned in
//!   [`OciSeccompFilter::ignored_architectures`]. Only x86_64 calls are
//!   filtered whatever the list says: a call made with another audit
//!   architecture (i386 through `int 0x80`, a 32-bit binary) kills the
//!   process, as duet's own filter does, where libseccomp would have
//!   filtered it with the i386 table.
//! - The ENOSYS guard, at the head of the program: x32 calls (x86_64
//!   with __X32_SYSCALL_BIT set in the number) return ENOSYS, as on a kernel
//!   without x32 (duet has no x32 table; without the guard a deny-list
//!   profile could be bypassed through the x32 numbers). And, when
//!   `defaultAction` refuses (anything but ALLOW, LOG or TRACE), numbers
//!   above the highest one the profile names return ENOSYS instead of the
//!   default action, as runc's patchbpf does: a C library then falls back
//!   from a system call newer than the profile (clone3, faccessat2,
//!   fchmodat2, ...) instead of failing on EPERM.
//! - `flags`: SECCOMP_FILTER_FLAG_LOG and SECCOMP_FILTER_FLAG_SPEC_ALLOW are
//!   accepted but not applied (install_all uses prctl(PR_SET_SECCOMP), which
//!   takes no flags; without them nothing is logged for non-allow actions
//!   and the speculative store bypass mitigation stays on): they are
//!   returned in [`OciSeccompFilter::unapplied_flags`]. Other flags
//!   (SECCOMP_FILTER_FLAG_TSYNC, SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV) are
//!   errors; runc accepts TSYNC as a no-op.

use crate::seccomp::SeccompPrograms;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use syscalls::x86_64::Sysno;

/// A `linux.seccomp` section duet cannot honour; each names the field.
#[derive(Debug, thiserror::Error)]
pub enum OciSeccompError {
    /// SCMP_ACT_NOTIFY (seccomp user notification needs an agent).
    #[error("{field}: {action} is not supported")]
    UnsupportedAction {
        /// e.g. `linux.seccomp.syscalls[3].action`.
        field: String,
        /// The action.
        action: LinuxSeccompAction,
    },
    /// A listener socket for SCMP_ACT_NOTIFY.
    #[error(
        "linux.seccomp.listenerPath: `{}`: seccomp user notification is not supported",
        .0.display()
    )]
    ListenerPath(PathBuf),
    /// A filter flag other than LOG and SPEC_ALLOW.
    #[error("{field}: {flag} is not supported (only SECCOMP_FILTER_FLAG_LOG and SECCOMP_FILTER_FLAG_SPEC_ALLOW are)")]
    UnsupportedFlag {
        /// e.g. `linux.seccomp.flags[0]`.
        field: String,
        /// The flag.
        flag: LinuxSeccompFilterFlag,
    },
    /// An argument index past the sixth argument.
    #[error("{field}: {index} is out of range (a system call has arguments 0 to 5)")]
    ArgIndex {
        /// e.g. `linux.seccomp.syscalls[2].args[0].index`.
        field: String,
        /// The index given.
        index: usize,
    },
    /// `errnoRet` on an action that returns no errno.
    #[error("{field}: {action} takes no errno (only SCMP_ACT_ERRNO and SCMP_ACT_TRACE do)")]
    ErrnoNotTaken {
        /// e.g. `linux.seccomp.syscalls[2].errnoRet`.
        field: String,
        /// The entry's action.
        action: LinuxSeccompAction,
    },
    /// An `errnoRet` the kernel would not return as given.
    #[error("{field}: {value} is out of range for {action} (at most {max})")]
    ErrnoRange {
        /// e.g. `linux.seccomp.defaultErrnoRet`.
        field: String,
        /// The action it is for.
        action: LinuxSeccompAction,
        /// The value given.
        value: u32,
        /// The largest value that action carries.
        max: u32,
    },
    /// An empty string among `names`.
    #[error("{field}: an empty string is not a system call name")]
    EmptyName {
        /// e.g. `linux.seccomp.syscalls[0].names[4]`.
        field: String,
    },
    /// seccompiler refused a condition or a filter.
    #[error("{field}: building the seccomp filter")]
    Build {
        /// The field, or `linux.seccomp` for a whole program.
        field: String,
        /// Cause.
        #[source]
        source: seccompiler::BackendError,
    },
    /// A program longer than the kernel takes.
    #[error(
        "linux.seccomp: the filter needs {len} BPF instructions, more than the kernel's {max}"
    )]
    TooLarge {
        /// Its length.
        len: usize,
        /// BPF_MAXINSNS.
        max: usize,
    },
}

/// A translated `linux.seccomp`: the programs, and what the caller may log.
#[derive(Debug, Clone)]
pub struct OciSeccompFilter {
    /// The one joined program; install with
    /// [`seccomp::install_all`](crate::seccomp::install_all).
    pub programs: SeccompPrograms,
    /// The actions of the entry filters joined after the default filter,
    /// in the order they are tried.
    pub entry_actions: Vec<SeccompAction>,
    /// Names not in the x86_64 table, skipped, each once, in config order.
    pub skipped_syscalls: Vec<String>,
    /// Architectures listed but not filtered (all but x86_64, x86, x32).
    pub ignored_architectures: Vec<Arch>,
    /// Flags accepted but not applied (LOG, SPEC_ALLOW).
    pub unapplied_flags: Vec<LinuxSeccompFilterFlag>,
    /// x86_64 numbers above this return ENOSYS (the highest number the
    /// profile names; `None` when `defaultAction` allows, or no name is known).
    pub enosys_above: Option<u32>,
}

/// The kernel's MAX_ERRNO: larger SECCOMP_RET_ERRNO data is clamped to it.
const MAX_ERRNO: u32 = 4095;
/// SECCOMP_RET_DATA: what SECCOMP_RET_TRACE passes to the tracer.
const MAX_TRACE_DATA: u32 = 0xffff;
/// AUDIT_ARCH_X86_64: EM_X86_64 (62) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// __X32_SYSCALL_BIT: set in the number of an x32 call.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Offsets of `nr` and `arch` in `struct seccomp_data`.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;

/// Per system call number: `None` matches any call, `Some(rules)` a call
/// that satisfies one of the rules.
type RuleMap = BTreeMap<i64, Option<Vec<SeccompRule>>>;

/// Translates `linux.seccomp` into duet's programs (see the module doc).
pub fn translate(seccomp: &LinuxSeccomp) -> Result<OciSeccompFilter, OciSeccompError> {
    if let Some(path) = seccomp.listener_path() {
        if !path.as_os_str().is_empty() {
            return Err(OciSeccompError::ListenerPath(path.clone()));
        }
    }
    let mut unapplied_flags = Vec::new();
    for (i, &flag) in seccomp.flags().iter().flatten().enumerate() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog
            | LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => unapplied_flags.push(flag),
            _ => {
                return Err(OciSeccompError::UnsupportedFlag {
                    field: format!("linux.seccomp.flags[{i}]"),
                    flag,
                })
            }
        }
    }
    let ignored_architectures = seccomp
        .architectures()
        .iter()
        .flatten()
        .copied()
        .filter(|a| {
            !matches!(
                a,
                Arch::ScmpArchNative | Arch::ScmpArchX86_64 | Arch::ScmpArchX86 | Arch::ScmpArchX32
            )
        })
        .collect();
    let default = action(
        seccomp.default_action(),
        seccomp.default_errno_ret(),
        "linux.seccomp.defaultAction",
        "linux.seccomp.defaultErrnoRet",
    )?;

    // Rules the default filter allows, and per other action the rules of its filter.
    let mut allowed = RuleMap::new();
    let mut groups: Vec<(SeccompAction, RuleMap)> = Vec::new();
    let mut skipped_syscalls: Vec<String> = Vec::new();
    let mut highest: Option<u32> = None;
    for (i, entry) in seccomp.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(
            entry.action(),
            entry.errno_ret(),
            &format!("{field}.action"),
            &format!("{field}.errnoRet"),
        )?;
        let rules = entry_rules(entry, &field)?;
        let mut numbers = Vec::new();
        for (j, name) in entry.names().iter().enumerate() {
            if name.is_empty() {
                return Err(OciSeccompError::EmptyName {
                    field: format!("{field}.names[{j}]"),
                });
            }
            match Sysno::from_str(name) {
                Ok(nr) => {
                    let nr = nr.id() as u32;
                    highest = highest.max(Some(nr));
                    numbers.push(i64::from(nr));
                }
                Err(()) => {
                    if !skipped_syscalls.contains(name) {
                        skipped_syscalls.push(name.clone());
                    }
                }
            }
        }
        if act == default {
            continue; // as runc: such an entry cannot change a result
        }
        let group = match groups.iter().position(|(a, _)| *a == act) {
            Some(g) => &mut groups[g].1,
            None if act == SeccompAction::Allow => &mut allowed,
            None => {
                groups.push((act.clone(), RuleMap::new()));
                &mut groups.last_mut().expect("just pushed").1
            }
        };
        for &nr in &numbers {
            add_rules(group, nr, &rules);
        }
        if act != SeccompAction::Allow {
            for &nr in &numbers {
                add_rules(&mut allowed, nr, &rules);
            }
        }
    }

    let refuses = !matches!(
        default,
        SeccompAction::Allow | SeccompAction::Log | SeccompAction::Trace(_)
    );
    let enosys_above = highest.filter(|_| refuses);
    let mut filters = vec![guard(enosys_above)];
    filters.push(if default == SeccompAction::Allow {
        allow_all()?
    } else {
        compile(allowed, default, SeccompAction::Allow, "linux.seccomp")?
    });
    // Strongest action first; sort_by_key is stable, so config order among equals.
    groups.sort_by_key(|(a, _)| precedence(a));
    let entry_actions: Vec<SeccompAction> = groups.iter().map(|(a, _)| a.clone()).collect();
    for (act, rules) in groups {
        filters.push(compile(rules, SeccompAction::Allow, act, "linux.seccomp")?);
    }
    let program = join(filters);
    let max = libc::BPF_MAXINSNS as usize;
    if program.len() > max {
        return Err(OciSeccompError::TooLarge {
            len: program.len(),
            max,
        });
    }
    Ok(OciSeccompFilter {
        programs: SeccompPrograms {
            programs: vec![program],
        },
        entry_actions,
        skipped_syscalls,
        ignored_architectures,
        unapplied_flags,
        enosys_above,
    })
}

/// An OCI action (with its errnoRet) as seccompiler's.
fn action(
    act: LinuxSeccompAction,
    errno_ret: Option<u32>,
    field: &str,
    errno_field: &str,
) -> Result<SeccompAction, OciSeccompError> {
    use LinuxSeccompAction as A;
    let data = |max: u32| match errno_ret {
        None => Ok(libc::EPERM as u32),
        Some(value) if value <= max => Ok(value),
        Some(value) => Err(OciSeccompError::ErrnoRange {
            field: errno_field.to_string(),
            action: act,
            value,
            max,
        }),
    };
    if errno_ret.is_some() && !matches!(act, A::ScmpActErrno | A::ScmpActTrace) {
        return Err(OciSeccompError::ErrnoNotTaken {
            field: errno_field.to_string(),
            action: act,
        });
    }
    Ok(match act {
        A::ScmpActAllow => SeccompAction::Allow,
        A::ScmpActErrno => SeccompAction::Errno(data(MAX_ERRNO)?),
        A::ScmpActKill | A::ScmpActKillThread => SeccompAction::KillThread,
        A::ScmpActKillProcess => SeccompAction::KillProcess,
        A::ScmpActTrap => SeccompAction::Trap,
        A::ScmpActTrace => SeccompAction::Trace(data(MAX_TRACE_DATA)?),
        A::ScmpActLog => SeccompAction::Log,
        A::ScmpActNotify => {
            return Err(OciSeccompError::UnsupportedAction {
                field: field.to_string(),
                action: act,
            })
        }
    })
}

/// The kernel's ranking of actions (SECCOMP_RET_*, as signed values): lower wins.
fn precedence(a: &SeccompAction) -> u8 {
    match a {
        SeccompAction::KillProcess => 0,
        SeccompAction::KillThread => 1,
        SeccompAction::Trap => 2,
        SeccompAction::Errno(_) => 3,
        SeccompAction::Trace(_) => 4,
        SeccompAction::Log => 5,
        SeccompAction::Allow => 6,
    }
}

/// An entry's rules: `None` for no argument conditions (any call matches).
fn entry_rules(
    entry: &LinuxSyscall,
    field: &str,
) -> Result<Option<Vec<SeccompRule>>, OciSeccompError> {
    let args = match entry.args() {
        Some(args) if !args.is_empty() => args,
        _ => return Ok(None),
    };
    let mut conditions = Vec::with_capacity(args.len());
    let mut seen = [0usize; 6];
    for (k, arg) in args.iter().enumerate() {
        let field = format!("{field}.args[{k}]");
        conditions.push(condition(arg, &field)?);
        seen[arg.index()] += 1;
    }
    let rule = |conditions| {
        SeccompRule::new(conditions).map_err(|source| OciSeccompError::Build {
            field: format!("{field}.args"),
            source,
        })
    };
    let rules = if seen.iter().any(|&n| n > 1) {
        // runc: one index compared twice -> every condition a rule of its own.
        conditions
            .into_iter()
            .map(|c| rule(vec![c]))
            .collect::<Result<_, _>>()?
    } else {
        vec![rule(conditions)?]
    };
    Ok(Some(rules))
}

/// One argument comparison, 64 bits wide.
fn condition(arg: &LinuxSeccompArg, field: &str) -> Result<SeccompCondition, OciSeccompError> {
    let index = arg.index();
    if index > 5 {
        return Err(OciSeccompError::ArgIndex {
            field: format!("{field}.index"),
            index,
        });
    }
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    SeccompCondition::new(index as u8, SeccompCmpArgLen::Qword, op, value).map_err(|source| {
        OciSeccompError::Build {
            field: field.to_string(),
            source,
        }
    })
}

/// Adds an entry's rules for `nr`; a match-any absorbs rules.
fn add_rules(map: &mut RuleMap, nr: i64, rules: &Option<Vec<SeccompRule>>) {
    let slot = map.entry(nr).or_insert_with(|| Some(Vec::new()));
    match rules {
        None => *slot = None,
        Some(rules) => {
            if let Some(existing) = slot {
                existing.extend(rules.iter().cloned());
            }
        }
    }
}

/// A seccompiler filter for x86_64: `rules` -> `matched`, else `mismatched`.
fn compile(
    rules: RuleMap,
    mismatched: SeccompAction,
    matched: SeccompAction,
    field: &str,
) -> Result<BpfProgram, OciSeccompError> {
    let build = |source| OciSeccompError::Build {
        field: field.to_string(),
        source,
    };
    let rules = rules
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    SeccompFilter::new(rules, mismatched, matched, TargetArch::x86_64)
        .map_err(build)?
        .try_into()
        .map_err(build)
}

/// Allows every x86_64 call (and, as every program here, kills other architectures).
/// A filter that allows every x86_64 call (the default stage of a profile
/// whose default is allow).
fn allow_all() -> Result<BpfProgram, OciSeccompError> {
    compile(
        RuleMap::new(),
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        "linux.seccomp",
    )
}

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The ENOSYS guard: x32 calls, and numbers above `enosys_above`, return
/// ENOSYS; everything else is allowed (i.e. goes on to the next program
/// once [`join`]ed).
fn guard(enosys_above: Option<u32>) -> BpfProgram {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGT, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR),
    ];
    match enosys_above {
        Some(highest) => {
            p.push(jump(BPF_JMP | BPF_JSET | BPF_K, X32_SYSCALL_BIT, 2, 0));
            p.push(jump(BPF_JMP | BPF_JGT | BPF_K, highest, 1, 0));
        }
        None => p.push(jump(BPF_JMP | BPF_JSET | BPF_K, X32_SYSCALL_BIT, 1, 0)),
    }
    p.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    p.push(stmt(BPF_RET | BPF_K, enosys));
    p
}

/// Joins programs into one: in each but the last, every "return allow"
/// becomes a jump to the first instruction after it, the start of the next
/// program. Instructions keep their places, so the programs' own jumps stay
/// valid; the result is the first non-allow result of the programs in order.
fn join(programs: Vec<BpfProgram>) -> BpfProgram {
    let ret_allow = stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW);
    let last = programs.len().saturating_sub(1);
    let mut out = Vec::with_capacity(programs.iter().map(Vec::len).sum());
    for (i, mut p) in programs.into_iter().enumerate() {
        if i < last {
            let len = p.len();
            for (at, insn) in p.iter_mut().enumerate() {
                if *insn == ret_allow {
                    *insn = stmt(libc::BPF_JMP | libc::BPF_JA, (len - at - 1) as u32);
                }
            }
        }
        out.extend(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::install_all;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("profile JSON")
    }

    /// The shape of Docker's default profile, small.
    const DOCKER_LIKE: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
        ]
    }"#;

    #[test]
    fn docker_shaped_profile_translates() {
        let t = translate(&profile(DOCKER_LIKE)).unwrap();
        // Guard, default filter and one ERRNO(38) filter, joined.
        assert_eq!(t.entry_actions, vec![SeccompAction::Errno(38)]);
        assert!(t.skipped_syscalls.is_empty(), "{:?}", t.skipped_syscalls);
        assert!(t.ignored_architectures.is_empty());
        assert!(t.unapplied_flags.is_empty());
        assert_eq!(t.enosys_above, Some(435), "clone3 is the highest named");
        let ret = (libc::BPF_RET | libc::BPF_K) as u16;
        let rets = |p: &BpfProgram| -> Vec<u32> {
            p.iter().filter(|i| i.code == ret).map(|i| i.k).collect()
        };
        assert_eq!(t.programs.programs.len(), 1, "one joined program");
        // The guard (8), then a filter per action, each from an arch check (3).
        let p = &t.programs.programs[0];
        assert!(p.len() > 8 + 3 + 3 && p.len() <= 4096, "{}", p.len());
        let errno = |e: u32| libc::SECCOMP_RET_ERRNO | e;
        for k in rets(p) {
            assert!(
                [
                    libc::SECCOMP_RET_ALLOW,
                    libc::SECCOMP_RET_KILL_PROCESS,
                    errno(libc::EPERM as u32),
                    errno(38), // clone3's entry, and the guard's ENOSYS
                ]
                .contains(&k),
                "unexpected return {k:#x}"
            );
        }
        // Only the last filter (clone3's) still returns allow itself.
        let allows = p
            .iter()
            .filter(|i| i.code == ret && i.k == libc::SECCOMP_RET_ALLOW)
            .count();
        assert!((1..=3).contains(&allows), "{allows}");
    }

    /// Every x86_64 call allowed, as big as a profile gets: still within BPF_MAXINSNS.
    #[test]
    fn whole_table_allow_list_fits() {
        // Sysno::iter() (syscalls 0.8.1) stops before the last entry of the table.
        let mut names: Vec<String> = Sysno::iter().map(|s| format!("\"{}\"", s.name())).collect();
        names.push(format!("\"{}\"", Sysno::last().name()));
        let json = format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {{"names": [{}], "action": "SCMP_ACT_ALLOW"}},
                {{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                  "args": [{{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}}]}},
                {{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}}
            ]}}"#,
            names.join(", ")
        );
        let t = translate(&profile(&json)).unwrap();
        assert!(t.skipped_syscalls.is_empty());
        assert_eq!(t.enosys_above, Some(Sysno::last().id() as u32));
        assert!(
            t.programs.programs[0].len() <= 4096,
            "{}",
            t.programs.programs[0].len()
        );
    }

    #[test]
    fn entry_with_the_default_action_is_dropped() {
        let t = translate(&profile(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2}
            ]}"#,
        ))
        .unwrap();
        assert_eq!(t.entry_actions, vec![SeccompAction::Errno(2)]);
    }

    #[test]
    fn entry_filters_are_ordered_by_kernel_precedence() {
        let t = translate(&profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["getgid"], "action": "SCMP_ACT_LOG"},
                {"names": ["getuid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["getpid"], "action": "SCMP_ACT_TRACE"},
                {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["gettid"], "action": "SCMP_ACT_KILL"},
                {"names": ["getegid"], "action": "SCMP_ACT_TRAP"},
                {"names": ["geteuid"], "action": "SCMP_ACT_ERRNO"}
            ]}"#,
        ))
        .unwrap();
        use SeccompAction::*;
        assert_eq!(
            t.entry_actions,
            vec![
                KillProcess,
                KillThread,
                Trap,
                Errno(13),
                Errno(1),
                Trace(1),
                Log
            ]
        );
        assert_eq!(t.enosys_above, None, "the default action allows");
    }

    // ---- behaviour: programs installed in a forked child ----

    /// A raw system call: number and six arguments.
    type Call = (libc::c_long, [libc::c_long; 6]);

    /// What one call returned: the value, or the errno.
    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    enum Got {
        Ok(i64),
        Err(i32),
    }

    /// Forks a child that sets no_new_privs, installs `programs` with
    /// [`install_all`] and makes `calls` in order, sending each result
    /// through a pipe as it goes (a killed child has sent those before).
    /// Returns the results and the child's wait status. The child only makes
    /// system calls on memory prepared before the fork: no allocation.
    fn probe(programs: &SeccompPrograms, calls: &[Call]) -> (Vec<Got>, i32) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array we own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let (rfd, wfd) = (fds[0], fds[1]);
        // SAFETY: the child makes raw system calls on memory that exists
        // before the fork and ends in _exit; no allocation, no locks.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: prctl/setrlimit with integer arguments or a stack struct;
            // no core dump from a deliberate SIGSYS.
            unsafe {
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(98);
                }
            }
            if install_all(programs).is_err() {
                // SAFETY: _exit never returns.
                unsafe { libc::_exit(99) };
            }
            for &(nr, a) in calls {
                // SAFETY: the calls of the tests below, on integer arguments only.
                let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
                let e = if r < 0 {
                    crate::capabilities::errno()
                } else {
                    0
                };
                let out: [i64; 2] = [r, e as i64];
                // SAFETY: write from a stack array to our pipe.
                unsafe { libc::write(wfd, out.as_ptr().cast(), 16) };
            }
            // SAFETY: _exit never returns.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(wfd) };
        let mut got = Vec::new();
        loop {
            let mut out = [0i64; 2];
            // SAFETY: reading 16 bytes into the array we own.
            let n = unsafe { libc::read(rfd, out.as_mut_ptr().cast(), 16) };
            if n != 16 {
                break;
            }
            got.push(if out[0] < 0 {
                Got::Err(out[1] as i32)
            } else {
                Got::Ok(out[0])
            });
        }
        let mut status = 0;
        // SAFETY: reaping the child we forked; closing our read end.
        unsafe {
            libc::waitpid(pid, &mut status, 0);
            libc::close(rfd);
        }
        (got, status)
    }

    fn exit_code(status: i32) -> Option<i32> {
        libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
    }

    const X32: libc::c_long = X32_SYSCALL_BIT as libc::c_long;
    /// CLONE_NEWUSER|CLONE_FS: the kernel refuses it with EINVAL, creating nothing.
    const CLONE_BAD_NEWUSER: libc::c_long = (libc::CLONE_NEWUSER | libc::CLONE_FS) as libc::c_long;

    /// An allow list like Docker's: default EPERM, conditions, two ERRNO entries.
    const ALLOW_LIST: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            {"names": ["read", "write", "exit", "exit_group", "getpid", "not_a_syscall", "socketcall"],
             "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["umask"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 63, "valueTwo": 18, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["getpriority"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                      {"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["getgid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18}
        ]
    }"#;

    fn allow_list_calls() -> Vec<Call> {
        vec![
            (libc::SYS_getpid, [0; 6]),
            (libc::SYS_getppid, [0; 6]),
            (libc::SYS_clone3, [0; 6]),
            (libc::SYS_getgid, [0; 6]),
            (libc::SYS_umask, [0o022, 0, 0, 0, 0, 0]),
            (libc::SYS_umask, [0o722, 0, 0, 0, 0, 0]),
            (libc::SYS_umask, [0o002, 0, 0, 0, 0, 0]),
            (libc::SYS_getpriority, [0, 0, 0, 0, 0, 0]),
            (libc::SYS_getpriority, [1, 0, 0, 0, 0, 0]),
            (libc::SYS_clone, [CLONE_BAD_NEWUSER, 0, 0, 0, 0, 0]),
            // close_range(3, 2, 0): first > last, EINVAL from the kernel.
            (libc::SYS_close_range, [3, 2, 0, 0, 0, 0]),
            (libc::SYS_getpid | X32, [0; 6]),
        ]
    }

    #[test]
    fn allow_list_profile_behaves_in_a_child() {
        let t = translate(&profile(ALLOW_LIST)).unwrap();
        assert_eq!(t.skipped_syscalls, vec!["not_a_syscall", "socketcall"]);
        assert_eq!(t.ignored_architectures, vec![Arch::ScmpArchAarch64]);
        assert_eq!(
            t.entry_actions,
            vec![SeccompAction::Errno(38), SeccompAction::Errno(18)]
        );
        let (got, status) = probe(&t.programs, &allow_list_calls());
        assert_eq!(
            exit_code(status),
            Some(0),
            "status {status:#x}, got {got:?}"
        );
        use Got::Err;
        let ok = |g: &Got| matches!(g, Got::Ok(_));
        assert!(ok(&got[0]), "getpid allowed: {:?}", got[0]);
        assert_eq!(got[1], Err(libc::EPERM), "getppid: unlisted -> default");
        assert_eq!(got[2], Err(libc::ENOSYS), "clone3: its ERRNO(38) entry");
        assert_eq!(got[3], Err(libc::EXDEV), "getgid: the second ERRNO filter");
        assert!(ok(&got[4]), "umask 022 matches the mask: {:?}", got[4]);
        assert!(
            ok(&got[5]),
            "umask 722: bits outside the mask: {:?}",
            got[5]
        );
        assert_eq!(got[6], Err(libc::EPERM), "umask 002 misses the mask");
        assert!(
            ok(&got[7]),
            "getpriority(0, 0): both conditions: {:?}",
            got[7]
        );
        assert_eq!(got[8], Err(libc::EPERM), "getpriority(1, 0): ANDed");
        assert_eq!(got[9], Err(libc::EPERM), "clone with CLONE_NEWUSER");
        assert_eq!(
            got[10],
            Err(libc::ENOSYS),
            "close_range: above the highest named"
        );
        assert_eq!(got[11], Err(libc::ENOSYS), "x32 getpid");
        assert_eq!(got.len(), 12);
    }

    /// The same calls without a filter: what the filter refused above, the
    /// kernel would have answered otherwise, so the test above is not hollow.
    #[test]
    fn allow_list_calls_without_a_filter() {
        let all = translate(&profile(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#)).unwrap();
        assert!(all.entry_actions.is_empty());
        let mut calls = allow_list_calls();
        calls.pop(); // the x32 call: ENOSYS from the guard, even here
        let (got, status) = probe(&all.programs, &calls);
        assert_eq!(
            exit_code(status),
            Some(0),
            "status {status:#x}, got {got:?}"
        );
        for i in [1, 3, 6, 8] {
            assert!(matches!(got[i], Got::Ok(_)), "call {i}: {:?}", got[i]);
        }
        assert_eq!(got[2], Got::Err(libc::EINVAL), "clone3(NULL, 0)");
        assert_eq!(got[9], Got::Err(libc::EINVAL), "clone NEWUSER|FS");
        assert_eq!(got[10], Got::Err(libc::EINVAL), "close_range(3, 2)");
    }

    #[test]
    fn deny_list_profile_behaves_in_a_child() {
        let t = translate(&profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["getgid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["umask"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 18, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 7, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}
            ]}"#,
        ))
        .unwrap();
        let calls: Vec<Call> = vec![
            (libc::SYS_getgid, [0; 6]),
            (libc::SYS_umask, [0o022, 0, 0, 0, 0, 0]),
            (libc::SYS_umask, [0o007, 0, 0, 0, 0, 0]),
            (libc::SYS_umask, [0o002, 0, 0, 0, 0, 0]),
            (libc::SYS_close_range, [3, 2, 0, 0, 0, 0]),
            (libc::SYS_getppid | X32, [0; 6]),
            (libc::SYS_getppid, [0; 6]),
            (libc::SYS_getpid, [0; 6]),
        ];
        let (got, status) = probe(&t.programs, &calls);
        use Got::Err;
        assert_eq!(got[0], Err(libc::EACCES), "getgid");
        assert_eq!(got[1], Err(libc::EPERM), "umask 022: same index ORed");
        assert_eq!(got[2], Err(libc::EPERM), "umask 007: same index ORed");
        assert!(matches!(got[3], Got::Ok(_)), "umask 002: {:?}", got[3]);
        assert_eq!(
            got[4],
            Err(libc::EINVAL),
            "close_range: no ENOSYS stub when allowing"
        );
        assert_eq!(
            got[5],
            Err(libc::ENOSYS),
            "x32 getppid cannot bypass the deny list"
        );
        assert_eq!(got.len(), 6, "killed at getppid: {got:?}");
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "status {status:#x}"
        );
    }

    // ---- errors ----

    fn error(json: &str) -> String {
        translate(&profile(json)).unwrap_err().to_string()
    }

    #[test]
    fn notify_is_refused() {
        assert_eq!(
            error(
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["write"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["close"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["openat"], "action": "SCMP_ACT_NOTIFY"}
                ]}"#
            ),
            "linux.seccomp.syscalls[3].action: SCMP_ACT_NOTIFY is not supported"
        );
        assert_eq!(
            error(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#),
            "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY is not supported"
        );
        assert!(
            error(r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}"#)
                .starts_with("linux.seccomp.listenerPath: `/run/agent.sock`")
        );
    }

    #[test]
    fn argument_index_past_five_is_refused() {
        assert_eq!(
            error(
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                              {"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}
                ]}"#
            ),
            "linux.seccomp.syscalls[0].args[1].index: 6 is out of range \
             (a system call has arguments 0 to 5)"
        );
    }

    #[test]
    fn unknown_operator_action_and_flag_are_refused_by_deserialization() {
        for json in [
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_SOMETIMES"}]}]}"#,
            r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#,
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_FAST"]}"#,
        ] {
            let e = serde_json::from_str::<LinuxSeccomp>(json).unwrap_err();
            assert!(e.to_string().contains("unknown variant"), "{e}");
        }
    }

    #[test]
    fn flags_other_than_log_and_spec_allow_are_refused() {
        let t = translate(&profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#,
        ))
        .unwrap();
        assert_eq!(t.unapplied_flags.len(), 2);
        assert_eq!(
            error(
                r#"{"defaultAction": "SCMP_ACT_ALLOW",
                    "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_TSYNC"]}"#
            ),
            "linux.seccomp.flags[1]: SECCOMP_FILTER_FLAG_TSYNC is not supported \
             (only SECCOMP_FILTER_FLAG_LOG and SECCOMP_FILTER_FLAG_SPEC_ALLOW are)"
        );
    }

    #[test]
    fn errno_ret_is_checked() {
        assert_eq!(
            error(
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}"#
            ),
            "linux.seccomp.syscalls[0].errnoRet: SCMP_ACT_ALLOW takes no errno \
             (only SCMP_ACT_ERRNO and SCMP_ACT_TRACE do)"
        );
        assert_eq!(
            error(r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5000}"#),
            "linux.seccomp.defaultErrnoRet: 5000 is out of range for SCMP_ACT_ERRNO (at most 4095)"
        );
    }

    #[test]
    fn empty_name_is_refused_and_unknown_names_are_skipped() {
        assert_eq!(
            error(
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                    {"names": ["read", ""], "action": "SCMP_ACT_ALLOW"}]}"#
            ),
            "linux.seccomp.syscalls[0].names[1]: an empty string is not a system call name"
        );
        let t = translate(&profile(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["_llseek", "read", "arm_fadvise64_64"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["_llseek", "no_such_call"], "action": "SCMP_ACT_LOG"}]}"#,
        ))
        .unwrap();
        assert_eq!(
            t.skipped_syscalls,
            vec!["_llseek", "arm_fadvise64_64", "no_such_call"]
        );
        assert_eq!(t.enosys_above, Some(0), "read is the only known name");
    }
}
