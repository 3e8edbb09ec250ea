//! The directory engine: a store that is a folder on this machine (the default). Its blobs
//! are files named by digest (`store/blobs/`), its tags, links and referrer records are small
//! files in `repositories/` (`metadata.rs`), its collector's marks are file times under a
//! flock'd gate (`store/gate.rs`, `store/gc.rs`).
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Dir`]: every path of the layout (see `store/mod.rs`), temp files, records |
//! | `metadata.rs` | tags, links, referrer records and the repository list as files |
//! | `catalog.rs` | the log of repositories and its sorted file, which a catalog page is read from |
//! | `listing.rs` | sorted listings of big folders, kept while unchanged: tag pages, the collector's walk |
//! | `sessions.rs` | upload sessions in this process: a locked temp file each, hashed as bytes arrive |

pub(crate) mod catalog;
pub(crate) mod listing;
pub(crate) mod metadata;
pub(crate) mod sessions;

use std::fs as stdfs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Result, StoreError, UNLOCKED_GRACE, UNLOCKED_PREFIX, ctx, file_name};
use crate::digest::{Algorithm, Digest};
use crate::reference::{Name, Tag};

/// A directory store's layout: the one place that joins a path onto its root. A shared
/// store has one too, as its scratch folder (files made to be packed, temp files).
#[derive(Debug, Clone)]
pub(crate) struct Dir {
    pub root: PathBuf,
    listings: std::sync::Arc<listing::Listings>,
    catalog: std::sync::Arc<catalog::Catalog>,
}

impl Dir {
    pub(crate) fn new(root: PathBuf) -> Dir {
        Dir {
            root,
            listings: Default::default(),
            catalog: Default::default(),
        }
    }

    /// Writes a byte to an unnamed temp file in `tmp/` (gone when closed).
    pub(crate) fn check_writable(&self) -> Result<()> {
        let tmp = self.tmp_dir();
        let mut probe = ctx(
            tempfile::tempfile_in(&tmp),
            "write to store directory",
            &tmp,
        )?;
        ctx(
            io::Write::write_all(&mut probe, b"ready"),
            "write to store directory",
            &tmp,
        )
    }

    pub(crate) fn blob_dir(&self, algorithm: Algorithm) -> PathBuf {
        self.root.join("blobs").join(algorithm.name())
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn repositories_dir(&self) -> PathBuf {
        self.root.join("repositories")
    }

    /// Where the blob named `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        // Digest's hex is validated lowercase hex of fixed length: a safe file name.
        self.blob_dir(digest.algorithm()).join(digest.hex())
    }

    /// Where the pushed media type of a manifest without a `mediaType` is kept.
    pub(crate) fn manifest_type_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("types").join(file_name(digest))
    }

    pub(crate) fn layer_cache_dir(&self) -> PathBuf {
        self.root.join("cache").join("layers")
    }

    /// A repository's folder. Name components never start with '_', so the `_tags`, `_blobs`,
    /// `_manifests` and `_referrers` folders in it cannot collide with a sub-repository.
    pub(crate) fn repository_dir(&self, name: &Name) -> PathBuf {
        self.repositories_dir().join(name.as_str())
    }

    pub(crate) fn tags_dir(&self, name: &Name) -> PathBuf {
        self.repository_dir(name).join("_tags")
    }

    pub(crate) fn tag_path(&self, name: &Name, tag: &Tag) -> PathBuf {
        self.tags_dir(name).join(tag.as_str())
    }

    /// Deletes temp files whose writer is gone. A live writer holds an exclusive flock on its
    /// temp file, so a file we can lock belongs to a process that died. A file still under
    /// its unlocked `new-` name is only removed once old: its writer may be between creating
    /// and locking it.
    pub(crate) fn remove_stale_temp_files(&self) -> Result<usize> {
        let dir = self.tmp_dir();
        let mut removed = 0;
        for entry in ctx(stdfs::read_dir(&dir), "list", &dir)? {
            let path = ctx(entry, "list", &dir)?.path();
            let unlocked_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(UNLOCKED_PREFIX));
            let stale = if unlocked_name {
                stdfs::metadata(&path)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > UNLOCKED_GRACE))
            } else {
                // A file that vanished meanwhile was committed or cleaned up by its writer.
                stdfs::File::open(&path).is_ok_and(|f| f.try_lock().is_ok())
            };
            if stale {
                match stdfs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return ctx(Err(e), "remove stale temp file", &path),
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, dir = %dir.display(), "removed stale temp files");
        }
        Ok(removed)
    }

    /// A new temp file in `tmp/`, flock'd so that a concurrent `open` leaves it alone. It is
    /// created under an unlocked name and renamed once locked, so the cleaner never mistakes
    /// a live file it managed to lock first for a dead one.
    pub(crate) fn create_temp(&self, prefix: &str) -> Result<(stdfs::File, tempfile::TempPath)> {
        let dir = self.tmp_dir();
        let named = ctx(
            tempfile::Builder::new()
                .prefix(&format!("{UNLOCKED_PREFIX}{prefix}"))
                .tempfile_in(&dir),
            "create temp file in",
            &dir,
        )?;
        let (file, unlocked) = named.into_parts();
        ctx(
            file.lock().map_err(io::Error::other),
            "lock temp file",
            &unlocked,
        )?;
        let name = unlocked
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(UNLOCKED_PREFIX))
            .map(str::to_owned)
            .unwrap_or_else(|| prefix.to_owned());
        let locked = dir.join(name);
        ctx(
            unlocked.persist(&locked).map_err(|e| e.error),
            "rename temp file",
            &locked,
        )?;
        Ok((
            file,
            tempfile::TempPath::try_from_path(locked).map_err(|e| StoreError::Io {
                action: "use temp file",
                path: dir,
                source: e,
            })?,
        ))
    }

    /// Writes `bytes` to `dest` whole or not at all: a temp file renamed over it. Not
    /// fsynced: for records whose loss in a crash costs a repack or a prepack, no more.
    pub(crate) fn write_record(
        &self,
        prefix: &str,
        dest: &Path,
        bytes: &[u8],
        what: &'static str,
    ) -> Result<()> {
        let (mut file, temp) = self.create_temp(prefix)?;
        ctx(io::Write::write_all(&mut file, bytes), "write", &temp)?;
        ctx(temp.persist(dest).map_err(|e| e.error), what, dest)
    }
}
