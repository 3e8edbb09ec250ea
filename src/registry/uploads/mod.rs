//! `/v2/<name>/blobs/uploads/...`: pushing blobs.
//!
//! | request | answer |
//! |---|---|
//! | `POST uploads/[?digest-algorithm=A]` | 202: a session (`Location`, `Docker-Upload-UUID`) hashing with A (default sha256) |
//! | `POST uploads/?digest=D` | 201: the body is the whole blob (monolithic) |
//! | `POST uploads/?mount=D&from=R` | 201 if repository R holds D, else 202 as a plain POST |
//! | `PATCH uploads/<id>` | 202: a chunk appended; `Content-Range` must start where the last ended (else 416) |
//! | `PUT uploads/<id>?digest=D` | 201: the last chunk (if any) appended, the blob committed |
//! | `GET uploads/<id>` | 204 with `Range: 0-<last byte>` |
//! | `DELETE uploads/<id>` | 204: cancelled, its temp file removed |
//!
//! A session is a store temp file fed in order and hashed as bytes arrive, so the blob is
//! never read back to be checked (unless the `PUT` names a digest of another algorithm than
//! the session was opened with: then it is read once); `PUT` compares the running digest
//! with `D` and commits (fsync, rename) only on a match. Sessions live in memory and hold their temp file's lock:
//! if the process dies, the next `Store::open` removes the file; if a client goes quiet for
//! `upload_timeout`, the sweeper drops the session and the file with it.

mod shared;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::Registry;
use super::body::{Body, RequestBody};
use super::errors::{Code, RegistryError};
use super::router::{UploadId, parse_digest};
use crate::digest::{Algorithm, Digest};
use crate::reference::Name;
use crate::store::{BlobWriter, Link, StoreError};

/// The live upload sessions.
pub struct Uploads {
    table: Mutex<Table>,
    /// A session receiving less than `MIN_PROGRESS` bytes in this long is dropped by `sweep`.
    timeout: Duration,
    /// Largest blob accepted, if limited.
    max_size: Option<u64>,
    /// Most sessions open at once, and per client address: each holds a file descriptor
    /// and a temp file.
    max_sessions: usize,
    max_per_client: usize,
}

/// The sessions, and how many each client address holds (or is opening: admitted, its temp
/// file being made).
#[derive(Default)]
struct Table {
    sessions: HashMap<UploadId, Arc<Slot>>,
    /// Admitted but not yet in `sessions`.
    opening: usize,
    per_client: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: &UploadId) -> Option<Arc<Slot>> {
        let slot = self.sessions.remove(id)?;
        self.release(slot.client);
        Some(slot)
    }

    fn release(&mut self, client: IpAddr) {
        if let Some(n) = self.per_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&client);
            }
        }
    }
}

/// A place taken under the caps for a session being opened; given back if it never opens.
struct Admission<'a> {
    uploads: &'a Uploads,
    client: IpAddr,
    /// Set once the session is in the table (its place is then the session's).
    opened: bool,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut table = self.uploads.table();
        table.opening -= 1;
        if !self.opened {
            table.release(self.client);
        }
    }
}

/// Bytes a session must receive per `timeout` to stay open: a client that trickles a byte
/// now and then does not keep a session (and its file) forever.
const MIN_PROGRESS: u64 = 64 << 10;

/// How long a client refused for having too many sessions is told to wait.
const RETRY_AFTER_S: u32 = 10;

/// One session. The async lock is held while a request feeds the session, so two requests
/// cannot interleave their bytes; `None` once the session has ended.
struct Slot {
    session: tokio::sync::Mutex<Option<Session>>,
    /// When the session last made progress: opened, or `MIN_PROGRESS` bytes received (checked
    /// without the async lock, so the sweeper never waits behind an upload in progress).
    touched: Mutex<Instant>,
    /// Bytes received since `touched`.
    progress: std::sync::atomic::AtomicU64,
    /// Set when the session is dropped while a request is feeding it: the request stops.
    cancelled: tokio_util::sync::CancellationToken,
    /// Who opened it, for the per-client cap.
    client: IpAddr,
}

impl Slot {
    /// A slot for one request alone (a shared store's session lives in the database): it
    /// only counts progress, for `watch`.
    fn transient() -> Slot {
        Slot {
            session: tokio::sync::Mutex::new(None),
            touched: Mutex::new(Instant::now()),
            progress: std::sync::atomic::AtomicU64::new(0),
            cancelled: tokio_util::sync::CancellationToken::new(),
            client: IpAddr::from([0, 0, 0, 0]),
        }
    }

    /// Cancels the slot once it made no progress for `timeout` (checked every `every`);
    /// never returns: run it beside the request that feeds the slot.
    async fn watch(&self, timeout: Duration, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let idle = self
                .touched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if idle >= timeout {
                self.cancelled.cancel();
            }
        }
    }

    /// Counts received bytes; enough of them move the session's idle clock.
    fn received(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let total = self.progress.fetch_add(n, Ordering::Relaxed) + n;
        if total >= MIN_PROGRESS {
            self.progress.store(0, Ordering::Relaxed);
            *self.touched.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

struct Session {
    /// Sessions belong to the repository they were opened in.
    name: Name,
    /// The temp file, hashing as it goes.
    writer: BlobWriter,
}

impl Uploads {
    pub fn new(
        timeout: Duration,
        max_size: Option<u64>,
        max_sessions: usize,
        max_per_client: usize,
    ) -> Uploads {
        Uploads {
            table: Mutex::new(Table::default()),
            timeout,
            max_size,
            max_sessions,
            max_per_client,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a new session under the caps (counted at once, so concurrent
    /// requests cannot all squeeze past them), or refuses: 429, to be retried later.
    fn admit(&self, client: IpAddr) -> Result<Admission<'_>, RegistryError> {
        let mut table = self.table();
        let theirs = table.per_client.get(&client).copied().unwrap_or(0);
        let open = table.sessions.len() + table.opening;
        let why = if open >= self.max_sessions {
            format!("{open} uploads are open, the most this registry takes at once")
        } else if theirs >= self.max_per_client {
            format!("this client has {theirs} uploads open, the most one client may")
        } else {
            table.opening += 1;
            *table.per_client.entry(client).or_default() += 1;
            return Ok(Admission {
                uploads: self,
                client,
                opened: false,
            });
        };
        Err(too_many(why))
    }

    fn insert(
        &self,
        name: Name,
        writer: BlobWriter,
        mut admission: Admission<'_>,
    ) -> Result<UploadId, RegistryError> {
        let client = admission.client;
        let id = UploadId::random().map_err(|e| {
            tracing::error!(error = %e, "cannot draw a random upload id");
            RegistryError::new(Code::Unknown, "internal error starting an upload")
        })?;
        let slot = Slot {
            session: tokio::sync::Mutex::new(Some(Session { name, writer })),
            touched: Mutex::new(Instant::now()),
            progress: std::sync::atomic::AtomicU64::new(0),
            cancelled: tokio_util::sync::CancellationToken::new(),
            client,
        };
        self.table().sessions.insert(id.clone(), Arc::new(slot));
        admission.opened = true;
        Ok(id)
    }

    fn get(&self, name: &Name, id: &UploadId) -> Result<Arc<Slot>, RegistryError> {
        self.table()
            .sessions
            .get(id)
            .cloned()
            .ok_or_else(|| upload_unknown(name, id))
    }

    fn remove(&self, id: &UploadId) {
        self.table().remove(id);
    }

    /// Drops sessions that made no progress for the timeout; their temp files go with them.
    /// One a request is still feeding (too slowly) is cancelled: the request ends, and with
    /// it the session.
    pub fn sweep(&self) {
        let mut table = self.table();
        let expired: Vec<UploadId> = table
            .sessions
            .iter()
            .filter(|(_, slot)| {
                slot.touched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .elapsed()
                    >= self.timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(slot) = table.remove(&id) {
                slot.cancelled.cancel();
                tracing::info!(session = id.as_str(), "upload expired");
            }
        }
    }

    /// How often `sweep` should run: often enough that a session outlives its timeout by at
    /// most a quarter of it (and at most a minute).
    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.table().sessions.len()
    }

    pub fn sweep_interval(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(60))
    }
}

/// A session taken for one request: the lock on it, and the means to end it.
struct Held<'a> {
    uploads: &'a Uploads,
    id: UploadId,
    slot: Arc<Slot>,
}

impl Held<'_> {
    async fn lock(&self) -> tokio::sync::MutexGuard<'_, Option<Session>> {
        self.slot.session.lock().await
    }

    /// Ends the session: nothing can reach it afterwards.
    fn end(&self, guard: &mut Option<Session>) -> Option<Session> {
        self.uploads.remove(&self.id);
        guard.take()
    }
}

/// `POST /v2/<name>/blobs/uploads/`.
pub async fn post(
    registry: &Registry,
    name: &Name,
    query: &Query,
    request: &HeaderMap,
    body: &mut RequestBody,
    client: IpAddr,
) -> Result<Response<Body>, RegistryError> {
    let uploads = registry.uploads()?;
    if let Some(mount) = &query.mount {
        let digest = parse_digest(mount)?;
        // A source that is no repository name cannot hold the blob: fall back to an upload,
        // as the spec says for any mount that cannot be done.
        let from = query.from.as_deref().and_then(|f| f.parse::<Name>().ok());
        if let Some(from) = from
            && registry.is_linked(&from, Link::Blob, &digest).await?
        {
            // The pin keeps a collector from removing the blob between the check and the
            // link; one that did before it shows as BlobUnknown, and an upload is asked for.
            let pin = registry.store().pin().await?;
            match registry.link(&pin, name, Link::Blob, &digest).await {
                Ok(()) => {
                    tracing::info!(%name, %from, %digest, "blob mounted");
                    return created(name, &digest);
                }
                Err(StoreError::BlobUnknown(_)) => registry.forget_link(&from, &digest),
                Err(e) => return Err(e.into()),
            }
        }
    }
    if let Some(digest) = &query.digest {
        let digest = parse_digest(digest)?;
        check_length_after(request, 0, uploads.max_size)?;
        let mut writer = registry.store().new_blob_with(digest.algorithm()).await?;
        receive(&mut writer, body, None, uploads.max_size, None).await?;
        return commit(registry, name, writer, &digest).await;
    }
    // The client may say which algorithm its digest will use, so the bytes are hashed with
    // it as they come instead of read again at the end.
    let algorithm = match &query.algorithm {
        None => Algorithm::Sha256,
        Some(a) => a.parse::<Algorithm>().map_err(|why| {
            RegistryError::new(Code::DigestInvalid, why)
                .detail(json!({ "digest-algorithm": super::router::truncate(a) }))
        })?,
    };
    if registry.store().is_shared() {
        return shared::open(registry, uploads, name, algorithm, client).await;
    }
    let admission = uploads.admit(client)?;
    let writer = registry.store().new_blob_with(algorithm).await?;
    let id = uploads.insert(name.clone(), writer, admission)?;
    accepted(name, &id, 0)
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: one more chunk.
pub async fn patch(
    registry: &Registry,
    name: &Name,
    id: &UploadId,
    request: &HeaderMap,
    body: &mut RequestBody,
) -> Result<Response<Body>, RegistryError> {
    let uploads = registry.uploads()?;
    if registry.store().is_shared() {
        return shared::patch(registry, uploads, name, id, request, body).await;
    }
    let held = hold(uploads, name, id)?;
    let mut guard = held.lock().await;
    let offset = feed(&held, &mut guard, name, id, request, body).await?;
    accepted(name, id, offset)
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=D`: the last chunk, if any, then commit.
pub async fn put(
    registry: &Registry,
    name: &Name,
    id: &UploadId,
    query: &Query,
    request: &HeaderMap,
    body: &mut RequestBody,
) -> Result<Response<Body>, RegistryError> {
    let uploads = registry.uploads()?;
    if registry.store().is_shared() {
        return shared::put(registry, uploads, name, id, query, request, body).await;
    }
    // Checked before the chunk is taken, so a client that forgot the digest can retry.
    let digest = closing_digest(query)?;
    let held = hold(uploads, name, id)?;
    let mut guard = held.lock().await;
    feed(&held, &mut guard, name, id, request, body).await?;
    let Some(session) = held.end(&mut guard) else {
        return Err(upload_unknown(name, id));
    };
    commit(registry, name, session.writer, &digest).await
}

/// `GET /v2/<name>/blobs/uploads/<id>`: how far the upload got.
pub async fn status(
    registry: &Registry,
    name: &Name,
    id: &UploadId,
) -> Result<Response<Body>, RegistryError> {
    if registry.store().is_shared() {
        registry.uploads()?;
        return shared::status(registry, name, id).await;
    }
    let held = hold(registry.uploads()?, name, id)?;
    let mut guard = held.lock().await;
    let offset = open(&mut guard, name, id)?.writer.written();
    let mut response = accepted(name, id, offset)?;
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`: cancel; the temp file is removed.
pub async fn cancel(
    registry: &Registry,
    name: &Name,
    id: &UploadId,
) -> Result<Response<Body>, RegistryError> {
    if registry.store().is_shared() {
        registry.uploads()?;
        return shared::cancel(registry, name, id).await;
    }
    let held = hold(registry.uploads()?, name, id)?;
    let mut guard = held.lock().await;
    open(&mut guard, name, id)?;
    drop(held.end(&mut guard));
    tracing::info!(%name, session = id.as_str(), "upload cancelled");
    Ok(super::empty(StatusCode::NO_CONTENT))
}

/// The `?digest=` a closing `PUT` must have (checked before its chunk is taken, so a client
/// that forgot it can retry).
fn closing_digest(query: &Query) -> Result<Digest, RegistryError> {
    match &query.digest {
        Some(d) => parse_digest(d),
        None => Err(RegistryError::new(
            Code::DigestInvalid,
            "closing an upload needs ?digest=<digest>",
        )),
    }
}

/// 429: a client over an upload cap; `Retry-After` says when to try again.
fn too_many(why: String) -> RegistryError {
    RegistryError::new(Code::TooManyRequests, why)
        .header(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S))
}

/// Ends a shared store's idle sessions (those in memory: `Uploads::sweep`).
pub async fn sweep_shared(registry: &Registry) {
    if let Some(uploads) = &registry.uploads
        && registry.store().is_shared()
    {
        shared::sweep(registry, uploads).await;
    }
}

/// The query parameters the upload endpoints read.
#[derive(Debug, Default)]
pub struct Query {
    pub digest: Option<String>,
    /// `digest-algorithm`: what the session should hash with.
    pub algorithm: Option<String>,
    pub mount: Option<String>,
    pub from: Option<String>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let mut q = Query::default();
        for (key, value) in super::query_pairs(query) {
            match key {
                "digest" => q.digest = Some(value),
                "digest-algorithm" => q.algorithm = Some(value),
                "mount" => q.mount = Some(value),
                "from" => q.from = Some(value),
                _ => {}
            }
        }
        q
    }
}

fn hold<'a>(uploads: &'a Uploads, name: &Name, id: &UploadId) -> Result<Held<'a>, RegistryError> {
    Ok(Held {
        uploads,
        id: id.clone(),
        slot: uploads.get(name, id)?,
    })
}

/// The session behind the lock, if it is still open and belongs to `name`.
fn open<'s>(
    guard: &'s mut Option<Session>,
    name: &Name,
    id: &UploadId,
) -> Result<&'s mut Session, RegistryError> {
    match guard.as_mut() {
        Some(s) if &s.name == name => Ok(s),
        _ => Err(upload_unknown(name, id)),
    }
}

/// Appends a request's body to the held session and marks it active; a failure that leaves
/// the session unusable ends it. Returns the new offset.
async fn feed(
    held: &Held<'_>,
    guard: &mut Option<Session>,
    name: &Name,
    id: &UploadId,
    request: &HeaderMap,
    body: &mut RequestBody,
) -> Result<u64, RegistryError> {
    let session = open(guard, name, id)?;
    let mut result = append(
        &mut session.writer,
        name,
        id,
        request,
        body,
        held.uploads.max_size,
        Some(&held.slot),
    )
    .await;
    // Waiting for its next chunk, a session holds its file but not its write buffer.
    if !matches!(result, Err(Failure::End(_)))
        && let Err(e) = session.writer.park().await
    {
        result = Err(Failure::End(e.into()));
    }
    match result {
        Ok(offset) => Ok(offset),
        Err(Failure::Keep(e)) => Err(e),
        Err(Failure::End(e)) => {
            held.end(guard);
            Err(e)
        }
    }
}

/// Why an append failed, and whether the session survives it.
enum Failure {
    /// Nothing was taken from this request (or only whole bytes in order): retry from the
    /// offset that `GET` reports.
    Keep(RegistryError),
    /// The session can no longer become its blob (too large, or a client error mid-body).
    End(RegistryError),
}

/// Appends a request body at the session's offset, after checking `Content-Range` (when
/// given) starts exactly there. Returns the new offset.
async fn append(
    writer: &mut BlobWriter,
    name: &Name,
    id: &UploadId,
    request: &HeaderMap,
    body: &mut RequestBody,
    max_size: Option<u64>,
    slot: Option<&Slot>,
) -> Result<u64, Failure> {
    let offset = writer.written();
    let range = match request.get(header::CONTENT_RANGE) {
        None => None,
        Some(value) => {
            let text = String::from_utf8_lossy(value.as_bytes());
            let Some((first, last)) = parse_content_range(&text) else {
                return Err(Failure::Keep(
                    RegistryError::new(
                        Code::BlobUploadInvalid,
                        "Content-Range must be <first>-<last>",
                    )
                    .detail(json!({ "contentRange": super::router::truncate(&text) })),
                ));
            };
            if first != offset || last < first {
                let e = RegistryError::new(
                    Code::BlobUploadInvalid,
                    format!(
                        "chunk {first}-{last} is out of order: the upload has {offset} bytes, \
                         so the next chunk starts at {offset}"
                    ),
                )
                .status(StatusCode::RANGE_NOT_SATISFIABLE);
                return Err(Failure::Keep(with_upload_headers(e, name, id, offset)));
            }
            Some(last - first + 1)
        }
    };
    if let (Some(len), Some(declared)) = (range, content_length(request))
        && len != declared
    {
        return Err(Failure::Keep(RegistryError::new(
            Code::SizeInvalid,
            format!("Content-Range covers {len} bytes but Content-Length is {declared}"),
        )));
    }
    if let Err(e) = check_length_after(request, offset, max_size) {
        return Err(Failure::Keep(e));
    }
    let received = receive(
        writer,
        body,
        range,
        max_size.map(|m| m - offset.min(m)),
        slot,
    )
    .await
    .map_err(Failure::End)?;
    if let Some(len) = range
        && received != len
    {
        return Err(Failure::End(RegistryError::new(
            Code::SizeInvalid,
            format!("the chunk held {received} bytes, not the {len} its Content-Range gives"),
        )));
    }
    Ok(writer.written())
}

/// Streams `body` into `writer`; at most `limit` bytes (more is an error), and the whole body
/// may not take the blob past `max` bytes. Returns the bytes taken.
async fn receive(
    writer: &mut BlobWriter,
    body: &mut RequestBody,
    limit: Option<u64>,
    max: Option<u64>,
    slot: Option<&Slot>,
) -> Result<u64, RegistryError> {
    let mut received: u64 = 0;
    loop {
        let frame = match slot {
            Some(slot) => tokio::select! {
                f = body.frame() => f,
                () = slot.cancelled.cancelled() => {
                    return Err(RegistryError::new(
                        Code::BlobUploadInvalid,
                        "the upload received too little for too long and was dropped (--upload-timeout)",
                    ));
                }
            },
            None => body.frame().await,
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            RegistryError::new(
                Code::BlobUploadInvalid,
                format!("reading the request body failed: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        received += data.len() as u64;
        if let Some(slot) = slot {
            slot.received(data.len() as u64);
        }
        if limit.is_some_and(|l| received > l) {
            return Err(RegistryError::new(
                Code::SizeInvalid,
                "the chunk holds more bytes than its Content-Range gives",
            ));
        }
        if let Some(max) = max
            && received > max
        {
            return Err(too_large(max));
        }
        if let Err(e) = writer.write_all(&data).await {
            return Err(writer.write_error(e).into());
        }
    }
    Ok(received)
}

/// Commits `writer` as `digest` in repository `name`: 201, or 400 DIGEST_INVALID (and
/// nothing stored) if the bytes have another digest.
async fn commit(
    registry: &Registry,
    name: &Name,
    writer: BlobWriter,
    digest: &Digest,
) -> Result<Response<Body>, RegistryError> {
    // From the commit to the link, so that a collector cannot take a blob that was there
    // already (a push of the same bytes) before it is linked here. The bytes are made
    // durable first: a sweep waits for the pin.
    let mut writer = writer;
    writer.sync().await?;
    let pin = registry.store().pin().await?;
    match writer.commit_expecting(digest).await {
        Ok(_) => {}
        Err(StoreError::DigestMismatch { expected, actual }) => {
            return Err(RegistryError::new(
                Code::DigestInvalid,
                "the uploaded content does not match the digest given; nothing was stored",
            )
            .detail(json!({ "expected": expected.to_string(), "actual": actual.to_string() })));
        }
        Err(e) => return Err(e.into()),
    }
    registry.link(&pin, name, Link::Blob, digest).await?;
    created(name, digest)
}

/// `Content-Range: <first>-<last>`, as the spec writes it; `bytes <first>-<last>/<total>`, as
/// HTTP does, is taken too.
fn parse_content_range(text: &str) -> Option<(u64, u64)> {
    let text = text.trim();
    let text = text
        .strip_prefix("bytes")
        .map_or(text, |t| t.trim_start_matches([' ', '=']));
    let text = text.split_once('/').map_or(text, |(range, _)| range);
    let (first, last) = text.split_once('-')?;
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    Some((number(first)?, number(last)?))
}

fn content_length(request: &HeaderMap) -> Option<u64> {
    request
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Refuses at once a body whose declared length would take the blob past `max`.
fn check_length_after(
    request: &HeaderMap,
    offset: u64,
    max: Option<u64>,
) -> Result<(), RegistryError> {
    match (content_length(request), max) {
        (Some(len), Some(max)) if offset.saturating_add(len) > max => Err(too_large(max)),
        _ => Ok(()),
    }
}

fn too_large(max: u64) -> RegistryError {
    RegistryError::new(
        Code::SizeInvalid,
        format!("blobs are limited to {max} bytes here (--max-blob-size)"),
    )
    .status(StatusCode::PAYLOAD_TOO_LARGE)
    .detail(json!({ "limit": max }))
}

fn upload_unknown(name: &Name, id: &UploadId) -> RegistryError {
    RegistryError::new(Code::BlobUploadUnknown, "blob upload unknown to registry")
        .detail(json!({ "name": name.as_str(), "session": id.as_str() }))
}

fn location(name: &Name, id: &UploadId) -> String {
    format!("/v2/{name}/blobs/uploads/{}", id.as_str())
}

/// The `Range` of an upload: `0-<last byte>`, and `0-0` when empty (as distribution does).
fn range(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

/// 202 with where the session is and how far it got.
fn accepted(name: &Name, id: &UploadId, offset: u64) -> Result<Response<Body>, RegistryError> {
    let mut response = super::empty(StatusCode::ACCEPTED);
    let h = response.headers_mut();
    h.insert(header::LOCATION, super::header_value(&location(name, id))?);
    h.insert(header::RANGE, super::header_value(&range(offset))?);
    h.insert(
        HeaderName::from_static("docker-upload-uuid"),
        super::header_value(id.as_str())?,
    );
    Ok(response)
}

/// The same headers on an error (a 416 tells the client where to resume).
fn with_upload_headers(e: RegistryError, name: &Name, id: &UploadId, offset: u64) -> RegistryError {
    match (
        HeaderValue::from_str(&range(offset)),
        HeaderValue::from_str(&location(name, id)),
    ) {
        (Ok(r), Ok(l)) => e.header(header::RANGE, r).header(header::LOCATION, l),
        _ => e,
    }
}

/// 201 for a blob now in repository `name`.
fn created(name: &Name, digest: &Digest) -> Result<Response<Body>, RegistryError> {
    let mut response = super::empty(StatusCode::CREATED);
    let h = response.headers_mut();
    h.insert(
        header::LOCATION,
        super::header_value(&format!("/v2/{name}/blobs/{digest}"))?,
    );
    h.insert(
        HeaderName::from_static("docker-content-digest"),
        super::header_value(&digest.to_string())?,
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_in_both_spellings() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range(" 100-199 "), Some((100, 199)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("bytes=5-9/10"), Some((5, 9)));
        for bad in ["", "-", "5-", "-5", "a-b", "1-2-3", "+1-2"] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
        assert_eq!(range(0), "0-0");
        assert_eq!(range(10), "0-9");
    }
}
