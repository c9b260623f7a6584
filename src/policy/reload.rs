//! Hot reload: the current [`PolicySet`] behind a lock that requests read once (cloning
//! an `Arc`), re-read on SIGHUP or when a file changes (a 2 s poll of every policy file's
//! resolved path, inode, size and mtime: robust for editors that replace files and for a
//! Kubernetes ConfigMap's `..data` symlink swap). A new version is swapped in whole only
//! when every file is valid; otherwise the old one stays, the error is logged and the
//! `smartgate_policy_reloads_total{result="invalid"}` counter rises.
//!
//! Compartment choices feed the response filter built at start, so a reload that changes
//! them is refused (restart to change them).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::PolicySet;
use super::load::{load_paths, policy_files};
use crate::authorize::Rules;
use crate::config::ConfigError;
use crate::metrics::{Metrics, ResultLabels};

/// How often files are checked for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// The live policy set and where it comes from.
pub struct PolicyHandle {
    current: RwLock<Arc<PolicySet>>,
    paths: Vec<PathBuf>,
    base: Rules,
}

/// What identifies one version of the files on disk.
type Fingerprint = Vec<(PathBuf, Option<PathBuf>, u64, u64, Option<SystemTime>)>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut out = Vec::new();
    for path in paths {
        // The directory itself too: a ConfigMap swap changes its entries.
        let mut files = vec![path.clone()];
        files.extend(policy_files(path).unwrap_or_default());
        for f in files {
            let resolved = std::fs::canonicalize(&f).ok();
            let meta = std::fs::metadata(&f).ok();
            #[cfg(unix)]
            let inode = meta.as_ref().map_or(0, std::os::unix::fs::MetadataExt::ino);
            #[cfg(not(unix))]
            let inode = 0;
            out.push((
                f,
                resolved,
                inode,
                meta.as_ref().map_or(0, std::fs::Metadata::len),
                meta.and_then(|m| m.modified().ok()),
            ));
        }
    }
    out
}

impl PolicyHandle {
    /// Loads `paths` (files or directories) over the configuration's `base` rules.
    pub fn load(paths: &[PathBuf], base: Rules) -> Result<PolicyHandle, Vec<ConfigError>> {
        let set = load_paths(paths, &base)?;
        Ok(PolicyHandle {
            current: RwLock::new(Arc::new(set)),
            paths: paths.to_vec(),
            base,
        })
    }

    /// The set a request uses from start to end (a reload never changes it mid-request).
    pub fn current(&self) -> Arc<PolicySet> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads and validates every file; swaps only when all are valid.
    pub fn reload(&self) -> Result<(), Vec<ConfigError>> {
        let new = load_paths(&self.paths, &self.base)?;
        let old = self.current();
        if new.compartment != old.compartment {
            return Err(vec![ConfigError {
                file: self.paths.first().cloned().unwrap_or_default(),
                line: 0,
                column: 0,
                message: "compartment: choices changed; they take effect only on restart".into(),
            }]);
        }
        let mut slot = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Arc::new(new);
        Ok(())
    }

    fn reload_logged(&self, why: &str, metrics: &Metrics) {
        match self.reload() {
            Ok(()) => {
                tracing::info!(trigger = why, "policies reloaded");
                metrics
                    .policy_reloads
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
            }
            Err(problems) => {
                for p in &problems {
                    tracing::error!(problem = %p, trigger = why, "policy reload refused; the previous policies stay in force");
                }
                metrics
                    .policy_reloads
                    .get_or_create(&ResultLabels { result: "invalid" })
                    .inc();
            }
        }
    }

    /// Watches the files (poll) and SIGHUP until the process ends.
    pub fn spawn_watch(self: Arc<Self>, metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut seen = fingerprint(&self.paths);
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let why = tokio::select! {
                    _ = tick.tick() => "change",
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "sighup",
                };
                let now = fingerprint(&self.paths);
                if why == "change" && now == seen {
                    continue;
                }
                seen = now;
                self.reload_logged(why, &metrics);
            }
        })
    }
}
