//! Faults and races on real sandboxes: 50 concurrent resumes, calls during transitions, a corrupt snapshot, a
//! sandbox killed from outside, a vanished pod, an unreachable agent, path traversal in every file route.

use std::io::{Read, Write};
use std::time::Duration;

use evershell_core::Timestamp;
use evershell_core::ids::WorkspaceId;
use reqwest::Method;
use serde_json::json;

use crate::harness::TestServer;
use crate::workspaces::pod_workspace;

async fn pod_dir(ts: &TestServer, ws: &str) -> std::path::PathBuf {
    pod_workspace(ts, ws).await.parent().unwrap().to_path_buf()
}

/// Take the workspace's reconcile lease as "test-holder" (waiting for the reconciler to let go of it).
async fn hold_lease(ts: &TestServer, id: WorkspaceId) -> evershell_store::Fence {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = Timestamp::now();
        if let Some(fence) =
            ts.app.store().claim_workspace(id, "test-holder", now, now.plus_millis(60_000)).await.unwrap()
        {
            return fence;
        }
        assert!(tokio::time::Instant::now() < deadline, "the reconciler never released {id}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stopped_workspace(ts: &TestServer, role: &str, content: &str) -> String {
    let ws = ts.idle_workspace(role, &ts.key.clone()).await;
    std::fs::write(pod_workspace(ts, &ws).await.join("data.txt"), content).unwrap();
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/stop?wait=true")).await;
    assert_eq!(r.json["status"], "stopped", "{}", r.json);
    ws
}

#[tokio::test]
async fn fifty_concurrent_resumes_make_exactly_one_transition() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let ws = stopped_workspace(&ts, &role, "x").await;
    let path = format!("/v1/workspaces/{ws}/resume");
    let calls = (0..50).map(|_| ts.post_empty(&path));
    let answers = futures::future::join_all(calls).await;
    let won = answers.iter().filter(|r| r.status == 202).count();
    let refused = answers.iter().filter(|r| r.status == 409 && r.code() == "invalid_state").count();
    assert_eq!(
        (won, refused),
        (1, 49),
        "{:?}",
        answers.iter().map(|r| (r.status, r.code().to_string())).collect::<Vec<_>>()
    );
    ts.wait_status(&ws, "idle", 60).await;
    let a = ts.get(&format!("/v1/audit?filter=event_type=workspace_resume_requested&filter=workspace_id={ws}")).await;
    assert_eq!(a.ok()["events"].as_array().unwrap().len(), 1);
    ts.stop().await;
}

#[tokio::test]
async fn calls_during_transitions_get_the_documented_409() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let ws = stopped_workspace(&ts, &role, "x").await;
    let id: WorkspaceId = ws.parse().unwrap();
    // Hold the workspace's reconcile lease so it stays in its transitional state while we poke it.
    let hold = || hold_lease(&ts, id);
    let held = hold().await;
    ts.post_empty(&format!("/v1/workspaces/{ws}/resume")).await;
    assert_eq!(ts.get(&format!("/v1/workspaces/{ws}")).await.json["status"], "provisioning");
    ts.post_empty(&format!("/v1/workspaces/{ws}/stop")).await.expect(409, "invalid_state");
    ts.post_empty(&format!("/v1/workspaces/{ws}/restart")).await.expect(409, "invalid_state");
    ts.post_empty(&format!("/v1/workspaces/{ws}/archive")).await.expect(409, "invalid_state");
    ts.get(&format!("/v1/workspaces/{ws}/sandbox/files")).await.expect(409, "workspace_provisioning");
    ts.app.store().release_workspace(id, &held).await.unwrap();
    ts.app.reconciler().wake(id);
    ts.wait_status(&ws, "idle", 60).await;
    // Resume during stopping.
    let held = hold().await;
    assert_eq!(ts.post_empty(&format!("/v1/workspaces/{ws}/stop")).await.status, 202);
    ts.post_empty(&format!("/v1/workspaces/{ws}/resume")).await.expect(409, "invalid_state");
    ts.post_empty(&format!("/v1/workspaces/{ws}/stop")).await.expect(409, "invalid_state");
    ts.app.store().release_workspace(id, &held).await.unwrap();
    ts.app.reconciler().wake(id);
    ts.wait_status(&ws, "stopped", 60).await;
    ts.stop().await;
}

#[tokio::test]
async fn a_corrupt_snapshot_fails_the_resume_and_is_kept() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let ws = stopped_workspace(&ts, &role, &"important data\n".repeat(1000)).await;
    let snap = ts.get(&format!("/v1/workspaces/{ws}")).await.json["snapshot_ref"].as_str().unwrap().to_string();
    let archive = ts
        .dir
        .path()
        .join("snapshots/orgs")
        .join(&ts.org_id)
        .join("workspaces")
        .join(&ws)
        .join("snapshots")
        .join(format!("{snap}.tar.zst"));
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&archive, &bytes).unwrap();

    assert_eq!(ts.post_empty(&format!("/v1/workspaces/{ws}/resume")).await.status, 202);
    let failed = ts.wait_status(&ws, "failed", 60).await;
    assert_eq!(failed["status_reason"], "restore_failed");
    let err = failed["last_error"].as_str().unwrap();
    assert!(err.contains("corrupt") && err.contains(&snap), "{err}");
    // Never an empty idle; the snapshot stays for inspection, byte for byte.
    assert_eq!(failed["snapshot_ref"], snap.as_str());
    assert_eq!(std::fs::read(&archive).unwrap(), bytes);
    let a = ts.get(&format!("/v1/workspaces/{ws}/audit?filter=event_type=snapshot_failed,workspace_failed")).await;
    assert_eq!(a.ok()["events"].as_array().unwrap().len(), 2);
    // No pod is left behind for the failed restore: the reconciler releases it right after writing `failed`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rec = ts.app.store().get_workspace_by_id(ws.parse().unwrap()).await.unwrap().unwrap();
        if rec.observed.pod_id.is_none() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the partial pod was never released");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    ts.stop().await;
}

#[tokio::test]
async fn a_sandbox_killed_from_outside_fails_the_workspace_and_resume_reattaches() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let ws = ts.idle_workspace(&role, &ts.key.clone()).await;
    let dir = pod_dir(&ts, &ws).await;
    std::fs::write(dir.join("workspace/unsaved.txt"), "written after the last snapshot").unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("sandbox.pid")).unwrap()).unwrap();
    let pid = rec["pid"].as_i64().unwrap() as i32;
    // SAFETY: signalling the sandbox's own process group.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let failed = ts.wait_status(&ws, "failed", 30).await;
    assert_eq!(failed["status_reason"], "pod_exited");
    let err = failed["last_error"].as_str().unwrap();
    assert!(err.contains("exited") && err.contains("resume"), "{err}");
    assert!(dir.join("workspace/unsaved.txt").exists(), "the files are kept");
    ts.get(&format!("/v1/workspaces/{ws}/sandbox/files")).await.expect(409, "workspace_failed");
    // Resume reattaches to the kept files: nothing written since the last snapshot is lost.
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/resume?wait=true")).await;
    assert_eq!(
        (r.json["status"].clone(), r.json["status_reason"].clone()),
        (json!("idle"), json!("reattached")),
        "{}",
        r.json
    );
    let d = ts.get(&format!("/v1/workspaces/{ws}/sandbox/download/unsaved.txt")).await;
    assert_eq!(d.bytes, b"written after the last snapshot");
    ts.stop().await;
}

#[tokio::test]
async fn a_vanished_pod_with_no_snapshot_needs_allow_empty() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let ws = ts.idle_workspace(&role, &ts.key.clone()).await;
    let id: WorkspaceId = ws.parse().unwrap();
    let pod = ts.app.store().get_workspace_by_id(id).await.unwrap().unwrap().observed.pod_id.unwrap();
    // Vanished means gone at once: `remove` stops the sandbox before it deletes the directory, and a reconcile in
    // between would (rightly) see an exited pod. Hold the workspace's lease while the pod goes, as below.
    let held = hold_lease(&ts, id).await;
    ts.app.runtime().remove(pod).await.unwrap();
    ts.app.store().release_workspace(id, &held).await.unwrap();
    ts.app.reconciler().wake(id);
    let failed = ts.wait_status(&ws, "failed", 60).await;
    assert_eq!(failed["status_reason"], "pod_vanished");
    ts.post_empty(&format!("/v1/workspaces/{ws}/resume")).await.expect(409, "snapshot_missing");
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/resume?allow_empty=true&wait=true")).await;
    assert_eq!(r.json["status"], "idle", "{}", r.json);
    assert_eq!(ts.get(&format!("/v1/workspaces/{ws}/sandbox/files")).await.ok()["entries"], json!([]));
    // A stop whose pod vanished keeps going, and says why there is no fresh snapshot.
    let pod = ts.app.store().get_workspace_by_id(id).await.unwrap().unwrap().observed.pod_id.unwrap();
    let held = hold_lease(&ts, id).await;
    assert_eq!(ts.post_empty(&format!("/v1/workspaces/{ws}/stop")).await.status, 202);
    ts.app.runtime().remove(pod).await.unwrap();
    ts.app.store().release_workspace(id, &held).await.unwrap();
    ts.app.reconciler().wake(id);
    let stopped = ts.wait_status(&ws, "stopped", 30).await;
    assert!(stopped["last_snapshot_error"].as_str().unwrap().contains("no longer existed"), "{stopped}");
    assert!(stopped["snapshot_ref"].is_null());
    ts.stop().await;
}

#[tokio::test]
async fn an_unreachable_agent_is_502() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let ws = ts.idle_workspace(&role, &ts.key.clone()).await;
    let dir = pod_dir(&ts, &ws).await;
    std::fs::remove_file(dir.join("run/agent.sock")).unwrap();
    ts.get(&format!("/v1/workspaces/{ws}/sandbox/files")).await.expect(502, "agent_unreachable");
    ts.put_file(&ws, "x.txt", b"x".to_vec()).await.expect(502, "agent_unreachable");
    ts.stop().await;
}

/// Send a request with a raw, unnormalised path.
fn raw_get(addr: &str, path: &str, key: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out)
}

#[tokio::test]
async fn path_traversal_is_400_in_every_file_route() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let ws = ts.idle_workspace(&role, &ts.key.clone()).await;
    let stopped = stopped_workspace(&ts, &role, "x").await;
    let addr = ts.url.trim_start_matches("http://").to_string();
    for (w, route) in [
        (&ws, "sandbox/files"),
        (&ws, "sandbox/download"),
        (&stopped, "snapshot/files"),
        (&stopped, "snapshot/download"),
    ] {
        for evil in ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "a/../../etc/passwd", "%2Fetc%2Fpasswd", "a%00b"] {
            let (a, p, k) = (addr.clone(), format!("/v1/workspaces/{w}/{route}/{evil}"), ts.key.clone());
            // Blocking socket I/O off the runtime thread the in-process server needs.
            let (status, body) = tokio::task::spawn_blocking(move || raw_get(&a, &p, &k)).await.unwrap();
            assert_eq!(status, 400, "{route}/{evil}: {body}");
            assert!(body.contains("validation_error"), "{body}");
        }
    }
    for evil in ["..%2F..%2Fetc%2Fpasswd", "a%2F..%2F..%2Fx"] {
        ts.put_file(&ws, evil, b"x".to_vec()).await.expect(400, "validation_error");
    }
    assert!(!ts.dir.path().join("pods/etc").exists());
    let _ = Method::GET;
    ts.stop().await;
}

#[tokio::test]
async fn files_a_snapshot_cannot_hold_fail_the_stop_at_once_and_are_kept() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let ws = ts.idle_workspace(&role, &ts.key.clone()).await;
    let root = pod_workspace(&ts, &ws).await;
    std::fs::write(root.join("work.txt"), "unsaved work").unwrap();
    std::os::unix::fs::symlink("../../outside", root.join("escape")).unwrap();
    // A virtualenv-style absolute link is fine.
    std::os::unix::fs::symlink("/usr/bin/python3", root.join("python")).unwrap();
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/stop?wait=true&timeout_ms=120000")).await;
    assert_eq!(r.json["status"], "failed", "{}", r.json);
    assert_eq!(r.json["status_reason"], "snapshot_failed");
    assert!(r.json["last_error"].as_str().unwrap().contains("escape"), "{}", r.json);
    assert!(root.join("work.txt").exists(), "the files are kept");
    // Resume reattaches to them; once the link is fixed the stop succeeds with everything saved.
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/resume?wait=true")).await;
    assert_eq!(r.json["status_reason"], "reattached", "{}", r.json);
    std::fs::remove_file(pod_workspace(&ts, &ws).await.join("escape")).unwrap();
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/stop?wait=true")).await;
    assert_eq!(r.json["status"], "stopped", "{}", r.json);
    let f = ts.get(&format!("/v1/workspaces/{ws}/snapshot/files/work.txt")).await;
    assert_eq!(f.ok()["content"], "unsaved work");
    ts.stop().await;
}

/// Run a shell script in the workspace's sandbox; returns stdout.
async fn sh(ts: &TestServer, ws: &str, script: &str) -> String {
    let r = ts.post(&format!("/v1/workspaces/{ws}/sandbox/exec"), json!({ "argv": ["sh", "-c", script] })).await;
    let v = r.ok();
    assert_eq!(v["exit_code"], 0, "{script}: {v}");
    v["stdout"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_sparse_disk_bomb_stays_sparse_through_stop_and_resume() {
    let ts = TestServer::start().await;
    let (_, _, role) = ts.role("coder").await;
    let ws = ts.idle_workspace(&role, &ts.key.clone()).await;
    // 8 GiB apparent, a few bytes of data.
    sh(&ts, &ws, "truncate -s 8G bomb && printf data | dd of=bomb bs=1 seek=4096 conv=notrunc 2>/dev/null").await;
    let started = std::time::Instant::now();
    let stopped = ts.post_empty(&format!("/v1/workspaces/{ws}/stop?wait=true&timeout_ms=120000")).await;
    assert_eq!(stopped.ok()["status"], "stopped", "{}", stopped.json);
    let size = stopped.json["snapshot"]["size_bytes"].as_u64().unwrap();
    assert!(size < 1 << 20, "the snapshot of a sparse file holds {size} bytes");
    let resumed = ts.post_empty(&format!("/v1/workspaces/{ws}/resume?wait=true&timeout_ms=120000")).await;
    assert_eq!(resumed.ok()["status"], "idle", "{}", resumed.json);
    // Restored with its holes: 8 GiB long, almost nothing allocated, the data in place.
    let out = sh(&ts, &ws, "stat -c '%s %b %B' bomb; dd if=bomb bs=1 skip=4096 count=4 2>/dev/null").await;
    let (stat, data) = out.split_once('\n').unwrap();
    let f: Vec<u64> = stat.split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(f[0], 8 << 30);
    assert!(f[1] * f[2] < 1 << 20, "restored file allocates {} bytes", f[1] * f[2]);
    assert_eq!(data, "data");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "{:?}", started.elapsed());
    ts.stop().await;
}

#[tokio::test]
async fn a_workspace_over_its_content_cap_fails_its_stop_and_keeps_its_files() {
    let ts = TestServer::start_with(|cfg| cfg.runtime.max_workspace_bytes = 1 << 20).await;
    let (_, _, role) = ts.role("coder").await;
    let ws = ts.idle_workspace(&role, &ts.key.clone()).await;
    sh(&ts, &ws, "head -c 2097152 /dev/urandom > big").await;
    assert_eq!(ts.post_empty(&format!("/v1/workspaces/{ws}/stop")).await.status, 202);
    let failed = ts.wait_status(&ws, "failed", 60).await;
    assert_eq!(failed["status_reason"], "snapshot_failed");
    let err = failed["last_error"].as_str().unwrap();
    assert!(err.contains("1048576") && err.contains("files are kept"), "{err}");
    // Nothing was lost: the files are still there after a resume, which reattaches them.
    let resumed = ts.post_empty(&format!("/v1/workspaces/{ws}/resume?wait=true&timeout_ms=60000")).await;
    assert_eq!(resumed.ok()["status"], "idle", "{}", resumed.json);
    assert_eq!(sh(&ts, &ws, "wc -c < big").await.trim(), "2097152");
    ts.stop().await;
}
