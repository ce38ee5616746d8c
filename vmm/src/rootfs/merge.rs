//! Merging an image's layer directories, bottom first, into the one tree
//! overlayfs would show, then writing that tree as a cpio archive.
//!
//! Layers are in overlayfs's own form (see duet_shared::image): a 0:0
//! character device deletes that path from the layers below, and a directory
//! with `trusted.overlay.opaque=y` hides everything below it in lower layers.

use super::cpio::{CpioHeader, CpioWriter};
use super::RootfsError;
use duet_shared::image::{is_opaque, is_whiteout};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::ops::Bound;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What a merged entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory (its children are separate entries).
    Dir,
    /// A regular file whose data is read from `source` when archiving.
    File {
        /// Where the data is on the host.
        source: PathBuf,
        /// Size in bytes at merge time.
        size: u64,
        /// `(st_dev, st_ino)` of the source when it has several links, so
        /// names sharing it become hard links in the archive.
        link: Option<(u64, u64)>,
    },
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
    /// A device node, FIFO or socket (type in `mode`, device number in `rdev`).
    Special {
        /// `st_rdev` of a device node (0 for FIFOs and sockets).
        rdev: u64,
    },
}

/// One entry of the merged tree with the metadata the archive keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Kind and content.
    pub kind: NodeKind,
    /// `st_mode` (type bits and permissions).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

impl Node {
    /// A directory owned by root.
    pub fn dir(perm: u32) -> Node {
        Node {
            kind: NodeKind::Dir,
            mode: libc::S_IFDIR | perm,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }
}

/// The merged file tree: relative paths (no leading `/`) to entries.
///
/// Keys are ordered by path components, so a directory comes right before
/// all of its descendants: the order the kernel needs to unpack them.
#[derive(Debug, Default)]
pub struct MergedTree {
    nodes: BTreeMap<PathBuf, Node>,
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl MergedTree {
    /// An empty tree.
    pub fn new() -> MergedTree {
        MergedTree::default()
    }

    /// Merges `layers` (unpacked layer directories, bottom first).
    pub fn from_layers(layers: &[PathBuf]) -> Result<MergedTree, RootfsError> {
        let mut t = MergedTree::new();
        for l in layers {
            t.add_layer(l)?;
        }
        Ok(t)
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &Path) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// All paths in archive order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.nodes.keys().map(PathBuf::as_path)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree has no entries.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn descendants(&self, p: &Path) -> Vec<PathBuf> {
        self.nodes
            .range::<Path, _>((Bound::Excluded(p), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(p))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn remove_descendants(&mut self, p: &Path) {
        for k in self.descendants(p) {
            self.nodes.remove(&k);
        }
    }

    /// Removes `p` and everything below it (a whiteout).
    pub fn remove(&mut self, p: &Path) {
        self.remove_descendants(p);
        self.nodes.remove(p);
    }

    /// Puts `node` at `p` as an upper layer would: a directory over a directory
    /// only replaces its metadata, anything else replaces the whole subtree.
    pub fn put(&mut self, p: PathBuf, node: Node) {
        let merge_dirs = node.kind == NodeKind::Dir
            && self.nodes.get(&p).is_some_and(|n| n.kind == NodeKind::Dir);
        if !merge_dirs {
            self.remove_descendants(&p);
        }
        self.nodes.insert(p, node);
    }

    /// Applies one layer directory on top of the tree.
    pub fn add_layer(&mut self, layer: &Path) -> Result<(), RootfsError> {
        let meta = std::fs::symlink_metadata(layer).map_err(io_err("cannot read layer", layer))?;
        if !meta.is_dir() {
            return Err(RootfsError::Io {
                what: "layer is not a directory:",
                path: layer.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
            });
        }
        if is_opaque(layer) {
            self.nodes.clear();
        }
        self.walk(layer, PathBuf::new())
    }

    fn walk(&mut self, layer: &Path, rel: PathBuf) -> Result<(), RootfsError> {
        let dir = layer.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io_err("cannot read layer directory", &dir))?
            .collect::<Result<_, _>>()
            .map_err(io_err("cannot read layer directory", &dir))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let full = e.path();
            let child = rel.join(e.file_name());
            let m = std::fs::symlink_metadata(&full).map_err(io_err("cannot stat", &full))?;
            if is_whiteout(&m) {
                self.remove(&child);
                continue;
            }
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                NodeKind::Dir
            } else if ft.is_file() {
                NodeKind::File {
                    source: full.clone(),
                    size: m.len(),
                    link: (m.nlink() > 1).then(|| (m.dev(), m.ino())),
                }
            } else if ft.is_symlink() {
                let target =
                    std::fs::read_link(&full).map_err(io_err("cannot read symlink", &full))?;
                NodeKind::Symlink(target.into_os_string().into_vec())
            } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket()
            {
                NodeKind::Special { rdev: m.rdev() }
            } else {
                continue;
            };
            let is_dir = kind == NodeKind::Dir;
            self.put(
                child.clone(),
                Node {
                    kind,
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: m.mtime(),
                },
            );
            if is_dir {
                if is_opaque(&full) {
                    self.remove_descendants(&child);
                }
                self.walk(layer, child)?;
            }
        }
        Ok(())
    }

    /// Writes every entry into `w` (not the trailer), streaming file data.
    pub fn write_cpio<W: Write>(&self, w: &mut CpioWriter<W>) -> Result<(), RootfsError> {
        // Hard links: how many names each multiply-linked source keeps after
        // the merge, and the inode number they share.
        let mut links: HashMap<(u64, u64), (u32, Option<u32>)> = HashMap::new();
        for n in self.nodes.values() {
            if let NodeKind::File { link: Some(k), .. } = n.kind {
                links.entry(k).or_insert((0, None)).0 += 1;
            }
        }
        let mut next_ino: u32 = 1;
        let mut take_ino = || {
            next_ino += 1;
            next_ino
        };
        for (path, n) in &self.nodes {
            let name = path.as_os_str().as_bytes();
            let mut h = CpioHeader {
                ino: 0,
                mode: n.mode,
                uid: n.uid,
                gid: n.gid,
                nlink: 1,
                mtime: n.mtime.clamp(0, i64::from(u32::MAX)) as u32,
                ..CpioHeader::default()
            };
            let write_err = |source| RootfsError::Archive {
                path: path.clone(),
                source,
            };
            match &n.kind {
                NodeKind::Dir => {
                    h.ino = take_ino();
                    h.nlink = 2;
                    w.entry(&h, name, &[]).map_err(write_err)?;
                }
                NodeKind::Symlink(target) => {
                    h.ino = take_ino();
                    h.filesize = target.len() as u32;
                    w.entry(&h, name, target).map_err(write_err)?;
                }
                NodeKind::Special { rdev } => {
                    h.ino = take_ino();
                    h.rdev_major = libc::major(*rdev);
                    h.rdev_minor = libc::minor(*rdev);
                    w.entry(&h, name, &[]).map_err(write_err)?;
                }
                NodeKind::File { source, size, link } => {
                    let size32 = u32::try_from(*size).map_err(|_| RootfsError::TooLarge {
                        path: source.clone(),
                        size: *size,
                    })?;
                    let mut with_data = true;
                    match link.and_then(|k| links.get_mut(&k)) {
                        Some((count, ino)) if *count > 1 => {
                            h.nlink = *count;
                            match ino {
                                // Later names link to the first one and
                                // carry no data (the kernel links them by ino).
                                Some(i) => {
                                    h.ino = *i;
                                    with_data = false;
                                }
                                None => {
                                    h.ino = take_ino();
                                    *ino = Some(h.ino);
                                }
                            }
                        }
                        _ => h.ino = take_ino(),
                    }
                    if with_data {
                        h.filesize = size32;
                        let f =
                            std::fs::File::open(source).map_err(io_err("cannot open", source))?;
                        w.entry_from(&h, name, f).map_err(|e| RootfsError::Io {
                            what: "cannot archive",
                            path: source.clone(),
                            source: e,
                        })?;
                    } else {
                        w.entry(&h, name, &[]).map_err(write_err)?;
                    }
                }
            }
        }
        Ok(())
    }
}
