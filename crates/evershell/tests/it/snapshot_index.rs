//! Snapshot file routes over an indexed snapshot: a file spread over several zstd frames reads back whole, and a
//! damaged entry index is refused with the error envelope (never a bare 500), while resume still restores.

use crate::harness::TestServer;

/// The one `….index.zst` under the server's snapshot directory.
fn index_file(ts: &TestServer) -> std::path::PathBuf {
    let mut stack = vec![ts.dir.path().to_path_buf()];
    let mut found = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".index.zst") {
                found.push(p);
            }
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

#[tokio::test]
async fn snapshot_reads_go_through_the_index_and_a_damaged_index_is_an_enveloped_error() {
    let ts = TestServer::start().await;
    ts.role("coder").await;
    let ws = ts.idle_workspace("coder", &ts.key).await;
    // Incompressible files of 6 MiB each: 17 MiB of tar, so the archive has two frames at least.
    let noise = |seed: u8| -> Vec<u8> {
        let mut x = u64::from(seed) | 1;
        (0..6 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    for (name, seed) in [("a.bin", 1u8), ("b.bin", 2), ("c.bin", 3)] {
        ts.put_file(&ws, name, noise(seed)).await.ok();
    }
    ts.put_file(&ws, "notes.md", b"# notes\n".to_vec()).await.ok();
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/stop?wait=true&timeout_ms=60000")).await;
    assert_eq!(r.ok()["status"], "stopped");

    let list = ts.get(&format!("/v1/workspaces/{ws}/snapshot/files")).await;
    let paths: Vec<_> = list.ok()["entries"].as_array().unwrap().iter().map(|e| e["path"].clone()).collect();
    assert_eq!(paths, ["a.bin", "b.bin", "c.bin", "notes.md"], "{}", list.json);
    let d = ts.get(&format!("/v1/workspaces/{ws}/snapshot/download/c.bin")).await;
    assert!(d.bytes == noise(3), "c.bin reads back whole");
    let f = ts.get(&format!("/v1/workspaces/{ws}/snapshot/files/notes.md")).await;
    assert_eq!(f.ok()["content"], "# notes\n");

    // Damage the index: every snapshot read is refused in the envelope.
    let index = index_file(&ts);
    let mut bytes = std::fs::read(&index).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&index, bytes).unwrap();
    for path in ["snapshot/files", "snapshot/files/notes.md", "snapshot/download/a.bin"] {
        let r = ts.get(&format!("/v1/workspaces/{ws}/{path}")).await;
        r.expect(500, "internal");
        let msg = r.json["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains("file index"), "{path}: {}", r.json);
    }
    // Restore never reads the index.
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/resume?wait=true&timeout_ms=60000")).await;
    assert_eq!(r.ok()["status"], "idle");
    let d = ts.get(&format!("/v1/workspaces/{ws}/sandbox/download/b.bin")).await;
    assert!(d.bytes == noise(2));
    ts.stop().await;
}
