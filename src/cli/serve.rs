//! `quinistry serve`: checks the settings, packs what is packed at start, and runs the
//! registry until a signal.

use std::net::SocketAddr;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinistry::ondemand::{FileImage, ImageSpec, OnDemand, Setup};
use quinistry::pack::ClosureMode;
use quinistry::reference::{Name, Tag, TaggedName};
use quinistry::registry::{self, Registry, Server, Tls, TlsFiles};
use quinistry::store::gc;
use quinistry::store::spec::StoreSpec;

use super::args::{DEFAULT_LISTEN, ServeArgs};
use super::config;
use crate::{Prepared, msg, pack_with_progress, prepare, report, say};

/// What the config file says that has no flag: its `[[image]]` tables and access rules.
#[derive(Default)]
pub struct FromFile {
    pub images: Vec<FileImage>,
    pub access: config::Access,
    /// `[[notifications.endpoints]]`.
    pub endpoints: Vec<registry::notify::Endpoint>,
    /// `[[mirror]]`.
    pub mirrors: Vec<quinistry::mirror::MirrorConfig>,
}

/// Every setting of `serve`, checked: what `config check` reports and `run` uses.
pub struct Settings {
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    tls: Option<Arc<Tls>>,
    config: registry::Config,
    /// File descriptors this process may open.
    fds: u64,
    access: registry::Access,
    /// The files the users and rules are read from again on SIGHUP or a change.
    auth_files: Option<AuthFiles>,
    token_files: Option<TokenFiles>,
    image: Prepared,
    /// The name and tag of the image packed at start, if one is.
    start: Option<(Option<Name>, Tag)>,
    /// The on-demand images, if any.
    on_demand: Option<Setup>,
    prepack: bool,
    rescan: Duration,
    /// What the store is made of.
    store: StoreSpec,
    /// `--redirect`: how long a blob GET's presigned URL is valid.
    redirect: Option<Duration>,
    /// A collector pass every this long, with this policy (`--gc-interval`).
    gc: Option<(Duration, gc::Policy)>,
    /// Where events go: `--notify` URLs and the file's endpoints.
    endpoints: Vec<registry::notify::Endpoint>,
    /// Pull-through mirrors: `--mirror` and the file's `[[mirror]]`.
    mirrors: Vec<quinistry::mirror::MirrorConfig>,
    /// The web page at /ui/.
    ui: bool,
}

/// The endpoints of `--notify URL` (named by their URL, with the defaults) and of the file;
/// names must differ (they label the metrics).
fn endpoints(
    urls: &[String],
    file: Vec<registry::notify::Endpoint>,
) -> Result<Vec<registry::notify::Endpoint>, String> {
    let mut all = Vec::new();
    for url in urls {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("--notify {url:?}: want an http:// or https:// URL"));
        }
        all.push(registry::notify::Endpoint::new(url, url));
    }
    all.extend(file);
    let mut names = std::collections::HashSet::new();
    if let Some(twice) = all.iter().find(|e| !names.insert(e.name.clone())) {
        return Err(format!(
            "notification endpoint {:?} is named twice",
            twice.name
        ));
    }
    Ok(all)
}

/// How long the URL of a `--redirect` is valid: long enough for a client to follow it (S3
/// checks it when the GET starts, so a long download is not cut).
const REDIRECT_VALID: Duration = Duration::from_secs(600);

/// Checks every setting without binding or writing anything.
pub fn settle(args: ServeArgs, file: FromFile) -> Result<Settings, String> {
    if args.rescan == 0 {
        return Err("--rescan must be at least 1 second".to_owned());
    }
    let listen = address(&args.listen, "--listen")?;
    let metrics_listen = args
        .metrics_listen
        .as_deref()
        .map(|a| address(a, "--metrics-listen"))
        .transpose()?;
    let tag: Tag = args
        .tag
        .parse()
        .map_err(|err| format!("invalid --tag: {err}"))?;
    let name: Option<Name> = match &args.name {
        Some(n) => Some(n.parse().map_err(|err| format!("invalid --name: {err}"))?),
        None => None,
    };
    let mut specs = args
        .images
        .iter()
        .map(|s| s.parse::<ImageSpec>())
        .collect::<Result<Vec<_>, _>>()?;
    for file in &args.image_files {
        specs.extend(quinistry::ondemand::load_images(file)?);
    }
    for image in file.images {
        specs.push(image.into_spec().map_err(|e| format!("--config: {e}"))?);
    }
    let on_demand = !specs.is_empty() || args.root.is_some() || args.packages;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut server_closure = match &args.image.closure {
        Some(c) => c.parse()?,
        None => ClosureMode::default(),
    };
    if args.image.no_recommends {
        server_closure = server_closure.without_recommends();
    }
    let setup = Setup::new(
        specs,
        args.root.as_deref(),
        args.packages || args.root.is_some(),
        args.max_packs.unwrap_or(cpus),
        server_closure,
    )?;
    // With --image or --root and no inputs, nothing is packed at start: the settings of the
    // start image would go nowhere, so they are refused rather than ignored.
    let pack_at_start = !on_demand || !args.image.inputs.is_empty();
    if !pack_at_start {
        let a = &args.image;
        if a.entrypoint.is_some() || !a.cmd.is_empty() || !a.env.is_empty() || name.is_some() {
            return Err(
                "--entrypoint, --cmd, --env and --name describe the image of the \
                        INPUTs packed at start; with --image or --root and no INPUTs there is \
                        none"
                    .to_owned(),
            );
        }
    }
    let tls = tls(&args)?;
    let mut gc = match args.gc_interval {
        Some(every) if every.is_zero() => return Err("--gc-interval must be more than 0".into()),
        Some(every) => Some((every, args.gc.policy(false)?)),
        None => None,
    };
    let (config, fds) = limits(&args)?;
    let (access, token_files) = access(&args, listen, tls.is_some(), fds, file.access)?;
    let endpoints = endpoints(&args.notify, file.endpoints)?;
    let mut mirrors = Vec::new();
    for m in &args.mirror {
        let Some((prefix, upstream)) = m.split_once('=') else {
            return Err(format!("--mirror {m:?}: want PREFIX=URL"));
        };
        mirrors.push(config::mirror_config(prefix, upstream)?);
    }
    mirrors.extend(file.mirrors);
    let mut prefixes = std::collections::HashSet::new();
    if let Some(twice) = mirrors.iter().find(|m| !prefixes.insert(m.prefix.clone())) {
        return Err(format!("mirror prefix {:?} is given twice", twice.prefix));
    }
    let unpulled = config::unpulled(&mirrors);
    match (&mut gc, unpulled.first()) {
        (_, None) => {}
        (Some((_, policy)), Some(_)) => policy.unpulled = unpulled,
        (None, Some(u)) => {
            return Err(format!(
                "mirror {:?}: retention evicts through the online collector: \
                 set --gc-interval (or [gc] interval) too",
                u.prefix
            ));
        }
    }
    let auth_files = args.htpasswd.clone().map(|htpasswd| AuthFiles {
        htpasswd,
        failures_per_minute: args.auth_failures_per_minute,
        config: args.config.clone(),
    });
    let store = args.store.spec()?;
    if args.redirect && !store.presigns() {
        return Err("--redirect sends clients to object storage: it needs an s3:// --store".into());
    }
    if !store.retention()
        && let Some((_, policy)) = &gc
        && (policy.keep_untagged.is_some() || !policy.keep_tags.is_empty())
    {
        return Err(
            "--keep-untagged and --keep-tags: retention of an s3:// store is not built yet".into(),
        );
    }
    let redirect = args.redirect.then_some(REDIRECT_VALID);
    let (prepack, rescan) = (!args.no_prepack, Duration::from_secs(args.rescan));
    let mut image_args = args.image;
    if !pack_at_start {
        // --closure then speaks of the on-demand images only.
        image_args.closure = None;
    }
    let image = prepare(image_args)?;
    Ok(Settings {
        listen,
        metrics_listen,
        tls,
        config,
        fds,
        access,
        auth_files,
        token_files,
        image,
        start: pack_at_start.then_some((name, tag)),
        on_demand: on_demand.then_some(setup),
        prepack,
        rescan,
        store,
        redirect,
        gc,
        endpoints,
        mirrors,
        ui: !args.no_ui,
    })
}

impl Settings {
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        self.metrics_listen
    }
}

fn address(text: &str, flag: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("invalid {flag} {text:?}: use IP:PORT, e.g. {DEFAULT_LISTEN}"))
}

/// The lines `serve` prints about its settings before `listening`, and `config check` prints.
/// The files and folders the settings name that cannot be used now, one line each: the
/// store (or, for a new one, the folder it would be made in), the on-demand images' inputs
/// and root. TLS certificates and the htpasswd file were read by `settle` already.
pub fn unusable_paths(s: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(store_dir) = s.store.directory() {
        let existing = store_dir.ancestors().find(|a| a.exists());
        match existing {
            Some(dir) if dir == store_dir && !dir.is_dir() => {
                problems.push(format!("store {}: not a folder", dir.display()))
            }
            Some(dir) => {
                if let Err(e) = quinistry::ondemand::readable(dir) {
                    problems.push(format!("store {}: {e}", dir.display()));
                }
            }
            None => problems.push(format!(
                "store {}: no folder above it exists",
                store_dir.display()
            )),
        }
    }
    if s.start.is_some() && !s.image.is_self {
        for input in &s.image.inputs {
            if let Err(e) = quinistry::ondemand::readable(&input.source) {
                problems.push(format!("input {}: {e}", input.source.display()));
            }
        }
    }
    if let Some(setup) = &s.on_demand {
        problems.extend(setup.unreadable());
    }
    problems
}

pub fn summary(s: &Settings) -> Vec<String> {
    let c = &s.config;
    let mut lines = vec![
        format!("store      {}", s.store.describe()),
        format!("listen     {}", s.listen),
        format!("access     {}", describe(&s.access)),
        format!(
            "limits     {} connections ({} per client), {} uploads ({} per client), {} file descriptors; idle {} s, body {} s (at least {} B/s), write {} s",
            c.max_connections,
            c.max_connections_per_client,
            s.access.max_uploads,
            s.access.max_uploads_per_client,
            s.fds,
            c.idle_timeout.as_secs(),
            c.body_timeout.as_secs(),
            c.min_body_rate,
            c.write_timeout.as_secs(),
        ),
    ];
    if let Some((every, p)) = &s.gc {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        let mut line = format!(
            "gc         every {}; blobs kept {} after last use, layers without a manifest {}",
            d(every),
            d(&p.grace),
            d(&p.link_grace)
        );
        if let Some(u) = &p.keep_untagged {
            line += &format!(", untagged manifests {}", d(u));
        }
        for k in &p.keep_tags {
            line += &format!("; {}: last {} tags", k.pattern, k.last);
        }
        lines.push(line);
    }
    if let Some(tls) = &s.tls {
        let f = tls.files();
        lines.push(format!(
            "tls        {} ({}), reloaded when changed or on SIGHUP{}",
            f.cert.display(),
            f.key.display(),
            match &f.client_ca {
                Some(ca) => format!("; client certificates of {} required", ca.display()),
                None => String::new(),
            }
        ));
    }
    lines.push(
        match s.ui {
            true => "ui         a web page at /ui/ (off with --no-ui)",
            false => "ui         off",
        }
        .to_owned(),
    );
    for m in &s.mirrors {
        lines.push(format!(
            "mirror     {}/NAME <- {} (tags checked again after {}{}{})",
            m.prefix,
            m.upstream,
            humantime::format_duration(m.tag_ttl),
            match m.retention {
                Some(r) => format!(
                    "; evicted when not pulled for {}",
                    humantime::format_duration(r)
                ),
                None => String::new(),
            },
            if m.credentials.is_some() {
                ", with credentials"
            } else {
                ""
            }
        ));
    }
    for e in &s.endpoints {
        let mut actions: Vec<&str> = e.actions.iter().map(String::as_str).collect();
        actions.sort();
        lines.push(format!(
            "notify     {} -> {} ({}; queue {}, timeout {}, backoff {})",
            e.name,
            e.url,
            actions.join(", "),
            e.queue,
            humantime::format_duration(e.timeout),
            humantime::format_duration(e.backoff),
        ));
    }
    lines
}

/// `serve`: binds, packs what is packed at start, serves until a signal.
pub async fn run(mut s: Settings) -> Result<(), String> {
    // SIGHUP's default action ends the process. tokio's handler, once set, stays for the
    // process's life: from here on a SIGHUP only reloads what can be reloaded, and during the
    // pack at start, nothing.
    drop(
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot handle SIGHUP: {e}"))?,
    );
    // Bound first: a port in use is one line now, not after a pack of gigabytes.
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", s.listen))?;
    let metrics_listener = match s.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (--metrics-listen): {e}"))?,
        ),
        None => None,
    };
    if metrics_listener.is_some() {
        // Before the pack, so it is counted.
        quinistry::metrics::enable();
    }
    let store = s.store.open(false).await.map_err(msg)?;
    let mut pull = None;
    if let Some((name, tag)) = s.start.clone() {
        let name = match name {
            Some(n) => n,
            None => s.image.default_tag.clone()?.name,
        };
        let tagged = TaggedName { name, tag };
        let img = pack_with_progress(&store, &s.image, &tagged).await?;
        report(
            &img,
            &tagged,
            std::path::Path::new(&s.store.describe()),
            None,
        );
        pull = Some(tagged);
    }
    let mut prepack = None;
    let registry = match s.on_demand.take() {
        Some(setup) => {
            let (images, lines) =
                OnDemand::new(store.clone(), s.image.opts, s.image.threads, setup).await;
            let images = Arc::new(images);
            if s.prepack {
                prepack = Some(images.clone());
            }
            for line in &lines {
                say(format_args!("on demand  {line}"));
            }
            if lines.is_empty() {
                say(format_args!(
                    "on demand  no images yet (files added under --root will be)"
                ));
            }
            Registry::with_images(store.clone(), images)
        }
        None => Registry::new(store.clone()),
    };
    let notifier = match s.endpoints.is_empty() {
        true => None,
        false => {
            let source = listener.local_addr().map_err(msg)?.to_string();
            let notifier = registry::notify::Notifier::start(s.endpoints.clone(), source)?;
            Some(Arc::new(notifier))
        }
    };
    let registry = registry
        .with_access(s.access.clone())
        .with_redirect(s.redirect)
        .with_notifier(notifier)
        .with_mirrors(match s.mirrors.is_empty() {
            true => None,
            false => Some(Arc::new(quinistry::mirror::Mirrors::new(
                s.mirrors.clone(),
            )?)),
        })
        .with_ui(s.ui)
        .with_gc_policy(s.gc.as_ref().map(|(_, p)| p.clone()));

    let mut server = Server::on(listener, registry, s.config.clone());
    let scheme = match &s.tls {
        Some(tls) => {
            tls.watch()?;
            server = server.with_tls(tls.clone());
            "https"
        }
        None => "http",
    };
    if let Some(files) = s.auth_files.take() {
        files.watch(&server.registry())?;
    }
    if let Some(files) = s.token_files.take() {
        files.watch(&server.registry())?;
    }
    let addr = server.local_addr().map_err(msg)?;
    if let Some(tagged) = pull {
        say(format_args!("pull       docker pull {addr}/{tagged}"));
    }
    for line in summary(&s) {
        // Said by the pack report, or below with the port really bound.
        if !line.starts_with("store") && !line.starts_with("listen") {
            say(format_args!("{line}"));
        }
    }
    let metrics_on = metrics_listener.is_some();
    if let Some(listener) = metrics_listener {
        let at = listener.local_addr().map_err(msg)?;
        say(format_args!("metrics    http://{at}/metrics"));
        tokio::spawn(registry::serve_metrics(listener, server.registry()));
    }
    if metrics_on || s.ui {
        // Counted once in the background (for the metrics and the web page's storage page);
        // commits keep the count after.
        tokio::spawn(async move {
            if let Err(e) = store.count().await {
                tracing::warn!(error = %e, "cannot count the store's blobs");
            }
        });
    }
    // Last line, and the one scripts wait for.
    say(format_args!("listening {scheme}://{addr}"));
    if let Some(images) = prepack {
        quinistry::ondemand::prepack::spawn(images, s.rescan);
    }
    if let Some((every, policy)) = s.gc.take() {
        tokio::spawn(collector(server.registry(), every, policy));
    }
    server.run(shutdown_signal()?).await.map_err(msg)
}

/// The online collector: a pass every `every`, the first one `every` after start. A pass
/// that fails is logged and the next one is tried as usual.
async fn collector(registry: Arc<registry::Registry>, every: Duration, policy: gc::Policy) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // A pass longer than the interval is followed by the next at once, not by a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match collect_once(&registry, &policy).await {
            Ok(summary) => tracing::info!(target: "quinistry::gc", "gc: {summary}"),
            Err(e @ quinistry::store::StoreError::Busy(_)) => {
                tracing::info!(target: "quinistry::gc", "gc pass skipped: {e}")
            }
            Err(e) => tracing::error!(target: "quinistry::gc", error = %e, "gc pass failed"),
        }
    }
}

/// One pass over the registry's store: the layer cache's live layers and the on-demand
/// images served now are roots.
pub async fn collect_once(
    registry: &registry::Registry,
    policy: &gc::Policy,
) -> Result<String, quinistry::store::StoreError> {
    let report =
        quinistry::pack::cache::collect(registry.store(), registry.on_demand_served(), policy)
            .await?;
    registry.collected(&report);
    if report.reclaimed + report.stale_links + report.tags_removed + report.untagged_removed > 0 {
        // Nothing removed may be answered from memory.
        registry.forget_cached();
    }
    quinistry::metrics::collected(&report);
    Ok(report.summary())
}

/// The TLS configuration the flags name, loaded.
fn tls(args: &ServeArgs) -> Result<Option<Arc<Tls>>, String> {
    match (&args.tls_cert, &args.tls_key) {
        (None, None) if args.tls_client_ca.is_some() => {
            Err("--tls-client-ca needs --tls-cert and --tls-key".into())
        }
        (None, None) => Ok(None),
        (Some(_), None) => Err("--tls-cert needs --tls-key".into()),
        (None, Some(_)) => Err("--tls-key needs --tls-cert".into()),
        (Some(cert), Some(key)) => Tls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        })
        .map(Some),
    }
}

/// The file descriptors this process may open, raised to the hard limit (a registry holds a
/// socket per connection and a file per download and upload), and the connection limits
/// and timeouts, each checked. Defaults keep connections and uploads within the descriptors.
fn limits(args: &ServeArgs) -> Result<(registry::Config, u64), String> {
    let fds = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let secs = |n: u64, flag: &str| {
        if n == 0 {
            Err(format!("{flag} must be at least 1 second"))
        } else {
            Ok(std::time::Duration::from_secs(n))
        }
    };
    let max_connections = args.max_connections.unwrap_or_else(|| fd_share(fds, 4096));
    if max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    let max_connections_per_client = args
        .max_connections_per_client
        .unwrap_or((max_connections / 8).max(16))
        .min(max_connections);
    if max_connections_per_client == 0 {
        return Err("--max-connections-per-client must be at least 1".into());
    }
    let config = registry::Config {
        max_connections,
        max_connections_per_client,
        min_body_rate: args.min_body_rate,
        idle_timeout: secs(args.idle_timeout, "--idle-timeout")?,
        body_timeout: secs(args.body_timeout, "--body-timeout")?,
        write_timeout: secs(args.write_timeout, "--write-timeout")?,
        shutdown_timeout: secs(args.shutdown_timeout, "--shutdown-timeout")?,
        ..registry::Config::default()
    };
    Ok((config, fds))
}

/// A default cap for something that holds a file descriptor each (connections, uploads): a
/// third of the descriptors, keeping 64 for the rest of the process, within `16..=max`.
fn fd_share(fds: u64, max: usize) -> usize {
    (usize::try_from(fds.saturating_sub(64)).unwrap_or(usize::MAX) / 3).clamp(16, max)
}

/// The access rules `serve` was given, checked: pushing on an address others can reach needs
/// authentication, unless the operator says otherwise in so many words; basic
/// authentication there without TLS is warned about (the passwords cross in clear).
fn access(
    args: &ServeArgs,
    listen: SocketAddr,
    tls: bool,
    fds: u64,
    file: config::Access,
) -> Result<(registry::Access, Option<TokenFiles>), String> {
    let rules = file.anonymous_read.is_some() || file.users.is_some();
    if args.htpasswd.is_some() && !args.push && !args.auth_reads && !rules {
        return Err("--htpasswd guards pushes, which are off: add --push (or --auth-reads)".into());
    }
    if args.auth_reads && args.htpasswd.is_none() {
        return Err("--auth-reads needs --htpasswd".into());
    }
    if args.insecure_push && !args.push {
        return Err("--insecure-push needs --push".into());
    }
    if rules && args.htpasswd.is_none() {
        return Err(
            "access rules (access.users, access.anonymous_read) need an htpasswd file to log \
             users in: set access.htpasswd or --htpasswd"
                .into(),
        );
    }
    if rules && args.auth_reads {
        return Err(
            "--auth-reads and access rules both say who may read: with rules, list what \
             anonymous clients may read in access.anonymous_read (nothing, if it is empty)"
                .into(),
        );
    }
    let exposed = !listen.ip().is_loopback();
    let guarded = args.htpasswd.is_some() || args.token_service.is_some();
    if args.push && !guarded && exposed && !args.insecure_push {
        return Err(format!(
            "--push on {listen}, which other machines can reach, needs --htpasswd FILE \
             (or --insecure-push to let anyone push)"
        ));
    }
    if args.htpasswd.is_some() && exposed && !tls {
        tracing::warn!(
            %listen,
            "basic authentication over plain HTTP on an address other machines can reach: \
             passwords cross the network in clear; serve TLS with --tls-cert and --tls-key"
        );
    }
    if args.upload_timeout == 0 {
        return Err("--upload-timeout must be at least 1 second".into());
    }
    let (htpasswd, rules) = match &args.htpasswd {
        Some(path) => {
            let (h, r) = load_auth(path, args.auth_failures_per_minute, &file)?;
            (Some(h), r)
        }
        None => (None, None),
    };
    let token_files = token_files(args)?;
    let token = match &token_files {
        Some(files) => Some(Arc::new(files.load()?)),
        None => None,
    };
    let issuer = token_files.as_ref().and_then(|f| f.issuer.clone());
    let access = registry::Access {
        push: args.push,
        htpasswd,
        auth_reads: args.auth_reads,
        max_blob_size: args.max_blob_size.map(|n| n as u64),
        upload_timeout: Duration::from_secs(args.upload_timeout),
        max_uploads: args.max_uploads.unwrap_or_else(|| fd_share(fds, 1024)),
        max_uploads_per_client: args.max_uploads_per_client,
        rules,
        log_health: args.log_health,
        token,
        issuer,
    };
    Ok((access, token_files))
}

/// Where `serve` reads the keys tokens are checked with, and what tokens must carry.
#[derive(Clone)]
struct TokenFiles {
    service: String,
    issuer_name: String,
    realm: Option<String>,
    bundle: Option<PathBuf>,
    jwks: Option<PathBuf>,
    /// The built-in issuer, whose public key is always one of the keys.
    issuer: Option<Arc<registry::issuer::Issuer>>,
}

impl TokenFiles {
    fn load(&self) -> Result<registry::token::Verifier, String> {
        let own = self.issuer.as_ref().map(|i| i.public_pem());
        registry::token::Verifier::load(
            &self.service,
            &self.issuer_name,
            self.realm.as_deref(),
            self.bundle.as_deref(),
            self.jwks.as_deref(),
            own.as_deref(),
        )
        .map_err(|e| format!("token keys: {e}"))
    }

    /// Reads the keys again on SIGHUP and when their files change (a key rotation); a set
    /// that does not load is logged, and the keys before it stay.
    fn watch(self, registry: &Arc<registry::Registry>) -> Result<(), String> {
        let files: Vec<&Path> = self
            .bundle
            .iter()
            .chain(&self.jwks)
            .map(|p| p.as_path())
            .collect();
        let registry = Arc::downgrade(registry);
        let me = self.clone();
        registry::watch::watch(&files, "token key files", move |why| {
            let Some(registry) = registry.upgrade() else {
                return false;
            };
            match me.load() {
                Ok(verifier) => {
                    tracing::info!(why, keys = verifier.keys(), "token keys read again");
                    registry.set_token(Arc::new(verifier));
                }
                Err(error) => tracing::warn!(
                    %error, why,
                    "the token key files do not load; the keys before stay"
                ),
            }
            true
        })
    }
}

/// The token settings, when --token-service (`access.token.service`) is set: the issuer,
/// the realm and the keys must all be given.
fn token_files(args: &ServeArgs) -> Result<Option<TokenFiles>, String> {
    let Some(service) = &args.token_service else {
        let other = args.token_issuer.is_some()
            || args.token_realm.is_some()
            || args.token_rootcertbundle.is_some()
            || args.token_jwks.is_some()
            || args.token_signing_key.is_some();
        if other {
            return Err("token authentication needs --token-service (access.token.service)".into());
        }
        return Ok(None);
    };
    let Some(issuer_name) = &args.token_issuer else {
        return Err("token authentication needs --token-issuer (access.token.issuer)".into());
    };
    let issuer = issuer_name;
    // With a signing key, or without a realm to send clients to: the built-in issuer.
    let built_in = args.token_signing_key.is_some() || args.token_realm.is_none();
    let issuer = if built_in {
        let Some(key) = &args.token_signing_key else {
            return Err(
                "token authentication without --token-realm (access.token.realm) is the \
                 built-in issuer: it needs --token-signing-key (access.token.signing_key), a \
                 PEM file it makes (0600) if absent"
                    .into(),
            );
        };
        if args.htpasswd.is_none() {
            return Err(
                "the built-in token issuer logs users in with --htpasswd (access.htpasswd)".into(),
            );
        }
        if args.token_expiration.is_zero() {
            return Err("--token-expiration must be more than 0".into());
        }
        let issuer =
            registry::issuer::Issuer::load_or_create(key, service, issuer, args.token_expiration)?;
        Some(Arc::new(issuer))
    } else {
        if args.htpasswd.is_some() {
            return Err(
                "--htpasswd with an outside token issuer (--token-realm): the issuer says who \
                 may do what (leave out the realm to use the built-in issuer with the \
                 htpasswd file)"
                    .into(),
            );
        }
        if args.token_rootcertbundle.is_none() && args.token_jwks.is_none() {
            return Err(
                "an outside token issuer needs its keys: --token-rootcertbundle \
                 (access.token.rootcertbundle) or --token-jwks (access.token.jwks)"
                    .into(),
            );
        }
        None
    };
    Ok(Some(TokenFiles {
        service: service.clone(),
        issuer_name: issuer_name.clone(),
        realm: args.token_realm.clone(),
        bundle: args.token_rootcertbundle.clone(),
        jwks: args.token_jwks.clone(),
        issuer,
    }))
}

/// The htpasswd file and the access rules from the config file, read and checked together
/// (a rule naming a user the file lacks is refused).
fn load_auth(
    htpasswd: &Path,
    failures_per_minute: u32,
    file: &config::Access,
) -> Result<(Arc<registry::Htpasswd>, Option<Arc<registry::Rules>>), String> {
    let h = registry::Htpasswd::load(htpasswd)?.failures_per_minute(failures_per_minute);
    let rules = match (&file.anonymous_read, &file.users) {
        (None, None) => None,
        (anonymous, users) => {
            let users = users.clone().unwrap_or_default();
            if let Some(unknown) = users.keys().find(|u| !h.has_user(u)) {
                return Err(format!(
                    "access.users.{unknown}: no such user in the htpasswd file"
                ));
            }
            let anonymous = anonymous.clone().unwrap_or_default();
            Some(Arc::new(
                registry::Rules::new(&anonymous, &users).map_err(|e| format!("access.{e}"))?,
            ))
        }
    };
    Ok((Arc::new(h), rules))
}

/// Where `serve` reads its users and rules again from.
#[derive(Clone)]
struct AuthFiles {
    htpasswd: PathBuf,
    failures_per_minute: u32,
    /// The config file, for its `[access]` rules.
    config: Option<PathBuf>,
}

impl AuthFiles {
    fn load(&self) -> Result<(Arc<registry::Htpasswd>, Option<Arc<registry::Rules>>), String> {
        let file = match &self.config {
            Some(path) => config::File::load(path)?.access,
            None => config::Access::default(),
        };
        load_auth(&self.htpasswd, self.failures_per_minute, &file)
    }

    /// Reads the files again on SIGHUP and when they change; a set that does not load is
    /// logged, and the users and rules before it stay.
    fn watch(self, registry: &Arc<registry::Registry>) -> Result<(), String> {
        let files: Vec<&Path> = std::iter::once(self.htpasswd.as_path())
            .chain(self.config.as_deref())
            .collect();
        let registry = Arc::downgrade(registry);
        let me = self.clone();
        registry::watch::watch(&files, "htpasswd and config files", move |why| {
            let Some(registry) = registry.upgrade() else {
                return false;
            };
            match me.load() {
                Ok((h, rules)) => {
                    tracing::info!(
                        why,
                        users = h.users(),
                        rules = rules.is_some(),
                        "users and access rules read again"
                    );
                    registry.set_auth(Some(h), rules);
                }
                Err(error) => tracing::warn!(
                    %error, why,
                    "the htpasswd or config file does not load; the users and rules before stay"
                ),
            }
            true
        })
    }
}

/// Who may push and who must log in, in words, for the start-up report.
fn describe(access: &registry::Access) -> String {
    if let Some(token) = &access.token {
        let from = match &access.issuer {
            Some(issuer) => format!(
                "the built-in issuer at /token (users of --htpasswd, {} tokens)",
                humantime::format_duration(issuer.lifetime())
            ),
            None => format!("the issuer ({} keys)", token.keys()),
        };
        return format!(
            "{}; every request needs a token from {from}",
            if access.push {
                "pushes on"
            } else {
                "read-only"
            },
        );
    }
    let users = |h: &registry::Htpasswd| format!("a user of --htpasswd ({} users)", h.users());
    if let (Some(rules), Some(h)) = (&access.rules, &access.htpasswd) {
        return format!(
            "{}; per-repository rules for {} of {} users, and for anonymous reads",
            if access.push {
                "pushes on"
            } else {
                "read-only"
            },
            rules.users().count(),
            h.users()
        );
    }
    match (access.push, &access.htpasswd, access.auth_reads) {
        (false, None, _) => {
            "read-only, open to all: pushes and deletes are refused (--push turns them on)".into()
        }
        (false, Some(h), _) => format!("read-only; reads need {}", users(h)),
        (true, None, _) => {
            "pushes on, without authentication: anyone who reaches the port may push".into()
        }
        (true, Some(h), false) => format!("pushes need {}; reads are open", users(h)),
        (true, Some(h), true) => format!("pushes and reads need {}", users(h)),
    }
}

/// Completes on the first SIGINT or SIGTERM (the server then drains); a second one exits at
/// once, for when a download would take too long to wait for.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let first = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = first.clone();
    tokio::spawn(async move {
        for count in 1.. {
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if count == 1 {
                tracing::info!(
                    signal = which,
                    "finishing requests in flight; send it again to exit now"
                );
                notify.notify_one();
            } else {
                tracing::warn!(
                    signal = which,
                    "exiting without waiting for requests in flight"
                );
                std::process::exit(130);
            }
        }
    });
    Ok(async move { first.notified().await })
}
