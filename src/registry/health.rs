//! `/healthz`, `/readyz` and `/metrics`.
//!
//! The two health checks answer on the registry's port and on the metrics port, before
//! authentication and (by default) outside the access log: a load balancer polling them
//! every second should neither need credentials nor fill the log. `/healthz` says the
//! process serves; `/readyz` also that the store can be read and written now, that the
//! listener is accepting (not at its connection cap, not shutting down).
//!
//! `/metrics` answers on the metrics port only (`serve --metrics-listen`): an operator
//! usually keeps it off the network clients reach.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::Registry;
use super::body::Body;

/// What `/readyz` knows besides the store.
#[derive(Debug, Default)]
pub struct Health {
    /// Shutdown began: no new connections are taken.
    draining: AtomicBool,
    /// The accept loop is waiting for a connection slot.
    at_cap: AtomicBool,
}

impl Health {
    pub fn draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn at_cap(&self, yes: bool) {
        self.at_cap.store(yes, Ordering::Relaxed);
    }
}

/// The answer to a health check, if `path` is one.
pub async fn answer(registry: &Registry, path: &str) -> Option<Response<Body>> {
    match path {
        "/healthz" => Some(text(StatusCode::OK, "ok\n".into())),
        "/readyz" => Some(match ready(registry).await {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        }),
        _ => None,
    }
}

/// Whether the registry can serve every request now; if not, why.
async fn ready(registry: &Registry) -> Result<(), String> {
    let health = &registry.health;
    if health.draining.load(Ordering::Relaxed) {
        return Err("shutting down".into());
    }
    if health.at_cap.load(Ordering::Relaxed) {
        return Err("every connection slot is taken".into());
    }
    registry
        .store()
        .probe()
        .await
        .map_err(|e| format!("the store: {e}"))
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    typed(status, "text/plain; charset=utf-8", body)
}

/// The registry's `document`, never cached (a health answer is about now).
fn typed(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = super::document(status, content_type, Bytes::from(body));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The metrics port: `/metrics`, `/healthz`, `/readyz`; everything else 404. Few connections
/// (an ops port has a scraper or two), each short-lived.
pub async fn serve_metrics(listener: TcpListener, registry: Arc<Registry>) {
    const CONNECTIONS: usize = 16;
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    let metrics = crate::metrics::enable();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
            let registry = registry.clone();
            async move {
                let path = req.uri().path();
                let response = match answer(&registry, path).await {
                    Some(r) => r,
                    None if path == "/metrics" => scrape(&registry, metrics),
                    None => text(StatusCode::NOT_FOUND, "not found\n".into()),
                };
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            // Bounded: a scraper that stalls loses its connection.
            match tokio::time::timeout(Duration::from_secs(60), conn).await {
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "metrics connection"),
                Err(_) => tracing::debug!(%remote, "metrics connection closed after 60 s"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

/// The metrics, with the gauges read from their sources first.
fn scrape(registry: &Registry, metrics: &crate::metrics::Metrics) -> Response<Body> {
    let (open, in_flight) = registry.connections.counts();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    metrics.connections.set(count(open));
    metrics.in_flight.set(count(in_flight));
    if let Some(uploads) = &registry.uploads {
        metrics.upload_sessions.set(count(uploads.open()));
    }
    if let Some(notifier) = registry.notifier() {
        for (endpoint, queued) in notifier.queued() {
            let labels = crate::metrics::EndpointLabels {
                endpoint: endpoint.to_owned(),
            };
            metrics
                .notification_queue
                .get_or_create(&labels)
                .set(count(queued));
        }
    }
    if let Some((blobs, bytes)) = registry.store().totals() {
        metrics.store_blobs.set(blobs);
        metrics.store_bytes.set(bytes);
    }
    match metrics.encode() {
        Ok(body) => typed(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}\n"),
        ),
    }
}
