//! Upload sessions of a shared store: kept in the metadata database, not in a replica, so a
//! session begun on one replica goes on and ends on any other (a load balancer need not be
//! sticky, and a replica that dies mid-upload loses only the request it was serving).
//!
//! A checkout resumes the session from its saved state (the running hash, the bytes so far,
//! the objects holding them); the request's bytes go to one more part, which the checkin
//! completes and saves as the new state, only if the session is still where it was when the
//! request began: two requests racing on one session (on two replicas) cannot both append;
//! the loser's part is removed and it is told so. A finish ends the session the same way
//! before the parts are joined and the blob committed by digest.
//!
//! The caps on open sessions count the database's sessions, so they hold across replicas;
//! sessions idle past the timeout are ended by whichever replica sweeps first.

use std::any::Any;
use std::net::IpAddr;
use std::sync::Arc;

use crate::digest::Algorithm;
use crate::reference::Name;
use crate::store::sessions::{
    Checkin, Checkout, Fed, Leftovers, Progress, Refused, SessionEngine, SessionLimits, Ticket,
    new_id, ticket,
};
use crate::store::{BlobWriter, Result, Store, StoreError, Suspended};

pub(crate) struct SharedSessions {
    store: Store,
    limits: SessionLimits,
}

/// A checkout: the state the session had when the request began, and the writer resumed
/// from it (its bytes go to a new part).
struct SharedTicket {
    id: String,
    before: Suspended,
    writer: BlobWriter,
}

impl Ticket for SharedTicket {
    fn writer(&mut self) -> Option<&mut BlobWriter> {
        Some(&mut self.writer)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl SharedSessions {
    pub(crate) fn new(store: Store, limits: SessionLimits) -> SharedSessions {
        SharedSessions { store, limits }
    }

    fn meta(&self) -> Result<&super::Metadata> {
        self.store
            .shared()
            .map(|s| &*s.meta)
            .ok_or(StoreError::Unsupported("not a shared store"))
    }

    /// Session `id` of `name` as saved; `None` if there is none.
    async fn load(&self, name: &Name, id: &str) -> Result<Option<Suspended>> {
        Ok(match self.meta()?.upload(id).await? {
            Some((repository, state)) if repository == name.as_str() => Some(state),
            _ => None,
        })
    }
}

#[async_trait::async_trait]
impl SessionEngine for SharedSessions {
    async fn open(
        &self,
        name: &Name,
        algorithm: Algorithm,
        client: IpAddr,
    ) -> Result<std::result::Result<String, Refused>> {
        let id = new_id().map_err(|e| StoreError::Io {
            action: "draw a random upload id",
            path: std::path::PathBuf::new(),
            source: e,
        })?;
        let caps = (self.limits.max_sessions, self.limits.max_per_client);
        let opened = self
            .meta()?
            .upload_open(
                &id,
                name,
                &client.to_string(),
                &Suspended::new(algorithm),
                caps,
            )
            .await?;
        Ok(opened.map(|()| id))
    }

    async fn checkout(&self, name: &Name, id: &str) -> Result<Option<Checkout>> {
        let Some(before) = self.load(name, id).await? else {
            return Ok(None);
        };
        let writer = self.store.resume_blob(&before)?;
        Ok(Some(Checkout {
            ticket: Box::new(SharedTicket {
                id: id.to_owned(),
                before,
                writer,
            }),
            // Watched for this request alone: the session's own clock is its row's.
            progress: Arc::new(Progress::default()),
        }))
    }

    async fn checkin(&self, checkout: Checkout, fed: Fed) -> Result<Checkin> {
        let ticket = ticket::<SharedTicket>(checkout)?;
        let SharedTicket { id, before, writer } = *ticket;
        if fed != Fed::Whole {
            // A body cut short leaves the session where it was (its part goes with the
            // writer): unlike a session in memory, the saved one cannot be half-fed.
            return Ok(Checkin::At(before.written));
        }
        let after = writer.suspend().await?;
        if !self
            .meta()?
            .upload_advance(&id, before.written, &after)
            .await?
        {
            // Lost to another request: the part this one added goes.
            let new: Vec<String> = after
                .parts
                .iter()
                .filter(|p| !before.parts.contains(p))
                .cloned()
                .collect();
            self.store.discard_parts(&new).await;
            return Ok(Checkin::Raced(before.written));
        }
        Ok(Checkin::At(after.written))
    }

    async fn finish(
        &self,
        checkout: Checkout,
    ) -> Result<std::result::Result<(BlobWriter, Leftovers), u64>> {
        let ticket = ticket::<SharedTicket>(checkout)?;
        let SharedTicket { id, before, writer } = *ticket;
        // Ended first: from here the parts are this request's alone.
        if !self.meta()?.upload_end(&id, before.written).await? {
            return Ok(Err(before.written));
        }
        Ok(Ok((
            writer,
            Leftovers {
                parts: before.parts,
                store: self.store.clone(),
            },
        )))
    }

    async fn state(&self, name: &Name, id: &str) -> Result<Option<u64>> {
        Ok(self.load(name, id).await?.map(|s| s.written))
    }

    async fn cancel(&self, name: &Name, id: &str) -> Result<bool> {
        let Some(state) = self.load(name, id).await? else {
            return Ok(false);
        };
        if !self.meta()?.upload_end(id, state.written).await? {
            return Ok(false);
        }
        self.store.discard_parts(&state.parts).await;
        Ok(true)
    }

    /// Ends the sessions idle for the upload timeout, and removes their parts.
    async fn sweep(&self) {
        let Ok(meta) = self.meta() else { return };
        match meta.uploads_expire(self.limits.timeout).await {
            Ok(parts) => self.store.discard_parts(&parts).await,
            Err(e) => tracing::warn!(error = %e, "cannot sweep expired uploads"),
        }
    }

    fn open_now(&self) -> Option<usize> {
        None
    }
}
