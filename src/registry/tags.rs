//! `GET /v2/<name>/tags/list`: the repository's tags, sorted, paginated.

use hyper::Response;
use serde_json::json;

use super::Registry;
use super::body::Body;
use super::errors::RegistryError;
use super::pagination::{self, Page};
use crate::reference::Name;

pub async fn get(
    registry: &Registry,
    name: &Name,
    query: Option<&str>,
) -> Result<Response<Body>, RegistryError> {
    let page = Page::parse(query)?;
    let mut tags = registry.store().tags(name).await?;
    if let Some(images) = &registry.images {
        tags.extend(images.tags(name).await);
        tags.sort();
        tags.dedup();
    }
    if tags.is_empty() {
        return Err(RegistryError::name_unknown(name));
    }
    let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    let path = format!("/v2/{name}/tags/list");
    pagination::respond(
        &path,
        &page,
        &tags,
        |page| json!({ "name": name.as_str(), "tags": page }),
    )
}
