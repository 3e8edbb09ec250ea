//! The gate between the collector's sweep and every writer that finds or makes a blob and
//! then records it (links it into a repository, names it in a tag): what makes "a push lost
//! a blob it was told exists" impossible rather than unlikely. The store doc says why.
//!
//! - A writer takes a [`Pin`] (shared) for the whole of such a step: from looking for the
//!   blob to the last link. Inside it, every blob it finds or commits is *touched* (its
//!   access time set to now, see [`touch`]) and every link it makes or finds is touched too.
//! - The sweep takes [`Exclusive`] to read the clock that starts a pass, and again around
//!   each batch of removals, in which it re-reads the touch time of what it is about to remove.
//! - A pack, which commits a layer long before it links it, keeps a [`Hold`] on each blob:
//!   a flock'd file under `holds/`, which the sweep reads under `Exclusive`.
//!
//! The gate is `<root>/gc.lock`, flock'd shared by each pin (each on its own open file, so
//! pins in one process do not release each other's lock) and exclusively by the sweep, so
//! it holds across processes: a `quinistry pack` or `quinistry gc` next to a `serve`. In the
//! process a fair read-write lock is taken first, so that a steady stream of pushes cannot
//! starve the sweep (flock grants shared locks while an exclusive one waits).

use std::fs as stdfs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::{Result, Store, StoreError, blocking, ctx, file_name, open_lock_file, parse_file_name};
use crate::digest::Digest;

/// A writer's side of the gate: while any pin is held, nothing is removed from the store.
/// Hold it from finding (or committing) a blob to the last link that names it, and no
/// longer: a sweep waits for it, and in-process writers queue behind a waiting sweep.
#[derive(Debug)]
pub struct Pin {
    _turn: tokio::sync::OwnedRwLockReadGuard<()>,
    /// The shared flock; none on a shared store, whose collector is kept out by row locks
    /// in its database instead (`postgres/gc.rs`).
    _file: Option<stdfs::File>,
}

/// The sweep's side: no writer is between finding a blob and linking it, in any process.
#[derive(Debug)]
pub(crate) struct Exclusive {
    _turn: tokio::sync::OwnedRwLockWriteGuard<()>,
    _file: stdfs::File,
    /// When it was taken: every touch by a pin taken later reads a clock at or after it.
    pub at: SystemTime,
}

/// A pack's claim on a blob it committed or found and will link later: the sweep leaves
/// the blob alone while the hold lives. Dropping it removes the claim; a dead process's
/// claims are found unlocked and removed by the next sweep.
#[derive(Debug)]
pub struct Hold {
    /// The flock'd claim file and its path; none on a shared store (see `Pin`).
    _file: Option<stdfs::File>,
    path: Option<PathBuf>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        // Left behind on failure, it is unlocked once we are gone, and the sweep removes it.
        if let Some(path) = &self.path {
            let _ = stdfs::remove_file(path);
        }
    }
}

impl Store {
    fn gate_path(&self) -> PathBuf {
        self.dir.root.join("gc.lock")
    }

    fn holds_dir(&self) -> PathBuf {
        self.dir.root.join("holds")
    }

    /// Takes the writers' side of the gate (see [`Pin`]).
    pub async fn pin(&self) -> Result<Pin> {
        let turn = self.turn.clone().read_owned().await;
        if self.is_shared() {
            return Ok(Pin {
                _turn: turn,
                _file: None,
            });
        }
        let path = self.gate_path();
        let file = open_lock_file(&path)?;
        let file = match file.try_lock_shared() {
            Ok(()) => file,
            // A sweep in another process: wait for its batch off the async threads.
            Err(stdfs::TryLockError::WouldBlock) => {
                blocking(move || ctx(file.lock_shared(), "lock", &path).map(|()| file)).await?
            }
            Err(stdfs::TryLockError::Error(e)) => return ctx(Err(e), "lock", &path),
        };
        Ok(Pin {
            _turn: turn,
            _file: Some(file),
        })
    }

    /// Takes the sweep's side of the gate: waits for every pin to be let go.
    pub(crate) async fn exclusive(&self) -> Result<Exclusive> {
        let turn = self.turn.clone().write_owned().await;
        let path = self.gate_path();
        let file = blocking(move || {
            let file = open_lock_file(&path)?;
            ctx(file.lock(), "lock", &path)?;
            Ok(file)
        })
        .await?;
        Ok(Exclusive {
            _turn: turn,
            _file: file,
            at: SystemTime::now(),
        })
    }

    /// Touches blob `digest` and claims it until the hold is dropped; `None` if the store
    /// does not have it.
    pub async fn hold(&self, _pin: &Pin, digest: &Digest) -> Result<Option<Hold>> {
        if let Some(shared) = self.shared() {
            let found = shared.meta.blob_size(digest).await?;
            return Ok(found.map(|_| Hold {
                _file: None,
                path: None,
            }));
        }
        let blob = self.blob_path(digest);
        let dir = self.holds_dir();
        let prefix = format!("{}.", file_name(digest));
        blocking(move || {
            if !touch(&blob)? {
                return Ok(None);
            }
            ctx(stdfs::create_dir_all(&dir), "create directory", &dir)?;
            let (file, path) = ctx(
                tempfile::Builder::new().prefix(&prefix).tempfile_in(&dir),
                "create hold in",
                &dir,
            )?
            .into_parts();
            // Before the pin is let go, so a sweep that starts later sees it locked.
            ctx(file.lock(), "lock", &path)?;
            let path = path.keep().map_err(|e| StoreError::Io {
                action: "keep hold",
                path: dir.clone(),
                source: e.error,
            })?;
            Ok(Some(Hold {
                _file: Some(file),
                path: Some(path),
            }))
        })
        .await
    }

    /// The blobs live holds claim. A hold file nobody has locked belongs to a process that
    /// died: it is removed. Read under [`Exclusive`], so no hold can appear meanwhile.
    pub(crate) async fn held(&self) -> Result<std::collections::BTreeSet<Digest>> {
        let dir = self.holds_dir();
        blocking(move || {
            let mut held = std::collections::BTreeSet::new();
            let entries = match stdfs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(held),
                Err(e) => return ctx(Err(e), "list", &dir),
            };
            for entry in entries {
                let path = ctx(entry, "list", &dir)?.path();
                let Some(digest) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split_once('.'))
                    .and_then(|(d, _)| parse_file_name(d))
                else {
                    continue;
                };
                let alive = match stdfs::File::open(&path) {
                    Ok(f) => f.try_lock().is_err(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return ctx(Err(e), "open", &path),
                };
                if alive {
                    held.insert(digest);
                } else {
                    let _ = stdfs::remove_file(&path);
                }
            }
            Ok(held)
        })
        .await
    }
}

/// Touches a file: sets its access time to now; `false` if there is no such file. The
/// clock is read here, after the pin was taken, so it is at or after the start of any pass
/// that could miss the link this touch precedes.
///
/// The access time, not the mtime: a blob's mtime is part of the stamp the layer cache
/// checks (a rewritten blob), and a touch must not look like a rewrite. The kernel only
/// ever moves an access time forward on its own (a read, under `relatime`), which can only
/// keep a blob longer. Set explicitly, it is kept on `noatime` mounts too.
pub(super) fn touch(path: &Path) -> Result<bool> {
    let file = match stdfs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return ctx(Err(e), "open", path),
    };
    let now = stdfs::FileTimes::new().set_accessed(SystemTime::now());
    ctx(file.set_times(now), "touch", path)?;
    Ok(true)
}

/// When a file was last touched (its access time); `None` if it cannot be told.
pub(super) fn touched(meta: &stdfs::Metadata) -> Option<SystemTime> {
    meta.accessed().ok()
}

/// A handle that keeps the in-process turn: one per store opening, shared by its clones.
pub(super) type Turn = Arc<tokio::sync::RwLock<()>>;
