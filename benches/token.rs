//! Token checks on the hot path: JWT with a cached key (RS256, ES256) and a cached
//! introspection answer.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use common::keys::{self, AUDIENCE, ISSUER, claims, now};
use common::server::{self, State};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use smartgate::authenticate::{AuthConfig, Authenticator, IntrospectionConfig, JwtConfig};
use smartgate::net;

/// The allocator the binary uses (src/main.rs), so the figures match production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bearer(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    h
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rsa = keys::rsa("r1");
    let ec = keys::ec("e1");
    let (jwt_auth, intro_auth) = rt.block_on(async {
        let s = server::start(State {
            jwks: keys::jwks(&[&rsa, &ec]),
            ..State::default()
        })
        .await;
        s.set(|st| {
            st.answers.insert(
                "opaque".into(),
                json!({"active": true, "scope": "patient/*.rs", "patient": "p1", "exp": now() + 3600}),
            );
        });
        let client = net::client(&net::ClientOptions::default()).unwrap();
        let mut j = JwtConfig::new(ISSUER);
        j.jwks_uri = Some(s.jwks_uri());
        let cfg = AuthConfig {
            jwt: Some(j),
            ..AuthConfig::default()
        };
        let jwt_auth = Authenticator::new(&cfg, AUDIENCE, client.clone()).await.unwrap();
        let mut i = IntrospectionConfig::new(s.introspection_uri(), "proxy");
        i.client_secret = Some("secret".into());
        let cfg = AuthConfig {
            introspection: Some(i),
            ..AuthConfig::default()
        };
        let intro_auth = Authenticator::new(&cfg, AUDIENCE, client).await.unwrap();
        (jwt_auth, intro_auth)
    });
    for (name, key) in [("jwt_rs256", &rsa), ("jwt_es256", &ec)] {
        let h = bearer(&key.sign(&claims()));
        assert!(rt.block_on(jwt_auth.authenticate(&h, None)).is_ok());
        c.bench_function(name, |b| {
            b.iter(|| rt.block_on(jwt_auth.authenticate(black_box(&h), None)))
        });
    }
    let h = bearer("opaque");
    assert!(rt.block_on(intro_auth.authenticate(&h, None)).is_ok());
    c.bench_function("introspection_cached", |b| {
        b.iter(|| rt.block_on(intro_auth.authenticate(black_box(&h), None)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
