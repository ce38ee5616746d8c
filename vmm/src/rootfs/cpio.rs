//! A writer for "newc" cpio archives, the format the kernel unpacks as initramfs.
//!
//! Own code rather than a crate: the format is a 110-byte ASCII header, the
//! name and the data, each padded to 4 bytes; the kernel is the only reader
//! and ignores the checksum field. The ~80 lines here do exactly what the
//! initramfs needs (hard links by shared inode number, device numbers,
//! streaming file data with a size check), where a dependency would still need
//! as much glue around it.

use std::io::{self, Read, Write};

/// Magic of the "new ASCII" (SVR4, no CRC) format.
const MAGIC: &[u8; 6] = b"070701";
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";

/// The metadata of one archive entry (everything but name and data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpioHeader {
    /// Inode number; entries sharing one (with `nlink` > 1) become hard links.
    pub ino: u32,
    /// `st_mode`: file type bits and permissions.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count (the kernel links regular files only when it is >= 2).
    pub nlink: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
    /// Bytes of data following the name.
    pub filesize: u32,
    /// Device number of a character or block device node.
    pub rdev_major: u32,
    /// Device number of a character or block device node.
    pub rdev_minor: u32,
}

/// Streams entries into a newc archive; [`CpioWriter::finish`] writes the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter { out, offset: 0 }
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.offset += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn header(&mut self, h: &CpioHeader, name: &[u8]) -> io::Result<()> {
        if name.is_empty() || name.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cpio entry name is empty or contains NUL",
            ));
        }
        let namesize = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio name too long"))?;
        let fields = [
            h.ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            h.filesize,
            0,
            0,
            h.rdev_major,
            h.rdev_minor,
            namesize,
            0,
        ];
        let mut buf = Vec::with_capacity(110 + name.len() + 4);
        buf.extend_from_slice(MAGIC);
        for f in fields {
            write!(buf, "{f:08x}").expect("writing to a Vec");
        }
        buf.extend_from_slice(name);
        buf.push(0);
        self.put(&buf)?;
        self.pad()
    }

    /// Writes an entry whose data (exactly `h.filesize` bytes) is in memory.
    pub fn entry(&mut self, h: &CpioHeader, name: &[u8], data: &[u8]) -> io::Result<()> {
        if data.len() as u64 != u64::from(h.filesize) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cpio data length differs from the header's filesize",
            ));
        }
        self.header(h, name)?;
        self.put(data)?;
        self.pad()
    }

    /// Writes an entry whose data is read from `data`, which must yield exactly
    /// `h.filesize` bytes (a file that changed size meanwhile is an error).
    pub fn entry_from(&mut self, h: &CpioHeader, name: &[u8], data: impl Read) -> io::Result<()> {
        self.header(h, name)?;
        let want = u64::from(h.filesize);
        let copied = io::copy(&mut data.take(want + 1), &mut self.out)?;
        self.offset += copied;
        if copied != want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file changed while archiving: expected {want} bytes, read {copied}"),
            ));
        }
        self.pad()
    }

    /// Writes the trailer (the archive's length stays a multiple of 4, so
    /// another archive may follow directly) and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        let h = CpioHeader {
            nlink: 1,
            ..CpioHeader::default()
        };
        self.header(&h, TRAILER.as_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}
