//! `serve --root` and `serve --image`: images packed on their first pull, one pack shared by
//! concurrent pulls, a layer cache that survives restarts, and a root nothing escapes.

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{
    DockerCleanup, Serving, build_greeter, docker, have_docker, have_tool, noise, quinistry,
    raw_request, run_ok, sh,
};
use quinistry::digest::{Digest, Hasher};
use serde_json::Value;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The log filter of tests that count packs: each layer's pack and cache hit are debug
/// lines of `quinistry::pack`, a pull that waits one of `quinistry::ondemand`.
const PACK_LOG: &str = "info,quinistry::ondemand=debug,quinistry::pack=debug";

/// Writes an executable file whose last change is an hour old, as a build output usually is
/// by the time it is pulled (a file changed moments ago is packed but not cached).
fn executable(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, bytes).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    age(path, 3600);
}

/// Sets a file's mtime `secs` seconds into the past.
fn age(path: &Path, secs: u64) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    f.set_modified(SystemTime::now() - Duration::from_secs(secs))
        .expect("set mtime");
}

/// `serve --root ROOT`, packing on pulls only (`--no-prepack`): these tests are about what
/// a pull does; the background packing has tests of its own.
fn serve_root(store: &Path, logs: &Path, root: &Path, log_filter: &str) -> Serving {
    std::fs::create_dir_all(logs).expect("log dir");
    Serving::start_with_log(
        store,
        logs,
        &["--no-prepack", "--root", root.to_str().expect("utf-8 path")],
        log_filter,
    )
}

/// What a pull fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pulled {
    manifest: String,
    layer: String,
}

/// Pulls `name:latest` the way a client does: `HEAD` by tag, then the manifest by digest,
/// the config and the layer. Checks every digest against the bytes received.
async fn pull(http: &reqwest::Client, addr: &str, name: &str) -> Pulled {
    let url = |p: String| format!("http://{addr}/v2/{name}/{p}");
    let head = http
        .head(url("manifests/latest".into()))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("HEAD manifest");
    assert_eq!(head.status(), 200, "HEAD {name}:latest");
    let digest = head.headers()["docker-content-digest"]
        .to_str()
        .expect("digest header")
        .to_owned();
    let manifest = http
        .get(url(format!("manifests/{digest}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest")
        .bytes()
        .await
        .expect("manifest body");
    assert_eq!(Digest::sha256_of(&manifest).to_string(), digest);
    let m: Value = serde_json::from_slice(&manifest).expect("manifest JSON");
    let config = m["config"]["digest"].as_str().expect("config digest");
    let layer = m["layers"][0]["digest"].as_str().expect("layer digest");
    for blob in [config, layer] {
        let mut r = http
            .get(url(format!("blobs/{blob}")))
            .send()
            .await
            .expect("GET blob");
        assert_eq!(r.status(), 200, "GET {blob}");
        let mut h = Hasher::new();
        while let Some(chunk) = r.chunk().await.expect("blob body") {
            h.update(&chunk);
        }
        assert_eq!(h.finish().0.to_string(), blob);
    }
    Pulled {
        manifest: digest,
        layer: layer.to_owned(),
    }
}

/// The bytes of `path` inside a stored gzip layer.
fn file_in_layer(store: &Path, layer: &str, path: &str) -> Vec<u8> {
    let blob = common::blob(store, layer);
    let out = run_ok(
        std::process::Command::new("tar")
            .arg("xzOf")
            .arg(&blob)
            .arg(path),
    );
    out.stdout
}

/// A response body as JSON.
async fn json(r: reqwest::Response) -> Value {
    let body = r.bytes().await.expect("body");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)))
}

async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    json(
        http.get(url)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("GET"),
    )
    .await
}

/// The `code` and `message` of an OCI error response.
async fn oci_error(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v = json(r).await;
    let e = &v["errors"][0];
    (
        status,
        e["code"].as_str().unwrap_or_default().to_owned(),
        e["message"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn catalog(http: &reqwest::Client, addr: &str) -> Vec<String> {
    let v = get_json(http, &format!("http://{addr}/v2/_catalog")).await;
    v["repositories"]
        .as_array()
        .expect("repositories")
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect()
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

fn blobs(store: &Path) -> Vec<PathBuf> {
    common::files(&store.join("blobs/sha256"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_images_are_packed_on_first_pull_and_nothing_else_is_reachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let store = dir.path().join("store");
    executable(&root.join("bin/hello"), b"#!/bin/sh\necho hello\n");
    executable(&root.join("Mixed/Case Name.SH"), b"#!/bin/sh\n");
    executable(&dir.path().join("outside/secret"), b"secret");
    std::fs::write(root.join("data.txt"), b"not executable").expect("write");
    std::fs::create_dir_all(root.join("sub")).expect("mkdir");
    symlink(dir.path().join("outside/secret"), root.join("escape")).expect("symlink");
    symlink(dir.path().join("outside"), root.join("updir")).expect("symlink");
    symlink("../bin/hello", root.join("sub/alias")).expect("symlink");

    let server = serve_root(&store, &dir.path().join("logs"), &root, "info");
    let addr = server.addr.clone();
    let http = common::http();
    // Nothing is packed at start; the problems are reported.
    assert!(
        blobs(&store).is_empty(),
        "packed at start: {:?}",
        blobs(&store)
    );
    let log = server.log_text();
    assert!(log.contains("escape leads outside the root"), "{log}");
    assert_eq!(
        catalog(&http, &addr).await,
        ["bin/hello", "mixed/case-name.sh", "sub/alias"]
    );

    // Outside the root, not executable, not a file, through an escaping symlink: all unknown.
    for name in [
        "escape",
        "updir/secret",
        "data.txt",
        "sub",
        "outside/secret",
        "usr/bin/env",
        "etc/passwd",
    ] {
        for path in [
            format!("/v2/{name}/manifests/latest"),
            format!("/v2/{name}/tags/list"),
            format!("/v2/{name}/blobs/sha256:{}", "0".repeat(64)),
        ] {
            let r = raw_request(&addr, "GET", &path, &[]);
            assert_eq!(
                (r.status, r.error_code()),
                (404, "NAME_UNKNOWN".into()),
                "{path}"
            );
        }
    }
    // A name that is a path cannot even be said.
    for path in [
        "/v2/../outside/secret/manifests/latest",
        "/v2/%2e%2e/outside/secret/manifests/latest",
        "/v2//etc/passwd/manifests/latest",
    ] {
        let r = raw_request(&addr, "GET", path, &[]);
        assert_eq!(
            (r.status, r.error_code()),
            (400, "NAME_INVALID".into()),
            "{path}"
        );
    }

    // The served images pull, and hold exactly their file, as the entrypoint.
    let hello = pull(&http, &addr, "bin/hello").await;
    assert_eq!(
        file_in_layer(&store, &hello.layer, "usr/local/bin/hello"),
        b"#!/bin/sh\necho hello\n"
    );
    let alias = pull(&http, &addr, "sub/alias").await;
    // A symlink inside the root serves its target's bytes, under its own name.
    assert_eq!(
        file_in_layer(&store, &alias.layer, "usr/local/bin/alias"),
        b"#!/bin/sh\necho hello\n"
    );
    let manifest = get_json(
        &http,
        &format!("http://{addr}/v2/bin/hello/manifests/latest"),
    )
    .await;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let config: Value = serde_json::from_slice(
        &std::fs::read(common::blob(&store, config_digest)).expect("config"),
    )
    .expect("config JSON");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/hello"])
    );
    let tags = get_json(&http, &format!("http://{addr}/v2/bin/hello/tags/list")).await;
    assert_eq!(tags["tags"], serde_json::json!(["latest"]));
    pull(&http, &addr, "mixed/case-name.sh").await;

    // Added later: pulled at once, and listed (within a rescan period).
    executable(&root.join("new/tool"), b"#!/bin/sh\necho new\n");
    executable(&root.join("Later/UPPER"), b"#!/bin/sh\necho later\n");
    pull(&http, &addr, "new/tool").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !catalog(&http, &addr)
        .await
        .contains(&"later/upper".to_owned())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "later/upper never listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pull(&http, &addr, "later/upper").await;

    // Changed: a new image on the next request, with the new bytes.
    executable(&root.join("bin/hello"), b"#!/bin/sh\necho hello again\n");
    let changed = pull(&http, &addr, "bin/hello").await;
    assert_ne!(changed.manifest, hello.manifest);
    assert_eq!(
        file_in_layer(&store, &changed.layer, "usr/local/bin/hello"),
        b"#!/bin/sh\necho hello again\n"
    );
    // No longer executable: no longer served.
    std::fs::set_permissions(
        root.join("bin/hello"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let r = raw_request(&addr, "HEAD", "/v2/bin/hello/manifests/latest", &[]);
    assert_eq!(r.status, 404);
    // On-demand images write no tags: what they serve is decided by the files. Their blobs
    // are linked into their repository, which is what lets it serve them.
    assert!(!store.join("repositories/bin/hello/_tags").exists());
    assert!(store.join("repositories/bin/hello/_manifests").is_dir());
    // And the server still serves.
    assert_eq!(raw_request(&addr, "GET", "/v2/", &[]).status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_first_pulls_share_one_pack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let store = dir.path().join("store");
    // Incompressible, so the pack takes long enough for the pulls to pile up behind it.
    executable(&root.join("big"), &noise(24 << 20, 5));
    let server = serve_root(&store, &dir.path().join("logs"), &root, PACK_LOG);
    let http = common::http();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let pulls: Vec<_> = (0..20)
        .map(|_| {
            let (http, addr, barrier) = (http.clone(), server.addr.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                pull(&http, &addr, "big").await
            })
        })
        .collect();
    let mut results = Vec::new();
    for p in pulls {
        results.push(p.await.expect("pull task"));
    }
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
    let log = server.log_text();
    let packs = count(&log, "packing layer:");
    let waited = count(&log, "waited for a pack in flight");
    eprintln!("20 pulls: {packs} pack(s), {waited} request(s) waited for it");
    assert_eq!(packs, 1, "{log}");
    assert!(
        waited >= 1,
        "no request waited for the pack in flight:\n{log}"
    );
    assert_eq!(
        count(&log, "method=HEAD path=/v2/big/manifests/latest status=200"),
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn packs_beyond_max_packs_wait_for_a_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        executable(&root.join(name), &noise(8 << 20, 11 + 2 * i as u64));
    }
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let server = Serving::start_with_log(
        &dir.path().join("store"),
        &logs,
        &[
            "--no-prepack",
            "--root",
            root.to_str().expect("utf-8"),
            "--max-packs",
            "1",
        ],
        PACK_LOG,
    );
    let http = common::http();
    let pulls: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let (http, addr) = (http.clone(), server.addr.clone());
            tokio::spawn(async move { pull(&http, &addr, name).await })
        })
        .collect();
    for p in pulls {
        p.await.expect("pull");
    }
    let log = server.log_text();
    assert!(count(&log, "waiting for a packing slot") >= 1, "{log}");
    // One slot: each pack ends before the next one starts.
    let events: Vec<&str> = log
        .lines()
        .filter_map(|l| {
            if l.contains("packing layer:") {
                Some("start")
            } else if l.contains("packed layer in") {
                Some("end")
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        events,
        ["start", "end", "start", "end", "start", "end"],
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pack_gives_every_waiter_the_same_error() {
    if !have_tool("cc", "gcc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let build = dir.path().join("build");
    let app = build_greeter(&build);
    // The program without the library it needs.
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::copy(&app, root.join("app")).expect("copy");
    age(&root.join("app"), 3600);
    let server = serve_root(
        &dir.path().join("store"),
        &dir.path().join("logs"),
        &root,
        "info",
    );
    let http = common::http();
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let url = format!("http://{}/v2/app/manifests/latest", server.addr);
            let http = http.clone();
            tokio::spawn(async move { oci_error(http.get(url).send().await.expect("GET")).await })
        })
        .collect();
    let mut errors = Vec::new();
    for r in requests {
        errors.push(r.await.expect("task"));
    }
    let (status, code, message) = &errors[0];
    assert_eq!((*status, code.as_str()), (404, "MANIFEST_UNKNOWN"));
    assert!(
        message.starts_with("cannot pack app:latest: cannot find library libgreet.so.1"),
        "{message}"
    );
    assert!(errors.iter().all(|e| e == &errors[0]), "{errors:?}");
    // The operator gets it as one line per pack, not one per request.
    let log = server.log_text();
    let lines = count(&log, "cannot pack app:latest");
    assert!((1..20).contains(&lines), "{lines} error lines:\n{log}");
    // Give it the library: the next attempt (after the failure's recheck period) succeeds.
    sh(&format!(
        "cp -a '{}/lib' '{}/lib'",
        build.display(),
        root.display()
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = raw_request(&server.addr, "HEAD", "/v2/app/manifests/latest", &[]);
        if r.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still failing: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_cache_survives_restarts_and_never_serves_a_damaged_blob() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let store = dir.path().join("store");
    let bytes = noise(4 << 20, 9);
    executable(&root.join("tool"), &bytes);
    let http = common::http();
    let run = |n: usize| {
        let server = serve_root(
            &store,
            &dir.path().join(format!("logs{n}")),
            &root,
            PACK_LOG,
        );
        let http = http.clone();
        async move {
            let pulled = pull(&http, &server.addr, "tool").await;
            (pulled, server.log_text())
        }
    };

    let (first, log) = run(1).await;
    assert_eq!(count(&log, "packing layer:"), 1, "{log}");
    // Restarted: served from the cache, nothing read or compressed.
    let (again, log) = run(2).await;
    assert_eq!(again, first);
    assert_eq!(count(&log, "layer cache hit"), 1, "{log}");
    assert_eq!(count(&log, "packing layer:"), 0, "{log}");

    // The blob damaged in place (same size): repacked, and the blob is whole again.
    let blob = common::blob(&store, &first.layer);
    let len = std::fs::metadata(&blob).expect("blob").len() as usize;
    std::fs::write(&blob, noise(len, 1)).expect("damage the blob");
    let (repaired, log) = run(3).await;
    assert_eq!(repaired, first);
    assert!(log.contains("cached layer not used"), "{log}");
    assert_eq!(count(&log, "packing layer:"), 1, "{log}");
    assert_eq!(common::sha256sum(&blob), first.layer);

    // The blob deleted: repacked too.
    std::fs::remove_file(&blob).expect("rm blob");
    let (restored, log) = run(4).await;
    assert_eq!(restored, first);
    assert!(log.contains("its blob is missing from the store"), "{log}");
    assert_eq!(common::sha256sum(&blob), first.layer);

    // A changed file is a new image, with its bytes.
    executable(&root.join("tool"), b"#!/bin/sh\necho v2\n");
    let (changed, _) = run(5).await;
    assert_ne!(changed.manifest, first.manifest);
    assert_eq!(
        file_in_layer(&store, &changed.layer, "usr/local/bin/tool"),
        b"#!/bin/sh\necho v2\n"
    );
    run_ok(quinistry().arg("verify").arg("--store").arg(&store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_images_are_packed_on_first_pull() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.bin");
    executable(&a, b"#!/bin/sh\necho a\n");
    let d = dir.path().join("d");
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("x"), b"x").expect("write");
    let later = dir.path().join("later");
    let pair = format!("tools/pair:v1={},{}:/opt/d", a.display(), d.display());
    let missing = format!("later={}", later.display());
    let store = dir.path().join("store");
    let args = ["--no-prepack", "--image", &pair, "--image", &missing];
    let server = Serving::start(&store, dir.path(), &args);
    let http = common::http();
    assert!(blobs(&store).is_empty(), "packed at start");
    assert_eq!(catalog(&http, &server.addr).await, ["later", "tools/pair"]);

    let url = format!("http://{}/v2/tools/pair/manifests/v1", server.addr);
    let m = get_json(&http, &url).await;
    let layer = m["layers"][0]["digest"].as_str().expect("layer");
    assert_eq!(
        file_in_layer(&store, layer, "a.bin"),
        b"#!/bin/sh\necho a\n"
    );
    assert_eq!(file_in_layer(&store, layer, "opt/d/x"), b"x");
    let r = raw_request(&server.addr, "GET", "/v2/tools/pair/manifests/latest", &[]);
    assert_eq!((r.status, r.error_code()), (404, "MANIFEST_UNKNOWN".into()));

    // An input that does not exist yet: a clear error, then the image once it does.
    let url = format!("http://{}/v2/later/manifests/latest", server.addr);
    let (status, code, message) = oci_error(http.get(&url).send().await.expect("GET")).await;
    assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"));
    assert!(
        message.starts_with("cannot pack later:latest: cannot read input")
            && message.contains("later"),
        "{message}"
    );
    executable(&later, b"#!/bin/sh\necho later\n");
    pull(&http, &server.addr, "later").await;
    // Its run settings are decided when it is packed: now it is an executable, the entrypoint.
    let url = format!("http://{}/v2/later/manifests/latest", server.addr);
    let m = get_json(&http, &url).await;
    let config = m["config"]["digest"].as_str().expect("config digest");
    let config: Value =
        serde_json::from_slice(&std::fs::read(common::blob(&store, config)).expect("config"))
            .expect("config JSON");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/later"])
    );
}

#[test]
fn skopeo_copies_a_large_root_image() {
    if !have_tool("skopeo", "skopeo") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let bytes = noise(64 << 20, 3);
    executable(&root.join("large"), &bytes);
    let server = serve_root(
        &dir.path().join("store"),
        &dir.path().join("logs"),
        &root,
        "info",
    );
    let out = dir.path().join("copy");
    run_ok(std::process::Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/large:latest", server.addr),
        &format!("dir:{}", out.display()),
    ]));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
            .expect("JSON");
    let layer = manifest["layers"][0]["digest"].as_str().expect("layer");
    let hex = layer.strip_prefix("sha256:").expect("sha256");
    let copied = out.join(hex);
    assert_eq!(common::sha256sum(&copied), layer);
    let unpacked = run_ok(
        std::process::Command::new("tar")
            .arg("xzOf")
            .arg(&copied)
            .arg("usr/local/bin/large"),
    );
    assert!(
        unpacked.stdout == bytes,
        "the copied layer does not hold the file"
    );
}

#[test]
fn docker_pulls_and_runs_root_images() {
    if !have_docker() || !have_tool("cc", "gcc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    // A dynamic program with its own library next to it, a static one, and a system tool.
    build_greeter(&root.join("greet"));
    std::fs::write(
        dir.path().join("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"hello from a static binary\"); return 0; }\n",
    )
    .expect("write hello.c");
    sh(&format!(
        "cc -static -o '{}/hello' '{}/hello.c'",
        root.display(),
        dir.path().display()
    ));
    std::fs::copy("/usr/bin/env", root.join("env")).expect("copy env");
    let server = serve_root(
        &dir.path().join("store"),
        &dir.path().join("logs"),
        &root,
        "info",
    );
    let image = |name: &str| format!("{}/{name}:latest", server.addr);
    let mut cleanup = DockerCleanup::default();
    let cases = [
        ("greet/app", vec!["quine"], "hello, quine, from libgreet"),
        ("hello", vec![], "hello from a static binary"),
        ("env", vec!["QUINISTRY_TEST=ran"], "QUINISTRY_TEST=ran"),
    ];
    for (name, args, expected) in cases {
        let img = image(name);
        cleanup.image(&img);
        docker(&["pull", &img]);
        let mut run = vec!["run", "--rm", "--network", "none", img.as_str()];
        run.extend(args.iter().copied());
        let out = docker(&run);
        assert!(out.lines().any(|l| l == expected), "{name}: {out}");
    }
}

#[test]
fn tags_of_on_demand_images_cannot_be_pushed_or_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    executable(&root.join("tool"), b"#!/bin/sh\necho tool\n");
    let server = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &["--push", "--root", &root.to_string_lossy()],
    );
    let manifest = raw_request(&server.addr, "GET", "/v2/tool/manifests/latest", &[]);
    assert_eq!(manifest.status, 200);
    let len = format!("Content-Length: {}", manifest.body.len());
    let oci = format!("Content-Type: {}", quinistry::image::OCI_MANIFEST);
    for (method, path, headers) in [
        (
            "PUT",
            "/v2/tool/manifests/latest",
            vec![len.as_str(), oci.as_str()],
        ),
        (
            "PUT",
            "/v2/tool/manifests/v2",
            vec![len.as_str(), oci.as_str()],
        ),
        (
            "DELETE",
            "/v2/tool/manifests/latest",
            vec!["Content-Length: 0"],
        ),
    ] {
        let r = common::raw_request_with_body(&server.addr, method, path, &headers, &manifest.body);
        assert_eq!(r.status, 403, "{method} {path}");
        assert_eq!(r.error_code(), "DENIED", "{method} {path}");
    }
    // Still served as the files say.
    let again = raw_request(&server.addr, "GET", "/v2/tool/manifests/latest", &[]);
    assert_eq!(again.body, manifest.body);
}

/// `serve --image NAME=FILE...` (configured images, which are packed in the background by
/// default) at level 9, which packs incompressible bytes slowly enough for a test to act
/// while the pack runs.
fn serve_prepacking(dir: &Path, images: &[(&str, &Path)]) -> Serving {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let mut args = vec!["--level".to_owned(), "9".to_owned()];
    for (name, file) in images {
        args.push("--image".to_owned());
        args.push(format!("{name}={}", file.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Serving::start_with_log(&dir.join("store"), &logs, &args, PACK_LOG)
}

/// Waits until the server's log has `needle` (at most 60 s); the log then.
fn wait_for_log(server: &Serving, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let log = server.log_text();
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{needle}` in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_packed_in_the_background_and_a_pull_joins_the_pack_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    executable(&root.join("big"), &noise(48 << 20, 31));
    // `later` does not exist yet.
    let server = serve_prepacking(
        dir.path(),
        &[("big", &root.join("big")), ("later", &root.join("later"))],
    );
    // Nobody asked; the pack starts anyway. A pull now joins it rather than packing again.
    wait_for_log(&server, "packing layer:");
    let http = common::http();
    let first = pull(&http, &server.addr, "big").await;
    let log = server.log_text();
    assert_eq!(count(&log, "packing layer:"), 1, "{log}");
    assert!(count(&log, "waited for a pack in flight") >= 1, "{log}");

    // A file added later is packed without a pull too (inotify), and the pull that follows
    // finds it ready: no pack of its own.
    executable(&root.join("later"), &noise(1 << 20, 32));
    wait_for_log(
        &server,
        "image=later:latest}: quinistry::pack: packed layer in",
    );
    let packs = count(&server.log_text(), "packing layer:");
    pull(&http, &server.addr, "later").await;
    assert_eq!(pull(&http, &server.addr, "big").await, first);
    let log = server.log_text();
    assert_eq!(count(&log, "packing layer:"), packs, "{log}");
}

/// Of a root, only what clients pulled is packed ahead (after a restart too, and again when
/// its file changes); configured images always are; the rest waits for its first pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_images_are_prepacked_once_pulled_and_configured_ones_always() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    for name in ["pulled", "never"] {
        executable(
            &root.join(name),
            format!("#!/bin/sh\necho {name}\n").as_bytes(),
        );
        age(&root.join(name), 3600);
    }
    let configured = dir.path().join("configured");
    executable(&configured, b"#!/bin/sh\necho configured\n");
    age(&configured, 3600);
    let store = dir.path().join("store");
    let spec = format!("conf={}", configured.display());
    let start = |n: usize| {
        let logs = dir.path().join(format!("logs{n}"));
        std::fs::create_dir_all(&logs).expect("log dir");
        Serving::start_with_log(
            &store,
            &logs,
            &["--root", root.to_str().expect("utf-8"), "--image", &spec],
            PACK_LOG,
        )
    };
    let server = start(1);
    let log = wait_for_log(&server, "prepack pass done");
    assert_eq!(count(&log, "packing layer:"), 1, "{log}");
    assert!(log.contains("image=conf:latest}"), "{log}");
    assert!(!log.contains("image=pulled:latest}"), "{log}");
    let http = common::http();
    let first = pull(&http, &server.addr, "pulled").await;
    drop(server);

    // Restarted: the pulled image is made ready at start (from the layer cache), the one
    // nobody pulled is not looked at.
    let server = start(2);
    let log = wait_for_log(&server, "prepack pass done");
    assert!(log.contains("image=pulled:latest}"), "{log}");
    assert!(!log.contains("image=never:latest}"), "{log}");
    assert_eq!(count(&log, "packing layer:"), 0, "{log}");
    // Its file changed: packed again without a pull.
    executable(&root.join("pulled"), b"#!/bin/sh\necho changed\n");
    age(&root.join("pulled"), 3600);
    wait_for_log(
        &server,
        "image=pulled:latest}: quinistry::pack: packed layer in",
    );
    let log = server.log_text();
    assert!(!log.contains("image=never:latest}"), "{log}");
    assert_ne!(pull(&http, &server.addr, "pulled").await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_during_a_background_pack_never_yields_a_wrong_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let tool = root.join("tool");
    executable(&tool, &noise(48 << 20, 41));
    let server = serve_prepacking(dir.path(), &[("tool", &tool)]);
    wait_for_log(&server, "packing layer:");
    // Rewritten in place while the background pack reads it.
    let new = noise(48 << 20, 42);
    executable(&tool, &new);
    // The pack fails, whichever it sees first: the file cut short (the rewrite truncates
    // it), or its stamp changed once read.
    let log = wait_for_log(&server, "cannot pack tool:latest");
    let failure = log
        .lines()
        .find(|l| l.contains("cannot pack tool:latest"))
        .unwrap_or_default();
    assert!(
        failure.contains("file changed while it was being packed")
            || failure.contains("file shrank while packing"),
        "{log}"
    );
    assert_eq!(count(&log, "packed layer in"), 0, "{log}");
    // The change brings another pass, which packs what the file holds now.
    wait_for_log(&server, "packed layer in");
    let http = common::http();
    let pulled = pull(&http, &server.addr, "tool").await;
    let store = dir.path().join("store");
    assert!(
        file_in_layer(&store, &pulled.layer, "tool") == new,
        "the layer does not hold the file as it is"
    );
    drop(server);
    // And nothing in the store is named wrongly or left half-made.
    run_ok(quinistry().arg("verify").arg("--store").arg(&store));
}
