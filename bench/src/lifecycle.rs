//! Lifecycle latencies for `duet bench startup`: `run -d` until the
//! workload runs, and the `exec` round trip (`exec ID true`) into a running
//! instance, for duet and for the OCI peers (`runc exec`), measured in one run.

use crate::instances::{IdleInstance, IdleLauncher};
use crate::startup::{timed_ok, StartError, StartSample, Starter};
use crate::Kind;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `duet run -d --isolation I IMAGE -- sleep 1000000`, timed until the CLI
/// returns (it returns once the workload runs); each instance is removed
/// (`rm -f`) untimed.
pub struct DetachStarter {
    /// The duet binary.
    pub duet: PathBuf,
    /// `container` or `vm`.
    pub isolation: String,
    /// Image.
    pub image: String,
}

impl Starter for DetachStarter {
    fn label(&self) -> String {
        format!("duet run -d {} (to running)", self.isolation)
    }

    fn kind(&self) -> Kind {
        Kind::of_isolation(&self.isolation)
    }

    fn start_once(&mut self, _i: usize) -> Result<StartSample, StartError> {
        let mut cmd = Command::new(&self.duet);
        // No network, as the peers (runc, crun) it is compared with have none.
        cmd.args([
            "run",
            "-d",
            "--network",
            "none",
            "--isolation",
            &self.isolation,
        ])
        .args([&self.image, "--", "sleep", "1000000"]);
        let out = timed_ok(&mut cmd, "duet run -d")?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut rm = Command::new(&self.duet);
        rm.args(["rm", "-f", &id]).stdin(Stdio::null());
        timed_ok(&mut rm, &format!("duet rm -f {id}"))?;
        Ok(StartSample::wall(&out))
    }
}

/// Makes the exec command line for an instance id.
pub type ExecArgv = Box<dyn Fn(&str) -> Vec<String>>;

/// `PROGRAM... exec ID true` against one idle instance, started on the
/// first sample (untimed) and stopped when the starter is dropped.
pub struct ExecStarter {
    /// Row label (e.g. `duet exec container`, `runc 1.1.5 exec`).
    pub label: String,
    /// Starts the instance to exec into.
    pub launcher: Box<dyn IdleLauncher>,
    /// The exec command for an instance id, e.g. `["duet", "exec", ID, "true"]`.
    pub argv: ExecArgv,
    /// The instance, once started.
    pub instance: Option<Box<dyn IdleInstance>>,
}

impl Starter for ExecStarter {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn kind(&self) -> Kind {
        self.launcher.kind()
    }

    fn start_once(&mut self, _i: usize) -> Result<StartSample, StartError> {
        if self.instance.is_none() {
            let i = self
                .launcher
                .start_idle(0)
                .map_err(|e| StartError::Other(format!("{}: {e}", self.label)))?;
            self.instance = Some(i);
        }
        let inst = self.instance.as_ref().expect("started above");
        let id = inst
            .handle()
            .ok_or_else(|| StartError::Other(format!("{}: no id to exec into", self.label)))?;
        let argv = (self.argv)(&id);
        let (program, args) = argv.split_first().expect("a program");
        let mut cmd = Command::new(program);
        cmd.args(args);
        let out = timed_ok(&mut cmd, &argv.join(" "))?;
        Ok(StartSample::wall(&out))
    }
}

impl Drop for ExecStarter {
    fn drop(&mut self) {
        if let Some(mut i) = self.instance.take() {
            let _ = i.stop();
        }
    }
}
