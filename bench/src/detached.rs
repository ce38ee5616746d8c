//! Idle instances started with `duet run -d`, for `duet bench density`
//! and the exec rows of `duet bench startup`.

use crate::instances::{IdleInstance, IdleLauncher, LaunchError};
use crate::Kind;
use std::process::{Command, Stdio};

/// Idle instances started with `duet run -d`: no duet process waits beside
/// each, only its monitor (which the memory counts: the monitor's tree
/// holds the workload).
pub struct DetachedIdle {
    /// Row label.
    pub label: String,
    /// The duet binary.
    pub duet: std::path::PathBuf,
    /// duet's state root (where `instances/<id>/meta.json` names the monitor).
    pub state_root: std::path::PathBuf,
    /// `container` or `vm`.
    pub isolation: String,
    /// Image.
    pub image: String,
}

impl DetachedIdle {
    /// `duet run -d --isolation I IMAGE -- sleep 1000000`.
    pub fn new(
        duet: &std::path::Path,
        state_root: &std::path::Path,
        isolation: &str,
        image: &str,
    ) -> DetachedIdle {
        DetachedIdle {
            label: format!("duet run -d {isolation}"),
            duet: duet.to_path_buf(),
            state_root: state_root.to_path_buf(),
            isolation: isolation.to_string(),
            image: image.to_string(),
        }
    }
}

/// One `run -d` instance: its id and monitor.
pub struct DetachedInstance {
    duet: std::path::PathBuf,
    id: String,
    monitor: u32,
    stopped: bool,
}

impl IdleLauncher for DetachedIdle {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn kind(&self) -> Kind {
        Kind::of_isolation(&self.isolation)
    }

    fn start_idle(&mut self, i: usize) -> Result<Box<dyn IdleInstance>, LaunchError> {
        let out = Command::new(&self.duet)
            .args([
                "run",
                "-d",
                "--network",
                "none",
                "--isolation",
                &self.isolation,
                &self.image,
                "--",
                "sleep",
                "1000000",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LaunchError::Start(format!("spawning {}: {e}", self.duet.display())))?;
        if !out.status.success() {
            return Err(LaunchError::Start(format!(
                "{} #{i}: duet run -d: {}",
                self.label,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let meta = self
            .state_root
            .join("instances")
            .join(&id)
            .join("meta.json");
        let monitor = std::fs::read(&meta)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["owner_pid"].as_u64())
            .ok_or_else(|| {
                LaunchError::Start(format!(
                    "{}: no monitor pid in {}",
                    self.label,
                    meta.display()
                ))
            })?;
        Ok(Box::new(DetachedInstance {
            duet: self.duet.clone(),
            id,
            monitor: monitor as u32,
            stopped: false,
        }))
    }
}

impl IdleInstance for DetachedInstance {
    fn root_pids(&self) -> Vec<u32> {
        vec![self.monitor]
    }

    fn name(&self) -> String {
        format!("{} (monitor pid {})", self.id, self.monitor)
    }

    fn handle(&self) -> Option<String> {
        Some(self.id.clone())
    }

    fn stop(&mut self) -> Result<(), LaunchError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let o = Command::new(&self.duet)
            .args(["rm", "-f", &self.id])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LaunchError::Stop(format!("{}: {e}", self.id)))?;
        if !o.status.success() {
            return Err(LaunchError::Stop(format!(
                "{}: duet rm -f: {}",
                self.id,
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        Ok(())
    }
}

impl Drop for DetachedInstance {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
