//! `POST /v1/workspaces/{id}/sandbox/exec` against a real pod: output, exit codes, stdin and env, the deadline that
//! kills the whole group, the scope and ownership checks, 409 outside a running workspace, bad input, the audit row
//! (program, never the arguments), and the CLI's `workspaces exec WS -- CMD…`.

use evershell_core::scope::MemberRole;
use reqwest::Method;
use serde_json::json;

use crate::harness::TestServer;

#[tokio::test]
async fn exec_runs_commands_in_the_live_sandbox() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let ws = ts.idle_workspace(&role, &ts.key.clone()).await;
    let path = format!("/v1/workspaces/{ws}/sandbox/exec");

    let r = ts.post(&path, json!({ "argv": ["sh", "-c", "echo hi; echo oops >&2; id -u; pwd; exit 7"] })).await;
    let v = r.ok();
    assert_eq!(v["exit_code"], 7);
    assert_eq!(v["stdout"], "hi\n1000\n/workspace\n");
    assert_eq!(v["stderr"], "oops\n");
    assert_eq!(v["truncated"], false);
    assert!(v["duration_ms"].as_u64().is_some());

    // stdin and env; a file written inside is a live file.
    let r = ts
        .post(
            &path,
            json!({ "argv": ["sh", "-c", "cat > note.txt; printf %s \"$GREETING\""], "stdin": "from stdin",
            "env": { "GREETING": "hello" } }),
        )
        .await;
    assert_eq!(r.ok()["stdout"], "hello");
    let f = ts.get(&format!("/v1/workspaces/{ws}/sandbox/files/note.txt")).await;
    assert_eq!(f.ok()["content"], "from stdin");

    // The deadline kills the whole process group.
    let r = ts.post(&path, json!({ "argv": ["sh", "-c", "sleep 60 & sleep 60"], "timeout_ms": 300 })).await;
    let v = r.ok();
    assert_eq!(v["timed_out"], true);
    assert!(v["duration_ms"].as_u64().unwrap() < 30_000, "{v}");

    // Bad input: the field is named.
    ts.post(&path, json!({ "argv": [] })).await.expect(400, "validation_error");
    ts.post(&path, json!({ "argv": ["true"], "timeout_ms": 600_001 })).await.expect(400, "validation_error");
    ts.post(&path, json!({ "argv": ["/no/such/program"] })).await.expect(400, "validation_error");
    ts.post(&path, json!({ "argv": ["true"], "shell": true })).await.expect(400, "validation_error");

    // Audited: the program and the exit code, never the arguments.
    let a = ts.get(&format!("/v1/workspaces/{ws}/audit?filter=event_type=workspace_exec")).await;
    let events = a.ok()["events"].as_array().unwrap().clone();
    assert!(events.len() >= 3, "{events:?}");
    let text = serde_json::to_string(&events).unwrap();
    assert!(text.contains("\"program\":\"sh\"") && !text.contains("GREETING") && !text.contains("echo hi"), "{text}");

    // Scope and ownership: a read-only key gets 403; another member's key sees 404 or 403 per the workspace rules.
    let reader = ts.key_with(evershell_core::scope::PermissionSet::ReadOnly).await;
    let r = ts.call(Method::POST, &path, Some(&reader), Some(json!({ "argv": ["true"] }))).await;
    r.expect(403, "permission_denied");
    let (_, member) = ts.user("m@example.com", MemberRole::Member).await;
    let r = ts.call(Method::POST, &path, Some(&member), Some(json!({ "argv": ["true"] }))).await;
    assert_eq!(r.status, 403, "{:?}", r.json);

    // The CLI: output passed through, the exit code kept.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_evershell"))
        .args(["workspaces", "exec", &ws, "--", "sh", "-c", "echo from-cli; exit 3"])
        .env("EVERSHELL_URL", &ts.url)
        .env("EVERSHELL_API_KEY", &ts.key)
        .env("HOME", ts.dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-cli\n");

    // Not running: 409 with the state's code.
    ts.post_empty(&format!("/v1/workspaces/{ws}/stop?wait=true&timeout_ms=60000")).await.ok();
    ts.post(&path, json!({ "argv": ["true"] })).await.expect(409, "workspace_stopped");
    ts.stop().await;
}
