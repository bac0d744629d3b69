//! Credentials the server checks: API keys (stored as a hash), sign-in sessions, and named server keys (first writer
//! wins, material stored as hex).

macro_rules! ops {
    () => {
        use evershell_core::audit::AuditEvent;
        use evershell_core::ids::{ApiKeyId, OrgId, SessionId};
        use evershell_core::model::{ApiKey, Session};
        use evershell_core::{Error, Result, Timestamp};

        use $crate::errors::db;
        use $crate::rows::{ApiKeyRow, SessionRow, millis, text, to_json};
        use $crate::tx::run;

        macro_rules! key_cols {
            () => {
                "id, org_id, label, prefix, permission_set, permissions, created_by_user_id, created_at"
            };
        }

        pub async fn create_api_key(s: &S, key: &ApiKey, secret_hash: &str, audit: &[AuditEvent]) -> Result<()> {
            let permissions = to_json(&key.permissions)?;
            let permissions = permissions.as_str();
            run("create_api_key", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(concat!(
                    "INSERT INTO api_keys (",
                    key_cols!(),
                    ", secret_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                ))
                .bind(key.id.to_string())
                .bind(key.org_id.to_string())
                .bind(key.label.as_str())
                .bind(key.prefix.as_str())
                .bind(key.permission_set.as_str())
                .bind(permissions)
                .bind(text(key.created_by_user_id.as_ref()))
                .bind(key.created_at.millis())
                .bind(secret_hash)
                .execute(&mut *tx)
                .await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn list_api_keys(s: &S, org: OrgId) -> Result<Vec<ApiKey>> {
            let rows: Vec<ApiKeyRow> = sqlx::query_as(concat!(
                "SELECT ",
                key_cols!(),
                " FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL ORDER BY created_at, id"
            ))
            .bind(org.to_string())
            .fetch_all(&s.read)
            .await
            .map_err(db)?;
            rows.into_iter().map(ApiKey::try_from).collect()
        }

        pub async fn find_api_key(s: &S, secret_hash: &str) -> Result<Option<ApiKey>> {
            let row: Option<ApiKeyRow> = sqlx::query_as(concat!(
                "SELECT ",
                key_cols!(),
                " FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL"
            ))
            .bind(secret_hash)
            .fetch_optional(&s.read)
            .await
            .map_err(db)?;
            row.map(ApiKey::try_from).transpose()
        }

        pub async fn revoke_api_key(
            s: &S,
            org: OrgId,
            id: ApiKeyId,
            now: Timestamp,
            audit: &[AuditEvent],
        ) -> Result<bool> {
            run("revoke_api_key", move || async move {
                let mut tx = s.begin().await?;
                let done = sqlx::query(
                    "UPDATE api_keys SET revoked_at = $3 WHERE org_id = $1 AND id = $2 AND revoked_at IS NULL",
                )
                .bind(org.to_string())
                .bind(id.to_string())
                .bind(now.millis())
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(true)
            })
            .await
        }

        pub async fn create_session(s: &S, session: &Session, audit: &[AuditEvent]) -> Result<()> {
            run("create_session", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(
                    "INSERT INTO sessions (id, user_id, org_id, created_at, expires_at, revoked_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(session.id.to_string())
                .bind(session.user_id.to_string())
                .bind(session.org_id.to_string())
                .bind(session.created_at.millis())
                .bind(session.expires_at.millis())
                .bind(millis(session.revoked_at))
                .execute(&mut *tx)
                .await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn get_session(s: &S, id: SessionId) -> Result<Option<Session>> {
            let row: Option<SessionRow> = sqlx::query_as(
                "SELECT id, user_id, org_id, created_at, expires_at, revoked_at FROM sessions WHERE id = $1",
            )
            .bind(id.to_string())
            .fetch_optional(&s.read)
            .await
            .map_err(db)?;
            row.map(Session::try_from).transpose()
        }

        /// Revoking an already revoked (or unknown) session keeps the first revocation time.
        pub async fn revoke_session(s: &S, id: SessionId, now: Timestamp, audit: &[AuditEvent]) -> Result<()> {
            run("revoke_session", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
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

        pub async fn server_key(s: &S, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
            let material = $crate::rows::hex_encode(candidate);
            let material = material.as_str();
            let stored: String = run("server_key", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(
                    "INSERT INTO server_keys (name, material, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(material)
                .bind(Timestamp::now().millis())
                .execute(&mut *tx)
                .await?;
                let stored = sqlx::query_scalar("SELECT material FROM server_keys WHERE name = $1")
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(stored)
            })
            .await?;
            $crate::rows::hex_decode(&stored)
                .ok_or_else(|| Error::internal(anyhow::anyhow!("corrupt server key `{name}` in the database")))
        }
    };
}
pub(crate) use ops;
