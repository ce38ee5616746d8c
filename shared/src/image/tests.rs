//! Store-level tests: imports of every supported format, busybox, removal.

use super::*;
use crate::testing::{skip_unless_program, skip_unless_root};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

/// Imports with default options (auto format, no --force) and returns the image.
pub(super) fn imp(store: &ImageStore, f: &Path, name: &str) -> Result<Image, ImageError> {
    import_tarball(store, f, name, &ImportOptions::default()).map(|i| i.image)
}

pub(super) fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(if data.is_some() { 0o644 } else { 0o755 });
        h.set_entry_type(if data.is_some() {
            tar::EntryType::Regular
        } else {
            tar::EntryType::Directory
        });
        let d = data.unwrap_or(&[]);
        h.set_size(d.len() as u64);
        b.append_data(&mut h, path, d).unwrap();
    }
    b.into_inner().unwrap()
}

pub(super) fn outer(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, d) in files {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        h.set_size(d.len() as u64);
        b.append_data(&mut h, p, &d[..]).unwrap();
    }
    b.into_inner().unwrap()
}

pub(super) fn gzip(d: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(d).unwrap();
    gz.finish().unwrap()
}

pub(super) fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn plain_rootfs_tarball_is_one_layer() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("root")).unwrap();
    let data = layer(&[("etc/", None), ("etc/hello", Some(b"hi"))]);
    let f = write(t.path(), "rootfs.tar.gz", &gzip(&data));
    let img = imp(&store, &f, "plain").unwrap();
    assert_eq!(img.layers, vec![hex::encode(Sha256::digest(&data))]);
    assert_eq!(
        std::fs::read(store.layer_dir(&img.layers[0]).join("etc/hello")).unwrap(),
        b"hi"
    );
    assert_eq!(store.get("plain").unwrap(), img);
    assert!(img.config.env.iter().any(|e| e.starts_with("PATH=")));
}

#[test]
fn docker_save_with_whiteout_imports() {
    if skip_unless_root(
        "docker_save_with_whiteout_imports",
        "whiteouts are 0:0 device nodes",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("root")).unwrap();
    let base = layer(&[
        ("etc/", None),
        ("etc/motd", Some(b"old")),
        ("etc/keep", Some(b"k")),
    ]);
    let top = layer(&[
        ("etc/", None),
        ("etc/.wh.motd", Some(b"")),
        ("app/", None),
        ("app/.wh..wh..opq", Some(b"")),
    ]);
    let config = br#"{"config":{"Env":["A=1"],"Entrypoint":["/bin/sh"],"Cmd":["-c","echo"],"WorkingDir":"/app"}}"#;
    let manifest = br#"[{"Config":"cfg.json","RepoTags":["x:latest"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#;
    let archive = outer(&[
        ("manifest.json", manifest.to_vec()),
        ("cfg.json", config.to_vec()),
        ("l1/layer.tar", base.clone()),
        ("l2/layer.tar", top.clone()),
    ]);
    let f = write(t.path(), "saved.tar", &archive);
    let img = imp(&store, &f, "saved").unwrap();
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.layers[1], hex::encode(Sha256::digest(&top)));
    assert_eq!(img.config.entrypoint, vec!["/bin/sh"]);
    assert_eq!(img.config.cmd, vec!["-c", "echo"]);
    // Docker's rule: a command given at run replaces Cmd, not the entrypoint.
    assert_eq!(img.config.argv(&[]), vec!["/bin/sh", "-c", "echo"]);
    assert_eq!(
        img.config.argv(&["-c".into(), "true".into()]),
        vec!["/bin/sh", "-c", "true"]
    );
    assert_eq!(img.config.workdir.as_deref(), Some("/app"));
    assert!(img.config.env.contains(&"A=1".to_string()));
    let upper = store.layer_dir(&img.layers[1]);
    let wh = std::fs::symlink_metadata(upper.join("etc/motd")).unwrap();
    assert!(is_whiteout(&wh));
    assert!(is_opaque(&upper.join("app")));
    assert!(store.layer_dir(&img.layers[0]).join("etc/keep").is_file());
    assert!(
        !t.path().join("root/tmp").read_dir().unwrap().any(|_| true),
        "scratch left behind"
    );
}

#[test]
fn oci_layout_imports_gzip_layers() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("root")).unwrap();
    let l1 = layer(&[("a", Some(b"1"))]);
    let l2 = layer(&[("b", Some(b"2"))]);
    let (g1, g2) = (gzip(&l1), gzip(&l2));
    let h = |d: &[u8]| hex::encode(Sha256::digest(d));
    let config = br#"{"config":{"Cmd":["/bin/true"]}}"#.to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{}"}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{}"}}]}}"#,
        h(&config),
        h(&g1),
        h(&g2)
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}"}}]}}"#,
        h(manifest.as_bytes())
    );
    let archive = outer(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json", index.into_bytes()),
        (&format!("blobs/sha256/{}", h(&config)), config.clone()),
        (
            &format!("blobs/sha256/{}", h(manifest.as_bytes())),
            manifest.clone().into_bytes(),
        ),
        (&format!("blobs/sha256/{}", h(&g1)), g1.clone()),
        (&format!("blobs/sha256/{}", h(&g2)), g2.clone()),
    ]);
    let f = write(t.path(), "oci.tar", &archive);
    let img = imp(&store, &f, "oci").unwrap();
    // Layer digests are the uncompressed diff_ids.
    assert_eq!(img.layers, vec![h(&l1), h(&l2)]);
    assert_eq!(img.config.cmd, vec!["/bin/true"]);
    assert!(store.layer_dir(&img.layers[1]).join("b").is_file());
}

#[test]
fn same_layer_is_stored_once_and_rm_keeps_shared_layers() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("root")).unwrap();
    let data = layer(&[("f", Some(b"x"))]);
    let f = write(t.path(), "r.tar", &data);
    let a = imp(&store, &f, "a").unwrap();
    let b = imp(&store, &f, "b").unwrap();
    assert_eq!(a.layers, b.layers);
    assert_eq!(store.names().unwrap(), vec!["a", "b"]);
    assert!(
        store.remove("a").unwrap().is_empty(),
        "layer still used by b"
    );
    assert!(store.layer_dir(&b.layers[0]).is_dir());
    assert_eq!(store.remove("b").unwrap(), b.layers);
    assert!(!store.layer_path(&b.layers[0]).exists());
}

#[test]
fn unknown_image_lists_what_exists() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let f = write(t.path(), "r.tar", &layer(&[("f", Some(b"x"))]));
    imp(&store, &f, "alpine").unwrap();
    let m = store.get("ubuntu").unwrap_err().to_string();
    assert!(
        m.contains("`ubuntu`") && m.contains("alpine") && m.contains("busybox"),
        "{m}"
    );
    assert!(matches!(store.get("../x"), Err(ImageError::BadName(_))));
}

#[test]
fn bad_archives_are_named() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("root")).unwrap();
    let f = write(
        t.path(),
        "junk.tar",
        b"this is not a tarball at all, not even close........",
    );
    let m = imp(&store, &f, "j").unwrap_err().to_string();
    assert!(m.contains("junk.tar"), "{m}");
    let m = imp(&store, &t.path().join("missing.tar"), "j")
        .unwrap_err()
        .to_string();
    assert!(m.contains("missing.tar"), "{m}");
    let broken = outer(&[
        (
            "manifest.json",
            br#"[{"Config":"c.json","Layers":["nope.tar"]}]"#.to_vec(),
        ),
        ("c.json", b"{}".to_vec()),
    ]);
    let f = write(t.path(), "broken.tar", &broken);
    let m = imp(&store, &f, "j").unwrap_err().to_string();
    assert!(m.contains("broken.tar") && m.contains("nope.tar"), "{m}");
    assert!(store.names().unwrap().is_empty());
}

#[test]
fn busybox_image_is_built_from_the_host() {
    if skip_unless_program(
        "busybox_image_is_built_from_the_host",
        "/bin/busybox",
        "busybox-static",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(t.path()).unwrap();
    let img = store.get(BUSYBOX_IMAGE).unwrap();
    let fs = store.layer_dir(&img.layers[0]);
    assert!(fs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(fs.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    // Built once: the second lookup reads the manifest.
    assert_eq!(store.get(BUSYBOX_IMAGE).unwrap(), img);
}

#[test]
fn commit_round_trips_whiteouts_and_holds_only_the_change() {
    if skip_unless_root(
        "commit_round_trips_whiteouts_and_holds_only_the_change",
        "whiteouts are 0:0 device nodes",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("root")).unwrap();
    let base_tar = layer(&[
        ("etc/", None),
        ("etc/motd", Some(b"old")),
        ("opt/", None),
        ("opt/x", Some(b"x")),
    ]);
    let f = write(t.path(), "base.tar", &base_tar);
    let base = imp(&store, &f, "base").unwrap();
    // An upper dir as overlayfs leaves it: a new file, a whiteout, an opaque dir.
    let upper = t.path().join("upper");
    std::fs::create_dir_all(upper.join("data")).unwrap();
    std::fs::write(upper.join("data/big"), vec![7u8; 100_000]).unwrap();
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    whiteout::make_whiteout(&upper.join("etc/motd")).unwrap();
    std::fs::create_dir_all(upper.join("opt")).unwrap();
    whiteout::set_opaque(&upper.join("opt")).unwrap();
    let img = commit_upper(&store, &base, &upper, "derived")
        .unwrap()
        .image;
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.layers[0], base.layers[0]);
    let top = store.layer_dir(&img.layers[1]);
    assert_eq!(std::fs::read(top.join("data/big")).unwrap().len(), 100_000);
    assert!(is_whiteout(
        &std::fs::symlink_metadata(top.join("etc/motd")).unwrap()
    ));
    assert!(is_opaque(&top.join("opt")));
    // Only the change: the layer tar is the 100 kB written plus headers.
    let size: u64 = std::fs::read_to_string(store.layer_path(&img.layers[1]).join("size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        (100_000..100_000 + 16 * 1024).contains(&size),
        "layer tar is {size} bytes"
    );
    assert_eq!(store.get("derived").unwrap(), img);
}
