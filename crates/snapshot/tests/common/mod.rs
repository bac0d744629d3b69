//! Shared test helpers: stores, keys, fixture trees, tree comparison and object tampering.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use evershell_core::ids::{OrgId, SnapshotId, WorkspaceId};
use evershell_snapshot::{SnapshotKeys, SnapshotStore};
use filetime::FileTime;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

pub type Ids = (OrgId, WorkspaceId, SnapshotId);

pub fn ids_and_keys() -> (Ids, SnapshotKeys) {
    let ids = (OrgId::new(), WorkspaceId::new(), SnapshotId::new());
    let keys = SnapshotKeys::new(ids.0, ids.1, ids.2);
    (ids, keys)
}

/// A snapshot store plus raw access to the objects behind it (to tamper with them).
pub struct Harness {
    pub snaps: SnapshotStore,
    pub raw: Arc<dyn ObjectStore>,
    _dir: Option<tempfile::TempDir>,
}

pub fn memory() -> Harness {
    let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    Harness { snaps: SnapshotStore::new(Arc::clone(&raw)), raw, _dir: None }
}

pub fn local() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snapshots");
    let snaps = SnapshotStore::local(&root).unwrap();
    let raw: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(root.canonicalize().unwrap()).unwrap());
    Harness { snaps, raw, _dir: Some(dir) }
}

pub fn both() -> Vec<(&'static str, Harness)> {
    vec![("memory", memory()), ("local", local())]
}

impl Harness {
    pub async fn get(&self, path: &object_store::path::Path) -> Vec<u8> {
        self.raw.get(path).await.unwrap().bytes().await.unwrap().to_vec()
    }

    pub async fn put(&self, path: &object_store::path::Path, bytes: Vec<u8>) {
        self.raw.put(path, PutPayload::from(bytes)).await.unwrap();
    }

    pub async fn exists(&self, path: &object_store::path::Path) -> bool {
        self.raw.head(path).await.is_ok()
    }
}

pub fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let t = FileTime::from_unix_time(secs, nanos);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

pub fn write_file(path: &Path, content: &[u8], mode: u32, secs: i64) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(path, secs, 123_456_789);
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A workspace with the shapes that matter: nested dirs, an empty dir, modes 0755/0600/0444, a binary file,
/// a relative symlink, a dangling-inside symlink, a read-only directory; mtimes set last (dirs included).
pub fn fixture(root: &Path) {
    fs::create_dir_all(root.join("src/nested/deeper")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(root.join("locked")).unwrap();
    write_file(&root.join("README.md"), b"# hello\n", 0o644, 1_700_000_001);
    write_file(&root.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o755, 1_700_000_002);
    write_file(&root.join("secret.env"), b"TOKEN=abc\n", 0o600, 1_700_000_003);
    write_file(&root.join("src/readonly.txt"), b"do not touch\n", 0o444, 1_700_000_004);
    write_file(&root.join("src/nested/deeper/data.bin"), &noise(70_000, 7), 0o644, 1_700_000_005);
    write_file(&root.join("src/nested/main.rs"), &b"fn main() {}\n".repeat(500), 0o644, 1_700_000_006);
    write_file(&root.join("locked/inside.txt"), b"inside a read-only dir\n", 0o644, 1_700_000_007);
    write_file(&root.join("src/empty-file"), b"", 0o644, 1_700_000_008);
    symlink("src/nested/main.rs", root.join("link-to-main")).unwrap();
    symlink("../README.md", root.join("src/up-link")).unwrap();
    symlink("not-yet/there", root.join("src/dangling")).unwrap();
    set_mtime(&root.join("link-to-main"), 1_600_000_000, 0);
    set_mtime(&root.join("src/up-link"), 1_600_000_001, 0);
    set_mtime(&root.join("src/dangling"), 1_600_000_002, 500_000_000);
    fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o555)).unwrap();
    for (dir, secs) in [("src/nested/deeper", 11), ("src/nested", 12), ("src", 13), ("empty", 14), ("locked", 15)] {
        set_mtime(&root.join(dir), 1_650_000_000 + secs, 250_000_000);
    }
}

/// Entries of `fixture` (files, dirs, symlinks; root not counted).
pub const FIXTURE_ENTRIES: u64 = 16;
/// Regular-file bytes of `fixture`.
pub const FIXTURE_CONTENT: u64 = 8 + 18 + 10 + 13 + 70_000 + 13 * 500 + 23;

/// Every path under `root` (relative, sorted), without following links.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    fn go(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel)).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            let child = rel.join(name);
            out.push(child.clone());
            if fs::symlink_metadata(root.join(&child)).unwrap().is_dir() {
                go(root, &child, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, Path::new(""), &mut out);
    out
}

/// Assert two trees are the same: kinds, permission bits, mtimes (to the nanosecond), contents, link targets.
pub fn assert_same_tree(want: &Path, got: &Path) {
    let paths = walk(want);
    assert_eq!(paths, walk(got), "different entries");
    for rel in paths {
        let (a, b) = (fs::symlink_metadata(want.join(&rel)).unwrap(), fs::symlink_metadata(got.join(&rel)).unwrap());
        assert_eq!(a.file_type(), b.file_type(), "{rel:?} kind");
        assert_eq!(a.mtime(), b.mtime(), "{rel:?} mtime");
        assert_eq!(a.mtime_nsec(), b.mtime_nsec(), "{rel:?} mtime nanoseconds");
        if a.file_type().is_symlink() {
            assert_eq!(fs::read_link(want.join(&rel)).unwrap(), fs::read_link(got.join(&rel)).unwrap(), "{rel:?}");
            continue;
        }
        assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "{rel:?} mode");
        if a.is_file() {
            assert_eq!(fs::read(want.join(&rel)).unwrap(), fs::read(got.join(&rel)).unwrap(), "{rel:?} content");
        }
    }
}

/// One raw tar entry with exactly these name/link bytes (no path checks, unlike `Builder::append_data`).
pub fn raw_entry(tar: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

/// Apparent and stored bytes of the regular-file entries of a tar (a sparse entry's `GNU.sparse.realsize`, when
/// readable, as its apparent size), as an honest manifest would count them.
pub fn file_bytes(raw: &[u8]) -> (u64, u64) {
    let (mut content, mut data) = (0, 0);
    let mut archive = tar::Archive::new(raw);
    for entry in archive.entries().unwrap() {
        let Ok(mut entry) = entry else { break };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let real = entry.pax_extensions().ok().flatten().and_then(|exts| {
            exts.flatten().find(|e| e.key() == Ok("GNU.sparse.realsize")).and_then(|e| e.value().ok()?.parse().ok())
        });
        content += real.unwrap_or(entry.size());
        data += entry.size();
    }
    (content, data)
}

/// Store a hand-built tar as a snapshot with a manifest that matches it (so only extraction can object).
pub async fn store_crafted(h: &Harness, tar: tar::Builder<Vec<u8>>, entries: u64) -> evershell_snapshot::SnapshotKeys {
    use sha2::Digest;
    let raw = tar.into_inner().unwrap();
    let (content, data) = file_bytes(&raw);
    let archive = zstd::encode_all(&raw[..], 3).unwrap();
    let (ids, keys) = ids_and_keys();
    let manifest = evershell_snapshot::Manifest {
        format_version: evershell_snapshot::FORMAT_VERSION,
        snapshot_id: ids.2,
        org_id: ids.0,
        workspace_id: ids.1,
        archive_sha256: hex::encode(sha2::Sha256::digest(&archive)),
        archive_bytes: archive.len() as u64,
        file_count: entries,
        content_bytes: content,
        data_bytes: data,
        created_at: evershell_core::Timestamp::now(),
        index: None,
    };
    h.put(&keys.archive, archive).await;
    h.put(&keys.manifest, serde_json::to_vec(&manifest).unwrap()).await;
    keys
}
