//! Workspaces: creation under share-locked, live parents; the two narrow writes — the API's intent (under the intent
//! generation) and the reconciler's observation (under the observation generation and the lease fence) — that never
//! touch each other's columns; what the reconciler scans; and its per-workspace lease with its fencing epoch.

macro_rules! ops {
    () => {
        use evershell_core::audit::{AuditEvent, EventType};
        use evershell_core::ids::{OrgId, PodId, WorkspaceId};
        use evershell_core::model::WorkspaceRecord;
        use evershell_core::{Error, ErrorCode, Result, Timestamp};

        use $crate::api::{Fence, ObservationWrite, WorkspaceFilter, WorkspaceQuota};
        use $crate::errors::db;
        use $crate::rows::{WorkspaceRow, millis, text, to_json};
        use $crate::tx::{TxResult, run};

        /// The public status in SQL, as `lifecycle::public_status` derives it (without tasks): a pending request's
        /// status, else the observed one.
        macro_rules! public_status_sql {
            () => {
                "(CASE WHEN request_seq > adopted_seq THEN request_status ELSE status END)"
            };
        }

        macro_rules! ws_select {
            () => {
                "SELECT id, org_id, role_id, environment, created_by_user_id, status, status_reason, last_error, \
                 desired, generation, pod_id, pod_pack_ids, snapshot_id, last_snapshot_error, adopted_seq, \
                 intent_generation, request_seq, request_status, request_reason, created_at, updated_at, \
                 archived_at FROM workspaces "
            };
        }

        fn pod_pack_ids(ws: &WorkspaceRecord) -> Result<Option<String>> {
            ws.observed.pod_pack_ids.as_ref().map(to_json).transpose()
        }

        /// Refuse the new workspace when it would exceed a limit of `quota`. Takes the org row's lock first, so
        /// concurrent creates in the org count one after another.
        async fn check_quota(c: &mut Conn, ws: &WorkspaceRecord, quota: &WorkspaceQuota) -> TxResult<()> {
            if *quota == WorkspaceQuota::default() {
                return Ok(());
            }
            sqlx::query(concat!("SELECT id FROM orgs WHERE id = $1", for_update!()))
                .bind(ws.org_id.to_string())
                .execute(&mut *c)
                .await?;
            let checks = [
                (quota.per_org, "workspaces_per_org", "", String::new()),
                (quota.per_role, "workspaces_per_agent_role", " AND role_id = $2", ws.role_id.to_string()),
                (
                    quota.per_user.filter(|_| ws.created_by_user_id.is_some()),
                    "workspaces_per_user",
                    " AND created_by_user_id = $2",
                    ws.created_by_user_id.map(|u| u.to_string()).unwrap_or_default(),
                ),
            ];
            for (limit, name, and, arg) in checks {
                let Some(limit) = limit else { continue };
                let sql = format!("SELECT COUNT(*) FROM workspaces WHERE org_id = $1 AND archived_at IS NULL{and}");
                let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).bind(ws.org_id.to_string());
                if !and.is_empty() {
                    q = q.bind(arg);
                }
                let n = q.fetch_one(&mut *c).await?.max(0) as u64;
                if n >= limit {
                    return Err(Error::new(
                        ErrorCode::QuotaExceeded,
                        format!("the {name} quota ({limit}) is reached; archive workspaces or raise the limit"),
                    )
                    .with_details(serde_json::json!({ "quota": name, "limit": limit, "current": n }))
                    .into());
                }
            }
            Ok(())
        }

        pub async fn create_workspace(
            s: &S,
            ws: &WorkspaceRecord,
            quota: &WorkspaceQuota,
            audit: &[AuditEvent],
        ) -> Result<()> {
            run("create_workspace", move || async move {
                let mut tx = s.begin().await?;
                insert_workspace(&mut tx, ws, quota).await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        /// Insert `ws` under its share-locked, live role and provider, within `quota`.
        pub(crate) async fn insert_workspace(
            tx: &mut Conn,
            ws: &WorkspaceRecord,
            quota: &WorkspaceQuota,
        ) -> TxResult<()> {
            let packs = pod_pack_ids(ws)?;
            let packs = packs.as_deref();
            {
                let mut tx = tx;
                let (role, provider) = super::roles::lock_with_provider(&mut tx, ws.org_id, ws.role_id, false).await?;
                if role.archived_at.is_some() {
                    return Err(Error::new(ErrorCode::RoleArchived, "the agent role is archived").into());
                }
                if provider.archived_at.is_some() {
                    return Err(super::roles::provider_archived().into());
                }
                check_quota(&mut tx, ws, quota).await?;
                sqlx::query(
                    "INSERT INTO workspaces (id, org_id, role_id, environment, created_by_user_id, status, \
                     status_reason, last_error, desired, generation, pod_id, pod_pack_ids, snapshot_id, \
                     last_snapshot_error, created_at, updated_at, archived_at, adopted_seq, intent_generation, \
                     request_seq, request_status, request_reason) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
                     $20, $21, $22)",
                )
                .bind(ws.id.to_string())
                .bind(ws.org_id.to_string())
                .bind(ws.role_id.to_string())
                .bind(ws.environment.as_deref())
                .bind(text(ws.created_by_user_id.as_ref()))
                .bind(ws.observed.status.as_str())
                .bind(ws.observed.status_reason.map(|r| r.as_str()))
                .bind(ws.observed.last_error.as_deref())
                .bind(ws.intent.desired.as_str())
                .bind(ws.observed.generation)
                .bind(text(ws.observed.pod_id.as_ref()))
                .bind(packs)
                .bind(text(ws.observed.snapshot_id.as_ref()))
                .bind(ws.observed.last_snapshot_error.as_deref())
                .bind(ws.created_at.millis())
                .bind(ws.updated_at.millis())
                .bind(millis(ws.archived_at))
                .bind(ws.observed.adopted)
                .bind(ws.intent.generation)
                .bind(ws.intent.request.map_or(0, |r| r.seq))
                .bind(ws.intent.request.map(|r| r.status.as_str()))
                .bind(ws.intent.request.map(|r| r.reason.as_str()))
                .execute(&mut *tx)
                .await?;
                Ok(())
            }
        }

        pub async fn get_workspace(s: &S, org: OrgId, id: WorkspaceId) -> Result<Option<WorkspaceRecord>> {
            let row: Option<WorkspaceRow> = sqlx::query_as(concat!(ws_select!(), "WHERE org_id = $1 AND id = $2"))
                .bind(org.to_string())
                .bind(id.to_string())
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(WorkspaceRecord::try_from).transpose()
        }

        pub async fn get_workspace_by_id(s: &S, id: WorkspaceId) -> Result<Option<WorkspaceRecord>> {
            let row: Option<WorkspaceRow> = sqlx::query_as(concat!(ws_select!(), "WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(WorkspaceRecord::try_from).transpose()
        }

        pub async fn list_workspaces(s: &S, org: OrgId, f: &WorkspaceFilter) -> Result<Vec<WorkspaceRecord>> {
            let rows: Vec<WorkspaceRow> = sqlx::query_as(concat!(
                ws_select!(),
                "WHERE org_id = $1 AND ($2 IS NULL OR role_id = $2) AND ($3 IS NULL OR ",
                public_status_sql!(),
                " = $3) ",
                "AND ($4 = 1 OR archived_at IS NULL) AND ($5 IS NULL OR created_by_user_id = $5) ",
                "AND ($6 IS NULL OR id < $6) ORDER BY id DESC LIMIT $7"
            ))
            .bind(org.to_string())
            .bind(text(f.role_id.as_ref()))
            .bind(f.status.map(|st| st.as_str()))
            .bind(i64::from(f.include_archived))
            .bind(text(f.created_by.as_ref()))
            .bind(text(f.before.as_ref()))
            .bind(f.limit.map_or(i64::MAX, i64::from))
            .fetch_all(&s.read)
            .await
            .map_err(db)?;
            rows.into_iter().map(WorkspaceRecord::try_from).collect()
        }

        /// The intent columns of `ws` inside `c`, guarded by the intent generation and by the observation generation
        /// the caller decided from; `false` when either moved.
        async fn intent_guarded(c: &mut Conn, ws: &WorkspaceRecord, expected_intent: i64, expected_observed: i64) -> TxResult<bool> {
            let done = sqlx::query(
                "UPDATE workspaces SET environment = $4, desired = $5, request_seq = $6, request_status = $7, \
                 request_reason = $8, archived_at = $9, updated_at = $10, intent_generation = $2 + 1 \
                 WHERE id = $1 AND intent_generation = $2 AND generation = $3",
            )
            .bind(ws.id.to_string())
            .bind(expected_intent)
            .bind(expected_observed)
            .bind(ws.environment.as_deref())
            .bind(ws.intent.desired.as_str())
            .bind(ws.intent.request.map_or(0, |r| r.seq))
            .bind(ws.intent.request.map(|r| r.status.as_str()))
            .bind(ws.intent.request.map(|r| r.reason.as_str()))
            .bind(millis(ws.archived_at))
            .bind(ws.updated_at.millis())
            .execute(&mut *c)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        /// The API's narrow write: the intent columns only, guarded by the intent generation and by the observation
        /// generation the call decided from.
        pub async fn update_intent(
            s: &S,
            ws: &WorkspaceRecord,
            expected_intent: i64,
            expected_observed: i64,
            quota: &WorkspaceQuota,
            audit: &[AuditEvent],
        ) -> Result<bool> {
            run("update_intent", move || async move {
                let mut tx = s.begin().await?;
                check_quota(&mut tx, ws, quota).await?;
                if !intent_guarded(&mut tx, ws, expected_intent, expected_observed).await? {
                    return Ok(false);
                }
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(true)
            })
            .await
        }

        /// The latest of: a task of `ws` submitted, a task of `ws` ended, an audit row about `ws` of one of `events`.
        /// The audit row is found from the newest backwards (the `(workspace_id, timestamp)` index), so the cost is
        /// the rows written since the last activity, not the workspace's whole history.
        async fn last_activity_in<'e, E: sqlx::Executor<'e, Database = Db>>(
            e: E,
            ws: WorkspaceId,
            events: &[EventType],
        ) -> TxResult<Option<i64>> {
            let names: Vec<String> = events.iter().map(|t| format!("'{}'", t.as_str())).collect();
            let audit = if names.is_empty() {
                "NULL".to_string()
            } else {
                format!(
                    "(SELECT \"timestamp\" FROM audit_events WHERE workspace_id = $1 AND event_type IN ({}) \
                     ORDER BY \"timestamp\" DESC LIMIT 1)",
                    names.join(", ")
                )
            };
            let sql = format!(
                "SELECT (SELECT MAX(created_at) FROM tasks WHERE workspace_id = $1), \
                 (SELECT MAX(completed_at) FROM tasks WHERE workspace_id = $1), {audit}"
            );
            let (a, b, c): (Option<i64>, Option<i64>, Option<i64>) =
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(ws.to_string()).fetch_one(e).await?;
            Ok([a, b, c].into_iter().flatten().max())
        }

        pub async fn last_workspace_activity(s: &S, ws: WorkspaceId, events: &[EventType]) -> Result<Option<Timestamp>> {
            let t = last_activity_in(&s.read, ws, events).await.map_err(Error::from)?;
            Ok(t.map(Timestamp::from_millis))
        }

        /// The idle stop's write: `ws`'s intent as `update_intent` writes it, only if — under the workspace's row
        /// lock, which a task submission takes too — the workspace has no task that has not ended and no activity
        /// (as `last_workspace_activity` finds it) after `since`. `false` when it has, or a generation moved.
        pub async fn update_intent_if_inactive(
            s: &S,
            ws: &WorkspaceRecord,
            expected_intent: i64,
            expected_observed: i64,
            since: Timestamp,
            events: &[EventType],
            audit: &[AuditEvent],
        ) -> Result<bool> {
            run("update_intent_if_inactive", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(concat!("SELECT id FROM workspaces WHERE id = $1", for_update!()))
                    .bind(ws.id.to_string())
                    .execute(&mut *tx)
                    .await?;
                let open: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM tasks WHERE workspace_id = $1 \
                     AND status IN ('submitted', 'delivered', 'running', 'compacting')",
                )
                .bind(ws.id.to_string())
                .fetch_one(&mut *tx)
                .await?;
                if open > 0 {
                    return Ok(false);
                }
                if last_activity_in(&mut *tx, ws.id, events).await?.is_some_and(|t| t > since.millis()) {
                    return Ok(false);
                }
                if !intent_guarded(&mut tx, ws, expected_intent, expected_observed).await? {
                    return Ok(false);
                }
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(true)
            })
            .await
        }

        /// The reconciler's narrow write inside `c`: the observation columns only, guarded by the observation
        /// generation and the lease fence. On a miss, says which guard refused it.
        pub async fn observation_guarded(
            c: &mut Conn,
            ws: &WorkspaceRecord,
            expected: i64,
            fence: &Fence,
        ) -> TxResult<ObservationWrite> {
            let o = &ws.observed;
            let done = sqlx::query(
                "UPDATE workspaces SET status = $5, status_reason = $6, last_error = $7, pod_id = $8, \
                 pod_pack_ids = $9, snapshot_id = $10, last_snapshot_error = $11, adopted_seq = $12, \
                 updated_at = $13, generation = $2 + 1 \
                 WHERE id = $1 AND generation = $2 AND lease_owner = $3 AND lease_epoch = $4",
            )
            .bind(ws.id.to_string())
            .bind(expected)
            .bind(fence.owner.as_str())
            .bind(fence.epoch)
            .bind(o.status.as_str())
            .bind(o.status_reason.map(|r| r.as_str()))
            .bind(o.last_error.as_deref())
            .bind(text(o.pod_id.as_ref()))
            .bind(pod_pack_ids(ws)?)
            .bind(text(o.snapshot_id.as_ref()))
            .bind(o.last_snapshot_error.as_deref())
            .bind(o.adopted)
            .bind(ws.updated_at.millis())
            .execute(&mut *c)
            .await?;
            if done.rows_affected() == 1 {
                return Ok(ObservationWrite::Written);
            }
            let held: Option<i64> = sqlx::query_scalar(
                "SELECT COUNT(*) FROM workspaces WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3",
            )
            .bind(ws.id.to_string())
            .bind(fence.owner.as_str())
            .bind(fence.epoch)
            .fetch_optional(&mut *c)
            .await?;
            Ok(if held.unwrap_or(0) == 1 { ObservationWrite::Stale } else { ObservationWrite::Fenced })
        }

        pub async fn record_observation(
            s: &S,
            ws: &WorkspaceRecord,
            expected: i64,
            fence: &Fence,
            audit: &[AuditEvent],
        ) -> Result<ObservationWrite> {
            run("record_observation", move || async move {
                let mut tx = s.begin().await?;
                let outcome = observation_guarded(&mut tx, ws, expected, fence).await?;
                if outcome != ObservationWrite::Written {
                    return Ok(outcome);
                }
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(outcome)
            })
            .await
        }

        pub async fn workspaces_to_reconcile(s: &S) -> Result<Vec<WorkspaceId>> {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM workspaces WHERE status IN ('provisioning', 'stopping') OR pod_id IS NOT NULL \
                 OR request_seq > adopted_seq ORDER BY id",
            )
            .fetch_all(&s.read)
            .await
            .map_err(db)?;
            ids.iter().map(|id| parse_id(id)).collect()
        }

        pub async fn owned_pod_ids(s: &S) -> Result<Vec<PodId>> {
            let ids: Vec<String> =
                sqlx::query_scalar("SELECT pod_id FROM workspaces WHERE pod_id IS NOT NULL ORDER BY pod_id")
                    .fetch_all(&s.read)
                    .await
                    .map_err(db)?;
            ids.iter().map(|id| parse_id(id)).collect()
        }

        fn parse_id<T: std::str::FromStr<Err = evershell_core::ids::IdParseError>>(s: &str) -> Result<T> {
            s.parse().map_err(|e| Error::internal(anyhow::anyhow!("corrupt id `{s}` in the database: {e}")))
        }

        pub async fn claim_workspace(
            s: &S,
            id: WorkspaceId,
            owner: &str,
            now: Timestamp,
            until: Timestamp,
        ) -> Result<Option<Fence>> {
            run("claim_workspace", move || async move {
                let mut tx = s.begin().await?;
                let epoch: Option<i64> = sqlx::query_scalar(
                    "UPDATE workspaces SET lease_until = $4, \
                     lease_epoch = CASE WHEN lease_owner = $2 THEN lease_epoch ELSE lease_epoch + 1 END, \
                     lease_owner = $2 WHERE id = $1 \
                     AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until IS NULL OR lease_until < $3) \
                     RETURNING lease_epoch",
                )
                .bind(id.to_string())
                .bind(owner)
                .bind(now.millis())
                .bind(until.millis())
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(epoch.map(|epoch| Fence { owner: owner.to_string(), epoch }))
            })
            .await
        }

        pub async fn renew_workspace_lease(s: &S, id: WorkspaceId, fence: &Fence, until: Timestamp) -> Result<bool> {
            run("renew_workspace_lease", move || async move {
                let mut tx = s.begin().await?;
                let done = sqlx::query(
                    "UPDATE workspaces SET lease_until = $4 WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3",
                )
                .bind(id.to_string())
                .bind(fence.owner.as_str())
                .bind(fence.epoch)
                .bind(until.millis())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected() == 1)
            })
            .await
        }

        pub async fn release_workspace(s: &S, id: WorkspaceId, fence: &Fence) -> Result<()> {
            run("release_workspace", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(
                    "UPDATE workspaces SET lease_owner = NULL, lease_until = NULL \
                     WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3",
                )
                .bind(id.to_string())
                .bind(fence.owner.as_str())
                .bind(fence.epoch)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn clear_leases(s: &S) -> Result<()> {
            run("clear_leases", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(
                    "UPDATE workspaces SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL",
                )
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }
    };
}
pub(crate) use ops;
