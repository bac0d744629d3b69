//! The bounded password-hashing pool: every argon2 hash and verification runs on the blocking pool under a
//! semaphore sized to the cores, never on an async worker, so sign-ins queue among themselves while API-key and
//! session callers keep their latency. `evershell_password_hashes_total{op}` counts the work that reached argon2.

use std::sync::Arc;

use evershell_core::{Error, Result};
use tokio::sync::Semaphore;

use crate::secrets;

pub struct PasswordPool {
    permits: Arc<Semaphore>,
    size: usize,
    /// argon2 computations started by this pool (the metric is process-wide; this is per server).
    started: std::sync::atomic::AtomicU64,
}

impl PasswordPool {
    /// A pool running at most `size` argon2 computations at once; 0 means one per core.
    pub fn new(size: usize) -> Self {
        let size = match size {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        Self { permits: Arc::new(Semaphore::new(size)), size, started: Default::default() }
    }

    /// How many argon2 computations this pool has started.
    pub fn started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Check `password` against `hash`; with `None` (unknown user, no password set) a dummy hash is checked, so
    /// the answer costs the same either way.
    pub async fn verify(&self, hash: Option<String>, password: String) -> Result<bool> {
        self.run("verify", move || secrets::verify_password(hash.as_deref(), &password)).await
    }

    pub async fn hash(&self, password: String) -> Result<String> {
        self.run("hash", move || secrets::hash_password(&password)).await?
    }

    async fn run<T: Send + 'static>(&self, op: &'static str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let permit = self.permits.clone().acquire_owned().await.map_err(Error::internal)?;
        metrics::counter!("evershell_password_hashes_total", "op" => op).increment(1);
        self.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The permit moves into the blocking task: a caller that goes away does not free a slot still hashing.
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop(permit);
            out
        })
        .await
        .map_err(Error::internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_most_size_computations_run_at_once() {
        let pool = Arc::new(PasswordPool::new(2));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = vec![];
        for _ in 0..8 {
            let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                pool.run("test", move || {
                    let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn verifies_and_hashes_off_the_workers() {
        let pool = PasswordPool::new(0);
        assert!(pool.size() >= 1);
        let h = pool.hash("correct horse".into()).await.unwrap();
        assert!(pool.verify(Some(h.clone()), "correct horse".into()).await.unwrap());
        assert!(!pool.verify(Some(h), "wrong horse".into()).await.unwrap());
        assert!(!pool.verify(None, "correct horse".into()).await.unwrap());
    }
}
