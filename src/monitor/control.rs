//! How the CLI talks to a monitor: one JSON request line on the Unix
//! socket `<instance>/monitor.sock`, one JSON response line back.
//! `Wait` and `Stop` are answered when the workload has ended for good.

use anyhow::{bail, Context, Result};
use duet_shared::{InstanceDir, WorkloadExit};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

/// The monitor's socket in an instance directory.
pub const SOCKET: &str = "monitor.sock";

/// A request to a monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Send a signal to the workload (no restart after it ends).
    Kill {
        /// Signal number.
        signal: i32,
    },
    /// SIGTERM, then SIGKILL after `grace_ms`; answered at the end.
    Stop {
        /// Grace period in milliseconds.
        grace_ms: u64,
    },
    /// Answered when the workload has ended for good.
    Wait,
}

/// A monitor's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Done; for `Wait`/`Stop` with how the workload ended.
    Ok {
        /// The final exit, if the request waited for it.
        exit: Option<WorkloadExit>,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// The socket of `dir`.
pub fn socket_path(dir: &InstanceDir) -> PathBuf {
    dir.path().join(SOCKET)
}

/// Sends `req` to the monitor of `dir` and reads its answer. `None` when no
/// monitor listens (it has ended, or is lost) or it went away before
/// answering: the caller then reads the instance's metadata.
pub fn request(dir: &InstanceDir, req: &Request) -> Result<Option<Response>> {
    let path = socket_path(dir);
    let mut s = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    let mut line = serde_json::to_string(req).expect("request serializes");
    line.push('\n');
    if s.write_all(line.as_bytes()).is_err() {
        return Ok(None);
    }
    let mut answer = String::new();
    match BufReader::new(s).read_line(&mut answer) {
        Ok(0) | Err(_) => return Ok(None),
        Ok(_) => {}
    }
    match serde_json::from_str(&answer) {
        Ok(r) => Ok(Some(r)),
        Err(e) => bail!(
            "instance `{}`: its monitor answered {answer:?}: {e}",
            dir.id()
        ),
    }
}
