//! Resolving a run's user (`uid[:gid]`, `name[:group]`, as Docker takes
//! `--user` and an image's `User`) to numbers, from the image's own
//! /etc/passwd and /etc/group: the top-most layer that has the file wins
//! (a whiteout above it hides it), and each is opened beneath its layer
//! directory, so a symlinked /etc/passwd in a hostile image reads nothing
//! of the host's.

use super::beneath::Beneath;
use super::escape::escaped;
use super::whiteout::WHITEOUT_PREFIX;
use rustix::fs::OFlags;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest passwd or group file read.
const MAX_DB: u64 = 1 << 20;

/// The file `rel` (under `etc/`) as the merged layers show it, if any.
fn merged_file(layers: &[PathBuf], name: &str) -> Option<String> {
    for dir in layers.iter().rev() {
        let root = Beneath::open(dir).ok()?;
        let rel = Path::new("etc").join(name);
        if let Ok(fd) = root.open_in_root(&rel, OFlags::RDONLY | OFlags::NONBLOCK) {
            let st = rustix::fs::fstat(&fd).ok()?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
            {
                return None;
            }
            let mut text = String::new();
            std::fs::File::from(fd)
                .take(MAX_DB)
                .read_to_string(&mut text)
                .ok()?;
            return Some(text);
        }
        let whiteout = Path::new("etc").join(format!("{WHITEOUT_PREFIX}{name}"));
        let hidden = dir.join(&whiteout).exists()
            || root
                .open_in_root(&rel, OFlags::PATH | OFlags::NOFOLLOW)
                .is_ok();
        if hidden {
            return None;
        }
    }
    None
}

/// `name:x:uid:gid:...` lines: (name, uid, gid).
fn passwd(text: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((
            *f.first()?,
            f.get(2)?.parse().ok()?,
            f.get(3)?.parse().ok()?,
        ))
    })
}

/// `name:x:gid:members` lines: (name, gid, members).
fn group(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|m| !m.is_empty()).collect())
            .unwrap_or_default();
        Some((*f.first()?, f.get(2)?.parse().ok()?, members))
    })
}

/// Most supplementary groups taken from an image (Linux's NGROUPS_MAX is
/// 65536; a hostile /etc/group must not make setgroups fail or grow).
const MAX_GROUPS: usize = 64;

/// `user` as `uid:gid` for an image of `layers` (bottom first), with the
/// supplementary groups the image's /etc/group lists the user's name in
/// (in file order, at most [`MAX_GROUPS`], none for a uid without a name);
/// the error says which name the image does not have.
pub fn resolve_user(layers: &[PathBuf], user: &str) -> Result<(u32, u32, Vec<u32>), String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let pw = merged_file(layers, "passwd").unwrap_or_default();
    let (uid, primary, name) = match u.parse::<u32>() {
        Ok(n) => match passwd(&pw).find(|e| e.1 == n) {
            Some(e) => (n, e.2, Some(e.0)),
            None => (n, 0, None),
        },
        Err(_) => passwd(&pw)
            .find(|e| e.0 == u)
            .map(|e| (e.1, e.2, Some(e.0)))
            .ok_or_else(|| {
                format!(
                    "user `{}` is not in the image's /etc/passwd",
                    escaped(u.as_bytes())
                )
            })?,
    };
    let gr = merged_file(layers, "group").unwrap_or_default();
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let found = group(&gr).find(|e| e.0 == g).map(|e| e.1);
                found.ok_or_else(|| {
                    format!(
                        "group `{}` is not in the image's /etc/group",
                        escaped(g.as_bytes())
                    )
                })?
            }
        },
    };
    let mut groups: Vec<u32> = Vec::new();
    if let Some(name) = name {
        for (_, id, members) in group(&gr) {
            if groups.len() < MAX_GROUPS
                && id != gid
                && !groups.contains(&id)
                && members.contains(&name)
            {
                groups.push(id);
            }
        }
    }
    Ok((uid, gid, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve_from_the_top_layer() {
        let d = tempfile::tempdir().unwrap();
        let (low, high) = (d.path().join("low"), d.path().join("high"));
        for l in [&low, &high] {
            std::fs::create_dir_all(l.join("etc")).unwrap();
        }
        std::fs::write(
            low.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nold:x:5:5::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            high.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/srv:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            low.join("etc/group"),
            "root:x:0:\nstaff:x:50:app\nwww:x:33:other,app,more\napps:x:60:application\n",
        )
        .unwrap();
        let layers = vec![low.clone(), high.clone()];
        // Supplementary groups: where /etc/group lists the user's name.
        assert_eq!(resolve_user(&layers, "app"), Ok((1000, 1001, vec![50, 33])));
        assert_eq!(resolve_user(&layers, "app:staff"), Ok((1000, 50, vec![33])));
        assert_eq!(
            resolve_user(&layers, "1000"),
            Ok((1000, 1001, vec![50, 33]))
        );
        assert_eq!(resolve_user(&layers, "4242"), Ok((4242, 0, vec![])));
        assert_eq!(resolve_user(&layers, "7:8"), Ok((7, 8, vec![])));
        assert_eq!(resolve_user(&layers, "root"), Ok((0, 0, vec![])));
        let e = resolve_user(&layers, "old").unwrap_err();
        assert!(e.contains("`old`") && e.contains("/etc/passwd"), "{e}");
        let e = resolve_user(&layers, "app:wheel").unwrap_err();
        assert!(e.contains("`wheel`"), "{e}");
        // A hostile image's User reaches the terminal escaped.
        let e = resolve_user(&layers, "x\u{1b}[2J").unwrap_err();
        assert!(!e.contains('\u{1b}'), "{e:?}");
    }

    #[test]
    fn a_hostile_group_file_gives_at_most_max_groups() {
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("l");
        std::fs::create_dir_all(l.join("etc")).unwrap();
        std::fs::write(l.join("etc/passwd"), "app:x:1000:1000::/:/bin/sh\n").unwrap();
        let groups: String = (0..1000)
            .map(|i| format!("g{i}:x:{}:app\n", 2000 + i))
            .collect();
        std::fs::write(l.join("etc/group"), groups).unwrap();
        let (_, _, g) = resolve_user(&[l], "app").unwrap();
        assert_eq!(g.len(), MAX_GROUPS);
        assert_eq!(g[0], 2000);
    }

    #[test]
    fn a_symlinked_passwd_reads_nothing_of_the_host() {
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("l");
        std::fs::create_dir_all(l.join("etc")).unwrap();
        // The host's /etc/passwd names root; beneath the layer this leads nowhere.
        std::os::unix::fs::symlink("/etc/passwd", l.join("etc/passwd")).unwrap();
        let e = resolve_user(&[l], "root").unwrap_err();
        assert!(e.contains("`root`"), "{e}");
    }
}
