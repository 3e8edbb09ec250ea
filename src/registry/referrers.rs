//! `GET /v2/<name>/referrers/<digest>[?artifactType=T]`: the manifests of the repository
//! whose `subject` is `<digest>`, as an OCI image index (empty if there are none, or if the
//! repository does not exist: 200 either way, per the spec). The store keeps an index of them, written when each is pushed.

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::Registry;
use super::body::Body;
use super::errors::RegistryError;
use crate::digest::Digest;
use crate::image;
use crate::reference::Name;
use crate::store::Link;

pub async fn get(
    registry: &Registry,
    name: &Name,
    subject: &Digest,
    query: Option<&str>,
) -> Result<Response<Body>, RegistryError> {
    // No repository yet is no referrers yet: 200 with an empty index, as the spec says.
    let filter = super::query_pairs(query)
        .into_iter()
        .find(|(k, _)| *k == "artifactType")
        .map(|(_, v)| v);
    let mut descriptors = Vec::new();
    for digest in registry.store().referrers(name, subject).await? {
        // A referrer deleted meanwhile, or a damaged one, is left out.
        if !registry.is_linked(name, Link::Manifest, &digest).await? {
            continue;
        }
        let Some(manifest) = registry.manifest(&digest).await? else {
            continue;
        };
        let Ok(pushed) = image::parse_pushed_manifest(&manifest.bytes, None) else {
            continue;
        };
        if filter.is_some() && pushed.artifact_type != filter {
            continue;
        }
        let mut d = json!({
            "mediaType": manifest.media_type,
            "digest": digest.to_string(),
            "size": manifest.bytes.len(),
        });
        if let Some(t) = pushed.artifact_type {
            d["artifactType"] = Value::String(t);
        }
        if let Some(a) = pushed.annotations {
            d["annotations"] = Value::Object(a);
        }
        descriptors.push(d);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": image::OCI_INDEX,
        "manifests": descriptors,
    });
    let body = serde_json::to_vec(&index).map_err(|e| {
        tracing::error!(error = %e, "cannot serialize a referrers index");
        RegistryError::new(super::errors::Code::Unknown, "internal error")
    })?;
    let mut response = super::document(StatusCode::OK, image::OCI_INDEX, Bytes::from(body));
    if filter.is_some() {
        response.headers_mut().insert(
            HeaderName::from_static("oci-filters-applied"),
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}
