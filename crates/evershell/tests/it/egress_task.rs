//! Per-task egress identity and budgets through the real server: a networked pod running the real agent, whose
//! scripted model (over HTTPS through the in-process proxy, as in `task_run.rs`) makes it run `curl` five times
//! against `metered.example.test` (mapped by `proxy.upstream_hosts` to a local HTTPS upstream signed by the same test
//! CA), whose capability has `per_task: {requests: 3}` and `per_workspace: {requests: 5}`. The first task gets
//! exactly 3 through and 2 × 429 naming `metered.per_task`; a second task on the same workspace starts its own
//! budget afresh but the workspace's ceiling leaves it 2, the rest 429 naming `metered.per_workspace`. The proxy's
//! rows carry each task's id, with their budget counters, through `GET /v1/audit` and the workspace's activity
//! filtered by task. Needs root with `ip`, `nft` and curl; skipped otherwise.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use evershell_agent::testing::{Reply, ScriptedCall, ScriptedModel};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::TestServer;

const MODEL_DOMAIN: &str = "api.anthropic.com";
const METERED: &str = "metered.example.test";

const CAPS: &str = r#"
- name: metered
  allow:
    - domains: ["metered.example.test"]
      methods: [GET]
  budgets:
    per_task: { requests: 3 }
    per_workspace: { requests: 5 }
"#;

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && ["nft", "ip", "curl"]
        .iter()
        .all(|t| Command::new(t).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
}

/// A test CA and, per front, a TLS listener on 127.0.0.1 for `names` that relays to a plain-HTTP `backend`.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, "test upstream CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Self { issuer: rcgen::Issuer::new(params, key), pem }
    }

    async fn front(&self, backend: SocketAddr, names: &[&str]) -> SocketAddr {
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &self.issuer)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(Ok(mut tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(s)).await
                    else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        addr
    }
}

/// A plain-HTTP upstream answering every request `200 ok` and closing.
async fn ok_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn wait_task(ts: &TestServer, ws: &str, task: &str, secs: u64) -> Value {
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

/// Polls `GET path` until its `events` hold `n` rows to `metered.example.test`; returns those rows.
async fn metered_rows(ts: &TestServer, path: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = ts.get(path).await;
        let rows: Vec<Value> = r.ok()["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["destination"] == format!("{METERED}:443"))
            .collect();
        if rows.len() >= n {
            return rows;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of {n} rows at {path}: {}", rows.len(), r.json);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent's tool call: five `curl`s, each line `<body> <status>` in `/workspace/<file>`.
fn curls(file: &str) -> String {
    format!(
        "for i in 1 2 3 4 5; do curl -sS -w ' %{{http_code}}\\n' https://{METERED}/n$i >> /workspace/{file} 2>&1; done"
    )
}

/// The `<body> <status>` lines a task wrote.
async fn outcomes(ts: &TestServer, ws: &str, file: &str) -> Vec<(String, String)> {
    let r = ts.get(&format!("/v1/workspaces/{ws}/sandbox/download/{file}")).await;
    assert!(r.status.is_success(), "{}", r.status);
    String::from_utf8_lossy(&r.bytes)
        .lines()
        .map(|l| {
            let (body, code) = l.rsplit_once(' ').unwrap_or(("", l));
            (body.to_string(), code.to_string())
        })
        .collect()
}

/// Checks a task's five outcomes: `passed` 200s first, then 429s naming `budget`.
fn check(out: &[(String, String)], passed: usize, budget: &str) {
    assert_eq!(out.len(), 5, "{out:?}");
    for (i, (body, code)) in out.iter().enumerate() {
        if i < passed {
            assert_eq!((body.as_str(), code.as_str()), ("ok", "200"), "{out:?}");
        } else {
            assert_eq!(code, "429", "{out:?}");
            let b: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
            assert_eq!(b["error"]["code"], "budget_exceeded", "{b}");
            assert_eq!(b["error"]["details"]["budget"], budget, "{b}");
        }
    }
}

/// Checks the proxy's rows of one task: five, all with its id, `passed` allowed with counters, the rest refused.
fn check_rows(rows: &[Value], task: &str, passed: usize) {
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows.iter().all(|r| r["task_id"] == task), "{rows:?}");
    let allowed: Vec<&Value> = rows.iter().filter(|r| r["decision"] == "allow").collect();
    assert_eq!(allowed.len(), passed, "{rows:?}");
    let mut seen: Vec<u64> =
        allowed.iter().map(|r| r["details"]["budgets"]["metered.per_task"]["requests"].as_u64().unwrap()).collect();
    seen.sort();
    assert_eq!(seen, (1..=passed as u64).collect::<Vec<_>>(), "the task's own counter, from zero");
    assert_eq!(rows.iter().filter(|r| r["reason"] == "budget_exceeded").count(), 5 - passed, "{rows:?}");
}

#[tokio::test]
async fn per_task_budgets_start_afresh_per_task_and_the_workspace_budget_spans_tasks() {
    if !can_run() {
        eprintln!("skipped: needs root with ip, nft and curl");
        return;
    }
    let model = ScriptedModel::start().await;
    let ca = TestCa::new();
    let model_front = ca.front(model.addr, &[MODEL_DOMAIN]).await;
    let metered_front = ca.front(ok_backend().await, &[METERED]).await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let ts = TestServer::start_with(|cfg| {
        cfg.proxy.upstream_hosts.insert(MODEL_DOMAIN.into(), model_front.to_string());
        cfg.proxy.upstream_hosts.insert(METERED.into(), metered_front.to_string());
        cfg.proxy.upstream_ca_file = Some(ca_file.clone());
    })
    .await;
    let owner = ts.login(&ts.owner_email.clone()).await;
    ts.call(
        Method::POST,
        "/v1/credentials",
        Some(&owner),
        Some(json!({"name": "model-key", "provider": "anthropic", "kind": "api_key", "api_key": "sk-ant-budget-1"})),
    )
    .await
    .ok();
    let p = ts
        .post(
            "/v1/providers",
            json!({"name": "models", "kind": "anthropic", "domain": MODEL_DOMAIN, "default_model": "claude-test",
                   "credential_name": "model-key"}),
        )
        .await;
    let pid = p.ok()["id"].as_str().unwrap().to_string();
    ts.post("/v1/agent-roles", json!({"name": "metered", "provider_id": pid, "capabilities": CAPS})).await.ok();

    // Task 1: 3 through, then its own budget is spent.
    model.push(Reply::tools(vec![ScriptedCall::bash("call_1", &curls("one.txt"))]));
    model.push(Reply::text("done"));
    let r = ts.post("/v1/tasks", json!({"role_name": "metered", "description": "curl five times"})).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    let ws = r.json["workspace_id"].as_str().unwrap().to_string();
    let t1 = r.json["task_id"].as_str().unwrap().to_string();
    let t = wait_task(&ts, &ws, &t1, 180).await;
    assert_eq!(t["status"], "completed", "{t}");
    check(&outcomes(&ts, &ws, "one.txt").await, 3, "metered.per_task");
    let rows =
        metered_rows(&ts, &format!("/v1/audit?filter=event_type=egress_request&filter=task_id={t1}&limit=200"), 5)
            .await;
    check_rows(&rows, &t1, 3);

    // Task 2 on the same workspace: a fresh per-task budget, but the workspace's ceiling of 5 leaves it 2.
    model.push(Reply::tools(vec![ScriptedCall::bash("call_2", &curls("two.txt"))]));
    model.push(Reply::text("done again"));
    let r = ts.post(&format!("/v1/workspaces/{ws}/tasks"), json!({"description": "curl five more times"})).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    let t2 = r.json["task_id"].as_str().unwrap().to_string();
    let t = wait_task(&ts, &ws, &t2, 180).await;
    assert_eq!(t["status"], "completed", "{t}");
    check(&outcomes(&ts, &ws, "two.txt").await, 2, "metered.per_workspace");
    let rows = metered_rows(&ts, &format!("/v1/workspaces/{ws}/activity?task_id={t2}&limit=200"), 5).await;
    check_rows(&rows, &t2, 2);
    let refused: Vec<&Value> = rows.iter().filter(|r| r["reason"] == "budget_exceeded").collect();
    assert!(refused.iter().all(|r| r["details"]["budget_exceeded"]["name"] == "metered.per_workspace"), "{refused:?}");
    // Nothing of task 2 was charged to task 1.
    let rows =
        metered_rows(&ts, &format!("/v1/audit?filter=event_type=egress_request&filter=task_id={t1}&limit=200"), 5)
            .await;
    assert_eq!(rows.len(), 5, "{rows:?}");
    ts.stop().await;
}
