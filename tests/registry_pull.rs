//! `duet pull` / `duet run REF` against a real registry: Debian's
//! `docker-registry` (distribution 2.8), started by each test on
//! 127.0.0.1 with its own storage, filled by `skopeo copy` from OCI
//! layouts the test writes (busybox from the host, layers with a
//! whiteout, a multi-arch index with an arm64 entry), stopped at the end.

mod common;
use common::*;
use duet_shared::testing::skip_unless_program;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn sha(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

fn needs_tools(test: &str) -> bool {
    skip_unless_program(test, "docker-registry", "docker-registry")
        || skip_unless_program(test, "skopeo", "skopeo")
        || skip_unless_program(test, "htpasswd", "apache2-utils")
}

/// A private registry: storage, config and log in a temporary directory.
struct Registry {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    auth: Option<(String, String)>,
}

impl Registry {
    fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("duet-registry-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: duet-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Registry {
            dir,
            child,
            port,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not start: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// GET requests the registry served for blob `digest`.
    fn blob_gets(&self, digest: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest} ")))
            .count()
    }

    /// Copies image `tag` of the OCI layout `layout` to `repo:tag` here.
    fn push(&self, layout: &Path, tag: &str, repo: &str, all: bool) {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if all {
            c.arg("--all");
        }
        if let Some((u, p)) = &self.auth {
            c.arg(format!("--dest-creds={u}:{p}"));
        }
        let out = c
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy {tag}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The data file of blob `digest` in the registry's storage.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tar of `entries`: (path, contents or None for a directory, mode), root-owned;
/// a content starting with "->" makes a symlink to the rest.
fn tar_of(entries: &[(&str, Option<&[u8]>, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match data {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            Some(d) if d.starts_with(b"->") => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, std::str::from_utf8(&d[2..]).unwrap())
                    .unwrap();
            }
            Some(d) => {
                h.set_size(d.len() as u64);
                b.append_data(&mut h, path, *d).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(d: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(d).unwrap();
    e.finish().unwrap()
}

/// The bottom layer: the host's busybox-static with a few applet links, and /etc/motd.
fn busybox_layer() -> Vec<u8> {
    let bb = std::fs::read("/bin/busybox").expect("busybox-static");
    let mut entries: Vec<(&str, Option<&[u8]>, u32)> = vec![
        ("bin", None, 0o755),
        ("etc", None, 0o755),
        ("srv", None, 0o755),
        ("tmp", None, 0o1777),
        ("bin/busybox", Some(&bb), 0o755),
        ("etc/motd", Some(b"from the bottom layer\n"), 0o644),
        (
            "etc/passwd",
            Some(b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n"),
            0o644,
        ),
        (
            "etc/group",
            Some(b"root:x:0:\napp:x:1000:\nstaff:x:50:app\n"),
            0o644,
        ),
    ];
    for app in ["sh", "echo", "cat", "pwd", "test", "ls", "sleep", "id"] {
        let path: &'static str = Box::leak(format!("bin/{app}").into_boxed_str());
        entries.push((path, Some(b"->busybox"), 0o777));
    }
    tar_of(&entries)
}

/// An OCI layout being written: blobs and the `index.json` entries.
struct Layout {
    dir: tempfile::TempDir,
    index: Vec<serde_json::Value>,
}

impl Layout {
    fn new() -> Layout {
        let dir = tempfile::Builder::new()
            .prefix("duet-oci-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        Layout {
            dir,
            index: Vec::new(),
        }
    }

    fn blob(&self, d: &[u8]) -> serde_json::Value {
        std::fs::write(self.dir.path().join("blobs/sha256").join(sha(d)), d).unwrap();
        serde_json::json!({"digest": format!("sha256:{}", sha(d)), "size": d.len()})
    }

    /// An image of `layers` (uncompressed tars, stored gzipped) and `config`;
    /// its manifest's descriptor.
    fn image(
        &self,
        layers: &[Vec<u8>],
        arch: &str,
        config: serde_json::Value,
    ) -> serde_json::Value {
        self.image_stored(layers, arch, config, true)
    }

    /// [`Layout::image`], its layers stored as they are (`gzipped` false):
    /// the same layers, other blobs.
    fn image_stored(
        &self,
        layers: &[Vec<u8>],
        arch: &str,
        config: serde_json::Value,
        gzipped: bool,
    ) -> serde_json::Value {
        let cfg = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| format!("sha256:{}", sha(l))).collect::<Vec<_>>()},
        });
        let mut c = self.blob(cfg.to_string().as_bytes());
        c["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let ls: Vec<_> = layers
            .iter()
            .map(|l| {
                if gzipped {
                    let mut d = self.blob(&gzip(l));
                    d["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
                    d
                } else {
                    let mut d = self.blob(l);
                    d["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
                    d
                }
            })
            .collect();
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": c,
            "layers": ls,
        });
        let mut d = self.blob(m.to_string().as_bytes());
        d["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
        d["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        d
    }

    /// Names `desc` (a manifest or an index) `tag` in index.json.
    fn tag(&mut self, mut desc: serde_json::Value, tag: &str) {
        desc.as_object_mut().unwrap().remove("platform");
        desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.index.push(desc);
        let index = serde_json::json!({"schemaVersion": 2, "manifests": self.index});
        std::fs::write(self.dir.path().join("index.json"), index.to_string()).unwrap();
    }

    /// An index over `manifests`; its descriptor.
    fn index_of(&self, manifests: &[serde_json::Value]) -> serde_json::Value {
        let i = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let mut d = self.blob(i.to_string().as_bytes());
        d["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
        d
    }
}

/// A registry (with `auth`) holding one image, `repo:1`, of `layers`.
fn registry_with(auth: Option<(&str, &str)>, repo: &str, layers: &[Vec<u8>]) -> Registry {
    let reg = Registry::start(auth);
    let mut layout = Layout::new();
    let d = layout.image(layers, "amd64", app_config());
    layout.tag(d, "1");
    reg.push(layout.dir.path(), "1", repo, false);
    reg
}

/// The test image's config: entrypoint + cmd, env, workdir, a port.
fn app_config() -> serde_json::Value {
    serde_json::json!({
        "Env": ["PATH=/bin", "GREETING=hi"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo $GREETING from $(pwd) as $(id -u):$(id -g); cat hello; test -e /etc/motd || echo motd-gone"],
        "WorkingDir": "/srv",
        "User": "app",
        "ExposedPorts": {"8080/tcp": {}},
    })
}

/// The app layer: a file, and a whiteout of the bottom layer's /etc/motd.
fn app_layer() -> Vec<u8> {
    tar_of(&[
        ("etc", None, 0o755),
        ("etc/.wh.motd", Some(b""), 0o644),
        ("srv", None, 0o755),
        ("srv/hello", Some(b"hello from the app layer\n"), 0o644),
    ])
}

/// A registry holding the app image as `team/app:1`, a store that
/// pulled it, and its reference.
fn app_pulled() -> (Registry, Env, String) {
    let reg = registry_with(None, "team/app", &[busybox_layer(), app_layer()]);
    let env = Env::new();
    let original = format!("{}/team/app:1", reg.host());
    ok(&env, &["pull", "--insecure", &original]);
    (reg, env, original)
}

fn failed(env: &Env, args: &[&str]) -> String {
    let o = env.run(args);
    assert!(
        !o.status.success(),
        "duet {args:?} should fail:\n{}",
        stdout(&o)
    );
    stderr(&o)
}

/// Runs skopeo with `args`; its stdout (it must succeed).
fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The layers the manifest of `reference` (plain HTTP) names: media type,
/// digest and size of each.
fn manifest_layers(reference: &str) -> Vec<(String, String, u64)> {
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]);
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["mediaType"].as_str().unwrap().to_string(),
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Image `name`: `image` with a layer on top, made by `duet commit`, that
/// adds `/srv/made` ("made-by-commit").
fn commit_a_file(env: &Env, image: &str, name: &str) {
    let keeper = format!("commit-src-{}", std::process::id());
    ok(
        env,
        &[
            "run",
            "--keep",
            "--user",
            "0",
            "--name",
            &keeper,
            image,
            "--",
            // The entrypoint is `/bin/sh -c`: this is its script.
            "echo made-by-commit > /srv/made",
        ],
    );
    ok(env, &["commit", &keeper, name]);
    ok(env, &["rm", &keeper]);
}

/// `duet push IMAGE TARGET` in `env`; what it said on stderr (it must succeed).
fn push_said(env: &Env, image: &str, target: &str) -> String {
    let o = env.run(&["push", "--insecure", image, target]);
    assert!(o.status.success(), "push {image} {target}: {}", stderr(&o));
    stderr(&o)
}

fn store(env: &Env) -> duet_shared::image::ImageStore {
    duet_shared::image::ImageStore::open(env.root()).unwrap()
}

/// Layer directories in the store, and partial downloads.
fn store_contents(env: &Env) -> (Vec<String>, Vec<String>) {
    let list = |p: PathBuf| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    (
        list(env.root().join("layers/sha256")),
        list(env.root().join("blobs/partial")),
    )
}

#[test]
fn pull_by_tag_digest_and_platform_then_run_with_the_images_config() {
    let test = "pull_by_tag_digest_and_platform_then_run_with_the_images_config";
    if needs_tools(test) || skip_unless_root(test) {
        return;
    }
    let reg = Registry::start(None);
    let mut layout = Layout::new();
    let (bottom, app) = (busybox_layer(), app_layer());
    let amd = layout.image(&[bottom.clone(), app.clone()], "amd64", app_config());
    layout.tag(amd.clone(), "1");
    layout.tag(amd.clone(), "latest");
    let arm_only = tar_of(&[("arch-arm64", Some(b"arm\n"), 0o644)]);
    let arm = layout.image(&[bottom.clone(), arm_only.clone()], "arm64", app_config());
    let multi = layout.index_of(&[amd.clone(), arm]);
    layout.tag(multi, "multi");
    reg.push(layout.dir.path(), "1", "team/app", false);
    reg.push(layout.dir.path(), "latest", "team/app", false);
    reg.push(layout.dir.path(), "multi", "team/app", true);

    let env = Env::new();
    let host = reg.host();
    let by_tag = format!("{host}/team/app:1");
    // Plain HTTP only when asked for, and only to this machine.
    let e = failed(&env, &["pull", &by_tag]);
    assert!(e.contains(&by_tag) || e.contains("team/app"), "{e}");
    let e = failed(
        &env,
        &["pull", "--insecure", "registry.invalid:5000/team/app:1"],
    );
    assert!(
        e.contains("this machine only") && e.contains("--insecure-registry"),
        "{e}"
    );

    let out = ok(&env, &["pull", "--insecure", &by_tag]);
    assert_eq!(out.trim(), by_tag);
    let img = store(&env).get(&by_tag).unwrap();
    assert_eq!(img.layers, vec![sha(&bottom), sha(&app)]);
    assert_eq!(img.config.entrypoint, vec!["/bin/sh", "-c"]);
    assert_eq!(img.config.workdir.as_deref(), Some("/srv"));
    assert_eq!(img.config.exposed_ports, vec!["8080/tcp"]);
    let source = img
        .source
        .clone()
        .expect("a pulled image records its source");
    assert_eq!(source.reference, by_tag);
    assert_eq!(source.digest, amd["digest"].as_str().unwrap());
    let ls = ok(&env, &["image", "ls"]);
    assert!(
        ls.contains(&format!("{host}/team/app")) && ls.contains(&source.digest[..19]),
        "{ls}"
    );

    // The image's entrypoint, cmd, env, workdir and user (a name in its
    // /etc/passwd); the whiteout hides /etc/motd.
    let out = ok(&env, &["run", "--pull", "never", &by_tag]);
    assert_eq!(
        out,
        "hi from /srv as 1000:1000\nhello from the app layer\nmotd-gone\n"
    );
    // --user overrides the image's, by number or by name:group.
    let out = ok(&env, &["run", "--user", "0", &by_tag, "--", "id -u; id -g"]);
    assert_eq!(out, "0\n0\n");
    let out = ok(
        &env,
        &["run", "--user", "app:staff", &by_tag, "--", "id -u; id -g"],
    );
    assert_eq!(out, "1000\n50\n");
    // Supplementary groups from the image's /etc/group (staff lists app),
    // as Docker gives them; none twice.
    assert_eq!(ok(&env, &["run", &by_tag, "--", "id -G"]), "1000 50\n");
    assert_eq!(
        ok(
            &env,
            &["run", "--user", "app:staff", &by_tag, "--", "id -G"]
        ),
        "50\n"
    );
    assert_eq!(
        ok(&env, &["run", "--user", "1000:7", &by_tag, "--", "id -G"]),
        "7 50\n"
    );
    let e = failed(&env, &["run", "--user", "nobody", &by_tag, "--", "true"]);
    assert!(e.contains("`nobody`") && e.contains("/etc/passwd"), "{e}");
    // A command replaces Cmd, not the entrypoint (Docker's rule).
    let out = ok(&env, &["run", &by_tag, "--", "echo given $GREETING"]);
    assert_eq!(out, "given hi\n");

    // A reference without a tag is pulled (implicitly) as `:latest`, and a
    // detached instance's monitor finds it under that name.
    let tagless = format!("{host}/team/app");
    let id = ok(
        &env,
        &["run", "-d", "--name", "pulled", "--insecure", &tagless],
    );
    assert!(!id.trim().is_empty());
    assert_eq!(ok(&env, &["wait", "pulled"]).trim(), "0");
    let logs = ok(&env, &["logs", "pulled"]);
    assert!(logs.contains("hi from /srv as 1000:1000"), "{logs}");
    assert!(store(&env).get(&format!("{tagless}:latest")).is_ok());
    ok(&env, &["rm", "pulled"]);
    ok(&env, &["image", "rm", &format!("{tagless}:latest")]);

    // By digest: the same layers, nothing downloaded again.
    let by_digest = format!("{host}/team/app@{}", source.digest);
    assert_eq!(
        ok(&env, &["pull", "--insecure", &by_digest]).trim(),
        by_digest
    );
    assert_eq!(store(&env).get(&by_digest).unwrap().layers, img.layers);
    let bottom_blob = format!("sha256:{}", sha(&gzip(&bottom)));
    assert_eq!(reg.blob_gets(&bottom_blob), 1, "{}", reg.log());

    // The index: amd64 is chosen, the arm64 entry is not; its shared layer
    // is not fetched again.
    let multi_ref = format!("{host}/team/app:multi");
    ok(&env, &["pull", "--insecure", &multi_ref]);
    assert_eq!(store(&env).get(&multi_ref).unwrap().layers, img.layers);
    assert_eq!(
        reg.blob_gets(&bottom_blob),
        1,
        "a shared layer is fetched once"
    );
    let arm_blob = format!("sha256:{}", sha(&gzip(&arm_only)));
    assert_eq!(
        reg.blob_gets(&arm_blob),
        0,
        "the arm64 layer is not fetched"
    );
    let e = failed(
        &env,
        &[
            "pull",
            "--insecure",
            "--platform",
            "linux/s390x",
            &multi_ref,
        ],
    );
    assert!(
        e.contains("linux/s390x") && e.contains("linux/amd64") && e.contains("linux/arm64"),
        "{e}"
    );
    // An image for another CPU is refused by what its config says.
    let e = failed(
        &env,
        &["pull", "--insecure", "--platform", "linux/arm64", &by_tag],
    );
    assert!(
        e.contains("linux/amd64") && e.contains("linux/arm64"),
        "{e}"
    );

    // rm by digest removes every image of that manifest (the index's
    // amd64 entry is the same manifest), and their layers.
    let rm = ok(&env, &["image", "rm", &source.digest[7..19]]);
    assert!(
        rm.contains(&by_digest) && rm.contains(&by_tag) && rm.contains(&multi_ref),
        "{rm}"
    );
    assert_eq!(store_contents(&env), (vec![], vec![]), "nothing left");
}

#[test]
fn a_blob_with_a_wrong_digest_fails_the_pull_and_leaves_nothing() {
    let test = "a_blob_with_a_wrong_digest_fails_the_pull_and_leaves_nothing";
    if needs_tools(test) {
        return;
    }
    let app = app_layer();
    let reg = registry_with(None, "bad/app", &[busybox_layer(), app.clone()]);
    // The registry's copy of the app layer: same size, other bytes.
    let blob = reg.blob_file(&format!("sha256:{}", sha(&gzip(&app))));
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();

    let env = Env::new();
    let r = format!("{}/bad/app:1", reg.host());
    let e = failed(&env, &["pull", "--insecure", &r]);
    assert!(e.contains("digest") && e.contains("layer 2 of 2"), "{e}");
    assert!(store(&env).get(&r).is_err(), "no image");
    let (layers, partial) = store_contents(&env);
    assert!(partial.is_empty(), "partial downloads left: {partial:?}");
    // The good bottom layer may have landed (it is verified and shared); the bad one did not.
    assert!(!layers.contains(&sha(&app)), "{layers:?}");
    let gc = ok(&env, &["gc"]);
    assert!(gc.contains("gc:"), "{gc}");
}

/// A TCP proxy in front of the registry that cuts the first response to a
/// request for `blob` after `cut` bytes, and records request heads.
struct CuttingProxy {
    port: u16,
    requests: Arc<Mutex<String>>,
}

impl CuttingProxy {
    fn start(upstream: u16, blob: String, cut: usize) -> CuttingProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(String::new()));
        let armed = Arc::new(AtomicBool::new(true));
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (reqs, armed, blob) = (reqs.clone(), armed.clone(), blob.clone());
                let seen = Arc::new(AtomicBool::new(false));
                let (c2, up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
                let seen2 = seen.clone();
                std::thread::spawn(move || {
                    let (mut c, mut up) = (c2, up2);
                    let mut buf = [0u8; 16 << 10];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if text.contains(&blob) {
                            seen2.store(true, Ordering::SeqCst);
                        }
                        reqs.lock().unwrap().push_str(&text);
                        if up.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = up.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let (mut c, mut up) = (c, up);
                    let mut buf = [0u8; 16 << 10];
                    let mut sent = 0;
                    while let Ok(n) = up.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if seen.load(Ordering::SeqCst) && armed.load(Ordering::SeqCst) {
                            sent += n;
                            if sent > cut {
                                armed.store(false, Ordering::SeqCst);
                                let _ = c.shutdown(std::net::Shutdown::Both);
                                let _ = up.shutdown(std::net::Shutdown::Both);
                                break;
                            }
                        }
                        if c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        CuttingProxy { port, requests }
    }
}

#[test]
fn a_pull_cut_off_mid_layer_leaves_no_image_and_the_next_pull_resumes() {
    let test = "a_pull_cut_off_mid_layer_leaves_no_image_and_the_next_pull_resumes";
    if needs_tools(test) {
        return;
    }
    // 4 MiB that gzip cannot shrink.
    let mut noise = vec![0u8; 4 << 20];
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let big = tar_of(&[("noise", Some(&noise), 0o644)]);
    let reg = registry_with(None, "big/app", &[busybox_layer(), big.clone()]);
    let blob = format!("sha256:{}", sha(&gzip(&big)));
    let proxy = CuttingProxy::start(reg.port, blob.clone(), 1 << 20);

    let env = Env::new();
    let r = format!("127.0.0.1:{}/big/app:1", proxy.port);
    let e = failed(&env, &["pull", "--insecure", &r]);
    assert!(e.contains("layer 2 of 2"), "{e}");
    assert!(
        store(&env).get(&r).is_err(),
        "no image after a cut-off pull"
    );
    let (layers, partial) = store_contents(&env);
    assert!(
        !layers.contains(&sha(&big)),
        "no half-written layer: {layers:?}"
    );
    let big_partial = format!("sha256-{}", &blob[7..]);
    assert!(
        partial.contains(&big_partial),
        "the partial download waits for a resume: {partial:?}"
    );
    let before = std::fs::metadata(env.root().join("blobs/partial").join(&big_partial))
        .unwrap()
        .len();
    assert!(before > 0 && before < gzip(&big).len() as u64, "{before}");

    // The next pull asks for the rest only, and completes.
    let out = ok(&env, &["pull", "--insecure", &r]);
    assert_eq!(out.trim(), r);
    assert_eq!(store(&env).get(&r).unwrap().layers[1], sha(&big));
    let heads = proxy.requests.lock().unwrap().clone();
    assert!(
        heads.contains(&format!("range: bytes={before}-"))
            || heads.contains(&format!("Range: bytes={before}-")),
        "no range request from byte {before}:\n{heads}"
    );
    assert_eq!(
        store_contents(&env).1,
        Vec::<String>::new(),
        "no partial left (the big layer is {blob}; the cut-off pull left {partial:?})"
    );

    // A cut-off pull's partial download is garbage for `duet gc`.
    let proxy2 = CuttingProxy::start(reg.port, blob, 1 << 20);
    ok(&env, &["image", "rm", &r]);
    let r2 = format!("127.0.0.1:{}/big/app:1", proxy2.port);
    failed(&env, &["pull", "--insecure", &r2]);
    assert!(store_contents(&env).1.contains(&big_partial));
    let gc = ok(&env, &["gc"]);
    assert!(gc.contains("blobs/partial"), "{gc}");
    assert_eq!(store_contents(&env).1, Vec::<String>::new());
}

#[test]
fn basic_auth_refuses_a_wrong_password_and_login_stores_the_right_one() {
    let test = "basic_auth_refuses_a_wrong_password_and_login_stores_the_right_one";
    if needs_tools(test) {
        return;
    }
    let reg = registry_with(Some(("duet", "s3cret")), "private/app", &[busybox_layer()]);
    let env = Env::new();
    let docker_config = tempfile::tempdir().unwrap();
    let duet = |args: &[&str], stdin: &str| {
        let mut c = env.cmd(args);
        c.env("DOCKER_CONFIG", docker_config.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let r = format!("{}/private/app:1", reg.host());
    let o = duet(&["pull", "--insecure", &r], "");
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("refused anonymous access") && e.contains("duet login"),
        "{e}"
    );

    let host = reg.host();
    let login = [
        "login",
        &host,
        "-u",
        "duet",
        "--password-stdin",
        "--insecure",
    ];
    let o = duet(&login, "wrong\n");
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("refused the credentials of user `duet`"), "{e}");
    assert!(
        !docker_config.path().join("config.json").exists(),
        "nothing stored"
    );

    let o = duet(&login, "s3cret\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Login Succeeded"));
    let o = duet(&["pull", "--insecure", &r], "");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(store(&env).get(&r).is_ok());
}

#[test]
fn an_image_saved_by_duet_goes_through_skopeo_into_a_registry_and_back() {
    let test = "an_image_saved_by_duet_goes_through_skopeo_into_a_registry_and_back";
    if needs_tools(test) || skip_unless_root(test) {
        return;
    }
    let (reg, env, original) = app_pulled();
    let want = ok(&env, &["run", &original]);
    assert_eq!(
        want,
        "hi from /srv as 1000:1000\nhello from the app layer\nmotd-gone\n"
    );

    let archive = env.root().join("saved.tar");
    let out = ok(
        &env,
        &["image", "save", &original, "-o", archive.to_str().unwrap()],
    );
    assert!(out.contains("2 layers"), "{out}");
    // A real reader of `docker save` archives: skopeo.
    let src = format!("docker-archive:{}", archive.display());
    let v: serde_json::Value = serde_json::from_slice(&skopeo(&["inspect", &src])).unwrap();
    assert_eq!(v["Layers"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["Architecture"], "amd64");
    // Through skopeo into the registry under another name, and pulled back.
    let copy = format!("{}/copy/app:2", reg.host());
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &src,
        &format!("docker://{copy}"),
    ]);
    ok(&env, &["pull", "--insecure", &copy]);
    assert_eq!(
        ok(&env, &["run", &copy]),
        want,
        "the same image after the round trip"
    );
    // And `duet image import` reads it as a `docker save` archive.
    ok(
        &env,
        &[
            "image",
            "import",
            archive.to_str().unwrap(),
            "--name",
            "imported",
        ],
    );
    assert_eq!(ok(&env, &["run", "imported"]), want);
    // A save that cannot be written leaves no file.
    let e = failed(
        &env,
        &["image", "save", &original, "-o", "/nonexistent/dir/x.tar"],
    );
    assert!(e.contains("/nonexistent/dir"), "{e}");
}

/// `duet push`: an image made by `duet commit` goes to the registry as an
/// OCI image and comes back, under another name, with the same manifest
/// digest (pulled by it), its layers, config and the committed change.
#[test]
fn a_committed_image_is_pushed_and_pulled_back_by_its_digest() {
    let test = "a_committed_image_is_pushed_and_pulled_back_by_its_digest";
    if needs_tools(test) || skip_unless_root(test) {
        return;
    }
    let (reg, env, original) = app_pulled();
    commit_a_file(&env, &original, "mine:1");
    // Without a target, a name that names no registry is refused.
    let e = failed(&env, &["push", "--insecure", "mine:1"]);
    assert!(
        e.contains("mine:1") && e.contains("names no registry"),
        "{e}"
    );
    let e = failed(&env, &["push", "--insecure", "nosuch:1", "127.0.0.1:1/x:1"]);
    assert!(e.contains("nosuch:1"), "{e}");

    let target = format!("{}/pushed/mine:1", reg.host());
    let digest = ok(&env, &["push", "--insecure", "mine:1", &target]);
    let digest = digest.trim();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    // Another tag of the same repository: every layer is there already,
    // nothing is sent again, and the manifest is the same.
    let again = Command::new(duet_bin())
        .args(["push", "--insecure", "mine:1"])
        .arg(format!("{}/pushed/mine:2", reg.host()))
        .env("DUET_ROOT", env.root())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{said}");
    assert!(said.contains("0.0 MB sent, 3 already there"), "{said}");
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), digest);
    // Back by digest (the pull checks the manifest's bytes against it),
    // into another store, and by tag: the same digest.
    let other = Env::new();
    let by_digest = format!("{}/pushed/mine@{digest}", reg.host());
    ok(&other, &["pull", "--insecure", &by_digest]);
    let pulled = Command::new(duet_bin())
        .args(["pull", "--insecure", &target])
        .env("DUET_ROOT", other.root())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&pulled.stderr);
    assert!(pulled.status.success(), "{said}");
    assert!(said.contains(digest), "{said}");
    // The image's config (entrypoint, env, workdir, user) and the change.
    let want = ok(&env, &["run", &original]);
    assert_eq!(ok(&other, &["run", &target]), want);
    assert_eq!(
        ok(&other, &["run", &target, "--", "cat /srv/made"]).trim(),
        "made-by-commit"
    );
    // Layers went gzip-compressed (as `docker push` sends them), and with
    // `--compression none` as plain tars: larger, and the same image.
    let layers_of = |reference: &str| -> Vec<(String, u64)> {
        manifest_layers(reference)
            .into_iter()
            .map(|(t, _, size)| (t, size))
            .collect()
    };
    let gzipped = layers_of(&target);
    assert_eq!(gzipped.len(), 3);
    assert!(
        gzipped
            .iter()
            .all(|(t, _)| t == "application/vnd.oci.image.layer.v1.tar+gzip"),
        "{gzipped:?}"
    );
    let plain = format!("{}/pushed/plain:1", reg.host());
    ok(
        &env,
        &[
            "push",
            "--insecure",
            "--compression",
            "none",
            "mine:1",
            &plain,
        ],
    );
    let tars = layers_of(&plain);
    assert!(
        tars.iter()
            .all(|(t, _)| t == "application/vnd.oci.image.layer.v1.tar"),
        "{tars:?}"
    );
    let (gz_bytes, tar_bytes): (u64, u64) = (
        gzipped.iter().map(|l| l.1).sum(),
        tars.iter().map(|l| l.1).sum(),
    );
    assert!(
        gz_bytes * 10 < tar_bytes * 8,
        "gzip {gz_bytes} bytes against tar {tar_bytes}"
    );
    ok(&other, &["pull", "--insecure", &plain]);
    assert_eq!(ok(&other, &["run", &plain]), want);
}

/// A layer the registry has in another repository is mounted there, not
/// sent again (a cross-repository blob mount, as `docker push` does): a
/// pulled image pushed to a second repository sends no layer and names the
/// very blobs it was pulled as; a committed layer, sent once, is mounted by
/// the next push elsewhere; and a place the registry no longer has (its
/// repository's link to the blob removed) makes the push archive the layer
/// and send it, as it would without any hint.
#[test]
fn a_layer_the_registry_has_in_another_repository_is_mounted_not_sent() {
    let test = "a_layer_the_registry_has_in_another_repository_is_mounted_not_sent";
    if needs_tools(test) || skip_unless_root(test) {
        return;
    }
    let (reg, env, original) = app_pulled();
    let want = ok(&env, &["run", &original]);
    let log_lines = |needle: &str| reg.log().lines().filter(|l| l.contains(needle)).count();
    // Uploads of blob `digest` into `repo` the registry finished (the PUT
    // that ends an upload names the digest).
    let uploads = |repo: &str, digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap().to_string();
        reg.log()
            .lines()
            .filter(|l| l.contains(&format!("PUT /v2/{repo}/blobs/uploads/")) && l.contains(&hex))
            .count()
    };

    let elsewhere = format!("{}/elsewhere/app:1", reg.host());
    let said = push_said(&env, &original, &elsewhere);
    assert!(
        said.contains("0.0 MB sent, 0 already there, 2 mounted from another repository"),
        "{said}"
    );
    assert_eq!(said.matches("mounted from team/app").count(), 2, "{said}");
    assert_eq!(
        manifest_layers(&elsewhere),
        manifest_layers(&original),
        "the same blobs as the pulled image"
    );
    // The registry was asked to mount, and nothing was uploaded.
    assert_eq!(
        log_lines("POST /v2/elsewhere/app/blobs/uploads/?mount=sha256%3A"),
        2,
        "{}",
        reg.log()
    );
    for (_, digest, _) in manifest_layers(&original) {
        assert_eq!(uploads("elsewhere/app", &digest), 0, "{}", reg.log());
    }
    // Pulled from the new repository (its blobs are served from there)
    // into another store, it is the same image.
    let other = Env::new();
    ok(&other, &["pull", "--insecure", &elsewhere]);
    assert_eq!(ok(&other, &["run", &elsewhere]), want);

    // Only a blob the pull itself checked against a layer is remembered: a
    // manifest that pairs the layers this store has with other blobs (here
    // the same tars stored plain; a hostile one could name any blob) leaves
    // no hint, or a later push would name those blobs for these layers.
    let mut layout = Layout::new();
    let d = layout.image_stored(
        &[busybox_layer(), app_layer()],
        "amd64",
        app_config(),
        false,
    );
    layout.tag(d, "1");
    reg.push(layout.dir.path(), "1", "plain/app", false);
    let plain = format!("{}/plain/app:1", reg.host());
    ok(&env, &["pull", "--insecure", &plain]);
    for layer in store(&env).get(&plain).unwrap().layers {
        let hints = duet_registry::sources::read(&store(&env), &layer);
        assert!(!hints.is_empty(), "the first pull's hint stays");
        assert!(
            hints.iter().all(|h| h.repository != "plain/app"),
            "{hints:?}"
        );
    }

    // A committed layer goes to one repository, then is mounted from it.
    commit_a_file(&env, &original, "mine:1");
    let first = format!("{}/a/mine:1", reg.host());
    let said = push_said(&env, "mine:1", &first);
    assert!(
        said.contains("0 already there, 2 mounted from another repository"),
        "{said}"
    );
    let committed = manifest_layers(&first)[2].1.clone();
    assert_eq!(uploads("a/mine", &committed), 1, "{said}");
    let second = format!("{}/b/mine:1", reg.host());
    let said = push_said(&env, "mine:1", &second);
    assert!(
        said.contains("0.0 MB sent, 0 already there, 3 mounted from another repository"),
        "{said}"
    );
    assert_eq!(manifest_layers(&second)[2].1, committed);
    assert_eq!(uploads("b/mine", &committed), 0, "{said}");

    // The registry loses the committed blob from both repositories it was
    // pushed to (the blob's data stays; their links go): the hints lead
    // nowhere, and the next push archives the layer and sends it.
    for repo in ["a/mine", "b/mine"] {
        let link = reg
            .dir
            .path()
            .join("data/docker/registry/v2/repositories")
            .join(repo)
            .join("_layers/sha256")
            .join(committed.strip_prefix("sha256:").unwrap());
        std::fs::remove_dir_all(&link).unwrap();
    }
    let third = format!("{}/c/mine:1", reg.host());
    let said = push_said(&env, "mine:1", &third);
    assert!(
        said.contains("0 already there, 2 mounted from another repository"),
        "{said}"
    );
    assert!(
        said.contains(&format!("pushing layer 3/3 {committed}")),
        "{said}"
    );
    assert_eq!(uploads("c/mine", &committed), 1, "{said}");
    let third_store = Env::new();
    ok(&third_store, &["pull", "--insecure", &third]);
    assert_eq!(
        ok(&third_store, &["run", &third, "--", "cat /srv/made"]).trim(),
        "made-by-commit"
    );
}

/// A real distribution image through the registry: Debian bookworm
/// (debootstrap minbase with PostgreSQL 15 and its seeded layer, the
/// pristine-db image), pushed by duet, pulled into a fresh store, given a
/// third layer that deletes a file (a whiteout) by `duet commit`, pushed
/// again and pulled into another store, where the file is gone and the
/// rest of Debian is there.
#[test]
fn a_debian_image_goes_through_the_registry_and_back_with_a_whiteout() {
    let test = "a_debian_image_goes_through_the_registry_and_back_with_a_whiteout";
    if needs_tools(test) {
        return;
    }
    let Some(pg_store) = common::pristine::store(test) else {
        return;
    };
    let reg = registry_with(None, "team/app", &[busybox_layer()]);
    let push_from = |root: &Path, image: &str, target: &str| {
        let o = Command::new(duet_bin())
            .args(["push", "--insecure", image, target])
            .env("DUET_ROOT", root)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let debian = format!("{}/debian/postgres:15", reg.host());
    push_from(pg_store, common::pristine::IMAGE, &debian);
    let first = Env::new();
    ok(&first, &["pull", "--insecure", &debian]);
    let os = ok(&first, &["run", &debian, "--", "cat", "/etc/os-release"]);
    assert!(os.contains("bookworm"), "{os}");
    let keeper = format!("debian-whiteout-{}", std::process::id());
    ok(
        &first,
        &[
            "run",
            "--keep",
            "--user",
            "0",
            "--name",
            &keeper,
            &debian,
            "--",
            "rm",
            "/etc/debian_version",
        ],
    );
    ok(&first, &["commit", &keeper, "debian-trimmed:1"]);
    ok(&first, &["rm", &keeper]);
    let trimmed = format!("{}/debian/trimmed:1", reg.host());
    let digest = push_from(first.root(), "debian-trimmed:1", &trimmed);
    let second = Env::new();
    ok(
        &second,
        &[
            "pull",
            "--insecure",
            &format!("{}/debian/trimmed@{digest}", reg.host()),
        ],
    );
    ok(&second, &["pull", "--insecure", &trimmed]);
    let ls = ok(&second, &["image", "ls"]);
    // REPOSITORY TAG DIGEST LAYERS SIZE AGE
    let row: Vec<&str> = ls
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0].ends_with("debian/trimmed") && f[1] == "1")
        .unwrap_or_else(|| panic!("{ls}"));
    assert_eq!(row[2], &digest[..19], "{ls}");
    assert_eq!(row[3], "3", "three layers: {ls}");
    let seen = ok(
        &second,
        &[
            "run",
            "--user",
            "0",
            &trimmed,
            "--",
            "sh",
            "-c",
            "cat /etc/os-release; ls /etc/debian_version 2>&1; true",
        ],
    );
    assert!(seen.contains("bookworm"), "{seen}");
    assert!(
        seen.contains("No such file"),
        "the whiteout did not hold: {seen}"
    );
}

/// In the testbed: a registry there, `duet pull`, and the image's
/// entrypoint, env, workdir and user in a microVM.
const TESTBED_CASE: &str = r#"set -eu
printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: /testbed/registry-data\nhttp:\n  addr: 127.0.0.1:5000\n' > /tmp/registry.yml
docker-registry serve /tmp/registry.yml > /tmp/registry.log 2>&1 &
i=0
until wget -q -O /dev/null http://127.0.0.1:5000/v2/; do
  i=$((i + 1)); [ $i -lt 300 ] || { cat /tmp/registry.log; exit 1; }
  sleep 0.1
done
duet pull --insecure 127.0.0.1:5000/team/app:1
echo "== default"
duet run --isolation vm --pull never 127.0.0.1:5000/team/app:1
echo "== user"
duet run --isolation vm --user app:staff 127.0.0.1:5000/team/app:1 -- 'id -u; id -g; pwd'
echo "== groups"
duet run --isolation vm 127.0.0.1:5000/team/app:1 -- 'id -G'
echo "registry-vm: ok"
"#;

#[test]
fn a_pulled_image_runs_in_a_microvm_in_the_testbed() {
    let test = "a_pulled_image_runs_in_a_microvm_in_the_testbed";
    if needs_tools(test) {
        return;
    }
    if let Some(why) = common::testbed::missing() {
        duet_shared::testing::skip(test, &format!("the nested-KVM testbed {why}"));
        return;
    }
    let reg = registry_with(None, "team/app", &[busybox_layer(), app_layer()]);
    let work = tempfile::Builder::new()
        .prefix("duet-registry-vm-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let script = work.path().join("registry-vm.sh");
    std::fs::write(&script, TESTBED_CASE).unwrap();
    let registry = duet_shared::testing::find_program("docker-registry").unwrap();
    let out = Command::new(common::testbed::repo().join("tests/testbed/run"))
        .args(["--timeout", "600", "--with-libs"])
        .arg(&registry)
        .arg("--file")
        .arg(format!(
            "{}:/testbed/registry-data",
            reg.dir.path().join("data").display()
        ))
        .arg("--file")
        .arg(&script)
        .args(["--", "sh", "/testbed/files/registry-vm.sh"])
        .env("DUET_BIN", duet_bin())
        .env("DUET_INIT", common::testbed::duet_init())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(125), "the testbed failed: {text}");
    assert!(
        out.status.success() && text.contains("registry-vm: ok"),
        "{text}"
    );
    let default = text.split("== default\n").nth(1).unwrap_or_default();
    assert!(
        default.starts_with("hi from /srv as 1000:1000\nhello from the app layer\nmotd-gone\n"),
        "{text}"
    );
    let user = text.split("== user\n").nth(1).unwrap_or_default();
    assert!(user.starts_with("1000\n50\n/srv\n"), "{text}");
    let groups = text.split("== groups\n").nth(1).unwrap_or_default();
    assert!(groups.starts_with("1000 50\n"), "{text}");
}
