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
//! A session is kept by the store (`store::sessions`): in this process for a directory
//! store, in the database for a shared one, so that a session begun on one replica goes on
//! on another. A request checks the session out, feeds its writer (hashing as bytes come,
//! so the blob is never read back to be checked, unless the `PUT` names a digest of another
//! algorithm than the session was opened with: then it is read once) and checks it in; `PUT`
//! compares the running digest with `D` and commits (fsync, rename) only on a match. A
//! session a client leaves quiet for `upload_timeout` is ended with its bytes.

use std::net::IpAddr;

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
use crate::store::sessions::{Checkin, Checkout, Fed, Progress, Refused, Sessions};
use crate::store::{BlobWriter, Link, StoreError};

/// The registry's side of uploads: the store's sessions, and the size limit.
pub struct Uploads {
    pub(super) sessions: Sessions,
    /// Largest blob accepted, if limited.
    max_size: Option<u64>,
}

/// How long a client refused for having too many sessions is told to wait.
const RETRY_AFTER_S: u32 = 10;

impl Uploads {
    pub fn new(sessions: Sessions, max_size: Option<u64>) -> Uploads {
        Uploads { sessions, max_size }
    }

    /// Sessions open now in this process (a shared store's live in its database: 0).
    pub fn open(&self) -> usize {
        self.sessions.open_now().unwrap_or(0)
    }

    pub fn sweep_interval(&self) -> std::time::Duration {
        self.sessions.limits().sweep_interval()
    }

    /// Session `id` of `name`, checked out for this request, or 404.
    async fn checkout(&self, name: &Name, id: &UploadId) -> Result<Checkout, RegistryError> {
        self.sessions
            .checkout(name, id.as_str())
            .await?
            .ok_or_else(|| upload_unknown(name, id))
    }

    /// Appends the request's body to the checked-out session, watched so that a request
    /// that trickles is ended as an idle session is. Returns the new offset.
    async fn feed(
        &self,
        checkout: &mut Checkout,
        name: &Name,
        id: &UploadId,
        request: &HeaderMap,
        body: &mut RequestBody,
    ) -> Result<u64, Failure> {
        let progress = checkout.progress.clone();
        let limits = *self.sessions.limits();
        let writer = checkout
            .writer()
            .map_err(|e| Failure::End(RegistryError::from(e)))?;
        tokio::select! {
            biased;
            r = append(writer, name, id, request, body, self.max_size, Some(&progress)) => r,
            () = progress.watch(limits.timeout, limits.sweep_interval()) => unreachable!("watch never returns"),
        }
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
    match uploads.sessions.open(name, algorithm, client).await? {
        Ok(id) => {
            let id = UploadId::parse(&id).ok_or_else(|| {
                RegistryError::new(Code::Unknown, "internal error starting an upload")
            })?;
            accepted(name, &id, 0)
        }
        Err(Refused::Full(open)) => Err(too_many(format!(
            "{open} uploads are open, the most this registry takes at once"
        ))),
        Err(Refused::ClientFull(theirs)) => Err(too_many(format!(
            "this client has {theirs} uploads open, the most one client may"
        ))),
    }
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
    let mut checkout = uploads.checkout(name, id).await?;
    let fed = uploads.feed(&mut checkout, name, id, request, body).await;
    let checkin = uploads.sessions.checkin(checkout, fed_as(&fed)).await;
    match (fed, checkin?) {
        (Err(failure), _) => Err(failure.into_error()),
        (Ok(_), Checkin::At(offset)) => accepted(name, id, offset),
        (Ok(_), Checkin::Raced(offset)) => Err(raced(name, id, offset)),
        (Ok(_), Checkin::Ended) => Err(upload_unknown(name, id)),
    }
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
    // Checked before the chunk is taken, so a client that forgot the digest can retry.
    let digest = closing_digest(query)?;
    let mut checkout = uploads.checkout(name, id).await?;
    if let Err(failure) = uploads.feed(&mut checkout, name, id, request, body).await {
        uploads.sessions.checkin(checkout, failure.fed()).await?;
        return Err(failure.into_error());
    }
    let (writer, leftovers) = match uploads.sessions.finish(checkout).await? {
        Ok(finished) => finished,
        Err(offset) => return Err(raced(name, id, offset)),
    };
    let result = commit(registry, name, writer, &digest).await;
    leftovers.discard().await;
    result
}

/// `GET /v2/<name>/blobs/uploads/<id>`: how far the upload got.
pub async fn status(
    registry: &Registry,
    name: &Name,
    id: &UploadId,
) -> Result<Response<Body>, RegistryError> {
    let uploads = registry.uploads()?;
    let Some(offset) = uploads.sessions.state(name, id.as_str()).await? else {
        return Err(upload_unknown(name, id));
    };
    let mut response = accepted(name, id, offset)?;
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`: cancel; its bytes are removed.
pub async fn cancel(
    registry: &Registry,
    name: &Name,
    id: &UploadId,
) -> Result<Response<Body>, RegistryError> {
    let uploads = registry.uploads()?;
    if !uploads.sessions.cancel(name, id.as_str()).await? {
        return Err(upload_unknown(name, id));
    }
    tracing::info!(%name, session = id.as_str(), "upload cancelled");
    Ok(super::empty(StatusCode::NO_CONTENT))
}

/// What a checkin is told of a request's bytes.
fn fed_as(fed: &Result<u64, Failure>) -> Fed {
    match fed {
        Ok(_) => Fed::Whole,
        Err(failure) => failure.fed(),
    }
}

/// 416: another request moved (or ended) the session while this one was feeding it.
fn raced(name: &Name, id: &UploadId, offset: u64) -> RegistryError {
    let e = RegistryError::new(
        Code::BlobUploadInvalid,
        "another request changed this upload meanwhile; ask where it stands (GET) and go on from there",
    )
    .status(StatusCode::RANGE_NOT_SATISFIABLE)
    .detail(json!({ "session": id.as_str() }));
    with_upload_headers(e, name, id, offset)
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

/// Why an append failed, and whether the session survives it.
enum Failure {
    /// Nothing was taken from this request (or only whole bytes in order): retry from the
    /// offset that `GET` reports.
    Keep(RegistryError),
    /// The session can no longer become its blob (too large, or a client error mid-body).
    End(RegistryError),
}

impl Failure {
    /// What the session is told: refused whole (it goes on), or broken (it ends).
    fn fed(&self) -> Fed {
        match self {
            Failure::Keep(_) => Fed::Refused,
            Failure::End(_) => Fed::Broken,
        }
    }

    fn into_error(self) -> RegistryError {
        match self {
            Failure::Keep(e) | Failure::End(e) => e,
        }
    }
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
    progress: Option<&Progress>,
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
        progress,
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
    progress: Option<&Progress>,
) -> Result<u64, RegistryError> {
    let mut received: u64 = 0;
    loop {
        let frame = match progress {
            Some(progress) => tokio::select! {
                f = body.frame() => f,
                () = progress.cancelled() => {
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
        if let Some(progress) = progress {
            progress.received(data.len() as u64);
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
    let size = match writer.commit_expecting(digest).await {
        Ok((_, size)) => size,
        Err(StoreError::DigestMismatch { expected, actual }) => {
            return Err(RegistryError::new(
                Code::DigestInvalid,
                "the uploaded content does not match the digest given; nothing was stored",
            )
            .detail(json!({ "expected": expected.to_string(), "actual": actual.to_string() })));
        }
        Err(e) => return Err(e.into()),
    };
    registry.link(&pin, name, Link::Blob, digest).await?;
    let mut response = created(name, digest)?;
    // Its size, for the push's event.
    response
        .extensions_mut()
        .insert(super::notify::Stored(size));
    Ok(response)
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
