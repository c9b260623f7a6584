//! Placeholder until the Authentication work lands (replaced on merge).
use hyper_util::client::legacy::{Client, connect::HttpConnector};

use crate::body::ProxyBody;

/// The pooled outbound client.
pub type HttpClient = Client<HttpConnector, ProxyBody>;

/// A plain-HTTP pooled client.
pub fn plain() -> HttpClient {
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(HttpConnector::new())
}
