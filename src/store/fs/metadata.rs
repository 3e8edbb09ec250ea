//! A directory store's metadata: every record is a small file, written durably.
//!
//! ```text
//! repositories/<name>/_tags/<tag>                   "sha256:<hex>\n"
//! repositories/<name>/_blobs/<d>, _manifests/<d>    empty: the link is the whole record
//! repositories/<name>/_referrers/<subject d>/<d>    empty
//! types/<d>, cache/layers/<hex>, pulls/<hex>        a media type, a layer-cache record, a pull
//! ```
//!
//! The collector reads and removes these on its own thread, under the exclusive gate
//! (`records`, `unlink_untouched`, `delete_tag_if`, `remove_referrer_now`); a link's mtime is
//! the mark it compares (`store/gate.rs`).

use std::fs as stdfs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::Dir;
use super::listing::{self, Folder, Kind};
use crate::digest::Digest;
use crate::reference::{Name, Tag};
use crate::store::gate::{self, touched};
use crate::store::metadata::Metadata;
use crate::store::repositories::Records;
use crate::store::{
    Dirty, Link, Result, StoreError, blocking, create_dirs_durably, create_durably, ctx, exists,
    file_name, in_parts, list_names, parse_file_name, remove_durably, sync_dir, threads,
};

impl Dir {
    pub(crate) fn link_path(&self, name: &Name, kind: Link, digest: &Digest) -> PathBuf {
        self.repository_dir(name)
            .join(kind.dir())
            .join(file_name(digest))
    }

    fn referrers_dir(&self, name: &Name, subject: &Digest) -> PathBuf {
        self.repository_dir(name)
            .join("_referrers")
            .join(file_name(subject))
    }

    fn pulls_dir(&self) -> PathBuf {
        self.root.join("pulls")
    }

    /// Writes `body` to `dest` atomically and durably (temp file, fsync, rename, fsync of
    /// the folder).
    fn write_durably(
        &self,
        prefix: &str,
        dest: &Path,
        body: &[u8],
        what: &'static str,
    ) -> Result<()> {
        let dir = dest.parent().unwrap_or(dest).to_owned();
        create_dirs_durably(&dir)?;
        let (mut file, temp) = self.create_temp(prefix)?;
        ctx(io::Write::write_all(&mut file, body), "write", &temp)?;
        ctx(file.sync_all(), "fsync", &temp)?;
        ctx(temp.persist(dest).map_err(|e| e.error), what, dest)?;
        sync_dir(&dir)
    }

    /// Every repository (a folder under `repositories/` whose `_tags`, `_blobs` or
    /// `_manifests` holds something), sorted by name, on the calling thread (and the
    /// threads a walk of a big folder starts: see `walk`).
    /// Folders whose path is not a valid name are skipped: the store never creates them.
    pub(crate) fn repositories_now(&self) -> Result<Vec<Name>> {
        let mut names = Vec::new();
        if let Some(root) = Folder::open(&self.repositories_dir())? {
            self.walk(root, "", None, usize::MAX, threads(), &mut names)?;
        }
        Ok(names)
    }

    /// A catalog page: the repositories after `after`, at most `limit`, from the log of
    /// repositories (`catalog.rs`; made by a walk the first time), each checked to hold
    /// something still. The checks of a big page are split between threads.
    fn catalog_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<Name>> {
        let Some(root) = Folder::open(&self.repositories_dir())? else {
            return Ok(Vec::new());
        };
        let mut cursor: Option<Box<str>> = after.map(Box::from);
        let mut out = Vec::new();
        while out.len() < limit {
            let need = limit - out.len();
            let walk = || self.repositories_now();
            let temp = || self.create_temp("repositories-sorted-");
            let Some(names) =
                self.catalog
                    .names_after(&self.root, cursor.as_deref(), need, walk, temp)?
            else {
                // No log can be made here (a read-only store): the folders are walked.
                if let Some(dir) = Folder::open(&self.repositories_dir())? {
                    self.walk(dir, "", cursor.as_deref(), limit, threads(), &mut out)?;
                }
                break;
            };
            let Some(last) = names.last().cloned() else {
                break;
            };
            let parts = threads().min(names.len() / SPLIT_MIN).max(1);
            let found = in_parts(
                names.chunks(names.len().div_ceil(parts)),
                "list",
                &root.path,
                |part| {
                    let mut live = Vec::new();
                    for key in part {
                        // A name from the file is checked like one from a client.
                        if let Ok(name) = key.parse::<Name>()
                            && is_repository_in(&root, key)?
                        {
                            live.push(name);
                        }
                    }
                    Ok(live)
                },
            );
            for part in found {
                out.extend(part?);
            }
            cursor = Some(last);
        }
        Ok(out)
    }

    /// Makes `dir`, a folder of `name`'s records whose presence can make it a repository,
    /// with the name in the log of repositories first (see `catalog.rs` for the order).
    fn make_record_dir(&self, name: &Name, dir: &Path) -> Result<()> {
        if exists(dir)? {
            return Ok(());
        }
        let noted = self.catalog.note(&self.root, name)?;
        create_dirs_durably(dir)?;
        if !noted {
            // A log made meanwhile, by a first catalog page whose walk may have missed `dir`.
            self.catalog.note(&self.root, name)?;
        }
        Ok(())
    }

    /// Appends to `out` the repositories below `dir` (whose full names start with `prefix`)
    /// that sort after `after`, in order, until it holds `limit`. Reads the folders on the
    /// way to `after` and those of the names it lists, not the rest (see `listing.rs`).
    ///
    /// Checking a repository costs a few syscalls and nothing else, so a window of a big
    /// folder's entries is split between threads (at most `split` of them; folders below
    /// are walked on one), each listing its part, and the parts are joined in order.
    fn walk(
        &self,
        mut dir: Folder,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        split: usize,
        out: &mut Vec<Name>,
    ) -> Result<()> {
        let items = self.listings.sorted_in(&mut dir, Kind::Namespace)?;
        let start = match after {
            Some(after) => items.partition_point(|key| before_all(prefix, key, after)),
            None => 0,
        };
        let mut rest = &items[start..];
        while out.len() < limit && !rest.is_empty() {
            let need = limit - out.len();
            // A repository is two entries (`NAME` and `NAME/`).
            let (window, next) = rest.split_at(need.saturating_mul(2).min(rest.len()));
            rest = next;
            let parts = split.min(window.len() / SPLIT_MIN).max(1);
            // Folders below a window walked in one part may be split in turn.
            let below = if parts == 1 { split } else { 1 };
            let found = in_parts(
                window.chunks(window.len().div_ceil(parts)),
                "list",
                &dir.path,
                |part| self.walk_items(&dir, part, prefix, after, need, below),
            );
            for part in found {
                out.extend(part?);
            }
            out.truncate(limit);
        }
        Ok(())
    }

    /// The repositories among some entries of `dir` (at most `limit`), on the calling
    /// thread; folders below may be split between `split` threads.
    fn walk_items(
        &self,
        dir: &Folder,
        items: &[String],
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        split: usize,
    ) -> Result<Vec<Name>> {
        let mut out = Vec::new();
        for key in items {
            if out.len() >= limit {
                break;
            }
            if let Some(namespace) = key.strip_suffix('/') {
                if let Some(below) = dir.child(namespace)? {
                    self.walk(
                        below,
                        &format!("{prefix}{key}"),
                        after,
                        limit,
                        split,
                        &mut out,
                    )?;
                }
            } else {
                let full = format!("{prefix}{key}");
                if after.is_some_and(|a| full.as_str() <= a) {
                    continue;
                }
                if let Ok(name) = full.parse::<Name>()
                    && is_repository_in(dir, key)?
                {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }

    /// Removes the link if it was last touched at or before `cutoff`; whether it did. For
    /// the collector, under the exclusive gate.
    pub(crate) fn unlink_untouched(
        &self,
        name: &Name,
        kind: Link,
        digest: &Digest,
        cutoff: SystemTime,
        dirty: &mut Dirty,
    ) -> Result<bool> {
        let path = self.link_path(name, kind, digest);
        match stdfs::metadata(&path) {
            Ok(m) if touched(&m).is_some_and(|t| t <= cutoff) => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return ctx(Err(e), "stat", &path),
        }
        dirty.remove(&path)
    }

    /// Removes `name:tag` if it still points at `digest` and was set at `set` (not since);
    /// whether it did. For retention, under the exclusive gate (tags are set under pins).
    pub(crate) fn delete_tag_if(
        &self,
        name: &Name,
        tag: &Tag,
        digest: &Digest,
        set: SystemTime,
        dirty: &mut Dirty,
    ) -> Result<bool> {
        let path = self.tag_path(name, tag);
        match tag_set(&path)? {
            Some((d, at)) if &d == digest && at == set => dirty.remove(&path),
            _ => Ok(false),
        }
    }

    /// Removes a referrer record on the calling thread; whether there was one.
    pub(crate) fn remove_referrer_now(
        &self,
        name: &Name,
        subject: &Digest,
        referrer: &Digest,
        dirty: &mut Dirty,
    ) -> Result<bool> {
        dirty.remove(&self.referrers_dir(name, subject).join(file_name(referrer)))
    }

    /// Everything repository `name` records, read at once on the calling thread, for the
    /// collector: tags with where they point and when they were set (a corrupt tag is
    /// skipped: it names nothing), links with when they were last touched, referrer records.
    pub(crate) fn records(&self, name: &Name, times: bool) -> Result<Records> {
        let repo = self.repository_dir(name);
        let mut records = Records::default();
        // One open of the repository, and what is in it opened relative to that.
        let Some(folder) = Folder::open(&repo)? else {
            return Ok(records);
        };
        let links = |kind: Link| -> Result<Vec<(Digest, Option<SystemTime>)>> {
            let mut out = Vec::new();
            for key in folder.names_in(kind.dir())? {
                let Some(d) = parse_file_name(&key) else {
                    continue;
                };
                if !times {
                    out.push((d, None));
                    continue;
                }
                if let Some(m) = link_stat(&repo.join(kind.dir()).join(&key))? {
                    out.push((d, touched(&m)));
                }
            }
            out.sort();
            Ok(out)
        };
        for key in folder.names_in("_tags")? {
            let Ok(tag) = key.parse::<Tag>() else {
                continue;
            };
            let file = folder.open_file(&format!("_tags/{key}"))?;
            if let Some((d, set)) = tag_read(file, &repo.join("_tags").join(&key))? {
                records.tags.push((tag, d, set));
            }
        }
        records.manifests = links(Link::Manifest)?;
        records.blobs = links(Link::Blob)?;
        records.referrers = self.referrer_records_now(name)?;
        Ok(records)
    }

    /// When a link was last touched (`None`: it is gone, or the file system keeps no time).
    pub(crate) fn link_touched(
        &self,
        name: &Name,
        kind: Link,
        digest: &Digest,
    ) -> Result<Option<SystemTime>> {
        let meta = link_stat(&self.link_path(name, kind, digest))?;
        Ok(meta.as_ref().and_then(touched))
    }

    fn referrer_records_now(&self, name: &Name) -> Result<Vec<(Digest, Digest)>> {
        let dir = self.repository_dir(name).join("_referrers");
        let mut out = Vec::new();
        for subject in list_names(&dir, parse_file_name)? {
            for referrer in list_names(&dir.join(file_name(&subject)), parse_file_name)? {
                out.push((subject.clone(), referrer));
            }
        }
        Ok(out)
    }

    /// The recorded media type of a manifest, on the calling thread.
    pub(crate) fn manifest_type_now(&self, digest: &Digest) -> Result<Option<String>> {
        let path = self.manifest_type_path(digest);
        match stdfs::read_to_string(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => ctx(Err(e), "read manifest type", &path),
        }
    }
}

#[async_trait::async_trait]
impl Metadata for Dir {
    async fn set_tag(&self, name: &Name, tag: &Tag, digest: &Digest) -> Result<()> {
        let (s, dest, name) = (self.clone(), self.tag_path(name, tag), name.clone());
        let body = format!("{digest}\n");
        blocking(move || {
            s.make_record_dir(&name, &s.tags_dir(&name))?;
            s.write_durably("tag-", &dest, body.as_bytes(), "write tag")
        })
        .await
    }

    async fn tag(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>> {
        let path = self.tag_path(name, tag);
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return ctx(Err(e), "read tag", &path),
        };
        text.trim_end()
            .parse()
            .map(Some)
            .map_err(|source| StoreError::CorruptTag { path, source })
    }

    async fn delete_tag(&self, name: &Name, tag: &Tag) -> Result<bool> {
        let (path, dir) = (self.tag_path(name, tag), self.tags_dir(name));
        blocking(move || remove_durably(&path, &dir)).await
    }

    async fn tags(&self, name: &Name) -> Result<Vec<Tag>> {
        let dir = self.tags_dir(name);
        blocking(move || list_names(&dir, |s| s.parse().ok())).await
    }

    async fn has_repository(&self, name: &Name) -> Result<bool> {
        let dir = self.repository_dir(name);
        blocking(move || is_repository(&dir)).await
    }

    async fn repositories(&self) -> Result<Vec<Name>> {
        let s = self.clone();
        blocking(move || s.repositories_now()).await
    }

    async fn tags_after(&self, name: &Name, after: Option<&str>, limit: usize) -> Result<Vec<Tag>> {
        let (s, dir, after) = (self.clone(), self.tags_dir(name), after.map(str::to_owned));
        blocking(move || {
            let sorted = s.listings.sorted(&dir, Kind::Names)?;
            Ok(sorted[listing::after(&sorted, after.as_deref())..]
                .iter()
                .filter_map(|t| t.parse().ok())
                .take(limit)
                .collect())
        })
        .await
    }

    async fn repositories_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<Name>> {
        let (s, after) = (self.clone(), after.map(str::to_owned));
        blocking(move || s.catalog_page(after.as_deref(), limit)).await
    }

    /// The blob and the link are touched: the sweep cannot remove either until a pass that
    /// sees the link (see `gate`).
    async fn link(&self, name: &Name, kind: Link, digest: &Digest) -> Result<()> {
        let path = self.link_path(name, kind, digest);
        let blob = self.blob_path(digest);
        let (s, name, d) = (self.clone(), name.clone(), digest.clone());
        blocking(move || {
            if !gate::touch(&blob)? {
                return Err(StoreError::BlobUnknown(d));
            }
            // A link made again is only touched (the common case: a layer pushed twice).
            if gate::touch(&path)? {
                return Ok(());
            }
            s.make_record_dir(&name, &s.repository_dir(&name).join(kind.dir()))?;
            create_durably(&path)
        })
        .await
    }

    async fn unlink(&self, name: &Name, kind: Link, digest: &Digest) -> Result<bool> {
        let path = self.link_path(name, kind, digest);
        blocking(move || {
            let dir = path.parent().unwrap_or(&path).to_owned();
            remove_durably(&path, &dir)
        })
        .await
    }

    async fn is_linked(&self, name: &Name, kind: Link, digest: &Digest) -> Result<bool> {
        let link = self.link_path(name, kind, digest);
        let blob = self.blob_path(digest);
        blocking(move || Ok(exists(&link)? && exists(&blob)?)).await
    }

    async fn links(&self, name: &Name, kind: Link) -> Result<Vec<Digest>> {
        let dir = self.repository_dir(name).join(kind.dir());
        blocking(move || list_names(&dir, parse_file_name)).await
    }

    async fn add_referrer(&self, name: &Name, subject: &Digest, referrer: &Digest) -> Result<()> {
        let path = self.referrers_dir(name, subject).join(file_name(referrer));
        blocking(move || create_durably(&path)).await
    }

    async fn remove_referrer(
        &self,
        name: &Name,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let dir = self.referrers_dir(name, subject);
        let path = dir.join(file_name(referrer));
        blocking(move || remove_durably(&path, &dir).map(drop)).await
    }

    async fn referrers(&self, name: &Name, subject: &Digest) -> Result<Vec<Digest>> {
        let dir = self.referrers_dir(name, subject);
        blocking(move || list_names(&dir, parse_file_name)).await
    }

    async fn referrer_records(&self, name: &Name) -> Result<Vec<(Digest, Digest)>> {
        let (s, name) = (self.clone(), name.clone());
        blocking(move || s.referrer_records_now(&name)).await
    }

    async fn set_manifest_type(&self, digest: &Digest, media_type: &str) -> Result<()> {
        let (s, dest) = (self.clone(), self.manifest_type_path(digest));
        let body = media_type.as_bytes().to_vec();
        blocking(move || s.write_durably("type-", &dest, &body, "write")).await
    }

    async fn manifest_type(&self, digest: &Digest) -> Result<Option<String>> {
        let (s, d) = (self.clone(), digest.clone());
        blocking(move || s.manifest_type_now(&d)).await
    }

    async fn layer_record(&self, key: &Digest) -> Result<Option<Vec<u8>>> {
        let path = self.layer_cache_dir().join(key.hex());
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => ctx(Err(e), "read layer-cache record", &path),
        }
    }

    /// Atomic (temp file, rename), not fsynced: a record lost in a crash costs one repack,
    /// and a torn one reads as none.
    async fn set_layer_record(&self, key: &Digest, record: &[u8]) -> Result<()> {
        let (s, dest) = (self.clone(), self.layer_cache_dir().join(key.hex()));
        let bytes = record.to_vec();
        blocking(move || s.write_record("cache-", &dest, &bytes, "write layer-cache record")).await
    }

    async fn layer_records(&self) -> Result<Vec<(Digest, Vec<u8>)>> {
        let dir = self.layer_cache_dir();
        blocking(move || {
            let entries = match stdfs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return ctx(Err(e), "list", &dir),
            };
            let mut records = Vec::new();
            for entry in entries {
                let path = ctx(entry, "list", &dir)?.path();
                // Keys are named as digests are; anything else is not a record.
                let Some(key) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_file_name)
                else {
                    continue;
                };
                match stdfs::read(&path) {
                    Ok(bytes) => records.push((key, bytes)),
                    // Replaced or removed meanwhile: its successor is read, or none is needed.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return ctx(Err(e), "read", &path),
                }
            }
            Ok(records)
        })
        .await
    }

    async fn remove_layer_record(&self, key: &Digest) -> Result<()> {
        let path = self.layer_cache_dir().join(key.hex());
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => ctx(Err(e), "remove", &path),
            _ => Ok(()),
        }
    }

    /// One small file per image, named by the sha256 of `NAME:TAG` and holding it.
    async fn record_pull(&self, image: &str) -> Result<()> {
        let dir = self.pulls_dir();
        let path = dir.join(Digest::sha256_of(image.as_bytes()).hex());
        if tokio::fs::metadata(&path).await.is_ok() {
            return Ok(());
        }
        let s = self.clone();
        let bytes = image.as_bytes().to_vec();
        blocking(move || {
            ctx(stdfs::create_dir_all(&dir), "create directory", &dir)?;
            s.write_record("pull-", &path, &bytes, "write pull record")
        })
        .await
    }

    async fn pulls(&self) -> Result<Vec<String>> {
        let dir = self.pulls_dir();
        blocking(move || {
            let entries = match stdfs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return ctx(Err(e), "list", &dir),
            };
            let mut out = Vec::new();
            for entry in entries {
                let path = ctx(entry, "list", &dir)?.path();
                match stdfs::read_to_string(&path) {
                    Ok(image) => out.push(image),
                    // A record is never removed while we run; a vanished one is not a pull.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return ctx(Err(e), "read", &path),
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }
}

/// Where the tag file at `path` points and when it was set; `None` if there is none (or it
/// is corrupt, and so names nothing).
/// A link's metadata; `None` if it is gone.
fn link_stat(path: &Path) -> Result<Option<stdfs::Metadata>> {
    match stdfs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => ctx(Err(e), "stat", path),
    }
}

fn tag_set(path: &Path) -> Result<Option<(Digest, SystemTime)>> {
    match stdfs::File::open(path) {
        Ok(f) => tag_read(Some(f), path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => ctx(Err(e), "read tag", path),
    }
}

/// [`tag_set`] of a tag file opened (`None`: missing), read in one `read` of the size its
/// `fstat` gave (std's `read_to_string` adds a seek and a second stat).
fn tag_read(file: Option<stdfs::File>, path: &Path) -> Result<Option<(Digest, SystemTime)>> {
    let Some(mut file) = file else {
        return Ok(None);
    };
    let meta = ctx(file.metadata(), "stat", path)?;
    let set = ctx(meta.modified(), "stat", path)?;
    // A tag file is one digest; a bigger one is no tag of ours.
    let mut text = vec![0; usize::try_from(meta.len()).unwrap_or(usize::MAX).min(256)];
    ctx(io::Read::read_exact(&mut file, &mut text), "read tag", path)?;
    let digest = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.trim_end().parse().ok());
    Ok(digest.map(|d| (d, set)))
}

/// Folders whose presence makes their parent a repository.
const REPOSITORY_MARKERS: [&str; 3] = ["_tags", "_blobs", "_manifests"];

/// Fewest entries of a folder's window worth a thread of their own in a catalog walk.
const SPLIT_MIN: usize = 128;

/// Whether every name an entry of a namespace listing stands for sorts at or before `after`:
/// `NAME` itself, or for `NAME/` every name below it. Monotone over the sorted listing (a
/// name below `x/` sorts before any sibling key greater than `x/`), so a binary search finds
/// where a page starts.
fn before_all(prefix: &str, key: &str, after: &str) -> bool {
    let full = format!("{prefix}{key}");
    if key.ends_with('/') {
        after >= full.as_str() && !after.starts_with(&full)
    } else {
        full.as_str() <= after
    }
}

/// Whether `dir` is a repository: one of its marker folders holds something. A repository
/// whose last tag and links were deleted is gone (from the catalog too), though its empty
/// folders stay: removing them could race a concurrent link into them.
fn is_repository(dir: &Path) -> Result<bool> {
    let Some(folder) = Folder::open(dir)? else {
        return Ok(false);
    };
    for marker in REPOSITORY_MARKERS {
        if folder.holds_any(marker)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// [`is_repository`] of the folder `name` in `dir`.
fn is_repository_in(dir: &Folder, name: &str) -> Result<bool> {
    for marker in REPOSITORY_MARKERS {
        if dir.holds_any(&format!("{name}/{marker}"))? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::super::catalog;
    use super::*;

    /// The reference: every folder with a marker that holds something, from a plain
    /// recursive walk, sorted.
    fn whole_tree(s: &Dir) -> Vec<String> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
            let holds =
                |m: &str| stdfs::read_dir(dir.join(m)).is_ok_and(|mut e| e.next().is_some());
            if !prefix.is_empty() && REPOSITORY_MARKERS.iter().any(|m| holds(m)) {
                out.push(prefix.to_owned());
            }
            for entry in stdfs::read_dir(dir).expect("list").flatten() {
                let name = entry.file_name().into_string().expect("utf-8");
                if !name.starts_with('_') && entry.file_type().expect("type").is_dir() {
                    let below = match prefix {
                        "" => name.clone(),
                        p => format!("{p}/{name}"),
                    };
                    walk(&entry.path(), &below, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&s.repositories_dir(), "", &mut out);
        out.sort();
        out
    }

    /// A hand-made repository (as a store made before the log has them): its record
    /// folders, and a tag in `_tags` if it `holds` something.
    fn hand_made(s: &Dir, name: &str, holds: bool) {
        let dir = s.repositories_dir().join(name);
        for marker in REPOSITORY_MARKERS {
            stdfs::create_dir_all(dir.join(marker)).expect("mkdir");
        }
        if holds {
            stdfs::write(dir.join("_tags/v1"), "sha256:00\n").expect("tag");
        }
    }

    /// Every page of `n` through the catalog (`repositories_after`), joined.
    async fn catalog(s: &Dir, n: usize) -> Vec<String> {
        let (mut seen, mut after) = (Vec::<String>::new(), None::<String>);
        loop {
            let page = s
                .repositories_after(after.as_deref(), n)
                .await
                .expect("page");
            assert!(page.len() <= n);
            let Some(last) = page.last() else { break };
            after = Some(last.as_str().to_owned());
            seen.extend(page.iter().map(|n| n.as_str().to_owned()));
        }
        seen
    }

    /// A store made before the log gets one from its first catalog page; after that, pages
    /// come from the log and follow what another process (another `Dir` on the same folder)
    /// adds and empties, and a line a crash tore does not hide the next one.
    #[tokio::test]
    async fn catalog_pages_come_from_the_log_and_follow_other_writers() {
        let root = tempfile::tempdir().expect("tempdir");
        let s = Dir::new(root.path().to_owned());
        stdfs::create_dir(s.tmp_dir()).expect("tmp");
        for i in 0..400 {
            hand_made(&s, &format!("ns/r{i:03}"), i % 7 != 0);
            if i % 50 == 0 {
                hand_made(&s, &format!("ns/r{i:03}/sub"), true);
            }
        }
        let (v1, d): (Tag, Digest) = ("v1".parse().expect("tag"), Digest::sha256_of(b"m"));
        let name = |n: &str| n.parse::<Name>().expect("name");
        // Written through the store before there is a log: no log is made by a writer.
        s.set_tag(&name("a/early"), &v1, &d).await.expect("tag");
        assert!(!root.path().join(catalog::LOG).exists());

        let whole = whole_tree(&s);
        assert!(whole.len() > 350 && whole.contains(&"a/early".to_owned()));
        assert_eq!(catalog(&s, 100).await, whole, "pages of the first walk");
        assert!(root.path().join(catalog::READY).exists());
        // The walk's names went straight into a sorted file, so later pages search it.
        let sorted = stdfs::read_to_string(root.path().join(catalog::SORTED)).expect("sorted");
        assert_eq!(sorted.lines().skip(1).collect::<Vec<_>>(), whole);

        // Another process adds repositories (one inside a repository), empties one, and
        // one of its appends was torn by a crash.
        let other = Dir::new(root.path().to_owned());
        for n in ["b", "ns/r003/deeper", "ns/r049-x", "zz"] {
            other.set_tag(&name(n), &v1, &d).await.expect("tag");
        }
        assert!(
            other
                .delete_tag(&name("ns/r001"), &v1)
                .await
                .expect("delete")
        );
        let mut log = stdfs::OpenOptions::new()
            .append(true)
            .open(root.path().join(catalog::LOG))
            .expect("log");
        io::Write::write_all(&mut log, b"\nns/r0").expect("torn");
        other
            .set_tag(&name("zz/after-torn"), &v1, &d)
            .await
            .expect("tag");

        let whole = whole_tree(&s);
        assert!(whole.contains(&"zz/after-torn".to_owned()));
        assert!(!whole.contains(&"ns/r001".to_owned()));
        for n in [1, 7, 300, 1000] {
            assert_eq!(catalog(&s, n).await, whole, "pages of {n} after changes");
        }
        let text = stdfs::read_to_string(root.path().join(catalog::LOG)).expect("log");
        assert_eq!(
            text.matches("\nzz/after-torn\n").count(),
            1,
            "noted once: {text}"
        );
    }

    /// Where no log can be made (a read-only store; here a folder in its place), pages are
    /// walked and still list every repository.
    #[tokio::test]
    async fn a_store_where_no_log_can_be_made_walks_its_pages() {
        let root = tempfile::tempdir().expect("tempdir");
        let s = Dir::new(root.path().to_owned());
        for i in 0..300 {
            hand_made(&s, &format!("ns/r{i:03}"), i % 5 != 0);
        }
        stdfs::create_dir(root.path().join(catalog::LOG)).expect("in the log's place");
        let whole = whole_tree(&s);
        assert_eq!(whole.len(), 240);
        for n in [1, 7, 100, 1000] {
            assert_eq!(catalog(&s, n).await, whole, "pages of {n}");
        }
        assert!(!root.path().join(catalog::READY).exists());
    }

    /// Pages of every size, walked with threads, and the unbounded walk (`repositories_now`,
    /// the collector's) list what a plain walk of the whole tree lists: once each, in byte
    /// order, folders that hold nothing left out.
    #[test]
    fn split_catalog_pages_list_what_a_whole_walk_lists() {
        let root = tempfile::tempdir().expect("tempdir");
        let s = Dir::new(root.path().to_owned());
        let repo = |name: &str, holds: bool| hand_made(&s, name, holds);
        for i in 0..600 {
            // Every 7th folder holds nothing (a repository whose tags were all deleted);
            // every 50th has a repository below it, which sorts among its siblings.
            repo(&format!("ns/r{i:03}"), i % 7 != 0);
            if i % 50 == 0 {
                repo(&format!("ns/r{i:03}/sub"), true);
                repo(&format!("ns/r{i:03}-x"), true);
            }
        }
        repo("a", true);
        repo("ns", true);
        repo("z/y", true);
        let whole = whole_tree(&s);
        let now: Vec<String> = s
            .repositories_now()
            .expect("walk")
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        assert_eq!(now, whole, "the whole walk");
        assert!(whole.len() > 500, "{}", whole.len());
        for n in [1, 7, 128, 300, 1000] {
            let (mut seen, mut after) = (Vec::<String>::new(), None::<String>);
            loop {
                let mut page = Vec::new();
                let folder = Folder::open(&s.repositories_dir())
                    .expect("open")
                    .expect("a folder");
                s.walk(folder, "", after.as_deref(), n, 4, &mut page)
                    .expect("page");
                assert!(page.len() <= n);
                let Some(last) = page.last() else { break };
                after = Some(last.as_str().to_owned());
                seen.extend(page.iter().map(|n| n.as_str().to_owned()));
            }
            assert_eq!(seen, whole, "pages of {n}");
        }
    }
}
