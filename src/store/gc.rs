//! Garbage collection, online: retention, then mark, then sweep, while pushes and pulls go on
//! (`quinistry gc` on a stopped or running store, and `serve --gc-interval`).
//!
//! **Retention** (only when asked) removes tags and manifest links as a client's `DELETE`
//! would: tags beyond the last N set in a repository that a [`KeepTags`] rule names,
//! manifests no tag reaches whose link is older than `keep_untagged`, with their referrers,
//! and in a mirror's repositories ([`Unpulled`]) the tags and manifests not pulled for its
//! retention (a mirror records a pull by linking the manifest again, which touches it).
//!
//! **Live** is everything reachable from the store's records: every repository's tags,
//! linked manifests (tagged or not) and referrers, the config, layers and child manifests of
//! every live manifest, and the extra `roots` the caller gives (the layers the layer cache
//! vouches for, the images served on demand). A repository's blob link counts while a
//! manifest linked there names the blob, or while the link was touched within `link_grace`
//! (a pushed layer waiting for its manifest); an older one no manifest names is removed.
//!
//! **Sweep**: a blob that is not live, not held by a pack, and was last touched before the
//! pass began minus `grace` is removed, with a manifest's media-type record.
//!
//! **Why a concurrent push cannot lose a blob it was told exists.** Every step that finds
//! or makes a blob and then links it (an upload's commit and link, a mount, a manifest
//! push from the check of its blobs to its last tag, a pack's link and tag) runs under a
//! [`Pin`](super::Pin), and inside it touches every blob it relies on and every link it
//! makes. A pack, which commits a layer long before it links it, holds the layer from the
//! commit on. The pass:
//! 1. takes the gate exclusively and reads the clock: `T0`. No pinned step is half done at
//!    `T0`: each finished before (its links are there for the mark to see) or begins after
//!    (each of its touches reads a clock at or after `T0`);
//! 2. marks, without any lock;
//! 3. removes, in batches, each under the gate taken exclusively: re-reads the blob's touch
//!    time and the live holds, and removes it only if it was last touched at or before
//!    `T0 - grace - TICK` and nothing holds it.
//!
//! A blob a push relied on is therefore either reached by the mark (the link was made
//! before `T0`) or touched after `T0` (kept by step 3), or the push found it gone under
//! its pin and said so (`BLOB_UNKNOWN`, an upload asked for instead of a mount) rather than
//! acknowledging it. Nothing in this depends on how long a step takes; `grace` only decides
//! how long garbage stays. The same holds for blob links: one that a push makes or finds is
//! touched under its pin, and a stale one is removed only if its touch time, read again
//! under the exclusive gate, is still past `link_grace`. The one assumption is a wall clock
//! that does not step back by more than `TICK` during a pass.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use super::{Link, Result, Store, blocking};
use crate::digest::Digest;
use crate::image;
use crate::reference::{Name, Tag};

/// Added to every age before anything is removed: a file system that keeps times coarsely
/// (seconds) may store a touch as earlier than the clock read it.
pub const TICK: Duration = Duration::from_secs(2);

/// At most this many removals per hold of the exclusive gate, so pushes wait little.
const BATCH: usize = 256;

/// Manifests larger than this are not read as manifests (the registry's own limit).
pub(super) const MAX_MANIFEST: u64 = 4 << 20;

/// What to keep, and how long.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How long a blob nothing reaches stays after it was last touched (pushed, mounted,
    /// linked, named by a pushed manifest).
    pub grace: Duration,
    /// How long a blob link no manifest of its repository names stays after it was last
    /// touched: the time a client has between pushing a layer and pushing its manifest.
    pub link_grace: Duration,
    /// Unlink manifests no tag reaches once their link is this old (`None`: keep them all).
    pub keep_untagged: Option<Duration>,
    /// Keep only the most recently set tags of the repositories these rules name.
    pub keep_tags: Vec<KeepTags>,
    /// Evict from mirrors' repositories what was not pulled for a while.
    pub unpulled: Vec<Unpulled>,
    /// Count, but remove nothing.
    pub dry_run: bool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            grace: Duration::from_secs(3600),
            link_grace: Duration::from_secs(24 * 3600),
            keep_untagged: None,
            keep_tags: Vec::new(),
            unpulled: Vec::new(),
            dry_run: false,
        }
    }
}

impl Policy {
    /// Whether a pass begins with retention (anything besides garbage is removed).
    pub fn retains(&self) -> bool {
        self.keep_untagged.is_some() || !self.keep_tags.is_empty() || !self.unpulled.is_empty()
    }

    /// How long manifests of `name` stay unpulled before they go, if `name` is a mirror's.
    pub(crate) fn unpulled_for(&self, name: &Name) -> Option<Duration> {
        self.unpulled.iter().find_map(|u| {
            name.as_str()
                .strip_prefix(u.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
                .then_some(u.after)
        })
    }
}

/// "In the repositories under `prefix/` (a mirror's), remove the tags and manifests not
/// pulled for `after`."
#[derive(Debug, Clone)]
pub struct Unpulled {
    pub prefix: String,
    pub after: Duration,
}

/// "In the repositories `pattern` matches, keep the `last` most recently set tags."
#[derive(Debug, Clone)]
pub struct KeepTags {
    pub pattern: String,
    matcher: globset::GlobMatcher,
    pub last: usize,
}

impl KeepTags {
    /// A rule; `*` in the pattern crosses `/` (as in the access rules).
    pub fn new(pattern: &str, last: usize) -> std::result::Result<KeepTags, String> {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("repository pattern {pattern:?}: {e}"))?;
        Ok(KeepTags {
            pattern: pattern.to_owned(),
            matcher: glob.compile_matcher(),
            last,
        })
    }
}

/// What a collection found and did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GcReport {
    /// Blobs in the store before the sweep.
    pub blobs: usize,
    pub live: usize,
    /// Removed (or, on a dry run, that would be).
    pub reclaimed: usize,
    pub reclaimed_bytes: u64,
    /// Unreachable, but touched within the grace period (or since the pass began): kept.
    pub young: usize,
    /// Unreachable, but held by a pack that has not linked it yet: kept.
    pub held: usize,
    /// Files under `blobs/` not named by a digest: never touched.
    pub strays: usize,
    /// Blob links no manifest of their repository names, older than the link grace.
    pub stale_links: usize,
    /// Tags removed by a `KeepTags` rule.
    pub tags_removed: usize,
    /// Manifests unlinked by `keep_untagged` (referrers included).
    pub untagged_removed: usize,
    /// Layer-cache records no pack can use, pruned before the pass (by `pack::cache::prune`,
    /// which the caller runs: the store does not read records).
    pub pruned_records: usize,
    /// Wall time of the pass.
    pub seconds: f64,
    /// Nothing was removed: the counts say what would have been.
    pub dry_run: bool,
}

impl GcReport {
    /// One line for a log or a terminal.
    pub fn summary(&self) -> String {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let mut s = format!(
            "{} blobs, {} live; {verb} {} ({:.1} MiB), {} blob links no manifest names",
            self.blobs,
            self.live,
            self.reclaimed,
            self.reclaimed_bytes as f64 / (1024.0 * 1024.0),
            self.stale_links,
        );
        if self.tags_removed > 0 || self.untagged_removed > 0 {
            s += &format!(
                ", {} tags and {} untagged manifests",
                self.tags_removed, self.untagged_removed
            );
        }
        s += &format!(
            "; kept {} unreachable but recently touched, {} held by packs; {:.2} s",
            self.young, self.held, self.seconds
        );
        if self.strays > 0 {
            s += &format!(
                "; {} files under blobs/ are not named by a digest (left alone)",
                self.strays
            );
        }
        let verb = if self.dry_run {
            "would prune"
        } else {
            "pruned"
        };
        s += &format!(
            "; {verb} {} layer-cache records no pack can use",
            self.pruned_records
        );
        s
    }
}

/// Runs one pass: retention, mark, sweep (see the module doc).
pub async fn collect(store: &Store, roots: &[Digest], policy: &Policy) -> Result<GcReport> {
    if store.is_shared() {
        return super::postgres::gc::collect(store, roots, policy).await;
    }
    let started = Instant::now();
    let mut report = GcReport {
        dry_run: policy.dry_run,
        ..GcReport::default()
    };
    if policy.retains() {
        retain(store, roots, policy, &mut report).await?;
    }
    // No pinned step is half done now (see the module doc, step 1).
    let t0 = store.exclusive().await?.at;
    let (s, r, link_grace) = (store.clone(), roots.to_vec(), policy.link_grace);
    let (live, stale) = niced(move || mark(&s, &r, t0, link_grace)).await?;
    let link_cutoff = cutoff(t0, policy.link_grace);
    let stale: Vec<_> = stale
        .into_iter()
        .map(|(name, d)| Removal::Link(name, Link::Blob, d, link_cutoff))
        .collect();
    report.stale_links = apply(store, stale, policy.dry_run).await?;

    let blob_cutoff = cutoff(t0, policy.grace);
    let mut doomed = Vec::new();
    for entry in store.blobs().await? {
        let Ok(digest) = entry else {
            report.strays += 1;
            continue;
        };
        report.blobs += 1;
        if live.contains(&digest) {
            report.live += 1;
        } else {
            doomed.push(digest);
        }
    }
    for chunk in doomed.chunks(BATCH) {
        let chunk = chunk.to_vec();
        let s = store.clone();
        let dry_run = policy.dry_run;
        // Under the exclusive gate, with the holds read under it too (step 3); a dry run
        // removes nothing and keeps no writer waiting.
        let gate = match dry_run {
            true => None,
            false => Some(store.exclusive().await?),
        };
        let held = store.held().await?;
        let swept = blocking(move || {
            let mut out = Vec::new();
            let mut dirty = super::Dirty::default();
            for digest in chunk {
                if held.contains(&digest) {
                    out.push(Swept::Held);
                    continue;
                }
                let removed = s.remove_blob_untouched(&digest, blob_cutoff, dry_run, &mut dirty)?;
                out.push(match removed {
                    Some(len) => Swept::Removed(len),
                    None => Swept::Young,
                });
            }
            dirty.sync()?;
            Ok(out)
        })
        .await?;
        drop(gate);
        for s in swept {
            match s {
                Swept::Removed(len) => {
                    report.reclaimed += 1;
                    report.reclaimed_bytes += len;
                }
                Swept::Young => report.young += 1,
                Swept::Held => report.held += 1,
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Runs `f` on a thread of its own at a lower CPU priority: a mark is seconds of CPU on a
/// large store, which a busy server's request threads should get first. Only what takes
/// no lock: the removals under the exclusive gate run at full priority, so that writers
/// never wait on a niced thread.
async fn niced<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("quinistry-gc".into())
        .spawn(move || {
            crate::thread::lower_priority();
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        return Err(super::StoreError::Io {
            action: "start the collector's thread",
            path: std::path::PathBuf::new(),
            source: e,
        });
    }
    rx.await.unwrap_or_else(|_| {
        Err(super::StoreError::Io {
            action: "finish the collector's mark",
            path: std::path::PathBuf::new(),
            source: std::io::Error::other("its thread panicked"),
        })
    })
}

enum Swept {
    Removed(u64),
    Young,
    Held,
}

/// `t0` less `age` and a tick: what was touched at or before it may go.
fn cutoff(t0: SystemTime, age: Duration) -> SystemTime {
    t0.checked_sub(age + TICK).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A removal decided on what the store looked like, made only if it still holds under the
/// exclusive gate.
enum Removal {
    /// A link, if last touched at or before the time.
    Link(Name, Link, Digest, SystemTime),
    /// A tag, if it still points where it did and was not set again since.
    Tag(Name, Tag, Digest, SystemTime),
    /// A manifest's link, if last touched at or before the time, and then its referrer
    /// records under these subjects.
    Manifest(Name, Digest, SystemTime, Vec<Digest>),
}

/// Makes `removals` in batches under the exclusive gate; how many were made (or, on a dry
/// run, would be).
async fn apply(store: &Store, removals: Vec<Removal>, dry_run: bool) -> Result<usize> {
    if dry_run {
        return Ok(removals.len());
    }
    let mut made = 0;
    let mut removals = removals.into_iter().peekable();
    while removals.peek().is_some() {
        let batch: Vec<Removal> = removals.by_ref().take(BATCH).collect();
        let _gate = store.exclusive().await?;
        let s = store.clone();
        made += blocking(move || {
            let mut made = 0;
            let mut dirty = super::Dirty::default();
            for r in batch {
                let done = match r {
                    Removal::Link(name, kind, digest, cutoff) => s
                        .dir
                        .unlink_untouched(&name, kind, &digest, cutoff, &mut dirty)?,
                    Removal::Tag(name, tag, digest, set) => {
                        s.dir.delete_tag_if(&name, &tag, &digest, set, &mut dirty)?
                    }
                    Removal::Manifest(name, digest, cutoff, subjects) => {
                        let link = Link::Manifest;
                        let gone = s
                            .dir
                            .unlink_untouched(&name, link, &digest, cutoff, &mut dirty)?;
                        if gone {
                            for subject in subjects {
                                s.dir
                                    .remove_referrer_now(&name, &subject, &digest, &mut dirty)?;
                            }
                        }
                        gone
                    }
                };
                made += usize::from(done);
            }
            // Durable before the gate is let go, and before anything they held is swept.
            dirty.sync()?;
            Ok(made)
        })
        .await?;
    }
    Ok(made)
}

/// Retention: decides from a snapshot, removes under the gate (see `apply`).
async fn retain(
    store: &Store,
    protected: &[Digest],
    policy: &Policy,
    report: &mut GcReport,
) -> Result<()> {
    let (s, protected, p) = (store.clone(), protected.to_vec(), policy.clone());
    let (tags, links) = niced(move || decide_retention(&s, &protected, &p)).await?;
    report.tags_removed = apply(store, tags, policy.dry_run).await?;
    report.untagged_removed = apply(store, links, policy.dry_run).await?;
    Ok(())
}

/// What retention removes: tags, then manifest links (with their referrer records).
fn decide_retention(
    store: &Store,
    protected: &[Digest],
    policy: &Policy,
) -> Result<(Vec<Removal>, Vec<Removal>)> {
    let now = SystemTime::now();
    let protected: BTreeSet<&Digest> = protected.iter().collect();
    let mut tag_removals = Vec::new();
    let mut link_removals = Vec::new();
    for name in store.dir.repositories_now()? {
        let records = store.dir.records(&name, true)?;
        let mut tags = records.tags;
        if let Some(rule) = policy
            .keep_tags
            .iter()
            .find(|r| r.matcher.is_match(name.as_str()))
        {
            // Newest first; the name breaks ties, so the choice does not depend on listing.
            tags.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
            for (tag, digest, set) in tags.split_off(rule.last.min(tags.len())) {
                tag_removals.push(Removal::Tag(name.clone(), tag, digest, set));
            }
        }
        // A mirror's tag goes when its manifest was not pulled (touched) within the
        // retention; then its manifests as untagged ones, at the same age.
        let unpulled = policy.unpulled_for(&name);
        if let Some(after) = unpulled {
            let cutoff = cutoff(now, after);
            let touched: BTreeMap<&Digest, Option<SystemTime>> =
                records.manifests.iter().map(|(d, t)| (d, *t)).collect();
            let (old, fresh): (Vec<_>, Vec<_>) = tags.into_iter().partition(|(_, d, _)| {
                touched
                    .get(d)
                    .is_some_and(|t| t.is_some_and(|t| t <= cutoff))
            });
            tags = fresh;
            for (tag, digest, set) in old {
                tag_removals.push(Removal::Tag(name.clone(), tag, digest, set));
            }
        }
        let untagged = match (policy.keep_untagged, unpulled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(keep_untagged) = untagged else {
            continue;
        };
        // What the remaining tags reach, and the referrers of that, stays.
        let tagged: Vec<Digest> = tags.iter().map(|(_, d, _)| d.clone()).collect();
        let referrers = records.referrers;
        let kept = reach_with_referrers(store, tagged, &referrers)?;
        let cutoff = cutoff(now, keep_untagged);
        let mut gone = BTreeSet::new();
        for (manifest, touched) in records.manifests {
            if kept.contains(&manifest) || protected.contains(&manifest) {
                continue;
            }
            if touched.is_some_and(|t| t <= cutoff) {
                gone.insert(manifest);
            }
        }
        // Their referrers go with them, however young (nothing else reaches them).
        let mut pending: Vec<Digest> = gone.iter().cloned().collect();
        while let Some(subject) = pending.pop() {
            for (s, referrer) in &referrers {
                if s == &subject && !kept.contains(referrer) && gone.insert(referrer.clone()) {
                    pending.push(referrer.clone());
                }
            }
        }
        for manifest in gone {
            let subjects = referrers
                .iter()
                .filter(|(_, r)| r == &manifest)
                .map(|(s, _)| s.clone())
                .collect();
            // Re-checked against the time the decision was made: a push since touched it.
            link_removals.push(Removal::Manifest(name.clone(), manifest, now, subjects));
        }
    }
    Ok((tag_removals, link_removals))
}

/// `manifests`, what they reach, and the referrers (by `records`: subject, referrer) of all
/// of that, transitively.
fn reach_with_referrers(
    store: &Store,
    manifests: Vec<Digest>,
    records: &[(Digest, Digest)],
) -> Result<BTreeSet<Digest>> {
    let mut by_subject: BTreeMap<&Digest, Vec<&Digest>> = BTreeMap::new();
    for (subject, referrer) in records {
        by_subject.entry(subject).or_default().push(referrer);
    }
    let mut live = BTreeSet::new();
    let mut pending = manifests;
    loop {
        let named = reach(store, std::mem::take(&mut pending), &mut live)?;
        for d in &named {
            for r in by_subject.get(d).into_iter().flatten() {
                if !live.contains(*r) {
                    pending.push((*r).clone());
                }
            }
        }
        if pending.is_empty() {
            return Ok(live);
        }
    }
}

/// Every digest reachable from the tags, links and referrer records, and from `roots`;
/// and the blob links that no manifest of their repository names and that were last
/// touched at or before `now - grace` (stale: see the module doc). On the calling thread
/// and threads it starts: thousands of small reads, which blocking threads do far faster
/// than a task each. Repositories are marked independently, so the list is cut into one
/// run of consecutive names per core, and the runs' results are joined in order.
pub fn mark(store: &Store, roots: &[Digest], now: SystemTime, grace: Duration) -> Result<Marked> {
    let mut live: BTreeSet<Digest> = BTreeSet::new();
    reach(store, roots.to_vec(), &mut live)?;
    let cutoff = cutoff(now, grace);
    let names = store.dir.repositories_now()?;
    let threads = super::threads()
        .min(names.len().div_ceil(MARK_RUN_MIN))
        .max(1);
    let run = names.len().div_ceil(threads).max(1);
    let runs = super::in_parts(names.chunks(run), "mark", &store.dir.root, |part| {
        mark_repositories(store, part, cutoff)
    });
    let mut stale = Vec::new();
    for run in runs {
        let (l, s) = run?;
        live.extend(l);
        stale.extend(s);
    }
    Ok((live, stale))
}

/// [`mark`] of some repositories, on the calling thread.
fn mark_repositories(store: &Store, names: &[Name], cutoff: SystemTime) -> Result<Marked> {
    let mut live = BTreeSet::new();
    // Read once however many repositories link them: manifests are immutable.
    let mut seen = BTreeMap::new();
    let mut stale = Vec::new();
    for name in names {
        // Link times are read only for the blobs no manifest names (below).
        let records = store.dir.records(name, false)?;
        let manifests: Vec<Digest> = records
            .manifests
            .into_iter()
            .map(|(d, _)| d)
            .chain(records.tags.into_iter().map(|(_, d, _)| d))
            .chain(records.referrers.into_iter().map(|(_, r)| r))
            .collect();
        // Bounded: a store's manifests would all be held otherwise (150,000 of them took
        // ~100 MB at 350,000 blobs). What another repository links again after a clear is
        // read again: rare, and correct either way.
        if seen.len() > SEEN_MAX {
            seen.clear();
        }
        let named = reach_cached(store, manifests, &mut seen)?;
        live.extend(named.iter().cloned());
        for (blob, _) in records.blobs {
            if named.contains(&blob) {
                continue;
            }
            let touched = store.dir.link_touched(name, Link::Blob, &blob)?;
            if touched.is_some_and(|t| t <= cutoff) {
                stale.push((name.clone(), blob));
            } else {
                live.insert(blob);
            }
        }
    }
    Ok((live, stale))
}

/// Fewest repositories worth a thread of their own in a mark.
const MARK_RUN_MIN: usize = 256;

/// At most this many manifests' names are kept between repositories during a mark (by
/// each of its threads).
const SEEN_MAX: usize = 16_384;

/// What the mark found: the live digests, and the stale blob links (repository, blob).
pub type Marked = (BTreeSet<Digest>, Vec<(Name, Digest)>);

/// What a manifest names: its blobs and its children.
pub(crate) type Names = (Vec<Digest>, Vec<Digest>);

/// Reads and parses a manifest (`None`: not one, too large, or gone; `verify` reports a
/// dangling record).
fn names_of(store: &Store, manifest: &Digest) -> Result<Option<Names>> {
    let Some((bytes, recorded)) = store.read_manifest_now(manifest, MAX_MANIFEST)? else {
        return Ok(None);
    };
    Ok(names_in(&bytes, recorded.as_deref()))
}

/// What the manifest `bytes` (pushed as `recorded`, if it has no media type) names; `None`
/// if it is not a manifest.
pub(crate) fn names_in(bytes: &[u8], recorded: Option<&str>) -> Option<Names> {
    let Ok(parsed) = image::parse_pushed_manifest(bytes, recorded) else {
        return None;
    };
    let mut children: Vec<Digest> = parsed.children.into_iter().map(|(d, _)| d).collect();
    // A tag of an OCI manifest is served to Docker-only clients as its Docker twin (see
    // `registry`): the twin lives as long as the manifest.
    if let Some(twin) = image::docker_form(bytes) {
        children.push(Digest::sha256_of(&twin));
    }
    Some((parsed.blobs.into_iter().map(|(d, _)| d).collect(), children))
}

/// `manifests` and everything they name, children first to last, with each manifest read
/// once into `seen`.
fn reach_cached(
    store: &Store,
    mut manifests: Vec<Digest>,
    seen: &mut BTreeMap<Digest, Option<Names>>,
) -> Result<BTreeSet<Digest>> {
    let mut named = BTreeSet::new();
    while let Some(manifest) = manifests.pop() {
        if !named.insert(manifest.clone()) {
            continue;
        }
        if !seen.contains_key(&manifest) {
            let names = names_of(store, &manifest)?;
            seen.insert(manifest.clone(), names);
        }
        if let Some(Some((blobs, children))) = seen.get(&manifest) {
            named.extend(blobs.iter().cloned());
            manifests.extend(children.iter().cloned());
        }
    }
    Ok(named)
}

/// Marks `manifests` and everything they name into `live`; the digests reached.
fn reach(
    store: &Store,
    manifests: Vec<Digest>,
    live: &mut BTreeSet<Digest>,
) -> Result<BTreeSet<Digest>> {
    let named = reach_cached(store, manifests, &mut BTreeMap::new())?;
    live.extend(named.iter().cloned());
    Ok(named)
}
