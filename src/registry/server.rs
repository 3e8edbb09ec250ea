//! The listener: accepts connections within the connection cap, watches each for idleness
//! and stalled writes, serves HTTP/1.1 and HTTP/2 on it, and drains on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::conn::{ConnState, Watched};
use super::tls::Tls;
use super::{ACCESS_LOG, Config, H2_SEND_BUFFER, Registry, handle};
use crate::store::Store;

/// After this many connections closed, the allocator is asked to give its free memory back
/// to the system: glibc keeps what a burst of connections freed (100 HTTP/2 connections cut
/// left 114 MB of RSS above the baseline 10 s after).
const TRIM_AFTER_CLOSED: usize = 64;

/// A bound listener and the registry it serves.
pub struct Server {
    listener: TcpListener,
    registry: Arc<Registry>,
    config: Config,
    /// Serve HTTPS with this configuration; `None`: plain HTTP.
    tls: Option<Arc<Tls>>,
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
        Ok(Server::on(TcpListener::bind(addr).await?, registry, config))
    }

    /// A server on a listener bound earlier: `serve` binds before it packs, so a port in use
    /// is reported at once rather than after the pack.
    pub fn on(listener: TcpListener, registry: Registry, config: Config) -> Server {
        Server {
            listener,
            registry: Arc::new(registry),
            config,
            tls: None,
        }
    }

    /// The server speaking TLS only.
    pub fn with_tls(self, tls: Arc<Tls>) -> Server {
        Server {
            tls: Some(tls),
            ..self
        }
    }

    /// The registry it serves (for a second listener, such as the metrics one).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets every request in flight
    /// finish (a download runs to its end) and closes idle connections.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let config = &self.config;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.h2_max_streams)
            .max_send_buf_size(H2_SEND_BUFFER)
            .max_header_list_size(64 << 10);
        let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
        let connections = self.registry.connections.clone();
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        let sweeper = self.registry.uploads.as_ref().map(|uploads| {
            let registry = Arc::downgrade(&self.registry);
            let every = uploads.sweep_interval();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(registry) = registry.upgrade() else {
                        break;
                    };
                    if let Some(uploads) = &registry.uploads {
                        uploads.sessions.sweep().await;
                    }
                }
            })
        });
        // Answers stalled with their buffers held (HTTP/2 windows kept shut) are cut by one
        // watch for all connections, a few times per write timeout.
        let watch = {
            let connections = Arc::downgrade(&connections);
            let timeout = config.write_timeout;
            tokio::spawn(async move {
                let every = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
                // The most connections open since memory was last given back.
                let mut peak = 0;
                loop {
                    tokio::time::sleep(every).await;
                    let Some(connections) = connections.upgrade() else {
                        break;
                    };
                    let cut = connections.cut_stalled(timeout);
                    if cut > 0 {
                        tracing::debug!(
                            cut,
                            "closed connections whose answers took no byte for the write timeout"
                        );
                    }
                    let open = connections.counts().0;
                    peak = peak.max(open);
                    if peak >= open + TRIM_AFTER_CLOSED {
                        crate::thread::give_back_memory();
                        peak = open;
                    }
                }
            })
        };
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
            // One address holds at most its share; past it, it makes room itself or waits.
            if !connections.admit(remote.ip(), config.max_connections_per_client) {
                tracing::debug!(%remote, "closed: this address holds its share of the connections, all busy");
                drop(stream);
                continue;
            }
            // At the cap, the connection idle longest is closed to make room; if every one
            // is busy, this one waits (and further ones in the kernel's backlog).
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if connections.evict_idlest() {
                        tracing::debug!(
                            "at the connection cap: closed the connection idle longest"
                        );
                    }
                    self.registry.health.at_cap(true);
                    let p = tokio::select! {
                        p = slots.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break, // never closed
                        },
                        () = &mut shutdown => break,
                    };
                    self.registry.health.at_cap(false);
                    p
                }
            };
            // Small responses (manifests, errors) should not wait for Nagle.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "set TCP_NODELAY");
            }
            let registry = self.registry.clone();
            let state = Arc::new(ConnState::new());
            let registered = connections.add(remote.ip(), state.clone());
            let evicted = state.evict.clone();
            let watched = Watched::new(
                stream,
                state.clone(),
                config.idle_timeout,
                config.write_timeout,
            );
            let pace = super::body::Pace {
                span: config.body_timeout,
                min_rate: config.min_body_rate,
            };
            let secure = self.tls.is_some();
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                let in_flight = state.begin();
                async move {
                    Ok::<_, Infallible>(
                        handle(&registry, req, remote, secure, pace, in_flight).await,
                    )
                }
            });
            let builder = builder.clone();
            let watcher = graceful.watcher();
            // Taken per connection: a reloaded certificate serves the next one.
            let acceptor = self.tls.as_ref().map(|t| t.acceptor());
            let handshake_timeout = config.header_read_timeout;
            tokio::spawn(async move {
                let served = async {
                    let ended = match acceptor {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(watched), service);
                            watcher.watch(conn.into_owned()).await
                        }
                        Some(acceptor) => {
                            // Bounded like request headers: a client that opens a connection
                            // and never finishes the handshake holds a slot only this long.
                            let stream = match tokio::time::timeout(
                                handshake_timeout,
                                acceptor.accept(watched),
                            )
                            .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%remote, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(conn.into_owned()).await
                        }
                    };
                    if let Err(e) = ended {
                        log_connection_error(remote, e.as_ref());
                    }
                };
                tokio::select! {
                    () = served => {},
                    () = evicted.cancelled() => {
                        tracing::debug!(%remote, "idle connection closed to make room");
                    }
                }
                drop((registered, permit));
            });
        }
        self.registry.health.draining();
        watch.abort();
        drop(self.listener);
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
        tracing::info!(
            connections = graceful.count(),
            "shutting down: no new connections; finishing requests in flight"
        );
        // Bounded: a client trickling a body, or stalled on an answer, does not hold the
        // process; what is still open after the timeout is closed as the process exits.
        match tokio::time::timeout(config.shutdown_timeout, graceful.shutdown()).await {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                timeout_s = config.shutdown_timeout.as_secs(),
                "connections still open after the shutdown timeout are closed"
            ),
        }
        Ok(())
    }
}

/// How a connection ended badly, for the log. A request hyper refused before it reached us
/// (a path over its 64 KiB limit: 414; headers over its buffer: 431; not HTTP: 400) gets
/// hyper's own empty answer, which no hook lets us replace with an OCI body, so it gets an
/// access-log line here instead; the rest (a client gone, a timeout) are debug lines. Bytes
/// that do not start with an HTTP method are a debug line too: Docker opens every connection
/// to a registry it may speak plain HTTP to with a TLS handshake first.
fn log_connection_error(remote: SocketAddr, e: &(dyn std::error::Error + 'static)) {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse() && h.to_string().contains("invalid HTTP method") => {
            tracing::debug!(%remote, error = %h, "not HTTP (a TLS handshake, as Docker probes with): closed")
        }
        Some(h) if h.is_parse_too_large() || h.is_parse() => tracing::info!(
            target: ACCESS_LOG,
            %remote,
            // hyper's own choice, by its error's words (its kinds are private).
            status = match h.to_string() {
                t if t.contains("URI too long") => 414,
                _ if h.is_parse_too_large() => 431,
                _ => 400,
            },
            error = %h,
            "request refused by the HTTP parser"
        ),
        _ => tracing::debug!(%remote, error = %e, "connection ended with an error"),
    }
}
