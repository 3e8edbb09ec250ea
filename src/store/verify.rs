//! The store's graph check: beyond every blob hashing to its name (`Store::verify`), what
//! the store promises between its records (see the module doc of `store`):
//!
//! - every tag names a manifest its repository links, whose bytes are stored;
//! - every link names a stored blob;
//! - every linked manifest's config, layers (foreign ones aside) and child manifests are
//!   stored;
//! - every referrer record names a manifest its repository links.
//!
//! `repair` removes what is provably dangling (a tag, a link or a referrer record naming
//! what is not there) and nothing else: a manifest missing a blob, or a corrupt blob, is
//! reported, not deleted.

use std::collections::BTreeSet;
use std::fmt;

use super::{Link, Result, Store};
use crate::digest::Digest;
use crate::image;
use crate::reference::{Name, Tag};

/// One inconsistency found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A tag naming a manifest the repository does not link (or whose bytes are gone).
    DanglingTag {
        name: Name,
        tag: Tag,
        digest: Digest,
    },
    /// A link to a blob the store does not have.
    DanglingLink {
        name: Name,
        kind: Link,
        digest: Digest,
    },
    /// A referrer record naming a manifest the repository does not link.
    DanglingReferrer {
        name: Name,
        subject: Digest,
        referrer: Digest,
    },
    /// A linked manifest naming a blob or child manifest the store does not have.
    MissingBlob {
        name: Name,
        manifest: Digest,
        missing: Digest,
    },
    /// A linked manifest the store has but cannot read as one.
    UnreadableManifest {
        name: Name,
        digest: Digest,
        why: String,
    },
}

impl Problem {
    /// Whether `repair` removes it: only records that name what is not there.
    pub fn repairable(&self) -> bool {
        matches!(
            self,
            Problem::DanglingTag { .. }
                | Problem::DanglingLink { .. }
                | Problem::DanglingReferrer { .. }
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::DanglingTag { name, tag, digest } => {
                write!(
                    f,
                    "tag {name}:{tag} names {digest}, which {name} does not link"
                )
            }
            Problem::DanglingLink { name, kind, digest } => {
                write!(f, "{name} links {kind:?} {digest}, which is not stored")
            }
            Problem::DanglingReferrer {
                name,
                subject,
                referrer,
            } => write!(
                f,
                "{name} records {referrer} as a referrer of {subject}, but does not link it"
            ),
            Problem::MissingBlob {
                name,
                manifest,
                missing,
            } => write!(
                f,
                "manifest {manifest} of {name} names {missing}, which is not stored"
            ),
            Problem::UnreadableManifest { name, digest, why } => {
                write!(f, "manifest {digest} of {name} cannot be read: {why}")
            }
        }
    }
}

/// What the graph check saw and found.
#[derive(Debug, Default)]
pub struct GraphReport {
    pub repositories: usize,
    pub tags: usize,
    pub links: usize,
    pub manifests: usize,
    pub problems: Vec<Problem>,
    /// Those of `problems` that `repair` removed.
    pub repaired: usize,
}

impl GraphReport {
    /// Problems left after any repair.
    pub fn remaining(&self) -> usize {
        self.problems.len() - self.repaired
    }
}

/// Checks every repository's tags, links and referrer records against each other and the
/// blobs; with `repair`, removes the dangling records it finds.
pub async fn check_graph(store: &Store, repair: bool) -> Result<GraphReport> {
    let mut report = GraphReport::default();
    for name in store.repositories().await? {
        report.repositories += 1;
        let mut linked_manifests = BTreeSet::new();
        for kind in [Link::Blob, Link::Manifest] {
            for digest in store.links(&name, kind).await? {
                report.links += 1;
                if store.has_blob(&digest).await? {
                    if kind == Link::Manifest {
                        linked_manifests.insert(digest);
                    }
                } else {
                    report.problems.push(Problem::DanglingLink {
                        name: name.clone(),
                        kind,
                        digest: digest.clone(),
                    });
                    if repair {
                        store.unlink(&name, kind, &digest).await?;
                        report.repaired += 1;
                    }
                }
            }
        }
        for manifest in &linked_manifests {
            report.manifests += 1;
            let bytes = store.read_blob(manifest).await?;
            let recorded = store.manifest_type(manifest).await?;
            let parsed = image::parse_pushed_manifest(&bytes, recorded.as_deref());
            let pushed = match parsed {
                Ok(p) => p,
                Err(why) => {
                    report.problems.push(Problem::UnreadableManifest {
                        name: name.clone(),
                        digest: manifest.clone(),
                        why,
                    });
                    continue;
                }
            };
            for (needed, _) in pushed.blobs.iter().chain(&pushed.children) {
                if !store.has_blob(needed).await? {
                    report.problems.push(Problem::MissingBlob {
                        name: name.clone(),
                        manifest: manifest.clone(),
                        missing: needed.clone(),
                    });
                }
            }
        }
        for tag in store.tags(&name).await? {
            report.tags += 1;
            let Some(digest) = store.tag(&name, &tag).await? else {
                continue; // deleted meanwhile
            };
            if !linked_manifests.contains(&digest) {
                report.problems.push(Problem::DanglingTag {
                    name: name.clone(),
                    tag: tag.clone(),
                    digest,
                });
                if repair {
                    store.delete_tag(&name, &tag).await?;
                    report.repaired += 1;
                }
            }
        }
        for (subject, referrer) in store.referrer_records(&name).await? {
            if !linked_manifests.contains(&referrer) {
                report.problems.push(Problem::DanglingReferrer {
                    name: name.clone(),
                    subject: subject.clone(),
                    referrer: referrer.clone(),
                });
                if repair {
                    store.remove_referrer(&name, &subject, &referrer).await?;
                    report.repaired += 1;
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::fresh;

    #[tokio::test]
    async fn dangling_records_are_found_and_repaired_and_nothing_else_is_touched() {
        let (_d, store) = fresh().await;
        let pin = store.pin().await.expect("pin");
        let name: Name = "r".parse().expect("name");
        let config = store.put(b"{}").await.expect("put");
        let layer = store.put(b"layer").await.expect("put");
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": image::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 5}],
        });
        let m = store
            .put(&serde_json::to_vec(&manifest).expect("json"))
            .await
            .expect("put");
        for (kind, d) in [
            (Link::Blob, &config),
            (Link::Blob, &layer),
            (Link::Manifest, &m),
        ] {
            store.link(&pin, &name, kind, d).await.expect("link");
        }
        let v1: Tag = "v1".parse().expect("tag");
        store.set_tag(&pin, &name, &v1, &m).await.expect("tag");
        let clean = check_graph(&store, false).await.expect("check");
        assert!(clean.problems.is_empty(), "{:?}", clean.problems);
        assert_eq!((clean.tags, clean.links, clean.manifests), (1, 3, 1));

        // A tag on an unlinked manifest, a link to nothing, a referrer record to nothing, and
        // a manifest whose layer is gone.
        let ghost = Digest::sha256_of(b"never stored");
        let gone: Tag = "gone".parse().expect("tag");
        store
            .set_tag(&pin, &name, &gone, &ghost)
            .await
            .expect("tag");
        store.link_raw(&name, Link::Blob, &ghost);
        store
            .add_referrer(&pin, &name, &m, &ghost)
            .await
            .expect("referrer");
        std::fs::remove_file(store.blob_path(&layer)).expect("remove");

        let found = check_graph(&store, false).await.expect("check");
        assert_eq!(found.problems.len(), 5, "{:#?}", found.problems);
        assert_eq!(found.repaired, 0);
        // Still there without --repair.
        assert_eq!(
            store.tag(&name, &gone).await.expect("tag"),
            Some(ghost.clone())
        );

        let repaired = check_graph(&store, true).await.expect("repair");
        assert_eq!(repaired.repaired, 4, "{:#?}", repaired.problems);
        let left = check_graph(&store, false).await.expect("check");
        // The missing layer is reported, not repaired: the manifest and its tag stay.
        assert_eq!(left.problems.len(), 1, "{:#?}", left.problems);
        assert!(matches!(left.problems[0], Problem::MissingBlob { .. }));
        assert_eq!(store.tag(&name, &v1).await.expect("tag"), Some(m));
        assert_eq!(store.tag(&name, &gone).await.expect("tag"), None);
    }
}
