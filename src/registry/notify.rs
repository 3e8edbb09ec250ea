//! Notifications: what changed (and, if asked, what was pulled), sent to HTTP endpoints in
//! distribution's envelope (`application/vnd.docker.distribution.events.v1+json`, `{"events":
//! [...]}`), so what listens to distribution listens to us.
//!
//! Events are made from an answered request (`Notifier::observe`: its route, method, status
//! and headers say what happened) and from on-demand packs. Each endpoint has its own bounded
//! queue and one task that sends it in order: what is queued goes in one envelope (at most
//! [`BATCH`] events), retried after `backoff` until the endpoint takes it (any 2xx or 3xx).
//! A client never waits for an endpoint: an event that finds its queue full is dropped,
//! counted (`quinistry_notification_events_total{result="dropped"}`) and logged. The queue lives in memory;
//! what is queued when the process stops is lost. On a shared store each replica sends the
//! events of the requests it answered, so each event is sent once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hyper::header::{self, HeaderMap};
use hyper::{Method, StatusCode};
use serde::Serialize;

use super::router::{Reference, Route};
use crate::reference::Name;

/// The envelope's media type.
pub const ENVELOPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// Most events in one envelope.
pub const BATCH: usize = 64;

/// The media type of blob events (distribution's, for layers and configs alike).
const BLOB_TYPE: &str = "application/octet-stream";

/// One endpoint, as configured.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// One attempt's limit.
    pub timeout: Duration,
    /// The wait between attempts while the endpoint fails.
    pub backoff: Duration,
    /// The actions sent (`push`, `pull`, `delete`, `mount`).
    pub actions: HashSet<String>,
    /// Events of these target media types are not sent.
    pub ignored_media_types: HashSet<String>,
    /// Events held for the endpoint at most; past it new ones are dropped.
    pub queue: usize,
}

impl Endpoint {
    /// The defaults: push, delete and mount; 2 s timeout, 1 s backoff, 10,000 queued.
    pub fn new(name: &str, url: &str) -> Endpoint {
        Endpoint {
            name: name.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            timeout: Duration::from_secs(2),
            backoff: Duration::from_secs(1),
            actions: ["push", "delete", "mount"].map(str::to_owned).into(),
            ignored_media_types: HashSet::new(),
            queue: 10_000,
        }
    }
}

/// An event, as distribution writes it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: String,
    pub timestamp: String,
    pub action: &'static str,
    pub target: Target,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestInfo>,
    pub actor: Actor,
    pub source: Source,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    pub repository: String,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A mount's source repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_repository: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub struct RequestInfo {
    pub id: String,
    pub addr: String,
    pub host: String,
    pub method: String,
    pub useragent: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub addr: String,
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

/// The size of a blob a request stored, for its event (the answer's extension).
#[derive(Debug, Clone, Copy)]
pub struct Stored(pub u64);

/// The endpoints' queues and this process's name in events.
pub struct Notifier {
    sinks: Vec<Sink>,
    source: Source,
}

struct Sink {
    endpoint: Endpoint,
    queue: tokio::sync::mpsc::Sender<Arc<Event>>,
    /// Events dropped so far (for the log's pace; the metrics count them too).
    dropped: AtomicU64,
}

impl Notifier {
    /// Starts one sending task per endpoint (on the current runtime). `addr` names this
    /// process in every event's `source`.
    pub fn start(endpoints: Vec<Endpoint>, addr: String) -> Result<Notifier, String> {
        // reqwest's rustls takes the process's provider (ring, as the server's).
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let mut sinks = Vec::new();
        for endpoint in endpoints {
            let mut headers = HeaderMap::new();
            for (k, v) in &endpoint.headers {
                let name = header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| {
                    format!(
                        "notifications.endpoints {}: header {k:?}: {e}",
                        endpoint.name
                    )
                })?;
                let value = header::HeaderValue::from_str(v).map_err(|e| {
                    format!("notifications.endpoints {}: header {k}: {e}", endpoint.name)
                })?;
                headers.insert(name, value);
            }
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(ENVELOPE),
            );
            let client = reqwest::Client::builder()
                .timeout(endpoint.timeout)
                .default_headers(headers)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("notifications.endpoints {}: {e}", endpoint.name))?;
            let (queue, events) = tokio::sync::mpsc::channel(endpoint.queue.max(1));
            tokio::spawn(deliver(endpoint.clone(), client, events));
            sinks.push(Sink {
                endpoint,
                queue,
                dropped: AtomicU64::new(0),
            });
        }
        Ok(Notifier {
            sinks,
            source: Source {
                addr,
                instance_id: uuid(),
            },
        })
    }

    /// Whether any endpoint wants events of `action`.
    pub fn wants(&self, action: &str) -> bool {
        self.sinks
            .iter()
            .any(|s| s.endpoint.actions.contains(action))
    }

    /// Queues `event` for every endpoint that wants it; never waits.
    pub fn send(&self, event: Event) {
        let event = Arc::new(event);
        for sink in &self.sinks {
            let e = &sink.endpoint;
            if !e.actions.contains(event.action)
                || e.ignored_media_types.contains(&event.target.media_type)
            {
                continue;
            }
            if sink.queue.try_send(event.clone()).is_err() {
                let dropped = sink.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                crate::metrics::notified(&e.name, "dropped", 1);
                // One line per 1,000 drops: a dead endpoint must not flood the log.
                if dropped % 1000 == 1 {
                    tracing::warn!(
                        endpoint = %e.name, dropped, queue = e.queue,
                        "notification queue full: events dropped"
                    );
                }
            }
        }
    }

    /// Per endpoint: its name and the events queued for it now.
    pub fn queued(&self) -> Vec<(&str, usize)> {
        self.sinks
            .iter()
            .map(|s| {
                let queued = s.endpoint.queue.max(1) - s.queue.capacity();
                (s.endpoint.name.as_str(), queued)
            })
            .collect()
    }

    /// The event an answered request makes, if it changed (or, for endpoints that want it,
    /// read) something: a manifest or blob pushed, a blob mounted, a manifest, tag or blob
    /// deleted, a manifest or blob pulled.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &self,
        route: &Route,
        req: &hyper::http::request::Parts,
        answer: &hyper::http::response::Parts,
        remote: std::net::SocketAddr,
        user: Option<&str>,
        received: u64,
        secure: bool,
    ) {
        let status = answer.status;
        let method = &req.method;
        let mounted = req
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("mount=")));
        let (action, name, kind) = match (route, method, status) {
            (Route::Manifest(n, _), &Method::PUT, StatusCode::CREATED) => ("push", n, "manifests"),
            (Route::Manifest(n, _), &Method::GET, StatusCode::OK) => ("pull", n, "manifests"),
            (Route::Manifest(n, _), &Method::DELETE, StatusCode::ACCEPTED) => {
                ("delete", n, "manifests")
            }
            (Route::Upload(n, None), &Method::POST, StatusCode::CREATED) if mounted => {
                ("mount", n, "blobs")
            }
            (Route::Upload(n, _), &Method::POST | &Method::PUT, StatusCode::CREATED) => {
                ("push", n, "blobs")
            }
            (Route::Blob(n, _), &Method::GET, StatusCode::OK | StatusCode::TEMPORARY_REDIRECT) => {
                ("pull", n, "blobs")
            }
            (Route::Blob(n, _), &Method::DELETE, StatusCode::ACCEPTED) => ("delete", n, "blobs"),
            _ => return,
        };
        if !self.wants(action) {
            return;
        }
        let text = |headers: &HeaderMap, name: header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let length = |headers: &HeaderMap| {
            text(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
        };
        let answered_digest = text(
            &answer.headers,
            header::HeaderName::from_static("docker-content-digest"),
        );
        let (digest, tag) = match route {
            Route::Manifest(_, Reference::Digest(d)) => (Some(d.to_string()), None),
            Route::Manifest(_, Reference::Tag(t)) => (answered_digest, Some(t.to_string())),
            Route::Blob(_, d) => (Some(d.to_string()), None),
            _ => (answered_digest, None),
        };
        let (media_type, size) = match (kind, action) {
            ("manifests", "push") => (
                text(&req.headers, header::CONTENT_TYPE).unwrap_or_default(),
                Some(received),
            ),
            ("manifests", "pull") => (
                text(&answer.headers, header::CONTENT_TYPE).unwrap_or_default(),
                length(&answer.headers),
            ),
            ("manifests", _) => (String::new(), None),
            (_, "push") => (
                BLOB_TYPE.to_owned(),
                answer.extensions.get::<Stored>().map(|s| s.0),
            ),
            (_, "pull") if status == StatusCode::OK => {
                (BLOB_TYPE.to_owned(), length(&answer.headers))
            }
            _ => (BLOB_TYPE.to_owned(), None),
        };
        let host = text(&req.headers, header::HOST)
            .or_else(|| req.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let scheme = if secure { "https" } else { "http" };
        let digest = digest.unwrap_or_default();
        let target_ref = if digest.is_empty() {
            tag.clone().unwrap_or_default()
        } else {
            digest.clone()
        };
        let from_repository = (action == "mount")
            .then(|| super::query_pairs(req.uri.query()))
            .and_then(|pairs| pairs.into_iter().find(|(k, _)| *k == "from"))
            .map(|(_, v)| v);
        self.send(Event {
            id: uuid(),
            timestamp: timestamp(),
            action,
            target: Target {
                media_type,
                size,
                digest,
                length: size,
                repository: name.to_string(),
                url: format!("{scheme}://{host}/v2/{name}/{kind}/{target_ref}"),
                tag,
                from_repository,
            },
            request: Some(RequestInfo {
                id: uuid(),
                addr: remote.to_string(),
                host,
                method: method.to_string(),
                useragent: text(&req.headers, header::USER_AGENT).unwrap_or_default(),
            }),
            actor: Actor {
                name: user.unwrap_or_default().to_owned(),
            },
            source: self.source.clone(),
        });
    }

    /// The event of an image packed on demand for the first time: a push by this process.
    pub fn packed(&self, name: &Name, tag: &str, digest: &str, media_type: &str, size: u64) {
        if !self.wants("push") {
            return;
        }
        self.send(Event {
            id: uuid(),
            timestamp: timestamp(),
            action: "push",
            target: Target {
                media_type: media_type.to_owned(),
                size: Some(size),
                digest: digest.to_owned(),
                length: Some(size),
                repository: name.to_string(),
                url: format!("/v2/{name}/manifests/{digest}"),
                tag: Some(tag.to_owned()),
                from_repository: None,
            },
            request: None,
            actor: Actor {
                name: "quinistry (on demand)".to_owned(),
            },
            source: self.source.clone(),
        });
    }
}

/// Sends an endpoint's queue in order, forever (until the notifier is dropped).
async fn deliver(
    endpoint: Endpoint,
    client: reqwest::Client,
    mut events: tokio::sync::mpsc::Receiver<Arc<Event>>,
) {
    let mut batch: Vec<Arc<Event>> = Vec::with_capacity(BATCH);
    loop {
        if events.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let events_of: Vec<&Event> = batch.iter().map(|e| e.as_ref()).collect();
        let body = match serde_json::to_vec(&serde_json::json!({ "events": events_of })) {
            Ok(body) => bytes::Bytes::from(body),
            Err(error) => {
                tracing::error!(%error, "an event that does not serialize: dropped");
                batch.clear();
                continue;
            }
        };
        let mut failures = 0u64;
        loop {
            let why = match client.post(&endpoint.url).body(body.clone()).send().await {
                Ok(r) if r.status().is_success() || r.status().is_redirection() => break,
                Ok(r) => format!("answered {}", r.status()),
                Err(e) => e.to_string(),
            };
            failures += 1;
            crate::metrics::notify_failed(&endpoint.name);
            // The first failure and then one line a minute or so, not one per attempt.
            let every = (60 / endpoint.backoff.as_secs().max(1)).max(1);
            if failures == 1 || failures.is_multiple_of(every) {
                tracing::warn!(
                    endpoint = %endpoint.name, events = batch.len(), failures, error = why,
                    "notification endpoint failed; retrying"
                );
            }
            tokio::time::sleep(endpoint.backoff).await;
        }
        if failures > 0 {
            tracing::info!(endpoint = %endpoint.name, failures, "notification endpoint answers again");
        }
        crate::metrics::notified(&endpoint.name, "sent", batch.len() as u64);
        batch.clear();
    }
}

/// A random version 4 UUID, as distribution's event ids are.
fn uuid() -> String {
    let mut b = [0u8; 16];
    // Without an entropy source ids repeat; events still go out.
    let _ = getrandom::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn timestamp() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_version_4_uuids() {
        let id = uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(uuid(), id);
    }
}
