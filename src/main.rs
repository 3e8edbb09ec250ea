//! The `quinistry` command line: parses arguments, sets up logging, wires the library together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use quinistry::image::{self, RunConfig};
use quinistry::licenses;
use quinistry::ondemand::{ImageSpec, OnDemand, Setup};
use quinistry::pack::compress::{self, Compression};
use quinistry::pack::gzip;
use quinistry::pack::layout;
use quinistry::pack::progress;
use quinistry::pack::{self, ClosureMode, Input, LayerOptions, Packing};
use quinistry::reference::{Name, Tag, TaggedName};
use quinistry::registry::{self, Registry, Server};
use quinistry::runtime::packages::Machine;
use quinistry::store::{Store, StoreError};

#[derive(Parser)]
#[command(
    version,
    about = "A container registry that packs files into OCI/Docker images, stored by digest"
)]
struct Cli {
    /// With no command: `serve` (packs this executable and serves it as quinistry:latest).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
// Parsed once per run: the size of the largest variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
enum Command {
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
    /// Print the license notices of the crates this executable is built from (the self-image
    /// carries them at /usr/share/doc/quinistry/copyright).
    Licenses,
}

#[derive(Args, Default)]
struct StoreArg {
    /// Store directory [default: $QUINISTRY_STORE, else $XDG_DATA_HOME/quinistry, else
    /// ~/.local/share/quinistry]
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
}

/// What goes into the image, shared by `pack` and `serve`.
#[derive(Args)]
struct ImageArgs {
    /// Layer compression; zstd layers have an OCI manifest only (Docker schema 2 has no zstd)
    #[arg(long, env = "QUINISTRY_COMPRESSION", default_value = "gzip", value_parser = ["gzip", "zstd", "none"], value_name = "METHOD")]
    compression: String,
    /// Compression level: gzip 0 (store) to 9 (smallest), default 6; zstd 1 to 19, default 3
    #[arg(long, env = "QUINISTRY_LEVEL", value_name = "N")]
    level: Option<u32>,
    /// gzip block size, e.g. 512K or 1M: blocks are compressed in parallel; 0 compresses one
    /// stream on one core. Changes the layer's bytes [default: 1M]
    #[arg(long, env = "QUINISTRY_BLOCK_SIZE", value_name = "SIZE", value_parser = compress::parse_size)]
    block_size: Option<usize>,
    /// Threads compressing gzip blocks; the bytes are the same for any number [default: the
    /// number of CPUs]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Entrypoint path in the image [default: the input, when it is one executable file]
    #[arg(long, value_name = "PATH")]
    entrypoint: Option<String>,
    /// Default arguments (the config's Cmd); repeat for each argument
    #[arg(long = "cmd", value_name = "ARG", allow_hyphen_values = true)]
    cmd: Vec<String>,
    /// Environment variable KEY=VALUE; repeatable (PATH has a standard default)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// What the image gets beyond its inputs: `packages` (default) adds, for a file that
    /// belongs to an installed package, that package and what it depends on, and a minimal
    /// base; `elf` only the interpreter and libraries of ELF files (always, for the
    /// self-image). Both close over every ELF file in the image
    #[arg(long, env = "QUINISTRY_CLOSURE", value_parser = ["elf", "packages"], value_name = "KIND")]
    closure: Option<String>,
    /// Pack again even if the layer cache knows these inputs
    #[arg(long)]
    no_cache: bool,
    /// Files or directories to pack, each as SRC or SRC:/DEST (where it goes in the image)
    #[arg(value_name = "INPUT")]
    inputs: Vec<String>,
}

#[derive(Args)]
struct PackArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Tag the image as NAME[:TAG] [default: the first input's file name, or quinistry]
    #[arg(long, value_name = "NAME:TAG")]
    tag: Option<String>,
    /// Also write the image as an OCI image layout in DIR (readable as oci:DIR:TAG)
    #[arg(long, value_name = "DIR")]
    oci_layout: Option<PathBuf>,
    #[command(flatten)]
    image: ImageArgs,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Address to listen on (port 0 picks a free port; the address is printed)
    #[arg(long, env = "QUINISTRY_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    listen: String,
    /// Repository name of the packed image [default: the first input's file name, or
    /// quinistry]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Tag of the packed image
    #[arg(long, default_value = "latest", value_name = "TAG")]
    tag: String,
    /// Also serve NAME:TAG, made of the inputs (SRC or SRC:/DEST, comma-separated) and packed
    /// on its first pull; repeatable
    #[arg(long = "image", value_name = "NAME[:TAG]=INPUT[,INPUT...]")]
    images: Vec<String>,
    /// Also serve the images of a TOML file, each with its own entrypoint, cmd, env and
    /// closure (see the README); repeatable
    #[arg(long = "images", value_name = "FILE")]
    image_files: Vec<PathBuf>,
    /// Serve every executable file under DIR as an image named after its path below DIR
    /// (tag latest), packed on its first pull; files added later are served too
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// How many on-demand images may be packed at once; more requests wait for a slot
    /// [default: the number of CPUs]
    #[arg(long, value_name = "N")]
    max_packs: Option<usize>,
    /// Do not pack on-demand images ahead of their first pull. By default each is packed in
    /// the background at start and whenever its files change (one at a time, at low
    /// priority), so a pull finds its layers ready
    #[arg(long)]
    no_prepack: bool,
    /// How often the background packing checks every on-demand image even without a change
    /// notice (for file systems inotify cannot watch)
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    rescan: u64,
    /// Accept pushes and deletes (the OCI distribution API's write side)
    #[arg(long)]
    push: bool,
    /// Require HTTP basic authentication for writes, against FILE's bcrypt entries (as
    /// `htpasswd -B` writes them)
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// With --htpasswd: require authentication for reads too
    #[arg(long, requires = "htpasswd")]
    auth_reads: bool,
    /// With --htpasswd: wrong passwords one client address may try per minute before it is
    /// answered 429 until the minute is over
    #[arg(long, value_name = "N", default_value_t = registry::DEFAULT_FAILURES_PER_MINUTE)]
    auth_failures_per_minute: u32,
    /// Allow --push on a non-loopback address without --htpasswd (anyone who can reach the
    /// port can then overwrite tags)
    #[arg(long, requires = "push")]
    insecure_push: bool,
    /// Largest blob a push may store, e.g. 512M or 8G [default: no limit]
    #[arg(long, value_name = "SIZE", value_parser = compress::parse_size)]
    max_blob_size: Option<usize>,
    /// Drop an upload session (and its temp file) that receives less than 64 KiB in this
    /// many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    upload_timeout: u64,
    /// Most upload sessions open at once (more get 429 with Retry-After) [default: 1024, or
    /// a third of the file descriptors]
    #[arg(long, value_name = "N")]
    max_uploads: Option<usize>,
    /// Most upload sessions one client address may have open
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_uploads_per_client: usize,
    /// Most connections open at once; more wait in the kernel's backlog [default: 4096, or a
    /// third of the file descriptors]
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Close a connection that sends nothing for this long while none of its requests is
    /// being answered
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    idle_timeout: u64,
    /// End a request whose body brings no byte for this long
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    body_timeout: u64,
    /// Close a connection whose client takes no byte of an answer for this long
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    write_timeout: u64,
    /// On SIGTERM, wait this long for requests in flight, then close what is left
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    shutdown_timeout: u64,
    #[command(flatten)]
    image: ImageArgs,
}

impl StoreArg {
    fn dir(&self) -> Result<PathBuf, String> {
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

fn main() -> ExitCode {
    use tracing_subscriber::prelude::*;
    // The access log (one line per request) is handed to a thread that writes it in batches:
    // written with a system call per line on the request's own thread, it cost a fifth of
    // the manifest GET rate (86k against 116k per second with it off). Not lossy: past
    // 128,000 lines waiting, requests wait for the log, as nginx's do. Every other line is
    // written at once, in order with what the program prints. The guard writes out what is
    // left when `main` returns.
    let (access_writer, _access_guard) =
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("quinistry-log")
            .finish(std::io::BufWriter::with_capacity(
                64 << 10,
                progress::LogWriter,
            ));
    let is_access = |m: &tracing::Metadata<'_>| m.target() == registry::ACCESS_LOG;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(access_writer)
                .with_ansi(ansi)
                .with_filter(tracing_subscriber::filter::filter_fn(is_access)),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(progress::LogWriter)
                .with_ansi(ansi)
                .with_filter(tracing_subscriber::filter::filter_fn(move |m| {
                    !is_access(m)
                })),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("quinistry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Serve(args)) => run_serve(args).await,
            Some(Command::Pack(args)) => run_pack(args).await,
            Some(Command::Verify { store, repair }) => run_verify(store, repair).await,
            Some(Command::Licenses) => {
                use std::io::Write;
                std::io::stdout()
                    .write_all(licenses::NOTICES.as_bytes())
                    .map_err(msg)
            }
            // Bare `quinistry` is `quinistry serve` with every default (QUINISTRY_* included).
            None => match Cli::try_parse_from(["quinistry", "serve"]) {
                Ok(Cli {
                    command: Some(Command::Serve(args)),
                }) => run_serve(args).await,
                _ => Err("cannot apply the defaults of `serve`".to_owned()),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("quinistry: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// An image ready to pack: its inputs, run settings and layer options, all validated.
struct Prepared {
    inputs: Vec<Input>,
    /// The self-image: this executable, which carries the license notices of its crates.
    is_self: bool,
    run: RunConfig,
    opts: LayerOptions,
    /// Compression threads per pack.
    threads: usize,
    /// Whether the layer cache may be used.
    cache: bool,
    /// What the image gets beyond its inputs.
    closure: ClosureMode,
    /// `quinistry:latest` for the self-image, else named after the first input; an error
    /// only matters when no name was given.
    default_tag: Result<TaggedName, String>,
}

/// Validates everything about the image before any store is touched, so bad arguments store
/// nothing. No input means this executable, as /main.
fn prepare(args: ImageArgs) -> Result<Prepared, String> {
    let mtime = pack::source_date_epoch()?;
    let compression = Compression::new(&args.compression, args.level, args.block_size)?;
    let threads = match args.threads {
        Some(n) if !(1..=gzip::MAX_THREADS).contains(&n) => {
            return Err(format!(
                "--threads {n} is out of range 1-{}",
                gzip::MAX_THREADS
            ));
        }
        Some(n) => n,
        None => pack::default_threads(),
    };
    let is_self = args.inputs.is_empty();
    // The self-image holds its executable and libraries only: a container of it has no
    // package database, and must make the very same image (the fixed point).
    let closure = match (&args.closure, is_self) {
        (Some(c), true) if c != "elf" => {
            return Err("the self-image (no INPUT) is packed with --closure elf: its container has no package database to make the same image from".into());
        }
        (_, true) => ClosureMode::Elf,
        (Some(c), false) => c.parse()?,
        (None, false) => ClosureMode::default(),
    };
    let inputs: Vec<Input> = if is_self {
        let exe = std::env::current_exe()
            .map_err(|err| format!("cannot find this executable to pack it: {err}"))?;
        vec![Input::at(exe, image::SELF_PATH, "self").map_err(msg)?]
    } else {
        args.inputs
            .iter()
            .map(|s| s.parse::<Input>())
            .collect::<Result<_, _>>()
            .map_err(msg)?
    };
    let run = if is_self {
        // The settings that change the layer's bytes travel in the image's Env.
        image::self_image(mtime, &compression.env())
    } else {
        pack::default_run_config(&inputs, mtime)
    };
    // What the command line says wins over the defaults.
    let settings = image::RunSettings {
        entrypoint: args.entrypoint.map(|p| vec![p]),
        cmd: (!args.cmd.is_empty()).then_some(args.cmd),
        env: args.env,
    };
    settings
        .check()
        .map_err(|e| e.replace("environment entry", "--env"))?;
    let run = settings.apply(run);
    let opts = LayerOptions { compression, mtime };
    let default_tag = default_tag(&args.inputs, &inputs);
    Ok(Prepared {
        inputs,
        is_self,
        run,
        opts,
        threads,
        cache: !args.no_cache,
        closure,
        default_tag,
    })
}

async fn run_pack(args: PackArgs) -> Result<(), String> {
    let tag: Option<TaggedName> = match &args.tag {
        Some(t) => Some(t.parse().map_err(|err| format!("invalid --tag: {err}"))?),
        None => None,
    };
    let image = prepare(args.image)?;
    let tag = match tag {
        Some(t) => t,
        None => image.default_tag.clone()?,
    };
    let store_dir = args.store.dir()?;
    let store = Store::open(&store_dir).await.map_err(msg)?;
    let img = pack_with_progress(&store, &image, &tag).await?;
    if let Some(dir) = &args.oci_layout {
        let blobs: Vec<&quinistry::digest::Digest> = std::iter::once(&img.config.0)
            .chain(img.layers.iter().map(|l| &l.layer.digest))
            .collect();
        layout::export(
            &store,
            dir,
            (&img.manifest.0, img.manifest.1),
            &blobs,
            tag.tag.as_str(),
        )
        .map_err(msg)?;
    }
    report(&img, &tag, &store_dir, args.oci_layout.as_deref());
    Ok(())
}

async fn run_serve(args: ServeArgs) -> Result<(), String> {
    if args.rescan == 0 {
        return Err("--rescan must be at least 1 second".to_owned());
    }
    let listen: SocketAddr = args.listen.parse().map_err(|_| {
        format!(
            "invalid --listen {:?}: use IP:PORT, e.g. {DEFAULT_LISTEN}",
            args.listen
        )
    })?;
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
    let on_demand = !specs.is_empty() || args.root.is_some();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_closure = match &args.image.closure {
        Some(c) => c.parse()?,
        None => ClosureMode::default(),
    };
    let setup = Setup::new(
        specs,
        args.root.as_deref(),
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
    let (config, fds) = limits(&args)?;
    let access = access(&args, listen, fds)?;
    let mut image_args = args.image;
    if !pack_at_start {
        // --closure then speaks of the on-demand images only.
        image_args.closure = None;
    }
    let image = prepare(image_args)?;

    let store_dir = args.store.dir()?;
    // Bound first: a port in use is one line now, not after a pack of gigabytes.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let store = Store::open(&store_dir).await.map_err(msg)?;
    let mut pull = None;
    if pack_at_start {
        let name = match name {
            Some(n) => n,
            None => image.default_tag.clone()?.name,
        };
        let tagged = TaggedName { name, tag };
        let img = pack_with_progress(&store, &image, &tagged).await?;
        report(&img, &tagged, &store_dir, None);
        pull = Some(tagged);
    }
    let mut prepack = None;
    let registry = if on_demand {
        let (images, lines) = OnDemand::new(store.clone(), image.opts, image.threads, setup).await;
        let images = std::sync::Arc::new(images);
        if !args.no_prepack {
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
        Registry::with_images(store, images)
    } else {
        Registry::new(store)
    };
    let registry = registry.with_access(access.clone());

    let server = Server::on(listener, registry, config.clone());
    let addr = server.local_addr().map_err(msg)?;
    if let Some(tagged) = pull {
        say(format_args!("pull       docker pull {addr}/{tagged}"));
    }
    say(format_args!("access     {}", describe(&access)));
    say(format_args!(
        "limits     {} connections, {} uploads ({} per client), {fds} file descriptors; idle {} s, body {} s, write {} s",
        config.max_connections,
        access.max_uploads,
        access.max_uploads_per_client,
        config.idle_timeout.as_secs(),
        config.body_timeout.as_secs(),
        config.write_timeout.as_secs(),
    ));
    // Last line, and the one scripts wait for.
    say(format_args!("listening http://{addr}"));
    if let Some(images) = prepack {
        quinistry::ondemand::prepack::spawn(images, std::time::Duration::from_secs(args.rescan));
    }
    server.run(shutdown_signal()?).await.map_err(msg)
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
    let config = registry::Config {
        max_connections,
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
/// authentication, unless the operator says otherwise in so many words.
fn access(args: &ServeArgs, listen: SocketAddr, fds: u64) -> Result<registry::Access, String> {
    if args.htpasswd.is_some() && !args.push && !args.auth_reads {
        return Err("--htpasswd guards pushes, which are off: add --push (or --auth-reads)".into());
    }
    if args.push && args.htpasswd.is_none() && !listen.ip().is_loopback() && !args.insecure_push {
        return Err(format!(
            "--push on {listen}, which other machines can reach, needs --htpasswd FILE \
             (or --insecure-push to let anyone push)"
        ));
    }
    if args.upload_timeout == 0 {
        return Err("--upload-timeout must be at least 1 second".into());
    }
    let htpasswd = match &args.htpasswd {
        Some(path) => Some(std::sync::Arc::new(
            registry::Htpasswd::load(path)?.failures_per_minute(args.auth_failures_per_minute),
        )),
        None => None,
    };
    Ok(registry::Access {
        push: args.push,
        htpasswd,
        auth_reads: args.auth_reads,
        max_blob_size: args.max_blob_size.map(|n| n as u64),
        upload_timeout: std::time::Duration::from_secs(args.upload_timeout),
        max_uploads: args.max_uploads.unwrap_or_else(|| fd_share(fds, 1024)),
        max_uploads_per_client: args.max_uploads_per_client,
    })
}

/// Who may push and who must log in, in words, for the start-up report.
fn describe(access: &registry::Access) -> String {
    let users = |h: &registry::Htpasswd| format!("a user of --htpasswd ({} users)", h.users());
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

/// Packs a prepared image into `store` as `tag`, with a progress bar or log lines. The
/// self-image gets the license notices of the crates in it too.
async fn pack_with_progress(
    store: &Store,
    image: &Prepared,
    tag: &TaggedName,
) -> Result<pack::PackedImage, String> {
    let mut inputs = image.inputs.clone();
    if image.is_self {
        let notices = store
            .materialize(licenses::NOTICES.as_bytes())
            .await
            .map_err(msg)?;
        inputs.push(Input::at(notices, licenses::NOTICES_PATH, "license notices").map_err(msg)?);
    }
    let packing = Packing {
        cache: image.cache,
        progress: Some(progress::reporter(&tag.to_string())),
        slots: None,
        threads: image.threads,
    };
    let machine = Machine::new("/");
    let closure = pack::closure(store, image.closure, &machine)
        .await
        .map_err(msg)?;
    pack::pack_image_with(
        store,
        &inputs,
        &closure,
        image.opts,
        &image.run,
        Some(tag),
        &packing,
    )
    .await
    .map_err(msg)
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

/// `quinistry` for the self-image; otherwise the first input's file name, mapped onto the
/// name grammar (`My_Tool.SH` is `my_tool.sh`).
fn default_tag(specs: &[String], inputs: &[Input]) -> Result<TaggedName, String> {
    if specs.is_empty() {
        return "quinistry:latest".parse().map_err(|e| format!("{e}"));
    }
    // The name it has in the image, or (for a directory placed at /) on the host.
    let base = inputs
        .first()
        .and_then(|i| {
            let in_image = i.dest.rsplit('/').next().filter(|b| !b.is_empty());
            in_image.or_else(|| i.source.file_name().and_then(|n| n.to_str()))
        })
        .unwrap_or_default();
    // A single path component (no '/'), mapped as `serve --root` maps paths.
    Name::from_path_lossy(base)
        .map(|name| TaggedName {
            name,
            tag: Tag::latest(),
        })
        .ok_or_else(|| format!("cannot derive an image name from {base:?}: pass --tag NAME:TAG"))
}

/// Errors reach the user as their one-line Display.
fn msg(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One line on stdout. A closed stdout (whoever started us stopped reading) must not take a
/// running server down, so write errors are ignored rather than panicking like `println!`.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn report(
    img: &pack::PackedImage,
    tag: &TaggedName,
    store: &std::path::Path,
    layout: Option<&std::path::Path>,
) {
    let input = mib(img.input_bytes());
    let rate = input / img.seconds.max(1e-9);
    let layers = match img.layers.len() {
        1 => "layer".to_owned(),
        n => format!("{n} layers"),
    };
    if img.cached() {
        say(format_args!(
            "packed     {input:.1} MiB of input: unchanged, {layers} taken from the layer cache ({:.2} s)",
            img.seconds
        ));
    } else {
        say(format_args!(
            "packed     {input:.1} MiB of input in {:.2} s ({rate:.1} MiB/s), {layers}",
            img.seconds
        ));
    }
    if !img.runtime.is_empty() {
        say(format_args!(
            "runtime    {} paths: interpreter and libraries of dynamic executables",
            img.runtime.len()
        ));
    }
    if !img.packages.is_empty() {
        say(format_args!(
            "packages   {} installed packages: {}",
            img.packages.len(),
            img.packages.join(" ")
        ));
    }
    say(format_args!("tag        {tag}"));
    say(format_args!(
        "manifest   {}  {} B (OCI)",
        img.manifest.0, img.manifest.1
    ));
    match &img.docker_manifest {
        Some((digest, size)) => say(format_args!(
            "docker     {digest}  {size} B (Docker schema 2)"
        )),
        None => say(format_args!(
            "docker     none: Docker schema 2 has no media type for {} layers",
            img.top().layer.encoding.name()
        )),
    }
    say(format_args!(
        "config     {}  {} B",
        img.config.0, img.config.1
    ));
    // Bottom first; the last is the image's own files (the only one without packages).
    for p in &img.layers {
        let what = match img.layers.len() {
            1 => String::new(),
            _ => format!(", {}", p.label),
        };
        say(format_args!(
            "layer      {}  {} B ({}{what})",
            p.layer.digest,
            p.layer.size,
            p.layer.encoding.name()
        ));
        say(format_args!(
            "diff_id    {}  {} B (uncompressed tar)",
            p.layer.diff_id, p.tar_size
        ));
    }
    say(format_args!("store      {}", store.display()));
    if let Some(dir) = layout {
        say(format_args!("oci-layout {}:{}", dir.display(), tag.tag));
    }
}

async fn run_verify(arg: StoreArg, repair: bool) -> Result<(), String> {
    let dir = arg.dir()?;
    let store = Store::open_existing(&dir).await.map_err(msg)?;
    let mut bad = 0usize;
    let mut good = 0usize;
    for entry in store.blobs().await.map_err(msg)? {
        match entry {
            Ok(digest) => match store.verify(&digest).await {
                Ok(()) => good += 1,
                Err(e @ StoreError::DigestMismatch { .. }) => {
                    bad += 1;
                    println!("CORRUPT  {}: {e}", store.blob_path(&digest).display());
                }
                Err(e) => return Err(e.to_string()),
            },
            Err(path) => {
                bad += 1;
                println!(
                    "STRAY    {}: not named by a digest of its algorithm",
                    path.display()
                );
            }
        }
    }
    println!("verified {good} blobs in {}, {bad} bad", dir.display());
    let graph = quinistry::store::verify::check_graph(&store, repair)
        .await
        .map_err(msg)?;
    for problem in &graph.problems {
        let verb = if repair && problem.repairable() {
            "REPAIRED"
        } else {
            "BROKEN  "
        };
        println!("{verb} {problem}");
    }
    println!(
        "graph: {} repositories, {} tags, {} links, {} manifests; {} inconsistencies, {} repaired",
        graph.repositories,
        graph.tags,
        graph.links,
        graph.manifests,
        graph.problems.len(),
        graph.repaired
    );
    if bad > 0 {
        return Err(format!(
            "{bad} blobs in {} do not match their names",
            dir.display()
        ));
    }
    match graph.remaining() {
        0 => Ok(()),
        n => Err(format!(
            "{n} inconsistencies in {}{}",
            dir.display(),
            if repair {
                " remain after --repair"
            } else {
                " (--repair removes the dangling ones)"
            }
        )),
    }
}
