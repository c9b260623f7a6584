//! # smartgate
//!
//! A reverse proxy that retrofits SMART on FHIR onto FHIR servers that never had it.
//!
//! A request flows one way through one stage per module:
//!
//! ```text
//! listen -> authenticate -> classify -> authorize -> forward -> filter -> audit/metrics
//!           (who: Grant)    (what:      (Decision)   (upstream)  (what may
//!                           FhirRequest)                          come back)
//! ```
//!
//! `classify`, `authorize`, `scope`, `compartment` and `filter` are pure: they take typed
//! values and return typed values, and are table-tested without sockets. I/O (JWKS fetch,
//! introspection, the upstream) sits at the edges (`authenticate`, `forward`, `proxy`).
//!
//! ## The promise
//! No token, no data; no scope, no data; nothing outside the patient's compartment ever
//! leaves. Every doubt fails closed with a FHIR OperationOutcome and an audit line.
//!
//! ## Non-goals
//! - Being an authorization server: smartgate checks tokens, it never issues them.
//! - Per-record permissions of `user/` scopes: the proxy cannot see the EHR's user model,
//!   so `user/` is enforced by type and interaction (plus policy), not per record.
//! - XML: when a response must be filtered it is requested as JSON; XML is refused (406).
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod authenticate;
pub mod authorize;
pub mod body;
pub mod bulk;
pub mod classify;
pub mod compartment;
pub mod config;
pub mod cors;
pub mod credentials;
pub mod discovery;
pub mod duration;
pub mod fhir;
pub mod filter;
pub mod forward;
pub mod framing;
pub mod listen;
pub mod metadata;
pub mod metrics;
pub mod net;
pub mod outcome;
pub mod paging;
pub mod pct;
pub mod policy;
pub mod proxy;
pub mod scope;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod write;
