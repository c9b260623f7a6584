//! Shared by the fuzz targets: an HTTP-like text format for requests, and the grants and
//! views every target judges with.
#![allow(dead_code)]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use smartgate::authenticate::{Grant, TokenKind};
use smartgate::authorize::View;
use smartgate::classify::{FhirRequest, classify_entry};
use smartgate::scope::{Context, Letter, ScopeSet};

/// A request written as `METHOD target\nName: value\n…\n\nbody` (the seed format).
pub struct Input<'a> {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: &'a [u8],
}

pub fn parse_request(data: &[u8]) -> Option<Input<'_>> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &b""[..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n');
    let first = lines.next()?;
    let (method, target) = first.split_once(' ').unwrap_or((first, ""));
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let target = target.strip_prefix('/').unwrap_or(target);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.trim().as_bytes()),
            HeaderValue::from_str(v.trim()),
        ) {
            headers.append(k, v);
        }
    }
    Some(Input {
        method,
        path,
        query,
        headers,
        body,
    })
}

pub fn grant(scopes: &str, patient: Option<&str>) -> Grant {
    Grant {
        issuer: None,
        subject: None,
        client_id: None,
        fhir_user: Some("Practitioner/9".into()),
        patient: patient.map(str::to_owned),
        encounter: None,
        expires_at: u64::MAX,
        scopes: ScopeSet::parse(scopes),
        kind: TokenKind::Jwt,
        token_hash: [0; 32],
    }
}

/// Grants of every context, plain and granular.
pub fn grants() -> Vec<Grant> {
    vec![
        grant("patient/*.cruds launch/patient", Some("A")),
        grant(
            "patient/Observation.rs?category=laboratory patient/Patient.r patient/Practitioner.rs",
            Some("A"),
        ),
        grant("user/*.rs user/Observation.cud", None),
        grant("system/*.*", None),
        grant("patient/*.rs", None),
    ]
}

pub fn view(g: &Grant, letter: Letter) -> View {
    let context = if g.patient.is_some() {
        Context::Patient
    } else if g.scopes.data().iter().any(|s| s.context == Context::User) {
        Context::User
    } else {
        Context::System
    };
    View {
        context,
        patient: g.patient.clone(),
        letter,
    }
}

/// Re-classifies what would be sent upstream: it must mean the same request.
pub fn again(req: &FhirRequest) -> FhirRequest {
    let m = if req.head {
        Method::HEAD
    } else {
        req.upstream_method(&Method::GET)
    };
    let target = req.upstream_target();
    match classify_entry(&m, &target, req.if_none_exist().as_deref()) {
        Ok(r) => r,
        Err(e) => panic!("re-classifying {target:?} failed: {e:?} (from {req:?})"),
    }
}
