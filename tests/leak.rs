//! The randomized leak test (Compartment issue): a few thousand requests generated from a
//! grammar (types, ids of A and of others, search parameters with `_include`/`_revinclude`
//! and their `:iterate` forms, chains, `_has`, compartment paths, `$everything`, paging,
//! encoding tricks, methods, scopes incl. granular and invalid ones, writes), sent through
//! the real smartgate binary in front of the real test bed with a token for patient A.
//!
//! Every response is judged by an oracle that knows only the data set's ground truth
//! (`manifest.json`) and a deliberately tiny, independent reading of the scope sets used
//! here — never smartgate's own code:
//! - every resource in a 2xx body (the resource, or each Bundle entry: matches, includes,
//!   history versions, batch answers) has a type granted for the interaction's letter
//!   (`r` for read/vread/instance history, `s` otherwise), matches the granular
//!   `category` restriction when that is all that grants it, and is A's: member types
//!   strictly (A is a patient the record is *about*), `Patient` only A, `Group` only when
//!   every member is A, `Binary` only when related to A, `Device` never another patient's,
//!   a nested `Bundle` never;
//! - `total`, when present, equals the matches when there is no next page and never
//!   exceeds what A may see; every link and the whole body name the proxy, never the
//!   upstream base;
//! - errors are OperationOutcomes and name no other patient the request did not name;
//!   "not yours" and "does not exist" answer the same;
//! - writes to other patients' data never succeed and never change it upstream;
//! - no false denials: A's own data on the normal app paths (`T?patient=A`, `T/id`,
//!   `Patient/A`, `Patient/A/T`, `Patient/A/$everything`, paging) comes back complete.
//!
//! `SMARTGATE_LEAK_SEED` replays a run (the seed is printed first),
//! `SMARTGATE_LEAK_REQUESTS` sets the number of generated requests (default 2,500),
//! `SMARTGATE_LEAK_THREADS` the concurrency (default 4) and `SMARTGATE_LEAK_PROXY_YAML`
//! appends smartgate configuration (to see the oracle catch a leaky one).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use common::rng::Rng;
use common::{Proxy, Resp, bed, http};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Ground truth

struct Rec {
    rtype: String,
    patients: Vec<String>,
    related: Vec<String>,
    categories: Vec<String>,
}

struct Truth {
    res: BTreeMap<String, Rec>,
    by_type: BTreeMap<String, Vec<String>>,
    patients: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Truth {
    fn load() -> Truth {
        let m = bed().manifest();
        let mut res = BTreeMap::new();
        let mut by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in m["resources"].as_object().expect("manifest resources") {
            let rtype = v["type"].as_str().expect("type").to_owned();
            by_type.entry(rtype.clone()).or_default().push(k.clone());
            res.insert(
                k.clone(),
                Rec {
                    rtype,
                    patients: strings(&v["patients"]),
                    related: strings(&v["related_patients"]),
                    categories: strings(&v["categories"]),
                },
            );
        }
        let patients = by_type["Patient"]
            .iter()
            .map(|k| k["Patient/".len()..].to_owned())
            .collect();
        Truth {
            res,
            by_type,
            patients,
        }
    }

    /// The resources of `rtype` that `T?patient=A` selects upstream (the subject-like
    /// parameter; Device by its `patient`).
    fn selected_by_patient(&self, rtype: &str, a: &str) -> Vec<&str> {
        self.by_type[rtype]
            .iter()
            .filter(|k| {
                let r = &self.res[*k];
                if rtype == "Device" {
                    r.related.iter().any(|p| p == a)
                } else {
                    r.patients.iter().any(|p| p == a)
                }
            })
            .map(String::as_str)
            .collect()
    }
}

/// R4 Patient-compartment member types (those that occur in the data set, and the rest of
/// the definition for safety).
const MEMBERS: &[&str] = &[
    "Account",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "BodyStructure",
    "CarePlan",
    "CareTeam",
    "ChargeItem",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "Communication",
    "CommunicationRequest",
    "Composition",
    "Condition",
    "Consent",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "Encounter",
    "EnrollmentRequest",
    "EpisodeOfCare",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "Group",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "Invoice",
    "List",
    "MeasureReport",
    "Media",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "MolecularSequence",
    "NutritionOrder",
    "Observation",
    "Patient",
    "Person",
    "Procedure",
    "Provenance",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchSubject",
    "RiskAssessment",
    "Schedule",
    "ServiceRequest",
    "Specimen",
    "SupplyDelivery",
    "SupplyRequest",
    "VisionPrescription",
];

// ---------------------------------------------------------------------------------------
// Scope sets and the oracle's own reading of them

const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

/// One thing a scope set grants: a type (`*` = any), letters, optional category.
struct G(&'static str, &'static str, Option<&'static str>);

struct ScopeCase {
    scope: &'static str,
    /// The oracle's reading: what `scope` grants (invalid scopes grant nothing).
    grants: &'static [G],
    /// Mint without a `patient` claim: patient/ scopes then grant nothing.
    no_patient: bool,
}

const SCOPES: &[ScopeCase] = &[
    ScopeCase {
        scope: "launch/patient patient/*.rs",
        grants: &[G("*", "rs", None)],
        no_patient: false,
    },
    ScopeCase {
        scope: "patient/*.read",
        grants: &[G("*", "rs", None)],
        no_patient: false,
    },
    ScopeCase {
        scope: "patient/Observation.rs",
        grants: &[G("Observation", "rs", None)],
        no_patient: false,
    },
    ScopeCase {
        scope: "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        grants: &[G("Observation", "rs", Some("laboratory"))],
        no_patient: false,
    },
    ScopeCase {
        scope: "patient/Observation.r patient/Patient.rs",
        grants: &[G("Observation", "r", None), G("Patient", "rs", None)],
        no_patient: false,
    },
    ScopeCase {
        scope: "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory patient/Observation.r patient/Patient.rs",
        grants: &[
            G("Observation", "rs", Some("laboratory")),
            G("Observation", "r", None),
            G("Patient", "rs", None),
        ],
        no_patient: false,
    },
    ScopeCase {
        scope: "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs patient/Patient.r",
        grants: &[
            G("Observation", "rs", Some("laboratory")),
            G("Observation", "rs", Some("vital-signs")),
            G("Patient", "r", None),
        ],
        no_patient: false,
    },
    ScopeCase {
        scope: "patient/Patient.rs patient/Observation.rs patient/Practitioner.rs patient/Medication.rs patient/MedicationRequest.rs patient/Provenance.rs",
        grants: &[
            G("Patient", "rs", None),
            G("Observation", "rs", None),
            G("Practitioner", "rs", None),
            G("Medication", "rs", None),
            G("MedicationRequest", "rs", None),
            G("Provenance", "rs", None),
        ],
        no_patient: false,
    },
    ScopeCase {
        scope: "patient/Patient.r patient/Group.rs patient/Device.rs patient/Binary.r patient/DocumentReference.rs patient/Coverage.rs patient/AllergyIntolerance.rs patient/Condition.rs",
        grants: &[
            G("Patient", "r", None),
            G("Group", "rs", None),
            G("Device", "rs", None),
            G("Binary", "r", None),
            G("DocumentReference", "rs", None),
            G("Coverage", "rs", None),
            G("AllergyIntolerance", "rs", None),
            G("Condition", "rs", None),
        ],
        no_patient: false,
    },
    ScopeCase {
        // Letters out of order, wrong case, empty suffix, v1 with a query: all grant nothing.
        scope: "patient/Observation.sr patient/observation.rs patient/Observation.rs? patient/Patient.read?x=1 patient/Encounter.rs",
        grants: &[G("Encounter", "rs", None)],
        no_patient: false,
    },
    ScopeCase {
        scope: "launch/patient openid offline_access",
        grants: &[],
        no_patient: false,
    },
    ScopeCase {
        scope: "patient/*.rs",
        grants: &[],
        no_patient: true,
    },
    ScopeCase {
        scope: "patient/*.rs patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        grants: &[
            G("*", "rs", None),
            G("Observation", "rs", Some("laboratory")),
        ],
        no_patient: false,
    },
    ScopeCase {
        scope: "patient/*.cruds",
        grants: &[G("*", "cruds", None)],
        no_patient: false,
    },
    ScopeCase {
        scope: "patient/Observation.* patient/Patient.read",
        grants: &[G("Observation", "cruds", None), G("Patient", "rs", None)],
        no_patient: false,
    },
];

impl ScopeCase {
    /// The grants for `rtype` and `letter`: `None` = not granted, `Some(None)` = plain,
    /// `Some(Some(cats))` = only for these categories.
    fn grant(&self, rtype: &str, letter: char) -> Option<Option<Vec<&'static str>>> {
        let mut cats = Vec::new();
        let mut any = false;
        for G(t, letters, cat) in self.grants {
            if (*t == "*" || *t == rtype) && letters.contains(letter) {
                any = true;
                match cat {
                    None => return Some(None),
                    Some(c) => cats.push(*c),
                }
            }
        }
        any.then_some(Some(cats))
    }

    fn plain(&self, rtype: &str, letter: char) -> bool {
        matches!(self.grant(rtype, letter), Some(None))
    }

    fn writes(&self) -> bool {
        self.grants.iter().any(|G(_, l, _)| l.contains('d'))
    }
}

/// The oracle: may resource `key` (of type `rtype`) reach A under `sc` for `letter`?
fn judge(
    truth: &Truth,
    key: &str,
    rtype: &str,
    a: &str,
    letter: char,
    sc: &ScopeCase,
) -> Result<(), String> {
    if rtype == "OperationOutcome" {
        return Ok(());
    }
    if rtype == "Bundle" {
        return Err("a nested Bundle".into());
    }
    let Some(rec) = truth.res.get(key) else {
        return Err("not in the data set".into());
    };
    if rec.rtype != rtype {
        return Err(format!("type {rtype} but the data set says {}", rec.rtype));
    }
    match sc.grant(rtype, letter) {
        None => return Err(format!("{rtype} is not granted for '{letter}'")),
        Some(Some(cats)) if !cats.iter().any(|c| rec.categories.iter().any(|rc| rc == c)) => {
            return Err(format!(
                "categories {:?} match no granted category {cats:?}",
                rec.categories
            ));
        }
        Some(_) => {}
    }
    if sc.no_patient {
        return Err("the token has no patient".into());
    }
    let id = &key[rtype.len() + 1..];
    let ok = match rtype {
        "Patient" => id == a,
        "Group" => !rec.patients.is_empty() && rec.patients.iter().all(|p| p == a),
        t if MEMBERS.contains(&t) => rec.patients.iter().any(|p| p == a),
        "Binary" => rec.related.iter().chain(&rec.patients).any(|p| p == a),
        "Device" => rec.related.iter().all(|p| p == a),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "outside {a}'s compartment (patients {:?}, related {:?})",
            rec.patients, rec.related
        ))
    }
}

fn visible(truth: &Truth, key: &str, a: &str, letter: char, sc: &ScopeCase) -> bool {
    let rtype = key.split('/').next().unwrap_or("");
    judge(truth, key, rtype, a, letter, sc).is_ok()
}

// ---------------------------------------------------------------------------------------
// Requests

#[derive(Clone, Debug)]
enum Expect {
    /// Only the universal oracle.
    Any,
    /// Must not succeed.
    Deny,
    /// Must not succeed, and must answer exactly like `target` (an id that does not exist).
    DenyLike(String),
    /// 200 with exactly these `match` entries (all pages followed).
    Exact(BTreeSet<String>),
    /// 200 with these among the entries (all pages followed).
    Contains(BTreeSet<String>),
    /// 200 with this one resource.
    Single(String),
    /// A write to someone else's `Type/id`: must fail and leave it unchanged upstream.
    WriteOther(String),
}

#[derive(Clone, Debug)]
struct Case {
    a: String,
    sc: usize,
    method: &'static str,
    target: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    /// The letter the response is judged by.
    letter: char,
    expect: Expect,
    /// Pages to follow (`next` links).
    pages: usize,
    /// Also send each next link with A's id swapped for another patient's.
    tamper: Option<String>,
}

/// Awkward patients first: they are the ones with cross-patient references.
const AWKWARD: &[&str] = &[
    "pt-03", "pt-05", "pt-09", "pt-12", "pt-13", "pt-20", "pt-21", "pt-01", "pt-02", "pt-04",
    "pt-08", "pt-22",
];

/// Patients whose data references A (or that A's data references).
fn neighbour(a: &str) -> Option<&'static str> {
    Some(match a {
        "pt-03" => "pt-04",
        "pt-04" => "pt-03",
        "pt-05" => "pt-06",
        "pt-06" | "pt-07" => "pt-05",
        "pt-09" => "pt-10",
        "pt-10" => "pt-09",
        "pt-12" => "pt-13",
        "pt-13" => "pt-12",
        "pt-18" => "pt-19",
        "pt-19" => "pt-18",
        "pt-20" => "pt-21",
        "pt-21" => "pt-20",
        "pt-22" => "pt-23",
        "pt-23" => "pt-22",
        "pt-01" => "pt-02",
        "pt-02" => "pt-01",
        _ => return None,
    })
}

/// Types searched by `patient` (hfs supports it for each).
const BY_PATIENT: &[&str] = &[
    "Observation",
    "Condition",
    "Encounter",
    "MedicationRequest",
    "AllergyIntolerance",
    "Coverage",
    "DiagnosticReport",
    "DocumentReference",
    "Immunization",
    "Procedure",
    "Provenance",
    "Device",
];

const INCLUDES: &[(&str, &str)] = &[
    ("Observation", "_include=Observation:performer"),
    ("Observation", "_include=Observation:subject"),
    ("Observation", "_include=Observation:patient"),
    ("Observation", "_include=Observation:encounter"),
    ("Observation", "_revinclude=Provenance:target"),
    ("Observation", "_revinclude:iterate=Provenance:target"),
    ("Observation", "_include:iterate=Observation:performer"),
    ("Observation", "_include=*"),
    ("MedicationRequest", "_include=MedicationRequest:medication"),
    ("MedicationRequest", "_include=MedicationRequest:requester"),
    ("MedicationRequest", "_include=MedicationRequest:subject"),
    ("Patient", "_revinclude=Observation:performer"),
    ("Patient", "_revinclude=Observation:subject"),
    ("Patient", "_revinclude=Provenance:target"),
    ("Patient", "_revinclude:iterate=Provenance:target"),
    ("Patient", "_revinclude=Group:member"),
    ("Patient", "_revinclude=Coverage:subscriber"),
    ("Patient", "_revinclude=AllergyIntolerance:asserter"),
    ("Patient", "_revinclude=Condition:asserter"),
    ("Patient", "_revinclude=DocumentReference:author"),
    ("Patient", "_include=Patient:link"),
    ("Patient", "_revinclude=Patient:link"),
    ("Patient", "_include=Patient:general-practitioner"),
    ("Patient", "_revinclude=Device:patient"),
    ("Provenance", "_include=Provenance:target"),
    ("Provenance", "_include:iterate=Provenance:target"),
    ("Coverage", "_include=Coverage:subscriber"),
    ("Coverage", "_include=Coverage:policy-holder"),
    ("Coverage", "_include=Coverage:beneficiary"),
    ("AllergyIntolerance", "_include=AllergyIntolerance:asserter"),
    ("AllergyIntolerance", "_include=AllergyIntolerance:recorder"),
    ("Condition", "_include=Condition:asserter"),
    ("DocumentReference", "_include=DocumentReference:author"),
    ("DocumentReference", "_include=DocumentReference:subject"),
    ("Encounter", "_revinclude=Observation:encounter"),
    ("Encounter", "_include=Encounter:subject"),
    ("Group", "_include=Group:member"),
    ("Device", "_include=Device:patient"),
    ("Immunization", "_include=Immunization:patient"),
];

/// Query values: `|` and spaces percent-encoded, everything else as written.
fn q(v: &str) -> String {
    v.replace('|', "%7C").replace(' ', "%20")
}

struct Gen<'t> {
    truth: &'t Truth,
    rng: Rng,
    proxy_base: String,
}

fn mk(
    a: &str,
    sc: usize,
    method: &'static str,
    target: String,
    letter: char,
    expect: Expect,
) -> Case {
    Case {
        a: a.to_owned(),
        sc,
        method,
        target,
        body: Vec::new(),
        content_type: None,
        letter,
        expect,
        pages: 0,
        tamper: None,
    }
}

impl Gen<'_> {
    fn other(&mut self, a: &str) -> String {
        if self.rng.chance(50)
            && let Some(n) = neighbour(a)
        {
            return n.to_owned();
        }
        loop {
            let p = self.rng.pick(&self.truth.patients).clone();
            if p != a {
                return p;
            }
        }
    }

    /// A resource key of `rtype` that is A's (when `own`) or someone else's.
    fn key_of(&mut self, rtype: &str, a: &str, own: bool) -> Option<String> {
        let keys: Vec<&String> = self
            .truth
            .by_type
            .get(rtype)?
            .iter()
            .filter(|k| {
                let r = &self.truth.res[*k];
                let mine = r.patients.iter().chain(&r.related).any(|p| p == a);
                mine == own
            })
            .collect();
        if keys.is_empty() {
            return None;
        }
        Some(self.rng.pick(&keys).to_string())
    }

    fn any_type(&mut self) -> String {
        let types: Vec<&String> = self.truth.by_type.keys().collect();
        self.rng.pick(&types).to_string()
    }

    /// A patient reference value for `x` in one of its spellings.
    fn patient_value(&mut self, x: &str) -> String {
        match self.rng.below(4) {
            0 => x.to_owned(),
            1 => format!("Patient/{x}"),
            2 => format!("Patient%2F{x}"),
            _ => format!("{}/Patient/{x}", self.proxy_base),
        }
    }

    fn extras(&mut self, rtype: &str) -> String {
        let mut out = String::new();
        let n = self.rng.below(3);
        for _ in 0..n {
            let incs: Vec<&str> = INCLUDES
                .iter()
                .filter(|(t, _)| *t == rtype)
                .map(|(_, p)| *p)
                .collect();
            let part = match self.rng.below(9) {
                0 | 1 if !incs.is_empty() => self.rng.pick(&incs).to_string(),
                2 => "_elements=id".into(),
                3 => "_summary=count".into(),
                4 => "_total=accurate".into(),
                5 => format!("_count={}", 1 + self.rng.below(7)),
                6 if rtype == "Observation" => format!(
                    "category={}",
                    q(self.rng.pick::<&str>(&[LAB, "vital-signs", "laboratory"]))
                ),
                7 => "_sort=-_lastUpdated".into(),
                _ => format!(
                    "_id={}",
                    self.rng
                        .pick(&["x", "pt-01", "obs-pt-02-0001", "grp-family"])
                ),
            };
            out.push('&');
            out.push_str(&part);
        }
        out
    }

    /// The normal app paths for A: they must succeed with exactly A's data.
    fn liveness(&mut self, a: &str, sci: usize) -> Vec<Case> {
        let sc = &SCOPES[sci];
        let t = self.truth;
        let mut out = Vec::new();
        let deny_unless = |ok: bool, e: Expect| if ok { e } else { Expect::Deny };
        let live = !sc.no_patient;
        // Patient/A
        let pk = format!("Patient/{a}");
        out.push(mk(
            a,
            sci,
            "GET",
            pk.clone(),
            'r',
            deny_unless(
                live && sc.grant("Patient", 'r').is_some(),
                Expect::Single(pk.clone()),
            ),
        ));
        out.push(mk(a, sci, "HEAD", pk.clone(), 'r', Expect::Any));
        // Patient (no parameters) and Patient?_id=A
        let one: BTreeSet<String> = [pk.clone()].into();
        let ps = live && sc.grant("Patient", 's').is_some();
        out.push(mk(
            a,
            sci,
            "GET",
            "Patient".into(),
            's',
            deny_unless(ps, Expect::Exact(one.clone())),
        ));
        out.push(mk(
            a,
            sci,
            "GET",
            format!("Patient?_id={a}"),
            's',
            deny_unless(ps, Expect::Exact(one)),
        ));
        // T?patient=A for every type, in several spellings, GET and POST _search, paged.
        for rtype in BY_PATIENT {
            let granted = live && sc.grant(rtype, 's').is_some();
            let expected: BTreeSet<String> = t
                .selected_by_patient(rtype, a)
                .into_iter()
                .filter(|k| visible(t, k, a, 's', sc))
                .map(str::to_owned)
                .collect();
            let spelled = if self.rng.chance(50) {
                a.to_owned()
            } else {
                format!("Patient/{a}")
            };
            out.push(mk(
                a,
                sci,
                "GET",
                format!("{rtype}?patient={spelled}&_count=1000"),
                's',
                deny_unless(granted, Expect::Exact(expected.clone())),
            ));
            if *rtype == "Observation" || self.rng.chance(30) {
                let mut c = mk(
                    a,
                    sci,
                    "GET",
                    format!("{rtype}?patient={a}&_count={}", 7 + self.rng.below(30)),
                    's',
                    deny_unless(granted, Expect::Exact(expected.clone())),
                );
                c.pages = 50;
                out.push(c);
                let mut c = mk(
                    a,
                    sci,
                    "POST",
                    format!("{rtype}/_search"),
                    's',
                    deny_unless(granted, Expect::Exact(expected.clone())),
                );
                c.body = format!("patient={a}&_count=1000").into_bytes();
                c.content_type = Some("application/x-www-form-urlencoded");
                out.push(c);
            }
            if rtype != &"Device" && rtype != &"Provenance" {
                let mut c = mk(
                    a,
                    sci,
                    "GET",
                    format!("Patient/{a}/{rtype}?_count=1000"),
                    's',
                    deny_unless(granted, Expect::Exact(expected.clone())),
                );
                c.pages = 50;
                out.push(c);
            }
            // T/id for some of A's own records.
            let own: Vec<&str> = t.selected_by_patient(rtype, a);
            for _ in 0..2 {
                if own.is_empty() {
                    break;
                }
                let k = self.rng.pick(&own).to_string();
                let readable = live && visible(t, &k, a, 'r', sc);
                out.push(mk(
                    a,
                    sci,
                    "GET",
                    k.clone(),
                    'r',
                    if readable {
                        Expect::Single(k.clone())
                    } else {
                        Expect::DenyLike(format!("{rtype}/no-such-id-{}", self.rng.below(1000)))
                    },
                ));
            }
        }
        // Observation with no patient parameter: pinned to A.
        if live && sc.grant("Observation", 's').is_some() {
            let expected: BTreeSet<String> = t.by_type["Observation"]
                .iter()
                .filter(|k| visible(t, k, a, 's', sc))
                .cloned()
                .collect();
            out.push(mk(
                a,
                sci,
                "GET",
                "Observation?_count=1000".into(),
                's',
                Expect::Exact(expected),
            ));
        }
        // $everything
        let everything = live && sc.plain("Patient", 'r') && sc.plain("Patient", 's');
        let expected: BTreeSet<String> = t
            .res
            .iter()
            .filter(|(k, r)| {
                r.rtype != "Device"
                    && r.rtype != "Binary"
                    && MEMBERS.contains(&r.rtype.as_str())
                    && r.patients.iter().any(|p| p == a)
                    && visible(t, k, a, 's', sc)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut c = mk(
            a,
            sci,
            "GET",
            format!("Patient/{a}/$everything"),
            's',
            deny_unless(everything, Expect::Exact(expected.clone())),
        );
        c.pages = 50;
        out.push(c);
        let mut c = mk(
            a,
            sci,
            "GET",
            format!("Patient/{a}/$everything?_count={}", 10 + self.rng.below(40)),
            's',
            deny_unless(everything, Expect::Exact(expected)),
        );
        c.pages = 50;
        c.tamper = Some(self.other(a));
        out.push(c);
        out
    }

    /// One random request from the grammar.
    fn random(&mut self, a: &str, sci: usize) -> Case {
        let sc = &SCOPES[sci];
        let live = !sc.no_patient;
        let b = self.other(a);
        let rtype = if self.rng.chance(40) {
            "Observation".to_owned()
        } else {
            self.any_type()
        };
        let t = self.truth;
        match self.rng.below(30) {
            // Read of someone else's resource: indistinguishable from a missing one.
            0..=3 => {
                let Some(k) = self.key_of(&rtype, a, false) else {
                    return self.random(a, sci);
                };
                let missing = format!("{rtype}/no-such-id-{}", self.rng.below(1000));
                let expect = if visible(t, &k, a, 'r', sc) {
                    Expect::Any
                } else {
                    Expect::DenyLike(missing)
                };
                let method = if self.rng.chance(20) { "HEAD" } else { "GET" };
                mk(a, sci, method, k, 'r', expect)
            }
            // Read of A's own resource.
            4 | 5 => {
                let Some(k) = self.key_of(&rtype, a, true) else {
                    return self.random(a, sci);
                };
                let direct = rtype != "Binary" || sc.plain("*", 'r');
                let expect = if !live || !visible(t, &k, a, 'r', sc) {
                    Expect::Deny
                } else if direct {
                    Expect::Single(k.clone())
                } else {
                    Expect::Any
                };
                mk(a, sci, "GET", k, 'r', expect)
            }
            // vread and instance history, own or other.
            6 | 7 => {
                let own = self.rng.chance(50);
                let Some(k) = self.key_of(&rtype, a, own) else {
                    return self.random(a, sci);
                };
                let vis = live && visible(t, &k, a, 'r', sc);
                let direct = rtype != "Binary" || sc.plain("*", 'r');
                if self.rng.chance(50) {
                    let expect = match (vis, direct) {
                        (false, _) => Expect::Deny,
                        (true, true) => Expect::Single(k.clone()),
                        (true, false) => Expect::Any,
                    };
                    mk(a, sci, "GET", format!("{k}/_history/1"), 'r', expect)
                } else {
                    let expect = match (vis, direct) {
                        (false, _) => Expect::Any,
                        // Filtered Bundles drop Binaries that need a securityContext look-up.
                        (true, true) if rtype != "Binary" => Expect::Contains([k.clone()].into()),
                        (true, _) => Expect::Any,
                    };
                    mk(a, sci, "GET", format!("{k}/_history"), 'r', expect)
                }
            }
            // T?patient=X with X another patient, lists, several spellings.
            8..=11 => {
                let st = *self.rng.pick(BY_PATIENT);
                let value = match self.rng.below(6) {
                    0 => format!("{a},{b}"),
                    1 => format!("{b},{a}"),
                    2 => format!(
                        "{}&patient={}",
                        self.patient_value(a),
                        self.patient_value(&b)
                    ),
                    3 => format!(
                        "{}&subject={}",
                        self.patient_value(a),
                        self.patient_value(&b)
                    ),
                    _ => self.patient_value(&b),
                };
                let extras = self.extras(st);
                mk(
                    a,
                    sci,
                    "GET",
                    format!("{st}?patient={value}{extras}"),
                    's',
                    Expect::Any,
                )
            }
            // T?patient=A with includes and friends: filtered.
            12..=15 => {
                let st = if self.rng.chance(30) {
                    "Patient"
                } else {
                    *self.rng.pick(BY_PATIENT)
                };
                let base = if st == "Patient" {
                    format!("Patient?_id={a}")
                } else {
                    format!("{st}?patient={}", self.patient_value(a))
                };
                let extras = self.extras(st);
                let mut c = mk(a, sci, "GET", format!("{base}{extras}"), 's', Expect::Any);
                c.pages = 2;
                if self.rng.chance(50) {
                    c.tamper = Some(b.clone());
                }
                c
            }
            // No patient parameter at all, or another selector.
            16 | 17 => {
                let extras = self.extras(&rtype);
                let target = match self.rng.below(6) {
                    0 => rtype.to_string(),
                    1 => format!(
                        "{rtype}?_id={}",
                        self.key_of(&rtype, a, false)
                            .map(|k| k[rtype.len() + 1..].to_owned())
                            .unwrap_or_else(|| "x".into())
                    ),
                    2 => format!("Group?member={}", self.patient_value(&b)),
                    3 => format!("Patient?link={}", self.patient_value(&b)),
                    4 => format!("Patient?name={}", self.rng.pick(&["Ada", "a", "Smith"])),
                    _ => format!("Observation?performer={}", self.patient_value(&b)),
                };
                let sep = if target.contains('?') { "" } else { "?_x=" };
                let target = if extras.is_empty() {
                    target
                } else {
                    format!("{target}{sep}{extras}").replace("?_x=&", "?")
                };
                let mut c = mk(a, sci, "GET", target, 's', Expect::Any);
                c.pages = 1;
                c
            }
            // Side channels: _has and chains.
            18 => {
                let target = match self.rng.below(6) {
                    0 => format!("Patient?_has:Observation:patient:_id=obs-{b}-0001"),
                    1 => format!("Patient?_has:Observation:subject:category=laboratory&_id={a}"),
                    2 => format!("Observation?patient.name=Ada&patient={a}"),
                    3 => format!("Observation?subject:Patient={b}"),
                    4 => "Observation?subject:Patient.name=Ada".to_owned(),
                    _ => "Observation?patient:missing=true".to_owned(),
                };
                mk(a, sci, "GET", target, 's', Expect::Any)
            }
            // Compartment searches, own and others', and $everything of others.
            19 | 20 => {
                let x = if self.rng.chance(60) {
                    b.clone()
                } else {
                    a.to_owned()
                };
                let t2 = *self.rng.pick(&[
                    "Observation",
                    "*",
                    "Condition",
                    "AllergyIntolerance",
                    "Coverage",
                    "Group",
                    "Encounter",
                    "Provenance",
                    "DocumentReference",
                    "Device",
                    "Binary",
                    "Patient",
                ]);
                let target = match self.rng.below(4) {
                    0 if self.rng.chance(50) => format!("Patient/{x}/$everything"),
                    0 => format!(
                        "Patient/{x}/$everything?_type=Observation,Practitioner,Patient,Group,Provenance"
                    ),
                    1 => format!("Patient/{x}/{t2}?_count={}", 1 + self.rng.below(20)),
                    _ => format!("Patient/{x}/{t2}{}", self.extras(t2).replacen('&', "?", 1)),
                };
                let expect = if x != a && !target.ends_with("/Patient") {
                    Expect::Deny
                } else {
                    Expect::Any
                };
                let mut c = mk(a, sci, "GET", target, 's', expect);
                c.pages = 2;
                c
            }
            // Encoding tricks on paths and parameter names.
            21 | 22 => {
                let okey = self
                    .key_of("Observation", &b, true)
                    .unwrap_or_else(|| "Observation/obs-pt-02-0001".into());
                let oid = &okey["Observation/".len()..];
                let target = match self.rng.below(16) {
                    0 => format!("Patient%2F{b}"),
                    1 => format!("Patient/{b}%00"),
                    2 => format!("patient/{b}"),
                    3 => format!("Patient/./{b}"),
                    4 => format!("Patient/../Patient/{b}"),
                    5 => format!("Observation?pat%69ent={b}"),
                    6 => format!("Observation?patient={a}&pat%69ent={b}"),
                    7 => format!("Observation?patient=Patient%252F{b}"),
                    8 => format!("Patient/{b};x=1"),
                    9 => format!("Patient//{b}"),
                    10 => format!("Patient/{b}/"),
                    11 => format!("Observation/{oid}%2F_history"),
                    12 => format!("Observation?patient={a}%2C{b}"),
                    13 => format!("Observation?patient:Patient={b}"),
                    14 => format!("Observation?patient={a}&_format=xml"),
                    _ => format!("PATIENT/{b}"),
                };
                let letter = if target.contains('?') { 's' } else { 'r' };
                mk(a, sci, "GET", target, letter, Expect::Any)
            }
            // POST _search with the patient in the body, the URL, or both.
            23 | 24 => {
                let st = *self.rng.pick(BY_PATIENT);
                let (url_q, body) = match self.rng.below(4) {
                    0 => (String::new(), format!("patient={b}")),
                    1 => (format!("?patient={a}"), format!("patient={b}")),
                    2 => (format!("?patient={b}"), format!("_count=5&patient={a}")),
                    _ => (String::new(), format!("patient={a}{}", self.extras(st))),
                };
                let mut c = mk(
                    a,
                    sci,
                    "POST",
                    format!("{st}/_search{url_q}"),
                    's',
                    Expect::Any,
                );
                c.body = body.into_bytes();
                c.content_type = Some("application/x-www-form-urlencoded");
                c.pages = 1;
                c
            }
            // System search and history.
            25 => {
                let target = match self.rng.below(5) {
                    0 => format!("?_type=Observation,Patient&patient={b}"),
                    1 => "_history".into(),
                    2 => format!("{rtype}/_history"),
                    3 => format!("_search?_type=Observation&patient={a}"),
                    _ => format!("?_type=Observation&patient={a}"),
                };
                mk(a, sci, "GET", target, 's', Expect::Any)
            }
            // Batch of reads: own and others'.
            26 => {
                let mut entries = Vec::new();
                for _ in 0..(2 + self.rng.below(4)) {
                    let own = self.rng.chance(40);
                    let ty = if self.rng.chance(50) {
                        "Observation".to_owned()
                    } else {
                        self.any_type()
                    };
                    if let Some(k) = self
                        .key_of(&ty, if own { a } else { &b }, true)
                        .or_else(|| self.key_of(&ty, a, false))
                    {
                        entries.push(serde_json::json!({"request": {"method": "GET", "url": k}}));
                    }
                }
                if self.rng.chance(30) {
                    entries.push(serde_json::json!({"request": {"method": "GET", "url": format!("Observation?patient={b}")}}));
                }
                let bundle = serde_json::json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
                let mut c = mk(a, sci, "POST", String::new(), 'r', Expect::Any);
                c.body = serde_json::to_vec(&bundle).unwrap();
                c.content_type = Some("application/fhir+json");
                c
            }
            // Writes against other patients' data.
            _ => {
                let Some(k) = self
                    .key_of(&rtype, &b, true)
                    .or_else(|| self.key_of("Observation", &b, true))
                else {
                    return self.random(a, sci);
                };
                let (ty, id) = k.split_once('/').unwrap();
                let hijack = serde_json::json!({"resourceType": ty, "id": id, "status": "final",
                    "code": {"text": "x"}, "subject": {"reference": format!("Patient/{a}")}, "patient": {"reference": format!("Patient/{a}")}});
                let mut c = match self.rng.below(8) {
                    0 => mk(
                        a,
                        sci,
                        "DELETE",
                        k.clone(),
                        'r',
                        Expect::WriteOther(k.clone()),
                    ),
                    1 => {
                        let mut c =
                            mk(a, sci, "PUT", k.clone(), 'r', Expect::WriteOther(k.clone()));
                        c.body = serde_json::to_vec(&hijack).unwrap();
                        c.content_type = Some("application/fhir+json");
                        c
                    }
                    2 => {
                        let mut c = mk(
                            a,
                            sci,
                            "PATCH",
                            k.clone(),
                            'r',
                            Expect::WriteOther(k.clone()),
                        );
                        c.body = br#"[{"op":"add","path":"/language","value":"de"}]"#.to_vec();
                        c.content_type = Some("application/json-patch+json");
                        c
                    }
                    3 => mk(
                        a,
                        sci,
                        "DELETE",
                        format!("{ty}?_id={id}"),
                        'r',
                        Expect::WriteOther(k.clone()),
                    ),
                    5 => {
                        let mut c = mk(
                            a,
                            sci,
                            "PATCH",
                            format!("{ty}?_id={id}"),
                            'r',
                            Expect::WriteOther(k.clone()),
                        );
                        c.body = br#"[{"op":"add","path":"/language","value":"de"}]"#.to_vec();
                        c.content_type = Some("application/json-patch+json");
                        c
                    }
                    6 | 7 => {
                        // Writes inside a batch or transaction: each entry is decided alone.
                        let kind = if self.rng.chance(50) {
                            "batch"
                        } else {
                            "transaction"
                        };
                        let entry = match self.rng.below(3) {
                            0 => serde_json::json!({"request": {"method": "DELETE", "url": k}}),
                            1 => {
                                serde_json::json!({"request": {"method": "DELETE", "url": format!("{ty}?_id={id}")}})
                            }
                            _ => {
                                serde_json::json!({"resource": hijack, "request": {"method": "PUT", "url": k}})
                            }
                        };
                        let bundle = serde_json::json!({"resourceType": "Bundle", "type": kind, "entry": [entry]});
                        let mut c = mk(
                            a,
                            sci,
                            "POST",
                            String::new(),
                            'r',
                            Expect::WriteOther(k.clone()),
                        );
                        c.body = serde_json::to_vec(&bundle).unwrap();
                        c.content_type = Some("application/fhir+json");
                        c
                    }
                    _ => {
                        let body = serde_json::json!({"resourceType": "Observation", "status": "final",
                            "code": {"text": "planted"}, "subject": {"reference": format!("Patient/{b}")}});
                        let mut c = mk(a, sci, "POST", "Observation".into(), 'r', Expect::Deny);
                        c.body = serde_json::to_vec(&body).unwrap();
                        c.content_type = Some("application/fhir+json");
                        c
                    }
                };
                c.letter = 'r';
                c
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Running and judging

struct Run<'t> {
    proxy: &'t Proxy,
    truth: &'t Truth,
    upstream: String,
    seed: u64,
    tokens: Mutex<HashMap<(String, usize), String>>,
    failures: Mutex<Vec<String>>,
    sent: AtomicUsize,
}

impl Run<'_> {
    fn token(&self, a: &str, sc: usize) -> String {
        let key = (a.to_owned(), sc);
        if let Some(t) = self.tokens.lock().unwrap().get(&key) {
            return t.clone();
        }
        let s = &SCOPES[sc];
        let t = self.proxy.token(s.scope, (!s.no_patient).then_some(a));
        // Two threads may mint at once: keep the first, so that a paging link signed for
        // one token is always followed with that token.
        self.tokens.lock().unwrap().entry(key).or_insert(t).clone()
    }

    /// Sends the case's request with `target` (its own, or a missing-id twin).
    fn send(&self, c: &Case, target: &str) -> Resp {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let token = self.token(&c.a, c.sc);
        let mut h: Vec<(&str, &str)> = Vec::new();
        if let Some(ct) = c.content_type {
            h.push(("Content-Type", ct));
        }
        self.proxy.req(c.method, target, &token, &h, &c.body)
    }

    /// A paging link: always a plain GET.
    fn get(&self, c: &Case, target: &str) -> Resp {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.proxy.get(target, &self.token(&c.a, c.sc))
    }

    fn fail(&self, c: &Case, target: &str, what: String) {
        let msg = format!(
            "seed {} | {} /fhir/{} | A={} scopes=[{}]{} | {what}",
            self.seed,
            c.method,
            target,
            c.a,
            SCOPES[c.sc].scope,
            if c.body.is_empty() {
                String::new()
            } else {
                format!(" body={}", String::from_utf8_lossy(&c.body))
            },
        );
        self.failures.lock().unwrap().push(msg);
    }

    fn run(&self, c: &Case) {
        let resp = self.send(c, &c.target);
        let mut matches = BTreeSet::new();
        let mut all = BTreeSet::new();
        let (mut next, mut total) = self.judge_page(c, &c.target, &resp, &mut matches, &mut all);
        let mut pages = 0;
        while pages < c.pages
            && let Some(link) = next.take()
        {
            pages += 1;
            let Some(rel) = link.strip_prefix(&format!("{}/", self.proxy.base)) else {
                self.fail(
                    c,
                    &c.target,
                    format!("next link outside the proxy base: {link}"),
                );
                break;
            };
            if let Some(b) = &c.tamper {
                let forged = rel.replace(&c.a, b);
                if forged != rel {
                    let r = self.get(c, &forged);
                    self.judge(c, &forged, &r, &mut BTreeSet::new(), &mut BTreeSet::new());
                    if (200..300).contains(&r.status) && !entries(&r.json()).is_empty() {
                        self.fail(
                            c,
                            &forged,
                            format!("tampered paging link answered {} with entries", r.status),
                        );
                    }
                }
            }
            let r = self.get(c, rel);
            if r.status != 200 {
                self.fail(
                    c,
                    rel,
                    format!("next page answered {}: {:.300}", r.status, r.text()),
                );
                break;
            }
            (next, total) = self.judge_page(c, rel, &r, &mut matches, &mut all);
        }
        // On the last page, `total` must count exactly the matches of all pages.
        if next.is_none()
            && let Some(total) = total
            && total != matches.len()
        {
            self.fail(
                c,
                &c.target,
                format!(
                    "total {total} but {} matches on {} pages",
                    matches.len(),
                    pages + 1
                ),
            );
        }
        if next.is_some() && matches!(c.expect, Expect::Exact(_) | Expect::Contains(_)) {
            self.fail(c, &c.target, format!("more than {} pages", c.pages));
        }
        self.expect(c, &resp, &matches, &all);
    }

    /// The universal oracle on one response; returns the next-page link.
    fn judge(
        &self,
        c: &Case,
        target: &str,
        resp: &Resp,
        matches: &mut BTreeSet<String>,
        all: &mut BTreeSet<String>,
    ) -> Option<String> {
        self.judge_page(c, target, resp, matches, all).0
    }

    /// [`Self::judge`], also returning the page's `total` and its searchset-ness.
    fn judge_page(
        &self,
        c: &Case,
        target: &str,
        resp: &Resp,
        matches: &mut BTreeSet<String>,
        all: &mut BTreeSet<String>,
    ) -> (Option<String>, Option<usize>) {
        let sc = &SCOPES[c.sc];
        let text = resp.text();
        for (k, v) in &resp.headers {
            if v.contains(&self.upstream) {
                self.fail(c, target, format!("header {k} names the upstream: {v}"));
            }
        }
        if text.contains(&self.upstream) {
            self.fail(c, target, "the body names the upstream base".into());
        }
        if !(200..300).contains(&resp.status) {
            if c.method == "HEAD" || resp.status == 304 {
                return (None, None);
            }
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                self.fail(
                    c,
                    target,
                    format!("{} with a non-JSON body: {text:.200}", resp.status),
                );
                return (None, None);
            };
            if v["resourceType"] != "OperationOutcome" {
                self.fail(
                    c,
                    target,
                    format!("{} with a {} body", resp.status, v["resourceType"]),
                );
            }
            let asked = format!("{target} {}", String::from_utf8_lossy(&c.body));
            for p in &self.truth.patients {
                if *p != c.a && text.contains(p.as_str()) && !asked.contains(p.as_str()) {
                    self.fail(
                        c,
                        target,
                        format!("{} error names {p}: {text:.300}", resp.status),
                    );
                }
            }
            return (None, None);
        }
        if c.method == "HEAD" || text.is_empty() {
            return (None, None);
        }
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            self.fail(
                c,
                target,
                format!("{} with a non-JSON body: {text:.200}", resp.status),
            );
            return (None, None);
        };
        let check = |r: &Value, letter: char| {
            let (Some(rt), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str()) else {
                if r["resourceType"] != "OperationOutcome" {
                    self.fail(
                        c,
                        target,
                        format!("a resource without type/id: {:.200}", r.to_string()),
                    );
                }
                return;
            };
            let key = format!("{rt}/{id}");
            if let Err(why) = judge(self.truth, &key, rt, &c.a, letter, sc) {
                self.fail(c, target, format!("LEAK {key}: {why}"));
            }
        };
        if v["resourceType"] != "Bundle" {
            check(&v, c.letter);
            if let Some(id) = v["id"].as_str() {
                all.insert(format!("{}/{id}", v["resourceType"].as_str().unwrap_or("")));
            }
            return (None, None);
        }
        let batch = matches!(
            v["type"].as_str(),
            Some("batch-response" | "transaction-response")
        );
        for e in entries(&v) {
            let r = &e["resource"];
            if r.is_null() {
                if !batch {
                    self.fail(
                        c,
                        target,
                        format!("an entry without a resource: {:.200}", e.to_string()),
                    );
                }
                continue;
            }
            // Batch answers hold reads (r) and searches (nested Bundles, never allowed).
            check(r, if batch { 'r' } else { c.letter });
            if let (Some(rt), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str()) {
                let key = format!("{rt}/{id}");
                let mode = e["search"]["mode"].as_str();
                if mode == Some("match") || (mode.is_none() && rt != "OperationOutcome") {
                    matches.insert(key.clone());
                }
                all.insert(key);
            }
        }
        let mut next = None;
        for l in v["link"].as_array().into_iter().flatten() {
            let url = l["url"].as_str().unwrap_or("");
            if !url.starts_with(&format!("{}/", self.proxy.base)) && url != self.proxy.base {
                self.fail(
                    c,
                    target,
                    format!("link {} points outside the proxy: {url}", l["relation"]),
                );
            }
            if l["relation"] == "next" {
                next = Some(url.to_owned());
            }
        }
        let total = v["total"].as_u64().map(|t| t as usize);
        if let Some(total) = total {
            let bound = self
                .truth
                .res
                .keys()
                .filter(|k| visible(self.truth, k, &c.a, c.letter, sc))
                .count();
            if total > bound {
                self.fail(
                    c,
                    target,
                    format!("total {total} exceeds the {bound} resources A may see"),
                );
            }
        }
        (next, total.filter(|_| v["type"] == "searchset"))
    }

    fn expect(&self, c: &Case, resp: &Resp, matches: &BTreeSet<String>, all: &BTreeSet<String>) {
        let ok = (200..300).contains(&resp.status);
        match &c.expect {
            Expect::Any => {}
            Expect::Deny => {
                if ok {
                    self.fail(
                        c,
                        &c.target,
                        format!("expected a denial, got {}", resp.status),
                    );
                }
            }
            Expect::DenyLike(missing) => {
                if ok {
                    self.fail(
                        c,
                        &c.target,
                        format!("expected a denial, got {}", resp.status),
                    );
                }
                let m = self.send(c, missing);
                if m.status != resp.status || m.body != resp.body {
                    self.fail(
                        c,
                        &c.target,
                        format!(
                            "existence oracle: {} {:.200} vs missing id {} {:.200}",
                            resp.status,
                            resp.text(),
                            m.status,
                            m.text()
                        ),
                    );
                }
            }
            Expect::Exact(want) => {
                if resp.status != 200 {
                    self.fail(
                        c,
                        &c.target,
                        format!("FALSE DENIAL: {} {:.300}", resp.status, resp.text()),
                    );
                } else if matches != want {
                    let missing: Vec<_> = want.difference(matches).take(5).collect();
                    let extra: Vec<_> = matches.difference(want).take(5).collect();
                    self.fail(
                        c,
                        &c.target,
                        format!(
                            "expected {} matches, got {}: missing {missing:?}, extra {extra:?}",
                            want.len(),
                            matches.len()
                        ),
                    );
                }
            }
            Expect::Contains(want) => {
                if resp.status != 200 {
                    self.fail(
                        c,
                        &c.target,
                        format!("FALSE DENIAL: {} {:.300}", resp.status, resp.text()),
                    );
                } else if !want.is_subset(all) {
                    self.fail(
                        c,
                        &c.target,
                        format!("missing {:?}", want.difference(all).collect::<Vec<_>>()),
                    );
                }
            }
            Expect::Single(k) => {
                if resp.status != 200 {
                    self.fail(
                        c,
                        &c.target,
                        format!("FALSE DENIAL: {} {:.300}", resp.status, resp.text()),
                    );
                } else if c.method != "HEAD" && !all.contains(k) {
                    self.fail(c, &c.target, format!("expected {k}, got {all:?}"));
                }
            }
            Expect::WriteOther(k) => {
                // A conditional delete pinned to A matches nothing and may answer 2xx; a
                // batch answers 200 with the refusal inside.
                if ok && !c.target.contains('?') && !c.target.is_empty() {
                    self.fail(
                        c,
                        &c.target,
                        format!(
                            "LEAK: a write to another patient's {k} answered {}",
                            resp.status
                        ),
                    );
                }
                let up = http::send(
                    &common::authority(&self.upstream),
                    "GET",
                    &format!("/{k}"),
                    &[("Accept", "application/fhir+json")],
                    b"",
                )
                .unwrap();
                let version = serde_json::from_slice::<Value>(&up.body)
                    .ok()
                    .and_then(|v| v["meta"]["versionId"].as_str().map(str::to_owned));
                if up.status != 200 || version.as_deref() != Some("1") {
                    self.fail(
                        c,
                        &c.target,
                        format!(
                            "LEAK: {k} changed upstream: {} version {version:?}",
                            up.status
                        ),
                    );
                }
            }
        }
    }
}

fn entries(v: &Value) -> Vec<Value> {
    v["entry"].as_array().cloned().unwrap_or_default()
}

fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("SMARTGATE_LEAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
    })
}

#[test]
fn randomized_leak_test() {
    let seed = seed();
    println!("SMARTGATE_LEAK_SEED={seed}");
    eprintln!("SMARTGATE_LEAK_SEED={seed}");
    let n: usize = std::env::var("SMARTGATE_LEAK_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2500);
    let truth = Truth::load();
    // Extra smartgate YAML, to check that the oracle notices a leaky configuration
    // (e.g. `compartment: {actor_membership: true}` must fail this test).
    let proxy = Proxy::start(&std::env::var("SMARTGATE_LEAK_PROXY_YAML").unwrap_or_default());
    let upstream = bed().var("FHIR_BASE").trim_end_matches('/').to_owned();
    let mut g = Gen {
        truth: &truth,
        rng: Rng(seed),
        proxy_base: proxy.base.clone(),
    };

    // A handful of patients per run (awkward ones most often), every scope set for each.
    let mut cases = Vec::new();
    let mut patients: Vec<String> = Vec::new();
    while patients.len() < 6 {
        let p = if g.rng.chance(70) {
            g.rng.pick(AWKWARD).to_string()
        } else {
            g.rng.pick(&truth.patients).clone()
        };
        if !patients.contains(&p) {
            patients.push(p);
        }
    }
    // Liveness: the normal app paths for a sample of (A, scopes).
    for (i, a) in patients.iter().enumerate() {
        for sci in 0..SCOPES.len() {
            if i < 2 || g.rng.chance(25) {
                cases.extend(g.liveness(a, sci));
            }
        }
    }
    let live = cases.len();
    while cases.len() < live + n {
        let a = g.rng.pick(&patients).clone();
        let sci = g.rng.below(SCOPES.len());
        let c = g.random(&a, sci);
        if matches!(c.expect, Expect::WriteOther(_)) && !SCOPES[sci].writes() && g.rng.chance(70) {
            continue;
        }
        cases.push(c);
    }
    println!("patients {patients:?}: {live} liveness + {n} random requests");

    let run = Run {
        proxy: &proxy,
        truth: &truth,
        upstream,
        seed,
        tokens: Mutex::new(HashMap::new()),
        failures: Mutex::new(Vec::new()),
        sent: AtomicUsize::new(0),
    };
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let workers: usize = std::env::var("SMARTGATE_LEAK_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = cases.get(i) else { break };
                    run.run(c);
                }
            });
        }
    });
    let sent = run.sent.load(Ordering::Relaxed);
    println!(
        "{sent} requests sent in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let failures = run.failures.into_inner().unwrap();
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(20).collect();
        panic!(
            "{} failures (seed {seed}; replay with SMARTGATE_LEAK_SEED={seed}), first {}:\n{}",
            failures.len(),
            shown.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Regression: a conditional delete on a type the search cannot be confined to (Binary)
/// used to go upstream unpinned and delete another patient's Binary.
#[test]
fn conditional_writes_cannot_reach_other_patients_binaries() {
    let proxy = Proxy::start("");
    let token = proxy.token("patient/*.cruds", Some("pt-03"));
    let upstream = bed().var("FHIR_BASE").to_owned();
    for (method, target) in [
        ("DELETE", "Binary?_id=bin-doc-pt-05-2"),
        ("PATCH", "Binary?_id=bin-doc-pt-05-2"),
        ("DELETE", "Binary/bin-doc-pt-05-2"),
    ] {
        let r = proxy.req(
            method,
            target,
            &token,
            &[("Content-Type", "application/json-patch+json")],
            if method == "PATCH" {
                br#"[{"op":"add","path":"/contentType","value":"x"}]"#
            } else {
                b""
            },
        );
        assert!(
            !(200..300).contains(&r.status),
            "{method} {target}: {} {} {:?} {:?}",
            r.status,
            r.text(),
            r.headers,
            proxy.audit_lines()
        );
        let up = http::send(
            &common::authority(&upstream),
            "GET",
            "/Binary/bin-doc-pt-05-2",
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(
            up.status, 200,
            "{method} {target} changed the Binary upstream"
        );
    }
}
