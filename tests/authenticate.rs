//! The authenticator against a tiny in-process authorization server: JWKS lifecycle
//! (start, unknown kid, cooldown, coalescing, staleness) and introspection (cache,
//! coalescing, negative cache, failures, timeout, client authentication, routing).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::keys::{self, AUDIENCE, ISSUER, claims, forge, now};
use common::server::{self, State, TestAs};
use serde_json::{Value, json};
use smartgate::authenticate::{
    AuthConfig, AuthError, Authenticator, ClientAuth, IntrospectionConfig, JwtConfig, TokenKind,
};
use smartgate::duration::HumanDuration;
use smartgate::net;

fn ms(n: u64) -> HumanDuration {
    HumanDuration(Duration::from_millis(n))
}

fn client() -> net::HttpClient {
    net::client(&net::ClientOptions::default()).unwrap()
}

fn bearer(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    h
}

fn jwt_cfg(s: &TestAs) -> JwtConfig {
    let mut j = JwtConfig::new(ISSUER);
    j.jwks_uri = Some(s.jwks_uri());
    j
}

fn intro_cfg(s: &TestAs) -> IntrospectionConfig {
    let mut i = IntrospectionConfig::new(s.introspection_uri(), "proxy");
    i.client_secret = Some("s3cr:et".into());
    i
}

async fn auth(jwt: Option<JwtConfig>, intro: Option<IntrospectionConfig>) -> Arc<Authenticator> {
    let cfg = AuthConfig {
        jwt,
        introspection: intro,
        ..AuthConfig::default()
    };
    Arc::new(Authenticator::new(&cfg, AUDIENCE, client()).await.unwrap())
}

async fn check(a: &Authenticator, token: &str) -> Result<TokenKind, AuthError> {
    a.authenticate(&bearer(token), None).await.map(|g| g.kind)
}

fn with_kid(key: &keys::TestKey, kid: &str) -> String {
    let mut h = jsonwebtoken::Header::new(key.alg);
    h.kid = Some(kid.into());
    key.sign_with(h, &claims())
}

#[tokio::test]
async fn fetches_at_start_and_verifies() {
    let k1 = keys::ec("k1");
    let s = server::start(State {
        jwks: keys::jwks(&[&k1]),
        ..State::default()
    })
    .await;
    let a = auth(Some(jwt_cfg(&s)), None).await;
    assert!(a.readiness().is_ok());
    assert_eq!(s.jwks_hits(), 1);
    assert_eq!(a.stats().keys_held.load(Ordering::Relaxed), 1);
    assert_eq!(a.stats().jwks_fetch_ok.load(Ordering::Relaxed), 1);
    let g = a
        .authenticate(&bearer(&k1.sign(&claims())), None)
        .await
        .unwrap();
    assert_eq!(g.patient.as_deref(), Some("p1"));
    assert_eq!(
        a.authenticate(&bearer("x"), Some("access_token=x"))
            .await
            .err(),
        Some(AuthError::TokenInQuery)
    );
    assert_eq!(
        a.authenticate(&http::HeaderMap::new(), None).await.err(),
        Some(AuthError::MissingToken)
    );
}

#[tokio::test]
async fn discovers_jwks_uri_from_the_issuer() {
    let k1 = keys::ec("k1");
    let s = server::start(State {
        jwks: keys::jwks(&[&k1]),
        ..State::default()
    })
    .await;
    let mut j = JwtConfig::new(s.base.clone());
    j.jwks_uri = None;
    let a = auth(Some(j), None).await;
    assert!(a.readiness().is_ok(), "{:?}", a.readiness());
    assert_eq!(s.discovery_hits.load(Ordering::SeqCst), 1);
    let mut c = claims();
    c["iss"] = json!(s.base);
    assert!(a.authenticate(&bearer(&k1.sign(&c)), None).await.is_ok());
    // A discovery document naming another issuer is refused.
    let mut j = JwtConfig::new(format!("{}/", s.base));
    j.jwks_uri = None;
    let a = auth(Some(j), None).await;
    assert!(
        a.readiness()
            .unwrap_err()
            .contains("not the configured issuer")
    );
}

#[tokio::test]
async fn failed_first_fetch_is_not_ready_until_a_refresh_succeeds() {
    let k1 = keys::ec("k1");
    let s = server::start(State {
        jwks: keys::jwks(&[&k1]),
        jwks_status: 503,
        ..State::default()
    })
    .await;
    let mut j = jwt_cfg(&s);
    j.jwks_refresh_min = ms(50);
    j.jwks_refresh_max = ms(100);
    j.max_staleness = ms(1000);
    let a = auth(Some(j), None).await;
    assert!(a.readiness().unwrap_err().contains("not fetched yet"));
    let t = k1.sign(&claims());
    assert_eq!(check(&a, &t).await, Err(AuthError::KeysStale));
    let task = a.spawn_refresh().unwrap();
    s.set(|st| st.jwks_status = 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(a.readiness().is_ok());
    assert_eq!(check(&a, &t).await, Ok(TokenKind::Jwt));
    task.abort();
}

#[tokio::test]
async fn unknown_kid_refetches_once_then_cooldown() {
    let k1 = keys::ec("k1");
    let k2 = keys::ec("k2");
    let s = server::start(State {
        jwks: keys::jwks(&[&k1]),
        ..State::default()
    })
    .await;
    let mut j = jwt_cfg(&s);
    j.unknown_kid_cooldown = ms(300);
    let a = auth(Some(j), None).await;
    assert_eq!(s.jwks_hits(), 1);
    // Key rotation: k2 appears at the issuer, a token with k2 triggers one refetch.
    s.set(|st| st.jwks = keys::jwks(&[&k1, &k2]));
    assert_eq!(check(&a, &k2.sign(&claims())).await, Ok(TokenKind::Jwt));
    assert_eq!(s.jwks_hits(), 2);
    assert_eq!(
        a.stats().jwks_unknown_kid_refetches.load(Ordering::Relaxed),
        1
    );
    // Within the cooldown: unknown kids do not fetch.
    for i in 0..10 {
        let t = with_kid(&k1, &format!("nope{i}"));
        assert_eq!(check(&a, &t).await, Err(AuthError::UnknownKey));
    }
    assert_eq!(s.jwks_hits(), 2);
    // After the cooldown: one more.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        check(&a, &with_kid(&k1, "nope")).await,
        Err(AuthError::UnknownKey)
    );
    assert_eq!(s.jwks_hits(), 3);
    // Known keys never fetch.
    assert_eq!(check(&a, &k1.sign(&claims())).await, Ok(TokenKind::Jwt));
    assert_eq!(s.jwks_hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_unknown_kids_cause_one_fetch() {
    let k1 = keys::ec("k1");
    let s = server::start(State {
        jwks: keys::jwks(&[&k1]),
        ..State::default()
    })
    .await;
    let mut j = jwt_cfg(&s);
    // No cooldown at all: only coalescing keeps this to one fetch.
    j.unknown_kid_cooldown = ms(0);
    let a = auth(Some(j), None).await;
    s.set(|st| st.jwks_delay = Duration::from_millis(300));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let a = Arc::clone(&a);
            let t = forge(
                &json!({"alg": "ES256", "kid": format!("unknown-{i}")}),
                &claims(),
                b"sig",
            );
            tokio::spawn(async move { a.authenticate(&bearer(&t), None).await.err() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some(AuthError::UnknownKey));
    }
    assert_eq!(s.jwks_hits(), 2, "start + exactly one refetch");
}

#[tokio::test]
async fn jwks_down_past_max_staleness_fails_closed() {
    let k1 = keys::ec("k1");
    let s = server::start(State {
        jwks: keys::jwks(&[&k1]),
        cache_control: Some("max-age=0".into()),
        ..State::default()
    })
    .await;
    let mut j = jwt_cfg(&s);
    j.jwks_refresh_min = ms(50);
    j.jwks_refresh_max = ms(100);
    j.max_staleness = ms(500);
    let a = auth(Some(j), None).await;
    let task = a.spawn_refresh().unwrap();
    let t = k1.sign(&claims());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        s.jwks_hits() >= 3,
        "background refresh per Cache-Control (bounded)"
    );
    s.set(|st| st.jwks_status = 500);
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Keys held keep working for a while.
    assert_eq!(check(&a, &t).await, Ok(TokenKind::Jwt));
    assert!(a.readiness().is_ok());
    tokio::time::sleep(Duration::from_millis(700).saturating_sub(down.elapsed())).await;
    assert_eq!(check(&a, &t).await, Err(AuthError::KeysStale));
    let why = a.readiness().unwrap_err();
    assert!(why.contains("stale") && why.contains("HTTP 500"), "{why}");
    assert!(a.stats().jwks_fetch_failed.load(Ordering::Relaxed) >= 2);
    // Recovery.
    s.set(|st| st.jwks_status = 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(check(&a, &t).await, Ok(TokenKind::Jwt));
    assert!(a.readiness().is_ok());
    task.abort();
}

fn active(extra: Value) -> Value {
    let mut a = json!({
        "active": true, "scope": "patient/*.rs launch/patient", "client_id": "app",
        "exp": now() + 3600, "patient": "p9", "sub": "u", "fhirUser": "Patient/p9"
    });
    if let (Value::Object(a), Value::Object(e)) = (&mut a, extra) {
        a.extend(e);
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_positive_cache_coalesces() {
    let s = server::start(State {
        introspect_delay: Duration::from_millis(200),
        ..State::default()
    })
    .await;
    s.set(|st| {
        st.answers.insert("opaque-1".into(), active(json!({})));
    });
    let a = auth(None, Some(intro_cfg(&s))).await;
    assert!(a.readiness().is_ok());
    let tasks: Vec<_> = (0..256)
        .map(|_| {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.authenticate(&bearer("opaque-1"), None).await })
        })
        .collect();
    for t in tasks {
        let g = t.await.unwrap().unwrap();
        assert_eq!(g.patient.as_deref(), Some("p9"));
        assert_eq!(g.kind, TokenKind::Introspected);
    }
    assert_eq!(s.introspect_hits(), 1);
    assert!(check(&a, "opaque-1").await.is_ok());
    assert_eq!(s.introspect_hits(), 1);
    assert!(a.stats().introspection_cache_hits.load(Ordering::Relaxed) >= 1);
    assert_eq!(a.stats().introspection_calls.load(Ordering::Relaxed), 1);
    // client_secret_basic with form-encoded parts; the token in the form, never logged.
    let (auth_header, form) = {
        let st = s.state.lock().unwrap();
        (st.last_auth.clone().unwrap(), st.last_form.clone().unwrap())
    };
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD.encode("proxy:s3cr%3Aet");
    assert_eq!(auth_header, format!("Basic {expected}"));
    assert!(form.contains("token=opaque%2D1") && form.contains("token_type_hint=access_token"));
    assert!(!form.contains("client_secret"));
}

#[tokio::test]
async fn introspection_negative_cache_and_refusals() {
    let s = server::start(State::default()).await;
    s.set(|st| {
        st.answers.insert(
            "bad-patient".into(),
            active(json!({"patient": "Patient/1"})),
        );
        st.answers
            .insert("expired".into(), active(json!({"exp": now() - 5})));
        st.answers
            .insert("stringly".into(), active(json!({"active": "true"})));
        st.answers
            .insert("no-exp".into(), active(json!({"exp": null})));
    });
    let mut i = intro_cfg(&s);
    i.negative_cache_ttl = ms(300);
    let a = auth(None, Some(i)).await;
    assert_eq!(check(&a, "revoked").await, Err(AuthError::Inactive));
    assert_eq!(check(&a, "revoked").await, Err(AuthError::Inactive));
    assert_eq!(s.introspect_hits(), 1, "negative answer cached");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(check(&a, "revoked").await, Err(AuthError::Inactive));
    assert_eq!(s.introspect_hits(), 2, "negative cache expired");
    assert_eq!(
        check(&a, "bad-patient").await,
        Err(AuthError::BadPatientClaim)
    );
    assert_eq!(check(&a, "expired").await, Err(AuthError::Expired));
    assert_eq!(check(&a, "stringly").await, Err(AuthError::Inactive));
    assert_eq!(check(&a, "no-exp").await, Err(AuthError::MissingClaim));
}

#[tokio::test]
async fn positive_answers_live_no_longer_than_exp() {
    let s = server::start(State::default()).await;
    s.set(|st| {
        st.answers
            .insert("short".into(), active(json!({"exp": now() + 1})));
    });
    let a = auth(None, Some(intro_cfg(&s))).await;
    assert!(check(&a, "short").await.is_ok());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(check(&a, "short").await, Err(AuthError::Expired));
    assert_eq!(s.introspect_hits(), 2);
}

#[tokio::test]
async fn introspection_failures_fail_closed_and_are_not_cached() {
    let s = server::start(State {
        introspect_status: 503,
        ..State::default()
    })
    .await;
    s.set(|st| {
        st.answers.insert("t".into(), active(json!({})));
    });
    let a = auth(None, Some(intro_cfg(&s))).await;
    assert_eq!(
        check(&a, "t").await,
        Err(AuthError::IntrospectionUnavailable)
    );
    assert_eq!(
        check(&a, "t").await,
        Err(AuthError::IntrospectionUnavailable)
    );
    assert_eq!(s.introspect_hits(), 2);
    assert_eq!(a.stats().introspection_failures.load(Ordering::Relaxed), 2);
    s.set(|st| st.introspect_status = 401);
    assert_eq!(
        check(&a, "t").await,
        Err(AuthError::IntrospectionUnavailable)
    );
    s.set(|st| st.introspect_status = 200);
    assert!(check(&a, "t").await.is_ok());
}

#[tokio::test]
async fn introspection_timeout_is_bounded() {
    let s = server::start(State {
        introspect_delay: Duration::from_secs(10),
        ..State::default()
    })
    .await;
    let mut i = intro_cfg(&s);
    i.timeout = ms(200);
    let a = auth(None, Some(i)).await;
    let started = Instant::now();
    assert_eq!(
        check(&a, "t").await,
        Err(AuthError::IntrospectionUnavailable)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Unreachable endpoint: refused, not hung.
    let mut i = IntrospectionConfig::new("http://127.0.0.1:9/introspect", "proxy");
    i.client_secret = Some("x".into());
    i.timeout = ms(500);
    let a = auth(None, Some(i)).await;
    let started = Instant::now();
    assert_eq!(
        check(&a, "t").await,
        Err(AuthError::IntrospectionUnavailable)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn client_secret_post() {
    let s = server::start(State::default()).await;
    let mut i = intro_cfg(&s);
    i.client_auth = ClientAuth::Post;
    let a = auth(None, Some(i)).await;
    assert_eq!(check(&a, "t").await, Err(AuthError::Inactive));
    let st = s.state.lock().unwrap();
    assert!(st.last_auth.is_none());
    let form = st.last_form.clone().unwrap();
    assert!(form.contains("client_id=proxy") && form.contains("client_secret=s3cr%3Aet"));
}

#[tokio::test]
async fn routing_between_local_and_introspection() {
    let k1 = keys::ec("k1");
    let s = server::start(State {
        jwks: keys::jwks(&[&k1]),
        ..State::default()
    })
    .await;
    let ours = k1.sign(&claims());
    let mut other = claims();
    other["iss"] = json!("https://elsewhere");
    let foreign = k1.sign(&other);
    s.set(|st| {
        st.answers.insert("opaque".into(), active(json!({})));
        st.answers.insert(foreign.clone(), active(json!({})));
        st.answers.insert(ours.clone(), active(json!({})));
    });
    let a = auth(Some(jwt_cfg(&s)), Some(intro_cfg(&s))).await;
    assert_eq!(check(&a, &ours).await, Ok(TokenKind::Jwt));
    assert_eq!(s.introspect_hits(), 0);
    assert_eq!(check(&a, &foreign).await, Ok(TokenKind::Introspected));
    assert_eq!(check(&a, "opaque").await, Ok(TokenKind::Introspected));
    assert_eq!(s.introspect_hits(), 2);
    // A forged JWT claiming our issuer is checked locally and refused there.
    let forged = forge(&json!({"alg": "ES256", "kid": "k1"}), &claims(), b"sig");
    assert_eq!(check(&a, &forged).await, Err(AuthError::BadSignature));
    // always: true sends everything to introspection.
    let mut i = intro_cfg(&s);
    i.always = true;
    let a = auth(Some(jwt_cfg(&s)), Some(i)).await;
    assert_eq!(check(&a, &ours).await, Ok(TokenKind::Introspected));
}

#[tokio::test]
async fn refresh_task_ends_with_the_authenticator() {
    let k1 = keys::ec("k1");
    let s = server::start(State {
        jwks: keys::jwks(&[&k1]),
        ..State::default()
    })
    .await;
    let mut j = jwt_cfg(&s);
    j.jwks_refresh_min = ms(50);
    j.jwks_refresh_max = ms(50);
    j.max_staleness = ms(1000);
    let a = auth(Some(j), None).await;
    let task = a.spawn_refresh().unwrap();
    drop(a);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("refresh task ended")
        .unwrap();
}
