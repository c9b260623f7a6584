//! Stage 1, **authenticate**: a bearer token ⇒ a [`Grant`].
//!
//! JWTs from the configured issuer are verified locally against its JWKS; anything else
//! (or everything, with `introspection.always`) goes to RFC 7662 introspection. Every
//! failure is an [`AuthError`]: no token, no data. The token itself is never logged, kept
//! (only its SHA-256) or forwarded by this module.

pub(crate) mod claims;
mod config;
mod error;
mod grant;
mod introspect;
mod jwks;
mod jwt;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::Duration;

pub use config::{
    AuthConfig, ClaimsMapping, ClientAuth, IntrospectionConfig, JwtConfig, OneOrMany,
    SigningAlgorithm,
};
pub use error::{AuthError, AuthInitError};
pub use grant::{Grant, TokenKind};

use introspect::Introspector;
use jwks::KeyStore;
use jwt::JwtVerifier;

use crate::net::HttpClient;

/// Longest token considered (bounds the work an unauthenticated caller can cause).
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Floor of the background refresh pause (a zero `jwks_refresh_min` must not spin).
const MIN_REFRESH_PAUSE: Duration = Duration::from_millis(10);

/// Counters for the metrics module: plain atomics, read with `Ordering::Relaxed`.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Successful JWKS fetches (start, background and on-demand).
    pub jwks_fetch_ok: AtomicU64,
    /// Failed JWKS fetches.
    pub jwks_fetch_failed: AtomicU64,
    /// On-demand refetches caused by unknown `kid`s (after cooldown and coalescing).
    pub jwks_unknown_kid_refetches: AtomicU64,
    /// Usable keys held after the last successful fetch (a gauge).
    pub keys_held: AtomicU64,
    /// Calls made to the introspection endpoint.
    pub introspection_calls: AtomicU64,
    /// Introspection calls that failed (5xx, timeout, bad answer): each one a 401.
    pub introspection_failures: AtomicU64,
    /// Introspection look-ups answered from the cache.
    pub introspection_cache_hits: AtomicU64,
    /// Introspection look-ups not in the cache (coalesced waiters included).
    pub introspection_cache_misses: AtomicU64,
}

/// Turns the `Authorization` header of a request into a [`Grant`], or refuses.
pub struct Authenticator {
    realm: String,
    jwt: Option<JwtVerifier>,
    introspection: Option<Introspector>,
    always_introspect: bool,
    stats: Arc<AuthStats>,
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// SHA-256 of the raw token: the only form in which a token is kept (caches, paging links).
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether the query string has an `access_token` parameter (raw or percent-encoded name).
fn has_query_token(query: &str) -> bool {
    query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        name == "access_token" || crate::pct::decode(name).is_ok_and(|n| n == "access_token")
    })
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| B64TOKEN[usize::from(b)])
}

/// The `b64token` characters (without `=`), as a table: every request's token goes through
/// it byte by byte, and a look-up is several times cheaper than the comparisons.
static B64TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    t
};

/// The bearer token of a request, checked for shape only.
fn bearer<'h>(headers: &'h http::HeaderMap, query: Option<&str>) -> Result<&'h str, AuthError> {
    if query.is_some_and(has_query_token) {
        return Err(AuthError::TokenInQuery);
    }
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(AuthError::MissingToken),
        (Some(v), None) => v,
        (Some(_), Some(_)) => return Err(AuthError::BadAuthorizationHeader),
    };
    let value = value.to_str().map_err(|_| AuthError::Malformed)?.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, …) carries no bearer token: answer with the plain challenge.
        return Err(AuthError::MissingToken);
    }
    let token = token.trim_start_matches(' ');
    if token.len() > MAX_TOKEN_LEN || !is_b64token(token) {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

impl Authenticator {
    /// Builds the authenticator and fetches the JWKS once. A failed first fetch is not an
    /// error: [`Authenticator::readiness`] reports it and JWTs get `KeysStale` until a
    /// background refresh ([`Authenticator::spawn_refresh`]) succeeds.
    /// `default_audience` (the proxy's `public_base_url`) is the accepted `aud` unless
    /// `auth.jwt.audience` (or, for introspection answers, `auth.introspection.audience`)
    /// says otherwise.
    pub async fn new(
        cfg: &AuthConfig,
        default_audience: &str,
        client: HttpClient,
    ) -> Result<Authenticator, AuthInitError> {
        if let Some((key, problem)) = cfg.validate().into_iter().next() {
            return Err(AuthInitError::Config(format!("auth.{key}: {problem}")));
        }
        let stats = Arc::new(AuthStats::default());
        // This server's names: a token (JWT or introspected) for another resource server is
        // not one for us.
        let our_audience = cfg
            .jwt
            .as_ref()
            .and_then(|j| j.audience.as_ref())
            .map_or_else(|| vec![default_audience.to_owned()], OneOrMany::to_vec);
        let jwt = match &cfg.jwt {
            None => None,
            Some(j) => {
                let store = KeyStore::new(j, client.clone(), Arc::clone(&stats));
                Some(JwtVerifier::new(
                    j,
                    our_audience.clone(),
                    cfg.claims.clone(),
                    store,
                ))
            }
        };
        let introspection = match &cfg.introspection {
            None => None,
            Some(i) => Some(Introspector::new(
                i,
                i.audience.as_ref().map_or(our_audience, OneOrMany::to_vec),
                cfg.claims.clone(),
                client,
                Arc::clone(&stats),
            )?),
        };
        let always_introspect = cfg.introspection.as_ref().is_some_and(|i| i.always);
        if jwt.is_none() && introspection.is_none() {
            tracing::warn!(
                "neither auth.jwt nor auth.introspection is configured: every request is refused"
            );
        }
        let auth = Authenticator {
            realm: cfg.realm.clone(),
            jwt,
            introspection,
            always_introspect,
            stats,
        };
        if let Some(j) = &auth.jwt {
            // The outcome shows in readiness; the background refresh retries.
            let _ = j.store().refresh().await;
        }
        Ok(auth)
    }

    /// The `realm` for `WWW-Authenticate` challenges.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The counters.
    pub fn stats(&self) -> &AuthStats {
        &self.stats
    }

    /// `Ok` when tokens can be checked; otherwise why not, for `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        match (&self.jwt, &self.introspection) {
            (None, None) => {
                Err("no token verification configured (auth.jwt, auth.introspection)".into())
            }
            (Some(j), _) => j.store().readiness(),
            (None, Some(_)) => Ok(()),
        }
    }

    /// Starts the background JWKS refresh (per `Cache-Control`, bounded; retried after
    /// failures). The task ends when the authenticator is dropped. `None` without `auth.jwt`.
    pub fn spawn_refresh(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.jwt.as_ref()?;
        let weak: Weak<Self> = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            loop {
                let wait = match weak.upgrade() {
                    Some(a) => a.jwt.as_ref().map(|j| j.store().next_refresh()),
                    None => return,
                };
                let Some(wait) = wait else { return };
                tokio::time::sleep(wait.max(MIN_REFRESH_PAUSE)).await;
                let Some(a) = weak.upgrade() else { return };
                if let Some(j) = &a.jwt {
                    let _ = j.store().refresh().await;
                }
            }
        }))
    }

    /// Authenticates one request: its headers and raw query string (to refuse
    /// `access_token=`). Never logs or returns the token.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Arc<Grant>, AuthError> {
        let result = self.check(headers, query).await;
        if let Err(e) = &result {
            tracing::debug!(reason = e.code(), "token refused");
        }
        result
    }

    async fn check(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Arc<Grant>, AuthError> {
        let token = bearer(headers, query)?;
        let hash = token_hash(token);
        match (&self.jwt, &self.introspection) {
            (None, None) => Err(AuthError::NotConfigured),
            (Some(j), None) => j.verify_cached(token, hash, now_secs()).await,
            (None, Some(i)) => i.introspect(token, hash).await,
            (Some(j), Some(i)) => {
                if self.always_introspect {
                    return i.introspect(token, hash).await;
                }
                // A token verified before is ours: skip decoding its payload again.
                let now = now_secs();
                if let Some(hit) = j.cached(hash, now) {
                    return hit;
                }
                if jwt::peek_issuer(token).is_some_and(|iss| iss == j.issuer) {
                    j.verify_cached(token, hash, now).await
                } else {
                    i.introspect(token, hash).await
                }
            }
        }
    }
}

/// Entry points for the fuzz targets in `fuzz/`: the token parsing an unauthenticated caller
/// reaches before any signature check. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use serde_json::{Map, Value};

    use jsonwebtoken::Algorithm;

    use super::{ClaimsMapping, TokenKind, bearer, jwks, jwt};

    /// Runs every pure parser on untrusted token material: the `Authorization` header
    /// shape check, the unverified issuer peek and header decoding (ours and
    /// jsonwebtoken's), a JWKS document, and the claims mapping (default names and JSON
    /// Pointer names). Returns whether the claims became a grant.
    pub fn token(authorization: &[u8], claims: &[u8], jwks_doc: &[u8]) -> bool {
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_bytes(authorization) {
            headers.insert(http::header::AUTHORIZATION, v);
        }
        if let Ok(token) = bearer(&headers, None) {
            let _ = jwt::peek_issuer(token);
            let _ = jsonwebtoken::decode_header(token);
        }
        let allow = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
        let _ = jwks::KeySet::parse(jwks_doc, &allow);
        let Ok(claims) = serde_json::from_slice::<Map<String, Value>>(claims) else {
            return false;
        };
        let pointers = ClaimsMapping {
            scope: vec!["/realm_access/roles".into(), "scp".into()],
            patient: vec!["/ctx/patient".into(), "/a~1b/c~0d".into()],
            ..ClaimsMapping::default()
        };
        let _ = super::claims::grant_from_claims(&claims, &pointers, TokenKind::Jwt, [0; 32]);
        super::claims::grant_from_claims(
            &claims,
            &ClaimsMapping::default(),
            TokenKind::Jwt,
            [0; 32],
        )
        .is_ok()
    }
}

#[cfg(test)]
mod tests;
