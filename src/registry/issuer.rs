//! The built-in token issuer, for people who have no token service: `GET /token` (Docker's
//! token endpoint: Basic credentials or none, `scope=` as often as needed, `offline_token`)
//! and `POST /token` (the OAuth2 `password` and `refresh_token` grants containerd and `docker
//! login`'s identity tokens use). It logs users in with the htpasswd file and gives each
//! scope only the actions the access rules let that user (or an anonymous client) do; the
//! registry then checks its tokens like any issuer's (`token.rs`), with the public half of
//! the signing key.
//!
//! The signing key is a PKCS#8 P-256 key (ES256) in a PEM file, made on first start when
//! absent (mode 0600; replicas sharing the file agree on one). Refresh tokens are JWTs of the
//! same key for another audience (so the registry never takes one as an access token); they
//! carry a tag of the user's htpasswd entry, so a changed password or a removed user ends
//! them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::authorize;
use super::body::{Body, RequestBody};
use super::errors::{Code, RegistryError};
use super::rules::Right;
use super::{Registry, auth};
use crate::reference::Name;

/// The DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte uncompressed point
/// (SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING }).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// How long a refresh token (`docker login`'s identity token) stays good.
pub const REFRESH_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// Scopes one token request may ask for; more are refused (each costs a rules check).
const MAX_SCOPES: usize = 64;

/// Largest `POST /token` form.
const MAX_FORM: usize = 16 * 1024;

/// The built-in issuer: its key, its names, and how long its tokens live.
pub struct Issuer {
    service: String,
    issuer: String,
    key: EncodingKey,
    refresh_key: DecodingKey,
    kid: String,
    spki: Vec<u8>,
    lifetime: Duration,
}

#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: &'a [Granted],
}

/// One entry of the `access` claim: what a scope asked for, cut to what is allowed.
#[derive(Serialize, Debug, PartialEq, Eq)]
struct Granted {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct RefreshClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
    /// A tag of the user's htpasswd entry when the token was made.
    pwd: String,
}

impl Issuer {
    /// Reads the signing key at `path`, making one (0600) if there is none.
    pub fn load_or_create(
        path: &Path,
        service: &str,
        issuer: &str,
        lifetime: Duration,
    ) -> Result<Issuer, String> {
        let shown = path.display();
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_key(path).map_err(|e| format!("cannot make signing key {shown}: {e}"))?
            }
            Err(e) => return Err(format!("signing key {shown}: {e}")),
        };
        let block = pem::parse(&text).map_err(|e| format!("signing key {shown}: not PEM: {e}"))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(format!(
                "signing key {shown}: a PEM block of {}, want PRIVATE KEY (PKCS#8 P-256; convert \
                 with `openssl pkcs8 -topk8 -nocrypt`)",
                block.tag()
            ));
        }
        let rng = ring::rand::SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, block.contents(), &rng)
                .map_err(|e| format!("signing key {shown}: not a PKCS#8 P-256 key: {e}"))?;
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        let public = pem::encode(&pem::Pem::new("PUBLIC KEY", spki.clone()));
        let refresh_key = DecodingKey::from_ec_pem(public.as_bytes())
            .map_err(|e| format!("signing key {shown}: {e}"))?;
        Ok(Issuer {
            service: service.to_owned(),
            issuer: issuer.to_owned(),
            key: EncodingKey::from_ec_der(block.contents()),
            refresh_key,
            kid: super::token::libtrust_key_id(&spki),
            spki,
            lifetime,
        })
    }

    /// The public key tokens are checked with, as PEM.
    pub fn public_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki.clone()))
    }

    /// How long its access tokens live.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn header(&self) -> Header {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header
    }

    fn access_token(&self, subject: &str, access: &[Granted], now: u64) -> Result<String, String> {
        let claims = AccessClaims {
            iss: &self.issuer,
            sub: subject,
            aud: &self.service,
            exp: now + self.lifetime.as_secs(),
            nbf: now,
            iat: now,
            jti: random_id(),
            access,
        };
        jsonwebtoken::encode(&self.header(), &claims, &self.key).map_err(|e| e.to_string())
    }

    /// The audience of refresh tokens: not the service, so no refresh token is an access token.
    fn refresh_audience(&self) -> String {
        format!("quinistry-refresh:{}", self.service)
    }

    fn refresh_token(&self, subject: &str, pwd: &str, now: u64) -> Result<String, String> {
        let claims = RefreshClaims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.refresh_audience(),
            exp: now + REFRESH_LIFETIME.as_secs(),
            iat: now,
            pwd: pwd.to_owned(),
        };
        jsonwebtoken::encode(&self.header(), &claims, &self.key).map_err(|e| e.to_string())
    }

    /// The claims of one of its own refresh tokens, if it is one and is still good.
    fn check_refresh(&self, token: &str) -> Result<RefreshClaims, String> {
        if token.len() > 8192 {
            return Err("refresh token too long".into());
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[self.refresh_audience()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = super::token::LEEWAY_SECONDS;
        jsonwebtoken::decode::<RefreshClaims>(token, &self.refresh_key, &validation)
            .map(|d| d.claims)
            .map_err(|e| format!("refresh token refused: {e}"))
    }
}

/// Writes a new P-256 key to `path` (0600), unless another process got there first: the key
/// is written whole to a temp file and linked in, so no reader sees half a key and two
/// replicas starting together end up with the same one. Returns the file's bytes.
fn create_key(path: &Path) -> std::io::Result<Vec<u8>> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|e| std::io::Error::other(format!("key generation failed: {e}")))?;
    let text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    // tempfile makes it 0600 and removes it if it is not persisted; persist_noclobber links
    // it in and fails with AlreadyExists if another process's key is there.
    let mut temp = tempfile::Builder::new()
        .prefix(".token-key-")
        .tempfile_in(dir.unwrap_or(Path::new(".")))?;
    temp.write_all(text.as_bytes())?;
    temp.as_file().sync_all()?;
    match temp.persist_noclobber(path) {
        Ok(_) => {
            tracing::info!(path = %path.display(), "made a token signing key");
            Ok(text.into_bytes())
        }
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path),
        Err(e) => Err(e.error),
    }
}

/// 128 random bits as hex.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // getrandom fails only without an entropy source; a fixed id then is no secret lost (the
    // id only makes tokens distinct).
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}

/// A tag of a user's htpasswd entry: changes when the password does.
fn entry_tag(hash: &str) -> String {
    hex::encode(&Sha256::digest(hash.as_bytes())[..12])
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// The answer, or the refusal, with the user it names for the access log.
type Answer = Result<(Response<Body>, Option<String>), (RegistryError, Option<String>)>;

/// Answers `/token`.
pub(super) async fn answer(
    registry: &Registry,
    issuer: &Issuer,
    req: &hyper::http::request::Parts,
    body: &mut RequestBody,
    remote: IpAddr,
) -> Answer {
    match req.method {
        Method::GET => get(registry, issuer, req, remote).await,
        Method::POST => post(registry, issuer, body, remote).await,
        ref m => Err((super::not_allowed(m, "GET, POST"), None)),
    }
}

/// `GET /token?service=…&scope=…`: Docker's token endpoint.
async fn get(
    registry: &Registry,
    issuer: &Issuer,
    req: &hyper::http::request::Parts,
    remote: IpAddr,
) -> Answer {
    let pairs = super::query_pairs(req.uri.query());
    let value = |key: &str| first(&pairs, key);
    check_service(issuer, value("service")).map_err(|e| (e, None))?;
    let scopes: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| *k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .collect();
    let credentials = req.headers.get(header::AUTHORIZATION);
    let user = match credentials {
        Some(c) => Some(login(registry, c, remote).await?),
        None => None,
    };
    let offline = value("offline_token") == Some("true");
    let refresh = match (&user, offline) {
        (Some(user), true) => Some(refresh_for(registry, issuer, user)?),
        _ => None,
    };
    respond(registry, issuer, user, &scopes, refresh, false)
}

/// `POST /token`: the OAuth2 grants (`password`, `refresh_token`) of a form body.
async fn post(
    registry: &Registry,
    issuer: &Issuer,
    body: &mut RequestBody,
    remote: IpAddr,
) -> Answer {
    let form = read_form(body).await.map_err(|e| (e, None))?;
    let form = String::from_utf8(form).map_err(|_| (bad_request("the form is not UTF-8"), None))?;
    let pairs = super::pagination::query_pairs(Some(&form), true);
    let value = |key: &str| first(&pairs, key);
    check_service(issuer, value("service")).map_err(|e| (e, None))?;
    let scopes: Vec<&str> = value("scope")
        .map(|s| s.split(' ').collect())
        .unwrap_or_default();
    let (user, refresh) = match value("grant_type") {
        Some("password") => {
            let (Some(name), Some(password)) = (value("username"), value("password")) else {
                return Err((
                    bad_request("the password grant needs username and password"),
                    None,
                ));
            };
            let basic = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{name}:{password}"),
            );
            let header = HeaderValue::from_str(&format!("Basic {basic}")).map_err(|_| {
                (
                    bad_request("a user name or password that is no header"),
                    None,
                )
            })?;
            let user = login(registry, &header, remote).await?;
            let refresh = match value("access_type") {
                Some("offline") => Some(refresh_for(registry, issuer, &user)?),
                _ => None,
            };
            (user, refresh)
        }
        Some("refresh_token") => {
            let token = value("refresh_token").unwrap_or_default();
            (refreshed_user(registry, issuer, token)?, None)
        }
        Some(other) => {
            return Err((
                bad_request(&format!(
                    "grant_type {other:?} is not supported: use password or refresh_token"
                )),
                None,
            ));
        }
        None => return Err((bad_request("grant_type is missing"), None)),
    };
    respond(registry, issuer, Some(user), &scopes, refresh, true)
}

/// The user Basic credentials prove; a refusal is a 401 (429 when throttled).
async fn login(
    registry: &Registry,
    credentials: &HeaderValue,
    remote: IpAddr,
) -> Result<String, (RegistryError, Option<String>)> {
    let Some(htpasswd) = registry.auth().htpasswd else {
        return Err((authorize::refusal(auth::Verdict::Refused, true), None));
    };
    match htpasswd.check(Some(credentials), remote).await {
        auth::Verdict::User(user) => Ok(user),
        verdict => Err((authorize::refusal(verdict, true), None)),
    }
}

/// A refresh token for `user`, tied to their htpasswd entry as it is now.
fn refresh_for(
    registry: &Registry,
    issuer: &Issuer,
    user: &str,
) -> Result<String, (RegistryError, Option<String>)> {
    let hash = registry.auth().htpasswd.and_then(|h| h.hash_of(user));
    let Some(hash) = hash else {
        return Err((authorize::refusal(auth::Verdict::Refused, true), None));
    };
    issuer
        .refresh_token(user, &entry_tag(&hash), now())
        .map_err(|e| (signing_failed(&e), Some(user.to_owned())))
}

/// The user a refresh token names, if it is good and their htpasswd entry is unchanged.
fn refreshed_user(
    registry: &Registry,
    issuer: &Issuer,
    token: &str,
) -> Result<String, (RegistryError, Option<String>)> {
    let unauthorized = |why: String| {
        RegistryError::new(Code::Unauthorized, why).header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(authorize::REALM),
        )
    };
    let claims = issuer
        .check_refresh(token)
        .map_err(|e| (unauthorized(e), None))?;
    let hash = registry
        .auth()
        .htpasswd
        .and_then(|h| h.hash_of(&claims.sub));
    match hash {
        Some(hash) if entry_tag(&hash) == claims.pwd => Ok(claims.sub),
        _ => Err((
            unauthorized("refresh token refused: the user or their password changed".into()),
            Some(claims.sub),
        )),
    }
}

/// The token for `user` (`None`: anonymous) with `scopes` cut to what the rules allow.
fn respond(
    registry: &Registry,
    issuer: &Issuer,
    user: Option<String>,
    scopes: &[&str],
    refresh: Option<String>,
    oauth: bool,
) -> Answer {
    let scopes: Vec<&str> = scopes.iter().copied().filter(|s| !s.is_empty()).collect();
    if scopes.len() > MAX_SCOPES {
        return Err((
            bad_request(&format!("at most {MAX_SCOPES} scopes in one request")),
            user,
        ));
    }
    let granted = grant(registry, user.as_deref(), &scopes);
    let now = now();
    let token = issuer
        .access_token(user.as_deref().unwrap_or(""), &granted, now)
        .map_err(|e| (signing_failed(&e), user.clone()))?;
    let issued_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let mut answer = json!({
        "token": token,
        "access_token": token,
        "expires_in": issuer.lifetime.as_secs(),
        "issued_at": issued_at,
    });
    if oauth {
        answer["scope"] = json!(scopes.join(" "));
    }
    if let Some(refresh) = refresh {
        answer["refresh_token"] = json!(refresh);
    }
    let mut response = super::document(
        StatusCode::OK,
        "application/json",
        bytes::Bytes::from(answer.to_string()),
    );
    // Tokens are credentials: no cache may keep them.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((response, user))
}

/// What `user` may do of each scope asked for: a repository's `pull` by the rules' read
/// right, `push` and `delete` (and `*`) by their write right with pushes on; the catalog to
/// whoever may list it (it then lists only what the user may read). Scopes of other kinds,
/// malformed ones and names that are no repository names get nothing.
fn grant(registry: &Registry, user: Option<&str>, scopes: &[&str]) -> Vec<Granted> {
    let auth = registry.auth();
    let auth_reads = registry.access.auth_reads;
    let mut granted: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for scope in scopes {
        let Some((kind, rest)) = scope.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        let allowed: Vec<String> = match kind {
            "repository" => {
                let Ok(repo) = name.parse::<Name>() else {
                    continue;
                };
                let read = auth.may_by_rules(auth_reads, user, &repo, Right::Read);
                let write = registry.access.push
                    && auth.may_by_rules(auth_reads, user, &repo, Right::Write);
                actions
                    .split(',')
                    .filter(|a| match *a {
                        "pull" => read,
                        "push" | "delete" | "*" => write && read,
                        _ => false,
                    })
                    .map(str::to_owned)
                    .collect()
            }
            "registry" if name == "catalog" => actions
                .split(',')
                .filter(|a| *a == "*" && auth.lists(auth_reads, user))
                .map(str::to_owned)
                .collect(),
            _ => continue,
        };
        let entry = granted
            .entry((kind.to_owned(), name.to_owned()))
            .or_default();
        for action in allowed {
            if !entry.contains(&action) {
                entry.push(action);
            }
        }
    }
    granted
        .into_iter()
        .filter(|(_, actions)| !actions.is_empty())
        .map(|((kind, name), actions)| Granted {
            kind,
            name,
            actions,
        })
        .collect()
}

/// The value of the first pair named `key`.
fn first<'a>(pairs: &'a [(&str, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
}

/// A `service` that is not this issuer's is refused (a token for it would not be taken).
fn check_service(issuer: &Issuer, service: Option<&str>) -> Result<(), RegistryError> {
    match service {
        Some(s) if s != issuer.service => Err(bad_request(&format!(
            "this issuer makes tokens for service {:?}, not {s:?}",
            issuer.service
        ))),
        _ => Ok(()),
    }
}

async fn read_form(body: &mut RequestBody) -> Result<Vec<u8>, RegistryError> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| bad_request(&format!("reading the request body failed: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_FORM {
                return Err(bad_request(&format!("the form is over {MAX_FORM} bytes")));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

fn bad_request(why: &str) -> RegistryError {
    RegistryError::new(Code::Unsupported, why.to_owned()).status(StatusCode::BAD_REQUEST)
}

fn signing_failed(why: &str) -> RegistryError {
    tracing::error!(error = why, "signing a token failed");
    RegistryError::new(Code::Unknown, "signing the token failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token.key");
        let a = Issuer::load_or_create(&path, "svc", "iss", Duration::from_secs(300)).expect("a");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Issuer::load_or_create(&path, "svc", "iss", Duration::from_secs(300)).expect("b");
        assert_eq!(
            a.public_pem(),
            b.public_pem(),
            "the same key the second time"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "no temp file left"
        );
        // What it signs, the registry's verifier takes, with exactly the access granted.
        let bundle = dir.path().join("pub.pem");
        std::fs::write(&bundle, a.public_pem()).expect("write");
        let verifier =
            super::super::token::Verifier::load("svc", "iss", None, Some(&bundle), None, None)
                .expect("verifier");
        let access = [Granted {
            kind: "repository".into(),
            name: "a".into(),
            actions: vec!["pull".into()],
        }];
        let token = a.access_token("alice", &access, now()).expect("sign");
        let grants = verifier.verify(&token).expect("valid");
        assert!(grants.allows("a", "pull"));
        assert!(!grants.allows("a", "push"));
        // A refresh token is no access token, and an access token no refresh token.
        let refresh = a.refresh_token("alice", "tag", now()).expect("refresh");
        assert!(
            verifier.verify(&refresh).is_err(),
            "refresh token taken as access"
        );
        assert_eq!(a.check_refresh(&refresh).expect("refresh").sub, "alice");
        assert!(
            a.check_refresh(&token).is_err(),
            "access token taken as refresh"
        );
        // Another key's refresh token is refused.
        let other = dir.path().join("other.key");
        let c = Issuer::load_or_create(&other, "svc", "iss", Duration::from_secs(300)).expect("c");
        assert!(
            a.check_refresh(&c.refresh_token("alice", "tag", now()).expect("c"))
                .is_err()
        );
    }

    #[test]
    fn a_key_that_is_not_pkcs8_p256_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token.key");
        std::fs::write(
            &path,
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .expect("write");
        let e = Issuer::load_or_create(&path, "s", "i", Duration::from_secs(1))
            .err()
            .expect("refused");
        assert!(e.contains("EC PRIVATE KEY") && e.contains("pkcs8"), "{e}");
    }
}
