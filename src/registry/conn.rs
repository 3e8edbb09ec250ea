//! What one connection may hold, and for how long. A client cannot keep a connection it does
//! not use: the socket is watched ([`Watched`]) for a peer that sends nothing while no request
//! of it is being answered (the idle timeout, from the moment it connects), and for a peer
//! that takes no byte of an answer (the write timeout). A request body that stops arriving is
//! the body timeout's (`RequestBody`). How many connections are open at once is capped; at
//! the cap, the connection idle longest is closed to make room ([`Connections`]), so a flood
//! of connections that send nothing cannot keep new clients out. One client address may hold
//! only its share of the connections (`max_connections_per_client`): past it, its own idlest
//! connection makes room, or, if all of its connections are busy, the new one is closed at
//! once, so one address cannot take the slots every other client needs.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// What the requests of a connection tell its socket, and the server its connections.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests read and not yet answered to their last byte. While one is, the connection
    /// is the server's to use (a pack may take a minute), not idle.
    in_flight: AtomicUsize,
    /// When it last received a byte or finished an answer, in ms since `epoch()`.
    last_active: AtomicU64,
    /// Answers whose body is being sent (headers out, body not done), and when the last
    /// piece of any of them was taken by hyper: HTTP/2 takes a piece only when the client's
    /// window has room, so a client that never opens it shows here, not at the socket.
    sending: AtomicUsize,
    last_sent: AtomicU64,
    /// Cancelled to close the connection (at the cap, to make room for a new one).
    pub evict: tokio_util::sync::CancellationToken,
}

/// A fixed instant for connections' activity times (atomics hold numbers, not instants).
fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl ConnState {
    pub fn new() -> ConnState {
        let state = ConnState::default();
        state.active();
        state
    }

    /// Marks a request in flight until the returned guard is dropped (with its answer).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    fn active(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
    }
}

/// The open connections: at the cap, the one idle longest makes room for a new one.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<u64, (IpAddr, Arc<ConnState>)>>,
    /// Open connections per client address.
    per_client: Mutex<HashMap<IpAddr, usize>>,
    next: AtomicU64,
}

impl Connections {
    /// Registers a connection of `client`; `Registered` takes it out again when dropped.
    pub fn add(self: &Arc<Self>, client: IpAddr, state: Arc<ConnState>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, (client, state));
        *lock(&self.per_client).entry(client).or_default() += 1;
        Registered {
            connections: self.clone(),
            id,
            client,
        }
    }

    /// Whether `client` may open another connection now that it holds `cap`: if it holds
    /// that many, its own idlest connection is closed to make room; false if every one of
    /// them is busy.
    pub fn admit(&self, client: IpAddr, cap: usize) -> bool {
        let held = lock(&self.per_client).get(&client).copied().unwrap_or(0);
        if held < cap {
            return true;
        }
        let open = self.lock();
        let idlest = open
            .values()
            .filter(|(ip, c)| *ip == client && !c.busy() && !c.evict.is_cancelled())
            .min_by_key(|(_, c)| c.last_active.load(Ordering::Relaxed));
        match idlest {
            Some((_, c)) => {
                c.evict.cancel();
                true
            }
            None => {
                crate::metrics::limit_hit("connections_per_client", 1);
                false
            }
        }
    }

    /// Connections open, and requests in flight on them.
    pub fn counts(&self) -> (usize, usize) {
        let open = self.lock();
        let busy = open
            .values()
            .map(|(_, c)| c.in_flight.load(Ordering::Relaxed))
            .sum();
        (open.len(), busy)
    }

    /// Closes the connection that has been idle longest (no request in flight); false if
    /// every connection is busy.
    pub fn evict_idlest(&self) -> bool {
        let open = self.lock();
        let idlest = open
            .values()
            .map(|(_, c)| c)
            .filter(|c| !c.busy() && !c.evict.is_cancelled())
            .min_by_key(|c| c.last_active.load(Ordering::Relaxed));
        match idlest {
            Some(c) => {
                c.evict.cancel();
                true
            }
            None => false,
        }
    }

    /// Closes every connection that has an answer to send and has had no piece of any of
    /// them taken for `timeout`: a client that holds streams open and their windows shut
    /// holds their buffers only this long. How many it closed.
    pub fn cut_stalled(&self, timeout: Duration) -> usize {
        let now = now_ms();
        let limit = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let open = self.lock();
        let mut cut = 0;
        for (_, c) in open.values() {
            if c.sending.load(Ordering::Relaxed) > 0
                && now.saturating_sub(c.last_sent.load(Ordering::Relaxed)) > limit
                && !c.evict.is_cancelled()
            {
                c.evict.cancel();
                cut += 1;
            }
        }
        if cut > 0 {
            crate::metrics::limit_hit("stalled_answer", cut as u64);
        }
        cut
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (IpAddr, Arc<ConnState>)>> {
        lock(&self.open)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection in `Connections`, until it ends.
pub struct Registered {
    connections: Arc<Connections>,
    id: u64,
    client: IpAddr,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
        let mut per_client = lock(&self.connections.per_client);
        if let Some(n) = per_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

/// A request in flight; dropped when its answer is done (or abandoned).
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl InFlight {
    /// Marks an answer's body as being sent until the returned guard is dropped.
    pub fn sending(&self) -> Sending {
        self.0.last_sent.store(now_ms(), Ordering::Relaxed);
        self.0.sending.fetch_add(1, Ordering::Relaxed);
        Sending(self.0.clone())
    }
}

/// An answer's body being sent.
#[derive(Debug)]
pub struct Sending(Arc<ConnState>);

impl Sending {
    /// A piece of the body was taken.
    pub fn progressed(&self) {
        self.0.last_sent.store(now_ms(), Ordering::Relaxed);
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that fails with `TimedOut` when its peer holds it without using it: nothing
/// received for `idle` while no request is in flight, or nothing taken of an answer for
/// `write`. hyper then closes the connection.
pub struct Watched<S> {
    inner: S,
    state: Arc<ConnState>,
    idle: Duration,
    write: Duration,
    /// Armed when a read finds nothing and no request is in flight.
    read_deadline: Option<Pin<Box<Sleep>>>,
    /// Armed when the socket takes no more bytes.
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, state: Arc<ConnState>, idle: Duration, write: Duration) -> Watched<S> {
        Watched {
            inner,
            state,
            idle,
            write,
            read_deadline: None,
            write_deadline: None,
        }
    }
}

/// Arms `deadline` (if it is not) to `after` from now and polls it: true once it has passed.
fn expired(deadline: &mut Option<Pin<Box<Sleep>>>, after: Duration, cx: &mut Context<'_>) -> bool {
    deadline
        .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)))
        .as_mut()
        .poll(cx)
        .is_ready()
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.read_deadline = None;
                    this.state.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending if this.state.busy() => {
                // Waiting on a request body is the body timeout's business; waiting while
                // we answer is ours.
                this.read_deadline = None;
                Poll::Pending
            }
            Poll::Pending => {
                if expired(&mut this.read_deadline, this.idle, cx) {
                    return Poll::Ready(Err(timed_out("the connection sent nothing for too long")));
                }
                Poll::Pending
            }
        }
    }
}

impl<S> Watched<S> {
    /// A write that went through clears the write deadline; one that did not arms it.
    fn watch_write(
        &mut self,
        polled: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(r) => {
                self.write_deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending if expired(&mut self.write_deadline, self.write, cx) => Poll::Ready(Err(
                timed_out("the client took nothing of the answer for too long"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_write(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_write(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
