//! Writing and reading the snapshot file (layout: [`super`]).

use super::{
    FileRange, RegionState, SnapshotError, SnapshotState, FORMAT_VERSION, HEADER_LEN, MAGIC,
};
use crate::memory::GuestMemory;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

const PAGE: usize = 4096;
/// Copy unit for disks.
const CHUNK: usize = 1 << 20;
/// Largest state part accepted (a hostile file must not make duet read gigabytes).
const MAX_STATE: u64 = 64 << 20;

/// What [`write`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteStats {
    /// Bytes of guest RAM written (the rest were zero pages, left as holes).
    pub memory_bytes_written: u64,
    /// Bytes of writable disks copied.
    pub disk_bytes_written: u64,
    /// File length.
    pub file_len: u64,
}

/// A snapshot file, checked and parsed.
pub struct Snapshot {
    /// The open file (RAM is mapped from it, disk copies read from it).
    pub file: File,
    /// Its state.
    pub state: SnapshotState,
    /// Its length.
    pub len: u64,
}

fn is_zero(page: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets.
    let (head, body, tail) = unsafe { page.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Copies `len` bytes of `src` at `src_at` to `dst` at `dst_at`, data
/// extents only and zero pages as holes; returns the bytes written.
fn copy_data(src: &File, src_at: u64, len: u64, dst: &File, dst_at: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0;
    for (from, to) in crate::disks::data_extents(src, src_at, src_at + len)? {
        let mut at = from;
        while at < to {
            let n = ((to - at) as usize).min(CHUNK);
            src.read_exact_at(&mut buf[..n], at)?;
            written += write_sparse(dst, &buf[..n], dst_at + (at - src_at))?;
            at += n as u64;
        }
    }
    Ok(written)
}

/// Writes `data` at `offset` of `out`, leaving runs of zero pages as holes.
fn write_sparse(out: &File, data: &[u8], offset: u64) -> std::io::Result<u64> {
    let mut written = 0u64;
    let mut run: Option<usize> = None;
    let pages = data.len().div_ceil(PAGE);
    for p in 0..=pages {
        let page = (p < pages).then(|| &data[p * PAGE..((p + 1) * PAGE).min(data.len())]);
        let zero = page.is_none_or(is_zero);
        match (zero, run) {
            (false, None) => run = Some(p * PAGE),
            (true, Some(start)) => {
                let end = (p * PAGE).min(data.len());
                out.write_all_at(&data[start..end], offset + start as u64)?;
                written += (end - start) as u64;
                run = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// Writes a snapshot of `memory`, the writable disks `disks` (index into
/// `state.devices.virtio`, open file) and `state` to `out`, which must be
/// empty. Fills in the RAM regions and disk copies of `state`.
pub fn write(
    out: &File,
    mut state: SnapshotState,
    memory: &GuestMemory,
    disks: &[(usize, &File)],
) -> Result<WriteStats, SnapshotError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e| SnapshotError::io(what, e)
    };
    out.set_len(0).map_err(io("truncating the snapshot file"))?;
    let mut stats = WriteStats::default();
    let mut offset = HEADER_LEN;
    state.memory.clear();
    for region in memory.iter() {
        let size = region.len();
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| SnapshotError::Invalid(format!("guest RAM region: {e}")))?;
        // SAFETY: the region's whole live mapping; every vCPU is paused and
        // no device thread runs, so nothing writes it while it is read.
        let data = unsafe { std::slice::from_raw_parts(host as *const u8, size as usize) };
        stats.memory_bytes_written +=
            write_sparse(out, data, offset).map_err(io("writing guest RAM"))?;
        state.memory.push(RegionState {
            guest_addr: region.start_addr().0,
            size,
            file_offset: offset,
        });
        offset += size;
    }
    for &(index, disk) in disks {
        let len = disk.metadata().map_err(io("reading a disk's size"))?.len();
        stats.disk_bytes_written +=
            copy_data(disk, 0, len, out, offset).map_err(io("copying a writable disk"))?;
        match state.devices.virtio.get_mut(index).map(|v| &mut v.device) {
            Some(super::VirtioDeviceState::Block(d)) => {
                d.copy = Some(FileRange { offset, len });
                d.size = len;
            }
            _ => {
                return Err(SnapshotError::Invalid(format!(
                    "virtio device {index} is not a disk"
                )))
            }
        }
        offset = (offset + len).next_multiple_of(PAGE as u64);
    }
    let json = serde_json::to_vec(&state)
        .map_err(|e| SnapshotError::Invalid(format!("serialising the state: {e}")))?;
    out.write_all_at(&json, offset)
        .map_err(io("writing the state"))?;
    let mut header = vec![0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&offset.to_le_bytes());
    header[24..32].copy_from_slice(&(json.len() as u64).to_le_bytes());
    header[32..64].copy_from_slice(&Sha256::digest(&json));
    out.write_all_at(&header, 0)
        .map_err(io("writing the header"))?;
    stats.file_len = offset + json.len() as u64;
    Ok(stats)
}

/// Reads and checks `file`'s header and state (not RAM: that is mapped on demand).
pub fn open(file: File) -> Result<Snapshot, SnapshotError> {
    let invalid = |m: &str| SnapshotError::Invalid(m.to_string());
    let len = file
        .metadata()
        .map_err(|e| SnapshotError::io("reading the snapshot's size", e))?
        .len();
    if len < HEADER_LEN {
        return Err(invalid("it is too short to be a duet snapshot"));
    }
    let mut header = vec![0u8; 64];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| SnapshotError::io("reading the snapshot header", e))?;
    if &header[..8] != MAGIC {
        return Err(invalid("it is not a duet snapshot (bad magic)"));
    }
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
    let format = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if format != FORMAT_VERSION {
        return Err(SnapshotError::Invalid(format!(
            "snapshot format {format} (this duet reads format {FORMAT_VERSION})"
        )));
    }
    let (state_offset, state_len) = (u64_at(16), u64_at(24));
    if state_len > MAX_STATE
        || state_offset < HEADER_LEN
        || state_offset.checked_add(state_len).is_none_or(|e| e > len)
    {
        return Err(invalid(
            "its state lies outside the file (truncated or corrupted)",
        ));
    }
    let mut json = vec![0u8; state_len as usize];
    file.read_exact_at(&mut json, state_offset)
        .map_err(|e| SnapshotError::io("reading the snapshot state", e))?;
    if Sha256::digest(&json).as_slice() != &header[32..64] {
        return Err(invalid("its state does not match its checksum (corrupted)"));
    }
    let state: SnapshotState = serde_json::from_slice(&json)
        .map_err(|e| SnapshotError::Invalid(format!("its state does not parse: {e}")))?;
    state.check_shape(state_offset)?;
    Ok(Snapshot { file, state, len })
}

impl Snapshot {
    /// Copies the saved contents of writable disk `copy` into `dest` (a new
    /// file; holes stay holes).
    pub fn extract_disk(&self, copy: FileRange, dest: &File) -> Result<(), SnapshotError> {
        let io = |what: &'static str| move |e| SnapshotError::io(what, e);
        dest.set_len(copy.len).map_err(io("sizing the disk copy"))?;
        copy_data(&self.file, copy.offset, copy.len, dest, 0)
            .map_err(io("copying a disk out of the snapshot"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_extents_are_copied_and_offsets_hold() {
        let src = tempfile::tempfile().unwrap();
        // 64 MiB, data at 1 MiB and at 40 MiB + 3 bytes, holes elsewhere.
        src.set_len(64 << 20).unwrap();
        src.write_all_at(b"first", 1 << 20).unwrap();
        src.write_all_at(b"second", (40 << 20) + 3).unwrap();
        let extents = crate::disks::data_extents(&src, 0, 64 << 20).unwrap();
        let covered: u64 = extents.iter().map(|(a, b)| b - a).sum();
        assert!(
            covered < 8 << 20,
            "holes were reported as data: {extents:?}"
        );
        let dst = tempfile::tempfile().unwrap();
        // A window of the source from 512 KiB, to offset 0 of the copy.
        let from = 512 << 10;
        dst.set_len((64 << 20) - from).unwrap();
        copy_data(&src, from, (64 << 20) - from, &dst, 0).unwrap();
        let mut got = [0u8; 6];
        dst.read_exact_at(&mut got[..5], (1 << 20) - from).unwrap();
        assert_eq!(&got[..5], b"first");
        dst.read_exact_at(&mut got, (40 << 20) + 3 - from).unwrap();
        assert_eq!(&got, b"second");
    }

    #[test]
    fn zero_pages_become_holes_and_data_survives() {
        let f = tempfile::tempfile().unwrap();
        let mut data = vec![0u8; PAGE * 8];
        data[PAGE * 3 + 5] = 7;
        data[PAGE * 7] = 9;
        let n = write_sparse(&f, &data, 4096).unwrap();
        assert_eq!(
            n,
            2 * PAGE as u64,
            "only the two non-zero pages are written"
        );
        f.set_len(4096 + data.len() as u64).unwrap();
        let mut back = vec![1u8; data.len()];
        f.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(back, data);
    }
}
