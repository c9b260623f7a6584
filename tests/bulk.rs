//! Bulk Data export (SMART Backend Services) end to end through the proxy, against the
//! real test bed: hfs (its Bulk Data export writing NDJSON under the bed's `exports/`)
//! and the real authorization server (`client_credentials` tokens, two clients).
//!
//! Kick-off at the three levels by GET and POST, parameters judged and `_type` narrowed,
//! status polled to the manifest, every manifest URL on the proxy and signed, files
//! downloaded and each line's type checked, the job's URLs useless to anyone but the
//! client that started it, cancel by the owner, and the two bugs seen on main.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Proxy, Resp, TokenReq, authority, bed, enc, http, path_of};
use serde_json::{Value, json};

const ASYNC: (&str, &str) = ("Prefer", "respond-async");
const ACCEPT: (&str, &str) = ("Accept", "application/fhir+json");

fn example(name: &str) -> PathBuf {
    common::repo_root().join("policies/examples").join(name)
}

/// A proxy with example policies.
fn proxy_with(policies: &[&str], extra: &str) -> Proxy {
    let list: String = policies
        .iter()
        .map(|p| format!("  - {}\n", example(p).display()))
        .collect();
    Proxy::start(&format!("policies:\n{list}{extra}"))
}

/// The demo's policies: the operation allow-list (which opens `$export`) and the bulk
/// example.
fn proxy() -> Proxy {
    proxy_with(&["operations.yaml", "bulk-export.yaml"], "")
}

/// A backend token of `test-client` (client A).
fn token_a(p: &Proxy, scope: &str) -> String {
    p.mint(TokenReq {
        scope,
        ..Default::default()
    })
}

/// A backend token of `test-client-post` (client B, another backend service).
fn token_b(p: &Proxy, scope: &str) -> String {
    let bed = bed();
    let form = [
        ("grant_type", "client_credentials".to_owned()),
        ("client_id", "test-client-post".to_owned()),
        ("client_secret", "test-secret".to_owned()),
        ("scope", scope.to_owned()),
        ("resource", p.base.clone()),
    ];
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    let url = bed.var("AS_TOKEN");
    let resp = http::send(
        &authority(url),
        "POST",
        &path_of(url),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.join("&").as_bytes(),
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["access_token"].as_str().unwrap().to_owned()
}

/// A Group of two bed patients, written straight to hfs (the data set has no Group).
fn group() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let id = format!("bulk-{}", std::process::id());
        let base = bed().var("FHIR_BASE");
        let g = json!({
            "resourceType": "Group", "id": id, "type": "person", "actual": true,
            "member": [{"entity": {"reference": "Patient/pt-01"}}, {"entity": {"reference": "Patient/pt-02"}}]
        });
        let r = http::send(
            &authority(base),
            "PUT",
            &format!("{}/Group/{id}", path_of(base).trim_end_matches('/')),
            &[("Content-Type", "application/fhir+json")],
            g.to_string().as_bytes(),
        )
        .unwrap();
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
        id
    })
}

/// A request to an absolute URL the proxy handed out (it must be on this proxy).
fn at(p: &Proxy, method: &str, url: &str, token: &str) -> std::io::Result<Resp> {
    let prefix = format!("http://{}", p.addr);
    let target = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url} is not on the proxy {prefix}"));
    let auth = format!("Bearer {token}");
    http::send(&p.addr, method, target, &[("Authorization", &auth)], b"")
}

fn kickoff(p: &Proxy, rel: &str, token: &str) -> Resp {
    p.req("GET", rel, token, &[ASYNC, ACCEPT], b"")
}

fn kickoff_post(p: &Proxy, rel: &str, token: &str, params: Value) -> Resp {
    let body = json!({"resourceType": "Parameters", "parameter": params});
    p.req(
        "POST",
        rel,
        token,
        &[ASYNC, ACCEPT, ("Content-Type", "application/fhir+json")],
        body.to_string().as_bytes(),
    )
}

/// The status URL of an accepted kick-off: on the proxy, signed.
fn status_url(p: &Proxy, r: &Resp) -> String {
    assert_eq!(r.status, 202, "{}", r.text());
    let loc = r
        .header("Content-Location")
        .expect("Content-Location")
        .to_owned();
    assert!(loc.starts_with(&p.base), "{loc}");
    assert!(loc.contains("_sgb=s"), "{loc}");
    loc
}

/// Polls until the job is no longer in progress (bounded), checking the 202s on the way.
fn poll(p: &Proxy, url: &str, token: &str) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = at(p, "GET", url, token).unwrap();
        if r.status != 202 {
            return r;
        }
        assert!(r.header("Retry-After").is_some(), "202 without Retry-After");
        assert!(r.header("X-Progress").is_some(), "202 without X-Progress");
        assert!(r.body.is_empty(), "{}", r.text());
        assert!(Instant::now() < deadline, "export did not complete in time");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The completed manifest, with every URL checked: on the proxy, signed, nothing upstream.
fn manifest(p: &Proxy, url: &str, token: &str) -> Value {
    let r = poll(p, url, token);
    assert_eq!(r.status, 200, "{}", r.text());
    let upstream = bed().var("FHIR_BASE");
    assert!(!r.text().contains(upstream), "{}", r.text());
    let m = r.json();
    assert_eq!(m["requiresAccessToken"], true);
    assert!(m["request"].as_str().unwrap().starts_with(&p.base), "{m}");
    for key in ["output", "error"] {
        for e in m[key].as_array().unwrap() {
            let u = e["url"].as_str().unwrap();
            assert!(u.starts_with(&p.base), "{u}");
            let tag = if key == "output" { "_sgb=f" } else { "_sgb=e" };
            assert!(u.contains(tag), "{u}");
        }
    }
    m
}

/// Downloads every output file; every line must be an object of an allowed type.
/// Returns the types seen.
fn download_all(p: &Proxy, m: &Value, token: &str, allowed: &[&str]) -> Vec<String> {
    let mut seen = Vec::new();
    for e in m["output"].as_array().unwrap() {
        let r = at(p, "GET", e["url"].as_str().unwrap(), token).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("Content-Type"), Some("application/fhir+ndjson"));
        let mut lines = 0;
        for line in r.text().lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            let t = v["resourceType"].as_str().unwrap().to_owned();
            assert!(allowed.contains(&t.as_str()), "{t} in {allowed:?}");
            if !seen.contains(&t) {
                seen.push(t);
            }
            lines += 1;
        }
        if let Some(n) = e["count"].as_u64() {
            assert_eq!(lines, n, "count of {}", e["url"]);
        }
    }
    seen
}

fn audit_reasons(p: &Proxy) -> Vec<(String, String)> {
    p.audit_lines()
        .iter()
        .map(|l| {
            (
                l["decision"].as_str().unwrap_or("").to_owned(),
                l["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------

/// Regression (main): `GET Group/{id}/$export` answered 202, but polling the moved
/// Content-Location answered 404 "unknown resource type". Now the poll reaches the
/// manifest, and its files download.
#[test]
fn group_export_polls_to_a_manifest_and_files() {
    let p = proxy();
    let tok = token_a(&p, "system/*.rs");
    let r = kickoff(
        &p,
        &format!("Group/{}/$export?_type=Patient,Observation", group()),
        &tok,
    );
    let url = status_url(&p, &r);
    let m = manifest(&p, &url, &tok);
    let seen = download_all(&p, &m, &tok, &["Patient", "Observation"]);
    assert!(seen.contains(&"Patient".to_owned()), "{m}");
    // Only the group's two patients.
    let patients = m["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "Patient")
        .map(|e| e["count"].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert_eq!(patients, 2, "{m}");
    assert!(
        audit_reasons(&p).contains(&("allow".into(), "export-manifest".into())),
        "{:?}",
        audit_reasons(&p)
    );
}

/// Regression (main): `operations.yaml` opened `$export` at system and type level only,
/// not on a Group instance.
#[test]
fn the_operations_example_opens_group_export() {
    let p = proxy_with(&["operations.yaml"], "");
    let tok = token_a(&p, "system/*.rs");
    let r = kickoff(
        &p,
        &format!("Group/{}/$export?_type=Patient", group()),
        &tok,
    );
    let url = status_url(&p, &r);
    let m = manifest(&p, &url, &tok);
    download_all(&p, &m, &tok, &["Patient"]);
}

#[test]
fn kickoff_at_every_level_by_get_and_post() {
    let p = proxy();
    let tok = token_a(&p, "system/Patient.rs system/Observation.rs");
    let g = group();
    for rel in [
        "$export".to_owned(),
        "Patient/$export".to_owned(),
        format!("Group/{g}/$export"),
    ] {
        let get = kickoff(&p, &format!("{rel}?_type=Patient"), &tok);
        let post = kickoff_post(
            &p,
            &rel,
            &tok,
            json!([
                {"name": "_type", "valueString": "Patient"},
                {"name": "_since", "valueInstant": "2000-01-01T00:00:00Z"},
                {"name": "_outputFormat", "valueString": "application/fhir+ndjson"}
            ]),
        );
        for (how, r) in [("GET", get), ("POST", post)] {
            let url = status_url(&p, &r);
            let m = manifest(&p, &url, &tok);
            let req = m["request"].as_str().unwrap();
            assert!(req.contains("_type=Patient"), "{how} {rel}: {req}");
            let seen = download_all(&p, &m, &tok, &["Patient"]);
            assert_eq!(seen, ["Patient"], "{how} {rel}: {m}");
        }
    }
}

#[test]
fn type_is_checked_against_the_grant_and_narrowed() {
    let p = proxy();
    let tok = token_a(&p, "system/Patient.rs system/Observation.rs");
    let g = group();
    // An explicit type the grant does not cover: refused.
    let r = kickoff(
        &p,
        &format!("Group/{g}/$export?_type=Patient,Condition"),
        &tok,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = kickoff_post(
        &p,
        "$export",
        &tok,
        json!([{"name": "_type", "valueString": "Condition"}]),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // No _type: narrowed to the granted types (documented), not refused.
    let r = kickoff(&p, &format!("Group/{g}/$export"), &tok);
    let url = status_url(&p, &r);
    let m = manifest(&p, &url, &tok);
    let req = m["request"].as_str().unwrap();
    assert!(req.contains("_type=Patient,Observation"), "{req}");
    let seen = download_all(&p, &m, &tok, &["Patient", "Observation"]);
    assert!(seen.contains(&"Observation".to_owned()), "{seen:?}");
    let narrowed = p
        .audit_lines()
        .into_iter()
        .find(|l| l["reason"] == "export-kickoff" && l["decision"] == "narrow");
    assert!(narrowed.is_some(), "{:?}", audit_reasons(&p));
    // A grant that covers no type at all still gets nothing.
    let none = token_a(&p, "system/Patient.r");
    let r = kickoff(&p, "$export", &none);
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn parameters_fail_closed() {
    let p = proxy();
    let tok = token_a(&p, "system/Patient.rs system/Observation.rs");
    let cases: &[(&str, u16)] = &[
        ("$export?_type=Patient&patient=Patient/pt-01", 400),
        ("$export?_type=Patient&_elements=id", 400),
        ("$export?_type=Patient&_outputFormat=text/csv", 400),
        ("$export?_type=Patient&_since=yesterday", 400),
        ("$export?_type=Nope", 400),
        // _typeFilter on a type _type does not list
        (
            "$export?_type=Patient&_typeFilter=Observation%3Fstatus%3Dfinal",
            400,
        ),
        // _typeFilter on a type the grant cannot export
        (
            "$export?_typeFilter=Condition%3Fclinical-status%3Dactive",
            403,
        ),
        // _typeFilter judged like a search: a chain into a type without search access
        (
            "$export?_type=Observation&_typeFilter=Observation%3Fsubject%3AGroup.name%3Dx",
            403,
        ),
    ];
    for (rel, want) in cases {
        let r = kickoff(&p, rel, &tok);
        assert_eq!(r.status, *want, "{rel}: {}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }
    // A _typeFilter the grant allows goes through.
    let r = kickoff(
        &p,
        "$export?_type=Observation&_typeFilter=Observation%3Fstatus%3Dfinal",
        &tok,
    );
    let url = status_url(&p, &r);
    let m = manifest(&p, &url, &tok);
    assert!(
        m["request"].as_str().unwrap().contains("_typeFilter="),
        "{m}"
    );
    download_all(&p, &m, &tok, &["Observation"]);
    // Unknown parameters in a POST body too.
    let r = kickoff_post(
        &p,
        "$export",
        &tok,
        json!([{"name": "patient", "valueReference": {"reference": "Patient/pt-01"}}]),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // Prefer: respond-async is required.
    let r = p.req("GET", "$export?_type=Patient", &tok, &[ACCEPT], b"");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("respond-async"), "{}", r.text());
}

#[test]
fn only_backend_tokens_export() {
    let p = proxy();
    for t in [
        p.mint(TokenReq {
            scope: "user/*.rs",
            fhir_user: Some("Practitioner/pr-01"),
            ..Default::default()
        }),
        p.mint(TokenReq {
            scope: "launch/patient patient/*.rs",
            patient: Some("pt-01"),
            ..Default::default()
        }),
        // A system/ scope with a user in the token is not a backend token.
        p.mint(TokenReq {
            scope: "system/*.rs",
            fhir_user: Some("Practitioner/pr-01"),
            ..Default::default()
        }),
    ] {
        let r = kickoff(&p, "$export?_type=Patient", &t);
        assert_eq!(r.status, 403, "{}", r.text());
    }
    // The owner's client, later with a token that is no backend token: 403 on the job.
    let tok = token_a(&p, "system/*.rs");
    let url = status_url(&p, &kickoff(&p, "$export?_type=Patient", &tok));
    let patient_tok = p.mint(TokenReq {
        scope: "system/*.rs",
        patient: Some("pt-01"),
        ..Default::default()
    });
    assert_eq!(at(&p, "GET", &url, &patient_tok).unwrap().status, 403);
}

#[test]
fn a_job_is_invisible_to_anyone_but_its_owner() {
    let p = proxy();
    let tok = token_a(&p, "system/*.rs");
    let url = status_url(
        &p,
        &kickoff(
            &p,
            &format!("Group/{}/$export?_type=Patient", group()),
            &tok,
        ),
    );
    let m = manifest(&p, &url, &tok);
    let file = m["output"][0]["url"].as_str().unwrap().to_owned();
    let job = url
        .split("export-status/")
        .nth(1)
        .and_then(|s| s.split('?').next())
        .unwrap()
        .to_owned();
    let other = token_b(&p, "system/*.rs");
    let not_found = |r: Resp| {
        assert_eq!(r.status, 404, "{}", r.text());
        assert!(!r.text().contains(&job), "{}", r.text());
        assert!(!r.text().contains("export"), "{}", r.text());
    };
    not_found(at(&p, "GET", &url, &other).unwrap());
    not_found(at(&p, "GET", &file, &other).unwrap());
    not_found(at(&p, "DELETE", &url, &other).unwrap());
    // Without the signature, or with a forged one, not even the owner gets anything.
    let unsigned = url.split('?').next().unwrap().to_owned();
    let r = at(&p, "GET", &unsigned, &tok).unwrap();
    assert!(r.status == 404 || r.status == 400, "{}", r.text());
    assert!(!r.text().contains(&job));
    let forged = format!("{}?_sgb=s{}", unsigned, "0".repeat(32));
    not_found(at(&p, "GET", &forged, &tok).unwrap());
    let as_file = url.replace("_sgb=s", "_sgb=f");
    not_found(at(&p, "GET", &as_file, &tok).unwrap());
    // The job survived all that: the owner, with a fresh token (backend tokens expire
    // during long exports), still polls and downloads.
    let fresh = token_a(&p, "system/Patient.rs");
    assert_eq!(at(&p, "GET", &url, &fresh).unwrap().status, 200);
    assert_eq!(at(&p, "GET", &file, &fresh).unwrap().status, 200);
    assert!(
        audit_reasons(&p).contains(&("deny".into(), "bulk-url-not-yours".into())),
        "{:?}",
        audit_reasons(&p)
    );
}

#[test]
fn the_owner_cancels() {
    let p = proxy();
    let tok = token_a(&p, "system/*.rs");
    let url = status_url(&p, &kickoff(&p, "$export?_type=Patient", &tok));
    let r = at(&p, "DELETE", &url, &tok).unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let r = at(&p, "GET", &url, &tok).unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    // Other methods on a status URL are refused.
    let url2 = status_url(&p, &kickoff(&p, "$export?_type=Patient", &tok));
    let r = at(&p, "PUT", &url2, &tok).unwrap();
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(at(&p, "DELETE", &url2, &tok).unwrap().status, 202);
}

/// A line the downloading grant may not read ends the transfer broken, never cleanly.
#[test]
fn a_forbidden_line_breaks_the_download() {
    let p = proxy();
    let tok = token_a(&p, "system/*.rs");
    let url = status_url(
        &p,
        &kickoff(
            &p,
            &format!("Group/{}/$export?_type=Patient,Observation", group()),
            &tok,
        ),
    );
    let m = manifest(&p, &url, &tok);
    let obs = m["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "Observation")
        .expect("an Observation file")["url"]
        .as_str()
        .unwrap()
        .to_owned();
    // Same client, but this token may only read Patients.
    let narrow = token_a(&p, "system/Patient.rs");
    let r = at(&p, "GET", &obs, &narrow);
    assert!(
        r.is_err(),
        "the transfer must break, not end cleanly: {:?}",
        r.map(|r| (r.status, r.text()))
    );
    // The same file for a grant that covers it.
    assert_eq!(at(&p, "GET", &obs, &tok).unwrap().status, 200);
    let log = std::fs::read_to_string(p.dir.join("stderr.log")).unwrap_or_default();
    assert!(log.contains("line-type-not-granted"), "{log}");
    // The abort has an audit line of its own (the request's line left with the head).
    let aborted = p
        .audit_lines()
        .into_iter()
        .find(|l| l["reason"] == "line-type-not-granted")
        .expect("an audit line for the aborted file");
    assert_eq!(aborted["decision"], "deny", "{aborted}");
}

/// Stateless binding: another replica sharing `paging.secret_file` serves the poll.
#[test]
fn any_replica_serves_the_poll() {
    let dir = std::env::temp_dir().join(format!("sg-bulk-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("paging-secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
    let extra = format!("paging:\n  secret_file: {}\n", secret.display());
    let a = proxy_with(&["operations.yaml", "bulk-export.yaml"], &extra);
    let b = proxy_with(&["operations.yaml", "bulk-export.yaml"], &extra);
    let tok = token_a(&a, "system/*.rs");
    let url = status_url(&a, &kickoff(&a, "$export?_type=Patient", &tok));
    let on_b = url.replace(&a.addr, &b.addr);
    let tok_b = token_a(&b, "system/*.rs");
    let m = manifest(&b, &on_b, &tok_b);
    download_all(&b, &m, &tok_b, &["Patient"]);
    // A replica with another secret does not know the job.
    let c = proxy();
    let tok_c = token_a(&c, "system/*.rs");
    let on_c = url.replace(&a.addr, &c.addr);
    assert_eq!(at(&c, "GET", &on_c, &tok_c).unwrap().status, 404);
}

/// A kick-off inside a batch would skip the parameter checks and the URL binding: refused.
#[test]
fn no_export_inside_a_batch() {
    let p = proxy();
    let tok = token_a(&p, "system/*.rs");
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "$export?_type=Patient"}},
        {"request": {"method": "GET", "url": format!("Group/{}/$export", group())}}
    ]});
    let r = p.req(
        "POST",
        "",
        &tok,
        &[ASYNC, ACCEPT, ("Content-Type", "application/fhir+json")],
        batch.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let b = r.json();
    for e in b["entry"].as_array().unwrap() {
        assert_eq!(e["response"]["status"], "403 Forbidden", "{b}");
    }
}
