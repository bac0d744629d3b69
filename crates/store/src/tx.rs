//! The one transaction helper. Every write runs through `run`: the closure opens its transaction, does its work and
//! commits; a transient conflict (`SQLITE_BUSY`, a PostgreSQL serialisation failure or deadlock) runs the whole
//! closure again after a short backoff, and the latency lands in `evershell_store_tx_seconds{op}`.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use evershell_core::{Error, Result};

use crate::errors::{StoreError, is_retryable};

/// Attempts per transaction, the first included.
const MAX_ATTEMPTS: u32 = 5;

pub(crate) type TxResult<T> = std::result::Result<T, StoreError>;

/// Run `attempt` (which begins, works and commits one transaction) until it succeeds, fails for good, or runs out
/// of retries. A dropped transaction rolls back, so an attempt that fails half-way leaves nothing behind.
pub(crate) async fn run<T, F, Fut>(op: &'static str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = TxResult<T>>,
{
    let started = Instant::now();
    let mut tries = 1;
    let out = loop {
        match attempt().await {
            Err(StoreError::Db(e)) if tries < MAX_ATTEMPTS && is_retryable(&e) => {
                tracing::debug!(op, tries, error = %e, "store transaction hit a transient conflict; retrying");
                tokio::time::sleep(backoff(tries)).await;
                tries += 1;
            }
            other => break other,
        }
    };
    metrics::histogram!("evershell_store_tx_seconds", "op" => op).record(started.elapsed().as_secs_f64());
    out.map_err(Error::from)
}

/// 10 ms, 20 ms, 40 ms, … plus up to 10 ms of jitter so two losers do not collide again in lockstep.
fn backoff(tries: u32) -> Duration {
    let jitter = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    Duration::from_millis(10 << tries.min(6)) + Duration::from_nanos(u64::from(jitter % 10_000_000))
}
