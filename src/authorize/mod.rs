//! Stage 3, **authorize**: [`Grant`](crate::authenticate::Grant) +
//! [`FhirRequest`](crate::classify::FhirRequest) ⇒ [`Decision`].
//!
//! Pure: no I/O, no clock. A `Decision` says what to forward (possibly narrowed), what
//! must be checked before a write goes out, and how the response must be filtered; or it
//! rejects with a status and a reason. Every decision carries a machine-readable
//! [`Reason`] for the audit line and a human sentence for the OperationOutcome.

use crate::classify::FhirRequest;
use crate::scope::{Context, Letter};

/// The verdict on one request (or one batch/transaction entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Forward or reject.
    pub outcome: Outcome,
    /// Why, for the audit line.
    pub reason: Reason,
}

/// Forward (with a plan) or reject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send the plan's request upstream.
    Forward(Plan),
    /// Answer the client directly.
    Reject(Rejection),
}

/// What to send upstream and what to check around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The request to send, narrowed where needed. Re-encoded, never the original string.
    pub request: FhirRequest,
    /// Whether `request` differs from what the client asked (parameters added/pinned).
    pub narrowed: bool,
    /// Update/patch/delete under a patient/ grant: read the current version upstream
    /// first; it must be visible under this view, and the write is pinned to it with
    /// `If-Match`.
    pub precheck: Option<View>,
    /// Create/update (and the result of a patch): the resource written must be visible
    /// under this view (every patient reference points at the launch patient).
    pub body_check: Option<View>,
    /// How the response must be judged.
    pub response: ResponseRule,
}

/// How a response is judged before it leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseRule {
    /// Stream through unchanged (user/system grants with no granular restriction).
    PassThrough,
    /// Every resource returned (the resource itself, or every Bundle entry, includes and
    /// history versions alike) must be visible under the view; Bundles are filtered,
    /// a single resource that fails is answered like one that does not exist.
    Filter(View),
}

/// Which data a grant may see: the lens the response filter and write checks apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The context whose scopes allowed the request.
    pub context: Context,
    /// The compartment owner (launch patient) for `Context::Patient`; `None` otherwise.
    pub patient: Option<String>,
    /// The letter whose scopes (and their granular restrictions) judge each resource:
    /// `R` for reads, `S` for searches and history.
    pub letter: Letter,
}

/// A rejection the proxy answers itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// 400, 403, 404, 405, 406, 415, …
    pub status: u16,
    /// A FHIR `IssueType` code: `forbidden`, `invalid`, `not-supported`, `not-found`, …
    pub issue: &'static str,
    /// One sentence for the app developer (no data the caller may not see).
    pub message: String,
}

/// Why a decision was made, machine-readable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    /// A stable code: `scope`, `no-scope`, `no-patient-context`, `compartment`,
    /// `operation-not-allowed`, `forbidden-parameter`, `capabilities`, …
    pub code: &'static str,
    /// The scope that allowed the request, as the token spelled it.
    pub scope: Option<String>,
    /// Free text detail for the audit line (invalid scopes ignored, what was narrowed, …).
    pub detail: String,
}
