//! Response bodies: nothing, a small document in memory, or a blob: sent from maps of its
//! file on plain HTTP/1.1, read from it in 512 KiB pieces otherwise.
//! `Logged` wraps each response body and writes the request's access-log line when the body
//! is done (or dropped, if the client left), so the line has the bytes really sent.
//!
//! Request bodies reach handlers as a [`RequestBody`], which remembers whether a handler read
//! it, so that what an early answer leaves unread can be read and dropped before it goes out.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

/// Read size for blobs read into memory. Each download holds up to two pieces (hyper asks
/// for the next one before the last is fully sent), so this sets memory per download.
/// Measured with 50 concurrent downloads: 1 MiB pieces peaked at 110 MiB RSS, 512 KiB at
/// 58 MiB, 256 KiB at 41 MiB.
pub const STREAM_CHUNK: usize = 512 << 10;

/// Read size for blobs sent over HTTP/2: a stream whose client keeps its window shut holds a
/// piece in memory, so 100 connections of 32 such streams held 512 KiB pieces each (1.6 GB,
/// and RSS +3 GB). 16 KiB is HTTP/2's default frame size.
pub const H2_CHUNK: usize = 16 << 10;

pub enum Body {
    Empty,
    /// A whole document (manifest, JSON list, error); `None` once sent.
    Bytes(Option<Bytes>),
    /// A blob, or a range of one, as maps of its file (see [`super::mapped`]);
    /// `remaining` gives hyper an exact size hint.
    Mapped {
        file: std::sync::Arc<std::fs::File>,
        /// Where the next map starts.
        offset: u64,
        remaining: u64,
    },
    /// A blob, or a range of one, read into memory: for writers that copy the bytes in user
    /// space (HTTP/2's framing), where a map of a blob cut short behind the store's back
    /// would be SIGBUS instead of an error.
    /// Also a shared store's blob, streamed from object storage.
    File {
        stream: crate::store::ByteStream,
        remaining: u64,
    },
}

impl Body {
    pub fn bytes(b: impl Into<Bytes>) -> Body {
        Body::Bytes(Some(b.into()))
    }

    /// `len` bytes of `file` from its current position, read in pieces of `chunk`.
    pub fn file(file: tokio::fs::File, len: u64, chunk: usize) -> Body {
        Body::stream(
            Box::pin(ReaderStream::with_capacity(file.take(len), chunk)),
            len,
        )
    }

    /// `len` bytes as `stream` brings them.
    pub fn stream(stream: crate::store::ByteStream, len: u64) -> Body {
        Body::File {
            stream,
            remaining: len,
        }
    }

    /// `len` bytes of `file` from `offset`, as maps.
    pub fn mapped(file: std::fs::File, offset: u64, len: u64) -> Body {
        Body::Mapped {
            file: std::sync::Arc::new(file),
            offset,
            remaining: len,
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Mapped {
                file,
                offset,
                remaining,
            } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let len = (*remaining).min(super::mapped::MAP_CHUNK as u64);
                match super::mapped::map(file, *offset, len as usize) {
                    Ok(chunk) => {
                        *offset += len;
                        *remaining -= len;
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                    Err(e) => Poll::Ready(Some(Err(e))),
                }
            }
            Body::File { stream, remaining } => {
                match std::task::ready!(stream.as_mut().poll_next(cx)) {
                    Some(Ok(chunk)) => {
                        *remaining = remaining.saturating_sub(chunk.len() as u64);
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                    Some(Err(e)) => Poll::Ready(Some(Err(e))),
                    // The file ended early (cut short behind the store's back): fail the
                    // response rather than hang.
                    None if *remaining > 0 => Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file is shorter than its recorded size",
                    )))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Bytes(b) => b.is_none(),
            Body::Mapped { remaining, .. } | Body::File { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Mapped { remaining, .. } | Body::File { remaining, .. } => {
                SizeHint::with_exact(*remaining)
            }
        }
    }
}

/// What the access-log line says about a request besides the bytes sent.
pub struct Access {
    pub remote: SocketAddr,
    pub method: hyper::Method,
    pub path: String,
    /// The query string, credentials and signatures redacted ([`redact`]).
    pub query: Option<String>,
    /// The API resource (`manifest`, `blob`, `upload`, ... or `healthz`).
    pub route: &'static str,
    pub status: u16,
    /// Who the credentials proved, if any were checked.
    pub user: Option<String>,
    /// The upload session named by the path or opened by the answer.
    pub upload: Option<String>,
    /// The digest named by the path or the answer (`Docker-Content-Digest`).
    pub digest: Option<String>,
    /// Bytes of the request body read.
    pub received: u64,
    pub start: Instant,
    /// No line for it (health checks, by default); it is still counted in the metrics.
    pub quiet: bool,
}

/// Query parameters whose values are secrets: credentials, and the signatures of presigned
/// URLs (which are credentials for as long as they live).
fn secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let part = [
        "password",
        "passwd",
        "secret",
        "token",
        "signature",
        "credential",
    ];
    let whole = ["sig", "key", "auth", "apikey", "api_key", "access_key"];
    part.iter().any(|p| key.contains(p)) || whole.contains(&key.as_str())
}

/// A query string fit for the log: every value of a secret parameter replaced by
/// `REDACTED`, and at most 256 characters.
pub fn redact(query: &str) -> String {
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if secret(k) => format!("{k}=REDACTED"),
            _ => pair.to_owned(),
        })
        .collect();
    super::router::truncate(&redacted.join("&"))
}

/// A method as a label: the API's few, and one word for the rest (so clients cannot make
/// new label sets).
fn method_label(m: &hyper::Method) -> &'static str {
    use hyper::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// A response body that logs its request once it is finished.
pub struct Logged {
    inner: Body,
    access: Access,
    sent: u64,
    /// Set when the body ran to its end; a body dropped before that was cut off.
    finished: bool,
    /// Set when reading the body failed (the error is logged with the line).
    error: Option<String>,
    /// The body is being sent, for the stalled-answer watch (`None`: an empty body).
    sending: Option<super::conn::Sending>,
    /// The request counts as in flight on its connection until its answer is done.
    _in_flight: super::conn::InFlight,
}

impl Logged {
    /// `watch`: the body's pieces tell whether its client takes them (HTTP/2).
    pub fn new(
        inner: Body,
        access: Access,
        in_flight: super::conn::InFlight,
        watch: bool,
    ) -> Logged {
        let finished = hyper::body::Body::is_end_stream(&inner);
        Logged {
            inner,
            access,
            sent: 0,
            finished,
            error: None,
            sending: (watch && !finished).then(|| in_flight.sending()),
            _in_flight: in_flight,
        }
    }
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                this.sent += f.data_ref().map_or(0, |d| d.len() as u64);
                this.finished = hyper::body::Body::is_end_stream(&this.inner);
                if let Some(s) = &this.sending {
                    s.progressed();
                }
            }
            Some(Err(e)) => this.error = Some(e.to_string()),
            None => this.finished = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let a = &self.access;
        let elapsed = a.start.elapsed().as_secs_f64();
        let method = method_label(&a.method);
        crate::metrics::request(
            crate::metrics::RequestLabels {
                method,
                route: a.route,
                status: a.status,
            },
            elapsed,
            self.sent,
            a.received,
        );
        if a.quiet {
            return;
        }
        // A number, to two decimals (JSON logs keep it a number).
        let ms = (elapsed * 1e5).round() / 100.0;
        // Absent values are left out of the line rather than written as empty.
        let (query, user, upload, digest) = (
            a.query.as_deref().map(tracing::field::display),
            a.user.as_deref().map(tracing::field::display),
            a.upload.as_deref().map(tracing::field::display),
            a.digest.as_deref().map(tracing::field::display),
        );
        match &self.error {
            Some(error) => tracing::warn!(
                target: super::ACCESS_LOG,
                remote = %a.remote, method = %method, path = %a.path, status = a.status,
                query, route = %a.route, user, upload, digest, received = a.received,
                bytes = self.sent, ms, %error,
                "request failed while sending the body"
            ),
            None => tracing::info!(
                target: super::ACCESS_LOG,
                remote = %a.remote, method = %method, path = %a.path, status = a.status,
                query, route = %a.route, user, upload, digest, received = a.received,
                bytes = self.sent, ms,
                // A body dropped before its end: the client went away mid-download.
                complete = self.finished,
                "request"
            ),
        }
    }
}

/// Most of an unread request body read and dropped before an early answer (say, a 416 for a
/// chunk out of order) goes out. Were it left unread, closing the connection with the body
/// still arriving makes the kernel reset it, and the client often loses the answer to EPIPE or
/// ECONNRESET. Larger bodies are not read: the connection is closed on them.
pub const LINGER_BYTES: u64 = 4 << 20;
/// How long that reading may take at most, so a slow sender cannot hold the answer back.
pub const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// A request's body as handlers read it: frame by frame, none waited for longer than the
/// body timeout.
pub struct RequestBody {
    inner: hyper::body::Incoming,
    /// Whether a handler asked for a frame (for `Expect: 100-continue`: asking is what makes
    /// hyper tell the client to send the body).
    started: bool,
    /// How fast a body must come (see `Pace`).
    pace: Pace,
    /// Bytes read so far.
    received: u64,
    /// The current span: time spent waiting for the client in it, and bytes it brought.
    span_waited: std::time::Duration,
    span_bytes: u64,
}

/// How fast a request body must come: at least `min_rate` bytes per second over each `span`
/// of time spent waiting for it (at least one byte, with a rate of 0). Only time spent
/// waiting for the client counts: a store that is slow to take what was read does not make
/// its client too slow.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub span: std::time::Duration,
    pub min_rate: u64,
}

impl Pace {
    fn needed(&self) -> u64 {
        self.min_rate.saturating_mul(self.span.as_secs()).max(1)
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    Client(#[from] hyper::Error),
    #[error("no byte of the body arrived for {} s", .0.as_secs())]
    Stalled(std::time::Duration),
    #[error("the body came at {got} bytes in {} s, under the {min_rate} B/s the server needs", span.as_secs())]
    TooSlow {
        got: u64,
        span: std::time::Duration,
        min_rate: u64,
    },
}

impl RequestBody {
    pub fn new(inner: hyper::body::Incoming, pace: Pace) -> RequestBody {
        RequestBody {
            inner,
            started: false,
            pace,
            received: 0,
            span_waited: std::time::Duration::ZERO,
            span_bytes: 0,
        }
    }

    /// The next frame, `None` at the end; an error once a span brought too little.
    pub async fn frame(&mut self) -> Option<Result<Frame<Bytes>, BodyError>> {
        use http_body_util::BodyExt;
        self.started = true;
        loop {
            let left = self.pace.span.saturating_sub(self.span_waited);
            let began = tokio::time::Instant::now();
            let got = tokio::time::timeout(left, self.inner.frame()).await;
            self.span_waited += began.elapsed();
            if let Ok(frame) = got {
                if let Some(Ok(f)) = &frame {
                    let n = f.data_ref().map_or(0, |d| d.len() as u64);
                    self.received += n;
                    self.span_bytes += n;
                }
                return frame.map(|f| f.map_err(BodyError::from));
            }
            // A span is over: a new one begins if this one brought enough.
            if self.span_bytes < self.pace.needed() {
                crate::metrics::limit_hit("slow_body", 1);
                return Some(Err(match self.span_bytes {
                    0 => BodyError::Stalled(self.pace.span),
                    got => BodyError::TooSlow {
                        got,
                        span: self.pace.span,
                        min_rate: self.pace.min_rate,
                    },
                }));
            }
            self.span_waited = std::time::Duration::ZERO;
            self.span_bytes = 0;
        }
    }

    /// Bytes of the body read so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Reads and drops the rest of the body when the answer did not need it, within
    /// `LINGER_BYTES` and `LINGER_TIME`. Not for a client that waits for `100 Continue`
    /// before it sends: it sends nothing until told, and is told by the answer instead.
    pub async fn discard_rest(&mut self, request: &hyper::HeaderMap) {
        use hyper::body::Body as _;
        if self.inner.is_end_stream() {
            return;
        }
        let expects_continue = request
            .get(hyper::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue && !self.started {
            return;
        }
        if self.inner.size_hint().lower() > LINGER_BYTES {
            return;
        }
        let drain = async {
            let mut read = 0u64;
            while let Some(Ok(frame)) = self.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > LINGER_BYTES {
                    break;
                }
            }
        };
        if tokio::time::timeout(LINGER_TIME, drain).await.is_err() {
            tracing::debug!("gave up reading the rest of a refused request's body");
        }
    }
}
