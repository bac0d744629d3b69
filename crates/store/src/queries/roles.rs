//! Agent roles, and their guards: a role is created and unarchived only under a live provider (share-locked), and
//! archived only while none of its workspaces is active (the role row locked against a concurrent create).

macro_rules! ops {
    () => {
        use evershell_core::audit::AuditEvent;
        use evershell_core::ids::{OrgId, ProviderId, RoleId};
        use evershell_core::model::{AgentRole, Provider};
        use evershell_core::{Error, ErrorCode, Result, Timestamp};

        use $crate::errors::db;
        use $crate::rows::{RoleRow, millis, to_json};
        use $crate::tx::{TxResult, run};

        macro_rules! role_select {
            () => {
                "SELECT id, org_id, name, display_name, description, provider_id, model, capabilities, environment, \
                 environment_description, task_timeout_seconds, idle_timeout_seconds, thinking_effort, \
                 max_continuations, max_context_tokens, memory_limit_bytes, pids_limit, cpu_limit_millis, \
                 pool_policy, pool_size, pool_max_size, pack_ids, created_at, updated_at, archived_at \
                 FROM agent_roles "
            };
        }

        pub fn not_found() -> Error {
            Error::new(ErrorCode::RoleNotFound, "no such agent role")
        }

        pub fn provider_archived() -> Error {
            Error::new(ErrorCode::ProviderArchived, "the provider is archived; unarchive it first")
        }

        /// Read the role with a row lock: exclusive to change it, shared to build on it.
        pub async fn lock(c: &mut Conn, org: OrgId, id: RoleId, exclusive: bool) -> TxResult<Option<AgentRole>> {
            let sql = if exclusive {
                concat!(role_select!(), "WHERE org_id = $1 AND id = $2", for_update!())
            } else {
                concat!(role_select!(), "WHERE org_id = $1 AND id = $2", for_share!())
            };
            let row: Option<RoleRow> =
                sqlx::query_as(sql).bind(org.to_string()).bind(id.to_string()).fetch_optional(c).await?;
            Ok(row.map(AgentRole::try_from).transpose()?)
        }

        /// The provider's non-archived roles, exclusively locked (for the archive cascade).
        pub async fn lock_live_of_provider(c: &mut Conn, provider: ProviderId) -> TxResult<Vec<AgentRole>> {
            let rows: Vec<RoleRow> = sqlx::query_as(concat!(
                role_select!(),
                "WHERE provider_id = $1 AND archived_at IS NULL ORDER BY name, id",
                for_update!()
            ))
            .bind(provider.to_string())
            .fetch_all(c)
            .await?;
            Ok(rows.into_iter().map(AgentRole::try_from).collect::<Result<_>>()?)
        }

        /// Lock a role and its provider in the global order (provider first, then role), both shared unless
        /// `exclusive_role`. `RoleNotFound` when the role is not in the org.
        pub async fn lock_with_provider(
            c: &mut Conn,
            org: OrgId,
            id: RoleId,
            exclusive_role: bool,
        ) -> TxResult<(AgentRole, Provider)> {
            let provider_id: Option<String> =
                sqlx::query_scalar("SELECT provider_id FROM agent_roles WHERE org_id = $1 AND id = $2")
                    .bind(org.to_string())
                    .bind(id.to_string())
                    .fetch_optional(&mut *c)
                    .await?;
            let Some(provider_id) = provider_id else { return Err(not_found().into()) };
            let provider_id: ProviderId =
                provider_id.parse().map_err(|e| Error::internal(anyhow::anyhow!("corrupt provider id: {e}")))?;
            let mut provider = super::providers::lock(&mut *c, org, provider_id, false).await?;
            let role = lock(&mut *c, org, id, exclusive_role).await?.ok_or_else(not_found)?;
            if provider.as_ref().map(|p| p.id) != Some(role.provider_id) {
                // The role moved to another provider in between: lock that one instead.
                provider = super::providers::lock(&mut *c, org, role.provider_id, false).await?;
            }
            let provider = provider.ok_or_else(super::providers::not_found)?;
            Ok((role, provider))
        }

        async fn insert(c: &mut Conn, r: &AgentRole) -> TxResult<()> {
            sqlx::query(
                "INSERT INTO agent_roles (id, org_id, name, display_name, description, provider_id, model, \
                 capabilities, environment, environment_description, task_timeout_seconds, idle_timeout_seconds, \
                 thinking_effort, max_continuations, max_context_tokens, pool_policy, pool_size, pool_max_size, \
                 pack_ids, created_at, updated_at, archived_at, memory_limit_bytes, pids_limit, cpu_limit_millis) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, \
                 $21, $22, $23, $24, $25)",
            )
            .bind(r.id.to_string())
            .bind(r.org_id.to_string())
            .bind(r.name.as_str())
            .bind(r.display_name.as_deref())
            .bind(r.description.as_deref())
            .bind(r.provider_id.to_string())
            .bind(r.model.as_deref())
            .bind(r.capabilities.as_deref())
            .bind(r.environment.as_str())
            .bind(r.environment_description.as_deref())
            .bind(r.task_timeout_seconds)
            .bind(r.idle_timeout_seconds)
            .bind(r.thinking_effort.map(|t| t.as_str()))
            .bind(r.max_continuations)
            .bind(r.max_context_tokens)
            .bind(r.pool_policy.as_str())
            .bind(r.pool_size)
            .bind(r.pool_max_size)
            .bind(to_json(&r.pack_ids)?)
            .bind(r.created_at.millis())
            .bind(r.updated_at.millis())
            .bind(millis(r.archived_at))
            .bind(r.memory_limit_bytes)
            .bind(r.pids_limit)
            .bind(r.cpu_limit_millis)
            .execute(c)
            .await?;
            Ok(())
        }

        pub async fn create_role(s: &S, r: &AgentRole, audit: &[AuditEvent]) -> Result<()> {
            run("create_role", move || async move {
                let mut tx = s.begin().await?;
                let provider = super::providers::lock(&mut tx, r.org_id, r.provider_id, false)
                    .await?
                    .ok_or_else(super::providers::not_found)?;
                if provider.archived_at.is_some() {
                    return Err(provider_archived().into());
                }
                insert(&mut tx, r).await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn list_roles(s: &S, org: OrgId, include_archived: bool) -> Result<Vec<AgentRole>> {
            let sql = if include_archived {
                concat!(role_select!(), "WHERE org_id = $1 ORDER BY name, id")
            } else {
                concat!(role_select!(), "WHERE org_id = $1 AND archived_at IS NULL ORDER BY name, id")
            };
            let rows: Vec<RoleRow> = sqlx::query_as(sql).bind(org.to_string()).fetch_all(&s.read).await.map_err(db)?;
            rows.into_iter().map(AgentRole::try_from).collect()
        }

        pub async fn get_role(s: &S, org: OrgId, id: RoleId) -> Result<Option<AgentRole>> {
            let row: Option<RoleRow> = sqlx::query_as(concat!(role_select!(), "WHERE org_id = $1 AND id = $2"))
                .bind(org.to_string())
                .bind(id.to_string())
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(AgentRole::try_from).transpose()
        }

        pub async fn get_role_by_name(s: &S, org: OrgId, name: &str) -> Result<Option<AgentRole>> {
            let row: Option<RoleRow> = sqlx::query_as(concat!(role_select!(), "WHERE org_id = $1 AND name = $2"))
                .bind(org.to_string())
                .bind(name)
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(AgentRole::try_from).transpose()
        }

        pub async fn update_role(s: &S, r: &AgentRole, audit: &[AuditEvent]) -> Result<()> {
            let pack_ids = to_json(&r.pack_ids)?;
            let pack_ids = pack_ids.as_str();
            run("update_role", move || async move {
                let mut tx = s.begin().await?;
                let done = sqlx::query(
                    "UPDATE agent_roles SET name = $3, display_name = $4, description = $5, provider_id = $6, \
                     model = $7, capabilities = $8, environment = $9, environment_description = $10, \
                     task_timeout_seconds = $11, idle_timeout_seconds = $12, thinking_effort = $13, \
                     max_continuations = $14, max_context_tokens = $15, pool_policy = $16, pool_size = $17, \
                     pool_max_size = $18, pack_ids = $19, updated_at = $20, memory_limit_bytes = $21, \
                     pids_limit = $22, cpu_limit_millis = $23 WHERE org_id = $1 AND id = $2",
                )
                .bind(r.org_id.to_string())
                .bind(r.id.to_string())
                .bind(r.name.as_str())
                .bind(r.display_name.as_deref())
                .bind(r.description.as_deref())
                .bind(r.provider_id.to_string())
                .bind(r.model.as_deref())
                .bind(r.capabilities.as_deref())
                .bind(r.environment.as_str())
                .bind(r.environment_description.as_deref())
                .bind(r.task_timeout_seconds)
                .bind(r.idle_timeout_seconds)
                .bind(r.thinking_effort.map(|t| t.as_str()))
                .bind(r.max_continuations)
                .bind(r.max_context_tokens)
                .bind(r.pool_policy.as_str())
                .bind(r.pool_size)
                .bind(r.pool_max_size)
                .bind(pack_ids)
                .bind(r.updated_at.millis())
                .bind(r.memory_limit_bytes)
                .bind(r.pids_limit)
                .bind(r.cpu_limit_millis)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(not_found().into());
                }
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn archive_role(s: &S, org: OrgId, id: RoleId, now: Timestamp, audit: &[AuditEvent]) -> Result<()> {
            run("archive_role", move || async move {
                let mut tx = s.begin().await?;
                let role = lock(&mut tx, org, id, true).await?.ok_or_else(not_found)?;
                if role.archived_at.is_some() {
                    return Ok(());
                }
                let active: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM workspaces \
                     WHERE role_id = $1 AND (status IN ('provisioning', 'idle', 'busy', 'stopping') \
                     OR request_seq > adopted_seq)",
                )
                .bind(id.to_string())
                .fetch_one(&mut *tx)
                .await?;
                if active > 0 {
                    return Err(Error::new(
                        ErrorCode::WorkspacesActive,
                        "the agent role still has active workspaces; stop them first",
                    )
                    .with_details(serde_json::json!({ "active_workspaces": active }))
                    .into());
                }
                sqlx::query("UPDATE agent_roles SET archived_at = $2, updated_at = $2 WHERE id = $1")
                    .bind(id.to_string())
                    .bind(now.millis())
                    .execute(&mut *tx)
                    .await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn unarchive_role(
            s: &S,
            org: OrgId,
            id: RoleId,
            now: Timestamp,
            audit: &[AuditEvent],
        ) -> Result<()> {
            run("unarchive_role", move || async move {
                let mut tx = s.begin().await?;
                let (role, provider) = lock_with_provider(&mut tx, org, id, true).await?;
                if role.archived_at.is_none() {
                    return Err(Error::new(ErrorCode::NotArchived, "the agent role is not archived").into());
                }
                if provider.archived_at.is_some() {
                    return Err(provider_archived().into());
                }
                sqlx::query("UPDATE agent_roles SET archived_at = NULL, updated_at = $2 WHERE id = $1")
                    .bind(id.to_string())
                    .bind(now.millis())
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
