//! Every answer the proxy produces itself is a FHIR `OperationOutcome` (JSON).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use crate::body::{self, ProxyBody};

/// The FHIR JSON media type used on every response the proxy writes itself.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// An `OperationOutcome` with one issue of severity `error`.
///
/// `issue` is a FHIR IssueType code (`forbidden`, `invalid`, `login`, `not-found`,
/// `timeout`, `transient`, …); `message` is shown to the app developer as
/// `diagnostics`, so it must never contain data the caller may not see.
pub fn operation_outcome(issue: &str, message: &str) -> Bytes {
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "error", "code": issue, "diagnostics": message }]
    });
    Bytes::from(body.to_string())
}

/// An `OperationOutcome` with one issue of severity `information` (code
/// `informational`): an answer that is not an error, such as a write whose result the
/// grant may not read.
pub fn information(message: &str) -> Bytes {
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "information", "code": "informational", "diagnostics": message }]
    });
    Bytes::from(body.to_string())
}

/// A complete error response: status, OperationOutcome body, FHIR content type.
pub fn response(status: StatusCode, issue: &str, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(operation_outcome(issue, message)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_is_fhir() {
        let b = operation_outcome("forbidden", "no \"scope\"");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][0]["code"], "forbidden");
        assert_eq!(v["issue"][0]["diagnostics"], "no \"scope\"");
    }
}
