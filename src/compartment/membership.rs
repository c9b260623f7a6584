//! Is this resource in patient A's compartment? And does this resource (about to be
//! written) point only at patient A?
//!
//! Rules, by the resource's own `resourceType`:
//! - `Patient`: a member iff its `id` is A. `Patient.link` to another patient does not
//!   make that patient's record A's (nor A's record theirs).
//! - `Group`: a member iff it has at least one Patient member and **every** member entity
//!   that is (or may be) a Patient is A. A Group listing other patients is not exposed to
//!   A even though the official definition would put it in A's compartment: its member list
//!   would reveal them. Entities of another known type (Device, Practitioner, …) are
//!   ignored; entities whose type cannot be told (contained, identifier-only without
//!   `type`, `urn:`) count as "maybe another patient" and deny.
//! - Other member types: some compartment parameter of role [`Role::Subject`] (or
//!   [`Role::Actor`] too with `actor_membership`) references A.
//! - Non-member types are never members (the response filter has its own rule for them).
//!
//! A reference is A only as `Patient/A`, `Patient/A/_history/n`, or `{base}/Patient/A[…]`
//! with `{base}` one of [`MembershipOptions::bases`] (ours: upstream and public). A foreign
//! server's `Patient/A` is a different patient; `#contained`, `urn:` and identifier-only
//! references are never A.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

use super::definition::{Role, rule};
use super::fhirpath::{Expr, split_reference};
use crate::fhir::ResourceType;

/// How membership is judged; built once from configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipOptions {
    /// Count [`Role::Actor`] parameters too (`Observation.performer`, `asserter`, …): the
    /// official, wider reading of the compartment. Off by default: a patient app for A
    /// must not see B's record because A appears in it.
    pub actor_membership: bool,
    /// The bases under which an absolute reference is "ours" (upstream and public base),
    /// without trailing slash.
    pub bases: Vec<String>,
}

impl MembershipOptions {
    /// Options with `bases` normalised (trailing slashes removed, empty ones dropped).
    pub fn new<'a>(actor_membership: bool, bases: impl IntoIterator<Item = &'a str>) -> Self {
        MembershipOptions {
            actor_membership,
            bases: bases
                .into_iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .filter(|b| !b.is_empty())
                .collect(),
        }
    }

    fn counts(&self, role: Role) -> bool {
        role == Role::Subject || self.actor_membership
    }
}

/// Compiled compartment parameters per member type (all R4 paths compile; checked by test).
static COMPILED: LazyLock<HashMap<ResourceType, Vec<(Role, Expr)>>> = LazyLock::new(|| {
    ResourceType::all()
        .filter_map(|t| {
            let r = rule(t)?;
            let exprs = r
                .params
                .iter()
                .filter_map(|p| Expr::compile(&p.path, t).ok().map(|e| (p.role, e)))
                .collect();
            Some((t, exprs))
        })
        .collect()
});

/// The id of the patient a literal reference names, if it names one on our server:
/// `Patient/A`, `Patient/A/_history/n`, `{base}/Patient/A[/_history/n]`.
pub fn patient_id_of<'a>(reference: &'a str, bases: &[String]) -> Option<&'a str> {
    let local = if reference.starts_with("Patient/") {
        reference
    } else {
        bases.iter().find_map(|b| {
            let base = b.trim_end_matches('/');
            reference
                .strip_prefix(base)
                .and_then(|r| r.strip_prefix('/'))
                .filter(|r| r.starts_with("Patient/"))
        })?
    };
    match split_reference(local) {
        Some(("Patient", id)) => Some(id),
        _ => None,
    }
}

/// The id of the patient a Reference object names on our server (its `type`, when given,
/// must be `Patient`).
pub fn patient_id<'a>(reference: &'a Value, bases: &[String]) -> Option<&'a str> {
    let obj = reference.as_object()?;
    match obj.get("type") {
        None => {}
        Some(Value::String(t)) if t == "Patient" => {}
        Some(_) => return None,
    }
    patient_id_of(obj.get("reference")?.as_str()?, bases)
}

/// The Reference elements through which `resource` may belong to a patient's
/// compartment, per its type's parameters and `opts` (for `Patient`: none, its `id`
/// decides; for non-member types: none).
pub fn patient_refs<'a>(resource: &'a Value, opts: &MembershipOptions) -> Vec<&'a Value> {
    let Some(rtype) = resource_type(resource) else {
        return Vec::new();
    };
    COMPILED
        .get(&rtype)
        .map(|exprs| {
            exprs
                .iter()
                .filter(|(role, _)| opts.counts(*role))
                .flat_map(|(_, e)| e.evaluate(resource))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `resource` is in the compartment of patient `patient` (see the module rules).
pub fn is_member(resource: &Value, patient: &str, opts: &MembershipOptions) -> bool {
    let Some(rtype) = resource_type(resource) else {
        return false;
    };
    if rtype == ResourceType::PATIENT {
        return resource.get("id").and_then(Value::as_str) == Some(patient);
    }
    if rtype == ResourceType::GROUP {
        return group_is_only(resource, patient, &opts.bases);
    }
    patient_refs(resource, opts)
        .into_iter()
        .any(|r| patient_id(r, &opts.bases) == Some(patient))
}

/// The compiled compartment parameters that decide membership of a `rtype` resource
/// under `opts` (none for `Patient` and `Group`, whose rules read `id` and `member`): the
/// Bundle filter parses only the top-level elements these read.
pub(crate) fn membership_exprs(
    rtype: ResourceType,
    opts: &MembershipOptions,
) -> impl Iterator<Item = &'static Expr> {
    let actor = opts.actor_membership;
    COMPILED
        .get(&rtype)
        .filter(|_| rtype != ResourceType::PATIENT && rtype != ResourceType::GROUP)
        .into_iter()
        .flatten()
        .filter(move |(role, _)| *role == Role::Subject || actor)
        .map(|(_, e)| e)
}

fn resource_type(resource: &Value) -> Option<ResourceType> {
    ResourceType::parse(resource.get("resourceType")?.as_str()?)
}

/// Group rule: at least one Patient member, and every member that is or may be a Patient
/// is `patient`.
fn group_is_only(group: &Value, patient: &str, bases: &[String]) -> bool {
    let Some(members) = group.get("member") else {
        return false;
    };
    let members: &[Value] = match members {
        Value::Array(m) => m,
        other => std::slice::from_ref(other),
    };
    let mut patients = 0usize;
    for member in members {
        let Some(entity) = member.get("entity") else {
            // A member without an entity names nobody we can check.
            return false;
        };
        match entity_kind(entity) {
            EntityKind::Other => {}
            EntityKind::MaybePatient => {
                if patient_id(entity, bases) != Some(patient) {
                    return false;
                }
                patients += 1;
            }
        }
    }
    patients > 0
}

enum EntityKind {
    /// Known to be something other than a Patient.
    Other,
    /// A Patient, or of a type we cannot tell.
    MaybePatient,
}

fn entity_kind(reference: &Value) -> EntityKind {
    let declared = reference.get("type").and_then(Value::as_str);
    let literal = reference
        .get("reference")
        .and_then(Value::as_str)
        .and_then(split_reference)
        .map(|(t, _)| t);
    match (declared, literal) {
        (Some(d), Some(l)) if d == l && d != "Patient" => EntityKind::Other,
        (None, Some(l)) if l != "Patient" => EntityKind::Other,
        (Some(d), None) if d != "Patient" && reference.get("reference").is_none() => {
            EntityKind::Other
        }
        _ => EntityKind::MaybePatient,
    }
}

/// Every Reference in `resource` (contained resources included) that points, or may
/// point, at a Patient: its literal reference has type Patient (any base, any version),
/// its `type` is Patient, or it is `#id` of a contained Patient.
pub fn patient_references(resource: &Value) -> Vec<&Value> {
    let contained_patients: Vec<&str> = resource
        .get("contained")
        .and_then(Value::as_array)
        .map(|c| {
            c.iter()
                .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("Patient"))
                .filter_map(|r| r.get("id").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut stack = vec![resource];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(obj) => {
                let declared_patient = obj.get("type").and_then(Value::as_str) == Some("Patient");
                let literal = obj.get("reference");
                let literal_patient = match literal {
                    Some(Value::String(r)) => {
                        matches!(split_reference(r), Some(("Patient", _)))
                            || r.strip_prefix('#')
                                .is_some_and(|id| contained_patients.contains(&id))
                            || (r.contains("Patient/") && !r.starts_with('#'))
                    }
                    // A non-string `reference` cannot be checked: treat as a Patient one.
                    Some(_) => true,
                    None => false,
                };
                if declared_patient || literal_patient {
                    out.push(v);
                }
                stack.extend(obj.values());
            }
            _ => {}
        }
    }
    out
}

/// Write check: every Patient reference in `resource` (contained resources included)
/// names `patient` on our server, and the resource, if it is a Patient, is `patient`.
pub fn all_patient_refs_are(resource: &Value, patient: &str, opts: &MembershipOptions) -> bool {
    if resource_type(resource) == Some(ResourceType::PATIENT)
        && resource.get("id").and_then(Value::as_str) != Some(patient)
    {
        return false;
    }
    patient_references(resource)
        .into_iter()
        .all(|r| patient_id(r, &opts.bases) == Some(patient))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "https://ehr.example/fhir";
    const PUBLIC: &str = "https://gw.example/r4/";

    fn opts(actor: bool) -> MembershipOptions {
        MembershipOptions::new(actor, [BASE, PUBLIC])
    }

    fn member(r: Value) -> bool {
        is_member(&r, "A", &opts(false))
    }

    #[test]
    fn reference_forms() {
        let o = opts(false);
        for (r, want) in [
            ("Patient/A", Some("A")),
            ("Patient/A/_history/2", Some("A")),
            ("https://ehr.example/fhir/Patient/A", Some("A")),
            ("https://gw.example/r4/Patient/A/_history/1", Some("A")),
            ("https://evil.example/fhir/Patient/A", None),
            ("https://ehr.example/fhirX/Patient/A", None),
            ("https://ehr.example/Patient/A", None),
            ("#A", None),
            ("urn:uuid:A", None),
            ("Patient/A?x", None),
            ("Patient/", None),
            ("Group/A", None),
            ("Patient/A/extra", None),
        ] {
            assert_eq!(patient_id_of(r, &o.bases), want, "{r}");
        }
        assert_eq!(
            patient_id(
                &json!({"type": "Patient", "identifier": {"value": "A"}}),
                &o.bases
            ),
            None
        );
        assert_eq!(
            patient_id(
                &json!({"type": "Group", "reference": "Patient/A"}),
                &o.bases
            ),
            None
        );
    }

    #[test]
    fn observation_subject_vs_performer() {
        let obs = |s: &str, p: &str| {
            json!({"resourceType": "Observation", "subject": {"reference": s},
                   "performer": [{"reference": "Practitioner/x"}, {"reference": p}]})
        };
        assert!(member(obs("Patient/A", "Patient/B")));
        assert!(!member(obs("Patient/B", "Patient/A")));
        assert!(is_member(&obs("Patient/B", "Patient/A"), "A", &opts(true)));
        assert!(!member(json!({"resourceType": "Observation"})));
        assert!(!member(
            json!({"resourceType": "Observation", "subject": {"reference": "Group/A"}})
        ));
        assert!(!member(json!({"subject": {"reference": "Patient/A"}})));
        assert!(!member(
            json!({"resourceType": "Nope", "subject": {"reference": "Patient/A"}})
        ));
    }

    #[test]
    fn quirks_of_the_definition() {
        // AllergyIntolerance: patient is the subject; asserter/recorder are actors.
        let ai = |p: &str, a: &str| {
            json!({"resourceType": "AllergyIntolerance", "patient": {"reference": p},
                   "asserter": {"reference": a}})
        };
        assert!(member(ai("Patient/A", "Patient/B")));
        assert!(!member(ai("Patient/B", "Patient/A")));
        assert!(is_member(&ai("Patient/B", "Patient/A"), "A", &opts(true)));
        // Provenance: only a Patient target.
        let prov = |t: &str| json!({"resourceType": "Provenance", "target": [{"reference": t}]});
        assert!(member(prov("Patient/A")));
        assert!(!member(prov("Observation/o1")));
        // Appointment: participant.actor (an actor-coded param named `actor` ⇒ subject role).
        let appt = json!({"resourceType": "Appointment", "participant": [
            {"actor": {"reference": "Practitioner/p"}}, {"actor": {"reference": "Patient/A"}}]});
        assert!(member(appt));
        // SupplyRequest: subject = deliverTo.
        let sr = |k: &str| json!({"resourceType": "SupplyRequest", k: {"reference": "Patient/A"}});
        assert!(member(sr("deliverTo")));
        assert!(!member(sr("subject")));
        // AuditEvent: Patient agents or entities.
        let ae = json!({"resourceType": "AuditEvent", "agent": [{"who": {"reference": "Practitioner/p"}}],
                        "entity": [{"what": {"reference": "Patient/A"}}]});
        assert!(member(ae));
    }

    #[test]
    fn base_contained_versioned_identifier_forms() {
        let obs = |subject: Value| json!({"resourceType": "Observation", "subject": subject});
        assert!(member(obs(
            json!({"reference": "https://ehr.example/fhir/Patient/A"})
        )));
        assert!(member(obs(
            json!({"reference": "https://gw.example/r4/Patient/A"})
        )));
        assert!(!member(obs(
            json!({"reference": "https://evil.example/fhir/Patient/A"})
        )));
        assert!(member(obs(json!({"reference": "Patient/A/_history/7"}))));
        assert!(!member(obs(json!({"reference": "#A"}))));
        assert!(!member(obs(
            json!({"type": "Patient", "identifier": {"value": "A"}})
        )));
        assert!(!member(obs(json!({"reference": ["Patient/A"]}))));
        assert!(!member(obs(json!("Patient/A"))));
    }

    #[test]
    fn patient_and_group() {
        assert!(member(json!({"resourceType": "Patient", "id": "A"})));
        assert!(!member(json!({"resourceType": "Patient", "id": "B",
            "link": [{"other": {"reference": "Patient/A"}, "type": "seealso"}]})));
        assert!(!member(json!({"resourceType": "Patient"})));
        let group = |entities: Value| json!({"resourceType": "Group", "member": entities});
        let e = |r: &str| json!({"entity": {"reference": r}});
        assert!(member(group(json!([e("Patient/A")]))));
        assert!(member(group(json!([e("Patient/A"), e("Device/d")]))));
        assert!(!member(group(json!([e("Patient/A"), e("Patient/B")]))));
        assert!(!member(group(json!([e("Device/d")]))));
        assert!(!member(group(json!([]))));
        assert!(!member(json!({"resourceType": "Group"})));
        assert!(!member(group(json!([e("Patient/A"), e("#x")]))));
        assert!(!member(group(
            json!([e("Patient/A"), {"entity": {"identifier": {"value": "B"}}}])
        )));
        assert!(!member(group(json!([e("Patient/A"), {"period": {}}]))));
        assert!(member(group(
            json!([e("Patient/A"), {"entity": {"type": "Device", "identifier": {"value": "d"}}}])
        )));
    }

    #[test]
    fn write_check_walks_every_reference() {
        let o = opts(false);
        let ok = json!({"resourceType": "Observation", "subject": {"reference": "Patient/A"},
            "performer": [{"reference": "Practitioner/p"}],
            "contained": [{"resourceType": "Provenance", "target": [{"reference": "Patient/A"}]}]});
        assert!(all_patient_refs_are(&ok, "A", &o));
        let contained_b = json!({"resourceType": "Observation", "subject": {"reference": "Patient/A"},
            "contained": [{"resourceType": "Provenance", "target": [{"reference": "Patient/B"}]}]});
        assert!(!all_patient_refs_are(&contained_b, "A", &o));
        assert_eq!(patient_references(&contained_b).len(), 2);
        for bad in [
            json!({"reference": "https://evil.example/Patient/A"}),
            json!({"type": "Patient", "identifier": {"value": "A"}}),
            json!({"reference": "Patient/B/_history/1"}),
            json!({"reference": 5}),
            json!({"reference": "Patient/A", "type": "Practitioner"}),
            json!({"reference": "#p"}),
        ] {
            let r = json!({"resourceType": "Observation", "subject": {"reference": "Patient/A"},
                "extension": [{"url": "x", "valueReference": bad}],
                "contained": [{"resourceType": "Patient", "id": "p"}]});
            assert!(!all_patient_refs_are(&r, "A", &o), "{r}");
        }
        let pat_b = json!({"resourceType": "Patient", "id": "B"});
        assert!(!all_patient_refs_are(&pat_b, "A", &o));
        let linked = json!({"resourceType": "Patient", "id": "A", "link": [{"other": {"reference": "Patient/B"}}]});
        assert!(!all_patient_refs_are(&linked, "A", &o));
    }

    #[test]
    fn top_level_keys_read() {
        let reads = |actor: bool, t: ResourceType, key: &str| {
            membership_exprs(t, &opts(actor)).any(|e| e.reads_top_level(key))
        };
        assert!(reads(false, ResourceType::OBSERVATION, "subject"));
        assert!(!reads(false, ResourceType::OBSERVATION, "performer"));
        assert!(reads(true, ResourceType::OBSERVATION, "performer"));
        assert!(!reads(false, ResourceType::PATIENT, "id"));
        assert!(!reads(false, ResourceType::PRACTITIONER, "id"));
    }

    #[test]
    fn all_member_types_have_a_compiled_rule() {
        for t in ResourceType::all().filter(|t| crate::compartment::definition::is_member_type(*t))
        {
            let want = rule(t).map(|r| r.params.len()).unwrap_or(0);
            assert_eq!(COMPILED.get(&t).map(Vec::len), Some(want), "{t}");
        }
    }
}
