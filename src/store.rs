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

use std::fs as stdfs;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

use crate::digest::{Algorithm, Digest, DigestError, Hasher, HashingWriter};
use crate::reference::{Name, Tag};

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
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches an action and a path to an I/O error.
fn ctx<T>(r: io::Result<T>, action: &'static str, path: &Path) -> Result<T> {
    r.map_err(|source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    })
}

/// Runs blocking file-system work (fsync, rename, directory scans) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        // Only a panic in `f` gets here; report it rather than propagate the panic.
        Err(e) => ctx(Err(io::Error::other(e)), "finish store task", Path::new("")),
    }
}

/// A handle on a store directory. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct Store {
    /// The store's root directory; every path below is derived from it here and nowhere else.
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `root`, checks that it is writable, and removes
    /// temp files left by writers that died (their flock is gone).
    pub async fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let store = Store { root: root.into() };
        let s = store.clone();
        blocking(move || {
            let blob_dirs = Algorithm::ALL.map(|a| s.blob_dir(a));
            let others = [
                s.root.clone(),
                s.tmp_dir(),
                s.repositories_dir(),
                s.layer_cache_dir(),
            ];
            for dir in others.into_iter().chain(blob_dirs) {
                ctx(stdfs::create_dir_all(&dir), "create store directory", &dir)?;
            }
            s.remove_stale_temp_files()?;
            // Prove we can write here now, rather than failing after packing gigabytes.
            let probe = ctx(
                tempfile::Builder::new()
                    .prefix("probe-")
                    .tempfile_in(s.tmp_dir()),
                "write to store directory",
                &s.tmp_dir(),
            )?;
            drop(probe);
            Ok(())
        })
        .await?;
        Ok(store)
    }

    /// Opens the store at `root` for reading only: nothing is created, cleaned or written.
    /// A folder that is not a store (a typo) is an error, not a new empty store.
    pub async fn open_existing(root: impl Into<PathBuf>) -> Result<Store> {
        let store = Store { root: root.into() };
        let blobs = store.root.join("blobs");
        match tokio::fs::metadata(&blobs).await {
            Ok(m) if m.is_dir() => Ok(store),
            Ok(_) => Err(StoreError::NotAStore(store.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotAStore(store.root)),
            Err(e) => ctx(Err(e), "open store", &blobs),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self, algorithm: Algorithm) -> PathBuf {
        self.root.join("blobs").join(algorithm.name())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn repositories_dir(&self) -> PathBuf {
        self.root.join("repositories")
    }

    /// Where the blob named `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        // Digest's hex is validated lowercase hex of fixed length: a safe file name.
        self.blob_dir(digest.algorithm()).join(digest.hex())
    }

    fn layer_cache_dir(&self) -> PathBuf {
        self.root.join("cache").join("layers")
    }

    /// A repository's folder. Name components never start with '_', so the `_tags`, `_blobs`,
    /// `_manifests` and `_referrers` folders in it cannot collide with a sub-repository.
    fn repository_dir(&self, name: &Name) -> PathBuf {
        self.repositories_dir().join(name.as_str())
    }

    fn tags_dir(&self, name: &Name) -> PathBuf {
        self.repository_dir(name).join("_tags")
    }

    fn tag_path(&self, name: &Name, tag: &Tag) -> PathBuf {
        self.tags_dir(name).join(tag.as_str())
    }

    /// Deletes temp files whose writer is gone. A live writer holds an exclusive flock on its
    /// temp file, so a file we can lock belongs to a process that died. A file still under
    /// its unlocked `new-` name is only removed once old: its writer may be between creating
    /// and locking it.
    fn remove_stale_temp_files(&self) -> Result<usize> {
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
    fn create_temp(&self, prefix: &str) -> Result<(stdfs::File, tempfile::TempPath)> {
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

    /// Starts writing a blob named by its sha256. Write the bytes, then `commit`; dropping
    /// the writer instead removes the temp file and stores nothing.
    pub async fn new_blob(&self) -> Result<BlobWriter> {
        self.new_blob_with(Algorithm::Sha256).await
    }

    /// `new_blob`, hashing with `algorithm` as the bytes arrive.
    pub async fn new_blob_with(&self, algorithm: Algorithm) -> Result<BlobWriter> {
        let s = self.clone();
        let (file, temp) = blocking(move || s.create_temp("blob-")).await?;
        Ok(BlobWriter {
            out: HashingWriter::with(
                BufWriter::with_capacity(WRITE_BUFFER, tokio::fs::File::from_std(file)),
                algorithm,
            ),
            temp,
            store: self.clone(),
        })
    }

    /// Stores a small document (config, manifest) and returns its digest. A stored copy with
    /// exactly these bytes is left alone (nothing is written); a damaged one is replaced.
    pub async fn put(&self, bytes: &[u8]) -> Result<Digest> {
        self.put_with(Algorithm::Sha256, bytes).await
    }

    /// `put`, naming the document by its `algorithm` digest.
    pub async fn put_with(&self, algorithm: Algorithm, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(algorithm, bytes);
        let path = self.blob_path(&digest);
        match tokio::fs::read(&path).await {
            Ok(stored) if stored == bytes => return Ok(digest),
            Ok(_) => tracing::warn!(%digest, "stored blob does not match its name; replacing it"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return ctx(Err(e), "read blob", &path),
        }
        let mut w = self.new_blob_with(algorithm).await?;
        let temp = w.temp.to_path_buf();
        ctx(w.write_all(bytes).await, "write", &temp)?;
        Ok(w.commit_replacing().await?.0)
    }

    /// A file holding exactly `bytes`, for packing what exists only in memory: named by its
    /// sha256 and never rewritten, so its stamp stays the same and the layer cache keeps
    /// hitting. Mode 0644 whatever the umask and mtime 0, as the tar entry should be anyway
    /// (a file of known content is settled from birth).
    pub async fn materialize(&self, bytes: &'static [u8]) -> Result<PathBuf> {
        let dest = self
            .root
            .join("cache")
            .join("files")
            .join(Digest::sha256_of(bytes).hex());
        let s = self.clone();
        blocking(move || {
            if let Ok(m) = stdfs::metadata(&dest)
                && m.len() == bytes.len() as u64
            {
                return Ok(dest);
            }
            let dir = dest.parent().unwrap_or(&dest).to_owned();
            create_dirs_durably(&dir)?;
            let (mut file, temp) = s.create_temp("file-")?;
            ctx(io::Write::write_all(&mut file, bytes), "write", &temp)?;
            use std::os::unix::fs::PermissionsExt;
            ctx(
                file.set_permissions(stdfs::Permissions::from_mode(0o644)),
                "chmod",
                &temp,
            )?;
            ctx(
                file.set_modified(std::time::UNIX_EPOCH),
                "set mtime of",
                &temp,
            )?;
            ctx(file.sync_all(), "fsync", &temp)?;
            ctx(temp.persist(&dest).map_err(|e| e.error), "write", &dest)?;
            sync_dir(&dir)?;
            Ok(dest)
        })
        .await
    }

    /// How the blob's file looks on disk now, or `None` if the store does not have it.
    pub async fn blob_stamp(&self, digest: &Digest) -> Result<Option<FileStamp>> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(FileStamp::of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => ctx(Err(e), "stat blob", &path),
        }
    }

    /// The layer-cache record stored under `key`, if there is one.
    pub async fn layer_record(&self, key: &Digest) -> Result<Option<Vec<u8>>> {
        let path = self.layer_cache_dir().join(key.hex());
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => ctx(Err(e), "read layer-cache record", &path),
        }
    }

    /// Stores the layer-cache record of `key`, replacing any, atomically (temp file, rename).
    /// Not fsynced: a record lost in a crash costs one repack, and a torn one reads as none.
    pub async fn set_layer_record(&self, key: &Digest, bytes: Vec<u8>) -> Result<()> {
        let s = self.clone();
        let dest = self.layer_cache_dir().join(key.hex());
        blocking(move || {
            let (mut file, temp) = s.create_temp("cache-")?;
            ctx(io::Write::write_all(&mut file, &bytes), "write", &temp)?;
            ctx(
                temp.persist(&dest).map_err(|e| e.error),
                "write layer-cache record",
                &dest,
            )
        })
        .await
    }

    pub async fn has_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blob_size(digest).await?.is_some())
    }

    /// The blob's size, or `None` if the store does not have it.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.blob_stamp(digest).await?.map(|s| s.size))
    }

    /// Opens a blob for streaming; gives the file and its size.
    pub async fn open_blob(&self, digest: &Digest) -> Result<(tokio::fs::File, u64)> {
        let path = self.blob_path(digest);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::BlobUnknown(digest.clone()));
            }
            Err(e) => return ctx(Err(e), "open blob", &path),
        };
        let len = ctx(file.metadata().await, "stat blob", &path)?.len();
        Ok((file, len))
    }

    /// Reads a whole blob into memory: only for small documents (configs, manifests).
    pub async fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.read_small_blob(digest, u64::MAX)
            .await?
            .ok_or_else(|| StoreError::BlobUnknown(digest.clone()))
    }

    /// Reads a blob into memory if it is at most `max` bytes; `None` if it is larger.
    pub async fn read_small_blob(&self, digest: &Digest, max: u64) -> Result<Option<Vec<u8>>> {
        let (mut file, len) = self.open_blob(digest).await?;
        if len > max {
            return Ok(None);
        }
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        ctx(
            file.read_to_end(&mut buf).await,
            "read blob",
            &self.blob_path(digest),
        )?;
        Ok(Some(buf))
    }

    /// Re-hashes a blob and checks it against its name.
    pub async fn verify(&self, digest: &Digest) -> Result<()> {
        let (file, _) = self.open_blob(digest).await?;
        let path = self.blob_path(digest);
        let actual = hash_file(file, digest.algorithm(), &path).await?;
        if &actual == digest {
            Ok(())
        } else {
            Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            })
        }
    }

    /// Every blob in the store. A file whose name is not a digest is reported as an error
    /// rather than skipped: something other than the store wrote it.
    pub async fn blobs(&self) -> Result<Vec<std::result::Result<Digest, PathBuf>>> {
        let dirs = Algorithm::ALL.map(|a| (a, self.blob_dir(a)));
        blocking(move || {
            let mut out = Vec::new();
            for (algorithm, dir) in dirs {
                let entries = match stdfs::read_dir(&dir) {
                    Ok(e) => e,
                    // A store made before sha512 existed has no folder for it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return ctx(Err(e), "list", &dir),
                };
                for entry in entries {
                    let entry = ctx(entry, "list", &dir)?;
                    let name = entry.file_name();
                    let parsed = name
                        .to_str()
                        .and_then(|hex| format!("{}:{hex}", algorithm.name()).parse().ok());
                    out.push(parsed.ok_or_else(|| entry.path()));
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    /// Points `name:tag` at `digest`, atomically and durably.
    pub async fn set_tag(&self, name: &Name, tag: &Tag, digest: &Digest) -> Result<()> {
        let s = self.clone();
        let dir = self.tags_dir(name);
        let dest = self.tag_path(name, tag);
        let body = format!("{digest}\n");
        blocking(move || {
            create_dirs_durably(&dir)?;
            let (mut file, temp) = s.create_temp("tag-")?;
            ctx(
                io::Write::write_all(&mut file, body.as_bytes()),
                "write",
                &temp,
            )?;
            ctx(file.sync_all(), "fsync", &temp)?;
            ctx(temp.persist(&dest).map_err(|e| e.error), "write tag", &dest)?;
            sync_dir(&dir)
        })
        .await
    }

    /// The manifest digest `name:tag` points at, if the tag exists.
    pub async fn tag(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>> {
        let path = self.tag_path(name, tag);
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return ctx(Err(e), "read tag", &path),
        };
        text.trim_end()
            .parse()
            .map(Some)
            .map_err(|source| StoreError::CorruptTag { path, source })
    }

    /// Whether `name` is a repository: something was tagged, pushed or linked into it.
    pub async fn has_repository(&self, name: &Name) -> Result<bool> {
        let dir = self.repository_dir(name);
        blocking(move || is_repository(&dir)).await
    }

    /// Every repository (a folder under `repositories/` whose `_tags`, `_blobs` or
    /// `_manifests` holds something), sorted by name.
    /// Folders whose path is not a valid name are skipped: the store never creates them.
    pub async fn repositories(&self) -> Result<Vec<Name>> {
        let root = self.repositories_dir();
        blocking(move || {
            let mut names = Vec::new();
            let mut pending = vec![(root.clone(), String::new())];
            while let Some((dir, prefix)) = pending.pop() {
                for entry in ctx(stdfs::read_dir(&dir), "list", &dir)? {
                    let entry = ctx(entry, "list", &dir)?;
                    // file_type does not follow symlinks: a link cannot lead the walk elsewhere.
                    if !ctx(entry.file_type(), "stat", &entry.path())?.is_dir() {
                        continue;
                    }
                    let Some(component) = entry.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if REPOSITORY_MARKERS.contains(&component.as_str()) {
                        // A folder with several markers is listed once (dedup below).
                        if let Ok(name) = prefix.parse::<Name>()
                            && !is_empty_dir(&entry.path())?
                        {
                            names.push(name);
                        }
                    } else if !component.starts_with('_') {
                        let path = if prefix.is_empty() {
                            component
                        } else {
                            format!("{prefix}/{component}")
                        };
                        pending.push((entry.path(), path));
                    }
                }
            }
            names.sort();
            names.dedup();
            Ok(names)
        })
        .await
    }

    /// Removes `name:tag`; `false` if there was no such tag.
    pub async fn delete_tag(&self, name: &Name, tag: &Tag) -> Result<bool> {
        let path = self.tag_path(name, tag);
        let dir = self.tags_dir(name);
        blocking(move || remove_durably(&path, &dir)).await
    }

    fn link_path(&self, name: &Name, kind: Link, digest: &Digest) -> PathBuf {
        self.repository_dir(name)
            .join(kind.dir())
            .join(file_name(digest))
    }

    fn referrers_dir(&self, name: &Name, subject: &Digest) -> PathBuf {
        self.repository_dir(name)
            .join("_referrers")
            .join(file_name(subject))
    }

    /// Makes `digest` part of repository `name`, durably. The blob must already be stored
    /// (callers link after committing, so a link never names missing bytes).
    pub async fn link(&self, name: &Name, kind: Link, digest: &Digest) -> Result<()> {
        let path = self.link_path(name, kind, digest);
        blocking(move || create_durably(&path)).await
    }

    /// Removes `digest` from repository `name`; `false` if it was not there. The bytes stay in
    /// `blobs/`: another repository may link them too.
    pub async fn unlink(&self, name: &Name, kind: Link, digest: &Digest) -> Result<bool> {
        let path = self.link_path(name, kind, digest);
        blocking(move || {
            let dir = path.parent().unwrap_or(&path).to_owned();
            remove_durably(&path, &dir)
        })
        .await
    }

    /// Whether repository `name` holds `digest` (and the store has its bytes).
    pub async fn is_linked(&self, name: &Name, kind: Link, digest: &Digest) -> Result<bool> {
        let link = self.link_path(name, kind, digest);
        let blob = self.blob_path(digest);
        blocking(move || Ok(exists(&link)? && exists(&blob)?)).await
    }

    /// Records that manifest `referrer` in `name` has `subject` (the referrers API's index).
    pub async fn add_referrer(
        &self,
        name: &Name,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let path = self.referrers_dir(name, subject).join(file_name(referrer));
        blocking(move || create_durably(&path)).await
    }

    pub async fn remove_referrer(
        &self,
        name: &Name,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let dir = self.referrers_dir(name, subject);
        let path = dir.join(file_name(referrer));
        blocking(move || remove_durably(&path, &dir).map(drop)).await
    }

    /// The manifests of `name` recorded as having `subject`, sorted.
    pub async fn referrers(&self, name: &Name, subject: &Digest) -> Result<Vec<Digest>> {
        let dir = self.referrers_dir(name, subject);
        blocking(move || list_names(&dir, parse_file_name)).await
    }

    /// The tags of a repository, sorted; empty if the repository has none.
    pub async fn tags(&self, name: &Name) -> Result<Vec<Tag>> {
        let dir = self.tags_dir(name);
        blocking(move || list_names(&dir, |s| s.parse().ok())).await
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

/// The `algorithm` digest of a file's bytes, read in `READ_BUFFER` pieces.
async fn hash_file(mut file: tokio::fs::File, algorithm: Algorithm, path: &Path) -> Result<Digest> {
    let mut hasher = Hasher::with(algorithm);
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = ctx(file.read(&mut buf).await, "read", path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish().0)
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    let d = ctx(stdfs::File::open(dir), "open directory", dir)?;
    ctx(d.sync_all(), "fsync directory", dir)
}

/// What a repository link says a digest is there as. Manifests are kept apart from other
/// blobs so that a layer cannot be fetched as a manifest, nor a manifest deleted as a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    /// A layer or config, served from `/blobs/`.
    Blob,
    /// A manifest or index, served from `/manifests/`.
    Manifest,
}

impl Link {
    fn dir(self) -> &'static str {
        match self {
            Link::Blob => "_blobs",
            Link::Manifest => "_manifests",
        }
    }
}

/// Folders whose presence makes their parent a repository.
const REPOSITORY_MARKERS: [&str; 3] = ["_tags", "_blobs", "_manifests"];

/// Whether `dir` is a repository: one of its marker folders holds something. A repository
/// whose last tag and links were deleted is gone (from the catalog too), though its empty
/// folders stay: removing them could race a concurrent link into them.
fn is_repository(dir: &Path) -> Result<bool> {
    for marker in REPOSITORY_MARKERS {
        if !is_empty_dir(&dir.join(marker))? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `dir` has no entries; a missing `dir` counts as empty.
fn is_empty_dir(dir: &Path) -> Result<bool> {
    match stdfs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(true),
        Err(e) => ctx(Err(e), "list", dir),
    }
}

fn exists(path: &Path) -> Result<bool> {
    match stdfs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => ctx(Err(e), "stat", path),
    }
}

/// Creates an empty marker file and makes it durable; an existing one is left alone (no
/// fsync: it was made durable when created).
fn create_durably(path: &Path) -> Result<()> {
    if exists(path)? {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(path);
    create_dirs_durably(dir)?;
    // Links are empty: truncating one that appeared meanwhile changes nothing.
    ctx(stdfs::File::create(path), "create link", path)?;
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

/// Removes a file and makes the removal durable; `false` if there was none.
fn remove_durably(path: &Path, dir: &Path) -> Result<bool> {
    match stdfs::remove_file(path) {
        Ok(()) => sync_dir(dir).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => ctx(Err(e), "remove", path),
    }
}

/// A blob being written: bytes go to a locked temp file and are hashed on the way. `commit`
/// names it by its digest; dropping it without commit removes the temp file.
pub struct BlobWriter {
    /// Buffered file, hashed as bytes reach it (the digest is of exactly what was written).
    out: HashingWriter<BufWriter<tokio::fs::File>>,
    /// The temp file's path; deleting it on drop is what makes an abandoned write vanish.
    temp: tempfile::TempPath,
    /// Where to commit.
    store: Store,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.out.written()
    }

    /// Flushes, fsyncs and renames the temp file to its digest. If the store already has that
    /// blob, the new copy is dropped. Returns the digest and size.
    pub async fn commit(self) -> Result<(Digest, u64)> {
        self.commit_inner(None, false).await
    }

    /// Like `commit`, but the new copy replaces a stored one: for when the stored file is
    /// known or suspected to be damaged. Readers that have the old file open keep reading it.
    pub async fn commit_replacing(self) -> Result<(Digest, u64)> {
        self.commit_inner(None, true).await
    }

    /// Like `commit`, but stores nothing unless the content has digest `expected`, and names
    /// it by that digest. The bytes were hashed as they came with the writer's algorithm; a
    /// digest of another algorithm costs one read of the temp file.
    pub async fn commit_expecting(self, expected: &Digest) -> Result<(Digest, u64)> {
        self.commit_inner(Some(expected), false).await
    }

    async fn commit_inner(
        mut self,
        expected: Option<&Digest>,
        replace: bool,
    ) -> Result<(Digest, u64)> {
        let temp_path = self.temp.to_path_buf();
        ctx(self.out.flush().await, "write", &temp_path)?;
        let (buffered, mut digest, len) = self.out.into_parts();
        if let Some(expected) = expected
            && expected.algorithm() != digest.algorithm()
        {
            tracing::debug!(
                algorithm = expected.algorithm().name(),
                bytes = len,
                "re-reading an upload to hash it with the algorithm its digest names"
            );
            let reread = ctx(tokio::fs::File::open(&temp_path).await, "open", &temp_path)?;
            digest = hash_file(reread, expected.algorithm(), &temp_path).await?;
        }
        if let Some(expected) = expected
            && expected != &digest
        {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
        let file = buffered.into_inner().into_std().await;
        let dest = self.store.blob_path(&digest);
        let temp = self.temp;
        let dir = self.store.blob_dir(digest.algorithm());
        blocking(move || {
            if !replace && dest.exists() {
                return Ok(()); // dedupe: `temp` is dropped, which deletes the new copy
            }
            ctx(file.sync_all(), "fsync", &temp_path)?;
            ctx(
                temp.persist(&dest).map_err(|e| e.error),
                "commit blob",
                &dest,
            )?;
            sync_dir(&dir)
        })
        .await?;
        Ok((digest, len))
    }
}

impl AsyncWrite for BlobWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.out).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.out).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Shutdown is commit's job; here it only flushes (an encoder above us calls this).
        Pin::new(&mut self.out).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).await.expect("open");
        (dir, store)
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = stdfs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn put_names_blobs_by_digest_and_dedupes() {
        let (_d, store) = fresh().await;
        let a = store.put(b"hello").await.expect("put");
        assert_eq!(a, Digest::sha256_of(b"hello"));
        assert_eq!(stdfs::read(store.blob_path(&a)).expect("read"), b"hello");
        let again = store.put(b"hello").await.expect("put again");
        assert_eq!(again, a);
        assert_eq!(files_in(&store.blob_dir(Algorithm::Sha256)).len(), 1);
        assert!(
            files_in(&store.tmp_dir()).is_empty(),
            "dedupe left a temp file"
        );
        assert_eq!(store.blob_size(&a).await.expect("size"), Some(5));
        assert_eq!(store.read_blob(&a).await.expect("read"), b"hello");
        store.verify(&a).await.expect("verify");
    }

    #[tokio::test]
    async fn dropped_writer_leaves_nothing() {
        let (_d, store) = fresh().await;
        let mut w = store.new_blob().await.expect("new");
        w.write_all(&[7u8; 3 << 20]).await.expect("write");
        assert_eq!(files_in(&store.tmp_dir()).len(), 1);
        drop(w);
        assert!(files_in(&store.tmp_dir()).is_empty());
        assert!(files_in(&store.blob_dir(Algorithm::Sha256)).is_empty());
    }

    #[tokio::test]
    async fn commit_expecting_rejects_other_content() {
        let (_d, store) = fresh().await;
        let mut w = store.new_blob().await.expect("new");
        w.write_all(b"actual").await.expect("write");
        let err = w
            .commit_expecting(&Digest::sha256_of(b"expected"))
            .await
            .expect_err("mismatch");
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(files_in(&store.blob_dir(Algorithm::Sha256)).is_empty());
        assert!(files_in(&store.tmp_dir()).is_empty());
    }

    #[tokio::test]
    async fn open_removes_dead_temp_files_but_not_live_ones() {
        let (_d, store) = fresh().await;
        // A live writer: its flock must protect it from a concurrent open.
        let mut live = store.new_blob().await.expect("new");
        live.write_all(b"in progress").await.expect("write");
        // A crashed writer's leftover: a temp file nobody holds a lock on.
        let dead = store.tmp_dir().join("blob-dead");
        stdfs::write(&dead, b"half").expect("write");

        // A file under the unlocked name: young, its writer may be about to lock it; old, dead.
        let young = store.tmp_dir().join(format!("{UNLOCKED_PREFIX}young"));
        stdfs::write(&young, b"").expect("write");
        let old = store.tmp_dir().join(format!("{UNLOCKED_PREFIX}old"));
        stdfs::File::create(&old)
            .and_then(|f| f.set_modified(std::time::SystemTime::now() - 2 * UNLOCKED_GRACE))
            .expect("age file");

        let reopened = Store::open(store.root()).await.expect("reopen");
        assert!(!dead.exists(), "stale temp file survived open");
        assert!(!old.exists(), "old unlocked temp file survived open");
        assert!(young.exists(), "young unlocked temp file was removed");
        stdfs::remove_file(&young).expect("remove");
        assert_eq!(
            files_in(&store.tmp_dir()).len(),
            1,
            "live temp file was removed"
        );
        let (digest, _) = live.commit().await.expect("commit after concurrent open");
        reopened.verify(&digest).await.expect("verify");
    }

    #[tokio::test]
    async fn verify_detects_corruption() {
        let (_d, store) = fresh().await;
        let d = store.put(b"precious").await.expect("put");
        stdfs::write(store.blob_path(&d), b"tampered").expect("tamper");
        let err = store.verify(&d).await.expect_err("corrupt");
        assert!(err.to_string().contains(&d.to_string()), "{err}");
        let missing = Digest::sha256_of(b"absent");
        assert!(matches!(
            store.verify(&missing).await,
            Err(StoreError::BlobUnknown(_))
        ));
    }

    #[tokio::test]
    async fn tags_survive_reopen_and_overwrite_atomically() {
        let (_d, store) = fresh().await;
        let name: Name = "a/b".parse().expect("name");
        let (v1, v2): (Tag, Tag) = ("v1".parse().expect("tag"), "v2".parse().expect("tag"));
        let d1 = Digest::sha256_of(b"1");
        let d2 = Digest::sha256_of(b"2");
        store.set_tag(&name, &v1, &d1).await.expect("tag");
        store.set_tag(&name, &v2, &d1).await.expect("tag");
        store.set_tag(&name, &v2, &d2).await.expect("retag");

        let reopened = Store::open(store.root()).await.expect("reopen");
        assert_eq!(reopened.tag(&name, &v1).await.expect("get"), Some(d1));
        assert_eq!(reopened.tag(&name, &v2).await.expect("get"), Some(d2));
        assert_eq!(reopened.tags(&name).await.expect("list"), vec![v1, v2]);
        let other: Name = "a".parse().expect("name");
        assert_eq!(reopened.tags(&other).await.expect("list"), vec![]);
        assert!(files_in(&store.tmp_dir()).is_empty());
    }

    #[tokio::test]
    async fn repositories_are_listed_sorted_including_nested_names() {
        let (_d, store) = fresh().await;
        assert!(store.repositories().await.expect("list").is_empty());
        let latest: Tag = "latest".parse().expect("tag");
        for n in ["b", "a/b/c", "a", "a-b"] {
            let name: Name = n.parse().expect("name");
            store
                .set_tag(&name, &latest, &Digest::sha256_of(b"m"))
                .await
                .expect("tag");
        }
        // A folder that is not a repository (no _tags) and a stray symlink are not listed.
        stdfs::create_dir_all(store.repositories_dir().join("x/y")).expect("mkdir");
        std::os::unix::fs::symlink("/", store.repositories_dir().join("z")).expect("link");
        let names: Vec<String> = store
            .repositories()
            .await
            .expect("list")
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["a", "a-b", "a/b/c", "b"]);
        assert!(
            store
                .has_repository(&"a/b/c".parse().expect("n"))
                .await
                .expect("has")
        );
        assert!(
            !store
                .has_repository(&"a/b".parse().expect("n"))
                .await
                .expect("has")
        );
        assert!(
            !store
                .has_repository(&"x/y".parse().expect("n"))
                .await
                .expect("has")
        );
    }

    #[tokio::test]
    async fn links_scope_blobs_to_repositories_and_survive_reopen() {
        let (_d, store) = fresh().await;
        let (a, b): (Name, Name) = ("a/x".parse().expect("name"), "b".parse().expect("name"));
        let blob = store.put(b"bytes").await.expect("put");
        assert!(!store.has_repository(&a).await.expect("has"));
        store.link(&a, Link::Blob, &blob).await.expect("link");
        store.link(&a, Link::Blob, &blob).await.expect("link twice");
        assert!(store.has_repository(&a).await.expect("has"));
        assert!(
            store
                .is_linked(&a, Link::Blob, &blob)
                .await
                .expect("linked")
        );
        assert!(
            !store
                .is_linked(&a, Link::Manifest, &blob)
                .await
                .expect("kind")
        );
        assert!(
            !store
                .is_linked(&b, Link::Blob, &blob)
                .await
                .expect("other repo")
        );
        // A link to bytes the store lacks does not count.
        let gone = Digest::sha256_of(b"gone");
        store.link(&a, Link::Blob, &gone).await.expect("link");
        assert!(
            !store
                .is_linked(&a, Link::Blob, &gone)
                .await
                .expect("no bytes")
        );

        let referrer = Digest::sha256_of(b"referrer");
        store
            .add_referrer(&a, &blob, &referrer)
            .await
            .expect("referrer");
        let reopened = Store::open(store.root()).await.expect("reopen");
        assert!(
            reopened
                .is_linked(&a, Link::Blob, &blob)
                .await
                .expect("linked")
        );
        assert_eq!(
            reopened.referrers(&a, &blob).await.expect("list"),
            vec![referrer.clone()]
        );
        assert_eq!(
            reopened.repositories().await.expect("repos"),
            vec![a.clone()]
        );

        assert!(
            reopened
                .unlink(&a, Link::Blob, &blob)
                .await
                .expect("unlink")
        );
        assert!(!reopened.unlink(&a, Link::Blob, &blob).await.expect("again"));
        assert!(
            !reopened
                .is_linked(&a, Link::Blob, &blob)
                .await
                .expect("unlinked")
        );
        reopened.verify(&blob).await.expect("bytes stay");
        reopened
            .remove_referrer(&a, &blob, &referrer)
            .await
            .expect("remove");
        assert!(
            reopened
                .referrers(&a, &blob)
                .await
                .expect("list")
                .is_empty()
        );

        let v1: Tag = "v1".parse().expect("tag");
        reopened.set_tag(&b, &v1, &blob).await.expect("tag");
        assert!(reopened.delete_tag(&b, &v1).await.expect("delete"));
        assert!(!reopened.delete_tag(&b, &v1).await.expect("again"));
        assert_eq!(reopened.tag(&b, &v1).await.expect("get"), None);
    }

    #[tokio::test]
    async fn sha512_blobs_are_stored_verified_linked_and_listed_by_their_algorithm() {
        let (_d, store) = fresh().await;
        let doc = store
            .put_with(Algorithm::Sha512, b"doc")
            .await
            .expect("put");
        assert_eq!(doc, Digest::of(Algorithm::Sha512, b"doc"));
        assert_eq!(
            store.blob_path(&doc),
            store.root().join("blobs/sha512").join(doc.hex())
        );
        store.verify(&doc).await.expect("verify");

        // Hashed as sha256 while written, committed under a sha512 digest: one re-read.
        let mut w = store.new_blob().await.expect("new");
        w.write_all(b"layer bytes").await.expect("write");
        let wanted = Digest::of(Algorithm::Sha512, b"layer bytes");
        let (got, len) = w.commit_expecting(&wanted).await.expect("commit");
        assert_eq!((&got, len), (&wanted, 11));
        assert_eq!(
            stdfs::read(store.blob_path(&got)).expect("read"),
            b"layer bytes"
        );
        // The same with other bytes: refused, nothing stored.
        let mut w = store.new_blob().await.expect("new");
        w.write_all(b"other bytes").await.expect("write");
        let err = w.commit_expecting(&wanted).await.expect_err("mismatch");
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(files_in(&store.tmp_dir()).is_empty());

        let listed: Vec<Digest> = store
            .blobs()
            .await
            .expect("list")
            .into_iter()
            .map(|b| b.expect("digest"))
            .collect();
        assert!(listed.contains(&doc) && listed.contains(&got), "{listed:?}");

        let name: Name = "r".parse().expect("name");
        store.link(&name, Link::Blob, &got).await.expect("link");
        store.link(&name, Link::Manifest, &doc).await.expect("link");
        let referrer = store.put(b"referrer").await.expect("put");
        store
            .add_referrer(&name, &doc, &referrer)
            .await
            .expect("referrer");
        let also512 = store.put_with(Algorithm::Sha512, b"r2").await.expect("put");
        store
            .add_referrer(&name, &doc, &also512)
            .await
            .expect("referrer");
        assert!(
            store
                .repository_dir(&name)
                .join("_blobs")
                .join(format!("sha512-{}", got.hex()))
                .exists()
        );
        let reopened = Store::open(store.root()).await.expect("reopen");
        assert!(
            reopened
                .is_linked(&name, Link::Blob, &got)
                .await
                .expect("linked")
        );
        assert!(
            reopened
                .is_linked(&name, Link::Manifest, &doc)
                .await
                .expect("linked")
        );
        // The sha256 digest of the same bytes is another name, not linked.
        let same_bytes = Digest::sha256_of(b"layer bytes");
        assert!(
            !reopened
                .is_linked(&name, Link::Blob, &same_bytes)
                .await
                .expect("not")
        );
        let mut want = vec![referrer, also512];
        want.sort();
        assert_eq!(reopened.referrers(&name, &doc).await.expect("list"), want);
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
