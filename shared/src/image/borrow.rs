//! An image lent from one store to another without copying it: for a
//! scratch state root that lives shorter than the store it borrows from
//! (a benchmark's own root, with its own bridge and leases, that runs an
//! image of the user's store). Layers are immutable and content-addressed,
//! so a borrowed layer is a symlink to the lender's layer directory and the
//! image record is copied; removing the borrower's root removes the links,
//! never the lender's layers.

use super::store::io_err;
use super::{Image, ImageError, ImageStore};

impl ImageStore {
    /// Makes image `name` of `lender` an image of this store: its record,
    /// and a symlink per layer this store does not have.
    pub fn borrow_image(&self, lender: &ImageStore, name: &str) -> Result<Image, ImageError> {
        let image = lender.get(name)?;
        for digest in &image.layers {
            let mine = self.layer_path(digest);
            if std::fs::symlink_metadata(&mine).is_ok() {
                continue;
            }
            let theirs = std::fs::canonicalize(lender.layer_path(digest)).map_err(io_err(
                "cannot open the lent layer",
                &lender.layer_path(digest),
            ))?;
            std::os::unix::fs::symlink(&theirs, &mine)
                .map_err(io_err("cannot link the lent layer", &mine))?;
        }
        self.put(&image)?;
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::BUSYBOX_IMAGE;
    use crate::testing::skip_unless_program;

    #[test]
    fn a_borrowed_image_reads_the_lenders_layers_and_leaves_them_when_removed() {
        if skip_unless_program(
            "a_borrowed_image_reads_the_lenders_layers_and_leaves_them_when_removed",
            "/bin/busybox",
            "busybox-static",
        ) {
            return;
        }
        let lender_dir = tempfile::tempdir().unwrap();
        let borrower_dir = tempfile::tempdir().unwrap();
        let lender = ImageStore::open(lender_dir.path()).unwrap();
        let image = lender.get(BUSYBOX_IMAGE).unwrap();
        let borrower = ImageStore::open(borrower_dir.path()).unwrap();
        let got = borrower.borrow_image(&lender, &image.name).unwrap();
        assert_eq!(got.layers, image.layers);
        for d in borrower.layer_dirs(&got) {
            assert!(d.join("bin").exists(), "{} has no bin", d.display());
        }
        // Twice is fine (the links stay).
        borrower.borrow_image(&lender, &image.name).unwrap();
        drop(borrower);
        std::fs::remove_dir_all(borrower_dir.path()).unwrap();
        for d in lender.layer_dirs(&image) {
            assert!(d.join("bin").exists(), "the lender lost {}", d.display());
        }
        assert!(matches!(
            ImageStore::open(tempfile::tempdir().unwrap().path())
                .unwrap()
                .borrow_image(&lender, "nope"),
            Err(ImageError::Unknown { .. })
        ));
    }
}
