//! Repositories: tags, links (which blobs and manifests a repository holds), referrer
//! records, and which repositories exist. Every record is a small file, written durably.

use std::fs as stdfs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::gate::touched;
use super::{
    Dirty, Pin, Result, Store, StoreError, blocking, create_dirs_durably, create_durably, ctx,
    exists, file_name, list_names, parse_file_name, remove_durably, sync_dir,
};
use crate::digest::Digest;
use crate::reference::{Name, Tag};

impl Store {
    /// Points `name:tag` at `digest`, atomically and durably.
    /// Under a pin, so that retention's check of a tag's age and its removal of the tag
    /// cannot straddle a push that moves it.
    pub async fn set_tag(&self, pin: &Pin, name: &Name, tag: &Tag, digest: &Digest) -> Result<()> {
        let _ = pin;
        if let Some(shared) = self.shared() {
            return shared.meta.set_tag(name, tag, digest).await;
        }
        let s = self.clone();
        let dir = self.tags_dir(name);
        let dest = self.tag_path(name, tag);
        let body = format!("{digest}\n");
        blocking(move || {
            create_dirs_durably(&dir)?;
            let (mut file, temp) = s.create_temp("tag-")?;
            ctx(
                io::Write::write_all(&mut file, body.as_bytes()),
                "write",
                &temp,
            )?;
            ctx(file.sync_all(), "fsync", &temp)?;
            ctx(temp.persist(&dest).map_err(|e| e.error), "write tag", &dest)?;
            sync_dir(&dir)
        })
        .await
    }

    /// The manifest digest `name:tag` points at, if the tag exists.
    pub async fn tag(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>> {
        if let Some(shared) = self.shared() {
            return shared.meta.tag(name, tag).await;
        }
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

    /// Whether `name` is a repository: something was tagged, pushed or linked into it.
    pub async fn has_repository(&self, name: &Name) -> Result<bool> {
        if let Some(shared) = self.shared() {
            return shared.meta.has_repository(name).await;
        }
        let dir = self.repository_dir(name);
        blocking(move || is_repository(&dir)).await
    }

    /// Every repository (a folder under `repositories/` whose `_tags`, `_blobs` or
    /// `_manifests` holds something), sorted by name.
    /// Folders whose path is not a valid name are skipped: the store never creates them.
    pub async fn repositories(&self) -> Result<Vec<Name>> {
        if let Some(shared) = self.shared() {
            return shared.meta.repositories().await;
        }
        let s = self.clone();
        blocking(move || s.repositories_now()).await
    }

    /// `repositories`, on the calling thread (for the collector's blocking pass).
    pub(crate) fn repositories_now(&self) -> Result<Vec<Name>> {
        let root = self.repositories_dir();
        let mut names = Vec::new();
        let mut pending = vec![(root.clone(), String::new())];
        while let Some((dir, prefix)) = pending.pop() {
            for entry in ctx(stdfs::read_dir(&dir), "list", &dir)? {
                let entry = ctx(entry, "list", &dir)?;
                // file_type does not follow symlinks: a link cannot lead the walk elsewhere.
                if !ctx(entry.file_type(), "stat", &entry.path())?.is_dir() {
                    continue;
                }
                let Some(component) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if REPOSITORY_MARKERS.contains(&component.as_str()) {
                    // A folder with several markers is listed once (dedup below).
                    if let Ok(name) = prefix.parse::<Name>()
                        && !is_empty_dir(&entry.path())?
                    {
                        names.push(name);
                    }
                } else if !component.starts_with('_') {
                    let path = if prefix.is_empty() {
                        component
                    } else {
                        format!("{prefix}/{component}")
                    };
                    pending.push((entry.path(), path));
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Removes `name:tag`; `false` if there was no such tag.
    pub async fn delete_tag(&self, name: &Name, tag: &Tag) -> Result<bool> {
        if let Some(shared) = self.shared() {
            return shared.meta.delete_tag(name, tag).await;
        }
        let path = self.tag_path(name, tag);
        let dir = self.tags_dir(name);
        blocking(move || remove_durably(&path, &dir)).await
    }

    fn link_path(&self, name: &Name, kind: Link, digest: &Digest) -> PathBuf {
        self.repository_dir(name)
            .join(kind.dir())
            .join(file_name(digest))
    }

    fn referrers_dir(&self, name: &Name, subject: &Digest) -> PathBuf {
        self.repository_dir(name)
            .join("_referrers")
            .join(file_name(subject))
    }

    /// Makes `digest` part of repository `name`, durably; `BlobUnknown` if the store does not
    /// have its bytes, so a link never names missing bytes. The blob and the link are
    /// touched, under the caller's pin: the sweep cannot remove either until a pass that
    /// sees the link (see `gate`).
    pub async fn link(&self, pin: &Pin, name: &Name, kind: Link, digest: &Digest) -> Result<()> {
        let _ = pin;
        if let Some(shared) = self.shared() {
            return shared.meta.link(name, kind, digest).await;
        }
        let path = self.link_path(name, kind, digest);
        let blob = self.blob_path(digest);
        let d = digest.clone();
        blocking(move || {
            if !super::gate::touch(&blob)? {
                return Err(StoreError::BlobUnknown(d));
            }
            create_durably(&path)
        })
        .await
    }

    /// Removes `digest` from repository `name`; `false` if it was not there. The bytes stay in
    /// `blobs/`: another repository may link them too.
    pub async fn unlink(&self, name: &Name, kind: Link, digest: &Digest) -> Result<bool> {
        if let Some(shared) = self.shared() {
            return shared.meta.unlink(name, kind, digest).await;
        }
        let path = self.link_path(name, kind, digest);
        blocking(move || {
            let dir = path.parent().unwrap_or(&path).to_owned();
            remove_durably(&path, &dir)
        })
        .await
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

    /// `remove_referrer`, on the calling thread; whether there was one.
    pub(crate) fn remove_referrer_now(
        &self,
        name: &Name,
        subject: &Digest,
        referrer: &Digest,
        dirty: &mut Dirty,
    ) -> Result<bool> {
        dirty.remove(&self.referrers_dir(name, subject).join(file_name(referrer)))
    }

    /// Whether repository `name` holds `digest` (and the store has its bytes).
    pub async fn is_linked(&self, name: &Name, kind: Link, digest: &Digest) -> Result<bool> {
        if let Some(shared) = self.shared() {
            return shared.meta.is_linked(name, kind, digest).await;
        }
        let link = self.link_path(name, kind, digest);
        let blob = self.blob_path(digest);
        blocking(move || Ok(exists(&link)? && exists(&blob)?)).await
    }

    /// Records that manifest `referrer` in `name` has `subject` (the referrers API's index).
    pub async fn add_referrer(
        &self,
        _pin: &Pin,
        name: &Name,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let path = self.referrers_dir(name, subject).join(file_name(referrer));
        if let Some(shared) = self.shared() {
            return shared.meta.add_referrer(name, subject, referrer).await;
        }
        blocking(move || create_durably(&path)).await
    }

    pub async fn remove_referrer(
        &self,
        name: &Name,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let dir = self.referrers_dir(name, subject);
        if let Some(shared) = self.shared() {
            return shared.meta.remove_referrer(name, subject, referrer).await;
        }
        let path = dir.join(file_name(referrer));
        blocking(move || remove_durably(&path, &dir).map(drop)).await
    }

    /// The manifests of `name` recorded as having `subject`, sorted.
    pub async fn referrers(&self, name: &Name, subject: &Digest) -> Result<Vec<Digest>> {
        if let Some(shared) = self.shared() {
            return shared.meta.referrers(name, subject).await;
        }
        let dir = self.referrers_dir(name, subject);
        blocking(move || list_names(&dir, parse_file_name)).await
    }

    /// The digests repository `name` links as `kind`, sorted (bytes present or not).
    pub async fn links(&self, name: &Name, kind: Link) -> Result<Vec<Digest>> {
        if let Some(shared) = self.shared() {
            return shared.meta.links(name, kind).await;
        }
        let dir = self.repository_dir(name).join(kind.dir());
        blocking(move || list_names(&dir, parse_file_name)).await
    }

    /// Every referrer record of repository `name`: (subject, referrer), sorted.
    pub async fn referrer_records(&self, name: &Name) -> Result<Vec<(Digest, Digest)>> {
        if let Some(shared) = self.shared() {
            return shared.meta.referrer_records(name).await;
        }
        let dir = self.repository_dir(name).join("_referrers");
        blocking(move || {
            let mut out = Vec::new();
            for subject in list_names(&dir, parse_file_name)? {
                for referrer in list_names(&dir.join(file_name(&subject)), parse_file_name)? {
                    out.push((subject.clone(), referrer));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Everything repository `name` records, read at once on the calling thread, for the
    /// collector: tags with where they point and when they were set (a corrupt tag is
    /// skipped: it names nothing), links with when they were last touched, referrer records.
    pub(crate) fn records(&self, name: &Name) -> Result<Records> {
        let repo = self.repository_dir(name);
        let touched_links = |kind: Link| -> Result<Vec<(Digest, Option<SystemTime>)>> {
            let dir = repo.join(kind.dir());
            let mut out = Vec::new();
            for d in list_names(&dir, parse_file_name)? {
                let path = dir.join(file_name(&d));
                match stdfs::metadata(&path) {
                    Ok(m) => out.push((d, touched(&m))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return ctx(Err(e), "stat", &path),
                }
            }
            Ok(out)
        };
        let mut tags = Vec::new();
        let dir = self.tags_dir(name);
        for tag in list_names(&dir, |s| s.parse::<Tag>().ok())? {
            if let Some((d, set)) = tag_set(&dir.join(tag.as_str()))? {
                tags.push((tag, d, set));
            }
        }
        let referrers_dir = repo.join("_referrers");
        let mut referrers = Vec::new();
        for subject in list_names(&referrers_dir, parse_file_name)? {
            for r in list_names(&referrers_dir.join(file_name(&subject)), parse_file_name)? {
                referrers.push((subject.clone(), r));
            }
        }
        Ok(Records {
            tags,
            manifests: touched_links(Link::Manifest)?,
            blobs: touched_links(Link::Blob)?,
            referrers,
        })
    }

    /// The tags of a repository, sorted; empty if the repository has none.
    pub async fn tags(&self, name: &Name) -> Result<Vec<Tag>> {
        if let Some(shared) = self.shared() {
            return shared.meta.tags(name).await;
        }
        let dir = self.tags_dir(name);
        blocking(move || list_names(&dir, |s| s.parse().ok())).await
    }
}

/// A repository's records, as the collector reads them (see `Store::records`).
pub(crate) struct Records {
    pub tags: Vec<(Tag, Digest, SystemTime)>,
    /// Linked manifests and blobs, each with when its link was last touched.
    pub manifests: Vec<(Digest, Option<SystemTime>)>,
    pub blobs: Vec<(Digest, Option<SystemTime>)>,
    /// (subject, referrer).
    pub referrers: Vec<(Digest, Digest)>,
}

/// What a repository link says a digest is there as. Manifests are kept apart from other
/// blobs so that a layer cannot be fetched as a manifest, nor a manifest deleted as a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    /// A layer or config, served from `/blobs/`.
    Blob,
    /// A manifest or index, served from `/manifests/`.
    Manifest,
}

impl Link {
    pub(crate) fn dir(self) -> &'static str {
        match self {
            Link::Blob => "_blobs",
            Link::Manifest => "_manifests",
        }
    }
}

/// Where the tag file at `path` points and when it was set; `None` if there is none (or it
/// is corrupt, and so names nothing).
fn tag_set(path: &Path) -> Result<Option<(Digest, SystemTime)>> {
    let mut file = match stdfs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return ctx(Err(e), "read tag", path),
    };
    let set = ctx(file.metadata().and_then(|m| m.modified()), "stat", path)?;
    let mut text = String::new();
    ctx(
        io::Read::read_to_string(&mut file, &mut text),
        "read tag",
        path,
    )?;
    Ok(text.trim_end().parse().ok().map(|d| (d, set)))
}

/// Folders whose presence makes their parent a repository.
const REPOSITORY_MARKERS: [&str; 3] = ["_tags", "_blobs", "_manifests"];

/// Whether `dir` is a repository: one of its marker folders holds something. A repository
/// whose last tag and links were deleted is gone (from the catalog too), though its empty
/// folders stay: removing them could race a concurrent link into them.
fn is_repository(dir: &Path) -> Result<bool> {
    for marker in REPOSITORY_MARKERS {
        if !is_empty_dir(&dir.join(marker))? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `dir` has no entries; a missing `dir` counts as empty.
fn is_empty_dir(dir: &Path) -> Result<bool> {
    match stdfs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(true),
        Err(e) => ctx(Err(e), "list", dir),
    }
}

#[cfg(test)]
impl Store {
    /// A link made as an older store or a crash could leave it: to nothing, if so.
    pub(crate) fn link_raw(&self, name: &Name, kind: Link, digest: &Digest) {
        create_durably(&self.link_path(name, kind, digest)).expect("link");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::*;

    #[tokio::test]
    async fn tags_survive_reopen_and_overwrite_atomically() {
        let (_d, store) = fresh().await;
        let pin = store.pin().await.expect("pin");
        let name: Name = "a/b".parse().expect("name");
        let (v1, v2): (Tag, Tag) = ("v1".parse().expect("tag"), "v2".parse().expect("tag"));
        let d1 = Digest::sha256_of(b"1");
        let d2 = Digest::sha256_of(b"2");
        store.set_tag(&pin, &name, &v1, &d1).await.expect("tag");
        store.set_tag(&pin, &name, &v2, &d1).await.expect("tag");
        store.set_tag(&pin, &name, &v2, &d2).await.expect("retag");

        let reopened = Store::open(store.root()).await.expect("reopen");
        assert_eq!(reopened.tag(&name, &v1).await.expect("get"), Some(d1));
        assert_eq!(reopened.tag(&name, &v2).await.expect("get"), Some(d2));
        assert_eq!(reopened.tags(&name).await.expect("list"), vec![v1, v2]);
        let other: Name = "a".parse().expect("name");
        assert_eq!(reopened.tags(&other).await.expect("list"), vec![]);
        assert!(files_in(&store.tmp_dir()).is_empty());
    }

    #[tokio::test]
    async fn repositories_are_listed_sorted_including_nested_names() {
        let (_d, store) = fresh().await;
        let pin = store.pin().await.expect("pin");
        assert!(store.repositories().await.expect("list").is_empty());
        let latest: Tag = "latest".parse().expect("tag");
        for n in ["b", "a/b/c", "a", "a-b"] {
            let name: Name = n.parse().expect("name");
            store
                .set_tag(&pin, &name, &latest, &Digest::sha256_of(b"m"))
                .await
                .expect("tag");
        }
        // A folder that is not a repository (no _tags) and a stray symlink are not listed.
        stdfs::create_dir_all(store.repositories_dir().join("x/y")).expect("mkdir");
        std::os::unix::fs::symlink("/", store.repositories_dir().join("z")).expect("link");
        let names: Vec<String> = store
            .repositories()
            .await
            .expect("list")
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["a", "a-b", "a/b/c", "b"]);
        assert!(
            store
                .has_repository(&"a/b/c".parse().expect("n"))
                .await
                .expect("has")
        );
        assert!(
            !store
                .has_repository(&"a/b".parse().expect("n"))
                .await
                .expect("has")
        );
        assert!(
            !store
                .has_repository(&"x/y".parse().expect("n"))
                .await
                .expect("has")
        );
    }

    #[tokio::test]
    async fn links_scope_blobs_to_repositories_and_survive_reopen() {
        let (_d, store) = fresh().await;
        let pin = store.pin().await.expect("pin");
        let (a, b): (Name, Name) = ("a/x".parse().expect("name"), "b".parse().expect("name"));
        let blob = store.put(b"bytes").await.expect("put");
        assert!(!store.has_repository(&a).await.expect("has"));
        store.link(&pin, &a, Link::Blob, &blob).await.expect("link");
        store
            .link(&pin, &a, Link::Blob, &blob)
            .await
            .expect("link twice");
        assert!(store.has_repository(&a).await.expect("has"));
        assert!(
            store
                .is_linked(&a, Link::Blob, &blob)
                .await
                .expect("linked")
        );
        assert!(
            !store
                .is_linked(&a, Link::Manifest, &blob)
                .await
                .expect("kind")
        );
        assert!(
            !store
                .is_linked(&b, Link::Blob, &blob)
                .await
                .expect("other repo")
        );
        // A link to bytes the store lacks does not count.
        let gone = Digest::sha256_of(b"gone");
        store.link_raw(&a, Link::Blob, &gone);
        assert!(
            !store
                .is_linked(&a, Link::Blob, &gone)
                .await
                .expect("no bytes")
        );

        let referrer = Digest::sha256_of(b"referrer");
        store
            .add_referrer(&pin, &a, &blob, &referrer)
            .await
            .expect("referrer");
        let reopened = Store::open(store.root()).await.expect("reopen");
        assert!(
            reopened
                .is_linked(&a, Link::Blob, &blob)
                .await
                .expect("linked")
        );
        assert_eq!(
            reopened.referrers(&a, &blob).await.expect("list"),
            vec![referrer.clone()]
        );
        assert_eq!(
            reopened.repositories().await.expect("repos"),
            vec![a.clone()]
        );

        assert!(
            reopened
                .unlink(&a, Link::Blob, &blob)
                .await
                .expect("unlink")
        );
        assert!(!reopened.unlink(&a, Link::Blob, &blob).await.expect("again"));
        assert!(
            !reopened
                .is_linked(&a, Link::Blob, &blob)
                .await
                .expect("unlinked")
        );
        reopened.verify(&blob).await.expect("bytes stay");
        reopened
            .remove_referrer(&a, &blob, &referrer)
            .await
            .expect("remove");
        assert!(
            reopened
                .referrers(&a, &blob)
                .await
                .expect("list")
                .is_empty()
        );

        let v1: Tag = "v1".parse().expect("tag");
        reopened.set_tag(&pin, &b, &v1, &blob).await.expect("tag");
        assert!(reopened.delete_tag(&b, &v1).await.expect("delete"));
        assert!(!reopened.delete_tag(&b, &v1).await.expect("again"));
        assert_eq!(reopened.tag(&b, &v1).await.expect("get"), None);
    }
}
