//! Writes that survive the loss of a storage node: an `ObjectStore` over every endpoint of a
//! replica, for the streaming writer (`BufWriter`). A put, and each step of a multipart
//! upload (create, each part, complete, abort), goes to the preferred endpoint and, if that
//! one cannot be reached, to the next, which becomes the preferred one for every request of
//! the process (reads included). A multipart upload's id is the storage cluster's, not a
//! node's, so an upload begun through one node takes its next parts through another. A retry
//! is safe: a part is named by its index, and the object by a key no one else writes.
//!
//! The other requests of the trait are not the writer's: they go to the preferred endpoint.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_core::stream::BoxStream;
use object_store::multipart::PartId;
use object_store::path::Path as Key;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result,
};
use object_store::{MultipartUpload, UploadPart};

use super::Pool;

/// Every endpoint of a replica as one store, for writes.
#[derive(Debug, Clone)]
pub(super) struct Failover(pub(super) Arc<Pool>);

impl std::fmt::Display for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Failover({} endpoints)", self.0.endpoints.len())
    }
}

#[async_trait]
impl ObjectStore for Failover {
    async fn put_opts(
        &self,
        key: &Key,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.0
            .attempt_raw("a put", |e| {
                let (payload, opts) = (payload.clone(), opts.clone());
                async move { e.client.put_opts(key, payload, opts).await }
            })
            .await
    }

    async fn put_multipart_opts(
        &self,
        key: &Key,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let id = self
            .0
            .attempt_raw("starting an upload", |e| {
                let opts = opts.clone();
                async move { e.multipart.create_multipart_opts(key, opts).await }
            })
            .await?;
        Ok(Box::new(Upload {
            pool: self.0.clone(),
            key: key.clone(),
            id,
            parts: Arc::new(Mutex::new(Vec::new())),
        }))
    }

    async fn get_opts(&self, key: &Key, options: GetOptions) -> Result<GetResult> {
        self.0.preferred().client.get_opts(key, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Key>>,
    ) -> BoxStream<'static, Result<Key>> {
        self.0.preferred().client.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Key>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.preferred().client.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Key>) -> Result<ListResult> {
        self.0.preferred().client.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Key, to: &Key, options: CopyOptions) -> Result<()> {
        self.0.preferred().client.copy_opts(from, to, options).await
    }
}

/// A multipart upload whose every step may go to another endpoint.
#[derive(Debug)]
struct Upload {
    pool: Arc<Pool>,
    key: Key,
    id: String,
    /// Each part's id once stored, by index.
    parts: Arc<Mutex<Vec<Option<PartId>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let index = {
            let mut parts = lock(&self.parts);
            parts.push(None);
            parts.len() - 1
        };
        let (pool, key, id, parts) = (
            self.pool.clone(),
            self.key.clone(),
            self.id.clone(),
            self.parts.clone(),
        );
        Box::pin(async move {
            let part = pool
                .attempt_raw("an upload's part", |e| {
                    let data = data.clone();
                    let (key, id) = (&key, &id);
                    async move { e.multipart.put_part(key, id, index, data).await }
                })
                .await?;
            if let Some(slot) = lock(&parts).get_mut(index) {
                *slot = Some(part);
            }
            Ok(())
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let parts: Option<Vec<PartId>> = lock(&self.parts).iter().cloned().collect();
        let Some(parts) = parts else {
            return Err(object_store::Error::Generic {
                store: "quinistry",
                source: "an upload completed before all its parts were stored".into(),
            });
        };
        let (key, id) = (&self.key, &self.id);
        self.pool
            .attempt_raw("completing an upload", |e| {
                let parts = parts.clone();
                async move { e.multipart.complete_multipart(key, id, parts).await }
            })
            .await
    }

    async fn abort(&mut self) -> Result<()> {
        let (key, id) = (&self.key, &self.id);
        self.pool
            .attempt_raw("aborting an upload", |e| async move {
                e.multipart.abort_multipart(key, id).await
            })
            .await
    }
}
