//! The layer cache: which layer a set of input files packed into, remembered in the store so
//! that an unchanged 1 GiB executable is served again after a restart without recompressing
//! it (the seed re-gzipped on every start).
//!
//! The key (computed by `pack`) is a digest over everything that decides the layer's bytes:
//! each tar entry's image path, mode and kind, for a file its host path and [`FileStamp`]
//! (device, inode, size, mtime), and the layer options. The record says which layer that was,
//! and what its blob's file looked like when it was committed. A record is trusted only while
//! the blob is still that file: a blob that is missing, truncated, rewritten or replaced makes
//! the record stale, and the layer is packed again (and replaces the blob). Content damaged
//! without any change to the file's stamp is what `quinistry verify` is for.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image::{Layer, LayerEncoding};
use crate::store::{FileStamp, Store, StoreError};

/// Bumped whenever the key or the record changes meaning; older records then never match.
/// 3: parallel gzip became libdeflate members (issue 18), so the same options make other
/// bytes than a format-2 record names.
pub const FORMAT: u32 = 3;

/// What the store keeps per key.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// `FORMAT` when written: a record of another format is ignored.
    format: u32,
    digest: Digest,
    diff_id: Digest,
    /// Compressed size: the blob's length.
    size: u64,
    /// The figures a pack reports, so a cache hit reports the same.
    tar_size: u64,
    input_bytes: u64,
    /// The blob's file right after commit; any change to it means the record is stale.
    blob: FileStamp,
    /// The input files and their stamps (part of the key): once one changed or is gone, no
    /// pack can look this record up again, and `prune` removes it. Records written before
    /// it existed have none and are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inputs: Vec<(PathBuf, FileStamp)>,
}

/// The layers of the records a pack could still look up, for the collector to keep (a
/// layer packed in the background and not pulled yet is linked nowhere else); and how many
/// records no pack can look up again were removed (with `dry_run`, would be): those of
/// another format, unreadable ones, and those an input file of changed or vanished since.
/// Their layers are left to the collector, which takes them if nothing else reaches them:
/// that is how a superseded on-demand layer goes.
pub async fn prune(store: &Store, dry_run: bool) -> Result<(Vec<Digest>, usize), StoreError> {
    let mut layers = Vec::new();
    let mut dead = Vec::new();
    for (key, bytes) in store.layer_cache_records().await? {
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) if r.format == FORMAT => {
                let inputs = r.inputs;
                let alive = tokio::task::spawn_blocking(move || {
                    inputs.iter().all(|(path, stamp)| {
                        std::fs::symlink_metadata(path).is_ok_and(|m| FileStamp::of(&m) == *stamp)
                    })
                })
                .await
                .unwrap_or(true);
                if alive {
                    layers.push(r.digest);
                } else {
                    dead.push(key);
                }
            }
            _ => dead.push(key),
        }
    }
    if !dry_run {
        for key in &dead {
            store.remove_layer_record(key).await?;
        }
    }
    Ok((layers, dead.len()))
}

/// A layer the cache vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedLayer {
    pub layer: Layer,
    pub tar_size: u64,
    pub input_bytes: u64,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(CachedLayer),
    /// No usable record.
    Miss,
    /// A record whose blob is gone or changed: pack again and replace the blob.
    Stale(&'static str),
}

/// The record for `key`, checked against the store. The key covers the compression, so the
/// caller knows the layer's `encoding`.
pub async fn lookup(
    store: &Store,
    key: &Digest,
    encoding: LayerEncoding,
) -> Result<Lookup, StoreError> {
    let Some(bytes) = store.layer_record(key).await? else {
        return Ok(Lookup::Miss);
    };
    let record: Record = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%key, error = %e, "unreadable layer-cache record; packing again");
            return Ok(Lookup::Miss);
        }
    };
    if record.format != FORMAT {
        return Ok(Lookup::Miss);
    }
    let why = match store.blob_stamp(&record.digest).await? {
        Some(now) if now == record.blob => {
            return Ok(Lookup::Hit(CachedLayer {
                layer: Layer {
                    digest: record.digest,
                    size: record.size,
                    diff_id: record.diff_id,
                    encoding,
                },
                tar_size: record.tar_size,
                input_bytes: record.input_bytes,
            }));
        }
        None => "its blob is missing from the store",
        Some(now) if now.size != record.size => "its blob has the wrong size",
        Some(_) => "its blob was rewritten or replaced since it was packed",
    };
    tracing::warn!(layer = %record.digest, "cached layer not used: {why}; packing again");
    Ok(Lookup::Stale(why))
}

/// Remembers that `key` packed into `layer`, whose blob is in the store now.
pub async fn record(
    store: &Store,
    key: &Digest,
    layer: &Layer,
    tar_size: u64,
    input_bytes: u64,
    inputs: Vec<(PathBuf, FileStamp)>,
) -> Result<(), StoreError> {
    let Some(blob) = store.blob_stamp(&layer.digest).await? else {
        return Err(StoreError::BlobUnknown(layer.digest.clone()));
    };
    let record = Record {
        format: FORMAT,
        digest: layer.digest.clone(),
        diff_id: layer.diff_id.clone(),
        size: layer.size,
        tar_size,
        input_bytes,
        blob,
        inputs,
    };
    // Paths that are not UTF-8 cannot be written as JSON: such a record keeps no inputs
    // (it is kept until its layer goes). Digests and numbers always serialize.
    let bytes = match serde_json::to_vec(&record) {
        Ok(b) => b,
        Err(_) => serde_json::to_vec(&Record {
            inputs: Vec::new(),
            ..record
        })
        .unwrap_or_default(),
    };
    store.set_layer_record(key, bytes).await
}

/// One collector pass over `store` (`serve --gc-interval`, `quinistry gc`, the web page's
/// estimate): the layer-cache records no pack can use are pruned first; the layers of the
/// others, and `extra` (the images served on demand), are roots.
pub async fn collect(
    store: &Store,
    extra: Vec<Digest>,
    policy: &crate::store::gc::Policy,
) -> Result<crate::store::gc::GcReport, StoreError> {
    let (mut roots, pruned) = prune(store, policy.dry_run).await?;
    roots.extend(extra);
    let mut report = crate::store::gc::collect(store, &roots, policy).await?;
    report.pruned_records = pruned;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn stored_layer(store: &Store, bytes: &[u8]) -> Layer {
        let digest = store.put(bytes).await.expect("put");
        Layer {
            digest,
            size: bytes.len() as u64,
            diff_id: Digest::sha256_of(b"tar"),
            encoding: LayerEncoding::Gzip,
        }
    }

    #[tokio::test]
    async fn records_are_trusted_only_while_their_blob_is_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("store");
        let key = Digest::sha256_of(b"key");
        assert!(matches!(
            lookup(&store, &key, LayerEncoding::Gzip).await,
            Ok(Lookup::Miss)
        ));

        let layer = stored_layer(&store, b"layer bytes").await;
        record(&store, &key, &layer, 3, 4, Vec::new())
            .await
            .expect("record");
        match lookup(&store, &key, LayerEncoding::Gzip)
            .await
            .expect("lookup")
        {
            Lookup::Hit(c) => {
                assert_eq!((c.layer, c.tar_size, c.input_bytes), (layer.clone(), 3, 4))
            }
            other => panic!("expected a hit, got {other:?}"),
        }
        // Rewritten in place with the same length: the stamp's mtime moves.
        let path = store.blob_path(&layer.digest);
        let old = std::fs::metadata(&path)
            .expect("stat")
            .modified()
            .expect("mtime");
        std::fs::write(&path, b"LAYER BYTES").expect("corrupt");
        let f = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_modified(old + std::time::Duration::from_secs(1))
            .expect("mtime");
        assert!(matches!(
            lookup(&store, &key, LayerEncoding::Gzip).await,
            Ok(Lookup::Stale(_))
        ));
        // Missing.
        std::fs::remove_file(&path).expect("rm");
        assert!(matches!(
            lookup(&store, &key, LayerEncoding::Gzip).await,
            Ok(Lookup::Stale("its blob is missing from the store"))
        ));
        // A torn record reads as none.
        let torn = dir.path().join("cache/layers").join(key.hex());
        std::fs::write(&torn, b"{\"format\":1,").expect("tear");
        assert!(matches!(
            lookup(&store, &key, LayerEncoding::Gzip).await,
            Ok(Lookup::Miss)
        ));
    }
}
