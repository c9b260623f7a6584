//! Stage 0, **listen**: accept connections (HTTP/1.1 and h2c on one port, or TLS with ALPN
//! `h2`/`http/1.1`), apply the connection-level limits, and drain gracefully on shutdown.
//!
//! Limits live here because they protect the process, not a request: a connection
//! semaphore (`limits.max_connections`, shared by all workers), the header-read deadline
//! (slowloris), the request-head size, HTTP/2 stream and reset-flood caps, and the idle
//! timeout that closes connections with nothing in flight.
//!
//! **Thread per core.** The public port is served by `workers` threads, each running its
//! own single-threaded event loop on its own `SO_REUSEPORT` socket; the kernel spreads new
//! connections across them. A connection, its requests and the upstream connections they
//! use (one pool per worker, see [`PerWorker`]) then stay on one thread: no work stealing
//! and no cross-thread wake-ups on the request path, which on two small cores cost more
//! than the proxy's own work. Shared state (token caches, policies, metrics) is thread-safe
//! and touched briefly.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::body::ProxyBody;
use crate::config::Limits;
use crate::framing;
use crate::tls::Tls;

/// Request extension set on requests that arrived over TLS (`X-Forwarded-Proto: https`).
#[derive(Clone, Copy, Debug)]
pub struct TlsConnection;

/// A request handler: the proxy pipeline or the admin endpoints.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request; never fails (errors are responses).
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> + Send;
}

thread_local! {
    /// Set once when a worker thread starts; `None` on every other thread.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker thread running the caller (`None` off the worker threads).
pub fn worker_index() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// One value per worker thread plus one for every other thread (an upstream connection
/// pool each), picked by [`worker_index`]. A pool used from two threads would put a
/// connection's task on one thread and its requests on another (the admin port's upstream
/// probe runs on the control thread, for one).
pub struct PerWorker<T> {
    workers: Box<[T]>,
    other: T,
}

impl<T> PerWorker<T> {
    /// `workers` values for the workers and one for other threads, each made by `make`.
    pub fn new(workers: usize, mut make: impl FnMut() -> T) -> Self {
        PerWorker {
            workers: std::iter::repeat_with(&mut make).take(workers).collect(),
            other: make(),
        }
    }

    /// How many workers have a value of their own.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The same layout with each value turned into another by `f`.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> PerWorker<U> {
        PerWorker {
            workers: self.workers.into_vec().into_iter().map(&mut f).collect(),
            other: f(self.other),
        }
    }

    /// Every value: the workers' and the other threads'.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.workers.iter().chain(std::iter::once(&self.other))
    }

    /// The calling thread's value.
    pub fn current(&self) -> &T {
        worker_index()
            .and_then(|i| self.workers.get(i))
            .unwrap_or(&self.other)
    }
}

/// The number of workers `workers` asks for: itself, or with 0 the CPUs this process may
/// use (which honours a cgroup CPU quota, as in a Kubernetes pod with a CPU limit).
pub fn worker_count(workers: usize) -> usize {
    match workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

/// Binds `count` listening sockets to `addr` (with `SO_REUSEPORT` when more than one: the
/// kernel then balances connections across them). With port 0 they all share the port the
/// first one got. Must run inside a tokio runtime.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let count = if cfg!(unix) { count.max(1) } else { 1 };
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        if count > 1 {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        addr = listener.local_addr()?;
        sockets.push(listener.into_std()?);
    }
    Ok(sockets)
}

/// What every connection of one listener shares.
pub struct ServeOptions {
    /// Connection-level limits.
    pub limits: Limits,
    /// Inbound TLS; every connection is a handshake first (bounded by the header-read
    /// timeout), using the acceptor current at that moment.
    pub tls: Option<Arc<Tls>>,
    /// Flips to true to stop accepting and drain.
    pub shutdown: watch::Receiver<bool>,
    /// How long open connections get to finish their in-flight requests after shutdown.
    pub grace: Duration,
}

/// The worker threads serving the public port (see the module docs).
pub struct Workers {
    finished: Vec<oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts one worker thread per socket, each serving `handler` on its own event loop.
    /// Every event loop and listener is made before the first thread starts, so a failure
    /// stops the start-up instead of leaving fewer workers running.
    pub fn start<H: Handler>(
        sockets: Vec<std::net::TcpListener>,
        handler: Arc<H>,
        options: ServeOptions,
    ) -> std::io::Result<Workers> {
        let mut loops = Vec::with_capacity(sockets.len());
        for socket in sockets {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let listener = {
                let _in_runtime = runtime.enter();
                TcpListener::from_std(socket)?
            };
            loops.push((runtime, listener));
        }
        let permits = Arc::new(Semaphore::new(options.limits.max_connections));
        let options = Arc::new(options);
        let mut finished = Vec::with_capacity(loops.len());
        for (index, (runtime, listener)) in loops.into_iter().enumerate() {
            let (done, finished_rx) = oneshot::channel::<()>();
            let (handler, options, permits) = (handler.clone(), options.clone(), permits.clone());
            std::thread::Builder::new()
                .name(format!("smartgate-w{index}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(Some(index)));
                    runtime.block_on(async move {
                        tokio::spawn(heartbeat());
                        serve(listener, handler, &options, permits).await;
                    });
                    drop(done);
                })?;
            finished.push(finished_rx);
        }
        Ok(Workers { finished })
    }

    /// Resolves when every worker has drained after shutdown.
    pub async fn join(self) {
        for worker in self.finished {
            let _ = worker.await;
        }
    }
}

/// Keeps a timer due within half a second on this worker's event loop, forever.
///
/// Why: tokio wakes its event loop through an eventfd whenever a timer is registered that
/// is due before the loop's next planned wake-up. hyper registers a header-read deadline
/// for every request; with only later timers pending (idle timeouts) that costs a
/// `write` and an extra `epoll_wait` per request. With this timer pending, the loop always
/// plans to wake sooner than any new deadline (`limits.header_read_timeout` is seconds),
/// so registering one never interrupts it.
async fn heartbeat() {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Serves `handler` on `listener` until `options.shutdown` flips to true, then stops
/// accepting and waits up to `options.grace` for open connections to finish their
/// in-flight requests. `permits` bounds the open connections.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: &ServeOptions,
    permits: Arc<Semaphore>,
) {
    let limits = &options.limits;
    // hyper's HTTP/1 read-buffer limit (it refuses less than 8 KiB), and so also the
    // longest head the framing watcher holds back: the two must agree.
    let max_head = limits.max_header_bytes.max(8192);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size(max_head)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024))
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let mut shutdown = options.shutdown.clone();
    // Every connection task holds a sender; the drain waits until all are dropped.
    let (open, mut all_closed) = mpsc::channel::<()>(1);

    while !*shutdown.borrow() {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let head_deadline = limits.header_read_timeout.0;
        let conn = Conn {
            builder: builder.clone(),
            handler: handler.clone(),
            peer,
            shutdown: options.shutdown.clone(),
            idle: limits.idle_timeout.0,
            max_head,
            head_deadline,
            _open: open.clone(),
        };
        let acceptor = options.tls.as_ref().and_then(|t| t.acceptor());
        let tls_wanted = options.tls.is_some();
        tokio::spawn(async move {
            match (tls_wanted, acceptor) {
                // hyper-util reads the first bytes to tell HTTP/1.1 from h2c with no
                // deadline, and hyper's header-read timer only starts after that: a client
                // that connects and sends nothing (or part of the h2 preface) would hold
                // its permit forever.
                (false, _) if !protocol_known(&stream, head_deadline).await => {}
                (false, _) => conn.serve(stream, false).await,
                (true, None) => tracing::warn!("no TLS configuration available; connection closed"),
                (true, Some(acceptor)) => {
                    match tokio::time::timeout(head_deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => conn.serve(tls, true).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    drop(open);
    tokio::select! {
        _ = all_closed.recv() => {}
        _ = tokio::time::sleep(options.grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

/// Requests on one connection, shared with its service: what the idle timer looks at.
#[derive(Default)]
struct Activity {
    /// Requests started so far.
    started: AtomicU64,
    /// Requests whose response head is not sent yet.
    in_flight: AtomicUsize,
}

/// A request counted in [`Activity::in_flight`] until dropped: also when its future is
/// (a client reset or disconnect), so an abandoned request never keeps a connection open.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One accepted connection and what serving it needs.
struct Conn<H> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: Arc<H>,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    idle: Duration,
    /// Largest request head, for the framing watcher.
    max_head: usize,
    /// `limits.header_read_timeout`, for the heads the framing watcher holds back.
    head_deadline: Duration,
    /// Dropped when the connection ends (see the drain in [`serve`]).
    _open: mpsc::Sender<()>,
}

impl<H: Handler> Conn<H> {
    /// Serves the connection (plain or TLS) until it ends. Shutdown or `idle` with no
    /// request in flight and none started closes it gracefully: HTTP/1.1 after the current
    /// response, HTTP/2 with GOAWAY, letting open streams finish.
    ///
    /// The bytes are read through [`framing::watch`], which judges each HTTP/1 request
    /// head before hyper reads it and tags the request with the verdict.
    async fn serve<I>(self, io: I, secure: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            builder,
            handler,
            peer,
            mut shutdown,
            idle,
            max_head,
            head_deadline,
            _open,
        } = self;
        let (io, verdicts) = framing::watch(io, max_head, head_deadline, peer);
        let activity = Arc::new(Activity::default());
        let service = service_fn({
            let activity = activity.clone();
            move |mut req: Request<Incoming>| {
                let handler = handler.clone();
                let activity = activity.clone();
                if secure {
                    req.extensions_mut().insert(TlsConnection);
                }
                verdicts.tag(&mut req);
                let in_flight = InFlight::start(activity);
                async move {
                    let resp = handler.handle(req, peer).await;
                    drop(in_flight);
                    Ok::<_, Infallible>(resp)
                }
            }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        let mut seen = 0;
        let mut closing = *shutdown.borrow();
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                biased;
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = &mut idle_timer, if !closing => {
                    let started = activity.started.load(Ordering::Relaxed);
                    if started == seen && activity.in_flight.load(Ordering::Relaxed) == 0 {
                        tracing::debug!(%peer, "idle connection closed");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    } else {
                        seen = started;
                        idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
                    }
                }
            }
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether enough bytes arrived within `deadline` to tell HTTP/1.1 from h2c: the first
/// byte that differs from the h2 preface, or the whole preface. False when the peer
/// closed or stalled.
async fn protocol_known(stream: &tokio::net::TcpStream, deadline: Duration) -> bool {
    let wait = async {
        let mut buf = [0u8; 24];
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let seen = buf.get(..n).unwrap_or_default();
            if n == buf.len() || !H2_PREFACE.starts_with(seen) {
                return true;
            }
            // A partial preface: peek returns at once while no new byte came, so poll gently.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(deadline, wait).await.unwrap_or(false)
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
