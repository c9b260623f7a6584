//! The shared outbound HTTP client: JWKS, discovery, introspection and the upstream FHIR server
//! all go through one pooled hyper client over rustls (aws-lc-rs provider only).
//!
//! The body type is [`Body`], a boxed body whose error is a boxed error: the forwarder can
//! stream an inbound `hyper::body::Incoming` (`incoming.map_err(Into::into).boxed()`), wrap it
//! in `http_body_util::Limited`, or send a buffered [`full`] body, all through the same client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::listen::PerWorker;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

pub use crate::body::{BodyError as BoxError, ProxyBody as Body};

/// The pooled outbound client (HTTP/1.1 and HTTP/2, `https://` and `http://`).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// How to build the outbound client; every path is a PEM file.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Extra trust anchors (a private CA) on top of the system roots.
    pub extra_ca_file: Option<PathBuf>,
    /// Client certificate chain for mutual TLS (needs `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// Private key for `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Bound on TCP connect, so an unreachable host never hangs a request.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            extra_ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Why the client could not be built or an outbound call failed.
#[derive(Debug)]
pub enum NetError {
    /// A PEM file could not be read or parsed.
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A PEM file that must hold certificates holds none.
    NoCertificates(PathBuf),
    /// A client certificate without key, or a key without certificate.
    IncompleteClientIdentity,
    /// rustls refused the configuration (bad key, bad CA certificate, …).
    Tls(rustls::Error),
    /// The call did not complete (headers and body) within its timeout.
    Timeout(Duration),
    /// Connecting or sending failed.
    Request(hyper_util::client::legacy::Error),
    /// The response body failed or exceeded its size limit.
    Body(BoxError),
}

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetError::Pem { path, reason } => write!(f, "{}: {reason}", path.display()),
            NetError::NoCertificates(path) => {
                write!(f, "{}: no certificate in the PEM file", path.display())
            }
            NetError::IncompleteClientIdentity => {
                f.write_str("a client certificate needs a client key, and the reverse")
            }
            NetError::Tls(e) => write!(f, "TLS configuration: {e}"),
            NetError::Timeout(d) => write!(f, "no complete answer within {}ms", d.as_millis()),
            NetError::Request(e) => write!(f, "request failed: {e}"),
            NetError::Body(e) => write!(f, "response body: {e}"),
        }
    }
}

impl std::error::Error for NetError {}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> NetError {
    NetError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(NetError::NoCertificates(path.to_path_buf()));
    }
    Ok(certs)
}

/// The rustls client configuration: system roots plus the optional extra CA, optional client
/// identity, aws-lc-rs as the only provider (never the process default, see CRATES.md).
pub fn tls_config(opts: &ClientOptions) -> Result<ClientConfig, NetError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system roots are not fatal: a private CA or plain HTTP may be all we need.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(ca) = &opts.extra_ca_file {
        for cert in read_certs(ca)? {
            roots.add(cert).map_err(NetError::Tls)?;
        }
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(NetError::Tls)?
    .with_root_certificates(roots);
    match (&opts.client_cert_file, &opts.client_key_file) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(NetError::Tls)
        }
        _ => Err(NetError::IncompleteClientIdentity),
    }
}

/// Builds the pooled client. TLS is negotiated per URL scheme; ALPN offers h2 and http/1.1.
pub fn client(opts: &ClientOptions) -> Result<HttpClient, NetError> {
    Ok(clients(opts, 0)?.current().clone())
}

/// One client with its own connection pool per worker thread (and one for other threads),
/// sharing one TLS configuration.
pub fn clients(opts: &ClientOptions, workers: usize) -> Result<PerWorker<HttpClient>, NetError> {
    let tls = tls_config(opts)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(opts.connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(PerWorker::new(workers, || {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(opts.pool_idle_timeout)
            .build(https.clone())
    }))
}

/// Sends `req` and reads the whole response body (at most `max_body` bytes), all within
/// `timeout`: for small control-plane calls (JWKS, discovery, introspection), never for
/// proxied traffic.
pub async fn fetch(
    client: &HttpClient,
    req: http::Request<Body>,
    timeout: Duration,
    max_body: usize,
) -> Result<http::Response<Bytes>, NetError> {
    let call = async {
        let resp = client.request(req).await.map_err(NetError::Request)?;
        let (parts, body) = resp.into_parts();
        let bytes = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(NetError::Body)?
            .to_bytes();
        Ok(http::Response::from_parts(parts, bytes))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| NetError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_client_identity_is_refused() {
        let opts = ClientOptions {
            client_cert_file: Some(PathBuf::from("/nonexistent.pem")),
            ..ClientOptions::default()
        };
        assert!(matches!(
            tls_config(&opts),
            Err(NetError::IncompleteClientIdentity)
        ));
    }

    #[test]
    fn missing_ca_file_is_reported_with_its_path() {
        let opts = ClientOptions {
            extra_ca_file: Some(PathBuf::from("/nonexistent-ca.pem")),
            ..ClientOptions::default()
        };
        match tls_config(&opts) {
            Err(NetError::Pem { path, .. }) => {
                assert_eq!(path, PathBuf::from("/nonexistent-ca.pem"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn plain_client_builds_and_times_out_on_a_silent_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accept and never answer.
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let c = client(&ClientOptions::default()).unwrap();
        let req = http::Request::get(format!("http://{addr}/"))
            .body(crate::body::full(Bytes::new()))
            .unwrap();
        let started = std::time::Instant::now();
        let r = fetch(&c, req, Duration::from_millis(200), 1024).await;
        assert!(matches!(r, Err(NetError::Timeout(_))));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
