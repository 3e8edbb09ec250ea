//! Repositories: tags, links (which blobs and manifests a repository holds), referrer
//! records, and which repositories exist, as the registry and the packer ask for them; each
//! engine keeps them its own way (`metadata::Metadata`). Pull records too.

use std::time::SystemTime;

use super::{Pin, Result, Store};
use crate::digest::Digest;
use crate::reference::{Name, Tag};

impl Store {
    /// Points `name:tag` at `digest`, atomically and durably.
    /// Under a pin, so that retention's check of a tag's age and its removal of the tag
    /// cannot straddle a push that moves it.
    pub async fn set_tag(&self, pin: &Pin, name: &Name, tag: &Tag, digest: &Digest) -> Result<()> {
        let _ = pin;
        self.meta.set_tag(name, tag, digest).await
    }

    /// The manifest digest `name:tag` points at, if the tag exists.
    pub async fn tag(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>> {
        self.meta.tag(name, tag).await
    }

    /// Whether `name` is a repository: something was tagged, pushed or linked into it.
    pub async fn has_repository(&self, name: &Name) -> Result<bool> {
        self.meta.has_repository(name).await
    }

    /// Every repository that holds a tag or a link, sorted by name.
    pub async fn repositories(&self) -> Result<Vec<Name>> {
        self.meta.repositories().await
    }

    /// Up to `limit` repositories sorting after `after` (a catalog page).
    pub async fn repositories_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<Name>> {
        self.meta.repositories_after(after, limit).await
    }

    /// Removes `name:tag`; `false` if there was no such tag.
    pub async fn delete_tag(&self, name: &Name, tag: &Tag) -> Result<bool> {
        self.meta.delete_tag(name, tag).await
    }

    /// Makes `digest` part of repository `name`, durably; `BlobUnknown` if the store does not
    /// have its bytes, so a link never names missing bytes. Under the caller's pin: the
    /// sweep cannot remove the blob or the link until a pass that sees the link (see `gate`).
    pub async fn link(&self, pin: &Pin, name: &Name, kind: Link, digest: &Digest) -> Result<()> {
        let _ = pin;
        self.meta.link(name, kind, digest).await
    }

    /// Removes `digest` from repository `name`; `false` if it was not there. The bytes stay:
    /// another repository may link them too.
    pub async fn unlink(&self, name: &Name, kind: Link, digest: &Digest) -> Result<bool> {
        self.meta.unlink(name, kind, digest).await
    }

    /// Whether repository `name` holds `digest` (and the store has its bytes).
    pub async fn is_linked(&self, name: &Name, kind: Link, digest: &Digest) -> Result<bool> {
        self.meta.is_linked(name, kind, digest).await
    }

    /// Records that manifest `referrer` in `name` has `subject` (the referrers API's index).
    pub async fn add_referrer(
        &self,
        _pin: &Pin,
        name: &Name,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        self.meta.add_referrer(name, subject, referrer).await
    }

    pub async fn remove_referrer(
        &self,
        name: &Name,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        self.meta.remove_referrer(name, subject, referrer).await
    }

    /// The manifests of `name` recorded as having `subject`, sorted.
    pub async fn referrers(&self, name: &Name, subject: &Digest) -> Result<Vec<Digest>> {
        self.meta.referrers(name, subject).await
    }

    /// The digests repository `name` links as `kind`, sorted (bytes present or not).
    pub async fn links(&self, name: &Name, kind: Link) -> Result<Vec<Digest>> {
        self.meta.links(name, kind).await
    }

    /// Every referrer record of repository `name`: (subject, referrer), sorted.
    pub async fn referrer_records(&self, name: &Name) -> Result<Vec<(Digest, Digest)>> {
        self.meta.referrer_records(name).await
    }

    /// The tags of a repository, sorted; empty if the repository has none.
    pub async fn tags(&self, name: &Name) -> Result<Vec<Tag>> {
        self.meta.tags(name).await
    }

    /// Up to `limit` tags of `name` sorting after `after` (a tag-list page).
    pub async fn tags_after(
        &self,
        name: &Name,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Tag>> {
        self.meta.tags_after(name, after, limit).await
    }

    /// Records that `image` (`NAME:TAG`) was pulled, if it was not recorded before (for the
    /// prepack after a restart).
    pub async fn record_pull(&self, image: &str) -> Result<()> {
        self.meta.record_pull(image).await
    }

    /// Every image pulled, as `NAME:TAG`, sorted.
    pub async fn pulls(&self) -> Result<Vec<String>> {
        self.meta.pulls().await
    }
}

/// A repository's records, as the collector reads them (see `Store::records`).
#[derive(Default)]
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

#[cfg(test)]
impl Store {
    /// A link made as an older store or a crash could leave it: to nothing, if so.
    pub(crate) fn link_raw(&self, name: &Name, kind: Link, digest: &Digest) {
        super::create_durably(&self.dir.link_path(name, kind, digest)).expect("link");
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
        assert!(files_in(&store.dir.tmp_dir()).is_empty());
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
        std::fs::create_dir_all(store.dir.repositories_dir().join("x/y")).expect("mkdir");
        std::os::unix::fs::symlink("/", store.dir.repositories_dir().join("z")).expect("link");
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

    #[tokio::test]
    async fn a_pull_is_recorded_once_and_listed() {
        let (_dir, store) = fresh().await;
        assert!(store.pulls().await.expect("pulls").is_empty());
        store.record_pull("bin/ls:latest").await.expect("record");
        store.record_pull("bin/ls:latest").await.expect("again");
        store.record_pull("pkgs/git:latest").await.expect("record");
        assert_eq!(
            store.pulls().await.expect("pulls"),
            ["bin/ls:latest", "pkgs/git:latest"]
        );
    }
}
