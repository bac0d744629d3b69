//! Browsing a snapshot without unpacking it to disk.
//!
//! A snapshot whose manifest names an entry index (format 3, `index`) is browsed through it: a listing reads only
//! the index; reading a file looks it up there, then range-reads from the archive only the zstd frame holding it
//! (`frames`), skips to the entry's offset and checks that the entry found there is the one the index names. The
//! index is verified against the manifest (size, entry count, sha256) and every record checked; a bad one is
//! `Corrupt`, never believed.
//!
//! Any other snapshot (older formats, or a manifest missing or unreadable) is browsed by scanning: the archive is
//! streamed, decompressed and its tar headers walked in memory. Scanning is lenient on purpose — it needs no
//! manifest and does not check the archive digest — so a snapshot that fails to restore can still be inspected and
//! its files rescued; decode errors still surface as `Corrupt`.

use std::io::{self, BufReader, Read};
use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use evershell_core::files::{FileEntry, RelPath};
use object_store::ObjectStore;
use tokio::sync::{mpsc, oneshot};

use crate::bridge::{
    CHANNEL_DEPTH, CancelOnDrop, Cancelled, SourceHealth, SourceReader, classify, open_object, open_range,
    receiver_stream, run_cancellable,
};
use crate::error::{SnapshotError, corrupt};
use crate::index::{IndexEntry, IndexRef, Kind, check_size, read_index};
use crate::keys::SnapshotKeys;
use crate::manifest::Manifest;
use crate::sparse::{FileBody, file_body};
use crate::tarmeta::{entry_path, file_entry, is_regular};
use crate::types::{ByteStream, FileRead, Listing};
use crate::verify::read_manifest;

/// Bytes per chunk of a download stream.
const DOWNLOAD_CHUNK: usize = 256 * 1024;

type TarStream = tar::Archive<zstd::stream::read::Decoder<'static, BufReader<SourceReader>>>;

fn open_tar(source: SourceReader) -> Result<TarStream, SnapshotError> {
    let decoder = zstd::stream::read::Decoder::new(source)
        .map_err(|e| SnapshotError::Io(anyhow::Error::new(e).context("setting up zstd")))?;
    Ok(tar::Archive::new(decoder))
}

/// A tar reader `skip` decompressed bytes into `source` (a range starting at a frame).
fn open_tar_at(source: SourceReader, skip: u64) -> Result<TarStream, SnapshotError> {
    let mut decoder = zstd::stream::read::Decoder::new(source)
        .map_err(|e| SnapshotError::Io(anyhow::Error::new(e).context("setting up zstd")))?;
    let skipped = io::copy(&mut (&mut decoder).take(skip), &mut io::sink())
        .map_err(|e| corrupt("decompressing the frame holding the file", e))?;
    if skipped != skip {
        return Err(SnapshotError::Corrupt("the snapshot's file index points past the end of a frame".into()));
    }
    Ok(tar::Archive::new(decoder))
}

/// The manifest and its index, when it names one. `None` (browse by scanning) for a snapshot without one, or whose
/// manifest is missing or unreadable: browsing stays lenient. A store failure is an error.
async fn indexed(
    store: &Arc<dyn ObjectStore>,
    keys: &SnapshotKeys,
) -> Result<Option<(Manifest, IndexRef)>, SnapshotError> {
    match read_manifest(store, &keys.manifest).await {
        Ok(manifest) => Ok(manifest.index.clone().map(|index| (manifest, index))),
        Err(SnapshotError::Io(e)) => Err(SnapshotError::Io(e)),
        Err(why) => {
            tracing::debug!(%why, "browsing a snapshot by scanning its archive");
            Ok(None)
        }
    }
}

/// Read the whole index (verified), handing each entry to `visit`.
async fn scan_index(
    store: &Arc<dyn ObjectStore>,
    keys: &SnapshotKeys,
    manifest: &Manifest,
    iref: IndexRef,
    mut visit: impl FnMut(IndexEntry) -> ControlFlow<()> + Send + 'static,
) -> Result<(), SnapshotError> {
    let source = match open_object(store, &keys.index, "entry index").await {
        Err(SnapshotError::Missing(what)) => {
            return Err(SnapshotError::Corrupt(format!("the manifest names a file index but {what}")));
        }
        other => other?,
    };
    check_size(&iref, source.size())?;
    let archive_bytes = manifest.archive_bytes;
    run_cancellable(move |cancelled| {
        let health = source.health();
        let mut done = false;
        read_index(source, &iref, archive_bytes, |entry| {
            cancelled.check()?;
            if !done {
                done = visit(entry).is_break();
            }
            Ok(())
        })
        .map_err(|e| classify(e, &health))
    })
    .await
}

/// The `FileEntry` of an index record, as a scan of the archive would report it.
fn listed(e: &IndexEntry) -> FileEntry {
    let mime = match e.kind {
        Kind::Dir => Some("inode/directory".to_string()),
        Kind::Symlink => Some("inode/symlink".to_string()),
        Kind::File => mime_guess::from_path(std::path::Path::new(&e.path)).first().map(|m| m.essence_str().to_string()),
    };
    FileEntry {
        path: e.path.clone(),
        size: i64::try_from(e.size).unwrap_or(i64::MAX),
        is_dir: e.kind == Kind::Dir,
        mtime: e.mtime as f64 + f64::from(e.nanos / 1_000_000) / 1000.0,
        readonly: e.mode & 0o200 == 0,
        mime_type: mime,
    }
}

/// Where to read one file: the whole archive (scan for it), or the frame range holding it and the tar offset of
/// the entry within that range.
enum Located {
    Scan,
    At { range: std::ops::Range<u64>, skip: u64, archive_bytes: u64 },
}

/// Find `rel` in the index, if there is one. `FileNotFound` when the index has no regular file at `rel`.
async fn locate(store: &Arc<dyn ObjectStore>, keys: &SnapshotKeys, rel: &str) -> Result<Located, SnapshotError> {
    let Some((manifest, iref)) = indexed(store, keys).await? else { return Ok(Located::Scan) };
    let found = Arc::new(std::sync::Mutex::new((None::<IndexEntry>, None::<u64>)));
    let (sink, want) = (Arc::clone(&found), rel.to_string());
    scan_index(store, keys, &manifest, iref, move |entry| {
        let mut state = sink.lock().unwrap_or_else(|p| p.into_inner());
        match &state.0 {
            // The frame holding the file ends where the next frame starts.
            Some(hit) if entry.frame.compressed != hit.frame.compressed => {
                state.1 = Some(entry.frame.compressed);
                return ControlFlow::Break(());
            }
            Some(_) => {}
            None if entry.path == want => state.0 = Some(entry),
            None => {}
        }
        ControlFlow::Continue(())
    })
    .await?;
    let (hit, end) = std::mem::take(&mut *found.lock().unwrap_or_else(|p| p.into_inner()));
    let hit = hit.filter(|e| e.kind == Kind::File).ok_or_else(|| SnapshotError::FileNotFound(rel.to_string()))?;
    let range = hit.frame.compressed..end.unwrap_or(manifest.archive_bytes);
    Ok(Located::At { range, skip: hit.offset - hit.frame.tar, archive_bytes: manifest.archive_bytes })
}

/// The archive reader for `located`, and the offset to skip to (`None`: scan from the start).
async fn open_located(
    store: &Arc<dyn ObjectStore>,
    keys: &SnapshotKeys,
    located: Located,
) -> Result<(SourceReader, Option<u64>), SnapshotError> {
    match located {
        Located::Scan => Ok((open_object(store, &keys.archive, "archive").await?, None)),
        Located::At { range, skip, archive_bytes } => {
            let source = open_range(store, &keys.archive, range, "archive").await?;
            if source.size() != archive_bytes {
                return Err(SnapshotError::Corrupt(format!(
                    "archive is {} bytes but the manifest says {archive_bytes}",
                    source.size()
                )));
            }
            Ok((source, Some(skip)))
        }
    }
}

fn open_for(source: SourceReader, skip: Option<u64>) -> Result<TarStream, SnapshotError> {
    match skip {
        None => open_tar(source),
        Some(skip) => open_tar_at(source, skip),
    }
}

pub(crate) async fn list_files(
    store: &Arc<dyn ObjectStore>,
    keys: &SnapshotKeys,
    max_entries: usize,
) -> Result<Listing, SnapshotError> {
    if let Some((manifest, iref)) = indexed(store, keys).await? {
        let listing = Arc::new(std::sync::Mutex::new(Listing { entries: Vec::new(), truncated: false }));
        let sink = Arc::clone(&listing);
        scan_index(store, keys, &manifest, iref, move |entry| {
            let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
            if l.entries.len() == max_entries {
                l.truncated = true;
                return ControlFlow::Break(());
            }
            l.entries.push(listed(&entry));
            ControlFlow::Continue(())
        })
        .await?;
        return Ok(std::mem::replace(
            &mut *listing.lock().unwrap_or_else(|p| p.into_inner()),
            Listing { entries: Vec::new(), truncated: false },
        ));
    }
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
/// With `at_index` (the archive was opened at the offset the index names), the first entry must be that file:
/// anything else is `Corrupt`.
fn with_file<T>(
    archive: &mut TarStream,
    rel: &str,
    at_index: bool,
    cancelled: &Cancelled,
    f: impl FnOnce(FileEntry, &mut FileBody<'_, tar::Entry<'_, BufReaderDecoder>>) -> Result<T, SnapshotError>,
) -> Result<T, SnapshotError> {
    let not_found = || SnapshotError::FileNotFound(rel.to_string());
    for entry in archive.entries().map_err(|e| corrupt("reading the archive", e))? {
        cancelled.check()?;
        let mut entry = entry.map_err(|e| corrupt("reading the archive", e))?;
        let here = matches!(entry_path(&entry), Ok(Some(path)) if path == rel);
        if at_index && !(here && is_regular(entry.header().entry_type())) {
            return Err(SnapshotError::Corrupt(format!(
                "the snapshot's file index does not match the archive: `{rel}` is not where it says"
            )));
        }
        if !here {
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
    let rel = path.as_str().to_string();
    let located = locate(store, keys, &rel).await?;
    let (source, skip) = open_located(store, keys, located).await?;
    run_cancellable(move |cancelled| {
        let health = source.health();
        let mut archive = open_for(source, skip).map_err(|e| classify(e, &health))?;
        with_file(&mut archive, &rel, skip.is_some(), cancelled, |entry, body| {
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
    let rel = path.as_str().to_string();
    let located = locate(store, keys, &rel).await?;
    let (source, skip) = open_located(store, keys, located).await?;
    let (head_tx, head_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    // Searching stops if this future is dropped before the file is found; streaming stops when the stream is dropped.
    let searching = CancelOnDrop::new();
    let cancelled = searching.token();
    tokio::task::spawn_blocking(move || {
        let health = source.health();
        let mut head = Some(head_tx);
        let outcome = open_for(source, skip).and_then(|mut archive| {
            with_file(&mut archive, &rel, skip.is_some(), &cancelled, |entry, body| {
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
