//! Stage 7, **audit**: one JSON line per request saying who asked for what, what was
//! decided and why. The `Authorization` header and the token never appear here; query
//! values (they can carry PHI) only when `audit.log_query_values` is on.

use std::io::Write;
use std::sync::RwLock;

use serde::Serialize;

/// One audit line.
#[derive(Debug, Default, Serialize)]
pub struct Record {
    /// RFC 3339 UTC time the request arrived.
    pub time: String,
    /// `X-Request-Id` (accepted or generated).
    pub request_id: String,
    /// The caller's client, user and launch context (absent before authentication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// `fhirUser`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// Launch patient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Path (query values only when configured).
    pub path: String,
    /// Classified interaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interaction: Option<&'static str>,
    /// Resource type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<&'static str>,
    /// `allow`, `narrow`, `filter`, `deny`, `unauthenticated`, `invalid`, `error`, `public`.
    pub decision: &'static str,
    /// Machine-readable reason code.
    pub reason: String,
    /// Human detail (which scope, which rule, what was ignored).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The scope that allowed the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The token's data scopes the request was decided with (after policy ceilings).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// What policies matched: rule, mode, audit-only `would_deny`, dropped scopes, …
    #[serde(skip_serializing_if = "crate::policy::PolicyNote::is_empty")]
    pub policy: crate::policy::PolicyNote,
    /// Entries removed by response filtering.
    pub removed: usize,
    /// Status sent to the client.
    pub status: u16,
    /// Status the upstream answered, when it was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Milliseconds from arrival to response head.
    pub latency_ms: f64,
}

/// Where audit lines go.
///
/// Every line is one `write(2)` on a descriptor of our own: appends to a regular file are
/// atomic, and so are pipe writes of at most `PIPE_BUF` bytes, so such lines share a read
/// lock (no waiting). A longer line (rare: a very long path) may be split on a pipe, so it
/// takes the write lock and no other line can land inside it.
pub struct AuditLog {
    sink: std::fs::File,
    writers: RwLock<()>,
    /// Whether query values may be logged.
    pub log_query_values: bool,
}

/// Writes up to this size are atomic on a Linux pipe.
const PIPE_BUF: usize = 4096;

impl AuditLog {
    /// `output`: `None`/`"stdout"` or a file path (appended).
    pub fn open(output: Option<&str>, log_query_values: bool) -> std::io::Result<AuditLog> {
        let sink = match output {
            None | Some("stdout") | Some("-") => {
                use std::os::fd::AsFd;
                std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?)
            }
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        };
        Ok(AuditLog {
            sink,
            writers: RwLock::new(()),
            log_query_values,
        })
    }

    /// Writes one line. A failing audit sink is reported on stderr, never fatal to the
    /// request that has already been answered.
    pub fn write(&self, record: &Record) {
        let mut line = Vec::with_capacity(512);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        let written = match line.len() <= PIPE_BUF {
            true => {
                let _shared = self.writers.read();
                (&self.sink).write_all(&line)
            }
            false => {
                let _alone = self.writers.write();
                (&self.sink).write_all(&line)
            }
        };
        if let Err(e) = written {
            tracing::error!(error = %e, "audit write failed");
        }
    }

    /// The path as it may be logged: the query's values are replaced by `*` unless
    /// configured otherwise.
    pub fn loggable_path(&self, path: &str, query: Option<&str>) -> String {
        match query {
            None => path.to_owned(),
            Some(q) if self.log_query_values => format!("{path}?{q}"),
            Some(q) => {
                let names: Vec<&str> = q
                    .split('&')
                    .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k))
                    .collect();
                format!("{path}?{}", names.join("=*&") + "=*")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_hidden_by_default() {
        let log = AuditLog::open(None, false).unwrap();
        assert_eq!(
            log.loggable_path("/fhir/Patient", Some("name=Smith&birthdate=1970")),
            "/fhir/Patient?name=*&birthdate=*"
        );
        let log = AuditLog::open(None, true).unwrap();
        assert_eq!(log.loggable_path("/p", Some("a=1")), "/p?a=1");
    }
}
