//! The admin listener: `/healthz` (alive), `/readyz` (ready to serve), `/metrics`.
//! Never on the public port, never authenticated: bind it where only the platform reaches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::authenticate::Authenticator;
use crate::body::{self, ProxyBody};
use crate::forward::{ClientInfo, Upstream};
use crate::listen::Handler;
use crate::metrics::Metrics;

/// What the admin endpoints look at.
pub struct Admin {
    /// Metrics to export.
    pub metrics: Arc<Metrics>,
    /// Token checking (JWKS loaded?).
    pub auth: Arc<Authenticator>,
    /// The upstream (reachable?).
    pub upstream: Arc<Upstream>,
}

impl Handler for Admin {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        _peer: SocketAddr,
    ) -> Response<ProxyBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => match self.readiness().await {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            "/metrics" => {
                let mut resp = text(StatusCode::OK, self.metrics.encode());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

impl Admin {
    /// Ready when the token keys are loaded and the upstream answers HTTP at all.
    async fn readiness(&self) -> Result<(), String> {
        self.auth.readiness()?;
        let client = ClientInfo {
            peer: SocketAddr::from(([127, 0, 0, 1], 0)),
            proto: "http",
            host: None,
        };
        let req = self
            .upstream
            .request(
                Method::GET,
                "metadata",
                &http::HeaderMap::new(),
                &client,
                &HeaderValue::from_static("readyz"),
                body::empty(),
            )
            .map_err(|e| format!("upstream: {e:?}"))?;
        match tokio::time::timeout(Duration::from_secs(2), self.upstream.send(req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("upstream unreachable: {e:?}")),
            Err(_) => Err("upstream did not answer within 2s".into()),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
