//! The configuration loader (`Config::parse`: YAML, then semantic validation, then error
//! location). Oracles: no panic; every error carries a message; whatever `check` accepts,
//! `serve` can run: durations fit in an `Instant` and in moka's 1000-year bound, and the
//! connection limit fits tokio's semaphore.
//! (The policy loader is being written in parallel: add a `policy` target when it lands.)
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use smartgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, std::path::Path::new("fuzz.yaml")) {
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in errors {
                assert!(!e.message.is_empty());
                let _ = e.to_string();
            }
        }
        Ok(c) => {
            let mut durations: Vec<Duration> = vec![
                c.limits.header_read_timeout.0,
                c.shutdown.grace.0,
                c.upstream.timeout.0,
                c.upstream.connect_timeout.0,
                c.upstream.pool_idle_timeout.0,
            ];
            if let Some(j) = &c.auth.jwt {
                durations.extend([
                    j.leeway.0,
                    j.jwks_refresh_min.0,
                    j.jwks_refresh_max.0,
                    j.unknown_kid_cooldown.0,
                    j.max_staleness.0,
                    j.timeout.0,
                    j.verified_cache_ttl.0,
                ]);
            }
            if let Some(i) = &c.auth.introspection {
                durations.extend([i.cache_ttl.0, i.negative_cache_ttl.0, i.timeout.0]);
            }
            let now = Instant::now();
            for d in durations {
                assert!(now.checked_add(d).is_some(), "{d:?} overflows an Instant");
                assert!(
                    d < Duration::from_secs(1000 * 365 * 86400),
                    "{d:?} breaks moka"
                );
            }
            assert!(c.limits.max_connections <= tokio_max_permits());
        }
    }
});

/// `tokio::sync::Semaphore::MAX_PERMITS` (usize::MAX >> 3), without a tokio dependency.
fn tokio_max_permits() -> usize {
    usize::MAX >> 3
}
