//! OpenTelemetry export (cargo feature `otel`; `cargo test --features otel --test otel`):
//! smartgate in front of a scripted upstream, exporting OTLP/HTTP JSON to an in-test
//! receiver (the shared scripted server). The exported spans carry the request id, the
//! decision and the statuses; a caller's `traceparent` is continued, and the upstream gets
//! exactly one `traceparent`, in the same trace, naming smartgate's span as its parent.
//! Spans still queued at SIGTERM are flushed before the process exits.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Proxy, faulty};
use serde_json::Value;
use smartgate::config::Config;
use smartgate::telemetry::OtlpProtocol;
use smartgate::telemetry::otel::resolve;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP receiver that accepts everything.
fn collector() -> faulty::Faulty {
    faulty::start(|_| faulty::Reply::Full {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: b"{}".to_vec(),
    })
}

fn upstream() -> faulty::Faulty {
    faulty::start(|_| faulty::Reply::json(200, r#"{"resourceType":"Patient","id":"pt-01"}"#))
}

/// The values of header `name` in a raw request head.
fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// `(export request bodies, spans in them)` received so far.
fn exported(c: &faulty::Faulty) -> (Vec<String>, Vec<Value>) {
    let reqs = c.log.lock().unwrap().clone();
    let mut bodies = Vec::new();
    let mut spans = Vec::new();
    for r in reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.target, "/v1/traces",
            "the signal path is appended to the base"
        );
        assert!(
            header_values(&r.head, "content-type") == ["application/json"],
            "{}",
            r.head
        );
        let body: Value = serde_json::from_slice(&r.body).expect("OTLP/JSON body");
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name");
            assert_eq!(
                service.map(|a| &a["value"]["stringValue"]),
                Some(&Value::from("smartgate")),
                "{rs}"
            );
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                spans.extend(ss["spans"].as_array().into_iter().flatten().cloned());
            }
        }
        bodies.push(String::from_utf8_lossy(&r.body).into_owned());
    }
    (bodies, spans)
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn str_attr<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    attr(span, key)?["stringValue"].as_str()
}

/// OTLP/JSON carries 64-bit integers as strings (protobuf JSON mapping); accept both.
fn int_attr(span: &Value, key: &str) -> Option<i64> {
    let v = &attr(span, key)?["intValue"];
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

fn span_for<'a>(spans: &'a [Value], request_id: &str) -> &'a Value {
    let found: Vec<&Value> = spans
        .iter()
        .filter(|s| str_attr(s, "request_id") == Some(request_id))
        .collect();
    assert_eq!(found.len(), 1, "one span for {request_id}: {spans:#?}");
    found[0]
}

#[test]
fn spans_are_exported_and_the_trace_continues_upstream() {
    let collector = collector();
    let upstream = upstream();
    let extra = format!(
        "telemetry:\n  otlp_endpoint: {}/\n  protocol: http/json\n",
        collector.url
    );
    // A scheduled export ten minutes away: what the receiver gets, the shutdown flushed.
    let proxy = Proxy::start_with_env(
        &extra,
        Some(&upstream.url),
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    let token = proxy.token("user/Patient.rs", None);

    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let allowed = proxy.req(
        "GET",
        "Patient/pt-01",
        &token,
        &[
            ("traceparent", &traceparent),
            ("tracestate", "vendor=abc"),
            ("X-Request-Id", "otel-allow"),
        ],
        b"",
    );
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    let denied = proxy.req(
        "GET",
        "Observation?code=secret-code",
        &token,
        &[("X-Request-Id", "otel-deny")],
        b"",
    );
    assert_eq!(denied.status, 403, "{}", denied.text());
    let unauthenticated = proxy.req(
        "GET",
        "Patient/pt-01",
        "",
        &[("X-Request-Id", "otel-401")],
        b"",
    );
    assert_eq!(unauthenticated.status, 401);
    let no_parent = proxy.req(
        "GET",
        "Patient/pt-02",
        &token,
        &[("X-Request-Id", "otel-root")],
        b"",
    );
    assert_eq!(no_parent.status, 200, "{}", no_parent.text());

    // The upstream saw one traceparent per request: the caller's trace, smartgate's span.
    let seen = upstream.log.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let sent = header_values(&seen[0].head, "traceparent");
    assert_eq!(
        sent.len(),
        1,
        "traceparent replaced, not doubled: {}",
        seen[0].head
    );
    let parts: Vec<&str> = sent[0].split('-').collect();
    assert_eq!(parts.len(), 4, "{sent:?}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE, "01"),
        "{sent:?}"
    );
    assert_ne!(
        parts[2], CALLER_SPAN,
        "the upstream's parent is smartgate's span"
    );
    let upstream_parent = parts[2].to_owned();
    assert_eq!(header_values(&seen[0].head, "tracestate"), ["vendor=abc"]);
    let root_sent = header_values(&seen[1].head, "traceparent");
    assert_eq!(root_sent.len(), 1, "{}", seen[1].head);
    assert!(!root_sent[0].contains(TRACE), "{root_sent:?}");

    // SIGTERM: the queued spans are flushed before the process exits.
    assert!(
        exported(&collector).1.is_empty(),
        "exported before the flush"
    );
    assert!(proxy.terminate().success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let (bodies, spans) = loop {
        let (bodies, spans) = exported(&collector);
        if spans.len() >= 4 || Instant::now() > deadline {
            break (bodies, spans);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(spans.len(), 4, "{spans:#?}");

    let s = span_for(&spans, "otel-allow");
    assert_eq!(s["traceId"], TRACE, "{s:#}");
    assert_eq!(s["parentSpanId"], CALLER_SPAN, "{s:#}");
    assert_eq!(s["spanId"], upstream_parent.as_str(), "{s:#}");
    assert_eq!(s["kind"], 2, "SPAN_KIND_SERVER: {s:#}");
    assert_eq!(s["name"], "GET", "{s:#}");
    assert_eq!(str_attr(s, "http.request.method"), Some("GET"));
    assert_eq!(str_attr(s, "smartgate.decision"), Some("allow"), "{s:#}");
    assert_eq!(str_attr(s, "smartgate.interaction"), Some("read"));
    assert_eq!(str_attr(s, "smartgate.resource_type"), Some("Patient"));
    assert_eq!(int_attr(s, "http.response.status_code"), Some(200));
    assert_eq!(int_attr(s, "smartgate.upstream.status_code"), Some(200));

    let s = span_for(&spans, "otel-deny");
    assert_eq!(str_attr(s, "smartgate.decision"), Some("deny"), "{s:#}");
    assert_eq!(str_attr(s, "smartgate.resource_type"), Some("Observation"));
    assert_eq!(int_attr(s, "http.response.status_code"), Some(403));
    assert_eq!(
        int_attr(s, "smartgate.upstream.status_code"),
        None,
        "never forwarded"
    );
    assert_ne!(
        s["traceId"], TRACE,
        "a request without traceparent starts a trace"
    );
    assert!(
        s["parentSpanId"].as_str().unwrap_or_default().is_empty(),
        "{s:#}"
    );

    let s = span_for(&spans, "otel-401");
    assert_eq!(
        str_attr(s, "smartgate.decision"),
        Some("unauthenticated"),
        "{s:#}"
    );
    assert_eq!(int_attr(s, "http.response.status_code"), Some(401));

    let s = span_for(&spans, "otel-root");
    assert_eq!(
        s["traceId"],
        root_sent[0].split('-').nth(1).unwrap(),
        "the upstream got the new trace"
    );

    // Attributes are closed sets and ids: no token, no path, no query value.
    for body in &bodies {
        assert!(!body.contains(&token), "the token was exported");
        assert!(
            !body.contains("pt-01") && !body.contains("secret-code"),
            "{body}"
        );
    }
}

#[test]
fn without_an_endpoint_nothing_changes() {
    let upstream = upstream();
    let proxy = Proxy::start_with("", Some(&upstream.url), None);
    let token = proxy.token("user/Patient.rs", None);
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let r = proxy.req(
        "GET",
        "Patient/pt-01",
        &token,
        &[("traceparent", &traceparent)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream.log.lock().unwrap().clone();
    assert_eq!(
        header_values(&seen[0].head, "traceparent"),
        [traceparent],
        "passed through as any end-to-end header"
    );
}

const MINIMAL: &str = "listen: 127.0.0.1:8443\nadmin_listen: 127.0.0.1:9464\npublic_base_url: http://127.0.0.1:8443/fhir\nupstream:\n  url: http://127.0.0.1:8103/fhir\n";

#[test]
fn telemetry_config_is_checked() {
    let ok = format!(
        "{MINIMAL}telemetry:\n  otlp_endpoint: https://collector:4318\n  protocol: http/json\n  sample_ratio: 0.25\n"
    );
    assert!(Config::parse(&ok, Path::new("c.yaml")).is_ok());
    let bad = format!(
        "{MINIMAL}telemetry:\n  otlp_endpoint: collector:4317\n  protocol: grpc\n  sample_ratio: 2\n"
    );
    let errs = Config::parse(&bad, Path::new("c.yaml")).unwrap_err();
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 3, "{shown:?}");
    assert!(
        shown[0].starts_with("c.yaml:7:3: telemetry.otlp_endpoint:"),
        "{shown:?}"
    );
    assert!(shown[1].contains("gRPC is not built in"), "{shown:?}");
    assert!(
        shown[2].starts_with("c.yaml:9:3: telemetry.sample_ratio:"),
        "{shown:?}"
    );
}

#[test]
fn the_standard_variables_configure_export() {
    let env = |pairs: &[(&str, &str)]| {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    };
    // Nothing asked: nothing exported.
    assert_eq!(resolve(None, &env(&[])).unwrap(), None);
    let base = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
    let e = resolve(None, &base).unwrap().unwrap();
    assert_eq!(e.traces_endpoint, "http://c:4318/v1/traces");
    assert_eq!(e.protocol, OtlpProtocol::HttpProtobuf, "the OTLP default");
    assert_eq!(e.service_name, "smartgate");
    assert_eq!(e.timeout, Duration::from_secs(10));
    // The signal's own endpoint is used as it is, and wins over the base.
    let e = resolve(
        None,
        &env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://t:443/otlp/traces",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "gw-eu"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(e.traces_endpoint, "https://t:443/otlp/traces");
    assert_eq!(e.protocol, OtlpProtocol::HttpJson);
    assert_eq!(e.service_name, "gw-eu");
    assert_eq!(e.timeout, Duration::from_millis(2500));
    // The file wins over the variables.
    let file = smartgate::telemetry::TelemetryConfig {
        otlp_endpoint: Some("http://file:4318".into()),
        service_name: Some("from-file".into()),
        ..Default::default()
    };
    let e = resolve(Some(&file), &base).unwrap().unwrap();
    assert_eq!(e.traces_endpoint, "http://file:4318/v1/traces");
    assert_eq!(e.service_name, "from-file");
    // Switched off by the standard switches.
    for off in [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        let v = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), off]);
        assert_eq!(resolve(Some(&file), &v).unwrap(), None, "{off:?}");
    }
    // What cannot be honoured stops the start with a message naming the variable.
    for (bad, says) in [
        (("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), "gRPC"),
        (("OTEL_TRACES_EXPORTER", "zipkin"), "OTEL_TRACES_EXPORTER"),
        (
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
        (
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "c:4318"),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
    ] {
        let v = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), bad]);
        let err = resolve(None, &v).unwrap_err();
        assert!(err.contains(says), "{bad:?}: {err}");
    }
}
