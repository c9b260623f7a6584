//! SMART discovery: the `.well-known/smart-configuration` document, checked against SMART App
//! Launch 2.x.
//!
//! Three modes (`smart.mode`):
//! - `serve` (default): the document is built from `smart:` alone and validated at start and
//!   by `smartgate check`, so a proxy never advertises a document a SMART client would reject.
//! - `passthrough`: the upstream already publishes one; it is forwarded as it is.
//! - `merge`: the upstream's document with the keys given in `smart:` overriding it.
//!
//! Upstream documents are fetched at most once per `metadata.cache_ttl` and validated when
//! fetched; problems are logged (the document is the upstream's own statement) and, in
//! `merge` mode, `code_challenge_methods_supported` is always ours: `["S256"]`, never `plain`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::SmartConfig;
use crate::forward::{ClientInfo, Upstream, UpstreamError};
use crate::metadata::TtlCache;

/// Largest upstream SMART configuration read.
const MAX_DOCUMENT: usize = 256 * 1024;

/// Where the SMART configuration document comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmartMode {
    /// Built from `smart:` (the upstream has no SMART of its own).
    #[default]
    Serve,
    /// The upstream's document, forwarded unchanged.
    Passthrough,
    /// The upstream's document, with the keys configured in `smart:` overriding it.
    Merge,
}

/// The SMART App Launch 2.x capability vocabulary
/// (<https://hl7.org/fhir/smart-app-launch/conformance.html#capabilities>).
pub const CAPABILITIES: &[&str] = &[
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-passthrough-banner",
    "context-passthrough-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-standalone-encounter",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "smart-app-state",
];

const DEFAULT_CAPABILITIES: &[&str] = &[
    "launch-standalone",
    "launch-ehr",
    "client-public",
    "client-confidential-symmetric",
    "context-standalone-patient",
    "context-ehr-patient",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
];

const DEFAULT_GRANT_TYPES: &[&str] = &["authorization_code", "client_credentials"];

/// The keys whose values must be absolute http(s) URLs.
const URL_KEYS: &[&str] = &[
    "authorization_endpoint",
    "token_endpoint",
    "issuer",
    "jwks_uri",
    "introspection_endpoint",
    "revocation_endpoint",
    "registration_endpoint",
    "management_endpoint",
    "user_access_brand_bundle",
];

/// The keys configured in `smart:` as a JSON object; in `serve` mode with the defaults.
pub fn configured(s: &SmartConfig) -> Map<String, Value> {
    let serve = s.mode == SmartMode::Serve;
    let mut doc = Map::new();
    let urls = [
        ("authorization_endpoint", &s.authorization_endpoint),
        ("token_endpoint", &s.token_endpoint),
        ("issuer", &s.issuer),
        ("jwks_uri", &s.jwks_uri),
        ("introspection_endpoint", &s.introspection_endpoint),
        ("revocation_endpoint", &s.revocation_endpoint),
    ];
    for (key, value) in urls {
        if let Some(v) = value {
            doc.insert(key.into(), Value::String(v.clone()));
        }
    }
    let list = |given: &Option<Vec<String>>, default: &[&str]| match given {
        Some(v) => Some(json!(v)),
        None if serve && !default.is_empty() => Some(json!(default)),
        None => None,
    };
    for (key, given, default) in [
        ("capabilities", &s.capabilities, DEFAULT_CAPABILITIES),
        (
            "grant_types_supported",
            &s.grant_types_supported,
            DEFAULT_GRANT_TYPES,
        ),
        ("scopes_supported", &s.scopes_supported, &[]),
    ] {
        if let Some(v) = list(given, default) {
            doc.insert(key.into(), v);
        }
    }
    if s.mode != SmartMode::Passthrough {
        doc.insert("code_challenge_methods_supported".into(), json!(["S256"]));
    }
    if serve {
        doc.insert("response_types_supported".into(), json!(["code"]));
        doc.insert(
            "token_endpoint_auth_methods_supported".into(),
            json!([
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt"
            ]),
        );
    }
    doc
}

/// The document served at `.well-known/smart-configuration`.
pub struct Discovery {
    mode: SmartMode,
    ours: Map<String, Value>,
    served: Bytes,
    upstream_cache: TtlCache,
}

/// Why the upstream's SMART configuration could not be served.
#[derive(Debug)]
pub enum DiscoveryError {
    /// The upstream did not answer.
    Upstream(UpstreamError),
    /// The upstream answered with this status (404: it publishes none).
    Status(StatusCode),
    /// The upstream's body is not a JSON object (or too large).
    NotJson,
}

impl Discovery {
    /// From `smart:`; `cache_ttl` bounds how long an upstream document is reused.
    pub fn new(s: &SmartConfig, cache_ttl: Duration) -> Self {
        let ours = configured(s);
        let served = Bytes::from(serde_json::to_vec(&ours).unwrap_or_default());
        Discovery {
            mode: s.mode,
            ours,
            served,
            upstream_cache: TtlCache::new(cache_ttl),
        }
    }

    /// The document to serve now.
    pub async fn document(
        &self,
        upstream: &Upstream,
        client: &ClientInfo,
        request_id: &HeaderValue,
    ) -> Result<Bytes, DiscoveryError> {
        if self.mode == SmartMode::Serve {
            return Ok(self.served.clone());
        }
        if let Some(doc) = self.upstream_cache.get() {
            return Ok(doc);
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let req = upstream
            .request(
                Method::GET,
                ".well-known/smart-configuration",
                &headers,
                client,
                request_id,
                crate::body::empty(),
            )
            .map_err(DiscoveryError::Upstream)?;
        let resp = upstream.send(req).await.map_err(DiscoveryError::Upstream)?;
        if resp.status() != StatusCode::OK {
            return Err(DiscoveryError::Status(resp.status()));
        }
        let raw = Limited::new(resp.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|_| DiscoveryError::NotJson)?
            .to_bytes();
        let theirs: Map<String, Value> =
            serde_json::from_slice(&raw).map_err(|_| DiscoveryError::NotJson)?;
        let (doc, bytes) = match self.mode {
            SmartMode::Merge => {
                let merged = merge(theirs, &self.ours);
                let bytes = Bytes::from(serde_json::to_vec(&merged).unwrap_or_default());
                (merged, bytes)
            }
            _ => (theirs, raw),
        };
        for (key, problem) in validate_document(&doc) {
            tracing::warn!(
                key,
                problem,
                "the upstream SMART configuration does not conform to SMART App Launch 2.x"
            );
        }
        self.upstream_cache.put(bytes.clone());
        Ok(bytes)
    }
}

/// `upstream` with `ours` laid over it, key by key.
pub fn merge(upstream: Map<String, Value>, ours: &Map<String, Value>) -> Map<String, Value> {
    let mut out = upstream;
    for (k, v) in ours {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Problems of `smart:` for `smartgate check` and start-up: `(key, message)`.
pub fn validate_config(s: &SmartConfig) -> Vec<(String, String)> {
    let doc = configured(s);
    match s.mode {
        SmartMode::Serve => validate_document(&doc),
        SmartMode::Merge => validate_document(&doc)
            .into_iter()
            // A partial document is completed by the upstream's at run time.
            .filter(|(_, m)| m != REQUIRED)
            .collect(),
        SmartMode::Passthrough => {
            if doc.is_empty() {
                Vec::new()
            } else {
                vec![(
                    "mode".into(),
                    "passthrough forwards the upstream's document unchanged: remove the other smart keys or use merge".into(),
                )]
            }
        }
    }
}

const REQUIRED: &str = "is required";

/// Checks a SMART configuration document against SMART App Launch 2.x: required fields,
/// absolute URLs, the capability vocabulary, PKCE `S256` and never `plain`, an authorize
/// endpoint for launches, `issuer` + `jwks_uri` exactly when `sso-openid-connect`.
pub fn validate_document(doc: &Map<String, Value>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut problem = |key: &str, msg: &str| out.push((key.to_owned(), msg.to_owned()));
    for key in ["token_endpoint"] {
        if !doc.contains_key(key) {
            problem(key, REQUIRED);
        }
    }
    for key in URL_KEYS {
        match doc.get(*key) {
            None => {}
            Some(Value::String(u)) if is_absolute_url(u) => {}
            Some(_) => problem(key, "must be an absolute http(s) URL"),
        }
    }
    let strings = |key: &str| -> Option<Result<Vec<&str>, ()>> {
        doc.get(key).map(|v| {
            v.as_array()
                .ok_or(())?
                .iter()
                .map(|s| s.as_str().ok_or(()))
                .collect()
        })
    };
    let capabilities = match strings("capabilities") {
        None => {
            problem("capabilities", REQUIRED);
            Vec::new()
        }
        Some(Err(())) => {
            problem("capabilities", "must be a list of strings");
            Vec::new()
        }
        Some(Ok(c)) => c,
    };
    for c in &capabilities {
        if !CAPABILITIES.contains(c) {
            problem(
                "capabilities",
                &format!("`{c}` is not a SMART App Launch 2.x capability"),
            );
        }
    }
    match strings("grant_types_supported") {
        None => problem("grant_types_supported", REQUIRED),
        Some(Err(())) => problem("grant_types_supported", "must be a list of strings"),
        Some(Ok(g)) if g.is_empty() => problem("grant_types_supported", "must not be empty"),
        Some(Ok(_)) => {}
    }
    match strings("code_challenge_methods_supported") {
        None => problem("code_challenge_methods_supported", REQUIRED),
        Some(Err(())) => problem(
            "code_challenge_methods_supported",
            "must be a list of strings",
        ),
        Some(Ok(m)) => {
            if !m.contains(&"S256") {
                problem("code_challenge_methods_supported", "must include S256");
            }
            if m.contains(&"plain") {
                problem(
                    "code_challenge_methods_supported",
                    "must never include plain",
                );
            }
        }
    }
    let launches = capabilities.iter().any(|c| c.starts_with("launch-"));
    if launches && !doc.contains_key("authorization_endpoint") {
        problem(
            "authorization_endpoint",
            "is required with launch-ehr or launch-standalone",
        );
    }
    let sso = capabilities.contains(&"sso-openid-connect");
    for key in ["issuer", "jwks_uri"] {
        match (sso, doc.contains_key(key)) {
            (true, false) => problem(key, "is required with sso-openid-connect"),
            (false, true) => problem(key, "is only allowed with sso-openid-connect"),
            _ => {}
        }
    }
    out
}

/// An absolute `http(s)://host…` URL without a fragment.
fn is_absolute_url(u: &str) -> bool {
    let Ok(uri) = u.parse::<http::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some_and(|a| !a.host().is_empty())
        && !u.contains('#')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(f: impl FnOnce(&mut SmartConfig)) -> Vec<(String, String)> {
        let mut s = SmartConfig {
            authorization_endpoint: Some("https://as.example/authorize".into()),
            token_endpoint: Some("https://as.example/token".into()),
            ..SmartConfig::default()
        };
        f(&mut s);
        validate_config(&s)
    }

    fn keys(p: &[(String, String)]) -> Vec<&str> {
        p.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn defaults_make_a_valid_document() {
        assert_eq!(serve(|_| {}), Vec::<(String, String)>::new());
        let doc = configured(&SmartConfig {
            token_endpoint: Some("https://t/x".into()),
            ..SmartConfig::default()
        });
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert!(doc["capabilities"].as_array().unwrap().len() > 5);
    }

    #[test]
    fn required_fields_and_urls() {
        let p = serve(|s| {
            s.token_endpoint = None;
            s.authorization_endpoint = Some("/authorize".into());
        });
        assert_eq!(keys(&p), ["token_endpoint", "authorization_endpoint"]);
        let p = serve(|s| s.authorization_endpoint = None);
        assert_eq!(p[0].1, "is required with launch-ehr or launch-standalone");
        let p = serve(|s| s.grant_types_supported = Some(vec![]));
        assert_eq!(keys(&p), ["grant_types_supported"]);
    }

    #[test]
    fn capability_vocabulary_and_sso() {
        let p = serve(|s| s.capabilities = Some(vec!["launch-standalone".into(), "sso".into()]));
        assert_eq!(p[0].1, "`sso` is not a SMART App Launch 2.x capability");
        let p = serve(|s| {
            s.capabilities = Some(vec![
                "launch-standalone".into(),
                "sso-openid-connect".into(),
            ])
        });
        assert_eq!(keys(&p), ["issuer", "jwks_uri"]);
        let p = serve(|s| s.issuer = Some("https://as.example".into()));
        assert_eq!(p[0].1, "is only allowed with sso-openid-connect");
    }

    #[test]
    fn pkce_must_be_s256_never_plain() {
        let mut doc = configured(&SmartConfig {
            token_endpoint: Some("https://t/x".into()),
            authorization_endpoint: Some("https://t/a".into()),
            ..SmartConfig::default()
        });
        doc.insert("code_challenge_methods_supported".into(), json!(["plain"]));
        let p = validate_document(&doc);
        assert_eq!(
            p.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(),
            ["must include S256", "must never include plain"]
        );
    }

    #[test]
    fn merge_overrides_and_forces_s256() {
        let ours = configured(&SmartConfig {
            mode: SmartMode::Merge,
            token_endpoint: Some("https://ours/token".into()),
            ..SmartConfig::default()
        });
        assert!(
            !ours.contains_key("capabilities"),
            "no defaults in merge mode"
        );
        let upstream = json!({"token_endpoint": "https://theirs/token", "capabilities": ["launch-ehr"],
            "code_challenge_methods_supported": ["plain", "S256"], "authorization_endpoint": "https://theirs/a",
            "grant_types_supported": ["authorization_code"]});
        let merged = merge(upstream.as_object().unwrap().clone(), &ours);
        assert_eq!(merged["token_endpoint"], "https://ours/token");
        assert_eq!(merged["capabilities"], json!(["launch-ehr"]));
        assert_eq!(merged["code_challenge_methods_supported"], json!(["S256"]));
        assert!(validate_document(&merged).is_empty());
        // A partial merge configuration is not missing anything at check time.
        assert!(
            validate_config(&SmartConfig {
                mode: SmartMode::Merge,
                ..SmartConfig::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn passthrough_takes_no_other_keys() {
        let p = validate_config(&SmartConfig {
            mode: SmartMode::Passthrough,
            token_endpoint: Some("https://t/x".into()),
            ..SmartConfig::default()
        });
        assert_eq!(keys(&p), ["mode"]);
    }
}
