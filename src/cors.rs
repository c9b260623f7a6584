//! Cross-origin access for browser SMART apps.
//!
//! Preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are answered by
//! the proxy and never forwarded: 204 when the origin, method and requested headers are all
//! allowed, 403 otherwise. Every other response (discovery, metadata, API answers, errors
//! and 401s included) gets `Access-Control-Allow-Origin` for an allowed origin, plus
//! `Access-Control-Expose-Headers` and `Vary: Origin`; whatever the upstream said about CORS
//! is dropped, because the proxy, not the upstream, decides who may read its answers.
//!
//! Tokens travel in the `Authorization` header, never in cookies, so credentials mode is
//! never allowed and `*` is a reasonable default for SMART apps.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde::Deserialize;

use crate::body::{self, ProxyBody};
use crate::duration::HumanDuration;

/// `cors.allowed_origins`: `"*"` or a list of origins (`https://app.example.org`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Origins {
    /// Must be `"*"`: any origin.
    Any(String),
    /// Exactly these origins (an empty list turns CORS off).
    List(Vec<String>),
}

/// `cors:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Who may call from a browser.
    pub allowed_origins: Origins,
    /// Methods a preflight may ask for.
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for (case-insensitive).
    pub allowed_headers: Vec<String>,
    /// Response headers scripts may read.
    pub expose_headers: Vec<String>,
    /// How long a browser may reuse a preflight answer.
    pub max_age: HumanDuration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        CorsConfig {
            allowed_origins: Origins::Any("*".into()),
            allowed_methods: list(&["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
            allowed_headers: list(&[
                "Authorization",
                "Content-Type",
                "Accept",
                "If-Match",
                "If-None-Match",
                "If-None-Exist",
                "If-Modified-Since",
                "Prefer",
                "X-Request-Id",
            ]),
            expose_headers: list(&[
                "Location",
                "ETag",
                "Content-Location",
                "Last-Modified",
                "X-Request-Id",
                "WWW-Authenticate",
            ]),
            max_age: HumanDuration(std::time::Duration::from_secs(600)),
        }
    }
}

impl CorsConfig {
    /// Problems for `smartgate check`: `(key, message)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match &self.allowed_origins {
            Origins::Any(s) if s == "*" => {}
            Origins::Any(_) => out.push((
                "allowed_origins".into(),
                "must be \"*\" or a list of origins".into(),
            )),
            Origins::List(list) => {
                for o in list {
                    if !is_origin(o) {
                        out.push((
                            "allowed_origins".into(),
                            format!("`{o}` is not an origin (scheme://host[:port], no path)"),
                        ));
                    }
                }
            }
        }
        for m in &self.allowed_methods {
            if http::Method::from_bytes(m.as_bytes()).is_err() || m.to_ascii_uppercase() != *m {
                out.push((
                    "allowed_methods".into(),
                    format!("`{m}` is not an upper-case HTTP method"),
                ));
            }
        }
        for (key, list) in [
            ("allowed_headers", &self.allowed_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            for h in list {
                if HeaderName::from_bytes(h.as_bytes()).is_err() {
                    out.push((key.into(), format!("`{h}` is not a header name")));
                }
            }
        }
        out
    }
}

fn is_origin(o: &str) -> bool {
    let Ok(uri) = o.parse::<http::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some()
        && o.split_once("://")
            .is_some_and(|(_, rest)| !rest.contains(['/', '?', '#']))
}

/// The CORS policy, with its header values rendered once.
#[derive(Debug)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
    methods: Vec<String>,
    headers: Vec<String>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
}

/// Why a preflight was refused (an audit reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreflightRefusal {
    /// No `Origin`, or one not allowed.
    Origin,
    /// The requested method is not allowed.
    Method,
    /// A requested header is not allowed.
    Header,
}

impl PreflightRefusal {
    /// Short code for the audit line.
    pub fn code(self) -> &'static str {
        match self {
            PreflightRefusal::Origin => "cors-origin",
            PreflightRefusal::Method => "cors-method",
            PreflightRefusal::Header => "cors-header",
        }
    }

    /// The 403 answer (browsers only look at the status; the body helps a developer).
    pub fn response(self) -> Response<ProxyBody> {
        let why = match self {
            PreflightRefusal::Origin => "CORS: this origin is not allowed",
            PreflightRefusal::Method => "CORS: this method is not allowed",
            PreflightRefusal::Header => "CORS: a requested header is not allowed",
        };
        crate::outcome::response(StatusCode::FORBIDDEN, "forbidden", why)
    }
}

impl Cors {
    /// Builds the policy from a validated configuration.
    pub fn new(cfg: &CorsConfig) -> Self {
        let join = |v: &[String]| {
            (!v.is_empty())
                .then(|| HeaderValue::from_str(&v.join(", ")).ok())
                .flatten()
        };
        let (any, origins) = match &cfg.allowed_origins {
            Origins::Any(s) => (s == "*", Vec::new()),
            Origins::List(l) => (false, l.iter().map(|o| o.to_ascii_lowercase()).collect()),
        };
        Cors {
            any,
            origins,
            methods: cfg.allowed_methods.clone(),
            headers: cfg
                .allowed_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allow_methods: join(&cfg.allowed_methods),
            allow_headers: join(&cfg.allowed_headers),
            expose: join(&cfg.expose_headers),
            max_age: HeaderValue::from(cfg.max_age.0.as_secs()),
        }
    }

    /// Whether any browser origin is let in (`rest.security.cors` in the CapabilityStatement).
    pub fn enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    /// The `Access-Control-Allow-Origin` value for this `Origin`, if it is allowed.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let o = origin.to_str().ok()?.to_ascii_lowercase();
        self.origins.contains(&o).then(|| origin.clone())
    }

    /// Whether a request is a CORS preflight (then [`Cors::preflight`] answers it).
    pub fn is_preflight(method: &http::Method, headers: &HeaderMap) -> bool {
        method == http::Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Answers a preflight: 204 with the allowed methods, headers and max age, or 403.
    pub fn preflight(&self, headers: &HeaderMap) -> Result<Response<ProxyBody>, PreflightRefusal> {
        if self.allow_origin(headers.get(header::ORIGIN)).is_none() {
            return Err(PreflightRefusal::Origin);
        }
        let method = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !self.methods.iter().any(|m| m == method) {
            return Err(PreflightRefusal::Method);
        }
        let requested = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        for h in requested {
            if !self.headers.contains(&h) {
                return Err(PreflightRefusal::Header);
            }
        }
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        if let Some(v) = &self.allow_methods {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v.clone());
        }
        if let Some(v) = &self.allow_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Ok(resp)
    }

    /// Sets the CORS headers of any response (called once, last) and drops the upstream's.
    pub fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        for h in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            headers.remove(h);
        }
        if !self.enabled() {
            return;
        }
        let varies = headers
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case("origin") || v.trim() == "*");
        if !varies {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(allow) = self.allow_origin(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            if let Some(e) = &self.expose {
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed() -> Cors {
        Cors::new(&CorsConfig {
            allowed_origins: Origins::List(vec!["https://App.example".into()]),
            ..CorsConfig::default()
        })
    }

    fn preflight_headers(origin: &str, method: &str, hdrs: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_str(method).unwrap(),
        );
        if !hdrs.is_empty() {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_str(hdrs).unwrap(),
            );
        }
        h
    }

    #[test]
    fn preflight_allows_and_refuses() {
        let c = listed();
        let ok = c
            .preflight(&preflight_headers(
                "https://app.example",
                "PUT",
                "authorization, Content-Type",
            ))
            .unwrap();
        assert_eq!(ok.status(), 204);
        assert_eq!(ok.headers()[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("Authorization")
        );
        let refusal = |h| c.preflight(&h).map(|_| ()).unwrap_err();
        assert_eq!(
            refusal(preflight_headers("https://evil.example", "GET", "")),
            PreflightRefusal::Origin
        );
        assert_eq!(
            refusal(preflight_headers("https://app.example", "TRACE", "")),
            PreflightRefusal::Method
        );
        assert_eq!(
            refusal(preflight_headers("https://app.example", "GET", "x-evil")),
            PreflightRefusal::Header
        );
    }

    #[test]
    fn apply_replaces_the_upstream_headers() {
        let c = listed();
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        c.apply(
            Some(&HeaderValue::from_static("https://evil.example")),
            &mut h,
        );
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(h[header::VARY], "Origin");
        let mut h = HeaderMap::new();
        c.apply(
            Some(&HeaderValue::from_static("https://app.example")),
            &mut h,
        );
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert!(
            h[header::ACCESS_CONTROL_EXPOSE_HEADERS]
                .to_str()
                .unwrap()
                .contains("WWW-Authenticate")
        );
        let any = Cors::new(&CorsConfig::default());
        let mut h = HeaderMap::new();
        any.apply(Some(&HeaderValue::from_static("https://x.example")), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let mut h = HeaderMap::new();
        any.apply(None, &mut h);
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[test]
    fn off_when_no_origin_is_listed() {
        let c = Cors::new(&CorsConfig {
            allowed_origins: Origins::List(vec![]),
            ..CorsConfig::default()
        });
        assert!(!c.enabled());
        let mut h = HeaderMap::new();
        c.apply(Some(&HeaderValue::from_static("https://x.example")), &mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn config_validation() {
        let bad = CorsConfig {
            allowed_origins: Origins::List(vec![
                "https://ok.example:8443".into(),
                "https://x/path".into(),
            ]),
            allowed_methods: vec!["get".into()],
            ..CorsConfig::default()
        };
        let p = bad.validate();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].1.contains("https://x/path"));
        let star = CorsConfig {
            allowed_origins: Origins::Any("everyone".into()),
            ..CorsConfig::default()
        };
        assert_eq!(star.validate().len(), 1);
    }
}
