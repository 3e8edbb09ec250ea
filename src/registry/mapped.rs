//! Blob bodies as memory maps of the blob's file, for plain HTTP/1.1.
//!
//! A download is a series of 1 MiB maps of the file, each handed to hyper as a `Bytes` that
//! owns its map. hyper queues a `Bytes` without copying and writes it to the socket from the
//! map, so each byte is copied once, by the kernel, from the page cache into the socket. A
//! read into a buffer first (what quinistry did before) copied it twice, and went through the
//! blocking pool for every 512 KiB.
//!
//! Measured on loopback against nginx (`sendfile on`) on the same file, medians of 8 rounds
//! of a 88 MiB download and 3 rounds of 50 at once (MiB/s, peak RSS):
//!
//! | body | one | 50 at once | peak RSS |
//! |---|---|---|---|
//! | 512 KiB reads (before) | 2781 | 3417 | 66 MiB |
//! | 8 MiB maps, `sendfile` of each mapped range | 2100 | 3357 | 30 MiB |
//! | 8 MiB maps, written | 2980 | - | - |
//! | 1 MiB maps, written | 3206 | 3687 | 52 MiB |
//! | 512 KiB maps, written | - | 3385 | 39 MiB |
//! | nginx | 2757 | 3117 | - |
//!
//! `sendfile` (the socket sending page-cache pages by reference) made one download on
//! loopback slower and less steady (1.4 to 4.4 GB/s), so the maps are written. A map's pages
//! count in the server's RSS while it is being sent (they are the page cache's, shared and
//! reclaimable), at most two maps per download.
//!
//! A map stays valid because the store never truncates or rewrites a blob's file, only
//! renames over it and unlinks it, which leave an open file's pages alone. A blob cut short
//! behind the store's back (a damaged store) must not end the server: a map touched past
//! the file's end is SIGBUS. So maps are made only for HTTP/1.1, where hyper hands them to
//! the kernel and the kernel's copy fails the write instead (EFAULT); HTTP/2's framing copies
//! small pieces in user space, so it reads the blob instead (`Body::File`). A blob found
//! shorter than its size before a map is made fails its download (see [`map`]).

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

/// How much of a blob is mapped at once per download (see the table above).
pub const MAP_CHUNK: usize = 1 << 20;

/// Owns a map and the file it maps.
struct Mapping {
    map: memmap2::Mmap,
    /// The file stays open as long as any part of the map is in use.
    _file: Arc<File>,
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// `len` bytes of `file` from `offset` as a `Bytes` backed by a map of the file.
pub fn map(file: &Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    // Touching a map past the end of its file is SIGBUS, which would end the whole server.
    // Blobs are never truncated by the store; one cut short behind its back (a damaged
    // store) fails this download instead, as a read would have.
    if file.metadata()?.len() < offset + len as u64 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob file is shorter than its recorded size",
        ));
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
