//! Prometheus metrics (OpenMetrics text) for the admin port. Labels are low-cardinality
//! by construction: decisions, interactions and resource types come from closed sets,
//! never from client-controlled strings.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::authenticate::Authenticator;
use crate::fhir::ResourceType;

/// Labels of `smartgate_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Audit decision (`allow`, `deny`, …).
    pub decision: &'static str,
    /// Interaction, or `none`.
    pub interaction: &'static str,
    /// R4 resource type (a closed set), or `none`.
    pub resource_type: &'static str,
    /// `2xx`, `4xx`, …
    pub status_class: &'static str,
}

/// A single `result` label: `ok`/`error`, or a token check's outcome code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, `error`, or an `AuthError::code`.
    pub result: &'static str,
}

/// A single `resource_type` label: an R4 resource type name (a closed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// R4 resource type.
    pub resource_type: &'static str,
}

/// How often the "server ignores the narrowing" warning may be logged per resource type:
/// often enough to be seen, rarely enough not to flood the log on every search.
pub const IGNORED_NARROWING_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by decision, interaction and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Total latency to response head, seconds.
    pub latency: Histogram,
    /// Upstream latency to response head, seconds.
    pub upstream_latency: Histogram,
    /// Bundle entries and resources withheld by the response filter.
    pub filtered_entries: Counter,
    /// Requests being handled.
    pub in_flight: Gauge,
    /// Bearer-token checks by result: `ok` or the refusal code (`expired`, `bad_signature`, …).
    pub token_checks: Family<ResultLabels, Counter>,
    /// Policy reloads by result (`ok`/`error`), incremented by the policy loader.
    pub policy_reloads: Family<ResultLabels, Counter>,
    /// Inbound TLS certificate reloads by result (`ok`/`error`).
    pub tls_reloads: Family<ResultLabels, Counter>,
    /// CapabilityStatement answers from the cache and from the upstream.
    pub metadata_cache: Family<ResultLabels, Counter>,
    /// Entries a narrowed search returned although the narrowing excluded them, by type:
    /// the upstream ignores a parameter the proxy relies on (see [`Self::ignored_narrowing`]).
    pub upstream_ignored_narrowing: Family<TypeLabels, Counter>,
    /// When the ignored-narrowing warning was last logged, by type.
    narrowing_warned: Mutex<HashMap<ResourceType, Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers everything.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("smartgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests by decision", requests.clone());
        let latency = Histogram::new(exponential_buckets(0.0001, 2.5, 14));
        registry.register(
            "request_duration_seconds",
            "Time to response head",
            latency.clone(),
        );
        let upstream_latency = Histogram::new(exponential_buckets(0.0001, 2.5, 14));
        registry.register(
            "upstream_duration_seconds",
            "Upstream time to response head",
            upstream_latency.clone(),
        );
        let filtered_entries = Counter::default();
        registry.register(
            "filtered_entries",
            "Resources withheld by response filtering",
            filtered_entries.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests being handled",
            in_flight.clone(),
        );
        let token_checks = Family::<ResultLabels, Counter>::default();
        registry.register(
            "token_checks",
            "Bearer-token checks by result (ok or the refusal code)",
            token_checks.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads by result",
            policy_reloads.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Inbound TLS certificate reloads by result",
            tls_reloads.clone(),
        );
        let metadata_cache = Family::<ResultLabels, Counter>::default();
        registry.register(
            "metadata_cache",
            "CapabilityStatement answers by source (hit: cache, miss: upstream)",
            metadata_cache.clone(),
        );
        let upstream_ignored_narrowing = Family::<TypeLabels, Counter>::default();
        registry.register(
            "upstream_ignored_narrowing",
            "Entries of narrowed searches the upstream returned outside the narrowing (filtered out), by resource type",
            upstream_ignored_narrowing.clone(),
        );
        let build = Family::<Vec<(String, String)>, Gauge>::default();
        build
            .get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())])
            .set(1);
        registry.register("build_info", "Build information", build);
        Metrics {
            registry,
            requests,
            latency,
            upstream_latency,
            filtered_entries,
            in_flight,
            token_checks,
            policy_reloads,
            tls_reloads,
            metadata_cache,
            upstream_ignored_narrowing,
            narrowing_warned: Mutex::new(HashMap::new()),
        }
    }

    /// Counts entries of a narrowed search that the upstream returned outside the
    /// narrowing (the filter removed them), one per entry in `types`, and warns at most
    /// once per type and [`IGNORED_NARROWING_WARN_INTERVAL`]: the data stayed safe, but the
    /// server did a scan the narrowing should have spared it, and the app got short pages.
    pub fn ignored_narrowing(&self, types: &[ResourceType]) {
        for t in types {
            self.upstream_ignored_narrowing
                .get_or_create(&TypeLabels {
                    resource_type: t.name(),
                })
                .inc();
        }
        let now = Instant::now();
        let mut warned = match self.narrowing_warned.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut seen: Vec<ResourceType> = Vec::new();
        for &t in types {
            if seen.contains(&t) {
                continue;
            }
            seen.push(t);
            let due = warned
                .get(&t)
                .is_none_or(|last| now.duration_since(*last) >= IGNORED_NARROWING_WARN_INTERVAL);
            if due {
                warned.insert(t, now);
                let count = types.iter().filter(|x| **x == t).count();
                tracing::warn!(
                    resource_type = t.name(),
                    entries = count,
                    "the FHIR server returned {} entries outside a narrowed search: it ignores the patient/granular search parameter smartgate adds (they were filtered out; see smartgate_upstream_ignored_narrowing_total)",
                    t.name()
                );
            }
        }
    }

    /// Exports the authenticator's counters (JWKS fetches and keys, introspection calls
    /// and cache hits) read at scrape time.
    pub fn register_auth(&mut self, auth: Arc<Authenticator>) {
        self.registry
            .register_collector(Box::new(AuthCollector(auth)));
    }

    /// Adds the upstream connection-slot gauges (read on each scrape).
    pub fn register_upstream(&mut self, upstream: Arc<crate::forward::Upstream>) {
        self.registry
            .register_collector(Box::new(UpstreamCollector(upstream)));
    }

    /// The registry, for components that add their own metrics at start-up.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Reads [`crate::authenticate::AuthStats`] on each scrape.
struct AuthCollector(Arc<Authenticator>);

impl std::fmt::Debug for AuthCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthCollector")
    }
}

impl Collector for AuthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        let counters = [
            (
                "jwks_fetches_ok",
                "Successful JWKS fetches",
                &s.jwks_fetch_ok,
            ),
            (
                "jwks_fetches_failed",
                "Failed JWKS fetches",
                &s.jwks_fetch_failed,
            ),
            (
                "jwks_unknown_kid_refetches",
                "JWKS refetches caused by unknown key ids",
                &s.jwks_unknown_kid_refetches,
            ),
            (
                "introspection_calls",
                "Calls to the introspection endpoint",
                &s.introspection_calls,
            ),
            (
                "introspection_failures",
                "Introspection calls that failed (each a 401)",
                &s.introspection_failures,
            ),
            (
                "introspection_cache_hits",
                "Introspection look-ups answered from the cache",
                &s.introspection_cache_hits,
            ),
            (
                "introspection_cache_misses",
                "Introspection look-ups not in the cache",
                &s.introspection_cache_misses,
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value.load(Ordering::Relaxed));
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let keys =
            ConstGauge::new(i64::try_from(s.keys_held.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        keys.encode(encoder.encode_descriptor(
            "jwks_keys",
            "Usable keys in the JWKS",
            None,
            keys.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Reads [`crate::forward::Upstream::slot_use`] on each scrape.
struct UpstreamCollector(Arc<crate::forward::Upstream>);

impl std::fmt::Debug for UpstreamCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamCollector")
    }
}

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let use_ = self.0.slot_use();
        for (name, help, value) in [
            (
                "upstream_busy_connections",
                "Requests holding one of the upstream.max_connections slots",
                use_.busy,
            ),
            (
                "upstream_waiting_requests",
                "Requests waiting for an upstream connection slot",
                use_.waiting,
            ),
        ] {
            let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

/// `2xx`-style class of a status code.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_openmetrics() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                decision: "allow",
                interaction: "read",
                resource_type: "Patient",
                status_class: "2xx",
            })
            .inc();
        m.policy_reloads
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
        let text = m.encode();
        assert!(text.contains("smartgate_requests_total{decision=\"allow\",interaction=\"read\",resource_type=\"Patient\",status_class=\"2xx\"} 1"), "{text}");
        assert!(
            text.contains("smartgate_policy_reloads_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("smartgate_build_info"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn ignored_narrowing_counts_per_type_and_warns_once_per_interval() {
        let m = Metrics::new();
        let obs = ResourceType::OBSERVATION;
        m.ignored_narrowing(&[obs, obs, ResourceType::PATIENT]);
        m.ignored_narrowing(&[obs]);
        let text = m.encode();
        assert!(
            text.contains(
                "smartgate_upstream_ignored_narrowing_total{resource_type=\"Observation\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "smartgate_upstream_ignored_narrowing_total{resource_type=\"Patient\"} 1"
            ),
            "{text}"
        );
        let warned = m.narrowing_warned.lock().unwrap();
        assert_eq!(warned.len(), 2);
    }
}
