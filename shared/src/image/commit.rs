//! Committing a writable layer: an instance's overlay upper directory becomes
//! a new layer on top of its image ("an image that contains only the
//! differences from the base"). overlayfs whiteouts (0:0 character devices)
//! and opaque directories are written back as OCI `.wh.` entries, so the
//! layer means the same thing when it is unpacked again (see `whiteout`).

use super::import::add_layer;
use super::store::{io_err, remove_tree};
use super::whiteout::{is_opaque, is_whiteout};
use super::{Image, ImageError, ImageStore, OPAQUE_MARKER, WHITEOUT_PREFIX};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

/// Writes the tree under `upper` as a layer tar (OCI whiteouts) to `out`.
pub fn write_layer_tar(upper: &Path, out: &mut File) -> Result<(), ImageError> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    append_dir(&mut b, upper, Path::new(""))?;
    b.into_inner()
        .map_err(io_err("cannot write layer tar for", upper))?;
    Ok(())
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

fn append_dir(b: &mut tar::Builder<&mut File>, root: &Path, rel: &Path) -> Result<(), ImageError> {
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
        b.append_path_with_name(&full, &rel_path)
            .map_err(io_err("cannot add to layer", &full))?;
        if meta.is_dir() {
            if is_opaque(&full) {
                let mut h = empty_file_header();
                b.append_data(&mut h, rel_path.join(OPAQUE_MARKER), std::io::empty())
                    .map_err(io_err("cannot add opaque marker for", &full))?;
            }
            append_dir(b, root, &rel_path)?;
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
) -> Result<Image, ImageError> {
    if !crate::spec::valid_name(name) {
        return Err(ImageError::BadName(name.to_string()));
    }
    let scratch = store.scratch("commit")?;
    let result = (|| {
        let tar_path = scratch.join("layer.tar");
        let mut f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tar_path)
            .map_err(io_err("cannot create", &tar_path))?;
        write_layer_tar(upper, &mut f)?;
        f.seek(SeekFrom::Start(0))
            .map_err(io_err("cannot rewind", &tar_path))?;
        let digest = add_layer(store, f, upper)?;
        let mut layers = base.layers.clone();
        layers.push(digest);
        let image = Image {
            name: name.to_string(),
            layers,
            config: base.config.clone(),
        };
        store.put(&image)?;
        Ok(image)
    })();
    remove_tree(&scratch)?;
    result
}
