//! Hand-built hostile archives (with manifests that match them, so only extraction can object) are refused with
//! `Unsafe`, and nothing is written outside the restore root.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use evershell_snapshot::SnapshotError;
use tar::EntryType;

/// `base/` holds `d1/dest` (the restore root) and `etc/passwd` (a stand-in for a file outside the workspace).
struct Scene {
    base: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir_all(base.path().join("d1/dest")).unwrap();
        fs::create_dir_all(base.path().join("etc")).unwrap();
        fs::write(base.path().join("etc/passwd"), b"root:x:0:0\n").unwrap();
        Self { base }
    }

    fn dest(&self) -> PathBuf {
        self.base.path().join("d1/dest")
    }

    /// Nothing appeared or changed outside `d1/dest`.
    fn assert_untouched_outside(&self) {
        let mut seen: Vec<PathBuf> = walk(self.base.path())
            .into_iter()
            .filter(|p| !p.starts_with("d1/dest") || p == Path::new("d1/dest"))
            .collect();
        seen.sort();
        let want: Vec<PathBuf> = ["d1", "d1/dest", "etc", "etc/passwd"].iter().map(PathBuf::from).collect();
        assert_eq!(seen, want);
        assert_eq!(fs::read(self.base.path().join("etc/passwd")).unwrap(), b"root:x:0:0\n");
    }
}

async fn expect_unsafe(build: impl FnOnce(&mut tar::Builder<Vec<u8>>, &Path), entries: u64, why: &str) {
    let scene = Scene::new();
    let h = memory();
    let mut tar = tar::Builder::new(Vec::new());
    build(&mut tar, scene.base.path());
    let keys = store_crafted(&h, tar, entries).await;
    let err = h.snaps.restore(&keys, &scene.dest()).await.unwrap_err();
    assert!(matches!(&err, SnapshotError::Unsafe(m) if m.contains(why)), "expected Unsafe({why}), got {err}");
    scene.assert_untouched_outside();
}

#[tokio::test]
async fn absolute_paths_are_refused() {
    expect_unsafe(
        |tar, base| {
            let target = base.join("etc/passwd");
            raw_entry(tar, target.to_str().unwrap(), EntryType::Regular, "", b"pwned\n");
        },
        1,
        "absolute",
    )
    .await;
}

#[tokio::test]
async fn parent_components_are_refused() {
    expect_unsafe(|tar, _| raw_entry(tar, "../x", EntryType::Regular, "", b"x"), 1, "..").await;
    expect_unsafe(|tar, _| raw_entry(tar, "ok/../../../etc/passwd", EntryType::Regular, "", b"x"), 1, "..").await;
}

#[tokio::test]
async fn a_symlink_escape_then_a_write_through_it_is_refused() {
    // The classic: `a -> ../../etc` then `a/passwd`.
    expect_unsafe(
        |tar, _| {
            raw_entry(tar, "a", EntryType::Symlink, "../../etc", b"");
            raw_entry(tar, "a/passwd", EntryType::Regular, "", b"pwned\n");
        },
        2,
        "escapes",
    )
    .await;
}

#[tokio::test]
async fn writing_through_any_symlinked_parent_is_refused() {
    // Even a link that stays inside may not be a parent path: entries must name real directories.
    expect_unsafe(
        |tar, _| {
            raw_entry(tar, "sub", EntryType::Directory, "", b"");
            raw_entry(tar, "a", EntryType::Symlink, "sub", b"");
            raw_entry(tar, "a/file", EntryType::Regular, "", b"x");
        },
        3,
        "passes through the symlink `a`",
    )
    .await;
}

#[tokio::test]
async fn absolute_symlinks_are_never_written_through_and_relative_escapes_are_refused() {
    // An absolute link is kept (it resolves inside the pod), but nothing is ever written through it.
    expect_unsafe(
        |tar, _| {
            raw_entry(tar, "l", EntryType::Symlink, "/etc", b"");
            raw_entry(tar, "l/passwd", EntryType::Regular, "", b"owned");
        },
        2,
        "passes through the symlink `l`",
    )
    .await;
    expect_unsafe(|tar, _| raw_entry(tar, "l", EntryType::Symlink, "../../etc", b""), 1, "escapes").await;
    expect_unsafe(
        |tar, _| {
            raw_entry(tar, "up", EntryType::Symlink, ".", b"");
            raw_entry(tar, "x", EntryType::Symlink, "up/..", b"");
        },
        2,
        "escapes",
    )
    .await;
}

#[tokio::test]
async fn hardlinks_outside_are_refused() {
    expect_unsafe(|tar, _| raw_entry(tar, "h", EntryType::Link, "/etc/passwd", b""), 1, "absolute").await;
    expect_unsafe(|tar, _| raw_entry(tar, "h", EntryType::Link, "../../etc/passwd", b""), 1, "..").await;
    expect_unsafe(
        |tar, _| {
            raw_entry(tar, "a", EntryType::Symlink, "sub", b"");
            raw_entry(tar, "sub", EntryType::Directory, "", b"");
            raw_entry(tar, "sub/f", EntryType::Regular, "", b"x");
            raw_entry(tar, "h", EntryType::Link, "a/f", b"");
        },
        4,
        "symlink",
    )
    .await;
}

#[tokio::test]
async fn a_later_file_replaces_a_link_instead_of_writing_through_it() {
    let scene = Scene::new();
    let h = memory();
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(&mut tar, "real", EntryType::Regular, "", b"original");
    raw_entry(&mut tar, "f", EntryType::Symlink, "real", b"");
    raw_entry(&mut tar, "f", EntryType::Regular, "", b"replacement");
    raw_entry(&mut tar, "h", EntryType::Link, "real", b"");
    raw_entry(&mut tar, "h", EntryType::Regular, "", b"also replaced");
    let keys = store_crafted(&h, tar, 5).await;
    h.snaps.restore(&keys, &scene.dest()).await.unwrap();
    let dest = scene.dest();
    assert_eq!(fs::read(dest.join("real")).unwrap(), b"original");
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"replacement");
    assert!(fs::symlink_metadata(dest.join("f")).unwrap().is_file());
    assert_eq!(fs::read(dest.join("h")).unwrap(), b"also replaced");
    scene.assert_untouched_outside();
}

#[tokio::test]
async fn inside_hardlinks_restore_and_setuid_bits_are_dropped() {
    let scene = Scene::new();
    let h = memory();
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(&mut tar, "./", EntryType::Directory, "", b"");
    raw_entry(&mut tar, "./bin/", EntryType::Directory, "", b"");
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o4755);
    header.set_entry_type(EntryType::Regular);
    tar.append_data(&mut header, "bin/tool", &b"#!"[..]).unwrap();
    raw_entry(&mut tar, "bin/alias", EntryType::Link, "bin/tool", b"");
    let keys = store_crafted(&h, tar, 3).await;
    h.snaps.restore(&keys, &scene.dest()).await.unwrap();
    let tool = fs::metadata(scene.dest().join("bin/tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o7777, 0o755);
    assert_eq!(fs::read(scene.dest().join("bin/alias")).unwrap(), b"#!");
    scene.assert_untouched_outside();
}
