//! The registry: the OCI distribution API (v1.1) over the store, with hyper.
//!
//! | file | resource |
//! |---|---|
//! | `router.rs` | path → resource, validating names, tags, digests and upload ids |
//! | `base.rs` | `GET /v2/` |
//! | `manifests.rs` | `/v2/<name>/manifests/<reference>`: `Accept` negotiation; push, delete |
//! | `blobs.rs` | `/v2/<name>/blobs/<digest>`, streamed, with `Range`; delete |
//! | `uploads/` | `/v2/<name>/blobs/uploads/...`: pushing blobs, whole, chunked or mounted (the sessions are the store's) |
//! | `referrers.rs` | `/v2/<name>/referrers/<digest>` |
//! | `tags.rs`, `catalog.rs` | the two paginated lists |
//! | `auth.rs` | basic authentication against an htpasswd file |
//! | `authorize.rs` | who may do what per request: what it needs, the users and rules in force, 401/403/429 |
//! | `rules.rs` | per-repository rights of users and anonymous clients |
//! | `token.rs` | Docker registry tokens: the Bearer challenge, the check of an issuer's JWTs |
//! | `issuer.rs` | the built-in token issuer, `/token` |
//! | `notify.rs` | notifications: events of answered requests, queued and sent per endpoint |
//! | `health.rs` | `/healthz`, `/readyz`, and the metrics port |
//! | `tls.rs` | rustls, its certificate reloaded when the files change |
//! | `errors.rs` | OCI error bodies and their statuses |
//! | `body.rs` | response bodies and the per-request access log |
//! | `mapped.rs` | blob bodies as memory maps of the file |
//! | `mirrored.rs` | repositories of a pull-through mirror: fetched before they are read, never written |
//! | `pagination.rs` | `n` and `last` of the two lists |
//! | `server.rs`, `conn.rs` | the listener, connection limits and timeouts |
//!
//! Reads go to the store, and to [`OnDemand`] for the images it packs on request. Writes
//! (off unless [`Access::push`]) stream into the store's temp files and commit by digest.
//! Repositories are scoped: a blob or manifest is served through a repository only if it was
//! pushed, mounted or packed into it (the store's links), though its bytes are stored once.

mod auth;
mod authorize;
use authorize::Auth;
mod base;
mod blobs;
mod body;
mod catalog;
mod conn;
mod errors;
mod handle;
mod health;
pub mod issuer;
mod manifests;
mod mapped;
mod mirrored;
pub mod notify;
mod pagination;
mod referrers;
mod router;
mod rules;
mod server;
mod tags;
mod tls;
pub mod token;
mod ui;
mod uploads;
pub mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::digest::Digest;
use crate::image;
use crate::ondemand::OnDemand;
use crate::reference::{Name, Tag};
use crate::store::{Link, Pin, Store, StoreError};
pub use auth::{DEFAULT_FAILURES_PER_MINUTE, Htpasswd};
use body::{Body, Logged, RequestBody};
use conn::InFlight;
use errors::{Code, RegistryError};
use handle::{handle, not_allowed, read_only};
pub use health::serve_metrics;
use router::Route;
pub use rules::{Grant, Right, Rules};
pub use server::Server;
pub use tls::{Tls, TlsFiles};
use uploads::Uploads;

/// The tracing target of the access log, one line per request: `main` writes it apart from
/// the rest (batched, on a thread of its own).
pub const ACCESS_LOG: &str = "quinistry::access";

/// Manifests larger than this are not manifests (the spec lets registries cap them at 4 MiB).
const MAX_MANIFEST: u64 = 4 << 20;

/// How old an answer of the shared store's database may be and still serve a read while
/// the database cannot be reached (writes are refused meanwhile).
const STALE_IF_ERROR: Duration = Duration::from_secs(600);

/// How long a tag read from the store (or a repository seen to exist) is trusted before it
/// is read again. Tags moved by another process (`quinistry pack` into the same store) show
/// within this time. Reading per request instead costs a blocking-pool hop each, which
/// measured 14k instead of 32k manifest requests/s with wrk on 2 cores.
pub const TAG_TTL: Duration = Duration::from_secs(1);

/// Header every response carries; Docker checks it on `/v2/`.
const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// A client must send its request headers within this time, or the connection is closed
    /// (a slow-header client would otherwise hold a connection forever).
    pub header_read_timeout: Duration,
    /// Most connections open at once; more wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Most connections one client address may hold; past it, its idlest makes room, or the
    /// new one is closed if all of them are busy.
    pub max_connections_per_client: usize,
    /// A connection that sends nothing this long while none of its requests is being
    /// answered is closed (from the moment it connects).
    pub idle_timeout: Duration,
    /// A request body that brings less than `min_body_rate` bytes per second over a span
    /// this long (no byte at all, with a rate of 0) ends its request.
    pub body_timeout: Duration,
    pub min_body_rate: u64,
    /// A client that takes no byte of an answer this long loses its connection.
    pub write_timeout: Duration,
    /// How long shutdown waits for requests in flight before it closes what is left.
    pub shutdown_timeout: Duration,
    /// HTTP/2: streams one connection may have open.
    pub h2_max_streams: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_client: 256,
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            min_body_rate: 512,
            write_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            h2_max_streams: 32,
        }
    }
}

/// HTTP/2: bytes of answer hyper buffers per stream ahead of the client's window (its default
/// is 400 KiB, which 200 stalled streams turn into 80 MB per connection).
const H2_SEND_BUFFER: usize = 64 << 10;

/// Who may do what. The default is a read-only registry open to all.
#[derive(Clone)]
pub struct Access {
    /// Whether pushes and deletes are accepted at all.
    pub push: bool,
    /// Users who may write (and read, with `auth_reads`); `None` means no authentication.
    pub htpasswd: Option<Arc<Htpasswd>>,
    /// Reads need credentials too.
    pub auth_reads: bool,
    /// Largest blob a push may store.
    pub max_blob_size: Option<u64>,
    /// An upload session that receives less than 64 KiB in this long is dropped with its
    /// temp file.
    pub upload_timeout: Duration,
    /// Most upload sessions open at once, and per client address.
    pub max_uploads: usize,
    pub max_uploads_per_client: usize,
    /// Per-repository rights of the htpasswd users and of anonymous clients; `None`: every
    /// user may read and write everything, anonymous clients read unless `auth_reads`.
    pub rules: Option<Arc<Rules>>,
    /// Health checks get access-log lines too.
    pub log_health: bool,
    /// Docker registry tokens: when set, every request needs one (`token.rs`), and the
    /// htpasswd file and rules are the built-in issuer's, not the registry's.
    pub token: Option<Arc<token::Verifier>>,
    /// The built-in token issuer (`/token`), which logs users in with the htpasswd file and
    /// grants what the rules allow.
    pub issuer: Option<Arc<issuer::Issuer>>,
}

impl Default for Access {
    fn default() -> Access {
        Access {
            push: false,
            htpasswd: None,
            auth_reads: false,
            max_blob_size: None,
            upload_timeout: Duration::from_secs(3600),
            max_uploads: 1024,
            max_uploads_per_client: 64,
            rules: None,
            log_health: false,
            token: None,
            issuer: None,
        }
    }
}

/// A manifest document as served: the exact stored bytes and what they are.
pub struct Manifest {
    pub digest: Digest,
    pub bytes: Bytes,
    pub media_type: &'static str,
    /// The Docker schema 2 form of an OCI manifest, if the store holds one: found on first
    /// need, then kept (both are immutable blobs).
    docker_twin: tokio::sync::OnceCell<Option<Arc<Manifest>>>,
}

/// Shared state of all connections.
pub struct Registry {
    store: Store,
    /// Manifests by digest, parsed and hash-checked once. Blobs never change, so an entry never
    /// goes stale. Bounded by bytes: a client can push many 4 MiB manifests.
    manifests: std::sync::Mutex<ManifestCache>,
    /// Tags found in the store.
    tags: Recent<(Name, Tag), Digest>,
    /// Repositories found in the store.
    repositories: Recent<Name, ()>,
    /// Images packed on demand (`serve --image`, `--root`); they take precedence over the
    /// store's tags of the same name and tag.
    images: Option<Arc<OnDemand>>,
    /// Who may read and write. Its htpasswd file and rules are the ones at start; `auth`
    /// holds the current ones.
    access: Access,
    /// The users and the rules now: replaced whole when their files are read again.
    auth: RwLock<Auth>,
    /// Upload sessions; `None` when pushing is off.
    uploads: Option<Uploads>,
    /// Repository links found in the store. Only this process removes links (and forgets
    /// them here when it does), so a link once seen stays true; a new one is read at once.
    /// At most `REMEMBERED` of them.
    linked: RwLock<HashMap<(Name, Link, Digest), ()>>,
    /// Writes that change what a repository's tags and links mean to each other (a manifest
    /// push with its tags, a delete by digest with the tags it takes, a blob delete) hold the
    /// lock of their repository, so no interleaving leaves a tag naming an unlinked manifest.
    /// Striped: a fixed number of locks, a repository's chosen by the hash of its name, so
    /// their memory does not grow with the repositories.
    repository_locks: Vec<tokio::sync::Mutex<()>>,
    /// What `/readyz` says besides the store (shutting down, at the connection cap).
    health: health::Health,
    /// The open connections (the server's; here for the metrics to count).
    connections: Arc<conn::Connections>,
    /// With `--redirect` on a shared store: blob GETs answer 307 to a URL of the object
    /// valid this long, so bytes flow from storage to the client, not through us.
    redirect: Option<Duration>,
    /// Where events go (`notify.rs`); `None` without endpoints.
    notifier: Option<Arc<notify::Notifier>>,
    /// Pull-through mirrors (`crate::mirror`), by name prefix.
    mirrors: Option<Arc<crate::mirror::Mirrors>>,
    /// Whether the web page (`ui/`) is served.
    ui: bool,
    /// When the last collection in this process ended, and what it did (for the web page).
    last_gc: std::sync::Mutex<Option<(std::time::SystemTime, crate::store::gc::GcReport)>>,
    /// The collector's policy (`serve --gc-interval`), for the web page's estimate of what
    /// the next pass would free; `None`: the defaults.
    gc_policy: Option<crate::store::gc::Policy>,
    /// Held while the web page's estimate (a dry-run pass) runs: one at a time.
    estimating: tokio::sync::Mutex<()>,
    /// The web page's searches that may read the store's names at once (each reads them
    /// all on a store where few match); more wait.
    searches: tokio::sync::Semaphore,
}

/// A repository's write lock, held while it lives (see `Registry::lock_repository`).
struct RepositoryGuard<'a> {
    /// Dropped first: the replicas' lock is let go before this process's.
    _shared: Option<crate::store::postgres::AdvisoryLock>,
    _local: tokio::sync::MutexGuard<'a, ()>,
}

/// How many repository locks there are (two repositories may share one; they then wait for
/// each other's writes, which is harmless).
const REPOSITORY_LOCKS: usize = 64;

/// At most this many entries in each of the registry's maps of what the store said (tags,
/// repositories, links): the store itself has no bound, and a client can push millions of
/// small things. Past it a map starts over empty, which costs only store reads.
const REMEMBERED: usize = 100_000;

/// Inserts into a map of remembered store answers, starting it over when it is full.
fn remember<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= REMEMBERED && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, value);
}

/// What the store said recently about things that can change under us (tags, repositories),
/// trusted for a while (`TAG_TTL` over a local store; not at all over a shared one, where
/// it only serves reads while the database is down). Only things found are kept, so
/// something new is seen at once; at most `REMEMBERED` of them.
struct Recent<K, V>(RwLock<HashMap<K, (V, Instant)>>, Duration);

impl<K: Eq + std::hash::Hash + Clone, V: Clone> Recent<K, V> {
    /// Answers kept for `ttl` (zero: none kept).
    fn new(ttl: Duration) -> Self {
        Recent(RwLock::new(HashMap::new()), ttl)
    }

    /// The fresh cached value of `key`, else what `lookup` finds in the store (then cached).
    /// Records what this process itself just wrote (or, with `None`, removed).
    fn set(&self, key: &K, value: Option<V>) {
        let mut map = write(&self.0);
        match value {
            Some(v) => remember(&mut map, key.clone(), (v, Instant::now())),
            None => drop(map.remove(key)),
        }
    }

    async fn get<F>(&self, key: &K, lookup: F) -> Result<Option<V>, StoreError>
    where
        F: Future<Output = Result<Option<V>, StoreError>>,
    {
        if let Some((value, read_at)) = read(&self.0).get(key)
            && read_at.elapsed() < self.1
        {
            return Ok(Some(value.clone()));
        }
        let found = match lookup.await {
            Ok(found) => found,
            // The metadata database is down: what was read last serves reads meanwhile.
            Err(e) if e.unavailable() => match read(&self.0).get(key) {
                Some((value, read_at)) if read_at.elapsed() < STALE_IF_ERROR => {
                    return Ok(Some(value.clone()));
                }
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let mut map = write(&self.0);
        match &found {
            Some(value) => remember(&mut map, key.clone(), (value.clone(), Instant::now())),
            None => drop(map.remove(key)),
        }
        Ok(found)
    }
}

/// How many bytes of manifests the registry keeps parsed in memory (least recently used ones
/// go first): thousands of ordinary manifests, a handful of the largest (4 MiB).
const MANIFEST_CACHE_BYTES: usize = 64 << 20;

/// Parsed manifests, the least recently used dropped past a byte budget.
struct ManifestCache {
    entries: lru::LruCache<Digest, Arc<Manifest>>,
    /// Bytes of the documents held.
    bytes: usize,
    budget: usize,
}

impl ManifestCache {
    fn new(budget: usize) -> ManifestCache {
        ManifestCache {
            entries: lru::LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    fn get(&mut self, digest: &Digest) -> Option<Arc<Manifest>> {
        self.entries.get(digest).cloned()
    }

    fn insert(&mut self, manifest: Arc<Manifest>) {
        self.bytes += manifest.bytes.len();
        if let Some(old) = self.entries.put(manifest.digest.clone(), manifest) {
            self.bytes -= old.bytes.len();
        }
        while self.bytes > self.budget {
            match self.entries.pop_lru() {
                Some((_, gone)) => self.bytes -= gone.bytes.len(),
                None => break,
            }
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads a lock even if a panicking thread poisoned it: the maps hold plain cached values
/// that a panic cannot leave half-updated.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    pub fn new(store: Store) -> Registry {
        let ttl = if store.answers_keep() {
            TAG_TTL
        } else {
            Duration::ZERO
        };
        Registry {
            store,
            manifests: std::sync::Mutex::new(ManifestCache::new(MANIFEST_CACHE_BYTES)),
            tags: Recent::new(ttl),
            repositories: Recent::new(ttl),
            images: None,
            access: Access::default(),
            auth: RwLock::new(Auth::default()),
            uploads: None,
            linked: RwLock::new(HashMap::new()),
            repository_locks: (0..REPOSITORY_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            health: health::Health::default(),
            connections: Arc::default(),
            redirect: None,
            notifier: None,
            mirrors: None,
            ui: true,
            last_gc: std::sync::Mutex::new(None),
            gc_policy: None,
            estimating: tokio::sync::Mutex::new(()),
            searches: tokio::sync::Semaphore::new(2),
        }
    }

    /// The registry, redirecting blob GETs to object storage with URLs valid for `valid`
    /// (a shared store only; a local store serves its blobs itself).
    pub fn with_redirect(self, valid: Option<Duration>) -> Registry {
        Registry {
            redirect: valid.filter(|_| self.store.presigns()),
            ..self
        }
    }

    /// The registry sending events to `notifier`'s endpoints; images packed on demand are
    /// told to it too.
    pub fn with_notifier(self, notifier: Option<Arc<notify::Notifier>>) -> Registry {
        if let (Some(n), Some(images)) = (&notifier, &self.images) {
            let n = n.clone();
            images.on_packed(Arc::new(move |name, label, digest, size| {
                let tag = label.rsplit_once(':').map_or("latest", |(_, t)| t);
                n.packed(name, tag, &digest.to_string(), image::OCI_MANIFEST, size);
            }));
        }
        Registry { notifier, ..self }
    }

    /// The registry with pull-through mirrors: their repositories are read through them.
    pub fn with_mirrors(self, mirrors: Option<Arc<crate::mirror::Mirrors>>) -> Registry {
        Registry { mirrors, ..self }
    }

    /// Serves the web page at `/ui/` (on unless turned off).
    pub fn with_ui(self, ui: bool) -> Registry {
        Registry { ui, ..self }
    }

    /// The collector's policy, for the web page's estimate.
    pub fn with_gc_policy(self, policy: Option<crate::store::gc::Policy>) -> Registry {
        Registry {
            gc_policy: policy,
            ..self
        }
    }

    /// Records a collection's report, for the web page.
    pub fn collected(&self, report: &crate::store::gc::GcReport) {
        *lock(&self.last_gc) = Some((std::time::SystemTime::now(), report.clone()));
    }

    fn last_gc(&self) -> Option<(std::time::SystemTime, crate::store::gc::GcReport)> {
        lock(&self.last_gc).clone()
    }

    /// The notifier, for its metrics.
    pub fn notifier(&self) -> Option<&notify::Notifier> {
        self.notifier.as_deref()
    }

    /// How long a redirect's URL is valid, when blob GETs are redirected.
    fn redirect(&self) -> Option<Duration> {
        self.redirect
    }

    /// The write lock of repository `name` (see `repository_locks`); on a shared store,
    /// also the lock every replica takes for it.
    async fn lock_repository(&self, name: &Name) -> Result<RepositoryGuard<'_>, StoreError> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        let local = self.repository_locks[(h.finish() % REPOSITORY_LOCKS as u64) as usize]
            .lock()
            .await;
        let shared = self.store.lock_repository(name).await?;
        Ok(RepositoryGuard {
            _shared: shared,
            _local: local,
        })
    }

    /// The registry with these access rules (say, pushing on).
    pub fn with_access(self, access: Access) -> Registry {
        let uploads = access.push.then(|| {
            let limits = crate::store::sessions::SessionLimits {
                timeout: access.upload_timeout,
                max_sessions: access.max_uploads,
                max_per_client: access.max_uploads_per_client,
            };
            Uploads::new(self.store.sessions(limits), access.max_blob_size)
        });
        let auth = RwLock::new(Auth {
            htpasswd: access.htpasswd.clone(),
            rules: access.rules.clone(),
            token: access.token.clone(),
        });
        Registry {
            access,
            auth,
            uploads,
            ..self
        }
    }

    /// Replaces the users and the rules (their files were read again): the next request is
    /// judged by these; credentials remembered as good under the old file are forgotten with it.
    pub fn set_auth(&self, htpasswd: Option<Arc<Htpasswd>>, rules: Option<Arc<Rules>>) {
        let mut auth = write(&self.auth);
        auth.htpasswd = htpasswd;
        auth.rules = rules;
    }

    /// Replaces the keys tokens are checked with (their files were read again).
    pub fn set_token(&self, verifier: Arc<token::Verifier>) {
        write(&self.auth).token = Some(verifier);
    }

    fn auth(&self) -> Auth {
        read(&self.auth).clone()
    }

    /// The upload sessions; 405 when pushing is off.
    fn uploads(&self) -> Result<&Uploads, RegistryError> {
        self.uploads.as_ref().ok_or_else(read_only)
    }

    /// Whether repository `name` holds `digest` as `kind`.
    async fn is_linked(
        &self,
        name: &Name,
        kind: Link,
        digest: &Digest,
    ) -> Result<bool, StoreError> {
        let key = (name.clone(), kind, digest.clone());
        // Another replica may unlink it: a shared store's links are asked every time, and
        // what was seen serves only while its database cannot be reached.
        let shared = !self.store.answers_keep();
        if !shared && read(&self.linked).contains_key(&key) {
            return Ok(true);
        }
        let linked = match self.store.is_linked(name, kind, digest).await {
            Ok(linked) => linked,
            Err(e) if e.unavailable() && read(&self.linked).contains_key(&key) => return Ok(true),
            Err(e) => return Err(e),
        };
        if linked {
            remember(&mut write(&self.linked), key, ());
        } else if shared {
            write(&self.linked).remove(&key);
        }
        Ok(linked)
    }

    /// The manifests of the on-demand images served now: roots for the collector.
    pub fn on_demand_served(&self) -> Vec<Digest> {
        self.images.as_ref().map_or_else(Vec::new, |i| i.served())
    }

    /// Forgets that `name` links blob `digest` (the store says it is gone).
    fn forget_link(&self, name: &Name, digest: &Digest) {
        write(&self.linked).remove(&(name.clone(), Link::Blob, digest.clone()));
    }

    /// Forgets every cached tag, link, repository and manifest: after a collector removed
    /// some, so that nothing removed is served from memory.
    pub fn forget_cached(&self) {
        write(&self.linked).clear();
        write(&self.tags.0).clear();
        write(&self.repositories.0).clear();
        let mut manifests = lock(&self.manifests);
        *manifests = ManifestCache::new(manifests.budget);
    }

    /// Links `digest` into `name` (under `pin`: see `store::Pin`) and remembers it.
    async fn link(
        &self,
        pin: &Pin,
        name: &Name,
        kind: Link,
        digest: &Digest,
    ) -> Result<(), StoreError> {
        self.store.link(pin, name, kind, digest).await?;
        remember(
            &mut write(&self.linked),
            (name.clone(), kind, digest.clone()),
            (),
        );
        self.repositories.set(name, Some(()));
        Ok(())
    }

    async fn unlink(&self, name: &Name, kind: Link, digest: &Digest) -> Result<bool, StoreError> {
        let removed = self.store.unlink(name, kind, digest).await?;
        write(&self.linked).remove(&(name.clone(), kind, digest.clone()));
        // That may have been the last thing in it: ask the store again next time.
        self.repositories.set(name, None);
        Ok(removed)
    }

    /// Removes `name:tag`; `false` if there was no such tag.
    async fn delete_tag(&self, name: &Name, tag: &Tag) -> Result<bool, StoreError> {
        let removed = self.store.delete_tag(name, tag).await?;
        self.tags.set(&(name.clone(), tag.clone()), None);
        self.repositories.set(name, None);
        Ok(removed)
    }

    /// A registry that also serves on-demand images.
    pub fn with_images(store: Store, images: Arc<OnDemand>) -> Registry {
        Registry {
            images: Some(images),
            ..Registry::new(store)
        }
    }

    /// The manifest digest `name:tag` points at, if the tag exists.
    async fn tag(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, StoreError> {
        let key = (name.clone(), tag.clone());
        self.tags.get(&key, self.store.tag(name, tag)).await
    }

    /// NAME_UNKNOWN unless `name` is a repository in the store.
    async fn require_repository(&self, name: &Name) -> Result<(), RegistryError> {
        if self.has_repository(name).await? {
            Ok(())
        } else {
            Err(RegistryError::name_unknown(name))
        }
    }

    /// Whether `name` is a repository: in the store, or on demand. The store's answer is
    /// cached, so it goes first; asking the root costs a file check (and, for a name it does
    /// not know, a rescan at most once a second).
    async fn has_repository(&self, name: &Name) -> Result<bool, StoreError> {
        let lookup = async { Ok(self.store.has_repository(name).await?.then_some(())) };
        if self.repositories.get(name, lookup).await?.is_some() {
            return Ok(true);
        }
        Ok(match &self.images {
            Some(images) => images.has(name).await,
            None => false,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The manifest stored under `digest`, or `None` if there is no such blob or it is not a
    /// manifest (a layer or config is not served as a manifest).
    async fn manifest(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, StoreError> {
        let cached = lock(&self.manifests).get(digest);
        if cached.is_some() {
            return Ok(cached);
        }
        let bytes = match self.store.read_small_blob(digest, MAX_MANIFEST).await {
            Ok(Some(b)) => b,
            Ok(None) | Err(StoreError::BlobUnknown(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // A manifest's digest is a promise about its bytes; check it rather than serve
        // a damaged file under that name.
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let media_type = match image::manifest_kind(&bytes) {
            None => None,
            Some(image::ManifestKind::Declared(t)) => t,
            // Without a `mediaType` it is what it was pushed as (recorded only for such
            // documents, so only they pay the read), else (stores from before the record)
            // what its shape says.
            Some(image::ManifestKind::Undeclared(shape)) => {
                let recorded = self.store.manifest_type(digest).await?;
                recorded
                    .and_then(|t| image::known_manifest_type(&t))
                    .or(shape)
            }
        };
        let Some(media_type) = media_type else {
            return Ok(None);
        };
        let manifest = Arc::new(Manifest {
            digest: digest.clone(),
            bytes: Bytes::from(bytes),
            media_type,
            docker_twin: tokio::sync::OnceCell::new(),
        });
        lock(&self.manifests).insert(manifest.clone());
        Ok(Some(manifest))
    }

    /// The Docker schema 2 form of `m`, when `m` is an OCI manifest whose twin is in the store.
    async fn docker_twin(&self, m: &Manifest) -> Result<Option<Arc<Manifest>>, StoreError> {
        m.docker_twin
            .get_or_try_init(|| async {
                if m.media_type != image::OCI_MANIFEST {
                    return Ok(None);
                }
                match image::docker_form(&m.bytes) {
                    Some(bytes) => self.manifest(&Digest::sha256_of(&bytes)).await,
                    None => Ok(None),
                }
            })
            .await
            .cloned()
    }
}

/// `key=value` pairs of a query string, values percent-decoded, `+` kept (media types and
/// digests are read from these).
fn query_pairs(query: Option<&str>) -> Vec<(&str, String)> {
    pagination::query_pairs(query, false)
}

fn error_response(e: RegistryError) -> Response<Body> {
    let body = e.body();
    let mut response = Response::new(Body::bytes(body.clone()));
    *response.status_mut() = e.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    for (name, value) in e.headers {
        headers.insert(name, value);
    }
    response
}

/// A response with no body (a write's answer): the status and `Content-Length: 0`.
fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    response
}

/// A response with a body of known length and type: the headers every success shares.
fn document(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let len = body.len();
    let mut response = Response::new(Body::bytes(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// `Docker-Content-Digest` and `ETag` for content named by `digest`.
fn digest_headers(headers: &mut hyper::HeaderMap, digest: &Digest) -> Result<(), RegistryError> {
    let text = digest.to_string();
    headers.insert(
        HeaderName::from_static("docker-content-digest"),
        header_value(&text)?,
    );
    headers.insert(header::ETAG, header_value(&format!("\"{text}\""))?);
    Ok(())
}

/// Turns a success into `304 Not Modified` when `If-None-Match` names this digest's ETag
/// (the client's copy is current): same headers, no body.
fn conditional(
    mut response: Response<Body>,
    request: &hyper::HeaderMap,
    digest: &Digest,
) -> Response<Body> {
    let etag = format!("\"{digest}\"");
    let matches = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t == etag || t.strip_prefix("W/") == Some(&etag)
        });
    if matches {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.body_mut() = Body::Empty;
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    response
}

fn header_value(s: &str) -> Result<HeaderValue, RegistryError> {
    HeaderValue::from_str(s).map_err(|e| {
        tracing::error!(value = s, error = %e, "invalid header value");
        RegistryError::new(Code::Unknown, "internal error building a response header")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(body: &str) -> Arc<Manifest> {
        Arc::new(Manifest {
            digest: Digest::sha256_of(body.as_bytes()),
            bytes: Bytes::from(body.to_owned()),
            media_type: image::OCI_MANIFEST,
            docker_twin: tokio::sync::OnceCell::new(),
        })
    }

    #[test]
    fn remembered_store_answers_never_pass_their_bound() {
        let mut map = HashMap::new();
        for i in 0..REMEMBERED * 2 + 7 {
            remember(&mut map, i, ());
            assert!(map.len() <= REMEMBERED, "{} entries", map.len());
            assert!(map.contains_key(&i), "the newest answer is kept");
        }
        // Refreshing a key already there never empties a full map.
        let mut full: HashMap<usize, ()> = (0..REMEMBERED).map(|i| (i, ())).collect();
        remember(&mut full, 3, ());
        assert_eq!(full.len(), REMEMBERED);
    }

    #[test]
    fn the_manifest_cache_keeps_to_its_byte_budget_dropping_the_least_used() {
        let mut cache = ManifestCache::new(100);
        let (a, b, c, d) = (
            manifest(&"a".repeat(40)),
            manifest(&"b".repeat(40)),
            manifest(&"c".repeat(40)),
            manifest(&"d".repeat(150)),
        );
        cache.insert(a.clone());
        cache.insert(b.clone());
        assert!(cache.get(&a.digest).is_some()); // a is now the most recent
        cache.insert(c.clone());
        assert!(cache.bytes <= 100, "{}", cache.bytes);
        assert!(cache.get(&b.digest).is_none(), "the least used one stayed");
        assert!(cache.get(&a.digest).is_some() && cache.get(&c.digest).is_some());
        // One larger than the budget is not kept, and leaves nothing over it.
        cache.insert(d.clone());
        assert!(cache.get(&d.digest).is_none());
        assert!(cache.bytes <= 100);
    }
}
