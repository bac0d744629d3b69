//! The reconciler: the only code that touches pods.
//!
//! Design note. API calls write only *intent* (`desired` and a lifecycle request: the transitional status asked for
//! and its reason) and wake the reconciler. The reconciler alone writes *observation* (observed status and reason,
//! `last_error`, pod, snapshot): it first takes on a pending request (records it as adopted, moving the observed
//! status to the request's), then compares intent with what the runtime observes of the pod (`PodObservation`), asks
//! the pure `lifecycle::plan` for the next `Step`, performs it, records the outcome, and plans again until the plan
//! is `Nothing`. Each workspace is handled by at most one worker at a time — in this process by `States`, across
//! replicas by a lease row (`claim_workspace`) renewed while the work lasts. Every observation write presents the
//! lease's fence (owner + epoch) and the store refuses it once another holder took the lease; a refused renewal or
//! a fenced write stops the pass at once (`work`). It runs on a timer and on every wake-up, and start-up recovery is
//! the same code: after a crash every workspace is simply planned again from what is found on disk and in the store
//! (see `recovery.rs`), so every step is idempotent. A pass that leaves a workspace `idle` with nothing to do also
//! checks its role's idle timeout (`idle.rs`), which may write a stop request the same pass then takes on.

mod idle;
mod recovery;
mod state;
mod steps;
#[cfg(test)]
mod tests;

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

pub use idle::Clock;
use state::{Lease, States};

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
    /// Where the idle timeout reads the time (the system clock outside tests).
    pub clock: Clock,
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
            clock: Clock::system(),
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
    /// Per-workspace state: worker, lease and fence, attempts and backoff, the last row written.
    pub(crate) states: States,
    /// Role and provider names for audit rows, briefly reused.
    pub(crate) names: Mutex<HashMap<evershell_core::ids::RoleId, (std::time::Instant, RoleNames)>>,
    /// Idle checks begun on an idle workspace (tests wait on it).
    pub(crate) idle_checks: std::sync::atomic::AtomicU64,
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
                states: States::default(),
                names: Mutex::new(HashMap::new()),
                idle_checks: Default::default(),
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
    if !inner.states.begin(id) {
        return;
    }
    let inner2 = inner.clone();
    inner.tasks.spawn(
        async move {
            let _permit = inner2.permits.acquire().await;
            loop {
                work(&inner2, id).await;
                if !inner2.states.end_pass(id, !inner2.cancel.is_cancelled()) {
                    break;
                }
            }
        }
        .instrument(info_span!("reconcile", workspace_id = %id)),
    );
}

/// Claim the workspace, reconcile it under its lease, release it. Retries of failed steps are scheduled with
/// backoff. Losing the lease (a renewal refused, or an observation write fenced off) ends the pass at once: whatever
/// step was in flight is dropped (every step is safe to interrupt, as after a crash) and nothing more is written.
async fn work(inner: &Arc<Inner>, id: WorkspaceId) {
    let store = &inner.store;
    let now = Timestamp::now();
    let until = now.plus_millis(inner.cfg.lease.as_millis() as i64);
    let fence = match store.claim_workspace(id, &inner.owner, now, until).await {
        Ok(Some(fence)) => fence,
        Ok(None) => return, // another replica holds it
        Err(e) => {
            warn!(error = ?e, "claiming the workspace failed");
            retry_later(inner, id, Duration::from_secs(1));
            return;
        }
    };
    let lost = CancellationToken::new();
    inner.states.set_lease(id, Lease { fence: fence.clone(), lost: lost.clone() });
    let renew = tokio::spawn(renew_lease(inner.clone(), id, fence.clone(), until, lost.clone()));
    let outcome = tokio::select! {
        biased;
        _ = lost.cancelled() => None,
        outcome = steps::reconcile(inner, id) => Some(outcome),
    };
    renew.abort();
    let outcome = if lost.is_cancelled() { None } else { outcome };
    match outcome {
        None => {
            warn!(epoch = fence.epoch, "lost the workspace's lease; this pass stops here");
            metrics::counter!("evershell_reconcile_leases_lost_total").increment(1);
        }
        Some(outcome) => {
            if let Err(e) = store.release_workspace(id, &fence).await {
                warn!(error = ?e, "releasing the workspace lease failed");
            }
            if let Some(delay) = outcome {
                retry_later(inner, id, delay);
            }
        }
    }
}

/// Renew the lease every third of its length while the pass runs. A refusal (someone else holds it now) fires
/// `lost` at once; a renewal that errors is retried until the lease would have run out, then `lost` fires too.
async fn renew_lease(
    inner: Arc<Inner>,
    id: WorkspaceId,
    fence: evershell_store::Fence,
    mut until: Timestamp,
    lost: CancellationToken,
) {
    let every = (inner.cfg.lease / 3).max(Duration::from_millis(1));
    let mut pause = every;
    loop {
        tokio::time::sleep(pause).await;
        let now = Timestamp::now();
        let next = now.plus_millis(inner.cfg.lease.as_millis() as i64);
        match inner.store.renew_workspace_lease(id, &fence, next).await {
            Ok(true) => {
                until = next;
                pause = every;
            }
            Ok(false) => {
                lost.cancel();
                return;
            }
            Err(e) => {
                if Timestamp::now().millis() >= until.millis() {
                    warn!(error = ?e, "the lease could not be renewed before it ran out");
                    lost.cancel();
                    return;
                }
                warn!(error = ?e, "renewing the workspace lease failed; trying again");
                pause = (every / 4).max(Duration::from_millis(1));
            }
        }
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
