//! LLM providers, and the archive guard: archiving a provider locks it and its live roles, refuses while any of their
//! workspaces is active, then archives the roles with it (one audit row each).

macro_rules! ops {
    () => {
        use evershell_core::audit::AuditEvent;
        use evershell_core::ids::{OrgId, ProviderId};
        use evershell_core::model::{AgentRole, Provider};
        use evershell_core::{Error, ErrorCode, Result, Timestamp};

        use $crate::errors::db;
        use $crate::rows::{ProviderRow, millis, to_json};
        use $crate::tx::{TxResult, run};

        macro_rules! provider_select {
            () => {
                "SELECT id, org_id, name, kind, display_name, domain, credential_name, default_model, capabilities, \
                 config, created_at, updated_at, archived_at FROM providers "
            };
        }

        pub fn not_found() -> Error {
            Error::new(ErrorCode::ProviderNotFound, "no such provider")
        }

        /// Read the provider with a row lock: exclusive to change it, shared to build on it.
        pub async fn lock(c: &mut Conn, org: OrgId, id: ProviderId, exclusive: bool) -> TxResult<Option<Provider>> {
            let sql = if exclusive {
                concat!(provider_select!(), "WHERE org_id = $1 AND id = $2", for_update!())
            } else {
                concat!(provider_select!(), "WHERE org_id = $1 AND id = $2", for_share!())
            };
            let row: Option<ProviderRow> =
                sqlx::query_as(sql).bind(org.to_string()).bind(id.to_string()).fetch_optional(c).await?;
            Ok(row.map(Provider::try_from).transpose()?)
        }

        pub async fn create_provider(s: &S, p: &Provider, audit: &[AuditEvent]) -> Result<()> {
            let config = to_json(&p.config)?;
            let config = config.as_str();
            run("create_provider", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(
                    "INSERT INTO providers (id, org_id, name, kind, display_name, domain, credential_name, \
                     default_model, capabilities, config, created_at, updated_at, archived_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(p.id.to_string())
                .bind(p.org_id.to_string())
                .bind(p.name.as_str())
                .bind(p.kind.as_str())
                .bind(p.display_name.as_deref())
                .bind(p.domain.as_str())
                .bind(p.credential_name.as_deref())
                .bind(p.default_model.as_deref())
                .bind(p.capabilities.as_deref())
                .bind(config)
                .bind(p.created_at.millis())
                .bind(p.updated_at.millis())
                .bind(millis(p.archived_at))
                .execute(&mut *tx)
                .await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn list_providers(s: &S, org: OrgId, include_archived: bool) -> Result<Vec<Provider>> {
            let sql = if include_archived {
                concat!(provider_select!(), "WHERE org_id = $1 ORDER BY name, id")
            } else {
                concat!(provider_select!(), "WHERE org_id = $1 AND archived_at IS NULL ORDER BY name, id")
            };
            let rows: Vec<ProviderRow> =
                sqlx::query_as(sql).bind(org.to_string()).fetch_all(&s.read).await.map_err(db)?;
            rows.into_iter().map(Provider::try_from).collect()
        }

        pub async fn get_provider(s: &S, org: OrgId, id: ProviderId) -> Result<Option<Provider>> {
            let row: Option<ProviderRow> = sqlx::query_as(concat!(provider_select!(), "WHERE org_id = $1 AND id = $2"))
                .bind(org.to_string())
                .bind(id.to_string())
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(Provider::try_from).transpose()
        }

        pub async fn update_provider(s: &S, p: &Provider, audit: &[AuditEvent]) -> Result<()> {
            let config = to_json(&p.config)?;
            let config = config.as_str();
            run("update_provider", move || async move {
                let mut tx = s.begin().await?;
                let done = sqlx::query(
                    "UPDATE providers SET name = $3, kind = $4, display_name = $5, domain = $6, credential_name = $7, \
                     default_model = $8, capabilities = $9, config = $10, updated_at = $11 \
                     WHERE org_id = $1 AND id = $2",
                )
                .bind(p.org_id.to_string())
                .bind(p.id.to_string())
                .bind(p.name.as_str())
                .bind(p.kind.as_str())
                .bind(p.display_name.as_deref())
                .bind(p.domain.as_str())
                .bind(p.credential_name.as_deref())
                .bind(p.default_model.as_deref())
                .bind(p.capabilities.as_deref())
                .bind(config)
                .bind(p.updated_at.millis())
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

        pub async fn archive_provider(
            s: &S,
            org: OrgId,
            id: ProviderId,
            now: Timestamp,
            audit: &[AuditEvent],
            role_audit: &(dyn for<'r> Fn(&'r AgentRole) -> AuditEvent + Send + Sync),
        ) -> Result<u64> {
            run("archive_provider", move || async move {
                let mut tx = s.begin().await?;
                let provider = lock(&mut tx, org, id, true).await?.ok_or_else(not_found)?;
                if provider.archived_at.is_some() {
                    return Ok(0);
                }
                let roles = super::roles::lock_live_of_provider(&mut tx, id).await?;
                let active: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM workspaces w JOIN agent_roles r ON r.id = w.role_id \
                     WHERE r.provider_id = $1 AND (w.status IN ('provisioning', 'idle', 'busy', 'stopping') \
                     OR w.request_seq > w.adopted_seq)",
                )
                .bind(id.to_string())
                .fetch_one(&mut *tx)
                .await?;
                if active > 0 {
                    return Err(Error::new(
                        ErrorCode::WorkspacesActive,
                        "workspaces of the provider's agent roles are still active; stop them first",
                    )
                    .with_details(serde_json::json!({ "active_workspaces": active }))
                    .into());
                }
                sqlx::query("UPDATE providers SET archived_at = $2, updated_at = $2 WHERE id = $1")
                    .bind(id.to_string())
                    .bind(now.millis())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE agent_roles SET archived_at = $2, updated_at = $2 \
                     WHERE provider_id = $1 AND archived_at IS NULL",
                )
                .bind(id.to_string())
                .bind(now.millis())
                .execute(&mut *tx)
                .await?;
                super::audit::insert(&mut tx, audit).await?;
                for mut role in roles.iter().cloned() {
                    role.archived_at = Some(now);
                    role.updated_at = now;
                    super::audit::insert(&mut tx, &[role_audit(&role)]).await?;
                }
                tx.commit().await?;
                Ok(roles.len() as u64)
            })
            .await
        }

        pub async fn unarchive_provider(
            s: &S,
            org: OrgId,
            id: ProviderId,
            now: Timestamp,
            audit: &[AuditEvent],
        ) -> Result<()> {
            run("unarchive_provider", move || async move {
                let mut tx = s.begin().await?;
                let provider = lock(&mut tx, org, id, true).await?.ok_or_else(not_found)?;
                if provider.archived_at.is_none() {
                    return Err(Error::new(ErrorCode::NotArchived, "the provider is not archived").into());
                }
                sqlx::query("UPDATE providers SET archived_at = NULL, updated_at = $2 WHERE id = $1")
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
