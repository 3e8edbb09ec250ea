//! End-to-end tests of `quinistry pack`: the stored layer is checked with the system's own
//! tar, gzip and sha256sum, never with our own code.

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use common::*;
use serde_json::Value;

/// A directory with the cases tar determinism must get right.
fn fixture(root: &Path) {
    let mk = |rel: &str, data: &[u8], mode: u32| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, data).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    mk("bin/tool", &noise(3 << 20, 1), 0o755);
    mk("etc/conf", b"key = value\n", 0o640);
    mk("empty", b"", 0o644);
    let long_dir = format!("deep/{}/{}", "d".repeat(90), "e".repeat(60));
    mk(&format!("{long_dir}/file-with-a-long-path"), b"long", 0o600);
    std::fs::set_permissions(root.join("deep"), std::fs::Permissions::from_mode(0o750))
        .expect("chmod dir");
    symlink("bin/tool", root.join("link")).expect("symlink");
    symlink(
        format!("{long_dir}/file-with-a-long-path"),
        root.join("longlink"),
    )
    .expect("symlink");
}

fn pack_ok(store: &Path, args: &[&str]) -> std::collections::HashMap<String, String> {
    report(&run_ok(pack_in(store).args(args)))
}

/// Compares a tree extracted by tar with the original: bytes, modes, symlink targets.
fn assert_same_tree(orig: &Path, got: &Path) {
    for entry in std::fs::read_dir(orig).expect("read_dir") {
        let entry = entry.expect("entry");
        let (o, g) = (entry.path(), got.join(entry.file_name()));
        let (om, gm) = (
            std::fs::symlink_metadata(&o).expect("orig meta"),
            std::fs::symlink_metadata(&g).unwrap_or_else(|e| panic!("{}: {e}", g.display())),
        );
        assert_eq!(om.file_type(), gm.file_type(), "{}", g.display());
        if om.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(&o).ok(), std::fs::read_link(&g).ok());
            continue;
        }
        assert_eq!(
            om.permissions().mode() & 0o7777,
            gm.permissions().mode() & 0o7777,
            "mode of {}",
            g.display()
        );
        if om.is_dir() {
            assert_same_tree(&o, &g);
        } else {
            assert!(
                std::fs::read(&o).expect("read") == std::fs::read(&g).expect("read"),
                "content of {}",
                g.display()
            );
        }
    }
}

#[test]
fn layer_unpacks_with_system_tar_to_identical_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, store, out) = (
        tmp.path().join("src"),
        tmp.path().join("store"),
        tmp.path().join("out"),
    );
    fixture(&src);
    std::fs::create_dir(&out).expect("mkdir");
    let r = pack_ok(
        &store,
        &[&format!("{}:/app", src.display()), "--tag", "fixture:v1"],
    );
    let layer = blob(&store, &r["layer"]);

    sh(&format!(
        "tar -xzf '{}' -C '{}'",
        layer.display(),
        out.display()
    ));
    assert_same_tree(&src, &out.join("app"));

    // Every stored blob is named by the sha256 of its bytes.
    let blobs = files(&store.join("blobs/sha256"));
    assert_eq!(blobs.len(), 4, "layer, config, two manifests: {blobs:?}");
    for b in &blobs {
        let name = format!(
            "sha256:{}",
            b.file_name().and_then(|n| n.to_str()).expect("name")
        );
        assert_eq!(sha256sum(b), name);
    }
    // diff_id is the sha256 of the uncompressed tar; the manifest names the compressed blob.
    let unzipped = sh(&format!("gunzip -c '{}' | sha256sum", layer.display()));
    assert_eq!(format!("sha256:{}", &unzipped[..64]), r["diff_id"]);
    let config: Value =
        serde_json::from_slice(&std::fs::read(blob(&store, &r["config"])).expect("config"))
            .expect("json");
    assert_eq!(config["rootfs"]["diff_ids"][0], r["diff_id"]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(&store, &r["manifest"])).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["layers"][0]["digest"], r["layer"]);
    assert_eq!(
        manifest["layers"][0]["size"],
        std::fs::metadata(&layer).expect("stat").len()
    );
    assert_eq!(manifest["config"]["digest"], r["config"]);
    // The tag points at the OCI manifest, durably.
    let tag = std::fs::read_to_string(store.join("repositories/fixture/_tags/v1")).expect("tag");
    assert_eq!(tag.trim(), r["manifest"]);
}

#[test]
fn tar_headers_and_gzip_header_are_deterministic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    fixture(&src);
    let r = report(&run_ok(
        quinistry()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["pack", "--store"])
            .arg(&store)
            .arg(format!("{}:/app", src.display())),
    ));
    let layer = blob(&store, &r["layer"]);
    let listing = sh(&format!(
        "TZ=UTC tar --numeric-owner --full-time -tvzf '{}'",
        layer.display()
    ));
    let lines: Vec<&str> = listing.lines().collect();
    assert!(lines.len() >= 10, "{listing}");
    let mut names = Vec::new();
    for line in &lines {
        // perms owner/group size date time name
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[1], "0/0", "uid/gid not 0: {line}");
        assert_eq!((f[3], f[4]), ("2023-11-14", "22:13:20"), "mtime: {line}");
        names.push(f[5].trim_end_matches('/'));
    }
    let mut sorted = names.clone();
    sorted.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
    assert_eq!(names, sorted, "entries not in sorted order");
    assert_eq!(names[0], "app", "parent directory not emitted first");
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("file-with-a-long-path") && n.len() > 150)
    );

    // gzip header: no file name flag, mtime 0, OS byte fixed (255 = unknown).
    let head = std::fs::read(&layer).expect("read");
    assert_eq!(&head[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(head[3], 0, "gzip FLG must carry no name/comment");
    assert_eq!(&head[4..8], &[0, 0, 0, 0], "gzip MTIME must be 0");
    assert_eq!(head[9], 0xff, "gzip OS byte");
    // gzip itself agrees the stream is sound.
    sh(&format!("gzip -t '{}'", layer.display()));
}

#[test]
fn concurrent_processes_in_fresh_stores_get_the_same_digests() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    fixture(&src);
    // Compressible bulk, so the pipeline runs long enough for timing to vary between runs.
    let bulk: Vec<u8> = (0..24_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 28) as u8 ^ (i / 4096) as u8)
        .collect();
    std::fs::write(src.join("bulk"), bulk).expect("write");
    let input = format!("{}:/app", src.display());
    // Four packs at once on two cores: each sees different scheduling.
    let children: Vec<_> = (0..4)
        .map(|i| {
            pack_in(&tmp.path().join(format!("store{i}")))
                .arg(&input)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let reports: Vec<_> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait");
            assert!(out.status.success());
            report(&out)
        })
        .collect();
    let a = &reports[0];
    for other in &reports[1..] {
        for key in ["manifest", "docker", "config", "layer", "diff_id"] {
            assert_eq!(a[key], other[key], "{key} differs between runs");
        }
    }
    // The test can fail: a different mtime really does change every digest.
    let c = report(&run_ok(
        quinistry()
            .env("SOURCE_DATE_EPOCH", "1")
            .args(["pack", "--store"])
            .arg(tmp.path().join("c"))
            .arg(&input),
    ));
    assert_ne!(a["diff_id"], c["diff_id"]);
    assert_ne!(a["manifest"], c["manifest"]);
}

#[test]
fn no_input_packs_this_executable_as_main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, out) = (tmp.path().join("store"), tmp.path().join("out"));
    std::fs::create_dir(&out).expect("mkdir");
    let r = pack_ok(&store, &[]);
    assert_eq!(r["tag"], "quinistry:latest");
    sh(&format!(
        "tar -xzf '{}' -C '{}'",
        blob(&store, &r["layer"]).display(),
        out.display()
    ));
    let main = out.join("main");
    assert!(std::fs::read(&main).expect("main") == std::fs::read(BIN).expect("bin"));
    assert_eq!(
        std::fs::metadata(&main).expect("meta").permissions().mode() & 0o777,
        0o755
    );
    let config: Value =
        serde_json::from_slice(&std::fs::read(blob(&store, &r["config"])).expect("config"))
            .expect("json");
    assert_eq!(config["config"]["Entrypoint"][0], "/main");
}

#[test]
fn entrypoint_cmd_and_env_reach_the_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let tool = tmp.path().join("tool");
    std::fs::write(&tool, b"#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config_of = |args: &[&str]| -> Value {
        let r = pack_ok(&store, args);
        serde_json::from_slice(&std::fs::read(blob(&store, &r["config"])).expect("config"))
            .expect("json")
    };
    let tool_arg = format!("{}:/usr/bin/tool", tool.display());
    // One executable input: it is the entrypoint; PATH has its default.
    let c = config_of(&[&tool_arg]);
    assert_eq!(
        c["config"]["Entrypoint"],
        serde_json::json!(["/usr/bin/tool"])
    );
    assert!(c["config"]["Cmd"].is_null());
    assert_eq!(
        c["config"]["Env"],
        serde_json::json!([quinistry::image::DEFAULT_PATH])
    );
    // Explicit settings win; arguments may start with '-'.
    let c = config_of(&[
        &tool_arg,
        "--entrypoint",
        "/bin/sh",
        "--cmd",
        "-c",
        "--cmd",
        "echo hi",
        "--env",
        "PATH=/usr/bin",
        "--env",
        "MODE=fast",
    ]);
    assert_eq!(c["config"]["Entrypoint"], serde_json::json!(["/bin/sh"]));
    assert_eq!(c["config"]["Cmd"], serde_json::json!(["-c", "echo hi"]));
    assert_eq!(
        c["config"]["Env"],
        serde_json::json!(["PATH=/usr/bin", "MODE=fast"])
    );
}

#[test]
fn oci_layout_is_read_by_skopeo() {
    if !have_tool("skopeo", "skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, store, layout) = (
        tmp.path().join("src"),
        tmp.path().join("store"),
        tmp.path().join("layout"),
    );
    fixture(&src);
    let r = pack_ok(
        &store,
        &[
            &src.join("bin/tool").display().to_string(),
            "--tag",
            "tools/tool:v2",
            "--oci-layout",
            &layout.display().to_string(),
        ],
    );
    let inspect = sh(&format!("skopeo inspect oci:'{}':v2", layout.display()));
    let json: Value = serde_json::from_str(&inspect).expect("skopeo json");
    assert_eq!(json["Digest"], r["manifest"]);
    assert_eq!(json["Layers"][0], r["layer"]);
    // A second image in the same layout keeps the first one reachable.
    pack_ok(
        &store,
        &[
            &src.join("etc/conf").display().to_string(),
            "--tag",
            "conf:v3",
            "--oci-layout",
            &layout.display().to_string(),
        ],
    );
    let again: Value = serde_json::from_str(&sh(&format!(
        "skopeo inspect oci:'{}':v2",
        layout.display()
    )))
    .expect("json");
    assert_eq!(again["Digest"], r["manifest"]);
    // skopeo copies the image out and checks every digest on the way.
    let dir = tmp.path().join("copied");
    sh(&format!(
        "skopeo copy oci:'{}':v2 dir:'{}'",
        layout.display(),
        dir.display()
    ));
    let hex = r["layer"].trim_start_matches("sha256:");
    assert_eq!(sha256sum(&dir.join(hex)), r["layer"]);
}

#[test]
fn a_second_pack_of_unchanged_inputs_comes_from_the_layer_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let input = dir.path().join("tool");
    std::fs::write(&input, noise(1 << 20, 4)).expect("write");
    // Settled: written long enough ago for its stamp to identify it.
    std::fs::File::options()
        .write(true)
        .open(&input)
        .expect("open")
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
        .expect("mtime");
    let packed = |extra: &[&str]| {
        let out = run_ok(pack_in(&store).args(extra).arg(&input));
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("packed"))
            .expect("packed line")
            .to_owned();
        (report(&out)["layer"].clone(), line)
    };
    let (first, line) = packed(&[]);
    assert!(line.contains("MiB/s"), "{line}");
    let (cached, line) = packed(&[]);
    assert!(line.contains("taken from the layer cache"), "{line}");
    let (forced, line) = packed(&["--no-cache"]);
    assert!(line.contains("MiB/s"), "{line}");
    assert_eq!((&cached, &forced), (&first, &first));
    // A changed input is packed again, to a new layer.
    std::fs::write(&input, noise(1 << 20, 8)).expect("rewrite");
    let (changed, line) = packed(&[]);
    assert!(line.contains("MiB/s"), "{line}");
    assert_ne!(changed, first);
}

/// Executables and libraries from /usr, concatenated (sorted) to `len` bytes: compresses like
/// real programs do, which uniform noise does not (deflate takes no matches in noise).
fn binary_like(len: usize) -> Vec<u8> {
    let mut files: Vec<_> = ["/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/lib"]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() > 64 << 10))
        .collect();
    files.sort();
    let mut data = Vec::with_capacity(len);
    for f in files.iter().cycle().take(10_000) {
        if let Ok(bytes) = std::fs::read(f) {
            data.extend_from_slice(&bytes);
        }
        if data.len() >= len {
            break;
        }
    }
    assert!(
        data.len() >= len,
        "not enough files under /usr for the input"
    );
    data.truncate(len);
    data
}

#[test]
fn gzip_bytes_do_not_depend_on_the_number_of_threads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let input = tmp.path().join("prog");
    std::fs::write(&input, binary_like(12 << 20)).expect("input");
    let input = input.to_string_lossy().into_owned();
    // --no-cache: the layer cache keys on the bytes' settings only, so it would answer a
    // second pack without compressing anything.
    let layer_for = |extra: &[&str]| {
        let mut args = vec!["--no-cache", "--tag", "t:t"];
        args.extend_from_slice(extra);
        args.push(&input);
        pack_ok(&store, &args)["layer"].clone()
    };
    // The default block size (12 blocks), and 64 KiB blocks (192 of them, so every block
    // boundary case shows up often).
    for block in [None, Some("64K")] {
        let digests: Vec<String> = ["1", "2", "8"]
            .iter()
            .map(|threads| {
                let mut extra = vec!["--threads", threads];
                if let Some(b) = block {
                    extra.extend(["--block-size", b]);
                }
                layer_for(&extra)
            })
            .collect();
        assert!(
            digests.iter().all(|d| d == &digests[0]),
            "block size {block:?}: layers for 1, 2 and 8 threads differ: {digests:?}"
        );
    }
    let default = layer_for(&[]);
    let small = layer_for(&["--block-size", "64K"]);
    let single = layer_for(&["--block-size", "0"]);
    assert!(
        default != small && default != single,
        "block size left no trace"
    );

    // Each is a gzip stream gzip itself accepts, and gives back the tar stream exactly: the
    // layer packed with --compression none is that tar stream.
    let tar = blob(&store, &layer_for(&["--compression", "none"]));
    for layer in [&default, &small, &single] {
        let path = blob(&store, layer);
        sh(&format!("gzip -t '{}'", path.display()));
        sh(&format!(
            "gzip -dc '{}' | cmp - '{}'",
            path.display(),
            tar.display()
        ));
    }
}

#[test]
fn each_compression_decompresses_to_the_same_tar_stream() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, store) = (tmp.path().join("src"), tmp.path().join("store"));
    fixture(&src);
    let input = format!("{}:/app", src.display());
    let none = pack_ok(
        &store,
        &["--compression", "none", "--tag", "c:none", &input],
    );
    let gzip = pack_ok(&store, &["--tag", "c:gzip", &input]);
    let zstd = pack_ok(
        &store,
        &["--compression", "zstd", "--tag", "c:zstd", &input],
    );
    // One tar stream, three encodings: the same diff_id, three different layers.
    assert_eq!(none["diff_id"], gzip["diff_id"]);
    assert_eq!(none["diff_id"], zstd["diff_id"]);
    assert_eq!(
        none["layer"], none["diff_id"],
        "an uncompressed layer is its tar"
    );
    assert!(gzip["layer"] != zstd["layer"]);
    let tar = std::fs::read(blob(&store, &none["layer"])).expect("tar");
    let zstd_blob = std::fs::read(blob(&store, &zstd["layer"])).expect("zstd");
    let back = unzstd_blocking(&zstd_blob);
    assert!(
        back == tar,
        "zstd layer does not decompress to the tar stream"
    );
    // A zstd image has no Docker schema 2 form, and says so.
    assert_eq!(zstd["docker"], "none:");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(&store, &zstd["manifest"])).expect("m"))
            .expect("json");
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
}
