//! Abuse of the public listener: slowloris, oversize heads and bodies, connection floods,
//! HTTP/2 rapid reset and stream floods, request smuggling. Each case bounds its wait with
//! `Instant`, and checks that smartgate is alive and its admin port answers afterwards.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::faulty::{self, Reply};
use common::{Proxy, http};

fn assert_healthy(proxy: &Proxy) {
    assert!(
        std::path::Path::new(&format!("/proc/{}", proxy.pid())).exists(),
        "smartgate exited"
    );
    let started = Instant::now();
    let h = http::send(&proxy.admin, "GET", "/healthz", &[], b"").expect("healthz");
    assert_eq!(h.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let stderr = std::fs::read_to_string(proxy.dir.join("stderr.log")).unwrap_or_default();
    assert!(!stderr.contains("panicked"), "smartgate panicked: {stderr}");
}

/// Reads until the peer closes (Ok(bytes)) or `limit` passes (Err).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Duration> {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // A reset is a close too.
            Err(_) => return Ok(out),
        }
        if started.elapsed() > limit {
            return Err(started.elapsed());
        }
    }
}

fn status_of(raw: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(raw);
    text.lines().next()?.split_whitespace().nth(1)?.parse().ok()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn slowloris_and_idle_connections_are_closed_after_the_header_read_timeout() {
    let proxy = Proxy::start("limits:\n  header_read_timeout: 1s\n");
    // A head trickled one byte every 200 ms never completes: closed at ~1 s.
    let mut s = TcpStream::connect(&proxy.addr).unwrap();
    let started = Instant::now();
    s.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let mut closed_at = None;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(200));
        if s.write_all(b"a").is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 512];
        let r = s.read(&mut b);
        s.set_nonblocking(false).unwrap();
        match r {
            Ok(0) => {
                closed_at = Some(started.elapsed());
                break;
            }
            // hyper may answer 408 before closing.
            Ok(n) => {
                assert_eq!(status_of(&b[..n]), Some(408), "{:?}", &b[..n]);
                closed_at = Some(started.elapsed());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                closed_at = Some(started.elapsed());
                break;
            }
        }
    }
    let closed_at = closed_at.expect("a slowloris connection stayed open for 6 s");
    assert!(
        closed_at >= Duration::from_millis(800) && closed_at < Duration::from_millis(2500),
        "closed after {closed_at:?}, header_read_timeout is 1s"
    );

    // A connection that never sends anything, and an idle keep-alive connection after one
    // request, are closed too.
    let mut idle = TcpStream::connect(&proxy.addr).unwrap();
    let r = read_until_closed(&mut idle, Duration::from_secs(4));
    assert!(r.is_ok(), "a silent connection stayed open");
    let mut ka = TcpStream::connect(&proxy.addr).unwrap();
    ka.write_all(b"GET /fhir/Patient/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let all = read_until_closed(&mut ka, Duration::from_secs(4)).expect("idle keep-alive open");
    assert_eq!(status_of(&all), Some(401));
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert_healthy(&proxy);
}

#[test]
fn oversize_heads_get_431_or_400_and_the_connection_is_closed() {
    let proxy = Proxy::start("limits:\n  max_header_bytes: 16384\n");
    for (what, raw) in [
        (
            "one 64 KB header",
            format!(
                "GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(64 * 1024)
            ),
        ),
        (
            "a 64 KB request target",
            format!(
                "GET /fhir/Patient?name={} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(64 * 1024)
            ),
        ),
        (
            "2000 small headers",
            format!(
                "GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n{}\r\n",
                (0..2000)
                    .map(|i| format!("X-{i}: v\r\n"))
                    .collect::<String>()
            ),
        ),
    ] {
        let mut s = TcpStream::connect(&proxy.addr).unwrap();
        // The server may close before it read everything: a failed write is fine.
        let _ = s.write_all(raw.as_bytes());
        let started = Instant::now();
        let got = read_until_closed(&mut s, Duration::from_secs(5))
            .unwrap_or_else(|t| panic!("{what}: connection still open after {t:?}"));
        let status = status_of(&got);
        assert!(
            matches!(status, Some(431) | Some(400)) || got.is_empty(),
            "{what}: {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{what}");
    }
    assert_healthy(&proxy);
}

#[test]
fn bodies_over_the_limits_get_413() {
    // The upstream reads whatever arrives and says how much; searches get a 5 KB Bundle.
    let upstream = faulty::start(|req| {
        if req.method == "GET" {
            let pad = "x".repeat(5000);
            return Reply::json(
                200,
                format!("{{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"id\":\"{pad}\"}}"),
            );
        }
        Reply::json(
            201,
            format!(
                "{{\"resourceType\":\"Binary\",\"id\":\"b\",\"received\":{}}}",
                req.body.len()
            ),
        )
    });
    let proxy = Proxy::start_with(
        "limits:\n  max_body_bytes: 4096\n  max_inspect_bytes: 2048\n",
        Some(&upstream.url),
        None,
    );
    let user = proxy.token("user/*.cruds", None);
    let patient = proxy.token("patient/*.cruds launch/patient", Some("A"));
    let form = format!("code={}", "x".repeat(3000));
    let bundle = format!(
        "{{\"resourceType\":\"Bundle\",\"type\":\"batch\",\"entry\":[],\"pad\":\"{}\"}}",
        "x".repeat(3000)
    );
    let obs = format!(
        "{{\"resourceType\":\"Observation\",\"subject\":{{\"reference\":\"Patient/A\"}},\"pad\":\"{}\"}}",
        "x".repeat(3000)
    );
    let big = vec![b'x'; 8192];
    let cases: Vec<(&str, &str, &str, &str, &[u8])> = vec![
        (
            "form body read for _search",
            "Observation/_search",
            &user,
            "application/x-www-form-urlencoded",
            form.as_bytes(),
        ),
        (
            "batch Bundle read to split",
            "",
            &user,
            "application/fhir+json",
            bundle.as_bytes(),
        ),
        (
            "patient/ create read for the body check",
            "Observation",
            &patient,
            "application/fhir+json",
            obs.as_bytes(),
        ),
        (
            "streamed create over max_body_bytes",
            "Binary",
            &user,
            "application/octet-stream",
            &big,
        ),
    ];
    for (what, rel, token, ct, body) in cases {
        let started = Instant::now();
        let r = proxy.req("POST", rel, token, &[("Content-Type", ct)], body);
        assert_eq!(r.status, 413, "{what}: {}", r.text());
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
        assert!(started.elapsed() < Duration::from_secs(3), "{what}");
    }
    // Chunked, so the size is only known while streaming.
    let mut raw = format!(
        "POST /fhir/Binary HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user}\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..4 {
        raw.extend_from_slice(b"800\r\n");
        raw.extend(std::iter::repeat_n(b'y', 0x800));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = http::send_raw(&proxy.addr, &raw).unwrap();
    assert_eq!(r.status, 413, "chunked: {}", r.text());
    // A response that must be filtered but is over max_inspect_bytes is withheld.
    let r = proxy.get("Observation?patient=A", &patient);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(!r.text().contains("xxxx"));
    // Under the limits everything still works.
    let r = proxy.req(
        "POST",
        "Binary",
        &user,
        &[("Content-Type", "application/octet-stream")],
        &big[..4000],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["received"], 4000);
    assert_healthy(&proxy);
}

#[test]
fn a_connection_flood_is_held_at_max_connections_and_admin_stays_up() {
    let proxy = Proxy::start("limits:\n  max_connections: 50\n  header_read_timeout: 3s\n");
    let baseline = open_fds(proxy.pid());
    // 200 sockets that never send a byte.
    let held: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&proxy.addr).expect("the kernel queues the rest"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let fds = open_fds(proxy.pid());
    assert!(
        fds <= baseline + 50 + 5,
        "{} descriptors for 200 connections with max_connections 50 (baseline {baseline})",
        fds
    );
    // The admin port is its own listener: up during the flood.
    let started = Instant::now();
    let h = http::send(&proxy.admin, "GET", "/healthz", &[], b"").unwrap();
    assert_eq!(h.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    // A real request waits for a slot (the idle ones are closed after the 3 s head
    // timeout), then is served: the limit holds and nothing is dropped.
    let started = Instant::now();
    let r = http::send(&proxy.addr, "GET", "/fhir/Patient/x", &[], b"").unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status, 401);
    assert!(
        waited > Duration::from_millis(1000),
        "served at once ({waited:?}): the limit did not hold"
    );
    assert!(waited < Duration::from_secs(20), "waited {waited:?}");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(
        http::send(&proxy.addr, "GET", "/fhir/Patient/x", &[], b"")
            .unwrap()
            .status,
        401
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_healthy(&proxy);
}

/// Sends raw bytes on a fresh connection and reads until the server closes it (failing the
/// test when it stays open): the status of the first response, and every byte received.
fn smuggle(addr: &str, raw: &str) -> (Option<u16>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    // The server may close before it read everything: a failed write is fine.
    let _ = s.write_all(raw.as_bytes());
    let got = read_until_closed(&mut s, Duration::from_secs(5))
        .unwrap_or_else(|t| panic!("connection left open after {t:?} for {raw:?}"));
    (status_of(&got), got)
}

/// The body of the first response in `raw` (everything after its head).
fn body_of(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

#[test]
fn ambiguous_framing_gets_400_and_the_connection_closed() {
    // The upstream counts what reaches it.
    let upstream =
        faulty::start(|_| Reply::json(200, "{\"resourceType\":\"Binary\",\"id\":\"b\"}"));
    let proxy = Proxy::start_with("", Some(&upstream.url), None);
    let token = proxy.token("user/*.cruds", None);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let post = |extra: &str, version: &str| {
        format!(
            "POST /fhir/Binary HTTP/{version}\r\nHost: x\r\n{auth}Content-Type: application/octet-stream\r\n{extra}"
        )
    };
    // A DELETE hidden where one parser would see a body and another the next request.
    let smuggled = format!("DELETE /fhir/Binary/b HTTP/1.1\r\nHost: x\r\n{auth}\r\n");

    // Framing hyper accepts but hides from the pipeline (it drops the Content-Length beside
    // a Transfer-Encoding, folds equal Content-Lengths), framing and header syntax it would
    // refuse itself with an empty 400:
    // the pipeline refuses both with an OperationOutcome, `Connection: close` and an audit
    // line, before anything is forwarded and without reading what follows.
    let refused_by_smartgate = [
        (
            "Content-Length then Transfer-Encoding",
            format!(
                "{}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
                post("", "1.1")
            ),
            "content-length-with-transfer-encoding",
        ),
        (
            "Transfer-Encoding then Content-Length",
            format!(
                "{}Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n{smuggled}",
                post("", "1.1")
            ),
            "content-length-with-transfer-encoding",
        ),
        (
            "two equal Content-Lengths",
            format!(
                "{}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello{smuggled}",
                post("", "1.1")
            ),
            "repeated-content-length",
        ),
        (
            "Transfer-Encoding: gzip, chunked",
            format!(
                "{}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{smuggled}",
                post("", "1.1")
            ),
            "unsupported-transfer-encoding",
        ),
        (
            "Transfer-Encoding: chunked, chunked",
            format!(
                "{}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n{smuggled}",
                post("", "1.1")
            ),
            "unsupported-transfer-encoding",
        ),
        (
            "two Transfer-Encoding lines",
            format!(
                "{}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
                post("", "1.1")
            ),
            "repeated-transfer-encoding",
        ),
        (
            "Content-Length + Transfer-Encoding after a good request on the same connection",
            format!(
                "{}Content-Length: 5\r\n\r\nhello{}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
                post("", "1.1"),
                post("", "1.1")
            ),
            "content-length-with-transfer-encoding",
        ),
        (
            "two Content-Lengths that differ",
            format!(
                "{}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!{smuggled}",
                post("", "1.1")
            ),
            "repeated-content-length",
        ),
        (
            "a Content-Length list",
            format!(
                "{}Content-Length: 5, 5\r\n\r\nhello{smuggled}",
                post("", "1.1")
            ),
            "content-length-list",
        ),
        (
            "a Content-Length list that differs",
            format!(
                "{}Content-Length: 5, 6\r\n\r\nhello!{smuggled}",
                post("", "1.1")
            ),
            "content-length-list",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            format!(
                "{}Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}",
                post("", "1.1")
            ),
            "unsupported-transfer-encoding",
        ),
        (
            "Transfer-Encoding: gzip",
            format!(
                "{}Transfer-Encoding: gzip\r\n\r\nhello{smuggled}",
                post("", "1.1")
            ),
            "unsupported-transfer-encoding",
        ),
        (
            "an unknown Transfer-Encoding",
            format!(
                "{}Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}",
                post("", "1.1")
            ),
            "unsupported-transfer-encoding",
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!(
                "{}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}",
                post("", "1.0")
            ),
            "transfer-encoding-on-http-1.0",
        ),
        (
            "a signed Content-Length",
            format!(
                "{}Content-Length: +5\r\n\r\nhello{smuggled}",
                post("", "1.1")
            ),
            "invalid-content-length",
        ),
        (
            "a space before the colon",
            format!(
                "{}Content-Length : 5\r\n\r\nhello{smuggled}",
                post("", "1.1")
            ),
            "malformed-head",
        ),
        (
            "an obs-folded header",
            format!(
                "{}Content-Length: 5\r\nX-Fold: a\r\n b\r\n\r\nhello{smuggled}",
                post("", "1.1")
            ),
            "malformed-head",
        ),
        (
            "a bare CR inside a header value",
            format!(
                "{}X-A: a\rContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello{smuggled}",
                post("", "1.1")
            ),
            "malformed-head",
        ),
    ];
    for (what, raw, reason) in refused_by_smartgate {
        let (hits, audited) = (upstream.hits(), proxy.audit_lines().len());
        let good_first = what.contains("after a good request");
        let (status, got) = smuggle(&proxy.addr, &raw);
        let text = String::from_utf8_lossy(&got).into_owned();
        // An HTTP/1.0 request is answered in HTTP/1.0.
        let status_line = if raw.contains("HTTP/1.0\r\n") {
            "HTTP/1.0 "
        } else {
            "HTTP/1.1 "
        };
        let starts: Vec<usize> = text
            .match_indices(status_line)
            .map(|(i, _)| i)
            .filter(|i| status_of(&text.as_bytes()[*i..]).is_some())
            .collect();
        let last = starts.last().map(|i| &text[*i..]).unwrap_or_default();
        assert_eq!(starts.len(), 1 + usize::from(good_first), "{what}: {text}");
        assert_eq!(
            status,
            Some(if good_first { 200 } else { 400 }),
            "{what}: {text}"
        );
        assert_eq!(status_of(last.as_bytes()), Some(400), "{what}: {text}");
        let lower = last.to_ascii_lowercase();
        assert!(
            lower.contains("\r\nconnection: close\r\n"),
            "{what}: {last}"
        );
        let outcome: serde_json::Value = serde_json::from_str(&body_of(last.as_bytes()))
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {last}"));
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}");
        assert_eq!(
            upstream.hits() - hits,
            usize::from(good_first),
            "{what}: forwarded {:?}",
            upstream.seen()
        );
        let lines = proxy.audit_lines();
        let new = &lines[audited..];
        let refusal = new
            .last()
            .unwrap_or_else(|| panic!("{what}: no audit line"));
        assert_eq!(refusal["status"], 400, "{what}: {refusal}");
        assert_eq!(refusal["decision"], "invalid", "{what}: {refusal}");
        assert_eq!(refusal["reason"], reason, "{what}: {refusal}");
        assert!(
            !new.iter().any(|l| l["method"] == "DELETE"),
            "{what}: the smuggled DELETE was processed"
        );
    }

    // Request lines hyper cannot parse: its own empty 400 and the connection closed,
    // nothing forwarded, nothing after them read.
    let unparseable = [
        (
            "a space inside the target",
            format!(
                "POST /fhir/Binary x HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\n\r\nhello"
            ),
        ),
        (
            "a space after the version",
            format!(
                "POST /fhir/Binary HTTP/1.1 \r\nHost: x\r\n{auth}Content-Length: 5\r\n\r\nhello"
            ),
        ),
    ];
    for (what, raw) in unparseable {
        let hits = upstream.hits();
        let (status, got) = smuggle(&proxy.addr, &format!("{raw}{smuggled}"));
        assert_eq!(
            status,
            Some(400),
            "{what}: {}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(upstream.hits(), hits, "{what}: reached the upstream");
    }
    assert!(
        !proxy.audit_lines().iter().any(|l| l["method"] == "DELETE"),
        "a smuggled DELETE was processed"
    );

    // Plain framing is untouched: a length, chunks with an extension and a trailer, a GET
    // and an HTTP/1.0 request, pipelined on one keep-alive connection, are all forwarded.
    let hits = upstream.hits();
    let raw = format!(
        "{}Content-Length: 5\r\n\r\nhello{}Transfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n\
         GET /fhir/Binary/b HTTP/1.1\r\nHost: x\r\n{auth}\r\n{}Connection: keep-alive\r\nContent-Length: 2\r\n\r\nhi\
         GET /fhir/Binary/b HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n",
        post("", "1.1"),
        post("", "1.1"),
        post("", "1.0"),
    );
    let (status, got) = smuggle(&proxy.addr, &raw);
    let text = String::from_utf8_lossy(&got);
    assert_eq!(status, Some(200), "{text}");
    assert_eq!(text.matches(" 200 OK\r\n").count(), 5, "{text}");
    assert_eq!(upstream.hits() - hits, 5, "{:?}", upstream.seen());
    assert_healthy(&proxy);
}

/// An HTTP/2 connection has no header-read timer between requests: `limits.idle_timeout`
/// closes it with GOAWAY once nothing was in flight or started for that long, and never
/// closes one that keeps being used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_with_goaway() {
    let proxy = tokio::task::spawn_blocking(|| Proxy::start("limits:\n  idle_timeout: 1s\n"))
        .await
        .unwrap();
    let uri = format!("http://{}/fhir/Patient/x", proxy.addr);
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(&proxy.addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        (client, tokio::spawn(conn))
    };
    let get = |client: h2::client::SendRequest<bytes::Bytes>| {
        let uri = uri.clone();
        async move {
            let mut client = client.ready().await.unwrap();
            let req = ::http::Request::get(&uri).body(()).unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            resp.await.unwrap().status()
        }
    };

    let (idle, idle_conn) = connect().await;
    assert_eq!(get(idle.clone()).await, 401);
    let (busy, busy_conn) = connect().await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3500) {
        assert_eq!(
            get(busy.clone()).await,
            401,
            "a connection in use stays open"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!busy_conn.is_finished(), "the busy connection was closed");
    // Idle for 1-2 s: GOAWAY (NO_ERROR) ends the connection cleanly.
    let ended = tokio::time::timeout(Duration::from_secs(3), idle_conn).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the idle connection was not closed gracefully: {ended:?}"
    );
    drop(idle);
    assert_eq!(get(busy).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_limits_and_rapid_reset() {
    let proxy =
        tokio::task::spawn_blocking(|| Proxy::start("limits:\n  max_concurrent_streams: 8\n"))
            .await
            .unwrap();
    let addr = proxy.addr.clone();
    let uri = format!("http://{addr}/fhir/Patient/x");

    // The server advertises the configured stream limit.
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut client = client.ready().await.unwrap();
    let req = ::http::Request::get(&uri).body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = tokio::select! {
        r = resp => r.unwrap(),
        c = &mut conn => panic!("connection ended: {c:?}"),
    };
    assert_eq!(resp.status(), 401);
    assert_eq!(conn.max_concurrent_send_streams(), 8);
    tokio::spawn(async move {
        let _ = conn.await;
    });

    // A stream flood: 300 requests at once on one connection are all answered (queued by
    // the advertised limit), promptly.
    let started = Instant::now();
    let mut pending = Vec::new();
    for _ in 0..300 {
        client = client.ready().await.unwrap();
        let req = ::http::Request::get(&uri).body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        pending.push(resp);
    }
    for p in pending {
        assert_eq!(p.await.unwrap().status(), 401);
    }
    assert!(started.elapsed() < Duration::from_secs(15));

    // Rapid reset (CVE-2023-44487): open and cancel streams as fast as possible. The
    // connection is closed with GOAWAY, and the process stays responsive.
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let started = Instant::now();
    let mut sent = 0;
    for _ in 0..5000 {
        let Ok(ready) = client.ready().await else {
            break;
        };
        client = ready;
        let req = ::http::Request::post(&uri).body(()).unwrap();
        match client.send_request(req, false) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), conn_task).await;
    eprintln!("rapid reset: {sent} streams reset, connection: {ended:?}");
    // hyper's h2 answers a reset flood with GOAWAY ENHANCE_YOUR_CALM (after ~2600 here);
    // depending on timing the client sees that GOAWAY or the closed socket behind it.
    assert!(
        matches!(&ended, Ok(Ok(Err(e)))
            if e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || e.is_io()),
        "{sent} resets did not end the connection: {ended:?}"
    );
    let proxy = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let r = http::send(&proxy.addr, "GET", "/fhir/Patient/x", &[], b"").unwrap();
        assert_eq!(r.status, 401);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_healthy(&proxy);
        proxy
    })
    .await
    .unwrap();
    drop(proxy);
}
