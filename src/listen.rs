//! Stage 0, **listen**: accept connections (HTTP/1.1 and h2c on one port, or TLS with ALPN
//! `h2`/`http/1.1`), apply the connection-level limits, and drain gracefully on shutdown.
//!
//! Limits live here because they protect the process, not a request: a connection
//! semaphore (`limits.max_connections`), the header-read deadline (slowloris), the
//! request-head size, HTTP/2 stream and reset-flood caps.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

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

/// Serves `handler` on `listener` until `shutdown` flips to true, then stops accepting
/// and waits up to `grace` for open connections to finish their in-flight requests.
/// With `tls`, every connection is a TLS handshake first (bounded by the header-read
/// timeout), using the acceptor current at that moment.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: &Limits,
    tls: Option<Arc<Tls>>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size(limits.max_header_bytes.max(8192))
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
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();

    loop {
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
        let max_head = limits.max_header_bytes.max(8192);
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = tls.as_ref().and_then(|t| t.acceptor());
        let tls_wanted = tls.is_some();
        tokio::spawn(async move {
            match (tls_wanted, acceptor) {
                // hyper-util reads the first bytes to tell HTTP/1.1 from h2c with no
                // deadline, and hyper's header-read timer only starts after that: a client
                // that connects and sends nothing (or part of the h2 preface) would hold
                // its permit forever.
                (false, _) if !protocol_known(&stream, head_deadline).await => {}
                (false, _) => {
                    connection(&builder, watcher, stream, max_head, handler, peer, false).await
                }
                (true, None) => tracing::warn!("no TLS configuration available; connection closed"),
                (true, Some(acceptor)) => {
                    match tokio::time::timeout(head_deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            connection(&builder, watcher, tls, max_head, handler, peer, true).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

/// Serves one accepted connection (plain or TLS) until it ends or shutdown closes it.
/// Its bytes are read through [`framing::watch`], which judges each HTTP/1 request head
/// (hyper hides ambiguous framing) and tags the request with the verdict.
async fn connection<H, I>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    max_head: usize,
    handler: Arc<H>,
    peer: SocketAddr,
    secure: bool,
) where
    H: Handler,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (io, verdicts) = framing::watch(io, max_head, peer);
    let service = service_fn(move |mut req: Request<Incoming>| {
        let handler = handler.clone();
        if secure {
            req.extensions_mut().insert(TlsConnection);
        }
        verdicts.tag(&mut req);
        async move { Ok::<_, Infallible>(handler.handle(req, peer).await) }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    // hyper's header-read timeout also bounds the wait for the next request on an idle
    // keep-alive connection, so no separate idle timer is needed.
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
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
