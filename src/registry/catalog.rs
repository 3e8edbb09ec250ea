//! `GET /v2/_catalog`: every repository in the store, sorted, paginated.

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
    let names: Vec<String> = registry
        .store()
        .repositories()
        .await?
        .iter()
        .map(|n| n.to_string())
        .collect();
    pagination::respond(
        "/v2/_catalog",
        &page,
        &names,
        |page| json!({ "repositories": page }),
    )
}
