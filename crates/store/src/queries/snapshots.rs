//! Snapshot rows: `pending` while being written, `verified` once read back; `commit_snapshot` marks one verified and
//! points its workspace at it in the same transaction, under the workspace's generation guard.

macro_rules! ops {
    () => {
        use evershell_core::Result;
        use evershell_core::audit::AuditEvent;
        use evershell_core::ids::{SnapshotId, WorkspaceId};
        use evershell_core::model::{SnapshotRecord, SnapshotState, WorkspaceRecord};

        use $crate::errors::db;
        use $crate::rows::{SnapshotRow, text};
        use $crate::tx::{TxResult, run};

        macro_rules! snap_select {
            () => {
                "SELECT id, org_id, workspace_id, pod_id, state, archive_key, manifest_key, sha256, size_bytes, \
                 file_count, created_at FROM snapshots "
            };
        }

        /// Insert `snap` as `state`; with `upsert`, an existing row with the same id takes the new values.
        async fn write(c: &mut Conn, snap: &SnapshotRecord, state: SnapshotState, upsert: bool) -> TxResult<()> {
            const INSERT: &str = "INSERT INTO snapshots (id, org_id, workspace_id, pod_id, state, archive_key, \
                 manifest_key, sha256, size_bytes, file_count, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
            const UPSERT: &str = "INSERT INTO snapshots (id, org_id, workspace_id, pod_id, state, archive_key, \
                 manifest_key, sha256, size_bytes, file_count, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (id) DO UPDATE SET pod_id = excluded.pod_id, state = excluded.state, \
                 archive_key = excluded.archive_key, manifest_key = excluded.manifest_key, \
                 sha256 = excluded.sha256, size_bytes = excluded.size_bytes, file_count = excluded.file_count";
            sqlx::query(if upsert { UPSERT } else { INSERT })
                .bind(snap.id.to_string())
                .bind(snap.org_id.to_string())
                .bind(snap.workspace_id.to_string())
                .bind(text(snap.pod_id.as_ref()))
                .bind(state.as_str())
                .bind(snap.archive_key.as_str())
                .bind(snap.manifest_key.as_str())
                .bind(snap.sha256.as_deref())
                .bind(snap.size_bytes)
                .bind(snap.file_count)
                .bind(snap.created_at.millis())
                .execute(c)
                .await?;
            Ok(())
        }

        pub async fn insert_snapshot(s: &S, snap: &SnapshotRecord) -> Result<()> {
            run("insert_snapshot", move || async move {
                let mut tx = s.begin().await?;
                write(&mut tx, snap, snap.state, false).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn get_snapshots(s: &S, ids: &[SnapshotId]) -> Result<Vec<SnapshotRecord>> {
            let mut out = Vec::with_capacity(ids.len());
            // Bounded statements (SQLite allows 32766 parameters); one per 500 ids.
            for chunk in ids.chunks(500) {
                let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                let sql = format!(concat!(snap_select!(), "WHERE id IN ({})"), marks.join(", "));
                let mut q = sqlx::query_as::<_, SnapshotRow>(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    q = q.bind(id.to_string());
                }
                let rows = q.fetch_all(&s.read).await.map_err(db)?;
                for r in rows {
                    out.push(SnapshotRecord::try_from(r)?);
                }
            }
            Ok(out)
        }

        pub async fn get_snapshot(s: &S, id: SnapshotId) -> Result<Option<SnapshotRecord>> {
            let row: Option<SnapshotRow> = sqlx::query_as(concat!(snap_select!(), "WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(SnapshotRecord::try_from).transpose()
        }

        pub async fn list_snapshots(s: &S, ws: WorkspaceId) -> Result<Vec<SnapshotRecord>> {
            let rows: Vec<SnapshotRow> =
                sqlx::query_as(concat!(snap_select!(), "WHERE workspace_id = $1 ORDER BY created_at, id"))
                    .bind(ws.to_string())
                    .fetch_all(&s.read)
                    .await
                    .map_err(db)?;
            rows.into_iter().map(SnapshotRecord::try_from).collect()
        }

        pub async fn list_pending_snapshots(s: &S) -> Result<Vec<SnapshotRecord>> {
            let rows: Vec<SnapshotRow> =
                sqlx::query_as(concat!(snap_select!(), "WHERE state = 'pending' ORDER BY created_at, id"))
                    .fetch_all(&s.read)
                    .await
                    .map_err(db)?;
            rows.into_iter().map(SnapshotRecord::try_from).collect()
        }

        pub async fn list_superseded_snapshots(s: &S) -> Result<Vec<SnapshotRecord>> {
            let rows: Vec<SnapshotRow> = sqlx::query_as(concat!(
                snap_select!(),
                "WHERE state = 'verified' AND NOT EXISTS \
                 (SELECT 1 FROM workspaces w WHERE w.snapshot_id = snapshots.id) AND NOT EXISTS \
                 (SELECT 1 FROM checkpoints c WHERE c.snapshot_id = snapshots.id) AND NOT EXISTS \
                 (SELECT 1 FROM workspace_forks f WHERE f.source_snapshot_id = snapshots.id) ORDER BY created_at, id"
            ))
            .fetch_all(&s.read)
            .await
            .map_err(db)?;
            rows.into_iter().map(SnapshotRecord::try_from).collect()
        }

        pub async fn commit_snapshot(
            s: &S,
            snap: &SnapshotRecord,
            ws: &WorkspaceRecord,
            expected_generation: i64,
            fence: &$crate::api::Fence,
            audit: &[AuditEvent],
        ) -> Result<$crate::api::ObservationWrite> {
            run("commit_snapshot", move || async move {
                let mut tx = s.begin().await?;
                write(&mut tx, snap, SnapshotState::Verified, true).await?;
                let outcome = super::workspaces::observation_guarded(&mut tx, ws, expected_generation, fence).await?;
                if outcome != $crate::api::ObservationWrite::Written {
                    // Dropping the transaction rolls the snapshot row back too.
                    return Ok(outcome);
                }
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(outcome)
            })
            .await
        }

        pub async fn delete_snapshot(s: &S, id: SnapshotId, audit: &[AuditEvent]) -> Result<()> {
            run("delete_snapshot", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query("DELETE FROM snapshots WHERE id = $1").bind(id.to_string()).execute(&mut *tx).await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }
    };
}
pub(crate) use ops;
