//! The packing pipeline: inputs → tar → sha256 (diff_id) → compression → sha256 (layer) → store.
//!
//! One pass over the input; nothing is held in memory beyond fixed-size buffers, and nothing
//! is read twice. The tar stream is deterministic (see `plan` and `header`): the same
//! files, modes and paths give the same bytes on any machine at any time.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

pub mod cache;
mod closure;
pub mod compress;
pub mod gzip;
pub mod layout;
mod plan;
pub mod progress;

use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter, DuplexStream, ReadBuf,
};
use tokio_tar::{Builder, EntryType, Header};

use crate::digest::{Digest, HashingWriter};
use crate::image::{self, Layer, ManifestForm, RunConfig};
use crate::reference::{Name, TaggedName};

use crate::runtime::elf;
use crate::store::{FileStamp, Hold, Link, Pin as StorePin, Store, StoreError};
use cache::Lookup;
pub use closure::{ClosureMode, closure, split_packages, valid_package_name};
use compress::Compression;
pub use plan::{Base, Closure, Packaged};
use plan::{Entry, Kind, Plan};
use progress::Progress;

/// Read size for input files: large reads keep the pipeline fed (4 KiB reads are far slower).
const READ_BUFFER: usize = 1 << 20;
/// Batch size, and capacity, of the pipe from the tar stage to the compressor.
const PIPE_BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read input {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("input {} is a {kind}; only files, directories and symlinks can be packed", path.display())]
    Unsupported { path: PathBuf, kind: &'static str },
    #[error("{first} and {second} both go to {dest} in the image")]
    Conflict {
        dest: String,
        first: String,
        second: String,
    },
    #[error("invalid input {spec:?}: {why}")]
    BadInput { spec: String, why: &'static str },
    #[error("{0}")]
    BadCompression(String),
    #[error("no installed package is called {0:?}")]
    UnknownPackage(String),
    #[error("packages can be named only for an image with the package closure (not --closure elf)")]
    PackagesNeedTheirClosure,
    #[error("cannot write layer: {0}")]
    Write(io::Error),
    #[error(transparent)]
    Closure(#[from] elf::ClosureError),
    #[error(transparent)]
    Packages(#[from] crate::runtime::dpkg::DpkgError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
}

/// One thing to pack: a file or directory on the host and where it goes in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Host path. Followed if it is a symlink (what the user named is what they want),
    /// unless `follow` is false.
    pub source: PathBuf,
    /// Absolute, normalized path in the image (`/` for a directory means its contents at root).
    pub dest: String,
    /// False: a symlink goes in as a symlink (a program's chain of links, kept as the host
    /// has it so that `argv[0]` and lookups relative to it behave the same).
    pub follow: bool,
}

impl Input {
    /// `source` placed at `/<its file name>`.
    pub fn new(source: impl Into<PathBuf>) -> Result<Input, PackError> {
        let source = source.into();
        let spec = source.display().to_string();
        let name = source
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or(PackError::BadInput {
                spec: spec.clone(),
                why: "has no file name to use in the image; give SRC:/DEST",
            })?;
        Input::at(source.clone(), &format!("/{name}"), &spec)
    }

    /// `source` placed at `dest`, which must be absolute; `.` and `..` are not allowed in it.
    pub fn at(source: impl Into<PathBuf>, dest: &str, spec: &str) -> Result<Input, PackError> {
        let bad = |why| PackError::BadInput {
            spec: spec.to_owned(),
            why,
        };
        if !dest.starts_with('/') {
            return Err(bad("destination must be an absolute path in the image"));
        }
        let mut clean = String::new();
        // Split by hand: `Path::components` silently drops inner `.` components.
        for part in dest.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." {
                return Err(bad("destination may not contain '.' or '..'"));
            }
            clean.push('/');
            clean.push_str(part);
        }
        if clean.is_empty() {
            clean.push('/');
        }
        Ok(Input {
            source: source.into(),
            dest: clean,
            follow: true,
        })
    }

    /// `source` placed at `dest` as it is: a symlink stays a symlink.
    pub fn link(source: impl Into<PathBuf>, dest: &str, spec: &str) -> Result<Input, PackError> {
        Ok(Input {
            follow: false,
            ..Input::at(source, dest, spec)?
        })
    }
}

impl FromStr for Input {
    type Err = PackError;

    /// `SRC` or `SRC:/DEST` (the destination is what follows the last `:/`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.rfind(":/") {
            Some(i) if i > 0 => Input::at(&s[..i], &s[i + 1..], s),
            _ => Input::new(s),
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source.display(), self.dest)
    }
}

/// Settings that change the bytes of a layer (and so belong to its identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerOptions {
    /// How the tar stream is compressed.
    pub compression: Compression,
    /// mtime of every tar entry: `SOURCE_DATE_EPOCH` or 0.
    pub mtime: u64,
}

/// `SOURCE_DATE_EPOCH` from the environment, or 0 (the reproducible-builds convention).
pub fn source_date_epoch() -> Result<u64, String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("SOURCE_DATE_EPOCH={v:?} is not a whole number of seconds")),
        Err(_) => Ok(0),
    }
}

/// A deterministic header: fixed mtime, uid/gid 0, empty owner names, no atime/ctime.
fn header(entry_type: EntryType, mode: u32, size: u64, mtime: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(entry_type);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// The tar stream goes here: hashed (diff_id), batched, then piped to the compressor task.
type TarSink = HashingWriter<BufWriter<DuplexStream>>;

/// One layer a pack produced, with the figures the CLI reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedLayer {
    pub layer: Layer,
    /// What it holds: a package's name, `other packages`, or `image` (the image's own files).
    pub label: String,
    /// Size of the uncompressed tar stream.
    pub tar_size: u64,
    /// Bytes of file content read from the inputs (or that would have been, on a cache hit).
    pub input_bytes: u64,
    /// Taken from the layer cache: nothing was read or compressed.
    pub cached: bool,
    /// Every input file was last modified well before it was read, so its stamp (size,
    /// mtime) identifies what was packed. A file written moments before may be written
    /// again within the same timestamp tick, unseen; such a layer is not remembered.
    pub settled: bool,
}

/// How a pack runs, as opposed to what it makes: nothing here changes the layer's bytes.
#[derive(Clone)]
pub struct Packing {
    /// Look the layer up in the store's layer cache first, and remember it after packing.
    pub cache: bool,
    /// Told of the bytes read, for a progress bar or log lines.
    pub progress: Option<Arc<dyn Progress>>,
    /// Packs that may run at once, shared by every pack of a server: each holds a few MiB of
    /// buffers and a core, so twenty images requested together queue rather than pile up.
    pub slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Cores parallel gzip may use for this pack.
    pub threads: usize,
}

impl Default for Packing {
    fn default() -> Self {
        Packing {
            cache: false,
            progress: None,
            slots: None,
            threads: default_threads(),
        }
    }
}

/// One compression thread per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(crate::pack::gzip::MAX_THREADS)
}

/// How long after its last modification a file's stamp is trusted to identify its content:
/// more than the coarsest file-system timestamp granularity in use (FAT's 2 s; ext4's is
/// a few milliseconds), as git and ccache do for "racily clean" files.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Packs `inputs` (and the ELF closure of what is in them) into one layer in `store`.
/// Nothing is stored unless the whole layer is.
pub async fn pack_layer(
    store: &Store,
    inputs: &[Input],
    opts: LayerOptions,
) -> Result<PackedLayer, PackError> {
    pack_layer_with(store, inputs, opts, &Packing::default()).await
}

/// `pack_layer`, with the layer cache and progress reporting as `packing` says.
pub async fn pack_layer_with(
    store: &Store,
    inputs: &[Input],
    opts: LayerOptions,
    packing: &Packing,
) -> Result<PackedLayer, PackError> {
    opts.compression
        .check()
        .map_err(PackError::BadCompression)?;
    let planned_at = std::time::SystemTime::now();
    let planned = plan_blocking(inputs, &Closure::Elf).await?;
    // A bare layer is linked nowhere: the hold ends here (the layer cache names it).
    let (layer, _hold) = layer_of(store, planned.plan, "image", planned_at, opts, packing).await?;
    Ok(layer)
}

/// Plans on a blocking thread: planning stats and reads headers of every file.
async fn plan_blocking(inputs: &[Input], closure: &Closure) -> Result<plan::Planned, PackError> {
    let (owned, closure) = (inputs.to_vec(), closure.clone());
    let planning = Instant::now();
    let planned = tokio::task::spawn_blocking(move || plan::plan(&owned, &closure))
        .await
        .map_err(|e| PackError::Write(io::Error::other(e)))??;
    tracing::debug!(
        entries = planned.plan.len(),
        runtime = planned.runtime.len(),
        packages = planned.packages.len(),
        ms = planning.elapsed().as_secs_f64() * 1000.0,
        "planned image"
    );
    for path in &planned.runtime {
        tracing::debug!(path = %path.display(), "runtime closure");
    }
    Ok(planned)
}

/// One layer of `plan`, from the layer cache or packed and stored; held (see `store::Hold`)
/// until the caller links it.
async fn layer_of(
    store: &Store,
    plan: Plan,
    label: &str,
    planned_at: std::time::SystemTime,
    opts: LayerOptions,
    packing: &Packing,
) -> Result<(PackedLayer, Hold), PackError> {
    let label = label.to_owned();
    let total: u64 = plan
        .values()
        .map(|e| match &e.kind {
            Kind::File { stamp, .. } => stamp.size,
            _ => 0,
        })
        .sum();
    let settled = settled(&plan, planned_at);

    let key = packing.cache.then(|| cache_key(&plan, opts));
    let mut replace = false;
    if let Some(key) = &key {
        let found = cache::lookup(store, key, opts.compression.encoding()).await?;
        crate::metrics::layer_cache(matches!(found, Lookup::Hit(_)));
        match found {
            Lookup::Hit(hit) => {
                let pin = store.pin().await?;
                // Gone since the lookup (a collector): packed again below.
                if let Some(hold) = store.hold(&pin, &hit.layer.digest).await? {
                    tracing::debug!(layer = %hit.layer.digest, %label, "layer cache hit: nothing to read or compress");
                    let layer = PackedLayer {
                        layer: hit.layer,
                        label,
                        tar_size: hit.tar_size,
                        input_bytes: hit.input_bytes,
                        cached: true,
                        settled,
                    };
                    return Ok((layer, hold));
                }
            }
            Lookup::Stale(_) => replace = true,
            Lookup::Miss => {}
        }
    }
    // Held until the layer is written: a cache hit above never waits for a slot.
    let _slot = match &packing.slots {
        Some(slots) => Some(slot(slots).await?),
        None => None,
    };
    tracing::debug!(
        entries = plan.len(),
        %label,
        "packing layer: {:.1} MiB of input",
        total as f64 / (1024.0 * 1024.0)
    );
    let started = Instant::now();
    if let Some(p) = &packing.progress {
        p.begin(total);
    }
    let written = write_layer(store, &plan, opts, packing, replace).await;
    if let Some(p) = &packing.progress {
        p.end();
    }
    let (layer, tar_size, input_bytes, hold) = written?;
    let secs = started.elapsed().as_secs_f64();
    tracing::debug!(
        layer = %layer.digest,
        "packed layer in {secs:.2} s ({:.1} MiB/s)",
        input_bytes as f64 / (1024.0 * 1024.0) / secs.max(1e-9)
    );
    if let Some(key) = &key {
        if settled {
            // The layer is stored either way; a cache that cannot be written costs a repack later.
            let inputs = plan
                .values()
                .filter_map(|e| match &e.kind {
                    Kind::File { source, stamp } => Some((source.clone(), *stamp)),
                    _ => None,
                })
                .collect();
            let recorded = cache::record(store, key, &layer, tar_size, input_bytes, inputs);
            if let Err(e) = recorded.await {
                tracing::warn!(error = %e, "cannot record the layer in the layer cache");
            }
        } else {
            tracing::debug!("an input changed moments ago: the layer is not cached");
        }
    }
    let layer = PackedLayer {
        layer,
        label,
        tar_size,
        input_bytes,
        cached: false,
        settled,
    };
    Ok((layer, hold))
}

/// A packing slot, waited for (and the wait logged) if all are taken.
async fn slot(
    slots: &Arc<tokio::sync::Semaphore>,
) -> Result<tokio::sync::OwnedSemaphorePermit, PackError> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Ok(slot);
    }
    tracing::info!("waiting for a packing slot (all are busy)");
    // Only a closed semaphore fails, and nothing closes it.
    slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| PackError::Write(io::Error::other(e)))
}

/// Whether every file in `plan` was last modified at least `SETTLE` before `planned_at`.
fn settled(plan: &Plan, planned_at: std::time::SystemTime) -> bool {
    let Ok(since_epoch) = planned_at.duration_since(std::time::UNIX_EPOCH) else {
        return false;
    };
    let limit = since_epoch.saturating_sub(SETTLE).as_nanos() as i128;
    plan.values().all(|e| match &e.kind {
        Kind::File { stamp, .. } => stamp.mtime_ns < limit,
        _ => true,
    })
}

/// The layer-cache key of a plan: a digest over everything that decides the layer's bytes.
fn cache_key(plan: &Plan, opts: LayerOptions) -> Digest {
    use crate::digest::Hasher;
    let mut h = Hasher::new();
    let mut field = |bytes: &[u8]| {
        // Length-prefixed, so no two different plans hash the same sequence of bytes.
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(format!("quinistry layer cache {}", cache::FORMAT).as_bytes());
    field(format!("{} mtime={}", opts.compression, opts.mtime).as_bytes());
    for (path, entry) in plan {
        field(path.as_os_str().as_encoded_bytes());
        let kind = match &entry.kind {
            Kind::Dir => format!("dir {:o}", entry.mode),
            Kind::Symlink { target } => {
                field(target.as_os_str().as_encoded_bytes());
                format!("symlink {:o}", entry.mode)
            }
            Kind::File { source, stamp } => {
                field(source.as_os_str().as_encoded_bytes());
                format!(
                    "file {:o} dev={} ino={} size={} mtime={}",
                    entry.mode, stamp.dev, stamp.ino, stamp.size, stamp.mtime_ns
                )
            }
        };
        field(kind.as_bytes());
    }
    h.finish().0
}

/// Streams the planned entries through tar, hashing and compression into a new blob, and
/// commits it (over any stored copy when `replace`). Gives the layer, tar size and bytes read.
async fn write_layer(
    store: &Store,
    plan: &Plan,
    opts: LayerOptions,
    packing: &Packing,
    replace: bool,
) -> Result<(Layer, u64, u64, Hold), PackError> {
    // Two stages: this task reads files, builds the tar and hashes it; another compresses,
    // hashes and writes, its CPU-heavy part on blocking threads so that the async workers
    // keep serving requests meanwhile. A bounded pipe keeps memory flat.
    let blob = store.new_blob().await?;
    let (tar_out, compress_in) = tokio::io::duplex(PIPE_BUFFER);
    let progress = packing.progress.as_ref();
    let compress = tokio::spawn(compress::compress(
        compress_in,
        blob,
        opts.compression,
        packing.threads,
    ));
    let mut tar = Builder::new(HashingWriter::new(BufWriter::with_capacity(
        PIPE_BUFFER,
        tar_out,
    )));
    let mut input_bytes = 0;
    let built = async {
        for (path, entry) in plan {
            input_bytes += append(&mut tar, path, entry, opts.mtime, progress).await?;
        }
        let mut sink = tar.into_inner().await.map_err(PackError::Write)?;
        sink.shutdown().await.map_err(PackError::Write)?;
        Ok::<_, PackError>(sink.into_parts())
    }
    .await;
    // Whatever happened, wait for the compressor, so that a failed pack has removed its temp
    // file before we return. `built` failing drops the pipe, which ends the compressor.
    let compressed = compress
        .await
        .map_err(|e| PackError::Write(io::Error::other(e)))
        .and_then(|r| r.map_err(PackError::Write));
    let ((_, diff_id, tar_size), blob) = match (built, compressed) {
        (Ok(parts), Ok(blob)) => (parts, blob),
        // A compressor failure (say, disk full) shows on the tar side only as a broken pipe.
        (Ok(_) | Err(PackError::Write(_)), Err(e)) => return Err(e),
        (Err(e), _) => return Err(e),
    };
    let (digest, size, hold) = blob.commit_held(replace).await?;
    let layer = Layer {
        digest,
        size,
        diff_id,
        encoding: opts.compression.encoding(),
    };
    Ok((layer, tar_size, input_bytes, hold))
}

/// Writes one entry; returns the bytes of file content it read.
async fn append(
    tar: &mut Builder<TarSink>,
    path: &Path,
    entry: &Entry,
    mtime: u64,
    progress: Option<&Arc<dyn Progress>>,
) -> Result<u64, PackError> {
    match &entry.kind {
        Kind::Dir => {
            let mut h = header(EntryType::Directory, entry.mode, 0, mtime);
            tar.append_data(&mut h, path, tokio::io::empty())
                .await
                .map_err(PackError::Write)?;
            Ok(0)
        }
        Kind::Symlink { target } => {
            let mut h = header(EntryType::Symlink, entry.mode, 0, mtime);
            if h.set_link_name(target).is_err() {
                // Longer than the header's 100 bytes: GNU tar's long-link entry comes first.
                let bytes = target.as_os_str().as_encoded_bytes();
                let mut long = header(EntryType::GNULongLink, 0o644, bytes.len() as u64 + 1, 0);
                if let Some(g) = long.as_gnu_mut() {
                    g.name[..13].copy_from_slice(b"././@LongLink");
                }
                long.set_cksum();
                let data = [bytes, b"\0"].concat();
                tar.append(&long, &data[..])
                    .await
                    .map_err(PackError::Write)?;
                // Keep a truncated name in the header itself, as GNU tar does.
                let cut = &bytes[..99.min(bytes.len())];
                if let Some(g) = h.as_gnu_mut() {
                    g.linkname[..cut.len()].copy_from_slice(cut);
                }
            }
            tar.append_data(&mut h, path, tokio::io::empty())
                .await
                .map_err(PackError::Write)?;
            Ok(0)
        }
        Kind::File { source, stamp } => {
            let size = &stamp.size;
            let read_err = |e: io::Error| PackError::Read {
                path: source.clone(),
                source: e,
            };
            let file = tokio::fs::File::open(source).await.map_err(read_err)?;
            let reader = BufReader::with_capacity(
                READ_BUFFER,
                Exact {
                    inner: file.take(*size),
                    remaining: *size,
                    progress: progress.cloned(),
                },
            );
            let mut h = header(EntryType::Regular, entry.mode, *size, mtime);
            tar.append_data(&mut h, path, reader).await.map_err(|e| {
                // Errors from the input carry the `Exact` marker; the rest are write errors.
                match e.get_ref().and_then(|i| i.downcast_ref::<InputError>()) {
                    Some(InputError(msg)) => read_err(io::Error::new(e.kind(), msg.clone())),
                    None => PackError::Write(e),
                }
            })?;
            // Like GNU tar's "file changed as we read it", but an error: the layer would hold
            // a state of the file that never existed.
            let now = tokio::fs::metadata(source).await.map_err(read_err)?;
            if FileStamp::of(&now) != *stamp {
                return Err(read_err(io::Error::other(
                    "file changed while it was being packed",
                )));
            }
            Ok(*size)
        }
    }
}

/// Marks an I/O error as coming from the input file (not the store).
#[derive(Debug)]
struct InputError(String);
impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for InputError {}

/// Reads exactly the size the header promised: a file that shrinks while being packed is an
/// error, not a corrupt archive (tar would pad the short entry and misalign the stream).
struct Exact<R> {
    /// The file, limited to the promised size (growth past it is not packed).
    inner: R,
    /// Bytes still owed.
    remaining: u64,
    /// Told of every byte read.
    progress: Option<Arc<dyn Progress>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Exact<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n == 0 && self.remaining > 0 && buf.remaining() > 0 {
                    let msg = format!(
                        "file shrank while packing ({} bytes missing)",
                        self.remaining
                    );
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        InputError(msg),
                    )));
                }
                self.remaining -= n;
                if let Some(p) = &self.progress {
                    p.advance(n);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                Poll::Ready(Err(io::Error::new(e.kind(), InputError(e.to_string()))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A packed, stored image: its layers, bottom first, and the digests of its documents.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedImage {
    pub layers: Vec<PackedLayer>,
    /// Image paths added as the runtime closure of ELF objects (interpreter, libraries,
    /// symlinks), in the order found.
    pub runtime: Vec<PathBuf>,
    /// The packages whose files the image holds, by name, sorted.
    pub packages: Vec<String>,
    pub config: (Digest, u64),
    /// The OCI manifest: what tags point at.
    pub manifest: (Digest, u64),
    /// The same image as a Docker schema 2 manifest (stored too, for clients that want it),
    /// unless its layers have no Docker media type (zstd).
    pub docker_manifest: Option<(Digest, u64)>,
    /// Wall time of the whole pack.
    pub seconds: f64,
    /// Keeps the collector off its blobs until they are linked (dropped with the image).
    pub holds: Holds,
}

/// A pack's holds on its blobs (see `store::Hold`). Not part of what was packed: two
/// images compare equal whatever they hold.
#[derive(Debug, Clone, Default)]
pub struct Holds(#[allow(dead_code)] Arc<Vec<Hold>>);

impl PartialEq for Holds {
    fn eq(&self, _: &Holds) -> bool {
        true
    }
}

impl PackedImage {
    /// Bytes of file content in the image (read, or known from the layer cache).
    pub fn input_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.input_bytes).sum()
    }

    /// Size of the uncompressed layers together.
    pub fn tar_size(&self) -> u64 {
        self.layers.iter().map(|l| l.tar_size).sum()
    }

    /// Every layer came from the layer cache.
    pub fn cached(&self) -> bool {
        self.layers.iter().all(|l| l.cached)
    }

    /// Every layer's input files had settled (see `PackedLayer::settled`).
    pub fn settled(&self) -> bool {
        self.layers.iter().all(|l| l.settled)
    }

    /// The top layer: the image's own files (the only layer of an image without packages).
    pub fn top(&self) -> &PackedLayer {
        // A pack makes at least one layer.
        &self.layers[self.layers.len() - 1]
    }
}

/// Packs `inputs` (with what `closure` says they need), stores the config and both
/// manifests, and points `tag` (if any) at the OCI manifest. The tag is written last, so it
/// never names an image whose blobs are missing.
pub async fn pack_image(
    store: &Store,
    inputs: &[Input],
    opts: LayerOptions,
    run: &RunConfig,
    tag: Option<&TaggedName>,
) -> Result<PackedImage, PackError> {
    pack_image_with(
        store,
        inputs,
        &Closure::Elf,
        opts,
        run,
        tag,
        &Packing::default(),
    )
    .await
}

/// `pack_image` with a closure, and the layer cache and progress reporting as `packing` says.
pub async fn pack_image_with(
    store: &Store,
    inputs: &[Input],
    closure: &Closure,
    opts: LayerOptions,
    run: &RunConfig,
    tag: Option<&TaggedName>,
    packing: &Packing,
) -> Result<PackedImage, PackError> {
    let start = Instant::now();
    let packed = pack_image_inner(store, inputs, closure, opts, run, tag, packing).await;
    match &packed {
        Ok(img) if img.cached() => crate::metrics::packed("cached", img.input_bytes(), img.seconds),
        Ok(img) => crate::metrics::packed("packed", img.input_bytes(), img.seconds),
        Err(_) => crate::metrics::packed("failed", 0, start.elapsed().as_secs_f64()),
    }
    if let Ok(img) = &packed {
        let cached = img.layers.iter().filter(|l| l.cached).count();
        tracing::info!(
            manifest = %img.manifest.0,
            "packed image: {} packages in {} layers ({} packed, {cached} from the layer cache), {:.1} MiB of input in {:.2} s",
            img.packages.len(),
            img.layers.len(),
            img.layers.len() - cached,
            img.input_bytes() as f64 / (1024.0 * 1024.0),
            img.seconds,
        );
    }
    packed
}

/// `pack_image_with` without the metrics.
async fn pack_image_inner(
    store: &Store,
    inputs: &[Input],
    closure: &Closure,
    opts: LayerOptions,
    run: &RunConfig,
    tag: Option<&TaggedName>,
    packing: &Packing,
) -> Result<PackedImage, PackError> {
    let start = Instant::now();
    opts.compression
        .check()
        .map_err(PackError::BadCompression)?;
    let planned_at = std::time::SystemTime::now();
    let mut planned = plan_blocking(inputs, closure).await?;
    let db = match closure {
        Closure::Packages(p) if !planned.packages.is_empty() => {
            let base = closure::base(store, p, &planned).await?;
            plan::add_base(&mut planned.plan, &base)?;
            Some(p.db.as_ref())
        }
        Closure::Packages(p) => Some(p.db.as_ref()),
        Closure::Elf => None,
    };
    let mut packed = Vec::new();
    let mut holds = Vec::new();
    for layer in plan::layers(&planned, db) {
        let (layer, hold) =
            layer_of(store, layer.plan, &layer.label, planned_at, opts, packing).await?;
        packed.push(layer);
        holds.push(hold);
    }
    let mut run = run.clone();
    if !planned.library_path.is_empty() {
        let dirs: Vec<String> = planned
            .library_path
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        run.env.push(format!("LD_LIBRARY_PATH={}", dirs.join(":")));
    }
    let layers: Vec<Layer> = packed.iter().map(|p| p.layer.clone()).collect();
    // What each layer of a package closure holds, in its history entry: the web page (and
    // `docker history`) show it. The one layer of an image without packages gets none.
    let notes: Vec<String> = packed
        .iter()
        .map(|p| match p.label.as_str() {
            "image" => String::new(),
            label => label.to_owned(),
        })
        .collect();
    let notes = if packed.len() > 1 { notes } else { Vec::new() };
    let config_bytes = image::config_json_noting(&run, &layers, &notes)?;
    let (config, hold) = store.put_held(&config_bytes).await?;
    holds.push(hold);
    let config = (config, config_bytes.len() as u64);
    let manifest = put_manifest(store, ManifestForm::Oci, &config, &layers, &mut holds).await?;
    let docker_manifest = if layers
        .iter()
        .all(|l| l.encoding.media_type(ManifestForm::Docker).is_some())
    {
        Some(put_manifest(store, ManifestForm::Docker, &config, &layers, &mut holds).await?)
    } else {
        None
    };
    let packages = planned
        .packages
        .keys()
        .filter_map(|p| db.map(|db| db.name(*p).to_owned()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let image = PackedImage {
        layers: packed,
        runtime: planned.runtime,
        packages,
        config,
        manifest,
        docker_manifest,
        seconds: start.elapsed().as_secs_f64(),
        holds: Holds(Arc::new(holds)),
    };
    if let Some(t) = tag {
        let pin = store.pin().await?;
        link_image_pinned(store, &pin, &t.name, &image).await?;
        store
            .set_tag(&pin, &t.name, &t.tag, &image.manifest.0)
            .await?;
    }
    Ok(image)
}

/// Makes a packed image's blobs and manifests part of repository `name`, so the registry
/// serves them through it (repositories are scoped: see `store`).
pub async fn link_image(store: &Store, name: &Name, image: &PackedImage) -> Result<(), PackError> {
    let pin = store.pin().await?;
    link_image_pinned(store, &pin, name, image).await
}

async fn link_image_pinned(
    store: &Store,
    pin: &StorePin,
    name: &Name,
    image: &PackedImage,
) -> Result<(), PackError> {
    let layers = image.layers.iter().map(|l| &l.layer.digest);
    for blob in std::iter::once(&image.config.0).chain(layers) {
        store.link(pin, name, Link::Blob, blob).await?;
    }
    for (manifest, _) in std::iter::once(&image.manifest).chain(&image.docker_manifest) {
        store.link(pin, name, Link::Manifest, manifest).await?;
    }
    Ok(())
}

async fn put_manifest(
    store: &Store,
    form: ManifestForm,
    config: &(Digest, u64),
    layers: &[Layer],
    holds: &mut Vec<Hold>,
) -> Result<(Digest, u64), PackError> {
    let bytes = image::manifest_json(form, (&config.0, config.1), layers)?;
    let (digest, hold) = store.put_held(&bytes).await?;
    holds.push(hold);
    Ok((digest, bytes.len() as u64))
}

/// Whether metadata is of a regular file with any execute bit (picks a default entrypoint).
pub fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.is_file() && meta.mode() & 0o111 != 0
}

/// The run settings of an image of `inputs` when nobody says otherwise: the first input that
/// is an executable file is the entrypoint (none is none), PATH has its usual value.
pub fn default_run_config(inputs: &[Input], created: u64) -> RunConfig {
    let entrypoint = inputs
        .iter()
        .find(|i| std::fs::metadata(&i.source).is_ok_and(|m| is_executable(&m)))
        .map(|i| vec![i.dest.clone()]);
    RunConfig {
        entrypoint,
        env: vec![image::DEFAULT_PATH.to_owned()],
        created,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_specs_parse() {
        let i: Input = "target/app".parse().expect("plain");
        assert_eq!(
            (i.source.as_path(), i.dest.as_str()),
            (Path::new("target/app"), "/app")
        );
        let i: Input = "./a:b/c:/usr//bin/c/".parse().expect("with dest");
        assert_eq!(
            (i.source.as_path(), i.dest.as_str()),
            (Path::new("./a:b/c"), "/usr/bin/c")
        );
        let i: Input = "dir:/".parse().expect("root");
        assert_eq!(i.dest, "/");
        for bad in ["x:/a/../b", "x:/./a", "/"] {
            assert!(bad.parse::<Input>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn exact_reader_reports_a_file_that_shrank() {
        let mut short = Exact {
            inner: &b"abc"[..],
            remaining: 5,
            progress: None,
        };
        let mut out = Vec::new();
        let err = short.read_to_end(&mut out).await.expect_err("short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let marker = err.get_ref().and_then(|e| e.downcast_ref::<InputError>());
        assert!(
            marker.is_some_and(|m| m.0.contains("2 bytes missing")),
            "{err}"
        );
        let mut exact = Exact {
            inner: &b"abcde"[..],
            remaining: 5,
            progress: None,
        };
        out.clear();
        exact.read_to_end(&mut out).await.expect("exact");
        assert_eq!(out, b"abcde");
    }
}
