//! Workspaces on real sandboxes: the seed page (resume a stopped workspace) end to end, restart, archive, stop-all,
//! role stop-workspaces and the archive guards, files live and in the snapshot, wait, idempotency.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use evershell_core::ids::{SnapshotId, WorkspaceId};
use evershell_core::scope::MemberRole;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::TestServer;

/// The host directory of a workspace's current pod `/workspace`.
pub async fn pod_workspace(ts: &TestServer, ws: &str) -> PathBuf {
    let id: WorkspaceId = ws.parse().unwrap();
    let rec = ts.app.store().get_workspace_by_id(id).await.unwrap().unwrap();
    ts.dir.path().join("pods").join(rec.observed.pod_id.expect("the workspace has a pod").to_string()).join("workspace")
}

/// Fill a workspace (through the host side of its pod) with what a snapshot must preserve.
pub fn seed_tree(root: &std::path::Path) {
    use std::fs;
    fs::create_dir_all(root.join("src/nested/deeper")).unwrap();
    fs::create_dir_all(root.join("empty/dir")).unwrap();
    fs::write(root.join("src/main.rs"), "fn main() { println!(\"hi\"); }\n").unwrap();
    fs::write(root.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("secret.txt"), "private").unwrap();
    fs::set_permissions(root.join("secret.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("blob.bin"), (0..=255u8).cycle().take(70_000).collect::<Vec<_>>()).unwrap();
    std::os::unix::fs::symlink("src/main.rs", root.join("link-to-main")).unwrap();
    std::os::unix::fs::symlink("../nowhere", root.join("src/dangling")).unwrap();
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    filetime::set_file_mtime(root.join("src/main.rs"), t).unwrap();
    filetime::set_file_mtime(root.join("empty/dir"), t).unwrap();
}

/// Check what `seed_tree` wrote survived.
pub fn check_tree(root: &std::path::Path) {
    use std::fs;
    assert_eq!(fs::read_to_string(root.join("src/main.rs")).unwrap(), "fn main() { println!(\"hi\"); }\n");
    assert_eq!(fs::metadata(root.join("run.sh")).unwrap().mode() & 0o777, 0o755);
    assert_eq!(fs::metadata(root.join("secret.txt")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::read(root.join("blob.bin")).unwrap(), (0..=255u8).cycle().take(70_000).collect::<Vec<_>>());
    assert_eq!(fs::read_link(root.join("link-to-main")).unwrap(), PathBuf::from("src/main.rs"));
    assert_eq!(fs::read_link(root.join("src/dangling")).unwrap(), PathBuf::from("../nowhere"));
    assert!(fs::metadata(root.join("empty/dir")).unwrap().is_dir());
    assert!(fs::metadata(root.join("src/nested/deeper")).unwrap().is_dir());
    assert_eq!(fs::metadata(root.join("src/main.rs")).unwrap().mtime(), 1_600_000_000);
    assert_eq!(fs::metadata(root.join("empty/dir")).unwrap().mtime(), 1_600_000_000);
}

fn events(v: &Value) -> Vec<String> {
    v["events"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn resume_a_stopped_workspace_as_the_seed_page_describes() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let (member_id, member) = ts.user("dev@acme.example", MemberRole::Member).await;

    // Created by a member (workspace:write:own), ends idle on a fresh pod.
    let ws = ts.idle_workspace(&role, &member).await;
    let got = ts.call(Method::GET, &format!("/v1/workspaces/{ws}"), Some(&member), None).await;
    let got = got.ok();
    assert_eq!(got["created_by_user_id"], member_id.as_str());
    assert_eq!(got["status_reason"], "ready");
    assert_eq!(got["pack_status"], "current");
    assert!(got["snapshot"].is_null());
    seed_tree(&pod_workspace(&ts, &ws).await);
    let r = ts.put_file(&ws, "notes/todo.md", b"- resume works\n".to_vec()).await;
    assert_eq!(r.ok()["path"], "notes/todo.md");
    let live = ts.get(&format!("/v1/workspaces/{ws}/sandbox/files")).await;
    let paths: Vec<_> =
        live.ok()["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap().to_string()).collect();
    assert!(paths.contains(&"notes/todo.md".to_string()) && paths.contains(&"src/main.rs".to_string()), "{paths:?}");

    // Stop: a verified snapshot with its manifest on the workspace.
    let r = ts.call(Method::POST, &format!("/v1/workspaces/{ws}/stop"), Some(&member), None).await;
    assert_eq!((r.status.as_u16(), r.json.clone()), (202, json!({"status": "stopping"})));
    let stopped =
        ts.call(Method::GET, &format!("/v1/workspaces/{ws}?wait=true&timeout_ms=60000"), Some(&member), None).await;
    let stopped = stopped.ok().clone();
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(stopped["status_reason"], "stop_requested");
    let snap = &stopped["snapshot"];
    assert!(snap["ref"].as_str().unwrap().starts_with("snap_"));
    assert_eq!(snap["ref"], stopped["snapshot_ref"]);
    assert_eq!(snap["sha256"].as_str().unwrap().len(), 64);
    assert!(snap["size_bytes"].as_i64().unwrap() > 0);
    assert!(snap["file_count"].as_i64().unwrap() >= 12, "{snap}");
    assert!(stopped["last_snapshot_error"].is_null());
    // Live files need a running pod.
    ts.get(&format!("/v1/workspaces/{ws}/sandbox/files")).await.expect(409, "workspace_stopped");

    // Snapshot files, read without unpacking.
    let list = ts.get(&format!("/v1/workspaces/{ws}/snapshot/files")).await;
    assert!(list.ok()["entries"].as_array().unwrap().iter().any(|e| e["path"] == "notes/todo.md"));
    let f = ts.get(&format!("/v1/workspaces/{ws}/snapshot/files/src/main.rs")).await;
    assert_eq!(f.ok()["content"], "fn main() { println!(\"hi\"); }\n");
    assert_eq!(f.json["truncated"], false);
    let f = ts.get(&format!("/v1/workspaces/{ws}/snapshot/files/src/main.rs?max_bytes=4")).await;
    assert_eq!((f.ok()["content"].clone(), f.json["truncated"].clone()), (json!("fn m"), json!(true)));
    let f = ts.get(&format!("/v1/workspaces/{ws}/snapshot/files/blob.bin")).await;
    assert!(f.ok()["content"].is_null(), "binary");
    let d = ts.get(&format!("/v1/workspaces/{ws}/snapshot/download/blob.bin")).await;
    assert_eq!(d.bytes.len(), 70_000);
    assert!(d.headers["content-disposition"].to_str().unwrap().contains("attachment"));
    ts.get(&format!("/v1/workspaces/{ws}/snapshot/files/missing.txt")).await.expect(404, "file_not_found");
    ts.get(&format!("/v1/workspaces/{ws}/snapshot/files/..%2F..%2Fetc%2Fpasswd")).await.expect(400, "validation_error");

    // Resume (tasks:write:own, creator match): 202 resuming, then idle on a fresh pod with everything restored.
    let r = ts.call(Method::POST, &format!("/v1/workspaces/{ws}/resume"), Some(&member), None).await;
    assert_eq!((r.status.as_u16(), r.json.clone()), (202, json!({"status": "resuming"})));
    let now = ts.call(Method::GET, &format!("/v1/workspaces/{ws}"), Some(&member), None).await;
    assert!(["provisioning", "idle"].contains(&now.ok()["status"].as_str().unwrap()));
    let idle = ts.wait_status(&ws, "idle", 60).await;
    assert_eq!(idle["status_reason"], "restored");
    check_tree(&pod_workspace(&ts, &ws).await);
    let d = ts.get(&format!("/v1/workspaces/{ws}/sandbox/download/notes/todo.md")).await;
    assert_eq!(d.bytes, b"- resume works\n");
    let f = ts.get(&format!("/v1/workspaces/{ws}/sandbox/files/notes/todo.md")).await;
    assert_eq!(f.ok()["content"], "- resume works\n");

    // The audit trail tells the story.
    let a = ts.get(&format!("/v1/workspaces/{ws}/audit?order=asc&limit=1000")).await;
    let ev = events(a.ok());
    for t in [
        "workspace_created",
        "workspace_ready",
        "workspace_stop_requested",
        "snapshot_saved",
        "workspace_stopped",
        "workspace_resume_requested",
        "snapshot_restored",
    ] {
        assert!(ev.contains(&t.to_string()), "{t} missing from {ev:?}");
    }
    let requested =
        a.json["events"].as_array().unwrap().iter().find(|e| e["event_type"] == "workspace_resume_requested").unwrap();
    assert_eq!(requested["user_id"], member_id.as_str());
    assert_eq!(requested["agent_role"], "coder");
    assert_eq!(requested["agent_provider"], "coder-prov");
    ts.stop().await;
}

#[tokio::test]
async fn restart_archive_unarchive_and_their_guards() {
    let ts = TestServer::start().await;
    let (pid, rid, role) = ts.role("coder").await;
    let ws = ts.idle_workspace(&role, &ts.key.clone()).await;
    let first_pod = pod_workspace(&ts, &ws).await;
    std::fs::write(first_pod.join("keep.txt"), "kept across restart").unwrap();

    ts.post_empty(&format!("/v1/workspaces/{ws}/archive")).await.expect(409, "invalid_state");
    ts.post_empty(&format!("/v1/agent-roles/{rid}/archive")).await.expect(409, "workspaces_active");
    ts.post_empty(&format!("/v1/providers/{pid}/archive")).await.expect(409, "workspaces_active");
    ts.post_empty(&format!("/v1/workspaces/{ws}/resume")).await.expect(409, "invalid_state");

    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/restart")).await;
    assert_eq!((r.status.as_u16(), r.json.clone()), (202, json!({"status": "restarting"})));
    let idle = ts.get(&format!("/v1/workspaces/{ws}?wait=true")).await;
    assert_eq!(idle.ok()["status"], "idle");
    assert_eq!(idle.json["status_reason"], "restored");
    let second_pod = pod_workspace(&ts, &ws).await;
    assert_ne!(first_pod, second_pod, "a fresh pod");
    assert!(!first_pod.exists(), "the old pod is gone");
    assert_eq!(std::fs::read_to_string(second_pod.join("keep.txt")).unwrap(), "kept across restart");

    // Stop with wait answers with the settled workspace.
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/stop?wait=true&timeout_ms=60000")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["status"], "stopped");
    ts.post_empty(&format!("/v1/workspaces/{ws}/stop")).await.expect(409, "invalid_state");
    ts.post_empty(&format!("/v1/workspaces/{ws}/restart")).await.expect(409, "invalid_state");
    ts.post_empty(&format!("/v1/workspaces/{ws}/unarchive")).await.expect(409, "not_archived");
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/archive")).await;
    assert_eq!((r.status.as_u16(), r.json.clone()), (200, json!({"status": "archived"})));
    ts.post_empty(&format!("/v1/workspaces/{ws}/archive")).await.expect(409, "invalid_state");
    assert_eq!(ts.get("/v1/workspaces").await.ok()["workspaces"], json!([]), "hidden by default");
    let all = ts.get("/v1/workspaces?include_archived=true").await;
    assert_eq!(all.ok()["workspaces"][0]["status"], "stopped", "archiving keeps the status");
    ts.post_empty(&format!("/v1/workspaces/{ws}/resume")).await.expect(409, "workspace_archived");
    ts.post_empty(&format!("/v1/workspaces/{ws}/restart")).await.expect(409, "workspace_archived");
    // Parents: role archive now passes (no active workspace), and resume names the archived parent.
    assert_eq!(ts.post_empty(&format!("/v1/workspaces/{ws}/unarchive")).await.ok()["status"], "unarchived");
    assert_eq!(ts.post_empty(&format!("/v1/agent-roles/{rid}/archive")).await.ok()["status"], "archived");
    ts.post_empty(&format!("/v1/workspaces/{ws}/resume")).await.expect(409, "role_archived");
    ts.post("/v1/workspaces", json!({"role_name": role})).await.expect(409, "role_archived");
    assert_eq!(ts.post_empty(&format!("/v1/providers/{pid}/archive")).await.ok()["status"], "archived");
    ts.post_empty(&format!("/v1/agent-roles/{rid}/unarchive")).await.expect(409, "provider_archived");
    ts.post_empty(&format!("/v1/providers/{pid}/unarchive")).await.ok();
    ts.post_empty(&format!("/v1/agent-roles/{rid}/unarchive")).await.ok();
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/resume?wait=true")).await;
    assert_eq!(r.json["status"], "idle", "{}", r.json);
    ts.stop().await;
}

#[tokio::test]
async fn listing_filters_ownership_and_bulk_stops() {
    let ts = TestServer::start().await;
    let (_, rid, role) = ts.role("coder").await;
    ts.role("reviewer").await;
    let (_, alice) = ts.user("alice@acme.example", MemberRole::Member).await;
    let (_, bob) = ts.user("bob@acme.example", MemberRole::Member).await;
    let a = ts.idle_workspace(&role, &alice).await;
    let b = ts.idle_workspace("reviewer", &bob).await;
    // Members see only their own; reading another's is workspace_not_visible; writing it is permission_denied.
    let mine = ts.call(Method::GET, "/v1/workspaces", Some(&alice), None).await;
    let ids: Vec<_> =
        mine.ok()["workspaces"].as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec![a.clone()]);
    ts.call(Method::GET, &format!("/v1/workspaces/{b}"), Some(&alice), None).await.expect(403, "workspace_not_visible");
    ts.call(Method::POST, &format!("/v1/workspaces/{b}/stop"), Some(&alice), None)
        .await
        .expect(403, "permission_denied");
    ts.call(Method::POST, &format!("/v1/workspaces/{b}/resume"), Some(&alice), None)
        .await
        .expect(403, "permission_denied");
    ts.call(Method::POST, "/v1/workspaces/stop-all", Some(&alice), None).await.expect(403, "permission_denied");
    // Filters.
    assert_eq!(
        ts.get(&format!("/v1/workspaces?role_name={role}")).await.ok()["workspaces"].as_array().unwrap().len(),
        1
    );
    ts.get("/v1/workspaces?role_name=typo").await.expect(404, "role_not_found");
    ts.get("/v1/workspaces?status=sleeping").await.expect(400, "validation_error");
    assert_eq!(ts.get("/v1/workspaces?status=idle").await.ok()["workspaces"].as_array().unwrap().len(), 2);
    ts.get("/v1/workspaces/ws_01JD8X3Q5M2N4P6R8T0V2W4Y6Z").await.expect(404, "workspace_not_found");
    ts.get("/v1/workspaces/garbage").await.expect(404, "workspace_not_found");
    ts.post("/v1/workspaces", json!({})).await.expect(400, "validation_error");
    ts.post("/v1/workspaces", json!({"role_name": "nope"})).await.expect(404, "role_not_found");
    ts.post("/v1/workspaces", json!({"role_id": "role_01JD8X3Q5M2N4P6R8T0V2W4Y6Z"}))
        .await
        .expect(404, "role_not_found");
    // Role-wide stop, then org-wide stop; both idempotent.
    let r = ts.post_empty(&format!("/v1/agent-roles/{rid}/stop-workspaces")).await;
    assert_eq!(r.ok()["stopping"], 1);
    let r = ts.post_empty(&format!("/v1/agent-roles/{rid}/stop-workspaces")).await;
    assert_eq!(r.ok()["stopping"], 0);
    assert_eq!(ts.wait_status(&a, "stopped", 60).await["status_reason"], "role_stop_workspaces");
    let r = ts.post_empty("/v1/workspaces/stop-all").await;
    assert_eq!(r.ok()["stopping"], 1);
    assert_eq!(ts.wait_status(&b, "stopped", 60).await["status_reason"], "stop_all");
    ts.stop().await;
}

#[tokio::test]
async fn idempotency_keys_replay_and_refuse_reuse() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let post = |key: &'static str, body: Value| {
        ts.raw(
            ts.request(Method::POST, "/v1/workspaces").bearer_auth(&ts.key).header("idempotency-key", key).json(&body),
        )
    };
    let first = post("create-1", json!({"role_name": role})).await;
    assert_eq!(first.status, 201);
    let again = post("create-1", json!({"role_name": role})).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.json["id"], first.json["id"], "replayed, not created twice");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    post("create-1", json!({"role_name": role, "environment": "x"})).await.expect(422, "idempotency_key_reused");
    // Errors replay too.
    let e1 = post("bad-1", json!({"role_name": "nope"})).await;
    e1.expect(404, "role_not_found");
    post("bad-1", json!({"role_name": "nope"})).await.expect(404, "role_not_found");
    assert_eq!(ts.get("/v1/workspaces").await.ok()["workspaces"].as_array().unwrap().len(), 1);
    let ws = first.json["id"].as_str().unwrap();
    ts.wait_status(ws, "idle", 60).await;
    ts.stop().await;
}

#[tokio::test]
async fn the_same_lifecycle_runs_on_postgresql() {
    let ts = TestServer::start_on(crate::harness::Db::Postgres).await;
    let (_, _, role) = ts.role("coder").await;
    let ws = ts.idle_workspace(&role, &ts.key.clone()).await;
    seed_tree(&pod_workspace(&ts, &ws).await);
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/stop?wait=true")).await;
    assert_eq!(r.json["status"], "stopped", "{}", r.json);
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/resume?wait=true")).await;
    assert_eq!(
        (r.json["status"].clone(), r.json["status_reason"].clone()),
        (json!("idle"), json!("restored")),
        "{}",
        r.json
    );
    check_tree(&pod_workspace(&ts, &ws).await);
    let a = ts.get(&format!("/v1/workspaces/{ws}/audit?limit=1000")).await;
    assert!(events(a.ok()).contains(&"snapshot_restored".to_string()));
    ts.stop().await;
}

#[tokio::test]
async fn new_pods_come_from_spares_set_up_ahead() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    // Wait for what the runtime calls ready (its agent held and `run/held` written), not merely a sandbox.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let spare = loop {
        if let Some(pod) = ts.app.runtime().ready_spares().first() {
            break *pod;
        }
        assert!(tokio::time::Instant::now() < deadline, "no spare pod became ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(ts.dir.path().join("pods/.spare").join(spare.to_string()).join("run/held").exists());
    let ws = ts.idle_workspace(&role, &ts.key.clone()).await;
    let rec = ts.app.store().get_workspace_by_id(ws.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(rec.observed.pod_id.unwrap(), spare, "the workspace runs in the spare that was ready");
    assert!(pod_workspace(&ts, &ws).await.exists());
    ts.stop().await;
}

#[tokio::test]
async fn a_newer_snapshot_replaces_the_older_one_and_start_up_collects_leftovers() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let ws = ts.idle_workspace(&role, &ts.key).await;
    ts.put_file(&ws, "a.txt", b"one".to_vec()).await.ok();
    let first: SnapshotId = stop_for_snapshot(&ts, &ws).await;
    let first_rec = ts.app.store().get_snapshot(first).await.unwrap().unwrap();
    let first_objects: Vec<PathBuf> =
        [&first_rec.archive_key, &first_rec.manifest_key].map(|k| ts.dir.path().join("snapshots").join(k)).into();
    let saved: Vec<Vec<u8>> = first_objects.iter().map(|p| std::fs::read(p).unwrap()).collect();

    // Resume, change, stop again: the second snapshot is current; the first goes once the stop has answered.
    ts.post_empty(&format!("/v1/workspaces/{ws}/resume?wait=true&timeout_ms=60000")).await.ok();
    ts.put_file(&ws, "a.txt", b"two".to_vec()).await.ok();
    let second: SnapshotId = stop_for_snapshot(&ts, &ws).await;
    assert_ne!(first, second);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ts.app.store().get_snapshot(first).await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "the replaced snapshot was not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(first_objects.iter().all(|p| !p.exists()));
    let a = ts.get(&format!("/v1/workspaces/{ws}/audit?filter=event_type=snapshot_deleted")).await;
    let deleted = &a.ok()["events"].as_array().unwrap()[0];
    assert_eq!(deleted["details"]["snapshot_id"], first.to_string());
    assert_eq!(deleted["details"]["replaced_by"], second.to_string());

    // A crash between the stop's answer and that deletion leaves the first one behind: put it back as it was, then
    // restart. Start-up deletes it (and audits it); the current one is untouched and resumes.
    for (p, b) in first_objects.iter().zip(&saved) {
        std::fs::write(p, b).unwrap();
    }
    ts.app.store().insert_snapshot(&first_rec).await.unwrap();
    let key = ts.key.clone();
    let (dir, db) = ts.stop().await;
    let mut ts = TestServer::start_at(dir, db, false).await;
    ts.key = key;
    assert_eq!(ts.app.store().get_snapshot(first).await.unwrap(), None);
    assert!(first_objects.iter().all(|p| !p.exists()));
    assert!(ts.app.store().get_snapshot(second).await.unwrap().is_some());
    let a = ts.get(&format!("/v1/workspaces/{ws}/audit?filter=event_type=snapshot_deleted")).await;
    assert_eq!(a.ok()["events"].as_array().unwrap().len(), 2, "{}", a.json);
    ts.post_empty(&format!("/v1/workspaces/{ws}/resume?wait=true&timeout_ms=60000")).await.ok();
    let d = ts.get(&format!("/v1/workspaces/{ws}/sandbox/download/a.txt")).await;
    assert_eq!(d.bytes, b"two");
    ts.stop().await;
}

/// Stop `ws` and wait: the snapshot it saved.
async fn stop_for_snapshot(ts: &TestServer, ws: &str) -> SnapshotId {
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/stop?wait=true&timeout_ms=60000")).await;
    assert_eq!(r.ok()["status"], "stopped");
    r.json["snapshot_ref"].as_str().unwrap().parse().unwrap()
}
