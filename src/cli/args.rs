//! The command line's words: every subcommand and flag, with its help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use quinistry::pack::compress;
use quinistry::registry;
use quinistry::store::gc;

#[derive(Parser)]
#[command(
    version,
    about = "A container registry that packs files into OCI/Docker images, stored by digest"
)]
pub struct Cli {
    /// With no command: `serve` (packs this executable and serves it as quinistry:latest).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log lines as text, or as one JSON object per line [default: text]
    #[arg(long, global = true, env = "QUINISTRY_LOG_FORMAT", value_parser = ["text", "json"], value_name = "FORMAT")]
    pub log_format: Option<String>,
}

#[derive(Subcommand)]
// Parsed once per run: the size of the largest variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Pack the inputs (default: this executable, as /main) and serve the store over the
    /// registry API until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Pack files or directories (default: this executable, as /main) into an image.
    Pack(PackArgs),
    /// Re-hash every blob in the store and check that tags, links, manifests and referrer
    /// records agree; exits non-zero on any inconsistency.
    Verify {
        #[command(flatten)]
        store: StoreArg,
        /// Remove what is provably dangling (tags, links and referrer records naming what is
        /// not there), and report it; nothing else is changed
        #[arg(long)]
        repair: bool,
    },
    /// Collect garbage once: apply the retention rules, then remove the blobs nothing in the
    /// store reaches any more (deleted images' layers, superseded packs) once they were last
    /// touched longer ago than the grace period. Safe on a store a `serve` or `pack` is
    /// using: pushes that go on meanwhile lose nothing.
    Gc {
        /// Read `store` and the `[gc]` section from this TOML file (flags override it)
        #[arg(long, env = "QUINISTRY_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArg,
        /// Only report what would be removed
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        gc: GcArgs,
    },
    /// Print the license notices of the crates this executable is built from (the self-image
    /// carries them at /usr/share/doc/quinistry/copyright).
    Licenses,
    /// Work with `serve --config` files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check a config file (with the QUINISTRY_* environment applied) as `serve --config`
    /// would, without starting: every key known, every value valid, every file it names
    /// readable; prints the settings in effect
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// What the collector keeps, shared by `gc` and `serve --gc-interval`.
#[derive(Args, Clone, Debug)]
pub struct GcArgs {
    /// Keep a blob nothing reaches until it was last touched (pushed, mounted, linked,
    /// named by a pushed manifest) this long ago, e.g. 30m, 1h, 2d, or 0
    #[arg(long, env = "QUINISTRY_GC_GRACE", default_value = "1h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub grace: std::time::Duration,
    /// Keep a layer linked into a repository without a manifest there naming it this long
    /// after it was last pushed: the time a client has between a layer and its manifest
    #[arg(long, env = "QUINISTRY_GC_LINK_GRACE", default_value = "24h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub link_grace: std::time::Duration,
    /// Unlink manifests no tag reaches (with their referrers) once last pushed this long ago
    /// [default: keep them]
    #[arg(long, env = "QUINISTRY_KEEP_UNTAGGED", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub keep_untagged: Option<std::time::Duration>,
    /// In repositories matching PATTERN (`*` crosses `/`), keep only the N most recently
    /// set tags; the first rule that matches a repository applies. Repeatable
    #[arg(long, env = "QUINISTRY_KEEP_TAGS", value_delimiter = ',', value_parser = keep_tags, value_name = "PATTERN=N")]
    pub keep_tags: Vec<(String, usize)>,
}

impl GcArgs {
    /// The collector's policy these flags say.
    pub fn policy(&self, dry_run: bool) -> Result<gc::Policy, String> {
        let keep_tags = self
            .keep_tags
            .iter()
            .map(|(pattern, n)| gc::KeepTags::new(pattern, *n))
            .collect::<Result<_, _>>()?;
        Ok(gc::Policy {
            grace: self.grace,
            link_grace: self.link_grace,
            keep_untagged: self.keep_untagged,
            keep_tags,
            unpulled: Vec::new(),
            dry_run,
        })
    }
}

fn keep_tags(s: &str) -> Result<(String, usize), String> {
    let (pattern, n) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: write PATTERN=N, e.g. 'ci/*=10'"))?;
    let n = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: N must be a whole number"))?;
    Ok((pattern.trim().to_owned(), n))
}

#[derive(Args, Default)]
pub struct StoreArg {
    /// Store directory, or s3://BUCKET/PREFIX (S3-compatible object storage) or
    /// az://CONTAINER/PREFIX (Azure Blob Storage) for blobs shared by replicas (then
    /// --metadata is needed too) [default: $QUINISTRY_STORE, else $XDG_DATA_HOME/quinistry,
    /// else ~/.local/share/quinistry]
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX|az://CONTAINER/PREFIX")]
    pub store: Option<PathBuf>,
    /// With an s3:// or az:// store: the PostgreSQL database that holds tags, links and the other
    /// metadata, e.g. postgres://user@host:5432/quinistry
    #[arg(long, value_name = "URL", env = "QUINISTRY_METADATA")]
    pub metadata: Option<String>,
    /// With an s3:// store: a storage endpoint (repeat for each node or gateway; a request
    /// that cannot reach one goes to the next) [default: $AWS_ENDPOINT_URL, comma-separated].
    /// Region and credentials come from AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    #[arg(
        long = "s3-endpoint",
        value_name = "URL",
        env = "QUINISTRY_S3_ENDPOINTS",
        value_delimiter = ','
    )]
    pub s3_endpoints: Vec<String>,
}

/// What goes into the image, shared by `pack` and `serve`.
#[derive(Args)]
pub struct ImageArgs {
    /// Layer compression; zstd layers have an OCI manifest only (Docker schema 2 has no zstd)
    #[arg(long, env = "QUINISTRY_COMPRESSION", default_value = "gzip", value_parser = ["gzip", "zstd", "none"], value_name = "METHOD")]
    pub compression: String,
    /// Compression level: gzip 0 (store) to 9 (smallest), default 6; zstd 1 to 19, default 3
    #[arg(long, env = "QUINISTRY_LEVEL", value_name = "N")]
    pub level: Option<u32>,
    /// gzip block size, e.g. 512K or 1M: blocks are compressed in parallel; 0 compresses one
    /// stream on one core. Changes the layer's bytes [default: 1M]
    #[arg(long, env = "QUINISTRY_BLOCK_SIZE", value_name = "SIZE", value_parser = compress::parse_size)]
    pub block_size: Option<usize>,
    /// Threads compressing gzip blocks; the bytes are the same for any number [default: the
    /// number of CPUs]
    #[arg(long, env = "QUINISTRY_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    /// Entrypoint path in the image [default: the input, when it is one executable file]
    #[arg(long, env = "QUINISTRY_ENTRYPOINT", value_name = "PATH")]
    pub entrypoint: Option<String>,
    /// Default arguments (the config's Cmd); repeat for each argument
    #[arg(long = "cmd", value_name = "ARG", allow_hyphen_values = true)]
    pub cmd: Vec<String>,
    /// Environment variable KEY=VALUE; repeatable (PATH has a standard default)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// What the image gets beyond its inputs: `packages` (default) adds, for a file that
    /// belongs to an installed package, that package, what it depends on and recommends,
    /// Debian's Essential set and a minimal base; `minimal` the same without Essential
    /// packages and recommendations; `elf` only the interpreter and libraries of ELF files
    /// (always, for the self-image). All close over every ELF file in the image
    #[arg(long, env = "QUINISTRY_CLOSURE", value_parser = ["packages", "minimal", "elf"], value_name = "KIND")]
    pub closure: Option<String>,
    /// Do not follow the installed `Recommends` of the image's packages (apt installs them
    /// by default, and programs count on them: gcc only recommends libc6-dev)
    #[arg(long, env = "QUINISTRY_NO_RECOMMENDS")]
    pub no_recommends: bool,
    /// Pack again even if the layer cache knows these inputs
    #[arg(long, env = "QUINISTRY_NO_CACHE")]
    pub no_cache: bool,
    /// Files or directories to pack, each as SRC or SRC:/DEST (where it goes in the image),
    /// or +PKG: an installed package, with what it needs
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<String>,
}

#[derive(Args)]
pub struct PackArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Tag the image as NAME[:TAG] [default: the first input's file name, or quinistry]
    #[arg(long, value_name = "NAME:TAG")]
    pub tag: Option<String>,
    /// Also write the image as an OCI image layout in DIR (readable as oci:DIR:TAG)
    #[arg(long, value_name = "DIR")]
    pub oci_layout: Option<PathBuf>,
    #[command(flatten)]
    pub image: ImageArgs,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Args)]
pub struct ServeArgs {
    /// Read settings from this TOML file (see the README); QUINISTRY_* variables override it,
    /// and flags override both
    #[arg(
        help_heading = "Server",
        long,
        env = "QUINISTRY_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Store")]
    pub store: StoreArg,
    /// With an s3:// store: answer blob GETs with a 307 to a presigned URL of the object,
    /// valid 10 minutes, so the bytes flow from storage to the client and not through this
    /// replica (clients must reach the storage endpoint)
    #[arg(help_heading = "Store", long, env = "QUINISTRY_REDIRECT")]
    pub redirect: bool,
    /// Do not serve the web page (repositories, tags, images, programs, storage at /ui/)
    #[arg(long, env = "QUINISTRY_NO_UI")]
    pub no_ui: bool,
    /// Collect garbage in the background, a pass every DURATION (e.g. 1h), while serving;
    /// what it keeps is set as for `quinistry gc` [default: off]
    #[arg(help_heading = "Garbage collection", long, env = "QUINISTRY_GC_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub gc_interval: Option<std::time::Duration>,
    #[command(flatten, next_help_heading = "Garbage collection")]
    pub gc: GcArgs,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with this PEM certificate chain: the server's
    /// certificate first, then its intermediates. Read again when it changes, or on SIGHUP
    #[arg(
        help_heading = "TLS",
        long,
        env = "QUINISTRY_TLS_CERT",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(
        help_heading = "TLS",
        long,
        env = "QUINISTRY_TLS_KEY",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,
    /// Require a client certificate signed by one of these PEM CA certificates
    #[arg(
        help_heading = "TLS",
        long,
        env = "QUINISTRY_TLS_CLIENT_CA",
        value_name = "FILE"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (and /healthz, /readyz); off by
    /// default
    #[arg(
        help_heading = "Server",
        long,
        env = "QUINISTRY_METRICS_LISTEN",
        value_name = "ADDR"
    )]
    pub metrics_listen: Option<String>,
    /// Write access-log lines for /healthz and /readyz too
    #[arg(help_heading = "Server", long, env = "QUINISTRY_LOG_HEALTH")]
    pub log_health: bool,
    /// Address to listen on (port 0 picks a free port; the address is printed)
    #[arg(help_heading = "Server", long, env = "QUINISTRY_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: String,
    /// Repository name of the packed image [default: the first input's file name, or
    /// quinistry]
    #[arg(
        help_heading = "Image packed at start (INPUTs)",
        long,
        env = "QUINISTRY_NAME",
        value_name = "NAME"
    )]
    pub name: Option<String>,
    /// Tag of the packed image
    #[arg(
        help_heading = "Image packed at start (INPUTs)",
        long,
        env = "QUINISTRY_TAG",
        default_value = "latest",
        value_name = "TAG"
    )]
    pub tag: String,
    /// Also serve NAME:TAG, made of the inputs (SRC or SRC:/DEST, comma-separated; +PKG
    /// for an installed package) and packed on its first pull; repeatable
    #[arg(
        help_heading = "Images packed on demand",
        long = "image",
        value_name = "NAME[:TAG]=INPUT[,INPUT...]"
    )]
    pub images: Vec<String>,
    /// Also serve the images of a TOML file, each with its own entrypoint, cmd, env and
    /// closure (see the README); repeatable
    #[arg(
        help_heading = "Images packed on demand",
        long = "images",
        value_name = "FILE"
    )]
    pub image_files: Vec<PathBuf>,
    /// Serve every executable file under DIR as an image named after its path below DIR
    /// (tag latest), packed on its first pull; files added later are served too. A program
    /// of an installed package keeps its host path (and the symlinks to it) in its image
    #[arg(
        help_heading = "Images packed on demand",
        long,
        env = "QUINISTRY_ROOT",
        value_name = "DIR"
    )]
    pub root: Option<PathBuf>,
    /// Serve the machine's installed packages as images: pkgs/PKG[/PKG...]:latest holds
    /// those packages and what they need (on with --root)
    #[arg(
        help_heading = "Images packed on demand",
        long,
        env = "QUINISTRY_PACKAGES"
    )]
    pub packages: bool,
    /// How many on-demand images may be packed at once; more requests wait for a slot
    /// [default: the number of CPUs]
    #[arg(
        help_heading = "Images packed on demand",
        long,
        env = "QUINISTRY_MAX_PACKS",
        value_name = "N"
    )]
    pub max_packs: Option<usize>,
    /// Do not pack on-demand images ahead of their first pull. By default the configured
    /// ones (--image, --images) and those pulled before (recorded in the store) are packed in
    /// the background at start and whenever their files change (one at a time, at low
    /// priority), so a pull finds their layers ready; the rest of --root waits for its pull
    #[arg(
        help_heading = "Images packed on demand",
        long,
        env = "QUINISTRY_NO_PREPACK"
    )]
    pub no_prepack: bool,
    /// How often the background packing checks every on-demand image even without a change
    /// notice (for file systems inotify cannot watch)
    #[arg(
        help_heading = "Images packed on demand",
        long,
        env = "QUINISTRY_RESCAN",
        default_value_t = 60,
        value_name = "SECONDS"
    )]
    pub rescan: u64,
    /// Accept pushes and deletes (the OCI distribution API's write side)
    #[arg(
        help_heading = "Pushes and authentication",
        long,
        env = "QUINISTRY_PUSH"
    )]
    pub push: bool,
    /// Require HTTP basic authentication for writes, against FILE's bcrypt entries (as
    /// `htpasswd -B` writes them)
    #[arg(
        help_heading = "Pushes and authentication",
        long,
        env = "QUINISTRY_HTPASSWD",
        value_name = "FILE"
    )]
    pub htpasswd: Option<PathBuf>,
    /// With --htpasswd: require authentication for reads too
    #[arg(
        help_heading = "Pushes and authentication",
        long,
        env = "QUINISTRY_AUTH_READS"
    )]
    pub auth_reads: bool,
    /// With --htpasswd: wrong passwords one client address may try per minute before it is
    /// answered 429 until the minute is over
    #[arg(help_heading = "Pushes and authentication", long, env = "QUINISTRY_AUTH_FAILURES_PER_MINUTE", value_name = "N", default_value_t = registry::DEFAULT_FAILURES_PER_MINUTE)]
    pub auth_failures_per_minute: u32,
    /// Authorize by Docker registry tokens instead: the service (the `aud` tokens must hold
    /// and the challenge names). Needs --token-issuer, and --token-realm with the issuer's
    /// keys, or --token-signing-key for the built-in issuer
    #[arg(
        help_heading = "Token authentication",
        long,
        env = "QUINISTRY_TOKEN_SERVICE",
        value_name = "NAME"
    )]
    pub token_service: Option<String>,
    /// The `iss` tokens must carry
    #[arg(
        help_heading = "Token authentication",
        long,
        env = "QUINISTRY_TOKEN_ISSUER",
        value_name = "NAME"
    )]
    pub token_issuer: Option<String>,
    /// Where clients get tokens (the challenge's realm), e.g. https://gitlab.example.com/jwt/auth
    #[arg(
        help_heading = "Token authentication",
        long,
        env = "QUINISTRY_TOKEN_REALM",
        value_name = "URL"
    )]
    pub token_realm: Option<String>,
    /// The issuer's certificates or public keys (PEM); several for a key rotation
    #[arg(
        help_heading = "Token authentication",
        long,
        env = "QUINISTRY_TOKEN_ROOTCERTBUNDLE",
        value_name = "FILE"
    )]
    pub token_rootcertbundle: Option<PathBuf>,
    /// The issuer's keys as a JWKS file (with or instead of --token-rootcertbundle)
    #[arg(
        help_heading = "Token authentication",
        long,
        env = "QUINISTRY_TOKEN_JWKS",
        value_name = "FILE"
    )]
    pub token_jwks: Option<PathBuf>,
    /// The built-in issuer (no --token-realm): its signing key, a PKCS#8 P-256 PEM file made
    /// (0600) if absent. Users log in with --htpasswd; tokens grant what the access rules allow
    #[arg(
        help_heading = "Token authentication",
        long,
        env = "QUINISTRY_TOKEN_SIGNING_KEY",
        value_name = "FILE"
    )]
    pub token_signing_key: Option<PathBuf>,
    /// The built-in issuer: how long its tokens live
    #[arg(help_heading = "Token authentication", long, env = "QUINISTRY_TOKEN_EXPIRATION", default_value = "5m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub token_expiration: std::time::Duration,
    /// Send events of pushes, deletes and mounts to URL (distribution's envelope); repeat
    /// for more. `[[notifications.endpoints]]` in --config says more (headers, actions, ...)
    #[arg(
        help_heading = "Notifications",
        long,
        env = "QUINISTRY_NOTIFY",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub notify: Vec<String>,
    /// Serve PREFIX/NAME from the registry at URL, cached in the store (a pull-through
    /// mirror, read-only); repeat for more. `[[mirror]]` in --config says more (credentials,
    /// a CA, the tag TTL)
    #[arg(
        help_heading = "Mirrors",
        long,
        env = "QUINISTRY_MIRROR",
        value_name = "PREFIX=URL",
        value_delimiter = ','
    )]
    pub mirror: Vec<String>,
    /// Allow --push on a non-loopback address without --htpasswd (anyone who can reach the
    /// port can then overwrite tags)
    #[arg(
        help_heading = "Pushes and authentication",
        long,
        env = "QUINISTRY_INSECURE_PUSH"
    )]
    pub insecure_push: bool,
    /// Largest blob a push may store, e.g. 512M or 8G [default: no limit]
    #[arg(help_heading = "Pushes and authentication", long, env = "QUINISTRY_MAX_BLOB_SIZE", value_name = "SIZE", value_parser = compress::parse_size)]
    pub max_blob_size: Option<usize>,
    /// Drop an upload session (and its temp file) that receives less than 64 KiB in this
    /// many seconds
    #[arg(
        help_heading = "Limits and timeouts",
        long,
        env = "QUINISTRY_UPLOAD_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 3600
    )]
    pub upload_timeout: u64,
    /// Most upload sessions open at once (more get 429 with Retry-After) [default: 1024, or
    /// a third of the file descriptors]
    #[arg(
        help_heading = "Limits and timeouts",
        long,
        env = "QUINISTRY_MAX_UPLOADS",
        value_name = "N"
    )]
    pub max_uploads: Option<usize>,
    /// Most upload sessions one client address may have open
    #[arg(
        help_heading = "Limits and timeouts",
        long,
        env = "QUINISTRY_MAX_UPLOADS_PER_CLIENT",
        value_name = "N",
        default_value_t = 64
    )]
    pub max_uploads_per_client: usize,
    /// Most connections open at once; more wait in the kernel's backlog [default: 4096, or a
    /// third of the file descriptors]
    #[arg(
        help_heading = "Limits and timeouts",
        long,
        env = "QUINISTRY_MAX_CONNECTIONS",
        value_name = "N"
    )]
    pub max_connections: Option<usize>,
    /// Most connections one client address may hold; past it, its idlest connection makes
    /// room, or the new one is closed if all are busy [default: an eighth of
    /// --max-connections, at least 16]
    #[arg(
        help_heading = "Limits and timeouts",
        long,
        env = "QUINISTRY_MAX_CONNECTIONS_PER_CLIENT",
        value_name = "N"
    )]
    pub max_connections_per_client: Option<usize>,
    /// Close a connection that sends nothing for this long while none of its requests is
    /// being answered
    #[arg(
        help_heading = "Limits and timeouts",
        long,
        env = "QUINISTRY_IDLE_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 60
    )]
    pub idle_timeout: u64,
    /// End a request whose body brings less than --min-body-rate in any span this long (no
    /// byte at all, with a rate of 0)
    #[arg(
        help_heading = "Limits and timeouts",
        long,
        env = "QUINISTRY_BODY_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    pub body_timeout: u64,
    /// A request body must average this many bytes per second over each --body-timeout span
    /// (a client trickling a body holds a connection and a session only that long)
    #[arg(
        help_heading = "Limits and timeouts",
        long,
        env = "QUINISTRY_MIN_BODY_RATE",
        value_name = "BYTES_PER_SECOND",
        default_value_t = 512
    )]
    pub min_body_rate: u64,
    /// Close a connection whose client takes no byte of an answer for this long
    #[arg(
        help_heading = "Limits and timeouts",
        long,
        env = "QUINISTRY_WRITE_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    pub write_timeout: u64,
    /// On SIGTERM, wait this long for requests in flight, then close what is left
    #[arg(
        help_heading = "Server",
        long,
        env = "QUINISTRY_SHUTDOWN_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    pub shutdown_timeout: u64,
    #[command(flatten, next_help_heading = "Packing")]
    pub image: ImageArgs,
}

impl StoreArg {
    /// What `--store`, `--metadata` and `--s3-endpoint` say, checked.
    pub fn spec(&self) -> Result<quinistry::store::spec::StoreSpec, String> {
        quinistry::store::spec::StoreSpec::parse(
            &self.dir()?,
            self.metadata.clone(),
            self.s3_endpoints.clone(),
        )
    }

    /// Opens the store, creating a directory store if need be; `existing` refuses a folder
    /// that is not one instead (a typo must not become a new empty store).
    pub async fn open(&self, existing: bool) -> Result<quinistry::store::Store, String> {
        self.spec()?.open(existing).await.map_err(|e| e.to_string())
    }

    pub fn dir(&self) -> Result<PathBuf, String> {
        if let Some(dir) = &self.store {
            return Ok(dir.clone());
        }
        let env = |k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        env("QUINISTRY_STORE")
            .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("quinistry")))
            .or_else(|| env("HOME").map(|h| h.join(".local/share/quinistry")))
            .ok_or_else(|| "no store directory: pass --store DIR (HOME is not set)".to_owned())
    }
}
