//! The on-disk image store.

use super::escape::shown;
use super::{busybox, Image, BUSYBOX_IMAGE};
use std::io;
use std::path::{Path, PathBuf};

/// Errors of the image store; each names the image, layer or file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image of that name.
    #[error("no image `{name}`; images in {}: {}", root.display(), if available.is_empty() { "(none)".to_string() } else { available.join(", ") })]
    Unknown {
        name: String,
        root: PathBuf,
        available: Vec<String>,
    },
    /// Names must be usable as file names.
    #[error("`{0}` is not a valid image name (1-63 of a-z, A-Z, 0-9, '-', '_', '.'; or a registry reference such as `debian:12` or `host:5000/team/app@sha256:...`)")]
    BadName(String),
    /// A layer the manifest names is missing from the store.
    #[error("image `{image}` needs layer sha256:{digest}, which is missing from the store")]
    MissingLayer { image: String, digest: String },
    /// File system error on a store path.
    #[error("{what} {}", shown(path))]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A manifest that is not valid JSON.
    #[error("image manifest {} is corrupt", shown(path))]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The tarball being imported is not in a format duet reads.
    #[error("cannot import {}: {message}", shown(path))]
    Format { path: PathBuf, message: String },
    /// A file operation on one archive entry failed (`entry` is escaped for printing).
    #[error("cannot import {}: cannot {what} `{entry}`", shown(archive))]
    Entry {
        archive: PathBuf,
        entry: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// `image import --name` names an image that exists, and `--force` was not given.
    #[error("image `{0}` exists; pass --force to replace it")]
    Exists(String),
    /// The embedded busybox image cannot be built.
    #[error("cannot build the `busybox` image: {0}")]
    Busybox(String),
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The content-addressed store under a state root.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        crate::paths::make_private(root).map_err(io_err("cannot create the state root", root))?;
        for sub in ["layers/sha256", "images", "tmp"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err("cannot create store directory", &p))?;
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
        })
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of a layer (holds `fs/` and metadata).
    pub fn layer_path(&self, digest: &str) -> PathBuf {
        self.root.join("layers/sha256").join(digest)
    }

    /// The unpacked tree of a layer, used as an overlay lowerdir.
    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.layer_path(digest).join("fs")
    }

    /// A fresh scratch directory on the store's file system (for atomic renames).
    pub fn scratch(&self, what: &str) -> Result<PathBuf, ImageError> {
        let base = self.root.join("tmp");
        for n in 0u32.. {
            let p = base.join(format!(
                "{what}-{}-{}-{n}",
                std::process::id(),
                crate::clock::monotonic_ns()
            ));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(p),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("cannot create scratch directory", &p)(e)),
            }
        }
        unreachable!()
    }

    /// `images/<name>.json`; a reference's `/` is stored as `%` (which no
    /// reference contains), so every image is one file in one directory.
    fn manifest_path(&self, name: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", name.replace('/', "%")))
    }

    /// Whether an image of that name is stored (the built-in busybox counts once built).
    pub fn contains(&self, name: &str) -> bool {
        self.manifest_path(name).exists()
    }

    /// When the image's record was last written (imported, pulled, committed).
    pub fn modified(&self, name: &str) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.manifest_path(name))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Names of all images, sorted.
    pub fn names(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.root.join("images");
        let rd = std::fs::read_dir(&dir).map_err(io_err("cannot list images in", &dir))?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json").map(|n| n.replace('%', "/")))
            .collect();
        names.sort();
        Ok(names)
    }

    /// All images.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        self.names()?.iter().map(|n| self.read(n)).collect()
    }

    fn read(&self, name: &str) -> Result<Image, ImageError> {
        let p = self.manifest_path(name);
        let text = std::fs::read_to_string(&p).map_err(io_err("cannot read image manifest", &p))?;
        serde_json::from_str(&text).map_err(|source| ImageError::Manifest { path: p, source })
    }

    /// Looks an image up by name. `busybox` is built from the host on first use.
    pub fn get(&self, name: &str) -> Result<Image, ImageError> {
        check_name(name)?;
        let img = if self.manifest_path(name).exists() {
            self.read(name)?
        } else if name == BUSYBOX_IMAGE {
            busybox::create(self)?
        } else {
            let mut available = self.names()?;
            if !available.iter().any(|n| n == BUSYBOX_IMAGE) {
                available.push(format!("{BUSYBOX_IMAGE} (built in)"));
            }
            return Err(ImageError::Unknown {
                name: name.to_string(),
                root: self.root.clone(),
                available,
            });
        };
        for d in &img.layers {
            if !self.layer_dir(d).is_dir() {
                return Err(ImageError::MissingLayer {
                    image: name.to_string(),
                    digest: d.clone(),
                });
            }
        }
        Ok(img)
    }

    /// Unpacked layer directories of an image, bottom first.
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image.layers.iter().map(|d| self.layer_dir(d)).collect()
    }

    /// Writes (or replaces) an image manifest atomically.
    pub fn put(&self, image: &Image) -> Result<(), ImageError> {
        check_name(&image.name)?;
        let p = self.manifest_path(&image.name);
        let tmp = self.root.join("tmp").join(format!(
            "{}.json.{}.{}",
            image.name.replace('/', "%"),
            std::process::id(),
            crate::clock::monotonic_ns()
        ));
        let text = serde_json::to_string_pretty(image).expect("image serializes");
        std::fs::write(&tmp, text).map_err(io_err("cannot write", &tmp))?;
        std::fs::rename(&tmp, &p).map_err(io_err("cannot write image manifest", &p))
    }

    /// Removes an image manifest and every layer no other image uses.
    pub fn remove(&self, name: &str) -> Result<Vec<String>, ImageError> {
        check_name(name)?;
        let p = self.manifest_path(name);
        if !p.exists() {
            self.get(name)?; // produces the Unknown error with the list
        }
        let img = self.read(name)?;
        std::fs::remove_file(&p).map_err(io_err("cannot remove image manifest", &p))?;
        let mut in_use = std::collections::BTreeSet::new();
        for other in self.list()? {
            in_use.extend(other.layers);
        }
        let mut removed = Vec::new();
        for d in img.layers {
            if !in_use.contains(&d) && !removed.contains(&d) {
                let lp = self.layer_path(&d);
                remove_tree(&lp)?;
                removed.push(d);
            }
        }
        Ok(removed)
    }
}

impl ImageStore {
    /// Removes layer `digest` unless an image uses it (a layer a failed
    /// pull unpacked under a digest its config did not name).
    pub fn remove_layer_if_unused(&self, digest: &str) -> Result<(), ImageError> {
        if self
            .list()?
            .iter()
            .any(|i| i.layers.iter().any(|d| d == digest))
        {
            return Ok(());
        }
        remove_tree(&self.layer_path(digest))
    }
}

/// Removes a directory tree; a missing one is fine.
pub(crate) fn remove_tree(p: &Path) -> Result<(), ImageError> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot remove", p)(e)),
    }
}

/// A pulled image's name: a registry reference (`debian:12`,
/// `host:5000/team/app@sha256:...`): up to 255 of a-z, A-Z, 0-9 and
/// `.-_/:@`, with no empty, `.` or `..` path component.
pub fn valid_reference_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with('.'))
}

pub(crate) fn check_name(name: &str) -> Result<(), ImageError> {
    if crate::spec::valid_name(name) || valid_reference_name(name) {
        Ok(())
    } else {
        Err(ImageError::BadName(name.to_string()))
    }
}
