//! `duet ps`, `duet rm`, `duet gc`: instances after their run.

use super::lifecycle;
use crate::{backends, monitor};
use anyhow::{bail, Context, Result};
use duet_shared::image::{commit_upper, ImageStore};
use duet_shared::instance::{process_start_time, remove_instance_path, InstanceDir, Status};
use duet_shared::paths::state_root;
use std::time::{Duration, SystemTime};

/// `duet ps [-a]`: running instances (with `-a` also ended and kept
/// ones, and stale ones `duet gc` removes).
pub fn ps(all: bool) -> Result<()> {
    let root = state_root();
    println!(
        "{:<20} {:<32} {:<26} {:<12} {:<9} {:<5} {:<24} COMMAND",
        "NAME", "ID", "STATUS", "IMAGE", "ISOLATION", "AGE", "ADDRESS/PORTS"
    );
    let now = duet_shared::instance::unix_ms();
    for id in InstanceDir::list_ids(&root)? {
        let Ok(inst) = InstanceDir::open(&root, &id) else {
            if all {
                println!("{:<20} {id:<32} broken (duet gc removes it)", "?");
            }
            continue;
        };
        if !all && !lifecycle::is_live(&inst) {
            continue;
        }
        let m = inst.meta();
        let age = if m.created_ms == 0 {
            "?".to_string()
        } else {
            fmt_age(Duration::from_millis(now.saturating_sub(m.created_ms)))
        };
        let mut command = m.command.join(" ");
        if command.chars().count() > 40 {
            command = command.chars().take(39).collect::<String>() + "…";
        }
        let net = crate::network::recorded(inst.path())
            .map(|a| ports_text(&a))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<32} {:<26} {:<12} {:<9} {:<5} {net:<24} {command}",
            m.name,
            m.id,
            lifecycle::status_text(&inst),
            m.image,
            m.isolation,
            age
        );
    }
    Ok(())
}

/// `10.89.0.2 8080->80/tcp,53->53/udp`: the address and published ports.
fn ports_text(a: &duet_network::Attachment) -> String {
    let ports: Vec<String> = a
        .ports
        .iter()
        .map(|p| {
            format!(
                "{}->{}/{}",
                p.host.map_or("?".into(), |h| h.to_string()),
                p.port,
                p.protocol.name()
            )
        })
        .collect();
    if ports.is_empty() {
        a.address.to_string()
    } else {
        format!("{} {}", a.address, ports.join(","))
    }
}

/// `42s`, `5m`, `3h`, `2d`.
fn fmt_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// How long `rm -f` waits for a killed instance's monitor to finish.
const RM_FORCE_WAIT: Duration = Duration::from_secs(10);

/// Removes ended, kept or stale instances; with `force` running ones too (SIGKILL).
pub fn rm(ids: &[String], force: bool) -> Result<()> {
    let root = state_root();
    for what in ids {
        let mut inst = InstanceDir::find(&root, what)?;
        let id = &inst.id().to_string();
        if inst.meta().detached && lifecycle::is_live(&inst) && inst.owner_alive() {
            if !force {
                bail!("instance `{id}` is running; stop it first (`duet stop {id}`) or use `duet rm -f`");
            }
            let _ = monitor::control::request(
                &inst,
                &monitor::control::Request::Kill {
                    signal: libc::SIGKILL,
                },
            );
            let deadline = std::time::Instant::now() + RM_FORCE_WAIT;
            while inst.owner_alive() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
                inst.reload()?;
            }
            if inst.owner_alive() {
                bail!("instance `{id}`: its monitor (pid {}) did not end after SIGKILL of the workload", inst.meta().owner_pid);
            }
        } else if !inst.meta().detached && !inst.meta().kept && inst.owner_alive() {
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
    let ended_detached = inst.meta().detached && inst.meta().state.status == Status::Exited;
    if !inst.meta().kept && !ended_detached {
        bail!("instance `{id}` is still running; commit it after it exits (run it with --keep, or -d)");
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
            // Kept instances, live ones and detached ones that ended
            // (their status and log stay until `duet rm`) are not garbage.
            Ok(inst)
                if inst.meta().kept
                    || inst.owner_alive()
                    || (inst.meta().detached && inst.meta().state.status == Status::Exited) =>
            {
                continue
            }
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
    // Addresses whose instance directory is gone altogether.
    for owner in crate::network::orphan_owners(&root).map_err(|e| anyhow::anyhow!(e))? {
        crate::network::gc_owner(&root, &owner).map_err(|e| anyhow::anyhow!(e))?;
        println!("released the address of {owner}");
    }
    removed += gc_scratch(&root)?;
    // Empty `duet/` cgroup parents a crash left (a live instance's stays).
    if let Ok(layout) = duet_container::cgroup::CgroupLayout::detect() {
        for p in duet_container::cgroup::gc_empty_duet_dirs(&layout) {
            println!("removed {}", p.display());
            removed += 1;
        }
    }
    // Warm-start templates of another duet, kernel or init, or of no image.
    let images: Vec<Vec<String>> = duet_shared::image::ImageStore::open(&root)?
        .list()?
        .into_iter()
        .map(|i| i.layers)
        .collect();
    let current = duet_vmm::runtime::templates::Current::now(images);
    for p in duet_vmm::runtime::templates::gc(&root, |k| !current.matches(k)) {
        println!("removed {}", p.display());
        removed += 1;
    }
    // Downloads an interrupted pull left (none that a pull holds now).
    for p in duet_registry::blob::gc(&root) {
        println!("removed {}", p.display());
        removed += 1;
    }
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
