//! The `POST …/_search` form-body parser (through `classify`, as the proxy calls it).
//! Oracles: no panic; a parsed search re-encodes to a GET target that means the same.
#![no_main]

#[path = "common.rs"]
mod common;

use http::{HeaderMap, HeaderValue, Method, header};
use libfuzzer_sys::fuzz_target;
use smartgate::classify::{RawRequest, classify};

fuzz_target!(|body: &[u8]| {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    for (path, query) in [
        ("Observation/_search", Some("patient=A")),
        ("_search", None),
        ("Patient/_search", Some("_id=A&_format=json")),
    ] {
        let raw = RawRequest {
            method: &Method::POST,
            path,
            query,
            headers: &headers,
            body: Some(body),
        };
        if let Ok(req) = classify(&raw) {
            assert_eq!(common::again(&req), req);
        }
    }
});
