//! `scripts/install.sh` installs a whole duet: installed under a DESTDIR and
//! started from `/`, with no checkout and no build cache in reach, duet finds
//! its guest init, kernel and the nested-KVM testbed among the installed
//! files (`duet doctor` names them), and runs a container.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn installed_duet_finds_its_files_from_any_directory() {
    let test = "installed_duet_finds_its_files_from_any_directory";
    if skip_unless_program(test, "qemu-system-x86_64", "qemu-system-x86") {
        return;
    }
    std::fs::create_dir_all("/var/tmp/duet-tests").unwrap();
    let t = tempfile::Builder::new()
        .prefix("install-")
        .tempdir_in("/var/tmp/duet-tests")
        .unwrap();
    let dest = t.path().join("dest");
    // A stand-in guest kernel in a cache of its own: the install copies it.
    let cache = t.path().join("cache");
    std::fs::create_dir_all(cache.join("duet/kernel/current")).unwrap();
    std::fs::write(
        cache.join("duet/kernel/current/vmlinux"),
        b"stand-in kernel",
    )
    .unwrap();
    let bin_dir = duet_bin().parent().unwrap().to_path_buf();
    let o = Command::new(repo().join("scripts/install.sh"))
        .arg("--files-only")
        .env("DESTDIR", &dest)
        .env("DUET_BIN_DIR", &bin_dir)
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "install.sh failed: {}", stderr(&o));

    let prefix = dest.join("usr/local");
    let lib = prefix.join("lib/duet");
    for f in [
        "duet-init",
        "duet-probe",
        "vmlinux",
        "testbed/run",
        "testbed/init.sh",
        "testbed/installed",
    ] {
        assert!(
            lib.join(f).is_file(),
            "{} not installed",
            lib.join(f).display()
        );
    }
    let duet = prefix.join("bin/duet");

    // From `/`, with an empty cache and nothing in the environment pointing
    // anywhere: everything comes from the install.
    let empty = t.path().join("empty-cache");
    std::fs::create_dir_all(&empty).unwrap();
    let installed = |args: &[&str]| {
        let mut c = Command::new(&duet);
        c.args(args)
            .current_dir("/")
            .env("XDG_CACHE_HOME", &empty)
            .env("DUET_ROOT", t.path().join("state"));
        for v in [
            "DUET_INIT",
            "DUET_KERNEL",
            "DUET_PROBE",
            "DUET_TESTBED_RUN",
            "DUET_GUEST_KERNEL_DIR",
        ] {
            c.env_remove(v);
        }
        c.output().unwrap()
    };
    let o = installed(&["doctor"]);
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.contains("nested-KVM testbed:"))
        .unwrap_or_else(|| panic!("no testbed line:\n{out}"));
    assert_eq!(
        line.trim(),
        format!(
            "nested-KVM testbed: {} (guest kernel from {}, init {})",
            lib.join("testbed/run").display(),
            lib.display(),
            lib.join("duet-init").display()
        ),
        "{out}"
    );

    // A container from the installed binary, started from `/`.
    if !skip_unless_root(test) {
        let o = installed(&["run", "busybox", "--", "echo", "from the install"]);
        assert_eq!(stdout(&o), "from the install\n", "{}", stderr(&o));
    }
}
