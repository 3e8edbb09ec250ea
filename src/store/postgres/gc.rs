//! Garbage collection of a shared store (blobs in object storage, metadata in PostgreSQL),
//! run by one replica at a time: each pass holds the collector's advisory lock, and a
//! replica that finds it taken skips its pass (`StoreError::Busy`).
//!
//! What is kept is what the local collector keeps, decided by transactions instead of
//! touch times on files:
//! 1. **Blob links.** For each repository, under its lock (the one a manifest push holds
//!    from the check of its blobs to its last tag), the blob links that no manifest linked
//!    there names and that were touched longer than `link_grace` ago are removed.
//! 2. **Doom.** Blobs that no link names, that are not `roots` (the layers a pack can still
//!    use, the on-demand images served) and that were untouched for `grace` are marked
//!    doomed in one statement. A doomed blob is absent to writers: one that pushes it again
//!    writes its object again, and recording it (or linking it) un-dooms it.
//! 3. **Removal.** Each doomed blob is removed under its own lock, the one a writer holds
//!    from its check of whether the blob exists to its record of it: the record goes first,
//!    only if it is still doomed, unlinked and untouched, then the object.
//!
//! Why no acknowledged push loses a blob: a push is told a blob exists only through a link
//! (a finished upload, a mount, a manifest whose blobs were found linked), and a link is made
//! by one statement that touches the blob's record and un-dooms it, or fails (BLOB_UNKNOWN)
//! if the record is gone. The removal re-checks and deletes the record in one statement,
//! so the two are ordered by the database: a link that comes first saves the blob, one that
//! comes after fails cleanly and the client uploads again. The object is removed only after
//! its record, under the blob's lock, so a writer that re-uploads it waits and then writes
//! the object anew; a crash between the two leaves an object no record names (garbage, not
//! damage).
//!
//! Not built yet for a shared store: retention (`--keep-untagged`, `--keep-tags`), and the
//! removal of objects that no record names (left by a crash at the step above, or by a
//! writer that died between its copy and its record).

use std::time::Instant;

use crate::digest::Digest;
use crate::store::gc::{GcReport, MAX_MANIFEST, Policy, names_in};
use crate::store::{Link, Result, Store, StoreError};

pub async fn collect(store: &Store, roots: &[Digest], policy: &Policy) -> Result<GcReport> {
    let Some(shared) = store.shared() else {
        return Err(StoreError::Unsupported("not a shared store"));
    };
    if policy.keep_untagged.is_some() || !policy.keep_tags.is_empty() {
        return Err(StoreError::Unsupported(
            "retention (--keep-untagged, --keep-tags) of a shared store is not built yet",
        ));
    }
    let Some(_pass) = shared.meta.try_lock_collector().await? else {
        return Err(StoreError::Busy("another replica is collecting this store"));
    };
    let started = Instant::now();
    let mut report = GcReport {
        dry_run: policy.dry_run,
        ..GcReport::default()
    };
    for name in store.repositories().await? {
        let _repository = store.lock_repository(&name).await?;
        if let Some(age) = policy.unpulled_for(&name) {
            evict_unpulled(store, &name, age, policy.dry_run, &mut report).await?;
        }
        let mut named = Vec::new();
        for manifest in store.links(&name, Link::Manifest).await? {
            let Some(bytes) = read_manifest(store, &manifest).await? else {
                continue;
            };
            let recorded = store.manifest_type(&manifest).await?;
            if let Some((blobs, children)) = names_in(&bytes, recorded.as_deref()) {
                named.extend(blobs.iter().chain(&children).map(Digest::to_string));
            }
        }
        report.stale_links += shared
            .meta
            .remove_stale_blob_links(&name, &named, policy.link_grace, policy.dry_run)
            .await?;
    }
    let roots: Vec<String> = roots.iter().map(Digest::to_string).collect();
    let (blobs, unreachable, young) = shared.meta.count_unreachable(&roots, policy.grace).await?;
    report.blobs = blobs;
    report.live = blobs - unreachable;
    report.young = young;
    let doomed = shared
        .meta
        .doom(&roots, policy.grace, policy.dry_run)
        .await?;
    let removed = remove(store, &doomed, policy).await;
    if removed.is_err() {
        // Left doomed, they would be absent to writers until the next pass: spare them.
        let _ = shared.meta.spare_doomed().await;
    }
    let (reclaimed, bytes) = removed?;
    report.reclaimed = reclaimed;
    report.reclaimed_bytes = bytes;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A mirror's repository: its tags whose manifest was not pulled for `age`, then the
/// manifests no tag left reaches, untouched as long (see `gc.rs`, retention).
async fn evict_unpulled(
    store: &Store,
    name: &crate::reference::Name,
    age: std::time::Duration,
    dry_run: bool,
    report: &mut GcReport,
) -> Result<()> {
    let Some(shared) = store.shared() else {
        return Ok(());
    };
    let tags = shared.meta.tags_pulled(name, age).await?;
    let (old, fresh): (Vec<_>, Vec<_>) = tags.into_iter().partition(|(_, _, old)| *old);
    let old: Vec<String> = old.into_iter().map(|(tag, _, _)| tag).collect();
    report.tags_removed += shared
        .meta
        .remove_unpulled_tags(name, &old, age, dry_run)
        .await?;
    // What the tags left reach (an index's platform manifests) stays.
    let mut kept: Vec<String> = Vec::new();
    for (_, digest, _) in fresh {
        kept.push(digest.clone());
        let Ok(digest) = digest.parse::<Digest>() else {
            continue;
        };
        if let Some(bytes) = read_manifest(store, &digest).await? {
            let recorded = store.manifest_type(&digest).await?;
            if let Some((_, children)) = names_in(&bytes, recorded.as_deref()) {
                kept.extend(children.iter().map(Digest::to_string));
            }
        }
    }
    report.untagged_removed += shared
        .meta
        .remove_unpulled_manifests(name, &kept, age, dry_run)
        .await?;
    Ok(())
}

/// Removes the doomed blobs that are still garbage (on a dry run, counts them all): how
/// many, and their bytes.
async fn remove(store: &Store, doomed: &[(Digest, u64)], policy: &Policy) -> Result<(usize, u64)> {
    let Some(shared) = store.shared() else {
        return Ok((0, 0));
    };
    if policy.dry_run {
        return Ok((doomed.len(), doomed.iter().map(|(_, size)| size).sum()));
    }
    let (mut reclaimed, mut bytes) = (0, 0);
    for (digest, size) in doomed {
        let _blob = shared.meta.lock_digest(digest).await?;
        if !shared.meta.remove_doomed(digest, policy.grace).await? {
            continue;
        }
        shared
            .objects
            .delete(&shared.objects.blob_key(digest))
            .await?;
        store.removed(*size);
        reclaimed += 1;
        bytes += size;
    }
    Ok((reclaimed, bytes))
}

/// A linked manifest's bytes; `None` if it is too large to be one or gone.
async fn read_manifest(store: &Store, digest: &Digest) -> Result<Option<Vec<u8>>> {
    match store.read_small_blob(digest, MAX_MANIFEST).await {
        Ok(bytes) => Ok(bytes),
        Err(StoreError::BlobUnknown(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
