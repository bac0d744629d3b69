//! Capture → verify → restore round trips on real trees, against an in-memory and a local-directory store.

mod common;

use std::fs;
use std::os::unix::fs::symlink;

use common::*;
use evershell_snapshot::{FORMAT_VERSION, SnapshotError};

#[tokio::test]
async fn round_trip_preserves_everything() {
    for (name, h) in both() {
        let src = tempfile::tempdir().unwrap();
        fixture(src.path());
        let (ids, keys) = ids_and_keys();
        let manifest = h.snaps.capture(src.path(), &keys, ids).await.unwrap();
        assert_eq!(manifest.format_version, FORMAT_VERSION);
        assert_eq!(manifest.file_count, FIXTURE_ENTRIES, "{name}");
        assert_eq!(manifest.content_bytes, FIXTURE_CONTENT, "{name}");
        assert_eq!((manifest.org_id, manifest.workspace_id, manifest.snapshot_id), ids);
        let archive = h.get(&keys.archive).await;
        assert_eq!(manifest.archive_bytes, archive.len() as u64);
        assert_eq!(manifest.archive_sha256.len(), 64);

        assert_eq!(h.snaps.verify(&keys).await.unwrap(), manifest, "{name}");
        let dest = tempfile::tempdir().unwrap();
        let restored = h.snaps.restore(&keys, dest.path()).await.unwrap();
        assert_eq!(restored, manifest);
        assert_same_tree(src.path(), dest.path());
    }
}

#[tokio::test]
async fn manifest_is_json_beside_the_archive() {
    let h = memory();
    let src = tempfile::tempdir().unwrap();
    fixture(src.path());
    let (ids, keys) = ids_and_keys();
    let manifest = h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&h.get(&keys.manifest).await).unwrap();
    assert_eq!(json["archive_sha256"], manifest.archive_sha256);
    assert_eq!(json["file_count"], FIXTURE_ENTRIES);
    assert!(keys.archive.as_ref().ends_with(".tar.zst"));
    assert!(keys.manifest.as_ref().ends_with(".manifest.json"));
}

#[tokio::test]
async fn empty_workspace_round_trips_with_zero_entries() {
    for (name, h) in both() {
        let src = tempfile::tempdir().unwrap();
        let (ids, keys) = ids_and_keys();
        let manifest = h.snaps.capture(src.path(), &keys, ids).await.unwrap();
        assert_eq!((manifest.file_count, manifest.content_bytes), (0, 0), "{name}");
        assert!(manifest.archive_bytes > 0);
        h.snaps.verify(&keys).await.unwrap();
        let dest = tempfile::tempdir().unwrap();
        h.snaps.restore(&keys, dest.path()).await.unwrap();
        assert!(walk(dest.path()).is_empty());
        assert!(h.snaps.list_files(&keys).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn long_paths_and_link_targets_survive() {
    let h = memory();
    let src = tempfile::tempdir().unwrap();
    let deep = src.path().join("a".repeat(120)).join("b".repeat(120));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("c".repeat(150)), b"deep").unwrap();
    let target = format!("{}/{}/{}", "a".repeat(120), "b".repeat(120), "c".repeat(150));
    symlink(&target, src.path().join("long-link")).unwrap();
    let (ids, keys) = ids_and_keys();
    let manifest = h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    assert_eq!(manifest.file_count, 4);
    let dest = tempfile::tempdir().unwrap();
    h.snaps.restore(&keys, dest.path()).await.unwrap();
    assert_same_tree(src.path(), dest.path());
    assert_eq!(fs::read(dest.path().join("long-link")).unwrap(), b"deep");
}

#[tokio::test]
async fn hardlinks_are_stored_as_copies() {
    let h = memory();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("one"), b"shared").unwrap();
    fs::hard_link(src.path().join("one"), src.path().join("two")).unwrap();
    let (ids, keys) = ids_and_keys();
    let manifest = h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    assert_eq!((manifest.file_count, manifest.content_bytes), (2, 12));
    let dest = tempfile::tempdir().unwrap();
    h.snaps.restore(&keys, dest.path()).await.unwrap();
    assert_eq!(fs::read(dest.path().join("two")).unwrap(), b"shared");
}

#[tokio::test]
async fn fifos_are_skipped() {
    let h = memory();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("kept"), b"x").unwrap();
    let fifo = std::ffi::CString::new(src.path().join("pipe").into_os_string().into_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let (ids, keys) = ids_and_keys();
    let manifest = h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    assert_eq!(manifest.file_count, 1);
    let dest = tempfile::tempdir().unwrap();
    h.snaps.restore(&keys, dest.path()).await.unwrap();
    assert_eq!(walk(dest.path()), vec![std::path::PathBuf::from("kept")]);
}

#[tokio::test]
async fn capture_refuses_links_a_restore_would_refuse() {
    for (target, why) in [("../../etc", "escapes"), ("up/..", "escapes")] {
        let h = memory();
        let src = tempfile::tempdir().unwrap();
        symlink(".", src.path().join("up")).unwrap();
        symlink(target, src.path().join("bad")).unwrap();
        let (ids, keys) = ids_and_keys();
        let err = h.snaps.capture(src.path(), &keys, ids).await.unwrap_err();
        assert!(matches!(&err, SnapshotError::Unsafe(m) if m.contains(why) && m.contains("bad")), "{target}: {err}");
        assert!(!h.exists(&keys.archive).await && !h.exists(&keys.manifest).await, "{target}: objects left behind");
    }
}

#[tokio::test]
async fn absolute_symlinks_round_trip_untouched() {
    // A Python virtualenv's interpreter link: resolved inside the pod, never followed on the host.
    let h = memory();
    let src = tempfile::tempdir().unwrap();
    fs::create_dir_all(src.path().join("venv/bin")).unwrap();
    symlink("/usr/bin/python3", src.path().join("venv/bin/python")).unwrap();
    symlink("python", src.path().join("venv/bin/python3")).unwrap();
    let (ids, keys) = ids_and_keys();
    h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    let dest = tempfile::tempdir().unwrap();
    h.snaps.restore(&keys, dest.path()).await.unwrap();
    assert_eq!(
        fs::read_link(dest.path().join("venv/bin/python")).unwrap(),
        std::path::PathBuf::from("/usr/bin/python3")
    );
    assert_eq!(fs::read_link(dest.path().join("venv/bin/python3")).unwrap(), std::path::PathBuf::from("python"));
}

#[tokio::test]
async fn capture_of_a_missing_directory_fails_and_writes_nothing() {
    let h = memory();
    let (ids, keys) = ids_and_keys();
    let err = h.snaps.capture(std::path::Path::new("/nonexistent/workspace"), &keys, ids).await.unwrap_err();
    assert!(matches!(err, SnapshotError::Io(_)), "{err}");
    assert!(!h.exists(&keys.archive).await && !h.exists(&keys.manifest).await);
}

#[tokio::test]
async fn capture_of_an_unreadable_file_fails_and_writes_nothing() {
    if unsafe { libc::geteuid() } == 0 {
        return; // root reads a 0000 file anyway
    }
    let h = memory();
    let src = tempfile::tempdir().unwrap();
    write_file(&src.path().join("sealed"), b"x", 0o000, 1);
    let (ids, keys) = ids_and_keys();
    assert!(h.snaps.capture(src.path(), &keys, ids).await.is_err());
    assert!(!h.exists(&keys.archive).await && !h.exists(&keys.manifest).await);
}

#[tokio::test]
async fn recapture_to_the_same_keys_replaces_the_snapshot() {
    let h = local();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("v"), b"1").unwrap();
    let (ids, keys) = ids_and_keys();
    h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    fs::write(src.path().join("v"), b"2").unwrap();
    fs::write(src.path().join("w"), b"new").unwrap();
    let second = h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    assert_eq!(h.snaps.verify(&keys).await.unwrap(), second);
    let dest = tempfile::tempdir().unwrap();
    h.snaps.restore(&keys, dest.path()).await.unwrap();
    assert_eq!(fs::read(dest.path().join("v")).unwrap(), b"2");
}

#[tokio::test]
async fn delete_removes_both_objects_and_tolerates_absence() {
    for (name, h) in both() {
        let src = tempfile::tempdir().unwrap();
        fixture(src.path());
        let (ids, keys) = ids_and_keys();
        h.snaps.capture(src.path(), &keys, ids).await.unwrap();
        h.snaps.delete(&keys).await.unwrap();
        assert!(!h.exists(&keys.archive).await && !h.exists(&keys.manifest).await, "{name}");
        h.snaps.delete(&keys).await.unwrap();
        assert!(matches!(h.snaps.verify(&keys).await, Err(SnapshotError::Missing(_))), "{name}");
    }
}

#[tokio::test]
async fn local_sweep_removes_stale_staging_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snaps");
    let snaps = evershell_snapshot::SnapshotStore::local(&root).unwrap();
    let nested = root.join("orgs/o/workspaces/w/snapshots");
    fs::create_dir_all(&nested).unwrap();
    fs::write(nested.join("s.tar.zst#1"), b"half").unwrap();
    fs::write(nested.join("fresh.tar.zst#1"), b"in progress").unwrap();
    fs::write(nested.join("s.manifest.json"), b"{}").unwrap();
    set_mtime(&nested.join("s.tar.zst#1"), 1_000_000_000, 0);
    set_mtime(&nested.join("s.manifest.json"), 1_000_000_000, 0);
    assert_eq!(snaps.sweep_incomplete(std::time::Duration::from_secs(60)).await.unwrap(), 1);
    assert!(!nested.join("s.tar.zst#1").exists());
    assert!(nested.join("fresh.tar.zst#1").exists() && nested.join("s.manifest.json").exists());
    assert_eq!(memory().snaps.sweep_incomplete(std::time::Duration::ZERO).await.unwrap(), 0);
}

#[tokio::test]
async fn an_abandoned_restore_stops_writing() {
    let h = memory();
    let src = tempfile::tempdir().unwrap();
    for d in 0..30 {
        let dir = src.path().join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f}")), b"x").unwrap();
        }
    }
    let (ids, keys) = ids_and_keys();
    h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    let dest = tempfile::tempdir().unwrap();
    let abandoned =
        tokio::time::timeout(std::time::Duration::from_millis(1), h.snaps.restore(&keys, dest.path())).await;
    assert!(abandoned.is_err(), "the restore should not finish within 1 ms");
    // Long enough for the whole tree had the restore kept going.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let written = walk(dest.path()).len();
    assert!(written < 3030, "restore kept writing after being abandoned ({written} entries)");
}
