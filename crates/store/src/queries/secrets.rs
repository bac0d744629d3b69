//! Secrets: named values kept sealed; the plain metadata for listing, the sealed material only for the decrypting
//! side (`secret_material`).

macro_rules! ops {
    () => {
        use evershell_core::audit::AuditEvent;
        use evershell_core::ids::{OrgId, SecretId};
        use evershell_core::model::{Sealed, Secret};
        use evershell_core::{Error, ErrorCode, Result, Timestamp};

        use $crate::errors::db;
        use $crate::rows::{SecretMaterialRow, SecretRow, hex_encode};
        use $crate::tx::run;

        macro_rules! secret_select {
            () => {
                "SELECT id, org_id, name, description, created_at, updated_at FROM secrets "
            };
        }

        pub fn not_found() -> Error {
            Error::new(ErrorCode::SecretNotFound, "no such secret in this organisation")
        }

        pub async fn create_secret(s: &S, sec: &Secret, material: &Sealed, audit: &[AuditEvent]) -> Result<()> {
            let material = hex_encode(&material.0);
            let material = material.as_str();
            run("create_secret", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(
                    "INSERT INTO secrets (id, org_id, name, description, material, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(sec.id.to_string())
                .bind(sec.org_id.to_string())
                .bind(sec.name.as_str())
                .bind(sec.description.as_deref())
                .bind(material)
                .bind(sec.created_at.millis())
                .bind(sec.updated_at.millis())
                .execute(&mut *tx)
                .await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn list_secrets(s: &S, org: OrgId) -> Result<Vec<Secret>> {
            let rows: Vec<SecretRow> = sqlx::query_as(concat!(secret_select!(), "WHERE org_id = $1 ORDER BY name, id"))
                .bind(org.to_string())
                .fetch_all(&s.read)
                .await
                .map_err(db)?;
            rows.into_iter().map(Secret::try_from).collect()
        }

        pub async fn get_secret(s: &S, org: OrgId, id: SecretId) -> Result<Option<Secret>> {
            let row: Option<SecretRow> = sqlx::query_as(concat!(secret_select!(), "WHERE org_id = $1 AND id = $2"))
                .bind(org.to_string())
                .bind(id.to_string())
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(Secret::try_from).transpose()
        }

        pub async fn rotate_secret(
            s: &S,
            org: OrgId,
            id: SecretId,
            material: &Sealed,
            now: Timestamp,
            audit: &[AuditEvent],
        ) -> Result<Secret> {
            let material = hex_encode(&material.0);
            let material = material.as_str();
            run("rotate_secret", move || async move {
                let mut tx = s.begin().await?;
                let done =
                    sqlx::query("UPDATE secrets SET material = $3, updated_at = $4 WHERE org_id = $1 AND id = $2")
                        .bind(org.to_string())
                        .bind(id.to_string())
                        .bind(material)
                        .bind(now.millis())
                        .execute(&mut *tx)
                        .await?;
                if done.rows_affected() == 0 {
                    return Err(not_found().into());
                }
                let row: SecretRow = sqlx::query_as(concat!(secret_select!(), "WHERE id = $1"))
                    .bind(id.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(Secret::try_from(row)?)
            })
            .await
        }

        pub async fn delete_secret(s: &S, org: OrgId, id: SecretId, audit: &[AuditEvent]) -> Result<()> {
            run("delete_secret", move || async move {
                let mut tx = s.begin().await?;
                let done = sqlx::query("DELETE FROM secrets WHERE org_id = $1 AND id = $2")
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

        pub async fn secret_material(s: &S, org: OrgId, name: &str) -> Result<Option<(Secret, Sealed)>> {
            let row: Option<SecretMaterialRow> = sqlx::query_as(
                "SELECT id, org_id, name, description, created_at, updated_at, material FROM secrets \
                 WHERE org_id = $1 AND name = $2",
            )
            .bind(org.to_string())
            .bind(name)
            .fetch_optional(&s.read)
            .await
            .map_err(db)?;
            row.map(SecretMaterialRow::into_parts).transpose()
        }
    };
}
pub(crate) use ops;
