//! Running it in production: TLS (with real clients trusting a test CA, certificates swapped
//! on disk, client certificates), metrics, health checks, the config file and its
//! precedence, JSON access logs, and per-repository access rules. Every server is the real
//! binary on an ephemeral loopback port with its own temp store.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::pki::Pki;
use common::{Serving, have_docker, have_tool, metrics_addr, quinistry, run_ok, scrape, value};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// Writes `text` to `path` the way certificate tools do: a new file renamed over the old.
fn replace(path: &Path, from: &Path) {
    let tmp = path.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, path).expect("rename");
}

/// What one TLS connection saw: the server's certificate, and the answer's status line (or
/// the error that ended it).
struct Seen {
    peer: Option<Vec<u8>>,
    status: Result<String, String>,
}

/// `GET path` over a new TLS connection to `addr`, trusting `ca`, with a client certificate
/// if given.
async fn tls_get(addr: &str, ca: &Path, client: Option<(&Path, &Path)>, path: &str) -> Seen {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca pem")).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key = PrivateKeyDer::from_pem_file(key).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => {
            return Seen {
                peer: None,
                status: Err(e.to_string()),
            };
        }
    };
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let status = async {
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }
    .await;
    Seen { peer, status }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// A small image to serve: one file of noise, packed at start as `name`.
fn small_input(dir: &Path) -> String {
    let input = dir.join("tool");
    std::fs::write(&input, common::noise(100_000, 7)).expect("input");
    input.to_string_lossy().into_owned()
}

/// `quinistry serve` over TLS with this certificate and key, of a small image, and `args`.
fn serve_tls(dir: &Path, (cert, key): (&Path, &Path), args: &[&str]) -> Serving {
    let input = small_input(dir);
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let mut all = vec!["--tls-cert", &cert, "--tls-key", &key];
    all.extend_from_slice(args);
    all.push(&input);
    Serving::start(&dir.join("store"), dir, &all)
}

/// `/etc/docker/certs.d/ADDR/`, which dockerd reads per registry, removed on drop.
struct DockerCerts(PathBuf);

impl DockerCerts {
    fn trust(addr: &str, ca: &Path) -> DockerCerts {
        let dir = Path::new("/etc/docker/certs.d").join(addr);
        std::fs::create_dir_all(&dir).expect("certs.d (docker tests run as root)");
        std::fs::copy(ca, dir.join("ca.crt")).expect("ca.crt");
        DockerCerts(dir)
    }
}

impl Drop for DockerCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn docker_skopeo_and_podman_pull_and_push_over_tls_trusting_a_test_ca() {
    let skopeo = have_tool("skopeo", "skopeo");
    let podman = have_tool("podman", "podman");
    let docker = have_docker();
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(&dir.path().join("pki"));
    let (cert, key, _) = pki.issue("server", false);
    let server = serve_tls(dir.path(), (&cert, &key), &["--push", "--name", "tls/tool"]);
    let addr = &server.addr;
    // Only TLS is spoken: a plain HTTP request gets no HTTP answer.
    let plain = common::try_raw_request(addr, "GET", "/v2/", &[], &[]);
    assert!(
        plain.as_ref().map_or(true, |r| r.status == 0),
        "plain HTTP was answered: {:?}",
        plain.map(|r| r.status)
    );
    // A client that trusts only the test CA can talk to it.
    let seen = runtime().block_on(tls_get(addr, &pki.ca_file(), None, "/v2/"));
    assert_eq!(seen.status.as_deref(), Ok("HTTP/1.1 200 OK"));

    if have_tool("curl", "curl") {
        // ALPN offers HTTP/2 and HTTP/1.1; curl takes 2 when it may, 1.1 when told.
        let version = |flag: &str| {
            let out = run_ok(Command::new("curl").args([
                "-sS",
                flag,
                "--cacert",
                &pki.ca_file().to_string_lossy(),
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{response_code}",
                &format!("https://{addr}/v2/"),
            ]));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(version("--http2"), "2 200");
        assert_eq!(version("--http1.1"), "1.1 200");
    }
    let certs = dir.path().join("client-certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    std::fs::copy(pki.ca_file(), certs.join("ca.crt")).expect("ca");
    let certs = certs.to_string_lossy().into_owned();
    if skopeo {
        // In with the test CA trusted on both sides, then read back; verification is on.
        run_ok(Command::new("skopeo").args([
            "copy",
            "--src-cert-dir",
            &certs,
            "--dest-cert-dir",
            &certs,
            &format!("docker://{addr}/tls/tool:latest"),
            &format!("docker://{addr}/skopeo/tool:copied"),
        ]));
        let out = run_ok(Command::new("skopeo").args([
            "inspect",
            "--cert-dir",
            &certs,
            "--format",
            "{{.Digest}}",
            &format!("docker://{addr}/skopeo/tool:copied"),
        ]));
        let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            digest == server.report["manifest"] || digest == server.report["docker"],
            "{digest}"
        );
        // Without the CA the same client refuses the server.
        let refused = Command::new("skopeo")
            .args(["inspect", &format!("docker://{addr}/tls/tool:latest")])
            .output()
            .expect("skopeo");
        assert!(!refused.status.success(), "skopeo trusted an unknown CA");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("certificate"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }
    if podman {
        let root = dir.path().join("podman");
        let podman = |args: &[&str]| common::podman_in(&root, args);
        let image = format!("{addr}/tls/tool:latest");
        podman(&["pull", "--cert-dir", &certs, &image]);
        let pushed = format!("{addr}/podman/tool:pushed");
        podman(&["tag", &image, &pushed]);
        podman(&["push", "--cert-dir", &certs, &pushed]);
        podman(&["rmi", &pushed]);
        podman(&["pull", "--cert-dir", &certs, &pushed]);
    }
    if docker {
        let _trust = DockerCerts::trust(addr, &pki.ca_file());
        let image = format!("{addr}/tls/tool:latest");
        let pushed = format!("{addr}/docker/tool:pushed");
        let _cleanup = common::DockerCleanup::images(&[&image, &pushed]);
        common::docker(&["pull", &image]);
        common::docker(&["tag", &image, &pushed]);
        common::docker(&["push", &pushed]);
        common::docker(&["rmi", &pushed]);
        common::docker(&["pull", &pushed]);
    }
    let log = server.log_text();
    for (client, on, repo) in [
        ("skopeo", skopeo, "skopeo/tool"),
        ("podman", podman, "podman/tool"),
        ("docker", docker, "docker/tool"),
    ] {
        if on {
            assert!(
                log.contains(&format!("/v2/{repo}/manifests/")),
                "{client} pushed nothing:\n{log}"
            );
        }
    }
}

#[test]
fn a_certificate_swapped_on_disk_is_served_to_the_next_connection() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(&dir.path().join("pki"));
    let (cert, key, first) = pki.issue("first", false);
    let (cert2, key2, second) = pki.issue("second", false);
    let server = serve_tls(dir.path(), (&cert, &key), &[]);
    let rt = runtime();
    let seen = rt.block_on(tls_get(&server.addr, &pki.ca_file(), None, "/v2/"));
    assert_eq!(
        seen.peer.as_deref(),
        Some(&first[..]),
        "the first certificate"
    );
    // Key first, then the certificate: between the two the pair does not match, and the
    // server keeps the old one rather than fail.
    replace(&key, &key2);
    replace(&cert, &cert2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let seen = rt.block_on(tls_get(&server.addr, &pki.ca_file(), None, "/v2/"));
        assert_eq!(
            seen.status.as_deref(),
            Ok("HTTP/1.1 200 OK"),
            "served throughout"
        );
        if seen.peer.as_deref() == Some(&second[..]) {
            break;
        }
        assert_eq!(
            seen.peer.as_deref(),
            Some(&first[..]),
            "an unknown certificate"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not served within 15 s:\n{}",
            server.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(server.child.id() > 0);
    assert!(
        server.log_text().contains("TLS certificate reloaded"),
        "{}",
        server.log_text()
    );
}

#[test]
fn with_a_client_ca_a_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(&dir.path().join("pki"));
    let (cert, key, _) = pki.issue("server", false);
    let (client_cert, client_key, _) = pki.issue("client", true);
    let ca = pki.ca_file().to_string_lossy().into_owned();
    let server = serve_tls(
        dir.path(),
        (&cert, &key),
        &["--tls-client-ca", &ca, "--name", "mtls/tool"],
    );
    let rt = runtime();
    let without = rt.block_on(tls_get(&server.addr, &pki.ca_file(), None, "/v2/"));
    assert!(
        without.status.is_err(),
        "answered without a client certificate: {:?}",
        without.status
    );
    let with = rt.block_on(tls_get(
        &server.addr,
        &pki.ca_file(),
        Some((&client_cert, &client_key)),
        "/v2/",
    ));
    assert_eq!(with.status.as_deref(), Ok("HTTP/1.1 200 OK"));
    if have_tool("skopeo", "skopeo") {
        // skopeo presents NAME.cert/NAME.key from its cert dir.
        let certs = dir.path().join("skopeo-certs");
        std::fs::create_dir_all(&certs).expect("dir");
        std::fs::copy(pki.ca_file(), certs.join("ca.crt")).expect("ca");
        let inspect = |certs: &Path| {
            Command::new("skopeo")
                .arg("inspect")
                .arg("--cert-dir")
                .arg(certs)
                .arg(format!("docker://{}/mtls/tool:latest", server.addr))
                .output()
                .expect("skopeo")
        };
        assert!(
            !inspect(&certs).status.success(),
            "skopeo without a client cert"
        );
        std::fs::copy(&client_cert, certs.join("client.cert")).expect("cert");
        std::fs::copy(&client_key, certs.join("client.key")).expect("key");
        let out = inspect(&certs);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn metrics_move_by_what_a_pull_sent() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = small_input(dir.path());
    let server = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--name",
            "m/tool",
            &input,
        ],
    );
    let metrics = metrics_addr(&server);
    let before = scrape(&metrics);
    let packs = value(&before, "quinistry_packs_total", &[]);
    assert_eq!(packs, 1.0, "the pack at start is counted");
    let manifest = common::raw_request(
        &server.addr,
        "GET",
        "/v2/m/tool/manifests/latest",
        &["Accept: application/vnd.oci.image.manifest.v1+json"],
    );
    assert_eq!(manifest.status, 200);
    let layer = &server.report["layer"];
    let blob = common::raw_request(
        &server.addr,
        "GET",
        &format!("/v2/m/tool/blobs/{layer}"),
        &[],
    );
    assert_eq!(blob.status, 200);
    let missing = common::raw_request(&server.addr, "GET", "/v2/m/tool/manifests/nope", &[]);
    assert_eq!(missing.status, 404);
    // The access-log line (and the metrics) are written when each body is done, a moment
    // after the client has it.
    let mut after = scrape(&metrics);
    for _ in 0..50 {
        if value(
            &after,
            "quinistry_http_requests_total",
            &[("route", "manifest")],
        ) >= 2.0
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        after = scrape(&metrics);
    }
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let get = ("method", "GET");
    assert_eq!(
        delta(
            "quinistry_http_requests_total",
            &[get, ("route", "manifest"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "quinistry_http_requests_total",
            &[get, ("route", "manifest"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "quinistry_http_requests_total",
            &[get, ("route", "blob"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "quinistry_http_response_bytes_total",
            &[get, ("route", "blob")]
        ),
        blob.body.len() as f64
    );
    assert_eq!(blob.body.len() as u64, server.report_size("layer"));
    assert_eq!(
        delta(
            "quinistry_http_response_bytes_total",
            &[get, ("route", "manifest")]
        ),
        (manifest.body.len() + missing.body.len()) as f64
    );
    assert_eq!(
        delta(
            "quinistry_http_request_duration_seconds_count",
            &[get, ("route", "blob")]
        ),
        1.0
    );
    assert!(value(&after, "quinistry_connections_open", &[]) >= 0.0);
    // The store's count: the self-pack's blobs (config, layer, two manifests) at least.
    let mut blobs = value(&after, "quinistry_store_blobs", &[]);
    for _ in 0..100 {
        if blobs >= 4.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        blobs = value(&scrape(&metrics), "quinistry_store_blobs", &[]);
    }
    assert!(blobs >= 4.0, "store blobs {blobs}");
}

#[test]
fn readyz_follows_the_store_and_health_checks_need_no_login() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = small_input(dir.path());
    let users = dir.path().join("htpasswd");
    let hash = bcrypt::hash("pw", 4).expect("hash");
    std::fs::write(&users, format!("ci:{hash}\n")).expect("htpasswd");
    let store = dir.path().join("store");
    let server = Serving::start(
        &store,
        dir.path(),
        &[
            "--push",
            "--htpasswd",
            &users.to_string_lossy(),
            "--auth-reads",
            &input,
        ],
    );
    let get = |path: &str| common::raw_request(&server.addr, "GET", path, &[]);
    assert_eq!(get("/v2/").status, 401, "the registry wants a login");
    assert_eq!(get("/healthz").status, 200);
    assert_eq!(get("/readyz").status, 200);
    // Unwritable, even for root: the store's temp folder is no folder.
    let tmp = store.join("tmp");
    let away = store.join("tmp.away");
    std::fs::rename(&tmp, &away).expect("move tmp");
    std::fs::write(&tmp, "not a folder").expect("file");
    let unready = get("/readyz");
    assert_eq!(unready.status, 503);
    assert!(
        String::from_utf8_lossy(&unready.body).contains("the store"),
        "{}",
        String::from_utf8_lossy(&unready.body)
    );
    assert_eq!(get("/healthz").status, 200, "the process still serves");
    std::fs::remove_file(&tmp).expect("rm");
    std::fs::rename(&away, &tmp).expect("move back");
    assert_eq!(get("/readyz").status, 200);
    // Health checks stay out of the access log.
    let log = server.log_text();
    assert!(log.contains("path=/v2/"), "{log}");
    assert!(!log.contains("readyz") && !log.contains("healthz"), "{log}");
}

/// Runs `quinistry ARGS` with `env`; its exit status, stdout and stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = quinistry()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The report line that starts with `key`.
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} line in:\n{out}"))
}

#[test]
fn a_config_file_says_everything_env_overrides_it_flags_override_both() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().display();
    let pki = Pki::new(&dir.path().join("pki"));
    let (cert, key, _) = pki.issue("server", false);
    let users = dir.path().join("htpasswd");
    let hash = bcrypt::hash("pw", 4).expect("hash");
    std::fs::write(&users, format!("alice:{hash}\nbob:{hash}\n")).expect("htpasswd");
    let input = small_input(dir.path());
    std::fs::write(dir.path().join("more.toml"), "").expect("images file");
    std::fs::create_dir(dir.path().join("root")).expect("root");
    let config = format!(
        r#"
store = "{d}/store"
listen = "127.0.0.1:0"

[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"

[metrics]
listen = "127.0.0.1:0"

[log]
format = "json"
health = true

[access]
push = true
htpasswd = "{users}"
auth_failures_per_minute = 5
insecure_push = false
anonymous_read = ["public/*"]

[access.users.alice]
read_write = ["a/*"]
read = ["*"]

[access.users.bob]
read = ["b/*"]

[limits]
max_connections = 50
max_connections_per_client = 9
idle_timeout = 5
body_timeout = 6
min_body_rate = 100
write_timeout = 7
shutdown_timeout = 8
max_blob_size = "1G"
upload_timeout = 600
max_uploads = 40
max_uploads_per_client = 4

[start]
name = "start/tool"
tag = "v1"
inputs = ["{input}"]
entrypoint = "/tool"
cmd = ["--help"]
env = ["A=1"]

[pack]
compression = "gzip"
level = 6
block_size = "512K"
threads = 2
closure = "elf"
recommends = false
cache = true

[on_demand]
root = "{d}/root"
packages = true
max_packs = 1
prepack = false
rescan = 30
images_files = ["{d}/more.toml"]

[[image]]
name = "od/tool:1"
inputs = ["{input}"]

[gc]
interval = "2h"
grace = "30m"
link_grace = "12h"
keep_untagged = "7d"

[[gc.keep_tags]]
repositories = "ci/*"
last = 3
"#,
        cert = cert.display(),
        key = key.display(),
        ca = pki.ca_file().display(),
        users = users.display(),
    );
    let file = dir.path().join("quinistry.toml");
    std::fs::write(&file, &config).expect("config");
    let f = file.to_string_lossy().into_owned();

    let (ok, out, err) = run(&["config", "check", &f], &[]);
    assert!(ok, "{err}");
    assert!(line(&out, "config").ends_with("valid"), "{out}");
    assert_eq!(line(&out, "store"), format!("store      {d}/store"));
    let limits = line(&out, "limits");
    assert!(
        limits.starts_with("limits     50 connections (9 per client), 40 uploads (4 per client)")
            && limits.ends_with("idle 5 s, body 6 s (at least 100 B/s), write 7 s"),
        "{limits}"
    );
    assert!(
        line(&out, "tls").contains("client certificates of"),
        "{out}"
    );
    assert!(
        line(&out, "access").contains("rules for 2 of 2 users"),
        "{out}"
    );
    assert!(line(&out, "metrics").contains("127.0.0.1:0"), "{out}");
    assert_eq!(
        line(&out, "gc"),
        "gc         every 2h; blobs kept 30m after last use, layers without a manifest 12h, untagged manifests 7days; ci/*: last 3 tags",
        "{out}"
    );

    // The environment overrides the file.
    let env = [
        ("QUINISTRY_MAX_CONNECTIONS", "77"),
        ("QUINISTRY_IDLE_TIMEOUT", "9"),
    ];
    let (ok, out, err) = run(&["config", "check", &f], &env);
    assert!(ok, "{err}");
    let limits = line(&out, "limits");
    assert!(
        limits.starts_with("limits     77 connections") && limits.contains("idle 9 s"),
        "{limits}"
    );

    // Flags override both: a real serve, with the file's TLS, JSON log and rules.
    let mut child = quinistry()
        .envs(env)
        .args(["serve", "--config", &f, "--idle-timeout", "11"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    for l in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let l = l.expect("line");
        let done = l.starts_with("listening");
        lines.push(l);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let stderr = {
        let _ = child.wait();
        let mut s = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    };
    let out = lines.join("\n");
    let limits = line(&out, "limits");
    assert!(
        limits.starts_with("limits     77 connections") && limits.contains("idle 11 s"),
        "{limits}\n{stderr}"
    );
    assert!(
        line(&out, "listening").starts_with("listening https://127.0.0.1:"),
        "{out}"
    );
    assert!(line(&out, "tag").ends_with("start/tool:v1"), "{out}");
    assert!(out.contains("on demand  od/tool:1"), "{out}");
    // The log is JSON: every line an object.
    for l in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}"));
        assert!(v["level"].is_string(), "{l}");
    }

    // An unknown key is refused, naming it and its line; so is a bad value.
    let typo = config.replace("idle_timeout = 5", "idle_timeout = 5\nidle_timout = 5");
    std::fs::write(&file, typo).expect("write");
    let (ok, _, err) = run(&["config", "check", &f], &[]);
    assert!(!ok);
    let at = config
        .lines()
        .position(|l| l == "idle_timeout = 5")
        .expect("line")
        + 2;
    assert!(
        err.contains("idle_timout") && err.contains(&format!("line {at}")),
        "{err}"
    );
    let bad = config.replace(
        r#"read = ["b/*"]"#,
        r#"read = ["b/*"]
[access.users.carol]
read = ["c/*"]"#,
    );
    std::fs::write(&file, bad).expect("write");
    let (ok, _, err) = run(&["config", "check", &f], &[]);
    assert!(!ok);
    assert!(err.contains("access.users.carol: no such user"), "{err}");

    // A file or folder it names that is not there is refused, naming it (serve only warns
    // of a missing image input: the file may come later).
    for (what, missing, named) in [
        (
            format!("root = \"{d}/root\""),
            format!("root = \"{d}/no-root\""),
            "no-root",
        ),
        (
            format!("inputs = [\"{input}\"]"),
            format!("inputs = [\"{d}/no-input\"]"),
            "no-input",
        ),
    ] {
        assert!(config.contains(&what), "{what}");
        std::fs::write(&file, config.replacen(&what, &missing, 1)).expect("write");
        let (ok, _, err) = run(&["config", "check", &f], &[]);
        assert!(!ok, "{missing}");
        assert!(err.contains(named), "{err}");
    }
}

#[test]
fn json_access_lines_follow_a_push_from_post_to_manifest() {
    if !have_tool("jq", "jq") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let input = small_input(dir.path());
    let users = dir.path().join("htpasswd");
    let hash = bcrypt::hash("pw", 4).expect("hash");
    std::fs::write(&users, format!("ci:{hash}\n")).expect("htpasswd");
    let server = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &[
            "--push",
            "--htpasswd",
            &users.to_string_lossy(),
            "--log-format",
            "json",
            &input,
        ],
    );
    let rt = runtime();
    let pushed = rt.block_on(push_image(&server.addr, "ci/app", Some(("ci", "pw")), 1));
    assert_eq!(pushed.last().map(|s| s.0), Some(201), "{pushed:?}");
    // A secret in a query is not logged.
    common::raw_request(&server.addr, "GET", "/v2/?token=hunter2&n=1", &[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = server.log_text();
    assert!(!log.contains("hunter2"), "{log}");
    // jq reads every line.
    let out = run_ok(
        Command::new("jq")
            .args(["-c", "select(.target == \"quinistry::access\")"])
            .arg(&server.log),
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("jq wrote JSON"))
        .collect();
    let of = |method: &str, route: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["method"] == method && l["route"] == route)
            .collect()
    };
    let post = of("POST", "upload");
    let patch = of("PATCH", "upload");
    let put = of("PUT", "upload");
    assert!(
        !post.is_empty() && !patch.is_empty() && !put.is_empty(),
        "{lines:?}"
    );
    // Each layer's upload: the same id from its POST to its PUT, which names the digest.
    for p in &put {
        let id = p["upload"].as_str().expect("upload id on the PUT");
        assert!(
            post.iter().any(|l| l["upload"] == id),
            "no POST opened {id}"
        );
        assert!(patch.iter().any(|l| l["upload"] == id), "no PATCH of {id}");
        assert!(
            p["digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:")),
            "{p}"
        );
        assert!(
            p["query"]
                .as_str()
                .is_some_and(|q| q.starts_with("digest=sha256")),
            "{p}"
        );
        assert_eq!(p["user"], "ci");
        assert_eq!(p["status"], 201);
    }
    assert!(
        patch.iter().all(|l| l["received"].as_u64() > Some(0)),
        "{patch:?}"
    );
    let manifest = of("PUT", "manifest");
    assert_eq!(manifest.len(), 1, "{lines:?}");
    assert_eq!(manifest[0]["user"], "ci");
    assert!(
        manifest[0]["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    for l in &lines {
        for field in ["remote", "path", "route", "status", "bytes", "ms"] {
            assert!(!l[field].is_null(), "no {field} in {l}");
        }
    }
    let base = lines
        .iter()
        .find(|l| l["path"] == "/v2/" && l["query"].is_string())
        .expect("the /v2/ line");
    assert_eq!(base["query"], "token=REDACTED&n=1");
}

/// Pushes a one-layer image to `repo` (POST, PATCH, PUT for each blob; then the manifest),
/// as `user`; each step's status and the upload location it used.
async fn push_image(
    addr: &str,
    repo: &str,
    user: Option<(&str, &str)>,
    seed: u64,
) -> Vec<(u16, String)> {
    let client = common::http();
    let auth = |r: reqwest::RequestBuilder| match user {
        Some((u, p)) => r.basic_auth(u, Some(p)),
        None => r,
    };
    let base = format!("http://{addr}");
    let mut steps = Vec::new();
    let layer = common::noise(3000, seed);
    let config = format!("{{\"seed\":{seed}}}").into_bytes();
    let mut descriptors = Vec::new();
    for blob in [&config, &layer] {
        let digest = format!("sha256:{}", sha256_hex(blob));
        let post = auth(client.post(format!("{base}/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .expect("post");
        let status = post.status().as_u16();
        steps.push((status, String::new()));
        if status != 202 {
            return steps;
        }
        let location = post.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        let url = |l: &str| {
            if l.starts_with('/') {
                format!("{base}{l}")
            } else {
                l.to_owned()
            }
        };
        let patch = auth(client.patch(url(&location)))
            .header("content-type", "application/octet-stream")
            .body(blob.clone())
            .send()
            .await
            .expect("patch");
        let location = patch.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        steps.push((patch.status().as_u16(), location.clone()));
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = auth(client.put(format!("{}{sep}digest={digest}", url(&location))))
            .send()
            .await
            .expect("put");
        steps.push((put.status().as_u16(), location));
        descriptors.push((digest, blob.len()));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": descriptors[0].0, "size": descriptors[0].1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": descriptors[1].0, "size": descriptors[1].1}],
    });
    let put = auth(client.put(format!("{base}/v2/{repo}/manifests/latest")))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .await
        .expect("manifest");
    steps.push((put.status().as_u16(), String::new()));
    steps
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn access_rules_let_each_user_push_and_read_their_repositories_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = small_input(dir.path());
    let users = dir.path().join("htpasswd");
    let hash = bcrypt::hash("pw", 4).expect("hash");
    std::fs::write(&users, format!("alice:{hash}\nbob:{hash}\n")).expect("htpasswd");
    let config = dir.path().join("q.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[access]
push = true
htpasswd = "{}"
anonymous_read = ["public/*"]
[access.users.alice]
read_write = ["a/*", "public/*"]
[access.users.bob]
read = ["a/*"]
"#,
            users.display()
        ),
    )
    .expect("config");
    let server = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &[
            "--config",
            &config.to_string_lossy(),
            "--name",
            "private/tool",
            &input,
        ],
    );
    let addr = &server.addr;
    let rt = runtime();
    let alice = Some(("alice", "pw"));
    let bob = Some(("bob", "pw"));
    let ok = |steps: &[(u16, String)]| steps.last().map(|s| s.0) == Some(201);
    assert!(
        ok(&rt.block_on(push_image(addr, "a/x", alice, 1))),
        "alice pushes to a/*"
    );
    assert!(
        ok(&rt.block_on(push_image(addr, "public/p", alice, 2))),
        "and public/*"
    );
    let denied = rt.block_on(push_image(addr, "b/x", alice, 3));
    assert_eq!(denied.first().map(|s| s.0), Some(403), "{denied:?}");
    let denied = rt.block_on(push_image(addr, "a/y", bob, 4));
    assert_eq!(
        denied.first().map(|s| s.0),
        Some(403),
        "bob only reads a/*: {denied:?}"
    );
    let anonymous = rt.block_on(push_image(addr, "public/q", None, 5));
    assert_eq!(anonymous.first().map(|s| s.0), Some(401), "{anonymous:?}");

    let get = |path: &str, user: Option<(&str, &str)>| {
        rt.block_on(async {
            let client = common::http();
            let mut r = client
                .get(format!("http://{addr}{path}"))
                .header("accept", "application/vnd.oci.image.manifest.v1+json");
            if let Some((u, p)) = user {
                r = r.basic_auth(u, Some(p));
            }
            let r = r.send().await.expect("get");
            (r.status().as_u16(), r.text().await.expect("body"))
        })
    };
    let (status, body) = get("/v2/b/x/manifests/latest", alice);
    assert_eq!(status, 403);
    assert!(body.contains("DENIED"), "{body}");
    assert_eq!(
        get("/v2/public/p/manifests/latest", None).0,
        200,
        "anonymous reads public/*"
    );
    assert_eq!(get("/v2/a/x/manifests/latest", None).0, 401, "but not a/*");
    assert_eq!(get("/v2/a/x/manifests/latest", bob).0, 200, "bob reads a/*");
    assert_eq!(get("/v2/private/tool/manifests/latest", bob).0, 403);
    let catalog = |user| {
        let (status, body) = get("/v2/_catalog", user);
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["repositories"].clone()
    };
    assert_eq!(catalog(None), serde_json::json!(["public/p"]));
    assert_eq!(catalog(alice), serde_json::json!(["a/x", "public/p"]));
    assert_eq!(catalog(bob), serde_json::json!(["a/x", "public/p"]));
    // A mount from a repository alice may not read is no mount: she must send the blob.
    let tool_layer = &server.report["layer"];
    let mount = rt.block_on(async {
        common::http()
            .post(format!(
                "http://{addr}/v2/a/m/blobs/uploads/?mount={tool_layer}&from=private/tool"
            ))
            .basic_auth("alice", Some("pw"))
            .send()
            .await
            .expect("mount")
            .status()
            .as_u16()
    });
    assert_eq!(mount, 202, "mounted from a repository alice cannot read");
    if have_tool("skopeo", "skopeo") {
        let copy = |dest: &str, creds: &str| {
            Command::new("skopeo")
                .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
                .args(["--src-creds", creds, "--dest-creds", creds])
                .arg(format!("docker://{addr}/a/x:latest"))
                .arg(format!("docker://{addr}/{dest}"))
                .output()
                .expect("skopeo")
        };
        let out = copy("a/copy:1", "alice:pw");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = copy("b/copy:1", "alice:pw");
        assert!(!out.status.success(), "skopeo pushed to b/ as alice");
    }
}

#[test]
fn basic_auth_over_plain_http_beyond_loopback_is_warned_about_and_push_without_it_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = dir.path().join("htpasswd");
    let hash = bcrypt::hash("pw", 4).expect("hash");
    std::fs::write(&users, format!("ci:{hash}\n")).expect("htpasswd");
    let pki = Pki::new(&dir.path().join("pki"));
    let (cert, key, _) = pki.issue("server", false);
    let config = dir.path().join("q.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "store = \"{}/store\"\nlisten = \"0.0.0.0:0\"\n{extra}",
                dir.path().display()
            ),
        )
        .expect("config")
    };
    let c = config.to_string_lossy().into_owned();
    let check = || run(&["config", "check", &c], &[]);
    write("[access]\npush = true\n");
    let (ok, _, err) = check();
    assert!(!ok && err.contains("needs --htpasswd"), "{err}");
    let auth = format!(
        "[access]\npush = true\nhtpasswd = \"{}\"\n",
        users.display()
    );
    write(&auth);
    let (ok, _, err) = check();
    assert!(ok, "{err}");
    assert!(
        err.contains("passwords cross the network in clear"),
        "{err}"
    );
    write(&format!(
        "{auth}[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    let (ok, _, err) = check();
    assert!(ok, "{err}");
    assert!(
        !err.contains("in clear"),
        "TLS with htpasswd is the safe setup: {err}"
    );
}

#[test]
fn sighup_reloads_a_certificate_whose_change_no_watched_folder_saw() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(&dir.path().join("pki"));
    let (cert, key, first) = pki.issue("first", false);
    let (cert2, key2, second) = pki.issue("second", false);
    // The server is given links in a folder of their own; the files they point at live in
    // another folder, which nobody watches, and are rewritten in place there.
    let links = dir.path().join("links");
    std::fs::create_dir(&links).expect("links");
    let (cert_link, key_link) = (links.join("tls.crt"), links.join("tls.key"));
    std::os::unix::fs::symlink(&cert, &cert_link).expect("link");
    std::os::unix::fs::symlink(&key, &key_link).expect("link");
    let server = serve_tls(dir.path(), (&cert_link, &key_link), &[]);
    let rt = runtime();
    let peer = || {
        rt.block_on(tls_get(&server.addr, &pki.ca_file(), None, "/v2/"))
            .peer
    };
    assert_eq!(peer().as_deref(), Some(&first[..]));
    std::fs::write(&key, std::fs::read(&key2).expect("key2")).expect("rewrite key");
    std::fs::write(&cert, std::fs::read(&cert2).expect("cert2")).expect("rewrite cert");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(peer().as_deref(), Some(&first[..]), "no change was seen");
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while peer().as_deref() != Some(&second[..]) {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload the certificate:\n{}",
            server.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        server.log_text().contains("why=\"SIGHUP\""),
        "{}",
        server.log_text()
    );
}

/// The commented example config the README points to is one `serve` accepts, with every
/// file and folder it names there.
#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quinistry.toml");
    let (ok, out, err) = run(&["config", "check", example], &[]);
    assert!(ok, "{err}");
    assert!(line(&out, "config").ends_with("valid"), "{out}");
    assert!(line(&out, "gc").starts_with("gc         every 1h"), "{out}");
}

/// `Authorization: Basic` for `user:password`.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {token}")
}

/// Sends SIGHUP to the server.
fn hangup(server: &Serving) {
    run_ok(Command::new("kill").args(["-HUP", &server.child.id().to_string()]));
}

/// Asks `/v2/` as `user` until the answer is `want`: how many tries it took (one per 100 ms;
/// at most 200, then it fails).
fn tries_until(server: &Serving, user: &str, want: u16) -> usize {
    for tries in 1..=200 {
        let got = common::raw_request(&server.addr, "GET", "/v2/", &[&basic(user, "pw")]).status;
        if got == want {
            return tries;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{user} never got {want}");
}

#[test]
fn sighup_never_ends_the_server_and_users_are_read_again_when_their_file_changes() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = small_input(dir.path());
    // Without TLS or users: nothing to reload, and the process stays.
    let mut plain = Serving::start(&dir.path().join("plain"), dir.path(), &[&input]);
    for _ in 0..3 {
        hangup(&plain);
    }
    assert_eq!(
        common::raw_request(&plain.addr, "GET", "/v2/", &[]).status,
        200
    );
    assert!(
        plain.child.try_wait().expect("wait").is_none(),
        "SIGHUP ended the server"
    );

    let users = dir.path().join("htpasswd");
    let hash = bcrypt::hash("pw", 4).expect("hash");
    std::fs::write(&users, format!("alice:{hash}\nbob:{hash}\n")).expect("htpasswd");
    let logs = dir.path().join("auth");
    std::fs::create_dir_all(&logs).expect("dir");
    let mut server = Serving::start(
        &dir.path().join("store"),
        &logs,
        &[
            "--push",
            "--htpasswd",
            &users.to_string_lossy(),
            "--auth-reads",
            "--metrics-listen",
            "127.0.0.1:0",
            &input,
        ],
    );
    assert_eq!(tries_until(&server, "bob", 200), 1);
    // `htpasswd -D` rewrites the file in place.
    std::fs::write(&users, format!("alice:{hash}\n")).expect("rewrite");
    let tries = tries_until(&server, "bob", 401);
    println!("bob refused after {tries} tries of 100 ms, his entry deleted in place");
    assert_eq!(tries_until(&server, "alice", 200), 1);
    // Editors and secret stores write a new file and rename it over the old one.
    let new = dir.path().join("htpasswd.new");
    std::fs::write(&new, format!("alice:{hash}\nbob:{hash}\n")).expect("write");
    std::fs::rename(&new, &users).expect("rename");
    let tries = tries_until(&server, "bob", 200);
    println!("bob let in after {tries} tries, the file renamed over");
    // A file that does not load keeps the users before it; SIGHUP reads it again.
    std::fs::write(&users, "alice:$apr1$not-bcrypt\n").expect("break");
    hangup(&server);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(tries_until(&server, "bob", 200), 1);
    std::fs::write(&users, format!("alice:{hash}\n")).expect("fix");
    hangup(&server);
    tries_until(&server, "bob", 401);
    assert!(
        server.child.try_wait().expect("wait").is_none(),
        "SIGHUP ended the server"
    );
    // Wrong passwords past the address's budget (10 a minute) are throttled, and counted
    // (bob's refusals since the last reload count against the budget too).
    let statuses: Vec<u16> = (0..12)
        .map(|_| {
            common::raw_request(&server.addr, "GET", "/v2/", &[&basic("mallory", "guess")]).status
        })
        .collect();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(throttled >= 2, "{statuses:?}");
    let samples = scrape(&metrics_addr(&server));
    assert_eq!(
        value(
            &samples,
            "quinistry_limits_hit_total",
            &[("limit", "auth_throttled")]
        ),
        throttled as f64
    );
    let log = server.log_text();
    assert!(log.contains("users and access rules read again"), "{log}");
    assert!(log.contains("does not load"), "{log}");
    plain.child.kill().ok();
    server.child.kill().ok();
}
