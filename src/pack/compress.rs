//! The compression stage of the pipeline: which compression a layer has, and running it.
//!
//! Every choice here changes the layer's bytes, so [`Compression`] is part of a layer's
//! identity (the layer cache keys on it, the self-image carries it in its Cmd). How many
//! threads run it is not: that changes only how fast the same bytes come out.

use std::fmt;
use std::future::Future;
use std::io;

use async_compression::tokio::write::{GzipEncoder, ZstdEncoder};
use async_compression::{Level, zstd};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::image::LayerEncoding;
use crate::pack::gzip;

/// Size of the pieces a single-stream encoder is fed, and of the copies for `none`.
const PIECE: usize = 1 << 20;
/// gzip's usual speed/size balance (`gzip -6`).
pub const DEFAULT_GZIP_LEVEL: u32 = 6;
/// zstd's own default (`zstd -3`).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Input per job of multithreaded zstd; each worker holds about two jobs' worth of buffers.
/// Fixed, because the job size shapes the bytes. libzstd's own choice at level 3 (8 MiB)
/// took 73 MiB more RSS than one stream for 2 workers; 4 MiB takes 46 MiB at the same speed,
/// for 0.05% more bytes (2 MiB: 30 MiB, 0.6% more).
const ZSTD_JOB: u32 = 4 << 20;
/// Blocks of parallel gzip. Large enough that the per-block costs (matches lost at the cut,
/// 18 bytes of member header and trailer) vanish, small enough that even small layers split
/// across cores.
pub const DEFAULT_BLOCK_SIZE: usize = 1 << 20;

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip at `level` (0-9). `block_size` 0 is one deflate stream on one core (the bytes
    /// `gzip` and earlier versions of quinistry make); otherwise blocks of that many bytes
    /// are deflated in parallel (see [`crate::pack::gzip`]).
    Gzip { level: u32, block_size: usize },
    /// zstd at `level` (1-19).
    Zstd { level: i32 },
    /// The plain tar stream.
    None,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Gzip {
            level: DEFAULT_GZIP_LEVEL,
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

impl Compression {
    /// `method` (`gzip`, `zstd` or `none`) with an optional level and gzip block size, each
    /// checked against what that method accepts.
    pub fn new(
        method: &str,
        level: Option<u32>,
        block_size: Option<usize>,
    ) -> Result<Compression, String> {
        let c = match method {
            "gzip" => Compression::Gzip {
                level: level.unwrap_or(DEFAULT_GZIP_LEVEL),
                block_size: block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
            },
            "zstd" => Compression::Zstd {
                level: level.map_or(DEFAULT_ZSTD_LEVEL, |l| l.min(i32::MAX as u32) as i32),
            },
            "none" => Compression::None,
            other => {
                return Err(format!(
                    "unknown compression {other:?}: use gzip, zstd or none"
                ));
            }
        };
        if level.is_some() && c == Compression::None {
            return Err("--level has no meaning with --compression none".to_owned());
        }
        if block_size.is_some() && !matches!(c, Compression::Gzip { .. }) {
            return Err(format!(
                "--block-size applies to gzip only, not to {}",
                c.method()
            ));
        }
        c.check()?;
        Ok(c)
    }

    /// Whether the settings are in range.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            Compression::Gzip { level, .. } if level > 9 => {
                Err(format!("gzip level {level} is out of range 0-9"))
            }
            Compression::Gzip { block_size, .. }
                if block_size != 0
                    && !(gzip::MIN_BLOCK..=gzip::MAX_BLOCK).contains(&block_size) =>
            {
                Err(format!(
                    "gzip block size {block_size} is out of range: 0 (one stream) or {} KiB to {} MiB",
                    gzip::MIN_BLOCK >> 10,
                    gzip::MAX_BLOCK >> 20
                ))
            }
            Compression::Zstd { level } if !(1..=19).contains(&level) => {
                Err(format!("zstd level {level} is out of range 1-19"))
            }
            _ => Ok(()),
        }
    }

    pub fn method(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
            Compression::None => "none",
        }
    }

    /// What the layer's bytes are, for its media type.
    pub fn encoding(&self) -> LayerEncoding {
        match self {
            Compression::Gzip { .. } => LayerEncoding::Gzip,
            Compression::Zstd { .. } => LayerEncoding::Zstd,
            Compression::None => LayerEncoding::Tar,
        }
    }

    /// The environment variables that select this compression (`QUINISTRY_COMPRESSION`,
    /// `QUINISTRY_LEVEL`, `QUINISTRY_BLOCK_SIZE`, the defaults of `--compression`, `--level`
    /// and `--block-size`), leaving out defaults: nothing at all for the default. The
    /// self-image carries them in its Env, so its child packs the same way whatever command
    /// line it is run with.
    pub fn env(&self) -> Vec<String> {
        let mut env = Vec::new();
        match *self {
            Compression::Gzip { level, block_size } => {
                if level != DEFAULT_GZIP_LEVEL {
                    env.push(format!("QUINISTRY_LEVEL={level}"));
                }
                if block_size != DEFAULT_BLOCK_SIZE {
                    env.push(format!("QUINISTRY_BLOCK_SIZE={block_size}"));
                }
            }
            Compression::Zstd { level } => {
                env.push("QUINISTRY_COMPRESSION=zstd".to_owned());
                if level != DEFAULT_ZSTD_LEVEL {
                    env.push(format!("QUINISTRY_LEVEL={level}"));
                }
            }
            Compression::None => env.push("QUINISTRY_COMPRESSION=none".to_owned()),
        }
        env
    }
}

/// Everything that decides the bytes, for the layer-cache key and for logs.
impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Gzip { level, block_size } => {
                write!(f, "gzip level={level} block-size={block_size}")
            }
            Compression::Zstd { level } => write!(f, "zstd level={level}"),
            Compression::None => f.write_str("none"),
        }
    }
}

/// Parses a size: bytes, or with a `K`/`M` suffix (KiB, MiB), e.g. `512K`, `1M`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        Some((i, 't' | 'T')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("invalid size {s:?}: use bytes, or a number with K, M, G or T"))
}

/// Compresses everything `input` yields into `out` and gives `out` back. `threads` is how
/// many cores parallel gzip may use; the bytes are the same for any value.
pub async fn compress<R, W>(
    input: R,
    out: W,
    compression: Compression,
    threads: usize,
) -> io::Result<W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    match compression {
        Compression::Gzip {
            level,
            block_size: 0,
        } => {
            let gzip = GzipEncoder::with_quality(Vec::new(), Level::Precise(level as i32));
            on_blocking_thread(single_stream(input, out, gzip)).await
        }
        // The workers are blocking-pool threads already; the rest is copying and waiting.
        Compression::Gzip { level, block_size } => {
            gzip::parallel(input, out, level, block_size, threads).await
        }
        Compression::Zstd { level } => {
            // libzstd's multithreaded mode: the input is cut into `ZSTD_JOB`-sized jobs
            // whatever the number of workers, so any number from 1 up gives the same bytes
            // (0, the single-threaded mode, would give others: it is never used).
            // `single_stream` never flushes, which would cut a job early.
            let workers = threads.clamp(1, gzip::MAX_THREADS) as u32;
            let params = [
                zstd::CParameter::nb_workers(workers),
                zstd::CParameter::job_size(ZSTD_JOB),
            ];
            on_niced_thread(move || {
                let zstd = ZstdEncoder::with_quality_and_params(
                    Vec::new(),
                    Level::Precise(level),
                    &params,
                );
                single_stream(input, out, zstd)
            })
            .await
        }
        Compression::None => copy(input, out).await,
    }
}

/// Runs CPU-heavy `work` on the blocking pool, so the async workers keep serving requests.
async fn on_blocking_thread<T: Send + 'static>(
    work: impl Future<Output = io::Result<T>> + Send + 'static,
) -> io::Result<T> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(work))
        .await
        .map_err(io::Error::other)?
}

/// Runs `work` on a thread of its own at lower priority, for an encoder that starts threads
/// of its own: on Linux a thread starts with its creator's nice value, so libzstd's workers
/// take only what the server's threads leave, as the gzip workers do.
async fn on_niced_thread<T, F>(work: impl FnOnce() -> F + Send + 'static) -> io::Result<T>
where
    T: Send + 'static,
    F: Future<Output = io::Result<T>>,
{
    let runtime = tokio::runtime::Handle::current();
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("quinistry-zstd".to_owned())
        .spawn(move || {
            crate::thread::lower_priority();
            let _ = done.send(runtime.block_on(work()));
        })?;
    result
        .await
        .map_err(|_| io::Error::other("the zstd thread stopped"))?
}

/// An async-compression encoder that writes into memory.
trait InMemory: AsyncWrite + Unpin {
    fn buffer(&mut self) -> &mut Vec<u8>;
}

impl InMemory for GzipEncoder<Vec<u8>> {
    fn buffer(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
}

impl InMemory for ZstdEncoder<Vec<u8>> {
    fn buffer(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
}

/// One encoder over the whole stream.
///
/// zlib-rs's output depends on how its input is split into calls (measured: the same 20 MB
/// in 1 MiB, 8 KiB or uneven pieces gives three different streams), and an async encoder
/// splits its input wherever its writer is not ready. So the encoder is fed fixed `PIECE`s
/// of the stream and writes into memory, which is always ready; its output then goes to
/// `out`. The bytes depend on the input and the settings only, never on timing.
async fn single_stream<R, W, E>(mut input: R, mut out: W, mut encoder: E) -> io::Result<W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    E: InMemory,
{
    let mut piece = vec![0u8; PIECE];
    loop {
        let n = gzip::read_full(&mut input, &mut piece).await?;
        if n == 0 {
            break;
        }
        encoder.write_all(&piece[..n]).await?;
        out.write_all(encoder.buffer()).await?;
        encoder.buffer().clear();
    }
    encoder.shutdown().await?;
    out.write_all(encoder.buffer()).await?;
    Ok(out)
}

/// The tar stream as it is.
async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut input: R,
    mut out: W,
) -> io::Result<W> {
    let mut piece = vec![0u8; PIECE];
    loop {
        let n = input.read(&mut piece).await?;
        if n == 0 {
            return Ok(out);
        }
        out.write_all(&piece[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// Yields its data in uneven pieces and is pending every other call, like a pipe from a
    /// busy producer.
    struct Jittery {
        data: Vec<u8>,
        pos: usize,
        calls: usize,
    }

    impl AsyncRead for Jittery {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let want = 1 + (self.calls * 7919) % 100_000;
            let n = want.min(buf.remaining()).min(self.data.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn decompress(c: Compression, mut bytes: &[u8]) -> Vec<u8> {
        use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
        let mut back = Vec::new();
        match c {
            Compression::Gzip { .. } => {
                // Parallel gzip is one member per block.
                let mut gz = GzipDecoder::new(bytes);
                gz.multiple_members(true);
                gz.read_to_end(&mut back).await
            }
            Compression::Zstd { .. } => ZstdDecoder::new(bytes).read_to_end(&mut back).await,
            Compression::None => bytes.read_to_end(&mut back).await,
        }
        .expect("decompress");
        back
    }

    #[tokio::test]
    async fn bytes_do_not_depend_on_how_input_arrives() {
        // Compressible but varied data, a few pieces long.
        let data: Vec<u8> = (0..5_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 27) as u8 ^ (i / 1000) as u8)
            .collect();
        for c in [
            Compression::default(),
            Compression::Gzip {
                level: 6,
                block_size: 0,
            },
            Compression::Zstd { level: 3 },
            Compression::None,
        ] {
            let whole = compress(std::io::Cursor::new(data.clone()), Vec::new(), c, 2)
                .await
                .expect("whole");
            let jitter = Jittery {
                data: data.clone(),
                pos: 0,
                calls: 0,
            };
            let pieces = compress(jitter, Vec::new(), c, 1).await.expect("pieces");
            assert!(whole == pieces, "{c}: output changed with input chunking");
            assert!(decompress(c, &whole).await == data, "{c}: round trip");
        }
    }

    /// zstd#2327: a one-shot call once made multithreaded zstd's bytes depend on the number
    /// of workers. 40 MB is ten 4 MiB jobs, so 2 and 8 workers really share it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zstd_bytes_do_not_depend_on_the_number_of_workers() {
        let data: Vec<u8> = (0..40_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 29) as u8 ^ (i / 4096) as u8)
            .collect();
        for level in [1, 3, 9] {
            let c = Compression::Zstd { level };
            let one = compress(std::io::Cursor::new(data.clone()), Vec::new(), c, 1)
                .await
                .expect("1 worker");
            for workers in [2, 8] {
                let jitter = Jittery {
                    data: data.clone(),
                    pos: 0,
                    calls: 0,
                };
                let many = compress(jitter, Vec::new(), c, workers)
                    .await
                    .expect("n workers");
                assert!(one == many, "{c}: {workers} workers differ from 1");
            }
            assert!(decompress(c, &one).await == data, "{c}: round trip");
        }
    }

    #[test]
    fn settings_are_checked_per_method() {
        assert_eq!(
            Compression::new("gzip", None, None),
            Ok(Compression::default())
        );
        assert_eq!(
            Compression::new("zstd", Some(19), None),
            Ok(Compression::Zstd { level: 19 })
        );
        assert_eq!(
            Compression::new("gzip", Some(1), Some(0)),
            Ok(Compression::Gzip {
                level: 1,
                block_size: 0
            })
        );
        for (method, level, block, why) in [
            ("gzip", Some(10), None, "out of range 0-9"),
            ("zstd", Some(0), None, "out of range 1-19"),
            ("zstd", Some(22), None, "out of range 1-19"),
            ("none", Some(1), None, "no meaning"),
            ("zstd", None, Some(1 << 20), "gzip only"),
            ("gzip", None, Some(1000), "0 (one stream) or 32 KiB"),
            ("brotli", None, None, "gzip, zstd or none"),
        ] {
            let err = Compression::new(method, level, block).expect_err(method);
            assert!(err.contains(why), "{method} {level:?} {block:?}: {err}");
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("4m"), Ok(4 << 20));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        for bad in ["", "M", "1X", "-1", "1.5M", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_settings_that_differ_from_the_defaults_become_variables() {
        assert!(Compression::default().env().is_empty());
        assert_eq!(
            Compression::Zstd { level: 3 }.env(),
            ["QUINISTRY_COMPRESSION=zstd"]
        );
        assert_eq!(
            Compression::Gzip {
                level: 1,
                block_size: 0
            }
            .env(),
            ["QUINISTRY_LEVEL=1", "QUINISTRY_BLOCK_SIZE=0"]
        );
        // What `env` gives parses back to the same compression.
        for c in [
            Compression::None,
            Compression::Zstd { level: 7 },
            Compression::Gzip {
                level: 9,
                block_size: 65536,
            },
        ] {
            let e = c.env();
            let get = |k: &str| {
                e.iter()
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=').map(str::to_owned))
            };
            let method = get("QUINISTRY_COMPRESSION").unwrap_or_else(|| "gzip".to_owned());
            let level = get("QUINISTRY_LEVEL").map(|l| l.parse().expect("level"));
            let block = get("QUINISTRY_BLOCK_SIZE").map(|b| parse_size(&b).expect("size"));
            assert_eq!(Compression::new(&method, level, block), Ok(c));
        }
    }
}
