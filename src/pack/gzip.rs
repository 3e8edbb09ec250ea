//! Parallel gzip whose bytes do not depend on the number of threads.
//!
//! The stream is cut into blocks of a fixed size, and each block becomes one complete gzip
//! member, compressed by libdeflate on its own. The members laid end to end are one valid
//! gzip file (RFC 1952 section 2.2: a file is a series of members), and every decoder the
//! registry's clients use reads on to the last member: Go's `compress/gzip` (docker,
//! containerd), `pgzip` (podman, skopeo), zlib's `gzip -d` (tests in `tests/interop.rs`).
//!
//! Why libdeflate and independent members rather than pigz's scheme (blocks primed with the
//! previous 32 KiB, sync-flushed into one deflate stream, as quinistry did through zlib-rs):
//! libdeflate compresses a whole buffer at once with a better parser, so at level 6 it is
//! 1.3x zlib-rs's speed and its output is smaller even without the dictionary. On 256 MiB of
//! executables in 1 MiB blocks: zlib-rs primed blocks 81.9 MiB/s per core, 1.8% larger than
//! `gzip -6`; libdeflate members 109.4 MiB/s, 0.6% smaller (level 5: 132.5 MiB/s, 0.2% larger;
//! ISA-L's best level is 10% larger). libdeflate has no dictionary or streaming interface,
//! which is why blocks are members.
//!
//! What each member becomes depends only on its block's bytes and the level (libdeflate
//! keeps no state from one call to the next); members are written in order. So the output
//! depends on the input, the level and the block size, never on how many threads ran or
//! which finished first.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, mpsc};

use libdeflater::{CompressionLvl, Compressor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

/// Smallest block: below this each member's 18 bytes of header and trailer, and the matches
/// lost at every cut, start to show in the size.
pub const MIN_BLOCK: usize = 32 * 1024;
/// Largest block: each thread holds about two, and memory should stay small.
pub const MAX_BLOCK: usize = 64 << 20;
/// Most workers per stream: each holds about two blocks in memory, and beyond the number of
/// cores more workers only cost memory.
pub const MAX_THREADS: usize = 256;

/// A compressor for `level` (0-9, checked by `Compression::check`).
fn compressor(level: u32) -> io::Result<Compressor> {
    let level = CompressionLvl::new(level as i32)
        .map_err(|e| io::Error::other(format!("gzip level {level}: {e:?}")))?;
    Ok(Compressor::new(level))
}

/// Compresses `data` as one gzip member into `out` (replacing what it held).
fn gzip_member(compressor: &mut Compressor, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    // The bound is libdeflate's worst case for this length, so the call cannot run short.
    out.clear();
    out.resize(compressor.gzip_compress_bound(data.len()), 0);
    let n = compressor
        .gzip_compress(data, out)
        .map_err(|e| io::Error::other(format!("gzip: {e:?}")))?;
    out.truncate(n);
    Ok(())
}

/// A block for a worker to compress.
struct Work {
    /// The block's bytes.
    data: Vec<u8>,
    /// A buffer for the result.
    out: Vec<u8>,
    /// Where the finished member goes: the writer waits on these in block order.
    done: oneshot::Sender<io::Result<Done>>,
}

/// A compressed block, with its buffers for reuse.
struct Done {
    data: Vec<u8>,
    out: Vec<u8>,
}

/// Gzips everything `input` yields into `out` as one member per block on `threads`
/// workers, and gives `out` back. Empty input is one empty member.
///
/// Up to two blocks per worker are out at once, so a worker that finishes finds the next
/// block waiting instead of idling while this task writes the oldest one out and reads more.
/// Memory: about 2 x threads x (block + its compressed form), plus the next block read.
pub async fn parallel<R, W>(
    mut input: R,
    mut out: W,
    level: u32,
    block_size: usize,
    threads: usize,
) -> io::Result<W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let threads = threads.clamp(1, MAX_THREADS);
    // A bad level fails here, before any thread starts.
    compressor(level)?;
    let (queue, jobs) = mpsc::channel::<Work>();
    let jobs = Arc::new(Mutex::new(jobs));
    for _ in 0..threads {
        let jobs = jobs.clone();
        // Threads of our own rather than tokio's blocking pool, because they are niced. They
        // end when `queue` is dropped: at the end, or on an error.
        std::thread::Builder::new()
            .name("quinistry-gzip".to_owned())
            .spawn(move || worker(&jobs, level))?;
    }

    let mut pending: VecDeque<oneshot::Receiver<io::Result<Done>>> = VecDeque::new();
    let mut spare_inputs: Vec<Vec<u8>> = Vec::new();
    let mut spare_outputs: Vec<Vec<u8>> = Vec::new();
    let mut first = true;
    loop {
        let block = fill(&mut input, spare_inputs.pop(), block_size).await?;
        // An empty read ends the stream; only empty input makes an (empty) member of it.
        if block.is_empty() && !first {
            break;
        }
        first = false;
        let short = block.len() < block_size;
        if pending.len() >= 2 * threads
            && let Some(oldest) = pending.pop_front()
        {
            let done = finish(oldest, &mut out).await?;
            spare_inputs.push(done.data);
            spare_outputs.push(done.out);
        }
        let (done, receiver) = oneshot::channel();
        let work = Work {
            data: block,
            out: spare_outputs.pop().unwrap_or_default(),
            done,
        };
        queue
            .send(work)
            .map_err(|_| io::Error::other("the gzip workers are gone"))?;
        pending.push_back(receiver);
        if short {
            break;
        }
    }
    drop(queue);
    for block in pending {
        finish(block, &mut out).await?;
    }
    Ok(out)
}

/// Compresses blocks from `jobs` until the sender is gone.
fn worker(jobs: &Mutex<mpsc::Receiver<Work>>, level: u32) {
    crate::thread::lower_priority();
    // `parallel` checked the level; were it refused anyway, this worker's end shows as
    // "a gzip worker stopped" or "the gzip workers are gone".
    let Ok(mut compressor) = compressor(level) else {
        return;
    };
    loop {
        // Held only while waiting: the others wait for the lock instead of the channel.
        let next = match jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        let Ok(mut work) = next else {
            return;
        };
        let result = gzip_member(&mut compressor, &work.data, &mut work.out).map(|()| Done {
            data: work.data,
            out: work.out,
        });
        // The writer may have stopped on an error; then nobody wants the block.
        let _ = work.done.send(result);
    }
}

/// Waits for the oldest block and writes its member.
async fn finish<W: AsyncWrite + Unpin>(
    block: oneshot::Receiver<io::Result<Done>>,
    out: &mut W,
) -> io::Result<Done> {
    let done = block
        .await
        .map_err(|_| io::Error::other("a gzip worker stopped"))??;
    out.write_all(&done.out).await?;
    Ok(done)
}

/// Reads up to `size` bytes into a (reused) buffer; fewer only at the end of the stream.
async fn fill<R: AsyncRead + Unpin>(
    input: &mut R,
    buffer: Option<Vec<u8>>,
    size: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = buffer.unwrap_or_default();
    buf.clear();
    buf.resize(size, 0);
    let n = read_full(input, &mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

/// Fills `buf` (short only at the end of the stream); returns how much was read.
pub(crate) async fn read_full<R: AsyncRead + Unpin>(
    input: &mut R,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Varied, partly compressible bytes with repeats that cross block boundaries.
    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_u32;
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            if state.is_multiple_of(4) && v.len() > 5000 {
                // Copy a run from up to ~4 KiB back: deflate finds these.
                let from = v.len() - 1 - (state as usize >> 8) % 4000;
                for i in 0..(state as usize >> 4) % 200 {
                    v.push(v[from + i]);
                }
            } else {
                v.push(b'a' + (state % 23) as u8);
            }
        }
        v.truncate(len);
        v
    }

    /// Every member, in order, as a decoder that stops at the first one would not.
    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        let mut d = flate2::read::MultiGzDecoder::new(gz);
        io::Read::read_to_end(&mut d, &mut back).expect("valid gzip");
        back
    }

    /// How many gzip members `gz` holds (each begins with the magic bytes and ends with
    /// its input's CRC-32 and length).
    fn members(gz: &[u8], data: &[u8], block: usize) -> usize {
        let mut rest = gz;
        let mut count = 0;
        let mut offset = 0;
        while !rest.is_empty() {
            assert_eq!(rest[..3], [0x1f, 0x8b, 8], "member {count} header");
            let mut d = flate2::bufread::GzDecoder::new(rest);
            let mut one = Vec::new();
            io::Read::read_to_end(&mut d, &mut one).expect("member");
            let end = offset + one.len();
            assert!(one == data[offset..end], "member {count} holds its block");
            assert!(one.len() == block.min(data.len() - offset));
            offset = end;
            // What the decoder did not consume is the next member.
            rest = d.into_inner();
            count += 1;
        }
        assert_eq!(offset, data.len());
        count
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_depends_on_block_size_and_level_only() {
        let data = sample(700_000);
        for level in [0, 1, 6, 9] {
            let one = parallel(&data[..], Vec::new(), level, 65536, 1)
                .await
                .expect("1 thread");
            for threads in [2, 3, 8] {
                let many = parallel(&data[..], Vec::new(), level, 65536, threads)
                    .await
                    .expect("n threads");
                assert!(one == many, "level {level}: {threads} threads differ");
            }
            assert!(gunzip(&one) == data, "level {level} round trip");
        }
        let other = parallel(&data[..], Vec::new(), 6, 2 * 65536, 2)
            .await
            .expect("block");
        assert!(gunzip(&other) == data);
        let six = parallel(&data[..], Vec::new(), 6, 65536, 2)
            .await
            .expect("six");
        assert!(other != six, "the block size should show in the bytes");
    }

    #[tokio::test]
    async fn one_member_per_block() {
        let block = MIN_BLOCK;
        for len in [0, 1, block - 1, block, block + 1, 3 * block, 3 * block + 7] {
            let data = sample(len);
            let gz = parallel(&data[..], Vec::new(), 6, block, 2)
                .await
                .expect("gzip");
            assert!(gunzip(&gz) == data, "length {len}");
            assert_eq!(
                members(&gz, &data, block),
                len.div_ceil(block).max(1),
                "length {len}"
            );
        }
    }

    #[test]
    fn a_block_comes_out_the_same_whatever_was_compressed_before() {
        let data = sample(300_000);
        let (b, c) = (&data[100_000..200_000], &data[200_000..]);
        let mut fresh = compressor(6).expect("level 6");
        let mut first = Vec::new();
        gzip_member(&mut fresh, b, &mut first).expect("b");
        let mut used = compressor(6).expect("level 6");
        let mut after = Vec::new();
        gzip_member(&mut used, c, &mut after).expect("c");
        gzip_member(&mut used, b, &mut after).expect("b again");
        assert!(first == after);
    }

    #[tokio::test]
    async fn a_level_libdeflate_refuses_is_an_error() {
        let err = parallel(&b"x"[..], Vec::new(), 13, MIN_BLOCK, 2).await;
        assert!(err.is_err());
    }
}
