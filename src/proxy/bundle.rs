//! Batch and transaction Bundles: split, every entry decided on its own, the answer judged
//! entry by entry.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::Value;

use super::{
    Early, Gateway, NOT_FOUND_MESSAGE, Phase, bad_upstream_body, collect, filter_headers,
    upstream_error,
};
use crate::audit::Record;
use crate::authenticate::Grant;
use crate::authorize::{Outcome, ResponseRule, View};
use crate::body::{self, ProxyBody};
use crate::classify::{self, Interaction};
use crate::filter::{self, Visibility};
use crate::forward::ClientInfo;
use crate::outcome;
use crate::policy::{PolicySet, ResponsePass};

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
        let mut slots: Vec<Result<Option<View>, Value>> = Vec::new();
        let mut denied = 0;
        for mut entry in entries {
            match self.decide_entry(&mut entry, grant, policies, rec) {
                Ok(view) => {
                    forwarded.push(entry);
                    slots.push(Ok(view));
                }
                Err(outcome_entry) => {
                    denied += 1;
                    slots.push(Err(outcome_entry));
                }
            }
        }
        if transaction && denied > 0 {
            return Err(Early::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{denied} transaction entries are not allowed; nothing was applied"),
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
                Ok(view) => {
                    let mut e = upstream_entries.next().unwrap_or(Value::Null);
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

    /// Decides one batch/transaction entry, narrowing its URL in place. `Ok(None)` when
    /// its response passes unjudged; `Err` holds the response entry to answer in its place.
    fn decide_entry(
        &self,
        entry: &mut Value,
        grant: &Grant,
        policies: &PolicySet,
        rec: &mut Record,
    ) -> Result<Option<View>, Value> {
        let forbidden = |msg: &str| {
            serde_json::json!({"response": {"status": "403 Forbidden", "outcome":
                serde_json::from_slice::<Value>(&outcome::operation_outcome("forbidden", msg)).unwrap_or(Value::Null)}})
        };
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
        let plan = match decision.outcome {
            Outcome::Forward(plan) => plan,
            Outcome::Reject(r) => return Err(forbidden(&r.message)),
        };
        // Entries cannot be pre-read atomically inside the upstream's transaction, so a
        // patient/ grant may not update, patch or delete through a Bundle.
        if plan.precheck.is_some() {
            return Err(forbidden(
                "update, patch and delete under patient/ scopes must be sent one by one",
            ));
        }
        if let Some(view) = &plan.body_check {
            let resource = entry.get("resource").cloned().unwrap_or(Value::Null);
            if self.check_written(&resource, &plan.request, view).is_err() {
                return Err(forbidden(
                    "the entry's resource is outside the launch patient's compartment",
                ));
            }
        }
        if let Some(req) = entry.get_mut("request").and_then(Value::as_object_mut) {
            req.insert("url".into(), Value::String(plan.request.upstream_target()));
            if let Some(criteria) = plan.request.if_none_exist() {
                req.insert("ifNoneExist".into(), Value::String(criteria));
            }
        }
        Ok(match plan.response {
            ResponseRule::Filter(view) => Some(view),
            ResponseRule::PassThrough => None,
        })
    }
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
