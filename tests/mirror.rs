//! Pull-through mirrors (issue 34, first part): a quinistry in front of upstream registries
//! on loopback — one asking for Basic credentials, one for Bearer tokens of its built-in
//! issuer, and a fake one that sends wrong bytes — counted by the upstreams' access logs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Serving, pull_latest as pull, raw_request};
use sha2::{Digest, Sha256};

const OCI: &str = "Accept: application/vnd.oci.image.manifest.v1+json";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An upstream quinistry serving `lib/tool:latest` to alice (password `secret`) only: with
/// Basic authentication, or (`tokens`) with its built-in token issuer.
fn upstream(dir: &Path, tokens: bool) -> Serving {
    std::fs::create_dir_all(dir).expect("dir");
    let input = dir.join("tool");
    // Each upstream its own bytes: blobs are shared by digest in the mirror's store.
    std::fs::write(&input, common::noise(30_000, 7 + u64::from(tokens))).expect("input");
    let users = dir.join("htpasswd");
    let hash = bcrypt::hash("secret", 4).expect("hash");
    std::fs::write(&users, format!("alice:{hash}\n")).expect("htpasswd");
    let key = dir.join("token.key");
    let mut args = vec![
        "--push".to_owned(),
        "--no-prepack".to_owned(),
        "--htpasswd".to_owned(),
        users.display().to_string(),
        "--auth-reads".to_owned(),
        "--name".to_owned(),
        "lib/tool".to_owned(),
    ];
    if tokens {
        for a in [
            "--token-service",
            "up",
            "--token-issuer",
            "up",
            "--token-signing-key",
        ] {
            args.push(a.to_owned());
        }
        args.push(key.display().to_string());
    }
    args.push(input.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Serving::start(&dir.join("store"), dir, &args)
}

/// An upstream quinistry without authentication serving `lib/tool:latest`, a file of `bytes`.
fn open_upstream(dir: &Path, bytes: &[u8]) -> Serving {
    std::fs::create_dir_all(dir).expect("dir");
    let input = dir.join("tool");
    std::fs::write(&input, bytes).expect("input");
    let input = input.to_str().expect("utf-8");
    Serving::start(
        &dir.join("store"),
        dir,
        &["--no-prepack", "--name", "lib/tool", input],
    )
}

/// A small file of the mirror's own to serve as `own/image` (`--name own/image FILE`): with
/// no input, serve would pack its own (debug, large) executable at start.
fn own_image(dir: &Path) -> [String; 3] {
    let input = dir.join("own");
    std::fs::write(&input, b"the mirror's own image").expect("input");
    [
        "--name".into(),
        "own/image".into(),
        input.display().to_string(),
    ]
}

/// A mirror serving with the config file `config`, its store and log under `dir`.
fn serve_config(dir: &Path, config: &Path) -> Serving {
    let own = own_image(dir);
    let mut args = vec!["--no-prepack", "--config", config.to_str().expect("utf-8")];
    args.extend(own.iter().map(String::as_str));
    Serving::start(&dir.join("store"), dir, &args)
}

/// Requests the upstream's access log shows for `lib/tool`, by method. The log is written
/// by a thread of its own, in order: a marker request sent now and seen in the log means
/// every request answered before it is there too.
fn upstream_requests(server: &Serving, method: &str) -> usize {
    static MARKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mark = format!("/v2/mark{}/tags/list", MARKS.fetch_add(1, Ordering::SeqCst));
    raw_request(&server.addr, "GET", &mark, &[]);
    for _ in 0..1000 {
        let log = server.log_text();
        if log.contains(&format!("path={mark} ")) {
            return log
                .lines()
                .filter(|l| {
                    l.contains(&format!("method={method} ")) && l.contains("path=/v2/lib/tool/")
                })
                .count();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!(
        "the marker request never reached the log:\n{}",
        server.log_text()
    );
}

/// A mirror server with one `[[mirror]]` per (prefix, upstream address, tag_ttl), each with
/// alice's credentials.
fn mirror(dir: &Path, mirrors: &[(&str, &str, &str)]) -> Serving {
    std::fs::create_dir_all(dir).expect("dir");
    let mut config = String::new();
    for (prefix, addr, ttl) in mirrors {
        config.push_str(&format!(
            "[[mirror]]\nprefix = \"{prefix}\"\nupstream = \"http://{addr}\"\nusername = \"alice\"\npassword = \"secret\"\ntag_ttl = \"{ttl}\"\n"
        ));
    }
    let path = dir.join("q.toml");
    std::fs::write(&path, config).expect("config");
    let own = own_image(dir);
    let mut args = vec![
        "--push",
        "--no-prepack",
        "--metrics-listen",
        "127.0.0.1:0",
        "--config",
        path.to_str().expect("utf-8"),
    ];
    args.extend(own.iter().map(String::as_str));
    Serving::start(&dir.join("store"), dir, &args)
}

/// Through a Basic upstream and a Bearer one: the first pull fetches each piece once, a
/// second within the TTL asks the upstream nothing, one past the TTL one HEAD; mirrored
/// names are read-only; with the upstream gone what is cached still pulls and what is not
/// fails naming the upstream.
#[test]
fn a_mirror_pulls_through_basic_and_token_upstreams_and_survives_their_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let basic = upstream(&dir.path().join("basic"), false);
    let tokens = upstream(&dir.path().join("tokens"), true);
    let server = mirror(
        &dir.path().join("mirror"),
        &[
            ("basic", &basic.addr, "1h"),
            ("tokens", &tokens.addr, "1h"),
            ("always", &tokens.addr, "0s"),
        ],
    );
    let addr = server.addr.as_str();
    for (prefix, up) in [("basic", &basic), ("tokens", &tokens)] {
        let name = format!("{prefix}/lib/tool");
        let digest = pull(addr, &name);
        assert_eq!(
            digest, up.report["manifest"],
            "{prefix}: the upstream's manifest"
        );
        let gets = upstream_requests(up, "GET");
        assert!(
            gets >= 3,
            "{prefix}: manifest, config and layer fetched ({gets})\n{}\n{}",
            up.log_text(),
            server.log_text()
        );
        // Within the TTL: nothing asked upstream.
        assert_eq!(pull(addr, &name), digest);
        assert_eq!(
            upstream_requests(up, "GET"),
            gets,
            "{prefix}: a second pull asked again"
        );
        assert_eq!(upstream_requests(up, "HEAD"), 0);
    }
    // Past the TTL (0 s): one HEAD for the tag, no GET.
    pull(addr, "always/lib/tool");
    let (gets, heads) = (
        upstream_requests(&tokens, "GET"),
        upstream_requests(&tokens, "HEAD"),
    );
    pull(addr, "always/lib/tool");
    assert_eq!(
        upstream_requests(&tokens, "HEAD"),
        heads + 1,
        "one HEAD per tag past its TTL"
    );
    assert_eq!(upstream_requests(&tokens, "GET"), gets, "and nothing else");

    // The metrics count hits, misses and the bytes fetched, per upstream.
    let samples = common::scrape(&common::metrics_addr(&server));
    let basic_up = format!("http://{}", basic.addr);
    let count = |result: &str| {
        common::value(
            &samples,
            "quinistry_mirror_requests_total",
            &[("upstream", &basic_up), ("result", result)],
        )
    };
    assert_eq!(count("miss"), 3.0, "manifest, config and layer fetched");
    // The second pull: its tag within the TTL (blobs already linked are read from the store
    // without asking the mirror).
    assert_eq!(count("hit"), 1.0);
    let fetched = common::value(
        &samples,
        "quinistry_mirror_upstream_bytes_total",
        &[("endpoint", &basic_up)],
    );
    assert!(fetched >= 30_000.0, "{fetched} bytes fetched");

    // Real clients by prefix: skopeo copies out of the Bearer upstream's mirror (checking
    // every digest), podman pulls from the Basic one's.
    if common::have_tool("skopeo", "skopeo") {
        let out = std::process::Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{addr}/tokens/lib/tool:latest"))
            .arg(format!("dir:{}", dir.path().join("copied").display()))
            .output()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if common::have_tool("podman", "podman") {
        let image = format!("{addr}/basic/lib/tool:latest");
        let root = dir.path().join("podman");
        let pulled = common::podman_in(&root, &["pull", "--tls-verify=false", &image]);
        assert!(!pulled.is_empty(), "podman pull printed no image id");
    }

    // Read-only, and not the mirror's own repositories.
    let push = raw_request(addr, "POST", "/v2/basic/lib/tool/blobs/uploads/", &[]);
    assert_eq!(push.status, 405, "{}", String::from_utf8_lossy(&push.body));
    assert!(String::from_utf8_lossy(&push.body).contains("mirror"));
    assert_eq!(
        raw_request(addr, "POST", "/v2/own/x/blobs/uploads/", &[]).status,
        202
    );

    // The upstreams gone: cached images still pull (a tag past its TTL too), others fail
    // with an error naming the upstream.
    let tokens_addr = tokens.addr.clone();
    drop(basic);
    drop(tokens);
    pull(addr, "basic/lib/tool");
    pull(addr, "always/lib/tool");
    let missing = raw_request(addr, "GET", "/v2/basic/lib/other/manifests/latest", &[OCI]);
    assert_eq!(
        missing.status,
        503,
        "{}",
        String::from_utf8_lossy(&missing.body)
    );
    let text = String::from_utf8_lossy(&missing.body).into_owned();
    assert!(
        text.contains("UNAVAILABLE") && text.contains("http://127.0.0.1:"),
        "{text}"
    );
    let gone = raw_request(addr, "GET", "/v2/tokens/lib/nothing/manifests/v9", &[OCI]);
    assert!(
        String::from_utf8_lossy(&gone.body).contains(&tokens_addr),
        "the error names the upstream"
    );
}

/// Ten clients pulling an uncached image at once all get it whole, and the upstream sends
/// each piece once: one manifest GET, one GET per blob (the layer's 8 MiB read by all ten
/// as it arrives).
#[test]
fn ten_concurrent_pulls_of_an_uncached_image_fetch_each_blob_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = open_upstream(&dir.path().join("up"), &common::noise(8 << 20, 11));
    let server = mirror(&dir.path().join("mirror"), &[("up", &up.addr, "1h")]);
    let addr = server.addr.clone();
    let pulls: Vec<_> = (0..10)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || pull(&addr, "up/lib/tool"))
        })
        .collect();
    for p in pulls {
        assert_eq!(p.join().expect("pull"), up.report["manifest"]);
    }
    let log = {
        upstream_requests(&up, "GET");
        up.log_text()
    };
    let fetched = |what: &str| {
        log.lines()
            .filter(|l| l.contains("method=GET ") && l.contains("status=200") && l.contains(what))
            .count()
    };
    assert_eq!(fetched("path=/v2/lib/tool/manifests/latest"), 1, "{log}");
    assert_eq!(
        fetched(&format!("path=/v2/lib/tool/blobs/{}", up.report["layer"])),
        1,
        "{log}"
    );
    assert_eq!(
        fetched("path=/v2/lib/tool/blobs/"),
        2,
        "config and layer, once each"
    );
}

/// A fake upstream with one image whose layer it sends wrong until `fixed` is set.
fn lying_upstream(fixed: Arc<AtomicBool>) -> (String, String) {
    let layer = b"the real layer bytes".to_vec();
    let layer_digest = sha256(&layer);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_digest = sha256(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}]
    })
    .to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let digest = layer_digest.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = first.split(' ').nth(1).unwrap_or("");
            let (ctype, body): (&str, Vec<u8>) = if path.ends_with("/manifests/latest") {
                (
                    "application/vnd.oci.image.manifest.v1+json",
                    manifest.clone().into_bytes(),
                )
            } else if path.ends_with(&config_digest) {
                ("application/octet-stream", config.clone())
            } else if path.ends_with(&layer_digest) {
                let body = if fixed.load(Ordering::SeqCst) {
                    layer.clone()
                } else {
                    b"tampered bytes of the layer".to_vec()
                };
                ("application/octet-stream", body)
            } else {
                let _ = conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
        }
    });
    (addr, digest)
}

/// Wrong bytes from the upstream commit nothing: the client gets an error, the store has no
/// blob by that digest, and once the upstream sends the right bytes the pull works.
#[test]
fn wrong_bytes_from_an_upstream_commit_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixed = Arc::new(AtomicBool::new(false));
    let (up, layer) = lying_upstream(fixed.clone());
    let server = mirror(&dir.path().join("mirror"), &[("liar", &up, "1h")]);
    let addr = server.addr.as_str();
    let path = format!("/v2/liar/img/blobs/{layer}");
    let m = raw_request(addr, "GET", "/v2/liar/img/manifests/latest", &[OCI]);
    assert_eq!(m.status, 200);
    // Streamed as it arrives: the answer began before the digest could be checked, so the
    // connection ends short of its Content-Length, without the last byte.
    let bad = common::try_raw_request(addr, "GET", &path, &[], b"");
    if let Ok(bad) = &bad {
        let promised: usize = bad
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        assert!(
            bad.status != 200 || bad.body.len() < promised,
            "a whole blob of wrong bytes was sent: {} of {promised}",
            bad.body.len()
        );
    }
    assert!(
        server.log_text().contains("nothing was stored"),
        "the mismatch is logged"
    );
    let store = dir.path().join("mirror/store");
    assert!(
        !common::blob(&store, &layer).exists(),
        "a blob of wrong bytes was stored"
    );
    fixed.store(true, Ordering::SeqCst);
    let good = raw_request(addr, "GET", &path, &[]);
    assert_eq!(good.status, 200);
    assert_eq!(sha256(&good.body), layer);
    stored(&store, &layer);
}

/// Waits until the store has `digest`: a client has a mirrored blob's last byte once its
/// digest checked out, and the commit (fsync, rename) follows.
fn stored(store: &Path, digest: &str) {
    let path = common::blob(store, digest);
    for _ in 0..3000 {
        if path.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{digest} was never stored");
}

/// Unprefixed names: containerd's `?ns=PREFIX` picks a mirror, and the default one takes
/// the rest unless the name is the registry's own; cached under `PREFIX/NAME`. `ctr` pulls
/// through a `hosts.toml` mirror entry.
#[test]
fn unprefixed_names_go_to_the_default_mirror_or_the_one_ns_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = open_upstream(&dir.path().join("up"), &common::noise(20_000, 21));
    let mdir = dir.path().join("mirror");
    std::fs::create_dir_all(&mdir).expect("dir");
    let config = mdir.join("q.toml");
    std::fs::write(
        &config,
        format!(
            "[[mirror]]\nprefix = \"docker.io\"\nupstream = \"http://{0}\"\ndefault = true\n\n[[mirror]]\nprefix = \"quay.io\"\nupstream = \"http://{0}\"\n",
            up.addr
        ),
    )
    .expect("config");
    let server = serve_config(&mdir, &config);
    let addr = server.addr.as_str();
    let get = |path: &str| raw_request(addr, "GET", path, &[OCI]);
    let unprefixed = get("/v2/lib/tool/manifests/latest");
    assert_eq!(
        unprefixed.status,
        200,
        "{}",
        String::from_utf8_lossy(&unprefixed.body)
    );
    assert_eq!(
        unprefixed.header("docker-content-digest"),
        Some(up.report["manifest"].as_str())
    );
    let by_ns = get("/v2/lib/tool/manifests/latest?ns=quay.io");
    assert_eq!(by_ns.status, 200);
    let own_image = get("/v2/own/image/manifests/latest");
    assert_eq!(
        own_image.header("docker-content-digest"),
        Some(server.report["manifest"].as_str()),
        "the registry's own name stays its own"
    );
    let catalog = String::from_utf8_lossy(&get("/v2/_catalog").body).into_owned();
    assert!(
        catalog.contains("\"docker.io/lib/tool\"") && catalog.contains("\"quay.io/lib/tool\""),
        "{catalog}"
    );

    if common::have_tool("containerd", "containerd") && common::have_tool("ctr", "containerd") {
        let root = dir.path().join("containerd");
        std::fs::create_dir_all(&root).expect("dir");
        let containerd = common::Containerd::start(&root);
        let hosts = dir.path().join("hosts");
        std::fs::create_dir_all(hosts.join("quay.io")).expect("hosts dir");
        std::fs::write(
            hosts.join("quay.io/hosts.toml"),
            format!("server = \"https://quay.io\"\n\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )
        .expect("hosts.toml");
        let out = containerd.ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts.to_str().expect("utf-8"),
            "quay.io/lib/tool:latest",
        ]);
        assert!(
            out.status.success(),
            "ctr pull through hosts.toml: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_text()
        );
        assert!(
            server.log_text().contains("ns=quay.io"),
            "ctr asked the mirror with ?ns="
        );
    }
}

/// Debian's `docker-registry` (distribution 2.8) on a free loopback port, asking for alice's
/// Basic credentials (bcrypt htpasswd), its access log in `dir/access.log`; killed on drop.
struct Distribution {
    child: std::process::Child,
    addr: String,
    log: std::path::PathBuf,
}

impl Distribution {
    fn start(dir: &Path) -> Distribution {
        std::fs::create_dir_all(dir).expect("dir");
        let users = dir.join("htpasswd");
        let hash = bcrypt::hash("secret", 4).expect("hash");
        std::fs::write(&users, format!("alice:{hash}\n")).expect("htpasswd");
        let addr = format!("127.0.0.1:{}", common::free_port());
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: info, accesslog: {{ disabled: false }} }}\n\
                 storage: {{ filesystem: {{ rootdirectory: {} }} }}\n\
                 http: {{ addr: {addr} }}\n\
                 auth: {{ htpasswd: {{ realm: upstream, path: {} }} }}\n",
                dir.join("data").display(),
                users.display()
            ),
        )
        .expect("registry.yml");
        // The access log goes to stdout, the rest to stderr.
        let log = dir.join("access.log");
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(dir.join("registry.log")).expect("log"))
            .spawn()
            .expect("spawn docker-registry");
        let d = Distribution { child, addr, log };
        for _ in 0..300 {
            if std::net::TcpStream::connect(&d.addr).is_ok() {
                return d;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("docker-registry did not start:\n{}", d.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Answered GETs of `path` (under /v2/) in its access log, after a marker request that
    /// shows the log has caught up.
    fn gets(&self, path: &str) -> usize {
        static MARKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mark = format!("/v2/mark{}/tags/list", MARKS.fetch_add(1, Ordering::SeqCst));
        raw_request(&self.addr, "GET", &mark, &[]);
        for _ in 0..1000 {
            let log = self.log_text();
            if log.contains(&format!("\"GET {mark} ")) {
                let wanted = format!("\"GET /v2/{path} ");
                return log
                    .lines()
                    .filter(|l| l.contains(&wanted) && l.contains("\" 200 "))
                    .count();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!(
            "the marker request never reached the log:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One platform's image in an OCI layout: a gzip layer holding `/platform` (a real tar,
/// as docker unpacks it) and a config naming its diff ID; the manifest's descriptor.
fn platform_image(layout: &Path, arch: &str) -> (serde_json::Value, Vec<String>) {
    use std::io::Write as _;
    let files = layout.join(format!("rootfs-{arch}"));
    std::fs::create_dir_all(&files).expect("rootfs");
    std::fs::write(files.join("platform"), format!("linux/{arch}\n")).expect("file");
    std::fs::write(
        files.join("noise"),
        common::noise(200_000, arch.len() as u64),
    )
    .expect("noise");
    let tar_file = layout.join(format!("layer-{arch}.tar"));
    common::sh(&format!(
        "tar -C '{}' --owner=0 --group=0 --mtime=@0 -cf '{}' platform noise",
        files.display(),
        tar_file.display()
    ));
    let tar = std::fs::read(&tar_file).expect("tar");
    std::fs::remove_file(&tar_file).expect("rm tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip");
    let layer = gz.finish().expect("gzip");
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/platform"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&layer), "size": layer.len()}],
    }))
    .expect("manifest");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let mut digests = Vec::new();
    for bytes in [&layer, &config, &manifest] {
        let d = sha256(bytes);
        std::fs::write(blobs.join(&d["sha256:".len()..]), bytes).expect("blob");
        digests.push(d);
    }
    let descriptor = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha256(&manifest), "size": manifest.len(),
        "platform": {"architecture": arch, "os": "linux"},
    });
    (descriptor, digests)
}

/// The architecture name of this machine in image platforms, and another one.
fn architectures() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "aarch64" => ("arm64", "amd64"),
        _ => ("amd64", "arm64"),
    }
}

/// Distribution 2.8 with htpasswd as the upstream, holding a two-platform index: docker
/// (through its engine's `registry-mirrors`), ctr (through `hosts.toml`, `?ns=docker.io`),
/// skopeo and podman (by prefix) all pull it; the upstream's access log shows the tag, this
/// platform's manifest and each of its blobs fetched once, and nothing of the other platform.
#[test]
fn a_distribution_upstream_serves_every_client_and_only_the_pulled_platform_is_fetched() {
    if !common::installed("/usr/bin/docker-registry", "docker-registry")
        || !common::have_tool("skopeo", "skopeo")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Distribution::start(&dir.path().join("up"));

    // The index, pushed to the upstream by skopeo from an OCI layout.
    let layout = dir.path().join("layout");
    let (here, there) = architectures();
    let (here_desc, here_digests) = platform_image(&layout, here);
    let (there_desc, there_digests) = platform_image(&layout, there);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [here_desc, there_desc],
    }))
    .expect("index");
    let index_digest = sha256(&index);
    std::fs::write(
        layout
            .join("blobs/sha256")
            .join(&index_digest["sha256:".len()..]),
        &index,
    )
    .expect("index blob");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest, "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }]})
        .to_string(),
    )
    .expect("index.json");
    let out = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .args(["--dest-creds", "alice:secret"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{}/lib/multi:latest", up.addr))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo push: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mdir = dir.path().join("mirror");
    std::fs::create_dir_all(&mdir).expect("dir");
    let config = mdir.join("q.toml");
    std::fs::write(
        &config,
        format!(
            "[[mirror]]\nprefix = \"docker.io\"\nupstream = \"http://{}\"\ndefault = true\n\
             username = \"alice\"\npassword = \"secret\"\ntag_ttl = \"1h\"\n",
            up.addr
        ),
    )
    .expect("config");
    let server = serve_config(&mdir, &config);
    let addr = server.addr.clone();
    let (here_layer, here_config, here_manifest) =
        (&here_digests[0], &here_digests[1], &here_digests[2]);
    let counts = || {
        let mut c = vec![up.gets("lib/multi/manifests/latest")];
        for d in here_digests.iter().chain(&there_digests) {
            c.push(
                up.gets(&format!("lib/multi/manifests/{d}"))
                    + up.gets(&format!("lib/multi/blobs/{d}")),
            );
        }
        c
    };
    let before = counts();

    // skopeo and podman by prefix: this platform only.
    let copied = dir.path().join("copied");
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{addr}/docker.io/lib/multi:latest"))
        .arg(format!("dir:{}", copied.display()))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    let manifest = std::fs::read(copied.join("manifest.json")).expect("manifest");
    assert_eq!(
        &sha256(&manifest),
        here_manifest,
        "skopeo got this platform's manifest"
    );
    if common::have_tool("podman", "podman") {
        let image = format!("{addr}/docker.io/lib/multi:latest");
        common::podman_in(
            &dir.path().join("podman"),
            &["pull", "--tls-verify=false", &image],
        );
    }
    // ctr through a hosts.toml mirror entry: `?ns=docker.io` picks the mirror.
    if common::have_tool("containerd", "containerd") {
        let containerd = common::Containerd::start(&dir.path().join("containerd"));
        let hosts = dir.path().join("hosts");
        std::fs::create_dir_all(hosts.join("docker.io")).expect("hosts dir");
        std::fs::write(
            hosts.join("docker.io/hosts.toml"),
            format!("server = \"https://registry-1.docker.io\"\n\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )
        .expect("hosts.toml");
        let hosts = hosts.to_str().expect("utf-8");
        let out = containerd.ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts,
            "docker.io/lib/multi:latest",
        ]);
        assert!(
            out.status.success(),
            "ctr: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_text()
        );
    }
    // docker through its engine's registry-mirrors: an unprefixed name, the default mirror.
    let engine = common::Dockerd::start(
        &dir.path().join("dockerd"),
        &serde_json::json!({"registry-mirrors": [format!("http://{addr}")]}),
    );
    if let Some(engine) = &engine {
        let out = engine.docker(&["pull", "lib/multi:latest"]);
        assert!(
            out.status.success(),
            "docker pull through registry-mirrors: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_text(),
            engine.log()
        );
        let out = engine.docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Architecture}} {{.Id}}",
            "lib/multi:latest",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.starts_with(here) && text.contains(here_config.as_str()),
            "{text}"
        );
    }

    // Upstream: the tag once, this platform's manifest and blobs once each, whatever the
    // number of clients; nothing of the other platform.
    let after = counts();
    let fetched: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        fetched,
        [1, 1, 1, 1, 0, 0, 0],
        "GETs: tag, {here}'s layer/config/manifest, {there}'s"
    );
    let store = mdir.join("store");
    for d in [here_layer, here_config, here_manifest, &index_digest] {
        stored(&store, d);
    }
    for d in &there_digests {
        assert!(!common::blob(&store, d).exists(), "{there}'s {d} fetched");
    }
}

/// Retention: the online collector evicts a mirror's images not pulled for its `retention`
/// (tags, manifests, then blobs) and keeps the ones pulled since; an evicted image pulls
/// again from the upstream. Ages are made by setting the records' access times back, so
/// nothing waits on the clock.
#[test]
fn retention_evicts_what_was_not_pulled_and_keeps_what_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_up = open_upstream(&dir.path().join("old"), &common::noise(40_000, 31));
    let new_up = open_upstream(&dir.path().join("new"), &common::noise(40_000, 32));
    let mdir = dir.path().join("mirror");
    std::fs::create_dir_all(&mdir).expect("dir");
    let config = mdir.join("q.toml");
    std::fs::write(
        &config,
        format!(
            "[[mirror]]\nprefix = \"old\"\nupstream = \"http://{}\"\nretention = \"1h\"\n\n\
             [[mirror]]\nprefix = \"new\"\nupstream = \"http://{}\"\nretention = \"1h\"\n",
            old_up.addr, new_up.addr
        ),
    )
    .expect("config");
    let store = mdir.join("store");
    let config = config.to_str().expect("utf-8").to_owned();
    let own = own_image(&mdir);
    let start = |gc: &[&str]| {
        let mut args = vec!["--no-prepack", "--config", config.as_str()];
        args.extend(own.iter().map(String::as_str));
        args.extend_from_slice(gc);
        Serving::start(&store, &mdir, &args)
    };
    // Without a collector, retention is refused with the reason.
    let out = common::quinistry()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-prepack",
            "--config",
            &config,
        ])
        .arg("--store")
        .arg(dir.path().join("nowhere"))
        .output()
        .expect("quinistry");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--gc-interval"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let first_pass_in_an_hour = ["--gc-interval", "1h"];
    let server = start(&first_pass_in_an_hour);
    pull(&server.addr, "old/lib/tool");
    pull(&server.addr, "new/lib/tool");
    for up in [&old_up, &new_up] {
        stored(&store, &up.report["layer"]);
    }
    drop(server);
    // Two hours pass for both images' records.
    common::sh(&format!(
        "find '{}' -type f -exec touch -a -d '2 hours ago' {{}} +",
        store.join("repositories").display()
    ));
    // One is pulled again: its pull is recorded.
    let server = start(&first_pass_in_an_hour);
    pull(&server.addr, "new/lib/tool");
    drop(server);

    let server = start(&["--gc-interval", "1s", "--grace", "0s", "--link-grace", "0s"]);
    let addr = server.addr.clone();
    let old_layer = common::blob(&store, &old_up.report["layer"]);
    for _ in 0..600 {
        if !old_layer.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!old_layer.exists(), "not evicted:\n{}", server.log_text());
    assert!(
        server.log_text().contains("1 tags"),
        "{}",
        server.log_text()
    );
    let list = raw_request(&addr, "GET", "/v2/old/lib/tool/tags/list", &[]);
    assert_eq!(list.status, 404, "{}", String::from_utf8_lossy(&list.body));
    for key in ["layer", "config", "manifest"] {
        assert!(
            !common::blob(&store, &old_up.report[key]).exists(),
            "old {key} kept"
        );
        assert!(
            common::blob(&store, &new_up.report[key]).exists(),
            "new {key} evicted"
        );
    }
    let catalog =
        String::from_utf8_lossy(&raw_request(&addr, "GET", "/v2/_catalog", &[]).body).into_owned();
    assert!(
        catalog.contains("new/lib/tool") && !catalog.contains("old/lib/tool"),
        "{catalog}"
    );
    // The kept image pulls from the store; the evicted one from its upstream again.
    let gets = upstream_requests(&old_up, "GET");
    assert_eq!(pull(&addr, "new/lib/tool"), new_up.report["manifest"]);
    assert_eq!(pull(&addr, "old/lib/tool"), old_up.report["manifest"]);
    assert!(
        upstream_requests(&old_up, "GET") >= gets + 3,
        "fetched again"
    );
    drop(server);
    let out = common::run_ok(common::quinistry().args(["verify", "--store"]).arg(&store));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 inconsistencies"), "{text}");
}

/// An upstream over TLS with a private CA's certificate: the mirror with that `ca` pulls
/// from it, one without fails with a 503 naming the upstream. The access rules apply to
/// mirrored names like any other: alice may read `tls/*`, bob only `own/*`, and bob's
/// request for the mirrored image is refused before anything is fetched.
#[test]
fn a_tls_upstream_is_trusted_through_its_ca_and_access_rules_apply_to_mirrored_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = common::pki::Pki::new(&dir.path().join("pki"));
    let (crt, key, _) = pki.issue("upstream", false);
    let updir = dir.path().join("up");
    std::fs::create_dir_all(&updir).expect("dir");
    let input = updir.join("tool");
    std::fs::write(&input, common::noise(50_000, 51)).expect("input");
    let up = Serving::start(
        &updir.join("store"),
        &updir,
        &[
            "--no-prepack",
            "--tls-cert",
            crt.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
            "--name",
            "lib/tool",
            input.to_str().expect("utf-8"),
        ],
    );
    let mdir = dir.path().join("mirror");
    std::fs::create_dir_all(&mdir).expect("dir");
    let users = mdir.join("htpasswd");
    let hash = bcrypt::hash("secret", 4).expect("hash");
    std::fs::write(&users, format!("alice:{hash}\nbob:{hash}\n")).expect("htpasswd");
    let config = mdir.join("q.toml");
    std::fs::write(
        &config,
        format!(
            "[access]\nhtpasswd = {users:?}\n\n[access.users.alice]\nread = [\"*\"]\n\n\
             [access.users.bob]\nread = [\"own/*\"]\n\n\
             [[mirror]]\nprefix = \"tls\"\nupstream = \"https://{addr}\"\nca = {ca:?}\n\n\
             [[mirror]]\nprefix = \"untrusted\"\nupstream = \"https://{addr}\"\n",
            addr = up.addr,
            ca = pki.ca_file(),
        ),
    )
    .expect("config");
    let server = serve_config(&mdir, &config);
    let addr = server.addr.as_str();
    let basic = |user: &str| {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:secret"));
        format!("Authorization: Basic {token}")
    };
    let (alice, bob) = (basic("alice"), basic("bob"));
    let path = "/v2/tls/lib/tool/manifests/latest";

    let refused = raw_request(addr, "GET", path, &[OCI, &bob]);
    assert_eq!(
        refused.status,
        403,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    let anonymous = raw_request(addr, "GET", path, &[OCI]);
    assert_eq!(anonymous.status, 401);
    let catalog = |who: &str| {
        String::from_utf8_lossy(&raw_request(addr, "GET", "/v2/_catalog", &[who]).body).into_owned()
    };
    assert!(
        !catalog(&alice).contains("tls/lib/tool"),
        "a refused request fetched from the upstream"
    );

    let m = raw_request(addr, "GET", path, &[OCI, &alice]);
    assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
    assert_eq!(sha256(&m.body), up.report["manifest"]);
    let layer = &up.report["layer"];
    let b = raw_request(
        addr,
        "GET",
        &format!("/v2/tls/lib/tool/blobs/{layer}"),
        &[&alice],
    );
    assert_eq!(b.status, 200);
    assert_eq!(&sha256(&b.body), layer);

    assert!(catalog(&alice).contains("tls/lib/tool"));
    assert!(!catalog(&bob).contains("tls/lib/tool"), "{}", catalog(&bob));

    // Without the CA the upstream's certificate is not trusted: a 503 naming it.
    let untrusted = raw_request(
        addr,
        "GET",
        "/v2/untrusted/lib/tool/manifests/latest",
        &[OCI, &alice],
    );
    assert_eq!(
        untrusted.status,
        503,
        "{}",
        String::from_utf8_lossy(&untrusted.body)
    );
    let text = String::from_utf8_lossy(&untrusted.body).into_owned();
    assert!(text.contains(&format!("https://{}", up.addr)), "{text}");
    assert!(
        text.to_lowercase().contains("certificate"),
        "the reason: {text}"
    );
}
