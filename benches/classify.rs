//! classify + authorize on the hot path: a typical read and a typical search.

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use smartgate::authenticate::{Grant, TokenKind};
use smartgate::authorize::{Rules, authorize};
use smartgate::classify::{RawRequest, classify};
use smartgate::scope::ScopeSet;
use std::hint::black_box;

/// The allocator the binary uses (src/main.rs), so the figures match production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn grant() -> Grant {
    Grant {
        issuer: None,
        subject: None,
        client_id: Some("app".into()),
        fhir_user: None,
        patient: Some("85".into()),
        encounter: None,
        expires_at: 0,
        scopes: ScopeSet::parse(
            "openid fhirUser launch/patient patient/Patient.rs patient/Observation.rs \
             patient/Condition.rs patient/Encounter.rs patient/MedicationRequest.rs \
             patient/Practitioner.rs patient/Organization.rs",
        ),
        kind: TokenKind::Jwt,
        token_hash: [0; 32],
    }
}

fn bench(c: &mut Criterion) {
    let g = grant();
    let rules = Rules::default();
    let headers = HeaderMap::new();
    let cases = [
        ("read", "Observation/123", None),
        (
            "search",
            "Observation",
            Some("patient=85&category=laboratory&_count=50"),
        ),
    ];
    for (name, path, query) in cases {
        c.bench_function(&format!("classify+authorize {name}"), |b| {
            b.iter(|| {
                let raw = RawRequest {
                    method: &Method::GET,
                    path: black_box(path),
                    query: black_box(query),
                    headers: &headers,
                    body: None,
                };
                let req = classify(&raw).ok();
                req.map(|r| authorize(&g, &r, &rules))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
