//! Running a script of cases inside the nested-KVM testbed (tests/testbed/run)
//! and parsing its `=== BEGIN name` / `=== END name rc=N` sections.

use super::{duet_bin, is_root, skip};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One case's combined output and exit status.
pub struct Case {
    pub output: String,
    pub rc: i32,
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn guest_kernel() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("duet/kernel/current/vmlinux")
}

pub fn duet_init() -> PathBuf {
    duet_bin().with_file_name("duet-init")
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// Why the testbed cannot run here, if it cannot.
pub fn missing() -> Option<String> {
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

/// The isolation probe cargo builds beside duet (`duet bench isolation` needs it).
pub fn duet_probe() -> PathBuf {
    duet_bin().with_file_name("duet-probe")
}

/// Runs `script` (a file under tests/testbed/) in one testbed boot, with
/// duet, duet-init and (if built) duet-probe packed in.
pub fn run_cases(script: &str) -> Result<BTreeMap<String, Case>, String> {
    run_cases_with(script, &[])
}

/// Like [`run_cases`], with more `--file HOST[:GUEST]` arguments for the testbed.
pub fn run_cases_with(script: &str, files: &[String]) -> Result<BTreeMap<String, Case>, String> {
    let args: Vec<String> = files
        .iter()
        .flat_map(|f| ["--file".to_string(), f.clone()])
        .collect();
    run_cases_args(script, &args)
}

/// Like [`run_cases`], with more arguments for tests/testbed/run
/// (`--file HOST[:GUEST]`, `--with-libs PROGRAM`, ...).
pub fn run_cases_args(script: &str, extra: &[String]) -> Result<BTreeMap<String, Case>, String> {
    let mut cmd = std::process::Command::new(repo().join("tests/testbed/run"));
    if duet_probe().is_file() {
        cmd.arg("--file").arg(format!(
            "{}:/usr/local/bin/duet-probe",
            duet_probe().display()
        ));
    }
    cmd.args(extra);
    let out = cmd
        .args(["--timeout", "1200", "--file"])
        .arg(repo().join("tests/testbed/cases-lib.sh"))
        .arg("--file")
        .arg(repo().join("tests/testbed").join(script))
        .args(["--", "sh", &format!("/testbed/files/{script}")])
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
}

/// Splits testbed output into cases.
pub fn parse(text: &str) -> BTreeMap<String, Case> {
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

/// The case `name` from `cases`, or None (after [`skip`]) when the testbed cannot run.
pub fn case<'a>(
    test: &str,
    cases: &'a std::sync::OnceLock<Result<BTreeMap<String, Case>, String>>,
    script: &str,
    name: &str,
) -> Option<&'a Case> {
    case_with(test, cases, script, name, &[])
}

/// [`case`], booting the testbed with `extra` arguments ([`run_cases_args`]).
pub fn case_with<'a>(
    test: &str,
    cases: &'a std::sync::OnceLock<Result<BTreeMap<String, Case>, String>>,
    script: &str,
    name: &str,
    extra: &[String],
) -> Option<&'a Case> {
    if let Some(why) = missing() {
        skip(test, &format!("the nested-KVM testbed {why}"));
        return None;
    }
    match cases.get_or_init(|| run_cases_args(script, extra)) {
        Ok(c) => Some(
            c.get(name)
                .unwrap_or_else(|| panic!("case {name} did not run; cases: {:?}", c.keys())),
        ),
        Err(e) => panic!("{e}"),
    }
}
