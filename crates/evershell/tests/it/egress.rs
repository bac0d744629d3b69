//! The egress proxy through the real server: `evershell serve` runs it in-process; a workspace's pod address is
//! recorded as the reconciler records it (here 127.0.0.1, which the test's `[proxy] allowed_peers` admits, since an
//! unprivileged test cannot send from the pod range); a request from that address to a local upstream routed by
//! `[proxy] upstream_hosts` is decided by the workspace's merged policy, gets the org credential injected, and its
//! `egress_request` row appears in `GET /v1/audit` and `GET /v1/workspaces/{id}/audit`. A denied path and a
//! connection from outside the allowed peers are covered too.

use std::net::SocketAddr;
use std::time::Duration;

use evershell_core::Timestamp;
use evershell_core::ids::WorkspaceId;
use evershell_store::PodNetwork;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::TestServer;

const KEY: &str = "sk-egress-it-7f3a";

const CAPS: &str = r#"
- name: upstream
  allow:
    - name: read
      domains: ["plain.test"]
      methods: [GET]
      paths: ["/v1/**"]
      allow_insecure: true
  transforms:
    - auth: { credential: up-key }
"#;

/// A plain-HTTP upstream that answers every request with the request head it received.
async fn echo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", head.len());
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.write_all(&head).await;
            });
        }
    });
    addr
}

/// One HTTP/1.1 request to the proxy over a fresh connection; the whole response as text.
async fn through_proxy(proxy: SocketAddr, host: &str, path: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nx-api-key: agent-guess\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn egress_rows(ts: &TestServer, path: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = ts.get(path).await;
        let rows = r.ok()["events"].as_array().cloned().unwrap_or_default();
        if rows.len() >= n {
            return rows;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} egress rows at {path}: {}", rows.len(), r.json);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_in_process_proxy_decides_a_workspace_request_and_audits_it() {
    let up = echo_upstream().await;
    let ts = TestServer::start_with(|cfg| {
        // The pod's address is recorded by hand below; a networked pod's real address (root) would replace it at
        // the reconciler's next renewal. The networked version is `egress_e2e`.
        cfg.runtime.network = false;
        cfg.proxy.allowed_peers = vec!["127.0.0.1/32".into()];
        cfg.proxy.upstream_hosts.insert("plain.test".into(), up.to_string());
    })
    .await;
    let proxy = ts.proxy_addr();

    // Credentials need a person's session.
    let owner = ts.login(&ts.owner_email.clone()).await;
    let c = ts
        .call(
            Method::POST,
            "/v1/credentials",
            Some(&owner),
            Some(json!({"name": "up-key", "provider": "acme", "kind": "api_key", "api_key": KEY,
                        "provider_config": {"header": "x-api-key"}})),
        )
        .await;
    c.ok();
    let p = ts.post("/v1/providers", json!({"name": "prov", "kind": "anthropic", "domain": "api.anthropic.com"})).await;
    let pid = p.ok()["id"].as_str().unwrap().to_string();
    let r = ts.post("/v1/agent-roles", json!({"name": "net", "provider_id": pid, "capabilities": CAPS})).await;
    r.ok();
    let key = ts.key.clone();
    let ws = ts.idle_workspace("net", &key).await;
    let ws_id: WorkspaceId = ws.parse().unwrap();

    // Before the pod's address is known, the same peer is nobody.
    let resp = through_proxy(proxy, "plain.test", "/v1/items").await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("unknown_peer"), "{resp}");

    let rec = ts.app.store().get_workspace_by_id(ws_id).await.unwrap().unwrap();
    let net = PodNetwork {
        address: "127.0.0.1".into(),
        capability: "test-capability".into(),
        capability_expires_at: Timestamp::now().plus_millis(60_000),
    };
    // Written as the reconciler writes it: under the workspace's lease (taken once no pass holds it).
    let store = ts.app.store();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let fence = loop {
        let now = Timestamp::now();
        if let Some(f) = store.claim_workspace(ws_id, "egress-test", now, now.plus_millis(60_000)).await.unwrap() {
            break f;
        }
        assert!(tokio::time::Instant::now() < deadline, "the reconciler never let the workspace go");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wrote = store.set_pod_network(ws_id, rec.observed.pod_id.unwrap(), Some(&net), &fence).await.unwrap();
    assert_eq!(wrote, evershell_store::ObservationWrite::Written);
    store.release_workspace(ws_id, &fence).await.unwrap();
    // The proxy caches identities for at most a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let resp = loop {
        let resp = through_proxy(proxy, "plain.test", "/v1/items?limit=1").await;
        if !resp.contains("unknown_peer") || tokio::time::Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(&format!("x-api-key: {KEY}")), "the upstream did not get the credential: {resp}");
    assert!(!resp.contains("agent-guess"), "the agent's own header was forwarded: {resp}");
    assert!(resp.contains("GET /v1/items?limit=1 HTTP/1.1"), "{resp}");

    let denied = through_proxy(proxy, "plain.test", "/v1/../admin").await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    assert!(denied.contains(r#""reason":"path""#), "{denied}");
    assert!(!denied.contains(KEY));

    let rows = egress_rows(&ts, "/v1/audit?filter=event_type=egress_request&order=asc", 2).await;
    let allow = rows.iter().find(|r| r["decision"] == "allow").expect("an allow row");
    assert_eq!(allow["actor"], "policy-engine");
    assert_eq!(allow["category"], "activity");
    assert_eq!(allow["workspace_id"], ws.as_str());
    assert_eq!(allow["destination"], "plain.test:80");
    assert_eq!(allow["method"], "GET");
    assert_eq!(allow["path"], "/v1/items?limit=1");
    assert_eq!(allow["agent_role"], "net");
    assert_eq!(allow["details"]["capability"], "upstream");
    assert_eq!(allow["details"]["transforms"], json!(["auth:up-key"]));
    assert!(allow["details"]["bytes_down"].as_u64().unwrap() > 0);
    let deny = rows.iter().find(|r| r["decision"] == "deny").expect("a deny row");
    assert_eq!(deny["reason"], "path");
    assert_eq!(deny["path"], "/admin");
    let per_ws = egress_rows(&ts, &format!("/v1/workspaces/{ws}/audit?filter=event_type=egress_request"), 2).await;
    assert_eq!(per_ws.len(), rows.len());
    let all = ts.get("/v1/audit?limit=1000").await;
    assert!(!String::from_utf8_lossy(&all.bytes).contains(KEY), "the credential reached the audit log");

    // A stopped workspace's pod is denied (its address is cleared before the pod stops).
    let s = ts.post_empty(&format!("/v1/workspaces/{ws}/stop")).await;
    s.ok();
    ts.wait_status(&ws, "stopped", 60).await;
    assert_eq!(ts.app.store().pod_network(ws_id).await.unwrap(), None);
    ts.stop().await;
}

#[tokio::test]
async fn connections_from_outside_the_allowed_peers_are_closed_at_once() {
    let ts = TestServer::start().await;
    let mut s = TcpStream::connect(ts.proxy_addr()).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.expect("closed, not held");
    assert!(n.map_or(true, |n| n == 0), "the proxy answered a peer outside the pod network: {buf:?}");
    ts.stop().await;
}
