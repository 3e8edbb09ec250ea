//! Who may do what, per request: what a request needs (`Need`), the users and rules in force
//! (`Auth`, replaced whole when their files are read again), and the check that answers 401,
//! 403 or 429 (`authorize`). The htpasswd file's own checks are `auth.rs`; the rules, `rules.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::Method;
use hyper::header::{self, HeaderValue};

use super::errors::{Code, RegistryError};
use super::router::Route;
use super::token::{self, Grants, Verifier};
use super::{Htpasswd, Registry, Rules, auth, rules};
use crate::reference::Name;

/// The realm clients are told to authenticate for.
pub(super) const REALM: &str = "Basic realm=\"quinistry\", charset=\"UTF-8\"";

/// The users of the htpasswd file and the access rules, as last read.
#[derive(Clone, Default)]
pub(super) struct Auth {
    pub(super) htpasswd: Option<Arc<Htpasswd>>,
    pub(super) rules: Option<Arc<Rules>>,
    /// Set: requests are authorized by Docker registry tokens, not by the two above.
    pub(super) token: Option<Arc<Verifier>>,
}

/// The user (or token subject) a request proves and what its token grants; or the refusal,
/// with the user for the log when it is one of the rules' and not of the credentials'.
type Authorized = Result<(Option<String>, Option<Arc<Grants>>), (RegistryError, Option<String>)>;

/// Who a request comes from, once authorized: a user of the htpasswd file or a token's
/// subject (`None`: anonymous), and with a token, what it grants.
#[derive(Clone, Copy, Default)]
pub(super) struct Caller<'a> {
    pub(super) user: Option<&'a str>,
    pub(super) grants: Option<&'a Grants>,
}

/// What a request needs to be let through.
#[derive(Clone, Copy)]
enum Need<'a> {
    /// Nothing (a path that is no API resource: the router's error answers it).
    Nothing,
    /// `/v2/`: the login check.
    Login,
    /// The catalog: open to whoever may read something; filtered by what they may read.
    List,
    Repository(&'a Name, rules::Right),
}

impl<'a> Need<'a> {
    fn of(method: &Method, route: &'a Result<Route, RegistryError>) -> Need<'a> {
        use rules::Right::{Read, Write};
        let read = if matches!(*method, Method::GET | Method::HEAD) {
            Read
        } else {
            Write
        };
        match route {
            Err(_) => Need::Nothing,
            Ok(Route::Base) => Need::Login,
            Ok(Route::Catalog) => Need::List,
            // Upload sessions are the write side even when asked about with GET.
            Ok(Route::Upload(name, _)) => Need::Repository(name, Write),
            Ok(
                Route::Tags(name)
                | Route::Manifest(name, _)
                | Route::Blob(name, _)
                | Route::Referrers(name, _),
            ) => Need::Repository(name, read),
        }
    }
}

impl Registry {
    /// Whether `caller` may do `right` on repository `name`.
    pub(super) fn may(&self, caller: Caller<'_>, name: &Name, right: rules::Right) -> bool {
        self.auth().may(self.access.auth_reads, caller, name, right)
    }
}

impl Auth {
    pub(super) fn may(
        &self,
        auth_reads: bool,
        caller: Caller<'_>,
        name: &Name,
        right: rules::Right,
    ) -> bool {
        if self.token.is_some() {
            let action = match right {
                rules::Right::Read => "pull",
                rules::Right::Write => "push",
            };
            return caller
                .grants
                .is_some_and(|g| g.allows(name.as_str(), action));
        }
        self.may_by_rules(auth_reads, caller.user, name, right)
    }

    /// Whether the htpasswd file and rules let `user` (`None`: anonymous) do `right` on
    /// `name` (the built-in token issuer asks this too).
    pub(super) fn may_by_rules(
        &self,
        auth_reads: bool,
        user: Option<&str>,
        name: &Name,
        right: rules::Right,
    ) -> bool {
        if self.htpasswd.is_none() {
            return true;
        }
        match &self.rules {
            Some(rules) => rules.allows(user, name, right),
            None => user.is_some() || (right == rules::Right::Read && !auth_reads),
        }
    }

    /// Whether `user` may ask for the catalog (which then shows only what they may read).
    pub(super) fn lists(&self, auth_reads: bool, user: Option<&str>) -> bool {
        self.rules.is_some() || user.is_some() || !auth_reads
    }

    fn may_do(&self, auth_reads: bool, user: Option<&str>, need: Need<'_>) -> bool {
        match need {
            Need::Nothing => true,
            Need::Login => user.is_some(),
            Need::List => self.lists(auth_reads, user),
            Need::Repository(name, right) => {
                let caller = Caller { user, grants: None };
                self.may(auth_reads, caller, name, right)
            }
        }
    }
}

/// Checks credentials where the access rules want them, and returns the user they prove (a
/// refusal too, when it is one of the rules' and not of the credentials').
/// A request anonymous clients may make needs none, but credentials sent with it are
/// checked (they may give more, and name the user in the log); wrong ones are then ignored,
/// as they were not needed. `/v2/` always asks: `docker login` expects a challenge there.
pub(super) async fn authorize(
    registry: &Registry,
    req: &hyper::http::request::Parts,
    route: &Result<Route, RegistryError>,
    remote: SocketAddr,
    secure: bool,
) -> Authorized {
    // One reading for the whole request: a reload meanwhile applies to the next one.
    let auth = registry.auth();
    if let Some(verifier) = &auth.token {
        return by_token(verifier, req, route, secure);
    }
    let Some(htpasswd) = &auth.htpasswd else {
        return Ok((None, None));
    };
    let auth_reads = registry.access.auth_reads;
    let need = Need::of(&req.method, route);
    let anonymous = auth.may_do(auth_reads, None, need);
    let credentials = req.headers.get(header::AUTHORIZATION);
    if credentials.is_none() && anonymous {
        return Ok((None, None));
    }
    let error = match htpasswd.check(credentials, remote.ip()).await {
        auth::Verdict::User(user) if auth.may_do(auth_reads, Some(&user), need) => {
            return Ok((Some(user), None));
        }
        auth::Verdict::User(user) => return Err((denied(&user, need), Some(user))),
        _ if anonymous => return Ok((None, None)),
        verdict => refusal(verdict, credentials.is_some()),
    };
    Err((error, None))
}

/// The answer to credentials that prove no user (`sent`: some were sent): 429 for a client
/// or a server that must wait, else 401 with the Basic challenge.
pub(super) fn refusal(verdict: auth::Verdict, sent: bool) -> RegistryError {
    match verdict {
        auth::Verdict::Throttled(wait) => RegistryError::new(
            Code::TooManyRequests,
            "too many wrong passwords from this address; wait before trying again",
        )
        .header(header::RETRY_AFTER, HeaderValue::from(wait)),
        auth::Verdict::Busy => RegistryError::new(
            Code::TooManyRequests,
            "too many logins are being checked; retry in a moment",
        )
        .header(header::RETRY_AFTER, HeaderValue::from(1)),
        auth::Verdict::Refused | auth::Verdict::User(_) => RegistryError::new(
            Code::Unauthorized,
            if sent {
                "wrong user name or password"
            } else {
                "authentication required"
            },
        )
        .header(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM)),
    }
}

/// The token path: every request but one the router refuses needs a token that grants what
/// it does; without one, or with one that does not, a 401 whose challenge names the scope
/// to ask the issuer for.
fn by_token(
    verifier: &Verifier,
    req: &hyper::http::request::Parts,
    route: &Result<Route, RegistryError>,
    secure: bool,
) -> Authorized {
    let need = Need::of(&req.method, route);
    let action = match req.method {
        Method::GET | Method::HEAD => "pull",
        Method::DELETE => "delete",
        _ => "push",
    };
    // Written out only for a refusal: an accepted request never needs it.
    let scope = || match need {
        Need::Nothing | Need::Login => None,
        Need::List => Some(token::CATALOG_SCOPE.to_owned()),
        // An upload session's status is the push side (see `Need::of`).
        Need::Repository(name, rules::Right::Write) if action == "pull" => {
            Some(token::repository_scope(name.as_str(), "push"))
        }
        Need::Repository(name, _) => Some(token::repository_scope(name.as_str(), action)),
    };
    if let Need::Nothing = need {
        return Ok((None, None));
    }
    let refuse = |message: String, error: Option<&str>, user: Option<String>| {
        let scope = scope();
        let own = if verifier.has_realm() {
            String::new()
        } else {
            own_realm(req, secure)
        };
        let challenge = verifier.challenge(&own, scope.as_deref(), error);
        let e = RegistryError::new(Code::Unauthorized, message);
        match HeaderValue::from_str(&challenge) {
            Ok(v) => Err((e.header(header::WWW_AUTHENTICATE, v), user)),
            Err(_) => Err((e, user)),
        }
    };
    let bearer = req
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(bearer) = bearer else {
        return refuse("a token is required".into(), None, None);
    };
    let grants = match verifier.verify(bearer) {
        Ok(grants) => grants,
        Err(why) => return refuse(why, Some("invalid_token"), None),
    };
    let user = (!grants.subject.is_empty()).then(|| grants.subject.clone());
    let granted = match need {
        Need::Nothing | Need::Login => true,
        Need::List => grants.lists_catalog(),
        Need::Repository(name, rules::Right::Write) if action == "pull" => {
            grants.allows(name.as_str(), "push")
        }
        Need::Repository(name, _) => grants.allows(name.as_str(), action),
    };
    if !granted {
        let what = scope().unwrap_or_default();
        return refuse(
            format!("the token does not grant {what}"),
            Some("insufficient_scope"),
            user,
        );
    }
    Ok((user, Some(grants)))
}

/// The built-in issuer's URL as the client reached this server: its `Host` (HTTP/2's
/// authority), on the scheme of the connection. A host with characters no host name has is
/// not echoed into the header (`localhost` stands in; configure `realm` behind a proxy).
fn own_realm(req: &hyper::http::request::Parts, secure: bool) -> String {
    let host = req
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if secure { "https" } else { "http" };
    format!("{scheme}://{host}/token")
}

/// 403 for a user the rules do not let through.
fn denied(user: &str, need: Need<'_>) -> RegistryError {
    let what = match need {
        Need::Repository(name, right) => format!("{} repository {name}", right.verb()),
        _ => "do this".to_owned(),
    };
    RegistryError::new(Code::Denied, format!("user {user:?} may not {what}"))
}
