//! Start-up recovery and garbage collection: after a crash, drop stale leases (single server), discard snapshots
//! whose writer died, delete snapshots a newer one replaced, remove half-written snapshot uploads, remove pods no workspace owns, and queue every workspace
//! that needs attention so the ordinary planning drives it to a settled state.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use evershell_core::Timestamp;
use evershell_core::audit::{AuditEvent, EventType};
use evershell_snapshot::SnapshotKeys;
use tracing::{info, warn};

use super::{Inner, dispatch};

/// Pending snapshots older than this are abandoned even when other replicas may run.
const PENDING_GRACE_MS: i64 = 3600 * 1000;

pub(super) async fn recover(inner: &Arc<Inner>) -> anyhow::Result<()> {
    let store = &inner.store;
    if inner.cfg.single_server {
        store.clear_leases().await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    // Alone on this store, every staging file is a crash's leftover; otherwise leave a margin for uploads in flight.
    let margin = if inner.cfg.single_server { Duration::ZERO } else { Duration::from_millis(PENDING_GRACE_MS as u64) };
    match inner.snapshots.sweep_incomplete(margin).await {
        Ok(0) => {}
        Ok(n) => info!(count = n, "removed half-written snapshot uploads"),
        Err(e) => warn!(error = %format!("{e:#}"), "sweeping half-written snapshot uploads failed"),
    }
    let now = Timestamp::now();
    for s in store.list_pending_snapshots().await.map_err(|e| anyhow::anyhow!("{e:?}"))? {
        if inner.cfg.single_server || s.created_at.millis() < now.millis() - PENDING_GRACE_MS {
            let keys = SnapshotKeys::from_strings(&s.archive_key, &s.manifest_key);
            inner.snapshots.delete(&keys).await.map_err(|e| anyhow::anyhow!(e))?;
            store.delete_snapshot(s.id, &[]).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
            info!(snapshot_id = %s.id, workspace_id = %s.workspace_id, "discarded a snapshot whose writer died");
        }
    }
    // Snapshots a newer one replaced, whose deletion a crash interrupted (a stop deletes them once it has answered).
    for s in store.list_superseded_snapshots().await.map_err(|e| anyhow::anyhow!("{e:?}"))? {
        let keys = SnapshotKeys::from_strings(&s.archive_key, &s.manifest_key);
        if let Err(e) = inner.snapshots.delete(&keys).await {
            warn!(snapshot_id = %s.id, error = %e, "deleting a replaced snapshot failed; the next stop retries");
            continue;
        }
        let audit = AuditEvent::system(s.org_id, EventType::SnapshotDeleted)
            .workspace(s.workspace_id)
            .target("workspace", s.workspace_id)
            .details(serde_json::json!({ "snapshot_id": s.id, "reason": "replaced by a newer snapshot" }));
        store.delete_snapshot(s.id, &[audit]).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        info!(snapshot_id = %s.id, workspace_id = %s.workspace_id, "deleted a snapshot a newer one replaced");
    }
    collect_orphan_pods(inner).await?;
    let ids = store.workspaces_to_reconcile().await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut recovered = Vec::new();
    for id in &ids {
        if let Ok(Some(ws)) = store.get_workspace_by_id(*id).await
            && !ws.status().is_settled()
        {
            recovered.push(
                AuditEvent::system(ws.org_id, EventType::WorkspaceRecovered)
                    .workspace(ws.id)
                    .target("workspace", ws.id)
                    .reason("control_plane_restart")
                    .details(serde_json::json!({ "status": ws.status(), "pod_id": ws.observed.pod_id })),
            );
        }
    }
    if !recovered.is_empty() {
        info!(count = recovered.len(), "taking over work interrupted by a control-plane restart");
        store.append_audit(&recovered).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    for id in ids {
        dispatch(inner, id);
    }
    Ok(())
}

/// Remove every pod that exists in the runtime but that no workspace owns. Pods are listed before the owned ids are
/// read, and a pod id is recorded before its files are made, so a pod being created is never mistaken for an orphan.
pub(super) async fn collect_orphan_pods(inner: &Arc<Inner>) -> anyhow::Result<()> {
    let pods = inner.runtime.list_pods().await?;
    if pods.is_empty() {
        return Ok(());
    }
    let owned: HashSet<_> =
        inner.store.owned_pod_ids().await.map_err(|e| anyhow::anyhow!("{e:?}"))?.into_iter().collect();
    for pod in pods.into_iter().filter(|p| !owned.contains(p)) {
        warn!(pod_id = %pod, "removing a pod no workspace owns");
        inner.runtime.remove(pod).await?;
        metrics::counter!("evershell_orphan_pods_removed_total").increment(1);
    }
    Ok(())
}
