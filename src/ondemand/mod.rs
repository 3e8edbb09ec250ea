//! Images packed on demand: `serve --image NAME[:TAG]=INPUT,...`, `serve --root DIR`, and
//! `pkgs/PKG[/PKG...]` (the machine's installed packages by name, with `--packages` or
//! `--root`).
//!
//! Nothing is packed at start but what was pulled before and what is configured (see
//! [`prepack`]). The first request for an image's manifest packs it (through the layer
//! cache, so an unchanged input is not compressed again after a restart); requests that
//! arrive meanwhile wait for that same pack ([`Flight`]). Each later request checks the
//! input files' stamps: a changed file makes a new image on that request. An outcome is
//! reused for at most [`RECHECK`], after which the inputs are planned again (cheap: metadata
//! and ELF headers), so a changed library or directory content shows too.
//!
//! Under `--root DIR` (`root.rs`), every executable file below DIR is an image; on-demand
//! images write no tags into the store: what they serve is decided by the files, now.

pub mod flight;
pub mod prepack;
mod root;
mod spec;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::digest::Digest;
use crate::image::RunSettings;
use crate::ondemand::flight::{Flight, Joined};
use crate::pack::progress;
use crate::pack::{self, ClosureMode, Input, LayerOptions, PackError, Packing};
use crate::reference::{Name, Tag};
use crate::runtime::packages::{Machine, PackageDb};
use crate::store::{FileStamp, Store};
use root::{Root, program_inputs};
pub use spec::{FileImage, ImageSpec, load_images};

/// How long a resolved image (or a scan of the root) is trusted before it is checked again
/// in full. The top-level input files are checked on every request regardless.
pub const RECHECK: Duration = Duration::from_secs(1);
/// Where a root image's executable goes: on PATH, and away from `/`, where an
/// `$ORIGIN/lib` library folder would collide with the `/lib` of the runtime closure.
pub const ROOT_IMAGE_DIR: &str = "/usr/local/bin";
/// Directories deeper than this below the root are not scanned (a bind-mount loop would
/// otherwise never end).
const MAX_DEPTH: usize = 32;
/// Where images of installed packages are named: `pkgs/git`, `pkgs/python3-pip/python3-venv`.
pub const PACKAGES_PREFIX: &str = "pkgs/";
/// Most packages one `pkgs/...` name may list.
pub const MAX_NAMED_PACKAGES: usize = 32;
/// Package images remembered (each with its flight): any combination of names can be
/// asked for, so the least recently asked are forgotten past this.
const MAX_PACKAGE_IMAGES: usize = 1024;

/// Why an image could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot pack {image}: {source}")]
    Pack { image: String, source: PackError },
    /// A `pkgs/...` name lists what is not an installed package.
    #[error("{image}: no installed package is called {package:?}")]
    UnknownPackage { image: String, package: String },
    #[error("{image}: an image of packages names at most {most} of them")]
    TooManyPackages { image: String, most: usize },
    #[error("packing {image} failed unexpectedly (see the server log)")]
    Crashed { image: String },
}

impl ResolveError {
    /// Whether the pack failed because the store's disk is full.
    pub fn disk_full(&self) -> bool {
        use crate::store::StoreError;
        let io = match self {
            ResolveError::Pack {
                source: PackError::Store(StoreError::Io { source, .. }),
                ..
            }
            | ResolveError::Pack {
                source: PackError::Write(source),
                ..
            } => source,
            _ => return false,
        };
        crate::store::disk_full(io)
    }

    /// Whether the fault is the server's (its store or a bug) rather than the image's inputs.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            ResolveError::Crashed { .. }
                | ResolveError::Pack {
                    source: PackError::Store(_) | PackError::Write(_),
                    ..
                }
        )
    }
}

/// What a resolution gives: the image's OCI manifest, or the shared failure.
type Outcome = Result<Resolved, Arc<ResolveError>>;

#[derive(Debug, Clone)]
struct Resolved {
    manifest: Digest,
    /// The inputs' stamps identify their content (see `PackedLayer::settled`); if not, the
    /// outcome is not reused beyond the requests that waited for it.
    settled: bool,
}

/// One on-demand image: how to make it, and its single flight.
struct Image {
    /// `NAME:TAG`, for logs and errors.
    label: String,
    flight: Flight<Vec<Option<FileStamp>>, Outcome>,
}

/// How an on-demand image is made, beyond its inputs.
struct How {
    run: RunSettings,
    closure: ClosureMode,
    /// Installed packages it holds whatever its files are.
    packages: Vec<String>,
}

/// An image named on the command line or in an `--images` file.
struct Explicit {
    inputs: Vec<Input>,
    packages: Vec<String>,
    /// Its own run settings, over the defaults.
    run: RunSettings,
    /// Its own closure, else the server's.
    closure: Option<ClosureMode>,
    /// Its own choice on `Recommends`, else the server's.
    recommends: Option<bool>,
    image: Image,
}

/// Every on-demand image of a server.
pub struct OnDemand {
    store: Store,
    /// Layer settings (compression, mtime) for every image packed here.
    opts: LayerOptions,
    /// Compression threads of each pack.
    threads: usize,
    /// `--image` entries by name, then tag.
    explicit: BTreeMap<Name, BTreeMap<Tag, Explicit>>,
    root: Option<Root>,
    /// Root images seen so far, each with its flight. Only names that mapped to a file get an
    /// entry, so the map is bounded by the files that ever existed under the root.
    root_images: Mutex<HashMap<Name, Arc<Image>>>,
    /// Whether `pkgs/...` names are served.
    packages: bool,
    /// `pkgs/...` images asked for, each with its flight, the least recently asked forgotten.
    package_images: Mutex<lru::LruCache<Name, Arc<Image>>>,
    /// Images clients pulled (`NAME:TAG`), as recorded in the store: prepacked at start.
    pulled: Mutex<BTreeSet<String>>,
    /// Packs that may run at once (cache hits need none).
    slots: Arc<tokio::sync::Semaphore>,
    /// What images reach beyond their inputs (`--closure`).
    closure: ClosureMode,
    /// The machine's package database, read again when it changes.
    machine: Arc<Machine>,
    /// Told of each image packed anew (not from the layer cache, not the manifest its last
    /// pack made): notifications.
    on_packed: std::sync::OnceLock<PackedHook>,
}

/// What is told of an image packed anew: its repository, `NAME:TAG`, and its OCI manifest's
/// digest and size.
pub type PackedHook = Arc<dyn Fn(&Name, &str, &Digest, u64) + Send + Sync>;

/// The on-demand images as given, checked before anything touches the store.
pub struct Setup {
    explicit: BTreeMap<Name, BTreeMap<Tag, Explicit>>,
    root: Option<Root>,
    /// Whether `pkgs/...` names are served.
    packages: bool,
    /// Packs that may run at once.
    max_packs: usize,
    closure: ClosureMode,
    /// One line per `--image`, for the operator.
    lines: Vec<String>,
}

impl Setup {
    /// Fails on an image given twice, a root that is not a directory, or no packs allowed.
    pub fn new(
        specs: Vec<ImageSpec>,
        root: Option<&Path>,
        packages: bool,
        max_packs: usize,
        closure: ClosureMode,
    ) -> Result<Setup, String> {
        if max_packs == 0 {
            return Err("--max-packs must be at least 1".to_owned());
        }
        let mut lines = Vec::new();
        let mut explicit: BTreeMap<Name, BTreeMap<Tag, Explicit>> = BTreeMap::new();
        for spec in specs {
            let label = spec.name.to_string();
            let mut inputs: Vec<String> = spec.inputs.iter().map(|i| i.to_string()).collect();
            inputs.extend(spec.packages.iter().map(|p| format!("+{p}")));
            lines.push(format!("{label}  <- {}", inputs.join(", ")));
            // Allowed (the file may be made later), but most likely a typo: say so now
            // rather than on the first pull.
            for input in &spec.inputs {
                if let Err(e) = std::fs::metadata(&input.source) {
                    tracing::warn!(
                        image = %label,
                        input = %input.source.display(),
                        error = %e,
                        "an input of --image cannot be read now; pulls of the image fail until it can"
                    );
                }
            }
            let tags = explicit.entry(spec.name.name).or_default();
            if tags.contains_key(&spec.name.tag) {
                return Err(format!("--image {label} is given twice"));
            }
            tags.insert(
                spec.name.tag,
                Explicit {
                    inputs: spec.inputs,
                    packages: spec.packages,
                    run: spec.run,
                    closure: spec.closure,
                    recommends: spec.recommends,
                    image: Image::new(label),
                },
            );
        }
        let root = match root {
            Some(dir) => Some(Root::new(dir)?),
            None => None,
        };
        Ok(Setup {
            explicit,
            root,
            packages,
            max_packs,
            closure,
            lines,
        })
    }
}

impl Setup {
    /// What the images name that cannot be read now (an input, the root): one line each.
    /// `serve` only warns of these (a file may appear later); `config check` refuses them.
    pub fn unreadable(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let inputs = self
            .explicit
            .iter()
            .flat_map(|(name, tags)| tags.iter().map(move |(tag, e)| (name, tag, e)))
            .flat_map(|(name, tag, e)| e.inputs.iter().map(move |i| (name, tag, i)));
        for (name, tag, input) in inputs {
            if let Err(e) = readable(&input.source) {
                problems.push(format!(
                    "image {name}:{tag}: input {}: {e}",
                    input.source.display()
                ));
            }
        }
        if let Some(root) = &self.root
            && let Err(e) = readable(&root.dir)
        {
            problems.push(format!("root {}: {e}", root.dir.display()));
        }
        problems
    }
}

/// Whether `path` can be read: a file opened, a folder listed.
pub fn readable(path: &Path) -> std::io::Result<()> {
    if std::fs::metadata(path)?.is_dir() {
        std::fs::read_dir(path).map(drop)
    } else {
        std::fs::File::open(path).map(drop)
    }
}

impl OnDemand {
    /// Sets up the images; packs nothing. Returns the lines that describe them, for the
    /// operator. Problems under the root (names that collide or cannot be mapped, symlinks
    /// leading out) are logged as warnings.
    pub async fn new(
        store: Store,
        opts: LayerOptions,
        threads: usize,
        setup: Setup,
    ) -> (OnDemand, Vec<String>) {
        let Setup {
            explicit,
            root,
            packages,
            max_packs,
            closure,
            mut lines,
        } = setup;
        let pulled = match store.pulls().await {
            Ok(p) => p.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which images were pulled before; none is prepacked");
                BTreeSet::new()
            }
        };
        let machine = Arc::new(Machine::new("/"));
        if let Some(root) = &root {
            root.set_machine(machine.clone());
        }
        let ondemand = OnDemand {
            store,
            opts,
            threads,
            explicit,
            root,
            root_images: Mutex::new(HashMap::new()),
            packages,
            package_images: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::MIN.saturating_add(MAX_PACKAGE_IMAGES - 1),
            )),
            pulled: Mutex::new(pulled),
            slots: Arc::new(tokio::sync::Semaphore::new(max_packs)),
            closure,
            machine,
            on_packed: std::sync::OnceLock::new(),
        };
        if packages {
            lines.push(format!(
                "{PACKAGES_PREFIX}PKG[/PKG...]:latest  <- the installed packages named"
            ));
        }
        if let Some(root) = &ondemand.root {
            for name in root.names(true).await {
                let hidden = ondemand
                    .explicit
                    .get(&name)
                    .is_some_and(|t| t.contains_key(&Tag::latest()));
                if hidden {
                    tracing::warn!(%name, "--image {name}:latest hides the root's file of that name");
                } else if packages && name.as_str().starts_with(PACKAGES_PREFIX) {
                    tracing::warn!(%name, "the root's file {name} is hidden by the images of installed packages ({PACKAGES_PREFIX}...)");
                } else if let Some(rel) = root.relative(&name) {
                    lines.push(format!(
                        "{name}:latest  <- {}",
                        root.dir.join(rel).display()
                    ));
                }
            }
        }
        (ondemand, lines)
    }

    /// The OCI manifest digest of `name:tag` for a client, packing it if need be; `None` if
    /// `name:tag` is not an on-demand image. A pull is recorded in the store (once per
    /// image), so that a restarted server prepacks it.
    pub async fn manifest(
        &self,
        name: &Name,
        tag: &Tag,
    ) -> Option<Result<Digest, Arc<ResolveError>>> {
        let outcome = self.resolve_image(name, tag).await?;
        if outcome.is_ok() {
            self.record_pull(name, tag).await;
        }
        Some(outcome)
    }

    /// Remembers, here and in the store, that a client pulled `name:tag`.
    async fn record_pull(&self, name: &Name, tag: &Tag) {
        let image = format!("{name}:{tag}");
        let new = {
            let mut pulled = self.pulled.lock().unwrap_or_else(|p| p.into_inner());
            pulled.insert(image.clone())
        };
        if new && let Err(e) = self.store.record_pull(&image).await {
            tracing::warn!(%image, error = %e, "cannot record the pull; the image is not prepacked after a restart");
        }
    }

    /// `manifest`, without recording a pull: what the prepack asks.
    pub(super) async fn resolve_image(
        &self,
        name: &Name,
        tag: &Tag,
    ) -> Option<Result<Digest, Arc<ResolveError>>> {
        if let Some(e) = self.explicit.get(name).and_then(|t| t.get(tag)) {
            let stamps = stamps(&e.inputs).await;
            let closure = e.closure.unwrap_or(self.closure);
            let how = How {
                run: e.run.clone(),
                closure: match e.recommends {
                    Some(false) => closure.without_recommends(),
                    _ => closure,
                },
                packages: e.packages.clone(),
            };
            return Some(
                self.resolve(name, &e.image, e.inputs.clone(), how, stamps)
                    .await,
            );
        }
        if *tag != Tag::latest() {
            return None;
        }
        if let Some(list) = self.package_list(name) {
            return Some(self.package_image(name, list).await);
        }
        let located = self.root.as_ref()?.locate(name).await?;
        let image = {
            let mut images = self.root_images.lock().unwrap_or_else(|p| p.into_inner());
            images
                .entry(name.clone())
                .or_insert_with(|| Arc::new(Image::new(format!("{name}:latest"))))
                .clone()
        };
        let stamp = located.stamp;
        let packages = matches!(self.closure, ClosureMode::Packages { .. });
        let made = match located.owned && packages {
            true => program_inputs(&located),
            false => {
                let dest = format!("{ROOT_IMAGE_DIR}/{}", located.file_name);
                Input::at(located.path, &dest, &located.file_name)
                    .map(|input| (vec![input], RunSettings::default()))
            }
        };
        let (inputs, run) = match made {
            Ok(made) => made,
            Err(e) => {
                let error = ResolveError::Pack {
                    image: image.label.clone(),
                    source: e,
                };
                return Some(Err(Arc::new(error)));
            }
        };
        let how = How {
            run,
            closure: self.closure,
            packages: Vec::new(),
        };
        Some(
            self.resolve(name, &image, inputs, how, vec![Some(stamp)])
                .await,
        )
    }

    /// The package names of a `pkgs/...` name, if package images are served and `name` is one.
    pub(super) fn package_list<'n>(&self, name: &'n Name) -> Option<&'n str> {
        if !self.packages {
            return None;
        }
        name.as_str().strip_prefix(PACKAGES_PREFIX)
    }

    /// The image of the installed packages `list` names (`a/b/c`): the same image whatever
    /// their order. An unknown package is an error naming it.
    async fn package_image(&self, name: &Name, list: &str) -> Result<Digest, Arc<ResolveError>> {
        let packages = self.installed(name, list)?;
        let image = {
            let mut images = self
                .package_images
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            images
                .get_or_insert(name.clone(), || {
                    Arc::new(Image::new(format!("{name}:latest")))
                })
                .clone()
        };
        // A package image needs the package closure, whatever the server's is.
        let closure = match self.closure {
            ClosureMode::Elf => ClosureMode::default(),
            c => c,
        };
        let how = How {
            run: RunSettings::default(),
            closure,
            packages,
        };
        let stamps = vec![self.dpkg_stamp().await];
        self.resolve(name, &image, Vec::new(), how, stamps).await
    }

    /// The stamp of dpkg's `status` file: what it installs or removes changes a package image.
    async fn dpkg_stamp(&self) -> Option<FileStamp> {
        let status = self.machine.root().join("var/lib/dpkg/status");
        tokio::fs::metadata(&status)
            .await
            .ok()
            .map(|m| FileStamp::of(&m))
    }

    /// The packages of a `pkgs/...` list, sorted and each once, if every one is installed.
    fn installed(&self, name: &Name, list: &str) -> Result<Vec<String>, Arc<ResolveError>> {
        let unknown = |package: &str| {
            Arc::new(ResolveError::UnknownPackage {
                image: name.to_string(),
                package: package.to_owned(),
            })
        };
        let mut packages: Vec<String> = list.split('/').map(str::to_owned).collect();
        packages.sort();
        packages.dedup();
        if packages.len() > MAX_NAMED_PACKAGES {
            return Err(Arc::new(ResolveError::TooManyPackages {
                image: name.to_string(),
                most: MAX_NAMED_PACKAGES,
            }));
        }
        let db = match self.machine.current() {
            Ok(Some(db)) => db,
            Ok(None) => return Err(unknown(&packages[0])),
            Err(e) => {
                return Err(Arc::new(ResolveError::Pack {
                    image: name.to_string(),
                    source: e.into(),
                }));
            }
        };
        match packages.iter().find(|p| db.find(p).is_none()) {
            Some(missing) => Err(unknown(missing)),
            None => Ok(packages),
        }
    }

    /// Whether `name` is an on-demand repository.
    pub async fn has(&self, name: &Name) -> bool {
        if self.explicit.contains_key(name) {
            return true;
        }
        if let Some(list) = self.package_list(name) {
            return self.installed(name, list).is_ok();
        }
        match &self.root {
            Some(root) => root.locate(name).await.is_some(),
            None => false,
        }
    }

    /// The on-demand tags of `name`.
    pub async fn tags(&self, name: &Name) -> Vec<Tag> {
        let mut tags: BTreeSet<Tag> = self
            .explicit
            .get(name)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(list) = self.package_list(name) {
            if self.installed(name, list).is_ok() {
                tags.insert(Tag::latest());
            }
        } else if let Some(root) = &self.root
            && root.locate(name).await.is_some()
        {
            tags.insert(Tag::latest());
        }
        tags.into_iter().collect()
    }

    /// Every on-demand repository name, the root rescanned if its last scan is old.
    /// The manifests of the images served now (the latest pack of each): the collector's
    /// roots, since the store has no tag for them.
    /// Sets who is told of images packed anew (once; later calls are ignored).
    pub fn on_packed(&self, hook: PackedHook) {
        let _ = self.on_packed.set(hook);
    }

    pub fn served(&self) -> Vec<Digest> {
        let mut images: Vec<Arc<Image>> = {
            let map = self.root_images.lock().unwrap_or_else(|p| p.into_inner());
            map.values().cloned().collect()
        };
        {
            let map = self
                .package_images
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            images.extend(map.iter().map(|(_, i)| i.clone()));
        }
        let explicit = self.explicit.values().flat_map(|tags| tags.values());
        let mut served: Vec<Digest> = explicit.filter_map(|e| e.image.packed()).collect();
        served.extend(images.drain(..).filter_map(|i| i.packed()));
        served
    }

    /// The manifest of `name`'s latest image as last packed, if it has been packed since
    /// start (for the web page: a program not packed yet is packed by its first pull).
    pub fn packed(&self, name: &Name) -> Option<Digest> {
        if let Some(tags) = self.explicit.get(name) {
            return tags
                .get(&Tag::latest())
                .or_else(|| tags.values().next())
                .and_then(|e| e.image.packed());
        }
        let roots = self.root_images.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(image) = roots.get(name) {
            return image.packed();
        }
        drop(roots);
        let packages = self
            .package_images
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        packages.peek(name).and_then(|i| i.packed())
    }

    pub async fn names(&self) -> Vec<Name> {
        let mut names: BTreeSet<Name> = self.explicit.keys().cloned().collect();
        if let Some(root) = &self.root {
            names.extend(root.names(false).await);
        }
        names.into_iter().collect()
    }

    /// The manifest of `image` made of `inputs`, whose top-level files look like `stamps`:
    /// the outcome depends on them, so a changed file is a new pack on this very request.
    async fn resolve(
        &self,
        name: &Name,
        image: &Image,
        inputs: Vec<Input>,
        how: How,
        stamps: Vec<Option<FileStamp>>,
    ) -> Result<Digest, Arc<ResolveError>> {
        let label = image.label.clone();
        let reuse = |outcome: &Outcome, at: Instant| {
            at.elapsed() < RECHECK && outcome.as_ref().map_or(true, |r| r.settled)
        };
        let (store, opts, slots) = (self.store.clone(), self.opts, self.slots.clone());
        let machine = self.machine.clone();
        let threads = self.threads;
        let name = name.clone();
        let on_packed = self.on_packed.get().cloned();
        // An image packed again to the same manifest (its inputs not settled yet) is no news.
        let before = image
            .flight
            .latest()
            .and_then(|o| o.ok())
            .map(|r| r.manifest);
        let work = {
            let label = label.clone();
            move || {
                let span = tracing::info_span!("pack", image = %label);
                async move {
                    let mut run = how.run.apply(pack::default_run_config(&inputs, opts.mtime));
                    let packing = Packing {
                        cache: true,
                        progress: Some(progress::reporter(&label)),
                        slots: Some(slots),
                        threads,
                    };
                    // Linked into the repository, so its blobs are served through it.
                    let packed = async {
                        let closure = pack::closure(how.closure, &machine, &how.packages).await?;
                        if run.entrypoint.is_none() {
                            run.entrypoint = closure.packages_entrypoint();
                        }
                        let img = pack::pack_image_with(
                            &store, &inputs, &closure, opts, &run, None, &packing,
                        )
                        .await?;
                        pack::link_image(&store, &name, &img).await?;
                        Ok::<_, pack::PackError>(img)
                    }
                    .await;
                    match packed {
                        Ok(img) => {
                            if !img.cached()
                                && before.as_ref() != Some(&img.manifest.0)
                                && let Some(hook) = &on_packed
                            {
                                hook(&name, &label, &img.manifest.0, img.manifest.1);
                            }
                            Ok(Resolved {
                                settled: img.settled(),
                                manifest: img.manifest.0,
                            })
                        }
                        Err(source) => {
                            let error = ResolveError::Pack {
                                image: label,
                                source,
                            };
                            tracing::error!("{error}");
                            Err(Arc::new(error))
                        }
                    }
                }
                .instrument(span)
            }
        };
        match image.flight.get(stamps, reuse, work).await {
            Some((outcome, joined)) => {
                if joined == Joined::Waited {
                    tracing::debug!(image = %label, "waited for a pack in flight");
                }
                outcome.map(|r| r.manifest)
            }
            None => Err(Arc::new(ResolveError::Crashed { image: label })),
        }
    }
}

/// The inputs' stamps as they are now; a missing input stamps as `None` (and its pack fails
/// with a clear error).
async fn stamps(inputs: &[Input]) -> Vec<Option<FileStamp>> {
    let sources: Vec<PathBuf> = inputs.iter().map(|i| i.source.clone()).collect();
    tokio::task::spawn_blocking(move || {
        sources
            .iter()
            .map(|s| std::fs::metadata(s).ok().map(|m| FileStamp::of(&m)))
            .collect()
    })
    .await
    .unwrap_or_else(|_| vec![None; inputs.len()])
}

impl Image {
    /// The manifest of its latest pack, if one succeeded.
    fn packed(&self) -> Option<Digest> {
        self.flight
            .latest()
            .and_then(|o| o.ok())
            .map(|r| r.manifest)
    }

    fn new(label: String) -> Image {
        Image {
            label,
            flight: Flight::default(),
        }
    }
}
