//! The command line against a real server: admin commands on the store while the server runs, and the workspace
//! verbs (create, stop, resume, files) with `--wait` and `--json`, configured by env and by `evershell login`.

use serde_json::{Value, json};

use crate::harness::TestServer;

/// Run the binary (asynchronously: the server under test shares this thread).
pub(crate) async fn evershell(ts: &TestServer, args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_evershell"));
    cmd.args(args)
        .current_dir(ts.dir.path())
        .env("EVERSHELL_URL", &ts.url)
        .env("EVERSHELL_API_KEY", &ts.key)
        .env("HOME", ts.dir.path());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn json(ts: &TestServer, args: &[&str]) -> Value {
    let (ok, out, err) = evershell(ts, args, &[]).await;
    assert!(ok, "evershell {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("evershell {args:?}: not JSON ({e}): {out}"))
}

#[tokio::test]
async fn admin_commands_work_on_the_store_while_the_server_runs() {
    let ts = TestServer::start().await;
    let db = ts.db_url.clone();
    fn with<'a>(db: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["admin", "--database-url", db];
        a.extend_from_slice(rest);
        a
    }
    let org = json(&ts, &with(&db, &["org", "create", "--name", "globex", "--json"])).await;
    let org_id = org["id"].as_str().unwrap().to_string();
    assert!(org["id"].as_str().unwrap().starts_with("org_"));
    let (ok, _, err) = evershell(&ts, &with(&db, &["org", "create", "--name", "globex", "--json"]), &[]).await;
    assert!(!ok && err.contains("already_exists"), "{err}");
    let u = json(
        &ts,
        &with(
            &db,
            &[
                "user",
                "add",
                "--org",
                "globex",
                "--email",
                "ops@globex.example",
                "--role",
                "operator",
                "--password",
                "a-long-password",
                "--json",
            ],
        ),
    )
    .await;
    assert_eq!(u["role"], "operator");
    let k = json(&ts, &with(&db, &["api-key", "create", "--org", &org_id, "--permission-set", "read_only", "--json"]))
        .await;
    let key = k["value"].as_str().unwrap();
    // The key works against the running server at once.
    let me = ts.call(reqwest::Method::GET, "/v1/me/session", Some(key), None).await;
    assert_eq!(me.ok()["org_id"], org["id"]);
    // A minted session token, too.
    let s = json(&ts, &with(&db, &["session", "--user", "ops@globex.example", "--json"])).await;
    let me = ts.call(reqwest::Method::GET, "/v1/me/session", s["token"].as_str(), None).await;
    assert_eq!(me.ok()["role"], "operator");
    // Billing: the server sees the new posture on the next request.
    json(&ts, &with(&db, &["org", "billing", "--org", "globex", "--status", "past_due", "--json"])).await;
    let r = ts
        .call(
            reqwest::Method::POST,
            "/v1/providers",
            s["token"].as_str(),
            Some(serde_json::json!({"name": "p", "kind": "openai", "domain": "api.openai.com"})),
        )
        .await;
    r.expect(423, "billing_inactive");
    let (ok, _, err) =
        evershell(&ts, &with(&db, &["org", "billing", "--org", "globex", "--status", "broke"]), &[]).await;
    assert!(!ok && err.contains("--status"), "{err}");
    let (ok, _, err) = evershell(
        &ts,
        &with(&db, &["user", "add", "--org", "nope", "--email", "x@y.example", "--role", "member"]),
        &[],
    )
    .await;
    assert!(!ok && err.contains("org_not_found"), "{err}");
    ts.stop().await;
}

#[tokio::test]
async fn workspace_verbs_drive_the_lifecycle() {
    let ts = TestServer::start().await;
    ts.role("coder").await;
    let ws = json(&ts, &["workspaces", "create", "--role", "coder", "--wait", "--json"]).await;
    assert_eq!(ws["status"], "idle");
    let id = ws["id"].as_str().unwrap().to_string();
    let src = ts.dir.path().join("local.txt");
    std::fs::write(&src, "from the cli\n").unwrap();
    let put = json(&ts, &["workspaces", "files", "put", &id, "docs/local.txt", src.to_str().unwrap(), "--json"]).await;
    assert_eq!(put["path"], "docs/local.txt");
    let ls = json(&ts, &["workspaces", "files", "ls", &id, "--json"]).await;
    assert!(ls["entries"].as_array().unwrap().iter().any(|e| e["path"] == "docs/local.txt"));
    let stopped = json(&ts, &["workspaces", "stop", &id, "--wait", "--json"]).await;
    assert_eq!(stopped["status"], "stopped");
    let (ok, out, err) =
        evershell(&ts, &["workspaces", "files", "get", &id, "docs/local.txt", "--snapshot"], &[]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "from the cli\n");
    let resumed = json(&ts, &["workspaces", "resume", &id, "--wait", "--json"]).await;
    assert_eq!(resumed["status_reason"], "restored");
    let list = json(&ts, &["workspaces", "list", "--role", "coder", "--json"]).await;
    assert_eq!(list["workspaces"].as_array().unwrap().len(), 1);
    // Errors come back as `status code: message (request id)` and a failing exit.
    let (ok, _, err) = evershell(&ts, &["workspaces", "archive", &id], &[]).await;
    assert!(!ok && err.contains("409") && err.contains("invalid_state") && err.contains("request"), "{err}");
    // `login` checks the key and saves it; later commands need no env.
    let (ok, _, err) = evershell(
        &ts,
        &["login", "--url", &ts.url, "--api-key", &ts.key],
        &[("EVERSHELL_URL", ""), ("EVERSHELL_API_KEY", "")],
    )
    .await;
    assert!(ok, "{err}");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_evershell"));
    let out = cmd
        .args(["workspaces", "get", &id, "--json"])
        .env_remove("EVERSHELL_URL")
        .env_remove("EVERSHELL_API_KEY")
        .env("HOME", ts.dir.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, _, err) = evershell(&ts, &["login", "--url", &ts.url, "--api-key", "sk_live_wrong"], &[]).await;
    assert!(!ok && err.contains("401"), "{err}");
    ts.stop().await;
}

/// Run the binary with `stdin` piped in.
async fn evershell_stdin(ts: &TestServer, token: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_evershell"))
        .args(args)
        .current_dir(ts.dir.path())
        .env("EVERSHELL_URL", &ts.url)
        .env("EVERSHELL_API_KEY", token)
        .env("HOME", ts.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn secrets_and_credentials_from_the_command_line_take_values_from_stdin_or_a_file() {
    let ts = TestServer::start().await;
    let owner = ts.login(&ts.owner_email).await;
    let org = ts.org_id.parse().unwrap();
    macro_rules! run {
        ($args:expr, $stdin:expr $(,)?) => {
            evershell_stdin(&ts, &owner, $args, $stdin)
        };
    }

    let (ok, out, err) =
        run!(&["secrets", "create", "tenant", "--description", "Acme", "--json"], "from-stdin\n").await;
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert!(!out.contains("from-stdin"));
    assert_eq!(ts.app.secret_value(org, "tenant").await.unwrap().as_deref().map(String::as_str), Some("from-stdin"));

    std::fs::write(ts.dir.path().join("v.txt"), "from-file\n").unwrap();
    let (ok, _, err) = run!(&["secrets", "rotate", "tenant", "--value-file", "v.txt"], "").await;
    assert!(ok, "{err}");
    assert_eq!(ts.app.secret_value(org, "tenant").await.unwrap().as_deref().map(String::as_str), Some("from-file"));
    let (ok, out, _) = run!(&["secrets", "list"], "").await;
    assert!(ok && out.contains("tenant") && !out.contains("from-file"), "{out}");
    let (ok, _, err) = run!(&["secrets", "create", "tenant", "--value", "x"], "").await;
    assert!(!ok && err.contains("already_exists"), "{err}");
    let (ok, _, err) = run!(&["secrets", "create", "blank"], "").await;
    assert!(!ok && err.contains("empty"), "{err}");

    let (ok, out, err) = run!(
        &[
            "credentials",
            "create",
            "jira",
            "--provider",
            "jira",
            "--kind",
            "basic_auth",
            "--config",
            "username=bot",
            "--json",
        ],
        "hunter2\n",
    )
    .await;
    assert!(ok, "{err}");
    assert!(!out.contains("hunter2"));
    let cred: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cred["status"], "active");
    match ts.app.credential_for_use(org, "jira", None).await.unwrap() {
        evershell_app::credentials::CredentialUse::Ready { secret, .. } => {
            assert_eq!(secret.password.as_deref(), Some("hunter2"))
        }
        other => panic!("{other:?}"),
    }
    // A missing field is named.
    let (ok, _, err) = run!(&["credentials", "create", "j2", "--provider", "jira", "--kind", "basic_auth"], "pw").await;
    assert!(!ok && err.contains("provider_config.username"), "{err}");
    let (ok, out, _) = run!(&["credentials", "list"], "").await;
    assert!(ok && out.contains("jira") && out.contains("basic_auth"), "{out}");
    let id = cred["id"].as_str().unwrap().to_string();
    let (ok, out, _) = run!(&["credentials", "get", &id], "").await;
    assert!(ok && out.contains(&id), "{out}");
    let (ok, out, _) = run!(&["credentials", "delete", &id], "").await;
    assert!(ok && out.contains("deleted"), "{out}");
    let (ok, out, _) = run!(&["secrets", "delete", "tenant"], "").await;
    assert!(ok && out.contains("deleted"), "{out}");
    assert_eq!(created["name"], "tenant");
    ts.stop().await;
}

#[tokio::test]
async fn tasks_submit_list_get_follow_and_cancel() {
    let ts = TestServer::start().await;
    let p = ts
        .post(
            "/v1/providers",
            serde_json::json!({"name": "p", "kind": "anthropic", "domain": "api.anthropic.com", "default_model": "m"}),
        )
        .await;
    let pid = p.ok()["id"].as_str().unwrap().to_string();
    ts.post("/v1/agent-roles", serde_json::json!({"name": "coder", "provider_id": pid})).await.ok();
    let v = json(&ts, &["tasks", "submit", "--role", "coder", "say hi", "--max-continuations", "2", "--json"]).await;
    let (ws, task) = (v["workspace_id"].as_str().unwrap().to_string(), v["task_id"].as_str().unwrap().to_string());
    assert_eq!(v["status"], "submitted");
    // --follow waits for the end and says by its exit status whether the task completed: this one cannot (the
    // harness's model port is closed), so it fails with `model_error` and the command exits non-zero saying so.
    let (ok, out, err) = evershell(&ts, &["tasks", "get", &task, "--workspace", &ws, "--follow"], &[]).await;
    let t = ts.get(&format!("/v1/workspaces/{ws}/tasks/{task}")).await.ok().clone();
    assert_eq!((&t["status"], &t["reason"]), (&json!("failed"), &json!("model_error")), "{t}");
    assert!(!ok, "{out} {err}");
    assert!(out.contains(&task), "{out}");
    assert!(err.contains("failed"), "{err}");
    let list = json(&ts, &["tasks", "list", "--workspace", &ws, "--json"]).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (ok, _, err) = evershell(&ts, &["tasks", "cancel", "--workspace", &ws], &[]).await;
    assert!(!ok && err.contains("invalid_state"), "{err}");
    // A missing --file is an error naming it, and nothing is submitted (`--file` end to end: it::task_uploads).
    let (ok, _, err) = evershell(&ts, &["tasks", "submit", "--workspace", &ws, "x", "--file", "a.txt"], &[]).await;
    assert!(!ok && err.contains("a.txt"), "{err}");
    let list = json(&ts, &["tasks", "list", "--workspace", &ws, "--json"]).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (ok, _, err) = evershell(&ts, &["tasks", "submit", "x"], &[]).await;
    assert!(!ok && err.contains("--workspace"), "{err}");
    ts.stop().await;
}

#[tokio::test]
async fn activity_lists_history_and_follow_reconnects_when_the_server_ends_the_stream() {
    use evershell_core::audit::{AuditEvent, EventType};
    use tokio::io::AsyncBufReadExt;

    let ts = TestServer::start_with(|c| c.activity.max_duration_ms = 300).await;
    ts.role("coder").await;
    let ws = ts.idle_workspace("coder", &ts.key).await;
    let org: evershell_core::ids::OrgId = ts.org_id.parse().unwrap();
    let event = |t| AuditEvent::system(org, t).workspace(ws.parse().unwrap());

    // History: one JSON event per line, oldest first.
    let (ok, out, err) = evershell(&ts, &["activity", "--workspace", &ws], &[]).await;
    assert!(ok, "{err}");
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["event_type"], "workspace_ready");

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_evershell"))
        .args(["activity", "--follow"])
        .env("EVERSHELL_URL", &ts.url)
        .env("EVERSHELL_API_KEY", &ts.key)
        .env("HOME", ts.dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let connects = || async {
        let m = reqwest::get(format!("{}/metrics", ts.url)).await.unwrap().text().await.unwrap();
        m.lines()
            .filter(|l| l.starts_with("evershell_http_requests_total") && l.contains("route=\"/v1/activity/stream\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // Connected (its request answered), then an event.
    while connects().await < 1.0 {
        tokio::task::yield_now().await;
    }
    let a = event(EventType::SnapshotSaved);
    ts.app.record_activity(std::slice::from_ref(&a)).await.unwrap();
    let line = lines.next_line().await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["id"], a.id.to_string());
    // The server ends each stream after 300 ms; the client comes back (with Last-Event-ID) and keeps printing.
    while connects().await < 2.0 {
        tokio::task::yield_now().await;
    }
    let b = event(EventType::SnapshotDeleted);
    ts.app.record_activity(std::slice::from_ref(&b)).await.unwrap();
    let line = lines.next_line().await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["id"], b.id.to_string(), "next is b: nothing repeated");
    child.kill().await.unwrap();
}
