//! Local verification of JWT access tokens against the issuer's JWKS.
//!
//! Order of checks: shape ⇒ forbidden headers (`jku`, `x5u`, `jwk`, `x5c`, `crit`) ⇒ `alg`
//! in the allow-list ⇒ keys fresh enough ⇒ key by `kid` (one coalesced refetch when
//! unknown) ⇒ the key's own algorithms include `alg` ⇒ signature ⇒ `exp`/`nbf`/`iss`/`aud`
//! (jsonwebtoken) ⇒ `iat` ⇒ claims mapping.

use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::claims::{grant_from_claims, numeric_date};
use super::config::{ClaimsMapping, JwtConfig};
use super::error::AuthError;
use super::grant::{Grant, TokenKind};
use super::jwks::{Found, KeyStore};

/// The header fields this verifier looks at. Present-but-null counts as absent.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    jku: Option<Value>,
    x5u: Option<Value>,
    jwk: Option<Value>,
    x5c: Option<Value>,
    crit: Option<Value>,
}

/// The three base64url segments of a compact JWS, or `None`.
fn segments(token: &str) -> Option<(&str, &str, &str)> {
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) if !h.is_empty() && !p.is_empty() => Some((h, p, s)),
        _ => None,
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(segment: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `iss` of a token that looks like a JWT, without verifying anything: only used to
/// route a token to local verification or to introspection.
pub(crate) fn peek_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let (_, payload, _) = segments(token)?;
    decode_json::<Iss>(payload)?.iss
}

/// Verifies JWTs of one issuer.
pub(crate) struct JwtVerifier {
    pub(crate) issuer: String,
    store: KeyStore,
    allow: Vec<Algorithm>,
    /// One prepared validation per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    leeway: u64,
    mapping: ClaimsMapping,
    /// Grants of tokens already verified, by token hash, with the key generation they were
    /// verified under: a repeat request costs a hash and a lookup, not a signature check.
    verified: moka::sync::Cache<[u8; 32], (Arc<Grant>, u64)>,
}

impl JwtVerifier {
    pub(crate) fn new(
        cfg: &JwtConfig,
        audience: Vec<String>,
        mapping: ClaimsMapping,
        store: KeyStore,
    ) -> JwtVerifier {
        let allow: Vec<Algorithm> = cfg.algorithms.iter().map(|a| a.jwt()).collect();
        let leeway = cfg.leeway.0.as_secs();
        let validations = allow
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_issuer(&[cfg.issuer.as_str()]);
                v.set_audience(&audience);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                (*alg, v)
            })
            .collect();
        JwtVerifier {
            issuer: cfg.issuer.clone(),
            store,
            allow,
            validations,
            leeway,
            mapping,
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cfg.verified_cache_ttl.0)
                .build(),
        }
    }

    /// The grant of a token verified earlier under the current keys, while it has not
    /// expired; keys too stale to trust end it too.
    pub(crate) fn cached(
        &self,
        token_hash: [u8; 32],
        now: u64,
    ) -> Option<Result<Arc<Grant>, AuthError>> {
        let (grant, verified_under) = self.verified.get(&token_hash)?;
        if verified_under != self.store.generation()
            || now > grant.expires_at.saturating_add(self.leeway)
        {
            return None;
        }
        if !self.store.fresh_enough() {
            return Some(Err(AuthError::KeysStale));
        }
        Some(Ok(grant))
    }

    /// [`Self::verify`] behind the cache of verified tokens. A hit is still refused when
    /// the keys went stale, when a JWKS fetch happened since it was verified (a key may
    /// have been withdrawn), or once the token expired.
    pub(crate) async fn verify_cached(
        &self,
        token: &str,
        token_hash: [u8; 32],
        now: u64,
    ) -> Result<Arc<Grant>, AuthError> {
        let generation = self.store.generation();
        if let Some(hit) = self.cached(token_hash, now) {
            return hit;
        }
        let grant = Arc::new(self.verify(token, token_hash, now).await?);
        // `generation` was read before verifying: a fetch during verification makes this
        // entry old on arrival, so it is verified again next time (never trusted longer).
        self.verified
            .insert(token_hash, (Arc::clone(&grant), generation));
        Ok(grant)
    }

    /// Verifies `token` and maps its claims.
    pub(crate) async fn verify(
        &self,
        token: &str,
        token_hash: [u8; 32],
        now: u64,
    ) -> Result<Grant, AuthError> {
        let (header, _, _) = segments(token).ok_or(AuthError::Malformed)?;
        let header: RawHeader = decode_json(header).ok_or(AuthError::Malformed)?;
        if header.jku.is_some()
            || header.x5u.is_some()
            || header.jwk.is_some()
            || header.x5c.is_some()
            || header.crit.is_some()
        {
            return Err(AuthError::ForbiddenHeader);
        }
        let alg = header
            .alg
            .as_deref()
            .and_then(|a| Algorithm::from_str(a).ok())
            .filter(|a| self.allow.contains(a))
            .ok_or(AuthError::DisallowedAlgorithm)?;
        if !self.store.fresh_enough() {
            return Err(AuthError::KeysStale);
        }
        let kid = header.kid.as_deref();
        let mut keys = self.store.current();
        if matches!(keys.find(kid, alg), Found::Missing) && kid.is_some() {
            self.store.refetch_for_unknown_kid().await;
            keys = self.store.current();
        }
        let entry = match keys.find(kid, alg) {
            Found::Key(k) => k,
            Found::WrongAlgorithm => return Err(AuthError::DisallowedAlgorithm),
            Found::Missing => return Err(AuthError::UnknownKey),
        };
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(AuthError::DisallowedAlgorithm)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &entry.key, validation)
            .map_err(|e| map_error(e.kind()))?;
        let claims = data.claims;
        if let Some(iat) = claims.get("iat").filter(|v| !v.is_null()) {
            let iat = numeric_date(iat).ok_or(AuthError::Malformed)?;
            if iat > now.saturating_add(self.leeway) {
                return Err(AuthError::NotYetValid);
            }
        }
        grant_from_claims(&claims, &self.mapping, TokenKind::Jwt, token_hash)
    }

    /// The key store (refreshed in the background, asked for readiness).
    pub(crate) fn store(&self) -> &KeyStore {
        &self.store
    }
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::DisallowedAlgorithm,
        _ => AuthError::Malformed,
    }
}
