//! Upload sessions of a shared store: kept in the metadata database, not in a replica, so a
//! session begun on one replica goes on and ends on any other (a load balancer need not be
//! sticky, and a replica that dies mid-upload loses only the request it was serving).
//!
//! Each request resumes the session from its saved state (the running hash, the bytes so
//! far, the objects holding them), streams its body into one more part, completes that part
//! and saves the new state, only if the session is still where it was when the request
//! began: two requests racing on one session (on two replicas) cannot both append; the
//! loser gets 416 and its part is removed. `PUT` ends the session the same way before it
//! joins the parts and commits the blob by digest.
//!
//! The caps on open sessions count the database's sessions, so they hold across replicas;
//! sessions idle past `--upload-timeout` are ended by whichever replica sweeps first.

use std::net::IpAddr;

use hyper::{HeaderMap, Response, StatusCode};
use serde_json::json;

use super::{
    Failure, Query, Slot, Uploads, accepted, append, commit, upload_unknown, with_upload_headers,
};
use crate::digest::Algorithm;
use crate::reference::Name;
use crate::registry::Registry;
use crate::registry::body::{Body, RequestBody};
use crate::registry::errors::{Code, RegistryError};
use crate::registry::router::UploadId;
use crate::store::postgres::{Metadata, Refused};
use crate::store::{BlobWriter, Suspended};

fn sessions(registry: &Registry) -> Result<&Metadata, RegistryError> {
    registry
        .store()
        .sessions()
        .ok_or_else(|| RegistryError::new(Code::Unknown, "not a shared store"))
}

/// `POST` without a digest: a new session in the database.
pub async fn open(
    registry: &Registry,
    uploads: &Uploads,
    name: &Name,
    algorithm: Algorithm,
    client: IpAddr,
) -> Result<Response<Body>, RegistryError> {
    let id = UploadId::random().map_err(|e| {
        tracing::error!(error = %e, "cannot draw a random upload id");
        RegistryError::new(Code::Unknown, "internal error starting an upload")
    })?;
    let caps = (uploads.max_sessions, uploads.max_per_client);
    let opened = sessions(registry)?
        .upload_open(
            id.as_str(),
            name,
            &client.to_string(),
            &Suspended::new(algorithm),
            caps,
        )
        .await?;
    match opened {
        Ok(()) => accepted(name, &id, 0),
        Err(why) => Err(super::too_many(match why {
            Refused::Full(open) => {
                format!("{open} uploads are open, the most this registry takes at once")
            }
            Refused::ClientFull(theirs) => {
                format!("this client has {theirs} uploads open, the most one client may")
            }
        })),
    }
}

/// The session `id` of `name` as saved, or 404.
async fn load(registry: &Registry, name: &Name, id: &UploadId) -> Result<Suspended, RegistryError> {
    match sessions(registry)?.upload(id.as_str()).await? {
        Some((repository, state)) if repository == name.as_str() => Ok(state),
        _ => Err(upload_unknown(name, id)),
    }
}

/// Appends the request's body to the session as one more part and saves it; the new
/// offset. A session another request moved meanwhile is left as that request left it.
async fn feed(
    registry: &Registry,
    uploads: &Uploads,
    name: &Name,
    id: &UploadId,
    request: &HeaderMap,
    body: &mut RequestBody,
) -> Result<(Suspended, BlobWriter), RegistryError> {
    let before = load(registry, name, id).await?;
    let mut writer = registry.store().resume_blob(&before)?;
    // A request that trickles is ended as a session in memory would be (`Uploads::sweep`).
    let slot = Slot::transient();
    let appended = tokio::select! {
        biased;
        r = append(&mut writer, name, id, request, body, uploads.max_size, Some(&slot)) => r,
        () = slot.watch(uploads.timeout, uploads.sweep_interval()) => unreachable!("watch never returns"),
    };
    match appended {
        Ok(_) => Ok((before, writer)),
        // A body cut short leaves the session where it was (its part goes with the writer):
        // unlike a session in memory, the saved one cannot be half-fed.
        Err(Failure::Keep(e) | Failure::End(e)) => Err(e),
    }
}

/// `PATCH`: one more chunk.
pub async fn patch(
    registry: &Registry,
    uploads: &Uploads,
    name: &Name,
    id: &UploadId,
    request: &HeaderMap,
    body: &mut RequestBody,
) -> Result<Response<Body>, RegistryError> {
    let (before, writer) = feed(registry, uploads, name, id, request, body).await?;
    let after = writer.suspend().await?;
    if !sessions(registry)?
        .upload_advance(id.as_str(), before.written, &after)
        .await?
    {
        discard_new(registry, &before, &after).await;
        return Err(raced(name, id, before.written));
    }
    accepted(name, id, after.written)
}

/// `PUT ?digest=D`: the last chunk, if any, then the blob is committed.
pub async fn put(
    registry: &Registry,
    uploads: &Uploads,
    name: &Name,
    id: &UploadId,
    query: &Query,
    request: &HeaderMap,
    body: &mut RequestBody,
) -> Result<Response<Body>, RegistryError> {
    let digest = super::closing_digest(query)?;
    let (before, writer) = feed(registry, uploads, name, id, request, body).await?;
    // Ended first: from here the parts are this request's alone.
    if !sessions(registry)?
        .upload_end(id.as_str(), before.written)
        .await?
    {
        return Err(raced(name, id, before.written));
    }
    let result = commit(registry, name, writer, &digest).await;
    registry.store().discard_parts(&before.parts).await;
    result
}

/// `GET`: how far the session got.
pub async fn status(
    registry: &Registry,
    name: &Name,
    id: &UploadId,
) -> Result<Response<Body>, RegistryError> {
    let state = load(registry, name, id).await?;
    let mut response = accepted(name, id, state.written)?;
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// `DELETE`: the session ends and its parts are removed.
pub async fn cancel(
    registry: &Registry,
    name: &Name,
    id: &UploadId,
) -> Result<Response<Body>, RegistryError> {
    let state = load(registry, name, id).await?;
    if !sessions(registry)?
        .upload_end(id.as_str(), state.written)
        .await?
    {
        return Err(upload_unknown(name, id));
    }
    registry.store().discard_parts(&state.parts).await;
    tracing::info!(%name, session = id.as_str(), "upload cancelled");
    Ok(crate::registry::empty(StatusCode::NO_CONTENT))
}

/// Ends the sessions idle for the upload timeout, and removes their parts.
pub async fn sweep(registry: &Registry, uploads: &Uploads) {
    let Ok(meta) = sessions(registry) else { return };
    match meta.uploads_expire(uploads.timeout).await {
        Ok(parts) => registry.store().discard_parts(&parts).await,
        Err(e) => tracing::warn!(error = %e, "cannot sweep expired uploads"),
    }
}

/// Removes the part a request added to a session it then lost to another request.
async fn discard_new(registry: &Registry, before: &Suspended, after: &Suspended) {
    let new: Vec<String> = after
        .parts
        .iter()
        .filter(|p| !before.parts.contains(p))
        .cloned()
        .collect();
    registry.store().discard_parts(&new).await;
}

/// 416: another request moved (or ended) the session while this one was feeding it.
fn raced(name: &Name, id: &UploadId, offset: u64) -> RegistryError {
    let e = RegistryError::new(
        Code::BlobUploadInvalid,
        "another request changed this upload meanwhile; ask where it stands (GET) and go on from there",
    )
    .status(StatusCode::RANGE_NOT_SATISFIABLE)
    .detail(json!({ "session": id.as_str() }));
    with_upload_headers(e, name, id, offset)
}
