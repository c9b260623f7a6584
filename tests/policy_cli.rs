//! `smartgate check`, `explain` and `test` on policy files: no network, no test bed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn smartgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smartgate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sg-policy-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path, policies: &[&str]) -> PathBuf {
    let list: Vec<String> = policies.iter().map(|p| format!("  - {p}\n")).collect();
    let file = dir.join("smartgate.yaml");
    std::fs::write(
        &file,
        format!(
            "listen: 127.0.0.1:1\nadmin_listen: 127.0.0.1:2\npublic_base_url: http://gw.example/fhir\nupstream:\n  url: http://fhir.example\npolicies:\n{}",
            list.concat()
        ),
    )
    .unwrap();
    file
}

#[test]
fn shipped_policy_tests_pass() {
    let out = smartgate(&["test", "policies/"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.ends_with("50 passed, 0 failed, 0 files with errors\n"),
        "{stdout}"
    );
}

#[test]
fn every_example_passes_check() {
    let dir = temp_dir("examples");
    for file in
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples")).unwrap()
    {
        let file = file.unwrap().path();
        if file.to_string_lossy().ends_with(".tests.yaml") {
            continue;
        }
        let cfg = config(&dir, &[&file.to_string_lossy()]);
        let out = smartgate(&["check", "--config", &cfg.to_string_lossy()]);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            text(&out.stderr)
        );
        assert!(text(&out.stdout).ends_with(" (1 policy): ok\n"));
    }
    let cfg = config(&dir, &["policies/default.yaml"]);
    assert!(
        smartgate(&["check", "--config", &cfg.to_string_lossy()])
            .status
            .success()
    );
}

#[test]
fn check_names_every_bad_policy_file_with_its_exact_place() {
    let dir = temp_dir("bad");
    let pol = dir.join("policies");
    std::fs::create_dir_all(&pol).unwrap();
    let files = [
        (
            "1-wrong-key.yaml",
            "name: wrong-key\ndeny:\n  - name: r\n    resource_type: [Patient]\n",
        ),
        (
            "2-wrong-type.yaml",
            "name: wrong-type\nsearch:\n  max_count: lots\n",
        ),
        (
            "3-unknown-type.yaml",
            "name: unknown-type\nredact:\n  - name: r\n    resource_types: [Patient, Observaton]\n    clients: [\"*\"]\n    fields: [photo]\n",
        ),
        (
            "4-bad-scope.yaml",
            "name: bad-scope\nceilings:\n  - name: c\n    clients: [app]\n    scopes: [patient/Observation.read, patient/observation.rs]\n",
        ),
        (
            "5-not-a-list.yaml",
            "name: not-a-list\nlabels:\n  - name: l\n    codes: R\n",
        ),
    ];
    for (name, body) in files {
        std::fs::write(pol.join(name), body).unwrap();
    }
    let cfg = config(&dir, &[&pol.to_string_lossy()]);
    let out = smartgate(&["check", "--config", &cfg.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let p = pol.display();
    let expected = format!(
        "{p}/1-wrong-key.yaml:4:5: unknown field `resource_type`, expected one of name, message, resource_types, interactions, operations, contexts, clients, fhir_user_types\n\
         {p}/2-wrong-type.yaml:3:14: expected a whole number\n\
         {p}/3-unknown-type.yaml:4:31: redact.resource_types: unknown resource type `Observaton` (expected an R4 resource type such as Patient or Observation; names are case-sensitive)\n\
         {p}/4-bad-scope.yaml:5:40: ceilings.scopes: `patient/observation.rs` is not a valid SMART scope: not an R4 resource type\n\
         {p}/5-not-a-list.yaml:4:12: expected a list ([a, b] or one `- item` per line)\n"
    );
    assert_eq!(text(&out.stderr), expected);
}

#[test]
fn test_reports_failing_cases_and_broken_files() {
    let dir = temp_dir("cases");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples/deny.yaml"),
        dir.join("deny.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.join("deny.tests.yaml"),
        "cases:\n  - name: passes\n    request: DELETE Patient/1\n    token: {client_id: x, scope: user/*.cruds}\n    expect: deny\n    rule: deny-rules/no-delete\n  - name: wrong expectation\n    request: DELETE Patient/1\n    token: {client_id: x, scope: user/*.cruds}\n    expect: allow\n",
    )
    .unwrap();
    let out = smartgate(&["test", &dir.to_string_lossy()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let d = dir.display();
    assert!(
        stdout.contains(&format!("ok    {d}/deny.tests.yaml:2 passes\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("FAIL  {d}/deny.tests.yaml:7 wrong expectation\n      expected allow, got deny (policy, rule deny-rules/no-delete)\n")),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("1 passed, 1 failed, 0 files with errors\n"),
        "{stdout}"
    );

    std::fs::write(
        dir.join("deny.yaml"),
        "name: deny-rules\ndeny:\n  - name: x\n    interactions: [remove]\n",
    )
    .unwrap();
    let out = smartgate(&["test", &dir.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with(&format!(
            "{d}/deny.yaml:4:20: deny.interactions: unknown interaction `remove`"
        )),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(
        dir.join("deny.tests.yaml"),
        "cases:\n  - name: x\n    requset: GET Patient/1\n",
    )
    .unwrap();
    let out = smartgate(&["test", &dir.to_string_lossy()]);
    assert!(
        text(&out.stderr).starts_with(&format!("{d}/deny.tests.yaml:3:5: unknown field `requset`")),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn explain_shows_decision_scope_rule_and_narrowing_without_network() {
    let dir = temp_dir("explain");
    let cfg = config(
        &dir,
        &[
            "policies/examples/ceilings.yaml",
            "policies/examples/search.yaml",
            "policies/examples/deny.yaml",
        ],
    );
    let claims = dir.join("claims.json");
    std::fs::write(&claims, r#"{"client_id": "growth-chart", "scope": "launch/patient patient/Observation.rs patient/Condition.rs", "patient": "pt-01"}"#).unwrap();
    let admin = dir.join("admin.yaml");
    std::fs::write(
        &admin,
        "client_id: admin-console\nscope: user/*.cruds\nfhirUser: Practitioner/pr-01\n",
    )
    .unwrap();
    let run_as = |claims: &Path, method: &str, url: &str| {
        let out = smartgate(&[
            "explain",
            "--config",
            &cfg.to_string_lossy(),
            "--claims",
            &claims.to_string_lossy(),
            method,
            url,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let run = |method: &str, url: &str| run_as(&claims, method, url);
    let out = run("GET", "http://gw.example/fhir/Observation?_count=500");
    for want in [
        "request:  search-type Observation\n",
        "client:   growth-chart (patient: pt-01, fhirUser: -)\n",
        "scopes:   patient/Observation.rs\n",
        "ceiling:  dropped patient/Condition.rs\n",
        "decision: narrow (scope)\n",
        "allowed by scope: patient/Observation.rs\n",
        "upstream: Observation?_count=50&patient=Patient/pt-01\n",
        "detail:   narrowed to Observation?_count=50&patient=Patient/pt-01\n",
        "response: filtered (patient context, compartment of Patient/pt-01, judged by `s` scopes)\n",
        "policy:   _count lowered to 50\n",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    let out = run("GET", "Condition?patient=pt-01");
    assert!(out.contains("decision: deny (no-scope)\n"), "{out}");
    assert!(
        out.contains("policy:   client-ceilings/growth-chart (enforce)\n"),
        "{out}"
    );
    let out = run_as(&admin, "delete", "/fhir/Observation/obs-1");
    assert!(out.contains("decision: deny (policy)\n"), "{out}");
    assert!(
        out.contains("refused:  403 Deleting is not possible through this gateway.\n"),
        "{out}"
    );
    assert!(
        out.contains("policy:   deny-rules/no-delete (enforce)\n"),
        "{out}"
    );
    let out = run("GET", "Patient/a%2Fb");
    assert!(out.starts_with("decision: invalid\n"), "{out}");
}

#[test]
fn explain_shows_the_write_checks_and_judges_a_given_body() {
    let dir = temp_dir("explain-write");
    let cfg = config(&dir, &["policies/default.yaml"]);
    let claims = dir.join("claims.json");
    let vital = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs";
    std::fs::write(
        &claims,
        format!(
            r#"{{"client_id": "vitals-feed", "scope": "patient/Observation.c?category={vital} patient/Observation.u", "patient": "pt-01"}}"#
        ),
    )
    .unwrap();
    let body = |name: &str, category: &str| {
        let file = dir.join(name);
        std::fs::write(
            &file,
            format!(
                r#"{{"resourceType": "Observation", "status": "final", "code": {{"text": "x"}},
                "category": [{{"coding": [{{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "{category}"}}]}}],
                "subject": {{"reference": "Patient/pt-01"}}}}"#
            ),
        )
        .unwrap();
        file
    };
    let run = |method: &str, url: &str, body: Option<&Path>| {
        let mut args = vec![
            "explain".to_owned(),
            "--config".into(),
            cfg.to_string_lossy().into_owned(),
            "--claims".into(),
            claims.to_string_lossy().into_owned(),
        ];
        if let Some(b) = body {
            args.extend(["--body".into(), b.to_string_lossy().into_owned()]);
        }
        args.extend([method.to_owned(), url.to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = smartgate(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    // The reported bug: a laboratory Observation under a vital-signs create scope.
    let out = run("POST", "Observation", Some(&body("lab.json", "laboratory")));
    for want in [
        "write:    the body must be inside a `c` scope (its parameters too) of the patient context, compartment of Patient/pt-01\n",
        "body:     refused 403 (write-scope)",
        vital,
        "response: status, Location, ETag and Last-Modified; the resource only if `r` scopes",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    let out = run(
        "POST",
        "Observation",
        Some(&body("vital.json", "vital-signs")),
    );
    assert!(out.contains("body:     inside the grant\n"), "{out}");
    // A write-only update: the current version is judged by `u`, not by read scopes.
    let out = run("PUT", "Observation/obs-1", None);
    assert!(
        out.contains("write:    the current version is read first; it must be inside a `u` scope (its parameters too) of the patient context, compartment of Patient/pt-01, and the write is pinned to it (If-Match)\n"),
        "{out}"
    );
    assert!(!out.contains("body:"), "no body given: {out}");
}
