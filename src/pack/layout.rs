//! Export of a stored image as an OCI image layout (`oci-layout`, `index.json`, `blobs/`), the
//! directory form that `skopeo inspect oci:DIR:TAG` and other tools read.

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::digest::Digest;
use crate::image::OCI_MANIFEST;
use crate::store::Store;

/// The annotation by which layout tools find an image by tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is not a valid OCI layout index: {why}", path.display())]
    BadIndex { path: PathBuf, why: String },
}

fn ctx<T>(r: io::Result<T>, action: &'static str, path: &Path) -> Result<T, LayoutError> {
    r.map_err(|source| LayoutError::Io {
        action,
        path: path.to_owned(),
        source,
    })
}

/// Writes `manifest` and the blobs it names (`blobs`) from `store` into the layout at `dir`,
/// and lists it in `index.json` under `ref_name`, replacing an entry of the same name; entries
/// of other names are kept.
pub fn export(
    store: &Store,
    dir: &Path,
    manifest: (&Digest, u64),
    blobs: &[&Digest],
    ref_name: &str,
) -> Result<(), LayoutError> {
    let blob_dir = dir.join("blobs").join("sha256");
    ctx(
        std::fs::create_dir_all(&blob_dir),
        "create layout directory",
        &blob_dir,
    )?;
    for digest in blobs.iter().copied().chain([manifest.0]) {
        let to = blob_dir.join(digest.hex());
        if to.exists() {
            continue;
        }
        let from = store.blob_path(digest);
        // Copied, not hard-linked: a tool editing the layout must not be able to change the
        // store. std's copy uses copy_file_range, a reflink where the file system has them.
        // Copy under a temp name, then rename: a reader never sees half a blob here either.
        let tmp = ctx(
            tempfile::NamedTempFile::new_in(&blob_dir),
            "create temp file in",
            &blob_dir,
        )?
        .into_temp_path();
        ctx(std::fs::copy(&from, &tmp).map(drop), "copy blob to", &tmp)?;
        ctx(tmp.persist(&to).map_err(|e| e.error), "write blob", &to)?;
    }
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;

    let index_path = dir.join("index.json");
    let mut index = match std::fs::read(&index_path) {
        Ok(bytes) => {
            serde_json::from_slice::<Value>(&bytes).map_err(|e| LayoutError::BadIndex {
                path: index_path.clone(),
                why: e.to_string(),
            })?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [],
        }),
        Err(e) => return ctx(Err(e), "read", &index_path),
    };
    let manifests = index
        .get_mut("manifests")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| LayoutError::BadIndex {
            path: index_path.clone(),
            why: "no \"manifests\" array".into(),
        })?;
    manifests.retain(|m| m["annotations"][REF_NAME] != ref_name);
    manifests.push(json!({
        "mediaType": OCI_MANIFEST,
        "digest": manifest.0.to_string(),
        "size": manifest.1,
        "annotations": { REF_NAME: ref_name },
    }));
    let bytes = serde_json::to_vec(&index).map_err(|e| LayoutError::BadIndex {
        path: index_path.clone(),
        why: e.to_string(),
    })?;
    write_atomic(&index_path, &bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let tmp = path.with_extension("tmp");
    ctx(std::fs::write(&tmp, bytes), "write", &tmp)?;
    ctx(std::fs::rename(&tmp, path), "write", path)
}
