//! Policies: what a security team adds on top of SMART scopes, written as YAML files under
//! `policies/` and loaded by the `policies:` configuration key (schema: `policies/README.md`).
//!
//! A [`PolicySet`] is every loaded policy file, compiled and validated ([`load`]). It is
//! pure: the pipeline calls three hooks and does the I/O itself:
//! 1. [`PolicySet::ceiling`] before authorize: per-client scope ceilings drop the token's
//!    data scopes that no matching ceiling covers;
//! 2. [`PolicySet::check`] after authorize: deny rules and search restrictions turn a
//!    forwarded decision into a rejection (or clamp `_count`); the operation allow-list is
//!    already in [`PolicySet::rules`], which authorize reads;
//! 3. [`PolicySet::response_pass`] on the way back: sensitivity labels hide resources and
//!    redaction removes elements. `None` when no rule applies to the client, so responses of
//!    unaffected clients are never parsed again.
//!
//! Every policy has a [`Mode`]; in `audit-only` (per policy, or per client through
//! `audit_only_clients`) everything is computed and reported in the [`PolicyNote`] of the
//! audit line, and nothing is changed.
//!
//! Documented choices:
//! - A ceiling keeps a token scope only when one ceiling scope covers it whole (same
//!   context, type `*` or the same type, every letter, and no or the same granular
//!   restriction). A broader token scope is dropped, not trimmed: fail closed.
//! - Several ceilings matching one client all apply (a scope must be within each).
//! - Deny rules match when every condition given matches (AND); a list matches when any of
//!   its entries does (OR). The first enforcing rule that matches wins.
//! - A resource hidden by a label on a read is answered like one that does not exist (404,
//!   same body): no existence oracle.
//! - Operations and compartment choices are deployment-wide: they cannot be audit-only.

pub mod cases;
pub mod load;
pub mod reload;

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::authenticate::Grant;
use crate::authorize::{Decision, Outcome, Rejection, ResponseRule, Rules};
use crate::classify::{FhirRequest, Interaction, SearchParam};
use crate::fhir::ResourceType;
use crate::scope::{Context, Letter, SmartScope, Target};

pub use load::{load_paths, parse_policy};
pub use reload::PolicyHandle;

/// Whether a policy changes requests or only reports what it would change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Decisions are applied (the default).
    #[default]
    Enforce,
    /// Decisions are computed and logged (`would_deny`), requests are forwarded unchanged.
    AuditOnly,
}

impl Mode {
    /// The audit name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::AuditOnly => "audit-only",
        }
    }
}

/// A `client_id` pattern: `*` matches any run of characters, `?` one character.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// A pattern (validated by the loader: non-empty, no whitespace).
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.to_owned())
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let (p, t): (Vec<char>, Vec<char>) = (self.0.chars().collect(), text.chars().collect());
        // Iterative wildcard matching with one backtrack point: linear in practice.
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(c) if *c == '?' || Some(c) == t.get(ti) => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p.get(pi..)
            .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
    }
}

fn any_glob(globs: &[Glob], client: Option<&str>) -> bool {
    client.is_some_and(|c| globs.iter().any(|g| g.matches(c)))
}

/// `clients: [...]` ceiling.
#[derive(Clone, Debug)]
pub struct Ceiling {
    /// The rule's name (`ceilings[n]` when unnamed).
    pub name: String,
    /// Which clients it limits.
    pub clients: Vec<Glob>,
    /// The most the clients may get.
    pub scopes: Vec<SmartScope>,
}

/// One deny rule: every condition given must match.
#[derive(Clone, Debug, Default)]
pub struct DenyRule {
    /// The rule's name, shown in the audit line.
    pub name: String,
    /// Sentence sent to the client in the OperationOutcome.
    pub message: Option<String>,
    /// Resource types (empty: any).
    pub resource_types: Vec<ResourceType>,
    /// Interactions (empty: any).
    pub interactions: Vec<Interaction>,
    /// Operation names without `$` (empty: any).
    pub operations: Vec<String>,
    /// The context of the scope that allowed the request (empty: any).
    pub contexts: Vec<Context>,
    /// `client_id` patterns (empty: any).
    pub clients: Vec<Glob>,
    /// Type of the token's `fhirUser` (empty: any).
    pub fhir_user_types: Vec<ResourceType>,
}

/// `search:` restrictions.
#[derive(Clone, Debug, Default)]
pub struct SearchRules {
    /// Parameter names refused anywhere in a request (`_has`, `_filter`, …).
    pub forbidden_parameters: Vec<String>,
    /// Refuse chained parameters (`subject.name=…`).
    pub forbid_chains: bool,
    /// `_count` above this is lowered to it (and a request without `_count` keeps the
    /// server's default).
    pub max_count: Option<u32>,
}

/// A sensitivity-label rule.
#[derive(Clone, Debug)]
pub struct LabelRule {
    /// The rule's name.
    pub name: String,
    /// The coding system of `meta.security` (any system when `None`).
    pub system: Option<String>,
    /// Codes that hide a resource.
    pub codes: Vec<String>,
    /// Clients that may see labelled resources.
    pub unless_clients: Vec<Glob>,
    /// Scopes (as spelled in the token) whose presence lets the resource through.
    pub unless_scopes: Vec<String>,
}

/// A redaction rule.
#[derive(Clone, Debug)]
pub struct RedactRule {
    /// The rule's name.
    pub name: String,
    /// Types whose elements are removed.
    pub resource_types: Vec<ResourceType>,
    /// Clients the redaction applies to.
    pub clients: Vec<Glob>,
    /// Elements to remove.
    pub fields: Vec<FieldPath>,
}

/// `identifier[system=http://…].value`-style path into a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath {
    /// The text as written (for messages).
    pub text: String,
    /// Steps from the resource root.
    pub steps: Vec<FieldStep>,
}

/// One element name, optionally keeping only the items whose `key` equals `value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldStep {
    /// The element name.
    pub name: String,
    /// `[key=value]`.
    pub filter: Option<(String, String)>,
}

/// One policy file, compiled.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// `name:`, unique across files.
    pub name: String,
    /// The file it came from.
    pub file: std::path::PathBuf,
    /// The policy's mode.
    pub mode: Mode,
    /// Clients for which this policy only reports.
    pub audit_only_clients: Vec<Glob>,
    /// Per-client ceilings.
    pub ceilings: Vec<Ceiling>,
    /// Deny rules.
    pub deny: Vec<DenyRule>,
    /// Search restrictions.
    pub search: Option<SearchRules>,
    /// Sensitivity labels.
    pub labels: Vec<LabelRule>,
    /// Redaction.
    pub redact: Vec<RedactRule>,
}

impl Policy {
    /// The mode this policy runs in for `client`.
    pub fn mode_for(&self, client: Option<&str>) -> Mode {
        if self.mode == Mode::AuditOnly || any_glob(&self.audit_only_clients, client) {
            Mode::AuditOnly
        } else {
            Mode::Enforce
        }
    }
}

/// Compartment choices a policy may fix (applied at start; a reload may not change them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CompartmentChoices {
    /// `non_member_types`, when a policy sets it.
    pub non_member_types: Option<crate::authorize::NonMemberAccess>,
    /// `actor_membership` (Observation `performer`, …), when a policy sets it.
    pub actor_membership: Option<bool>,
}

/// Every loaded policy, validated and compiled: shared read-only by requests.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    /// The policies, in load order.
    pub policies: Vec<Policy>,
    /// Authorization rules: the operation allow-list of the policies (or the built-in
    /// default) and the non-member choice.
    pub rules: Rules,
    /// Compartment choices set by a policy.
    pub compartment: CompartmentChoices,
}

/// What the policies did (or, in audit-only mode, would have done) to one request: one
/// object in the audit line.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PolicyNote {
    /// `policy/rule` that denied or changed the request (or would have).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The mode of that policy for this client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// Audit-only: the request would have been denied.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub would_deny: bool,
    /// Token scopes removed by ceilings (or that would be, in audit-only mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes_dropped: Vec<String>,
    /// `_count` lowered to this (or would be).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_clamped: Option<u32>,
    /// Resources hidden by sensitivity labels (or that would be).
    #[serde(skip_serializing_if = "is_zero")]
    pub labels_hidden: usize,
    /// Resources whose elements were redacted (or would be).
    #[serde(skip_serializing_if = "is_zero")]
    pub redacted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl PolicyNote {
    /// Whether there is nothing to log.
    pub fn is_empty(&self) -> bool {
        *self == PolicyNote::default()
    }

    fn matched(&mut self, policy: &Policy, rule: &str, mode: Mode) {
        if self.rule.is_none() || (mode == Mode::Enforce && self.mode != Some("enforce")) {
            self.rule = Some(format!("{}/{rule}", policy.name));
            self.mode = Some(mode.as_str());
        }
    }
}

/// The audit name of a forwarded or rejected decision: `allow`, `narrow`, `filter` or `deny`.
pub fn verdict_name(decision: &Decision) -> &'static str {
    match &decision.outcome {
        Outcome::Forward(plan) => match (&plan.response, plan.narrowed) {
            (_, true) => "narrow",
            (ResponseRule::Filter(_) | ResponseRule::Written(_), false) => "filter",
            (ResponseRule::PassThrough, false) => "allow",
        },
        Outcome::Reject(_) => "deny",
    }
}

/// Whether ceiling scope `c` covers token scope `t` whole.
fn covers(c: &SmartScope, t: &SmartScope) -> bool {
    let letters = [Letter::C, Letter::R, Letter::U, Letter::D, Letter::S];
    c.context == t.context
        && (c.target == Target::AnyType || c.target == t.target)
        && letters.iter().all(|l| !t.perms.has(*l) || c.perms.has(*l))
        && (c.granular.is_empty() || c.granular == t.granular)
}

/// The context whose scope allowed a forwarded request, when one did.
fn allowed_context(decision: &Decision) -> Option<Context> {
    let Outcome::Forward(plan) = &decision.outcome else {
        return None;
    };
    match &plan.response {
        ResponseRule::Filter(view) | ResponseRule::Written(view) => Some(view.context),
        ResponseRule::PassThrough => decision
            .reason
            .scope
            .as_deref()
            .and_then(|s| SmartScope::parse(s).ok().flatten())
            .map(|s| s.context),
    }
}

impl DenyRule {
    fn matches(&self, grant: &Grant, req: &FhirRequest, context: Option<Context>) -> bool {
        let types_ok = self.resource_types.is_empty()
            || req
                .resource_type
                .is_some_and(|t| self.resource_types.contains(&t));
        let interaction_ok =
            self.interactions.is_empty() || self.interactions.contains(&req.interaction);
        let op_ok = self.operations.is_empty()
            || req
                .operation
                .as_ref()
                .is_some_and(|o| self.operations.contains(&o.name));
        let ctx_ok =
            self.contexts.is_empty() || context.is_some_and(|c| self.contexts.contains(&c));
        let client_ok =
            self.clients.is_empty() || any_glob(&self.clients, grant.client_id.as_deref());
        let user_ok = self.fhir_user_types.is_empty()
            || grant
                .fhir_user_type()
                .is_some_and(|t| self.fhir_user_types.contains(&t));
        types_ok && interaction_ok && op_ok && ctx_ok && client_ok && user_ok
    }
}

impl SearchRules {
    /// The first parameter this refuses, as a sentence.
    fn refused(&self, params: &[SearchParam]) -> Option<String> {
        params.iter().find_map(|p| {
            if self.forbidden_parameters.contains(&p.name) {
                Some(format!("the search parameter {} is not allowed", p.name))
            } else if self.forbid_chains && p.chain.is_some() {
                Some(format!(
                    "chained search parameters ({}.…) are not allowed",
                    p.name
                ))
            } else {
                None
            }
        })
    }
}

fn policy_rejection(message: String) -> Outcome {
    Outcome::Reject(Rejection {
        status: 403,
        issue: "forbidden",
        message,
    })
}

impl PolicySet {
    /// No policy: built-in rules, nothing else.
    pub fn empty(rules: Rules) -> PolicySet {
        PolicySet {
            policies: Vec::new(),
            rules,
            compartment: CompartmentChoices::default(),
        }
    }

    /// Hook 1: drops the token's data scopes that a matching ceiling does not cover. The
    /// grant is cloned only when a ceiling takes something away.
    pub fn ceiling(&self, grant: Arc<Grant>, note: &mut PolicyNote) -> Arc<Grant> {
        let client = grant.client_id.as_deref();
        let mut enforced: Vec<&Ceiling> = Vec::new();
        for policy in &self.policies {
            let mode = policy.mode_for(client);
            for c in policy
                .ceilings
                .iter()
                .filter(|c| any_glob(&c.clients, client))
            {
                let dropped: Vec<&SmartScope> = grant
                    .scopes
                    .data()
                    .iter()
                    .filter(|t| !c.scopes.iter().any(|s| covers(s, t)))
                    .collect();
                if dropped.is_empty() {
                    continue;
                }
                note.matched(policy, &c.name, mode);
                for d in dropped {
                    if !note.scopes_dropped.contains(&d.raw) {
                        note.scopes_dropped.push(d.raw.clone());
                    }
                }
                if mode == Mode::Enforce {
                    enforced.push(c);
                }
            }
        }
        if enforced.is_empty() {
            return grant;
        }
        let mut limited = (*grant).clone();
        limited.scopes.retain(|t| {
            enforced
                .iter()
                .all(|c| c.scopes.iter().any(|s| covers(s, t)))
        });
        Arc::new(limited)
    }

    /// Hook 2: deny rules and search restrictions on a decision authorize has made. A
    /// rejection stays a rejection; a forward may become one (enforce) or be noted
    /// (audit-only).
    pub fn check(
        &self,
        grant: &Grant,
        req: &FhirRequest,
        decision: &mut Decision,
        note: &mut PolicyNote,
    ) {
        if !matches!(decision.outcome, Outcome::Forward(_)) {
            return;
        }
        let client = grant.client_id.as_deref();
        let context = allowed_context(decision);
        let mut deny: Option<(String, String)> = None;
        let mut clamp: Option<u32> = None;
        for policy in &self.policies {
            let mode = policy.mode_for(client);
            let enforce = mode == Mode::Enforce;
            let mut hit = |rule: &str, message: String, note: &mut PolicyNote| {
                note.matched(policy, rule, mode);
                if enforce {
                    if deny.is_none() {
                        deny = Some((format!("{}/{rule}", policy.name), message));
                    }
                } else {
                    note.would_deny = true;
                }
            };
            for rule in policy
                .deny
                .iter()
                .filter(|r| r.matches(grant, req, context))
            {
                let message = rule.message.clone().unwrap_or_else(|| {
                    "a policy of this server does not allow this request".into()
                });
                hit(&rule.name, message, note);
            }
            let Some(search) = &policy.search else {
                continue;
            };
            if let Some(message) = search.refused(&req.params) {
                hit("search", message, note);
            }
            if let Some(max) = search.max_count {
                let asked = req
                    .params
                    .iter()
                    .filter(|p| p.name == "_count")
                    .filter_map(|p| p.value.parse::<u64>().ok())
                    .max();
                if asked.is_some_and(|n| n > u64::from(max)) {
                    note.matched(policy, "search", mode);
                    note.count_clamped = Some(note.count_clamped.map_or(max, |m| m.min(max)));
                    if enforce {
                        clamp = Some(clamp.map_or(max, |m| m.min(max)));
                    }
                }
            }
        }
        if let Some((rule, message)) = deny {
            note.rule = Some(rule.clone());
            note.mode = Some(Mode::Enforce.as_str());
            decision.outcome = policy_rejection(message);
            decision.reason.code = "policy";
            decision.reason.detail = format!("denied by policy rule {rule}");
            return;
        }
        if let (Some(max), Outcome::Forward(plan)) = (clamp, &mut decision.outcome) {
            for p in plan
                .request
                .params
                .iter_mut()
                .filter(|p| p.name == "_count")
            {
                if p.value.parse::<u64>().map_or(true, |n| n > u64::from(max)) {
                    p.value = max.to_string();
                }
            }
            plan.narrowed = true;
            let target = plan.request.upstream_target();
            let detail = &mut decision.reason.detail;
            let rest = match detail.strip_prefix("narrowed to ") {
                Some(d) => d.split_once("; ").map(|(_, r)| r.to_owned()),
                None => (!detail.is_empty()).then(|| detail.clone()),
            };
            *detail = match rest {
                Some(r) => format!("narrowed to {target}; {r}"),
                None => format!("narrowed to {target}"),
            };
        }
    }

    /// Authorize, then [`PolicySet::check`]: the decision the pipeline acts on.
    pub fn decide(&self, grant: &Grant, req: &FhirRequest, note: &mut PolicyNote) -> Decision {
        let mut decision = crate::authorize::authorize(grant, req, &self.rules);
        self.check(grant, req, &mut decision, note);
        decision
    }

    /// Hook 3: the label and redaction rules that apply to this client, or `None` when no
    /// response needs a second look.
    pub fn response_pass<'p>(&'p self, grant: &Grant) -> Option<ResponsePass<'p>> {
        let client = grant.client_id.as_deref();
        let has_scope = |s: &String| {
            grant.scopes.data().iter().any(|d| d.raw == *s) || grant.scopes.has_other(s)
        };
        let mut pass = ResponsePass::default();
        for policy in &self.policies {
            let mode = policy.mode_for(client);
            for l in &policy.labels {
                let exempt =
                    any_glob(&l.unless_clients, client) || l.unless_scopes.iter().any(has_scope);
                if !exempt {
                    pass.labels.push((policy, l, mode));
                }
            }
            for r in policy
                .redact
                .iter()
                .filter(|r| any_glob(&r.clients, client))
            {
                pass.redact.push((policy, r, mode));
            }
        }
        (!pass.labels.is_empty() || !pass.redact.is_empty()).then_some(pass)
    }
}

/// The response rules that apply to one request's client.
#[derive(Default, Debug)]
pub struct ResponsePass<'p> {
    labels: Vec<(&'p Policy, &'p LabelRule, Mode)>,
    redact: Vec<(&'p Policy, &'p RedactRule, Mode)>,
}

/// A response body the pass could not read (the caller answers 502: never pass it on).
#[derive(Debug)]
pub struct UnreadableBody;

impl ResponsePass<'_> {
    /// `policy/rule` of every rule in the pass (for `explain`).
    pub fn rule_names(&self) -> Vec<String> {
        let labels = self
            .labels
            .iter()
            .map(|(p, r, _)| format!("{}/{}", p.name, r.name));
        let redact = self
            .redact
            .iter()
            .map(|(p, r, _)| format!("{}/{}", p.name, r.name));
        labels.chain(redact).collect()
    }

    /// A single resource: `Ok(None)` when it must be hidden, else the body to send (the
    /// input unchanged unless something was redacted).
    pub fn single(
        &self,
        body: &[u8],
        note: &mut PolicyNote,
    ) -> Result<Option<Vec<u8>>, UnreadableBody> {
        let mut v: Value = serde_json::from_slice(body).map_err(|_| UnreadableBody)?;
        if !self.apply(&mut v, note) {
            return Ok(None);
        }
        serde_json::to_vec(&v).map(Some).map_err(|_| UnreadableBody)
    }

    /// Applies labels and redaction to `v` (a resource; for a Bundle, each entry's
    /// resource too). `false`: `v` itself must be hidden.
    pub fn apply(&self, v: &mut Value, note: &mut PolicyNote) -> bool {
        if !self.visible(v, note) {
            return false;
        }
        if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
            let mut removed = false;
            if let Some(entries) = v.get_mut("entry").and_then(Value::as_array_mut) {
                entries.retain_mut(|e| match e.get_mut("resource") {
                    Some(r) => {
                        let keep = self.apply(r, note);
                        removed |= !keep;
                        keep
                    }
                    None => true,
                });
                if entries.is_empty()
                    && let Some(obj) = v.as_object_mut()
                {
                    obj.remove("entry");
                }
            }
            if removed && let Some(obj) = v.as_object_mut() {
                obj.remove("total");
            }
            return true;
        }
        self.redact(v, note);
        true
    }

    fn visible(&self, v: &Value, note: &mut PolicyNote) -> bool {
        let Some(codings) = v.pointer("/meta/security").and_then(Value::as_array) else {
            return true;
        };
        let mut visible = true;
        let mut hit_any = false;
        for (policy, rule, mode) in &self.labels {
            let hit = codings.iter().any(|c| {
                let code_ok = c
                    .get("code")
                    .and_then(Value::as_str)
                    .is_some_and(|code| rule.codes.iter().any(|x| x == code));
                let system_ok = rule
                    .system
                    .as_deref()
                    .is_none_or(|s| c.get("system").and_then(Value::as_str) == Some(s));
                code_ok && system_ok
            });
            if hit {
                hit_any = true;
                note.matched(policy, &rule.name, *mode);
                if *mode == Mode::Enforce {
                    visible = false;
                }
            }
        }
        // Counted once per resource, hidden or (audit-only) that would have been.
        if hit_any {
            note.labels_hidden += 1;
        }
        visible
    }

    fn redact(&self, v: &mut Value, note: &mut PolicyNote) {
        let Some(rtype) = v
            .get("resourceType")
            .and_then(Value::as_str)
            .and_then(ResourceType::parse)
        else {
            return;
        };
        let mut changed = false;
        for (policy, rule, mode) in &self.redact {
            if !rule.resource_types.contains(&rtype) {
                continue;
            }
            let mut would = false;
            for f in &rule.fields {
                would |= match mode {
                    Mode::Enforce => remove_path(v, &f.steps),
                    Mode::AuditOnly => present(v, &f.steps),
                };
            }
            if would {
                note.matched(policy, &rule.name, *mode);
                changed = true;
            }
        }
        if changed {
            note.redacted += 1;
        }
    }
}

fn step_matches(item: &Value, step: &FieldStep) -> bool {
    match &step.filter {
        None => true,
        Some((k, want)) => item.get(k).and_then(Value::as_str) == Some(want.as_str()),
    }
}

/// Whether `steps` select anything in `v`.
fn present(v: &Value, steps: &[FieldStep]) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return true;
    };
    let Some(child) = v.get(&step.name) else {
        return false;
    };
    let items: Vec<&Value> = match child {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    items
        .into_iter()
        .filter(|i| step_matches(i, step))
        .any(|i| present(i, rest))
}

/// Removes what `steps` select from `v`; whether anything was removed. Arrays left empty
/// are removed too (FHIR JSON has no empty arrays).
fn remove_path(v: &mut Value, steps: &[FieldStep]) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return false;
    };
    let Some(obj) = v.as_object_mut() else {
        return false;
    };
    let Some(child) = obj.get_mut(&step.name) else {
        return false;
    };
    let removed = if rest.is_empty() {
        match (child, &step.filter) {
            (_, None) => {
                obj.remove(&step.name);
                return true;
            }
            (Value::Array(a), Some(_)) => {
                let before = a.len();
                a.retain(|i| !step_matches(i, step));
                before != a.len()
            }
            (single, Some(_)) => {
                if step_matches(single, step) {
                    obj.remove(&step.name);
                    return true;
                }
                false
            }
        }
    } else {
        match child {
            Value::Array(a) => {
                let mut any = false;
                for i in a.iter_mut().filter(|i| step_matches(i, step)) {
                    any |= remove_path(i, rest);
                }
                any
            }
            single => step_matches(single, step) && remove_path(single, rest),
        }
    };
    if obj
        .get(&step.name)
        .is_some_and(|c| c.as_array().is_some_and(Vec::is_empty))
    {
        obj.remove(&step.name);
    }
    removed
}

#[cfg(test)]
mod tests;
