//! Helpers shared by the integration tests: run the real binary, read its report, inspect a
//! store with the system's own tools.
#![allow(dead_code)] // each test binary uses a different subset

pub mod cluster;
pub mod pki;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_quinistry");

/// The tests' HTTP client. reqwest's rustls takes the process's crypto provider: ring, as
/// the server's (one provider in the build, not two).
pub fn http() -> reqwest::Client {
    http_builder().build().expect("HTTP client")
}

/// `http()`, to be set up further.
pub fn http_builder() -> reqwest::ClientBuilder {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A `quinistry` command with a clean environment: no `SOURCE_DATE_EPOCH` and no
/// `QUINISTRY_*` setting of the caller's reaches it.
pub fn quinistry() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("SOURCE_DATE_EPOCH").env("RUST_LOG", "warn");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("QUINISTRY_") && key != "QUINISTRY_REQUIRE_CLIENTS" {
            c.env_remove(key);
        }
    }
    c
}

/// `quinistry pack --store STORE`, ready for more arguments.
pub fn pack_in(store: &Path) -> Command {
    let mut c = quinistry();
    c.arg("pack").arg("--store").arg(store);
    c
}

/// Runs and insists on success, showing stderr otherwise.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run quinistry");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `key  value …` lines of `quinistry pack`'s report, first word of each value.
pub fn report(out: &Output) -> HashMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// Path of a blob in a store, from a `sha256:<hex>` string.
pub fn blob(store: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    store.join("blobs/sha256").join(hex)
}

/// Every file under `dir` (empty if `dir` does not exist).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Runs a shell pipeline and returns its stdout, trimmed.
pub fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// sha256 of a file as computed by coreutils' sha256sum, as `sha256:<hex>`.
pub fn sha256sum(path: &Path) -> String {
    let line = sh(&format!("sha256sum '{}'", path.display()));
    format!("sha256:{}", line.split_whitespace().next().expect("hash"))
}

/// Whether an external client is present. Missing is a skip, unless CI asked for every
/// client (QUINISTRY_REQUIRE_CLIENTS=1), in which case it is a failure.
pub fn have_tool(name: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip(&format!(
            "{name} not found; install the Debian package {package} to run it"
        ));
    }
    found
}

/// Records that the calling test skips its checks (it then returns, and libtest counts it as
/// passed), or fails it when CI asked for every client (QUINISTRY_REQUIRE_CLIENTS=1). The
/// skips of a test binary are listed on stderr after its summary, where a plain `cargo test`
/// shows them, not only under `--nocapture`.
pub fn skip(why: &str) {
    use std::sync::{Mutex, Once};
    static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static AT_EXIT: Once = Once::new();
    extern "C" fn list_skipped() {
        let skipped = SKIPPED.lock().unwrap_or_else(|p| p.into_inner());
        if !skipped.is_empty() {
            eprintln!("SKIPPED {} tests of this binary:", skipped.len());
            for line in skipped.iter() {
                eprintln!("  SKIPPED {line}");
            }
        }
    }
    assert!(
        std::env::var_os("QUINISTRY_REQUIRE_CLIENTS").is_none(),
        "required (QUINISTRY_REQUIRE_CLIENTS is set), but: {why}"
    );
    // libtest runs each test on a thread named after it.
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed thread)")
        .to_owned();
    eprintln!("SKIPPED: {why}");
    let mut skipped = SKIPPED.lock().unwrap_or_else(|p| p.into_inner());
    let line = format!("{test}: {why}");
    if !skipped.contains(&line) {
        skipped.push(line);
    }
    // SAFETY: `list_skipped` is a plain function that stays valid for the life of the
    // process, which is all atexit asks of it.
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(list_skipped);
    });
}

/// A zstd stream, decompressed by the zstd library async-compression wraps (the CI machine
/// need not have the zstd program). Sync tests call it through `unzstd_blocking`.
pub async fn unzstd(bytes: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    async_compression::tokio::bufread::ZstdDecoder::new(bytes)
        .read_to_end(&mut out)
        .await
        .expect("unzstd");
    out
}

/// `unzstd` outside an async runtime.
pub fn unzstd_blocking(bytes: &[u8]) -> Vec<u8> {
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(unzstd(bytes))
}

/// Deterministic pseudo-random bytes (xorshift): incompressible test data without a crate.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A response read off a raw socket: for requests an HTTP client library would refuse or
/// rewrite (`..` in a path, an 8 KiB path, a bad Range).
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `code` of the first error in an OCI error body; panics if the body is not one.
    pub fn error_code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {self:?}"));
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no errors[0].code in {v}"))
            .to_owned()
    }
}

/// Sends `method path` with extra header lines over a fresh connection (closed after the
/// response) and reads the whole response.
pub fn raw_request(addr: &str, method: &str, path: &str, headers: &[&str]) -> RawResponse {
    raw_request_with_body(addr, method, path, headers, b"")
}

/// `raw_request` with a body after the headers (give its Content-Length among them).
pub fn raw_request_with_body(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> RawResponse {
    try_raw_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `raw_request_with_body`, with the socket's errors (a reset while sending, say) returned
/// rather than panicked on. A client sends its whole body before it reads the answer, as
/// simple clients do.
pub fn try_raw_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(raw)
}

fn parse_response(raw: Vec<u8>) -> std::io::Result<RawResponse> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} in {:?}", String::from_utf8_lossy(&raw)),
        )
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(RawResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// A `quinistry serve` child process on an ephemeral loopback port; killed on drop.
pub struct Serving {
    pub child: std::process::Child,
    /// `127.0.0.1:PORT`, as printed by the server.
    pub addr: String,
    /// The report lines printed before `listening` (manifest, docker, layer, ...).
    pub report: HashMap<String, String>,
    /// The byte counts of report lines that have one.
    pub sizes: HashMap<String, u64>,
    /// Where the server's stderr (its log) goes.
    pub log: PathBuf,
}

impl Serving {
    /// Starts `quinistry serve --listen 127.0.0.1:0 --store STORE ARGS...` and waits until it
    /// prints its address. `log_dir` receives `serve.log`.
    pub fn start(store: &Path, log_dir: &Path, args: &[&str]) -> Serving {
        Serving::start_with_log(store, log_dir, args, "info")
    }

    /// `start`, logging with the `RUST_LOG` filter `log_filter`.
    pub fn start_with_log(
        store: &Path,
        log_dir: &Path,
        args: &[&str],
        log_filter: &str,
    ) -> Serving {
        use std::io::BufRead;
        let log = log_dir.join("serve.log");
        let mut child = quinistry()
            .env("RUST_LOG", log_filter)
            .args(["serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(store)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn quinistry serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut report = HashMap::new();
        let mut sizes = HashMap::new();
        let mut lines = std::io::BufReader::new(stdout).lines();
        while let Some(line) = lines.next() {
            let line = line.expect("read stdout");
            let mut words = line.split_whitespace();
            if let (Some(k), Some(v)) = (words.next(), words.next()) {
                if let Some(size) = words.next().and_then(|w| w.parse().ok()) {
                    sizes.insert(k.to_owned(), size);
                }
                if k == "listening" {
                    let addr = v
                        .trim_start_matches("http://")
                        .trim_start_matches("https://")
                        .to_owned();
                    // Keep reading whatever else it prints: its stdout stays open.
                    std::thread::spawn(move || lines.for_each(drop));
                    return Serving {
                        child,
                        addr,
                        report,
                        sizes,
                        log,
                    };
                }
                report.insert(k.to_owned(), v.to_owned());
            }
        }
        let status = child.wait().expect("wait");
        panic!(
            "quinistry serve exited ({status}) before listening:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The size printed after a report line's digest (`layer  sha256:...  123 B`).
    pub fn report_size(&self, key: &str) -> u64 {
        self.sizes
            .get(key)
            .copied()
            .unwrap_or_else(|| panic!("no size for {key} in the report"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a Docker engine answers (`docker info`), with the same skip-or-fail rule as
/// `have_tool`. CI starts a private dockerd and points DOCKER_HOST at it.
pub fn have_docker() -> bool {
    if !have_tool("docker", "docker.io") {
        return false;
    }
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(&format!(
            "no Docker engine answers `docker info` (DOCKER_HOST={:?}); install docker.io and start dockerd (see .ci/run)",
            std::env::var("DOCKER_HOST").unwrap_or_default()
        ));
    }
    ok
}

/// `docker ARGS`, its output whatever the exit status.
pub fn docker_output(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker")
}

/// Whether `program` is installed from the Debian package `package` (skip or fail if not).
pub fn installed(program: &str, package: &str) -> bool {
    let ok = Path::new(program).exists()
        && Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}", package])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).ends_with("installed"));
    if !ok {
        skip(&format!(
            "{program} from the Debian package {package} is not installed: apt-get install {package}"
        ));
    }
    ok
}

/// Runs `docker ARGS` and insists on success; its stdout, trimmed.
pub fn docker(args: &[&str]) -> String {
    let out = run_ok(Command::new("docker").args(args));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the containers and images a test made, even when an assertion fails, so a CI
/// engine stays clean. Containers go first: an image in use cannot be removed.
#[derive(Default)]
pub struct DockerCleanup {
    containers: Vec<String>,
    images: Vec<String>,
}

impl DockerCleanup {
    pub fn images(images: &[&str]) -> DockerCleanup {
        let mut c = DockerCleanup::default();
        for i in images {
            c.image(i);
        }
        c
    }

    pub fn image(&mut self, image: &str) {
        self.images.push(image.to_owned());
    }

    pub fn container(&mut self, name: &str) {
        self.containers.push(name.to_owned());
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

/// A loopback port that was free a moment ago, for a server we cannot ask for port 0
/// (a container on the host network).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Builds, with the system C compiler, a program `app` linked against a shared library of
/// ours, `lib/libgreet.so.1` (a symlink to `libgreet.so.1.0`, as sonames usually are),
/// found through `RUNPATH=$ORIGIN/lib`. `app NAME` prints `hello, NAME, from libgreet`.
/// Returns the path of `app`.
pub fn build_greeter(dir: &Path) -> PathBuf {
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).expect("mkdir lib");
    std::fs::write(
        dir.join("greet.c"),
        "#include <stdio.h>\nvoid greet(const char *who) { printf(\"hello, %s, from libgreet\\n\", who); }\n",
    )
    .expect("write greet.c");
    std::fs::write(
        dir.join("app.c"),
        "void greet(const char *);\nint main(int argc, char **argv) { greet(argc > 1 ? argv[1] : \"world\"); return 0; }\n",
    )
    .expect("write app.c");
    let d = dir.display();
    sh(&format!(
        "cd '{d}' && cc -shared -fPIC -Wl,-soname,libgreet.so.1 -o lib/libgreet.so.1.0 greet.c \
         && ln -sf libgreet.so.1.0 lib/libgreet.so.1 \
         && cc -o app app.c lib/libgreet.so.1.0 -Wl,--enable-new-dtags,-rpath,'$ORIGIN/lib'"
    ));
    dir.join("app")
}

/// Every entry of a gzip layer blob as `tar tvzf` lists it: `(type char, path, link target)`.
pub fn layer_entries(blob: &Path) -> Vec<(char, String, String)> {
    sh(&format!("tar tvzf '{}'", blob.display()))
        .lines()
        .filter_map(|l| {
            let kind = l.chars().next()?;
            // `perm owner size date time path [-> target]`
            let rest: Vec<&str> = l.split_whitespace().skip(5).collect();
            let joined = rest.join(" ");
            let (path, target) = match joined.split_once(" -> ") {
                Some((p, t)) => (p.to_owned(), t.to_owned()),
                None => (joined, String::new()),
            };
            Some((kind, path, target))
        })
        .collect()
}

/// A response body read as JSON, with the body in the panic message when it is not.
#[allow(async_fn_in_trait)] // used only by these tests, on one runtime
pub trait JsonValue {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        let bytes = self.bytes().await.expect("body");
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
    }
}

/// Runs podman with a private image store under `root` (nothing shared with the machine's
/// podman, removed with the test's temp dir); its stdout, trimmed.
pub fn podman_in(root: &Path, args: &[&str]) -> String {
    let out = run_ok(
        std::process::Command::new("podman")
            .arg("--root")
            .arg(root.join("root"))
            .arg("--runroot")
            .arg(root.join("run"))
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A containerd of the test's own: root, state, socket and config under `dir`, no CRI plugin
/// (nothing but pulls); killed on drop.
pub struct Containerd {
    child: std::process::Child,
    socket: std::path::PathBuf,
}

impl Containerd {
    pub fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).expect("containerd dir");
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = {:?}\n",
                dir.join("root"),
                dir.join("state"),
                socket
            ),
        )
        .expect("containerd config");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).expect("log"))
            .spawn()
            .expect("spawn containerd");
        let containerd = Containerd { child, socket };
        for _ in 0..200 {
            if containerd.ctr(&["version"]).status.success() {
                return containerd;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "containerd did not start:\n{}",
            std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
        );
    }

    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "quinistry-test"])
            .args(args)
            .output()
            .expect("run ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `docker login ADDR -u USER --password-stdin` with the client config in `config` (the
/// machine's own stays untouched).
pub fn docker_login(config: &Path, addr: &str, user: &str, password: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new("docker")
        .env("DOCKER_CONFIG", config)
        .args(["login", addr, "-u", user, "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker login");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(password).expect("password");
    drop(stdin);
    child.wait_with_output().expect("docker login")
}

/// The samples of a scrape, parsed by a Prometheus text parser.
pub fn scrape(addr: &str) -> Vec<prometheus_parse::Sample> {
    let body = raw_request(addr, "GET", "/metrics", &[]).body;
    let text = String::from_utf8(body).expect("utf-8");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .expect("exposition format")
        .samples
}

/// The value of the sample `name` whose labels include `labels`; 0 if there is none.
pub fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// The `metrics  http://ADDR/metrics` line of the report.
pub fn metrics_addr(server: &Serving) -> String {
    server.report["metrics"]
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned()
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    sh("id -u") == "0"
}

/// A Docker engine of the test's own (root only), with its data, exec root, pid file,
/// socket and daemon.json under `dir`, for settings the CI's engine does not have (a
/// `registry-mirrors` entry); killed on drop, and what it mounted under `dir` unmounted.
pub struct Dockerd {
    child: std::process::Child,
    dir: std::path::PathBuf,
    pub host: String,
}

impl Dockerd {
    /// Starts dockerd with `config` as its daemon.json; `None` (a skip, or a failure in CI)
    /// when dockerd is missing or the test is not root.
    pub fn start(dir: &Path, config: &serde_json::Value) -> Option<Dockerd> {
        if !have_tool("dockerd", "docker.io") || !have_tool("docker", "docker.io") {
            return None;
        }
        if !is_root() {
            skip("a dockerd of the test's own needs root");
            return None;
        }
        std::fs::create_dir_all(dir).expect("dockerd dir");
        let json = dir.join("daemon.json");
        std::fs::write(&json, config.to_string()).expect("daemon.json");
        let socket = dir.join("docker.sock");
        let host = format!("unix://{}", socket.display());
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--bridge=none", "--storage-driver=vfs"])
            .arg("--config-file")
            .arg(&json)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .args(["-H", &host])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log")).expect("log"))
            .spawn()
            .expect("spawn dockerd");
        let dockerd = Dockerd {
            child,
            dir: dir.to_owned(),
            host,
        };
        for _ in 0..600 {
            if dockerd.docker(&["info"]).status.success() {
                return Some(dockerd);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "dockerd did not start:\n{}",
            std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
        );
    }

    /// `docker ARGS` against this engine, its output whatever the exit status.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", self.dir.join("client"))
            .args(args)
            .output()
            .expect("docker")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop its containerd; a kill after a while if it does not.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Mounts it left (vfs makes none, its exec root may): deepest first.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let prefix = self.dir.display().to_string();
            let mut under: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&prefix))
                .collect();
            under.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in under {
                let _ = Command::new("umount").args(["-l", m]).status();
            }
        }
    }
}

/// Pulls `name:latest` through `addr` by hand: the manifest, then each blob, checking every
/// digest; the manifest's digest.
pub fn pull_latest(addr: &str, name: &str) -> String {
    let m = raw_request(
        addr,
        "GET",
        &format!("/v2/{name}/manifests/latest"),
        &["Accept: application/vnd.oci.image.manifest.v1+json"],
    );
    assert_eq!(
        m.status,
        200,
        "{name}: {}",
        String::from_utf8_lossy(&m.body)
    );
    let digest = cluster::sha256(&m.body);
    assert_eq!(m.header("docker-content-digest"), Some(digest.as_str()));
    let manifest: serde_json::Value = serde_json::from_slice(&m.body).expect("json");
    let mut blobs = vec![
        manifest["config"]["digest"]
            .as_str()
            .expect("config")
            .to_owned(),
    ];
    for layer in manifest["layers"].as_array().expect("layers") {
        blobs.push(layer["digest"].as_str().expect("digest").to_owned());
    }
    for blob in blobs {
        let b = raw_request(addr, "GET", &format!("/v2/{name}/blobs/{blob}"), &[]);
        assert_eq!(
            b.status,
            200,
            "{name} {blob}: {}",
            String::from_utf8_lossy(&b.body)
        );
        assert_eq!(cluster::sha256(&b.body), blob, "the bytes of {blob}");
    }
    digest
}
