//! Claims (of a verified JWT or an introspection answer) ⇒ [`Grant`], per the claims mapping.
//! Pure: no I/O, no clock.

use serde_json::{Map, Value};

use super::config::ClaimsMapping;
use super::error::AuthError;
use super::grant::{Grant, TokenKind};
use crate::fhir::is_valid_id;
use crate::scope::ScopeSet;

/// The first of `names` present in `claims`. `/…` names are JSON Pointers.
fn lookup<'a>(claims: &'a Map<String, Value>, names: &[String]) -> Option<&'a Value> {
    names.iter().find_map(|name| {
        let v = if let Some(ptr) = name.strip_prefix('/') {
            let (head, rest) = ptr.split_once('/').unwrap_or((ptr, ""));
            let top = claims.get(&unescape_pointer(head))?;
            if rest.is_empty() {
                Some(top)
            } else {
                top.pointer(&format!("/{rest}"))
            }
        } else {
            claims.get(name)
        };
        v.filter(|v| !v.is_null())
    })
}

fn unescape_pointer(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

/// A string claim; present with another type ⇒ malformed.
fn string(claims: &Map<String, Value>, names: &[String]) -> Result<Option<String>, AuthError> {
    match lookup(claims, names) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AuthError::Malformed),
    }
}

/// A launch-context id claim: absent, or a plain FHIR id; anything else ⇒ `bad`.
fn context_id(
    claims: &Map<String, Value>,
    names: &[String],
    bad: AuthError,
) -> Result<Option<String>, AuthError> {
    match lookup(claims, names) {
        None => Ok(None),
        Some(Value::String(s)) if is_valid_id(s) => Ok(Some(s.clone())),
        Some(_) => Err(bad),
    }
}

/// Scopes from a space-separated string or an array of strings. Non-string array members
/// grant nothing; any other type is malformed.
fn scopes(claims: &Map<String, Value>, names: &[String]) -> Result<ScopeSet, AuthError> {
    match lookup(claims, names) {
        None => Ok(ScopeSet::parse("")),
        Some(Value::String(s)) => Ok(ScopeSet::parse(s)),
        Some(Value::Array(items)) => {
            Ok(ScopeSet::from_iter(items.iter().filter_map(Value::as_str)))
        }
        Some(_) => Err(AuthError::Malformed),
    }
}

/// A NumericDate (integer or fractional seconds, RFC 7519 §2), truncated.
pub(crate) fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// Builds the [`Grant`]. `exp` must be present and numeric; the caller has already checked
/// signature/activity and times.
pub(crate) fn grant_from_claims(
    claims: &Map<String, Value>,
    mapping: &ClaimsMapping,
    kind: TokenKind,
    token_hash: [u8; 32],
) -> Result<Grant, AuthError> {
    let expires_at = match claims.get("exp") {
        None | Some(Value::Null) => return Err(AuthError::MissingClaim),
        Some(v) => numeric_date(v).ok_or(AuthError::Malformed)?,
    };
    let issuer = match claims.get("iss") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    Ok(Grant {
        issuer,
        subject: string(claims, &mapping.subject)?,
        client_id: string(claims, &mapping.client_id)?,
        fhir_user: string(claims, &mapping.fhir_user)?,
        patient: context_id(claims, &mapping.patient, AuthError::BadPatientClaim)?,
        encounter: context_id(claims, &mapping.encounter, AuthError::BadEncounterClaim)?,
        expires_at,
        scopes: scopes(claims, &mapping.scope)?,
        kind,
        token_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn grant(v: Value) -> Result<Grant, AuthError> {
        grant_from_claims(
            &claims(v),
            &ClaimsMapping::default(),
            TokenKind::Jwt,
            [7; 32],
        )
    }

    #[test]
    fn smart_claims() {
        let g = grant(json!({
            "iss": "https://as", "sub": "u1", "client_id": "app", "fhirUser": "Practitioner/9",
            "patient": "p-1.2", "encounter": "e1", "exp": 2000000000,
            "scope": "launch patient/Observation.rs openid fhirUser"
        }))
        .unwrap();
        assert_eq!(g.issuer.as_deref(), Some("https://as"));
        assert_eq!(g.subject.as_deref(), Some("u1"));
        assert_eq!(g.client_id.as_deref(), Some("app"));
        assert_eq!(g.fhir_user.as_deref(), Some("Practitioner/9"));
        assert_eq!(g.patient.as_deref(), Some("p-1.2"));
        assert_eq!(g.encounter.as_deref(), Some("e1"));
        assert_eq!(g.expires_at, 2_000_000_000);
        assert_eq!(g.scopes.data().len(), 1);
        assert!(g.scopes.has_other("openid"));
        assert_eq!(g.token_hash, [7; 32]);
    }

    #[test]
    fn scp_array_and_azp() {
        let g = grant(json!({
            "exp": 5, "azp": "app2", "scp": ["patient/Patient.r", "user/*.cruds", 3]
        }))
        .unwrap();
        assert_eq!(g.client_id.as_deref(), Some("app2"));
        assert_eq!(g.scopes.data().len(), 2);
        // client_id wins over azp when both are there.
        let g = grant(json!({"exp": 5, "azp": "x", "client_id": "y"})).unwrap();
        assert_eq!(g.client_id.as_deref(), Some("y"));
    }

    #[test]
    fn no_scope_claim_grants_nothing() {
        let g = grant(json!({"exp": 5})).unwrap();
        assert!(g.scopes.data().is_empty());
        assert!(g.patient.is_none());
        assert_eq!(
            grant(json!({"exp": 5, "scope": {"a": 1}})).err(),
            Some(AuthError::Malformed)
        );
    }

    #[test]
    fn patient_claim_must_be_a_plain_id() {
        for bad in [
            json!("Patient/123"),
            json!("a b"),
            json!(""),
            json!("x".repeat(65)),
            json!(123),
            json!(["1"]),
            json!("123,456"),
            json!("../x"),
            json!("..%2Fx"),
        ] {
            assert_eq!(
                grant(json!({"exp": 5, "patient": bad})).err(),
                Some(AuthError::BadPatientClaim),
                "{bad}"
            );
        }
        assert_eq!(
            grant(json!({"exp": 5, "encounter": "Encounter/1"})).err(),
            Some(AuthError::BadEncounterClaim)
        );
        assert!(grant(json!({"exp": 5, "patient": "x".repeat(64)})).is_ok());
    }

    #[test]
    fn custom_mapping_and_pointers() {
        let mapping = ClaimsMapping {
            patient: vec!["launch_patient".into(), "/context/patient".into()],
            scope: vec!["scp".into()],
            client_id: vec!["cid".into()],
            ..ClaimsMapping::default()
        };
        let c = claims(json!({
            "exp": 5.9, "context": {"patient": "p7"}, "scope": "patient/*.r",
            "scp": "patient/Observation.r", "cid": "c1"
        }));
        let g = grant_from_claims(&c, &mapping, TokenKind::Introspected, [0; 32]).unwrap();
        assert_eq!(g.patient.as_deref(), Some("p7"));
        assert_eq!(g.expires_at, 5);
        assert_eq!(g.client_id.as_deref(), Some("c1"));
        assert_eq!(g.scopes.data().len(), 1);
        assert_eq!(g.kind, TokenKind::Introspected);
        let c = claims(json!({"exp": 5, "launch_patient": "p8", "context": {"patient": "p7"}}));
        let g = grant_from_claims(&c, &mapping, TokenKind::Jwt, [0; 32]).unwrap();
        assert_eq!(g.patient.as_deref(), Some("p8"));
        // A URL-style claim name with `/` via pointer escaping.
        let mapping = ClaimsMapping {
            patient: vec!["/https:~1~1ex.org~1patient".into()],
            ..ClaimsMapping::default()
        };
        let c = claims(json!({"exp": 5, "https://ex.org/patient": "p9"}));
        let g = grant_from_claims(&c, &mapping, TokenKind::Jwt, [0; 32]).unwrap();
        assert_eq!(g.patient.as_deref(), Some("p9"));
    }

    #[test]
    fn exp_and_types() {
        assert_eq!(grant(json!({})).err(), Some(AuthError::MissingClaim));
        assert_eq!(
            grant(json!({"exp": "soon"})).err(),
            Some(AuthError::Malformed)
        );
        assert_eq!(grant(json!({"exp": -1})).err(), Some(AuthError::Malformed));
        assert_eq!(
            grant(json!({"exp": 5, "sub": 1})).err(),
            Some(AuthError::Malformed)
        );
        assert_eq!(
            grant(json!({"exp": 5, "iss": []})).err(),
            Some(AuthError::Malformed)
        );
        assert_eq!(
            grant(json!({"exp": 5, "fhirUser": {"r": 1}})).err(),
            Some(AuthError::Malformed)
        );
    }
}
