//! Blob downloads that never copy the blob through user space.
//!
//! A blob is answered (on plain HTTP/1.1) as a series of memory maps of its file, each handed
//! to hyper as a `Bytes` that owns its map. hyper queues them and passes them to the socket
//! as `IoSlice`s without copying (it writes vectored, and a `Bytes` is never flattened into
//! its buffer). The socket is wrapped in [`Sendfile`], which recognises a slice that lies in
//! one of these maps and sends that range of the file with `sendfile(2)` instead of
//! `write(2)`: the kernel moves page-cache pages into the socket, as nginx's `sendfile on`
//! does, and the mapped pages are never touched, so they never count in the server's memory.
//!
//! Correctness never depends on the interception: a slice that reaches any other writer
//! (HTTP/2, a future TLS stream) is ordinary memory with the blob's bytes in it. A map stays
//! valid because blobs are never truncated or written in place, only replaced by rename and
//! unlinked, which leave an open file's pages alone.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Most of a blob mapped at once per download. The maps cost address space only (the
/// sendfile path never faults them in), so this just sets how often the body maps the next
/// piece; each is one `mmap` and one `munmap`.
pub const MAP_CHUNK: usize = 8 << 20;

/// A live map: where it ends, and which file and offset its first byte is.
struct Region {
    end: usize,
    fd: RawFd,
    offset: u64,
}

/// Every live map by its start address. A map is registered before its `Bytes` exists and
/// removed only when the last `Bytes` of it is dropped, so a slice borrowed from one is
/// always found with the map's file still open.
static REGIONS: Mutex<BTreeMap<usize, Region>> = Mutex::new(BTreeMap::new());

fn regions() -> std::sync::MutexGuard<'static, BTreeMap<usize, Region>> {
    // Entries are plain data: a panic elsewhere cannot leave one half made.
    REGIONS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The file and offset of `slice`, if it lies wholly inside one live map.
fn lookup(slice: &[u8]) -> Option<(RawFd, u64)> {
    let start = slice.as_ptr() as usize;
    let regions = regions();
    let (&base, region) = regions.range(..=start).next_back()?;
    (start + slice.len() <= region.end).then(|| (region.fd, region.offset + (start - base) as u64))
}

/// Owns one map and the file it maps; unregisters the map before it is unmapped.
struct Mapping {
    map: memmap2::Mmap,
    /// Keeps the descriptor that `REGIONS` names open while the map is registered.
    _file: Arc<File>,
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        regions().remove(&(self.map.as_ptr() as usize));
    }
}

/// `len` bytes of `file` from `offset` as a `Bytes` backed by a map of the file.
pub fn map(file: &Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    // A map starts on a page; the bytes before `offset` are sliced off.
    let page = page_size();
    let aligned = offset - offset % page;
    let skip = (offset - aligned) as usize;
    // SAFETY: the store never truncates or rewrites a blob's file (see the module comment),
    // so the mapped bytes stay what they are while the map lives.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(aligned)
            .len(skip + len)
            .map(&**file)?
    };
    let base = map.as_ptr() as usize;
    regions().insert(
        base,
        Region {
            end: base + map.len(),
            fd: file.as_raw_fd(),
            offset: aligned,
        },
    );
    let mapping = Mapping {
        map,
        _file: file.clone(),
    };
    Ok(Bytes::from_owner(mapping).slice(skip..))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

/// A TCP stream whose writes of mapped blob ranges go out by `sendfile(2)`.
pub struct Sendfile {
    stream: TcpStream,
}

impl Sendfile {
    pub fn new(stream: TcpStream) -> Sendfile {
        Sendfile { stream }
    }

    /// Sends up to `len` bytes of `fd` from `offset`, waiting for the socket like a write.
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        fd: RawFd,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let socket = self.stream.as_raw_fd();
        loop {
            std::task::ready!(self.stream.poll_write_ready(cx))?;
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                let mut off = offset as libc::off_t;
                // SAFETY: both descriptors are open (the socket is ours; the file is held by
                // the map the slice came from), and `off` is a valid pointer.
                let n = unsafe { libc::sendfile(socket, fd, &mut off, len) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match sent {
                // The file ended before the range did: it was truncated behind the store's
                // back. Fail the response rather than promise bytes that will not come.
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file is shorter than its recorded size",
                    )));
                }
                Ok(n) => return Poll::Ready(Ok(n)),
                // Readiness was stale; `poll_write_ready` waits again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for Sendfile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sendfile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match lookup(buf) {
            Some((fd, offset)) => self.poll_sendfile(cx, fd, offset, buf.len()),
            None => Pin::new(&mut self.stream).poll_write(cx, buf),
        }
    }

    /// Plain slices before the first mapped one go out in one `writev`; a mapped slice at the
    /// front goes by `sendfile`. A short count is what a vectored write may return, and the
    /// caller comes back for the rest.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first_mapped = bufs
            .iter()
            .enumerate()
            .find_map(|(i, b)| lookup(b).map(|found| (i, found, b.len())));
        match first_mapped {
            Some((0, (fd, offset), len)) => self.poll_sendfile(cx, fd, offset, len),
            Some((i, _, _)) => Pin::new(&mut self.stream).poll_write_vectored(cx, &bufs[..i]),
            None => Pin::new(&mut self.stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
