//! The request pipeline: one method per phase, called in order by [`Gateway::handle`].
//!
//! ```text
//! framing ─► route ─► public endpoints (metadata, smart-configuration, CORS preflight)
//!   └─► authenticate ─► classify ─► authorize ─► write checks ─► forward ─► filter
//!                                                                       └─► audit + metrics
//! ```
//!
//! Each phase either hands its typed result to the next or ends the request with a FHIR
//! OperationOutcome; nothing later can widen what an earlier phase decided. The pure
//! decisions live in `classify`, `authorize` and `filter`; this module does the I/O
//! around them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use tracing::Instrument;

use crate::audit::{AuditLog, Record};
use crate::authenticate::{Authenticator, Grant};
use crate::authorize::{Decision, Outcome, Plan, Reason, ResponseRule, View};
use crate::body::{self, ProxyBody};
use crate::classify::{self, ClassifyError, FhirRequest, Interaction, RawRequest};
use crate::config::BaseUrl;
use crate::cors::Cors;
use crate::discovery::Discovery;
use crate::filter::{self, FilterContext, FilterError, Visibility};
use crate::forward::{self, ClientInfo, Upstream, UpstreamBody, UpstreamError};
use crate::framing::{self, Framing, FramingError};
use crate::listen::{Handler, TlsConnection};
use crate::metadata::TtlCache;
use crate::metrics::{Metrics, RequestLabels, ResultLabels, status_class};
use crate::outcome;
use crate::paging::PagingKey;
use crate::policy::{PolicyHandle, PolicySet, ResponsePass};
use crate::scope::Letter;
use crate::telemetry;
use crate::write::{self, Judge, WriteDenied};

mod bulk;
mod bundle;
mod public;

/// Everything the pipeline needs, built once at start-up and shared by all requests.
pub struct Gateway {
    /// The public FHIR base (`public_base_url`).
    pub public: BaseUrl,
    /// The upstream FHIR server.
    pub upstream: Arc<Upstream>,
    /// Token checking.
    pub auth: Arc<Authenticator>,
    /// Policies (hot-reloaded), with the authorization rules (operation allow-list,
    /// non-member types) they carry.
    pub policy: Arc<PolicyHandle>,
    /// Response-filter facts.
    pub filter: FilterContext,
    /// Binds paging links to the token that started a search.
    pub paging: PagingKey,
    /// The audit trail.
    pub audit: Arc<AuditLog>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The SMART configuration document (None when `smart:` is not configured).
    pub discovery: Option<Discovery>,
    /// Cross-origin policy (preflights and response headers).
    pub cors: Cors,
    /// The rewritten CapabilityStatement, reused for `metadata.cache_ttl`.
    pub metadata_cache: TtlCache,
    /// Prune the CapabilityStatement of what the proxy never allows (`metadata.prune`).
    pub prune_metadata: bool,
    /// Largest body read into memory for checks or filtering.
    pub max_inspect_bytes: usize,
    /// Largest request body forwarded.
    pub max_body_bytes: u64,
    /// Send narrowed searches with `Prefer: handling=strict` (`upstream.strict_narrowing`).
    pub strict_narrowing: bool,
}

/// What a phase that ends the request hands back: the response and the audit facts.
struct Early {
    status: StatusCode,
    issue: &'static str,
    message: String,
    decision: &'static str,
    reason: String,
    www_authenticate: Option<String>,
    /// Answer with `Connection: close`: the rest of the connection's bytes cannot be trusted.
    close: bool,
}

impl Early {
    fn new(status: StatusCode, issue: &'static str, message: impl Into<String>) -> Self {
        Early {
            status,
            issue,
            message: message.into(),
            decision: "deny",
            reason: String::new(),
            www_authenticate: None,
            close: false,
        }
    }

    fn decision(mut self, decision: &'static str, reason: impl Into<String>) -> Self {
        self.decision = decision;
        self.reason = reason.into();
        self
    }
}

type Phase<T> = Result<T, Early>;

/// The path of a request relative to the FHIR base.
enum Route<'a> {
    /// Not under the public base at all.
    Outside,
    /// `[base]/…`, raw (still percent-encoded), without the leading `/`.
    Fhir(&'a str),
}

impl Handler for Gateway {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let request_id = request_id(req.headers());
        let origin = req.headers().get(header::ORIGIN).cloned();
        let span = telemetry::request_span(
            request_id.to_str().unwrap_or_default(),
            req.method(),
            req.headers(),
        );
        let mut rec = Record {
            time: now_rfc3339(),
            request_id: request_id.to_str().unwrap_or_default().to_owned(),
            method: req.method().to_string(),
            path: self
                .audit
                .loggable_path(req.uri().path(), req.uri().query()),
            ..Record::default()
        };
        let resp = async {
            let mut resp = match self.run(req, peer, &request_id, &mut rec).await {
                Ok(resp) => resp,
                Err(early) => self.early_response(early, &mut rec),
            };
            self.cors.apply(origin.as_ref(), resp.headers_mut());
            resp.headers_mut()
                .insert(header::HeaderName::from_static("x-request-id"), request_id);
            rec.status = resp.status().as_u16();
            telemetry::finish(&rec);
            resp
        }
        .instrument(span)
        .await;
        let elapsed = started.elapsed();
        rec.latency_ms = elapsed.as_secs_f64() * 1000.0;
        self.metrics.latency.observe(elapsed.as_secs_f64());
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                decision: rec.decision,
                interaction: rec.interaction.unwrap_or("none"),
                resource_type: rec.resource_type.unwrap_or("none"),
                status_class: status_class(rec.status),
            })
            .inc();
        self.metrics.in_flight.dec();
        self.audit.write(&rec);
        resp
    }
}

impl Gateway {
    fn early_response(&self, early: Early, rec: &mut Record) -> Response<ProxyBody> {
        rec.decision = early.decision;
        rec.reason = early.reason;
        if rec.detail.is_empty() {
            rec.detail = early.message.clone();
        }
        let mut resp = outcome::response(early.status, early.issue, &early.message);
        // RFC 6750: every 403 the proxy decides names the insufficient scope, whichever
        // phase (authorize, write checks, transaction entries) refused.
        let www_authenticate = early.www_authenticate.or_else(|| {
            (early.status == StatusCode::FORBIDDEN).then(|| {
                format!(
                    "Bearer realm=\"{}\", error=\"insufficient_scope\"",
                    self.auth.realm()
                )
            })
        });
        if let Some(w) = www_authenticate.and_then(|w| HeaderValue::from_str(&w).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, w);
        }
        if early.close {
            // hyper closes an HTTP/1 connection after this response (and drops the header
            // on HTTP/2, where it is illegal).
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// Runs the phases in order.
    async fn run(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        request_id: &HeaderValue,
        rec: &mut Record,
    ) -> Phase<Response<ProxyBody>> {
        let (parts, incoming) = req.into_parts();
        // Phase 0: where the body ends must be beyond doubt before anything else is read.
        framing::check(
            parts.version,
            &parts.headers,
            parts.extensions.get::<Framing>(),
        )
        .map_err(|e| framing_error(e, rec))?;
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().map(str::to_owned);
        let rel = match self.route(&path) {
            Route::Outside => {
                return Err(Early::new(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "not a FHIR endpoint of this server",
                )
                .decision("invalid", "outside-base"));
            }
            Route::Fhir(rel) => rel.to_owned(),
        };
        let client = ClientInfo {
            peer,
            proto: if parts.extensions.get::<TlsConnection>().is_some() {
                "https"
            } else {
                "http"
            },
            host: parts.headers.get(header::HOST).cloned(),
        };

        if let Some(resp) = self
            .public_endpoint(
                &parts.method,
                &rel,
                &parts.headers,
                &client,
                request_id,
                rec,
            )
            .await?
        {
            return Ok(resp);
        }

        let grant = self
            .authenticate(&parts.headers, query.as_deref(), rec)
            .await?;
        // A body announced larger than the limit is refused before anything is read or sent
        // (ambiguous or malformed framing was refused in phase 0).
        if http_body::Body::size_hint(&incoming)
            .exact()
            .is_some_and(|n| n > self.max_body_bytes)
        {
            return Err(body_too_large());
        }
        // Policies (one version for the whole request): ceilings narrow the grant first.
        let policies = self.policy.current();
        let grant = policies.ceiling(grant, &mut rec.policy);
        rec.scopes = grant.scopes.data().iter().map(|s| s.raw.clone()).collect();
        let pass = policies.response_pass(&grant);
        let mut body = ReqBody::Streaming(incoming);

        // Bulk Data: signed status/file URLs (not in classify's URL space) and `$export`
        // kick-offs, judged and answered in `bulk.rs`.
        if let Some(resp) = self
            .bulk(
                &parts,
                &rel,
                query.as_deref(),
                &grant,
                &policies,
                &mut body,
                &client,
                request_id,
                rec,
            )
            .await?
        {
            return Ok(resp);
        }

        // POST to the base (batch/transaction) and POST …/_search need their body to be
        // classified; every other body keeps streaming unless a write check needs it.
        let needs_body = parts.method == Method::POST
            && (rel.is_empty() || rel == "_search" || rel.ends_with("/_search"));
        let bytes = if needs_body {
            Some(body.bytes(self.max_inspect_bytes).await?)
        } else {
            None
        };
        let raw = RawRequest {
            method: &parts.method,
            path: &rel,
            query: query.as_deref(),
            headers: &parts.headers,
            body: bytes.as_deref(),
        };
        let fhir = classify::classify(&raw).map_err(|e| classify_error(e, rec))?;
        rec.interaction = Some(fhir.interaction.name());
        rec.resource_type = fhir.resource_type.map(|t| t.name());

        if matches!(
            fhir.interaction,
            Interaction::Batch | Interaction::Transaction
        ) {
            let bytes = bytes.unwrap_or_default();
            return self
                .bundle(
                    &parts.headers,
                    fhir.interaction,
                    &bytes,
                    &grant,
                    (&policies, pass.as_ref()),
                    &client,
                    request_id,
                    rec,
                )
                .await;
        }

        // A signed paging link continues a search this token already had authorized.
        if let Some(view) = self.paging.verify(&rel, query.as_deref(), &grant) {
            rec.decision = "filter";
            rec.reason = "paging-link".into();
            let target = self.paging.strip(&rel, query.as_deref());
            let up = self
                .upstream
                .request(
                    Method::GET,
                    &target,
                    &filter_headers(&parts.headers),
                    &client,
                    request_id,
                    body::empty(),
                )
                .map_err(upstream_error)?;
            // The search this page continues was narrowed when it ran under a patient
            // view; the page link itself is the server's, so it goes without `Prefer`.
            let narrowed = view.patient.is_some();
            return self
                .respond(
                    up,
                    &ResponseRule::Filter(view),
                    None,
                    false,
                    narrowed,
                    &grant,
                    pass.as_ref(),
                    rec,
                )
                .await;
        }

        let decision = policies.decide(&grant, &fhir, &mut rec.policy);
        let mut plan = self.decided(decision, rec)?;
        let inspected = inspected(&plan.response, pass.as_ref());
        if inspected && wants_xml(&parts.headers, &plan.request) {
            return Err(Early::new(
                StatusCode::NOT_ACCEPTABLE,
                "not-supported",
                "this response must be checked before it leaves, which needs JSON: ask for application/fhir+json",
            )
            .decision("deny", "format"));
        }
        // Phase 4: write checks (the body they judge is read first).
        let new_body = match plan.body_check {
            Some(_) => Some(body.bytes(self.max_inspect_bytes).await?),
            None => None,
        };
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let (checked, reason) = self
            .write_phase(
                &mut plan,
                &fhir,
                &grant,
                &policies,
                new_body,
                content_type,
                &client,
                request_id,
            )
            .await?;
        if let Some(reason) = reason {
            rec.reason = reason.code.to_owned();
            rec.scope = reason.scope;
        }
        self.forward_plan(
            &parts.method,
            &parts.headers,
            plan,
            checked,
            body,
            &grant,
            pass.as_ref(),
            &client,
            request_id,
            rec,
        )
        .await
    }

    /// Phase 0: which part of the URL space the request is in.
    fn route<'a>(&self, path: &'a str) -> Route<'a> {
        let base = self.public.path.as_str();
        match path.strip_prefix(base) {
            Some("") | Some("/") => Route::Fhir(""),
            Some(rest) if rest.starts_with('/') => Route::Fhir(&rest[1..]),
            _ => Route::Outside,
        }
    }

    /// Phase 1: the bearer token ⇒ a [`Grant`], or 401.
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        rec: &mut Record,
    ) -> Phase<Arc<Grant>> {
        let result = self.auth.authenticate(headers, query).await;
        let code = result.as_ref().map_or_else(|e| e.code(), |_| "ok");
        self.metrics
            .token_checks
            .get_or_create(&ResultLabels { result: code })
            .inc();
        match result {
            Ok(grant) => {
                rec.client_id = grant.client_id.clone();
                rec.sub = grant.subject.clone();
                rec.fhir_user = grant.fhir_user.clone();
                rec.patient = grant.patient.clone();
                Ok(grant)
            }
            Err(e) => {
                // 401 for a missing or bad token, 400 for a malformed request (RFC 6750 §3.1).
                let issue = if e.status() == StatusCode::BAD_REQUEST {
                    "invalid"
                } else {
                    "login"
                };
                let mut early = Early::new(e.status(), issue, e.description())
                    .decision("unauthenticated", e.code());
                early.www_authenticate = Some(e.www_authenticate(self.auth.realm()));
                Err(early)
            }
        }
    }

    /// Phase 3 result: a plan to carry out, or the rejection as a response.
    fn decided(&self, decision: Decision, rec: &mut Record) -> Phase<Plan> {
        rec.reason = decision.reason.code.to_owned();
        rec.scope = decision.reason.scope.clone();
        rec.detail = decision.reason.detail.clone();
        rec.decision = crate::policy::verdict_name(&decision);
        match decision.outcome {
            Outcome::Forward(plan) => Ok(plan),
            Outcome::Reject(r) => {
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
                Err(Early::new(status, r.issue, r.message).decision("deny", decision.reason.code))
            }
        }
    }

    /// Phase 4: the write checks of `plan`, if it has any ([`Self::check_write`]). Scopes
    /// are a union: a write its checks refuse under one context is decided again without
    /// that context's scopes, and goes ahead when another context grants it and its checks
    /// pass (`plan` is then replaced, and the new decision's reason returned); otherwise the
    /// first refusal stands.
    #[allow(clippy::too_many_arguments)]
    async fn write_phase(
        &self,
        plan: &mut Plan,
        fhir: &FhirRequest,
        grant: &Grant,
        policies: &PolicySet,
        new_body: Option<Bytes>,
        content_type: Option<&str>,
        client: &ClientInfo,
        request_id: &HeaderValue,
    ) -> Phase<(Option<CheckedWrite>, Option<Reason>)> {
        let mut tried: Option<Grant> = None;
        let mut first_refusal = None;
        let mut reason = None;
        while let Some(view) = plan.precheck.as_ref().or(plan.body_check.as_ref()) {
            let context = view.context;
            let g = tried.as_ref().unwrap_or(grant);
            match self
                .check_write(plan, new_body.clone(), content_type, g, client, request_id)
                .await
            {
                Ok(c) => return Ok((Some(c), reason)),
                Err(refused) if refused.decision == "deny" => {
                    let refusal = first_refusal.take().unwrap_or(refused);
                    let mut rest = g.clone();
                    rest.scopes.retain(|s| s.context != context);
                    let mut note = crate::policy::PolicyNote::default();
                    let again = policies.decide(&rest, fhir, &mut note);
                    let Outcome::Forward(next) = again.outcome else {
                        return Err(refusal);
                    };
                    first_refusal = Some(refusal);
                    *plan = next;
                    reason = Some(again.reason);
                    tried = Some(rest);
                }
                Err(e) => return Err(e),
            }
        }
        Ok((None, reason))
    }

    /// Phases 5–6 for one planned request (its write, if checked, in `checked`): forward,
    /// filter.
    #[allow(clippy::too_many_arguments)]
    async fn forward_plan(
        &self,
        client_method: &Method,
        headers: &HeaderMap,
        plan: Plan,
        checked: Option<CheckedWrite>,
        body: ReqBody,
        grant: &Grant,
        pass: Option<&ResponsePass<'_>>,
        client: &ClientInfo,
        request_id: &HeaderValue,
        rec: &mut Record,
    ) -> Phase<Response<ProxyBody>> {
        // Policy labels and redaction read the response too: JSON, like the filter.
        let inspected = inspected(&plan.response, pass);
        let mut out_headers = match inspected {
            true => filter_headers(headers),
            false => headers.clone(),
        };
        // A checked write goes out as checked: pinned to the version judged, with the
        // body judged (the write-check phase read it).
        let (request, upstream_body) = match checked {
            Some(checked) => {
                if let Some(version) = &checked.if_match {
                    let etag = format!("W/\"{version}\"");
                    if let Some(sent) = headers.get(header::IF_MATCH)
                        && sent.as_bytes() != etag.as_bytes()
                    {
                        return Err(Early::new(
                            StatusCode::PRECONDITION_FAILED,
                            "conflict",
                            "If-Match does not match the current version",
                        )
                        .decision("deny", "version-conflict"));
                    }
                    if let Ok(v) = HeaderValue::from_str(&etag) {
                        out_headers.insert(header::IF_MATCH, v);
                    }
                }
                let upstream_body = match checked.body {
                    Some(b) => body::full(b),
                    None => body::empty(),
                };
                (checked.request, upstream_body)
            }
            None => (
                plan.request.clone(),
                body.into_proxy_body(self.max_body_bytes),
            ),
        };
        if let Some(criteria) = request.if_none_exist()
            && let Ok(v) = HeaderValue::from_str(&criteria)
        {
            out_headers.insert(header::HeaderName::from_static("if-none-exist"), v);
        }
        let narrowed = narrowed_search(&plan);
        if narrowed && self.strict_narrowing {
            forward::prefer_strict(&mut out_headers);
        }
        let method = request.upstream_method(client_method);
        let target = request.upstream_target();
        let up = self
            .upstream
            .request(
                method,
                &target,
                &out_headers,
                client,
                request_id,
                upstream_body,
            )
            .map_err(upstream_error)?;
        // An instance history with no visible version is some other patient's resource:
        // it must look like one that does not exist (upstream: 404), not an empty Bundle.
        let empty_is_missing = plan.request.interaction == Interaction::HistoryInstance;
        self.respond(
            up,
            &plan.response,
            plan.request
                .resource_type
                .filter(|_| single_resource(&plan.request))
                .map(Some)
                .unwrap_or(None),
            empty_is_missing,
            narrowed,
            grant,
            pass,
            rec,
        )
        .await
    }

    /// Phase 4, write checks (see [`crate::write`]): resolves what a checked write
    /// changes, judges the current version and the new content, and returns the write to
    /// send: an instance write pinned to the version judged, or a create.
    ///
    /// `new_body` is the request body (create, update, patch) already read; `content_type`
    /// says whether a patch is JSON Patch.
    async fn check_write(
        &self,
        plan: &Plan,
        new_body: Option<Bytes>,
        content_type: Option<&str>,
        grant: &Grant,
        client: &ClientInfo,
        request_id: &HeaderValue,
    ) -> Phase<CheckedWrite> {
        let req = &plan.request;
        let Some(rtype) = req.resource_type else {
            return Err(write_denied(WriteDenied::WrongType));
        };
        let mut out = CheckedWrite {
            request: req.clone(),
            if_match: None,
            body: None,
        };
        let mut current = None;
        if let Some(view) = &plan.precheck {
            let judge = Judge {
                view,
                grant,
                ctx: &self.filter,
            };
            let found = match req.interaction {
                Interaction::ConditionalUpdate
                | Interaction::ConditionalPatch
                | Interaction::ConditionalDelete => {
                    self.conditional_match(req, client, request_id).await?
                }
                _ => match req.id.as_deref() {
                    Some(id) => self.read_current(rtype, id, client, request_id).await?,
                    None => None,
                },
            };
            match found {
                Some(resource) => {
                    let covered = judge.current(&resource, rtype).map_err(write_denied)?;
                    let Some(id) = resource.get("id").and_then(Value::as_str) else {
                        return Err(bad_upstream_body());
                    };
                    out.request = req.on_instance(id);
                    out.if_match = write::version_of(&resource).map(str::to_owned);
                    current = Some((resource, covered));
                }
                // Update-as-create: judged on the new content alone, by the `u` scopes.
                None if req.interaction == Interaction::Update => {}
                // No match: a conditional update creates, and must not update anything
                // that appears meanwhile (`If-None-Exist` with the same criteria).
                None if req.interaction == Interaction::ConditionalUpdate => {
                    out.request = req.as_conditional_create();
                }
                None => return Err(write_denied(WriteDenied::CurrentHidden)),
            }
        }
        // A plan whose new content must be judged never goes out unjudged, even if a
        // caller failed to read the body it needs.
        if plan.body_check.is_some() && new_body.is_none() {
            return Err(write_denied(WriteDenied::NotJson));
        }
        if let (Some(view), Some(bytes)) = (&plan.body_check, new_body) {
            let judge = Judge {
                view,
                grant,
                ctx: &self.filter,
            };
            let patch = matches!(
                req.interaction,
                Interaction::Patch | Interaction::ConditionalPatch
            );
            let resource = match (&current, patch) {
                (Some((cur, _)), true) => {
                    write::apply_patch(cur.clone(), &bytes, content_type).map_err(write_denied)?
                }
                (None, true) => return Err(write_denied(WriteDenied::CurrentHidden)),
                (_, false) => write::parse_resource(&bytes).map_err(write_denied)?,
            };
            // A conditional update lands on its match: a body without an id gets that id.
            let mut resource = resource;
            let give_id =
                req.interaction == Interaction::ConditionalUpdate && resource.get("id").is_none();
            if let (true, Some(id), Some(obj)) =
                (give_id, out.request.id.clone(), resource.as_object_mut())
            {
                obj.insert("id".into(), Value::String(id));
            }
            judge
                .new_content(&resource, &out.request, current.as_ref().map(|(_, c)| c))
                .map_err(write_denied)?;
            out.body = Some(match (patch, give_id) {
                (true, _) => bytes,
                (false, true) => {
                    Bytes::from(serde_json::to_vec(&resource).map_err(|_| bad_upstream_body())?)
                }
                (false, false) => bytes,
            });
        }
        Ok(out)
    }

    /// The current version of `rtype/id` as the FHIR server has it (`None`: 404 or 410).
    async fn read_current(
        &self,
        rtype: crate::fhir::ResourceType,
        id: &str,
        client: &ClientInfo,
        request_id: &HeaderValue,
    ) -> Phase<Option<Value>> {
        let mut target = String::with_capacity(rtype.name().len() + 1 + id.len());
        target.push_str(rtype.name());
        target.push('/');
        target.push_str(id);
        let bytes = self.precheck_read(&target, client, request_id).await?;
        bytes
            .map(|b| serde_json::from_slice::<Value>(&b).map_err(|_| bad_upstream_body()))
            .transpose()
    }

    /// The one resource a conditional update/patch/delete's (narrowed) criteria select,
    /// `None` when they select nothing; 412 when they select more than one.
    async fn conditional_match(
        &self,
        req: &FhirRequest,
        client: &ClientInfo,
        request_id: &HeaderValue,
    ) -> Phase<Option<Value>> {
        let Some(bytes) = self
            .precheck_read(&req.upstream_target(), client, request_id)
            .await?
        else {
            return Ok(None);
        };
        let searchset: Value = serde_json::from_slice(&bytes).map_err(|_| bad_upstream_body())?;
        write::single_match(&searchset)
            .map(|m| m.cloned())
            .map_err(write_denied)
    }

    /// A GET the proxy makes for its own write checks: the body of a 2xx, `None` for
    /// 404/410, 400 for criteria the server refuses, 502 for anything else.
    async fn precheck_read(
        &self,
        target: &str,
        client: &ClientInfo,
        request_id: &HeaderValue,
    ) -> Phase<Option<Bytes>> {
        let up = self
            .upstream
            .request(
                Method::GET,
                target,
                &json_headers(),
                client,
                request_id,
                body::empty(),
            )
            .map_err(upstream_error)?;
        let resp = self.upstream.send(up).await.map_err(upstream_error)?;
        match resp.status() {
            StatusCode::NOT_FOUND | StatusCode::GONE => return Ok(None),
            StatusCode::BAD_REQUEST => {
                return Err(Early::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "the FHIR server refused the conditional criteria",
                )
                .decision("invalid", "precheck-criteria"));
            }
            s if !s.is_success() => {
                return Err(Early::new(
                    StatusCode::BAD_GATEWAY,
                    "transient",
                    "could not read the current version upstream",
                )
                .decision("error", "precheck-upstream"));
            }
            _ => {}
        }
        collect(resp.into_body(), self.max_inspect_bytes)
            .await
            .map(Some)
            .map_err(|_| bad_upstream_body())
    }

    /// Phase 5: send upstream and judge what comes back. `narrowed`: the request is a
    /// narrowed search ([`narrowed_search`]), whose removed matches are counted as
    /// narrowing the upstream ignored.
    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &self,
        up: Request<ProxyBody>,
        rule: &ResponseRule,
        single: Option<crate::fhir::ResourceType>,
        empty_is_missing: bool,
        narrowed: bool,
        grant: &Grant,
        pass: Option<&ResponsePass<'_>>,
        rec: &mut Record,
    ) -> Phase<Response<ProxyBody>> {
        let resp = self.send(up, rec).await?;
        let (parts, incoming) = resp.into_parts();
        let mut headers = forward::response_headers(
            &parts.headers,
            &self.filter.upstream_base,
            &self.filter.public_base,
        );
        // Labels hide resources as "not found": a real 404 must then look the same.
        if let (ResponseRule::PassThrough, Some(_)) = (rule, pass)
            && matches!(parts.status, StatusCode::NOT_FOUND | StatusCode::GONE)
        {
            return Err(not_found());
        }
        if let (ResponseRule::PassThrough, Some(pass)) = (rule, pass)
            && parts.status.is_success()
        {
            let bytes = collect(incoming, self.max_inspect_bytes)
                .await
                .map_err(|_| bad_upstream_body())?;
            // HEAD and 204 answers have no body to judge.
            let body = match bytes.is_empty() {
                true => bytes,
                false => self.policy_pass(bytes, Some(pass), rec)?,
            };
            for h in [header::CONTENT_LENGTH, header::CONTENT_ENCODING] {
                headers.remove(h);
            }
            let mut out = Response::new(body::full(body));
            *out.status_mut() = parts.status;
            *out.headers_mut() = headers;
            return Ok(out);
        }
        if let ResponseRule::Written(view) = rule
            && parts.status.is_success()
        {
            return self
                .written(parts.status, headers, incoming, view, grant, pass, rec)
                .await;
        }
        let (ResponseRule::Filter(view) | ResponseRule::Written(view)) = rule else {
            let mut out = Response::new(body::stream(incoming));
            *out.status_mut() = parts.status;
            *out.headers_mut() = headers;
            return Ok(out);
        };
        // Under a filter, upstream errors are replaced by the proxy's own outcome so that
        // "not yours" and "does not exist" look the same and nothing upstream said leaks.
        if !parts.status.is_success() {
            return Err(match parts.status {
                StatusCode::NOT_FOUND | StatusCode::GONE => not_found(),
                s if s.is_client_error() => {
                    Early::new(s, "processing", "the FHIR server rejected the request")
                        .decision(rec.decision, rec.reason.clone())
                }
                StatusCode::NOT_IMPLEMENTED => Early::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "not-supported",
                    "the FHIR server does not support this interaction",
                )
                .decision("error", "upstream-not-implemented"),
                s => Early::new(
                    if s == StatusCode::GATEWAY_TIMEOUT {
                        s
                    } else {
                        StatusCode::BAD_GATEWAY
                    },
                    "transient",
                    "the FHIR server failed",
                )
                .decision("error", "upstream-status"),
            });
        }
        let bytes = collect(incoming, self.max_inspect_bytes)
            .await
            .map_err(|_| bad_upstream_body())?;
        if bytes.is_empty() {
            // 201/204 with no body: nothing can leak.
            let mut out = Response::new(body::empty());
            *out.status_mut() = parts.status;
            *out.headers_mut() = headers;
            return Ok(out);
        }
        let body = match single {
            Some(rtype) => {
                if !self
                    .visible_single(&bytes, Some(rtype), view, grant)
                    .await?
                {
                    self.metrics.filtered_entries.inc();
                    rec.removed = 1;
                    return Err(not_found());
                }
                bytes
            }
            None => {
                let sign = |url: &str| self.paging.sign(url, &self.public, view, grant);
                let filtered = filter::filter_bundle(&bytes, view, grant, &self.filter, &sign)
                    .map_err(|e| filter_error(e, rec))?;
                rec.removed = filtered.removed;
                self.metrics
                    .filtered_entries
                    .inc_by(filtered.removed as u64);
                if narrowed {
                    self.count_ignored_narrowing(view, &filtered.removed_matches);
                }
                if empty_is_missing && filtered.kept == 0 {
                    return Err(not_found());
                }
                Bytes::from(filtered.body)
            }
        };
        let body = self.policy_pass(body, pass, rec)?;
        for h in [
            header::CONTENT_LENGTH,
            header::CONTENT_ENCODING,
            header::ETAG,
            header::HeaderName::from_static("content-md5"),
        ] {
            if single.is_none() || h != header::ETAG {
                headers.remove(h);
            }
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(outcome::FHIR_JSON),
        );
        let mut out = Response::new(body::full(body));
        *out.status_mut() = parts.status;
        *out.headers_mut() = headers;
        Ok(out)
    }

    /// Counts matches of a narrowed search that the filter removed: under a patient view
    /// only types the search was pinned by (a Practitioner the non-member rule hides is
    /// not a narrowing the server ignored), otherwise (granular narrowing) all of them.
    fn count_ignored_narrowing(&self, view: &View, removed: &[crate::fhir::ResourceType]) {
        if removed.is_empty() {
            return;
        }
        let ignored: Vec<crate::fhir::ResourceType> = match view.patient {
            Some(_) => removed
                .iter()
                .copied()
                .filter(|t| crate::authorize::is_pinned_type(*t))
                .collect(),
            None => removed.to_vec(),
        };
        if !ignored.is_empty() {
            self.metrics.ignored_narrowing(&ignored);
        }
    }

    /// Phase 5 for a checked write that succeeded: status and headers (`Location`,
    /// `ETag`, `Last-Modified`) always; the stored resource only when the same context's
    /// read scopes show it, else an OperationOutcome saying the write succeeded. The write
    /// happened, so an answer the proxy cannot judge is withheld the same way, never
    /// turned into an error the app would retry.
    #[allow(clippy::too_many_arguments)]
    async fn written(
        &self,
        status: StatusCode,
        mut headers: HeaderMap,
        incoming: UpstreamBody,
        view: &View,
        grant: &Grant,
        pass: Option<&ResponsePass<'_>>,
        rec: &mut Record,
    ) -> Phase<Response<ProxyBody>> {
        let bytes = collect(incoming, self.max_inspect_bytes)
            .await
            .map_err(|_| bad_upstream_body())?;
        for h in [
            header::CONTENT_LENGTH,
            header::CONTENT_ENCODING,
            header::HeaderName::from_static("content-md5"),
        ] {
            headers.remove(h);
        }
        if bytes.is_empty() {
            let mut out = Response::new(body::empty());
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            return Ok(out);
        }
        let read = View {
            letter: Letter::R,
            ..view.clone()
        };
        let expected = rec.resource_type.and_then(crate::fhir::ResourceType::parse);
        let readable = matches!(
            filter::check_single(&bytes, expected, &read, grant, &self.filter),
            Ok(Visibility::Visible)
        );
        let passed = match readable {
            true => match pass {
                Some(pass) => pass.single(&bytes, &mut rec.policy).ok().flatten(),
                None => Some(bytes.to_vec()),
            },
            false => None,
        };
        let body = match passed {
            Some(b) => Bytes::from(b),
            None => {
                rec.removed = 1;
                outcome::information(WRITE_SUCCEEDED)
            }
        };
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(outcome::FHIR_JSON),
        );
        let mut out = Response::new(body::full(body));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }

    /// Policy labels and redaction on a body that may otherwise leave; a single resource
    /// hidden by a label is answered like one that does not exist.
    fn policy_pass(
        &self,
        body: Bytes,
        pass: Option<&ResponsePass<'_>>,
        rec: &mut Record,
    ) -> Phase<Bytes> {
        let Some(pass) = pass else {
            return Ok(body);
        };
        match pass.single(&body, &mut rec.policy) {
            Ok(Some(b)) => Ok(Bytes::from(b)),
            Ok(None) => Err(not_found().decision("deny", "policy-label")),
            Err(_) => Err(bad_upstream_body()),
        }
    }

    /// A GET of the proxy's own upstream (`target` relative to its base), sent like
    /// [`Self::send`].
    async fn get_upstream(
        &self,
        target: &str,
        headers: &HeaderMap,
        client: &ClientInfo,
        request_id: &HeaderValue,
        rec: &mut Record,
    ) -> Phase<Response<UpstreamBody>> {
        let up = self
            .upstream
            .request(
                Method::GET,
                target,
                headers,
                client,
                request_id,
                body::empty(),
            )
            .map_err(upstream_error)?;
        self.send(up, rec).await
    }

    /// Sends a request upstream, timing it and noting its status for the audit line.
    async fn send(
        &self,
        up: Request<ProxyBody>,
        rec: &mut Record,
    ) -> Phase<Response<UpstreamBody>> {
        let started = Instant::now();
        let resp = self.upstream.send(up).await.map_err(upstream_error)?;
        self.metrics
            .upstream_latency
            .observe(started.elapsed().as_secs_f64());
        rec.upstream_status = Some(resp.status().as_u16());
        Ok(resp)
    }

    /// Whether a single resource body may leave; a `Binary` is looked up through its
    /// `securityContext` (one level, never recursively).
    async fn visible_single(
        &self,
        bytes: &[u8],
        rtype: Option<crate::fhir::ResourceType>,
        view: &View,
        grant: &Grant,
    ) -> Phase<bool> {
        let verdict = filter::check_single(bytes, rtype, view, grant, &self.filter)
            .map_err(|_| bad_upstream_body())?;
        match verdict {
            Visibility::Visible => Ok(true),
            Visibility::Hidden(_) => Ok(false),
            Visibility::NeedsLookup(reference) => {
                let Ok(target) = classify::classify_entry(&Method::GET, &reference, None) else {
                    return Ok(false);
                };
                if target.interaction != Interaction::Read {
                    return Ok(false);
                }
                let up = self
                    .upstream
                    .request(
                        Method::GET,
                        &target.upstream_target(),
                        &json_headers(),
                        &internal_client(),
                        &HeaderValue::from_static("securitycontext"),
                        body::empty(),
                    )
                    .map_err(upstream_error)?;
                let resp = self.upstream.send(up).await.map_err(upstream_error)?;
                if !resp.status().is_success() {
                    return Ok(false);
                }
                let ctx = collect(resp.into_body(), self.max_inspect_bytes)
                    .await
                    .map_err(|_| bad_upstream_body())?;
                let ctx_view = View {
                    letter: Letter::R,
                    ..view.clone()
                };
                Ok(matches!(
                    filter::check_single(
                        &ctx,
                        target.resource_type,
                        &ctx_view,
                        grant,
                        &self.filter
                    ),
                    Ok(Visibility::Visible)
                ))
            }
        }
    }
}

/// A checked write, ready to send.
struct CheckedWrite {
    /// The write itself: a conditional update/patch/delete resolved to its one match, a
    /// conditional update without a match turned into a conditional create.
    request: FhirRequest,
    /// The version judged: the write is sent with `If-Match` on it.
    if_match: Option<String>,
    /// The body to send (the client's, or with the id of the match filled in).
    body: Option<Bytes>,
}

/// A write refused by its checks: the answer and the audit reason.
fn write_denied(e: WriteDenied) -> Early {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN);
    Early::new(status, e.issue(), e.message()).decision("deny", e.code())
}

/// The request body: still streaming, or already read for a check.
enum ReqBody {
    Streaming(Incoming),
    Read(Bytes),
    Taken,
}

impl ReqBody {
    /// Reads the whole body (at most `limit` bytes: 413 above).
    async fn bytes(&mut self, limit: usize) -> Phase<Bytes> {
        match std::mem::replace(self, ReqBody::Taken) {
            ReqBody::Streaming(incoming) => {
                let b = collect(incoming, limit).await.map_err(|_| {
                    Early::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too-costly",
                        format!("a body that must be checked may be at most {limit} bytes"),
                    )
                    .decision("invalid", "body-too-large")
                })?;
                *self = ReqBody::Read(b.clone());
                Ok(b)
            }
            ReqBody::Read(b) => {
                *self = ReqBody::Read(b.clone());
                Ok(b)
            }
            ReqBody::Taken => Ok(Bytes::new()),
        }
    }

    /// The body to send upstream, streaming when it was not read.
    fn into_proxy_body(self, limit: u64) -> ProxyBody {
        match self {
            ReqBody::Streaming(incoming) => body::stream(Limited::new(
                incoming,
                usize::try_from(limit).unwrap_or(usize::MAX),
            )),
            ReqBody::Read(b) => body::full(b),
            ReqBody::Taken => body::empty(),
        }
    }
}

async fn collect<B>(body: B, limit: usize) -> Result<Bytes, String>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BodyError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(e.to_string()),
    }
}

/// A search whose results the proxy confined (pinned to the launch patient, or narrowed
/// by granular scopes) and filters: the one kind of request whose upstream must not
/// ignore a parameter. Searches that stream through unfiltered are not narrowed.
fn narrowed_search(plan: &Plan) -> bool {
    let search = matches!(
        plan.request.interaction,
        Interaction::SearchType | Interaction::SearchSystem | Interaction::SearchCompartment
    );
    match &plan.response {
        ResponseRule::Filter(view) => search && (plan.narrowed || view.patient.is_some()),
        ResponseRule::PassThrough | ResponseRule::Written(_) => false,
    }
}

/// Reads, vreads, instance operations on one id: the response is one resource.
fn single_resource(req: &FhirRequest) -> bool {
    matches!(
        req.interaction,
        Interaction::Read
            | Interaction::Vread
            | Interaction::Update
            | Interaction::Patch
            | Interaction::Create
            | Interaction::ConditionalCreate
            | Interaction::ConditionalUpdate
            | Interaction::ConditionalPatch
    )
}

/// Whether the response will be read before it leaves (filter, write result, or the
/// client's label and redaction rules): it must then be asked for as JSON.
fn inspected(rule: &ResponseRule, pass: Option<&ResponsePass<'_>>) -> bool {
    pass.is_some() || matches!(rule, ResponseRule::Filter(_) | ResponseRule::Written(_))
}

/// Headers for a request whose response must be filtered: JSON, uncompressed.
fn filter_headers(inbound: &HeaderMap) -> HeaderMap {
    let mut h = inbound.clone();
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/fhir+json"),
    );
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    h.remove(header::RANGE);
    h.remove(header::IF_NONE_MATCH);
    h.remove(header::IF_MODIFIED_SINCE);
    h
}

fn json_headers() -> HeaderMap {
    filter_headers(&HeaderMap::new())
}

fn internal_client() -> ClientInfo {
    ClientInfo {
        peer: SocketAddr::from(([127, 0, 0, 1], 0)),
        proto: "http",
        host: None,
    }
}

/// Whether the client asked for XML (or anything but JSON) where the filter must read the
/// response: `_format` wins over `Accept`.
fn wants_xml(headers: &HeaderMap, req: &FhirRequest) -> bool {
    let json = |v: &str| {
        let v = v.to_ascii_lowercase();
        v.contains("json") || v.contains("*/*") || v.trim().is_empty()
    };
    if let Some(f) = req.params.iter().find(|p| p.name == "_format") {
        return !json(&f.value);
    }
    match headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        None => false,
        Some(a) => !json(a),
    }
}

fn classify_error(e: ClassifyError, rec: &mut Record) -> Early {
    rec.detail = e.to_string();
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let issue = match status {
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::UNSUPPORTED_MEDIA_TYPE => "not-supported",
        _ => "invalid",
    };
    Early::new(status, issue, e.to_string()).decision("invalid", "classify")
}

/// Ambiguous request framing: refused before anything is read or forwarded, and the
/// connection closed, since where the next request would start is in doubt.
fn framing_error(e: FramingError, rec: &mut Record) -> Early {
    rec.detail = e.to_string();
    let mut early = Early::new(
        StatusCode::BAD_REQUEST,
        "structure",
        format!("{e}; ambiguous HTTP/1 framing is refused"),
    )
    .decision("invalid", e.code());
    early.close = true;
    early
}

fn filter_error(e: FilterError, rec: &mut Record) -> Early {
    rec.detail = format!("{e:?}");
    bad_upstream_body()
}

fn bad_upstream_body() -> Early {
    Early::new(
        StatusCode::BAD_GATEWAY,
        "transient",
        "the FHIR server's response could not be checked, so it was withheld",
    )
    .decision("error", "upstream-body")
}

const NOT_FOUND_MESSAGE: &str = "resource not found";

const WRITE_SUCCEEDED: &str =
    "the write succeeded; this grant may not read the stored resource, so it is not returned";

/// The outcome that stands in for a written resource the grant may not read.
fn write_succeeded_outcome() -> Value {
    serde_json::from_slice(&outcome::information(WRITE_SUCCEEDED)).unwrap_or(Value::Null)
}

/// The one answer for "does not exist" and "not yours": same status, same body.
fn not_found() -> Early {
    Early::new(StatusCode::NOT_FOUND, "not-found", NOT_FOUND_MESSAGE)
        .decision("deny", "not-found-or-hidden")
}

fn upstream_error(e: UpstreamError) -> Early {
    match e {
        UpstreamError::Timeout => Early::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the FHIR server did not answer in time",
        )
        .decision("error", "upstream-timeout"),
        UpstreamError::Unavailable(why) => {
            tracing::warn!(error = %why, "upstream unavailable");
            Early::new(
                StatusCode::BAD_GATEWAY,
                "transient",
                "the FHIR server is unavailable",
            )
            .decision("error", "upstream-unavailable")
        }
        UpstreamError::BodyTooLarge => body_too_large(),
        UpstreamError::Credentials(why) => {
            tracing::warn!(error = %why, "no upstream credentials: request not forwarded");
            Early::new(
                StatusCode::BAD_GATEWAY,
                "transient",
                "the proxy could not obtain credentials for the FHIR server",
            )
            .decision("error", "upstream-credentials")
        }
        UpstreamError::BadRequest(why) => Early::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("cannot forward: {why}"),
        )
        .decision("invalid", "upstream-request"),
    }
}

fn body_too_large() -> Early {
    Early::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-costly",
        "the request body is larger than this server accepts",
    )
    .decision("invalid", "body-too-large")
}

/// `X-Request-Id` from the client when it is a sane token, else a fresh random one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get("x-request-id")
        && (1..=128).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    {
        return v.clone();
    }
    fresh_request_id()
}

thread_local! {
    /// This thread's random id prefix and request counter.
    static IDS: std::cell::Cell<(u64, u64)> = std::cell::Cell::new((random_u64(), 0));
}

fn random_u64() -> u64 {
    let mut raw = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut raw);
    u64::from_le_bytes(raw)
}

/// 32 hex digits: a random per-thread prefix and a counter, unique across threads and
/// replicas without a random draw (or a shared counter) per request.
fn fresh_request_id() -> HeaderValue {
    let (prefix, n) = IDS.with(|ids| {
        let (prefix, n) = ids.get();
        ids.set((prefix, n.wrapping_add(1)));
        (prefix, n)
    });
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let digits = prefix.to_be_bytes().into_iter().chain(n.to_be_bytes());
    for (pair, byte) in out.chunks_exact_mut(2).zip(digits) {
        pair.copy_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

/// Seconds since the epoch as RFC 3339 UTC (no calendar crate needed).
fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil-from-days (Howard Hinnant), valid for the Unix era.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("bad id\"x"));
        let (a, b) = (request_id(&h), request_id(&h));
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit), "{a:?}");
        assert_ne!(a, b, "every generated id is new");
        assert_eq!(
            a.as_bytes()[..16],
            b.as_bytes()[..16],
            "one prefix per thread"
        );
    }
}
