//! A task end to end through the real server: a networked pod running the real agent, its model calls going
//! through the in-process egress proxy (which injects the provider's key) to the scripted model server, served over
//! HTTPS on loopback with a test-CA leaf the proxy trusts (`proxy.upstream_ca_file`; the provider's domain mapped by
//! `proxy.upstream_hosts`). The pods' DNS is the server's own responder, which answers the provider's domain (its
//! policy allows it) with the proxy's stand-in address. Both wire formats: an `anthropic` provider (`x-api-key`) and an `openai` one (`Authorization: Bearer`).
//! Needs root with `ip`/`nft` (networked pods); skipped otherwise.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evershell_agent::testing::{Reply, ScriptedCall, ScriptedModel};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::TestServer;

const KEY: &str = "sk-ant-taskrun-51c9";
const DOMAIN: &str = "api.anthropic.com";

pub(crate) fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && ["nft", "ip"]
        .iter()
        .all(|t| Command::new(t).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
}

/// A TLS front on 127.0.0.1 for `backend` (plain HTTP), with a leaf for `names` signed by a fresh test CA: its
/// address and the CA's PEM.
async fn tls_front(backend: SocketAddr, names: &[&str]) -> (SocketAddr, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test model CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let tls =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![leaf.der().clone()], key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(mut tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(s)).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (addr, ca_cert.pem())
}

pub(crate) struct Setup {
    pub(crate) ts: TestServer,
    pub(crate) model: ScriptedModel,
    pub(crate) _ca_dir: tempfile::TempDir,
}

async fn setup(kind: &str, domain: &str) -> Setup {
    setup_with(kind, domain, |_| {}).await
}

/// `setup` with a further change to the server's configuration.
pub(crate) async fn setup_with(kind: &str, domain: &str, tweak: impl FnOnce(&mut evershell::config::Config)) -> Setup {
    let model = ScriptedModel::start().await;
    let (front, ca_pem) = tls_front(model.addr, &[domain]).await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("model-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let ts = TestServer::start_with(|cfg| {
        cfg.proxy.upstream_hosts.insert(domain.into(), front.to_string());
        cfg.proxy.upstream_ca_file = Some(ca_file.clone());
        tweak(cfg);
    })
    .await;
    let owner = ts.login(&ts.owner_email.clone()).await;
    ts.call(
        Method::POST,
        "/v1/credentials",
        Some(&owner),
        Some(json!({"name": "model-key", "provider": kind, "kind": "api_key", "api_key": KEY})),
    )
    .await
    .ok();
    let p = ts
        .post(
            "/v1/providers",
            json!({"name": "models", "kind": kind, "domain": domain, "default_model": "claude-test",
                   "credential_name": "model-key"}),
        )
        .await;
    let pid = p.ok()["id"].as_str().unwrap().to_string();
    ts.post("/v1/agent-roles", json!({"name": "runner", "provider_id": pid})).await.ok();
    Setup { ts, model, _ca_dir: ca_dir }
}

pub(crate) async fn wait_task(ts: &TestServer, ws: &str, task: &str, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let t = ts.get(&format!("/v1/workspaces/{ws}/tasks/{task}")).await.ok().clone();
        if ["completed", "failed", "cancelled", "delivery_failed"].contains(&t["status"].as_str().unwrap_or("")) {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "task {task} never ended: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `GET path` until its `events` hold a row `pred` accepts; returns the rows.
async fn rows_until(ts: &TestServer, path: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = ts.get(path).await;
        let rows = r.ok()["events"].as_array().cloned().unwrap_or_default();
        if rows.iter().any(&pred) {
            return rows;
        }
        assert!(tokio::time::Instant::now() < deadline, "no matching row at {path}: {}", r.json);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn file_exists(ts: &TestServer, ws: &str, path: &str) -> bool {
    ts.get(&format!("/v1/workspaces/{ws}/sandbox/download/{path}")).await.status.is_success()
}

#[tokio::test]
async fn a_task_runs_bash_through_the_proxy_and_completes() {
    runs_bash_and_completes("anthropic", DOMAIN).await;
}

#[tokio::test]
async fn an_openai_task_runs_bash_through_the_proxy_and_completes() {
    runs_bash_and_completes("openai", "api.openai.com").await;
}

async fn runs_bash_and_completes(kind: &str, domain: &str) {
    if !can_run() {
        eprintln!("skipped: needs root with ip and nft");
        return;
    }
    let anthropic = kind == "anthropic";
    let Setup { ts, model, _ca_dir } = setup(kind, domain).await;
    // The tool call waits for a file the test writes, so the workspace is seen busy while the task runs.
    let cmd = "while [ ! -f /workspace/go ]; do sleep 0.05; done; echo hi > /workspace/out.txt";
    model.push(Reply::tools(vec![ScriptedCall::bash("call_1", cmd)]));
    model.push(Reply::text("wrote /workspace/out.txt"));

    let r =
        ts.post("/v1/tasks", json!({"role_name": "runner", "description": "run `echo hi > /workspace/out.txt`"})).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    let ws = r.json["workspace_id"].as_str().unwrap().to_string();
    let task = r.json["task_id"].as_str().unwrap().to_string();
    ts.wait_status(&ws, "busy", 120).await;
    tokio::time::timeout(Duration::from_secs(60), model.wait_requests(1)).await.expect("the model was called");
    ts.put_file(&ws, "go", b"".to_vec()).await.ok();

    let t = wait_task(&ts, &ws, &task, 120).await;
    assert_eq!(t["status"], "completed", "{t}");
    ts.wait_status(&ws, "idle", 30).await;
    let out = ts.get(&format!("/v1/workspaces/{ws}/sandbox/download/out.txt")).await;
    assert!(out.status.is_success(), "{}", out.status);
    assert_eq!(out.bytes, b"hi\n");

    // Every model request carried the injected key, once, and nothing the agent made up.
    let reqs = model.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    for q in &reqs {
        let of = |name: &str| q.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        if anthropic {
            assert_eq!(q.path, "/v1/messages");
            assert_eq!(of("x-api-key"), [KEY], "the proxy's key, exactly once");
            assert!(of("authorization").is_empty(), "{:?}", q.headers);
        } else {
            assert_eq!(q.path, "/v1/chat/completions");
            assert_eq!(of("authorization"), [format!("Bearer {KEY}")], "the proxy's key, exactly once");
            assert!(of("x-api-key").is_empty(), "{:?}", q.headers);
        }
        assert_eq!(q.body["model"], "claude-test");
    }
    reqs[1].assert_every_tool_use_has_result();

    // The agent's activity rows for the task, and the proxy's row for the model call.
    let agent_rows = rows_until(&ts, &format!("/v1/audit?filter=actor=agent&filter=task_id={task}&limit=200"), |r| {
        r["event_type"] == "task_completed"
    })
    .await;
    assert!(agent_rows.iter().all(|r| r["actor"] == "agent" && r["task_id"] == task.as_str()), "{agent_rows:?}");
    let egress = rows_until(&ts, "/v1/audit?filter=event_type=egress_request&limit=200", |r| {
        r["destination"] == format!("{domain}:443") && r["decision"] == "allow"
    })
    .await;
    assert!(egress.iter().all(|r| r["workspace_id"] == ws.as_str()), "{egress:?}");
    let all = ts.get("/v1/audit?limit=1000").await;
    assert!(!String::from_utf8_lossy(&all.bytes).contains(KEY), "the key reached the audit log");
    ts.stop().await;
}

#[tokio::test]
async fn a_cancel_during_a_long_tool_call_ends_the_task_within_the_grace() {
    if !can_run() {
        eprintln!("skipped: needs root with ip and nft");
        return;
    }
    let Setup { ts, model, _ca_dir } = setup("anthropic", DOMAIN).await;
    model.push(Reply::tools(vec![ScriptedCall::bash("call_1", "touch /workspace/started; sleep 300")]));
    let r = ts.post("/v1/tasks", json!({"role_name": "runner", "description": "sleep"})).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    let ws = r.json["workspace_id"].as_str().unwrap().to_string();
    let task = r.json["task_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !file_exists(&ts, &ws, "started").await {
        assert!(Instant::now() < deadline, "the tool call never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asked = Instant::now();
    let c = ts.post_empty(&format!("/v1/workspaces/{ws}/task/cancel")).await;
    assert!(c.status.is_success(), "{} {}", c.status, c.json);
    let t = wait_task(&ts, &ws, &task, 60).await;
    assert_eq!(t["status"], "cancelled", "{t}");
    // The grace is 10 s: the sleep is ended then at the latest, never held for its 300 s.
    assert!(asked.elapsed() < Duration::from_secs(20), "took {:?}", asked.elapsed());
    ts.wait_status(&ws, "idle", 30).await;
    ts.stop().await;
}
