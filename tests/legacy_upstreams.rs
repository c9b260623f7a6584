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
