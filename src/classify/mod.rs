//! Stage 2, **classify**: method + raw path + query (+ body) ⇒ a typed [`FhirRequest`].
//!
//! Pure and strict: the raw path is split on `/` before any decoding, each segment is
//! decoded exactly once, and anything ambiguous (encoded `/`, dot-segments, `;`, double
//! encoding, control characters, …) is a [`ClassifyError`], never a guess. What is
//! forwarded upstream is re-encoded from the `FhirRequest` ([`FhirRequest::upstream_target`]),
//! never copied from the original string, so the proxy authorizes exactly what it sends.

use crate::fhir::ResourceType;

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
