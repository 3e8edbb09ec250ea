//! Docker registry tokens from an external issuer: the test is the issuer (as GitLab or
//! docker_auth would be), signs tokens with its own key, and the server, given that key's
//! public half, must honour exactly their `access` claims and challenge with the exact
//! scope a request needs.

mod common;

use std::path::Path;

use common::{Serving, raw_request, raw_request_with_body};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::PublicKeyData;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The issuer: a signing key and the public key the registry is given.
struct Issuer {
    key: EncodingKey,
    kid: String,
    public_pem: String,
}

fn issuer() -> Issuer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let spki = pair.subject_public_key_info();
    Issuer {
        key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("signing key"),
        kid: quinistry::registry::token::libtrust_key_id(&spki),
        public_pem: pem::encode(&pem::Pem::new("PUBLIC KEY", spki)),
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl Issuer {
    /// A token for `access` (`[["repository", "a", "pull"], ...]`), valid for `life` seconds.
    fn token(&self, access: &[(&str, &str, &str)], life: i64) -> String {
        let access: Vec<Value> = access
            .iter()
            .map(|(kind, name, actions)| {
                json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()})
            })
            .collect();
        let claims = json!({"iss": "test-issuer", "aud": "test-registry", "sub": "alice",
            "iat": now(), "nbf": now(), "exp": now() as i64 + life, "access": access});
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign")
    }
}

fn start(dir: &Path, bundle: &Path, realm: &str) -> Serving {
    let input = dir.join("input");
    std::fs::write(&input, b"token test input").expect("input");
    let store = dir.join("store");
    Serving::start(
        &store,
        dir,
        &[
            "--push",
            "--no-prepack",
            "--name",
            "tok/start",
            "--token-service",
            "test-registry",
            "--token-issuer",
            "test-issuer",
            "--token-realm",
            realm,
            "--token-rootcertbundle",
            &bundle.to_string_lossy(),
            &input.to_string_lossy(),
        ],
    )
}

/// The issuer's token endpoint on a loopback port, as GitLab's or docker_auth's: user alice
/// with password `secret` (or no credentials) gets a token for every scope asked for; wrong
/// credentials get 401. Serves until the test ends; its address.
fn serve_tokens(issuer: Issuer) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut target = String::new();
            let mut credentials = None;
            let mut first = true;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if first {
                    target = line.split(' ').nth(1).unwrap_or("").to_owned();
                    first = false;
                } else if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("authorization")
                {
                    credentials = Some(v.trim().to_owned());
                }
            }
            let alice = format!("Basic {}", data_encoding::BASE64.encode(b"alice:secret"));
            let answer = if credentials.as_ref().is_some_and(|c| *c != alice) {
                (401, "{\"details\":\"wrong password\"}".to_owned())
            } else {
                let query = target.split_once('?').map_or("", |(_, q)| q);
                let scopes: Vec<String> = form_urlencoded::parse(query.as_bytes())
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v.into_owned())
                    .collect();
                let mut access = Vec::new();
                for scope in &scopes {
                    // repository:NAME:ACTIONS, NAME possibly with a port's colon: split from the right.
                    if let Some((kind_name, actions)) = scope.rsplit_once(':')
                        && let Some((kind, name)) = kind_name.split_once(':')
                    {
                        access.push((kind.to_owned(), name.to_owned(), actions.to_owned()));
                    }
                }
                let borrowed: Vec<(&str, &str, &str)> = access
                    .iter()
                    .map(|(k, n, a)| (k.as_str(), n.as_str(), a.as_str()))
                    .collect();
                let token = issuer.token(&borrowed, 300);
                (
                    200,
                    json!({"token": token, "access_token": token, "expires_in": 300}).to_string(),
                )
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                answer.0,
                answer.1.len(),
                answer.1
            );
        }
    });
    addr
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// 401 with a Bearer challenge naming `scope` (and `error`, if any).
fn assert_challenge(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    scope: Option<&str>,
    error: Option<&str>,
) {
    let auth = token.map(bearer);
    let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
    let r = raw_request(addr, method, path, &headers);
    assert_eq!(
        r.status,
        401,
        "{method} {path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.error_code(), "UNAUTHORIZED");
    let mut want = "Bearer realm=\"http://127.0.0.1:1/token\",service=\"test-registry\"".to_owned();
    if let Some(scope) = scope {
        want.push_str(&format!(",scope=\"{scope}\""));
    }
    if let Some(error) = error {
        want.push_str(&format!(",error=\"{error}\""));
    }
    assert_eq!(
        r.header("www-authenticate"),
        Some(want.as_str()),
        "{method} {path}"
    );
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[test]
fn tokens_from_an_external_issuer_grant_exactly_their_access() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = issuer();
    let bundle = dir.path().join("issuer.pem");
    std::fs::write(&bundle, &issuer.public_pem).expect("bundle");
    let server = start(dir.path(), &bundle, "http://127.0.0.1:1/token");
    let addr = server.addr.as_str();

    // Without a token: the challenge names what each request needs.
    assert_challenge(addr, "GET", "/v2/", None, None, None);
    assert_challenge(
        addr,
        "GET",
        "/v2/a/manifests/v1",
        None,
        Some("repository:a:pull"),
        None,
    );
    assert_challenge(
        addr,
        "POST",
        "/v2/a/blobs/uploads/",
        None,
        Some("repository:a:pull,push"),
        None,
    );
    assert_challenge(
        addr,
        "DELETE",
        "/v2/a/manifests/v1",
        None,
        Some("repository:a:delete"),
        None,
    );
    assert_challenge(
        addr,
        "GET",
        "/v2/_catalog",
        None,
        Some("registry:catalog:*"),
        None,
    );

    // A push with a token for a: pull,push.
    let push = issuer.token(&[("repository", "a", "pull,push")], 300);
    let layer = b"a layer of a";
    let d = digest(layer);
    let r = raw_request_with_body(
        addr,
        "POST",
        &format!("/v2/a/blobs/uploads/?digest={d}"),
        &[
            &bearer(&push),
            "Content-Type: application/octet-stream",
            &format!("Content-Length: {}", layer.len()),
        ],
        layer,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = raw_request(addr, "GET", "/v2/", &[&bearer(&push)]);
    assert_eq!(r.status, 200, "/v2/ with any good token");

    // Pull only: reads a, and nothing else.
    let pull = issuer.token(&[("repository", "a", "pull")], 300);
    let r = raw_request(addr, "GET", &format!("/v2/a/blobs/{d}"), &[&bearer(&pull)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, layer);
    assert_challenge(
        addr,
        "POST",
        "/v2/a/blobs/uploads/",
        Some(&pull),
        Some("repository:a:pull,push"),
        Some("insufficient_scope"),
    );
    assert_challenge(
        addr,
        "GET",
        &format!("/v2/b/blobs/{d}"),
        Some(&pull),
        Some("repository:b:pull"),
        Some("insufficient_scope"),
    );
    assert_challenge(
        addr,
        "GET",
        &format!("/v2/a/b/blobs/{d}"),
        Some(&pull),
        Some("repository:a/b:pull"),
        Some("insufficient_scope"),
    );
    assert_challenge(
        addr,
        "DELETE",
        &format!("/v2/a/blobs/{d}"),
        Some(&push),
        Some("repository:a:delete"),
        Some("insufficient_scope"),
    );
    assert_challenge(
        addr,
        "GET",
        "/v2/_catalog",
        Some(&pull),
        Some("registry:catalog:*"),
        Some("insufficient_scope"),
    );

    // A mount from a repository the token cannot pull is no mount (an upload session).
    let into_b = issuer.token(&[("repository", "b", "pull,push")], 300);
    let r = raw_request(
        addr,
        "POST",
        &format!("/v2/b/blobs/uploads/?mount={d}&from=a"),
        &[&bearer(&into_b)],
    );
    assert_eq!(r.status, 202, "not mounted without pull on a");
    let both = issuer.token(
        &[
            ("repository", "b", "pull,push"),
            ("repository", "a", "pull"),
        ],
        300,
    );
    let r = raw_request(
        addr,
        "POST",
        &format!("/v2/b/blobs/uploads/?mount={d}&from=a"),
        &[&bearer(&both)],
    );
    assert_eq!(r.status, 201, "mounted with pull on a");

    // The catalog scope lists the repositories.
    let list = issuer.token(&[("registry", "catalog", "*")], 300);
    let r = raw_request(addr, "GET", "/v2/_catalog", &[&bearer(&list)]);
    assert_eq!(r.status, 200);
    let names: Value = serde_json::from_slice(&r.body).expect("json");
    let names = names["repositories"].as_array().expect("list").clone();
    assert!(
        names.contains(&json!("a")) && names.contains(&json!("b")),
        "{names:?}"
    );

    // Bad tokens: 401 invalid_token, and the server goes on serving.
    let expired = issuer.token(&[("repository", "a", "pull")], -300);
    let other = self::issuer().token(&[("repository", "a", "pull")], 300);
    for bad in [
        expired.as_str(),
        other.as_str(),
        "garbage",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.e30.",
    ] {
        let path = format!("/v2/a/blobs/{d}");
        let scope = Some("repository:a:pull");
        assert_challenge(addr, "GET", &path, Some(bad), scope, Some("invalid_token"));
    }
    // An empty one is none (RFC 6750: no error code for a request without a token).
    assert_challenge(addr, "GET", "/v2/", Some(""), None, None);
    let r = raw_request(addr, "GET", &format!("/v2/a/blobs/{d}"), &[&bearer(&pull)]);
    assert_eq!(r.status, 200, "still serving");

    // Key rotation: the bundle rewritten with a new key only; old tokens stop working once
    // the server has read it (bounded by attempts, not by time).
    let next = self::issuer();
    std::fs::write(&bundle, &next.public_pem).expect("rotate");
    let fresh = next.token(&[("repository", "a", "pull")], 300);
    let path = format!("/v2/a/blobs/{d}");
    let mut rotated = false;
    for _ in 0..200 {
        if raw_request(addr, "GET", &path, &[&bearer(&fresh)]).status == 200 {
            rotated = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        rotated,
        "the new key was never read:\n{}",
        server.log_text()
    );
    assert_challenge(
        addr,
        "GET",
        &path,
        Some(&pull),
        Some("repository:a:pull"),
        Some("invalid_token"),
    );
}

/// A server whose realm is a token endpoint of a new issuer (`serve_tokens`), under `dir`.
fn behind_a_token_endpoint(dir: &Path) -> Serving {
    let issuer = issuer();
    let bundle = dir.join("issuer.pem");
    std::fs::write(&bundle, &issuer.public_pem).expect("bundle");
    let realm = format!("http://{}/token", serve_tokens(issuer));
    start(dir, &bundle, &realm)
}

/// docker logs in at the issuer, pulls and pushes with the tokens it gets; a wrong password
/// is refused at login.
#[test]
fn docker_logs_in_pushes_and_pulls_with_tokens_of_an_external_issuer() {
    if !common::have_docker() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = behind_a_token_endpoint(dir.path());
    let addr = server.addr.clone();
    let config = dir.path().join("docker-config");
    std::fs::create_dir(&config).expect("config dir");
    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .env("DOCKER_CONFIG", &config)
            .args(args)
            .output()
            .expect("docker")
    };
    let ok = |args: &[&str]| {
        let out = docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_text()
        );
    };
    let start = format!("{addr}/tok/start:latest");
    let copy = format!("{addr}/tok/copy:v1");
    let mut cleanup = common::DockerCleanup::images(&[&start, &copy]);
    cleanup.image(&copy);

    let login = |password: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new("docker")
            .env("DOCKER_CONFIG", &config)
            .args(["login", &addr, "-u", "alice", "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("docker login");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(password).expect("password");
        drop(stdin);
        child.wait_with_output().expect("login")
    };
    let wrong = login(b"guess");
    assert!(!wrong.status.success(), "login with a wrong password");
    let out = login(b"secret");
    assert!(
        out.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    ok(&["pull", &start]);
    ok(&["tag", &start, &copy]);
    ok(&["push", &copy]);
    ok(&["rmi", &copy]);
    ok(&["pull", &copy]);
    let log = server.log_text();
    assert!(
        log.contains("alice"),
        "the access log names the token's subject"
    );
}

/// skopeo copies between repositories and podman pulls, each with the tokens an external
/// issuer gives for alice's password; wrong credentials get nothing.
#[test]
fn skopeo_and_podman_use_tokens_of_an_external_issuer() {
    let skopeo = common::have_tool("skopeo", "skopeo");
    let podman = common::have_tool("podman", "podman");
    if !skopeo && !podman {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = behind_a_token_endpoint(dir.path());
    let addr = server.addr.clone();
    if skopeo {
        let src = format!("docker://{addr}/tok/start:latest");
        let dst = format!("docker://{addr}/tok/skopeo:latest");
        let copy = |creds: &str| {
            std::process::Command::new("skopeo")
                .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
                .args(["--src-creds", creds, "--dest-creds", creds, &src, &dst])
                .output()
                .expect("skopeo")
        };
        assert!(!copy("alice:guess").status.success(), "wrong password");
        let out = copy("alice:secret");
        assert!(
            out.status.success(),
            "skopeo copy: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_text()
        );
        let digest = common::sh(&format!(
            "skopeo inspect --tls-verify=false --creds alice:secret --format '{{{{.Digest}}}}' {dst}"
        ));
        assert!(
            digest.trim() == server.report["manifest"] || digest.trim() == server.report["docker"],
            "skopeo copied {digest}, which we did not pack"
        );
    }
    if podman {
        let root = dir.path().join("podman");
        let image = format!("{addr}/tok/start:latest");
        let pulled = common::podman_in(
            &root,
            &[
                "pull",
                "--tls-verify=false",
                "--creds",
                "alice:secret",
                &image,
            ],
        );
        assert!(!pulled.is_empty(), "podman pull printed no image id");
    }
}
