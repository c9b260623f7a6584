//! The issuer's signing keys: fetched at start, refreshed in the background per
//! `Cache-Control`, refetched on an unknown `kid` at most once per cooldown (concurrent
//! requests share that one fetch), and refused once older than the maximum staleness.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

use super::AuthStats;
use super::config::JwtConfig;
use crate::net::{self, HttpClient};

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT: usize = 512 * 1024;
/// Refresh interval when the JWKS response says nothing about caching (then clamped).
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Longest wait before retrying a failed fetch in the background.
const MAX_FAILURE_RETRY: Duration = Duration::from_secs(10);

/// One usable verification key and the algorithms it may verify (already intersected with
/// the allow-list: never empty).
pub(crate) struct KeyEntry {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: Vec<Algorithm>,
}

/// What a key lookup found.
pub(crate) enum Found<'a> {
    /// A key that may verify this algorithm.
    Key(&'a KeyEntry),
    /// Keys with this `kid` exist, but none may verify this algorithm.
    WrongAlgorithm,
    /// No key with this `kid` (or, without `kid`, not exactly one candidate).
    Missing,
}

/// An immutable snapshot of the usable keys.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<KeyEntry>,
}

impl KeySet {
    /// The key for `kid` and `alg`. Without a `kid`, only an unambiguous single candidate.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Found<'_> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let mut any = false;
                for k in named.by_ref() {
                    any = true;
                    if k.algorithms.contains(&alg) {
                        return Found::Key(k);
                    }
                }
                if any {
                    Found::WrongAlgorithm
                } else {
                    Found::Missing
                }
            }
            None => {
                let mut c = self.keys.iter().filter(|k| k.algorithms.contains(&alg));
                match (c.next(), c.next()) {
                    (Some(k), None) => Found::Key(k),
                    _ => Found::Missing,
                }
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Parses a JWKS document, keeping only keys usable for signature verification with an
    /// allowed algorithm. One odd key does not spoil the others.
    pub(crate) fn parse(body: &[u8], allow: &[Algorithm]) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Raw {
            keys: Vec<Value>,
        }
        let raw: Raw =
            serde_json::from_slice(body).map_err(|e| format!("JWKS is not a JWK set: {e}"))?;
        let keys = raw
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter_map(|jwk| entry(&jwk, allow))
            .collect();
        Ok(KeySet { keys })
    }
}

/// The algorithms a JWK may verify: decided by its key type and curve, narrowed by its own
/// `alg`, intersected with the allow-list. `None` for keys not meant for signatures.
fn entry(jwk: &Jwk, allow: &[Algorithm]) -> Option<KeyEntry> {
    if let Some(u) = &jwk.common.public_key_use {
        if *u != PublicKeyUse::Signature {
            return None;
        }
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return None;
        }
    }
    use Algorithm::*;
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[ES256],
            EllipticCurve::P384 => &[ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[EdDSA],
            _ => &[],
        },
        // Symmetric and unknown key types never verify anything here.
        _ => &[],
    };
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(key_algorithm(a)?),
    };
    let algorithms: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|a| allow.contains(a) && declared.is_none_or(|d| d == *a))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(KeyEntry {
        kid: jwk.common.key_id.clone(),
        key,
        algorithms,
    })
}

/// A JWK `alg` as a signature algorithm; encryption and unknown algorithms are `None`.
fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// `Cache-Control: max-age` as the next refresh interval, clamped to `[min, max]`.
fn refresh_interval(headers: &http::HeaderMap, min: Duration, max: Duration) -> Duration {
    let mut wanted = DEFAULT_REFRESH;
    for v in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',').map(str::trim) {
            if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
                wanted = Duration::ZERO;
            } else if let Some((k, n)) = d.split_once('=') {
                if k.trim().eq_ignore_ascii_case("max-age") {
                    if let Ok(n) = n.trim().trim_matches('"').parse::<u64>() {
                        wanted = Duration::from_secs(n);
                    }
                }
            }
        }
    }
    wanted.clamp(min, max)
}

/// State only touched while holding the fetch lock.
struct FetchState {
    /// When the last on-demand (unknown `kid`) fetch started.
    last_on_demand: Option<Instant>,
}

/// The key store of one issuer.
pub(crate) struct KeyStore {
    client: HttpClient,
    issuer: String,
    jwks_uri: Mutex<Option<String>>,
    allow: Vec<Algorithm>,
    refresh_min: Duration,
    refresh_max: Duration,
    cooldown: Duration,
    max_staleness: Duration,
    timeout: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// Milliseconds after `epoch` of the last successful fetch, plus one; 0 = never.
    last_success: AtomicU64,
    epoch: Instant,
    /// Bumped after every fetch attempt: waiters on the fetch lock know one happened.
    generation: AtomicU64,
    /// Interval until the next background refresh, in milliseconds.
    next_refresh_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    fetch: tokio::sync::Mutex<FetchState>,
    stats: Arc<AuthStats>,
}

impl KeyStore {
    pub(crate) fn new(cfg: &JwtConfig, client: HttpClient, stats: Arc<AuthStats>) -> KeyStore {
        KeyStore {
            client,
            issuer: cfg.issuer.clone(),
            jwks_uri: Mutex::new(cfg.jwks_uri.clone()),
            allow: cfg.algorithms.iter().map(|a| a.jwt()).collect(),
            refresh_min: cfg.jwks_refresh_min.0,
            refresh_max: cfg.jwks_refresh_max.0,
            cooldown: cfg.unknown_kid_cooldown.0,
            max_staleness: cfg.max_staleness.0,
            timeout: cfg.timeout.0,
            keys: RwLock::new(Arc::new(KeySet::default())),
            last_success: AtomicU64::new(0),
            epoch: Instant::now(),
            generation: AtomicU64::new(0),
            next_refresh_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
            fetch: tokio::sync::Mutex::new(FetchState {
                last_on_demand: None,
            }),
            stats,
        }
    }

    /// Changes whenever a fetch happened: results verified under an older generation are
    /// verified again (a key may have been withdrawn).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current keys (a cheap snapshot).
    pub(crate) fn current(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => Arc::clone(&k),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Time since the last successful fetch, `None` if there never was one.
    fn age(&self) -> Option<Duration> {
        match self.last_success.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms - 1)),
            ),
        }
    }

    /// Whether keys may be used: fetched at least once and not older than the maximum staleness.
    pub(crate) fn fresh_enough(&self) -> bool {
        self.age().is_some_and(|age| age <= self.max_staleness)
    }

    /// `Ok` when tokens can be verified; otherwise why not (for `/readyz`).
    pub(crate) fn readiness(&self) -> Result<(), String> {
        let last_error = lock(&self.last_error).clone().unwrap_or_default();
        match self.age() {
            None => Err(format!(
                "JWKS of {} not fetched yet: {last_error}",
                self.issuer
            )),
            Some(age) if age > self.max_staleness => Err(format!(
                "JWKS of {} is stale: last fetched {}s ago (max {}s): {last_error}",
                self.issuer,
                age.as_secs(),
                self.max_staleness.as_secs()
            )),
            Some(_) if self.current().len() == 0 => {
                Err(format!("JWKS of {} holds no usable key", self.issuer))
            }
            Some(_) => Ok(()),
        }
    }

    /// Fetches once, serialised with every other fetch.
    pub(crate) async fn refresh(&self) -> Result<(), String> {
        let _guard = self.fetch.lock().await;
        self.fetch_locked().await
    }

    /// Refetches after an unknown `kid`, unless a fetch already happened while this caller
    /// waited (coalescing) or the last on-demand fetch is younger than the cooldown.
    pub(crate) async fn refetch_for_unknown_kid(&self) {
        let seen = self.generation.load(Ordering::Acquire);
        let mut state = self.fetch.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return;
        }
        if state
            .last_on_demand
            .is_some_and(|t| t.elapsed() < self.cooldown)
        {
            return;
        }
        state.last_on_demand = Some(Instant::now());
        self.stats
            .jwks_unknown_kid_refetches
            .fetch_add(1, Ordering::Relaxed);
        // The outcome is visible through `current()` and readiness.
        let _ = self.fetch_locked().await;
    }

    /// Interval until the next background refresh.
    pub(crate) fn next_refresh(&self) -> Duration {
        Duration::from_millis(self.next_refresh_ms.load(Ordering::Relaxed))
    }

    /// Installs keys as if just fetched, and starts the unknown-`kid` cooldown so that
    /// socket-free tests never fetch.
    #[cfg(test)]
    pub(crate) fn install(&self, set: KeySet) {
        if let Ok(mut k) = self.keys.write() {
            *k = Arc::new(set);
        }
        self.last_success.store(1, Ordering::Release);
        if let Ok(mut state) = self.fetch.try_lock() {
            state.last_on_demand = Some(Instant::now());
        }
    }

    async fn fetch_locked(&self) -> Result<(), String> {
        let result = self.fetch_once().await;
        match &result {
            Ok((set, next)) => {
                let n = set.len();
                match self.keys.write() {
                    Ok(mut k) => *k = Arc::clone(set),
                    Err(poisoned) => *poisoned.into_inner() = Arc::clone(set),
                }
                let now_ms =
                    u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
                self.last_success.store(now_ms + 1, Ordering::Release);
                *lock(&self.last_error) = None;
                self.next_refresh_ms.store(
                    u64::try_from(next.as_millis()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                self.stats.jwks_fetch_ok.fetch_add(1, Ordering::Relaxed);
                self.stats.keys_held.store(n as u64, Ordering::Relaxed);
                tracing::debug!(issuer = %self.issuer, keys = n, "JWKS fetched");
            }
            Err(e) => {
                *lock(&self.last_error) = Some(e.clone());
                let retry = self.refresh_min.min(MAX_FAILURE_RETRY);
                self.next_refresh_ms.store(
                    u64::try_from(retry.as_millis()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                self.stats.jwks_fetch_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(issuer = %self.issuer, error = %e, "JWKS fetch failed");
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        result.map(|_| ())
    }

    async fn fetch_once(&self) -> Result<(Arc<KeySet>, Duration), String> {
        let uri = self.jwks_uri().await?;
        let resp = self.get(&uri).await?;
        let set = KeySet::parse(resp.body(), &self.allow)?;
        let next = refresh_interval(resp.headers(), self.refresh_min, self.refresh_max);
        Ok((Arc::new(set), next))
    }

    /// The configured `jwks_uri`, or the one from OIDC discovery (remembered once found).
    async fn jwks_uri(&self) -> Result<String, String> {
        if let Some(u) = lock(&self.jwks_uri).clone() {
            return Ok(u);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let resp = self.get(&url).await?;
        #[derive(Deserialize)]
        struct Discovery {
            issuer: Option<String>,
            jwks_uri: Option<String>,
        }
        let d: Discovery = serde_json::from_slice(resp.body())
            .map_err(|e| format!("{url}: not an OpenID configuration: {e}"))?;
        if d.issuer.as_deref() != Some(self.issuer.as_str()) {
            return Err(format!(
                "{url}: issuer {:?} is not the configured issuer",
                d.issuer.unwrap_or_default()
            ));
        }
        let uri = d.jwks_uri.ok_or_else(|| format!("{url}: no jwks_uri"))?;
        *lock(&self.jwks_uri) = Some(uri.clone());
        Ok(uri)
    }

    async fn get(&self, url: &str) -> Result<http::Response<Bytes>, String> {
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(crate::body::full(Bytes::new()))
            .map_err(|e| format!("{url}: {e}"))?;
        let resp = net::fetch(&self.client, req, self.timeout, MAX_DOCUMENT)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        Ok(resp)
    }
}

/// Locks a std mutex, ignoring poisoning (the data are plain values, always consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    fn rsa(extra: Value) -> Value {
        let mut k = json!({"kty": "RSA", "kid": "r1", "n": N, "e": "AQAB"});
        if let (Value::Object(k), Value::Object(e)) = (&mut k, extra) {
            k.extend(e);
        }
        k
    }

    fn parse(keys: Vec<Value>, allow: &[Algorithm]) -> KeySet {
        KeySet::parse(json!({ "keys": keys }).to_string().as_bytes(), allow).unwrap()
    }

    #[test]
    fn key_type_decides_the_algorithms() {
        let set = parse(vec![rsa(json!({}))], &[Algorithm::RS256, Algorithm::ES256]);
        assert!(matches!(
            set.find(Some("r1"), Algorithm::RS256),
            Found::Key(_)
        ));
        assert!(matches!(
            set.find(Some("r1"), Algorithm::ES256),
            Found::WrongAlgorithm
        ));
        assert!(matches!(
            set.find(Some("r1"), Algorithm::HS256),
            Found::WrongAlgorithm
        ));
        assert!(matches!(
            set.find(Some("r2"), Algorithm::RS256),
            Found::Missing
        ));
        // Without kid: the single candidate.
        assert!(matches!(set.find(None, Algorithm::RS256), Found::Key(_)));
        // The key's own alg narrows further.
        let set = parse(
            vec![rsa(json!({"alg": "PS256"}))],
            &[Algorithm::RS256, Algorithm::PS256],
        );
        assert!(matches!(
            set.find(Some("r1"), Algorithm::RS256),
            Found::WrongAlgorithm
        ));
        assert!(matches!(
            set.find(Some("r1"), Algorithm::PS256),
            Found::Key(_)
        ));
    }

    #[test]
    fn unusable_keys_are_dropped_and_others_kept() {
        let set = parse(
            vec![
                json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}),
                rsa(json!({"kid": "enc", "use": "enc"})),
                rsa(json!({"kid": "ops", "key_ops": ["encrypt"]})),
                rsa(json!({"kid": "oaep", "alg": "RSA-OAEP"})),
                rsa(json!({"kid": "rs512", "alg": "RS512"})),
                json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"}),
                json!({"kty": "weird"}),
                json!(42),
                rsa(json!({})),
            ],
            &[Algorithm::RS256],
        );
        assert_eq!(set.len(), 1);
        assert!(matches!(
            set.find(Some("r1"), Algorithm::RS256),
            Found::Key(_)
        ));
        assert!(matches!(
            set.find(Some("h"), Algorithm::HS256),
            Found::Missing
        ));
        assert!(KeySet::parse(b"{}", &[Algorithm::RS256]).is_err());
        assert!(KeySet::parse(b"nope", &[Algorithm::RS256]).is_err());
    }

    #[test]
    fn ambiguous_kidless_lookup_is_missing() {
        let set = parse(
            vec![rsa(json!({})), rsa(json!({"kid": "r2"}))],
            &[Algorithm::RS256],
        );
        assert!(matches!(set.find(None, Algorithm::RS256), Found::Missing));
    }

    #[test]
    fn cache_control_is_bounded() {
        let min = Duration::from_secs(60);
        let max = Duration::from_secs(3600);
        let mut h = http::HeaderMap::new();
        assert_eq!(refresh_interval(&h, min, max), DEFAULT_REFRESH);
        h.insert(
            http::header::CACHE_CONTROL,
            "public, max-age=600".parse().unwrap(),
        );
        assert_eq!(refresh_interval(&h, min, max), Duration::from_secs(600));
        h.insert(http::header::CACHE_CONTROL, "max-age=5".parse().unwrap());
        assert_eq!(refresh_interval(&h, min, max), min);
        h.insert(
            http::header::CACHE_CONTROL,
            "max-age=999999".parse().unwrap(),
        );
        assert_eq!(refresh_interval(&h, min, max), max);
        h.insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(refresh_interval(&h, min, max), min);
    }
}
