//! Sparse files keep their holes: capture stores only the data segments (GNU sparse 1.0 entries), restore writes
//! only those and sets the real length (checked with `st_blocks`), browsing shows the real size and reads holes as
//! zeros; older snapshot formats still restore.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::*;
use evershell_core::files::RelPath;
use evershell_snapshot::{FORMAT_VERSION, SnapshotError};
use futures::StreamExt;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A file of apparent size `len` holding only `writes` (offset, bytes); the rest is holes.
fn sparse(path: &Path, len: u64, writes: &[(u64, Vec<u8>)]) {
    let file = File::create(path).unwrap();
    for (offset, data) in writes {
        file.write_all_at(data, *offset).unwrap();
    }
    file.set_len(len).unwrap();
}

fn allocated(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().blocks() * 512
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xAA; len];
    File::open(path).unwrap().read_exact_at(&mut buf, offset).unwrap();
    buf
}

fn rel(p: &str) -> RelPath {
    RelPath::parse(p).unwrap()
}

/// `disk.img`: 8 GiB with 4 KiB at 0, 64 KiB at 3 GiB and 4 KiB at the end; `holes.bin`: 1 GiB of nothing;
/// `mid.bin`: 16 MiB, 8 KiB of data at 4 MiB; `plain.txt`: a normal file. Returns (apparent, data) bytes.
fn bomb(root: &Path) -> (u64, u64) {
    sparse(
        &root.join("disk.img"),
        8 * GIB,
        &[(0, noise(4096, 1)), (3 * GIB, noise(65536, 2)), (8 * GIB - 4096, noise(4096, 3))],
    );
    sparse(&root.join("holes.bin"), GIB, &[]);
    fs::create_dir(root.join("sub")).unwrap();
    sparse(&root.join("sub/mid.bin"), 16 * MIB, &[(4 * MIB, noise(8192, 4))]);
    fs::write(root.join("plain.txt"), b"plain\n").unwrap();
    (8 * GIB + GIB + 16 * MIB + 6, 4096 + 65536 + 4096 + 8192 + 6)
}

#[tokio::test]
async fn holes_stay_holes_through_capture_and_restore() {
    for (name, h) in both() {
        let src = tempfile::tempdir().unwrap();
        let (apparent, data) = bomb(src.path());
        let (ids, keys) = ids_and_keys();
        let manifest = h.snaps.capture(src.path(), &keys, ids).await.unwrap();
        assert_eq!(manifest.format_version, FORMAT_VERSION);
        assert_eq!((manifest.content_bytes, manifest.data_bytes), (apparent, data), "{name}");
        assert_eq!(manifest.file_count, 5, "{name}");
        assert!(manifest.archive_bytes < 256 << 10, "{name}: archive is {} bytes", manifest.archive_bytes);
        h.snaps.verify(&keys).await.unwrap();

        let dest = tempfile::tempdir().unwrap();
        assert_eq!(h.snaps.restore(&keys, dest.path()).await.unwrap(), manifest);
        let (s, d) = (src.path(), dest.path());
        assert_eq!(walk(s), walk(d), "{name}");
        let img = d.join("disk.img");
        assert_eq!(fs::metadata(&img).unwrap().len(), 8 * GIB);
        assert!(allocated(&img) <= 1 << 20, "{name}: restored image takes {} bytes", allocated(&img));
        for (offset, len) in [(0, 4096), (3 * GIB, 65536), (8 * GIB - 4096, 4096), (GIB, 4096), (5 * GIB, 100)] {
            assert_eq!(read_at(&s.join("disk.img"), offset, len), read_at(&img, offset, len), "{name} @{offset}");
        }
        assert_eq!(fs::metadata(d.join("holes.bin")).unwrap().len(), GIB);
        assert_eq!(allocated(&d.join("holes.bin")), 0, "{name}: a file that is all hole allocates nothing");
        assert_eq!(fs::read(s.join("sub/mid.bin")).unwrap(), fs::read(d.join("sub/mid.bin")).unwrap(), "{name}");
        assert!(allocated(&d.join("sub/mid.bin")) <= 64 << 10, "{name}");
        assert_eq!(fs::read(d.join("plain.txt")).unwrap(), b"plain\n");
        for file in ["disk.img", "holes.bin", "sub/mid.bin", "plain.txt"] {
            let (a, b) = (fs::metadata(s.join(file)).unwrap(), fs::metadata(d.join(file)).unwrap());
            assert_eq!((a.mode(), a.mtime(), a.mtime_nsec()), (b.mode(), b.mtime(), b.mtime_nsec()), "{name} {file}");
        }
    }
}

#[tokio::test]
async fn browsing_shows_the_real_size_and_reads_holes_as_zeros() {
    for (name, h) in both() {
        let src = tempfile::tempdir().unwrap();
        bomb(src.path());
        let (ids, keys) = ids_and_keys();
        h.snaps.capture(src.path(), &keys, ids).await.unwrap();

        let listed = h.snaps.list_files(&keys).await.unwrap();
        let size_of = |p: &str| listed.iter().find(|e| e.path == p).map(|e| e.size);
        assert_eq!(size_of("disk.img"), Some(8 * GIB as i64), "{name}");
        assert_eq!(size_of("holes.bin"), Some(GIB as i64), "{name}");
        assert_eq!(size_of("sub/mid.bin"), Some(16 * MIB as i64), "{name}");
        assert_eq!(size_of("plain.txt"), Some(6), "{name}");

        let want = fs::read(src.path().join("sub/mid.bin")).unwrap();
        let read = h.snaps.read_file(&keys, &rel("sub/mid.bin"), 4 * MIB + 100).await.unwrap();
        assert!(read.truncated);
        assert_eq!(read.entry.size, 16 * MIB as i64);
        assert_eq!(read.bytes, want[..(4 * MIB + 100) as usize], "{name}: zeros, then the data");
        let whole = h.snaps.read_file(&keys, &rel("sub/mid.bin"), 32 * MIB).await.unwrap();
        assert!(!whole.truncated && whole.bytes == want, "{name}");
        let head = h.snaps.read_file(&keys, &rel("disk.img"), 8192).await.unwrap();
        assert_eq!(head.bytes, read_at(&src.path().join("disk.img"), 0, 8192), "{name}");

        let (entry, stream) = h.snaps.download(&keys, &rel("sub/mid.bin")).await.unwrap();
        assert_eq!(entry.size, 16 * MIB as i64);
        let got: Vec<u8> = stream.map(|c| c.unwrap().to_vec()).concat().await;
        assert!(got == want, "{name}: downloaded bytes differ");
        let (_, after) = h.snaps.download(&keys, &rel("plain.txt")).await.unwrap();
        assert_eq!(after.map(|c| c.unwrap().to_vec()).concat().await, b"plain\n");
    }
}

#[tokio::test]
async fn gnu_tar_extracts_our_sparse_entries_with_their_holes() {
    let h = memory();
    let src = tempfile::tempdir().unwrap();
    sparse(&src.path().join("mid.bin"), 16 * MIB, &[(4 * MIB, noise(8192, 4))]);
    let deep = format!("{}/{}", "d".repeat(90), "e".repeat(90));
    fs::create_dir_all(src.path().join(&deep)).unwrap();
    let long = format!("{deep}/{}.bin", "f".repeat(60));
    sparse(&src.path().join(&long), 8 * MIB, &[(8 * MIB - 4096, noise(4096, 5))]);
    let (ids, keys) = ids_and_keys();
    h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let tar_path = work.path().join("a.tar");
    fs::write(&tar_path, zstd::decode_all(&h.get(&keys.archive).await[..]).unwrap()).unwrap();
    let out = work.path().join("out");
    fs::create_dir(&out).unwrap();
    let status = Command::new("tar").arg("-xf").arg(&tar_path).arg("-C").arg(&out).status().unwrap();
    assert!(status.success());
    assert_eq!(walk(&out), walk(src.path()), "no placeholder names");
    for file in ["mid.bin", long.as_str()] {
        assert_eq!(fs::read(out.join(file)).unwrap(), fs::read(src.path().join(file)).unwrap(), "{file}");
        assert!(allocated(&out.join(file)) <= 64 << 10, "{file}");
    }
}

#[tokio::test]
async fn an_older_format_snapshot_still_restores_and_verifies() {
    for (name, h) in both() {
        let src = tempfile::tempdir().unwrap();
        fixture(src.path());
        let (ids, keys) = ids_and_keys();
        h.snaps.capture(src.path(), &keys, ids).await.unwrap();
        // A format-1 manifest, as an older build wrote it: no `data_bytes` (its archives hold no sparse entries).
        let mut json: serde_json::Value = serde_json::from_slice(&h.get(&keys.manifest).await).unwrap();
        json["format_version"] = 1.into();
        json.as_object_mut().unwrap().remove("data_bytes");
        h.put(&keys.manifest, serde_json::to_vec(&json).unwrap()).await;

        let verified = h.snaps.verify(&keys).await.unwrap();
        assert_eq!(verified.format_version, 1);
        assert_eq!(verified.data_bytes, FIXTURE_CONTENT, "{name}: format 1 writes every byte");
        let dest = tempfile::tempdir().unwrap();
        h.snaps.restore(&keys, dest.path()).await.unwrap();
        assert_same_tree(src.path(), dest.path());

        json["format_version"] = (FORMAT_VERSION + 1).into();
        h.put(&keys.manifest, serde_json::to_vec(&json).unwrap()).await;
        let err = h.snaps.verify(&keys).await.unwrap_err();
        assert!(matches!(&err, SnapshotError::Corrupt(m) if m.contains("format version")), "{name}: {err}");
        json["format_version"] = FORMAT_VERSION.into();
        h.put(&keys.manifest, serde_json::to_vec(&json).unwrap()).await;
        let err = h.snaps.verify(&keys).await.unwrap_err();
        assert!(matches!(&err, SnapshotError::Corrupt(m) if m.contains("data_bytes")), "{name}: {err}");
    }
}

/// A hand-built sparse entry: PAX records, then a header of `stored` bytes holding `body`.
fn sparse_entry(tar: &mut tar::Builder<Vec<u8>>, name: &str, records: &[(&str, &str)], body: &[u8]) {
    tar.append_pax_extensions(records.iter().map(|(k, v)| (*k, v.as_bytes()))).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    tar.append_data(&mut header, name, body).unwrap();
}

fn block(text: &str, data: &[u8]) -> Vec<u8> {
    let mut body = text.as_bytes().to_vec();
    body.resize(512, 0);
    body.extend_from_slice(data);
    body
}

#[tokio::test]
async fn crafted_sparse_entries_with_bad_maps_are_corrupt() {
    let v1 =
        |size: &'static str| vec![("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.realsize", size)];
    type Case = (&'static str, Vec<(&'static str, &'static str)>, Vec<u8>);
    let cases: Vec<Case> = vec![
        ("outside the file", v1("100"), block("1\n90\n20\n", &[1; 20])),
        ("out of order", v1("100"), block("2\n10\n5\n0\n5\n", &[1; 10])),
        ("data bytes", v1("100"), block("1\n0\n5\n", &[1; 9])),
        ("unsupported format", vec![("GNU.sparse.major", "0"), ("GNU.sparse.minor", "1")], block("0\n", &[])),
        ("realsize", vec![("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")], block("0\n", &[])),
    ];
    for (why, records, body) in cases {
        let h = memory();
        let mut tar = tar::Builder::new(Vec::new());
        sparse_entry(&mut tar, "f.bin", &records, &body);
        let keys = store_crafted(&h, tar, 1).await;
        let dest = tempfile::tempdir().unwrap();
        let err = h.snaps.restore(&keys, dest.path()).await.unwrap_err();
        assert!(matches!(&err, SnapshotError::Corrupt(m) if m.contains(why)), "{why}: {err}");
        let err = h.snaps.read_file(&keys, &rel("f.bin"), 1000).await.unwrap_err();
        assert!(matches!(&err, SnapshotError::Corrupt(m) if m.contains(why)), "{why}: {err}");
    }
    // And a well-formed one restores with its hole.
    let h = memory();
    let mut tar = tar::Builder::new(Vec::new());
    sparse_entry(&mut tar, "f.bin", &v1("100000"), &block("2\n0\n3\n99998\n2\n", b"abcde"));
    let keys = store_crafted(&h, tar, 1).await;
    let dest = tempfile::tempdir().unwrap();
    h.snaps.restore(&keys, dest.path()).await.unwrap();
    let got = fs::read(dest.path().join("f.bin")).unwrap();
    assert_eq!(got.len(), 100_000);
    assert_eq!((&got[..3], &got[99_998..]), (&b"abc"[..], &b"de"[..]));
    assert!(got[3..99_998].iter().all(|&b| b == 0));
}
