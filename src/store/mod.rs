//! The content-addressed store: the one place that knows every on-disk path.
//!
//! ```text
//! <root>/blobs/sha256/<hex>                  immutable blobs, named by the sha256 of their bytes
//! <root>/blobs/sha512/<hex>                  blobs a client pushed under a sha512 digest
//! <root>/tmp/<random>                        blobs and tag files being written; each is flock'd
//!                                            by its writer while it lives
//! <root>/repositories/<name>/_tags/<tag>     "sha256:<hex>\n": the manifest a tag points at
//! <root>/repositories/<name>/_blobs/<d>      empty: blob <d> (layer, config) is in <name>
//! <root>/repositories/<name>/_manifests/<d>  empty: manifest <d> is in <name>
//! <root>/repositories/<name>/_referrers/<subject d>/<d>
//!                                            empty: manifest <d> in <name> has that subject
//! <root>/cache/layers/<hex>                  a layer-cache record: which layer a set of input
//!                                            files packed into (JSON, see `cache`)
//! <root>/types/<d>                           the media type a manifest without a `mediaType`
//!                                            was pushed as (`application/vnd.docker...`)
//! <root>/repositories.log                    every repository that has had a record folder,
//!                                            one a line, appended before the folder is made:
//!                                            what a catalog page reads (`fs/catalog.rs`)
//! <root>/repositories.ready                   empty: the log names every repository (a store
//!                                            from before the log gets it by a walk)
//! <root>/repositories.sorted                 the names the log held up to the offset in its
//!                                            first line, sorted, once each: searched by a
//!                                            page, rewritten as the log grows past it
//! <root>/gc.lock                             the gate between writers and the collector's
//!                                            sweep (`gate`): flock'd, never written
//! <root>/holds/<d>.<random>                  a pack's claim on blob <d> until it is linked;
//!                                            flock'd by the pack while it lives
//! <root>/cache/files/<hex>                   a file made from bytes in memory so that it can
//!                                            be packed (the self-image's license notices),
//!                                            named by its sha256, mode 0644, mtime 0
//! ```
//!
//! `<d>` is a digest as a file name: its hex for sha256, `sha512-<hex>` for sha512.
//! The `blobs/` part is laid out like an OCI image layout. Writers stream into a temp file,
//! fsync it and rename it to its digest, so a reader never sees a half-written blob under a
//! digest name (invariant 1). Names and tags are validated (`reference`) before they are joined
//! onto a path, and components starting with `_` cannot be repository names.
//!
//! Bytes are stored once, under `blobs/`; a repository holds *links* to them (like
//! distribution's `_layers` and `_manifests`), so a blob pushed into one repository is not
//! served through another. A link is an empty file: its existence is the whole record.
//!
//! **Tags and links stay consistent** (a tag names a manifest its repository links; a linked
//! manifest's blobs are linked): every write that could break that is ordered so that a
//! crash leaves it true, and writers that could interleave are serialized per repository.
//! - Order: a blob or manifest is committed before it is linked; a manifest's blobs are
//!   linked before it is; a tag is written after the manifest's link; a delete by digest
//!   removes the tags first, then the link. A crash between two steps leaves at most an
//!   unlinked blob (garbage), never a dangling tag.
//! - Serialization: the registry holds a per-repository lock over a manifest push (from the
//!   check of its blobs to its last tag), a delete by tag or digest, and a blob delete, so a
//!   push cannot tag a manifest a concurrent delete is unlinking. The lock is in the
//!   process: a second process writing the same repository's tags (`quinistry pack --tag`)
//!   is not serialized with it.
//!
//! **Garbage collection runs beside all of this** (`gc`): every step that finds or makes a
//! blob and then links it holds a [`Pin`] and touches what it relies on; the sweep removes
//! only under the gate taken exclusively, what was last touched before its pass began. Why
//! that makes a lost acknowledged push impossible rather than unlikely is in `gc.rs`.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | every path above, opening a store, temp files, the durable file operations |
//! | `blobs/` | blobs: writing (`BlobWriter`), reading, verifying, listing; layer-cache records |
//! | `metadata.rs` | the `Metadata` trait: tags, links, referrers, repositories, small records; one implementation per engine |
//! | `repositories.rs` | tags, links, referrer records, which repositories exist, pull records: the `Store`'s side |
//! | `verify.rs` | the graph check: tags, links, manifests and referrers against each other |
//! | `gate.rs` | the gate between the collector and writers: pins, touches, holds |
//! | `gc.rs` | garbage collection, online: retention, mark, sweep, and why no push loses a blob |
//! | `object/` | a shared store's bytes: blobs in object storage, several endpoints (`mod.rs`); `writer.rs`, its uploads, sessions suspended between requests, the commit by server-side copy, streams and presigned URLs |
//! | `postgres/` | a shared store's metadata in PostgreSQL: the schema and its migrations, every query, the advisory locks (`mod.rs`); `gc.rs`, its garbage collection, one replica at a time; `sessions.rs`, upload sessions in the database |
//! | `spec.rs` | `StoreSpec`: what `--store` and `--metadata` say, what those engines can do, opening them |
//! | `sessions.rs` | upload sessions: the API the registry feeds; `fs/sessions.rs` and `postgres/sessions.rs` keep them |
//! | `fs/` | the directory engine: its layout (`Dir`), its metadata as files, its upload sessions |
//!
//! **A shared store** (`Store::open_shared`: `--store s3://BUCKET/PREFIX --metadata
//! postgres://…`) keeps the same API over other engines, so that several replicas serve one
//! store: blobs are objects named by digest (written as multipart uploads under `uploads/`,
//! copied to their digest key once checked), and everything above is rows in PostgreSQL,
//! written by single statements or under advisory locks instead of files and flocks. The
//! database says which blobs exist; an object it does not name is garbage. Metadata and upload
//! sessions are behind traits (`metadata::Metadata`, `sessions::SessionEngine`) chosen when
//! the store is opened; blobs, the gate and the collector still say `if let Some(shared) =
//! self.shared()` where the two engines differ.

mod blobs;
mod fs;
mod gate;
pub mod gc;
mod metadata;
pub mod object;
pub mod postgres;
mod repositories;
pub mod sessions;
pub mod spec;
pub mod verify;

use std::fs as stdfs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::digest::{Algorithm, Digest, DigestError};
use crate::reference::Name;
pub use blobs::{BlobRead, BlobWriter, Suspended};
pub use gate::{Hold, Pin};
pub use repositories::Link;

/// Write buffer in front of a temp file: few large writes instead of many small ones.
const WRITE_BUFFER: usize = 1 << 20;
/// Read size when re-hashing a blob.
const READ_BUFFER: usize = 1 << 20;
/// Name prefix of a temp file that is not yet locked by its writer.
const UNLOCKED_PREFIX: &str = "new-";
/// How long an unlocked temp file is left alone (its writer locks it within microseconds).
const UNLOCKED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O failure, with what we were doing and where.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("blob {0} is not in the store")]
    BlobUnknown(Digest),
    #[error("content does not match digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("{} is not a quinistry store (it has no blobs/ folder); give the --store that `serve` or `pack` used", .0.display())]
    NotAStore(PathBuf),
    #[error("tag file {} is corrupt: {source}", path.display())]
    CorruptTag { path: PathBuf, source: DigestError },
    /// Object storage failed (a shared store's bytes).
    #[error("object storage: {0}")]
    Objects(String),
    /// The metadata database failed or cannot be reached (a shared store).
    #[error("metadata database: {0}")]
    Database(String),
    /// A record or object that breaks an invariant (a row whose digest does not parse, a
    /// saved hash state that does not resume): the store's fault, not the service's, so
    /// never retried or covered by an answer seen before; the message names it.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// What a shared store does not do (yet); the message says what.
    #[error("{0}")]
    Unsupported(&'static str),
    /// Another process holds what this needs alone (a shared store's collector lock).
    #[error("{0}")]
    Busy(&'static str),
}

impl StoreError {
    /// Whether the failure is of a service the store depends on (object storage, the
    /// database) rather than of the request or the data: worth a 503 and a retry.
    pub fn unavailable(&self) -> bool {
        matches!(self, StoreError::Objects(_) | StoreError::Database(_))
    }
}

/// Bytes of a blob as they arrive from object storage.
pub type ByteStream =
    std::pin::Pin<Box<dyn futures_core::Stream<Item = io::Result<bytes::Bytes>> + Send>>;

/// A store shared by several replicas: bytes in object storage, metadata in PostgreSQL.
#[derive(Debug)]
pub(crate) struct Shared {
    pub objects: object::Objects,
    pub meta: Arc<postgres::Metadata>,
}

impl Shared {
    /// The size of blob `digest`, `None` if the store does not have it. The database says;
    /// while it cannot be reached, the object itself does (an object under a digest key is
    /// whole: it was copied there complete), so that reads go on.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        match self.meta.blob_size(digest).await {
            Err(e) if e.unavailable() => {
                tracing::warn!(error = %e, "metadata database unreachable: sizing a blob from object storage");
                self.objects.size(&self.objects.blob_key(digest)).await
            }
            other => other,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Whether an I/O error says the disk (or the quota) is full: a write that cannot be done
/// now, not a fault of the store.
pub fn disk_full(e: &io::Error) -> bool {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    matches!(e.kind(), StorageFull | QuotaExceeded)
}

/// Attaches an action and a path to an I/O error.
fn ctx<T>(r: io::Result<T>, action: &'static str, path: &Path) -> Result<T> {
    r.map_err(|source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    })
}

/// A lock file (the collector's gate, `<root>/gc.lock`), created if needed.
fn open_lock_file(path: &Path) -> Result<stdfs::File> {
    ctx(
        stdfs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path),
        "open",
        path,
    )
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs blocking file-system work (fsync, rename, directory scans) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        // Only a panic in `f` gets here; report it rather than propagate the panic.
        Err(e) => ctx(Err(io::Error::other(e)), "finish store task", Path::new("")),
    }
}

/// Threads a walk or a mark over many small records may use: every core, at most 4.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// `work` over each of `parts`, each on a thread of its own but the first, which runs on
/// the calling thread; the results in the order of `parts`. A part whose thread panicked
/// is an error of `action` on `path`.
fn in_parts<P: Send, T: Send>(
    parts: impl IntoIterator<Item = P>,
    action: &'static str,
    path: &Path,
    work: impl Fn(P) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        return Vec::new();
    };
    std::thread::scope(|scope| {
        let work = &work;
        let started: Vec<_> = parts.map(|p| scope.spawn(move || work(p))).collect();
        let mut results = vec![work(first)];
        for t in started {
            results.push(
                t.join().unwrap_or_else(|_| {
                    ctx(Err(io::Error::other("a thread panicked")), action, path)
                }),
            );
        }
        results
    })
}

/// A handle on a store: a directory, or a shared store's services. Cheap to clone; all
/// state is in the store, but for running totals kept for metrics.
#[derive(Debug, Clone)]
pub struct Store {
    /// The store's root directory; every path below is derived from it (`fs::Dir`) and
    /// nowhere else. A shared store's is only this process's scratch folder.
    dir: fs::Dir,
    /// Tags, links, referrers, repositories and small records: files in `dir`, or rows.
    meta: Arc<dyn metadata::Metadata>,
    /// How many blobs and bytes the store holds, without a walk per question.
    totals: Arc<Totals>,
    /// The in-process half of the gate between writers and the sweep (`gate`).
    turn: gate::Turn,
    /// Set for a store shared by replicas: then blobs and metadata live there, and `root`
    /// is only this process's scratch folder (files made to be packed).
    shared: Option<Arc<Shared>>,
}

/// Blobs and bytes in the store: a walk counts them once (`Store::count`), then this process's
/// commits add theirs. Writes by another process (`quinistry pack` into the same store) show
/// at the next count; a blob committed while the walk runs may be counted twice.
#[derive(Debug, Default)]
struct Totals {
    /// What the walk found, and what had been added when it began.
    walked: std::sync::Mutex<Option<(i64, i64)>>,
    added_at_walk: std::sync::Mutex<(i64, i64)>,
    added_blobs: AtomicI64,
    added_bytes: AtomicI64,
}

impl Store {
    fn at(root: PathBuf) -> Store {
        let dir = fs::Dir::new(root);
        Store {
            meta: Arc::new(dir.clone()),
            dir,
            totals: Arc::default(),
            turn: gate::Turn::default(),
            shared: None,
        }
    }

    /// Opens a store shared by replicas: blobs at `location`, metadata in the PostgreSQL
    /// database at `metadata_url` (its schema brought up to date). Both services are
    /// contacted now, so a wrong address or credentials fail here, in one line. Files this
    /// process makes to pack go to a scratch folder under the temp directory.
    pub async fn open_shared(location: &object::Location, metadata_url: &str) -> Result<Store> {
        let objects = object::Objects::new(location)?;
        objects.probe().await?;
        let meta = Arc::new(postgres::Metadata::connect(metadata_url).await?);
        let mut store = Store::at(std::env::temp_dir().join("quinistry-scratch"));
        let dir = store.dir.tmp_dir();
        ctx(
            stdfs::create_dir_all(&dir),
            "create scratch directory",
            &dir,
        )?;
        store.meta = meta.clone();
        store.shared = Some(Arc::new(Shared { objects, meta }));
        Ok(store)
    }

    /// The shared store's services, if this is one.
    pub(crate) fn shared(&self) -> Option<&Shared> {
        self.shared.as_deref()
    }

    /// The store's upload sessions, with these caps and timeout: in this process for a
    /// directory store, in the database for a shared one (see `sessions`).
    pub fn sessions(&self, limits: sessions::SessionLimits) -> sessions::Sessions {
        let engine: Arc<dyn sessions::SessionEngine> = match self.shared() {
            Some(_) => Arc::new(postgres::sessions::SharedSessions::new(
                self.clone(),
                limits,
            )),
            None => Arc::new(fs::sessions::LocalSessions::new(self.clone(), limits)),
        };
        sessions::Sessions::new(engine, limits)
    }

    /// What writes in progress hold now: temp files in `tmp/`, or a shared store's upload
    /// sessions and the objects under `uploads/`. What an abandoned write leaves shows here
    /// until it is cleaned up.
    pub async fn in_progress(&self) -> Result<Vec<String>> {
        if let Some(shared) = self.shared() {
            let mut all = shared.meta.uploads_open().await?;
            all.extend(shared.objects.uploads().await?);
            return Ok(all);
        }
        let dir = self.dir.tmp_dir();
        blocking(move || list_names(&dir, |n| Some(n.to_owned()))).await
    }

    /// Whether blobs and metadata are shared by replicas (object storage and PostgreSQL).
    pub(crate) fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether this process may keep what it read of tags and links for a moment: it is the
    /// store's one writer (a directory store; another process writing it, a `pack`, is
    /// seen within the moment). Replicas over a shared store keep no answer another replica
    /// can change: what one writes, the next request to any sees.
    pub fn answers_keep(&self) -> bool {
        !self.is_shared()
    }

    /// Whether blobs can be handed to clients as short-lived URLs of their own (`presigned`).
    pub fn presigns(&self) -> bool {
        self.is_shared()
    }

    /// Takes repository `name`'s write lock shared by every replica; `None` for a local
    /// store (the registry's in-process lock is the whole of it there).
    pub async fn lock_repository(&self, name: &Name) -> Result<Option<postgres::AdvisoryLock>> {
        match self.shared() {
            Some(s) => s.meta.lock_repository(name).await.map(Some),
            None => Ok(None),
        }
    }

    /// Records a blob this process committed under a new name.
    fn added(&self, bytes: u64) {
        self.totals.added_blobs.fetch_add(1, Ordering::Relaxed);
        self.totals
            .added_bytes
            .fetch_add(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Records a blob removed (by `gc`).
    fn removed(&self, bytes: u64) {
        self.totals.added_blobs.fetch_sub(1, Ordering::Relaxed);
        self.totals
            .added_bytes
            .fetch_sub(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Counts the blobs and their bytes with a walk of the store (once, at start: after it
    /// [`Store::totals`] are kept by commits).
    pub async fn count(&self) -> Result<()> {
        if let Some(shared) = self.shared() {
            let found = shared.meta.totals().await?;
            *lock(&self.totals.added_at_walk) = (
                self.totals.added_blobs.load(Ordering::Relaxed),
                self.totals.added_bytes.load(Ordering::Relaxed),
            );
            *lock(&self.totals.walked) = Some(found);
            return Ok(());
        }
        *lock(&self.totals.added_at_walk) = (
            self.totals.added_blobs.load(Ordering::Relaxed),
            self.totals.added_bytes.load(Ordering::Relaxed),
        );
        let dirs = Algorithm::ALL.map(|a| self.dir.blob_dir(a));
        let found = blocking(move || {
            let (mut blobs, mut bytes) = (0i64, 0i64);
            for dir in dirs {
                let entries = match stdfs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return ctx(Err(e), "list", &dir),
                };
                for entry in entries.flatten() {
                    if let Ok(m) = entry.metadata() {
                        blobs += 1;
                        bytes += i64::try_from(m.len()).unwrap_or(i64::MAX);
                    }
                }
            }
            Ok((blobs, bytes))
        })
        .await?;
        *lock(&self.totals.walked) = Some(found);
        Ok(())
    }

    /// Blobs and bytes in the store, once counted.
    pub fn totals(&self) -> Option<(i64, i64)> {
        let (blobs, bytes) = (*lock(&self.totals.walked))?;
        let (b0, y0) = *lock(&self.totals.added_at_walk);
        Some((
            blobs + self.totals.added_blobs.load(Ordering::Relaxed) - b0,
            bytes + self.totals.added_bytes.load(Ordering::Relaxed) - y0,
        ))
    }

    /// Whether the store can be read and written now: lists the blob folder and writes and
    /// removes a temp file (for `/readyz`; a full disk or a lost mount says no).
    pub async fn probe(&self) -> Result<()> {
        if let Some(shared) = self.shared() {
            shared.meta.probe().await?;
            return shared.objects.probe().await;
        }
        let s = self.clone();
        blocking(move || {
            let dir = s.dir.blob_dir(Algorithm::Sha256);
            ctx(stdfs::read_dir(&dir).map(drop), "list", &dir)?;
            s.dir.check_writable()
        })
        .await
    }

    /// Opens (creating if needed) the store at `root`, checks that it is writable, and removes
    /// temp files left by writers that died (their flock is gone).
    pub async fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let store = Store::at(root.into());
        let s = store.clone();
        blocking(move || {
            let blob_dirs = Algorithm::ALL.map(|a| s.dir.blob_dir(a));
            let others = [
                s.dir.root.clone(),
                s.dir.tmp_dir(),
                s.dir.repositories_dir(),
                s.dir.layer_cache_dir(),
            ];
            for dir in others.into_iter().chain(blob_dirs) {
                ctx(stdfs::create_dir_all(&dir), "create store directory", &dir)?;
            }
            s.dir.remove_stale_temp_files()?;
            // Prove we can write here now, rather than failing after packing gigabytes.
            s.dir.check_writable()
        })
        .await?;
        Ok(store)
    }

    /// Opens the store at `root` for reading only: nothing is created, cleaned or written.
    /// A folder that is not a store (a typo) is an error, not a new empty store.
    pub async fn open_existing(root: impl Into<PathBuf>) -> Result<Store> {
        let store = Store::at(root.into());
        let blobs = store.dir.root.join("blobs");
        match tokio::fs::metadata(&blobs).await {
            Ok(m) if m.is_dir() => Ok(store),
            Ok(_) => Err(StoreError::NotAStore(store.dir.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotAStore(store.dir.root))
            }
            Err(e) => ctx(Err(e), "open store", &blobs),
        }
    }

    pub fn root(&self) -> &Path {
        &self.dir.root
    }

    /// Where the blob named `digest` lives in a directory store (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.blob_path(digest)
    }
}

/// What identifies a file's current content without reading it: the file's device and inode
/// (replaced by another file?), its size and its modification time (written to?).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Nanoseconds since the epoch (negative before it).
    pub mtime_ns: i128,
}

impl FileStamp {
    pub fn of(meta: &stdfs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// The entries of `dir` whose names `parse` accepts, sorted; none if `dir` does not exist.
/// Other names are skipped: the store never writes them.
fn list_names<T: Ord>(dir: &Path, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    let entries = match stdfs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return ctx(Err(e), "list", dir),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = ctx(entry, "list", dir)?;
        if let Some(item) = entry.file_name().to_str().and_then(&parse) {
            out.push(item);
        }
    }
    out.sort();
    Ok(out)
}

/// A digest as a file name in a repository's folders: the hex alone for sha256 (as stores have
/// always had it), `<algorithm>-<hex>` for any other.
fn file_name(digest: &Digest) -> String {
    match digest.algorithm() {
        Algorithm::Sha256 => digest.hex().to_owned(),
        other => format!("{}-{}", other.name(), digest.hex()),
    }
}

/// The digest a `file_name` names; `None` for anything else.
fn parse_file_name(name: &str) -> Option<Digest> {
    match name.split_once('-') {
        Some((algorithm, hex)) => format!("{algorithm}:{hex}"),
        None => format!("sha256:{name}"),
    }
    .parse()
    .ok()
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    let d = ctx(stdfs::File::open(dir), "open directory", dir)?;
    ctx(d.sync_all(), "fsync directory", dir)
}

fn exists(path: &Path) -> Result<bool> {
    match stdfs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => ctx(Err(e), "stat", path),
    }
}

/// Creates an empty marker file and makes it durable; an existing one is touched (no
/// fsync: it was made durable when created).
fn create_durably(path: &Path) -> Result<()> {
    // Touched: made again means needed again (the age the collector reads).
    if gate::touch(path)? {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(path);
    create_dirs_durably(dir)?;
    // Links are empty: truncating one that appeared meanwhile changes nothing.
    ctx(stdfs::File::create(path), "create link", path)?;
    // Its creation time came from the kernel's coarse clock; the collector compares fine.
    gate::touch(path)?;
    sync_dir(dir)
}

/// `create_dir_all`, then an fsync of the parent of every folder it made, so that a crash
/// cannot lose a folder (and the links in it) whose creation was reported done.
fn create_dirs_durably(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !exists(at)? {
        missing.push(at);
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    ctx(stdfs::create_dir_all(dir), "create directory", dir)?;
    for made in missing.iter().rev() {
        if let Some(parent) = made.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Folders whose entries the collector removed in a batch: each is fsynced once at the end
/// (under the exclusive gate still), not once per file: a batch of 256 removals is then
/// milliseconds of writers waiting, not 256 fsyncs.
#[derive(Default)]
pub(crate) struct Dirty(std::collections::BTreeSet<PathBuf>);

impl Dirty {
    /// Removes a file, its folder's fsync left to `sync`; `false` if there was none.
    fn remove(&mut self, path: &Path) -> Result<bool> {
        match stdfs::remove_file(path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    self.0.insert(dir.to_owned());
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => ctx(Err(e), "remove", path),
        }
    }

    /// Makes the batch's removals durable.
    pub(crate) fn sync(self) -> Result<()> {
        self.0.iter().try_for_each(|dir| sync_dir(dir))
    }
}

/// Removes a file and makes the removal durable; `false` if there was none.
fn remove_durably(path: &Path, dir: &Path) -> Result<bool> {
    match stdfs::remove_file(path) {
        Ok(()) => sync_dir(dir).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => ctx(Err(e), "remove", path),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub async fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).await.expect("open");
        (dir, store)
    }

    pub fn files_in(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = stdfs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn open_removes_dead_temp_files_but_not_live_ones() {
        let (_d, store) = fresh().await;
        // A live writer: its flock must protect it from a concurrent open.
        let mut live = store.new_blob().await.expect("new");
        live.write_all(b"in progress").await.expect("write");
        // A crashed writer's leftover: a temp file nobody holds a lock on.
        let dead = store.dir.tmp_dir().join("blob-dead");
        stdfs::write(&dead, b"half").expect("write");

        // A file under the unlocked name: young, its writer may be about to lock it; old, dead.
        let young = store.dir.tmp_dir().join(format!("{UNLOCKED_PREFIX}young"));
        stdfs::write(&young, b"").expect("write");
        let old = store.dir.tmp_dir().join(format!("{UNLOCKED_PREFIX}old"));
        stdfs::File::create(&old)
            .and_then(|f| f.set_modified(std::time::SystemTime::now() - 2 * UNLOCKED_GRACE))
            .expect("age file");

        let reopened = Store::open(store.root()).await.expect("reopen");
        assert!(!dead.exists(), "stale temp file survived open");
        assert!(!old.exists(), "old unlocked temp file survived open");
        assert!(young.exists(), "young unlocked temp file was removed");
        stdfs::remove_file(&young).expect("remove");
        assert_eq!(
            files_in(&store.dir.tmp_dir()).len(),
            1,
            "live temp file was removed"
        );
        let (digest, _) = live.commit().await.expect("commit after concurrent open");
        reopened.verify(&digest).await.expect("verify");
    }

    #[tokio::test]
    async fn open_existing_refuses_what_is_not_a_store_and_creates_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let typo = dir.path().join("typo");
        let err = Store::open_existing(&typo).await.expect_err("no store");
        assert!(
            err.to_string().contains("is not a quinistry store"),
            "{err}"
        );
        assert!(
            !typo.exists(),
            "a read-only open created {}",
            typo.display()
        );
        let err = Store::open_existing(dir.path())
            .await
            .expect_err("empty dir");
        assert!(matches!(err, StoreError::NotAStore(_)), "{err}");
        let store = Store::open(dir.path().join("s")).await.expect("open");
        let d = store.put(b"x").await.expect("put");
        let existing = Store::open_existing(store.root()).await.expect("a store");
        existing.verify(&d).await.expect("verify");
    }

    #[tokio::test]
    async fn open_fails_clearly_when_root_is_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        stdfs::write(&file, b"x").expect("write");
        let err = Store::open(file.join("store"))
            .await
            .expect_err("not a dir");
        let msg = err.to_string();
        assert!(msg.contains("cannot create store directory"), "{msg}");
        assert!(msg.contains(&file.display().to_string()), "{msg}");
    }
}
