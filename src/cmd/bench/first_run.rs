//! First-run rows of `duet bench startup`: what `docker run IMAGE` costs
//! the first time on a machine, pull + unpack + start. A private
//! `docker-registry` (Debian's distribution 2.8) on 127.0.0.1 with its
//! storage in the bench's scratch directory gets the bench's busybox by
//! `duet push`; every timed run then starts with an empty state root of
//! its own, so `duet run --insecure REF -- true` pulls the image, unpacks
//! its layers (and, for a microVM, builds their disk images), and runs.
//! The run report's `spec_loaded` step is the pull and unpack.

use duet_bench::startup::{DuetStarter, StartError, StartSample, Starter};
use duet_bench::Kind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A registry of the bench's own; stopped and its storage removed on drop.
pub(super) struct LocalRegistry {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:PORT`.
    pub host: String,
}

impl LocalRegistry {
    /// Starts one in `scratch`, or says why it cannot.
    pub fn start(scratch: &Path) -> Result<LocalRegistry, String> {
        let program = duet_shared::testing::find_program("docker-registry")
            .ok_or("no docker-registry (apt-get install docker-registry)")?;
        let dir = scratch.join("registry");
        std::fs::create_dir_all(dir.join("data")).map_err(|e| format!("{}: {e}", dir.display()))?;
        // A free port: bound, read, released (the registry binds it next).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
                dir.join("data").display()
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let child = Command::new(&program)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        let reg = LocalRegistry { child, dir, host };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&reg.host).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "docker-registry did not listen on {} within 20 s: {}",
                    reg.host,
                    std::fs::read_to_string(reg.dir.join("log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `duet push`es the bench's busybox into `reg`; returns its reference.
pub(super) fn push_busybox(duet: &Path, reg: &LocalRegistry) -> Result<String, String> {
    let target = format!("{}/duet-bench/busybox:1", reg.host);
    let out = Command::new(duet)
        .args(["push", "--insecure", "--quiet", "busybox", &target])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", duet.display()))?;
    if !out.status.success() {
        return Err(format!(
            "duet push busybox {target}: {}",
            duet_bench::startup::tail(&out.stderr)
        ));
    }
    Ok(target)
}

/// `duet run --insecure REF -- true` from an empty state root each time.
pub(super) struct FirstRun {
    pub inner: DuetStarter,
    /// Where the runs' state roots go (each removed after its run).
    pub roots: PathBuf,
}

impl FirstRun {
    /// The row's label for isolation `iso`.
    pub fn label_for(iso: &str) -> String {
        format!("duet {iso} first run (pull + unpack + start)")
    }
}

impl Starter for FirstRun {
    fn label(&self) -> String {
        FirstRun::label_for(&self.inner.isolation)
    }

    fn kind(&self) -> Kind {
        self.inner.kind()
    }

    fn start_once(&mut self, i: usize) -> Result<StartSample, StartError> {
        let root = self.roots.join(format!("run-{i}"));
        let _ = std::fs::remove_dir_all(&root);
        self.inner.root = Some(root.clone());
        let r = self.inner.start_once(i);
        let _ = std::fs::remove_dir_all(&root);
        r
    }
}
