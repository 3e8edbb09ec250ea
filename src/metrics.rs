//! Prometheus metrics (`serve --metrics-listen`), with `prometheus-client`.
//!
//! Off unless enabled: every recording site asks [`get`], which is `None` until [`enable`], so
//! a server without a metrics listener pays one atomic load per site and nothing else.
//! Requests are counted per thread and summed when scraped (see `Shard`). Gauges of things
//! that have a count already (connections, requests in flight, upload sessions, the store's
//! size) are read when scraped, not kept in step.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A request's method, route and answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// The API resource (`manifest`, `blob`, `upload`, ...), never the path: the label sets
    /// stay few whatever clients ask for.
    pub route: &'static str,
    pub status: u16,
}

/// A method and route, for latencies and bytes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

/// Which limit a client hit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `connections_per_client` (a connection closed at once), `stalled_answer` (a
    /// connection closed: no piece of its answers taken for the write timeout),
    /// `slow_body` (a request body under the minimum rate), `auth_throttled` (a login
    /// answered 429 unchecked).
    pub limit: &'static str,
}

/// How a pack ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PackLabels {
    /// `packed`, `cached` (every layer from the layer cache) or `failed`.
    pub result: &'static str,
}

/// A notification endpoint (by its configured name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

/// What became of events for an endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub endpoint: String,
    /// `sent` (the endpoint took it) or `dropped` (its queue was full).
    pub result: &'static str,
}

/// What a mirror did for a request, by upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub upstream: String,
    /// `hit` (from the store), `miss` (fetched), `stale` (a tag past its TTL served because
    /// the upstream failed) or `error` (nothing to serve).
    pub result: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the process keeps.
pub struct Metrics {
    /// Set from the connections when scraped.
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
    /// The online collector's passes and what they removed.
    pub gc_passes: Counter,
    pub gc_blobs: Counter,
    pub gc_bytes: Counter,
    pub gc_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub limits: Family<LimitLabels, Counter>,
    /// Set from the notifier when scraped.
    pub notification_queue: Family<EndpointLabels, Gauge>,
    pub notifications: Family<NotificationLabels, Counter>,
    pub notification_failures: Family<EndpointLabels, Counter>,
    pub mirror_requests: Family<MirrorLabels, Counter>,
    pub mirror_bytes: Family<EndpointLabels, Counter>,
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

/// 10 ms to ~5 min.
fn pack_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            in_flight: Gauge::default(),
            connections: Gauge::default(),
            upload_sessions: Gauge::default(),
            packs: Family::default(),
            limits: Family::default(),
            notification_queue: Family::default(),
            notifications: Family::default(),
            notification_failures: Family::default(),
            mirror_requests: Family::default(),
            mirror_bytes: Family::default(),
            pack_input_bytes: Counter::default(),
            pack_seconds: Family::new_with_constructor(pack_histogram),
            layer_cache_hits: Counter::default(),
            layer_cache_misses: Counter::default(),
            store_bytes: Gauge::default(),
            store_blobs: Gauge::default(),
            gc_passes: Counter::default(),
            gc_blobs: Counter::default(),
            gc_bytes: Counter::default(),
            gc_seconds: Gauge::default(),
            registry: Registry::with_prefix("quinistry"),
        };
        m.store_bytes.set(-1);
        m.store_blobs.set(-1);
        let r = &mut m.registry;
        // Requests, their latencies and bytes: counted per thread (see `Shard`).
        r.register_collector(Box::new(Requests));
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
        r.register(
            "notification_queue",
            "Events waiting for their endpoint, by endpoint",
            m.notification_queue.clone(),
        );
        r.register(
            "notification_events",
            "Events sent to or dropped for an endpoint (its queue full)",
            m.notifications.clone(),
        );
        r.register(
            "mirror_requests",
            "Manifests and blobs asked of a mirror, by upstream and result",
            m.mirror_requests.clone(),
        );
        r.register_with_unit(
            "mirror_upstream",
            "Bytes of blobs a mirror fetched from an upstream (its `endpoint` label)",
            Unit::Bytes,
            m.mirror_bytes.clone(),
        );
        r.register(
            "notification_failures",
            "Attempts to send to an endpoint that failed (then retried)",
            m.notification_failures.clone(),
        );
        r.register(
            "limits_hit",
            "Clients stopped by a limit, by limit",
            m.limits.clone(),
        );
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
        r.register(
            "gc_passes",
            "Collector passes finished",
            m.gc_passes.clone(),
        );
        r.register(
            "gc_reclaimed_blobs",
            "Blobs the collector removed",
            m.gc_blobs.clone(),
        );
        r.register_with_unit(
            "gc_reclaimed",
            "Bytes of blobs the collector removed",
            Unit::Bytes,
            m.gc_bytes.clone(),
        );
        r.register_with_unit(
            "gc_last_pass_duration",
            "How long the last collector pass took",
            Unit::Seconds,
            m.gc_seconds.clone(),
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

/// Upper bounds of the request latency buckets: 0.5 ms to ~65 s, doubling.
const LATENCY_BUCKETS: usize = 18;

fn latency_bound(i: usize) -> f64 {
    0.0005 * f64::from(1u32 << i)
}

/// What one label set of requests added up to on one thread.
#[derive(Clone, Default)]
struct RequestStats {
    count: u64,
    sent: u64,
    received: u64,
    seconds: f64,
    /// Requests per latency bucket (not cumulative); the rest are above the last bound.
    buckets: [u64; LATENCY_BUCKETS],
}

impl RequestStats {
    fn add(&mut self, other: &RequestStats) {
        self.count += other.count;
        self.sent += other.sent;
        self.received += other.received;
        self.seconds += other.seconds;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
    }
}

/// The request counts of one thread. Every request adds to its own thread's shard, under a
/// lock only the scrape ever contends for, so the threads serving requests never share a
/// cache line for the metrics. Measured with wrk on manifests (`benches/ops.sh`): counting
/// into prometheus-client's families and histograms cost 6-9% of the request rate (their
/// shared read lock, SipHash of the labels, the histogram's mutex, counters bouncing
/// between cores); with shards the rate was the plain server's (1.005x, within the noise).
type Shard = std::sync::Mutex<rustc_hash::FxHashMap<RequestLabels, RequestStats>>;

/// Every thread's shard; the first holds what threads that ended had counted.
static SHARDS: std::sync::Mutex<Vec<Arc<Shard>>> = std::sync::Mutex::new(Vec::new());

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A thread's shard; when the thread ends, its counts move to the first shard, so the list
/// does not grow with threads that come and go.
struct Local(Arc<Shard>);

impl Local {
    fn new() -> Local {
        let shard = Arc::new(Shard::default());
        let mut shards = lock(&SHARDS);
        if shards.is_empty() {
            shards.push(Arc::new(Shard::default()));
        }
        shards.push(shard.clone());
        Local(shard)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let mut shards = lock(&SHARDS);
        shards.retain(|s| !Arc::ptr_eq(s, &self.0));
        let ended = std::mem::take(&mut *lock(&self.0));
        if let Some(retired) = shards.first() {
            let mut retired = lock(retired);
            for (labels, stats) in ended {
                retired.entry(labels).or_default().add(&stats);
            }
        }
    }
}

thread_local! {
    static LOCAL: Local = Local::new();
}

/// Records one answered request: its labels, how long it took, its body bytes out and in.
pub fn request(labels: RequestLabels, seconds: f64, sent: u64, received: u64) {
    if get().is_none() {
        return;
    }
    let bucket = (0..LATENCY_BUCKETS).find(|&i| seconds <= latency_bound(i));
    // During the thread's teardown there is no shard left; that request goes uncounted.
    let _ = LOCAL.try_with(|local| {
        let mut shard = lock(&local.0);
        let stats = shard.entry(labels).or_default();
        stats.count += 1;
        stats.sent += sent;
        stats.received += received;
        stats.seconds += seconds;
        if let Some(i) = bucket {
            stats.buckets[i] += 1;
        }
    });
}

/// Encodes the shards' sums at each scrape.
#[derive(Debug)]
struct Requests;

impl prometheus_client::collector::Collector for Requests {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        let shards: Vec<Arc<Shard>> = lock(&SHARDS).clone();
        let mut by_status: BTreeMapOf<RequestLabels> = Default::default();
        let mut by_route: BTreeMapOf<RouteLabels> = Default::default();
        for shard in shards {
            for (labels, stats) in lock(&shard).iter() {
                let route = RouteLabels {
                    method: labels.method,
                    route: labels.route,
                };
                by_status.entry(labels.clone()).or_default().add(stats);
                by_route.entry(route).or_default().add(stats);
            }
        }
        let mut family = encoder.encode_descriptor(
            "http_requests",
            "HTTP requests answered, by method, API route and status",
            None,
            MetricType::Counter,
        )?;
        for (labels, stats) in &by_status {
            ConstCounter::new(stats.count).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "http_request_duration",
            "Time from a request's arrival to the end of its answer's body",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, stats) in &by_route {
            let mut cumulative = 0;
            let mut buckets: Vec<(f64, u64)> = (0..LATENCY_BUCKETS)
                .map(|i| {
                    cumulative += stats.buckets[i];
                    (latency_bound(i), cumulative)
                })
                .collect();
            buckets.push((f64::INFINITY, stats.count));
            family
                .encode_family(labels)?
                .encode_histogram::<RouteLabels>(stats.seconds, stats.count, &buckets, None)?;
        }
        for (name, help, bytes) in [
            (
                "http_response",
                "Bytes of response bodies sent",
                (|s: &RequestStats| s.sent) as fn(&RequestStats) -> u64,
            ),
            (
                "http_request",
                "Bytes of request bodies received",
                |s: &RequestStats| s.received,
            ),
        ] {
            let mut family =
                encoder.encode_descriptor(name, help, Some(&Unit::Bytes), MetricType::Counter)?;
            for (labels, stats) in &by_route {
                ConstCounter::new(bytes(stats)).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// Sums by label set, in a stable order.
type BTreeMapOf<L> = std::collections::BTreeMap<L, RequestStats>;

/// Counts `n` clients stopped by `limit` (see `LimitLabels`).
pub fn limit_hit(limit: &'static str, n: u64) {
    if let Some(m) = get() {
        m.limits.get_or_create(&LimitLabels { limit }).inc_by(n);
    }
}

/// Counts `n` events `result` (`sent`, `dropped`) for `endpoint`.
pub fn notified(endpoint: &str, result: &'static str, n: u64) {
    if let Some(m) = get() {
        let labels = NotificationLabels {
            endpoint: endpoint.to_owned(),
            result,
        };
        m.notifications.get_or_create(&labels).inc_by(n);
    }
}

/// Counts a failed attempt to send to `endpoint`.
pub fn notify_failed(endpoint: &str) {
    if let Some(m) = get() {
        let labels = EndpointLabels {
            endpoint: endpoint.to_owned(),
        };
        m.notification_failures.get_or_create(&labels).inc();
    }
}

/// Counts what a mirror of `upstream` did for one manifest or blob.
pub fn mirrored(upstream: &str, result: &'static str) {
    if let Some(m) = get() {
        let labels = MirrorLabels {
            upstream: upstream.to_owned(),
            result,
        };
        m.mirror_requests.get_or_create(&labels).inc();
    }
}

/// Counts `n` bytes fetched from `upstream`.
pub fn mirror_fetched(upstream: &str, n: u64) {
    if let Some(m) = get() {
        let labels = EndpointLabels {
            endpoint: upstream.to_owned(),
        };
        m.mirror_bytes.get_or_create(&labels).inc_by(n);
    }
}

/// Counts a finished collector pass.
pub fn collected(report: &crate::store::gc::GcReport) {
    if let Some(m) = get() {
        m.gc_passes.inc();
        if !report.dry_run {
            m.gc_blobs.inc_by(report.reclaimed as u64);
            m.gc_bytes.inc_by(report.reclaimed_bytes);
        }
        m.gc_seconds.set(report.seconds);
    }
}

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
