//! A tiny in-process authorization server: JWKS, OIDC discovery and introspection, with
//! hit counters and knobs for failures and delays.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// What the server answers; change it while tests run.
pub struct State {
    pub jwks: Value,
    pub jwks_status: u16,
    pub jwks_delay: Duration,
    pub cache_control: Option<String>,
    /// token ⇒ introspection answer; unknown tokens are `{"active": false}`.
    pub answers: HashMap<String, Value>,
    pub introspect_status: u16,
    pub introspect_delay: Duration,
    pub last_auth: Option<String>,
    pub last_form: Option<String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            jwks: json!({"keys": []}),
            jwks_status: 200,
            jwks_delay: Duration::ZERO,
            cache_control: None,
            answers: HashMap::new(),
            introspect_status: 200,
            introspect_delay: Duration::ZERO,
            last_auth: None,
            last_form: None,
        }
    }
}

pub struct TestAs {
    pub base: String,
    pub jwks_hits: AtomicUsize,
    pub discovery_hits: AtomicUsize,
    pub introspect_hits: AtomicUsize,
    pub state: Mutex<State>,
}

impl TestAs {
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.base)
    }
    pub fn introspection_uri(&self) -> String {
        format!("{}/introspect", self.base)
    }
    pub fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }
    pub fn introspect_hits(&self) -> usize {
        self.introspect_hits.load(Ordering::SeqCst)
    }
    pub fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
    }
}

fn resp(status: u16, body: String, cache_control: Option<String>) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(cc) = cache_control {
        r = r.header("cache-control", cc);
    }
    r.body(Full::new(Bytes::from(body))).unwrap()
}

fn form_value(form: &str, name: &str) -> Option<String> {
    form.split('&').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8()
                .unwrap()
                .into_owned()
        })
    })
}

async fn handle(
    server: Arc<TestAs>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/.well-known/openid-configuration" => {
            server.discovery_hits.fetch_add(1, Ordering::SeqCst);
            let body = json!({"issuer": server.base, "jwks_uri": server.jwks_uri()});
            Ok(resp(200, body.to_string(), None))
        }
        "/jwks" => {
            server.jwks_hits.fetch_add(1, Ordering::SeqCst);
            let (delay, status, body, cc) = {
                let s = server.state.lock().unwrap();
                (
                    s.jwks_delay,
                    s.jwks_status,
                    s.jwks.to_string(),
                    s.cache_control.clone(),
                )
            };
            tokio::time::sleep(delay).await;
            Ok(resp(status, body, cc))
        }
        "/introspect" => {
            server.introspect_hits.fetch_add(1, Ordering::SeqCst);
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form = String::from_utf8(body.to_vec()).unwrap();
            let token = form_value(&form, "token").unwrap_or_default();
            let (delay, status, answer) = {
                let mut s = server.state.lock().unwrap();
                s.last_auth = auth;
                s.last_form = Some(form);
                (
                    s.introspect_delay,
                    s.introspect_status,
                    s.answers
                        .get(&token)
                        .cloned()
                        .unwrap_or_else(|| json!({"active": false})),
                )
            };
            tokio::time::sleep(delay).await;
            Ok(resp(status, answer.to_string(), None))
        }
        _ => Ok(resp(404, "{}".into(), None)),
    }
}

/// Starts the server on an ephemeral port.
pub async fn start(state: State) -> Arc<TestAs> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(TestAs {
        base: format!("http://{addr}"),
        jwks_hits: AtomicUsize::new(0),
        discovery_hits: AtomicUsize::new(0),
        introspect_hits: AtomicUsize::new(0),
        state: Mutex::new(state),
    });
    let s = Arc::clone(&server);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&s), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    server
}
