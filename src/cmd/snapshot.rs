//! `duet snapshot NAME FILE`: pause a running microVM, write its snapshot
//! (RAM, vCPU, interrupt controller, clock and device state, and a copy of
//! its writable disk) to FILE, and let it go on. `duet run --from-snapshot
//! FILE` starts a new instance from it.

use anyhow::{bail, Context, Result};
use duet_shared::paths::state_root;
use duet_shared::InstanceDir;
use std::path::Path;

/// `duet snapshot`.
pub fn snapshot(instance: &str, file: &Path) -> Result<()> {
    let root = state_root();
    let inst = InstanceDir::find(&root, instance)?;
    if inst.meta().isolation != "vm" {
        bail!(
            "instance `{}` is a {}: only microVMs have snapshots (a container's state is its \
             processes on the host kernel)",
            inst.id(),
            inst.meta().isolation
        );
    }
    // Written beside its final name and renamed when complete: a reader
    // never sees half a snapshot, and a failure leaves nothing.
    let name = file
        .file_name()
        .with_context(|| format!("{}: not a file name", file.display()))?;
    let tmp = file.with_file_name(format!(
        ".{}.duet-partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if file.exists() {
        bail!(
            "{} exists: duet does not overwrite a snapshot",
            file.display()
        );
    }
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let socket = inst.path().join(duet_vmm::control::SOCKET);
    let done = duet_vmm::control::snapshot(&socket, &out)
        .with_context(|| format!("snapshot of instance `{}`", inst.id()))
        .and_then(|reply| {
            out.sync_all()
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, file)
                .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))?;
            Ok(reply)
        });
    match done {
        Ok(duet_vmm::control::Reply::Ok {
            memory_bytes_written,
            disk_bytes_written,
            file_len,
            paused_us,
        }) => {
            eprintln!(
                "duet: snapshot of {} in {}: {:.1} MiB of RAM and {:.1} MiB of disk written \
                 ({:.1} MiB with holes), guest paused {:.1} ms",
                inst.id(),
                file.display(),
                memory_bytes_written as f64 / 1048576.0,
                disk_bytes_written as f64 / 1048576.0,
                file_len as f64 / 1048576.0,
                paused_us as f64 / 1000.0
            );
            Ok(())
        }
        Ok(duet_vmm::control::Reply::Error(e)) => {
            let _ = std::fs::remove_file(&tmp);
            bail!(e)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
