//! `GET /v2/_catalog`: every repository in the store or on demand that the caller may read,
//! sorted, paginated.

use hyper::Response;
use serde_json::json;

use super::Registry;
use super::body::Body;
use super::errors::RegistryError;
use super::pagination::{self, Page};
use super::rules::Right;
use crate::reference::Name;

pub async fn get(
    registry: &Registry,
    query: Option<&str>,
    caller: super::authorize::Caller<'_>,
) -> Result<Response<Body>, RegistryError> {
    let page = Page::parse(query)?;
    // One more than the page holds says whether a next page exists.
    let want = page.limit() + 1;
    let served = match &registry.images {
        Some(images) => images.names().await,
        None => Vec::new(),
    };
    let auth = registry.auth();
    let mut names: Vec<String> = Vec::with_capacity(want);
    let mut cursor = page.last.clone();
    // The store gives its names page by page from the cursor (not the whole store per
    // page); the on-demand names, which are in memory, are merged into each batch. A
    // caller who may read few repositories makes this take several batches.
    loop {
        let batch = registry
            .store()
            .repositories_after(cursor.as_deref(), want)
            .await?;
        // A full batch ends where the store's next one begins; a short one ends the store.
        let end = batch.last().filter(|_| batch.len() == want);
        let from = cursor.as_deref();
        let mut merged: Vec<&Name> = batch.iter().collect();
        merged.extend(
            served
                .iter()
                .filter(|n| from.is_none_or(|c| n.as_str() > c) && end.is_none_or(|e| *n <= e)),
        );
        merged.sort();
        merged.dedup();
        // Only what the caller may read: a name is information too.
        for name in merged {
            if names.len() == want {
                break;
            }
            // With an outside issuer's tokens, the catalog scope lists every repository (as
            // distribution does); the built-in issuer's lists what the rules let its
            // subject read.
            let auth_reads = registry.access.auth_reads;
            let listed = match (&auth.token, &registry.access.issuer) {
                (Some(_), Some(_)) => auth.may_by_rules(auth_reads, caller.user, name, Right::Read),
                (Some(_), None) => true,
                (None, _) => auth.may(auth_reads, caller, name, Right::Read),
            };
            if listed {
                names.push(name.to_string());
            }
        }
        match end {
            Some(end) if names.len() < want => cursor = Some(end.to_string()),
            _ => break,
        }
    }
    pagination::respond(
        "/v2/_catalog",
        &page,
        &names,
        |page| json!({ "repositories": page }),
    )
}
