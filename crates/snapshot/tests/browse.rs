//! Listing, reading and downloading files straight from the archive stream, without unpacking it.

mod common;

use std::fs;

use common::*;
use evershell_core::files::RelPath;
use evershell_snapshot::SnapshotError;
use futures::StreamExt;

fn rel(p: &str) -> RelPath {
    RelPath::parse(p).unwrap()
}

#[tokio::test]
async fn list_files_describes_every_entry() {
    for (name, h) in both() {
        let src = tempfile::tempdir().unwrap();
        fixture(src.path());
        let (ids, keys) = ids_and_keys();
        h.snaps.capture(src.path(), &keys, ids).await.unwrap();
        let entries = h.snaps.list_files(&keys).await.unwrap();
        let paths: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
        let want: Vec<String> = walk(src.path()).iter().map(|p| p.to_str().unwrap().to_string()).collect();
        assert_eq!(paths, want, "{name}");
        let get = |p: &str| entries.iter().find(|e| e.path == p).unwrap();

        let dir = get("src/nested");
        assert!(dir.is_dir && dir.size == 0, "{name}");
        assert_eq!(dir.mime_type.as_deref(), Some("inode/directory"));
        assert_eq!(dir.mtime, 1_650_000_012.25);

        let script = get("run.sh");
        assert!(!script.is_dir && !script.readonly);
        assert_eq!(script.size, 18);
        assert_eq!(script.mtime, 1_700_000_002.123);
        assert_eq!(script.mime_type.as_deref(), Some("application/x-sh"));

        assert!(get("src/readonly.txt").readonly);
        assert_eq!(get("src/readonly.txt").mime_type.as_deref(), Some("text/plain"));
        assert_eq!(get("src/nested/main.rs").mime_type.as_deref(), Some("text/x-rust"));

        let link = get("link-to-main");
        assert_eq!(link.mime_type.as_deref(), Some("inode/symlink"));
        assert_eq!(link.size, "src/nested/main.rs".len() as i64);
        assert!(!link.is_dir);
        assert!(get("empty").is_dir);
    }
}

#[tokio::test]
async fn read_file_returns_bytes_and_truncates_at_max_bytes() {
    for (name, h) in both() {
        let src = tempfile::tempdir().unwrap();
        fixture(src.path());
        let (ids, keys) = ids_and_keys();
        h.snaps.capture(src.path(), &keys, ids).await.unwrap();

        let whole = h.snaps.read_file(&keys, &rel("README.md"), 1024).await.unwrap();
        assert_eq!(whole.bytes, b"# hello\n", "{name}");
        assert!(!whole.truncated);
        assert_eq!(whole.entry.path, "README.md");

        let exact = h.snaps.read_file(&keys, &rel("README.md"), 8).await.unwrap();
        assert!(!exact.truncated && exact.bytes.len() == 8);

        let cut = h.snaps.read_file(&keys, &rel("src/nested/main.rs"), 5).await.unwrap();
        assert_eq!(cut.bytes, b"fn ma");
        assert!(cut.truncated);
        assert_eq!(cut.entry.size, 6500);

        let binary = h.snaps.read_file(&keys, &rel("src/nested/deeper/data.bin"), 1 << 20).await.unwrap();
        assert_eq!(binary.bytes, noise(70_000, 7), "{name}: binary must read back byte-exact");

        let empty = h.snaps.read_file(&keys, &rel("src/empty-file"), 10).await.unwrap();
        assert!(empty.bytes.is_empty() && !empty.truncated);

        for missing in ["nope.txt", "src", "empty", "link-to-main", "src/nested/main"] {
            let err = h.snaps.read_file(&keys, &rel(missing), 10).await.unwrap_err();
            assert!(matches!(&err, SnapshotError::FileNotFound(p) if p == missing), "{name} {missing}: {err}");
        }
    }
}

#[tokio::test]
async fn download_streams_a_large_file_byte_exact() {
    for (name, h) in both() {
        let src = tempfile::tempdir().unwrap();
        let big = noise(50 << 20, 42);
        fs::create_dir(src.path().join("out")).unwrap();
        fs::write(src.path().join("out/big.bin"), &big).unwrap();
        fs::write(src.path().join("after.txt"), b"after").unwrap();
        let (ids, keys) = ids_and_keys();
        let manifest = h.snaps.capture(src.path(), &keys, ids).await.unwrap();
        assert_eq!(manifest.content_bytes, (50 << 20) + 5);

        let (entry, mut stream) = h.snaps.download(&keys, &rel("out/big.bin")).await.unwrap();
        assert_eq!(entry.size, 50 << 20);
        let mut got = Vec::with_capacity(big.len());
        let mut chunks = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= 1 << 20, "{name}: chunks stay small");
            got.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert!(chunks > 10);
        assert!(got == big, "{name}: downloaded bytes differ");

        let (_, small) = h.snaps.download(&keys, &rel("after.txt")).await.unwrap();
        let small: Vec<u8> = small.map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(small, b"after");
        let err = h.snaps.download(&keys, &rel("out")).await.err().unwrap();
        assert!(matches!(err, SnapshotError::FileNotFound(_)), "{name}");
    }
}

#[tokio::test]
async fn a_dropped_download_stops_early() {
    let h = memory();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("big.bin"), noise(20 << 20, 1)).unwrap();
    let (ids, keys) = ids_and_keys();
    h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    let (_, mut stream) = h.snaps.download(&keys, &rel("big.bin")).await.unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    // The snapshot stays usable after an abandoned download.
    assert_eq!(h.snaps.read_file(&keys, &rel("big.bin"), 3).await.unwrap().bytes.len(), 3);
}

#[tokio::test]
async fn browsing_a_corrupt_archive_reports_corrupt() {
    let h = memory();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a.txt"), b"hello ".repeat(100_000)).unwrap();
    let (ids, keys) = ids_and_keys();
    h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    let mut archive = h.get(&keys.archive).await;
    let mid = archive.len() / 2;
    archive.truncate(mid);
    h.put(&keys.archive, archive).await;
    // The listing reads only the (intact) entry index; reading the file meets the damage.
    assert_eq!(h.snaps.list_files(&keys).await.unwrap().len(), 1);
    assert!(matches!(h.snaps.read_file(&keys, &rel("a.txt"), 1 << 20).await, Err(SnapshotError::Corrupt(_))));
}
