//! The path + query parser: `classify::classify` on a whole request, then authorize.
//! Oracles: no panic; whatever parses (and whatever authorize plans) re-classifies to the
//! same request from its upstream target, so the proxy forwards exactly what it judged.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use smartgate::authorize::{Outcome, Rules, authorize};
use smartgate::classify::{Interaction, RawRequest, classify, classify_entry};

fuzz_target!(|data: &[u8]| {
    let Some(input) = common::parse_request(data) else {
        return;
    };
    let raw = RawRequest {
        method: &input.method,
        path: &input.path,
        query: input.query.as_deref(),
        headers: &input.headers,
        body: Some(input.body),
    };
    if let Ok(req) = classify(&raw) {
        if !matches!(
            req.interaction,
            Interaction::Batch | Interaction::Transaction
        ) {
            assert_eq!(common::again(&req), req);
        }
        let rules = Rules::default();
        for g in common::grants() {
            if let Outcome::Forward(plan) = authorize(&g, &req, &rules).outcome
                && !matches!(
                    plan.request.interaction,
                    Interaction::Batch | Interaction::Transaction
                )
            {
                assert_eq!(common::again(&plan.request), plan.request);
            }
        }
    }
    let url = match &input.query {
        Some(q) => format!("{}?{q}", input.path),
        None => input.path.clone(),
    };
    if let Ok(req) = classify_entry(&input.method, &url, None) {
        assert_eq!(common::again(&req), req);
    }
});
