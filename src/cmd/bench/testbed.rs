//! Running VM scenarios inside the nested-KVM testbed (`tests/testbed/run`)
//! when this host's KVM does not accelerate: finding it, deciding where VM
//! rows run, and the `=== name` sections its output is split into.

use super::*;

/// The nested-KVM testbed script and the guest init to pack with it.
#[derive(Debug, Clone)]
pub struct Testbed {
    /// `tests/testbed/run`.
    pub run: PathBuf,
    /// duet-init for this duet: beside it (a checkout build) or installed with it.
    pub init: Option<PathBuf>,
    /// The guest kernel's directory (`vmlinux`, maybe `bzImage`), passed as
    /// DUET_GUEST_KERNEL_DIR: the build cache's, or the installed one.
    pub kernel_dir: Option<PathBuf>,
    /// Pack QEMU inside too (`--qemu`), for the QEMU microvm peer row.
    pub qemu: bool,
    /// Pack dockerd, containerd, the runc shim, runc and the docker CLI
    /// (when this host has them), for the `docker run --runtime duet-vm` rows.
    pub docker: bool,
    /// Extra files, `HOST:GUEST` (`tests/testbed/run --file`).
    pub files: Vec<String>,
    /// Extra programs packed at their own path with their libraries
    /// (`tests/testbed/run --with-libs`).
    pub with_libs: Vec<PathBuf>,
    /// The outer machine's memory, MiB (the testbed's default if none).
    pub memory_mib: Option<u32>,
}

/// What a dockerd inside the testbed needs, packed with their libraries.
const DOCKER_PROGRAMS: &[&str] = &[
    "dockerd",
    "docker",
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
];

/// Where VM rows can run on this host.
#[derive(Debug, Clone)]
pub enum VmPlace {
    /// On this host's /dev/kvm; the string says where that is if not plain hardware.
    Native(Option<String>),
    /// In the testbed; the string is the doctor's one-line reason.
    Testbed(Testbed, String),
    /// Nowhere; the reason and how to get VM rows.
    Missing(String),
}

/// The doctor's verdict and the first sentence of its advice, on one line.
pub fn doctor_line(d: &duet_vmm::doctor::DoctorReport) -> String {
    let first = d
        .advice
        .split_inclusive(". ")
        .next()
        .unwrap_or(&d.advice)
        .trim();
    format!("KVM {}: {first}", d.verdict.name())
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// Finds the testbed script: `$DUET_TESTBED_RUN`, tests/testbed/run above
/// the running binary (target/<triple>/<profile>/duet in a checkout), then
/// the copy scripts/install.sh puts beside an installed duet
/// (`<prefix>/lib/duet/testbed/run`, then /usr/local/lib/duet/testbed/run).
fn find_testbed_script() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("DUET_TESTBED_RUN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the duet binary: {e}"))?;
    let tried: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .map(|d| d.join("tests/testbed/run"))
        .chain(duet_shared::paths::installed("testbed/run"))
        .collect();
    tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "no testbed script: not in a checkout above {} and not installed at {} \
             (scripts/install.sh installs it; or set DUET_TESTBED_RUN)",
            exe.display(),
            duet_shared::paths::installed("testbed/run")
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )
    })
}

/// The guest kernel directory the testbed packs: `$DUET_GUEST_KERNEL_DIR`, the
/// build cache's `current`, then the installed kernel's directory.
fn find_guest_kernel_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("DUET_GUEST_KERNEL_DIR").filter(|p| !p.is_empty()) {
        let d = PathBuf::from(d);
        return if d.join("vmlinux").is_file() {
            Ok(d)
        } else {
            Err(format!(
                "no guest kernel at {}",
                d.join("vmlinux").display()
            ))
        };
    }
    let mut tried = vec![duet_shared::paths::cache_dir().join("kernel/current/vmlinux")];
    tried.extend(duet_shared::paths::installed("vmlinux"));
    match tried.iter().find(|p| p.is_file()) {
        Some(k) => Ok(k.parent().expect("a file has a parent").to_path_buf()),
        None => Err(format!(
            "no guest kernel at {} (build it with images/kernel/build.sh, or run scripts/install.sh)",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )),
    }
}

/// The testbed, or why it cannot run here.
pub fn find_testbed() -> Result<Testbed, String> {
    let run = find_testbed_script()?;
    if !run.is_file() {
        return Err(format!("{} does not exist", run.display()));
    }
    if which("qemu-system-x86_64").is_none() {
        return Err(
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".to_string(),
        );
    }
    let kernel_dir = find_guest_kernel_dir()?;
    // The same lookup `duet run --isolation vm` uses: DUET_INIT, beside duet, installed.
    let init = duet_vmm::rootfs::find_init_binary().map_err(|e| {
        format!(
            "{} (cargo build --workspace, or scripts/install.sh)",
            crate::cmd::error_chain(&anyhow::Error::new(e))
        )
    })?;
    Ok(Testbed {
        run,
        init: Some(init),
        kernel_dir: Some(kernel_dir),
        qemu: false,
        docker: false,
        files: Vec::new(),
        with_libs: Vec::new(),
        memory_mib: None,
    })
}

/// `duet doctor`'s line about the nested-KVM testbed: what it would use, or
/// why it cannot run (so an installed duet shows it found its own copy).
pub fn doctor_testbed_line() -> String {
    match find_testbed() {
        Ok(tb) => format!(
            "  nested-KVM testbed: {} (guest kernel from {}, init {})",
            tb.run.display(),
            tb.kernel_dir.as_deref().unwrap_or(Path::new("?")).display(),
            tb.init.as_deref().unwrap_or(Path::new("?")).display()
        ),
        Err(why) => format!("  nested-KVM testbed: cannot run: {why}"),
    }
}

/// Decides where VM rows run. Inside the testbed (`DUET_TESTBED=1`) VMs are native by definition.
pub fn place_vm(via: VmVia) -> VmPlace {
    let inside = std::env::var_os("DUET_TESTBED").is_some_and(|v| v == "1");
    match via {
        VmVia::Skip => return VmPlace::Missing("not run (--vm-via skip)".to_string()),
        VmVia::Native => {
            return VmPlace::Native(inside.then(|| "inside the nested-KVM testbed".to_string()))
        }
        VmVia::Auto if inside => {
            return VmPlace::Native(Some("inside the nested-KVM testbed".to_string()))
        }
        _ => {}
    }
    let doctor = duet_vmm::doctor::diagnose();
    let line = doctor_line(&doctor);
    if via == VmVia::Auto && doctor.verdict == duet_vmm::doctor::Verdict::Accelerated {
        return VmPlace::Native(None);
    }
    match find_testbed() {
        Ok(tb) => VmPlace::Testbed(tb, line),
        Err(why) => VmPlace::Missing(format!(
            "{line} The nested-KVM testbed cannot run either: {why}. For VM rows use a host \
             with hardware KVM (bare metal, or a cloud VM with nested virtualization), or \
             install qemu-system-x86 and build the guest kernel (images/kernel/build.sh) for \
             the testbed."
        )),
    }
}

/// POSIX single-quoting of one word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// One `sec NAME CMD...` of a testbed script, output bracketed by markers.
pub fn testbed_section(name: &str, argv: &[String]) -> String {
    let words: Vec<String> = argv.iter().map(|a| sh_quote(a)).collect();
    format!("sec {} {}\n", sh_quote(name), words.join(" "))
}

/// Prelude of a testbed script: `sec NAME CMD...` prints `=== BEGIN NAME`,
/// CMD's stdout, `=== END NAME rc=N`, then CMD's stderr as section
/// `NAME.stderr`, then how long CMD took (outside any section, so a testbed
/// that runs out of time shows in its console tail where the time went).
pub const TESTBED_PRELUDE: &str = r#"sec() {
    n="$1"; shift
    sec_err="${TMPDIR:-/tmp}/duet-section.$$.err"
    sec_t0=$(date +%s)
    echo "=== BEGIN $n"
    "$@" 2>"$sec_err"
    rc=$?
    echo "=== END $n rc=$rc"
    echo "duet-testbed: section $n took $(( $(date +%s) - sec_t0 )) s"
    echo "=== BEGIN $n.stderr"
    cat "$sec_err"
    rm -f "$sec_err"
    echo "=== END $n.stderr rc=0"
}
echo "=== BEGIN outer_kernel"; uname -r -v; echo "=== END outer_kernel rc=0"
"#;

/// A section's output and exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Everything between the markers.
    pub output: String,
    /// The command's exit status.
    pub rc: i32,
}

/// Splits testbed output into sections. An END marker may follow output
/// that did not end its last line (`printf x`): that text belongs to the section.
pub fn parse_sections(text: &str) -> BTreeMap<String, Section> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let mut line = line.trim_end_matches('\r');
        if let (Some((_, o)), Some(i)) = (current.as_mut(), line.find("=== END ")) {
            o.push_str(&line[..i]);
            line = &line[i..];
        }
        if let Some(name) = line.strip_prefix("=== BEGIN ") {
            current = Some((name.to_string(), String::new()));
        } else if let Some(rest) = line.strip_prefix("=== END ") {
            if let (Some((name, output)), Some((_, rc))) = (current.take(), rest.split_once(" rc="))
            {
                out.insert(
                    name,
                    Section {
                        output,
                        rc: rc.trim().parse().unwrap_or(-1),
                    },
                );
            }
        } else if let Some((_, o)) = current.as_mut() {
            o.push_str(line);
            o.push('\n');
        }
    }
    out
}

/// Runs `script` (after [`TESTBED_PRELUDE`]) in one testbed boot with this
/// duet, its duet-init and the probe packed in; returns its sections.
pub fn run_testbed(
    tb: &Testbed,
    probe: Option<&Path>,
    script: &str,
    timeout_s: u64,
    what: &str,
) -> Result<BTreeMap<String, Section>> {
    let exe = std::env::current_exe().context("locating the duet binary")?;
    let mut cmd = Command::new(&tb.run);
    cmd.arg("--timeout").arg(timeout_s.to_string());
    if tb.qemu {
        cmd.arg("--qemu");
    }
    for f in &tb.files {
        cmd.arg("--file").arg(f);
    }
    for p in &tb.with_libs {
        cmd.arg("--with-libs").arg(p);
    }
    if let Some(m) = tb.memory_mib {
        cmd.arg("--memory").arg(m.to_string());
    }
    if tb.docker {
        let found: Vec<_> = DOCKER_PROGRAMS
            .iter()
            .filter_map(|p| duet_shared::testing::find_program(p))
            .collect();
        // All or nothing: without one of them the docker rows say why inside.
        if found.len() == DOCKER_PROGRAMS.len() {
            for p in found {
                cmd.arg("--with-libs").arg(p);
            }
        }
    }
    if let Some(p) = probe {
        cmd.arg("--file")
            .arg(format!("{}:/usr/local/bin/duet-probe", p.display()));
    }
    // nftables for duet's bridge network (the network rows), and a
    // registry for the first-run rows (pull + unpack + start).
    for program in ["nft", "docker-registry"] {
        if let Some(p) = duet_shared::testing::find_program(program) {
            cmd.arg("--with-libs").arg(p);
        }
    }
    cmd.args(["--", "sh", "-c"])
        .arg(format!("{TESTBED_PRELUDE}{script}"))
        .env("DUET_BIN", &exe)
        .stdin(std::process::Stdio::null());
    if let Some(i) = &tb.init {
        cmd.env("DUET_INIT", i);
    }
    if let Some(k) = &tb.kernel_dir {
        cmd.env("DUET_GUEST_KERNEL_DIR", k);
    }
    let sp = spinner(format!("{what} (nested-KVM testbed, up to {timeout_s} s)"));
    let out = cmd.output();
    sp.finish_and_clear();
    let out = out.with_context(|| format!("running {}", tb.run.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.code() == Some(125) {
        bail!(
            "the testbed itself failed ({}): {}",
            tb.run.display(),
            startup::tail(&out.stderr)
        );
    }
    let sections = parse_sections(&text);
    if sections.is_empty() {
        bail!(
            "{} printed no sections (exit {}): {}",
            tb.run.display(),
            out.status,
            startup::tail(&out.stdout)
        );
    }
    Ok(sections)
}

/// A section's output, or an error naming it with its stderr.
pub fn section_ok<'a>(s: &'a BTreeMap<String, Section>, name: &str) -> Result<&'a str> {
    let sec = s
        .get(name)
        .with_context(|| format!("testbed section `{name}` missing"))?;
    if sec.rc != 0 {
        let err = s
            .get(&format!("{name}.stderr"))
            .map(|e| startup::tail(e.output.as_bytes()))
            .unwrap_or_default();
        bail!("`{name}` in the testbed exited with {}: {err}", sec.rc);
    }
    Ok(&sec.output)
}

/// Inner `duet bench` arguments for one scenario run inside the testbed;
/// `peers` lets the inner run add its peer rows (the QEMU microvm row of a
/// VM startup run).
pub(super) fn inner_bench_args(
    scenario: &str,
    isolation: &str,
    peers: bool,
    extra: &[String],
) -> Vec<String> {
    let mut a: Vec<String> = [
        "duet",
        "bench",
        scenario,
        "--isolation",
        isolation,
        "--vm-via",
        "native",
        "--report-json",
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !peers {
        a.push("--no-peers".into());
    }
    a.extend(extra.iter().cloned());
    a
}

/// Pristine-db tests inside the testbed (at most), and at once.
const TESTBED_PRISTINE_TESTS: usize = 4;
const TESTBED_PRISTINE_PARALLEL: usize = 2;

/// The PostgreSQL image as a `duet image save` archive in the bench's
/// scratch directory, or why there is none.
fn pristine_archive(b: &Bench, p: &PristineArgs) -> Result<PathBuf, String> {
    let store = &b.image.store;
    let img = store.get(&p.pg_image).map_err(|_| {
        format!(
            "no image `{}` in {}: images/postgres/build.sh makes it",
            p.pg_image,
            store.root().display()
        )
    })?;
    let out = b.scratch.path().join("pristine.tar");
    duet_shared::image::save_image(store, &img, &out)
        .map_err(|e| format!("saving `{}` for the testbed: {e}", p.pg_image))?;
    Ok(out)
}

/// Network rows' counts inside the testbed (at most).
const TESTBED_NET_PINGS: usize = 500;
const TESTBED_NET_BULK_MIB: usize = 32;
const TESTBED_NET_HTTP: usize = 400;

/// Runs the VM part of `plan` in one testbed boot and merges its rows into
/// `b.report`; returns the VM's probe column for the isolation table.
pub(super) fn vm_in_testbed(
    b: &mut Bench,
    tb: &Testbed,
    doctor: &str,
    common: &CommonArgs,
    plan: &Plan,
    canary: Option<&Canary>,
) -> Result<Vec<(String, Result<ProbeReport>)>> {
    let runs = common
        .testbed_runs
        .min(plan.startup.as_ref().map_or(usize::MAX, |a| a.runs))
        .max(1);
    let mut script = String::new();
    let mut boots = 0usize;
    // (section, scenario, isolation) of the inner `duet bench` runs.
    let mut benches: Vec<(String, &str, &str)> = Vec::new();
    // The QEMU microvm peer runs with the VM startup rows, inside.
    let qemu_row = plan.startup.is_some() && !common.no_peers;
    let mut add = |scenario: &'static str, iso: &'static str, extra: Vec<String>| {
        let name = format!("{scenario}-{iso}");
        let peers = qemu_row && scenario == "startup" && iso == "vm";
        script += &testbed_section(&name, &inner_bench_args(scenario, iso, peers, &extra));
        benches.push((name, scenario, iso));
    };
    // The Firecracker peer: the user's binary, packed at its own path; a
    // given path that is no program goes in as given, and the row inside
    // says so.
    let mut with_libs = Vec::new();
    let mut fc_arg = None;
    if let Some(a) = plan.startup.as_ref().filter(|_| qemu_row) {
        let explicit = a.firecracker.as_deref();
        match firecracker::detect(explicit).binary {
            Some(fc) => {
                let fc = std::fs::canonicalize(&fc).unwrap_or(fc);
                fc_arg = Some(fc.display().to_string());
                with_libs.push(fc);
            }
            None => fc_arg = explicit.map(|p| p.display().to_string()),
        }
    }
    if plan.startup.is_some() {
        let extra = vec![
            "--runs".to_string(),
            runs.to_string(),
            "--warmup".into(),
            "1".into(),
        ];
        let mut vm_extra = extra.clone();
        if let Some(fc) = &fc_arg {
            vm_extra.extend(["--firecracker".to_string(), fc.clone()]);
        }
        add("startup", "vm", vm_extra);
        // The same container start inside the same emulated machine: the only
        // fair ratio against a VM measured there.
        add("startup", "container", extra);
        // The VM start rows, then the lifecycle rows: `run -d` (warm-up and
        // runs) and one instance to exec into.
        boots += runs + 1 + runs + 2;
        if qemu_row {
            // duet run --keep for the initramfs, QEMU's warm-up and runs;
            // `docker run --runtime duet-vm`'s warm-up and runs.
            boots += runs + 2 + runs + 1;
        }
        if !with_libs.is_empty() {
            // The same for Firecracker.
            boots += runs + 2;
        }
    }
    if let Some(m) = &plan.memory {
        let samples = m.samples.min(2);
        add(
            "memory",
            "vm",
            vec!["--samples".into(), samples.to_string()],
        );
        boots += samples;
    }
    if let Some(d) = &plan.density {
        let k = d.max.min(TESTBED_DENSITY_MAX);
        add("density", "vm", vec!["--max".into(), k.to_string()]);
        // Cold VMs, the template, warm clones, then detached VMs.
        boots += k + 1 + k + k;
    }
    if let Some(n) = &plan.network {
        // Emulated, everything is 50-100x slower: smaller counts, the same for both rows.
        let small = NetArgs {
            pings: n.pings.min(TESTBED_NET_PINGS),
            bulk_mib: n.bulk_mib.min(TESTBED_NET_BULK_MIB),
            http_clients: n.http_clients,
            http_requests: n.http_requests.min(TESTBED_NET_HTTP),
        };
        add("network", "vm", small.args());
        // The same servers in a container inside the same emulated machine.
        add("network", "container", small.args());
        // A boot, and the time of the measuring itself.
        boots += 4;
    }
    // The pristine-db rows: the PostgreSQL image goes in as a `duet image
    // save` archive and is imported first; the outer machine gets the
    // memory for it (the archive, its layers, their erofs images, 2 VMs).
    let mut files = Vec::new();
    let mut memory_mib = None;
    // Sections that run before the others (the image import).
    let mut pre = String::new();
    if let Some(p) = &plan.pristine {
        match pristine_archive(b, p) {
            Ok(archive) => {
                files.push(format!("{}:/testbed/files/pristine.tar", archive.display()));
                memory_mib = Some(6144);
                pre += &testbed_section(
                    "pristine-image",
                    &[
                        "duet".into(),
                        "image".into(),
                        "import".into(),
                        "--format".into(),
                        "docker".into(),
                        "--name".into(),
                        p.pg_image.clone(),
                        "/testbed/files/pristine.tar".into(),
                    ],
                );
                let args = p.args(TESTBED_PRISTINE_TESTS, TESTBED_PRISTINE_PARALLEL);
                add("pristine-db", "vm", args.clone());
                add("pristine-db", "container", args);
                // Emulated: the import of the ~210 MB archive (unpacked and
                // hashed) and the layers' erofs images, then per test a VM
                // boot, PostgreSQL's start and the test, and the container rows;
                // the clones' template (a boot and its snapshot) and each clone;
                // the per-test strategies once per P.
                let n = TESTBED_PRISTINE_TESTS.min(p.tests);
                let sweep = p
                    .capped(TESTBED_PRISTINE_TESTS, TESTBED_PRISTINE_PARALLEL)
                    .sweep()
                    .len();
                boots += 6 + sweep * (3 * n + 2 + n);
            }
            Err(why) => {
                for r in super::pristine::unavailable_rows(p, &[Isolation::Vm], &why) {
                    super::pristine::say_pristine(&r);
                    b.report.pristine.push(r);
                }
            }
        }
    }
    let probe_ok = plan.isolation && b.image.probe_missing().is_none();
    if let (true, Some(c)) = (probe_ok, canary) {
        let mut argv = vec!["duet".to_string()];
        argv.extend(probe_run_args(Isolation::Vm, &isolation::probe_args(c)));
        script += &testbed_section("probe-vm", &argv);
        boots += 1;
    }
    let timeout = 120 + 40 * boots as u64;
    eprintln!(
        "duet bench: starting the nested-KVM testbed for the VM rows (about {boots} VM boots' \
         worth; a boot takes seconds there)"
    );
    let tb = Testbed {
        qemu: qemu_row,
        docker: qemu_row,
        files,
        with_libs,
        memory_mib,
        ..tb.clone()
    };
    let script = format!("{pre}{script}");
    let sections = run_testbed(&tb, b.image.probe.as_deref(), &script, timeout, "VM rows")?;
    let outer = sections
        .get("outer_kernel")
        .map(|s| s.output.trim().to_string())
        .unwrap_or_else(|| "?".into());
    b.report.vm_environment = Some(format!(
        "nested-KVM testbed (tests/testbed/run): an outer Linux {outer} under QEMU TCG with \
         emulated AMD SVM runs kvm-amd, and duet's VMM runs there; everything is 50-100x \
         slower than on hardware KVM, so compare VM rows with the `(testbed)` container row, \
         not with native ones. {runs} timed VM starts instead of the usual count. This host: \
         {doctor}"
    ));
    let merge = |name: &str, b: &mut Bench| -> Result<()> {
        let text = section_ok(&sections, name)?;
        let inner: Report = serde_json::from_str(text.trim())
            .with_context(|| format!("testbed section `{name}`: not a bench report"))?;
        for mut s in inner.startup {
            if let (true, RowStatus::Failed(why)) = (name == "startup-container", &s.status) {
                bail!("{why}");
            }
            s.label = format!("{} (testbed)", s.label);
            say_startup(&s);
            b.report.startup.push(s);
        }
        for mut s in inner.lifecycle {
            s.label = format!("{} (testbed)", s.label);
            say_startup(&s);
            b.report.lifecycle.push(s);
        }
        for mut m in inner.memory {
            m.label = format!("{} (testbed)", m.label);
            say_memory(&m);
            b.report.memory.push(m);
        }
        for mut d in inner.density {
            d.label = format!("{} (testbed)", d.label);
            say_density(&d);
            b.report.density.push(d);
        }
        for mut d in inner.disk {
            d.label = format!("{} (testbed)", d.label);
            b.report.disk.push(d);
        }
        for mut p in inner.pristine {
            p.label = format!("{} (testbed)", p.label);
            super::pristine::say_pristine(&p);
            b.report.pristine.push(p);
        }
        for mut n in inner.network {
            n.label = format!("{} (testbed)", n.label);
            super::network::say_network(&n);
            b.report.network.push(n);
        }
        for n in inner.notes {
            let n = format!("testbed: {n}");
            if !b.report.notes.contains(&n) {
                b.report.notes.push(n);
            }
        }
        Ok(())
    };
    for (name, scenario, iso) in &benches {
        if let Err(e) = merge(name, b) {
            let why = crate::cmd::error_chain(&e);
            eprintln!("  {name}: {why}");
            if *iso == "container" {
                // Only a reference for the VM row: a note, not a failed row of its own.
                b.report.notes.push(format!(
                    "no container row from inside the testbed (the same-machine reference for \
                     the VM row): {why}"
                ));
            } else {
                if qemu_row && name == "startup-vm" {
                    let label = format!("{} (testbed)", qemu::detect().label());
                    add_failed_row(&mut b.report, scenario, &label, iso, why.clone());
                }
                add_failed_row(
                    &mut b.report,
                    scenario,
                    &format!("duet {iso} (testbed)"),
                    iso,
                    why,
                );
            }
        }
    }
    if let Some(med) = testbed_ratio(&b.report) {
        b.report.notes.push(med);
    }
    let mut cols = Vec::new();
    if plan.isolation {
        let label = "duet vm (testbed)".to_string();
        let r = if !probe_ok {
            Err(anyhow::anyhow!(
                "{}",
                b.image.probe_missing().unwrap_or_default()
            ))
        } else {
            section_ok(&sections, "probe-vm").and_then(|t| {
                isolation::parse_probe(t.as_bytes(), &label).map_err(anyhow::Error::from)
            })
        };
        cols.push((label, r));
    }
    Ok(cols)
}

/// "inside the testbed a VM start took Nx a container start", from the two testbed rows.
pub(super) fn testbed_ratio(r: &Report) -> Option<String> {
    let med = |label: &str| {
        r.startup
            .iter()
            .find(|s| s.label == label)
            .and_then(|s| s.wall_ms)
            .map(|w| w.median)
    };
    let (vm, c) = (med("duet vm (testbed)")?, med("duet container (testbed)")?);
    Some(format!(
        "inside the same nested testbed, a VM start (median {vm:.0} ms) took {:.0}x a container \
         start (median {c:.1} ms)",
        vm / c
    ))
}

/// "duet vm vs a VM peer" medians (`peer_label` starts the peer's row
/// label), from two measured rows of one place (both native, or both in
/// the same testbed run).
pub(super) fn peer_ratio(r: &Report, peer_label: &str, peer_name: &str) -> Option<String> {
    let median = |pred: &dyn Fn(&str) -> bool| {
        r.startup
            .iter()
            .find(|s| pred(&s.label) && s.status == RowStatus::Measured)
            .and_then(|s| Some((s.label.clone(), s.wall_ms?.median)))
    };
    ["", " (testbed)"].iter().find_map(|place| {
        let (dl, d) = median(&|l| l == format!("duet vm{place}"))?;
        let (ql, q) = median(&|l| {
            l.starts_with(peer_label)
                && l.ends_with(place)
                && !(place.is_empty() && l.ends_with(")"))
        })?;
        Some(format!(
            "VM start on the same guest kernel, initramfs and command line: {dl} median {d:.0} ms \
             vs {ql} median {q:.0} ms (duet/{peer_name} {:.2}x)",
            d / q
        ))
    })
}

/// [`peer_ratio`] against each VM peer that has a measured row.
pub(super) fn vm_peer_ratios(r: &Report) -> Vec<String> {
    [(qemu::LABEL, "QEMU"), (firecracker::LABEL, "Firecracker")]
        .iter()
        .filter_map(|(label, name)| peer_ratio(r, label, name))
        .collect()
}
