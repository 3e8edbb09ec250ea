//! The registry API in-process: each test starts a server on an ephemeral loopback port over
//! its own temp store, packs small images into it, and checks every endpoint, header and error.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{JsonValue, RawResponse, raw_request};
use quinistry::digest::Digest;
use quinistry::image::{DOCKER_MANIFEST, OCI_MANIFEST, RunConfig};
use quinistry::pack::compress::{self, Compression};
use quinistry::pack::{self, Input, LayerOptions, PackedImage};
use quinistry::reference::TaggedName;
use quinistry::registry::{Config, Server};
use quinistry::store::Store;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server over a temp store.
struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    http: reqwest::Client,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with_config(Config::default()).await
    }

    async fn with_config(config: Config) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).await.expect("store");
        let server = Server::bind("127.0.0.1:0".parse().expect("addr"), store.clone(), config)
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Fixture {
            dir,
            store,
            addr,
            stop: Some(stop),
            task: Some(task),
            http: common::http_builder().no_proxy().build().expect("client"),
        }
    }

    /// Packs `files` (image path, content) as `tag` into the server's store.
    async fn pack(&self, tag: &str, files: &[(&str, &[u8])]) -> PackedImage {
        let fast = Compression::Gzip {
            level: 1,
            block_size: compress::DEFAULT_BLOCK_SIZE,
        };
        self.pack_with(tag, files, fast).await
    }

    async fn pack_with(
        &self,
        tag: &str,
        files: &[(&str, &[u8])],
        compression: Compression,
    ) -> PackedImage {
        let src = tempfile::tempdir_in(self.dir.path()).expect("src dir");
        let mut inputs = Vec::new();
        for (i, (dest, bytes)) in files.iter().enumerate() {
            let path = src.path().join(format!("f{i}"));
            std::fs::write(&path, bytes).expect("write input");
            inputs.push(Input::at(&path, dest, dest).expect("input"));
        }
        let tag: TaggedName = tag.parse().expect("tag");
        let opts = LayerOptions {
            compression,
            mtime: 0,
        };
        pack::pack_image(
            &self.store,
            &inputs,
            opts,
            &RunConfig::default(),
            Some(&tag),
        )
        .await
        .expect("pack")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        self.request(reqwest::Method::GET, path, headers).await
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.http.request(method, self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request")
    }

    /// A raw request on a blocking thread (the server runs on this runtime).
    async fn raw(&self, method: &str, path: &str, headers: &[&str]) -> RawResponse {
        let (addr, method, path) = (self.addr.to_string(), method.to_owned(), path.to_owned());
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let h: Vec<&str> = headers.iter().map(String::as_str).collect();
            raw_request(&addr, &method, &path, &h)
        })
        .await
        .expect("raw request")
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(t) => t.await.expect("server task"),
            None => Ok(()),
        }
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Reads an OCI error body and checks its shape; gives the code.
async fn error_code(r: reqwest::Response) -> String {
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let v: Value = r.json_value().await;
    let e = &v["errors"][0];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    e["code"].as_str().expect("code").to_owned()
}

const DOCKER_ACCEPT: [(&str, &str); 4] = [
    ("accept", DOCKER_MANIFEST),
    (
        "accept",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ),
    ("accept", "application/vnd.oci.image.index.v1+json"),
    ("accept", OCI_MANIFEST),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_endpoint_answers_with_the_api_version() {
    let f = Fixture::new().await;
    for path in ["/v2/", "/v2"] {
        let r = f.get(path, &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "docker-distribution-api-version"),
            Some("registry/2.0")
        );
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(r.text().await.expect("body"), "{}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_by_tag_and_digest_with_negotiation() {
    let f = Fixture::new().await;
    let img = f
        .pack("tools/app:v1", &[("/app", b"#!/bin/sh\necho hi\n")])
        .await;
    let oci = f.store.read_blob(&img.manifest.0).await.expect("oci");
    let (docker_digest, _) = img
        .docker_manifest
        .clone()
        .expect("a gzip image's Docker form");
    let docker = f.store.read_blob(&docker_digest).await.expect("docker");

    // No Accept, or OCI first: the stored OCI manifest.
    for accept in [&[][..], &[("accept", OCI_MANIFEST)][..]] {
        let r = f.get("/v2/tools/app/manifests/v1", accept).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
        assert_eq!(
            header(&r, "docker-content-digest"),
            Some(img.manifest.0.to_string().as_str())
        );
        assert_eq!(
            header(&r, "etag"),
            Some(format!("\"{}\"", img.manifest.0).as_str())
        );
        assert_eq!(
            header(&r, "content-length"),
            Some(oci.len().to_string().as_str())
        );
        assert_eq!(r.bytes().await.expect("body"), oci);
    }

    // Docker's Accept list puts schema 2 first: the Docker twin, whose digest is of its bytes.
    let r = f.get("/v2/tools/app/manifests/v1", &DOCKER_ACCEPT).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some(DOCKER_MANIFEST));
    let digest = header(&r, "docker-content-digest")
        .expect("digest")
        .to_owned();
    let body = r.bytes().await.expect("body");
    assert_eq!(body, docker);
    assert_eq!(digest, Digest::sha256_of(&body).to_string());

    // By digest: exactly the stored bytes of that digest, whatever Accept says.
    for (digest, bytes, media) in [
        (&img.manifest.0, &oci, OCI_MANIFEST),
        (&docker_digest, &docker, DOCKER_MANIFEST),
    ] {
        let r = f
            .get(&format!("/v2/tools/app/manifests/{digest}"), &DOCKER_ACCEPT)
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), Some(media));
        assert_eq!(
            header(&r, "docker-content-digest"),
            Some(digest.to_string().as_str())
        );
        assert_eq!(&r.bytes().await.expect("body")[..], &bytes[..]);
    }

    // HEAD: the same headers, Content-Length included, and no body.
    let get = f.get("/v2/tools/app/manifests/v1", &DOCKER_ACCEPT).await;
    let head = f
        .request(
            reqwest::Method::HEAD,
            "/v2/tools/app/manifests/v1",
            &DOCKER_ACCEPT,
        )
        .await;
    assert_eq!(head.status(), 200);
    for h in [
        "content-type",
        "content-length",
        "docker-content-digest",
        "etag",
    ] {
        assert_eq!(header(&head, h), header(&get, h), "{h}");
    }
    assert!(head.bytes().await.expect("body").is_empty());
    let raw = f.raw("HEAD", "/v2/tools/app/manifests/v1", &[]).await;
    assert_eq!(
        raw.header("content-length"),
        Some(oci.len().to_string().as_str())
    );
    assert!(raw.body.is_empty());

    // A client that takes neither form is told so, not sent something it cannot read.
    let r = f
        .get("/v2/tools/app/manifests/v1", &[("accept", "text/html")])
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    // If-None-Match with the current ETag: 304, no body.
    let etag = format!("\"{}\"", img.manifest.0);
    let r = f
        .get("/v2/tools/app/manifests/v1", &[("if-none-match", &etag)])
        .await;
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.expect("body").is_empty());
}

/// Each compression's layer media type in each manifest form, and no Docker form for zstd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_media_types_follow_the_compression() {
    let f = Fixture::new().await;
    let files: &[(&str, &[u8])] = &[("/app", b"#!/bin/sh\necho hi\n")];
    for (tag, compression, oci_layer, docker_layer) in [
        (
            "c:gzip",
            Compression::default(),
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Some("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ),
        (
            "c:zstd",
            Compression::Zstd { level: 3 },
            "application/vnd.oci.image.layer.v1.tar+zstd",
            None,
        ),
        (
            "c:none",
            Compression::None,
            "application/vnd.oci.image.layer.v1.tar",
            Some("application/vnd.docker.image.rootfs.diff.tar"),
        ),
    ] {
        let img = f.pack_with(tag, files, compression).await;
        assert_eq!(
            img.docker_manifest.is_some(),
            docker_layer.is_some(),
            "{tag}"
        );
        let path = format!("/v2/c/manifests/{}", &tag[2..]);
        let r = f.get(&path, &[("accept", OCI_MANIFEST)]).await;
        assert_eq!(r.status(), 200, "{tag}");
        let m: serde_json::Value =
            serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
        assert_eq!(m["layers"][0]["mediaType"], oci_layer, "{tag}");

        // Docker's own Accept list: the Docker form where there is one, else the OCI one.
        let r = f.get(&path, &DOCKER_ACCEPT).await;
        assert_eq!(r.status(), 200, "{tag}");
        let m: serde_json::Value =
            serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
        assert_eq!(
            m["layers"][0]["mediaType"],
            docker_layer.unwrap_or(oci_layer),
            "{tag}"
        );

        // A client that takes the Docker form only gets a clear no for zstd.
        let r = f.get(&path, &[("accept", DOCKER_MANIFEST)]).await;
        match docker_layer {
            Some(_) => assert_eq!(r.status(), 200, "{tag}"),
            None => {
                assert_eq!(r.status(), 404, "{tag}");
                assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
            }
        }
        // The layer blob is the tar stream in that encoding: its diff_id is the tar's digest.
        let layer = f
            .store
            .read_blob(&img.top().layer.digest)
            .await
            .expect("layer");
        let tar = match compression {
            Compression::Gzip { .. } => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&layer[..]), &mut out)
                    .expect("gunzip");
                out
            }
            Compression::Zstd { .. } => common::unzstd(&layer).await,
            Compression::None => layer.to_vec(),
        };
        assert_eq!(Digest::sha256_of(&tar), img.top().layer.diff_id, "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_errors_have_the_spec_codes() {
    let f = Fixture::new().await;
    let img = f.pack("app:v1", &[("/app", b"data")]).await;
    let unknown = Digest::sha256_of(b"nothing like this is stored");
    let cases: Vec<(String, u16, &str)> = vec![
        ("/v2/app/manifests/v2".into(), 404, "MANIFEST_UNKNOWN"),
        (
            format!("/v2/app/manifests/{unknown}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        // A layer or a config is a blob, not a manifest.
        (
            format!("/v2/app/manifests/{}", img.top().layer.digest),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/app/manifests/{}", img.config.0),
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/nope/manifests/v1".into(), 404, "NAME_UNKNOWN"),
        (
            format!("/v2/nope/manifests/{}", img.manifest.0),
            404,
            "NAME_UNKNOWN",
        ),
        (
            "/v2/app/manifests/sha256:1234".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/app/manifests/sha512:1234".into(),
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/App/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/app/manifests/-bad-tag".into(), 404, "MANIFEST_UNKNOWN"),
    ];
    for (path, status, code) in cases {
        let r = f.get(&path, &[]).await;
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(error_code(r).await, code, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_stream_whole_or_in_ranges() {
    let f = Fixture::new().await;
    let content = common::noise(3 << 20, 7);
    let img = f.pack("app:v1", &[("/big", &content)]).await;
    let layer = &img.top().layer;
    let stored = std::fs::read(f.store.blob_path(&layer.digest)).expect("layer file");
    let path = format!("/v2/app/blobs/{}", layer.digest);

    let r = f.get(&path, &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("application/octet-stream"));
    assert_eq!(header(&r, "accept-ranges"), Some("bytes"));
    assert_eq!(
        header(&r, "content-length"),
        Some(layer.size.to_string().as_str())
    );
    assert_eq!(
        header(&r, "docker-content-digest"),
        Some(layer.digest.to_string().as_str())
    );
    let body = r.bytes().await.expect("body");
    assert_eq!(body.len(), stored.len());
    assert_eq!(Digest::sha256_of(&body), layer.digest);

    let head = f.request(reqwest::Method::HEAD, &path, &[]).await;
    assert_eq!(head.status(), 200);
    assert_eq!(
        header(&head, "content-length"),
        Some(layer.size.to_string().as_str())
    );
    assert!(head.bytes().await.expect("body").is_empty());

    // One range of each form: 206, the bytes asked for, Content-Range naming them.
    let size = stored.len() as u64;
    for (range, first, last) in [
        ("bytes=0-9".to_owned(), 0, 9),
        ("bytes=1048570-1048585".to_owned(), 1_048_570, 1_048_585),
        (format!("bytes={}-", size - 5), size - 5, size - 1),
        ("bytes=-7".to_owned(), size - 7, size - 1),
        (format!("bytes=10-{}", size * 2), 10, size - 1),
    ] {
        let r = f.get(&path, &[("range", &range)]).await;
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            header(&r, "content-range"),
            Some(format!("bytes {first}-{last}/{size}").as_str()),
            "{range}"
        );
        assert_eq!(
            header(&r, "content-length"),
            Some((last - first + 1).to_string().as_str())
        );
        let body = r.bytes().await.expect("body");
        assert_eq!(
            &body[..],
            &stored[first as usize..=last as usize],
            "{range}"
        );
    }

    // Several ranges: the whole blob (allowed by RFC 9110), not a multipart body.
    let r = f.get(&path, &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").len(), stored.len());

    // Unsatisfiable or absurd ranges: 416 with the size, and an OCI error body.
    for range in [
        format!("bytes={size}-"),
        format!("bytes={}-{}", size + 10, size + 20),
        "bytes=5-1".to_owned(),
        "bytes=-0".to_owned(),
        "bytes=abc".to_owned(),
        "bytes=99999999999999999999999999-".to_owned(),
        "bytes=1-2-3".to_owned(),
    ] {
        let r = f.raw("GET", &path, &[&format!("Range: {range}")]).await;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{size}").as_str()),
            "{range}"
        );
        assert_eq!(r.error_code(), "RANGE_INVALID", "{range}");
    }

    // The config is a blob too.
    let r = f.get(&format!("/v2/app/blobs/{}", img.config.0), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        Digest::sha256_of(&r.bytes().await.expect("config")),
        img.config.0
    );

    let r = f
        .get(
            &path,
            &[("if-none-match", &format!("\"{}\"", layer.digest))],
        )
        .await;
    assert_eq!(r.status(), 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_errors_have_the_spec_codes() {
    let f = Fixture::new().await;
    let img = f.pack("app:v1", &[("/app", b"data")]).await;
    let unknown = Digest::sha256_of(b"never stored");
    for (path, status, code) in [
        (format!("/v2/app/blobs/{unknown}"), 404, "BLOB_UNKNOWN"),
        (
            format!("/v2/nope/blobs/{}", img.config.0),
            404,
            "NAME_UNKNOWN",
        ),
        ("/v2/app/blobs/sha256:xyz".to_owned(), 400, "DIGEST_INVALID"),
        (
            format!("/v2/app/blobs/{}", img.config.0.to_string().to_uppercase()),
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/app/blobs/latest".to_owned(), 400, "DIGEST_INVALID"),
    ] {
        let r = f.get(&path, &[]).await;
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(error_code(r).await, code, "{path}");
    }
}

/// Follows `Link: <...>; rel="next"` from `first` and collects `key` of every page.
async fn all_pages(f: &Fixture, first: &str, key: &str) -> (Vec<String>, usize) {
    let mut next = Some(first.to_owned());
    let mut items = Vec::new();
    let mut pages = 0;
    while let Some(path) = next.take() {
        let r = f.get(&path, &[]).await;
        assert_eq!(r.status(), 200, "{path}");
        next = header(&r, "link").map(|l| {
            assert!(l.ends_with("; rel=\"next\""), "{l}");
            l.trim_start_matches('<')
                .split('>')
                .next()
                .expect("link target")
                .to_owned()
        });
        let v = r.json_value().await;
        for t in v[key].as_array().expect("list") {
            items.push(t.as_str().expect("string").to_owned());
        }
        pages += 1;
        assert!(pages < 100, "pagination does not end");
    }
    (items, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_is_sorted_and_paginated() {
    let f = Fixture::new().await;
    let tags = ["v1", "latest", "v10", "V2", "a_b", "v1.0"];
    for t in tags {
        f.pack(&format!("team/app:{t}"), &[("/app", t.as_bytes())])
            .await;
    }
    let mut sorted: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    sorted.sort();

    let r = f.get("/v2/team/app/tags/list", &[]).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "link").is_none());
    let v = r.json_value().await;
    assert_eq!(v["name"], "team/app");
    assert_eq!(v["tags"], serde_json::json!(sorted));

    let (paged, pages) = all_pages(&f, "/v2/team/app/tags/list?n=4", "tags").await;
    assert_eq!((paged, pages), (sorted.clone(), 2));
    let r = f.get("/v2/team/app/tags/list?n=2&last=latest", &[]).await;
    assert_eq!(
        r.json_value().await["tags"],
        serde_json::json!(["v1", "v1.0"])
    );

    let r = f.get("/v2/team/tags/list", &[]).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    let r = f.get("/v2/team/app/tags/list?n=many", &[]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "PAGINATION_NUMBER_INVALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_lists_every_repository_paginated() {
    let f = Fixture::new().await;
    let r = f.get("/v2/_catalog", &[]).await;
    assert_eq!(r.json_value().await["repositories"], serde_json::json!([]));

    let names = ["b", "a/b/c", "a", "a-b", "z.z", "a/b"];
    for n in names {
        f.pack(&format!("{n}:latest"), &[("/x", n.as_bytes())])
            .await;
    }
    let mut sorted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    sorted.sort();
    let r = f.get("/v2/_catalog", &[]).await;
    assert_eq!(
        r.json_value().await["repositories"],
        serde_json::json!(sorted)
    );
    for n in [1, 2, 5, 6] {
        let (paged, pages) = all_pages(&f, &format!("/v2/_catalog?n={n}"), "repositories").await;
        assert_eq!(paged, sorted, "n={n}");
        assert_eq!(pages, sorted.len().div_ceil(n), "n={n}");
    }
    let r = f.get("/v2/_catalog?n=-3", &[]).await;
    assert_eq!(error_code(r).await, "PAGINATION_NUMBER_INVALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_while_read_only() {
    let f = Fixture::new().await;
    let img = f.pack("app:v1", &[("/app", b"data")]).await;
    for (method, path) in [
        ("PUT", "/v2/app/manifests/v2".to_owned()),
        ("DELETE", format!("/v2/app/manifests/{}", img.manifest.0)),
        ("DELETE", format!("/v2/app/blobs/{}", img.config.0)),
        ("POST", "/v2/app/blobs/uploads/".to_owned()),
        ("PATCH", "/v2/app/blobs/uploads/1234".to_owned()),
        ("OPTIONS", "/v2/".to_owned()),
    ] {
        let r = f.raw(method, &path, &["Content-Length: 0"]).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method} {path}");
        assert_eq!(r.error_code(), "UNSUPPORTED", "{method} {path}");
    }
    let r = f
        .get(
            "/v2/app/blobs/uploads/0123456789abcdef0123456789abcdef",
            &[],
        )
        .await;
    assert_eq!(r.status(), 405);
    // Nothing was written.
    assert_eq!(
        f.store
            .tags(&"app".parse().expect("name"))
            .await
            .expect("tags")
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_the_server_keeps_serving() {
    let f = Fixture::new().await;
    f.pack("app:v1", &[("/app", b"data")]).await;
    let long_name = vec!["abc"; 3000].join("/");
    let cases: Vec<(String, u16, &str)> = vec![
        ("/v2/app/../etc/manifests/v1".into(), 400, "NAME_INVALID"),
        (
            "/v2/../../etc/passwd/blobs/sha256:00".into(),
            400,
            "NAME_INVALID",
        ),
        ("/v2/./app/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/app%2F..%2Fx/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/_app/manifests/v1".into(), 400, "NAME_INVALID"),
        (format!("/v2/{long_name}/manifests/v1"), 400, "NAME_INVALID"),
        (
            format!("/v2/app/manifests/{}", "x".repeat(9000)),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/app/blobs/sha256:{}", "0".repeat(9000)),
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/app/blobs/sha256:../../../etc/passwd".into(),
            404,
            "UNSUPPORTED",
        ),
        ("/v2/app".into(), 404, "UNSUPPORTED"),
        // `/` leads to the web page (tests/ui.rs); any other path outside the API is unknown.
        ("/index.html".into(), 404, "UNSUPPORTED"),
        ("/v2/app/manifests".into(), 404, "UNSUPPORTED"),
    ];
    for (path, status, code) in cases {
        let r = f.raw("GET", &path, &[]).await;
        let shown = &path[..path.len().min(60)];
        assert_eq!(r.status, status, "{shown}");
        assert_eq!(r.error_code(), code, "{shown}");
        // Echoed request text is cut short.
        assert!(
            r.body.len() < 2048,
            "{shown}: {} byte error body",
            r.body.len()
        );
    }
    let r = f.get("/v2/app/manifests/v1", &[]).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let f = Fixture::with_config(Config {
        header_read_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let addr = f.addr;
    let closed = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            .expect("send");
        // Generous: the point is that the server hangs up, not how fast.
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue, // hyper may answer 408 before closing
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("client");
    assert!(closed, "the server kept a half-sent request open");
    assert_eq!(f.get("/v2/", &[]).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_running_download_finish() {
    let mut f = Fixture::new().await;
    let content = common::noise(24 << 20, 3);
    let img = f.pack("big:v1", &[("/big", &content)]).await;
    let layer = img.top().layer.clone();

    // Start a download and read only its first bytes, so it is mid-flight at shutdown.
    let mut r = f.get(&format!("/v2/big/blobs/{}", layer.digest), &[]).await;
    assert_eq!(r.status(), 200);
    let mut hasher = quinistry::digest::Hasher::new();
    let first = r.chunk().await.expect("chunk").expect("first chunk");
    hasher.update(&first);

    // An idle keep-alive connection must not hold the shutdown up.
    let idle = common::http_builder().no_proxy().build().expect("client");
    assert_eq!(
        idle.get(f.url("/v2/")).send().await.expect("idle").status(),
        200
    );

    let stop = f.stop.take().expect("stop");
    let _ = stop.send(());
    // Give the accept loop time to close the listener; the download is still unfinished.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(f.addr).await.is_err(),
        "new connections are still accepted after shutdown"
    );
    while let Some(chunk) = r.chunk().await.expect("rest of the download") {
        hasher.update(&chunk);
    }
    let (digest, len) = hasher.finish();
    assert_eq!((digest, len), (layer.digest, layer.size));
    let task = f.task.take().expect("task");
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("server stops once the download is done")
        .expect("join")
        .expect("run");
    let _ = f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_on_one_keep_alive_connection() {
    let f = Fixture::new().await;
    let img = f.pack("app:v1", &[("/app", b"data")]).await;
    // One client, sequential requests: hyper keeps the connection; each answer is whole.
    for _ in 0..20 {
        let r = f.get(&format!("/v2/app/blobs/{}", img.config.0), &[]).await;
        assert_eq!(
            Digest::sha256_of(&r.bytes().await.expect("body")),
            img.config.0
        );
        let r = f.get("/v2/app/manifests/nope", &[]).await;
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    }
    assert!(Path::new(f.store.root()).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_written_while_serving_are_seen() {
    let f = Fixture::new().await;
    let first = f.pack("app:v1", &[("/app", b"one")]).await;
    let digest_of = |r: &reqwest::Response| header(r, "docker-content-digest").map(str::to_owned);
    let r = f.get("/v2/app/manifests/v1", &[]).await;
    assert_eq!(digest_of(&r), Some(first.manifest.0.to_string()));

    // A new tag and a new repository are served at once (only found tags are cached).
    assert_eq!(f.get("/v2/app/manifests/v2", &[]).await.status(), 404);
    assert_eq!(f.get("/v2/other/tags/list", &[]).await.status(), 404);
    let second = f.pack("app:v2", &[("/app", b"two")]).await;
    f.pack("other:v1", &[("/o", b"o")]).await;
    let r = f.get("/v2/app/manifests/v2", &[]).await;
    assert_eq!(digest_of(&r), Some(second.manifest.0.to_string()));
    assert_eq!(f.get("/v2/other/tags/list", &[]).await.status(), 200);

    // A moved tag is served once the cached copy expires (one second).
    let moved = f.pack("app:v1", &[("/app", b"three")]).await;
    assert_ne!(moved.manifest.0, first.manifest.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = f.get("/v2/app/manifests/v1", &[]).await;
        if digest_of(&r) == Some(moved.manifest.0.to_string()) {
            break;
        }
        assert_eq!(digest_of(&r), Some(first.manifest.0.to_string()));
        assert!(
            std::time::Instant::now() < deadline,
            "the moved tag is never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /v2/` on a fresh connection: whether it is answered within `within`.
fn answered_within(addr: std::net::SocketAddr, within: Duration) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    if s.set_read_timeout(Some(within)).is_err()
        || s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200"))
}

/// A connection that sends nothing is closed after the idle timeout. With one connection
/// allowed, a client that stops mid-body, or reads nothing of its download, holds it (it is
/// busy, so not closed to make room) until its timeout, and the next client is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_a_connection_without_using_it_loses_it() {
    use std::io::Write;
    let f = Fixture::with_config(Config {
        max_connections: 1,
        idle_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(1500),
        write_timeout: Duration::from_millis(1500),
        ..Config::default()
    })
    .await;
    let content = common::noise(48 << 20, 5);
    let img = f.pack("big:v1", &[("/big", &content)]).await;
    let addr = f.addr;
    let blob = format!("/v2/big/blobs/{}", img.top().layer.digest);
    let silent = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(0))
            || matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    });
    assert!(
        silent.await.expect("join"),
        "a silent connection was not closed"
    );
    for holder in ["stalled body", "unread download"] {
        let blob = blob.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            match holder {
                "stalled body" => s
                    .write_all(b"PUT /v2/x/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
                    .expect("send"),
                _ => write!(s, "GET {blob} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send"),
            }
            // Its request is in flight, so it is busy: not closed to make room.
            std::thread::sleep(Duration::from_millis(300));
            // While it holds the only connection, another client waits...
            let blocked = !answered_within(addr, Duration::from_millis(150));
            // ...until its timeout frees it.
            let served = answered_within(addr, Duration::from_secs(10));
            drop(s);
            (blocked, served)
        })
        .await
        .expect("join");
        assert_eq!(
            outcome,
            (true, true),
            "{holder}: (held the slot, then freed it)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_idle_ones_make_room_busy_ones_do_not_and_shutdown_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("store")).await.expect("store");
    let server = Server::bind(
        "127.0.0.1:0".parse().expect("addr"),
        store,
        Config {
            max_connections: 2,
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_millis(500),
            ..Config::default()
        },
    )
    .await
    .expect("bind");
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    // Two connections that send nothing fill the cap: a new client is served at once, each
    // time, by closing the one idle longest.
    let idle = tokio::task::spawn_blocking(move || {
        let held: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let served = (0..3).all(|_| answered_within(addr, Duration::from_secs(2)));
        drop(held);
        served
    });
    assert!(
        idle.await.expect("join"),
        "idle connections kept a new client out"
    );

    // Two connections mid-request (bodies they never finish) are busy: a third waits...
    let (a, b) = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let stalled = || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(
                b"PUT /v2/x/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
            )
            .expect("send");
            s
        };
        let pair = (stalled(), stalled());
        std::thread::sleep(Duration::from_millis(100));
        pair
    })
    .await
    .expect("join");
    let third =
        tokio::task::spawn_blocking(move || answered_within(addr, Duration::from_millis(300)));
    assert!(
        !third.await.expect("join"),
        "a third connection was served past the cap of 2 busy ones"
    );
    // ...until one of them closes.
    drop(a);
    let fourth = tokio::task::spawn_blocking(move || answered_within(addr, Duration::from_secs(5)));
    assert!(
        fourth.await.expect("join"),
        "a closed connection did not make room"
    );

    // b still holds its stalled request: shutdown waits for it 500 ms, not forever.
    let started = std::time::Instant::now();
    stop.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("shutdown was not bounded")
        .expect("join")
        .expect("run");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(b);
}

/// A push-enabled server with `config`; its address and the stop sender.
async fn pushing_server(
    dir: &std::path::Path,
    config: Config,
) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let store = Store::open(dir.join("store")).await.expect("store");
    let registry =
        quinistry::registry::Registry::new(store).with_access(quinistry::registry::Access {
            push: true,
            ..Default::default()
        });
    let server = Server::bind_registry("127.0.0.1:0".parse().expect("addr"), registry, config)
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// A connection to `addr` from the loopback address `from` (127.0.0.x: all of 127/8 is this
/// machine), as another client would come.
async fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((from, 0)))
        .expect("bind");
    socket.connect(addr).await.expect("connect")
}

/// What the server answers first on `s` ("" if it closed the connection without a word).
async fn first_answer(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Ok(Err(_)) => String::new(),
        Err(_) => panic!("no answer and no close in 20 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_only_its_share_of_the_connections() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _stop) = pushing_server(
        dir.path(),
        Config {
            max_connections: 64,
            max_connections_per_client: 3,
            body_timeout: Duration::from_secs(60),
            ..Config::default()
        },
    )
    .await;
    // Three requests in flight from 127.0.0.3 (bodies that never come): its share, all busy.
    let mut busy = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from([127, 0, 0, 3], addr).await;
        s.write_all(b"PUT /v2/x/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            .await
            .expect("send");
        busy.push(s);
    }
    // The server has taken them (each answers a request after its own).
    let mut probe = connect_from([127, 0, 0, 4], addr).await;
    probe
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    assert!(first_answer(&mut probe).await.starts_with("HTTP/1.1 200"));
    // A fourth from the same address is closed unanswered; other addresses are served.
    for _ in 0..3 {
        let mut extra = connect_from([127, 0, 0, 3], addr).await;
        let _ = extra
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        assert_eq!(
            first_answer(&mut extra).await,
            "",
            "a fourth connection was served"
        );
        let mut other = connect_from([127, 0, 0, 5], addr).await;
        other
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        assert!(first_answer(&mut other).await.starts_with("HTTP/1.1 200"));
    }
    // Once one of its requests ends, the address may connect again.
    drop(busy.pop());
    let mut again = None;
    for _ in 0..100 {
        let mut s = connect_from([127, 0, 0, 3], addr).await;
        let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
        if first_answer(&mut s).await.starts_with("HTTP/1.1 200") {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "the address was not let back in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickling_under_the_minimum_rate_is_cut_and_a_slow_one_above_it_is_not() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // At least 100 bytes in each second spent waiting for a body.
    let (addr, _stop) = pushing_server(
        dir.path(),
        Config {
            body_timeout: Duration::from_secs(1),
            min_body_rate: 100,
            ..Config::default()
        },
    )
    .await;
    let body = common::noise(3000, 9);
    let digest = quinistry::digest::Digest::sha256_of(&body);
    let head = format!(
        "POST /v2/t/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // 10 bytes every 200 ms (50 B/s, slower still on a busy machine): cut, 400.
    let mut slow = connect_from([127, 0, 0, 6], addr).await;
    slow.write_all(head.as_bytes()).await.expect("send");
    let mut sent = 0;
    let answer = loop {
        tokio::select! {
            a = first_answer(&mut slow) => break a,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                assert!(sent < body.len(), "the whole body went through at 50 B/s");
                let _ = slow.write_all(&body[sent..sent + 10]).await;
                sent += 10;
            }
        }
    };
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("BLOB_UPLOAD_INVALID") && answer.contains("B/s"),
        "{answer}"
    );
    // 200 bytes every 100 ms (2,000 B/s, twenty times the minimum): stored.
    let mut fast = connect_from([127, 0, 0, 6], addr).await;
    fast.write_all(head.as_bytes()).await.expect("send");
    for piece in body.chunks(200) {
        fast.write_all(piece).await.expect("send");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = first_answer(&mut fast).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}
