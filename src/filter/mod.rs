//! Stage 6, **filter**: what may come back. Every resource in a response is judged on its
//! own content against the [`View`] the request was allowed under; Bundles lose the
//! entries that fail, single resources that fail are answered like missing ones.
//!
//! Rules of [`check_resource`], in order:
//! 1. `OperationOutcome` is always visible (warnings in a searchset, errors).
//! 2. The type must be granted for `view.context` and `view.letter`; when every matching
//!    scope is granular, the resource must match one of them ([`granular::matches`];
//!    an unsupported restriction matches nothing).
//! 3. User/system context: nothing more (the proxy cannot see per-record user rights).
//! 4. Patient context needs `view.patient`; then: member types must be in the patient's
//!    compartment ([`is_member`]); a nested `Bundle` is hidden (it can carry anyone's
//!    data); `Binary` is visible only through its `securityContext` (`Patient/A` ⇒
//!    visible, another resource ⇒ [`Visibility::NeedsLookup`], nothing ⇒ hidden); other
//!    non-member types follow [`NonMemberAccess`], and with `WhenGranted` a non-member
//!    that has a `patient` search parameter (e.g. `Device`) is hidden when that names a
//!    patient other than A.
//!
//! [`filter_bundle`] reads the Bundle in one pass (entries and resources as fields of
//! borrowed raw JSON, only the elements a decision needs parsed) and copies the fields of
//! kept entries byte for byte. Documented choices:
//! - `NeedsLookup` entries are removed (a Binary in a Bundle is rare; the lead can
//!   re-fetch by id).
//! - Entries without a resource (history deletes, batch responses) are removed in patient
//!   context (their `request.url`/`fullUrl` reveal ids); in user/system context they are
//!   kept only when the type in `request.url` (else `fullUrl`) is granted without a
//!   granular restriction.
//! - `total` is dropped when anything was removed, an emptied `entry` or `link` array is
//!   dropped (FHIR JSON forbids empty arrays).
//! - Invalid, truncated or non-UTF-8 JSON, a non-Bundle, and duplicate keys at the
//!   Bundle, entry or any inspected resource level are [`FilterError`]s (map to 502).

mod json;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::authenticate::Grant;
pub use crate::authorize::NonMemberAccess;
use crate::authorize::View;
use crate::compartment::definition::is_member_type;
use crate::compartment::fhirpath::{Expr, reference_type, split_reference};
use crate::compartment::granular;
use crate::compartment::membership::{self, MembershipOptions, is_member, patient_id};
use crate::fhir::ResourceType;
use crate::scope::{Context, SmartScope};

/// Deployment facts the filter needs; built once from configuration.
#[derive(Clone, Debug)]
pub struct FilterContext {
    /// The upstream FHIR base, as it appears in `fullUrl` and links (no trailing slash).
    pub upstream_base: String,
    /// The base clients use (no trailing slash).
    pub public_base: String,
    /// Compartment membership options (its `bases` hold both bases above).
    pub membership: MembershipOptions,
    /// The rule for non-member types in patient context.
    pub non_member_types: NonMemberAccess,
}

impl FilterContext {
    /// A context with both bases normalised and registered as "ours" for membership.
    pub fn new(
        upstream_base: &str,
        public_base: &str,
        actor_membership: bool,
        non_member_types: NonMemberAccess,
    ) -> Self {
        let upstream_base = upstream_base.trim_end_matches('/').to_owned();
        let public_base = public_base.trim_end_matches('/').to_owned();
        FilterContext {
            membership: MembershipOptions::new(
                actor_membership,
                [upstream_base.as_str(), public_base.as_str()],
            ),
            upstream_base,
            public_base,
            non_member_types,
        }
    }

    /// `url` with the upstream base replaced by the public base (other URLs unchanged).
    pub fn rebase(&self, url: &str) -> String {
        let upstream = self.upstream_base.trim_end_matches('/');
        match url.strip_prefix(upstream) {
            Some(rest)
                if !upstream.is_empty() && (rest.is_empty() || rest.starts_with(['/', '?'])) =>
            {
                format!("{}{rest}", self.public_base.trim_end_matches('/'))
            }
            _ => url.to_owned(),
        }
    }
}

/// The verdict on one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// May leave.
    Visible,
    /// Must not leave; the code is for the audit line (`scope`, `granular`,
    /// `compartment`, `no-patient-context`, `unknown-type`, `non-member`,
    /// `nested-bundle`, `binary-no-context`, `other-patient`).
    Hidden(&'static str),
    /// A `Binary` whose `securityContext` is this resource (`Type/id`, relative): visible
    /// iff that resource is; the caller fetches and checks it.
    NeedsLookup(String),
}

/// A filtered Bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilteredBundle {
    /// The Bundle to send.
    pub body: Vec<u8>,
    /// Entries removed.
    pub removed: usize,
    /// Entries kept.
    pub kept: usize,
    /// The resource type of every removed entry the search itself matched (`search.mode`
    /// `match`, or no mode given): on a narrowed search these are results the server
    /// returned although the narrowing excluded them. Removed `_include`d entries and
    /// entries of types outside R4 are not listed.
    pub removed_matches: Vec<ResourceType>,
}

/// Why a response body could not be judged (the caller answers 502: never pass it on).
#[derive(Debug)]
pub enum FilterError {
    /// Not UTF-8.
    NotUtf8,
    /// Invalid or truncated JSON, or a JSON shape FHIR does not allow here.
    Json(serde_json::Error),
    /// The same key twice in one object we inspect.
    DuplicateKey(serde_json::Error),
    /// `resourceType` is not `Bundle`.
    NotABundle,
    /// `resourceType` is missing or not the type the request asked for.
    WrongType,
    /// A Bundle element has the wrong JSON type (`entry` not an array, `link.url` not a
    /// string, a resource without a string `resourceType`).
    Malformed(&'static str),
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterError::NotUtf8 => f.write_str("response is not UTF-8"),
            FilterError::Json(e) => write!(f, "response is not valid JSON: {e}"),
            FilterError::DuplicateKey(e) => write!(f, "response has duplicate keys: {e}"),
            FilterError::NotABundle => f.write_str("response is not a Bundle"),
            FilterError::WrongType => f.write_str("response is not the expected resource type"),
            FilterError::Malformed(what) => write!(f, "malformed response: {what}"),
        }
    }
}

impl std::error::Error for FilterError {}

impl From<serde_json::Error> for FilterError {
    fn from(e: serde_json::Error) -> Self {
        if json::is_duplicate_key(&e) {
            FilterError::DuplicateKey(e)
        } else {
            FilterError::Json(e)
        }
    }
}

/// The scopes that judge a `rtype` resource under `view`.
fn scopes<'g>(
    view: &View,
    grant: &'g Grant,
    rtype: ResourceType,
) -> impl Iterator<Item = &'g SmartScope> {
    grant.scopes.matching(view.context, rtype, view.letter)
}

/// Judges one resource (see the module rules).
pub fn check_resource(
    resource: &Value,
    view: &View,
    grant: &Grant,
    ctx: &FilterContext,
) -> Visibility {
    let Some(rtype) = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(ResourceType::parse)
    else {
        return Visibility::Hidden("unknown-type");
    };
    if rtype == ResourceType::OPERATION_OUTCOME {
        return Visibility::Visible;
    }
    let mut any = false;
    let mut allowed = false;
    for s in scopes(view, grant, rtype) {
        any = true;
        if s.granular.is_empty() || granular::matches(resource, rtype, &s.granular) == Ok(true) {
            allowed = true;
            break;
        }
    }
    if !any {
        return Visibility::Hidden("scope");
    }
    if !allowed {
        return Visibility::Hidden("granular");
    }
    if view.context != Context::Patient {
        return Visibility::Visible;
    }
    let Some(patient) = view.patient.as_deref() else {
        return Visibility::Hidden("no-patient-context");
    };
    in_compartment(resource, rtype, patient, ctx)
}

/// Rule 4 alone: whether `resource` (of type `rtype`) belongs to `patient` under patient/
/// scopes, whatever the scopes say. Write checks judge the compartment with it and the
/// scopes of the write letter themselves.
pub fn in_compartment(
    resource: &Value,
    rtype: ResourceType,
    patient: &str,
    ctx: &FilterContext,
) -> Visibility {
    let opts = &ctx.membership;
    if is_member_type(rtype) {
        return if is_member(resource, patient, opts) {
            Visibility::Visible
        } else {
            Visibility::Hidden("compartment")
        };
    }
    if rtype == ResourceType::BUNDLE {
        return Visibility::Hidden("nested-bundle");
    }
    if rtype == ResourceType::BINARY {
        return binary(resource, patient, opts);
    }
    if ctx.non_member_types == NonMemberAccess::Deny {
        return Visibility::Hidden("non-member");
    }
    let names_other = granular::expression(rtype, "patient").is_some_and(|e| {
        e.evaluate(resource).into_iter().any(|r| {
            reference_type(r) != Some("Patient") || patient_id(r, &opts.bases) != Some(patient)
        })
    });
    if names_other {
        Visibility::Hidden("other-patient")
    } else {
        Visibility::Visible
    }
}

/// Binary: visible through its `securityContext` only.
fn binary(resource: &Value, patient: &str, opts: &MembershipOptions) -> Visibility {
    let Some(sc) = resource.get("securityContext") else {
        return Visibility::Hidden("binary-no-context");
    };
    if patient_id(sc, &opts.bases) == Some(patient) {
        return Visibility::Visible;
    }
    let ours = sc
        .get("reference")
        .and_then(Value::as_str)
        .and_then(|r| local_reference(r, &opts.bases))
        .and_then(split_reference);
    match ours {
        Some((t, id)) if t != "Patient" && sc.get("type").is_none_or(|d| d == t) => {
            Visibility::NeedsLookup(format!("{t}/{id}"))
        }
        _ => Visibility::Hidden("compartment"),
    }
}

/// A reference relative to our server: `T/id…` as is, `{base}/T/id…` stripped.
fn local_reference<'a>(reference: &'a str, bases: &[String]) -> Option<&'a str> {
    if !reference.contains("://") {
        return Some(reference);
    }
    bases.iter().find_map(|b| {
        reference
            .strip_prefix(b.trim_end_matches('/'))
            .and_then(|r| r.strip_prefix('/'))
    })
}

/// Judges a single resource body (read, vread, the result of a write); `expected` is the
/// type the request named, when it named one.
pub fn check_single(
    body: &[u8],
    expected: Option<ResourceType>,
    view: &View,
    grant: &Grant,
    ctx: &FilterContext,
) -> Result<Visibility, FilterError> {
    let text = std::str::from_utf8(body).map_err(|_| FilterError::NotUtf8)?;
    let resource = json::fields(text)?;
    let rtype = resource.get("resourceType").ok_or(FilterError::WrongType)?;
    let rtype = string_of(rtype, "resourceType")?;
    if expected.is_some_and(|t| t.name() != rtype) {
        return Err(FilterError::WrongType);
    }
    let Some(rtype) = ResourceType::parse(&rtype) else {
        return Ok(Visibility::Hidden("unknown-type"));
    };
    let plan = KeyPlan::new(rtype, view, grant, ctx);
    Ok(check_resource(
        &reduced(&resource, &plan)?,
        view,
        grant,
        ctx,
    ))
}

/// The resource with only the elements the decision reads parsed (strictly: duplicate
/// keys there are errors); the rest stays unparsed text that is never looked at.
fn reduced(resource: &json::Fields<'_>, plan: &KeyPlan) -> Result<Value, FilterError> {
    let mut reduced = serde_json::Map::new();
    for (key, value) in &resource.0 {
        if plan.reads(key) {
            reduced.insert(key.as_ref().to_owned(), json::strict_value(value.get())?);
        }
    }
    Ok(Value::Object(reduced))
}

/// Paging relations whose URLs the caller binds to the token.
const PAGING: &[&str] = &["self", "first", "previous", "prev", "next", "last"];

/// Filters a Bundle (searchset, history, …): see the module docs for every rule.
/// `rewrite_link` receives each paging link's URL (already rebased to the public base) and
/// returns the URL to send, or `None` to drop that link.
pub fn filter_bundle(
    body: &[u8],
    view: &View,
    grant: &Grant,
    ctx: &FilterContext,
    rewrite_link: &dyn Fn(&str) -> Option<String>,
) -> Result<FilteredBundle, FilterError> {
    let text = std::str::from_utf8(body).map_err(|_| FilterError::NotUtf8)?;
    let bundle: json::BundleFields<'_> = serde_json::from_str(text)?;
    let rtype: Option<&str> = bundle
        .raw("resourceType")
        .and_then(|r| serde_json::from_str(r.get()).ok());
    if rtype != Some("Bundle") {
        return Err(FilterError::NotABundle);
    }
    // Judge every entry first: `total` is written only when nothing was removed.
    let mut keep: Vec<bool> = Vec::new();
    let mut plans: Vec<KeyPlan> = Vec::new();
    let mut scratch = String::new();
    for (_, value) in &bundle.0 {
        if let json::BundleValue::Entries(entries) = value {
            for entry in entries {
                keep.push(entry_visible(
                    entry,
                    view,
                    grant,
                    ctx,
                    &mut plans,
                    &mut scratch,
                )?);
            }
        }
    }
    let kept = keep.iter().filter(|k| **k).count();
    let removed = keep.len() - kept;
    let mut removed_matches = Vec::new();
    if removed > 0 {
        let entries = bundle.0.iter().filter_map(|(_, v)| match v {
            json::BundleValue::Entries(e) => Some(e),
            json::BundleValue::Raw(_) => None,
        });
        for (entry, _) in entries.flatten().zip(&keep).filter(|(_, k)| !**k) {
            removed_matches.extend(removed_match_type(entry));
        }
    }
    let mut out = Vec::with_capacity(body.len() + 1024);
    out.push(b'{');
    let mut first = true;
    for (key, value) in &bundle.0 {
        let links: Vec<Vec<u8>>;
        let part = match (key.as_ref(), value) {
            (_, json::BundleValue::Entries(_)) if kept == 0 => continue,
            (_, json::BundleValue::Entries(entries)) => Part::Entries(entries),
            ("total", _) if removed > 0 => continue,
            ("link", json::BundleValue::Raw(raw)) => {
                links = rewrite_links(raw, ctx, rewrite_link)?;
                if links.is_empty() {
                    continue;
                }
                Part::Links(&links)
            }
            (_, json::BundleValue::Raw(raw)) => Part::Raw(raw.get().as_bytes()),
        };
        if !first {
            out.push(b',');
        }
        first = false;
        write_key(&mut out, key)?;
        match part {
            Part::Raw(bytes) => out.extend_from_slice(bytes),
            Part::Links(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(item);
                }
                out.push(b']');
            }
            Part::Entries(entries) => {
                out.push(b'[');
                let kept_entries = entries.iter().zip(&keep).filter(|(_, k)| **k);
                for (i, (entry, _)) in kept_entries.enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_entry(&mut out, entry, ctx)?;
                }
                out.push(b']');
            }
        }
    }
    out.push(b'}');
    Ok(FilteredBundle {
        body: out,
        removed,
        kept,
        removed_matches,
    })
}

/// The resource type of a removed entry that the search matched: `search.mode` is `match`
/// or absent (a server that omits it cannot be told apart from one that matched).
fn removed_match_type(entry: &json::Entry<'_>) -> Option<ResourceType> {
    if let Some(search) = entry.raw("search") {
        let search = json::fields(search.get()).ok()?;
        if let Some(mode) = search.get("mode")
            && string_of(mode, "entry.search.mode").ok()? != "match"
        {
            return None;
        }
    }
    let rtype = entry.resource()?.get("resourceType")?;
    ResourceType::parse(&string_of(rtype, "resource.resourceType").ok()?)
}

/// One top-level value of the output Bundle.
enum Part<'a, 'b> {
    /// Copied as is.
    Raw(&'a [u8]),
    /// Rewritten links (never empty).
    Links(&'b [Vec<u8>]),
    /// The entries, of which the kept ones are written.
    Entries(&'b [json::Entry<'a>]),
}

/// Writes `"key":`. A borrowed key had no escape sequence in its source, so it needs none
/// (JSON strings cannot hold raw quotes, backslashes or control characters).
#[allow(clippy::ptr_arg)] // whether the key is borrowed is the point
fn write_key(out: &mut Vec<u8>, key: &Cow<'_, str>) -> Result<(), FilterError> {
    match key {
        Cow::Borrowed(k) => {
            out.push(b'"');
            out.extend_from_slice(k.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(k) => serde_json::to_writer(&mut *out, k)?,
    }
    out.push(b':');
    Ok(())
}

/// A JSON string's value (borrowed unless it has escapes), or `Malformed(what)`.
fn string_of<'a>(raw: &'a RawValue, what: &'static str) -> Result<Cow<'a, str>, FilterError> {
    let text = raw.get();
    match serde_json::from_str::<&str>(text) {
        Ok(s) => Ok(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(text)
            .map(Cow::Owned)
            .map_err(|_| FilterError::Malformed(what)),
    }
}

/// Rebases every link and passes paging links to `rewrite_link`.
fn rewrite_links(
    raw: &RawValue,
    ctx: &FilterContext,
    rewrite_link: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Vec<u8>>, FilterError> {
    let links: Vec<json::Fields<'_>> =
        serde_json::from_str(raw.get()).map_err(|e| match json::is_duplicate_key(&e) {
            true => FilterError::DuplicateKey(e),
            false => FilterError::Malformed("link"),
        })?;
    let mut out = Vec::with_capacity(links.len());
    for link in links {
        let relation = match link.get("relation") {
            Some(r) => Some(string_of(r, "link.relation")?),
            None => None,
        };
        let url = match link.get("url") {
            Some(u) => string_of(u, "link.url")?,
            None => return Err(FilterError::Malformed("link.url")),
        };
        let rebased = ctx.rebase(&url);
        let url = if relation.as_deref().is_some_and(|r| PAGING.contains(&r)) {
            match rewrite_link(&rebased) {
                Some(u) => u,
                None => continue,
            }
        } else {
            rebased
        };
        let mut item = Vec::new();
        write_object(&mut item, &link, Some(("url", &url)))?;
        out.push(item);
    }
    Ok(out)
}

/// Writes an object field by field (values byte for byte), replacing the value of
/// `replace.0` by the string `replace.1`.
fn write_object(
    out: &mut Vec<u8>,
    fields: &json::Fields<'_>,
    replace: Option<(&str, &str)>,
) -> Result<(), FilterError> {
    out.push(b'{');
    for (i, (k, v)) in fields.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_key(out, k)?;
        match replace.filter(|(key, _)| k == key) {
            Some((_, value)) => serde_json::to_writer(&mut *out, value)?,
            None => out.extend_from_slice(v.get().as_bytes()),
        }
    }
    out.push(b'}');
    Ok(())
}

/// Writes a kept entry, with `fullUrl` rebased.
fn write_entry(
    out: &mut Vec<u8>,
    entry: &json::Entry<'_>,
    ctx: &FilterContext,
) -> Result<(), FilterError> {
    out.push(b'{');
    for (i, (k, v)) in entry.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_key(out, k)?;
        match v {
            json::EntryValue::Resource(fields) => write_object(out, fields, None)?,
            json::EntryValue::Raw(raw) if k == "fullUrl" => {
                let url = string_of(raw, "entry.fullUrl")?;
                serde_json::to_writer(&mut *out, &ctx.rebase(&url))?;
            }
            json::EntryValue::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
        }
    }
    out.push(b'}');
    Ok(())
}

/// Which top-level elements of one resource type a decision reads (computed once per
/// type and Bundle), and the verdicts already reached for the same elements.
struct KeyPlan {
    rtype: ResourceType,
    /// Elements read by name.
    keys: Vec<&'static str>,
    /// Expressions whose first step decides (compartment, granular, non-member `patient`).
    exprs: Vec<&'static Expr>,
    /// Verdict by [`KeyPlan::memo_key`]. Sound because a verdict is a pure function of the
    /// elements the plan reads (the view, grant and context are fixed for the Bundle); it
    /// pays off because a patient's search results mostly share one `subject`.
    verdicts: HashMap<String, bool>,
}

impl KeyPlan {
    fn new(rtype: ResourceType, view: &View, grant: &Grant, ctx: &FilterContext) -> Self {
        // `id` decides only for Patient (is it the patient?).
        let mut keys = vec!["resourceType"];
        if rtype == ResourceType::PATIENT {
            keys.push("id");
        }
        let mut exprs: Vec<&'static Expr> = Vec::new();
        if view.context == Context::Patient {
            match rtype {
                ResourceType::GROUP => keys.push("member"),
                ResourceType::BINARY => keys.push("securityContext"),
                _ => {}
            }
            exprs.extend(membership::membership_exprs(rtype, &ctx.membership));
            if !is_member_type(rtype) {
                exprs.extend(granular::expression(rtype, "patient"));
            }
        }
        for s in scopes(view, grant, rtype) {
            exprs.extend(
                s.granular
                    .iter()
                    .filter_map(|p| granular::expression(rtype, &p.name)),
            );
        }
        KeyPlan {
            rtype,
            keys,
            exprs,
            verdicts: HashMap::new(),
        }
    }

    fn reads(&self, key: &str) -> bool {
        self.keys.contains(&key) || self.exprs.iter().any(|e| e.reads_top_level(key))
    }

    /// Writes into `out` the elements of `resource` this plan reads, unambiguously: each as
    /// its key's length, the key, and the raw value (raw JSON values delimit themselves).
    fn memo_key(&self, resource: &json::Fields<'_>, out: &mut String) {
        out.clear();
        for (key, value) in &resource.0 {
            if self.reads(key) {
                let _ = write!(out, "{}:", key.len());
                out.push_str(key);
                out.push_str(value.get());
            }
        }
    }
}

fn entry_visible(
    entry: &json::Entry<'_>,
    view: &View,
    grant: &Grant,
    ctx: &FilterContext,
    plans: &mut Vec<KeyPlan>,
    scratch: &mut String,
) -> Result<bool, FilterError> {
    let Some(resource) = entry.resource() else {
        return Ok(resourceless_visible(entry, view, grant));
    };
    let rtype = resource
        .get("resourceType")
        .ok_or(FilterError::Malformed("resource.resourceType"))?;
    let rtype = string_of(rtype, "resource.resourceType")?;
    let Some(rtype) = ResourceType::parse(&rtype) else {
        return Ok(false);
    };
    let plan = match plans.iter().position(|p| p.rtype == rtype) {
        Some(i) => i,
        None => {
            plans.push(KeyPlan::new(rtype, view, grant, ctx));
            plans.len() - 1
        }
    };
    let Some(plan) = plans.get_mut(plan) else {
        return Ok(false);
    };
    plan.memo_key(resource, scratch);
    if let Some(verdict) = plan.verdicts.get(scratch.as_str()) {
        return Ok(*verdict);
    }
    let verdict =
        check_resource(&reduced(resource, plan)?, view, grant, ctx) == Visibility::Visible;
    plan.verdicts.insert(scratch.clone(), verdict);
    Ok(verdict)
}

/// An entry without a resource: see the module docs.
fn resourceless_visible(entry: &json::Entry<'_>, view: &View, grant: &Grant) -> bool {
    if view.context == Context::Patient {
        return false;
    }
    let url = |key: &str| -> Option<String> {
        let raw = entry.raw(key)?;
        if key == "request" {
            let req = json::fields(raw.get()).ok()?;
            serde_json::from_str(req.get("url")?.get()).ok()
        } else {
            serde_json::from_str(raw.get()).ok()
        }
    };
    let Some(url) = url("request").or_else(|| url("fullUrl")) else {
        return false;
    };
    let path = url.split('?').next().unwrap_or("");
    let rtype = split_reference(path).and_then(|(t, _)| ResourceType::parse(t));
    rtype.is_some_and(|t| scopes(view, grant, t).any(|s| s.granular.is_empty()))
}

#[cfg(test)]
mod tests;
