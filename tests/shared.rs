//! Replicas over a shared store: blobs in a 3-node Garage cluster (S3), metadata in
//! PostgreSQL (see `common::cluster`).

mod common;

use std::path::Path;
use std::process::Command;

use common::cluster::*;
use common::{DockerCleanup, JsonValue, Serving, docker, have_docker, have_tool, run_ok, sh};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn a_tag_moved_on_one_replica_is_seen_on_the_other_at_once() {
    let Some(cluster) = cluster() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.store();
    let a = store.replica(dir.path(), &[]);
    let b = store.replica(dir.path(), &[]);
    let first = push_image(&a.addr, "team/app", "v1", b"layer one").await;
    // Read on A first, so that anything A remembered would now be stale.
    assert_eq!(
        tag_digest(&a.addr, "team/app", "v1").await,
        Ok(first.clone())
    );
    for round in 0..20u32 {
        let layer = format!("layer {round}");
        let moved = push_image(&b.addr, "team/app", "v1", layer.as_bytes()).await;
        assert_eq!(
            tag_digest(&a.addr, "team/app", "v1").await,
            Ok(moved.clone()),
            "round {round}: A did not see B's move at once"
        );
        let r = http()
            .get(format!("http://{}/v2/team/app/tags/list", a.addr))
            .send()
            .await
            .expect("tags");
        let body: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
        assert_eq!(body["tags"], json!(["v1"]));
    }
    // Deleted on A: gone on B at once.
    let r = http()
        .delete(format!("http://{}/v2/team/app/manifests/v1", a.addr))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        tag_digest(&b.addr, "team/app", "v1").await,
        Err(StatusCode::NOT_FOUND)
    );
}

/// A row that breaks an invariant (a tag naming no digest) is the store's fault: a 500 that
/// names the bad value in the log, not a 503 and an old answer from memory.
#[tokio::test]
async fn a_corrupt_row_is_a_500_naming_it_not_a_retry() {
    let Some(cluster) = cluster() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.store();
    let a = store.replica(dir.path(), &[]);
    push_image(&a.addr, "team/app", "v1", b"a layer").await;
    let r = http()
        .get(format!("http://{}/v2/team/app/tags/list", a.addr))
        .send()
        .await
        .expect("tags");
    assert_eq!(r.status(), StatusCode::OK);
    let client = store.database().await;
    client
        .execute(
            "UPDATE tags SET digest = 'sha256:not-a-digest' WHERE tag = 'v1'",
            &[],
        )
        .await
        .expect("corrupt the row");
    assert_eq!(
        tag_digest(&a.addr, "team/app", "v1").await,
        Err(StatusCode::INTERNAL_SERVER_ERROR)
    );
    let log = a.log_text();
    assert!(
        log.contains("corrupt store") && log.contains("sha256:not-a-digest"),
        "{log}"
    );
}

/// A database from before the table of repositories (schema 5) gets it filled from its tags
/// and links when a replica of this version starts on it: the catalog lists every repository,
/// one with only blob links too (and the replica's own image, which it tags at start).
#[tokio::test]
async fn a_database_from_before_the_repository_table_lists_every_repository_after_upgrade() {
    let Some(cluster) = cluster() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.store();
    let a = store.replica(dir.path(), &[]);
    for repo in ["team/app", "team/app/sub", "z"] {
        push_image(&a.addr, repo, "v1", repo.as_bytes()).await;
    }
    let client = store.database().await;
    // "blobs-only" holds a blob link and no tag.
    client
        .batch_execute(
            "INSERT INTO links (repository, kind, digest)
                 SELECT 'blobs-only', kind, digest FROM links WHERE repository = 'z' LIMIT 1;
             DROP TABLE repositories;
             DELETE FROM quinistry_schema WHERE version = 6;",
        )
        .await
        .expect("back to schema 5");
    drop(a);
    let b = store.replica(dir.path(), &[]);
    let v: Value = http()
        .get(format!("http://{}/v2/_catalog", b.addr))
        .send()
        .await
        .expect("catalog")
        .json_value()
        .await;
    assert_eq!(
        v["repositories"],
        json!(["blobs-only", "quinistry", "team/app", "team/app/sub", "z"])
    );
}

#[tokio::test]
async fn blobs_stream_through_a_replica_or_redirect_to_storage_with_ranges() {
    let Some(cluster) = cluster() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.store();
    let a = store.replica(dir.path(), &[]);
    let r = store.replica(dir.path(), &["--redirect"]);
    // Larger than one multipart part, so the upload is a multipart one.
    let big = common::noise(12 << 20, 8);
    let digest = push_blob(&a.addr, "big/blob", &big).await;

    let streamed = http()
        .get(format!("http://{}/v2/big/blob/blobs/{digest}", a.addr))
        .send()
        .await
        .expect("GET");
    assert_eq!(streamed.status(), StatusCode::OK);
    assert_eq!(sha256(&streamed.bytes().await.expect("body")), digest);
    let ranged = http()
        .get(format!("http://{}/v2/big/blob/blobs/{digest}", a.addr))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .expect("GET range");
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&ranged.bytes().await.expect("body")[..], &big[1000..2000]);

    let redirected = http()
        .get(format!("http://{}/v2/big/blob/blobs/{digest}", r.addr))
        .send()
        .await
        .expect("GET");
    assert_eq!(redirected.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = redirected.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        cluster
            .endpoints
            .iter()
            .any(|e| location.starts_with(e.as_str())),
        "{location}"
    );
    let fetched = http().get(&location).send().await.expect("GET presigned");
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(sha256(&fetched.bytes().await.expect("body")), digest);
    let ranged = http()
        .get(&location)
        .header("range", "bytes=5-9")
        .send()
        .await
        .expect("GET presigned range");
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&ranged.bytes().await.expect("body")[..], &big[5..10]);
    // HEAD is answered by the replica itself.
    let head = http()
        .head(format!("http://{}/v2/big/blob/blobs/{digest}", r.addr))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        (12u64 << 20).to_string().as_str()
    );
    // Not in this repository: 404 either way, no URL handed out.
    for addr in [&a.addr, &r.addr] {
        let other = http()
            .get(format!("http://{addr}/v2/other/repo/blobs/{digest}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
    }
}

#[test]
fn docker_pushes_through_one_replica_and_pulls_through_the_other_streamed_and_redirected() {
    let Some(cluster) = cluster() else { return };
    if !have_docker() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("app.c"),
        "#include <stdio.h>\nint main(void) { puts(\"hello from a shared store\"); return 0; }\n",
    )
    .expect("write app.c");
    sh(&format!(
        "cd '{}' && cc -static -O1 -o app app.c",
        dir.path().display()
    ));
    // A local packer makes the image docker pushes.
    let app = dir.path().join("app");
    let local = Serving::start(
        &dir.path().join("local"),
        dir.path(),
        &["--level", "1", &app.to_string_lossy()],
    );
    let store = cluster.store();
    let a = store.replica(dir.path(), &[]);
    let b = store.replica(dir.path(), &[]);
    let c = store.replica(dir.path(), &["--redirect"]);
    let source = format!("{}/app:latest", local.addr);
    let pushed = format!("{}/shared/app:v1", a.addr);
    let via_b = format!("{}/shared/app:v1", b.addr);
    let via_c = format!("{}/shared/app:v1", c.addr);
    let _cleanup = DockerCleanup::images(&[&source, &pushed, &via_b, &via_c]);
    docker(&["pull", &source]);
    docker(&["tag", &source, &pushed]);
    let out = docker(&["push", &pushed]);
    let digest = out
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in docker push's output:\n{out}"))
        .to_owned();
    docker(&["rmi", &source, &pushed]);
    for image in [&via_b, &via_c] {
        let pulled = docker(&["pull", image]);
        assert!(pulled.contains(&format!("Digest: {digest}")), "{pulled}");
        let ran = docker(&["run", "--rm", "--network", "none", image]);
        assert_eq!(ran, "hello from a shared store");
        docker(&["rmi", image]);
    }
    let log = c.log_text();
    assert!(
        log.contains("status=307"),
        "the redirecting replica answered no 307:\n{log}"
    );
}

/// Writes an OCI layout at `dir` holding one image of `layers` (gzip layers of arbitrary
/// bytes: nothing here unpacks them, and gzip ones are copied as they are, where skopeo
/// would compress uncompressed ones) tagged `v1`; the manifest's digest.
fn oci_layout(dir: &Path, layers: &[Vec<u8>]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |bytes: &[u8]| -> String {
        let d = sha256(bytes);
        std::fs::write(blobs.join(&d[7..]), bytes).expect("write blob");
        d
    };
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let c = put(config);
    let descriptors: Vec<Value> = layers
        .iter()
        .map(|l| {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(l).expect("gzip");
            let gz = gz.finish().expect("gzip");
            json!({"mediaType": OCI_GZIP_LAYER, "digest": put(&gz), "size": gz.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": c, "size": config.len()},
        "layers": descriptors,
    }))
    .expect("json");
    let m = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": m, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("write index");
    m
}

#[test]
fn skopeo_copies_a_multi_layer_image_in_through_one_replica_and_out_through_the_other() {
    let Some(cluster) = cluster() else { return };
    if !have_tool("skopeo", "skopeo") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.store();
    let a = store.replica(dir.path(), &[]);
    let b = store.replica(dir.path(), &[]);
    // One layer large enough for a multipart upload, and small ones.
    let layers = vec![
        common::noise(11 << 20, 10),
        common::noise(1000, 12),
        common::noise(300_000, 14),
        b"tiny".to_vec(),
    ];
    let src = dir.path().join("src");
    let manifest = oci_layout(&src, &layers);
    let out = dir.path().join("out");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{}/multi/layer:v1", b.addr),
    ]));
    run_ok(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/multi/layer:v1", a.addr),
        &format!("oci:{}:v1", out.display()),
    ]));
    // And out through a replica that redirects blob downloads to the storage.
    let c = store.replica(dir.path(), &["--redirect"]);
    let redirected = dir.path().join("redirected");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/multi/layer:v1", c.addr),
        &format!("oci:{}:v1", redirected.display()),
    ]));
    let index = |dir: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index"))
            .expect("json")
    };
    assert_eq!(
        index(&redirected)["manifests"][0]["digest"],
        index(&out)["manifests"][0]["digest"]
    );
    assert!(
        c.log_text().contains("status=307"),
        "no redirect was answered"
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).expect("index"))
            .expect("json");
    assert_eq!(
        index["manifests"][0]["digest"],
        manifest.as_str(),
        "{index}"
    );
    let blob = |d: &str| std::fs::read(out.join("blobs/sha256").join(&d[7..])).expect("copied");
    let m: Value = serde_json::from_slice(&blob(&manifest)).expect("manifest");
    let copied = m["layers"].as_array().expect("layers");
    assert_eq!(copied.len(), layers.len(), "{m}");
    for l in copied.iter().chain([&m["config"]]) {
        let d = l["digest"].as_str().expect("digest");
        assert_eq!(sha256(&blob(d)), d);
    }
}

#[tokio::test]
async fn a_store_without_its_database_is_refused_in_one_line() {
    let Some(cluster) = cluster() else { return };
    let store = cluster.store();
    let out = common::quinistry()
        .args(["serve", "--listen", "127.0.0.1:0", "--store", &store.url])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs --metadata"), "{err}");
}

/// A session's `Location` and `Range` end, from a 202.
fn session(r: &reqwest::Response) -> (String, u64) {
    let location = r.headers()["location"].to_str().expect("ascii").to_owned();
    let end = r.headers()["range"]
        .to_str()
        .expect("ascii")
        .rsplit('-')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .expect("a Range");
    (location, end)
}

#[tokio::test]
async fn a_chunked_upload_begun_on_one_replica_is_finished_on_the_other() {
    let Some(cluster) = cluster() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.store();
    let a = store.replica(dir.path(), &[]);
    let b = store.replica(dir.path(), &[]);
    // Chunks of 6 MiB, 1 MiB and 5 MiB + 3 bytes, sent to A, B, A; closed on B.
    let blob = common::noise((12 << 20) + 3, 16);
    let cuts = [0, 6 << 20, 7 << 20, blob.len()];
    let r = http()
        .post(format!("http://{}/v2/chunked/blob/blobs/uploads/", a.addr))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (mut location, _) = session(&r);
    for (i, w) in cuts.windows(2).enumerate() {
        let addr = if i % 2 == 0 { &a.addr } else { &b.addr };
        let r = http()
            .patch(format!("http://{addr}{location}"))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{}-{}", w[0], w[1] - 1))
            .body(blob[w[0]..w[1]].to_vec())
            .send()
            .await
            .expect("PATCH");
        assert_eq!(r.status(), StatusCode::ACCEPTED, "chunk {i} on {addr}");
        let (next, end) = session(&r);
        assert_eq!(end, w[1] as u64 - 1);
        location = next;
        // The other replica sees how far it got.
        let other = if i % 2 == 0 { &b.addr } else { &a.addr };
        let s = http()
            .get(format!("http://{other}{location}"))
            .send()
            .await
            .expect("GET status");
        assert_eq!(s.status(), StatusCode::NO_CONTENT);
        assert_eq!(session(&s).1, w[1] as u64 - 1);
    }
    // A chunk out of order is refused where the session is not (416, Range says where).
    let r = http()
        .patch(format!("http://{}{location}", b.addr))
        .header("content-range", "5-9")
        .body(vec![0u8; 5])
        .send()
        .await
        .expect("PATCH out of order");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let digest = sha256(&blob);
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = http()
        .put(format!("http://{}{location}{sep}digest={digest}", b.addr))
        .send()
        .await
        .expect("PUT");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    for addr in [&a.addr, &b.addr] {
        let got = http()
            .get(format!("http://{addr}/v2/chunked/blob/blobs/{digest}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(sha256(&got.bytes().await.expect("body")), digest);
    }
    // The session is over everywhere.
    let s = http()
        .get(format!("http://{}{location}", a.addr))
        .send()
        .await
        .expect("GET status");
    assert_eq!(s.status(), StatusCode::NOT_FOUND);
}

/// `quinistry gc` over the store, with `args`; its output line.
fn gc(store: &SharedStore, args: &[&str]) -> std::process::Output {
    let mut c = common::quinistry();
    c.args(["gc", "--store", &store.url, "--metadata", &store.metadata]);
    for e in &store.endpoints {
        c.args(["--s3-endpoint", e]);
    }
    c.args(args).output().expect("run quinistry gc")
}

/// The number before `word` in a gc summary ("removed 3 (…)" → 3 for "removed").
fn count_after(summary: &str, word: &str) -> usize {
    summary
        .split(word)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after {word:?} in {summary:?}"))
}

#[tokio::test]
async fn gc_of_a_shared_store_reclaims_what_no_image_needs_and_runs_one_pass_at_a_time() {
    let Some(cluster) = cluster() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.store();
    let a = store.replica(dir.path(), &[]);
    let b = store.replica(dir.path(), &[]);
    let shared_layer = common::noise(1 << 20, 30);
    let gone = push_image(&a.addr, "gc/one", "v1", &common::noise(6 << 20, 32)).await;
    let kept = push_image(&a.addr, "gc/two", "v1", &shared_layer).await;
    // The shared layer is pushed into gc/one too, then only gc/two's image names it.
    push_blob(&a.addr, "gc/one", &shared_layer).await;
    let r = http()
        .delete(format!("http://{}/v2/gc/one/manifests/{gone}", b.addr))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // Within the grace period: nothing goes.
    let out = gc(&store, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count_after(&text, "removed"), 0, "{text}");
    // A dry run counts, removes nothing: gc/one's three blob links (its layer, its config
    // and the shared layer), and its manifest. It does not foresee what removing the links
    // would free (the layer).
    let out = gc(
        &store,
        &["--dry-run", "--grace", "0s", "--link-grace", "0s"],
    );
    let dry = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(count_after(&dry, "would remove"), 1, "{dry}");
    assert_eq!(count_after(&dry, "MiB), "), 3, "{dry}");
    // Another replica's pass is under way: this one does nothing and says why.
    let client = store.database().await;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&0x7175_696e_6763_6c6bi64])
        .await
        .expect("lock");
    let out = gc(&store, &["--grace", "0s", "--link-grace", "0s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another replica is collecting"), "{err}");
    client
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&0x7175_696e_6763_6c6bi64],
        )
        .await
        .expect("unlock");

    let out = gc(&store, &["--grace", "0s", "--link-grace", "0s"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // gc/one's manifest and layer; the config and the shared layer are gc/two's too.
    assert_eq!(count_after(&text, "removed"), 2, "{text}");
    assert_eq!(count_after(&text, "MiB), "), 3, "{text}");
    let r = http()
        .get(format!("http://{}/v2/gc/one/manifests/{gone}", a.addr))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    for addr in [&a.addr, &b.addr] {
        assert_eq!(tag_digest(addr, "gc/two", "v1").await, Ok(kept.clone()));
        let r = http()
            .get(format!(
                "http://{addr}/v2/gc/two/blobs/{}",
                sha256(&shared_layer)
            ))
            .send()
            .await
            .expect("GET");
        assert_eq!(
            sha256(&r.bytes().await.expect("body")),
            sha256(&shared_layer)
        );
    }
    // The store is whole: every blob re-hashed from the storage, every tag and link sound.
    let mut verify = common::quinistry();
    verify.args([
        "verify",
        "--store",
        &store.url,
        "--metadata",
        &store.metadata,
    ]);
    for e in &store.endpoints {
        verify.args(["--s3-endpoint", e]);
    }
    let out = run_ok(&mut verify);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(", 0 bad"), "{text}");
    let again = gc(&store, &["--grace", "0s", "--link-grace", "0s"]);
    assert_eq!(
        count_after(&String::from_utf8_lossy(&again.stdout), "removed"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_on_one_replica_racing_the_other_replicas_collector_lose_nothing() {
    let Some(cluster) = cluster() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.store();
    let a = store.replica(dir.path(), &[]);
    // No grace for unlinked blobs; the default for blob links (a client has that long
    // between a layer and its manifest).
    let b = store.replica(dir.path(), &["--gc-interval", "1ms", "--grace", "0s"]);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // Counted, not timed: the pushes go on until 20 were acknowledged and 3 collector passes
    // ran beside them (a busy machine takes longer; at most 2 minutes, then the counts below
    // say what was reached).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (done, acked, log) = (done.clone(), acked.clone(), b.log.clone());
        tokio::spawn(async move {
            let cap = std::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                let passes = std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .matches("gc: ")
                    .count();
                let n = acked.lock().map(|a| a.len()).unwrap_or(0);
                if (n >= 20 && passes >= 3) || std::time::Instant::now() >= cap {
                    done.store(true, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    let going = move |done: &std::sync::atomic::AtomicBool| {
        !done.load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut workers = Vec::new();
    // Garbage made all the while, so that each pass has a batch to remove one by one: a
    // blob the pass doomed at its start has time to be pushed again before its turn comes.
    for j in 0..2u64 {
        let (addr, done) = (a.addr.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while going(&done) {
                i += 1;
                let junk = common::noise(4 << 10, 2 * (1_000_000 + j * 100_000 + i));
                let (a2, repo) = (addr.clone(), format!("junk/j{j}"));
                let pushed = tokio::spawn(async move { push_blob(&a2, &repo, &junk).await });
                if let Ok(d) = pushed.await {
                    let _ = http()
                        .delete(format!("http://{addr}/v2/junk/j{j}/blobs/{d}"))
                        .send()
                        .await;
                }
            }
        }));
    }
    for w in 0..4u64 {
        let (addr, acked, done) = (a.addr.clone(), acked.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while going(&done) {
                i += 1;
                let tag = format!("w{w}-{i}");
                let layer = common::noise(64 << 10, 2 * (w * 10_000 + i));
                // Staged, then dropped from staging: garbage the collector is after, which
                // the image below pushes again at once (found in the store, or doomed and
                // written anew), racing the collector's removal.
                let (a2, l2) = (addr.clone(), layer.clone());
                let staged =
                    tokio::spawn(async move { push_blob(&a2, &format!("stage/w{w}"), &l2).await });
                // Refused (the collector took it before its link): the client was told.
                let Ok(staged) = staged.await else { continue };
                let r = http()
                    .delete(format!("http://{addr}/v2/stage/w{w}/blobs/{staged}"))
                    .send()
                    .await
                    .expect("DELETE staged");
                assert_eq!(r.status(), StatusCode::ACCEPTED);
                let addr2 = addr.clone();
                let tag2 = tag.clone();
                // A push the collector beat (BLOB_UNKNOWN on its link) fails here: that is
                // the client being told, not data lost. Only acknowledged ones count.
                let pushed =
                    tokio::spawn(
                        async move { push_image(&addr2, "race/app", &tag2, &layer).await },
                    )
                    .await;
                if let Ok(digest) = pushed {
                    acked.lock().expect("acked").push((tag, digest));
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    monitor.await.expect("monitor");
    let passes = b.log_text().matches("gc: ").count();
    assert!(
        passes >= 3,
        "only {passes} collector passes ran beside the pushes"
    );
    let acked = acked.lock().expect("acked").clone();
    assert!(acked.len() >= 20, "only {} pushes", acked.len());
    for (tag, digest) in &acked {
        assert_eq!(
            tag_digest(&a.addr, "race/app", tag).await,
            Ok(digest.clone()),
            "{tag}"
        );
        let m = http()
            .get(format!("http://{}/v2/race/app/manifests/{digest}", a.addr))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("GET manifest");
        let m: Value = serde_json::from_slice(&m.bytes().await.expect("body")).expect("json");
        for d in [&m["config"]["digest"], &m["layers"][0]["digest"]] {
            let d = d.as_str().expect("digest");
            let r = http()
                .get(format!("http://{}/v2/race/app/blobs/{d}", a.addr))
                .send()
                .await
                .expect("GET blob");
            assert_eq!(r.status(), StatusCode::OK, "{tag}: {d} lost");
            assert_eq!(sha256(&r.bytes().await.expect("body")), d);
        }
    }
    eprintln!(
        "{} pushes acknowledged beside {passes} collector passes",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_over_a_new_database_all_start() {
    let Some(cluster) = cluster() else { return };
    let store = cluster.store();
    let location = store.location();
    // Eight opens at once over a new database: each migrates it, or waits for the one that
    // does (two CREATE TABLE IF NOT EXISTS of one table at once can fail).
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let (location, metadata) = (location.clone(), store.metadata.clone());
            tokio::spawn(
                async move { quinistry::store::Store::open_shared(&location, &metadata).await },
            )
        })
        .collect();
    for open in opens {
        if let Err(e) = open.await.expect("task") {
            panic!("a replica could not open the store: {e}");
        }
    }
}

/// A mirror on the shared store: what one replica fetched from the upstream, the other
/// serves (its tag too, past its TTL) once the upstream is gone; the upstream sent each
/// blob once.
#[test]
fn a_mirror_on_the_shared_store_serves_from_every_replica_what_one_fetched() {
    let Some(cluster) = cluster() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("tool");
    std::fs::write(&input, common::noise(3_000_000, 41)).expect("input");
    let up = Serving::start(
        &dir.path().join("upstream"),
        dir.path(),
        &[
            "--no-prepack",
            "--name",
            "lib/tool",
            input.to_str().expect("utf-8"),
        ],
    );
    let store = cluster.store();
    let mirror = format!("hub=http://{}", up.addr);
    let a = store.replica(dir.path(), &["--mirror", &mirror]);
    let b = store.replica(dir.path(), &["--mirror", &mirror]);
    let digest = common::pull_latest(&a.addr, "hub/lib/tool");
    assert_eq!(digest, up.report["manifest"]);
    // B pulls while the upstream is still there: its blobs are already in the shared store.
    assert_eq!(common::pull_latest(&b.addr, "hub/lib/tool"), digest);
    let gets = up
        .log_text()
        .lines()
        .filter(|l| l.contains("method=GET ") && l.contains("path=/v2/lib/tool/blobs/"))
        .count();
    assert_eq!(
        gets,
        2,
        "config and layer fetched once each:\n{}",
        up.log_text()
    );
    drop(up);
    let c = store.replica(dir.path(), &["--mirror", &mirror]);
    assert_eq!(common::pull_latest(&c.addr, "hub/lib/tool"), digest);
    let catalog = common::raw_request(&c.addr, "GET", "/v2/_catalog", &[]);
    assert!(String::from_utf8_lossy(&catalog.body).contains("hub/lib/tool"));
}
