//! The registry: the pull side of the OCI distribution API over the store, with hyper.
//!
//! | file | resource |
//! |---|---|
//! | `router.rs` | path → resource, validating names, tags and digests |
//! | `base.rs` | `GET /v2/` |
//! | `manifests.rs` | `/v2/<name>/manifests/<reference>`, with `Accept` negotiation |
//! | `blobs.rs` | `/v2/<name>/blobs/<digest>`, streamed, with `Range` |
//! | `tags.rs`, `catalog.rs` | the two paginated lists (`pagination.rs`) |
//! | `errors.rs` | OCI error bodies and their statuses |
//! | `body.rs` | response bodies and the per-request access log |
//!
//! The registry only reads the store, and asks [`OnDemand`] for the images it packs on
//! request. A repository exists when it has a tag or is an on-demand image; any blob in the
//! store can be fetched through any repository (per-repository scoping comes with push).

mod base;
mod blobs;
mod body;
mod catalog;
mod errors;
mod manifests;
mod pagination;
mod router;
mod tags;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::digest::Digest;
use crate::image;
use crate::ondemand::OnDemand;
use crate::reference::{Name, Tag};
use crate::store::{Store, StoreError};
use body::{Access, Body, Logged};
use errors::{Code, RegistryError};
use router::Route;

/// Manifests larger than this are not manifests (the spec lets registries cap them at 4 MiB).
const MAX_MANIFEST: u64 = 4 << 20;

/// How long a tag read from the store (or a repository seen to exist) is trusted before it
/// is read again. Tags moved by another process (`quinistry pack` into the same store) show
/// within this time. Reading per request instead costs a blocking-pool hop each, which
/// measured 14k instead of 32k manifest requests/s with wrk on 2 cores.
const TAG_TTL: Duration = Duration::from_secs(1);

/// Header every response carries; Docker checks it on `/v2/`.
const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// A client must send its request headers within this time, or the connection is closed
    /// (a slow-header client would otherwise hold a connection forever).
    pub header_read_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            header_read_timeout: Duration::from_secs(10),
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
    /// goes stale; entries exist only for manifests in the store, which bounds the map.
    manifests: RwLock<HashMap<Digest, Arc<Manifest>>>,
    /// Tags found in the store.
    tags: Recent<(Name, Tag), Digest>,
    /// Repositories found in the store.
    repositories: Recent<Name, ()>,
    /// Images packed on demand (`serve --image`, `--root`); they take precedence over the
    /// store's tags of the same name and tag.
    images: Option<Arc<OnDemand>>,
}

/// What the store said recently about things that can change under us (tags, repositories),
/// trusted for `TAG_TTL`. Only things found are kept, so something new is seen at once and the
/// map is bounded by the store.
struct Recent<K, V>(RwLock<HashMap<K, (V, Instant)>>);

impl<K: Eq + std::hash::Hash + Clone, V: Clone> Recent<K, V> {
    fn new() -> Self {
        Recent(RwLock::new(HashMap::new()))
    }

    /// The fresh cached value of `key`, else what `lookup` finds in the store (then cached).
    async fn get<F>(&self, key: &K, lookup: F) -> Result<Option<V>, StoreError>
    where
        F: Future<Output = Result<Option<V>, StoreError>>,
    {
        if let Some((value, read_at)) = read(&self.0).get(key)
            && read_at.elapsed() < TAG_TTL
        {
            return Ok(Some(value.clone()));
        }
        let found = lookup.await?;
        let mut map = write(&self.0);
        match &found {
            Some(value) => map.insert(key.clone(), (value.clone(), Instant::now())),
            None => map.remove(key),
        };
        Ok(found)
    }
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
        Registry {
            store,
            manifests: RwLock::new(HashMap::new()),
            tags: Recent::new(),
            repositories: Recent::new(),
            images: None,
        }
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
        let cached = read(&self.manifests).get(digest).cloned();
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
        let actual = Digest::sha256_of(&bytes);
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let Some(media_type) = image::manifest_media_type(&bytes) else {
            return Ok(None);
        };
        let manifest = Arc::new(Manifest {
            digest: digest.clone(),
            bytes: Bytes::from(bytes),
            media_type,
            docker_twin: tokio::sync::OnceCell::new(),
        });
        write(&self.manifests).insert(digest.clone(), manifest.clone());
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

/// A bound listener and the registry it serves.
pub struct Server {
    listener: TcpListener,
    registry: Arc<Registry>,
    config: Config,
}

impl Server {
    pub async fn bind(addr: SocketAddr, store: Store, config: Config) -> io::Result<Server> {
        Server::bind_registry(addr, Registry::new(store), config).await
    }

    /// Binds a server for a registry set up by the caller (say, with on-demand images).
    pub async fn bind_registry(
        addr: SocketAddr,
        registry: Registry,
        config: Config,
    ) -> io::Result<Server> {
        Ok(Server {
            listener: TcpListener::bind(addr).await?,
            registry: Arc::new(registry),
            config,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets every request in flight
    /// finish (a download runs to its end) and closes idle connections.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, remote) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // Small responses (manifests, errors) should not wait for Nagle.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "set TCP_NODELAY");
            }
            let registry = self.registry.clone();
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(handle(&registry, req, remote).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tracing::info!(
            connections = graceful.count(),
            "shutting down: no new connections; finishing requests in flight"
        );
        graceful.shutdown().await;
        tracing::info!("all connections closed");
        Ok(())
    }
}

/// Answers one request. Never fails: every error becomes an OCI error response.
async fn handle(
    registry: &Registry,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Logged> {
    let start = Instant::now();
    let method = req.method().clone();
    let result = match method {
        Method::GET | Method::HEAD => dispatch(registry, &req).await,
        _ => Err(RegistryError::new(
            Code::Unsupported,
            format!("{method} is not supported: this registry is read-only"),
        )
        .header(header::ALLOW, HeaderValue::from_static("GET, HEAD"))),
    };
    let response = result.unwrap_or_else(error_response);
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(
        HeaderName::from_static(API_VERSION.0),
        HeaderValue::from_static(API_VERSION.1),
    );
    // HEAD answers carry GET's headers, Content-Length included, and no body.
    let body = if method == Method::HEAD {
        Body::Empty
    } else {
        body
    };
    let access = Access {
        remote,
        method,
        // A 60 KiB path is logged by its first 256 characters.
        path: router::truncate(req.uri().path()),
        status: parts.status.as_u16(),
        start,
    };
    Response::from_parts(parts, Logged::new(body, access))
}

async fn dispatch(
    registry: &Registry,
    req: &Request<Incoming>,
) -> Result<Response<Body>, RegistryError> {
    match router::route(req.uri().path())? {
        Route::Base => Ok(base::get()),
        Route::Catalog => catalog::get(registry, req.uri().query()).await,
        Route::Tags(name) => tags::get(registry, &name, req.uri().query()).await,
        Route::Manifest(name, reference) => {
            manifests::get(registry, &name, &reference, req.headers()).await
        }
        Route::Blob(name, digest) => blobs::get(registry, &name, &digest, req.headers()).await,
        Route::Upload(_) => Err(RegistryError::new(
            Code::Unsupported,
            "uploads are not supported: this registry is read-only",
        )
        .header(header::ALLOW, HeaderValue::from_static("GET, HEAD"))),
    }
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
    if let Some((name, value)) = e.header.map(|b| *b) {
        headers.insert(name, value);
    }
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
