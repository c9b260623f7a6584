//! Bulk Data export (SMART Backend Services) through the proxy: the I/O flow. The
//! decisions are pure and live in [`crate::bulk`].
//!
//! ```text
//! kick-off  GET|POST [base]/$export, Patient/$export, Group/{id}/$export
//!   parameters judged (400) ─► _type narrowed to the grant ─► authorized like any
//!   operation (operation allow-list, system/ scopes on every exported type: 403)
//!   ─► _typeFilter judged like a search ─► sent upstream as GET with the judged query
//!   ─► 202, Content-Location moved onto the public base and signed for the owner
//! status    GET (poll) / DELETE (cancel) the signed status URL
//!   ─► 202 + Retry-After/X-Progress │ 200 manifest rewritten │ errors as OperationOutcome
//! files     GET a signed output/error URL ─► NDJSON streamed line by line, each line
//!   checked; a line that may not leave aborts the transfer
//! ```
//!
//! Signed URLs are recognised here, after authentication and before classification
//! (they are the upstream's URL space, which `classify` does not know). A URL signed for
//! another owner, or not signed right, is answered 404 with nothing of the job in it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::{Early, Gateway, Phase, ReqBody, classify_error, collect, not_found, upstream_error};
use crate::audit::{AuditLog, Record};
use crate::authenticate::Grant;
use crate::body::{self, BodyError, ProxyBody};
use crate::bulk::{self, Kind, LineError, LineSplitter, LineVerdict, Verified};
use crate::classify::{self, Interaction, OperationLevel, RawRequest};
use crate::forward::{ClientInfo, UpstreamBody};
use crate::outcome;
use crate::policy::{PolicyNote, PolicySet};

const NDJSON: &str = "application/fhir+ndjson";

impl Gateway {
    /// The bulk hook in `run()`: signed status and file URLs, and `$export` kick-offs.
    /// `Ok(None)`: not a bulk request, go on with the pipeline.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn bulk(
        &self,
        parts: &Parts,
        rel: &str,
        query: Option<&str>,
        grant: &Arc<Grant>,
        policies: &Arc<PolicySet>,
        body: &mut ReqBody,
        client: &ClientInfo,
        request_id: &HeaderValue,
        rec: &mut Record,
    ) -> Phase<Option<Response<ProxyBody>>> {
        let owner = bulk::owner(grant);
        match bulk::verify(&self.paging, rel, query, owner.as_ref()) {
            Verified::NotBulk => {}
            Verified::Refused => {
                rec.interaction = Some("bulk");
                return Err(not_found().decision("deny", "bulk-url-not-yours"));
            }
            Verified::Valid { kind, target } => {
                rec.interaction = Some("bulk");
                // `verify` only accepts a URL for an owner.
                let Some(owner) = owner else {
                    return Err(not_found().decision("deny", "bulk-url-not-yours"));
                };
                // The owner's client, but it must still be a backend (system/) token.
                if !bulk::is_backend(grant) {
                    return Err(Early::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "bulk export status and files need a Backend Services (system/) token",
                    )
                    .decision("deny", "bulk-not-system"));
                }
                let resp = match (&parts.method, kind) {
                    (&Method::GET, Kind::Status) => {
                        self.poll(&target, &owner, client, request_id, rec).await?
                    }
                    (&Method::DELETE, Kind::Status) => {
                        self.cancel(&target, client, request_id, rec).await?
                    }
                    (&Method::GET, Kind::File | Kind::ErrorFile) => {
                        self.download(kind, &target, grant, policies, client, request_id, rec)
                            .await?
                    }
                    _ => {
                        return Err(Early::new(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "not-supported",
                            "a bulk status URL takes GET or DELETE, a file URL GET",
                        )
                        .decision("invalid", "bulk-method"));
                    }
                };
                return Ok(Some(resp));
            }
        }
        if !is_kickoff(rel) || !matches!(parts.method, Method::GET | Method::POST) {
            return Ok(None);
        }
        self.kickoff(
            parts, rel, query, grant, policies, body, client, request_id, rec,
        )
        .await
        .map(Some)
    }

    /// `$export` kick-off: judge, narrow, authorize, forward, bind the status URL.
    #[allow(clippy::too_many_arguments)]
    async fn kickoff(
        &self,
        parts: &Parts,
        rel: &str,
        query: Option<&str>,
        grant: &Arc<Grant>,
        policies: &Arc<PolicySet>,
        body: &mut ReqBody,
        client: &ClientInfo,
        request_id: &HeaderValue,
        rec: &mut Record,
    ) -> Phase<Response<ProxyBody>> {
        rec.interaction = Some(Interaction::Operation.name());
        let mut pairs = bulk::parse_query(query).map_err(|e| kickoff_error(&e, rec))?;
        if parts.method == Method::POST {
            let bytes = body.bytes(self.max_inspect_bytes).await?;
            pairs.extend(bulk::parse_parameters(&bytes).map_err(|e| kickoff_error(&e, rec))?);
        }
        let mut params = bulk::judge(pairs).map_err(|e| kickoff_error(&e, rec))?;
        if !respond_async(&parts.headers) {
            return Err(kickoff_error(&bulk::KickoffError::NotAsync, rec));
        }
        // Without `_type`, a type-limited grant exports what it may read (documented).
        let letters = policies
            .rules
            .operations
            .get("export")
            .map(|r| r.letters.clone())
            .unwrap_or_default();
        let narrowed = params.narrow(&bulk::granted_types(grant, &letters));
        if let (Some(types), true) = (&params.types, narrowed)
            && let Some(f) = params
                .type_filters
                .iter()
                .find(|f| !types.contains(&f.rtype))
        {
            return Err(Early::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "_typeFilter on {}, which this grant may not export",
                    f.rtype.name()
                ),
            )
            .decision("deny", "export-type-filter"));
        }

        // Authorize the export as the GET it will be sent as.
        let judged = params.to_query();
        let judged_query = (!judged.is_empty()).then_some(judged.as_str());
        let raw = RawRequest {
            method: &Method::GET,
            path: rel,
            query: judged_query,
            headers: &HeaderMap::new(),
            body: None,
        };
        let fhir = classify::classify(&raw).map_err(|e| classify_error(e, rec))?;
        rec.resource_type = fhir.resource_type.map(|t| t.name());
        // `_typeFilter`: each judged as the search on its type it is.
        for f in &params.type_filters {
            let raw = RawRequest {
                method: &Method::GET,
                path: f.rtype.name(),
                query: Some(&f.query),
                headers: &HeaderMap::new(),
                body: None,
            };
            let search = classify::classify(&raw).map_err(|e| classify_error(e, rec))?;
            let mut note = PolicyNote::default();
            let d = policies.decide(grant, &search, &mut note);
            if let crate::authorize::Outcome::Reject(r) = d.outcome {
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
                return Err(Early::new(
                    status,
                    r.issue,
                    format!("_typeFilter {}: {}", f.value(), r.message),
                )
                .decision("deny", d.reason.code));
            }
        }
        let decision = policies.decide(grant, &fhir, &mut rec.policy);
        let plan = self.decided(decision, rec)?;
        let shape = fhir
            .operation
            .as_ref()
            .map(|o| (o.level, fhir.resource_type));
        let supported = matches!(
            shape,
            Some((OperationLevel::System, _))
                | Some((
                    OperationLevel::Type,
                    Some(crate::fhir::ResourceType::PATIENT)
                ))
        ) || matches!(
            shape,
            Some((
                OperationLevel::Instance,
                Some(crate::fhir::ResourceType::GROUP)
            ))
        );
        if !supported {
            return Err(Early::new(
                StatusCode::NOT_FOUND,
                "not-supported",
                "$export is available at system level, on Patient and on a Group instance",
            )
            .decision("invalid", "export-level"));
        }
        let Some(owner) = bulk::owner(grant) else {
            return Err(Early::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token names no client_id or sub to bind the export job to",
            )
            .decision("deny", "export-no-owner"));
        };
        if narrowed {
            rec.decision = "narrow";
            let types: Vec<&str> = params.types.iter().flatten().map(|t| t.name()).collect();
            rec.detail = format!("_type narrowed to the granted types {}", types.join(","));
        }

        let path = plan.request.upstream_target();
        let path = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
        let target = match judged_query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(outcome::FHIR_JSON));
        headers.insert(
            HeaderName::from_static("prefer"),
            HeaderValue::from_static("respond-async"),
        );
        let resp = self
            .get_upstream(&target, &headers, client, request_id, rec)
            .await?;
        let status = resp.status();
        if status != StatusCode::ACCEPTED {
            return Err(upstream_refusal(
                status,
                "the FHIR server refused the export request",
            ));
        }
        let location = resp
            .headers()
            .get(header::CONTENT_LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|u| {
                bulk::sign_url(
                    &self.paging,
                    u,
                    &self.filter.upstream_base,
                    &self.filter.public_base,
                    Kind::Status,
                    &owner,
                )
            })
            .and_then(|u| HeaderValue::from_str(&u).ok());
        let Some(location) = location else {
            tracing::warn!(
                "$export: the upstream's Content-Location is missing or not under its base"
            );
            return Err(Early::new(
                StatusCode::BAD_GATEWAY,
                "transient",
                "the FHIR server's export answer could not be passed on",
            )
            .decision("error", "export-status-url"));
        };
        if rec.decision != "narrow" {
            rec.decision = "allow";
        }
        rec.reason = "export-kickoff".into();
        let mut out = Response::new(body::empty());
        *out.status_mut() = StatusCode::ACCEPTED;
        out.headers_mut().insert(header::CONTENT_LOCATION, location);
        Ok(out)
    }

    /// GET on a signed status URL: progress, the rewritten manifest, or the failure.
    async fn poll(
        &self,
        target: &str,
        owner: &bulk::Owner<'_>,
        client: &ClientInfo,
        request_id: &HeaderValue,
        rec: &mut Record,
    ) -> Phase<Response<ProxyBody>> {
        rec.reason = "export-status".into();
        rec.decision = "allow";
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let resp = self
            .get_upstream(target, &headers, client, request_id, rec)
            .await?;
        let (head, incoming) = resp.into_parts();
        let mut out_headers = HeaderMap::new();
        for name in [
            HeaderName::from_static("x-progress"),
            header::RETRY_AFTER,
            header::EXPIRES,
        ] {
            if let Some(v) = head.headers.get(&name) {
                out_headers.insert(name, v.clone());
            }
        }
        match head.status {
            StatusCode::ACCEPTED => {
                let mut out = Response::new(body::empty());
                *out.status_mut() = StatusCode::ACCEPTED;
                *out.headers_mut() = out_headers;
                Ok(out)
            }
            StatusCode::OK => {
                let bytes = collect(incoming, self.max_inspect_bytes)
                    .await
                    .map_err(|_| super::bad_upstream_body())?;
                let sign = |url: &str, kind: Kind| {
                    bulk::sign_url(
                        &self.paging,
                        url,
                        &self.filter.upstream_base,
                        &self.filter.public_base,
                        kind,
                        owner,
                    )
                };
                let manifest = bulk::rewrite_manifest(
                    &bytes,
                    &self.filter.upstream_base,
                    &self.filter.public_base,
                    &sign,
                )
                .map_err(|e| {
                    rec.detail = format!("manifest: {e:?}");
                    super::bad_upstream_body()
                })?;
                if manifest.dropped > 0 {
                    tracing::warn!(
                        dropped = manifest.dropped,
                        "export manifest: file URLs not under the upstream base were dropped"
                    );
                    rec.removed = manifest.dropped;
                    rec.detail = format!(
                        "{} manifest entries not under the upstream base dropped",
                        manifest.dropped
                    );
                }
                rec.reason = "export-manifest".into();
                out_headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                let mut out = Response::new(body::full(manifest.body));
                *out.status_mut() = StatusCode::OK;
                *out.headers_mut() = out_headers;
                Ok(out)
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => Err(not_found()),
            s if s.is_server_error() => Err(Early::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the export failed on the FHIR server",
            )
            .decision("error", "export-failed")),
            s => Err(upstream_refusal(
                s,
                "the FHIR server refused the status request",
            )),
        }
    }

    /// DELETE on a signed status URL: cancel the job upstream.
    async fn cancel(
        &self,
        target: &str,
        client: &ClientInfo,
        request_id: &HeaderValue,
        rec: &mut Record,
    ) -> Phase<Response<ProxyBody>> {
        rec.reason = "export-cancel".into();
        rec.decision = "allow";
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(outcome::FHIR_JSON));
        let up = self
            .upstream
            .request(
                Method::DELETE,
                target,
                &headers,
                client,
                request_id,
                body::empty(),
            )
            .map_err(upstream_error)?;
        let resp = self.send(up, rec).await?;
        match resp.status() {
            s if s.is_success() => {
                let mut out = Response::new(body::empty());
                *out.status_mut() = StatusCode::ACCEPTED;
                Ok(out)
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => Err(not_found()),
            s => Err(upstream_refusal(
                s,
                "the FHIR server refused to cancel the export",
            )),
        }
    }

    /// GET on a signed file URL: the NDJSON streamed, every line checked on its way.
    #[allow(clippy::too_many_arguments)]
    async fn download(
        &self,
        kind: Kind,
        target: &str,
        grant: &Arc<Grant>,
        policies: &Arc<PolicySet>,
        client: &ClientInfo,
        request_id: &HeaderValue,
        rec: &mut Record,
    ) -> Phase<Response<ProxyBody>> {
        rec.reason = "export-file".into();
        rec.decision = "filter";
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(NDJSON));
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let resp = self
            .get_upstream(target, &headers, client, request_id, rec)
            .await?;
        let (head, incoming) = resp.into_parts();
        match head.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::GONE => return Err(not_found()),
            s => {
                return Err(upstream_refusal(
                    s,
                    "the FHIR server refused the file request",
                ));
            }
        }
        // A compressed body cannot be judged line by line: it was asked for as identity.
        if head
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() != b"identity")
        {
            return Err(super::bad_upstream_body());
        }
        let checked = NdjsonBody {
            inner: incoming,
            splitter: LineSplitter::new(self.max_inspect_bytes),
            kind,
            grant: grant.clone(),
            policies: policies
                .response_pass(grant)
                .is_some()
                .then(|| policies.clone()),
            request_id: request_id.to_str().unwrap_or_default().to_owned(),
            audit: (self.audit.clone(), rec.path.clone()),
            done: false,
        };
        let mut out = Response::new(body::stream(checked));
        out.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
        if let Some(v) = head.headers.get(header::EXPIRES) {
            out.headers_mut().insert(header::EXPIRES, v.clone());
        }
        Ok(out)
    }
}

/// Whether the path's last segment is `$export` (percent-decoded, as `classify` sees it).
fn is_kickoff(rel: &str) -> bool {
    crate::pct::decode(rel)
        .map(|p| p.rsplit('/').next() == Some("$export"))
        .unwrap_or(false)
}

/// `Prefer: respond-async` among the preferences.
fn respond_async(headers: &HeaderMap) -> bool {
    headers
        .get_all(HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

fn kickoff_error(e: &bulk::KickoffError, rec: &mut Record) -> Early {
    rec.detail = e.to_string();
    Early::new(StatusCode::BAD_REQUEST, "invalid", e.to_string()).decision("invalid", e.code())
}

/// An upstream non-success answer, in the proxy's own words (nothing upstream said leaks).
fn upstream_refusal(status: StatusCode, message: &str) -> Early {
    if status.is_client_error() {
        Early::new(status, "processing", message).decision("error", "upstream-status")
    } else {
        Early::new(
            StatusCode::BAD_GATEWAY,
            "transient",
            "the FHIR server failed",
        )
        .decision("error", "upstream-status")
    }
}

/// An upstream NDJSON body checked line by line. A line that may not leave ends the
/// stream with an error, so the client sees a broken transfer, never a clean end.
struct NdjsonBody {
    inner: UpstreamBody,
    splitter: LineSplitter,
    kind: Kind,
    grant: Arc<Grant>,
    /// Set when label or redaction rules apply to this client: each line passes them
    /// (hidden lines are left out, redacted ones rewritten).
    policies: Option<Arc<PolicySet>>,
    request_id: String,
    /// The audit trail and the request's (loggable) path: an aborted file gets an audit
    /// line of its own, since the request's line was written when the head left.
    audit: (Arc<AuditLog>, String),
    done: bool,
}

impl NdjsonBody {
    /// Runs `f` with the line checker of this body.
    fn with_check<T>(
        grant: &Grant,
        kind: Kind,
        policies: Option<&PolicySet>,
        f: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<LineVerdict, LineError>) -> T,
    ) -> T {
        let pass = policies.and_then(|p| p.response_pass(grant));
        let may_read = |t: &str| bulk::may_read(grant, t);
        let mut check = |line: &[u8]| -> Result<LineVerdict, LineError> {
            bulk::check_line(line, kind, &may_read)?;
            let Some(pass) = &pass else {
                return Ok(LineVerdict::Keep);
            };
            if line.trim_ascii().is_empty() {
                return Ok(LineVerdict::Keep);
            }
            let mut note = PolicyNote::default();
            match pass.single(line, &mut note) {
                Ok(Some(b)) => Ok(LineVerdict::Replace(b)),
                Ok(None) => Ok(LineVerdict::Drop),
                Err(_) => Err(LineError::Unreadable),
            }
        };
        f(&mut check)
    }

    fn abort(&mut self, e: LineError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.done = true;
        tracing::warn!(
            request_id = %self.request_id,
            reason = e.code(),
            detail = %e,
            client_id = self.grant.client_id.as_deref().unwrap_or(""),
            "bulk export file aborted: a line may not leave"
        );
        let (audit, path) = &self.audit;
        audit.write(&Record {
            time: super::now_rfc3339(),
            request_id: self.request_id.clone(),
            client_id: self.grant.client_id.clone(),
            sub: self.grant.subject.clone(),
            method: "GET".into(),
            path: path.clone(),
            interaction: Some("bulk"),
            decision: "deny",
            reason: e.code().into(),
            detail: format!("bulk export file aborted: {e}"),
            ..Record::default()
        });
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl Body for NdjsonBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(f) => f,
            };
            let (grant, kind, policies) = (this.grant.clone(), this.kind, this.policies.clone());
            let splitter = &mut this.splitter;
            let released = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Self::with_check(&grant, kind, policies.as_deref(), |check| {
                        splitter.push(data, check)
                    }),
                    // Trailers carry no data: dropped.
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                None => {
                    this.done = true;
                    Self::with_check(&grant, kind, policies.as_deref(), |check| {
                        splitter.finish(check)
                    })
                }
            };
            match released {
                Err(e) => return this.abort(e),
                Ok(b) if b.is_empty() => continue,
                Ok(b) => return Poll::Ready(Some(Ok(Frame::data(b)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
