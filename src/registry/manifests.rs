//! `GET|HEAD /v2/<name>/manifests/<reference>`.
//!
//! By digest: exactly the stored bytes with that digest. By tag: the tag names the OCI
//! manifest; a client whose `Accept` prefers Docker schema 2 gets the Docker twin, which is a
//! separate blob with its own digest. Either way `Docker-Content-Digest` is the sha256 of the
//! bytes sent, so a client can `GET` by that digest next (what `docker pull` does). A tag of
//! an on-demand image is resolved (packed, if need be) before anything is sent, so `HEAD`
//! and `GET` answer alike; `HEAD` waits for the pack like `GET` does.
//!
//! `PUT` stores a pushed manifest or index once it parses, its media type agrees with its
//! `Content-Type`, and everything it names is in the repository; `?tag=T` (repeatable) points
//! tags at it too, each confirmed by an `OCI-Tag` header. A push by a sha512 digest stores and
//! names the manifest by its sha512. `DELETE` by tag removes the tag; by digest, the manifest
//! leaves the repository with every tag that points at it.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::body::{Body, RequestBody};
use super::errors::{Code, RegistryError};
use super::router::Reference;
use super::{MAX_MANIFEST, Manifest, Registry};
use crate::digest::{Algorithm, Digest};
use crate::image;
use crate::reference::{Name, Tag};
use crate::store::Link;

pub async fn get(
    registry: &Registry,
    name: &Name,
    reference: &Reference,
    request: &HeaderMap,
) -> Result<Response<Body>, RegistryError> {
    if let Some((mirror, remote)) = registry.mirror_of(name) {
        super::mirrored::manifest(registry, mirror, &remote, name, reference).await?;
    }
    let manifest = match reference {
        Reference::Digest(digest) => {
            registry.require_repository(name).await?;
            let found = match registry.is_linked(name, Link::Manifest, digest).await? {
                true => registry.manifest(digest).await?,
                false => None,
            };
            found.ok_or_else(|| unknown_digest(name, digest))?
        }
        Reference::Tag(tag) => {
            let unknown = || {
                RegistryError::new(Code::ManifestUnknown, "manifest tag unknown to registry")
                    .detail(json!({ "name": name.as_str(), "tag": tag.as_str() }))
            };
            let on_demand = match &registry.images {
                Some(images) => images.manifest(name, tag).await,
                None => None,
            };
            let digest = match on_demand {
                Some(resolved) => resolved.map_err(|e| {
                    RegistryError::from(e.as_ref())
                        .detail(json!({ "name": name.as_str(), "tag": tag.as_str() }))
                })?,
                None => match registry.tag(name, tag).await? {
                    Some(digest) => digest,
                    None => {
                        registry.require_repository(name).await?;
                        return Err(unknown());
                    }
                },
            };
            let Some(stored) = registry.manifest(&digest).await? else {
                tracing::error!(%name, %tag, %digest, "tag points at a blob that is not a stored manifest");
                return Err(unknown());
            };
            negotiate(registry, name, stored, request).await?
        }
    };
    let mut response = super::document(StatusCode::OK, manifest.media_type, manifest.bytes.clone());
    super::digest_headers(response.headers_mut(), &manifest.digest)?;
    Ok(super::conditional(response, request, &manifest.digest))
}

/// Picks the form of a tagged manifest the client asked for.
async fn negotiate(
    registry: &Registry,
    name: &Name,
    stored: Arc<Manifest>,
    request: &HeaderMap,
) -> Result<Arc<Manifest>, RegistryError> {
    let accept = Accept::parse(request);
    if accept.is_empty() {
        return Ok(stored);
    }
    // Only a twin in this repository: the client fetches it by digest next, through it.
    let twin = match registry.docker_twin(&stored).await? {
        Some(t) if registry.is_linked(name, Link::Manifest, &t.digest).await? => Some(t),
        _ => None,
    };
    let mut best: Option<(Rank, Arc<Manifest>)> = None;
    for candidate in std::iter::once(stored.clone()).chain(twin) {
        if let Some(rank) = accept.rank(candidate.media_type)
            && best.as_ref().is_none_or(|(b, _)| rank > *b)
        {
            best = Some((rank, candidate));
        }
    }
    best.map(|(_, m)| m).ok_or_else(|| {
        RegistryError::new(
            Code::ManifestUnknown,
            format!(
                "the manifest is {}, which the Accept header does not allow",
                stored.media_type
            ),
        )
        .detail(json!({ "mediaType": stored.media_type }))
    })
}

/// `PUT /v2/<name>/manifests/<reference>[?tag=T...]`.
pub async fn put(
    registry: &Registry,
    name: &Name,
    reference: &Reference,
    query: Option<&str>,
    request: &HeaderMap,
    body: &mut RequestBody,
) -> Result<Response<Body>, RegistryError> {
    let extra_tags = query_tags(query)?;
    let path_tag = match reference {
        Reference::Tag(tag) => Some(tag),
        Reference::Digest(_) => None,
    };
    for tag in path_tag.into_iter().chain(&extra_tags) {
        refuse_on_demand(registry, name, tag.as_str()).await?;
    }
    let bytes = read_manifest(body).await?;
    let content_type = request
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    let pushed = image::parse_pushed_manifest(&bytes, content_type)
        .map_err(|why| RegistryError::new(Code::ManifestInvalid, why))?;
    // Named by the algorithm it was pushed under: a sha512 reference gets a sha512 name.
    let algorithm = match reference {
        Reference::Digest(given) => given.algorithm(),
        Reference::Tag(_) => Algorithm::Sha256,
    };
    let digest = Digest::of(algorithm, &bytes);
    if let Reference::Digest(given) = reference
        && given != &digest
    {
        return Err(RegistryError::new(
            Code::DigestInvalid,
            "the manifest's bytes do not have the digest it was pushed under",
        )
        .detail(json!({ "expected": given.to_string(), "actual": digest.to_string() })));
    }
    let wanted = pushed
        .blobs
        .iter()
        .map(|b| (b, Link::Blob))
        .chain(pushed.children.iter().map(|c| (c, Link::Manifest)));
    // From here to the last tag, no delete in this repository interleaves: the links checked
    // stay, and a tag is never set on a manifest a delete is unlinking.
    let _lock = registry.lock_repository(name).await?;
    // And no collector removes what is checked here before it is linked (`store::Pin`).
    let pin = registry.store().pin().await?;
    for ((blob, size), kind) in wanted {
        if !registry.is_linked(name, kind, blob).await? {
            let what = match kind {
                Link::Blob => "blob",
                Link::Manifest => "manifest",
            };
            return Err(RegistryError::new(
                Code::ManifestBlobUnknown,
                format!("the manifest names a {what} that is not in repository {name}"),
            )
            .detail(json!({ "digest": blob.to_string() })));
        }
        let stored = registry.store().blob_size(blob).await?;
        if stored != Some(*size) {
            return Err(RegistryError::new(
                Code::ManifestInvalid,
                format!("the manifest gives {blob} a size of {size}, but it has {stored:?}"),
            )
            .detail(json!({ "digest": blob.to_string(), "size": size })));
        }
        // Linked again: touches the blob and its link, so that the pass that may be
        // marking right now leaves them (the blob is still there: the size was read
        // under the pin).
        registry.link(&pin, name, kind, blob).await?;
    }
    registry.store().put_with(algorithm, &bytes).await?;
    if !pushed.declared {
        registry
            .store()
            .set_manifest_type(&digest, pushed.media_type)
            .await?;
    }
    registry.link(&pin, name, Link::Manifest, &digest).await?;
    if let Some(subject) = &pushed.subject {
        registry
            .store()
            .add_referrer(&pin, name, subject, &digest)
            .await?;
    }
    for tag in path_tag.into_iter().chain(&extra_tags) {
        registry.store().set_tag(&pin, name, tag, &digest).await?;
        registry
            .tags
            .set(&(name.clone(), tag.clone()), Some(digest.clone()));
    }
    let tags = extra_tags.len() + usize::from(path_tag.is_some());
    tracing::info!(%name, %digest, media_type = pushed.media_type, tags, "manifest pushed");
    let mut response = super::empty(StatusCode::CREATED);
    let h = response.headers_mut();
    h.insert(
        header::LOCATION,
        super::header_value(&format!("/v2/{name}/manifests/{digest}"))?,
    );
    super::digest_headers(h, &digest)?;
    if let Some(subject) = &pushed.subject {
        h.insert(
            HeaderName::from_static("oci-subject"),
            super::header_value(&subject.to_string())?,
        );
    }
    for tag in &extra_tags {
        h.append(
            HeaderName::from_static("oci-tag"),
            super::header_value(tag.as_str())?,
        );
    }
    Ok(response)
}

/// `DELETE /v2/<name>/manifests/<reference>`: 202.
pub async fn delete(
    registry: &Registry,
    name: &Name,
    reference: &Reference,
) -> Result<Response<Body>, RegistryError> {
    registry.require_repository(name).await?;
    let _lock = registry.lock_repository(name).await?;
    match reference {
        Reference::Tag(tag) => {
            refuse_on_demand(registry, name, tag.as_str()).await?;
            if !registry.delete_tag(name, tag).await? {
                return Err(RegistryError::new(
                    Code::ManifestUnknown,
                    "manifest tag unknown to registry",
                )
                .detail(json!({ "name": name.as_str(), "tag": tag.as_str() })));
            }
            tracing::info!(%name, %tag, "tag deleted");
        }
        Reference::Digest(digest) => {
            if !registry.is_linked(name, Link::Manifest, digest).await? {
                return Err(unknown_digest(name, digest));
            }
            // The tags go first: a tag must never name a manifest the repository lacks.
            for tag in registry.store().tags(name).await? {
                if registry.store().tag(name, &tag).await?.as_ref() == Some(digest) {
                    registry.delete_tag(name, &tag).await?;
                }
            }
            if let Some(m) = registry.manifest(digest).await?
                && let Ok(pushed) = image::parse_pushed_manifest(&m.bytes, None)
                && let Some(subject) = pushed.subject
            {
                registry
                    .store()
                    .remove_referrer(name, &subject, digest)
                    .await?;
            }
            registry.unlink(name, Link::Manifest, digest).await?;
            tracing::info!(%name, %digest, "manifest deleted from repository");
        }
    }
    Ok(super::empty(StatusCode::ACCEPTED))
}

/// Tags of on-demand images are the inputs' to say: a pushed or deleted tag there would be
/// hidden by (or come back as) the on-demand image.
async fn refuse_on_demand(
    registry: &Registry,
    name: &Name,
    tag: &str,
) -> Result<(), RegistryError> {
    match &registry.images {
        Some(images) if images.has(name).await => Err(RegistryError::new(
            Code::Denied,
            format!("{name} is packed on demand from files (--image/--root); its tags cannot be pushed or deleted"),
        )
        .detail(json!({ "name": name.as_str(), "tag": tag }))),
        _ => Ok(()),
    }
}

/// Most `?tag=` parameters one push may carry.
const MAX_PUSH_TAGS: usize = 100;

/// The `tag` parameters of a manifest push, in order, each once; a malformed one is
/// `TAG_INVALID` before anything is read.
fn query_tags(query: Option<&str>) -> Result<Vec<Tag>, RegistryError> {
    let mut tags: Vec<Tag> = Vec::new();
    for (key, value) in super::query_pairs(query) {
        if key != "tag" {
            continue;
        }
        let tag = value.parse::<Tag>().map_err(|e| {
            RegistryError::new(Code::TagInvalid, super::router::truncate(&e.to_string()))
                .detail(json!({ "tag": super::router::truncate(&value) }))
        })?;
        if !tags.contains(&tag) {
            tags.push(tag);
        }
        // Each tag is a durable write; a push is not a way to make the server do thousands.
        if tags.len() > MAX_PUSH_TAGS {
            return Err(RegistryError::new(
                Code::TagInvalid,
                format!("at most {MAX_PUSH_TAGS} tags can be given with one push"),
            ));
        }
    }
    Ok(tags)
}

/// The request body, if it is at most `MAX_MANIFEST` bytes (413 otherwise).
async fn read_manifest(body: &mut RequestBody) -> Result<Bytes, RegistryError> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            RegistryError::new(
                Code::ManifestInvalid,
                format!("reading the request body failed: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if (bytes.len() + data.len()) as u64 > MAX_MANIFEST {
                return Err(RegistryError::new(
                    Code::SizeInvalid,
                    format!("manifests are limited to {MAX_MANIFEST} bytes"),
                )
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .detail(json!({ "limit": MAX_MANIFEST })));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(bytes))
}

fn unknown_digest(name: &Name, digest: &Digest) -> RegistryError {
    RegistryError::new(Code::ManifestUnknown, "manifest unknown to registry")
        .detail(json!({ "name": name.as_str(), "digest": digest.to_string() }))
}

/// How well a client wants a media type: by `q`, then by position (earlier is better), then
/// exact over wildcard.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct Rank {
    q: f32,
    exact: bool,
    /// Negated position, so that larger is better like the other fields.
    position: i64,
}

/// The media ranges of all `Accept` headers, in order.
struct Accept(Vec<(String, f32)>);

impl Accept {
    fn parse(headers: &HeaderMap) -> Accept {
        let mut ranges = Vec::new();
        for value in headers.get_all(header::ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let mut parts = item.split(';');
                let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
                if media.is_empty() {
                    continue;
                }
                // Parameter names are case-insensitive (RFC 9110 5.6.6): `Q=0.5` is `q=0.5`.
                let q = parts
                    .filter_map(|p| p.split_once('='))
                    .filter(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                    .find_map(|(_, q)| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                ranges.push((media, q));
            }
        }
        Accept(ranges)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The best rank any range gives `media_type`; `None` if none accepts it (q=0 refuses).
    fn rank(&self, media_type: &str) -> Option<Rank> {
        let (kind, _) = media_type.split_once('/').unwrap_or((media_type, ""));
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, (range, q))| {
                let exact = range == media_type;
                let matches = exact || range == "*/*" || range.strip_suffix("/*") == Some(kind);
                (matches && *q > 0.0).then_some(Rank {
                    q: *q,
                    exact,
                    position: -(i as i64),
                })
            })
            .fold(None, |best: Option<Rank>, r| match best {
                Some(b) if b >= r => Some(b),
                _ => Some(r),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{DOCKER_MANIFEST, OCI_MANIFEST};
    use hyper::header::HeaderValue;

    fn accept(values: &[&str]) -> Accept {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT, HeaderValue::from_str(v).expect("value"));
        }
        Accept::parse(&h)
    }

    fn prefers_docker(values: &[&str]) -> bool {
        let a = accept(values);
        match (a.rank(DOCKER_MANIFEST), a.rank(OCI_MANIFEST)) {
            (Some(d), Some(o)) => d > o,
            (Some(_), None) => true,
            _ => false,
        }
    }

    #[test]
    fn accept_order_q_and_wildcards_pick_the_form() {
        // Docker sends one Accept header per type, Docker schema 2 first.
        assert!(prefers_docker(&[DOCKER_MANIFEST, OCI_MANIFEST]));
        assert!(!prefers_docker(&[&format!(
            "{OCI_MANIFEST}, {DOCKER_MANIFEST}"
        )]));
        assert!(prefers_docker(&[&format!(
            "{OCI_MANIFEST};q=0.5, {DOCKER_MANIFEST}"
        )]));
        assert!(!prefers_docker(&[&format!("{DOCKER_MANIFEST};q=0, */*")]));
        // Parameter names are case-insensitive, and spaces around '=' are allowed.
        assert!(prefers_docker(&[&format!(
            "{OCI_MANIFEST};Q=0.5, {DOCKER_MANIFEST}"
        )]));
        assert!(prefers_docker(&[&format!(
            "{OCI_MANIFEST}; q = 0.5, {DOCKER_MANIFEST}"
        )]));
        assert!(!prefers_docker(&[&format!("{DOCKER_MANIFEST};Q=0, */*")]));
        // An exact type beats a wildcard listed before it.
        assert!(prefers_docker(&["application/*", DOCKER_MANIFEST]));
        assert!(accept(&["text/html"]).rank(OCI_MANIFEST).is_none());
        assert!(accept(&[]).is_empty());
    }
}
