//! Real clients against a real `quinistry serve` on an ephemeral loopback port: skopeo and
//! docker pull what we serve, and their view of it matches what we packed.

mod common;

use std::path::Path;
use std::process::Command;

use common::{DockerCleanup, Serving, docker, have_docker, have_tool, run_ok, sh, sha256sum};

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
    let layers = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RootFS.Layers}}",
        &format!("{repo}:latest"),
    ]);
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
        let layers = docker(&[
            "image",
            "inspect",
            "--format",
            "{{json .RootFS.Layers}}",
            &by_digest,
        ]);
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
    // A private image store: nothing shared with the machine's podman, removed with `dir`.
    let root = dir.path().join("podman");
    let podman = |args: &[&str]| -> String {
        let out = run_ok(
            Command::new("podman")
                .arg("--root")
                .arg(root.join("root"))
                .arg("--runroot")
                .arg(root.join("run"))
                .args(["--storage-driver", "vfs", "--events-backend", "none"])
                .args(["--cgroup-manager", "cgroupfs"])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
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
