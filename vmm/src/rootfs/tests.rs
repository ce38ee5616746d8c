//! Tests of the initramfs builder: archives are parsed back with a small
//! newc reader written here (and, where installed, GNU cpio), layers are real
//! directories with real whiteouts (device nodes and the trusted xattr need
//! root; those tests say so and skip without it).

use super::cpio::{CpioHeader, CpioWriter, TRAILER};
use super::merge::{MergedTree, NodeKind};
use super::*;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;

/// One parsed archive entry.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    h: CpioHeader,
    data: Vec<u8>,
}

/// Parses one newc archive from `buf`; returns its entries (without the
/// trailer) and the number of bytes it took, checking alignment on the way.
fn parse(buf: &[u8]) -> (Vec<Entry>, usize) {
    let align = |n: usize| (n + 3) & !3;
    let mut off = 0;
    let mut out = Vec::new();
    loop {
        assert_eq!(off % 4, 0, "entry at unaligned offset {off}");
        let hdr = &buf[off..off + 110];
        assert_eq!(&hdr[..6], b"070701", "bad magic at {off}");
        let field = |i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&hdr[6 + 8 * i..14 + 8 * i]).unwrap(),
                16,
            )
            .unwrap()
        };
        let h = CpioHeader {
            ino: field(0),
            mode: field(1),
            uid: field(2),
            gid: field(3),
            nlink: field(4),
            mtime: field(5),
            filesize: field(6),
            rdev_major: field(9),
            rdev_minor: field(10),
        };
        let namesize = field(11) as usize;
        assert_eq!(field(12), 0, "check field");
        let name_start = off + 110;
        let name = &buf[name_start..name_start + namesize];
        assert_eq!(name.last(), Some(&0), "name not NUL-terminated");
        let name = String::from_utf8(name[..namesize - 1].to_vec()).unwrap();
        let data_start = align(name_start + namesize);
        let data = buf[data_start..data_start + h.filesize as usize].to_vec();
        off = align(data_start + h.filesize as usize);
        if name == TRAILER {
            return (out, off);
        }
        out.push(Entry { name, h, data });
    }
}

fn find<'a>(entries: &'a [Entry], name: &str) -> Option<&'a Entry> {
    entries.iter().find(|e| e.name == name)
}

use duet_shared::testing::{is_root, skip, skip_unless_program, skip_unless_root};

fn mknod(p: &Path, mode: u32, rdev: u64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path that outlives the call.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, rdev) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn write(p: &Path, data: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn archive(tree: &MergedTree) -> Vec<u8> {
    let mut w = CpioWriter::new(Vec::new());
    tree.write_cpio(&mut w).unwrap();
    w.finish().unwrap()
}

fn sample_workload() -> GuestWorkload {
    GuestWorkload {
        argv: vec!["sh".into(), "-c".into(), "echo \"hi\"; exit 7".into()],
        env: vec!["PATH=/bin".into(), "X=a b".into()],
        workdir: "/tmp".into(),
        hostname: "vm1".into(),
        pids_max: Some(32),
        agent: false,
        user: None,
        files: Vec::new(),
        network: None,
        template: false,
        tty: None,
    }
}

/// A static ELF stand-in for the init: the real one if built, else busybox.
fn static_binary() -> Option<PathBuf> {
    find_init_binary()
        .ok()
        .into_iter()
        .chain(["/bin/busybox", "/usr/bin/busybox"].map(PathBuf::from))
        .find(|p| check_static_elf(p).is_ok())
}

#[test]
fn cpio_writer_output_parses_back() {
    let mut w = CpioWriter::new(Vec::new());
    let dir = CpioHeader {
        ino: 1,
        mode: libc::S_IFDIR | 0o755,
        nlink: 2,
        ..Default::default()
    };
    w.entry(&dir, b"etc", &[]).unwrap();
    let file = CpioHeader {
        ino: 2,
        mode: libc::S_IFREG | 0o4755,
        uid: 1000,
        gid: 100,
        nlink: 1,
        mtime: 1_700_000_000,
        filesize: 5,
        ..Default::default()
    };
    // Odd name and data lengths exercise the padding.
    w.entry_from(&file, b"etc/hosts", &b"hello"[..]).unwrap();
    let dev = CpioHeader {
        ino: 3,
        mode: libc::S_IFCHR | 0o600,
        nlink: 1,
        rdev_major: 5,
        rdev_minor: 1,
        ..Default::default()
    };
    w.entry(&dev, b"console", &[]).unwrap();
    let buf = w.finish().unwrap();
    assert_eq!(buf.len() % 4, 0);
    let (entries, used) = parse(&buf);
    assert_eq!(used, buf.len());
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["etc", "etc/hosts", "console"]);
    assert_eq!(entries[1].h, file);
    assert_eq!(entries[1].data, b"hello");
    assert_eq!(entries[2].h, dev);
}

#[test]
fn cpio_writer_refuses_short_data_and_bad_names() {
    let mut w = CpioWriter::new(Vec::new());
    let h = CpioHeader {
        mode: libc::S_IFREG | 0o644,
        nlink: 1,
        filesize: 10,
        ..Default::default()
    };
    let e = w.entry_from(&h, b"f", &b"short"[..]).unwrap_err();
    assert!(e.to_string().contains("changed while archiving"), "{e}");
    let mut w = CpioWriter::new(Vec::new());
    assert!(w.entry(&h, b"", &[0; 10]).is_err());
    assert!(w.entry(&h, b"a\0b", &[0; 10]).is_err());
    assert!(w.entry(&h, b"a", &[0; 3]).is_err());
}

#[test]
fn gnu_cpio_reads_the_archive() {
    if skip_unless_program("gnu_cpio_reads_the_archive", "cpio", "cpio") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("l");
    write(&layer.join("bin/tool"), "#!/bin/sh\n");
    symlink("tool", layer.join("bin/alias")).unwrap();
    let buf = archive(&MergedTree::from_layers(&[layer]).unwrap());
    let arc = t.path().join("a.cpio");
    std::fs::write(&arc, &buf).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("cpio -it --quiet < {}", arc.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["bin", "bin/alias", "bin/tool"]
    );
}

#[test]
fn upper_layer_overrides_lower_files() {
    let t = tempfile::tempdir().unwrap();
    let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
    write(&lower.join("etc/motd"), "lower");
    write(&lower.join("etc/keep"), "kept");
    write(&lower.join("opt"), "a file below");
    write(&upper.join("etc/motd"), "upper!");
    write(&upper.join("opt/app/run"), "a dir above");
    let tree = MergedTree::from_layers(&[lower, upper.clone()]).unwrap();
    let entries = parse(&archive(&tree)).0;
    assert_eq!(find(&entries, "etc/motd").unwrap().data, b"upper!");
    assert_eq!(find(&entries, "etc/keep").unwrap().data, b"kept");
    let opt = find(&entries, "opt").unwrap();
    assert_eq!(opt.h.mode & libc::S_IFMT, libc::S_IFDIR);
    assert_eq!(find(&entries, "opt/app/run").unwrap().data, b"a dir above");
    // And a file over a directory drops the directory's contents.
    let top = t.path().join("top");
    write(&top.join("etc"), "now a file");
    let tree = MergedTree::from_layers(&[t.path().join("lower"), upper, top]).unwrap();
    let names: Vec<_> = tree.paths().map(|p| p.display().to_string()).collect();
    assert!(names.contains(&"etc".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("etc/")), "{names:?}");
}

#[test]
fn whiteouts_and_opaque_dirs_apply() {
    if skip_unless_root(
        "whiteouts_and_opaque_dirs_apply",
        "whiteouts (0:0 char devices) and trusted xattrs",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
    write(&lower.join("etc/gone"), "deleted above");
    write(&lower.join("etc/stays"), "x");
    write(&lower.join("var/cache/a/b"), "deep");
    write(&lower.join("srv/old1"), "hidden by opaque");
    write(&lower.join("srv/sub/old2"), "hidden by opaque");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::create_dir_all(upper.join("var")).unwrap();
    mknod(&upper.join("etc/gone"), libc::S_IFCHR, 0);
    mknod(&upper.join("var/cache"), libc::S_IFCHR, 0);
    write(&upper.join("srv/new"), "visible");
    duet_shared::image::whiteout::set_opaque(&upper.join("srv")).unwrap();
    // A whiteout for a path no lower layer has is harmless.
    mknod(&upper.join("etc/never-existed"), libc::S_IFCHR, 0);

    let tree = MergedTree::from_layers(&[lower, upper]).unwrap();
    let names: Vec<String> = tree.paths().map(|p| p.display().to_string()).collect();
    assert_eq!(
        names,
        ["etc", "etc/stays", "srv", "srv/new", "var"],
        "merged tree"
    );
    // No whiteout device leaks into the archive.
    let entries = parse(&archive(&tree)).0;
    assert!(entries
        .iter()
        .all(|e| e.h.mode & libc::S_IFMT != libc::S_IFCHR));

    // A later layer can bring a whited-out path back.
    let again = t.path().join("again");
    write(&again.join("etc/gone"), "back");
    let mut tree = tree;
    tree.add_layer(&again).unwrap();
    assert!(tree.get(Path::new("etc/gone")).is_some());
}

#[test]
fn metadata_symlinks_devices_and_hard_links_survive() {
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    write(&l.join("bin/prog"), "binary");
    if is_root() {
        // Before chmod: chown clears the setuid bit.
        std::os::unix::fs::chown(l.join("bin/prog"), Some(1000), Some(1001)).unwrap();
    }
    std::fs::set_permissions(l.join("bin/prog"), std::fs::Permissions::from_mode(0o4711)).unwrap();
    symlink("../bin/prog", l.join("bin/link")).unwrap();
    std::fs::hard_link(l.join("bin/prog"), l.join("bin/prog2")).unwrap();
    std::fs::hard_link(l.join("bin/prog"), l.join("bin/prog3")).unwrap();
    let fifo =
        std::ffi::CString::new(l.join("bin/fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: fifo is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    if is_root() {
        mknod(
            &l.join("bin/null"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        );
        std::fs::set_permissions(l.join("bin/null"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        std::os::unix::fs::lchown(l.join("bin/link"), Some(7), Some(8)).unwrap();
    }
    // An upper layer removing one name leaves the other two linked.
    let up = t.path().join("up");
    write(&up.join("bin/prog3"), "replaced");

    let tree = MergedTree::from_layers(&[l, up]).unwrap();
    let entries = parse(&archive(&tree)).0;
    let prog = find(&entries, "bin/prog").unwrap();
    let prog2 = find(&entries, "bin/prog2").unwrap();
    assert_eq!(prog.h.mode, libc::S_IFREG | 0o4711);
    assert_eq!((prog.h.nlink, prog2.h.nlink), (2, 2));
    assert_eq!(prog.h.ino, prog2.h.ino);
    // Data once, with the first name; the kernel links the second to it.
    assert_eq!(prog.data, b"binary");
    assert!(prog2.data.is_empty());
    let prog3 = find(&entries, "bin/prog3").unwrap();
    assert_eq!(
        (prog3.h.nlink, prog3.data.as_slice()),
        (1, &b"replaced"[..])
    );
    assert_ne!(prog3.h.ino, prog.h.ino);
    let link = find(&entries, "bin/link").unwrap();
    assert_eq!(link.h.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(link.data, b"../bin/prog");
    let f = find(&entries, "bin/fifo").unwrap();
    assert_eq!(f.h.mode, libc::S_IFIFO | 0o640);
    // Every entry but the linked pair has its own inode number.
    let mut inos: Vec<u32> = entries.iter().map(|e| e.h.ino).collect();
    inos.sort();
    inos.dedup();
    assert_eq!(inos.len(), entries.len() - 1);
    if is_root() {
        let null = find(&entries, "bin/null").unwrap();
        assert_eq!(null.h.mode, libc::S_IFCHR | 0o666);
        assert_eq!((null.h.rdev_major, null.h.rdev_minor), (1, 3));
        assert_eq!((link.h.uid, link.h.gid), (7, 8));
        assert_eq!((prog.h.uid, prog.h.gid), (1000, 1001));
    }
}

#[test]
fn initramfs_is_cached_and_carries_init_and_workload() {
    let Some(init) = static_binary() else {
        skip(
            "initramfs_is_cached_and_carries_init_and_workload",
            "no static binary to stand in for duet-init (build it or install busybox-static)",
        );
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("layer");
    write(&layer.join("bin/hello"), "hi");
    let dirs = vec![layer];
    let digests = vec!["ab".repeat(32)];
    let w = sample_workload();
    let out1 = t.path().join("run1.cpio");
    let first = build_initramfs(t.path(), &dirs, &digests, &init, &w, &out1).unwrap();
    assert!(!first.cache_hit);
    assert!(first.image_cpio.starts_with(t.path().join("vm/initramfs")));
    assert_eq!(first.run_cpio, out1);

    let mut w2 = w.clone();
    w2.argv = vec!["true".into()];
    let out2 = t.path().join("run2.cpio");
    let second = build_initramfs(t.path(), &dirs, &digests, &init, &w2, &out2).unwrap();
    assert!(
        second.cache_hit,
        "second build with the same layers must hit"
    );
    assert_eq!(second.image_cpio, first.image_cpio);
    // Only one cache file, no temporary leftovers.
    let cached: Vec<_> = std::fs::read_dir(t.path().join("vm/initramfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");

    // The loaded initrd: the image archive, then the run archive right after.
    let mut initrd = vec![0u8; first.total_bytes() as usize];
    first.read_into(&mut initrd).unwrap();
    let (image, used) = parse(&initrd);
    assert_eq!(used as u64, first.image_bytes);
    let (run, used2) = parse(&initrd[used..]);
    assert_eq!((used + used2) as u64, first.total_bytes());
    let joined = t.path().join("initrd.cpio");
    first.concatenate(&joined).unwrap();
    assert_eq!(std::fs::read(&joined).unwrap(), initrd);

    let init_entry = find(&image, "duet/init").unwrap();
    assert_eq!(init_entry.h.mode, libc::S_IFREG | 0o755);
    assert_eq!(init_entry.data, std::fs::read(&init).unwrap());
    assert_eq!(find(&image, "duet").unwrap().h.mode, libc::S_IFDIR | 0o755);
    assert_eq!(find(&image, "bin/hello").unwrap().data, b"hi");
    let console = find(&image, "dev/console").unwrap();
    assert_eq!(
        (console.h.mode, console.h.rdev_major, console.h.rdev_minor),
        (libc::S_IFCHR | 0o600, 5, 1)
    );
    assert_eq!(run.len(), 1);
    assert_eq!(run[0].name, "duet/workload.json");
    let back = GuestWorkload::from_json(&run[0].data, Path::new(WORKLOAD_PATH)).unwrap();
    assert_eq!(back, w);
    let run2 = std::fs::read(&out2).unwrap();
    let back2 = GuestWorkload::from_json(&parse(&run2).0[0].data, Path::new("x")).unwrap();
    assert_eq!(back2, w2);

    // Another layer list is another cache entry.
    let third = build_initramfs(t.path(), &dirs, &["cd".repeat(32)], &init, &w, &out1).unwrap();
    assert!(!third.cache_hit);
    assert_ne!(third.image_cpio, first.image_cpio);
}

#[test]
fn truncated_cache_file_is_rebuilt() {
    let Some(init) = static_binary() else {
        skip(
            "truncated_cache_file_is_rebuilt",
            "no static binary to stand in for duet-init (build it or install busybox-static)",
        );
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("layer");
    write(&layer.join("f"), "data");
    let (dirs, digests) = (vec![layer], vec!["01".repeat(32)]);
    let out = t.path().join("run.cpio");
    let w = sample_workload();
    let first = build_initramfs(t.path(), &dirs, &digests, &init, &w, &out).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&first.image_cpio)
        .unwrap();
    f.set_len(first.image_bytes / 2).unwrap();
    let again = build_initramfs(t.path(), &dirs, &digests, &init, &w, &out).unwrap();
    assert!(!again.cache_hit);
    assert_eq!(again.image_bytes, first.image_bytes);
}

#[test]
fn cache_key_follows_layers_and_init() {
    let t = tempfile::tempdir().unwrap();
    let init = t.path().join("init");
    std::fs::write(&init, "v1").unwrap();
    let a = vec!["aa".to_string(), "bb".to_string()];
    let b = vec!["bb".to_string(), "aa".to_string()];
    let k1 = image_cache_key(&a, &init).unwrap();
    assert_eq!(k1, image_cache_key(&a, &init).unwrap());
    assert_eq!(k1.len(), 64);
    assert_ne!(
        k1,
        image_cache_key(&b, &init).unwrap(),
        "layer order matters"
    );
    // Rebuilding the init (new file, new inode/ctime) changes the key.
    let tmp = t.path().join("init.new");
    std::fs::write(&tmp, "v2").unwrap();
    std::fs::rename(&tmp, &init).unwrap();
    assert_ne!(k1, image_cache_key(&a, &init).unwrap());
}

#[test]
fn dynamic_or_foreign_init_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let text = t.path().join("script");
    std::fs::write(&text, "#!/bin/sh\n").unwrap();
    let e = check_static_elf(&text).unwrap_err().to_string();
    assert!(
        e.contains("script") && e.contains("cargo build -p duet-init"),
        "{e}"
    );
    // The test binary itself is static (see .cargo/config.toml); a dynamic
    // one is the host's /bin/sh on Debian.
    let sh = Path::new("/bin/sh");
    if let Ok(buf) = std::fs::read(sh) {
        if buf.windows(12).any(|w| w == b"ld-linux-x86") {
            let e = check_static_elf(sh).unwrap_err().to_string();
            assert!(e.contains("dynamically linked"), "{e}");
        }
    }
    let me = std::env::current_exe().unwrap();
    check_static_elf(&me).unwrap();
}

#[test]
fn missing_init_error_says_how_to_build_it() {
    // The only test that touches DUET_INIT.
    std::env::set_var(INIT_ENV, "/nonexistent/duet-init");
    let e = find_init_binary().unwrap_err().to_string();
    std::env::remove_var(INIT_ENV);
    assert!(e.contains("/nonexistent/duet-init"), "{e}");
    assert!(e.contains("cargo build -p duet-init"), "{e}");
}

#[test]
fn layer_lists_must_match() {
    let t = tempfile::tempdir().unwrap();
    let w = sample_workload();
    let e = build_initramfs(
        t.path(),
        &[t.path().to_path_buf()],
        &[],
        Path::new("/bin/true"),
        &w,
        &t.path().join("o"),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            RootfsError::LayerMismatch {
                dirs: 1,
                digests: 0
            }
        ),
        "{e}"
    );
    let e = MergedTree::from_layers(&[t.path().join("missing")]).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn kernel_cmdline_starts_duet_init_and_hides_the_log() {
    let quiet = kernel_cmdline(false);
    for want in [
        "console=ttyS0",
        "reboot=k",
        "panic=-1",
        "rdinit=/duet/init",
        "quiet",
        "loglevel=1",
    ] {
        assert!(
            quiet.split(' ').any(|w| w == want),
            "{want} missing: {quiet}"
        );
    }
    let loud = kernel_cmdline(true);
    assert!(!loud.split(' ').any(|w| w == "quiet"), "{loud}");
    assert!(loud.contains("loglevel=7"));
    // The x86 boot protocol's command line limit.
    assert!(quiet.len() < 2048);
}

#[test]
fn merged_tree_kinds_are_classified() {
    let t = tempfile::tempdir().unwrap();
    let l = t.path().join("l");
    write(&l.join("d/f"), "x");
    symlink("f", l.join("d/s")).unwrap();
    let tree = MergedTree::from_layers(&[l]).unwrap();
    assert_eq!(tree.len(), 3);
    assert_eq!(tree.get(Path::new("d")).unwrap().kind, NodeKind::Dir);
    assert!(matches!(
        tree.get(Path::new("d/f")).unwrap().kind,
        NodeKind::File {
            size: 1,
            link: None,
            ..
        }
    ));
    assert_eq!(
        tree.get(Path::new("d/s")).unwrap().kind,
        NodeKind::Symlink(b"f".to_vec())
    );
}

/// End to end without a guest: the initrd's two archives unpacked in order
/// (GNU cpio standing in for the kernel's unpacker), then the real duet-init
/// run as PID 1 of fresh namespaces chrooted there, its ports replaced by a
/// log file. Shows that what the builder writes is what the init reads.
#[test]
fn unpacked_initramfs_boots_duet_init_in_namespaces() {
    let test = "unpacked_initramfs_boots_duet_init_in_namespaces";
    if skip_unless_root(test, "namespaces, chroot")
        || skip_unless_program(test, "cpio", "cpio")
        || skip_unless_program(test, "unshare", "util-linux")
        || skip_unless_program(test, "chroot", "coreutils")
    {
        return;
    }
    let Ok(init) = find_init_binary() else {
        skip(test, "duet-init is not built (cargo build -p duet-init)");
        return;
    };
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| check_static_elf(p).is_ok())
    else {
        skip(
            test,
            "needs a static busybox (apt-get install busybox-static)",
        );
        return;
    };
    let t = tempfile::tempdir().unwrap();
    // Two layers: busybox below; above it, a file deleted and one replaced.
    let (base, top) = (t.path().join("base"), t.path().join("top"));
    std::fs::create_dir_all(base.join("bin")).unwrap();
    std::fs::copy(&busybox, base.join("bin/busybox")).unwrap();
    for a in ["sh", "cat", "ls", "echo"] {
        symlink("busybox", base.join("bin").join(a)).unwrap();
    }
    write(&base.join("etc/greeting"), "from base\n");
    write(&base.join("etc/removed"), "should be gone");
    write(&top.join("etc/greeting"), "from top\n");
    mknod(&top.join("etc/removed"), libc::S_IFCHR, 0);

    let w = GuestWorkload {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "cat /etc/greeting; ls /etc; echo \"$MSG\"; exit 5".into(),
        ],
        env: vec!["PATH=/bin".into(), "MSG=env ok".into()],
        workdir: "/etc".into(),
        hostname: "e2e".into(),
        pids_max: None,
        agent: false,
        user: None,
        files: Vec::new(),
        network: None,
        template: false,
        tty: None,
    };
    let info = build_initramfs(
        t.path(),
        &[base, top],
        &["b".repeat(64), "c".repeat(64)],
        &init,
        &w,
        &t.path().join("run.cpio"),
    )
    .unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    for part in info.parts() {
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && cpio -idm --quiet < {}",
                root.display(),
                part.display()
            ))
            .status()
            .unwrap();
        assert!(st.success(), "cpio -i {}", part.display());
    }
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--uts", "--ipc"])
        .args(["--propagation", "private", "chroot"])
        .arg(&root)
        .arg(INIT_PATH)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(duet_init::ports::FAKE_PORTS_ENV, "/ports.log")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "from top\ngreeting\nenv ok\n", "stderr: {stderr}");
    let ports = std::fs::read_to_string(root.join("ports.log")).unwrap();
    assert_eq!(ports, "ready\nexit 0x5\n", "stderr: {stderr}");
}

#[test]
fn guest_workload_gets_the_container_environment_defaults() {
    let mut spec =
        WorkloadSpec::for_image("busybox", vec!["sh".into(), "-c".into(), "true".into()]);
    spec.name = "web1".into();
    for (k, v) in [("B", "2"), ("A", "1"), ("HOME", "/home/x")] {
        spec.env.insert(k.into(), v.into());
    }
    spec.resources.pids_max = Some(9);
    let g = guest_workload(&spec, None);
    assert_eq!(g.argv, ["sh", "-c", "true"]);
    assert_eq!(
        g.env,
        [
            "A=1",
            "B=2",
            "HOME=/home/x",
            "HOSTNAME=web1",
            &format!("PATH={DEFAULT_PATH}")
        ]
    );
    assert_eq!((g.workdir.as_str(), g.hostname.as_str()), ("/", "web1"));
    assert_eq!(g.pids_max, Some(9));
    g.validate().unwrap();
    spec.workdir = Some("/srv".into());
    spec.env.insert("PATH".into(), "/bin".into());
    let g = guest_workload(&spec, None);
    assert_eq!(g.workdir, "/srv");
    assert!(g.env.contains(&"PATH=/bin".to_string()));
    assert!(g.env.contains(&"HOME=/home/x".to_string()));
}
