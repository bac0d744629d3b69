//! Browsing a snapshot without unpacking it to disk: the archive is streamed, decompressed and its tar headers
//! walked in memory. Browsing is lenient on purpose — it needs no manifest and does not check the archive digest —
//! so a snapshot that fails to restore can still be inspected and its files rescued; decode errors still surface as
//! `Corrupt`.

use std::io::{self, BufReader, Read};
use std::sync::Arc;

use bytes::Bytes;
use evershell_core::files::{FileEntry, RelPath};
use object_store::ObjectStore;
use tokio::sync::{mpsc, oneshot};

use crate::bridge::{
    CHANNEL_DEPTH, CancelOnDrop, Cancelled, SourceHealth, SourceReader, classify, open_object, receiver_stream,
    run_cancellable,
};
use crate::error::{SnapshotError, corrupt};
use crate::keys::SnapshotKeys;
use crate::sparse::{FileBody, file_body};
use crate::tarmeta::{entry_path, file_entry, is_regular};
use crate::types::{ByteStream, FileRead, Listing};

/// Bytes per chunk of a download stream.
const DOWNLOAD_CHUNK: usize = 256 * 1024;

type TarStream = tar::Archive<zstd::stream::read::Decoder<'static, BufReader<SourceReader>>>;

fn open_tar(source: SourceReader) -> Result<TarStream, SnapshotError> {
    let decoder = zstd::stream::read::Decoder::new(source)
        .map_err(|e| SnapshotError::Io(anyhow::Error::new(e).context("setting up zstd")))?;
    Ok(tar::Archive::new(decoder))
}

pub(crate) async fn list_files(
    store: &Arc<dyn ObjectStore>,
    keys: &SnapshotKeys,
    max_entries: usize,
) -> Result<Listing, SnapshotError> {
    let source = open_object(store, &keys.archive, "archive").await?;
    run_cancellable(move |cancelled| {
        let health = source.health();
        let mut archive = open_tar(source)?;
        list(&mut archive, cancelled, max_entries).map_err(|e| classify(e, &health))
    })
    .await
}

/// Walk the headers until `max_entries` are listed; one more listable entry means `truncated` (and reading stops
/// there, so a huge archive costs no more than its first entries).
fn list(archive: &mut TarStream, cancelled: &Cancelled, max_entries: usize) -> Result<Listing, SnapshotError> {
    let mut out = Vec::new();
    for entry in archive.entries().map_err(|e| corrupt("reading the archive", e))? {
        cancelled.check()?;
        let mut entry = entry.map_err(|e| corrupt("reading the archive", e))?;
        match file_entry(&mut entry) {
            Ok(Some(_)) if out.len() == max_entries => return Ok(Listing { entries: out, truncated: true }),
            Ok(Some(found)) => out.push(found),
            Ok(None) => {}
            Err(SnapshotError::Unsafe(why)) => tracing::warn!(%why, "unsafe entry left out of a snapshot listing"),
            Err(e) => return Err(e),
        }
    }
    Ok(Listing { entries: out, truncated: false })
}

/// Run `f` on the first regular-file entry at `rel`; `FileNotFound` if there is none or it is not a regular file.
fn with_file<T>(
    archive: &mut TarStream,
    rel: &str,
    cancelled: &Cancelled,
    f: impl FnOnce(FileEntry, &mut FileBody<'_, tar::Entry<'_, BufReaderDecoder>>) -> Result<T, SnapshotError>,
) -> Result<T, SnapshotError> {
    let not_found = || SnapshotError::FileNotFound(rel.to_string());
    for entry in archive.entries().map_err(|e| corrupt("reading the archive", e))? {
        cancelled.check()?;
        let mut entry = entry.map_err(|e| corrupt("reading the archive", e))?;
        if !matches!(entry_path(&entry), Ok(Some(path)) if path == rel) {
            continue;
        }
        if !is_regular(entry.header().entry_type()) {
            return Err(not_found());
        }
        let found = file_entry(&mut entry)?.ok_or_else(not_found)?;
        return f(found, &mut file_body(&mut entry, rel)?);
    }
    Err(not_found())
}

type BufReaderDecoder = zstd::stream::read::Decoder<'static, BufReader<SourceReader>>;

pub(crate) async fn read_file(
    store: &Arc<dyn ObjectStore>,
    keys: &SnapshotKeys,
    path: &RelPath,
    max_bytes: u64,
) -> Result<FileRead, SnapshotError> {
    let source = open_object(store, &keys.archive, "archive").await?;
    let rel = path.as_str().to_string();
    run_cancellable(move |cancelled| {
        let health = source.health();
        let mut archive = open_tar(source)?;
        with_file(&mut archive, &rel, cancelled, |entry, body| {
            let size = entry.size.max(0) as u64;
            let want = size.min(max_bytes);
            let mut bytes = Vec::with_capacity(usize::try_from(want.min(1 << 20)).unwrap_or(0));
            body.take(max_bytes)
                .read_to_end(&mut bytes)
                .map_err(|e| corrupt(&format!("reading `{rel}` from the archive"), e))?;
            if (bytes.len() as u64) < want {
                return Err(SnapshotError::Corrupt(format!("`{rel}` is cut short in the archive")));
            }
            Ok(FileRead { entry, bytes, truncated: size > max_bytes })
        })
        .map_err(|e| classify(e, &health))
    })
    .await
}

pub(crate) async fn download(
    store: &Arc<dyn ObjectStore>,
    keys: &SnapshotKeys,
    path: &RelPath,
) -> Result<(FileEntry, ByteStream), SnapshotError> {
    let source = open_object(store, &keys.archive, "archive").await?;
    let rel = path.as_str().to_string();
    let (head_tx, head_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    // Searching stops if this future is dropped before the file is found; streaming stops when the stream is dropped.
    let searching = CancelOnDrop::new();
    let cancelled = searching.token();
    tokio::task::spawn_blocking(move || {
        let health = source.health();
        let mut head = Some(head_tx);
        let outcome = open_tar(source).and_then(|mut archive| {
            with_file(&mut archive, &rel, &cancelled, |entry, body| {
                let size = entry.size.max(0) as u64;
                if let Some(head) = head.take() {
                    let _ = head.send(Ok(entry));
                }
                stream_body(body, size, &rel, &health, &tx);
                Ok(())
            })
        });
        if let (Err(e), Some(head)) = (outcome, head) {
            let _ = head.send(Err(classify(e, &health)));
        }
    });
    let entry = head_rx.await.map_err(|_| SnapshotError::Io(anyhow::anyhow!("snapshot download task failed")))??;
    drop(searching);
    Ok((entry, receiver_stream(rx)))
}

/// Send `size` bytes of `body` in chunks; a read failure or a short body ends the stream with an error.
fn stream_body(
    body: &mut impl Read,
    size: u64,
    rel: &str,
    health: &SourceHealth,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) {
    let mut sent = 0u64;
    loop {
        let mut buf = vec![0u8; DOWNLOAD_CHUNK];
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let err = classify(corrupt(&format!("reading `{rel}` from the archive"), e), health);
                let _ = tx.blocking_send(Err(io::Error::other(err.to_string())));
                return;
            }
        };
        buf.truncate(n);
        sent += n as u64;
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return; // the receiver went away
        }
    }
    if sent != size {
        let msg = format!("snapshot is corrupt: `{rel}` is cut short in the archive ({sent} of {size} bytes)");
        let _ = tx.blocking_send(Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg)));
    }
}
