//! Authentication end to end: the smartgate binary in front of the test bed's REAL
//! authorization server (oidc-provider): tokens it issued, its JWKS, its introspection and
//! revocation endpoints, and its failure modes.
//!
//! Tests that flip a mode of the shared authorization server (JWKS or introspection down,
//! key rotation) or count its JWKS fetches hold [`exclusive`]; every other test holds
//! [`shared`], so they never overlap with a flipped mode. The exclusive guard restores
//! both modes when dropped, even when the test fails.

mod common;

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{Proxy, Resp, TokenReq, authority, bed, enc, http, path_of};
use serde_json::{Value, json};

const SCOPE: &str = "patient/Patient.rs launch/patient";
const OTHER_AUD: &str = "http://other.example/fhir";

static AS_MODES: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    AS_MODES.read().unwrap_or_else(|e| e.into_inner())
}

/// Sole use of the authorization server's modes and counters; restores them on drop.
struct Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>);

impl Drop for Exclusive {
    fn drop(&mut self) {
        assert_eq!(bed().control("POST", "jwks?mode=up").status, 200);
        assert_eq!(bed().control("POST", "introspection?mode=up").status, 200);
    }
}

fn exclusive() -> Exclusive {
    let guard = AS_MODES.write().unwrap_or_else(|e| e.into_inner());
    // A previous test that panicked before its guard existed must not leak a mode.
    let stats = bed().control("GET", "stats").json();
    assert_eq!(stats["jwks_mode"], "up");
    assert_eq!(stats["introspection_mode"], "up");
    Exclusive(guard)
}

fn jwks_fetches() -> u64 {
    bed().control("GET", "stats").json()["jwks_fetches"]
        .as_u64()
        .unwrap()
}

/// The `auth:` section the harness would write, with extra keys for `jwt:` and
/// `introspection:` (each a list of `key: value` lines).
fn auth_yaml(issuer: &str, jwt_extra: &[&str], intro_extra: &[&str]) -> String {
    let b = bed();
    let mut y = format!(
        "auth:\n  jwt:\n    issuer: {issuer}\n    jwks_uri: {}\n",
        b.var("AS_JWKS")
    );
    for l in jwt_extra {
        y.push_str(&format!("    {l}\n"));
    }
    y.push_str(&format!(
        "  introspection:\n    endpoint: {}\n    client_id: {}\n    client_secret: \"{}\"\n",
        b.var("AS_INTROSPECT"),
        b.var("AS_INTROSPECT_CLIENT_ID"),
        b.var("AS_INTROSPECT_CLIENT_SECRET"),
    ));
    for l in intro_extra {
        y.push_str(&format!("    {l}\n"));
    }
    y
}

fn proxy_with(jwt_extra: &[&str], intro_extra: &[&str]) -> Proxy {
    Proxy::start_with(
        "",
        None,
        Some(&auth_yaml(bed().var("AS_ISSUER"), jwt_extra, intro_extra)),
    )
}

/// A token for pt-01 that can read its Patient resource.
fn good(p: &Proxy) -> String {
    p.token(SCOPE, Some("pt-01"))
}

fn opaque(p: &Proxy) -> String {
    let t = p.mint(TokenReq {
        scope: SCOPE,
        patient: Some("pt-01"),
        opaque: true,
        ..Default::default()
    });
    assert_eq!(t.split('.').count(), 1, "an opaque token, not a JWT: {t}");
    t
}

fn jwt_part(token: &str, i: usize) -> Value {
    let seg = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap()
}

fn with_header(token: &str, header: &Value) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    parts[0] = &h;
    parts.join(".")
}

/// The audit line of a response (matched by `X-Request-Id`).
fn audit_of(p: &Proxy, r: &Resp) -> Value {
    let id = r.header("x-request-id").expect("x-request-id");
    p.audit_lines()
        .into_iter()
        .find(|l| l["request_id"] == id)
        .unwrap_or_else(|| panic!("no audit line for request {id}"))
}

/// No token, nor its signature (or, for opaque tokens, the whole value), in the audit log
/// or the process log.
fn assert_no_leak(p: &Proxy, tokens: &[&str]) {
    let audit = std::fs::read_to_string(p.dir.join("audit.log")).unwrap_or_default();
    let stderr = std::fs::read_to_string(p.dir.join("stderr.log")).unwrap_or_default();
    assert!(!audit.is_empty(), "the audit log is empty");
    for t in tokens {
        let secret = t.rsplit('.').next().unwrap();
        for (name, text) in [("audit log", &audit), ("stderr log", &stderr)] {
            assert!(!text.contains(t), "the raw token appears in the {name}");
            if secret.len() >= 16 {
                assert!(
                    !text.contains(secret),
                    "the token signature appears in the {name}"
                );
            }
        }
    }
}

fn assert_patient_pt01(p: &Proxy, r: &Resp, token: &str) {
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["resourceType"], "Patient");
    assert_eq!(body["id"], "pt-01");
    let line = audit_of(p, r);
    // Reads of a member type are allowed and their body checked (`filter`).
    assert!(
        matches!(line["decision"].as_str(), Some("allow" | "filter")),
        "{line}"
    );
    assert_eq!(line["reason"], "scope", "{line}");
    assert_eq!(line["scope"], "patient/Patient.rs", "{line}");
    assert_eq!(line["status"], 200);
    assert_eq!(line["patient"], "pt-01");
    assert_eq!(line["client_id"], "test-client");
    assert_no_leak(p, &[token]);
}

fn outcome_code(r: &Resp) -> String {
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/fhir+json")),
        "content-type {:?}",
        r.header("content-type")
    );
    let body = r.json();
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["severity"], "error");
    body["issue"][0]["code"].as_str().unwrap().to_owned()
}

/// 401 `invalid_token` with an OperationOutcome, and the audit line names `reason`.
fn assert_invalid_token(p: &Proxy, r: &Resp, reason: &str, token: &str) {
    assert_eq!(r.status, 401, "{reason}: {}", r.text());
    let www = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(www.starts_with("Bearer realm=\""), "{www}");
    assert!(www.contains("error=\"invalid_token\""), "{www}");
    assert!(!www.contains(token), "the challenge echoes the token");
    assert_eq!(outcome_code(r), "login");
    assert!(!r.text().contains(token), "the body echoes the token");
    let line = audit_of(p, r);
    assert_eq!(line["decision"], "unauthenticated", "{line}");
    assert_eq!(line["reason"], reason, "{line}");
    assert_eq!(line["status"], 401);
    assert!(
        line.get("patient").is_none(),
        "no grant, no patient: {line}"
    );
    assert_no_leak(p, &[token]);
}

/// 401 with the plain challenge (RFC 6750 §3.1: no error code when no token was sent).
fn assert_no_token(p: &Proxy, r: &Resp) {
    assert_eq!(r.status, 401, "{}", r.text());
    let www = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(www.starts_with("Bearer realm=\""), "{www}");
    assert!(!www.contains("error"), "{www}");
    assert_eq!(outcome_code(r), "login");
    let line = audit_of(p, r);
    assert_eq!(line["decision"], "unauthenticated");
    assert_eq!(line["reason"], "missing_token");
}

/// `n` concurrent reads of `Patient/pt-01` with `token`; the statuses.
fn concurrent(p: &Proxy, token: &str, n: usize) -> Vec<u16> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| s.spawn(|| p.get("Patient/pt-01", token).status))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

// ---------------------------------------------------------------- valid tokens

#[test]
fn valid_rs256_jwt_reads_the_patient() {
    let _g = shared();
    let p = Proxy::start("");
    let t = good(&p);
    let header = jwt_part(&t, 0);
    assert_eq!(header["alg"], "RS256");
    assert!(header["kid"].is_string());
    assert_eq!(jwt_part(&t, 1)["aud"], p.base.as_str());
    let r = p.get("Patient/pt-01", &t);
    assert_patient_pt01(&p, &r, &t);
}

#[test]
fn valid_es256_jwt_reads_the_patient() {
    let _g = shared();
    let p = Proxy::start("");
    let t = p.mint(TokenReq {
        scope: SCOPE,
        patient: Some("pt-01"),
        alg: Some("ES256"),
        ..Default::default()
    });
    assert_eq!(jwt_part(&t, 0)["alg"], "ES256");
    let r = p.get("Patient/pt-01", &t);
    assert_patient_pt01(&p, &r, &t);
}

#[test]
fn valid_opaque_token_is_introspected() {
    let _g = shared();
    let p = Proxy::start("");
    let t = opaque(&p);
    let r = p.get("Patient/pt-01", &t);
    assert_patient_pt01(&p, &r, &t);
    // The launch patient came from introspection: another patient's record is not served
    // (and looks exactly like one that does not exist).
    let r = p.get("Patient/pt-02", &t);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.body, p.get("Patient/pt-nope", &t).body);
    assert_no_leak(&p, &[&t]);
}

// ---------------------------------------------------------------- refused JWTs

#[test]
fn expired_jwt_is_refused() {
    let _g = shared();
    let p = Proxy::start("");
    // Beyond the 30 s leeway.
    let t = p.mint(TokenReq {
        scope: SCOPE,
        patient: Some("pt-01"),
        ttl: Some(-300),
        ..Default::default()
    });
    let claims = jwt_part(&t, 1);
    assert!(claims["exp"].as_u64().unwrap() < claims["iat"].as_u64().unwrap());
    let r = p.get("Patient/pt-01", &t);
    assert_invalid_token(&p, &r, "expired", &t);
    assert!(r.header("www-authenticate").unwrap().contains("expired"));
}

#[test]
fn not_yet_valid_jwt_is_refused_beyond_leeway() {
    let _g = shared();
    let p = Proxy::start("");
    let t = p.mint(TokenReq {
        scope: SCOPE,
        patient: Some("pt-01"),
        nbf: Some(300),
        ..Default::default()
    });
    let r = p.get("Patient/pt-01", &t);
    assert_invalid_token(&p, &r, "not_yet_valid", &t);
    // Within the leeway (30 s) a small clock skew is tolerated.
    let t = p.mint(TokenReq {
        scope: SCOPE,
        patient: Some("pt-01"),
        nbf: Some(10),
        ..Default::default()
    });
    assert_eq!(p.get("Patient/pt-01", &t).status, 200);
}

#[test]
fn jwt_for_another_audience_is_refused() {
    let _g = shared();
    let p = Proxy::start("");
    let t = p.mint(TokenReq {
        scope: SCOPE,
        patient: Some("pt-01"),
        aud: Some(OTHER_AUD),
        ..Default::default()
    });
    assert_eq!(jwt_part(&t, 1)["aud"], OTHER_AUD);
    let r = p.get("Patient/pt-01", &t);
    assert_invalid_token(&p, &r, "wrong_audience", &t);
}

#[test]
fn opaque_token_for_another_audience_is_refused() {
    let _g = shared();
    let p = Proxy::start("");
    let t = p.mint(TokenReq {
        scope: SCOPE,
        patient: Some("pt-01"),
        aud: Some(OTHER_AUD),
        opaque: true,
        ..Default::default()
    });
    let r = p.get("Patient/pt-01", &t);
    assert_invalid_token(&p, &r, "wrong_audience", &t);
}

#[test]
fn jwt_from_another_issuer_is_refused() {
    let _g = shared();
    // The real AS's keys, but the proxy trusts another issuer name.
    let yaml = format!(
        "auth:\n  jwt:\n    issuer: http://issuer.other.example\n    jwks_uri: {}\n",
        bed().var("AS_JWKS")
    );
    let p = Proxy::start_with("", None, Some(&yaml));
    let t = good(&p);
    let r = p.get("Patient/pt-01", &t);
    assert_invalid_token(&p, &r, "wrong_issuer", &t);
    // With introspection configured too, a foreign-issuer JWT goes there; oidc-provider
    // refuses to introspect structured tokens (400 `unsupported_token_type`), which the
    // proxy treats as an unusable answer: still refused.
    let p = Proxy::start_with(
        "",
        None,
        Some(&auth_yaml("http://issuer.other.example", &[], &[])),
    );
    let r = p.get("Patient/pt-01", &t);
    assert_invalid_token(&p, &r, "introspection_unavailable", &t);
}

#[test]
fn tampered_signature_is_refused() {
    let _g = shared();
    let p = Proxy::start("");
    let t = good(&p);
    let (head, sig) = t.rsplit_once('.').unwrap();
    let mut sig: Vec<u8> = sig.bytes().collect();
    let mid = sig.len() / 2;
    sig[mid] = if sig[mid] == b'A' { b'B' } else { b'A' };
    let forged = format!("{head}.{}", String::from_utf8(sig).unwrap());
    assert_ne!(forged, t);
    let r = p.get("Patient/pt-01", &forged);
    assert_invalid_token(&p, &r, "bad_signature", &forged);
    // A changed claim under the original signature: another patient.
    let mut claims = jwt_part(&t, 1);
    claims["patient"] = json!("pt-02");
    let parts: Vec<&str> = t.split('.').collect();
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let r = p.get("Patient/pt-02", &swapped);
    assert_invalid_token(&p, &r, "bad_signature", &swapped);
    // The original still works.
    assert_eq!(p.get("Patient/pt-01", &t).status, 200);
}

#[test]
fn alg_none_is_refused() {
    let _g = shared();
    let p = Proxy::start("");
    let t = good(&p);
    let kid = jwt_part(&t, 0)["kid"].clone();
    let payload = t.split('.').nth(1).unwrap();
    for header in [
        json!({"alg": "none"}),
        json!({"alg": "none", "typ": "at+jwt", "kid": kid}),
        json!({"alg": "None"}),
    ] {
        let forged = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(header.to_string()));
        let r = p.get("Patient/pt-01", &forged);
        assert_invalid_token(&p, &r, "disallowed_algorithm", &forged);
    }
}

/// PKCS#1 `RSAPublicKey` DER from the JWK's `n` and `e`.
fn rsa_public_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    fn int(out: &mut Vec<u8>, v: &[u8]) {
        let pad = v.first().is_some_and(|b| b & 0x80 != 0);
        out.push(0x02);
        len(out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::new();
    int(&mut body, n);
    int(&mut body, e);
    let mut out = vec![0x30];
    len(&mut out, body.len());
    out.extend(body);
    out
}

#[test]
fn hs256_keyed_with_the_rsa_public_key_is_refused() {
    let _g = shared();
    let p = Proxy::start("");
    let t = good(&p);
    let kid = jwt_part(&t, 0)["kid"].as_str().unwrap().to_owned();
    let jwks_url = bed().var("AS_JWKS");
    let jwks = http::send(&authority(jwks_url), "GET", &path_of(jwks_url), &[], b"")
        .unwrap()
        .json();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap()
        .clone();
    assert_eq!(key["kty"], "RSA");
    let n_b64 = key["n"].as_str().unwrap();
    let n = URL_SAFE_NO_PAD.decode(n_b64).unwrap();
    let e = URL_SAFE_NO_PAD.decode(key["e"].as_str().unwrap()).unwrap();
    let b64 = STANDARD.encode(rsa_public_der(&n, &e));
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
        lines.join("\n")
    );
    let claims = jwt_part(&t, 1);
    let secrets: [&[u8]; 4] = [
        pem.as_bytes(),
        &rsa_public_der(&n, &e),
        &n,
        n_b64.as_bytes(),
    ];
    for secret in secrets {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(kid.clone());
        let forged = jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap();
        let r = p.get("Patient/pt-01", &forged);
        assert_invalid_token(&p, &r, "disallowed_algorithm", &forged);
    }
}

// ---------------------------------------------------------------- JWKS lifecycle

#[test]
fn key_rotation_is_picked_up_with_one_refetch() {
    let _x = exclusive();
    let p = Proxy::start("");
    let old = good(&p);
    assert_eq!(p.get("Patient/pt-01", &old).status, 200);
    let rotated = bed().control("POST", "rotate").json();
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    let new = good(&p);
    assert_eq!(
        jwt_part(&new, 0)["kid"],
        new_kid.as_str(),
        "signed with the new key"
    );
    assert_ne!(jwt_part(&old, 0)["kid"], new_kid.as_str());
    let before = jwks_fetches();
    let statuses = concurrent(&p, &new, 20);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        jwks_fetches() - before,
        1,
        "20 concurrent requests with a new kid: exactly one refetch"
    );
    // Both keys are now known: no further fetches, old tokens still verify.
    assert_eq!(p.get("Patient/pt-01", &old).status, 200);
    assert_eq!(p.get("Patient/pt-01", &new).status, 200);
    assert_eq!(jwks_fetches() - before, 1);
    assert_no_leak(&p, &[&old, &new]);
}

#[test]
fn unknown_kid_flood_fetches_at_most_once_per_cooldown() {
    let _x = exclusive();
    let p = proxy_with(&["unknown_kid_cooldown: 2s"], &[]);
    let t = good(&p);
    let mut header = jwt_part(&t, 0);
    let forged: Vec<String> = (0..40)
        .map(|i| {
            header["kid"] = json!(format!("flood-{i}-{}", std::process::id()));
            with_header(&t, &header)
        })
        .collect();
    let flood = |tokens: &[String]| -> Vec<Resp> {
        std::thread::scope(|s| {
            let hs: Vec<_> = tokens
                .iter()
                .map(|f| s.spawn(|| p.get("Patient/pt-01", f)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let before = jwks_fetches();
    let start = Instant::now();
    let first = flood(&forged[..20]);
    let second = flood(&forged[20..]);
    let window = start.elapsed();
    assert!(
        window < Duration::from_millis(1800),
        "both floods inside one cooldown window ({window:?})"
    );
    assert_eq!(
        jwks_fetches() - before,
        1,
        "40 unknown kids within one cooldown: one fetch"
    );
    for (r, f) in first.iter().chain(&second).zip(&forged) {
        assert_invalid_token(&p, r, "unknown_key", f);
    }
    // After the cooldown, one more fetch is allowed, and again only one.
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(start.elapsed()));
    flood(&forged[..20]);
    assert_eq!(
        jwks_fetches() - before,
        2,
        "a new cooldown window: one more fetch"
    );
    // Real tokens are unaffected.
    assert_eq!(p.get("Patient/pt-01", &t).status, 200);
}

#[test]
fn jwks_down_past_max_staleness_fails_closed_and_recovers() {
    let x = exclusive();
    let p = proxy_with(
        &[
            "jwks_refresh_min: 1s",
            "jwks_refresh_max: 2s",
            "max_staleness: 3s",
        ],
        &[],
    );
    let t = good(&p);
    assert_eq!(p.get("Patient/pt-01", &t).status, 200);
    let readyz = || http::send(&p.admin, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(readyz().status, 200);
    assert_eq!(bed().control("POST", "jwks?mode=down").status, 200);
    let down_at = Instant::now();
    // Keys fetched before the outage keep working for a while.
    assert_eq!(p.get("Patient/pt-01", &t).status, 200);
    let refused = loop {
        let r = p.get("Patient/pt-01", &t);
        if r.status != 200 {
            break r;
        }
        assert!(
            down_at.elapsed() < Duration::from_secs(5),
            "still accepted {:?} into the outage",
            down_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The last successful fetch was at most one refresh interval (2 s) before the outage.
    assert!(
        down_at.elapsed() > Duration::from_millis(900),
        "refused too early: {:?}",
        down_at.elapsed()
    );
    assert_invalid_token(&p, &refused, "keys_stale", &t);
    let r = readyz();
    assert_eq!(r.status, 503);
    assert!(r.text().contains("stale"), "{}", r.text());
    // Back up: the background retry (every min(refresh_min, 10 s)) restores service.
    assert_eq!(bed().control("POST", "jwks?mode=up").status, 200);
    let up_at = Instant::now();
    while p.get("Patient/pt-01", &t).status != 200 {
        assert!(
            up_at.elapsed() < Duration::from_secs(5),
            "not recovered after the JWKS came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(readyz().status, 200);
    drop(x);
}

// ---------------------------------------------------------------- introspection

fn revoke(token: &str) {
    let url = bed().var("AS_REVOKE");
    let r = http::send(
        &authority(url),
        "POST",
        &path_of(url),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", "Basic dGVzdC1jbGllbnQ6dGVzdC1zZWNyZXQ="),
        ],
        format!("token={}&token_type_hint=access_token", enc(token)).as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "revocation: {}", r.text());
}

/// What the AS itself says about a token.
fn as_introspect(token: &str) -> Value {
    let b = bed();
    let url = b.var("AS_INTROSPECT");
    let creds = STANDARD.encode(format!(
        "{}:{}",
        b.var("AS_INTROSPECT_CLIENT_ID"),
        b.var("AS_INTROSPECT_CLIENT_SECRET")
    ));
    let r = http::send(
        &authority(url),
        "POST",
        &path_of(url),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &format!("Basic {creds}")),
        ],
        format!("token={}", enc(token)).as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn revoked_opaque_token_works_while_cached_then_is_refused() {
    let _g = shared();
    let p = proxy_with(&[], &["cache_ttl: 2s"]);
    let t = opaque(&p);
    assert_eq!(p.get("Patient/pt-01", &t).status, 200);
    let cached_at = Instant::now();
    revoke(&t);
    assert_eq!(
        as_introspect(&t)["active"],
        false,
        "the AS no longer vouches for it"
    );
    // The documented trade-off: a cached positive answer outlives revocation by ≤ cache_ttl.
    let r = p.get("Patient/pt-01", &t);
    assert!(
        cached_at.elapsed() < Duration::from_secs(2),
        "test too slow to observe the cache"
    );
    assert_eq!(r.status, 200, "accepted from the cache");
    std::thread::sleep(Duration::from_millis(2300).saturating_sub(cached_at.elapsed()));
    let r = p.get("Patient/pt-01", &t);
    assert_invalid_token(&p, &r, "inactive", &t);
}

#[test]
fn introspection_down_fails_closed_quickly() {
    let _x = exclusive();
    let p = proxy_with(&[], &["timeout: 1s"]);
    let t = opaque(&p);
    assert_eq!(bed().control("POST", "introspection?mode=down").status, 200);
    let start = Instant::now();
    let r = p.get("Patient/pt-01", &t);
    let took = start.elapsed();
    assert_invalid_token(&p, &r, "introspection_unavailable", &t);
    assert!(
        took < Duration::from_millis(900),
        "a 503 answer must not wait for the timeout: {took:?}"
    );
    // Failures are not cached: the same token works once the endpoint is back.
    assert_eq!(bed().control("POST", "introspection?mode=up").status, 200);
    assert_eq!(p.get("Patient/pt-01", &t).status, 200);
}

#[test]
fn introspection_slow_fails_closed_within_the_timeout() {
    let _x = exclusive();
    let p = proxy_with(&[], &["timeout: 1s"]);
    let t = opaque(&p);
    assert_eq!(bed().control("POST", "introspection?mode=slow").status, 200);
    let start = Instant::now();
    let r = p.get("Patient/pt-01", &t);
    let took = start.elapsed();
    assert_invalid_token(&p, &r, "introspection_unavailable", &t);
    assert!(
        took >= Duration::from_millis(900),
        "answered before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "not bounded by the 1 s timeout: {took:?}"
    );
    assert_eq!(bed().control("POST", "introspection?mode=up").status, 200);
    assert_eq!(p.get("Patient/pt-01", &t).status, 200);
}

// ---------------------------------------------------------------- how the token is sent

#[test]
fn no_token_gets_the_plain_challenge() {
    let _g = shared();
    let p = Proxy::start("");
    let r = p.get("Patient/pt-01", "");
    assert_no_token(&p, &r);
}

#[test]
fn basic_authorization_is_no_bearer_token() {
    let _g = shared();
    let p = Proxy::start("");
    let r = p.req(
        "GET",
        "Patient/pt-01",
        "",
        &[("Authorization", "Basic dGVzdC1jbGllbnQ6dGVzdC1zZWNyZXQ=")],
        b"",
    );
    assert_no_token(&p, &r);
    // Two Authorization headers are ambiguous: a malformed request.
    let t = good(&p);
    let bearer = format!("Bearer {t}");
    let r = p.req(
        "GET",
        "Patient/pt-01",
        "",
        &[("Authorization", &bearer), ("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_request\"")
    );
    assert_eq!(audit_of(&p, &r)["reason"], "bad_authorization_header");
    assert_no_leak(&p, &[&t]);
}

#[test]
fn token_in_query_string_is_refused() {
    let _g = shared();
    let p = Proxy::start("");
    let t = good(&p);
    // RFC 6750 §2.3 is not supported (tokens in URLs leak): 400 invalid_request, even when
    // a valid header token is present too.
    for header_token in ["", t.as_str()] {
        let r = p.get(&format!("Patient/pt-01?access_token={t}"), header_token);
        assert_eq!(r.status, 400, "{}", r.text());
        let www = r.header("www-authenticate").expect("WWW-Authenticate");
        assert!(www.starts_with("Bearer realm=\""), "{www}");
        assert!(www.contains("error=\"invalid_request\""), "{www}");
        assert_eq!(outcome_code(&r), "invalid");
        let line = audit_of(&p, &r);
        assert_eq!(line["decision"], "unauthenticated");
        assert_eq!(line["reason"], "token_in_query");
        assert_eq!(line["path"], "/fhir/Patient/pt-01?access_token=*");
    }
    // A percent-encoded parameter name is the same parameter.
    let r = p.get(
        &format!("Patient/pt-01?_format=json&access%5Ftoken={t}"),
        "",
    );
    assert_eq!(r.status, 400);
    assert_eq!(audit_of(&p, &r)["reason"], "token_in_query");
    assert_no_leak(&p, &[&t]);
}
