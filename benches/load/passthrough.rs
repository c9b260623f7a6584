//! A pass-through reverse proxy built from smartgate's own parts with none of its checks:
//! the floor that the load benchmark (`benches/load`, variant `hyper`) sets beside
//! smartgate, nginx and the bare upstream. It answers "what does the HTTP stack alone cost
//! here?", so that the rest of smartgate's cost per request can be told apart. Not a
//! product: no authentication, no limits, no filtering.
//!
//! ```text
//! cargo run --release --example passthrough -- 127.0.0.1:8081 http://127.0.0.1:8080 /fhir
//! ```
//!
//! Same shape as `smartgate serve`: one single-threaded tokio loop per CPU, each accepting
//! on its own `SO_REUSEPORT` socket ([`smartgate::listen::bind`]), hyper's HTTP/1 server,
//! one pooled upstream client per loop ([`smartgate::net::client`]) and the same allocator.
//! It strips the prefix from the path, drops `Authorization` and forwards the rest.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use smartgate::body::{self, ProxyBody};
use smartgate::net::{ClientOptions, HttpClient};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: passthrough LISTEN_ADDR UPSTREAM_URL [PREFIX]".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let route = Arc::new(Route {
        upstream: upstream.trim_end_matches('/').to_owned(),
        prefix: args.next().unwrap_or_default(),
    });
    let workers = smartgate::listen::worker_count(0);
    let sockets = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async { smartgate::listen::bind(listen, workers) })?;
    let threads: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let route = route.clone();
            std::thread::spawn(move || worker(socket, route))
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a worker panicked")??;
    }
    Ok(())
}

/// Where requests go: `upstream` + the path without `prefix`.
struct Route {
    upstream: String,
    prefix: String,
}

impl Route {
    fn target(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        let rest = pq.strip_prefix(self.prefix.as_str()).unwrap_or(pq);
        Ok(format!("{}{rest}", self.upstream).parse()?)
    }
}

/// One event loop: accepts on its own socket and serves each connection in a task.
fn worker(socket: std::net::TcpListener, route: Arc<Route>) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(socket)?;
        let client = smartgate::net::client(&ClientOptions::default())?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let (client, route) = (client.clone(), route.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req| forward(&client, &route, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn forward(
    client: &HttpClient,
    route: &Route,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (mut parts, incoming) = req.into_parts();
    let Ok(uri) = route.target(&parts.uri) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    parts.uri = uri;
    parts.headers.remove(http::header::AUTHORIZATION);
    parts.headers.remove(http::header::HOST);
    let req = Request::from_parts(parts, body::stream(incoming));
    Ok(match client.request(req).await {
        Ok(resp) => resp.map(body::stream),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    })
}

fn status(code: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = code;
    resp
}
