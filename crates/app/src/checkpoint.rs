//! Checkpoints: after each completed task a workspace keeps a verified snapshot of its `/workspace` as it was right
//! then, captured from the running pod with its processes frozen (`PodRuntime::capture_running`), so it can be
//! forked at that point later. Owned here: taking them, recording a failed one (it never fails the task: it is
//! logged, audited and refuses a fork at that count), retention (the last `keep` per workspace), and the
//! per-workspace lock a stop takes so it never races a capture in flight.
//!
//! When: the dispatcher calls [`Checkpointer::ensure`] right after a task ends `completed` and again before it
//! delivers the next task, so the next task never starts before the checkpoint of the state it would change is
//! written — also after a control-plane crash between the two. A workspace that stops before its checkpoint was
//! taken gets it at the next delivery after its resume: no task has run since, so the restored files are still the
//! state right after that many tasks.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use evershell_core::audit::{AuditEvent, EventType};
use evershell_core::ids::{SnapshotId, TaskId, WorkspaceId};
use evershell_core::model::{CheckpointRecord, SnapshotRecord, SnapshotState, WorkspaceRecord};
use evershell_core::{Result, Timestamp};
use evershell_runtime::PodRuntime;
use evershell_snapshot::{SnapshotKeys, SnapshotStore};
use evershell_store::Store;
use tracing::{info, warn};

/// Checkpoint tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Checkpoints kept per workspace (the newest; older ones are deleted). `0` takes none at all.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { keep: 10 }
    }
}

/// Per-workspace locks shared by checkpoint captures and the reconciler's stop steps (ids are unique, so one map
/// serves every server in the process).
static LOCKS: LazyLock<Mutex<HashMap<WorkspaceId, Arc<tokio::sync::Mutex<()>>>>> = LazyLock::new(Default::default);

/// Held while a checkpoint is captured or a stop stops the sandbox / saves and removes the pod.
pub struct CheckpointHold {
    id: WorkspaceId,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for CheckpointHold {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.id).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.id);
        }
    }
}

/// Wait for, and take, the workspace's checkpoint lock.
pub async fn hold(id: WorkspaceId) -> CheckpointHold {
    let m = LOCKS.lock().unwrap_or_else(|p| p.into_inner()).entry(id).or_default().clone();
    CheckpointHold { id, guard: Some(m.lock_owned().await) }
}

/// Takes and prunes checkpoints.
#[derive(Clone)]
pub struct Checkpointer {
    store: Arc<dyn Store>,
    runtime: Arc<dyn PodRuntime>,
    snapshots: SnapshotStore,
    cfg: CheckpointConfig,
    /// The completed-task count each workspace was last seen checkpointed at (saves the store a read per
    /// delivery).
    seen: Arc<Mutex<HashMap<WorkspaceId, i64>>>,
}

impl Checkpointer {
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<dyn PodRuntime>,
        snapshots: SnapshotStore,
        cfg: CheckpointConfig,
    ) -> Self {
        Self { store, runtime, snapshots, cfg, seen: Default::default() }
    }

    /// Make sure `ws` has a checkpoint (or a recorded failure) for its current completed-task count, taking it now
    /// if not. `task` is the task that just completed, when the caller knows it. Does nothing while the workspace
    /// does not run (it is taken after the resume, before the next task).
    pub async fn ensure(&self, ws: &WorkspaceRecord, task: Option<TaskId>) -> Result<()> {
        if self.cfg.keep == 0 {
            return Ok(());
        }
        let n = self.store.completed_task_count(ws.id).await?;
        if n == 0 || self.seen.lock().unwrap().get(&ws.id) == Some(&n) {
            return Ok(());
        }
        let _hold = hold(ws.id).await;
        if self.store.get_checkpoint(ws.id, n).await?.is_none() && !self.take(ws.id, n, task).await? {
            return Ok(());
        }
        self.seen.lock().unwrap().insert(ws.id, n);
        Ok(())
    }

    /// Capture checkpoint `n` (the lock is held). `false` when the workspace no longer runs (nothing recorded).
    async fn take(&self, id: WorkspaceId, n: i64, task: Option<TaskId>) -> Result<bool> {
        let Some(ws) = self.store.get_workspace_by_id(id).await? else { return Ok(false) };
        let Some(pod) = ws.observed.pod_id.filter(|_| ws.status().is_running()) else { return Ok(false) };
        let snap_id = SnapshotId::new();
        let keys = SnapshotKeys::new(ws.org_id, ws.id, snap_id);
        let mut rec = SnapshotRecord {
            id: snap_id,
            org_id: ws.org_id,
            workspace_id: ws.id,
            pod_id: Some(pod),
            state: SnapshotState::Pending,
            archive_key: keys.archive.to_string(),
            manifest_key: keys.manifest.to_string(),
            sha256: None,
            size_bytes: None,
            file_count: None,
            created_at: Timestamp::now(),
        };
        self.store.insert_snapshot(&rec).await?;
        let began = std::time::Instant::now();
        let mut cp = CheckpointRecord {
            workspace_id: ws.id,
            task_count: n,
            task_id: task,
            snapshot_id: None,
            error: None,
            created_at: Timestamp::now(),
        };
        match self.runtime.capture_running(pod, &keys, (ws.org_id, ws.id, snap_id)).await {
            Ok(m) => {
                rec.state = SnapshotState::Verified;
                rec.sha256 = Some(m.archive_sha256.clone());
                rec.size_bytes = Some(m.archive_bytes as i64);
                rec.file_count = Some(m.file_count as i64);
                cp.snapshot_id = Some(snap_id);
                let audit = system(&ws, EventType::SnapshotSaved).reason("checkpoint").details(serde_json::json!({
                    "snapshot_id": snap_id, "checkpoint_task_count": n, "task_id": task,
                    "sha256": m.archive_sha256, "size_bytes": m.archive_bytes, "file_count": m.file_count,
                }));
                if !self.store.commit_checkpoint(&cp, Some(&rec), &[audit]).await? {
                    // A stop discarded the pending row meanwhile, or another server took this checkpoint first.
                    self.discard(&rec, &[]).await;
                    return Ok(false);
                }
                let took_ms = began.elapsed().as_secs_f64() * 1e3;
                info!(workspace_id = %ws.id, checkpoint = n, snapshot_id = %snap_id, took_ms, "checkpoint saved");
                metrics::histogram!("evershell_checkpoint_seconds").record(began.elapsed().as_secs_f64());
                self.prune(&ws, n).await;
                Ok(true)
            }
            Err(e) => {
                self.discard(&rec, &[]).await;
                // A pod that stopped meanwhile is not a failed checkpoint: it is taken after the resume.
                let now = self.store.get_workspace_by_id(id).await?;
                if now.is_none_or(|w| !w.status().is_running() || w.observed.pod_id != Some(pod)) {
                    return Ok(false);
                }
                let msg = format!("the checkpoint after {n} completed tasks could not be saved: {e}");
                warn!(workspace_id = %ws.id, checkpoint = n, error = %msg, "checkpoint failed");
                metrics::counter!("evershell_checkpoint_failures_total").increment(1);
                cp.error = Some(msg.clone());
                let audit = system(&ws, EventType::SnapshotFailed)
                    .reason("checkpoint")
                    .details(serde_json::json!({ "checkpoint_task_count": n, "task_id": task, "error": msg }));
                self.store.commit_checkpoint(&cp, None, &[audit]).await?;
                Ok(true)
            }
        }
    }

    /// Keep the newest `keep` checkpoints of `ws` (the newest is `n`): delete older rows, then the snapshots nothing
    /// else needs (a fork still restoring from one keeps it). Best effort: what a failure or crash leaves is a
    /// verified snapshot nothing points at, which start-up collection deletes.
    async fn prune(&self, ws: &WorkspaceRecord, n: i64) {
        let below = n - self.cfg.keep as i64 + 1;
        if below <= 1 {
            return;
        }
        let free = match self.store.prune_checkpoints(ws.id, Some(below), &[]).await {
            Ok(free) => free,
            Err(e) => {
                warn!(workspace_id = %ws.id, error = ?e, "pruning old checkpoints failed");
                return;
            }
        };
        for s in free {
            let audit = system(ws, EventType::SnapshotDeleted)
                .reason("checkpoint_retention")
                .details(serde_json::json!({ "snapshot_id": s.id, "kept": self.cfg.keep }));
            self.discard(&s, &[audit]).await;
        }
    }

    /// Delete a snapshot's objects, then its row (best effort, logged).
    async fn discard(&self, s: &SnapshotRecord, audit: &[AuditEvent]) {
        let keys = SnapshotKeys::from_strings(&s.archive_key, &s.manifest_key);
        if let Err(e) = self.snapshots.delete(&keys).await {
            warn!(snapshot_id = %s.id, error = %e, "deleting a checkpoint's objects failed");
            return;
        }
        if let Err(e) = self.store.delete_snapshot(s.id, audit).await {
            warn!(snapshot_id = %s.id, error = ?e, "deleting a checkpoint's row failed");
        }
    }
}

fn system(ws: &WorkspaceRecord, t: EventType) -> AuditEvent {
    AuditEvent::system(ws.org_id, t).workspace(ws.id).target("workspace", ws.id)
}
