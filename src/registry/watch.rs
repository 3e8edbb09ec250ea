//! Files read again without a restart (the TLS certificate, the htpasswd file, the access
//! rules): on SIGHUP, and when anything changes in their folders — a file rewritten in place
//! (`htpasswd -D`), or another renamed over it (editors, Kubernetes secrets), which a watch of
//! the file itself would miss.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a folder must be quiet before the files are read: a rewrite is several events.
const SETTLE: Duration = Duration::from_millis(300);
/// Read anyway after this long, for a folder that never stops changing.
const SETTLE_MAX: Duration = Duration::from_secs(3);

/// Calls `reload` with why (`"SIGHUP"`, `"the files changed"`) after each SIGHUP and each
/// settled change in the folders of `files`, until `reload` returns false (its owner is
/// gone). Errors only if the signal or the watch cannot be set up.
pub fn watch(
    files: &[&Path],
    what: &str,
    mut reload: impl FnMut(&'static str) -> bool + Send + 'static,
) -> Result<(), String> {
    use notify::Watcher;
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads of the files (ours, or others' of files kept beside them) change nothing.
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .map_err(|e| format!("cannot watch the {what}: {e}"))?;
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|p| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned()
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    }
    tokio::spawn(async move {
        // Owned here: dropping the watcher stops the events.
        let _watcher = watcher;
        loop {
            let why = tokio::select! {
                e = rx.recv() => match e {
                    Some(()) => "the files changed",
                    None => break,
                },
                _ = hup.recv() => "SIGHUP",
            };
            let began = tokio::time::Instant::now();
            while began.elapsed() < SETTLE_MAX
                && let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await
            {}
            if !reload(why) {
                break;
            }
        }
    });
    Ok(())
}
