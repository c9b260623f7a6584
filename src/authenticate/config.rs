//! The `auth:` section of the configuration.
//!
//! ```yaml
//! auth:
//!   realm: smartgate                 # WWW-Authenticate realm
//!   jwt:
//!     issuer: https://as.example.org/realms/smart
//!     jwks_uri: https://as.example.org/realms/smart/certs   # default: OIDC discovery
//!     audience: [https://fhir.example.org/r4]               # default: public_base_url
//!     algorithms: [RS256, ES256]
//!     leeway: 30s
//!     jwks_refresh_min: 1m
//!     jwks_refresh_max: 1h
//!     unknown_kid_cooldown: 30s
//!     max_staleness: 2h
//!     timeout: 5s
//!   introspection:
//!     endpoint: https://as.example.org/introspect
//!     client_id: smartgate
//!     client_secret_file: /run/secrets/introspection   # or client_secret: "…"
//!     client_auth: basic              # or post
//!     cache_ttl: 60s
//!     negative_cache_ttl: 10s
//!     timeout: 5s
//!     always: false
//!   claims:
//!     scope: [scope, scp]
//!     client_id: [client_id, azp]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::duration::HumanDuration;

/// How tokens are checked. Neither `jwt` nor `introspection` ⇒ every request is refused.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The `realm` of `WWW-Authenticate` challenges (`auth.realm`, default `smartgate`).
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Local verification of JWT access tokens (`auth.jwt`).
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// RFC 7662 introspection of opaque tokens (`auth.introspection`).
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    /// Where SMART values sit in tokens of real identity providers (`auth.claims`).
    #[serde(default)]
    pub claims: ClaimsMapping,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            realm: default_realm(),
            jwt: None,
            introspection: None,
            claims: ClaimsMapping::default(),
        }
    }
}

fn default_realm() -> String {
    "smartgate".to_owned()
}

/// A signature algorithm an issuer may use. Symmetric (`HS*`) and `none` are not nameable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl SigningAlgorithm {
    /// The jsonwebtoken algorithm.
    pub fn jwt(self) -> Algorithm {
        match self {
            SigningAlgorithm::RS256 => Algorithm::RS256,
            SigningAlgorithm::RS384 => Algorithm::RS384,
            SigningAlgorithm::RS512 => Algorithm::RS512,
            SigningAlgorithm::PS256 => Algorithm::PS256,
            SigningAlgorithm::PS384 => Algorithm::PS384,
            SigningAlgorithm::PS512 => Algorithm::PS512,
            SigningAlgorithm::ES256 => Algorithm::ES256,
            SigningAlgorithm::ES384 => Algorithm::ES384,
            SigningAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }
}

/// One value or a list in YAML (`audience: x` or `audience: [x, y]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `auth.jwt`: JWT access tokens verified against the issuer's JWKS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `iss` every token must carry, exactly.
    pub issuer: String,
    /// Where the keys are; default: `jwks_uri` from `issuer` + `/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Accepted `aud` values; default: the proxy's `public_base_url`.
    #[serde(default)]
    pub audience: Option<OneOrMany>,
    /// Allow-list of signature algorithms (default `[RS256, ES256]`).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<SigningAlgorithm>,
    /// Clock skew tolerated on `exp`, `nbf`, `iat` (default 30s).
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    /// Lower bound of the background refresh interval taken from `Cache-Control` (default 1m).
    #[serde(default = "default_refresh_min")]
    pub jwks_refresh_min: HumanDuration,
    /// Upper bound of the background refresh interval (default 1h).
    #[serde(default = "default_refresh_max")]
    pub jwks_refresh_max: HumanDuration,
    /// At most one on-demand refetch for unknown `kid`s per this interval (default 30s).
    #[serde(default = "default_cooldown")]
    pub unknown_kid_cooldown: HumanDuration,
    /// Keys keep working this long after the last successful fetch; then fail closed (default 2h).
    #[serde(default = "default_max_staleness")]
    pub max_staleness: HumanDuration,
    /// Bound on one discovery or JWKS fetch (default 5s).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// How long a verified token's grant is reused without checking its signature again
    /// (default 5m; never past the token's `exp` or a JWKS change; `0s` disables).
    #[serde(default = "default_verified_cache_ttl")]
    pub verified_cache_ttl: HumanDuration,
}

fn default_verified_cache_ttl() -> HumanDuration {
    secs(300)
}
fn default_algorithms() -> Vec<SigningAlgorithm> {
    vec![SigningAlgorithm::RS256, SigningAlgorithm::ES256]
}
fn secs(n: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(n))
}
fn default_leeway() -> HumanDuration {
    secs(30)
}
fn default_refresh_min() -> HumanDuration {
    secs(60)
}
fn default_refresh_max() -> HumanDuration {
    secs(3600)
}
fn default_cooldown() -> HumanDuration {
    secs(30)
}
fn default_max_staleness() -> HumanDuration {
    secs(7200)
}
fn default_timeout() -> HumanDuration {
    secs(5)
}
fn default_cache_ttl() -> HumanDuration {
    secs(60)
}
fn default_negative_ttl() -> HumanDuration {
    secs(10)
}
fn default_cache_capacity() -> u64 {
    100_000
}

impl JwtConfig {
    /// A configuration with every default, for `issuer`.
    pub fn new(issuer: impl Into<String>) -> Self {
        JwtConfig {
            issuer: issuer.into(),
            jwks_uri: None,
            audience: None,
            algorithms: default_algorithms(),
            leeway: default_leeway(),
            jwks_refresh_min: default_refresh_min(),
            jwks_refresh_max: default_refresh_max(),
            unknown_kid_cooldown: default_cooldown(),
            max_staleness: default_max_staleness(),
            timeout: default_timeout(),
            verified_cache_ttl: default_verified_cache_ttl(),
        }
    }
}

/// How the proxy authenticates itself to the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with form-encoded id and secret (`client_secret_basic`, the default).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
}

/// `auth.introspection`: RFC 7662 introspection of opaque tokens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint URL.
    pub endpoint: String,
    /// The proxy's own client id at the authorization server.
    pub client_id: String,
    /// File holding the client secret (trailing newline ignored); preferred over `client_secret`.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The client secret inline (for tests and development).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// `basic` (default) or `post`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Positive answers are reused for min(this, token `exp`) (default 60s).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: HumanDuration,
    /// Negative answers (`active: false`) are reused this long (default 10s).
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_ttl: HumanDuration,
    /// At most this many cached answers (default 100000).
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
    /// Bound on one introspection call (default 5s); past it the request gets 401.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Introspect every token, JWTs from the configured issuer included (default false).
    #[serde(default)]
    pub always: bool,
    /// When set, an answer carrying `aud` must name one of these (default: `aud` not checked).
    #[serde(default)]
    pub audience: Option<OneOrMany>,
}

impl IntrospectionConfig {
    /// A configuration with every default.
    pub fn new(endpoint: impl Into<String>, client_id: impl Into<String>) -> Self {
        IntrospectionConfig {
            endpoint: endpoint.into(),
            client_id: client_id.into(),
            client_secret_file: None,
            client_secret: None,
            client_auth: ClientAuth::Basic,
            cache_ttl: default_cache_ttl(),
            negative_cache_ttl: default_negative_ttl(),
            cache_capacity: default_cache_capacity(),
            timeout: default_timeout(),
            always: false,
            audience: None,
        }
    }
}

/// `auth.claims`: claim names tried in order. A name starting with `/` is a JSON Pointer
/// into nested claims (`/context/patient`); any other name is a top-level claim.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClaimsMapping {
    /// Scopes: a space-separated string or an array (default `[scope, scp]`).
    #[serde(default = "default_scope_claims")]
    pub scope: Vec<String>,
    /// The client (default `[client_id, azp]`).
    #[serde(default = "default_client_id_claims")]
    pub client_id: Vec<String>,
    /// The launch patient (default `[patient]`); must be a plain FHIR id.
    #[serde(default = "default_patient_claims")]
    pub patient: Vec<String>,
    /// The launch encounter (default `[encounter]`); must be a plain FHIR id.
    #[serde(default = "default_encounter_claims")]
    pub encounter: Vec<String>,
    /// The user's FHIR resource (default `[fhirUser]`).
    #[serde(default = "default_fhir_user_claims")]
    pub fhir_user: Vec<String>,
    /// The subject (default `[sub]`).
    #[serde(default = "default_subject_claims")]
    pub subject: Vec<String>,
}

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| (*s).to_owned()).collect()
}
fn default_scope_claims() -> Vec<String> {
    names(&["scope", "scp"])
}
fn default_client_id_claims() -> Vec<String> {
    names(&["client_id", "azp"])
}
fn default_patient_claims() -> Vec<String> {
    names(&["patient"])
}
fn default_encounter_claims() -> Vec<String> {
    names(&["encounter"])
}
fn default_fhir_user_claims() -> Vec<String> {
    names(&["fhirUser"])
}
fn default_subject_claims() -> Vec<String> {
    names(&["sub"])
}

impl Default for ClaimsMapping {
    fn default() -> Self {
        ClaimsMapping {
            scope: default_scope_claims(),
            client_id: default_client_id_claims(),
            patient: default_patient_claims(),
            encounter: default_encounter_claims(),
            fhir_user: default_fhir_user_claims(),
            subject: default_subject_claims(),
        }
    }
}

impl AuthConfig {
    /// Every semantic problem, as `(key relative to auth:, message)`. Used by `check` and
    /// by [`Authenticator::new`](super::Authenticator::new), so both agree.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let http_url = |u: &str| {
            u.parse::<http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("https" | "http")) && uri.host().is_some()
            })
        };
        if let Some(j) = &self.jwt {
            if j.issuer.is_empty() {
                out.push(("jwt.issuer".into(), "must not be empty".into()));
            }
            if j.algorithms.is_empty() {
                out.push(("jwt.algorithms".into(), "must not be empty".into()));
            }
            if j.jwks_uri.as_deref().is_some_and(|u| !http_url(u)) {
                out.push((
                    "jwt.jwks_uri".into(),
                    "must be an absolute http(s) URL".into(),
                ));
            }
            if j.audience.as_ref().is_some_and(|a| {
                let a = a.to_vec();
                a.is_empty() || a.iter().any(String::is_empty)
            }) {
                out.push((
                    "jwt.audience".into(),
                    "must name at least one non-empty audience".into(),
                ));
            }
            if j.jwks_refresh_min > j.jwks_refresh_max {
                out.push((
                    "jwt.jwks_refresh_min".into(),
                    "must not exceed jwks_refresh_max".into(),
                ));
            }
            if j.max_staleness <= j.jwks_refresh_max {
                out.push((
                    "jwt.max_staleness".into(),
                    "must exceed jwks_refresh_max, or keys go stale between refreshes".into(),
                ));
            }
        }
        if let Some(i) = &self.introspection {
            if !http_url(&i.endpoint) {
                out.push((
                    "introspection.endpoint".into(),
                    "must be an absolute http(s) URL".into(),
                ));
            }
            if i.client_secret_file.is_some() == i.client_secret.is_some() {
                out.push((
                    "introspection.client_id".into(),
                    "needs exactly one of client_secret_file, client_secret".into(),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_defaults() {
        let cfg: AuthConfig = serde_saphyr::from_str(
            "jwt:\n  issuer: https://as\n  audience: [a, b]\nintrospection:\n  endpoint: https://as/i\n  client_id: me\n  client_secret: s\n  client_auth: post\nclaims:\n  patient: [/context/patient]\n",
        )
        .unwrap();
        let jwt = cfg.jwt.unwrap();
        assert_eq!(jwt.issuer, "https://as");
        assert_eq!(jwt.audience.unwrap().to_vec(), vec!["a", "b"]);
        assert_eq!(jwt.algorithms, default_algorithms());
        assert_eq!(jwt.leeway.0, Duration::from_secs(30));
        assert_eq!(jwt.unknown_kid_cooldown.0, Duration::from_secs(30));
        let i = cfg.introspection.unwrap();
        assert_eq!(i.client_auth, ClientAuth::Post);
        assert!(!i.always);
        assert_eq!(cfg.claims.patient, vec!["/context/patient"]);
        assert_eq!(cfg.claims.scope, vec!["scope", "scp"]);
        assert_eq!(cfg.realm, "smartgate");
    }

    #[test]
    fn unknown_keys_and_symmetric_algorithms_are_refused() {
        assert!(serde_saphyr::from_str::<AuthConfig>("jwt:\n  issuer: x\n  isuer: y\n").is_err());
        assert!(
            serde_saphyr::from_str::<AuthConfig>("jwt:\n  issuer: x\n  algorithms: [HS256]\n")
                .is_err()
        );
        assert!(
            serde_saphyr::from_str::<AuthConfig>("jwt:\n  issuer: x\n  algorithms: [none]\n")
                .is_err()
        );
    }
}
