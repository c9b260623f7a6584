//! The Bundle filter (and the single-resource check) on arbitrary upstream bytes.
//! Oracles: no panic; the output is JSON; every resource the filter kept is visible when
//! judged again, whole, by `check_resource` (nothing leaves that a full check would hide).
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use smartgate::filter::{
    FilterContext, NonMemberAccess, Visibility, check_resource, check_single, filter_bundle,
};
use smartgate::scope::Letter;

const UP: &str = "http://upstream:8080/fhir";
const PUB: &str = "https://gw.example/r4";

fuzz_target!(|body: &[u8]| {
    let ctxs = [
        FilterContext::new(UP, PUB, false, NonMemberAccess::WhenGranted),
        FilterContext::new(UP, PUB, true, NonMemberAccess::Deny),
    ];
    for (i, g) in common::grants().iter().enumerate() {
        let ctx = &ctxs[i % 2];
        let view = common::view(g, Letter::S);
        let _ = check_single(body, None, &view, g, ctx);
        let Ok(out) = filter_bundle(body, &view, g, ctx, &|u| Some(format!("{u}&_sg=x"))) else {
            continue;
        };
        let v: Value = serde_json::from_slice(&out.body).expect("the filter wrote invalid JSON");
        assert_eq!(v["resourceType"], "Bundle");
        for e in v["entry"].as_array().into_iter().flatten() {
            if let Some(r) = e.get("resource") {
                assert_eq!(
                    check_resource(r, &view, g, ctx),
                    Visibility::Visible,
                    "kept a resource a full check hides: {r}"
                );
            }
        }
    }
});
