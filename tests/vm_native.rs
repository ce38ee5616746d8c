//! `--isolation vm` bad input, checked on any host: each fails before a
//! guest runs, with an error naming the file, and leaves nothing behind.

mod common;
use common::*;
use std::path::PathBuf;

fn guest_kernel() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("duet/kernel/current/vmlinux")
}

fn run_vm_with_kernel(env: &Env, kernel: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["run", "--isolation", "vm"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["busybox", "--", "true"]);
    let o = env.cmd(&args).env("DUET_KERNEL", kernel).output().unwrap();
    (o.status.code().unwrap_or(-1), stderr(&o))
}

#[test]
fn missing_kernel_says_how_to_build_it() {
    if skip_unless_root("missing_kernel_says_how_to_build_it") {
        return;
    }
    let env = Env::new();
    let (rc, e) = run_vm_with_kernel(&env, "/nonexistent/vmlinux", &[]);
    assert_eq!(rc, 125, "{e}");
    assert!(e.contains("/nonexistent/vmlinux"), "{e}");
    assert!(e.contains("images/kernel/build.sh"), "{e}");
    assert!(env.instances().is_empty());
}

#[test]
fn a_file_that_is_not_a_kernel_is_named() {
    if skip_unless_root("a_file_that_is_not_a_kernel_is_named") {
        return;
    }
    let env = Env::new();
    let junk = env.root().join("junk-kernel");
    std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
    let (rc, e) = run_vm_with_kernel(&env, junk.to_str().unwrap(), &[]);
    assert_eq!(rc, 125, "{e}");
    assert!(e.contains("junk-kernel"), "{e}");
    assert!(e.contains("not"), "{e}");
    assert!(env.instances().is_empty());
}

#[test]
fn memory_too_small_for_the_kernel() {
    if skip_unless_root("memory_too_small_for_the_kernel") {
        return;
    }
    if !guest_kernel().is_file() {
        skip(
            "memory_too_small_for_the_kernel",
            "needs the guest kernel (images/kernel/build.sh)",
        );
        return;
    }
    let env = Env::new();
    let k = guest_kernel();
    let (rc, e) = run_vm_with_kernel(&env, k.to_str().unwrap(), &["--memory", "4"]);
    assert_eq!(rc, 125, "{e}");
    assert!(e.contains("vmlinux") && e.contains("4"), "{e}");
    assert!(env.instances().is_empty());
}
