//! Properties of classify + authorize:
//! (a) the parser never panics, whatever the bytes;
//! (b) re-encoding a parsed request (`upstream_target`) and parsing it again gives the
//!     same `FhirRequest`;
//! (c) adding a scope never turns an allow into a deny (equivalently, removing one never
//!     turns a deny into an allow).

use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use smartgate::authenticate::{Grant, TokenKind};
use smartgate::authorize::{Outcome, Rules, authorize};
use smartgate::classify::{FhirRequest, Interaction, RawRequest, classify, classify_entry};
use smartgate::scope::ScopeSet;

/// Pieces that make paths and queries interesting: separators, escapes, types, ids.
const PIECES: &[&str] = &[
    "/",
    "%",
    "%2F",
    "%2f",
    "%5C",
    "%2e",
    ".",
    "..",
    ";",
    "%00",
    "%25",
    "%ff",
    "?",
    "&",
    "=",
    "+",
    ":",
    "$",
    "*",
    ",",
    "|",
    "\\",
    "#",
    " ",
    "\u{0}",
    "é",
    "Patient",
    "Observation",
    "patient",
    "_history",
    "_search",
    "metadata",
    "$everything",
    "$export",
    "_id",
    "A",
    "B",
    "1",
    "x",
    "%41",
    "%3A",
    "subject",
    ".name",
    ":missing",
    "_has:Observation:patient:code",
    "_type",
    "Patient/A",
    "http://x/Patient/A",
    "_method",
    "_summary",
    "_include",
];

fn mixed() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(PIECES).prop_map(str::to_owned),
            1 => any::<String>(),
        ],
        0..12,
    )
    .prop_map(|v| v.concat())
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ])
}

fn again(req: &FhirRequest) -> FhirRequest {
    let m = if req.head {
        Method::HEAD
    } else {
        req.upstream_method(&Method::GET)
    };
    let target = req.upstream_target();
    classify_entry(&m, &target, req.if_none_exist().as_deref())
        .unwrap_or_else(|e| panic!("re-classifying {target:?} failed: {e:?}"))
}

fn grant(scopes: &[&str], patient: bool, user: bool) -> Grant {
    Grant {
        issuer: None,
        subject: None,
        client_id: None,
        fhir_user: user.then(|| "Practitioner/9".to_owned()),
        patient: patient.then(|| "A".to_owned()),
        encounter: None,
        expires_at: 0,
        scopes: ScopeSet::from_iter(scopes.iter().copied()),
        kind: TokenKind::Jwt,
        token_hash: [0; 32],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// (a) + (b) on arbitrary input: no panic, and whatever parses round-trips.
    #[test]
    fn never_panics_and_round_trips(
        m in method(),
        path in mixed(),
        query in prop::option::of(mixed()),
        body in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        form in any::<bool>(),
        ine in prop::option::of(mixed()),
    ) {
        let mut headers = HeaderMap::new();
        if form {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        if let Some(v) = ine.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert("if-none-exist", v);
        }
        let raw = RawRequest { method: &m, path: &path, query: query.as_deref(), headers: &headers, body: body.as_deref() };
        if let Ok(req) = classify(&raw) {
            if !matches!(req.interaction, Interaction::Batch | Interaction::Transaction) {
                prop_assert_eq!(again(&req), req.clone());
            }
            for g in [grant(&["patient/*.cruds"], true, false), grant(&["user/*.rs"], false, true)] {
                if let Outcome::Forward(plan) = authorize(&g, &req, &Rules::default()).outcome {
                    prop_assert_eq!(again(&plan.request), plan.request.clone());
                }
            }
        }
        let url = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
        if let Ok(req) = classify_entry(&m, &url, ine.as_deref()) {
            prop_assert_eq!(again(&req), req);
        }
    }

    /// (b) on well-formed requests built from parts.
    #[test]
    fn structured_round_trip(
        rtype in prop::sample::select(vec!["Patient", "Observation", "Condition", "Group"]),
        id in "[A-Za-z0-9.-]{1,8}",
        names in prop::collection::vec("[a-z_]{1,6}(:[a-z]{1,4})?(\\.[a-z]{1,4})?", 0..4),
        values in prop::collection::vec(any::<String>(), 4),
        shape in 0..8u8,
    ) {
        prop_assume!(id != "." && id != "..");
        let mut query: Vec<String> = names
            .iter()
            .zip(&values)
            .map(|(n, v)| format!("{n}={}", percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)))
            .collect();
        query.insert(0, "x=1".to_owned());
        let q = query.join("&");
        let (m, target) = match shape {
            0 => (Method::GET, format!("{rtype}?{q}")),
            1 => (Method::GET, format!("{rtype}/{id}?{q}")),
            2 => (Method::GET, format!("Patient/{id}/{rtype}?{q}")),
            3 => (Method::GET, format!("?{q}")),
            4 => (Method::POST, format!("{rtype}/{id}/$everything?{q}")),
            5 => (Method::DELETE, format!("{rtype}?{q}")),
            6 => (Method::GET, format!("{rtype}/{id}/_history/{id}")),
            _ => (Method::HEAD, format!("{rtype}/_history?{q}")),
        };
        let req = classify_entry(&m, &target, None);
        // Control characters in values are refused; everything else must parse.
        let used = &values[..names.len()];
        if used.iter().any(|v| v.chars().any(char::is_control)) && shape != 6 {
            return Ok(());
        }
        let req = req.unwrap_or_else(|e| panic!("{target:?}: {e:?}"));
        prop_assert_eq!(again(&req), req);
    }

    /// (c) monotonicity: a superset of scopes allows at least what the subset allows.
    #[test]
    fn adding_a_scope_never_denies(
        req_i in 0..REQUESTS.len(),
        subset in prop::collection::vec(prop::sample::select(SCOPES), 0..5),
        extra in prop::sample::select(SCOPES),
        patient in any::<bool>(),
        user in any::<bool>(),
    ) {
        let (m, target) = REQUESTS[req_i];
        let m = Method::from_bytes(m.as_bytes()).unwrap();
        let req = classify_entry(&m, target, None).unwrap();
        let rules = Rules::default();
        let small = authorize(&grant(&subset, patient, user), &req, &rules);
        let mut more = subset.clone();
        more.push(extra);
        let big = authorize(&grant(&more, patient, user), &req, &rules);
        if matches!(small.outcome, Outcome::Forward(_)) {
            prop_assert!(matches!(big.outcome, Outcome::Forward(_)), "{:?} {:?} + {}: {:?} then {:?}", m, target, extra, small, big);
        }
    }
}

const SCOPES: &[&str] = &[
    "patient/Observation.rs",
    "patient/Observation.r",
    "patient/Observation.s",
    "patient/Observation.rs?category=laboratory",
    "patient/Observation.rs?status=final",
    "patient/*.rs",
    "patient/*.cruds",
    "patient/Patient.rs",
    "patient/Patient.u",
    "patient/Observation.cud",
    "patient/Practitioner.rs",
    "user/Observation.rs",
    "user/Observation.rs?category=laboratory",
    "user/Patient.rs",
    "user/*.s",
    "user/*.cruds",
    "user/Observation.us",
    "system/*.rs",
    "system/Observation.rs?category=lab",
    "system/Observation.cruds",
    "openid",
    "fhirUser",
    "user/Observation.sr",
    "patient/observation.rs",
];

const REQUESTS: &[(&str, &str)] = &[
    ("GET", "Observation/1"),
    ("GET", "Observation"),
    ("GET", "Observation?patient=A"),
    ("GET", "Observation?patient=B"),
    ("GET", "Observation?category=laboratory"),
    ("GET", "Observation?_has:Observation:patient:code=x"),
    ("GET", "Observation?subject:Patient.name=x"),
    (
        "GET",
        "Observation?_include=Observation:patient&_summary=true",
    ),
    ("GET", "Observation/_history"),
    ("GET", "_history"),
    ("GET", "?_type=Observation,Patient"),
    ("GET", "?_type=Observation"),
    ("GET", "Patient/A/Observation"),
    ("GET", "Patient/B/*"),
    ("GET", "Patient/A/$everything"),
    ("GET", "Patient"),
    ("GET", "Practitioner/9"),
    ("POST", "Observation"),
    ("PUT", "Observation/1"),
    ("PUT", "Patient/A"),
    ("PUT", "Observation?identifier=x"),
    ("DELETE", "Observation?identifier=x"),
    ("PATCH", "Observation/1"),
    ("GET", "metadata"),
    ("GET", "$graphql"),
];
