//! A scripted, deliberately misbehaving HTTP/1.1 server for fault-injection tests: a
//! JWKS endpoint, an introspection endpoint or a FHIR upstream that is slow, down,
//! resets mid-body, or answers garbage. Each connection runs on its own thread; the
//! script sees every request and decides what goes back on the wire, byte for byte.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the fake server read it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub head: String,
    pub body: Vec<u8>,
}

/// What the fake server does with a request.
pub enum Reply {
    /// A complete response with `Content-Length`; the connection stays open.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// These bytes, then the connection is closed (truncated bodies, bad heads).
    Raw(Vec<u8>),
    /// Wait, then do the rest.
    After(Duration, Box<Reply>),
    /// Close the connection without answering.
    Close,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Full {
            status,
            headers: vec![("Content-Type".into(), "application/fhir+json".into())],
            body: body.into(),
        }
    }

    pub fn with_header(self, k: &str, v: &str) -> Reply {
        match self {
            Reply::Full {
                status,
                mut headers,
                body,
            } => {
                headers.push((k.into(), v.into()));
                Reply::Full {
                    status,
                    headers,
                    body,
                }
            }
            other => other,
        }
    }

    pub fn after(self, d: Duration) -> Reply {
        Reply::After(d, Box::new(self))
    }
}

pub type Script = dyn Fn(&Req) -> Reply + Send + Sync;

/// A running fake server.
pub struct Faulty {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub hits: Arc<AtomicUsize>,
    /// Every request read, in order.
    pub log: Arc<Mutex<Vec<Req>>>,
}

impl Faulty {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// `METHOD target` of every request read so far.
    pub fn seen(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect()
    }
}

/// Starts a server answering every request with `script`.
pub fn start(script: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Faulty {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let script: Arc<Script> = Arc::new(script);
    let hits = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (h, l) = (Arc::clone(&hits), Arc::clone(&log));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let script = Arc::clone(&script);
            let (hits, log) = (Arc::clone(&h), Arc::clone(&l));
            std::thread::spawn(move || serve(stream, &*script, &hits, &log));
        }
    });
    Faulty { url, hits, log }
}

/// A URL where nothing listens.
pub fn dead_url() -> String {
    format!("http://127.0.0.1:{}", super::free_port())
}

fn serve(stream: TcpStream, script: &Script, hits: &AtomicUsize, log: &Mutex<Vec<Req>>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let first = head.lines().next().unwrap_or_default().to_owned();
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            match read_chunked(&mut reader) {
                Some(b) => b,
                None => return,
            }
        } else {
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            body
        };
        hits.fetch_add(1, Ordering::SeqCst);
        let req = Req {
            method,
            target,
            head,
            body,
        };
        let answer = script(&req);
        log.lock().unwrap().push(req);
        if !reply(&stream, answer) {
            return;
        }
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        if n == 0 {
            // Trailers (none expected), then the blank line.
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).ok()? == 0 || l == "\r\n" {
                    return Some(body);
                }
            }
        }
        let mut chunk = vec![0u8; n + 2];
        reader.read_exact(&mut chunk).ok()?;
        body.extend_from_slice(&chunk[..n]);
    }
}

/// Writes `r`; false when the connection must close.
fn reply(mut stream: &TcpStream, r: Reply) -> bool {
    match r {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&body);
            stream.write_all(&bytes).is_ok()
        }
        Reply::Raw(bytes) => {
            let _ = stream.write_all(&bytes);
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Both);
            false
        }
        Reply::After(d, rest) => {
            std::thread::sleep(d);
            reply(stream, *rest)
        }
        Reply::Close => {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            false
        }
    }
}
