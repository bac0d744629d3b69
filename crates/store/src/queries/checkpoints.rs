//! Checkpoints (a workspace's state right after its N-th completed task, as a verified snapshot) and fork origins:
//! `commit_checkpoint` marks the pending capture verified and records it in one transaction; pruning deletes
//! checkpoint rows and hands back the snapshots no checkpoint, fork or workspace still needs; a fork is created with
//! its origin in the same transaction that re-checks the checkpoint it restores still exists.

macro_rules! ops {
    () => {
        use evershell_core::audit::AuditEvent;
        use evershell_core::ids::{SnapshotId, WorkspaceId};
        use evershell_core::model::{CheckpointRecord, ForkOrigin, SnapshotRecord, WorkspaceRecord};
        use evershell_core::{Error, ErrorCode, Result};

        use $crate::api::WorkspaceQuota;
        use $crate::errors::db;
        use $crate::rows::{CheckpointRow, ForkRow, SnapshotRow, text};
        use $crate::tx::run;

        const CP_SELECT: &str =
            "SELECT workspace_id, task_count, task_id, snapshot_id, error, created_at FROM checkpoints ";

        /// Record checkpoint `cp`. With `snap` (a row inserted `pending` before the capture), the snapshot becomes
        /// `verified` with the manifest's figures in the same transaction. `false` (nothing written) when the pending
        /// row is gone (a stop discarded it as an interrupted capture) or a checkpoint at that count exists.
        pub async fn commit_checkpoint(
            s: &S,
            cp: &CheckpointRecord,
            snap: Option<&SnapshotRecord>,
            audit: &[AuditEvent],
        ) -> Result<bool> {
            run("commit_checkpoint", move || async move {
                let mut tx = s.begin().await?;
                if let Some(snap) = snap {
                    let done = sqlx::query(
                        "UPDATE snapshots SET state = 'verified', sha256 = $2, size_bytes = $3, file_count = $4 \
                         WHERE id = $1 AND state = 'pending'",
                    )
                    .bind(snap.id.to_string())
                    .bind(snap.sha256.as_deref())
                    .bind(snap.size_bytes)
                    .bind(snap.file_count)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Ok(false);
                    }
                }
                let done = sqlx::query(
                    "INSERT INTO checkpoints (workspace_id, task_count, task_id, snapshot_id, error, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workspace_id, task_count) DO NOTHING",
                )
                .bind(cp.workspace_id.to_string())
                .bind(cp.task_count)
                .bind(text(cp.task_id.as_ref()))
                .bind(text(cp.snapshot_id.as_ref()))
                .bind(cp.error.as_deref())
                .bind(cp.created_at.millis())
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(true)
            })
            .await
        }

        /// A workspace's checkpoints, lowest count first.
        pub async fn list_checkpoints(s: &S, ws: WorkspaceId) -> Result<Vec<CheckpointRecord>> {
            let sql = format!("{CP_SELECT}WHERE workspace_id = $1 ORDER BY task_count");
            let rows: Vec<CheckpointRow> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(ws.to_string()).fetch_all(&s.read).await.map_err(db)?;
            rows.into_iter().map(CheckpointRecord::try_from).collect()
        }

        pub async fn get_checkpoint(s: &S, ws: WorkspaceId, task_count: i64) -> Result<Option<CheckpointRecord>> {
            let sql = format!("{CP_SELECT}WHERE workspace_id = $1 AND task_count = $2");
            let row: Option<CheckpointRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(ws.to_string())
                .bind(task_count)
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(CheckpointRecord::try_from).transpose()
        }

        /// How many of the workspace's tasks ended `completed`.
        pub async fn completed_task_count(s: &S, ws: WorkspaceId) -> Result<i64> {
            let (n,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM tasks WHERE workspace_id = $1 AND status = 'completed'")
                    .bind(ws.to_string())
                    .fetch_one(&s.read)
                    .await
                    .map_err(db)?;
            Ok(n)
        }

        /// Delete the workspace's checkpoint rows with `0 < task_count < below` (every one with `below = None`).
        /// Returns the snapshots those rows held that nothing needs any more (no checkpoint, fork origin or
        /// workspace points at them): the caller deletes their objects, then their rows (`delete_snapshot`). A crash
        /// in between leaves verified snapshots nothing points at, which the start-up collection of replaced
        /// snapshots deletes.
        pub async fn prune_checkpoints(
            s: &S,
            ws: WorkspaceId,
            below: Option<i64>,
            audit: &[AuditEvent],
        ) -> Result<Vec<SnapshotRecord>> {
            run("prune_checkpoints", move || async move {
                let mut tx = s.begin().await?;
                let below = below.unwrap_or(i64::MAX);
                let ids: Vec<(Option<String>,)> = sqlx::query_as(
                    "DELETE FROM checkpoints WHERE workspace_id = $1 AND task_count < $2 RETURNING snapshot_id",
                )
                .bind(ws.to_string())
                .bind(below)
                .fetch_all(&mut *tx)
                .await?;
                let mut free = Vec::new();
                for id in ids.into_iter().filter_map(|(id,)| id) {
                    let row: Option<SnapshotRow> = sqlx::query_as(concat!(
                        "SELECT id, org_id, workspace_id, pod_id, state, archive_key, manifest_key, sha256, \
                         size_bytes, file_count, created_at FROM snapshots s WHERE id = $1 \
                         AND NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.snapshot_id = s.id) \
                         AND NOT EXISTS (SELECT 1 FROM workspace_forks f WHERE f.source_snapshot_id = s.id) \
                         AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.snapshot_id = s.id)",
                        for_update!()
                    ))
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(r) = row {
                        free.push(SnapshotRecord::try_from(r)?);
                    }
                }
                if !audit.is_empty() {
                    super::audit::insert(&mut tx, audit).await?;
                }
                tx.commit().await?;
                Ok(free)
            })
            .await
        }

        /// Snapshots of `ws` kept for forking: held by a checkpoint, or the source of a fork (its own or a child's).
        /// A stop's deletion of replaced snapshots leaves them alone.
        pub async fn fork_kept_snapshots(s: &S, ws: WorkspaceId) -> Result<Vec<SnapshotId>> {
            let rows: Vec<(String,)> = sqlx::query_as(
                "SELECT id FROM snapshots s WHERE workspace_id = $1 AND (\
                 EXISTS (SELECT 1 FROM checkpoints c WHERE c.snapshot_id = s.id) OR \
                 EXISTS (SELECT 1 FROM workspace_forks f WHERE f.source_snapshot_id = s.id))",
            )
            .bind(ws.to_string())
            .fetch_all(&s.read)
            .await
            .map_err(db)?;
            rows.into_iter()
                .map(|(id,)| {
                    id.parse().map_err(|e| Error::internal(anyhow::anyhow!("corrupt snapshot id `{id}`: {e}")))
                })
                .collect()
        }

        pub async fn get_fork_origins(s: &S, ids: &[WorkspaceId]) -> Result<Vec<(WorkspaceId, ForkOrigin)>> {
            let mut out = Vec::new();
            for chunk in ids.chunks(500) {
                let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "SELECT workspace_id, parent_workspace_id, source_snapshot_id, fork_point_task_count \
                     FROM workspace_forks WHERE workspace_id IN ({})",
                    marks.join(", ")
                );
                let mut q = sqlx::query_as::<_, ForkRow>(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    q = q.bind(id.to_string());
                }
                for r in q.fetch_all(&s.read).await.map_err(db)? {
                    out.push(r.parse()?);
                }
            }
            Ok(out)
        }

        /// Create the fork `ws` (as `create_workspace` does, quota included) with its origin. When the origin is a
        /// checkpoint of the parent (`checkpoint` = its count), the checkpoint must still hold that snapshot (it is
        /// share-locked, so a concurrent prune waits): else `snapshot_missing` and nothing is written.
        pub async fn create_fork(
            s: &S,
            ws: &WorkspaceRecord,
            origin: &ForkOrigin,
            checkpoint: Option<i64>,
            quota: &WorkspaceQuota,
            audit: &[AuditEvent],
        ) -> Result<()> {
            run("create_fork", move || async move {
                let mut tx = s.begin().await?;
                if let (Some(n), Some(snap)) = (checkpoint, origin.source_snapshot_id) {
                    let held: Option<(String,)> = sqlx::query_as(concat!(
                        "SELECT snapshot_id FROM checkpoints WHERE workspace_id = $1 AND task_count = $2 \
                         AND snapshot_id = $3",
                        for_share!()
                    ))
                    .bind(origin.parent_workspace_id.to_string())
                    .bind(n)
                    .bind(snap.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
                    if held.is_none() {
                        return Err(Error::conflict(
                            ErrorCode::SnapshotMissing,
                            format!("the checkpoint after {n} completed tasks was pruned meanwhile"),
                        )
                        .into());
                    }
                }
                super::workspaces::insert_workspace(&mut tx, ws, quota).await?;
                sqlx::query(
                    "INSERT INTO workspace_forks (workspace_id, parent_workspace_id, source_snapshot_id, \
                     fork_point_task_count) VALUES ($1, $2, $3, $4)",
                )
                .bind(ws.id.to_string())
                .bind(origin.parent_workspace_id.to_string())
                .bind(text(origin.source_snapshot_id.as_ref()))
                .bind(origin.fork_point_task_count)
                .execute(&mut *tx)
                .await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }
    };
}
pub(crate) use ops;
