//! Upload sessions: a blob pushed in several requests (`POST`, `PATCH`..., `PUT`), kept by the
//! store's engine. The registry speaks HTTP and feeds bytes; how a session lives between two
//! requests is the engine's:
//!
//! | engine | where a session lives | file |
//! |---|---|---|
//! | a directory | in this process: a locked temp file, hashed as bytes arrive | `fs/sessions.rs` |
//! | object storage + PostgreSQL | in the database: the running hash and the parts written, so any replica goes on with it | `postgres/sessions.rs` |
//!
//! A request [`Sessions::checkout`]s a session, which gives it the session's [`BlobWriter`]
//! positioned at its end; it feeds the writer, then [`Sessions::checkin`]s it (the session
//! goes on) or [`Sessions::finish`]es it (the session ends and the writer is the caller's to
//! commit). Two requests on one session never both append: the directory engine holds the
//! session's lock from checkout to checkin, the shared one moves it only if nothing else did
//! meanwhile ([`Checkin::Raced`] otherwise).

use std::any::Any;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{BlobWriter, Result};
use crate::digest::Algorithm;
use crate::reference::Name;

/// The caps and timeout of a store's upload sessions.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// A session receiving less than `MIN_PROGRESS` bytes in this long is ended.
    pub timeout: Duration,
    /// Most sessions open at once, and per client address.
    pub max_sessions: usize,
    pub max_per_client: usize,
}

impl SessionLimits {
    /// How often expired sessions should be looked for: often enough that a session outlives
    /// its timeout by at most a quarter of it (and at most a minute).
    pub fn sweep_interval(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(60))
    }
}

/// Bytes a session must receive per timeout to stay open: a client that trickles a byte now
/// and then does not keep a session (and its file or parts) forever.
pub const MIN_PROGRESS: u64 = 64 << 10;

/// Why a new session was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// As many sessions as the cap allows are open (how many).
    Full(u64),
    /// This client holds as many as it may (how many).
    ClientFull(u64),
}

/// How a request feeding a session is watched: bytes received keep it alive; one that
/// receives too little for the timeout is cancelled, and the request feeding it ends.
#[derive(Debug)]
pub struct Progress {
    touched: Mutex<Instant>,
    /// Bytes received since `touched`.
    progress: AtomicU64,
    cancelled: tokio_util::sync::CancellationToken,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            touched: Mutex::new(Instant::now()),
            progress: AtomicU64::new(0),
            cancelled: tokio_util::sync::CancellationToken::new(),
        }
    }
}

impl Progress {
    /// Counts received bytes; enough of them move the idle clock.
    pub fn received(&self, n: u64) {
        let total = self.progress.fetch_add(n, Ordering::Relaxed) + n;
        if total >= MIN_PROGRESS {
            self.progress.store(0, Ordering::Relaxed);
            *super::lock(&self.touched) = Instant::now();
        }
    }

    /// Resolves once the session is cancelled (expired, or ended by another request).
    pub async fn cancelled(&self) {
        self.cancelled.cancelled().await
    }

    /// How long since the last progress.
    pub(crate) fn idle(&self) -> Duration {
        super::lock(&self.touched).elapsed()
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.cancel();
    }

    /// Cancels once no progress was made for `timeout` (checked every `every`); never
    /// returns: run it beside the request that feeds the session.
    pub async fn watch(&self, timeout: Duration, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if self.idle() >= timeout {
                self.cancel();
            }
        }
    }
}

/// A session taken by one request: its writer, at the session's end, and how it is watched.
/// Dropped without a checkin, the session is as the request left it (the directory engine)
/// or as it was before the request (the shared one).
pub struct Checkout {
    /// The engine's own state of the checkout.
    pub(crate) ticket: Box<dyn Ticket>,
    pub progress: std::sync::Arc<Progress>,
}

impl Checkout {
    /// The session's writer: append the request's bytes here. An error only if the session
    /// ended under the checkout (which the engines do not do).
    pub fn writer(&mut self) -> Result<&mut BlobWriter> {
        self.ticket
            .writer()
            .ok_or(super::StoreError::Unsupported("the upload session ended"))
    }
}

/// An engine's checkout: the writer it lends, and what it needs back at checkin.
pub(crate) trait Ticket: Send {
    fn writer(&mut self) -> Option<&mut BlobWriter>;
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// The engine's own ticket back from a checkout; an error if the checkout came from
/// another engine.
pub(crate) fn ticket<T: Any>(checkout: Checkout) -> Result<Box<T>> {
    checkout
        .ticket
        .into_any()
        .downcast::<T>()
        .map_err(|_| super::StoreError::Unsupported("a session checked out of another store"))
}

/// What became of a request's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// Appended, all of them.
    Whole,
    /// Refused before any byte was taken: the session goes on where it was.
    Refused,
    /// Cut short or too large: the session cannot become its blob and ends.
    Broken,
}

/// Where a session stands after a checkin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkin {
    /// At this many bytes.
    At(u64),
    /// Another request moved or ended it meanwhile; it was at this many bytes when this one
    /// began, and this request's bytes are not in it.
    Raced(u64),
    /// It ended (its bytes were `Fed::Broken`).
    Ended,
}

/// What is left of a finished session once its blob is committed (a shared session's
/// parts), to be removed then.
pub struct Leftovers {
    pub(crate) parts: Vec<String>,
    pub(crate) store: super::Store,
}

impl Leftovers {
    pub async fn discard(self) {
        self.store.discard_parts(&self.parts).await;
    }
}

/// A store engine's upload sessions.
#[async_trait::async_trait]
pub(crate) trait SessionEngine: Send + Sync {
    /// A new session of repository `name` hashing with `algorithm`, counted against
    /// `client`'s cap; its id (32 hex digits), or why not.
    async fn open(
        &self,
        name: &Name,
        algorithm: Algorithm,
        client: IpAddr,
    ) -> Result<std::result::Result<String, Refused>>;
    /// Session `id` of `name`, taken for one request; `None` if there is none.
    async fn checkout(&self, name: &Name, id: &str) -> Result<Option<Checkout>>;
    /// Gives the session back after a request fed it.
    async fn checkin(&self, checkout: Checkout, fed: Fed) -> Result<Checkin>;
    /// Ends the session after its last request: its writer, to commit, and what to remove
    /// once committed; `Err(at)` if another request moved it meanwhile.
    async fn finish(
        &self,
        checkout: Checkout,
    ) -> Result<std::result::Result<(BlobWriter, Leftovers), u64>>;
    /// How many bytes session `id` of `name` holds; `None` if there is none.
    async fn state(&self, name: &Name, id: &str) -> Result<Option<u64>>;
    /// Ends session `id` of `name` (its bytes go); whether there was one.
    async fn cancel(&self, name: &Name, id: &str) -> Result<bool>;
    /// Ends the sessions idle past the timeout.
    async fn sweep(&self);
    /// Sessions open now (this process's), if the engine counts them here.
    fn open_now(&self) -> Option<usize>;
}

/// A store's upload sessions, whatever its engine. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    engine: std::sync::Arc<dyn SessionEngine>,
    limits: SessionLimits,
}

impl Sessions {
    pub(crate) fn new(engine: std::sync::Arc<dyn SessionEngine>, limits: SessionLimits) -> Self {
        Sessions { engine, limits }
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    pub async fn open(
        &self,
        name: &Name,
        algorithm: Algorithm,
        client: IpAddr,
    ) -> Result<std::result::Result<String, Refused>> {
        self.engine.open(name, algorithm, client).await
    }

    pub async fn checkout(&self, name: &Name, id: &str) -> Result<Option<Checkout>> {
        self.engine.checkout(name, id).await
    }

    pub async fn checkin(&self, checkout: Checkout, fed: Fed) -> Result<Checkin> {
        self.engine.checkin(checkout, fed).await
    }

    pub async fn finish(
        &self,
        checkout: Checkout,
    ) -> Result<std::result::Result<(BlobWriter, Leftovers), u64>> {
        self.engine.finish(checkout).await
    }

    pub async fn state(&self, name: &Name, id: &str) -> Result<Option<u64>> {
        self.engine.state(name, id).await
    }

    pub async fn cancel(&self, name: &Name, id: &str) -> Result<bool> {
        self.engine.cancel(name, id).await
    }

    pub async fn sweep(&self) {
        self.engine.sweep().await
    }

    pub fn open_now(&self) -> Option<usize> {
        self.engine.open_now()
    }
}

/// A fresh random session id (32 hex digits), from the kernel's generator.
pub fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(hex::encode(bytes))
}
