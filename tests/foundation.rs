//! The Foundation issue's proofs: streaming with flat memory, base-path mapping, header
//! hygiene, 502/504 as OperationOutcome, draining on SIGTERM, and `check` locating errors.
//! The FHIR server and the authorization server are the real test bed; the header-echo,
//! sink and slow upstreams below stand in only where the property is about the proxy's
//! own transport layer (what it sends upstream, how long it waits).

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, bed, faulty, http};

/// An upstream (the shared scripted server) that answers every request after `delay`
/// with what it received: the request head and the number of body bytes.
fn fake_upstream(delay: Duration) -> String {
    faulty::start(move |req| {
        let body = serde_json::json!({"resourceType": "Basic", "head": req.head, "received": req.body.len()});
        faulty::Reply::json(200, body.to_string()).after(delay)
    })
    .url
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_large_body_streams_through_with_flat_memory() {
    let upstream = fake_upstream(Duration::ZERO);
    let proxy = Proxy::start_with(
        "limits:\n  max_inspect_bytes: 1048576\n",
        Some(&upstream),
        None,
    );
    let token = proxy.token("user/Binary.cruds", None);
    let body = vec![b'x'; 100 * 1024 * 1024];
    // Warm up the connection pool and allocator first, then measure the peak.
    let warm = proxy.req(
        "POST",
        "Binary",
        &token,
        &[("Content-Type", "application/octet-stream")],
        &body[..1024],
    );
    assert_eq!(warm.status, 200, "{}", warm.text());
    let before = rss_kb(proxy.pid(), "VmHWM:");
    let resp = proxy.req(
        "POST",
        "Binary",
        &token,
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["received"],
        100 * 1024 * 1024,
        "every byte reached the upstream"
    );
    let grown = rss_kb(proxy.pid(), "VmHWM:").saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "a 100 MB body raised peak RSS by {grown} kB: it was buffered, not streamed"
    );
}

#[test]
fn base_path_is_mapped_and_headers_are_cleaned() {
    let upstream = fake_upstream(Duration::ZERO);
    let proxy = Proxy::start_with("", Some(&format!("{upstream}/base/r4")), None);
    let token = proxy.token("user/Patient.rs", None);
    let resp = proxy.req(
        "GET",
        "Patient/pt-01",
        &token,
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
            ("Cookie", "session=1"),
            ("Connection", "X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("X-Request-Id", "req-42"),
            ("Accept", "application/fhir+json"),
        ],
        b"",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-request-id"), Some("req-42"));
    let head = resp.json()["head"].as_str().unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("get /base/r4/patient/pt-01 http/1.1"),
        "{head}"
    );
    assert!(
        !head.contains("authorization:"),
        "the app's token went upstream: {head}"
    );
    assert!(
        !head.contains("6.6.6.6"),
        "client-sent forwarding headers went upstream: {head}"
    );
    assert!(
        !head.contains("cookie:") && !head.contains("x-secret-hop"),
        "{head}"
    );
    assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    assert!(head.contains("x-forwarded-proto: http"), "{head}");
    assert!(head.contains("x-request-id: req-42"), "{head}");
    // Nothing outside the public base is proxied.
    let outside = http::send(
        &proxy.addr,
        "GET",
        "/Patient/pt-01",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
    .unwrap();
    assert_eq!(outside.status, 404);
    assert_eq!(outside.json()["resourceType"], "OperationOutcome");
}

#[test]
fn real_upstream_reads_pass_through_the_base_mapping() {
    let proxy = Proxy::start("");
    let token = proxy.token("user/Patient.rs", None);
    let resp = proxy.get("Patient/pt-01", &token);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["id"], "pt-01");
    let search = proxy.get("Patient?_count=2", &token).json();
    let next = search["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        next.starts_with(&proxy.base),
        "paging link not rewritten to the public base: {next}"
    );
    assert!(
        !resp.text().contains(bed().var("FHIR_BASE")),
        "the upstream base leaked"
    );
}

#[test]
fn upstream_down_is_502_and_slow_is_504_as_operation_outcomes() {
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let proxy = Proxy::start_with("", Some(&dead), None);
    let token = proxy.token("user/Patient.rs", None);
    let resp = proxy.get("Patient/pt-01", &token);
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.json()["resourceType"], "OperationOutcome");

    let slow = fake_upstream(Duration::from_secs(4));
    let proxy = Proxy::start_with_timeout(&slow, "1s");
    let started = Instant::now();
    let resp = proxy.get("Patient/pt-01", &proxy.token("user/Patient.rs", None));
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert_eq!(resp.json()["issue"][0]["code"], "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "504 took {:?}",
        started.elapsed()
    );
}

#[test]
fn sigterm_drains_an_in_flight_request_then_exits_zero() {
    let slow = fake_upstream(Duration::from_millis(1500));
    let proxy = Proxy::start_with("", Some(&slow), None);
    let token = proxy.token("user/Patient.rs", None);
    let addr = proxy.addr.clone();
    let in_flight = std::thread::spawn(move || {
        http::send(
            &addr,
            "GET",
            "/fhir/Patient/pt-01",
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(400));
    let status = proxy.terminate();
    let resp = in_flight.join().unwrap();
    assert_eq!(
        resp.status,
        200,
        "the in-flight request was cut: {}",
        resp.text()
    );
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn check_reports_a_bad_config_with_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("smartgate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "listen: 127.0.0.1:8443\nadmin_listen: 127.0.0.1:9464\npublic_base_url: http://127.0.0.1:8443/fhir\nupstream:\n  url: http://127.0.0.1:8103\n  timeout: 30 seconds\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smartgate"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("{}:6:", file.display())), "{err}");

    std::fs::write(&file, "listen: 127.0.0.1:8443\nadmin_listen: 127.0.0.1:8443\npublic_base_url: /fhir\nupstream:\n  url: http://127.0.0.1:8103\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smartgate"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 2, "every problem is listed: {err}");
    assert!(err.contains(":3:1: public_base_url"), "{err}");
    assert!(err.contains(":2:1: admin_listen"), "{err}");

    let example = common::repo_root().join("smartgate.example.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smartgate"))
        .args(["check", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_token_is_401_but_metadata_and_discovery_are_open() {
    let proxy = Proxy::start(
        "smart:\n  authorization_endpoint: https://as.example/auth\n  token_endpoint: https://as.example/token\n",
    );
    let resp = proxy.req("GET", "Patient/pt-01", "", &[], b"");
    assert_eq!(resp.status, 401);
    assert!(
        resp.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer realm=")
    );
    assert_eq!(resp.json()["resourceType"], "OperationOutcome");
    let meta = proxy.req("GET", "metadata", "", &[], b"");
    assert_eq!(meta.status, 200, "{}", meta.text());
    let cs = meta.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(
        cs["rest"][0]["security"]["service"][0]["coding"][0]["code"],
        "SMART-on-FHIR"
    );
    let disc = proxy.req(
        "GET",
        ".well-known/smart-configuration",
        "",
        &[("Accept", "text/html")],
        b"",
    );
    assert_eq!(disc.status, 200);
    assert_eq!(disc.header("content-type"), Some("application/json"));
    assert_eq!(
        disc.json()["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
}
