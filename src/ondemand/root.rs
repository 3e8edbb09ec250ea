//! `serve --root DIR`: under DIR, every executable file below DIR is an image named after its path
//! relative to DIR ([`Name::from_path_lossy`]), tag `latest`. A program of an installed
//! package keeps its host path in the image, with the symlinks that lead to it (so
//! `/usr/bin/java -> /etc/alternatives/java -> /usr/lib/jvm/.../bin/java` is the same chain
//! in the image, and gcc finds `cc1` beside itself); a file of no package goes to
//! `/usr/local/bin/<file name>`, so that an image of a build output does not depend on where
//! the build ran. Either is the entrypoint. A request can only reach such a file: names come
//! from the grammar, which has no `..`, and every file is checked at request time to resolve
//! (symlinks followed) to an executable regular file inside DIR, or to one an installed
//! package owns. On-demand images write no tags into the store: what they serve is decided
//! by the files, now.

use super::*;

/// The `--root` folder and what was last found in it.
pub(super) struct Root {
    /// Canonical: every exposed file must resolve to a path below it, or to a file of an
    /// installed package.
    pub(super) dir: PathBuf,
    index: Mutex<Index>,
    /// The package database, which says what a symlink leading out of the root may reach.
    machine: Mutex<Option<Arc<Machine>>>,
}

#[derive(Default)]
struct Index {
    /// When the last scan ran; `None` before the first.
    scanned: Option<Instant>,
    /// Image name → path relative to the root.
    names: BTreeMap<Name, PathBuf>,
    /// Names two or more files map to: none of them is served.
    ambiguous: BTreeSet<Name>,
    /// Problems already reported, so each is logged once.
    reported: HashSet<String>,
}

/// What one scan of the root found.
struct Scan {
    names: BTreeMap<Name, PathBuf>,
    ambiguous: BTreeSet<Name>,
    problems: Vec<String>,
}

impl Root {
    pub(super) fn new(dir: &Path) -> Result<Root, String> {
        let canonical =
            std::fs::canonicalize(dir).map_err(|e| format!("--root {}: {e}", dir.display()))?;
        if !canonical.is_dir() {
            return Err(format!("--root {}: not a directory", dir.display()));
        }
        Ok(Root {
            dir: canonical,
            index: Mutex::new(Index::default()),
            machine: Mutex::new(None),
        })
    }

    pub(super) fn set_machine(&self, machine: Arc<Machine>) {
        *self.machine.lock().unwrap_or_else(|p| p.into_inner()) = Some(machine);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn relative(&self, name: &Name) -> Option<PathBuf> {
        self.lock().names.get(name).cloned()
    }

    /// Every image name under the root; rescans first if `force` or the last scan is old.
    pub(super) async fn names(&self, force: bool) -> Vec<Name> {
        self.refresh(force).await;
        self.lock().names.keys().cloned().collect()
    }

    /// Rescans if `force` or the last scan is older than `RECHECK`, and reports new problems.
    pub(super) async fn refresh(&self, force: bool) {
        let stale = force || self.lock().scanned.is_none_or(|at| at.elapsed() >= RECHECK);
        if !stale {
            return;
        }
        let dir = self.dir.clone();
        let machine = self
            .machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let db = machine.and_then(|m| packages_of(&m));
            scan(&dir, db.as_deref())
        });
        let Ok(scan) = scanned.await else {
            return;
        };
        let mut index = self.lock();
        for problem in scan.problems {
            if index.reported.insert(problem.clone()) {
                tracing::warn!(root = %self.dir.display(), "{problem}");
            }
        }
        index.names = scan.names;
        index.ambiguous = scan.ambiguous;
        index.scanned = Some(Instant::now());
    }

    /// The file `name` stands for, checked now; `None` if there is none, or it is not an
    /// executable regular file inside the root.
    pub(super) async fn locate(&self, name: &Name) -> Option<Located> {
        if let Some(rel) = self.relative(name) {
            return self.check(rel).await;
        }
        if self.lock().ambiguous.contains(name) {
            return None;
        }
        // A file added since the last scan: names mostly are their paths, so look there first
        // (the name's grammar admits no `..` or leading `/`); else rescan.
        if let Some(found) = self.check(PathBuf::from(name.as_str())).await {
            return Some(found);
        }
        self.refresh(false).await;
        let rel = self.relative(name)?;
        self.check(rel).await
    }

    /// `rel` checked with `exposed`, off the async threads.
    pub(super) async fn check(&self, rel: PathBuf) -> Option<Located> {
        let dir = self.dir.clone();
        let machine = self
            .machine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio::task::spawn_blocking(move || {
            let file_name = rel.file_name()?.to_str()?.to_owned();
            let db = machine.and_then(|m| packages_of(&m));
            match exposed(&dir, &rel, db.as_deref()) {
                Ok(found) => Some(Located {
                    path: found.real,
                    file_name,
                    stamp: found.stamp,
                    entry: dir.join(&rel),
                    chain: found.chain,
                    owned: found.owned,
                }),
                Err(why) => {
                    tracing::debug!(path = %rel.display(), "not served: {why}");
                    None
                }
            }
        })
        .await
        .ok()
        .flatten()
    }
}

/// A root file found fit to serve.
pub(super) struct Located {
    /// Canonical path: inside the root, or a file of an installed package.
    pub(super) path: PathBuf,
    /// Its name in the root (a symlink's own name, not its target's).
    pub(super) file_name: String,
    /// What the file looked like when checked.
    pub(super) stamp: FileStamp,
    /// Its path in the root, as the host has it (`/usr/bin/java`).
    entry: PathBuf,
    /// The symlinks met on the way from `entry` to `path`, in order.
    chain: Vec<PathBuf>,
    /// Whether an installed package owns `path`.
    pub(super) owned: bool,
}

/// The package database as it is now, if the machine has one; read on a blocking thread
/// (the first read takes tens of milliseconds).
fn packages_of(machine: &Machine) -> Option<Arc<dyn PackageDb>> {
    match machine.current() {
        Ok(db) => db,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the package database; links leading out of the root are not served");
            None
        }
    }
}

/// What `exposed` found.
#[derive(Debug, PartialEq)]
struct Exposed {
    real: PathBuf,
    stamp: FileStamp,
    chain: Vec<PathBuf>,
    owned: bool,
}

/// `rel` (relative to the canonical `root`) if it resolves, symlinks followed, to an
/// executable regular file inside `root`, or to one an installed package owns (a link
/// through `/etc/alternatives`, or into `/usr/lib`); else why not.
fn exposed(root: &Path, rel: &Path, db: Option<&dyn PackageDb>) -> Result<Exposed, &'static str> {
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err("not a plain relative path");
    }
    let mut chain = Vec::new();
    let real = match crate::runtime::elf::walk(&root.join(rel), &mut |p| chain.push(p.to_owned())) {
        Ok(real) => real,
        Err(_) if std::fs::metadata(root.join(rel)).is_ok() => {
            return Err("not an executable regular file");
        }
        Err(_) => return Err("does not resolve"),
    };
    // `walk` ends with the file itself.
    chain.pop();
    let owned = db.is_some_and(|db| db.owner(&real).is_some());
    if !real.starts_with(root) && !owned {
        return Err("resolves to a path outside the root");
    }
    let meta = std::fs::metadata(&real).map_err(|_| "cannot be read")?;
    if !pack::is_executable(&meta) {
        return Err("not an executable regular file");
    }
    Ok(Exposed {
        real,
        stamp: FileStamp::of(&meta),
        chain,
        owned,
    })
}

/// The inputs of a program of an installed package, as the host has it: each symlink on
/// the way at its own path, then the file; its entrypoint is the path it was found at, and
/// its folder is on `PATH`.
pub(super) fn program_inputs(found: &Located) -> Result<(Vec<Input>, RunSettings), PackError> {
    let spec = found.entry.display().to_string();
    let mut inputs = Vec::new();
    for link in &found.chain {
        inputs.push(Input::link(link, &link.display().to_string(), &spec)?);
    }
    inputs.push(Input::at(
        &found.path,
        &found.path.display().to_string(),
        &spec,
    )?);
    let mut run = RunSettings {
        entrypoint: Some(vec![spec.clone()]),
        ..RunSettings::default()
    };
    if let Some(dir) = found.entry.parent() {
        let default = crate::image::DEFAULT_PATH.trim_start_matches("PATH=");
        let dir = dir.display().to_string();
        if !default.split(':').any(|d| d == dir) {
            run.env.push(format!("PATH={dir}:{default}"));
        }
    }
    Ok((inputs, run))
}

/// Walks the root (not following symlinked directories) and maps every exposed file to a
/// name.
fn scan(root: &Path, db: Option<&dyn PackageDb>) -> Scan {
    let mut found: BTreeMap<Name, Vec<PathBuf>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut pending = vec![(PathBuf::new(), 0usize)];
    while let Some((rel, depth)) = pending.pop() {
        let entries = match std::fs::read_dir(root.join(&rel)) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("cannot list {}: {e}", root.join(&rel).display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            let child = rel.join(entry.file_name());
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if depth + 1 < MAX_DEPTH {
                    pending.push((child, depth + 1));
                } else {
                    problems.push(format!("{} is too deep; not scanned", child.display()));
                }
                continue;
            }
            match exposed(root, &child, db) {
                Ok(_) => {}
                Err("resolves to a path outside the root") => {
                    problems.push(format!(
                        "{} leads outside the root; not served",
                        child.display()
                    ));
                    continue;
                }
                Err(_) => continue,
            }
            let name = child.to_str().and_then(Name::from_path_lossy);
            match name {
                Some(name) => found.entry(name).or_default().push(child),
                None => problems.push(format!(
                    "{} cannot be made into an image name; not served",
                    child.display()
                )),
            }
        }
    }
    let mut names = BTreeMap::new();
    let mut ambiguous = BTreeSet::new();
    for (name, mut paths) in found {
        if paths.len() == 1 {
            names.insert(name, paths.remove(0));
        } else {
            paths.sort();
            let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            problems.push(format!(
                "{} all map to the image name {name}; none of them is served",
                list.join(", ")
            ));
            ambiguous.insert(name);
        }
    }
    Scan {
        names,
        ambiguous,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn exe(path: &Path) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn the_root_exposes_executables_inside_it_only() {
        let top = tempfile::tempdir().expect("tempdir");
        let root = top.path().join("root");
        exe(&root.join("bin/Tool"));
        exe(&root.join("bin/tool")); // collides with bin/Tool
        exe(&root.join("sub/app.sh"));
        exe(&top.path().join("outside"));
        std::fs::write(root.join("data.txt"), b"not executable").expect("write");
        symlink(top.path().join("outside"), root.join("escape")).expect("symlink");
        symlink("sub/app.sh", root.join("alias")).expect("symlink");
        symlink(top.path(), root.join("up")).expect("symlink");
        exe(&root.join("___"));
        let root = std::fs::canonicalize(&root).expect("canonical");

        let scan = scan(&root, None);
        let names: Vec<String> = scan.names.keys().map(|n| n.to_string()).collect();
        assert_eq!(names, ["alias", "sub/app.sh"]);
        assert_eq!(
            scan.names[&"alias".parse::<Name>().expect("name")],
            Path::new("alias")
        );
        assert!(scan.ambiguous.contains(&"bin/tool".parse().expect("name")));
        let problems = scan.problems.join("\n");
        for expected in [
            "bin/Tool, bin/tool all map to the image name bin/tool",
            "escape leads outside the root",
            "___ cannot be made into an image name",
        ] {
            assert!(
                problems.contains(expected),
                "{expected:?} not in:\n{problems}"
            );
        }

        assert_eq!(
            exposed(&root, Path::new("alias"), None).map(|e| e.real),
            Ok(root.join("sub/app.sh"))
        );
        for (rel, why) in [
            ("escape", "resolves to a path outside the root"),
            ("up/outside", "resolves to a path outside the root"),
            ("../outside", "not a plain relative path"),
            ("data.txt", "not an executable regular file"),
            ("sub", "not an executable regular file"),
            ("missing", "does not resolve"),
        ] {
            assert_eq!(
                exposed(&root, Path::new(rel), None).err(),
                Some(why),
                "{rel}"
            );
        }
        assert!(exposed(&root, &top.path().join("outside"), None).is_err());
    }
}
