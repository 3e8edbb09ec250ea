//! Prometheus metrics (`serve --metrics-listen`), with `prometheus-client`.
//!
//! Off unless enabled: every recording site asks [`get`], which is `None` until [`enable`], so
//! a server without a metrics listener pays one atomic load per site and nothing else.
//! Gauges of things that have a count already (upload sessions, the store's size) are read
//! when scraped, not kept in step.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A request's method, route and answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// The API resource (`manifest`, `blob`, `upload`, ...), never the path: the label sets
    /// stay few whatever clients ask for.
    pub route: &'static str,
    pub status: u16,
}

/// A method and route, for latencies and bytes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

/// How a pack ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PackLabels {
    /// `packed`, `cached` (every layer from the layer cache) or `failed`.
    pub result: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the process keeps.
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Histograms<RouteLabels>,
    /// Bytes of response bodies sent.
    pub sent_bytes: Family<RouteLabels, Counter>,
    /// Bytes of request bodies received (pushed blobs and manifests).
    pub received_bytes: Family<RouteLabels, Counter>,
    pub in_flight: Gauge,
    pub connections: Gauge,
    /// Set from the registry when scraped.
    pub upload_sessions: Gauge,
    pub packs: Family<PackLabels, Counter>,
    pub pack_input_bytes: Counter,
    pub pack_seconds: Histograms<PackLabels>,
    pub layer_cache_hits: Counter,
    pub layer_cache_misses: Counter,
    /// Set from the store's running count when scraped; `-1` until its first walk is done.
    pub store_bytes: Gauge,
    pub store_blobs: Gauge,
    registry: Registry,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The metrics, if enabled.
pub fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// Turns the metrics on (idempotent) and returns them.
pub fn enable() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// 0.5 ms to ~65 s: manifests are answered in well under a millisecond, blobs and
/// on-demand packs take seconds.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// 10 ms to ~5 min.
fn pack_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(request_histogram),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
            in_flight: Gauge::default(),
            connections: Gauge::default(),
            upload_sessions: Gauge::default(),
            packs: Family::default(),
            pack_input_bytes: Counter::default(),
            pack_seconds: Family::new_with_constructor(pack_histogram),
            layer_cache_hits: Counter::default(),
            layer_cache_misses: Counter::default(),
            store_bytes: Gauge::default(),
            store_blobs: Gauge::default(),
            registry: Registry::with_prefix("quinistry"),
        };
        m.store_bytes.set(-1);
        m.store_blobs.set(-1);
        let r = &mut m.registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by method, API route and status",
            m.requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to the end of its answer's body",
            Unit::Seconds,
            m.request_seconds.clone(),
        );
        r.register_with_unit(
            "http_response",
            "Bytes of response bodies sent",
            Unit::Bytes,
            m.sent_bytes.clone(),
        );
        r.register_with_unit(
            "http_request",
            "Bytes of request bodies received",
            Unit::Bytes,
            m.received_bytes.clone(),
        );
        r.register(
            "http_requests_in_flight",
            "Requests whose answer is not finished",
            m.in_flight.clone(),
        );
        r.register(
            "connections_open",
            "Client connections open",
            m.connections.clone(),
        );
        r.register(
            "upload_sessions",
            "Blob upload sessions open",
            m.upload_sessions.clone(),
        );
        r.register("packs", "Images packed, by result", m.packs.clone());
        r.register_with_unit(
            "pack_input",
            "Bytes of files read into packed images",
            Unit::Bytes,
            m.pack_input_bytes.clone(),
        );
        r.register_with_unit(
            "pack_duration",
            "Time each pack took, by result",
            Unit::Seconds,
            m.pack_seconds.clone(),
        );
        r.register(
            "layer_cache_hits",
            "Layers taken from the layer cache instead of being packed",
            m.layer_cache_hits.clone(),
        );
        r.register(
            "layer_cache_misses",
            "Layers packed because the layer cache had no record of their inputs",
            m.layer_cache_misses.clone(),
        );
        r.register_with_unit(
            "store",
            "Bytes of blobs in the store (-1 until counted)",
            Unit::Bytes,
            m.store_bytes.clone(),
        );
        r.register(
            "store_blobs",
            "Blobs in the store (-1 until counted)",
            m.store_blobs.clone(),
        );
        m
    }

    /// The text exposition format (OpenMetrics text, which Prometheus reads).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 << 10);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Records one finished pack.
pub fn packed(result: &'static str, input_bytes: u64, seconds: f64) {
    if let Some(m) = get() {
        let labels = PackLabels { result };
        m.packs.get_or_create(&labels).inc();
        m.pack_input_bytes.inc_by(input_bytes);
        m.pack_seconds.get_or_create(&labels).observe(seconds);
    }
}

/// Records whether a layer came from the layer cache.
pub fn layer_cache(hit: bool) {
    if let Some(m) = get() {
        if hit {
            m.layer_cache_hits.inc();
        } else {
            m.layer_cache_misses.inc();
        }
    }
}
