//! Why a request carries no usable token, phrased for RFC 6750 answers.

use http::StatusCode;

/// Why a request was not authenticated. Every variant is a refusal (fail closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header at all.
    MissingToken,
    /// An `access_token` query parameter (RFC 6750 §2.3 is not supported: tokens leak via URLs).
    TokenInQuery,
    /// More than one `Authorization` header, or a scheme other than `Bearer`.
    BadAuthorizationHeader,
    /// Not a well-formed token (not a JWT where one is required, bad base64/JSON, bad claim type).
    Malformed,
    /// A required claim (`exp`, `iss`, `aud`) is missing.
    MissingClaim,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is in the past (beyond leeway).
    Expired,
    /// `nbf` or `iat` is in the future (beyond leeway).
    NotYetValid,
    /// `aud` does not name this server.
    WrongAudience,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// No key in the issuer's JWKS has this `kid` (after the one allowed refetch).
    UnknownKey,
    /// `alg` is `none`, symmetric, outside the allow-list, or not what the key allows.
    DisallowedAlgorithm,
    /// A `jku`, `x5u`, `jwk`, `x5c` or `crit` header: keys come only from the configured JWKS.
    ForbiddenHeader,
    /// The patient claim is not a plain FHIR id.
    BadPatientClaim,
    /// The encounter claim is not a plain FHIR id.
    BadEncounterClaim,
    /// Introspection answered `active: false` (or without a valid `exp`).
    Inactive,
    /// The introspection endpoint failed, timed out, or refused the proxy's credentials.
    IntrospectionUnavailable,
    /// The JWKS could not be refreshed for longer than the configured maximum staleness,
    /// or has never been fetched.
    KeysStale,
    /// Neither JWT verification nor introspection is configured.
    NotConfigured,
}

impl AuthError {
    /// Stable short code for audit lines and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::TokenInQuery => "token_in_query",
            AuthError::BadAuthorizationHeader => "bad_authorization_header",
            AuthError::Malformed => "malformed",
            AuthError::MissingClaim => "missing_claim",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::UnknownKey => "unknown_key",
            AuthError::DisallowedAlgorithm => "disallowed_algorithm",
            AuthError::ForbiddenHeader => "forbidden_header",
            AuthError::BadPatientClaim => "bad_patient_claim",
            AuthError::BadEncounterClaim => "bad_encounter_claim",
            AuthError::Inactive => "inactive",
            AuthError::IntrospectionUnavailable => "introspection_unavailable",
            AuthError::KeysStale => "keys_stale",
            AuthError::NotConfigured => "not_configured",
        }
    }

    /// A description safe to send to the client: it tells an app developer what to fix
    /// without telling an attacker which check almost passed (signature and key problems
    /// share one text).
    pub fn description(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "an access token is required",
            AuthError::TokenInQuery => {
                "access tokens in the query string are not accepted; use the Authorization header"
            }
            AuthError::BadAuthorizationHeader => {
                "send exactly one Authorization header with the Bearer scheme"
            }
            AuthError::Malformed | AuthError::MissingClaim => "the access token is malformed",
            AuthError::BadSignature
            | AuthError::UnknownKey
            | AuthError::DisallowedAlgorithm
            | AuthError::ForbiddenHeader => "the access token signature is not valid",
            AuthError::Expired => "the access token expired",
            AuthError::NotYetValid => "the access token is not valid yet",
            AuthError::WrongAudience => "the access token is not intended for this server",
            AuthError::WrongIssuer => "the access token was not issued by the trusted issuer",
            AuthError::BadPatientClaim | AuthError::BadEncounterClaim => {
                "the access token carries an invalid launch context"
            }
            AuthError::Inactive => "the access token is not active",
            AuthError::IntrospectionUnavailable | AuthError::KeysStale => {
                "the access token cannot be verified right now; retry later"
            }
            AuthError::NotConfigured => "this server accepts no access tokens",
        }
    }

    /// The RFC 6750 error code, if any (`None` only for a request without a token).
    pub fn rfc6750_error(&self) -> Option<&'static str> {
        match self {
            AuthError::MissingToken => None,
            AuthError::TokenInQuery | AuthError::BadAuthorizationHeader => Some("invalid_request"),
            _ => Some("invalid_token"),
        }
    }

    /// The HTTP status: 400 for an `invalid_request`, 401 otherwise.
    pub fn status(&self) -> StatusCode {
        match self.rfc6750_error() {
            Some("invalid_request") => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` header value (RFC 6750 §3).
    pub fn www_authenticate(&self, realm: &str) -> String {
        let realm = quote(realm);
        match self.rfc6750_error() {
            None => format!("Bearer realm=\"{realm}\""),
            Some(code) => format!(
                "Bearer realm=\"{realm}\", error=\"{code}\", error_description=\"{}\"",
                self.description()
            ),
        }
    }
}

/// Escapes a value for an RFC 7230 quoted-string and drops anything that cannot appear in
/// a header (control characters).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() || !c.is_ascii() => {}
            c => out.push(c),
        }
    }
    out
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for AuthError {}

/// Why the [`super::Authenticator`] could not be built (configuration errors only: an
/// unreachable JWKS endpoint is not one, it shows in readiness).
#[derive(Debug)]
pub enum AuthInitError {
    /// The configuration is inconsistent.
    Config(String),
    /// The introspection client secret file could not be read.
    SecretFile(std::path::PathBuf, std::io::Error),
}

impl std::fmt::Display for AuthInitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthInitError::Config(m) => write!(f, "auth configuration: {m}"),
            AuthInitError::SecretFile(p, e) => {
                write!(
                    f,
                    "auth.introspection.client_secret_file {}: {e}",
                    p.display()
                )
            }
        }
    }
}

impl std::error::Error for AuthInitError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            AuthError::MissingToken.www_authenticate("smart"),
            "Bearer realm=\"smart\""
        );
        assert_eq!(AuthError::MissingToken.status(), StatusCode::UNAUTHORIZED);
        let h = AuthError::Expired.www_authenticate("a\"b\\c\n");
        assert_eq!(
            h,
            "Bearer realm=\"a\\\"b\\\\c\", error=\"invalid_token\", error_description=\"the access token expired\""
        );
        assert!(http::HeaderValue::from_str(&h).is_ok());
        assert_eq!(AuthError::TokenInQuery.status(), StatusCode::BAD_REQUEST);
        assert!(
            AuthError::TokenInQuery
                .www_authenticate("r")
                .contains("error=\"invalid_request\"")
        );
        // Key and signature failures are indistinguishable for the client.
        assert_eq!(
            AuthError::UnknownKey.description(),
            AuthError::BadSignature.description()
        );
        assert_eq!(AuthError::KeysStale.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn descriptions_are_header_safe() {
        use AuthError::*;
        for e in [
            MissingToken,
            TokenInQuery,
            BadAuthorizationHeader,
            Malformed,
            MissingClaim,
            BadSignature,
            Expired,
            NotYetValid,
            WrongAudience,
            WrongIssuer,
            UnknownKey,
            DisallowedAlgorithm,
            ForbiddenHeader,
            BadPatientClaim,
            BadEncounterClaim,
            Inactive,
            IntrospectionUnavailable,
            KeysStale,
            NotConfigured,
        ] {
            assert!(!e.description().contains(['"', '\\']));
            assert!(http::HeaderValue::from_str(&e.www_authenticate("r")).is_ok());
            assert!(!e.code().is_empty());
        }
    }
}
