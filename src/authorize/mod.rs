//! Stage 3, **authorize**: [`Grant`] + [`FhirRequest`] ⇒ [`Decision`].
//!
//! Pure: no I/O, no clock. A `Decision` says what to forward (possibly narrowed), what
//! must be checked before a write goes out, and how the response must be filtered; or it
//! rejects with a status and a reason. Every decision carries a machine-readable
//! [`Reason`] for the audit line and a human sentence for the OperationOutcome.
//!
//! ## How a request is decided
//! Scopes are a union: the request is allowed when *some* context allows it, tried in
//! this order (the first that needs the least narrowing wins):
//! 1. `system/` (Backend Services tokens only: no `fhirUser`, no `patient`) or `user/`
//!    scopes **without** granular restrictions ⇒ forwarded as asked,
//!    [`ResponseRule::PassThrough`] for single resources; Bundles (searches, history,
//!    operations) always get a [`ResponseRule::Filter`], which rewrites their upstream
//!    links and judges `_include`/`_revinclude` types the grant may not cover;
//! 2. `patient/` scopes, confined to the launch patient's compartment (see below);
//! 3. granular `user/`/`system/` scopes ⇒ filtered, and searches narrowed.
//!
//! Every letter an interaction needs must be granted within one context.
//!
//! ## Documented choices
//! - **Granular scopes on searches are narrowed, never refused**: if the search already
//!   carries every restriction of one granted granular scope it goes as asked; if every
//!   granular scope is a single restriction on the same parameter they are OR-ed into one
//!   `name=v1,v2`; otherwise the first granular scope (token order) is added. The response
//!   filter still judges each resource. Narrowing always succeeds, which keeps decisions
//!   monotonic (adding a scope never turns an allow into a deny).
//! - **`_elements` and `_summary` are removed** whenever the response is filtered, so the
//!   filter sees the reference fields it judges by (`_summary=count` then returns a
//!   filtered Bundle instead of a bare, unfiltered count).
//! - **History under patient context**: instance history (`T/id/_history`) is forwarded
//!   and filtered version by version; type and system history are refused (403): FHIR
//!   history takes no search parameters, so they cannot be pinned to the patient.
//! - **Non-member types** (Practitioner, Medication, …) under `patient/` scopes follow
//!   [`Rules::non_member_types`]; searches on them are not pinned (there is no patient
//!   parameter), except Device, which is pinned by its `patient` parameter. Conditional
//!   update/patch/delete on them is refused (403): it is never pre-read, so nothing would
//!   stop it from changing another patient's Binary.
//! - **Operations** are refused unless [`Rules::operations`] names them. Under a
//!   `patient/` grant only `$everything` on the launch patient is allowed (other operations
//!   answer with shapes the filter cannot judge). `$export` additionally needs a
//!   `system/` grant covering the exported types.
//! - **Batch/transaction** are never decided here: the pipeline splits the Bundle and
//!   decides each entry; the interaction itself is refused (`bundle-not-split`).

mod narrow;

use std::collections::BTreeMap;

use crate::authenticate::Grant;
use crate::classify::{FhirRequest, Interaction, OperationLevel};
use crate::fhir::ResourceType;
use crate::scope::{Context, Letter, SmartScope, Target};

/// The verdict on one request (or one batch/transaction entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Forward or reject.
    pub outcome: Outcome,
    /// Why, for the audit line.
    pub reason: Reason,
}

/// Forward (with a plan) or reject.
// One Decision is made per request (or Bundle entry) and moved along, never stored in
// bulk: boxing the plan would add an allocation to every request for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send the plan's request upstream.
    Forward(Plan),
    /// Answer the client directly.
    Reject(Rejection),
}

/// What to send upstream and what to check around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The request to send, narrowed where needed. Re-encoded, never the original string.
    pub request: FhirRequest,
    /// Whether `request` differs from what the client asked (parameters added/pinned).
    pub narrowed: bool,
    /// Update/patch/delete (and their conditional forms) under a patient/ or granular
    /// grant: the current version is read upstream first and judged by this view's write
    /// letter ([`crate::write::Judge::current`]), and the write is pinned to it with
    /// `If-Match`.
    pub precheck: Option<View>,
    /// Create/update (and the result of a patch): the resource that would be stored is
    /// judged by this view's write letter ([`crate::write::Judge::new_content`]).
    pub body_check: Option<View>,
    /// How the response must be judged.
    pub response: ResponseRule,
}

/// How a response is judged before it leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseRule {
    /// Stream through unchanged (user/system grants with no granular restriction).
    PassThrough,
    /// Every resource returned (the resource itself, or every Bundle entry, includes and
    /// history versions alike) must be visible under the view; Bundles are filtered,
    /// a single resource that fails is answered like one that does not exist.
    Filter(View),
    /// The answer to a checked write (the view holds the write letter): status,
    /// `Location`, `ETag` and `Last-Modified` always leave; the resource body only when the
    /// same context's read (`r`) scopes would show it, otherwise an OperationOutcome saying
    /// the write succeeded. Write-only grants learn that they wrote, not what is stored.
    Written(View),
}

/// Which data a grant may see: the lens the response filter and write checks apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The context whose scopes allowed the request.
    pub context: Context,
    /// The compartment owner (launch patient) for `Context::Patient`; `None` otherwise.
    pub patient: Option<String>,
    /// The letter whose scopes (and their granular restrictions) judge each resource:
    /// `R` for reads, `S` for searches and history.
    pub letter: Letter,
}

/// A rejection the proxy answers itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// 400, 403, 404, 405, 406, 415, …
    pub status: u16,
    /// A FHIR `IssueType` code: `forbidden`, `invalid`, `not-supported`, `not-found`, …
    pub issue: &'static str,
    /// One sentence for the app developer (no data the caller may not see).
    pub message: String,
}

/// Why a decision was made, machine-readable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    /// A stable code: `scope`, `no-scope`, `no-patient-context`, `compartment`,
    /// `operation-not-allowed`, `forbidden-parameter`, `capabilities`, …
    pub code: &'static str,
    /// The scope that allowed the request, as the token spelled it.
    pub scope: Option<String>,
    /// Free text detail for the audit line (invalid scopes ignored, what was narrowed, …).
    pub detail: String,
}

/// Pure configuration of what scopes alone cannot say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Operations allowed, by name without `$`. Anything not named here is refused
    /// (`operation-not-allowed`), `$graphql` included.
    pub operations: BTreeMap<String, OperationRule>,
    /// What `patient/` scopes on types outside the Patient compartment grant.
    pub non_member_types: NonMemberAccess,
}

impl Default for Rules {
    /// `$everything` on a Patient instance, needing `r` and `s` on Patient (its response
    /// is filtered like a search); non-member types readable when granted.
    fn default() -> Self {
        let everything = OperationRule {
            levels: vec![OperationLevel::Instance],
            types: vec![ResourceType::PATIENT],
            letters: vec![Letter::R, Letter::S],
        };
        Rules {
            operations: BTreeMap::from([("everything".to_owned(), everything)]),
            non_member_types: NonMemberAccess::default(),
        }
    }
}

/// Where an allowed operation may be invoked and what it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationRule {
    /// Levels it may be invoked at.
    pub levels: Vec<OperationLevel>,
    /// Types it may be invoked on at type/instance level; empty means any type.
    pub types: Vec<ResourceType>,
    /// Letters needed on the invoked type (on `*` at system level; on each `_type` for
    /// `$export`). An empty list grants nothing (fail closed).
    pub letters: Vec<Letter>,
}

/// What `patient/` scopes grant on non-member types (Practitioner, Medication, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NonMemberAccess {
    /// A `patient/Practitioner.rs` scope lets the app read Practitioners (what patient
    /// apps and Inferno expect); the filter still applies.
    #[default]
    WhenGranted,
    /// `patient/` scopes grant only compartment members.
    Deny,
}

/// Decides one request (or one batch/transaction entry) for one grant. Never panics,
/// never fails open: anything it cannot place is a rejection with a reason.
pub fn authorize(grant: &Grant, req: &FhirRequest, rules: &Rules) -> Decision {
    let mut d = decide(grant, req, rules);
    let invalid = grant.scopes.invalid();
    if !invalid.is_empty() {
        let detail = &mut d.reason.detail;
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str("ignored invalid scopes:");
        for i in invalid {
            detail.push_str(&format!(" {} ({});", i.raw, i.error));
        }
    }
    d
}

const R: &[Letter] = &[Letter::R];
const S: &[Letter] = &[Letter::S];
const C: &[Letter] = &[Letter::C];
const U: &[Letter] = &[Letter::U];
const D: &[Letter] = &[Letter::D];
const US: &[Letter] = &[Letter::U, Letter::S];
const DS: &[Letter] = &[Letter::D, Letter::S];

/// Which types a request touches.
enum Types {
    One(ResourceType),
    /// `_type=A,B` on a system search or `$export`.
    List(Vec<ResourceType>),
    /// Every type: system search/history without `_type`, `Patient/id/*`, system-level
    /// operations.
    Wildcard,
}

/// What a request needs from the scopes.
struct Need<'r> {
    types: Types,
    letters: &'r [Letter],
    /// The letter the response (and write checks) are judged by.
    view_letter: Letter,
}

fn decide(grant: &Grant, req: &FhirRequest, rules: &Rules) -> Decision {
    match req.interaction {
        Interaction::Capabilities => {
            return allow(
                plan(req.clone(), ResponseRule::PassThrough),
                "capabilities",
                None,
            );
        }
        Interaction::Batch | Interaction::Transaction => {
            return deny(
                400,
                "bundle-not-split",
                "batch and transaction entries must be authorized one by one",
                None,
            );
        }
        _ => {}
    }
    let need = match need(req, rules) {
        Ok(n) => n,
        Err(d) => return *d,
    };
    let mut denial: Option<Decision> = None;
    let backend = grant.fhir_user.is_none() && grant.patient.is_none();
    let open = |ctx: Context, granular_ok: bool| {
        if ctx == Context::System && !backend {
            return Verdict::NotGranted;
        }
        open_context(grant, req, &need, ctx, granular_ok)
    };
    let passes = [
        (Some(Context::System), false),
        (Some(Context::User), false),
        (None, true),
        (Some(Context::System), true),
        (Some(Context::User), true),
    ];
    for (ctx, granular_ok) in passes {
        let verdict = match (ctx, grant.patient.as_deref()) {
            (Some(ctx), _) => open(ctx, granular_ok),
            (None, Some(a)) => patient_context(grant, req, rules, &need, a),
            (None, None) => Verdict::NotGranted,
        };
        match verdict {
            Verdict::Allow(d) => return d,
            Verdict::Deny(d) => {
                denial.get_or_insert(d);
            }
            Verdict::NotGranted => {}
        }
    }
    if let Some(d) = fhir_user_self_read(grant, req) {
        return d;
    }
    denial.unwrap_or_else(|| nothing_granted(grant, &need))
}

/// A rejection decided early, boxed to keep `Result`s small.
type Denied = Box<Decision>;

enum Verdict {
    Allow(Decision),
    Deny(Decision),
    NotGranted,
}

fn need<'r>(req: &FhirRequest, rules: &'r Rules) -> Result<Need<'r>, Denied> {
    let one = || {
        req.resource_type.map(Types::One).ok_or_else(|| {
            Box::new(deny(
                400,
                "invalid-request",
                "the request names no resource type",
                None,
            ))
        })
    };
    let (types, letters): (Types, &[Letter]) = match req.interaction {
        Interaction::Read | Interaction::Vread | Interaction::HistoryInstance => (one()?, R),
        Interaction::SearchType | Interaction::HistoryType => (one()?, S),
        Interaction::Create | Interaction::ConditionalCreate => (one()?, C),
        Interaction::Update | Interaction::Patch => (one()?, U),
        Interaction::Delete => (one()?, D),
        Interaction::ConditionalUpdate | Interaction::ConditionalPatch => (one()?, US),
        Interaction::ConditionalDelete => (one()?, DS),
        Interaction::HistorySystem => (Types::Wildcard, S),
        Interaction::SearchSystem => (type_list(req)?.unwrap_or(Types::Wildcard), S),
        Interaction::SearchCompartment => {
            (req.resource_type.map_or(Types::Wildcard, Types::One), S)
        }
        Interaction::Operation => return operation_need(req, rules),
        Interaction::Capabilities | Interaction::Batch | Interaction::Transaction => {
            return Err(Box::new(deny(
                400,
                "invalid-request",
                "not decided here",
                None,
            )));
        }
    };
    let view_letter = letters.first().copied().unwrap_or(Letter::R);
    Ok(Need {
        types,
        letters,
        view_letter,
    })
}

/// `_type=A,B`: once, no modifier, every entry an R4 type.
fn type_list(req: &FhirRequest) -> Result<Option<Types>, Denied> {
    let bad = || {
        Box::new(deny(
            400,
            "invalid-parameter",
            "_type must list R4 resource types, once",
            None,
        ))
    };
    let mut found = req.params.iter().filter(|p| p.name == "_type");
    let Some(p) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() || p.modifier.is_some() || p.chain.is_some() {
        return Err(bad());
    }
    let list = p
        .value
        .split(',')
        .map(ResourceType::parse)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)?;
    Ok(Some(Types::List(list)))
}

fn operation_need<'r>(req: &FhirRequest, rules: &'r Rules) -> Result<Need<'r>, Denied> {
    let refuse = |why: &str| {
        Err(Box::new(deny(
            403,
            "operation-not-allowed",
            format!("this operation is not allowed{why}"),
            None,
        )))
    };
    let Some(op) = &req.operation else {
        return refuse("");
    };
    let Some(rule) = rules.operations.get(&op.name) else {
        return refuse("");
    };
    if !rule.levels.contains(&op.level) {
        return refuse(" at this level");
    }
    let types = match (op.level, req.resource_type) {
        (OperationLevel::System, _) => Types::Wildcard,
        (_, Some(t)) if rule.types.is_empty() || rule.types.contains(&t) => Types::One(t),
        _ => return refuse(" on this type"),
    };
    let types = match (op.name.as_str(), type_list(req)?) {
        ("export", Some(list)) => list,
        // Without `_type` an export holds every type, whatever it is invoked on
        // (`Group/1/$export` is not a read of the Group).
        ("export", None) => Types::Wildcard,
        _ => types,
    };
    let view_letter = if rule.letters.contains(&Letter::S) {
        Letter::S
    } else {
        rule.letters.first().copied().unwrap_or(Letter::R)
    };
    Ok(Need {
        types,
        letters: &rule.letters,
        view_letter,
    })
}

/// How well one context's scopes cover a need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cover {
    None,
    /// Only through granular scopes (or, for a wildcard need, through per-type scopes).
    Granular,
    Plain,
}

fn cover_one(
    grant: &Grant,
    ctx: Context,
    t: Option<ResourceType>,
    letter: Letter,
) -> (Cover, Option<&SmartScope>) {
    let mut best: (Cover, Option<&SmartScope>) = (Cover::None, None);
    for s in grant.scopes.data() {
        if s.context != ctx || !s.perms.has(letter) {
            continue;
        }
        let c = match t {
            Some(t) if s.target.covers(t) && s.granular.is_empty() => Cover::Plain,
            Some(t) if s.target.covers(t) => Cover::Granular,
            Some(_) => Cover::None,
            None if s.target == Target::AnyType && s.granular.is_empty() => Cover::Plain,
            None => Cover::Granular,
        };
        if c > best.0 {
            best = (c, Some(s));
        }
    }
    best
}

fn coverage<'g>(
    grant: &'g Grant,
    ctx: Context,
    need: &Need<'_>,
) -> (Cover, Option<&'g SmartScope>) {
    let mut worst = if need.letters.is_empty() {
        Cover::None
    } else {
        Cover::Plain
    };
    let mut first = None;
    let mut check = |t: Option<ResourceType>| {
        for &l in need.letters {
            let (c, s) = cover_one(grant, ctx, t, l);
            worst = worst.min(c);
            first = first.or(s);
        }
    };
    match &need.types {
        Types::One(t) => check(Some(*t)),
        Types::List(list) => list.iter().for_each(|t| check(Some(*t))),
        Types::Wildcard => check(None),
    }
    (worst, first)
}

fn plan(request: FhirRequest, response: ResponseRule) -> Plan {
    Plan {
        request,
        narrowed: false,
        precheck: None,
        body_check: None,
        response,
    }
}

fn allow(plan: Plan, code: &'static str, scope: Option<&SmartScope>) -> Decision {
    let detail = if plan.narrowed {
        format!("narrowed to {}", plan.request.upstream_target())
    } else {
        String::new()
    };
    Decision {
        outcome: Outcome::Forward(plan),
        reason: Reason {
            code,
            scope: scope.map(|s| s.raw.clone()),
            detail,
        },
    }
}

fn deny(
    status: u16,
    code: &'static str,
    message: impl Into<String>,
    scope: Option<&SmartScope>,
) -> Decision {
    Decision {
        outcome: Outcome::Reject(Rejection {
            status,
            issue: if status == 403 {
                "forbidden"
            } else {
                "invalid"
            },
            message: message.into(),
        }),
        reason: Reason {
            code,
            scope: scope.map(|s| s.raw.clone()),
            detail: String::new(),
        },
    }
}

fn is_search(i: Interaction) -> bool {
    matches!(
        i,
        Interaction::SearchType | Interaction::SearchSystem | Interaction::SearchCompartment
    )
}

/// Interactions whose parameters select resources (searches and conditional criteria).
fn has_criteria(i: Interaction) -> bool {
    is_search(i)
        || matches!(
            i,
            Interaction::ConditionalCreate
                | Interaction::ConditionalUpdate
                | Interaction::ConditionalPatch
                | Interaction::ConditionalDelete
        )
}

/// Whether a search of `t` under a `patient/` grant is pinned to the launch patient (a
/// compartment member, or Device): entries of such a type that the filter removes from
/// a patient's search are results the upstream returned despite the pin.
pub fn is_pinned_type(t: ResourceType) -> bool {
    narrow::is_member_like(t)
}

/// Adds the checks a write needs when the grant cannot write everything (see
/// [`crate::write`]): the current version is read and judged first (update, patch, delete
/// and their conditional forms, whose one match is resolved first), the new content is
/// judged (create, update, patch), and the answer is judged as a write result.
fn write_checks(plan: &mut Plan, i: Interaction, view: &View) {
    let (pre, body) = match i {
        Interaction::Update
        | Interaction::Patch
        | Interaction::ConditionalUpdate
        | Interaction::ConditionalPatch => (true, true),
        Interaction::Delete | Interaction::ConditionalDelete => (true, false),
        Interaction::Create | Interaction::ConditionalCreate => (false, true),
        _ => return,
    };
    plan.precheck = pre.then(|| view.clone());
    plan.body_check = body.then(|| view.clone());
    plan.response = ResponseRule::Written(view.clone());
}

/// The letter whose granular restrictions narrow the criteria of `i`.
fn criteria_letter(i: Interaction) -> Letter {
    if i == Interaction::ConditionalCreate {
        Letter::C
    } else {
        Letter::S
    }
}

/// Narrows the criteria of a single-type request by the granular scopes of `ctx`, unless
/// a plain scope covers the criteria letter. `Err` when no granular scope is usable.
fn narrow_by_granular(grant: &Grant, ctx: Context, plan: &mut Plan) -> Result<(), Denied> {
    let i = plan.request.interaction;
    let Some(t) = plan.request.resource_type else {
        return Ok(());
    };
    if !has_criteria(i) {
        return Ok(());
    }
    let letter = criteria_letter(i);
    let scopes: Vec<&SmartScope> = grant.scopes.matching(ctx, t, letter).collect();
    if scopes.iter().any(|s| s.granular.is_empty()) {
        return Ok(());
    }
    match narrow::granular(&mut plan.request.params, &scopes) {
        Some(changed) => {
            plan.narrowed |= changed;
            Ok(())
        }
        None => Err(Box::new(deny(
            403,
            "granular-scope",
            "the granted granular scopes cannot be applied to this search",
            scopes.first().copied(),
        ))),
    }
}

/// `user/` and `system/` contexts: type + interaction, granular scopes narrowed/filtered.
fn open_context(
    grant: &Grant,
    req: &FhirRequest,
    need: &Need<'_>,
    ctx: Context,
    granular_ok: bool,
) -> Verdict {
    let (cov, scope) = coverage(grant, ctx, need);
    match cov {
        Cover::None => return Verdict::NotGranted,
        Cover::Granular if !granular_ok => return Verdict::NotGranted,
        _ => {}
    }
    let view = View {
        context: ctx,
        patient: None,
        letter: need.view_letter,
    };
    let granular = cov == Cover::Granular;
    let i = req.interaction;
    // A Bundle carries paging links and fullUrls of the upstream: it is always read and
    // rewritten (and judged), never streamed as the upstream wrote it.
    let rule = if returns_bundle(i) {
        ResponseRule::Filter(view.clone())
    } else {
        ResponseRule::PassThrough
    };
    let mut p = plan(req.clone(), rule);
    if has_criteria(i) {
        if let Err(message) = narrow::side_channels(grant, ctx, &req.params) {
            return Verdict::Deny(deny(403, "forbidden-parameter", message, scope));
        }
        if req
            .params
            .iter()
            .any(|p| p.name == "_include" || p.name == "_revinclude")
        {
            p.response = ResponseRule::Filter(view.clone());
        }
    }
    if let Some(op) = &req.operation {
        if op.name == "export" && ctx != Context::System {
            return Verdict::Deny(deny(
                403,
                "operation-not-allowed",
                "$export needs system/ scopes",
                scope,
            ));
        }
        if op.name == "export" && granular {
            // A wildcard export is only "granular" when per-type scopes exist: no `*`.
            let code = if matches!(need.types, Types::Wildcard) {
                "no-scope"
            } else {
                "granular-scope"
            };
            return Verdict::Deny(deny(
                403,
                code,
                "$export needs unrestricted system/ scopes on every exported type",
                scope,
            ));
        }
        if op.name == "everything" {
            p.response = ResponseRule::Filter(view.clone());
        }
    }
    // A write by a grant that may not read the type here: its answer is judged as a
    // write result (status and headers; the resource only if readable).
    if writes(i)
        && !granular
        && req
            .resource_type
            .is_none_or(|t| cover_one(grant, ctx, Some(t), Letter::R).0 != Cover::Plain)
    {
        p.response = ResponseRule::Written(view.clone());
    }
    if granular {
        let multi = matches!(need.types, Types::List(_));
        if i == Interaction::HistoryType || multi {
            return Verdict::Deny(deny(
                403,
                "granular-scope",
                "granular scopes cannot be applied to a history or multi-type request",
                scope,
            ));
        }
        p.response = ResponseRule::Filter(view.clone());
        write_checks(&mut p, i, &view);
        if let Err(d) = narrow_by_granular(grant, ctx, &mut p) {
            return Verdict::Deny(*d);
        }
    }
    if matches!(p.response, ResponseRule::Filter(_)) {
        p.narrowed |= narrow::neutralize(&mut p.request.params);
    }
    Verdict::Allow(allow(p, "scope", scope))
}

/// `patient/` context: everything confined to the compartment of the launch patient `a`.
fn patient_context(
    grant: &Grant,
    req: &FhirRequest,
    rules: &Rules,
    need: &Need<'_>,
    a: &str,
) -> Verdict {
    let (cov, scope) = coverage(grant, Context::Patient, need);
    if cov == Cover::None {
        return Verdict::NotGranted;
    }
    let forbid = |code: &'static str, message: &str| Verdict::Deny(deny(403, code, message, scope));
    let view = View {
        context: Context::Patient,
        patient: Some(a.to_owned()),
        letter: need.view_letter,
    };
    let mut p = plan(req.clone(), ResponseRule::Filter(view.clone()));
    let i = req.interaction;
    let rtype = req.resource_type;
    let types: Vec<ResourceType> = match &need.types {
        Types::List(l) => l.clone(),
        Types::One(t) => vec![*t],
        Types::Wildcard => Vec::new(),
    };
    if rules.non_member_types == NonMemberAccess::Deny
        && types.iter().any(|t| !narrow::is_member_like(*t))
    {
        return forbid(
            "non-member",
            "patient/ scopes do not cover this resource type",
        );
    }
    let is_patient = rtype == Some(ResourceType::PATIENT);
    let names_a = req.id.as_deref() == Some(a);
    let mut pin = true;
    match i {
        Interaction::Create | Interaction::ConditionalCreate if is_patient => {
            return forbid("compartment", "a patient/ grant cannot create a Patient");
        }
        Interaction::Update | Interaction::Patch | Interaction::Delete
            if is_patient && !names_a =>
        {
            return forbid(
                "compartment",
                "a patient/ grant can only change the launch patient",
            );
        }
        Interaction::HistoryType | Interaction::HistorySystem => {
            return forbid(
                "history-not-narrowable",
                "type and system history cannot be confined to the patient; use instance history",
            );
        }
        Interaction::SearchCompartment => {
            let ours = req
                .compartment
                .as_ref()
                .is_some_and(|c| c.owner == ResourceType::PATIENT && c.id == a);
            if !ours {
                return forbid(
                    "compartment",
                    "only the launch patient's compartment may be searched",
                );
            }
            pin = false;
        }
        Interaction::SearchSystem if types.is_empty() => {
            return forbid(
                "compartment",
                "a system search needs _type under a patient/ grant",
            );
        }
        Interaction::Operation => {
            let everything = req
                .operation
                .as_ref()
                .is_some_and(|o| o.name == "everything");
            if !everything {
                return forbid(
                    "operation-not-allowed",
                    "only $everything is allowed under a patient/ grant",
                );
            }
            if !(is_patient && names_a) {
                return forbid(
                    "compartment",
                    "$everything is allowed on the launch patient only",
                );
            }
        }
        _ => {}
    }
    write_checks(&mut p, i, &view);
    if has_criteria(i) {
        let system = i == Interaction::SearchSystem;
        if let Some(bad) = req
            .params
            .iter()
            .find(|p| narrow::forbidden_under_patient(p, system))
        {
            return forbid(
                "forbidden-parameter",
                &format!("{} is not allowed under a patient/ grant", bad.name),
            );
        }
        let member_types: Vec<ResourceType> = types
            .iter()
            .copied()
            .filter(|t| narrow::is_member_like(*t))
            .collect();
        // A conditional write is never pre-read, so only its (pinned) criteria keep it
        // inside the compartment: a type that cannot be pinned (Binary, Practitioner, …)
        // would let it change anyone's resource.
        let conditional_write = matches!(
            i,
            Interaction::ConditionalUpdate
                | Interaction::ConditionalPatch
                | Interaction::ConditionalDelete
        );
        if conditional_write && member_types.is_empty() {
            return forbid(
                "compartment",
                "a conditional write under a patient/ grant needs a type the search can be confined to",
            );
        }
        let pin = pin && !member_types.is_empty();
        if pin && member_types.len() != types.len() {
            return forbid(
                "compartment",
                "member and non-member types cannot be searched together",
            );
        }
        match narrow::compartment(&mut p.request.params, &member_types, a, pin) {
            Ok(changed) => p.narrowed |= changed,
            Err(message) => return forbid("compartment", message),
        }
        if cov == Cover::Granular && !matches!(need.types, Types::List(_)) {
            if let Err(d) = narrow_by_granular(grant, Context::Patient, &mut p) {
                return Verdict::Deny(*d);
            }
        } else if cov == Cover::Granular {
            return forbid(
                "granular-scope",
                "granular scopes cannot be applied to a multi-type search",
            );
        }
    }
    p.narrowed |= narrow::neutralize(&mut p.request.params);
    Verdict::Allow(allow(p, "scope", scope))
}

/// Interactions that change data.
fn writes(i: Interaction) -> bool {
    matches!(
        i,
        Interaction::Create
            | Interaction::ConditionalCreate
            | Interaction::Update
            | Interaction::Patch
            | Interaction::Delete
            | Interaction::ConditionalUpdate
            | Interaction::ConditionalPatch
            | Interaction::ConditionalDelete
    )
}

/// Interactions whose response is a Bundle.
fn returns_bundle(i: Interaction) -> bool {
    matches!(
        i,
        Interaction::SearchType
            | Interaction::SearchSystem
            | Interaction::SearchCompartment
            | Interaction::HistoryInstance
            | Interaction::HistoryType
            | Interaction::HistorySystem
            | Interaction::Operation
    )
}

/// `openid fhirUser`: the signed-in user may read their own resource.
fn fhir_user_self_read(grant: &Grant, req: &FhirRequest) -> Option<Decision> {
    if !matches!(req.interaction, Interaction::Read | Interaction::Vread)
        || !grant.scopes.has_other("fhirUser")
    {
        return None;
    }
    let user = grant.fhir_user.as_deref()?;
    let id = user.trim_end_matches('/').rsplit('/').next()?;
    if grant.fhir_user_type()? != req.resource_type? || req.id.as_deref() != Some(id) {
        return None;
    }
    Some(allow(
        plan(req.clone(), ResponseRule::PassThrough),
        "fhir-user",
        None,
    ))
}

fn nothing_granted(grant: &Grant, need: &Need<'_>) -> Decision {
    let patient_would =
        grant.patient.is_none() && coverage(grant, Context::Patient, need).0 != Cover::None;
    if patient_would {
        return deny(
            403,
            "no-patient-context",
            "patient/ scopes grant nothing without a launch patient",
            None,
        );
    }
    let mut d = deny(
        403,
        "no-scope",
        "the token's scopes do not allow this request",
        None,
    );
    let system_would = grant
        .scopes
        .data()
        .iter()
        .any(|s| s.context == Context::System);
    if system_would && (grant.fhir_user.is_some() || grant.patient.is_some()) {
        d.reason.detail = "system/ scopes are ignored for tokens with a user or patient".to_owned();
    }
    d
}
