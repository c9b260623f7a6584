//! `smartgate explain` and `smartgate test`: the pipeline's decision steps (ceiling,
//! classify, authorize, policy check, response pass) run without a network, on claims
//! instead of a token. The proxy runs the very same [`PolicySet`] hooks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderMap, Method};
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use super::{PolicyNote, PolicySet, verdict_name};
use crate::authenticate::{AuthError, ClaimsMapping, Grant, TokenKind};
use crate::authorize::{Decision, Outcome, ResponseRule, View};
use crate::classify::{self, FhirRequest, Interaction, RawRequest};
use crate::config::ConfigError;
use crate::filter::FilterContext;

/// A [`Grant`] from a claims object (a decoded token or an introspection answer): the
/// same mapping the proxy applies. `exp` may be left out (the grant is then unexpiring).
pub fn grant_from_claims(
    claims: &Map<String, Value>,
    mapping: &ClaimsMapping,
) -> Result<Grant, AuthError> {
    let mut claims = claims.clone();
    claims
        .entry("exp")
        .or_insert_with(|| Value::from(u64::from(u32::MAX)));
    crate::authenticate::claims::grant_from_claims(&claims, mapping, TokenKind::Jwt, [0; 32])
}

/// What the proxy would do with one request, step by step.
#[derive(Debug)]
pub struct Explanation {
    /// The classified request.
    pub request: FhirRequest,
    /// The grant after ceilings.
    pub grant: Arc<Grant>,
    /// The decision after policies.
    pub decision: Decision,
    /// `allow`, `narrow`, `filter` or `deny`.
    pub verdict: &'static str,
    /// What policies matched.
    pub note: PolicyNote,
    /// Label and redaction rules that apply to this client (`policy/rule`).
    pub response_rules: Vec<String>,
    /// The verdict on the body of a checked create or update, when one was given
    /// (`Err` holds the refusal the proxy would answer; a patch is judged only against
    /// the current version, at request time).
    pub body_verdict: Option<Result<(), crate::write::WriteDenied>>,
}

/// Why a request could not be explained.
#[derive(Debug)]
pub enum ExplainError {
    /// The URL or body is not a FHIR request the proxy accepts (it would answer 4xx).
    Classify(classify::ClassifyError),
}

impl fmt::Display for ExplainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExplainError::Classify(e) => write!(
                f,
                "the proxy refuses this request before authorization ({}): {e}",
                e.status()
            ),
        }
    }
}

/// `url` relative to the FHIR base: `Patient/1?x=y`, `/fhir/Patient/1` or a full URL under `base`.
fn relative<'u>(url: &'u str, base: &str) -> &'u str {
    let base = base.trim_end_matches('/');
    let path_of_base = base
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("");
    let rest = url
        .strip_prefix(base)
        .or_else(|| {
            (!path_of_base.is_empty())
                .then(|| url.strip_prefix(path_of_base))
                .flatten()
        })
        .unwrap_or(url);
    rest.trim_start_matches('/')
}

/// Runs ceiling, classify, authorize and the policy check for one request.
pub fn explain(
    set: &PolicySet,
    grant: Arc<Grant>,
    method: &Method,
    url: &str,
    body: Option<&[u8]>,
    base: &str,
) -> Result<Explanation, ExplainError> {
    let mut note = PolicyNote::default();
    let grant = set.ceiling(grant, &mut note);
    let rel = relative(url, base);
    let (path, query) = match rel.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rel, None),
    };
    let headers = HeaderMap::new();
    let raw = RawRequest {
        method,
        path,
        query,
        headers: &headers,
        body,
    };
    let request = classify::classify(&raw).map_err(ExplainError::Classify)?;
    let decision = set.decide(&grant, &request, &mut note);
    let response_rules = set
        .response_pass(&grant)
        .map(|p| p.rule_names())
        .unwrap_or_default();
    let body_verdict = match (&decision.outcome, body) {
        (Outcome::Forward(plan), Some(body)) if request.interaction != Interaction::Patch => {
            plan.body_check.as_ref().map(|view| {
                let ctx = FilterContext::new(base, base, false, set.rules.non_member_types);
                let judge = crate::write::Judge {
                    view,
                    grant: &grant,
                    ctx: &ctx,
                };
                let resource = crate::write::parse_resource(body)?;
                // A conditional update lands on its one match, whose id the body carries.
                let mut target = plan.request.clone();
                if target.interaction == Interaction::ConditionalUpdate {
                    target.id = resource
                        .get("id")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned);
                }
                judge.new_content(&resource, &target, None)
            })
        }
        _ => None,
    };
    // A body the write checks refuse is refused whatever the scopes allowed.
    let verdict = match body_verdict {
        Some(Err(_)) => "deny",
        _ => verdict_name(&decision),
    };
    Ok(Explanation {
        verdict,
        request,
        grant,
        decision,
        note,
        response_rules,
        body_verdict,
    })
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.request;
        let g = &self.grant;
        writeln!(
            f,
            "request:  {} {}",
            r.interaction.name(),
            r.resource_type.map_or("(no type)", |t| t.name())
        )?;
        writeln!(
            f,
            "client:   {} (patient: {}, fhirUser: {})",
            g.client_id.as_deref().unwrap_or("-"),
            g.patient.as_deref().unwrap_or("-"),
            g.fhir_user.as_deref().unwrap_or("-")
        )?;
        let scopes: Vec<&str> = g.scopes.data().iter().map(|s| s.raw.as_str()).collect();
        writeln!(f, "scopes:   {}", scopes.join(" "))?;
        if !self.note.scopes_dropped.is_empty() {
            writeln!(
                f,
                "ceiling:  dropped {}",
                self.note.scopes_dropped.join(" ")
            )?;
        }
        let reason = &self.decision.reason;
        writeln!(f, "decision: {} ({})", self.verdict, reason.code)?;
        match &self.decision.outcome {
            Outcome::Forward(plan) => {
                if let Some(s) = &reason.scope {
                    writeln!(f, "allowed by scope: {s}")?;
                }
                writeln!(f, "upstream: {}", plan.request.upstream_target())?;
                let lens = |v: &View| {
                    format!(
                        "{} context{}",
                        v.context.as_str(),
                        v.patient
                            .as_deref()
                            .map(|p| format!(", compartment of Patient/{p}"))
                            .unwrap_or_default()
                    )
                };
                match &plan.response {
                    ResponseRule::PassThrough => writeln!(f, "response: passed through")?,
                    ResponseRule::Filter(v) => writeln!(
                        f,
                        "response: filtered ({}, judged by `{}` scopes)",
                        lens(v),
                        v.letter.as_char()
                    )?,
                    ResponseRule::Written(v) => writeln!(
                        f,
                        "response: status, Location, ETag and Last-Modified; the resource only if `r` scopes of the {} show it, else an OperationOutcome saying the write succeeded",
                        lens(v)
                    )?,
                }
                if let Some(v) = &plan.precheck {
                    let conditional = matches!(
                        r.interaction,
                        Interaction::ConditionalUpdate
                            | Interaction::ConditionalPatch
                            | Interaction::ConditionalDelete
                    );
                    writeln!(
                        f,
                        "write:    {}the current version is read first; it must be inside a `{}` scope (its parameters too) of the {}, and the write is pinned to it (If-Match)",
                        if conditional {
                            "the criteria must match at most one resource (412 otherwise); "
                        } else {
                            ""
                        },
                        v.letter.as_char(),
                        lens(v)
                    )?;
                }
                if let Some(v) = &plan.body_check {
                    writeln!(
                        f,
                        "write:    the {} must be inside a `{}` scope (its parameters too) of the {}{}",
                        if r.interaction == Interaction::Patch {
                            "patched result"
                        } else {
                            "body"
                        },
                        v.letter.as_char(),
                        lens(v),
                        if plan.precheck.is_some() {
                            ", the same scope as the current version"
                        } else {
                            ""
                        }
                    )?;
                }
                match &self.body_verdict {
                    Some(Ok(())) => writeln!(f, "body:     inside the grant")?,
                    Some(Err(e)) => writeln!(
                        f,
                        "body:     refused {} ({}): {}",
                        e.status(),
                        e.code(),
                        e.message()
                    )?,
                    None => {}
                }
            }
            Outcome::Reject(rej) => writeln!(f, "refused:  {} {}", rej.status, rej.message)?,
        }
        if !reason.detail.is_empty() {
            writeln!(f, "detail:   {}", reason.detail)?;
        }
        if let Some(rule) = &self.note.rule {
            writeln!(
                f,
                "policy:   {rule} ({}){}",
                self.note.mode.unwrap_or("enforce"),
                if self.note.would_deny {
                    ", would deny"
                } else {
                    ""
                }
            )?;
        }
        if let Some(n) = self.note.count_clamped {
            writeln!(f, "policy:   _count lowered to {n}")?;
        }
        if !self.response_rules.is_empty() {
            writeln!(f, "response rules: {}", self.response_rules.join(", "))?;
        }
        Ok(())
    }
}

/// One test file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTests {
    #[serde(default)]
    policies: Vec<String>,
    cases: Vec<RawCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Spanned<String>,
    request: String,
    #[serde(default)]
    body: Option<Value>,
    token: Map<String, Value>,
    expect: Expect,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    would_deny: Option<bool>,
    #[serde(default)]
    response: Option<Value>,
    #[serde(default)]
    expect_response: Option<ExpectResponse>,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Narrow,
    Filter,
    Deny,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ExpectResponse {
    Visible,
    Hidden,
    Redacted,
}

/// The result of one test case.
#[derive(Debug)]
pub struct CaseResult {
    /// `file:line` of the case.
    pub location: String,
    /// The case's name.
    pub name: String,
    /// Empty when the case passed.
    pub failures: Vec<String>,
}

/// The `*.tests.yaml` files under `path` (or `path` itself), recursively, in name order.
pub fn test_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for e in entries {
        let name = e.file_name().and_then(|n| n.to_str()).unwrap_or(".");
        if name.starts_with('.') {
            continue;
        }
        if e.is_dir() {
            out.extend(test_files(&e));
        } else if name.ends_with(".tests.yaml") || name.ends_with(".tests.yml") {
            out.push(e);
        }
    }
    out
}

/// Runs one test file: its policies (`policies:`, else the sibling `NAME.yaml` of
/// `NAME.tests.yaml`) are loaded over `base`, then every case is decided.
pub fn run_file(
    file: &Path,
    base: &crate::authorize::Rules,
    mapping: &ClaimsMapping,
) -> Result<Vec<CaseResult>, Vec<ConfigError>> {
    let problem = |message: String| {
        vec![ConfigError {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message,
        }]
    };
    let text = std::fs::read_to_string(file).map_err(|e| problem(format!("cannot read: {e}")))?;
    let raw: RawTests =
        serde_saphyr::from_str(&text).map_err(|e| vec![crate::config::yaml_error(&e, file)])?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let policies: Vec<PathBuf> = if raw.policies.is_empty() {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let stem = name
            .strip_suffix(".tests.yaml")
            .or_else(|| name.strip_suffix(".tests.yml"))
            .unwrap_or(name);
        vec![dir.join(format!("{stem}.yaml"))]
    } else {
        raw.policies.iter().map(|p| dir.join(p)).collect()
    };
    let set = super::load_paths(&policies, base)?;
    Ok(raw
        .cases
        .iter()
        .map(|c| run_case(&set, c, file, mapping))
        .collect())
}

fn run_case(set: &PolicySet, c: &RawCase, file: &Path, mapping: &ClaimsMapping) -> CaseResult {
    let mut failures = Vec::new();
    let location = format!("{}:{}", file.display(), c.name.referenced.line());
    let result = |failures| CaseResult {
        location: location.clone(),
        name: c.name.value.clone(),
        failures,
    };
    let grant = match grant_from_claims(&c.token, mapping) {
        Ok(g) => Arc::new(g),
        Err(e) => return result(vec![format!("token: {}", e.description())]),
    };
    let (method, url) = c
        .request
        .split_once(' ')
        .unwrap_or(("GET", c.request.as_str()));
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return result(vec![format!("request: `{method}` is not an HTTP method")]);
    };
    let body = c
        .body
        .as_ref()
        .map(|b| serde_json::to_vec(b).unwrap_or_default());
    let e = match explain(set, grant, &method, url.trim(), body.as_deref(), "") {
        Ok(e) => e,
        Err(err) => {
            if c.expect != Expect::Deny {
                failures.push(format!("expected {:?}, but {err}", c.expect).to_lowercase());
            }
            return result(failures);
        }
    };
    let expected = format!("{:?}", c.expect).to_lowercase();
    if e.verdict != expected {
        failures.push(format!(
            "expected {expected}, got {} ({}{})",
            e.verdict,
            e.decision.reason.code,
            e.note
                .rule
                .as_deref()
                .map(|r| format!(", rule {r}"))
                .unwrap_or_default()
        ));
    }
    if let Some(rule) = &c.rule
        && e.note.rule.as_deref() != Some(rule.as_str())
    {
        failures.push(format!(
            "expected rule {rule}, got {}",
            e.note.rule.as_deref().unwrap_or("none")
        ));
    }
    if let Some(w) = c.would_deny
        && w != e.note.would_deny
    {
        failures.push(format!(
            "expected would_deny: {w}, got {}",
            e.note.would_deny
        ));
    }
    if let (Some(resource), Some(want)) = (&c.response, c.expect_response) {
        let mut note = PolicyNote::default();
        let mut after = resource.clone();
        let got = match set.response_pass(&e.grant) {
            None => ExpectResponse::Visible,
            Some(pass) if !pass.apply(&mut after, &mut note) => ExpectResponse::Hidden,
            Some(_) if after != *resource => ExpectResponse::Redacted,
            Some(_) => ExpectResponse::Visible,
        };
        if got != want {
            failures.push(format!("expected response {want:?}, got {got:?}").to_lowercase());
        }
    } else if c.response.is_some() != c.expect_response.is_some() {
        failures.push("response and expect_response go together".into());
    }
    result(failures)
}
