//! Finding the workload's executable before exec, the way a shell does.
//!
//! The init resolves the command itself (instead of letting `execvp` search)
//! so that "ready" is reported right before the one `execve` that starts the
//! workload, and so a missing command gets the shell's message and status 127.

use nix::unistd::{access, AccessFlags};
use std::path::{Path, PathBuf};

/// `PATH` used when the workload's environment sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit status of a workload whose command does not exist (shell convention).
pub const EXIT_NOT_FOUND: u8 = 127;
/// Exit status of a workload whose command exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: u8 = 126;

/// Why a command cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Nothing of that name in `PATH` (or at that path).
    #[error("command not found: {0}")]
    NotFound(String),
    /// Found, but not an executable regular file.
    #[error("cannot execute {}: {reason}", path.display())]
    NotExecutable {
        /// The file found.
        path: PathBuf,
        /// Why it cannot run.
        reason: String,
    },
}

impl LookupError {
    /// The exit status the workload reports for this error (127 or 126).
    pub fn exit_code(&self) -> u8 {
        match self {
            LookupError::NotFound(_) => EXIT_NOT_FOUND,
            LookupError::NotExecutable { .. } => EXIT_NOT_EXECUTABLE,
        }
    }
}

/// What a candidate path is.
enum Candidate {
    Runnable,
    Missing,
    Unrunnable(String),
}

fn check(path: &Path) -> Candidate {
    match std::fs::metadata(path) {
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Candidate::Missing
        }
        Err(e) => Candidate::Unrunnable(e.to_string()),
        Ok(m) if m.is_dir() => Candidate::Unrunnable("is a directory".into()),
        Ok(m) if !m.is_file() => Candidate::Unrunnable("not a regular file".into()),
        Ok(_) => match access(path, AccessFlags::X_OK) {
            Ok(()) => Candidate::Runnable,
            Err(e) => Candidate::Unrunnable(e.desc().to_lowercase()),
        },
    }
}

/// Resolves `cmd` to the file to exec: as given if it contains a `/`, else the
/// first executable `dir/cmd` for `dir` in `path_var` (or [`DEFAULT_PATH`]).
pub fn resolve(cmd: &str, path_var: Option<&str>) -> Result<PathBuf, LookupError> {
    if cmd.is_empty() {
        return Err(LookupError::NotFound(String::new()));
    }
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return match check(&p) {
            Candidate::Runnable => Ok(p),
            Candidate::Missing => Err(LookupError::NotFound(cmd.to_string())),
            Candidate::Unrunnable(reason) => Err(LookupError::NotExecutable { path: p, reason }),
        };
    }
    let mut unrunnable = None;
    for dir in path_var.unwrap_or(DEFAULT_PATH).split(':') {
        // An empty PATH entry means the current directory, as in execvp.
        let p = Path::new(if dir.is_empty() { "." } else { dir }).join(cmd);
        match check(&p) {
            Candidate::Runnable => return Ok(p),
            Candidate::Missing => {}
            Candidate::Unrunnable(reason) => {
                unrunnable.get_or_insert(LookupError::NotExecutable { path: p, reason });
            }
        }
    }
    Err(unrunnable.unwrap_or_else(|| LookupError::NotFound(cmd.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn touch(p: &Path, mode: u32) {
        std::fs::write(p, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn searches_path_in_order() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        touch(&b.join("tool"), 0o755);
        let path = format!("{}:{}", a.display(), b.display());
        assert_eq!(resolve("tool", Some(&path)).unwrap(), b.join("tool"));
        touch(&a.join("tool"), 0o755);
        assert_eq!(resolve("tool", Some(&path)).unwrap(), a.join("tool"));
    }

    #[test]
    fn missing_command_is_127_and_named() {
        let d = tempfile::tempdir().unwrap();
        let e = resolve("no-such-tool", Some(&d.path().display().to_string())).unwrap_err();
        assert_eq!(e.exit_code(), 127);
        assert_eq!(e.to_string(), "command not found: no-such-tool");
        let abs = d.path().join("nope");
        let e = resolve(abs.to_str().unwrap(), None).unwrap_err();
        assert_eq!(e.exit_code(), 127);
        assert!(e.to_string().ends_with("nope"), "{e}");
    }

    #[test]
    fn directory_or_unexecutable_file_is_126() {
        let d = tempfile::tempdir().unwrap();
        let e = resolve(d.path().to_str().unwrap(), None).unwrap_err();
        assert_eq!(e.exit_code(), 126);
        // A file without any execute bit (root bypasses rwx but not a missing x).
        let f = d.path().join("data");
        touch(&f, 0o644);
        let e = resolve(f.to_str().unwrap(), None).unwrap_err();
        assert_eq!(e.exit_code(), 126, "{e}");
        // Found only unexecutable in PATH: 126, not 127.
        let e = resolve("data", Some(d.path().to_str().unwrap())).unwrap_err();
        assert_eq!(e.exit_code(), 126, "{e}");
    }

    #[test]
    fn slash_paths_are_not_searched() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("x"), 0o755);
        let e = resolve("sub/x", Some(d.path().to_str().unwrap())).unwrap_err();
        assert_eq!(e.exit_code(), 127);
    }
}
