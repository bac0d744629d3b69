//! The batched audit writer: rows go into a bounded channel and one writer task hands them to the `Directory` every
//! `flush_every` or every `batch` rows, whichever comes first, so no request waits on the store for its audit row.
//! `close` drains what is queued and writes it before returning (a clean shutdown loses nothing).

use std::sync::Arc;
use std::time::Duration;

use evershell_core::audit::AuditEvent;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::directory::Directory;

/// Tunables of the writer.
#[derive(Debug, Clone, Copy)]
pub struct AuditSinkConfig {
    /// Rows queued at most; beyond it `push` waits (the caller is off the request path).
    pub capacity: usize,
    /// Rows written per batch at most.
    pub batch: usize,
    /// A partial batch is written after this.
    pub flush_every: Duration,
}

impl Default for AuditSinkConfig {
    fn default() -> Self {
        Self { capacity: 8192, batch: 256, flush_every: Duration::from_millis(100) }
    }
}

/// The sending side; cheap to share.
pub struct AuditSink {
    tx: Mutex<Option<mpsc::Sender<AuditEvent>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    queued: std::sync::atomic::AtomicU64,
}

impl AuditSink {
    /// Start the writer task over `dir`.
    pub fn start<D: Directory>(dir: Arc<D>, cfg: AuditSinkConfig) -> Self {
        let (tx, rx) = mpsc::channel(cfg.capacity.max(1));
        let writer = tokio::spawn(write_loop(dir, rx, cfg));
        Self { tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), queued: Default::default() }
    }

    /// Queue a row. After `close` the row is written by nobody: it is logged and dropped.
    pub async fn push(&self, row: AuditEvent) {
        let tx = self.tx.lock().await.clone();
        match tx {
            Some(tx) => {
                if tx.send(row).await.is_err() {
                    tracing::warn!("audit writer gone; an egress audit row was dropped");
                } else {
                    self.queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            None => tracing::warn!("egress audit row after shutdown dropped"),
        }
    }

    /// Rows queued so far (written or not).
    pub fn queued(&self) -> u64 {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stop taking rows, write every queued one, and wait for the writer.
    pub async fn close(&self) {
        self.tx.lock().await.take();
        if let Some(w) = self.writer.lock().await.take() {
            let _ = w.await;
        }
    }
}

async fn write_loop<D: Directory>(dir: Arc<D>, mut rx: mpsc::Receiver<AuditEvent>, cfg: AuditSinkConfig) {
    let mut batch: Vec<AuditEvent> = Vec::with_capacity(cfg.batch);
    loop {
        let first = match rx.recv().await {
            Some(r) => r,
            None => return,
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + cfg.flush_every;
        let mut closed = false;
        while batch.len() < cfg.batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        flush(dir.as_ref(), &mut batch).await;
        if closed {
            return;
        }
    }
}

async fn flush<D: Directory>(dir: &D, batch: &mut Vec<AuditEvent>) {
    let rows = std::mem::take(batch);
    let n = rows.len();
    // A store hiccup is retried a few times; the rows are not worth holding the writer forever.
    let mut pause = Duration::from_millis(50);
    for attempt in 0..4 {
        match dir.write_audit(rows.clone()).await {
            Ok(()) => return,
            Err(e) if attempt < 3 => {
                tracing::warn!(rows = n, error = ?e, "writing egress audit rows failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => tracing::error!(rows = n, error = ?e, "egress audit rows lost"),
        }
    }
}
