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
    // One more than the page holds says whether a next page exists.
    let want = page.limit() + 1;
    let last = page.last.as_deref();
    let mut tags = registry.store().tags_after(name, last, want).await?;
    if let Some(images) = &registry.images {
        let served = images.tags(name).await;
        tags.extend(
            served
                .into_iter()
                .filter(|t| last.is_none_or(|l| t.as_str() > l)),
        );
        tags.sort();
        tags.dedup();
        tags.truncate(want);
    }
    // A repository with no tags (its manifests deleted, or pushed by digest only) lists
    // none; only a name that is no repository at all is unknown, as the catalog says.
    if tags.is_empty() {
        registry.require_repository(name).await?;
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
