//! Does a resource match a granular scope's `?p=v&q=w` restriction? FHIR search
//! semantics for the parameter types granular scopes use in practice:
//!
//! - **token** (`code`, `system|code`, `system|`, `|code`) over Coding, CodeableConcept,
//!   Identifier (`system|value`), ContactPoint, `code`/`string`/`id` and `boolean`;
//!   modifier `:not` (none of the values matches).
//! - **reference** (`Type/id`, plain `id`, or an absolute URL compared exactly).
//! - **string** (case-insensitive starts-with; `:exact`, `:contains`) over strings and the
//!   string parts of HumanName/Address and similar.
//! - **uri** (exact).
//!
//! Comma separates alternatives (OR) within a value, `\,` `\|` `\\` escape; parameters are
//! ANDed. The expression of each parameter comes from the R4 SearchParameter for the
//! resource's type (or `Resource`/`DomainResource` for `_id`, `_tag`, …). Unknown
//! parameters, other types (date, quantity, …), other modifiers and chains are
//! [`Unsupported`]: callers treat them as "no match" (fail closed).

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

use super::definition::search_params;
use super::fhirpath::{Expr, FhirPathError, split_reference};
use crate::fhir::ResourceType;
use crate::scope::GranularParam;

/// A granular parameter this matcher cannot evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// The parameter as the scope spelled it (with modifier).
    pub param: String,
    /// What is missing.
    pub kind: UnsupportedKind,
}

/// Why a granular parameter cannot be evaluated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnsupportedKind {
    /// No R4 search parameter of that name for the type (chains, `_has`, typos).
    UnknownParameter,
    /// A search parameter type outside token/reference/string/uri.
    ParameterType(String),
    /// A modifier other than those listed in the module docs.
    Modifier,
    /// The parameter's expression is outside the FHIRPath subset.
    Expression(FhirPathError),
    /// An empty alternative or a dangling escape.
    Value,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "granular parameter `{}`: {:?}", self.param, self.kind)
    }
}

impl std::error::Error for Unsupported {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ParamType {
    Token,
    Reference,
    String,
    Uri,
}

/// A search parameter ready to evaluate.
struct Compiled {
    ptype: Result<ParamType, String>,
    expr: Result<Expr, FhirPathError>,
}

/// Every R4 search parameter, compiled once: base type name -> code -> compiled.
static COMPILED: LazyLock<HashMap<&'static str, HashMap<&'static str, Compiled>>> =
    LazyLock::new(|| {
        search_params()
            .params
            .iter()
            .map(|(base, params)| {
                // `Resource`/`DomainResource` branches apply to every type: compile
                // against any one.
                let rtype = ResourceType::parse(base).unwrap_or(ResourceType::PATIENT);
                let compiled = params
                    .iter()
                    .map(|(code, p)| {
                        let ptype = match p.get("type").and_then(Value::as_str) {
                            Some("token") => Ok(ParamType::Token),
                            Some("reference") => Ok(ParamType::Reference),
                            Some("string") => Ok(ParamType::String),
                            Some("uri") => Ok(ParamType::Uri),
                            other => Err(other.unwrap_or("none").to_owned()),
                        };
                        let expr = match p.get("expression").and_then(Value::as_str) {
                            Some(e) => Expr::compile(e, rtype),
                            None => Err(FhirPathError::NoBranch),
                        };
                        (code.as_str(), Compiled { ptype, expr })
                    })
                    .collect();
                (base.as_str(), compiled)
            })
            .collect()
    });

fn lookup(rtype: ResourceType, code: &str) -> Option<&'static Compiled> {
    [rtype.name(), "DomainResource", "Resource"]
        .into_iter()
        .find_map(|base| COMPILED.get(base)?.get(code))
}

/// The compiled expression of search parameter `code` (a modifier is ignored) on `rtype`,
/// when it has one in the subset: the response filter reads `patient` of non-member types
/// through it, and parses only the top-level elements granular parameters read.
pub(crate) fn expression(rtype: ResourceType, code: &str) -> Option<&'static Expr> {
    let code = code.split(':').next().unwrap_or("");
    lookup(rtype, code)?.expr.as_ref().ok()
}

/// Whether `resource` (of type `rtype`) matches every parameter of one granular scope.
pub fn matches(
    resource: &Value,
    rtype: ResourceType,
    params: &[GranularParam],
) -> Result<bool, Unsupported> {
    let mut all = true;
    for p in params {
        all &= matches_one(resource, rtype, p)?;
    }
    Ok(all)
}

fn matches_one(
    resource: &Value,
    rtype: ResourceType,
    p: &GranularParam,
) -> Result<bool, Unsupported> {
    let fail = |kind| Unsupported {
        param: p.name.clone(),
        kind,
    };
    let (code, modifier) = match p.name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (p.name.as_str(), None),
    };
    let compiled = lookup(rtype, code).ok_or_else(|| fail(UnsupportedKind::UnknownParameter))?;
    let ptype = compiled
        .ptype
        .clone()
        .map_err(|t| fail(UnsupportedKind::ParameterType(t)))?;
    let expr = compiled
        .expr
        .as_ref()
        .map_err(|e| fail(UnsupportedKind::Expression(e.clone())))?;
    // Token values keep their escapes for the `system|code` split; others are unescaped.
    let alternatives = split_escaped(&p.value, ',', true)
        .filter(|alts| alts.iter().all(|a| !a.is_empty()))
        .and_then(|alts| match ptype {
            ParamType::Token => Some(alts),
            _ => alts.iter().map(|a| unescape(a)).collect(),
        })
        .ok_or_else(|| fail(UnsupportedKind::Value))?;
    let items = expr.evaluate(resource);
    let any = |f: &dyn Fn(&Value, &str) -> bool| {
        alternatives
            .iter()
            .any(|alt| items.iter().any(|item| f(item, alt)))
    };
    match (ptype, modifier) {
        (ParamType::Token, None) => Ok(any(&token_matches)),
        (ParamType::Token, Some("not")) => Ok(!any(&token_matches)),
        (ParamType::Reference, None) => Ok(any(&reference_matches)),
        (ParamType::String, None) => Ok(any(&|i, v| string_matches(i, v, StringMode::Prefix))),
        (ParamType::String, Some("exact")) => {
            Ok(any(&|i, v| string_matches(i, v, StringMode::Exact)))
        }
        (ParamType::String, Some("contains")) => {
            Ok(any(&|i, v| string_matches(i, v, StringMode::Contains)))
        }
        (ParamType::Uri, None) => Ok(any(&|i, v| i.as_str() == Some(v))),
        _ => Err(fail(UnsupportedKind::Modifier)),
    }
}

/// Splits at unescaped `sep` (FHIR escapes: `\,` `\|` `\$` `\\`); `None` on a dangling
/// backslash. With `keep_escapes` the other escapes stay for a later split level,
/// otherwise they are removed.
fn split_escaped(value: &str, sep: char, keep_escapes: bool) -> Option<Vec<String>> {
    let mut out = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let next = chars.next()?;
            if keep_escapes && next != sep {
                out.last_mut()?.push('\\');
            }
            out.last_mut()?.push(next);
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut()?.push(c);
        }
    }
    Some(out)
}

/// Removes FHIR escapes; `None` on a dangling backslash.
fn unescape(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(out)
}

/// `system|code` ⇒ (Some(system), code); `code` ⇒ (None, code); empty parts are
/// "absent" (`|code` = no system, `system|` = any code).
fn split_token(value: &str) -> (Option<String>, String) {
    let mut parts = split_escaped(value, '|', false).unwrap_or_default();
    if parts.len() >= 2 {
        let code = parts.split_off(1).join("|");
        (parts.pop(), code)
    } else {
        (None, parts.pop().unwrap_or_default())
    }
}

fn token_matches(item: &Value, value: &str) -> bool {
    let (system, code) = split_token(value);
    let check = |sys: Option<&str>, c: Option<&str>| -> bool {
        let sys_ok = match system.as_deref() {
            None => true,
            Some("") => sys.is_none(),
            Some(s) => sys == Some(s),
        };
        let code_ok = code.is_empty() || c == Some(code.as_str());
        sys_ok && code_ok && (!code.is_empty() || system.as_deref().is_some_and(|s| !s.is_empty()))
    };
    match item {
        Value::String(s) => check(None, Some(s)),
        Value::Bool(b) => check(None, Some(if *b { "true" } else { "false" })),
        Value::Object(o) => {
            let str_of = |k: &str| o.get(k).and_then(Value::as_str);
            if let Some(codings) = o.get("coding") {
                let codings: &[Value] = match codings {
                    Value::Array(a) => a,
                    other => std::slice::from_ref(other),
                };
                return codings.iter().any(|c| {
                    c.as_object().is_some_and(|c| {
                        check(
                            c.get("system").and_then(Value::as_str),
                            c.get("code").and_then(Value::as_str),
                        )
                    })
                });
            }
            if o.contains_key("code") {
                return check(str_of("system"), str_of("code"));
            }
            if o.contains_key("value") {
                return check(str_of("system"), str_of("value"));
            }
            false
        }
        _ => false,
    }
}

fn reference_matches(item: &Value, value: &str) -> bool {
    let Some(reference) = item.get("reference").and_then(Value::as_str) else {
        return false;
    };
    let relative = !reference.contains("://");
    if value.contains("://") {
        return reference == value;
    }
    let Some((t, id)) = split_reference(reference).filter(|_| relative) else {
        return false;
    };
    match value.split_once('/') {
        Some((vt, vid)) => vt == t && vid == id,
        None => value == id,
    }
}

#[derive(Clone, Copy)]
enum StringMode {
    Prefix,
    Exact,
    Contains,
}

fn string_matches(item: &Value, value: &str, mode: StringMode) -> bool {
    let one = |s: &str| match mode {
        StringMode::Exact => s == value,
        StringMode::Prefix => s.to_lowercase().starts_with(&value.to_lowercase()),
        StringMode::Contains => s.to_lowercase().contains(&value.to_lowercase()),
    };
    match item {
        Value::String(s) => one(s),
        // HumanName, Address, …: any of their string parts.
        Value::Object(o) => o.values().any(|v| match v {
            Value::String(s) => one(s),
            Value::Array(a) => a.iter().filter_map(Value::as_str).any(one),
            _ => false,
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gp(pairs: &[(&str, &str)]) -> Vec<GranularParam> {
        pairs
            .iter()
            .map(|(n, v)| GranularParam {
                name: (*n).to_owned(),
                value: (*v).to_owned(),
            })
            .collect()
    }

    const CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

    fn obs(cat: &str, status: &str) -> Value {
        json!({"resourceType": "Observation", "status": status,
            "category": [{"coding": [{"system": CAT, "code": cat}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}], "text": "Glucose"},
            "subject": {"reference": "Patient/A"},
            "identifier": [{"system": "urn:x", "value": "id1"}]})
    }

    fn m(r: &Value, pairs: &[(&str, &str)]) -> Result<bool, Unsupported> {
        matches(r, ResourceType::OBSERVATION, &gp(pairs))
    }

    #[test]
    fn token_forms() {
        let lab = obs("laboratory", "final");
        let sys_code = format!("{CAT}|laboratory");
        let sys_only = format!("{CAT}|");
        for (value, want) in [
            (sys_code.as_str(), true),
            ("laboratory", true),
            ("vital-signs", false),
            ("http://other|laboratory", false),
            ("|laboratory", false),
            (sys_only.as_str(), true),
            ("http://other|", false),
            ("vital-signs,laboratory", true),
            ("vital-signs,social-history", false),
        ] {
            assert_eq!(m(&lab, &[("category", value)]), Ok(want), "{value}");
        }
        assert_eq!(m(&lab, &[("status", "final")]), Ok(true));
        assert_eq!(m(&lab, &[("status", "|final")]), Ok(true));
        assert_eq!(m(&lab, &[("status", "x|final")]), Ok(false));
        assert_eq!(m(&lab, &[("identifier", "urn:x|id1")]), Ok(true));
        assert_eq!(m(&lab, &[("identifier", "urn:y|id1")]), Ok(false));
        assert_eq!(m(&lab, &[("code", "http://loinc.org|1-8")]), Ok(true));
        assert_eq!(m(&lab, &[("category:not", "vital-signs")]), Ok(true));
        assert_eq!(m(&lab, &[("category:not", "laboratory")]), Ok(false));
        let coded = json!({"resourceType": "Observation", "category": [{"coding": [{"code": "laboratory"}]}]});
        assert_eq!(m(&coded, &[("category", "|laboratory")]), Ok(true));
        assert_eq!(
            m(
                &json!({"resourceType": "Observation"}),
                &[("category", "laboratory")]
            ),
            Ok(false)
        );
    }

    #[test]
    fn and_across_params() {
        let lab = obs("laboratory", "final");
        assert_eq!(
            m(&lab, &[("category", "laboratory"), ("status", "final")]),
            Ok(true)
        );
        assert_eq!(
            m(
                &lab,
                &[("category", "laboratory"), ("status", "preliminary")]
            ),
            Ok(false)
        );
        assert_eq!(m(&lab, &[]), Ok(true));
    }

    #[test]
    fn reference_string_uri_boolean() {
        let lab = obs("laboratory", "final");
        assert_eq!(m(&lab, &[("subject", "Patient/A")]), Ok(true));
        assert_eq!(m(&lab, &[("subject", "A")]), Ok(true));
        assert_eq!(m(&lab, &[("subject", "Patient/B")]), Ok(false));
        assert_eq!(m(&lab, &[("patient", "Patient/A")]), Ok(true));
        assert_eq!(m(&lab, &[("subject", "https://x/Patient/A")]), Ok(false));
        let p = json!({"resourceType": "Patient", "active": true,
            "name": [{"family": "Müller", "given": ["Anna"]}], "meta": {"profile": ["http://p"]}});
        let pm = |pairs: &[(&str, &str)]| matches(&p, ResourceType::PATIENT, &gp(pairs));
        assert_eq!(pm(&[("name", "mül")]), Ok(true));
        assert_eq!(pm(&[("name", "ann")]), Ok(true));
        assert_eq!(pm(&[("name", "nna")]), Ok(false));
        assert_eq!(pm(&[("name:contains", "nna")]), Ok(true));
        assert_eq!(pm(&[("family:exact", "müller")]), Ok(false));
        assert_eq!(pm(&[("family:exact", "Müller")]), Ok(true));
        assert_eq!(pm(&[("active", "true")]), Ok(true));
        assert_eq!(pm(&[("active", "false")]), Ok(false));
        assert_eq!(pm(&[("_profile", "http://p")]), Ok(true));
        assert_eq!(pm(&[("_profile", "http://q")]), Ok(false));
    }

    #[test]
    fn unsupported_is_an_error() {
        let lab = obs("laboratory", "final");
        let kind = |pairs: &[(&str, &str)]| m(&lab, pairs).unwrap_err().kind;
        assert_eq!(kind(&[("nope", "x")]), UnsupportedKind::UnknownParameter);
        assert_eq!(
            kind(&[("subject.name", "x")]),
            UnsupportedKind::UnknownParameter
        );
        assert_eq!(
            kind(&[("date", "2020")]),
            UnsupportedKind::ParameterType("date".into())
        );
        assert_eq!(kind(&[("category:text", "lab")]), UnsupportedKind::Modifier);
        assert_eq!(kind(&[("category", "a,")]), UnsupportedKind::Value);
        assert_eq!(kind(&[("category", "a\\")]), UnsupportedKind::Value);
        assert_eq!(
            kind(&[("_content", "x")]),
            UnsupportedKind::Expression(FhirPathError::NoBranch)
        );
        // One unsupported parameter fails the whole scope even when another matches.
        assert!(m(&lab, &[("category", "laboratory"), ("nope", "x")]).is_err());
    }

    #[test]
    fn escapes() {
        let r = json!({"resourceType": "Observation", "status": "a,b"});
        assert_eq!(m(&r, &[("status", "a\\,b")]), Ok(true));
        assert_eq!(m(&r, &[("status", "a,b")]), Ok(false));
        let r =
            json!({"resourceType": "Observation", "identifier": [{"system": "s", "value": "x|y"}]});
        assert_eq!(m(&r, &[("identifier", "s|x\\|y")]), Ok(true));
    }
}
