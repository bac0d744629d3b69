//! Workspace quotas (per org, per agent role, per member role: `409 quota_exceeded` naming the quota) and cursor
//! pagination of the list routes (`limit`, `cursor`, `next_cursor`, `Link`), through the real server.

use std::collections::HashSet;

use evershell_core::scope::MemberRole;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Resp, TestServer};

async fn create(ts: &TestServer, token: &str, role: &str) -> Resp {
    ts.call(Method::POST, "/v1/workspaces", Some(token), Some(json!({ "role_name": role }))).await
}

#[tokio::test]
async fn workspace_quotas_per_org_role_and_member() {
    let ts = TestServer::start_with(|c| {
        c.quotas.workspaces_per_org = 4;
        c.quotas.workspaces_per_agent_role = 2;
        c.quotas.workspaces_per_user.member = 1;
    })
    .await;
    for r in ["a", "b", "c"] {
        ts.role(r).await;
    }
    let (_, member) = ts.user("dev@acme.example", MemberRole::Member).await;
    assert_eq!(create(&ts, &member, "a").await.status, 201);
    let r = create(&ts, &member, "b").await;
    r.expect(409, "quota_exceeded");
    assert_eq!(r.json["error"]["details"]["quota"], "workspaces_per_user");
    assert_eq!(r.json["error"]["details"]["limit"], 1);
    // API keys have no per-person limit; the role's limit counts the member's workspace too.
    assert_eq!(create(&ts, &ts.key, "a").await.status, 201);
    let r = create(&ts, &ts.key, "a").await;
    r.expect(409, "quota_exceeded");
    assert_eq!(r.json["error"]["details"]["quota"], "workspaces_per_agent_role");
    assert_eq!(create(&ts, &ts.key, "b").await.status, 201);
    assert_eq!(create(&ts, &ts.key, "b").await.status, 201);
    let r = create(&ts, &ts.key, "c").await;
    r.expect(409, "quota_exceeded");
    assert_eq!(r.json["error"]["details"]["quota"], "workspaces_per_org");
    // Refused creates left nothing behind.
    assert_eq!(ts.get("/v1/workspaces").await.ok()["workspaces"].as_array().unwrap().len(), 4);
    ts.stop().await;
}

/// Follow `next_cursor` from `first` to the end; returns every item's id and checks the `Link` header on the way.
async fn walk(ts: &TestServer, token: &str, first: &str, field: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut url = first.to_string();
    loop {
        let r = ts.call(Method::GET, &url, Some(token), None).await;
        let body = r.ok().clone();
        ids.extend(body[field].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_string()));
        let Some(next) = body["next_cursor"].as_str() else {
            assert!(r.headers.get("link").is_none(), "a Link header on the last page");
            return ids;
        };
        let link = r.headers["link"].to_str().unwrap().to_string();
        assert!(link.ends_with("; rel=\"next\"") && link.contains("cursor="), "{link}");
        let sep = if first.contains('?') { '&' } else { '?' };
        url = format!("{first}{sep}cursor={next}");
    }
}

#[tokio::test]
async fn every_list_pages_with_a_cursor_and_is_whole_without_limit() {
    let ts = TestServer::start().await;
    for i in 0..5 {
        ts.post("/v1/providers", json!({"name": format!("p{i}"), "kind": "openai", "domain": "a.b"})).await.ok();
    }
    let whole = ts.get("/v1/providers").await;
    assert_eq!(whole.ok()["providers"].as_array().unwrap().len(), 5, "no limit: the whole list, as documented");
    assert!(whole.json.get("next_cursor").is_none());
    let page = ts.get("/v1/providers?limit=2").await;
    assert_eq!(page.ok()["providers"].as_array().unwrap().len(), 2);
    let ids = walk(&ts, &ts.key, "/v1/providers?limit=2", "providers").await;
    assert_eq!(ids.len(), 5);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5, "an item twice: {ids:?}");
    // A cursor of another list, a forged one, and bad limits.
    let cursor = page.json["next_cursor"].as_str().unwrap().to_string();
    ts.get(&format!("/v1/agent-roles?limit=2&cursor={cursor}")).await.expect(400, "invalid_cursor");
    ts.get("/v1/providers?limit=2&cursor=bm9wZQ").await.expect(400, "invalid_cursor");
    ts.get("/v1/providers?limit=0").await.expect(400, "validation_error");
    ts.get("/v1/providers?limit=1001").await.expect(400, "validation_error");

    // Roles, API keys, memberships, workspaces.
    for i in 0..3 {
        ts.role(&format!("r{i}")).await;
    }
    assert_eq!(walk(&ts, &ts.key, "/v1/agent-roles?limit=2", "agent_roles").await.len(), 3);
    for _ in 0..2 {
        ts.key_with(evershell_core::scope::PermissionSet::ReadOnly).await;
    }
    let (_, owner) = ts.user("boss@acme.example", MemberRole::Owner).await;
    let keys = walk(&ts, &owner, "/v1/api-keys?limit=1", "api_keys").await;
    let whole = ts.call(Method::GET, "/v1/api-keys", Some(&owner), None).await;
    assert_eq!(keys.len(), whole.ok()["api_keys"].as_array().unwrap().len());
    assert_eq!(keys.len(), 3);
    for i in 0..3 {
        ts.user(&format!("m{i}@acme.example"), MemberRole::Member).await;
    }
    let path = format!("/v1/orgs/{}/memberships?limit=2", ts.org_id);
    let r = ts.call(Method::GET, &path, Some(&owner), None).await;
    let members = r.ok()["memberships"].as_array().unwrap().len();
    assert_eq!(members, 2);
    let mut seen = 0;
    let mut url = path.clone();
    loop {
        let b: Value = ts.call(Method::GET, &url, Some(&owner), None).await.ok().clone();
        seen += b["memberships"].as_array().unwrap().len();
        match b["next_cursor"].as_str() {
            Some(c) => url = format!("{path}&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, 5, "two owners and three members");
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(create(&ts, &ts.key, "r0").await.ok()["id"].as_str().unwrap().to_string());
    }
    let listed = walk(&ts, &ts.key, "/v1/workspaces?limit=2&role_name=r0", "workspaces").await;
    made.reverse();
    assert_eq!(listed, made, "newest first, each once");
    ts.stop().await;
}

#[tokio::test]
async fn unarchive_counts_against_the_org_quota() {
    let ts = TestServer::start_with(|c| c.quotas.workspaces_per_org = 1).await;
    ts.role("coder").await;
    let first = ts.idle_workspace("coder", &ts.key).await;
    let r = ts.post_empty(&format!("/v1/workspaces/{first}/stop?wait=true&timeout_ms=60000")).await;
    assert_eq!(r.ok()["status"], "stopped");
    create(&ts, &ts.key, "coder").await.expect(409, "quota_exceeded");
    assert_eq!(ts.post_empty(&format!("/v1/workspaces/{first}/archive")).await.status, 200);
    // Archived workspaces do not count, so there is room for a new one…
    assert_eq!(create(&ts, &ts.key, "coder").await.status, 201);
    // …and bringing the archived one back would exceed the limit.
    let r = ts.post_empty(&format!("/v1/workspaces/{first}/unarchive")).await;
    r.expect(409, "quota_exceeded");
    assert!(ts.get(&format!("/v1/workspaces/{first}")).await.ok()["archived_at"].is_string(), "still archived");
    ts.stop().await;
}
