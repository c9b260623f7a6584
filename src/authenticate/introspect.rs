//! RFC 7662 introspection of opaque tokens, with a cache keyed by the token's SHA-256:
//! positive answers for min(TTL, `exp`), negative answers briefly, concurrent look-ups of
//! one token coalesced into one call, failures never cached and always a refusal.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use moka::Expiry;
use moka::future::Cache;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use super::AuthStats;
use super::claims::grant_from_claims;
use super::config::{ClaimsMapping, ClientAuth, IntrospectionConfig};
use super::error::{AuthError, AuthInitError};
use super::grant::{Grant, TokenKind};
use super::now_secs;
use crate::net::{self, HttpClient};

/// Largest introspection answer accepted.
const MAX_ANSWER: usize = 64 * 1024;

/// A cached answer.
#[derive(Clone)]
enum Answer {
    Active(Arc<Grant>),
    Refused(AuthError),
}

/// Per-entry lifetime: positive answers until min(TTL, `exp`), negative ones briefly.
struct AnswerExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl Expiry<[u8; 32], Answer> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Answer,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match value {
            Answer::Active(g) => {
                let left = Duration::from_secs(g.expires_at.saturating_sub(now_secs()));
                self.ttl.min(left)
            }
            Answer::Refused(_) => self.negative_ttl,
        })
    }
}

/// The introspection client of one authorization server.
pub(crate) struct Introspector {
    client: HttpClient,
    endpoint: http::Uri,
    client_id: String,
    client_secret: String,
    client_auth: ClientAuth,
    timeout: Duration,
    audience: Option<Vec<String>>,
    mapping: ClaimsMapping,
    cache: Cache<[u8; 32], Answer>,
    stats: Arc<AuthStats>,
}

impl Introspector {
    pub(crate) fn new(
        cfg: &IntrospectionConfig,
        mapping: ClaimsMapping,
        client: HttpClient,
        stats: Arc<AuthStats>,
    ) -> Result<Introspector, AuthInitError> {
        let endpoint: http::Uri = cfg.endpoint.parse().map_err(|e| {
            AuthInitError::Config(format!(
                "auth.introspection.endpoint {:?}: {e}",
                cfg.endpoint
            ))
        })?;
        let client_secret = match (&cfg.client_secret_file, &cfg.client_secret) {
            (Some(path), None) => std::fs::read_to_string(path)
                .map_err(|e| AuthInitError::SecretFile(path.clone(), e))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            (None, Some(s)) => s.clone(),
            _ => {
                return Err(AuthInitError::Config(
                    "auth.introspection needs exactly one of client_secret_file, client_secret"
                        .to_owned(),
                ));
            }
        };
        let cache = Cache::builder()
            .max_capacity(cfg.cache_capacity)
            .expire_after(AnswerExpiry {
                ttl: cfg.cache_ttl.0,
                negative_ttl: cfg.negative_cache_ttl.0,
            })
            .build();
        Ok(Introspector {
            client,
            endpoint,
            client_id: cfg.client_id.clone(),
            client_secret,
            client_auth: cfg.client_auth,
            timeout: cfg.timeout.0,
            audience: cfg.audience.as_ref().map(|a| a.to_vec()),
            mapping,
            cache,
            stats,
        })
    }

    /// The grant for `token`, from the cache or one (shared) introspection call.
    pub(crate) async fn introspect(
        &self,
        token: &str,
        token_hash: [u8; 32],
    ) -> Result<Arc<Grant>, AuthError> {
        let answer = match self.cache.get(&token_hash).await {
            Some(a) => {
                self.stats
                    .introspection_cache_hits
                    .fetch_add(1, Ordering::Relaxed);
                a
            }
            None => {
                self.stats
                    .introspection_cache_misses
                    .fetch_add(1, Ordering::Relaxed);
                self.cache
                    .try_get_with(token_hash, self.call(token, token_hash))
                    .await
                    .map_err(|e| *e)?
            }
        };
        match answer {
            Answer::Active(g) if g.expires_at > now_secs() => Ok(g),
            Answer::Active(_) => Err(AuthError::Expired),
            Answer::Refused(e) => Err(e),
        }
    }

    /// One introspection call. `Err` (not cached) when the endpoint cannot answer;
    /// `Ok(Refused)` (cached briefly) when it answers no.
    async fn call(&self, token: &str, token_hash: [u8; 32]) -> Result<Answer, AuthError> {
        self.stats
            .introspection_calls
            .fetch_add(1, Ordering::Relaxed);
        let unavailable = |why: String| {
            self.stats
                .introspection_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint = %self.endpoint, error = %why, "introspection failed");
            AuthError::IntrospectionUnavailable
        };
        let mut form = format!(
            "token={}&token_type_hint=access_token",
            utf8_percent_encode(token, NON_ALPHANUMERIC)
        );
        let mut req = http::Request::post(self.endpoint.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        match self.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: form-encode both parts before base64.
                let creds = format!(
                    "{}:{}",
                    utf8_percent_encode(&self.client_id, NON_ALPHANUMERIC),
                    utf8_percent_encode(&self.client_secret, NON_ALPHANUMERIC)
                );
                req = req.header(
                    http::header::AUTHORIZATION,
                    format!("Basic {}", STANDARD.encode(creds)),
                );
            }
            ClientAuth::Post => {
                form.push_str(&format!(
                    "&client_id={}&client_secret={}",
                    utf8_percent_encode(&self.client_id, NON_ALPHANUMERIC),
                    utf8_percent_encode(&self.client_secret, NON_ALPHANUMERIC)
                ));
            }
        }
        let req = req
            .body(crate::body::full(Bytes::from(form)))
            .map_err(|e| unavailable(e.to_string()))?;
        let resp = net::fetch(&self.client, req, self.timeout, MAX_ANSWER)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if resp.status() != http::StatusCode::OK {
            return Err(unavailable(format!("HTTP {}", resp.status())));
        }
        let claims: Map<String, Value> = serde_json::from_slice(resp.body())
            .map_err(|e| unavailable(format!("answer is not a JSON object: {e}")))?;
        Ok(self.judge(&claims, token_hash))
    }

    /// An answer ⇒ grant or refusal.
    fn judge(&self, claims: &Map<String, Value>, token_hash: [u8; 32]) -> Answer {
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Answer::Refused(AuthError::Inactive);
        }
        if let (Some(wanted), Some(aud)) = (&self.audience, claims.get("aud")) {
            let ok = match aud {
                Value::String(a) => wanted.contains(a),
                Value::Array(a) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| wanted.iter().any(|w| w == a)),
                _ => false,
            };
            if !ok {
                return Answer::Refused(AuthError::WrongAudience);
            }
        }
        match grant_from_claims(claims, &self.mapping, TokenKind::Introspected, token_hash) {
            Ok(g) if g.expires_at <= now_secs() => Answer::Refused(AuthError::Expired),
            Ok(g) => Answer::Active(Arc::new(g)),
            Err(e) => Answer::Refused(e),
        }
    }
}
