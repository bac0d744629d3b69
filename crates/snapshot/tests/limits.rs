//! Content-size caps and free-space checks: a capture over the cap fails with `TooLarge` and leaves the workspace
//! and the store as they were; a restore over the cap, or one whose data will not fit the destination filesystem,
//! is refused with the numbers before anything is written; a manifest that understates its archive is caught while
//! extracting.

mod common;

use std::fs::{self, File};
use std::path::Path;

use common::*;
use evershell_snapshot::{CaptureOptions, RestoreOptions, SnapshotError};

/// A path with its length, mtime nanoseconds, allocated blocks and (small files) content.
type Seen = (std::path::PathBuf, u64, i64, u64, Option<Vec<u8>>);

/// Every path with its metadata and content, to check a tree is untouched.
fn state(root: &Path) -> Vec<Seen> {
    use std::os::unix::fs::MetadataExt;
    walk(root)
        .into_iter()
        .map(|p| {
            let m = fs::symlink_metadata(root.join(&p)).unwrap();
            // Content of the small files; the big sparse one by its length and allocated blocks.
            let content = (m.is_file() && m.len() < 1 << 20).then(|| fs::read(root.join(&p)).unwrap());
            (p, m.len(), m.mtime_nsec(), m.blocks(), content)
        })
        .collect()
}

#[tokio::test]
async fn a_capture_over_the_cap_is_too_large_and_changes_nothing() {
    for (name, h) in both() {
        let src = tempfile::tempdir().unwrap();
        fixture(src.path());
        // A sparse 4 GiB file counts with its apparent size.
        File::create(src.path().join("big.img")).unwrap().set_len(4 << 30).unwrap();
        let total = FIXTURE_CONTENT + (4 << 30);
        let before = state(src.path());
        let (ids, keys) = ids_and_keys();
        let limit = 1 << 30;
        let opts = CaptureOptions { max_content_bytes: Some(limit) };
        let err = h.snaps.capture_with(src.path(), &keys, ids, &opts).await.unwrap_err();
        assert!(
            matches!(err, SnapshotError::TooLarge { limit: l, found } if l == limit && found == total),
            "{name}: {err:?}"
        );
        let shown = err.to_string();
        assert!(shown.contains(&limit.to_string()) && shown.contains(&total.to_string()), "{name}: {shown}");
        assert_eq!(state(src.path()), before, "{name}: the workspace is untouched");
        assert!(!h.exists(&keys.archive).await && !h.exists(&keys.manifest).await, "{name}: nothing stored");

        // At exactly the cap it is fine; without options the default has no cap.
        let opts = CaptureOptions { max_content_bytes: Some(total) };
        let manifest = h.snaps.capture_with(src.path(), &keys, ids, &opts).await.unwrap();
        assert_eq!(manifest.content_bytes, total);
        h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    }
}

#[tokio::test]
async fn a_restore_over_the_cap_is_refused_before_writing() {
    let h = local();
    let src = tempfile::tempdir().unwrap();
    fixture(src.path());
    let (ids, keys) = ids_and_keys();
    h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    let dest = tempfile::tempdir().unwrap();
    let opts = RestoreOptions {
        max_content_bytes: Some(FIXTURE_CONTENT - 1),
        owner: Some((4242, 4242)),
        ..Default::default()
    };
    let err = h.snaps.restore_with(&keys, dest.path(), &opts).await.unwrap_err();
    assert!(
        matches!(err, SnapshotError::TooLarge { limit, found } if limit == FIXTURE_CONTENT - 1 && found == FIXTURE_CONTENT),
        "{err:?}"
    );
    assert!(walk(dest.path()).is_empty());
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&fs::metadata(dest.path()).unwrap()), 0, "root not touched");
    let opts = RestoreOptions { max_content_bytes: Some(FIXTURE_CONTENT), owner: None, ..Default::default() };
    h.snaps.restore_with(&keys, dest.path(), &opts).await.unwrap();
    assert_same_tree(src.path(), dest.path());
}

/// Total bytes and inodes of the filesystem of `path`: more than that can never fit, whatever else is running.
fn capacity(path: &Path) -> (u64, u64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and a zeroed out-struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_blocks as u64 * st.f_frsize as u64, st.f_files as u64)
}

#[tokio::test]
async fn a_restore_that_will_not_fit_is_refused_with_the_numbers() {
    for (name, h) in both() {
        let src = tempfile::tempdir().unwrap();
        fixture(src.path());
        let (ids, keys) = ids_and_keys();
        h.snaps.capture(src.path(), &keys, ids).await.unwrap();
        let dest = tempfile::tempdir().unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(&h.get(&keys.manifest).await).unwrap();

        // The manifest says the data is larger than the whole destination filesystem.
        let (bytes, inodes) = capacity(dest.path());
        json["data_bytes"] = (bytes + 1).into();
        json["content_bytes"] = (bytes + 1).into();
        h.put(&keys.manifest, serde_json::to_vec(&json).unwrap()).await;
        let err = h.snaps.restore(&keys, dest.path()).await.unwrap_err();
        let SnapshotError::WontFit { needed, available, .. } = &err else { panic!("{name}: {err:?}") };
        assert!(*needed > bytes && available < needed, "{name}: {err}");
        let shown = err.to_string();
        assert!(shown.contains(&needed.to_string()) && shown.contains("bytes"), "{name}: {shown}");
        assert!(walk(dest.path()).is_empty(), "{name}: nothing written");

        // Likewise for more entries than the filesystem has inodes (each entry also needs a block, which is what
        // runs out first on ext4; `space`'s unit tests cover the inode count on its own).
        json["data_bytes"] = FIXTURE_CONTENT.into();
        json["content_bytes"] = FIXTURE_CONTENT.into();
        json["file_count"] = (inodes + 1).into();
        h.put(&keys.manifest, serde_json::to_vec(&json).unwrap()).await;
        let err = h.snaps.restore(&keys, dest.path()).await.unwrap_err();
        assert!(matches!(&err, SnapshotError::WontFit { .. }), "{name}: {err}");
        assert!(walk(dest.path()).is_empty(), "{name}: nothing written");
    }
}

#[tokio::test]
async fn a_manifest_understating_its_content_is_caught_while_extracting() {
    for (field, value) in [("data_bytes", 1000u64), ("content_bytes", 1000)] {
        let h = memory();
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a.bin"), noise(600, 1)).unwrap();
        fs::write(src.path().join("b.bin"), noise(600, 2)).unwrap();
        let (ids, keys) = ids_and_keys();
        h.snaps.capture(src.path(), &keys, ids).await.unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(&h.get(&keys.manifest).await).unwrap();
        json[field] = value.into();
        h.put(&keys.manifest, serde_json::to_vec(&json).unwrap()).await;
        let dest = tempfile::tempdir().unwrap();
        let err = h.snaps.restore(&keys, dest.path()).await.unwrap_err();
        assert!(matches!(&err, SnapshotError::Corrupt(m) if m.contains("more") && m.contains("manifest")), "{err}");
        assert_eq!(walk(dest.path()), vec![std::path::PathBuf::from("a.bin")], "{field}: b.bin never written");
    }
}
