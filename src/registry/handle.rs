//! One request, from its path to its answer: the health and token endpoints and the web
//! page first, then the route, the mirror's renaming, the authorization, and the resource
//! handler (`dispatch`); the access-log record and the notification it makes.

use super::*;

/// Answers one request. Never fails: every error becomes an OCI error response.
pub(super) async fn handle(
    registry: &Registry,
    req: Request<Incoming>,
    remote: SocketAddr,
    secure: bool,
    pace: body::Pace,
    in_flight: InFlight,
) -> Response<Logged> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    // HTTP/2 sends a body only as the client's window allows: a stalled stream is watched by
    // its pieces (`conn::Connections::cut_stalled`); HTTP/1 by its socket (`conn::Watched`).
    let multiplexed = parts.version >= hyper::Version::HTTP_2;
    let path = parts.uri.path();
    let mut log = body::Access {
        remote,
        method: parts.method.clone(),
        // A 60 KiB path is logged by its first 256 characters.
        path: router::truncate(path),
        query: parts.uri.query().map(body::redact),
        route: "",
        status: 0,
        user: None,
        upload: None,
        digest: None,
        received: 0,
        start,
        quiet: false,
    };
    let issuer = registry.access.issuer.as_ref().filter(|_| path == "/token");
    let mut observed = None;
    let (mut head, body) = match health::answer(registry, path).await {
        Some(response) => {
            log.route = if path == "/healthz" {
                "healthz"
            } else {
                "readyz"
            };
            log.quiet = !registry.access.log_health;
            response.into_parts()
        }
        None if registry.ui && ui::serves(path) => {
            log.route = "ui";
            let (response, user) = ui::answer(registry, &parts, remote.ip()).await;
            log.user = user;
            response.into_parts()
        }
        None if let Some(issuer) = issuer => {
            log.route = "token";
            let mut body = RequestBody::new(body, pace);
            let answer = issuer::answer(registry, issuer, &parts, &mut body, remote.ip()).await;
            body.discard_rest(&parts.headers).await;
            log.received = body.received();
            let (answer, user) = match answer {
                Ok((response, user)) => (response, user),
                Err((e, user)) => (error_response(e), user),
            };
            log.user = user;
            answer.into_parts()
        }
        None => {
            let mut route = router::route(path);
            if registry.mirrors.is_some()
                && let Ok(r) = &route
                && let Some(name) = r.name()
                && let Some(mirrored) = mirrored::renamed(registry, name, parts.uri.query()).await
            {
                route = route.map(|r| r.renamed(mirrored));
            }
            log.route = route_label(&route);
            (log.upload, log.digest) = route_ids(&route);
            // What the answer's event (if any) will be about: kept only with endpoints.
            observed = registry
                .notifier
                .as_ref()
                .and_then(|_| route.as_ref().ok().cloned());
            let mut body = RequestBody::new(body, pace);
            let result = match authorize::authorize(registry, &parts, &route, remote, secure).await
            {
                Ok((user, grants)) => {
                    let caller = authorize::Caller {
                        user: user.as_deref(),
                        grants: grants.as_deref(),
                    };
                    let answer =
                        dispatch(registry, &parts, route, &mut body, remote, secure, caller).await;
                    log.user = user;
                    answer
                }
                Err((e, user)) => {
                    log.user = user;
                    Err(e)
                }
            };
            // An answer given before the body was read (a refusal): read the rest first, so
            // the client is not reset while still sending and gets to see the answer.
            body.discard_rest(&parts.headers).await;
            log.received = body.received();
            result.unwrap_or_else(error_response).into_parts()
        }
    };
    // What the answer names: the session a POST opened, the digest a PUT stored or a tag
    // resolved to; so a push can be followed from its POST to its manifest.
    let text = |name: &str| {
        head.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if log.upload.is_none() {
        log.upload = text("docker-upload-uuid");
    }
    if let Some(digest) = text("docker-content-digest") {
        log.digest = Some(digest);
    }
    head.headers.insert(
        HeaderName::from_static(API_VERSION.0),
        HeaderValue::from_static(API_VERSION.1),
    );
    // HEAD answers carry GET's headers, Content-Length included, and no body.
    let body = if parts.method == Method::HEAD {
        Body::Empty
    } else {
        body
    };
    log.status = head.status.as_u16();
    if let (Some(route), Some(notifier)) = (&observed, &registry.notifier) {
        let user = log.user.as_deref();
        notifier.observe(route, &parts, &head, remote, user, log.received, secure);
    }
    Response::from_parts(head, Logged::new(body, log, in_flight, multiplexed))
}

/// The API resource a path names, for the access log and metrics labels.
fn route_label(route: &Result<Route, RegistryError>) -> &'static str {
    match route {
        Ok(Route::Base) => "base",
        Ok(Route::Catalog) => "catalog",
        Ok(Route::Tags(_)) => "tags",
        Ok(Route::Manifest(..)) => "manifest",
        Ok(Route::Blob(..)) => "blob",
        Ok(Route::Upload(..)) => "upload",
        Ok(Route::Referrers(..)) => "referrers",
        Err(_) => "invalid",
    }
}

/// The upload session and digest a path names, for the access log.
fn route_ids(route: &Result<Route, RegistryError>) -> (Option<String>, Option<String>) {
    match route {
        Ok(Route::Upload(_, Some(id))) => (Some(id.as_str().to_owned()), None),
        Ok(Route::Blob(_, d) | Route::Referrers(_, d)) => (None, Some(d.to_string())),
        Ok(Route::Manifest(_, router::Reference::Digest(d))) => (None, Some(d.to_string())),
        _ => (None, None),
    }
}

async fn dispatch(
    registry: &Registry,
    req: &hyper::http::request::Parts,
    route: Result<Route, RegistryError>,
    body: &mut RequestBody,
    remote: SocketAddr,
    secure: bool,
    caller: authorize::Caller<'_>,
) -> Result<Response<Body>, RegistryError> {
    let (method, query, headers) = (&req.method, req.uri.query(), &req.headers);
    let read = matches!(*method, Method::GET | Method::HEAD);
    if !read && !registry.access.push {
        return Err(read_only());
    }
    if !read
        && let Ok(route) = &route
        && let Some(name) = route.name()
        && let Some((mirror, _)) = registry.mirror_of(name)
    {
        return Err(RegistryError::new(
            Code::Unsupported,
            format!(
                "{name} is a mirror of {}: it is read-only",
                mirror.upstream()
            ),
        )
        .header(header::ALLOW, HeaderValue::from_static("GET, HEAD")));
    }
    match (route?, method) {
        (Route::Base, _) if read => Ok(base::get()),
        (Route::Catalog, _) if read => catalog::get(registry, query, caller).await,
        (Route::Tags(name), _) if read => tags::get(registry, &name, query).await,
        (Route::Manifest(name, reference), m) => match *m {
            Method::GET | Method::HEAD => {
                manifests::get(registry, &name, &reference, headers).await
            }
            Method::PUT => manifests::put(registry, &name, &reference, query, headers, body).await,
            Method::DELETE => manifests::delete(registry, &name, &reference).await,
            _ => Err(not_allowed(m, "GET, HEAD, PUT, DELETE")),
        },
        (Route::Blob(name, digest), m) => match *m {
            Method::GET | Method::HEAD => {
                // Maps only where the kernel copies from them (hyper's HTTP/1.1 writes the
                // map itself); HTTP/2 framing and TLS encryption read them in user space,
                // where a blob cut short behind the store's back is SIGBUS (body::Body::File).
                // Read in small pieces for HTTP/2, whose stalled streams each hold one.
                let read_in = match req.version {
                    v if v <= hyper::Version::HTTP_11 && !secure => None,
                    v if v <= hyper::Version::HTTP_11 => Some(body::STREAM_CHUNK),
                    _ => Some(body::H2_CHUNK),
                };
                let head = *m == Method::HEAD;
                blobs::get(registry, &name, &digest, headers, read_in, head).await
            }
            Method::DELETE => blobs::delete(registry, &name, &digest).await,
            _ => Err(not_allowed(m, "GET, HEAD, DELETE")),
        },
        (Route::Upload(name, None), &Method::POST) => {
            let mut q = uploads::Query::parse(query);
            // A mount reads its source: from a repository the user may not read, it is no
            // mount (the spec's fallback: an upload session, and the blob must be sent).
            let from = q.from.as_deref().and_then(|f| f.parse::<Name>().ok());
            if let Some(from) = from
                && !registry.may(caller, &from, rules::Right::Read)
            {
                q.mount = None;
            }
            uploads::post(registry, &name, &q, headers, body, remote.ip()).await
        }
        (Route::Upload(_, None), m) => Err(not_allowed(m, "POST")),
        (Route::Upload(name, Some(id)), m) => match *m {
            Method::GET => uploads::status(registry, &name, &id).await,
            Method::PATCH => uploads::patch(registry, &name, &id, headers, body).await,
            Method::PUT => {
                let q = uploads::Query::parse(query);
                uploads::put(registry, &name, &id, &q, headers, body).await
            }
            Method::DELETE => uploads::cancel(registry, &name, &id).await,
            _ => Err(not_allowed(m, "GET, PATCH, PUT, DELETE")),
        },
        (Route::Referrers(name, digest), _) if read => {
            referrers::get(registry, &name, &digest, query).await
        }
        (_, m) => Err(not_allowed(m, "GET, HEAD")),
    }
}

/// 405 for a write while pushing is off.
pub(super) fn read_only() -> RegistryError {
    RegistryError::new(
        Code::Unsupported,
        "this registry is read-only (start it with --push to accept pushes)",
    )
    .header(header::ALLOW, HeaderValue::from_static("GET, HEAD"))
}

pub(super) fn not_allowed(method: &Method, allow: &'static str) -> RegistryError {
    RegistryError::new(
        Code::Unsupported,
        format!("{method} is not supported on this endpoint"),
    )
    .header(header::ALLOW, HeaderValue::from_static(allow))
}
