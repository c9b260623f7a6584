//! Legacy upstreams (issue 16): what smartgate does about the FHIR server behind it.
//!
//! - Strict narrowing: narrowed searches go upstream with `Prefer: handling=strict`
//!   (against the real hfs, through a recording relay, and against a non-conforming stub
//!   that ignores `patient=`); entries the stub returns outside the narrowing are filtered,
//!   counted in `smartgate_upstream_ignored_narrowing_total` and warned about once.
//! - Upstream OAuth 2.0 client credentials against the test bed's real authorization
//!   server (client_secret_basic, client_secret_post, private_key_jwt), a token endpoint
//!   that is down (502, nothing sent upstream), single-flight refresh, and a `bearer`
//!   token file re-read when it changes.

mod common;

use std::time::Duration;

use common::faulty::{self, Faulty, Reply};
use common::{Proxy, authority, bed, http, path_of};
use serde_json::{Value, json};

/// The value of header `name` in a recorded request head, if present.
fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// The `i`th recorded request whose target starts with `prefix`.
fn recorded(stub: &Faulty, prefix: &str) -> Vec<faulty::Req> {
    stub.log
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.target.starts_with(prefix))
        .cloned()
        .collect()
}

/// One sample from the proxy's `/metrics` (0 when the series does not exist yet).
fn metric(proxy: &Proxy, series: &str) -> f64 {
    let text = http::send(&proxy.admin, "GET", "/metrics", &[], b"")
        .expect("metrics")
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn stderr_of(proxy: &Proxy) -> String {
    std::fs::read_to_string(proxy.dir.join("stderr.log")).unwrap_or_default()
}

/// A relay in front of the real hfs that records every request (head included) and
/// forwards it, rewriting hfs's base in the answer to its own.
fn relay_to_hfs() -> Faulty {
    let fhir = bed().var("FHIR_BASE").trim_end_matches('/').to_owned();
    let hfs_addr = authority(&fhir);
    let hfs_path = path_of(&fhir).trim_end_matches('/').to_owned();
    let me: std::sync::Arc<std::sync::OnceLock<String>> = Default::default();
    let me2 = me.clone();
    let relay = faulty::start(move |req| {
        let mut headers: Vec<(&str, String)> = Vec::new();
        for name in ["accept", "prefer", "content-type"] {
            if let Some(v) = header_of(&req.head, name) {
                headers.push((name, v));
            }
        }
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let target = format!("{hfs_path}{}", req.target);
        let resp = match http::send(&hfs_addr, &req.method, &target, &h, &req.body) {
            Ok(r) => r,
            Err(_) => return Reply::Close,
        };
        let base = me2.get().cloned().unwrap_or_default();
        let body = resp.text().replace(&fhir, &base);
        Reply::Full {
            status: resp.status,
            headers: vec![(
                "Content-Type".into(),
                resp.header("content-type")
                    .unwrap_or("application/fhir+json")
                    .to_owned(),
            )],
            body: body.into_bytes(),
        }
    });
    let _ = me.set(relay.url.clone());
    relay
}

#[test]
fn narrowed_search_goes_to_hfs_with_prefer_strict() {
    let relay = relay_to_hfs();
    let proxy = Proxy::start_with_upstream(&relay.url, "10s", "", "");
    let token = proxy.token("patient/Observation.rs", Some("pt-01"));
    let r = proxy.get("Observation?_count=50", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let bundle = r.json();
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    assert!(!entries.is_empty(), "pt-01 has observations: {bundle}");
    for e in &entries {
        assert_eq!(
            e["resource"]["subject"]["reference"], "Patient/pt-01",
            "{e}"
        );
    }
    let sent = recorded(&relay, "/Observation?");
    assert_eq!(sent.len(), 1, "{:?}", relay.seen());
    assert!(
        sent[0].target.contains("patient=Patient/pt-01"),
        "{}",
        sent[0].target
    );
    assert_eq!(
        header_of(&sent[0].head, "prefer").as_deref(),
        Some("handling=strict"),
        "{}",
        sent[0].head
    );
    // hfs honours the pin: nothing was outside it.
    assert_eq!(
        metric(
            &proxy,
            "smartgate_upstream_ignored_narrowing_total{resource_type=\"Observation\"}"
        ),
        0.0
    );
    // A client's own preference survives next to the proxy's.
    let r = proxy.req(
        "GET",
        "Observation?code=x-unknown-code",
        &token,
        &[("Prefer", "return=representation, handling=lenient")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = recorded(&relay, "/Observation?code=");
    assert_eq!(
        header_of(&sent[0].head, "prefer").as_deref(),
        Some("return=representation, handling=strict"),
        "{}",
        sent[0].head
    );
}

/// An Observation of `patient` as the stub serves it.
fn obs(id: &str, patient: &str) -> Value {
    json!({
        "fullUrl": format!("http://stub/Observation/{id}"),
        "resource": {
            "resourceType": "Observation",
            "id": id,
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": format!("Patient/{patient}")}
        },
        "search": {"mode": "match"}
    })
}

/// An upstream that ignores `patient=` and returns everyone's Observations.
fn ignoring_stub() -> Faulty {
    faulty::start(|req| {
        if req.target.starts_with("/Observation") {
            let bundle = json!({
                "resourceType": "Bundle",
                "type": "searchset",
                "total": 3,
                "entry": [obs("o-a", "pt-a"), obs("o-b1", "pt-b"), obs("o-b2", "pt-b")]
            });
            Reply::json(200, bundle.to_string())
        } else {
            Reply::json(404, r#"{"resourceType":"OperationOutcome","issue":[]}"#)
        }
    })
}

#[test]
fn ignored_narrowing_is_filtered_counted_and_warned_once() {
    let stub = ignoring_stub();
    let proxy = Proxy::start_with_upstream(&stub.url, "10s", "", "");
    let token = proxy.token("patient/Observation.rs", Some("pt-a"));
    let series = "smartgate_upstream_ignored_narrowing_total{resource_type=\"Observation\"}";
    for round in 1..=2 {
        let r = proxy.get("Observation", &token);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            common::entry_ids(&r.json()),
            vec!["Observation/o-a".to_owned()],
            "{}",
            r.text()
        );
        assert_eq!(metric(&proxy, series), f64::from(2 * round));
    }
    let sent = recorded(&stub, "/Observation");
    assert_eq!(sent.len(), 2);
    for s in &sent {
        assert!(s.target.contains("patient=Patient/pt-a"), "{}", s.target);
        assert_eq!(
            header_of(&s.head, "prefer").as_deref(),
            Some("handling=strict")
        );
    }
    // One warning for two responses within the interval.
    let mut warnings = 0;
    for _ in 0..50 {
        warnings = stderr_of(&proxy)
            .matches("outside a narrowed search")
            .count();
        if warnings > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(warnings, 1, "{}", stderr_of(&proxy));
    assert!(stderr_of(&proxy).contains("Observation"));
}

#[test]
fn strict_narrowing_can_be_turned_off() {
    let stub = ignoring_stub();
    let proxy = Proxy::start_with_upstream(&stub.url, "10s", "  strict_narrowing: false\n", "");
    let token = proxy.token("patient/Observation.rs", Some("pt-a"));
    let r = proxy.get("Observation", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        common::entry_ids(&r.json()),
        vec!["Observation/o-a".to_owned()]
    );
    let sent = recorded(&stub, "/Observation");
    assert_eq!(header_of(&sent[0].head, "prefer"), None, "{}", sent[0].head);
    // Still filtered and still counted: only the header is off.
    assert_eq!(
        metric(
            &proxy,
            "smartgate_upstream_ignored_narrowing_total{resource_type=\"Observation\"}"
        ),
        2.0
    );
}

// ---------------------------------------------------------------------------------------
// Upstream OAuth 2.0 client credentials.

/// An upstream that records every request and answers every one with a Patient.
fn recording_upstream() -> Faulty {
    faulty::start(|_req| Reply::json(200, r#"{"resourceType":"Patient","id":"p1"}"#))
}

/// The `Authorization` header of every request the stub received.
fn authorizations(stub: &Faulty) -> Vec<Option<String>> {
    stub.log
        .lock()
        .unwrap()
        .iter()
        .map(|r| header_of(&r.head, "authorization"))
        .collect()
}

/// The claims of a JWT (unverified: the test checks who issued it, for whom).
fn jwt_claims(bearer: &str) -> Value {
    use base64::Engine;
    let token = bearer.strip_prefix("Bearer ").expect("a bearer token");
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// A file in a fresh temporary directory.
fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "smartgate-legacy-{}-{}",
        std::process::id(),
        common::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A proxy in front of `stub` whose `upstream.auth` is `auth` (YAML lines indented by 4).
fn proxy_with_auth(stub: &Faulty, auth: &str) -> Proxy {
    Proxy::start_with_upstream(&stub.url, "10s", &format!("  auth:\n{auth}"), "")
}

/// A system token for the proxy (no patient, no user: responses stream through).
fn app_token(proxy: &Proxy) -> String {
    proxy.token("system/Patient.rs", None)
}

/// Sends two requests through a proxy configured with `auth` and checks that the stub got
/// the authorization server's token for `client_id` both times, fetched once.
fn assert_upstream_gets_as_token(auth: &str, client_id: &str) {
    let stub = recording_upstream();
    let auth = auth.replace("RESOURCE", &stub.url);
    let proxy = proxy_with_auth(&stub, &auth);
    let token = app_token(&proxy);
    for _ in 0..2 {
        let r = proxy.get("Patient/p1", &token);
        assert_eq!(r.status, 200, "{} {}", r.text(), stderr_of(&proxy));
    }
    let seen = authorizations(&stub);
    assert_eq!(seen.len(), 2);
    let first = seen[0].clone().expect("an Authorization header upstream");
    assert_eq!(
        seen[1].as_deref(),
        Some(first.as_str()),
        "the token is cached"
    );
    assert_ne!(first, format!("Bearer {token}"), "never the app's token");
    let claims = jwt_claims(&first);
    assert_eq!(claims["iss"], bed().var("AS_ISSUER"), "{claims}");
    assert_eq!(claims["client_id"], client_id, "{claims}");
    assert_eq!(claims["aud"], stub.url.as_str(), "{claims}");
    assert_eq!(claims["scope"], "system/*.read", "{claims}");
}

#[test]
fn client_secret_basic_token_goes_upstream() {
    let secret = temp_file("secret", "test-secret\n");
    assert_upstream_gets_as_token(
        &format!(
            "    type: client_credentials\n    token_url: {}\n    client_id: test-client\n    client_secret_file: {}\n    scope: system/*.read\n    resource: RESOURCE\n",
            bed().var("AS_TOKEN"),
            secret.display()
        ),
        "test-client",
    );
}

#[test]
fn client_secret_post_token_goes_upstream() {
    let secret = temp_file("secret", "test-secret");
    assert_upstream_gets_as_token(
        &format!(
            "    type: client_credentials\n    token_url: {}\n    client_id: test-client-post\n    client_auth: client_secret_post\n    client_secret_file: {}\n    scope: system/*.read\n    resource: RESOURCE\n",
            bed().var("AS_TOKEN"),
            secret.display()
        ),
        "test-client-post",
    );
}

/// The private key of the test bed's private_key_jwt client for `alg`.
fn client_key(alg: &str) -> (String, String, std::path::PathBuf) {
    let keys = bed().control("GET", "client-keys").json();
    let k = &keys[alg];
    let pem = temp_file("key.pem", k["pem"].as_str().expect("pem"));
    (
        k["client_id"].as_str().unwrap().to_owned(),
        k["kid"].as_str().unwrap().to_owned(),
        pem,
    )
}

#[test]
fn private_key_jwt_token_goes_upstream() {
    for alg in ["RS256", "ES256"] {
        let (client_id, kid, pem) = client_key(alg);
        assert_upstream_gets_as_token(
            &format!(
                "    type: client_credentials\n    token_url: {}\n    client_id: {client_id}\n    client_auth: private_key_jwt\n    private_key_file: {}\n    signing_alg: {alg}\n    kid: {kid}\n    scope: system/*.read\n    resource: RESOURCE\n",
                bed().var("AS_TOKEN"),
                pem.display()
            ),
            &client_id,
        );
    }
}

#[test]
fn no_token_means_502_and_nothing_sent_upstream() {
    let stub = recording_upstream();
    let secret = temp_file("secret", "test-secret");
    let proxy = proxy_with_auth(
        &stub,
        &format!(
            "    type: client_credentials\n    token_url: {}/token\n    client_id: test-client\n    client_secret_file: {}\n    timeout: 2s\n",
            faulty::dead_url(),
            secret.display()
        ),
    );
    let token = app_token(&proxy);
    for _ in 0..3 {
        let r = proxy.get("Patient/p1", &token);
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome", "{}", r.text());
    }
    // The wrong secret: the real authorization server refuses, same answer.
    let wrong = temp_file("secret", "not-the-secret");
    let refused = proxy_with_auth(
        &stub,
        &format!(
            "    type: client_credentials\n    token_url: {}\n    client_id: test-client\n    client_secret_file: {}\n",
            bed().var("AS_TOKEN"),
            wrong.display()
        ),
    );
    let r = refused.get("Patient/p1", &app_token(&refused));
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    assert_eq!(
        stub.hits(),
        0,
        "nothing may reach the upstream without credentials"
    );
    let mut reasons = Vec::new();
    for _ in 0..50 {
        reasons = proxy
            .audit_lines()
            .iter()
            .chain(refused.audit_lines().iter())
            .map(|l| l["reason"].as_str().unwrap_or_default().to_owned())
            .collect();
        if reasons.len() == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(reasons, vec!["upstream-credentials"; 4]);
    // Not ready either: the readiness probe cannot reach the upstream as the proxy would.
    let ready = http::send(&proxy.admin, "GET", "/readyz", &[], b"").unwrap();
    assert_ne!(ready.status, 200, "{}", ready.text());
}

#[test]
fn concurrent_requests_on_a_cold_cache_share_one_token_request() {
    let tokens = faulty::start(|req| {
        assert_eq!(req.method, "POST");
        Reply::Full {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: br#"{"access_token":"tok-1","token_type":"Bearer","expires_in":3600}"#.to_vec(),
        }
        .after(Duration::from_millis(500))
    });
    let stub = recording_upstream();
    let secret = temp_file("secret", "s");
    let proxy = proxy_with_auth(
        &stub,
        &format!(
            "    type: client_credentials\n    token_url: {}/token\n    client_id: c\n    client_secret_file: {}\n",
            tokens.url,
            secret.display()
        ),
    );
    let token = app_token(&proxy);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| proxy.get("Patient/p1", &token).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses, vec![200; 8]);
    assert_eq!(tokens.hits(), 1, "one token request for all");
    assert_eq!(
        authorizations(&stub),
        vec![Some("Bearer tok-1".to_owned()); 8]
    );
    let form = String::from_utf8(tokens.log.lock().unwrap()[0].body.clone()).unwrap();
    assert_eq!(form, "grant_type=client_credentials");
    assert_eq!(
        header_of(&tokens.log.lock().unwrap()[0].head, "authorization").as_deref(),
        Some("Basic Yzpz"),
        "client_secret_basic: c:s"
    );
}

#[test]
fn bearer_token_file_is_reread_when_it_changes() {
    let stub = recording_upstream();
    let file = temp_file("token", "first-token\n");
    let proxy = proxy_with_auth(
        &stub,
        &format!("    type: bearer\n    token_file: {}\n", file.display()),
    );
    let token = app_token(&proxy);
    assert_eq!(proxy.get("Patient/p1", &token).status, 200);
    std::fs::write(&file, "the-second-token\n").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(proxy.get("Patient/p1", &token).status, 200);
    assert_eq!(
        authorizations(&stub),
        vec![
            Some("Bearer first-token".to_owned()),
            Some("Bearer the-second-token".to_owned())
        ]
    );
}

/// A token endpoint that answers `tok-N` (N: its hit count) valid for `expires_in`.
fn counting_token_endpoint(expires_in: u64) -> Faulty {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    faulty::start(move |_req| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Reply::Full {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: format!(
                r#"{{"access_token":"tok-{i}","token_type":"Bearer","expires_in":{expires_in}}}"#
            )
            .into_bytes(),
        }
    })
}

fn secret_basic_auth(token_url: &str) -> String {
    let secret = temp_file("secret", "s");
    format!(
        "    type: client_credentials\n    token_url: {token_url}/token\n    client_id: c\n    client_secret_file: {}\n",
        secret.display()
    )
}

#[test]
fn token_is_refreshed_ahead_of_expiry() {
    let tokens = counting_token_endpoint(2);
    let stub = recording_upstream();
    let proxy = proxy_with_auth(&stub, &secret_basic_auth(&tokens.url));
    let token = app_token(&proxy);
    assert_eq!(proxy.get("Patient/p1", &token).status, 200);
    assert_eq!(proxy.get("Patient/p1", &token).status, 200);
    // Past half of the 2 s lifetime: refreshed before it expires.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(proxy.get("Patient/p1", &token).status, 200);
    assert_eq!(
        authorizations(&stub),
        vec![
            Some("Bearer tok-1".to_owned()),
            Some("Bearer tok-1".to_owned()),
            Some("Bearer tok-2".to_owned())
        ]
    );
    assert_eq!(tokens.hits(), 2);
}

#[test]
fn a_token_the_upstream_refuses_is_replaced() {
    let tokens = counting_token_endpoint(3600);
    let stub = faulty::start(
        |req| match header_of(&req.head, "authorization").as_deref() {
            Some("Bearer tok-1") => {
                Reply::json(401, r#"{"resourceType":"OperationOutcome","issue":[]}"#)
            }
            _ => Reply::json(200, r#"{"resourceType":"Patient","id":"p1"}"#),
        },
    );
    let proxy = proxy_with_auth(&stub, &secret_basic_auth(&tokens.url));
    let token = app_token(&proxy);
    assert_eq!(proxy.get("Patient/p1", &token).status, 401);
    assert_eq!(proxy.get("Patient/p1", &token).status, 200);
    assert_eq!(
        authorizations(&stub),
        vec![
            Some("Bearer tok-1".to_owned()),
            Some("Bearer tok-2".to_owned())
        ]
    );
}
