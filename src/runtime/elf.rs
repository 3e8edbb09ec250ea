//! The runtime closure of a dynamically linked ELF executable: its program interpreter and
//! every shared library it needs, found the way the dynamic loader will find them, so the
//! image runs in an otherwise empty root filesystem.
//!
//! Search order for each `DT_NEEDED` name, as in ld.so(8): a name with a `/` is a path; else
//! `DT_RPATH` of the object and of its loaders (for objects without `DT_RUNPATH`),
//! `DT_RUNPATH` of the object, the directories of the host's `/etc/ld.so.conf` (what its
//! `ld.so.cache` is built from), then the loader's built-in directories. Two things are
//! deliberately left out because they describe the packing machine, not the image:
//! `LD_LIBRARY_PATH`, and the CPU-specific `glibc-hwcaps` subdirectories. The baseline
//! library runs everywhere; a tuned one would make the layer depend on the packer's CPU.
//!
//! The loader's built-in directories are not readable from the file, so they are derived
//! from where its interpreter lives: glibc's `slibdir` is the interpreter's own directory
//! (`/lib/x86_64-linux-gnu` on Debian, `/lib64` on Fedora), followed by its `/usr` twin and
//! `/lib`, `/usr/lib`, which is what `ld.so --help` lists. Inside a container that has no
//! `ld.so.conf`, the same rule finds the same files, which is what makes the self-image a
//! fixed point across generations.
//!
//! Only the headers are read (through a small cache over the file), never the whole file.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use object::elf;
use object::read::ReadCache;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::{Endianness, FileKind, ReadRef};

/// The loader gives up after this many symlinks in one path (Linux's `ELOOP` limit).
const MAX_SYMLINKS: usize = 40;
/// `include` nesting in ld.so.conf beyond this is a loop.
const MAX_CONF_DEPTH: usize = 8;
/// Header parts are read whole, so their sizes are capped well above any real file's (an
/// interpreter path is at most PATH_MAX; dynamic sections and their strings run to KiBs),
/// lest a crafted size inside a large file become one huge allocation.
const MAX_INTERP: u64 = 4096;
const MAX_DYNAMIC: u64 = 1 << 20;
const MAX_STRINGS: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    #[error(
        "cannot find library {name} needed by {} (searched {})",
        needed_by.display(),
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Missing {
        name: String,
        needed_by: PathBuf,
        searched: Vec<PathBuf>,
    },
    #[error("program interpreter {} of {} is missing: {source}", interpreter.display(), exe.display())]
    Interpreter {
        interpreter: PathBuf,
        exe: PathBuf,
        source: io::Error,
    },
    #[error("library {name} needed by {} is a relative path; the loader would look for it in the current directory", needed_by.display())]
    RelativeName { name: String, needed_by: PathBuf },
    #[error("cannot read {} as ELF: {why}", path.display())]
    BadElf { path: PathBuf, why: String },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ClosureError + '_ {
    move |source| ClosureError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the loader reads from one ELF object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// `PT_INTERP`: present exactly for dynamically linked executables.
    pub interpreter: Option<PathBuf>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` entries, unexpanded.
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` entries, unexpanded.
    pub runpath: Vec<String>,
    /// Class, byte order and machine: the loader skips a library whose kind differs
    /// (a 32-bit libc in `/lib` when a 64-bit one is wanted).
    kind: (bool, bool, u16),
}

/// Reads the ELF facts of `path`; `Ok(None)` when it is not an ELF file at all.
pub fn read_elf(path: &Path) -> Result<Option<ElfInfo>, ClosureError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let data = ReadCache::new(file);
    let bad = |why: String| ClosureError::BadElf {
        path: path.to_owned(),
        why,
    };
    // Too short to identify, or some other format: not ELF, packed as a plain file.
    match FileKind::parse(&data) {
        Ok(FileKind::Elf32) => parse::<elf::FileHeader32<Endianness>>(&data).map_err(bad),
        Ok(FileKind::Elf64) => parse::<elf::FileHeader64<Endianness>>(&data).map_err(bad),
        _ => Ok(None),
    }
}

fn parse<H: FileHeader<Endian = Endianness>>(
    data: &ReadCache<fs::File>,
) -> Result<Option<ElfInfo>, String> {
    let e = |e: object::Error| e.to_string();
    let header = H::parse(data).map_err(e)?;
    let endian = header.endian().map_err(e)?;
    let phdrs = header.program_headers(endian, data).map_err(e)?;
    let mut interpreter = None;
    let mut dynamic = None;
    for ph in phdrs {
        let size: u64 = ph.p_filesz(endian).into();
        let limit = match ph.p_type(endian) {
            elf::PT_INTERP => MAX_INTERP,
            elf::PT_DYNAMIC => MAX_DYNAMIC,
            _ => u64::MAX,
        };
        if size > limit {
            return Err(format!(
                "a segment of type {} claims {size} bytes, more than a real one holds",
                ph.p_type(endian).0
            ));
        }
        if let Some(i) = ph.interpreter(endian, data).map_err(e)? {
            interpreter = Some(PathBuf::from(OsStr::from_bytes(i)));
        }
        if let Some(d) = ph.dynamic(endian, data).map_err(e)? {
            dynamic = Some(d);
        }
    }
    let mut info = ElfInfo {
        interpreter,
        needed: Vec::new(),
        rpath: Vec::new(),
        runpath: Vec::new(),
        kind: (
            header.is_class_64(),
            header.is_little_endian(),
            header.e_machine(endian).0,
        ),
    };
    let Some(dynamic) = dynamic else {
        return Ok(Some(info));
    };
    // The string table is named by its address in memory; find it in the file through the
    // loadable segment that maps that address (computed, so no segment is read whole).
    let tag = |t: object::elf::DynamicTag| {
        dynamic
            .iter()
            .take_while(|d| d.tag(endian) != elf::DT_NULL)
            .find(|d| d.tag(endian) == t)
            .map(|d| d.val(endian))
    };
    let (Some(addr), Some(size)) = (tag(elf::DT_STRTAB), tag(elf::DT_STRSZ)) else {
        return Ok(Some(info));
    };
    if size > MAX_STRINGS {
        return Err(format!("dynamic string table claims {size} bytes"));
    }
    let offset = phdrs.iter().find_map(|ph| {
        let start: u64 = ph.p_vaddr(endian).into();
        let filesz: u64 = ph.p_filesz(endian).into();
        let in_it = ph.p_type(endian) == elf::PT_LOAD
            && addr >= start
            && addr.checked_add(size)? <= start.checked_add(filesz)?;
        let file_offset: u64 = ph.p_offset(endian).into();
        in_it.then(|| file_offset.checked_add(addr - start))?
    });
    let Some(offset) = offset else {
        return Err("dynamic string table is outside the file".into());
    };
    let strings = data
        .read_bytes_at(offset, size)
        .map_err(|()| "dynamic string table is truncated".to_owned())?;
    let string = |at: u64| -> Result<String, String> {
        let rest = usize::try_from(at)
            .ok()
            .and_then(|at| strings.get(at..))
            .ok_or("dynamic string offset out of range")?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    for d in dynamic.iter().take_while(|d| d.tag(endian) != elf::DT_NULL) {
        let t = d.tag(endian);
        if t == elf::DT_NEEDED {
            info.needed.push(string(d.val(endian))?);
        } else if t == elf::DT_RPATH {
            info.rpath.extend(split_path_list(&string(d.val(endian))?));
        } else if t == elf::DT_RUNPATH {
            info.runpath
                .extend(split_path_list(&string(d.val(endian))?));
        }
    }
    Ok(Some(info))
}

fn split_path_list(list: &str) -> Vec<String> {
    list.split(':').map(str::to_owned).collect()
}

/// One file or symlink the image needs: where it is on the host, where it goes in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    pub host: PathBuf,
    /// Absolute path in the image.
    pub image: PathBuf,
}

/// What one object needs to load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Its interpreter and libraries, every symlink on the way to each included, each once,
    /// in the order found.
    pub items: Vec<Needed>,
    /// Image directories of libraries found only through the machine's `/etc/ld.so.conf`:
    /// the image has no `ld.so.cache`, so its loader would not look there unless told
    /// (`LD_LIBRARY_PATH`).
    pub conf_dirs: Vec<PathBuf>,
}

/// The closure of one object: an executable's interpreter and libraries, or a shared
/// library's libraries, searched as `interp` (the interpreter of the image's programs)
/// searches when the object names none itself. Empty for a static executable, and for a
/// library when there is no interpreter to search as.
///
/// `exe` is the host file; `image_path` is where it goes in the image (for `$ORIGIN`).
pub fn closure(
    exe: &Path,
    image_path: &Path,
    info: &ElfInfo,
    interp: Option<&Path>,
) -> Result<Needs, ClosureError> {
    let Some(interp) = info.interpreter.as_deref().or(interp) else {
        return Ok(Needs::default());
    };
    let interp = &interp.to_path_buf();
    let mut out = Closure::default();
    let interp_file =
        walk(interp, &mut |p| out.push(p, p)).map_err(|source| ClosureError::Interpreter {
            interpreter: interp.clone(),
            exe: exe.to_owned(),
            source,
        })?;
    let flavor = Flavor::of(interp);
    let mut dirs = match flavor {
        Flavor::Glibc => ld_so_conf(Path::new("/etc/ld.so.conf"), 0),
        Flavor::Musl(_) => Vec::new(),
    };
    let defaults = flavor.default_dirs(&interp_file, info.kind.0);
    let conf_only: HashSet<PathBuf> = dirs
        .iter()
        .filter(|d| !defaults.contains(d))
        .cloned()
        .collect();
    dirs.extend(defaults);
    dedup(&mut dirs);
    let mut conf_dirs = Vec::new();

    let root = Object {
        host: fs::canonicalize(exe).map_err(io_err(exe))?,
        image: image_path.to_owned(),
        info: info.clone(),
        rpaths: Vec::new(),
    };
    // The loader knows its own soname, and never searches for it.
    let mut loaded: HashSet<String> = HashSet::new();
    if let Some(name) = interp.file_name().and_then(|n| n.to_str()) {
        loaded.insert(name.to_owned());
    }
    // Breadth first, as the loader loads: direct dependencies before theirs.
    let mut queue = VecDeque::from([root]);
    while let Some(obj) = queue.pop_front() {
        // DT_RPATH applies to this object's needs and its dependencies' (unless they have
        // their own DT_RUNPATH), the object's own first, then its loaders' up to the
        // executable; DT_RUNPATH only to this object's needs, and it turns DT_RPATH off.
        let mut rpaths = Vec::new();
        if obj.info.runpath.is_empty() {
            rpaths.extend(obj.expand(&obj.info.rpath));
        }
        rpaths.extend(obj.rpaths.iter().cloned());
        let mut search = Vec::new();
        if obj.info.runpath.is_empty() {
            search.extend(rpaths.iter().cloned());
        }
        search.extend(obj.expand(&obj.info.runpath));
        search.extend(dirs.iter().map(|d| Place::same(d)));

        for name in &obj.info.needed {
            if !loaded.insert(name.clone()) {
                continue;
            }
            let (host, place, lib_info) = locate(name, &obj, &search, info.kind)?;
            if conf_only.contains(&place.host) && !conf_dirs.contains(&place.image) {
                conf_dirs.push(place.image.clone());
            }
            // Everything met on the way to the file goes where the loader will look for it:
            // through `$ORIGIN`, relative to the object's place in the image.
            let file = walk(&host, &mut |p| out.push(p, &place.image_of(p))).map_err(|source| {
                ClosureError::Io {
                    path: host.clone(),
                    source,
                }
            })?;
            queue.push_back(Object {
                image: place.image_of(&file),
                host: file,
                info: lib_info,
                rpaths: rpaths.clone(),
            });
        }
    }
    Ok(Needs {
        items: out.items,
        conf_dirs,
    })
}

/// Finds `name` for `obj` in `search` (or at its own path, if it has a `/`): the host path,
/// the directory pair it was found through, and its ELF facts (read once, while checking it).
fn locate(
    name: &str,
    obj: &Object,
    search: &[Place],
    kind: (bool, bool, u16),
) -> Result<(PathBuf, Place, ElfInfo), ClosureError> {
    let missing = |searched: Vec<PathBuf>| ClosureError::Missing {
        name: name.to_owned(),
        needed_by: obj.host.clone(),
        searched,
    };
    if name.contains('/') {
        if !name.starts_with('/') {
            return Err(ClosureError::RelativeName {
                name: name.to_owned(),
                needed_by: obj.host.clone(),
            });
        }
        let path = PathBuf::from(name);
        let dir = path.parent().unwrap_or(Path::new("/")).to_owned();
        return match compatible(&path, kind) {
            Some(info) => Ok((path, Place::same(&dir), info)),
            None => Err(missing(vec![dir])),
        };
    }
    search
        .iter()
        .find_map(|place| {
            let candidate = place.host.join(name);
            compatible(&candidate, kind).map(|info| (candidate, place.clone(), info))
        })
        .ok_or_else(|| missing(search.iter().map(|p| p.host.clone()).collect()))
}

/// A search directory on the host and where the same directory is in the image. They differ
/// only for `$ORIGIN` of an object packed elsewhere than where it is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    host: PathBuf,
    image: PathBuf,
}

impl Place {
    fn same(dir: &Path) -> Place {
        Place {
            host: dir.to_owned(),
            image: dir.to_owned(),
        }
    }

    /// Where a host path under this directory goes in the image (others stay where they are).
    fn image_of(&self, host: &Path) -> PathBuf {
        match host.strip_prefix(&self.host) {
            Ok(rest) => self.image.join(rest),
            Err(_) => host.to_owned(),
        }
    }
}

/// An object being loaded, with what its dependencies inherit from it.
struct Object {
    /// Real path on the host (after symlinks): `$ORIGIN` on the host is its directory.
    host: PathBuf,
    /// Its path in the image: `$ORIGIN` when the image runs.
    image: PathBuf,
    info: ElfInfo,
    /// `DT_RPATH` directories inherited from the objects that loaded it.
    rpaths: Vec<Place>,
}

impl Object {
    /// Expands search directories to (host, image) pairs. `$ORIGIN` differs between the two
    /// when the object is packed somewhere else than where it is on the host. Entries with
    /// other dynamic tokens (`$LIB`, `$PLATFORM`) are skipped: their values are the
    /// packing machine's.
    fn expand(&self, dirs: &[String]) -> Vec<Place> {
        let host_origin = self.host.parent().unwrap_or(Path::new("/"));
        let image_origin = self.image.parent().unwrap_or(Path::new("/"));
        dirs.iter()
            .filter(|d| !d.is_empty())
            .filter_map(|d| {
                let (host, image) = if d.contains("$ORIGIN") || d.contains("${ORIGIN}") {
                    let with = |o: &Path| {
                        let o = o.to_string_lossy();
                        d.replace("${ORIGIN}", &o).replace("$ORIGIN", &o)
                    };
                    (with(host_origin), with(image_origin))
                } else {
                    (d.clone(), d.clone())
                };
                if host.contains('$') || !host.starts_with('/') {
                    return None;
                }
                Some(Place {
                    host: normalize(Path::new(&host)),
                    image: normalize(Path::new(&image)),
                })
            })
            .collect()
    }
}

/// Which loader an interpreter is, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Flavor {
    Glibc,
    /// musl, with its architecture name (`x86_64` in `ld-musl-x86_64.so.1`).
    Musl(String),
}

impl Flavor {
    fn of(interp: &Path) -> Flavor {
        let name = interp.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match name
            .strip_prefix("ld-musl-")
            .and_then(|n| n.strip_suffix(".so.1"))
        {
            Some(arch) => Flavor::Musl(arch.to_owned()),
            None => Flavor::Glibc,
        }
    }

    /// The loader's built-in directories. `interp_file` is the interpreter's real file.
    fn default_dirs(&self, interp_file: &Path, is_64: bool) -> Vec<PathBuf> {
        match self {
            Flavor::Musl(arch) => {
                // musl reads /etc/ld-musl-ARCH.path instead of any built-in list.
                let conf = PathBuf::from(format!("/etc/ld-musl-{arch}.path"));
                match fs::read_to_string(&conf) {
                    Ok(text) => text
                        .split([':', '\n'])
                        .map(str::trim)
                        .filter(|d| d.starts_with('/'))
                        .map(PathBuf::from)
                        .collect(),
                    Err(_) => ["/lib", "/usr/local/lib", "/usr/lib"]
                        .map(PathBuf::from)
                        .to_vec(),
                }
            }
            Flavor::Glibc => {
                let mut dirs = Vec::new();
                if let Some(slib) = interp_file.parent() {
                    // `/usr/lib/x86_64-linux-gnu` → `/lib/x86_64-linux-gnu` first, as
                    // glibc lists them.
                    let bare = slib.strip_prefix("/usr").map(|r| Path::new("/").join(r));
                    let bare = bare.unwrap_or_else(|_| slib.to_owned());
                    dirs.push(bare.clone());
                    if let Ok(rest) = bare.strip_prefix("/") {
                        dirs.push(Path::new("/usr").join(rest));
                    }
                }
                let lib = if is_64 {
                    ["/lib64", "/usr/lib64"]
                } else {
                    ["/lib", "/usr/lib"]
                };
                dirs.extend(lib.map(PathBuf::from));
                dirs.extend(["/lib", "/usr/lib"].map(PathBuf::from));
                dirs
            }
        }
    }
}

/// Directories listed in an ld.so.conf file, following `include` globs. Missing or
/// unreadable files list nothing (the loader then uses its defaults too).
pub fn ld_so_conf(path: &Path, depth: usize) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut dirs = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line
            .strip_prefix("include")
            .filter(|r| r.starts_with([' ', '\t']))
        {
            if depth >= MAX_CONF_DEPTH {
                continue;
            }
            for pattern in pattern.split_whitespace() {
                let pattern = match path.parent() {
                    Some(dir) if !pattern.starts_with('/') => dir.join(pattern),
                    _ => PathBuf::from(pattern),
                };
                for file in glob(&pattern) {
                    dirs.extend(ld_so_conf(&file, depth + 1));
                }
            }
        } else if line.starts_with('/') {
            // `DIR` or the old `DIR=TYPE`; ldconfig also splits on these separators.
            for dir in line.split([' ', '\t', ',', ':']) {
                let dir = dir.split('=').next().unwrap_or("");
                if dir.starts_with('/') {
                    dirs.push(PathBuf::from(dir));
                }
            }
        }
    }
    dirs
}

/// Files matching `pattern`, sorted, where only the last component may hold `*` and `?`
/// (ld.so.conf's includes are always of that shape).
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (
        pattern.parent(),
        pattern.file_name().and_then(|n| n.to_str()),
    ) else {
        return Vec::new();
    };
    let Some(matcher) = file_pattern(name) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| matcher.is_match(e.file_name()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// A file-name pattern as glob(3) reads one (`*`, `?`, `[...]`), compiled by globset (a
/// regular expression underneath: linear in the name, where backtracking was exponential
/// on patterns such as `*a*a*a*b`); `None` if it is not a valid pattern.
fn file_pattern(pattern: &str) -> Option<globset::GlobMatcher> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .ok()
        .map(|g| g.compile_matcher())
}

/// `path`'s ELF facts, if it is a file the loader would accept for an object of `kind`.
fn compatible(path: &Path, kind: (bool, bool, u16)) -> Option<ElfInfo> {
    if !fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return None;
    }
    read_elf(path)
        .ok()
        .flatten()
        .filter(|info| info.kind == kind)
}

/// Resolves `path` one component at a time, as the kernel does, calling `visit` with every
/// symlink met and finally with the file it leads to; returns that file's path.
pub fn walk(path: &Path, visit: &mut dyn FnMut(&Path)) -> io::Result<PathBuf> {
    let mut todo: VecDeque<PathBuf> = components(path);
    let mut at = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        if part == Path::new("/") {
            at = PathBuf::from("/");
            continue;
        }
        if part == Path::new("..") {
            at.pop();
            continue;
        }
        let next = at.join(&part);
        let meta = fs::symlink_metadata(&next)?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io::Error::other(format!(
                    "more than {MAX_SYMLINKS} symlinks resolving {}",
                    path.display()
                )));
            }
            visit(&next);
            let target = fs::read_link(&next)?;
            for c in components(&target).into_iter().rev() {
                todo.push_front(c);
            }
        } else {
            at = next;
        }
    }
    if !fs::metadata(&at)?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            at.display()
        )));
    }
    visit(&at);
    Ok(at)
}

/// `/`, `..` and names; `.` dropped.
fn components(path: &Path) -> VecDeque<PathBuf> {
    path.components()
        .filter_map(|c| match c {
            Component::RootDir => Some(PathBuf::from("/")),
            Component::ParentDir => Some(PathBuf::from("..")),
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Lexically resolves `.` and `..` (`/..` is `/`, as for the loader).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn dedup(dirs: &mut Vec<PathBuf>) {
    let mut seen = HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
}

/// The closure being collected, each image path once.
#[derive(Default)]
struct Closure {
    items: Vec<Needed>,
    seen: HashSet<PathBuf>,
}

impl Closure {
    fn push(&mut self, host: &Path, image: &Path) {
        if self.seen.insert(image.to_owned()) {
            self.items.push(Needed {
                host: host.to_owned(),
                image: image.to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn file_patterns_match_like_glob() {
        let m = |p: &str, n: &str| file_pattern(p).expect("pattern").is_match(n);
        assert!(m("*.conf", "libc.conf"));
        assert!(m("*.conf", ".conf"));
        assert!(!m("*.conf", "libc.conf~"));
        assert!(m("a?c*", "abcdef"));
        assert!(!m("a?c", "ac"));
        assert!(m("x86_64-[lz]*.conf", "x86_64-linux-gnu.conf"));
        // Many stars and a name that almost matches: answered, not backtracked for ages.
        let name = "a".repeat(64);
        assert!(!m("*a*a*a*a*a*a*a*a*a*a*a*a*b", &name));
    }

    #[test]
    fn ld_so_conf_follows_includes_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::create_dir(d.join("conf.d")).expect("mkdir");
        fs::write(
            d.join("ld.so.conf"),
            "# comment\n/first\ninclude conf.d/*.conf\n/last # trailing\n",
        )
        .expect("write");
        fs::write(d.join("conf.d/b.conf"), "/b1\n/b2=libc6\n").expect("write");
        fs::write(d.join("conf.d/a.conf"), "/a\ninclude ../ld.so.conf\n").expect("write");
        fs::write(d.join("conf.d/skip.txt"), "/no\n").expect("write");
        let dirs = ld_so_conf(&d.join("ld.so.conf"), 0);
        // The self-include loops until the depth limit, then the rest reads normally.
        let want: Vec<PathBuf> = ["/first", "/a"].map(PathBuf::from).to_vec();
        assert_eq!(dirs[..2], want[..]);
        assert_eq!(dirs.last(), Some(&PathBuf::from("/last")));
        assert!(dirs.contains(&PathBuf::from("/b2")));
        assert!(!dirs.contains(&PathBuf::from("/no")));
    }

    #[test]
    fn walk_reports_every_symlink_then_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = fs::canonicalize(dir.path()).expect("canonical");
        fs::create_dir_all(d.join("usr/lib")).expect("mkdir");
        fs::write(d.join("usr/lib/libx.so.1.2"), b"x").expect("write");
        symlink("usr/lib", d.join("lib")).expect("symlink");
        symlink("libx.so.1.2", d.join("usr/lib/libx.so.1")).expect("symlink");
        symlink(d.join("lib/libx.so.1"), d.join("abs")).expect("symlink");
        let mut seen = Vec::new();
        let file = walk(&d.join("abs"), &mut |p| seen.push(p.to_owned())).expect("walk");
        assert_eq!(file, d.join("usr/lib/libx.so.1.2"));
        assert_eq!(
            seen,
            [
                d.join("abs"),
                d.join("lib"),
                d.join("usr/lib/libx.so.1"),
                d.join("usr/lib/libx.so.1.2")
            ]
        );
        symlink("loop", d.join("loop")).expect("symlink");
        let err = walk(&d.join("loop"), &mut |_| {}).expect_err("loop");
        assert!(err.to_string().contains("symlinks"), "{err}");
        assert!(
            walk(&d.join("usr"), &mut |_| {}).is_err(),
            "a directory is no file"
        );
    }

    #[test]
    fn glibc_defaults_follow_the_interpreter() {
        let debian = Flavor::Glibc.default_dirs(
            Path::new("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            true,
        );
        assert_eq!(
            debian[..2],
            [
                PathBuf::from("/lib/x86_64-linux-gnu"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu")
            ]
        );
        assert_eq!(
            Flavor::of(Path::new("/lib/ld-musl-aarch64.so.1")),
            Flavor::Musl("aarch64".into())
        );
    }

    /// A minimal little-endian ELF64 executable: one PT_INTERP segment of `claimed` bytes
    /// holding `interp`, the file padded to `len` bytes.
    fn tiny_elf(interp: &str, claimed: u64, len: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes()); // entry
        f.extend_from_slice(&64u64.to_le_bytes()); // phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // shoff
        f.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, 1, 64, 0, 0] {
            f.extend_from_slice(&v.to_le_bytes()); // ehsize phentsize phnum shentsize shnum shstrndx
        }
        f.extend_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        f.extend_from_slice(&4u32.to_le_bytes());
        for v in [120u64, 0, 0, claimed, claimed, 1] {
            f.extend_from_slice(&v.to_le_bytes()); // offset vaddr paddr filesz memsz align
        }
        f.extend_from_slice(interp.as_bytes());
        f.push(0);
        f.resize(len.max(f.len()), 0);
        f
    }

    #[test]
    fn headers_are_read_and_implausible_sizes_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = dir.path().join("ok");
        let interp = "/nonexistent/ld.so";
        fs::write(&ok, tiny_elf(interp, interp.len() as u64 + 1, 0)).expect("write");
        let info = read_elf(&ok).expect("parse").expect("is ELF");
        assert_eq!(info.interpreter, Some(PathBuf::from(interp)));
        assert!(info.needed.is_empty());
        let err = closure(&ok, Path::new("/ok"), &info, None).expect_err("no interpreter");
        assert!(
            err.to_string()
                .starts_with("program interpreter /nonexistent/ld.so of "),
            "{err}"
        );
        // Inside the file, but far beyond what an interpreter path can be.
        let big = dir.path().join("big");
        fs::write(&big, tiny_elf(interp, 1 << 16, 1 << 17)).expect("write");
        let err = read_elf(&big).expect_err("implausible").to_string();
        assert!(err.contains("claims 65536 bytes"), "{err}");
    }

    /// Input files are untrusted: damaged headers give an error (or a harmless answer),
    /// never a panic. Byte flips in the program headers of a real ELF file (this test binary).
    #[test]
    fn damaged_headers_never_panic() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("elf");
        fs::copy(std::env::current_exe().expect("exe"), &copy).expect("copy");
        let original = fs::read(&copy).expect("read");
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&copy)
            .expect("open");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut parsed, mut refused) = (0, 0);
        for _ in 0..400 {
            let mut flips = Vec::new();
            for _ in 0..1 + next() % 4 {
                // The ELF header and the program headers live in the first KiB.
                let at = (next() % 1024) as usize;
                flips.push(at);
                file.write_at(&[next() as u8], at as u64).expect("flip");
            }
            match read_elf(&copy) {
                Ok(_) => parsed += 1,
                Err(_) => refused += 1,
            }
            for at in flips {
                file.write_at(&original[at..at + 1], at as u64)
                    .expect("restore");
            }
        }
        assert!(
            parsed > 0 && refused > 0,
            "{parsed} parsed, {refused} refused"
        );
    }

    #[test]
    fn non_elf_files_are_not_elf() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("script");
        fs::write(&f, b"#!/bin/sh\necho hi\n").expect("write");
        assert_eq!(read_elf(&f).expect("read"), None);
        let empty = dir.path().join("empty");
        fs::write(&empty, b"").expect("write");
        assert_eq!(read_elf(&empty).expect("read"), None);
        // ELF magic and then garbage: an error that names the file.
        let bad = dir.path().join("bad");
        fs::write(&bad, b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0").expect("write");
        let err = read_elf(&bad).expect_err("truncated").to_string();
        assert!(err.contains("bad"), "{err}");
    }
}
