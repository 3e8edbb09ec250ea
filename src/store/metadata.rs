//! What an engine keeps about blobs besides their bytes: tags, repository links, referrer
//! records, which repositories exist, and the small records the packer and the prepack keep
//! (manifest media types, layer-cache records, pull records). One implementation per engine:
//! files in a directory store (`fs/metadata.rs`), rows in PostgreSQL (`postgres/`).
//!
//! The ordering that keeps tags and links consistent (a blob committed before it is linked, a
//! manifest's blobs linked before it, a tag after its manifest) is the `Store`'s, above this
//! trait: an implementation makes each call atomic and durable when it returns, no more.

use crate::digest::Digest;
use crate::reference::{Name, Tag};

use super::{Link, Result};

#[async_trait::async_trait]
pub(crate) trait Metadata: std::fmt::Debug + Send + Sync {
    /// Points `name:tag` at `digest`, replacing what it pointed at.
    async fn set_tag(&self, name: &Name, tag: &Tag, digest: &Digest) -> Result<()>;
    /// The manifest `name:tag` points at. A record that does not parse is `Corrupt`.
    async fn tag(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>>;
    /// Removes `name:tag`; whether there was one.
    async fn delete_tag(&self, name: &Name, tag: &Tag) -> Result<bool>;
    /// The tags of `name`, sorted.
    async fn tags(&self, name: &Name) -> Result<Vec<Tag>>;
    /// Whether `name` holds a tag or a link.
    async fn has_repository(&self, name: &Name) -> Result<bool>;
    /// Every repository that holds a tag or a link, sorted by name.
    async fn repositories(&self) -> Result<Vec<Name>>;
    /// The first `limit` tags of `name` that sort after `after`: a page of the tag list, at a
    /// cost that does not grow with the tags before it.
    async fn tags_after(&self, name: &Name, after: Option<&str>, limit: usize) -> Result<Vec<Tag>>;
    /// The first `limit` repositories that sort after `after`: a page of the catalog, at a
    /// cost that does not grow with the store.
    async fn repositories_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<Name>>;
    /// Makes `digest` part of `name`; `BlobUnknown` if the store has no such blob.
    async fn link(&self, name: &Name, kind: Link, digest: &Digest) -> Result<()>;
    /// Removes a link; whether there was one.
    async fn unlink(&self, name: &Name, kind: Link, digest: &Digest) -> Result<bool>;
    /// Whether `name` links `digest` and the store has its bytes.
    async fn is_linked(&self, name: &Name, kind: Link, digest: &Digest) -> Result<bool>;
    /// What `name` links as `kind`, sorted (bytes present or not).
    async fn links(&self, name: &Name, kind: Link) -> Result<Vec<Digest>>;
    /// Records that manifest `referrer` of `name` has `subject`.
    async fn add_referrer(&self, name: &Name, subject: &Digest, referrer: &Digest) -> Result<()>;
    async fn remove_referrer(&self, name: &Name, subject: &Digest, referrer: &Digest)
    -> Result<()>;
    /// The referrers of `subject` in `name`, sorted.
    async fn referrers(&self, name: &Name, subject: &Digest) -> Result<Vec<Digest>>;
    /// Every (subject, referrer) record of `name`, sorted.
    async fn referrer_records(&self, name: &Name) -> Result<Vec<(Digest, Digest)>>;
    /// The media type a manifest without a `mediaType` was pushed as; durable on return.
    async fn set_manifest_type(&self, digest: &Digest, media_type: &str) -> Result<()>;
    async fn manifest_type(&self, digest: &Digest) -> Result<Option<String>>;
    /// A layer-cache record (`pack::cache`); its loss costs a repack, so not fsynced.
    async fn layer_record(&self, key: &Digest) -> Result<Option<Vec<u8>>>;
    async fn set_layer_record(&self, key: &Digest, record: &[u8]) -> Result<()>;
    /// Every layer-cache record, by key (for pruning).
    async fn layer_records(&self) -> Result<Vec<(Digest, Vec<u8>)>>;
    /// Removes a layer-cache record; not durable (one that comes back is pruned again).
    async fn remove_layer_record(&self, key: &Digest) -> Result<()>;
    /// Records that on-demand image `image` (`NAME:TAG`) was pulled (once).
    async fn record_pull(&self, image: &str) -> Result<()>;
    /// Every image recorded as pulled, sorted.
    async fn pulls(&self) -> Result<Vec<String>>;
}
