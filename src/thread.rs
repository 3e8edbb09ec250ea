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
