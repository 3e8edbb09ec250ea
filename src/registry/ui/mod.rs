//! The web page for people (`/ui/`): repositories (searched, paginated), a repository's tags
//! with the pull command, an image's configuration, layers and referrers, the programs served
//! on demand, the store, the mirrors.
//!
//! Server-rendered HTML (askama templates under `templates/ui/`, compiled in and escaped by
//! default), one stylesheet and one small script embedded in the binary, a strict
//! Content-Security-Policy (nothing from another origin, no inline code). The same users and
//! access rules as the API: a page lists only what its visitor may read, and a repository
//! they may not read answers as one that does not exist. Read-only (GET and HEAD): there is no
//! action a forged request could make. Credentials by the browser's Basic prompt
//! (`/ui/login`); with an outside token issuer and no htpasswd file the page is off (it has
//! no way to log anyone in).

use std::net::IpAddr;

use askama::Template;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode, header};

use super::Registry;
use super::auth::Verdict;
use super::body::Body;
use super::rules::Right;
use crate::digest::Digest;
use crate::reference::{Name, Tag};

const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("app.js");

/// Nothing from elsewhere, nothing inline, no framing, no form posting anywhere.
const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Repositories (and tags) per page.
const PAGE: usize = 50;

/// Names read from the store at a time by a search.
const SEARCH_BATCH: usize = 5000;

/// The largest config read to show an image.
const MAX_CONFIG: u64 = 4 << 20;

/// Whether `path` is the page's.
pub fn serves(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// Answers a request for the page; the user its credentials proved.
pub async fn answer(
    registry: &Registry,
    parts: &Parts,
    client: IpAddr,
) -> (Response<Body>, Option<String>) {
    let path = parts.uri.path();
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the web page is read-only\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return (r, None);
    }
    match path {
        "/" | "/ui" => return (redirect("/ui/"), None),
        "/ui/static/app.css" => return (asset(CSS, "text/css; charset=utf-8"), None),
        "/ui/static/app.js" => return (asset(JS, "text/javascript; charset=utf-8"), None),
        _ => {}
    }
    let auth = registry.auth();
    if auth.token.is_some() && auth.htpasswd.is_none() {
        let why = "the web page is off: with an outside token issuer this registry has no \
                   users of its own to log in\n";
        return (text(StatusCode::NOT_FOUND, why), None);
    }
    // The user the credentials prove; wrong ones ask again (a browser's prompt).
    let credentials = parts.headers.get(header::AUTHORIZATION);
    let user = match &auth.htpasswd {
        None => None,
        Some(htpasswd) => match (credentials, htpasswd.check(credentials, client).await) {
            (_, Verdict::User(u)) => Some(u),
            (None, _) => None,
            (Some(_), Verdict::Throttled(_) | Verdict::Busy) => {
                let why = "too many wrong passwords from this address; wait a minute\n";
                return (text(StatusCode::TOO_MANY_REQUESTS, why), None);
            }
            (Some(_), _) => return (challenge(), None),
        },
    };
    let auth_reads = registry.access.auth_reads;
    let visitor = Visitor {
        user: user.clone(),
        may_log_in: auth.htpasswd.is_some(),
    };
    // Nothing to show an anonymous visitor: ask for credentials at once.
    if path == "/ui/login"
        || (user.is_none() && auth.htpasswd.is_some() && auth_reads && auth.rules.is_none())
    {
        return match user {
            Some(_) => (redirect("/ui/"), user),
            None => (challenge(), None),
        };
    }
    let readable = |name: &Name| auth.may_by_rules(auth_reads, user.as_deref(), name, Right::Read);
    // A form sends its spaces as `+`.
    let query = super::pagination::query_pairs(parts.uri.query(), true);
    let param = |key: &str| {
        query
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    let page = match path {
        "/ui/" => repositories(registry, &readable, param("q"), param("after"), visitor).await,
        "/ui/repository" => match param("name").and_then(|n| n.parse::<Name>().ok()) {
            Some(name) if readable(&name) => {
                repository(registry, &name, param("after"), &host, visitor).await
            }
            _ => Err(Failure::NotFound),
        },
        "/ui/image" => match (
            param("name").and_then(|n| n.parse::<Name>().ok()),
            param("digest").and_then(|d| d.parse::<Digest>().ok()),
        ) {
            (Some(name), Some(digest)) if readable(&name) => {
                image(registry, &name, &digest, &host, visitor).await
            }
            _ => Err(Failure::NotFound),
        },
        "/ui/programs" => programs(registry, &readable, visitor).await,
        // An estimate reads the whole store: only for a logged-in user where there are users.
        "/ui/storage" => {
            let estimating =
                param("estimate").is_some() && (user.is_some() || auth.htpasswd.is_none());
            Ok(storage(registry, visitor, estimating).await)
        }
        _ => Err(Failure::NotFound),
    };
    let response = match page {
        Ok(html) => html_response(StatusCode::OK, html),
        Err(Failure::NotFound) => {
            let html = NotFound {
                visitor: Visitor {
                    user: user.clone(),
                    may_log_in: auth.htpasswd.is_some(),
                },
            }
            .render()
            .unwrap_or_default();
            html_response(StatusCode::NOT_FOUND, html)
        }
        Err(Failure::Store(e)) => {
            tracing::error!(error = %e, path, "web page failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed; see the server's log\n",
            )
        }
    };
    (response, user)
}

/// Why a page could not be made.
enum Failure {
    /// No such page, or a repository the visitor may not read (the same answer).
    NotFound,
    Store(String),
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Failure {
        Failure::Store(e.to_string())
    }
}

impl From<askama::Error> for Failure {
    fn from(e: askama::Error) -> Failure {
        Failure::Store(format!("template: {e}"))
    }
}

/// Who is looking: shown in every page's header.
#[derive(Clone)]
pub struct Visitor {
    user: Option<String>,
    may_log_in: bool,
}

#[derive(Template)]
#[template(path = "ui/not_found.html")]
struct NotFound {
    visitor: Visitor,
}

/// One row of the repository list.
struct RepoRow {
    name: String,
    tags: usize,
    /// The size of the image its newest-sorting tag (`latest` first) names.
    size: String,
    /// Where the repository comes from: `"stored"`, `"on demand"`, `"mirror"`.
    kind: &'static str,
}

#[derive(Template)]
#[template(path = "ui/repositories.html")]
struct Repositories {
    visitor: Visitor,
    q: String,
    rows: Vec<RepoRow>,
    next: Option<String>,
    total_hint: String,
}

async fn repositories(
    registry: &Registry,
    readable: &(dyn Fn(&Name) -> bool + Sync),
    q: Option<String>,
    after: Option<String>,
    visitor: Visitor,
) -> Result<String, Failure> {
    let q = q.unwrap_or_default().trim().to_owned();
    let served = match &registry.images {
        Some(images) => images.names().await,
        None => Vec::new(),
    };
    let mut names: Vec<Name> = Vec::with_capacity(PAGE + 1);
    let mut cursor = after.clone();
    if q.is_empty() {
        // Page by page from the store, as the catalog does: a cost that does not grow with it.
        loop {
            let batch = registry
                .store()
                .repositories_after(cursor.as_deref(), PAGE + 1)
                .await?;
            let end = batch.last().filter(|_| batch.len() == PAGE + 1).cloned();
            let from = cursor.clone();
            let mut merged: Vec<Name> = batch;
            merged.extend(
                served
                    .iter()
                    .filter(|n| {
                        from.as_deref().is_none_or(|c| n.as_str() > c)
                            && end.as_ref().is_none_or(|e| *n <= e)
                    })
                    .cloned(),
            );
            merged.sort();
            merged.dedup();
            for name in merged {
                if names.len() == PAGE + 1 {
                    break;
                }
                if readable(&name) {
                    names.push(name);
                }
            }
            match end {
                Some(end) if names.len() < PAGE + 1 => cursor = Some(end.to_string()),
                _ => break,
            }
        }
    } else {
        // A search reads the names from the cursor on until a page is full (a substring can
        // be anywhere), in the store's pages, which cost what they hold.
        let _slot = registry
            .searches
            .acquire()
            .await
            .map_err(|_| Failure::Store("the server is shutting down".into()))?;
        let needle = q.to_lowercase();
        let matches = |n: &Name| n.as_str().to_lowercase().contains(&needle) && readable(n);
        let mut found: Vec<Name> = served
            .iter()
            .filter(|n| after.as_deref().is_none_or(|a| n.as_str() > a) && matches(n))
            .cloned()
            .collect();
        loop {
            let batch = registry
                .store()
                .repositories_after(cursor.as_deref(), SEARCH_BATCH)
                .await?;
            let end = batch
                .last()
                .filter(|_| batch.len() == SEARCH_BATCH)
                .cloned();
            found.extend(batch.into_iter().filter(|n| matches(n)));
            found.sort();
            found.dedup();
            // Full once PAGE + 1 names sort before where the store has read to.
            let settled = found
                .iter()
                .filter(|n| end.as_ref().is_none_or(|e| *n <= e))
                .count();
            match end {
                Some(e) if settled <= PAGE => cursor = Some(e.to_string()),
                _ => break,
            }
        }
        found.truncate(PAGE + 1);
        names = found;
    }
    let next = (names.len() > PAGE).then(|| names[PAGE - 1].to_string());
    names.truncate(PAGE);
    let mut rows = Vec::with_capacity(names.len());
    for name in names {
        // One repository whose records cannot be read costs its row's details, not the page.
        let row = match repo_row(registry, &name, &served).await {
            Ok(row) => row,
            Err(Failure::Store(e)) => {
                tracing::warn!(%name, error = %e, "web page: a repository's details");
                RepoRow {
                    name: name.to_string(),
                    tags: 0,
                    size: "unreadable".into(),
                    kind: "",
                }
            }
            Err(Failure::NotFound) => continue,
        };
        rows.push(row);
    }
    let total_hint = registry
        .store()
        .totals()
        .map(|(blobs, bytes)| format!("{blobs} blobs, {} stored", human(bytes.max(0) as u64)))
        .unwrap_or_default();
    Ok(Repositories {
        visitor,
        q,
        rows,
        next,
        total_hint,
    }
    .render()?)
}

async fn repo_row(registry: &Registry, name: &Name, served: &[Name]) -> Result<RepoRow, Failure> {
    let tags = registry.store().tags(name).await?;
    let on_demand = served.contains(name);
    let kind = if registry.mirror_of(name).is_some() {
        "mirror"
    } else if on_demand {
        "on demand"
    } else {
        "stored"
    };
    let shown = tags
        .iter()
        .find(|t| t.as_str() == "latest")
        .or_else(|| tags.last());
    let size = match shown {
        Some(tag) => match registry.tag(name, tag).await? {
            Some(d) => summary(registry, &d).await?.size,
            None => String::new(),
        },
        None => String::new(),
    };
    let count = if on_demand && tags.is_empty() {
        1
    } else {
        tags.len()
    };
    Ok(RepoRow {
        name: name.to_string(),
        tags: count,
        size,
        kind,
    })
}

/// What a list shows of an image: its size and platforms, its creation time.
struct Summary {
    size: String,
    platforms: String,
    created: String,
    kind: &'static str,
}

async fn summary(registry: &Registry, digest: &Digest) -> Result<Summary, Failure> {
    let Some(m) = registry.manifest(digest).await? else {
        return Ok(Summary {
            size: String::new(),
            platforms: String::new(),
            created: String::new(),
            kind: "missing",
        });
    };
    let doc: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap_or_default();
    if let Some(children) = doc["manifests"].as_array() {
        let mut platforms = Vec::new();
        let mut total = 0;
        for c in children {
            let p = &c["platform"];
            if let (Some(os), Some(arch)) = (p["os"].as_str(), p["architecture"].as_str()) {
                platforms.push(match p["variant"].as_str() {
                    Some(v) => format!("{os}/{arch}/{v}"),
                    None => format!("{os}/{arch}"),
                });
            }
            if let Some(d) = c["digest"].as_str().and_then(|d| d.parse::<Digest>().ok())
                && let Some(child) = registry.manifest(&d).await?
            {
                let doc: serde_json::Value =
                    serde_json::from_slice(&child.bytes).unwrap_or_default();
                total += image_bytes(&doc);
            }
        }
        return Ok(Summary {
            size: if total > 0 {
                human(total)
            } else {
                String::new()
            },
            platforms: platforms.join(", "),
            created: String::new(),
            kind: "index",
        });
    }
    let config = read_config(registry, &doc).await?;
    Ok(Summary {
        size: human(image_bytes(&doc)),
        platforms: match (config["os"].as_str(), config["architecture"].as_str()) {
            (Some(os), Some(arch)) => format!("{os}/{arch}"),
            _ => String::new(),
        },
        created: config["created"].as_str().unwrap_or_default().to_owned(),
        kind: "image",
    })
}

/// The bytes of a manifest's config and layers.
fn image_bytes(doc: &serde_json::Value) -> u64 {
    let layers = doc["layers"].as_array().map_or(0, |l| {
        l.iter().filter_map(|l| l["size"].as_u64()).sum::<u64>()
    });
    layers + doc["config"]["size"].as_u64().unwrap_or(0)
}

/// An image's config document (`Null` when it is not JSON or not stored).
async fn read_config(
    registry: &Registry,
    manifest: &serde_json::Value,
) -> Result<serde_json::Value, Failure> {
    let Some(d) = manifest["config"]["digest"]
        .as_str()
        .and_then(|d| d.parse::<Digest>().ok())
    else {
        return Ok(serde_json::Value::Null);
    };
    match registry.store().read_small_blob(&d, MAX_CONFIG).await {
        Ok(Some(bytes)) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
        Ok(None) | Err(crate::store::StoreError::BlobUnknown(_)) => Ok(serde_json::Value::Null),
        Err(e) => Err(e.into()),
    }
}

struct TagRow {
    tag: String,
    digest: String,
    short: String,
    summary: Summary,
    pull: String,
}

#[derive(Template)]
#[template(path = "ui/repository.html")]
struct Repository {
    visitor: Visitor,
    name: String,
    rows: Vec<TagRow>,
    next: Option<String>,
    note: String,
}

async fn repository(
    registry: &Registry,
    name: &Name,
    after: Option<String>,
    host: &str,
    visitor: Visitor,
) -> Result<String, Failure> {
    let mut tags: Vec<Tag> = registry
        .store()
        .tags_after(name, after.as_deref(), PAGE + 1)
        .await?;
    let mut note = String::new();
    if let Some(images) = &registry.images
        && images.has(name).await
    {
        note = match images.packed(name) {
            Some(_) => {
                "Served on demand: packed from this machine's files, again when they change.".into()
            }
            None => "Served on demand: not packed yet; the first pull packs it.".into(),
        };
        for t in images.tags(name).await {
            if !tags.contains(&t) && after.as_deref().is_none_or(|a| t.as_str() > a) {
                tags.push(t);
            }
        }
        tags.sort();
    }
    if let Some(mirror) = registry.mirror_of(name) {
        note = format!(
            "A pull-through mirror of {}: tags are checked upstream after {}.",
            mirror.0.upstream(),
            humantime::format_duration(mirror.0.tag_ttl())
        );
    }
    let exists = !tags.is_empty() || registry.has_repository(name).await?;
    if !exists {
        return Err(Failure::NotFound);
    }
    let next = (tags.len() > PAGE).then(|| tags[PAGE - 1].to_string());
    tags.truncate(PAGE);
    let mut rows = Vec::new();
    for tag in tags {
        let digest = match registry.tag(name, &tag).await? {
            Some(d) => Some(d),
            None => registry.images.as_ref().and_then(|i| i.packed(name)),
        };
        let summary = match &digest {
            Some(d) => summary(registry, d).await?,
            None => Summary {
                size: String::new(),
                platforms: String::new(),
                created: String::new(),
                kind: "on demand",
            },
        };
        let digest = digest.map(|d| d.to_string()).unwrap_or_default();
        rows.push(TagRow {
            pull: format!("docker pull {host}/{name}:{tag}"),
            tag: tag.to_string(),
            short: short(&digest),
            digest,
            summary,
        });
    }
    Ok(Repository {
        visitor,
        name: name.to_string(),
        rows,
        next,
        note,
    }
    .render()?)
}

struct LayerRow {
    digest: String,
    short: String,
    size: String,
    media_type: String,
    /// What made it (the config's history entry), and its comment.
    made_by: String,
}

struct ReferrerRow {
    digest: String,
    short: String,
    artifact_type: String,
}

#[derive(Template)]
#[template(path = "ui/image.html")]
struct ImagePage {
    visitor: Visitor,
    name: String,
    digest: String,
    media_type: String,
    pull: String,
    summary: Summary,
    /// For an index: its platforms' manifests.
    children: Vec<(String, String, String)>,
    entrypoint: String,
    cmd: String,
    workdir: String,
    user: String,
    env: Vec<String>,
    labels: Vec<(String, String)>,
    layers: Vec<LayerRow>,
    referrers: Vec<ReferrerRow>,
}

async fn image(
    registry: &Registry,
    name: &Name,
    digest: &Digest,
    host: &str,
    visitor: Visitor,
) -> Result<String, Failure> {
    let linked = registry
        .store()
        .is_linked(name, crate::store::Link::Manifest, digest)
        .await?;
    let on_demand = registry
        .images
        .as_ref()
        .is_some_and(|i| i.packed(name).as_ref() == Some(digest));
    if !linked && !on_demand {
        return Err(Failure::NotFound);
    }
    let Some(m) = registry.manifest(digest).await? else {
        return Err(Failure::NotFound);
    };
    let doc: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap_or_default();
    let summary = summary(registry, digest).await?;
    let children = doc["manifests"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|c| {
                    let d = c["digest"].as_str()?.to_owned();
                    let p = &c["platform"];
                    let platform = format!(
                        "{}/{}",
                        p["os"].as_str().unwrap_or("?"),
                        p["architecture"].as_str().unwrap_or("?")
                    );
                    Some((short(&d), d, platform))
                })
                .collect()
        })
        .unwrap_or_default();
    let config = read_config(registry, &doc).await?;
    let c = &config["config"];
    let words = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let mut labels: Vec<(String, String)> = c["Labels"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    labels.sort();
    // A layer's history entry: the ones that made no layer are skipped.
    let history: Vec<String> = config["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|e| !e["empty_layer"].as_bool().unwrap_or(false))
                .map(|e| {
                    let by = e["created_by"].as_str().unwrap_or_default();
                    // quinistry's comment says what the layer holds (a package's name).
                    match e["comment"].as_str() {
                        Some(c) if !c.is_empty() => c.to_owned(),
                        _ => by.to_owned(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let layers = doc["layers"]
        .as_array()
        .map(|l| {
            l.iter()
                .enumerate()
                .map(|(i, l)| {
                    let d = l["digest"].as_str().unwrap_or_default().to_owned();
                    let annotated = l["annotations"]["org.opencontainers.image.title"]
                        .as_str()
                        .map(str::to_owned);
                    LayerRow {
                        short: short(&d),
                        digest: d,
                        size: human(l["size"].as_u64().unwrap_or(0)),
                        media_type: l["mediaType"].as_str().unwrap_or_default().to_owned(),
                        made_by: annotated
                            .or_else(|| history.get(i).cloned())
                            .unwrap_or_default(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let mut referrers = Vec::new();
    for r in registry.store().referrers(name, digest).await? {
        let artifact_type = match registry.manifest(&r).await? {
            Some(m) => {
                let doc: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap_or_default();
                doc["artifactType"]
                    .as_str()
                    .or(doc["config"]["mediaType"].as_str())
                    .unwrap_or_default()
                    .to_owned()
            }
            None => String::new(),
        };
        let d = r.to_string();
        referrers.push(ReferrerRow {
            short: short(&d),
            digest: d,
            artifact_type,
        });
    }
    Ok(ImagePage {
        visitor,
        name: name.to_string(),
        digest: digest.to_string(),
        media_type: m.media_type.to_string(),
        pull: format!("docker pull {host}/{name}@{digest}"),
        summary,
        children,
        entrypoint: words(&c["Entrypoint"]),
        cmd: words(&c["Cmd"]),
        workdir: c["WorkingDir"].as_str().unwrap_or_default().to_owned(),
        user: c["User"].as_str().unwrap_or_default().to_owned(),
        env: c["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        labels,
        layers,
        referrers,
    }
    .render()?)
}

#[derive(Template)]
#[template(path = "ui/programs.html")]
struct Programs {
    visitor: Visitor,
    on: bool,
    rows: Vec<(String, bool)>,
    more: usize,
}

/// The programs shown, at most (a root of a whole `/usr/bin` has thousands).
const PROGRAMS: usize = 2000;

async fn programs(
    registry: &Registry,
    readable: &(dyn Fn(&Name) -> bool + Sync),
    visitor: Visitor,
) -> Result<String, Failure> {
    let Some(images) = &registry.images else {
        return Ok(Programs {
            visitor,
            on: false,
            rows: Vec::new(),
            more: 0,
        }
        .render()?);
    };
    let names: Vec<Name> = images
        .names()
        .await
        .into_iter()
        .filter(|n| readable(n))
        .collect();
    let more = names.len().saturating_sub(PROGRAMS);
    let rows = names
        .into_iter()
        .take(PROGRAMS)
        .map(|n| {
            let packed = images.packed(&n).is_some();
            (n.to_string(), packed)
        })
        .collect();
    Ok(Programs {
        visitor,
        on: true,
        rows,
        more,
    }
    .render()?)
}

struct MirrorRow {
    prefix: String,
    upstream: String,
    ttl: String,
    retention: String,
    hits: u64,
    misses: u64,
    stale: u64,
    errors: u64,
    hit_rate: String,
}

#[derive(Template)]
#[template(path = "ui/storage.html")]
struct Storage {
    visitor: Visitor,
    blobs: String,
    bytes: String,
    gc: Option<(String, String)>,
    /// What the next pass would do, when asked for (`?estimate`).
    estimate: Option<String>,
    mirrors: Vec<MirrorRow>,
}

/// What the next collection would free: a dry run of it (reads every record, removes
/// nothing), one at a time whoever asks.
async fn estimate(registry: &Registry) -> String {
    let Ok(_one) = registry.estimating.try_lock() else {
        return "another estimate is running; reload in a moment".into();
    };
    let mut policy = registry.gc_policy.clone().unwrap_or_default();
    policy.dry_run = true;
    let served = registry.on_demand_served();
    match crate::pack::cache::collect(registry.store(), served, &policy).await {
        Ok(report) => report.summary(),
        Err(e) => format!("the estimate failed: {e}"),
    }
}

async fn storage(registry: &Registry, visitor: Visitor, estimating: bool) -> String {
    let (blobs, bytes) = match registry.store().totals() {
        Some((b, y)) => (b.to_string(), human(y.max(0) as u64)),
        None => ("counting…".into(), "counting…".into()),
    };
    let gc = registry.last_gc().map(|(at, report)| {
        let ago = at.elapsed().unwrap_or_default();
        let ago = humantime::format_duration(std::time::Duration::from_secs(ago.as_secs()));
        (format!("{ago} ago"), report.summary())
    });
    let mirrors = registry
        .mirrors
        .as_ref()
        .map(|m| {
            m.list()
                .iter()
                .map(|m| {
                    let [hits, misses, stale, errors] = m.counts();
                    let served = hits + misses + stale;
                    MirrorRow {
                        prefix: m.prefix.clone(),
                        upstream: m.upstream().to_owned(),
                        ttl: humantime::format_duration(m.tag_ttl()).to_string(),
                        retention: m
                            .retention()
                            .map(|r| humantime::format_duration(r).to_string())
                            .unwrap_or_else(|| "kept".into()),
                        hits,
                        misses,
                        stale,
                        errors,
                        hit_rate: if served == 0 {
                            "-".into()
                        } else {
                            format!("{:.0}%", 100.0 * (hits + stale) as f64 / served as f64)
                        },
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let estimate = match estimating {
        true => Some(estimate(registry).await),
        false => None,
    };
    Storage {
        visitor,
        blobs,
        bytes,
        gc,
        estimate,
        mirrors,
    }
    .render()
    .unwrap_or_default()
}

/// `sha256:0123456789ab`: enough to tell images apart on a page.
fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}

/// Bytes for people: 1.5 MB.
fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn html_response(status: StatusCode, html: String) -> Response<Body> {
    let mut r = Response::new(Body::bytes(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    // A page shows what its visitor may read: never kept by a shared cache.
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("private, no-store"),
    );
    r
}

fn secure_headers(h: &mut hyper::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::bytes(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("public, max-age=3600"),
    );
    secure_headers(h);
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::bytes(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, header::HeaderValue::from_static(to));
    r
}

/// The browser's prompt for a user name and password.
fn challenge() -> Response<Body> {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "log in with a user of this registry\n",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"quinistry\", charset=\"UTF-8\""),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1500), "1.5 kB");
        assert_eq!(human(524_288_000), "524.3 MB");
    }

    #[test]
    fn templates_escape_what_they_show() {
        let html = NotFound {
            visitor: Visitor {
                user: Some("<script>alert(1)</script>".into()),
                may_log_in: true,
            },
        }
        .render()
        .expect("render");
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("&#60;script&#62;alert(1)") || html.contains("&lt;script&gt;alert(1)"),
            "{html}"
        );
    }
}
