//! Repositories of a pull-through mirror (`crate::mirror`): before a read goes to the store,
//! the mirror makes sure what it asks for is there (fetched from the upstream when it is not,
//! or when a tag's TTL is over). Writes to them are refused: they are the upstream's.

use serde_json::json;

use super::Registry;
use super::errors::{Code, RegistryError};
use super::router::Reference;
use crate::digest::Digest;
use crate::mirror::{Fetched, Mirror, MirrorError};
use crate::reference::Name;

impl Registry {
    /// The mirror repository `name` belongs to, and its name upstream.
    pub(super) fn mirror_of(&self, name: &Name) -> Option<(&Mirror, String)> {
        self.mirrors.as_ref()?.route(name)
    }
}

/// The mirror's name of an unprefixed `name`: `PREFIX/NAME` for containerd's `?ns=PREFIX`
/// (a `hosts.toml` mirror), or for the default mirror (dockerd's `registry-mirrors`) when
/// `name` is none of this registry's own (in the store or on demand). `None`: as it is.
pub(super) async fn renamed(registry: &Registry, name: &Name, query: Option<&str>) -> Option<Name> {
    let mirrors = registry.mirrors.as_ref()?;
    if mirrors.route(name).is_some() {
        return None;
    }
    let ns = super::query_pairs(query)
        .into_iter()
        .find(|(k, _)| *k == "ns")
        .map(|(_, v)| v);
    let prefix = match ns.as_deref().and_then(|ns| mirrors.with_prefix(ns)) {
        Some(p) => p,
        None => {
            let default = mirrors.default_prefix()?;
            let own = match &registry.images {
                Some(images) => images.has(name).await,
                None => false,
            };
            if own || registry.has_repository(name).await.unwrap_or(false) {
                return None;
            }
            default
        }
    };
    format!("{prefix}/{name}").parse().ok()
}

/// Makes sure the manifest `reference` of mirrored `name` is in the store (and its tag
/// points at it), as `manifests::get` then reads it.
pub(super) async fn manifest(
    registry: &Registry,
    mirror: &Mirror,
    remote: &str,
    name: &Name,
    reference: &Reference,
) -> Result<(), RegistryError> {
    let store = registry.store();
    let digest = match reference {
        Reference::Tag(tag) => {
            let digest = mirror
                .tag(store, name, remote, tag)
                .await
                .map_err(|e| error(e, mirror, Code::ManifestUnknown))?;
            registry
                .tags
                .set(&(name.clone(), tag.clone()), Some(digest.clone()));
            digest
        }
        Reference::Digest(digest) => {
            mirror
                .manifest(store, name, remote, digest)
                .await
                .map_err(|e| error(e, mirror, Code::ManifestUnknown))?;
            digest.clone()
        }
    };
    registry.repositories.set(name, Some(()));
    // For retention; a failure to record costs at most an early eviction.
    if let Err(e) = mirror.pulled(store, name, &digest).await {
        tracing::warn!(%name, %digest, error = %e, "could not record a mirror pull");
    }
    Ok(())
}

/// Blob `digest` of mirrored `name`: `None` when it is in the store and linked (read it
/// from there), else its length and its bytes as they arrive from the upstream.
pub(super) async fn blob(
    registry: &Registry,
    mirror: &Mirror,
    remote: &str,
    name: &Name,
    digest: &Digest,
) -> Result<Option<(u64, crate::store::ByteStream)>, RegistryError> {
    let fetched = mirror
        .blob(registry.store(), name, remote, digest)
        .await
        .map_err(|e| error(e, mirror, Code::BlobUnknown))?;
    registry.repositories.set(name, Some(()));
    Ok(match fetched {
        Fetched::Stored => None,
        Fetched::Streaming { len, stream } => Some((len, stream)),
    })
}

/// The client's error: 404 for what the upstream does not have, 502 for an upstream that
/// sent wrong bytes, 503 for one that fails or cannot be reached; each names the upstream.
fn error(e: MirrorError, mirror: &Mirror, unknown: Code) -> RegistryError {
    let e = match e {
        MirrorError::Store(s) => return s.into(),
        other => other,
    };
    let upstream = mirror.upstream().to_owned();
    let (code, status) = match &e {
        MirrorError::Upstream(u) if u.is_not_found() => (unknown, None),
        MirrorError::Mismatch { .. } | MirrorError::Failed(_) => {
            (Code::Unknown, Some(hyper::StatusCode::BAD_GATEWAY))
        }
        _ => (Code::Unavailable, None),
    };
    tracing::warn!(%upstream, error = %e, "mirror fetch failed");
    let mut error = RegistryError::new(code, e.to_string()).detail(json!({ "upstream": upstream }));
    if let Some(status) = status {
        error = error.status(status);
    }
    error
}
