//! Packing on-demand images before anyone asks: a pull then finds the layer in the cache and
//! its manifest is answered at once, instead of after a pack of the whole input (16 s for a
//! 1 GiB executable).
//!
//! What is prepacked: the images configured (`--image`, `--images`, `[[image]]`) and those
//! clients pulled before (recorded in the store, so this survives a restart), each again
//! when its files change. The rest of a `--root` (a thousand programs under `/usr/bin`) and
//! the `pkgs/...` images nobody pulled are packed on their first pull: a server over a
//! large root spends no CPU or disk on programs nobody asks for, and since package layers
//! are shared, the store grows with the distinct packages pulled.
//!
//! One task goes through those images, one at a time, the way a pull would
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::OnDemand;
use crate::reference::{Name, Tag};
use crate::store::FileStamp;

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
        // A pass that left images for later (files still settling) comes back for them.
        let again = ondemand
            .pack_all()
            .await
            .map_or(every, |later| later.min(every));
        tokio::select! {
            _ = changes.recv() => {}
            () = tokio::time::sleep(again) => {}
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
        let inputs = self
            .explicit
            .values()
            .flat_map(|t| t.values())
            .flat_map(|e| &e.inputs);
        for input in inputs {
            if input.source.is_dir() {
                paths.push((input.source.clone(), RecursiveMode::Recursive));
            } else if let Some(parent) = input.source.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                paths.push((parent.to_path_buf(), RecursiveMode::NonRecursive));
            }
        }
        paths.sort();
        paths.dedup();
        paths
    }

    /// Resolves every configured or previously pulled on-demand image in turn, packing what
    /// is not packed; failures are logged by the pack, and retried on the next pass. Returns
    /// how soon another pass is due for images whose files were modified too recently to
    /// pack now.
    pub async fn pack_all(&self) -> Option<Duration> {
        let mut images: Vec<(Name, Tag)> = self
            .explicit
            .iter()
            .flat_map(|(name, tags)| tags.keys().map(move |tag| (name.clone(), tag.clone())))
            .collect();
        let pulled: Vec<String> = {
            let pulled = self.pulled.lock().unwrap_or_else(|p| p.into_inner());
            pulled.iter().cloned().collect()
        };
        for image in pulled {
            // Recorded by this or an older quinistry: a record that no longer parses, or
            // names what is no longer served, is skipped.
            let Ok(tagged) = image.parse::<crate::reference::TaggedName>() else {
                continue;
            };
            if !self.explicit.contains_key(&tagged.name) && self.has(&tagged.name).await {
                images.push((tagged.name, tagged.tag));
            }
        }
        let mut again: Option<Duration> = None;
        let mut later = |wait: Duration| again = Some(again.map_or(wait, |a| a.min(wait)));
        let checked = images.len();
        for (name, tag) in images {
            let Some(stamps) = self.current_stamps(&name, &tag).await else {
                continue; // gone since the scan
            };
            if self.packed_for(&name, &tag, &stamps) {
                continue;
            }
            if let Some(wait) = settling(&stamps, SystemTime::now()) {
                later(wait);
                continue;
            }
            let packed = self.resolve_image(&name, &tag).await;
            // Served, but not cached: files below an input folder were fresh. Once they have
            // settled, a pack of them is remembered.
            if matches!(packed, Some(Ok(_))) && !self.packed_for(&name, &tag, &stamps) {
                later(crate::pack::SETTLE);
            }
        }
        tracing::debug!(images = checked, "prepack pass done");
        again
    }

    /// The stamps of an image's top-level inputs now; `None` if it has no file any more.
    async fn current_stamps(&self, name: &Name, tag: &Tag) -> Option<Vec<Option<FileStamp>>> {
        if let Some(e) = self.explicit.get(name).and_then(|t| t.get(tag)) {
            return Some(super::stamps(&e.inputs).await);
        }
        if self.package_list(name).is_some() {
            return Some(vec![self.dpkg_stamp().await]);
        }
        let found = self.root.as_ref()?.locate(name).await?;
        Some(vec![Some(found.stamp)])
    }

    /// Whether the image's last pack was of inputs stamped `stamps`, succeeded, and had
    /// settled (so its layers are cached): then a pass leaves it alone, and the log quiet.
    /// What only its libraries changed, a pull finds, as it plans again after `RECHECK`.
    fn packed_for(&self, name: &Name, tag: &Tag, stamps: &Vec<Option<FileStamp>>) -> bool {
        let good = |o: &super::Outcome| o.as_ref().is_ok_and(|r| r.settled);
        if let Some(e) = self.explicit.get(name).and_then(|t| t.get(tag)) {
            return e.image.flight.done_for(stamps, good);
        }
        if self.package_list(name).is_some() {
            let images = self
                .package_images
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            return images
                .peek(name)
                .is_some_and(|i| i.flight.done_for(stamps, good));
        }
        let images = self.root_images.lock().unwrap_or_else(|p| p.into_inner());
        images
            .get(name)
            .is_some_and(|i| i.flight.done_for(stamps, good))
    }
}

/// How long until the newest of `stamps` is `SETTLE` old; `None` if it is already. A file
/// modified so recently may still be being written (a copy in progress): packed now, it
/// would be served but not cached, and most likely fail as it changes under the pack.
fn settling(stamps: &[Option<FileStamp>], now: SystemTime) -> Option<Duration> {
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_nanos() as i128;
    let newest = stamps.iter().flatten().map(|s| s.mtime_ns).max()?;
    let left = crate::pack::SETTLE.as_nanos() as i128 - (now - newest);
    // A little past the limit, so the next look finds it settled.
    (left > 0).then(|| Duration::from_nanos(left as u64) + Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn fresh_files_are_left_until_they_settle() {
        let stamp = |age_ms: u64, now: SystemTime| FileStamp {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: (now - Duration::from_millis(age_ms))
                .duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_nanos() as i128,
        };
        let now = SystemTime::now();
        assert_eq!(settling(&[Some(stamp(10_000, now))], now), None);
        assert_eq!(settling(&[None], now), None);
        let wait = settling(
            &[Some(stamp(10_000, now)), Some(stamp(1_000, now)), None],
            now,
        )
        .expect("one input is a second old");
        assert!(
            wait > Duration::from_millis(1_900) && wait <= Duration::from_millis(2_100),
            "{wait:?}"
        );
    }

    #[test]
    fn reads_and_the_stores_own_writes_bring_no_pass() {
        let store = Path::new("/root/store");
        let write = EventKind::Modify(ModifyKind::Any);
        assert!(matters(&event(write, "/root/app"), store));
        assert!(matters(
            &event(EventKind::Create(CreateKind::File), "/root/new"),
            store
        ));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(matters(&event(closed, "/root/app"), store));
        let read = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!matters(&event(read, "/root/app"), store));
        assert!(!matters(&event(write, "/root/store/blobs/sha256/x"), store));
    }
}
