//! Start-up and shutdown: builds every stage from the configuration, binds both
//! listeners, and drains on SIGTERM/SIGINT.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::admin::Admin;
use crate::audit::AuditLog;
use crate::authenticate::Authenticator;
use crate::authorize::Rules;
use crate::config::{Config, parse_base_url};
use crate::cors::Cors;
use crate::discovery::Discovery;
use crate::filter::FilterContext;
use crate::forward::Upstream;
use crate::listen::{self, ServeOptions};
use crate::metadata::TtlCache;
use crate::metrics::Metrics;
use crate::paging::PagingKey;
use crate::policy::PolicyHandle;
use crate::proxy::Gateway;

/// Why the proxy could not start.
#[derive(Debug)]
pub enum StartError {
    /// A configured URL or file is unusable (the message names it).
    Config(String),
    /// A listener could not be bound.
    Bind(std::net::SocketAddr, std::io::Error),
    /// A worker thread could not be started.
    Workers(std::io::Error),
    /// The authenticator could not be built.
    Auth(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(m) => write!(f, "configuration: {m}"),
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::Workers(e) => write!(f, "cannot start the worker threads: {e}"),
            StartError::Auth(m) => write!(f, "authentication: {m}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Runs until SIGTERM/SIGINT, then drains within `shutdown.grace`.
pub async fn run(cfg: Arc<Config>) -> Result<(), StartError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (public_sockets, admin_listener, gateway, admin) = build(&cfg).await?;
    let tls = match &cfg.tls {
        Some(t) => {
            let tls = crate::tls::Tls::new(t, gateway.metrics.tls_reloads.clone())
                .map_err(|e| StartError::Config(format!("tls.{}: {e}", e.key())))?;
            tls.spawn_reload();
            Some(tls)
        }
        None => None,
    };
    let workers = public_sockets.len();
    let grace = cfg.shutdown.grace.0;
    let public = listen::Workers::start(
        public_sockets,
        gateway,
        ServeOptions {
            limits: cfg.limits.clone(),
            tls: tls.clone(),
            shutdown: stop_rx.clone(),
            grace,
        },
    )
    .map_err(StartError::Workers)?;
    tracing::info!(listen = %cfg.listen, workers, tls = tls.is_some(), admin = %cfg.admin_listen, upstream = %cfg.upstream.url, "smartgate started");
    let admin_options = ServeOptions {
        limits: crate::config::Limits::default(),
        tls: None,
        shutdown: stop_rx,
        grace,
    };
    let admin_task = tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(admin_options.limits.max_connections));
        listen::serve(admin_listener, admin, &admin_options, permits).await
    });
    listen::termination().await;
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    public.join().await;
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Builds both handlers and binds both listeners (the public one once per worker).
pub async fn build(
    cfg: &Config,
) -> Result<
    (
        Vec<std::net::TcpListener>,
        TcpListener,
        Arc<Gateway>,
        Arc<Admin>,
    ),
    StartError,
> {
    let workers = listen::worker_count(cfg.workers);
    let public = parse_base_url(&cfg.public_base_url).map_err(StartError::Config)?;
    let upstream_base = parse_base_url(&cfg.upstream.url).map_err(StartError::Config)?;
    let clients = crate::net::clients(
        &crate::net::ClientOptions {
            extra_ca_file: cfg.upstream.ca_file.clone(),
            client_cert_file: cfg.upstream.client_cert_file.clone(),
            client_key_file: cfg.upstream.client_key_file.clone(),
            connect_timeout: cfg.upstream.connect_timeout.0,
            pool_idle_timeout: cfg.upstream.pool_idle_timeout.0,
        },
        workers,
    )
    .map_err(|e| StartError::Config(format!("upstream client: {e}")))?;
    // Token checks share the other threads' pool: JWKS and introspection calls are rare.
    let client = clients.current().clone();
    let credentials = crate::credentials::Credentials::new(&cfg.upstream.auth, client.clone())
        .map_err(|e| StartError::Config(e.to_string()))?;
    let upstream = Arc::new(Upstream::new(
        upstream_base.clone(),
        clients,
        cfg.upstream.max_connections,
        cfg.upstream.timeout.0,
        credentials,
    ));
    let auth = Authenticator::new(&cfg.auth, &public.full(), client)
        .await
        .map_err(|e| StartError::Auth(e.to_string()))?;
    let auth = Arc::new(auth);
    auth.spawn_refresh();
    let mut metrics = Metrics::new();
    metrics.register_auth(auth.clone());
    metrics.register_upstream(upstream.clone());
    let metrics = Arc::new(metrics);
    let paging = match &cfg.paging.secret_file {
        Some(path) => PagingKey::new(&read_secret(path)?),
        None => PagingKey::random(),
    };
    // Policies override the configuration's compartment choices (fixed until restart).
    let base_rules = Rules {
        non_member_types: cfg.compartment.non_member_types,
        ..Rules::default()
    };
    let policy = PolicyHandle::load(&cfg.policies, base_rules).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        StartError::Config(format!("invalid policies:\n{}", lines.join("\n")))
    })?;
    let choices = policy.current().compartment;
    let filter = FilterContext::new(
        &upstream_base.full(),
        &public.full(),
        choices
            .actor_membership
            .unwrap_or(cfg.compartment.actor_membership),
        choices
            .non_member_types
            .unwrap_or(cfg.compartment.non_member_types),
    );
    let policy = Arc::new(policy);
    // Always: SIGHUP then reloads (or re-confirms "no policies") instead of ending the process.
    policy.clone().spawn_watch(metrics.clone());
    let audit = AuditLog::open(cfg.audit.output.as_deref(), cfg.audit.log_query_values)
        .map_err(|e| StartError::Config(format!("audit.output: {e}")))?;
    let discovery = cfg
        .smart
        .as_ref()
        .map(|s| Discovery::new(s, cfg.metadata.cache_ttl.0));
    let gateway = Arc::new(Gateway {
        public,
        upstream: upstream.clone(),
        auth: auth.clone(),
        policy,
        filter,
        paging,
        audit: Arc::new(audit),
        metrics: metrics.clone(),
        discovery,
        cors: Cors::new(&cfg.cors),
        metadata_cache: TtlCache::new(cfg.metadata.cache_ttl.0),
        prune_metadata: cfg.metadata.prune,
        max_inspect_bytes: cfg.limits.max_inspect_bytes,
        max_body_bytes: cfg.limits.max_body_bytes,
        strict_narrowing: cfg.upstream.strict_narrowing,
    });
    let admin = Arc::new(Admin {
        metrics,
        auth,
        upstream,
    });
    let public_sockets =
        listen::bind(cfg.listen, workers).map_err(|e| StartError::Bind(cfg.listen, e))?;
    let admin_listener = TcpListener::bind(cfg.admin_listen)
        .await
        .map_err(|e| StartError::Bind(cfg.admin_listen, e))?;
    Ok((public_sockets, admin_listener, gateway, admin))
}

fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, StartError> {
    let mut s =
        std::fs::read(path).map_err(|e| StartError::Config(format!("{}: {e}", path.display())))?;
    while s.last().is_some_and(|b| b.is_ascii_whitespace()) {
        s.pop();
    }
    Ok(s)
}
