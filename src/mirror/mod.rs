//! Pull-through cache (issue 34, in progress): repositories under a mirror's prefix come
//! from its upstream registry the first time they are asked for, and from the store after.
//!
//! - `upstream.rs`: the upstream as a client speaks to it (Basic, Bearer tokens by scope).
//! - here: which mirror a name belongs to, and the fetches that fill the store: a manifest
//!   (by digest: once, it never changes; by tag: again after the tag's TTL, by a `HEAD`
//!   that costs no pull on Docker Hub), a blob (one download at a time per digest; its digest
//!   checked before it is committed, so wrong bytes commit nothing).
//!
//! What is cached stays served when the upstream fails (a tag past its TTL too, logged).
//! Not built yet: streaming a blob to the client while it is stored (the first client waits
//! for the whole blob), `?ns=` and the default mirror for unprefixed names, retention,
//! metrics per upstream.

pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::reference::{Name, Tag};
use crate::store::{Link, Store, StoreError};
use upstream::{Upstream, UpstreamError};

/// Every manifest type a client may get, in the order a mirror asks for them.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest taken from an upstream (as the registry's own limit).
const MAX_MANIFEST: u64 = 4 << 20;

/// Tags whose fetch time is remembered, at most; past it the map starts over (which costs
/// one `HEAD` per tag).
const FETCHED_MAX: usize = 100_000;

/// One `[[mirror]]`, as configured.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub prefix: String,
    pub upstream: String,
    pub default: bool,
    pub credentials: Option<(String, String)>,
    pub ca: Option<Vec<u8>>,
    pub tag_ttl: Duration,
}

/// What a mirror fetch can fail with.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("upstream {url} sent bytes of {actual}, not of {expected}: nothing was stored")]
    Mismatch {
        url: String,
        expected: Digest,
        actual: Digest,
    },
}

/// The configured mirrors.
pub struct Mirrors {
    list: Vec<Mirror>,
}

pub struct Mirror {
    pub prefix: String,
    upstream: Upstream,
    tag_ttl: Duration,
    /// When each cached tag was last checked upstream.
    fetched: Mutex<HashMap<(Name, Tag), Instant>>,
    /// Blob downloads under way, by digest: later askers wait for the first.
    downloads: tokio::sync::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl Mirrors {
    pub fn new(configs: Vec<MirrorConfig>) -> Result<Mirrors, String> {
        let mut list = Vec::new();
        for c in configs {
            let upstream = Upstream::new(
                &c.upstream,
                c.credentials.clone(),
                c.ca.as_deref(),
                Duration::from_secs(30),
            )?;
            list.push(Mirror {
                prefix: c.prefix.trim_matches('/').to_owned(),
                upstream,
                tag_ttl: c.tag_ttl,
                fetched: Mutex::new(HashMap::new()),
                downloads: tokio::sync::Mutex::new(HashMap::new()),
            });
        }
        Ok(Mirrors { list })
    }

    /// The mirror `name` belongs to, and the name upstream.
    pub fn route(&self, name: &Name) -> Option<(&Mirror, String)> {
        let name = name.as_str();
        self.list.iter().find_map(|m| {
            name.strip_prefix(m.prefix.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .filter(|rest| !rest.is_empty())
                .map(|rest| (m, rest.to_owned()))
        })
    }
}

impl Mirror {
    /// The upstream's base URL.
    pub fn upstream(&self) -> &str {
        &self.upstream.base
    }

    /// Makes sure the manifest `name:tag` is in the store, linked and tagged, checking
    /// upstream when the tag's TTL is over; its digest. The stored one when the upstream
    /// fails and one is stored.
    pub async fn tag(
        &self,
        store: &Store,
        name: &Name,
        remote: &str,
        tag: &Tag,
    ) -> Result<Digest, MirrorError> {
        let cached = store.tag(name, tag).await?;
        let key = (name.clone(), tag.clone());
        let fresh = {
            let fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
            fetched
                .get(&key)
                .is_some_and(|at| at.elapsed() < self.tag_ttl)
        };
        if let (Some(digest), true) = (&cached, fresh) {
            return Ok(digest.clone());
        }
        let scope = format!("repository:{remote}:pull");
        let path = format!("{remote}/manifests/{tag}");
        // A stored tag is checked with HEAD: the digest alone says whether it moved.
        if let Some(digest) = &cached {
            let head = self
                .upstream
                .request(reqwest::Method::HEAD, &path, ACCEPT, &scope)
                .await;
            match head {
                Ok(r) => {
                    let same = r
                        .headers()
                        .get("docker-content-digest")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|d| d == digest.to_string());
                    if same {
                        self.checked(key);
                        return Ok(digest.clone());
                    }
                }
                Err(e) if e.is_not_found() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(%name, %tag, error = %e, "upstream failed; serving the cached tag");
                    return Ok(digest.clone());
                }
            }
        }
        let fetched = match (
            self.fetch_manifest(store, name, &path, &scope, None).await,
            cached,
        ) {
            (Ok(d), _) => d,
            (Err(MirrorError::Upstream(e)), Some(cached)) if !e.is_not_found() => {
                tracing::warn!(%name, %tag, error = %e, "upstream failed; serving the cached tag");
                return Ok(cached);
            }
            (Err(e), _) => return Err(e),
        };
        let pin = store.pin().await?;
        store.set_tag(&pin, name, tag, &fetched).await?;
        self.checked(key);
        Ok(fetched)
    }

    /// Makes sure the manifest `digest` is in the store and linked in `name` (manifests by
    /// digest never change: fetched once).
    pub async fn manifest(
        &self,
        store: &Store,
        name: &Name,
        remote: &str,
        digest: &Digest,
    ) -> Result<(), MirrorError> {
        if store.is_linked(name, Link::Manifest, digest).await? {
            return Ok(());
        }
        let scope = format!("repository:{remote}:pull");
        let path = format!("{remote}/manifests/{digest}");
        self.fetch_manifest(store, name, &path, &scope, Some(digest))
            .await
            .map(|_| ())
    }

    fn checked(&self, key: (Name, Tag)) {
        let mut fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        if fetched.len() >= FETCHED_MAX {
            fetched.clear();
        }
        fetched.insert(key, Instant::now());
    }

    /// GETs a manifest, checks it against `expected` (or takes its own digest), stores and
    /// links it.
    async fn fetch_manifest(
        &self,
        store: &Store,
        name: &Name,
        path: &str,
        scope: &str,
        expected: Option<&Digest>,
    ) -> Result<Digest, MirrorError> {
        let url = format!("{}/v2/{path}", self.upstream.base);
        let response = self
            .upstream
            .request(reqwest::Method::GET, path, ACCEPT, scope)
            .await?;
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| UpstreamError::Unreachable {
                url: url.clone(),
                why: e.to_string(),
            })?;
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(UpstreamError::Unreachable {
                url,
                why: format!("a manifest over {MAX_MANIFEST} bytes"),
            }
            .into());
        }
        let algorithm = expected.map_or(crate::digest::Algorithm::Sha256, |d| d.algorithm());
        let actual = Digest::of(algorithm, &bytes);
        if let Some(expected) = expected
            && *expected != actual
        {
            return Err(MirrorError::Mismatch {
                url,
                expected: expected.clone(),
                actual,
            });
        }
        let pin = store.pin().await?;
        let stored = store.put_with(algorithm, &bytes).await?;
        if let Some(t) = media_type
            && crate::image::manifest_media_type(&bytes).is_none()
        {
            store.set_manifest_type(&stored, &t).await?;
        }
        store.link(&pin, name, Link::Manifest, &stored).await?;
        Ok(stored)
    }

    /// Makes sure blob `digest` is in the store and linked in `name`: downloaded (once at a
    /// time per digest), checked, committed.
    pub async fn blob(
        &self,
        store: &Store,
        name: &Name,
        remote: &str,
        digest: &Digest,
    ) -> Result<(), MirrorError> {
        let gate = {
            let mut downloads = self.downloads.lock().await;
            downloads.entry(digest.clone()).or_default().clone()
        };
        let result = async {
            let _one = gate.lock().await;
            if store.has_blob(digest).await? {
                let pin = store.pin().await?;
                store.link(&pin, name, Link::Blob, digest).await?;
                return Ok(());
            }
            let scope = format!("repository:{remote}:pull");
            let path = format!("{remote}/blobs/{digest}");
            let url = format!("{}/v2/{path}", self.upstream.base);
            let mut response = self
                .upstream
                .request(reqwest::Method::GET, &path, "", &scope)
                .await?;
            let mut writer = store.new_blob_with(digest.algorithm()).await?;
            loop {
                let chunk = response
                    .chunk()
                    .await
                    .map_err(|e| UpstreamError::Unreachable {
                        url: url.clone(),
                        why: e.to_string(),
                    })?;
                let Some(chunk) = chunk else { break };
                if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut writer, &chunk).await {
                    return Err(writer.write_error(e).into());
                }
            }
            writer.sync().await?;
            let pin = store.pin().await?;
            match writer.commit_expecting(digest).await {
                Ok(_) => {}
                Err(StoreError::DigestMismatch { expected, actual }) => {
                    return Err(MirrorError::Mismatch {
                        url,
                        expected,
                        actual,
                    });
                }
                Err(e) => return Err(e.into()),
            }
            store.link(&pin, name, Link::Blob, digest).await?;
            Ok(())
        }
        .await;
        let mut downloads = self.downloads.lock().await;
        if Arc::strong_count(&gate) <= 2 {
            downloads.remove(digest);
        }
        result
    }
}
