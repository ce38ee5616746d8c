//! The outer archive (`docker save`, OCI layout) and the tarball itself:
//! member symlinks never reach host files, non-regular members and endless
//! inputs fail fast, index cycles end, and layouts are detected only when
//! their required members parse (issue 9, classes 1, 5, 10).

use super::confinement_tests::{skip_unless_root, tarball, Sandbox, E};
use super::tests::{imp, layer, outer, write};
use super::*;
use std::path::Path;

/// An outer tar with regular files and symlink members.
fn outer_with_links(files: &[(&str, Vec<u8>)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, d) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(d.len() as u64);
        b.append_data(&mut h, p, &d[..]).unwrap();
    }
    for (p, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, p, target).unwrap();
    }
    b.into_inner().unwrap()
}

fn store_in(sb: &Sandbox) -> ImageStore {
    ImageStore::open(&sb.t.path().join("root")).unwrap()
}

fn docker(store: &ImageStore, f: &Path) -> Result<Imported, ImageError> {
    let opts = ImportOptions {
        format: ImportFormat::Docker,
        force: false,
    };
    import_tarball(store, f, "x", &opts)
}

#[test]
fn docker_save_member_symlinks_do_not_reach_host_files() {
    let sb = Sandbox::new();
    let store = store_in(&sb);
    let host_layer = layer(&[("host-secret", Some(b"from the host"))]);
    std::fs::write(sb.canary().join("layer.tar"), &host_layer).unwrap();
    let manifest = br#"[{"Config":"c.json","Layers":["l.tar"]}]"#.to_vec();
    std::fs::write(sb.canary().join("manifest.json"), &manifest).unwrap();
    let before = sb.outside();
    let canary = sb.canary().display().to_string();
    let host = |n: &str| format!("{canary}/{n}");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // manifest.json itself -> a host manifest that names a host layer.
        (
            "manifest",
            outer_with_links(&[], &[("manifest.json", &host("manifest.json"))]),
        ),
        // a layer -> a host file
        (
            "layer",
            outer_with_links(
                &[
                    ("manifest.json", manifest.clone()),
                    ("c.json", b"{}".to_vec()),
                ],
                &[("l.tar", &host("layer.tar"))],
            ),
        ),
        // the config -> /etc/passwd
        (
            "config",
            outer_with_links(
                &[("manifest.json", manifest.clone()), ("l.tar", layer(&[]))],
                &[("c.json", "/etc/passwd")],
            ),
        ),
        // a layer -> /dev/zero (endless) and a relative escape
        (
            "zero",
            outer_with_links(
                &[
                    ("manifest.json", manifest.clone()),
                    ("c.json", b"{}".to_vec()),
                ],
                &[("l.tar", "/dev/zero")],
            ),
        ),
        (
            "relative",
            outer_with_links(
                &[
                    ("manifest.json", manifest.clone()),
                    ("c.json", b"{}".to_vec()),
                ],
                &[("l.tar", "../../../../../../../../dev/zero")],
            ),
        ),
    ];
    for (what, archive) in cases {
        let f = write(sb.t.path(), &format!("{what}.tar"), &archive);
        let t0 = std::time::Instant::now();
        let e = docker(&store, &f).unwrap_err().to_string();
        assert!(t0.elapsed().as_secs() < 10, "{what}: slow");
        assert!(e.contains(&format!("{what}.tar")), "{what}: {e}");
        std::fs::remove_file(&f).unwrap();
    }
    assert_eq!(sb.outside(), before);
    assert!(store.names().unwrap().is_empty());
    // In auto mode a symlinked manifest.json is no layout: a rootfs holding a symlink.
    let f = write(
        sb.t.path(),
        "auto.tar",
        &outer_with_links(&[], &[("manifest.json", &host("manifest.json"))]),
    );
    let got = import_tarball(&store, &f, "auto", &ImportOptions::default()).unwrap();
    assert_eq!(got.format, ImportFormat::Rootfs);
    let fs = store.layer_dir(&got.image.layers[0]);
    assert!(!fs.join("host-secret").exists());
    assert!(std::fs::symlink_metadata(fs.join("manifest.json"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn in_archive_symlinks_between_members_still_work() {
    // docker save writes duplicate layers as symlinks to another member.
    let sb = Sandbox::new();
    let store = store_in(&sb);
    let l = layer(&[("f", Some(b"x"))]);
    let manifest = br#"[{"Config":"c.json","Layers":["a/layer.tar","b/layer.tar"]}]"#.to_vec();
    let archive = outer_with_links(
        &[
            ("manifest.json", manifest),
            ("c.json", b"{}".to_vec()),
            ("a/layer.tar", l),
        ],
        &[("b/layer.tar", "../a/layer.tar")],
    );
    let f = write(sb.t.path(), "dup.tar", &archive);
    let got = docker(&store, &f).unwrap();
    assert_eq!(got.image.layers.len(), 2);
    assert_eq!(got.image.layers[0], got.image.layers[1]);
}

#[test]
fn fifo_and_device_members_of_an_outer_archive_are_refused() {
    if skip_unless_root("fifo_and_device_members_of_an_outer_archive_are_refused") {
        return;
    }
    let sb = Sandbox::new();
    let store = store_in(&sb);
    let before = sb.outside();
    for (i, member) in [E::Fifo("l.tar".into()), E::Dev("l.tar".into(), 'c', 1, 5)]
        .into_iter()
        .enumerate()
    {
        let mut entries = vec![
            E::File(
                "manifest.json".into(),
                br#"[{"Config":"c.json","Layers":["l.tar"]}]"#.to_vec(),
            ),
            E::File("c.json".into(), b"{}".to_vec()),
        ];
        entries.push(member);
        let f = write(sb.t.path(), &format!("odd{i}.tar"), &tarball(&entries));
        let e = docker(&store, &f).unwrap_err().to_string();
        assert!(
            e.contains("l.tar") && e.contains(&format!("odd{i}.tar")),
            "{e}"
        );
        std::fs::remove_file(&f).unwrap();
    }
    assert_eq!(sb.outside(), before);
}

#[test]
fn a_tarball_that_is_a_fifo_or_device_is_refused() {
    let sb = Sandbox::new();
    let store = store_in(&sb);
    let fifo = sb.t.path().join("fifo.tar");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo does not keep it.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for f in [fifo.as_path(), Path::new("/dev/zero")] {
        let e = imp(&store, f, "x").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}

#[test]
fn oci_index_cycles_and_deep_nesting_fail_fast() {
    let sb = Sandbox::new();
    let store = store_in(&sb);
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
    let idx = |digest: &str| {
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:{digest}"}}]}}"#
        )
    };
    // Two indexes that name each other: a -> b -> a.
    // Content addressing makes a true self-reference impossible, so the
    // cycle is made of blobs stored under the digests the other names.
    let (da, db) = ("a".repeat(64), "b".repeat(64));
    let archive = outer(&[
        ("oci-layout", layout.clone()),
        ("index.json", idx(&da).into_bytes()),
        (&format!("blobs/sha256/{da}"), idx(&db).into_bytes()),
        (&format!("blobs/sha256/{db}"), idx(&da).into_bytes()),
    ]);
    let f = write(sb.t.path(), "cycle.tar", &archive);
    let e = imp(&store, &f, "x").unwrap_err().to_string();
    assert!(e.contains("cycle"), "{e}");
    // A chain of distinct indexes deeper than the cap.
    let mut files = vec![("oci-layout".to_string(), layout)];
    let digests: Vec<String> = (0..=MAX_INDEX_DEPTH + 1)
        .map(|i| format!("{i:064x}"))
        .collect();
    files.push(("index.json".into(), idx(&digests[0]).into_bytes()));
    for w in digests.windows(2) {
        files.push((format!("blobs/sha256/{}", w[0]), idx(&w[1]).into_bytes()));
    }
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(a, b)| (a.as_str(), b.clone())).collect();
    let f = write(sb.t.path(), "deep.tar", &outer(&refs));
    let e = imp(&store, &f, "x").unwrap_err().to_string();
    assert!(e.contains("deeper"), "{e}");
}

#[test]
fn oversized_json_is_refused_with_bounded_memory() {
    let sb = Sandbox::new();
    let store = store_in(&sb);
    let mut big = b"[".to_vec();
    big.resize(MAX_JSON as usize + 100, b' ');
    big.push(b']');
    let f = write(
        sb.t.path(),
        "big.tar",
        &outer(&[("manifest.json", big), ("c.json", b"{}".to_vec())]),
    );
    let e = docker(&store, &f).unwrap_err().to_string();
    assert!(e.contains("manifest.json") && e.contains("MiB"), "{e}");
    // Auto mode: not a docker archive, so a rootfs.
    let got = import_tarball(&store, &f, "big", &ImportOptions::default()).unwrap();
    assert_eq!(got.format, ImportFormat::Rootfs);
}

#[test]
fn a_rootfs_with_index_or_manifest_json_on_top_is_a_rootfs() {
    let sb = Sandbox::new();
    let store = store_in(&sb);
    let data = layer(&[
        ("index.json", Some(b"{\"my\":\"app\"}")),
        ("manifest.json", Some(b"{\"name\":\"web\"}")),
        ("bin/", None),
    ]);
    let f = write(sb.t.path(), "rootfs.tar", &data);
    let got = import_tarball(&store, &f, "app", &ImportOptions::default()).unwrap();
    assert_eq!(got.format, ImportFormat::Rootfs);
    let fs = store.layer_dir(&got.image.layers[0]);
    assert_eq!(
        std::fs::read(fs.join("index.json")).unwrap(),
        b"{\"my\":\"app\"}"
    );
    // --format rootfs forces it even for a real docker save archive.
    let manifest = br#"[{"Config":"c.json","Layers":[]}]"#.to_vec();
    let f = write(
        sb.t.path(),
        "d.tar",
        &outer(&[("manifest.json", manifest), ("c.json", b"{}".to_vec())]),
    );
    let opts = ImportOptions {
        format: ImportFormat::Rootfs,
        force: false,
    };
    let got = import_tarball(&store, &f, "forced", &opts).unwrap();
    assert_eq!(got.format, ImportFormat::Rootfs);
    assert!(store
        .layer_dir(&got.image.layers[0])
        .join("c.json")
        .is_file());
}

#[test]
fn importing_over_an_existing_name_needs_force() {
    let sb = Sandbox::new();
    let store = store_in(&sb);
    let f1 = write(sb.t.path(), "1.tar", &layer(&[("one", Some(b"1"))]));
    let f2 = write(sb.t.path(), "2.tar", &layer(&[("two", Some(b"2"))]));
    let first = imp(&store, &f1, "app").unwrap();
    let e = imp(&store, &f2, "app").unwrap_err();
    assert!(matches!(e, ImageError::Exists(_)), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(store.get("app").unwrap(), first);
    let opts = ImportOptions {
        force: true,
        ..ImportOptions::default()
    };
    let second = import_tarball(&store, &f2, "app", &opts).unwrap();
    assert_ne!(second.image.layers, first.layers);
    assert_eq!(store.get("app").unwrap(), second.image);
}
