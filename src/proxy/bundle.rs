//! Batch and transaction Bundles: split, every entry decided on its own, the answer judged
//! entry by entry.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::Value;

use super::{
    Early, Gateway, NOT_FOUND_MESSAGE, Phase, bad_upstream_body, collect, filter_headers,
    upstream_error, write_succeeded_outcome,
};
use crate::audit::Record;
use crate::authenticate::Grant;
use crate::authorize::{Outcome, ResponseRule, View};
use crate::body::{self, ProxyBody};
use crate::classify::{self, FhirRequest, Interaction};
use crate::filter::{self, Visibility};
use crate::forward::ClientInfo;
use crate::outcome;
use crate::policy::{PolicySet, ResponsePass};
use crate::scope::Letter;

impl Gateway {
    /// Batch and transaction: every entry classified and decided on its own. A
    /// transaction with any forbidden entry is rejected whole; a batch gets a 403 in
    /// place of each forbidden entry. Entry responses are judged like single resources.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn bundle(
        &self,
        headers: &HeaderMap,
        kind: Interaction,
        bytes: &[u8],
        grant: &Grant,
        (policies, pass): (&PolicySet, Option<&ResponsePass<'_>>),
        client: &ClientInfo,
        request_id: &HeaderValue,
        rec: &mut Record,
    ) -> Phase<Response<ProxyBody>> {
        let invalid = || {
            Early::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                "the Bundle is not valid FHIR JSON",
            )
            .decision("invalid", "bundle")
        };
        let mut bundle: Value = serde_json::from_slice(bytes).map_err(|_| invalid())?;
        let entries = bundle
            .get_mut("entry")
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
            .unwrap_or_default();
        let transaction = kind == Interaction::Transaction;
        let mut forwarded = Vec::new();
        let mut slots: Vec<Result<ResponseRule, Value>> = Vec::new();
        let mut denied = 0;
        let mut first_refusal: Option<(usize, Early)> = None;
        for (n, mut entry) in entries.into_iter().enumerate() {
            match self
                .decide_entry(&mut entry, grant, policies, client, request_id, rec)
                .await
            {
                Ok(rule) => {
                    forwarded.push(entry);
                    slots.push(Ok(rule));
                }
                Err(refusal) => {
                    denied += 1;
                    slots.push(Err(outcome_entry(&refusal)));
                    first_refusal.get_or_insert((n, refusal));
                }
            }
        }
        if transaction && let Some((n, refusal)) = first_refusal {
            // The first refusal decides the answer: a 404 stays a 404 (not yours and
            // missing look the same), a 412 stays a 412.
            return Err(Early::new(
                refusal.status,
                refusal.issue,
                format!(
                    "transaction entry {n}: {}; {denied} entries are not allowed; nothing was applied",
                    refusal.message
                ),
            )
            .decision("deny", "transaction-entry"));
        }
        rec.decision = if denied > 0 { "narrow" } else { "filter" };
        rec.reason = "bundle-entries".into();
        rec.removed = denied;
        if let Some(obj) = bundle.as_object_mut() {
            obj.insert("entry".into(), Value::Array(forwarded));
        }
        let body = serde_json::to_vec(&bundle).map_err(|_| invalid())?;
        let up = self
            .upstream
            .request(
                Method::POST,
                "",
                &filter_headers(headers),
                client,
                request_id,
                body::full(body),
            )
            .map_err(upstream_error)?;
        let resp = self.send(up, rec).await?;
        let status = resp.status();
        let resp_bytes = collect(resp.into_body(), self.max_inspect_bytes)
            .await
            .map_err(|_| bad_upstream_body())?;
        if !status.is_success() {
            return Err(Early::new(
                if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_GATEWAY
                },
                "processing",
                "the FHIR server rejected the Bundle",
            )
            .decision(rec.decision, "upstream-status"));
        }
        let mut answer: Value =
            serde_json::from_slice(&resp_bytes).map_err(|_| bad_upstream_body())?;
        let mut upstream_entries = answer
            .get_mut("entry")
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
            .unwrap_or_default()
            .into_iter();
        let mut out_entries = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Err(outcome_entry) => out_entries.push(outcome_entry),
                Ok(rule) => {
                    let mut e = upstream_entries.next().unwrap_or(Value::Null);
                    let view = match rule {
                        ResponseRule::Filter(view) => Some(view),
                        ResponseRule::Written(view) => {
                            rec.removed += self.judge_written_entry(&mut e, &view, grant);
                            None
                        }
                        ResponseRule::PassThrough => None,
                    };
                    if let Some(view) = view
                        && !self.judge_entry(&mut e, &view, grant)
                    {
                        // Hidden and missing look the same: no fullUrl, etag or
                        // lastModified of someone else's resource, no upstream wording.
                        if e.get("resource").is_some() {
                            rec.removed += 1;
                        }
                        e = missing_entry();
                    }
                    if let Some(full) = e
                        .get("fullUrl")
                        .and_then(Value::as_str)
                        .map(|u| self.filter.rebase(u))
                        && let Some(obj) = e.as_object_mut()
                    {
                        obj.insert("fullUrl".into(), Value::String(full));
                    }
                    if let Some(loc) = e
                        .pointer("/response/location")
                        .and_then(Value::as_str)
                        .map(|u| self.filter.rebase(u))
                        && let Some(r) = e.get_mut("response").and_then(Value::as_object_mut)
                    {
                        r.insert("location".into(), Value::String(loc));
                    }
                    out_entries.push(e);
                }
            }
        }
        if let Some(obj) = answer.as_object_mut() {
            obj.insert("entry".into(), Value::Array(out_entries));
            obj.remove("link");
        }
        if let Some(pass) = pass {
            pass.apply(&mut answer, &mut rec.policy);
        }
        let body = serde_json::to_vec(&answer).map_err(|_| bad_upstream_body())?;
        let mut out = Response::new(body::full(body));
        out.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(outcome::FHIR_JSON),
        );
        Ok(out)
    }

    /// Judges one batch/transaction response entry under `view`; a search result inside
    /// it is filtered like a search answered on its own (its paging links signed). `false`
    /// when the entry must be answered as "not found" (hidden, missing or gone).
    fn judge_entry(&self, e: &mut Value, view: &View, grant: &Grant) -> bool {
        let status = e
            .pointer("/response/status")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if status.starts_with("404") || status.starts_with("410") {
            return false;
        }
        let Some(res) = e.get_mut("resource") else {
            return true;
        };
        if res.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return matches!(
                filter::check_resource(res, view, grant, &self.filter),
                Visibility::Visible
            );
        }
        let sign = |url: &str| self.paging.sign(url, &self.public, view, grant);
        let filtered = serde_json::to_vec(res)
            .ok()
            .and_then(|bytes| filter::filter_bundle(&bytes, view, grant, &self.filter, &sign).ok())
            .and_then(|f| serde_json::from_slice::<Value>(&f.body).ok());
        match filtered {
            Some(bundle) => {
                *res = bundle;
                true
            }
            None => false,
        }
    }

    /// The answer entry of a checked write: a failure becomes the proxy's own outcome
    /// (nothing upstream said leaks); a success keeps its status, location, etag and
    /// lastModified, and its resource only when the grant's read scopes show it. Returns
    /// how many resources were withheld.
    fn judge_written_entry(&self, e: &mut Value, view: &View, grant: &Grant) -> usize {
        let status = e
            .pointer("/response/status")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !status.starts_with('2') {
            *e = if status.starts_with("404") || status.starts_with("410") {
                missing_entry()
            } else {
                let code = status
                    .get(..3)
                    .and_then(|c| c.parse::<u16>().ok())
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .filter(|c| c.is_client_error())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                outcome_entry(&Early::new(
                    code,
                    "processing",
                    "the FHIR server rejected this entry",
                ))
            };
            return 0;
        }
        let read = View {
            letter: Letter::R,
            ..view.clone()
        };
        let visible = e.get("resource").is_none_or(|r| {
            filter::check_resource(r, &read, grant, &self.filter) == Visibility::Visible
        });
        if visible {
            return 0;
        }
        if let Some(obj) = e.as_object_mut() {
            obj.remove("resource");
            obj.remove("fullUrl");
        }
        if let Some(resp) = e.get_mut("response").and_then(Value::as_object_mut) {
            resp.insert("outcome".into(), write_succeeded_outcome());
        }
        1
    }

    /// Decides one batch/transaction entry and, for a checked write, judges its current
    /// version and new content like a request of its own (pinning it with `ifMatch`),
    /// rewriting its request in place. `Err` holds the refusal to answer in its place.
    async fn decide_entry(
        &self,
        entry: &mut Value,
        grant: &Grant,
        policies: &PolicySet,
        client: &ClientInfo,
        request_id: &HeaderValue,
        rec: &mut Record,
    ) -> Result<ResponseRule, Early> {
        let forbidden = |msg: &str| Early::new(StatusCode::FORBIDDEN, "forbidden", msg);
        let method = entry
            .pointer("/request/method")
            .and_then(Value::as_str)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        let url = entry.pointer("/request/url").and_then(Value::as_str);
        let (Some(method), Some(url)) = (method, url) else {
            return Err(forbidden(
                "entry.request.method and entry.request.url are required",
            ));
        };
        let url = url
            .strip_prefix(&format!("{}/", self.public.full()))
            .unwrap_or(url)
            .to_owned();
        let ine = entry
            .pointer("/request/ifNoneExist")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let fhir = classify::classify_entry(&method, &url, ine.as_deref())
            .map_err(|e| forbidden(&e.to_string()))?;
        // A bulk kick-off is judged and its status URL bound only on its own (proxy/bulk.rs).
        if fhir.operation.as_ref().is_some_and(|o| o.name == "export") {
            return Err(forbidden(
                "$export must be sent on its own with Prefer: respond-async, not in a Bundle",
            ));
        }
        let decision = policies.decide(grant, &fhir, &mut rec.policy);
        let mut plan = match decision.outcome {
            Outcome::Forward(plan) => plan,
            Outcome::Reject(r) => return Err(forbidden(&r.message)),
        };
        let mut request = plan.request.clone();
        let mut if_match = None;
        if plan.precheck.is_some() || plan.body_check.is_some() {
            // A patch entry carries its patch as a base64 Binary or FHIRPath Parameters,
            // neither of which the checks can apply.
            if matches!(
                fhir.interaction,
                Interaction::Patch | Interaction::ConditionalPatch
            ) {
                return Err(Early::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "not-supported",
                    "under this grant a patch is checked before it is sent, which needs JSON Patch: send it on its own",
                ));
            }
            let body = match plan.body_check {
                Some(_) => Some(Bytes::from(
                    serde_json::to_vec(entry.get("resource").unwrap_or(&Value::Null))
                        .map_err(|_| forbidden("the entry's resource is not JSON"))?,
                )),
                None => None,
            };
            let (checked, _) = self
                .write_phase(
                    &mut plan, &fhir, grant, policies, body, None, client, request_id,
                )
                .await?;
            let Some(checked) = checked else {
                // Another context grants the entry without checks.
                return Ok(place_entry(
                    entry,
                    &plan.request,
                    &method,
                    None,
                    plan.response,
                ));
            };
            if let Some(version) = &checked.if_match {
                let etag = format!("W/\"{version}\"");
                let sent = entry.pointer("/request/ifMatch").and_then(Value::as_str);
                if sent.is_some_and(|s| s != etag) {
                    return Err(Early::new(
                        StatusCode::PRECONDITION_FAILED,
                        "conflict",
                        "ifMatch does not match the current version",
                    ));
                }
                if_match = Some(etag);
            }
            if let Some(b) = checked.body
                && let Ok(resource) = serde_json::from_slice::<Value>(&b)
                && let Some(obj) = entry.as_object_mut()
            {
                obj.insert("resource".into(), resource);
            }
            request = checked.request;
        }
        Ok(place_entry(
            entry,
            &request,
            &method,
            if_match,
            plan.response,
        ))
    }
}

/// Rewrites an entry's request to what was decided (and checked); the rule that
/// judges its answer.
fn place_entry(
    entry: &mut Value,
    request: &FhirRequest,
    method: &Method,
    if_match: Option<String>,
    rule: ResponseRule,
) -> ResponseRule {
    if let Some(req) = entry.get_mut("request").and_then(Value::as_object_mut) {
        req.insert(
            "method".into(),
            Value::String(request.upstream_method(method).to_string()),
        );
        req.insert("url".into(), Value::String(request.upstream_target()));
        if let Some(criteria) = request.if_none_exist() {
            req.insert("ifNoneExist".into(), Value::String(criteria));
        }
        if let Some(etag) = if_match {
            req.insert("ifMatch".into(), Value::String(etag));
        }
    }
    rule
}

/// A batch/transaction response entry answering a refusal.
fn outcome_entry(refusal: &Early) -> Value {
    let status = refusal.status;
    let outcome = serde_json::from_slice::<Value>(&outcome::operation_outcome(
        refusal.issue,
        &refusal.message,
    ))
    .unwrap_or(Value::Null);
    serde_json::json!({"response": {
        "status": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")),
        "outcome": outcome,
    }})
}

/// A batch/transaction response entry for "does not exist" and "not yours".
fn missing_entry() -> Value {
    let outcome = serde_json::from_slice::<Value>(&outcome::operation_outcome(
        "not-found",
        NOT_FOUND_MESSAGE,
    ))
    .unwrap_or(Value::Null);
    serde_json::json!({"response": {"status": "404 Not Found", "outcome": outcome}})
}
