//! The directory engine's index of repositories: what makes a catalog page cost the names
//! on it, not a walk of every folder before it (at 10,000 repositories a walked page took
//! 15-20 ms: seven system calls per repository, four of them to look for namespaces below it).
//!
//! `<root>/repositories.log` names every repository that has had a record folder (`_tags`,
//! `_blobs`, `_manifests`), one per line. Whichever process makes such a folder appends the
//! name first (`\nNAME\n`, one `write` with `O_APPEND`, then `fdatasync`) and makes the
//! folder after, so a crash can leave a name without a repository, never a repository without
//! its name. The leading newline ends a line a crash tore, so that it cannot swallow the next.
//! A repository whose last tag and links were removed keeps its line (its folders stay too);
//! a page checks that each name it lists still holds something, as the walk did.
//!
//! A page reads what was appended since the last one (one `read` when nothing was), takes the
//! names after `last` from a sorted set, and checks them (three system calls each, on threads
//! for a big page).
//!
//! A store made before the log has none. Writers only append to a log that exists; the first
//! page that finds none makes it, walks the folders, appends every repository found and then
//! writes `repositories.ready` (pages wait for that). A writer that found no log checks again
//! after making its folder and appends if the log appeared meanwhile: either its folder was
//! made before the log (and the walk, which starts after, finds it) or it appends. Where no
//! log can be made (a read-only store), pages walk the folders.

use std::collections::BTreeSet;
use std::fs as stdfs;
use std::io::{self, Write};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::reference::Name;
use crate::store::{Result, ctx, sync_dir};

/// The log, below the store's root.
pub(crate) const LOG: &str = "repositories.log";
/// Present once the log names every repository (see the module doc).
pub(crate) const READY: &str = "repositories.ready";

/// Bytes read from the log at a time.
const CHUNK: usize = 1 << 16;

#[derive(Debug, Default)]
pub(crate) struct Catalog {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    index: Option<Index>,
    /// A log could not be made (a store on a read-only mount): pages are walked.
    unwritable: bool,
}

/// The names read from a ready log so far.
#[derive(Debug)]
struct Index {
    log: stdfs::File,
    /// Bytes of the log read, up to the end of its last whole line.
    read: u64,
    names: BTreeSet<Box<str>>,
}

impl Catalog {
    /// Appends `name` to the log if there is one; whether there was.
    pub(crate) fn note(&self, root: &Path, name: &Name) -> Result<bool> {
        let path = root.join(LOG);
        let mut log = match stdfs::OpenOptions::new().append(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return ctx(Err(e), "open", &path),
        };
        let line = format!("\n{name}\n");
        ctx(log.write_all(line.as_bytes()), "append to", &path)?;
        ctx(log.sync_data(), "fsync", &path)?;
        Ok(true)
    }

    /// Up to `limit` names after `after`, in order, from the log read up to its end. A store
    /// without a ready log gets one first, from `walk` (every repository; see `build`);
    /// `None` when it cannot (then the caller walks). Names are not checked here.
    pub(crate) fn names_after(
        &self,
        root: &Path,
        after: Option<&str>,
        limit: usize,
        walk: impl FnOnce() -> Result<Vec<Name>>,
    ) -> Result<Option<Vec<Box<str>>>> {
        // Held while a log is built: a second first page waits for it rather than walking.
        let mut state = self.lock();
        if state.unwritable {
            return Ok(None);
        }
        let path = root.join(LOG);
        let index = match &mut state.index {
            Some(index) => index,
            slot @ None => {
                if !ready(root)?
                    && let Err(e) = build(root, walk)
                {
                    tracing::warn!(error = %e, "no log of repositories: catalog pages walk the store's folders");
                    state.unwritable = true;
                    return Ok(None);
                }
                slot.insert(Index {
                    log: ctx(stdfs::File::open(&path), "open", &path)?,
                    read: 0,
                    names: BTreeSet::new(),
                })
            }
        };
        index.catch_up(&path)?;
        let from = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        Ok(Some(
            index
                .names
                .range::<str, _>((from, Bound::Unbounded))
                .take(limit)
                .cloned()
                .collect(),
        ))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Index {
    /// Adds the whole lines appended since the last read. A line being appended now is
    /// left for the next read; one a crash tore is a name that is no repository (the page
    /// checks each name).
    fn catch_up(&mut self, path: &Path) -> Result<()> {
        let mut pending = Vec::new();
        let mut buf = vec![0; CHUNK];
        let mut at = self.read;
        let mut new: Vec<Box<str>> = Vec::new();
        loop {
            let n = ctx(self.log.read_at(&mut buf, at), "read", path)?;
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            at += n as u64;
            // Whole lines so far: take them, keep the rest.
            if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
                for line in pending[..end].split(|&b| b == b'\n') {
                    if let Ok(name) = std::str::from_utf8(line)
                        && !name.is_empty()
                    {
                        new.push(name.into());
                    }
                }
                self.read += end as u64 + 1;
                pending.drain(..=end);
            }
        }
        if new.len() > self.names.len() {
            // The first read (or a big tail): one sort and a bulk build, not an insert a
            // name (the first page of a store with 1,000,000 names: 1.6-2.7 s became 0.8 s).
            new.extend(std::mem::take(&mut self.names));
            self.names = new.into_iter().collect();
        } else {
            self.names.extend(new);
        }
        Ok(())
    }
}

/// Whether the log of `root` names every repository.
fn ready(root: &Path) -> Result<bool> {
    let path = root.join(READY);
    match stdfs::symlink_metadata(&path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => ctx(Err(e), "stat", &path),
    }
}

/// Makes the log of a store that has none ready: creates it, appends what `walk` finds
/// (every repository, walked after the log exists) and marks it ready. Safe to run twice,
/// or in two processes at once (a name twice is one name).
fn build(root: &Path, walk: impl FnOnce() -> Result<Vec<Name>>) -> Result<()> {
    let path = root.join(LOG);
    let mut log = ctx(
        stdfs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path),
        "create",
        &path,
    )?;
    sync_dir(root)?;
    let mut text = String::new();
    for name in walk()? {
        text.push('\n');
        text.push_str(name.as_str());
        text.push('\n');
    }
    ctx(log.write_all(text.as_bytes()), "append to", &path)?;
    ctx(log.sync_data(), "fsync", &path)?;
    let ready = root.join(READY);
    ctx(stdfs::File::create(&ready), "create", &ready)?;
    sync_dir(root)
}
