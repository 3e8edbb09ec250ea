//! What an image holds beyond its inputs, as asked: the closure mode (`--closure`,
//! `--no-recommends`), the packages named (`+PKG`, `pkgs/...`), and the base of an image
//! with packages (accounts, CA bundle, top-level links), made in the store.

use std::path::PathBuf;
use std::str::FromStr;

use super::PackError;
use super::plan::{self, Base, Closure, Packaged};
use crate::runtime::packages::Machine;
use crate::store::Store;

/// Which closure an image gets (`--closure`): see `Closure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosureMode {
    Elf,
    /// The packages of the image's files and what they depend on; with `essential`, Debian's
    /// Essential set too; with `recommends`, what they recommend that is installed.
    Packages {
        essential: bool,
        recommends: bool,
    },
}

impl Default for ClosureMode {
    fn default() -> Self {
        ClosureMode::Packages {
            essential: true,
            recommends: true,
        }
    }
}

impl ClosureMode {
    /// The same, without following `Recommends`.
    pub fn without_recommends(self) -> ClosureMode {
        match self {
            ClosureMode::Packages { essential, .. } => ClosureMode::Packages {
                essential,
                recommends: false,
            },
            ClosureMode::Elf => ClosureMode::Elf,
        }
    }
}

impl FromStr for ClosureMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "elf" => Ok(ClosureMode::Elf),
            "packages" => Ok(ClosureMode::default()),
            "minimal" => Ok(ClosureMode::Packages {
                essential: false,
                recommends: false,
            }),
            other => Err(format!(
                "unknown closure {other:?}: use packages, minimal or elf"
            )),
        }
    }
}

/// The closure `mode` asks for on this machine, with the packages `named` (by their
/// installed names) whatever the files are: for packages, the package database as it is
/// now. A machine without a package database packs as `elf` does, unless packages are
/// named; a name that is not installed is an error naming it.
pub async fn closure(
    mode: ClosureMode,
    machine: &Machine,
    named: &[String],
) -> Result<Closure, PackError> {
    let ClosureMode::Packages {
        essential,
        recommends,
    } = mode
    else {
        return match named.first() {
            Some(_) => Err(PackError::PackagesNeedTheirClosure),
            None => Ok(Closure::Elf),
        };
    };
    let db = match machine.current()? {
        Some(db) => db,
        None if named.is_empty() => return Ok(Closure::Elf),
        None => return Err(PackError::UnknownPackage(named[0].clone())),
    };
    let named = named
        .iter()
        .map(|n| {
            db.find(n)
                .ok_or_else(|| PackError::UnknownPackage(n.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Closure::Packages(Packaged {
        db,
        essential,
        recommends,
        named,
    }))
}

/// The inputs of a command line or `--image` split into installed packages (`+NAME`) and
/// files; a `+` alone, or a package name with a path in it, is an error.
pub fn split_packages<S: AsRef<str>>(specs: &[S]) -> Result<(Vec<String>, Vec<String>), String> {
    let mut packages = Vec::new();
    let mut files = Vec::new();
    for spec in specs {
        let spec = spec.as_ref();
        match spec.strip_prefix('+') {
            Some(name) if valid_package_name(name) => packages.push(name.to_owned()),
            Some(_) => {
                return Err(format!(
                    "invalid package {spec:?}: +NAME names an installed package (write ./{spec} for a file)"
                ));
            }
            None => files.push(spec.to_owned()),
        }
    }
    Ok((packages, files))
}

/// Debian's package name grammar (`[a-z0-9][a-z0-9+.-]+`), with an optional `:arch`.
pub fn valid_package_name(name: &str) -> bool {
    let (name, arch) = name.split_once(':').unwrap_or((name, "x"));
    let ok = |s: &str, extra: &str| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || extra.as_bytes().contains(&b)
            })
    };
    ok(name, "+.-") && name.as_bytes()[0].is_ascii_alphanumeric() && ok(arch, "-")
}

impl Closure {
    /// The entrypoint of an image of named packages: the program named after its package
    /// when exactly one of them has one (`git`'s `/usr/bin/git`), else `/bin/sh`. `None` when
    /// no package is named.
    pub fn packages_entrypoint(&self) -> Option<Vec<String>> {
        let Closure::Packages(p) = self else {
            return None;
        };
        if p.named.is_empty() {
            return None;
        }
        let programs: Vec<PathBuf> = p
            .named
            .iter()
            .filter_map(|&id| p.db.program(id, p.db.name(id)))
            .collect();
        let entry = match programs.as_slice() {
            [one] => one.display().to_string(),
            _ => "/bin/sh".to_owned(),
        };
        Some(vec![entry])
    }
}

/// The base of an image with packages (see `Base`): the accounts its packages need, the
/// machine's CA bundle and top-level symlinks, the directories programs expect. The
/// generated files are made in `store`, so they can be packed from a path.
pub(super) async fn base(
    store: &Store,
    packaged: &Packaged,
    planned: &plan::Planned,
) -> Result<Base, PackError> {
    use crate::runtime::base;
    let db = packaged.db.as_ref();
    let packages: Vec<_> = planned.packages.keys().copied().collect();
    let accounts = base::Accounts::of(db, &packages, &planned.uids, &planned.gids);
    let mut out = Base::default();
    for (dest, text) in [
        ("/etc/passwd", accounts.passwd),
        ("/etc/group", accounts.group),
        ("/etc/nsswitch.conf", base::NSSWITCH.to_owned()),
    ] {
        out.files.push((
            PathBuf::from(dest),
            store.materialize(text.into_bytes()).await?,
        ));
    }
    // Copied, not packed from where it is: `update-ca-certificates` may rewrite it while a
    // pack reads it, and a copy named by its content keeps the layer cache valid.
    if let Some(bundle) = base::ca_bundle(db.root()) {
        let bytes = tokio::fs::read(&bundle)
            .await
            .map_err(|source| PackError::Read {
                path: bundle.clone(),
                source,
            })?;
        out.files.push((
            PathBuf::from(base::CA_BUNDLE),
            store.materialize(bytes).await?,
        ));
    }
    out.dirs = base::DIRS
        .iter()
        .map(|(d, mode)| (PathBuf::from(d), *mode))
        .collect();
    out.links = db
        .aliases()
        .into_iter()
        .map(|(link, target)| {
            // Relative, as the machine has it (`bin -> usr/bin`).
            let target = target.strip_prefix("/").unwrap_or(&target).to_owned();
            (link, target)
        })
        .collect();
    Ok(out)
}
