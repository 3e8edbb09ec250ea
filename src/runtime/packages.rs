//! Packages: which installed package a file of the machine belongs to, what each package
//! needs, and which of its files may go into an image. The database is behind [`PackageDb`],
//! so that rpm could follow dpkg ([`super::dpkg`]).

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use md5::Digest as _;

use super::dpkg::{Database, DpkgError};

/// An installed package, by its place in the database it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PkgId(pub(crate) usize);

/// A path a package installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    /// Where it is on the machine (a diversion may have moved it).
    pub host: PathBuf,
    pub conffile: Conffile,
}

/// Whether a path is a configuration file, which the admin may have edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conffile {
    No,
    /// A conffile and the md5 it was shipped with: packed only while it still has it.
    Shipped(String),
    /// A conffile with nothing to compare against: never packed.
    Unverifiable,
}

/// What a package manager's database answers.
pub trait PackageDb: Send + Sync + fmt::Debug {
    /// The root of the machine the database describes (`/`; a folder in tests): a host path
    /// below it is at the same path below `/` in the image.
    fn root(&self) -> &Path;
    /// `path` with the machine's top-level directory symlinks resolved: the form files are
    /// looked up and packed under (`/lib/x` is `/usr/lib/x` on a merged-`/usr` system).
    fn resolve(&self, path: &Path) -> PathBuf;
    /// The installed package that owns `path`, if any.
    fn owner(&self, path: &Path) -> Option<PkgId>;
    fn name(&self, id: PkgId) -> &str;
    /// Bytes the package takes once installed, as the package says.
    fn installed_size(&self, id: PkgId) -> u64;
    /// `seeds` and, recursively, the installed packages they depend on (alternatives and
    /// virtual packages resolved to what is installed), and those that the packages in
    /// `recommending` recommend and are installed (apt installs them by default), sorted.
    fn closure(&self, seeds: &[PkgId], recommending: &BTreeSet<PkgId>) -> Vec<PkgId>;
    /// The installed package of this name (`name` or `name:arch`).
    fn find(&self, name: &str) -> Option<PkgId>;
    /// The installed packages marked `Essential: yes`: what every package may use without
    /// declaring it (coreutils, sed, gzip, tar, bash, ...).
    fn essential(&self) -> Vec<PkgId>;
    /// The machine's top-level symlinks to directories, as `(/bin, /usr/bin)`: merged `/usr`.
    fn aliases(&self) -> Vec<(PathBuf, PathBuf)>;
    /// The package's executable called `name` in a `bin` or `sbin` folder of `/`'s, as the
    /// image has it (`/usr/bin/git`), if it has one.
    fn program(&self, id: PkgId, name: &str) -> Option<PathBuf>;
    /// The installed packages that depend on `id` directly and ship an executable `called`
    /// in some `bin` folder: those that do the work of a wrapper of `id`'s called so
    /// (`psql` is postgresql-client-common's `pg_wrapper`, which runs postgresql-client-15's
    /// `/usr/lib/postgresql/15/bin/psql`).
    fn wrapped(&self, id: PkgId, called: &str) -> Vec<PkgId>;
    /// A maintainer script of the package (`postinst`, `preinst`), if it has one.
    fn script(&self, id: PkgId, which: &str) -> Option<String>;
    /// The installed package that completes the one owning a program: built from the same
    /// source, depending on it directly, and named as it is without its `-minimal` or `-base`
    /// suffix. `/usr/bin/python3` belongs to python3-minimal, which has no standard library;
    /// `python3` brings it; perl-base is completed by perl. Only for the owners of named
    /// inputs, and no wider: openjdk-17-jre-headless's java must not bring the whole JDK
    /// and its desktop libraries.
    fn completion(&self, id: PkgId) -> Vec<PkgId>;
    /// How many installed packages depend on `id` directly: how widely it is shared.
    fn dependents(&self, id: PkgId) -> usize;
    /// Everything the package installed, directories included.
    fn files(&self, id: PkgId) -> Vec<PackageFile>;
}

/// Left out of every package, as Debian's slim images leave them out: documentation.
pub const LEFT_OUT: [&str; 4] = [
    "/usr/share/doc",
    "/usr/share/man",
    "/usr/share/info",
    "/usr/share/lintian",
];

/// Whether `path` (resolved) is documentation left out of images.
pub fn left_out(path: &Path) -> bool {
    LEFT_OUT.iter().any(|dir| path.starts_with(dir))
}

/// Whether the conffile at `path` still has the md5 its package shipped it with. An edited
/// one (a secret an admin wrote into it) never leaves the machine.
pub fn conffile_unchanged(path: &Path, md5: &str) -> io::Result<bool> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = md5::Md5::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()) == md5)
}

/// The package database of the machine, read once and again whenever dpkg has changed it
/// (a package installed while a server runs), so a server answers from what is installed.
#[derive(Debug)]
pub struct Machine {
    /// The root the database describes: `/`, or a folder in tests.
    root: PathBuf,
    /// The database and the stamp of the `status` file it was read from.
    loaded: Mutex<Option<Loaded>>,
}

/// A database read, and the stamp of the `status` file it was read from (`None`: there is no
/// `status`, so there is no database).
type Loaded = (Option<crate::store::FileStamp>, Option<Arc<Database>>);

impl Machine {
    pub fn new(root: impl Into<PathBuf>) -> Machine {
        Machine {
            root: root.into(),
            loaded: Mutex::new(None),
        }
    }

    /// The root the database describes.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The database as it is now; `None` on a machine without dpkg.
    pub fn current(&self) -> Result<Option<Arc<dyn PackageDb>>, DpkgError> {
        let status = self.root.join("var/lib/dpkg/status");
        let stamp = std::fs::metadata(&status)
            .ok()
            .map(|m| crate::store::FileStamp::of(&m));
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, db)) = &*loaded
            && *seen == stamp
        {
            return Ok(db.clone().map(|d| d as Arc<dyn PackageDb>));
        }
        let started = std::time::Instant::now();
        let db = Database::load(&self.root)?.map(Arc::new);
        if let Some(db) = &db {
            tracing::debug!(
                packages = db.count(),
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "read the dpkg database"
            );
        }
        *loaded = Some((stamp, db.clone()));
        // Reading the lists left megabytes of freed buffers in the allocator's arenas.
        crate::thread::give_back_memory();
        Ok(db.map(|d| d as Arc<dyn PackageDb>))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documentation_is_left_out_and_the_rest_kept() {
        assert!(left_out(Path::new("/usr/share/doc/python3/copyright")));
        assert!(left_out(Path::new("/usr/share/man/man1/ls.1.gz")));
        assert!(!left_out(Path::new("/usr/share/docs-not-really/x")));
        assert!(!left_out(Path::new("/usr/lib/python3.11/os.py")));
    }

    #[test]
    fn a_conffile_is_unchanged_only_with_its_shipped_md5() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("conf");
        std::fs::write(&f, b"setting = 1\n").expect("write");
        // md5sum of "setting = 1\n"
        let md5 = hex::encode(md5::Md5::digest(b"setting = 1\n"));
        assert!(conffile_unchanged(&f, &md5).expect("read"));
        std::fs::write(&f, b"setting = 1\npassword = hunter2\n").expect("write");
        assert!(!conffile_unchanged(&f, &md5).expect("read"));
    }
}
