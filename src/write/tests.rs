//! Table tests of the write checks: every grant shape against current versions and new
//! content, no sockets.

use super::*;
use crate::authorize::NonMemberAccess;
use crate::classify::{Interaction, classify_entry};
use crate::scope::Letter;
use http::Method;
use serde_json::json;

const CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

fn grant(scopes: &str, patient: Option<&str>) -> Grant {
    Grant::for_tests(scopes, patient)
}

fn ctx() -> FilterContext {
    FilterContext::new(
        "http://up/fhir",
        "https://gw/fhir",
        false,
        NonMemberAccess::WhenGranted,
    )
}

fn view(context: Context, letter: Letter) -> View {
    View {
        context,
        patient: (context == Context::Patient).then(|| "A".to_owned()),
        letter,
    }
}

/// A grant (launch patient A), a view and compartment facts to judge writes with.
struct Fixture {
    grant: Grant,
    view: View,
    ctx: FilterContext,
}

impl Fixture {
    fn new(scopes: &str, context: Context, letter: Letter) -> Self {
        Fixture {
            grant: grant(scopes, Some("A")),
            view: view(context, letter),
            ctx: ctx(),
        }
    }

    fn judge(&self) -> Judge<'_> {
        Judge {
            view: &self.view,
            grant: &self.grant,
            ctx: &self.ctx,
        }
    }
}

fn obs(id: &str, patient: &str, cat: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": CAT, "code": cat}]}],
        "code": {"text": "x"},
        "subject": {"reference": format!("Patient/{patient}")}})
}

fn req(method: Method, url: &str) -> FhirRequest {
    classify_entry(&method, url, None).expect("classifies")
}

/// What step 2 says about `body` written by `url` under `scopes` (letter, context).
fn new_content(scopes: &str, context: Context, letter: Letter, url: &str, body: &Value) -> String {
    let g = grant(scopes, Some("A"));
    let v = view(context, letter);
    let c = ctx();
    let j = Judge {
        view: &v,
        grant: &g,
        ctx: &c,
    };
    let method = if url.contains('/') {
        Method::PUT
    } else {
        Method::POST
    };
    verdict(j.new_content(body, &req(method, url), None))
}

fn verdict(r: Result<(), WriteDenied>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("{} {}", e.status(), e.code()),
    }
}

/// Update: step 1 on `current`, then step 2 on `body` with what step 1 found.
fn update(scopes: &str, context: Context, current: &Value, body: &Value) -> String {
    let g = grant(scopes, Some("A"));
    let v = view(context, Letter::U);
    let c = ctx();
    let j = Judge {
        view: &v,
        grant: &g,
        ctx: &c,
    };
    let covered = match j.current(current, ResourceType::OBSERVATION) {
        Ok(c) => c,
        Err(e) => return format!("current {} {}", e.status(), e.code()),
    };
    verdict(j.new_content(body, &req(Method::PUT, "Observation/1"), Some(&covered)))
}

#[test]
fn create_is_judged_by_the_c_scope_parameters() {
    let vital = format!("patient/Observation.c?category={CAT}|vital-signs");
    let p = Context::Patient;
    let cases = [
        (vital.as_str(), obs("1", "A", "vital-signs"), "ok"),
        // The reported bug: a laboratory Observation under a vital-signs create scope.
        (
            vital.as_str(),
            obs("1", "A", "laboratory"),
            "403 write-scope",
        ),
        (
            vital.as_str(),
            obs("1", "B", "vital-signs"),
            "403 write-compartment",
        ),
        ("patient/Observation.c", obs("1", "A", "laboratory"), "ok"),
        (
            "patient/Observation.write",
            obs("1", "A", "laboratory"),
            "ok",
        ),
        (
            "patient/Observation.c",
            obs("1", "B", "laboratory"),
            "403 write-compartment",
        ),
        // A read scope's parameters do not matter to a write.
        (
            "patient/Observation.c patient/Observation.r?category=x|y",
            obs("1", "A", "laboratory"),
            "ok",
        ),
    ];
    for (scopes, body, want) in cases {
        assert_eq!(
            new_content(scopes, p, Letter::C, "Observation", &body),
            want,
            "{scopes} {body}"
        );
    }
}

#[test]
fn refusals_name_the_scope_that_fell_short() {
    let scope = format!("patient/Observation.c?category={CAT}|vital-signs");
    let f = Fixture::new(&scope, Context::Patient, Letter::C);
    let j = f.judge();
    let e = j
        .new_content(
            &obs("1", "A", "laboratory"),
            &req(Method::POST, "Observation"),
            None,
        )
        .unwrap_err();
    assert!(e.message().contains(&scope), "{}", e.message());
    assert_eq!(e.issue(), "forbidden");
}

#[test]
fn user_and_system_granular_writes_check_parameters_but_no_compartment() {
    let lab = format!("user/Observation.c?category={CAT}|laboratory");
    for (body, want) in [
        (obs("1", "B", "laboratory"), "ok"),
        (obs("1", "B", "vital-signs"), "403 write-scope"),
    ] {
        assert_eq!(
            new_content(&lab, Context::User, Letter::C, "Observation", &body),
            want
        );
    }
    let sys = format!("system/Observation.u?category={CAT}|laboratory");
    assert_eq!(
        update(
            &sys,
            Context::System,
            &obs("1", "B", "vital-signs"),
            &obs("1", "B", "laboratory")
        ),
        "current 403 write-scope"
    );
}

#[test]
fn write_only_grants_judge_the_current_version_by_the_write_letter() {
    let p = Context::Patient;
    // No `r` anywhere: the current version is still judged (and allowed) by `u`.
    assert_eq!(
        update(
            "patient/Observation.u",
            p,
            &obs("1", "A", "laboratory"),
            &obs("1", "A", "laboratory")
        ),
        "ok"
    );
    // Another patient's resource is "not found", whatever the scope.
    assert_eq!(
        update(
            "patient/Observation.u",
            p,
            &obs("1", "B", "laboratory"),
            &obs("1", "A", "laboratory")
        ),
        "current 404 not-found-or-hidden"
    );
    // Moving the patient's own resource to another patient.
    assert_eq!(
        update(
            "patient/Observation.u",
            p,
            &obs("1", "A", "laboratory"),
            &obs("1", "B", "laboratory")
        ),
        "403 write-compartment"
    );
}

#[test]
fn an_update_stays_inside_one_granting_scope() {
    let p = Context::Patient;
    let vital = format!("patient/Observation.u?category={CAT}|vital-signs");
    let lab = format!("patient/Observation.u?category={CAT}|laboratory");
    let both = format!("{vital} {lab}");
    let (v, l) = (obs("1", "A", "vital-signs"), obs("1", "A", "laboratory"));
    assert_eq!(update(&vital, p, &v, &v), "ok");
    assert_eq!(update(&vital, p, &l, &v), "current 403 write-scope");
    assert_eq!(update(&vital, p, &v, &l), "403 write-scope");
    // Each version is inside some scope, but no one scope covers both.
    assert_eq!(update(&both, p, &l, &v), "403 write-scope");
    assert_eq!(update(&both, p, &l, &l), "ok");
    // An unrestricted scope beside them covers both.
    let wide = format!("{both} patient/Observation.u");
    assert_eq!(update(&wide, p, &l, &v), "ok");
}

#[test]
fn body_must_match_the_url() {
    let p = Context::Patient;
    let s = "patient/Observation.u";
    let mut other_id = obs("2", "A", "x");
    assert_eq!(
        new_content(s, p, Letter::U, "Observation/1", &other_id),
        "400 body-id"
    );
    other_id["resourceType"] = json!("Condition");
    assert_eq!(
        new_content(s, p, Letter::U, "Observation/2", &other_id),
        "400 body-type"
    );
    assert_eq!(
        new_content(s, p, Letter::U, "Observation/2", &json!([1])),
        "400 body-not-json"
    );
}

#[test]
fn patient_resources_under_patient_scopes() {
    let f = Fixture::new("patient/Patient.u", Context::Patient, Letter::U);
    let j = f.judge();
    let a = json!({"resourceType": "Patient", "id": "A", "active": true});
    let b = json!({"resourceType": "Patient", "id": "B"});
    assert!(j.current(&a, ResourceType::PATIENT).is_ok());
    assert_eq!(
        j.current(&b, ResourceType::PATIENT).unwrap_err(),
        WriteDenied::CurrentHidden
    );
    let r = req(Method::PUT, "Patient/A");
    assert_eq!(verdict(j.new_content(&a, &r, None)), "ok");
    let linked = json!({"resourceType": "Patient", "id": "A",
        "link": [{"other": {"reference": "Patient/B"}, "type": "seealso"}]});
    assert_eq!(
        verdict(j.new_content(&linked, &r, None)),
        "403 write-compartment"
    );
}

#[test]
fn delete_is_judged_by_the_d_scope() {
    let lab = format!("patient/Observation.d?category={CAT}|laboratory");
    let f = Fixture::new(&lab, Context::Patient, Letter::D);
    let j = f.judge();
    let t = ResourceType::OBSERVATION;
    assert!(j.current(&obs("1", "A", "laboratory"), t).is_ok());
    assert!(matches!(
        j.current(&obs("1", "A", "vital-signs"), t),
        Err(WriteDenied::CurrentOutsideScope { .. })
    ));
    assert_eq!(
        j.current(&obs("1", "B", "laboratory"), t).unwrap_err(),
        WriteDenied::CurrentHidden
    );
    // A resource of another type than the URL's is never taken for the current version.
    assert_eq!(
        j.current(&obs("1", "A", "laboratory"), ResourceType::PATIENT)
            .unwrap_err(),
        WriteDenied::CurrentHidden
    );
}

#[test]
fn patient_scopes_without_a_launch_patient_write_nothing() {
    let g = grant("patient/Observation.c", None);
    let v = View {
        context: Context::Patient,
        patient: None,
        letter: Letter::C,
    };
    let c = ctx();
    let j = Judge {
        view: &v,
        grant: &g,
        ctx: &c,
    };
    assert_eq!(
        j.new_content(&obs("1", "A", "x"), &req(Method::POST, "Observation"), None)
            .unwrap_err(),
        WriteDenied::OutsideCompartment
    );
}

#[test]
fn json_patch_is_applied_and_judged_as_a_result() {
    let cur = obs("1", "A", "laboratory");
    let ct = Some("application/json-patch+json");
    let to_vital =
        br#"[{"op":"replace","path":"/category/0/coding/0/code","value":"vital-signs"}]"#;
    let patched = apply_patch(cur.clone(), to_vital, ct).unwrap();
    assert_eq!(patched["category"][0]["coding"][0]["code"], "vital-signs");
    let to_b = br#"[{"op":"replace","path":"/subject/reference","value":"Patient/B"}]"#;
    let moved = apply_patch(cur.clone(), to_b, ct).unwrap();
    let f = Fixture::new("patient/Observation.u", Context::Patient, Letter::U);
    let j = f.judge();
    let r = req(Method::PATCH, "Observation/1");
    assert_eq!(
        j.new_content(&moved, &r, None).unwrap_err(),
        WriteDenied::OtherPatient
    );
    assert_eq!(
        apply_patch(cur.clone(), to_b, Some("application/fhir+json")).unwrap_err(),
        WriteDenied::PatchFormat
    );
    assert_eq!(
        apply_patch(cur.clone(), b"{}", ct).unwrap_err(),
        WriteDenied::PatchBody
    );
    let bad = br#"[{"op":"remove","path":"/nothing/here"}]"#;
    assert_eq!(
        apply_patch(cur, bad, ct).unwrap_err(),
        WriteDenied::PatchApply
    );
}

#[test]
fn conditional_criteria_select_at_most_one_match() {
    let m = |id: &str| json!({"resource": obs(id, "A", "x"), "search": {"mode": "match"}});
    let include =
        json!({"resource": {"resourceType": "Patient", "id": "A"}, "search": {"mode": "include"}});
    let outcome =
        json!({"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}});
    let set = |entries: Vec<Value>| json!({"resourceType": "Bundle", "type": "searchset", "entry": entries});
    assert_eq!(single_match(&set(vec![])).unwrap(), None);
    assert_eq!(
        single_match(&json!({"resourceType": "Bundle"})).unwrap(),
        None
    );
    assert_eq!(
        single_match(&set(vec![m("1"), include.clone(), outcome]))
            .unwrap()
            .and_then(|r| r.get("id")),
        Some(&json!("1"))
    );
    assert_eq!(
        single_match(&set(vec![m("1"), m("2")])).unwrap_err(),
        WriteDenied::Ambiguous
    );
    assert_eq!(single_match(&set(vec![include])).unwrap(), None);
}

#[test]
fn conditional_writes_resolve_to_instance_writes() {
    let r = req(Method::PUT, "Observation?identifier=x&_format=json");
    assert_eq!(r.interaction, Interaction::ConditionalUpdate);
    let one = r.on_instance("7");
    assert_eq!(one.interaction, Interaction::Update);
    assert_eq!(one.upstream_target(), "Observation/7?_format=json");
    let create = r.as_conditional_create();
    assert_eq!(create.interaction, Interaction::ConditionalCreate);
    assert_eq!(create.if_none_exist().as_deref(), Some("identifier=x"));
    assert_eq!(create.upstream_target(), "Observation?_format=json");
    let d = req(Method::DELETE, "Observation?identifier=x").on_instance("9");
    assert_eq!(
        (d.interaction, d.upstream_target().as_str()),
        (Interaction::Delete, "Observation/9")
    );
}

#[test]
fn every_refusal_has_a_status_issue_code_and_message() {
    let all = [
        WriteDenied::NotJson,
        WriteDenied::WrongType,
        WriteDenied::WrongId,
        WriteDenied::CurrentHidden,
        WriteDenied::CurrentOutsideScope { scopes: "s".into() },
        WriteDenied::OutsideScope { scopes: "s".into() },
        WriteDenied::LeavesScope { scopes: "s".into() },
        WriteDenied::OutsideCompartment,
        WriteDenied::OtherPatient,
        WriteDenied::PatchFormat,
        WriteDenied::PatchBody,
        WriteDenied::PatchApply,
        WriteDenied::Ambiguous,
    ];
    for e in all {
        assert!((400..500).contains(&e.status()), "{e:?}");
        assert!(!e.issue().is_empty() && !e.code().is_empty() && !e.message().is_empty());
        assert_eq!(e.status() == 403, e.issue() == "forbidden", "{e:?}");
    }
}
