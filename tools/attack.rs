//! What one client can do to the server, measured: each attack of issue 17's table against a
//! fresh `quinistry serve` on loopback, with the server's file descriptors and RSS, the
//! latency of a normal request during the attack, the status codes the attack got, and
//! (with a Docker engine) whether a `docker pull` and a `docker push` succeed meanwhile.
//!
//! A tool, not a benchmark or a test: `cargo run --release --example attack` runs it against
//! this build (`cargo build --release` first: it runs the `quinistry` beside it in the target
//! folder); `QUINISTRY_BIN=/path/to/quinistry` another
//! (an older one, for before/after figures: flags it does not know are left out when
//! `QUINISTRY_BEFORE=1`). Every attack is bounded in count and time, stops by itself, and
//! talks to 127.0.0.1 only.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running server and what we measure of it.
struct Server {
    child: Child,
    addr: SocketAddr,
    _store: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (RSS now, peak RSS) in MiB.
    fn rss(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }
}

fn bin() -> String {
    std::env::var("QUINISTRY_BIN").unwrap_or_else(|_| {
        // target/<profile>/examples/attack → target/<profile>/quinistry
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("quinistry")))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "quinistry".to_owned())
    })
}

fn before() -> bool {
    std::env::var_os("QUINISTRY_BEFORE").is_some()
}

/// Starts a server over a fresh store with `app:v1` (a small program) packed, and `args`.
fn start(args: &[&str], new_args: &[&str]) -> Server {
    let store = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(bin());
    cmd.env("RUST_LOG", "warn")
        .args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(store.path())
        .args([
            "--closure",
            "elf",
            "--name",
            "app",
            "--tag",
            "v1",
            "/usr/bin/true",
        ])
        .args(args);
    if !before() {
        cmd.args(new_args);
    } else {
        // The older build has no --closure either.
        let all: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let keep: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(i, a)| *a != "--closure" && !(i > &0 && all[i - 1] == "--closure"))
            .map(|(_, a)| a.clone())
            .collect();
        cmd = Command::new(bin());
        cmd.env("RUST_LOG", "warn").args(keep);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn quinistry");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("stdout");
        if let Some(addr) = line.strip_prefix("listening http://") {
            let addr = addr.trim().parse().expect("address");
            std::thread::spawn(move || lines.for_each(drop));
            return Server {
                child,
                addr,
                _store: store,
            };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not start");
}

/// Latency of `n` requests for `path` from a normal client during an attack: (p50 ms, max ms,
/// failures).
async fn probe(addr: SocketAddr, path: &str, n: usize) -> (f64, f64, usize) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut times = Vec::new();
    let mut failures = 0;
    for _ in 0..n {
        let t = Instant::now();
        match http.get(format!("http://{addr}{path}")).send().await {
            Ok(r) if r.status().is_success() => times.push(t.elapsed().as_secs_f64() * 1e3),
            _ => failures += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times.sort_by(f64::total_cmp);
    let p50 = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let max = times.last().copied().unwrap_or(f64::NAN);
    (p50, max, failures)
}

/// Whether a docker pull and a docker push against the server succeed now; `None` without
/// a Docker engine.
fn docker_round(
    addr: SocketAddr,
    n: usize,
    config: Option<&std::path::Path>,
) -> Option<(bool, bool)> {
    let ok = |args: &[&str]| {
        let mut c = Command::new("docker");
        if let Some(dir) = config {
            c.arg("--config").arg(dir);
        }
        c.args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(&["info"]) {
        return None;
    }
    let image = format!("{addr}/app:v1");
    let pushed = format!("{addr}/pushed:v{n}");
    let _ = ok(&["rmi", "-f", &image, &pushed]);
    let pull = ok(&["pull", "-q", &image]);
    let push = pull && ok(&["tag", &image, &pushed]) && ok(&["push", "-q", &pushed]);
    if pull && !push {
        // Once more, to show why.
        let out = Command::new("docker").args(["push", &pushed]).output();
        if let Ok(out) = out {
            eprintln!(
                "docker push failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = ok(&["rmi", "-f", &image, &pushed]);
    Some((pull, push))
}

/// One row of the report.
struct Row {
    attack: &'static str,
    statuses: BTreeMap<String, usize>,
    fds: usize,
    rss_before: f64,
    rss_during: f64,
    rss_after: f64,
    peak: f64,
    probe: (f64, f64, usize),
    docker: Option<(bool, bool)>,
}

fn print(row: &Row) {
    let statuses: Vec<String> = row
        .statuses
        .iter()
        .map(|(k, v)| format!("{k}x{v}"))
        .collect();
    let docker = match row.docker {
        None => "no engine".to_owned(),
        Some((pull, push)) => format!(
            "pull {}, push {}",
            if pull { "ok" } else { "FAILED" },
            if push { "ok" } else { "FAILED" }
        ),
    };
    println!(
        "| {} | {} | {} | {:.0} / {:.0} / {:.0} (peak {:.0}) MiB | {:.1} / {:.1} ms, {} failed | {} |",
        row.attack,
        statuses.join(" "),
        row.fds,
        row.rss_before,
        row.rss_during,
        row.rss_after,
        row.peak,
        row.probe.0,
        row.probe.1,
        row.probe.2,
        docker
    );
}

type Statuses = Arc<std::sync::Mutex<BTreeMap<String, usize>>>;

/// The attacker's HTTP client, from 127.0.0.2: another client address than the probe's and
/// docker's (127.0.0.1), as an attacker elsewhere would be, for the per-client limits.
fn attacker() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client")
}

/// Whether to run the attack `key` (idle, uploads, patch, slow, manifests, auth): all, or
/// those `ATTACK=key,key` names.
fn wanted(key: &str) -> bool {
    std::env::var("ATTACK").map_or(true, |w| w.split(',').any(|k| k == key))
}

/// Counts a response by `prefix` and its status ("error" when there was none).
fn count_response(statuses: &Statuses, prefix: &str, r: reqwest::Result<reqwest::Response>) {
    count(
        statuses,
        r.map_or("error".into(), |r| {
            format!("{prefix}{}", r.status().as_u16())
        }),
    );
}

fn count(statuses: &Statuses, what: String) {
    *statuses
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(what)
        .or_default() += 1;
}

/// Runs `attack` in the background, measures during it (probe, fds, RSS, docker), then after.
async fn measure<F>(
    name: &'static str,
    server: &Server,
    probe_path: &str,
    attack: F,
    statuses: Statuses,
    n: usize,
    docker_config: Option<std::path::PathBuf>,
) -> Row
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (rss_before, _) = server.rss();
    let task = tokio::spawn(attack);
    // Let the attack build up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let probed = probe(server.addr, probe_path, 100).await;
    let fds = server.fds();
    let (rss_during, _) = server.rss();
    let addr = server.addr;
    let docker =
        tokio::task::spawn_blocking(move || docker_round(addr, n, docker_config.as_deref()))
            .await
            .expect("docker");
    let _ = tokio::time::timeout(Duration::from_secs(90), task).await;
    // Memory back 10 s after the attackers left.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (rss_after, peak) = server.rss();
    let statuses = statuses.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Row {
        attack: name,
        statuses,
        fds,
        rss_before,
        rss_during,
        rss_after,
        peak,
        probe: probed,
        docker,
    }
}

/// 20,000 connections that send nothing, held 12 s.
async fn idle_connections(addr: SocketAddr, statuses: Statuses) {
    tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        let started = Instant::now();
        while held.len() < 20_000 && started.elapsed() < Duration::from_secs(8) {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => held.push(s),
                Err(_) => count(&statuses, "connect failed".into()),
            }
        }
        count(&statuses, format!("held {}", held.len()));
        std::thread::sleep(Duration::from_secs(12).saturating_sub(started.elapsed()));
        // Those the server closed read EOF at once.
        let mut closed = 0;
        for s in &mut held {
            let _ = s.set_nonblocking(true);
            let mut byte = [0u8; 1];
            let gone = match s.read(&mut byte) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            };
            closed += usize::from(gone);
        }
        count(&statuses, format!("closed by server {closed}"));
    })
    .await
    .expect("join");
}

/// 20,000 upload sessions opened and never finished, 64 at a time.
async fn upload_sessions(addr: SocketAddr, statuses: Statuses, n: usize) {
    let http = attacker();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (http, statuses, next) = (http.clone(), statuses.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let r = http
                    .post(format!("http://{addr}/v2/flood/blobs/uploads/"))
                    .send()
                    .await;
                count_response(&statuses, "", r);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// `n` sessions each sent one 1 MB PATCH, 32 at a time.
async fn patched_sessions(addr: SocketAddr, statuses: Statuses, n: usize) {
    let http = attacker();
    let chunk = bytes::Bytes::from(vec![7u8; 1_000_000]);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (http, statuses, next, chunk) =
            (http.clone(), statuses.clone(), next.clone(), chunk.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let Ok(r) = http
                    .post(format!("http://{addr}/v2/mem/blobs/uploads/"))
                    .send()
                    .await
                else {
                    count(&statuses, "error".into());
                    continue;
                };
                let Some(location) = r
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .map(str::to_owned)
                else {
                    count(&statuses, format!("post {}", r.status().as_u16()));
                    continue;
                };
                let r = http
                    .patch(format!("http://{addr}{location}"))
                    .body(chunk.clone())
                    .send()
                    .await;
                count_response(&statuses, "patch ", r);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// For 12 s: 100 PATCH bodies trickled a byte every 200 ms, 100 downloads never read (HTTP/1.1),
/// and 5 HTTP/2 connections opening 200 streams each with a zero window.
async fn slow_clients(addr: SocketAddr, statuses: Statuses, blob: String) {
    let stop = Instant::now() + Duration::from_secs(12);
    let mut threads = Vec::new();
    for i in 0..200 {
        let (statuses, blob) = (statuses.clone(), blob.clone());
        threads.push(std::thread::spawn(move || {
            let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                count(&statuses, "connect failed".into());
                return;
            };
            if i % 2 == 0 {
                let _ = write!(s, "POST /v2/slow/blobs/uploads/?digest=sha256:{} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", "0".repeat(64));
                while Instant::now() < stop {
                    if s.write_all(b"x").is_err() {
                        count(&statuses, "trickle ended by server".into());
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                count(&statuses, "trickle held".into());
            } else {
                let _ = write!(s, "GET {blob} HTTP/1.1\r\nHost: x\r\n\r\n");
                std::thread::sleep(stop.saturating_duration_since(Instant::now()));
                count(&statuses, "download unread".into());
            }
        }));
    }
    let mut h2 = Vec::new();
    for _ in 0..5 {
        let (statuses, blob) = (statuses.clone(), blob.clone());
        h2.push(tokio::spawn(async move {
            let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            let mut builder =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .initial_stream_window_size(0)
                .initial_connection_window_size(0)
                .adaptive_window(false);
            let Ok((sender, conn)) = builder
                .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(
                    tcp,
                ))
                .await
            else {
                count(&statuses, "h2 handshake failed".into());
                return;
            };
            tokio::spawn(conn);
            let mut streams = Vec::new();
            for _ in 0..200 {
                let mut sender = sender.clone();
                let req = hyper::Request::get(format!("http://{addr}{blob}"))
                    .body(http_body_util::Empty::new());
                let Ok(req) = req else { continue };
                streams.push(tokio::spawn(async move {
                    let _ = sender.ready().await;
                    sender.send_request(req).await.map(|r| r.status().as_u16())
                }));
            }
            let mut opened = 0;
            for s in streams {
                if let Ok(Ok(Ok(_))) = tokio::time::timeout(Duration::from_secs(12), s).await {
                    opened += 1;
                }
            }
            count(&statuses, format!("h2 streams answered {opened}"));
            tokio::time::sleep(stop.saturating_duration_since(Instant::now())).await;
        }));
    }
    for t in h2 {
        let _ = t.await;
    }
    tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())))
        .await
        .expect("join");
}

/// A connection from the attacker's address, 127.0.0.2.
async fn attacker_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    attacker_tcp_buffered(addr, None).await
}

/// `attacker_tcp`, with a receive buffer of `recv` bytes (a client that reads slowly).
async fn attacker_tcp_buffered(
    addr: SocketAddr,
    recv: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(size) = recv {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(SocketAddr::from(([127, 0, 0, 2], 0)))?;
    socket.connect(addr).await
}

/// 100 HTTP/2 connections x 32 streams on a blob, with the default window (64 KiB) that is
/// never opened further (the bodies are never read), held 45 s.
async fn h2_shut_windows(addr: SocketAddr, statuses: Statuses, blob: String) {
    let stop = Instant::now() + Duration::from_secs(45);
    let mut conns = Vec::new();
    for _ in 0..100 {
        let (statuses, blob) = (statuses.clone(), blob.clone());
        conns.push(tokio::spawn(async move {
            let Ok(tcp) = attacker_tcp(addr).await else {
                count(&statuses, "connect failed".into());
                return;
            };
            let builder =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            let Ok((sender, conn)) = builder
                .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(
                    tcp,
                ))
                .await
            else {
                count(&statuses, "h2 handshake failed".into());
                return;
            };
            let conn = tokio::spawn(conn);
            let mut held = Vec::new();
            for _ in 0..32 {
                let mut sender = sender.clone();
                let Ok(req) = hyper::Request::get(format!("http://{addr}{blob}"))
                    .body(http_body_util::Empty::new())
                else {
                    continue;
                };
                let _ = sender.ready().await;
                match tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await
                {
                    // The response (and its body) is kept, never read.
                    Ok(Ok(r)) => held.push(r),
                    _ => count(&statuses, "h2 stream not answered".into()),
                }
            }
            count(&statuses, format!("h2 streams held {}", held.len()));
            tokio::select! {
                _ = conn => count(&statuses, "h2 connection closed by server".into()),
                () = tokio::time::sleep(stop.saturating_duration_since(Instant::now())) => {
                    count(&statuses, "h2 connection still open at the end".into())
                }
            }
        }));
    }
    for c in conns {
        let _ = c.await;
    }
}

/// 4,500 connections from one address, each a monolithic upload whose body comes a byte a
/// second, held 45 s.
async fn trickled_uploads(addr: SocketAddr, statuses: Statuses) {
    use tokio::io::AsyncWriteExt;
    let stop = Instant::now() + Duration::from_secs(45);
    let mut tasks = Vec::new();
    for _ in 0..4500 {
        let statuses = statuses.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = attacker_tcp(addr).await else {
                count(&statuses, "connect failed".into());
                return;
            };
            let head = format!("POST /v2/slow/blobs/uploads/?digest=sha256:{} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", "0".repeat(64));
            if s.write_all(head.as_bytes()).await.is_err() {
                count(&statuses, "closed at once".into());
                return;
            }
            while Instant::now() < stop {
                if s.write_all(b"x").await.is_err() {
                    count(&statuses, "cut by the server".into());
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            count(&statuses, "held to the end".into());
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// 4,400 downloads from one address, each read a byte a second, held 45 s.
async fn slow_readers(addr: SocketAddr, statuses: Statuses, blob: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stop = Instant::now() + Duration::from_secs(45);
    let mut tasks = Vec::new();
    for _ in 0..4400 {
        let (statuses, blob) = (statuses.clone(), blob.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = attacker_tcp_buffered(addr, Some(4096)).await else {
                count(&statuses, "connect failed".into());
                return;
            };
            let _ = s
                .write_all(format!("GET {blob} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await;
            let mut byte = [0u8; 1];
            while Instant::now() < stop {
                match s.read(&mut byte).await {
                    Ok(1) => tokio::time::sleep(Duration::from_secs(1)).await,
                    _ => {
                        count(&statuses, "cut by the server".into());
                        return;
                    }
                }
            }
            count(&statuses, "held to the end".into());
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// 150 manifests of 4 MiB pushed, then each read once.
async fn big_manifests(addr: SocketAddr, statuses: Statuses) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let config = b"{}".to_vec();
    let digest = |b: &[u8]| {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
    };
    let c = digest(&config);
    let _ = http
        .post(format!("http://{addr}/v2/big/blobs/uploads/?digest={c}"))
        .body(config)
        .send()
        .await;
    let mut digests = Vec::new();
    for i in 0..150 {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": 2},
            "layers": [],
            "annotations": {"pad": format!("{i}{}", "x".repeat((4 << 20) - 400))},
        });
        let bytes = serde_json::to_vec(&m).expect("json");
        let d = digest(&bytes);
        let r = http
            .put(format!("http://{addr}/v2/big/manifests/{d}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(bytes)
            .send()
            .await;
        count_response(&statuses, "put ", r);
        digests.push(d);
    }
    for d in digests {
        let r = http
            .get(format!("http://{addr}/v2/big/manifests/{d}"))
            .send()
            .await;
        let s = match r {
            Ok(r) => {
                let s = r.status().as_u16();
                let _ = r.bytes().await;
                format!("get {s}")
            }
            Err(_) => "error".into(),
        };
        count(&statuses, s);
    }
}

/// 64 clients sending wrong passwords for 12 s.
async fn wrong_passwords(addr: SocketAddr, statuses: Statuses) {
    let http = attacker();
    let stop = Instant::now() + Duration::from_secs(12);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (http, statuses) = (http.clone(), statuses.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let r = http
                    .post(format!("http://{addr}/v2/app/blobs/uploads/"))
                    .basic_auth("alice", Some(format!("guess-{i}")))
                    .send()
                    .await;
                count_response(&statuses, "", r);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn main() {
    // reqwest's rustls takes the process's crypto provider: ring, as the server's.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    // Our own side needs descriptors for 20,000 connections too.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!("binary: {}", bin());
    println!(
        "| attack | what the attack got | server fds | RSS before / during / 10 s after | GET p50 / max during (from another address) | docker during |"
    );
    println!("|---|---|---|---|---|---|");
    runtime.block_on(async {
        let manifest = "/v2/app/manifests/v1";
        let new = Statuses::default;

        if wanted("idle") {
            let s = start(&["--push"], &[]);
            let st = new();
            let row = measure("20,000 idle connections", &s, manifest, idle_connections(s.addr, st.clone()), st, 1, None).await;
            print(&row);
            drop(s);
        }

        if wanted("uploads") {
            let s = start(&["--push"], &[]);
            let st = new();
            let row = measure("20,000 upload sessions", &s, manifest, upload_sessions(s.addr, st.clone(), 20_000), st, 2, None).await;
            print(&row);
            drop(s);
        }

        if wanted("patch") {
            let s = start(&["--push"], &["--max-uploads", "8000", "--max-uploads-per-client", "8000"]);
            let st = new();
            let row = measure("6,000 sessions x 1 MB PATCH (caps raised to 8,000)", &s, manifest, patched_sessions(s.addr, st.clone(), 6000), st, 3, None).await;
            print(&row);
            drop(s);
        }

        if wanted("slow") {
            let s = start(&["--push"], &[]);
            let layer = {
                let http = reqwest::Client::builder().no_proxy().build().expect("client");
                let big = vec![1u8; 64 << 20];
                let d = {
                    use sha2::Digest as _;
                    format!("sha256:{}", hex::encode(sha2::Sha256::digest(&big)))
                };
                let _ = http
                    .post(format!("http://{}/v2/app/blobs/uploads/?digest={d}", s.addr))
                    .body(big)
                    .send()
                    .await;
                format!("/v2/app/blobs/{d}")
            };
            let st = new();
            let row = measure("slow clients: 100 trickled PATCHes, 100 unread downloads, 5 h2 x 200 zero-window streams", &s, manifest, slow_clients(s.addr, st.clone(), layer), st, 4, None).await;
            print(&row);
            drop(s);
        }

        if wanted("h2") || wanted("trickle") || wanted("readers") {
            // Issue 31's rows: a 12 MB blob, attackers at 127.0.0.2, probes from 127.0.0.1.
            let s = start(&["--push"], &[]);
            let blob = {
                let http = reqwest::Client::builder().no_proxy().build().expect("client");
                let big: Vec<u8> = (0..12u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
                let d = {
                    use sha2::Digest as _;
                    format!("sha256:{}", hex::encode(sha2::Sha256::digest(&big)))
                };
                let _ = http
                    .post(format!("http://{}/v2/app/blobs/uploads/?digest={d}", s.addr))
                    .body(big)
                    .send()
                    .await;
                format!("/v2/app/blobs/{d}")
            };
            if wanted("h2") {
                let st = new();
                let row = measure("100 h2 connections x 32 streams on a 12 MB blob, windows never opened, 45 s", &s, manifest, h2_shut_windows(s.addr, st.clone(), blob.clone()), st, 7, None).await;
                print(&row);
            }
            if wanted("trickle") {
                let st = new();
                let row = measure("4,500 monolithic uploads from one address, a byte a second, 45 s", &s, manifest, trickled_uploads(s.addr, st.clone()), st, 8, None).await;
                print(&row);
            }
            if wanted("readers") {
                let st = new();
                let row = measure("4,400 downloads from one address read a byte a second, 45 s", &s, manifest, slow_readers(s.addr, st.clone(), blob.clone()), st, 9, None).await;
                print(&row);
            }
            drop(s);
        }

        if wanted("manifests") {
            let s = start(&["--push"], &[]);
            let st = new();
            let row = measure("150 manifests of 4 MiB pushed, each read once", &s, manifest, big_manifests(s.addr, st.clone()), st, 5, None).await;
            print(&row);
            drop(s);
        }

        if wanted("auth") {
            let dir = tempfile::tempdir().expect("tempdir");
            let htpasswd = dir.path().join("users");
            let hash = bcrypt::hash("right", 12).expect("hash");
            std::fs::write(&htpasswd, format!("alice:{hash}\n")).expect("htpasswd");
            let h = htpasswd.to_string_lossy().into_owned();
            let s = start(&["--push", "--htpasswd", &h], &[]);
            // docker logs in before the attack (from the same address: a login it already made
            // is remembered, and not throttled with the attacker's).
            let config = dir.path().join("docker");
            let _ = Command::new("docker")
                .arg("--config")
                .arg(&config)
                .args(["login", "-u", "alice", "-p", "right", &s.addr.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let st = new();
            let row = measure("64 clients with wrong passwords (bcrypt cost 12)", &s, manifest, wrong_passwords(s.addr, st.clone()), st, 6, Some(config)).await;
            print(&row);
            drop(s);

        }
    });
}
