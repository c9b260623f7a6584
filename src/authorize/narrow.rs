//! Rewriting and checking search parameters: compartment pinning, granular narrowing,
//! side channels. Pure functions over `Vec<SearchParam>`.

use crate::authenticate::Grant;
use crate::classify::SearchParam;
use crate::compartment::definition::{self, Role};
use crate::fhir::ResourceType;
use crate::scope::{Context, Letter, SmartScope};

/// Members of the Patient compartment, plus Device (not a member in R4, but searched by
/// its `patient` parameter, so it is pinned like one).
pub(super) fn is_member_like(t: ResourceType) -> bool {
    t == ResourceType::DEVICE || definition::is_member_type(t)
}

/// The parameter that pins a search of `t` to one patient.
fn narrowing_param(t: ResourceType) -> Option<&'static str> {
    if t == ResourceType::DEVICE {
        return Some("patient");
    }
    definition::rule(t)?.narrowing_param.as_deref()
}

/// Whether `code` names a patient in a search of `t`.
fn names_patient(t: ResourceType, code: &str) -> bool {
    definition::names_patient(t, code) || (t == ResourceType::DEVICE && code == "patient")
}

/// Whether `code` selects the patient a record is *about* (so no extra pin is needed).
fn selects_subject(t: ResourceType, code: &str) -> bool {
    narrowing_param(t) == Some(code)
        || definition::rule(t).is_some_and(|r| {
            r.params
                .iter()
                .any(|p| p.code == code && p.role == Role::Subject)
        })
}

/// Parameters refused under a `patient/` grant: side channels the response filter cannot
/// close (`_has`, chains, …) and server-specific query languages.
pub(super) fn forbidden_under_patient(p: &SearchParam, system_search: bool) -> bool {
    p.chain.is_some()
        || matches!(
            p.name.as_str(),
            "_has" | "_filter" | "_query" | "_contained" | "_containedType" | "_list"
        )
        || (p.name == "_type" && !system_search)
}

/// Whether a reference search value points at patient `a`: `a` (only where `bare_ok`),
/// `Patient/a`, or an absolute URL ending in `/Patient/a`; never a list.
fn refers_to(value: &str, a: &str, bare_ok: bool) -> bool {
    if value
        .bytes()
        .any(|b| matches!(b, b',' | b'|' | b'\\' | b'$') || b.is_ascii_whitespace())
    {
        return false;
    }
    if value == a {
        return bare_ok;
    }
    if value.strip_prefix("Patient/") == Some(a) {
        return true;
    }
    let absolute = value.starts_with("http://") || value.starts_with("https://");
    absolute
        && value
            .strip_suffix(a)
            .is_some_and(|rest| rest.ends_with("/Patient/"))
}

/// Checks every parameter that names a patient (must name only `a`, once, plainly) and,
/// when `pin`, adds the narrowing parameter of `types` unless a subject parameter already
/// selects `a`. An absolute URL of `a` is rewritten to `Patient/a`: servers match
/// references by their stored (relative) form, so the URL would select nothing. Returns
/// whether parameters were added or rewritten.
pub(super) fn compartment(
    params: &mut Vec<SearchParam>,
    types: &[ResourceType],
    a: &str,
    pin: bool,
) -> Result<bool, &'static str> {
    let mut naming: Option<&SearchParam> = None;
    for p in params.iter() {
        if !types.iter().any(|t| names_patient(*t, &p.name)) {
            continue;
        }
        if naming.is_some() {
            return Err("the patient may be named only once");
        }
        if p.modifier.is_some() || p.chain.is_some() {
            return Err("modifiers and chains are not allowed on the patient parameter");
        }
        let ok = if p.name == "_id" {
            p.value == a
        } else {
            refers_to(&p.value, a, p.name == "patient")
        };
        if !ok {
            return Err("the search names a patient other than the launch patient");
        }
        naming = Some(p);
    }
    let mut rewritten = false;
    for p in params.iter_mut() {
        let absolute = p.value.starts_with("http://") || p.value.starts_with("https://");
        if absolute && p.name != "_id" && types.iter().any(|t| names_patient(*t, &p.name)) {
            p.value = format!("Patient/{a}");
            rewritten = true;
        }
    }
    let naming = params
        .iter()
        .find(|p| types.iter().any(|t| names_patient(*t, &p.name)));
    if !pin {
        return Ok(rewritten);
    }
    let mut np: Option<&'static str> = None;
    for t in types {
        let n = narrowing_param(*t).ok_or("this type cannot be confined to the patient")?;
        if np.is_some_and(|prev| prev != n) {
            return Err("these types cannot be confined to the patient together");
        }
        np = Some(n);
    }
    let np = np.ok_or("this search cannot be confined to the patient")?;
    if naming.is_some_and(|p| types.iter().all(|t| selects_subject(*t, &p.name))) {
        return Ok(rewritten);
    }
    let value = if np == "_id" {
        a.to_owned()
    } else {
        format!("Patient/{a}")
    };
    params.push(SearchParam {
        name: np.to_owned(),
        modifier: None,
        chain: None,
        value,
    });
    Ok(true)
}

/// Narrows `params` to the granular scopes (all granular, for one type and letter).
/// `None` when none of them can be expressed as search parameters.
pub(super) fn granular(params: &mut Vec<SearchParam>, scopes: &[&SmartScope]) -> Option<bool> {
    let sets: Vec<Vec<SearchParam>> = scopes
        .iter()
        .filter_map(|s| {
            s.granular
                .iter()
                .map(|g| SearchParam::new(&g.name, g.value.clone()).ok())
                .collect::<Option<Vec<_>>>()
        })
        .filter(|set| !set.is_empty())
        .collect();
    let first = sets.first()?;
    if sets
        .iter()
        .any(|set| set.iter().all(|g| params.contains(g)))
    {
        return Some(false);
    }
    let same_single = sets.iter().all(|set| {
        set.len() == 1
            && set.first().is_some_and(|g| {
                first.first().is_some_and(|f| {
                    f.name == g.name && f.modifier == g.modifier && f.chain == g.chain
                })
            })
    });
    if same_single && let Some(f) = first.first() {
        let values: Vec<&str> = sets
            .iter()
            .filter_map(|set| set.first().map(|g| g.value.as_str()))
            .collect();
        params.push(SearchParam {
            value: values.join(","),
            ..f.clone()
        });
    } else {
        params.extend(first.iter().cloned());
    }
    Some(true)
}

/// Removes `_elements` and `_summary` so that the filter sees the fields it judges by.
pub(super) fn neutralize(params: &mut Vec<SearchParam>) -> bool {
    let before = params.len();
    params.retain(|p| p.name != "_elements" && p.name != "_summary");
    params.len() != before
}

/// Under `user/`/`system/` grants: `_has:T:…` needs an unrestricted `s` on `T`, a chain
/// needs it on its type modifier (or on `*` when the chain names no type), because what
/// they reveal about those resources never passes the response filter.
pub(super) fn side_channels(
    grant: &Grant,
    ctx: Context,
    params: &[SearchParam],
) -> Result<(), &'static str> {
    let plain = |t: Option<ResourceType>| {
        grant.scopes.data().iter().any(|s| {
            s.context == ctx
                && s.perms.has(Letter::S)
                && s.granular.is_empty()
                && match t {
                    Some(t) => s.target.covers(t),
                    None => s.target == crate::scope::Target::AnyType,
                }
        })
    };
    for p in params {
        let modifier_type = p
            .modifier
            .as_deref()
            .and_then(|m| ResourceType::parse(m.split(':').next().unwrap_or("")));
        if p.name == "_has" {
            if !modifier_type.is_some_and(|t| plain(Some(t))) {
                return Err("_has needs search access to the type it looks into");
            }
        } else if p.chain.is_some() && !plain(modifier_type) {
            return Err("a chained parameter needs search access to the type it looks into");
        }
    }
    Ok(())
}
