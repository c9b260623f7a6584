//! The YAML configuration. Key names are a public interface (see `smartgate.example.yaml`).
//!
//! Loading is two steps: serde (unknown keys and wrong types are errors that carry the
//! YAML line and column), then [`Config::validate`], which collects *every* semantic
//! problem at once so that `smartgate check` can list them all as `file:line:col: message`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::authenticate::AuthConfig;
use crate::duration::HumanDuration;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where apps connect.
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`: never on the public port.
    pub admin_listen: SocketAddr,
    /// The FHIR base apps see: token audience, link rewriting, discovery.
    pub public_base_url: String,
    /// The existing FHIR server.
    pub upstream: UpstreamConfig,
    /// Token checking.
    #[serde(default)]
    pub auth: AuthConfig,
    /// SMART discovery served for the upstream.
    #[serde(default)]
    pub smart: Option<SmartConfig>,
    /// Policy files (Policies issue).
    #[serde(default)]
    pub policies: Vec<PathBuf>,
    /// Patient-compartment choices the specification leaves open.
    #[serde(default)]
    pub compartment: CompartmentConfig,
    /// Binding of paging links to the token that started the search.
    #[serde(default)]
    pub paging: PagingConfig,
    /// Worker threads serving the public listener, each with its own event loop, socket
    /// (`SO_REUSEPORT`) and upstream connection pool. `0` (default): one per CPU available
    /// to the process (cgroup quota included).
    #[serde(default)]
    pub workers: usize,
    /// Resource limits of the public listener.
    #[serde(default)]
    pub limits: Limits,
    /// The audit trail.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Inbound TLS on the public listener (plain HTTP/1.1 + h2c without it).
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Cross-origin access for browser apps.
    #[serde(default)]
    pub cors: crate::cors::CorsConfig,
    /// The CapabilityStatement served at `metadata`.
    #[serde(default)]
    pub metadata: MetadataConfig,
    /// OpenTelemetry trace export (a build with `--features otel`).
    #[serde(default)]
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
}

/// `upstream:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The FHIR server's base URL.
    pub url: String,
    /// Whole-request deadline towards the upstream (headers received): 504 after it.
    #[serde(default = "default_upstream_timeout")]
    pub timeout: HumanDuration,
    /// TCP connect deadline: 502 after it.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Idle pooled connections are closed after this.
    #[serde(default = "default_pool_idle")]
    pub pool_idle_timeout: HumanDuration,
    /// At most this many requests are in flight upstream at once (split evenly over the
    /// workers); the rest wait here, within `timeout`. A legacy server behind the proxy
    /// serves a few hundred concurrent requests at best: more connections only move the
    /// queue there, and cost memory here.
    #[serde(default = "default_upstream_connections")]
    pub max_connections: usize,
    /// Credentials the proxy presents upstream (the app's token never is).
    #[serde(default)]
    pub auth: UpstreamAuth,
    /// Extra CA bundle (PEM) for an upstream with a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for an upstream that wants mutual TLS.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Send narrowed searches (pinned to the launch patient or narrowed by granular
    /// scopes) with `Prefer: handling=strict`. R4 lets a server silently ignore a search
    /// parameter it does not support unless asked to be strict; ignoring the narrowing
    /// turns a pinned search into a scan of every patient (the filter still keeps the data
    /// safe). On by default; off only for servers that refuse the header.
    #[serde(default = "default_true")]
    pub strict_narrowing: bool,
}

/// `metadata:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// How long the rewritten CapabilityStatement (and an upstream SMART configuration in
    /// `passthrough`/`merge` mode) is reused: `metadata` needs no token, so without a cache
    /// anyone could turn it into load on the upstream.
    pub cache_ttl: HumanDuration,
    /// Remove from the CapabilityStatement the operations the proxy never allows and the
    /// resource types it does not know. Off by default: nothing is removed.
    pub prune: bool,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            cache_ttl: secs(60),
            prune: false,
        }
    }
}

/// How the proxy authenticates to an upstream that has its own auth.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "type")]
pub enum UpstreamAuth {
    /// Send no credentials (the default).
    #[default]
    None,
    /// `Authorization: Bearer <file contents>`.
    Bearer {
        /// File holding the token.
        token_file: PathBuf,
    },
    /// `Authorization: Basic …`.
    Basic {
        /// User name.
        username: String,
        /// File holding the password.
        password_file: PathBuf,
    },
    /// `Authorization: Bearer <token>` with a token of the proxy's own, from an OAuth 2.0
    /// token endpoint (client credentials grant, RFC 6749 §4.4), cached and refreshed
    /// ahead of expiry (see [`crate::credentials`]). Boxed: it is much larger than the rest.
    ClientCredentials(Box<ClientCredentialsConfig>),
}

/// `upstream.auth` with `type: client_credentials`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentialsConfig {
    /// The token endpoint.
    pub token_url: String,
    /// The proxy's client id at the authorization server.
    pub client_id: String,
    /// `scope` asked for (space-separated), if the server wants one.
    #[serde(default)]
    pub scope: Option<String>,
    /// `audience` parameter (Auth0, Okta and others name the API with it).
    #[serde(default)]
    pub audience: Option<String>,
    /// `resource` parameter (RFC 8707; Azure AD v1 and others).
    #[serde(default)]
    pub resource: Option<String>,
    /// How the proxy authenticates to the token endpoint.
    #[serde(default)]
    pub client_auth: TokenClientAuth,
    /// File holding the client secret (`client_secret_basic`, `client_secret_post`).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// PEM private key signing the client assertion (`private_key_jwt`).
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// Signature algorithm of the client assertion: RS256 (default) or ES256.
    #[serde(default)]
    pub signing_alg: AssertionAlg,
    /// `kid` put in the client assertion's header, for servers that hold several keys.
    #[serde(default)]
    pub kid: Option<String>,
    /// Bound on one token request (connect, answer and body).
    #[serde(default = "default_token_timeout")]
    pub timeout: HumanDuration,
}

/// Client authentication at the token endpoint (the RFC 7591 method names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenClientAuth {
    /// HTTP Basic with the form-encoded id and secret (the default).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A JWT signed with the proxy's private key (RFC 7523, as SMART Backend Services).
    PrivateKeyJwt,
}

/// The client assertion's signature algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AssertionAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (an RSA key).
    #[default]
    RS256,
    /// ECDSA P-256 with SHA-256 (an EC key).
    ES256,
}

impl ClientCredentialsConfig {
    /// `(key, problem)` for each problem: the token URL, and exactly the secret or key the
    /// client authentication method needs.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !is_absolute_http_url(&self.token_url) || self.token_url.parse::<http::Uri>().is_err() {
            out.push((
                "token_url".into(),
                format!("`{}` must be an absolute http(s) URL", self.token_url),
            ));
        }
        if self.client_id.is_empty() {
            out.push(("client_id".into(), "must not be empty".into()));
        }
        let (secret, key) = (
            self.client_secret_file.is_some(),
            self.private_key_file.is_some(),
        );
        match self.client_auth {
            TokenClientAuth::ClientSecretBasic | TokenClientAuth::ClientSecretPost => {
                if !secret {
                    out.push((
                        "client_secret_file".into(),
                        "is needed with client_secret_basic and client_secret_post".into(),
                    ));
                }
                if key {
                    out.push((
                        "private_key_file".into(),
                        "goes only with client_auth: private_key_jwt".into(),
                    ));
                }
            }
            TokenClientAuth::PrivateKeyJwt => {
                if !key {
                    out.push((
                        "private_key_file".into(),
                        "is needed with client_auth: private_key_jwt".into(),
                    ));
                }
                if secret {
                    out.push((
                        "client_secret_file".into(),
                        "does not go with client_auth: private_key_jwt".into(),
                    ));
                }
            }
        }
        if self.timeout.0.is_zero() {
            out.push(("timeout".into(), "must be more than 0s".into()));
        }
        out
    }
}

/// `smart:` — the SMART configuration document served at `.well-known/smart-configuration`.
/// In `serve` mode it is the whole document (defaults fill the rest); in `merge` mode only the
/// keys given here override the upstream's document.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmartConfig {
    /// Where the document comes from.
    #[serde(default)]
    pub mode: crate::discovery::SmartMode,
    /// OAuth authorize endpoint (needed for app launches).
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// OAuth token endpoint (required in `serve` mode).
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// `issuer` (with `sso-openid-connect`).
    #[serde(default)]
    pub issuer: Option<String>,
    /// `jwks_uri` (with `sso-openid-connect`).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// RFC 7662 endpoint, advertised for resource servers.
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    /// RFC 7009 endpoint.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// SMART capabilities (`serve` default: standalone and EHR launch, public and
    /// symmetric clients, patient and user permissions, v1 and v2 scopes).
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// Grant types (`serve` default: `authorization_code`, `client_credentials`).
    #[serde(default)]
    pub grant_types_supported: Option<Vec<String>>,
    /// Scopes advertised.
    #[serde(default)]
    pub scopes_supported: Option<Vec<String>>,
}

/// `compartment:`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompartmentConfig {
    /// Also count actor parameters (Observation `performer`, `author`, …) as membership,
    /// as the official definition does. Off by default: see `compartment::definition`.
    #[serde(default)]
    pub actor_membership: bool,
    /// Non-member types (Practitioner, Medication, …) under patient/ scopes.
    #[serde(default)]
    pub non_member_types: crate::authorize::NonMemberAccess,
}

/// `paging:`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagingConfig {
    /// File with the HMAC key binding paging links to a token, and Bulk Data status and
    /// file URLs to their job's owner (share it across replicas). Without one a random key
    /// is made at start, so links only work on this replica.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

/// `limits:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line + headers).
    pub max_header_bytes: usize,
    /// Largest request body forwarded (413 above).
    pub max_body_bytes: u64,
    /// Largest body read into memory to check or filter (request or response): 413/502 above.
    pub max_inspect_bytes: usize,
    /// Concurrent client connections; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Time a client has to send a request head, also between keep-alive requests
    /// (slowloris, idle connections).
    pub header_read_timeout: HumanDuration,
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// A connection with no request in flight and none started for this long is closed
    /// gracefully (HTTP/2 GOAWAY). HTTP/1.1 keep-alive idleness is already bounded by
    /// `header_read_timeout`.
    pub idle_timeout: HumanDuration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 256 * 1024 * 1024,
            max_inspect_bytes: 64 * 1024 * 1024,
            max_connections: 4096,
            header_read_timeout: HumanDuration(std::time::Duration::from_secs(10)),
            max_concurrent_streams: 128,
            idle_timeout: HumanDuration(std::time::Duration::from_secs(60)),
        }
    }
}

/// `audit:`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Where audit lines go: `stdout` (default) or a file path (appended).
    #[serde(default)]
    pub output: Option<String>,
    /// Log query values (they can contain PHI). Off by default.
    #[serde(default)]
    pub log_query_values: bool,
}

/// `shutdown:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(default = "default_grace")]
    pub grace: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: default_grace(),
        }
    }
}

fn secs(n: u64) -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(n))
}
fn default_upstream_timeout() -> HumanDuration {
    secs(30)
}
fn default_connect_timeout() -> HumanDuration {
    secs(5)
}
fn default_pool_idle() -> HumanDuration {
    secs(90)
}
fn default_upstream_connections() -> usize {
    256
}
fn default_token_timeout() -> HumanDuration {
    secs(10)
}
fn default_true() -> bool {
    true
}
fn default_grace() -> HumanDuration {
    secs(30)
}
/// One problem in a configuration file, located where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: u64,
    /// 1-based column, 0 when unknown.
    pub column: u64,
    /// What is wrong, naming the key.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl Config {
    /// Reads, parses and validates `path`; every problem found is returned.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                file: path.to_owned(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }]
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text (`path` is only used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
        let config: Config =
            serde_saphyr::from_str(text).map_err(|e| vec![yaml_error(&e, path)])?;
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        Err(problems
            .into_iter()
            .map(|(key, message)| {
                let (line, column) = locate(text, &key);
                ConfigError {
                    file: path.to_owned(),
                    line,
                    column,
                    message: format!("{key}: {message}"),
                }
            })
            .collect())
    }

    /// Semantic checks serde cannot do: `(dotted key, message)` for each problem.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Err(e) = parse_base_url(&self.public_base_url) {
            out.push(("public_base_url".into(), e));
        }
        if let Err(e) = parse_base_url(&self.upstream.url) {
            out.push(("upstream.url".into(), e));
        }
        if self.listen == self.admin_listen {
            out.push((
                "admin_listen".into(),
                "must differ from listen: health and metrics never share the public port".into(),
            ));
        }
        if self.limits.max_connections == 0 {
            out.push(("limits.max_connections".into(), "must be at least 1".into()));
        }
        // tokio's semaphore panics above usize::MAX >> 3 permits; no host holds 10M sockets.
        if self.limits.max_connections > 10_000_000 {
            out.push((
                "limits.max_connections".into(),
                "must be at most 10000000".into(),
            ));
        }
        if self.upstream.max_connections == 0 {
            out.push((
                "upstream.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        if self.upstream.max_connections > 10_000_000 {
            out.push((
                "upstream.max_connections".into(),
                "must be at most 10000000".into(),
            ));
        }
        if self.workers > 1024 {
            out.push((
                "workers".into(),
                "must be at most 1024 (0: one per CPU)".into(),
            ));
        }
        if self.limits.idle_timeout.0.is_zero() {
            out.push(("limits.idle_timeout".into(), "must be more than 0s".into()));
        }
        for (key, problem) in self.auth.validate() {
            out.push((format!("auth.{key}"), problem));
        }
        if let Some(smart) = &self.smart {
            for (key, problem) in crate::discovery::validate_config(smart) {
                out.push((format!("smart.{key}"), problem));
            }
        }
        if let Some(tls) = &self.tls {
            for (key, problem) in tls.validate() {
                out.push((format!("tls.{key}"), problem));
            }
        }
        for (key, problem) in self.cors.validate() {
            out.push((format!("cors.{key}"), problem));
        }
        for (key, problem) in self.telemetry.iter().flat_map(|t| t.validate()) {
            let key = match key.is_empty() {
                true => "telemetry".into(),
                false => format!("telemetry.{key}"),
            };
            out.push((key, problem));
        }
        if let UpstreamAuth::ClientCredentials(cc) = &self.upstream.auth {
            for (key, problem) in cc.validate() {
                out.push((format!("upstream.auth.{key}"), problem));
            }
        }
        if self.upstream.client_cert_file.is_some() != self.upstream.client_key_file.is_some() {
            out.push((
                "upstream.client_cert_file".into(),
                "client_cert_file and client_key_file go together".into(),
            ));
        }
        out
    }
}

/// A YAML or type error from serde, located, in words for people who do not read Rust
/// type names (shared by the config and the policy loaders).
pub(crate) fn yaml_error(e: &serde_saphyr::Error, path: &Path) -> ConfigError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    ConfigError {
        file: path.to_owned(),
        line,
        column,
        message: yaml_message(e),
    }
}

/// A YAML/serde error as one sentence for people: the location is already in front of
/// it, Rust type names are said in words.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let mut line = text.lines().next().unwrap_or_default().to_owned();
    if let Some(i) = line.rfind(" at line ") {
        line.truncate(i);
    }
    for (rust, words) in [
        ("invalid u32", "expected a whole number"),
        ("invalid u64", "expected a whole number"),
        ("invalid bool", "expected true or false"),
        ("sequence start", "a list ([a, b] or one `- item` per line)"),
        ("mapping start", "a block of `key: value` lines"),
    ] {
        line = line.replace(rust, words);
    }
    line
}

/// A base URL split into what the proxy needs: scheme+authority and the path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `http://host:port`
    pub origin: String,
    /// The path, without a trailing slash (`/fhir`, or empty for the root).
    pub path: String,
}

impl BaseUrl {
    /// The full base, `origin + path`.
    pub fn full(&self) -> String {
        format!("{}{}", self.origin, self.path)
    }
}

/// Parses an absolute `http(s)://authority/path` base URL without query or fragment.
pub fn parse_base_url(url: &str) -> Result<BaseUrl, String> {
    if !is_absolute_http_url(url) {
        return Err(format!("`{url}` must be an absolute http(s) URL"));
    }
    if url.contains(['?', '#']) {
        return Err(format!("`{url}` must not have a query or fragment"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(format!("`{url}` must have a scheme and a host"));
    };
    Ok(BaseUrl {
        origin: format!("{scheme}://{authority}"),
        path: uri.path().trim_end_matches('/').to_owned(),
    })
}

fn is_absolute_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://")) && url.len() > "https://".len()
}

/// Finds the line and column of a dotted key (`upstream.url`) in YAML text by following
/// indentation; (0, 0) when it cannot be found. Good enough for messages, never trusted.
fn locate(text: &str, dotted: &str) -> (u64, u64) {
    let mut parent_indent: Option<usize> = None;
    let mut found = (0, 0);
    let mut lines = text.lines().enumerate();
    for key in dotted.split('.') {
        let mut hit = None;
        for (no, line) in lines.by_ref() {
            let indent = line.len() - line.trim_start().len();
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if let Some(p) = parent_indent
                && indent <= p
            {
                break;
            }
            if trimmed.starts_with(&format!("{key}:")) {
                hit = Some((no, indent));
                break;
            }
        }
        match hit {
            Some((no, indent)) => {
                found = (no as u64 + 1, indent as u64 + 1);
                parent_indent = Some(indent);
            }
            None => return found,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "listen: 127.0.0.1:8443\nadmin_listen: 127.0.0.1:9464\npublic_base_url: http://127.0.0.1:8443/fhir\nupstream:\n  url: http://127.0.0.1:8103/fhir\n  timeout: 30s\n";

    #[test]
    fn minimal_config_loads() {
        let c = Config::parse(MINIMAL, Path::new("c.yaml")).unwrap();
        assert_eq!(c.upstream.timeout.0.as_secs(), 30);
        assert_eq!(parse_base_url(&c.upstream.url).unwrap().path, "/fhir");
    }

    #[test]
    fn unknown_key_is_located() {
        let text = format!("{MINIMAL}  tiemout: 5s\n");
        let errs = Config::parse(&text, Path::new("c.yaml")).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 7, "{}", errs[0]);
        assert!(errs[0].to_string().starts_with("c.yaml:7:"), "{}", errs[0]);
        assert!(errs[0].message.contains("tiemout"), "{}", errs[0]);
    }

    #[test]
    fn bad_duration_names_the_problem() {
        let text = MINIMAL.replace("30s", "30 parsecs");
        let errs = Config::parse(&text, Path::new("c.yaml")).unwrap_err();
        assert_eq!(errs[0].line, 6, "{}", errs[0]);
        assert!(errs[0].message.contains("unit"), "{}", errs[0]);
    }

    #[test]
    fn semantic_problems_are_all_reported_with_lines() {
        let text = MINIMAL
            .replace("http://127.0.0.1:8103/fhir", "ftp://x")
            .replace(
                "admin_listen: 127.0.0.1:9464",
                "admin_listen: 127.0.0.1:8443",
            );
        let errs = Config::parse(&text, Path::new("c.yaml")).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            shown.contains(
                &"c.yaml:5:3: upstream.url: `ftp://x` must be an absolute http(s) URL".to_owned()
            ),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("c.yaml:2:1: admin_listen")),
            "{shown:?}"
        );
    }

    /// A binary that cannot export must not accept a configuration that asks it to.
    #[test]
    #[cfg(not(feature = "otel"))]
    fn telemetry_needs_the_otel_feature() {
        let text = format!("{MINIMAL}telemetry:\n  otlp_endpoint: http://127.0.0.1:4318\n");
        let errs = Config::parse(&text, Path::new("c.yaml")).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].line, 7, "{}", errs[0]);
        assert!(
            errs[0].message.starts_with("telemetry: ")
                && errs[0].message.contains("--features otel"),
            "{}",
            errs[0]
        );
        assert!(Config::parse(MINIMAL, Path::new("c.yaml")).is_ok());
    }

    #[test]
    fn client_credentials_parse_and_are_checked() {
        let text = format!(
            "{MINIMAL}  auth:\n    type: client_credentials\n    token_url: https://as.example/token\n    client_id: smartgate\n    client_auth: private_key_jwt\n    private_key_file: /k.pem\n    signing_alg: ES256\n    kid: k1\n    scope: system/*.rs\n    audience: https://fhir.example\n"
        );
        let c = Config::parse(&text, Path::new("c.yaml")).unwrap();
        let UpstreamAuth::ClientCredentials(cc) = &c.upstream.auth else {
            panic!("{:?}", c.upstream.auth)
        };
        assert_eq!(cc.client_auth, TokenClientAuth::PrivateKeyJwt);
        assert_eq!(cc.signing_alg, AssertionAlg::ES256);
        assert_eq!(cc.timeout.0.as_secs(), 10);
        assert!(c.upstream.strict_narrowing, "on by default");

        // A secret method without a secret, a key it does not use, a relative token URL.
        let bad = text
            .replace(
                "client_auth: private_key_jwt",
                "client_auth: client_secret_post",
            )
            .replace("https://as.example/token", "/token");
        let errs = Config::parse(&bad, Path::new("c.yaml")).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{shown:?}");
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("c.yaml:9:5: upstream.auth.token_url")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.contains("upstream.auth.client_secret_file: is needed")),
            "{shown:?}"
        );
        let unknown = text.replace("kid: k1", "kidd: k1");
        assert!(Config::parse(&unknown, Path::new("c.yaml")).is_err());
    }

    #[test]
    fn base_urls() {
        assert_eq!(parse_base_url("http://h:1/").unwrap().path, "");
        assert_eq!(
            parse_base_url("https://h/a/b/").unwrap().full(),
            "https://h/a/b"
        );
        assert!(parse_base_url("http://h/x?y").is_err());
        assert!(parse_base_url("/fhir").is_err());
    }
}
