//! Committing a writable layer: an instance's overlay upper directory becomes
//! a new layer on top of its image ("an image that contains only the
//! differences from the base"). overlayfs whiteouts (0:0 character devices)
//! and opaque directories are written back as OCI `.wh.` entries, so the
//! layer means the same thing when it is unpacked again (see `whiteout`).
//!
//! Fifos and device nodes are archived as what they are (type, mode, owner,
//! major:minor); sockets cannot be archived and are skipped with a warning,
//! as Docker does. (duet's own import does not create the device nodes
//! again; other tools reading the layer may.)

use super::escape::shown;
use super::import::add_layer_reporting;
use super::store::{io_err, remove_tree};
use super::whiteout::{is_opaque, is_whiteout};
use super::{Image, ImageError, ImageStore, OPAQUE_MARKER, WHITEOUT_PREFIX};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// A committed image and what the commit left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The new image.
    pub image: Image,
    /// What was skipped (sockets) or will not be recreated (device nodes).
    pub warnings: Vec<String>,
}

/// Writes the tree under `upper` as a layer tar (OCI whiteouts) to `out`;
/// returns warnings about what could not be archived (sockets).
pub fn write_layer_tar<W: Write>(upper: &Path, out: W) -> Result<Vec<String>, ImageError> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut warnings = Vec::new();
    append_dir(&mut b, upper, Path::new(""), &mut warnings)?;
    b.into_inner()
        .map_err(io_err("cannot write layer tar for", upper))?;
    Ok(warnings)
}

/// A header for a fifo or device node, from its metadata.
fn special_header(meta: &std::fs::Metadata) -> tar::Header {
    let ft = meta.file_type();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(if ft.is_fifo() {
        tar::EntryType::Fifo
    } else if ft.is_char_device() {
        tar::EntryType::Char
    } else {
        tar::EntryType::Block
    });
    h.set_size(0);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(meta.uid() as u64);
    h.set_gid(meta.gid() as u64);
    h.set_mtime(meta.mtime().max(0) as u64);
    if !ft.is_fifo() {
        let dev = meta.rdev();
        // Both fit in the header's octal fields for every real device number.
        let _ = h.set_device_major(libc::major(dev));
        let _ = h.set_device_minor(libc::minor(dev));
    }
    h
}

fn empty_file_header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_dir(
    b: &mut tar::Builder<impl Write>,
    root: &Path,
    rel: &Path,
    warnings: &mut Vec<String>,
) -> Result<(), ImageError> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io_err("cannot read", &dir))?
        .collect::<Result<_, _>>()
        .map_err(io_err("cannot read", &dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let rel_path = rel.join(&name);
        let full = root.join(&rel_path);
        let meta = std::fs::symlink_metadata(&full).map_err(io_err("cannot stat", &full))?;
        if is_whiteout(&meta) {
            let mut wh = std::ffi::OsString::from(WHITEOUT_PREFIX);
            wh.push(&name);
            let mut h = empty_file_header();
            b.append_data(&mut h, rel.join(wh), std::io::empty())
                .map_err(io_err("cannot add whiteout for", &full))?;
            continue;
        }
        let ft = meta.file_type();
        if ft.is_socket() {
            warnings.push(format!(
                "skipped socket {} (a socket cannot be archived)",
                shown(&full)
            ));
            continue;
        }
        if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let mut h = special_header(&meta);
            b.append_data(&mut h, &rel_path, std::io::empty())
                .map_err(io_err("cannot add fifo or device node to layer:", &full))?;
            continue;
        }
        b.append_path_with_name(&full, &rel_path)
            .map_err(io_err("cannot add to layer:", &full))?;
        if meta.is_dir() {
            if is_opaque(&full) {
                let mut h = empty_file_header();
                b.append_data(&mut h, rel_path.join(OPAQUE_MARKER), std::io::empty())
                    .map_err(io_err("cannot add opaque marker for", &full))?;
            }
            append_dir(b, root, &rel_path, warnings)?;
        }
    }
    Ok(())
}

/// Turns `upper` into a new layer on top of `base` and stores image `name`.
pub fn commit_upper(
    store: &ImageStore,
    base: &Image,
    upper: &Path,
    name: &str,
) -> Result<Committed, ImageError> {
    super::store::check_name(name)?;
    let scratch = store.scratch("commit")?;
    let result = (|| {
        let tar_path = scratch.join("layer.tar");
        let mut f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tar_path)
            .map_err(io_err("cannot create", &tar_path))?;
        let mut warnings = write_layer_tar(upper, &mut f)?;
        f.seek(SeekFrom::Start(0))
            .map_err(io_err("cannot rewind", &tar_path))?;
        let (digest, more) = add_layer_reporting(store, f, upper)?;
        warnings.extend(more);
        let mut layers = base.layers.clone();
        layers.push(digest);
        let image = Image {
            name: name.to_string(),
            layers,
            config: base.config.clone(),
            source: None,
        };
        store.put(&image)?;
        Ok(Committed { image, warnings })
    })();
    remove_tree(&scratch)?;
    result
}
