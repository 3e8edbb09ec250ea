//! Pages of big folders without reading the whole folder per page: the catalog's
//! `repositories/` and a repository's `_tags/` can hold 100,000 entries, and a client walks
//! them 1,000 at a time. The sorted listing of a big folder is kept while the folder is
//! unchanged (same inode and mtime), so a page costs a `stat`, a binary search and the
//! entries on it; a folder that changed is read again.
//!
//! A folder's mtime is set from a clock that ticks every few milliseconds: an entry made in
//! the same tick as the listing would leave the mtime as it was. So a listing is only kept
//! when the folder's mtime is older than [`SETTLED`] when it is read (as git trusts its
//! index), and a folder being written to is simply read again.

use std::collections::HashMap;
use std::fs as stdfs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::store::{FileStamp, Result, ctx};

/// Folders with fewer entries are read each time: that is as cheap as a lookup here.
const SMALL: usize = 256;
/// At most this many entries are kept over all folders (~50 bytes each).
const MAX_KEPT: usize = 1 << 20;
/// A folder changed less than this long before it was read may change again unseen.
const SETTLED: Duration = Duration::from_secs(2);

/// How a folder's entries are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// Every name, sorted by bytes (tags).
    Names,
    /// A folder of repositories and namespaces: each entry that is not `_`-prefixed, as
    /// `NAME` (the repository it may be) and `NAME/` (the namespace it may hold). Sorted as
    /// strings, so that walking them in order gives full names in the catalog's order:
    /// `a` < `a-b` < `a/c` (`-` and `.` sort before `/`).
    Namespace,
}

#[derive(Debug, Default)]
pub(crate) struct Listings {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    folders: HashMap<(PathBuf, Kind), Kept1>,
    entries: usize,
    clock: u64,
}

#[derive(Debug)]
struct Kept1 {
    stamp: FileStamp,
    names: Arc<Vec<String>>,
    used: u64,
}

impl Listings {
    /// The sorted entries of `dir` (see [`Kind`]); none when it does not exist. On the
    /// calling thread: it reads the folder when it has changed.
    pub(crate) fn sorted(&self, dir: &Path, kind: Kind) -> Result<Arc<Vec<String>>> {
        let key = (dir.to_owned(), kind);
        if self.lock().folders.contains_key(&key) {
            // Kept: still right if the folder is unchanged.
            let now = match stdfs::metadata(dir) {
                Ok(m) => Some(FileStamp::of(&m)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return ctx(Err(e), "stat", dir),
            };
            let mut kept = self.lock();
            kept.clock += 1;
            let clock = kept.clock;
            if let Some(k) = kept.folders.get_mut(&key)
                && Some(k.stamp) == now
            {
                k.used = clock;
                return Ok(k.names.clone());
            }
        }
        // Not kept (most folders: small ones never are): read, with no stat before.
        let names = Arc::new(read(dir, kind)?);
        if names.len() >= SMALL && names.len() <= MAX_KEPT {
            // The stamp is taken after the read: an entry made during the read changed the
            // mtime, which is then recent, so the listing is not kept.
            if let Ok(meta) = stdfs::metadata(dir) {
                let settled = meta
                    .modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .is_some_and(|age| age > SETTLED);
                if settled {
                    self.keep(key, FileStamp::of(&meta), names.clone());
                }
            }
        }
        Ok(names)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a listing, dropping the least recently used ones while over [`MAX_KEPT`].
    fn keep(&self, key: (PathBuf, Kind), stamp: FileStamp, names: Arc<Vec<String>>) {
        let mut kept = self.lock();
        let now = kept.clock;
        let added = names.len();
        if let Some(old) = kept.folders.insert(
            key,
            Kept1 {
                stamp,
                names,
                used: now,
            },
        ) {
            kept.entries -= old.names.len();
        }
        kept.entries += added;
        while kept.entries > MAX_KEPT {
            let Some(oldest) = kept
                .folders
                .iter()
                .min_by_key(|(_, k)| k.used)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            if let Some(old) = kept.folders.remove(&oldest) {
                kept.entries -= old.names.len();
            }
        }
    }
}

fn read(dir: &Path, kind: Kind) -> Result<Vec<String>> {
    let entries = match stdfs::read_dir(dir) {
        Ok(e) => e,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return ctx(Err(e), "list", dir),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = ctx(entry, "list", dir)?;
        // Names the store never writes (not UTF-8) are no tag or repository.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        match kind {
            Kind::Names => out.push(name),
            Kind::Namespace => {
                // file_type does not follow symlinks: a link cannot lead the walk elsewhere.
                if name.starts_with('_') || !ctx(entry.file_type(), "stat", &entry.path())?.is_dir()
                {
                    continue;
                }
                out.push(format!("{name}/"));
                out.push(name);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The index of the first entry of `sorted` after `after` (all when `None`).
pub(crate) fn after(sorted: &[String], after: Option<&str>) -> usize {
    match after {
        Some(last) => sorted.partition_point(|e| e.as_str() <= last),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_sorts_between_names_as_full_names_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["a", "a-b", "a.c", "a0", "_x"] {
            stdfs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        stdfs::write(dir.path().join("file"), b"").expect("file");
        let sorted = read(dir.path(), Kind::Namespace).expect("read");
        assert_eq!(
            sorted,
            ["a", "a-b", "a-b/", "a.c", "a.c/", "a/", "a0", "a0/"]
        );
    }

    #[test]
    fn an_unchanged_big_folder_is_read_once_and_a_changed_one_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..SMALL {
            stdfs::write(dir.path().join(format!("t{i:04}")), b"").expect("write");
        }
        // Settled: as if written long ago.
        let old = SystemTime::now() - Duration::from_secs(60);
        stdfs::File::open(dir.path())
            .and_then(|f| f.set_modified(old))
            .expect("set mtime");
        let listings = Listings::default();
        let first = listings.sorted(dir.path(), Kind::Names).expect("list");
        let second = listings.sorted(dir.path(), Kind::Names).expect("list");
        assert!(Arc::ptr_eq(&first, &second), "kept");
        stdfs::write(dir.path().join("t9999"), b"").expect("write");
        let third = listings.sorted(dir.path(), Kind::Names).expect("list");
        assert_eq!(third.len(), SMALL + 1, "read again after a change");
        assert_eq!(after(&third, Some("t0254")), SMALL - 1);
    }
}
