//! The Operations issue's proofs, against the real test bed (hfs + oidc-provider): SMART
//! discovery (validated fields, merge mode), the rewritten and cached CapabilityStatement,
//! CORS preflights and headers, inbound TLS (HTTP/2 by ALPN, a certificate rotated while
//! running, client certificates), upstream TLS with a private CA and a client certificate,
//! the metrics endpoint, and a standalone launch by the unmodified SMART JS client.
//!
//! Certificates are made with the `openssl` CLI. The small fake upstream below stands in for
//! hfs only where hfs cannot show the property (an upstream SMART document to merge, a
//! CapabilityStatement with operations to prune, the headers the proxy sends upstream).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Proxy, Resp, TokenReq, bed, faulty, http};
use serde_json::{Value, json};

const SCOPES: &str = "launch/patient patient/Patient.rs patient/Observation.rs";

/// `smart:` pointing at the test bed's authorization server.
fn smart_yaml() -> String {
    let b = bed();
    format!(
        "smart:\n  authorization_endpoint: {}\n  token_endpoint: {}\n  introspection_endpoint: {}\n  revocation_endpoint: {}\n  issuer: {}\n  jwks_uri: {}\n  capabilities: [launch-standalone, client-public, context-standalone-patient, permission-patient, permission-v2, sso-openid-connect]\n",
        b.var("AS_AUTHORIZE"),
        b.var("AS_TOKEN"),
        b.var("AS_INTROSPECT"),
        b.var("AS_REVOKE"),
        b.var("AS_ISSUER"),
        b.var("AS_JWKS"),
    )
}

fn public(p: &Proxy, rel: &str, headers: &[(&str, &str)]) -> Resp {
    p.req("GET", rel, "", headers, b"")
}

fn is_absolute(u: &Value) -> bool {
    u.as_str()
        .is_some_and(|u| u.starts_with("http://") || u.starts_with("https://"))
}

// ---------------------------------------------------------------------------------------------
// Discovery

#[test]
fn discovery_serves_a_valid_smart_configuration() {
    let p = Proxy::start(&smart_yaml());
    // JSON whatever the Accept, no token needed.
    let r = public(
        &p,
        ".well-known/smart-configuration",
        &[("Accept", "application/fhir+xml")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let doc = r.json();
    for key in [
        "authorization_endpoint",
        "token_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
        "issuer",
        "jwks_uri",
    ] {
        assert!(is_absolute(&doc[key]), "{key}: {doc}");
    }
    assert_eq!(doc["token_endpoint"], bed().var("AS_TOKEN"));
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert!(
        doc["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("authorization_code"))
    );
    let caps: Vec<&str> = doc["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(caps.contains(&"launch-standalone") && caps.contains(&"sso-openid-connect"));
    for c in &caps {
        assert!(smartgate::discovery::CAPABILITIES.contains(c), "{c}");
    }
    // The library's own validator agrees with the served document.
    assert!(smartgate::discovery::validate_document(doc.as_object().unwrap()).is_empty());
}

#[test]
fn check_lists_every_discovery_problem() {
    let dir = std::env::temp_dir().join(format!("smartgate-ops-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:8443\nadmin_listen: 127.0.0.1:9464\npublic_base_url: http://127.0.0.1:8443/fhir\nupstream:\n  url: http://127.0.0.1:8103\nsmart:\n  token_endpoint: /token\n  issuer: https://as.example\n  capabilities: [launch-standalone, bogus]\ncors:\n  allowed_origins: [https://app.example/path]\ntls:\n  cert_file: /nonexistent/cert.pem\n  key_file: /nonexistent/key.pem\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smartgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "smart.token_endpoint: must be an absolute http(s) URL",
        "smart.capabilities: `bogus` is not a SMART App Launch 2.x capability",
        "smart.authorization_endpoint: is required with launch-ehr or launch-standalone",
        "smart.issuer: is only allowed with sso-openid-connect",
        "cors.allowed_origins: `https://app.example/path` is not an origin",
        "tls.cert_file: /nonexistent/cert.pem",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // Located: `smart.capabilities` is on line 9.
    assert!(
        stderr.contains("bad.yaml:9:3: smart.capabilities"),
        "{stderr}"
    );
}

/// An upstream answering `route(path) -> (status, body)` (the shared scripted server).
fn fake_upstream(route: fn(&str) -> (u16, String)) -> faulty::Faulty {
    faulty::start(move |req| {
        let (status, body) = route(&req.target);
        faulty::Reply::json(status, body).with_header("Access-Control-Allow-Origin", "*")
    })
}

fn capability_upstream(path: &str) -> (u16, String) {
    match path {
        "/.well-known/smart-configuration" => (
            200,
            json!({
                "authorization_endpoint": "https://theirs.example/authorize",
                "token_endpoint": "https://theirs.example/token",
                "capabilities": ["launch-ehr", "client-public"],
                "grant_types_supported": ["authorization_code"],
                "code_challenge_methods_supported": ["plain", "S256"],
                "theirs_only": true
            })
            .to_string(),
        ),
        "/metadata" => (
            200,
            json!({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                "fhirVersion": "4.0.1", "format": ["json"], "implementation": {"description": "fake", "url": "http://upstream"},
                "rest": [{"mode": "server",
                    "operation": [{"name": "export", "definition": "x"}, {"name": "graphql", "definition": "x"}],
                    "resource": [
                        {"type": "Patient", "interaction": [{"code": "read"}],
                         "operation": [{"name": "everything", "definition": "x"}, {"name": "match", "definition": "x"}]},
                        {"type": "Observation", "interaction": [{"code": "read"}]},
                        {"type": "MadeUpType"}]}]})
            .to_string(),
        ),
        _ => (404, json!({"resourceType": "OperationOutcome"}).to_string()),
    }
}

#[test]
fn merge_mode_lays_ours_over_the_upstream_document_and_prunes_metadata() {
    let up = fake_upstream(capability_upstream);
    let extra = format!(
        "smart:\n  mode: merge\n  token_endpoint: {}\nmetadata:\n  prune: true\n  cache_ttl: 1h\n",
        bed().var("AS_TOKEN")
    );
    let p = Proxy::start_with(&extra, Some(&up.url), None);
    let doc = public(&p, ".well-known/smart-configuration", &[]).json();
    assert_eq!(doc["token_endpoint"], bed().var("AS_TOKEN"), "ours wins");
    assert_eq!(
        doc["authorization_endpoint"],
        "https://theirs.example/authorize"
    );
    assert_eq!(doc["theirs_only"], true);
    assert_eq!(
        doc["code_challenge_methods_supported"],
        json!(["S256"]),
        "plain is never advertised"
    );

    let cs = public(&p, "metadata", &[]).json();
    let rest = &cs["rest"][0];
    assert_eq!(cs["implementation"]["url"], p.base);
    assert_eq!(
        rest["operation"],
        json!([]),
        "no system operation is allowed"
    );
    let types: Vec<&str> = rest["resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Patient", "Observation"]);
    assert_eq!(
        rest["resource"][0]["operation"],
        json!([{"name": "everything", "definition": "x"}])
    );
    let uris = &rest["security"]["extension"][0]["extension"];
    assert!(
        uris.as_array()
            .unwrap()
            .contains(&json!({"url": "token", "valueUri": bed().var("AS_TOKEN")})),
        "{uris}"
    );
    // Both documents are cached: further requests do not reach the upstream.
    let before = up.hits();
    for _ in 0..3 {
        assert_eq!(public(&p, "metadata", &[]).status, 200);
        assert_eq!(
            public(&p, ".well-known/smart-configuration", &[]).status,
            200
        );
    }
    assert_eq!(up.hits(), before);
}

// ---------------------------------------------------------------------------------------------
// CapabilityStatement

#[test]
fn metadata_advertises_smart_and_is_cached() {
    let p = Proxy::start(&smart_yaml());
    let r = public(&p, "metadata", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let cs = r.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    let rest = cs["rest"].as_array().unwrap();
    assert!(!rest.is_empty());
    let sec = &rest[0]["security"];
    assert_eq!(sec["cors"], true);
    assert_eq!(sec["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let ext = &sec["extension"][0];
    assert_eq!(
        ext["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    let uris: HashMap<&str, &str> = ext["extension"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["url"].as_str().unwrap(), e["valueUri"].as_str().unwrap()))
        .collect();
    assert_eq!(uris["authorize"], bed().var("AS_AUTHORIZE"));
    assert_eq!(uris["token"], bed().var("AS_TOKEN"));
    assert_eq!(uris["introspect"], bed().var("AS_INTROSPECT"));
    // Nothing pruned by default: hfs's resource list comes through whole.
    let upstream: Value = http::send(
        &common::authority(bed().var("FHIR_BASE")),
        "GET",
        "/metadata",
        &[("Accept", "application/fhir+json")],
        b"",
    )
    .unwrap()
    .json();
    assert_eq!(
        rest[0]["resource"].as_array().unwrap().len(),
        upstream["rest"][0]["resource"].as_array().unwrap().len()
    );
    public(&p, "metadata", &[]);
    let m = scrape(&p);
    assert_eq!(
        m.get("smartgate_metadata_cache_total{result=\"miss\"}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("smartgate_metadata_cache_total{result=\"hit\"}"),
        Some(&1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// CORS

const APP: &str = "https://app.example";

#[test]
fn cors_preflight_is_answered_by_the_proxy() {
    let p = Proxy::start(&format!(
        "{}cors:\n  allowed_origins: [{APP}]\n  max_age: 5m\n",
        smart_yaml()
    ));
    let preflight = |origin: &str, method: &str, headers: &str| {
        p.req(
            "OPTIONS",
            "Observation?patient=pt-01",
            "",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", method),
                ("Access-Control-Request-Headers", headers),
            ],
            b"",
        )
    };
    let ok = preflight(APP, "GET", "authorization, x-request-id");
    assert_eq!(ok.status, 204);
    assert_eq!(ok.header("access-control-allow-origin"), Some(APP));
    assert_eq!(ok.header("access-control-max-age"), Some("300"));
    assert!(
        ok.header("access-control-allow-methods")
            .unwrap()
            .contains("PUT")
    );
    assert!(
        ok.header("access-control-allow-headers")
            .unwrap()
            .contains("Authorization")
    );
    assert!(ok.header("vary").unwrap().contains("Origin"));

    for (origin, method, headers) in [
        ("https://evil.example", "GET", "authorization"),
        (APP, "TRACE", ""),
        (APP, "GET", "x-evil"),
    ] {
        let r = preflight(origin, method, headers);
        assert_eq!(r.status, 403, "{origin} {method} {headers}");
        assert_eq!(r.header("access-control-allow-methods"), None);
        if origin != APP {
            assert_eq!(r.header("access-control-allow-origin"), None);
        }
    }
    // Never forwarded: the audit shows no upstream status for any preflight.
    let lines = p.audit_lines();
    let preflights: Vec<&Value> = lines.iter().filter(|l| l["method"] == "OPTIONS").collect();
    assert_eq!(preflights.len(), 4);
    assert!(preflights.iter().all(|l| l["upstream_status"].is_null()));
    assert_eq!(preflights[0]["reason"], "cors-preflight");
    assert_eq!(preflights[1]["reason"], "cors-origin");
}

#[test]
fn cors_headers_on_discovery_metadata_api_and_errors() {
    let p = Proxy::start(&format!(
        "{}cors:\n  allowed_origins: [{APP}]\n",
        smart_yaml()
    ));
    let token = p.token(SCOPES, Some("pt-01"));
    let origin = [("Origin", APP)];
    let checks: Vec<(&str, Resp)> = vec![
        (
            "discovery",
            public(&p, ".well-known/smart-configuration", &origin),
        ),
        ("metadata", public(&p, "metadata", &origin)),
        ("read", p.req("GET", "Patient/pt-01", &token, &origin, b"")),
        (
            "forbidden",
            p.req("GET", "Observation?patient=pt-02", &token, &origin, b""),
        ),
        ("no token", public(&p, "Patient/pt-01", &origin)),
        (
            "bad token",
            p.req("GET", "Patient/pt-01", "not.a.token", &origin, b""),
        ),
    ];
    for (what, r) in &checks {
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(APP),
            "{what}: {:?}",
            r.headers
        );
        let exposed = r.header("access-control-expose-headers").unwrap();
        for h in ["Location", "ETag", "X-Request-Id", "WWW-Authenticate"] {
            assert!(exposed.contains(h), "{what}: {exposed}");
        }
        assert!(
            r.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("vary")
                && v.to_ascii_lowercase().contains("origin")),
            "{what}: {:?}",
            r.headers
        );
    }
    assert_eq!(checks[2].1.status, 200);
    assert_eq!(checks[3].1.status, 403);
    assert_eq!(checks[4].1.status, 401);
    assert!(checks[4].1.header("www-authenticate").is_some());
    // hfs answers `Access-Control-Allow-Origin: *`; it never reaches another origin.
    let evil = p.req(
        "GET",
        "Patient/pt-01",
        &token,
        &[("Origin", "https://evil.example")],
        b"",
    );
    assert_eq!(evil.status, 200);
    assert_eq!(evil.header("access-control-allow-origin"), None);
    let no_origin = p.get("Patient/pt-01", &token);
    assert_eq!(no_origin.header("access-control-allow-origin"), None);
}

// ---------------------------------------------------------------------------------------------
// TLS

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA in `dir` (`NAME.pem`, `NAME.key`).
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf for 127.0.0.1 signed by `ca`, written to `OUT.pem` / `OUT.key`.
fn make_leaf(dir: &Path, ca: &str, cn: &str, out: &str) {
    std::fs::write(
        dir.join(format!("{out}.ext")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{out}.key"),
            "-out",
            &format!("{out}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{out}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{out}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{out}.ext"),
        ],
    );
}

fn cert_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smartgate-ops-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Handshakes with rustls (trusting `ca`), offering `alpn`; returns the leaf the server sent
/// and the protocol it chose.
fn handshake(addr: &str, ca: &Path, alpn: &[&[u8]]) -> std::io::Result<(Vec<u8>, Option<Vec<u8>>)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    Ok((leaf, conn.alpn_protocol().map(<[u8]>::to_vec)))
}

/// `curl` over TLS: (status, HTTP version, body).
fn curl(url: &str, args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut it = tail.split_whitespace();
    let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = it.next().unwrap_or_default().to_owned();
    (status, version, body.to_owned())
}

fn metadata_echo(path: &str) -> (u16, String) {
    match path {
        "/metadata" => (
            200,
            json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server"}]})
                .to_string(),
        ),
        _ => (404, "{}".into()),
    }
}

#[test]
fn inbound_tls_serves_h2_and_rotates_the_certificate_while_running() {
    let dir = cert_dir("tls");
    make_ca(&dir, "ca");
    make_leaf(&dir, "ca", "first", "first");
    make_leaf(&dir, "ca", "second", "second");
    std::fs::copy(dir.join("first.pem"), dir.join("server.pem")).unwrap();
    std::fs::copy(dir.join("first.key"), dir.join("server.key")).unwrap();
    let up = fake_upstream(metadata_echo);
    let extra = format!(
        "tls:\n  cert_file: {d}/server.pem\n  key_file: {d}/server.key\n  reload_interval: 200ms\nmetadata:\n  cache_ttl: 0s\n",
        d = dir.display()
    );
    let p = Proxy::start_with(&extra, Some(&up.url), None);
    let ca = dir.join("ca.pem");

    let (leaf, alpn) = handshake(&p.addr, &ca, &[b"h2", b"http/1.1"]).unwrap();
    assert_eq!(leaf, pem_der(&dir.join("first.pem")));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (_, alpn) = handshake(&p.addr, &ca, &[b"http/1.1"]).unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

    let url = format!("https://{}/fhir/metadata", p.addr);
    let cafile = ca.to_str().unwrap();
    let (status, version, body) = curl(&url, &["--cacert", cafile, "--http2"]);
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    let (status, version, _) = curl(&url, &["--cacert", cafile, "--http1.1"]);
    assert_eq!((status, version.as_str()), (200, "1.1"));
    // Plain HTTP on the TLS port gets no answer.
    assert!(http::send(&p.addr, "GET", "/fhir/metadata", &[], b"").is_err());
    // The upstream is told the client used https.
    let heads = up
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.head.as_str())
        .collect::<Vec<_>>()
        .join("\n")
        .to_ascii_lowercase();
    assert!(heads.contains("x-forwarded-proto: https"), "{heads}");

    // Rotate: a key file that does not match is refused and the old certificate stays.
    std::fs::copy(dir.join("second.key"), dir.join("server.key")).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let (leaf, _) = handshake(&p.addr, &ca, &[b"http/1.1"]).unwrap();
    assert_eq!(
        leaf,
        pem_der(&dir.join("first.pem")),
        "a broken pair must not be loaded"
    );
    // Completing the pair loads it, without a restart.
    std::fs::copy(dir.join("second.pem"), dir.join("server.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (leaf, _) = handshake(&p.addr, &ca, &[b"http/1.1"]).unwrap();
        if leaf == pem_der(&dir.join("second.pem")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _, _) = curl(&url, &["--cacert", cafile]);
    assert_eq!(status, 200);
    let m = scrape(&p);
    assert!(
        m["smartgate_tls_reloads_total{result=\"ok\"}"] >= 1.0,
        "{m:?}"
    );
    assert!(
        m["smartgate_tls_reloads_total{result=\"error\"}"] >= 1.0,
        "{m:?}"
    );
}

#[test]
fn inbound_tls_can_require_client_certificates() {
    let dir = cert_dir("mtls");
    make_ca(&dir, "ca");
    make_ca(&dir, "clients");
    make_ca(&dir, "other");
    make_leaf(&dir, "ca", "server", "server");
    make_leaf(&dir, "clients", "app", "app");
    make_leaf(&dir, "other", "stranger", "stranger");
    let up = fake_upstream(metadata_echo);
    let extra = format!(
        "tls:\n  cert_file: {d}/server.pem\n  key_file: {d}/server.key\n  client_ca_file: {d}/clients.pem\n  min_version: \"1.3\"\n",
        d = dir.display()
    );
    let p = Proxy::start_with(&extra, Some(&up.url), None);
    let url = format!("https://{}/fhir/metadata", p.addr);
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let d = dir.display();
    let (status, _, _) = curl(
        &url,
        &[
            "--cacert",
            ca,
            "--cert",
            &format!("{d}/app.pem"),
            "--key",
            &format!("{d}/app.key"),
        ],
    );
    assert_eq!(status, 200);
    let (status, _, _) = curl(&url, &["--cacert", ca]);
    assert_eq!(status, 0, "no client certificate: no TLS session");
    let (status, _, _) = curl(
        &url,
        &[
            "--cacert",
            ca,
            "--cert",
            &format!("{d}/stranger.pem"),
            "--key",
            &format!("{d}/stranger.key"),
        ],
    );
    assert_eq!(status, 0, "a certificate from another CA is refused");
    let (status, _, _) = curl(
        &url,
        &[
            "--cacert",
            ca,
            "--tls-max",
            "1.2",
            "--cert",
            &format!("{d}/app.pem"),
            "--key",
            &format!("{d}/app.key"),
        ],
    );
    assert_eq!(status, 0, "min_version 1.3 refuses TLS 1.2");
}

/// A TLS terminator with a private CA in front of hfs that requires a client certificate
/// from `client_ca`; returns its `https://` base and a count of completed handshakes.
fn tls_front_for_hfs(dir: &Path, client_ca: &Path) -> (String, Arc<AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("upstream.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("upstream.key")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(client_ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let hfs = common::authority(bed().var("FHIR_BASE"));
    let count = Arc::new(AtomicUsize::new(0));
    let handshakes = count.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let hfs = hfs.clone();
                let handshakes = handshakes.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(&hfs).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
    });
    (format!("https://{addr}"), count)
}

#[test]
fn upstream_tls_with_a_private_ca_and_a_client_certificate() {
    let dir = cert_dir("upstream");
    make_ca(&dir, "private-ca");
    make_ca(&dir, "proxy-clients");
    make_leaf(&dir, "private-ca", "upstream", "upstream");
    make_leaf(&dir, "proxy-clients", "smartgate", "smartgate");
    let (base, handshakes) = tls_front_for_hfs(&dir, &dir.join("proxy-clients.pem"));
    let d = dir.display();
    let trusted = format!(
        "  ca_file: {d}/private-ca.pem\n  client_cert_file: {d}/smartgate.pem\n  client_key_file: {d}/smartgate.key\n"
    );
    let p = Proxy::start_with_upstream_keys(&base, &trusted);
    let token = p.token(SCOPES, Some("pt-01"));
    let r = p.get("Patient/pt-01", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "pt-01");
    assert!(handshakes.load(Ordering::SeqCst) >= 1);

    // Without the private CA the upstream is not trusted: 502, never plaintext fallback.
    let untrusted =
        format!("  client_cert_file: {d}/smartgate.pem\n  client_key_file: {d}/smartgate.key\n");
    let p2 = Proxy::start_with_upstream_keys(&base, &untrusted);
    let t2 = p2.token(SCOPES, Some("pt-01"));
    let r = p2.req(
        "GET",
        "Patient/pt-01",
        &t2,
        &[("X-Request-Id", "ops-untrusted-1")],
        b"",
    );
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-request-id"), Some("ops-untrusted-1"));
    // The request id is a field of every log line written while the request ran.
    let log = std::fs::read_to_string(p2.dir.join("stderr.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("upstream unavailable"))
        .unwrap_or_else(|| panic!("no upstream warning in {log}"));
    let line: Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["span"]["request_id"], "ops-untrusted-1", "{line}");
    // Without the client certificate the upstream refuses the proxy: 502.
    let anonymous = format!("  ca_file: {d}/private-ca.pem\n");
    let p3 = Proxy::start_with_upstream_keys(&base, &anonymous);
    assert_eq!(
        p3.get("Patient/pt-01", &p3.token(SCOPES, Some("pt-01")))
            .status,
        502
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// Scrapes the admin port: `name{labels}` ⇒ value (OpenMetrics text, `# EOF` checked).
fn scrape(p: &Proxy) -> HashMap<String, f64> {
    let r = http::send(&p.admin, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text();
    assert!(text.ends_with("# EOF\n"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse::<f64>().unwrap())
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, k: &str) -> f64 {
    m.get(k).copied().unwrap_or(0.0)
}

#[test]
fn metrics_move_as_requests_are_made() {
    let p = Proxy::start("");
    let before = scrape(&p);
    assert_eq!(get(&before, "smartgate_build_info{version=\"0.1.0\"}"), 1.0);
    assert!(get(&before, "smartgate_jwks_keys") >= 1.0, "{before:?}");
    assert!(get(&before, "smartgate_jwks_fetches_ok_total") >= 1.0);

    let token = p.token(SCOPES, Some("pt-01"));
    for _ in 0..3 {
        assert_eq!(p.get("Patient/pt-01", &token).status, 200);
    }
    assert_eq!(p.get("Observation?patient=pt-02", &token).status, 403);
    assert_eq!(p.get("Patient/pt-01", "").status, 401);
    let expired = p.mint(TokenReq {
        scope: SCOPES,
        patient: Some("pt-01"),
        ttl: Some(-60),
        ..Default::default()
    });
    assert_eq!(p.get("Patient/pt-01", &expired).status, 401);
    let opaque = p.mint(TokenReq {
        scope: SCOPES,
        patient: Some("pt-01"),
        opaque: true,
        ..Default::default()
    });
    assert_eq!(p.get("Patient/pt-01", &opaque).status, 200);
    assert_eq!(p.get("Patient/pt-01", &opaque).status, 200);
    let search = p.get("Observation?patient=pt-01&_count=3", &token);
    assert_eq!(search.status, 200);

    let after = scrape(&p);
    let delta = |k: &str| get(&after, k) - get(&before, k);
    assert_eq!(
        delta(
            "smartgate_requests_total{decision=\"filter\",interaction=\"read\",resource_type=\"Patient\",status_class=\"2xx\"}"
        ),
        5.0,
        "{after:?}"
    );
    assert_eq!(
        delta(
            "smartgate_requests_total{decision=\"deny\",interaction=\"search-type\",resource_type=\"Observation\",status_class=\"4xx\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            "smartgate_requests_total{decision=\"unauthenticated\",interaction=\"none\",resource_type=\"none\",status_class=\"4xx\"}"
        ),
        2.0
    );
    assert_eq!(delta("smartgate_token_checks_total{result=\"ok\"}"), 7.0);
    assert_eq!(
        delta("smartgate_token_checks_total{result=\"missing_token\"}"),
        1.0
    );
    assert_eq!(
        delta("smartgate_token_checks_total{result=\"expired\"}"),
        1.0
    );
    assert_eq!(delta("smartgate_introspection_calls_total"), 1.0);
    assert_eq!(delta("smartgate_introspection_cache_hits_total"), 1.0);
    assert!(delta("smartgate_introspection_cache_misses_total") >= 1.0);
    assert_eq!(delta("smartgate_request_duration_seconds_count"), 9.0);
    assert!(delta("smartgate_upstream_duration_seconds_count") >= 6.0);
    assert_eq!(get(&after, "smartgate_in_flight_requests"), 0.0);
    // Labels stay low-cardinality: no id or query value ever becomes a label.
    assert!(after.keys().all(|k| !k.contains("pt-01")));
}

// ---------------------------------------------------------------------------------------------
// A real SMART client

#[test]
fn smart_js_client_standalone_launch_through_smartgate() {
    let script_dir = common::repo_root().join("tests/smart-client");
    assert!(
        script_dir.join("node_modules/fhirclient").is_dir(),
        "tests/smart-client/node_modules is missing: run scripts/install-deps.sh"
    );
    let p = Proxy::start(&smart_yaml());
    let out = Command::new("node")
        .current_dir(&script_dir)
        .args(["launch.js", &p.base, "pt-02"])
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["authorize_endpoint"], bed().var("AS_AUTHORIZE"), "{r}");
    assert_eq!(r["aud"], p.base.as_str());
    assert_eq!(r["code_challenge_method"], "S256");
    assert_eq!(r["patient_id"], "pt-01");
    assert_eq!(r["patient_read"], "Patient/pt-01");
    assert_eq!(r["observation_count"], 5);
    assert_eq!(r["observation_subjects"], json!(["Patient/pt-01"]));
    assert_eq!(r["other_patient_status"], 404, "{r}");
    assert_eq!(r["other_search_status"], 403, "{r}");
    // Every request the client made through smartgate is in the audit trail with its token.
    let lines = p.audit_lines();
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/fhir/.well-known/smart-configuration")
    );
    assert!(
        lines.iter().any(|l| l["patient"] == "pt-01"
            && l["client_id"] == "smart-app"
            && l["status"] == 200),
        "{lines:?}"
    );
}
