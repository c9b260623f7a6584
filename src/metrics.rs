//! Prometheus metrics (OpenMetrics text) for the admin port. Labels are low-cardinality
//! by construction: decisions, interactions and resource types come from closed sets,
//! never from client-controlled strings.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `smartgate_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Audit decision (`allow`, `deny`, …).
    pub decision: &'static str,
    /// Interaction, or `none`.
    pub interaction: &'static str,
    /// `2xx`, `4xx`, …
    pub status_class: &'static str,
}

/// Labels of `smartgate_policy_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` (swapped in) or `invalid` (refused; the previous policies stay).
    pub result: &'static str,
}

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
    /// Policy reloads by result.
    pub policy_reloads: Family<ReloadLabels, Counter>,
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
        let policy_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads by result (invalid: refused, previous policies kept)",
            policy_reloads.clone(),
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
            policy_reloads,
        }
    }

    /// Counts one policy reload (`ok` or `invalid`).
    pub fn policy_reload(&self, result: &'static str) {
        self.policy_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
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
                status_class: "2xx",
            })
            .inc();
        let text = m.encode();
        assert!(text.contains("smartgate_requests_total{decision=\"allow\",interaction=\"read\",status_class=\"2xx\"} 1"), "{text}");
        assert!(text.contains("smartgate_build_info"));
        assert!(text.ends_with("# EOF\n"));
    }
}
