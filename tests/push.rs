//! The write side of the registry in-process: uploads (whole, chunked, mounted), manifest
//! pushes and deletes, referrers, scoping, size limits and authentication, each against a
//! server on an ephemeral loopback port over its own temp store.

mod common;

use common::JsonValue;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quinistry::digest::Digest;
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
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
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

impl Fixture {
    async fn new(access: Access) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("store");
        let store = Store::open(&root).await.expect("store");
        let registry = Registry::new(store.clone()).with_access(access);
        let server = Server::bind_registry(
            "127.0.0.1:0".parse().expect("addr"),
            registry,
            Config::default(),
        )
        .await
        .expect("bind");
        let addr = server.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Fixture {
            _dir: dir,
            store,
            root,
            addr,
            _stop: stop,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            auth: None,
        }
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
            format!("http://{}{path}", self.addr)
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

    fn files(&self, sub: &str) -> Vec<PathBuf> {
        common::files(&self.root.join(sub))
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

fn digest_of(v: &Value) -> Digest {
    Digest::sha256_of(&serde_json::to_vec(v).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolithic_and_chunked_uploads_store_blobs_by_digest() {
    let f = Fixture::new(pushing()).await;
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
    assert_eq!(
        std::fs::read(common::blob(&f.root, &digest.to_string())).expect("blob"),
        blob
    );
    assert_eq!(code(f.get(&next).await).await, "BLOB_UPLOAD_UNKNOWN");
    assert!(f.files("tmp").is_empty(), "{:?}", f.files("tmp"));

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_stores_nothing() {
    let f = Fixture::new(pushing()).await;
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
    assert!(f.files("blobs/sha256").is_empty());

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
    assert!(f.files("blobs/sha256").is_empty());
    assert!(f.files("tmp").is_empty());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_stale_uploads_leave_no_temp_files() {
    let f = Fixture::new(Access {
        upload_timeout: Duration::from_millis(300),
        ..pushing()
    })
    .await;
    let r = f
        .send(Method::POST, "/v2/r/blobs/uploads/", &[], Vec::new())
        .await;
    let location = header(&r, "location");
    f.send(Method::PATCH, &location, &[], vec![1; 1000]).await;
    assert_eq!(f.files("tmp").len(), 1);
    let r = f.delete(&location).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(f.files("tmp").is_empty());
    assert_eq!(code(f.get(&location).await).await, "BLOB_UPLOAD_UNKNOWN");
    let r = f.delete(&location).await;
    assert_eq!(code(r).await, "BLOB_UPLOAD_UNKNOWN");

    // Left alone, a session expires and its temp file goes.
    let r = f
        .send(Method::POST, "/v2/r/blobs/uploads/", &[], Vec::new())
        .await;
    let location = header(&r, "location");
    f.send(Method::PATCH, &location, &[], vec![2; 1000]).await;
    assert_eq!(f.files("tmp").len(), 1);
    let mut waited = Duration::ZERO;
    while !f.files("tmp").is_empty() {
        assert!(
            waited < Duration::from_secs(10),
            "the session never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert_eq!(code(f.get(&location).await).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_scoped_and_mounted_only_from_repositories_that_hold_them() {
    let f = Fixture::new(pushing()).await;
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
    assert_eq!(f.files("blobs/sha256").len(), 2, "one copy of each blob");

    // DELETE takes it out of one repository; the other still serves it.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_checked_pushed_tagged_and_deleted() {
    let f = Fixture::new(pushing()).await;
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
    let blobs_before = f.files("blobs/sha256").len();
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
    assert_eq!(f.files("blobs/sha256").len(), blobs_before);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_list_the_manifests_that_name_a_subject() {
    let f = Fixture::new(pushing()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_pushing_one_blob_all_succeed_and_one_copy_is_stored() {
    let f = Arc::new(Fixture::new(pushing()).await);
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
    assert_eq!(
        f.files("blobs/sha256"),
        vec![f.root.join("blobs/sha256").join(digest.hex())]
    );
    assert!(f.files("tmp").is_empty());
    f.store.verify(&digest).await.expect("verify");
    for i in 0..4 {
        let r = f.get(&format!("/v2/client{i}/blobs/{digest}")).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_size_limit_are_refused() {
    let f = Fixture::new(Access {
        max_blob_size: Some(1000),
        ..pushing()
    })
    .await;
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
    assert_eq!(f.files("blobs/sha256").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_guards_writes_and_with_auth_reads_reads_too() {
    let hash = bcrypt::hash("pw", 4).expect("hash");
    let users = Arc::new(Htpasswd::parse(&format!("ci:{hash}\n")).expect("htpasswd"));
    let basic = |user: &str, pw: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };
    let mut f = Fixture::new(Access {
        htpasswd: Some(users.clone()),
        ..pushing()
    })
    .await;
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
    assert!(f.files("tmp").is_empty());

    let mut f = Fixture::new(Access {
        htpasswd: Some(users),
        auth_reads: true,
        ..pushing()
    })
    .await;
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
