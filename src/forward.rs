//! Stage 4, **forward**: build the upstream request from what was authorized, send it on
//! a pooled connection, and map transport failures to 502/504.
//!
//! Header hygiene lives here because it is the one place that decides what crosses the
//! boundary: hop-by-hop headers, the app's `Authorization`, cookies and client-sent
//! `X-Forwarded-*`/`Forwarded` never go upstream; the proxy sets its own.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::body::ProxyBody;
use crate::config::BaseUrl;
use crate::credentials::{Credentials, CredentialsError};
use crate::listen::PerWorker;
use crate::net::HttpClient;

/// Headers that describe one hop, never the message (RFC 9110 §7.6.1), plus the ones
/// the proxy owns.
const STRIPPED_REQUEST: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "content-length",
];

const STRIPPED_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "set-cookie",
];

/// Where the request came from, for `X-Forwarded-*`.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// The peer address.
    pub peer: std::net::SocketAddr,
    /// `http` or `https` as the client connected.
    pub proto: &'static str,
    /// The `Host` the client used, if any.
    pub host: Option<HeaderValue>,
}

/// The upstream FHIR server: its base, the pooled clients, and the credentials to present.
pub struct Upstream {
    base: BaseUrl,
    /// One pool per worker, so a request and the upstream connection it uses share a thread.
    pools: PerWorker<Pool>,
    /// Each pool's share of `upstream.max_connections`.
    per_pool: usize,
    /// Requests waiting for a slot, over all pools (only touched when one has to wait).
    waiting: AtomicUsize,
    timeout: Duration,
    credentials: Credentials,
}

/// One worker's upstream connections.
struct Pool {
    client: HttpClient,
    /// A request holds one slot from before its connection is checked out until its
    /// response body ends, so the pool never has more connections busy than `per_pool`.
    /// (It may open a few more while a finished connection is on its way back to the pool;
    /// those idle out.)
    slots: Arc<Semaphore>,
}

/// Why the upstream could not answer.
#[derive(Debug)]
pub enum UpstreamError {
    /// Connection refused, reset, DNS, TLS: 502.
    Unavailable(String),
    /// No response head within `upstream.timeout`: 504.
    Timeout,
    /// The request could not be built (a bug or an unencodable target): 500.
    BadRequest(String),
    /// The client's streamed body went past `limits.max_body_bytes` while being sent: 413.
    BodyTooLarge,
    /// No credentials for the upstream could be had (`upstream.auth`): 502, and nothing
    /// was sent.
    Credentials(CredentialsError),
}

impl Upstream {
    /// `credentials` (from `upstream.auth`) go on every request [`Self::send`] sends;
    /// `max_connections` is split evenly over the pools (at least one slot each).
    pub fn new(
        base: BaseUrl,
        clients: PerWorker<HttpClient>,
        max_connections: usize,
        timeout: Duration,
        credentials: Credentials,
    ) -> Self {
        let per_pool = max_connections.div_ceil(clients.workers().max(1)).max(1);
        let pools = clients.map(|client| Pool {
            client,
            slots: Arc::new(Semaphore::new(per_pool)),
        });
        Upstream {
            base,
            pools,
            per_pool,
            waiting: AtomicUsize::new(0),
            timeout,
            credentials,
        }
    }

    /// The upstream's base URL (for link rewriting and reference resolution).
    pub fn base(&self) -> &BaseUrl {
        &self.base
    }

    /// The absolute upstream URI for a target relative to the FHIR base
    /// (`Patient/1?x=y`, or empty for the base itself).
    pub fn uri(&self, target: &str) -> Result<Uri, UpstreamError> {
        let sep = if target.is_empty() || target.starts_with('?') {
            ""
        } else {
            "/"
        };
        format!("{}{}{sep}{target}", self.base.origin, self.base.path)
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamError::BadRequest(e.to_string()))
    }

    /// Builds the upstream request: method, target, cleaned headers, proxy headers.
    pub fn request(
        &self,
        method: Method,
        target: &str,
        inbound: &HeaderMap,
        client: &ClientInfo,
        request_id: &HeaderValue,
        body: ProxyBody,
    ) -> Result<Request<ProxyBody>, UpstreamError> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = self.uri(target)?;
        // An HTTP/2 client must not turn into an HTTP/2 request to an HTTP/1.1 upstream.
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        copy_end_to_end(inbound, headers, STRIPPED_REQUEST);
        // W3C trace context passes through like any end-to-end header, unless this hop
        // exports its own span: then it is replaced by that span's (feature `otel`).
        crate::telemetry::inject(headers);
        headers.insert(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_str(&client.peer.ip().to_string())
                .map_err(|e| UpstreamError::BadRequest(e.to_string()))?,
        );
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static(client.proto),
        );
        if let Some(host) = &client.host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
        }
        headers.insert(HeaderName::from_static("x-request-id"), request_id.clone());
        Ok(req)
    }

    /// Sends `req` with the proxy's upstream credentials (the one place they are added, so
    /// no request leaves without them: if they cannot be had, nothing is sent); a free
    /// connection slot and then the response head must arrive within the configured
    /// timeout. The body streams afterwards, holding the slot. Getting a token is bounded
    /// by its own timeout, not this one: a slow token endpoint is not a slow FHIR server.
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let used = self
            .credentials
            .header()
            .await
            .map_err(UpstreamError::Credentials)?;
        if let Some(value) = &used {
            req.headers_mut()
                .insert(header::AUTHORIZATION, value.clone());
        }
        let resp = self.send_as_is(req).await;
        if let (Ok(r), Some(value)) = (&resp, &used)
            && r.status() == http::StatusCode::UNAUTHORIZED
        {
            self.credentials.rejected(value);
        }
        resp
    }

    async fn send_as_is(
        &self,
        req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let call = async {
            let pool = self.pools.current();
            let slot = self.slot(pool).await?;
            match pool.client.request(req).await {
                Ok(resp) => Ok(resp.map(|body| UpstreamBody {
                    body,
                    slot: Some(slot),
                })),
                Err(e) if caused_by::<http_body_util::LengthLimitError>(&e) => {
                    Err(UpstreamError::BodyTooLarge)
                }
                Err(e) if is_timeout(&e) => Err(UpstreamError::Timeout),
                Err(e) => Err(UpstreamError::Unavailable(e.to_string())),
            }
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }
}

impl Upstream {
    /// A connection slot of `pool`, waiting for one when all are busy.
    async fn slot(&self, pool: &Pool) -> Result<OwnedSemaphorePermit, UpstreamError> {
        let closed = || UpstreamError::Unavailable("connection slots closed".into());
        match pool.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok(slot),
            Err(TryAcquireError::Closed) => Err(closed()),
            Err(TryAcquireError::NoPermits) => {
                let _waiting = Waiting::start(&self.waiting);
                pool.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| closed())
            }
        }
    }

    /// Busy connection slots and requests waiting for one, for the metrics.
    pub fn slot_use(&self) -> SlotUse {
        SlotUse {
            busy: self
                .pools
                .all()
                .map(|pool| self.per_pool.saturating_sub(pool.slots.available_permits()))
                .sum(),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }
}

/// How the upstream connection slots are used right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotUse {
    /// Requests holding a slot (sending, or reading the response).
    pub busy: usize,
    /// Requests waiting for a slot.
    pub waiting: usize,
}

/// One request counted in `Upstream::waiting` until dropped (also when its wait is cut
/// short by the timeout).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream response body that gives its connection slot back when it ends (or is
/// dropped unfinished).
pub struct UpstreamBody {
    body: Incoming,
    slot: Option<OwnedSemaphorePermit>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.slot = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether `E` is anywhere in the source chain of `e`.
fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Asks the upstream to refuse search parameters it does not support instead of
/// ignoring them (`Prefer: handling=strict`, FHIR R4 search §3.1.1.4), so a narrowing it
/// cannot apply fails loudly rather than turning into a scan of every patient. The
/// client's other preferences (`return=…`, `respond-async`) are kept; a `handling`
/// preference of its own is replaced, since the narrowing is the proxy's, not the app's.
pub fn prefer_strict(headers: &mut HeaderMap) {
    let mut kept: Vec<String> = headers
        .get_all(header::HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| {
            let name = p.split(['=', ';']).next().unwrap_or("").trim();
            !p.is_empty() && !name.eq_ignore_ascii_case("handling")
        })
        .map(str::to_owned)
        .collect();
    kept.push("handling=strict".to_owned());
    let value = HeaderValue::from_str(&kept.join(", "))
        .unwrap_or(HeaderValue::from_static("handling=strict"));
    headers.insert(header::HeaderName::from_static("prefer"), value);
}

/// Copies headers except the stripped ones and any named in `Connection`.
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap, stripped: &[&str]) {
    let named_by_connection: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        let n = name.as_str();
        if stripped.contains(&n) || named_by_connection.iter().any(|c| c == n) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// Response headers that may go back to the client: hop-by-hop and cookies removed,
/// `Location`/`Content-Location` moved from the upstream base to the public one.
pub fn response_headers(from: &HeaderMap, upstream_base: &str, public_base: &str) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(from.len());
    copy_end_to_end(from, &mut out, STRIPPED_RESPONSE);
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        if let Some(v) = out.get(&name).and_then(|v| v.to_str().ok())
            && let Some(rest) = v.strip_prefix(upstream_base)
            && let Ok(new) = HeaderValue::from_str(&format!("{public_base}{rest}"))
        {
            out.insert(name, new);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_credentials_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer secret"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("accept", HeaderValue::from_static("application/fhir+json"));
        h.insert("cookie", HeaderValue::from_static("s=1"));
        let mut out = HeaderMap::new();
        copy_end_to_end(&h, &mut out, STRIPPED_REQUEST);
        assert_eq!(out.len(), 1);
        assert!(out.contains_key("accept"));
    }

    #[test]
    fn prefer_strict_keeps_other_preferences_and_replaces_handling() {
        let mut h = HeaderMap::new();
        prefer_strict(&mut h);
        assert_eq!(h["prefer"], "handling=strict");
        let mut h = HeaderMap::new();
        h.append(
            "prefer",
            HeaderValue::from_static("return=minimal, handling=lenient"),
        );
        h.append("prefer", HeaderValue::from_static("respond-async"));
        prefer_strict(&mut h);
        assert_eq!(h.get_all("prefer").iter().count(), 1);
        assert_eq!(
            h["prefer"],
            "return=minimal, respond-async, handling=strict"
        );
    }

    #[test]
    fn location_is_rewritten() {
        let mut h = HeaderMap::new();
        h.insert(
            "location",
            HeaderValue::from_static("http://up:8080/fhir/Patient/1/_history/2"),
        );
        h.insert("set-cookie", HeaderValue::from_static("x=1"));
        let out = response_headers(&h, "http://up:8080/fhir", "https://gw/fhir");
        assert_eq!(out["location"], "https://gw/fhir/Patient/1/_history/2");
        assert!(!out.contains_key("set-cookie"));
    }
}
