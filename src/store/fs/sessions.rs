//! Upload sessions of a directory store: they live in this process. A session is a store
//! temp file fed in order and hashed as bytes arrive, so its blob is never read back to be
//! checked; each holds its file's lock, so if the process dies the next `Store::open`
//! removes the file. A session's async lock is held from a request's checkout to its
//! checkin: two requests cannot interleave their bytes. The caps count sessions open and
//! being opened at once, so concurrent requests cannot all squeeze past them.

use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::digest::Algorithm;
use crate::reference::Name;
use crate::store::sessions::{
    Checkin, Checkout, Fed, Leftovers, Progress, Refused, SessionEngine, SessionLimits, Ticket,
    new_id, ticket,
};
use crate::store::{BlobWriter, Result, Store, StoreError, lock};

pub(crate) struct LocalSessions {
    store: Store,
    limits: SessionLimits,
    table: Mutex<Table>,
}

/// The sessions, and how many each client address holds (or is opening: admitted, its temp
/// file being made).
#[derive(Default)]
struct Table {
    sessions: HashMap<String, Arc<Slot>>,
    /// Admitted but not yet in `sessions`.
    opening: usize,
    per_client: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: &str) -> Option<Arc<Slot>> {
        let slot = self.sessions.remove(id)?;
        self.release(slot.client);
        Some(slot)
    }

    fn release(&mut self, client: IpAddr) {
        if let Some(n) = self.per_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&client);
            }
        }
    }
}

/// One session: its state behind the async lock (`None` once ended; the writer, and its
/// temp file, go when the last holder lets go), its progress, and who opened it.
struct Slot {
    state: Arc<tokio::sync::Mutex<Option<State>>>,
    progress: Arc<Progress>,
    client: IpAddr,
}

struct State {
    /// Sessions belong to the repository they were opened in.
    name: Name,
    /// The temp file, hashing as it goes.
    writer: BlobWriter,
}

/// A checkout: the session's lock, held until the request is done with it.
struct LocalTicket {
    id: String,
    guard: tokio::sync::OwnedMutexGuard<Option<State>>,
}

impl Ticket for LocalTicket {
    fn writer(&mut self) -> Option<&mut BlobWriter> {
        self.guard.as_mut().map(|s| &mut s.writer)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// A place taken under the caps for a session being opened; given back if it never opens.
struct Admission<'a> {
    sessions: &'a LocalSessions,
    client: IpAddr,
    /// Set once the session is in the table (its place is then the session's).
    opened: bool,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut table = self.sessions.table();
        table.opening -= 1;
        if !self.opened {
            table.release(self.client);
        }
    }
}

impl LocalSessions {
    pub(crate) fn new(store: Store, limits: SessionLimits) -> LocalSessions {
        LocalSessions {
            store,
            limits,
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// Takes a place for a new session under the caps, or says why not.
    fn admit(&self, client: IpAddr) -> std::result::Result<Admission<'_>, Refused> {
        let mut table = self.table();
        let theirs = table.per_client.get(&client).copied().unwrap_or(0);
        let open = table.sessions.len() + table.opening;
        if open >= self.limits.max_sessions {
            return Err(Refused::Full(open as u64));
        }
        if theirs >= self.limits.max_per_client {
            return Err(Refused::ClientFull(theirs as u64));
        }
        table.opening += 1;
        *table.per_client.entry(client).or_default() += 1;
        Ok(Admission {
            sessions: self,
            client,
            opened: false,
        })
    }

    /// The session's slot, and its lock once taken, if it is open and `name`'s.
    async fn take(&self, name: &Name, id: &str) -> Option<LocalTicket> {
        let slot = self.table().sessions.get(id).cloned()?;
        let guard = slot.state.clone().lock_owned().await;
        match guard.as_ref() {
            Some(state) if &state.name == name => Some(LocalTicket {
                id: id.to_owned(),
                guard,
            }),
            _ => None,
        }
    }

    /// Ends the session: out of the table, its state out of its lock (dropped by the caller).
    fn end(&self, ticket: &mut LocalTicket) -> Option<State> {
        self.table().remove(&ticket.id);
        ticket.guard.take()
    }
}

#[async_trait::async_trait]
impl SessionEngine for LocalSessions {
    async fn open(
        &self,
        name: &Name,
        algorithm: Algorithm,
        client: IpAddr,
    ) -> Result<std::result::Result<String, Refused>> {
        let mut admission = match self.admit(client) {
            Ok(a) => a,
            Err(refused) => return Ok(Err(refused)),
        };
        let writer = self.store.new_blob_with(algorithm).await?;
        let id = new_id().map_err(|e| StoreError::Io {
            action: "draw a random upload id",
            path: std::path::PathBuf::new(),
            source: e,
        })?;
        let slot = Slot {
            state: Arc::new(tokio::sync::Mutex::new(Some(State {
                name: name.clone(),
                writer,
            }))),
            progress: Arc::new(Progress::default()),
            client,
        };
        self.table().sessions.insert(id.clone(), Arc::new(slot));
        admission.opened = true;
        Ok(Ok(id))
    }

    async fn checkout(&self, name: &Name, id: &str) -> Result<Option<Checkout>> {
        let progress = match self.table().sessions.get(id) {
            Some(slot) => slot.progress.clone(),
            None => return Ok(None),
        };
        Ok(self.take(name, id).await.map(|ticket| Checkout {
            ticket: Box::new(ticket),
            progress,
        }))
    }

    async fn checkin(&self, checkout: Checkout, fed: Fed) -> Result<Checkin> {
        let mut ticket = ticket::<LocalTicket>(checkout)?;
        if fed == Fed::Broken {
            drop(self.end(&mut ticket));
            return Ok(Checkin::Ended);
        }
        let Some(state) = ticket.guard.as_mut() else {
            return Ok(Checkin::Ended);
        };
        // Waiting for its next chunk, a session holds its file but not its write buffer.
        match state.writer.park().await {
            Ok(()) => Ok(Checkin::At(state.writer.written())),
            Err(e) => {
                drop(self.end(&mut ticket));
                Err(e)
            }
        }
    }

    async fn finish(
        &self,
        checkout: Checkout,
    ) -> Result<std::result::Result<(BlobWriter, Leftovers), u64>> {
        let mut ticket = ticket::<LocalTicket>(checkout)?;
        match self.end(&mut ticket) {
            Some(state) => Ok(Ok((
                state.writer,
                Leftovers {
                    parts: Vec::new(),
                    store: self.store.clone(),
                },
            ))),
            None => Ok(Err(0)),
        }
    }

    async fn state(&self, name: &Name, id: &str) -> Result<Option<u64>> {
        Ok(self
            .take(name, id)
            .await
            .and_then(|t| t.guard.as_ref().map(|s| s.writer.written())))
    }

    async fn cancel(&self, name: &Name, id: &str) -> Result<bool> {
        let Some(mut ticket) = self.take(name, id).await else {
            return Ok(false);
        };
        Ok(self.end(&mut ticket).is_some())
    }

    /// Drops sessions that made no progress for the timeout; their temp files go with them.
    /// One a request is still feeding (too slowly) is cancelled: the request ends, and with
    /// it the session.
    async fn sweep(&self) {
        let mut table = self.table();
        let expired: Vec<String> = table
            .sessions
            .iter()
            .filter(|(_, slot)| slot.progress.idle() >= self.limits.timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(slot) = table.remove(&id) {
                slot.progress.cancel();
                tracing::info!(session = id.as_str(), "upload expired");
            }
        }
    }

    fn open_now(&self) -> Option<usize> {
        Some(self.table().sessions.len())
    }
}
