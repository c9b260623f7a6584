//! The unauthenticated endpoints: `metadata`, the SMART configuration and CORS preflight.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::Value;

use super::{Early, Gateway, Phase, collect, filter_headers, upstream_error};
use crate::audit::Record;
use crate::body::{self, ProxyBody};
use crate::classify::Interaction;
use crate::cors::Cors;
use crate::discovery::DiscoveryError;
use crate::forward::ClientInfo;
use crate::metadata::{self, Advertised};
use crate::metrics::ResultLabels;
use crate::outcome;

impl Gateway {
    /// Phase 0b: the only unauthenticated paths: `metadata`, the SMART configuration and
    /// CORS preflight. `Ok(None)` means "not public: go on".
    pub(super) async fn public_endpoint(
        &self,
        method: &Method,
        rel: &str,
        headers: &HeaderMap,
        client: &ClientInfo,
        request_id: &HeaderValue,
        rec: &mut Record,
    ) -> Phase<Option<Response<ProxyBody>>> {
        let get = method == Method::GET || method == Method::HEAD;
        if get && rel == ".well-known/smart-configuration" {
            rec.decision = "public";
            rec.reason = "smart-configuration".into();
            let doc = self.smart_configuration(client, request_id).await?;
            let mut resp = Response::new(body::full(doc));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(Some(resp));
        }
        if get && rel == "metadata" {
            rec.decision = "public";
            rec.reason = "capabilities".into();
            rec.interaction = Some(Interaction::Capabilities.name());
            let body = self.metadata(headers, client, request_id, rec).await?;
            let mut resp = Response::new(body::full(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(outcome::FHIR_JSON),
            );
            return Ok(Some(resp));
        }
        if Cors::is_preflight(method, headers) {
            rec.decision = "public";
            rec.reason = "cors-preflight".into();
            return Ok(Some(match self.cors.preflight(headers) {
                Ok(resp) => resp,
                Err(why) => {
                    rec.decision = "deny";
                    rec.reason = why.code().into();
                    why.response()
                }
            }));
        }
        Ok(None)
    }

    /// The SMART configuration document (`smart.mode` decides where it comes from).
    async fn smart_configuration(
        &self,
        client: &ClientInfo,
        request_id: &HeaderValue,
    ) -> Phase<Bytes> {
        let not_found = |what: &str| {
            Early::new(StatusCode::NOT_FOUND, "not-found", what.to_owned())
                .decision("public", "smart-configuration")
        };
        let Some(discovery) = &self.discovery else {
            return Err(not_found("SMART configuration is not configured"));
        };
        discovery
            .document(&self.upstream, client, request_id)
            .await
            .map_err(|e| match e {
                DiscoveryError::Upstream(e) => upstream_error(e),
                DiscoveryError::Status(StatusCode::NOT_FOUND) => {
                    not_found("the FHIR server publishes no SMART configuration")
                }
                DiscoveryError::Status(_) | DiscoveryError::NotJson => Early::new(
                    StatusCode::BAD_GATEWAY,
                    "transient",
                    "the FHIR server's SMART configuration is unavailable",
                )
                .decision("error", "upstream-body"),
            })
    }

    /// The upstream CapabilityStatement advertising SMART and the public base, from the
    /// cache when fresh. Only a 200 is cached; any other upstream status is an error.
    async fn metadata(
        &self,
        headers: &HeaderMap,
        client: &ClientInfo,
        request_id: &HeaderValue,
        rec: &mut Record,
    ) -> Phase<Bytes> {
        let cache = |result| {
            self.metrics
                .metadata_cache
                .get_or_create(&ResultLabels { result })
                .inc()
        };
        if let Some(body) = self.metadata_cache.get() {
            cache("hit");
            return Ok(body);
        }
        cache("miss");
        let resp = self
            .get_upstream(
                "metadata",
                &filter_headers(headers),
                client,
                request_id,
                rec,
            )
            .await?;
        let status = resp.status();
        let bytes = collect(resp.into_body(), self.max_inspect_bytes)
            .await
            .map_err(|e| {
                Early::new(
                    StatusCode::BAD_GATEWAY,
                    "transient",
                    format!("upstream metadata: {e}"),
                )
                .decision("error", "upstream-body")
            })?;
        if status != StatusCode::OK {
            return Err(Early::new(
                StatusCode::BAD_GATEWAY,
                "transient",
                "the FHIR server's CapabilityStatement is unavailable",
            )
            .decision("error", "upstream-status"));
        }
        let smart = match &self.discovery {
            Some(d) => d
                .document(&self.upstream, client, request_id)
                .await
                .ok()
                .and_then(|doc| {
                    serde_json::from_slice::<serde_json::Map<String, Value>>(&doc).ok()
                }),
            None => None,
        };
        let policies = self.policy.current();
        let advertised = Advertised {
            public_base: &self.public.full(),
            smart: smart.as_ref(),
            cors: self.cors.enabled(),
            prune: self.prune_metadata.then_some(&policies.rules),
        };
        let body = metadata::capability_statement(&bytes, &advertised).ok_or_else(|| {
            Early::new(
                StatusCode::BAD_GATEWAY,
                "transient",
                "upstream CapabilityStatement is not FHIR JSON",
            )
            .decision("error", "upstream-body")
        })?;
        let body = Bytes::from(body);
        self.metadata_cache.put(body.clone());
        Ok(body)
    }
}
