//! `GET /v2/_catalog`: every repository in the store or on demand that the caller may read,
//! sorted, paginated.

use hyper::Response;
use serde_json::json;

use super::Registry;
use super::body::Body;
use super::errors::RegistryError;
use super::pagination::{self, Page};
use super::rules::Right;

pub async fn get(
    registry: &Registry,
    query: Option<&str>,
    user: Option<&str>,
) -> Result<Response<Body>, RegistryError> {
    let page = Page::parse(query)?;
    let mut names = registry.store().repositories().await?;
    if let Some(images) = &registry.images {
        names.extend(images.names().await);
        names.sort();
        names.dedup();
    }
    // Only what the caller may read: a name is information too.
    let auth = registry.auth();
    let names: Vec<String> = names
        .iter()
        .filter(|n| auth.may(registry.access.auth_reads, user, n, Right::Read))
        .map(|n| n.to_string())
        .collect();
    pagination::respond(
        "/v2/_catalog",
        &page,
        &names,
        |page| json!({ "repositories": page }),
    )
}
