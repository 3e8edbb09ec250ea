//! `GET /v2/_catalog`: every repository in the store or on demand, sorted, paginated.

use hyper::Response;
use serde_json::json;

use super::Registry;
use super::body::Body;
use super::errors::RegistryError;
use super::pagination::{self, Page};

pub async fn get(
    registry: &Registry,
    query: Option<&str>,
) -> Result<Response<Body>, RegistryError> {
    let page = Page::parse(query)?;
    let mut names = registry.store().repositories().await?;
    if let Some(images) = &registry.images {
        names.extend(images.names().await);
        names.sort();
        names.dedup();
    }
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    pagination::respond(
        "/v2/_catalog",
        &page,
        &names,
        |page| json!({ "repositories": page }),
    )
}
