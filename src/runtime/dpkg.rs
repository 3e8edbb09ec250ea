//! The dpkg database of the packing machine, read directly: `status` (RFC 822 paragraphs:
//! which packages are installed, their `Depends`, `Pre-Depends`, `Provides` and conffiles with
//! the md5 each shipped with), `info/<package>[:<arch>].list` (the paths each installed), and
//! `diversions`. Running `dpkg-query -S` per file would take seconds; reading the files takes
//! tens of milliseconds, once.
//!
//! Paths are kept as the machine resolves them: on a merged-`/usr` system (`/lib -> usr/lib`)
//! a package that lists `/lib/x86_64-linux-gnu/libc.so.6` owns `/usr/lib/...` too, and the
//! index is keyed by the resolved form (see [`Database::resolve`]).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use super::owners::Owners;
use super::packages::{Conffile, PackageDb, PackageFile, PkgId};

/// Why the database cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DpkgError {
    #[error("cannot read the dpkg database file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
}

/// One installed package.
#[derive(Debug, Clone)]
struct Package {
    name: String,
    /// Its architecture (`amd64`, `all`; empty if the paragraph has none).
    arch: String,
    /// The source package it was built from (its own name when the field is absent).
    source: String,
    /// `Installed-Size`, in KiB: what dpkg says the package takes once installed.
    installed_size: u64,
    /// `Pre-Depends` then `Depends`: each a list of alternatives, any one of which does.
    depends: Vec<Vec<String>>,
    /// `Recommends`, as alternatives: apt installs them by default, so programs count on
    /// them (gcc only recommends libc6-dev, without which `<stdio.h>` is missing).
    recommends: Vec<Vec<String>>,
    /// `Essential: yes`: every package may use it without declaring it.
    essential: bool,
    /// Its `info/NAME[:ARCH].list`: what it installed, as listed (dpkg's spelling of each
    /// path). Read again when asked (see [`Owners`] for why it is not kept).
    list: Option<PathBuf>,
    /// Conffile path (as listed) → the md5 it shipped with; `None` when it has none to
    /// compare (`newconffile`) or dpkg no longer owns it (`obsolete`).
    conffiles: HashMap<PathBuf, Option<String>>,
}

/// The installed packages and who owns which path.
#[derive(Debug, Default)]
pub struct Database {
    /// The machine's root (`/`; a folder in tests).
    root: PathBuf,
    packages: Vec<Package>,
    /// Installed package names (also `name:arch`) → index.
    by_name: HashMap<String, usize>,
    /// Virtual package names → the installed packages that provide them.
    providers: HashMap<String, Vec<usize>>,
    /// Resolved path → the package that installed it (none for a path several packages
    /// list, a directory they share: that says nothing of what a file needs).
    owners: Owners,
    /// Top-level symlinks to directories (`lib` → `usr/lib`), applied by `resolve`.
    aliases: Vec<(PathBuf, PathBuf)>,
    /// Diverted path → where the diverted package's file really is, and who diverted it.
    diversions: HashMap<PathBuf, (PathBuf, String)>,
    /// How many installed packages depend on each, directly: its popularity.
    dependents: Vec<usize>,
}

impl Database {
    /// Reads the database of the machine rooted at `root` (`/var/lib/dpkg` under it). `None`
    /// when there is none (not a Debian-like system): then no file has a package.
    pub fn load(root: &Path) -> Result<Option<Database>, DpkgError> {
        let dir = root.join("var/lib/dpkg");
        let status_path = dir.join("status");
        let status = match fs::read_to_string(&status_path) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(DpkgError::Read {
                    path: status_path,
                    source,
                });
            }
        };
        let mut db = Database {
            // Canonical, so that resolved host paths below it keep it as their prefix.
            root: fs::canonicalize(root).unwrap_or_else(|_| root.to_owned()),
            aliases: aliases(root),
            ..Database::default()
        };
        for paragraph in status.split("\n\n") {
            let fields = fields(paragraph);
            let get = |k: &str| {
                fields
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.as_str())
            };
            let (Some(name), Some(state)) = (get("Package"), get("Status")) else {
                continue;
            };
            // `install ok installed`, `hold ok installed`: unpacked and configured.
            if state.split_whitespace().nth(2) != Some("installed") {
                continue;
            }
            let arch = get("Architecture").unwrap_or("");
            let list = ["", arch]
                .iter()
                .map(|a| match *a {
                    "" => dir.join(format!("info/{name}.list")),
                    a => dir.join(format!("info/{name}:{a}.list")),
                })
                .find(|p| p.exists());
            let index = db.packages.len();
            if let Some(path) = &list {
                let text = fs::read(path).map_err(|source| DpkgError::Read {
                    path: path.clone(),
                    source,
                })?;
                for line in listed_paths(&text) {
                    let key = db.resolve_key(Path::new(std::ffi::OsStr::from_bytes(line)));
                    db.owners.insert(key.as_bytes(), index);
                }
            }
            let mut depends = Vec::new();
            for field in ["Pre-Depends", "Depends"] {
                if let Some(v) = get(field) {
                    depends.extend(parse_depends(v));
                }
            }
            let recommends = get("Recommends").map(parse_depends).unwrap_or_default();
            let conffiles = get("Conffiles")
                .map(|v| {
                    v.lines()
                        .filter_map(|l| {
                            let mut words = l.split_whitespace();
                            let path = PathBuf::from(words.next()?);
                            let md5 = words.next()?;
                            let obsolete = words.any(|w| w == "obsolete");
                            let md5 = (md5.len() == 32 && !obsolete).then(|| md5.to_owned());
                            Some((path, md5))
                        })
                        .collect()
                })
                .unwrap_or_default();
            db.by_name.insert(name.to_owned(), index);
            if !arch.is_empty() {
                db.by_name.insert(format!("{name}:{arch}"), index);
            }
            if let Some(provides) = get("Provides") {
                for group in parse_depends(provides) {
                    for virtual_name in group {
                        db.providers.entry(virtual_name).or_default().push(index);
                    }
                }
            }
            db.packages.push(Package {
                name: name.to_owned(),
                arch: arch.to_owned(),
                source: get("Source")
                    .and_then(|s| s.split_whitespace().next())
                    .unwrap_or(name)
                    .to_owned(),
                installed_size: get("Installed-Size")
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0),
                depends,
                recommends,
                essential: get("Essential").is_some_and(|v| v.eq_ignore_ascii_case("yes")),
                list,
                conffiles,
            });
        }
        db.diversions = read_diversions(&dir.join("diversions"))?;
        let mut dependents = vec![0; db.packages.len()];
        for package in &db.packages {
            let deps: HashSet<usize> = package
                .depends
                .iter()
                .filter_map(|g| db.chosen(g))
                .collect();
            for dep in deps {
                dependents[dep] += 1;
            }
        }
        db.dependents = dependents;
        // A diverted path belongs to the package that diverted it.
        for (path, (_, diverter)) in &db.diversions {
            if let Some(&index) = db.by_name.get(diverter) {
                let key = db.resolve_key(path);
                db.owners.set(key.as_bytes(), index);
            }
        }
        Ok(Some(db))
    }

    /// How many packages are installed.
    pub fn count(&self) -> usize {
        self.packages.len()
    }

    /// `path` with the machine's top-level directory symlinks resolved (`/lib/x` →
    /// `/usr/lib/x` where `/lib -> usr/lib`), as it is looked up and packed.
    fn resolve_path(&self, path: &Path) -> PathBuf {
        for (alias, target) in &self.aliases {
            // Below the symlink only: `/lib` itself is the symlink, not `/usr/lib`.
            if let Ok(rest) = path.strip_prefix(alias)
                && !rest.as_os_str().is_empty()
            {
                return target.join(rest);
            }
        }
        path.to_owned()
    }

    /// `resolve_path` on the path's bytes, for the owner index. dpkg lists clean absolute
    /// paths (and `owner` cleans what it looks up), so a prefix of bytes ending at a `/` is a
    /// prefix of components.
    fn resolve_key(&self, path: &Path) -> OsString {
        let bytes = path.as_os_str().as_bytes();
        for (alias, target) in &self.aliases {
            let alias = alias.as_os_str().as_bytes();
            // Below the symlink only: `/lib` itself is the symlink, not `/usr/lib`.
            if let Some(rest) = bytes.strip_prefix(alias)
                && let Some(rest) = rest.strip_prefix(b"/")
                && !rest.is_empty()
            {
                let mut key = target.as_os_str().as_bytes().to_vec();
                key.push(b'/');
                key.extend_from_slice(rest);
                return OsString::from_vec(key);
            }
        }
        path.as_os_str().to_owned()
    }

    /// Where the file dpkg lists as `listed` for package `index` is on the machine: its own
    /// path, or where a diversion by another package moved it.
    fn host_path(&self, index: usize, listed: &Path) -> PathBuf {
        match self.diversions.get(listed) {
            Some((moved, diverter)) if *diverter != self.packages[index].name => {
                self.root.join(strip_root(moved))
            }
            _ => self.root.join(strip_root(listed)),
        }
    }
}

impl PackageDb for Database {
    fn root(&self) -> &Path {
        &self.root
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        self.resolve_path(path)
    }

    fn owner(&self, path: &Path) -> Option<PkgId> {
        // `path` is on the machine; the index holds paths as the machine sees them from `/`.
        // Clean (no `//`, no `/./`), as the index's keys are: they are compared as bytes.
        let inside: PathBuf = Path::new("/")
            .join(path.strip_prefix(&self.root).unwrap_or(path))
            .components()
            .collect();
        self.owners
            .get(self.resolve_key(&inside).as_bytes())
            .map(PkgId)
    }

    fn name(&self, id: PkgId) -> &str {
        &self.packages[id.0].name
    }

    fn installed_size(&self, id: PkgId) -> u64 {
        self.packages[id.0].installed_size * 1024
    }

    fn closure(&self, seeds: &[PkgId], recommending: &BTreeSet<PkgId>) -> Vec<PkgId> {
        let mut seen: BTreeSet<usize> = seeds.iter().map(|p| p.0).collect();
        let mut queue: VecDeque<usize> = seen.iter().copied().collect();
        while let Some(index) = queue.pop_front() {
            let package = &self.packages[index];
            let follow = recommending.contains(&PkgId(index));
            let recommended = follow.then_some(&package.recommends).into_iter();
            for group in std::iter::once(&package.depends)
                .chain(recommended)
                .flatten()
            {
                // A recommendation that is not installed is not followed, as apt left it.
                if let Some(dep) = self.chosen(group)
                    && seen.insert(dep)
                {
                    queue.push_back(dep);
                }
            }
        }
        seen.into_iter().map(PkgId).collect()
    }

    fn find(&self, name: &str) -> Option<PkgId> {
        self.by_name.get(name).copied().map(PkgId)
    }

    fn essential(&self) -> Vec<PkgId> {
        (0..self.packages.len())
            .filter(|&i| self.packages[i].essential)
            .map(PkgId)
            .collect()
    }

    fn aliases(&self) -> Vec<(PathBuf, PathBuf)> {
        self.aliases.clone()
    }

    fn program(&self, id: PkgId, name: &str) -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = self
            .listed(id.0)
            .into_iter()
            .filter(|f| f.file_name().is_some_and(|n| n == name))
            .filter(|f| {
                f.parent()
                    .and_then(Path::file_name)
                    .is_some_and(|d| d == "bin" || d == "sbin")
            })
            .map(|f| self.resolve_path(&f))
            .filter(|f| {
                let host = self.root.join(strip_root(f));
                std::fs::metadata(host).is_ok_and(|m| crate::pack::is_executable(&m))
            })
            .collect();
        // `/usr/bin` before `/usr/sbin`, whatever order the list has.
        found.sort();
        found.dedup();
        found.into_iter().next()
    }

    fn wrapped(&self, id: PkgId, called: &str) -> Vec<PkgId> {
        let mut out: Vec<PkgId> = (0..self.packages.len())
            .filter(|&i| {
                i != id.0
                    && self.packages[i]
                        .depends
                        .iter()
                        .any(|g| self.chosen(g) == Some(id.0))
            })
            .map(PkgId)
            .filter(|&p| self.program_anywhere(p, called))
            .collect();
        out.sort();
        out
    }

    fn script(&self, id: PkgId, which: &str) -> Option<String> {
        let package = &self.packages[id.0];
        let dir = self.root.join("var/lib/dpkg/info");
        [
            format!("{}.{which}", package.name),
            format!("{}:{}.{which}", package.name, package.arch),
        ]
        .iter()
        .find_map(|f| fs::read_to_string(dir.join(f)).ok())
    }

    fn completion(&self, id: PkgId) -> Vec<PkgId> {
        let owner = &self.packages[id.0];
        let mut out: Vec<PkgId> = (0..self.packages.len())
            .filter(|&i| {
                let p = &self.packages[i];
                i != id.0
                    && p.source == owner.source
                    && ["-minimal", "-base"]
                        .iter()
                        .any(|suffix| owner.name.strip_suffix(suffix) == Some(p.name.as_str()))
                    && p.depends.iter().any(|g| self.chosen(g) == Some(id.0))
            })
            .map(PkgId)
            .collect();
        out.sort();
        out
    }

    fn dependents(&self, id: PkgId) -> usize {
        self.dependents.get(id.0).copied().unwrap_or(0)
    }

    fn files(&self, id: PkgId) -> Vec<PackageFile> {
        let package = &self.packages[id.0];
        self.listed(id.0)
            .iter()
            .map(|listed| PackageFile {
                host: self.host_path(id.0, listed),
                conffile: match package.conffiles.get(listed) {
                    None => Conffile::No,
                    Some(Some(md5)) => Conffile::Shipped(md5.clone()),
                    Some(None) => Conffile::Unverifiable,
                },
            })
            .collect()
    }
}

impl Database {
    /// What package `index` installed, as its list names it. A list that cannot be read now
    /// (dpkg is replacing it) gives nothing: the index is re-read once dpkg is done.
    fn listed(&self, index: usize) -> Vec<PathBuf> {
        let Some(path) = &self.packages[index].list else {
            return Vec::new();
        };
        match fs::read(path) {
            Ok(text) => listed_paths(&text)
                .map(|l| PathBuf::from(std::ffi::OsStr::from_bytes(l)))
                .collect(),
            Err(e) => {
                tracing::warn!(list = %path.display(), error = %e, "cannot read a package's file list");
                Vec::new()
            }
        }
    }

    /// Whether package `index` ships an executable file named `name` in any `bin` folder
    /// (`/usr/lib/postgresql/15/bin/psql`).
    fn program_anywhere(&self, id: PkgId, name: &str) -> bool {
        self.listed(id.0).iter().any(|f| {
            f.file_name().is_some_and(|n| n == name)
                && f.parent()
                    .and_then(Path::file_name)
                    .is_some_and(|d| d == "bin" || d == "sbin")
                && fs::metadata(self.host_path(id.0, f))
                    .is_ok_and(|m| crate::pack::is_executable(&m))
        })
    }

    /// The installed package that satisfies a group of alternatives: the first one installed
    /// by name, else the first that provides it; `None` on a broken system.
    fn chosen(&self, group: &[String]) -> Option<usize> {
        group.iter().find_map(|alt| {
            self.by_name
                .get(alt)
                .copied()
                .or_else(|| self.providers.get(alt).and_then(|p| p.first().copied()))
        })
    }
}

/// The paths of a `.list` file, less its `/.` line.
fn listed_paths(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| b == b'\n')
        .filter(|l| l.first() == Some(&b'/') && *l != b"/.")
}

/// The fields of one status paragraph, continuation lines joined with `\n`.
fn fields(paragraph: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in paragraph.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = out.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    out
}

/// `a (>= 1), b | c:any, d [amd64]` → `[[a], [b, c], [d]]`: names only. Versions need no
/// check (dpkg enforced them when it installed), and `:any`/`:native` qualifiers name the
/// same installed package.
fn parse_depends(value: &str) -> Vec<Vec<String>> {
    value
        .split(',')
        .map(|group| {
            group
                .split('|')
                .filter_map(|alt| {
                    let name = alt.split_whitespace().next()?;
                    let name = name.split(['(', '[']).next()?;
                    let name = name
                        .strip_suffix(":any")
                        .or_else(|| name.strip_suffix(":native"))
                        .unwrap_or(name);
                    (!name.is_empty()).then(|| name.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

/// `diversions`: triples of lines (the diverted path, where it went, the package that
/// diverted it, or `:` for the admin).
fn read_diversions(path: &Path) -> Result<HashMap<PathBuf, (PathBuf, String)>, DpkgError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(source) => {
            return Err(DpkgError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    Ok(lines
        .chunks_exact(3)
        .map(|t| (PathBuf::from(t[0]), (PathBuf::from(t[1]), t[2].to_owned())))
        .collect())
}

/// The root's entries that are symlinks to directories beside them (`lib -> usr/lib`), as
/// `(/lib, /usr/lib)`: merged `/usr`.
fn aliases(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        // Only relative targets inside the root, such as `usr/lib`: what merged /usr makes.
        let relative = target
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if relative && root.join(&target).is_dir() {
            out.push((
                Path::new("/").join(entry.file_name()),
                Path::new("/").join(&target),
            ));
        }
    }
    out.sort();
    out
}

fn strip_root(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_parse_to_names_and_alternatives() {
        assert_eq!(
            parse_depends(
                "libc6 (>= 2.36), debconf (>= 0.5) | debconf-2.0, python3:any, perl:native [amd64]"
            ),
            vec![
                vec!["libc6".to_owned()],
                vec!["debconf".to_owned(), "debconf-2.0".to_owned()],
                vec!["python3".to_owned()],
                vec!["perl".to_owned()],
            ]
        );
        assert!(parse_depends("").is_empty());
    }
}
