//! Capture orchestration, a three-stage pipeline joined by bounded channels (memory stays bounded whatever the
//! workspace size, and the stages run on different cores):
//! 1. packer (blocking pool): walk → tar → zstd, emitting ~1 MiB chunks (`pack`, `bridge::ChunkSender`);
//! 2. hasher (blocking pool): sha256 for the manifest and an xxh3-128 fingerprint of every chunk, passed on;
//! 3. uploader (async): an object-store multipart upload (`BufWriter`); for a local store, with early writeback of
//!    the staged file (`writeback`), so the closing fsync is short.
//!
//! Then the archive is read back from the store and its size and fingerprint compared with what was uploaded;
//! then the entry index the packer built (`index`) is stored, and only then is the manifest, naming the index's
//! sha256, written. Any failure removes what was written, so a manifest never vouches for a bad
//! archive.
//!
//! With a content cap (`CaptureOptions::max_content_bytes`), a workspace whose files' apparent sizes add up to more
//! fails with `TooLarge` as soon as packing passes the cap; its full size is then measured for the error message.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use evershell_core::Timestamp;
use evershell_core::ids::{OrgId, SnapshotId, WorkspaceId};
use object_store::buffered::BufWriter;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::bridge::{CHANNEL_DEPTH, ChunkSender, delete_object, open_object, run_blocking};
use crate::error::SnapshotError;
use crate::hashing::{Digest, Fingerprint, drain};
use crate::index::{IndexBlob, IndexRef};
use crate::keys::SnapshotKeys;
use crate::manifest::{FORMAT_VERSION, Manifest};
use crate::options::CaptureOptions;
use crate::pack::{PackStats, Packed, content_size, pack_framed};
use crate::writeback::EarlyWriteback;

/// Multipart part size (S3 needs ≥ 5 MiB for all but the last part).
const PART_SIZE: usize = 8 << 20;
/// Parts uploading at once.
const PART_CONCURRENCY: usize = 4;

fn store_io(err: impl Into<anyhow::Error>, what: &str) -> SnapshotError {
    SnapshotError::Io(err.into().context(what.to_string()))
}

/// What the upload produced.
struct Uploaded {
    stats: PackStats,
    index: Option<IndexBlob>,
    frames: u64,
    sha256: String,
    fingerprint: String,
    bytes: u64,
}

pub(crate) async fn capture(
    store: &Arc<dyn ObjectStore>,
    local_root: Option<&Path>,
    src: &Path,
    keys: &SnapshotKeys,
    (org_id, workspace_id, snapshot_id): (OrgId, WorkspaceId, SnapshotId),
    opts: &CaptureOptions,
    frame_bytes: u64,
) -> Result<Manifest, SnapshotError> {
    // A manifest vouches for whatever archive sits at its key: drop any old one before that archive is replaced.
    delete_object(store, &keys.manifest).await?;
    let result = async {
        let begun = std::time::Instant::now();
        let early = local_root.and_then(|root| EarlyWriteback::new(&root.join(keys.archive.as_ref())));
        let mut up = upload_archive(store, src, keys, early, opts.max_content_bytes, frame_bytes).await?;
        let uploaded = begun.elapsed();
        check_read_back(store, keys, &up).await?;
        tracing::debug!(
            upload_ms = uploaded.as_secs_f64() * 1e3,
            read_back_ms = (begun.elapsed() - uploaded).as_secs_f64() * 1e3,
            archive_bytes = up.bytes,
            frames = up.frames,
            "archive uploaded and checked"
        );
        let index = match up.index.take() {
            Some(blob) => Some(put_index(store, keys, blob).await?),
            None => {
                delete_object(store, &keys.index).await?;
                None
            }
        };
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            snapshot_id,
            org_id,
            workspace_id,
            archive_sha256: up.sha256,
            archive_bytes: up.bytes,
            file_count: up.stats.entries,
            content_bytes: up.stats.content_bytes,
            data_bytes: up.stats.data_bytes,
            created_at: Timestamp::now(),
            index,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| store_io(e, "encoding the manifest"))?;
        store.put(&keys.manifest, PutPayload::from(json)).await.map_err(|e| store_io(e, "writing the manifest"))?;
        Ok(manifest)
    }
    .await;
    match result {
        Ok(manifest) => Ok(manifest),
        Err(err) => {
            cleanup(store, keys).await;
            Err(measured(err, src).await)
        }
    }
}

/// A `TooLarge` from the packer counts only what it saw before stopping: report the workspace's whole size.
async fn measured(err: SnapshotError, src: &Path) -> SnapshotError {
    let SnapshotError::TooLarge { limit, found } = err else { return err };
    let root = src.to_path_buf();
    let total = tokio::task::spawn_blocking(move || content_size(&root)).await.unwrap_or(found);
    SnapshotError::TooLarge { limit, found: total.max(found) }
}

/// Store the entry index; what the manifest says about it.
async fn put_index(
    store: &Arc<dyn ObjectStore>,
    keys: &SnapshotKeys,
    blob: IndexBlob,
) -> Result<IndexRef, SnapshotError> {
    let mut digest = Digest::default();
    digest.update(&blob.bytes);
    let (sha256, bytes) = digest.finish();
    store.put(&keys.index, PutPayload::from(blob.bytes)).await.map_err(|e| store_io(e, "writing the entry index"))?;
    Ok(IndexRef { sha256, bytes, entries: blob.entries })
}

/// Best-effort removal of a failed capture's objects.
async fn cleanup(store: &Arc<dyn ObjectStore>, keys: &SnapshotKeys) {
    for path in [&keys.manifest, &keys.archive, &keys.index] {
        if let Err(e) = delete_object(store, path).await {
            tracing::warn!(error = %format!("{e:#}"), "could not remove a failed snapshot's object");
        }
    }
}

/// Read the stored archive back: its size and fingerprint must be those of the bytes uploaded.
async fn check_read_back(
    store: &Arc<dyn ObjectStore>,
    keys: &SnapshotKeys,
    up: &Uploaded,
) -> Result<(), SnapshotError> {
    let source = open_object(store, &keys.archive, "archive").await?;
    let (fingerprint, bytes) = run_blocking(move || {
        let mut fp = Fingerprint::default();
        drain(source, |chunk| fp.update(chunk)).map_err(|e| store_io(e, "reading the archive back"))?;
        Ok(fp.finish())
    })
    .await?;
    if bytes != up.bytes || fingerprint != up.fingerprint {
        return Err(SnapshotError::Corrupt(format!(
            "read-back check after upload failed: the store holds {bytes} bytes (xxh3 {fingerprint}), {} bytes \
             (xxh3 {}) were uploaded",
            up.bytes, up.fingerprint
        )));
    }
    Ok(())
}

/// Run the packer → hasher → uploader pipeline; completes the upload only if every stage succeeded.
async fn upload_archive(
    store: &Arc<dyn ObjectStore>,
    src: &Path,
    keys: &SnapshotKeys,
    mut early: Option<EarlyWriteback>,
    limit: Option<u64>,
    frame_bytes: u64,
) -> Result<Uploaded, SnapshotError> {
    let (packed_tx, mut packed_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let (hashed_tx, mut hashed_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let src = src.to_path_buf();
    let packer = tokio::task::spawn_blocking(move || -> Result<_, SnapshotError> {
        let Packed { stats, index, frames, out } = pack_framed(&src, ChunkSender::new(packed_tx), limit, frame_bytes)?;
        out.finish().map_err(|e| store_io(e, "writing the archive"))?;
        Ok((stats, index, frames))
    });
    let hasher = tokio::task::spawn_blocking(move || {
        let (mut digest, mut fingerprint) = (Digest::default(), Fingerprint::default());
        while let Some(chunk) = packed_rx.blocking_recv() {
            digest.update(&chunk);
            fingerprint.update(&chunk);
            if hashed_tx.blocking_send(chunk).is_err() {
                break; // the uploader gave up; dropping `packed_rx` stops the packer
            }
        }
        (digest.finish(), fingerprint.finish().0)
    });
    let mut writer = BufWriter::with_capacity(Arc::clone(store), keys.archive.clone(), PART_SIZE)
        .with_max_concurrency(PART_CONCURRENCY);
    let mut upload_err = None;
    while let Some(chunk) = hashed_rx.recv().await {
        let n = chunk.len();
        if let Err(e) = writer.put(chunk).await {
            upload_err = Some(e);
            break;
        }
        if let Some(w) = early.as_mut() {
            w.advance(n);
        }
    }
    drop(hashed_rx);
    let packed = packer.await.map_err(|e| store_io(e, "snapshot packer task failed")).and_then(|r| r);
    let hashed = hasher.await.map_err(|e| store_io(e, "snapshot hasher task failed"));
    let failure = match (upload_err, packed, hashed) {
        (Some(e), _, _) => store_io(e, "uploading the archive"),
        (None, Err(e), _) | (None, Ok(_), Err(e)) => e,
        (None, Ok((stats, index, frames)), Ok(((sha256, bytes), fingerprint))) => {
            writer.shutdown().await.map_err(|e| store_io(e, "completing the archive upload"))?;
            return Ok(Uploaded { stats, index, frames, sha256, fingerprint, bytes });
        }
    };
    if let Err(e) = writer.abort().await {
        tracing::warn!(error = %e, "could not abort a failed archive upload");
    }
    Err(failure)
}
