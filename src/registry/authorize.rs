//! Who may do what, per request: what a request needs (`Need`), the users and rules in force
//! (`Auth`, replaced whole when their files are read again), and the check that answers 401,
//! 403 or 429 (`authorize`). The htpasswd file's own checks are `auth.rs`; the rules, `rules.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::Method;
use hyper::header::{self, HeaderValue};

use super::errors::{Code, RegistryError};
use super::router::Route;
use super::{Htpasswd, Registry, Rules, auth, rules};
use crate::reference::Name;

/// The realm clients are told to authenticate for.
const REALM: &str = "Basic realm=\"quinistry\", charset=\"UTF-8\"";

/// The users of the htpasswd file and the access rules, as last read.
#[derive(Clone, Default)]
pub(super) struct Auth {
    pub(super) htpasswd: Option<Arc<Htpasswd>>,
    pub(super) rules: Option<Arc<Rules>>,
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
    /// Whether `user` (`None`: an anonymous client) may do `right` on repository `name`.
    pub(super) fn may(&self, user: Option<&str>, name: &Name, right: rules::Right) -> bool {
        self.auth().may(self.access.auth_reads, user, name, right)
    }
}

impl Auth {
    pub(super) fn may(
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

    fn may_do(&self, auth_reads: bool, user: Option<&str>, need: Need<'_>) -> bool {
        match need {
            Need::Nothing => true,
            Need::Login => user.is_some(),
            Need::List => self.rules.is_some() || user.is_some() || !auth_reads,
            Need::Repository(name, right) => self.may(auth_reads, user, name, right),
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
) -> Result<Option<String>, (RegistryError, Option<String>)> {
    // One reading for the whole request: a reload meanwhile applies to the next one.
    let auth = registry.auth();
    let Some(htpasswd) = &auth.htpasswd else {
        return Ok(None);
    };
    let auth_reads = registry.access.auth_reads;
    let need = Need::of(&req.method, route);
    let anonymous = auth.may_do(auth_reads, None, need);
    let credentials = req.headers.get(header::AUTHORIZATION);
    if credentials.is_none() && anonymous {
        return Ok(None);
    }
    let refusal = match htpasswd.check(credentials, remote.ip()).await {
        auth::Verdict::User(user) if auth.may_do(auth_reads, Some(&user), need) => {
            return Ok(Some(user));
        }
        auth::Verdict::User(user) => return Err((denied(&user, need), Some(user))),
        _ if anonymous => return Ok(None),
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
        auth::Verdict::Refused => RegistryError::new(
            Code::Unauthorized,
            if credentials.is_some() {
                "wrong user name or password"
            } else {
                "authentication required"
            },
        )
        .header(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM)),
    };
    Err((refusal, None))
}

/// 403 for a user the rules do not let through.
fn denied(user: &str, need: Need<'_>) -> RegistryError {
    let what = match need {
        Need::Repository(name, right) => format!("{} repository {name}", right.verb()),
        _ => "do this".to_owned(),
    };
    RegistryError::new(Code::Denied, format!("user {user:?} may not {what}"))
}
