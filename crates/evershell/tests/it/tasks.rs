//! Tasks through the real server on real sandboxes: submit (on a workspace and with a new one), the queue, list
//! (bare array, newest first), get, cancel and session guards, the 409s of workspaces that take no work, `:own`
//! narrowing. The real agent runs these tasks, but no model is reachable here (the pods resolve no name), so none
//! completes (each ends once the model retries are spent); a task that completes through the real proxy is in
//! `task_run.rs`, the dispatcher's faults against a scripted agent in `crates/app/tests/dispatcher.rs`.

use std::time::Duration;

use evershell_core::scope::MemberRole;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::TestServer;

async fn role_with_model(ts: &TestServer, name: &str) -> String {
    let p = ts
        .post(
            "/v1/providers",
            json!({ "name": format!("{name}-prov"), "kind": "anthropic", "domain": "api.anthropic.com",
                    "default_model": "claude-x" }),
        )
        .await;
    let pid = p.ok()["id"].as_str().unwrap().to_string();
    ts.post("/v1/agent-roles", json!({ "name": name, "provider_id": pid })).await.ok();
    name.to_string()
}

/// Poll the task until it has ended (panics after 60 s).
async fn wait_ended(ts: &TestServer, ws: &str, task: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let t = ts.get(&format!("/v1/workspaces/{ws}/tasks/{task}")).await.ok().clone();
        let s = t["status"].as_str().unwrap().to_string();
        if ["completed", "failed", "cancelled", "delivery_failed"].contains(&s.as_str()) {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "task {task} never ended: {t}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ms(v: &Value) -> i64 {
    evershell_core::Timestamp::parse_rfc3339(v.as_str().unwrap()).unwrap().millis()
}

#[tokio::test]
async fn submit_queue_list_get_and_the_guards() {
    let ts = TestServer::start().await;
    let role = role_with_model(&ts, "coder").await;
    let ws = ts.idle_workspace(&role, &ts.key).await;
    let wsp = format!("/v1/workspaces/{ws}");

    let r = ts.post(&format!("{wsp}/tasks"), json!({"description": "say hi", "metadata": {"ticket": 7}})).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    let first = r.json["task_id"].as_str().unwrap().to_string();
    assert_eq!(r.json, json!({"task_id": first, "workspace_id": ws, "status": "submitted"}));
    let mut ids = vec![first.clone()];
    for i in 0..4 {
        let r =
            ts.post(&format!("{wsp}/tasks"), json!({"description": format!("task {i}"), "reset_session": true})).await;
        ids.push(r.ok()["task_id"].as_str().unwrap().to_string());
    }
    let list = ts.get(&format!("{wsp}/tasks")).await.ok().clone();
    let listed: Vec<String> = list.as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first, "a bare array, newest first");

    // One at a time, in order: each ends before the next is handed over, with a reason on every other end.
    let mut ends = Vec::new();
    for id in &ids {
        let t = wait_ended(&ts, &ws, id).await;
        if t["status"] != "completed" {
            assert!(t["reason"].is_string(), "{t}");
        }
        assert!(t["duration_seconds"].is_number(), "{t}");
        ends.push(ms(&t["completed_at"]));
    }
    assert!(ends.windows(2).all(|w| w[0] <= w[1]), "ended out of order: {ends:?}");
    let t = ts.get(&format!("{wsp}/tasks/{first}")).await.ok().clone();
    assert_eq!(t["metadata"], json!({"ticket": 7}));
    assert_eq!(t["workspace_id"], ws);
    // No task left: the workspace reads idle again, and a cancel has nothing to cancel.
    assert_eq!(ts.get(&wsp).await.ok()["status"], "idle");
    ts.post_empty(&format!("{wsp}/task/cancel")).await.expect(409, "invalid_state");

    // Unknown ids and bad bodies.
    ts.get(&format!("{wsp}/tasks/task_01JD8X3Q5M2N4P6R8T0V2W4Y6Z")).await.expect(404, "task_not_found");
    ts.get(&format!("{wsp}/tasks/nonsense")).await.expect(404, "task_not_found");
    ts.get("/v1/workspaces/ws_01JD8X3Q5M2N4P6R8T0V2W4Y6Z/tasks").await.expect(404, "workspace_not_found");
    let r = ts.post(&format!("{wsp}/tasks"), json!({"description": "  "})).await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), ["description"]);
    let r =
        ts.post(&format!("{wsp}/tasks"), json!({"description": "x", "metadata": [1], "max_context_tokens": 5})).await;
    assert_eq!(r.fields(), ["max_context_tokens", "metadata"]);
    ts.post(&format!("{wsp}/tasks"), json!({"description": "x", "priority": 1})).await.expect(400, "validation_error");

    // A stopped workspace takes no tasks, and has no running task or session.
    ts.post_empty(&format!("{wsp}/stop?wait=true&timeout_ms=60000")).await.ok();
    ts.post(&format!("{wsp}/tasks"), json!({"description": "late"})).await.expect(409, "workspace_stopped");
    ts.post_empty(&format!("{wsp}/task/cancel")).await.expect(409, "workspace_stopped");
    ts.get(&format!("{wsp}/session")).await.expect(409, "workspace_stopped");
    ts.post_empty(&format!("{wsp}/archive")).await.ok();
    ts.post(&format!("{wsp}/tasks"), json!({"description": "later"})).await.expect(409, "workspace_archived");
    // Its task history stays readable.
    assert_eq!(ts.get(&format!("{wsp}/tasks")).await.ok().as_array().unwrap().len(), 5);
    // Each submission is in the audit trail with its task id.
    let a = ts.get(&format!("/v1/audit?filter=event_type=task_submitted&filter=task_id={first}")).await.ok().clone();
    assert_eq!(a["events"].as_array().unwrap().len(), 1, "{a}");
    ts.stop().await;
}

#[tokio::test]
async fn post_tasks_creates_the_workspace_and_queues_its_first_task() {
    let ts = TestServer::start().await;
    let role = role_with_model(&ts, "coder").await;
    let r = ts
        .post(
            "/v1/tasks",
            json!({"role_name": role, "description": "first", "environment": "staging",
                                        "thinking_effort": "high", "max_continuations": 2}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    let ws = r.json["workspace_id"].as_str().unwrap().to_string();
    let task = r.json["task_id"].as_str().unwrap().to_string();
    assert_eq!(r.json["status"], "submitted");
    let w = ts.get(&format!("/v1/workspaces/{ws}")).await.ok().clone();
    assert_eq!(w["environment"], "staging");
    let t = wait_ended(&ts, &ws, &task).await;
    assert_eq!(t["thinking_effort"], "high");
    assert_eq!(t["max_continuations"], 2);
    // It was only delivered (or given up on) once the workspace was idle.
    ts.wait_status(&ws, "idle", 120).await;

    ts.post("/v1/tasks", json!({"role_name": "nobody", "description": "x"})).await.expect(404, "role_not_found");
    let r = ts.post("/v1/tasks", json!({"description": "x"})).await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), ["role_id"]);
    // A provider that names no model: refused before any workspace exists.
    let (_, _, bare) = ts.role("bare").await;
    let before = ts.get("/v1/workspaces").await.ok()["workspaces"].as_array().unwrap().len();
    ts.post("/v1/tasks", json!({"role_name": bare, "description": "x"})).await.expect(409, "invalid_state");
    assert_eq!(ts.get("/v1/workspaces").await.ok()["workspaces"].as_array().unwrap().len(), before);
    ts.stop().await;
}

#[tokio::test]
async fn own_scopes_narrow_tasks_to_the_callers_workspaces() {
    let ts = TestServer::start().await;
    let role = role_with_model(&ts, "coder").await;
    let (_, alice) = ts.user("alice@acme.example", MemberRole::Member).await;
    let (_, bob) = ts.user("bob@acme.example", MemberRole::Member).await;
    let ws = ts.idle_workspace(&role, &alice).await;
    let path = format!("/v1/workspaces/{ws}/tasks");
    let r = ts.call(Method::POST, &path, Some(&alice), Some(json!({"description": "mine"}))).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    let r = ts.call(Method::POST, &path, Some(&bob), Some(json!({"description": "not mine"}))).await;
    r.expect(403, "permission_denied");
    ts.call(Method::GET, &path, Some(&bob), None).await.expect(403, "workspace_not_visible");
    ts.call(Method::POST, &format!("/v1/workspaces/{ws}/task/cancel"), Some(&bob), None)
        .await
        .expect(403, "permission_denied");
    assert_eq!(ts.call(Method::GET, &path, Some(&alice), None).await.ok().as_array().unwrap().len(), 1);
    // A member creates a workspace and its first task in one call (the `:own` scopes suffice).
    let r = ts.call(Method::POST, "/v1/tasks", Some(&bob), Some(json!({"role_name": role, "description": "b"}))).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    ts.stop().await;
}
