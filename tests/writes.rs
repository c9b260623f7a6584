//! Writes end to end against the real FHIR server and authorization server: granular
//! write scopes judged on the body before anything is sent, write-only grants, conditional
//! writes resolved to their one match, checked writes inside batches and transactions,
//! and what a write answers when the grant cannot read the result.
//!
//! After every refused write the FHIR server is read directly: a refusal to the client
//! is no proof that nothing was written. Every test writes only resources it created
//! itself (unique identifiers), under one lock: hfs's in-memory SQLite refuses reads
//! while a write runs.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use common::{Proxy, Resp, TokenReq, enc, upstream_create};
use serde_json::{Value, json};

const A: &str = "pt-06";
const B: &str = "pt-07";
const CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

fn px() -> &'static Proxy {
    common::shared_proxy()
}

fn serial() -> MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

fn patient_token(scope: &str) -> String {
    px().token(scope, Some(A))
}

fn user_token(scope: &str) -> String {
    px().mint(TokenReq {
        scope,
        fhir_user: Some("Practitioner/pr-01"),
        ..Default::default()
    })
}

fn system_token(scope: &str) -> String {
    px().mint(TokenReq {
        scope,
        ..Default::default()
    })
}

/// The upstream, asked directly (no proxy).
fn up(method: &str, rel: &str, body: &[u8]) -> Resp {
    common::upstream(method, rel, body)
}

fn fresh(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "writes-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn observation(patient: &str, category: &str, ident: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "identifier": [{"system": "urn:writes", "value": ident}],
        "status": "final",
        "category": [{"coding": [{"system": CAT, "code": category}]}],
        "code": {"text": "writes"},
        "subject": {"reference": format!("Patient/{patient}")}
    })
}

fn upstream_read(key: &str) -> Resp {
    up("GET", key, b"")
}

/// The upstream's Observations carrying this identifier.
fn upstream_by_identifier(ident: &str) -> Vec<Value> {
    let r = up(
        "GET",
        &format!(
            "Observation?identifier={}",
            enc(&format!("urn:writes|{ident}"))
        ),
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e["resource"].clone())
        .collect()
}

fn send(method: &str, rel: &str, token: &str, body: &Value) -> Resp {
    px().req(
        method,
        rel,
        token,
        &[("Content-Type", "application/fhir+json")],
        body.to_string().as_bytes(),
    )
}

fn patch(rel: &str, token: &str, ops: &Value) -> Resp {
    px().req(
        "PATCH",
        rel,
        token,
        &[("Content-Type", "application/json-patch+json")],
        ops.to_string().as_bytes(),
    )
}

/// A refusal with an OperationOutcome whose diagnostics contain `names` (a scope).
fn assert_refused(r: &Resp, status: u16, names: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let j = r.json();
    assert_eq!(j["resourceType"], "OperationOutcome", "{what}");
    let diagnostics = j["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(
        diagnostics.contains(names),
        "{what}: {diagnostics:?} should name {names:?}"
    );
}

/// The audit line of the last request with this method.
fn last_audit(method: &str) -> Value {
    let lines = px().audit_lines();
    lines
        .into_iter()
        .rev()
        .find(|l| l["method"] == method)
        .expect("an audit line")
}

/// `versionId` and content upstream, for unchanged-ness checks.
fn snapshot(key: &str) -> (u16, Value) {
    let r = upstream_read(key);
    let body = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, body)
}

/// POSTs a fresh Observation; asserts the status, and that it exists upstream exactly
/// when it was created.
fn create(token: &str, patient: &str, category: &str, want: u16) -> Resp {
    let ident = fresh("create");
    let r = send(
        "POST",
        "Observation",
        token,
        &observation(patient, category, &ident),
    );
    assert_eq!(r.status, want, "{}", r.text());
    let created = usize::from(r.status == 201);
    assert_eq!(
        upstream_by_identifier(&ident).len(),
        created,
        "{}",
        r.text()
    );
    r
}

fn with_id(mut v: Value, key: &str) -> Value {
    v["id"] = json!(key.rsplit('/').next().unwrap());
    v
}

#[test]
fn a_create_outside_a_granular_create_scope_never_reaches_the_server() {
    let _s = serial();
    let scope = format!("patient/Observation.c?category={CAT}|vital-signs");
    let t = patient_token(&scope);
    // The reported bug: a laboratory Observation of the launch patient was created
    // upstream (201) and only then hidden from the client (404).
    let ident = fresh("lab");
    let r = send(
        "POST",
        "Observation",
        &t,
        &observation(A, "laboratory", &ident),
    );
    assert_refused(&r, 403, &scope, "lab under vital-signs c");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|w| w.contains("insufficient_scope"))
    );
    let audit = last_audit("POST");
    assert_eq!(audit["decision"], "deny");
    assert_eq!(audit["reason"], "write-scope");
    assert!(
        audit.get("upstream_status").is_none_or(Value::is_null),
        "nothing was sent upstream: {audit}"
    );
    assert!(upstream_by_identifier(&ident).is_empty(), "nothing created");

    // Inside the scope: created; the grant cannot read, so no resource comes back.
    let ident = fresh("vital");
    let r = send(
        "POST",
        "Observation",
        &t,
        &observation(A, "vital-signs", &ident),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let loc = r.header("location").expect("Location");
    assert!(loc.starts_with(&px().base), "Location on the proxy: {loc}");
    assert!(r.header("etag").is_some(), "ETag passes");
    assert!(r.header("last-modified").is_some(), "Last-Modified passes");
    let j = r.json();
    assert_eq!(j["resourceType"], "OperationOutcome", "{j}");
    assert_eq!(j["issue"][0]["severity"], "information");
    assert_eq!(upstream_by_identifier(&ident).len(), 1, "created upstream");

    // The same scope with `r` on it: the created resource comes back.
    let t = patient_token(&format!("{scope} patient/Observation.r"));
    let ident = fresh("vital-r");
    let r = send(
        "POST",
        "Observation",
        &t,
        &observation(A, "vital-signs", &ident),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["resourceType"], "Observation");

    // Prefer: return=minimal passes through: no body at all.
    let r = px().req(
        "POST",
        "Observation",
        &t,
        &[
            ("Content-Type", "application/fhir+json"),
            ("Prefer", "return=minimal"),
        ],
        observation(A, "vital-signs", &fresh("minimal"))
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.body.is_empty(), "{}", r.text());
}

#[test]
fn write_only_grants_update_patch_and_delete_the_patients_own_resources() {
    let _s = serial();
    // The reported bug: the proxy judged its own read of the current version by read
    // scopes, so `u` without `r` answered 404.
    let key = upstream_create(&observation(A, "laboratory", &fresh("wo")));
    let t = patient_token("patient/Observation.u");
    let mut body = with_id(observation(A, "laboratory", &fresh("wo2")), &key);
    body["status"] = json!("amended");
    let r = send("PUT", &key, &t, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("etag").is_some_and(|e| e.contains('2')), "ETag");
    assert_eq!(r.json()["resourceType"], "OperationOutcome", "not readable");
    assert_eq!(upstream_read(&key).json()["status"], "amended");

    let r = patch(
        &key,
        &t,
        &json!([{"op": "replace", "path": "/status", "value": "corrected"}]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let now = upstream_read(&key).json();
    assert_eq!(now["status"], "corrected");
    assert_eq!(now["meta"]["versionId"], "3");

    // Another patient's resource: answered like a missing one, and unchanged.
    let key_b = upstream_create(&observation(B, "laboratory", &fresh("wo-b")));
    let before = snapshot(&key_b);
    let r = send(
        "PUT",
        &key_b,
        &t,
        &with_id(observation(A, "laboratory", "x"), &key_b),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(snapshot(&key_b), before);

    // `d` alone deletes the patient's own, and nothing of B's.
    let t = patient_token("patient/Observation.d");
    let r = px().req("DELETE", &key_b, &t, &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(snapshot(&key_b), before);
    let r = px().req("DELETE", &key, &t, &[], b"");
    assert!(matches!(r.status, 200 | 204), "{}", r.text());
    assert_eq!(upstream_read(&key).status, 410);

    // `patient/Patient.u` on the patient's own Patient.
    let t = patient_token("patient/Patient.u");
    let mut me = upstream_read(&format!("Patient/{A}")).json();
    let version: u64 = me["meta"]["versionId"].as_str().unwrap().parse().unwrap();
    me["active"] = json!(true);
    let r = send("PUT", &format!("Patient/{A}"), &t, &me);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_read(&format!("Patient/{A}")).json()["meta"]["versionId"],
        (version + 1).to_string()
    );
}

#[test]
fn an_update_cannot_move_a_resource_out_of_its_granular_scope() {
    let _s = serial();
    let vital = format!("patient/Observation.u?category={CAT}|vital-signs");
    let lab = format!("patient/Observation.u?category={CAT}|laboratory");
    let key_l = upstream_create(&observation(A, "laboratory", &fresh("mv-l")));
    let key_v = upstream_create(&observation(A, "vital-signs", &fresh("mv-v")));
    let (l0, v0) = (snapshot(&key_l), snapshot(&key_v));

    let t = patient_token(&vital);
    // lab -> vital: the current version is outside the scope.
    let r = send(
        "PUT",
        &key_l,
        &t,
        &with_id(observation(A, "vital-signs", "x"), &key_l),
    );
    assert_refused(&r, 403, &vital, "lab -> vital");
    // vital -> lab: the new content is outside.
    let r = send(
        "PUT",
        &key_v,
        &t,
        &with_id(observation(A, "laboratory", "x"), &key_v),
    );
    assert_refused(&r, 403, &vital, "vital -> lab");
    let r = patch(
        &key_v,
        &t,
        &json!([{"op": "replace", "path": "/category/0/coding/0/code", "value": "laboratory"}]),
    );
    assert_refused(&r, 403, &vital, "patch vital -> lab");
    // Both scopes: each version is inside one, but no one scope covers both.
    let t = patient_token(&format!("{vital} {lab}"));
    let r = send(
        "PUT",
        &key_l,
        &t,
        &with_id(observation(A, "vital-signs", "x"), &key_l),
    );
    assert_refused(&r, 403, &lab, "lab -> vital under both");
    assert_eq!(snapshot(&key_l), l0, "nothing changed upstream");
    assert_eq!(snapshot(&key_v), v0, "nothing changed upstream");
    // Staying inside the scope works.
    let mut same = with_id(observation(A, "vital-signs", "x"), &key_v);
    same["status"] = json!("amended");
    let r = send("PUT", &key_v, &t, &same);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_read(&key_v).json()["status"], "amended");
}

#[test]
fn granular_user_and_system_writes_are_checked_without_a_compartment() {
    let _s = serial();
    let scope = format!("user/Observation.cu?category={CAT}|laboratory");
    let t = user_token(&scope);
    let r = create(&t, B, "vital-signs", 403);
    assert_refused(&r, 403, &scope, "user vital");
    create(&t, B, "laboratory", 201);

    let scope = format!("system/Observation.u?category={CAT}|laboratory");
    let t = system_token(&scope);
    let key = upstream_create(&observation(B, "vital-signs", &fresh("sys")));
    let before = snapshot(&key);
    let r = send(
        "PUT",
        &key,
        &t,
        &with_id(observation(B, "laboratory", "x"), &key),
    );
    assert_refused(&r, 403, &scope, "system vital -> lab");
    assert_eq!(snapshot(&key), before);
}

#[test]
fn conditional_writes_resolve_to_their_one_match() {
    let _s = serial();
    let t = patient_token("patient/Observation.us patient/Observation.ds");
    // Two of A's match: 412, nothing changed.
    let ident = fresh("cond2");
    let k1 = upstream_create(&observation(A, "laboratory", &ident));
    let k2 = upstream_create(&observation(A, "laboratory", &ident));
    let (s1, s2) = (snapshot(&k1), snapshot(&k2));
    let crit = format!("identifier={}", enc(&format!("urn:writes|{ident}")));
    let r = send(
        "PUT",
        &format!("Observation?{crit}"),
        &t,
        &observation(A, "laboratory", &ident),
    );
    assert_eq!(r.status, 412, "{}", r.text());
    let r = px().req("DELETE", &format!("Observation?{crit}"), &t, &[], b"");
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!((snapshot(&k1), snapshot(&k2)), (s1, s2));

    // One match: updated in place (the body needs no id), pinned to its version.
    let ident = fresh("cond1");
    let key = upstream_create(&observation(A, "laboratory", &ident));
    let crit = format!("identifier={}", enc(&format!("urn:writes|{ident}")));
    let mut body = observation(A, "laboratory", &ident);
    body["status"] = json!("amended");
    let r = send("PUT", &format!("Observation?{crit}"), &t, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let now = upstream_read(&key).json();
    assert_eq!(
        (now["status"].as_str(), now["meta"]["versionId"].as_str()),
        (Some("amended"), Some("2"))
    );
    assert_eq!(
        upstream_by_identifier(&ident).len(),
        1,
        "no second resource"
    );

    // Its one match moved to another patient: refused, unchanged.
    let mut to_b = body.clone();
    to_b["subject"] = json!({"reference": format!("Patient/{B}")});
    let r = send("PUT", &format!("Observation?{crit}"), &t, &to_b);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(upstream_read(&key).json()["meta"]["versionId"], "2");

    // A match of B's only: never touched; the update creates A's own instead.
    let ident = fresh("cond-b");
    let key_b = upstream_create(&observation(B, "laboratory", &ident));
    let before = snapshot(&key_b);
    let crit = format!("identifier={}", enc(&format!("urn:writes|{ident}")));
    let r = send(
        "PUT",
        &format!("Observation?{crit}"),
        &t,
        &observation(A, "laboratory", &ident),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(snapshot(&key_b), before);
    let r = px().req("DELETE", &format!("Observation?{crit}"), &t, &[], b"");
    assert!(matches!(r.status, 200 | 204), "{}", r.text());
    assert_eq!(
        snapshot(&key_b),
        before,
        "B's survives A's conditional delete"
    );
}

#[test]
fn each_letter_alone_allows_exactly_its_own_write() {
    let _s = serial();
    for (scope, can) in [
        ("patient/Observation.c", "c"),
        ("patient/Observation.r", ""),
        ("patient/Observation.u", "u"),
        ("patient/Observation.d", "d"),
        ("patient/Observation.s", ""),
        ("patient/Observation.rs", ""),
        ("patient/Observation.cud", "cud"),
        ("patient/Observation.read", ""),
        ("patient/Observation.write", "cud"),
        ("patient/*.cruds", "cud"),
    ] {
        let t = patient_token(scope);
        let ident = fresh("letter");
        let r = send(
            "POST",
            "Observation",
            &t,
            &observation(A, "laboratory", &ident),
        );
        let created = upstream_by_identifier(&ident).len();
        if can.contains('c') {
            assert_eq!(
                (r.status, created),
                (201, 1),
                "{scope} create: {}",
                r.text()
            );
        } else {
            assert_eq!(
                (r.status, created),
                (403, 0),
                "{scope} create: {}",
                r.text()
            );
        }
        let key = upstream_create(&observation(A, "laboratory", &fresh("letter-u")));
        let before = snapshot(&key);
        let mut body = with_id(observation(A, "laboratory", "x"), &key);
        body["status"] = json!("amended");
        let r = send("PUT", &key, &t, &body);
        if can.contains('u') {
            assert_eq!(r.status, 200, "{scope} update: {}", r.text());
            assert_eq!(upstream_read(&key).json()["status"], "amended");
        } else {
            assert_eq!(r.status, 403, "{scope} update: {}", r.text());
            assert_eq!(snapshot(&key), before, "{scope} update changed it");
        }
        let before = snapshot(&key);
        let r = px().req("DELETE", &key, &t, &[], b"");
        if can.contains('d') {
            assert!(
                matches!(r.status, 200 | 204),
                "{scope} delete: {}",
                r.text()
            );
            assert_eq!(upstream_read(&key).status, 410);
        } else {
            assert_eq!(r.status, 403, "{scope} delete: {}", r.text());
            assert_eq!(snapshot(&key), before, "{scope} delete changed it");
        }
    }
}

#[test]
fn patient_scopes_without_a_launch_patient_write_nothing() {
    let _s = serial();
    let t = px().token("patient/Observation.cud", None);
    create(&t, A, "laboratory", 403);
    let key = upstream_create(&observation(A, "laboratory", &fresh("nopat-u")));
    let before = snapshot(&key);
    let r = px().req("DELETE", &key, &t, &[], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(snapshot(&key), before);
}

#[test]
fn checked_writes_inside_transactions_and_batches() {
    let _s = serial();
    let t = patient_token(
        "patient/Observation.cu?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs patient/Observation.d",
    );
    let key = upstream_create(&observation(A, "vital-signs", &fresh("tx-u")));
    let key_b = upstream_create(&observation(B, "vital-signs", &fresh("tx-b")));
    let key_d = upstream_create(&observation(A, "laboratory", &fresh("tx-d")));
    let (b0, d0) = (snapshot(&key_b), snapshot(&key_d));
    let mut amended = with_id(observation(A, "vital-signs", "x"), &key);
    amended["status"] = json!("amended");
    let ident_new = fresh("tx-new");
    let ident_lab = fresh("tx-lab");
    let entry = |method: &str, url: &str, resource: Option<Value>| {
        let mut e = json!({"request": {"method": method, "url": url}});
        if let Some(r) = resource {
            e["resource"] = r;
        }
        e
    };
    // One entry updates B's: the whole transaction is refused, nothing applied.
    let post = |resource: Value| entry("POST", "Observation", Some(resource));
    let bundle = |entries: Vec<Value>, kind: &str| {
        send(
            "POST",
            "",
            &t,
            &json!({"resourceType": "Bundle", "type": kind, "entry": entries}),
        )
    };
    let r = bundle(
        vec![
            entry("PUT", &key, Some(amended.clone())),
            post(observation(A, "vital-signs", &ident_new)),
            entry(
                "PUT",
                &key_b,
                Some(with_id(observation(A, "vital-signs", "x"), &key_b)),
            ),
        ],
        "transaction",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(upstream_read(&key).json()["meta"]["versionId"], "1");
    assert!(upstream_by_identifier(&ident_new).is_empty());
    assert_eq!(snapshot(&key_b), b0);
    // A lab create under the vital-signs scope: refused whole too.
    let r = bundle(
        vec![
            entry("PUT", &key, Some(amended.clone())),
            post(observation(A, "laboratory", &ident_lab)),
        ],
        "transaction",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(upstream_by_identifier(&ident_lab).is_empty());
    assert_eq!(upstream_read(&key).json()["meta"]["versionId"], "1");
    // Everything inside the grant: applied, update pinned to its version.
    let r = bundle(
        vec![
            entry("PUT", &key, Some(amended.clone())),
            post(observation(A, "vital-signs", &ident_new)),
            entry("DELETE", &key_d, None),
        ],
        "transaction",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_read(&key).json()["status"], "amended");
    assert_eq!(upstream_by_identifier(&ident_new).len(), 1);
    assert_eq!(upstream_read(&key_d).status, 410);
    let answer = r.json();
    for e in answer["entry"].as_array().unwrap() {
        assert!(
            e["response"]["status"].as_str().unwrap().starts_with('2'),
            "{e}"
        );
        assert!(e.get("resource").is_none(), "no read scope: {e}");
    }
    // A batch: each entry on its own; B's refused, A's applied.
    let r = bundle(
        vec![
            entry(
                "PUT",
                &key_b,
                Some(with_id(observation(A, "vital-signs", "x"), &key_b)),
            ),
            post(observation(A, "laboratory", &ident_lab)),
            entry(
                "POST",
                "Observation",
                Some(observation(A, "vital-signs", &fresh("batch"))),
            ),
        ],
        "batch",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let statuses: Vec<String> = r.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap()[..3].to_owned())
        .collect();
    assert_eq!(statuses, ["404", "403", "201"]);
    assert_eq!(snapshot(&key_b), b0);
    assert!(upstream_by_identifier(&ident_lab).is_empty());
    let _ = d0;
}

#[test]
fn scopes_are_a_union_for_writes_too() {
    let _s = serial();
    // patient/ alone would refuse B's Observation; the granular user/ scope grants it.
    let t = px().mint(TokenReq {
        scope: &format!("patient/Observation.c user/Observation.c?category={CAT}|laboratory"),
        patient: Some(A),
        fhir_user: Some("Practitioner/pr-01"),
        ..Default::default()
    });
    create(&t, B, "laboratory", 201);
    // Neither context grants a vital-signs Observation of B: the first refusal stands.
    create(&t, B, "vital-signs", 403);
    // patient/ grants A's own of any category.
    create(&t, A, "vital-signs", 201);
}
