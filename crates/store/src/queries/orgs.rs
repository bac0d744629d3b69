//! Organisations (slug, billing posture) and users (email, password hash).

macro_rules! ops {
    () => {
        use evershell_core::audit::AuditEvent;
        use evershell_core::ids::{OrgId, UserId};
        use evershell_core::model::{BillingStatus, Org, User};
        use evershell_core::{Error, ErrorCode, Result, Timestamp};

        use $crate::errors::db;
        use $crate::rows::{OrgRow, UserRow, millis};
        use $crate::tx::run;

        macro_rules! org_cols {
            () => {
                "id, slug, billing_status, trial_ends_at, created_at, updated_at"
            };
        }
        macro_rules! user_cols {
            () => {
                "id, email, password_hash, created_at"
            };
        }

        pub async fn create_org(s: &S, org: &Org, audit: &[AuditEvent]) -> Result<()> {
            run("create_org", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(concat!("INSERT INTO orgs (", org_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6)"))
                    .bind(org.id.to_string())
                    .bind(org.slug.as_str())
                    .bind(org.billing_status.as_str())
                    .bind(millis(org.trial_ends_at))
                    .bind(org.created_at.millis())
                    .bind(org.updated_at.millis())
                    .execute(&mut *tx)
                    .await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn get_org(s: &S, id: OrgId) -> Result<Option<Org>> {
            let row: Option<OrgRow> = sqlx::query_as(concat!("SELECT ", org_cols!(), " FROM orgs WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(Org::try_from).transpose()
        }

        pub async fn get_org_by_slug(s: &S, slug: &str) -> Result<Option<Org>> {
            let row: Option<OrgRow> = sqlx::query_as(concat!("SELECT ", org_cols!(), " FROM orgs WHERE slug = $1"))
                .bind(slug)
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(Org::try_from).transpose()
        }

        pub async fn set_org_billing(
            s: &S,
            id: OrgId,
            status: BillingStatus,
            trial_ends_at: Option<Timestamp>,
            audit: &[AuditEvent],
        ) -> Result<Org> {
            run("set_org_billing", move || async move {
                let mut tx = s.begin().await?;
                let row: Option<OrgRow> = sqlx::query_as(concat!(
                    "UPDATE orgs SET billing_status = $2, trial_ends_at = $3, updated_at = $4 WHERE id = $1 RETURNING ",
                    org_cols!()
                ))
                .bind(id.to_string())
                .bind(status.as_str())
                .bind(millis(trial_ends_at))
                .bind(Timestamp::now().millis())
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Err(Error::new(ErrorCode::OrgNotFound, "no such organisation").into());
                };
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(Org::try_from(row)?)
            })
            .await
        }

        /// Insert a user inside a caller's transaction (also used when an invitation creates its user).
        pub async fn insert_user(c: &mut Conn, user: &User) -> sqlx::Result<()> {
            sqlx::query(concat!("INSERT INTO users (", user_cols!(), ") VALUES ($1, $2, $3, $4)"))
                .bind(user.id.to_string())
                .bind(user.email.as_str())
                .bind(user.password_hash.as_deref())
                .bind(user.created_at.millis())
                .execute(c)
                .await?;
            Ok(())
        }

        pub async fn create_user(s: &S, user: &User, audit: &[AuditEvent]) -> Result<()> {
            run("create_user", move || async move {
                let mut tx = s.begin().await?;
                insert_user(&mut tx, user).await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn get_user(s: &S, id: UserId) -> Result<Option<User>> {
            let row: Option<UserRow> = sqlx::query_as(concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(User::try_from).transpose()
        }

        pub async fn get_user_by_email(s: &S, email: &str) -> Result<Option<User>> {
            let row: Option<UserRow> = sqlx::query_as(concat!("SELECT ", user_cols!(), " FROM users WHERE email = $1"))
                .bind(email)
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(User::try_from).transpose()
        }

        /// Take the org's row lock: serialises every change to its set of Owners.
        pub async fn lock_org(c: &mut Conn, id: OrgId) -> sqlx::Result<()> {
            sqlx::query(concat!("SELECT id FROM orgs WHERE id = $1", for_update!()))
                .bind(id.to_string())
                .fetch_optional(c)
                .await?;
            Ok(())
        }
    };
}
pub(crate) use ops;
