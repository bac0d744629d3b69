//! The audit log: one immutable row per change, the filter grammar, time range, order, limit and keyset cursor,
//! `:own` narrowing.

use std::collections::HashSet;

use evershell_core::scope::MemberRole;
use reqwest::Method;
use serde_json::json;

use crate::harness::TestServer;

#[tokio::test]
async fn every_change_writes_one_row_and_pages_cover_everything_once() {
    let ts = TestServer::start().await;
    let (pid, rid, _) = ts.role("coder").await;
    for i in 0..7 {
        ts.patch(&format!("/v1/agent-roles/{rid}"), json!({"description": format!("v{i}")})).await.ok();
    }
    let all = ts.get("/v1/audit?limit=10000").await;
    let events = all.ok()["events"].as_array().unwrap().clone();
    assert!(all.json.get("cursor").is_none(), "no cursor on the last page");
    let of = |t: &str| events.iter().filter(|e| e["event_type"] == t).count();
    assert_eq!(of("provider_created"), 1);
    assert_eq!(of("agent_role_created"), 1);
    assert_eq!(of("agent_role_updated"), 7);
    let e = events.iter().find(|e| e["event_type"] == "provider_created").unwrap();
    assert_eq!(e["user_id"], "system", "API-key calls are attributed to system");
    assert_eq!(e["actor"], "control-plane");
    assert_eq!(e["category"], "audit");
    assert_eq!(e["target_id"], pid.as_str());
    assert_eq!(e["id"].as_str().unwrap().chars().nth(14), Some('7'), "UUIDv7");
    // Newest first by default.
    let ts_of = |e: &serde_json::Value| e["timestamp"].as_str().unwrap().to_string();
    assert!(events.windows(2).all(|w| (ts_of(&w[0]), w[0]["id"].as_str()) >= (ts_of(&w[1]), w[1]["id"].as_str())));

    // Keyset pages of 3 cover every row exactly once, in both orders.
    for order in ["desc", "asc"] {
        let mut seen = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("/v1/audit?limit=3&order={order}&cursor={c}"),
                None => format!("/v1/audit?limit=3&order={order}"),
            };
            let page = ts.get(&q).await;
            for e in page.ok()["events"].as_array().unwrap() {
                assert!(seen.insert(e["id"].as_str().unwrap().to_string()), "duplicate across pages");
            }
            match page.json["cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(seen.len(), events.len(), "{order}");
    }

    // Filters.
    let r = ts.get("/v1/audit?filter=event_type=provider_created,agent_role_created").await;
    assert_eq!(r.ok()["events"].as_array().unwrap().len(), 2);
    let r = ts.get("/v1/audit?filter=event_type!=agent_role_updated&filter=target_type=agent_role").await;
    assert_eq!(r.ok()["events"].as_array().unwrap().len(), 1);
    let r = ts.get("/v1/audit?filter=workspace_id!=").await;
    assert_eq!(r.ok()["events"], json!([]));
    let r = ts.get("/v1/audit?filter=bogus=1").await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), vec!["filter[0]"]);
    ts.get("/v1/audit?cursor=not-a-cursor").await.expect(400, "invalid_cursor");
    ts.get("/v1/audit?limit=10001").await.expect(400, "validation_error");
    ts.get("/v1/audit?from=yesterday").await.expect(400, "validation_error");
    let future = "2999-01-01T00:00:00Z";
    assert_eq!(ts.get(&format!("/v1/audit?from={future}")).await.ok()["events"], json!([]));
    assert_eq!(
        ts.get(&format!("/v1/audit?to={future}&limit=10000")).await.ok()["events"].as_array().unwrap().len(),
        events.len()
    );
    ts.stop().await;
}

#[tokio::test]
async fn members_see_only_their_own_events() {
    let ts = TestServer::start().await;
    let (member_id, member) = ts.user("mem@acme.example", MemberRole::Member).await;
    ts.role("coder").await;
    let r = ts.call(Method::GET, "/v1/audit?limit=10000", Some(&member), None).await;
    let events = r.ok()["events"].as_array().unwrap();
    assert!(!events.is_empty(), "the member's own login is there");
    assert!(events.iter().all(|e| e["user_id"] == member_id.as_str()));
    ts.stop().await;
}
