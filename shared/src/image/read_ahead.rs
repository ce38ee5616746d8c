//! A layer's tar stream decompressed and hashed on a thread of its own,
//! ahead of the unpacker that creates its files.
//!
//! Inflating and hashing a layer take about as long as creating its files,
//! and one thread did all three, so a large layer kept one core busy while
//! the other waited. Split in two, the unpack of a large layer takes about
//! as long as the longer half. Written here rather than taken from a crate:
//! it is a bounded channel of reused buffers with the digest computed on
//! the producer's side, about a page of code.

use super::unpack::Digesting;
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::sync::mpsc;
use std::thread;

/// Bytes handed over at once.
const CHUNK: usize = 256 * 1024;
/// Chunks read ahead of the consumer at most (memory: `AHEAD * CHUNK`).
const AHEAD: usize = 8;

/// The consumer's side: a `Read` of what the thread read, in order, errors
/// included where they happened.
pub struct ReadAhead {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    spare: mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    /// The stream ended (or failed, with what it said).
    ended: Option<Result<(), String>>,
    thread: Option<thread::JoinHandle<(String, u64)>>,
}

/// Reads from `inner` until `buf` is full, the stream ends or it fails:
/// the bytes read, and the error that stopped it.
fn read_full(inner: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < buf.len() {
        match inner.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

impl ReadAhead {
    /// Starts reading `inner` on a new thread.
    pub fn spawn(mut inner: Box<dyn Read + Send>) -> io::Result<ReadAhead> {
        let (tx, chunks) = mpsc::sync_channel::<io::Result<Vec<u8>>>(AHEAD);
        let (spare, spares) = mpsc::sync_channel::<Vec<u8>>(AHEAD + 2);
        let thread = thread::Builder::new()
            .name("duet-layer-read".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                let mut bytes = 0u64;
                loop {
                    let mut buf = spares.try_recv().unwrap_or_default();
                    // A returned buffer keeps its length: only a short last
                    // one or a new one is filled with zeros here.
                    buf.resize(CHUNK, 0);
                    let (n, failed) = read_full(&mut inner, &mut buf);
                    if n > 0 {
                        buf.truncate(n);
                        hasher.update(&buf);
                        bytes += n as u64;
                        if tx.send(Ok(buf)).is_err() {
                            // The consumer stopped (it failed): so does this.
                            break;
                        }
                    }
                    if let Some(e) = failed {
                        // After the bytes that came before it.
                        let _ = tx.send(Err(e));
                        break;
                    }
                    if n == 0 {
                        break;
                    }
                }
                (hex::encode(hasher.finalize()), bytes)
            })?;
        Ok(ReadAhead {
            chunks,
            spare,
            cur: Vec::new(),
            pos: 0,
            ended: None,
            thread: Some(thread),
        })
    }

    /// The next chunk into `cur`; false at the end of the stream.
    fn next_chunk(&mut self) -> io::Result<bool> {
        if let Some(end) = &self.ended {
            return match end {
                Ok(()) => Ok(false),
                Err(m) => Err(io::Error::other(m.clone())),
            };
        }
        match self.chunks.recv() {
            Ok(Ok(buf)) => {
                let used = std::mem::replace(&mut self.cur, buf);
                if used.capacity() > 0 {
                    let _ = self.spare.try_send(used);
                }
                self.pos = 0;
                Ok(true)
            }
            Ok(Err(e)) => {
                self.ended = Some(Err(e.to_string()));
                Err(e)
            }
            Err(mpsc::RecvError) => {
                self.ended = Some(Ok(()));
                Ok(false)
            }
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if !self.next_chunk()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Digesting for ReadAhead {
    fn finish(mut self) -> io::Result<(String, u64)> {
        // What the unpacker did not need (a tar's trailing blocks) counts too.
        while self.next_chunk()? {}
        let thread = self.thread.take().expect("finish runs once");
        thread
            .join()
            .map_err(|_| io::Error::other("the thread reading the layer panicked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that gives `data` in odd-sized pieces, then fails if asked to.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        fail_at_end: bool,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                if self.fail_at_end {
                    return Err(io::Error::other("the download stopped"));
                }
                return Ok(0);
            }
            let n = buf.len().min(7919).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn gives_every_byte_in_order_and_their_digest() {
        for len in [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 17, (AHEAD + 5) * CHUNK] {
            let d = data(len);
            let mut r = ReadAhead::spawn(Box::new(Pieces {
                data: d.clone(),
                at: 0,
                fail_at_end: false,
            }))
            .unwrap();
            // Small reads, as tar's header reads are.
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == d, "{len} bytes differ");
            let (digest, n) = r.finish().unwrap();
            assert_eq!(n, len as u64);
            assert_eq!(digest, hex::encode(Sha256::digest(&d)));
        }
    }

    #[test]
    fn what_the_consumer_left_is_still_hashed() {
        let d = data(5 * CHUNK + 3);
        let mut r = ReadAhead::spawn(Box::new(Pieces {
            data: d.clone(),
            at: 0,
            fail_at_end: false,
        }))
        .unwrap();
        let mut head = [0u8; 1000];
        r.read_exact(&mut head).unwrap();
        assert_eq!(r.finish().unwrap().0, hex::encode(Sha256::digest(&d)));
    }

    #[test]
    fn an_error_reaches_the_consumer_where_it_happened_and_again_at_finish() {
        let d = data(2 * CHUNK + 5);
        let mut r = ReadAhead::spawn(Box::new(Pieces {
            data: d.clone(),
            at: 0,
            fail_at_end: true,
        }))
        .unwrap();
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).unwrap_err();
        assert!(e.to_string().contains("the download stopped"), "{e}");
        assert!(got == d, "everything before the error arrives");
        let e = r.finish().unwrap_err();
        assert!(e.to_string().contains("the download stopped"), "{e}");
    }

    #[test]
    fn a_consumer_that_stops_early_stops_the_thread() {
        let r = ReadAhead::spawn(Box::new(io::repeat(1).take(1 << 40))).unwrap();
        let ReadAhead { chunks, thread, .. } = r;
        drop(chunks);
        // Its next send fails and it ends: else this join would wait for a TiB.
        thread.unwrap().join().unwrap();
    }
}
