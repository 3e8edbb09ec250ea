//! Blobs: writing one (`BlobWriter`: a locked temp file, hashed as it is written, committed
//! by fsync and rename), small documents, reading, re-hashing, listing; and the layer-cache
//! records kept beside them. A shared store's side of the writer (a multipart upload,
//! sessions suspended between requests, the commit by server-side copy) is in `object/writer.rs`.

use std::fs as stdfs;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

use super::{
    FileStamp, Hold, READ_BUFFER, Result, Store, StoreError, WRITE_BUFFER, blocking,
    create_dirs_durably, ctx, sync_dir,
};
use crate::digest::{Algorithm, Digest, Hasher, HashingWriter};
pub use crate::store::object::writer::Suspended;
use crate::store::object::writer::{ObjectSink, hash_stream, upload};

impl Store {
    /// Starts writing a blob named by its sha256. Write the bytes, then `commit`; dropping
    /// the writer instead removes the temp file and stores nothing.
    pub async fn new_blob(&self) -> Result<BlobWriter> {
        self.new_blob_with(Algorithm::Sha256).await
    }

    /// `new_blob`, hashing with `algorithm` as the bytes arrive.
    pub async fn new_blob_with(&self, algorithm: Algorithm) -> Result<BlobWriter> {
        if self.is_shared() {
            // A multipart upload into object storage, hashed as it goes.
            return self.resume_blob(&Suspended::new(algorithm));
        }
        let s = self.clone();
        let (file, temp) = blocking(move || s.dir.create_temp("blob-")).await?;
        Ok(BlobWriter {
            out: HashingWriter::with(
                Sink::File {
                    buffered: None,
                    parked: Some(tokio::fs::File::from_std(file)),
                },
                algorithm,
            ),
            temp: Some(temp),
            parts: Vec::new(),
            resumed_at: 0,
            store: self.clone(),
        })
    }

    /// Stores a small document (config, manifest) and returns its digest. A stored copy with
    /// exactly these bytes is left alone (nothing is written); a damaged one is replaced.
    pub async fn put(&self, bytes: &[u8]) -> Result<Digest> {
        self.put_with(Algorithm::Sha256, bytes).await
    }

    /// `put`, holding the blob (see `BlobWriter::commit_held`).
    pub async fn put_held(&self, bytes: &[u8]) -> Result<(Digest, Hold)> {
        let mut w = self.new_blob().await?;
        ctx(w.write_all(bytes).await, "write", &w.place())?;
        let (digest, _, hold) = w.commit_held(false).await?;
        Ok((digest, hold))
    }

    /// `put`, naming the document by its `algorithm` digest.
    pub async fn put_with(&self, algorithm: Algorithm, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(algorithm, bytes);
        if let Some(shared) = self.shared() {
            // One PUT is atomic: the object appears whole or not at all.
            let len = bytes.len() as u64;
            // From the check to the record, no collector can remove this blob's object.
            let _blob = shared.meta.lock_digest(&digest).await?;
            if shared.meta.blob_size(&digest).await?.is_none() {
                let key = shared.objects.blob_key(&digest);
                let body = bytes::Bytes::copy_from_slice(bytes);
                shared.objects.put(&key, body).await?;
                self.added(len);
            }
            shared.meta.blob_committed(&digest, len).await?;
            return Ok(digest);
        }
        let path = self.blob_path(&digest);
        match tokio::fs::read(&path).await {
            Ok(stored) if stored == bytes => return Ok(digest),
            Ok(_) => tracing::warn!(%digest, "stored blob does not match its name; replacing it"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return ctx(Err(e), "read blob", &path),
        }
        let mut w = self.new_blob_with(algorithm).await?;
        let temp = w.place();
        ctx(w.write_all(bytes).await, "write", &temp)?;
        Ok(w.commit_replacing().await?.0)
    }

    /// A file holding exactly `bytes`, for packing what exists only in memory: named by its
    /// sha256 and never rewritten, so its stamp stays the same and the layer cache keeps
    /// hitting. Mode 0644 whatever the umask and mtime 0, as the tar entry should be anyway
    /// (a file of known content is settled from birth).
    pub async fn materialize(&self, bytes: impl Into<Vec<u8>>) -> Result<PathBuf> {
        let bytes: Vec<u8> = bytes.into();
        let dest = self
            .dir
            .root
            .join("cache")
            .join("files")
            .join(Digest::sha256_of(&bytes).hex());
        let s = self.clone();
        blocking(move || {
            if let Ok(m) = stdfs::metadata(&dest)
                && m.len() == bytes.len() as u64
            {
                return Ok(dest);
            }
            let dir = dest.parent().unwrap_or(&dest).to_owned();
            create_dirs_durably(&dir)?;
            let (mut file, temp) = s.dir.create_temp("file-")?;
            ctx(io::Write::write_all(&mut file, &bytes), "write", &temp)?;
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

    /// Remembers the media type a manifest without a `mediaType` of its own was pushed as,
    /// so it is served as that (a Docker schema 2 manifest stays one). Atomic; durable before
    /// the manifest is linked.
    pub async fn set_manifest_type(&self, digest: &Digest, media_type: &str) -> Result<()> {
        self.meta.set_manifest_type(digest, media_type).await
    }

    /// The media type recorded for a manifest without one of its own, if any.
    pub async fn manifest_type(&self, digest: &Digest) -> Result<Option<String>> {
        self.meta.manifest_type(digest).await
    }

    /// How the blob's file looks on disk now, or `None` if the store does not have it.
    pub async fn blob_stamp(&self, digest: &Digest) -> Result<Option<FileStamp>> {
        if let Some(shared) = self.shared() {
            // Shared blobs have no file; the size is what identifies them here.
            let size = shared.blob_size(digest).await?;
            return Ok(size.map(|size| FileStamp {
                dev: 0,
                ino: 0,
                size,
                mtime_ns: 0,
            }));
        }
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(FileStamp::of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => ctx(Err(e), "stat blob", &path),
        }
    }

    /// The layer-cache record stored under `key`, if there is one.
    pub async fn layer_record(&self, key: &Digest) -> Result<Option<Vec<u8>>> {
        self.meta.layer_record(key).await
    }

    /// Stores the layer-cache record of `key`, replacing any, atomically. Not durable: a
    /// record lost in a crash costs one repack, and a torn one reads as none.
    pub async fn set_layer_record(&self, key: &Digest, bytes: Vec<u8>) -> Result<()> {
        self.meta.set_layer_record(key, &bytes).await
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
        if self.is_shared() {
            return Err(StoreError::Unsupported(
                "a shared store's blobs are streamed (blob_stream), not opened as files",
            ));
        }
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

    /// A blob opened to be sent: a file of this machine (mapped or read by the caller), or
    /// one that lives elsewhere (read with `blob_stream`, or handed out with `presigned`);
    /// `BlobUnknown` if the store does not have it.
    pub async fn open_for_read(&self, digest: &Digest) -> Result<BlobRead> {
        if self.shared().is_some() {
            return match self.blob_size(digest).await? {
                Some(size) => Ok(BlobRead::Elsewhere { size }),
                None => Err(StoreError::BlobUnknown(digest.clone())),
            };
        }
        let (file, size) = self.open_blob(digest).await?;
        Ok(BlobRead::File { file, size })
    }

    /// Reads a whole blob into memory: only for small documents (configs, manifests).
    pub async fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.read_small_blob(digest, u64::MAX)
            .await?
            .ok_or_else(|| StoreError::BlobUnknown(digest.clone()))
    }

    /// A manifest's bytes and recorded media type, read on the calling thread (for the
    /// collector); `None` if it is larger than `max` or not in the store.
    pub(crate) fn read_manifest_now(
        &self,
        digest: &Digest,
        max: u64,
    ) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let bytes = match self.read_small_now(digest, max) {
            Ok(Some(bytes)) => bytes,
            Ok(None) | Err(StoreError::BlobUnknown(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some((bytes, self.dir.manifest_type_now(digest)?)))
    }

    /// Reads a blob into memory if it is at most `max` bytes; `None` if it is larger.
    pub async fn read_small_blob(&self, digest: &Digest, max: u64) -> Result<Option<Vec<u8>>> {
        if let Some(shared) = self.shared() {
            match shared.blob_size(digest).await? {
                None => return Err(StoreError::BlobUnknown(digest.clone())),
                Some(len) if len > max => return Ok(None),
                Some(_) => {}
            }
            let key = shared.objects.blob_key(digest);
            return match shared.objects.read(&key).await? {
                Some(bytes) => Ok(Some(bytes.to_vec())),
                None => Err(StoreError::BlobUnknown(digest.clone())),
            };
        }
        let (s, d) = (self.clone(), digest.clone());
        // One trip to a blocking thread, not one per open, stat and read.
        blocking(move || s.read_small_now(&d, max)).await
    }

    /// `read_small_blob`, on the calling thread.
    fn read_small_now(&self, digest: &Digest, max: u64) -> Result<Option<Vec<u8>>> {
        let path = self.blob_path(digest);
        let mut file = match stdfs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::BlobUnknown(digest.clone()));
            }
            Err(e) => return ctx(Err(e), "open blob", &path),
        };
        let len = ctx(file.metadata(), "stat blob", &path)?.len();
        if len > max {
            return Ok(None);
        }
        // Blobs never change: the size `fstat` gave is what there is to read, in one `read`
        // (std's `read_to_end` adds a stat, a seek and a read that finds the end).
        let mut buf = vec![0; usize::try_from(len).unwrap_or(0)];
        ctx(
            io::Read::read_exact(&mut file, &mut buf),
            "read blob",
            &path,
        )?;
        Ok(Some(buf))
    }

    /// Re-hashes a blob and checks it against its name.
    pub async fn verify(&self, digest: &Digest) -> Result<()> {
        let actual = if self.is_shared() {
            let size = self
                .blob_size(digest)
                .await?
                .ok_or_else(|| StoreError::BlobUnknown(digest.clone()))?;
            let stream = self.blob_stream(digest, 0, size).await?;
            hash_stream(stream, digest.algorithm(), digest).await?
        } else {
            let (file, _) = self.open_blob(digest).await?;
            let path = self.blob_path(digest);
            hash_file(file, digest.algorithm(), &path).await?
        };
        if &actual == digest {
            Ok(())
        } else {
            Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            })
        }
    }

    /// Removes blob `digest` (and the media-type record of a manifest) if it was last
    /// touched at or before `cutoff`: its size, or `None` if it was touched since (or is
    /// gone). With `dry_run`, only the size. For the collector, under the exclusive gate;
    /// links and tags are not checked.
    pub(crate) fn remove_blob_untouched(
        &self,
        digest: &Digest,
        cutoff: std::time::SystemTime,
        dry_run: bool,
        dirty: &mut super::Dirty,
    ) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        let meta = match stdfs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return ctx(Err(e), "stat", &path),
        };
        if super::gate::touched(&meta).is_none_or(|t| t > cutoff) {
            return Ok(None);
        }
        if dry_run {
            return Ok(Some(meta.len()));
        }
        if !dirty.remove(&path)? {
            return Ok(None);
        }
        dirty.remove(&self.dir.manifest_type_path(digest))?;
        self.removed(meta.len());
        Ok(Some(meta.len()))
    }

    /// The layer-cache records, by key, as stored (`pack::cache` reads them).
    pub async fn layer_cache_records(&self) -> Result<Vec<(Digest, Vec<u8>)>> {
        self.meta.layer_records().await
    }

    /// Removes the layer-cache record of `key` (not durably: a record that comes back in a
    /// crash is pruned again).
    pub async fn remove_layer_record(&self, key: &Digest) -> Result<()> {
        self.meta.remove_layer_record(key).await
    }

    /// Every blob in the store. A file whose name is not a digest is reported as an error
    /// rather than skipped: something other than the store wrote it.
    pub async fn blobs(&self) -> Result<Vec<std::result::Result<Digest, PathBuf>>> {
        if let Some(shared) = self.shared() {
            let digests = shared.meta.blobs().await?;
            return Ok(digests.into_iter().map(Ok).collect());
        }
        let dirs = Algorithm::ALL.map(|a| (a, self.dir.blob_dir(a)));
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

/// A blob opened to be sent (`Store::open_for_read`).
pub enum BlobRead {
    /// A file here: the caller maps or reads it.
    File { file: tokio::fs::File, size: u64 },
    /// Elsewhere (object storage): streamed, or handed out as a URL.
    Elsewhere { size: u64 },
}

/// A blob being written: bytes go to a locked temp file and are hashed on the way. `commit`
/// names it by its digest; dropping it without commit removes the temp file.
pub struct BlobWriter {
    /// The file, hashed as bytes reach it (the digest is of exactly what was written).
    pub(in crate::store) out: HashingWriter<Sink>,
    /// The temp file's path; deleting it on drop is what makes an abandoned write vanish.
    /// None for a shared store's blob (its `ObjectSink` cleans up after itself).
    pub(in crate::store) temp: Option<tempfile::TempPath>,
    /// A shared store's upload continued from an earlier request: the keys of the parts
    /// written before, in order (this writer's own bytes are the next part).
    pub(in crate::store) parts: Vec<String>,
    /// Bytes those parts hold: a writer that added none makes no part of its own.
    pub(in crate::store) resumed_at: u64,
    /// Where to commit.
    pub(in crate::store) store: Store,
}

/// Where a blob's bytes go while it is written.
pub(in crate::store) enum Sink {
    /// A local store's temp file, buffered while bytes arrive. `park` writes the buffer out
    /// and gives its memory back: an upload waiting for its next chunk holds a file, not a
    /// megabyte.
    File {
        /// The file behind a write buffer, while writing.
        buffered: Option<BufWriter<tokio::fs::File>>,
        /// The file alone, while parked (and before the first write).
        parked: Option<tokio::fs::File>,
    },
    /// A shared store's multipart upload under `uploads/`.
    Object(ObjectSink),
}

impl Sink {
    /// The buffered file, the buffer made if it was parked.
    fn writer(&mut self) -> io::Result<Pin<&mut BufWriter<tokio::fs::File>>> {
        let Sink::File { buffered, parked } = self else {
            return Err(io::Error::other("not a file"));
        };
        if buffered.is_none()
            && let Some(file) = parked.take()
        {
            *buffered = Some(BufWriter::with_capacity(WRITE_BUFFER, file));
        }
        match buffered {
            Some(b) => Ok(Pin::new(b)),
            None => Err(io::Error::other("the blob's temp file is gone")),
        }
    }

    /// The file, taken out of its buffer (call `flush` first).
    fn take_file(&mut self) -> Option<tokio::fs::File> {
        let Sink::File { buffered, parked } = self else {
            return None;
        };
        match buffered.take() {
            Some(b) => Some(b.into_inner()),
            None => parked.take(),
        }
    }
}

impl AsyncWrite for Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Sink::Object(o) = &mut *self {
            return match upload(o) {
                Ok(w) => w.poll_write(cx, buf),
                Err(e) => Poll::Ready(Err(e)),
            };
        }
        match self.writer() {
            Ok(w) => w.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut *self {
            Sink::File {
                buffered: Some(b), ..
            } => Pin::new(b).poll_flush(cx),
            Sink::File { buffered: None, .. } => Poll::Ready(Ok(())),
            Sink::Object(o) => match upload(o) {
                Ok(w) => w.poll_flush(cx),
                Err(_) => Poll::Ready(Ok(())),
            },
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.out.written()
    }

    /// The digest of the bytes written so far (the commit's, if nothing more is written).
    pub fn digest_so_far(&self) -> Digest {
        self.out.hasher().clone().finish().0
    }

    /// The temp file opened for reading, for readers that follow the writer (a mirror's
    /// download, read by clients as it arrives: what was flushed can be read); `None` on a
    /// shared store, whose blobs are written to object storage. The handle stays good after
    /// the commit renames the file.
    pub fn follow(&self) -> Option<io::Result<stdfs::File>> {
        self.temp.as_ref().map(stdfs::File::open)
    }

    /// Writes out what is buffered and frees the buffers (ours and tokio's), for a writer
    /// that will wait (an upload between chunks); the next write makes new ones.
    pub async fn park(&mut self) -> Result<()> {
        let path = self.place();
        if matches!(self.out.get_ref(), Sink::Object(_)) {
            // An upload's part buffer stays until the part is full (S3's 5 MiB minimum).
            return Ok(());
        }
        ctx(self.out.flush().await, "write", &path)?;
        let sink = self.out.get_mut();
        // tokio's File keeps a buffer of its own as big as the largest write it was given
        // (a megabyte here); a File made anew from the std one has none.
        if let Some(file) = sink.take_file() {
            *sink = Sink::File {
                buffered: None,
                parked: Some(tokio::fs::File::from_std(file.into_std().await)),
            };
        }
        Ok(())
    }

    /// Writes out and fsyncs what was written so far: done before taking a pin to commit
    /// (see `gate`), the commit's own fsync finds nothing left to write, and the pin, which
    /// a sweep waits for, is not held through seconds of writeback of a large blob.
    pub async fn sync(&mut self) -> Result<()> {
        self.park().await?;
        let path = self.place();
        if let Sink::File {
            parked: Some(file), ..
        } = self.out.get_mut()
        {
            ctx(file.sync_all().await, "fsync", &path)?;
        }
        Ok(())
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

    /// Commits (replacing a stored copy, with `replace`) and holds the blob (see `gate`):
    /// for a pack, which links its blobs only once the whole image is made.
    pub async fn commit_held(mut self, replace: bool) -> Result<(Digest, u64, Hold)> {
        self.sync().await?;
        let store = self.store.clone();
        let pin = store.pin().await?;
        let (digest, len) = self.commit_inner(None, replace).await?;
        match store.hold(&pin, &digest).await? {
            Some(hold) => Ok((digest, len, hold)),
            None => Err(StoreError::BlobUnknown(digest)),
        }
    }

    /// What a failed write to this writer is: a fault of the disk (`Io`, where a full one
    /// is told apart), or of object storage (`Objects`: worth a retry, maybe elsewhere).
    pub fn write_error(&self, e: io::Error) -> StoreError {
        match self.out.get_ref() {
            Sink::Object(_) => {
                StoreError::Objects(format!("write {}: {e}", self.place().display()))
            }
            Sink::File { .. } => StoreError::Io {
                action: "write upload",
                path: self.place(),
                source: e,
            },
        }
    }

    /// Where the bytes go, for messages: the temp file, or the upload's key.
    pub(in crate::store) fn place(&self) -> PathBuf {
        match (&self.temp, self.out.get_ref()) {
            (Some(t), _) => t.to_path_buf(),
            (None, Sink::Object(o)) => PathBuf::from(o.key.as_ref()),
            (None, Sink::File { .. }) => PathBuf::new(),
        }
    }

    async fn commit_inner(
        mut self,
        expected: Option<&Digest>,
        replace: bool,
    ) -> Result<(Digest, u64)> {
        if self.store.is_shared() {
            return self.commit_object(expected, replace).await;
        }
        let temp_path = self.place();
        ctx(self.out.flush().await, "write", &temp_path)?;
        let (mut sink, mut digest, len) = self.out.into_parts();
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
        let Some(file) = sink.take_file() else {
            return ctx(
                Err(io::Error::other("the blob's temp file is gone")),
                "commit",
                &temp_path,
            );
        };
        let file = file.into_std().await;
        let dest = self.store.blob_path(&digest);
        let Some(temp) = self.temp else {
            return ctx(Err(io::Error::other("no temp file")), "commit", &temp_path);
        };
        let dir = self.store.dir.blob_dir(digest.algorithm());
        let store = self.store.clone();
        let new = blocking(move || {
            // Touched either way: a blob pushed again is needed again (see `gate`).
            let existed = !replace && super::gate::touch(&dest)?;
            if existed {
                return Ok(false); // dedupe: `temp` is dropped, which deletes the new copy
            }
            let replaced = dest.exists();
            ctx(file.sync_all(), "fsync", &temp_path)?;
            ctx(
                temp.persist(&dest).map_err(|e| e.error),
                "commit blob",
                &dest,
            )?;
            // Its times are from when it was written, which may be before a pass began.
            super::gate::touch(&dest)?;
            sync_dir(&dir)?;
            Ok(!replaced)
        })
        .await?;
        if new {
            store.added(len);
        }
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
    use crate::reference::Name;
    use crate::store::Link;
    use crate::store::testing::*;

    #[tokio::test]
    async fn put_names_blobs_by_digest_and_dedupes() {
        let (_d, store) = fresh().await;
        let a = store.put(b"hello").await.expect("put");
        assert_eq!(a, Digest::sha256_of(b"hello"));
        assert_eq!(stdfs::read(store.blob_path(&a)).expect("read"), b"hello");
        let again = store.put(b"hello").await.expect("put again");
        assert_eq!(again, a);
        assert_eq!(files_in(&store.dir.blob_dir(Algorithm::Sha256)).len(), 1);
        assert!(
            files_in(&store.dir.tmp_dir()).is_empty(),
            "dedupe left a temp file"
        );
        assert_eq!(store.blob_size(&a).await.expect("size"), Some(5));
        assert_eq!(store.read_blob(&a).await.expect("read"), b"hello");
        store.verify(&a).await.expect("verify");
    }

    #[tokio::test]
    async fn a_parked_writer_holds_no_buffer_and_goes_on_where_it_stopped() {
        let (_d, store) = fresh().await;
        let mut w = store.new_blob().await.expect("new");
        let buffered = |w: &BlobWriter| {
            matches!(
                w.out.get_ref(),
                Sink::File {
                    buffered: Some(_),
                    ..
                }
            )
        };
        assert!(!buffered(&w), "a buffer before any write");
        w.write_all(b"first ").await.expect("write");
        assert!(buffered(&w));
        w.park().await.expect("park");
        assert!(!buffered(&w), "parked with a buffer");
        assert_eq!(
            stdfs::read(w.place()).expect("read"),
            b"first ",
            "park must write the buffer out"
        );
        w.write_all(b"second").await.expect("write");
        let (d, len) = w.commit().await.expect("commit");
        assert_eq!((d, len), (Digest::sha256_of(b"first second"), 12));
    }

    #[tokio::test]
    async fn dropped_writer_leaves_nothing() {
        let (_d, store) = fresh().await;
        let mut w = store.new_blob().await.expect("new");
        w.write_all(&[7u8; 3 << 20]).await.expect("write");
        assert_eq!(files_in(&store.dir.tmp_dir()).len(), 1);
        drop(w);
        assert!(files_in(&store.dir.tmp_dir()).is_empty());
        assert!(files_in(&store.dir.blob_dir(Algorithm::Sha256)).is_empty());
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
        assert!(files_in(&store.dir.blob_dir(Algorithm::Sha256)).is_empty());
        assert!(files_in(&store.dir.tmp_dir()).is_empty());
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
    async fn sha512_blobs_are_stored_verified_linked_and_listed_by_their_algorithm() {
        let (_d, store) = fresh().await;
        let pin = store.pin().await.expect("pin");
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
        assert!(files_in(&store.dir.tmp_dir()).is_empty());

        let listed: Vec<Digest> = store
            .blobs()
            .await
            .expect("list")
            .into_iter()
            .map(|b| b.expect("digest"))
            .collect();
        assert!(listed.contains(&doc) && listed.contains(&got), "{listed:?}");

        let name: Name = "r".parse().expect("name");
        store
            .link(&pin, &name, Link::Blob, &got)
            .await
            .expect("link");
        store
            .link(&pin, &name, Link::Manifest, &doc)
            .await
            .expect("link");
        let referrer = store.put(b"referrer").await.expect("put");
        store
            .add_referrer(&pin, &name, &doc, &referrer)
            .await
            .expect("referrer");
        let also512 = store.put_with(Algorithm::Sha512, b"r2").await.expect("put");
        store
            .add_referrer(&pin, &name, &doc, &also512)
            .await
            .expect("referrer");
        assert!(
            store
                .dir
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
}
