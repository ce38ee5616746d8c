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

/// What a download hands the unpacker while it streams.
pub enum Piece {
    /// The next bytes of the blob.
    Data(bytes::Bytes),
    /// The blob is complete (its digest is still to be checked).
    End,
}

/// The unpacker's side of a streaming download: a `Read` of the blob as it
/// arrives. A download that ends without [`Piece::End`] (failed or
/// cancelled) is an error here, never a short, valid-looking stream.
pub struct Streamed {
    rx: tokio::sync::mpsc::Receiver<Piece>,
    cur: bytes::Bytes,
}

impl Streamed {
    /// The sender for [`fetch`] and the reader for the unpacker.
    pub fn channel() -> (tokio::sync::mpsc::Sender<Piece>, Streamed) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        (
            tx,
            Streamed {
                rx,
                cur: bytes::Bytes::new(),
            },
        )
    }
}

impl Read for Streamed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Piece::Data(b)) => self.cur = b,
                Some(Piece::End) => return Ok(0),
                None => {
                    return Err(std::io::Error::other(
                        "the download stopped before the blob was complete",
                    ))
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Downloads `digest` (of `size` bytes) into `partial`, resuming what an
/// earlier pull left there; a fresh download is also passed to `tee` as
/// it arrives (unpacking while it downloads). Returns the bytes fetched
/// over the network and whether `tee` got the whole blob.
#[allow(clippy::too_many_arguments)]
pub async fn fetch(
    client: &Client,
    image: &Reference,
    digest: &str,
    size: u64,
    partial: &mut Partial,
    progress: &dyn Progress,
    what: &str,
    tee: Option<&tokio::sync::mpsc::Sender<Piece>>,
) -> Result<(u64, bool), RegistryError> {
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
    // Empties the partial file to download the blob from its start.
    let start_over = |partial: &mut Partial, hasher: &mut Sha256, have: &mut u64| {
        *hasher = Sha256::new();
        *have = 0;
        partial
            .file
            .set_len(0)
            .map_err(io("cannot truncate", &partial.path))
    };
    if have > size {
        // Not a prefix of this blob.
        start_over(partial, &mut hasher, &mut have)?;
    }
    progress.advance(have);
    // A resumed download is unpacked from the file once complete.
    let mut tee = tee.filter(|_| have == 0);
    let map = |e: oci_client::errors::OciDistributionError| RegistryError::from_oci(what, e);
    let mut stream = if size == 0 {
        client.pull_blob_stream(image, digest).await.map_err(map)?
    } else if have == size {
        return finish(partial, hasher, digest, size, size, what).map(|_| (0, false));
    } else {
        // A range request also for a fresh download (`bytes=0-`): the digest
        // is checked here over the whole blob, resumed or not (`finish`), and
        // oci-client, given a range, does not hash the stream a second time
        // (a tenth of a pull's CPU time). A registry that ignores the range
        // sends the whole blob, which the client then checks as well.
        match client
            .pull_blob_stream_partial(image, digest, have, None)
            .await
            .map_err(map)?
        {
            BlobResponse::Partial(s) => s,
            BlobResponse::Full(s) => {
                if have > 0 {
                    // The registry ignored the range: take the whole blob.
                    start_over(partial, &mut hasher, &mut have)?;
                }
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
        if let Some(t) = tee {
            if t.send(Piece::Data(chunk.clone())).await.is_err() {
                // The unpacker stopped (it failed): unpack from the file.
                tee = None;
            }
        }
        fetched += chunk.len() as u64;
        progress.advance(chunk.len() as u64);
    }
    finish(partial, hasher, digest, size, have, what)?;
    Ok((fetched, tee.is_some()))
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
    // Not synced: the file is only what a resume starts from (and is hashed
    // again then), and the layer unpacked from it replaces it at once.
    Ok(())
}

/// Removes the partial download at `path` unless a pull holds it.
fn remove_unlocked(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; LOCK_NB never blocks.
    let free = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } == 0;
    free && std::fs::remove_file(path).is_ok()
}

/// Removes the partial download of blob `hex` (a layer the store has by
/// now, e.g. unpacked by a pull that was stopped before it cleaned up).
pub fn remove_partial(root: &Path, hex: &str) {
    remove_unlocked(&partial_dir(root).join(format!("sha256-{hex}")));
}

/// Removes partial downloads no pull holds (`duet gc`); returns their paths.
pub fn gc(root: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(partial_dir(root))
        .into_iter()
        .flatten()
        .flatten()
    {
        if remove_unlocked(&e.path()) {
            removed.push(e.path());
        }
    }
    removed
}
