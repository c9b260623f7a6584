//! The Policies issue against the real test bed (hfs + oidc-provider): every example
//! policy shown allowing and denying, audit-only mode, hot reload, and audit lines.
//!
//! The test authorization server has two confidential clients, `test-client` and
//! `test-client-post`; the examples name realistic clients (`growth-chart`,
//! `billing-*`, …), so each example is copied with those names replaced by the test
//! clients. Nothing else in the example changes.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Proxy, TokenReq, authority, bed, enc, entry_ids, http, path_of};

const A: &str = "test-client";
const B: &str = "test-client-post";

/// A token for client B (`client_secret_post`), with SMART extras.
fn mint_b(proxy: &Proxy, scope: &str, patient: Option<&str>, fhir_user: Option<&str>) -> String {
    let bed = bed();
    let mut form = vec![
        ("grant_type", "client_credentials".to_owned()),
        ("client_id", B.to_owned()),
        ("client_secret", "test-secret".to_owned()),
        ("scope", scope.to_owned()),
        ("resource", proxy.base.clone()),
    ];
    if let Some(p) = patient {
        form.push(("patient", p.to_owned()));
    }
    if let Some(u) = fhir_user {
        form.push(("fhirUser", u.to_owned()));
    }
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    let url = bed.var("AS_TOKEN");
    let resp = http::send(
        &authority(url),
        "POST",
        &path_of(url),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.join("&").as_bytes(),
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["access_token"].as_str().unwrap().to_owned()
}

fn mint_a(proxy: &Proxy, scope: &str, patient: Option<&str>, fhir_user: Option<&str>) -> String {
    proxy.mint(TokenReq {
        scope,
        patient,
        fhir_user,
        ..Default::default()
    })
}

fn example(name: &str) -> PathBuf {
    common::repo_root().join("policies/examples").join(name)
}

/// A copy of an example with client names replaced, in a fresh directory.
fn copy_example(name: &str, replace: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sg-policy-{}-{}",
        std::process::id(),
        name.trim_end_matches(".yaml")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = std::fs::read_to_string(example(name)).unwrap();
    for (from, to) in replace {
        assert!(text.contains(from), "{name} has no {from}");
        text = text.replace(from, to);
    }
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file
}

fn with_policies(files: &[&Path]) -> Proxy {
    let list: Vec<String> = files
        .iter()
        .map(|f| format!("  - {}\n", f.display()))
        .collect();
    Proxy::start(&format!("policies:\n{}", list.concat()))
}

fn last_audit(proxy: &Proxy) -> serde_json::Value {
    // The line is written after the response: give it a moment.
    std::thread::sleep(Duration::from_millis(50));
    proxy.audit_lines().pop().expect("an audit line")
}

#[test]
fn ceilings_cap_a_client_whatever_its_token_says() {
    let file = copy_example("ceilings.yaml", &[("[growth-chart]", &format!("[{A}]"))]);
    let proxy = with_policies(&[&file]);
    let scope = "launch/patient patient/Observation.rs patient/Condition.rs";
    let a = mint_a(&proxy, scope, Some("pt-01"), None);
    let r = proxy.get("Observation?patient=pt-01&_count=5", &a);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = proxy.get("Condition?patient=pt-01", &a);
    assert_eq!(r.status, 403, "{}", r.text());
    let line = last_audit(&proxy);
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["policy"]["rule"], "client-ceilings/growth-chart");
    assert_eq!(line["policy"]["scopes_dropped"][0], "patient/Condition.rs");
    assert_eq!(
        line["scopes"],
        serde_json::json!(["patient/Observation.rs"])
    );
    // Another client with the same token contents is not capped.
    let b = mint_b(&proxy, scope, Some("pt-01"), None);
    assert_eq!(proxy.get("Condition?patient=pt-01", &b).status, 200);
}

#[test]
fn deny_rules_refuse_by_interaction_type_context_user_and_client() {
    let file = copy_example("deny.yaml", &[("\"billing-*\"", B)]);
    let proxy = with_policies(&[&file]);
    let admin = mint_a(&proxy, "user/*.cruds", None, Some("Practitioner/pr-01"));
    // no-delete: refused before anything reaches the FHIR server; reads still work.
    let r = proxy.req("DELETE", "Observation/obs-pt-01-0001", &admin, &[], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("Deleting is not possible"),
        "{}",
        r.text()
    );
    let line = last_audit(&proxy);
    assert_eq!(
        (line["decision"].as_str(), line["reason"].as_str()),
        (Some("deny"), Some("policy"))
    );
    assert_eq!(line["policy"]["rule"], "deny-rules/no-delete");
    assert_eq!(line["policy"]["mode"], "enforce");
    assert_eq!(proxy.get("Observation/obs-pt-01-0001", &admin).status, 200);

    // no-audit-events-for-patient-apps: patient/ context refused, user/ context allowed.
    let pat = mint_a(&proxy, "patient/AuditEvent.rs", Some("pt-01"), None);
    assert_eq!(proxy.get("AuditEvent?patient=pt-01", &pat).status, 403);
    let usr = mint_a(
        &proxy,
        "user/AuditEvent.rs",
        None,
        Some("Practitioner/pr-01"),
    );
    assert_eq!(proxy.get("AuditEvent?patient=pt-01", &usr).status, 200);

    // patients-see-no-history: by fhirUser type.
    let portal = mint_a(&proxy, "user/Patient.rs", None, Some("Patient/pt-01"));
    assert_eq!(proxy.get("Patient/pt-01/_history", &portal).status, 403);
    assert_eq!(proxy.get("Patient/pt-01", &portal).status, 200);
    let doc = mint_a(&proxy, "user/Patient.rs", None, Some("Practitioner/pr-01"));
    assert_eq!(proxy.get("Patient/pt-01/_history", &doc).status, 200);

    // billing-no-diagnoses: by client.
    let billing = mint_b(&proxy, "user/*.rs", None, Some("Practitioner/pr-02"));
    assert_eq!(proxy.get("Condition?patient=pt-01", &billing).status, 403);
    assert_eq!(proxy.get("Coverage?patient=pt-01", &billing).status, 200);
    let other = mint_a(&proxy, "user/*.rs", None, Some("Practitioner/pr-02"));
    assert_eq!(proxy.get("Condition?patient=pt-01", &other).status, 200);
}

#[test]
fn operation_allow_list_comes_from_the_policy() {
    let proxy = with_policies(&[&example("operations.yaml")]);
    let user = mint_a(&proxy, "user/*.rs", None, Some("Practitioner/pr-01"));
    // $meta is not listed.
    let r = proxy.get("Patient/pt-01/$meta", &user);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(last_audit(&proxy)["reason"], "operation-not-allowed");
    // $validate is listed: forwarded to the FHIR server (whatever it answers).
    let body = br#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#;
    let r = proxy.req(
        "POST",
        "Observation/$validate",
        &user,
        &[("Content-Type", "application/fhir+json")],
        body,
    );
    let line = last_audit(&proxy);
    assert_ne!(line["decision"], "deny", "{line} {}", r.text());
    assert!(line["upstream_status"].is_u64(), "{line}");
    // $everything on the launch patient.
    let pat = mint_a(&proxy, "patient/*.rs", Some("pt-01"), None);
    let r = proxy.get("Patient/pt-01/$everything", &pat);
    assert_eq!(r.status, 200, "{}", r.text());

    // Without the policy $validate is closed.
    let plain = Proxy::start("");
    let user = mint_a(&plain, "user/*.rs", None, Some("Practitioner/pr-01"));
    let r = plain.req(
        "POST",
        "Observation/$validate",
        &user,
        &[("Content-Type", "application/fhir+json")],
        body,
    );
    assert_eq!(r.status, 403);
}

#[test]
fn search_restrictions_refuse_parameters_and_cap_count() {
    let proxy = with_policies(&[&example("search.yaml")]);
    let user = mint_a(&proxy, "user/*.rs", None, Some("Practitioner/pr-01"));
    let r = proxy.get("Observation?patient=pt-01&_count=10", &user);
    assert_eq!(r.status, 200);
    assert_eq!(entry_ids(&r.json()).len(), 10);
    let r = proxy.get("Observation?patient=pt-01&_count=500", &user);
    assert_eq!(r.status, 200);
    assert_eq!(entry_ids(&r.json()).len(), 50, "_count lowered to 50");
    let line = last_audit(&proxy);
    assert_eq!(line["decision"], "narrow");
    assert_eq!(line["policy"]["count_clamped"], 50);
    assert_eq!(proxy.get("Observation?patient.name=Ada", &user).status, 403);
    assert_eq!(last_audit(&proxy)["policy"]["rule"], "search-limits/search");
    assert_eq!(
        proxy
            .get("Patient?_has:Observation:patient:_id=obs-pt-01-0001", &user)
            .status,
        403
    );
    // Without the policy the same chain is allowed for user/*.rs.
    let plain = Proxy::start("");
    let user = mint_a(&plain, "user/*.rs", None, Some("Practitioner/pr-01"));
    assert_eq!(plain.get("Observation?patient.name=Ada", &user).status, 200);
}

#[test]
fn sensitivity_labels_hide_unless_client_or_scope() {
    let file = copy_example("labels.yaml", &[("\"break-glass-*\"", B)]);
    let proxy = with_policies(&[&file]);
    let a = mint_a(
        &proxy,
        "user/Patient.rs user/Condition.rs user/Observation.rs",
        None,
        Some("Practitioner/pr-01"),
    );
    let r = proxy.get("Patient/pt-17", &a);
    assert_eq!(
        r.status, 404,
        "a restricted Patient reads like a missing one"
    );
    let missing = proxy.get("Patient/no-such-patient", &a);
    assert_eq!(r.body, missing.body, "no existence oracle");
    let line = last_audit(&proxy);
    assert_eq!(line["reason"], "not-found-or-hidden");
    assert_eq!(proxy.get("Patient/pt-16", &a).status, 200);
    assert_eq!(proxy.req("HEAD", "Patient/pt-16", &a, &[], b"").status, 200);
    // In searches the labelled resources are removed.
    let ids = entry_ids(&proxy.get("Condition?patient=pt-14", &a).json());
    assert!(
        !ids.is_empty() && !ids.contains(&"Condition/cond-pt-14-1".to_owned()),
        "{ids:?}"
    );
    let ids = entry_ids(&proxy.get("Observation?patient=pt-16&_count=100", &a).json());
    assert!(!ids.contains(&"Observation/obs-pt-16-0001".to_owned()));
    assert_eq!(ids.len(), 69);
    assert_eq!(last_audit(&proxy)["policy"]["labels_hidden"], 1);
    // The sensitive scope lets PSY through (not R); the break-glass client sees all.
    let s = mint_a(
        &proxy,
        "user/Patient.rs user/Condition.rs sensitive/read",
        None,
        Some("Practitioner/pr-01"),
    );
    let ids = entry_ids(&proxy.get("Condition?patient=pt-14", &s).json());
    assert!(
        ids.contains(&"Condition/cond-pt-14-1".to_owned()),
        "{ids:?}"
    );
    assert_eq!(proxy.get("Patient/pt-17", &s).status, 404);
    let b = mint_b(&proxy, "user/Patient.rs", None, Some("Practitioner/pr-01"));
    assert_eq!(proxy.get("Patient/pt-17", &b).status, 200);
}

#[test]
fn redaction_removes_ssn_and_photo_for_listed_clients() {
    let file = copy_example("redact.yaml", &[("\"analytics-*\"", A)]);
    let proxy = with_policies(&[&file]);
    let a = mint_a(&proxy, "user/Patient.rs", None, None);
    let r = proxy.get("Patient/pt-01", &a);
    assert_eq!(r.status, 200);
    let p = r.json();
    assert!(p.get("photo").is_none(), "{p}");
    let systems: Vec<&str> = p["identifier"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["system"].as_str()).collect())
        .unwrap_or_default();
    assert!(!systems.contains(&"http://hl7.org/fhir/sid/us-ssn"), "{p}");
    assert_eq!(last_audit(&proxy)["policy"]["redacted"], 1);
    let bundle = proxy.get("Patient?_id=pt-01,pt-02", &a).json();
    assert!(!bundle.to_string().contains("us-ssn") && !bundle.to_string().contains("\"photo\""));
    let b = mint_b(&proxy, "user/Patient.rs", None, None);
    let p = proxy.get("Patient/pt-01", &b).json();
    assert!(p.get("photo").is_some() && p.to_string().contains("us-ssn"));
}

#[test]
fn compartment_choices_from_a_policy() {
    let proxy = with_policies(&[&example("compartment.yaml")]);
    let pat = mint_a(&proxy, "patient/*.rs", Some("pt-03"), None);
    let r = proxy.get("Practitioner?_count=1", &pat);
    assert_eq!(r.status, 403, "non-member types denied: {}", r.text());
    assert_eq!(
        proxy.get("Observation?patient=pt-03&_count=1", &pat).status,
        200
    );
    assert_eq!(
        proxy.get("Observation/obs-pt-04-perf-pt-03", &pat).status,
        404
    );
    let plain = Proxy::start("");
    let pat = mint_a(&plain, "patient/*.rs", Some("pt-03"), None);
    assert_eq!(plain.get("Practitioner?_count=1", &pat).status, 200);
}

#[test]
fn audit_only_forwards_and_logs_would_deny() {
    let proxy = with_policies(&[&example("audit-only.yaml")]);
    let pat = mint_a(
        &proxy,
        "patient/Encounter.rs patient/Observation.rs",
        Some("pt-01"),
        None,
    );
    assert_eq!(proxy.get("Encounter?patient=pt-01", &pat).status, 200);
    let line = last_audit(&proxy);
    assert_eq!(line["decision"], "filter");
    assert_eq!(line["policy"]["would_deny"], true);
    assert_eq!(line["policy"]["mode"], "audit-only");
    assert_eq!(
        line["policy"]["rule"],
        "new-encounter-rule/no-encounters-for-patient-apps"
    );
    assert_eq!(
        proxy.get("Observation?patient=pt-01&_count=1", &pat).status,
        200
    );
    assert!(last_audit(&proxy).get("policy").is_none());
}

/// `smartgate_policy_reloads_total{result=…}`.
fn reloads(proxy: &Proxy, result: &str) -> u64 {
    let text = http::send(&proxy.admin, "GET", "/metrics", &[], b"")
        .unwrap()
        .text();
    let prefix = format!("smartgate_policy_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn write_atomically(file: &Path, text: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn hot_reload_swaps_valid_policies_and_refuses_invalid_ones() {
    let dir = std::env::temp_dir().join(format!("sg-policy-hot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hot.yaml");
    let rule = |t: &str| format!("name: hot\ndeny:\n  - name: no-{t}\n    resource_types: [{t}]\n");
    write_atomically(&file, &rule("Condition"));
    let proxy = with_policies(&[&dir]);
    let token = mint_a(&proxy, "user/*.rs", None, Some("Practitioner/pr-01"));
    assert_eq!(proxy.get("Patient/pt-01", &token).status, 200);
    assert_eq!(proxy.get("Condition?patient=pt-01", &token).status, 403);

    // Requests keep flowing during the reloads: none is dropped or fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, addr, token) = (stop.clone(), proxy.addr.clone(), token.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let auth = format!("Bearer {token}");
                let r = http::send(
                    &addr,
                    "GET",
                    "/fhir/Observation?patient=pt-02&_count=50",
                    &[("Authorization", &auth)],
                    b"",
                );
                statuses.push(r.map(|r| r.status).unwrap_or(0));
            }
            statuses
        })
    };

    // A valid change by SIGHUP.
    write_atomically(&file, &rule("Patient"));
    std::process::Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    wait_for("the new rule", || {
        proxy.get("Patient/pt-01", &token).status == 403
    });
    assert_eq!(proxy.get("Condition?patient=pt-01", &token).status, 200);

    // An invalid change is refused: the previous policy keeps working.
    write_atomically(
        &file,
        "name: hot\ndeny:\n  - name: no-patient\n    resource_types: [Patinet]\n",
    );
    std::process::Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    wait_for("the refusal", || reloads(&proxy, "invalid") >= 1);
    assert_eq!(proxy.get("Patient/pt-01", &token).status, 403);
    let log = std::fs::read_to_string(proxy.dir.join("stderr.log")).unwrap();
    assert!(
        log.contains("hot.yaml:4:22: deny.resource_types: unknown resource type `Patinet`"),
        "{log}"
    );

    // A valid change without a signal: the file poll picks it up.
    write_atomically(&file, &rule("Encounter"));
    wait_for("the polled change", || {
        proxy.get("Patient/pt-01", &token).status == 200
    });
    assert_eq!(proxy.get("Encounter?patient=pt-01", &token).status, 403);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = load.join().unwrap();
    assert!(statuses.len() > 5, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(reloads(&proxy, "ok") >= 2);
}

#[test]
fn hot_reload_follows_a_configmap_symlink_swap() {
    // The kubelet's layout: dir/hot.yaml -> ..data/hot.yaml, ..data -> ..v1; an update
    // writes ..v2 and swaps the ..data symlink atomically.
    let dir = std::env::temp_dir().join(format!("sg-policy-cm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("..v1")).unwrap();
    std::fs::create_dir_all(dir.join("..v2")).unwrap();
    let rule = |t: &str| format!("name: cm\ndeny:\n  - name: no-{t}\n    resource_types: [{t}]\n");
    std::fs::write(dir.join("..v1/cm.yaml"), rule("Condition")).unwrap();
    std::fs::write(dir.join("..v2/cm.yaml"), rule("Patient")).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/cm.yaml", dir.join("cm.yaml")).unwrap();
    let proxy = with_policies(&[&dir]);
    let token = mint_a(&proxy, "user/*.rs", None, Some("Practitioner/pr-01"));
    assert_eq!(proxy.get("Patient/pt-01", &token).status, 200);
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_for("the swapped ConfigMap", || {
        proxy.get("Patient/pt-01", &token).status == 403
    });
    assert_eq!(proxy.get("Condition?patient=pt-01", &token).status, 200);
}

#[test]
fn audit_lines_for_every_decision_kind_and_never_a_token() {
    let proxy = with_policies(&[&example("deny.yaml"), &example("audit-only.yaml")]);
    let user = mint_a(
        &proxy,
        "user/Patient.rs user/Observation.cruds",
        None,
        Some("Practitioner/pr-01"),
    );
    let pat = mint_a(
        &proxy,
        "patient/Observation.rs patient/Encounter.rs",
        Some("pt-01"),
        None,
    );
    let cases: Vec<(&str, &str, &str, u16, &str)> = vec![
        ("GET", "metadata", "", 200, "public"),
        ("GET", "Patient/pt-01", "", 401, "unauthenticated"),
        (
            "GET",
            "Patient/pt-01",
            "bogus-token",
            401,
            "unauthenticated",
        ),
        ("GET", "Patient/a%2Fb", &user, 400, "invalid"),
        ("GET", "Patient/pt-01", &user, 200, "allow"),
        ("GET", "Observation?_count=1", &pat, 200, "narrow"),
        (
            "GET",
            "Observation?patient=pt-01&_count=1",
            &pat,
            200,
            "filter",
        ),
        ("GET", "Condition?patient=pt-01", &pat, 403, "deny"),
        ("DELETE", "Observation/obs-pt-01-0001", &user, 403, "deny"),
        ("GET", "Encounter?patient=pt-01", &pat, 200, "filter"),
    ];
    for (method, path, token, status, decision) in &cases {
        let r = proxy.req(method, path, token, &[], b"");
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
        let line = last_audit(&proxy);
        assert_eq!(line["decision"], *decision, "{method} {path}: {line}");
        assert_eq!(line["status"], *status);
    }
    let lines = proxy.audit_lines();
    let by_path = |p: &str, m: &str| {
        lines
            .iter()
            .rev()
            .find(|l| {
                l["path"]
                    .as_str()
                    .is_some_and(|x| x.starts_with(&format!("/fhir/{p}")))
                    && l["method"] == m
            })
            .cloned()
            .unwrap()
    };
    let del = by_path("Observation/obs-pt-01-0001", "DELETE");
    assert_eq!(
        (del["reason"].as_str(), del["policy"]["rule"].as_str()),
        (Some("policy"), Some("deny-rules/no-delete"))
    );
    assert_eq!(del["client_id"], A);
    assert_eq!(
        del["scopes"],
        serde_json::json!(["user/Patient.rs", "user/Observation.cruds"])
    );
    let enc = by_path("Encounter", "GET");
    assert_eq!(enc["policy"]["would_deny"], true);
    assert_eq!(by_path("Condition", "GET")["reason"], "no-scope");
    assert_eq!(
        by_path("Observation?_count", "GET")["path"],
        "/fhir/Observation?_count=*",
        "query values hidden"
    );

    // Neither the tokens nor the Authorization header appear in any log.
    std::thread::sleep(Duration::from_millis(100));
    let audit = std::fs::read_to_string(proxy.dir.join("audit.log")).unwrap();
    let stderr = std::fs::read_to_string(proxy.dir.join("stderr.log")).unwrap();
    for log in [&audit, &stderr] {
        for t in [&user, &pat, &"bogus-token".to_owned()] {
            assert!(!log.contains(t.as_str()), "a token leaked into a log");
            let signature = t.rsplit('.').next().unwrap();
            assert!(!log.contains(signature));
        }
        assert!(!log.to_ascii_lowercase().contains("bearer "), "{log}");
    }
}

#[test]
fn explain_checks_a_real_token_like_the_proxy() {
    let proxy = with_policies(&[&example("deny.yaml")]);
    let token = mint_a(&proxy, "user/*.cruds", None, Some("Practitioner/pr-01"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smartgate"))
        .args(["explain", "--config"])
        .arg(proxy.dir.join("smartgate.yaml"))
        .args([
            "--token",
            &token,
            "DELETE",
            &format!("{}/Observation/obs-pt-01-0001", proxy.base),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "client:   {A} (patient: -, fhirUser: Practitioner/pr-01)"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("decision: deny (policy)"), "{stdout}");
    assert!(
        stdout.contains("policy:   deny-rules/no-delete (enforce)"),
        "{stdout}"
    );
    assert!(!stdout.contains(&token));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smartgate"))
        .args(["explain", "--config"])
        .arg(proxy.dir.join("smartgate.yaml"))
        .args(["--token", "not-a-token", "GET", "Patient/pt-01"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn sighup_without_policies_keeps_serving() {
    let proxy = Proxy::start("");
    std::process::Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    wait_for("the reload", || reloads(&proxy, "ok") == 1);
    let token = mint_a(&proxy, "user/Patient.rs", None, None);
    assert_eq!(proxy.get("Patient/pt-01", &token).status, 200);
}
