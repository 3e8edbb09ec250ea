//! `GET|HEAD /v2/<name>/blobs/<digest>`: the blob streamed from its file, whole or one range.
//! `DELETE`: the blob leaves the repository (its bytes stay while other repositories link them).

use std::io::SeekFrom;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;
use tokio::io::AsyncSeekExt;

use super::Registry;
use super::body::Body;
use super::errors::{Code, RegistryError};
use crate::digest::Digest;
use crate::reference::Name;
use crate::store::{BlobRead, Link, StoreError};

pub async fn get(
    registry: &Registry,
    name: &Name,
    digest: &Digest,
    request: &HeaderMap,
    read_in: Option<usize>,
    head: bool,
) -> Result<Response<Body>, RegistryError> {
    if let Some((mirror, remote)) = registry.mirror_of(name)
        && !registry.is_linked(name, Link::Blob, digest).await?
        && !registry.is_linked(name, Link::Manifest, digest).await?
        && let Some((len, stream)) =
            super::mirrored::blob(registry, mirror, &remote, name, digest).await?
    {
        // Arriving from the upstream: streamed as it comes, whole (a Range is not honoured
        // until the blob is stored).
        let body = if head {
            Body::Empty
        } else {
            Body::stream(stream, len)
        };
        return respond(body, digest, request, None, len);
    }
    registry.require_repository(name).await?;
    // Scoped: only what was pushed, mounted or packed into this repository. A manifest is a
    // blob too (some clients fetch one through /blobs/).
    let linked = registry.is_linked(name, Link::Blob, digest).await?
        || registry.is_linked(name, Link::Manifest, digest).await?;
    if !linked {
        return Err(unknown(name, digest));
    }
    let (mut file, size) = match registry.store().open_for_read(digest).await {
        Ok(BlobRead::File { file, size }) => (file, size),
        Ok(BlobRead::Elsewhere { size }) => {
            return get_elsewhere(registry, name, digest, size, request, head).await;
        }
        Err(StoreError::BlobUnknown(_)) => return Err(unknown(name, digest)),
        Err(e) => return Err(e.into()),
    };
    let range = range_of(request, size)?;
    let (start, len) = span(range, size);
    let body = if let Some(chunk) = read_in {
        if start > 0 {
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(|source| StoreError::Io {
                    action: "seek in blob",
                    path: registry.store().blob_path(digest),
                    source,
                })?;
        }
        Body::file(file, len, chunk)
    } else {
        Body::mapped(file.into_std().await, start, len)
    };
    respond(body, digest, request, range, size)
}

/// The range a request's `Range` header asks of a blob of `size` bytes (`None`: all of
/// it), or 416.
fn range_of(request: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, RegistryError> {
    let Some(value) = request.get(header::RANGE) else {
        return Ok(None);
    };
    parse_range(value.as_bytes(), size).or_else(|why| {
        let text = String::from_utf8_lossy(value.as_bytes());
        Err(RegistryError::new(
            Code::RangeInvalid,
            format!("requested range not satisfiable: {why}"),
        )
        .detail(json!({ "range": super::router::truncate(&text), "size": size }))
        .header(
            header::CONTENT_RANGE,
            super::header_value(&format!("bytes */{size}"))?,
        ))
    })
}

/// Where the bytes to send start, and how many.
fn span(range: Option<(u64, u64)>, size: u64) -> (u64, u64) {
    match range {
        Some((first, last)) => (first, last - first + 1),
        None => (0, size),
    }
}

/// A blob that lives elsewhere (object storage): streamed through this replica, or (with
/// `--redirect`) a 307 to a short-lived URL of the object itself, so the bytes flow from
/// storage to the client. A HEAD is answered here either way: it is the size.
async fn get_elsewhere(
    registry: &Registry,
    name: &Name,
    digest: &Digest,
    size: u64,
    request: &HeaderMap,
    head: bool,
) -> Result<Response<Body>, RegistryError> {
    let store = registry.store();
    if !head && let Some(valid) = registry.redirect() {
        let Some(url) = store.presigned(hyper::Method::GET, digest, valid).await? else {
            return Err(unknown(name, digest));
        };
        let mut response = super::empty(StatusCode::TEMPORARY_REDIRECT);
        let headers = response.headers_mut();
        headers.insert(header::LOCATION, super::header_value(&url)?);
        super::digest_headers(headers, digest)?;
        return Ok(response);
    }
    let range = range_of(request, size)?;
    let (start, len) = span(range, size);
    let body = if head {
        Body::Empty
    } else {
        match store.blob_stream(digest, start, len).await {
            Ok(stream) => Body::stream(stream, len),
            Err(StoreError::BlobUnknown(_)) => return Err(unknown(name, digest)),
            Err(e) => return Err(e.into()),
        }
    };
    respond(body, digest, request, range, size)
}

/// The response that carries a blob's bytes (or, for HEAD, only their headers).
fn respond(
    body: Body,
    digest: &Digest,
    request: &HeaderMap,
    range: Option<(u64, u64)>,
    size: u64,
) -> Result<Response<Body>, RegistryError> {
    let (_, len) = span(range, size);
    let status = match range {
        Some(_) => StatusCode::PARTIAL_CONTENT,
        None => StatusCode::OK,
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Content named by its digest never changes.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000, immutable"),
    );
    if let Some((first, last)) = range {
        headers.insert(
            header::CONTENT_RANGE,
            super::header_value(&format!("bytes {first}-{last}/{size}"))?,
        );
    }
    super::digest_headers(headers, digest)?;
    Ok(super::conditional(response, request, digest))
}

/// `DELETE /v2/<name>/blobs/<digest>`: 202, or 404 if the repository does not hold it.
pub async fn delete(
    registry: &Registry,
    name: &Name,
    digest: &Digest,
) -> Result<Response<Body>, RegistryError> {
    registry.require_repository(name).await?;
    // Not while a manifest push in this repository checks that its blobs are here.
    let _lock = registry.lock_repository(name).await?;
    if !registry.unlink(name, Link::Blob, digest).await? {
        return Err(unknown(name, digest));
    }
    tracing::info!(%name, %digest, "blob deleted from repository");
    Ok(super::empty(StatusCode::ACCEPTED))
}

fn unknown(name: &Name, digest: &Digest) -> RegistryError {
    RegistryError::new(Code::BlobUnknown, "blob unknown to registry")
        .detail(json!({ "name": name.as_str(), "digest": digest.to_string() }))
}

/// The one byte range (first, last inclusive) a `Range` header asks for, `None` to send the
/// whole blob, or why the header cannot be honoured.
///
/// `bytes=N-M`, `bytes=N-` (to the end) and `bytes=-N` (the last N bytes) are served; a list of
/// several ranges gets the whole blob (RFC 9110 lets a server ignore Range), as does a unit
/// other than bytes. Syntax errors and ranges past the end are refused with 416.
pub fn parse_range(header: &[u8], size: u64) -> Result<Option<(u64, u64)>, &'static str> {
    let text = std::str::from_utf8(header).map_err(|_| "not ASCII")?.trim();
    let Some((unit, spec)) = text.split_once('=') else {
        return Err("expected bytes=FIRST-LAST");
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ok(None);
    }
    if spec.contains(',') {
        return Ok(None);
    }
    let (first, last) = spec
        .trim()
        .split_once('-')
        .ok_or("expected bytes=FIRST-LAST")?;
    // More digits than a u64 holds is past the end of any blob: u64::MAX says as much.
    let number = |s: &str| -> Result<u64, &'static str> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("positions must be decimal numbers");
        }
        Ok(s.parse().unwrap_or(u64::MAX))
    };
    if size == 0 {
        return Err("the blob is empty");
    }
    match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n = number(suffix)?;
            if n == 0 {
                return Err("a suffix range of zero bytes");
            }
            Ok(Some((size - n.min(size), size - 1)))
        }
        (first, last) => {
            let first = number(first)?;
            if first >= size {
                return Err("first position beyond the end of the blob");
            }
            let last = if last.is_empty() {
                size - 1
            } else {
                let last = number(last)?;
                if last < first {
                    return Err("last position before the first");
                }
                last.min(size - 1)
            };
            Ok(Some((first, last)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_of_every_form() {
        let r = |h: &str| parse_range(h.as_bytes(), 100);
        assert_eq!(r("bytes=0-9"), Ok(Some((0, 9))));
        assert_eq!(r("bytes=10-"), Ok(Some((10, 99))));
        assert_eq!(r("bytes=-10"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=-1000"), Ok(Some((0, 99))));
        assert_eq!(r("bytes=90-1000"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=90-99999999999999999999999"), Ok(Some((90, 99))));
        assert_eq!(r("Bytes = 5-5"), Ok(Some((5, 5))));
        assert_eq!(r("bytes=0-1,5-6"), Ok(None));
        assert_eq!(r("items=0-1"), Ok(None));
        for bad in [
            "bytes=100-",
            "bytes=100-200",
            "bytes=9-3",
            "bytes=-0",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
            "bytes 0-1",
            "bytes=0x10-",
            "bytes=0-abc",
        ] {
            assert!(r(bad).is_err(), "{bad}");
        }
        assert!(parse_range(b"bytes=0-", 0).is_err());
    }
}
