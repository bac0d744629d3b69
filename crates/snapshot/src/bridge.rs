//! Sync ↔ async byte plumbing. The tar/zstd work is blocking and runs in `spawn_blocking`; these adapters connect it
//! to the object store through bounded channels so memory stays bounded whatever the archive size:
//! - [`ChunkSender`]: a blocking `Write` that hands ~1 MiB chunks on through a channel;
//! - [`SourceReader`]: a blocking `Read` over an archive in the object store (a local file read directly, or a
//!   remote stream pumped through a channel), which remembers whether the *source* failed so a network error is not
//!   mistaken for a corrupt archive;
//! - [`ChunkReader`]: a blocking `Read` over chunks another thread hands over (restore's hashing stage);
//! - [`receiver_stream`]: the async end of a blocking producer, as a [`ByteStream`];
//! - [`run_cancellable`]: blocking work that stops at its next check once the awaiting future is dropped.

use std::io::{self, Read, Seek, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt};
use tokio::sync::mpsc;

use crate::error::SnapshotError;
use crate::types::ByteStream;

/// Size of the chunks handed across a channel.
pub(crate) const CHUNK: usize = 1 << 20;
/// Chunks in flight in one channel.
pub(crate) const CHANNEL_DEPTH: usize = 4;

/// Blocking `Write` end of the capture pipeline: buffers into [`CHUNK`]-sized `Bytes` and sends them.
pub(crate) struct ChunkSender {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
}

impl ChunkSender {
    pub(crate) fn new(tx: mpsc::Sender<Bytes>) -> Self {
        Self { tx, buf: BytesMut::with_capacity(CHUNK) }
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        self.tx.blocking_send(chunk).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Send what is still buffered.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Shared record of the first error the source itself returned.
#[derive(Clone, Default)]
pub(crate) struct SourceHealth(Arc<Mutex<Option<String>>>);

impl SourceHealth {
    fn record(&self, err: &io::Error) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| err.to_string());
    }

    /// The source's error, if reading the archive itself failed (as opposed to decoding it).
    pub(crate) fn failure(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

enum Inner {
    File(io::Take<std::fs::File>),
    Channel { rx: mpsc::Receiver<Result<Bytes, String>>, cur: Bytes },
}

/// Blocking `Read` over an archive object. Use it only inside `spawn_blocking`.
pub(crate) struct SourceReader {
    inner: Inner,
    health: SourceHealth,
    size: u64,
}

impl SourceReader {
    /// Object size as the store reported it when opened.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn health(&self) -> SourceHealth {
        self.health.clone()
    }
}

impl Read for SourceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let res = match &mut self.inner {
            Inner::File(f) => f.read(buf),
            Inner::Channel { rx, cur } => loop {
                if !cur.is_empty() {
                    let n = cur.len().min(buf.len());
                    buf[..n].copy_from_slice(&cur[..n]);
                    cur.advance(n);
                    break Ok(n);
                }
                match rx.blocking_recv() {
                    Some(Ok(b)) => *cur = b,
                    Some(Err(e)) => break Err(io::Error::other(e)),
                    None => break Ok(0),
                }
            },
        };
        if let Err(e) = &res {
            self.health.record(e);
        }
        res
    }
}

/// Blocking `Read` over `Bytes` chunks from another thread; EOF when the sender is gone.
pub(crate) struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl ChunkReader {
    pub(crate) fn new(rx: std::sync::mpsc::Receiver<Bytes>) -> Self {
        Self { rx, cur: Bytes::new() }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.cur = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = self.cur.len().min(buf.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

/// Open `path` for a blocking reader. `Missing` when the object is absent.
pub(crate) async fn open_object(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    what: &str,
) -> Result<SourceReader, SnapshotError> {
    open_with(store, path, what, GetOptions::default()).await
}

/// Open bytes `range` of `path` for a blocking reader (a range read: only those bytes are fetched);
/// [`SourceReader::size`] is still the whole object's size.
pub(crate) async fn open_range(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    range: Range<u64>,
    what: &str,
) -> Result<SourceReader, SnapshotError> {
    open_with(store, path, what, GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() }).await
}

async fn open_with(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    what: &str,
    opts: GetOptions,
) -> Result<SourceReader, SnapshotError> {
    let got = store.get_opts(path, opts).await.map_err(|e| store_error(e, path, what))?;
    let size = got.meta.size;
    let (start, len) = (got.range.start, got.range.end.saturating_sub(got.range.start));
    let inner = match got.payload {
        GetResultPayload::File(mut file, _) => {
            // A local file comes whole: the range is ours to seek to.
            file.seek(io::SeekFrom::Start(start))
                .map_err(|e| SnapshotError::Io(anyhow::Error::new(e).context(format!("seeking in {what} `{path}`"))))?;
            Inner::File(file.take(len))
        }
        GetResultPayload::Stream(mut stream) => {
            let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
            tokio::spawn(async move {
                while let Some(item) = stream.next().await {
                    let item = item.map_err(|e| e.to_string());
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        break;
                    }
                }
            });
            Inner::Channel { rx, cur: Bytes::new() }
        }
    };
    Ok(SourceReader { inner, health: SourceHealth::default(), size })
}

/// An object-store error as a `SnapshotError`: not found is `Missing`, the rest `Io`.
pub(crate) fn store_error(err: object_store::Error, path: &Path, what: &str) -> SnapshotError {
    match err {
        object_store::Error::NotFound { .. } => SnapshotError::Missing(format!("{what} `{path}` is not in the store")),
        other => SnapshotError::Io(anyhow::Error::new(other).context(format!("accessing {what} `{path}`"))),
    }
}

/// Delete `path`; an absent object is fine.
pub(crate) async fn delete_object(store: &Arc<dyn ObjectStore>, path: &Path) -> anyhow::Result<()> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("deleting `{path}`"))),
    }
}

/// A decode-looking error is really the store's when the source itself failed.
pub(crate) fn classify(err: SnapshotError, health: &SourceHealth) -> SnapshotError {
    match (err, health.failure()) {
        (SnapshotError::Corrupt(_), Some(source)) => {
            SnapshotError::Io(anyhow::anyhow!("reading the archive from the store failed: {source}"))
        }
        (err, _) => err,
    }
}

/// The async end of a blocking producer feeding `rx`.
pub(crate) fn receiver_stream(mut rx: mpsc::Receiver<io::Result<Bytes>>) -> ByteStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Run blocking work on the blocking pool; a panic becomes an `Io` error.
pub(crate) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, SnapshotError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SnapshotError::Io(anyhow::anyhow!("snapshot worker task failed: {e}")))?
}

/// Whether the async caller of some blocking work went away.
#[derive(Clone, Default)]
pub(crate) struct Cancelled(Arc<AtomicBool>);

impl Cancelled {
    /// `Io` once the caller has gone: blocking loops call this per entry.
    pub(crate) fn check(&self) -> Result<(), SnapshotError> {
        if self.0.load(Ordering::Relaxed) {
            return Err(SnapshotError::Io(anyhow::anyhow!("cancelled: the caller stopped waiting")));
        }
        Ok(())
    }
}

/// Sets the flag when dropped, i.e. when the future holding it completes or is dropped.
pub(crate) struct CancelOnDrop(Cancelled);

impl CancelOnDrop {
    pub(crate) fn new() -> Self {
        Self(Cancelled::default())
    }

    pub(crate) fn token(&self) -> Cancelled {
        self.0.clone()
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        (self.0).0.store(true, Ordering::Relaxed);
    }
}

/// Like [`run_blocking`], but `f` can see (through [`Cancelled::check`]) that the caller's future was dropped, so a
/// restore abandoned on a timeout stops writing instead of running to the end.
pub(crate) async fn run_cancellable<T: Send + 'static>(
    f: impl FnOnce(&Cancelled) -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, SnapshotError> {
    let guard = CancelOnDrop::new();
    let token = guard.token();
    let result = run_blocking(move || f(&token)).await;
    drop(guard);
    result
}
