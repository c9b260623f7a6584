//! Property tests for the two parsers the other property suites do not cover: the
//! FHIRPath-subset evaluator and the configuration loader (the fuzz targets in `fuzz/`
//! explore the same code with coverage guidance when a nightly toolchain is present).

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Value, json};
use smartgate::compartment::fhirpath::{Expr, reference_type, split_reference};
use smartgate::config::Config;
use smartgate::fhir::ResourceType;

fn obs() -> ResourceType {
    ResourceType::parse("Observation").unwrap()
}

/// Arbitrary JSON, a few levels deep, with keys the expressions below use.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[A-Za-z0-9/:._ -]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "Patient/A",
            "Group/g",
            "urn:uuid:1",
            "#c",
            "Patient/A/_history/2"
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "subject",
                    "reference",
                    "type",
                    "code",
                    "valueQuantity",
                    "valueString",
                    "value",
                    "performer",
                    "coding",
                    "system",
                    "actor",
                    "participant",
                ]),
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

fn contains(root: &Value, target: &Value) -> bool {
    std::ptr::eq(root, target)
        || match root {
            Value::Array(a) => a.iter().any(|v| contains(v, target)),
            Value::Object(o) => o.values().any(|v| contains(v, target)),
            _ => false,
        }
}

/// Expressions of the supported subset: fields, each optionally filtered or cast.
fn arb_expr() -> impl Strategy<Value = String> {
    let field = prop::sample::select(vec![
        ".subject",
        ".performer",
        ".participant",
        ".actor",
        ".coding",
        ".value",
        ".reference",
    ]);
    let suffix = prop::sample::select(vec![
        "",
        "",
        ".where(resolve() is Patient)",
        ".where(system = 'x')",
        ".as(Quantity)",
        ".ofType(string)",
    ]);
    prop::collection::vec((field, suffix), 1..4).prop_map(|steps| {
        let path: String = steps.iter().map(|(f, s)| format!("{f}{s}")).collect();
        format!("Observation{path}")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Arbitrary text never panics the compiler; arbitrary JSON never panics evaluation.
    #[test]
    fn fhirpath_never_panics(text in "\\PC{0,60}", resource in arb_json()) {
        let _ = split_reference(&text);
        if let Ok(e) = Expr::compile(&text, obs()) {
            for v in e.evaluate(&resource) {
                prop_assert!(contains(&resource, v));
            }
        }
    }

    /// Whatever an expression selects lies inside the resource, and never a JSON null;
    /// `resolve() is Patient` keeps only references whose type is Patient.
    #[test]
    fn fhirpath_selects_only_inside_the_resource(expr in arb_expr(), resource in arb_json()) {
        let e = Expr::compile(&expr, obs()).unwrap();
        let selected = e.evaluate(&resource);
        for v in &selected {
            prop_assert!(contains(&resource, v), "{expr} selected {v} outside {resource}");
            prop_assert!(!v.is_null());
        }
        if expr.ends_with("resolve() is Patient)") {
            for v in &selected {
                prop_assert_eq!(reference_type(v), Some("Patient"));
            }
        }
    }

    /// A union selects exactly what its branches select, in order; branches rooted at
    /// other types select nothing.
    #[test]
    fn fhirpath_union_is_the_concatenation_of_its_branches(
        a in arb_expr(),
        b in arb_expr(),
        resource in arb_json(),
    ) {
        let ea = Expr::compile(&a, obs()).unwrap();
        let eb = Expr::compile(&b, obs()).unwrap();
        let union = Expr::compile(&format!("{a} | Patient.link.other | {b}"), obs()).unwrap();
        let mut want = ea.evaluate(&resource);
        want.extend(eb.evaluate(&resource));
        let got = union.evaluate(&resource);
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert!(std::ptr::eq(*g, *w));
        }
    }

    /// A plain dotted path is field navigation with arrays flattened.
    #[test]
    fn fhirpath_dotted_path_is_navigation(resource in arb_json()) {
        let e = Expr::compile("Observation.subject.reference", obs()).unwrap();
        let mut want: Vec<&Value> = Vec::new();
        fn flat(v: &Value) -> Vec<&Value> {
            match v {
                Value::Array(a) => a.iter().filter(|x| !x.is_null()).collect(),
                Value::Null => vec![],
                other => vec![other],
            }
        }
        for s in resource.get("subject").map(flat).unwrap_or_default() {
            if let Some(r) = s.get("reference") {
                want.extend(flat(r));
            }
        }
        let got = e.evaluate(&resource);
        prop_assert_eq!(got, want);
    }
}

const MINIMAL: &str = "listen: 127.0.0.1:8443\nadmin_listen: 127.0.0.1:9464\npublic_base_url: http://127.0.0.1:8443/fhir\nupstream:\n  url: http://127.0.0.1:8103/fhir\n";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Arbitrary text never panics the loader; every error has a message and a line inside
    /// the file (or 0 when unknown).
    #[test]
    fn config_never_panics_and_locates_inside_the_file(text in "\\PC{0,200}") {
        if let Err(errors) = Config::parse(&text, Path::new("c.yaml")) {
            prop_assert!(!errors.is_empty());
            let lines = text.lines().count() as u64 + 1;
            for e in errors {
                prop_assert!(!e.message.is_empty());
                prop_assert!(e.line <= lines, "{} beyond {} lines", e, lines);
            }
        }
    }

    /// Mangling a valid file (cutting it, doubling a line, inserting junk) never panics.
    #[test]
    fn config_mangled_never_panics(cut in 0usize..200, junk in "\\PC{0,20}", at in 0usize..8) {
        let base = format!("{MINIMAL}limits:\n  max_connections: 50\n  header_read_timeout: 1s\n");
        let cut = base.get(..cut.min(base.len())).unwrap_or(&base).to_owned();
        let mut lines: Vec<&str> = base.lines().collect();
        let i = at.min(lines.len() - 1);
        lines.insert(i, &junk);
        for text in [cut, lines.join("\n"), base.replace("50", &junk)] {
            let _ = Config::parse(&text, Path::new("c.yaml"));
        }
    }

    /// Valid limits and durations round-trip; an unknown key anywhere is reported on its line.
    #[test]
    fn config_values_round_trip_and_unknown_keys_are_located(
        conns in 1usize..100_000,
        secs in 1u64..3600,
        body in 1u64..u64::from(u32::MAX),
        key in "[a-z]{3,10}_x",
    ) {
        let text = format!("{MINIMAL}limits:\n  max_connections: {conns}\n  header_read_timeout: {secs}s\n  max_body_bytes: {body}\n");
        let c = Config::parse(&text, Path::new("c.yaml")).unwrap();
        prop_assert_eq!(c.limits.max_connections, conns);
        prop_assert_eq!(c.limits.header_read_timeout.0.as_secs(), secs);
        prop_assert_eq!(c.limits.max_body_bytes, body);
        let bad = format!("{text}  {key}: 1\n");
        let errors = Config::parse(&bad, Path::new("c.yaml")).unwrap_err();
        prop_assert_eq!(errors.len(), 1);
        prop_assert_eq!(errors[0].line, bad.lines().count() as u64, "{}", errors[0]);
        prop_assert!(errors[0].message.contains(&key), "{}", errors[0]);
    }
}

/// Regressions: values `check` used to accept that made `serve` panic (a cache lifetime over
/// 1000 years in moka, `Instant + d` overflowing on every connection, a semaphore too big).
#[test]
fn config_refuses_what_serve_cannot_run() {
    for (extra, key) in [
        (
            "auth:\n  jwt:\n    issuer: http://as\n    verified_cache_ttl: 500000d\n",
            "verified_cache_ttl",
        ),
        (
            "limits:\n  header_read_timeout: 200000000000000d\n",
            "header_read_timeout",
        ),
        (
            "limits:\n  max_connections: 18446744073709551615\n",
            "limits.max_connections",
        ),
    ] {
        let text = format!("{MINIMAL}{extra}");
        let errors = Config::parse(&text, Path::new("c.yaml")).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.to_string().contains(key) || e.line == text.lines().count() as u64),
            "{key}: {errors:?}"
        );
    }
}
