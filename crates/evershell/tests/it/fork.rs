//! Checkpoints and fork end to end: two tasks whose bash calls write files, then forks of the workspace at 0, 1 and
//! 2 completed tasks, each child's `/workspace` read back through the files API; forks past the completed tasks,
//! with bad bodies, by a member who cannot read the parent, and at a checkpoint retention pruned are refused; the
//! parent keeps running untouched. Needs root with `ip`/`nft` (networked pods, the scripted model behind the
//! proxy); skipped otherwise.

use std::time::Duration;

use evershell_agent::testing::{Reply, ScriptedCall};
use evershell_core::scope::MemberRole;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::TestServer;
use crate::task_run::{Setup, can_run, setup_with, wait_task};

/// The file's bytes in the live sandbox (`None`: absent).
async fn file(ts: &TestServer, ws: &str, path: &str) -> Option<Vec<u8>> {
    let r = ts.get(&format!("/v1/workspaces/{ws}/sandbox/download/{path}")).await;
    if r.status.as_u16() == 404 {
        return None;
    }
    assert!(r.status.is_success(), "{path}: {} {}", r.status, r.json);
    Some(r.bytes)
}

/// Fork `ws` at `n`; while the checkpoint of the latest count is still being written (a 409 saying so), ask again.
async fn fork(ts: &TestServer, ws: &str, n: i64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = ts.post(&format!("/v1/workspaces/{ws}/fork"), json!({ "fork_point_task_count": n })).await;
        let pending =
            r.status.as_u16() == 409 && r.json["error"]["message"].as_str().unwrap_or("").contains("not written yet");
        if !pending {
            assert_eq!(r.status.as_u16(), 202, "fork at {n}: {}", r.json);
            return r.json;
        }
        assert!(tokio::time::Instant::now() < deadline, "checkpoint {n} never written: {}", r.json);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_task(ts: &TestServer, ws: &str, description: &str) {
    let r = ts.post(&format!("/v1/workspaces/{ws}/tasks"), json!({ "description": description })).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    let t = wait_task(ts, ws, r.json["task_id"].as_str().unwrap(), 120).await;
    assert_eq!(t["status"], "completed", "{t}");
}

#[tokio::test]
async fn forks_start_from_the_state_right_after_n_tasks() {
    if !can_run() {
        eprintln!("skipped: needs root with ip and nft");
        return;
    }
    let Setup { ts, model, _ca_dir } =
        setup_with("anthropic", "api.anthropic.com", |cfg| cfg.checkpoints.keep = 2).await;
    for (i, (file, word)) in [("a", "one"), ("b", "two"), ("c", "three")].iter().enumerate() {
        model.push(Reply::tools(vec![ScriptedCall::bash(
            &format!("call_{i}"),
            &format!("echo {word} > /workspace/{file}"),
        )]));
        model.push(Reply::text("done"));
    }
    let r = ts.post("/v1/tasks", json!({"role_name": "runner", "description": "write a"})).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    let ws = r.json["workspace_id"].as_str().unwrap().to_string();
    let t = wait_task(&ts, &ws, r.json["task_id"].as_str().unwrap(), 180).await;
    assert_eq!(t["status"], "completed", "{t}");
    run_task(&ts, &ws, "write b").await;

    // Bad bodies name the field; a count past the completed tasks is a conflict.
    for body in [
        json!({}),
        json!({"fork_point_task_count": -1}),
        json!({"fork_point_task_count": "1"}),
        json!({"fork_point_task_count": 1.5}),
        json!({"fork_point_task_count": null}),
    ] {
        let r = ts.post(&format!("/v1/workspaces/{ws}/fork"), body.clone()).await;
        r.expect(400, "validation_error");
        assert_eq!(r.fields(), vec!["fork_point_task_count".to_string()], "{body}: {}", r.json);
    }
    let r = ts.post(&format!("/v1/workspaces/{ws}/fork"), json!({"fork_point_task_count": 3})).await;
    r.expect(409, "snapshot_missing");
    // A member who may read only their own workspaces cannot fork another's; another org's id is not found.
    let (_, member) = ts.user("forker@example.com", MemberRole::Member).await;
    let r = ts
        .call(
            Method::POST,
            &format!("/v1/workspaces/{ws}/fork"),
            Some(&member),
            Some(json!({"fork_point_task_count": 1})),
        )
        .await;
    r.expect(403, "workspace_not_visible");
    let r = ts.post("/v1/workspaces/ws_01J0000000000000000000000/fork", json!({"fork_point_task_count": 0})).await;
    assert_eq!(r.status.as_u16(), 404, "{}", r.json);

    // Forks at 0, 1 and 2: each child holds exactly the files of that point.
    let mut children = Vec::new();
    for n in 0..=2 {
        let a = fork(&ts, &ws, n).await;
        assert_eq!(a["parent_workspace_id"], ws.as_str());
        assert_eq!(a["fork_point_task_count"], n);
        assert_eq!(a["status"], "provisioning");
        assert_eq!(a["fork_source_snapshot_ref"].is_null(), n == 0, "{a}");
        children.push((n, a["workspace_id"].as_str().unwrap().to_string(), a));
    }
    for (n, child, answer) in &children {
        let got = ts.wait_status(child, "idle", 120).await;
        assert_eq!(got["parent_workspace_id"], ws.as_str(), "{got}");
        assert_eq!(got["fork_point_task_count"], *n);
        assert_eq!(got["fork_source_snapshot_ref"], answer["fork_source_snapshot_ref"]);
        assert_eq!(file(&ts, child, "a").await, (*n >= 1).then(|| b"one\n".to_vec()), "child at {n}");
        assert_eq!(file(&ts, child, "b").await, (*n >= 2).then(|| b"two\n".to_vec()), "child at {n}");
    }
    // The command line: `workspaces fork WS --at N` prints the child's id (`--json`: the whole answer).
    let (ok, out, err) = crate::cli::evershell(&ts, &["workspaces", "fork", &ws, "--at", "2"], &[]).await;
    assert!(ok, "{err}");
    let by_cli = out.trim().to_string();
    assert!(by_cli.starts_with("ws_"), "{out}");
    let got = ts.get(&format!("/v1/workspaces/{by_cli}")).await.ok().clone();
    assert_eq!(
        (got["parent_workspace_id"].as_str(), got["fork_point_task_count"].as_i64()),
        (Some(ws.as_str()), Some(2))
    );
    let (ok, out, err) = crate::cli::evershell(&ts, &["workspaces", "fork", &ws, "--at", "9", "--json"], &[]).await;
    assert!(!ok && (out.contains("snapshot_missing") || err.contains("snapshot_missing")), "{out} {err}");
    children.push((2, by_cli, got));
    // The parent runs on untouched.
    let parent = ts.get(&format!("/v1/workspaces/{ws}")).await.ok().clone();
    assert_eq!(parent["status"], "idle", "{parent}");
    assert!(parent["parent_workspace_id"].is_null());
    assert_eq!(file(&ts, &ws, "b").await, Some(b"two\n".to_vec()));

    // Retention keeps the last two: after a third task, checkpoint 1 is gone (and says so), 2 and 3 remain.
    run_task(&ts, &ws, "write c").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = ts.post(&format!("/v1/workspaces/{ws}/fork"), json!({"fork_point_task_count": 1})).await;
        if r.status.as_u16() == 409 {
            assert!(r.json["error"]["message"].as_str().unwrap().contains("pruned"), "{}", r.json);
            break;
        }
        // Checkpoint 3 (whose write prunes 1) may still be under way: that fork succeeded and is left to settle.
        assert_eq!(r.status.as_u16(), 202, "{}", r.json);
        children.push((1, r.json["workspace_id"].as_str().unwrap().to_string(), r.json.clone()));
        assert!(tokio::time::Instant::now() < deadline, "checkpoint 1 was never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let three = fork(&ts, &ws, 3).await;
    let c3 = three["workspace_id"].as_str().unwrap().to_string();
    ts.wait_status(&c3, "idle", 120).await;
    assert_eq!(file(&ts, &c3, "c").await, Some(b"three\n".to_vec()));
    // The fork audit row names both workspaces.
    let rows = ts.get("/v1/audit?filter=event_type=workspace_forked&limit=50").await;
    let rows = rows.ok()["events"].as_array().cloned().unwrap_or_default();
    assert!(
        rows.iter().any(|r| r["workspace_id"] == c3.as_str() && r["details"]["parent_workspace_id"] == ws.as_str()),
        "{rows:?}"
    );
    // The child restored at 1 keeps working although its source checkpoint was pruned.
    let (_, c1, _) = &children[1];
    assert_eq!(file(&ts, c1, "a").await, Some(b"one\n".to_vec()));
    ts.stop().await;
}
