use super::*;
use crate::scope::Letter;
use proptest::prelude::*;
use serde_json::json;

const UP: &str = "http://upstream:8080/fhir";
const PUB: &str = "https://gw.example/r4";

fn grant(scopes: &str, patient: Option<&str>) -> Grant {
    Grant::for_tests(scopes, patient)
}

fn pview(letter: Letter) -> View {
    View {
        context: Context::Patient,
        patient: Some("A".into()),
        letter,
    }
}

fn ctx() -> FilterContext {
    FilterContext::new(UP, &format!("{PUB}/"), false, NonMemberAccess::WhenGranted)
}

fn obs(id: &str, patient: &str, cat: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": cat}]}],
        "subject": {"reference": format!("Patient/{patient}")}})
}

fn entry(resource: Value, mode: &str) -> Value {
    let rt = resource["resourceType"].as_str().unwrap().to_owned();
    let id = resource["id"].as_str().unwrap_or("x").to_owned();
    json!({"fullUrl": format!("{UP}/{rt}/{id}"), "resource": resource, "search": {"mode": mode}})
}

fn bundle(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(),
        "link": [{"relation": "self", "url": format!("{UP}/Observation?patient=A")},
                 {"relation": "next", "url": format!("{UP}?_getpages=abc&_getpagesoffset=20")}],
        "entry": entries})
}

fn run(b: &Value, scopes: &str) -> (Value, FilteredBundle) {
    let g = grant(scopes, Some("A"));
    let f = filter_bundle(
        &serde_json::to_vec(b).unwrap(),
        &pview(Letter::S),
        &g,
        &ctx(),
        &|u| Some(format!("{u}&_sig=1")),
    )
    .unwrap();
    (serde_json::from_slice(&f.body).unwrap(), f)
}

fn ids(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap(),
                        e["resource"]["id"].as_str().unwrap_or("x")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn check_resource_rules() {
    let c = ctx();
    let g = grant(
        "patient/Observation.rs patient/Practitioner.rs patient/Binary.r patient/Device.rs",
        Some("A"),
    );
    let v = pview(Letter::R);
    assert_eq!(
        check_resource(&obs("1", "A", "lab"), &v, &g, &c),
        Visibility::Visible
    );
    assert_eq!(
        check_resource(&obs("1", "B", "lab"), &v, &g, &c),
        Visibility::Hidden("compartment")
    );
    let cond = json!({"resourceType": "Condition", "subject": {"reference": "Patient/A"}});
    assert_eq!(
        check_resource(&cond, &v, &g, &c),
        Visibility::Hidden("scope")
    );
    let prac = json!({"resourceType": "Practitioner", "id": "p"});
    assert_eq!(check_resource(&prac, &v, &g, &c), Visibility::Visible);
    let deny = FilterContext {
        non_member_types: NonMemberAccess::Deny,
        ..ctx()
    };
    assert_eq!(
        check_resource(&prac, &v, &g, &deny),
        Visibility::Hidden("non-member")
    );
    assert_eq!(
        check_resource(&json!({"resourceType": "Nope"}), &v, &g, &c),
        Visibility::Hidden("unknown-type")
    );
    assert_eq!(
        check_resource(&json!({}), &v, &g, &c),
        Visibility::Hidden("unknown-type")
    );
    let oo = json!({"resourceType": "OperationOutcome"});
    assert_eq!(
        check_resource(&oo, &v, &grant("", None), &c),
        Visibility::Visible
    );
    // Device is not a member type, but its `patient` must be A when present.
    let dev = |p: &str| json!({"resourceType": "Device", "patient": {"reference": p}});
    assert_eq!(
        check_resource(&dev("Patient/A"), &v, &g, &c),
        Visibility::Visible
    );
    assert_eq!(
        check_resource(&dev("Patient/B"), &v, &g, &c),
        Visibility::Hidden("other-patient")
    );
    assert_eq!(
        check_resource(&json!({"resourceType": "Device"}), &v, &g, &c),
        Visibility::Visible
    );
    // No patient in the view: nothing.
    let nop = View {
        patient: None,
        ..pview(Letter::R)
    };
    assert_eq!(
        check_resource(&obs("1", "A", "lab"), &nop, &g, &c),
        Visibility::Hidden("no-patient-context")
    );
    // Letters are separate: r does not allow search.
    let r_only = grant("patient/Observation.r", Some("A"));
    assert_eq!(
        check_resource(&obs("1", "A", "lab"), &pview(Letter::S), &r_only, &c),
        Visibility::Hidden("scope")
    );
    // user/ context: type (and granular) only.
    let u = grant("user/Observation.rs", None);
    let uv = View {
        context: Context::User,
        patient: None,
        letter: Letter::R,
    };
    assert_eq!(
        check_resource(&obs("1", "B", "lab"), &uv, &u, &c),
        Visibility::Visible
    );
    let nested = json!({"resourceType": "Bundle"});
    let gb = grant("patient/Bundle.r", Some("A"));
    assert_eq!(
        check_resource(&nested, &v, &gb, &c),
        Visibility::Hidden("nested-bundle")
    );
}

#[test]
fn granular_scopes_or_and_unsupported() {
    let c = ctx();
    let v = pview(Letter::S);
    let lab = obs("1", "A", "laboratory");
    let vital = obs("2", "A", "vital-signs");
    let g = grant("patient/Observation.rs?category=laboratory", Some("A"));
    assert_eq!(check_resource(&lab, &v, &g, &c), Visibility::Visible);
    assert_eq!(
        check_resource(&vital, &v, &g, &c),
        Visibility::Hidden("granular")
    );
    let g2 = grant(
        "patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs",
        Some("A"),
    );
    assert_eq!(check_resource(&vital, &v, &g2, &c), Visibility::Visible);
    let g3 = grant(
        "patient/Observation.rs?category=vital-signs patient/Observation.s",
        Some("A"),
    );
    assert_eq!(check_resource(&lab, &v, &g3, &c), Visibility::Visible);
    let g4 = grant("patient/Observation.rs?date=2020", Some("A"));
    assert_eq!(
        check_resource(&lab, &v, &g4, &c),
        Visibility::Hidden("granular")
    );
    // Granular but other patient: still hidden.
    assert_eq!(
        check_resource(&obs("3", "B", "laboratory"), &v, &g, &c),
        Visibility::Hidden("compartment")
    );
}

#[test]
fn binary_security_context() {
    let c = ctx();
    let g = grant("patient/Binary.r", Some("A"));
    let v = pview(Letter::R);
    let bin = |sc: Value| json!({"resourceType": "Binary", "contentType": "text/plain", "securityContext": sc});
    assert_eq!(
        check_resource(&bin(json!({"reference": "Patient/A"})), &v, &g, &c),
        Visibility::Visible
    );
    assert_eq!(
        check_resource(
            &bin(json!({"reference": format!("{UP}/Patient/A")})),
            &v,
            &g,
            &c
        ),
        Visibility::Visible
    );
    assert_eq!(
        check_resource(&bin(json!({"reference": "Patient/B"})), &v, &g, &c),
        Visibility::Hidden("compartment")
    );
    assert_eq!(
        check_resource(
            &bin(json!({"reference": "DocumentReference/d1"})),
            &v,
            &g,
            &c
        ),
        Visibility::NeedsLookup("DocumentReference/d1".into())
    );
    assert_eq!(
        check_resource(
            &bin(json!({"reference": format!("{PUB}/DocumentReference/d1/_history/2")})),
            &v,
            &g,
            &c
        ),
        Visibility::NeedsLookup("DocumentReference/d1".into())
    );
    assert_eq!(
        check_resource(
            &bin(json!({"reference": "https://evil/DocumentReference/d1"})),
            &v,
            &g,
            &c
        ),
        Visibility::Hidden("compartment")
    );
    assert_eq!(
        check_resource(&bin(json!({"reference": "#x"})), &v, &g, &c),
        Visibility::Hidden("compartment")
    );
    assert_eq!(
        check_resource(&json!({"resourceType": "Binary"}), &v, &g, &c),
        Visibility::Hidden("binary-no-context")
    );
    // In a Bundle, NeedsLookup entries are removed.
    let b = bundle(vec![
        entry(
            json!({"resourceType": "Binary", "id": "b1", "securityContext": {"reference": "Patient/A"}}),
            "match",
        ),
        entry(
            json!({"resourceType": "Binary", "id": "b2", "securityContext": {"reference": "DocumentReference/d"}}),
            "match",
        ),
    ]);
    let (out, f) = run(&b, "patient/Binary.rs");
    assert_eq!(ids(&out), vec!["Binary/b1"]);
    assert_eq!(f.removed, 1);
}

#[test]
fn bundle_removes_other_patients_and_includes() {
    let b = bundle(vec![
        entry(obs("1", "A", "lab"), "match"),
        entry(obs("2", "B", "lab"), "match"),
        entry(
            json!({"resourceType": "Practitioner", "id": "p1"}),
            "include",
        ),
        entry(json!({"resourceType": "Patient", "id": "B"}), "include"),
        entry(json!({"resourceType": "Patient", "id": "A"}), "include"),
        entry(
            json!({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/A"}}),
            "include",
        ),
        entry(
            json!({"resourceType": "OperationOutcome", "issue": []}),
            "outcome",
        ),
    ]);
    let (out, f) = run(
        &b,
        "patient/Observation.rs patient/Practitioner.rs patient/Patient.rs",
    );
    assert_eq!(
        ids(&out),
        vec![
            "Observation/1",
            "Practitioner/p1",
            "Patient/A",
            "OperationOutcome/x"
        ]
    );
    assert_eq!((f.kept, f.removed), (4, 3));
    assert!(out.get("total").is_none());
    assert_eq!(out["type"], "searchset");
    // fullUrl rebased to the public base.
    assert_eq!(out["entry"][0]["fullUrl"], format!("{PUB}/Observation/1"));
    // Paging links rebased then handed to the binder.
    assert_eq!(
        out["link"][0]["url"],
        format!("{PUB}/Observation?patient=A&_sig=1")
    );
    assert_eq!(
        out["link"][1]["url"],
        format!("{PUB}?_getpages=abc&_getpagesoffset=20&_sig=1")
    );
}

#[test]
fn total_kept_when_nothing_removed_and_values_byte_for_byte() {
    let raw = format!(
        r#"{{"resourceType":"Bundle","type":"searchset","total":1,"entry":[{{"fullUrl":"{UP}/Observation/1","resource":{{ "resourceType" : "Observation", "id":"1","subject":{{"reference":"Patient/A"}},"valueQuantity":{{"value":1.50}} }}}}]}}"#
    );
    let g = grant("patient/Observation.rs", Some("A"));
    let f = filter_bundle(raw.as_bytes(), &pview(Letter::S), &g, &ctx(), &|u| {
        Some(u.to_owned())
    })
    .unwrap();
    let body = String::from_utf8(f.body).unwrap();
    assert!(body.contains(r#""total":1"#), "{body}");
    // Every value is copied as it came (`1.50` is not re-formatted); only the whitespace
    // between a resource's fields goes.
    assert!(body.contains(r#""resource":{"resourceType":"Observation","id":"1","subject":{"reference":"Patient/A"},"valueQuantity":{"value":1.50}}"#), "{body}");
    assert!(body.contains(&format!(r#""fullUrl":"{PUB}/Observation/1""#)));
    assert_eq!((f.kept, f.removed), (1, 0));
}

#[test]
fn links_dropped_when_the_binder_refuses_and_others_rebased() {
    let b = json!({"resourceType": "Bundle", "type": "searchset",
        "link": [{"relation": "next", "url": format!("{UP}?page=2")},
                 {"relation": "alternate", "url": format!("{UP}/x")},
                 {"relation": "self", "url": "https://elsewhere/x"}]});
    let g = grant("patient/Observation.rs", Some("A"));
    let f = filter_bundle(
        &serde_json::to_vec(&b).unwrap(),
        &pview(Letter::S),
        &g,
        &ctx(),
        &|u| u.starts_with(PUB).then(|| u.to_owned()),
    )
    .unwrap();
    let out: Value = serde_json::from_slice(&f.body).unwrap();
    assert_eq!(
        out["link"],
        json!([{"relation": "next", "url": format!("{PUB}?page=2")},
                                   {"relation": "alternate", "url": format!("{PUB}/x")}])
    );
    let f = filter_bundle(
        &serde_json::to_vec(&b).unwrap(),
        &pview(Letter::S),
        &g,
        &ctx(),
        &|_| None,
    )
    .unwrap();
    let out: Value = serde_json::from_slice(&f.body).unwrap();
    assert_eq!(out["link"].as_array().unwrap().len(), 1);
    let only_paging = json!({"resourceType": "Bundle", "link": [{"relation": "next", "url": "x"}]});
    let f = filter_bundle(
        &serde_json::to_vec(&only_paging).unwrap(),
        &pview(Letter::S),
        &g,
        &ctx(),
        &|_| None,
    )
    .unwrap();
    let out: Value = serde_json::from_slice(&f.body).unwrap();
    assert!(out.get("link").is_none());
}

#[test]
fn history_bundles_and_resourceless_entries() {
    let b = json!({"resourceType": "Bundle", "type": "history", "entry": [
        {"fullUrl": format!("{UP}/Observation/1"), "resource": obs("1", "A", "lab"), "request": {"method": "PUT", "url": "Observation/1"}},
        {"fullUrl": format!("{UP}/Observation/1"), "resource": obs("1", "B", "lab"), "request": {"method": "PUT", "url": "Observation/1"}},
        {"request": {"method": "DELETE", "url": "Observation/2/_history/3"}, "response": {"status": "410"}},
    ]});
    let (out, f) = run(&b, "patient/Observation.rs");
    assert_eq!(f.kept, 1);
    assert_eq!(
        out["entry"][0]["resource"]["subject"]["reference"],
        "Patient/A"
    );
    // user/ context keeps resource-less entries of granted types only.
    let body = serde_json::to_vec(&b).unwrap();
    let uv = View {
        context: Context::User,
        patient: None,
        letter: Letter::S,
    };
    let f = filter_bundle(
        &body,
        &uv,
        &grant("user/Observation.rs", None),
        &ctx(),
        &|u| Some(u.into()),
    )
    .unwrap();
    assert_eq!(f.kept, 3);
    let f = filter_bundle(
        &body,
        &uv,
        &grant("user/Observation.rs?category=lab", None),
        &ctx(),
        &|u| Some(u.into()),
    )
    .unwrap();
    assert_eq!(f.kept, 2);
    let f = filter_bundle(
        &body,
        &uv,
        &grant("user/Condition.rs", None),
        &ctx(),
        &|u| Some(u.into()),
    )
    .unwrap();
    assert_eq!(f.kept, 0);
}

#[test]
fn empty_and_error_bundles() {
    let g = grant("patient/Observation.rs", Some("A"));
    let v = pview(Letter::S);
    let c = ctx();
    let f = |body: &[u8]| filter_bundle(body, &v, &g, &c, &|u| Some(u.to_owned()));
    let empty = f(br#"{"resourceType":"Bundle","type":"searchset","total":0}"#).unwrap();
    assert_eq!(
        empty.body,
        br#"{"resourceType":"Bundle","type":"searchset","total":0}"#
    );
    let all_removed = f(br#"{"resourceType":"Bundle","total":1,"entry":[{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/B"}}}]}"#).unwrap();
    assert_eq!(all_removed.body, br#"{"resourceType":"Bundle"}"#);
    for (bad, what) in [
        (&b"{\"resourceType\":\"Observation\"}"[..], "not a bundle"),
        (b"{\"entry\":[]}", "no type"),
        (b"[]", "array"),
        (b"", "empty"),
        (b"{\"resourceType\":\"Bundle\",\"entry\":[", "truncated"),
        (b"{\"resourceType\":\"Bundle\"} {}", "trailing"),
        (b"{\"resourceType\":\"Bundle\",\"resourceType\":\"Bundle\"}", "dup bundle key"),
        (b"{\"resourceType\":\"Bundle\",\"entry\":[{\"resource\":{},\"resource\":{}}]}", "dup entry key"),
        (b"{\"resourceType\":\"Bundle\",\"entry\":[{\"resource\":{\"resourceType\":\"Observation\",\"subject\":{\"reference\":\"Patient/A\"},\"subject\":{\"reference\":\"Patient/B\"}}}]}", "dup resource key"),
        (b"{\"resourceType\":\"Bundle\",\"entry\":[{\"resource\":{\"resourceType\":\"Observation\",\"subject\":{\"reference\":\"Patient/A\",\"reference\":\"Patient/B\"}}}]}", "dup nested key"),
        (b"{\"resourceType\":\"Bundle\",\"entry\":{}}", "entry object"),
        (b"{\"resourceType\":\"Bundle\",\"entry\":[1]}", "entry number"),
        (b"{\"resourceType\":\"Bundle\",\"entry\":[{\"resource\":[]}]}", "resource array"),
        (b"{\"resourceType\":\"Bundle\",\"entry\":[{\"resource\":{\"id\":\"1\"}}]}", "resource no type"),
        (b"{\"resourceType\":\"Bundle\",\"link\":[{\"relation\":\"next\",\"url\":1}]}", "link url"),
        (b"{\"resourceType\":\"Bundle\",\"entry\":[{\"fullUrl\":3,\"resource\":{\"resourceType\":\"OperationOutcome\"}}]}", "fullUrl"),
        (b"\xff", "utf8"),
    ] {
        assert!(f(bad).is_err(), "{what}");
    }
    assert!(matches!(
        f(b"{\"resourceType\":\"Bundle\",\"resourceType\":\"Bundle\"}"),
        Err(FilterError::DuplicateKey(_))
    ));
    assert!(matches!(
        f(b"{\"resourceType\":\"Patient\"}"),
        Err(FilterError::NotABundle)
    ));
}

#[test]
fn check_single_bodies() {
    let g = grant("patient/Observation.rs", Some("A"));
    let v = pview(Letter::R);
    let c = ctx();
    let body = serde_json::to_vec(&obs("1", "A", "lab")).unwrap();
    let obs_t = Some(ResourceType::OBSERVATION);
    assert_eq!(
        check_single(&body, obs_t, &v, &g, &c).unwrap(),
        Visibility::Visible
    );
    assert_eq!(
        check_single(&body, None, &v, &g, &c).unwrap(),
        Visibility::Visible
    );
    assert!(matches!(
        check_single(&body, Some(ResourceType::PATIENT), &v, &g, &c),
        Err(FilterError::WrongType)
    ));
    let other = serde_json::to_vec(&obs("1", "B", "lab")).unwrap();
    assert_eq!(
        check_single(&other, obs_t, &v, &g, &c).unwrap(),
        Visibility::Hidden("compartment")
    );
    let dup = br#"{"resourceType":"Observation","subject":{"reference":"Patient/A"},"subject":{"reference":"Patient/B"}}"#;
    assert!(matches!(
        check_single(dup, obs_t, &v, &g, &c),
        Err(FilterError::DuplicateKey(_))
    ));
    assert!(check_single(b"{\"resourceType\":\"Observation\"", obs_t, &v, &g, &c).is_err());
    assert!(matches!(
        check_single(b"{}", obs_t, &v, &g, &c),
        Err(FilterError::WrongType)
    ));
}

#[test]
fn rebase_only_at_a_segment_boundary() {
    let c = ctx();
    assert_eq!(
        c.rebase(&format!("{UP}/Patient/A")),
        format!("{PUB}/Patient/A")
    );
    assert_eq!(c.rebase(UP), PUB);
    assert_eq!(c.rebase(&format!("{UP}?x=1")), format!("{PUB}?x=1"));
    assert_eq!(
        c.rebase(&format!("{UP}2/Patient/A")),
        format!("{UP}2/Patient/A")
    );
    assert_eq!(
        c.rebase("https://other/fhir/Patient/A"),
        "https://other/fhir/Patient/A"
    );
}

fn arb_resource() -> impl Strategy<Value = Value> {
    let patient = prop_oneof![
        Just("Patient/A".to_owned()),
        Just("Patient/B".to_owned()),
        Just(format!("{UP}/Patient/A")),
        Just("https://evil/Patient/A".to_owned()),
        Just("#A".to_owned()),
        Just("Group/A".to_owned()),
    ];
    let rtype = prop_oneof![
        Just("Observation"),
        Just("Condition"),
        Just("Patient"),
        Just("Practitioner"),
        Just("Group"),
        Just("Binary"),
        Just("OperationOutcome"),
        Just("Device"),
        Just("Bundle"),
        Just("Nope"),
    ];
    let cat = prop_oneof![Just("laboratory"), Just("vital-signs")];
    (rtype, patient.clone(), patient, cat, "[A-C]").prop_map(|(t, p1, p2, cat, id)| {
        json!({"resourceType": t, "id": id, "subject": {"reference": p1},
            "performer": [{"reference": p2}], "patient": {"reference": p2},
            "securityContext": {"reference": p1}, "member": [{"entity": {"reference": p1}}],
            "category": [{"coding": [{"code": cat}]}]})
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let g = grant("patient/*.rs", Some("A"));
        let _ = filter_bundle(&body, &pview(Letter::S), &g, &ctx(), &|u| Some(u.to_owned()));
        let _ = check_single(&body, None, &pview(Letter::R), &g, &ctx());
    }

    #[test]
    fn never_panics_on_mutated_bundles(cut in 0usize..400, byte in any::<u8>()) {
        let b = serde_json::to_vec(&bundle(vec![entry(obs("1", "A", "lab"), "match")])).unwrap();
        let mut m = b.clone();
        if let Some(x) = m.get_mut(cut) { *x = byte; }
        let g = grant("patient/*.rs", Some("A"));
        let _ = filter_bundle(&m, &pview(Letter::S), &g, &ctx(), &|u| Some(u.to_owned()));
        let _ = filter_bundle(b.get(..cut).unwrap_or(&b), &pview(Letter::S), &g, &ctx(), &|u| Some(u.to_owned()));
    }

    #[test]
    fn bundle_filter_agrees_with_check_resource(
        resources in proptest::collection::vec(arb_resource(), 0..12),
        scopes in prop_oneof![
            Just("patient/*.rs"),
            Just("patient/Observation.rs?category=laboratory patient/Patient.rs patient/Group.s"),
            Just("patient/Observation.s patient/Binary.s patient/Device.s patient/Bundle.s"),
            Just("user/*.rs"),
        ],
    ) {
        let g = grant(scopes, Some("A"));
        let view = if scopes.starts_with("user") {
            View { context: Context::User, patient: None, letter: Letter::S }
        } else {
            pview(Letter::S)
        };
        let c = ctx();
        let entries: Vec<Value> = resources.iter().map(|r| json!({"resource": r})).collect();
        let body = serde_json::to_vec(&json!({"resourceType": "Bundle", "entry": entries})).unwrap();
        let f = filter_bundle(&body, &view, &g, &c, &|u| Some(u.to_owned())).unwrap();
        let out: Value = serde_json::from_slice(&f.body).unwrap();
        let kept: Vec<Value> = out.get("entry").and_then(Value::as_array).cloned().unwrap_or_default()
            .into_iter().map(|e| e["resource"].clone()).collect();
        let want: Vec<Value> = resources.iter()
            .filter(|r| check_resource(r, &view, &g, &c) == Visibility::Visible)
            .cloned().collect();
        prop_assert_eq!(kept, want);
        prop_assert_eq!(f.kept + f.removed, resources.len());
    }
}

#[test]
fn verdicts_reused_only_for_identical_decisive_elements() {
    // Same subject, same category: one verdict reused; a different category under a
    // granular scope or another subject is judged again; Patients are judged by id.
    let b = bundle(vec![
        entry(obs("1", "A", "vital-signs"), "match"),
        entry(obs("2", "A", "vital-signs"), "match"),
        entry(obs("3", "A", "laboratory"), "match"),
        entry(obs("4", "B", "vital-signs"), "match"),
        entry(obs("5", "A", "vital-signs"), "match"),
        entry(json!({"resourceType": "Patient", "id": "A"}), "include"),
        entry(json!({"resourceType": "Patient", "id": "B"}), "include"),
    ]);
    let scopes = "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs patient/Patient.rs";
    let (out, f) = run(&b, scopes);
    assert_eq!(
        ids(&out),
        [
            "Observation/1",
            "Observation/2",
            "Observation/5",
            "Patient/A"
        ]
    );
    assert_eq!((f.kept, f.removed), (4, 3));
}
