//! A shared store's blob writes and reads (see the module above): a `BlobWriter` into a multipart
//! upload, upload sessions suspended between requests and resumed on any replica, the
//! commit that checks the digest and copies the upload to its digest key, and streams and
//! presigned URLs for reads.

use std::io;
use std::pin::Pin;

use tokio::io::AsyncWriteExt;

use crate::digest::HashingWriter;
use crate::digest::{Algorithm, Digest, Hasher};
use crate::store::blobs::Sink;
use crate::store::{BlobWriter, ctx};
use crate::store::{Result, Store, StoreError};

impl Store {
    /// Goes on with a shared store's upload that `BlobWriter::suspend` left (in this process
    /// or another): new bytes go to a new part, hashed on from the saved state.
    pub fn resume_blob(&self, saved: &Suspended) -> Result<BlobWriter> {
        let Some(shared) = self.shared() else {
            return Err(StoreError::Unsupported(
                "only a shared store's uploads are suspended",
            ));
        };
        let hasher = crate::digest::Hasher::resume(&saved.hasher)
            .filter(|h| h.len() == saved.written)
            .ok_or_else(|| StoreError::Corrupt("an upload's saved hash state is damaged".into()))?;
        let key = shared.objects.upload_key();
        let writer = shared.objects.writer(key.clone());
        Ok(BlobWriter {
            out: HashingWriter::resume(
                Sink::Object(ObjectSink {
                    writer: Some(writer),
                    key,
                    store: self.clone(),
                    written: false,
                }),
                hasher,
            ),
            temp: None,
            parts: saved.parts.clone(),
            resumed_at: saved.written,
            store: self.clone(),
        })
    }

    /// Removes the parts of a shared store's upload that was cancelled, expired or committed
    /// (failures are logged: an orphaned part is garbage, not damage).
    pub async fn discard_parts(&self, parts: &[String]) {
        let Some(shared) = self.shared() else { return };
        for part in parts {
            if let Err(e) = shared.objects.delete(&part.as_str().into()).await {
                tracing::warn!(part, error = %e, "cannot remove an upload's part");
            }
        }
    }

    /// `len` bytes of a shared store's blob from `start`, streamed from object storage;
    /// `BlobUnknown` if it is not there.
    pub async fn blob_stream(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> Result<crate::store::ByteStream> {
        let Some(shared) = self.shared() else {
            return Err(StoreError::Unsupported(
                "a local store's blobs are opened as files",
            ));
        };
        let key = shared.objects.blob_key(digest);
        shared
            .objects
            .stream(&key, start, len)
            .await?
            .ok_or_else(|| StoreError::BlobUnknown(digest.clone()))
    }

    /// A short-lived URL from which a client can `method` (GET or HEAD) a shared store's
    /// blob straight from object storage; `None` for a local store.
    pub async fn presigned(
        &self,
        method: hyper::Method,
        digest: &Digest,
        valid: std::time::Duration,
    ) -> Result<Option<String>> {
        let Some(shared) = self.shared() else {
            return Ok(None);
        };
        let key = shared.objects.blob_key(digest);
        shared.objects.presign(method, &key, valid).await.map(Some)
    }
}

impl BlobWriter {
    /// Ends this request's share of a shared store's upload: what it wrote becomes one more
    /// part (completed, so nothing stays in memory), and the state to resume from is given
    /// back for the database. The parts then belong to that state: dropping it leaves them.
    pub async fn suspend(self) -> Result<Suspended> {
        let place = self.place();
        let hasher = self.out.hasher().save();
        let written = self.out.written();
        let mut parts = self.parts;
        let added = written > self.resumed_at;
        let Sink::Object(mut o) = self.out.into_parts().0 else {
            return ctx(Err(io::Error::other("not an upload")), "suspend", &place);
        };
        // Nothing new: no part (the sink's drop aborts the empty upload).
        if added && let Some(mut w) = o.writer.take() {
            if let Err(e) = w.shutdown().await {
                return Err(StoreError::Objects(format!(
                    "cannot complete upload part {place:?}: {e}"
                )));
            }
            parts.push(o.key.to_string());
        }
        Ok(Suspended {
            hasher,
            written,
            parts,
        })
    }

    /// `commit_inner` for a shared store: completes the upload, checks the digest, copies
    /// the object to its digest key and records the blob in the database (in that order:
    /// the database never names a blob whose object is not whole).
    pub(in crate::store) async fn commit_object(
        self,
        expected: Option<&Digest>,
        replace: bool,
    ) -> Result<(Digest, u64)> {
        let place = self.place();
        let store = self.store.clone();
        let (sink, mut digest, len) = self.out.into_parts();
        let Sink::Object(mut o) = sink else {
            return ctx(Err(io::Error::other("not an upload")), "commit", &place);
        };
        let Some(shared) = store.shared() else {
            return ctx(
                Err(io::Error::other("not a shared store")),
                "commit",
                &place,
            );
        };
        let mut parts: Vec<object_store::path::Path> =
            self.parts.iter().map(|p| p.as_str().into()).collect();
        if len == self.resumed_at && parts.len() == 1 {
            // The usual push: the bytes came in one earlier request (PATCH) and the PUT
            // brought none. That part is the upload; this writer's empty one is dropped
            // (aborted), and the part is removed with the session's parts after the commit.
            o = ObjectSink {
                writer: None,
                key: parts.remove(0),
                store: store.clone(),
                written: false,
            };
        } else if let Some(mut w) = o.writer.take() {
            if let Err(e) = w.shutdown().await {
                // A writer whose completion failed cannot be aborted (object_store panics):
                // its parts stay in storage as garbage, never under a digest key.
                return Err(StoreError::Objects(format!(
                    "cannot complete upload {place:?}: {e}"
                )));
            }
            o.written = true;
        }
        if !parts.is_empty() {
            // An upload written by several requests: its parts, then this one's bytes, are
            // put together into one object (read back once; hashed already).
            parts.push(o.key.clone());
            o = join_parts(&store, shared, &parts).await?;
        }
        if let Some(expected) = expected
            && expected.algorithm() != digest.algorithm()
        {
            let stream = shared
                .objects
                .stream(&o.key, 0, len)
                .await?
                .ok_or_else(|| {
                    StoreError::Objects(format!("upload {place:?} vanished before its commit"))
                })?;
            digest = hash_stream(stream, expected.algorithm(), expected).await?;
        }
        if let Some(expected) = expected
            && expected != &digest
        {
            // Removed before the answer, as a local temp file is: the client (or a test)
            // that sees the refusal finds nothing left behind.
            if shared.objects.delete(&o.key).await.is_ok() {
                o.written = false;
            }
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
        {
            // From the check to the record, no collector can remove this blob's object.
            let _blob = shared.meta.lock_digest(&digest).await?;
            if replace || shared.meta.blob_size(&digest).await?.is_none() {
                shared
                    .objects
                    .copy(&o.key, &shared.objects.blob_key(&digest))
                    .await?;
                store.added(len);
            }
            shared.meta.blob_committed(&digest, len).await?;
        }
        // The upload's object goes now; should that fail, the sink's drop tries again.
        if shared.objects.delete(&o.key).await.is_ok() {
            o.written = false;
        }
        Ok((digest, len))
    }
}

/// One object holding `parts` one after another, written as a new upload (an `ObjectSink`,
/// so that it is removed if the commit does not get to use it).
async fn join_parts(
    store: &Store,
    shared: &crate::store::Shared,
    parts: &[object_store::path::Path],
) -> Result<ObjectSink> {
    use futures_util::StreamExt;
    let key = shared.objects.upload_key();
    let mut writer = shared.objects.writer(key.clone());
    let failed = |e: &dyn std::fmt::Display| StoreError::Objects(format!("join upload parts: {e}"));
    for part in parts {
        let size = shared.objects.size(part).await?.unwrap_or(0);
        let mut stream = shared
            .objects
            .stream(part, 0, size)
            .await?
            .ok_or_else(|| StoreError::Objects(format!("part {part} of an upload is gone")))?;
        while let Some(piece) = stream.next().await {
            let written = match piece {
                Ok(piece) => writer.write_all(&piece).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                let _ = writer.abort().await;
                return Err(failed(&e));
            }
        }
    }
    writer.shutdown().await.map_err(|e| failed(&e))?;
    Ok(ObjectSink {
        writer: None,
        key,
        store: store.clone(),
        written: true,
    })
}

/// The `algorithm` digest of a stream's bytes (a shared store's blob); `what` names it in
/// errors.
pub(in crate::store) async fn hash_stream(
    mut stream: crate::store::ByteStream,
    algorithm: Algorithm,
    what: &Digest,
) -> Result<Digest> {
    use futures_util::StreamExt;
    let mut hasher = Hasher::with(algorithm);
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| StoreError::Objects(format!("read {what}: {e}")))?;
        hasher.update(&piece);
    }
    Ok(hasher.finish().0)
}

/// A shared store's upload between two requests, as the database keeps it: the running
/// hash, the bytes so far and the objects that hold them, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspended {
    pub hasher: Vec<u8>,
    pub written: u64,
    pub parts: Vec<String>,
}

impl Suspended {
    /// An upload with nothing written yet, hashing with `algorithm`.
    pub fn new(algorithm: Algorithm) -> Suspended {
        Suspended {
            hasher: crate::digest::Hasher::with(algorithm).save(),
            written: 0,
            parts: Vec::new(),
        }
    }
}

/// A multipart upload to a temporary key. Dropped before its blob was committed, it aborts
/// the upload (or removes the completed object), so nothing is left behind on purpose.
pub(in crate::store) struct ObjectSink {
    /// The upload; `None` once completed.
    pub(in crate::store) writer: Option<object_store::buffered::BufWriter>,
    pub(in crate::store) key: object_store::path::Path,
    pub(in crate::store) store: Store,
    /// Whether the upload completed and its object is still at `key`.
    pub(in crate::store) written: bool,
}

impl Drop for ObjectSink {
    fn drop(&mut self) {
        let (writer, written) = (self.writer.take(), self.written);
        if writer.is_none() && !written {
            return;
        }
        let (store, key) = (self.store.clone(), self.key.clone());
        let cleanup = async move {
            if let Some(mut writer) = writer
                && let Err(e) = writer.abort().await
            {
                tracing::warn!(key = %key, error = %e, "cannot abort an unfinished upload");
            }
            if written && let Some(shared) = store.shared() {
                let _ = shared.objects.delete(&key).await;
            }
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            drop(rt.spawn(cleanup));
        }
    }
}

/// The upload of an object sink, while it is open.
pub(in crate::store) fn upload(
    o: &mut ObjectSink,
) -> io::Result<Pin<&mut object_store::buffered::BufWriter>> {
    match &mut o.writer {
        Some(w) => Ok(Pin::new(w)),
        None => Err(io::Error::other("the blob's upload is finished")),
    }
}
