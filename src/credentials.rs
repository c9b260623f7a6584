//! The credentials the proxy presents to the upstream FHIR server (`upstream.auth`), applied
//! by [`crate::forward::Upstream::send`] to every upstream request, and nowhere else.
//!
//! - `basic`: fixed at start.
//! - `bearer`: the token file is re-read when its modification time or size changes
//!   (checked at most once a second), so a sidecar can refresh the token without a restart.
//! - `client_credentials`: a token of the proxy's own from an OAuth 2.0 token endpoint,
//!   cached and refreshed ahead of expiry by exactly one request at a time (the others wait
//!   for it: single flight). Failing to get one is an error for the request — never a
//!   request sent upstream without credentials (fail closed).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use crate::config::{AssertionAlg, ClientCredentialsConfig, TokenClientAuth, UpstreamAuth};
use crate::net::{self, HttpClient};

/// Largest token response accepted.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// The token file is looked at (one `stat`) at most this often.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// After a failed token request, requests fail fast this long instead of each asking the
/// token endpoint again (which would turn an outage of the authorization server into a
/// flood of it).
const FAILURE_COOLDOWN: Duration = Duration::from_secs(2);
/// Lifetime assumed when the token response has no `expires_in` (RFC 6749 makes it
/// optional): short, so a token the server expires sooner is replaced soon.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Lifetime of a client assertion (RFC 7523 wants it short; at most 5 minutes).
const ASSERTION_LIFETIME: u64 = 120;
/// A cached token is not used in its last seconds: it could expire on the way.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// Why credentials could not be set up at start.
#[derive(Debug)]
pub enum CredentialsInitError {
    /// A file named in `upstream.auth` cannot be read.
    File(PathBuf, std::io::Error),
    /// The credential read is not usable in an `Authorization` header.
    NotAHeaderValue(&'static str),
    /// The private key cannot sign a client assertion with the configured algorithm.
    Key(PathBuf, String),
    /// `token_url` is not a URL.
    TokenUrl(String),
}

impl std::fmt::Display for CredentialsInitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialsInitError::File(p, e) => {
                write!(f, "upstream.auth: {}: {e}", p.display())
            }
            CredentialsInitError::NotAHeaderValue(what) => {
                write!(
                    f,
                    "upstream.auth: the {what} is not a valid HTTP header value"
                )
            }
            CredentialsInitError::Key(p, e) => write!(
                f,
                "upstream.auth.private_key_file: {}: cannot sign with it: {e}",
                p.display()
            ),
            CredentialsInitError::TokenUrl(e) => write!(f, "upstream.auth.token_url: {e}"),
        }
    }
}

impl std::error::Error for CredentialsInitError {}

/// Why no credentials could be had for a request (the request is answered 502).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsError {
    /// The token endpoint could not be reached or did not answer in time.
    Unreachable(String),
    /// The token endpoint answered with an error status (and its OAuth `error`, if any).
    Refused(u16, String),
    /// The token endpoint answered 200 with something that is not a usable bearer token.
    BadAnswer(&'static str),
    /// The client assertion could not be signed.
    Assertion(String),
}

impl std::fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialsError::Unreachable(e) => write!(f, "token endpoint unreachable: {e}"),
            CredentialsError::Refused(s, e) => write!(f, "token endpoint answered {s} {e}"),
            CredentialsError::BadAnswer(e) => write!(f, "token endpoint answer unusable: {e}"),
            CredentialsError::Assertion(e) => write!(f, "client assertion: {e}"),
        }
    }
}

impl std::error::Error for CredentialsError {}

/// What the proxy presents upstream.
pub enum Credentials {
    /// Nothing.
    None,
    /// A fixed `Authorization` value (`basic`).
    Fixed(HeaderValue),
    /// A bearer token read from a file, re-read when it changes.
    BearerFile(BearerFile),
    /// An OAuth 2.0 client-credentials token.
    ClientCredentials(Box<TokenSource>),
}

impl Credentials {
    /// From `upstream.auth`; files are read now, so that a missing one stops the start.
    /// `client` carries the token requests (`client_credentials`).
    pub fn new(auth: &UpstreamAuth, client: HttpClient) -> Result<Self, CredentialsInitError> {
        Ok(match auth {
            UpstreamAuth::None => Credentials::None,
            UpstreamAuth::Bearer { token_file } => {
                Credentials::BearerFile(BearerFile::new(token_file.clone())?)
            }
            UpstreamAuth::Basic {
                username,
                password_file,
            } => {
                let password = read_secret(password_file)?;
                let raw = format!("{username}:{password}");
                let value = format!("Basic {}", STANDARD.encode(raw));
                Credentials::Fixed(
                    HeaderValue::from_str(&value)
                        .map_err(|_| CredentialsInitError::NotAHeaderValue("basic credential"))?,
                )
            }
            UpstreamAuth::ClientCredentials(cfg) => {
                Credentials::ClientCredentials(Box::new(TokenSource::new(cfg, client)?))
            }
        })
    }

    /// The `Authorization` value for the next upstream request (`None`: send none).
    pub async fn header(&self) -> Result<Option<HeaderValue>, CredentialsError> {
        match self {
            Credentials::None => Ok(None),
            Credentials::Fixed(v) => Ok(Some(v.clone())),
            Credentials::BearerFile(f) => Ok(Some(f.current())),
            Credentials::ClientCredentials(t) => t.token().await.map(Some),
        }
    }

    /// The upstream answered 401 to a request that carried `used`: a cached token it no
    /// longer accepts (revoked, key rotated) is dropped, so the next request gets a new one.
    pub fn rejected(&self, used: &HeaderValue) {
        if let Credentials::ClientCredentials(t) = self {
            t.forget(used);
        }
    }
}

/// Reads a secret file, without its trailing whitespace (editors add a newline).
fn read_secret(path: &Path) -> Result<String, CredentialsInitError> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| CredentialsInitError::File(path.to_owned(), e))?;
    Ok(raw.trim_end().to_owned())
}

/// `bearer` with `token_file`: the token as last read, and what the file looked like then.
pub struct BearerFile {
    path: PathBuf,
    state: Mutex<FileState>,
}

struct FileState {
    value: HeaderValue,
    /// Modification time and size when `value` was read.
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

impl BearerFile {
    fn new(path: PathBuf) -> Result<Self, CredentialsInitError> {
        let (value, stamp) = Self::read(&path)?;
        Ok(BearerFile {
            path,
            state: Mutex::new(FileState {
                value,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    fn read(path: &Path) -> Result<(HeaderValue, Option<(SystemTime, u64)>), CredentialsInitError> {
        let stamp = file_stamp(path);
        let token = read_secret(path)?;
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| CredentialsInitError::NotAHeaderValue("bearer token"))?;
        Ok((value, stamp))
    }

    /// The token, re-read first when the file changed (looked at most once a second). A
    /// file that is briefly missing or unreadable (a sidecar replacing it) keeps the last
    /// good token: the upstream, not the proxy, decides whether that one is still valid.
    fn current(&self) -> HeaderValue {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.checked.elapsed() < FILE_CHECK_INTERVAL {
            return state.value.clone();
        }
        state.checked = Instant::now();
        let stamp = file_stamp(&self.path);
        if stamp.is_some() && stamp != state.stamp {
            match Self::read(&self.path) {
                Ok((value, stamp)) => {
                    state.value = value;
                    state.stamp = stamp;
                    tracing::info!(file = %self.path.display(), "upstream bearer token re-read");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upstream bearer token file unusable; keeping the last token")
                }
            }
        }
        state.value.clone()
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// How the proxy proves who it is to the token endpoint.
enum ClientProof {
    /// `client_secret_basic` or `client_secret_post` with this secret.
    Secret(TokenClientAuth, String),
    /// `private_key_jwt` with this key and header (boxed: both are large).
    Jwt(Box<(EncodingKey, Header)>),
}

/// A client-credentials token source: one cached token, refreshed by one request at a time.
pub struct TokenSource {
    client: HttpClient,
    token_url: http::Uri,
    /// The token URL as configured: the client assertion's `aud`.
    audience: String,
    client_id: String,
    /// Form parameters sent with every token request (`grant_type`, `scope`, …).
    form: String,
    proof: ClientProof,
    timeout: Duration,
    /// The cached token (read without waiting for a refresh in flight).
    cache: Mutex<Cache>,
    /// Held by the one request refreshing the token; the others wait on it.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    token: Option<Cached>,
    /// When the last token request failed, and why.
    failed: Option<(Instant, CredentialsError)>,
}

#[derive(Clone)]
struct Cached {
    value: HeaderValue,
    /// Refresh from then on (ahead of expiry).
    refresh_at: Instant,
    /// Never used from then on.
    expires_at: Instant,
}

impl TokenSource {
    fn new(
        cfg: &ClientCredentialsConfig,
        client: HttpClient,
    ) -> Result<Self, CredentialsInitError> {
        let token_url: http::Uri = cfg
            .token_url
            .parse()
            .map_err(|e: http::uri::InvalidUri| CredentialsInitError::TokenUrl(e.to_string()))?;
        let proof = match cfg.client_auth {
            TokenClientAuth::ClientSecretBasic | TokenClientAuth::ClientSecretPost => {
                let path = cfg.client_secret_file.as_deref().ok_or_else(|| {
                    CredentialsInitError::File(
                        PathBuf::from("client_secret_file"),
                        std::io::Error::other("not configured"),
                    )
                })?;
                ClientProof::Secret(cfg.client_auth, read_secret(path)?)
            }
            TokenClientAuth::PrivateKeyJwt => {
                let path = cfg.private_key_file.as_deref().ok_or_else(|| {
                    CredentialsInitError::File(
                        PathBuf::from("private_key_file"),
                        std::io::Error::other("not configured"),
                    )
                })?;
                let pem = std::fs::read(path)
                    .map_err(|e| CredentialsInitError::File(path.to_owned(), e))?;
                let (key, alg) = match cfg.signing_alg {
                    AssertionAlg::RS256 => (EncodingKey::from_rsa_pem(&pem), Algorithm::RS256),
                    AssertionAlg::ES256 => (EncodingKey::from_ec_pem(&pem), Algorithm::ES256),
                };
                let key =
                    key.map_err(|e| CredentialsInitError::Key(path.to_owned(), e.to_string()))?;
                let mut header = Header::new(alg);
                header.kid = cfg.kid.clone();
                // A key that cannot sign is found now, not at the first request.
                jsonwebtoken::encode(&header, &serde_json::json!({"probe": true}), &key)
                    .map_err(|e| CredentialsInitError::Key(path.to_owned(), e.to_string()))?;
                ClientProof::Jwt(Box::new((key, header)))
            }
        };
        let mut form = String::from("grant_type=client_credentials");
        for (name, value) in [
            ("scope", &cfg.scope),
            ("audience", &cfg.audience),
            ("resource", &cfg.resource),
        ] {
            if let Some(v) = value {
                form.push_str(&format!("&{name}={}", enc(v)));
            }
        }
        Ok(TokenSource {
            client,
            token_url,
            audience: cfg.token_url.clone(),
            client_id: cfg.client_id.clone(),
            form,
            proof,
            timeout: cfg.timeout.0,
            cache: Mutex::new(Cache::default()),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A token that is not due for refresh, if cached.
    fn fresh(&self, now: Instant) -> Option<HeaderValue> {
        let cache = self.cache();
        cache
            .token
            .as_ref()
            .filter(|t| now < t.refresh_at && now < t.expires_at)
            .map(|t| t.value.clone())
    }

    /// The `Authorization` value: the cached token, or one refresh shared by every request
    /// that needs it. A refresh that fails while the cached token is still valid keeps
    /// that token (and tries again after [`FAILURE_COOLDOWN`]).
    pub async fn token(&self) -> Result<HeaderValue, CredentialsError> {
        if let Some(v) = self.fresh(Instant::now()) {
            return Ok(v);
        }
        let _turn = self.refreshing.lock().await;
        let now = Instant::now();
        // Whoever held the lock before may have refreshed (or just failed) meanwhile.
        if let Some(v) = self.fresh(now) {
            return Ok(v);
        }
        let still_valid = {
            let cache = self.cache();
            let valid = cache
                .token
                .as_ref()
                .filter(|t| now < t.expires_at)
                .map(|t| t.value.clone());
            if let Some((at, e)) = &cache.failed
                && now.duration_since(*at) < FAILURE_COOLDOWN
            {
                // The last request failed moments ago: its error stands, not asked again.
                return valid.ok_or_else(|| e.clone());
            }
            valid
        };
        match self.fetch().await {
            Ok(fresh) => {
                let value = fresh.value.clone();
                let mut cache = self.cache();
                cache.token = Some(fresh);
                cache.failed = None;
                Ok(value)
            }
            Err(e) => {
                tracing::warn!(token_url = %self.token_url, error = %e, still_valid = still_valid.is_some(), "upstream token request failed");
                self.cache().failed = Some((Instant::now(), e.clone()));
                still_valid.ok_or(e)
            }
        }
    }

    /// Drops the cached token if it is `used` (the upstream refused it).
    fn forget(&self, used: &HeaderValue) {
        let mut cache = self.cache();
        if cache.token.as_ref().is_some_and(|t| t.value == *used) {
            tracing::warn!("the upstream refused the proxy's token (401): fetching a new one");
            cache.token = None;
        }
    }

    /// One token request.
    async fn fetch(&self) -> Result<Cached, CredentialsError> {
        let mut form = self.form.clone();
        let mut req = http::Request::post(self.token_url.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        match &self.proof {
            ClientProof::Secret(TokenClientAuth::ClientSecretPost, secret) => {
                form.push_str(&format!(
                    "&client_id={}&client_secret={}",
                    enc(&self.client_id),
                    enc(secret)
                ));
            }
            ClientProof::Secret(_, secret) => {
                // RFC 6749 §2.3.1: form-encode both parts before base64.
                let creds = format!("{}:{}", enc(&self.client_id), enc(secret));
                req = req.header(
                    http::header::AUTHORIZATION,
                    format!("Basic {}", STANDARD.encode(creds)),
                );
            }
            ClientProof::Jwt(jwt) => {
                let (key, header) = &**jwt;
                let assertion = self.assertion(key, header)?;
                form.push_str(&format!(
                    "&client_id={}&client_assertion_type={}&client_assertion={}",
                    enc(&self.client_id),
                    enc("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                    enc(&assertion)
                ));
            }
        }
        let req = req
            .body(crate::body::full(Bytes::from(form)))
            .map_err(|e| CredentialsError::Unreachable(e.to_string()))?;
        let started = Instant::now();
        let resp = net::fetch(&self.client, req, self.timeout, MAX_TOKEN_RESPONSE)
            .await
            .map_err(|e| CredentialsError::Unreachable(e.to_string()))?;
        let answer: Option<Map<String, Value>> = serde_json::from_slice(resp.body()).ok();
        if resp.status() != http::StatusCode::OK {
            let error = answer
                .as_ref()
                .and_then(|a| a.get("error"))
                .and_then(Value::as_str)
                .map(|e| e.chars().take(64).collect())
                .unwrap_or_default();
            return Err(CredentialsError::Refused(resp.status().as_u16(), error));
        }
        let answer = answer.ok_or(CredentialsError::BadAnswer("not a JSON object"))?;
        parse_token_response(&answer, started)
    }

    /// An RFC 7523 client assertion: iss = sub = client id, aud = the token URL, a random
    /// `jti`, valid for [`ASSERTION_LIFETIME`] seconds.
    fn assertion(&self, key: &EncodingKey, header: &Header) -> Result<String, CredentialsError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|e| CredentialsError::Assertion(e.to_string()))?
            .as_secs();
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti)
            .map_err(|_| CredentialsError::Assertion("no randomness for jti".into()))?;
        let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.audience,
            "jti": jti,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        });
        jsonwebtoken::encode(header, &claims, key)
            .map_err(|e| CredentialsError::Assertion(e.to_string()))
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// A 200 token response ⇒ the cached token: a bearer `access_token`, valid for
/// `expires_in` from when the request was sent, refreshed at 80 % of that or 60 s before
/// expiry, whichever is earlier (but not before half of it: a very short-lived token must
/// not turn every request into a token request).
fn parse_token_response(
    answer: &Map<String, Value>,
    requested: Instant,
) -> Result<Cached, CredentialsError> {
    let token = answer
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or(CredentialsError::BadAnswer("no access_token"))?;
    match answer.get("token_type").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(CredentialsError::BadAnswer("token_type is not Bearer")),
        None => return Err(CredentialsError::BadAnswer("no token_type")),
    }
    let lifetime = match answer.get("expires_in") {
        None => DEFAULT_LIFETIME,
        Some(v) => {
            let secs = v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .ok_or(CredentialsError::BadAnswer("expires_in is not a number"))?;
            Duration::from_secs(secs.min(365 * 86400))
        }
    };
    let value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| CredentialsError::BadAnswer("access_token is not a header value"))?;
    let (refresh_after, usable) = refresh_schedule(lifetime);
    Ok(Cached {
        value,
        refresh_at: requested + refresh_after,
        expires_at: requested + usable,
    })
}

/// `(refresh after, usable for)` for a token valid for `lifetime`: usable until
/// [`EXPIRY_MARGIN`] before it expires (a quarter of a very short lifetime).
fn refresh_schedule(lifetime: Duration) -> (Duration, Duration) {
    let eighty = lifetime.mul_f64(0.8);
    let minute_before = lifetime.saturating_sub(Duration::from_secs(60));
    let refresh = eighty.min(minute_before).max(lifetime / 2);
    (refresh, lifetime - EXPIRY_MARGIN.min(lifetime / 4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refresh_is_ahead_of_expiry() {
        let s = |n| refresh_schedule(Duration::from_secs(n)).0.as_secs();
        assert_eq!(s(3600), 2880, "80 % is earlier than a minute before");
        assert_eq!(s(200), 140, "a minute before is earlier than 80 %");
        assert_eq!(s(30), 15, "never before half the lifetime");
        let (refresh, usable) = refresh_schedule(Duration::from_secs(2));
        assert!(
            refresh < usable && !usable.is_zero(),
            "{refresh:?} {usable:?}"
        );
        assert_eq!(
            refresh_schedule(Duration::from_secs(3600)).1.as_secs(),
            3595
        );
    }

    fn answer(v: Value) -> Result<Cached, CredentialsError> {
        let Value::Object(m) = v else { panic!() };
        parse_token_response(&m, Instant::now())
    }

    #[test]
    fn token_responses() {
        let ok = answer(json!({"access_token": "abc", "token_type": "bearer", "expires_in": 100}))
            .unwrap();
        assert_eq!(ok.value, "Bearer abc");
        assert!(ok.refresh_at < ok.expires_at);
        assert!(answer(json!({"access_token": "abc", "token_type": "Bearer"})).is_ok());
        assert_eq!(
            answer(json!({"token_type": "Bearer"})).err(),
            Some(CredentialsError::BadAnswer("no access_token"))
        );
        assert_eq!(
            answer(json!({"access_token": "a", "token_type": "DPoP"})).err(),
            Some(CredentialsError::BadAnswer("token_type is not Bearer"))
        );
        assert!(answer(json!({"access_token": "a\nb", "token_type": "Bearer"})).is_err());
        assert!(
            answer(json!({"access_token": "a", "token_type": "Bearer", "expires_in": "x"}))
                .is_err()
        );
    }

    #[tokio::test]
    async fn bearer_file_is_reread_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("sg-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "one\n").unwrap();
        let creds = Credentials::new(
            &UpstreamAuth::Bearer {
                token_file: path.clone(),
            },
            crate::net::client(&Default::default()).unwrap(),
        )
        .unwrap();
        assert_eq!(creds.header().await.unwrap().unwrap(), "Bearer one");
        std::fs::write(&path, "second\n").unwrap();
        // Within the check interval the cached token is used without a look at the file.
        assert_eq!(creds.header().await.unwrap().unwrap(), "Bearer one");
        std::thread::sleep(FILE_CHECK_INTERVAL + Duration::from_millis(50));
        assert_eq!(creds.header().await.unwrap().unwrap(), "Bearer second");
        // Briefly missing: the last good token stays.
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(FILE_CHECK_INTERVAL + Duration::from_millis(50));
        assert_eq!(creds.header().await.unwrap().unwrap(), "Bearer second");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
