//! Credentials: records with their sealed material; the broker's lookup (a personal override first, then the org's
//! credential of that name) and its mint bookkeeping.

macro_rules! ops {
    () => {
        use evershell_core::audit::AuditEvent;
        use evershell_core::ids::{CredentialId, OrgId, UserId};
        use evershell_core::model::{Credential, CredentialStatus, Sealed};
        use evershell_core::{Error, ErrorCode, Result, Timestamp};

        use $crate::errors::db;
        use $crate::rows::{CredentialMaterialRow, CredentialRow, hex_encode, millis, text, to_json};
        use $crate::tx::run;

        macro_rules! credential_columns {
            () => {
                "id, org_id, user_id, name, provider, kind, scopes, provider_config, allow_user_override, status, \
                 last_minted_at, last_minted_status, created_by_user_id, created_at, updated_at"
            };
        }

        pub fn not_found() -> Error {
            Error::new(ErrorCode::CredentialNotFound, "no such credential in this organisation")
        }

        pub async fn create_credential(s: &S, c: &Credential, material: &Sealed, audit: &[AuditEvent]) -> Result<()> {
            let material = hex_encode(&material.0);
            let material = material.as_str();
            let scopes = to_json(&c.scopes)?;
            let scopes = scopes.as_str();
            let config = to_json(&c.provider_config)?;
            let config = config.as_str();
            run("create_credential", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(concat!(
                    "INSERT INTO credentials (",
                    credential_columns!(),
                    ", material) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
                ))
                .bind(c.id.to_string())
                .bind(c.org_id.to_string())
                .bind(text(c.user_id.as_ref()))
                .bind(c.name.as_str())
                .bind(c.provider.as_str())
                .bind(c.kind.as_str())
                .bind(scopes)
                .bind(config)
                .bind(i64::from(c.allow_user_override))
                .bind(c.status.as_str())
                .bind(millis(c.last_minted_at))
                .bind(c.last_minted_status.as_deref())
                .bind(text(c.created_by_user_id.as_ref()))
                .bind(c.created_at.millis())
                .bind(c.updated_at.millis())
                .bind(material)
                .execute(&mut *tx)
                .await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn list_credentials(s: &S, org: OrgId) -> Result<Vec<Credential>> {
            let rows: Vec<CredentialRow> = sqlx::query_as(concat!(
                "SELECT ",
                credential_columns!(),
                " FROM credentials WHERE org_id = $1 ORDER BY name, user_id IS NOT NULL, id"
            ))
            .bind(org.to_string())
            .fetch_all(&s.read)
            .await
            .map_err(db)?;
            rows.into_iter().map(Credential::try_from).collect()
        }

        pub async fn get_credential(s: &S, org: OrgId, id: CredentialId) -> Result<Option<Credential>> {
            let row: Option<CredentialRow> = sqlx::query_as(concat!(
                "SELECT ",
                credential_columns!(),
                " FROM credentials WHERE org_id = $1 AND id = $2"
            ))
            .bind(org.to_string())
            .bind(id.to_string())
            .fetch_optional(&s.read)
            .await
            .map_err(db)?;
            row.map(Credential::try_from).transpose()
        }

        pub async fn get_org_credential_by_name(s: &S, org: OrgId, name: &str) -> Result<Option<Credential>> {
            let row: Option<CredentialRow> = sqlx::query_as(concat!(
                "SELECT ",
                credential_columns!(),
                " FROM credentials WHERE org_id = $1 AND name = $2 AND user_id IS NULL"
            ))
            .bind(org.to_string())
            .bind(name)
            .fetch_optional(&s.read)
            .await
            .map_err(db)?;
            row.map(Credential::try_from).transpose()
        }

        pub async fn delete_credential(s: &S, org: OrgId, id: CredentialId, audit: &[AuditEvent]) -> Result<()> {
            run("delete_credential", move || async move {
                let mut tx = s.begin().await?;
                let done = sqlx::query("DELETE FROM credentials WHERE org_id = $1 AND id = $2")
                    .bind(org.to_string())
                    .bind(id.to_string())
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

        pub async fn credential_material(
            s: &S,
            org: OrgId,
            name: &str,
            user: Option<UserId>,
        ) -> Result<Option<(Credential, Sealed)>> {
            // The personal override (user_id = the user) sorts before the org's credential (user_id NULL).
            let row: Option<CredentialMaterialRow> = sqlx::query_as(concat!(
                "SELECT ",
                credential_columns!(),
                ", material FROM credentials WHERE org_id = $1 AND name = $2 AND (user_id IS NULL OR user_id = $3) \
                 ORDER BY user_id IS NULL LIMIT 1"
            ))
            .bind(org.to_string())
            .bind(name)
            .bind(text(user.as_ref()))
            .fetch_optional(&s.read)
            .await
            .map_err(db)?;
            row.map(CredentialMaterialRow::into_parts).transpose()
        }

        pub async fn record_credential_mint(
            s: &S,
            org: OrgId,
            id: CredentialId,
            status: CredentialStatus,
            minted_at: Option<Timestamp>,
            mint_status: Option<&str>,
            now: Timestamp,
        ) -> Result<()> {
            run("record_credential_mint", move || async move {
                let mut tx = s.begin().await?;
                let done = sqlx::query(
                    "UPDATE credentials SET status = $3, last_minted_at = COALESCE($4, last_minted_at), \
                     last_minted_status = $5, updated_at = $6 WHERE org_id = $1 AND id = $2",
                )
                .bind(org.to_string())
                .bind(id.to_string())
                .bind(status.as_str())
                .bind(millis(minted_at))
                .bind(mint_status)
                .bind(now.millis())
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(not_found().into());
                }
                tx.commit().await?;
                Ok(())
            })
            .await
        }
    };
}
pub(crate) use ops;
