//! Restore: one pass over the archive in two overlapping stages — a hashing thread reads the archive from the store
//! and digests it (`hashing::feed`), while this thread decompresses and extracts safely (`extract`). After the tar
//! end marker the rest of the stream is drained (so zstd checks its frame checksum), then sha256, size and entry
//! count are compared with the manifest. Decode and tar errors are `Corrupt`; a failing store read is `Io`.
//!
//! Before anything is written: a manifest counting more content than `RestoreOptions::max_content_bytes` is
//! `TooLarge`, and one whose data bytes and entries will not fit the destination's free space is `WontFit`
//! (`space`). While extracting, the manifest's figures are a budget no entry may pass (`extract::Budget`).

use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::sync_channel;

use object_store::ObjectStore;

use crate::bridge::{CHANNEL_DEPTH, Cancelled, ChunkReader, SourceReader, classify, open_object, run_cancellable};
use crate::error::{SnapshotError, corrupt};
use crate::extract::{Budget, Extractor};
use crate::hashing::{drain, feed};
use crate::keys::SnapshotKeys;
use crate::manifest::Manifest;
use crate::options::RestoreOptions;
use crate::space::check_fits;
use crate::verify::{check_digest, read_manifest};

pub(crate) async fn restore(
    store: &Arc<dyn ObjectStore>,
    keys: &SnapshotKeys,
    dest: &Path,
    opts: &RestoreOptions,
) -> Result<Manifest, SnapshotError> {
    let manifest = read_manifest(store, &keys.manifest).await?;
    if let Some(limit) = opts.max_content_bytes.filter(|&limit| manifest.content_bytes > limit) {
        return Err(SnapshotError::TooLarge { limit, found: manifest.content_bytes });
    }
    let source = open_object(store, &keys.archive, "archive").await?;
    if source.size() != manifest.archive_bytes {
        return Err(SnapshotError::Corrupt(format!(
            "archive is {} bytes but the manifest says {}",
            source.size(),
            manifest.archive_bytes
        )));
    }
    let dest = dest.to_path_buf();
    let expected = manifest.clone();
    let (owner, check_space) = (opts.owner, !opts.own_filesystem);
    run_cancellable(move |cancelled| {
        if check_space {
            check_fits(&dest, expected.data_bytes, expected.file_count)?;
        }
        unpack(source, &dest, &expected, owner, cancelled)
    })
    .await?;
    Ok(manifest)
}

fn unpack(
    source: SourceReader,
    dest: &Path,
    manifest: &Manifest,
    owner: Option<(u32, u32)>,
    cancelled: &Cancelled,
) -> Result<(), SnapshotError> {
    let health = source.health();
    let budget = Budget { content_bytes: manifest.content_bytes, data_bytes: manifest.data_bytes };
    let mut extractor = Extractor::new(dest, owner, budget)?;
    let (tx, rx) = sync_channel(CHANNEL_DEPTH);
    let (walked, digest) = std::thread::scope(|scope| {
        let hasher = scope.spawn(move || feed(source, tx));
        let walked = extract_all(ChunkReader::new(rx), &mut extractor, cancelled);
        let digest = hasher.join().unwrap_or_else(|_| Err(io::Error::other("the hashing thread panicked")));
        (walked, digest)
    });
    let digest = match (walked, digest) {
        (Ok(()), Ok(Some(digest))) => digest,
        (Err(SnapshotError::Corrupt(msg)), Ok(Some((sha, bytes)))) if health.failure().is_none() => {
            // Say whether the archive differs from what was captured, not only that it does not decode.
            let mismatch = check_digest(&manifest.archive_sha256, manifest.archive_bytes, &sha, bytes).err();
            return Err(SnapshotError::Corrupt(match mismatch {
                Some(SnapshotError::Corrupt(mismatch)) => format!("{mismatch}; {msg}"),
                _ => msg,
            }));
        }
        (Err(e), _) => return Err(classify(e, &health)),
        (Ok(()), Err(e)) => return Err(classify(corrupt("reading the archive", e), &health)),
        (Ok(()), Ok(None)) => return Err(SnapshotError::Io(anyhow::anyhow!("the archive stream stopped early"))),
    };
    check_digest(&manifest.archive_sha256, manifest.archive_bytes, &digest.0, digest.1)?;
    if extractor.entries != manifest.file_count {
        return Err(SnapshotError::Corrupt(format!(
            "archive holds {} entries but the manifest says {}",
            extractor.entries, manifest.file_count
        )));
    }
    extractor.finish()
}

/// Decompress and extract every entry, then consume the rest of the stream: the tar padding and zstd checksum after
/// a success, the remaining raw bytes after a decode error (so the digest covers the whole archive). After an unsafe
/// entry or a write error the stream is dropped instead, which stops the hashing thread.
fn extract_all(reader: ChunkReader, extractor: &mut Extractor, cancelled: &Cancelled) -> Result<(), SnapshotError> {
    let decoder = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(64 * 1024, reader))
        .map_err(|e| SnapshotError::Io(anyhow::Error::new(e).context("setting up zstd")))?;
    let mut archive = tar::Archive::new(decoder);
    let mut walked = walk(&mut archive, extractor, cancelled);
    let mut decoder = archive.into_inner();
    if walked.is_ok() {
        walked = io::copy(&mut decoder, &mut io::sink()).map(drop).map_err(|e| corrupt("archive does not decode", e));
    }
    if matches!(walked, Ok(()) | Err(SnapshotError::Corrupt(_))) {
        let _ = drain(decoder.finish(), |_| {});
    }
    walked
}

fn walk<R: Read>(
    archive: &mut tar::Archive<R>,
    extractor: &mut Extractor,
    cancelled: &Cancelled,
) -> Result<(), SnapshotError> {
    for entry in archive.entries().map_err(|e| corrupt("reading the archive", e))? {
        cancelled.check()?;
        let mut entry = entry.map_err(|e| corrupt("reading the archive", e))?;
        extractor.entry(&mut entry)?;
    }
    Ok(())
}
