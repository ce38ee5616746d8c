//! `duet image import|ls|rm` through the real binary, each import followed by
//! a `duet run` of the image: a plain rootfs tarball and an OCI image layout
//! (needs root for the runs).

mod common;
use common::*;
use sha2::{Digest, Sha256};
use std::path::Path;

/// A tar archive of `entries` (path, contents), regular files 0644 root:root.
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The busybox image's layer (built from the host's busybox) as a tar, plus `extra` files.
fn busybox_rootfs_tar(env: &Env, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let store = duet_shared::image::ImageStore::open(env.root()).unwrap();
    let bb = store.get("busybox").unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", store.layer_dir(&bb.layers[0]))
        .unwrap();
    for (path, data) in extra {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn write(path: &Path, data: &[u8]) -> String {
    std::fs::write(path, data).unwrap();
    path.to_str().unwrap().to_string()
}

fn sha(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

/// An OCI image layout (oci-layout, index.json, blobs/sha256/...) as one tar:
/// `layers` bottom first (uncompressed), a config with `cmd` and `workdir`.
fn oci_layout_tar(layers: &[Vec<u8>], cmd: &[&str], workdir: &str) -> Vec<u8> {
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": workdir},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| format!("sha256:{}", sha(l))).collect::<Vec<_>>()},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{}", sha(l)),
            "size": l.len(),
        })).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len()}],
    })
    .to_string()
    .into_bytes();
    let mut blobs: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index),
        (format!("blobs/sha256/{}", sha(&config)), config.clone()),
        (format!("blobs/sha256/{}", sha(&manifest)), manifest.clone()),
    ];
    for l in layers {
        blobs.push((format!("blobs/sha256/{}", sha(l)), l.clone()));
    }
    let entries: Vec<(&str, &[u8])> = blobs
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    tar_of(&entries)
}

#[test]
fn plain_rootfs_tarball_imports_and_runs() {
    if skip_unless_root("plain_rootfs_tarball_imports_and_runs") {
        return;
    }
    let env = Env::new();
    let name = unique("plain");
    let rootfs = busybox_rootfs_tar(&env, &[("etc/imported", b"from a plain rootfs\n")]);
    let file = write(&env.root().join("rootfs.tar"), &rootfs);
    let out = ok(&env, &["image", "import", &file, "--name", "plain"]);
    assert_eq!(out, "plain (1 layers, read as rootfs)\n");
    let ls = ok(&env, &["image", "ls"]);
    assert!(
        ls.lines().any(|l| l.starts_with("plain ")),
        "plain not listed:\n{ls}"
    );
    let out = ok(
        &env,
        &[
            "run",
            "--name",
            &name,
            "plain",
            "--",
            "sh",
            "-c",
            "cat /etc/imported; echo $$",
        ],
    );
    assert_eq!(out, "from a plain rootfs\n1\n");
    env.assert_clean(&name);
}

#[test]
fn oci_layout_imports_and_runs_with_its_config() {
    if skip_unless_root("oci_layout_imports_and_runs_with_its_config") {
        return;
    }
    let env = Env::new();
    let name = unique("oci");
    let base = busybox_rootfs_tar(&env, &[]);
    let top = tar_of(&[("srv/app/msg", b"hello from the OCI layout\n")]);
    let layout = oci_layout_tar(
        &[base.clone(), top.clone()],
        &["/bin/sh", "-c", "cat msg; pwd"],
        "/srv/app",
    );
    let file = write(&env.root().join("oci.tar"), &layout);
    assert_eq!(
        ok(&env, &["image", "import", &file, "--name", "oci"]),
        "oci (2 layers, read as oci)\n"
    );
    // No command given: the image config's Cmd, in its WorkingDir.
    let out = ok(&env, &["run", "--name", &name, "oci"]);
    assert_eq!(out, "hello from the OCI layout\n/srv/app\n");
    // Layers are stored under their uncompressed digests.
    let store = duet_shared::image::ImageStore::open(env.root()).unwrap();
    assert_eq!(
        store.get("oci").unwrap().layers,
        vec![sha(&base), sha(&top)]
    );
    env.assert_clean(&name);
}

#[test]
fn image_rm_frees_only_unshared_layers() {
    if skip_unless_root("image_rm_frees_only_unshared_layers") {
        return;
    }
    let env = Env::new();
    let name = unique("rm");
    let base = busybox_rootfs_tar(&env, &[]);
    let one = oci_layout_tar(
        &[base.clone(), tar_of(&[("one", b"1\n")])],
        &["cat", "/one"],
        "/",
    );
    let two = oci_layout_tar(
        &[base.clone(), tar_of(&[("two", b"2\n")])],
        &["cat", "/two"],
        "/",
    );
    let (f1, f2) = (
        write(&env.root().join("one.tar"), &one),
        write(&env.root().join("two.tar"), &two),
    );
    ok(&env, &["image", "import", &f1, "--name", "one"]);
    ok(&env, &["image", "import", &f2, "--name", "two"]);
    let store = duet_shared::image::ImageStore::open(env.root()).unwrap();
    let base_dir = store.layer_path(&sha(&base));
    assert!(base_dir.is_dir());

    // `one` goes with its own top layer; the base stays, `two` shares it.
    assert_eq!(
        ok(&env, &["image", "rm", "one"]),
        "removed one (1 layers freed)\n"
    );
    let ls = ok(&env, &["image", "ls"]);
    assert!(!ls.lines().any(|l| l.starts_with("one ")), "{ls}");
    assert!(ls.lines().any(|l| l.starts_with("two ")), "{ls}");
    assert!(base_dir.is_dir(), "a layer `two` uses was freed");
    assert_eq!(ok(&env, &["run", "--name", &name, "two"]), "2\n");

    // A removed image cannot run; duet says which one (exit 125).
    let o = env.run(&["run", "--name", &name, "one"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("one"), "{}", stderr(&o));

    // The last user of the base layer goes: both its layers are freed.
    assert_eq!(
        ok(&env, &["image", "rm", "two"]),
        "removed two (2 layers freed)\n"
    );
    assert!(!base_dir.exists(), "{} left", base_dir.display());
    // Removing what does not exist is an error naming it.
    let o = env.run(&["image", "rm", "nosuch"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("nosuch"), "{}", stderr(&o));
    env.assert_clean(&name);
}
