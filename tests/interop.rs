//! Real clients against a real `quinistry serve` on an ephemeral loopback port: skopeo,
//! docker, podman and containerd pull what we serve, and their view of it matches what we
//! packed.

mod common;

use std::path::Path;
use std::process::Command;

use common::{
    Containerd, DockerCleanup, Serving, docker, have_docker, have_tool, run_ok, sh, sha256sum,
};

#[test]
fn docker_pulls_the_self_image_by_tag_and_by_digest() {
    if !have_docker() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // No input: the server packs its own executable, as `cargo run` does.
    let server = Serving::start(&dir.path().join("store"), dir.path(), &["--level", "1"]);
    let repo = format!("{}/quinistry", server.addr);
    let oci = server.report["manifest"].clone();
    let docker_form = server.report["docker"].clone();
    let mut images = DockerCleanup::images(&[&format!("{repo}:latest")]);

    let pulled = docker(&["pull", &repo]);
    // Docker's Accept list lists both forms (in an order that varies between engine
    // versions, and even between requests); it must get one of ours, and say which.
    let digest = pulled
        .lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .unwrap_or_else(|| panic!("no digest in docker's output:\n{pulled}"))
        .to_owned();
    assert!(
        digest == oci || digest == docker_form,
        "docker pulled {digest}, which we did not pack\n(server log)\n{}",
        server.log_text()
    );
    let layers = docker_layers(&format!("{repo}:latest"));
    assert_eq!(layers, format!("[\"{}\"]", server.report["diff_id"]));
    let entrypoint = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}",
        &format!("{repo}:latest"),
    ]);
    assert_eq!(entrypoint, "[\"/main\"]");

    // By digest, both forms: the engine asks for exactly those bytes and checks them.
    for digest in [&oci, &docker_form] {
        let by_digest = format!("{repo}@{digest}");
        images.image(&by_digest);
        docker(&["pull", &by_digest]);
        let layers = docker_layers(&by_digest);
        assert_eq!(layers, format!("[\"{}\"]", server.report["diff_id"]));
    }
    // The current pull sequence: HEAD by tag for the digest, then GET by that digest.
    let log = server.log_text();
    for line in [
        "method=HEAD path=/v2/quinistry/manifests/latest status=200".to_owned(),
        format!("method=GET path=/v2/quinistry/manifests/{digest} status=200"),
    ] {
        assert!(log.contains(&line), "no `{line}` in the server log:\n{log}");
    }
}

#[test]
fn skopeo_inspects_and_copies_with_matching_digests() {
    if !have_tool("skopeo", "skopeo") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("tool");
    std::fs::write(&input, common::noise(300_000, 11)).expect("input");
    let server = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &[
            "--name",
            "team/tool",
            "--tag",
            "v1",
            &format!("{}:/bin/tool", input.display()),
        ],
    );
    let src = format!("docker://{}/team/tool:v1", server.addr);

    let inspect = sh(&format!("skopeo inspect --tls-verify=false {src}"));
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("inspect json");
    let digest = v["Digest"].as_str().expect("Digest").to_owned();
    assert!(
        [&server.report["manifest"], &server.report["docker"]].contains(&&digest),
        "skopeo saw {digest}, which we did not pack"
    );
    assert_eq!(v["Layers"], serde_json::json!([server.report["layer"]]));
    let raw = sh(&format!(
        "skopeo inspect --raw --tls-verify=false {src} | sha256sum"
    ));
    assert_eq!(
        format!("sha256:{}", raw.split_whitespace().next().expect("hash")),
        digest
    );
    let tags = sh(&format!(
        "skopeo list-tags --tls-verify=false docker://{}/team/tool",
        server.addr
    ));
    let tags: serde_json::Value = serde_json::from_str(&tags).expect("tags json");
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));

    // skopeo copy to dir: checks every digest itself; check again with sha256sum.
    let out = dir.path().join("copy");
    sh(&format!(
        "skopeo copy --src-tls-verify=false {src} dir:{}",
        out.display()
    ));
    assert_eq!(sha256sum(&out.join("manifest.json")), digest);
    for blob in [&server.report["layer"], &server.report["config"]] {
        let file = out.join(blob.trim_start_matches("sha256:"));
        assert_eq!(&sha256sum(&file), blob);
    }
    let layer = out.join(server.report["layer"].trim_start_matches("sha256:"));
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).expect("mkdir");
    sh(&format!(
        "tar -xzf {} -C {}",
        layer.display(),
        unpacked.display()
    ));
    assert_eq!(
        std::fs::read(unpacked.join("bin/tool")).expect("unpacked"),
        std::fs::read(&input).expect("input")
    );

    // By digest, into an OCI layout.
    let layout = dir.path().join("layout");
    sh(&format!(
        "skopeo copy --src-tls-verify=false docker://{}/team/tool@{digest} oci:{}:copied",
        server.addr,
        layout.display()
    ));
    assert!(Path::new(&layout.join("index.json")).exists());
}

/// The diff_ids docker holds for `image` (pulled), as JSON.
fn docker_layers(image: &str) -> String {
    docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RootFS.Layers}}",
        image,
    ])
}

/// Pulls `image` with podman into its store under `root`; the layers' diff_ids, as JSON.
fn podman_pull_layers(root: &Path, image: &str) -> String {
    common::podman_in(root, &["pull", "--tls-verify=false", image]);
    let format = "{{json .RootFS.Layers}}";
    common::podman_in(root, &["image", "inspect", "--format", format, image])
}

#[test]
fn podman_pulls_by_tag_and_by_digest() {
    if !have_tool("podman", "podman") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("tool");
    std::fs::write(&input, common::noise(200_000, 13)).expect("input");
    let server = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &["--name", "podman/tool", &input.to_string_lossy()],
    );
    let root = dir.path().join("podman");
    let podman = |args: &[&str]| common::podman_in(&root, args);
    let repo = format!("{}/podman/tool", server.addr);
    podman(&["pull", "--tls-verify=false", &repo]);
    let inspect = |image: &str| {
        podman(&[
            "image",
            "inspect",
            "--format",
            "{{.Digest}} {{json .RootFS.Layers}}",
            image,
        ])
    };
    let layers = format!("[\"{}\"]", server.report["diff_id"]);
    let seen = inspect(&format!("{repo}:latest"));
    let (digest, seen_layers) = seen.split_once(' ').expect("digest and layers");
    assert!(
        digest == server.report["manifest"] || digest == server.report["docker"],
        "podman pulled {digest}, which we did not pack"
    );
    assert_eq!(seen_layers, layers);

    let by_digest = format!("{repo}@{}", server.report["manifest"]);
    podman(&["pull", "--tls-verify=false", &by_digest]);
    let seen = inspect(&by_digest);
    assert_eq!(seen, format!("{} {layers}", server.report["manifest"]));
}

/// A layer blob decompressed by the tool for its media type: gzip and tar by the system's
/// own, zstd by the zstd crate (the CI machine need not have the zstd program).
fn tar_of(layer: &Path, media_type: &str) -> Vec<u8> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            let out = run_ok(Command::new("gzip").arg("-dc").arg(layer));
            out.stdout
        }
        "application/vnd.oci.image.layer.v1.tar+zstd" => {
            common::unzstd_blocking(&std::fs::read(layer).expect("layer"))
        }
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => std::fs::read(layer).expect("layer"),
        other => panic!("unexpected layer media type {other}"),
    }
}

#[test]
fn every_compression_pulls_with_skopeo_zstd_with_podman_and_the_rest_with_docker() {
    if !have_tool("skopeo", "skopeo") {
        return;
    }
    let docker_too = have_docker();
    let env = Path::new("/usr/bin/env");
    for (method, oci_media_type) in [
        ("gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("none", "application/vnd.oci.image.layer.v1.tar"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        // A dynamic executable: the layer holds it, its loader and its libraries.
        let server = Serving::start(
            &dir.path().join("store"),
            dir.path(),
            &[
                "--compression",
                method,
                "--closure",
                "elf",
                "--name",
                "comp/env",
                "/usr/bin/env",
            ],
        );
        let src = format!("docker://{}/comp/env:latest", server.addr);

        // skopeo asks for the OCI form first, checks every digest, and we check again.
        let out = dir.path().join("copy");
        sh(&format!(
            "skopeo copy --src-tls-verify=false {src} dir:{}",
            out.display()
        ));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
                .expect("json");
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], oci_media_type, "{method}");
        assert_eq!(
            layer["digest"].as_str(),
            Some(server.report["layer"].as_str())
        );
        let blob = out.join(server.report["layer"].trim_start_matches("sha256:"));
        assert_eq!(sha256sum(&blob), server.report["layer"], "{method}");
        let tar = tar_of(&blob, oci_media_type);
        let tar_path = dir.path().join("layer.tar");
        std::fs::write(&tar_path, &tar).expect("write tar");
        assert_eq!(sha256sum(&tar_path), server.report["diff_id"], "{method}");
        let unpacked = dir.path().join("unpacked");
        std::fs::create_dir(&unpacked).expect("mkdir");
        sh(&format!(
            "tar -xf {} -C {}",
            tar_path.display(),
            unpacked.display()
        ));
        assert!(
            std::fs::read(unpacked.join("env")).expect("unpacked")
                == std::fs::read(env).expect("env"),
            "{method}: /env differs from /usr/bin/env"
        );

        // Docker schema 2 has no zstd layer type, and docker 20.10 cannot unpack zstd layers
        // ("invalid tar header"); podman can, and checks the diff_id as it unpacks.
        if method == "zstd" {
            if have_tool("podman", "podman") {
                let root = dir.path().join("podman");
                let image = format!("{}/comp/env:latest", server.addr);
                let layers = podman_pull_layers(&root, &image);
                assert_eq!(layers, format!("[\"{}\"]", server.report["diff_id"]));
            }
            continue;
        }
        if !docker_too {
            continue;
        }
        let image = format!("{}/comp/env:latest", server.addr);
        let _cleanup = DockerCleanup::images(&[&image]);
        docker(&["pull", &image]);
        let layers = docker_layers(&image);
        assert_eq!(
            layers,
            format!("[\"{}\"]", server.report["diff_id"]),
            "{method}"
        );
        let ran = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            &image,
            "QUINISTRY_TEST=ran",
        ]);
        assert!(
            ran.lines().any(|l| l == "QUINISTRY_TEST=ran"),
            "{method}: docker run printed:\n{ran}"
        );
    }
}

/// Writes an OCI image layout at `dir` holding one image of three gzip layers (made by tar and
/// gzip, not by us), tagged `v1`; returns the manifest's bytes.
fn three_layer_layout(dir: &Path) -> Vec<u8> {
    use quinistry::digest::Digest;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let store = |bytes: &[u8]| -> (String, usize) {
        let d = Digest::sha256_of(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).expect("write blob");
        (d.to_string(), bytes.len())
    };
    let work = dir.join("work");
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 1..=3 {
        let d = work.join(format!("l{i}"));
        std::fs::create_dir_all(d.join(format!("dir{i}"))).expect("mkdir");
        std::fs::write(
            d.join(format!("dir{i}/file")),
            common::noise(50_000 * i, i as u64),
        )
        .expect("write");
        let w = work.display();
        sh(&format!(
            "cd '{w}' && tar -C l{i} --sort=name --mtime=@0 --owner=0 --group=0 -cf l{i}.tar . && gzip -n -c l{i}.tar > l{i}.tgz"
        ));
        let tar = std::fs::read(work.join(format!("l{i}.tar"))).expect("tar");
        diff_ids.push(Digest::sha256_of(&tar).to_string());
        let (digest, size) = store(&std::fs::read(work.join(format!("l{i}.tgz"))).expect("tgz"));
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size,
        }));
    }
    std::fs::remove_dir_all(&work).expect("rm work");
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/dir1/file"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("json");
    let (config_digest, config_size) = store(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": layers,
    }))
    .expect("json");
    let (manifest_digest, manifest_size) = store(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    manifest
}

#[test]
fn skopeo_copies_a_multi_layer_image_in_and_back_out_with_identical_digests() {
    if !have_tool("skopeo", "skopeo") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("x");
    std::fs::write(&input, b"x").expect("input");
    let server = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &["--push", "--level", "1", &input.to_string_lossy()],
    );
    let source = dir.path().join("source");
    let manifest = three_layer_layout(&source);
    let remote = format!("docker://{}/copied/three:v1", server.addr);
    run_ok(Command::new("skopeo").args([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", source.display()),
        &remote,
    ]));
    // The registry serves exactly the bytes pushed, under the same digests.
    let raw =
        run_ok(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &remote]));
    assert_eq!(raw.stdout, manifest, "the manifest changed on the way in");
    let back = dir.path().join("back");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &remote,
        &format!("oci:{}:v1", back.display()),
    ]));
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = common::files(&d.join("blobs/sha256"))
            .iter()
            .map(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&back), names(&source), "blob sets differ");
    assert_eq!(names(&source).len(), 5, "3 layers, a config and a manifest");
    for blob in common::files(&back.join("blobs/sha256")) {
        let name = blob
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert_eq!(
            sha256sum(&blob),
            format!("sha256:{name}"),
            "{}",
            blob.display()
        );
    }
    let log = server.log_text();
    assert!(log.contains("manifest pushed"), "{log}");
}

#[test]
fn docker_pushes_a_pulled_image_into_another_repository_and_pulls_it_back() {
    if !have_docker() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // A static program: the image is that one file, and `docker run` proves it arrived whole.
    std::fs::write(
        dir.path().join("app.c"),
        "#include <stdio.h>\nint main(int c, char **v) { printf(\"hello, %s, from a pushed image\\n\", c > 1 ? v[1] : \"world\"); return 0; }\n",
    )
    .expect("write app.c");
    sh(&format!(
        "cd '{}' && cc -static -O1 -o app app.c",
        dir.path().display()
    ));
    let app = dir.path().join("app");
    let server = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &["--push", "--level", "1", &app.to_string_lossy()],
    );
    let (source, copy) = (
        format!("{}/app:latest", server.addr),
        format!("{}/copies/greeter:v2", server.addr),
    );
    let _cleanup = DockerCleanup::images(&[&source, &copy]);
    docker(&["pull", &source]);
    docker(&["tag", &source, &copy]);
    let pushed = docker(&["push", &copy]);
    let digest = pushed
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in docker push's output:\n{pushed}"))
        .to_owned();
    // The layer was already in the registry: docker mounts it instead of uploading it again.
    let log = server.log_text();
    assert!(
        log.contains("blob mounted"),
        "no mount in the server log:\n{log}"
    );
    assert!(log.contains("manifest pushed"), "{log}");
    docker(&["rmi", &source, &copy]);
    let pulled = docker(&["pull", &copy]);
    assert!(pulled.contains(&format!("Digest: {digest}")), "{pulled}");
    let ran = docker(&["run", "--rm", "--network", "none", &copy, "push"]);
    assert_eq!(ran, "hello, push, from a pushed image");
    let tags = common::raw_request(&server.addr, "GET", "/v2/copies/greeter/tags/list", &[]);
    assert_eq!(tags.status, 200);
    assert!(String::from_utf8_lossy(&tags.body).contains("\"v2\""));
}

#[test]
fn htpasswd_made_by_htpasswd_guards_pushes_from_skopeo_and_docker() {
    if !have_tool("htpasswd", "apache2-utils") || !have_tool("skopeo", "skopeo") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users");
    let entry = run_ok(Command::new("htpasswd").args(["-Bbn", "ci", "s3cret"]));
    std::fs::write(&users, &entry.stdout).expect("write htpasswd");
    let input = dir.path().join("x");
    std::fs::write(&input, b"x").expect("input");
    let server = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &[
            "--push",
            "--htpasswd",
            &users.to_string_lossy(),
            "--level",
            "1",
            "--name",
            "src",
            &input.to_string_lossy(),
        ],
    );
    let (src, dst) = (
        format!("docker://{}/src:latest", server.addr),
        format!("docker://{}/dst:v1", server.addr),
    );
    let copy = |creds: &[&str]| {
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .args(creds)
            .args([&src, &dst])
            .output()
            .expect("run skopeo")
    };
    // Reads are open; writes are not, without the right password.
    run_ok(Command::new("skopeo").args(["inspect", "--tls-verify=false", &src]));
    for creds in [&[][..], &["--dest-creds", "ci:wrong"]] {
        let out = copy(creds);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("unauthorized"),
            "{creds:?}: {stderr}"
        );
    }
    let out = copy(&["--dest-creds", "ci:s3cret"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(Command::new("skopeo").args(["inspect", "--tls-verify=false", &dst]));

    if !have_docker() {
        return;
    }
    // docker login checks the password against /v2/; a private config keeps the
    // credentials out of the machine's own.
    let config = dir.path().join("docker-config");
    let login =
        |password: &str| common::docker_login(&config, &server.addr, "ci", password.as_bytes());
    assert!(
        !login("wrong").status.success(),
        "docker login accepted a wrong password"
    );
    let ok = login("s3cret");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let (image, pushed) = (
        format!("{}/src:latest", server.addr),
        format!("{}/docker/pushed:v1", server.addr),
    );
    let _cleanup = DockerCleanup::images(&[&image, &pushed]);
    let config = config.to_string_lossy();
    docker(&["--config", &config, "pull", &image]);
    docker(&["--config", &config, "tag", &image, &pushed]);
    docker(&["--config", &config, "push", &pushed]);
    let tags = common::raw_request(&server.addr, "GET", "/v2/docker/pushed/tags/list", &[]);
    assert!(
        String::from_utf8_lossy(&tags.body).contains("\"v1\""),
        "{tags:?}"
    );
}

/// Parallel gzip makes a layer of one gzip member per 1 MiB block (src/pack/gzip.rs). Every
/// client unpacks such a layer whole and checks it against the config's diff_id: gzip -t,
/// skopeo, podman, docker and containerd.
#[test]
fn layers_of_many_gzip_members_pull_with_every_client() {
    let clients = [
        ("gzip", "gzip"),
        ("skopeo", "skopeo"),
        ("podman", "podman"),
        ("containerd", "containerd"),
        ("ctr", "containerd"),
    ];
    if !clients
        .iter()
        .all(|(tool, package)| have_tool(tool, package))
        || !have_docker()
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Half noise, half text: compressible enough that each member is a real deflate stream.
    let input = dir.path().join("tool");
    let mut bytes = common::noise(2 << 20, 51);
    bytes.extend(std::iter::repeat_n(&b"a member per block; "[..], 100_000).flatten());
    std::fs::write(&input, &bytes).expect("input");
    let server = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &["--name", "members/tool", &input.to_string_lossy()],
    );
    let (layer, diff_id) = (&server.report["layer"], &server.report["diff_id"]);
    let blob = common::blob(&dir.path().join("store"), layer);
    let gz = std::fs::read(&blob).expect("layer blob");
    // More than one member: a reader that stops after the first gets only its block.
    let mut first = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut first)
        .expect("first member");
    assert_eq!(first.len(), 1 << 20, "the first member is one 1 MiB block");
    run_ok(Command::new("gzip").arg("-t").arg(&blob));

    let repo = format!("{}/members/tool", server.addr);
    // skopeo checks each blob's digest as it copies.
    let copy = dir.path().join("copy");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{repo}:latest"))
            .arg(format!("dir:{}", copy.display())),
    );
    assert_eq!(
        sha256sum(&copy.join(layer.trim_start_matches("sha256:"))),
        *layer
    );

    // podman and docker unpack the layer and check it against the diff_id.
    let root = dir.path().join("podman");
    let seen = podman_pull_layers(&root, &repo);
    assert_eq!(seen, format!("[\"{diff_id}\"]"));
    let _cleanup = DockerCleanup::images(&[&repo]);
    docker(&["pull", &repo]);
    let seen = docker_layers(&repo);
    assert_eq!(seen.trim(), format!("[\"{diff_id}\"]"));

    // containerd unpacks it into a snapshot, checking the uncompressed digest on the way.
    let containerd = Containerd::start(dir.path());
    let pulled = containerd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "native",
        &format!("{repo}:latest"),
    ]);
    assert!(
        pulled.status.success(),
        "ctr pull: {}{}",
        String::from_utf8_lossy(&pulled.stdout),
        String::from_utf8_lossy(&pulled.stderr)
    );
    let check = containerd.ctr(&["images", "check", "--snapshotter", "native"]);
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        check
            .lines()
            .any(|l| l.contains("members/tool") && l.contains("complete") && l.contains("true")),
        "ctr images check:\n{check}"
    );
}
