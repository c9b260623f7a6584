//! Token handling before any signature check: the `Authorization` header, the unverified
//! JWT header and issuer, a JWKS document, and the claims mapping.
//! Input: `authorization \0 claims-json \0 jwks-json`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let auth = parts.next().unwrap_or_default();
    let claims = parts.next().unwrap_or_default();
    let jwks = parts.next().unwrap_or_default();
    let _ = smartgate::authenticate::fuzzing::token(auth, claims, jwks);
});
