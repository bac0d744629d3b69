//! The entry index: listing reads only the index, reading one file only the frame holding it (bytes fetched are
//! counted through an instrumented store); multi-frame archives stay one plain tar.zst; snapshots without an index
//! are browsed by scanning; a damaged, oversized or missing index is refused as `Corrupt`.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use common::*;
use evershell_core::files::RelPath;
use evershell_snapshot::{SnapshotError, SnapshotStore};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// Counts the bytes read from archives and from indexes.
#[derive(Debug, Default)]
struct Counting {
    inner: InMemory,
    archive: Arc<AtomicU64>,
    index: Arc<AtomicU64>,
}

impl std::fmt::Display for Counting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting")
    }
}

impl Counting {
    fn reset(&self) {
        self.archive.store(0, Ordering::SeqCst);
        self.index.store(0, Ordering::SeqCst);
    }

    fn fetched(&self) -> (u64, u64) {
        (self.archive.load(Ordering::SeqCst), self.index.load(Ordering::SeqCst))
    }
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let got = self.inner.get_opts(location, options).await?;
        let counter = if location.as_ref().ends_with(".tar.zst") {
            Arc::clone(&self.archive)
        } else if location.as_ref().ends_with(".index.zst") {
            Arc::clone(&self.index)
        } else {
            return Ok(got);
        };
        let GetResultPayload::Stream(stream) = got.payload else { unreachable!("InMemory streams") };
        let counted = stream.inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                counter.fetch_add(bytes.len() as u64, Ordering::SeqCst);
            }
        });
        Ok(GetResult { payload: GetResultPayload::Stream(counted.boxed()), ..got })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn rel(p: &str) -> RelPath {
    RelPath::parse(p).unwrap()
}

/// 40 incompressible 200 KiB files (8 MiB), a 3 MiB one, a sparse one, non-UTF-8 names and the common fixture.
fn workspace(root: &std::path::Path) {
    fixture(root);
    fs::create_dir_all(root.join("many")).unwrap();
    for i in 0..40 {
        fs::write(root.join(format!("many/f{i:02}.bin")), noise(200 << 10, i + 1)).unwrap();
    }
    fs::write(root.join("big.bin"), noise(3 << 20, 99)).unwrap();
    let sparse = fs::File::create(root.join("holes.img")).unwrap();
    sparse.write_all_at(b"start", 0).unwrap();
    sparse.write_all_at(b"middle", 8 << 20).unwrap();
    sparse.set_len(16 << 20).unwrap();
    // Names and link targets that are not UTF-8 (listed lossily, like a scan lists them).
    use std::os::unix::ffi::OsStrExt;
    let odd = std::ffi::OsStr::from_bytes(b"odd-\xff.txt");
    fs::write(root.join(odd), b"odd").unwrap();
    std::os::unix::fs::symlink(odd, root.join("odd-link")).unwrap();
}

#[tokio::test]
async fn listing_reads_only_the_index_and_a_file_read_only_its_frame() {
    let counting = Arc::new(Counting::default());
    let snaps = SnapshotStore::new(Arc::clone(&counting) as Arc<dyn ObjectStore>).with_frame_bytes(1 << 20);
    let src = tempfile::tempdir().unwrap();
    workspace(src.path());
    let (ids, keys) = ids_and_keys();
    let m = snaps.capture(src.path(), &keys, ids).await.unwrap();
    let index = m.index.clone().expect("an indexed snapshot");
    assert_eq!(index.entries, m.file_count);

    counting.reset();
    let listing = snaps.list_files(&keys).await.unwrap();
    assert_eq!(listing.len() as u64, m.file_count);
    assert_eq!(counting.fetched(), (0, index.bytes), "a listing reads the index and nothing of the archive");

    // One small file in the middle: the index, plus one ~1 MiB frame of an archive of more than 11 MiB.
    counting.reset();
    let got = snaps.read_file(&keys, &rel("many/f20.bin"), 1 << 30).await.unwrap();
    assert_eq!(got.bytes, noise(200 << 10, 21));
    let (archive, idx) = counting.fetched();
    assert_eq!(idx, index.bytes);
    assert!(archive > 0 && archive < (1 << 20) + (400 << 10), "fetched {archive} of {} archive bytes", m.archive_bytes);
    assert!(m.archive_bytes > 10 * archive);

    counting.reset();
    let (_, mut stream) = snaps.download(&keys, &rel("many/f39.bin")).await.unwrap();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(body, noise(200 << 10, 40));
    assert!(counting.fetched().0 < (1 << 20) + (400 << 10));
}

#[tokio::test]
async fn every_file_of_a_multi_frame_archive_reads_back_and_it_is_still_one_plain_tar_zst() {
    for (name, h) in both() {
        let snaps = h.snaps.clone().with_frame_bytes(256 << 10);
        let src = tempfile::tempdir().unwrap();
        workspace(src.path());
        let (ids, keys) = ids_and_keys();
        let m = snaps.capture(src.path(), &keys, ids).await.unwrap();
        assert!(m.index.is_some(), "{name}");
        let listing = snaps.list_files(&keys).await.unwrap();
        let files = listing.iter().filter(|e| !e.is_dir && e.mime_type.as_deref() != Some("inode/symlink"));
        for entry in files.filter(|e| !e.path.contains('\u{fffd}')) {
            let want = fs::read(src.path().join(&entry.path)).unwrap();
            let got = snaps.read_file(&keys, &rel(&entry.path), u64::MAX).await.unwrap();
            assert_eq!(got.bytes.len(), want.len(), "{name}: {}", entry.path);
            assert!(got.bytes == want, "{name}: {} differs", entry.path);
            assert_eq!(&got.entry, entry, "{name}");
        }
        // Holes read as zeros through the index too.
        let holes = snaps.read_file(&keys, &rel("holes.img"), u64::MAX).await.unwrap();
        assert_eq!(holes.entry.size, 16 << 20);
        assert_eq!(&holes.bytes[..5], b"start");
        assert_eq!(&holes.bytes[8 << 20..(8 << 20) + 6], b"middle");
        // Concatenated frames: one zstd stream, one tar.
        let archive = h.get(&keys.archive).await;
        let tar = zstd::decode_all(&archive[..]).unwrap();
        let mut count = 0;
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            e.unwrap();
            count += 1;
        }
        assert_eq!(count as u64, m.file_count, "{name}");
        // Restore is unchanged, and the reads above never needed it.
        let dest = tempfile::tempdir().unwrap();
        h.snaps.restore(&keys, dest.path()).await.unwrap();
        assert_same_tree(src.path(), dest.path());
    }
}

#[tokio::test]
async fn the_index_lists_exactly_what_a_scan_of_the_archive_lists_and_unindexed_snapshots_still_browse() {
    for (name, h) in both() {
        let src = tempfile::tempdir().unwrap();
        workspace(src.path());
        let (ids, keys) = ids_and_keys();
        let snaps = h.snaps.clone().with_frame_bytes(64 << 10);
        snaps.capture(src.path(), &keys, ids).await.unwrap();
        let indexed = snaps.list_files(&keys).await.unwrap();
        let capped = snaps.list_files_capped(&keys, 3).await.unwrap();
        assert!(capped.truncated && capped.entries[..] == indexed[..3], "{name}");
        let want = snaps.read_file(&keys, &rel("src/nested/main.rs"), 100).await.unwrap();

        // The snapshot as an older build wrote it: no index named, no index object.
        let mut json: serde_json::Value = serde_json::from_slice(&h.get(&keys.manifest).await).unwrap();
        json.as_object_mut().unwrap().remove("index");
        h.put(&keys.manifest, serde_json::to_vec(&json).unwrap()).await;
        h.raw.delete(&keys.index).await.unwrap();
        assert_eq!(snaps.list_files(&keys).await.unwrap(), indexed, "{name}");
        assert_eq!(snaps.list_files_capped(&keys, 3).await.unwrap(), capped, "{name}");
        assert_eq!(snaps.read_file(&keys, &rel("src/nested/main.rs"), 100).await.unwrap(), want, "{name}");
        assert!(matches!(snaps.read_file(&keys, &rel("nope"), 1).await, Err(SnapshotError::FileNotFound(_))));
    }
}

#[tokio::test]
async fn a_damaged_oversized_or_missing_index_is_refused_and_restore_does_not_care() {
    let h = memory();
    let src = tempfile::tempdir().unwrap();
    workspace(src.path());
    let (ids, keys) = ids_and_keys();
    h.snaps.capture(src.path(), &keys, ids).await.unwrap();
    let original_index = h.get(&keys.index).await;
    let original_manifest = h.get(&keys.manifest).await;

    let mut flipped = original_index.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    h.put(&keys.index, flipped).await;
    check(&h, &keys, "index").await;

    h.put(&keys.index, original_index.clone()).await;
    let mut json: serde_json::Value = serde_json::from_slice(&original_manifest).unwrap();
    json["index"]["bytes"] = serde_json::json!(1u64 << 40);
    h.put(&keys.manifest, serde_json::to_vec(&json).unwrap()).await;
    check(&h, &keys, "accepted").await;

    h.put(&keys.manifest, original_manifest.clone()).await;
    h.raw.delete(&keys.index).await.unwrap();
    check(&h, &keys, "names a file index").await;
}

fn corrupt(why: &str, r: Result<(), SnapshotError>) {
    match r {
        Err(SnapshotError::Corrupt(m)) => assert!(m.contains(why), "{why}: {m}"),
        other => panic!("{why}: {other:?}"),
    }
}

async fn check(h: &Harness, keys: &evershell_snapshot::SnapshotKeys, why: &str) {
    corrupt(why, h.snaps.list_files(keys).await.map(drop));
    corrupt(why, h.snaps.read_file(keys, &rel("README.md"), 10).await.map(drop));
    corrupt(why, h.snaps.download(keys, &rel("README.md")).await.map(drop));
    let dest = tempfile::tempdir().unwrap();
    h.snaps.restore(keys, dest.path()).await.unwrap();
}
