//! Pages of big folders without reading the whole folder per page: a repository's `_tags/`
//! can hold 100,000 entries, and a client walks them 1,000 at a time (the collector's walk of
//! `repositories/` and the first catalog page of a store from before `catalog.rs` read
//! through here too). The sorted listing of a big folder is kept while the folder is
//! unchanged (same inode and mtime), so a page costs a `stat`, a binary search and the
//! entries on it; a folder that changed is read again.
//!
//! A folder's mtime is set from a clock that ticks every few milliseconds: an entry made in
//! the same tick as the listing would leave the mtime as it was. So a listing is only kept
//! when the folder's mtime is older than [`SETTLED`] when it is read (as git trusts its
//! index), and a folder being written to is simply read again.
//!
//! A walk opens each folder once and what is below it relative to that descriptor
//! ([`Folder`]): a step resolves one path component, not the store's whole path, and reads
//! entries without the `fstat` that `opendir` adds. On a catalog page of one-image
//! repositories that took the syscalls per repository from ten to seven.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

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
        match Folder::open(dir)? {
            Some(mut folder) => self.sorted_in(&mut folder, kind),
            None => Ok(Arc::default()),
        }
    }

    /// [`Listings::sorted`] of an opened folder, read through its descriptor.
    pub(crate) fn sorted_in(&self, folder: &mut Folder, kind: Kind) -> Result<Arc<Vec<String>>> {
        let key = (folder.path.clone(), kind);
        if self.lock().folders.contains_key(&key) {
            // Kept: still right if the folder is unchanged.
            let now = folder.stamp()?;
            let mut kept = self.lock();
            kept.clock += 1;
            let clock = kept.clock;
            if let Some(k) = kept.folders.get_mut(&key)
                && k.stamp == now
            {
                k.used = clock;
                return Ok(k.names.clone());
            }
        }
        // Not kept (most folders: small ones never are): read, with no stat before.
        let names = Arc::new(folder.read(kind)?);
        if names.len() >= SMALL && names.len() <= MAX_KEPT {
            // The stamp is taken after the read: an entry made during the read changed the
            // mtime, which is then recent, so the listing is not kept.
            let stamp = folder.stamp()?;
            let modified = UNIX_EPOCH + Duration::from_nanos(stamp.mtime_ns.max(0) as u64);
            let settled = SystemTime::now()
                .duration_since(modified)
                .is_ok_and(|age| age > SETTLED);
            if settled {
                self.keep(key, stamp, names.clone());
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

/// A folder held open: its entries are read through the descriptor and what is below it
/// is opened relative to it.
pub(crate) struct Folder {
    pub(crate) path: PathBuf,
    dir: Dir,
}

/// Opening a directory to read: a symlink is not followed (a link cannot lead a walk
/// elsewhere), and one that is missing or not a directory is `None`.
const OPEN: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Folder {
    pub(crate) fn open(path: &Path) -> Result<Option<Folder>> {
        let dir = opened_dir(rustix::fs::open(path, OPEN, Mode::empty()), || {
            path.to_owned()
        })?;
        Ok(dir.map(|dir| Folder {
            path: path.to_owned(),
            dir,
        }))
    }

    /// The folder `name` below this one.
    pub(crate) fn child(&self, name: &str) -> Result<Option<Folder>> {
        let path = self.path.join(name);
        let opened = rustix::fs::openat(self.fd()?, name, OPEN, Mode::empty());
        let dir = opened_dir(opened, || path.clone())?;
        Ok(dir.map(|dir| Folder { path, dir }))
    }

    /// Whether the folder at `relative` (below this one) has an entry; a missing one has
    /// none. Reads only the first batch of entries. No symlink on the way is followed (a
    /// name read from the catalog's log is several components), where the kernel can say so.
    pub(crate) fn holds_any(&self, relative: &str) -> Result<bool> {
        use rustix::fs::ResolveFlags;
        let path = || self.path.join(relative);
        let beneath = ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH;
        let opened = match rustix::fs::openat2(self.fd()?, relative, OPEN, Mode::empty(), beneath) {
            // Linux before 5.6, or a sandbox that forbids it.
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                rustix::fs::openat(self.fd()?, relative, OPEN, Mode::empty())
            }
            other => other,
        };
        let Some(mut dir) = opened_dir(opened, path)? else {
            return Ok(false);
        };
        while let Some(entry) = dir.read() {
            let entry = ctx(entry.map_err(io::Error::from), "list", &path())?;
            if !matches!(entry.file_name().to_bytes(), b"." | b"..") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The names in the folder at `relative` (below this one), sorted; none if it is missing.
    pub(crate) fn names_in(&self, relative: &str) -> Result<Vec<String>> {
        match self.child(relative)? {
            Some(mut folder) => folder.read(Kind::Names),
            None => Ok(Vec::new()),
        }
    }

    /// The file at `relative` (below this one) opened to read; `None` if it is missing.
    pub(crate) fn open_file(&self, relative: &str) -> Result<Option<std::fs::File>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(self.fd()?, relative, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(std::fs::File::from(fd))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => ctx(Err(io::Error::from(e)), "open", &self.path.join(relative)),
        }
    }

    fn fd(&self) -> Result<rustix::fd::BorrowedFd<'_>> {
        ctx(self.dir.fd().map_err(io::Error::from), "list", &self.path)
    }

    fn stamp(&self) -> Result<FileStamp> {
        let st = ctx(
            rustix::fs::fstat(self.fd()?).map_err(io::Error::from),
            "stat",
            &self.path,
        )?;
        Ok(FileStamp {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
        })
    }

    /// The entries, sorted as [`Kind`] says.
    fn read(&mut self, kind: Kind) -> Result<Vec<String>> {
        let mut out = Vec::new();
        while let Some(entry) = self.dir.read() {
            let entry = ctx(entry.map_err(io::Error::from), "list", &self.path)?;
            // Names the store never writes (not UTF-8) are no tag or repository.
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            match kind {
                Kind::Names => out.push(name.to_owned()),
                Kind::Namespace => {
                    if name.starts_with('_') || !self.is_dir(name, entry.file_type())? {
                        continue;
                    }
                    out.push(format!("{name}/"));
                    out.push(name.to_owned());
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Whether the entry `name` is a directory (not a symlink to one): from the entry's
    /// type, or a `stat` on file systems that do not record it.
    fn is_dir(&self, name: &str, listed: FileType) -> Result<bool> {
        if listed != FileType::Unknown {
            return Ok(listed == FileType::Directory);
        }
        let st = rustix::fs::statat(self.fd()?, name, AtFlags::SYMLINK_NOFOLLOW);
        let st = ctx(st.map_err(io::Error::from), "stat", &self.path.join(name))?;
        Ok(FileType::from_raw_mode(st.st_mode) == FileType::Directory)
    }
}

/// The directory just opened; a missing one (or a symlink, or not a directory) is `None`.
fn opened_dir(
    r: rustix::io::Result<rustix::fd::OwnedFd>,
    path: impl Fn() -> PathBuf,
) -> Result<Option<Dir>> {
    use rustix::io::Errno;
    match r {
        Ok(fd) => ctx(Dir::new(fd).map_err(io::Error::from), "list", &path()).map(Some),
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => Ok(None),
        Err(e) => ctx(Err(io::Error::from(e)), "list", &path()),
    }
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
    use std::fs as stdfs;

    #[test]
    fn a_namespace_sorts_between_names_as_full_names_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["a", "a-b", "a.c", "a0", "_x"] {
            stdfs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        stdfs::write(dir.path().join("file"), b"").expect("file");
        // A symlink to a folder is not followed: no walk leaves the store through one.
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("link")).expect("link");
        let mut folder = Folder::open(dir.path()).expect("open").expect("a folder");
        let sorted = folder.read(Kind::Namespace).expect("read");
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
