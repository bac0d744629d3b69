//! Task latency on a warm workspace, against the release binary (its own process, as in the lifecycle bench): one
//! workspace created and left `idle` with its pod running, one warm-up task run to its end, then BENCH_TASKS tasks
//! (default 50) submitted one after another, each once the one before it has ended. The model is the scripted model
//! server answering at once (`Reply::text`), reached the way `it::task_run` reaches it: from the pod, through the
//! in-process egress proxy (which injects the provider's key), to a TLS front on loopback whose leaf a test CA
//! signed (`proxy.upstream_ca_file`, the provider's domain mapped by `proxy.upstream_hosts`). Needs root with
//! `ip`/`nft` (pod networks); without them a pod cannot reach any model, and the bench says so and stops.
//!
//! Reported, median and p95 over the tasks:
//! * POST → `delivered`: from just before the client sends `POST /v1/workspaces/{id}/tasks` to the task's
//!   `delivered_at`, which the server stamps when the agent has accepted the delivery (read from the task record
//!   afterwards, so no polling latency is added; millisecond resolution). Target: median under 20 ms.
//! * POST → first model request: to the moment the scripted model server has read the task's first request.
//! * server side: `created_at` → `delivered_at` (the dispatcher's share alone).
//!
//!   cargo bench -p evershell --bench tasks

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{call, median, p95};
use evershell_agent::testing::{Reply, ScriptedModel};
use evershell_core::Timestamp;
use reqwest::Method;
use serde_json::{Value, json};

const DOMAIN: &str = "api.anthropic.com";

fn wall_ms(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

fn ts_ms(v: &Value) -> f64 {
    Timestamp::parse_rfc3339(v.as_str().unwrap_or_default()).map(|t| t.millis() as f64).unwrap_or(f64::NAN)
}

/// A free loopback port for TCP and UDP (the proxy's and the DNS responder's; `0` cannot be told to a process
/// whose nftables table must be removed afterwards).
fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// A TLS front on 127.0.0.1 for `backend` (plain HTTP) with a leaf for `name` signed by a fresh test CA: its
/// address and the CA's PEM (as in `it::task_run`).
async fn tls_front(backend: SocketAddr, name: &str) -> (SocketAddr, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "bench model CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let tls =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![leaf.der().clone()], key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let _ = s.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(mut tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(s)).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else { return };
                let _ = up.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (addr, ca_cert.pem())
}

async fn wait_end(http: &reqwest::Client, s: &common::Server, ws: &str, task: &str) -> Value {
    // Only the end is waited for here (every figure comes from timestamps), so the poll period adds nothing.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = call(http, s, Method::GET, &format!("/v1/workspaces/{ws}/tasks/{task}"), None).await;
        if ["completed", "failed", "cancelled", "delivery_failed"].contains(&t["status"].as_str().unwrap_or("")) {
            return t;
        }
        assert!(Instant::now() < deadline, "task {task} never ended: {t}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn row(name: &str, v: &[f64], target: &str) {
    let (mut a, mut b) = (v.to_vec(), v.to_vec());
    let max = v.iter().cloned().fold(f64::MIN, f64::max);
    println!("  {name:<34} {:>8.1} {:>8.1} {:>8.1}   {target}", median(&mut a), p95(&mut b), max);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["nft", "ip"]
        .iter()
        .all(|t| Command::new(t).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok());
    if !(root && tools) {
        println!("tasks: skipped — pods reach the model only through their own network (needs root with ip and nft)");
        return;
    }
    let n: usize = std::env::var("BENCH_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let model = ScriptedModel::start().await;
    model.set_default(Reply::text("done"));
    let (front, ca_pem) = tls_front(model.addr, DOMAIN).await;
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("model-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let (proxy_port, dns_port) = (free_port(), free_port());
    let config = format!(
        "[runtime]\nproxy_port = {proxy_port}\ndns_port = {dns_port}\n\n[proxy]\nupstream_ca_file = \"{}\"\n\n\
         [proxy.upstream_hosts]\n\"{DOMAIN}\" = \"{front}\"\n\"api.openai.com\" = \"127.0.0.1:9\"\n",
        ca_file.display()
    );
    let _table = NftTable(evershell_runtime::local::network_table(evershell_runtime::local::NetworkPorts {
        proxy: proxy_port,
        dns: dns_port,
    }));
    let server = common::start_with_config(tmp.path(), &[], Some(&config));
    let http = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
    // Credentials are created by a signed-in owner (API keys lack `auth:write`).
    let login = call(
        &http,
        &server,
        Method::POST,
        "/v1/auth/login",
        Some(json!({"email": "bench@example.com", "password": common::PASSWORD, "org": "bench"})),
    )
    .await;
    let r = http
        .post(format!("{}/v1/credentials", server.url))
        .bearer_auth(login["token"].as_str().unwrap())
        .json(&json!({"name": "model-key", "provider": "anthropic", "kind": "api_key", "api_key": "sk-ant-bench-0"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "creating the credential: {}", r.status());
    let p = call(
        &http,
        &server,
        Method::POST,
        "/v1/providers",
        Some(json!({"name": "models", "kind": "anthropic", "domain": DOMAIN, "default_model": "claude-bench",
                    "credential_name": "model-key"})),
    )
    .await;
    call(&http, &server, Method::POST, "/v1/agent-roles", Some(json!({"name": "runner", "provider_id": p["id"]})))
        .await;
    let ws = call(
        &http,
        &server,
        Method::POST,
        "/v1/workspaces?wait=true&timeout_ms=60000",
        Some(json!({"role_name": "runner"})),
    )
    .await;
    assert_eq!(ws["status"], "idle", "{ws}");
    let ws = ws["id"].as_str().unwrap().to_string();
    let path = format!("/v1/workspaces/{ws}/tasks");

    // Warm-up: the agent's session opened, its connection to the proxy made.
    let t = call(&http, &server, Method::POST, &path, Some(json!({"description": "warm up"}))).await;
    let t = wait_end(&http, &server, &ws, t["task_id"].as_str().unwrap()).await;
    assert_eq!(t["status"], "completed", "the warm-up task did not complete: {t}");

    let (mut delivered, mut first_model, mut dispatch, mut ended) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let seen = model.requests().len();
        let sent = SystemTime::now();
        let r = http
            .post(format!("{}{path}", server.url))
            .bearer_auth(&server.key)
            .json(&json!({"description": format!("task {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let task = r.json::<Value>().await.unwrap()["task_id"].as_str().unwrap().to_string();
        tokio::time::timeout(Duration::from_secs(60), model.wait_requests(seen + 1))
            .await
            .expect("the model was called");
        let t = wait_end(&http, &server, &ws, &task).await;
        assert_eq!(t["status"], "completed", "{t}");
        let at = model.requests()[seen].at;
        let sent_ms = wall_ms(sent);
        delivered.push(ts_ms(&t["delivered_at"]) - sent_ms);
        first_model.push(wall_ms(at) - sent_ms);
        dispatch.push(ts_ms(&t["delivered_at"]) - ts_ms(&t["created_at"]));
        ended.push(ts_ms(&t["completed_at"]) - sent_ms);
    }
    println!(
        "tasks: {n} tasks, one after another, on a warm workspace; the model (scripted, answers at once) reached from \
         the pod through the egress proxy over HTTPS"
    );
    println!("  {:<34} {:>8} {:>8} {:>8}", "ms", "median", "p95", "max");
    row("POST -> delivered", &delivered, "target: median < 20 ms");
    row("POST -> first model request", &first_model, "");
    row("created_at -> delivered_at (server)", &dispatch, "");
    row("POST -> completed", &ended, "");
    let med = median(&mut delivered.clone());
    println!("  delivery median {med:.1} ms: {}", if med < 20.0 { "meets the target" } else { "MISSES the target" });
    call(&http, &server, Method::POST, &format!("/v1/workspaces/{ws}/stop?wait=true&timeout_ms=60000"), None).await;
}

/// The server's nftables table, which outlives it by design: removed when the bench ends (after the server).
struct NftTable(String);

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.0]).stderr(Stdio::null()).status();
    }
}
