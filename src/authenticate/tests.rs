//! Socket-free tests of every refusal path of JWT verification and of the header rules.

use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};

use super::config::{ClaimsMapping, JwtConfig, SigningAlgorithm};
use super::jwks::{KeySet, KeyStore};
use super::jwt::JwtVerifier;
use super::*;
use crate::duration::HumanDuration;
use crate::net;

#[path = "../../tests/common/keys.rs"]
mod keys;
use keys::{AUDIENCE, ISSUER, TestKey, claims, forge, now};

struct Kit {
    rsa: TestKey,
    ec: TestKey,
    ed: TestKey,
}

fn kit() -> &'static Kit {
    static KIT: std::sync::OnceLock<Kit> = std::sync::OnceLock::new();
    KIT.get_or_init(|| Kit {
        rsa: keys::rsa("r1"),
        ec: keys::ec("e1"),
        ed: keys::ed("d1"),
    })
}

fn verifier_with(cfg: JwtConfig, audience: &[&str], mapping: ClaimsMapping) -> JwtVerifier {
    let client = net::client(&net::ClientOptions::default()).unwrap();
    let store = KeyStore::new(&cfg, client, Arc::new(AuthStats::default()));
    let k = kit();
    let set = keys::jwks(&[&k.rsa, &k.ec, &k.ed]).to_string();
    let allow: Vec<Algorithm> = cfg.algorithms.iter().map(|a| a.jwt()).collect();
    store.install(KeySet::parse(set.as_bytes(), &allow).unwrap());
    JwtVerifier::new(
        &cfg,
        audience.iter().map(|s| (*s).to_owned()).collect(),
        mapping,
        store,
    )
}

fn config() -> JwtConfig {
    let mut c = JwtConfig::new(ISSUER);
    c.jwks_uri = Some("http://127.0.0.1:9/never".into());
    c.unknown_kid_cooldown = HumanDuration(Duration::from_secs(3600));
    c
}

fn verifier() -> JwtVerifier {
    verifier_with(config(), &[AUDIENCE], ClaimsMapping::default())
}

async fn check(v: &JwtVerifier, token: &str) -> Result<Grant, AuthError> {
    v.verify(token, token_hash(token), now()).await
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    c[key] = v;
    c
}

fn without(mut c: Value, key: &str) -> Value {
    c.as_object_mut().unwrap().remove(key);
    c
}

#[tokio::test]
async fn valid_rs256_and_es256_tokens() {
    let v = verifier();
    for key in [&kit().rsa, &kit().ec] {
        let t = key.sign(&claims());
        let g = check(&v, &t).await.unwrap();
        assert_eq!(g.patient.as_deref(), Some("p1"));
        assert_eq!(g.client_id.as_deref(), Some("app"));
        assert_eq!(g.kind, TokenKind::Jwt);
        assert_eq!(g.issuer.as_deref(), Some(ISSUER));
        assert_eq!(g.scopes.data().len(), 1);
        assert_eq!(g.token_hash, token_hash(&t));
    }
}

#[tokio::test]
async fn eddsa_and_ps256_only_when_allowed() {
    let v = verifier();
    let t = kit().ed.sign(&claims());
    assert_eq!(
        check(&v, &t).await.err(),
        Some(AuthError::DisallowedAlgorithm)
    );
    let mut cfg = config();
    cfg.algorithms = vec![SigningAlgorithm::EdDSA, SigningAlgorithm::PS256];
    let v = verifier_with(cfg, &[AUDIENCE], ClaimsMapping::default());
    assert!(check(&v, &t).await.is_ok());
    let mut h = Header::new(Algorithm::PS256);
    h.kid = Some("r1".into());
    let ps = kit().rsa.sign_with(h, &claims());
    // The JWK says `alg: RS256`, outside this allow-list: the key is not even loaded.
    assert_eq!(check(&v, &ps).await.err(), Some(AuthError::UnknownKey));
    // RS256 is no longer in the allow-list.
    let rs = kit().rsa.sign(&claims());
    assert_eq!(
        check(&v, &rs).await.err(),
        Some(AuthError::DisallowedAlgorithm)
    );
}

#[tokio::test]
async fn alg_none_is_refused() {
    let v = verifier();
    for alg in ["none", "None", "NONE", ""] {
        let t = forge(&json!({"alg": alg, "kid": "r1"}), &claims(), b"");
        assert_eq!(
            check(&v, &t).await.err(),
            Some(AuthError::DisallowedAlgorithm),
            "{alg}"
        );
    }
    let t = forge(&json!({"kid": "r1"}), &claims(), b"x");
    assert_eq!(
        check(&v, &t).await.err(),
        Some(AuthError::DisallowedAlgorithm)
    );
    // Unsigned with a trailing dot missing entirely.
    let t = forge(&json!({"alg": "none"}), &claims(), b"");
    let t = t.trim_end_matches('.');
    assert_eq!(check(&v, t).await.err(), Some(AuthError::Malformed));
}

#[tokio::test]
async fn hs256_keyed_with_the_public_key_is_refused() {
    let v = verifier();
    let t = keys::hs256_with_public_key(&kit().rsa, &claims());
    assert_eq!(
        check(&v, &t).await.err(),
        Some(AuthError::DisallowedAlgorithm)
    );
}

#[tokio::test]
async fn header_alg_must_match_the_key_type() {
    let v = verifier();
    // ES256 header, kid of the RSA key: the RSA key cannot verify ES256.
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("r1".into());
    let t = kit().ec.sign_with(h, &claims());
    assert_eq!(
        check(&v, &t).await.err(),
        Some(AuthError::DisallowedAlgorithm)
    );
    // RS256 header and kid, signed by the EC key's bytes: signature fails.
    let good = kit().rsa.sign(&claims());
    let other = kit().ec.sign(&claims());
    let forged = format!(
        "{}.{}",
        good.rsplit_once('.').unwrap().0,
        other.rsplit_once('.').unwrap().1
    );
    assert_eq!(
        check(&v, &forged).await.err(),
        Some(AuthError::BadSignature)
    );
}

#[tokio::test]
async fn forbidden_headers() {
    let v = verifier();
    let k = &kit().rsa;
    for (name, value) in [
        ("jku", json!("https://evil/jwks")),
        ("x5u", json!("https://evil/cert")),
        ("jwk", k.jwk.clone()),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(["exp"])),
        ("crit", json!(["b64"])),
    ] {
        // Sign a correct token, then splice the header: the check must come before anything.
        let mut h = json!({"alg": "RS256", "kid": "r1", "typ": "JWT"});
        h[name] = value;
        let t = forge(&h, &claims(), b"sig");
        assert_eq!(
            check(&v, &t).await.err(),
            Some(AuthError::ForbiddenHeader),
            "{name}"
        );
    }
    // Properly signed with jku present: still refused.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("r1".into());
    h.jku = Some("https://as.test/realm/certs".into());
    let t = k.sign_with(h, &claims());
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::ForbiddenHeader));
}

#[tokio::test]
async fn issuer_and_audience_are_pinned() {
    let v = verifier();
    let k = &kit().rsa;
    let t = k.sign(&with(claims(), "iss", json!("https://evil")));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::WrongIssuer));
    let t = k.sign(&without(claims(), "iss"));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::MissingClaim));
    let t = k.sign(&with(claims(), "aud", json!("https://other")));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::WrongAudience));
    let t = k.sign(&without(claims(), "aud"));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::MissingClaim));
    // aud as an array naming us among others.
    let t = k.sign(&with(claims(), "aud", json!(["https://other", AUDIENCE])));
    assert!(check(&v, &t).await.is_ok());
    let t = k.sign(&with(claims(), "aud", json!(["https://other"])));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::WrongAudience));
    // An id_token for the app (aud = client id) is not an access token for us.
    let t = k.sign(&with(claims(), "aud", json!("app")));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::WrongAudience));
    // Several accepted audiences.
    let v = verifier_with(config(), &["x", AUDIENCE], ClaimsMapping::default());
    let t = k.sign(&claims());
    assert!(check(&v, &t).await.is_ok());
}

#[tokio::test]
async fn times_with_leeway() {
    let v = verifier(); // leeway 30s
    let k = &kit().ec;
    let n = now();
    let t = k.sign(&with(claims(), "exp", json!(n - 100)));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::Expired));
    let t = k.sign(&with(claims(), "exp", json!(n - 10)));
    assert!(check(&v, &t).await.is_ok(), "within leeway");
    let t = k.sign(&without(claims(), "exp"));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::MissingClaim));
    let t = k.sign(&with(claims(), "exp", json!("tomorrow")));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::MissingClaim));
    let t = k.sign(&with(claims(), "nbf", json!(n + 100)));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::NotYetValid));
    let t = k.sign(&with(claims(), "nbf", json!(n + 10)));
    assert!(check(&v, &t).await.is_ok(), "nbf within leeway");
    let t = k.sign(&with(claims(), "iat", json!(n + 100)));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::NotYetValid));
    let t = k.sign(&with(claims(), "iat", json!(n + 10)));
    assert!(check(&v, &t).await.is_ok(), "iat within leeway");
    let t = k.sign(&with(claims(), "iat", json!("now")));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::Malformed));
    // Zero leeway.
    let mut cfg = config();
    cfg.leeway = HumanDuration(Duration::ZERO);
    let v = verifier_with(cfg, &[AUDIENCE], ClaimsMapping::default());
    let t = k.sign(&with(claims(), "exp", json!(n - 10)));
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::Expired));
}

#[tokio::test]
async fn bad_patient_claim_is_an_invalid_token() {
    let v = verifier();
    for p in [
        json!("Patient/1"),
        json!("1 2"),
        json!(7),
        json!(""),
        json!("a,b"),
    ] {
        let t = kit().rsa.sign(&with(claims(), "patient", p.clone()));
        assert_eq!(
            check(&v, &t).await.err(),
            Some(AuthError::BadPatientClaim),
            "{p}"
        );
    }
}

#[tokio::test]
async fn claims_mapping_for_real_providers() {
    let mapping = ClaimsMapping {
        patient: vec!["launch_patient".into()],
        ..ClaimsMapping::default()
    };
    let v = verifier_with(config(), &[AUDIENCE], mapping);
    let c = without(without(claims(), "scope"), "client_id");
    let c = with(
        c,
        "scp",
        json!(["patient/Observation.rs", "patient/Patient.r"]),
    );
    let c = with(c, "azp", json!("app-azp"));
    let c = with(c, "launch_patient", json!("p42"));
    let g = check(&v, &kit().rsa.sign(&c)).await.unwrap();
    assert_eq!(g.client_id.as_deref(), Some("app-azp"));
    assert_eq!(g.scopes.data().len(), 2);
    // The default `patient` claim is not consulted under this mapping.
    assert_eq!(g.patient.as_deref(), Some("p42"));
    let c = without(claims(), "patient");
    let g = check(&v, &kit().rsa.sign(&c)).await.unwrap();
    assert!(g.patient.is_none());
}

#[tokio::test]
async fn unknown_kid_and_kidless_tokens() {
    let v = verifier();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("nope".into());
    let t = kit().rsa.sign_with(h, &claims());
    // Cooldown is active (keys just installed): no fetch, refused.
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::UnknownKey));
    // No kid, exactly one RS256-capable key: found.
    let t = kit()
        .rsa
        .sign_with(Header::new(Algorithm::RS256), &claims());
    assert!(check(&v, &t).await.is_ok());
}

#[tokio::test]
async fn malformed_tokens() {
    let v = verifier();
    let good = kit().rsa.sign(&claims());
    let (head, rest) = good.split_once('.').unwrap();
    for bad in [
        "a.b".to_owned(),
        "a.b.c.d".to_owned(),
        ".x.y".to_owned(),
        format!("{head}..sig"),
        format!("!!!.{rest}"),
        format!("{}.{rest}", base64_url("not json")),
        format!("{}.{rest}", base64_url("[1]")),
        format!("{head}.{}.sig", base64_url("not json")),
    ] {
        let e = check(&v, &bad).await.err();
        assert!(
            matches!(e, Some(AuthError::Malformed | AuthError::BadSignature)),
            "{bad}: {e:?}"
        );
    }
    // A JSON array as claims, correctly signed: malformed.
    let t = kit().rsa.sign(&json!([1, 2]));
    assert!(check(&v, &t).await.is_err());
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn stale_keys_fail_closed() {
    let mut cfg = config();
    cfg.max_staleness = HumanDuration(Duration::from_millis(1));
    let v = verifier_with(cfg, &[AUDIENCE], ClaimsMapping::default());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = kit().rsa.sign(&claims());
    assert_eq!(check(&v, &t).await.err(), Some(AuthError::KeysStale));
    assert!(v.store().readiness().unwrap_err().contains("stale"));
}

fn headers(auth: &[&str]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for a in auth {
        h.append(http::header::AUTHORIZATION, a.parse().unwrap());
    }
    h
}

#[test]
fn b64token_alphabet_is_exactly_rfc_6750() {
    let alphabet: Vec<u8> = (b'A'..=b'Z')
        .chain(b'a'..=b'z')
        .chain(b'0'..=b'9')
        .chain(*b"-._~+/")
        .collect();
    for b in 0..=255u8 {
        let t = [b'a', b, b'a'];
        let t = std::str::from_utf8(&t).unwrap_or("a\u{0}a");
        assert_eq!(is_b64token(t), alphabet.contains(&b), "byte {b:#04x}");
    }
    assert!(is_b64token("abc=="));
    assert!(!is_b64token("=="));
    assert!(!is_b64token("a=b"));
}

#[test]
fn bearer_extraction() {
    assert_eq!(bearer(&headers(&[]), None), Err(AuthError::MissingToken));
    assert_eq!(
        bearer(&headers(&["Basic abc"]), None),
        Err(AuthError::MissingToken)
    );
    assert_eq!(
        bearer(&headers(&["Bearer"]), None),
        Err(AuthError::Malformed)
    );
    assert_eq!(
        bearer(&headers(&["Bearer "]), None),
        Err(AuthError::Malformed)
    );
    assert_eq!(
        bearer(&headers(&["Bearer a b"]), None),
        Err(AuthError::Malformed)
    );
    assert_eq!(
        bearer(&headers(&["Bearer a\"b"]), None),
        Err(AuthError::Malformed)
    );
    assert_eq!(
        bearer(&headers(&["Bearer abc.def-_~+/=="]), None),
        Ok("abc.def-_~+/==")
    );
    assert_eq!(bearer(&headers(&["bearer   abc"]), None), Ok("abc"));
    assert_eq!(bearer(&headers(&["BEARER abc"]), None), Ok("abc"));
    assert_eq!(
        bearer(&headers(&["Bearer a", "Bearer b"]), None),
        Err(AuthError::BadAuthorizationHeader)
    );
    let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
    assert_eq!(bearer(&headers(&[&long]), None), Err(AuthError::Malformed));
    for q in [
        "access_token=abc",
        "_count=1&access_token=abc",
        "access%5Ftoken=abc",
        "access_token",
    ] {
        assert_eq!(
            bearer(&headers(&["Bearer abc"]), Some(q)),
            Err(AuthError::TokenInQuery),
            "{q}"
        );
    }
    assert_eq!(
        bearer(
            &headers(&["Bearer abc"]),
            Some("x_access_token=1&a=access_token")
        ),
        Ok("abc")
    );
}

#[test]
fn token_hash_is_sha256() {
    assert_eq!(
        token_hash("abc")[..4],
        [0xba, 0x78, 0x16, 0xbf],
        "SHA-256(\"abc\") starts ba7816bf"
    );
}

#[tokio::test]
async fn nothing_configured_refuses_everything() {
    let client = net::client(&net::ClientOptions::default()).unwrap();
    let a = Authenticator::new(&AuthConfig::default(), AUDIENCE, client)
        .await
        .unwrap();
    let t = kit().rsa.sign(&claims());
    let h = headers(&[&format!("Bearer {t}")]);
    assert_eq!(
        a.authenticate(&h, None).await.err(),
        Some(AuthError::NotConfigured)
    );
    assert_eq!(
        a.authenticate(&headers(&[]), None).await.err(),
        Some(AuthError::MissingToken)
    );
    assert!(a.readiness().is_err());
}

#[tokio::test]
async fn inconsistent_config_is_an_init_error() {
    let client = net::client(&net::ClientOptions::default()).unwrap();
    let mut j = config();
    j.max_staleness = j.jwks_refresh_max;
    let cfg = AuthConfig {
        jwt: Some(j),
        ..AuthConfig::default()
    };
    assert!(matches!(
        Authenticator::new(&cfg, AUDIENCE, client.clone()).await,
        Err(AuthInitError::Config(_))
    ));
    let mut cfg = AuthConfig {
        introspection: Some(IntrospectionConfig::new("https://as/i", "me")),
        ..AuthConfig::default()
    };
    assert!(matches!(
        Authenticator::new(&cfg, AUDIENCE, client.clone()).await,
        Err(AuthInitError::Config(_))
    ));
    let mut i = IntrospectionConfig::new("https://as/i", "me");
    i.client_secret_file = Some("/nonexistent/secret".into());
    cfg.introspection = Some(i);
    assert!(matches!(
        Authenticator::new(&cfg, AUDIENCE, client).await,
        Err(AuthInitError::SecretFile(..))
    ));
}
