//! The plan of a layer: every entry it will hold, sorted by path, each parent directory once,
//! found from the inputs and what they need to run. Only metadata is read here (and ELF
//! headers); the bytes are read when the layer is written.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{Input, PackError};
use crate::runtime::elf;
use crate::store::FileStamp;

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
    /// Why it is in the layer: conflict messages name both sides by it.
    origin: Origin,
}

/// Why an entry is in the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// A host path named as an input, or found inside an input directory.
    Input(PathBuf),
    /// A host path the executable `exe` needs at run time (interpreter, library, symlink).
    Runtime { host: PathBuf, exe: PathBuf },
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

/// The layer's contents, keyed by path in the image (relative, no leading `/`). `PathBuf`
/// orders by component, so a directory always precedes what it contains.
pub(super) type Plan = BTreeMap<PathBuf, Entry>;

/// Walks the inputs (metadata only) into a sorted plan of entries, with every parent
/// directory present once, plus the runtime closure (interpreter, libraries) of each input
/// that is a dynamically linked executable. Fails on a missing or unsupported input, or a
/// library that cannot be found, before any byte is packed.
pub(super) fn plan(inputs: &[Input]) -> Result<(Plan, Vec<PathBuf>), PackError> {
    let mut plan = Plan::new();
    let mut runtime = Vec::new();
    // Files named as inputs: those that are dynamic executables get their closure.
    let mut named_files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(&input.source).map_err(|source| PackError::Read {
            path: input.source.clone(),
            source,
        })?;
        let dest = PathBuf::from(input.dest.trim_start_matches('/'));
        add_parents(&mut plan, &dest, &Adding::Input.origin(&input.source))?;
        if meta.is_file() {
            named_files.push(input);
        }
        add(&mut plan, dest, &input.source, &meta, &Adding::Input)?;
    }
    // After the inputs, so an input that is itself one of the libraries is already there.
    for input in named_files {
        let Some(info) = elf::read_elf(&input.source)? else {
            continue;
        };
        let adding = Adding::Runtime(&input.source);
        for needed in elf::closure(&input.source, Path::new(&input.dest), &info)? {
            let dest = needed
                .image
                .strip_prefix("/")
                .unwrap_or(&needed.image)
                .to_owned();
            add_parents(&mut plan, &dest, &adding.origin(&needed.host))?;
            let meta =
                std::fs::symlink_metadata(&needed.host).map_err(|source| PackError::Read {
                    path: needed.host.clone(),
                    source,
                })?;
            if !plan.contains_key(&dest) {
                runtime.push(needed.image.clone());
            }
            add(&mut plan, dest, &needed.host, &meta, &adding)?;
        }
    }
    Ok((plan, runtime))
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
    let ft = meta.file_type();
    let mode = meta.permissions().mode() & 0o7777;
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File {
            source: source.to_owned(),
            stamp: FileStamp::of(meta),
        }
    } else if ft.is_symlink() {
        Kind::Symlink {
            target: std::fs::read_link(source).map_err(read_err)?,
        }
    } else {
        return Err(PackError::Unsupported {
            path: source.to_owned(),
            kind: special_kind(meta),
        });
    };
    let is_dir = kind == Kind::Dir;
    // `dest` empty means the image root: only a directory's contents can go there.
    if !dest.as_os_str().is_empty() {
        let entry = Entry {
            mode: if ft.is_symlink() { 0o777 } else { mode },
            kind,
            origin: adding.origin(source),
        };
        match plan.get_mut(&dest) {
            None => {
                plan.insert(dest.clone(), entry);
            }
            // Two directories merge; an explicit directory's mode wins over an implied one.
            Some(existing) if existing.kind == Kind::Dir && is_dir => {
                if matches!(existing.origin, Origin::Parent(_)) {
                    *existing = entry;
                }
            }
            // The same file or symlink reached twice (a library two executables need).
            Some(existing) if existing.kind == entry.kind && existing.mode == entry.mode => {}
            Some(existing) => {
                return Err(PackError::Conflict {
                    dest: format!("/{}", dest.display()),
                    first: existing.origin.to_string(),
                    second: entry.origin.to_string(),
                });
            }
        }
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
        let (p, _) = plan(&inputs).expect("plan");
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
        let err = plan(&clash).expect_err("conflict").to_string();
        assert!(err.contains("both go to /x"), "{err}");
    }
}
