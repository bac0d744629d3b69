//! Tasks: submission (queued behind the workspace's open tasks, under its row lock, refused when the workspace
//! cannot take work, a pending stop included), the narrow guarded status update every change goes through
//! (`WHERE id = ? AND status = ?`),
//! and what the dispatcher reads (a workspace's open tasks in queue order, the workspaces that have any).

macro_rules! ops {
    () => {
        use evershell_core::audit::AuditEvent;
        use evershell_core::ids::{OrgId, TaskId, WorkspaceId};
        use evershell_core::lifecycle::WorkspaceStatus;
        use evershell_core::model::TaskRecord;
        use evershell_core::task::TaskStatus;
        use evershell_core::{Error, ErrorCode, Result};

        use $crate::api::TaskUpdate;
        use $crate::errors::db;
        use $crate::rows::{TaskRow, millis, text, to_json};
        use $crate::tx::run;

        macro_rules! task_select {
            () => {
                "SELECT id, org_id, workspace_id, created_by_user_id, description, status, reason, options, \
                 queue_seq, result, created_at, delivered_at, started_at, completed_at FROM tasks "
            };
        }

        /// Statuses of tasks that have not ended, as an SQL list.
        const OPEN: &str = "('submitted', 'delivered', 'running', 'compacting')";
        const ACTIVE: &str = "('delivered', 'running', 'compacting')";

        pub async fn insert_task(s: &S, t: &TaskRecord, audit: &[AuditEvent]) -> Result<i64> {
            let options = to_json(&t.options)?;
            let options = options.as_str();
            run("insert_task", move || async move {
                let mut tx = s.begin().await?;
                // A stop the API (or the idle timeout) asked for counts as `stopping` before the reconciler takes
                // it on: the public status says so, and a task accepted now would only be interrupted.
                let ws: Option<(String, Option<i64>)> = sqlx::query_as(concat!(
                    "SELECT CASE WHEN request_seq > adopted_seq AND request_status = 'stopping' THEN 'stopping' \
                     ELSE status END, archived_at FROM workspaces WHERE org_id = $1 AND id = $2",
                    for_update!()
                ))
                .bind(t.org_id.to_string())
                .bind(t.workspace_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
                let Some((status, archived_at)) = ws else {
                    return Err(
                        Error::new(ErrorCode::WorkspaceNotFound, "no such workspace in this organisation").into()
                    );
                };
                if archived_at.is_some() {
                    return Err(Error::conflict(ErrorCode::WorkspaceArchived, "the workspace is archived").into());
                }
                match WorkspaceStatus::parse(&status) {
                    Some(WorkspaceStatus::Provisioning | WorkspaceStatus::Idle | WorkspaceStatus::Busy) => {}
                    Some(WorkspaceStatus::Failed) => {
                        return Err(Error::conflict(
                            ErrorCode::WorkspaceFailed,
                            "the workspace has failed; resume it before submitting tasks",
                        )
                        .into());
                    }
                    _ => {
                        return Err(Error::conflict(
                            ErrorCode::WorkspaceStopped,
                            "the workspace is stopped or stopping; resume it before submitting tasks",
                        )
                        .into());
                    }
                }
                let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(queue_seq) FROM tasks WHERE workspace_id = $1")
                    .bind(t.workspace_id.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
                let seq = seq.unwrap_or(0) + 1;
                sqlx::query(
                    "INSERT INTO tasks (id, org_id, workspace_id, created_by_user_id, description, status, reason, \
                     options, queue_seq, result, created_at, delivered_at, started_at, completed_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                )
                .bind(t.id.to_string())
                .bind(t.org_id.to_string())
                .bind(t.workspace_id.to_string())
                .bind(text(t.created_by_user_id.as_ref()))
                .bind(t.description.as_str())
                .bind(t.status.as_str())
                .bind(t.reason.map(|r| r.as_str()))
                .bind(options)
                .bind(seq)
                .bind(t.result.as_deref())
                .bind(t.created_at.millis())
                .bind(millis(t.delivered_at))
                .bind(millis(t.started_at))
                .bind(millis(t.completed_at))
                .execute(&mut *tx)
                .await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(seq)
            })
            .await
        }

        pub async fn get_task(s: &S, org: OrgId, ws: WorkspaceId, id: TaskId) -> Result<Option<TaskRecord>> {
            let row: Option<TaskRow> =
                sqlx::query_as(concat!(task_select!(), "WHERE org_id = $1 AND workspace_id = $2 AND id = $3"))
                    .bind(org.to_string())
                    .bind(ws.to_string())
                    .bind(id.to_string())
                    .fetch_optional(&s.read)
                    .await
                    .map_err(db)?;
            row.map(TaskRecord::try_from).transpose()
        }

        pub async fn list_tasks(s: &S, org: OrgId, ws: WorkspaceId) -> Result<Vec<TaskRecord>> {
            let rows: Vec<TaskRow> = sqlx::query_as(concat!(
                task_select!(),
                "WHERE org_id = $1 AND workspace_id = $2 ORDER BY queue_seq DESC"
            ))
            .bind(org.to_string())
            .bind(ws.to_string())
            .fetch_all(&s.read)
            .await
            .map_err(db)?;
            rows.into_iter().map(TaskRecord::try_from).collect()
        }

        pub async fn open_tasks(s: &S, ws: WorkspaceId) -> Result<Vec<TaskRecord>> {
            let sql =
                format!(concat!(task_select!(), "WHERE workspace_id = $1 AND status IN {} ORDER BY queue_seq"), OPEN);
            let rows: Vec<TaskRow> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(ws.to_string()).fetch_all(&s.read).await.map_err(db)?;
            rows.into_iter().map(TaskRecord::try_from).collect()
        }

        pub async fn workspaces_with_open_tasks(s: &S) -> Result<Vec<WorkspaceId>> {
            let sql = format!("SELECT DISTINCT workspace_id FROM tasks WHERE status IN {OPEN} ORDER BY workspace_id");
            let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&s.read).await.map_err(db)?;
            ids.iter()
                .map(|id| id.parse().map_err(|e| Error::internal(anyhow::anyhow!("corrupt workspace id `{id}`: {e}"))))
                .collect()
        }

        pub async fn busy_workspaces(s: &S, org: OrgId) -> Result<Vec<WorkspaceId>> {
            let sql = format!("SELECT DISTINCT workspace_id FROM tasks WHERE org_id = $1 AND status IN {ACTIVE}");
            let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(org.to_string())
                .fetch_all(&s.read)
                .await
                .map_err(db)?;
            ids.iter()
                .map(|id| id.parse().map_err(|e| Error::internal(anyhow::anyhow!("corrupt workspace id `{id}`: {e}"))))
                .collect()
        }

        pub async fn count_tasks(s: &S, ws: WorkspaceId, status: TaskStatus) -> Result<u64> {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE workspace_id = $1 AND status = $2")
                .bind(ws.to_string())
                .bind(status.as_str())
                .fetch_one(&s.read)
                .await
                .map_err(db)?;
            Ok(n.max(0) as u64)
        }

        pub async fn update_task(
            s: &S,
            id: TaskId,
            expected: TaskStatus,
            u: &TaskUpdate,
            audit: &[AuditEvent],
        ) -> Result<bool> {
            run("update_task", move || async move {
                let mut tx = s.begin().await?;
                let done = sqlx::query(
                    "UPDATE tasks SET status = $3, reason = $4, delivered_at = COALESCE(delivered_at, $5), \
                     started_at = COALESCE(started_at, $6), completed_at = COALESCE(completed_at, $7), \
                     result = COALESCE($8, result) WHERE id = $1 AND status = $2",
                )
                .bind(id.to_string())
                .bind(expected.as_str())
                .bind(u.status.as_str())
                .bind(u.reason.map(|r| r.as_str()))
                .bind(millis(u.delivered_at))
                .bind(millis(u.started_at))
                .bind(millis(u.completed_at))
                .bind(u.result.as_deref())
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
    };
}
pub(crate) use ops;
