//! The R4 Patient CompartmentDefinition, shipped as data (`src/data/`), reduced to what
//! enforcement needs: for each member type, its compartment parameters, their FHIRPath,
//! and whether the parameter names the patient the record is *about* or only an actor.
//!
//! Why the role split: the official definition puts an Observation of patient B into A's
//! compartment when A is its `performer`, an AllergyIntolerance of B when A `asserted` it,
//! and so on. A patient app acting for A must not see B's record just because A appears in
//! it, so by default only [`Role::Subject`] parameters make a resource a member; the
//! `compartment.actor_membership` setting opts into the official, wider reading.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Deserialize;

use crate::fhir::ResourceType;

/// How a compartment parameter relates the patient to the resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The patient the record is about (`subject`, `patient`, `beneficiary`, …).
    Subject,
    /// The patient only acted in it (`performer`, `author`, `asserter`, `link`, …).
    Actor,
}

/// One compartment parameter of a member type.
#[derive(Clone, Debug)]
pub struct CompartmentParam {
    /// The search parameter code, e.g. `subject`.
    pub code: String,
    /// Its FHIRPath in the R4 SearchParameter, restricted to this type (`Observation.subject`).
    pub path: String,
    /// Subject or actor.
    pub role: Role,
}

/// Compartment facts about one resource type.
#[derive(Clone, Debug)]
pub struct TypeRule {
    /// The compartment parameters (empty for `Patient`, whose membership is its own id).
    pub params: Vec<CompartmentParam>,
    /// The search parameter used to pin a type search to the patient (`patient` when the
    /// type has one, else its first subject parameter).
    pub narrowing_param: Option<String>,
}

/// Codes that name an actor rather than the subject of the record.
const ACTOR_CODES: &[&str] = &[
    "asserter",
    "attester",
    "author",
    "focus",
    "link",
    "participant",
    "payee",
    "payor",
    "performer",
    "policy-holder",
    "receiver",
    "recipient",
    "recorder",
    "requester",
    "sender",
    "source",
    "subscriber",
];

#[derive(Deserialize)]
struct ParamsFile {
    members: HashMap<String, HashMap<String, String>>,
}

/// Parsed `search-parameters-r4.json`.
#[derive(Deserialize)]
pub(crate) struct SearchParams {
    pub(crate) params: HashMap<String, HashMap<String, serde_json::Value>>,
}

static RULES: LazyLock<HashMap<ResourceType, TypeRule>> = LazyLock::new(load);

fn load() -> HashMap<ResourceType, TypeRule> {
    // The data is compiled in and checked by the tests below; a parse failure would leave
    // the table empty, which makes every member type a non-member (fail closed).
    let members: ParamsFile = serde_json::from_str(include_str!(
        "../data/patient-compartment-params.json"
    ))
    .unwrap_or(ParamsFile {
        members: HashMap::new(),
    });
    let search = search_params();
    let mut out = HashMap::new();
    for (tname, params) in members.members {
        let Some(rtype) = ResourceType::parse(&tname) else {
            continue;
        };
        let mut params: Vec<CompartmentParam> = params
            .into_iter()
            .map(|(code, path)| CompartmentParam {
                role: if ACTOR_CODES.contains(&code.as_str()) {
                    Role::Actor
                } else {
                    Role::Subject
                },
                code,
                path,
            })
            .collect();
        params.sort_by(|a, b| a.code.cmp(&b.code));
        let has_patient_param = search
            .params
            .get(&tname)
            .is_some_and(|p| p.contains_key("patient"));
        let narrowing_param = if rtype == ResourceType::PATIENT {
            Some("_id".to_owned())
        } else if has_patient_param {
            Some("patient".to_owned())
        } else {
            params
                .iter()
                .find(|p| p.role == Role::Subject)
                .map(|p| p.code.clone())
        };
        if rtype == ResourceType::PATIENT {
            // Patient.link pulls other patients in; membership of a Patient is its own id.
            params.clear();
        }
        out.insert(
            rtype,
            TypeRule {
                params,
                narrowing_param,
            },
        );
    }
    out
}

/// The R4 search parameters, `base -> code -> {type, expression, target}` (shared with
/// the granular-scope matcher).
pub(crate) fn search_params() -> &'static SearchParams {
    &SEARCH
}

static SEARCH: LazyLock<SearchParams> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../data/search-parameters-r4.json")).unwrap_or(
        SearchParams {
            params: HashMap::new(),
        },
    )
});

/// Compartment facts about `rtype`, or `None` when it is not a member of the Patient
/// compartment (Practitioner, Medication, Binary, …).
pub fn rule(rtype: ResourceType) -> Option<&'static TypeRule> {
    RULES.get(&rtype)
}

/// Whether `rtype` is a member type of the Patient compartment.
pub fn is_member_type(rtype: ResourceType) -> bool {
    RULES.contains_key(&rtype)
}

/// Whether `code` is a compartment parameter of `rtype` or its narrowing parameter: a
/// request that sets it names a patient and must name only the launch patient.
pub fn names_patient(rtype: ResourceType, code: &str) -> bool {
    rule(rtype).is_some_and(|r| {
        r.narrowing_param.as_deref() == Some(code) || r.params.iter().any(|p| p.code == code)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_loads() {
        let members = ResourceType::all().filter(|t| is_member_type(*t)).count();
        assert_eq!(members, 67);
        assert!(search_params().params.len() > 120);
    }

    #[test]
    fn observation_is_narrowed_by_patient_and_performer_is_an_actor() {
        let r = rule(ResourceType::OBSERVATION).unwrap();
        assert_eq!(r.narrowing_param.as_deref(), Some("patient"));
        let perf = r.params.iter().find(|p| p.code == "performer").unwrap();
        assert_eq!(perf.role, Role::Actor);
        let subj = r.params.iter().find(|p| p.code == "subject").unwrap();
        assert_eq!(subj.role, Role::Subject);
        assert_eq!(subj.path, "Observation.subject");
        assert!(names_patient(ResourceType::OBSERVATION, "subject"));
        assert!(names_patient(ResourceType::OBSERVATION, "patient"));
        assert!(!names_patient(ResourceType::OBSERVATION, "code"));
    }

    #[test]
    fn patient_is_pinned_by_id_and_practitioner_is_not_a_member() {
        let r = rule(ResourceType::PATIENT).unwrap();
        assert_eq!(r.narrowing_param.as_deref(), Some("_id"));
        assert!(r.params.is_empty());
        assert!(!is_member_type(ResourceType::PRACTITIONER));
        assert_eq!(
            rule(ResourceType::GROUP)
                .unwrap()
                .narrowing_param
                .as_deref(),
            Some("member")
        );
    }
}
