//! The built-in `busybox` image, made from the host's busybox-static the
//! first time it is asked for, so a first run works offline.
//!
//! The layer tar is generated deterministically (fixed mtimes, sorted
//! applets), so its digest depends only on the busybox binary.

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
    let image = Image {
        name: BUSYBOX_IMAGE.to_string(),
        layers: vec![digest],
        config: ImageConfig {
            env: vec![DEFAULT_PATH.to_string()],
            cmd: vec!["/bin/sh".to_string()],
            workdir: Some("/".to_string()),
        },
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
    fn layer_is_deterministic() {
        let a = layer_tar(b"\x7fELF fake", &["/bin/sh".into(), "/usr/bin/env".into()]).unwrap();
        let b = layer_tar(b"\x7fELF fake", &["/bin/sh".into(), "/usr/bin/env".into()]).unwrap();
        assert_eq!(a, b);
    }
}
