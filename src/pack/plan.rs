//! The plan of an image: every entry it will hold, sorted by path, each parent directory once,
//! found from the inputs and what they need to run. Only metadata is read here (and ELF
//! headers, and the md5 of conffiles); the bytes are read when the layers are written.
//!
//! What an image needs to run, beyond its inputs ([`Closure`]):
//! - `Elf`: every ELF object in the image brings its interpreter and libraries (today's
//!   self-image; files of no package).
//! - `Packages`: that, and every file of an installed package (and, recursively, of what it
//!   depends on) when a file in the image belongs to one, plus a minimal base (users,
//!   `/tmp`, the CA bundle). Only what the package shipped, unedited and world-readable,
//!   leaves the machine.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Input, PackError};
use crate::runtime::elf;
use crate::runtime::packages::{self, Conffile, PackageDb, PkgId};
use crate::store::FileStamp;

/// How far beyond its inputs an image reaches (see the module doc).
#[derive(Clone, Debug, Default)]
pub enum Closure {
    #[default]
    Elf,
    /// With the machine's package database.
    Packages(Packaged),
}

/// What an image with packages holds beyond the packages of its files.
#[derive(Clone, Debug)]
pub struct Packaged {
    pub db: Arc<dyn PackageDb>,
    /// Debian's Essential set (coreutils, sed, gzip, tar, bash, ...), which every package
    /// may use undeclared; without it, only the package of `/bin/sh`.
    pub essential: bool,
    /// Installed `Recommends` are followed, as apt followed them when it installed.
    pub recommends: bool,
    /// Packages the image holds whatever its files are (`pkgs/...` images, `+PKG`).
    pub named: Vec<PkgId>,
}

/// The minimal base of an image that holds packages: files made in memory and written where
/// they can be packed from, the host files that belong in it, directories with a mode, and
/// the machine's top-level symlinks (`bin -> usr/bin`), so paths such as `/bin/sh` resolve.
#[derive(Clone, Debug, Default)]
pub struct Base {
    /// (image path, host file): `/etc/passwd` from its made copy, the host's CA bundle.
    pub files: Vec<(PathBuf, PathBuf)>,
    /// (image path, mode): `/tmp` 1777, `/root` 0700.
    pub dirs: Vec<(PathBuf, u32)>,
    /// (image path, target): `/bin` -> `usr/bin`.
    pub links: Vec<(PathBuf, PathBuf)>,
}

/// What one tar entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    File {
        source: PathBuf,
        /// The file when planned: its size goes in the header, a file that changes while
        /// packed is an error, and the layer cache keys on it.
        stamp: FileStamp,
    },
    Symlink {
        target: PathBuf,
    },
}

/// One tar entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// Permission bits, masked to 0o7777.
    pub(super) mode: u32,
    pub(super) kind: Kind,
    /// Why it is in the image: conflict messages name both sides by it.
    origin: Origin,
}

impl Entry {
    /// A directory only implied by what is below it (every layer holding something below it
    /// has it too).
    pub(super) fn implied(&self) -> bool {
        matches!(self.origin, Origin::Parent(_))
    }
}

/// Why an entry is in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// A host path named as an input, or found inside an input directory.
    Input(PathBuf),
    /// A host path the executable `exe` needs at run time (interpreter, library, symlink).
    Runtime { host: PathBuf, exe: PathBuf },
    /// A file of an installed package.
    Package { host: PathBuf, package: String },
    /// The minimal base of an image with packages.
    Base(PathBuf),
    /// A directory no input names, implied by what goes below it.
    Parent(Box<Origin>),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Input(p) => write!(f, "input {}", p.display()),
            Origin::Runtime { host, exe } => {
                write!(f, "{} (needed to run {})", host.display(), exe.display())
            }
            Origin::Package { host, package } => {
                write!(f, "{} (of package {package})", host.display())
            }
            Origin::Base(p) => write!(f, "the image's base {}", p.display()),
            Origin::Parent(below) => write!(f, "the directory above {below}"),
        }
    }
}

/// Who is adding entries: an input, or the runtime closure of an executable.
enum Adding<'a> {
    Input,
    Runtime(&'a Path),
}

impl Adding<'_> {
    fn origin(&self, host: &Path) -> Origin {
        match self {
            Adding::Input => Origin::Input(host.to_owned()),
            Adding::Runtime(exe) => Origin::Runtime {
                host: host.to_owned(),
                exe: exe.to_path_buf(),
            },
        }
    }
}

/// The image's contents, keyed by path in the image (relative, no leading `/`). `PathBuf`
/// orders by component, so a directory always precedes what it contains.
pub(super) type Plan = BTreeMap<PathBuf, Entry>;

/// A planned image: its entries, and what the closure added.
#[derive(Debug, Default)]
pub(super) struct Planned {
    pub(super) plan: Plan,
    /// Image paths added as the runtime closure of ELF objects, in the order found.
    pub(super) runtime: Vec<PathBuf>,
    /// The packages whose files are in the image, each with the image paths of its files (at
    /// the paths the package put them): its layer, the same in every image that holds it.
    pub(super) packages: BTreeMap<PkgId, Vec<PathBuf>>,
    /// Image directories of libraries the loader finds only through the machine's
    /// ld.so.conf: the image's `LD_LIBRARY_PATH`.
    pub(super) library_path: Vec<PathBuf>,
    /// The owners and groups of the packages' files on the machine: the users and groups
    /// the image's `/etc/passwd` and `/etc/group` must know.
    pub(super) uids: BTreeSet<u32>,
    pub(super) gids: BTreeSet<u32>,
    /// The Essential set with what it needs: one layer, the same in every image of the
    /// machine that has it.
    pub(super) essential: BTreeSet<PkgId>,
}

/// Walks the inputs (metadata only) into a sorted plan of entries, with every parent
/// directory present once, plus what `closure` says they need to run. Fails on a missing or
/// unsupported input, or a library of a named input that cannot be found, before any byte is
/// packed.
pub(super) fn plan(inputs: &[Input], closure: &Closure) -> Result<Planned, PackError> {
    let mut planned = Planned::default();
    let plan = &mut planned.plan;
    // Files named as inputs: their closure failing fails the pack; a library inside a
    // directory whose dependency is missing is only warned of.
    let mut named = HashSet::new();
    for input in inputs {
        let meta = match input.follow {
            true => std::fs::metadata(&input.source),
            false => std::fs::symlink_metadata(&input.source),
        };
        let meta = meta.map_err(|source| PackError::Read {
            path: input.source.clone(),
            source,
        })?;
        let mut dest = PathBuf::from(input.dest.trim_start_matches('/'));
        if meta.is_file() {
            if let Closure::Packages(p) = closure
                && p.db.owner(&input.source).is_some()
                && meta.permissions().mode() & 0o004 == 0
            {
                return Err(PackError::BadInput {
                    spec: input.source.display().to_string(),
                    why: "belongs to a package but is not world-readable: an image with its package holds only what anyone on the machine may read",
                });
            }
            // A program that finds its libraries through `$ORIGIN/..` (a toolchain's
            // `bin/../lib`) keeps the layout it was installed in: packed at its own path, with
            // `dest` a symlink to it (the loader's `$ORIGIN` is where the file really is).
            if let Some(real) = keeps_its_layout(&input.source)?
                && real != Path::new("/").join(&dest)
            {
                let link = Entry {
                    mode: 0o777,
                    kind: Kind::Symlink {
                        target: real.clone(),
                    },
                    origin: Origin::Input(input.source.clone()),
                };
                add_parents(plan, &dest, &link.origin)?;
                insert(plan, dest, link)?;
                dest = real.strip_prefix("/").unwrap_or(&real).to_owned();
            }
            named.insert(dest.clone());
        }
        add_parents(plan, &dest, &Adding::Input.origin(&input.source))?;
        add(plan, dest, &input.source, &meta, &Adding::Input)?;
    }

    let packaged = match closure {
        Closure::Elf => None,
        Closure::Packages(p) => Some(p),
    };
    let mut examined: HashSet<PathBuf> = HashSet::new();
    let mut owned_checked: HashSet<PathBuf> = HashSet::new();
    let mut included: BTreeSet<PkgId> = BTreeSet::new();
    // The image's own packages (of its inputs, named, completing or doing a wrapper's
    // work): their installed Recommends are followed, one level, as the programs count on
    // them (gcc on libc6-dev). A library's recommendations are not (libgl1's mesa drivers).
    let mut recommending: BTreeSet<PkgId> = BTreeSet::new();
    let mut canonical = Canonical::default();
    let mut interpreter: Option<PathBuf> = None;
    // To a fixed point: ELF objects bring libraries, files of packages bring their packages,
    // whose files may be ELF objects needing more.
    loop {
        let mut grew = false;
        // Every ELF file in the image not yet looked at: executables first, so a shared
        // library is searched for as their interpreter searches.
        let mut objects = Vec::new();
        for (dest, entry) in planned.plan.iter() {
            if let Kind::File { source, .. } = &entry.kind
                && !examined.contains(dest)
            {
                objects.push((dest.clone(), source.clone()));
            }
        }
        let mut infos = Vec::new();
        for (dest, source) in objects {
            examined.insert(dest.clone());
            let info = match elf::read_elf(&source) {
                Ok(Some(info)) => info,
                Ok(None) => continue,
                Err(e) if named.contains(&dest) => return Err(e.into()),
                Err(e) => {
                    tracing::debug!(error = %e, "not closed over");
                    continue;
                }
            };
            if interpreter.is_none() {
                interpreter = info.interpreter.clone();
            }
            infos.push((dest, source, info));
        }
        infos.sort_by_key(|(_, _, info)| info.interpreter.is_none());
        for (dest, source, info) in infos {
            let image_path = Path::new("/").join(&dest);
            let needs = match elf::closure(&source, &image_path, &info, interpreter.as_deref()) {
                Ok(needs) => needs,
                Err(e) if named.contains(&dest) => return Err(e.into()),
                Err(e) => {
                    // A plugin of a package whose optional library is not installed, say:
                    // it could not load on the machine either.
                    tracing::warn!(error = %e, "a library in the image needs one that cannot be found; packed without it");
                    continue;
                }
            };
            let adding = Adding::Runtime(&source);
            for needed in needs.items {
                let dest = needed
                    .image
                    .strip_prefix("/")
                    .unwrap_or(&needed.image)
                    .to_owned();
                add_parents(&mut planned.plan, &dest, &adding.origin(&needed.host))?;
                let meta =
                    std::fs::symlink_metadata(&needed.host).map_err(|source| PackError::Read {
                        path: needed.host.clone(),
                        source,
                    })?;
                if !planned.plan.contains_key(&dest) {
                    planned.runtime.push(needed.image.clone());
                    grew = true;
                }
                add(&mut planned.plan, dest, &needed.host, &meta, &adding)?;
            }
            for dir in needs.conf_dirs {
                if !planned.library_path.contains(&dir) {
                    planned.library_path.push(dir);
                }
            }
        }
        let Some(packaged) = packaged else { break };
        let db = packaged.db.as_ref();
        // Packages of the files in the image; a named input's package is completed by
        // those of the same source that depend on it (python3 for python3-minimal).
        let mut seeds = Vec::new();
        if included.is_empty() {
            seeds.extend(packaged.named.iter().copied());
            recommending.extend(packaged.named.iter().copied());
        }
        for (dest, entry) in planned.plan.iter() {
            let host = match &entry.kind {
                Kind::File { source, .. } => source.clone(),
                Kind::Symlink { .. } | Kind::Dir => match &entry.origin {
                    Origin::Input(h) | Origin::Runtime { host: h, .. } => h.clone(),
                    _ => continue,
                },
            };
            if entry.kind == Kind::Dir || !owned_checked.insert(dest.clone()) {
                continue;
            }
            let mut owners: Vec<PkgId> = db.owner(&host).into_iter().collect();
            let input = matches!(entry.origin, Origin::Input(_));
            // A named symlink is followed: its target's package too (python3 → python3.11).
            if let Ok(real) = std::fs::canonicalize(&host)
                && real != host
                && let Some(owner) = db.owner(&real)
            {
                owners.push(owner);
                // A wrapper called by another name (psql → pg_wrapper) runs the program of
                // that name from a package that depends on the wrapper's.
                if input
                    && let (Some(called), Some(real_name)) = (host.file_name(), real.file_name())
                    && called != real_name
                    && let Some(called) = called.to_str()
                {
                    let workers = db.wrapped(owner, called);
                    recommending.extend(workers.iter().copied());
                    seeds.extend(workers);
                }
            }
            for owner in owners {
                if !included.contains(&owner) {
                    seeds.push(owner);
                    if named.contains(dest) || input {
                        let completion = db.completion(owner);
                        recommending.insert(owner);
                        recommending.extend(completion.iter().copied());
                        seeds.extend(completion);
                    }
                }
            }
        }
        if seeds.is_empty() {
            break;
        }
        // Debian's Essential packages are needed without being declared: a Makefile's
        // recipes, a git hook or a shell script use echo, sed, tar, gzip. Without them an
        // image with packages still gets the shell programs run commands through (git runs
        // git-upload-pack so): the package of /bin/sh (dash).
        if included.is_empty() && packaged.essential {
            let essential = db.essential();
            planned.essential = db
                .closure(&essential, &BTreeSet::new())
                .into_iter()
                .collect();
            seeds.extend(essential);
        }
        if let Some(shell) = db.owner(&db.root().join(crate::runtime::base::SHELL))
            && !included.contains(&shell)
        {
            seeds.push(shell);
        }
        seeds.extend(included.iter().copied());
        let none = BTreeSet::new();
        let follow = if packaged.recommends {
            &recommending
        } else {
            &none
        };
        for package in db.closure(&seeds, follow) {
            if included.insert(package) {
                let paths = add_package(&mut planned, db, package, &mut canonical);
                planned.packages.insert(package, paths);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    Ok(planned)
}

/// Most layers an image is split into: every layer is a request and a mount, and runtimes
/// refuse images of more than about 125.
pub(super) const MAX_LAYERS: usize = 100;

/// One layer of an image: what it holds (a package's files, several packages', or the
/// image's own), and its entries with the directories above them.
pub(super) struct LayerPlan {
    pub(super) label: String,
    pub(super) plan: Plan,
}

/// The layers of a planned image, bottom first. An image without packages is one layer, as
/// it always was. With packages, the Essential set (and what it needs) is the bottom layer,
/// the same in every image of the machine; then each other package is a layer of its own,
/// the most depended-on first, so images that share packages share those layers and, as
/// far as they agree from the bottom up, the chain of layers a runtime keys them by; past
/// `MAX_LAYERS - 2` packages the least depended-on share one layer. The image's own files
/// (inputs, base, files of no package) are the top layer.
pub(super) fn layers(planned: &Planned, db: Option<&dyn PackageDb>) -> Vec<LayerPlan> {
    let Some(db) = db.filter(|_| !planned.packages.is_empty()) else {
        return vec![LayerPlan {
            label: "image".to_owned(),
            plan: planned.plan.clone(),
        }];
    };
    let mut groups: Vec<(String, BTreeSet<&PathBuf>)> = Vec::new();
    if !planned.essential.is_empty() {
        let paths = planned
            .packages
            .iter()
            .filter(|(p, _)| planned.essential.contains(p))
            .flat_map(|(_, paths)| paths);
        groups.push(("essential packages".to_owned(), paths.collect()));
    }
    let mut order: Vec<PkgId> = planned
        .packages
        .keys()
        .copied()
        .filter(|p| !planned.essential.contains(p))
        .collect();
    order.sort_by(|a, b| {
        db.dependents(*b)
            .cmp(&db.dependents(*a))
            .then_with(|| db.name(*a).cmp(db.name(*b)))
    });
    let own = order.len().min(MAX_LAYERS - 2 - groups.len());
    for (i, package) in order.iter().enumerate() {
        let paths = planned.packages[package].iter();
        if i < own {
            groups.push((db.name(*package).to_owned(), paths.collect()));
        } else {
            if i == own {
                groups.push(("other packages".to_owned(), BTreeSet::new()));
            }
            if let Some((_, rest)) = groups.last_mut() {
                rest.extend(paths);
            }
        }
    }
    let in_packages: HashSet<&PathBuf> =
        groups.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let top: BTreeSet<&PathBuf> = planned
        .plan
        .iter()
        .filter(|(path, entry)| !entry.implied() && !in_packages.contains(path))
        .map(|(path, _)| path)
        .collect();
    groups.push(("image".to_owned(), top));
    // A package of nothing but directories once documentation is left out (gcc-12-base)
    // makes no layer: its directories are above other layers' files anyway.
    groups.retain(|(label, paths)| {
        label == "image"
            || paths
                .iter()
                .any(|p| planned.plan.get(*p).is_some_and(|e| e.kind != Kind::Dir))
    });
    groups
        .into_iter()
        .map(|(label, paths)| {
            let mut plan = Plan::new();
            for path in paths {
                // The directories above, as the image has them (the host's mode, or 0755).
                for parent in path.ancestors().skip(1) {
                    if parent.as_os_str().is_empty() || plan.contains_key(parent) {
                        continue;
                    }
                    if let Some(entry) = planned.plan.get(parent) {
                        plan.insert(parent.to_owned(), entry.clone());
                    }
                }
                if let Some(entry) = planned.plan.get(path) {
                    plan.insert(path.clone(), entry.clone());
                }
            }
            LayerPlan { label, plan }
        })
        .collect()
}

/// Whether the ELF file `source` finds libraries through `$ORIGIN/..`; if so, where it
/// really is, which is where it must be in the image for those libraries to be found.
fn keeps_its_layout(source: &Path) -> Result<Option<PathBuf>, PackError> {
    let Some(info) = elf::read_elf(source)? else {
        return Ok(None);
    };
    let escapes = info
        .rpath
        .iter()
        .chain(&info.runpath)
        .any(|d| d.starts_with("$ORIGIN/..") || d.starts_with("${ORIGIN}/.."));
    if !escapes {
        return Ok(None);
    }
    std::fs::canonicalize(source)
        .map(Some)
        .map_err(|e| PackError::Read {
            path: source.to_owned(),
            source: e,
        })
}

/// Host directories with their symlinks resolved, remembered: a package lists
/// `/lib/x86_64-linux-gnu/libc.so.6`, which on a merged-`/usr` machine is packed as
/// `usr/lib/...` beside the rest of `/usr/lib` (and `lib` is a symlink of the image's base).
#[derive(Default)]
struct Canonical(HashMap<PathBuf, Option<PathBuf>>);

impl Canonical {
    fn dir(&mut self, dir: &Path) -> Option<PathBuf> {
        self.0
            .entry(dir.to_owned())
            .or_insert_with(|| std::fs::canonicalize(dir).ok())
            .clone()
    }

    /// Where `path` is: its directory resolved, its last component kept (a symlink stays one).
    fn path(&mut self, path: &Path) -> Option<PathBuf> {
        match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => Some(self.dir(dir)?.join(name)),
            _ => Some(path.to_owned()),
        }
    }
}

/// Adds the files of `package` that may leave the machine: not documentation, readable by
/// anyone (in a folder anyone can read), and for a conffile, unedited. What is left out is
/// logged; a file in the way of another is left out too, not a failure. Returns the image
/// paths of the package's files in the image.
fn add_package(
    planned: &mut Planned,
    db: &dyn PackageDb,
    package: PkgId,
    canonical: &mut Canonical,
) -> Vec<PathBuf> {
    let name = db.name(package).to_owned();
    let mut paths = Vec::new();
    let mut hidden_dirs: Vec<PathBuf> = Vec::new();
    for file in db.files(package) {
        let Some(host) = canonical.path(&file.host) else {
            continue; // gone since it was installed
        };
        let in_image = Path::new("/").join(host.strip_prefix(db.root()).unwrap_or(&host));
        if packages::left_out(&in_image) || hidden_dirs.iter().any(|d| host.starts_with(d)) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if meta.is_dir() && mode & 0o005 != 0o005 {
            tracing::warn!(package = %name, dir = %host.display(), "not packed: the folder is not readable by everyone");
            hidden_dirs.push(host);
            continue;
        }
        if meta.is_file() && mode & 0o004 == 0 {
            tracing::warn!(package = %name, file = %host.display(), "not packed: the file is not readable by everyone");
            continue;
        }
        match &file.conffile {
            Conffile::No => {}
            Conffile::Shipped(md5) => match packages::conffile_unchanged(&host, md5) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(package = %name, file = %host.display(), "not packed: the configuration file was changed on this machine");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(package = %name, file = %host.display(), error = %e, "not packed: cannot read the configuration file");
                    continue;
                }
            },
            Conffile::Unverifiable => continue,
        }
        // Where it is below the machine's root is where it goes in the image.
        let Ok(dest) = host.strip_prefix(db.root()).map(Path::to_owned) else {
            continue;
        };
        if dest.as_os_str().is_empty() {
            continue;
        }
        let origin = Origin::Package {
            host: host.clone(),
            package: name.clone(),
        };
        let entry = match entry_for(&host, &meta, origin.clone()) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(package = %name, error = %e, "not packed");
                continue;
            }
        };
        let plan = &mut planned.plan;
        match add_parents(plan, &dest, &origin).and_then(|()| insert(plan, dest.clone(), entry)) {
            Ok(()) => {
                // Who owns it on the machine: the users and groups the image must know.
                use std::os::unix::fs::MetadataExt;
                planned.uids.insert(meta.uid());
                planned.gids.insert(meta.gid());
                paths.push(dest)
            }
            Err(e) => {
                tracing::warn!(package = %name, error = %e, "not packed: another file is in the way")
            }
        }
    }
    paths
}

/// The minimal base: its files, directories and top-level symlinks, in the top layer.
pub(super) fn add_base(plan: &mut Plan, base: &Base) -> Result<(), PackError> {
    for (dest, target) in &base.links {
        let dest = dest.strip_prefix("/").unwrap_or(dest).to_owned();
        let origin = Origin::Base(Path::new("/").join(&dest));
        let link = Entry {
            mode: 0o777,
            kind: Kind::Symlink {
                target: target.clone(),
            },
            origin,
        };
        // Something of the image at that path already (a library's own `lib64` link): kept.
        plan.entry(dest).or_insert(link);
    }
    for (dest, mode) in &base.dirs {
        let dest = dest.strip_prefix("/").unwrap_or(dest).to_owned();
        let origin = Origin::Base(Path::new("/").join(&dest));
        add_parents(plan, &dest, &origin)?;
        // A package's directory of that name (base-files' /tmp) keeps its own entry.
        plan.entry(dest).or_insert(Entry {
            mode: *mode,
            kind: Kind::Dir,
            origin,
        });
    }
    for (dest, host) in &base.files {
        let dest = dest.strip_prefix("/").unwrap_or(dest).to_owned();
        let origin = Origin::Base(Path::new("/").join(&dest));
        let meta = std::fs::metadata(host).map_err(|source| PackError::Read {
            path: host.clone(),
            source,
        })?;
        let entry = entry_for(host, &meta, origin.clone())?;
        add_parents(plan, &dest, &origin)?;
        insert(plan, dest, entry)?;
    }
    Ok(())
}

/// Every directory above `dest`, mode 0755 unless an input gives it. A non-directory in the
/// way is a conflict: the tar would have to go through a file or a symlink.
fn add_parents(plan: &mut Plan, dest: &Path, below: &Origin) -> Result<(), PackError> {
    for parent in dest.ancestors().skip(1) {
        if parent.as_os_str().is_empty() {
            continue;
        }
        let implied = Origin::Parent(Box::new(below.clone()));
        let existing = plan.entry(parent.to_owned()).or_insert(Entry {
            mode: 0o755,
            kind: Kind::Dir,
            origin: implied.clone(),
        });
        if existing.kind != Kind::Dir {
            return Err(PackError::Conflict {
                dest: format!("/{}", parent.display()),
                first: existing.origin.to_string(),
                second: implied.to_string(),
            });
        }
    }
    Ok(())
}

/// The entry for one host path, as it is: a directory, a file, or a symlink.
fn entry_for(source: &Path, meta: &std::fs::Metadata, origin: Origin) -> Result<Entry, PackError> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File {
            source: source.to_owned(),
            stamp: FileStamp::of(meta),
        }
    } else if ft.is_symlink() {
        Kind::Symlink {
            target: std::fs::read_link(source).map_err(|e| PackError::Read {
                path: source.to_owned(),
                source: e,
            })?,
        }
    } else {
        return Err(PackError::Unsupported {
            path: source.to_owned(),
            kind: special_kind(meta),
        });
    };
    Ok(Entry {
        mode: if ft.is_symlink() {
            0o777
        } else {
            meta.permissions().mode() & 0o7777
        },
        kind,
        origin,
    })
}

/// Puts `entry` at `dest`. Two directories merge (an explicit one's mode wins over an
/// implied one's); the same file or symlink reached twice is one entry (a library two
/// executables need, which its package lists too); anything else is a conflict.
fn insert(plan: &mut Plan, dest: PathBuf, entry: Entry) -> Result<(), PackError> {
    match plan.get_mut(&dest) {
        None => {
            plan.insert(dest, entry);
        }
        Some(existing) if existing.kind == Kind::Dir && entry.kind == Kind::Dir => {
            if matches!(existing.origin, Origin::Parent(_)) {
                *existing = entry;
            }
        }
        Some(existing) if existing.kind == entry.kind && existing.mode == entry.mode => {}
        Some(existing) => {
            return Err(PackError::Conflict {
                dest: format!("/{}", dest.display()),
                first: existing.origin.to_string(),
                second: entry.origin.to_string(),
            });
        }
    }
    Ok(())
}

/// Adds one host path (and, for a directory, everything below it in sorted order).
fn add(
    plan: &mut Plan,
    dest: PathBuf,
    source: &Path,
    meta: &std::fs::Metadata,
    adding: &Adding,
) -> Result<(), PackError> {
    let read_err = |source_err: io::Error| PackError::Read {
        path: source.to_owned(),
        source: source_err,
    };
    let entry = entry_for(source, meta, adding.origin(source))?;
    let is_dir = entry.kind == Kind::Dir;
    // `dest` empty means the image root: only a directory's contents can go there.
    if !dest.as_os_str().is_empty() {
        insert(plan, dest.clone(), entry)?;
    } else if !is_dir {
        return Err(PackError::BadInput {
            spec: source.display().to_string(),
            why: "only a directory can be placed at /",
        });
    }
    if is_dir {
        let mut children = std::fs::read_dir(source)
            .map_err(read_err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()
            .map_err(read_err)?;
        children.sort();
        for name in children {
            let child = source.join(&name);
            let meta = std::fs::symlink_metadata(&child).map_err(|e| PackError::Read {
                path: child.clone(),
                source: e,
            })?;
            add(plan, dest.join(&name), &child, &meta, adding)?;
        }
    }
    Ok(())
}

fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_fifo() {
        "named pipe"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_orders_parents_first_and_rejects_conflicts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("d/sub")).expect("mkdir");
        std::fs::write(root.join("d/sub/z"), b"z").expect("write");
        std::fs::write(root.join("d/a-b"), b"ab").expect("write");
        std::fs::write(root.join("f"), b"f").expect("write");
        let inputs = [
            Input::at(root.join("d"), "/opt/d", "d").expect("input"),
            Input::at(root.join("f"), "/opt/f", "f").expect("input"),
        ];
        let p = plan(&inputs, &Closure::Elf).expect("plan").plan;
        let paths: Vec<_> = p.keys().map(|k| k.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "opt",
                "opt/d",
                "opt/d/a-b",
                "opt/d/sub",
                "opt/d/sub/z",
                "opt/f"
            ]
        );
        assert_eq!(p[Path::new("opt")].mode, 0o755);

        let clash = [
            Input::at(root.join("f"), "/x", "f").expect("input"),
            Input::at(root.join("d/a-b"), "/x", "a-b").expect("input"),
        ];
        let err = plan(&clash, &Closure::Elf)
            .expect_err("conflict")
            .to_string();
        assert!(err.contains("both go to /x"), "{err}");
    }

    /// A machine of its own in a folder: a dpkg database and the files it lists.
    fn fake_machine() -> (tempfile::TempDir, Arc<dyn PackageDb>) {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let write = |path: &str, body: &str, mode: u32| {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, body).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        let md5 = |body: &str| {
            use md5::Digest as _;
            hex::encode(md5::Md5::digest(body.as_bytes()))
        };
        write("usr/bin/app", "#!/bin/sh\n", 0o755);
        write("usr/lib/libfoo.so", "foo", 0o644);
        write("usr/lib/virt/impl", "provided", 0o644);
        write("usr/lib/app/private", "root only", 0o600);
        write("usr/share/doc/app/copyright", "docs", 0o644);
        write("etc/app.conf", "shipped = yes\n", 0o644);
        write("etc/secret.conf", "password = hunter2\n", 0o644);
        write("usr/lib/extra/plugin", "extra", 0o644);
        write("usr/bin/other", "other", 0o755);
        write("usr/lib/unrelated", "no", 0o644);
        write("usr/lib/recommended", "rec", 0o644);
        write("usr/lib/deep", "deep", 0o644);
        write("usr/lib/lib-rec", "lib-rec", 0o644);
        write("usr/bin/ess", "essential", 0o755);
        write("usr/lib/ess-dep", "what ess needs", 0o644);
        write("usr/bin/tool", "tool", 0o755);
        write("usr/lib/tool/stdlib", "tool's library", 0o644);
        write("usr/share/wrap/wrapper", "#!/bin/sh\n", 0o755);
        std::os::unix::fs::symlink("../share/wrap/wrapper", root.join("usr/bin/wtool"))
            .expect("symlink");
        write("usr/lib/wrap/15/bin/wtool", "the real wtool", 0o755);
        let status = format!(
            "Package: app\nStatus: install ok installed\nArchitecture: amd64\nInstalled-Size: 10\n\
             Depends: libfoo (>= 1), missing-thing | virt\nRecommends: rec-pkg, not-installed\n\
             Conffiles:\n /etc/app.conf {}\n /etc/secret.conf {}\n\n\
             Package: app-extra\nStatus: install ok installed\nSource: app\nDepends: app\n\n\
             Package: libfoo\nStatus: install ok installed\nArchitecture: amd64\nInstalled-Size: 3\nRecommends: lib-rec\n\n\
             Package: lib-rec\nStatus: install ok installed\n\n\
             Package: rec-pkg\nStatus: install ok installed\nRecommends: deep\n\n\
             Package: deep\nStatus: install ok installed\n\n\
             Package: provider\nStatus: install ok installed\nProvides: virt\n\n\
             Package: other\nStatus: install ok installed\nDepends: libfoo\n\n\
             Package: unrelated\nStatus: install ok installed\n\n\
             Package: ess\nStatus: install ok installed\nEssential: yes\nDepends: ess-dep\n\n\
             Package: ess-dep\nStatus: install ok installed\n\n\
             Package: tool-minimal\nStatus: install ok installed\nSource: tool-src\n\n\
             Package: tool\nStatus: install ok installed\nSource: tool-src\nDepends: tool-minimal\n\n\
             Package: wrap-common\nStatus: install ok installed\n\n\
             Package: wrap-15\nStatus: install ok installed\nDepends: wrap-common, libfoo\n\n\
             Package: removed\nStatus: deinstall ok config-files\n",
            md5("shipped = yes\n"),
            md5("password = changed-by-the-admin\n"),
        );
        write("var/lib/dpkg/status", &status, 0o644);
        let lists = [
            (
                "app",
                "/.\n/usr\n/usr/bin\n/usr/bin/app\n/usr/lib\n/usr/lib/app\n/usr/lib/app/private\n/usr/share/doc/app/copyright\n/etc\n/etc/app.conf\n/etc/secret.conf\n",
            ),
            ("app-extra", "/usr/lib/extra\n/usr/lib/extra/plugin\n"),
            ("libfoo:amd64", "/usr/lib\n/usr/lib/libfoo.so\n"),
            ("lib-rec", "/usr/lib/lib-rec\n"),
            ("rec-pkg", "/usr/lib/recommended\n"),
            ("deep", "/usr/lib/deep\n"),
            ("provider", "/usr/lib/virt\n/usr/lib/virt/impl\n"),
            ("other", "/usr/bin/other\n"),
            ("unrelated", "/usr/lib/unrelated\n"),
            ("ess", "/usr/bin/ess\n"),
            ("ess-dep", "/usr/lib/ess-dep\n"),
            ("tool-minimal", "/usr/bin/tool\n"),
            ("tool", "/usr/lib/tool\n/usr/lib/tool/stdlib\n"),
            ("wrap-common", "/usr/share/wrap/wrapper\n/usr/bin/wtool\n"),
            ("wrap-15", "/usr/lib/wrap/15/bin/wtool\n"),
        ];
        for (name, list) in lists {
            write(&format!("var/lib/dpkg/info/{name}.list"), list, 0o644);
        }
        let db = crate::runtime::dpkg::Database::load(root)
            .expect("load")
            .expect("a database");
        (dir, Arc::new(db))
    }

    fn packaged(db: &Arc<dyn PackageDb>, essential: bool, named: &[&str]) -> Closure {
        Closure::Packages(Packaged {
            db: db.clone(),
            essential,
            recommends: true,
            named: named
                .iter()
                .map(|n| db.find(n).expect("installed"))
                .collect(),
        })
    }

    fn names(db: &Arc<dyn PackageDb>, planned: &Planned) -> Vec<String> {
        let mut names: Vec<String> = planned
            .packages
            .keys()
            .map(|p| db.name(*p).to_owned())
            .collect();
        names.sort();
        names
    }

    /// A plan's entries as the tar has them (why each is there aside).
    fn bytes(p: &Plan) -> Vec<(PathBuf, u32, Kind)> {
        p.iter()
            .map(|(k, e)| (k.clone(), e.mode, e.kind.clone()))
            .collect()
    }

    #[test]
    fn packages_bring_their_dependencies_but_no_docs_edits_or_private_files() {
        let (dir, db) = fake_machine();
        let root = dir.path();
        let closure = packaged(&db, false, &[]);
        let inputs = [Input::at(root.join("usr/bin/app"), "/app", "app").expect("input")];
        let planned = plan(&inputs, &closure).expect("plan");
        let has = |p: &str| planned.plan.contains_key(Path::new(p));
        for present in [
            "app",
            "usr/bin/app",
            "usr/lib/libfoo.so",
            "usr/lib/virt/impl",
            "etc/app.conf",
            "usr/lib/recommended",
        ] {
            assert!(
                has(present),
                "{present} is missing: {:?}",
                planned.plan.keys()
            );
        }
        for absent in [
            "usr/share/doc/app/copyright",
            "etc/secret.conf",
            "usr/lib/app/private",
            "usr/bin/other",
            "usr/lib/unrelated",
            // Of the same source and depending on app, but not app's completion (as the
            // JDK is not the JRE's).
            "usr/lib/extra/plugin",
            // Recommended by what app recommends, or by a library: one level only.
            "usr/lib/deep",
            "usr/lib/lib-rec",
            // Essential, but not asked for.
            "usr/bin/ess",
        ] {
            assert!(!has(absent), "{absent} must not be packed");
        }
        assert_eq!(
            names(&db, &planned),
            ["app", "libfoo", "provider", "rec-pkg"]
        );

        // Without following Recommends, app's recommendation stays out.
        let Closure::Packages(mut no_rec) = closure.clone() else {
            unreachable!("packaged")
        };
        no_rec.recommends = false;
        let planned_no_rec = plan(&inputs, &Closure::Packages(no_rec)).expect("plan");
        assert_eq!(names(&db, &planned_no_rec), ["app", "libfoo", "provider"]);

        // One layer per package, the most depended-on (libfoo) first, the image's own last;
        // libfoo's layer is the same in another image that holds it.
        let split = layers(&planned, Some(db.as_ref()));
        let labels: Vec<&str> = split.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(labels[0], "libfoo");
        assert_eq!(labels.last(), Some(&"image"));
        let top: Vec<_> = split.last().expect("top").plan.keys().collect();
        assert_eq!(top, [Path::new("app")]);
        let other = [Input::at(root.join("usr/bin/other"), "/other", "o").expect("input")];
        let planned_other = plan(&other, &closure).expect("plan");
        let layers_other = layers(&planned_other, Some(db.as_ref()));
        assert_eq!(layers_other[0].label, "libfoo");
        assert_eq!(bytes(&layers_other[0].plan), bytes(&split[0].plan));

        // With the ELF closure only, nothing of the packages comes along.
        let elf = plan(&inputs, &Closure::Elf).expect("plan");
        assert_eq!(elf.plan.keys().collect::<Vec<_>>(), [Path::new("app")]);
        assert_eq!(layers(&elf, None).len(), 1);
    }

    #[test]
    fn the_essential_set_is_one_layer_at_the_bottom_of_every_image_with_packages() {
        let (dir, db) = fake_machine();
        let root = dir.path();
        let closure = packaged(&db, true, &[]);
        let app = [Input::at(root.join("usr/bin/app"), "/app", "app").expect("input")];
        let other = [Input::at(root.join("usr/bin/other"), "/other", "o").expect("input")];
        let a = plan(&app, &closure).expect("plan");
        let b = plan(&other, &closure).expect("plan");
        for planned in [&a, &b] {
            assert!(planned.plan.contains_key(Path::new("usr/bin/ess")));
            assert!(planned.plan.contains_key(Path::new("usr/lib/ess-dep")));
        }
        let (la, lb) = (layers(&a, Some(db.as_ref())), layers(&b, Some(db.as_ref())));
        assert_eq!(la[0].label, "essential packages");
        assert_eq!(bytes(&la[0].plan), bytes(&lb[0].plan));
        assert!(la[0].plan.contains_key(Path::new("usr/lib/ess-dep")));
        // A file of no package brings no package, Essential or not.
        std::fs::write(root.join("loose"), "x").expect("write");
        let loose = [Input::at(root.join("loose"), "/loose", "l").expect("input")];
        assert!(plan(&loose, &closure).expect("plan").packages.is_empty());
    }

    #[test]
    fn a_program_brings_its_completion_and_a_wrapper_the_package_doing_its_work() {
        let (dir, db) = fake_machine();
        let root = dir.path();
        let closure = packaged(&db, false, &[]);
        // tool-minimal's program is completed by `tool` (its name without -minimal).
        let tool = [Input::at(root.join("usr/bin/tool"), "/usr/bin/tool", "t").expect("input")];
        let planned = plan(&tool, &closure).expect("plan");
        assert_eq!(names(&db, &planned), ["tool", "tool-minimal"]);
        // A wrapper called wtool brings the package that depends on the wrapper's and has a
        // program of that name; the link is kept as a link.
        let wtool =
            [Input::link(root.join("usr/bin/wtool"), "/usr/bin/wtool", "w").expect("input")];
        let planned = plan(&wtool, &closure).expect("plan");
        assert_eq!(names(&db, &planned), ["libfoo", "wrap-15", "wrap-common"]);
        assert!(matches!(
            planned.plan[Path::new("usr/bin/wtool")].kind,
            Kind::Symlink { .. }
        ));
    }

    #[test]
    fn named_packages_make_an_image_without_files() {
        let (_dir, db) = fake_machine();
        let closure = packaged(&db, false, &["other"]);
        let planned = plan(&[], &closure).expect("plan");
        assert_eq!(names(&db, &planned), ["libfoo", "other"]);
        assert_eq!(
            closure.packages_entrypoint(),
            Some(vec!["/usr/bin/other".to_owned()])
        );
        // Two packages with programs of their names, or none: the shell.
        let both = packaged(&db, false, &["other", "ess"]);
        assert_eq!(both.packages_entrypoint(), Some(vec!["/bin/sh".to_owned()]));
        let none = packaged(&db, false, &["libfoo"]);
        assert_eq!(none.packages_entrypoint(), Some(vec!["/bin/sh".to_owned()]));
        assert_eq!(packaged(&db, false, &[]).packages_entrypoint(), None);
    }
}
