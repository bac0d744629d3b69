//! The idle timeout through the real server (reconciler pass every 500 ms in the harness): a workspace of a role
//! with `idle_timeout_seconds` stops itself once idle that long — `status_reason` `idle_timeout`, a snapshot saved,
//! an audit row by `system` — and resumes with its files; a workspace whose task runs longer than the limit (the
//! real agent running `sleep 5` through the bash tool, its model the scripted server behind the real proxy) is not
//! stopped while the task runs, and stops once it has ended and the limit has passed again.

use std::time::Duration;

use evershell_agent::testing::{Reply, ScriptedCall};
use serde_json::json;

use crate::harness::TestServer;
use crate::task_run::{DOMAIN, Setup, can_run, setup, wait_task};

#[tokio::test]
async fn an_idle_workspace_stops_itself_with_a_snapshot_and_resumes_with_its_files() {
    let ts = TestServer::start().await;
    let (_, role_id, role) = ts.role("sleepy").await;
    let r = ts.patch(&format!("/v1/agent-roles/{role_id}"), json!({ "idle_timeout_seconds": 2 })).await;
    assert_eq!(r.ok()["idle_timeout_seconds"], 2, "{}", r.json);
    let key = ts.key.clone();
    let ws = ts.idle_workspace(&role, &key).await;
    let w = ts.put_file(&ws, "notes.txt", b"kept across the idle stop".to_vec()).await;
    assert!(w.status.is_success(), "{} {}", w.status, w.json);

    let stopped = ts.wait_status(&ws, "stopped", 60).await;
    assert_eq!(stopped["status_reason"], "idle_timeout", "{stopped}");
    let snap = stopped["snapshot_ref"].as_str().expect("a snapshot was saved before the stop").to_string();
    assert!(stopped["snapshot"]["file_count"].as_u64().unwrap_or(0) >= 1, "{stopped}");
    let saved = ts.get(&format!("/v1/workspaces/{ws}/snapshot/download/notes.txt")).await;
    assert_eq!(saved.bytes, b"kept across the idle stop", "{}", saved.status);

    // Who stopped it and why.
    let asked = ts.get(&format!("/v1/audit?filter=event_type=workspace_stop_requested&filter=workspace_id={ws}")).await;
    let rows = asked.ok()["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0]["user_id"].as_str(), rows[0]["actor"].as_str()), (Some("system"), Some("control-plane")));
    assert_eq!(rows[0]["reason"], "idle_timeout");
    let done = ts.get(&format!("/v1/audit?filter=event_type=workspace_stopped&filter=workspace_id={ws}")).await;
    assert_eq!(done.ok()["events"][0]["reason"], "idle_timeout", "{}", done.json);

    // No limit any more (`null`), so the files can be looked at without a race; resume brings them back.
    ts.patch(&format!("/v1/agent-roles/{role_id}"), json!({ "idle_timeout_seconds": null })).await.ok();
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/resume?wait=true&timeout_ms=60000")).await;
    assert!(r.status.is_success(), "{} {}", r.status, r.json);
    let idle = ts.wait_status(&ws, "idle", 60).await;
    assert_eq!(idle["status_reason"], "restored", "{idle}");
    assert_eq!(idle["snapshot_ref"], snap.as_str());
    let back = ts.get(&format!("/v1/workspaces/{ws}/sandbox/download/notes.txt")).await;
    assert_eq!(back.bytes, b"kept across the idle stop", "{}", back.status);
    ts.stop().await;
}

#[tokio::test]
async fn a_task_running_past_the_idle_limit_is_not_stopped() {
    if !can_run() {
        eprintln!("skipped: needs root with ip and nft");
        return;
    }
    let Setup { ts, model, _ca_dir } = setup("anthropic", DOMAIN).await;
    let roles = ts.get("/v1/agent-roles").await;
    let runner = roles.ok()["agent_roles"].as_array().and_then(|a| a.iter().find(|r| r["name"] == "runner")).cloned();
    let role_id = runner.expect("the setup's role")["id"].as_str().unwrap().to_string();
    ts.patch(&format!("/v1/agent-roles/{role_id}"), json!({ "idle_timeout_seconds": 1 })).await.ok();
    model.push(Reply::tools(vec![ScriptedCall::bash("call_1", "sleep 5; echo slept > /workspace/slept.txt")]));
    model.push(Reply::text("slept"));
    let r = ts.post("/v1/tasks", json!({"role_name": "runner", "description": "sleep 5 s"})).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    let ws = r.json["workspace_id"].as_str().unwrap().to_string();
    let task = r.json["task_id"].as_str().unwrap().to_string();

    // Until the task has ended, the workspace is never stopping or stopped (many reconciler passes go by).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut looks = 0;
    loop {
        let t = ts.get(&format!("/v1/workspaces/{ws}/tasks/{task}")).await.ok().clone();
        let ended = ["completed", "failed", "cancelled", "delivery_failed"].contains(&t["status"].as_str().unwrap());
        let w = ts.get(&format!("/v1/workspaces/{ws}")).await.ok().clone();
        if !ended {
            assert!(
                ["provisioning", "idle", "busy"].contains(&w["status"].as_str().unwrap()),
                "the idle timeout stopped a workspace whose task had not ended: {w} {t}"
            );
            looks += 1;
        } else {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the task never ended: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = wait_task(&ts, &ws, &task, 10).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert!(t["duration_seconds"].as_f64().unwrap_or(0.0) >= 5.0, "{t}");
    assert!(looks > 10, "looked {looks} times");
    // Its files say the command ran to the end; then, idle past the limit, it stops.
    let stopped = ts.wait_status(&ws, "stopped", 60).await;
    assert_eq!(stopped["status_reason"], "idle_timeout", "{stopped}");
    let saved = ts.get(&format!("/v1/workspaces/{ws}/snapshot/download/slept.txt")).await;
    assert_eq!(saved.bytes, b"slept\n", "{}", saved.status);
    ts.stop().await;
}
