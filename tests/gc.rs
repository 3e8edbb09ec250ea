//! Garbage collection: `quinistry gc` beside a running server reclaims what deletes left
//! behind once past the grace periods and keeps what anything still reaches; retention
//! rules; and the online collector racing pushes without losing one.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Serving, pack_in, quinistry, report, run_ok};

/// Packs `input` into `store` as `tag` with `args`; the report.
fn pack(
    store: &Path,
    tag: &str,
    input: &Path,
    args: &[&str],
) -> std::collections::HashMap<String, String> {
    let out = run_ok(pack_in(store).args(["--tag", tag]).args(args).arg(input));
    report(&out)
}

/// `quinistry gc --store STORE ARGS`: whether it succeeded, and what it printed.
fn gc(store: &Path, args: &[&str]) -> (bool, String) {
    let out = quinistry()
        .args(["gc", "--store"])
        .arg(store)
        .args(args)
        .output()
        .expect("gc");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn blob_count(store: &Path) -> usize {
    common::files(&store.join("blobs/sha256")).len()
}

#[test]
fn gc_reclaims_deleted_images_and_keeps_shared_and_cached_layers_beside_a_running_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = dir.path().join("store");
    let (shared, own, cached, start) = (
        dir.path().join("shared"),
        dir.path().join("own"),
        dir.path().join("cached"),
        dir.path().join("start"),
    );
    // The servers' own image, packed at their start: live throughout.
    std::fs::write(&start, common::noise(100_000, 4)).expect("input");
    std::fs::write(&shared, common::noise(200_000, 1)).expect("input");
    std::fs::write(&own, common::noise(200_000, 2)).expect("input");
    std::fs::write(&cached, common::noise(200_000, 3)).expect("input");
    // Settled inputs (written a minute ago): a pack records only those in the layer cache.
    for f in [&shared, &own, &cached, &start] {
        let minute_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(f)
            .and_then(|f| f.set_modified(minute_ago))
            .expect("mtime");
    }
    // a and b share a layer (same input, other settings); c's layer is its own and has no
    // layer-cache record; d's layer has one.
    let a = pack(
        &store,
        "gc/a:1",
        &shared,
        &["--env", "WHO=a", "--closure", "elf"],
    );
    let b = pack(
        &store,
        "gc/b:1",
        &shared,
        &["--env", "WHO=b", "--closure", "elf"],
    );
    let c = pack(&store, "gc/c:1", &own, &["--no-cache", "--closure", "elf"]);
    let d = pack(&store, "gc/d:1", &cached, &["--closure", "elf"]);
    assert_eq!(a["layer"], b["layer"], "a and b share their layer");

    // Delete a, c and d (both manifest forms each) through the registry, and collect while
    // it runs.
    let server = Serving::start(
        &store,
        dir.path(),
        &["--push", "--no-prepack", &start.to_string_lossy()],
    );
    for (name, r) in [("gc/a", &a), ("gc/c", &c), ("gc/d", &d)] {
        for form in ["manifest", "docker"] {
            let path = format!("/v2/{name}/manifests/{}", r[form]);
            let status = common::raw_request(&server.addr, "DELETE", &path, &[]).status;
            assert_eq!(status, 202, "DELETE {path}");
        }
    }
    // a: config and 2 manifests; c: layer, config, 2 manifests; d: config and 2 manifests
    // (its layer is the layer cache's). The server's own start image is live.
    let unreachable = 3 + 4 + 3;
    let before = blob_count(&store);
    // Within the grace periods nothing goes: the deleted manifests were pushed moments ago,
    // and the blob links they leave (as young) still hold their configs and layers.
    let (ok, out) = gc(&store, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("removed 0 ")
            && out.contains(", 0 blob links")
            && out.contains("kept 6 unreachable but recently touched"),
        "{out}"
    );
    assert_eq!(blob_count(&store), before);
    // A zero grace still keeps what was touched in the last tick (2 s) before the pass.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let zero = ["--grace", "0", "--link-grace", "0"];
    let (ok, out) = gc(&store, &[&zero[..], &["--dry-run"]].concat());
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("would remove {unreachable} ")),
        "{out}"
    );
    assert_eq!(blob_count(&store), before, "a dry run removes nothing");
    let (ok, out) = gc(&store, &zero);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("removed {unreachable} ")), "{out}");
    assert_eq!(blob_count(&store), before - unreachable);
    drop(server);
    let blob = |d: &str| common::blob(&store, d).exists();
    assert!(blob(&a["layer"]), "the layer b shares stays");
    assert!(
        blob(&d["layer"]),
        "a layer the layer cache vouches for stays"
    );
    for gone in [
        &a["config"],
        &a["manifest"],
        &c["layer"],
        &c["config"],
        &d["manifest"],
    ] {
        assert!(!blob(gone), "{gone} stayed");
    }
    for kept in [&b["config"], &b["manifest"], &b["docker"]] {
        assert!(blob(kept), "{kept} of b was removed");
    }
    // The store is whole: every tag, link and manifest agrees, every blob hashes right.
    let out = run_ok(quinistry().args(["verify", "--store"]).arg(&store));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 inconsistencies"), "{text}");
    // A second pass finds nothing more.
    let (ok, out) = gc(&store, &zero);
    assert!(ok && out.contains("removed 0 "), "{out}");

    // Every tag still pulls.
    let server = Serving::start(
        &store,
        dir.path(),
        &["--no-prepack", &start.to_string_lossy()],
    );
    if common::have_tool("skopeo", "skopeo") {
        for tag in ["gc/b:1", "start:latest"] {
            run_ok(Command::new("skopeo").args([
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{}/{tag}", server.addr),
                &format!(
                    "dir:{}",
                    dir.path().join(tag.replace([':', '/'], "-")).display()
                ),
            ]));
        }
    }
    if common::have_docker() {
        let image = format!("{}/gc/b:1", server.addr);
        let _cleanup = common::DockerCleanup::images(&[&image]);
        common::docker(&["pull", &image]);
    }
}
