//! Pull-through cache: repositories under a mirror's prefix come from its upstream registry
//! the first time they are asked for, and from the store after.
//!
//! - `upstream.rs`: the upstream as a client speaks to it (Basic, Bearer tokens by scope).
//! - here: which mirror a name belongs to, and the fetches that fill the store: a manifest
//!   (by digest: once, it never changes; by tag: again after the tag's TTL, by a `HEAD`
//!   that costs no pull on Docker Hub), a blob (one download at a time per digest; its digest
//!   checked before any client gets its last byte, so wrong bytes are never served whole
//!   and commit nothing).
//!
//! What is cached stays served when the upstream fails (a tag past its TTL too, logged).
//! Blobs stream to every client that asks while they arrive (one download per digest). An
//! unprefixed name goes to the mirror containerd names with `?ns=`, or to the default one
//! (dockerd's `registry-mirrors`) when it is none of this registry's own; it is cached under
//! `PREFIX/NAME`. With a retention, pulls are recorded (`Mirror::pulled`) for the collector,
//! which evicts what was not pulled (`store::gc::Unpulled`).

pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::reference::{Name, Tag};
use crate::store::{Link, Store, StoreError};
use upstream::{Upstream, UpstreamError};

/// Every manifest type a client may get, in the order a mirror asks for them.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest taken from an upstream (as the registry's own limit).
const MAX_MANIFEST: u64 = 4 << 20;

/// Blob downloads one mirror runs at once.
const DOWNLOADS: usize = 32;

/// Tags whose fetch time is remembered, at most; past it the map starts over (which costs
/// one `HEAD` per tag).
const FETCHED_MAX: usize = 100_000;

/// One `[[mirror]]`, as configured.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub prefix: String,
    pub upstream: String,
    pub default: bool,
    pub credentials: Option<(String, String)>,
    pub ca: Option<Vec<u8>>,
    pub tag_ttl: Duration,
    /// Evict (by the online collector) what was not pulled for this long.
    pub retention: Option<Duration>,
}

/// What a mirror fetch can fail with.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Failed(String),
    #[error("upstream {url} sent bytes of {actual}, not of {expected}: nothing was stored")]
    Mismatch {
        url: String,
        expected: Digest,
        actual: Digest,
    },
}

/// The configured mirrors.
pub struct Mirrors {
    list: Vec<Mirror>,
}

pub struct Mirror {
    pub prefix: String,
    /// Unprefixed names go here too.
    default: bool,
    upstream: Upstream,
    tag_ttl: Duration,
    /// When each cached tag was last checked upstream.
    fetched: Mutex<HashMap<(Name, Tag), Instant>>,
    /// Tags being checked, one at a time each.
    tag_gates: Mutex<HashMap<(Name, Tag), Gate>>,
    /// Evict what was not pulled for this long; pulls are recorded only when it is set.
    retention: Option<Duration>,
    /// When each manifest's pull was last recorded in the store (at most once per
    /// `retention / 10`, or per hour).
    pulled: Mutex<HashMap<(Name, Digest), Instant>>,
    /// Blob downloads under way, by digest: later askers read the first one's.
    downloads: Arc<Mutex<Downloads>>,
    /// Downloads that may run at once.
    download_slots: Arc<tokio::sync::Semaphore>,
    /// Hits, misses, stale answers and errors since start (the metrics count them too).
    counts: [std::sync::atomic::AtomicU64; 4],
}

/// What `Mirror::counted` counts, in `Mirror::counts` order.
const RESULTS: [&str; 4] = ["hit", "miss", "stale", "error"];

impl Mirrors {
    pub fn new(configs: Vec<MirrorConfig>) -> Result<Mirrors, String> {
        if configs.iter().filter(|c| c.default).count() > 1 {
            return Err("more than one mirror is the default".into());
        }
        let mut list = Vec::new();
        for c in configs {
            let upstream = Upstream::new(
                &c.upstream,
                c.credentials.clone(),
                c.ca.as_deref(),
                Duration::from_secs(30),
            )?;
            list.push(Mirror {
                prefix: c.prefix.trim_matches('/').to_owned(),
                default: c.default,
                upstream,
                tag_ttl: c.tag_ttl,
                retention: c.retention,
                pulled: Mutex::new(HashMap::new()),
                fetched: Mutex::new(HashMap::new()),
                tag_gates: Mutex::new(HashMap::new()),
                downloads: Arc::default(),
                download_slots: Arc::new(tokio::sync::Semaphore::new(DOWNLOADS)),
                counts: Default::default(),
            });
        }
        Ok(Mirrors { list })
    }

    /// The prefix of the mirror named `prefix`, if there is one (containerd's `?ns=`).
    pub fn with_prefix(&self, prefix: &str) -> Option<&str> {
        self.list
            .iter()
            .find(|m| m.prefix == prefix)
            .map(|m| m.prefix.as_str())
    }

    /// The default mirror's prefix: unprefixed names not of this registry go there.
    pub fn default_prefix(&self) -> Option<&str> {
        self.list
            .iter()
            .find(|m| m.default)
            .map(|m| m.prefix.as_str())
    }

    /// Every mirror, in the configured order.
    pub fn list(&self) -> &[Mirror] {
        &self.list
    }

    /// What the collector evicts: each mirror's repositories not pulled for its retention.
    pub fn unpulled(&self) -> Vec<crate::store::gc::Unpulled> {
        self.list
            .iter()
            .filter_map(|m| {
                Some(crate::store::gc::Unpulled {
                    prefix: m.prefix.clone(),
                    after: m.retention?,
                })
            })
            .collect()
    }

    /// The mirror `name` belongs to, and the name upstream.
    pub fn route(&self, name: &Name) -> Option<(&Mirror, String)> {
        let name = name.as_str();
        self.list.iter().find_map(|m| {
            name.strip_prefix(m.prefix.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .filter(|rest| !rest.is_empty())
                .map(|rest| (m, rest.to_owned()))
        })
    }
}

impl Mirror {
    /// The upstream's base URL.
    pub fn upstream(&self) -> &str {
        &self.upstream.base
    }

    /// Counts one answer (`RESULTS`): in the metrics and for `counts`.
    fn counted(&self, result: &'static str) {
        crate::metrics::mirrored(&self.upstream.base, result);
        if let Some(i) = RESULTS.iter().position(|r| *r == result) {
            self.counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Hits, misses, stale answers and errors since start.
    pub fn counts(&self) -> [u64; 4] {
        self.counts
            .each_ref()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The mirrors, for the web page.
    pub fn tag_ttl(&self) -> Duration {
        self.tag_ttl
    }

    pub fn retention(&self) -> Option<Duration> {
        self.retention
    }

    /// Makes sure the manifest `name:tag` is in the store, linked and tagged, checking
    /// upstream when the tag's TTL is over; its digest. The stored one when the upstream
    /// fails and one is stored.
    pub async fn tag(
        &self,
        store: &Store,
        name: &Name,
        remote: &str,
        tag: &Tag,
    ) -> Result<Digest, MirrorError> {
        // One check of a tag at a time: ten clients pulling it at once make one request.
        let gate = {
            let mut gates = self.tag_gates.lock().unwrap_or_else(|p| p.into_inner());
            if gates.len() >= FETCHED_MAX {
                gates.retain(|_, g| Arc::strong_count(g) > 1);
            }
            gates
                .entry((name.clone(), tag.clone()))
                .or_default()
                .clone()
        };
        let _one = gate.lock().await;
        let cached = store.tag(name, tag).await?;
        let key = (name.clone(), tag.clone());
        let fresh = {
            let fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
            fetched
                .get(&key)
                .is_some_and(|at| at.elapsed() < self.tag_ttl)
        };
        if let (Some(digest), true) = (&cached, fresh) {
            self.counted("hit");
            return Ok(digest.clone());
        }
        let scope = format!("repository:{remote}:pull");
        let path = format!("{remote}/manifests/{tag}");
        // A stored tag is checked with HEAD: the digest alone says whether it moved.
        if let Some(digest) = &cached {
            let head = self
                .upstream
                .request(reqwest::Method::HEAD, &path, ACCEPT, &scope)
                .await;
            match head {
                Ok(r) => {
                    let same = r
                        .headers()
                        .get("docker-content-digest")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|d| d == digest.to_string());
                    if same {
                        self.checked(key);
                        self.counted("hit");
                        return Ok(digest.clone());
                    }
                }
                Err(e) if e.is_not_found() => {
                    self.counted("error");
                    return Err(e.into());
                }
                Err(e) => {
                    tracing::warn!(%name, %tag, error = %e, "upstream failed; serving the cached tag");
                    self.counted("stale");
                    return Ok(digest.clone());
                }
            }
        }
        let fetched = match (
            self.fetch_manifest(store, name, &path, &scope, None).await,
            cached,
        ) {
            (Ok(d), _) => d,
            (Err(MirrorError::Upstream(e)), Some(cached)) if !e.is_not_found() => {
                tracing::warn!(%name, %tag, error = %e, "upstream failed; serving the cached tag");
                self.counted("stale");
                return Ok(cached);
            }
            (Err(e), _) => {
                self.counted("error");
                return Err(e);
            }
        };
        self.counted("miss");
        let pin = store.pin().await?;
        store.set_tag(&pin, name, tag, &fetched).await?;
        self.checked(key);
        Ok(fetched)
    }

    /// Makes sure the manifest `digest` is in the store and linked in `name` (manifests by
    /// digest never change: fetched once).
    pub async fn manifest(
        &self,
        store: &Store,
        name: &Name,
        remote: &str,
        digest: &Digest,
    ) -> Result<(), MirrorError> {
        if store.is_linked(name, Link::Manifest, digest).await? {
            self.counted("hit");
            return Ok(());
        }
        let scope = format!("repository:{remote}:pull");
        let path = format!("{remote}/manifests/{digest}");
        let fetched = self
            .fetch_manifest(store, name, &path, &scope, Some(digest))
            .await;
        self.counted(if fetched.is_ok() { "miss" } else { "error" });
        fetched.map(|_| ())
    }

    /// Records that manifest `digest` of `name` was pulled, for retention: its link is made
    /// again, which touches it (and the manifest's bytes), on every engine. At most once per
    /// a tenth of the retention (or an hour) per manifest, so a pull costs no write.
    pub async fn pulled(
        &self,
        store: &Store,
        name: &Name,
        digest: &Digest,
    ) -> Result<(), MirrorError> {
        let Some(retention) = self.retention else {
            return Ok(());
        };
        let every = (retention / 10).min(Duration::from_secs(3600));
        let key = (name.clone(), digest.clone());
        {
            let mut pulled = self.pulled.lock().unwrap_or_else(|p| p.into_inner());
            if pulled.get(&key).is_some_and(|at| at.elapsed() < every) {
                return Ok(());
            }
            if pulled.len() >= FETCHED_MAX {
                pulled.clear();
            }
            pulled.insert(key, Instant::now());
        }
        let pin = store.pin().await?;
        match store.link(&pin, name, Link::Manifest, digest).await {
            // Evicted meanwhile: the next pull fetches it again.
            Err(StoreError::BlobUnknown(_)) => Ok(()),
            other => Ok(other?),
        }
    }

    fn checked(&self, key: (Name, Tag)) {
        let mut fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        if fetched.len() >= FETCHED_MAX {
            fetched.clear();
        }
        fetched.insert(key, Instant::now());
    }

    /// GETs a manifest, checks it against `expected` (or takes its own digest), stores and
    /// links it.
    async fn fetch_manifest(
        &self,
        store: &Store,
        name: &Name,
        path: &str,
        scope: &str,
        expected: Option<&Digest>,
    ) -> Result<Digest, MirrorError> {
        let url = format!("{}/v2/{path}", self.upstream.base);
        let response = self
            .upstream
            .request(reqwest::Method::GET, path, ACCEPT, scope)
            .await?;
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| UpstreamError::Unreachable {
                url: url.clone(),
                why: upstream::chain(&e),
            })?;
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(UpstreamError::Unreachable {
                url,
                why: format!("a manifest over {MAX_MANIFEST} bytes"),
            }
            .into());
        }
        let algorithm = expected.map_or(crate::digest::Algorithm::Sha256, |d| d.algorithm());
        let actual = Digest::of(algorithm, &bytes);
        if let Some(expected) = expected
            && *expected != actual
        {
            return Err(MirrorError::Mismatch {
                url,
                expected: expected.clone(),
                actual,
            });
        }
        let pin = store.pin().await?;
        let stored = store.put_with(algorithm, &bytes).await?;
        if let Some(t) = media_type
            && crate::image::manifest_media_type(&bytes).is_none()
        {
            store.set_manifest_type(&stored, &t).await?;
        }
        store.link(&pin, name, Link::Manifest, &stored).await?;
        Ok(stored)
    }

    /// Blob `digest` for `name`: linked from the store if it is there, else being fetched
    /// from the upstream (once per digest at a time, whoever asks), read as it arrives.
    pub async fn blob(
        &self,
        store: &Store,
        name: &Name,
        remote: &str,
        digest: &Digest,
    ) -> Result<Fetched, MirrorError> {
        if store.has_blob(digest).await? {
            let pin = store.pin().await?;
            store.link(&pin, name, Link::Blob, digest).await?;
            self.counted("hit");
            return Ok(Fetched::Stored);
        }
        let mut attempts = 0;
        let download = loop {
            attempts += 1;
            let cell = {
                let mut downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
                downloads.entry(digest.clone()).or_default().clone()
            };
            let started = cell
                .get_or_try_init(|| self.start(store, name, remote, digest))
                .await;
            let download = match started {
                Ok(d) => d.clone(),
                Err(e) => {
                    self.forget(digest, &cell);
                    self.counted("error");
                    return Err(e);
                }
            };
            let done = download.progress.borrow().done.clone();
            match done {
                // Over, and not yet forgotten by its task: a failed one is tried anew, a
                // finished one read from the store.
                Some(Err(why)) if attempts > 1 => return Err(MirrorError::Failed(why)),
                Some(Err(_)) => self.forget(digest, &cell),
                Some(Ok(())) => {
                    let pin = store.pin().await?;
                    store.link(&pin, name, Link::Blob, digest).await?;
                    return Ok(Fetched::Stored);
                }
                None => break download,
            }
        };
        self.counted("miss");
        let link = Some((store.clone(), name.clone(), digest.clone()));
        match &download.file {
            // Read as it arrives.
            Some(file) => Ok(Fetched::Streaming {
                len: download.len,
                stream: follow(file.clone(), download.len, download.progress.clone(), link),
            }),
            // A shared store's blob cannot be read before it is committed: wait for it.
            None => {
                let mut progress = download.progress.clone();
                let done = progress
                    .wait_for(|p| p.done.is_some())
                    .await
                    .map(|p| p.done.clone())
                    .ok()
                    .flatten();
                match done {
                    Some(Ok(())) => {
                        let pin = store.pin().await?;
                        store.link(&pin, name, Link::Blob, digest).await?;
                        Ok(Fetched::Stored)
                    }
                    Some(Err(why)) => Err(MirrorError::Failed(why)),
                    None => Err(MirrorError::Failed("the download stopped".into())),
                }
            }
        }
    }

    /// Forgets a download once it is over (or never began), unless a newer one took its place.
    fn forget(&self, digest: &Digest, cell: &Arc<tokio::sync::OnceCell<Arc<Download>>>) {
        let mut downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        if downloads.get(digest).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            downloads.remove(digest);
        }
    }

    /// Asks the upstream for the blob and, once it answers, leaves a task writing it into
    /// the store (whether or not anyone still reads it): checked, committed, linked in `name`.
    async fn start(
        &self,
        store: &Store,
        name: &Name,
        remote: &str,
        digest: &Digest,
    ) -> Result<Arc<Download>, MirrorError> {
        let scope = format!("repository:{remote}:pull");
        let path = format!("{remote}/blobs/{digest}");
        let url = format!("{}/v2/{path}", self.upstream.base);
        // A bound on the downloads under way: each holds a temp file and a task that goes on
        // when its clients leave. Past it, askers wait.
        let permit = self
            .download_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| MirrorError::Failed("the mirror is shutting down".into()))?;
        let response = self
            .upstream
            .request(reqwest::Method::GET, &path, "", &scope)
            .await?;
        let len = response.content_length();
        let writer = store.new_blob_with(digest.algorithm()).await?;
        // Followed only with a length to promise the clients.
        let file = match (len, writer.follow()) {
            (Some(_), Some(file)) => Some(Arc::new(file.map_err(|source| StoreError::Io {
                action: "read",
                path: "the download's temp file".into(),
                source,
            })?)),
            _ => None,
        };
        let (tell, progress) = tokio::sync::watch::channel(Progress::default());
        let download = Arc::new(Download {
            file,
            len: len.unwrap_or(0),
            progress,
        });
        let store = store.clone();
        let (name, digest) = (name.clone(), digest.clone());
        let cells = self.cells();
        tokio::spawn(async move {
            let _permit = permit;
            let done = write(response, writer, &store, &name, &digest, &url, &tell).await;
            if let Err(e) = &done {
                tracing::warn!(%name, %digest, error = %e, "mirror download failed; nothing stored");
            }
            tell.send_modify(|p| p.done = Some(done.map_err(|e| e.to_string())));
            let mut downloads = cells.lock().unwrap_or_else(|p| p.into_inner());
            downloads.remove(&digest);
        });
        Ok(download)
    }

    fn cells(&self) -> Arc<Mutex<Downloads>> {
        self.downloads.clone()
    }
}

/// One at a time: held while a tag is checked.
type Gate = Arc<tokio::sync::Mutex<()>>;

/// Downloads under way, by digest.
type Downloads = HashMap<Digest, Arc<tokio::sync::OnceCell<Arc<Download>>>>;

/// A blob being fetched: the temp file to read it from as it grows (none on a shared
/// store), its length, and how far the writing got.
pub struct Download {
    file: Option<Arc<std::fs::File>>,
    len: u64,
    progress: tokio::sync::watch::Receiver<Progress>,
}

#[derive(Clone, Default)]
struct Progress {
    /// Bytes in the temp file, readable.
    flushed: u64,
    /// Every byte is in the temp file and their digest checked out: readers may have the
    /// last one, while the commit (fsync, rename) goes on.
    verified: bool,
    /// Set when the download is over: committed, or why not.
    done: Option<Result<(), String>>,
}

/// Bytes the download task writes before it makes them readable (flushes): a flush per
/// chunk of the upstream's (a few KiB) would be a write per chunk.
const FLUSH_EVERY: u64 = 256 << 10;

/// What `Mirror::blob` found.
pub enum Fetched {
    /// In the store, linked: read it from there.
    Stored,
    /// Arriving: `len` bytes, the last of them held back until the digest checked out (a
    /// mismatch ends the stream with an error, so no client ever has the whole wrong blob).
    Streaming {
        len: u64,
        stream: crate::store::ByteStream,
    },
}

/// The download task's work: the upstream's bytes into the writer, flushed chunk by chunk
/// for the readers, then checked and committed.
async fn write(
    mut response: reqwest::Response,
    mut writer: crate::store::BlobWriter,
    store: &Store,
    name: &Name,
    digest: &Digest,
    url: &str,
    tell: &tokio::sync::watch::Sender<Progress>,
) -> Result<(), MirrorError> {
    use tokio::io::AsyncWriteExt as _;
    let mut flushed = 0;
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|e| UpstreamError::Unreachable {
                url: url.to_owned(),
                why: upstream::chain(&e),
            })?;
        let Some(chunk) = chunk else { break };
        if let Err(e) = writer.write_all(&chunk).await {
            return Err(writer.write_error(e).into());
        }
        crate::metrics::mirror_fetched(upstream_of(url), chunk.len() as u64);
        if writer.written() - flushed >= FLUSH_EVERY {
            if let Err(e) = writer.flush().await {
                return Err(writer.write_error(e).into());
            }
            flushed = writer.written();
            tell.send_modify(|p| p.flushed = flushed);
        }
    }
    if let Err(e) = writer.flush().await {
        return Err(writer.write_error(e).into());
    }
    let written = writer.written();
    // Readers get the last byte once the digest checked out, not after the fsync.
    if writer.digest_so_far() == *digest {
        tell.send_modify(|p| {
            p.flushed = written;
            p.verified = true;
        });
    } else {
        tell.send_modify(|p| p.flushed = written);
    }
    writer.sync().await?;
    let pin = store.pin().await?;
    match writer.commit_expecting(digest).await {
        Ok(_) => {}
        Err(StoreError::DigestMismatch { expected, actual }) => {
            return Err(MirrorError::Mismatch {
                url: url.to_owned(),
                expected,
                actual,
            });
        }
        Err(e) => return Err(e.into()),
    }
    store.link(&pin, name, Link::Blob, digest).await?;
    Ok(())
}

/// The upstream's base of a blob URL (`BASE/v2/...`), for the metrics' label.
fn upstream_of(url: &str) -> &str {
    url.split("/v2/").next().unwrap_or(url)
}

/// Bytes read from a temp file at most per piece.
const PIECE: usize = 256 << 10;

/// The stream of a download's `len` bytes from `file`, as `progress` says they are written;
/// the last byte only once their digest checked out. At its end, the blob is linked in the
/// reader's repository (`link`).
fn follow(
    file: Arc<std::fs::File>,
    len: u64,
    progress: tokio::sync::watch::Receiver<Progress>,
    link: Option<(Store, Name, Digest)>,
) -> crate::store::ByteStream {
    struct State {
        file: Arc<std::fs::File>,
        pos: u64,
        len: u64,
        progress: tokio::sync::watch::Receiver<Progress>,
        link: Option<(Store, Name, Digest)>,
        over: bool,
    }
    let state = State {
        file,
        pos: 0,
        len,
        progress,
        link,
        over: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.over {
            return None;
        }
        loop {
            let now = st.progress.borrow_and_update().clone();
            let limit = match &now.done {
                Some(Ok(())) => st.len,
                Some(Err(why)) => {
                    st.over = true;
                    let e = std::io::Error::other(why.clone());
                    return Some((Err(e), st));
                }
                None if now.verified => now.flushed.min(st.len),
                None => now.flushed.min(st.len.saturating_sub(1)),
            };
            if st.pos < limit {
                let want = (limit - st.pos).min(PIECE as u64) as usize;
                let (file, pos) = (st.file.clone(), st.pos);
                let read = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt as _;
                    let mut buf = vec![0; want];
                    let n = file.read_at(&mut buf, pos)?;
                    buf.truncate(n);
                    Ok::<_, std::io::Error>(buf)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                return match read {
                    Ok(buf) if !buf.is_empty() => {
                        st.pos += buf.len() as u64;
                        Some((Ok(bytes::Bytes::from(buf)), st))
                    }
                    Ok(_) => {
                        st.over = true;
                        Some((
                            Err(std::io::Error::other("the download's file ended early")),
                            st,
                        ))
                    }
                    Err(e) => {
                        st.over = true;
                        Some((Err(e), st))
                    }
                };
            }
            if now.done.is_some() {
                if let Some((store, name, digest)) = st.link.take() {
                    let linked = async {
                        let pin = store.pin().await?;
                        store.link(&pin, &name, Link::Blob, &digest).await
                    }
                    .await;
                    if let Err(e) = linked {
                        st.over = true;
                        return Some((Err(std::io::Error::other(e.to_string())), st));
                    }
                }
                return None;
            }
            if st.progress.changed().await.is_err() {
                st.over = true;
                let e = std::io::Error::other("the download stopped");
                return Some((Err(e), st));
            }
        }
    }))
}
