//! Garbage collection of a store that nothing else has open (`quinistry gc`): mark, then
//! sweep.
//!
//! Live is everything reachable from the store's records: every repository's tags, linked
//! manifests (tagged or not) and referrers, the config, layers and child manifests of every
//! live manifest, and the extra roots the caller gives (the layers the layer cache vouches
//! for). A repository's blob link counts while a manifest linked there names the blob, or
//! while the link is younger than the grace period (a pushed layer waiting for its
//! manifest); an older one that no manifest names (left by a deleted manifest) is removed.
//! A blob that is not live and whose file is older than the grace period is removed, with
//! the media-type record of a manifest; a younger one is kept and counted.
//!
//! Why this is safe here: `Store::open_alone` takes the store's lock exclusively, which
//! every `serve` and `pack` holds shared while it has the store open, so no write can
//! happen between the mark and the sweep. A server that starts meanwhile waits for the
//! lock. Collecting while a server runs, where a push may be about to link what the mark
//! did not see, is the online collector's problem (not built yet).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::{Link, Result, Store, StoreError};
use crate::digest::Digest;
use crate::image;
use crate::reference::Name;

/// What a collection found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs in the store before the sweep.
    pub blobs: usize,
    pub live: usize,
    /// Removed (or, on a dry run, that would be).
    pub reclaimed: usize,
    pub reclaimed_bytes: u64,
    /// Unreachable, but younger than the grace period: kept.
    pub young: usize,
    /// Files under `blobs/` not named by a digest: never touched.
    pub strays: usize,
    /// Blob links no manifest of their repository names, older than the grace period.
    pub stale_links: usize,
}

/// Manifests larger than this are not read as manifests (the registry's own limit).
const MAX_MANIFEST: u64 = 4 << 20;

/// Marks from the store's records and `roots`, then removes what is unreachable and older
/// than `grace` (nothing, with `dry_run`).
pub async fn collect(
    store: &Store,
    roots: &[Digest],
    grace: Duration,
    dry_run: bool,
) -> Result<GcReport> {
    let started = SystemTime::now();
    let (live, stale) = mark(store, roots, started, grace).await?;
    let mut report = GcReport {
        stale_links: stale.len(),
        ..GcReport::default()
    };
    if !dry_run {
        for (name, digest) in &stale {
            store.unlink(name, Link::Blob, digest).await?;
        }
    }
    for entry in store.blobs().await? {
        let digest = match entry {
            Ok(d) => d,
            Err(_) => {
                report.strays += 1;
                continue;
            }
        };
        report.blobs += 1;
        if live.contains(&digest) {
            report.live += 1;
            continue;
        }
        let path = store.blob_path(&digest);
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(StoreError::Io {
                    action: "stat",
                    path,
                    source,
                });
            }
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| started.duration_since(m).ok())
            .unwrap_or_default();
        if age < grace {
            report.young += 1;
            continue;
        }
        if dry_run {
            report.reclaimed += 1;
            report.reclaimed_bytes += meta.len();
        } else if let Some(len) = store.remove_blob(&digest).await? {
            report.reclaimed += 1;
            report.reclaimed_bytes += len;
        }
    }
    Ok(report)
}

/// Every digest reachable from the tags, links and referrer records, and from `roots`;
/// and the blob links to remove (see the module doc).
pub async fn mark(
    store: &Store,
    roots: &[Digest],
    now: SystemTime,
    grace: Duration,
) -> Result<(BTreeSet<Digest>, Vec<(Name, Digest)>)> {
    let mut live: BTreeSet<Digest> = roots.iter().cloned().collect();
    let mut stale = Vec::new();
    for name in store.repositories().await? {
        let mut manifests = store.links(&name, Link::Manifest).await?;
        for tag in store.tags(&name).await? {
            manifests.extend(store.tag(&name, &tag).await?);
        }
        for (_, referrer) in store.referrer_records(&name).await? {
            manifests.push(referrer);
        }
        let named = reach(store, manifests, &mut live).await?;
        for blob in store.links(&name, Link::Blob).await? {
            if named.contains(&blob) {
                continue;
            }
            let made = store.link_made(&name, Link::Blob, &blob).await?;
            let age = made
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < grace {
                live.insert(blob);
            } else {
                stale.push((name.clone(), blob));
            }
        }
    }
    Ok((live, stale))
}

/// Marks `manifests` and everything they name, children first to last, into `live`; the
/// blobs and manifests named.
async fn reach(
    store: &Store,
    mut manifests: Vec<Digest>,
    live: &mut BTreeSet<Digest>,
) -> Result<BTreeSet<Digest>> {
    let mut named = BTreeSet::new();
    while let Some(manifest) = manifests.pop() {
        live.insert(manifest.clone());
        if !named.insert(manifest.clone()) {
            continue;
        }
        let bytes = match store.read_small_blob(&manifest, MAX_MANIFEST).await {
            Ok(Some(bytes)) => bytes,
            // Not a manifest (too large), or gone: `verify` reports a dangling record.
            Ok(None) | Err(StoreError::BlobUnknown(_)) => continue,
            Err(e) => return Err(e),
        };
        let recorded = store.manifest_type(&manifest).await?;
        if let Ok(parsed) = image::parse_pushed_manifest(&bytes, recorded.as_deref()) {
            for (blob, _) in parsed.blobs {
                live.insert(blob.clone());
                named.insert(blob);
            }
            manifests.extend(parsed.children.into_iter().map(|(d, _)| d));
        }
    }
    Ok(named)
}
