//! `quinistry serve` as a process: defaults, startup errors, and SIGTERM draining downloads.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Serving, quinistry, raw_request};
use quinistry::digest::Hasher;

#[test]
fn bare_command_serves_its_own_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let log = dir.path().join("log");
    let mut child = quinistry()
        .env("QUINISTRY_STORE", &store)
        .env("QUINISTRY_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut manifest = None;
    let addr = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "exited before listening: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .expect("line");
        if let Some(d) = line.strip_prefix("manifest") {
            manifest = d.split_whitespace().next().map(str::to_owned);
        }
        if let Some(a) = line.strip_prefix("listening http://") {
            break a.to_owned();
        }
    };
    let r = raw_request(&addr, "HEAD", "/v2/quinistry/manifests/latest", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), manifest.as_deref());
    assert!(store.join("repositories/quinistry/_tags/latest").exists());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn startup_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let input = dir.path().join("f");
    std::fs::write(&input, b"x").expect("input");
    let input = input.to_string_lossy().into_owned();
    let (image, image_latest) = (format!("a={input}"), format!("a:latest={input}"));
    let md5 = dir.path().join("md5.htpasswd");
    std::fs::write(&md5, "ci:$apr1$abcdefgh$0123456789abcdefghijkl\n").expect("htpasswd");
    let md5 = md5.to_string_lossy().into_owned();
    let missing = format!("{input}-missing");
    let root = dir.path().to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str, bool)> = vec![
        // On-demand settings are checked before the store is touched too.
        (
            vec!["--image", &image, "--image", &image_latest],
            "--image a:latest is given twice",
            false,
        ),
        (vec!["--image", "Bad=x"], "invalid --image \"Bad=x\"", false),
        (vec!["--image", "a"], "use NAME[:TAG]=INPUT", false),
        (vec!["--root", &input], "not a directory", false),
        (vec!["--root", &missing], "No such file", false),
        (vec!["--root", &root, "--cmd", "x"], "--cmd", false),
        (
            vec!["--root", &root, "--max-packs", "0"],
            "--max-packs",
            false,
        ),
        (
            vec!["--listen", "localhost"],
            "invalid --listen \"localhost\"",
            false,
        ),
        (
            vec!["--listen", "127.0.0.1:99999"],
            "invalid --listen",
            false,
        ),
        (vec!["--tag", "no tag"], "invalid --tag", false),
        // Pushing where others can reach needs authentication, unless said otherwise.
        (
            vec!["--push", "--listen", "0.0.0.0:0"],
            "needs --htpasswd FILE",
            false,
        ),
        (
            vec!["--push", "--htpasswd", &md5],
            "line 1: user \"ci\" has no bcrypt hash",
            false,
        ),
        (
            vec!["--push", "--htpasswd", &missing],
            "cannot read --htpasswd",
            false,
        ),
        (vec!["--htpasswd", &md5], "add --push", false),
        (
            vec!["--push", "--upload-timeout", "0"],
            "--upload-timeout",
            false,
        ),
        (vec!["--name", "Upper"], "invalid --name", false),
        (vec!["--level", "12"], "level", false),
        (vec!["/does/not/exist"], "/does/not/exist", true),
        // The port is bound before anything is packed, or the store touched.
        (vec!["--listen", &taken, &input], "cannot listen on", false),
    ];
    for (i, (args, expected, store_made)) in cases.into_iter().enumerate() {
        let store = dir.path().join(format!("store{i}"));
        let out = quinistry()
            .arg("serve")
            .arg("--store")
            .arg(&store)
            .args(&args)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("quinistry: "), "{args:?}: {stderr}");
        assert_eq!(store.exists(), store_made, "{args:?}");
    }
}

#[test]
fn verify_refuses_a_store_that_does_not_exist_and_creates_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("typo");
    let out = quinistry()
        .args(["verify", "--store"])
        .arg(&typo)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "verify of a missing store succeeded");
    assert!(stderr.contains("is not a quinistry store"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!typo.exists(), "verify created {}", typo.display());
}

#[test]
fn serve_says_who_may_push_and_warns_of_an_image_input_that_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("not-there-yet");
    let image = format!("later={}", missing.display());
    let server = Serving::start(&dir.path().join("s1"), dir.path(), &["--image", &image]);
    assert_eq!(server.report["access"], "read-only,");
    let log = server.log_text();
    assert!(
        log.contains("cannot be read now") && log.contains(&missing.display().to_string()),
        "{log}"
    );
    drop(server);
    let server = Serving::start(&dir.path().join("s2"), dir.path(), &["--push"]);
    assert_eq!(server.report["access"], "pushes");
}

#[test]
fn sigterm_lets_a_download_in_flight_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve_big(dir.path(), 48 << 20, 5);
    let layer = server.report["layer"].clone();
    let size: u64 = server.report_size("layer");

    let mut conn = std::net::TcpStream::connect(&server.addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        conn,
        "GET /v2/big/blobs/{layer} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut buf = vec![0u8; 64 << 10];
    let mut received = Vec::new();
    let n = conn.read(&mut buf).expect("first bytes");
    received.extend_from_slice(&buf[..n]);

    let pid = server.child.id().to_string();
    common::sh(&format!("kill -TERM {pid}"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(&server.addr).is_err(),
        "still accepting after SIGTERM"
    );
    loop {
        let n = conn.read(&mut buf).expect("rest of the download");
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
    }
    let split = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let mut hasher = Hasher::new();
    hasher.update(&received[split + 4..]);
    let (digest, len) = hasher.finish();
    assert_eq!((digest.to_string(), len), (layer.clone(), size));

    let mut server = server;
    let status = wait_for_exit(&mut server.child, Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    let log = server.log_text();
    assert!(log.contains("shutting down"), "{log}");
    // The access-log line of the download has every byte sent, logged once it was done.
    let request = format!("method=GET path=/v2/big/blobs/{layer} status=200 ");
    let bytes = format!(" bytes={size} ");
    let found: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&request) && l.contains(&bytes))
        .collect();
    assert_eq!(found.len(), 1, "{log}");
    assert!(found[0].contains("complete=true"), "{log}");
}

#[test]
fn a_download_cut_off_by_the_client_is_logged_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve_big(dir.path(), 32 << 20, 9);
    let layer = server.report["layer"].clone();
    let mut conn = std::net::TcpStream::connect(&server.addr).expect("connect");
    write!(
        conn,
        "GET /v2/big/blobs/{layer} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .expect("send");
    let mut buf = vec![0u8; 64 << 10];
    conn.read_exact(&mut buf).expect("first bytes");
    drop(conn);
    // The line is written when the server notices; wait for it rather than guess a time.
    let wanted = format!("path=/v2/big/blobs/{layer} status=200");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let line = loop {
        let log = server.log_text();
        if let Some(l) = log.lines().find(|l| l.contains(&wanted)) {
            break l.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access-log line:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(line.contains("complete=false"), "{line}");
    let sent: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes="))
        .and_then(|b| b.parse().ok())
        .expect("bytes field");
    assert!(sent < server.report_size("layer"), "{line}");
    // And the server goes on serving.
    assert_eq!(raw_request(&server.addr, "GET", "/v2/", &[]).status, 200);
}

/// A server whose image `big:latest` has one layer of about `len` incompressible bytes
/// (level 0: quick to pack, large enough to outlast the socket buffers).
fn serve_big(dir: &std::path::Path, len: usize, seed: u64) -> Serving {
    let input = dir.join("big");
    std::fs::write(&input, common::noise(len, seed)).expect("input");
    Serving::start(
        &dir.join("store"),
        dir,
        &["--level", "0", "--name", "big", &input.to_string_lossy()],
    )
}

fn wait_for_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(start.elapsed() < limit, "server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_server_killed_mid_upload_restarts_clean_and_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let input = dir.path().join("small");
    std::fs::write(&input, b"small input").expect("input");
    let args = ["--push", "--level", "1", &input.to_string_lossy()].map(str::to_owned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Serving::start(&store, dir.path(), &args);

    // One blob pushed whole before the crash: it must survive it.
    let kept = common::noise(100_000, 3);
    let kept_digest = quinistry::digest::Digest::sha256_of(&kept);
    let mut s = std::net::TcpStream::connect(&server.addr).expect("connect");
    write!(
        s,
        "POST /v2/app/blobs/uploads/?digest={kept_digest} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        kept.len()
    )
    .expect("send");
    s.write_all(&kept).expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");

    // A large upload in progress: 64 MiB promised, 24 MiB sent, then SIGKILL.
    let r = raw_request(
        &server.addr,
        "POST",
        "/v2/app/blobs/uploads/",
        &["Content-Length: 0"],
    );
    assert_eq!(r.status, 202);
    let location = r.header("location").expect("location").to_owned();
    let mut s = std::net::TcpStream::connect(&server.addr).expect("connect");
    write!(
        s,
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        64 << 20
    )
    .expect("send");
    let chunk = common::noise(1 << 20, 4);
    for _ in 0..24 {
        s.write_all(&chunk).expect("send");
    }
    let tmp = store.join("tmp");
    let in_tmp = || -> u64 {
        common::files(&tmp)
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum()
    };
    let start = std::time::Instant::now();
    while in_tmp() < 16 << 20 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the upload never reached the store"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("wait");
    drop(s);
    assert!(
        !common::files(&tmp).is_empty(),
        "the killed upload left no temp file to clean"
    );

    // Restart: the dead upload's temp file is removed, every blob verifies, and it serves.
    let server = Serving::start(&store, dir.path(), &args);
    assert!(common::files(&tmp).is_empty(), "{:?}", common::files(&tmp));
    let verify = common::run_ok(quinistry().arg("verify").arg("--store").arg(&store));
    let verified = String::from_utf8_lossy(&verify.stdout);
    assert!(verified.contains(", 0 bad"), "{verified}");
    let r = raw_request(
        &server.addr,
        "GET",
        &format!("/v2/app/blobs/{kept_digest}"),
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, kept);
    let r = raw_request(&server.addr, "GET", &location, &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(
        raw_request(&server.addr, "GET", "/v2/small/manifests/latest", &[]).status,
        200
    );
}

/// What hyper refuses before a request reaches us (a 64 KiB path, 400 KiB of headers) gets
/// hyper's own answer, and an access-log line saying so.
#[test]
fn requests_the_http_parser_refuses_are_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("f");
    std::fs::write(&input, b"x").expect("input");
    let server = Serving::start(
        &dir.path().join("store"),
        dir.path(),
        &[input.to_str().expect("utf8")],
    );
    let long_path = format!("/v2/{}/tags/list", "a".repeat(70_000));
    let r = common::raw_request(&server.addr, "GET", &long_path, &[]);
    assert_eq!(r.status, 414);
    let big_header = format!("X-Big: {}", "b".repeat(500_000));
    let r = common::raw_request(&server.addr, "GET", "/v2/", &[&big_header]);
    assert_eq!(r.status, 431);
    // Docker's TLS probe of a plain-HTTP registry (a ClientHello's first bytes): no INFO line.
    {
        use std::io::{Read, Write};
        let mut probe = std::net::TcpStream::connect(&server.addr).expect("connect");
        probe
            .write_all(&[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ])
            .expect("write");
        let mut answer = Vec::new();
        let _ = probe.read_to_end(&mut answer);
    }
    let mut log = String::new();
    for _ in 0..50 {
        log = server.log_text();
        if log.matches("request refused by the HTTP parser").count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        log.contains("status=414") && log.contains("status=431"),
        "{log}"
    );
    assert_eq!(
        log.matches("request refused by the HTTP parser").count(),
        2,
        "the TLS probe was logged as a refused request: {log}"
    );
}

/// A number from the clock's nanoseconds: enough to vary where each trial is killed.
fn jitter(below: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos) % below
}

/// One push of a small image (config, layer, manifest tagged `tag`); its manifest digest.
fn push_image(addr: &str, repo: &str, tag: &str, seed: u64) -> Option<String> {
    let mut digests = Vec::new();
    for body in [
        format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}").into_bytes(),
        common::noise(64 << 10, seed),
    ] {
        let d = format!("sha256:{}", {
            let mut h = Hasher::new();
            h.update(&body);
            h.finish().0.hex().to_owned()
        });
        let r = common::try_raw_request(
            addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[&format!("Content-Length: {}", body.len())],
            &body,
        )
        .ok()?;
        (r.status == 201).then_some(())?;
        digests.push((d, body.len()));
    }
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{}\",\"size\":{}}},\
         \"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"{}\",\"size\":{}}}]}}",
        digests[0].0, digests[0].1, digests[1].0, digests[1].1
    );
    let r = common::try_raw_request(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            &format!("Content-Length: {}", manifest.len()),
        ],
        manifest.as_bytes(),
    )
    .ok()?;
    (r.status == 201).then(|| r.header("docker-content-digest").unwrap_or("").to_owned())
}

/// 30 servers killed with SIGKILL at a random moment while clients push images, delete
/// them by digest and by tag, and pull an on-demand image that changes every trial (so it is
/// packed): after each, `quinistry verify` finds every blob whole and the graph consistent.
#[test]
fn thirty_sigkills_during_pushes_deletes_and_packs_leave_a_consistent_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let input = dir.path().join("od");
    let spec = format!("od={}", input.display());
    for trial in 0..30u64 {
        std::fs::write(&input, common::noise(8 << 20, 100 + trial)).expect("input");
        let mut server = Serving::start(&store, dir.path(), &["--push", "--image", &spec]);
        let addr = server.addr.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut clients = Vec::new();
        for worker in 0..3u64 {
            let (addr, stop) = (addr.clone(), stop.clone());
            clients.push(std::thread::spawn(move || {
                let mut pushed = Vec::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let seed = trial * 10_000 + worker * 1000 + i;
                    match worker {
                        0 | 1 => {
                            if let Some(d) =
                                push_image(&addr, "kill/app", &format!("t{}", i % 4), seed)
                            {
                                pushed.push(d);
                            }
                            // Now and then, one of them goes again by digest or by tag.
                            if i.is_multiple_of(3)
                                && let Some(d) = pushed.pop()
                            {
                                let path = if i.is_multiple_of(2) {
                                    format!("/v2/kill/app/manifests/{d}")
                                } else {
                                    format!("/v2/kill/app/manifests/t{}", i % 4)
                                };
                                let _ = common::try_raw_request(&addr, "DELETE", &path, &[], b"");
                            }
                        }
                        _ => {
                            let _ = common::try_raw_request(
                                &addr,
                                "GET",
                                "/v2/od/manifests/latest",
                                &[],
                                b"",
                            );
                        }
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(150 + jitter(600)));
        server.child.kill().expect("SIGKILL");
        let _ = server.child.wait();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in clients {
            c.join().expect("client");
        }
        let out = quinistry()
            .args(["verify", "--store"])
            .arg(&store)
            .output()
            .expect("verify");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(", 0 bad") && text.contains("0 inconsistencies"),
            "trial {trial}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The trials did work before each kill: images pushed, layers of the on-demand image.
    let blobs = common::files(&store.join("blobs/sha256")).len();
    assert!(
        blobs > 60,
        "only {blobs} blobs: the clients did little before the kills"
    );
}

/// An HTTP/2 (prior knowledge) connection to `addr`, driven by a task of its own.
async fn h2_client(
    addr: &str,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// Blobs go out from maps of 1 MiB of the file at a time on HTTP/1.1 (src/registry/mapped.rs)
/// and read in 512 KiB pieces on HTTP/2: whole, in ranges that start off a page and cross a
/// map's end, back to back on one kept-alive connection, and over HTTP/2, the bytes are the
/// stored blob's.
#[test]
fn downloads_from_maps_are_byte_identical_whole_in_ranges_and_over_http2() {
    const MAP: usize = 1 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve_big(dir.path(), 2 * MAP + 12_345, 21);
    let layer = server.report["layer"].clone();
    let stored = std::fs::read(common::blob(&dir.path().join("store"), &layer)).expect("blob");
    let size = stored.len();
    assert!(size > 2 * MAP && !size.is_multiple_of(4096), "{size}");
    let path = format!("/v2/big/blobs/{layer}");

    let whole = raw_request(&server.addr, "GET", &path, &[]);
    assert_eq!(whole.status, 200);
    assert!(whole.body == stored, "whole blob differs");
    let ranges = [
        (0, 0),
        (1, 4096),
        (4095, 4097),
        (MAP - 1, MAP),
        (MAP + 7, 2 * MAP + 4099),
        (12_345, size - 1),
        (size - 1, size - 1),
    ];
    for (first, last) in ranges {
        let r = raw_request(
            &server.addr,
            "GET",
            &path,
            &[&format!("Range: bytes={first}-{last}")],
        );
        assert_eq!(r.status, 206, "{first}-{last}");
        assert!(r.body == stored[first..=last], "{first}-{last} differs");
    }

    // Three answers on one connection: what follows a mapped body is a clean response.
    let mut conn = std::net::TcpStream::connect(&server.addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let ask = |range: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{range}\r\n");
    let requests = [
        ask("Range: bytes=4095-4097\r\n"),
        ask(""),
        ask("Range: bytes=-3\r\n"),
    ];
    conn.write_all(requests.concat().as_bytes()).expect("send");
    let mut reader = std::io::BufReader::new(conn);
    for want in [&stored[4095..=4097], &stored[..], &stored[size - 3..]] {
        let mut length = None;
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut reader, &mut line).expect("header line");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0u8; length.expect("content-length")];
        reader.read_exact(&mut body).expect("body");
        assert!(body == want, "a kept-alive answer differs");
    }

    // HTTP/2 (prior knowledge): the same maps, framed by h2.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut send = h2_client(&server.addr).await;
        for range in [None, Some((MAP - 1, 2 * MAP + 1))] {
            let mut req = hyper::Request::get(format!("http://{}{path}", server.addr));
            if let Some((first, last)) = range {
                req = req.header("range", format!("bytes={first}-{last}"));
            }
            let req = req.body(http_body_util::Empty::new()).expect("request");
            let response = send.send_request(req).await.expect("h2 response");
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("h2 body")
                .to_bytes();
            let want = match range {
                Some((first, last)) => &stored[first..=last],
                None => &stored[..],
            };
            assert!(body == want, "HTTP/2 {range:?} differs");
        }
    });
}

/// A blob cut short behind the store's back while it is being downloaded (a damaged store)
/// fails that download, over HTTP/1.1 and HTTP/2, and the server goes on serving: the maps
/// of the part that is gone are not made, or fail the write (touched from user space, they
/// would be SIGBUS, the end of the process).
#[test]
fn a_blob_truncated_during_its_download_fails_it_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve_big(dir.path(), 32 << 20, 23);
    let layer = server.report["layer"].clone();
    let blob = common::blob(&dir.path().join("store"), &layer);
    let truncate = || {
        let file = std::fs::File::options()
            .write(true)
            .open(&blob)
            .expect("open");
        file.set_len((1 << 20) + 5).expect("truncate");
    };
    let path = format!("/v2/big/blobs/{layer}");

    let mut conn = std::net::TcpStream::connect(&server.addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut first = vec![0u8; 64 << 10];
    conn.read_exact(&mut first).expect("first bytes");
    truncate();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    assert!(
        first.len() + rest.len() < 32 << 20,
        "{} bytes came",
        first.len() + rest.len()
    );
    assert_eq!(raw_request(&server.addr, "GET", "/v2/", &[]).status, 200);

    // The blob whole again, then the same over HTTP/2.
    std::fs::write(&blob, common::noise(32 << 20, 0)).expect("rewrite");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut send = h2_client(&server.addr).await;
        let req = hyper::Request::get(format!("http://{}{path}", server.addr))
            .body(http_body_util::Empty::new())
            .expect("request");
        let mut body = send.send_request(req).await.expect("response").into_body();
        let mut got = 0;
        let mut cut = false;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            match frame {
                Ok(f) => got += f.data_ref().map_or(0, |d| d.len()),
                Err(_) => break,
            }
            if !cut && got >= 64 << 10 {
                truncate();
                cut = true;
            }
        }
        assert!(got < 32 << 20, "{got} bytes came over HTTP/2");
    });
    assert_eq!(raw_request(&server.addr, "GET", "/v2/", &[]).status, 200);
    let mut server = server;
    assert!(
        server.child.try_wait().expect("wait").is_none(),
        "the server died"
    );
}

/// A store of 100,000 tags in one repository starts serving without opening the folder
/// that holds them or any tag in it (inotify counts every open), and the first page of the
/// tag list then reads it. Start-up cost must not grow with the store.
#[test]
fn a_store_of_100k_tags_starts_without_reading_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let tags = store.join("repositories/big/_tags");
    std::fs::create_dir_all(&tags).expect("mkdir");
    let record = format!("sha256:{}\n", "ab".repeat(32));
    for i in 0..100_000 {
        std::fs::write(tags.join(format!("t{i:06}")), &record).expect("write tag");
    }
    let path = std::ffi::CString::new(tags.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: plain system calls on a descriptor this test owns.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(fd >= 0, "inotify_init1");
    let watch =
        unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS) };
    assert!(watch >= 0, "inotify_add_watch");
    let opened = || {
        let mut buf = vec![0u8; 1 << 16];
        let mut events = 0;
        loop {
            // SAFETY: reads into a buffer this closure owns, of its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return events;
            }
            let mut at = 0usize;
            while at < n as usize {
                // struct inotify_event: wd, mask, cookie, len (4 bytes each), then the name.
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().expect("4 bytes"));
                events += 1;
                at += 16 + len as usize;
            }
        }
    };
    let log = dir.path().join("log");
    std::fs::create_dir_all(&log).expect("log dir");
    let server = Serving::start(&store, &log, &[]);
    let r = raw_request(&server.addr, "GET", "/v2/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        opened(),
        0,
        "start-up opened the tags folder or a tag in it"
    );

    // The control: the count can be non-zero, and a page is served from the folder.
    let r = raw_request(
        &server.addr,
        "GET",
        "/v2/big/tags/list?n=3&last=t049999",
        &[],
    );
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(
        v["tags"],
        serde_json::json!(["t050000", "t050001", "t050002"])
    );
    assert!(opened() > 0, "the tag list was read without an open seen");
    // SAFETY: closes the descriptor made above, once.
    unsafe { libc::close(fd) };
}
