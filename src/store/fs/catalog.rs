//! The directory engine's index of repositories: what makes a catalog page cost the names
//! on it, not a walk of every folder before it (at 10,000 repositories a walked page took
//! 15-20 ms: seven system calls per repository, four of them to look for namespaces below it).
//!
//! `<root>/repositories.log` names every repository that has had a record folder (`_tags`,
//! `_blobs`, `_manifests`), one per line. Whichever process makes such a folder appends the
//! name first (`\nNAME\n`, one `write` with `O_APPEND`, then `fdatasync`) and makes the
//! folder after, so a crash can leave a name without a repository, never a repository without
//! its name. The leading newline ends a line a crash tore, so that it cannot swallow the next.
//! A repository whose last tag and links were removed keeps its line (its folders stay too);
//! a page checks that each name it lists still holds something, as the walk did.
//!
//! `<root>/repositories.sorted` holds the names the log held up to some offset, sorted, once
//! each, after a header naming that offset. A page binary-searches it for `last` (a few
//! `pread`s of 1 KiB), reads on from there, merges what it finds with the names the log got
//! past that offset (kept in memory), and checks each name (three system calls, on threads
//! for a big page). So neither memory nor a page's cost grows with the store: once the log
//! holds [`MERGE_AT`] names past the sorted file, the page that finds them writes a new sorted
//! file (a streaming merge into a temp file, renamed over the old one). Two processes may
//! both do so: each file is whole and right for the offset it names, and each process reads
//! the log on from the offset of the file it opened.
//!
//! A store made before the log has none. Writers only append to a log that exists; the first
//! page that finds none makes it, walks the folders, appends every repository found, writes
//! the sorted file from the walk (already in order) and what others appended meanwhile, and
//! then writes `repositories.ready` (pages wait for that). A writer that found no log checks again
//! after making its folder and appends if the log appeared meanwhile: either its folder was
//! made before the log (and the walk, which starts after, finds it) or it appends. Where no
//! log can be made (a read-only store), pages walk the folders.

use std::collections::BTreeSet;
use std::fs as stdfs;
use std::io::{self, Write};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::reference::Name;
use crate::store::{Result, StoreError, ctx, sync_dir};

/// The log, below the store's root.
pub(crate) const LOG: &str = "repositories.log";
/// Present once the log names every repository (see the module doc).
pub(crate) const READY: &str = "repositories.ready";

/// The sorted names the log held up to the offset in its header (see the module doc).
pub(crate) const SORTED: &str = "repositories.sorted";
/// A sorted file's first line, before the log offset it covers.
const SORTED_MAGIC: &str = "quinistry repositories sorted 1 log ";

/// Names past the sorted file at which a page writes a new one: ~1 MB held in memory at
/// most, and at 1,000,000 repositories a rewrite of ~20 MB per 16,384 new ones.
pub(crate) const MERGE_AT: usize = 16_384;

/// Bytes read from the log at a time.
const CHUNK: usize = 1 << 16;

/// Bytes read at each step of the binary search: holds the end of one line and the whole
/// next one, as a name is at most 255 bytes (the sorted file holds valid names only).
const PROBE: usize = 1024;

/// The binary search stops when this few bytes are left, read on in one go.
const SEARCH_LEFT: u64 = 4096;

#[derive(Debug, Default)]
pub(crate) struct Catalog {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    index: Option<Index>,
    /// A log could not be made (a store on a read-only mount): pages are walked.
    unwritable: bool,
}

/// What this process reads a ready log through.
#[derive(Debug)]
struct Index {
    log: stdfs::File,
    /// Bytes of the log read, up to the end of its last whole line.
    read: u64,
    /// The sorted file this process opened, if any: the names up to its offset.
    sorted: Option<Sorted>,
    /// The names read from the log past the sorted file.
    tail: BTreeSet<Box<str>>,
    /// Tail size at which to write a new sorted file (raised after a failed write).
    merge_at: usize,
}

/// An open sorted file.
#[derive(Debug)]
struct Sorted {
    file: stdfs::File,
    /// Where the names begin (after the header) and end.
    start: u64,
    end: u64,
}

impl Catalog {
    /// Appends `name` to the log if there is one; whether there was.
    pub(crate) fn note(&self, root: &Path, name: &Name) -> Result<bool> {
        let path = root.join(LOG);
        let mut log = match stdfs::OpenOptions::new().append(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return ctx(Err(e), "open", &path),
        };
        let line = format!("\n{name}\n");
        ctx(log.write_all(line.as_bytes()), "append to", &path)?;
        ctx(log.sync_data(), "fsync", &path)?;
        Ok(true)
    }

    /// Up to `limit` names after `after`, in order, from the log read up to its end. A store
    /// without a ready log gets one first, from `walk` (every repository; see `build`);
    /// `None` when it cannot (then the caller walks). A new sorted file is written through
    /// `temp` (a temp file in the store) when due. Names are not checked here.
    pub(crate) fn names_after(
        &self,
        root: &Path,
        after: Option<&str>,
        limit: usize,
        walk: impl FnOnce() -> Result<Vec<Name>>,
        temp: impl Fn() -> Result<(stdfs::File, tempfile::TempPath)>,
    ) -> Result<Option<Vec<Box<str>>>> {
        // Held while a log is built: a second first page waits for it rather than walking.
        let mut state = self.lock();
        if state.unwritable {
            return Ok(None);
        }
        let path = root.join(LOG);
        let index = match &mut state.index {
            Some(index) => index,
            slot @ None => {
                if !ready(root)?
                    && let Err(e) = build(root, walk, &temp)
                {
                    tracing::warn!(error = %e, "no log of repositories: catalog pages walk the store's folders");
                    state.unwritable = true;
                    return Ok(None);
                }
                let log = ctx(stdfs::File::open(&path), "open", &path)?;
                let sorted = Sorted::open(root, &log)?;
                slot.insert(Index {
                    log,
                    read: sorted.as_ref().map_or(0, |(_, covers)| *covers),
                    sorted: sorted.map(|(s, _)| s),
                    tail: BTreeSet::new(),
                    merge_at: MERGE_AT,
                })
            }
        };
        index.catch_up(&path)?;
        if index.tail.len() >= index.merge_at
            && let Err(e) = index.merge(root, &temp)
        {
            // Pages go on from the log and the old file; the next try waits a while.
            tracing::warn!(error = %e, "could not write the sorted list of repositories");
            index.merge_at = index.tail.len() * 2;
        }
        let from = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut tail = index
            .tail
            .range::<str, _>((from, Bound::Unbounded))
            .peekable();
        let sorted = match &index.sorted {
            Some(file) => file.after(root, after, limit)?,
            None => Vec::new(),
        };
        // Both in order: merged, a name in both once.
        let mut out: Vec<Box<str>> = Vec::with_capacity(limit.min(sorted.len() + 64));
        let mut sorted = sorted.into_iter().peekable();
        while out.len() < limit {
            let next = match (sorted.peek(), tail.peek()) {
                (None, None) => break,
                (Some(a), Some(b)) if a.as_ref() == b.as_ref() => {
                    tail.next();
                    sorted.next()
                }
                (Some(a), Some(b)) if b.as_ref() < a.as_ref() => tail.next().cloned(),
                (Some(_), _) => sorted.next(),
                (None, Some(_)) => tail.next().cloned(),
            };
            out.extend(next);
        }
        Ok(Some(out))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Index {
    /// Adds the whole lines appended since the last read. A line being appended now is
    /// left for the next read; one a crash tore is a name that is no repository (the page
    /// checks each name).
    fn catch_up(&mut self, path: &Path) -> Result<()> {
        let mut pending = Vec::new();
        let mut buf = vec![0; CHUNK];
        let mut at = self.read;
        let mut new: Vec<Box<str>> = Vec::new();
        loop {
            let n = ctx(self.log.read_at(&mut buf, at), "read", path)?;
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            at += n as u64;
            // Whole lines so far: take them, keep the rest.
            if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
                for line in pending[..end].split(|&b| b == b'\n') {
                    if let Ok(name) = std::str::from_utf8(line)
                        && !name.is_empty()
                    {
                        new.push(name.into());
                    }
                }
                self.read += end as u64 + 1;
                pending.drain(..=end);
            }
        }
        if new.len() > self.tail.len() {
            // A big read (a log from before the sorted file): one sort and a bulk build,
            // not an insert a name (1,000,000 names: 1.6-2.7 s became 0.8 s).
            new.extend(std::mem::take(&mut self.tail));
            self.tail = new.into_iter().collect();
        } else {
            self.tail.extend(new);
        }
        Ok(())
    }

    /// Writes the sorted file anew: the old one's names and the tail's, merged as they
    /// stream (valid names only, each once), covering the log up to `read`.
    fn merge(
        &mut self,
        root: &Path,
        temp: impl FnOnce() -> Result<(stdfs::File, tempfile::TempPath)>,
    ) -> Result<()> {
        let mut out = Writer::new(temp, self.read)?;
        let mut tail = self
            .tail
            .iter()
            .filter(|n| n.parse::<Name>().is_ok())
            .peekable();
        if let Some(old) = &self.sorted {
            let mut lines = Lines::new(&old.file, SORTED, old.start, old.end);
            while let Some(name) = lines.next_line(root)? {
                out.put_merged(&name, &mut tail)?;
            }
        }
        for t in tail {
            out.put(t)?;
        }
        self.sorted = Some(out.finish(root)?);
        self.tail.clear();
        self.merge_at = MERGE_AT;
        Ok(())
    }
}

/// A new sorted file: a temp file of the store, renamed into place when whole.
struct Writer {
    out: io::BufWriter<stdfs::File>,
    path: tempfile::TempPath,
    start: u64,
}

impl Writer {
    /// Starts one covering the log up to `covers`.
    fn new(
        temp: impl FnOnce() -> Result<(stdfs::File, tempfile::TempPath)>,
        covers: u64,
    ) -> Result<Writer> {
        let (file, path) = temp()?;
        let mut out = io::BufWriter::with_capacity(CHUNK, file);
        let header = format!("{SORTED_MAGIC}{covers}\n");
        ctx(out.write_all(header.as_bytes()), "write", &path)?;
        Ok(Writer {
            out,
            path,
            start: header.len() as u64,
        })
    }

    /// Adds `name`, which sorts after every name added before it.
    fn put(&mut self, name: &str) -> Result<()> {
        let line = self
            .out
            .write_all(name.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"));
        ctx(line, "write", &self.path)
    }

    /// Adds the names of `others` (sorted) that sort before `name`, then `name`, and drops
    /// `name` from `others` if it is there too: one step of a merge of two sorted lists.
    fn put_merged<S: AsRef<str>>(
        &mut self,
        name: &str,
        others: &mut std::iter::Peekable<impl Iterator<Item = S>>,
    ) -> Result<()> {
        while let Some(o) = others.next_if(|o| o.as_ref() < name) {
            self.put(o.as_ref())?;
        }
        others.next_if(|o| o.as_ref() == name);
        self.put(name)
    }

    /// Makes it durable and puts it in place; the file, open.
    fn finish(self, root: &Path) -> Result<Sorted> {
        let Writer { out, path, start } = self;
        let file = ctx(out.into_inner().map_err(|e| e.into_error()), "write", &path)?;
        ctx(file.sync_data(), "fsync", &path)?;
        let target = root.join(SORTED);
        ctx(
            path.persist(&target).map_err(|e| e.error),
            "rename",
            &target,
        )?;
        sync_dir(root)?;
        let end = ctx(file.metadata(), "stat", &target)?.len();
        Ok(Sorted { file, start, end })
    }
}

impl Sorted {
    /// The store's sorted file and the log offset it covers, if it has a whole one. One
    /// that is not (a header that does not parse, an offset past the log's end) is left
    /// for the next merge to replace: the log is read from its start meanwhile.
    fn open(root: &Path, log: &stdfs::File) -> Result<Option<(Sorted, u64)>> {
        let path = root.join(SORTED);
        let file = match stdfs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return ctx(Err(e), "open", &path),
        };
        let mut head = [0; 128];
        let n = ctx(file.read_at(&mut head, 0), "read", &path)?;
        let covers = head[..n]
            .strip_prefix(SORTED_MAGIC.as_bytes())
            .and_then(|rest| {
                let digits = rest.iter().position(|&b| b == b'\n')?;
                let offset = std::str::from_utf8(&rest[..digits])
                    .ok()?
                    .parse::<u64>()
                    .ok()?;
                Some((offset, (SORTED_MAGIC.len() + digits + 1) as u64))
            });
        let log_len = ctx(log.metadata(), "stat", &path)?.len();
        let end = ctx(file.metadata(), "stat", &path)?.len();
        match covers {
            Some((offset, start)) if offset <= log_len => {
                Ok(Some((Sorted { file, start, end }, offset)))
            }
            _ => {
                tracing::warn!(path = %path.display(), "ignoring a sorted list of repositories that is not whole");
                Ok(None)
            }
        }
    }

    /// Up to `limit` names after `after`, in order: a binary search for the first line
    /// past `after`, then the lines from there.
    fn after(&self, root: &Path, after: Option<&str>, limit: usize) -> Result<Vec<Box<str>>> {
        let path = || root.join(SORTED);
        // Lines starting before `lo` are <= after; lines starting at or past `hi` are not.
        let (mut lo, mut hi) = (self.start, self.end);
        if let Some(after) = after {
            let mut buf = [0; PROBE];
            while hi - lo > SEARCH_LEFT {
                let mid = lo + (hi - lo) / 2;
                // From the byte before `mid`: its line's end, then the next line whole.
                let n = ctx(self.file.read_at(&mut buf, mid - 1), "read", &path())?;
                let line = buf[..n].iter().position(|&b| b == b'\n').and_then(|i| {
                    let rest = &buf[i + 1..n];
                    let len = rest.iter().position(|&b| b == b'\n')?;
                    Some((mid + i as u64, &rest[..len]))
                });
                match line {
                    Some((at, name)) if at < hi => {
                        if name <= after.as_bytes() {
                            lo = at + name.len() as u64 + 1;
                        } else {
                            hi = at;
                        }
                    }
                    // No line starts in [mid, hi).
                    _ => hi = mid,
                }
            }
        }
        let mut lines = Lines::new(&self.file, SORTED, lo, self.end);
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(name) = lines.next_line(root)? else {
                break;
            };
            if after.is_none_or(|a| name.as_str() > a) {
                out.push(name.into_boxed_str());
            }
        }
        Ok(out)
    }
}

/// The lines of a byte range of a file, read in chunks.
struct Lines<'a> {
    file: &'a stdfs::File,
    /// The file's name below the root, for errors.
    name: &'static str,
    at: u64,
    end: u64,
    buf: Vec<u8>,
    used: usize,
}

impl<'a> Lines<'a> {
    fn new(file: &'a stdfs::File, name: &'static str, at: u64, end: u64) -> Lines<'a> {
        Lines {
            file,
            name,
            at,
            end,
            buf: Vec::new(),
            used: 0,
        }
    }

    /// The next line, without its newline; `None` at the end (a last line without one
    /// is not whole, and left out).
    fn next_line(&mut self, root: &Path) -> Result<Option<String>> {
        loop {
            if let Some(len) = self.buf[self.used..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[self.used..self.used + len];
                self.used += len + 1;
                return Ok(Some(String::from_utf8_lossy(line).into_owned()));
            }
            if self.at >= self.end {
                return Ok(None);
            }
            self.buf.drain(..self.used);
            self.used = 0;
            let have = self.buf.len();
            let want = CHUNK.min((self.end - self.at) as usize);
            self.buf.resize(have + want, 0);
            let n = ctx(
                self.file.read_at(&mut self.buf[have..], self.at),
                "read",
                &root.join(self.name),
            )?;
            self.buf.truncate(have + n);
            if n == 0 {
                return Ok(None);
            }
            self.at += n as u64;
        }
    }
}

/// Whether the log of `root` names every repository.
fn ready(root: &Path) -> Result<bool> {
    let path = root.join(READY);
    match stdfs::symlink_metadata(&path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => ctx(Err(e), "stat", &path),
    }
}

/// Makes the log of a store that has none ready: creates it, appends what `walk` finds
/// (every repository, walked after the log exists), writes the sorted file of what the log
/// then holds, and marks it ready. Safe to run twice, or in two processes at once (a name
/// twice is one name).
fn build(
    root: &Path,
    walk: impl FnOnce() -> Result<Vec<Name>>,
    temp: impl FnOnce() -> Result<(stdfs::File, tempfile::TempPath)>,
) -> Result<()> {
    let path = root.join(LOG);
    let mut log = ctx(
        stdfs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path),
        "create",
        &path,
    )?;
    sync_dir(root)?;
    let names = walk()?;
    // Whole lines a write: a writer's line appended meanwhile falls between two of ours.
    let mut text = String::with_capacity(CHUNK + 300);
    for (i, name) in names.iter().enumerate() {
        text.push('\n');
        text.push_str(name.as_str());
        text.push('\n');
        if text.len() >= CHUNK || i + 1 == names.len() {
            ctx(log.write_all(text.as_bytes()), "append to", &path)?;
            text.clear();
        }
    }
    ctx(log.sync_data(), "fsync", &path)?;
    // The walk is in the catalog's order; the sorted file is its names and those other
    // writers appended meanwhile, so that a first page need not read the log whole.
    if let Err(e) = sorted_from_walk(root, &names, temp) {
        tracing::warn!(error = %e, "could not write the sorted list of repositories");
    }
    let ready = root.join(READY);
    ctx(stdfs::File::create(&ready), "create", &ready)?;
    sync_dir(root)
}

/// Writes the sorted file of the log as it is after `build` appended `walked` (sorted),
/// opened again to read: `build`'s handle only appends.
fn sorted_from_walk(
    root: &Path,
    walked: &[Name],
    temp: impl FnOnce() -> Result<(stdfs::File, tempfile::TempPath)>,
) -> Result<()> {
    let path = root.join(LOG);
    if !walked.is_sorted_by(|a, b| a.as_str() < b.as_str()) {
        return Err(StoreError::Io {
            action: "sort",
            path,
            source: io::Error::other("the walk of repositories was not in order"),
        });
    }
    let log = ctx(stdfs::File::open(&path), "open", &path)?;
    let covers = ctx(log.metadata(), "stat", &path)?.len();
    let mut lines = Lines::new(&log, LOG, 0, covers);
    let mut others = BTreeSet::new();
    while let Some(line) = lines.next_line(root)? {
        let walked_too = walked
            .binary_search_by(|n| n.as_str().cmp(line.as_str()))
            .is_ok();
        if !walked_too && line.parse::<Name>().is_ok() {
            others.insert(line);
        }
    }
    let mut out = Writer::new(temp, covers)?;
    let mut others = others.into_iter().peekable();
    for name in walked {
        out.put_merged(name.as_str(), &mut others)?;
    }
    for o in others {
        out.put(&o)?;
    }
    out.finish(root)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of many lengths and namespaces, in no order; `i` picks one.
    fn name(i: usize) -> String {
        let j = (i * 7919) % 100_003;
        format!("ns{}/{}r{j}", j % 37, "x".repeat(j % 23))
    }

    fn pages(c: &Catalog, root: &Path, after: Option<&str>, n: usize) -> Vec<Box<str>> {
        let temp = || {
            let (file, path) = tempfile::NamedTempFile::new_in(root)
                .expect("temp")
                .into_parts();
            Ok((file, path))
        };
        c.names_after(root, after, n, || panic!("the log is ready"), temp)
            .expect("page")
            .expect("a log")
    }

    fn walk(c: &Catalog, root: &Path, n: usize) -> Vec<Box<str>> {
        let (mut all, mut after) = (Vec::new(), None::<Box<str>>);
        loop {
            let page = pages(c, root, after.as_deref(), n);
            assert!(page.len() <= n);
            let Some(last) = page.last().cloned() else {
                return all;
            };
            all.extend(page);
            after = Some(last);
        }
    }

    /// Pages come from the sorted file and the log's tail alike: from the start, from a name
    /// listed and from one that is not (the binary search), in this process and in another
    /// that opens the file, through a second merge, and past a sorted file that is not whole.
    #[test]
    fn pages_from_the_sorted_file_and_the_tail_match_a_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        stdfs::write(root.join(LOG), "").expect("log");
        stdfs::write(root.join(READY), "").expect("ready");
        let c = Catalog::default();
        let mut want = BTreeSet::<Box<str>>::new();
        let add = |c: &Catalog, want: &mut BTreeSet<Box<str>>, range: std::ops::Range<usize>| {
            for i in range {
                let n = name(i);
                assert!(c.note(root, &n.parse().expect("name")).expect("note"));
                want.insert(n.into());
            }
        };
        add(&c, &mut want, 0..MERGE_AT + 5);
        let first = pages(&c, root, None, 3);
        assert_eq!(first, want.iter().take(3).cloned().collect::<Vec<_>>());
        let text = stdfs::read_to_string(root.join(SORTED)).expect("sorted file");
        let log_len = stdfs::metadata(root.join(LOG)).expect("log").len();
        assert_eq!(
            text.lines().next(),
            Some(format!("{SORTED_MAGIC}{log_len}").as_str())
        );
        assert_eq!(text.lines().count(), want.len() + 1, "each name once");

        // A tail past the file: new names, and names the file holds already.
        add(&c, &mut want, MERGE_AT..MERGE_AT + 300);
        for n in [1, 333, 1000] {
            assert_eq!(walk(&c, root, n), want.iter().cloned().collect::<Vec<_>>());
        }
        let probes = (0..200).map(|i| format!("{}~", name(i * 31)));
        for (i, probe) in probes.enumerate() {
            let from = if i % 2 == 0 { probe } else { name(i * 53) };
            let got = pages(&c, root, Some(&from), 7);
            let expect: Vec<_> = want
                .range::<str, _>((Bound::Excluded(from.as_str()), Bound::Unbounded))
                .take(7)
                .cloned()
                .collect();
            assert_eq!(got, expect, "after {from}");
        }

        // Another process opens the file and reads the log on from its offset.
        let other = Catalog::default();
        assert_eq!(walk(&other, root, 1000), walk(&c, root, 1000));
        // A second merge, of the old file and a tail.
        add(&other, &mut want, 2 * MERGE_AT..3 * MERGE_AT);
        assert_eq!(walk(&other, root, 1000).len(), want.len());
        let text = stdfs::read_to_string(root.join(SORTED)).expect("sorted file");
        assert_eq!(text.lines().count(), want.len() + 1);
        assert_eq!(
            walk(&c, root, 500),
            want.iter().cloned().collect::<Vec<_>>()
        );

        // A file that is not whole is read past; the next merge replaces it.
        stdfs::write(
            root.join(SORTED),
            "quinistry repositories sorted 1 log 99999999999\nzz\n",
        )
        .expect("broken");
        let fresh = Catalog::default();
        assert_eq!(
            walk(&fresh, root, 1000),
            want.iter().cloned().collect::<Vec<_>>()
        );
        assert!(
            stdfs::read_to_string(root.join(SORTED))
                .expect("sorted")
                .lines()
                .count()
                > want.len()
        );
    }

    /// The sorted file a first page's walk writes holds the walk's names and those another
    /// writer appended while it ran, each once, in order.
    #[test]
    fn the_walk_that_makes_the_log_writes_its_sorted_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let c = Catalog::default();
        let walked: Vec<Name> = (0..5000)
            .map(name)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|n| n.parse().expect("name"))
            .collect();
        let walk = || {
            // Another writer, while the walk runs: one new name, one the walk finds too.
            for n in ["zz/new", name(7).as_str(), "aa/new"] {
                assert!(c.note(root, &n.parse().expect("name")).expect("note"));
            }
            Ok(walked.clone())
        };
        let temp = || {
            let (file, path) = tempfile::NamedTempFile::new_in(root)
                .expect("temp")
                .into_parts();
            Ok((file, path))
        };
        build(root, walk, temp).expect("build");
        let mut want: Vec<String> = walked.iter().map(|n| n.as_str().to_owned()).collect();
        want.extend(["aa/new".to_owned(), "zz/new".to_owned()]);
        want.sort();
        let text = stdfs::read_to_string(root.join(SORTED)).expect("sorted");
        let log_len = stdfs::metadata(root.join(LOG)).expect("log").len();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(format!("{SORTED_MAGIC}{log_len}").as_str())
        );
        assert_eq!(lines.collect::<Vec<_>>(), want);
        assert!(root.join(READY).exists());
    }
}
