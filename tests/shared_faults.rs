//! Faults under a shared store (see `common::cluster`): a storage node SIGKILLed while
//! replicas push and pull, a replica SIGKILLed in the middle of an upload. Apart from
//! `tests/shared.rs` because they take a node of the cluster away: the two tests here run
//! one at a time, and no other test binary runs beside them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::cluster::*;
use reqwest::StatusCode;
use serde_json::Value;

/// One fault test at a time: they stop parts of the shared cluster.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Pulls `repo:tag` through `addr` and checks every byte: the manifest's digest, then each
/// blob's. The manifest digest, or why not.
async fn pull(addr: &str, repo: &str, tag: &str) -> Result<String, String> {
    let r = http()
        .get(format!("http://{addr}/v2/{repo}/manifests/{tag}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != StatusCode::OK {
        return Err(format!("manifest: {}", r.status()));
    }
    let bytes = r.bytes().await.map_err(|e| e.to_string())?;
    let m: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let layers = m["layers"].as_array().cloned().unwrap_or_default();
    for d in layers.iter().chain([&m["config"]]) {
        let d = d["digest"].as_str().unwrap_or_default();
        let r = http()
            .get(format!("http://{addr}/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != StatusCode::OK {
            return Err(format!("blob {d}: {}", r.status()));
        }
        let body = r.bytes().await.map_err(|e| e.to_string())?;
        if sha256(&body) != d {
            return Err(format!("blob {d} arrived damaged"));
        }
    }
    Ok(sha256(&bytes))
}

/// `push_image` that reports failure instead of panicking.
async fn try_push(addr: &str, repo: &str, tag: &str, layer: &[u8]) -> Result<String, String> {
    let addr = addr.to_owned();
    let (repo, tag, layer) = (repo.to_owned(), tag.to_owned(), layer.to_vec());
    tokio::spawn(async move { push_image(&addr, &repo, &tag, &layer).await })
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_node_killed_under_pushes_and_pulls_loses_no_acknowledged_write() {
    let Some(cluster) = cluster() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.store();
    let a = store.replica(dir.path(), &[]);
    let b = store.replica(dir.path(), &[]);
    let replicas = Arc::new([a.addr.clone(), b.addr.clone()]);
    let acked: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let outage = Arc::new(AtomicBool::new(false));
    let (pushed_in_outage, pulls, failed_pulls) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let mut workers = Vec::new();
    for w in 0..3usize {
        let (replicas, acked, stop, outage, pushed_in_outage) = (
            replicas.clone(),
            acked.clone(),
            stop.clone(),
            outage.clone(),
            pushed_in_outage.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let tag = format!("w{w}-{i}");
                // 6 MiB: a multipart upload, in flight when the node dies.
                let layer = common::noise(6 << 20, (w as u64 * 1000 + i) * 2);
                // A failed push is retried on the next replica, as a client would.
                for attempt in 0..3 {
                    let addr = &replicas[(i as usize + attempt) % replicas.len()];
                    if let Ok(d) = try_push(addr, "fault/load", &tag, &layer).await {
                        if outage.load(Ordering::Relaxed) {
                            pushed_in_outage.fetch_add(1, Ordering::Relaxed);
                        }
                        acked.lock().expect("acked").push((tag.clone(), d));
                        break;
                    }
                }
            }
        }));
    }
    for p in 0..2usize {
        let (replicas, acked, stop, pulls, failed) = (
            replicas.clone(),
            acked.clone(),
            stop.clone(),
            pulls.clone(),
            failed_pulls.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let pick = {
                    let list = acked.lock().expect("acked");
                    (!list.is_empty()).then(|| list[(n * 7 + p) % list.len()].clone())
                };
                let Some((tag, digest)) = pick else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                pulls.fetch_add(1, Ordering::Relaxed);
                // Retried once, on the other replica.
                let first = pull(&replicas[n % 2], "fault/load", &tag).await;
                let result = match first {
                    Ok(d) => Ok(d),
                    Err(_) => pull(&replicas[(n + 1) % 2], "fault/load", &tag).await,
                };
                match result {
                    Ok(d) if d == digest => {}
                    other => failed
                        .lock()
                        .expect("failed")
                        .push((tag, format!("{other:?}"))),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = acked.lock().expect("acked").len();
    // The first endpoint: every replica's first choice.
    let mut node = tokio::task::block_in_place(|| cluster.kill_node(1));
    outage.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(6)).await;
    outage.store(false, Ordering::Relaxed);
    tokio::task::block_in_place(|| node.restart());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let acked = acked.lock().expect("acked").clone();
    let in_outage = pushed_in_outage.load(Ordering::Relaxed);
    eprintln!(
        "{} pushes acknowledged ({before} before the kill, {in_outage} while the node was down), {} pulls",
        acked.len(),
        pulls.load(Ordering::Relaxed)
    );
    assert!(in_outage > 0, "no push succeeded while the node was down");
    let failed = failed_pulls.lock().expect("failed").clone();
    assert!(
        failed.is_empty(),
        "pulls failed even when retried: {failed:?}"
    );
    // Every acknowledged push is whole, through either replica, now the node is back.
    for (tag, digest) in &acked {
        for addr in [&a.addr, &b.addr] {
            assert_eq!(
                pull(addr, "fault/load", tag).await.as_ref(),
                Ok(digest),
                "{tag} through {addr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_upload_leaves_the_session_to_finish_on_the_other() {
    let Some(cluster) = cluster() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.store();
    let mut a = store.replica(dir.path(), &[]);
    let b = store.replica(dir.path(), &[]);
    let blob = common::noise(10 << 20, 20);
    let cut = 6 << 20;
    let r = http()
        .post(format!("http://{}/v2/crash/blob/blobs/uploads/", a.addr))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().expect("ascii").to_owned();
    let r = http()
        .patch(format!("http://{}{location}", a.addr))
        .header("content-range", format!("0-{}", cut - 1))
        .body(blob[..cut].to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // The second chunk starts on A, which dies after its first megabyte.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_of(rx));
    let url = format!("http://{}{location}", a.addr);
    let end = blob.len() - 1;
    let doomed = tokio::spawn(async move {
        http()
            .patch(url)
            .header("content-range", format!("{cut}-{end}"))
            .header("content-length", (blob.len() - cut).to_string())
            .body(body)
            .send()
            .await
    });
    let blob = common::noise(10 << 20, 20);
    tx.send(Ok(blob[cut..cut + (1 << 20)].to_vec()))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.child.kill().expect("SIGKILL replica A");
    a.child.wait().expect("reap");
    let cut_short = doomed.await.expect("task");
    assert!(
        cut_short
            .as_ref()
            .map_or(true, |r| !r.status().is_success()),
        "the request to the killed replica succeeded: {cut_short:?}"
    );
    drop(tx);
    // The client asks the survivor where the upload stands, and goes on from there.
    let r = http()
        .get(format!("http://{}{location}", b.addr))
        .send()
        .await
        .expect("GET status");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], format!("0-{}", cut - 1).as_str());
    let digest = sha256(&blob);
    let r = http()
        .put(format!("http://{}{location}?digest={digest}", b.addr))
        .header("content-range", format!("{cut}-{}", blob.len() - 1))
        .body(blob[cut..].to_vec())
        .send()
        .await
        .expect("PUT");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let got = http()
        .get(format!("http://{}/v2/crash/blob/blobs/{digest}", b.addr))
        .send()
        .await
        .expect("GET");
    assert_eq!(sha256(&got.bytes().await.expect("body")), digest);
    // A monolithic push cut short the same way is simply sent again to the survivor.
    let small = common::noise(3 << 20, 22);
    assert_eq!(
        push_blob(&b.addr, "crash/blob", &small).await,
        sha256(&small)
    );
}

/// The receiver as a stream of body pieces.
fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_database_a_replica_serves_what_it_read_refuses_writes_and_is_unready() {
    let Some(cluster) = cluster() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.store();
    let a = store.replica(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = a.report["metrics"]
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("metrics address")
        .to_owned();
    let ready = |m: String| async move {
        http()
            .get(format!("http://{m}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
    };
    let layer = common::noise(2 << 20, 24);
    let digest = push_image(&a.addr, "pg/app", "v1", &layer).await;
    assert_eq!(pull(&a.addr, "pg/app", "v1").await, Ok(digest.clone()));
    assert_eq!(ready(metrics.clone()).await, StatusCode::OK);

    let mut db = tokio::task::block_in_place(|| cluster.stop_postgres());
    // What the replica read serves on: the tag, the manifest, the blobs.
    assert_eq!(pull(&a.addr, "pg/app", "v1").await, Ok(digest.clone()));
    // A write is refused with the spec's error body, 503.
    let r = http()
        .post(format!(
            "http://{}/v2/pg/app/blobs/uploads/?digest={}",
            a.addr,
            sha256(b"new")
        ))
        .body(b"new".to_vec())
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
    // Something it never read is not made up.
    let r = http()
        .get(format!("http://{}/v2/pg/app/manifests/other", a.addr))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ready(metrics.clone()).await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    tokio::task::block_in_place(|| db.start());
    let mut back = false;
    for _ in 0..100 {
        if ready(metrics.clone()).await == StatusCode::OK {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "/readyz stayed unready after the database came back");
    let again = push_image(&a.addr, "pg/app", "v2", b"after").await;
    assert_eq!(pull(&a.addr, "pg/app", "v2").await, Ok(again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_storage_node_gone_every_push_through_every_replica_succeeds_at_once() {
    let Some(cluster) = cluster() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = cluster.store();
    let a = store.replica(dir.path(), &[]);
    let b = store.replica(dir.path(), &[]);
    // Both replicas have written through the first endpoint, their first choice.
    for (i, addr) in [&a.addr, &b.addr].into_iter().enumerate() {
        let layer = common::noise(6 << 20, 900 + i as u64);
        try_push(addr, "fault/gone", &format!("warm{i}"), &layer)
            .await
            .expect("push before the kill");
    }
    let mut node = tokio::task::block_in_place(|| cluster.kill_node(1));
    // Each push, multipart (6 MiB) or single (a config), is tried once: no client retry.
    let mut acked = Vec::new();
    for i in 0..6u64 {
        for (r, addr) in [&a.addr, &b.addr].into_iter().enumerate() {
            let tag = format!("p{i}-{r}");
            let layer = common::noise(6 << 20, i * 10 + r as u64);
            match try_push(addr, "fault/gone", &tag, &layer).await {
                Ok(digest) => acked.push((tag, digest)),
                Err(e) => panic!("push {tag} through replica {r} failed with node 1 gone: {e}"),
            }
        }
    }
    tokio::task::block_in_place(|| node.restart());
    // Every acknowledged push is whole through both replicas, the node back.
    for (tag, digest) in &acked {
        for addr in [&a.addr, &b.addr] {
            assert_eq!(
                pull(addr, "fault/gone", tag).await.as_ref(),
                Ok(digest),
                "{tag} through {addr}"
            );
        }
    }
}
