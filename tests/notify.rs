//! Notifications: a receiver in the test takes the server's envelopes as distribution's
//! listeners would; it can be up, down (503) or silent (never answers).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{Serving, metrics_addr, raw_request, raw_request_with_body, scrape, value};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    /// Answers 503 (and keeps nothing).
    Down,
    /// Reads the request and never answers.
    Silent,
}

/// What the receiver took: each envelope's headers (lowercase names) and events, with when
/// it came; and how many requests it refused.
#[derive(Default)]
struct Received {
    envelopes: Vec<Envelope>,
    refused: usize,
}

/// An envelope's headers, its events, and when it came.
type Envelope = (Vec<(String, String)>, Vec<Value>, Instant);

struct Receiver {
    addr: String,
    mode: Arc<Mutex<Mode>>,
    got: Arc<(Mutex<Received>, Condvar)>,
}

impl Receiver {
    fn start(mode: Mode) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let mode = Arc::new(Mutex::new(mode));
        let got: Arc<(Mutex<Received>, Condvar)> = Arc::default();
        let (m, g) = (mode.clone(), got.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (m, g) = (m.clone(), g.clone());
                std::thread::spawn(move || serve(conn, &m, &g));
            }
        });
        Receiver { addr, mode, got }
    }

    fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
    }

    /// Waits (at most 60 s: a bound, not a timing check) until `done` holds of what came.
    fn wait(&self, what: &str, done: impl Fn(&Received) -> bool) {
        let (lock, cv) = &*self.got;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = lock.lock().expect("got");
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the receiver never saw {what}");
            got = cv.wait_timeout(got, left).expect("wait").0;
        }
    }

    fn events(&self) -> Vec<Value> {
        let got = self.got.0.lock().expect("got");
        got.envelopes
            .iter()
            .flat_map(|(_, e, _)| e.clone())
            .collect()
    }
}

/// One connection: HTTP/1.1 requests with a Content-Length, kept alive.
fn serve(conn: TcpStream, mode: &Mutex<Mode>, got: &(Mutex<Received>, Condvar)) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut conn = conn;
    loop {
        let mut headers = Vec::new();
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let now = *mode.lock().expect("mode");
        let (lock, cv) = got;
        match now {
            Mode::Silent => {
                // Hold the connection until the client gives up on it.
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                return;
            }
            Mode::Down => {
                lock.lock().expect("got").refused += 1;
                cv.notify_all();
                let _ = conn.write_all(b"HTTP/1.1 503 Down\r\nContent-Length: 0\r\n\r\n");
            }
            Mode::Up => {
                let envelope: Value = serde_json::from_slice(&body).expect("an envelope of JSON");
                let events = envelope["events"].as_array().expect("events").clone();
                lock.lock()
                    .expect("got")
                    .envelopes
                    .push((headers, events, Instant::now()));
                cv.notify_all();
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        }
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pushes `bytes` whole (`POST ?digest=`) into `repo`; its digest.
fn push_blob(addr: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let length = format!("Content-Length: {}", bytes.len());
    let r = raw_request_with_body(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
        &[&length, "Content-Type: application/octet-stream"],
        bytes,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    digest
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An OCI manifest of a config and a layer already in the repository.
fn manifest(config: &(String, usize), layer: &(String, usize)) -> String {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.0, "size": config.1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer.0, "size": layer.1}]
    })
    .to_string()
}

fn put_manifest(addr: &str, repo: &str, reference: &str, body: &str) -> Duration {
    let length = format!("Content-Length: {}", body.len());
    let content_type = format!("Content-Type: {MANIFEST}");
    let start = Instant::now();
    let r = raw_request_with_body(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[&length, &content_type],
        body.as_bytes(),
    );
    let took = start.elapsed();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    took
}

/// A server with pushes on and `config` as its config file.
fn start(dir: &Path, config: &str, extra: &[&str]) -> Serving {
    let input = dir.join("input");
    std::fs::write(&input, b"notify test input").expect("input");
    let path = dir.join("q.toml");
    std::fs::write(&path, config).expect("config");
    let mut args = vec![
        "--push",
        "--no-prepack",
        "--name",
        "n/start",
        "--config",
        path.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    args.push(input.to_str().expect("utf-8 path"));
    Serving::start(&dir.join("store"), dir, &args)
}

/// A receiver gets an event per push (each blob and the manifest), mount, pull and delete,
/// in distribution's envelope with the configured headers; a second endpoint with the
/// default actions and blob events ignored gets only the manifest's push and the delete.
#[test]
fn each_push_mount_pull_and_delete_is_an_event_in_distributions_envelope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = Receiver::start(Mode::Up);
    let some = Receiver::start(Mode::Up);
    let config = format!(
        r#"
[[notifications.endpoints]]
name = "all"
url = "{}"
headers = {{ Authorization = "Bearer s3cret" }}
timeout = "2s"
backoff = "100ms"
actions = ["push", "pull", "delete", "mount"]

[[notifications.endpoints]]
name = "manifests"
url = "{}"
ignored_media_types = ["application/octet-stream"]
"#,
        all.url(),
        some.url()
    );
    let server = start(dir.path(), &config, &[]);
    let addr = server.addr.as_str();

    let layer_bytes = b"layer bytes of the notify test".to_vec();
    let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let pushed = Instant::now();
    let layer = (push_blob(addr, "n/one", &layer_bytes), layer_bytes.len());
    let cfg = (push_blob(addr, "n/one", &config_bytes), config_bytes.len());
    let body = manifest(&cfg, &layer);
    put_manifest(addr, "n/one", "v1", &body);
    let manifest_digest = sha256(body.as_bytes());
    all.wait("the push's three events", |r| {
        r.envelopes.iter().map(|e| e.1.len()).sum::<usize>() >= 3
    });
    // Measured, not asserted: a busy machine must not fail the test.
    let arrived = all.got.0.lock().expect("got").envelopes[0].2;
    eprintln!(
        "first event arrived {:?} after the push began",
        arrived.duration_since(pushed)
    );
    let mount = raw_request(
        addr,
        "POST",
        &format!("/v2/n/two/blobs/uploads/?mount={}&from=n/one", layer.0),
        &["Content-Length: 0"],
    );
    assert_eq!(mount.status, 201);
    let get = raw_request(
        addr,
        "GET",
        "/v2/n/one/manifests/v1",
        &[
            "Accept: application/vnd.oci.image.manifest.v1+json",
            "User-Agent: notify-test/1",
        ],
    );
    assert_eq!(get.status, 200);
    let head = raw_request(addr, "HEAD", "/v2/n/one/manifests/v1", &[]);
    assert_eq!(head.status, 200);
    let delete = raw_request(
        addr,
        "DELETE",
        &format!("/v2/n/one/manifests/{manifest_digest}"),
        &[],
    );
    assert_eq!(delete.status, 202);
    // A failed push makes no event.
    let bad = raw_request_with_body(
        addr,
        "PUT",
        "/v2/n/one/manifests/bad",
        &["Content-Length: 2", &format!("Content-Type: {MANIFEST}")],
        b"{}",
    );
    assert_eq!(bad.status, 400);
    all.wait("six events", |r| {
        r.envelopes.iter().map(|e| e.1.len()).sum::<usize>() >= 6
    });
    some.wait("two events", |r| {
        r.envelopes.iter().map(|e| e.1.len()).sum::<usize>() >= 2
    });

    let events = all.events();
    let summary: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_owned(),
                e["target"]["repository"].as_str().unwrap_or("").to_owned(),
                e["target"]["digest"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let s = |a: &str, r: &str, d: &str| (a.to_owned(), r.to_owned(), d.to_owned());
    assert_eq!(
        summary,
        vec![
            s("push", "n/one", &layer.0),
            s("push", "n/one", &cfg.0),
            s("push", "n/one", &manifest_digest),
            s("mount", "n/two", &layer.0),
            s("pull", "n/one", &manifest_digest),
            s("delete", "n/one", &manifest_digest),
        ],
        "one event each, in order (HEAD and the failed push make none)"
    );
    let push = &events[2];
    assert_eq!(push["target"]["mediaType"], MANIFEST);
    assert_eq!(push["target"]["size"], body.len());
    assert_eq!(push["target"]["length"], body.len());
    assert_eq!(push["target"]["tag"], "v1");
    assert_eq!(
        push["target"]["url"],
        format!("http://{addr}/v2/n/one/manifests/{manifest_digest}")
    );
    assert_eq!(push["request"]["method"], "PUT");
    assert_eq!(push["request"]["host"], addr);
    assert!(
        push["request"]["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    assert!(push["id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(push["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(push["source"]["addr"], addr);
    let instance = &events[0]["source"]["instanceID"];
    assert!(
        events
            .iter()
            .all(|e| e["source"]["instanceID"] == *instance)
    );
    assert_eq!(events[0]["target"]["mediaType"], "application/octet-stream");
    assert_eq!(events[0]["target"]["size"], layer_bytes.len());
    assert_eq!(events[1]["target"]["size"], config_bytes.len());
    assert_eq!(events[3]["target"]["fromRepository"], "n/one");
    assert_eq!(events[4]["request"]["useragent"], "notify-test/1");
    let (headers, _, _) = &all.got.0.lock().expect("got").envelopes[0];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        header("content-type"),
        Some("application/vnd.docker.distribution.events.v1+json")
    );
    assert_eq!(header("authorization"), Some("Bearer s3cret"));

    let actions: Vec<String> = some
        .events()
        .iter()
        .map(|e| e["action"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        actions,
        ["push", "delete"],
        "the default actions, blobs ignored"
    );
}

/// An endpoint that fails for a while (50 attempts, 10 s) gets every event once it answers
/// again, in order.
#[test]
fn a_receiver_down_then_up_gets_every_event_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(Mode::Down);
    let config = format!(
        "[[notifications.endpoints]]\nname = \"ci\"\nurl = \"{}\"\nbackoff = \"200ms\"\nactions = [\"push\"]\nignored_media_types = [\"application/octet-stream\"]\n",
        receiver.url()
    );
    let server = start(dir.path(), &config, &[]);
    let addr = server.addr.as_str();
    let layer = (push_blob(addr, "n/down", b"layer"), 5);
    let cfg = (push_blob(addr, "n/down", b"{}"), 2);
    let body = manifest(&cfg, &layer);
    let tags: Vec<String> = (0..50).map(|i| format!("t{i}")).collect();
    for tag in &tags {
        put_manifest(addr, "n/down", tag, &body);
    }
    // Down for 50 attempts (10 s at this backoff), counted, not timed.
    receiver.wait("50 refused attempts", |r| r.refused >= 50);
    assert!(receiver.events().is_empty());
    receiver.set(Mode::Up);
    receiver.wait("50 events", |r| {
        r.envelopes.iter().map(|e| e.1.len()).sum::<usize>() >= 50
    });
    let got: Vec<String> = receiver
        .events()
        .iter()
        .map(|e| e["target"]["tag"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(got, tags, "every event, once, in order");
}

/// 10,000 pushes while the endpoint never answers: the queue stays at its bound, the rest
/// are dropped and counted, and pushes go on (their latency is printed, not asserted).
#[test]
fn ten_thousand_pushes_to_a_silent_receiver_keep_the_queue_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(Mode::Silent);
    let config = format!(
        "[[notifications.endpoints]]\nname = \"silent\"\nurl = \"{}\"\ntimeout = \"30s\"\nqueue = 100\nignored_media_types = [\"application/octet-stream\"]\n",
        receiver.url()
    );
    let server = start(dir.path(), &config, &["--metrics-listen", "127.0.0.1:0"]);
    let addr = server.addr.as_str();
    let layer = (push_blob(addr, "n/flood", b"layer"), 5);
    let cfg = (push_blob(addr, "n/flood", b"{}"), 2);
    let body = manifest(&cfg, &layer);
    const PUSHES: usize = 10_000;
    let mut took = Vec::with_capacity(PUSHES);
    for i in 0..PUSHES {
        took.push(put_manifest(addr, "n/flood", &format!("t{i}"), &body));
    }
    let median = |d: &mut [Duration]| {
        d.sort();
        d[d.len() / 2]
    };
    eprintln!(
        "push latency, median of the first 1,000: {:?}, of the last 1,000: {:?}",
        median(&mut took[..1000]),
        median(&mut took[PUSHES - 1000..])
    );
    let samples = scrape(&metrics_addr(&server));
    let queued = value(
        &samples,
        "quinistry_notification_queue",
        &[("endpoint", "silent")],
    );
    let dropped = value(
        &samples,
        "quinistry_notification_events_total",
        &[("endpoint", "silent"), ("result", "dropped")],
    );
    let sent = value(
        &samples,
        "quinistry_notification_events_total",
        &[("endpoint", "silent"), ("result", "sent")],
    );
    assert_eq!(queued, 100.0, "the queue is at its bound");
    assert_eq!(sent, 0.0);
    // The rest: one envelope of at most 64 held by the sending task.
    let held = PUSHES as f64 - queued - dropped;
    assert!(
        (1.0..=64.0).contains(&held),
        "dropped {dropped}, queued {queued}"
    );
    // And the server still answers.
    assert_eq!(raw_request(addr, "GET", "/v2/", &[]).status, 200);
}

/// An image packed on demand is pushed, as far as listeners know: one event when it is
/// first packed, none when it is served again.
#[test]
fn an_image_packed_on_demand_is_a_push_event_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(Mode::Up);
    let config = format!(
        "[[notifications.endpoints]]\nname = \"ci\"\nurl = \"{}\"\n",
        receiver.url()
    );
    let tool = dir.path().join("tool");
    std::fs::write(&tool, common::noise(20_000, 3)).expect("tool");
    let spec = format!("od/tool:1={}", tool.display());
    let server = start(dir.path(), &config, &["--image", &spec]);
    let addr = server.addr.as_str();
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    for _ in 0..3 {
        let r = raw_request(addr, "GET", "/v2/od/tool/manifests/1", &[accept]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    receiver.wait("the pack's event", |r| !r.envelopes.is_empty());
    // A push made after the pulls: its event comes after any the pulls made.
    let layer = (push_blob(addr, "n/after", b"layer"), 5);
    let cfg = (push_blob(addr, "n/after", b"{}"), 2);
    put_manifest(addr, "n/after", "v1", &manifest(&cfg, &layer));
    receiver.wait("the push after", |r| {
        r.envelopes
            .iter()
            .flat_map(|e| &e.1)
            .any(|e| e["target"]["repository"] == "n/after" && e["target"]["tag"] == "v1")
    });
    let packed: Vec<Value> = receiver
        .events()
        .into_iter()
        .filter(|e| e["target"]["repository"] == "od/tool")
        .collect();
    assert_eq!(packed.len(), 1, "{packed:?}");
    let e = &packed[0];
    assert_eq!(e["action"], "push");
    assert_eq!(e["target"]["tag"], "1");
    assert_eq!(e["target"]["mediaType"], MANIFEST);
    assert_eq!(e["actor"]["name"], "quinistry (on demand)");
    let served = raw_request(addr, "GET", "/v2/od/tool/manifests/1", &[accept]);
    assert_eq!(
        e["target"]["digest"].as_str(),
        served.header("docker-content-digest")
    );
}
