//! Every case of the registry's write side, as the OCI distribution spec sets it out (uploads
//! whole, chunked and mounted, manifest pushes and deletes, referrers, scoping, limits and
//! authentication), written once and run against each engine (`main.rs` lists them).

use crate::Engine;
use crate::common;
use common::JsonValue;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quinistry::digest::{Algorithm, Digest};
use quinistry::image::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use quinistry::registry::{Access, Config, Htpasswd, Registry, Server};
use quinistry::store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    root: PathBuf,
    /// Whether the store is shared by two replicas (object storage and PostgreSQL).
    shared: bool,
    /// A shared store's metadata database (to break a row on purpose).
    metadata: Option<String>,
    /// The first server; over a shared store, requests by path take turns over `addrs`.
    addr: SocketAddr,
    addrs: Vec<SocketAddr>,
    turn: std::sync::atomic::AtomicUsize,
    _stop: Vec<oneshot::Sender<()>>,
    http: reqwest::Client,
    /// `Authorization` sent with every request, if set.
    auth: Option<String>,
}

fn pushing() -> Access {
    Access {
        push: true,
        ..Access::default()
    }
}

/// The stores the fixture serves: one local store, or two handles on one shared store, as
/// two replicas would have; `None` to skip (no cluster, or no Azurite).
async fn stores(engine: Engine, root: &std::path::Path) -> Option<(Vec<Store>, Option<String>)> {
    let shared = match engine {
        Engine::Local => return Some((vec![Store::open(root).await.expect("store")], None)),
        Engine::S3 => common::cluster::cluster()?.store(),
        Engine::Azure => common::cluster::cluster()?.azure_store()?,
    };
    let location = shared.location();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = Store::open_shared(&location, &shared.metadata)
            .await
            .expect("shared store");
        replicas.push(store);
    }
    Some((replicas, Some(shared.metadata)))
}

impl Fixture {
    async fn new(engine: Engine, access: Access) -> Option<Fixture> {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("store");
        let (stores, metadata) = stores(engine, &root).await?;
        let (mut addrs, mut stops) = (Vec::new(), Vec::new());
        for store in &stores {
            let registry = Registry::new(store.clone()).with_access(access.clone());
            let server = Server::bind_registry(
                "127.0.0.1:0".parse().expect("addr"),
                registry,
                Config::default(),
            )
            .await
            .expect("bind");
            addrs.push(server.local_addr().expect("addr"));
            let (stop, stopped) = oneshot::channel::<()>();
            tokio::spawn(server.run(async {
                let _ = stopped.await;
            }));
            stops.push(stop);
        }
        let store = stores[0].clone();
        Some(Fixture {
            _dir: dir,
            store,
            root,
            shared: engine != Engine::Local,
            metadata,
            addr: addrs[0],
            addrs,
            turn: Default::default(),
            _stop: stops,
            http: common::http_builder().no_proxy().build().expect("client"),
            auth: None,
        })
    }

    /// The server the next request goes to: the one after the last, over a shared store.
    fn next_addr(&self) -> SocketAddr {
        let n = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.addrs[n % self.addrs.len()]
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("http://{}{path}", self.next_addr())
        };
        let mut req = self.http.request(method, url).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        req.send().await.expect("request")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.send(Method::GET, path, &[], Vec::new()).await
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        self.send(Method::DELETE, path, &[], Vec::new()).await
    }

    /// Pushes `bytes` as one blob into `repo` (monolithic POST); asserts 201.
    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                &[],
                bytes.to_vec(),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap_or_default()
        );
        digest
    }

    /// Pushes a manifest; returns the response.
    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media: &str,
        body: &Value,
    ) -> reqwest::Response {
        let bytes = serde_json::to_vec(body).expect("json");
        self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media)],
            bytes,
        )
        .await
    }

    /// Pushes a config and `layers` into `repo` and returns an OCI manifest naming them.
    async fn image(&self, repo: &str, layers: &[&[u8]]) -> Value {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = self.push_blob(repo, config).await;
        let mut descriptors = Vec::new();
        for l in layers {
            let d = self.push_blob(repo, l).await;
            descriptors
                .push(json!({"mediaType": OCI_LAYER, "digest": d.to_string(), "size": l.len()}));
        }
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": c.to_string(), "size": config.len()},
            "layers": descriptors,
        })
    }

    /// What writes in progress hold: temp files, or a shared store's sessions and parts.
    async fn in_progress(&self) -> Vec<String> {
        self.store.in_progress().await.expect("writes in progress")
    }

    /// The stored blobs named with `algorithm`.
    async fn blobs_of(&self, algorithm: Algorithm) -> Vec<Digest> {
        let all = self.store.blobs().await.expect("blobs");
        all.into_iter()
            .map(|b| b.expect("a digest"))
            .filter(|d| d.algorithm() == algorithm)
            .collect()
    }

    /// A blob's stored bytes: its file under `blobs/` (so the layout is checked too), or a
    /// shared store's object.
    async fn stored(&self, digest: &Digest) -> Vec<u8> {
        if self.shared {
            return self.store.read_blob(digest).await.expect("stored");
        }
        let path = self
            .root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex());
        std::fs::read(&path).expect("stored under blobs/")
    }
}

/// Asserts that no write is in progress: at once for a local store; within 5 s for a shared
/// one, whose object listing may show a removed object for a moment (seen with Garage: a
/// part removed before the 204 was still listed, for under half a second).
async fn gone_soon(f: &Fixture) {
    let mut waited = Duration::ZERO;
    loop {
        let left = f.in_progress().await;
        if left.is_empty() {
            return;
        }
        assert!(
            f.shared && waited < Duration::from_secs(5),
            "left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
}

async fn code(r: reqwest::Response) -> String {
    let v: Value = r.json_value().await;
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Every `OCI-Tag` header of a manifest push's answer, in order.
fn oci_tags(r: &reqwest::Response) -> Vec<&str> {
    r.headers()
        .get_all("oci-tag")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

fn digest_of(v: &Value) -> Digest {
    Digest::sha256_of(&serde_json::to_vec(v).expect("json"))
}

pub async fn monolithic_and_chunked_uploads_store_blobs_by_digest(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let whole = common::noise(300_000, 1);
    let d = f.push_blob("a/b", &whole).await;
    let r = f.get(&format!("/v2/a/b/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), d.to_string());
    assert_eq!(r.bytes().await.expect("body"), whole);

    // Chunked: a session, chunks in order, status, then PUT with the last chunk.
    let blob = common::noise(3 << 20, 2);
    let digest = Digest::sha256_of(&blob);
    let r = f
        .send(Method::POST, "/v2/a/b/blobs/uploads/", &[], Vec::new())
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = header(&r, "location");
    let uuid = header(&r, "docker-upload-uuid");
    assert!(
        location.ends_with(&format!("/blobs/uploads/{uuid}")),
        "{location}"
    );
    assert_eq!(header(&r, "range"), "0-0");
    let (one, rest) = blob.split_at(1 << 20);
    let (two, three) = rest.split_at(1 << 20);
    let range = format!("0-{}", one.len() - 1);
    let r = f
        .send(
            Method::PATCH,
            &location,
            &[("content-range", &range)],
            one.to_vec(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), range);
    let next = header(&r, "location");

    // Out of order: the same chunk again (overlap), and one after a gap. 416, nothing taken.
    for bad in [
        format!("0-{}", one.len() - 1),
        format!("{}-{}", one.len() - 1, 2 * one.len() - 2),
        format!("{}-{}", one.len() + 10, 2 * one.len() + 9),
    ] {
        let r = f
            .send(
                Method::PATCH,
                &next,
                &[("content-range", &bad)],
                one.to_vec(),
            )
            .await;
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert_eq!(header(&r, "range"), range, "{bad}");
        assert_eq!(code(r).await, "BLOB_UPLOAD_INVALID");
    }
    // A chunk without Content-Range is appended (docker streams one PATCH this way).
    let r = f.send(Method::PATCH, &next, &[], two.to_vec()).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = f.get(&next).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), format!("0-{}", 2 * (1 << 20) - 1));
    assert_eq!(header(&r, "docker-upload-uuid"), uuid);
    // The session belongs to a/b: another repository cannot see it.
    let elsewhere = next.replace("/v2/a/b/", "/v2/other/");
    assert_eq!(code(f.get(&elsewhere).await).await, "BLOB_UPLOAD_UNKNOWN");

    let last = format!("{}-{}", 2 << 20, blob.len() - 1);
    let r = f
        .send(
            Method::PUT,
            &format!("{next}?digest={}", digest.to_string().replace(':', "%3A")),
            &[("content-range", &last)],
            three.to_vec(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/a/b/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    assert_eq!(f.stored(&digest).await, blob);
    assert_eq!(code(f.get(&next).await).await, "BLOB_UPLOAD_UNKNOWN");
    gone_soon(&f).await;

    // HEAD and ranges work on pushed blobs like on packed ones.
    let r = f
        .send(
            Method::HEAD,
            &format!("/v2/a/b/blobs/{digest}"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(header(&r, "content-length"), blob.len().to_string());
    let r = f
        .send(
            Method::GET,
            &format!("/v2/a/b/blobs/{digest}"),
            &[("range", "bytes=-5")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.expect("body"), blob[blob.len() - 5..]);
}

pub async fn a_wrong_digest_stores_nothing(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let claimed = Digest::sha256_of(b"what the client says");
    let r = f
        .send(
            Method::POST,
            &format!("/v2/r/blobs/uploads/?digest={claimed}"),
            &[],
            b"what it sends".to_vec(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json_value().await;
    assert_eq!(body["errors"][0]["code"], "DIGEST_INVALID");
    assert_eq!(
        body["errors"][0]["detail"]["actual"],
        Digest::sha256_of(b"what it sends").to_string()
    );
    assert!(f.blobs_of(Algorithm::Sha256).await.is_empty());

    let r = f
        .send(Method::POST, "/v2/r/blobs/uploads/", &[], Vec::new())
        .await;
    let location = header(&r, "location");
    f.send(Method::PATCH, &location, &[], b"abc".to_vec()).await;
    // No digest: refused, and the session lives on for a PUT that has one.
    let r = f.send(Method::PUT, &location, &[], Vec::new()).await;
    assert_eq!(code(r).await, "DIGEST_INVALID");
    assert_eq!(f.get(&location).await.status(), StatusCode::NO_CONTENT);
    let r = f
        .send(
            Method::PUT,
            &format!("{location}?digest={claimed}"),
            &[],
            b"def".to_vec(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(r).await, "DIGEST_INVALID");
    assert!(f.blobs_of(Algorithm::Sha256).await.is_empty());
    gone_soon(&f).await;
    assert_eq!(code(f.get(&location).await).await, "BLOB_UPLOAD_UNKNOWN");
    // A malformed digest is a DIGEST_INVALID too, not a 500.
    let r = f
        .send(
            Method::POST,
            "/v2/r/blobs/uploads/?digest=sha256:xyz",
            &[],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(code(r).await, "DIGEST_INVALID");
}

pub async fn cancelled_and_stale_uploads_leave_no_temp_files(engine: Engine) {
    let Some(f) = Fixture::new(
        engine,
        Access {
            upload_timeout: Duration::from_millis(300),
            ..pushing()
        },
    )
    .await
    else {
        return;
    };
    let r = f
        .send(Method::POST, "/v2/r/blobs/uploads/", &[], Vec::new())
        .await;
    let location = header(&r, "location");
    f.send(Method::PATCH, &location, &[], vec![1; 1000]).await;
    // A temp file; or a shared store's session and the part that holds its bytes.
    let one_session = if f.shared { 2 } else { 1 };
    assert_eq!(f.in_progress().await.len(), one_session);
    let r = f.delete(&location).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    gone_soon(&f).await;
    assert_eq!(code(f.get(&location).await).await, "BLOB_UPLOAD_UNKNOWN");
    let r = f.delete(&location).await;
    assert_eq!(code(r).await, "BLOB_UPLOAD_UNKNOWN");

    // Left alone, a session expires and its temp file goes.
    let r = f
        .send(Method::POST, "/v2/r/blobs/uploads/", &[], Vec::new())
        .await;
    let location = header(&r, "location");
    f.send(Method::PATCH, &location, &[], vec![2; 1000]).await;
    assert_eq!(f.in_progress().await.len(), one_session);
    let mut waited = Duration::ZERO;
    while !f.in_progress().await.is_empty() {
        assert!(
            waited < Duration::from_secs(10),
            "the session never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert_eq!(code(f.get(&location).await).await, "BLOB_UPLOAD_UNKNOWN");
}

pub async fn blobs_are_scoped_and_mounted_only_from_repositories_that_hold_them(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let bytes = b"layer bytes".to_vec();
    let d = f.push_blob("src", &bytes).await;
    f.push_blob("lacking", b"something else").await;
    // Stored once, served through src only.
    let r = f.get(&format!("/v2/lacking/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(code(r).await, "BLOB_UNKNOWN");
    assert_eq!(
        code(f.get(&format!("/v2/nowhere/blobs/{d}")).await).await,
        "NAME_UNKNOWN"
    );

    let mount = |from: &str| format!("/v2/dst/blobs/uploads/?mount={d}&from={from}");
    // From a repository that lacks it, or that does not exist: a plain upload session.
    for from in ["lacking", "nowhere", "Not_A_Name"] {
        let r = f.send(Method::POST, &mount(from), &[], Vec::new()).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{from}");
        assert!(
            header(&r, "location").contains("/v2/dst/blobs/uploads/"),
            "{from}"
        );
    }
    // Nothing was linked: dst holds nothing at all yet.
    assert_eq!(
        code(f.get(&format!("/v2/dst/blobs/{d}")).await).await,
        "NAME_UNKNOWN"
    );
    let r = f.send(Method::POST, &mount("src"), &[], Vec::new()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/dst/blobs/{d}"));
    assert_eq!(header(&r, "docker-content-digest"), d.to_string());
    assert_eq!(
        f.get(&format!("/v2/dst/blobs/{d}"))
            .await
            .bytes()
            .await
            .expect("body"),
        bytes
    );
    assert_eq!(
        f.blobs_of(Algorithm::Sha256).await.len(),
        2,
        "one copy of each blob"
    );

    // DELETE takes it out of one repository; the other still serves it. dst held nothing
    // else, so it is no repository any more.
    f.push_blob("dst", b"keeps dst a repository").await;
    let r = f.delete(&format!("/v2/dst/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        code(f.get(&format!("/v2/dst/blobs/{d}")).await).await,
        "BLOB_UNKNOWN"
    );
    let r = f.delete(&format!("/v2/dst/blobs/{d}")).await;
    assert_eq!(code(r).await, "BLOB_UNKNOWN");
    assert_eq!(
        f.get(&format!("/v2/src/blobs/{d}")).await.status(),
        StatusCode::OK
    );
}

pub async fn manifests_are_checked_pushed_tagged_and_deleted(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let manifest = f
        .image("app", &[b"layer one", b"layer two", b"layer three"])
        .await;
    let digest = digest_of(&manifest);
    let r = f.put_manifest("app", "v1", OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    assert_eq!(
        header(&r, "location"),
        format!("/v2/app/manifests/{digest}")
    );
    for reference in ["v1".to_owned(), digest.to_string()] {
        let r = f.get(&format!("/v2/app/manifests/{reference}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{reference}");
        assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
        assert_eq!(
            r.bytes().await.expect("body"),
            serde_json::to_vec(&manifest).expect("json")
        );
    }
    // By digest, and a second tag on the same manifest.
    let r = f
        .put_manifest("app", &digest.to_string(), OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        f.put_manifest("app", "v1-again", OCI_MANIFEST, &manifest)
            .await
            .status(),
        StatusCode::CREATED
    );
    let tags: Value = f.get("/v2/app/tags/list").await.json_value().await;
    assert_eq!(tags["tags"], json!(["v1", "v1-again"]));

    // Refusals, each with its code; none stores anything.
    let blobs_before = f.blobs_of(Algorithm::Sha256).await.len();
    let mut missing = manifest.clone();
    missing["layers"][1]["digest"] = json!(Digest::sha256_of(b"never pushed").to_string());
    let r = f.put_manifest("app", "bad", OCI_MANIFEST, &missing).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // A blob of another repository is missing from this one.
    let r = f.put_manifest("other", "v1", OCI_MANIFEST, &manifest).await;
    assert_eq!(code(r).await, "MANIFEST_BLOB_UNKNOWN");
    let r = f
        .put_manifest("app", "bad", DOCKER_MANIFEST, &manifest)
        .await;
    assert_eq!(
        code(r).await,
        "MANIFEST_INVALID",
        "Content-Type and mediaType differ"
    );
    let mut wrong_size = manifest.clone();
    wrong_size["layers"][0]["size"] = json!(1);
    assert_eq!(
        code(
            f.put_manifest("app", "bad", OCI_MANIFEST, &wrong_size)
                .await
        )
        .await,
        "MANIFEST_INVALID"
    );
    for garbage in [
        json!("text"),
        json!({"schemaVersion": 1}),
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST}),
    ] {
        let r = f.put_manifest("app", "bad", OCI_MANIFEST, &garbage).await;
        assert_eq!(code(r).await, "MANIFEST_INVALID", "{garbage}");
    }
    let r = f
        .put_manifest(
            "app",
            &Digest::sha256_of(b"other").to_string(),
            OCI_MANIFEST,
            &manifest,
        )
        .await;
    assert_eq!(code(r).await, "DIGEST_INVALID");
    let mut huge = manifest.clone();
    huge["annotations"] = json!({"pad": "x".repeat(5 << 20)});
    let r = f.put_manifest("app", "bad", OCI_MANIFEST, &huge).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(r).await, "SIZE_INVALID");
    assert_eq!(f.blobs_of(Algorithm::Sha256).await.len(), blobs_before);
    assert_eq!(
        code(f.get("/v2/app/manifests/bad").await).await,
        "MANIFEST_UNKNOWN"
    );

    // An index needs its manifests in the repository.
    let index = |m: &Digest, size: usize| {
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": m.to_string(), "size": size,
             "platform": {"architecture": "amd64", "os": "linux"}}]})
    };
    let size = serde_json::to_vec(&manifest).expect("json").len();
    let r = f
        .put_manifest("app", "multi", OCI_INDEX, &index(&digest, size))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = f
        .put_manifest(
            "app",
            "multi",
            OCI_INDEX,
            &index(&Digest::sha256_of(b"nope"), 5),
        )
        .await;
    assert_eq!(code(r).await, "MANIFEST_BLOB_UNKNOWN");
    let r = f.get("/v2/app/manifests/multi").await;
    assert_eq!(header(&r, "content-type"), OCI_INDEX);

    // A Docker schema 2 manifest, as docker pushes it.
    let mut docker = manifest.clone();
    docker["mediaType"] = json!(DOCKER_MANIFEST);
    docker["config"]["mediaType"] = json!("application/vnd.docker.container.image.v1+json");
    let r = f
        .put_manifest("app", "docker", DOCKER_MANIFEST, &docker)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&f.get("/v2/app/manifests/docker").await, "content-type"),
        DOCKER_MANIFEST
    );

    // Deleting a tag leaves the manifest; deleting the manifest takes its tags with it.
    let r = f.delete("/v2/app/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        code(f.get("/v2/app/manifests/v1").await).await,
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        f.get(&format!("/v2/app/manifests/{digest}")).await.status(),
        StatusCode::OK
    );
    let r = f.delete("/v2/app/manifests/v1").await;
    assert_eq!(code(r).await, "MANIFEST_UNKNOWN");
    let r = f.delete(&format!("/v2/app/manifests/{digest}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        code(f.get(&format!("/v2/app/manifests/{digest}")).await).await,
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        code(f.get("/v2/app/manifests/v1-again").await).await,
        "MANIFEST_UNKNOWN"
    );
    let tags: Value = f.get("/v2/app/tags/list").await.json_value().await;
    assert_eq!(tags["tags"], json!(["docker", "multi"]));
    let r = f.delete(&format!("/v2/app/manifests/{digest}")).await;
    assert_eq!(code(r).await, "MANIFEST_UNKNOWN");
    // Pushing it again brings it back.
    assert_eq!(
        f.put_manifest("app", "v1", OCI_MANIFEST, &manifest)
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(f.get("/v2/app/manifests/v1").await.status(), StatusCode::OK);
    let catalog: Value = f.get("/v2/_catalog").await.json_value().await;
    assert_eq!(catalog["repositories"], json!(["app"]));
}

pub async fn referrers_list_the_manifests_that_name_a_subject(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let image = f.image("app", &[b"layer"]).await;
    let subject = digest_of(&image);
    f.put_manifest("app", "v1", OCI_MANIFEST, &image).await;
    let size = serde_json::to_vec(&image).expect("json").len();
    let empty = f.push_blob("app", b"{}").await;
    let artifact = |kind: &str, note: &str| {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": kind,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": size},
            "annotations": {"note": note},
        })
    };
    let sbom = artifact("application/vnd.example.sbom+json", "sbom");
    let sig = artifact("application/vnd.example.signature", "sig");
    for a in [&sbom, &sig] {
        let r = f
            .put_manifest("app", &digest_of(a).to_string(), OCI_MANIFEST, a)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(header(&r, "oci-subject"), subject.to_string());
    }
    let r = f.get(&format!("/v2/app/referrers/{subject}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    let index: Value = r.json_value().await;
    let mut listed: Vec<(String, String)> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|d| {
            (
                d["digest"].as_str().unwrap_or_default().to_owned(),
                d["artifactType"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    listed.sort();
    let mut expected = vec![
        (
            digest_of(&sbom).to_string(),
            "application/vnd.example.sbom+json".to_owned(),
        ),
        (
            digest_of(&sig).to_string(),
            "application/vnd.example.signature".to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(listed, expected);

    // Filtered by artifactType ('+' as itself and escaped).
    for query in [
        "application/vnd.example.sbom+json",
        "application%2Fvnd.example.sbom%2Bjson",
    ] {
        let r = f
            .get(&format!("/v2/app/referrers/{subject}?artifactType={query}"))
            .await;
        assert_eq!(header(&r, "oci-filters-applied"), "artifactType");
        let index: Value = r.json_value().await;
        assert_eq!(
            index["manifests"].as_array().map(Vec::len),
            Some(1),
            "{query}"
        );
        assert_eq!(
            index["manifests"][0]["digest"],
            digest_of(&sbom).to_string()
        );
        assert_eq!(index["manifests"][0]["annotations"]["note"], "sbom");
    }
    // None: an empty index, still 200.
    let r = f
        .get(&format!(
            "/v2/app/referrers/{}",
            Digest::sha256_of(b"no subject")
        ))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json_value().await["manifests"], json!([]));
    // A deleted referrer is no longer listed.
    f.delete(&format!("/v2/app/manifests/{}", digest_of(&sig)))
        .await;
    let index: Value = f
        .get(&format!("/v2/app/referrers/{subject}"))
        .await
        .json_value()
        .await;
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1));
}

pub async fn twenty_clients_pushing_one_blob_all_succeed_and_one_copy_is_stored(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let f = Arc::new(f);
    let blob = Arc::new(common::noise(2 << 20, 7));
    let digest = Digest::sha256_of(&blob);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (f, blob, digest) = (f.clone(), blob.clone(), digest.clone());
        tasks.push(tokio::spawn(async move {
            let repo = format!("client{}", i % 4);
            if i % 2 == 0 {
                return f.push_blob(&repo, &blob).await;
            }
            // Half of them chunked, in two PATCHes.
            let r = f
                .send(
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/"),
                    &[],
                    Vec::new(),
                )
                .await;
            let location = header(&r, "location");
            let (a, b) = blob.split_at(1 << 20);
            let r = f
                .send(
                    Method::PATCH,
                    &location,
                    &[("content-range", &format!("0-{}", a.len() - 1))],
                    a.to_vec(),
                )
                .await;
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let r = f.send(Method::PATCH, &location, &[], b.to_vec()).await;
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let r = f
                .send(
                    Method::PUT,
                    &format!("{location}?digest={digest}"),
                    &[],
                    Vec::new(),
                )
                .await;
            assert_eq!(r.status(), StatusCode::CREATED);
            digest
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), digest);
    }
    assert_eq!(f.blobs_of(Algorithm::Sha256).await, vec![digest.clone()]);
    gone_soon(&f).await;
    f.store.verify(&digest).await.expect("verify");
    for i in 0..4 {
        let r = f.get(&format!("/v2/client{i}/blobs/{digest}")).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}

pub async fn uploads_over_the_size_limit_are_refused(engine: Engine) {
    let Some(f) = Fixture::new(
        engine,
        Access {
            max_blob_size: Some(1000),
            ..pushing()
        },
    )
    .await
    else {
        return;
    };
    f.push_blob("r", &[1; 1000]).await;
    let big = vec![2u8; 1001];
    let r = f
        .send(
            Method::POST,
            &format!("/v2/r/blobs/uploads/?digest={}", Digest::sha256_of(&big)),
            &[],
            big.clone(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(r).await, "SIZE_INVALID");
    let r = f
        .send(Method::POST, "/v2/r/blobs/uploads/", &[], Vec::new())
        .await;
    let location = header(&r, "location");
    assert_eq!(
        f.send(Method::PATCH, &location, &[], vec![3; 600])
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let r = f.send(Method::PATCH, &location, &[], vec![3; 600]).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(r).await, "SIZE_INVALID");
    // Refused on its Content-Length, before a byte was taken: the session is as it was.
    assert_eq!(header(&f.get(&location).await, "range"), "0-599");
    assert_eq!(f.blobs_of(Algorithm::Sha256).await.len(), 1);
}

pub async fn htpasswd_guards_writes_and_with_auth_reads_reads_too(engine: Engine) {
    let hash = bcrypt::hash("pw", 4).expect("hash");
    let users = Arc::new(Htpasswd::parse(&format!("ci:{hash}\n")).expect("htpasswd"));
    let basic = |user: &str, pw: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };
    let Some(mut f) = Fixture::new(
        engine,
        Access {
            htpasswd: Some(users.clone()),
            ..pushing()
        },
    )
    .await
    else {
        return;
    };
    for auth in [
        None,
        Some(basic("ci", "wrong")),
        Some(basic("nobody", "pw")),
    ] {
        f.auth = auth.clone();
        let r = f
            .send(Method::POST, "/v2/r/blobs/uploads/", &[], Vec::new())
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(
            header(&r, "www-authenticate").starts_with("Basic realm="),
            "{auth:?}"
        );
        assert_eq!(code(r).await, "UNAUTHORIZED");
        // The base endpoint is the login check: it challenges too.
        assert_eq!(f.get("/v2/").await.status(), StatusCode::UNAUTHORIZED);
    }
    f.auth = Some(basic("ci", "pw"));
    assert_eq!(f.get("/v2/").await.status(), StatusCode::OK);
    let d = f.push_blob("r", b"guarded").await;
    // An upload's status is part of the write side: not for anonymous eyes.
    let r = f
        .send(Method::POST, "/v2/r/blobs/uploads/", &[], Vec::new())
        .await;
    let location = header(&r, "location");
    assert_eq!(f.get(&location).await.status(), StatusCode::NO_CONTENT);
    f.auth = None;
    assert_eq!(f.get(&location).await.status(), StatusCode::UNAUTHORIZED);
    f.auth = Some(basic("ci", "pw"));
    let r = f.delete(&location).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Reads stay open.
    f.auth = None;
    assert_eq!(
        f.get(&format!("/v2/r/blobs/{d}")).await.status(),
        StatusCode::OK
    );
    gone_soon(&f).await;

    let Some(mut f) = Fixture::new(
        engine,
        Access {
            htpasswd: Some(users),
            auth_reads: true,
            ..pushing()
        },
    )
    .await
    else {
        return;
    };
    f.auth = Some(basic("ci", "pw"));
    let d = f.push_blob("r", b"secret").await;
    f.auth = None;
    for path in [
        format!("/v2/r/blobs/{d}"),
        "/v2/r/tags/list".to_owned(),
        "/v2/_catalog".to_owned(),
    ] {
        let r = f.get(&path).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    f.auth = Some(basic("ci", "pw"));
    assert_eq!(
        f.get(&format!("/v2/r/blobs/{d}"))
            .await
            .bytes()
            .await
            .expect("body"),
        &b"secret"[..]
    );
}

/// A client that sends its whole body before reading (as simple clients do) must see an
/// early refusal, not a reset: the server reads what is left of the chunk (up to
/// `LINGER_BYTES`) before it answers. Without that, measured over 5 runs: 1 of 150 clients
/// sending 1 MiB and 14 of 150 sending 3 MiB lost the 416 to EPIPE (every run failed at 3 MiB).
pub async fn an_early_416_reaches_a_client_still_sending_its_chunk(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let addr = f.addr.to_string();
    let rounds = 30;
    let mut lost = Vec::new();
    for size in [1 << 20, 3 << 20] {
        let chunk = common::noise(size, 9);
        for round in 0..rounds {
            let r = f
                .send(Method::POST, "/v2/r/blobs/uploads/", &[], Vec::new())
                .await;
            let location = header(&r, "location");
            let (addr, chunk) = (addr.clone(), chunk.clone());
            // The chunk claims to start at 5 while the upload is empty: out of order.
            let answer = tokio::task::spawn_blocking(move || {
                common::try_raw_request(
                    &addr,
                    "PATCH",
                    &location,
                    &[
                        &format!("Content-Length: {}", chunk.len()),
                        &format!("Content-Range: 5-{}", chunk.len() + 4),
                    ],
                    &chunk,
                )
            })
            .await
            .expect("join");
            match answer {
                Ok(r) => {
                    assert_eq!(r.status, 416, "{size} B, round {round}: {r:?}");
                    assert_eq!(r.header("range"), Some("0-0"));
                    assert_eq!(r.error_code(), "BLOB_UPLOAD_INVALID");
                }
                Err(e) => lost.push(format!("{size} B, round {round}: {e}")),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} clients lost the answer: {lost:?}",
        lost.len(),
        2 * rounds
    );
    assert!(f.blobs_of(Algorithm::Sha256).await.is_empty());

    // A client that waits for `100 Continue` is answered at once and sends nothing.
    let r = f
        .send(Method::POST, "/v2/r/blobs/uploads/", &[], Vec::new())
        .await;
    let location = header(&r, "location");
    let r = tokio::task::spawn_blocking(move || {
        common::raw_request(
            &addr,
            "PATCH",
            &location,
            &[
                "Content-Length: 1048576",
                "Content-Range: 5-1048580",
                "Expect: 100-continue",
            ],
        )
    })
    .await
    .expect("join");
    assert_eq!(r.status, 416, "{r:?}");
}

const SHA512_EMPTY_JSON: &str = "sha512:27c74670adb75075fad058d5ceaf7b20c4e7786c83bae8a32f626f9782af34c9a33c2046ef60fd2a7878d378e29fec851806bbd9a67878f3a9f1cda4830763fd";

pub async fn sha512_blobs_and_manifests_round_trip_through_every_endpoint(engine: Engine) {
    use quinistry::digest::Algorithm::Sha512;
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    // Monolithic: the body hashed with sha512 as it comes.
    let config = b"{}".to_vec();
    let config_digest = Digest::of(Sha512, &config);
    assert_eq!(
        config_digest.to_string(),
        SHA512_EMPTY_JSON,
        "sha512sum of {{}}"
    );
    let r = f
        .send(
            Method::POST,
            &format!("/v2/a/blobs/uploads/?digest={config_digest}"),
            &[],
            config.clone(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "docker-content-digest"),
        config_digest.to_string()
    );
    assert_eq!(
        header(&r, "location"),
        format!("/v2/a/blobs/{config_digest}")
    );

    // Chunked, told the algorithm up front; and chunked without (read once at the end).
    let layer = common::noise(3 << 20, 5);
    let layer_digest = Digest::of(Sha512, &layer);
    let other = common::noise(1 << 20, 6);
    let other_digest = Digest::of(Sha512, &other);
    for (bytes, digest, start) in [
        (
            &layer,
            &layer_digest,
            "/v2/a/blobs/uploads/?digest-algorithm=sha512",
        ),
        (&other, &other_digest, "/v2/a/blobs/uploads/"),
    ] {
        let r = f.send(Method::POST, start, &[], Vec::new()).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let mut location = header(&r, "location");
        let mut at = 0;
        for piece in bytes.chunks(1 << 20) {
            let range = format!("{at}-{}", at + piece.len() - 1);
            let r = f
                .send(
                    Method::PATCH,
                    &location,
                    &[("content-range", &range)],
                    piece.to_vec(),
                )
                .await;
            assert_eq!(r.status(), StatusCode::ACCEPTED, "{start}");
            location = header(&r, "location");
            at += piece.len();
        }
        let r = f
            .send(
                Method::PUT,
                &format!("{location}?digest={digest}"),
                &[],
                Vec::new(),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "{start}");
        assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    }
    for (bytes, digest) in [
        (&config, &config_digest),
        (&layer, &layer_digest),
        (&other, &other_digest),
    ] {
        assert_eq!(&f.stored(digest).await, bytes);
        let r = f.get(&format!("/v2/a/blobs/{digest}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
        assert_eq!(&r.bytes().await.expect("body").to_vec(), bytes);
        let r = f
            .send(
                Method::HEAD,
                &format!("/v2/a/blobs/{digest}"),
                &[],
                Vec::new(),
            )
            .await;
        assert_eq!(header(&r, "content-length"), bytes.len().to_string());
        // The same bytes under their sha256 name were never pushed.
        let r = f
            .get(&format!("/v2/a/blobs/{}", Digest::sha256_of(bytes)))
            .await;
        assert_eq!(code(r).await, "BLOB_UNKNOWN");
    }
    let r = f
        .send(
            Method::GET,
            &format!("/v2/a/blobs/{layer_digest}"),
            &[("range", "bytes=10-19")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.expect("body"), layer[10..20]);

    // A wrong sha512 digest stores nothing, whole or chunked.
    let before = f.blobs_of(Algorithm::Sha512).await.len();
    let r = f
        .send(
            Method::POST,
            &format!(
                "/v2/a/blobs/uploads/?digest={}",
                Digest::of(Sha512, b"claimed")
            ),
            &[],
            b"sent".to_vec(),
        )
        .await;
    assert_eq!(code(r).await, "DIGEST_INVALID");
    assert_eq!(f.blobs_of(Algorithm::Sha512).await.len(), before);
    gone_soon(&f).await;

    // Mount into another repository by the sha512 digest.
    let r = f
        .send(
            Method::POST,
            &format!("/v2/b/blobs/uploads/?mount={layer_digest}&from=a"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "docker-content-digest"),
        layer_digest.to_string()
    );
    assert_eq!(
        f.get(&format!("/v2/b/blobs/{layer_digest}")).await.status(),
        StatusCode::OK
    );

    // A manifest naming sha512 blobs, pushed by its own sha512 digest with two tags.
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest.to_string(), "size": layer.len()}],
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("json");
    let manifest_digest = Digest::of(Sha512, &manifest_bytes);
    let r = f
        .put_manifest(
            "a",
            &format!("{manifest_digest}?tag=v1&tag=v2"),
            OCI_MANIFEST,
            &manifest,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "docker-content-digest"),
        manifest_digest.to_string()
    );
    assert_eq!(
        header(&r, "location"),
        format!("/v2/a/manifests/{manifest_digest}")
    );
    let tags = oci_tags(&r);
    assert_eq!(tags, ["v1", "v2"]);
    assert!(f.store.has_blob(&manifest_digest).await.expect("has"));
    for reference in [
        manifest_digest.to_string(),
        "v1".to_owned(),
        "v2".to_owned(),
    ] {
        let r = f.get(&format!("/v2/a/manifests/{reference}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{reference}");
        assert_eq!(
            header(&r, "docker-content-digest"),
            manifest_digest.to_string()
        );
        assert_eq!(r.bytes().await.expect("body"), manifest_bytes);
    }
    let r = f
        .send(
            Method::HEAD,
            &format!("/v2/a/manifests/{manifest_digest}"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(
        header(&r, "content-length"),
        manifest_bytes.len().to_string()
    );
    // Bytes that do not have the sha512 digest they are pushed under are refused.
    let r = f
        .put_manifest(
            "a",
            &Digest::of(Sha512, b"x").to_string(),
            OCI_MANIFEST,
            &manifest,
        )
        .await;
    assert_eq!(code(r).await, "DIGEST_INVALID");

    // A referrer whose subject is named by sha512, itself pushed by sha512.
    let artifact = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest.to_string(), "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": manifest_digest.to_string(), "size": manifest_bytes.len()},
    });
    let artifact_digest = Digest::of(Sha512, &serde_json::to_vec(&artifact).expect("json"));
    let r = f
        .put_manifest("a", &artifact_digest.to_string(), OCI_MANIFEST, &artifact)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "oci-subject"), manifest_digest.to_string());
    let index: Value = f
        .get(&format!("/v2/a/referrers/{manifest_digest}"))
        .await
        .json_value()
        .await;
    assert_eq!(
        index["manifests"].as_array().map(Vec::len),
        Some(1),
        "{index}"
    );
    assert_eq!(index["manifests"][0]["digest"], artifact_digest.to_string());

    // The store's own check re-hashes sha512 blobs with sha512.
    for blob in f.store.blobs().await.expect("list") {
        f.store
            .verify(&blob.expect("digest"))
            .await
            .expect("verify");
    }

    // Deletes by sha512 digest: the manifest (and its tags), then a blob.
    let r = f
        .delete(&format!("/v2/a/manifests/{manifest_digest}"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        code(f.get("/v2/a/manifests/v1").await).await,
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        code(f.get(&format!("/v2/a/manifests/{manifest_digest}")).await).await,
        "MANIFEST_UNKNOWN"
    );
    let r = f.delete(&format!("/v2/a/blobs/{other_digest}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        code(f.get(&format!("/v2/a/blobs/{other_digest}")).await).await,
        "BLOB_UNKNOWN"
    );

    // Algorithms other than sha256 and sha512 are refused by name.
    let blake3 = format!("blake3:{}", "a".repeat(64));
    for path in [
        format!("/v2/a/blobs/{blake3}"),
        format!("/v2/a/manifests/{blake3}"),
        format!("/v2/a/referrers/{blake3}"),
    ] {
        let r = f.get(&path).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(code(r).await, "DIGEST_INVALID", "{path}");
    }
    let r = f
        .send(
            Method::POST,
            "/v2/a/blobs/uploads/?digest-algorithm=blake3",
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(code(r).await, "DIGEST_INVALID");
}

pub async fn a_push_by_digest_with_tag_parameters_tags_the_manifest(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let manifest = f.image("app", &[b"layer"]).await;
    let digest = digest_of(&manifest);
    let r = f
        .put_manifest(
            "app",
            &format!("{digest}?tag=latest&tag=1.0&tag=latest"),
            OCI_MANIFEST,
            &manifest,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let tags = oci_tags(&r);
    assert_eq!(tags, ["latest", "1.0"], "one OCI-Tag per tag, each once");
    let list: Value = f.get("/v2/app/tags/list").await.json_value().await;
    assert_eq!(list["tags"], json!(["1.0", "latest"]));
    for tag in ["latest", "1.0"] {
        let r = f.get(&format!("/v2/app/manifests/{tag}")).await;
        assert_eq!(
            header(&r, "docker-content-digest"),
            digest.to_string(),
            "{tag}"
        );
    }
    // A malformed tag refuses the whole push before anything is stored.
    let other = f.image("app", &[b"other layer"]).await;
    let r = f
        .put_manifest(
            "app",
            &format!("{}?tag=ok&tag=-bad", digest_of(&other)),
            OCI_MANIFEST,
            &other,
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(r).await, "TAG_INVALID");
    assert_eq!(
        code(f.get("/v2/app/manifests/ok").await).await,
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        code(
            f.get(&format!("/v2/app/manifests/{}", digest_of(&other)))
                .await
        )
        .await,
        "MANIFEST_UNKNOWN"
    );
    // Pushed by tag, a tag parameter adds a second tag.
    let r = f
        .put_manifest("app", "v2?tag=stable", OCI_MANIFEST, &other)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "oci-tag"), "stable");
    let list: Value = f.get("/v2/app/tags/list").await.json_value().await;
    assert_eq!(list["tags"], json!(["1.0", "latest", "stable", "v2"]));
}

pub async fn referrers_of_a_repository_that_does_not_exist_are_an_empty_index(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let subject = Digest::sha256_of(b"anything");
    let r = f
        .get(&format!("/v2/never/pushed/referrers/{subject}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    let index: Value = r.json_value().await;
    assert_eq!(
        index,
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    );
    // An invalid name is still an error.
    let r = f.get(&format!("/v2/Not_Valid/referrers/{subject}")).await;
    assert_eq!(code(r).await, "NAME_INVALID");
}

pub async fn the_catalog_and_tag_lists_agree_as_a_repository_empties(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let listed = || async {
        let v: Value = f.get("/v2/_catalog").await.json_value().await;
        v["repositories"].clone()
    };
    let manifest = f.image("app", &[b"layer"]).await;
    let digest = digest_of(&manifest);
    f.put_manifest("app", "v1", OCI_MANIFEST, &manifest).await;
    assert_eq!(listed().await, json!(["app"]));

    // Every manifest deleted: its blobs are still there, so it is still a repository, with
    // no tags.
    assert_eq!(
        f.delete(&format!("/v2/app/manifests/{digest}"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(listed().await, json!(["app"]));
    let r = f.get("/v2/app/tags/list").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json_value().await, json!({"name": "app", "tags": []}));

    // Its blobs deleted too: nothing left, so neither lists it.
    for d in [
        &manifest["config"]["digest"],
        &manifest["layers"][0]["digest"],
    ] {
        let d = d.as_str().expect("digest");
        assert_eq!(
            f.delete(&format!("/v2/app/blobs/{d}")).await.status(),
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(listed().await, json!([]));
    assert_eq!(code(f.get("/v2/app/tags/list").await).await, "NAME_UNKNOWN");
}

/// Manifest pushes with tags racing deletes of the same manifest by digest: after any
/// interleaving, every tag must name a manifest its repository links (else a pull by tag
/// fails at the manifest's digest). Without the repository lock, every run of this ended with
/// such a tag.
pub async fn pushes_racing_deletes_never_leave_a_tag_on_an_unlinked_manifest(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let f = Arc::new(f);
    let manifest = f.image("race", &[b"layer"]).await;
    let digest = digest_of(&manifest);
    let mut dangling = Vec::new();
    for round in 0..30 {
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (f, manifest) = (f.clone(), manifest.clone());
            tasks.push(tokio::spawn(async move {
                f.put_manifest("race", &format!("t{}", i % 3), OCI_MANIFEST, &manifest)
                    .await
                    .status()
            }));
        }
        for _ in 0..6 {
            let f = f.clone();
            let path = format!("/v2/race/manifests/{digest}");
            tasks.push(tokio::spawn(async move { f.delete(&path).await.status() }));
        }
        for t in tasks {
            let status = t.await.expect("join");
            assert!(
                [
                    StatusCode::CREATED,
                    StatusCode::ACCEPTED,
                    StatusCode::NOT_FOUND
                ]
                .contains(&status),
                "{status}"
            );
        }
        let list: Value = f.get("/v2/race/tags/list").await.json_value().await;
        for tag in list["tags"].as_array().into_iter().flatten() {
            let tag = tag.as_str().expect("tag");
            let r = f.get(&format!("/v2/race/manifests/{tag}")).await;
            if r.status() != StatusCode::OK {
                dangling.push(format!("round {round}: tag {tag} is {}", r.status()));
                continue;
            }
            let named = header(&r, "docker-content-digest");
            let by_digest = f.get(&format!("/v2/race/manifests/{named}")).await.status();
            if by_digest != StatusCode::OK {
                dangling.push(format!(
                    "round {round}: tag {tag} names {named}, which is {by_digest}"
                ));
            }
        }
    }
    assert!(dangling.is_empty(), "{dangling:#?}");
}

/// What a pushed document is follows its shape and the type it was pushed with: a document
/// both an image and an index is refused, and one without a `mediaType` is served as the
/// `Content-Type` it was pushed with.
pub async fn manifests_are_judged_by_their_shape_and_served_as_pushed(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let image = f.image("shape", &[b"layer"]).await;
    let size = serde_json::to_vec(&image).expect("json").len();
    f.put_manifest("shape", "v1", OCI_MANIFEST, &image).await;
    let digest = digest_of(&image);

    // An image manifest's type, no mediaType, config and layers plus a manifests list.
    let mut both = image.clone();
    both.as_object_mut().expect("object").remove("mediaType");
    both["manifests"] =
        json!([{"mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": size}]);
    let r = f.put_manifest("shape", "both", OCI_MANIFEST, &both).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(r).await, "MANIFEST_INVALID");
    // An index type with an image's layers.
    let mut index = both.clone();
    index.as_object_mut().expect("object").remove("manifests");
    let r = f.put_manifest("shape", "idx", OCI_INDEX, &index).await;
    assert_eq!(code(r).await, "MANIFEST_INVALID");
    // An image type with an index's manifests and no config.
    let list = json!({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": size}]});
    let r = f.put_manifest("shape", "img", OCI_MANIFEST, &list).await;
    assert_eq!(code(r).await, "MANIFEST_INVALID");
    // Arrays nested 1,000 and 100,000 deep under a key no manifest type names: refused
    // (at most 64 levels), nothing stored; 64 levels are accepted.
    let bytes = serde_json::to_vec(&image).expect("json");
    for (depth, accepted) in [(1_000, false), (100_000, false), (60, true)] {
        let mut deep = bytes[..bytes.len() - 1].to_vec();
        deep.extend_from_slice(b",\"x-nested\":");
        deep.extend(std::iter::repeat_n(b'[', depth));
        deep.extend(std::iter::repeat_n(b']', depth));
        deep.push(b'}');
        let r = f
            .send(
                Method::PUT,
                &format!("/v2/shape/manifests/deep{depth}"),
                &[("content-type", OCI_MANIFEST)],
                deep.clone(),
            )
            .await;
        if accepted {
            assert_eq!(r.status(), StatusCode::CREATED, "{depth} levels");
            continue;
        }
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{depth} levels");
        assert_eq!(code(r).await, "MANIFEST_INVALID");
        let r = f.get(&format!("/v2/shape/manifests/deep{depth}")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let digest = Digest::sha256_of(&deep);
        assert!(
            !f.store.has_blob(&digest).await.expect("has"),
            "{depth} levels stored"
        );
    }

    // Docker schema 2 without a mediaType, pushed as Docker schema 2, stays Docker schema 2.
    let mut docker = image.clone();
    docker.as_object_mut().expect("object").remove("mediaType");
    docker["config"]["mediaType"] = json!("application/vnd.docker.container.image.v1+json");
    let docker_digest = digest_of(&docker);
    let r = f
        .put_manifest("shape", "docker", DOCKER_MANIFEST, &docker)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    for reference in ["docker".to_owned(), docker_digest.to_string()] {
        let r = f
            .send(
                Method::GET,
                &format!("/v2/shape/manifests/{reference}"),
                &[("accept", DOCKER_MANIFEST)],
                Vec::new(),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{reference}");
        assert_eq!(header(&r, "content-type"), DOCKER_MANIFEST, "{reference}");
        assert_eq!(
            header(&r, "docker-content-digest"),
            docker_digest.to_string()
        );
    }
}

/// Every session holds a file descriptor and a temp file: past the caps, a new one is 429
/// `TOOMANYREQUESTS` with `Retry-After`, and room made is room to open again.
pub async fn upload_sessions_are_capped_in_all_and_per_client(engine: Engine) {
    let Some(f) = Fixture::new(
        engine,
        Access {
            max_uploads: 5,
            max_uploads_per_client: 3,
            ..pushing()
        },
    )
    .await
    else {
        return;
    };
    let post = || f.send(Method::POST, "/v2/r/blobs/uploads/", &[], Vec::new());
    let mut open = Vec::new();
    for _ in 0..3 {
        let r = post().await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        open.push(header(&r, "location"));
    }
    let r = post().await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after"), "10");
    let body: Value = r.json_value().await;
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("this client has 3 uploads open")),
        "{body}"
    );
    assert_eq!(
        f.in_progress().await.len(),
        3,
        "a refused session made a temp file"
    );
    // A monolithic push is one request, not a session: still taken.
    f.push_blob("r", b"whole").await;
    // Finishing or cancelling one makes room.
    assert_eq!(
        f.delete(&open.remove(0)).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(post().await.status(), StatusCode::ACCEPTED);
}

/// A PATCH that trickles a byte now and then does not keep its session past the timeout: the
/// sweeper drops it, the request feeding it ends, and the temp file goes.
pub async fn a_trickling_upload_expires_with_its_request(engine: Engine) {
    use std::io::Write;
    let Some(f) = Fixture::new(
        engine,
        Access {
            upload_timeout: Duration::from_millis(400),
            ..pushing()
        },
    )
    .await
    else {
        return;
    };
    let r = f
        .send(Method::POST, "/v2/r/blobs/uploads/", &[], Vec::new())
        .await;
    let location = header(&r, "location");
    let addr = f.addr;
    let trickle = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            s,
            "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
        )
        .expect("headers");
        // One byte every 100 ms for up to 10 s: far below 64 KiB per 400 ms.
        for _ in 0..100 {
            if s.write_all(b"x").is_err() {
                return true; // the server ended it
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    let mut waited = Duration::ZERO;
    while !f.in_progress().await.is_empty() || waited < Duration::from_millis(200) {
        assert!(
            waited < Duration::from_secs(8),
            "the trickled session outlived its timeout: {:?}",
            f.in_progress().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert!(
        trickle.await.expect("join"),
        "the trickling request was never ended"
    );
}

/// Pushes `repo:tag`, an image of one layer; returns its manifest digest and its blobs.
async fn tagged_image(f: &Fixture, repo: &str, tag: &str, layer: &[u8]) -> (Digest, Vec<Digest>) {
    let manifest = f.image(repo, &[layer]).await;
    let r = f.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let blobs = [&manifest["config"], &manifest["layers"][0]]
        .iter()
        .map(|d| {
            d["digest"]
                .as_str()
                .expect("digest")
                .parse()
                .expect("digest")
        })
        .collect();
    (digest_of(&manifest), blobs)
}

pub async fn the_collector_removes_what_nothing_reaches_and_keeps_every_tagged_image(
    engine: Engine,
) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let (kept, kept_blobs) = tagged_image(&f, "gc/kept", "v1", b"a layer kept").await;
    // Garbage three ways: bytes nothing links, a manifest whose tag was deleted and whose
    // repository is then deleted by digest, and a blob link no manifest names.
    let loose = f.store.put(b"bytes nothing links").await.expect("put");
    let (gone, gone_blobs) = tagged_image(&f, "gc/gone", "v1", b"a layer to collect").await;
    let r = f.delete(&format!("/v2/gc/gone/manifests/{gone}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let stale = f.push_blob("gc/stale", b"a layer no manifest names").await;
    // The marks compare times, with a margin for file systems that keep them coarsely: let
    // the clock move past the last touch and the margin.
    tokio::time::sleep(quinistry::store::gc::TICK + Duration::from_millis(100)).await;
    let policy = quinistry::store::gc::Policy {
        grace: Duration::ZERO,
        link_grace: Duration::ZERO,
        ..Default::default()
    };
    let report = quinistry::store::gc::collect(&f.store, &[], &policy)
        .await
        .expect("collect");
    // gc/gone's two links (its manifest is gone) and gc/stale's.
    assert_eq!(report.stale_links, 3, "{report:?}");
    // Both images have the same config: only gc/gone's layer is its own.
    assert_eq!(gone_blobs[0], kept_blobs[0]);
    for d in [&loose, &gone, &stale, &gone_blobs[1]] {
        assert!(
            !f.store.has_blob(d).await.expect("has"),
            "{d} survived: {report:?}"
        );
    }
    assert_eq!(report.reclaimed, 4, "{report:?}");
    for d in std::iter::once(&kept).chain(&kept_blobs) {
        assert!(f.store.has_blob(d).await.expect("has"), "{d} was collected");
    }
    let r = f.get("/v2/gc/kept/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::OK);
    for d in &kept_blobs {
        let r = f.get(&format!("/v2/gc/kept/blobs/{d}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{d}");
    }
    // A second pass finds nothing more.
    let again = quinistry::store::gc::collect(&f.store, &[], &policy)
        .await
        .expect("collect again");
    assert_eq!((again.reclaimed, again.stale_links), (0, 0), "{again:?}");
}

/// Mirror retention: in the repositories under a mirror's prefix, the images whose manifest
/// was not pulled (linked again, as a mirror records a pull) within the retention go, tag,
/// manifest and layer; one pulled since stays, and so does everything outside the prefix.
pub async fn the_collector_evicts_a_mirrors_unpulled_images(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let (old, old_blobs) = tagged_image(&f, "m/old", "v1", b"a mirrored layer not pulled").await;
    let (pulled, pulled_blobs) =
        tagged_image(&f, "m/pulled", "v1", b"a mirrored layer pulled").await;
    let (own, own_blobs) = tagged_image(&f, "own/x", "v1", b"a layer of our own").await;
    // Everything ages past the retention (5 s) and the collector's margin; then one image
    // is pulled. A pass right after keeps it unless it stalls for 7 s between the two.
    let after = Duration::from_secs(5);
    tokio::time::sleep(after + quinistry::store::gc::TICK + Duration::from_millis(500)).await;
    let name: quinistry::reference::Name = "m/pulled".parse().expect("name");
    let pin = f.store.pin().await.expect("pin");
    f.store
        .link(&pin, &name, quinistry::store::Link::Manifest, &pulled)
        .await
        .expect("record the pull");
    drop(pin);
    let policy = quinistry::store::gc::Policy {
        grace: Duration::ZERO,
        link_grace: Duration::ZERO,
        unpulled: vec![quinistry::store::gc::Unpulled {
            prefix: "m".into(),
            after,
        }],
        ..Default::default()
    };
    let report = quinistry::store::gc::collect(&f.store, &[], &policy)
        .await
        .expect("collect");
    assert_eq!(
        (report.tags_removed, report.untagged_removed),
        (1, 1),
        "{report:?}"
    );
    let r = f.get("/v2/m/old/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!f.store.has_blob(&old).await.expect("has"), "{report:?}");
    // The config is shared by all three images; the layer is m/old's own.
    assert!(
        !f.store.has_blob(&old_blobs[1]).await.expect("has"),
        "{report:?}"
    );
    for (repo, digest, blobs) in [
        ("m/pulled", &pulled, &pulled_blobs),
        ("own/x", &own, &own_blobs),
    ] {
        let r = f.get(&format!("/v2/{repo}/manifests/v1")).await;
        assert_eq!(r.status(), StatusCode::OK, "{repo}");
        for d in std::iter::once(digest).chain(blobs.iter()) {
            assert!(
                f.store.has_blob(d).await.expect("has"),
                "{repo}: {d} was collected"
            );
        }
    }
}

pub async fn verify_finds_dangling_records_and_repair_removes_only_them(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let (good, _) = tagged_image(&f, "v/good", "v1", b"a sound layer").await;
    let name: quinistry::reference::Name = "v/good".parse().expect("name");
    let never = Digest::sha256_of(b"a manifest never pushed");
    let pin = f.store.pin().await.expect("pin");
    // What a crash or an older version could leave: a tag and a referrer record naming a
    // manifest the repository does not link.
    f.store
        .set_tag(&pin, &name, &"dangling".parse().expect("tag"), &never)
        .await
        .expect("tag");
    f.store
        .add_referrer(&pin, &name, &good, &never)
        .await
        .expect("referrer");
    drop(pin);
    let report = quinistry::store::verify::check_graph(&f.store, false)
        .await
        .expect("check");
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert_eq!(report.repaired, 0);
    let repaired = quinistry::store::verify::check_graph(&f.store, true)
        .await
        .expect("repair");
    assert_eq!((repaired.problems.len(), repaired.repaired), (2, 2));
    let clean = quinistry::store::verify::check_graph(&f.store, false)
        .await
        .expect("check");
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);
    assert_eq!(
        f.store.tags(&name).await.expect("tags"),
        vec!["v1".parse::<quinistry::reference::Tag>().expect("tag")]
    );
    let r = f.get("/v2/v/good/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::OK);
}

pub async fn a_corrupt_tag_record_is_a_500_and_every_other_tag_still_serves(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    tagged_image(&f, "c/repo", "bad", b"layer one").await;
    tagged_image(&f, "c/repo", "good", b"layer two").await;
    match &f.metadata {
        None => std::fs::write(
            f.root.join("repositories/c/repo/_tags/bad"),
            b"not a digest\n",
        )
        .expect("break the tag file"),
        Some(url) => {
            let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            let n = db
                .execute(
                    "UPDATE tags SET digest = 'not a digest' WHERE repository = 'c/repo' AND tag = 'bad'",
                    &[],
                )
                .await
                .expect("break the row");
            assert_eq!(n, 1);
        }
    }
    // Neither a retryable 503 nor an answer seen before (once the moment a directory store's
    // tag answers are kept has passed): the store is at fault, and says so.
    tokio::time::sleep(quinistry::registry::TAG_TTL + Duration::from_millis(100)).await;
    for _ in 0..2 {
        let r = f.get("/v2/c/repo/manifests/bad").await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(code(r).await, "UNKNOWN");
    }
    let err = f
        .store
        .tag(
            &"c/repo".parse().expect("name"),
            &"bad".parse().expect("tag"),
        )
        .await
        .expect_err("corrupt");
    assert!(!err.unavailable(), "{err}");
    assert!(
        err.to_string().contains("not a digest") || err.to_string().contains("bad"),
        "{err}"
    );
    let r = f.get("/v2/c/repo/manifests/good").await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = f.get("/v2/c/repo/tags/list").await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Every name once, in byte order, whatever the page size: the names here interleave as a
/// folder walk would get wrong (`a-b` and `a.c` sort between `a` and `a/z`; `B` before `a`).
pub async fn catalog_and_tag_pages_list_every_name_once_in_byte_order(engine: Engine) {
    let Some(f) = Fixture::new(engine, pushing()).await else {
        return;
    };
    let repos = [
        "a0", "a/z/y", "lib-y", "a", "a.c", "b", "a/z", "lib/x", "a-b",
    ];
    for repo in repos {
        tagged_image(&f, repo, "v1", repo.as_bytes()).await;
    }
    let tags = ["latest", "B", "v1.0", "10", "2", "a-b", "a", "a_c", "1"];
    let mut layers = Vec::new();
    for tag in tags {
        layers.push(tagged_image(&f, "many", tag, tag.as_bytes()).await);
    }
    let walk = |first: String, key: &'static str| {
        let f = &f;
        async move {
            let (mut seen, mut next, mut pages) = (Vec::new(), Some(first), 0);
            while let Some(path) = next {
                let r = f.get(&path).await;
                assert_eq!(r.status(), StatusCode::OK, "{path}");
                next = r
                    .headers()
                    .get("link")
                    .map(|l| l.to_str().expect("ascii"))
                    .map(|l| {
                        l.trim_start_matches('<')
                            .split('>')
                            .next()
                            .expect("<url>")
                            .to_owned()
                    });
                let v: Value = r.json_value().await;
                for name in v[key].as_array().expect("list") {
                    seen.push(name.as_str().expect("string").to_owned());
                }
                pages += 1;
                assert!(pages < 50, "the Link chain does not end");
            }
            seen
        }
    };
    let mut all: Vec<String> = repos.iter().map(|s| s.to_string()).collect();
    all.push("many".into());
    all.sort();
    let mut all_tags: Vec<String> = tags.iter().map(|s| s.to_string()).collect();
    all_tags.sort();
    for n in [1, 2, 3, 1000] {
        assert_eq!(
            walk(format!("/v2/_catalog?n={n}"), "repositories").await,
            all,
            "catalog in pages of {n}"
        );
        assert_eq!(
            walk(format!("/v2/many/tags/list?n={n}"), "tags").await,
            all_tags,
            "tags in pages of {n}"
        );
    }
    // `last` need not be a name that exists.
    let v: Value = f.get("/v2/_catalog?n=3&last=a/m").await.json_value().await;
    assert_eq!(v["repositories"], json!(["a/z", "a/z/y", "a0"]));
    let v: Value = f
        .get("/v2/many/tags/list?n=2&last=2")
        .await
        .json_value()
        .await;
    assert_eq!(v["tags"], json!(["B", "a"]));
}
