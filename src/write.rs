//! Write checks, between **authorize** and **forward**: grant + request + current version +
//! body ⇒ verdict. Pure: the proxy reads the current version and the body, this module
//! judges them, and nothing is sent upstream until both verdicts are in.
//!
//! A write under a grant that cannot write everything (patient/ scopes, or granular
//! user/system scopes) is judged twice:
//! 1. **The current version** (update, patch, delete, and the one match of a conditional
//!    update/patch/delete) by the scopes of the write letter (`u` or `d`) and their granular
//!    parameters, never by read scopes: write-only grants (`patient/Observation.u`) work.
//!    Under patient/ scopes it must also be in the launch patient's compartment; one that is
//!    not is answered like one that does not exist (404), so a write cannot probe for other
//!    patients' ids. Inside the compartment but outside the write scope's parameters: 403.
//! 2. **The resource that would be stored** (the body of a create or update, the result of
//!    a patch applied to the current version) by the scopes of the write letter (`c` for
//!    create, `u` for update, update-as-create and patch) with their granular parameters,
//!    by the same rules that decide whether a resource may be read under a granular scope
//!    ([`granular::matches`]); under patient/ scopes it must be in the compartment and every
//!    patient reference in it must name the launch patient.
//!
//! An update must stay inside **one** granting scope: some scope that covers the current
//! version must also cover the new content, so `…Observation.u?category=…|vital-signs`
//! cannot turn a laboratory Observation into a vital-signs one, nor back.
//!
//! Non-goals: FHIRPath Patch (only JSON Patch can be applied here, 415 otherwise), and a
//! `Binary` whose `securityContext` is another resource under patient/ scopes (judging it
//! needs a read this module does not do: refused).

use serde_json::Value;

use crate::authenticate::Grant;
use crate::authorize::View;
use crate::classify::FhirRequest;
use crate::compartment::granular;
use crate::compartment::membership;
use crate::fhir::ResourceType;
use crate::filter::{self, FilterContext, Visibility};
use crate::scope::{Context, SmartScope};

/// Why a write was refused before it reached the FHIR server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteDenied {
    /// The body is not a JSON object.
    NotJson,
    /// `resourceType` in the body is not the type in the URL.
    WrongType,
    /// `id` in the body is not the id in the URL (or of the conditional match).
    WrongId,
    /// The current version is not there for this grant: missing, or outside the
    /// compartment (both answer the same).
    CurrentHidden,
    /// The current version is in the compartment but outside every scope of the write
    /// letter (their parameters do not match it).
    CurrentOutsideScope {
        /// The scopes that fell short, as the token spelled them.
        scopes: String,
    },
    /// The new content is outside every scope of the write letter.
    OutsideScope {
        /// The scopes that fell short, as the token spelled them.
        scopes: String,
    },
    /// No one scope covers both the current version and the new content.
    LeavesScope {
        /// The scopes that cover the current version.
        scopes: String,
    },
    /// The new content is not in the launch patient's compartment.
    OutsideCompartment,
    /// The new content references a patient other than the launch patient.
    OtherPatient,
    /// A patch that is not JSON Patch.
    PatchFormat,
    /// A JSON Patch body that does not parse.
    PatchBody,
    /// A JSON Patch that does not apply to the current version.
    PatchApply,
    /// Conditional criteria that match more than one resource.
    Ambiguous,
}

impl WriteDenied {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            WriteDenied::NotJson
            | WriteDenied::WrongType
            | WriteDenied::WrongId
            | WriteDenied::PatchBody => 400,
            WriteDenied::CurrentHidden => 404,
            WriteDenied::PatchFormat => 415,
            WriteDenied::PatchApply => 422,
            WriteDenied::Ambiguous => 412,
            _ => 403,
        }
    }

    /// The FHIR IssueType of the OperationOutcome.
    pub fn issue(&self) -> &'static str {
        match self.status() {
            400 => "invalid",
            404 => "not-found",
            415 => "not-supported",
            422 => "processing",
            412 => "multiple-matches",
            _ => "forbidden",
        }
    }

    /// The stable reason code for the audit line.
    pub fn code(&self) -> &'static str {
        match self {
            WriteDenied::NotJson => "body-not-json",
            WriteDenied::WrongType => "body-type",
            WriteDenied::WrongId => "body-id",
            WriteDenied::CurrentHidden => "not-found-or-hidden",
            WriteDenied::CurrentOutsideScope { .. }
            | WriteDenied::OutsideScope { .. }
            | WriteDenied::LeavesScope { .. } => "write-scope",
            WriteDenied::OutsideCompartment | WriteDenied::OtherPatient => "write-compartment",
            WriteDenied::PatchFormat => "patch-format",
            WriteDenied::PatchBody => "patch-body",
            WriteDenied::PatchApply => "patch-apply",
            WriteDenied::Ambiguous => "conditional-multiple",
        }
    }

    /// One sentence for the app developer: names the scope that fell short, never data
    /// the grant may not see.
    pub fn message(&self) -> String {
        match self {
            WriteDenied::NotJson => "the body must be a FHIR JSON resource".into(),
            WriteDenied::WrongType => "resourceType in the body does not match the URL".into(),
            WriteDenied::WrongId => "id in the body does not match the URL".into(),
            WriteDenied::CurrentHidden => "resource not found".into(),
            WriteDenied::CurrentOutsideScope { scopes } => format!(
                "the resource as it is now is outside the granted scope ({scopes}): it may not be changed"
            ),
            WriteDenied::OutsideScope { scopes } => format!(
                "the resource written is outside the granted scope ({scopes}): its content does not match the scope's parameters"
            ),
            WriteDenied::LeavesScope { scopes } => format!(
                "the change would move the resource out of the scope that allows changing it ({scopes})"
            ),
            WriteDenied::OutsideCompartment => {
                "the resource written is not in the launch patient's compartment".into()
            }
            WriteDenied::OtherPatient => {
                "the resource references a patient other than the launch patient".into()
            }
            WriteDenied::PatchFormat => {
                "this grant's writes are checked before they are sent, which needs JSON Patch (application/json-patch+json)".into()
            }
            WriteDenied::PatchBody => "the body is not a JSON Patch document".into(),
            WriteDenied::PatchApply => {
                "the JSON Patch does not apply to the current version".into()
            }
            WriteDenied::Ambiguous => {
                "the conditional criteria match more than one resource".into()
            }
        }
    }
}

/// The scopes (of the write letter) that cover the current version: the new content
/// must be covered by one of them.
#[derive(Clone, Debug)]
pub struct Covered<'g> {
    scopes: Vec<&'g SmartScope>,
}

/// Judges writes for one grant under the view its write was allowed by (`view.letter` is
/// the write letter: `c`, `u` or `d`).
#[derive(Clone, Copy)]
pub struct Judge<'a> {
    /// The context, launch patient and write letter.
    pub view: &'a View,
    /// The token's grant.
    pub grant: &'a Grant,
    /// Compartment facts.
    pub ctx: &'a FilterContext,
}

impl<'a> Judge<'a> {
    /// Step 1: the current version of `rtype`. `Ok` holds the scopes that cover it.
    pub fn current(
        &self,
        resource: &Value,
        rtype: ResourceType,
    ) -> Result<Covered<'a>, WriteDenied> {
        if type_of(resource) != Some(rtype) {
            return Err(WriteDenied::CurrentHidden);
        }
        if let Some(patient) = self.patient()? {
            match filter::in_compartment(resource, rtype, patient, self.ctx) {
                Visibility::Visible => {}
                _ => return Err(WriteDenied::CurrentHidden),
            }
        }
        let (granting, covering) = self.scopes(resource, rtype);
        if granting.is_empty() {
            return Err(WriteDenied::CurrentHidden);
        }
        if covering.is_empty() {
            return Err(WriteDenied::CurrentOutsideScope {
                scopes: spelled(&granting),
            });
        }
        Ok(Covered { scopes: covering })
    }

    /// Step 2: the resource that would be stored by `req` (whose id, for an update, is
    /// the one the write is pinned to). `current` is what step 1 found, if anything.
    pub fn new_content(
        &self,
        resource: &Value,
        req: &FhirRequest,
        current: Option<&Covered<'_>>,
    ) -> Result<(), WriteDenied> {
        let Some(rtype) = req.resource_type else {
            return Err(WriteDenied::WrongType);
        };
        if !resource.is_object() {
            return Err(WriteDenied::NotJson);
        }
        if type_of(resource) != Some(rtype) {
            return Err(WriteDenied::WrongType);
        }
        if let Some(id) = &req.id
            && resource.get("id").and_then(Value::as_str) != Some(id.as_str())
        {
            return Err(WriteDenied::WrongId);
        }
        if let Some(patient) = self.patient()? {
            if !membership::all_patient_refs_are(resource, patient, &self.ctx.membership) {
                return Err(WriteDenied::OtherPatient);
            }
            if filter::in_compartment(resource, rtype, patient, self.ctx) != Visibility::Visible {
                return Err(WriteDenied::OutsideCompartment);
            }
        }
        let (granting, covering) = self.scopes(resource, rtype);
        if covering.is_empty() {
            return Err(WriteDenied::OutsideScope {
                scopes: spelled(&granting),
            });
        }
        if let Some(current) = current
            && !covering
                .iter()
                .any(|s| current.scopes.iter().any(|c| std::ptr::eq(*s, *c)))
        {
            return Err(WriteDenied::LeavesScope {
                scopes: spelled(&current.scopes),
            });
        }
        Ok(())
    }

    /// The launch patient under patient/ scopes (`Ok(None)` in other contexts).
    fn patient(&self) -> Result<Option<&'a str>, WriteDenied> {
        match (self.view.context, self.view.patient.as_deref()) {
            (Context::Patient, Some(p)) => Ok(Some(p)),
            (Context::Patient, None) => Err(WriteDenied::OutsideCompartment),
            _ => Ok(None),
        }
    }

    /// (every scope granting the view's letter on `rtype`, those whose parameters match).
    fn scopes(
        &self,
        resource: &Value,
        rtype: ResourceType,
    ) -> (Vec<&'a SmartScope>, Vec<&'a SmartScope>) {
        let granting: Vec<&SmartScope> = self
            .grant
            .scopes
            .matching(self.view.context, rtype, self.view.letter)
            .collect();
        let covering = granting
            .iter()
            .copied()
            .filter(|s| {
                s.granular.is_empty() || granular::matches(resource, rtype, &s.granular) == Ok(true)
            })
            .collect();
        (granting, covering)
    }
}

/// Parses a body that must be a FHIR JSON resource.
pub fn parse_resource(body: &[u8]) -> Result<Value, WriteDenied> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(WriteDenied::NotJson),
    }
}

/// The result of a JSON Patch (`content_type` must say so) applied to `current`.
pub fn apply_patch(
    mut current: Value,
    patch: &[u8],
    content_type: Option<&str>,
) -> Result<Value, WriteDenied> {
    if !content_type.is_some_and(|v| v.starts_with("application/json-patch+json")) {
        return Err(WriteDenied::PatchFormat);
    }
    let ops: json_patch::Patch =
        serde_json::from_slice(patch).map_err(|_| WriteDenied::PatchBody)?;
    json_patch::patch(&mut current, &ops).map_err(|_| WriteDenied::PatchApply)?;
    Ok(current)
}

/// `meta.versionId` of a resource, for `If-Match`.
pub fn version_of(resource: &Value) -> Option<&str> {
    resource.pointer("/meta/versionId").and_then(Value::as_str)
}

/// The one match of a conditional write's search (`Ok(None)`: no match), judged on the
/// `searchset` the FHIR server answered. Entries with `search.mode` other than `match`
/// (includes, outcomes) are not matches.
pub fn single_match(searchset: &Value) -> Result<Option<&Value>, WriteDenied> {
    let mut matches = searchset
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| {
            e.pointer("/search/mode")
                .and_then(Value::as_str)
                .is_none_or(|m| m == "match")
        })
        .filter_map(|e| e.get("resource"))
        .filter(|r| type_of(r) != Some(ResourceType::OPERATION_OUTCOME));
    let first = matches.next();
    if matches.next().is_some() {
        return Err(WriteDenied::Ambiguous);
    }
    Ok(first)
}

fn type_of(resource: &Value) -> Option<ResourceType> {
    resource
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(ResourceType::parse)
}

fn spelled(scopes: &[&SmartScope]) -> String {
    let raw: Vec<&str> = scopes.iter().map(|s| s.raw.as_str()).collect();
    raw.join(" ")
}

#[cfg(test)]
mod tests;
