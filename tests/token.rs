//! Docker registry tokens from an external issuer: the test is the issuer (as GitLab or
//! docker_auth would be), signs tokens with its own key, and the server, given that key's
//! public half, must honour exactly their `access` claims and challenge with the exact
//! scope a request needs.

mod common;

use std::path::Path;

use common::{Serving, docker_login, raw_request, raw_request_with_body};
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

/// 401 with a Bearer challenge naming `scope` (and `error`, if any), from a server whose
/// realm is the test issuer's `http://127.0.0.1:1/token`.
fn assert_challenge(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    scope: Option<&str>,
    error: Option<&str>,
) {
    challenged(
        "http://127.0.0.1:1/token",
        addr,
        method,
        path,
        token,
        scope,
        error,
    );
}

/// 401 with the challenge of `realm`, naming `scope` (and `error`, if any).
fn challenged(
    realm: &str,
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
    let mut want = format!("Bearer realm=\"{realm}\",service=\"test-registry\"");
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

    let login = |password: &[u8]| common::docker_login(&config, &addr, "alice", password);
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

/// A server with the built-in issuer: alice and bob (password `secret`) in an htpasswd file,
/// rules giving alice c/* and bob c/start to read, anonymous clients pub/*; the start image
/// is c/start. The config file's path too, to change the users in.
fn start_built_in(dir: &Path) -> (Serving, std::path::PathBuf) {
    let input = dir.join("input");
    std::fs::write(&input, b"built-in issuer test input").expect("input");
    let users = dir.join("htpasswd");
    let hash = bcrypt::hash("secret", 4).expect("hash");
    std::fs::write(&users, format!("alice:{hash}\nbob:{hash}\n")).expect("htpasswd");
    let config = dir.join("q.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[access]
push = true
htpasswd = "{}"
anonymous_read = ["pub/*"]
[access.users.alice]
read_write = ["c/*", "pub/*"]
[access.users.bob]
read = ["c/start"]
[access.token]
service = "test-registry"
issuer = "quinistry-test"
signing_key = "{}"
expiration = "2m"
"#,
            users.display(),
            dir.join("keys/token.key").display()
        ),
    )
    .expect("config");
    std::fs::create_dir(dir.join("keys")).expect("keys dir");
    let server = Serving::start(
        &dir.join("store"),
        dir,
        &[
            "--config",
            &config.to_string_lossy(),
            "--no-prepack",
            "--name",
            "c/start",
            &input.to_string_lossy(),
        ],
    );
    (server, users)
}

/// `GET /token?QUERY` with Basic credentials `user:password`, if any.
fn token_get(addr: &str, query: &str, credentials: Option<&str>) -> common::RawResponse {
    let auth = credentials.map(|c| {
        format!(
            "Authorization: Basic {}",
            data_encoding::BASE64.encode(c.as_bytes())
        )
    });
    let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
    raw_request(addr, "GET", &format!("/token?{query}"), &headers)
}

/// The JSON of an answer with status 200.
fn json_of(r: &common::RawResponse) -> Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    serde_json::from_slice(&r.body).expect("json")
}

/// The claims of a JWT, unchecked.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(payload.as_bytes())
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims")
}

/// The built-in issuer logs users in with the htpasswd file and grants each scope only what
/// the rules allow; its tokens work exactly as far as they grant; the OAuth2 grants and
/// refresh tokens work, and a changed password ends a refresh token.
#[test]
fn the_built_in_issuer_grants_what_the_rules_allow() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, users) = start_built_in(dir.path());
    let addr = server.addr.as_str();
    let key = dir.path().join("keys/token.key");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the signing key is made 0600");

    // The challenge sends clients to this server's /token.
    let r = raw_request(addr, "GET", "/v2/", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer realm=\"http://{addr}/token\",service=\"test-registry\"").as_str())
    );

    let push_scope =
        "service=test-registry&scope=repository:c/start:pull,push&scope=repository:pub/x:pull";
    let access = |credentials: Option<&str>, query: &str| {
        let answer = json_of(&token_get(addr, query, credentials));
        assert_eq!(answer["token"], answer["access_token"]);
        assert_eq!(answer["expires_in"], 120, "expiration = 2m");
        let claims = claims_of(answer["token"].as_str().expect("token"));
        assert_eq!(claims["iss"], "quinistry-test");
        assert_eq!(claims["aud"], "test-registry");
        (answer["token"].as_str().expect("token").to_owned(), claims)
    };
    let (alice, claims) = access(Some("alice:secret"), push_scope);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "c/start", "actions": ["pull", "push"]},
               {"type": "repository", "name": "pub/x", "actions": ["pull"]}])
    );
    let (bob, claims) = access(Some("bob:secret"), push_scope);
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "c/start", "actions": ["pull"]},
               {"type": "repository", "name": "pub/x", "actions": ["pull"]}]),
        "bob reads c/start and, as anyone, pub/*"
    );
    let (anonymous, claims) = access(None, push_scope);
    assert_eq!(claims["sub"], "");
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "pub/x", "actions": ["pull"]}])
    );
    // Malformed scopes and names get nothing, and do not stop the rest.
    let (_, claims) = access(
        Some("alice:secret"),
        "scope=repository:C/Bad:pull&scope=nonsense&scope=repository:c/x:pull,fly&scope=registry:catalog:*",
    );
    assert_eq!(
        claims["access"],
        json!([{"type": "registry", "name": "catalog", "actions": ["*"]},
               {"type": "repository", "name": "c/x", "actions": ["pull"]}])
    );

    // The tokens do what they grant and no more.
    let manifest = "/v2/c/start/manifests/latest";
    assert_eq!(
        raw_request(addr, "GET", manifest, &[&bearer(&bob)]).status,
        200
    );
    assert_eq!(
        raw_request(addr, "GET", manifest, &[&bearer(&alice)]).status,
        200
    );
    assert_challenge_at(
        addr,
        "GET",
        manifest,
        Some(&anonymous),
        "repository:c/start:pull",
        Some("insufficient_scope"),
    );
    let uploads = "/v2/c/start/blobs/uploads/";
    assert_challenge_at(
        addr,
        "POST",
        uploads,
        Some(&bob),
        "repository:c/start:pull,push",
        Some("insufficient_scope"),
    );
    assert_eq!(
        raw_request(addr, "POST", uploads, &[&bearer(&alice)]).status,
        202
    );

    // Wrong credentials: 401 with a Basic challenge, and the issuer goes on serving.
    let wrong = token_get(addr, push_scope, Some("alice:guess"));
    assert_eq!(wrong.status, 401);
    assert!(
        wrong
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic "))
    );
    let unknown = token_get(addr, push_scope, Some("mallory:secret"));
    assert_eq!(unknown.status, 401);
    assert_eq!(
        token_get(addr, "service=other", None).status,
        400,
        "another service"
    );
    assert_eq!(raw_request(addr, "DELETE", "/token", &[]).status, 405);
    access(Some("alice:secret"), push_scope);

    // docker login's identity token: a refresh token from offline_token=true.
    let answer = json_of(&token_get(
        addr,
        "service=test-registry&offline_token=true&client_id=docker",
        Some("alice:secret"),
    ));
    let refresh = answer["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    assert_challenge_at(
        addr,
        "GET",
        manifest,
        Some(&refresh),
        "repository:c/start:pull",
        Some("invalid_token"),
    );
    let form = |body: &str| {
        let length = format!("Content-Length: {}", body.len());
        raw_request_with_body(
            addr,
            "POST",
            "/token",
            &["Content-Type: application/x-www-form-urlencoded", &length],
            body.as_bytes(),
        )
    };
    let by_refresh = format!(
        "grant_type=refresh_token&service=test-registry&client_id=docker&scope=repository%3Ac%2Fstart%3Apull%2Cpush&refresh_token={refresh}"
    );
    let answer = json_of(&form(&by_refresh));
    assert_eq!(answer["scope"], "repository:c/start:pull,push");
    let token = answer["access_token"].as_str().expect("access token");
    assert_eq!(
        raw_request(addr, "POST", uploads, &[&bearer(token)]).status,
        202
    );
    // containerd's password grant.
    let answer = json_of(&form(
        "grant_type=password&username=bob&password=secret&service=test-registry&client_id=ctr&access_type=offline&scope=repository%3Ac%2Fstart%3Apull",
    ));
    assert!(answer["refresh_token"].is_string(), "access_type=offline");
    assert_eq!(
        claims_of(answer["access_token"].as_str().expect("token"))["access"],
        json!([{"type": "repository", "name": "c/start", "actions": ["pull"]}])
    );
    assert_eq!(
        form("grant_type=password&username=bob&password=guess").status,
        401
    );
    assert_eq!(form("grant_type=client_credentials").status, 400);
    assert_eq!(
        form("grant_type=refresh_token&refresh_token=a.b.c").status,
        401
    );

    // A changed password ends alice's refresh token (the file is read again on change).
    let hash = bcrypt::hash("new secret", 4).expect("hash");
    let bob_line = std::fs::read_to_string(&users)
        .expect("users")
        .lines()
        .find(|l| l.starts_with("bob:"))
        .expect("bob")
        .to_owned();
    std::fs::write(&users, format!("alice:{hash}\n{bob_line}\n")).expect("htpasswd");
    let mut refused = false;
    for _ in 0..200 {
        if form(&by_refresh).status == 401 {
            refused = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(refused, "the refresh token outlived alice's password");
    access(Some("alice:new secret"), push_scope);
    assert_eq!(
        raw_request(addr, "GET", "/v2/", &[]).status,
        401,
        "still serving"
    );
}

/// `assert_challenge` for this server's own realm (the built-in issuer's).
fn assert_challenge_at(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    scope: &str,
    error: Option<&str>,
) {
    let realm = format!("http://{addr}/token");
    challenged(&realm, addr, method, path, token, Some(scope), error);
}

/// docker, skopeo, podman and ctr log in at the built-in issuer with the htpasswd users and
/// do what the rules let them: alice pushes and pulls, bob only pulls; the catalog each
/// user's token lists holds only what they may read.
#[test]
fn docker_skopeo_podman_and_ctr_use_the_built_in_issuer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start_built_in(dir.path());
    let addr = server.addr.clone();
    let start = format!("{addr}/c/start:latest");
    let mut pushed = Vec::new();
    if common::have_docker() {
        let config = dir.path().join("docker-config");
        std::fs::create_dir(&config).expect("config dir");
        let copy = format!("{addr}/c/docker:v1");
        let _cleanup = common::DockerCleanup::images(&[&start, &copy]);
        assert!(
            !docker_login(&config, &addr, "alice", b"guess")
                .status
                .success()
        );
        let out = docker_login(&config, &addr, "alice", b"secret");
        assert!(
            out.status.success(),
            "docker login: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stored = std::fs::read_to_string(config.join("config.json")).expect("config.json");
        assert!(
            stored.contains("identitytoken"),
            "docker keeps the refresh token, not the password: {stored}"
        );
        for args in [
            vec!["pull", start.as_str()],
            vec!["tag", &start, &copy],
            vec!["push", &copy],
            vec!["rmi", &copy],
            vec!["pull", &copy],
        ] {
            let out = std::process::Command::new("docker")
                .env("DOCKER_CONFIG", &config)
                .args(&args)
                .output()
                .expect("docker");
            assert!(
                out.status.success(),
                "docker {args:?}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                server.log_text()
            );
        }
        pushed.push("c/docker");
    }
    if common::have_tool("skopeo", "skopeo") {
        let copy = |creds: &str, to: &str| {
            std::process::Command::new("skopeo")
                .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
                .args(["--src-creds", creds, "--dest-creds", creds])
                .arg(format!("docker://{start}"))
                .arg(format!("docker://{addr}/{to}:latest"))
                .output()
                .expect("skopeo")
        };
        assert!(
            !copy("alice:guess", "c/skopeo").status.success(),
            "wrong password"
        );
        assert!(
            !copy("bob:secret", "c/skopeo").status.success(),
            "bob may not push"
        );
        let out = copy("alice:secret", "c/skopeo");
        assert!(
            out.status.success(),
            "skopeo copy: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_text()
        );
        pushed.push("c/skopeo");
    }
    if common::have_tool("podman", "podman") {
        let root = dir.path().join("podman");
        let pull = [
            "pull",
            "--tls-verify=false",
            "--creds",
            "bob:secret",
            &start,
        ];
        assert!(
            !common::podman_in(&root, &pull).is_empty(),
            "podman pull printed no image id"
        );
    }
    if common::have_tool("containerd", "containerd") && common::have_tool("ctr", "containerd") {
        let root = dir.path().join("containerd");
        std::fs::create_dir(&root).expect("containerd dir");
        let containerd = common::Containerd::start(&root);
        let ctr = |user: &str, args: &[&str]| {
            let mut all = vec!["images"];
            all.extend_from_slice(&args[..1]);
            all.extend(["--plain-http", "--user", user]);
            all.extend_from_slice(&args[1..]);
            containerd.ctr(&all)
        };
        assert!(
            !ctr("bob:guess", &["pull", &start]).status.success(),
            "wrong password"
        );
        let out = ctr("bob:secret", &["pull", &start]);
        assert!(
            out.status.success(),
            "ctr pull: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_text()
        );
        let ctr_copy = format!("{addr}/c/ctr:latest");
        let tagged = containerd.ctr(&["images", "tag", &start, &ctr_copy]);
        assert!(
            tagged.status.success(),
            "{}",
            String::from_utf8_lossy(&tagged.stderr)
        );
        assert!(
            !ctr("bob:secret", &["push", &ctr_copy]).status.success(),
            "bob may not push"
        );
        let out = ctr("alice:secret", &["push", &ctr_copy]);
        assert!(
            out.status.success(),
            "ctr push: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_text()
        );
        pushed.push("c/ctr");
    }
    // What each user's catalog holds: alice all of c/*, bob only c/start.
    let catalog = |user: &str| {
        let answer = json_of(&token_get(
            &addr,
            "scope=registry:catalog:*",
            Some(&format!("{user}:secret")),
        ));
        let token = answer["token"].as_str().expect("token");
        let r = raw_request(&addr, "GET", "/v2/_catalog", &[&bearer(token)]);
        json_of(&r)["repositories"].clone()
    };
    let mut alice_sees = vec!["c/start"];
    alice_sees.extend(&pushed);
    alice_sees.sort();
    assert_eq!(catalog("alice"), json!(alice_sees));
    assert_eq!(catalog("bob"), json!(["c/start"]));
}
