//! Restore with an owner: every entry extracted (the root, directories, files, symlinks themselves) belongs to the
//! given uid/gid, modes and mtimes still match, and no link is followed (a file an absolute symlink points at keeps
//! its owner). Tests run as root, so a made-up uid is fine.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use common::*;
use evershell_snapshot::RestoreOptions;

fn owners(root: &Path) -> Vec<(std::path::PathBuf, u32, u32)> {
    let mut out = vec![(
        root.to_path_buf(),
        fs::symlink_metadata(root).unwrap().uid(),
        fs::symlink_metadata(root).unwrap().gid(),
    )];
    for p in walk(root) {
        let m = fs::symlink_metadata(root.join(&p)).unwrap();
        out.push((p, m.uid(), m.gid()));
    }
    out
}

#[tokio::test]
async fn restore_sets_the_owner_of_every_entry_without_following_links() {
    for (name, h) in both() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim.txt");
        fs::write(&victim, b"host file").unwrap();
        let src = tempfile::tempdir().unwrap();
        fixture(src.path());
        symlink(&victim, src.path().join("abs-link")).unwrap();
        fs::create_dir(src.path().join("a")).unwrap();
        fs::write(src.path().join("a/deep.txt"), b"deep").unwrap();
        let (ids, keys) = ids_and_keys();
        h.snaps.capture(src.path(), &keys, ids).await.unwrap();

        let dest = tempfile::tempdir().unwrap();
        let opts = RestoreOptions { owner: Some((4242, 4343)), ..RestoreOptions::default() };
        h.snaps.restore_with(&keys, dest.path(), &opts).await.unwrap();
        let all = owners(dest.path());
        assert_eq!(all.len() as u64, FIXTURE_ENTRIES + 4, "{name}");
        for (path, uid, gid) in &all {
            assert_eq!((*uid, *gid), (4242, 4343), "{name}: {path:?}");
        }
        assert_same_tree(src.path(), dest.path());
        let v = fs::metadata(&victim).unwrap();
        assert_eq!((v.uid(), v.gid()), (0, 0), "{name}: the link's target is not chowned");
        assert!(fs::symlink_metadata(dest.path().join("abs-link")).unwrap().file_type().is_symlink());

        // Without an owner, entries belong to whoever restores.
        let plain = tempfile::tempdir().unwrap();
        h.snaps.restore(&keys, plain.path()).await.unwrap();
        assert!(owners(plain.path()).iter().all(|(_, uid, gid)| (*uid, *gid) == (0, 0)), "{name}");
    }
}

#[tokio::test]
async fn parents_an_archive_leaves_implicit_are_owned_too() {
    let h = memory();
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(&mut tar, "a/b/c.txt", tar::EntryType::Regular, "", b"hi");
    raw_entry(&mut tar, "a/b/l", tar::EntryType::Symlink, "c.txt", b"");
    let keys = store_crafted(&h, tar, 2).await;
    let dest = tempfile::tempdir().unwrap();
    let opts = RestoreOptions { owner: Some((4242, 4343)), ..RestoreOptions::default() };
    h.snaps.restore_with(&keys, dest.path(), &opts).await.unwrap();
    let all = owners(dest.path());
    let paths: Vec<_> = all.iter().skip(1).map(|(p, _, _)| p.to_string_lossy().into_owned()).collect();
    assert_eq!(paths, ["a", "a/b", "a/b/c.txt", "a/b/l"]);
    assert!(all.iter().all(|(_, uid, gid)| (*uid, *gid) == (4242, 4343)), "{all:?}");
}
