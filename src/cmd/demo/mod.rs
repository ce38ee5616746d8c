//! `duet demo`: one small workload run as a container and as a microVM, on
//! the embedded defaults (the busybox image, duet's guest kernel), shown side
//! by side: each side's output, its startup timeline, the memory of one idle
//! instance, and the isolation facts on which the two differ.
//!
//! The VM half runs natively where KVM accelerates; elsewhere inside the
//! nested-KVM testbed if it is available (one boot runs the workload, the
//! probe and the memory measurement), else the demo says why it is skipped
//! and how to get it. `--explain` narrates each step as it happens.
//!
//! `--scenario pristine-db` is the testing claim instead ([`pristine`]).

mod pristine;

use crate::cmd::bench::{
    self, place_vm, probe_in, probe_on_host, probe_run_args, run_testbed, section_ok,
    testbed_section, BenchImage, Scratch, VmPlace, VmVia,
};
use anyhow::{bail, Context, Result};
use clap::Args;
use duet_bench::instances::{interrupt, MemoryResult};
use duet_bench::isolation::{self, Canary, IsolationRow, Verdict};
use duet_bench::report::Report;
use duet_bench::startup::{parse_run_report, tail, RowStatus};
use duet_probe::ProbeReport;
use duet_shared::{Isolation, Phase, RunReport};
use std::process::Command;

/// What `duet demo` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One workload as a container and as a microVM, side by side.
    Classic,
    /// A pristine PostgreSQL per test, four ways (5 tests each; needs the
    /// image images/postgres/build.sh makes).
    PristineDb,
}

/// Arguments of `duet demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Narrate each step in plain words, with what it cost.
    #[arg(long)]
    pub explain: bool,
    /// Which demo.
    #[arg(long, value_enum, default_value_t = Scenario::Classic)]
    pub scenario: Scenario,
    /// Where the microVM half runs (auto: natively if KVM accelerates, else in the testbed).
    #[arg(long, value_enum, default_value_t = VmVia::Auto)]
    pub vm_via: VmVia,
}

/// The workload both sides run: who am I, which kernel, what can I see.
const WORKLOAD: &str = "echo \"hello from $(hostname)\"; \
echo \"kernel $(uname -r)\"; \
echo \"PID 1 is $(cat /proc/1/comm)\"; \
echo \"$(ls -d /proc/[0-9]* | wc -l) processes visible\"; \
echo \"$(grep MemTotal /proc/meminfo | tr -s ' ')\"";

/// What one side produced.
#[derive(Default)]
struct Half {
    /// Column title.
    title: String,
    /// The workload's stdout.
    output: String,
    /// The run's timeline.
    report: Option<RunReport>,
    /// The backend's own `--explain` lines.
    explain: Vec<String>,
    /// One idle instance's memory.
    memory: Option<MemoryResult>,
    /// The probe from inside, or why not.
    probe: Option<std::result::Result<ProbeReport, String>>,
    /// Why the half did not run (skipped or failed), if it did not.
    error: Option<String>,
    /// True if `error` is a failure rather than a skip.
    failed: bool,
    /// Where it ran when not natively.
    place: Option<String>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Terminal width: `$COLUMNS`, the tty's size, else 100; kept within 72..=160.
fn term_width() -> usize {
    if let Some(c) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
    {
        return c.clamp(72, 160);
    }
    // SAFETY: winsize is plain old data; zeroed is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the winsize we own; a non-tty fd just fails.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 {
        (ws.ws_col as usize).clamp(72, 160)
    } else {
        100
    }
}

/// Cuts or pads `s` to exactly `w` characters.
fn fit(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n > w {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        format!("{s}{}", " ".repeat(w - n))
    }
}

/// Two columns of lines, side by side.
fn side_by_side(left: &[String], right: &[String], width: usize) -> String {
    let w = (width - 3) / 2;
    let mut out = String::new();
    for i in 0..left.len().max(right.len()) {
        let l = left.get(i).map(String::as_str).unwrap_or("");
        let r = right.get(i).map(String::as_str).unwrap_or("");
        let line = format!("{} │ {}", fit(l, w), fit(r, w));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Wraps `s` into lines of at most `w` characters, at spaces where possible
/// (a longer word is cut).
fn wrap(s: &str, w: usize) -> Vec<String> {
    let w = w.max(8);
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in s.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        if !cur.is_empty() && cur.chars().count() + 1 + word.len() > w {
            lines.push(std::mem::take(&mut cur));
        }
        while word.len() > w {
            let rest = word.split_off(w - cur.chars().count());
            cur.extend(word);
            lines.push(std::mem::take(&mut cur));
            word = rest;
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.extend(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// What a phase means, in plain words, per isolation.
fn phase_story(isolation: &str, p: Phase) -> &'static str {
    let vm = isolation == "vm";
    match p {
        Phase::Start => "duet started",
        Phase::SpecLoaded => "read the workload spec and found the busybox image's layers",
        Phase::RootfsReady if vm => {
            "packed the image's layers and duet's guest init into an initramfs (cached per image)"
        }
        Phase::RootfsReady => {
            "mounted the image's read-only layers under a fresh writable layer (overlayfs)"
        }
        Phase::NamespacesCreated => {
            "clone() made the container's first process in new PID, mount, UTS, IPC and network namespaces"
        }
        Phase::CgroupApplied => "put that process into its own cgroup (memory and CPU limits)",
        Phase::PivotDone => {
            "pivot_root: the overlay became its / and the host's file tree was detached"
        }
        Phase::VmCreated => {
            "jailed the VMM (own namespaces, a root holding only kernel, disks and /dev/kvm), \
             then KVM_CREATE_VM: a new virtual machine, guest memory mapped into it"
        }
        Phase::KernelLoaded => {
            "copied duet's guest kernel and the initramfs into guest memory, wrote boot parameters"
        }
        Phase::VcpusStarted => {
            "dropped every capability and switched to an unprivileged uid, then started the \
             vCPU threads (KVM_RUN): the guest kernel boots"
        }
        Phase::Ready if vm => {
            "the guest kernel booted and ran duet's init, which set up /proc and /dev; next: execve of the workload"
        }
        Phase::Ready => {
            "dropped capabilities, set no_new_privs, installed the seccomp filter; next: execve of the workload"
        }
        Phase::Exited if vm => "the workload ran and exited; the guest init reported its status and reset the VM",
        Phase::Exited => "the workload ran and exited",
        Phase::CleanedUp if vm => "freed guest memory and removed the instance directory",
        Phase::CleanedUp => "unmounted the overlay, removed the cgroup and the instance directory",
    }
}

/// Groups consecutive backend lines that do the same thing to different
/// objects (`creating device a`, `creating device b` -> `creating device a, b`;
/// `masking proc/x`, `masking proc/y` -> `masking proc/x, proc/y`). The verb is
/// the first word, plus the second unless that is already a path.
fn condense(lines: &[String]) -> Vec<String> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for l in lines {
        let l = l
            .trim()
            .trim_start_matches("duet: ")
            .trim_start_matches("container init: ");
        if l.is_empty() {
            continue;
        }
        let words: Vec<&str> = l.splitn(3, ' ').collect();
        let (key, rest) = match words.as_slice() {
            [a, b, rest] if !b.contains('/') => (format!("{a} {b}"), rest.to_string()),
            [a, b, rest] => (a.to_string(), format!("{b} {rest}")),
            [a, b] if b.contains('/') => (a.to_string(), b.to_string()),
            _ => (l.to_string(), String::new()),
        };
        match out.last_mut() {
            Some((k, items)) if *k == key && !rest.is_empty() => items.push(rest),
            _ => out.push((key, vec![rest])),
        }
    }
    out.into_iter()
        .map(|(k, items)| {
            let items: Vec<String> = items.into_iter().filter(|i| !i.is_empty()).collect();
            if items.is_empty() {
                k
            } else {
                format!("{k} {}", items.join(", "))
            }
        })
        .collect()
}

/// Splits `duet run --report json` stdout into the workload's output and the report.
fn split_run_stdout(stdout: &[u8]) -> (String, Option<RunReport>) {
    let s = String::from_utf8_lossy(stdout).into_owned();
    match s.rfind("{\n  \"schema\"") {
        Some(i) => (s[..i].to_string(), parse_run_report(&stdout[i..]).ok()),
        None => (s, None),
    }
}

/// `duet run` arguments for the demo workload.
fn run_args(iso: Isolation, explain: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--isolation",
        &iso.to_string(),
        "--hostname",
        "duet-demo",
        // The demo compares isolation, not networking: no bridge on the host.
        "--network",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(["--report".to_string(), "json".to_string()]);
    if explain {
        a.push("--explain".into());
    }
    a.extend(["busybox", "--", "sh", "-c", WORKLOAD].map(String::from));
    a
}

struct Narrator {
    on: bool,
}

impl Narrator {
    fn say(&self, text: &str) {
        if self.on {
            for l in wrap(text, term_width() - 4) {
                eprintln!("  {l}");
            }
        }
    }

    fn step(&self, title: &str) {
        if self.on {
            let mut lines = wrap(title, term_width() - 2).into_iter();
            eprintln!("\n▶ {}", lines.next().unwrap_or_default());
            for l in lines {
                eprintln!("  {l}");
            }
        } else {
            eprintln!("duet demo: {title}");
        }
    }

    /// The backend's own lines, condensed, then each phase with its cost.
    fn after_run(&self, isolation: &str, backend: &[String], report: Option<&RunReport>) {
        if !self.on {
            return;
        }
        // Paths under the state root are long and all alike: name the root once.
        let root = duet_shared::paths::state_root().display().to_string();
        let short: Vec<String> = backend
            .iter()
            .map(|l| l.replace(&root, "$DUET_ROOT"))
            .collect();
        let lines = condense(&short);
        if !lines.is_empty() {
            eprintln!("  what duet did, as the backend tells it:");
            let w = term_width() - 8;
            for l in lines {
                for (i, part) in wrap(&l, w).into_iter().enumerate() {
                    eprintln!("    {}{part}", if i == 0 { "" } else { "  " });
                }
            }
        }
        if let Some(r) = report {
            eprintln!("  where the time went:");
            for (phase, _, delta) in r.rows().into_iter().skip(1) {
                eprintln!(
                    "    {:>9.1} ms  {:<18} {}",
                    delta as f64 / 1e6,
                    phase.name(),
                    phase_story(isolation, phase)
                );
            }
            if !r.counters.is_empty() {
                let c: Vec<String> = r.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                for l in wrap(&format!("counters: {}", c.join(", ")), term_width() - 6) {
                    eprintln!("    {l}");
                }
            }
        }
    }
}

/// Runs the container half (or a native VM half) on this host.
fn native_half(
    iso: Isolation,
    title: &str,
    args: &DemoArgs,
    probe_args: Option<&[String]>,
) -> Half {
    let n = Narrator { on: args.explain };
    let mut h = Half {
        title: title.to_string(),
        ..Half::default()
    };
    let Ok(exe) = std::env::current_exe() else {
        h.error = Some("cannot locate the duet binary".into());
        h.failed = true;
        return h;
    };
    n.step(&format!("{title}: running the workload"));
    match iso {
        Isolation::Container => n.say(
            "duet clones a process into new namespaces (its own PIDs, mounts, hostname, IPC and \
             network), mounts the busybox image as an overlay with a private writable layer, \
             pivot_roots into it, puts it in a cgroup, drops capabilities, installs a seccomp \
             filter and execs the workload. Same kernel as the host: no boot.",
        ),
        Isolation::Vm => n.say(
            "duet forks a jailed VMM (its own namespaces, a root holding only the kernel, disks \
             and /dev/kvm), which creates a KVM virtual machine, maps its memory, loads duet's \
             own Linux kernel and an initramfs made from the busybox image, drops every \
             privilege, starts the vCPUs, and the guest kernel boots and runs duet's init, \
             which execs the workload.",
        ),
    }
    let out = Command::new(&exe)
        .args(run_args(iso, args.explain))
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let (output, report) = split_run_stdout(&o.stdout);
            h.output = output;
            h.report = report;
            h.explain = String::from_utf8_lossy(&o.stderr)
                .lines()
                .map(str::to_string)
                .collect();
            if !o.status.success() {
                h.error = Some(format!(
                    "duet run --isolation {iso} exited with {}: {}",
                    o.status,
                    tail(&o.stderr)
                ));
                h.failed = true;
                return h;
            }
            n.after_run(&iso.to_string(), &h.explain, h.report.as_ref());
        }
        Err(e) => {
            h.error = Some(format!("running {}: {e}", exe.display()));
            h.failed = true;
            return h;
        }
    }
    if let Some(pa) = probe_args {
        n.step(&format!("{title}: the isolation probe, from inside"));
        n.say(
            "The same probe binary runs on the host and inside: it reads the kernel, \
             namespaces, mounts, capabilities and cgroups, and tries things isolation should \
             stop (load a module, reboot, open /proc/sysrq-trigger, find a file the host made).",
        );
        h.probe = Some(probe_in(iso, pa).map_err(|e| crate::cmd::error_chain(&e)));
    }
    n.step(&format!("{title}: memory of one idle instance"));
    n.say(
        "An instance that just sleeps; its processes' PSS (proportional set size: pages shared \
         with others count by their share) is what one more instance costs the host.",
    );
    match bench::demo_memory(iso) {
        Ok(m) => h.memory = Some(m),
        Err(e) => h.memory = Some(memory_failed(&crate::cmd::error_chain(&e))),
    }
    h
}

fn memory_failed(why: &str) -> MemoryResult {
    MemoryResult {
        label: String::new(),
        kind: duet_bench::Kind::Vm,
        status: RowStatus::Failed(why.to_string()),
        samples: 0,
        pss_kib: None,
        private_kib: None,
        shared_kib: None,
        processes: 0,
        last_rollup: None,
        notes: Vec::new(),
    }
}

/// Runs the VM half inside the testbed: one boot, three sections.
fn testbed_half(
    tb: &bench::Testbed,
    doctor: &str,
    args: &DemoArgs,
    probe: Option<&std::path::Path>,
    probe_args: Option<&[String]>,
) -> Half {
    let n = Narrator { on: args.explain };
    let title = "microVM (own kernel)";
    let mut h = Half {
        title: title.to_string(),
        place: Some("in the nested-KVM testbed: 50-100x slower than hardware KVM".into()),
        ..Half::default()
    };
    if args.explain {
        n.step(&format!(
            "{title}: this host cannot boot a Linux guest ({doctor}), so the microVM runs \
             inside the nested-KVM testbed: an outer Linux under QEMU's emulator with a real KVM"
        ));
    } else {
        eprintln!("duet demo: {title}: {doctor}");
        eprintln!("duet demo: {title}: running it inside the nested-KVM testbed (about 30 s)");
    }
    n.say(
        "In there duet forks a jailed VMM, which creates a KVM virtual machine, maps its \
         memory, loads duet's own Linux kernel and an initramfs made from the busybox image, \
         drops every privilege, starts the vCPUs, and the guest \
         kernel boots and runs duet's init, which execs the workload. Three guests boot: the \
         probe, an idle one for memory, then the workload (by then the image and its \
         initramfs are built, as on a warm host). Every step is emulated, so expect seconds \
         where hardware takes milliseconds.",
    );
    // The testbed starts with an empty store: the first run builds the busybox
    // image and its initramfs. The workload runs last so its timeline is warm.
    let mut script = String::new();
    if let Some(pa) = probe_args {
        let mut p = vec!["duet".to_string()];
        p.extend(probe_run_args(Isolation::Vm, pa));
        script += &testbed_section("probe", &p);
    }
    let mem: Vec<String> = [
        "duet",
        "bench",
        "memory",
        "--isolation",
        "vm",
        "--samples",
        "1",
        "--vm-via",
        "native",
        "--no-peers",
        "--report-json",
        "-",
    ]
    .map(String::from)
    .to_vec();
    script += &testbed_section("memory", &mem);
    let mut run = vec!["duet".to_string()];
    run.extend(run_args(Isolation::Vm, args.explain));
    script += &testbed_section("run", &run);
    let sections = match run_testbed(tb, probe, &script, 240, "microVM half") {
        Ok(s) => s,
        Err(e) => {
            h.error = Some(crate::cmd::error_chain(&e));
            h.failed = true;
            return h;
        }
    };
    if let Some(s) = sections.get("run.stderr") {
        h.explain = s.output.lines().map(str::to_string).collect();
    }
    match section_ok(&sections, "run") {
        Ok(text) => {
            let (output, report) = split_run_stdout(text.as_bytes());
            h.output = output;
            h.report = report;
            n.after_run("vm", &h.explain, h.report.as_ref());
        }
        Err(e) => {
            h.error = Some(crate::cmd::error_chain(&e));
            h.failed = true;
            return h;
        }
    }
    if probe_args.is_some() {
        h.probe = Some(
            section_ok(&sections, "probe")
                .and_then(|t| {
                    isolation::parse_probe(t.as_bytes(), "duet vm").map_err(anyhow::Error::from)
                })
                .map_err(|e| crate::cmd::error_chain(&e)),
        );
    }
    h.memory = Some(
        match section_ok(&sections, "memory").and_then(|t| {
            serde_json::from_str::<Report>(t.trim()).context("memory section: not a bench report")
        }) {
            Ok(r) => r
                .memory
                .into_iter()
                .next()
                .unwrap_or_else(|| memory_failed("no memory row")),
            Err(e) => memory_failed(&crate::cmd::error_chain(&e)),
        },
    );
    h
}

fn timeline(h: &Half, iso: &str) -> Vec<String> {
    let Some(r) = &h.report else {
        return vec![h.error.clone().unwrap_or_else(|| "no timeline".into())];
    };
    let mut v = vec![format!("{:<19} {:>10} {:>11}", "phase", "at", "step")];
    for (p, since, delta) in r.rows().into_iter().skip(1) {
        v.push(format!(
            "{:<19} {:>7.1} ms {:>+8.1} ms",
            p.name(),
            since as f64 / 1e6,
            delta as f64 / 1e6
        ));
    }
    if iso == "vm" {
        if let Some(b) = r.counters.get("initramfs_bytes") {
            v.push(format!("initramfs {:.1} MB", *b as f64 / 1e6));
        }
    }
    v
}

fn memory_lines(h: &Half) -> Vec<String> {
    let Some(m) = &h.memory else {
        return vec![h.error.clone().unwrap_or_else(|| "not measured".into())];
    };
    match &m.status {
        RowStatus::Measured => {
            let med = |s: Option<duet_bench::stats::Summary>| s.map_or(0.0, |s| s.median) / 1024.0;
            vec![
                format!("PSS {:.1} MiB in {} processes", med(m.pss_kib), m.processes),
                format!(
                    "private {:.1} MiB, share of shared pages {:.1} MiB",
                    med(m.private_kib),
                    med(m.shared_kib)
                ),
            ]
        }
        RowStatus::Unavailable(w) | RowStatus::Failed(w) => {
            wrap(&format!("not measured: {w}"), 200)
        }
    }
}

fn verdict_word(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Shared) => "SHARED with the host",
        Some(Verdict::Isolated) => "isolated",
        Some(Verdict::NotApplicable) => "n/a",
        None => "",
    }
}

/// Prints everything side by side.
fn show(c: &Half, v: &Half, host: Option<&ProbeReport>, width: usize) {
    let w = (width - 3) / 2;
    let rule = "─".repeat(width);
    let head = |t: &str| println!("\n{t}\n{rule}");
    let title = |h: &Half| match &h.place {
        Some(p) => format!("{} — {p}", h.title),
        None => h.title.clone(),
    };
    let col = |h: &Half, lines: Vec<String>| -> Vec<String> {
        match (&h.error, h.report.is_some()) {
            (Some(_), false) if h.failed => vec!["FAILED (see above)".to_string()],
            (Some(_), false) => vec!["not run (see above)".to_string()],
            _ => lines,
        }
    };
    println!("duet demo: the same workload as a container and as a microVM");
    println!("workload: sh -c '{WORKLOAD}'");
    for h in [c, v] {
        if let Some(e) = &h.error {
            let what = if h.failed { "FAILED" } else { "not run" };
            println!();
            for l in wrap(&format!("{}: {what}: {e}", h.title), width) {
                println!("{l}");
            }
        }
    }
    head("Output");
    print!(
        "{}",
        side_by_side(&wrap(&title(c), w), &wrap(&title(v), w), width)
    );
    let out_lines = |h: &Half| col(h, h.output.lines().map(str::to_string).collect());
    print!("{}", side_by_side(&out_lines(c), &out_lines(v), width));
    head("Startup timeline (ms since duet started)");
    print!(
        "{}",
        side_by_side(
            &col(c, timeline(c, "container")),
            &col(v, timeline(v, "vm")),
            width
        )
    );
    let total = |h: &Half| {
        h.report
            .as_ref()
            .and_then(|r| r.since_start_ns(Phase::Ready))
            .map(|ns| ns as f64 / 1e6)
    };
    if let (Some(a), Some(b)) = (total(c), total(v)) {
        println!(
            "ready to exec the workload: container after {a:.1} ms, microVM after {b:.1} ms ({:.0}x){}",
            b / a.max(0.001),
            if v.place.is_some() {
                " — the microVM figure is from the nested testbed, not hardware"
            } else {
                ""
            }
        );
    }
    head("Memory of one idle instance (host view)");
    print!(
        "{}",
        side_by_side(&col(c, memory_lines(c)), &col(v, memory_lines(v)), width)
    );
    head("Isolation: where the two differ (probe run on the host and inside each)");
    let mut cols: Vec<(String, ProbeReport)> = Vec::new();
    let mut notes = Vec::new();
    for (label, h) in [("container", c), ("microVM", v)] {
        match &h.probe {
            Some(Ok(p)) => cols.push((label.to_string(), p.clone())),
            Some(Err(e)) => notes.push(format!("{label}: probe failed: {e}")),
            None if h.error.is_none() => notes.push(format!("{label}: not probed")),
            None => {}
        }
    }
    match host {
        Some(host) if !cols.is_empty() => {
            let mut t = isolation::compare(host, &cols);
            isolation::add_vmm_row(&mut t, host, &cols, &crate::cmd::vmm_jail());
            let both = cols.len() == 2;
            let rows: Vec<&IsolationRow> = t
                .rows
                .iter()
                .filter(|r| {
                    if both {
                        r.differs()
                    } else {
                        r.cells.get(1).and_then(|c| c.verdict) == Some(Verdict::Shared)
                    }
                })
                .collect();
            if !both {
                println!(
                    "only the {} was probed; rows it shares with the host:",
                    cols[0].0
                );
            }
            for r in rows {
                println!("{}", r.fact);
                let cell = |i: usize| -> Vec<String> {
                    match r.cells.get(i) {
                        Some(c) => {
                            let mut v =
                                wrap(&format!("{}: {}", verdict_word(c.verdict), c.value), w - 2);
                            v.extend(wrap(&c.why, w - 2));
                            v.into_iter().map(|l| format!("  {l}")).collect()
                        }
                        None => Vec::new(),
                    }
                };
                if both {
                    print!("{}", side_by_side(&cell(1), &cell(2), width));
                } else {
                    for l in cell(1) {
                        println!("{l}");
                    }
                }
            }
        }
        _ => println!("no probe results to compare"),
    }
    for n in notes {
        for l in wrap(&n, width) {
            println!("{l}");
        }
    }
}

/// `duet demo`.
pub fn demo(args: DemoArgs) -> Result<()> {
    interrupt::install();
    if args.scenario == Scenario::PristineDb {
        return pristine::demo(&args, &Narrator { on: args.explain });
    }
    let width = term_width();
    let n = Narrator { on: args.explain };
    n.step("preparing: the busybox image (with the isolation probe) and a canary file");
    n.say(
        "Both sides run the same image: busybox, built from the host's busybox-static, plus \
         /bin/duet-probe. The canary is a file with a random token in the host's state \
         directory; the probe looks for it from inside.",
    );
    let image = BenchImage::prepare()?;
    let scratch = Scratch::new(&image.store, "demo")?;
    let canary = Canary::create(scratch.path())?;
    let pargs = isolation::probe_args(&canary);
    let probe_missing = image.probe_missing();
    if let Some(why) = &probe_missing {
        eprintln!("duet demo: no isolation rows: {why}");
    }
    let probe_args = probe_missing.is_none().then_some(pargs.as_slice());
    let host = match probe_on_host(image.probe.as_deref(), &pargs) {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!(
                "duet demo: probe on the host failed: {}",
                crate::cmd::error_chain(&e)
            );
            None
        }
    };
    let c = if is_root() {
        native_half(
            Isolation::Container,
            "container (host kernel)",
            &args,
            probe_args,
        )
    } else {
        Half {
            title: "container (host kernel)".into(),
            error: Some(
                "needs root (namespaces, mounts and cgroups); run duet demo as root".into(),
            ),
            ..Half::default()
        }
    };
    let v = if interrupt::requested() {
        Half {
            title: "microVM (own kernel)".into(),
            error: Some("interrupted".into()),
            ..Half::default()
        }
    } else {
        match place_vm(args.vm_via) {
            VmPlace::Native(env) => {
                let mut h = native_half(Isolation::Vm, "microVM (own kernel)", &args, probe_args);
                h.place = env;
                h
            }
            VmPlace::Testbed(tb, line) => {
                testbed_half(&tb, &line, &args, image.probe.as_deref(), probe_args)
            }
            VmPlace::Missing(why) => Half {
                title: "microVM (own kernel)".into(),
                error: Some(why),
                ..Half::default()
            },
        }
    };
    show(&c, &v, host.as_ref(), width);
    drop(canary);
    let failed: Vec<String> = [&c, &v]
        .iter()
        .filter(|h| h.failed)
        .map(|h| h.title.clone())
        .collect();
    if !failed.is_empty() {
        bail!("demo half failed: {}", failed.join(", "));
    }
    if interrupt::requested() {
        bail!("interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condense_groups_repeated_steps() {
        let lines: Vec<String> = [
            "duet: container init: creating device dev/null (1:3)",
            "duet: container init: creating device dev/zero (1:5)",
            "duet: container init: pivot_root into the overlay root",
            "duet: container init: masking proc/acpi",
            "duet: container init: masking proc/kcore",
            "duet: container init: making proc/bus read-only",
            "duet: container init: making proc/fs read-only",
            "duet: container init: setting umask 22",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            condense(&lines),
            vec![
                "creating device dev/null (1:3), dev/zero (1:5)",
                "pivot_root into the overlay root",
                "masking proc/acpi, proc/kcore",
                "making proc/bus read-only, proc/fs read-only",
                "setting umask 22",
            ]
        );
    }

    #[test]
    fn columns_fit_the_width() {
        let s = side_by_side(
            &["short".to_string(), "x".repeat(200)],
            &["right".to_string()],
            81,
        );
        for l in s.lines() {
            assert!(l.chars().count() <= 81, "{l}");
        }
        assert!(s.lines().next().unwrap().starts_with("short"));
        assert!(s.lines().next().unwrap().contains("│ right"));
        assert!(s.lines().nth(1).unwrap().contains('…'));
    }

    #[test]
    fn run_stdout_splits_output_from_report() {
        let mut r = RunReport::start("container", "d", "busybox");
        r.mark(Phase::Ready);
        let out = format!("hello from x\nkernel 6\n{}\n", r.to_json());
        let (o, rep) = split_run_stdout(out.as_bytes());
        assert_eq!(o, "hello from x\nkernel 6\n");
        assert_eq!(rep.unwrap(), r);
        let (o, rep) = split_run_stdout(b"no report");
        assert_eq!(o, "no report");
        assert!(rep.is_none());
    }

    #[test]
    fn wrap_keeps_words_and_width() {
        let v = wrap("one two three four five six", 9);
        assert_eq!(v, vec!["one two", "three", "four five", "six"]);
        let v = wrap("ab abcdefghijklmnopqrst", 8);
        assert_eq!(v, vec!["ab", "abcdefgh", "ijklmnop", "qrst"]);
    }
}
