//! The integration-test harness: the real test bed (hfs + oidc-provider, started once per
//! test binary and stopped by a watchdog when the binary exits, even on failure), tokens
//! minted by the real authorization server, and smartgate itself run as its binary.
#![allow(dead_code)]

pub mod faulty;
pub mod http;
pub mod keys;
pub mod rng;
pub mod server;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

pub use http::Resp;

/// The running test bed.
pub struct Bed {
    pub env: HashMap<String, String>,
    pub dir: PathBuf,
}

impl Bed {
    pub fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("test bed env has no {k}"))
    }

    /// `host:port` of an `http://host:port/...` URL from the env.
    pub fn addr_of(&self, k: &str) -> String {
        authority(self.var(k))
    }

    /// The ground truth written by the data generator.
    pub fn manifest(&self) -> serde_json::Value {
        let path = PathBuf::from(self.var("TESTBED_DATA")).join("manifest.json");
        serde_json::from_slice(&std::fs::read(&path).expect("manifest")).expect("manifest json")
    }

    /// A test-bed control call (`rotate`, `jwks?mode=down`, `stats`, …).
    pub fn control(&self, method: &str, what: &str) -> Resp {
        let base = self.var("AS_CONTROL");
        let path = format!("{}/{what}", path_of(base));
        http::send(&authority(base), method, &path, &[], b"").expect("control call")
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts (once per test binary) or reuses (`SMARTGATE_TESTBED_DIR`) the test bed.
pub fn bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| {
        let dir = match std::env::var("SMARTGATE_TESTBED_DIR") {
            Ok(d) if PathBuf::from(&d).join("env").exists() => PathBuf::from(d),
            _ => {
                let dir =
                    std::env::temp_dir().join(format!("smartgate-bed-{}", std::process::id()));
                let status = Command::new("bash")
                    .arg(repo_root().join("scripts/testbed.sh"))
                    .args(["start", "--dir"])
                    .arg(&dir)
                    .args(["--watch-pid", &std::process::id().to_string()])
                    .stdout(Stdio::null())
                    .status()
                    .expect("run scripts/testbed.sh");
                assert!(
                    status.success(),
                    "test bed failed to start (see {})",
                    dir.display()
                );
                dir
            }
        };
        let text = std::fs::read_to_string(dir.join("env")).expect("test bed env");
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_owned(),
                    v.trim().trim_matches('"').trim_matches('\'').to_owned(),
                )
            })
            .collect();
        Bed { env, dir }
    })
}

pub fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

pub fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest[i..].to_owned(),
        None => "/".to_owned(),
    }
}

pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// What to ask the authorization server for.
#[derive(Clone, Default)]
pub struct TokenReq<'a> {
    pub scope: &'a str,
    pub patient: Option<&'a str>,
    pub fhir_user: Option<&'a str>,
    pub aud: Option<&'a str>,
    pub opaque: bool,
    pub ttl: Option<i64>,
    pub nbf: Option<i64>,
    pub alg: Option<&'a str>,
}

/// A token from the real authorization server (client_credentials with SMART extras).
pub fn mint(req: &TokenReq<'_>, default_aud: &str) -> String {
    let bed = bed();
    let mut form = vec![
        ("grant_type", "client_credentials".to_owned()),
        ("scope", req.scope.to_owned()),
        ("resource", req.aud.unwrap_or(default_aud).to_owned()),
    ];
    if let Some(p) = req.patient {
        form.push(("patient", p.to_owned()));
    }
    if let Some(u) = req.fhir_user {
        form.push(("fhirUser", u.to_owned()));
    }
    if req.opaque {
        form.push(("token_format", "opaque".to_owned()));
    }
    if let Some(t) = req.ttl {
        form.push(("ttl", t.to_string()));
    }
    if let Some(n) = req.nbf {
        form.push(("nbf", n.to_string()));
    }
    if let Some(a) = req.alg {
        form.push(("alg", a.to_owned()));
    }
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    let token_url = bed.var("AS_TOKEN");
    let resp = http::send(
        &authority(token_url),
        "POST",
        &path_of(token_url),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            // test-client:test-secret
            ("Authorization", "Basic dGVzdC1jbGllbnQ6dGVzdC1zZWNyZXQ="),
        ],
        body.join("&").as_bytes(),
    )
    .expect("token endpoint");
    assert_eq!(resp.status, 200, "token request failed: {}", resp.text());
    resp.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// A running smartgate binary in front of the test bed.
pub struct Proxy {
    child: Child,
    pub addr: String,
    pub admin: String,
    pub base: String,
    pub dir: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Proxy {
    /// Starts smartgate with the bed's upstream and authorization server; `extra` is YAML
    /// appended to the generated config (top-level keys not already present), and
    /// `upstream_url` overrides the upstream.
    pub fn start(extra: &str) -> Proxy {
        Self::start_with(extra, None, None)
    }

    pub fn start_with(extra: &str, upstream_url: Option<&str>, auth_yaml: Option<&str>) -> Proxy {
        Self::launch(extra, upstream_url, auth_yaml, "10s", "", &[])
    }

    /// Like [`Proxy::start_with`], with extra environment variables for the process.
    pub fn start_with_env(extra: &str, upstream_url: Option<&str>, env: &[(&str, &str)]) -> Proxy {
        Self::launch(extra, upstream_url, None, "10s", "", env)
    }

    /// A proxy whose `upstream.timeout` is `timeout`.
    pub fn start_with_timeout(upstream_url: &str, timeout: &str) -> Proxy {
        Self::launch("", Some(upstream_url), None, timeout, "", &[])
    }

    /// A proxy for `upstream_url` with more `upstream:` keys (`upstream_keys` is YAML indented
    /// by two spaces, e.g. `  ca_file: F\n`).
    pub fn start_with_upstream_keys(upstream_url: &str, upstream_keys: &str) -> Proxy {
        Self::launch("", Some(upstream_url), None, "10s", upstream_keys, &[])
    }

    /// A proxy for `upstream_url` with `upstream.timeout`, more `upstream:` keys (indented by
    /// two spaces) and more top-level keys.
    pub fn start_with_upstream(
        upstream_url: &str,
        timeout: &str,
        upstream_keys: &str,
        extra: &str,
    ) -> Proxy {
        Self::launch(extra, Some(upstream_url), None, timeout, upstream_keys, &[])
    }

    fn launch(
        extra: &str,
        upstream_url: Option<&str>,
        auth_yaml: Option<&str>,
        timeout: &str,
        upstream_keys: &str,
        env: &[(&str, &str)],
    ) -> Proxy {
        let bed = bed();
        let port = free_port();
        let admin_port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let base = format!("http://{addr}/fhir");
        let dir =
            std::env::temp_dir().join(format!("smartgate-proxy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("proxy dir");
        let secret = dir.join("introspection-secret");
        std::fs::write(&secret, bed.var("AS_INTROSPECT_CLIENT_SECRET")).expect("secret");
        let auth = auth_yaml.map(str::to_owned).unwrap_or_else(|| {
            format!(
                "auth:\n  jwt:\n    issuer: {iss}\n    jwks_uri: {jwks}\n  introspection:\n    endpoint: {intro}\n    client_id: {cid}\n    client_secret_file: {secret}\n",
                iss = bed.var("AS_ISSUER"),
                jwks = bed.var("AS_JWKS"),
                intro = bed.var("AS_INTROSPECT"),
                cid = bed.var("AS_INTROSPECT_CLIENT_ID"),
                secret = secret.display(),
            )
        });
        let config = format!(
            "listen: {addr}\nadmin_listen: 127.0.0.1:{admin_port}\npublic_base_url: {base}\nupstream:\n  url: {up}\n  timeout: {timeout}\n{upstream_keys}{auth}audit:\n  output: {audit}\nshutdown:\n  grace: 5s\n{extra}",
            up = upstream_url.unwrap_or(bed.var("FHIR_BASE")),
            audit = dir.join("audit.log").display(),
        );
        let config_path = dir.join("smartgate.yaml");
        std::fs::write(&config_path, config).expect("config");
        // `SMARTGATE_BIN` overrides the binary: with a target dir shared between worktrees,
        // `target/debug/smartgate` may have been rebuilt from another checkout.
        let exe = std::env::var("SMARTGATE_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_smartgate").to_owned());
        let child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).expect("log"))
            .spawn()
            .expect("spawn smartgate");
        let proxy = Proxy {
            child,
            addr,
            admin: format!("127.0.0.1:{admin_port}"),
            base,
            dir,
        };
        proxy.wait_ready();
        proxy
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = http::send(&self.admin, "GET", "/healthz", &[], b"")
                && r.status == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "smartgate did not start: {}",
            std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
        );
    }

    /// A token for this proxy's audience.
    pub fn token(&self, scope: &str, patient: Option<&str>) -> String {
        mint(
            &TokenReq {
                scope,
                patient,
                ..Default::default()
            },
            &self.base,
        )
    }

    pub fn mint(&self, req: TokenReq<'_>) -> String {
        mint(&req, &self.base)
    }

    /// `GET /fhir/{rel}` with a bearer token.
    pub fn get(&self, rel: &str, token: &str) -> Resp {
        self.req("GET", rel, token, &[], b"")
    }

    pub fn req(
        &self,
        method: &str,
        rel: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let auth = format!("Bearer {token}");
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        if !token.is_empty() {
            h.push(("Authorization", &auth));
        }
        let sep = if rel.is_empty() { "" } else { "/" };
        http::send(&self.addr, method, &format!("/fhir{sep}{rel}"), &h, body)
            .expect("request to smartgate")
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait");
        std::mem::forget(self);
        status
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Keep the config and logs of a failing test for inspection.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The resource ids in a Bundle's entries (`Type/id`).
pub fn entry_ids(bundle: &serde_json::Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| {
                    let r = &e["resource"];
                    Some(format!(
                        "{}/{}",
                        r["resourceType"].as_str()?,
                        r["id"].as_str()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The FHIR server, asked directly (no proxy): what would leak, and the ground truth a
/// write test compares with.
pub fn upstream(method: &str, rel: &str, body: &[u8]) -> Resp {
    let headers: &[(&str, &str)] = if body.is_empty() {
        &[]
    } else {
        &[("Content-Type", "application/fhir+json")]
    };
    http::send(
        &bed().addr_of("FHIR_BASE"),
        method,
        &format!("/{rel}"),
        headers,
        body,
    )
    .expect("upstream")
}

/// One smartgate (default configuration) for the whole test binary. A static is never
/// dropped, so a small watchdog kills the proxy when the test process exits.
#[allow(clippy::zombie_processes)]
pub fn shared_proxy() -> &'static Proxy {
    static P: OnceLock<Proxy> = OnceLock::new();
    P.get_or_init(|| {
        let p = Proxy::start("");
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill {child} 2>/dev/null",
            me = std::process::id(),
            child = p.pid()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("proxy watchdog");
        p
    })
}

/// Creates a resource directly on the FHIR server (a test's own fixture); its `Type/id`.
pub fn upstream_create(resource: &serde_json::Value) -> String {
    let t = resource["resourceType"].as_str().expect("resourceType");
    let r = upstream("POST", t, resource.to_string().as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let loc = r.header("location").expect("Location");
    let id = loc
        .trim_end_matches('/')
        .split("/_history")
        .next()
        .and_then(|l| l.rsplit('/').next())
        .expect("an id in Location");
    format!("{t}/{id}")
}
