//! Our own threads' scheduling: background work that must not take CPU from serving.

/// Lowers this thread's CPU priority (nice 10: about a tenth of the CPU of a nice-0 thread
/// that wants it). Deflating is the bulk of a pack's CPU time, and with a worker per core it
/// would take turns on equal terms with everything else: the tar stage that feeds it, and a
/// server's request handling. Niced, it takes what they leave. Only for threads of our own
/// that end with the pack: an unprivileged thread cannot take the priority back.
pub fn lower_priority() {
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

/// Asks the allocator to return the memory it holds free to the system (glibc keeps freed
/// memory in its arenas, one per thread that allocated, long after a burst of clients left).
/// Takes milliseconds; called after many connections closed, not per request.
pub fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: no arguments but a size to keep; glibc locks its arenas itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sets glibc's allocator for a process that streams large buffers through a few threads.
/// Called first in `main`, before any thread starts.
///
/// - A fixed mmap threshold (256 KiB): by default glibc raises it to the size of each large
///   buffer freed (up to 32 MiB), after which the pack's 1 MiB blocks and 2 MiB copy buffers
///   come from the arenas and stay there; fixed, they are returned when freed.
/// - One arena per CPU instead of eight: every thread that allocates keeps its own free
///   memory, and a pack's short-lived threads left it scattered.
///
/// Measured on a 2-core box (issue 32): a pack of a 1 GiB file peaked at 39.7 MB of RSS, at
/// 38.4 with both; python3 with its packages at 56.4 and 45.0 (`/usr/bin/time -v`).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        // SAFETY: mallopt takes two integers; called before other threads allocate. A value
        // glibc refuses is ignored (it returns 0) and the defaults stay.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
            libc::mallopt(libc::M_ARENA_MAX, cpus.min(64) as libc::c_int);
        }
    }
}
