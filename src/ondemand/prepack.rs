//! Packing on-demand images before anyone asks: a pull then finds the layer in the cache and
//! its manifest is answered at once, instead of after a pack of the whole input (16 s for a
//! 1 GiB executable).
//!
//! One task goes through every on-demand image, one at a time, the way a pull would
//! ([`OnDemand::manifest`]): through the image's single flight, so a pull that comes while
//! the image is being packed here waits for this same pack, and through the layer cache, so
//! an unchanged image costs a stat and a plan. It does so at start, after any change that
//! inotify reports under `--root` or beside an `--image` input (once the changes have been
//! quiet for [`QUIET`], so a file being copied in is packed once, whole), and every rescan
//! period regardless, for file systems inotify cannot see (NFS, FUSE) or when the system's
//! watch limit is reached.
//!
//! It takes few resources from the serving: one pack at a time, each within the server's
//! `--max-packs` slots, with the compression threads at nice 10. A file that changes while
//! it is packed fails that pack ("file changed while it was being packed"); its change
//! brings another pass.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::OnDemand;

/// How long changes must have stopped before a pass starts.
pub const QUIET: Duration = Duration::from_secs(1);

/// Starts the background task; it runs until the process ends. `every` is the rescan period.
pub fn spawn(ondemand: Arc<OnDemand>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(ondemand, every))
}

async fn run(ondemand: Arc<OnDemand>, every: Duration) {
    // Capacity 1: any number of changes before a pass are one reason for it.
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let _watcher = watch(&ondemand, changed);
    loop {
        ondemand.pack_all().await;
        tokio::select! {
            _ = changes.recv() => {}
            () = tokio::time::sleep(every) => {}
        }
        // Wait for the changes to stop: a file copied in fires for every write.
        while let Ok(Some(())) = tokio::time::timeout(QUIET, changes.recv()).await {}
    }
}

/// An inotify watch on what the images are made of; `None` (and a warning) if none could be
/// set, when the periodic rescan is all there is.
fn watch(ondemand: &OnDemand, changed: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let store = ondemand.store.root().to_path_buf();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            // An overflowed queue or a watch error: something may have changed.
            let _ = changed.try_send(());
            return;
        };
        if matters(&event, &store) {
            // Full means a pass is due already.
            let _ = changed.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the on-demand inputs; they are rescanned periodically only");
            return None;
        }
    };
    for (path, mode) in ondemand.watched() {
        if let Err(e) = watcher.watch(&path, mode) {
            tracing::warn!(path = %path.display(), error = %e, "cannot watch for changes; rescanned periodically only");
        }
    }
    Some(watcher)
}

/// Whether `event` may change an image: reads (ours included) and the store's own writes,
/// should the store lie under the root, do not.
fn matters(event: &notify::Event, store: &Path) -> bool {
    use notify::event::{AccessKind, AccessMode};
    let relevant = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    relevant && !event.paths.iter().all(|p| p.starts_with(store))
}

impl OnDemand {
    /// What to watch: the root, whole; each `--image` input's folder (a file replaced by
    /// rename, as editors and `cp` over a busy file do, shows there), and an input that is a
    /// folder, whole.
    fn watched(&self) -> Vec<(PathBuf, RecursiveMode)> {
        let mut paths: Vec<(PathBuf, RecursiveMode)> = Vec::new();
        if let Some(root) = &self.root {
            paths.push((root.dir.clone(), RecursiveMode::Recursive));
        }
        let inputs = self.explicit.values().flat_map(|t| t.values()).flat_map(|e| &e.inputs);
        for input in inputs {
            if input.source.is_dir() {
                paths.push((input.source.clone(), RecursiveMode::Recursive));
            } else if let Some(parent) = input.source.parent() {
                let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
                paths.push((parent.to_path_buf(), RecursiveMode::NonRecursive));
            }
        }
        paths.sort();
        paths.dedup();
        paths
    }

    /// Resolves every on-demand image in turn, packing what is not packed; failures are
    /// logged by the pack, and retried on the next pass.
    pub async fn pack_all(&self) {
        let mut images: Vec<(crate::reference::Name, crate::reference::Tag)> = self
            .explicit
            .iter()
            .flat_map(|(name, tags)| tags.keys().map(move |tag| (name.clone(), tag.clone())))
            .collect();
        if let Some(root) = &self.root {
            let latest = crate::reference::Tag::latest();
            images.extend(root.names(true).await.into_iter().map(|n| (n, latest.clone())));
        }
        for (name, tag) in images {
            if !self.packed_as_is(&name, &tag).await {
                let _ = self.manifest(&name, &tag).await;
            }
        }
    }

    /// Whether the image's last pack succeeded, with inputs that had settled and look as
    /// they do now: then a pass leaves it alone (and the log quiet). What only its libraries
    /// changed, a pull finds, as it plans again after `RECHECK`.
    async fn packed_as_is(&self, name: &crate::reference::Name, tag: &crate::reference::Tag) -> bool {
        let good = |o: &super::Outcome| o.as_ref().is_ok_and(|r| r.settled);
        if let Some(e) = self.explicit.get(name).and_then(|t| t.get(tag)) {
            return e.image.flight.done_for(&super::stamps(&e.inputs).await, good);
        }
        let Some(root) = &self.root else {
            return false;
        };
        let image = self.root_images.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        match (image, root.locate(name).await) {
            (Some(image), Some(found)) => image.flight.done_for(&vec![Some(found.stamp)], good),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn reads_and_the_stores_own_writes_bring_no_pass() {
        let store = Path::new("/root/store");
        let write = EventKind::Modify(ModifyKind::Any);
        assert!(matters(&event(write, "/root/app"), store));
        assert!(matters(&event(EventKind::Create(CreateKind::File), "/root/new"), store));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(matters(&event(closed, "/root/app"), store));
        let read = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!matters(&event(read, "/root/app"), store));
        assert!(!matters(&event(write, "/root/store/blobs/sha256/x"), store));
    }
}
