//! Stage 2, **classify**: method + raw path + query (+ body) ⇒ a typed [`FhirRequest`].
//!
//! Pure and strict: the raw path is split on `/` before any decoding, each segment is
//! decoded exactly once, and anything ambiguous (encoded `/`, dot-segments, `;`, double
//! encoding, control characters, …) is a [`ClassifyError`], never a guess. What is
//! forwarded upstream is re-encoded from the `FhirRequest` ([`FhirRequest::upstream_target`]),
//! never copied from the original string, so the proxy authorizes exactly what it sends.
//!
//! Conventions the other stages rely on:
//! - `HEAD` is classified as `GET` (`FhirRequest::head`); it is forwarded as `GET` so the
//!   response can be judged, and the proxy drops the body.
//! - `POST T/_search` and `POST _search` merge URL and form-body parameters (URL first) and
//!   are re-encoded as `GET` searches ([`FhirRequest::upstream_method`],
//!   [`FhirRequest::upstream_target`]): the body is never forwarded.
//! - In a URL query `+` is a literal plus; only in a form body does it mean a space.
//! - A conditional create keeps its `If-None-Exist` criteria in `params` (after any
//!   `_format`/`_pretty` of the URL); [`FhirRequest::if_none_exist`] re-encodes them.

mod path;
mod query;

use std::fmt;

use http::{HeaderMap, Method};
use serde::Deserialize;

use crate::fhir::{ResourceType, is_valid_id};
use query::Plus;

/// What the request does, in FHIR R4 REST terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `GET T/id`
    Read,
    /// `GET T/id/_history/v`
    Vread,
    /// `PUT T/id`
    Update,
    /// `PATCH T/id`
    Patch,
    /// `DELETE T/id`
    Delete,
    /// `POST T`
    Create,
    /// `GET T?…`, `POST T/_search`
    SearchType,
    /// `GET ?…`, `POST _search` (with or without `_type`)
    SearchSystem,
    /// `GET Patient/id/T`, `GET Patient/id/*`
    SearchCompartment,
    /// `GET T/id/_history`
    HistoryInstance,
    /// `GET T/_history`
    HistoryType,
    /// `GET _history`
    HistorySystem,
    /// `GET metadata`
    Capabilities,
    /// `POST [base]` with a `batch` Bundle
    Batch,
    /// `POST [base]` with a `transaction` Bundle
    Transaction,
    /// `$name` at system, type or instance level
    Operation,
    /// `POST T` with `If-None-Exist`
    ConditionalCreate,
    /// `PUT T?…`
    ConditionalUpdate,
    /// `PATCH T?…`
    ConditionalPatch,
    /// `DELETE T?…`
    ConditionalDelete,
}

impl Interaction {
    /// The interaction's name in audit lines, metrics labels and policy files (a closed
    /// set, so it is safe as a metrics label).
    pub fn name(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::Create => "create",
            Interaction::SearchType => "search-type",
            Interaction::SearchSystem => "search-system",
            Interaction::SearchCompartment => "search-compartment",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Capabilities => "capabilities",
            Interaction::Batch => "batch",
            Interaction::Transaction => "transaction",
            Interaction::Operation => "operation",
            Interaction::ConditionalCreate => "conditional-create",
            Interaction::ConditionalUpdate => "conditional-update",
            Interaction::ConditionalPatch => "conditional-patch",
            Interaction::ConditionalDelete => "conditional-delete",
        }
    }
}

/// At which level an operation was invoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperationLevel {
    /// `[base]/$op`
    System,
    /// `[base]/T/$op`
    Type,
    /// `[base]/T/id/$op`
    Instance,
}

/// A named operation (`$everything` ⇒ name `everything`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    /// Without the `$`.
    pub name: String,
    /// System, type or instance.
    pub level: OperationLevel,
}

/// `Patient/{id}/{T|*}`: a compartment search.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Compartment {
    /// The compartment's owner type (R4 defines Patient, Encounter, RelatedPerson,
    /// Practitioner and Device compartments).
    pub owner: ResourceType,
    /// The owner's id.
    pub id: String,
    /// The searched type; `None` for `*`.
    pub target: Option<ResourceType>,
}

/// One search parameter, decoded and split into its parts.
///
/// `subject:Patient.name=peter` ⇒ name `subject`, modifier `Patient`, chain `name`.
/// `_has:Observation:patient:code=x` ⇒ name `_has`, modifier `Observation:patient:code`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SearchParam {
    /// The parameter code, decoded (`pat%69ent` ⇒ `patient`).
    pub name: String,
    /// The text after the first `:` (and before any `.` chain), if any.
    pub modifier: Option<String>,
    /// The chain after the first `.`, if any.
    pub chain: Option<String>,
    /// The decoded value, with FHIR's `\,` `\|` `\$` `\\` escapes left as sent.
    pub value: String,
}

impl SearchParam {
    /// Builds a parameter from a *decoded* key (`code:in`, `subject:Patient.name`) and
    /// value, with the same checks as the query parser (used for granular scopes).
    pub fn new(key: &str, value: String) -> Result<SearchParam, ClassifyError> {
        query::split_name(key, value)
    }
}

/// A classified FHIR request: everything `authorize` needs, nothing it must re-parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FhirRequest {
    /// The interaction.
    pub interaction: Interaction,
    /// `HEAD` requests are classified as `GET` and remembered here.
    pub head: bool,
    /// The resource type in the path (or of the compartment target).
    pub resource_type: Option<ResourceType>,
    /// The resource id in the path.
    pub id: Option<String>,
    /// The version id of a vread.
    pub version: Option<String>,
    /// Set for compartment searches.
    pub compartment: Option<Compartment>,
    /// Set for operations.
    pub operation: Option<Operation>,
    /// URL and form-body parameters, in order, URL first.
    pub params: Vec<SearchParam>,
}

/// What the proxy hands to [`classify`]: the request as received, nothing decoded yet.
#[derive(Clone, Copy, Debug)]
pub struct RawRequest<'a> {
    /// The client's method.
    pub method: &'a Method,
    /// The raw path *relative to the FHIR base*, without a leading slash
    /// (`Patient/1/_history/2`; `""` for the base itself). The proxy strips the base prefix.
    pub path: &'a str,
    /// The raw query string, without the `?`.
    pub query: Option<&'a str>,
    /// The request headers (method overrides, `Content-Type`, `If-None-Exist`).
    pub headers: &'a HeaderMap,
    /// The body, needed for `POST …/_search` (form parameters) and `POST [base]` (Bundle
    /// `type`). `None` is read as an empty body.
    pub body: Option<&'a [u8]>,
}

/// Why a request could not be classified. Every variant maps to one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassifyError {
    /// A method FHIR REST does not use at this path (405).
    MethodNotAllowed,
    /// `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override` or `_method` (400):
    /// the method authorized must be the method forwarded.
    MethodOverride,
    /// An absolute-form target (`http://…`) where a path was expected (400).
    AbsoluteForm,
    /// `//` or a trailing `/` (400).
    EmptySegment,
    /// `.` or `..`, raw or encoded (400).
    DotSegment,
    /// `;` in a path segment, raw or encoded (400).
    MatrixParameter,
    /// `%2F`, `%5C` or a raw `\` inside a segment (400).
    EncodedSeparator,
    /// A segment that still contains `%` after one decoding (`%252F`) (400).
    DoubleEncoding,
    /// NUL or another control character, raw or encoded (400).
    ControlCharacter,
    /// A byte that has no business in a path or query (space, `"`, `<`, non-ASCII, …) (400).
    InvalidCharacter,
    /// `%` not followed by two hex digits (400).
    BadEscape,
    /// Decoded bytes that are not UTF-8 (400).
    NotUtf8,
    /// Not an R4 resource type (case-sensitive: `patient` is not `Patient`) (404).
    UnknownResourceType,
    /// An id or version id outside `[A-Za-z0-9\-.]{1,64}` (400).
    InvalidId,
    /// A path FHIR R4 REST does not define (404).
    UnknownPath,
    /// A query parameter that is not `name=value` with a well-formed name (400).
    BadParameter,
    /// Conditional update/patch/delete without search criteria (400).
    MissingCriteria,
    /// Parameters a create does not take (anything but `_format`/`_pretty` in its URL,
    /// or those two in `If-None-Exist`), or a malformed `If-None-Exist` (400).
    UnexpectedParameter,
    /// `POST …/_search` with a body that is not a form, or a Bundle that is not JSON (415).
    UnsupportedMediaType,
    /// `POST [base]` whose body is not a JSON Bundle of type `batch` or `transaction` (400).
    NotABundle,
}

impl ClassifyError {
    /// The HTTP status the proxy answers with.
    pub fn status(self) -> u16 {
        match self {
            ClassifyError::MethodNotAllowed => 405,
            ClassifyError::UnknownResourceType | ClassifyError::UnknownPath => 404,
            ClassifyError::UnsupportedMediaType => 415,
            _ => 400,
        }
    }
}

impl fmt::Display for ClassifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClassifyError::MethodNotAllowed => "this method is not allowed on this path",
            ClassifyError::MethodOverride => "method-override headers and _method are not accepted",
            ClassifyError::AbsoluteForm => "absolute-form request targets are not accepted",
            ClassifyError::EmptySegment => {
                "empty path segments (// or a trailing /) are not accepted"
            }
            ClassifyError::DotSegment => "dot-segments are not accepted in the path",
            ClassifyError::MatrixParameter => "';' is not accepted in the path",
            ClassifyError::EncodedSeparator => "encoded '/' or '\\' is not accepted in the path",
            ClassifyError::DoubleEncoding => "double percent-encoding is not accepted",
            ClassifyError::ControlCharacter => "control characters are not accepted",
            ClassifyError::InvalidCharacter => "the request target contains an invalid character",
            ClassifyError::BadEscape => "malformed percent-escape",
            ClassifyError::NotUtf8 => "percent-decoded text is not valid UTF-8",
            ClassifyError::UnknownResourceType => "unknown resource type",
            ClassifyError::InvalidId => "invalid resource or version id",
            ClassifyError::UnknownPath => "unknown FHIR path",
            ClassifyError::BadParameter => "malformed query parameter",
            ClassifyError::MissingCriteria => "conditional interactions need search criteria",
            ClassifyError::UnexpectedParameter => {
                "a create takes only _format/_pretty in its URL and criteria in If-None-Exist"
            }
            ClassifyError::UnsupportedMediaType => {
                "the body must be a form (for _search) or a JSON Bundle (for batch/transaction)"
            }
            ClassifyError::NotABundle => {
                "POST to the base needs a Bundle of type batch or transaction"
            }
        })
    }
}

impl std::error::Error for ClassifyError {}

/// Headers that would let a client change the method after it was authorized.
const OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Parameters that shape the response of a create rather than select anything: they stay
/// in the URL of a (conditional) create; everything else belongs in `If-None-Exist`.
fn is_result_param(p: &SearchParam) -> bool {
    p.name == "_format" || p.name == "_pretty"
}

/// Compartment owner types R4 defines.
fn is_compartment_owner(t: ResourceType) -> bool {
    matches!(
        t.name(),
        "Patient" | "Encounter" | "RelatedPerson" | "Practitioner" | "Device"
    )
}

/// Classifies one request. See the module docs for the conventions.
pub fn classify(req: &RawRequest<'_>) -> Result<FhirRequest, ClassifyError> {
    if OVERRIDE_HEADERS
        .iter()
        .any(|h| req.headers.contains_key(*h))
    {
        return Err(ClassifyError::MethodOverride);
    }
    let if_none_exist = {
        let mut all = req
            .headers
            .get_all(http::header::HeaderName::from_static("if-none-exist"))
            .iter();
        match (all.next(), all.next()) {
            (None, _) => None,
            (Some(v), None) => Some(v.to_str().map_err(|_| ClassifyError::UnexpectedParameter)?),
            (Some(_), Some(_)) => return Err(ClassifyError::UnexpectedParameter),
        }
    };
    let body = Body {
        headers: Some(req.headers),
        bytes: req.body,
    };
    route(req.method, req.path, req.query, if_none_exist, body)
}

/// Classifies one batch/transaction entry from its `request.method`, `request.url`
/// (relative to the base: `Observation?code=x`, `Patient/1`) and `request.ifNoneExist`.
/// Entries carry no form body: `POST …/_search` entries use URL parameters only, and a
/// nested batch (`POST` to the base) is refused.
pub fn classify_entry(
    method: &Method,
    url: &str,
    if_none_exist: Option<&str>,
) -> Result<FhirRequest, ClassifyError> {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let body = Body {
        headers: None,
        bytes: None,
    };
    route(method, path, query, if_none_exist, body)
}

/// The body and its headers, only looked at by the routes that need them.
struct Body<'a> {
    headers: Option<&'a HeaderMap>,
    bytes: Option<&'a [u8]>,
}

impl Body<'_> {
    fn content_type(&self) -> Option<&str> {
        self.headers
            .and_then(|h| h.get(http::header::CONTENT_TYPE))
            .map(|v| v.to_str().unwrap_or("\u{0}"))
    }

    fn bytes(&self) -> &[u8] {
        self.bytes.unwrap_or_default()
    }

    /// Appends the form parameters of a `POST …/_search` body.
    fn form_params(&self, out: &mut Vec<SearchParam>) -> Result<(), ClassifyError> {
        let bytes = self.bytes();
        let is_form = self.content_type().is_some_and(|ct| {
            media_type(ct).eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
        if bytes.is_empty() && (is_form || self.content_type().is_none()) {
            return Ok(());
        }
        if !is_form {
            return Err(ClassifyError::UnsupportedMediaType);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ClassifyError::NotUtf8)?;
        query::parse_into(text, Plus::Space, out)
    }

    /// `batch` or `transaction`, from the Bundle's `resourceType` and `type` only.
    fn bundle_kind(&self) -> Result<Interaction, ClassifyError> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "resourceType")]
            resource_type: Option<String>,
            #[serde(rename = "type")]
            kind: Option<String>,
        }
        if let Some(ct) = self.content_type() {
            let mt = media_type(ct);
            let json = [
                "application/fhir+json",
                "application/json",
                "application/json+fhir",
            ]
            .iter()
            .any(|j| mt.eq_ignore_ascii_case(j));
            if !json {
                return Err(ClassifyError::UnsupportedMediaType);
            }
        }
        let head: Head =
            serde_json::from_slice(self.bytes()).map_err(|_| ClassifyError::NotABundle)?;
        match (head.resource_type.as_deref(), head.kind.as_deref()) {
            (Some("Bundle"), Some("batch")) => Ok(Interaction::Batch),
            (Some("Bundle"), Some("transaction")) => Ok(Interaction::Transaction),
            _ => Err(ClassifyError::NotABundle),
        }
    }
}

/// The media type of a `Content-Type` value, without parameters or blanks.
fn media_type(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

fn route(
    method: &Method,
    raw_path: &str,
    raw_query: Option<&str>,
    if_none_exist: Option<&str>,
    body: Body<'_>,
) -> Result<FhirRequest, ClassifyError> {
    let head = method == Method::HEAD;
    let m = match *method {
        Method::HEAD | Method::GET => M::Get,
        Method::POST => M::Post,
        Method::PUT => M::Put,
        Method::PATCH => M::Patch,
        Method::DELETE => M::Delete,
        _ => return Err(ClassifyError::MethodNotAllowed),
    };
    let segs = path::segments(raw_path)?;
    let mut params = Vec::new();
    if let Some(q) = raw_query {
        query::parse_into(q, Plus::Literal, &mut params)?;
    }
    let mut r = FhirRequest {
        interaction: Interaction::Capabilities,
        head,
        resource_type: None,
        id: None,
        version: None,
        compartment: None,
        operation: None,
        params: Vec::new(),
    };
    let seg = |i: usize| segs.get(i).map(|s| s.as_ref());
    let first = seg(0);
    r.interaction = match (segs.len(), m) {
        (0, M::Get) => Interaction::SearchSystem,
        (0, M::Post) => body.bundle_kind()?,
        (0, _) => return Err(ClassifyError::MethodNotAllowed),
        (1, m) if first == Some("metadata") => only(m, M::Get, Interaction::Capabilities)?,
        (1, m) if first == Some("_history") => only(m, M::Get, Interaction::HistorySystem)?,
        (1, m) if first == Some("_search") => {
            only(m, M::Post, Interaction::SearchSystem)?;
            body.form_params(&mut params)?;
            Interaction::SearchSystem
        }
        (1, m) if first.is_some_and(|s| s.starts_with('$')) => {
            operation(&mut r, first, OperationLevel::System, m)?
        }
        (1, m) => {
            r.resource_type = Some(rtype(first)?);
            let criteria = params.iter().any(|p| !is_result_param(p));
            match m {
                M::Get => Interaction::SearchType,
                M::Post => {
                    if criteria {
                        return Err(ClassifyError::UnexpectedParameter);
                    }
                    match if_none_exist {
                        None => Interaction::Create,
                        Some(h) => {
                            let start = params.len();
                            query::parse_into(h, Plus::Literal, &mut params)
                                .map_err(|_| ClassifyError::UnexpectedParameter)?;
                            let crit = params.get(start..).unwrap_or_default();
                            if crit.is_empty() || crit.iter().any(is_result_param) {
                                return Err(ClassifyError::UnexpectedParameter);
                            }
                            Interaction::ConditionalCreate
                        }
                    }
                }
                _ if !criteria => return Err(ClassifyError::MissingCriteria),
                M::Put => Interaction::ConditionalUpdate,
                M::Patch => Interaction::ConditionalPatch,
                M::Delete => Interaction::ConditionalDelete,
            }
        }
        (2, m) => {
            r.resource_type = Some(rtype(first)?);
            match seg(1) {
                Some("_search") => {
                    only(m, M::Post, ())?;
                    body.form_params(&mut params)?;
                    Interaction::SearchType
                }
                Some("_history") => only(m, M::Get, Interaction::HistoryType)?,
                s if s.is_some_and(|s| s.starts_with('$')) => {
                    operation(&mut r, s, OperationLevel::Type, m)?
                }
                s => {
                    r.id = Some(id(s)?);
                    match m {
                        M::Get => Interaction::Read,
                        M::Put => Interaction::Update,
                        M::Patch => Interaction::Patch,
                        M::Delete => Interaction::Delete,
                        M::Post => return Err(ClassifyError::MethodNotAllowed),
                    }
                }
            }
        }
        (3, m) => {
            let owner = rtype(first)?;
            let owner_id = id(seg(1))?;
            match seg(2) {
                Some("_history") => {
                    (r.resource_type, r.id) = (Some(owner), Some(owner_id));
                    only(m, M::Get, Interaction::HistoryInstance)?
                }
                s if s.is_some_and(|s| s.starts_with('$')) => {
                    (r.resource_type, r.id) = (Some(owner), Some(owner_id));
                    operation(&mut r, s, OperationLevel::Instance, m)?
                }
                s => {
                    let target = match s {
                        Some("*") => None,
                        s => Some(rtype(s)?),
                    };
                    if !is_compartment_owner(owner) {
                        return Err(ClassifyError::UnknownPath);
                    }
                    r.resource_type = target;
                    r.compartment = Some(Compartment {
                        owner,
                        id: owner_id,
                        target,
                    });
                    only(m, M::Get, Interaction::SearchCompartment)?
                }
            }
        }
        (_, m) => {
            r.resource_type = Some(rtype(first)?);
            r.id = Some(id(seg(1))?);
            if seg(2) != Some("_history") {
                return Err(ClassifyError::UnknownPath);
            }
            r.version = Some(id(seg(3))?);
            only(m, M::Get, Interaction::Vread)?
        }
    };
    r.params = params;
    Ok(r)
}

/// The methods routing distinguishes (`HEAD` is `Get`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum M {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

fn only<T>(m: M, allowed: M, v: T) -> Result<T, ClassifyError> {
    if m == allowed {
        Ok(v)
    } else {
        Err(ClassifyError::MethodNotAllowed)
    }
}

fn rtype(seg: Option<&str>) -> Result<ResourceType, ClassifyError> {
    seg.and_then(ResourceType::parse)
        .ok_or(ClassifyError::UnknownResourceType)
}

fn id(seg: Option<&str>) -> Result<String, ClassifyError> {
    match seg {
        Some(s) if is_valid_id(s) => Ok(s.to_owned()),
        _ => Err(ClassifyError::InvalidId),
    }
}

/// `$name`: a letter, then letters, digits, `-` or `_`; invoked with `GET` or `POST`.
fn operation(
    r: &mut FhirRequest,
    seg: Option<&str>,
    level: OperationLevel,
    m: M,
) -> Result<Interaction, ClassifyError> {
    let name = seg.and_then(|s| s.strip_prefix('$')).unwrap_or("");
    let valid = name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(ClassifyError::UnknownPath);
    }
    if !matches!(m, M::Get | M::Post) {
        return Err(ClassifyError::MethodNotAllowed);
    }
    r.operation = Some(Operation {
        name: name.to_owned(),
        level,
    });
    Ok(Interaction::Operation)
}

impl FhirRequest {
    /// The method to send upstream: searches (including `POST _search`) and `HEAD` go as
    /// `GET`; operations keep the client's `GET`/`POST` (`client`).
    pub fn upstream_method(&self, client: &Method) -> Method {
        match self.interaction {
            Interaction::Create
            | Interaction::ConditionalCreate
            | Interaction::Batch
            | Interaction::Transaction => Method::POST,
            Interaction::Update | Interaction::ConditionalUpdate => Method::PUT,
            Interaction::Patch | Interaction::ConditionalPatch => Method::PATCH,
            Interaction::Delete | Interaction::ConditionalDelete => Method::DELETE,
            Interaction::Operation if client == Method::POST => Method::POST,
            _ => Method::GET,
        }
    }

    /// The request target to send upstream, relative to the upstream base (no leading
    /// `/`): the canonical path, then `?` and the canonically re-encoded parameters.
    /// `POST …/_search` comes out as the equivalent `GET` target; a conditional create
    /// keeps only `_format`/`_pretty` here (its criteria go in [`Self::if_none_exist`]).
    pub fn upstream_target(&self) -> String {
        let mut out = String::with_capacity(64);
        let rt = self.resource_type.map(ResourceType::name).unwrap_or("");
        let id = self.id.as_deref().unwrap_or("");
        let op = self.operation.as_ref();
        match self.interaction {
            Interaction::SearchSystem | Interaction::Batch | Interaction::Transaction => {}
            Interaction::Capabilities => out.push_str("metadata"),
            Interaction::HistorySystem => out.push_str("_history"),
            Interaction::SearchType
            | Interaction::Create
            | Interaction::ConditionalCreate
            | Interaction::ConditionalUpdate
            | Interaction::ConditionalPatch
            | Interaction::ConditionalDelete => out.push_str(rt),
            Interaction::HistoryType => {
                out.push_str(rt);
                out.push_str("/_history");
            }
            Interaction::Read | Interaction::Update | Interaction::Patch | Interaction::Delete => {
                push_path(&mut out, &[rt, id]);
            }
            Interaction::HistoryInstance => push_path(&mut out, &[rt, id, "_history"]),
            Interaction::Vread => push_path(
                &mut out,
                &[rt, id, "_history", self.version.as_deref().unwrap_or("")],
            ),
            Interaction::SearchCompartment => {
                if let Some(c) = &self.compartment {
                    let target = c.target.map(ResourceType::name).unwrap_or("*");
                    push_path(&mut out, &[c.owner.name(), &c.id, target]);
                }
            }
            Interaction::Operation => {
                if let Some(op) = op {
                    match op.level {
                        OperationLevel::System => {}
                        OperationLevel::Type => push_path(&mut out, &[rt, ""]),
                        OperationLevel::Instance => push_path(&mut out, &[rt, id, ""]),
                    }
                    out.push('$');
                    out.push_str(&op.name);
                }
            }
        }
        let create = matches!(
            self.interaction,
            Interaction::Create | Interaction::ConditionalCreate
        );
        let mut url_params = self
            .params
            .iter()
            .filter(|p| !create || is_result_param(p))
            .peekable();
        if url_params.peek().is_some() {
            out.push('?');
            query::encode_params(&mut out, url_params);
        }
        out
    }

    /// The same write on one resource: a conditional update/patch/delete resolved to the
    /// `id` its criteria matched (criteria dropped, `_format`/`_pretty` kept). Any other
    /// interaction comes back unchanged but for the id.
    pub fn on_instance(&self, id: &str) -> FhirRequest {
        let interaction = match self.interaction {
            Interaction::ConditionalUpdate => Interaction::Update,
            Interaction::ConditionalPatch => Interaction::Patch,
            Interaction::ConditionalDelete => Interaction::Delete,
            other => other,
        };
        let mut out = self.clone();
        if interaction != self.interaction {
            out.params.retain(is_result_param);
        }
        out.interaction = interaction;
        out.id = Some(id.to_owned());
        out
    }

    /// A conditional update whose criteria matched nothing, as the conditional create it
    /// amounts to: the criteria go out as `If-None-Exist`, so that a resource appearing
    /// meanwhile is left alone instead of being updated unchecked.
    pub fn as_conditional_create(&self) -> FhirRequest {
        let mut out = self.clone();
        out.interaction = Interaction::ConditionalCreate;
        out.id = None;
        out
    }

    /// The canonical `If-None-Exist` value of a conditional create (its criteria), `None`
    /// for every other interaction.
    pub fn if_none_exist(&self) -> Option<String> {
        if self.interaction != Interaction::ConditionalCreate {
            return None;
        }
        let mut out = String::new();
        query::encode_params(&mut out, self.params.iter().filter(|p| !is_result_param(p)));
        Some(out)
    }
}

fn push_path(out: &mut String, segs: &[&str]) {
    for (i, s) in segs.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(s);
    }
}
