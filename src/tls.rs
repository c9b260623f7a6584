//! Inbound TLS for the public listener: rustls with the aws-lc-rs provider only, TLS 1.2/1.3
//! from PEM files, optional client-certificate authentication, ALPN `h2` and `http/1.1`.
//!
//! Certificates are rotated without a restart: the files are polled every
//! `tls.reload_interval` (mtime and size), and when they change a new `ServerConfig` is built
//! and swapped in for the next handshakes. Connections already open keep their session. A
//! change that does not load (a half-written pair, a key that does not match) keeps the old
//! configuration, is logged, counted in `smartgate_tls_reloads_total{result="error"}`, and
//! retried at the next poll.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;

use crate::duration::HumanDuration;
use crate::metrics::ResultLabels;
use crate::net::NetError;

/// `tls.min_version`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    V12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V13,
}

/// `tls:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA bundle (PEM) for client certificates: when set, every client must present one
    /// that chains to it (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Lowest protocol version accepted.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// How often the files are checked for changes.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: HumanDuration,
}

fn default_reload_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl TlsConfig {
    /// Problems for `smartgate check`: `(key, message)`. The files are loaded, so a bad
    /// certificate or a key that does not match is found before the proxy starts.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.reload_interval.0 < Duration::from_millis(100) {
            out.push(("reload_interval".into(), "must be at least 100ms".into()));
        }
        if let Err(e) = server_config(self) {
            out.push((e.key().into(), e.to_string()));
        }
        out
    }

    fn files(&self) -> Vec<&Path> {
        let mut f = vec![self.cert_file.as_path(), self.key_file.as_path()];
        if let Some(ca) = &self.client_ca_file {
            f.push(ca);
        }
        f
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug)]
pub enum TlsError {
    /// The certificate chain file.
    Cert(NetError),
    /// The private key file.
    Key(PathBuf, String),
    /// The client CA file.
    ClientCa(String),
    /// rustls refused the combination (e.g. the key does not match the certificate).
    Rustls(rustls::Error),
}

impl TlsError {
    /// The configuration key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Cert(_) | TlsError::Rustls(_) => "cert_file",
            TlsError::Key(..) => "key_file",
            TlsError::ClientCa(_) => "client_ca_file",
        }
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Cert(e) => write!(f, "{e}"),
            TlsError::Key(p, e) => write!(f, "{}: {e}", p.display()),
            TlsError::ClientCa(e) => write!(f, "{e}"),
            TlsError::Rustls(e) => write!(f, "certificate and key do not work together: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Builds the rustls server configuration from the PEM files.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let chain = crate::net::read_certs(&cfg.cert_file).map_err(TlsError::Cert)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .map_err(|e| TlsError::Key(cfg.key_file.clone(), e.to_string()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(TlsError::Rustls)?;
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in crate::net::read_certs(ca).map_err(|e| TlsError::ClientCa(e.to_string()))? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::ClientCa(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Rustls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the files looked like when last loaded: (mtime, size) per file.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(cfg: &TlsConfig) -> Stamp {
    cfg.files()
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// The acceptor of the public listener, swapped when the certificate files change.
pub struct Tls {
    cfg: TlsConfig,
    current: RwLock<tokio_rustls::TlsAcceptor>,
    seen: RwLock<Stamp>,
    reloads: Family<ResultLabels, Counter>,
}

impl Tls {
    /// Loads the files once; `reloads` counts later reloads by result.
    pub fn new(
        cfg: &TlsConfig,
        reloads: Family<ResultLabels, Counter>,
    ) -> Result<Arc<Self>, TlsError> {
        let seen = stamp(cfg);
        let config = server_config(cfg)?;
        Ok(Arc::new(Tls {
            cfg: cfg.clone(),
            current: RwLock::new(tokio_rustls::TlsAcceptor::from(config)),
            seen: RwLock::new(seen),
            reloads,
        }))
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.current.read().ok().map(|a| a.clone())
    }

    /// Reloads when the files changed since the last successful load; `Some(result)` when
    /// a reload was attempted.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = stamp(&self.cfg);
        if self.seen.read().ok().is_some_and(|s| *s == now) {
            return None;
        }
        let result = server_config(&self.cfg).map(|config| {
            if let Ok(mut cur) = self.current.write() {
                *cur = tokio_rustls::TlsAcceptor::from(config);
            }
            if let Ok(mut s) = self.seen.write() {
                *s = now;
            }
        });
        let label = if result.is_ok() { "ok" } else { "error" };
        self.reloads
            .get_or_create(&ResultLabels { result: label })
            .inc();
        match &result {
            Ok(()) => {
                tracing::info!(cert = %self.cfg.cert_file.display(), "TLS certificate reloaded")
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate changed but does not load; keeping the previous one")
            }
        }
        Some(result)
    }

    /// Polls the files every `reload_interval` until the `Tls` is dropped.
    pub fn spawn_reload(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = self.cfg.reload_interval.0;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(tls) = weak.upgrade() else { return };
                let _ = tls.reload_if_changed();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_key() {
        let cfg = TlsConfig {
            cert_file: "/nonexistent/cert.pem".into(),
            key_file: "/nonexistent/key.pem".into(),
            client_ca_file: None,
            min_version: TlsVersion::V13,
            reload_interval: HumanDuration(Duration::from_millis(10)),
        };
        let p = cfg.validate();
        assert_eq!(p[0].0, "reload_interval");
        assert_eq!(p[1].0, "cert_file");
        assert!(p[1].1.contains("/nonexistent/cert.pem"), "{}", p[1].1);
    }
}
