//! Per-task egress capability tokens: granted (or renewed) only while the task is open, bound to the workspace's
//! pod, looked up by (workspace, pod) joined with the task's status (a task that ended has no identity even if its
//! token was never deleted), and deleted when the task ends.

macro_rules! ops {
    () => {
        use evershell_core::ids::{PodId, TaskId, WorkspaceId};
        use evershell_core::{Result, Timestamp};

        use $crate::api::TaskCapability;
        use $crate::errors::db;
        use $crate::tx::run;

        /// Statuses of tasks that have not ended (as in `tasks`).
        const OPEN: &str = "('submitted', 'delivered', 'running', 'compacting')";

        pub async fn set_task_capability(s: &S, cap: &TaskCapability, now: Timestamp) -> Result<bool> {
            run("set_task_capability", move || async move {
                let mut tx = s.begin().await?;
                // Tokens of the workspace's other tasks are stale (a crash between a task's end and its revoke).
                sqlx::query("DELETE FROM task_capabilities WHERE workspace_id = $1 AND task_id <> $2")
                    .bind(cap.workspace_id.to_string())
                    .bind(cap.task_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                let sql = format!(
                    "INSERT INTO task_capabilities (task_id, workspace_id, pod_id, capability, expires_at, updated_at) \
                     SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS \
                     (SELECT 1 FROM tasks WHERE id = $1 AND workspace_id = $2 AND status IN {OPEN}) \
                     ON CONFLICT (task_id) DO UPDATE SET pod_id = $3, capability = $4, expires_at = $5, updated_at = $6"
                );
                let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(cap.task_id.to_string())
                    .bind(cap.workspace_id.to_string())
                    .bind(cap.pod_id.to_string())
                    .bind(cap.capability.as_str())
                    .bind(cap.expires_at.millis())
                    .bind(now.millis())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                tx.commit().await?;
                Ok(done)
            })
            .await
        }

        pub async fn task_capability(s: &S, task: TaskId) -> Result<Option<TaskCapability>> {
            let row: Option<(String, String, String, i64)> = sqlx::query_as(
                "SELECT workspace_id, pod_id, capability, expires_at FROM task_capabilities WHERE task_id = $1",
            )
            .bind(task.to_string())
            .fetch_optional(&s.read)
            .await
            .map_err(db)?;
            let Some((ws, pod, capability, exp)) = row else { return Ok(None) };
            let (Ok(workspace_id), Ok(pod_id)) = (ws.parse::<WorkspaceId>(), pod.parse::<PodId>()) else {
                return Ok(None);
            };
            Ok(Some(TaskCapability {
                task_id: task,
                workspace_id,
                pod_id,
                capability,
                expires_at: Timestamp::from_millis(exp),
            }))
        }

        pub async fn revoke_task_capability(s: &S, task: TaskId) -> Result<()> {
            run("revoke_task_capability", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query("DELETE FROM task_capabilities WHERE task_id = $1")
                    .bind(task.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn task_capability_of_pod(
            s: &S,
            ws: WorkspaceId,
            pod: PodId,
        ) -> Result<Option<(TaskId, Timestamp)>> {
            let sql = format!(
                "SELECT c.task_id, c.expires_at FROM task_capabilities c JOIN tasks t ON t.id = c.task_id \
                 WHERE c.workspace_id = $1 AND c.pod_id = $2 AND t.status IN {OPEN} \
                 ORDER BY c.expires_at DESC LIMIT 1"
            );
            let row: Option<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(ws.to_string())
                .bind(pod.to_string())
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            Ok(row.and_then(|(t, exp)| t.parse::<TaskId>().ok().map(|t| (t, Timestamp::from_millis(exp)))))
        }
    };
}

pub(crate) use ops;
