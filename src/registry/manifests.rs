//! `GET|HEAD /v2/<name>/manifests/<reference>`.
//!
//! By digest: exactly the stored bytes with that digest. By tag: the tag names the OCI
//! manifest; a client whose `Accept` prefers Docker schema 2 gets the Docker twin, which is a
//! separate blob with its own digest. Either way `Docker-Content-Digest` is the sha256 of the
//! bytes sent, so a client can `GET` by that digest next (what `docker pull` does). A tag of
//! an on-demand image is resolved (packed, if need be) before anything is sent, so `HEAD`
//! and `GET` answer alike; `HEAD` waits for the pack like `GET` does.

use std::sync::Arc;

use hyper::header::{self, HeaderMap};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::body::Body;
use super::errors::{Code, RegistryError};
use super::router::Reference;
use super::{Manifest, Registry};
use crate::reference::Name;

pub async fn get(
    registry: &Registry,
    name: &Name,
    reference: &Reference,
    request: &HeaderMap,
) -> Result<Response<Body>, RegistryError> {
    let manifest = match reference {
        Reference::Digest(digest) => {
            registry.require_repository(name).await?;
            registry.manifest(digest).await?.ok_or_else(|| {
                RegistryError::new(Code::ManifestUnknown, "manifest unknown to registry")
                    .detail(json!({ "name": name.as_str(), "digest": digest.to_string() }))
            })?
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
            negotiate(registry, stored, request).await?
        }
    };
    let mut response = super::document(StatusCode::OK, manifest.media_type, manifest.bytes.clone());
    super::digest_headers(response.headers_mut(), &manifest.digest)?;
    Ok(super::conditional(response, request, &manifest.digest))
}

/// Picks the form of a tagged manifest the client asked for.
async fn negotiate(
    registry: &Registry,
    stored: Arc<Manifest>,
    request: &HeaderMap,
) -> Result<Arc<Manifest>, RegistryError> {
    let accept = Accept::parse(request);
    if accept.is_empty() {
        return Ok(stored);
    }
    let twin = registry.docker_twin(&stored).await?;
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
                let q = parts
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
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
        // An exact type beats a wildcard listed before it.
        assert!(prefers_docker(&["application/*", DOCKER_MANIFEST]));
        assert!(accept(&["text/html"]).rank(OCI_MANIFEST).is_none());
        assert!(accept(&[]).is_empty());
    }
}
