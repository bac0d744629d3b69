//! The data directory is private: the server creates it `0700` and every file in it `0600` (database, WAL/SHM,
//! lock, snapshot archives and manifests), so does the admin CLI, and a server refuses to start on a directory or
//! database other users can read, naming the `chmod` that fixes it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::harness::{PASSWORD, TestServer};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Every regular file under `dir`, pods excluded (their files belong to the sandbox).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() && e.file_name() != "pods" {
            files_under(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

#[tokio::test]
async fn the_server_keeps_its_data_private_and_refuses_a_readable_data_dir() {
    let outer = tempfile::tempdir().unwrap();
    // Sandboxes run as unprivileged uids and reach their pod directories by path: what lies above the data dir
    // must be searchable (the data dir itself the server opens to the pods' group alone).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::create_dir(outer.path().join("state")).unwrap();
    std::fs::set_permissions(outer.path().join("state"), std::fs::Permissions::from_mode(0o711)).unwrap();
    let data = outer.path().join("state/data");
    let db_url = format!("sqlite://{}", data.join("evershell.db").display());
    let data2 = data.clone();
    let ts = TestServer::start_at_with(tempfile::tempdir().unwrap(), db_url.clone(), true, move |c| {
        c.data_dir = data2;
    })
    .await;
    // 0700, plus search for the pods' group when the server gives pods their own uids (as root).
    let expected = if unsafe { libc::geteuid() } == 0 { 0o710 } else { 0o700 };
    assert_eq!(mode(&data), expected, "data dir");
    assert_eq!(mode(&data.join("snapshots")), 0o700, "snapshots dir");
    // A snapshot on disk: create, write a file, stop.
    ts.role("coder").await;
    let ws = ts.idle_workspace("coder", &ts.key).await;
    ts.put_file(&ws, "notes.md", b"secret plans".to_vec()).await.ok();
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/stop?wait=true&timeout_ms=60000")).await;
    assert_eq!(r.ok()["status"], "stopped", "{}", r.json);
    let mut files = Vec::new();
    files_under(&data, &mut files);
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in ["evershell.db", "evershell.db-wal", "evershell.db-shm", "serve.lock"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    assert!(names.iter().any(|n| n.ends_with(".tar.zst")), "no archive in {names:?}");
    assert!(names.iter().any(|n| n.ends_with(".manifest.json")), "no manifest in {names:?}");
    for f in &files {
        // The platform CA's certificate is public by design (pods trust it); its key is 0600 like the rest.
        if f.ends_with("egress-ca/ca.pem") {
            assert_eq!(mode(f), 0o644, "{}", f.display());
            continue;
        }
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert!(names.iter().any(|n| n == "ca.key"), "the in-process proxy's CA is in the data dir: {names:?}");
    ts.stop().await;

    // Readable by others: refused, naming the fix.
    let cfg = |d: &Path| {
        let mut c = crate::harness::config(d, &db_url);
        c.data_dir = d.to_path_buf();
        c
    };
    chmod(&data, 0o755);
    let err = evershell::server::start(cfg(&data)).await.err().expect("refused").to_string();
    assert!(err.contains(&format!("chmod 700 {}", data.display())), "{err}");
    chmod(&data, 0o700);
    chmod(&data.join("evershell.db"), 0o644);
    let err = evershell::server::start(cfg(&data)).await.err().expect("refused").to_string();
    assert!(err.contains(&format!("chmod 600 {}", data.join("evershell.db").display())), "{err}");
    chmod(&data.join("evershell.db"), 0o600);
    // Group search only (for sandboxes running as a group member): accepted.
    chmod(&data, 0o710);
    let s = evershell::server::start(cfg(&data)).await.expect("starts with 0710");
    let app = s.app.clone();
    s.shutdown().await.unwrap();
    crate::harness::remove_pods(&app).await;
}

#[tokio::test]
async fn the_admin_cli_creates_a_private_data_dir() {
    let outer = tempfile::tempdir().unwrap();
    let data = outer.path().join("fresh");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_evershell"))
        .args(["admin", "--data-dir", data.to_str().unwrap(), "bootstrap", "--org", "acme"])
        .args(["--email", "owner@acme.example", "--password", PASSWORD, "--json"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&data), 0o700);
    let mut files = Vec::new();
    files_under(&data, &mut files);
    assert!(files.iter().any(|f| f.ends_with("evershell.db")), "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
}
