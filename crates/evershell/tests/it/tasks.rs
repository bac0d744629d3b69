//! Tasks through the real server on real sandboxes: submit (on a workspace and with a new one), the queue (20 at
//! once: all run, in order, each handed over once), list (bare array, newest first), get, cancel and session
//! guards, the 409s of workspaces that take no work (stopped, archived, failed), `:own` narrowing. The real agent
//! runs these tasks against the harness's closed model port, so each one deterministically ends `failed` with
//! reason `model_error` once its 5 retries are spent (10 ms apart here: `agent.model_retry_base_ms`); a task that
//! completes through the real proxy is in `task_run.rs`, the dispatcher's faults against a scripted agent in
//! `crates/app/tests/dispatcher.rs`, the loop's model and tool faults in `crates/agent/tests/task_loop.rs`.

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

/// The end every task here has: the model is unreachable (a closed port behind the proxy), so the agent gives up
/// after its retries with the model's cause.
#[track_caller]
fn assert_model_error(t: &Value) {
    assert_eq!((&t["status"], &t["reason"]), (&json!("failed"), &json!("model_error")), "{t}");
    assert!(t["duration_seconds"].is_number(), "{t}");
    assert!(t["result"].is_null(), "no answer on a failure: {t}");
}

/// The task's activity rows, polled until `pred` accepts them (the agent's last events may be recorded just after
/// the task's end).
async fn task_rows_until(ts: &TestServer, task: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = ts.get(&format!("/v1/audit?filter=task_id={task}&order=asc&limit=1000")).await;
        let rows = r.ok()["events"].as_array().cloned().unwrap_or_default();
        if pred(&rows) {
            return rows;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rows of {task} never matched: {rows:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The agent's events of one kind among `rows`.
fn agent_events<'a>(rows: &'a [Value], kind: &str) -> Vec<&'a Value> {
    rows.iter().filter(|r| r["event_type"] == kind || r["details"]["agent_event_type"] == kind).collect()
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

    // One at a time, in order: each ends before the next is handed over, each with the model's failure.
    let mut ends = Vec::new();
    for id in &ids {
        let t = wait_ended(&ts, &ws, id).await;
        assert_model_error(&t);
        ends.push(ms(&t["completed_at"]));
    }
    assert!(ends.windows(2).all(|w| w[0] <= w[1]), "ended out of order: {ends:?}");
    // The cause behind the reason: the first call and 5 retries, then the agent's `task_failed` with the cause.
    let rows = task_rows_until(&ts, &first, |r| !agent_events(r, "task_failed").is_empty()).await;
    let retries = agent_events(&rows, "model_retry");
    assert_eq!(retries.len(), 5, "{rows:?}");
    let failed = agent_events(&rows, "task_failed");
    let cause = failed[0]["details"]["data"]["result"].as_str().unwrap_or_default();
    assert!(cause.contains("after 5 retries"), "{cause}");
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
    assert_model_error(&t);
    assert_eq!(t["thinking_effort"], "high");
    assert_eq!(t["max_continuations"], 2);
    // It was only delivered once the workspace was idle; it reads idle again now that the task has ended.
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

#[tokio::test]
async fn twenty_tasks_queued_at_once_all_run_in_order_exactly_once() {
    let ts = TestServer::start().await;
    let role = role_with_model(&ts, "coder").await;
    let ws = ts.idle_workspace(&role, &ts.key).await;
    let wsp = format!("/v1/workspaces/{ws}");
    // All twenty submitted at once (concurrent requests); the queue's order is the order they were accepted in.
    let path = format!("{wsp}/tasks");
    let posts = (0..20).map(|i| ts.post(&path, json!({"description": format!("task {i}")})));
    let accepted = futures::future::join_all(posts).await;
    for r in &accepted {
        assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    }
    let mut queue: Vec<String> = ts
        .get(&format!("{wsp}/tasks"))
        .await
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    queue.reverse();
    let mut submitted: Vec<String> = accepted.iter().map(|r| r.json["task_id"].as_str().unwrap().to_string()).collect();
    submitted.sort();
    let mut listed = queue.clone();
    listed.sort();
    assert_eq!(listed, submitted, "every task is queued once");

    let mut runs = Vec::new();
    for id in &queue {
        let t = wait_ended(&ts, &ws, id).await;
        assert_model_error(&t);
        runs.push((ms(&t["delivered_at"]), ms(&t["completed_at"])));
    }
    // In queue order, one at a time: each is handed over only after the one before it ended.
    for (i, w) in runs.windows(2).enumerate() {
        assert!(w[0].1 <= w[1].0, "task {} was delivered before task {} ended: {runs:?}", i + 1, i);
    }
    // Exactly once: one delivery and one agent run per task.
    for id in &queue {
        let rows = task_rows_until(&ts, id, |r| !agent_events(r, "task_failed").is_empty()).await;
        assert_eq!(agent_events(&rows, "task_delivered").len(), 1, "{rows:?}");
        assert_eq!(agent_events(&rows, "task_started").len(), 1, "{rows:?}");
        assert_eq!(agent_events(&rows, "task_failed").len(), 1, "{rows:?}");
    }
    assert_eq!(ts.get(&wsp).await.ok()["status"], "idle");
    ts.stop().await;
}

#[tokio::test]
async fn a_failed_workspace_takes_no_tasks_and_has_nothing_to_cancel() {
    let ts = TestServer::start().await;
    let role = role_with_model(&ts, "coder").await;
    let ws = ts.idle_workspace(&role, &ts.key).await;
    let wsp = format!("/v1/workspaces/{ws}");
    // The sandbox killed from outside: the workspace fails (`pod_exited`).
    let id: evershell_core::ids::WorkspaceId = ws.parse().unwrap();
    let rec = ts.app.store().get_workspace_by_id(id).await.unwrap().unwrap();
    let pod = ts.dir.path().join("pods").join(rec.observed.pod_id.expect("a pod").to_string());
    let pid: Value = serde_json::from_slice(&std::fs::read(pod.join("sandbox.pid")).unwrap()).unwrap();
    // SAFETY: signalling the sandbox's own process group.
    unsafe { libc::kill(-(pid["pid"].as_i64().unwrap() as i32), libc::SIGKILL) };
    ts.wait_status(&ws, "failed", 30).await;
    ts.post(&format!("{wsp}/tasks"), json!({"description": "x"})).await.expect(409, "workspace_failed");
    ts.post_empty(&format!("{wsp}/task/cancel")).await.expect(409, "workspace_failed");
    ts.get(&format!("{wsp}/session")).await.expect(409, "workspace_failed");
    assert!(ts.get(&format!("{wsp}/tasks")).await.ok().as_array().unwrap().is_empty());
    ts.stop().await;
}
