//! `serve --config FILE`: a TOML file that can say everything `serve`'s flags say.
//!
//! Precedence, highest first: a flag on the command line, its `QUINISTRY_*` environment
//! variable, the file, the built-in default. clap tells which of its values came from the
//! command line or the environment (`ArgMatches::value_source`); the file fills every other.
//! A list given on the command line (`--image`, `--env`, INPUTs) replaces the file's list.
//! `[[image]]` tables are served besides any `--image`.
//!
//! Every table denies keys it does not know, so a typo is an error naming the key and its
//! line, not a setting silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;

use quinistry::mirror::MirrorConfig;
use quinistry::ondemand::FileImage;
use quinistry::registry::Grant;
use quinistry::registry::notify::Endpoint;

use super::args::{GcArgs, ServeArgs, StoreArg};

/// The whole file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct File {
    store: Option<PathBuf>,
    listen: Option<String>,
    #[serde(default)]
    tls: Tls,
    #[serde(default)]
    metrics: Metrics,
    #[serde(default)]
    log: Log,
    #[serde(default)]
    pub access: Access,
    #[serde(default)]
    limits: Limits,
    /// The image packed at start (default: quinistry itself).
    #[serde(default)]
    start: Start,
    /// How layers are made, for the start image and on-demand ones.
    #[serde(default)]
    pack: Pack,
    #[serde(default)]
    on_demand: OnDemand,
    /// On-demand images, as in an `--images` file.
    #[serde(default)]
    pub image: Vec<FileImage>,
    /// Garbage collection and retention (`serve --gc-interval`, `quinistry gc`).
    #[serde(default)]
    gc: Gc,
    /// `[[notifications.endpoints]]`: where events go.
    #[serde(default)]
    notifications: Notifications,
    /// `[ui]`: the web page.
    #[serde(default)]
    ui: Ui,
    /// `[[mirror]]`: pull-through caches of other registries.
    #[serde(default)]
    mirror: Vec<MirrorEntry>,
}

/// One `[[mirror]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorEntry {
    prefix: String,
    upstream: String,
    #[serde(default)]
    default: bool,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    tag_ttl: Option<String>,
    retention: Option<String>,
}

impl MirrorEntry {
    fn into_config(self) -> Result<MirrorConfig, String> {
        let key = |k: &str| format!("mirror {:?}: {k}", self.prefix);
        let mut c = mirror_config(&self.prefix, &self.upstream)?;
        c.default = self.default;
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{}: give password or password_file, not both",
                    key("")
                ));
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("{} {}: {e}", key("password_file"), f.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        c.credentials = match (self.username.clone(), password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => return Err(format!("{}: username and password go together", key(""))),
        };
        if let Some(ca) = &self.ca {
            c.ca = Some(
                std::fs::read(ca).map_err(|e| format!("{} {}: {e}", key("ca"), ca.display()))?,
            );
        }
        if let Some(ttl) = duration(&key("tag_ttl"), self.tag_ttl.clone())? {
            c.tag_ttl = ttl;
        }
        c.retention = duration(&key("retention"), self.retention.clone())?;
        if c.retention.is_some_and(|r| r.is_zero()) {
            return Err(format!("{}: must be more than 0", key("retention")));
        }
        Ok(c)
    }
}

/// A mirror of `upstream` under `prefix`, with the defaults (no credentials, tags
/// re-checked after 10 minutes).
pub fn mirror_config(prefix: &str, upstream: &str) -> Result<MirrorConfig, String> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() || prefix.parse::<quinistry::reference::Name>().is_err() {
        return Err(format!(
            "mirror prefix {prefix:?}: want a repository name such as docker.io"
        ));
    }
    if !(upstream.starts_with("http://") || upstream.starts_with("https://")) {
        return Err(format!(
            "mirror {prefix:?}: upstream {upstream:?}: want an http:// or https:// URL"
        ));
    }
    Ok(MirrorConfig {
        prefix: prefix.to_owned(),
        upstream: upstream.to_owned(),
        default: false,
        credentials: None,
        ca: None,
        tag_ttl: std::time::Duration::from_secs(600),
        retention: None,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Notifications {
    #[serde(default)]
    endpoints: Vec<NotifyEndpoint>,
}

/// One endpoint, with distribution's key names where it has them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyEndpoint {
    name: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    timeout: Option<String>,
    backoff: Option<String>,
    actions: Option<Vec<String>>,
    #[serde(default)]
    ignored_media_types: Vec<String>,
    /// Events held while the endpoint is down, at most.
    queue: Option<usize>,
}

impl NotifyEndpoint {
    fn into_endpoint(self) -> Result<Endpoint, String> {
        let key = |k: &str| format!("notifications.endpoints {:?}: {k}", self.name);
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "{} {:?}: want an http:// or https:// URL",
                key("url"),
                self.url
            ));
        }
        let mut e = Endpoint::new(&self.name, &self.url);
        e.headers = self.headers.clone().into_iter().collect();
        if let Some(t) = duration(&key("timeout"), self.timeout.clone())? {
            e.timeout = t;
        }
        if let Some(b) = duration(&key("backoff"), self.backoff.clone())? {
            e.backoff = b;
        }
        if e.timeout.is_zero() || e.backoff.is_zero() {
            return Err(format!(
                "{}: timeout and backoff must be more than 0",
                key("")
            ));
        }
        if let Some(actions) = &self.actions {
            if let Some(bad) = actions
                .iter()
                .find(|a| !["push", "pull", "delete", "mount"].contains(&a.as_str()))
            {
                return Err(format!(
                    "{} {bad:?}: want push, pull, delete or mount",
                    key("actions")
                ));
            }
            e.actions = actions.iter().cloned().collect();
        }
        e.ignored_media_types = self.ignored_media_types.iter().cloned().collect();
        match self.queue {
            Some(0) => return Err(format!("{} must be at least 1", key("queue"))),
            Some(q) => e.queue = q,
            None => {}
        }
        Ok(e)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Gc {
    interval: Option<String>,
    grace: Option<String>,
    link_grace: Option<String>,
    keep_untagged: Option<String>,
    keep_tags: Option<Vec<KeepTags>>,
}

/// `[[gc.keep_tags]]`: in the repositories `repositories` matches, keep the `last` tags.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepTags {
    repositories: String,
    last: usize,
}

/// A duration as the flags take it (`"90s"`, `"1h"`, `"2d"`).
fn duration(key: &str, text: Option<String>) -> Result<Option<std::time::Duration>, String> {
    text.map(|t| humantime::parse_duration(&t).map_err(|e| format!("{key} {t:?}: {e}")))
        .transpose()
}

/// Fills the collector's settings from the file's `[gc]` wherever the user set nothing;
/// the interval, for `serve`.
fn apply_gc(
    gc: Gc,
    m: &ArgMatches,
    args: &mut GcArgs,
) -> Result<Option<std::time::Duration>, String> {
    fill(m, "grace", &mut args.grace, duration("gc.grace", gc.grace)?);
    fill(
        m,
        "link_grace",
        &mut args.link_grace,
        duration("gc.link_grace", gc.link_grace)?,
    );
    fill(
        m,
        "keep_untagged",
        &mut args.keep_untagged,
        duration("gc.keep_untagged", gc.keep_untagged)?.map(Some),
    );
    let rules = gc
        .keep_tags
        .map(|r| r.into_iter().map(|k| (k.repositories, k.last)).collect());
    fill(m, "keep_tags", &mut args.keep_tags, rules);
    duration("gc.interval", gc.interval)
}

/// `quinistry gc --config FILE`: the file's `store` and `[gc]`, under the flags; the
/// retention of its `[[mirror]]`s.
pub fn apply_to_gc(
    file: File,
    m: &ArgMatches,
    store: &mut StoreArg,
    args: &mut GcArgs,
) -> Result<Vec<quinistry::store::gc::Unpulled>, String> {
    fill_store(m, store, file.store);
    apply_gc(file.gc, m, args)?;
    let mirrors = file
        .mirror
        .into_iter()
        .map(MirrorEntry::into_config)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(unpulled(&mirrors))
}

/// What the collector evicts from these mirrors' repositories.
pub fn unpulled(mirrors: &[MirrorConfig]) -> Vec<quinistry::store::gc::Unpulled> {
    mirrors
        .iter()
        .filter_map(|m| {
            Some(quinistry::store::gc::Unpulled {
                prefix: m.prefix.clone(),
                after: m.retention?,
            })
        })
        .collect()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Ui {
    enabled: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Tls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Metrics {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Log {
    format: Option<String>,
    health: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Access {
    push: Option<bool>,
    htpasswd: Option<PathBuf>,
    auth_reads: Option<bool>,
    auth_failures_per_minute: Option<u32>,
    insecure_push: Option<bool>,
    /// Repository patterns anyone may read without logging in.
    pub anonymous_read: Option<Vec<String>>,
    /// Per user of the htpasswd file: the patterns they may read, or read and write.
    pub users: Option<BTreeMap<String, Grant>>,
    /// `[access.token]`: Docker registry tokens (distribution's key names).
    token: Option<Token>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct Token {
    service: Option<String>,
    issuer: Option<String>,
    realm: Option<String>,
    rootcertbundle: Option<PathBuf>,
    jwks: Option<PathBuf>,
    signing_key: Option<PathBuf>,
    expiration: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Limits {
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    idle_timeout: Option<u64>,
    body_timeout: Option<u64>,
    min_body_rate: Option<u64>,
    write_timeout: Option<u64>,
    shutdown_timeout: Option<u64>,
    max_blob_size: Option<Size>,
    upload_timeout: Option<u64>,
    max_uploads: Option<usize>,
    max_uploads_per_client: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Start {
    name: Option<String>,
    tag: Option<String>,
    inputs: Option<Vec<String>>,
    entrypoint: Option<String>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Pack {
    compression: Option<String>,
    level: Option<u32>,
    block_size: Option<Size>,
    threads: Option<usize>,
    closure: Option<String>,
    recommends: Option<bool>,
    cache: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OnDemand {
    root: Option<PathBuf>,
    packages: Option<bool>,
    max_packs: Option<usize>,
    prepack: Option<bool>,
    rescan: Option<u64>,
    images_files: Option<Vec<PathBuf>>,
}

/// A size as a number of bytes or as text with a suffix (`"512M"`), as the flags take it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(self, key: &str) -> Result<usize, String> {
        match self {
            Size::Bytes(n) => usize::try_from(n).map_err(|_| format!("{key}: {n} is too large")),
            Size::Text(t) => {
                quinistry::pack::compress::parse_size(&t).map_err(|e| format!("{key}: {e}"))
            }
        }
    }
}

impl File {
    /// Reads and parses `path`; errors name the file, and TOML's the key and line.
    pub fn load(path: &Path) -> Result<File, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --config {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| format!("--config {}: {}", path.display(), e.to_string().trim()))
    }
}

/// Whether the user set `id` (on the command line or in its environment variable).
fn given(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Puts the file's value in `slot` unless the user set `id`.
fn fill<T>(m: &ArgMatches, id: &str, slot: &mut T, value: Option<T>) {
    if let Some(v) = value
        && !given(m, id)
    {
        *slot = v;
    }
}

/// The file's store, unless the user gave `--store` or `QUINISTRY_STORE` (read by
/// `StoreArg::dir`, not by clap, so `fill` cannot see it).
fn fill_store(m: &ArgMatches, arg: &mut StoreArg, store: Option<PathBuf>) {
    let env_store = std::env::var_os("QUINISTRY_STORE").is_some_and(|v| !v.is_empty());
    if !env_store {
        fill(m, "store", &mut arg.store, store.map(Some));
    }
}

/// The log format: the flag or its variable, else the file's.
pub fn log_format(root: &ArgMatches, flag: Option<String>, file: Option<&File>) -> Option<String> {
    if given(root, "log_format") {
        return flag;
    }
    file.and_then(|f| f.log.format.clone()).or(flag)
}

/// Fills `args` from the file wherever the user set nothing; the file's images and access
/// rules are returned for `serve` to take as they are.
pub fn apply(
    file: File,
    m: &ArgMatches,
    args: &mut ServeArgs,
) -> Result<super::serve::FromFile, String> {
    let File {
        store,
        listen,
        tls,
        metrics,
        log,
        access,
        limits,
        start,
        pack,
        on_demand,
        image,
        gc,
        notifications,
        mirror,
        ui,
    } = file;
    fill(m, "no_ui", &mut args.no_ui, ui.enabled.map(|on| !on));
    let mirrors = mirror
        .into_iter()
        .map(MirrorEntry::into_config)
        .collect::<Result<Vec<_>, _>>()?;
    let endpoints = notifications
        .endpoints
        .into_iter()
        .map(NotifyEndpoint::into_endpoint)
        .collect::<Result<Vec<_>, _>>()?;
    let interval = apply_gc(gc, m, &mut args.gc)?;
    fill(m, "gc_interval", &mut args.gc_interval, interval.map(Some));
    fill_store(m, &mut args.store, store);
    fill(m, "listen", &mut args.listen, listen);
    fill(m, "tls_cert", &mut args.tls_cert, tls.cert.map(Some));
    fill(m, "tls_key", &mut args.tls_key, tls.key.map(Some));
    fill(
        m,
        "tls_client_ca",
        &mut args.tls_client_ca,
        tls.client_ca.map(Some),
    );
    fill(
        m,
        "metrics_listen",
        &mut args.metrics_listen,
        metrics.listen.map(Some),
    );
    fill(m, "log_health", &mut args.log_health, log.health);
    fill(m, "push", &mut args.push, access.push);
    fill(
        m,
        "htpasswd",
        &mut args.htpasswd,
        access.htpasswd.clone().map(Some),
    );
    fill(m, "auth_reads", &mut args.auth_reads, access.auth_reads);
    let token = access.token.clone().unwrap_or_default();
    fill(
        m,
        "token_service",
        &mut args.token_service,
        token.service.map(Some),
    );
    fill(
        m,
        "token_issuer",
        &mut args.token_issuer,
        token.issuer.map(Some),
    );
    fill(
        m,
        "token_realm",
        &mut args.token_realm,
        token.realm.map(Some),
    );
    fill(
        m,
        "token_rootcertbundle",
        &mut args.token_rootcertbundle,
        token.rootcertbundle.map(Some),
    );
    fill(m, "token_jwks", &mut args.token_jwks, token.jwks.map(Some));
    fill(
        m,
        "token_signing_key",
        &mut args.token_signing_key,
        token.signing_key.map(Some),
    );
    fill(
        m,
        "token_expiration",
        &mut args.token_expiration,
        duration("access.token.expiration", token.expiration)?,
    );
    fill(
        m,
        "auth_failures_per_minute",
        &mut args.auth_failures_per_minute,
        access.auth_failures_per_minute,
    );
    fill(
        m,
        "insecure_push",
        &mut args.insecure_push,
        access.insecure_push,
    );
    fill(
        m,
        "max_connections",
        &mut args.max_connections,
        limits.max_connections.map(Some),
    );
    fill(
        m,
        "max_connections_per_client",
        &mut args.max_connections_per_client,
        limits.max_connections_per_client.map(Some),
    );
    fill(
        m,
        "min_body_rate",
        &mut args.min_body_rate,
        limits.min_body_rate,
    );
    fill(
        m,
        "idle_timeout",
        &mut args.idle_timeout,
        limits.idle_timeout,
    );
    fill(
        m,
        "body_timeout",
        &mut args.body_timeout,
        limits.body_timeout,
    );
    fill(
        m,
        "write_timeout",
        &mut args.write_timeout,
        limits.write_timeout,
    );
    fill(
        m,
        "shutdown_timeout",
        &mut args.shutdown_timeout,
        limits.shutdown_timeout,
    );
    let max_blob = limits
        .max_blob_size
        .map(|s| s.bytes("limits.max_blob_size"))
        .transpose()?;
    fill(
        m,
        "max_blob_size",
        &mut args.max_blob_size,
        max_blob.map(Some),
    );
    fill(
        m,
        "upload_timeout",
        &mut args.upload_timeout,
        limits.upload_timeout,
    );
    fill(
        m,
        "max_uploads",
        &mut args.max_uploads,
        limits.max_uploads.map(Some),
    );
    fill(
        m,
        "max_uploads_per_client",
        &mut args.max_uploads_per_client,
        limits.max_uploads_per_client,
    );
    fill(m, "name", &mut args.name, start.name.map(Some));
    fill(m, "tag", &mut args.tag, start.tag);
    let image_args = &mut args.image;
    fill(m, "inputs", &mut image_args.inputs, start.inputs);
    fill(
        m,
        "entrypoint",
        &mut image_args.entrypoint,
        start.entrypoint.map(Some),
    );
    fill(m, "cmd", &mut image_args.cmd, start.cmd);
    fill(m, "env", &mut image_args.env, start.env);
    if let Some(c) = &pack.compression
        && !["gzip", "zstd", "none"].contains(&c.as_str())
    {
        return Err(format!("pack.compression {c:?}: use gzip, zstd or none"));
    }
    fill(
        m,
        "compression",
        &mut image_args.compression,
        pack.compression,
    );
    fill(m, "level", &mut image_args.level, pack.level.map(Some));
    let block = pack
        .block_size
        .map(|s| s.bytes("pack.block_size"))
        .transpose()?;
    fill(m, "block_size", &mut image_args.block_size, block.map(Some));
    fill(
        m,
        "threads",
        &mut image_args.threads,
        pack.threads.map(Some),
    );
    fill(
        m,
        "closure",
        &mut image_args.closure,
        pack.closure.map(Some),
    );
    fill(
        m,
        "no_recommends",
        &mut image_args.no_recommends,
        pack.recommends.map(|r| !r),
    );
    fill(
        m,
        "no_cache",
        &mut image_args.no_cache,
        pack.cache.map(|c| !c),
    );
    fill(m, "root", &mut args.root, on_demand.root.map(Some));
    fill(m, "packages", &mut args.packages, on_demand.packages);
    fill(
        m,
        "max_packs",
        &mut args.max_packs,
        on_demand.max_packs.map(Some),
    );
    fill(
        m,
        "no_prepack",
        &mut args.no_prepack,
        on_demand.prepack.map(|p| !p),
    );
    fill(m, "rescan", &mut args.rescan, on_demand.rescan);
    fill(
        m,
        "image_files",
        &mut args.image_files,
        on_demand.images_files,
    );
    Ok(super::serve::FromFile {
        images: image,
        access,
        endpoints,
        mirrors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_is_an_error_naming_it_and_its_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("q.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\n[limits]\nidle_timeout = 5\nidle_timout = 6\n",
        )
        .expect("write");
        let err = File::load(&path).err().expect("refused");
        assert!(
            err.contains("idle_timout") && err.contains("line 4"),
            "{err}"
        );
    }
}
