//! Logs and traces. JSON logs through `tracing` always; with the cargo feature `otel`, one
//! OpenTelemetry span per request, exported over OTLP/HTTP.
//!
//! Export is configured by `telemetry:` and by the standard `OTEL_*` variables (the file
//! wins: it is what `smartgate check` validated). With no endpoint anywhere nothing is
//! installed, so a build with the feature costs nothing until it is asked to export. A
//! binary built without the feature refuses a `telemetry:` section rather than run without
//! the traces the operator asked for.
//!
//! The span continues the caller's W3C `traceparent` and the upstream request carries the
//! span's own. Its attributes come from the audit record's closed sets (interaction, resource
//! type, decision, reason, statuses) plus the request id: never a token, a path or a query.

use http::{HeaderMap, Method};
use serde::Deserialize;
use tracing::Span;

use crate::audit::Record;

/// `telemetry:`: OpenTelemetry trace export (needs a build with `--features otel`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL, like `OTEL_EXPORTER_OTLP_ENDPOINT`: `/v1/traces`
    /// is appended. Without it (and without the variables) nothing is exported.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (the OTLP default) or `http/json`.
    #[serde(default)]
    pub protocol: Option<OtlpProtocol>,
    /// `service.name` (default `OTEL_SERVICE_NAME`, then `smartgate`).
    #[serde(default)]
    pub service_name: Option<String>,
    /// Share of new traces kept (0.0–1.0); a caller's sampled `traceparent` is honoured.
    /// Without it `OTEL_TRACES_SAMPLER` applies (default: all).
    #[serde(default)]
    pub sample_ratio: Option<f64>,
}

/// The OTLP encodings, as `OTEL_EXPORTER_OTLP_PROTOCOL` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (the OTLP default).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// JSON over HTTP.
    #[serde(rename = "http/json")]
    HttpJson,
    /// Accepted by the parser only to be refused with a clear message: no gRPC stack is built in.
    #[serde(rename = "grpc")]
    Grpc,
}

impl OtlpProtocol {
    /// Parses `OTEL_EXPORTER_OTLP_PROTOCOL` values.
    pub fn parse(s: &str) -> Option<OtlpProtocol> {
        match s.trim() {
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            "http/json" => Some(OtlpProtocol::HttpJson),
            "grpc" => Some(OtlpProtocol::Grpc),
            _ => None,
        }
    }

    /// The name `OTEL_EXPORTER_OTLP_PROTOCOL` uses.
    pub fn name(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::HttpJson => "http/json",
            OtlpProtocol::Grpc => "grpc",
        }
    }
}

const NO_GRPC: &str =
    "OTLP over gRPC is not built in: use http/protobuf or http/json (the collector's port 4318)";

impl TelemetryConfig {
    /// Problems as `(key under telemetry, message)`; an empty key is the section itself.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !cfg!(feature = "otel") {
            out.push((
                String::new(),
                "this smartgate was built without OpenTelemetry export: build it with \
                 `cargo build --release --features otel`, or remove the section"
                    .into(),
            ));
            return out;
        }
        if let Some(e) = &self.otlp_endpoint
            && let Err(why) = check_url(e)
        {
            out.push(("otlp_endpoint".into(), why));
        }
        if self.protocol == Some(OtlpProtocol::Grpc) {
            out.push(("protocol".into(), NO_GRPC.into()));
        }
        if self.service_name.as_deref().is_some_and(str::is_empty) {
            out.push(("service_name".into(), "must not be empty".into()));
        }
        if let Some(r) = self.sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            out.push(("sample_ratio".into(), "must be between 0.0 and 1.0".into()));
        }
        out
    }
}

/// An absolute `http(s)://` URL without query or fragment.
fn check_url(url: &str) -> Result<(), String> {
    crate::config::parse_base_url(url).map(|_| ())
}

/// The request span: `request_id` in every log line written while the request runs and, when
/// exporting, the OpenTelemetry server span continuing the caller's trace.
pub fn request_span(request_id: &str, method: &Method, headers: &HeaderMap) -> Span {
    #[cfg(feature = "otel")]
    {
        otel::request_span(request_id, method, headers)
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (method, headers);
        tracing::info_span!(target: "smartgate::proxy", "request", request_id)
    }
}

/// Puts the finished request's outcome on the current (request) span when exporting.
#[inline]
pub fn finish(rec: &Record) {
    #[cfg(feature = "otel")]
    otel::finish(rec);
    #[cfg(not(feature = "otel"))]
    let _ = rec;
}

/// Sets the upstream request's `traceparent`/`tracestate` to the current span's when
/// exporting: the caller's were copied with the other end-to-end headers and are replaced,
/// never doubled. Without export they pass through untouched, as any other header.
#[inline]
pub fn inject(headers: &mut HeaderMap) {
    #[cfg(feature = "otel")]
    otel::inject(headers);
    #[cfg(not(feature = "otel"))]
    let _ = headers;
}

/// What [`init`] leaves running; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued (bounded wait). It blocks, and the export runs on the
    /// runtime given to [`init`]: call it after the server has drained, from a thread other
    /// than the one driving that runtime (`spawn_blocking` on it), never after it is gone.
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown_with_timeout(std::time::Duration::from_secs(5))
        {
            tracing::warn!(error = %e, "OpenTelemetry: spans not flushed at shutdown");
        }
    }
}

/// JSON logs on stderr (stdout carries the audit trail by default), `RUST_LOG` filtering;
/// with the `otel` feature and an endpoint, also the span exporter on `runtime`.
pub fn init(
    cfg: Option<&TelemetryConfig>,
    runtime: &tokio::runtime::Handle,
) -> Result<Telemetry, String> {
    #[cfg(feature = "otel")]
    {
        let env = |k: &str| std::env::var(k).ok();
        match otel::resolve(cfg, &env)? {
            Some(export) => otel::init(&export, runtime),
            None => {
                json_logs();
                Ok(Telemetry { provider: None })
            }
        }
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (cfg, runtime);
        json_logs();
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
                tracing::warn!(
                    "{var} is set, but this smartgate was built without the `otel` feature: no traces are exported"
                );
            }
        }
        Ok(Telemetry {})
    }
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn json_logs() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(env_filter())
        .with_writer(std::io::stderr)
        .try_init();
}

/// The exporter proper (feature `otel`).
#[cfg(feature = "otel")]
pub mod otel {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http::header::HeaderName;
    use http::{HeaderMap, Method};
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{Status, TracerProvider as _};
    use opentelemetry_http::{HeaderExtractor, HeaderInjector};
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use tracing::Span;
    use tracing::field::Empty;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    use super::{NO_GRPC, OtlpProtocol, Telemetry, TelemetryConfig, check_url};
    use crate::audit::Record;
    use crate::net;

    /// Set once an exporter is installed: everything per request checks it first.
    static EXPORTING: AtomicBool = AtomicBool::new(false);

    /// Whether spans are exported.
    pub fn exporting() -> bool {
        EXPORTING.load(Ordering::Relaxed)
    }

    /// Where and how spans go, resolved from `telemetry:` and the `OTEL_*` variables.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Export {
        /// The full traces URL (`…/v1/traces`).
        pub traces_endpoint: String,
        /// The encoding.
        pub protocol: OtlpProtocol,
        /// `service.name`.
        pub service_name: String,
        /// Ratio sampler (parent-based); `None`: the SDK's default / `OTEL_TRACES_SAMPLER`.
        pub sample_ratio: Option<f64>,
        /// Per export request (`OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`, milliseconds).
        pub timeout: Duration,
        /// Extra CA for an `https://` collector (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
        pub ca_file: Option<PathBuf>,
        /// Client certificate (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`).
        pub client_cert_file: Option<PathBuf>,
        /// Its key (`OTEL_EXPORTER_OTLP_CLIENT_KEY`).
        pub client_key_file: Option<PathBuf>,
    }

    fn traces_url(base: &str) -> String {
        format!("{}/v1/traces", base.trim_end_matches('/'))
    }

    /// The export settings, or `None` when nothing asks for export (no endpoint,
    /// `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`). `env` reads a variable; empty
    /// values count as unset, as the OpenTelemetry specification says.
    pub fn resolve(
        cfg: Option<&TelemetryConfig>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Export>, String> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let default = TelemetryConfig::default();
        let cfg = cfg.unwrap_or(&default);
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match env("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other}: smartgate exports traces with `otlp` only (or `none`)"
                ));
            }
        }
        let endpoint = match (
            &cfg.otlp_endpoint,
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            env("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(base), _, _) => traces_url(base),
            (None, Some(full), _) => {
                check_url(&full).map_err(|e| format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {e}"))?;
                full
            }
            (None, None, Some(base)) => {
                check_url(&base).map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
                traces_url(&base)
            }
            (None, None, None) => return Ok(None),
        };
        let protocol = match cfg.protocol {
            Some(p) => p,
            None => match [
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ]
            .into_iter()
            .find_map(|k| env(k).map(|v| (k, v)))
            {
                None => OtlpProtocol::HttpProtobuf,
                Some((k, v)) => OtlpProtocol::parse(&v)
                    .ok_or_else(|| format!("{k}={v}: expected http/protobuf or http/json"))?,
            },
        };
        if protocol == OtlpProtocol::Grpc {
            return Err(NO_GRPC.into());
        }
        let timeout = match [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ]
        .into_iter()
        .find_map(|k| env(k).map(|v| (k, v)))
        {
            None => Duration::from_secs(10),
            Some((k, v)) => v
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{k}={v}: expected milliseconds"))?,
        };
        Ok(Some(Export {
            traces_endpoint: endpoint,
            protocol,
            service_name: cfg
                .service_name
                .clone()
                .or_else(|| env("OTEL_SERVICE_NAME"))
                .unwrap_or_else(|| "smartgate".into()),
            sample_ratio: cfg.sample_ratio,
            timeout,
            ca_file: env("OTEL_EXPORTER_OTLP_CERTIFICATE").map(PathBuf::from),
            client_cert_file: env("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE").map(PathBuf::from),
            client_key_file: env("OTEL_EXPORTER_OTLP_CLIENT_KEY").map(PathBuf::from),
        }))
    }

    /// The exporter's HTTP client: smartgate's own hyper/rustls client (aws-lc-rs), so the
    /// feature brings no second TLS stack. The SDK exports from its own thread, which has no
    /// tokio runtime, so each call is run on ours.
    #[derive(Debug)]
    struct OtlpClient {
        client: net::HttpClient,
        runtime: tokio::runtime::Handle,
        timeout: Duration,
    }

    #[async_trait::async_trait]
    impl opentelemetry_http::HttpClient for OtlpClient {
        async fn send_bytes(
            &self,
            request: http::Request<Bytes>,
        ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
            let (client, timeout) = (self.client.clone(), self.timeout);
            let request = request.map(crate::body::full);
            let call = async move { net::fetch(&client, request, timeout, 1024 * 1024).await };
            Ok(self.runtime.spawn(call).await??)
        }
    }

    /// Installs JSON logs plus the span exporter and turns export on.
    pub(super) fn init(
        export: &Export,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Telemetry, String> {
        let client = net::client(&net::ClientOptions {
            extra_ca_file: export.ca_file.clone(),
            client_cert_file: export.client_cert_file.clone(),
            client_key_file: export.client_key_file.clone(),
            ..net::ClientOptions::default()
        })
        .map_err(|e| format!("OTLP client: {e}"))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OtlpClient {
                client,
                runtime: runtime.clone(),
                timeout: export.timeout,
            })
            .with_endpoint(export.traces_endpoint.clone())
            .with_protocol(match export.protocol {
                OtlpProtocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
                _ => opentelemetry_otlp::Protocol::HttpBinary,
            })
            .with_timeout(export.timeout)
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        let resource = Resource::builder()
            .with_service_name(export.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let mut builder = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource);
        if let Some(ratio) = export.sample_ratio {
            builder = builder.with_sampler(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(ratio),
            )));
        }
        let provider = builder.build();
        // Only the request span goes out: no log events (they may say more than the
        // attributes do), and RUST_LOG, which is for the logs, cannot switch traces off.
        let spans = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("smartgate"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.name() == "request" && m.target() == "smartgate::proxy"
            }));
        let logs = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(super::env_filter());
        tracing_subscriber::registry()
            .with(logs)
            .with(spans)
            .try_init()
            .map_err(|e| format!("logging: {e}"))?;
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!(
            endpoint = %export.traces_endpoint,
            protocol = export.protocol.name(),
            service = %export.service_name,
            "OpenTelemetry trace export on"
        );
        Ok(Telemetry {
            provider: Some(provider),
        })
    }

    /// See [`super::request_span`]. `otel.kind` and `otel.name` must be set before the span
    /// starts (its first poll), so they are fields; the rest are plain attributes.
    pub(super) fn request_span(request_id: &str, method: &Method, headers: &HeaderMap) -> Span {
        let span = tracing::info_span!(
            target: "smartgate::proxy",
            "request",
            request_id,
            otel.kind = Empty,
            otel.name = Empty
        );
        if exporting() {
            let method = method_name(method);
            span.record("otel.kind", "server");
            span.record("otel.name", method);
            let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
            let _ = span.set_parent(parent);
            span.set_attribute("http.request.method", method);
        }
        span
    }

    /// The method as the HTTP semantic conventions name it (`_OTHER` for the rest): the
    /// attribute set stays closed.
    fn method_name(m: &Method) -> &'static str {
        match *m {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            Method::OPTIONS => "OPTIONS",
            _ => "_OTHER",
        }
    }

    pub(super) fn finish(rec: &Record) {
        if !exporting() {
            return;
        }
        let span = Span::current();
        span.set_attribute("http.response.status_code", i64::from(rec.status));
        span.set_attribute("smartgate.decision", rec.decision);
        span.set_attribute("smartgate.reason", rec.reason.clone());
        if let Some(i) = rec.interaction {
            span.set_attribute("smartgate.interaction", i);
        }
        if let Some(t) = rec.resource_type {
            span.set_attribute("smartgate.resource_type", t);
        }
        if let Some(s) = rec.upstream_status {
            span.set_attribute("smartgate.upstream.status_code", i64::from(s));
        }
        // Server spans are errors on 5xx only (HTTP semantic conventions).
        if rec.status >= 500 {
            span.set_status(Status::error(rec.reason.clone()));
        }
    }

    pub(super) fn inject(headers: &mut HeaderMap) {
        if !exporting() {
            return;
        }
        headers.remove(HeaderName::from_static("traceparent"));
        headers.remove(HeaderName::from_static("tracestate"));
        let cx = Span::current().context();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}
