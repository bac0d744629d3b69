//! The integration-test harness: the real server, in-process, on port 0, against a fresh database (a SQLite file in
//! a temp dir, or a fresh PostgreSQL database), with real bubblewrap sandboxes; a bootstrapped org; and a small
//! HTTP client.

use std::sync::Arc;
use std::time::Duration;

use evershell::config::Config;
use evershell::server::Server;
use evershell_app::App;
use evershell_core::scope::{MemberRole, PermissionSet};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct-horse-battery";

/// Which database a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct TestServer {
    pub url: String,
    /// A `full_access` API key of the bootstrapped org.
    pub key: String,
    pub org_id: String,
    pub org_slug: String,
    pub owner_email: String,
    pub app: Arc<App>,
    pub dir: tempfile::TempDir,
    pub db_url: String,
    server: Option<Server>,
    http: reqwest::Client,
    /// The server's nftables table (pod networking as root); it outlives a server by design, so the test removes it.
    nft_table: Option<String>,
}

/// A response, with the body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub bytes: Vec<u8>,
}

impl Resp {
    /// The error code of an envelope.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn ok(&self) -> &Value {
        assert!(self.status.is_success(), "expected success, got {} {}", self.status, self.json);
        &self.json
    }

    #[track_caller]
    pub fn expect(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status.as_u16(), self.code()),
            (status, code),
            "unexpected answer: {} {}",
            self.status,
            self.json
        );
        assert!(
            self.json["error"]["request_id"].as_str().is_some_and(|r| !r.is_empty()),
            "no request id: {}",
            self.json
        );
        assert!(self.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "no message: {}", self.json);
    }

    /// The field names of a validation error.
    pub fn fields(&self) -> Vec<String> {
        self.json["error"]["details"]["fields"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    }
}

pub fn agent_binary() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_evershell").into()
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_on(Db::Sqlite).await
    }

    pub async fn start_on(db: Db) -> Self {
        let dir = private_tempdir();
        let db_url = match db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("evershell.db").display()),
            Db::Postgres => evershell_store::testing::fresh_postgres_url().await,
        };
        Self::start_at(dir, db_url, true).await
    }

    /// A server over an existing data dir and database (for restarts).
    pub async fn start_at(dir: tempfile::TempDir, db_url: String, bootstrap: bool) -> Self {
        Self::start_at_with(dir, db_url, bootstrap, |_| {}).await
    }

    /// A SQLite server whose configuration `tweak` adjusts first.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = private_tempdir();
        let db_url = format!("sqlite://{}", dir.path().join("evershell.db").display());
        Self::start_at_with(dir, db_url, true, tweak).await
    }

    pub async fn start_at_with(
        dir: tempfile::TempDir,
        db_url: String,
        bootstrap: bool,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        if let Ok(filter) = std::env::var("EVERSHELL_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
        let mut cfg = config(dir.path(), &db_url);
        tweak(&mut cfg);
        // SAFETY: geteuid has no preconditions.
        let networked = cfg.runtime.network && unsafe { libc::geteuid() } == 0;
        let server = evershell::server::start(cfg).await.expect("server starts");
        let url = format!("http://{}", server.addr);
        let app = server.app.clone();
        let nft_table = match (server.proxy_addr, server.dns_addr) {
            (Some(p), Some(d)) if networked => {
                Some(evershell_runtime::local::network_table(evershell_runtime::local::NetworkPorts {
                    proxy: p.port(),
                    dns: d.port(),
                }))
            }
            _ => None,
        };
        let mut ts = TestServer {
            url,
            key: String::new(),
            org_id: String::new(),
            org_slug: "acme".into(),
            owner_email: "owner@acme.example".into(),
            app,
            dir,
            db_url,
            server: Some(server),
            http: reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap(),
            nft_table,
        };
        if bootstrap {
            let b = evershell_app::admin::bootstrap(ts.app.store().as_ref(), "acme", &ts.owner_email, Some(PASSWORD))
                .await
                .expect("bootstrap");
            ts.key = b.api_key.value;
            ts.org_id = b.org.id.to_string();
        }
        ts
    }

    /// Stop the server and remove every pod (sandboxes included). Returns the data dir and database for a restart.
    pub async fn stop(mut self) -> (tempfile::TempDir, String) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
        remove_pods(&self.app).await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.db_url.clone())
    }

    /// Connections the server is serving right now.
    /// Where the in-process DNS responder for the pods listens.
    pub fn dns_addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().and_then(|s| s.dns_addr).expect("the DNS responder runs in-process")
    }

    /// Where the in-process egress proxy listens.
    pub fn proxy_addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().and_then(|s| s.proxy_addr).expect("the egress proxy runs in-process")
    }

    pub fn open_connections(&self) -> usize {
        self.server.as_ref().map_or(0, |s| s.open_connections.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        into_resp(r.send().await.expect("request sent")).await
    }

    pub async fn raw(&self, r: reqwest::RequestBuilder) -> Resp {
        into_resp(r.send().await.expect("request sent")).await
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, Some(&self.key), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(&self.key), Some(body)).await
    }

    pub async fn post_empty(&self, path: &str) -> Resp {
        self.call(Method::POST, path, Some(&self.key), None).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path, Some(&self.key), Some(body)).await
    }

    /// A user with `role` in the org, signed in: `(user_id, session token)`.
    pub async fn user(&self, email: &str, role: MemberRole) -> (String, String) {
        let org = evershell_app::admin::find_org(self.app.store().as_ref(), &self.org_slug).await.unwrap();
        let u =
            evershell_app::admin::add_user(self.app.store().as_ref(), &org, email, role, Some(PASSWORD)).await.unwrap();
        let token = self.login(email).await;
        (u.user_id.to_string(), token)
    }

    pub async fn login(&self, email: &str) -> String {
        let r = self
            .call(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({ "email": email, "password": PASSWORD, "org": self.org_slug })),
            )
            .await;
        r.ok()["token"].as_str().unwrap().to_string()
    }

    /// An API key with a template.
    pub async fn key_with(&self, set: PermissionSet) -> String {
        let org = evershell_app::admin::find_org(self.app.store().as_ref(), &self.org_slug).await.unwrap();
        evershell_app::admin::create_api_key(self.app.store().as_ref(), &org, set, "test").await.unwrap().value
    }

    /// A provider and a role: `(provider_id, role_id, role_name)`.
    pub async fn role(&self, name: &str) -> (String, String, String) {
        let p = self
            .post(
                "/v1/providers",
                json!({ "name": format!("{name}-prov"), "kind": "anthropic", "domain": "api.anthropic.com" }),
            )
            .await;
        let pid = p.ok()["id"].as_str().unwrap().to_string();
        let r = self.post("/v1/agent-roles", json!({ "name": name, "provider_id": pid })).await;
        (pid, r.ok()["id"].as_str().unwrap().to_string(), name.to_string())
    }

    /// Create a workspace of `role_name` and wait for it to be idle; returns its id.
    pub async fn idle_workspace(&self, role_name: &str, token: &str) -> String {
        let r = self
            .call(
                Method::POST,
                "/v1/workspaces?wait=true&timeout_ms=60000",
                Some(token),
                Some(json!({ "role_name": role_name })),
            )
            .await;
        let ws = r.ok();
        assert_eq!(ws["status"], "idle", "workspace did not become idle: {ws}");
        ws["id"].as_str().unwrap().to_string()
    }

    /// Poll until the workspace's status is `want` (or panic after `secs`).
    pub async fn wait_status(&self, id: &str, want: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let ws = self.get(&format!("/v1/workspaces/{id}")).await.json;
            if ws["status"] == want {
                return ws;
            }
            assert!(tokio::time::Instant::now() < deadline, "workspace {id} never reached {want}: {ws}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn put_file(&self, ws: &str, path: &str, bytes: Vec<u8>) -> Resp {
        self.raw(
            self.request(Method::PUT, &format!("/v1/workspaces/{ws}/sandbox/files/{path}"))
                .bearer_auth(&self.key)
                .header("content-type", "application/octet-stream")
                .body(bytes),
        )
        .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that panicked never called `stop`: kill its sandboxes (spares included) so nothing outlives the
        // test. Synchronously, by their records and command lines: this runs on the test's runtime thread, so nothing
        // that needs that runtime may be waited for here (a spare refill holds the lock `shutdown` waits for; waiting
        // turned a failed test into a five-minute hang that left a spare sandbox running).
        if self.server.is_some() {
            evershell_runtime::local::kill_all_sandboxes(&self.dir.path().join("pods"));
        }
        if let Some(t) = self.nft_table.take() {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "inet", &t])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

pub async fn remove_pods(app: &App) {
    if let Ok(pods) = app.runtime().list_pods().await {
        for p in pods {
            let _ = app.runtime().remove(p).await;
        }
    }
    app.runtime().shutdown().await;
}

/// A temp dir the server accepts as its data dir (`tempfile` creates `0755`; the server refuses what others can read).
pub fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

pub fn config(data_dir: &std::path::Path, db_url: &str) -> Config {
    let mut cfg = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_path_buf(),
        database_url: Some(db_url.to_string()),
        ..Config::default()
    };
    cfg.runtime.agent_binary = Some(agent_binary());
    cfg.reconciler.interval_ms = 500;
    // The in-process egress proxy on an ephemeral port: tests run side by side.
    cfg.runtime.proxy_port = 0;
    cfg.runtime.dns_port = 0;
    // No test reaches a real model API: the providers' usual domains lead to a closed local port unless a test maps
    // them to its own scripted server.
    for host in ["api.anthropic.com", "api.openai.com"] {
        cfg.proxy.upstream_hosts.insert(host.into(), "127.0.0.1:9".into());
    }
    // The agents' model retries wait 10 ms, 20 ms, … (production: 1 s doubling), so a task against that closed port
    // fails with `model_error` in well under a second instead of half a minute.
    cfg.agent.model_retry_base_ms = Some(10);
    cfg
}

async fn into_resp(res: reqwest::Response) -> Resp {
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Resp { status, headers, json, bytes }
}
