//! Bulk Data export (SMART Backend Services): the pure parts, with no I/O.
//!
//! The I/O flow is in `proxy::bulk`; everything that decides lives here and is
//! table-tested without sockets:
//!
//! - **kick-off parameters** ([`parse_query`], [`parse_parameters`], [`judge`]): only
//!   `_type`, `_since`, `_typeFilter` and `_outputFormat` are known; anything else is
//!   refused (400), so nothing the proxy did not judge reaches the upstream. The
//!   parameters are re-encoded ([`ExportParams::to_query`]) and always sent upstream as a
//!   GET query, whether the client used GET or POST with a `Parameters` body: what goes
//!   out is exactly what was judged.
//! - **narrowing** ([`granted_types`], [`ExportParams::narrow`]): a grant that does not
//!   cover every type (no `system/*.r…`) and names no `_type` gets `_type` set to the types
//!   it does cover, instead of a refusal.
//! - **URL binding** ([`sign_url`], [`verify`]): the status and file URLs the upstream
//!   hands out are moved onto the public base and bound with an HMAC to the client that
//!   started the job (issuer, `client_id`, subject, never the token: backend tokens expire
//!   every few minutes during a long export). Stateless: any replica sharing
//!   `paging.secret_file` can serve a poll or a download.
//! - **manifest rewriting** ([`rewrite_manifest`]): every URL rebased and signed, a URL
//!   not under the upstream base dropped, `requiresAccessToken` forced true.
//! - **NDJSON line checking** ([`LineSplitter`], [`check_line`]): an incremental splitter
//!   with a bounded line length, so a file of any size streams in flat memory; no byte of a
//!   line leaves before the whole line was checked.

use std::fmt;

use bytes::Bytes;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use crate::authenticate::Grant;
use crate::fhir::ResourceType;
use crate::paging::PagingKey;
use crate::scope::{Context, Letter, Target};

/// The query parameter that carries a bulk URL's signature (always the last parameter).
pub const SIG_PARAM: &str = "_sgb";

/// The `_outputFormat` values the proxy lets through: it checks NDJSON line by line, so
/// no other format could be judged.
pub const NDJSON_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Why a kick-off request is refused before it is authorized (all 400).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KickoffError {
    /// A parameter other than `_type`, `_since`, `_typeFilter`, `_outputFormat` (with a
    /// modifier too): refused rather than forwarded unjudged.
    UnknownParameter(String),
    /// `_since` or `_outputFormat` given more than once.
    Repeated(&'static str),
    /// `_type` names something that is not an R4 resource type.
    BadType(String),
    /// `_since` is not a FHIR instant.
    BadSince,
    /// `_typeFilter` is not `Type?query`.
    BadTypeFilter(String),
    /// `_typeFilter` on a type `_type` does not list.
    TypeFilterNotInType(String),
    /// `_outputFormat` is not an NDJSON form.
    BadOutputFormat(String),
    /// A malformed percent escape or a value that is not UTF-8.
    BadEncoding,
    /// The POST body is not a FHIR `Parameters` resource of string-valued parameters.
    BadBody(&'static str),
    /// No `Prefer: respond-async` (the Bulk Data spec requires it).
    NotAsync,
}

impl fmt::Display for KickoffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KickoffError::UnknownParameter(p) => write!(
                f,
                "$export parameter '{p}' is not supported here (only _type, _since, _typeFilter, _outputFormat)"
            ),
            KickoffError::Repeated(p) => write!(f, "$export parameter {p} may be given once"),
            KickoffError::BadType(t) => write!(f, "_type: '{t}' is not an R4 resource type"),
            KickoffError::BadSince => f.write_str("_since must be a FHIR instant"),
            KickoffError::BadTypeFilter(v) => {
                write!(
                    f,
                    "_typeFilter '{v}' must be ResourceType?search-parameters"
                )
            }
            KickoffError::TypeFilterNotInType(t) => {
                write!(f, "_typeFilter on {t}, which _type does not list")
            }
            KickoffError::BadOutputFormat(v) => {
                write!(f, "_outputFormat '{v}' is not supported: only NDJSON")
            }
            KickoffError::BadEncoding => f.write_str("malformed percent-encoding"),
            KickoffError::BadBody(why) => write!(f, "the $export body {why}"),
            KickoffError::NotAsync => {
                f.write_str("$export requires the header Prefer: respond-async")
            }
        }
    }
}

impl KickoffError {
    /// A stable code for the audit line.
    pub fn code(&self) -> &'static str {
        match self {
            KickoffError::UnknownParameter(_) => "export-unknown-parameter",
            KickoffError::Repeated(_) => "export-repeated-parameter",
            KickoffError::BadType(_) => "export-bad-type",
            KickoffError::BadSince => "export-bad-since",
            KickoffError::BadTypeFilter(_) | KickoffError::TypeFilterNotInType(_) => {
                "export-bad-type-filter"
            }
            KickoffError::BadOutputFormat(_) => "export-output-format",
            KickoffError::BadEncoding => "export-encoding",
            KickoffError::BadBody(_) => "export-body",
            KickoffError::NotAsync => "export-not-async",
        }
    }
}

/// One `_typeFilter`: a search on one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeFilter {
    /// The type searched.
    pub rtype: ResourceType,
    /// The search's query as the client wrote it inside the value (still percent-encoded
    /// where the client encoded it): judged like the query of `GET rtype?query`.
    pub query: String,
}

impl TypeFilter {
    /// `Type?query`, the `_typeFilter` value.
    pub fn value(&self) -> String {
        format!("{}?{}", self.rtype.name(), self.query)
    }
}

/// The judged kick-off parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportParams {
    /// `_type` (all values, in order, without duplicates); `None` when absent.
    pub types: Option<Vec<ResourceType>>,
    /// `_since`.
    pub since: Option<String>,
    /// Every `_typeFilter`.
    pub type_filters: Vec<TypeFilter>,
    /// `_outputFormat` (one of [`NDJSON_FORMATS`]).
    pub output_format: Option<String>,
}

/// Decoded `name=value` pairs of a query string. `+` is a literal plus, as everywhere in
/// the proxy (FHIR servers disagree; the re-encoded query sends `%2B`).
pub fn parse_query(query: Option<&str>) -> Result<Vec<(String, String)>, KickoffError> {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return Ok(Vec::new());
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = crate::pct::decode(k).map_err(|_| KickoffError::BadEncoding)?;
            let v = crate::pct::decode(v).map_err(|_| KickoffError::BadEncoding)?;
            Ok((k.into_owned(), v.into_owned()))
        })
        .collect()
}

/// The pairs of a POST kick-off's `Parameters` body. Each parameter must have a `name`
/// and exactly one string-valued `value[x]`; `part`, `resource` or anything else is
/// refused (the Bulk `patient` parameter, a reference, is not supported: 400).
pub fn parse_parameters(body: &[u8]) -> Result<Vec<(String, String)>, KickoffError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|_| KickoffError::BadBody("is not JSON"))?;
    let obj = v
        .as_object()
        .ok_or(KickoffError::BadBody("is not a Parameters resource"))?;
    if obj.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(KickoffError::BadBody("is not a Parameters resource"));
    }
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "resourceType" | "id" | "meta" | "parameter"))
    {
        return Err(KickoffError::UnknownParameter(k.clone()));
    }
    let Some(params) = obj.get("parameter") else {
        return Ok(Vec::new());
    };
    let params = params
        .as_array()
        .ok_or(KickoffError::BadBody("has a parameter that is not a list"))?;
    params
        .iter()
        .map(|p| {
            let p = p.as_object().ok_or(KickoffError::BadBody(
                "has a parameter that is not an object",
            ))?;
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or(KickoffError::BadBody("has a parameter without a name"))?;
            let mut value = None;
            for (k, v) in p {
                match (k.as_str(), v.as_str()) {
                    ("name", _) => {}
                    (k, Some(s)) if k.starts_with("value") && value.is_none() => {
                        value = Some(s.to_owned())
                    }
                    _ => return Err(KickoffError::UnknownParameter(name.to_owned())),
                }
            }
            let value = value.ok_or(KickoffError::BadBody("has a parameter without a value"))?;
            Ok((name.to_owned(), value))
        })
        .collect()
}

/// Judges the decoded parameters of a kick-off (query and body together).
pub fn judge(pairs: Vec<(String, String)>) -> Result<ExportParams, KickoffError> {
    let mut out = ExportParams::default();
    for (name, value) in pairs {
        match name.as_str() {
            "_type" => {
                let list = out.types.get_or_insert_with(Vec::new);
                for t in value.split(',').map(str::trim) {
                    let rt =
                        ResourceType::parse(t).ok_or_else(|| KickoffError::BadType(t.into()))?;
                    if !list.contains(&rt) {
                        list.push(rt);
                    }
                }
            }
            "_since" => {
                if out.since.is_some() {
                    return Err(KickoffError::Repeated("_since"));
                }
                if !is_instant(&value) {
                    return Err(KickoffError::BadSince);
                }
                out.since = Some(value);
            }
            "_outputFormat" => {
                if out.output_format.is_some() {
                    return Err(KickoffError::Repeated("_outputFormat"));
                }
                if !NDJSON_FORMATS.contains(&value.as_str()) {
                    return Err(KickoffError::BadOutputFormat(value));
                }
                out.output_format = Some(value);
            }
            "_typeFilter" => {
                let (t, q) = value
                    .split_once('?')
                    .ok_or_else(|| KickoffError::BadTypeFilter(value.clone()))?;
                let rtype = ResourceType::parse(t)
                    .ok_or_else(|| KickoffError::BadTypeFilter(value.clone()))?;
                if q.is_empty() || q.contains('#') {
                    return Err(KickoffError::BadTypeFilter(value.clone()));
                }
                out.type_filters.push(TypeFilter {
                    rtype,
                    query: q.to_owned(),
                });
            }
            _ => return Err(KickoffError::UnknownParameter(name)),
        }
    }
    if let Some(types) = &out.types {
        if types.is_empty() {
            return Err(KickoffError::BadType(String::new()));
        }
        if let Some(f) = out.type_filters.iter().find(|f| !types.contains(&f.rtype)) {
            return Err(KickoffError::TypeFilterNotInType(f.rtype.name().to_owned()));
        }
    }
    Ok(out)
}

/// A FHIR `instant`: `YYYY-MM-DDThh:mm:ss[.fff](Z|±hh:mm)`.
fn is_instant(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(digits(0..4)
        && at(4, b'-')
        && digits(5..7)
        && at(7, b'-')
        && digits(8..10)
        && at(10, b'T')
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest.as_bytes() {
        b"Z" => true,
        [sign, h1, h2, b':', m1, m2] => {
            matches!(sign, b'+' | b'-') && [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit())
        }
        _ => false,
    }
}

impl ExportParams {
    /// The parameters as the query sent upstream: re-encoded, in a fixed order.
    pub fn to_query(&self) -> String {
        let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let mut parts = Vec::new();
        if let Some(types) = &self.types {
            let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
            parts.push(format!("_type={}", names.join(",")));
        }
        if let Some(s) = &self.since {
            parts.push(format!("_since={}", enc(s)));
        }
        for f in &self.type_filters {
            parts.push(format!("_typeFilter={}", enc(&f.value())));
        }
        if let Some(o) = &self.output_format {
            parts.push(format!("_outputFormat={}", enc(o)));
        }
        parts.join("&")
    }

    /// Without `_type`, a grant that does not cover every type exports the types it does
    /// cover: `_type` is set to them. `true` when the request changed. An explicit `_type`
    /// is never narrowed (an ungranted type in it is refused by authorization), and a
    /// grant covering no type is left alone (then refused too).
    pub fn narrow(&mut self, granted: &Granted) -> bool {
        match (&self.types, granted) {
            (None, Granted::Types(list)) if !list.is_empty() => {
                self.types = Some(list.clone());
                true
            }
            _ => false,
        }
    }
}

/// Which types a backend grant may export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Granted {
    /// `system/*` with every letter needed: no narrowing.
    All,
    /// Only these (possibly none).
    Types(Vec<ResourceType>),
}

/// The types whose every `letters` is granted by a plain (not granular) `system/` scope:
/// what an export may contain. Granular system scopes grant no export (a bulk file cannot
/// be narrowed by search parameters), so they are not counted.
pub fn granted_types(grant: &Grant, letters: &[Letter]) -> Granted {
    let plain = |t: Option<ResourceType>, l: Letter| {
        grant.scopes.data().iter().any(|s| {
            s.context == Context::System
                && s.granular.is_empty()
                && s.perms.has(l)
                && match (s.target, t) {
                    (Target::AnyType, _) => true,
                    (Target::Type(st), Some(t)) => st == t,
                    (Target::Type(_), None) => false,
                }
        })
    };
    if !letters.is_empty() && letters.iter().all(|&l| plain(None, l)) {
        return Granted::All;
    }
    let mut out = Vec::new();
    for s in grant.scopes.data() {
        if let (Context::System, Target::Type(t)) = (s.context, s.target)
            && !out.contains(&t)
            && !letters.is_empty()
            && letters.iter().all(|&l| plain(Some(t), l))
        {
            out.push(t);
        }
    }
    Granted::Types(out)
}

/// A Backend Services grant: no user, no patient, and at least one `system/` scope.
pub fn is_backend(grant: &Grant) -> bool {
    grant.fhir_user.is_none()
        && grant.patient.is_none()
        && grant
            .scopes
            .data()
            .iter()
            .any(|s| s.context == Context::System)
}

/// Whether resources of type `name` may leave in a bulk file for this grant: a plain
/// `system/` scope with `r` on it.
pub fn may_read(grant: &Grant, name: &str) -> bool {
    let Some(t) = ResourceType::parse(name) else {
        return false;
    };
    grant
        .scopes
        .matching(Context::System, t, Letter::R)
        .any(|s| s.granular.is_empty())
}

// ---------------------------------------------------------------------------------------
// URL binding

/// What a signed bulk URL points at; part of the MAC, so a status URL cannot be replayed
/// as a file URL or the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The job's status URL (GET polls, DELETE cancels).
    Status,
    /// An `output` file: lines of the exported types.
    File,
    /// An `error` file: OperationOutcome lines.
    ErrorFile,
}

impl Kind {
    fn tag(self) -> char {
        match self {
            Kind::Status => 's',
            Kind::File => 'f',
            Kind::ErrorFile => 'e',
        }
    }

    fn from_tag(c: char) -> Option<Kind> {
        match c {
            's' => Some(Kind::Status),
            'f' => Some(Kind::File),
            'e' => Some(Kind::ErrorFile),
            _ => None,
        }
    }
}

/// Who started a job: the MAC binds its URLs to these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner<'g> {
    /// `iss`.
    pub issuer: &'g str,
    /// `client_id`.
    pub client_id: &'g str,
    /// `sub`.
    pub subject: &'g str,
}

/// The owner identity of a grant; `None` when it has neither `client_id` nor `sub` (such
/// a job could not be bound to anyone: refused).
pub fn owner(grant: &Grant) -> Option<Owner<'_>> {
    let client_id = grant.client_id.as_deref().unwrap_or("");
    let subject = grant.subject.as_deref().unwrap_or("");
    if client_id.is_empty() && subject.is_empty() {
        return None;
    }
    Some(Owner {
        issuer: grant.issuer.as_deref().unwrap_or(""),
        client_id,
        subject,
    })
}

/// Domain separation from the paging links, which share the key.
const DOMAIN: &[u8] = b"\0smartgate bulk v1";

fn mac(key: &PagingKey, kind: Kind, target: &str, owner: &Owner<'_>) -> String {
    let tag = [kind.tag() as u8];
    key.mac_parts(&[
        DOMAIN,
        &tag,
        target.as_bytes(),
        owner.issuer.as_bytes(),
        owner.client_id.as_bytes(),
        owner.subject.as_bytes(),
    ])
}

/// The target of `url` relative to `base` (`export-status/1`), when `url` is under it and
/// is a plain URL (no fragment, no spaces or controls). `None` otherwise: such a URL is
/// never passed on.
pub fn under_base<'u>(url: &'u str, base: &str) -> Option<&'u str> {
    let base = base.trim_end_matches('/');
    let rest = url.strip_prefix(base)?;
    if !(rest.is_empty() || rest.starts_with(['/', '?'])) {
        return None;
    }
    if rest
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'#' || b >= 0x80)
    {
        return None;
    }
    let rel = rest.strip_prefix('/').unwrap_or(rest);
    // A signature parameter already in the upstream's URL would confuse `verify`.
    if rel.contains(&format!("{SIG_PARAM}=")) {
        return None;
    }
    Some(rel)
}

/// Moves an upstream URL onto the public base and signs it for `owner`. `None` when the
/// URL is not under the upstream base (dropped, fail closed).
pub fn sign_url(
    key: &PagingKey,
    url: &str,
    upstream_base: &str,
    public_base: &str,
    kind: Kind,
    owner: &Owner<'_>,
) -> Option<String> {
    let rel = under_base(url, upstream_base)?;
    let mac = mac(key, kind, rel, owner);
    let sep = if rel.contains('?') { '&' } else { '?' };
    let slash = if rel.is_empty() || rel.starts_with('?') {
        ""
    } else {
        "/"
    };
    Some(format!(
        "{}{slash}{rel}{sep}{SIG_PARAM}={}{mac}",
        public_base.trim_end_matches('/'),
        kind.tag()
    ))
}

/// What a request is, as far as bulk URLs go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verified {
    /// No bulk signature: some other request.
    NotBulk,
    /// A bulk signature that is malformed, forged, or this owner's not: answered 404 like
    /// a job that does not exist.
    Refused,
    /// A URL this owner was given: its kind and the upstream target (without the
    /// signature).
    Valid {
        /// Status URL or file.
        kind: Kind,
        /// The target relative to the upstream base.
        target: String,
    },
}

/// Checks a request (`rel` relative to the public base, raw query) against the owner.
pub fn verify(
    key: &PagingKey,
    rel: &str,
    query: Option<&str>,
    owner: Option<&Owner<'_>>,
) -> Verified {
    let Some(query) = query else {
        return Verified::NotBulk;
    };
    // Runs on every authenticated request: no allocation until a signature is seen.
    const MARKER: &str = "_sgb=";
    const AMP_MARKER: &str = "&_sgb=";
    let (unsigned, value) = if let Some(v) = query.strip_prefix(MARKER) {
        ("", v)
    } else if let Some(at) = query.rfind(AMP_MARKER) {
        match (query.get(..at), query.get(at + AMP_MARKER.len()..)) {
            (Some(u), Some(v)) => (u, v),
            _ => return Verified::Refused,
        }
    } else {
        return Verified::NotBulk;
    };
    let Some(owner) = owner else {
        return Verified::Refused;
    };
    let mut chars = value.chars();
    let Some(kind) = chars.next().and_then(Kind::from_tag) else {
        return Verified::Refused;
    };
    let sent = chars.as_str();
    let target = if unsigned.is_empty() {
        rel.to_owned()
    } else {
        format!("{rel}?{unsigned}")
    };
    let expected = mac(key, kind, &target, owner);
    if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), sent.as_bytes())
        .is_err()
    {
        return Verified::Refused;
    }
    Verified::Valid { kind, target }
}

// ---------------------------------------------------------------------------------------
// Manifest

/// Why a completed job's manifest could not be rewritten (the caller answers 502).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestError {
    /// Not JSON.
    NotJson,
    /// JSON, but not an object with `output` as a list.
    NotManifest,
}

/// A rewritten manifest and what was dropped from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest to send.
    pub body: Vec<u8>,
    /// Entries whose URL was not under the upstream base (dropped).
    pub dropped: usize,
}

/// Rewrites a completed job's manifest: only the known fields are kept
/// (`transactionTime`, `request`, `requiresAccessToken`, `output`, `error`, `deleted`;
/// per entry `type`, `url`, `count`); `request` and every entry URL are moved onto the
/// public base, entry URLs signed with `sign`; an entry whose URL is not under the upstream
/// base is dropped; `requiresAccessToken` is always true (files are only served to their
/// owner's token).
pub fn rewrite_manifest(
    body: &[u8],
    upstream_base: &str,
    public_base: &str,
    sign: &dyn Fn(&str, Kind) -> Option<String>,
) -> Result<Manifest, ManifestError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| ManifestError::NotJson)?;
    let obj = v.as_object().ok_or(ManifestError::NotManifest)?;
    if !obj.get("output").is_some_and(Value::is_array) {
        return Err(ManifestError::NotManifest);
    }
    let mut out = Map::new();
    if let Some(t) = obj.get("transactionTime").filter(|t| t.is_string()) {
        out.insert("transactionTime".into(), t.clone());
    }
    if let Some(rel) = obj
        .get("request")
        .and_then(Value::as_str)
        .and_then(|r| under_base(r, upstream_base))
    {
        let slash = if rel.is_empty() || rel.starts_with('?') {
            ""
        } else {
            "/"
        };
        out.insert(
            "request".into(),
            Value::String(format!("{}{slash}{rel}", public_base.trim_end_matches('/'))),
        );
    }
    out.insert("requiresAccessToken".into(), Value::Bool(true));
    let mut dropped = 0;
    for (key, kind) in [
        ("output", Kind::File),
        ("error", Kind::ErrorFile),
        ("deleted", Kind::File),
    ] {
        let Some(entries) = obj.get(key) else {
            if key != "deleted" {
                out.insert(key.into(), Value::Array(Vec::new()));
            }
            continue;
        };
        let entries = entries.as_array().ok_or(ManifestError::NotManifest)?;
        let mut kept = Vec::with_capacity(entries.len());
        for e in entries {
            let signed = e
                .get("url")
                .and_then(Value::as_str)
                .and_then(|u| sign(u, kind));
            let Some(url) = signed else {
                dropped += 1;
                continue;
            };
            let mut entry = Map::new();
            if let Some(t) = e.get("type").filter(|t| t.is_string()) {
                entry.insert("type".into(), t.clone());
            }
            entry.insert("url".into(), Value::String(url));
            if let Some(c) = e.get("count").filter(|c| c.is_u64()) {
                entry.insert("count".into(), c.clone());
            }
            kept.push(Value::Object(entry));
        }
        out.insert(key.into(), Value::Array(kept));
    }
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|_| ManifestError::NotJson)?;
    Ok(Manifest { body, dropped })
}

// ---------------------------------------------------------------------------------------
// NDJSON

/// Why a line of a bulk file may not leave: the stream is aborted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineError {
    /// A line longer than the limit (memory stays bounded).
    TooLong(usize),
    /// Not JSON.
    NotJson,
    /// JSON, but not an object.
    NotObject,
    /// An object without a string `resourceType`.
    NoResourceType,
    /// A resource of a type the downloading grant may not read.
    TypeNotGranted(String),
    /// A line of an error file that is not an OperationOutcome.
    NotOperationOutcome(String),
    /// A policy rule could not read the line.
    Unreadable,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong(n) => write!(f, "a line longer than {n} bytes"),
            LineError::NotJson => f.write_str("a line that is not JSON"),
            LineError::NotObject => f.write_str("a line that is not a JSON object"),
            LineError::NoResourceType => f.write_str("a line without a resourceType"),
            LineError::TypeNotGranted(t) => write!(f, "a {t} the grant may not read"),
            LineError::NotOperationOutcome(t) => {
                write!(f, "a {t} in an error file (only OperationOutcome)")
            }
            LineError::Unreadable => f.write_str("a line the policies could not read"),
        }
    }
}

impl std::error::Error for LineError {}

impl LineError {
    /// A stable code for logs.
    pub fn code(&self) -> &'static str {
        match self {
            LineError::TooLong(_) => "line-too-long",
            LineError::NotJson => "line-not-json",
            LineError::NotObject => "line-not-object",
            LineError::NoResourceType => "line-no-resource-type",
            LineError::TypeNotGranted(_) => "line-type-not-granted",
            LineError::NotOperationOutcome(_) => "line-not-operation-outcome",
            LineError::Unreadable => "line-unreadable",
        }
    }
}

/// What happens to a checked line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineVerdict {
    /// It leaves as it came.
    Keep,
    /// It leaves rewritten (policy redaction); without the newline.
    Replace(Vec<u8>),
    /// It is left out (a policy label hides it, like a resource that does not exist).
    Drop,
}

/// Checks one line (without its `\n`; a trailing `\r` is tolerated) of a bulk file.
/// Blank lines carry nothing and pass. `may_read` says whether the grant may read a type.
pub fn check_line(
    line: &[u8],
    kind: Kind,
    may_read: &dyn Fn(&str) -> bool,
) -> Result<(), LineError> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return Ok(());
    }
    // serde would accept `["Patient"]` for a struct: only an object is a resource.
    if trimmed.first() != Some(&b'{') {
        return Err(LineError::NotObject);
    }
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "resourceType")]
        resource_type: Option<Value>,
    }
    // Every other field is read (and validated) as ignored: the whole line must be JSON.
    let head: Head = serde_json::from_slice(trimmed).map_err(|_| LineError::NotJson)?;
    let rtype = head
        .resource_type
        .as_ref()
        .and_then(Value::as_str)
        .ok_or(LineError::NoResourceType)?;
    match kind {
        Kind::ErrorFile if rtype != "OperationOutcome" => {
            Err(LineError::NotOperationOutcome(rtype.to_owned()))
        }
        Kind::ErrorFile => Ok(()),
        _ if may_read(rtype) => Ok(()),
        _ => Err(LineError::TypeNotGranted(rtype.to_owned())),
    }
}

/// Splits a byte stream into lines incrementally. Only complete, checked lines are
/// released; the unfinished tail is held back (at most `max_line` bytes, else
/// [`LineError::TooLong`]), so no byte of a line leaves before the line was judged.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max_line: usize,
}

impl LineSplitter {
    /// A splitter refusing lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            pending: Vec::new(),
            max_line,
        }
    }

    /// Feeds one chunk; returns the bytes that may go out (possibly empty).
    pub fn push(
        &mut self,
        chunk: Bytes,
        check: &mut dyn FnMut(&[u8]) -> Result<LineVerdict, LineError>,
    ) -> Result<Bytes, LineError> {
        let Some(last_nl) = chunk.iter().rposition(|&b| b == b'\n') else {
            if self.pending.len() + chunk.len() > self.max_line {
                return Err(LineError::TooLong(self.max_line));
            }
            self.pending.extend_from_slice(&chunk);
            return Ok(Bytes::new());
        };
        let (complete, tail) = (chunk.slice(..=last_nl), chunk.slice(last_nl + 1..));
        if tail.len() > self.max_line {
            return Err(LineError::TooLong(self.max_line));
        }
        let mut out: Option<Vec<u8>> = None;
        let mut start = 0;
        // The first line continues what was pending.
        let first_nl = complete.iter().position(|&b| b == b'\n').unwrap_or(last_nl);
        if !self.pending.is_empty() {
            if self.pending.len() + first_nl > self.max_line {
                return Err(LineError::TooLong(self.max_line));
            }
            let mut line = std::mem::take(&mut self.pending);
            line.extend_from_slice(&complete[..first_nl]);
            let mut buf = Vec::with_capacity(complete.len() + line.len());
            emit(&mut buf, &line, check(&line)?);
            out = Some(buf);
            start = first_nl + 1;
        }
        while start < complete.len() {
            let end = complete[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(complete.len() - 1, |p| start + p);
            let line = &complete[start..end];
            if line.len() > self.max_line {
                return Err(LineError::TooLong(self.max_line));
            }
            match (check(line)?, &mut out) {
                (LineVerdict::Keep, None) => {}
                (verdict, slot) => {
                    let buf = slot.get_or_insert_with(|| {
                        let mut b = Vec::with_capacity(complete.len());
                        b.extend_from_slice(&complete[..start]);
                        b
                    });
                    emit(buf, line, verdict);
                }
            }
            start = end + 1;
        }
        self.pending.extend_from_slice(&tail);
        Ok(match out {
            Some(buf) => Bytes::from(buf),
            None => complete,
        })
    }

    /// The end of the stream: a last line without a newline is checked and released.
    pub fn finish(
        &mut self,
        check: &mut dyn FnMut(&[u8]) -> Result<LineVerdict, LineError>,
    ) -> Result<Bytes, LineError> {
        let line = std::mem::take(&mut self.pending);
        if line.is_empty() {
            return Ok(Bytes::new());
        }
        let mut buf = Vec::with_capacity(line.len());
        match check(&line)? {
            LineVerdict::Keep => buf = line,
            LineVerdict::Replace(b) => buf.extend_from_slice(&b),
            LineVerdict::Drop => {}
        }
        Ok(Bytes::from(buf))
    }
}

fn emit(buf: &mut Vec<u8>, line: &[u8], verdict: LineVerdict) {
    match verdict {
        LineVerdict::Keep => {
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        LineVerdict::Replace(b) => {
            buf.extend_from_slice(&b);
            buf.push(b'\n');
        }
        LineVerdict::Drop => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authenticate::TokenKind;
    use crate::scope::ScopeSet;

    fn grant(scopes: &str) -> Grant {
        Grant {
            issuer: Some("https://as".into()),
            subject: Some("bulk-client".into()),
            client_id: Some("bulk-client".into()),
            fhir_user: None,
            patient: None,
            encounter: None,
            expires_at: 0,
            scopes: ScopeSet::parse(scopes),
            kind: TokenKind::Jwt,
            token_hash: [1; 32],
        }
    }

    fn pairs(q: &str) -> Vec<(String, String)> {
        parse_query(Some(q)).unwrap()
    }

    #[test]
    fn parameters_are_judged() {
        let ok = judge(pairs(
            "_type=Patient,Observation&_type=Patient&_since=2020-01-01T00:00:00Z&_outputFormat=application%2Ffhir%2Bndjson&_typeFilter=Observation%3Fcode%3D1234",
        ))
        .unwrap();
        assert_eq!(
            ok.types,
            Some(vec![
                ResourceType::PATIENT,
                ResourceType::parse("Observation").unwrap()
            ])
        );
        assert_eq!(ok.type_filters[0].query, "code=1234");
        assert_eq!(
            ok.to_query(),
            "_type=Patient,Observation&_since=2020%2D01%2D01T00%3A00%3A00Z&_typeFilter=Observation%3Fcode%3D1234&_outputFormat=application%2Ffhir%2Bndjson"
        );
        let table: &[(&str, &str)] = &[
            ("patient=Patient/1", "export-unknown-parameter"),
            ("_elements=id", "export-unknown-parameter"),
            ("_type:not=Patient", "export-unknown-parameter"),
            ("_type=Nope", "export-bad-type"),
            ("_type=", "export-bad-type"),
            ("_since=yesterday", "export-bad-since"),
            ("_since=2020-01-01", "export-bad-since"),
            (
                "_since=2020-01-01T00:00:00Z&_since=2020-01-01T00:00:00Z",
                "export-repeated-parameter",
            ),
            ("_outputFormat=text%2Fcsv", "export-output-format"),
            ("_typeFilter=Observation", "export-bad-type-filter"),
            ("_typeFilter=Nope%3Fx%3D1", "export-bad-type-filter"),
            (
                "_type=Patient&_typeFilter=Observation%3Fcode%3D1",
                "export-bad-type-filter",
            ),
        ];
        for (q, code) in table {
            let e = parse_query(Some(q)).and_then(judge).unwrap_err();
            assert_eq!(e.code(), *code, "{q}: {e}");
        }
        assert_eq!(
            parse_query(Some("_type=%zz")),
            Err(KickoffError::BadEncoding)
        );
        assert!(is_instant("2020-01-01T00:00:00.123+02:00"));
        assert!(!is_instant("2020-01-01T00:00:00+0200"));
    }

    #[test]
    fn parameters_bodies() {
        let body = br#"{"resourceType":"Parameters","parameter":[
            {"name":"_type","valueString":"Patient"},
            {"name":"_since","valueInstant":"2020-01-01T00:00:00Z"}]}"#;
        let p = judge(parse_parameters(body).unwrap()).unwrap();
        assert_eq!(p.types, Some(vec![ResourceType::PATIENT]));
        assert_eq!(p.since.as_deref(), Some("2020-01-01T00:00:00Z"));
        assert_eq!(parse_parameters(b"  ").unwrap(), vec![]);
        for bad in [
            &br#"{"resourceType":"Patient"}"#[..],
            br#"[1]"#,
            br#"{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Patient/1"}}]}"#,
            br#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient","part":[]}]}"#,
            br#"{"resourceType":"Parameters","parameter":[{"valueString":"Patient"}]}"#,
            br#"{"resourceType":"Parameters","extension":[]}"#,
        ] {
            assert!(
                parse_parameters(bad).and_then(judge).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn narrowing_follows_plain_system_scopes() {
        let rs = [Letter::R, Letter::S];
        assert_eq!(granted_types(&grant("system/*.rs"), &rs), Granted::All);
        assert_eq!(
            granted_types(&grant("system/*.r"), &rs),
            Granted::Types(vec![]),
            "s missing"
        );
        let g = grant(
            "system/Patient.rs system/Observation.r system/Observation.s system/Encounter.r system/Condition.rs?code=x patient/Group.rs",
        );
        let obs = ResourceType::parse("Observation").unwrap();
        assert_eq!(
            granted_types(&g, &rs),
            Granted::Types(vec![ResourceType::PATIENT, obs])
        );
        let mut p = ExportParams::default();
        assert!(p.narrow(&granted_types(&g, &rs)));
        assert_eq!(p.to_query(), "_type=Patient,Observation");
        let mut explicit = judge(pairs("_type=Encounter")).unwrap();
        assert!(
            !explicit.narrow(&granted_types(&g, &rs)),
            "explicit _type is judged, not narrowed"
        );
        assert!(may_read(&g, "Patient") && may_read(&g, "Encounter"));
        assert!(
            !may_read(&g, "Condition"),
            "granular scopes grant no bulk lines"
        );
        assert!(!may_read(&g, "Group") && !may_read(&g, "Nope"));
        assert!(is_backend(&g));
        let mut user = grant("system/*.rs");
        user.fhir_user = Some("Practitioner/1".into());
        assert!(!is_backend(&user));
        assert!(!is_backend(&grant("user/*.rs")));
    }

    #[test]
    fn urls_are_bound_to_their_owner() {
        let key = PagingKey::new(b"k");
        let a = grant("system/*.rs");
        let owner_a = owner(&a).unwrap();
        let signed = sign_url(
            &key,
            "http://up:8080/export-status/abc",
            "http://up:8080",
            "https://gw/fhir",
            Kind::Status,
            &owner_a,
        )
        .unwrap();
        let (rel, q) = signed
            .strip_prefix("https://gw/fhir/")
            .unwrap()
            .split_once('?')
            .unwrap();
        assert_eq!(rel, "export-status/abc");
        assert_eq!(
            verify(&key, rel, Some(q), Some(&owner_a)),
            Verified::Valid {
                kind: Kind::Status,
                target: "export-status/abc".into()
            }
        );
        // Another token of the same client (a fresh backend token): still the owner.
        let mut later = grant("system/Patient.r");
        later.token_hash = [9; 32];
        assert!(matches!(
            verify(&key, rel, Some(q), owner(&later).as_ref()),
            Verified::Valid { .. }
        ));
        for (field, value) in [
            ("client", "other"),
            ("sub", "other"),
            ("iss", "https://evil"),
        ] {
            let mut b = grant("system/*.rs");
            match field {
                "client" => b.client_id = Some(value.into()),
                "sub" => b.subject = Some(value.into()),
                _ => b.issuer = Some(value.into()),
            }
            assert_eq!(
                verify(&key, rel, Some(q), owner(&b).as_ref()),
                Verified::Refused,
                "{field}"
            );
        }
        assert_eq!(verify(&key, rel, Some(q), None), Verified::Refused);
        assert_eq!(
            verify(&key, "export-status/abd", Some(q), Some(&owner_a)),
            Verified::Refused
        );
        let as_file = q.replacen("_sgb=s", "_sgb=f", 1);
        assert_eq!(
            verify(&key, rel, Some(&as_file), Some(&owner_a)),
            Verified::Refused
        );
        assert_eq!(
            verify(&key, rel, Some("_sgb="), Some(&owner_a)),
            Verified::Refused
        );
        assert_eq!(
            verify(&key, rel, Some("_sgb=s00&x=1"), Some(&owner_a)),
            Verified::Refused
        );
        assert_eq!(
            verify(&key, rel, Some("_sg=x"), Some(&owner_a)),
            Verified::NotBulk
        );
        assert_eq!(verify(&key, rel, None, Some(&owner_a)), Verified::NotBulk);
        assert_eq!(PagingKey::new(b"j").mac_parts(&[b"x"]).len(), 32);
        assert_eq!(
            verify(&PagingKey::new(b"j"), rel, Some(q), Some(&owner_a)),
            Verified::Refused
        );
        // With a query, the signature is appended.
        let f = sign_url(
            &key,
            "http://up:8080/f?part=1",
            "http://up:8080/",
            "https://gw/fhir",
            Kind::File,
            &owner_a,
        )
        .unwrap();
        let (rel, q) = f
            .strip_prefix("https://gw/fhir/")
            .unwrap()
            .split_once('?')
            .unwrap();
        assert_eq!(
            verify(&key, rel, Some(q), Some(&owner_a)),
            Verified::Valid {
                kind: Kind::File,
                target: "f?part=1".into()
            }
        );
        for outside in [
            "http://evil/export-status/abc",
            "http://up:80800/x",
            "http://up:8080/x y",
            "http://up:8080/x#f",
            "http://up:8080/x?_sgb=s1",
        ] {
            assert_eq!(
                sign_url(
                    &key,
                    outside,
                    "http://up:8080",
                    "https://gw/fhir",
                    Kind::Status,
                    &owner_a
                ),
                None,
                "{outside}"
            );
        }
        let mut nobody = grant("system/*.rs");
        nobody.client_id = None;
        nobody.subject = None;
        assert_eq!(owner(&nobody), None);
    }

    #[test]
    fn manifests_are_rebased_and_signed() {
        let up = "http://up:8080";
        let body = serde_json::json!({
            "transactionTime": "2026-01-01T00:00:00Z",
            "request": "http://up:8080/Group/g1/$export?_type=Patient",
            "requiresAccessToken": false,
            "output": [
                {"type": "Patient", "url": "http://up:8080/export-file/j/1", "count": 3},
                {"type": "Patient", "url": "https://s3.example/bucket/j/2?sig=x"}
            ],
            "error": [{"type": "OperationOutcome", "url": "http://up:8080/export-file/j/e"}],
            "link": [{"relation": "next", "url": "http://up:8080/export-status/j?page=2"}],
            "extension": {"x": "http://up:8080/secret"}
        });
        let sign = |u: &str, k: Kind| under_base(u, up).map(|r| format!("P/{r}#{k:?}"));
        let m =
            rewrite_manifest(body.to_string().as_bytes(), up, "https://gw/fhir", &sign).unwrap();
        let v: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(m.dropped, 1);
        assert_eq!(
            v["request"],
            "https://gw/fhir/Group/g1/$export?_type=Patient"
        );
        assert_eq!(v["requiresAccessToken"], true);
        assert_eq!(v["output"].as_array().unwrap().len(), 1);
        assert_eq!(v["output"][0]["url"], "P/export-file/j/1#File");
        assert_eq!(v["output"][0]["count"], 3);
        assert_eq!(v["error"][0]["url"], "P/export-file/j/e#ErrorFile");
        assert!(v.get("link").is_none() && v.get("extension").is_none());
        assert!(!String::from_utf8_lossy(&m.body).contains("up:8080"));
        assert_eq!(
            rewrite_manifest(b"nope", up, "https://gw/fhir", &sign),
            Err(ManifestError::NotJson)
        );
        assert_eq!(
            rewrite_manifest(b"{\"output\":{}}", up, "https://gw/fhir", &sign),
            Err(ManifestError::NotManifest)
        );
        let elsewhere = serde_json::json!({"request": "http://evil/x", "output": []});
        let m = rewrite_manifest(
            elsewhere.to_string().as_bytes(),
            up,
            "https://gw/fhir",
            &sign,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&m.body).unwrap();
        assert!(
            v.get("request").is_none(),
            "a request URL elsewhere is dropped"
        );
        assert_eq!(v["error"], serde_json::json!([]));
    }

    #[test]
    fn lines_are_checked() {
        let may = |t: &str| t == "Patient";
        let table: &[(&[u8], Kind, Result<(), LineError>)] = &[
            (
                br#"{"resourceType":"Patient","id":"1"}"#,
                Kind::File,
                Ok(()),
            ),
            (b"  \r", Kind::File, Ok(())),
            (b"{\"resourceType\":\"Patient\"}\r", Kind::File, Ok(())),
            (
                br#"{"resourceType":"Observation"}"#,
                Kind::File,
                Err(LineError::TypeNotGranted("Observation".into())),
            ),
            (
                br#"{"resourceType":"Patient","x":}"#,
                Kind::File,
                Err(LineError::NotJson),
            ),
            (
                br#"{"resourceType":"Patient"} {"#,
                Kind::File,
                Err(LineError::NotJson),
            ),
            (br#"["Patient"]"#, Kind::File, Err(LineError::NotObject)),
            (br#"{"id":"1"}"#, Kind::File, Err(LineError::NoResourceType)),
            (
                br#"{"resourceType":1}"#,
                Kind::File,
                Err(LineError::NoResourceType),
            ),
            (
                br#"{"resourceType":"Patient","resourceType":"Observation"}"#,
                Kind::File,
                Err(LineError::NotJson),
            ),
            (
                br#"{"resourceType":"OperationOutcome"}"#,
                Kind::ErrorFile,
                Ok(()),
            ),
            (
                br#"{"resourceType":"Patient"}"#,
                Kind::ErrorFile,
                Err(LineError::NotOperationOutcome("Patient".into())),
            ),
        ];
        for (line, kind, want) in table {
            assert_eq!(
                &check_line(line, *kind, &may),
                want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    fn run(chunks: &[&[u8]], max: usize) -> Result<Vec<u8>, LineError> {
        let may = |t: &str| t == "Patient";
        let mut check = |l: &[u8]| check_line(l, Kind::File, &may).map(|_| LineVerdict::Keep);
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&s.push(Bytes::copy_from_slice(c), &mut check)?);
        }
        out.extend_from_slice(&s.finish(&mut check)?);
        Ok(out)
    }

    #[test]
    fn splitter_releases_only_checked_lines() {
        let p = br#"{"resourceType":"Patient","id":"1"}"#;
        let file = [p.as_slice(), b"\n", p, b"\n", p].concat();
        // Every way of cutting the file gives the file back.
        for cut in 0..file.len() {
            for cut2 in cut..file.len() {
                let got = run(&[&file[..cut], &file[cut..cut2], &file[cut2..]], 64).unwrap();
                assert_eq!(got, file, "{cut} {cut2}");
            }
        }
        // A forbidden line is never released, not even its first bytes.
        let o = br#"{"resourceType":"Observation"}"#;
        let bad = [p.as_slice(), b"\n", o, b"\n"].concat();
        let mut s = LineSplitter::new(64);
        let may = |t: &str| t == "Patient";
        let mut check = |l: &[u8]| check_line(l, Kind::File, &may).map(|_| LineVerdict::Keep);
        let first = s
            .push(Bytes::copy_from_slice(&bad[..p.len() + 5]), &mut check)
            .unwrap();
        assert_eq!(&first[..], &[p.as_slice(), b"\n"].concat()[..]);
        assert!(
            s.push(Bytes::copy_from_slice(&bad[p.len() + 5..]), &mut check)
                .is_err()
        );
        assert_eq!(
            run(&[o], 64),
            Err(LineError::TypeNotGranted("Observation".into()))
        );
        // Bounded memory: a line longer than the limit ends the stream, in any cut.
        let long = [
            b"{\"resourceType\":\"Patient\",\"x\":\"".as_slice(),
            &[b'a'; 100],
            b"\"}\n",
        ]
        .concat();
        assert_eq!(run(&[&long], 64), Err(LineError::TooLong(64)));
        assert_eq!(
            run(&[&long[..50], &long[50..]], 64),
            Err(LineError::TooLong(64))
        );
        assert_eq!(
            run(&[&long[..10], &long[10..]], 64),
            Err(LineError::TooLong(64))
        );
        // Dropped and replaced lines.
        let mut s = LineSplitter::new(64);
        let mut n = 0;
        let mut check = |_: &[u8]| {
            n += 1;
            Ok(match n {
                1 => LineVerdict::Drop,
                2 => LineVerdict::Replace(b"{}".to_vec()),
                _ => LineVerdict::Keep,
            })
        };
        let out = s
            .push(Bytes::from_static(b"a\nb\nc\nd"), &mut check)
            .unwrap();
        assert_eq!(&out[..], b"{}\nc\n");
        assert_eq!(&s.finish(&mut check).unwrap()[..], b"d");
    }
}
