//! The `quinistry` command line: parses arguments, sets up logging, wires the library together.

use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches};

mod cli;
use cli::args::{Cli, Command, ConfigCommand, ImageArgs, PackArgs, ServeArgs, StoreArg};
use cli::config;
use cli::serve::{self, FromFile};

use quinistry::image::{self, RunConfig};
use quinistry::licenses;
use quinistry::pack::compress::Compression;
use quinistry::pack::gzip;
use quinistry::pack::layout;
use quinistry::pack::progress;
use quinistry::pack::{self, ClosureMode, Input, LayerOptions, Packing};
use quinistry::reference::{Name, Tag, TaggedName};
use quinistry::registry;
use quinistry::runtime::packages::Machine;
use quinistry::store::{Store, StoreError};

/// What this run does, its settings gathered.
// Made once per run: the size of the largest variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
enum Job {
    /// `serve`, or with `check`, `config check`: its flags, with the config file applied.
    Serve {
        args: ServeArgs,
        file: FromFile,
        check: Option<std::path::PathBuf>,
    },
    Pack(PackArgs),
    Verify(StoreArg, bool),
    Gc {
        store: StoreArg,
        policy: quinistry::store::gc::Policy,
    },
    Licenses,
}

fn main() -> ExitCode {
    quinistry::thread::tune_allocator();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Settings first (the config file may say how to log), logging next, then the rest.
    let (job, format) = match job(cli, &matches) {
        Ok(j) => j,
        Err(msg) => {
            eprintln!("quinistry: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let _log_guard = logging(format.as_deref() == Some("json"));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("quinistry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match job {
            Job::Serve {
                args,
                file,
                check: None,
            } => serve::run(serve::settle(args, file)?).await,
            Job::Serve {
                args,
                file,
                check: Some(path),
            } => {
                let settings = serve::settle(args, file)?;
                let problems = serve::unusable_paths(&settings);
                if !problems.is_empty() {
                    return Err(format!("{}: {}", path.display(), problems.join("; ")));
                }
                say(format_args!("config     {}: valid", path.display()));
                for line in serve::summary(&settings) {
                    say(format_args!("{line}"));
                }
                if let Some(m) = settings.metrics_listen() {
                    say(format_args!("metrics    http://{m}/metrics"));
                }
                Ok(())
            }
            Job::Pack(args) => run_pack(args).await,
            Job::Verify(store, repair) => run_verify(store, repair).await,
            Job::Gc { store, policy } => run_gc(store, policy).await,
            Job::Licenses => {
                use std::io::Write;
                std::io::stdout()
                    .write_all(licenses::NOTICES.as_bytes())
                    .map_err(msg)
            }
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

/// The job the command line asks for, and the log format (flag, variable, or config file).
fn job(cli: Cli, root: &ArgMatches) -> Result<(Job, Option<String>), String> {
    let mut format = cli.log_format;
    // `serve`'s flags as parsed from `argv`, with clap's record of where each value came from.
    let serve_from = |argv: &[&std::ffi::OsStr]| -> Result<(ServeArgs, ArgMatches), String> {
        let m = Cli::command()
            .try_get_matches_from(argv)
            .map_err(|e| e.to_string())?;
        let sub = m
            .subcommand_matches("serve")
            .ok_or("cannot apply the defaults of `serve`")?;
        let args = ServeArgs::from_arg_matches(sub).map_err(|e| e.to_string())?;
        Ok((args, sub.clone()))
    };
    let (args, m, check) = match cli.command {
        Some(Command::Serve(args)) => {
            let m = root
                .subcommand_matches("serve")
                .ok_or("cannot read the flags of `serve`")?
                .clone();
            (args, m, None)
        }
        // Bare `quinistry` is `quinistry serve` with every default (QUINISTRY_* included).
        None => {
            let (args, m) = serve_from(&["quinistry".as_ref(), "serve".as_ref()])?;
            (args, m, None)
        }
        Some(Command::Config(ConfigCommand::Check { file })) => {
            let argv = [
                "quinistry".as_ref(),
                "serve".as_ref(),
                "--config".as_ref(),
                file.as_os_str(),
            ];
            let (args, m) = serve_from(&argv)?;
            (args, m, Some(file))
        }
        Some(Command::Pack(args)) => return Ok((Job::Pack(args), format)),
        Some(Command::Verify { store, repair }) => return Ok((Job::Verify(store, repair), format)),
        Some(Command::Gc {
            config,
            mut store,
            dry_run,
            mut gc,
        }) => {
            let mut unpulled = Vec::new();
            if let Some(path) = config {
                let loaded = config::File::load(&path)?;
                format = config::log_format(root, format, Some(&loaded));
                let m = root
                    .subcommand_matches("gc")
                    .ok_or("cannot read the flags of `gc`")?;
                unpulled = config::apply_to_gc(loaded, m, &mut store, &mut gc)
                    .map_err(|e| format!("--config {}: {e}", path.display()))?;
            }
            let mut policy = gc.policy(dry_run)?;
            policy.unpulled = unpulled;
            return Ok((Job::Gc { store, policy }, format));
        }
        Some(Command::Licenses) => return Ok((Job::Licenses, format)),
    };
    let mut args = args;
    let mut file = FromFile::default();
    if let Some(path) = args.config.clone() {
        let loaded = config::File::load(&path)?;
        format = config::log_format(root, format, Some(&loaded));
        file = config::apply(loaded, &m, &mut args)
            .map_err(|e| format!("--config {}: {e}", path.display()))?;
    }
    if let Some(f) = &format
        && !["text", "json"].contains(&f.as_str())
    {
        return Err(format!("log format {f:?}: use text or json"));
    }
    Ok((Job::Serve { args, file, check }, format))
}

/// Sets up logging: `RUST_LOG` filters (default `info`); lines as text, or one JSON object
/// each. The returned guard writes out the access log's last lines when dropped.
fn logging(json: bool) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::Layer;
    use tracing_subscriber::prelude::*;
    // The access log (one line per request) is handed to a thread that writes it in batches:
    // written with a system call per line on the request's own thread, it cost a fifth of
    // the manifest GET rate (86k against 116k per second with it off). Not lossy: past
    // 128,000 lines waiting, requests wait for the log, as nginx's do. Every other line is
    // written at once, in order with what the program prints.
    let (access_writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("quinistry-log")
        .finish(std::io::BufWriter::with_capacity(
            64 << 10,
            progress::LogWriter,
        ));
    let is_access = |m: &tracing::Metadata<'_>| m.target() == registry::ACCESS_LOG;
    let ansi = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Fields at the top level of each object, next to `timestamp`, `level` and `target`, so
    // `jq .status` reads them.
    let access = tracing_subscriber::fmt::layer()
        .with_writer(access_writer)
        .with_ansi(ansi);
    let access = if json {
        access.json().flatten_event(true).boxed()
    } else {
        access.boxed()
    };
    let rest = tracing_subscriber::fmt::layer()
        .with_writer(progress::LogWriter)
        .with_ansi(ansi);
    let rest = if json {
        rest.json().flatten_event(true).boxed()
    } else {
        rest.boxed()
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(access.with_filter(tracing_subscriber::filter::filter_fn(is_access)))
        .with(
            rest.with_filter(tracing_subscriber::filter::filter_fn(move |m| {
                !is_access(m)
            })),
        )
        .init();
    guard
}

/// An image ready to pack: its inputs, run settings and layer options, all validated.
pub struct Prepared {
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
    /// Installed packages the image holds whatever its files are (`+PKG` inputs).
    packages: Vec<String>,
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
    let closure = match args.no_recommends {
        true => closure.without_recommends(),
        false => closure,
    };
    let (packages, files) = pack::split_packages(&args.inputs)?;
    if !packages.is_empty() && closure == ClosureMode::Elf {
        return Err(pack::PackError::PackagesNeedTheirClosure.to_string());
    }
    let inputs: Vec<Input> = if is_self {
        let exe = std::env::current_exe()
            .map_err(|err| format!("cannot find this executable to pack it: {err}"))?;
        vec![Input::at(exe, image::SELF_PATH, "self").map_err(msg)?]
    } else {
        files
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
    let default_tag = default_tag(&args.inputs, &inputs, &packages);
    Ok(Prepared {
        inputs,
        is_self,
        run,
        opts,
        threads,
        cache: !args.no_cache,
        closure,
        packages,
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
    let spec = args.store.spec()?;
    if !spec.blob_files() && args.oci_layout.is_some() {
        return Err("--oci-layout copies blob files: it works with a directory --store, not an s3:// one (yet)".into());
    }
    let store_dir = std::path::PathBuf::from(spec.describe());
    let store = spec.open(false).await.map_err(msg)?;
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
    let closure = pack::closure(image.closure, &machine, &image.packages)
        .await
        .map_err(msg)?;
    let mut run = image.run.clone();
    if run.entrypoint.is_none() {
        run.entrypoint = closure.packages_entrypoint();
    }
    pack::pack_image_with(
        store,
        &inputs,
        &closure,
        image.opts,
        &run,
        Some(tag),
        &packing,
    )
    .await
    .map_err(msg)
}

/// `quinistry` for the self-image; otherwise the first input's file name, mapped onto the
/// name grammar (`My_Tool.SH` is `my_tool.sh`).
fn default_tag(
    specs: &[String],
    inputs: &[Input],
    packages: &[String],
) -> Result<TaggedName, String> {
    if specs.is_empty() {
        return "quinistry:latest".parse().map_err(|e| format!("{e}"));
    }
    if inputs.is_empty()
        && let Some(first) = packages.first()
    {
        return first
            .parse::<Name>()
            .map(|name| TaggedName {
                name,
                tag: Tag::latest(),
            })
            .map_err(|_| format!("cannot name an image {first:?}: pass --tag NAME:TAG"));
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
    let store = arg.open(true).await?;
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

/// `quinistry gc`: one pass over a store, stopped or in use (see `store::gc`); the layers
/// of the layer-cache records a pack can still use are kept, the others' records pruned.
async fn run_gc(arg: StoreArg, policy: quinistry::store::gc::Policy) -> Result<(), String> {
    // Not `open`: a typo'd --store must not become a new empty store.
    let store = arg.open(true).await?;
    let report = quinistry::pack::cache::collect(&store, Vec::new(), &policy)
        .await
        .map_err(msg)?;
    println!("gc: {}", report.summary());
    Ok(())
}
