//! Import never touches the host outside the store (issue 9, classes 1, 5,
//! 7, 10): hostile layers and outer archives against a canary tree beside
//! the layer root, which must be exactly as it was afterwards.

use super::tests::{imp, outer, write};
use super::unpack::MAX_SPARSE_SIZE;
use super::whiteout::{is_opaque, unpack_layer};
use super::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Whether a root-needing test may run ([`crate::testing::skip_unless_root`]).
pub(super) fn skip_unless_root(test: &str) -> bool {
    crate::testing::skip_unless_root(test, "mknod, chown, trusted.* xattrs")
}

/// One entry of a hand-made layer tarball.
#[derive(Debug, Clone)]
pub(super) enum E {
    Dir(String, u32),
    File(String, Vec<u8>),
    Sym(String, String),
    Hard(String, String),
    Fifo(String),
    Dev(String, char, u32, u32),
}

fn s(x: &str) -> String {
    x.to_string()
}

pub(super) fn tarball(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        h.set_size(0);
        let (path, data): (&str, &[u8]) = match e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_uid(4321);
                (p, &[])
            }
            E::File(p, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                (p, d)
            }
            E::Sym(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name_literal(target.as_bytes()).unwrap();
                (p, &[])
            }
            E::Hard(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_link_name_literal(target.as_bytes()).unwrap();
                (p, &[])
            }
            E::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                (p, &[])
            }
            E::Dev(p, kind, major, minor) => {
                h.set_entry_type(if *kind == 'c' {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                (p, &[])
            }
        };
        // Set the name by hand: Builder::append_data refuses some odd names.
        let bytes = path.as_bytes();
        if bytes.len() <= 100 {
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, data).unwrap();
        } else {
            b.append_data(&mut h, path, data).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// A full listing of `dir`: type, mode, owner, size, mtime, links, device,
/// content hash, symlink target and opaque xattr of every entry.
pub(super) fn listing(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
        let m = std::fs::symlink_metadata(p).unwrap();
        let ft = m.file_type();
        let mut v = format!(
            "mode={:o} uid={} gid={} size={} mtime={} nlink={} rdev={}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.len(),
            m.mtime(),
            m.nlink(),
            m.rdev()
        );
        if ft.is_file() {
            v.push_str(&format!(
                " sha={}",
                hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
            ));
        } else if ft.is_symlink() {
            v.push_str(&format!(" -> {}", std::fs::read_link(p).unwrap().display()));
        } else if ft.is_dir() {
            v.push_str(&format!(" opaque={}", is_opaque(p)));
        }
        let rel = p.strip_prefix(base).unwrap().display().to_string();
        out.insert(rel, v);
        if ft.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for n in names {
                walk(base, &n, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// A temp dir holding `canary/` (a host tree that must not change) and an
/// empty `layer/` to unpack into.
pub(super) struct Sandbox {
    pub t: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let t = tempfile::tempdir().unwrap();
        let c = t.path().join("canary");
        std::fs::create_dir_all(c.join("sub/deep")).unwrap();
        std::fs::write(c.join("victim"), b"host data").unwrap();
        std::fs::write(c.join("sub/deep/file"), b"deep").unwrap();
        std::fs::write(c.join("passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::create_dir(t.path().join("layer")).unwrap();
        Sandbox { t }
    }
    pub fn canary(&self) -> PathBuf {
        self.t.path().join("canary")
    }
    pub fn layer(&self) -> PathBuf {
        self.t.path().join("layer")
    }
    /// Everything outside `layer/`.
    pub fn outside(&self) -> BTreeMap<String, String> {
        let mut l = listing(self.t.path());
        l.retain(|k, _| !(k == "layer" || k.starts_with("layer/")));
        l
    }
}

/// Unpacks `entries` as a layer beside a canary and asserts the canary (and
/// everything else outside the layer) is unchanged; returns the result.
fn confined(entries: &[E]) -> (Sandbox, Result<whiteout::Unpacked, ImageError>) {
    let sb = Sandbox::new();
    let before = sb.outside();
    let data = tarball(entries);
    let r = unpack_layer(&data[..], &sb.layer(), Path::new("hostile.tar"));
    assert_eq!(
        sb.outside(),
        before,
        "the host outside the layer changed ({entries:?}, result {r:?})"
    );
    (sb, r)
}

fn abs(sb: &Sandbox) -> String {
    sb.canary().display().to_string()
}

#[test]
fn whiteout_under_absolute_symlink_parent_stays_inside() {
    if skip_unless_root("whiteout_under_absolute_symlink_parent_stays_inside") {
        return;
    }
    let _ = under_abs_symlink(&[E::File(s("x/.wh.victim"), vec![])]);
    let _ = under_abs_symlink(&[E::File(s("x/sub/.wh.deep"), vec![])]);
}

#[test]
fn whiteout_under_relative_symlink_parent_stays_inside() {
    if skip_unless_root("whiteout_under_relative_symlink_parent_stays_inside") {
        return;
    }
    let (_sb, _) = confined(&[
        E::Sym(s("x"), s("../canary")),
        E::File(s("x/.wh.victim"), vec![]),
        E::File(s("x/sub/.wh.deep"), vec![]),
    ]);
    // Climbing far above the layer and back down to the canary: IN_ROOT
    // clamps the climb at the layer root. (Every target in these tests leads
    // into the sandbox, so even a regression cannot touch the real host.)
    let sb = Sandbox::new();
    let before = sb.outside();
    let climb = format!("{}{}", "../".repeat(12), abs(&sb).trim_start_matches('/'));
    let entries = [
        E::Sym(s("x"), climb),
        E::File(s("x/.wh.victim"), vec![]),
        E::File(s("x/sub/deep/file"), b"pwned".to_vec()),
    ];
    let r = unpack_layer(&tarball(&entries)[..], &sb.layer(), Path::new("h.tar"));
    assert_eq!(sb.outside(), before, "{r:?}");
}

/// Runs `rest` after `x -> <canary, absolute>` in a fresh sandbox.
fn under_abs_symlink(rest: &[E]) -> (Sandbox, Result<whiteout::Unpacked, ImageError>) {
    let sb = Sandbox::new();
    let before = sb.outside();
    let mut entries = vec![E::Sym(s("x"), abs(&sb))];
    entries.extend_from_slice(rest);
    let r = unpack_layer(&tarball(&entries)[..], &sb.layer(), Path::new("h.tar"));
    assert_eq!(sb.outside(), before, "{entries:?} -> {r:?}");
    (sb, r)
}

#[test]
fn opaque_marker_under_symlink_parent_stays_inside() {
    if skip_unless_root("opaque_marker_under_symlink_parent_stays_inside") {
        return;
    }
    let _ = under_abs_symlink(&[E::File(s("x/sub/.wh..wh..opq"), vec![])]);
    let _ = under_abs_symlink(&[E::File(s("x/.wh..wh..opq"), vec![])]);
    let _ = confined(&[
        E::Sym(s("x"), s("../canary")),
        E::File(s("x/sub/.wh..wh..opq"), vec![]),
    ]);
}

#[test]
fn regular_file_and_dir_under_symlink_parent_stay_inside() {
    if skip_unless_root("regular_file_and_dir_under_symlink_parent_stay_inside") {
        return;
    }
    let _ = under_abs_symlink(&[
        E::File(s("x/victim"), b"pwned".to_vec()),
        E::File(s("x/new"), b"planted".to_vec()),
        E::Dir(s("x/newdir/"), 0o755),
        E::Sym(s("x/evil"), s("/etc")), // only a symlink: never followed here
    ]);
    // A directory entry over the symlink itself: chmod/chown/mtime must not
    // reach the canary through it.
    let (sb, r) = under_abs_symlink(&[E::Dir(s("x/"), 0o777)]);
    r.unwrap();
    let m = std::fs::symlink_metadata(sb.layer().join("x")).unwrap();
    assert!(m.is_dir(), "x became a real directory in the layer");
}

#[test]
fn hard_link_to_outside_is_not_made() {
    if skip_unless_root("hard_link_to_outside_is_not_made") {
        return;
    }
    let (sb, _) = under_abs_symlink(&[
        E::Hard(s("h"), s("x/victim")),
        E::File(s("h"), b"overwrite".to_vec()),
    ]);
    assert_eq!(
        std::fs::metadata(sb.canary().join("victim"))
            .unwrap()
            .nlink(),
        1
    );
    let (sb, _) = confined(&[E::Hard(s("h"), s("../canary/victim"))]);
    assert!(!sb.layer().join("h").exists());
    // An in-layer hard link still works.
    let (sb, r) = confined(&[E::File(s("a"), b"same".to_vec()), E::Hard(s("b"), s("a"))]);
    r.unwrap();
    let (a, b) = (
        std::fs::metadata(sb.layer().join("a")).unwrap(),
        std::fs::metadata(sb.layer().join("b")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn mknod_under_symlink_parent_stays_inside() {
    if skip_unless_root("mknod_under_symlink_parent_stays_inside") {
        return;
    }
    let _ = under_abs_symlink(&[E::Fifo(s("x/fifo")), E::Dev(s("x/null"), 'c', 1, 3)]);
    let _ = under_abs_symlink(&[E::Dev(s("x/wh"), 'c', 0, 0)]);
}

#[test]
fn symlink_chain_stays_inside() {
    if skip_unless_root("symlink_chain_stays_inside") {
        return;
    }
    let sb = Sandbox::new();
    let before = sb.outside();
    let entries = vec![
        E::Sym(s("b"), abs(&sb)),
        E::Sym(s("a"), s("b")),
        E::Sym(s("c"), s("a/sub")),
        E::File(s("a/.wh.victim"), vec![]),
        E::File(s("c/.wh.deep"), vec![]),
        E::File(s("c/deep/file"), b"pwned".to_vec()),
        E::File(s("a/sub/.wh..wh..opq"), vec![]),
    ];
    let r = unpack_layer(&tarball(&entries)[..], &sb.layer(), Path::new("h.tar"));
    assert_eq!(sb.outside(), before, "{r:?}");
}

#[test]
fn in_layer_symlink_parents_resolve_inside_the_layer() {
    if skip_unless_root("in_layer_symlink_parents_resolve_inside_the_layer") {
        return;
    }
    // An absolute target is the layer's own path, as in the container: with
    // `lib -> <sandbox>/usr/lib`, `lib/libc.so` lands in the layer's
    // `<sandbox>/usr/lib`. (The target points into the sandbox, not the
    // host's /usr/lib, so a regression cannot write to the real host.)
    let sb = Sandbox::new();
    let before = sb.outside();
    let t = sb.t.path().display().to_string();
    let t_rel = t.trim_start_matches('/');
    let entries = [
        E::Dir(format!("{t_rel}/usr/lib/"), 0o755),
        E::Sym(s("lib"), format!("{t}/usr/lib")),
        E::File(s("lib/libc.so"), b"elf".to_vec()),
        E::File(s("lib/.wh.old"), vec![]),
    ];
    let r = unpack_layer(&tarball(&entries)[..], &sb.layer(), Path::new("h.tar"));
    assert_eq!(sb.outside(), before, "{r:?}");
    r.unwrap();
    let lib = sb.layer().join(t_rel).join("usr/lib");
    assert_eq!(std::fs::read(lib.join("libc.so")).unwrap(), b"elf");
    assert!(whiteout::is_whiteout(
        &std::fs::symlink_metadata(lib.join("old")).unwrap()
    ));
}

#[test]
fn bad_whiteout_names_are_refused_by_name() {
    if skip_unless_root("bad_whiteout_names_are_refused_by_name") {
        return;
    }
    for bad in ["etc/.wh..", "etc/.wh...", ".wh.", "etc/.wh."] {
        let (sb, r) = confined(&[E::Dir(s("etc/"), 0o755), E::File(s(bad), vec![])]);
        let m = r.unwrap_err().to_string();
        assert!(m.contains("hostile.tar") && m.contains(bad), "{bad}: {m}");
        assert!(sb.layer().join("etc").is_dir());
    }
}

#[test]
fn device_nodes_are_reported_not_created() {
    if skip_unless_root("device_nodes_are_reported_not_created") {
        return;
    }
    let (sb, r) = confined(&[
        E::Dir(s("dev/"), 0o755),
        E::Dev(s("dev/null"), 'c', 1, 3),
        E::Dev(s("dev/sda"), 'b', 8, 0),
        E::Hard(s("dev/null2"), s("dev/null")),
        E::Fifo(s("dev/initctl")),
    ]);
    let u = r.unwrap();
    assert_eq!(
        u.skipped_devices,
        vec!["dev/null (c 1:3)", "dev/sda (b 8:0)"]
    );
    assert!(!sb.layer().join("dev/null").exists());
    assert!(!sb.layer().join("dev/null2").exists());
    assert!(std::fs::symlink_metadata(sb.layer().join("dev/initctl"))
        .unwrap()
        .file_type()
        .is_fifo());
    // Through the store, the import returns a warning listing them.
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("root")).unwrap();
    let f = write(
        t.path(),
        "devs.tar",
        &tarball(&[E::Dev(s("dev/null"), 'c', 1, 3)]),
    );
    let got = import_tarball(&store, &f, "devs", &ImportOptions::default()).unwrap();
    assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
    assert!(
        got.warnings[0].contains("dev/null (c 1:3)"),
        "{:?}",
        got.warnings
    );
}

#[test]
fn control_characters_in_names_are_escaped_in_errors() {
    let (_sb, r) = confined(&[E::File(s("a\x1b]0;owned\x07/.wh.."), vec![])]);
    let m = r.unwrap_err().to_string();
    assert!(!m.chars().any(|c| c.is_control()), "{m:?}");
    assert!(m.contains("a\\x1b]0;owned\\x07/.wh.."), "{m}");
    // Names reaching an io error are escaped too.
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("root")).unwrap();
    let manifest = br#"[{"Config":"c\u001b[2J.json","Layers":[]}]"#;
    let f = write(
        t.path(),
        "esc.tar",
        &outer(&[("manifest.json", manifest.to_vec())]),
    );
    let m = imp(&store, &f, "esc").unwrap_err().to_string();
    assert!(!m.chars().any(|c| c.is_control()), "{m:?}");
    assert!(m.contains("c\\x1b[2J.json"), "{m}");
}

/// A GNU sparse entry: `real` bytes long, one 512-byte data block at its end.
fn sparse_tar(name: &str, real: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(512);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    {
        let g = h.as_gnu_mut().unwrap();
        g.set_real_size(real);
        g.sparse[0].set_offset(real - 512);
        g.sparse[0].set_length(512);
    }
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(&[b'z'; 512]);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn sparse_files_keep_their_holes() {
    let sb = Sandbox::new();
    let real = 256u64 << 20;
    let u = unpack_layer(
        &sparse_tar("big", real)[..],
        &sb.layer(),
        Path::new("s.tar"),
    )
    .unwrap();
    assert!(u.warnings.is_empty());
    let m = std::fs::metadata(sb.layer().join("big")).unwrap();
    assert_eq!(m.len(), real);
    assert!(m.blocks() * 512 < 1 << 20, "{} blocks on disk", m.blocks());
    let e = unpack_layer(
        &sparse_tar("huge", MAX_SPARSE_SIZE + 4096)[..],
        &sb.layer(),
        Path::new("s.tar"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("huge"), "{e}");
}

#[test]
fn commit_archives_fifos_and_devices_and_skips_sockets() {
    if skip_unless_root("commit_archives_fifos_and_devices_and_skips_sockets") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let upper = t.path().join("upper");
    std::fs::create_dir_all(upper.join("run")).unwrap();
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let fifo = c(&upper.join("run/fifo"));
    let null = c(&upper.join("run/null"));
    // SAFETY: NUL-terminated paths; mknod does not keep them.
    unsafe {
        assert_eq!(libc::mknod(fifo.as_ptr(), libc::S_IFIFO | 0o640, 0), 0);
        assert_eq!(
            libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
            0
        );
    }
    use std::os::unix::fs::PermissionsExt;
    for (n, m) in [("run/fifo", 0o640), ("run/null", 0o666)] {
        std::fs::set_permissions(upper.join(n), std::fs::Permissions::from_mode(m)).unwrap();
    }
    let _sock = std::os::unix::net::UnixListener::bind(upper.join("run/sock")).unwrap();
    std::fs::write(upper.join("run/file"), b"f").unwrap();
    let mut out = tempfile::tempfile().unwrap();
    let warnings = write_layer_tar(&upper, &mut out).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("run/sock"), "{warnings:?}");
    use std::io::Seek;
    out.rewind().unwrap();
    let mut a = tar::Archive::new(out);
    let mut seen = BTreeMap::new();
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        seen.insert(
            e.path().unwrap().display().to_string(),
            (
                h.entry_type(),
                h.mode().unwrap(),
                h.device_major().ok().flatten(),
                h.device_minor().ok().flatten(),
            ),
        );
    }
    assert_eq!(
        (seen["run/fifo"].0, seen["run/fifo"].1),
        (tar::EntryType::Fifo, 0o640)
    );
    assert_eq!(
        seen["run/null"],
        (tar::EntryType::Char, 0o666, Some(1), Some(3))
    );
    assert!(!seen.contains_key("run/sock"));
    // Through commit_upper: the whole thing commits, with the warnings.
    let store = ImageStore::open(&t.path().join("root")).unwrap();
    let base = Image {
        name: "base".into(),
        layers: vec![],
        config: ImageConfig::default(),
        source: None,
    };
    let got = commit_upper(&store, &base, &upper, "derived").unwrap();
    assert!(
        got.warnings.iter().any(|w| w.contains("socket")),
        "{:?}",
        got.warnings
    );
    assert!(
        got.warnings.iter().any(|w| w.contains("run/null (c 1:3)")),
        "{:?}",
        got.warnings
    );
    let top = store.layer_dir(&got.image.layers[0]);
    assert!(std::fs::symlink_metadata(top.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}
