//! The bounded, rotated log of a detached instance (`<instance>/log.json`).
//!
//! One JSON object per line, as Docker's json-file driver:
//! `{"t":<unix ms>,"s":"out"|"err","l":"<text>"}`. A record holds one line
//! with its `\n`, or the unfinished tail of a read (the next record goes on
//! with it). When `log.json` passes its bound it is renamed to
//! `log.json.1` (the one older file kept) and a new one begun, so an
//! instance never holds more than twice the bound ([`max_bytes`]).

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

/// The log file in an instance directory.
pub const LOG_FILE: &str = "log.json";
/// Bound per file unless `DUET_LOG_MAX_BYTES` says otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// Environment variable bounding each log file, in bytes (at least 4096).
pub const MAX_BYTES_ENV: &str = "DUET_LOG_MAX_BYTES";

/// The bound of each log file.
pub fn max_bytes() -> u64 {
    std::env::var(MAX_BYTES_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|b| b.max(4096))
        .unwrap_or(DEFAULT_MAX_BYTES)
}

/// Which output a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The workload's stdout.
    Out,
    /// The workload's stderr (and duet's own messages about the run).
    Err,
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unix time in ms.
    pub t: u64,
    /// Stream.
    pub s: Stream,
    /// Text (lossy UTF-8).
    pub l: String,
}

/// Appends records, rotating at the bound.
pub struct LogWriter {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    max: u64,
}

impl LogWriter {
    /// Opens (appending to) `<dir>/log.json`.
    pub fn open(dir: &Path) -> io::Result<LogWriter> {
        let path = dir.join(LOG_FILE);
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path,
            file,
            size,
            max: max_bytes(),
        })
    }

    /// Logs `bytes` read from `stream`, one record per line.
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let t = duet_shared::instance::unix_ms();
        let mut out = Vec::with_capacity(bytes.len() + 64);
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let r = Record {
                t,
                s: stream,
                l: String::from_utf8_lossy(line).into_owned(),
            };
            serde_json::to_writer(&mut out, &r).map_err(io::Error::other)?;
            out.push(b'\n');
        }
        if self.size > 0 && self.size + out.len() as u64 > self.max {
            self.rotate()?;
        }
        self.file.write_all(&out)?;
        self.size += out.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, rotated(&self.path))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(p: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(p)
}

fn rotated(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Reads records of one file from byte `offset`; returns them and the
/// offset after the last whole line (a line still being written is left).
pub fn read_from(path: &Path, offset: u64) -> io::Result<(Vec<Record>, u64)> {
    use std::io::Seek;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    f.seek(io::SeekFrom::Start(offset))?;
    let mut r = io::BufReader::new(f);
    let mut records = Vec::new();
    let mut at = offset;
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        at += n as u64;
        if let Ok(rec) = serde_json::from_str::<Record>(&line) {
            records.push(rec);
        }
    }
    Ok((records, at))
}

/// Every record of an instance's log, oldest first (the rotated file, then the current).
pub fn read_all(dir: &Path) -> io::Result<(Vec<Record>, u64)> {
    let path = dir.join(LOG_FILE);
    let (mut all, _) = read_from(&rotated(&path), 0)?;
    let (cur, end) = read_from(&path, 0)?;
    all.extend(cur);
    Ok((all, end))
}

/// The last `n` lines of `records` (a line may span records).
pub fn tail(records: &[Record], n: usize) -> &[Record] {
    let mut lines = 0;
    for (i, r) in records.iter().enumerate().rev() {
        if r.l.ends_with('\n') {
            if lines == n {
                return &records[i + 1..];
            }
            lines += 1;
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_records_and_rotate_at_the_bound() {
        let t = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(t.path()).unwrap();
        w.max = 4096;
        w.write(Stream::Out, b"one\ntwo\npart").unwrap();
        w.write(Stream::Err, b"ial\n").unwrap();
        let (r, _) = read_all(t.path()).unwrap();
        let text: Vec<&str> = r.iter().map(|r| r.l.as_str()).collect();
        assert_eq!(text, ["one\n", "two\n", "part", "ial\n"]);
        assert_eq!(r[3].s, Stream::Err);
        assert_eq!(tail(&r, 1).len(), 2, "the last line spans two records");
        assert_eq!(tail(&r, 2).len(), 3);
        assert_eq!(tail(&r, 9).len(), 4);
        assert_eq!(tail(&r, 0).len(), 0);
        for i in 0..2000 {
            w.write(Stream::Out, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let cur = std::fs::metadata(t.path().join(LOG_FILE)).unwrap().len();
        let old = std::fs::metadata(rotated(&t.path().join(LOG_FILE)))
            .unwrap()
            .len();
        assert!(cur <= 4096 && old <= 4096, "{cur} {old}");
        let (r, _) = read_all(t.path()).unwrap();
        assert_eq!(r.last().unwrap().l, "line 1999\n");
        assert!(r.len() < 2000, "old lines were dropped");
    }
}
