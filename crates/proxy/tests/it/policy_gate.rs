//! `PolicyGate` over an in-memory `Directory`, with real sockets: a real proxy, a real TLS upstream (`api.test`)
//! that echoes what it received, a real OAuth2 token endpoint (`auth.test`), and clients that trust the platform CA.
//! The client connects from 127.0.0.1, which the directory maps to one workspace's pod.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use evershell_core::audit::AuditEvent;
use evershell_core::ids::{OrgId, PodId, TaskId, WorkspaceId};
use evershell_core::lifecycle::WorkspaceStatus;
use evershell_core::policy::{Counter, CredentialMaterial, Policy};
use evershell_core::{FieldErrors, Timestamp};
use evershell_proxy::audit_sink::AuditSinkConfig;
use evershell_proxy::{
    BudgetKey, BudgetMove, ClientCredentialsGrant, CredentialForUse, Directory, MintResult, PodIdentity, PolicyGate,
    PolicyGateConfig, ProxyConfig, ProxyServer,
};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::harness::{TestBody, full, handshake_h1, install_provider};

// ---- the in-memory directory -----------------------------------------------------------------------------------

#[derive(Default)]
struct FakeDir {
    identity: Mutex<Option<PodIdentity>>,
    creds: Mutex<HashMap<String, CredentialForUse>>,
    secrets: Mutex<HashMap<String, String>>,
    counters: Mutex<HashMap<BudgetKey, Counter>>,
    mints: Mutex<Vec<(String, MintResult)>>,
    rows: Mutex<Vec<AuditEvent>>,
    batches: AtomicUsize,
    changed: Notify,
}

impl FakeDir {
    async fn wait_rows(&self, n: usize) -> Vec<AuditEvent> {
        loop {
            let notified = self.changed.notified();
            {
                let rows = self.rows.lock().unwrap();
                if rows.len() >= n {
                    return rows.clone();
                }
            }
            notified.await;
        }
    }
}

#[async_trait::async_trait]
impl Directory for FakeDir {
    async fn identity(&self, addr: IpAddr) -> evershell_core::Result<Option<PodIdentity>> {
        Ok(if addr == IpAddr::V4(Ipv4Addr::LOCALHOST) { self.identity.lock().unwrap().clone() } else { None })
    }
    async fn secret(&self, _org: OrgId, name: &str) -> evershell_core::Result<Option<String>> {
        Ok(self.secrets.lock().unwrap().get(name).cloned())
    }
    async fn credential(
        &self,
        _org: OrgId,
        name: &str,
        _user: Option<evershell_core::ids::UserId>,
    ) -> evershell_core::Result<CredentialForUse> {
        Ok(self.creds.lock().unwrap().get(name).cloned().unwrap_or(CredentialForUse::Unavailable))
    }
    async fn record_mint(&self, _org: OrgId, id: &str, result: &MintResult) -> evershell_core::Result<()> {
        self.mints.lock().unwrap().push((id.to_string(), result.clone()));
        Ok(())
    }
    async fn budget_counters(&self, keys: &[BudgetKey]) -> evershell_core::Result<Vec<Counter>> {
        let c = self.counters.lock().unwrap();
        Ok(keys.iter().map(|k| c.get(k).copied().unwrap_or_default()).collect())
    }
    async fn charge_budgets(&self, moves: &[BudgetMove]) -> evershell_core::Result<bool> {
        // Yield first so concurrent requests really interleave between their read and their write.
        tokio::task::yield_now().await;
        let mut c = self.counters.lock().unwrap();
        if moves.iter().any(|m| c.get(&m.key).copied().unwrap_or_default() != m.seen) {
            return Ok(false);
        }
        for m in moves {
            c.insert(m.key.clone(), m.new);
        }
        Ok(true)
    }
    async fn add_budget_bytes(&self, key: &BudgetKey, bytes: u64) -> evershell_core::Result<()> {
        let mut c = self.counters.lock().unwrap();
        let e = c.entry(key.clone()).or_default();
        e.bytes += bytes;
        Ok(())
    }
    async fn write_audit(&self, rows: Vec<AuditEvent>) -> evershell_core::Result<()> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.rows.lock().unwrap().extend(rows);
        self.changed.notify_waiters();
        Ok(())
    }
}

// ---- the upstream and token endpoint ---------------------------------------------------------------------------

#[derive(Default)]
struct TokenServer {
    mints: AtomicUsize,
    /// What the last mint request carried (`Authorization` and body).
    last: Mutex<Option<(String, String)>>,
}

async fn upstream(req: Request<Incoming>, tokens: Arc<TokenServer>) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), serde_json::json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    if path == "/token" {
        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = String::from_utf8_lossy(&req.into_body().collect().await.unwrap().to_bytes()).into_owned();
        *tokens.last.lock().unwrap() = Some((auth.clone(), body));
        use base64::Engine as _;
        let good = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("client-1:s3cret"));
        if auth != good {
            return Ok(Response::builder()
                .status(401)
                .header("content-type", "application/json")
                .body(full(r#"{"error":"invalid_client"}"#))
                .unwrap());
        }
        let n = tokens.mints.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!(r#"{{"access_token":"minted-{n}","token_type":"Bearer","expires_in":3600}}"#);
        return Ok(Response::builder().header("content-type", "application/json").body(full(body)).unwrap());
    }
    let body = serde_json::json!({"path": path, "query": query, "headers": headers}).to_string();
    Ok(Response::builder().header("content-type", "application/json").body(full(body)).unwrap())
}

struct Env {
    proxy: Option<ProxyServer>,
    gate: Arc<PolicyGate<FakeDir>>,
    dir: Arc<FakeDir>,
    tokens: Arc<TokenServer>,
    roots: Arc<rustls::RootCertStore>,
    _tmp: tempfile::TempDir,
}

const CAPS: &str = r#"
- name: api
  allow:
    - name: read
      domains: ["api.test"]
      methods: [GET]
      paths: ["/v1/**"]
    - name: write
      domains: ["api.test"]
      methods: [POST]
      paths: ["/v1/items"]
  transforms:
    - auth: { credential: api-key }
    - headers:
        set: { X-Tenant: 'tenant=${secrets["tenant-id"]}' }
        remove: [X-Debug]
- name: counted
  allow:
    - domains: ["count.test"]
      methods: [GET]
  budgets:
    per_workspace: { requests: 5 }
- name: tasked
  allow:
    - domains: ["task.test"]
      methods: [GET]
  budgets:
    per_task: { requests: 10 }
    per_workspace: { requests: 25 }
- name: forms
  allow:
    - name: q
      domains: ["query.test"]
      methods: [GET]
    - name: b
      domains: ["basic.test"]
      methods: [GET]
    - name: o
      domains: ["oauth.test"]
      methods: [GET]
  transforms:
    - auth: { credential: query-key }
      applies_to: [q]
    - auth: { credential: basic-cred }
      applies_to: [b]
    - auth: { credential: oauth-cred }
      applies_to: [o]
"#;

fn identity(status: WorkspaceStatus, expires_in_ms: i64) -> PodIdentity {
    let mut errs = FieldErrors::default();
    let caps = evershell_core::caps::parse(&mut errs, "caps", Some(CAPS));
    assert!(errs.is_empty(), "{errs:?}");
    PodIdentity {
        org_id: OrgId::new(),
        workspace_id: WorkspaceId::new(),
        workspace_status: status,
        pod_id: PodId::new(),
        task_id: None,
        role: "coder".into(),
        provider: Some("anthropic".into()),
        user_id: None,
        policy: Ok(Arc::new(Policy::merge(None, [caps]))),
        capability_expires_at: Some(Timestamp::now().plus_millis(expires_in_ms)),
    }
}

async fn start(audit: AuditSinkConfig) -> Env {
    start_with(PolicyGateConfig { identity_ttl: Duration::ZERO, audit, ..Default::default() }).await
}

async fn start_with(gcfg: PolicyGateConfig) -> Env {
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let names = ["api.test", "auth.test", "count.test", "query.test", "basic.test", "oauth.test", "task.test"];
    let leaf = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let ca_file = tmp.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up: SocketAddr = listener.local_addr().unwrap();
    let tokens = Arc::new(TokenServer::default());
    {
        let tokens = tokens.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, tokens) = (acceptor.clone(), tokens.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = service_fn(move |req| upstream(req, tokens.clone()));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
    }
    let mut config = ProxyConfig::new(tmp.path().join("ca"));
    config.upstream_ca_file = Some(ca_file);
    config.system_roots = false;
    config.upstream_hosts = names.iter().map(|n| (n.to_string(), up)).collect();
    let dir = Arc::new(FakeDir::default());
    *dir.identity.lock().unwrap() = Some(identity(WorkspaceStatus::Idle, 60_000));
    dir.creds.lock().unwrap().insert(
        "api-key".into(),
        CredentialForUse::Ready(CredentialMaterial::ApiKey {
            key: "sk-live-123".into(),
            header: Some("x-api-key".into()),
        }),
    );
    dir.secrets.lock().unwrap().insert("tenant-id".into(), "t-42".into());
    let gate = Arc::new(PolicyGate::new(dir.clone(), &config, gcfg).unwrap());
    let proxy = ProxyServer::bind("127.0.0.1:0".parse().unwrap(), config, gate.clone()).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(proxy.ca().cert_der().clone()).unwrap();
    Env { proxy: Some(proxy), gate, dir, tokens, roots: Arc::new(roots), _tmp: tmp }
}

impl Env {
    async fn client(&self, sni: &str) -> hyper::client::conn::http1::SendRequest<TestBody> {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        let tcp = TcpStream::connect(self.proxy.as_ref().unwrap().local_addr()).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
            .await
            .unwrap();
        handshake_h1(tls).await
    }

    /// One request on a fresh connection: (status, JSON body).
    async fn send(&self, sni: &str, req: Request<TestBody>) -> (StatusCode, serde_json::Value) {
        let mut c = self.client(sni).await;
        let resp = c.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}")))
    }

    async fn get(&self, host: &str, target: &str) -> (StatusCode, serde_json::Value) {
        self.send(host, req("GET", host, target)).await
    }
}

fn req(method: &str, host: &str, target: &str) -> Request<TestBody> {
    Request::builder().method(method).uri(target).header("host", host).body(full(Bytes::new())).unwrap()
}

fn details(row: &AuditEvent) -> &serde_json::Value {
    row.details.as_ref().unwrap()
}

// ---- the tests -------------------------------------------------------------------------------------------------

#[tokio::test]
async fn allowed_request_is_forwarded_with_its_transforms_and_audited() {
    let env = start(AuditSinkConfig::default()).await;
    let r = Request::builder()
        .uri("/v1/things?limit=2")
        .header("host", "api.test")
        .header("x-api-key", "agent-made-this-up")
        .header("x-debug", "1")
        .header("x-keep", "yes")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, seen) = env.send("api.test", r).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["path"], "/v1/things");
    assert_eq!(seen["query"], "limit=2");
    assert_eq!(seen["headers"]["x-api-key"], "sk-live-123", "the credential replaced what the agent sent");
    assert_eq!(seen["headers"]["x-tenant"], "tenant=t-42", "the secret was rendered into the header");
    assert_eq!(seen["headers"]["x-keep"], "yes");
    assert!(seen["headers"].get("x-debug").is_none(), "removed header reached the upstream");

    let rows = env.dir.wait_rows(1).await;
    let row = &rows[0];
    assert_eq!(row.event_type.as_str(), "egress_request");
    assert_eq!(row.actor.as_str(), "policy-engine");
    assert_eq!(row.category.as_str(), "activity");
    assert_eq!(row.destination.as_deref(), Some("api.test:443"));
    assert_eq!(row.method.as_deref(), Some("GET"));
    assert_eq!(row.path.as_deref(), Some("/v1/things?limit=2"));
    assert_eq!(row.decision.as_deref(), Some("allow"));
    let d = details(row);
    assert_eq!(d["capability"], "api");
    assert_eq!(d["rule"], "read");
    assert_eq!(d["transforms"], serde_json::json!(["auth:api-key", "headers:-X-Debug,+X-Tenant"]));
    assert_eq!(d["status"], 200);
    assert!(d["bytes_down"].as_u64().unwrap() > 0);
    assert_eq!(d["phase"], "request");
    let text = serde_json::to_string(row).unwrap();
    assert!(!text.contains("sk-live-123") && !text.contains("t-42"), "a secret reached the audit row: {text}");
}

#[tokio::test]
async fn denied_hosts_methods_and_path_tricks() {
    let env = start(AuditSinkConfig::default()).await;
    // A host no rule names (routed nowhere: the gate denies before any dial).
    let (s, b) = env.get("nowhere.test", "/").await;
    assert_eq!((s, b["error"]["details"]["reason"].as_str()), (StatusCode::FORBIDDEN, Some("no_rule")), "{b}");
    let (s, b) = env.send("api.test", req("DELETE", "api.test", "/v1/things")).await;
    assert_eq!((s, b["error"]["details"]["reason"].as_str()), (StatusCode::FORBIDDEN, Some("method")), "{b}");
    assert_eq!(b["error"]["details"]["capability"], "api");
    for trick in ["/v1/../admin", "/v1/%2e%2e/admin", "/v1/%2E%2e/%2e%2E/admin", "/v1/./../admin"] {
        let (s, b) = env.get("api.test", trick).await;
        assert_eq!(
            (s, b["error"]["details"]["reason"].as_str()),
            (StatusCode::FORBIDDEN, Some("path")),
            "{trick}: {b}"
        );
    }
    // `//` collapses, `.` and `..` inside the allowed tree resolve: what is forwarded is what was matched.
    let (s, b) = env.get("api.test", "//v1//a/./b/../c").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["path"], "/v1/a/c");
    // SNI of an allowed host, Host of another: fronting, refused and audited.
    let (s, b) = env.send("api.test", req("GET", "count.test", "/v1/x")).await;
    assert_eq!((s, b["error"]["details"]["reason"].as_str()), (StatusCode::FORBIDDEN, Some("domain_fronting")));
    let rows = env.dir.wait_rows(8).await;
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
    assert!(reasons.contains(&Some("method")) && reasons.contains(&Some("path")), "{reasons:?}");
    assert!(reasons.contains(&Some("domain_fronting")), "{reasons:?}");
}

#[tokio::test]
async fn unknown_peer_stopped_workspace_and_expired_token_are_denied() {
    let env = start(AuditSinkConfig::default()).await;
    *env.dir.identity.lock().unwrap() = None;
    let (s, b) = env.get("api.test", "/v1/x").await;
    assert_eq!((s, b["error"]["details"]["reason"].as_str()), (StatusCode::FORBIDDEN, Some("unknown_peer")));
    *env.dir.identity.lock().unwrap() = Some(identity(WorkspaceStatus::Stopped, 60_000));
    let (s, b) = env.get("api.test", "/v1/x").await;
    assert_eq!((s, b["error"]["details"]["reason"].as_str()), (StatusCode::FORBIDDEN, Some("workspace_not_running")));
    *env.dir.identity.lock().unwrap() = Some(identity(WorkspaceStatus::Busy, -1));
    let (s, b) = env.get("api.test", "/v1/x").await;
    assert_eq!((s, b["error"]["details"]["reason"].as_str()), (StatusCode::FORBIDDEN, Some("capability_invalid")));
    let mut none = identity(WorkspaceStatus::Idle, 0);
    none.capability_expires_at = None;
    *env.dir.identity.lock().unwrap() = Some(none);
    let (s, b) = env.get("api.test", "/v1/x").await;
    assert_eq!((s, b["error"]["details"]["reason"].as_str()), (StatusCode::FORBIDDEN, Some("capability_invalid")));
}

#[tokio::test]
async fn budget_admits_exactly_its_ceiling_under_concurrency() {
    let env = Arc::new(start(AuditSinkConfig::default()).await);
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move { env.get("count.test", "/").await }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (s, b) = t.await.unwrap();
        match s {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(b["error"]["code"], "budget_exceeded");
                assert_eq!(b["error"]["details"]["budget"], "counted.per_workspace");
                refused += 1;
            }
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert_eq!((ok, refused), (5, 19));
    let rows = env.dir.wait_rows(24).await;
    assert_eq!(rows.iter().filter(|r| r.reason.as_deref() == Some("budget_exceeded")).count(), 19);
    let c = env.dir.counters.lock().unwrap().values().copied().collect::<Vec<_>>();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].requests, 5);
    assert!(c[0].bytes > 0, "response bytes were added to the counter afterwards");
}

#[tokio::test]
async fn query_and_basic_forms_reach_the_upstream_and_the_query_key_is_redacted() {
    let env = start(AuditSinkConfig::default()).await;
    env.dir.creds.lock().unwrap().insert(
        "query-key".into(),
        CredentialForUse::Ready(CredentialMaterial::QueryApiKey { key: "qk-secret".into(), param: Some("key".into()) }),
    );
    env.dir.creds.lock().unwrap().insert(
        "basic-cred".into(),
        CredentialForUse::Ready(CredentialMaterial::BasicAuth { username: "bob".into(), password: "pw".into() }),
    );
    let (s, b) = env.get("query.test", "/search?q=x&key=agent").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["query"], "q=x&key=qk-secret");
    let (s, b) = env.get("basic.test", "/").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["headers"]["authorization"], "Basic Ym9iOnB3");
    let rows = env.dir.wait_rows(2).await;
    let q = rows.iter().find(|r| r.destination.as_deref() == Some("query.test:443")).unwrap();
    assert_eq!(q.path.as_deref(), Some("/search?q=x&key=REDACTED"));
    assert!(!serde_json::to_string(&rows).unwrap().contains("qk-secret"));
}

#[tokio::test]
async fn a_deleted_credential_denies_with_auth_unavailable() {
    let env = start(AuditSinkConfig::default()).await;
    let (s, _) = env.get("api.test", "/v1/x").await;
    assert_eq!(s, StatusCode::OK);
    env.dir.creds.lock().unwrap().remove("api-key");
    let (s, b) = env.get("api.test", "/v1/x").await;
    assert_eq!((s, b["error"]["details"]["reason"].as_str()), (StatusCode::FORBIDDEN, Some("auth_unavailable")), "{b}");
    let rows = env.dir.wait_rows(2).await;
    let denied = rows.iter().find(|r| r.decision.as_deref() == Some("deny")).unwrap();
    assert_eq!(denied.reason.as_deref(), Some("auth_unavailable"));
    assert_eq!(details(denied)["auth_failures"]["api-key"], "auth_unavailable");
}

#[tokio::test]
async fn oauth2_tokens_are_minted_cached_and_a_refused_client_needs_reauth() {
    let env = start(AuditSinkConfig::default()).await;
    let grant = ClientCredentialsGrant {
        credential_id: "cred_1".into(),
        version: "v1".into(),
        token_url: "https://auth.test/token".into(),
        client_id: "client-1".into(),
        client_secret: "s3cret".into(),
        scopes: vec!["read".into(), "write".into()],
    };
    env.dir.creds.lock().unwrap().insert("oauth-cred".into(), CredentialForUse::ClientCredentials(grant.clone()));
    let (s, b) = env.get("oauth.test", "/a").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["headers"]["authorization"], "Bearer minted-1");
    let (_, last_body) = env.tokens.last.lock().unwrap().clone().unwrap();
    assert_eq!(last_body, "grant_type=client_credentials&scope=read%20write");
    let (s, b) = env.get("oauth.test", "/b").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["headers"]["authorization"], "Bearer minted-1", "the cached token is reused");
    assert_eq!(env.tokens.mints.load(Ordering::SeqCst), 1);
    assert_eq!(*env.dir.mints.lock().unwrap(), [("cred_1".to_string(), MintResult::Minted)]);

    // A replaced credential whose secret the endpoint refuses: no bare request, needs_reauth recorded.
    let bad = ClientCredentialsGrant {
        credential_id: "cred_2".into(),
        client_secret: "wrong".into(),
        version: "v2".into(),
        ..grant
    };
    env.dir.creds.lock().unwrap().insert("oauth-cred".into(), CredentialForUse::ClientCredentials(bad));
    let (s, b) = env.get("oauth.test", "/c").await;
    assert_eq!((s, b["error"]["details"]["reason"].as_str()), (StatusCode::FORBIDDEN, Some("auth_unavailable")), "{b}");
    assert_eq!(
        env.dir.mints.lock().unwrap().last().unwrap(),
        &("cred_2".to_string(), MintResult::Terminal("invalid_client".into()))
    );
    let rows = env.dir.wait_rows(3).await;
    let minted = rows.iter().find(|r| r.path.as_deref() == Some("/a")).unwrap();
    assert_eq!(details(minted)["credentials_minted"], serde_json::json!(["oauth-cred"]));
    let failed = rows.iter().find(|r| r.path.as_deref() == Some("/c")).unwrap();
    assert_eq!(details(failed)["auth_failures"]["oauth-cred"], "needs_reauth");
    assert!(!serde_json::to_string(&rows).unwrap().contains("minted-1"), "a token reached the audit");
}

#[tokio::test]
async fn audit_rows_are_batched_and_flushed_on_shutdown() {
    // A writer that would wait a minute before writing a partial batch: only the shutdown flush can write.
    let env = start(AuditSinkConfig { capacity: 64, batch: 1000, flush_every: Duration::from_secs(60) }).await;
    for i in 0..3 {
        let (s, _) = env.get("api.test", &format!("/v1/{i}")).await;
        assert_eq!(s, StatusCode::OK);
    }
    assert_eq!(env.dir.batches.load(Ordering::SeqCst), 0, "rows were written per request");
    let mut env = env;
    env.proxy.take().unwrap().shutdown().await;
    // The exchanges' records are handed over when their bodies end; wait until all three are queued.
    wait_until(|| env.gate.audit_rows_queued() == 3).await;
    env.gate.shutdown().await;
    let rows = env.dir.rows.lock().unwrap().clone();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(env.dir.batches.load(Ordering::SeqCst), 1, "the three rows went in one batch");
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    while !f() {
        tokio::task::yield_now().await;
    }
}

// ---- DNS over the same policy ----------------------------------------------------------------------------------

async fn dns_ask(from: &str, server: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let sock = tokio::net::UdpSocket::bind(format!("{from}:0")).await.unwrap();
    sock.send_to(msg, server).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf)).await.expect("no DNS answer").unwrap();
    buf[..n].to_vec()
}

#[tokio::test]
async fn dns_answers_only_names_the_pods_policy_allows_and_audits_the_rest() {
    use evershell_proxy::dns::{parse_response, query};
    use evershell_proxy::{DnsConfig, DnsServer, PolicyDns};
    let env = start(AuditSinkConfig { flush_every: Duration::from_millis(10), ..Default::default() }).await;
    let config = DnsConfig { upstream_hosts: ["api.test".to_string()].into(), ..DnsConfig::default() };
    let dns = DnsServer::bind("127.0.0.1:0".parse().unwrap(), config, Arc::new(PolicyDns::new(env.gate.clone())))
        .await
        .unwrap();
    let at = dns.local_addr();
    // Allowed by the `api` capability: answered (a mapped name: the stand-in address, no lookup).
    let r = dns_ask("127.0.0.1", at, &query(1, "API.test", 1)).await;
    assert_eq!(parse_response(&r), Some((1, 0, vec![Ipv4Addr::new(192, 0, 2, 1)])));
    // A name no rule could match, over UDP and TCP: NXDOMAIN, never looked up, one audit row each.
    let r = dns_ask("127.0.0.1", at, &query(2, "c2VjcmV0.evil.example", 1)).await;
    assert_eq!(parse_response(&r), Some((2, 3, vec![])));
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(at).await.unwrap();
        let q = query(3, "test", 16);
        let mut msg = (q.len() as u16).to_be_bytes().to_vec();
        msg.extend_from_slice(&q);
        s.write_all(&msg).await.unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
        let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(parse_response(&r), Some((3, 3, vec![])));
    }
    // Another address is nobody: NXDOMAIN, and no row (it has no org).
    let r = dns_ask("127.0.0.2", at, &query(4, "api.test", 1)).await;
    assert_eq!(parse_response(&r), Some((4, 3, vec![])));
    // A stopped workspace resolves nothing, not even its allowed names.
    *env.dir.identity.lock().unwrap() = Some(identity(WorkspaceStatus::Stopped, 60_000));
    let r = dns_ask("127.0.0.1", at, &query(5, "api.test", 1)).await;
    assert_eq!(parse_response(&r), Some((5, 3, vec![])));
    assert_eq!(dns.lookups(), 0, "a denied name reached the host's resolver");
    dns.shutdown().await;
    env.gate.shutdown().await;
    let rows: Vec<AuditEvent> = env
        .dir
        .rows
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.event_type == evershell_core::audit::EventType::EgressDnsDenied)
        .cloned()
        .collect();
    let seen: Vec<(Option<&str>, Option<&str>, &serde_json::Value, &serde_json::Value)> = rows
        .iter()
        .map(|r| (r.destination.as_deref(), r.reason.as_deref(), &details(r)["qtype"], &details(r)["transport"]))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Some("c2vjcmv0.evil.example"), Some("host_not_allowed"), &serde_json::json!(1), &serde_json::json!("udp")),
            (Some("test"), Some("host_not_allowed"), &serde_json::json!(16), &serde_json::json!("tcp")),
            (Some("api.test"), Some("workspace_not_running"), &serde_json::json!(1), &serde_json::json!("udp")),
        ]
    );
    for r in &rows {
        assert_eq!(
            (r.actor, r.category, r.decision.as_deref()),
            (evershell_core::audit::Actor::PolicyEngine, evershell_core::audit::Category::Activity, Some("deny"))
        );
        assert!(r.workspace_id.is_some());
    }
}

// ---- per-task identity and budgets ---------------------------------------------------------------------------

/// Set the pod's running task (ttl-zero gates see it on the next request).
fn run_task(env: &Env, task: Option<TaskId>) {
    env.dir.identity.lock().unwrap().as_mut().unwrap().task_id = task;
}

/// `n` concurrent requests to `task.test{path}`: how many passed, and the budget each refusal named.
async fn burst(env: &Arc<Env>, path: &str, n: usize) -> (usize, Vec<String>) {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (env, path) = (env.clone(), path.to_string());
            tokio::spawn(async move { env.get("task.test", &path).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, Vec::new());
    for h in handles {
        let (s, b) = h.await.unwrap();
        match s {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(b["error"]["code"], "budget_exceeded", "{b}");
                refused.push(b["error"]["details"]["budget"].as_str().unwrap().to_string());
            }
            other => panic!("unexpected {other}: {b}"),
        }
    }
    (ok, refused)
}

#[tokio::test]
async fn per_task_budget_admits_exactly_its_ceiling_per_task_and_the_workspace_budget_spans_tasks() {
    let env = Arc::new(start(AuditSinkConfig::default()).await);
    let (a, b, c) = (TaskId::new(), TaskId::new(), TaskId::new());
    // Task a: 32 at once against a per-task ceiling of 10.
    run_task(&env, Some(a));
    let (ok, refused) = burst(&env, "/a", 32).await;
    assert_eq!(ok, 10);
    assert_eq!(refused, vec!["tasked.per_task".to_string(); 22]);
    // Task b starts from zero.
    run_task(&env, Some(b));
    let (ok, refused) = burst(&env, "/b", 32).await;
    assert_eq!(ok, 10);
    assert!(refused.iter().all(|r| r == "tasked.per_task"), "{refused:?}");
    // Task c: the workspace's ceiling of 25 leaves it 5, whatever its own budget says.
    run_task(&env, Some(c));
    let (ok, refused) = burst(&env, "/c", 32).await;
    assert_eq!(ok, 5);
    assert!(refused.iter().all(|r| r == "tasked.per_workspace"), "{refused:?}");

    let who = env.dir.identity.lock().unwrap().clone().unwrap();
    let counter = |scope: String, name: &str| {
        env.dir.counters.lock().unwrap().get(&BudgetKey { scope, name: name.into() }).copied().unwrap_or_default()
    };
    assert_eq!(counter(a.to_string(), "tasked.per_task").requests, 10);
    assert_eq!(counter(b.to_string(), "tasked.per_task").requests, 10);
    assert_eq!(counter(c.to_string(), "tasked.per_task").requests, 5);
    assert_eq!(counter(who.workspace_id.to_string(), "tasked.per_workspace").requests, 25);

    // Every row carries the task it was made under, and the allowed ones their counters.
    let rows = env.dir.wait_rows(96).await;
    for (path, task, allowed) in [("/a", a, 10), ("/b", b, 10), ("/c", c, 5)] {
        let of: Vec<&AuditEvent> = rows.iter().filter(|r| r.path.as_deref() == Some(path)).collect();
        assert_eq!(of.len(), 32, "{path}");
        assert!(of.iter().all(|r| r.task_id == Some(task)), "{path}");
        let passed: Vec<&&AuditEvent> = of.iter().filter(|r| r.decision.as_deref() == Some("allow")).collect();
        assert_eq!(passed.len(), allowed, "{path}");
        for r in passed {
            let n = details(r)["budgets"]["tasked.per_task"]["requests"].as_u64().unwrap();
            assert!((1..=allowed as u64).contains(&n), "{path}: {:?}", r.details);
        }
        let denied = of.iter().filter(|r| r.reason.as_deref() == Some("budget_exceeded")).count();
        assert_eq!(denied, 32 - allowed, "{path}");
    }
}

#[tokio::test]
async fn between_tasks_requests_are_the_pods_and_count_per_pod() {
    let env = Arc::new(start(AuditSinkConfig::default()).await);
    run_task(&env, None);
    let (ok, refused) = burst(&env, "/none", 12).await;
    assert_eq!((ok, refused.len()), (10, 2));
    let who = env.dir.identity.lock().unwrap().clone().unwrap();
    let key = BudgetKey { scope: who.pod_id.to_string(), name: "tasked.per_task".into() };
    assert_eq!(env.dir.counters.lock().unwrap().get(&key).copied().unwrap_or_default().requests, 10);
    // A task then starts from zero.
    run_task(&env, Some(TaskId::new()));
    let (ok, _) = burst(&env, "/task", 3).await;
    assert_eq!(ok, 3);
    let rows = env.dir.wait_rows(15).await;
    assert!(rows.iter().filter(|r| r.path.as_deref() == Some("/none")).all(|r| r.task_id.is_none()));
    assert!(rows.iter().filter(|r| r.path.as_deref() == Some("/task")).all(|r| r.task_id.is_some()));
}

#[tokio::test]
async fn a_cached_task_identity_outlives_the_task_end_by_at_most_the_identity_ttl() {
    let ttl = Duration::from_secs(2);
    let env = start_with(PolicyGateConfig { identity_ttl: ttl, ..Default::default() }).await;
    let task = TaskId::new();
    run_task(&env, Some(task));
    let before = tokio::time::Instant::now();
    let (s, b) = env.get("api.test", "/v1/during").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // The task ends: the directory now answers the pod without it.
    run_task(&env, None);
    let ended = tokio::time::Instant::now();
    let (s, b) = env.get("api.test", "/v1/cached").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let recent = before.elapsed() < ttl;
    // A request with a per-task budget asks afresh: it is never charged to the ended task.
    let (s, b) = env.get("task.test", "/fresh").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Once `ttl` has passed since the end, no request is made under the task.
    tokio::time::sleep_until(ended + ttl).await;
    let (s, b) = env.get("api.test", "/v1/after").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let rows = env.dir.wait_rows(4).await;
    let task_of = |p: &str| rows.iter().find(|r| r.path.as_deref() == Some(p)).unwrap().task_id;
    assert_eq!(task_of("/v1/during"), Some(task));
    if recent {
        // Within `ttl` of the lookup the cached identity still names the task: the cache is what bounds it.
        assert_eq!(task_of("/v1/cached"), Some(task));
    }
    assert_eq!(task_of("/fresh"), None);
    let who = env.dir.identity.lock().unwrap().clone().unwrap();
    let key = BudgetKey { scope: who.pod_id.to_string(), name: "tasked.per_task".into() };
    assert_eq!(env.dir.counters.lock().unwrap().get(&key).map(|c| c.requests), Some(1));
    assert_eq!(task_of("/v1/after"), None, "a task's identity outlived its end by more than identity_ttl");
}
