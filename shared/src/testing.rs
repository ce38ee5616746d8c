//! The one way a duet test says it cannot run here.
//!
//! Every test in the workspace that needs something a host may lack (root,
//! /dev/kvm, a program, the nested-KVM testbed) asks [`skip`] before giving
//! up. Without `DUET_TEST_STRICT=1` it prints `SKIPPED <test>: <why>` and the
//! test returns early; with it (scripts/test.sh, CI) the test fails, so a
//! green strict run means every test really ran.

use std::path::{Path, PathBuf};

/// The environment variable that turns every skip into a failure.
pub const STRICT_ENV: &str = "DUET_TEST_STRICT";

/// Whether `DUET_TEST_STRICT=1` is set.
pub fn strict() -> bool {
    std::env::var_os(STRICT_ENV).is_some_and(|v| v == "1")
}

/// Says why `test` cannot run here and returns true (the caller returns);
/// under `DUET_TEST_STRICT=1` panics instead, failing the test.
pub fn skip(test: &str, why: &str) -> bool {
    if strict() {
        panic!("{test} cannot run: {why} ({STRICT_ENV}=1 forbids skipping)");
    }
    eprintln!("SKIPPED {test}: {why}");
    true
}

/// The running test's name as libtest names its thread (e.g.
/// `seccomp::tests::denied`), for helpers shared by many tests.
pub fn this_test() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("this test")
        .to_string()
}

/// Whether the process runs as root (uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Skips (see [`skip`]) unless running as root; `what` says what needs it.
pub fn skip_unless_root(test: &str, what: &str) -> bool {
    !is_root() && skip(test, &format!("needs root ({what})"))
}

/// `program` itself if it is a path, else the first match on `PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(program);
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Skips unless `program` (a path, or a name looked up on `PATH`) exists;
/// the reason names the Debian package `apt_pkg` that provides it.
pub fn skip_unless_program(test: &str, program: &str, apt_pkg: &str) -> bool {
    find_program(program).is_none()
        && skip(
            test,
            &format!("needs {program} (apt-get install {apt_pkg})"),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_by_path_and_name() {
        assert!(find_program("/bin/sh").is_some());
        assert!(find_program("sh").is_some());
        assert!(find_program("/nonexistent/duet-no-such").is_none());
        assert!(find_program("duet-no-such-program").is_none());
    }

    #[test]
    fn this_test_is_the_libtest_thread_name() {
        // libtest runs each test on a thread named after it (with more than one
        // test thread); with one thread the fallback is used.
        let name = this_test();
        assert!(
            name == "testing::tests::this_test_is_the_libtest_thread_name" || name == "this test",
            "{name}"
        );
    }

    /// Helper subprocess of the test below, not a test of its own: ignored, so
    /// it is never counted; the parent runs it with `--ignored --exact`.
    #[test]
    #[ignore = "helper subprocess of skip_fails_under_strict_and_returns_true_otherwise"]
    fn skip_child() {
        skip("child", "no reason");
    }

    #[test]
    fn skip_fails_under_strict_and_returns_true_otherwise() {
        // A subprocess keeps the environment change away from other tests.
        let me = std::env::current_exe().unwrap();
        let run = |strict: &str| {
            std::process::Command::new(&me)
                .args([
                    "--ignored",
                    "--exact",
                    "testing::tests::skip_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(STRICT_ENV, strict)
                .output()
                .unwrap()
        };
        let lax = run("0");
        assert!(lax.status.success());
        assert!(String::from_utf8_lossy(&lax.stderr).contains("SKIPPED child: no reason"));
        let strict = run("1");
        assert!(!strict.status.success());
        let out = String::from_utf8_lossy(&strict.stdout).into_owned()
            + &String::from_utf8_lossy(&strict.stderr);
        assert!(
            out.contains("child cannot run: no reason (DUET_TEST_STRICT=1 forbids skipping)"),
            "{out}"
        );
    }
}
