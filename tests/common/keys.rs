//! Test keys and token forging (shared by unit tests, integration tests and the bench).
#![allow(dead_code)]

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A private key, its algorithm and its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

fn finish(kid: &str, alg: Algorithm, encoding: EncodingKey) -> TestKey {
    let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    TestKey {
        kid: kid.to_owned(),
        alg,
        encoding,
        jwk: serde_json::to_value(&jwk).unwrap(),
    }
}

/// A fresh RSA-2048 key (RS256).
pub fn rsa(kid: &str) -> TestKey {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).unwrap();
    let b64 = STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    finish(
        kid,
        Algorithm::RS256,
        EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
}

/// A fresh P-256 key (ES256).
pub fn ec(kid: &str) -> TestKey {
    let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let der = kp.to_pkcs8v1().unwrap();
    finish(
        kid,
        Algorithm::ES256,
        EncodingKey::from_ec_der(der.as_ref()),
    )
}

/// A fresh Ed25519 key (EdDSA).
pub fn ed(kid: &str) -> TestKey {
    let kp = Ed25519KeyPair::generate().unwrap();
    let der = kp.to_pkcs8v1().unwrap();
    finish(
        kid,
        Algorithm::EdDSA,
        EncodingKey::from_ed_der(der.as_ref()),
    )
}

impl TestKey {
    /// A token signed with this key, `kid` set.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        self.sign_with(h, claims)
    }

    /// A token with a custom header, signed with this key.
    pub fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// `{"keys": [...]}`.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

/// A compact JWS from raw parts (for headers jsonwebtoken will not produce).
pub fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// The classic confusion attack: HS256 keyed with the RSA key's public material.
pub fn hs256_with_public_key(key: &TestKey, claims: &Value) -> String {
    let n = key.jwk["n"].as_str().unwrap().to_owned();
    let secret = EncodingKey::from_secret(n.as_bytes()).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&h, claims, &secret).unwrap()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub const ISSUER: &str = "https://as.test/realm";
pub const AUDIENCE: &str = "https://fhir.test/r4";

/// Valid SMART claims for `ISSUER`/`AUDIENCE`, one hour left.
pub fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "u1", "client_id": "app",
        "exp": now() + 3600, "iat": now(), "patient": "p1",
        "scope": "launch/patient patient/Observation.rs openid fhirUser",
        "fhirUser": "Practitioner/9"
    })
}
