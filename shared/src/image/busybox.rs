//! The built-in `busybox` image, made from the host's busybox-static the
//! first time it is asked for, so a first run works offline.
//!
//! The layer tar is generated deterministically (fixed mtimes, sorted
//! applets), so its digest depends only on the busybox binary.
//!
//! When a static `duet-probe` binary is at hand ([`find_probe`]), the image
//! gets a second, one-file layer holding it as `/bin/duet-probe`, so `duet
//! bench isolation` and `duet demo` can run the same probe on the host, in a
//! container and in a VM. A separate small binary rather than a copy of
//! `duet` itself (which is static too and has `duet probe`): duet carries both
//! backends and is 5-30x larger, and every byte of the image is copied into
//! each VM's initramfs, which would slow every VM start the benchmarks time.
//! Its own layer keeps the busybox layer's digest independent of the probe,
//! and [`ensure_probe_layer`] swaps just that layer when the probe changes.

use super::import::{add_layer, DEFAULT_PATH};
use super::{Image, ImageConfig, ImageError, ImageStore, BUSYBOX_IMAGE};
use std::path::{Path, PathBuf};

/// Where to look for a static busybox: `$DUET_BUSYBOX`, then the usual places.
fn find_busybox() -> Result<PathBuf, ImageError> {
    if let Some(p) = std::env::var_os("DUET_BUSYBOX") {
        return Ok(PathBuf::from(p));
    }
    for p in ["/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(ImageError::Busybox(
        "no busybox found on the host; install it with `apt-get install busybox-static` (or set DUET_BUSYBOX)".into(),
    ))
}

/// Whether an ELF file has no program interpreter (is statically linked).
pub(crate) fn is_static_elf(data: &[u8]) -> bool {
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if data.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let off = phoff as usize + i * phentsize as usize;
        u32_at(off).is_some_and(|t| t != 3) // PT_INTERP
    })
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// The layer tar for a busybox binary and its applet list.
pub(crate) fn layer_tar(busybox: &[u8], applets: &[String]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let dirs = [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("var/tmp", 0o1777),
        ("run", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
    ];
    for (d, mode) in dirs {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, d, &[][..])?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", busybox)?;
    let files: [(&str, &str); 4] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
        ("etc/os-release", "NAME=\"duet busybox\"\nID=busybox\n"),
    ];
    for (p, text) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        b.append_data(&mut h, p, text.as_bytes())?;
    }
    for a in applets {
        let rel = a.trim_start_matches('/');
        if rel.is_empty() || rel == "bin/busybox" || rel.contains("..") {
            continue;
        }
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, rel, "/bin/busybox")?;
    }
    b.into_inner()
}

/// Environment variable naming the `duet-probe` binary to put into the image.
pub const PROBE_ENV: &str = "DUET_PROBE";
/// Where `scripts/install.sh` puts the probe on a host.
pub const SYSTEM_PROBE_PATH: &str = "/usr/local/lib/duet/duet-probe";
/// Path of the probe inside the image (no leading `/`).
pub const PROBE_IN_IMAGE: &str = "bin/duet-probe";

/// Finds a `duet-probe` binary: `$DUET_PROBE`, then next to the running
/// executable (cargo puts it beside `duet`), then [`SYSTEM_PROBE_PATH`].
pub fn find_probe() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(PROBE_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("duet-probe")));
    // Installed: <prefix>/lib/duet/duet-probe, then SYSTEM_PROBE_PATH.
    beside
        .into_iter()
        .chain(crate::paths::installed("duet-probe"))
        .find(|p| p.is_file())
}

/// The probe layer's tar: `bin/` and `bin/duet-probe`, fixed metadata.
pub(crate) fn probe_layer_tar(probe: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "bin", &[][..])?;
    let mut h = header(tar::EntryType::Regular, 0o755, probe.len() as u64);
    b.append_data(&mut h, PROBE_IN_IMAGE, probe)?;
    b.into_inner()
}

/// Reads a probe binary, refusing one that would not run in a bare image.
fn read_probe(probe: &Path) -> Result<Vec<u8>, ImageError> {
    let data = std::fs::read(probe)
        .map_err(|e| ImageError::Busybox(format!("cannot read probe {}: {e}", probe.display())))?;
    if !is_static_elf(&data) {
        return Err(ImageError::Busybox(format!(
            "probe {} is not a statically linked ELF (build it with cargo, which links statically here)",
            probe.display()
        )));
    }
    Ok(data)
}

/// Whether a layer's tree is exactly a probe layer (`bin/duet-probe` and nothing else).
fn is_probe_layer(fs: &Path) -> bool {
    let names = |d: &Path| -> Option<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        Some(v)
    };
    names(fs).as_deref() == Some(&["bin".to_string()][..])
        && names(&fs.join("bin")).as_deref() == Some(&["duet-probe".to_string()][..])
}

/// Makes the `busybox` image carry `probe` as `/bin/duet-probe`: builds the
/// image if needed, then adds (or replaces) its one-file probe layer when the
/// image has none or an older probe. Returns the image as stored.
///
/// A replaced probe layer stays in the store (a running instance may still
/// use it as a lower directory).
pub fn ensure_probe_layer(store: &ImageStore, probe: &Path) -> Result<Image, ImageError> {
    let image = store.get(BUSYBOX_IMAGE)?;
    let data = read_probe(probe)?;
    let top = image.layers.last().map(|d| store.layer_dir(d));
    let top_is_probe = top.as_deref().is_some_and(is_probe_layer);
    if top_is_probe {
        let current = top.expect("checked").join(PROBE_IN_IMAGE);
        if std::fs::read(&current).is_ok_and(|c| c == data) {
            return Ok(image);
        }
    }
    let tar = probe_layer_tar(&data)
        .map_err(|e| ImageError::Busybox(format!("cannot build probe layer: {e}")))?;
    let digest = add_layer(store, std::io::Cursor::new(tar), probe)?;
    let mut layers = image.layers.clone();
    if top_is_probe {
        layers.pop();
    }
    layers.push(digest);
    let updated = Image { layers, ..image };
    store.put(&updated)?;
    Ok(updated)
}

/// Builds and stores the `busybox` image.
pub(crate) fn create(store: &ImageStore) -> Result<Image, ImageError> {
    let path = find_busybox()?;
    let data = std::fs::read(&path)
        .map_err(|e| ImageError::Busybox(format!("cannot read {}: {e}", path.display())))?;
    if !is_static_elf(&data) {
        return Err(ImageError::Busybox(format!(
            "{} is not a statically linked ELF; install `busybox-static` (apt-get install busybox-static)",
            path.display()
        )));
    }
    let out = std::process::Command::new(&path)
        .arg("--list-full")
        .output()
        .map_err(|e| {
            ImageError::Busybox(format!("cannot run {} --list-full: {e}", path.display()))
        })?;
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    applets.sort();
    applets.dedup();
    if applets.is_empty() {
        return Err(ImageError::Busybox(format!(
            "{} --list-full listed no applets",
            path.display()
        )));
    }
    let tar = layer_tar(&data, &applets)
        .map_err(|e| ImageError::Busybox(format!("cannot build layer: {e}")))?;
    let digest = add_layer(store, std::io::Cursor::new(tar), &path)?;
    let mut layers = vec![digest];
    if let Some(probe) = find_probe() {
        let data = read_probe(&probe)?;
        let tar = probe_layer_tar(&data)
            .map_err(|e| ImageError::Busybox(format!("cannot build probe layer: {e}")))?;
        layers.push(add_layer(store, std::io::Cursor::new(tar), &probe)?);
    }
    let image = Image {
        name: BUSYBOX_IMAGE.to_string(),
        layers,
        config: ImageConfig {
            env: vec![DEFAULT_PATH.to_string()],
            cmd: vec!["/bin/sh".to_string()],
            workdir: Some("/".to_string()),
            ..Default::default()
        },
        source: None,
    };
    store.put(&image)?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_detection() {
        assert!(!is_static_elf(b"not an elf"));
        // The test binary itself is static (see .cargo/config.toml).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_static_elf(&me));
        if let Ok(ls) = std::fs::read("/bin/ls") {
            assert!(
                !is_static_elf(&ls),
                "/bin/ls is dynamically linked on Debian"
            );
        }
    }

    #[test]
    fn probe_layer_is_added_once_and_replaced_when_the_probe_changes() {
        if crate::testing::skip_unless_program(
            "probe_layer_is_added_once_and_replaced_when_the_probe_changes",
            "/bin/busybox",
            "busybox-static",
        ) {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&t.path().join("root")).unwrap();
        // Any static ELF stands in for the probe: this test binary is one.
        let me = std::env::current_exe().unwrap();
        let probe = t.path().join("duet-probe");
        std::fs::copy(&me, &probe).unwrap();
        let base = store.get(BUSYBOX_IMAGE).unwrap();
        let img = ensure_probe_layer(&store, &probe).unwrap();
        let top = store.layer_dir(img.layers.last().unwrap());
        assert!(is_probe_layer(&top));
        assert_eq!(
            std::fs::read(top.join(PROBE_IN_IMAGE)).unwrap(),
            std::fs::read(&probe).unwrap()
        );
        // The busybox layer is untouched, and a second call changes nothing.
        assert_eq!(img.layers[0], base.layers[0]);
        assert_eq!(ensure_probe_layer(&store, &probe).unwrap(), img);
        assert_eq!(store.get(BUSYBOX_IMAGE).unwrap(), img);
        // A different probe replaces the probe layer instead of stacking another.
        let mut data = std::fs::read(&probe).unwrap();
        data.extend_from_slice(b"another build");
        std::fs::write(&probe, &data).unwrap();
        let again = ensure_probe_layer(&store, &probe).unwrap();
        assert_eq!(again.layers.len(), img.layers.len());
        assert_ne!(again.layers.last(), img.layers.last());
        // Not static: refused, naming the file.
        std::fs::write(&probe, b"#!/bin/sh\n").unwrap();
        let e = ensure_probe_layer(&store, &probe).unwrap_err().to_string();
        assert!(e.contains(&probe.display().to_string()), "{e}");
    }

    #[test]
    fn layer_is_deterministic() {
        let a = layer_tar(b"\x7fELF fake", &["/bin/sh".into(), "/usr/bin/env".into()]).unwrap();
        let b = layer_tar(b"\x7fELF fake", &["/bin/sh".into(), "/usr/bin/env".into()]).unwrap();
        assert_eq!(a, b);
    }
}
