//! The FHIRPath-subset evaluator. Input: `expression\nResourceType\nresource-json`.
//! Oracles: no panic; evaluation is deterministic; every selected element lies inside the
//! resource (a pointer into it, checked by identity through a walk).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use smartgate::compartment::fhirpath::{Expr, reference_type, split_reference};
use smartgate::fhir::ResourceType;

fn contains(root: &Value, target: *const Value) -> bool {
    if std::ptr::eq(root, target) {
        return true;
    }
    match root {
        Value::Array(a) => a.iter().any(|v| contains(v, target)),
        Value::Object(o) => o.values().any(|v| contains(v, target)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let expr = parts.next().unwrap_or_default();
    let rtype = parts.next().unwrap_or_default();
    let json = parts.next().unwrap_or_default();
    let _ = split_reference(expr);
    let rtype = ResourceType::parse(rtype.trim()).or_else(|| ResourceType::parse("Observation"));
    let Some(rtype) = rtype else { return };
    let Ok(compiled) = Expr::compile(expr, rtype) else {
        return;
    };
    let _ = compiled.reads_top_level("subject");
    let Ok(resource) = serde_json::from_str::<Value>(json) else {
        return;
    };
    let a = compiled.evaluate(&resource);
    let b = compiled.evaluate(&resource);
    assert_eq!(a.len(), b.len());
    for v in &a {
        assert!(
            contains(&resource, *v),
            "selected an element outside the resource"
        );
        let _ = reference_type(v);
    }
});
