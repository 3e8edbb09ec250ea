//! Bytes by digest in object storage: the blobs of a store shared by several replicas, in
//! S3-compatible storage (`--store s3://BUCKET/PREFIX`: AWS, Garage, MinIO, ...) or Azure
//! Blob Storage (`--store az://CONTAINER/PREFIX`), both through object_store, whose clients
//! put, get, copy, list and presign alike; nothing below the client choice knows which.
//!
//! ```text
//! <prefix>/blobs/<algorithm>/<hex>    a blob, named by the digest of its bytes
//! <prefix>/uploads/<random>           a blob being written (a multipart upload until done)
//! ```
//!
//! A writer streams into a multipart upload under `uploads/` while it hashes; only once the
//! upload is complete and its digest checked is it copied to its `blobs/` key (a server-side
//! copy: no byte passes through us again), so no half-written object is ever under a digest
//! key (invariant 1). A writer dropped before that aborts its upload.
//!
//! Conditional writes are not used for anything: Garage accepts `If-None-Match` and ignores
//! it (and object_store's Azure and S3 differ on them). Whether a blob *exists* is the metadata database's answer (`postgres`), written after
//! the copy; an object under `blobs/` that the database does not name is garbage.
//!
//! A replica is given several endpoints (the nodes of the storage cluster, or gateways): a
//! request that fails on one for a reason of the connection is retried on the next, which
//! then becomes the first choice. Streaming writes too, step by step: a part that fails on
//! one endpoint is sent again through the next (`failover.rs`), so an upload in progress
//! survives the loss of the node it was writing through.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use object_store::signer::Signer;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig};

use super::StoreError;
use crate::digest::Digest;

mod failover;
pub(crate) mod writer;

/// Size of one part of a multipart upload (S3's smallest but for the last).
pub const PART_SIZE: usize = 5 << 20;
/// Parts of one upload in flight at once: with `PART_SIZE`, a writer holds at most about
/// (this + 1) × 5 MiB.
const PARTS_IN_FLIGHT: usize = 2;

/// Which kind of object storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// S3 or S3-compatible: region, credentials and endpoints from `AWS_*` (and
    /// `--s3-endpoint`).
    S3,
    /// Azure Blob Storage: the account and key from `AZURE_STORAGE_*`, or the Azurite
    /// emulator with `AZURE_STORAGE_USE_EMULATOR=true` (at `AZURITE_BLOB_STORAGE_URL`).
    Azure,
}

/// Where the blobs are, and how to reach them.
#[derive(Debug, Clone)]
pub struct Location {
    pub provider: Provider,
    /// The S3 bucket, or the Azure container.
    pub bucket: String,
    /// Keys start with this (no leading or trailing `/`); may be empty.
    pub prefix: String,
    /// The storage endpoints, tried in order (`AWS_ENDPOINT_URL` when none are given).
    pub endpoints: Vec<String>,
}

impl Location {
    /// Parses `s3://BUCKET[/PREFIX]` or `az://CONTAINER[/PREFIX]`; `None` if `url` is
    /// neither.
    pub fn parse(url: &str) -> Option<Result<Location, String>> {
        let (provider, rest) = match url.split_once("://") {
            Some(("s3", rest)) => (Provider::S3, rest),
            Some(("az", rest)) => (Provider::Azure, rest),
            _ => return None,
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            let scheme = &url[..url.find("://").unwrap_or(0)];
            return Some(Err(format!(
                "{url}: no bucket or container (expected {scheme}://NAME/PREFIX)"
            )));
        }
        Some(Ok(Location {
            provider,
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoints: Vec::new(),
        }))
    }

    /// The endpoints given, else those of `AWS_ENDPOINT_URL` (comma-separated), else none
    /// (AWS itself, from the region).
    fn endpoints(&self) -> Vec<Option<String>> {
        let mut list: Vec<Option<String>> = self.endpoints.iter().cloned().map(Some).collect();
        if list.is_empty()
            && let Ok(env) = std::env::var("AWS_ENDPOINT_URL")
        {
            list = env
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(|e| Some(e.to_owned()))
                .collect();
        }
        if list.is_empty() {
            list.push(None);
        }
        list
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.provider {
            Provider::S3 => "s3",
            Provider::Azure => "az",
        };
        match self.prefix.as_str() {
            "" => write!(f, "{scheme}://{}", self.bucket),
            prefix => write!(f, "{scheme}://{}/{prefix}", self.bucket),
        }
    }
}

/// The object storage of a shared store: one client per endpoint.
#[derive(Debug)]
pub struct Objects {
    pool: Arc<Pool>,
    prefix: String,
}

/// The endpoints, and which one is tried first.
#[derive(Debug)]
pub(crate) struct Pool {
    endpoints: Vec<Endpoint>,
    /// Index of the endpoint that answered last: where the next request goes first.
    preferred: AtomicUsize,
}

struct Endpoint {
    client: Arc<dyn ObjectStore>,
    /// The same client, for multipart uploads step by step (`failover.rs`).
    multipart: Arc<dyn MultipartStore>,
    /// The same client, as a signer of URLs.
    signer: Arc<dyn Signer>,
    /// For log lines.
    url: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).finish()
    }
}

/// How a client retries and waits: a dead node must cost seconds, not object_store's
/// default minutes of retries, before the next endpoint is tried.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
        ..RetryConfig::default()
    }
}

fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(300))
}

/// One S3 client per endpoint (`--s3-endpoint`, or `AWS_ENDPOINT_URL`, or AWS itself).
fn s3_endpoints(location: &Location) -> Result<Vec<Endpoint>, StoreError> {
    let mut endpoints = Vec::new();
    for endpoint in location.endpoints() {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_retry(retry())
            .with_client_options(client_options());
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            b = b.with_region("us-east-1");
        }
        let url = endpoint.clone().unwrap_or_else(|| "aws".to_owned());
        if let Some(e) = endpoint {
            b = b
                .with_allow_http(e.starts_with("http://"))
                .with_endpoint(e)
                .with_virtual_hosted_style_request(false);
        }
        let client = Arc::new(b.build().map_err(|e| {
            StoreError::Objects(format!("cannot set up object storage at {url}: {e}"))
        })?);
        endpoints.push(Endpoint {
            client: client.clone(),
            multipart: client.clone(),
            signer: client,
            url,
        });
    }
    Ok(endpoints)
}

/// The Azure client: the account and key from `AZURE_STORAGE_*`, or the emulator.
fn azure_endpoint(location: &Location) -> Result<Endpoint, StoreError> {
    if !location.endpoints.is_empty() {
        return Err(StoreError::Objects(
            "--s3-endpoint is for s3:// stores; an Azure account's address comes from AZURE_STORAGE_ACCOUNT_NAME (or AZURITE_BLOB_STORAGE_URL with AZURE_STORAGE_USE_EMULATOR=true)".into(),
        ));
    }
    let emulator = std::env::var("AZURE_STORAGE_USE_EMULATOR").is_ok_and(|v| v == "true");
    let url = match emulator {
        true => std::env::var("AZURITE_BLOB_STORAGE_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:10000".to_owned()),
        false => std::env::var("AZURE_STORAGE_ACCOUNT_NAME")
            .map(|a| format!("https://{a}.blob.core.windows.net"))
            .unwrap_or_else(|_| "azure".to_owned()),
    };
    let client = MicrosoftAzureBuilder::from_env()
        .with_container_name(&location.bucket)
        .with_retry(retry())
        .with_client_options(client_options().with_allow_http(emulator))
        .build()
        .map_err(|e| StoreError::Objects(format!("cannot set up object storage at {url}: {e}")))?;
    let client = Arc::new(client);
    Ok(Endpoint {
        client: client.clone(),
        multipart: client.clone(),
        signer: client,
        url,
    })
}

fn err(e: object_store::Error) -> StoreError {
    StoreError::Objects(e.to_string())
}

/// Whether a failure says the endpoint could not be used (worth trying another), rather than
/// an answer about the object.
fn connection_failure(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
            | object_store::Error::InvalidPath { .. }
    )
}

impl Pool {
    /// `op` on the preferred endpoint, then on each other one while the failure is of the
    /// connection; the endpoint that answers becomes the preferred one.
    async fn attempt_raw<'a, T, F, Fut>(&'a self, what: &str, op: F) -> object_store::Result<T>
    where
        F: Fn(&'a Endpoint) -> Fut,
        Fut: Future<Output = object_store::Result<T>> + 'a,
    {
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut last = None;
        for i in 0..n {
            let at = (first + i) % n;
            let endpoint = &self.endpoints[at];
            match op(endpoint).await {
                Ok(v) => {
                    if at != first {
                        self.preferred.store(at, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if connection_failure(&e) && i + 1 < n => {
                    tracing::warn!(endpoint = %endpoint.url, error = %e, "{what} failed; trying the next storage endpoint");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| object_store::Error::Generic {
            store: "quinistry",
            source: "no storage endpoint".into(),
        }))
    }

    /// The endpoint tried first.
    fn preferred(&self) -> &Endpoint {
        let at = self.preferred.load(Ordering::Relaxed) % self.endpoints.len().max(1);
        &self.endpoints[at]
    }
}

impl Objects {
    /// Clients for `location`, with the credentials of its provider's variables. Nothing is
    /// contacted yet ([`Objects::probe`] does).
    pub fn new(location: &Location) -> Result<Objects, StoreError> {
        // reqwest's rustls takes the process's provider: ring, the server's own (already
        // installed by another store of this process: then that one stays).
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let endpoints = match location.provider {
            Provider::S3 => s3_endpoints(location)?,
            Provider::Azure => vec![azure_endpoint(location)?],
        };
        Ok(Objects {
            pool: Arc::new(Pool {
                endpoints,
                preferred: AtomicUsize::new(0),
            }),
            prefix: location.prefix.clone(),
        })
    }

    fn key(&self, rest: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rest)
        } else {
            Key::from(format!("{}/{rest}", self.prefix))
        }
    }

    /// The key of blob `digest`.
    pub fn blob_key(&self, digest: &Digest) -> Key {
        self.key(&format!(
            "blobs/{}/{}",
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    /// A new key for a blob being written.
    pub fn upload_key(&self) -> Key {
        let mut raw = [0u8; 16];
        // A failed random source would only make keys collide; fall back on the clock.
        if getrandom::fill(&mut raw).is_err() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            raw = now.as_nanos().to_le_bytes();
        }
        self.key(&format!("uploads/{}", hex::encode(raw)))
    }

    /// Runs `op` on the preferred endpoint, then on each other one while the failure is of
    /// the connection; the endpoint that answers becomes the preferred one.
    async fn attempt<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<dyn ObjectStore>) -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        self.pool
            .attempt_raw(what, |e| op(e.client.clone()))
            .await
            .map_err(err)
    }

    /// The client a streaming write goes through: every endpoint, in turn as they fail.
    fn writer_client(&self) -> Arc<dyn ObjectStore> {
        Arc::new(failover::Failover(self.pool.clone()))
    }

    /// A multipart writer into `key`, with bounded buffers.
    pub fn writer(&self, key: Key) -> object_store::buffered::BufWriter {
        object_store::buffered::BufWriter::with_capacity(self.writer_client(), key, PART_SIZE)
            .with_max_concurrency(PARTS_IN_FLIGHT)
    }

    /// The size of the object at `key`, `None` if there is none.
    pub async fn size(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        self.attempt("HEAD", |c| {
            let k = key.clone();
            async move {
                match c.head(&k).await {
                    Ok(meta) => Ok(Some(meta.size)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// Streams `len` bytes of the object at `key` from `start`. `None` if there is none.
    pub async fn stream(
        &self,
        key: &Key,
        start: u64,
        len: u64,
    ) -> Result<Option<super::ByteStream>, StoreError> {
        use futures_util::TryStreamExt;
        if len == 0 {
            return Ok(Some(Box::pin(futures_util::stream::empty())));
        }
        let got = self
            .attempt("GET", |c| {
                let k = key.clone();
                async move {
                    let options = GetOptions {
                        range: Some(GetRange::Bounded(start..start + len)),
                        ..GetOptions::default()
                    };
                    match c.get_opts(&k, options).await {
                        Ok(r) => Ok(Some(r)),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        Ok(got.map(|r| -> super::ByteStream {
            Box::pin(r.into_stream().map_err(std::io::Error::other))
        }))
    }

    /// The whole object at `key` in memory (small documents); `None` if there is none.
    pub async fn read(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        self.attempt("GET", |c| {
            let k = key.clone();
            async move {
                match c.get(&k).await {
                    Ok(r) => r.bytes().await.map(Some),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// Stores `bytes` at `key` in one request (small documents).
    pub async fn put(&self, key: &Key, bytes: Bytes) -> Result<(), StoreError> {
        self.attempt("PUT", |c| {
            let (k, b) = (key.clone(), bytes.clone());
            async move { c.put(&k, b.into()).await.map(drop) }
        })
        .await
    }

    /// Copies `from` to `to` inside the storage (no bytes through us).
    pub async fn copy(&self, from: &Key, to: &Key) -> Result<(), StoreError> {
        self.attempt("COPY", |c| {
            let (f, t) = (from.clone(), to.clone());
            async move { c.copy(&f, &t).await }
        })
        .await
    }

    /// Removes the object at `key` (none there is fine).
    pub async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.attempt("DELETE", |c| {
            let k = key.clone();
            async move {
                match c.delete(&k).await {
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    other => other,
                }
            }
        })
        .await
    }

    /// A URL that lets its holder `method` (GET or HEAD) the object at `key` for `valid`.
    pub async fn presign(
        &self,
        method: hyper::Method,
        key: &Key,
        valid: Duration,
    ) -> Result<String, StoreError> {
        self.pool
            .preferred()
            .signer
            .signed_url(method, key, valid)
            .await
            .map(|u| u.to_string())
            .map_err(err)
    }

    /// The keys under `uploads/`: blobs being written, and parts of upload sessions.
    pub async fn uploads(&self) -> Result<Vec<String>, StoreError> {
        let key = self.key("uploads");
        self.attempt("LIST", |c| {
            let k = key.clone();
            async move {
                use futures_util::TryStreamExt;
                let listed: Vec<_> = c.list(Some(&k)).try_collect().await?;
                Ok(listed.into_iter().map(|m| m.location.to_string()).collect())
            }
        })
        .await
    }

    /// Whether the storage answers: a listing of one key under the prefix.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let key = self.key("blobs");
        self.attempt("LIST", |c| {
            let k = key.clone();
            async move {
                use futures_util::StreamExt;
                let mut listing = c.list(Some(&k));
                match listing.next().await {
                    Some(Err(e)) => Err(e),
                    _ => Ok(()),
                }
            }
        })
        .await
    }
}
