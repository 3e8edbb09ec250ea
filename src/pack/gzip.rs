//! Parallel gzip whose bytes do not depend on the number of threads.
//!
//! The stream is cut into blocks of a fixed size. Each block is deflated on its own (so
//! blocks can be deflated at once on several cores), primed with the last 32 KiB of the
//! block before it as its dictionary (so matches reach back across the cut as they would in
//! one stream), and ended on a sync flush, which byte-aligns its end. The last block ends the
//! deflate stream instead. Laid end to end after one gzip header, the blocks are one valid
//! deflate stream: a decoder keeps the previous 32 KiB as its window anyway, which is
//! exactly the dictionary each block was primed with. The trailer's CRC-32 is the per-block
//! CRCs combined in order. This is pigz's scheme.
//!
//! What each block becomes depends only on its bytes, the 32 KiB before it, whether it is the
//! last, and the level; blocks are written in order. So the output depends on the input, the
//! level and the block size, never on how many threads ran or which finished first.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, mpsc};

use flate2::{Compress, FlushCompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

/// Deflate's window: the most a match can reach back, so the most of the previous block
/// that can help the next one.
const WINDOW: usize = 32 * 1024;
/// Smallest block: a block shorter than the window could not hold the next one's dictionary.
pub const MIN_BLOCK: usize = WINDOW;
/// Largest block: each thread holds about two, and memory should stay small.
pub const MAX_BLOCK: usize = 64 << 20;
/// Most workers per stream: each holds about two blocks in memory, and beyond the number of
/// cores more workers only cost memory.
pub const MAX_THREADS: usize = 256;

/// The 10-byte gzip header: no name, mtime 0, OS "unknown", so nothing about the machine or
/// the moment gets in. The same as async-compression's, so single-stream and parallel gzip
/// differ only in the deflate data.
fn header(level: u32) -> [u8; 10] {
    let xfl = match level {
        9 => 2,     // "maximum compression"
        0..=1 => 4, // "fastest"
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff]
}

/// Deflates `data` as one block primed with `dict` into `out` (replacing what it held).
///
/// Every block gets a new deflate state. A reset one is not the same: zlib keeps the window's
/// bytes across a reset, and near the end of the input its match search compares bytes past
/// the data, so what an earlier block left there can change the choice (measured: 12 of 256
/// 1 MiB blocks of executables came out differently after a reset). A new state's window is
/// zeroed. The output room is sized from `data.len()` alone, and the call gets all the input
/// at once: deflate's choices may depend on the room it is given (at level 0 it cuts stored
/// blocks to fit), and must depend on nothing but the block.
pub fn deflate_block(
    level: u32,
    dict: &[u8],
    data: &[u8],
    last: bool,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    // Raw deflate: the gzip header and trailer are ours to write.
    let mut deflate = Compress::new(flate2::Compression::new(level), false);
    if !dict.is_empty() {
        deflate.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    // Above deflate's worst case (stored blocks: 5 bytes per 64 KiB), plus the flush marker.
    let room = data.len() + data.len() / 8 + 64;
    out.clear();
    out.resize(room, 0);
    loop {
        // The state is new, so its totals are this block's.
        let (read, out_before) = (deflate.total_in() as usize, deflate.total_out());
        let status = deflate
            .compress(&data[read..], &mut out[out_before as usize..], flush)
            .map_err(io::Error::other)?;
        let (read, written) = (deflate.total_in() as usize, deflate.total_out() as usize);
        // A sync flush is complete once all input is in and there was room left over.
        let done = match status {
            Status::StreamEnd => true,
            _ => !last && read == data.len() && written < out.len(),
        };
        if done {
            break;
        }
        if written < out.len() && deflate.total_out() == out_before {
            return Err(io::Error::other("deflate made no progress"));
        }
        // Not reached with the room above; still the same for every run if it is.
        let grow = out.len() / 2 + 64;
        out.resize(out.len() + grow, 0);
    }
    out.truncate(deflate.total_out() as usize);
    Ok(())
}

/// A block for a worker to deflate.
struct Work {
    /// The block's bytes.
    data: Vec<u8>,
    /// The last `WINDOW` bytes before it.
    dict: Vec<u8>,
    last: bool,
    /// A buffer for the result.
    out: Vec<u8>,
    /// Where the finished block goes: the writer waits on these in block order.
    done: oneshot::Sender<io::Result<Done>>,
}

/// A deflated block, with its buffers for reuse.
struct Done {
    data: Vec<u8>,
    out: Vec<u8>,
    /// CRC-32 of `data`, computed by the worker too.
    crc: u32,
}

/// Gzips everything `input` yields into `out` as one member on `threads` workers, and gives
/// `out` back.
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

    out.write_all(&header(level)).await?;
    let mut crc = crc32fast::Hasher::new();
    let mut total: u64 = 0;
    let mut pending: VecDeque<oneshot::Receiver<io::Result<Done>>> = VecDeque::new();
    let mut spare_inputs: Vec<Vec<u8>> = Vec::new();
    let mut spare_outputs: Vec<Vec<u8>> = Vec::new();
    // The last WINDOW bytes before the block being sent.
    let mut dict: Vec<u8> = Vec::new();

    let mut current = fill(&mut input, spare_inputs.pop(), block_size).await?;
    loop {
        // A short block ends the stream; a full one is the last only if nothing follows, which
        // takes reading ahead (the last block must end the deflate stream, not sync-flush).
        let at_end = current.len() < block_size;
        let next = if at_end {
            Vec::new()
        } else {
            fill(&mut input, spare_inputs.pop(), block_size).await?
        };
        let last = at_end || next.is_empty();

        if pending.len() >= 2 * threads
            && let Some(oldest) = pending.pop_front()
        {
            let done = finish(oldest, &mut out, &mut crc, &mut total).await?;
            spare_inputs.push(done.data);
            spare_outputs.push(done.out);
        }
        let primer = std::mem::take(&mut dict);
        dict.extend_from_slice(&current[current.len().saturating_sub(WINDOW)..]);
        let (done, receiver) = oneshot::channel();
        let work = Work {
            data: current,
            dict: primer,
            last,
            out: spare_outputs.pop().unwrap_or_default(),
            done,
        };
        queue
            .send(work)
            .map_err(|_| io::Error::other("the gzip workers are gone"))?;
        pending.push_back(receiver);
        if last {
            break;
        }
        current = next;
    }
    drop(queue);
    for block in pending {
        finish(block, &mut out, &mut crc, &mut total).await?;
    }
    let mut trailer = [0u8; 8];
    trailer[..4].copy_from_slice(&crc.finalize().to_le_bytes());
    // ISIZE is the length modulo 2^32 (RFC 1952).
    trailer[4..].copy_from_slice(&(total as u32).to_le_bytes());
    out.write_all(&trailer).await?;
    Ok(out)
}

/// Deflates blocks from `jobs` until the sender is gone.
fn worker(jobs: &Mutex<mpsc::Receiver<Work>>, level: u32) {
    lower_priority();
    loop {
        // Held only while waiting: the others wait for the lock instead of the channel.
        let next = match jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        let Ok(mut work) = next else {
            return;
        };
        let result =
            deflate_block(level, &work.dict, &work.data, work.last, &mut work.out).map(|()| Done {
                crc: crc32fast::hash(&work.data),
                data: work.data,
                out: work.out,
            });
        // The writer may have stopped on an error; then nobody wants the block.
        let _ = work.done.send(result);
    }
}

/// Lowers this thread's CPU priority (nice 10: about a tenth of the CPU of a nice-0 thread
/// that wants it). Deflating is the bulk of a pack's CPU time, and with a worker per core it
/// would take turns on equal terms with everything else: the tar stage that feeds it, and a
/// server's request handling. Niced, it takes what they leave. Only for threads of our own
/// that end with the pack: an unprivileged thread cannot take the priority back.
fn lower_priority() {
    // On Linux, PRIO_PROCESS with a thread id applies to that thread only. Failing to lower
    // it is harmless; the pack runs the same.
    // SAFETY: system calls on this thread, no pointers.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if *libc::__errno_location() == 0 {
            libc::setpriority(libc::PRIO_PROCESS, tid, now.saturating_add(10).min(19));
        }
    }
}

/// Waits for the oldest block, writes it and folds its CRC in.
async fn finish<W: AsyncWrite + Unpin>(
    block: oneshot::Receiver<io::Result<Done>>,
    out: &mut W,
    crc: &mut crc32fast::Hasher,
    total: &mut u64,
) -> io::Result<Done> {
    let done = block
        .await
        .map_err(|_| io::Error::other("a gzip worker stopped"))??;
    out.write_all(&done.out).await?;
    let len = done.data.len() as u64;
    crc.combine(&crc32fast::Hasher::new_with_initial_len(done.crc, len));
    *total += len;
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

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        let mut d = flate2::read::GzDecoder::new(gz);
        io::Read::read_to_end(&mut d, &mut back).expect("valid gzip");
        back
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
    async fn edge_lengths_round_trip() {
        let block = MIN_BLOCK;
        for len in [0, 1, block - 1, block, block + 1, 3 * block, 3 * block + 7] {
            let data = sample(len);
            let gz = parallel(&data[..], Vec::new(), 6, block, 2)
                .await
                .expect("gzip");
            assert!(gunzip(&gz) == data, "length {len}");
            // The trailer: CRC-32 and length of the whole input.
            let n = gz.len();
            assert_eq!(gz[n - 8..n - 4], crc32fast::hash(&data).to_le_bytes());
            assert_eq!(gz[n - 4..], (len as u32).to_le_bytes());
        }
    }

    #[test]
    fn a_block_comes_out_the_same_whatever_was_deflated_before() {
        let data = sample(300_000);
        let (a, b, c) = (&data[..100_000], &data[100_000..200_000], &data[200_000..]);
        let dict = &a[a.len() - WINDOW..];
        let mut first = Vec::new();
        deflate_block(6, dict, b, false, &mut first).expect("b");
        let mut after = Vec::new();
        deflate_block(6, &[], c, true, &mut after).expect("c");
        deflate_block(6, dict, b, false, &mut after).expect("b again");
        assert!(first == after);
        // The dictionary is used: the same block without it comes out differently.
        let mut plain = Vec::new();
        deflate_block(6, &[], b, false, &mut plain).expect("b");
        assert!(plain != first);
    }
}
