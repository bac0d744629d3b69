//! A capture that fails anywhere — upload, read-back, manifest write — returns an error and leaves no manifest and
//! no archive behind, so nothing ever vouches for a bad snapshot.

mod common;

use std::fmt;
use std::fs;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use evershell_snapshot::{SnapshotError, SnapshotStore};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// The second multipart part fails.
    Upload,
    /// Archive reads come back with one byte flipped (as if the store kept something else).
    CorruptReads,
    /// Writing the manifest fails.
    ManifestPut,
    /// Archive reads fail half-way (a network error, not a bad archive).
    BrokenReads,
}

#[derive(Debug)]
struct Faulty {
    inner: InMemory,
    fault: Fault,
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({:?})", self.fault)
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic { store: "faulty", source: format!("injected fault: {what}").into() }
}

#[derive(Debug)]
struct FailingUpload {
    inner: Box<dyn MultipartUpload>,
    parts: usize,
}

#[async_trait]
impl MultipartUpload for FailingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.parts += 1;
        if self.parts > 1 {
            return Box::pin(async { Err(injected("part upload")) });
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.fault == Fault::ManifestPut && location.as_ref().ends_with(".manifest.json") {
            return Err(injected("manifest write"));
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        if self.fault == Fault::Upload {
            return Ok(Box::new(FailingUpload { inner: upload, parts: 0 }));
        }
        Ok(upload)
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let got = self.inner.get_opts(location, options).await?;
        let tampered = matches!(self.fault, Fault::CorruptReads | Fault::BrokenReads);
        if !tampered || !location.as_ref().ends_with(".tar.zst") {
            return Ok(got);
        }
        let (meta, range, attributes) = (got.meta.clone(), got.range.clone(), got.attributes.clone());
        let mut bytes = got.bytes().await?.to_vec();
        let mid = bytes.len() / 2;
        let payload = if self.fault == Fault::BrokenReads {
            bytes.truncate(mid);
            let parts = vec![Ok(Bytes::from(bytes)), Err(injected("connection reset"))];
            GetResultPayload::Stream(futures::stream::iter(parts).boxed())
        } else {
            bytes[mid] ^= 1;
            GetResultPayload::Stream(futures::stream::once(async { Ok(Bytes::from(bytes)) }).boxed())
        };
        Ok(GetResult { payload, meta, range, attributes, extensions: Default::default() })
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

/// Capture a workspace big enough for several multipart parts through a store with `fault`.
async fn capture_with(fault: Fault) -> (SnapshotError, Arc<Faulty>, evershell_snapshot::SnapshotKeys) {
    let store = Arc::new(Faulty { inner: InMemory::new(), fault });
    let snaps = SnapshotStore::new(Arc::clone(&store) as Arc<dyn ObjectStore>);
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("big.bin"), noise(20 << 20, 3)).unwrap();
    fixture(&src.path().join("tree"));
    let (ids, keys) = ids_and_keys();
    let err = snaps.capture(src.path(), &keys, ids).await.unwrap_err();
    (err, store, keys)
}

async fn assert_nothing_left(store: &Faulty, keys: &evershell_snapshot::SnapshotKeys) {
    assert!(store.inner.head(&keys.archive).await.is_err(), "archive left behind");
    assert!(store.inner.head(&keys.manifest).await.is_err(), "manifest left behind");
}

#[tokio::test]
async fn a_failed_upload_leaves_nothing() {
    let (err, store, keys) = capture_with(Fault::Upload).await;
    assert!(matches!(&err, SnapshotError::Io(_)) && format!("{err}").contains("injected fault"), "{err}");
    assert_nothing_left(&store, &keys).await;
}

#[tokio::test]
async fn a_read_back_mismatch_leaves_nothing() {
    let (err, store, keys) = capture_with(Fault::CorruptReads).await;
    assert!(matches!(&err, SnapshotError::Corrupt(m) if m.contains("read-back")), "{err}");
    assert_nothing_left(&store, &keys).await;
}

#[tokio::test]
async fn a_failed_manifest_write_leaves_nothing() {
    let (err, store, keys) = capture_with(Fault::ManifestPut).await;
    assert!(matches!(&err, SnapshotError::Io(_)) && format!("{err}").contains("manifest"), "{err}");
    assert_nothing_left(&store, &keys).await;
}

#[tokio::test]
async fn a_failed_recapture_does_not_leave_the_old_manifest_vouching() {
    // Same keys captured twice; the second capture fails after replacing the archive.
    let store = Arc::new(Faulty { inner: InMemory::new(), fault: Fault::ManifestPut });
    let good = SnapshotStore::new(Arc::new(InMemory::new()));
    let src = tempfile::tempdir().unwrap();
    fixture(src.path());
    let (ids, keys) = ids_and_keys();
    good.capture(src.path(), &keys, ids).await.unwrap();
    // Seed the faulty store with a valid old snapshot at the same keys.
    let old_manifest = serde_json::to_vec(&good.verify(&keys).await.unwrap()).unwrap();
    store.inner.put(&keys.manifest, PutPayload::from(old_manifest)).await.unwrap();
    let snaps = SnapshotStore::new(Arc::clone(&store) as Arc<dyn ObjectStore>);
    assert!(snaps.capture(src.path(), &keys, ids).await.is_err());
    assert_nothing_left(&store, &keys).await;
}

#[tokio::test]
async fn stream_stores_restore_and_surface_corrupt_reads() {
    // The non-local read path (a byte stream pumped through a channel) restores like the local one, and a store
    // handing back altered bytes is caught.
    let store = Arc::new(Faulty { inner: InMemory::new(), fault: Fault::CorruptReads });
    let clean = SnapshotStore::new(Arc::new(store.inner.clone()));
    let src = tempfile::tempdir().unwrap();
    fixture(src.path());
    let (ids, keys) = ids_and_keys();
    clean.capture(src.path(), &keys, ids).await.unwrap();
    let snaps = SnapshotStore::new(Arc::clone(&store) as Arc<dyn ObjectStore>);
    let dest = tempfile::tempdir().unwrap();
    assert!(matches!(snaps.restore(&keys, dest.path()).await, Err(SnapshotError::Corrupt(_))));
    assert!(matches!(snaps.verify(&keys).await, Err(SnapshotError::Corrupt(_))));
}

#[tokio::test]
async fn a_store_read_failure_is_io_not_corrupt() {
    let store = Arc::new(Faulty { inner: InMemory::new(), fault: Fault::BrokenReads });
    let clean = SnapshotStore::new(Arc::new(store.inner.clone()));
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("big.bin"), noise(4 << 20, 9)).unwrap();
    let (ids, keys) = ids_and_keys();
    clean.capture(src.path(), &keys, ids).await.unwrap();
    let snaps = SnapshotStore::new(Arc::clone(&store) as Arc<dyn ObjectStore>);
    let dest = tempfile::tempdir().unwrap();
    let err = snaps.restore(&keys, dest.path()).await.unwrap_err();
    assert!(matches!(&err, SnapshotError::Io(_)) && format!("{err}").contains("connection reset"), "{err}");
    let err = snaps.verify(&keys).await.unwrap_err();
    assert!(matches!(&err, SnapshotError::Io(_)), "{err}");
    // Listing reads only the entry index; reading the file reads the archive.
    let err =
        snaps.read_file(&keys, &evershell_core::files::RelPath::parse("big.bin").unwrap(), 1 << 30).await.unwrap_err();
    assert!(matches!(&err, SnapshotError::Io(_)), "{err}");
}
