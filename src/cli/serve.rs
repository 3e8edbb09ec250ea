//! `quinistry serve`: checks the settings, packs what is packed at start, and runs the
//! registry until a signal.

use std::net::SocketAddr;

use quinistry::ondemand::{ImageSpec, OnDemand, Setup};
use quinistry::pack::ClosureMode;
use quinistry::reference::{Name, Tag, TaggedName};
use quinistry::registry::{self, Registry, Server};
use quinistry::store::Store;

use super::args::{DEFAULT_LISTEN, ServeArgs};
use crate::{msg, pack_with_progress, prepare, report, say};

pub async fn run_serve(args: ServeArgs) -> Result<(), String> {
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
