//! The randomized write-leak test: seeded random writes, each under a random grant minted by
//! the real authorization server, each sent through the real smartgate binary in front of
//! the real FHIR server, and each checked against the FHIR server's state read *directly*
//! afterwards: **no change outside the grant ever lands, and no change inside it is
//! refused.**
//!
//! Every case works on its own fresh resources, created directly upstream first with unique
//! ids and identifiers (its own two patients A and B, and the Observations, Conditions or
//! Patients it writes), so cases run concurrently without disturbing each other.
//!
//! Write shapes: create, conditional create (`If-None-Exist`), update, update-as-create,
//! conditional update (one match or none), JSON Patch, conditional patch, delete,
//! conditional delete, and batch and transaction Bundles of create / conditional create /
//! update / update-as-create / delete entries.
//!
//! Grants: `patient/` (with a launch patient A, or without one: then `patient/` grants
//! nothing), `user/` (with a `fhirUser`), `system/` (backend tokens only: no patient, no
//! fhirUser), v1 and v2 letters, write-only ones, granular `?category=` ones; types
//! Observation (vital-signs / laboratory), Condition (problem-list-item /
//! encounter-diagnosis), Patient and `*`.
//!
//! The oracle is a deliberately tiny reading of the scope grammar, independent of
//! smartgate's code. A write is allowed iff some context allows it on its own:
//! - letters: create `c`; update, update-as-create, patch `u`; delete `d`; conditional
//!   update/patch `u`+`s`; conditional delete `d`+`s` (v1 `read`=`rs`, `write`=`cud`,
//!   `*`=`cruds`), all within one context, on the type or `*`;
//! - `system/` counts only without patient and fhirUser; `patient/` only with a patient;
//! - `patient/`: the written resource (new body or patched result) and the current version
//!   are in A's compartment (subject A and no reference to another patient; `Patient`: only
//!   A itself, never created);
//! - granular: when every scope granting a letter is granular, the versions that letter
//!   judges (new body for `c`; new and current for `u`; current for `d`) match one single
//!   granting scope (so a move between categories needs one scope covering both);
//! - conditional update/patch/delete select 0 or 1 resource: with 1 it is judged as the
//!   plain write of that resource; with 0 an update is an update-as-create and a patch or
//!   delete changes nothing. One documented leniency: under `patient/`, when the single
//!   match is outside A's compartment and the strict reading refuses, the criteria pinned
//!   to A select nothing, so "as if no match" (judged by the `patient/` scopes alone) is
//!   also accepted — never a change to the match itself;
//! - batch: entries judged alone; transaction: one refused entry ⇒ nothing applied.
//!
//! Allowed ⇒ 2xx and the change is upstream; refused ⇒ non-2xx, an OperationOutcome, and
//! every touched resource unchanged (version and content) and nothing created. Also: no
//! response carries a resource the grant cannot read, no response names the upstream, and
//! allowed creates/updates carry `Location` (on the proxy's base) and `ETag`.
//!
//! `SMARTGATE_WRITE_LEAK_SEED` replays a run (the seed is printed first),
//! `SMARTGATE_WRITE_LEAK_WRITES` sets the number of cases (default 400),
//! `SMARTGATE_WRITE_LEAK_SHOW` how many failures of each kind are printed (default 8),
//! `SMARTGATE_WRITE_LEAK_THREADS` the concurrency (default 1: hfs on sqlite answers "database
//! table is locked" to concurrent writes, which would read as false refusals) and
//! `SMARTGATE_WRITE_LEAK_PROXY_YAML` appends smartgate configuration.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::rng::Rng;
use common::{Proxy, Resp, TokenReq, bed, enc, http};
use serde_json::{Value, json};

const WL_SYS: &str = "urn:smartgate:write-leak";
const OBS_CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const COND_CAT: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
const PRACTITIONER: &str = "Practitioner/pr-01";
/// Failure kinds counted in the summary.
const UNAUTHORIZED: &str = "UNAUTHORIZED CHANGE";
const FALSE_REFUSAL: &str = "FALSE REFUSAL";

// ---------------------------------------------------------------------------------------
// Grants

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ctx {
    Patient,
    User,
    System,
}

impl Ctx {
    fn name(self) -> &'static str {
        match self {
            Ctx::Patient => "patient",
            Ctx::User => "user",
            Ctx::System => "system",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RType {
    Observation,
    Condition,
    Patient,
}

impl RType {
    fn name(self) -> &'static str {
        match self {
            RType::Observation => "Observation",
            RType::Condition => "Condition",
            RType::Patient => "Patient",
        }
    }
    fn of(name: &str) -> Option<RType> {
        [RType::Observation, RType::Condition, RType::Patient]
            .into_iter()
            .find(|t| t.name() == name)
    }
    /// The category system and its two codes used here (none for Patient).
    fn categories(self) -> Option<(&'static str, [&'static str; 2])> {
        match self {
            RType::Observation => Some((OBS_CAT, ["vital-signs", "laboratory"])),
            RType::Condition => Some((COND_CAT, ["problem-list-item", "encounter-diagnosis"])),
            RType::Patient => None,
        }
    }
}

/// One scope, as generated (the oracle reads this, never smartgate's parser).
#[derive(Clone, Debug)]
struct Scope {
    ctx: Ctx,
    /// `None`: `*`.
    rtype: Option<RType>,
    /// As written: `read`, `write`, `*` (v1) or v2 letters.
    perms: String,
    /// `?category=system|code`.
    granular: Option<(&'static str, &'static str)>,
}

impl Scope {
    fn render(&self) -> String {
        let t = self.rtype.map_or("*", RType::name);
        let mut s = format!("{}/{t}.{}", self.ctx.name(), self.perms);
        if let Some((sys, code)) = self.granular {
            s.push_str(&format!("?category={sys}|{code}"));
        }
        s
    }
    fn letters(&self) -> &str {
        match self.perms.as_str() {
            "read" => "rs",
            "write" => "cud",
            "*" => "cruds",
            p => p,
        }
    }
    fn grants(&self, ctx: Ctx, t: RType, letter: char) -> bool {
        self.ctx == ctx && self.rtype.is_none_or(|r| r == t) && self.letters().contains(letter)
    }
    /// The resource carries the granular category coding.
    fn matches(&self, v: &Value) -> bool {
        self.granular
            .is_none_or(|(sys, code)| has_category(v, sys, code))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Launch patient A, no fhirUser.
    Patient,
    /// Launch patient A and a Practitioner fhirUser.
    PatientUser,
    /// A Practitioner fhirUser, no patient.
    User,
    /// Backend: no patient, no fhirUser.
    Backend,
    /// No patient, no fhirUser, and mostly `patient/` scopes (which then grant nothing).
    NoLaunch,
}

#[derive(Clone, Debug)]
struct Grant {
    kind: Kind,
    patient: Option<String>,
    fhir_user: Option<&'static str>,
    scopes: Vec<Scope>,
}

impl Grant {
    fn counts(&self, ctx: Ctx) -> bool {
        match ctx {
            Ctx::Patient => self.patient.is_some(),
            Ctx::User => true,
            Ctx::System => self.patient.is_none() && self.fhir_user.is_none(),
        }
    }
    fn scope_string(&self) -> String {
        self.scopes
            .iter()
            .map(Scope::render)
            .collect::<Vec<_>>()
            .join(" ")
    }
    fn describe(&self) -> String {
        format!(
            "{:?} patient={} fhirUser={} scopes=[{}]",
            self.kind,
            self.patient.as_deref().unwrap_or("-"),
            self.fhir_user.unwrap_or("-"),
            self.scope_string()
        )
    }
    fn granting(&self, ctx: Ctx, t: RType, letter: char) -> Vec<&Scope> {
        self.scopes
            .iter()
            .filter(|s| s.grants(ctx, t, letter))
            .collect()
    }
    /// `s` is granted on `t` in a counting context only through granular scopes: the
    /// criteria of a conditional write would then be narrowed by category, which this
    /// oracle does not model (such cases are not generated).
    fn granular_search_only(&self, t: RType) -> bool {
        [Ctx::Patient, Ctx::User, Ctx::System].iter().any(|&c| {
            let g = self.granting(c, t, 's');
            self.counts(c) && !g.is_empty() && g.iter().all(|s| s.granular.is_some())
        })
    }

    /// The oracle: does some context allow this write on its own?
    fn allows(&self, w: &Write<'_>) -> bool {
        [Ctx::Patient, Ctx::User, Ctx::System]
            .into_iter()
            .any(|c| self.counts(c) && self.allows_in(c, w))
    }

    fn allows_in(&self, ctx: Ctx, w: &Write<'_>) -> bool {
        for letter in w.letters.chars() {
            let scopes = self.granting(ctx, w.rtype, letter);
            if scopes.is_empty() {
                return false;
            }
            let judged: Vec<&Value> = match letter {
                'c' => w.body.into_iter().collect(),
                'u' => w.body.into_iter().chain(w.current).collect(),
                'd' => w.current.into_iter().collect(),
                _ => Vec::new(),
            };
            if scopes.iter().all(|s| s.granular.is_some())
                && !scopes.iter().any(|s| judged.iter().all(|v| s.matches(v)))
            {
                return false;
            }
        }
        if ctx == Ctx::Patient {
            let a = self
                .patient
                .as_deref()
                .expect("patient context needs a patient");
            if w.rtype == RType::Patient && w.creates {
                return false;
            }
            if !w
                .body
                .into_iter()
                .chain(w.current)
                .all(|v| in_compartment(v, w.rtype, a))
            {
                return false;
            }
        }
        true
    }

    /// May this grant read `v` (a resource in a response)?
    fn can_read(&self, v: &Value) -> bool {
        let Some(t) = v["resourceType"].as_str().and_then(RType::of) else {
            // Types this test never writes: only an OperationOutcome is expected.
            return false;
        };
        [Ctx::Patient, Ctx::User, Ctx::System].into_iter().any(|c| {
            self.counts(c)
                && self.granting(c, t, 'r').iter().any(|s| s.matches(v))
                && (c != Ctx::Patient
                    || in_compartment(v, t, self.patient.as_deref().unwrap_or_default()))
        })
    }
}

fn has_category(v: &Value, sys: &str, code: &str) -> bool {
    v["category"].as_array().is_some_and(|cats| {
        cats.iter().any(|c| {
            c["coding"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|x| x["system"] == json!(sys) && x["code"] == json!(code))
            })
        })
    })
}

/// Every `Patient/…` reference anywhere in `v`.
fn patient_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "reference"
                    && let Some(r) = x.as_str()
                    && r.starts_with("Patient/")
                {
                    out.push(r.to_owned());
                }
                patient_refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| patient_refs(x, out)),
        _ => {}
    }
}

/// In A's compartment: Observation/Condition with subject A and no other patient
/// referenced; Patient A itself, referencing no other patient.
fn in_compartment(v: &Value, t: RType, a: &str) -> bool {
    let me = format!("Patient/{a}");
    let mut refs = Vec::new();
    patient_refs(v, &mut refs);
    let clean = refs.iter().all(|r| *r == me);
    match t {
        RType::Patient => clean && v["id"].as_str() == Some(a),
        _ => clean && v["subject"]["reference"].as_str() == Some(me.as_str()),
    }
}

/// One write as the oracle judges it.
struct Write<'a> {
    rtype: RType,
    letters: &'static str,
    /// The resource as it would be after the write (new body, patched result).
    body: Option<&'a Value>,
    /// The current version (update/patch/delete of an existing resource).
    current: Option<&'a Value>,
    /// A new resource comes into existence (create, update-as-create).
    creates: bool,
}

// ---------------------------------------------------------------------------------------
// Cases

/// A resource created directly upstream before the case runs.
#[derive(Clone, Debug)]
struct Fixture {
    rtype: RType,
    id: String,
    body: Value,
}

impl Fixture {
    fn key(&self) -> String {
        format!("{}/{}", self.rtype.name(), self.id)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Create,
    CondCreate,
    Update,
    UpdateCreate,
    CondUpdate,
    Patch,
    CondPatch,
    Delete,
    CondDelete,
}

/// One write (a request of its own, or a Bundle entry).
#[derive(Clone, Debug)]
struct Entry {
    shape: Shape,
    rtype: RType,
    /// The fixture written (update/patch/delete and conditional ones that match it).
    target: Option<usize>,
    /// PUT T/{new_id} (update-as-create).
    new_id: Option<String>,
    /// The identifier value the criteria name, or the new resource carries.
    ident: String,
    /// What is sent (resource, or JSON Patch ops).
    body: Option<Value>,
    patch: bool,
    /// The resource as it should be after the write (for the oracle and the state check).
    result: Option<Value>,
    /// Index of the identifier probe that watches resources created by this entry.
    probe: Option<usize>,
}

impl Entry {
    fn criteria(&self) -> String {
        format!("identifier={}", enc(&format!("{WL_SYS}|{}", self.ident)))
    }
    fn conditional(&self) -> bool {
        matches!(
            self.shape,
            Shape::CondUpdate | Shape::CondPatch | Shape::CondDelete
        )
    }
    fn method(&self) -> &'static str {
        match self.shape {
            Shape::Create | Shape::CondCreate => "POST",
            Shape::Update | Shape::UpdateCreate | Shape::CondUpdate => "PUT",
            Shape::Patch | Shape::CondPatch => "PATCH",
            Shape::Delete | Shape::CondDelete => "DELETE",
        }
    }
    /// The request target relative to the base.
    fn url(&self, fixtures: &[Fixture]) -> String {
        let t = self.rtype.name();
        match self.shape {
            Shape::Create | Shape::CondCreate => t.to_owned(),
            Shape::UpdateCreate => format!("{t}/{}", self.new_id.as_deref().unwrap_or_default()),
            Shape::Update | Shape::Patch | Shape::Delete => {
                fixtures[self.target.expect("target")].key()
            }
            Shape::CondUpdate | Shape::CondPatch | Shape::CondDelete => {
                format!("{t}?{}", self.criteria())
            }
        }
    }
    fn letters(&self) -> &'static str {
        match self.shape {
            Shape::Create | Shape::CondCreate => "c",
            Shape::Update | Shape::UpdateCreate | Shape::Patch => "u",
            Shape::Delete => "d",
            Shape::CondUpdate | Shape::CondPatch => "us",
            Shape::CondDelete => "ds",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Single,
    Batch,
    Transaction,
}

struct Case {
    n: usize,
    grant: Grant,
    mode: Mode,
    fixtures: Vec<Fixture>,
    entries: Vec<Entry>,
    /// (type, identifier value) watched for resources other than the fixtures.
    probes: Vec<(RType, String)>,
}

/// What one fixture should look like afterwards.
#[derive(Clone, Debug, PartialEq)]
enum Fate {
    Same,
    Updated(Value),
    Gone,
}

/// What an identifier probe should find (resources other than the fixtures).
#[derive(Clone, Debug, PartialEq)]
enum Found {
    Nothing,
    One(Value),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Want {
    Ok,
    Refused,
    Any,
}

impl Want {
    fn accepts(self, status: u16) -> bool {
        match self {
            Want::Ok => (200..300).contains(&status),
            Want::Refused => !(200..300).contains(&status),
            Want::Any => true,
        }
    }
}

/// One acceptable outcome of a case.
#[derive(Clone, Debug)]
struct Alt {
    label: &'static str,
    /// The answer to the request (for a batch: the Bundle itself, always 2xx).
    status: Want,
    /// Per entry (batch/transaction responses).
    entries: Vec<Want>,
    fates: Vec<Fate>,
    found: Vec<Found>,
}

/// The fields an applied write is recognised by.
const KEY_FIELDS: &[&str] = &[
    "identifier",
    "subject",
    "category",
    "code",
    "status",
    "note",
    "performer",
    "asserter",
    "name",
    "link",
    "active",
];

/// The field a foreign patient reference is added to.
fn foreign_field(t: RType, other: &str) -> (&'static str, Value) {
    let r = json!({"reference": format!("Patient/{other}")});
    match t {
        RType::Observation => ("performer", json!([r])),
        RType::Condition => ("asserter", r),
        RType::Patient => ("link", json!([{"other": r, "type": "seealso"}])),
    }
}

fn marker_field(t: RType, marker: &str) -> (&'static str, Value) {
    match t {
        RType::Patient => (
            "name",
            json!([{"family": "WriteLeak", "given": [marker], "text": marker}]),
        ),
        _ => ("note", json!([{"text": marker}])),
    }
}

fn category(t: RType, code: &str) -> Value {
    let (sys, _) = t.categories().expect("categories");
    json!([{"coding": [{"system": sys, "code": code}]}])
}

/// A fresh resource of `t` for `subject` (ignored for Patient).
fn resource(t: RType, ident: &str, subject: &str, cat: usize) -> Value {
    let identifier = json!([{"system": WL_SYS, "value": ident}]);
    match t {
        RType::Observation => json!({
            "resourceType": "Observation",
            "status": "final",
            "identifier": identifier,
            "category": category(t, t.categories().expect("cats").1[cat]),
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
            "subject": {"reference": format!("Patient/{subject}")},
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
        }),
        RType::Condition => json!({
            "resourceType": "Condition",
            "identifier": identifier,
            "category": category(t, t.categories().expect("cats").1[cat]),
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}], "text": "Hypertension"},
            "subject": {"reference": format!("Patient/{subject}")}
        }),
        RType::Patient => json!({
            "resourceType": "Patient",
            "identifier": identifier,
            "active": true,
            "name": [{"family": "WriteLeak", "given": [ident]}]
        }),
    }
}

struct Gen {
    rng: Rng,
    nonce: String,
}

const V2: &[&str] = &[
    "c", "r", "u", "d", "s", "cu", "cud", "cruds", "rs", "ud", "us", "ds", "uds", "cuds", "crud",
    "ru", "rud", "cr", "cs", "rus",
];

impl Gen {
    fn grant(&mut self, t: RType, a: &str, letters: &str) -> Grant {
        let kind = *self.rng.pick(&[
            Kind::Patient,
            Kind::Patient,
            Kind::Patient,
            Kind::PatientUser,
            Kind::User,
            Kind::User,
            Kind::Backend,
            Kind::Backend,
            Kind::NoLaunch,
        ]);
        // The contexts scopes are drawn from: the ones that count, mostly, and now and then
        // one that must not (system/ on a user token, patient/ without a launch patient).
        let (main, stray): (&[Ctx], &[Ctx]) = match kind {
            Kind::Patient => (&[Ctx::Patient], &[Ctx::System]),
            Kind::PatientUser => (&[Ctx::Patient, Ctx::User], &[Ctx::System]),
            Kind::User => (&[Ctx::User], &[Ctx::Patient, Ctx::System]),
            Kind::Backend => (&[Ctx::System], &[Ctx::Patient]),
            Kind::NoLaunch => (&[Ctx::Patient], &[Ctx::System]),
        };
        let n = 1 + self.rng.below(3);
        let mut scopes = Vec::new();
        for _ in 0..n {
            let ctx = if self.rng.chance(15) {
                *self.rng.pick(stray)
            } else {
                *self.rng.pick(main)
            };
            let rtype = match self.rng.below(100) {
                0..65 => Some(t),
                65..80 => None,
                _ => Some(
                    *self
                        .rng
                        .pick(&[RType::Observation, RType::Condition, RType::Patient]),
                ),
            };
            let v1 = self.rng.chance(20);
            let perms = if v1 {
                self.rng.pick(&["read", "write", "*"]).to_string()
            } else if self.rng.chance(50) {
                // The letters this write needs, plus some.
                let extra = *self.rng.pick(V2);
                let mut p: Vec<char> = "cruds"
                    .chars()
                    .filter(|c| letters.contains(*c) || extra.contains(*c))
                    .collect();
                if self.rng.chance(20) && p.len() > 1 {
                    p.remove(self.rng.below(p.len()));
                }
                p.into_iter().collect()
            } else {
                self.rng.pick(V2).to_string()
            };
            let granular = match rtype.and_then(RType::categories) {
                Some((sys, codes)) if !v1 && self.rng.chance(40) => {
                    Some((sys, *self.rng.pick(&codes)))
                }
                _ => None,
            };
            scopes.push(Scope {
                ctx,
                rtype,
                perms,
                granular,
            });
        }
        Grant {
            kind,
            patient: matches!(kind, Kind::Patient | Kind::PatientUser).then(|| a.to_owned()),
            fhir_user: matches!(kind, Kind::PatientUser | Kind::User).then_some(PRACTITIONER),
            scopes,
        }
    }

    fn id(&self, n: usize, what: &str) -> String {
        format!("wl-{}-{n}-{what}", self.nonce)
    }

    /// A new version of `cur` (a fixture body): a marker, and maybe moved to the other
    /// patient, to the other category, or given a reference to the other patient.
    fn modify(&mut self, t: RType, cur: &Value, marker: &str, a: &str, b: &str) -> Value {
        let mut v = cur.clone();
        let (k, m) = marker_field(t, marker);
        v[k] = m;
        let owner = match t {
            RType::Patient => cur["id"].as_str().unwrap_or_default().to_owned(),
            _ => cur["subject"]["reference"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("Patient/")
                .to_owned(),
        };
        let other = if owner == a { b } else { a };
        if t != RType::Patient && self.rng.chance(25) {
            v["subject"] = json!({"reference": format!("Patient/{other}")});
        }
        if let Some((sys, codes)) = t.categories()
            && self.rng.chance(30)
        {
            let now = if has_category(cur, sys, codes[0]) {
                codes[1]
            } else {
                codes[0]
            };
            v["category"] = category(t, now);
        }
        if self.rng.chance(15) {
            let (k, r) = foreign_field(t, other);
            v[k] = r;
        }
        v
    }

    /// A new resource: subject A mostly, sometimes B, random category, sometimes a
    /// reference to the other patient.
    fn fresh_body(&mut self, t: RType, ident: &str, marker: &str, a: &str, b: &str) -> Value {
        let subject = if self.rng.chance(70) { a } else { b };
        let mut v = resource(t, ident, subject, self.rng.below(2));
        let (k, m) = marker_field(t, marker);
        v[k] = m;
        if self.rng.chance(12) {
            let (k, r) = foreign_field(t, if subject == a { b } else { a });
            v[k] = r;
        }
        v
    }

    /// A fixture to be written: A's or B's, random category.
    fn fixture(
        &mut self,
        fixtures: &mut Vec<Fixture>,
        t: RType,
        n: usize,
        a: &str,
        b: &str,
    ) -> usize {
        let i = fixtures.len();
        if t == RType::Patient {
            // Patients A and B are fixtures 0 and 1.
            return if self.rng.chance(65) { 0 } else { 1 };
        }
        let id = self.id(n, &format!("f{i}"));
        let owner = if self.rng.chance(60) { a } else { b };
        let mut body = resource(t, &id, owner, self.rng.below(2));
        body["id"] = json!(id);
        fixtures.push(Fixture { rtype: t, id, body });
        i
    }

    fn entry(
        &mut self,
        shape: Shape,
        t: RType,
        (n, e): (usize, usize),
        single: bool,
        fixtures: &mut Vec<Fixture>,
        probes: &mut Vec<(RType, String)>,
    ) -> Entry {
        let a = fixtures[0].id.clone();
        let b = fixtures[1].id.clone();
        let marker = self.id(n, &format!("m{e}"));
        let mut en = Entry {
            shape,
            rtype: t,
            target: None,
            new_id: None,
            ident: String::new(),
            body: None,
            patch: false,
            result: None,
            probe: None,
        };
        let hit = match shape {
            Shape::CondUpdate | Shape::CondPatch | Shape::CondDelete => self.rng.chance(75),
            Shape::Update | Shape::Patch | Shape::Delete => true,
            // If-None-Exist matching an existing resource: single requests only (two
            // acceptable outcomes, see `entry_alts`).
            Shape::CondCreate => single && self.rng.chance(25),
            _ => false,
        };
        if hit {
            let i = self.fixture(fixtures, t, n, &a, &b);
            en.target = Some(i);
            en.ident = fixtures[i].body["identifier"][0]["value"]
                .as_str()
                .expect("fixture identifier")
                .to_owned();
            let cur = fixtures[i].body.clone();
            match shape {
                Shape::Update | Shape::CondUpdate => {
                    let v = self.modify(t, &cur, &marker, &a, &b);
                    let mut sent = v.clone();
                    if shape == Shape::CondUpdate {
                        // The body may name the match's id or carry none (both are valid).
                        if self.rng.chance(50) {
                            sent.as_object_mut().expect("object").remove("id");
                        }
                        // Watches for a narrowed conditional update creating a new one.
                        en.probe = Some(probes.len());
                        probes.push((t, en.ident.clone()));
                    }
                    en.body = Some(sent);
                    en.result = Some(v);
                }
                Shape::Patch | Shape::CondPatch => {
                    let v = self.modify(t, &cur, &marker, &a, &b);
                    let ops: Vec<Value> = v
                        .as_object()
                        .expect("object")
                        .iter()
                        .filter(|(k, x)| cur.get(k.as_str()) != Some(x))
                        .map(|(k, x)| json!({"op": "add", "path": format!("/{k}"), "value": x}))
                        .collect();
                    en.body = Some(Value::Array(ops));
                    en.patch = true;
                    en.result = Some(v);
                }
                Shape::CondCreate => {
                    // A new resource carrying the match's identifier.
                    let v = self.fresh_body(t, &en.ident, &marker, &a, &b);
                    en.probe = Some(probes.len());
                    probes.push((t, en.ident.clone()));
                    en.body = Some(v.clone());
                    en.result = Some(v);
                }
                _ => {}
            }
        } else {
            en.ident = self.id(n, &format!("i{e}"));
            en.probe = Some(probes.len());
            probes.push((t, en.ident.clone()));
            match shape {
                Shape::CondPatch => {
                    let (k, m) = marker_field(t, &marker);
                    en.body = Some(json!([{"op": "add", "path": format!("/{k}"), "value": m}]));
                    en.patch = true;
                }
                Shape::CondDelete => {}
                _ => {
                    let mut v = self.fresh_body(t, &en.ident, &marker, &a, &b);
                    if shape == Shape::UpdateCreate {
                        let id = self.id(n, &format!("u{e}"));
                        v["id"] = json!(id);
                        en.new_id = Some(id);
                    }
                    en.body = Some(v.clone());
                    en.result = Some(v);
                }
            }
        }
        en
    }

    fn case(&mut self, n: usize) -> Case {
        let t = match self.rng.below(100) {
            0..60 => RType::Observation,
            60..80 => RType::Condition,
            _ => RType::Patient,
        };
        let mode = match self.rng.below(100) {
            0..76 => Mode::Single,
            76..88 => Mode::Batch,
            _ => Mode::Transaction,
        };
        let mut fixtures = Vec::new();
        for who in ["pa", "pb"] {
            let id = self.id(n, who);
            let mut body = resource(RType::Patient, &id, "", 0);
            body["id"] = json!(id);
            fixtures.push(Fixture {
                rtype: RType::Patient,
                id,
                body,
            });
        }
        let a = fixtures[0].id.clone();
        let mut probes = Vec::new();
        let mut entries = Vec::new();
        let all = [
            Shape::Create,
            Shape::CondCreate,
            Shape::Update,
            Shape::UpdateCreate,
            Shape::CondUpdate,
            Shape::Patch,
            Shape::CondPatch,
            Shape::Delete,
            Shape::CondDelete,
        ];
        let in_bundle = [
            Shape::Create,
            Shape::CondCreate,
            Shape::Update,
            Shape::UpdateCreate,
            Shape::Delete,
        ];
        if mode == Mode::Single {
            let shape = *self.rng.pick(&all);
            entries.push(self.entry(shape, t, (n, 0), true, &mut fixtures, &mut probes));
        } else {
            // Bundles: Observations and Conditions only (each entry its own fixture).
            for e in 0..2 + self.rng.below(3) {
                let et = if self.rng.chance(75) {
                    RType::Observation
                } else {
                    RType::Condition
                };
                let shape = *self.rng.pick(&in_bundle);
                entries.push(self.entry(shape, et, (n, e), false, &mut fixtures, &mut probes));
            }
        }
        let letters: String = {
            let mut l: String = entries.iter().map(Entry::letters).collect();
            if self.rng.chance(30) {
                l.push('r');
            }
            l
        };
        let grant_type = if mode == Mode::Single {
            t
        } else {
            entries[self.rng.below(entries.len())].rtype
        };
        let grant = self.grant(grant_type, &a, &letters);
        Case {
            n,
            grant,
            mode,
            fixtures,
            entries,
            probes,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The expected outcomes

/// Effects of one entry: fixtures' fates and probes' findings, by index.
type Effects = (Vec<(usize, Fate)>, Vec<(usize, Found)>);
/// One acceptable outcome of one entry: its status and its effects.
type EntryAlt = (Want, Vec<(usize, Fate)>, Vec<(usize, Found)>);

impl Case {
    /// The oracle's verdict on one entry, and the alternatives it accepts: each a status
    /// and the effects on fixtures and probes.
    fn entry_alts(&self, en: &Entry) -> Vec<EntryAlt> {
        let g = &self.grant;
        let cur = en.target.map(|i| &self.fixtures[i].body);
        let applied = |creates: bool| -> Effects {
            let mut fates = Vec::new();
            let mut found = Vec::new();
            match (creates, en.target) {
                (false, Some(i)) => fates.push((
                    i,
                    match en.shape {
                        Shape::Delete | Shape::CondDelete => Fate::Gone,
                        _ => Fate::Updated(en.result.clone().expect("result")),
                    },
                )),
                _ => {
                    if let (Some(p), Some(r)) = (en.probe, &en.result) {
                        found.push((p, Found::One(r.clone())));
                    }
                }
            }
            (fates, found)
        };
        let nothing = || (Vec::new(), Vec::new());
        let judge = |g: &Grant, w: &Write<'_>, creates: bool| {
            if g.allows(w) {
                let (f, p) = applied(creates);
                (Want::Ok, f, p)
            } else {
                let (f, p) = nothing();
                (Want::Refused, f, p)
            }
        };
        let plain = |letters, body, current, creates| Write {
            rtype: en.rtype,
            letters,
            body,
            current,
            creates,
        };
        let result = en.result.as_ref();
        match en.shape {
            Shape::Create | Shape::CondCreate => {
                let j = judge(g, &plain("c", result, None, true), true);
                if en.target.is_some() && j.0 == Want::Ok {
                    // If-None-Exist matches a resource: it answers with the match and creates
                    // nothing, or (criteria narrowed away from a match the grant cannot
                    // see) creates. Either way the match itself is unchanged, and the
                    // response may carry it only if the grant can read it.
                    vec![(Want::Ok, Vec::new(), Vec::new()), j]
                } else {
                    vec![j]
                }
            }
            Shape::UpdateCreate => vec![judge(g, &plain("u", result, None, true), true)],
            Shape::Update | Shape::Patch => {
                vec![judge(g, &plain("u", result, cur, false), false)]
            }
            Shape::Delete => vec![judge(g, &plain("d", None, cur, false), false)],
            Shape::CondUpdate | Shape::CondPatch | Shape::CondDelete => {
                let letters = en.letters();
                let (body, creates) = match en.shape {
                    Shape::CondDelete => (None, false),
                    _ => (result, false),
                };
                match cur {
                    None if en.shape == Shape::CondUpdate => {
                        vec![judge(g, &plain(letters, body, None, true), true)]
                    }
                    None => {
                        let (f, p) = nothing();
                        vec![(Want::Any, f, p)]
                    }
                    Some(m) => {
                        let strict = judge(g, &plain(letters, body, Some(m), creates), false);
                        let mut alts = vec![strict.clone()];
                        let a = g.patient.as_deref();
                        if strict.0 == Want::Refused
                            && let Some(a) = a
                            && !in_compartment(m, en.rtype, a)
                        {
                            // The criteria pinned to A select nothing.
                            if en.shape == Shape::CondUpdate {
                                let only_patient = Grant {
                                    scopes: g
                                        .scopes
                                        .iter()
                                        .filter(|s| s.ctx == Ctx::Patient)
                                        .cloned()
                                        .collect(),
                                    ..g.clone()
                                };
                                let w = plain(letters, body, None, true);
                                if only_patient.allows(&w) {
                                    let mut found = Vec::new();
                                    if let (Some(p), Some(r)) = (en.probe, &en.result) {
                                        let mut r = r.clone();
                                        r.as_object_mut().expect("object").remove("id");
                                        found.push((p, Found::One(r)));
                                    }
                                    alts.push((Want::Ok, Vec::new(), found));
                                }
                            } else {
                                alts.push((Want::Any, Vec::new(), Vec::new()));
                            }
                        }
                        alts
                    }
                }
            }
        }
    }

    fn alts(&self) -> Vec<Alt> {
        let base = |label, status, entries: Vec<Want>| Alt {
            label,
            status,
            entries,
            fates: vec![Fate::Same; self.fixtures.len()],
            found: vec![Found::Nothing; self.probes.len()],
        };
        let per: Vec<_> = self.entries.iter().map(|e| self.entry_alts(e)).collect();
        let en0 = &self.entries[0];
        match self.mode {
            Mode::Single => per[0]
                .iter()
                .enumerate()
                .map(|(i, (want, fates, found))| {
                    let mut alt = base(
                        match (i, en0.shape) {
                            (0, Shape::CondCreate) => "the match answers, nothing created",
                            (_, Shape::CondCreate) => "criteria narrowed away from the match",
                            (0, _) => "strict",
                            _ => "criteria pinned to A",
                        },
                        *want,
                        vec![],
                    );
                    for (k, f) in fates {
                        alt.fates[*k] = f.clone();
                    }
                    for (k, f) in found {
                        alt.found[*k] = f.clone();
                    }
                    alt
                })
                .collect(),
            Mode::Batch | Mode::Transaction => {
                // Bundles hold no conditional update/patch/delete: one alternative each.
                let all_ok = per.iter().all(|a| a[0].0 == Want::Ok);
                if self.mode == Mode::Transaction && !all_ok {
                    return vec![base("transaction refused", Want::Refused, vec![])];
                }
                let any_ok = per.iter().any(|a| a[0].0 == Want::Ok);
                let mut alt = base(
                    if self.mode == Mode::Batch {
                        "batch"
                    } else {
                        "transaction applied"
                    },
                    // A batch with nothing allowed may be refused as a whole.
                    if any_ok { Want::Ok } else { Want::Any },
                    per.iter().map(|a| a[0].0).collect(),
                );
                for a in &per {
                    for (k, f) in &a[0].1 {
                        alt.fates[*k] = f.clone();
                    }
                    for (k, f) in &a[0].2 {
                        alt.found[*k] = f.clone();
                    }
                }
                vec![alt]
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Running and judging

/// The upstream FHIR server, read and written directly.
struct Upstream {
    addr: String,
    path: String,
    base: String,
}

impl Upstream {
    fn send(&self, method: &str, rel: &str, body: Option<&Value>) -> Resp {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let mut h = vec![("Accept", "application/fhir+json")];
        if body.is_some() {
            h.push(("Content-Type", "application/fhir+json"));
        }
        let target = format!("{}/{rel}", self.path.trim_end_matches('/'));
        let mut attempt = 0;
        loop {
            match http::send(&self.addr, method, &target, &h, &bytes) {
                // hfs on sqlite answers "database table is locked" under concurrent writes.
                Ok(r) if r.status >= 500 && attempt < 5 => {
                    attempt += 1;
                    eprintln!(
                        "upstream {method} {rel}: {} {:.200}, retrying",
                        r.status,
                        r.text()
                    );
                    std::thread::sleep(std::time::Duration::from_millis(100 * attempt));
                }
                Ok(r) => return r,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    eprintln!("upstream {method} {rel}: {e}, retrying");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => panic!("upstream {method} {rel}: {e}"),
            }
        }
    }
    /// `s` names the upstream base (followed by a path, a quote or nothing).
    fn named_in(&self, s: &str) -> bool {
        s.match_indices(&self.base).any(|(i, m)| {
            matches!(
                s[i + m.len()..].chars().next(),
                None | Some('/' | '"' | '?' | ' ')
            )
        })
    }
    fn read(&self, key: &str) -> Resp {
        self.send("GET", key, None)
    }
    /// Resources of `t` carrying `WL_SYS|ident`.
    fn by_identifier(&self, t: RType, ident: &str) -> Result<Vec<Value>, String> {
        let r = self.send(
            "GET",
            &format!(
                "{}?identifier={}&_count=50",
                t.name(),
                enc(&format!("{WL_SYS}|{ident}"))
            ),
            None,
        );
        if r.status != 200 {
            return Err(format!("search answered {}: {:.200}", r.status, r.text()));
        }
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        Ok(v["entry"]
            .as_array()
            .map(|es| es.iter().map(|e| e["resource"].clone()).collect())
            .unwrap_or_default())
    }
}

#[derive(Default)]
struct Counts {
    cases: AtomicUsize,
    writes: AtomicUsize,
    allowed: AtomicUsize,
    refused: AtomicUsize,
    noop: AtomicUsize,
}

struct Run<'t> {
    proxy: &'t Proxy,
    up: Upstream,
    seed: u64,
    /// (case, kind, text).
    failures: Mutex<Vec<(usize, &'static str, String)>>,
    counts: Counts,
}

fn is_ok(status: u16) -> bool {
    (200..300).contains(&status)
}

fn key_fields(v: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for k in KEY_FIELDS {
        if let Some(x) = v.get(*k) {
            out.insert((*k).to_owned(), x.clone());
        }
    }
    Value::Object(out)
}

/// A resource in a few words: type/id, subject, categories, other patient references.
fn brief(v: &Value) -> String {
    let mut refs = Vec::new();
    patient_refs(v, &mut refs);
    let cats: Vec<&str> = v["category"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["coding"].as_array().into_iter().flatten())
        .filter_map(|x| x["code"].as_str())
        .collect();
    format!(
        "{}/{} refs={refs:?} category={cats:?}",
        v["resourceType"].as_str().unwrap_or("?"),
        v["id"].as_str().unwrap_or("-"),
    )
}

/// The answer in a few words: a Bundle's entry statuses and messages, or the body's start.
fn answer(resp: &Resp) -> String {
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let diag = |o: &Value| {
        o["issue"][0]["diagnostics"]
            .as_str()
            .or(o["issue"][0]["details"]["text"].as_str())
            .unwrap_or("")
            .to_owned()
    };
    match v["resourceType"].as_str() {
        Some("Bundle") => v["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, e)| {
                format!(
                    "\n        [{i}] {} {}{}",
                    e["response"]["status"].as_str().unwrap_or("?"),
                    diag(&e["response"]["outcome"]),
                    if e["resource"].is_object() {
                        format!(" returned {}", brief(&e["resource"]))
                    } else {
                        String::new()
                    }
                )
            })
            .collect(),
        Some("OperationOutcome") => format!("OperationOutcome: {}", diag(&v)),
        Some(_) => format!("returned {}", brief(&v)),
        None => format!("{:.300}", resp.text()),
    }
}

/// The key fields that differ between `want` and `got`, as `field: want -> got`.
fn field_diff(want: &Value, got: &Value) -> String {
    let diffs: Vec<String> = KEY_FIELDS
        .iter()
        .filter(|k| want.get(**k) != got.get(**k))
        .map(|k| {
            format!(
                "{k}: {} -> {}",
                want.get(*k).map_or("(none)".into(), short),
                got.get(*k).map_or("(none)".into(), short)
            )
        })
        .collect();
    if diffs.is_empty() {
        "same key fields".into()
    } else {
        diffs.join(", ")
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 600 {
        format!("{}…", &s[..600])
    } else {
        s
    }
}

impl Run<'_> {
    fn token(&self, g: &Grant) -> String {
        self.proxy.mint(TokenReq {
            scope: &g.scope_string(),
            patient: g.patient.as_deref(),
            fhir_user: g.fhir_user,
            ..Default::default()
        })
    }

    /// Creates the fixtures upstream; their stored versions (with meta) replace the bodies.
    fn setup(&self, c: &mut Case) -> Result<(), String> {
        for f in &mut c.fixtures {
            let r = self.up.send("PUT", &f.key(), Some(&f.body));
            if !is_ok(r.status) {
                return Err(format!(
                    "fixture {} upstream: {} {:.300}",
                    f.key(),
                    r.status,
                    r.text()
                ));
            }
            // hfs answers the stored version (meta included), the same as a read.
            let stored = serde_json::from_slice::<Value>(&r.body)
                .ok()
                .filter(|v| v["id"] == json!(f.id) && v["meta"]["versionId"].is_string());
            f.body = match stored {
                Some(v) => v,
                None => {
                    let r = self.up.read(&f.key());
                    if r.status != 200 {
                        return Err(format!("fixture {} read back: {}", f.key(), r.status));
                    }
                    r.json()
                }
            };
        }
        Ok(())
    }

    /// The request for a single entry.
    /// Sends a single entry: (the request as text, the answer).
    fn single(&self, c: &Case, token: &str) -> (String, Resp) {
        let en = &c.entries[0];
        let url = en.url(&c.fixtures);
        let mut h: Vec<(&'static str, String)> = Vec::new();
        if en.body.is_some() {
            h.push((
                "Content-Type",
                if en.patch {
                    "application/json-patch+json".into()
                } else {
                    "application/fhir+json".into()
                },
            ));
        }
        if en.shape == Shape::CondCreate {
            h.push(("If-None-Exist", en.criteria()));
        }
        let body = en
            .body
            .as_ref()
            .map(|b| b.to_string().into_bytes())
            .unwrap_or_default();
        let hr: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = self.proxy.req(en.method(), &url, token, &hr, &body);
        let hs: String = h.iter().map(|(k, v)| format!(" [{k}: {v}]")).collect();
        let text = format!(
            "{} /fhir/{url}{hs} {}{}",
            en.method(),
            String::from_utf8_lossy(&body),
            en.target
                .map(|t| format!(" | current: {}", brief(&c.fixtures[t].body)))
                .unwrap_or_default()
        );
        (text, resp)
    }

    fn bundle(&self, c: &Case) -> Value {
        let entries: Vec<Value> = c
            .entries
            .iter()
            .enumerate()
            .map(|(i, en)| {
                let mut request = json!({"method": en.method(), "url": en.url(&c.fixtures)});
                if en.shape == Shape::CondCreate {
                    request["ifNoneExist"] = json!(en.criteria());
                }
                let mut e = json!({"request": request});
                if let Some(b) = &en.body {
                    e["resource"] = b.clone();
                }
                if en.method() == "POST" {
                    e["fullUrl"] = json!(format!(
                        "urn:uuid:{:08x}-0000-4000-8000-{:012x}",
                        c.n,
                        i + 1
                    ));
                }
                e
            })
            .collect();
        json!({
            "resourceType": "Bundle",
            "type": if c.mode == Mode::Batch { "batch" } else { "transaction" },
            "entry": entries,
        })
    }

    /// Every problem with the world against `alt` (empty: it matches).
    fn world_diff(
        &self,
        c: &Case,
        alt: &Alt,
        after: &[Resp],
        found: &[Result<Vec<Value>, String>],
    ) -> Vec<String> {
        let mut d = Vec::new();
        for (i, f) in c.fixtures.iter().enumerate() {
            let r = &after[i];
            let now: Option<Value> = (r.status == 200)
                .then(|| serde_json::from_slice(&r.body).ok())
                .flatten();
            match (&alt.fates[i], &now) {
                (Fate::Same, Some(v)) if *v == f.body => {}
                (Fate::Same, Some(v)) => d.push(format!(
                    "{} CHANGED upstream: version {} -> {}: {}",
                    f.key(),
                    f.body["meta"]["versionId"],
                    v["meta"]["versionId"],
                    field_diff(&f.body, v)
                )),
                (Fate::Same, None) => {
                    d.push(format!("{} GONE (read answers {})", f.key(), r.status))
                }
                (Fate::Gone, None) if matches!(r.status, 404 | 410) => {}
                (Fate::Gone, _) => d.push(format!(
                    "{} should be deleted, read answers {}",
                    f.key(),
                    r.status
                )),
                (Fate::Updated(want), Some(v)) if key_fields(want) == key_fields(v) => {}
                (Fate::Updated(want), Some(v)) => d.push(format!(
                    "{} not updated as sent (version {} -> {}): {}",
                    f.key(),
                    f.body["meta"]["versionId"],
                    v["meta"]["versionId"],
                    field_diff(want, v)
                )),
                (Fate::Updated(_), None) => d.push(format!(
                    "{} should be updated, read answers {}",
                    f.key(),
                    r.status
                )),
            }
        }
        for (i, (t, ident)) in c.probes.iter().enumerate() {
            let got: Vec<&Value> = match &found[i] {
                Ok(vs) => vs
                    .iter()
                    .filter(|v| {
                        !c.fixtures
                            .iter()
                            .any(|f| f.rtype == *t && v["id"].as_str() == Some(f.id.as_str()))
                    })
                    .collect(),
                Err(e) => {
                    d.push(format!("{} identifier {ident}: {e}", t.name()));
                    continue;
                }
            };
            match (&alt.found[i], got.as_slice()) {
                (Found::Nothing, []) => {}
                (Found::Nothing, vs) => d.push(format!(
                    "{} CREATED with identifier {ident}: {}",
                    t.name(),
                    vs.iter()
                        .map(|v| format!(
                            "{}/{} {}",
                            t.name(),
                            v["id"].as_str().unwrap_or("?"),
                            short(&key_fields(v))
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
                (Found::One(want), [v]) if key_fields(want) == key_fields(v) => {
                    if let Some(id) = want["id"].as_str()
                        && v["id"].as_str() != Some(id)
                    {
                        d.push(format!(
                            "{} created as {} instead of {id}",
                            t.name(),
                            v["id"]
                        ));
                    }
                }
                (Found::One(want), []) => d.push(format!(
                    "{} with identifier {ident} not created (want {})",
                    t.name(),
                    brief(want)
                )),
                (Found::One(want), vs) => d.push(format!(
                    "{} with identifier {ident}: want one {} got {}: {}",
                    t.name(),
                    brief(want),
                    vs.len(),
                    vs.iter()
                        .map(|v| field_diff(want, v))
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
            }
        }
        d
    }

    fn fail(&self, c: &Case, req: &str, kind: &'static str, what: String) {
        self.failures.lock().unwrap().push((
            c.n,
            kind,
            format!(
                "seed {} case {} | {kind} | {} | {req} | {what}",
                self.seed,
                c.n,
                c.grant.describe()
            ),
        ));
    }

    /// Resources in a response the grant cannot read; and the upstream named.
    fn judge_body(&self, c: &Case, req: &str, resp: &Resp) {
        for (k, v) in &resp.headers {
            if self.up.named_in(v) {
                self.fail(c, req, "UPSTREAM NAMED", format!("header {k}: {v}"));
            }
        }
        if self.up.named_in(&resp.text()) {
            self.fail(
                c,
                req,
                "UPSTREAM NAMED",
                format!("body: {:.300}", resp.text()),
            );
        }
        let Ok(v) = serde_json::from_slice::<Value>(&resp.body) else {
            return;
        };
        let mut resources = vec![];
        if v["resourceType"] == "Bundle" {
            for e in v["entry"].as_array().into_iter().flatten() {
                resources.push(e["resource"].clone());
                resources.push(e["response"]["outcome"].clone());
            }
        } else {
            resources.push(v);
        }
        for r in resources {
            let Some(t) = r["resourceType"].as_str() else {
                continue;
            };
            if t != "OperationOutcome" && !c.grant.can_read(&r) {
                self.fail(
                    c,
                    req,
                    "UNREADABLE RESOURCE RETURNED",
                    format!("status {}: {}", resp.status, short(&r)),
                );
            }
        }
    }

    fn run(&self, mut c: Case) {
        if let Err(e) = self.setup(&mut c) {
            self.fail(&c, "setup", "SETUP", e);
            return;
        }
        let alts = c.alts();
        let token = self.token(&c.grant);
        let (req, resp) = if c.mode == Mode::Single {
            self.single(&c, &token)
        } else {
            let b = self.bundle(&c);
            let resp = self.proxy.req(
                "POST",
                "",
                &token,
                &[("Content-Type", "application/fhir+json")],
                b.to_string().as_bytes(),
            );
            let entries: Vec<String> = c
                .entries
                .iter()
                .enumerate()
                .map(|(i, en)| {
                    format!(
                        "\n        [{i}] {} {}{}{}",
                        en.method(),
                        en.url(&c.fixtures),
                        en.body
                            .as_ref()
                            .map(|b| format!(" body: {}", brief(b)))
                            .unwrap_or_default(),
                        en.target
                            .map(|t| format!(" current: {}", brief(&c.fixtures[t].body)))
                            .unwrap_or_default()
                    )
                })
                .collect();
            (
                format!("POST /fhir ({:?}):{}", c.mode, entries.concat()),
                resp,
            )
        };
        self.judge_body(&c, &req, &resp);

        let after: Vec<Resp> = c.fixtures.iter().map(|f| self.up.read(&f.key())).collect();
        let found: Vec<_> = c
            .probes
            .iter()
            .map(|(t, ident)| self.up.by_identifier(*t, ident))
            .collect();

        // Per-entry statuses of a Bundle answer.
        let entry_status: Vec<Option<u16>> = if c.mode != Mode::Single && is_ok(resp.status) {
            let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
            (0..c.entries.len())
                .map(|i| {
                    v["entry"][i]["response"]["status"]
                        .as_str()
                        .and_then(|s| s.split_whitespace().next())
                        .and_then(|s| s.parse().ok())
                })
                .collect()
        } else {
            vec![None; c.entries.len()]
        };
        let status_ok = |alt: &Alt| -> Vec<String> {
            let mut d = Vec::new();
            if !alt.status.accepts(resp.status) {
                d.push(format!("status {} (want {:?})", resp.status, alt.status));
            }
            if !is_ok(resp.status) {
                // Refused as a whole: fine for a batch of entries that are all refused.
                let wanted: Vec<usize> = (0..alt.entries.len())
                    .filter(|i| alt.entries[*i] == Want::Ok)
                    .collect();
                if !wanted.is_empty() && alt.status.accepts(resp.status) {
                    d.push(format!(
                        "refused as a whole, but entries {wanted:?} are allowed"
                    ));
                }
                return d;
            }
            for (i, w) in alt.entries.iter().enumerate() {
                match entry_status[i] {
                    Some(s) if w.accepts(s) => {}
                    s => d.push(format!("entry {i} status {s:?} (want {w:?})")),
                }
            }
            d
        };
        let judged: Vec<(Vec<String>, Vec<String>)> = alts
            .iter()
            .map(|a| (status_ok(a), self.world_diff(&c, a, &after, &found)))
            .collect();

        // Counts (by the strict reading).
        let strict = &alts[0];
        let wants: Vec<Want> = if c.mode == Mode::Single {
            vec![strict.status]
        } else if c.mode == Mode::Transaction && strict.status == Want::Refused {
            vec![Want::Refused; c.entries.len()]
        } else {
            strict.entries.clone()
        };
        self.counts.cases.fetch_add(1, Ordering::Relaxed);
        for w in &wants {
            self.counts.writes.fetch_add(1, Ordering::Relaxed);
            match w {
                Want::Ok => self.counts.allowed.fetch_add(1, Ordering::Relaxed),
                Want::Refused => self.counts.refused.fetch_add(1, Ordering::Relaxed),
                Want::Any => self.counts.noop.fetch_add(1, Ordering::Relaxed),
            };
        }

        if judged.iter().any(|(s, w)| s.is_empty() && w.is_empty()) {
            let alt = alts
                .iter()
                .zip(&judged)
                .find(|(_, (s, w))| s.is_empty() && w.is_empty())
                .map(|(a, _)| a)
                .expect("an alternative");
            self.judge_headers(&c, &req, &resp, alt);
            return;
        }
        // No alternative fits: classify against the strict one.
        let (sd, wd) = &judged[0];
        let changed_outside = (0..c.fixtures.len()).any(|i| {
            strict.fates[i] == Fate::Same && wd.iter().any(|d| d.starts_with(&c.fixtures[i].key()))
        }) || wd.iter().any(|d| d.contains("CREATED"));
        let kind = if changed_outside {
            UNAUTHORIZED
        } else if strict.status == Want::Ok && (!is_ok(resp.status) || !sd.is_empty()) {
            FALSE_REFUSAL
        } else if !wd.is_empty() {
            "NOT APPLIED AS SENT"
        } else {
            "REFUSED WRITE ANSWERED 2xx (nothing changed)"
        };
        let mut what = format!(
            "expected ({}): {:?}{}; got {} {}",
            strict.label,
            strict.status,
            if strict.entries.is_empty() {
                String::new()
            } else {
                format!(" entries {:?}", strict.entries)
            },
            resp.status,
            answer(&resp)
        );
        if alts.len() > 1 {
            what.push_str(&format!(" (also accepted: {})", alts[1].label));
        }
        for x in sd.iter().chain(wd) {
            what.push_str(&format!("\n      - {x}"));
        }
        self.fail(&c, &req, kind, what);
    }

    /// Refusals answer an OperationOutcome; allowed creates/updates carry Location and ETag
    /// on the proxy's base.
    fn judge_headers(&self, c: &Case, req: &str, resp: &Resp, alt: &Alt) {
        if !is_ok(resp.status) {
            let oo = serde_json::from_slice::<Value>(&resp.body)
                .is_ok_and(|v| v["resourceType"] == "OperationOutcome");
            if !oo {
                self.fail(
                    c,
                    req,
                    "REFUSAL WITHOUT OperationOutcome",
                    format!("{} {:.300}", resp.status, resp.text()),
                );
            }
            return;
        }
        if c.mode != Mode::Single || alt.status != Want::Ok {
            return;
        }
        let en = &c.entries[0];
        let created = resp.status == 201;
        let updated = matches!(en.shape, Shape::Update | Shape::Patch | Shape::CondUpdate);
        if (created || updated) && resp.header("ETag").is_none() {
            self.fail(c, req, "HEADERS", format!("{} without ETag", resp.status));
        }
        let loc = resp.header("Location");
        if created && loc.is_none() {
            self.fail(c, req, "HEADERS", "201 without Location".into());
        }
        if let Some(l) = loc
            && !l.starts_with(&format!("{}/{}/", self.proxy.base, en.rtype.name()))
        {
            self.fail(
                c,
                req,
                "HEADERS",
                format!(
                    "Location {l} is not on the proxy's base {}",
                    self.proxy.base
                ),
            );
        }
    }
}

fn env_num(k: &str) -> Option<u64> {
    std::env::var(k).ok().and_then(|s| s.parse().ok())
}

#[test]
fn randomized_write_leak_test() {
    let seed = env_num("SMARTGATE_WRITE_LEAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("SMARTGATE_WRITE_LEAK_SEED={seed}");
    eprintln!("SMARTGATE_WRITE_LEAK_SEED={seed}");
    let n = env_num("SMARTGATE_WRITE_LEAK_WRITES").unwrap_or(400) as usize;
    let threads = env_num("SMARTGATE_WRITE_LEAK_THREADS").unwrap_or(1) as usize;
    // Ids must be unique across runs against a reused bed; the nonce changes ids only.
    let nonce = format!(
        "{:06x}",
        (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
            ^ u64::from(std::process::id()))
            & 0xff_ffff
    );
    let mut g = Gen {
        rng: Rng(seed),
        nonce,
    };
    let mut cases = Vec::new();
    while cases.len() < n {
        let c = g.case(cases.len());
        // Conditional writes whose criteria a granular `s` would narrow: not modelled.
        if c.entries.iter().any(Entry::conditional)
            && c.grant.granular_search_only(c.entries[0].rtype)
        {
            continue;
        }
        cases.push(c);
    }

    // What this run covers.
    let mut mix: BTreeMap<String, usize> = BTreeMap::new();
    for c in &cases {
        for en in &c.entries {
            let mode = match c.mode {
                Mode::Single => "",
                Mode::Batch => " in batch",
                Mode::Transaction => " in transaction",
            };
            let hit = match en.shape {
                Shape::CondCreate | Shape::CondUpdate | Shape::CondPatch | Shape::CondDelete => {
                    if en.target.is_some() {
                        "(1 match)"
                    } else {
                        "(0 matches)"
                    }
                }
                _ => "",
            };
            *mix.entry(format!("{:?}{hit}{mode}", en.shape)).or_default() += 1;
        }
        *mix.entry(format!("grant {:?}", c.grant.kind)).or_default() += 1;
    }
    let mix: String = mix.iter().map(|(k, v)| format!(" {k}={v}")).collect();
    println!("writes and grants:{mix}");
    let upstream = bed().var("FHIR_BASE").trim_end_matches('/').to_owned();
    let proxy = Proxy::start(&std::env::var("SMARTGATE_WRITE_LEAK_PROXY_YAML").unwrap_or_default());
    let run = Run {
        proxy: &proxy,
        up: Upstream {
            addr: common::authority(&upstream),
            path: common::path_of(&upstream),
            base: upstream.clone(),
        },
        seed,
        failures: Mutex::new(Vec::new()),
        counts: Counts::default(),
    };
    let started = Instant::now();
    let queue = Mutex::new(cases.into_iter());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let Some(c) = queue.lock().unwrap().next() else {
                        break;
                    };
                    run.run(c);
                }
            });
        }
    });
    let k = &run.counts;
    let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    let mut failures = run.failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.0);
    let mut kinds: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (_, kind, text) in &failures {
        kinds.entry(kind).or_default().push(text);
    }
    let count = |kind: &str| kinds.get(kind).map_or(0, Vec::len);
    let summary = format!(
        "SMARTGATE_WRITE_LEAK_SEED={seed}: {} cases, {} writes in {:.1}s; by the oracle {} allowed, {} refused, {} no-ops (conditional patch/delete matching nothing); {} unauthorized changes, {} false refusals, {} failures in all{}",
        get(&k.cases),
        get(&k.writes),
        started.elapsed().as_secs_f64(),
        get(&k.allowed),
        get(&k.refused),
        get(&k.noop),
        count(UNAUTHORIZED),
        count(FALSE_REFUSAL),
        failures.len(),
        kinds
            .iter()
            .map(|(kind, v)| format!("\n  {kind}: {}", v.len()))
            .collect::<String>(),
    );
    println!("{summary}");
    if !failures.is_empty() {
        let per_kind = env_num("SMARTGATE_WRITE_LEAK_SHOW").unwrap_or(8) as usize;
        let shown: String = kinds
            .iter()
            .map(|(kind, v)| {
                format!(
                    "\n=== {kind}: {} (first {}) ===\n{}",
                    v.len(),
                    v.len().min(per_kind),
                    v.iter()
                        .take(per_kind)
                        .copied()
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })
            .collect();
        panic!(
            "{} failures (replay with SMARTGATE_WRITE_LEAK_SEED={seed}):{shown}\n\n{summary}",
            failures.len(),
        );
    }
}
