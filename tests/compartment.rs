//! The Patient-compartment promise, end to end against the real FHIR server: every test
//! first shows (where the upstream can show it) that the request WOULD leak without the
//! rule, by asking hfs directly, and then asserts on content that the proxy does not.
//!
//! Patients used: reads by pt-01/02/03/05/08/09/13/21/22/23 (never written to); writes
//! by pt-06 (A) against pt-07 (B), always on fresh resources with unique identifiers,
//! so that the tests can run in parallel on one shared proxy.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use common::{Proxy, Resp, TokenReq, bed, enc, entry_ids, upstream_create};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// One smartgate for the whole binary.
fn px() -> &'static Proxy {
    common::shared_proxy()
}

/// hfs keeps its data in one in-memory SQLite database whose table lock makes concurrent
/// readers fail (503 "database table is locked") while a write runs: tests that write
/// upstream run alone, the others together.
static UPSTREAM: RwLock<()> = RwLock::new(());

fn reading() -> RwLockReadGuard<'static, ()> {
    UPSTREAM.read().unwrap_or_else(|e| e.into_inner())
}

fn writing() -> RwLockWriteGuard<'static, ()> {
    UPSTREAM.write().unwrap_or_else(|e| e.into_inner())
}

fn tok(scope: &str, patient: &str) -> String {
    px().token(scope, Some(patient))
}

fn system_token() -> String {
    px().mint(TokenReq {
        scope: "system/*.cruds",
        ..Default::default()
    })
}

/// The upstream, asked directly (no proxy): what would leak.
fn up(method: &str, rel: &str, body: &[u8]) -> Resp {
    common::upstream(method, rel, body)
}

fn up_ids(rel: &str) -> Vec<String> {
    let r = up("GET", rel, b"");
    assert_eq!(r.status, 200, "upstream {rel}: {}", r.text());
    entry_ids(&r.json())
}

fn get_ok(rel: &str, token: &str) -> Value {
    let r = px().get(rel, token);
    assert_eq!(r.status, 200, "{rel}: {}", r.text());
    r.json()
}

fn ids(rel: &str, token: &str) -> Vec<String> {
    entry_ids(&get_ok(rel, token))
}

/// A unique suffix for resources this run creates.
fn fresh(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "compit-{tag}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn manifest() -> &'static Value {
    static M: OnceLock<Value> = OnceLock::new();
    M.get_or_init(|| bed().manifest())
}

/// The strict compartment owners of a data-set resource (`Type/id`).
fn owners(key: &str) -> Vec<String> {
    manifest()["resources"][key]["patients"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Every `Patient/x` reference (relative or absolute) anywhere in `v`.
fn patient_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("reference")
                && let Some(i) = r.rfind("Patient/")
                && (i == 0 || r[..i].ends_with('/'))
            {
                out.insert(r[i + "Patient/".len()..].to_owned());
            }
            m.values().for_each(|x| patient_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| patient_refs(x, out)),
        _ => {}
    }
}

/// The patient(s) a returned resource belongs to, judged on its content: a Patient is
/// itself; a data-set resource has the manifest's strict owners (or, when it has none,
/// every patient it references); anything else every patient it references.
fn belongs_to(r: &Value) -> BTreeSet<String> {
    let t = r["resourceType"].as_str().unwrap_or_default();
    let id = r["id"].as_str().unwrap_or_default();
    if t == "Patient" {
        return BTreeSet::from([id.to_owned()]);
    }
    let o = owners(&format!("{t}/{id}"));
    if !o.is_empty() {
        return o.into_iter().collect();
    }
    let mut refs = BTreeSet::new();
    patient_refs(r, &mut refs);
    refs
}

/// Nothing in the Bundle belongs to a patient other than `a`.
fn assert_only(bundle: &Value, a: &str) {
    for e in bundle["entry"].as_array().into_iter().flatten() {
        let r = &e["resource"];
        let who = belongs_to(r);
        assert!(
            who.iter().all(|p| p == a),
            "{}/{} belongs to {who:?}, not only {a}",
            r["resourceType"],
            r["id"]
        );
    }
}

/// Every Observation in the Bundle has `subject` = `Patient/a`.
fn assert_all_subject(bundle: &Value, a: &str) {
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    for e in entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
    {
        assert_eq!(
            e["resource"]["subject"]["reference"],
            json!(format!("Patient/{a}")),
            "{}",
            e["resource"]["id"]
        );
    }
}

/// The data set's Observations whose subject is `a`.
fn manifest_observations(a: &str) -> BTreeSet<String> {
    manifest()["by_patient"][a]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .filter(|k| k.starts_with("Observation/"))
        .collect()
}

fn assert_forbidden(r: &Resp, what: &str) {
    assert_eq!(
        r.status,
        403,
        "{what}: expected 403, got {}: {}",
        r.status,
        r.text()
    );
    let j = r.json();
    assert_eq!(j["resourceType"], "OperationOutcome", "{what}");
    assert_eq!(j["issue"][0]["code"], "forbidden", "{what}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|w| w.contains("insufficient_scope")),
        "{what}: WWW-Authenticate {:?}",
        r.header("www-authenticate")
    );
}

/// Same status, content type and body: the caller cannot tell them apart.
fn assert_indistinguishable(hidden: &Resp, missing: &Resp, what: &str) {
    assert_eq!(hidden.status, 404, "{what}: {}", hidden.text());
    assert_eq!(hidden.status, missing.status, "{what}");
    assert_eq!(
        hidden.header("content-type"),
        missing.header("content-type"),
        "{what}"
    );
    assert_eq!(
        hidden.header("content-length"),
        missing.header("content-length"),
        "{what}"
    );
    assert_eq!(hidden.header("etag"), None, "{what}");
    assert_eq!(hidden.header("last-modified"), None, "{what}");
    assert_eq!(
        hidden.body,
        missing.body,
        "{what}: {} vs {}",
        hidden.text(),
        missing.text()
    );
}

fn send_json(method: &str, rel: &str, token: &str, body: &Value) -> Resp {
    px().req(
        method,
        rel,
        token,
        &[("Content-Type", "application/fhir+json")],
        body.to_string().as_bytes(),
    )
}

fn observation(patient: &str, ident: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "identifier": [{"system": "urn:compit", "value": ident}],
        "status": "final",
        "code": {"text": "compit"},
        "subject": {"reference": format!("Patient/{patient}")}
    })
}

/// The upstream's Observations with this identifier (ground truth for writes).
fn upstream_by_identifier(ident: &str) -> Vec<Value> {
    let r = up(
        "GET",
        &format!(
            "Observation?identifier={}",
            enc(&format!("urn:compit|{ident}"))
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

fn upstream_read(key: &str) -> Resp {
    up("GET", key, b"")
}

/// A created resource's `Type/id` from the proxy's `Location` (which must be the proxy's).
fn created(r: &Resp) -> String {
    assert_eq!(r.status, 201, "{}", r.text());
    let loc = r.header("location").expect("location");
    let rest = loc
        .strip_prefix(&format!("{}/", px().base))
        .unwrap_or_else(|| panic!("Location not rebased: {loc}"));
    rest.split("/_history").next().unwrap().to_owned()
}

const A: &str = "pt-06";
const B: &str = "pt-07";

fn writer() -> String {
    tok("patient/Observation.cruds patient/Patient.cruds", A)
}

// ---------------------------------------------------------------------------------------
// 1. Search narrowing
// ---------------------------------------------------------------------------------------

#[test]
fn search_without_patient_is_pinned_to_the_launch_patient() {
    let _upstream = reading();
    let t = tok("patient/*.rs", "pt-03");
    let upstream = up_ids("Observation?_count=1000");
    assert!(
        upstream.iter().any(|k| owners(k) == ["pt-04"]),
        "upstream would return pt-04's"
    );
    let b = get_ok("Observation?_count=1000", &t);
    assert_all_subject(&b, "pt-03");
    let got: BTreeSet<String> = entry_ids(&b).into_iter().collect();
    assert!(
        manifest_observations("pt-03").is_subset(&got),
        "all of pt-03's Observations"
    );
    assert!(
        !got.contains("Observation/obs-pt-04-perf-pt-03"),
        "performer-only entry of pt-04"
    );
    // A type search with other criteria is pinned too.
    let b = get_ok("Observation?category=laboratory&_count=1000", &t);
    assert_all_subject(&b, "pt-03");
    assert_eq!(entry_ids(&b).len(), 35);
}

#[test]
fn search_naming_the_launch_patient_is_allowed() {
    let _upstream = reading();
    let t = tok("patient/Observation.rs", "pt-03");
    let want = manifest_observations("pt-03");
    for q in [
        "patient=pt-03",
        "patient=Patient/pt-03",
        "subject=Patient/pt-03",
        "patient=Patient%2Fpt-03",
    ] {
        let b = get_ok(&format!("Observation?{q}&_count=1000"), &t);
        assert_all_subject(&b, "pt-03");
        let got: BTreeSet<String> = entry_ids(&b).into_iter().collect();
        assert!(want.is_subset(&got), "{q}");
    }
    // The full URL of A is allowed, and rewritten to `Patient/A` (hfs, like most servers,
    // matches references by their stored relative form: the URL alone finds nothing).
    let full = enc(&format!("{}/Patient/pt-03", px().base));
    let b = get_ok(&format!("Observation?patient={full}&_count=1000"), &t);
    assert_all_subject(&b, "pt-03");
    let got: BTreeSet<String> = entry_ids(&b).into_iter().collect();
    assert!(want.is_subset(&got), "full URL of A");
    // Documented choice: a bare id only on `patient` (`subject` also targets Group,
    // Device, Location, … so a bare id is not necessarily a Patient).
    assert_forbidden(&px().get("Observation?subject=pt-03", &t), "bare subject");
}

#[test]
fn search_naming_another_patient_is_refused() {
    let _upstream = reading();
    let t = tok("patient/*.rs", "pt-03");
    // Each would return another patient's data upstream.
    for (q, leak) in [
        (
            "Observation?patient=pt-03,pt-04",
            "Observation/obs-pt-04-0001",
        ),
        ("Observation?patient=pt-04", "Observation/obs-pt-04-0001"),
        (
            "Observation?subject=Patient/pt-04",
            "Observation/obs-pt-04-0001",
        ),
        (
            "Observation?patient:missing=true",
            "Observation/obs-env-0001",
        ),
        (
            "Observation?subject:Patient=pt-04",
            "Observation/obs-pt-04-0001",
        ),
        (
            "Observation?patient.gender=male",
            "Observation/obs-pt-04-0001",
        ),
        ("Patient?_id=pt-04", "Patient/pt-04"),
        ("Patient?_id=pt-03,pt-04", "Patient/pt-04"),
    ] {
        let upstream = up_ids(&format!("{q}&_count=1000"));
        if q != "Observation?patient.gender=male" {
            assert!(
                upstream.iter().any(|k| k == leak),
                "{q}: upstream should show {leak}"
            );
        }
        assert_forbidden(&px().get(q, &t), q);
    }
    // An actor parameter naming A is allowed but still pinned to A as subject: pt-04's
    // Observation with performer pt-03 does not come back.
    assert!(
        up_ids("Observation?performer=Patient/pt-03")
            .contains(&"Observation/obs-pt-04-perf-pt-03".to_owned())
    );
    let b = get_ok("Observation?performer=Patient/pt-03", &t);
    assert!(!entry_ids(&b).contains(&"Observation/obs-pt-04-perf-pt-03".to_owned()));
    assert_all_subject(&b, "pt-03");
    // Refused even when the values all name A: repeated, modified, chained.
    for q in [
        "Observation?patient=pt-03&patient=pt-03",
        "Observation?patient=pt-03&subject=Patient/pt-04",
        "Observation?patient:Patient=pt-03",
        "Observation?patient:not=pt-04",
        "Observation?subject.name=x",
        "Observation?patient:missing=false",
    ] {
        assert_forbidden(&px().get(q, &t), q);
    }
}

#[test]
fn patient_search_is_pinned_by_id() {
    let _upstream = reading();
    let t = tok("patient/Patient.rs", "pt-03");
    assert!(up_ids("Patient?_count=100").len() >= 24);
    assert_eq!(ids("Patient", &t), ["Patient/pt-03"]);
    assert_eq!(
        ids("Patient?gender=female&_count=100", &t),
        ["Patient/pt-03"]
    );
    assert_eq!(ids("Patient?_id=pt-03", &t), ["Patient/pt-03"]);
    assert!(up_ids("Patient?gender=male&_count=100").len() > 1);
    assert!(ids("Patient?gender=male", &t).is_empty(), "pt-03 is female");
}

#[test]
fn compartment_search_only_of_the_launch_patient_and_only_its_members() {
    let _upstream = reading();
    let t = tok("patient/*.rs", "pt-03");
    // hfs's compartment is the full R4 definition: pt-04's Observation with performer pt-03.
    let upstream = up_ids("Patient/pt-03/Observation?_count=1000");
    assert!(upstream.contains(&"Observation/obs-pt-04-perf-pt-03".to_owned()));
    for q in [
        "Patient/pt-03/Observation?_count=1000",
        "Patient/pt-03/*?_count=1000",
    ] {
        let b = get_ok(q, &t);
        let got = entry_ids(&b);
        assert!(
            !got.contains(&"Observation/obs-pt-04-perf-pt-03".to_owned()),
            "{q}"
        );
        assert!(
            got.contains(&"Observation/obs-pt-03-perf-pt-04".to_owned()),
            "{q}: own, performer pt-04"
        );
        assert_only(&b, "pt-03");
        assert_all_subject(&b, "pt-03");
    }
    assert!(up_ids("Patient/pt-04/Observation").len() > 1);
    for q in [
        "Patient/pt-04/Observation",
        "Patient/pt-04/*",
        "Patient/pt-04/Condition?_count=5",
    ] {
        assert_forbidden(&px().get(q, &t), q);
    }
}

#[test]
fn post_search_is_narrowed_with_the_patient_in_the_body() {
    let _upstream = reading();
    let t = tok("patient/Observation.rs", "pt-03");
    let form = |url: &str, body: &str| {
        px().req(
            "POST",
            url,
            &t,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
    };
    assert_forbidden(
        &form("Observation/_search", "patient=pt-04"),
        "body names B",
    );
    assert_forbidden(
        &form("Observation/_search", "patient=pt-03&patient=pt-04"),
        "body twice",
    );
    assert_forbidden(
        &form("Observation/_search?patient=pt-04", "_count=5"),
        "URL names B",
    );
    assert_forbidden(
        &form("Observation/_search", "patient=pt-03,pt-04"),
        "body list",
    );
    for body in [
        "_count=1000",
        "patient=pt-03&_count=1000",
        "subject=Patient%2Fpt-03&_count=1000",
    ] {
        let r = form("Observation/_search", body);
        assert_eq!(r.status, 200, "{body}: {}", r.text());
        let b = r.json();
        assert_all_subject(&b, "pt-03");
        let got: BTreeSet<String> = entry_ids(&b).into_iter().collect();
        assert!(manifest_observations("pt-03").is_subset(&got), "{body}");
    }
}

// ---------------------------------------------------------------------------------------
// 2. Reads by id
// ---------------------------------------------------------------------------------------

#[test]
fn reads_of_other_patients_resources_look_like_missing_ones() {
    let _upstream = reading();
    let t = tok("patient/*.rs", "pt-03");
    assert_eq!(upstream_read("Observation/obs-pt-04-0001").status, 200);
    assert_eq!(upstream_read("Patient/pt-04").status, 200);
    assert_eq!(
        up("GET", "Observation/obs-pt-04-0001/_history", b"").status,
        200
    );
    let pairs = [
        ("Observation/obs-pt-04-0001", "Observation/compit-nope"),
        (
            "Observation/obs-pt-04-perf-pt-03",
            "Observation/compit-nope",
        ),
        ("Patient/pt-04", "Patient/compit-nope"),
        (
            "Observation/obs-pt-04-0001/_history/1",
            "Observation/compit-nope/_history/1",
        ),
        ("Patient/pt-04/_history/1", "Patient/compit-nope/_history/1"),
        (
            "Observation/obs-pt-04-0001/_history",
            "Observation/compit-nope/_history",
        ),
        ("Patient/pt-04/_history", "Patient/compit-nope/_history"),
    ];
    for (hidden, missing) in pairs {
        let h = px().get(hidden, &t);
        let m = px().get(missing, &t);
        assert_indistinguishable(&h, &m, hidden);
        assert!(!h.text().contains("pt-04"), "{hidden}");
        let h = px().req("HEAD", hidden, &t, &[], b"");
        let m = px().req("HEAD", missing, &t, &[], b"");
        assert_indistinguishable(&h, &m, &format!("HEAD {hidden}"));
    }
    // A's own: 200, by read, vread, history and HEAD.
    for own in [
        "Observation/obs-pt-03-0001",
        "Observation/obs-pt-03-0001/_history/1",
        "Patient/pt-03",
    ] {
        let r = px().get(own, &t);
        assert_eq!(r.status, 200, "{own}");
        assert_eq!(belongs_to(&r.json()), BTreeSet::from(["pt-03".to_owned()]));
        assert_eq!(
            px().req("HEAD", own, &t, &[], b"").status,
            200,
            "HEAD {own}"
        );
    }
    let h = get_ok("Observation/obs-pt-03-0001/_history", &t);
    assert_eq!(entry_ids(&h), ["Observation/obs-pt-03-0001"]);
}

#[test]
fn historic_versions_are_judged_on_their_own_content() {
    let _upstream = writing();
    let sys = system_token();
    let t = tok("patient/Observation.rs", A);
    // B's Observation moved to A by a system client: version 1 stays B's.
    let id = fresh("moved-in");
    let key = format!("Observation/{id}");
    let mut o = observation(B, &id);
    o["id"] = json!(id);
    assert_eq!(send_json("PUT", &key, &sys, &o).status, 201);
    o["subject"] = json!({"reference": format!("Patient/{A}")});
    assert_eq!(send_json("PUT", &key, &sys, &o).status, 200);
    assert_eq!(
        up("GET", &format!("{key}/_history/1"), b"").json()["subject"]["reference"],
        format!("Patient/{B}")
    );

    assert_eq!(get_ok(&key, &t)["meta"]["versionId"], "2");
    assert_eq!(
        get_ok(&format!("{key}/_history/2"), &t)["subject"]["reference"],
        format!("Patient/{A}")
    );
    let hidden = px().get(&format!("{key}/_history/1"), &t);
    let missing = px().get("Observation/compit-nope/_history/1", &t);
    assert_indistinguishable(&hidden, &missing, "vread of B's version");
    let h = get_ok(&format!("{key}/_history"), &t);
    let versions: Vec<&Value> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"]["meta"]["versionId"])
        .collect();
    assert_eq!(versions, [&json!("2")], "only A's version in the history");
    assert_all_subject(&h, A);
    assert!(h.get("total").is_none() || h["total"] == 1);

    // A's Observation moved to B: the current version is hidden, A's own old one is not.
    let id = fresh("moved-out");
    let key = format!("Observation/{id}");
    let mut o = observation(A, &id);
    o["id"] = json!(id);
    assert_eq!(send_json("PUT", &key, &sys, &o).status, 201);
    o["subject"] = json!({"reference": format!("Patient/{B}")});
    assert_eq!(send_json("PUT", &key, &sys, &o).status, 200);
    assert_indistinguishable(
        &px().get(&key, &t),
        &px().get("Observation/compit-nope", &t),
        "moved out",
    );
    assert_indistinguishable(
        &px().get(&format!("{key}/_history/2"), &t),
        &px().get("Observation/compit-nope/_history/2", &t),
        "B's version",
    );
    assert_eq!(
        get_ok(&format!("{key}/_history/1"), &t)["subject"]["reference"],
        format!("Patient/{A}")
    );
    let h = get_ok(&format!("{key}/_history"), &t);
    assert_all_subject(&h, A);
    assert_eq!(h["entry"].as_array().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------
// 3. Response filtering
// ---------------------------------------------------------------------------------------

#[test]
fn include_of_another_patient_is_removed() {
    let _upstream = reading();
    let t = tok("patient/*.rs", "pt-03");
    let q = "Observation?_include=Observation:performer&_count=1000";
    assert!(
        up_ids(&format!("{q}&patient=pt-03")).contains(&"Patient/pt-04".to_owned()),
        "upstream includes pt-04"
    );
    let b = get_ok(q, &t);
    let got = entry_ids(&b);
    assert!(!got.iter().any(|k| k.starts_with("Patient/")), "{got:?}");
    assert!(
        got.iter().any(|k| k.starts_with("Practitioner/")),
        "granted includes stay"
    );
    assert!(got.contains(&"Observation/obs-pt-03-perf-pt-04".to_owned()));
    assert_only(&b, "pt-03");
    // The reverse direction: pt-04's Observation with performer pt-03.
    assert!(
        up_ids("Patient?_id=pt-03&_revinclude=Observation:performer")
            .contains(&"Observation/obs-pt-04-perf-pt-03".to_owned())
    );
    assert_eq!(
        ids("Patient?_revinclude=Observation:performer", &t),
        ["Patient/pt-03"]
    );
}

#[test]
fn revinclude_and_iterate_of_other_patients_are_removed() {
    let _upstream = reading();
    // prov-pt-22-obs-pt-23 targets Patient/pt-22 and one of pt-23's Observations.
    let prov = "Provenance/prov-pt-22-obs-pt-23".to_owned();
    let t23 = tok("patient/*.rs", "pt-23");
    for q in [
        "Observation?_revinclude=Provenance:target&_count=1000",
        "Observation?_revinclude:iterate=Provenance:target&_count=1000",
    ] {
        assert!(
            up_ids(&format!("{q}&patient=pt-23")).contains(&prov),
            "upstream {q}"
        );
        let b = get_ok(q, &t23);
        assert!(!entry_ids(&b).contains(&prov), "{q}");
        assert_only(&b, "pt-23");
    }
    // pt-22 sees it: it is in pt-22's compartment.
    let t22 = tok("patient/*.rs", "pt-22");
    assert!(ids("Patient?_revinclude=Provenance:target", &t22).contains(&prov));
    // pt-01's own Provenance (target Patient/pt-01) is kept.
    let t01 = tok("patient/*.rs", "pt-01");
    assert_eq!(
        ids("Patient?_revinclude=Provenance:target", &t01),
        ["Patient/pt-01", "Provenance/prov-pt-01"]
    );
    // _include:iterate through Patient.link: pt-09 → pt-10.
    let t09 = tok("patient/*.rs", "pt-09");
    let q = "Observation?_include=Observation:subject&_include:iterate=Patient:link&_count=3";
    assert!(up_ids(&format!("{q}&patient=pt-09")).contains(&"Patient/pt-10".to_owned()));
    let b = get_ok(q, &t09);
    assert!(entry_ids(&b).contains(&"Patient/pt-09".to_owned()));
    assert_only(&b, "pt-09");
    assert!(
        up_ids("Patient?_id=pt-09&_include=Patient:link").contains(&"Patient/pt-10".to_owned())
    );
    assert_eq!(
        ids("Patient?_include=Patient:link", &t09),
        ["Patient/pt-09"]
    );
}

#[test]
fn everything_removes_other_patients_records() {
    let _upstream = reading();
    for (a, foreign) in [
        ("pt-03", vec!["Observation/obs-pt-04-perf-pt-03"]),
        (
            "pt-13",
            vec![
                "AllergyIntolerance/allergy-pt-12-1",
                "Condition/cond-pt-12-2",
            ],
        ),
        ("pt-21", vec!["Coverage/cov-pt-20"]),
        ("pt-05", vec!["Group/grp-family"]),
    ] {
        let q = format!("Patient/{a}/$everything");
        let upstream = up("GET", &q, b"").json();
        let up_ids = entry_ids(&upstream);
        assert!(upstream["total"].is_number(), "hfs sends a total");
        let b = get_ok(&q, &tok("patient/*.rs", a));
        let got = entry_ids(&b);
        for f in &foreign {
            assert!(up_ids.contains(&f.to_string()), "{a}: upstream has {f}");
            assert!(!got.contains(&f.to_string()), "{a}: {f} removed");
        }
        assert!(got.contains(&format!("Patient/{a}")), "{a}");
        assert_only(&b, a);
        assert!(
            b.get("total").is_none(),
            "{a}: total would reveal the removed entries"
        );
        assert_eq!(
            got.len(),
            up_ids.len() - foreign.len(),
            "{a}: only the foreign ones removed"
        );
    }
    // Someone else's $everything is refused.
    assert_forbidden(
        &px().get("Patient/pt-04/$everything", &tok("patient/*.rs", "pt-03")),
        "$everything B",
    );
}

#[test]
fn includes_of_types_without_a_scope_are_removed() {
    let _upstream = reading();
    let t = tok("patient/Observation.rs", "pt-03");
    let q = "Observation?_include=Observation:performer&_include=Observation:encounter&_count=1000";
    let upstream = up_ids(&format!("{q}&patient=pt-03"));
    for ty in ["Practitioner/", "Organization/", "Encounter/"] {
        assert!(
            upstream.iter().any(|k| k.starts_with(ty)),
            "upstream includes {ty}"
        );
    }
    let b = get_ok(q, &t);
    let got = entry_ids(&b);
    assert!(got.iter().all(|k| k.starts_with("Observation/")), "{got:?}");
    assert_all_subject(&b, "pt-03");
    // $everything with a narrow grant is refused (needs Patient r+s), not answered unfiltered.
    assert_forbidden(
        &px().get("Patient/pt-03/$everything", &t),
        "$everything without Patient scope",
    );
}

#[test]
fn total_is_only_passed_when_nothing_was_removed() {
    let _upstream = reading();
    let t = tok("patient/*.rs", "pt-03");
    let whole = get_ok("Observation?_total=accurate&_count=1000", &t);
    let n = entry_ids(&whole).len();
    assert_eq!(whole["total"], json!(n), "nothing removed: the total stays");
    let upstream = up(
        "GET",
        "Observation?patient=pt-03&_include=Observation:performer&_total=accurate&_count=1000",
        b"",
    )
    .json();
    assert!(upstream["total"].is_number());
    let b = get_ok(
        "Observation?_include=Observation:performer&_total=accurate&_count=1000",
        &t,
    );
    assert!(b.get("total").is_none(), "pt-04 was removed: no total");
}

#[test]
fn paging_links_are_rebased_and_bound_to_the_token() {
    let _upstream = reading();
    let p = px();
    let t = tok("patient/*.rs", "pt-03");
    let first = get_ok("Observation?_include=Observation:performer&_count=5", &t);
    for e in first["entry"].as_array().unwrap() {
        assert!(
            e["fullUrl"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}/", p.base)),
            "{}",
            e["fullUrl"]
        );
    }
    let links = first["link"].as_array().unwrap();
    for l in links {
        assert!(
            l["url"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}/", p.base)),
            "{l}"
        );
    }
    let next = links
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("next link")["url"]
        .as_str()
        .unwrap();
    let rel = next.strip_prefix(&format!("{}/", p.base)).unwrap();

    // The same token pages on: 5 more of A's, none seen on page 1.
    let page2 = get_ok(rel, &t);
    assert_only(&page2, "pt-03");
    let obs = |b: &Value| -> BTreeSet<String> {
        entry_ids(b)
            .into_iter()
            .filter(|k| k.starts_with("Observation/"))
            .collect()
    };
    assert_eq!(obs(&page2).len(), 5);
    assert!(obs(&page2).is_disjoint(&obs(&first)));

    // Another patient's token: refused, nothing of pt-03's.
    let r = p.get(rel, &tok("patient/*.rs", "pt-04"));
    assert_forbidden(&r, "pt-04 with pt-03's link");
    // Another token of the same patient with fewer rights: the link is not honoured as
    // a continuation; it is judged as an ordinary request under the second token.
    let narrow = tok("patient/Observation.rs", "pt-03");
    let r = p.get(rel, &narrow);
    if r.status == 200 {
        let b = r.json();
        let got = entry_ids(&b);
        assert!(
            got.iter().all(|k| k.starts_with("Observation/")),
            "no includes beyond its own scopes: {got:?}"
        );
        assert_all_subject(&b, "pt-03");
    } else {
        assert!(matches!(r.status, 400 | 403), "{}", r.text());
    }
    // A link edited to name pt-04, used by the token it was signed for: refused.
    let tampered = rel.replace("pt-03", "pt-04");
    assert_ne!(tampered, rel);
    assert_forbidden(&p.get(&tampered, &t), "tampered link");
    // A forged signature on a link without the patient pin: re-judged and pinned.
    let stripped: String = rel
        .split('&')
        .filter(|kv| !kv.starts_with("patient="))
        .collect::<Vec<_>>()
        .join("&");
    let r = p.get(&stripped, &t);
    if r.status == 200 {
        assert_only(&r.json(), "pt-03");
    }
}

#[test]
fn side_channel_parameters_are_refused() {
    let _upstream = reading();
    let t = tok("patient/*.rs", "pt-03");
    // _has answers "does pt-04 have an Observation with …" even with an empty page.
    assert_eq!(
        up_ids("Patient?_has:Observation:patient:_id=obs-pt-04-0001"),
        ["Patient/pt-04"]
    );
    for q in [
        "Patient?_has:Observation:patient:_id=obs-pt-04-0001",
        "Observation?_has:Provenance:target:agent=Practitioner/pr-04",
        "Observation?encounter.status=finished",
        "Observation?performer:Patient.gender=male",
        "Observation?subject:Patient.name=x",
        "Condition?_filter=subject%20eq%20Patient/pt-04",
    ] {
        assert_forbidden(&px().get(q, &t), q);
    }
}

#[test]
fn elements_and_summary_do_not_blind_the_filter() {
    let _upstream = reading();
    let t = tok("patient/*.rs", "pt-03");
    let b = get_ok(
        "Observation?_elements=id&_include=Observation:performer&_count=1000",
        &t,
    );
    // The filter needed `subject`: the parameter was neutralised, so it is still there.
    assert_all_subject(&b, "pt-03");
    assert!(!entry_ids(&b).contains(&"Patient/pt-04".to_owned()));
    assert_only(&b, "pt-03");
    let b = get_ok("Observation?_summary=count", &t);
    assert!(b.get("total").is_none() || b["total"] == json!(entry_ids(&b).len()));
    assert_all_subject(&b, "pt-03");
}

#[test]
fn xml_is_refused_where_the_response_must_be_checked() {
    let _upstream = reading();
    let t = tok("patient/*.rs", "pt-03");
    assert_eq!(
        up("GET", "Observation?patient=pt-03&_format=xml", b"").status,
        406
    );
    for (rel, accept) in [
        ("Observation?_format=xml", None),
        ("Observation?_format=application/fhir%2Bxml", None),
        ("Observation", Some("application/fhir+xml")),
        ("Patient/pt-03", Some("application/xml")),
        ("Patient/pt-03?_format=xml", Some("application/fhir+json")),
    ] {
        let h: Vec<(&str, &str)> = accept.map(|a| vec![("Accept", a)]).unwrap_or_default();
        let r = px().req("GET", rel, &t, &h, b"");
        assert_eq!(r.status, 406, "{rel} {accept:?}: {}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
        assert!(r.header("content-type").unwrap().contains("json"));
    }
}

// ---------------------------------------------------------------------------------------
// 4. Writes
// ---------------------------------------------------------------------------------------

#[test]
fn create_only_for_the_launch_patient() {
    let _upstream = writing();
    let w = writer();
    let ident = fresh("create");
    let key = created(&send_json(
        "POST",
        "Observation",
        &w,
        &observation(A, &ident),
    ));
    assert_eq!(
        upstream_read(&key).json()["subject"]["reference"],
        format!("Patient/{A}")
    );

    let ident_b = fresh("create-b");
    assert_forbidden(
        &send_json("POST", "Observation", &w, &observation(B, &ident_b)),
        "subject B",
    );
    let mut contained = observation(A, &ident_b);
    contained["contained"] = json!([{"resourceType": "Observation", "id": "c1", "status": "final",
        "code": {"text": "c"}, "subject": {"reference": format!("Patient/{B}")}}]);
    contained["hasMember"] = json!([{"reference": "#c1"}]);
    assert_forbidden(
        &send_json("POST", "Observation", &w, &contained),
        "contained B",
    );
    let mut performer = observation(A, &ident_b);
    performer["performer"] = json!([{"reference": format!("{}/Patient/{B}", px().base)}]);
    assert_forbidden(
        &send_json("POST", "Observation", &w, &performer),
        "absolute reference to B",
    );
    let mut cond = observation(A, &ident_b);
    cond["resourceType"] = json!("Condition");
    let r = send_json("POST", "Observation", &w, &cond);
    assert_eq!(r.status, 400, "body type ≠ URL type: {}", r.text());
    assert!(
        upstream_by_identifier(&ident_b).is_empty(),
        "nothing of the refused ones was created"
    );
}

#[test]
fn update_of_another_patients_resource_is_refused_and_changes_nothing() {
    let _upstream = writing();
    let w = writer();
    let ident = fresh("upd-b");
    let key = upstream_create(&observation(B, &ident));
    let id = key.trim_start_matches("Observation/");
    let mut body = observation(A, &ident);
    body["id"] = json!(id);
    let r = send_json("PUT", &key, &w, &body);
    assert!(matches!(r.status, 403 | 404), "{}", r.text());
    assert!(!r.text().contains(B));
    let now = upstream_read(&key).json();
    assert_eq!(now["meta"]["versionId"], "1");
    assert_eq!(now["subject"]["reference"], format!("Patient/{B}"));
    // A JSON Patch on it: refused the same way.
    let r = px().req(
        "PATCH",
        &key,
        &w,
        &[("Content-Type", "application/json-patch+json")],
        br#"[{"op":"replace","path":"/status","value":"cancelled"}]"#,
    );
    assert!(matches!(r.status, 403 | 404), "{}", r.text());
    assert_eq!(upstream_read(&key).json()["meta"]["versionId"], "1");
}

#[test]
fn update_or_patch_moving_a_resource_to_another_patient_is_refused() {
    let _upstream = writing();
    let w = writer();
    let ident = fresh("move");
    let key = created(&send_json(
        "POST",
        "Observation",
        &w,
        &observation(A, &ident),
    ));
    let id = key.trim_start_matches("Observation/");
    let mut body = observation(B, &ident);
    body["id"] = json!(id);
    assert_forbidden(&send_json("PUT", &key, &w, &body), "PUT to B");
    let patch = |ops: &str| {
        px().req(
            "PATCH",
            &key,
            &w,
            &[("Content-Type", "application/json-patch+json")],
            ops.as_bytes(),
        )
    };
    assert_forbidden(
        &patch(&format!(
            r#"[{{"op":"replace","path":"/subject/reference","value":"Patient/{B}"}}]"#
        )),
        "patch subject",
    );
    assert_forbidden(
        &patch(&format!(
            r#"[{{"op":"add","path":"/performer","value":[{{"reference":"Patient/{B}"}}]}}]"#
        )),
        "patch performer",
    );
    let now = upstream_read(&key).json();
    assert_eq!(now["meta"]["versionId"], "1");
    assert_eq!(now["subject"]["reference"], format!("Patient/{A}"));
    assert!(now.get("performer").is_none());
    // Allowed writes still work: an update and a patch that stay with A.
    body["subject"] = json!({"reference": format!("Patient/{A}")});
    body["status"] = json!("amended");
    let r = send_json("PUT", &key, &w, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = patch(r#"[{"op":"replace","path":"/status","value":"corrected"}]"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let now = upstream_read(&key).json();
    assert_eq!(now["status"], "corrected");
    assert_eq!(now["meta"]["versionId"], "3");
}

#[test]
fn delete_only_of_the_launch_patients_resources() {
    let _upstream = writing();
    let w = writer();
    let key_b = upstream_create(&observation(B, &fresh("del-b")));
    let r = px().req("DELETE", &key_b, &w, &[], b"");
    assert!(matches!(r.status, 403 | 404), "{}", r.text());
    assert_eq!(upstream_read(&key_b).status, 200, "B's still exists");
    let key_a = created(&send_json(
        "POST",
        "Observation",
        &w,
        &observation(A, &fresh("del-a")),
    ));
    let r = px().req("DELETE", &key_a, &w, &[], b"");
    assert!(matches!(r.status, 200 | 204), "{}", r.text());
    assert_eq!(upstream_read(&key_a).status, 410, "A's own is gone");
}

#[test]
fn conditional_writes_are_narrowed_to_the_launch_patient() {
    let _upstream = writing();
    let w = writer();
    // Conditional delete: one match for A and one for B: only A's goes.
    let ident = fresh("cdel");
    let key_b = upstream_create(&observation(B, &ident));
    let key_a = upstream_create(&observation(A, &ident));
    let crit = format!("identifier={}", enc(&format!("urn:compit|{ident}")));
    let r = px().req("DELETE", &format!("Observation?{crit}"), &w, &[], b"");
    assert!(matches!(r.status, 200 | 204), "{}", r.text());
    assert_eq!(upstream_read(&key_b).status, 200, "B's survives");
    assert_eq!(upstream_read(&key_a).status, 410, "A's deleted");
    assert_forbidden(
        &px().req(
            "DELETE",
            &format!("Observation?{crit}&patient=Patient/{B}"),
            &w,
            &[],
            b"",
        ),
        "cond delete naming B",
    );

    // Conditional update whose criteria match only B's: it must not overwrite B's.
    let ident = fresh("cupd");
    let key_b = upstream_create(&observation(B, &ident));
    let crit = format!("identifier={}", enc(&format!("urn:compit|{ident}")));
    let r = send_json(
        "PUT",
        &format!("Observation?{crit}"),
        &w,
        &observation(A, &ident),
    );
    assert!(matches!(r.status, 200 | 201), "{}", r.text());
    let b_now = upstream_read(&key_b).json();
    assert_eq!(b_now["meta"]["versionId"], "1");
    assert_eq!(b_now["subject"]["reference"], format!("Patient/{B}"));
    let all = upstream_by_identifier(&ident);
    assert_eq!(all.len(), 2, "A got its own new one");
    // Conditional create whose If-None-Exist matches B's: not answered with B's.
    let r = px().req(
        "POST",
        "Observation",
        &w,
        &[
            ("Content-Type", "application/fhir+json"),
            ("If-None-Exist", &crit),
        ],
        observation(A, &ident).to_string().as_bytes(),
    );
    assert!(matches!(r.status, 200 | 201), "{}", r.text());
    if !r.body.is_empty() {
        assert_ne!(r.json()["subject"]["reference"], format!("Patient/{B}"));
    }
}

#[test]
fn patient_create_and_link_to_another_patient_are_refused() {
    let _upstream = writing();
    let w = writer();
    assert_forbidden(
        &send_json(
            "POST",
            "Patient",
            &w,
            &json!({"resourceType": "Patient", "name": [{"family": "X"}]}),
        ),
        "create Patient",
    );
    let mut me = upstream_read(&format!("Patient/{A}")).json();
    let version = me["meta"]["versionId"].clone();
    me["link"] = json!([{"other": {"reference": format!("Patient/{B}")}, "type": "seealso"}]);
    assert_forbidden(
        &send_json("PUT", &format!("Patient/{A}"), &w, &me),
        "link to B",
    );
    assert_forbidden(
        &send_json(
            "PUT",
            &format!("Patient/{B}"),
            &w,
            &json!({"resourceType": "Patient", "id": B}),
        ),
        "update B",
    );
    let now = upstream_read(&format!("Patient/{A}")).json();
    assert_eq!(now["meta"]["versionId"], version);
    assert!(now.get("link").is_none());
}

// ---------------------------------------------------------------------------------------
// 5. Batch and transaction
// ---------------------------------------------------------------------------------------

#[test]
fn transaction_with_one_forbidden_entry_applies_nothing() {
    let _upstream = writing();
    let w = writer();
    let ident = fresh("tx");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(A, &ident), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(A, &ident), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(B, &ident), "request": {"method": "POST", "url": "Observation"}},
    ]});
    assert_forbidden(&send_json("POST", "", &w, &bundle), "transaction");
    assert!(upstream_by_identifier(&ident).is_empty(), "nothing applied");
    // Without the forbidden entry it goes through.
    let mut ok = bundle.clone();
    ok["entry"].as_array_mut().unwrap().pop();
    let r = send_json("POST", "", &w, &ok);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_by_identifier(&ident).len(), 2);
}

#[test]
fn batch_answers_forbidden_entries_in_place() {
    let _upstream = writing();
    let w = tok("patient/Observation.cruds", A);
    let ident = fresh("batch");
    let key_b = upstream_create(&observation(B, &fresh("batch-b")));
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": observation(A, &ident), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(B, &ident), "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": key_b}},
        {"request": {"method": "GET", "url": "Observation/compit-nope"}},
        {"request": {"method": "GET", "url": "Observation/obs-pt-06-0001"}},
        {"request": {"method": "GET", "url": "Observation?_count=1000"}},
        {"request": {"method": "GET", "url": "Observation?patient=pt-07"}},
        {"request": {"method": "GET", "url": "Patient/pt-06"}},
    ]});
    let r = send_json("POST", "", &w, &bundle);
    assert_eq!(r.status, 200, "{}", r.text());
    let resp = r.json();
    assert_eq!(resp["type"], "batch-response");
    let e = resp["entry"].as_array().unwrap();
    assert_eq!(e.len(), 8);
    let status = |i: usize| {
        e[i]["response"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(status(0).starts_with("201"), "{}", e[0]);
    assert!(status(1).starts_with("403"), "{}", e[1]);
    assert_eq!(upstream_by_identifier(&ident).len(), 1, "only A's created");
    // B's resource: the same answer as a missing one (no etag, lastModified, fullUrl).
    assert_eq!(e[2], e[3], "B's resource must look missing");
    assert!(status(2).starts_with("404"), "{}", e[2]);
    assert!(!e[2].to_string().contains(B) && !e[2].to_string().contains("lastModified"));
    assert!(status(4).starts_with("200"));
    assert_eq!(e[4]["resource"]["id"], "obs-pt-06-0001");
    // A search entry: a searchset, filtered to A.
    assert!(status(5).starts_with("200"), "{}", e[5]);
    let search = &e[5]["resource"];
    assert_eq!(search["type"], "searchset", "{}", e[5]);
    assert_all_subject(search, A);
    assert!(manifest_observations(A).is_subset(&entry_ids(search).into_iter().collect()));
    assert!(status(6).starts_with("403"), "{}", e[6]);
    assert!(status(7).starts_with("403"), "no Patient scope: {}", e[7]);
    assert!(
        !resp.to_string().contains(&format!("\"Patient/{B}\"")),
        "nothing of B's"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Non-member types
// ---------------------------------------------------------------------------------------

#[test]
fn non_member_types_need_their_own_scope() {
    let _upstream = reading();
    let granted = tok(
        "patient/Practitioner.rs patient/Organization.rs patient/Medication.rs patient/Location.rs",
        "pt-02",
    );
    let other = tok("patient/Observation.rs", "pt-02");
    for key in [
        "Practitioner/pr-01",
        "Organization/org-01",
        "Medication/med-01",
        "Location/loc-01",
    ] {
        assert_eq!(get_ok(key, &granted)["id"], key.split('/').nth(1).unwrap());
        assert_forbidden(&px().get(key, &other), key);
    }
    assert_eq!(
        ids("Practitioner?_count=3", &granted).len(),
        3,
        "searchable, not pinned"
    );
    assert_forbidden(
        &px().get("Practitioner?_count=3", &other),
        "search without scope",
    );
}

#[test]
fn devices_are_narrowed_by_their_patient() {
    let _upstream = reading();
    assert_eq!(up_ids("Device?_count=100").len(), 4);
    let t = tok("patient/Device.rs", "pt-01");
    assert_eq!(ids("Device?_count=100", &t), ["Device/dev-pt-01"]);
    assert_eq!(ids("Device?patient=pt-01", &t), ["Device/dev-pt-01"]);
    assert_forbidden(&px().get("Device?patient=pt-05", &t), "Device of pt-05");
    assert_indistinguishable(
        &px().get("Device/dev-pt-05", &t),
        &px().get("Device/compit-nope", &t),
        "dev-pt-05",
    );
    assert_eq!(
        get_ok("Device/dev-pt-01", &t)["patient"]["reference"],
        "Patient/pt-01"
    );
    // Documented: a Device with no patient is a shared one, readable when granted.
    assert_eq!(get_ok("Device/dev-shared-01", &t)["id"], "dev-shared-01");
}

#[test]
fn binary_follows_its_security_context() {
    let _upstream = reading();
    let scopes = "patient/Binary.rs patient/DocumentReference.rs";
    let t2 = tok(scopes, "pt-02");
    let t1 = tok(scopes, "pt-01");
    let missing2 = px().get("Binary/compit-nope", &t2);
    let missing1 = px().get("Binary/compit-nope", &t1);
    assert_eq!(
        get_ok("Binary/bin-pt-02", &t2)["securityContext"]["reference"],
        "Patient/pt-02"
    );
    assert_indistinguishable(
        &px().get("Binary/bin-pt-02", &t1),
        &missing1,
        "bin-pt-02 for pt-01",
    );
    assert_eq!(
        get_ok("Binary/bin-doc-pt-02-1", &t2)["id"],
        "bin-doc-pt-02-1"
    );
    assert_eq!(
        get_ok("Binary/bin-doc-pt-01-1", &t1)["id"],
        "bin-doc-pt-01-1"
    );
    assert_indistinguishable(
        &px().get("Binary/bin-doc-pt-01-1", &t2),
        &missing2,
        "pt-01's document for pt-02",
    );
    // No securityContext: not anyone's, so not visible under patient/ scopes.
    assert_eq!(upstream_read("Binary/bin-public").status, 200);
    assert_indistinguishable(&px().get("Binary/bin-public", &t2), &missing2, "bin-public");
    // Through a DocumentReference the app may not read: hidden too.
    let no_doc = tok("patient/Binary.rs", "pt-02");
    assert_indistinguishable(
        &px().get("Binary/bin-doc-pt-02-1", &no_doc),
        &px().get("Binary/compit-nope", &no_doc),
        "docref not granted",
    );
    // A Binary search returns only what the filter can judge locally.
    let b = get_ok("Binary?_count=100", &t2);
    let got = entry_ids(&b);
    assert!(
        got.iter()
            .all(|k| k == "Binary/bin-pt-02" || k.starts_with("Binary/bin-doc-pt-02-")),
        "{got:?}"
    );
}

#[test]
fn groups_only_when_the_patient_is_the_only_member() {
    let _upstream = reading();
    assert!(
        up_ids("Patient/pt-05/Group").contains(&"Group/grp-family".to_owned()),
        "hfs: pt-05's compartment"
    );
    let t5 = tok("patient/Group.rs", "pt-05");
    assert_indistinguishable(
        &px().get("Group/grp-family", &t5),
        &px().get("Group/compit-nope", &t5),
        "grp-family",
    );
    assert!(ids("Group?_count=100", &t5).is_empty());
    assert!(ids("Patient/pt-05/Group", &t5).is_empty());
    let t8 = tok("patient/Group.rs", "pt-08");
    assert_eq!(
        get_ok("Group/grp-single", &t8)["member"][0]["entity"]["reference"],
        "Patient/pt-08"
    );
    assert_eq!(ids("Group?_count=100", &t8), ["Group/grp-single"]);
    assert_indistinguishable(
        &px().get("Group/grp-single", &t5),
        &px().get("Group/compit-nope", &t5),
        "grp-single for pt-05",
    );
}

#[test]
fn linked_patient_is_not_visible() {
    let _upstream = reading();
    assert_eq!(
        upstream_read("Patient/pt-09").json()["link"][0]["other"]["reference"],
        "Patient/pt-10"
    );
    let t = tok("patient/*.rs", "pt-09");
    assert_eq!(get_ok("Patient/pt-09", &t)["id"], "pt-09");
    assert_indistinguishable(
        &px().get("Patient/pt-10", &t),
        &px().get("Patient/compit-nope", &t),
        "pt-10",
    );
    assert_forbidden(&px().get("Patient?_id=pt-10", &t), "search pt-10");
    assert_forbidden(
        &px().get("Patient/pt-10/Observation", &t),
        "pt-10's compartment",
    );
    assert_forbidden(
        &px().get("Observation?patient=pt-10", &t),
        "pt-10's Observations",
    );
    let b = get_ok("Patient/pt-09/$everything?_count=1000", &t);
    assert_only(&b, "pt-09");
}

// ---------------------------------------------------------------------------------------
// 7. user/ and system/ scopes, and the missing patient claim
// ---------------------------------------------------------------------------------------

#[test]
fn user_scopes_enforce_type_and_interaction_only() {
    let _upstream = reading();
    let t = px().mint(TokenReq {
        scope: "user/Observation.rs",
        fhir_user: Some("Practitioner/pr-01"),
        ..Default::default()
    });
    let b = get_ok("Observation?_count=1000", &t);
    let subjects: BTreeSet<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["subject"]["reference"].as_str())
        .collect();
    assert!(subjects.len() > 5, "no patient narrowing: {subjects:?}");
    assert_eq!(
        get_ok("Observation/obs-pt-04-0001", &t)["id"],
        "obs-pt-04-0001"
    );
    assert_forbidden(&px().get("Patient/pt-01", &t), "no Patient scope");
    assert_forbidden(
        &px().get("Patient?_count=1", &t),
        "no Patient scope (search)",
    );
    assert_forbidden(
        &send_json("POST", "Observation", &t, &observation(A, &fresh("user-c"))),
        "no c",
    );
    // In a batch its entries pass as they would on their own (nothing stripped).
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/obs-pt-04-0001"}},
        {"request": {"method": "GET", "url": "Patient/pt-04"}},
    ]});
    let r = send_json("POST", "", &t, &bundle);
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json()["entry"].clone();
    assert_eq!(e[0]["resource"]["id"], "obs-pt-04-0001", "{e}");
    assert!(
        e[1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("403"),
        "{e}"
    );
    // Includes of types it has no scope for are removed.
    let b = get_ok(
        "Observation?patient=pt-03&_include=Observation:performer&_count=1000",
        &t,
    );
    assert!(entry_ids(&b).iter().all(|k| k.starts_with("Observation/")));
}

#[test]
fn system_scopes_grant_nothing_to_tokens_with_a_patient_or_user() {
    let _upstream = reading();
    for req in [
        TokenReq {
            scope: "system/*.cruds",
            patient: Some("pt-03"),
            ..Default::default()
        },
        TokenReq {
            scope: "system/*.cruds",
            fhir_user: Some("Practitioner/pr-01"),
            ..Default::default()
        },
    ] {
        let t = px().mint(req);
        for q in [
            "Patient/pt-03",
            "Observation?_count=1",
            "Observation/obs-pt-04-0001",
            "Patient/pt-03/$everything",
        ] {
            assert_forbidden(&px().get(q, &t), q);
        }
    }
    // The same scope on a backend token works (control).
    assert_eq!(
        px().get("Observation/obs-pt-04-0001", &system_token())
            .status,
        200
    );
}

#[test]
fn patient_scopes_without_a_patient_claim_grant_nothing() {
    let _upstream = reading();
    let t = px().mint(TokenReq {
        scope: "patient/*.cruds",
        ..Default::default()
    });
    for q in [
        "Observation?_count=1",
        "Observation",
        "Patient",
        "Patient/pt-01",
        "Observation/obs-pt-01-0001",
        "Patient/pt-01/*",
        "Practitioner/pr-01",
        "Binary/bin-public",
    ] {
        assert_forbidden(&px().get(q, &t), q);
    }
    assert_forbidden(
        &send_json("POST", "Observation", &t, &observation(A, &fresh("nopt"))),
        "create",
    );
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Observation?_count=1"}}]});
    let r = send_json("POST", "", &t, &bundle);
    assert!(
        r.status == 403
            || r.json()["entry"][0]["response"]["status"]
                .as_str()
                .unwrap_or_default()
                .starts_with("403"),
        "{}",
        r.text()
    );
}
