//! A push onto a full disk: a local disk's own concern (a shared store's bytes are in object
//! storage), so this case runs against the directory engine only.

use std::path::PathBuf;

use quinistry::digest::Digest;
use quinistry::registry::{Access, Config, Registry, Server};
use quinistry::store::Store;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::common::{self, JsonValue};

fn pushing() -> Access {
    Access {
        push: true,
        ..Access::default()
    }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Unmounts the small file system a test made, whatever happens.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A push onto a full disk is 507 with an OCI body that says so, stores nothing, leaves no
/// temp file, and the server goes on serving (a push that fits, after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_onto_a_full_disk_is_507_and_stores_nothing() {
    if common::sh("id -u") != "0" {
        common::skip("mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).expect("mkdir");
    common::sh(&format!(
        "mount -t tmpfs -o size=3m tmpfs '{}'",
        disk.display()
    ));
    let _mounted = Mounted(disk.clone());
    let store = Store::open(disk.join("store")).await.expect("store");
    let server = Server::bind_registry(
        "127.0.0.1:0".parse().expect("addr"),
        Registry::new(store).with_access(pushing()),
        Config::default(),
    )
    .await
    .expect("bind");
    let addr = server.local_addr().expect("addr");
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let http = common::http_builder().no_proxy().build().expect("client");
    let url = |p: &str| format!("http://{addr}{p}");

    let big = common::noise(4 << 20, 11);
    let r = http
        .post(url(&format!(
            "/v2/r/blobs/uploads/?digest={}",
            Digest::sha256_of(&big)
        )))
        .body(big.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    let body: Value = r.json_value().await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("disk is full")),
        "{body}"
    );
    // Chunked: the session ends with the same answer.
    let r = http
        .post(url("/v2/r/blobs/uploads/"))
        .send()
        .await
        .expect("send");
    let location = header(&r, "location");
    let r = http
        .patch(url(&location))
        .body(big)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(common::files(&disk.join("store/tmp")).is_empty());
    assert!(common::files(&disk.join("store/blobs/sha256")).is_empty());
    // Nothing stuck: a blob that fits is taken.
    let small = b"fits".to_vec();
    let r = http
        .post(url(&format!(
            "/v2/r/blobs/uploads/?digest={}",
            Digest::sha256_of(&small)
        )))
        .body(small)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
}
