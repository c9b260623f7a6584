//! Request framing (RFC 9112 §6): whether an HTTP/1 request says unambiguously where its
//! body ends. A proxy whose parser and the upstream's disagree on that boundary can be made
//! to forward a request it never saw (request smuggling), so every doubtful form is refused.
//!
//! hyper alone is not enough: it *accepts* two doubtful forms and hides them from the
//! handler (with both `Content-Length` and `Transfer-Encoding` it drops the length and reads
//! chunked; it folds repeated identical `Content-Length`s into one), and it refuses the
//! others (differing lengths, a `Transfer-Encoding` not ending in `chunked`, one on HTTP/1.0)
//! with an empty 400 that no audit line records. So [`watch`] wraps each connection's byte
//! stream, judges every request head with hyper's own parser (httparse) before hyper sees
//! it, and follows each body to the next head. An accepted head reaches hyper unchanged; a
//! refused one reaches it as its request line alone, with nothing after it, so hyper reads a
//! bodiless request and the pipeline's first phase ([`check`]) answers it: 400 with an
//! OperationOutcome, `Connection: close` and an audit line. The verdict travels with the
//! request as a [`Framing`] extension.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Version, header};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request's framing was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// Both `Content-Length` and `Transfer-Encoding` (hyper reads chunked; others may not).
    LengthAndChunked,
    /// `Content-Length` more than once, even with equal values (hyper folds them).
    RepeatedContentLength,
    /// A comma-separated `Content-Length` list such as `5, 5`.
    ContentLengthList,
    /// A `Content-Length` that is not a plain decimal number (`+5`, empty, overflowing).
    InvalidContentLength,
    /// `Transfer-Encoding` more than once.
    RepeatedTransferEncoding,
    /// A `Transfer-Encoding` other than exactly `chunked` (`gzip, chunked`, `chunked,
    /// chunked`, `xchunked`): the proxy forwards bodies as they are and decodes nothing else.
    UnsupportedTransferEncoding,
    /// `Transfer-Encoding` on HTTP/1.0, which has no chunked coding.
    TransferEncodingOnHttp10,
    /// A head whose request line parses but whose header section does not (a space before
    /// a colon, obs-fold, a bare CR): where its body ends cannot be known.
    MalformedHead,
    /// An HTTP/1 request whose head the connection watcher did not judge: it lost track of
    /// the byte stream, so where this request started is not known for sure.
    Unverified,
}

impl FramingError {
    /// The audit reason code.
    pub fn code(self) -> &'static str {
        match self {
            FramingError::LengthAndChunked => "content-length-with-transfer-encoding",
            FramingError::RepeatedContentLength => "repeated-content-length",
            FramingError::ContentLengthList => "content-length-list",
            FramingError::InvalidContentLength => "invalid-content-length",
            FramingError::RepeatedTransferEncoding => "repeated-transfer-encoding",
            FramingError::UnsupportedTransferEncoding => "unsupported-transfer-encoding",
            FramingError::TransferEncodingOnHttp10 => "transfer-encoding-on-http-1.0",
            FramingError::MalformedHead => "malformed-head",
            FramingError::Unverified => "framing-unverified",
        }
    }
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FramingError::LengthAndChunked => {
                "the request has both Content-Length and Transfer-Encoding"
            }
            FramingError::RepeatedContentLength => "the request has more than one Content-Length",
            FramingError::ContentLengthList => "the request's Content-Length is a list",
            FramingError::InvalidContentLength => {
                "the request's Content-Length is not a decimal number"
            }
            FramingError::RepeatedTransferEncoding => {
                "the request has more than one Transfer-Encoding"
            }
            FramingError::UnsupportedTransferEncoding => {
                "the request's Transfer-Encoding is not exactly chunked"
            }
            FramingError::TransferEncodingOnHttp10 => "HTTP/1.0 has no Transfer-Encoding",
            FramingError::MalformedHead => "the request's header section is malformed",
            FramingError::Unverified => "the request's framing could not be verified",
        })
    }
}

/// The framing verdict on one HTTP/1 request head, set by [`Verdicts::tag`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing(pub Result<(), FramingError>);

/// Where the body of an accepted head ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLen {
    Length(u64),
    Chunked,
}

/// Judges the framing headers of one request: at most one of `Content-Length` (one line,
/// digits only) and `Transfer-Encoding` (one line, exactly `chunked`, HTTP/1.1 only).
fn judge<'a>(
    http11: bool,
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<BodyLen, FramingError> {
    let (mut length, mut chunked) = (None::<&[u8]>, None::<&[u8]>);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.replace(value).is_some() {
                return Err(FramingError::RepeatedContentLength);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            && chunked.replace(value).is_some()
        {
            return Err(FramingError::RepeatedTransferEncoding);
        }
    }
    match (length, chunked) {
        (Some(_), Some(_)) => Err(FramingError::LengthAndChunked),
        (None, Some(_)) if !http11 => Err(FramingError::TransferEncodingOnHttp10),
        (None, Some(te)) if te.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            Ok(BodyLen::Chunked)
        }
        (None, Some(_)) => Err(FramingError::UnsupportedTransferEncoding),
        (Some(cl), None) if cl.contains(&b',') => Err(FramingError::ContentLengthList),
        (Some(cl), None) => decimal(cl.trim_ascii())
            .map(BodyLen::Length)
            .ok_or(FramingError::InvalidContentLength),
        (None, None) => Ok(BodyLen::Length(0)),
    }
}

fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = char::from(b).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// The pipeline's framing check: the watcher's verdict for HTTP/1 requests (none means the
/// watcher lost track: refused), then the visible headers for every version (HTTP/2 carries
/// `Content-Length` as a header too).
pub fn check(
    version: Version,
    headers: &HeaderMap,
    framing: Option<&Framing>,
) -> Result<(), FramingError> {
    if version < Version::HTTP_2 {
        framing.ok_or(FramingError::Unverified)?.0?;
    }
    let named = |name: &'static [u8], h: header::HeaderName| {
        headers
            .get_all(h)
            .into_iter()
            .map(move |v: &HeaderValue| (name, v.as_bytes()))
    };
    let visible = named(b"content-length", header::CONTENT_LENGTH)
        .chain(named(b"transfer-encoding", header::TRANSFER_ENCODING));
    judge(version >= Version::HTTP_11, visible).map(|_| ())
}

/// The verdicts a connection's watcher reaches on `stream` when it arrives `piece` bytes at
/// a time, and the bytes it hands to hyper. For the fuzz target: neither may depend on how
/// the bytes arrive.
#[doc(hidden)]
pub fn scan(stream: &[u8], piece: usize) -> (Vec<Result<(), FramingError>>, Vec<u8>) {
    feed_in_pieces(&mut Scanner::new(64 * 1024), stream, piece)
}

/// Feeds `stream` to `scanner` `piece` bytes at a time: the verdicts, and the bytes hyper
/// gets.
fn feed_in_pieces(
    scanner: &mut Scanner,
    stream: &[u8],
    piece: usize,
) -> (Vec<Result<(), FramingError>>, Vec<u8>) {
    let (mut verdicts, mut passed) = (Vec::new(), Vec::new());
    for part in stream.chunks(piece.max(1)) {
        match scanner.feed(part, &mut |v| verdicts.push(v)) {
            Edit::Keep => passed.extend_from_slice(part),
            Edit::Truncate(n) => passed.extend_from_slice(part.get(..n).unwrap_or(part)),
            Edit::Replace(bytes) => passed.extend_from_slice(&bytes),
        }
    }
    (verdicts, passed)
}

/// Wraps a connection's byte stream so that every HTTP/1 request head is judged before
/// hyper reads it. The [`Verdicts`] half tags each request hyper then hands out, in order.
/// `max_head` is hyper's read-buffer limit: a longer head is refused by hyper anyway.
/// `head_timeout` bounds how long a head may be held back incomplete (hyper's own
/// header-read timer only runs once it has some of the head, and then it has none).
pub fn watch<S>(
    io: S,
    max_head: usize,
    head_timeout: Duration,
    peer: SocketAddr,
) -> (Watch<S>, Verdicts) {
    let verdicts = Verdicts(Arc::new(Mutex::new(Queue {
        pending: VecDeque::new(),
        peer,
    })));
    let watch = Watch {
        io,
        scanner: Scanner::new(max_head),
        verdicts: verdicts.clone(),
        queued: Vec::new(),
        handed: 0,
        head_timeout,
        head_timer: None,
    };
    (watch, verdicts)
}

/// The verdicts on the heads seen so far, oldest first, shared by the stream and the service.
#[derive(Clone, Debug)]
pub struct Verdicts(Arc<Mutex<Queue>>);

#[derive(Debug)]
struct Queue {
    pending: VecDeque<Result<(), FramingError>>,
    peer: SocketAddr,
}

impl Drop for Queue {
    /// A refused head that no request took never reached the pipeline (the client left
    /// first): log it, since no audit line will.
    fn drop(&mut self) {
        for e in self.pending.iter().filter_map(|v| v.err()) {
            tracing::warn!(peer = %self.peer, reason = e.code(), "HTTP/1 framing refused before a request was read: {e}");
        }
    }
}

impl Verdicts {
    /// Sets the [`Framing`] extension of an HTTP/1 request from the oldest unclaimed head.
    pub fn tag<B>(&self, req: &mut Request<B>) {
        if req.version() >= Version::HTTP_2 {
            return;
        }
        if let Some(v) = self.0.lock().ok().and_then(|mut q| q.pending.pop_front()) {
            req.extensions_mut().insert(Framing(v));
        }
    }

    fn push(&self, verdict: Result<(), FramingError>) {
        if let Ok(mut q) = self.0.lock() {
            q.pending.push_back(verdict);
        }
    }
}

/// A connection's stream, read through a [`Scanner`]; writes pass through untouched.
#[derive(Debug)]
pub struct Watch<S> {
    io: S,
    scanner: Scanner,
    verdicts: Verdicts,
    /// Rewritten bytes that did not fit the caller's buffer, handed over before any read.
    queued: Vec<u8>,
    /// How much of `queued` has been handed over.
    handed: usize,
    head_timeout: Duration,
    /// Runs while an incomplete head is held back; the connection ends when it fires.
    head_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watch<S> {
    /// Reads into `buf` and lets the scanner edit what was read: usually nothing (no copy),
    /// otherwise a head held back until it is complete, or a refused head's request line.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(rest) = this.queued.get(this.handed..).filter(|r| !r.is_empty()) {
                let n = rest.len().min(buf.remaining());
                buf.put_slice(rest.get(..n).unwrap_or_default());
                this.handed += n;
                if this.handed == this.queued.len() {
                    (this.queued, this.handed) = (Vec::new(), 0);
                }
                return Poll::Ready(Ok(()));
            }
            if this.scanner.state == State::Refused {
                // Nothing after a refused head is read: the answer closes the connection.
                return Poll::Pending;
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.io).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return this.poll_head_timer(cx),
            }
            let fresh = buf.filled().get(before..).unwrap_or_default();
            if fresh.is_empty() {
                return Poll::Ready(Ok(())); // end of stream
            }
            let verdicts = &this.verdicts;
            let edit = this.scanner.feed(fresh, &mut |v| verdicts.push(v));
            if !this.scanner.holds_head() {
                this.head_timer = None;
            }
            match edit {
                Edit::Keep => return Poll::Ready(Ok(())),
                // Only shrinks: `n` is at most the number of bytes just read.
                Edit::Truncate(n) => buf.set_filled(before + n),
                Edit::Replace(bytes) => {
                    buf.set_filled(before);
                    (this.queued, this.handed) = (bytes, 0);
                }
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            // Everything read was held back or queued: hand over the queue, or read on
            // (an empty ready read would tell hyper the stream ended).
        }
    }
}

impl<S> Watch<S> {
    /// The socket has nothing more for now: pending, unless an incomplete head has been
    /// held back for longer than `head_timeout` (then the connection ends, as hyper ends
    /// one whose head is late).
    fn poll_head_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.scanner.holds_head() {
            return Poll::Pending;
        }
        let timeout = self.head_timeout;
        let timer = self
            .head_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request head did not arrive within the header read timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Follows an HTTP/1 request stream the way hyper does: a head (ended by an empty line,
/// parsed by httparse like hyper's), then its body (a length, or chunks decoded by the
/// same strict rules), then the next head. A head reaches hyper only once it is complete
/// and judged. Anything hyper would refuse (a head it cannot parse, one too large, a
/// malformed chunk) makes hyper close the connection, so from there on the scanner passes
/// bytes through unread, as it does after the HTTP/2 preface (no HTTP/1 framing follows).
/// After a refused head it passes nothing more.
#[derive(Debug)]
struct Scanner {
    state: State,
    /// The head so far, held back from hyper, when it spans reads.
    head: Vec<u8>,
    /// Where the head's end-of-line search stands.
    eol: Eol,
    max_head: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunk(Chunk),
    /// Not following any more: bytes pass through.
    Done,
    /// A head was refused: no byte after it is passed.
    Refused,
}

/// What becomes of one read's bytes.
#[derive(Debug, PartialEq, Eq)]
enum Edit {
    /// Passed as they are (the usual case: no copy).
    Keep,
    /// Only the first `n` pass; the rest (the start of a head) is held back.
    Truncate(usize),
    /// These bytes pass instead.
    Replace(Vec<u8>),
}

/// Builds a read's [`Edit`]: stays a prefix of the input, without copying, until something
/// is inserted or skipped.
struct Out<'a> {
    data: &'a [u8],
    /// `data[..same]` passes unchanged (while `copy` is `None`).
    same: usize,
    copy: Option<Vec<u8>>,
}

impl<'a> Out<'a> {
    fn new(data: &'a [u8]) -> Self {
        Out {
            data,
            same: 0,
            copy: None,
        }
    }

    fn copy(&mut self) -> &mut Vec<u8> {
        let (data, same) = (self.data, self.same);
        self.copy
            .get_or_insert_with(|| data.get(..same).unwrap_or_default().to_vec())
    }

    /// `data[from..to]` passes.
    fn pass(&mut self, from: usize, to: usize) {
        if self.copy.is_none() && from == self.same {
            self.same = to;
        } else {
            let part = self.data.get(from..to).unwrap_or_default();
            self.copy().extend_from_slice(part);
        }
    }

    /// `bytes` pass here, in place of whatever input was skipped.
    fn put(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.copy().extend_from_slice(bytes);
        }
    }

    fn edit(self) -> Edit {
        match self.copy {
            Some(bytes) => Edit::Replace(bytes),
            None if self.same == self.data.len() => Edit::Keep,
            None => Edit::Truncate(self.same),
        }
    }
}

/// hyper's chunked decoder states (proto/h1/decode.rs), trailers included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Body(u64),
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// Progress towards an empty line: 0 inside a line, 1 after `\n`, 2 after `\n\r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Eol(u8);

impl Scanner {
    fn new(max_head: usize) -> Self {
        Scanner {
            state: State::Head,
            head: Vec::new(),
            eol: Eol(1),
            max_head,
        }
    }

    /// Whether part of a head is held back, waiting for the rest.
    fn holds_head(&self) -> bool {
        self.state == State::Head && !self.head.is_empty()
    }

    /// Judges the heads in one read's bytes, emitting a verdict for each complete one, and
    /// says what of the bytes hyper gets.
    fn feed(&mut self, data: &[u8], emit: &mut dyn FnMut(Result<(), FramingError>)) -> Edit {
        let mut out = Out::new(data);
        let mut at = 0;
        while let Some(rest) = data.get(at..).filter(|r| !r.is_empty()) {
            let used = match self.state {
                State::Done => {
                    out.pass(at, data.len());
                    rest.len()
                }
                State::Refused => rest.len(),
                State::Head => self.head_bytes(rest, at, &mut out, emit),
                State::Length(left) => {
                    // n ≤ rest.len(), so it fits.
                    let n = usize::try_from(left.min(rest.len() as u64)).unwrap_or(rest.len());
                    self.state = match left - n as u64 {
                        0 => State::Head,
                        left => State::Length(left),
                    };
                    out.pass(at, at + n);
                    n
                }
                State::Chunk(c) => {
                    let (used, next) = chunk(c, rest);
                    self.state = next;
                    out.pass(at, at + used);
                    used
                }
            };
            at += used;
        }
        out.edit()
    }

    /// Consumes head bytes (`data`, found at `at` in the read) up to and including the
    /// empty line that ends the head; passes the head once complete and accepted.
    fn head_bytes(
        &mut self,
        data: &[u8],
        at: usize,
        out: &mut Out<'_>,
        emit: &mut dyn FnMut(Result<(), FramingError>),
    ) -> usize {
        let end = self.find_head_end(data);
        let taken = data.get(..end.unwrap_or(data.len())).unwrap_or(data);
        if self.head.len() + taken.len() > self.max_head {
            // hyper answers 431 and closes: it gets everything, nothing more is followed.
            out.put(&std::mem::take(&mut self.head));
            out.pass(at, at + data.len());
            self.state = State::Done;
            return data.len();
        }
        let Some(end) = end else {
            self.head.extend_from_slice(taken);
            return taken.len();
        };
        let held = !self.head.is_empty();
        let parsed = if held {
            self.head.extend_from_slice(taken);
            parse_head(&self.head)
        } else {
            parse_head(taken)
        };
        let whole = |out: &mut Out<'_>, head: &[u8]| {
            if held {
                out.put(head);
            } else {
                out.pass(at, at + end);
            }
        };
        match parsed {
            // Only empty lines so far (both parsers skip them before a request line).
            Parsed::Partial => {
                if !held {
                    self.head.extend_from_slice(taken);
                }
                return end;
            }
            Parsed::Invalid => {
                let head = if held { &self.head[..] } else { taken };
                match request_line_alone(head) {
                    Some(line) => {
                        emit(Err(FramingError::MalformedHead));
                        out.put(&line);
                        self.state = State::Refused;
                    }
                    // Not even a request line: hyper answers its own 400 and closes.
                    None => {
                        whole(out, &self.head);
                        self.state = State::Done;
                    }
                }
            }
            Parsed::Refused(e, request_line) => {
                emit(Err(e));
                out.put(&request_line);
                self.state = State::Refused;
            }
            Parsed::Head(len) => {
                emit(Ok(()));
                whole(out, &self.head);
                self.state = match len {
                    BodyLen::Length(0) => State::Head,
                    BodyLen::Length(n) => State::Length(n),
                    BodyLen::Chunked => State::Chunk(Chunk::Start),
                };
            }
        }
        self.head.clear();
        self.eol = Eol(1);
        end
    }

    /// The index just past the empty line ending a head, if `data` holds it.
    fn find_head_end(&mut self, data: &[u8]) -> Option<usize> {
        for (i, &b) in data.iter().enumerate() {
            self.eol = match (self.eol.0, b) {
                (1 | 2, b'\n') => return Some(i + 1),
                (_, b'\n') => Eol(1),
                (1, b'\r') => Eol(2),
                _ => Eol(0),
            };
        }
        None
    }
}

enum Parsed {
    Partial,
    Invalid,
    /// An accepted head, and where its body ends.
    Head(BodyLen),
    /// A refused head, and its request line alone as a complete head (no body).
    Refused(FramingError, Vec<u8>),
}

/// Parses a complete head as hyper does (httparse, default configuration).
fn parse_head(bytes: &[u8]) -> Parsed {
    let mut few = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut few);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => return judged(&req),
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {}
        Err(_) => return Parsed::Invalid,
    }
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    let mut many = vec![httparse::EMPTY_HEADER; lines];
    let mut req = httparse::Request::new(&mut many);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => judged(&req),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

fn judged(req: &httparse::Request<'_, '_>) -> Parsed {
    // httparse accepts HTTP/1.0 and 1.1 only (the h2 preface fails as a bad version).
    let http11 = req.version == Some(1);
    let headers = req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    match judge(http11, headers) {
        Ok(len) => Parsed::Head(len),
        Err(e) => {
            // A complete parse has both; httparse checked their characters.
            let (method, path) = (req.method.unwrap_or("GET"), req.path.unwrap_or("/"));
            let minor = if http11 { 1 } else { 0 };
            let line = format!("{method} {path} HTTP/1.{minor}\r\n\r\n");
            Parsed::Refused(e, line.into_bytes())
        }
    }
}

/// The first line of a head httparse refused, as a complete head of its own, when that
/// line alone parses (never for the HTTP/2 preface: httparse knows no version 2.0).
fn request_line_alone(head: &[u8]) -> Option<Vec<u8>> {
    // httparse skips empty lines (CRLF or LF) before the request line, nothing else.
    let mut rest = head;
    while let Some(after) = rest
        .strip_prefix(b"\r\n")
        .or_else(|| rest.strip_prefix(b"\n"))
    {
        rest = after;
    }
    let line = rest.get(..rest.iter().position(|&b| b == b'\n')?)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let alone = [line, b"\r\n\r\n"].concat();
    let mut no_headers = [];
    let parsed = httparse::Request::new(&mut no_headers).parse(&alone);
    matches!(parsed, Ok(httparse::Status::Complete(_))).then_some(alone)
}

/// One step of hyper's chunked decoder over `data`: how many bytes it consumed and the
/// next state. A malformed chunk ends the scan, as it ends hyper's connection.
fn chunk(mut c: Chunk, data: &[u8]) -> (usize, State) {
    let mut i = 0;
    while let Some(&b) = data.get(i) {
        if let Chunk::Body(left) = c {
            let n = left.min((data.len() - i) as u64);
            i += usize::try_from(n).unwrap_or(data.len() - i);
            c = if left == n {
                Chunk::BodyCr
            } else {
                Chunk::Body(left - n)
            };
            continue;
        }
        i += 1;
        let hex = char::from(b).to_digit(16).map(u64::from);
        c = match (c, b, hex) {
            (Chunk::Start, _, Some(d)) => Chunk::Size(d),
            (Chunk::Size(n), _, Some(d)) => {
                match n.checked_mul(16).and_then(|n| n.checked_add(d)) {
                    Some(n) => Chunk::Size(n),
                    None => return (i, State::Done),
                }
            }
            (Chunk::Size(n) | Chunk::SizeLws(n), b'\t' | b' ', _) => Chunk::SizeLws(n),
            (Chunk::Size(n) | Chunk::SizeLws(n) | Chunk::Extension(n), b';', _) => {
                Chunk::Extension(n)
            }
            (Chunk::Size(n) | Chunk::SizeLws(n) | Chunk::Extension(n), b'\r', _) => {
                Chunk::SizeLf(n)
            }
            (Chunk::Extension(_), b'\n', _) => return (i, State::Done),
            (Chunk::Extension(n), _, _) => Chunk::Extension(n),
            (Chunk::SizeLf(0), b'\n', _) => Chunk::EndCr,
            (Chunk::SizeLf(n), b'\n', _) => Chunk::Body(n),
            (Chunk::BodyCr, b'\r', _) => Chunk::BodyLf,
            (Chunk::BodyLf, b'\n', _) => Chunk::Start,
            (Chunk::EndCr, b'\r', _) => Chunk::EndLf,
            (Chunk::Trailer, b'\r', _) => Chunk::TrailerLf,
            (Chunk::EndCr | Chunk::Trailer, _, _) => Chunk::Trailer,
            (Chunk::TrailerLf, b'\n', _) => Chunk::EndCr,
            (Chunk::EndLf, b'\n', _) => return (i, State::Head),
            _ => return (i, State::Done),
        };
    }
    (i, State::Chunk(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Verdicts = Vec<Result<(), FramingError>>;

    /// Verdicts for a byte stream fed in pieces of `step` bytes, the final state, and the
    /// bytes hyper would get.
    fn scan(stream: &[u8], step: usize) -> (Verdicts, State, Vec<u8>) {
        let mut s = Scanner::new(16 * 1024);
        let (verdicts, passed) = feed_in_pieces(&mut s, stream, step);
        (verdicts, s.state, passed)
    }

    fn every_split(stream: &[u8]) -> (Verdicts, State, Vec<u8>) {
        let whole = scan(stream, stream.len().max(1));
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(scan(stream, step), whole, "split every {step} bytes");
        }
        whole
    }

    fn judged(raw: &str) -> Result<BodyLen, FramingError> {
        match parse_head(raw.as_bytes()) {
            Parsed::Head(len) => Ok(len),
            Parsed::Refused(e, _) => Err(e),
            Parsed::Partial => panic!("partial: {raw:?}"),
            Parsed::Invalid => panic!("invalid: {raw:?}"),
        }
    }

    #[test]
    fn one_plain_length_or_one_plain_chunked() {
        let ok = [
            ("GET / HTTP/1.1\r\n\r\n", BodyLen::Length(0)),
            (
                "POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n",
                BodyLen::Length(12),
            ),
            (
                "POST / HTTP/1.0\r\ncontent-length:7\r\n\r\n",
                BodyLen::Length(7),
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n",
                BodyLen::Chunked,
            ),
        ];
        for (raw, len) in ok {
            assert_eq!(judged(raw), Ok(len), "{raw:?}");
        }
        let refused = [
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked",
                FramingError::LengthAndChunked,
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5",
                FramingError::LengthAndChunked,
            ),
            (
                "Content-Length: 5\r\nContent-Length: 5",
                FramingError::RepeatedContentLength,
            ),
            (
                "Content-Length: 5\r\nContent-Length: 6",
                FramingError::RepeatedContentLength,
            ),
            ("Content-Length: 5, 5", FramingError::ContentLengthList),
            ("Content-Length: +5", FramingError::InvalidContentLength),
            ("Content-Length: ", FramingError::InvalidContentLength),
            (
                "Content-Length: 99999999999999999999",
                FramingError::InvalidContentLength,
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                FramingError::RepeatedTransferEncoding,
            ),
            (
                "Transfer-Encoding: gzip, chunked",
                FramingError::UnsupportedTransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked, chunked",
                FramingError::UnsupportedTransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked, identity",
                FramingError::UnsupportedTransferEncoding,
            ),
            (
                "Transfer-Encoding: xchunked",
                FramingError::UnsupportedTransferEncoding,
            ),
            (
                "Transfer-Encoding: gzip",
                FramingError::UnsupportedTransferEncoding,
            ),
        ];
        for (headers, e) in refused {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\n{headers}\r\n\r\n");
            assert_eq!(judged(&raw), Err(e), "{raw:?}");
        }
        assert_eq!(
            judged("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(FramingError::TransferEncodingOnHttp10)
        );
    }

    #[test]
    fn follows_keep_alive_bodies_to_the_next_head() {
        let stream = concat!(
            "POST /a HTTP/1.1\r\nContent-Length: 31\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: fake\r\n\r\n", // 31 body bytes that look like a head
            "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "5;ext=1\r\nhello\r\n19 \r\nGET /y HTTP/1.1\r\nA: b\r\n\r\n\r\n0\r\nX-Trailer: t\r\n\r\n",
            "\r\n", // an empty line between requests is skipped
            "GET /c HTTP/1.1\r\n\r\n",
            "POST /d HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /never HTTP/1.1\r\n\r\n",
        );
        let (verdicts, state, passed) = every_split(stream.as_bytes());
        assert_eq!(
            verdicts,
            vec![Ok(()), Ok(()), Ok(()), Err(FramingError::LengthAndChunked)]
        );
        assert_eq!(state, State::Refused);
        // Everything up to the refused head as it came, then its request line alone.
        let refused_at = stream.find("POST /d").unwrap();
        let expected = format!("{}POST /d HTTP/1.1\r\n\r\n", &stream[..refused_at]);
        assert_eq!(String::from_utf8(passed).unwrap(), expected);
    }

    #[test]
    fn accepted_streams_reach_hyper_unchanged_however_they_arrive() {
        let stream = concat!(
            "\r\nGET /a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
            "POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "GET /d HTTP/1.0\r\n\r\n",
        );
        let (verdicts, state, passed) = every_split(stream.as_bytes());
        assert_eq!(verdicts, vec![Ok(()); 4]);
        assert_eq!(state, State::Head);
        assert_eq!(passed, stream.as_bytes());
        // A head still incomplete is held back, whole, until its end arrives.
        let mut s = Scanner::new(1024);
        let mut v = Vec::new();
        assert_eq!(
            s.feed(b"GET /a HTTP/1.1\r\nHo", &mut |x| v.push(x)),
            Edit::Truncate(0)
        );
        assert_eq!(
            s.feed(b"st: x\r\n\r\nGET /b HT", &mut |x| v.push(x)),
            Edit::Replace(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())
        );
        assert_eq!(v, vec![Ok(())]);
    }

    #[test]
    fn a_refused_head_reaches_hyper_as_its_request_line_alone() {
        for (stream, line) in [
            (
                "POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!GET /smuggled HTTP/1.1\r\n\r\n",
                "POST /fhir/Patient HTTP/1.1\r\n\r\n",
            ),
            (
                "PUT /fhir/Observation/1?x=y HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "PUT /fhir/Observation/1?x=y HTTP/1.0\r\n\r\n",
            ),
            // Header sections httparse refuses, after a request line it accepts.
            (
                "\r\nPOST /p HTTP/1.1\r\nContent-Length : 5\r\n\r\nhello",
                "POST /p HTTP/1.1\r\n\r\n",
            ),
            (
                "POST /p HTTP/1.1\nContent-Length: 5\nX-Fold: a\n b\n\nhello",
                "POST /p HTTP/1.1\r\n\r\n",
            ),
        ] {
            let (verdicts, state, passed) = every_split(stream.as_bytes());
            assert_eq!(verdicts.len(), 1, "{stream:?}");
            assert!(verdicts[0].is_err(), "{stream:?}");
            assert_eq!(state, State::Refused);
            assert_eq!(String::from_utf8(passed).unwrap(), line, "{stream:?}");
        }
    }

    #[test]
    fn stops_where_hyper_closes() {
        for stream in [
            // HTTP/2 prior knowledge.
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            // A request line hyper cannot parse.
            "POST /a b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1 \r\n\r\n",
            // A bare LF in a chunk extension, a missing CRLF after chunk data.
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nhello\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n",
            // A chunk size that overflows.
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
        ] {
            let (verdicts, state, passed) = every_split(stream.as_bytes());
            assert!(verdicts.len() <= 1, "{stream:?}: {verdicts:?}");
            assert_eq!(state, State::Done, "{stream:?}");
            // hyper gets it all, to refuse or to read as HTTP/2.
            assert_eq!(passed, stream.as_bytes(), "{stream:?}");
        }
        // A head longer than hyper's buffer.
        let mut s = Scanner::new(100);
        let long = format!("GET / HTTP/1.1\r\nA: {}", "a".repeat(200));
        assert_eq!(
            s.feed(&long.as_bytes()[..60], &mut |_| {}),
            Edit::Truncate(0)
        );
        assert_eq!(
            s.feed(&long.as_bytes()[60..], &mut |_| {}),
            Edit::Replace(long.as_bytes().to_vec())
        );
        assert_eq!(s.state, State::Done);
    }

    #[test]
    fn the_check_needs_a_verdict_on_http1_and_reads_visible_headers() {
        let mut h = HeaderMap::new();
        let ok = Framing(Ok(()));
        assert_eq!(check(Version::HTTP_11, &h, Some(&ok)), Ok(()));
        assert_eq!(
            check(Version::HTTP_11, &h, None),
            Err(FramingError::Unverified)
        );
        assert_eq!(
            check(
                Version::HTTP_11,
                &h,
                Some(&Framing(Err(FramingError::LengthAndChunked)))
            ),
            Err(FramingError::LengthAndChunked)
        );
        assert_eq!(check(Version::HTTP_2, &h, None), Ok(()));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(
            check(Version::HTTP_2, &h, None),
            Err(FramingError::RepeatedContentLength)
        );
    }
}
