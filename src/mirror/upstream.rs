//! One upstream registry, as a client speaks to it: requests under `/v2/`, with the auth its
//! challenge asks for (Basic with the configured credentials, or a Bearer token fetched from
//! its realm for the request's scope, anonymously or with the credentials, remembered until
//! it expires).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::header::{self, HeaderMap, HeaderValue};

/// A token is used until this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);

/// A token's life when the realm does not say (the spec's default).
const TOKEN_DEFAULT_LIFE: Duration = Duration::from_secs(60);

/// How long Basic credentials are sent unasked once an upstream asked for them.
const BASIC_LIFE: Duration = Duration::from_secs(3600);

/// Tokens remembered at most (one per scope); the map starts over when full.
const TOKENS_MAX: usize = 1024;

/// What failed, in words that name the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("upstream {url} answered {status}: {body}")]
    Answered {
        url: String,
        status: u16,
        body: String,
    },
}

impl UpstreamError {
    /// Whether the upstream said the thing does not exist (404), as opposed to failing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::Answered { status: 404, .. })
    }
}

/// An upstream and its credentials.
pub struct Upstream {
    /// `https://registry-1.docker.io`, no trailing slash.
    pub base: String,
    client: reqwest::Client,
    credentials: Option<(String, String)>,
    /// Bearer tokens by scope, with when they stop being used.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

/// A Bearer challenge's parameters.
#[derive(Debug, Default, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

impl Upstream {
    pub fn new(
        base: &str,
        credentials: Option<(String, String)>,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Upstream, String> {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout);
        if let Some(pem) = ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("upstream {base}: the CA file: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("upstream {base}: {e}"))?;
        Ok(Upstream {
            base: base.trim_end_matches('/').to_owned(),
            client,
            credentials,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// `METHOD /v2/PATH` with `accept`, authenticated as the upstream asks; the response if
    /// it is a success, else an error naming the upstream and its answer.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: &str,
        scope: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = format!("{}/v2/{path}", self.base);
        let mut auth = self.remembered(scope);
        for attempt in 0..2 {
            let mut req = self.client.request(method.clone(), &url);
            if !accept.is_empty() {
                req = req.header(header::ACCEPT, accept);
            }
            if let Some(a) = &auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            let response = req.send().await.map_err(|e| UpstreamError::Unreachable {
                url: url.clone(),
                why: chain(&e),
            })?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                auth = Some(self.authenticate(response.headers(), scope, &url).await?);
                continue;
            }
            return check(response, &url).await;
        }
        Err(UpstreamError::Unreachable {
            url,
            why: "refused the credentials it asked for".into(),
        })
    }

    /// The Authorization value remembered for `scope`, if still good.
    fn remembered(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(scope)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(value, _)| value.clone())
    }

    /// The Authorization value a 401's challenge asks for.
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        scope: &str,
        url: &str,
    ) -> Result<String, UpstreamError> {
        let challenge = headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let refused = |why: &str| UpstreamError::Answered {
            url: url.to_owned(),
            status: 401,
            body: why.to_owned(),
        };
        if challenge.len() >= 5 && challenge[..5].eq_ignore_ascii_case("basic") {
            let Some((user, password)) = &self.credentials else {
                return Err(refused("it wants credentials, and none are configured"));
            };
            // Sent from the start from now on: a Basic upstream asks every time otherwise.
            let value = basic(user, password);
            self.remember(scope, &value, BASIC_LIFE);
            return Ok(value);
        }
        let Some(bearer) = parse_bearer(challenge) else {
            return Err(refused(&format!(
                "a challenge that is neither Basic nor Bearer: {challenge:?}"
            )));
        };
        let mut query = Vec::new();
        if let Some(service) = &bearer.service {
            query.push(format!("service={}", encode(service)));
        }
        let wanted = bearer.scope.clone().unwrap_or_else(|| scope.to_owned());
        query.push(format!("scope={}", encode(&wanted)));
        let separator = if bearer.realm.contains('?') { '&' } else { '?' };
        let token_url = format!("{}{separator}{}", bearer.realm, query.join("&"));
        let mut req = self.client.get(&token_url);
        if let Some((user, password)) = &self.credentials {
            req = req.basic_auth(user, Some(password));
        }
        let response = req.send().await.map_err(|e| UpstreamError::Unreachable {
            url: bearer.realm.clone(),
            why: chain(&e),
        })?;
        let response = check(response, &bearer.realm).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| UpstreamError::Unreachable {
                url: bearer.realm.clone(),
                why: e.to_string(),
            })?;
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| UpstreamError::Unreachable {
                url: bearer.realm.clone(),
                why: format!("a token answer that is not JSON: {e}"),
            })?;
        let token = body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .ok_or_else(|| UpstreamError::Unreachable {
                url: bearer.realm.clone(),
                why: "a token answer without a token".into(),
            })?;
        let life = body["expires_in"]
            .as_u64()
            .map_or(TOKEN_DEFAULT_LIFE, Duration::from_secs);
        let value = format!("Bearer {token}");
        self.remember(scope, &value, life.saturating_sub(TOKEN_MARGIN));
        Ok(value)
    }

    /// Keeps `value` as the Authorization of `scope` for `life`.
    fn remember(&self, scope: &str, value: &str, life: Duration) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= TOKENS_MAX {
            tokens.clear();
        }
        tokens.insert(scope.to_owned(), (value.to_owned(), Instant::now() + life));
    }
}

/// The response if it is a success (2xx), else an error with the start of its body.
async fn check(response: reqwest::Response, url: &str) -> Result<reqwest::Response, UpstreamError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let body = read_limited(response, 300).await.unwrap_or_default();
    let body: String = String::from_utf8_lossy(&body).chars().take(300).collect();
    Err(UpstreamError::Answered {
        url: url.to_owned(),
        status,
        body,
    })
}

/// The body, or its first `max` bytes when it is longer (an error's) or an error (a token's:
/// see the callers); an upstream is not trusted with our memory.
async fn read_limited(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        let room = max - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Percent-encodes a query value (all but RFC 3986's unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// `Bearer realm="…",service="…",scope="…"` (parameters in any order, quoted or not).
fn parse_bearer(challenge: &str) -> Option<Challenge> {
    let rest = challenge.trim();
    if rest.len() < 7 || !rest[..7].eq_ignore_ascii_case("bearer ") {
        return None;
    }
    let mut c = Challenge::default();
    let mut rest = &rest[7..];
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        match key.to_ascii_lowercase().as_str() {
            "realm" => c.realm = value.to_owned(),
            "service" => c.service = Some(value.to_owned()),
            "scope" => c.scope = Some(value.to_owned()),
            _ => {}
        }
        rest = after.trim_start_matches(',').trim();
    }
    (!c.realm.is_empty()).then_some(c)
}

/// A header value of text known to be one (a token, a media type list).
pub fn header_text(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

/// An error and its causes, `: `-joined: reqwest's own message ("error sending request")
/// says nothing of why (a refused connection, an untrusted certificate).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse_as_registries_write_them() {
        let c = parse_bearer(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .expect("parsed");
        assert_eq!(c.realm, "https://auth.docker.io/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(c.scope.as_deref(), Some("repository:library/alpine:pull"));
        let c = parse_bearer(r#"bearer service="s", realm="http://x/token""#).expect("parsed");
        assert_eq!(
            (c.realm.as_str(), c.service.as_deref()),
            ("http://x/token", Some("s"))
        );
        assert_eq!(parse_bearer("Basic realm=\"x\""), None);
        assert_eq!(parse_bearer("Bearer service=\"s\""), None, "no realm");
        assert_eq!(parse_bearer("Bearer realm=\"unterminated"), None);
    }
}
