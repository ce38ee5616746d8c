//! Downloading one blob: into `<root>/blobs/partial/sha256-<hex>` (locked
//! while a pull writes it, so two pulls of one layer download it once),
//! hashed and counted as it streams, resumed with a range request where a
//! previous pull was cut off, and refused (the partial file deleted) when
//! its size or sha256 is not what the manifest says.

use crate::RegistryError;
use futures_util::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Where partial downloads live below the state root.
pub fn partial_dir(root: &Path) -> PathBuf {
    root.join("blobs").join("partial")
}

/// The hex of a `sha256:<64 hex>` digest; anything else is refused.
pub fn sha256_hex<'a>(digest: &'a str, what: &str) -> Result<&'a str, RegistryError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .ok_or_else(|| RegistryError::Manifest {
            what: what.to_string(),
            message: format!(
                "unsupported digest `{digest}` (duet verifies sha256:<64 lowercase hex> only)"
            ),
        })
}

/// A partial download, locked for this pull.
pub struct Partial {
    /// Its path.
    pub path: PathBuf,
    file: File,
}

impl Partial {
    /// Opens (creating) and locks the partial file of `hex`; waits while
    /// another pull holds it.
    pub fn open(root: &Path, hex: &str) -> Result<Partial, RegistryError> {
        let dir = partial_dir(root);
        std::fs::create_dir_all(&dir).map_err(|source| RegistryError::Io {
            what: "cannot create",
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("sha256-{hex}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| RegistryError::Io {
                what: "cannot open",
                path: path.clone(),
                source,
            })?;
        duet_shared::paths::flock_exclusive(&file).map_err(|source| RegistryError::Io {
            what: "cannot lock",
            path: path.clone(),
            source,
        })?;
        Ok(Partial { path, file })
    }

    /// The verified blob, read from the start.
    pub fn reader(&self) -> Result<File, RegistryError> {
        let mut f = self.file.try_clone().map_err(|source| RegistryError::Io {
            what: "cannot reopen",
            path: self.path.clone(),
            source,
        })?;
        f.rewind().map_err(|source| RegistryError::Io {
            what: "cannot read",
            path: self.path.clone(),
            source,
        })?;
        Ok(f)
    }

    /// Deletes the file (the lock goes with the descriptor).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Progress of one download: bytes so far.
pub trait Progress: Send + Sync {
    /// `n` more bytes arrived (or were found in a partial file).
    fn advance(&self, n: u64);
}

/// Downloads `digest` (of `size` bytes) into `partial`, resuming what an
/// earlier pull left there. Returns the bytes fetched over the network.
pub async fn fetch(
    client: &Client,
    image: &Reference,
    digest: &str,
    size: u64,
    partial: &mut Partial,
    progress: &dyn Progress,
    what: &str,
) -> Result<u64, RegistryError> {
    let io = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| RegistryError::Io {
            what,
            path: p,
            source,
        }
    };
    let mut hasher = Sha256::new();
    // What an interrupted pull left: hash it and ask for the rest.
    let mut have = 0u64;
    {
        let mut f = partial.reader()?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(io("cannot read", &partial.path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            have += n as u64;
        }
    }
    if have > size {
        // Not a prefix of this blob: start over.
        partial
            .file
            .set_len(0)
            .map_err(io("cannot truncate", &partial.path))?;
        hasher = Sha256::new();
        have = 0;
    }
    progress.advance(have);
    let map = |e: oci_client::errors::OciDistributionError| RegistryError::from_oci(what, e);
    let mut stream = if have == 0 {
        client.pull_blob_stream(image, digest).await.map_err(map)?
    } else if have == size {
        return finish(partial, hasher, digest, size, size, what).map(|_| 0);
    } else {
        match client
            .pull_blob_stream_partial(image, digest, have, None)
            .await
            .map_err(map)?
        {
            BlobResponse::Partial(s) => s,
            BlobResponse::Full(s) => {
                // The registry ignored the range: take the whole blob.
                partial
                    .file
                    .set_len(0)
                    .map_err(io("cannot truncate", &partial.path))?;
                hasher = Sha256::new();
                have = 0;
                s
            }
        }
    };
    partial
        .file
        .seek(std::io::SeekFrom::Start(have))
        .map_err(io("cannot seek", &partial.path))?;
    let mut fetched = 0u64;
    while let Some(chunk) = stream.stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) if e.to_string().to_lowercase().contains("digest") => {
                // The client's own verification at the end of the stream.
                partial.file.set_len(0).ok();
                return Err(RegistryError::DigestMismatch {
                    what: what.to_string(),
                    expected: digest.to_string(),
                    actual: format!("sha256:{}", hex::encode(hasher.finalize())),
                });
            }
            Err(e) => {
                return Err(RegistryError::Network {
                    what: what.to_string(),
                    message: e.to_string(),
                });
            }
        };
        if have + chunk.len() as u64 > size {
            partial.file.set_len(0).ok();
            return Err(RegistryError::SizeMismatch {
                what: what.to_string(),
                expected: size,
                got: format!("more than {size}"),
            });
        }
        hasher.update(&chunk);
        partial
            .file
            .write_all(&chunk)
            .map_err(io("cannot write", &partial.path))?;
        have += chunk.len() as u64;
        fetched += chunk.len() as u64;
        progress.advance(chunk.len() as u64);
    }
    finish(partial, hasher, digest, size, have, what)?;
    Ok(fetched)
}

/// Checks size and digest of a complete download; a bad one is emptied.
fn finish(
    partial: &mut Partial,
    hasher: Sha256,
    digest: &str,
    size: u64,
    have: u64,
    what: &str,
) -> Result<(), RegistryError> {
    if have != size {
        // A short read (the connection ended): keep it for a resume.
        return Err(RegistryError::SizeMismatch {
            what: what.to_string(),
            expected: size,
            got: have.to_string(),
        });
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != digest {
        partial.file.set_len(0).ok();
        return Err(RegistryError::DigestMismatch {
            what: what.to_string(),
            expected: digest.to_string(),
            actual,
        });
    }
    partial.file.sync_all().map_err(|source| RegistryError::Io {
        what: "cannot sync",
        path: partial.path.clone(),
        source,
    })
}

/// Removes partial downloads no pull holds (`duet gc`); returns their paths.
pub fn gc(root: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(partial_dir(root))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(f) = File::open(e.path()) else {
            continue;
        };
        // SAFETY: flock on a descriptor we own; LOCK_NB never blocks.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } == 0
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed.push(e.path());
        }
    }
    removed
}
