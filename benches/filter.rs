//! Throughput of the response filter on realistic search Bundles (1 MB and 10 MB of
//! Observations with a Practitioner include every 10 entries, ~10% of another patient).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use smartgate::authenticate::{Grant, TokenKind};
use smartgate::authorize::View;
use smartgate::filter::{FilterContext, NonMemberAccess, filter_bundle};
use smartgate::scope::{Context, Letter, ScopeSet};

/// The allocator the binary uses (src/main.rs), so the figures match production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const UP: &str = "http://upstream:8080/fhir";

fn bundle(target_bytes: usize) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut size = 0;
    let mut i = 0u64;
    while size < target_bytes {
        let patient = if i % 10 == 3 { "B" } else { "A" };
        let obs = json!({"resourceType": "Observation", "id": format!("obs-{i}"),
            "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"},
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs", "display": "Vital Signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": "2024-01-01T10:00:00Z",
            "performer": [{"reference": "Practitioner/p1"}],
            "valueQuantity": {"value": 60 + (i % 40), "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}});
        let e = json!({"fullUrl": format!("{UP}/Observation/obs-{i}"), "resource": obs, "search": {"mode": "match"}});
        size += e.to_string().len();
        entries.push(e);
        if i % 10 == 0 {
            let p = json!({"fullUrl": format!("{UP}/Practitioner/p{i}"),
                "resource": {"resourceType": "Practitioner", "id": format!("p{i}"),
                    "name": [{"family": "Smith", "given": ["Jo"]}]},
                "search": {"mode": "include"}});
            size += p.to_string().len();
            entries.push(p);
        }
        i += 1;
    }
    serde_json::to_vec(
        &json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(),
        "link": [{"relation": "self", "url": format!("{UP}/Observation?patient=A")},
                 {"relation": "next", "url": format!("{UP}?_getpages=abc")}],
        "entry": entries}),
    )
    .unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let grant = Grant {
        issuer: None,
        subject: None,
        client_id: None,
        fhir_user: None,
        patient: Some("A".into()),
        encounter: None,
        expires_at: 0,
        scopes: ScopeSet::parse("patient/Observation.rs patient/Practitioner.rs"),
        kind: TokenKind::Jwt,
        token_hash: [0; 32],
    };
    let view = View {
        context: Context::Patient,
        patient: Some("A".into()),
        letter: Letter::S,
    };
    let ctx = FilterContext::new(
        UP,
        "https://gw.example/r4",
        false,
        NonMemberAccess::WhenGranted,
    );
    let mut group = c.benchmark_group("filter_bundle");
    for (name, size) in [("1MB", 1 << 20), ("10MB", 10 << 20)] {
        let body = bundle(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                filter_bundle(black_box(&body), &view, &grant, &ctx, &|u| {
                    Some(u.to_owned())
                })
                .map(|f| f.kept)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
