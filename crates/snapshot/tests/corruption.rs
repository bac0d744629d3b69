//! A snapshot that does not match its manifest never restores quietly: flipped bytes, truncation, missing objects
//! and bad manifests are `Corrupt` or `Missing` with messages that say what differs.

mod common;

use common::*;
use evershell_snapshot::{Manifest, SnapshotError, SnapshotKeys};
use object_store::ObjectStoreExt;

async fn captured(h: &Harness) -> (tempfile::TempDir, SnapshotKeys, Manifest) {
    let src = tempfile::tempdir().unwrap();
    fixture(src.path());
    let (ids, keys) = ids_and_keys();
    let manifest = h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    (src, keys, manifest)
}

async fn restore_err(h: &Harness, keys: &SnapshotKeys) -> SnapshotError {
    let dest = tempfile::tempdir().unwrap();
    h.snaps.restore(keys, dest.path()).await.unwrap_err()
}

#[tokio::test]
async fn a_flipped_byte_fails_restore_and_verify() {
    for (name, h) in both() {
        let (_src, keys, manifest) = captured(&h).await;
        let original = h.get(&keys.archive).await;
        for at in [original.len() / 2, original.len() - 2, 20] {
            let mut archive = original.clone();
            archive[at] ^= 0x40;
            h.put(&keys.archive, archive).await;
            let err = restore_err(&h, &keys).await;
            let SnapshotError::Corrupt(msg) = &err else { panic!("{name}@{at}: {err}") };
            assert!(msg.contains(&manifest.archive_sha256), "{name}@{at}: {msg}");
            let err = h.snaps.verify(&keys).await.unwrap_err();
            let SnapshotError::Corrupt(msg) = &err else { panic!("{name}@{at}: {err}") };
            assert!(msg.contains("sha256") && msg.contains(&manifest.archive_sha256), "{name}@{at}: {msg}");
        }
        h.put(&keys.archive, original).await;
        h.snaps.verify(&keys).await.unwrap();
    }
}

#[tokio::test]
async fn a_truncated_archive_is_corrupt() {
    for (name, h) in both() {
        let (_src, keys, manifest) = captured(&h).await;
        let mut archive = h.get(&keys.archive).await;
        archive.truncate(archive.len() - 100);
        h.put(&keys.archive, archive).await;
        let err = restore_err(&h, &keys).await;
        assert!(matches!(&err, SnapshotError::Corrupt(m) if m.contains("bytes")), "{name}: {err}");
        let err = h.snaps.verify(&keys).await.unwrap_err();
        let expected = format!("manifest says {}", manifest.archive_bytes);
        assert!(matches!(&err, SnapshotError::Corrupt(m) if m.contains(&expected)), "{name}: {err}");
    }
}

#[tokio::test]
async fn a_truncated_archive_with_an_agreeing_manifest_still_fails() {
    // The manifest was rewritten to match the truncated bytes: only the zstd stream itself can tell.
    use sha2::Digest;
    let h = memory();
    let (_src, keys, mut manifest) = captured(&h).await;
    let mut archive = h.get(&keys.archive).await;
    archive.truncate(archive.len() / 2);
    manifest.archive_bytes = archive.len() as u64;
    manifest.archive_sha256 = hex::encode(sha2::Sha256::digest(&archive));
    h.put(&keys.archive, archive).await;
    h.put(&keys.manifest, serde_json::to_vec(&manifest).unwrap()).await;
    h.snaps.verify(&keys).await.unwrap();
    let err = restore_err(&h, &keys).await;
    assert!(matches!(err, SnapshotError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn a_wrong_entry_count_is_corrupt() {
    let h = memory();
    let (_src, keys, mut manifest) = captured(&h).await;
    manifest.file_count += 1;
    h.put(&keys.manifest, serde_json::to_vec(&manifest).unwrap()).await;
    let err = restore_err(&h, &keys).await;
    assert!(matches!(&err, SnapshotError::Corrupt(m) if m.contains("entries")), "{err}");
}

#[tokio::test]
async fn missing_objects_are_missing() {
    for (name, h) in both() {
        let (_src, keys, _) = captured(&h).await;
        h.raw.delete(&keys.archive).await.unwrap();
        assert!(matches!(restore_err(&h, &keys).await, SnapshotError::Missing(_)), "{name}");
        assert!(matches!(h.snaps.verify(&keys).await, Err(SnapshotError::Missing(_))), "{name}");
        // The listing comes from the entry index; the file itself is missing with its archive.
        assert!(h.snaps.list_files(&keys).await.is_ok(), "{name}");
        let any = evershell_core::files::RelPath::parse("README.md").unwrap();
        assert!(matches!(h.snaps.read_file(&keys, &any, 10).await, Err(SnapshotError::Missing(_))), "{name}");

        let (_src, keys, _) = captured(&h).await;
        h.raw.delete(&keys.manifest).await.unwrap();
        let err = restore_err(&h, &keys).await;
        assert!(matches!(&err, SnapshotError::Missing(m) if m.contains("manifest")), "{name}: {err}");
        assert!(matches!(h.snaps.verify(&keys).await, Err(SnapshotError::Missing(_))), "{name}");
        // Browsing needs only the archive, so a snapshot without a manifest can still be inspected.
        assert_eq!(h.snaps.list_files(&keys).await.unwrap().len() as u64, FIXTURE_ENTRIES, "{name}");
    }
}

#[tokio::test]
async fn bad_manifests_are_corrupt() {
    let h = memory();
    let (_src, keys, manifest) = captured(&h).await;
    h.put(&keys.manifest, b"{not json".to_vec()).await;
    assert!(matches!(h.snaps.verify(&keys).await, Err(SnapshotError::Corrupt(_))));
    let mut future = serde_json::to_value(&manifest).unwrap();
    future["format_version"] = 99.into();
    h.put(&keys.manifest, serde_json::to_vec(&future).unwrap()).await;
    let err = h.snaps.verify(&keys).await.unwrap_err();
    assert!(matches!(&err, SnapshotError::Corrupt(m) if m.contains("99")), "{err}");
    assert!(matches!(restore_err(&h, &keys).await, SnapshotError::Corrupt(_)));
}

#[tokio::test]
async fn errors_read_well_in_last_error() {
    let h = memory();
    let (_src, keys, _) = captured(&h).await;
    h.raw.delete(&keys.archive).await.unwrap();
    let shown = restore_err(&h, &keys).await.to_string();
    assert!(shown.starts_with("snapshot is missing: archive `orgs/"), "{shown}");
}
