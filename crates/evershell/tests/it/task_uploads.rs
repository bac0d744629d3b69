//! Files submitted with a task (`multipart/form-data`, repeatable `file` parts) through the real server and a real
//! pod: via `POST /v1/tasks` and `POST /v1/workspaces/{id}/tasks`, and `evershell tasks submit --file`, the agent's
//! bash tool (scripted model, through the proxy) sees each file with its exact bytes at
//! `/data/uploads/<task_id>/<name>`, owned by the sandbox user, 0644, when the task runs; bad names, duplicates,
//! bad fields and sizes over the limits are refused with nothing kept (no task, no workspace, no staged file).
//! Needs root with `ip`/`nft` (networked pods); skipped otherwise.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Resp, TestServer};
use crate::task_run::{Setup, can_run, setup_with, wait_task};
use evershell_agent::testing::{Reply, ScriptedCall};

const MAX_FILE: u64 = 64 * 1024;
const MAX_TOTAL: u64 = 96 * 1024;
const MAX_FILES: usize = 3;

/// Text fields and files as a multipart body (built here by hand, independent of the CLI's builder).
fn form(fields: &[(&str, &str)], files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let b = "t3st-b0undary";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
        );
    }
    for (name, data) in files {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        body.extend_from_slice(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{escaped}\"\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

async fn post_form(ts: &TestServer, path: &str, fields: &[(&str, &str)], files: &[(&str, &[u8])]) -> Resp {
    let (ct, body) = form(fields, files);
    ts.raw(ts.request(Method::POST, path).bearer_auth(&ts.key).header("content-type", ct).body(body)).await
}

/// Entries left in the server's staging directory (half-received or waiting submissions).
fn staged_entries(ts: &TestServer) -> Vec<String> {
    let root = ts.dir.path().join("task-uploads");
    let mut out = vec![];
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        out.push(e.file_name().to_string_lossy().into_owned());
        for t in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
            out.push(format!("{}/{}", e.file_name().to_string_lossy(), t.file_name().to_string_lossy()));
        }
    }
    out
}

/// The scripted turn that shows what the pod holds under /data/uploads when the task runs.
fn look_at_uploads(model: &evershell_agent::testing::ScriptedModel, call: &str) {
    let cmd = "rm -rf /workspace/seen; cp -r /data/uploads /workspace/seen; \
               stat -c '%n %a %U' /data/uploads/*/ /data/uploads/*/*";
    model.push(Reply::tools(vec![ScriptedCall::bash(call, cmd)]));
    model.push(Reply::text("looked"));
}

/// The tool result the model got for `call`.
fn tool_result(model: &evershell_agent::testing::ScriptedModel, call: &str) -> String {
    model
        .requests()
        .iter()
        .flat_map(|r| r.tool_results())
        .find(|(id, _, _)| id == call)
        .map(|(_, content, _)| content)
        .unwrap_or_else(|| panic!("no result for {call}"))
}

async fn download(ts: &TestServer, ws: &str, path: &str) -> Vec<u8> {
    let r = ts.get(&format!("/v1/workspaces/{ws}/sandbox/download/{path}")).await;
    assert!(r.status.is_success(), "{path}: {} {}", r.status, r.json);
    r.bytes
}

/// The task ran with its files in place: exact bytes (copied by the agent's tool while the task ran), modes and
/// owner, the task record's `files`, the audit row's names and sizes, and no staged copy left.
async fn check_task_files(
    ts: &TestServer,
    model: &evershell_agent::testing::ScriptedModel,
    ws: &str,
    task: &str,
    call: &str,
    files: &[(&str, &[u8])],
) {
    let t = wait_task(ts, ws, task, 180).await;
    assert_eq!(t["status"], "completed", "{t}");
    let listed: Vec<Value> = files.iter().map(|(n, d)| json!({"name": n, "size": d.len()})).collect();
    assert_eq!(t["files"], Value::Array(listed.clone()), "{t}");
    let seen = tool_result(model, call);
    assert!(seen.contains(&format!("/data/uploads/{task}/ 755 evershell")), "{seen}");
    for (name, data) in files {
        assert_eq!(download(ts, ws, &format!("seen/{task}/{name}")).await, *data, "{name}");
        assert!(seen.contains(&format!("/data/uploads/{task}/{name} 644 evershell")), "{name}: {seen}");
    }
    let audit = ts.get(&format!("/v1/audit?filter=event_type=task_submitted&filter=task_id={task}")).await;
    let row = &audit.ok()["events"][0];
    assert_eq!(row["details"]["files"], Value::Array(listed), "{row}");
    assert!(!staged_entries(ts).iter().any(|e| e.contains(task)), "the staged copy is gone once delivered");
}

#[tokio::test]
async fn task_files_reach_the_pod_and_bad_submissions_leave_nothing() {
    if !can_run() {
        eprintln!("skipped: needs root with ip and nft");
        return;
    }
    let Setup { ts, model, _ca_dir } = setup_with("anthropic", "api.anthropic.com", |cfg| {
        cfg.limits.max_task_file_bytes = MAX_FILE;
        cfg.limits.max_task_upload_bytes = MAX_TOTAL;
        cfg.limits.max_task_files = MAX_FILES;
    })
    .await;
    let role = [("role_name", "runner"), ("description", "look at the files")];
    let big = vec![7u8; MAX_FILE as usize + 1];
    let most = vec![8u8; MAX_FILE as usize];

    // Refused T1 submissions: each a 400 naming the field, or a 413; no workspace, no staged file.
    let long = "n".repeat(256);
    for bad in ["a/b.txt", "a\\b.txt", "..", "../x", "x..y", "nul\0.txt", "", long.as_str()] {
        let r = post_form(&ts, "/v1/tasks", &role, &[("ok.txt", b"x"), (bad, b"y")]).await;
        r.expect(400, "validation_error");
        assert_eq!(r.fields(), ["file"], "{bad:?}: {}", r.json);
    }
    let r = post_form(&ts, "/v1/tasks", &role, &[("same.txt", b"1"), ("same.txt", b"2")]).await;
    r.expect(400, "validation_error");
    let mut with_bad_fields = role.to_vec();
    with_bad_fields.push(("max_continuations", "ten"));
    let r = post_form(&ts, "/v1/tasks", &with_bad_fields, &[("a.txt", b"a")]).await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), ["max_continuations"], "{}", r.json);
    let mut with_bad_meta = role.to_vec();
    with_bad_meta.push(("metadata", "[1]"));
    post_form(&ts, "/v1/tasks", &with_bad_meta, &[]).await.expect(400, "validation_error");
    post_form(&ts, "/v1/tasks", &role, &[("big.bin", &big)]).await.expect(413, "payload_too_large");
    post_form(&ts, "/v1/tasks", &role, &[("m1", &most), ("m2", &most)]).await.expect(413, "payload_too_large");
    let four: Vec<(String, &[u8])> = (0..=MAX_FILES).map(|i| (format!("f{i}"), b"x".as_slice())).collect();
    let four: Vec<(&str, &[u8])> = four.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    post_form(&ts, "/v1/tasks", &role, &four).await.expect(413, "payload_too_large");
    let listed = ts.get("/v1/workspaces").await;
    assert_eq!(listed.ok()["workspaces"].as_array().map_or(0, Vec::len), 0, "no workspace kept: {}", listed.json);
    assert_eq!(staged_entries(&ts), Vec::<String>::new(), "nothing staged is kept");

    // T1 with two files (one binary).
    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let t1_files: [(&str, &[u8]); 2] = [("a.txt", b"alpha\r\n--t3st-b0undar not the end\n"), ("b.bin", &binary)];
    look_at_uploads(&model, "look_1");
    let mut fields = role.to_vec();
    fields.push(("max_continuations", "5"));
    fields.push(("metadata", r#"{"ticket": 7}"#));
    let r = post_form(&ts, "/v1/tasks", &fields, &t1_files).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    let ws = r.json["workspace_id"].as_str().unwrap().to_string();
    let task1 = r.json["task_id"].as_str().unwrap().to_string();
    check_task_files(&ts, &model, &ws, &task1, "look_1", &t1_files).await;
    let t = ts.get(&format!("/v1/workspaces/{ws}/tasks/{task1}")).await;
    assert_eq!((t.ok()["max_continuations"].clone(), t.ok()["metadata"].clone()), (json!(5), json!({"ticket": 7})));

    // T2 with two more files on the same workspace.
    ts.wait_status(&ws, "idle", 30).await;
    let t2_files: [(&str, &[u8]); 2] = [("c.md", b"# c\n"), ("d d.txt", b"")];
    look_at_uploads(&model, "look_2");
    let path = format!("/v1/workspaces/{ws}/tasks");
    let r = post_form(&ts, &path, &[("description", "again"), ("reset_session", "true")], &t2_files).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.json);
    let task2 = r.json["task_id"].as_str().unwrap().to_string();
    check_task_files(&ts, &model, &ws, &task2, "look_2", &t2_files).await;

    // Refused T2 submissions create no task.
    for (files, status) in [
        (vec![("../up", b"x".as_slice())], 400),
        (vec![("x", b"1".as_slice()), ("x", b"2".as_slice())], 400),
        (vec![("big", big.as_slice())], 413),
    ] {
        let r = post_form(&ts, &path, &[("description", "no")], &files).await;
        assert_eq!(r.status.as_u16(), status, "{}", r.json);
    }
    post_form(&ts, &path, &[("description", "no"), ("surprise", "1")], &[]).await.expect(400, "validation_error");
    assert_eq!(ts.get(&path).await.ok().as_array().map_or(0, Vec::len), 2, "no task was created");
    assert_eq!(staged_entries(&ts), Vec::<String>::new());

    // The CLI: `tasks submit --workspace … --file … --file … --follow`.
    ts.wait_status(&ws, "idle", 30).await;
    let dir = tempfile::tempdir().unwrap();
    let (e, f) = (dir.path().join("e.csv"), dir.path().join("f.json"));
    std::fs::write(&e, b"a,b\n1,2\n").unwrap();
    std::fs::write(&f, b"{\"k\": [1]}").unwrap();
    look_at_uploads(&model, "look_3");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_evershell"))
        .args(["tasks", "submit", "--workspace", &ws, "look at them", "--follow", "--json", "--file"])
        .arg(&e)
        .arg("--file")
        .arg(&f)
        .current_dir(ts.dir.path())
        .env("EVERSHELL_URL", &ts.url)
        .env("EVERSHELL_API_KEY", &ts.key)
        .env("HOME", ts.dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let t: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    let task3 = t["id"].as_str().unwrap().to_string();
    let cli_files: [(&str, &[u8]); 2] = [("e.csv", b"a,b\n1,2\n"), ("f.json", b"{\"k\": [1]}")];
    check_task_files(&ts, &model, &ws, &task3, "look_3", &cli_files).await;
    ts.stop().await;
}
