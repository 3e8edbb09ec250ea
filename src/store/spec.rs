//! What a store is made of, as the command line or config file says it: a `StoreSpec` is
//! parsed once, says what its engines can do (so settings that need a capability are
//! refused before anything starts), and opens the store.
//!
//! | `--store` | engines |
//! |---|---|
//! | a folder (the default) | blobs, metadata and sessions in files and this process |
//! | `s3://BUCKET/PREFIX` | blobs in S3-compatible object storage; metadata and sessions in PostgreSQL (`--metadata`) |
//! | `az://CONTAINER/PREFIX` | blobs in Azure Blob Storage; metadata and sessions in PostgreSQL |

use std::path::{Path, PathBuf};

use super::object::Location;
use super::{Store, StoreError};

/// A store's engines and where they are.
#[derive(Debug, Clone)]
pub enum StoreSpec {
    /// A folder on this machine.
    Directory(PathBuf),
    /// Blobs in object storage, metadata in the PostgreSQL database at the URL.
    Shared { objects: Location, metadata: String },
}

impl StoreSpec {
    /// The spec `store` (a folder or an object-storage URL), `metadata` (a database URL) and
    /// `endpoints` (object-storage nodes) say; an error names what is missing or malformed.
    pub fn parse(
        store: &Path,
        metadata: Option<String>,
        endpoints: Vec<String>,
    ) -> Result<StoreSpec, String> {
        let Some(parsed) = store.to_str().and_then(Location::parse) else {
            if metadata.is_some() {
                return Err("--metadata goes with an s3:// or az:// --store (a directory store keeps its metadata in files)".into());
            }
            return Ok(StoreSpec::Directory(store.to_owned()));
        };
        let mut objects = parsed.map_err(|e| format!("invalid --store: {e}"))?;
        objects.endpoints = endpoints;
        let Some(metadata) = metadata else {
            return Err(format!(
                "--store {} needs --metadata postgres://… (tags and links live in PostgreSQL)",
                store.display()
            ));
        };
        Ok(StoreSpec::Shared { objects, metadata })
    }

    /// Opens the store, creating a directory store if need be; `existing` refuses a folder
    /// that is not one instead (a typo must not become a new empty store).
    pub async fn open(&self, existing: bool) -> Result<Store, StoreError> {
        match self {
            StoreSpec::Directory(dir) if existing => Store::open_existing(dir).await,
            StoreSpec::Directory(dir) => Store::open(dir).await,
            StoreSpec::Shared { objects, metadata } => Store::open_shared(objects, metadata).await,
        }
    }

    /// The folder of a directory store: where `config check` looks, and what reports name.
    pub fn directory(&self) -> Option<&Path> {
        match self {
            StoreSpec::Directory(dir) => Some(dir),
            StoreSpec::Shared { .. } => None,
        }
    }

    /// How the store is named in reports and logs.
    pub fn describe(&self) -> String {
        match self {
            StoreSpec::Directory(dir) => dir.display().to_string(),
            StoreSpec::Shared { objects, .. } => objects.to_string(),
        }
    }

    /// Whether its blobs can be handed to clients as short-lived URLs (`--redirect`).
    pub fn presigns(&self) -> bool {
        matches!(self, StoreSpec::Shared { .. })
    }

    /// Whether its collector applies retention rules (`--keep-tags`, `--keep-untagged`):
    /// the shared store's collector does not yet.
    pub fn retention(&self) -> bool {
        matches!(self, StoreSpec::Directory(_))
    }

    /// Whether its blobs are files here (what `--oci-layout` copies).
    pub fn blob_files(&self) -> bool {
        matches!(self, StoreSpec::Directory(_))
    }
}
