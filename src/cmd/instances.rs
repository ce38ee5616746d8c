//! `duet ps`, `duet rm`, `duet gc`: instances after their run.

use crate::backends;
use anyhow::{bail, Context, Result};
use duet_shared::image::{commit_upper, ImageStore};
use duet_shared::instance::{process_start_time, remove_instance_path, InstanceDir};
use duet_shared::paths::state_root;
use std::time::{Duration, SystemTime};

/// Lists instances: kept ones, running ones and stale ones (`duet gc` removes those).
pub fn ps() -> Result<()> {
    let root = state_root();
    println!("{:<32} {:<16} {:<10} STATUS", "ID", "IMAGE", "ISOLATION");
    for id in InstanceDir::list_ids(&root)? {
        let Ok(inst) = InstanceDir::open(&root, &id) else {
            println!(
                "{id:<32} {:<16} {:<10} broken (duet gc removes it)",
                "?", "?"
            );
            continue;
        };
        let m = inst.meta();
        let status = if m.kept {
            format!(
                "kept, exited {}",
                m.exit_code.map(|c| c.to_string()).unwrap_or("?".into())
            )
        } else if inst.owner_alive() {
            format!("running (duet pid {})", m.owner_pid)
        } else {
            "stale (duet gc removes it)".to_string()
        };
        println!("{:<32} {:<16} {:<10} {status}", m.id, m.image, m.isolation);
    }
    Ok(())
}

/// Removes kept (or stale) instances.
pub fn rm(ids: &[String]) -> Result<()> {
    let root = state_root();
    for what in ids {
        let inst = InstanceDir::find(&root, what)?;
        let id = &inst.id().to_string();
        if !inst.meta().kept && inst.owner_alive() {
            bail!(
                "instance `{id}` is still running (duet pid {})",
                inst.meta().owner_pid
            );
        }
        for b in backends::all() {
            b.gc_instance(id).map_err(|e| anyhow::anyhow!(e))?;
        }
        inst.remove()?;
        println!("removed {id}");
    }
    Ok(())
}

/// `duet commit`: the instance's writable layer, and only it, becomes a new
/// layer on top of the instance's image.
pub fn commit(what: &str, name: &str) -> Result<()> {
    let root = state_root();
    let inst = InstanceDir::find(&root, what)?;
    let id = &inst.id().to_string();
    if !inst.meta().kept {
        bail!("instance `{id}` is still running; commit it after it exits (run it with --keep)");
    }
    let store = ImageStore::open(&root)?;
    let base = store.get(&inst.meta().image).with_context(|| {
        format!(
            "instance `{id}` was made from image `{}`",
            inst.meta().image
        )
    })?;
    let img = match inst.meta().isolation.as_str() {
        "container" => {
            let c = commit_upper(&store, &base, &inst.upper(), name)
                .with_context(|| format!("committing instance `{id}` as image `{name}`"))?;
            for w in &c.warnings {
                eprintln!("duet: warning: {w}");
            }
            c.image
        }
        "vm" => {
            // The writable layer is on the VM's scratch disk: commit it from a
            // child that mounts the disk read-only in a private mount namespace.
            let scratch = inst.path().join(duet_vmm::disks::SCRATCH_FILE);
            duet_vmm::scratch_mount::with_upper(&scratch, &mut |upper| {
                let c = commit_upper(&store, &base, upper, name)
                    .map_err(|e| super::error_chain(&anyhow::Error::from(e)))?;
                for w in &c.warnings {
                    eprintln!("duet: warning: {w}");
                }
                Ok(())
            })
            .with_context(|| format!("committing VM instance `{id}` as image `{name}`"))?;
            store.get(name)?
        }
        other => bail!("instance `{id}` has an unknown isolation `{other}`"),
    };
    let top = img.layers.last().expect("commit adds a layer");
    let size = std::fs::read_to_string(store.layer_path(top).join("size")).unwrap_or_default();
    println!(
        "{name}: {} layers, new layer sha256:{} ({} bytes)",
        img.layers.len(),
        &top[..12],
        size.trim()
    );
    Ok(())
}

/// How old an instance directory without readable metadata must be before gc
/// treats it as a crash leftover rather than one being created right now.
const BROKEN_GRACE: Duration = Duration::from_secs(60);

/// Removes what runs of a duet that is no longer alive left behind.
pub fn gc() -> Result<()> {
    let root = state_root();
    let mut removed = 0;
    for id in InstanceDir::list_ids(&root)? {
        let path = InstanceDir::base(&root).join(&id);
        match InstanceDir::open(&root, &id) {
            Ok(inst) if inst.meta().kept || inst.owner_alive() => continue,
            Ok(_) => {}
            Err(_) => {
                let age = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .unwrap_or_default();
                if age < BROKEN_GRACE {
                    continue;
                }
            }
        }
        for b in backends::all() {
            b.gc_instance(&id).map_err(|e| anyhow::anyhow!(e))?;
        }
        remove_instance_path(&path)?;
        println!("removed {id}");
        removed += 1;
    }
    removed += gc_scratch(&root)?;
    println!("gc: {removed} removed");
    Ok(())
}

/// Removes store scratch directories (`tmp/<what>-<pid>-...`) of dead processes.
fn gc_scratch(root: &std::path::Path) -> Result<usize> {
    let dir = root.join("tmp");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .split(['-', '.'])
            .find_map(|p| p.parse::<i32>().ok().filter(|p| *p > 0));
        if pid.is_some_and(|p| process_start_time(p).is_none()) {
            let p = e.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if r.is_ok() {
                n += 1;
            }
        }
    }
    Ok(n)
}
