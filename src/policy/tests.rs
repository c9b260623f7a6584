use std::path::Path;

use super::*;
use crate::authenticate::TokenKind;
use crate::scope::ScopeSet;

fn grant(client: &str, scope: &str) -> Arc<Grant> {
    Arc::new(Grant {
        issuer: None,
        subject: None,
        client_id: Some(client.into()),
        fhir_user: Some("Practitioner/pr-1".into()),
        patient: None,
        encounter: None,
        expires_at: u64::MAX,
        scopes: ScopeSet::parse(scope),
        kind: TokenKind::Jwt,
        token_hash: [0; 32],
    })
}

fn set(yaml: &str) -> PolicySet {
    let loaded = parse_policy(yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e:?}"));
    PolicySet {
        policies: vec![loaded.policy],
        ..PolicySet::default()
    }
}

#[test]
fn globs() {
    assert!(Glob::new("billing-*").matches("billing-eu"));
    assert!(Glob::new("*").matches(""));
    assert!(Glob::new("a?c*d").matches("abcxxd"));
    assert!(!Glob::new("a?c*d").matches("abcxx"));
    assert!(!Glob::new("billing-*").matches("xbilling-eu"));
    assert!(Glob::new("*-*-x").matches("a-b-c-x"));
}

#[test]
fn ceiling_keeps_only_covered_scopes_and_audit_only_keeps_all() {
    let yaml = "name: c\nceilings:\n  - name: gc\n    clients: [gc]\n    scopes: [patient/Observation.rs, user/*.r]\n";
    let s = set(yaml);
    let mut note = PolicyNote::default();
    let g = s.ceiling(
        grant(
            "gc",
            "patient/Observation.r patient/*.rs user/Patient.r user/Patient.rs openid",
        ),
        &mut note,
    );
    let kept: Vec<&str> = g.scopes.data().iter().map(|s| s.raw.as_str()).collect();
    assert_eq!(kept, vec!["patient/Observation.r", "user/Patient.r"]);
    assert_eq!(note.scopes_dropped, vec!["patient/*.rs", "user/Patient.rs"]);
    assert_eq!(note.rule.as_deref(), Some("c/gc"));
    assert!(g.scopes.has_other("openid"));

    let mut note = PolicyNote::default();
    let other = grant("other", "patient/*.rs");
    assert!(Arc::ptr_eq(&s.ceiling(other.clone(), &mut note), &other));
    assert!(note.is_empty());

    let audit = set(&format!("{yaml}mode: audit-only\n"));
    let mut note = PolicyNote::default();
    let g = audit.ceiling(grant("gc", "patient/*.rs"), &mut note);
    assert_eq!(g.scopes.data().len(), 1);
    assert_eq!(note.mode, Some("audit-only"));
    assert_eq!(note.scopes_dropped, vec!["patient/*.rs"]);
}

#[test]
fn labels_hide_and_redaction_removes() {
    let s = set(
        "name: l\nlabels:\n  - name: r\n    codes: [R]\n    unless_scopes: [sensitive/read]\nredact:\n  - name: ssn\n    resource_types: [Patient]\n    clients: [\"*\"]\n    fields: [\"identifier[system=urn:ssn]\", photo]\n",
    );
    let pass = s.response_pass(&grant("a", "user/*.rs")).unwrap();
    let mut note = PolicyNote::default();
    let mut bundle = serde_json::json!({"resourceType": "Bundle", "total": 2, "entry": [
        {"resource": {"resourceType": "Patient", "id": "1", "meta": {"security": [{"code": "R"}]}}},
        {"resource": {"resourceType": "Patient", "id": "2", "photo": [{}],
            "identifier": [{"system": "urn:ssn", "value": "1"}, {"system": "urn:mrn", "value": "2"}]}}
    ]});
    assert!(pass.apply(&mut bundle, &mut note));
    assert_eq!(
        bundle,
        serde_json::json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Patient", "id": "2", "identifier": [{"system": "urn:mrn", "value": "2"}]}}
        ]})
    );
    assert_eq!((note.labels_hidden, note.redacted), (1, 1));
    let exempt = s
        .response_pass(&grant("a", "user/*.rs sensitive/read"))
        .unwrap();
    let mut labelled = serde_json::json!({"resourceType": "Patient", "id": "1", "meta": {"security": [{"code": "R"}]}});
    assert!(exempt.apply(&mut labelled, &mut PolicyNote::default()));
}

#[test]
fn no_rules_no_pass() {
    let s = set("name: d\ndeny:\n  - name: x\n    interactions: [delete]\n");
    assert!(s.response_pass(&grant("a", "user/*.rs")).is_none());
}
