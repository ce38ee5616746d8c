//! duet under Kubernetes' container runtime interface, without a kubelet:
//! the test starts a private containerd (Debian's 1.6, own root, state,
//! socket and config, in a mount namespace of its own) whose CRI plugin
//! has a runtime handler `duet` (`io.containerd.runc.v2` with
//! `BinaryName` = duet-runc), and speaks CRI v1 to it over gRPC as kubelet
//! does (the `k8s-cri` bindings, tonic): RunPodSandbox with
//! `runtime_handler: duet`, CreateContainer, StartContainer,
//! ContainerStatus, ExecSync, the container's log, StopContainer,
//! RemoveContainer, StopPodSandbox, RemovePodSandbox; then nothing is left.
//!
//! The pod uses the node's network (no CNI plugin is configured, and the
//! host's network must not change); the sandbox ("pause") and workload
//! images are a busybox layer imported with `ctr images import`.
//!
//! The handler `duet-vm` (`BinaryName` = duet-runc-vm: every container of
//! the pod, its sandbox too, is a microVM) needs a KVM that boots Linux:
//! the same sequence runs inside the nested-KVM testbed, with this test
//! binary, containerd, ctr, the shim and runc packed in
//! (`cri_pod_with_runtime_handler_duet_vm_in_the_testbed` outside runs
//! `inner_cri_duet_vm` inside).

mod common;

use common::{duet_bin, pids_with, skip, skip_unless_program};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private containerd, killed and its directories removed on drop.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    cgroup_parent: String,
}

impl Containerd {
    fn sock(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// containerd with the handlers `duet` (`runtime`, a duet-runc link)
    /// and `duet-vm` (`runtime`'s sibling `duet-runc-vm`), on `snapshotter`.
    fn start(runtime: &Path, snapshotter: &str) -> Containerd {
        // Short: shim socket paths are derived from it.
        let dir = tempfile::Builder::new()
            .prefix("duet-ctd-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = |p: &str| dir.path().join(p).display().to_string();
        std::fs::create_dir_all(d("cni")).unwrap();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "duet.test/pause:1"
  disable_apparmor = true
  # The pause container asks for -998; root here may lack CAP_SYS_RESOURCE
  # (sandboxes), so oom_score_adj is kept at containerd's own, as rootless setups do.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.duet]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.duet.options]
        BinaryName = "{runtime}"
        SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.duet-vm]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.duet-vm.options]
        BinaryName = "{runtime}-vm"
        SystemdCgroup = false
"#,
            root = d("root"),
            state = d("state"),
            sock = d("c.sock"),
            opt = d("opt"),
            cni = d("cni"),
            runtime = runtime.display(),
        );
        std::fs::write(d("config.toml"), config).unwrap();
        let log = std::fs::File::create(d("containerd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "containerd", "--config"])
            .arg(d("config.toml"))
            // Shim and runtime messages too: what a failed test prints.
            .args(["--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let c = Containerd {
            dir,
            child,
            cgroup_parent: format!("duet-test-cri-{}", std::process::id()),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.sock())
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims outlive containerd by design: end the ones of this instance.
        duet_bench::docker::kill_own_shims(self.dir.path());
        // A failed test leaves pods: end their processes (all below the pods' cgroup parent).
        for base in cgroup_roots() {
            kill_tree(&base.join(&self.cgroup_parent));
        }
        std::thread::sleep(Duration::from_millis(200));
        duet_bench::docker::remove_cgroup_parent(&self.cgroup_parent);
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(self.dir.path())
            .stderr(Stdio::null())
            .status();
    }
}

fn cgroup_roots() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/sys/fs/cgroup")];
    v.extend(
        std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    v
}

fn kill_tree(d: &Path) {
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            kill_tree(&e.path());
        }
    }
    let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) of a process in this test's own pod cgroups.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Cgroup directories below `parent` in any hierarchy (the pod's and its containers').
fn cgroups_below(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for base in cgroup_roots() {
        let p = base.join(parent);
        for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
            }
        }
    }
    out
}

/// A docker-save archive of one busybox layer with `cmd` as its CMD, tagged `tag`.
fn image_tar(dir: &Path, tag: &str, cmd: &[&str]) -> PathBuf {
    use sha2::Digest;
    let rootfs = dir.join(format!("rootfs-{}", tag.replace([':', '/'], "-")));
    duet_bench::oci::make_busybox_rootfs(&rootfs, Path::new("/bin/busybox")).unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.append_dir_all(".", &rootfs).unwrap();
    let layer = layer.into_inner().unwrap();
    let diff_id = hex::encode(sha2::Sha256::digest(&layer));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "FROM_IMAGE=yes"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]}
    });
    let manifest = serde_json::json!([{
        "Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]
    }]);
    let out = dir.join(format!("{}.tar", tag.replace([':', '/'], "-")));
    let mut t = tar::Builder::new(std::fs::File::create(&out).unwrap());
    for (name, data) in [
        ("manifest.json", manifest.to_string().into_bytes()),
        ("config.json", config.to_string().into_bytes()),
        ("layer.tar", layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    t.finish().unwrap();
    out
}

async fn connect(sock: PathBuf) -> RuntimeServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(sock).await?,
                ))
            }
        }))
        .await
        .expect("connecting to containerd's CRI");
    RuntimeServiceClient::new(channel)
}

/// A container `name` of the busybox image running `command`, logging to
/// `NAME.log`, on the node's network, with the pid namespace `pid`.
fn container_config(name: &str, command: &str, pid: NamespaceMode) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: "duet.test/busybox:1".into(),
            ..Default::default()
        }),
        command: vec![command.into()],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: pid as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

type Cri = RuntimeServiceClient<tonic::transport::Channel>;

/// CreateContainer + StartContainer of `config` in `pod`, as kubelet does;
/// the container's id. `log` is containerd's, for the panic message.
async fn start_in_pod(
    c: &mut Cri,
    pod: &str,
    config: ContainerConfig,
    sandbox_config: &PodSandboxConfig,
    log: &dyn Fn() -> String,
) -> String {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let id = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", log()))
        .into_inner()
        .container_id;
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", log()));
    id
}

/// ContainerStatus of `id`.
async fn status_of(c: &mut Cri, id: &str) -> ContainerStatus {
    c.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

/// The pod's sandbox config `name`: logs in `logs`, cgroups below
/// `parent`, the node's network.
fn sandbox_config(name: &str, logs: &Path, parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{parent}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pause and busybox images, imported into `ctd`'s k8s.io namespace.
fn import_images(ctd: &Containerd, work: &Path) {
    for (tag, cmd) in [
        ("duet.test/pause:1", vec!["sleep", "2147483"]),
        ("duet.test/busybox:1", vec!["sh"]),
    ] {
        let tar = image_tar(work, tag, &cmd);
        let o = ctd.ctr(&["images", "import", tar.to_str().unwrap()]);
        assert!(o.status.success(), "ctr import: {o:?}");
    }
}

/// Starts the container "web" (image env + FOO=bar, a line on stdout,
/// then `sleep 4545`) in `pod` and checks it runs, that ExecSync returns
/// its output and exit code, and that its CRI log has the line; its id.
async fn web_container(
    c: &mut Cri,
    pod: &str,
    sandbox_config: &PodSandboxConfig,
    logs: &Path,
    ctd_log: &dyn Fn() -> String,
) -> String {
    let created = start_in_pod(
        c,
        pod,
        ContainerConfig {
            args: vec![
                "-c".into(),
                "echo hello-cri $FROM_IMAGE $FOO; exec sleep 4545".into(),
            ],
            envs: vec![KeyValue {
                key: "FOO".into(),
                value: "bar".into(),
            }],
            // kubelet's default: a pid namespace of the container's own.
            ..container_config("web", "sh", NamespaceMode::Container)
        },
        sandbox_config,
        ctd_log,
    )
    .await;
    let st = status_of(c, &created).await;
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    let ex = c
        .exec_sync(ExecSyncRequest {
            container_id: created.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo in $FOO; exit 3".into()],
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", ctd_log()))
        .into_inner();
    assert_eq!(
        (String::from_utf8_lossy(&ex.stdout).as_ref(), ex.exit_code),
        ("in bar\n", 3),
        "ExecSync's stdout and exit code (stderr: {:?})\ncontainerd's log:\n{}",
        String::from_utf8_lossy(&ex.stderr),
        ctd_log()
    );
    // The container's log, in CRI's format: "TIME stdout F LINE".
    let log = logs.join("web.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(" stdout F hello-cri yes bar") {
            break;
        }
        assert!(Instant::now() < deadline, "log: {text:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    created
}

/// RunPodSandbox of `config` with `handler`, as kubelet does; the pod's id.
async fn run_pod(
    c: &mut Cri,
    config: &PodSandboxConfig,
    handler: &str,
    log: &dyn Fn() -> String,
) -> String {
    c.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", log()))
    .into_inner()
    .pod_sandbox_id
}

/// StopPodSandbox then RemovePodSandbox of `pod`.
async fn remove_pod(c: &mut Cri, pod: &str, log: &dyn Fn() -> String) {
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", log()));
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", log()));
}

/// StopContainer (grace 1 s) then RemoveContainer of `id`; its status in
/// between. A failure carries containerd's debug log (the shim's own lines
/// are in it).
async fn stop_and_remove(c: &mut Cri, id: &str, log: &dyn Fn() -> String) -> ContainerStatus {
    c.stop_container(StopContainerRequest {
        container_id: id.into(),
        timeout: 1,
    })
    .await
    .unwrap_or_else(|e| panic!("StopContainer: {e}\n{}", log()));
    let st = status_of(c, id).await;
    c.remove_container(RemoveContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemoveContainer: {e}\n{}", log()));
    st
}

#[test]
fn cri_pod_with_runtime_handler_duet_runs_execs_logs_and_stops() {
    let test = "cri_pod_with_runtime_handler_duet_runs_execs_logs_and_stops";
    if let Some(why) = duet_bench::docker::unavailable() {
        skip(test, &why);
        return;
    }
    if skip_unless_program(test, "ctr", "containerd") {
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("duet-cri-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let runtime = work.path().join("duet-runc");
    std::os::unix::fs::symlink(duet_bin(), &runtime).unwrap();
    let ctd = Containerd::start(&runtime, "overlayfs");
    import_images(&ctd, work.path());
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let parent = ctd.cgroup_parent.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = connect(ctd.sock()).await;
        let v = c
            .version(VersionRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.runtime_name, "containerd");
        let sandbox_config = sandbox_config("duet-pod", &logs, &parent);
        let ctd_log = || ctd.log();
        let pod = run_pod(&mut c, &sandbox_config, "duet", &ctd_log).await;
        let created = web_container(&mut c, &pod, &sandbox_config, &logs, &ctd_log).await;
        // The pod's processes run under duet: its state root is the shim's --root.
        assert_eq!(pids_with("sleep\u{0}4545").len(), 1);

        let st = stop_and_remove(&mut c, &created, &ctd_log).await;
        assert_eq!(st.state, ContainerState::ContainerExited as i32);
        assert_eq!(st.exit_code, 137, "sleep as pid 1 ignores TERM: killed");
        // A second container sharing the pod's process namespace
        // (shareProcessNamespace: the pause process is its pid 1).
        let shared = start_in_pod(
            &mut c,
            &pod,
            ContainerConfig {
                args: vec!["4646".into()],
                ..container_config("shared", "sleep", NamespaceMode::Pod)
            },
            &sandbox_config,
            &ctd_log,
        )
        .await;
        let ex = c
            .exec_sync(ExecSyncRequest {
                container_id: shared.clone(),
                cmd: vec!["cat".into(), "/proc/1/cmdline".into()],
                timeout: 20,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            String::from_utf8_lossy(&ex.stdout),
            "sleep\u{0}2147483\u{0}"
        );
        stop_and_remove(&mut c, &shared, &ctd_log).await;

        remove_pod(&mut c, &pod, &ctd_log).await;
    });
    assert!(pids_with("sleep\u{0}4545").is_empty());
    assert!(pids_with("sleep\u{0}4646").is_empty());
    assert!(pids_with("sleep\u{0}2147483").is_empty(), "pause left");
    let left = cgroups_below(&parent);
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

/// What the outer test packs into the testbed besides duet (programs with their libraries).
const TESTBED_PROGRAMS: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("containerd-shim-runc-v2", "containerd"),
    ("runc", "runc"),
    ("/usr/lib/qemu/virtiofsd", "qemu-system-common"),
];

#[test]
fn cri_pod_with_runtime_handler_duet_vm_in_the_testbed() {
    let test = "cri_pod_with_runtime_handler_duet_vm_in_the_testbed";
    if let Some(why) = common::testbed::missing() {
        skip(test, &format!("the nested-KVM testbed {why}"));
        return;
    }
    let mut args: Vec<String> = Vec::new();
    for (prog, pkg) in TESTBED_PROGRAMS {
        if skip_unless_program(test, prog, pkg) {
            return;
        }
        let p = duet_shared::testing::find_program(prog).unwrap();
        args.extend(["--with-libs".into(), p.display().to_string()]);
    }
    // This very test binary runs the inner half; without its debug info it
    // packs in a tenth of the size.
    let work = tempfile::Builder::new()
        .prefix("duet-cri-vm-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let inner = work.path().join("cri-inner");
    let me = std::env::current_exe().unwrap();
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&me)
        .arg(&inner)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(&me, &inner).unwrap();
    }
    args.extend(["--with-libs".into(), inner.display().to_string()]);
    let out = Command::new(common::testbed::repo().join("tests/testbed/run"))
        .args(["--timeout", "900"])
        .args(&args)
        .args([
            "--",
            "env",
            "DUET_TEST_STRICT=1",
            "DUET_CRI_DUET=/usr/local/bin/duet",
        ])
        .arg(&inner)
        .args([
            "--ignored",
            "--exact",
            "inner_cri_duet_vm",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DUET_BIN", duet_bin())
        .env("DUET_INIT", common::testbed::duet_init())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_ne!(
        out.status.code(),
        Some(125),
        "the testbed failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("inner CRI duet-vm: ok") && text.contains("1 passed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The testbed kernel's `signal_generate` and `sched_process_exit` events
/// (the testbed is a machine of the test's own): which signal reached
/// which process, and which ended, while the pod ran. Not on the host.
struct SignalTrace(Option<PathBuf>);

impl SignalTrace {
    fn start() -> SignalTrace {
        let t = PathBuf::from("/sys/kernel/tracing");
        if !t.join("events").is_dir() {
            let _ = Command::new("mount")
                .args(["-t", "tracefs", "tracefs"])
                .arg(&t)
                .status();
        }
        let ev = t.join("events");
        let ok = std::fs::write(t.join("buffer_size_kb"), "4096").is_ok()
            // SIGCHLD and Go's preemption signal (SIGURG) are noise.
            && std::fs::write(ev.join("signal/signal_generate/filter"), "sig != 17 && sig != 23").is_ok()
            && std::fs::write(ev.join("signal/signal_generate/enable"), "1").is_ok()
            && std::fs::write(ev.join("sched/sched_process_exit/enable"), "1").is_ok()
            && std::fs::write(t.join("trace"), "").is_ok();
        SignalTrace(ok.then_some(t))
    }

    /// The last events, oldest first.
    fn text(&self) -> String {
        let Some(t) = &self.0 else {
            return "(no kernel trace: tracefs unavailable)".into();
        };
        let all = std::fs::read_to_string(t.join("trace")).unwrap_or_default();
        let lines: Vec<&str> = all.lines().filter(|l| !l.starts_with('#')).collect();
        let tail = &lines[lines.len().saturating_sub(80)..];
        format!("kernel trace (signals, exits):\n{}", tail.join("\n"))
    }
}

/// Live processes whose command line contains `needle`.
fn live_with(needle: &str) -> usize {
    pids_with(needle)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status")).is_ok_and(|s| {
                !s.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
            })
        })
        .count()
}

/// The pod sequence with the handler `duet-vm`, inside the testbed only.
#[test]
#[ignore = "the inner half of cri_pod_with_runtime_handler_duet_vm_in_the_testbed, run inside the testbed"]
fn inner_cri_duet_vm() {
    let duet = std::env::var_os("DUET_CRI_DUET")
        .map(PathBuf::from)
        .unwrap_or_else(duet_bin);
    assert_eq!(
        std::env::var("DUET_TESTBED").as_deref(),
        Ok("1"),
        "runs only inside the testbed (it writes the machine's /etc)"
    );
    std::fs::create_dir_all("/var/tmp").unwrap();
    // A host-network pod copies the node's /etc/hosts and resolv.conf; the
    // testbed's busybox userland has none.
    for (f, text) in [
        ("/etc/hosts", "127.0.0.1 localhost\n"),
        ("/etc/resolv.conf", "nameserver 127.0.0.1\n"),
    ] {
        if !Path::new(f).exists() {
            std::fs::create_dir_all("/etc").unwrap();
            std::fs::write(f, text).unwrap();
        }
    }
    let work = tempfile::Builder::new()
        .prefix("duet-cri-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let runtime = work.path().join("duet-runc");
    std::os::unix::fs::symlink(&duet, &runtime).unwrap();
    std::os::unix::fs::symlink(&duet, work.path().join("duet-runc-vm")).unwrap();
    // The testbed's kernel has no overlay module loaded: plain directories.
    let ctd = Containerd::start(&runtime, "native");
    import_images(&ctd, work.path());
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let parent = ctd.cgroup_parent.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = connect(ctd.sock()).await;
        let sandbox_config = sandbox_config("duet-vm-pod", &logs, &parent);
        // What a failure prints: who signalled which process and which
        // ended, from the testbed kernel's trace, then containerd's log
        // (with the shims' own lines).
        let trace = SignalTrace::start();
        let ctd_log = || {
            format!(
                "{}\ncontainerd's log (continued):\n{}",
                trace.text(),
                ctd.log()
            )
        };
        let pod = run_pod(&mut c, &sandbox_config, "duet-vm", &ctd_log).await;
        let created = web_container(&mut c, &pod, &sandbox_config, &logs, &ctd_log).await;
        // The workload runs in the guest: the host sees its keeper, not its sleep.
        assert_eq!(pids_with("sleep\u{0}4545").len(), 0);
        assert!(
            live_with("__vm-keeper") >= 2,
            "sandbox and container keepers"
        );
        let ex = c
            .exec_sync(ExecSyncRequest {
                container_id: created.clone(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "grep -c virtiofs /proc/mounts".into(),
                ],
                timeout: 60,
            })
            .await
            .unwrap()
            .into_inner();
        assert_ne!(
            String::from_utf8_lossy(&ex.stdout).trim(),
            "0",
            "no virtio-fs root"
        );

        let st = stop_and_remove(&mut c, &created, &ctd_log).await;
        assert_eq!(st.state, ContainerState::ContainerExited as i32);
        // In the guest the workload is not PID 1 (duet-init is): TERM ends it.
        assert_eq!(st.exit_code, 143, "TERM through the guest agent");

        // Sharing the pod's process namespace needs one kernel for the pod:
        // refused by field.
        let id = c
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ContainerConfig {
                    args: vec!["4646".into()],
                    ..container_config("shared", "sleep", NamespaceMode::Pod)
                }),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        let e = c
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert!(
            e.message()
                .contains("cannot join another container's namespace"),
            "{e}\ncontainerd's log:\n{}\nlogs: {}",
            ctd_log(),
            std::fs::read_dir(&logs)
                .map(|rd| rd
                    .flatten()
                    .map(|f| format!(
                        "{:?}: {}",
                        f.path(),
                        std::fs::read_to_string(f.path()).unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
                    .join("\n"))
                .unwrap_or_default()
        );
        c.remove_container(RemoveContainerRequest { container_id: id })
            .await
            .unwrap();

        remove_pod(&mut c, &pod, &ctd_log).await;
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while live_with("__vm-keeper") + live_with("/usr/lib/qemu/virtiofsd") > 0 {
        assert!(Instant::now() < deadline, "keepers or virtiofsd left");
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = cgroups_below(&parent);
    assert!(left.is_empty(), "cgroups left: {left:?}");
    println!("inner CRI duet-vm: ok");
}
