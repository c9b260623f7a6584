//! Fault injection: the servers smartgate depends on misbehave, started here and scripted
//! byte for byte (`common::faulty`). The JWKS endpoint is slow, down, garbage, or rotates
//! keys under load (tokens signed here with keys made here); introspection is slow, down,
//! garbage, or forgets `active`; the upstream resets mid-body, fails, is slow, sends
//! oversize heads, invalid or truncated JSON, duplicate keys, or the wrong resource type.
//!
//! Every case asserts: a clear answer (status and OperationOutcome), no hang past the
//! configured timeouts (each bounded with `Instant`), no leak (a marker only the faulty
//! server knows never reaches the client), and smartgate alive and healthy afterwards.
//! Tokens for upstream faults come from the real authorization server of the test bed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::faulty::{self, Reply, dead_url};
use common::keys::{self, TestKey};
use common::{Proxy, Resp, http};
use serde_json::{Value, json};

/// A marker that only a faulty server writes: it must never reach a client.
const SECRET: &str = "SECRET-OF-PATIENT-B";
const AUD: &str = "https://fhir.test/r4";

/// The process is still running and its admin port answers.
fn assert_healthy(proxy: &Proxy) {
    assert!(
        std::path::Path::new(&format!("/proc/{}", proxy.pid())).exists(),
        "smartgate exited: {}",
        std::fs::read_to_string(proxy.dir.join("stderr.log")).unwrap_or_default()
    );
    let h = http::send(&proxy.admin, "GET", "/healthz", &[], b"").expect("healthz");
    assert_eq!(h.status, 200);
    let stderr = std::fs::read_to_string(proxy.dir.join("stderr.log")).unwrap_or_default();
    assert!(!stderr.contains("panicked"), "smartgate panicked: {stderr}");
}

fn timed(f: impl FnOnce() -> Resp) -> (Resp, Duration) {
    let started = Instant::now();
    let r = f();
    (r, started.elapsed())
}

fn assert_outcome(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["resourceType"], "OperationOutcome", "{}", r.text());
    assert!(!r.text().contains(SECRET), "leaked: {}", r.text());
}

/// The reason smartgate's audit line gave for the last request.
fn last_reason(proxy: &Proxy) -> String {
    // The audit line is written after the response: give it a moment.
    for _ in 0..50 {
        if let Some(l) = proxy.audit_lines().last() {
            return l["reason"].as_str().unwrap_or_default().to_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    String::new()
}

// ---------------------------------------------------------------- JWKS

/// What the fake JWKS endpoint serves right now.
#[derive(Clone)]
enum Jwks {
    Keys(Value),
    Slow(Duration, Value),
    Garbage,
    Status(u16),
}

fn jwks_server(state: Arc<Mutex<Jwks>>) -> faulty::Faulty {
    faulty::start(move |_req| {
        let s = state.lock().unwrap().clone();
        let ok = |v: &Value| {
            Reply::json(200, v.to_string()).with_header("Cache-Control", "public, max-age=1")
        };
        match s {
            Jwks::Keys(v) => ok(&v),
            Jwks::Slow(d, v) => ok(&v).after(d),
            Jwks::Garbage => Reply::json(200, "<html>503 upstream of the upstream</html>"),
            Jwks::Status(code) => Reply::json(code, "{}"),
        }
    })
}

fn jwt_auth(jwks_url: &str, extra: &str) -> String {
    format!(
        "auth:\n  jwt:\n    issuer: {iss}\n    jwks_uri: {jwks_url}/jwks\n    audience: {AUD}\n    timeout: 1s\n    jwks_refresh_min: 1s\n    unknown_kid_cooldown: 1s\n{extra}",
        iss = keys::ISSUER
    )
}

fn sign(key: &TestKey, scope: &str) -> String {
    let mut c = keys::claims();
    c["aud"] = json!(AUD);
    c["scope"] = json!(scope);
    c.as_object_mut().unwrap().remove("patient");
    key.sign(&c)
}

#[test]
fn jwks_slow_down_or_garbage_fails_closed_quickly_and_recovers() {
    let k1 = keys::rsa("k1");
    let state = Arc::new(Mutex::new(Jwks::Slow(
        Duration::from_secs(4),
        keys::jwks(&[&k1]),
    )));
    let server = jwks_server(Arc::clone(&state));
    let started = Instant::now();
    let proxy = Proxy::start_with("", None, Some(&jwt_auth(&server.url, "")));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a slow JWKS held start-up for {:?}",
        started.elapsed()
    );
    let token = sign(&k1, "user/Patient.rs");
    // Keys never fetched: refused at once, never waiting for the slow endpoint.
    let (r, took) = timed(|| proxy.get("Patient/pt-01", &token));
    assert_outcome(&r, 401);
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(last_reason(&proxy), "keys_stale");
    let ready = http::send(&proxy.admin, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(
        ready.status,
        503,
        "not ready without keys: {}",
        ready.text()
    );
    assert_healthy(&proxy);

    // The endpoint heals: the background refresh (retried after failures) picks the keys up.
    *state.lock().unwrap() = Jwks::Keys(keys::jwks(&[&k1]));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    while Instant::now() < deadline {
        status = proxy.get("Patient/pt-01", &token).status;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        status, 200,
        "never recovered after the JWKS endpoint healed"
    );

    // Garbage, 5xx or slowness after a good fetch: the last good keys stay in use (until
    // max_staleness), an unknown kid is refused (its refetch bounded by the 1 s timeout),
    // nothing hangs.
    for bad in [
        Jwks::Garbage,
        Jwks::Status(503),
        Jwks::Slow(Duration::from_secs(4), keys::jwks(&[&k1])),
    ] {
        *state.lock().unwrap() = bad;
        std::thread::sleep(Duration::from_millis(1500));
        let (r, took) = timed(|| proxy.get("Patient/pt-01", &token));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(took < Duration::from_secs(2), "took {took:?}");
        let stranger = sign(&keys::rsa("k-unknown"), "user/Patient.rs");
        let (r, took) = timed(|| proxy.get("Patient/pt-01", &stranger));
        assert_outcome(&r, 401);
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }
    assert_healthy(&proxy);
}

#[test]
fn jwks_down_is_401_and_not_ready() {
    let k1 = keys::rsa("k1");
    let proxy = Proxy::start_with("", None, Some(&jwt_auth(&dead_url(), "")));
    let (r, took) = timed(|| proxy.get("Patient/pt-01", &sign(&k1, "user/Patient.rs")));
    assert_outcome(&r, 401);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let ready = http::send(&proxy.admin, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(ready.status, 503);
    assert_healthy(&proxy);
}

#[test]
fn jwks_rotation_under_load_never_errors_and_withdraws_the_old_key() {
    let k1 = Arc::new(keys::rsa("k1"));
    let k2 = Arc::new(keys::ec("k2"));
    let state = Arc::new(Mutex::new(Jwks::Keys(keys::jwks(&[&k1]))));
    let server = jwks_server(Arc::clone(&state));
    let proxy = Arc::new(Proxy::start_with(
        "",
        None,
        Some(&jwt_auth(&server.url, "    verified_cache_ttl: 5m\n")),
    ));
    let t1 = sign(&k1, "user/Patient.rs");
    let t2 = sign(&k2, "user/Patient.rs");
    assert_eq!(proxy.get("Patient/pt-01", &t1).status, 200);

    let t0 = Instant::now();
    let stop = Arc::new(AtomicUsize::new(0));
    // (elapsed ms, key, status) for every request.
    let seen = Arc::new(Mutex::new(Vec::<(u128, u8, u16)>::new()));
    let mut workers = Vec::new();
    for w in 0..4u8 {
        let (proxy, seen, stop) = (Arc::clone(&proxy), Arc::clone(&seen), Arc::clone(&stop));
        let (t1, t2) = (t1.clone(), t2.clone());
        workers.push(std::thread::spawn(move || {
            let mut i = 0u32;
            while stop.load(Ordering::SeqCst) == 0 {
                // Worker 0 and 1 keep using the old key's token, 2 and 3 switch to the new
                // one once it is announced.
                let ms = t0.elapsed().as_millis();
                let (k, tok) = if w < 2 || ms < 1000 {
                    (1, &t1)
                } else {
                    (2, &t2)
                };
                let status = proxy.get("Patient/pt-01", tok).status;
                seen.lock().unwrap().push((ms, k, status));
                i += 1;
                if i % 8 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1000));
    *state.lock().unwrap() = Jwks::Keys(keys::jwks(&[&k1, &k2])); // overlap
    std::thread::sleep(Duration::from_millis(1500));
    *state.lock().unwrap() = Jwks::Keys(keys::jwks(&[&k2])); // k1 withdrawn at 2.5 s
    std::thread::sleep(Duration::from_millis(4000));
    stop.store(1, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 40, "too little load: {}", seen.len());
    let bad: Vec<_> = seen
        .iter()
        .filter(|(_, _, s)| *s != 200 && *s != 401)
        .collect();
    assert!(bad.is_empty(), "errors under rotation: {bad:?}");
    // The new key works as soon as it is announced (unknown kid ⇒ refetch), and always
    // after the overlap started plus one cooldown.
    let k2_late_fail: Vec<_> = seen
        .iter()
        .filter(|(ms, k, s)| *k == 2 && *ms > 2200 && *s != 200)
        .collect();
    assert!(k2_late_fail.is_empty(), "new key refused: {k2_late_fail:?}");
    // The old key works during the overlap and is refused once withdrawn and refetched
    // (max-age=1 + the 1 s refresh floor ⇒ well within 3 s).
    assert!(
        seen.iter()
            .any(|(ms, k, s)| *k == 1 && *ms > 1200 && *ms < 2400 && *s == 200)
    );
    let k1_late_ok: Vec<_> = seen
        .iter()
        .filter(|(ms, k, s)| *k == 1 && *ms > 5500 && *s == 200)
        .collect();
    assert!(
        k1_late_ok.is_empty(),
        "withdrawn key still accepted: {} times",
        k1_late_ok.len()
    );
    assert!(
        seen.iter()
            .any(|(ms, k, s)| *k == 1 && *ms > 5500 && *s == 401)
    );
    assert_healthy(&proxy);
}

// ---------------------------------------------------------------- introspection

fn introspection_proxy(server: &str) -> Proxy {
    let auth = format!(
        "auth:\n  introspection:\n    endpoint: {server}/introspect\n    client_id: smartgate\n    client_secret: s3cret\n    timeout: 1s\n    negative_cache_ttl: 0s\n"
    );
    Proxy::start_with("", None, Some(&auth))
}

fn active(extra: Value) -> Value {
    let mut v = json!({"active": true, "scope": "user/Patient.rs", "client_id": "app",
        "exp": keys::now() + 600, "sub": "u1"});
    for (k, x) in extra.as_object().unwrap() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    v
}

#[test]
fn introspection_slow_down_garbage_or_without_active_is_401() {
    // The answer depends on the token, so one server covers every fault.
    let server = faulty::start(|req| {
        let form = String::from_utf8_lossy(&req.body).into_owned();
        let token = form
            .split('&')
            .find_map(|p| p.strip_prefix("token="))
            .map(|t| {
                percent_encoding::percent_decode_str(t)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        let answer = |v: Value| Reply::json(200, v.to_string());
        match token.as_str() {
            "good" => answer(active(json!({}))),
            "slow" => answer(active(json!({}))).after(Duration::from_secs(3)),
            "garbage" => Reply::json(200, format!("<html>{SECRET}</html>")),
            "not-object" => answer(json!(["active", true])),
            "no-active" => answer(active(json!({"active": null}))),
            "string-active" => answer(active(json!({"active": "true"}))),
            "server-error" => Reply::json(500, format!("{{\"error\":\"{SECRET}\"}}")),
            "reset" => {
                Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n{\"active\":tr".to_vec())
            }
            "huge" => answer(active(json!({"pad": "x".repeat(2 * 1024 * 1024)}))),
            "bad-patient" => answer(active(json!({"patient": "../B"}))),
            "no-exp" => answer(active(json!({"exp": null}))),
            _ => answer(json!({"active": false})),
        }
    });
    let proxy = introspection_proxy(&server.url);
    let (r, _) = timed(|| proxy.get("Patient/pt-01", "good"));
    assert_eq!(r.status, 200, "{}", r.text());
    for (token, reason) in [
        ("slow", "introspection_unavailable"),
        ("garbage", "introspection_unavailable"),
        ("not-object", "introspection_unavailable"),
        ("server-error", "introspection_unavailable"),
        ("reset", "introspection_unavailable"),
        ("huge", "introspection_unavailable"),
        ("no-active", "inactive"),
        ("string-active", "inactive"),
        ("bad-patient", "bad_patient_claim"),
        ("no-exp", "missing_claim"),
        ("unknown", "inactive"),
    ] {
        let (r, took) = timed(|| proxy.get("Patient/pt-01", token));
        assert_outcome(&r, 401);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|w| w.contains("invalid_token")),
            "{token}: {:?}",
            r.headers
        );
        // timeout 1s + scheduling slack; never the server's 3 s.
        assert!(took < Duration::from_millis(2500), "{token} took {took:?}");
        assert_eq!(last_reason(&proxy), reason, "{token}");
    }
    // A burst of slow look-ups: all bounded by the timeout, coalesced into few calls.
    let before = server.hits();
    let started = Instant::now();
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let addr = proxy.addr.clone();
            std::thread::spawn(move || {
                http::send(
                    &addr,
                    "GET",
                    "/fhir/Patient/pt-01",
                    &[("Authorization", "Bearer slow")],
                    b"",
                )
                .unwrap()
                .status
            })
        })
        .collect();
    for b in burst {
        assert_eq!(b.join().unwrap(), 401);
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(
        server.hits() - before <= 4,
        "{} introspection calls for one token",
        server.hits() - before
    );
    assert_healthy(&proxy);
}

#[test]
fn introspection_down_is_401() {
    let proxy = introspection_proxy(&dead_url());
    let (r, took) = timed(|| proxy.get("Patient/pt-01", "any-token"));
    assert_outcome(&r, 401);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(last_reason(&proxy), "introspection_unavailable");
    assert_healthy(&proxy);
}

// ---------------------------------------------------------------- upstream

/// An Observation of patient B carrying the marker.
fn foreign_obs() -> String {
    json!({"resourceType": "Observation", "id": "x", "status": "final",
        "subject": {"reference": "Patient/B"}, "note": [{"text": SECRET}]})
    .to_string()
}

fn own_obs(id: &str) -> String {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "subject": {"reference": "Patient/A"}})
    .to_string()
}

/// The upstream's misbehaviour, chosen by the id read or the `code` searched.
fn upstream_script(req: &faulty::Req) -> Reply {
    let t = req.target.as_str();
    let which = t
        .split(['/', '?', '&', '='])
        .find(|s| s.starts_with("f-"))
        .unwrap_or("f-ok");
    let bundle = |entries: &str| {
        format!("{{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"entry\":[{entries}]}}")
    };
    match which {
        "f-ok" => Reply::json(200, own_obs("ok")),
        "f-reset" => {
            let body = foreign_obs();
            let mut raw = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
                body.len() + 5000
            )
            .into_bytes();
            raw.extend_from_slice(&body.as_bytes()[..body.len() / 2]);
            Reply::Raw(raw)
        }
        "f-reset-chunked" => Reply::Raw(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n{}",
                &foreign_obs()[..30]
            )
            .into_bytes(),
        ),
        "f-close" => Reply::Close,
        "f-500" => Reply::json(500, format!("{{\"error\":\"{SECRET}\"}}")),
        "f-503" => Reply::json(503, foreign_obs()),
        "f-slow-head" => Reply::json(200, own_obs("slow")).after(Duration::from_secs(4)),
        "f-huge-head" => {
            let mut raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nX-Big: ".to_vec();
            raw.extend(std::iter::repeat_n(b'a', 1024 * 1024));
            raw.extend_from_slice(format!("\r\nContent-Length: 2\r\n\r\n{{}}{SECRET}").as_bytes());
            Reply::Raw(raw)
        }
        "f-many-headers" => {
            let mut raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n".to_vec();
            for i in 0..500 {
                raw.extend_from_slice(format!("X-H{i}: {SECRET}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"Content-Length: 2\r\n\r\n{}");
            Reply::Raw(raw)
        }
        "f-bad-head" => Reply::Raw(format!("HTTP/1.1 2OO OK\r\n\r\n{SECRET}").into_bytes()),
        "f-invalid-json" => Reply::json(200, format!("{{\"resourceType\":\"Observation\",{SECRET}}}")),
        "f-truncated-json" => {
            let b = foreign_obs();
            Reply::json(200, b[..b.len() - 10].to_owned())
        }
        "f-xml" => Reply::json(200, format!("<Observation><note>{SECRET}</note></Observation>"))
            .with_header("Content-Type", "application/fhir+xml"),
        "f-empty" => Reply::json(200, ""),
        "f-not-utf8" => {
            let mut b = own_obs("x").into_bytes();
            b.insert(5, 0xff);
            Reply::json(200, b)
        }
        "f-dup-subject" => Reply::json(
            200,
            format!(
                "{{\"resourceType\":\"Observation\",\"id\":\"d\",\"subject\":{{\"reference\":\"Patient/A\"}},\"subject\":{{\"reference\":\"Patient/B\"}},\"note\":[{{\"text\":\"{SECRET}\"}}]}}"
            ),
        ),
        "f-dup-reference" => Reply::json(
            200,
            format!(
                "{{\"resourceType\":\"Observation\",\"id\":\"d\",\"subject\":{{\"reference\":\"Patient/A\",\"reference\":\"Patient/B\"}},\"note\":[{{\"text\":\"{SECRET}\"}}]}}"
            ),
        ),
        "f-dup-type" => Reply::json(
            200,
            format!(
                "{{\"resourceType\":\"Observation\",\"resourceType\":\"Patient\",\"id\":\"A\",\"note\":\"{SECRET}\"}}"
            ),
        ),
        "f-bundle-dup-subject" => Reply::json(
            200,
            bundle(&format!(
                "{{\"resource\":{{\"resourceType\":\"Observation\",\"id\":\"1\",\"subject\":{{\"reference\":\"Patient/A\"}},\"subject\":{{\"reference\":\"Patient/B\"}},\"note\":[{{\"text\":\"{SECRET}\"}}]}}}}"
            )),
        ),
        "f-bundle-dup-entry" => Reply::json(
            200,
            format!(
                "{{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"entry\":[{{\"resource\":{}}}],\"entry\":[{{\"resource\":{}}}]}}",
                own_obs("1"),
                foreign_obs()
            ),
        ),
        "f-bundle-dup-resource" => Reply::json(
            200,
            bundle(&format!("{{\"resource\":{},\"resource\":{}}}", own_obs("1"), foreign_obs())),
        ),
        "f-bundle-truncated" => {
            let b = bundle(&format!("{{\"resource\":{}}},{{\"resource\":{}}}", own_obs("1"), foreign_obs()));
            Reply::json(200, b[..b.len() - 3].to_owned())
        }
        "f-wrong-type" => Reply::json(
            200,
            json!({"resourceType": "Patient", "id": "B", "name": [{"text": SECRET}]}).to_string(),
        ),
        "f-search-not-bundle" => Reply::json(200, foreign_obs()),
        "f-bundle-foreign" => Reply::json(
            200,
            bundle(&format!(
                "{{\"resource\":{}}},{{\"resource\":{}}},{{\"resource\":{{\"resourceType\":\"Patient\",\"id\":\"B\",\"name\":[{{\"text\":\"{SECRET}\"}}]}}}}",
                own_obs("1"),
                foreign_obs()
            )),
        ),
        _ => Reply::json(404, "{}"),
    }
}

/// Reads and searches under a patient/ grant (filtered) against the misbehaving upstream.
#[test]
fn upstream_faults_under_a_filter_are_clear_bounded_and_leak_nothing() {
    let server = faulty::start(upstream_script);
    let proxy = Proxy::start_with_timeout(&server.url, "1s");
    let token = proxy.token(
        "patient/Observation.rs patient/Patient.rs launch/patient",
        Some("A"),
    );
    let ok = proxy.get("Observation/f-ok", &token);
    assert_eq!(ok.status, 200, "{}", ok.text());
    // (what, request, expected status)
    let cases: &[(&str, &str, u16)] = &[
        ("reset mid-body", "Observation/f-reset", 502),
        ("reset mid-chunk", "Observation/f-reset-chunked", 502),
        ("closed without answer", "Observation/f-close", 502),
        ("5xx", "Observation/f-500", 502),
        ("503 with a foreign body", "Observation/f-503", 502),
        ("slow head", "Observation/f-slow-head", 504),
        ("1 MB header", "Observation/f-huge-head", 502),
        ("500 headers", "Observation/f-many-headers", 502),
        ("bad status line", "Observation/f-bad-head", 502),
        ("invalid JSON", "Observation/f-invalid-json", 502),
        ("truncated JSON", "Observation/f-truncated-json", 502),
        ("XML body", "Observation/f-xml", 502),
        ("not UTF-8", "Observation/f-not-utf8", 502),
        ("duplicate subject", "Observation/f-dup-subject", 502),
        (
            "duplicate nested reference",
            "Observation/f-dup-reference",
            502,
        ),
        ("duplicate resourceType", "Observation/f-dup-type", 502),
        ("other resourceType", "Observation/f-wrong-type", 502),
        ("search: reset", "Observation?patient=A&code=f-reset", 502),
        ("search: 5xx", "Observation?patient=A&code=f-500", 502),
        (
            "search: slow head",
            "Observation?patient=A&code=f-slow-head",
            504,
        ),
        (
            "search: invalid JSON",
            "Observation?patient=A&code=f-invalid-json",
            502,
        ),
        (
            "search: truncated Bundle",
            "Observation?patient=A&code=f-bundle-truncated",
            502,
        ),
        (
            "search: empty body",
            "Observation?patient=A&code=f-empty",
            200,
        ),
        (
            "search: not a Bundle",
            "Observation?patient=A&code=f-search-not-bundle",
            502,
        ),
        (
            "search: duplicate subject in an entry",
            "Observation?patient=A&code=f-bundle-dup-subject",
            502,
        ),
        (
            "search: duplicate entry key",
            "Observation?patient=A&code=f-bundle-dup-entry",
            502,
        ),
        (
            "search: duplicate resource key",
            "Observation?patient=A&code=f-bundle-dup-resource",
            502,
        ),
    ];
    for (what, target, want) in cases {
        let (r, took) = timed(|| proxy.get(target, &token));
        assert!(
            took < Duration::from_millis(2500),
            "{what}: took {took:?} (upstream timeout 1s)"
        );
        assert!(!r.text().contains(SECRET), "{what}: leaked {}", r.text());
        assert!(
            !r.headers.iter().any(|(_, v)| v.contains(SECRET)),
            "{what}: leaked a header"
        );
        if *want == 200 {
            // An empty 200 has nothing to leak: passed on empty.
            assert_eq!(r.status, 200, "{what}: {}", r.text());
            assert!(r.body.is_empty(), "{what}");
        } else {
            assert_outcome(&r, *want);
        }
    }
    // A Bundle with foreign entries and types: 200 with only the patient's own entry.
    let r = proxy.get("Observation?patient=A&code=f-bundle-foreign", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(common::entry_ids(&r.json()), vec!["Observation/1"]);
    assert!(!r.text().contains(SECRET));
    assert_healthy(&proxy);
}

/// Under a user/ grant a single-resource read streams as the upstream sends it (the
/// upstream is trusted for what it returns); a fault after the head can only end the
/// stream early, which the client sees as a truncated response, never as a hang.
#[test]
fn upstream_faults_when_streaming_end_the_response_without_hanging() {
    let server = faulty::start(upstream_script);
    let proxy = Proxy::start_with_timeout(&server.url, "1s");
    let token = proxy.token("user/Observation.rs", None);
    let started = Instant::now();
    let r = http::send(
        &proxy.addr,
        "GET",
        "/fhir/Observation/f-reset",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    match r {
        // The head went out before the upstream failed: the body must be cut short.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
        Ok(r) => panic!("a truncated upstream body looked complete: {}", r.status),
    }
    for (target, want) in [
        ("Observation/f-slow-head", 504),
        ("Observation/f-close", 502),
        ("Observation/f-huge-head", 502),
        ("Observation/f-bad-head", 502),
        ("Observation?code=f-invalid-json", 502),
        ("Observation?code=f-bundle-dup-entry", 502),
    ] {
        let (r, took) = timed(|| proxy.get(target, &token));
        assert!(took < Duration::from_millis(2500), "{target}: {took:?}");
        assert_outcome(&r, want);
    }
    assert_healthy(&proxy);
}

/// `upstream.max_connections` bounds what the upstream sees at once, whatever the client
/// load: the rest wait in smartgate, and a wait longer than `upstream.timeout` is a 504.
#[test]
fn upstream_concurrency_is_capped_and_waiting_counts_against_the_timeout() {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (Arc::clone(&now), Arc::clone(&peak));
    let server = faulty::start(move |_req| {
        let mine = n.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(mine, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(150));
        n.fetch_sub(1, Ordering::SeqCst);
        Reply::json(200, own_obs("ok"))
    });
    // Two workers with one slot each: at most two requests upstream at a time.
    let proxy =
        Proxy::start_with_upstream(&server.url, "10s", "  max_connections: 2\n", "workers: 2\n");
    let token = proxy.token("user/Observation.rs", None);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..12)
            .map(|_| s.spawn(|| proxy.get("Observation/f-ok", &token).status))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(statuses, vec![200; 12]);
    let seen = peak.load(Ordering::SeqCst);
    assert!((1..=2).contains(&seen), "{seen} requests upstream at once");
    assert_eq!(server.hits(), 12);

    // One slot and a 1 s timeout: of five 400 ms requests at once, the last ones time out
    // while still waiting for the slot, with a clear 504 and an audit reason.
    let slow = faulty::start(|_req| {
        std::thread::sleep(Duration::from_millis(400));
        Reply::json(200, own_obs("ok"))
    });
    let proxy =
        Proxy::start_with_upstream(&slow.url, "1s", "  max_connections: 1\n", "workers: 1\n");
    let token = proxy.token("user/Observation.rs", None);
    type Timed = (Resp, Duration);
    let (replies, busy_and_waiting): (Vec<Timed>, Vec<(i64, i64)>) = std::thread::scope(|s| {
        let calls: Vec<_> = (0..5)
            .map(|_| s.spawn(|| timed(|| proxy.get("Observation/f-ok", &token))))
            .collect();
        // The slot gauges while the requests queue.
        let seen = (0..20)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(40));
                slot_gauges(&proxy)
            })
            .collect();
        let replies = calls.into_iter().map(|c| c.join().unwrap()).collect();
        (replies, seen)
    });
    assert!(
        busy_and_waiting.iter().any(|&(b, w)| b == 1 && w >= 1),
        "the gauges never showed one busy slot and a queue: {busy_and_waiting:?}"
    );
    assert!(busy_and_waiting.iter().all(|&(b, _)| b <= 1));
    assert_eq!(slot_gauges(&proxy), (0, 0), "slots not given back");
    let ok = replies.iter().filter(|(r, _)| r.status == 200).count();
    assert!(
        (1..=3).contains(&ok),
        "{ok} of 5 got through one slot in 1 s"
    );
    for (r, took) in &replies {
        assert!(*took < Duration::from_millis(2500), "took {took:?}");
        if r.status != 200 {
            assert_outcome(r, 504);
        }
    }
    assert!(
        slow.hits() <= 3,
        "{} requests reached the upstream",
        slow.hits()
    );
    assert!(
        proxy
            .audit_lines()
            .iter()
            .any(|l| l["reason"] == "upstream-timeout"),
        "no audit line says upstream-timeout"
    );
    assert_healthy(&proxy);
}

/// `(upstream_busy_connections, upstream_waiting_requests)` from the admin port.
fn slot_gauges(proxy: &Proxy) -> (i64, i64) {
    let text = http::send(&proxy.admin, "GET", "/metrics", &[], b"")
        .expect("metrics")
        .text();
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<i64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    (
        gauge("smartgate_upstream_busy_connections "),
        gauge("smartgate_upstream_waiting_requests "),
    )
}
