//! The reconciler: the only code that touches pods.
//!
//! Design note. API calls write *intent* (`status` moved to `provisioning` / `stopping`, `desired`) under the
//! generation guard and wake the reconciler; the reconciler compares intent with what the runtime *observes* of the
//! pod (`PodObservation`), asks the pure `lifecycle::plan` for the next `Step`, performs it, writes the observed
//! outcome under the same guard, and plans again until the plan is `Nothing`. Losing a guard race is normal: it
//! re-reads and re-plans. Each workspace is handled by at most one worker at a time — in this process by the
//! `running` set, across replicas by a lease row (`claim_workspace`) renewed while the work lasts. It runs on a timer
//! and on every wake-up, and start-up recovery is the same code: after a crash every workspace is simply planned
//! again from what is found on disk and in the store (see `recovery.rs`), so every step is idempotent.

mod recovery;
mod steps;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evershell_core::Timestamp;
use evershell_core::ids::WorkspaceId;
use evershell_runtime::PodRuntime;
use evershell_snapshot::SnapshotStore;
use evershell_store::Store;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

/// A role's name and its provider's name, as audit rows carry them.
pub(crate) type RoleNames = (String, Option<String>);

/// Tunables.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// How often every workspace with a pod is looked at (pod health, stuck work).
    pub interval: Duration,
    /// Workspaces handled at once.
    pub concurrency: usize,
    /// How long a claimed workspace stays ours without renewal.
    pub lease: Duration,
    /// How long a started sandbox may take for its agent to answer.
    pub pod_start_timeout: Duration,
    /// Attempts at a failing step before the workspace is marked `failed`.
    pub max_attempts: u32,
    /// No other control plane can share this store (SQLite): leases and pending snapshots found at start-up are
    /// stale by definition.
    pub single_server: bool,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            concurrency: 32,
            lease: Duration::from_secs(30),
            pod_start_timeout: Duration::from_secs(30),
            max_attempts: 6,
            single_server: true,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) runtime: Arc<dyn PodRuntime>,
    pub(crate) snapshots: SnapshotStore,
    pub(crate) cfg: ReconcilerConfig,
    /// This instance's lease-owner name.
    pub(crate) owner: String,
    queue: mpsc::UnboundedSender<WorkspaceId>,
    queue_rx: Mutex<Option<mpsc::UnboundedReceiver<WorkspaceId>>>,
    changes: broadcast::Sender<WorkspaceId>,
    /// Workspaces being worked on; `true` when woken again meanwhile (work once more after).
    running: Mutex<HashMap<WorkspaceId, bool>>,
    /// Consecutive failures per workspace.
    pub(crate) attempts: Mutex<HashMap<WorkspaceId, u32>>,
    /// The row a step just wrote, so the next plan need not read it back.
    pub(crate) written: Mutex<HashMap<WorkspaceId, evershell_core::model::WorkspaceRecord>>,
    /// Role and provider names for audit rows, briefly reused.
    pub(crate) names: Mutex<HashMap<evershell_core::ids::RoleId, (std::time::Instant, RoleNames)>>,
    permits: Semaphore,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// A handle to the reconciler.
#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

impl Reconciler {
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<dyn PodRuntime>,
        snapshots: SnapshotStore,
        cfg: ReconcilerConfig,
    ) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let (changes, _) = broadcast::channel(1024);
        let owner = format!("cp-{}", evershell_core::ids::PodId::new().ulid());
        Self {
            inner: Arc::new(Inner {
                store,
                runtime,
                snapshots,
                permits: Semaphore::new(cfg.concurrency.max(1)),
                cfg,
                owner,
                queue,
                queue_rx: Mutex::new(Some(rx)),
                changes,
                running: Mutex::new(HashMap::new()),
                attempts: Mutex::new(HashMap::new()),
                written: Mutex::new(HashMap::new()),
                names: Mutex::new(HashMap::new()),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Ask for `id` to be reconciled soon.
    pub fn wake(&self, id: WorkspaceId) {
        let _ = self.inner.queue.send(id);
    }

    /// A feed of workspace ids whose row the reconciler just wrote (for `?wait=true`).
    pub fn subscribe(&self) -> broadcast::Receiver<WorkspaceId> {
        self.inner.changes.subscribe()
    }

    /// Recover from whatever a previous run left behind, then run until `shutdown`.
    pub async fn start(&self) -> anyhow::Result<()> {
        let rx = self.inner.queue_rx.lock().unwrap().take();
        let Some(mut rx) = rx else { anyhow::bail!("the reconciler is already running") };
        recovery::recover(&self.inner).await?;
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(inner.cfg.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = inner.cancel.cancelled() => break,
                    Some(id) = rx.recv() => dispatch(&inner, id),
                    _ = tick.tick() => {
                        match inner.store.workspaces_to_reconcile().await {
                            Ok(ids) => ids.into_iter().for_each(|id| dispatch(&inner, id)),
                            Err(e) => warn!(error = ?e, "listing workspaces to reconcile failed"),
                        }
                        if let Err(e) = recovery::collect_orphan_pods(&inner).await {
                            warn!(error = ?e, "orphan pod collection failed");
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Stop taking work and wait for the steps in progress to finish.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.runtime.shutdown().await;
    }
}

fn dispatch(inner: &Arc<Inner>, id: WorkspaceId) {
    {
        let mut running = inner.running.lock().unwrap();
        if let Some(dirty) = running.get_mut(&id) {
            *dirty = true;
            return;
        }
        running.insert(id, false);
    }
    let inner2 = inner.clone();
    inner.tasks.spawn(
        async move {
            let _permit = inner2.permits.acquire().await;
            loop {
                work(&inner2, id).await;
                let mut running = inner2.running.lock().unwrap();
                match running.get_mut(&id) {
                    Some(dirty) if *dirty && !inner2.cancel.is_cancelled() => *dirty = false,
                    _ => {
                        running.remove(&id);
                        break;
                    }
                }
            }
        }
        .instrument(info_span!("reconcile", workspace_id = %id)),
    );
}

/// Claim the workspace, reconcile it, release it. Retries of failed steps are scheduled with backoff.
async fn work(inner: &Arc<Inner>, id: WorkspaceId) {
    let store = &inner.store;
    let now = Timestamp::now();
    let until = now.plus_millis(inner.cfg.lease.as_millis() as i64);
    match store.claim_workspace(id, &inner.owner, now, until).await {
        Ok(true) => {}
        Ok(false) => return, // another replica holds it
        Err(e) => {
            warn!(error = ?e, "claiming the workspace failed");
            retry_later(inner, id, Duration::from_secs(1));
            return;
        }
    }
    let renew = {
        let inner = inner.clone();
        let every = inner.cfg.lease / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let now = Timestamp::now();
                let until = now.plus_millis(inner.cfg.lease.as_millis() as i64);
                let _ = inner.store.claim_workspace(id, &inner.owner, now, until).await;
            }
        })
    };
    let outcome = steps::reconcile(inner, id).await;
    renew.abort();
    if let Err(e) = store.release_workspace(id, &inner.owner).await {
        warn!(error = ?e, "releasing the workspace lease failed");
    }
    if let Some(delay) = outcome {
        retry_later(inner, id, delay);
    }
}

fn retry_later(inner: &Arc<Inner>, id: WorkspaceId, delay: Duration) {
    let inner = inner.clone();
    inner.tasks.clone().spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(delay) => { let _ = inner.queue.send(id); }
            _ = inner.cancel.cancelled() => {}
        }
    });
}

impl Inner {
    /// Tell `?wait=true` callers that `id` changed.
    pub(crate) fn notify(&self, id: WorkspaceId) {
        let _ = self.changes.send(id);
    }
}
