//! Memberships and invitations, with the last-Owner guard: every change to an org's Owners first takes the org's
//! row lock, so two concurrent demotions cannot both see "another Owner remains".

macro_rules! ops {
    () => {
        use evershell_core::audit::AuditEvent;
        use evershell_core::ids::{OrgId, UserId};
        use evershell_core::model::{Membership, MembershipStatus, Org, User};
        use evershell_core::scope::MemberRole;
        use evershell_core::{Error, ErrorCode, Result, Timestamp};

        use $crate::errors::db;
        use $crate::rows::{MembershipOrgRow, MembershipRow, millis, text};
        use $crate::tx::{TxResult, run};

        macro_rules! select_membership {
            () => {
                "SELECT m.org_id, m.user_id, u.email, m.role, m.status, m.accepted_at, m.invited_by_user_id, \
                 m.created_at, m.updated_at FROM memberships m JOIN users u ON u.id = m.user_id "
            };
        }

        fn not_found() -> Error {
            Error::new(ErrorCode::MembershipNotFound, "no such membership")
        }

        fn last_owner() -> Error {
            Error::new(ErrorCode::LastOwner, "the organisation must keep at least one active Owner")
        }

        async fn fetch(c: &mut Conn, org: OrgId, user: UserId) -> TxResult<Option<Membership>> {
            let row: Option<MembershipRow> =
                sqlx::query_as(concat!(select_membership!(), "WHERE m.org_id = $1 AND m.user_id = $2"))
                    .bind(org.to_string())
                    .bind(user.to_string())
                    .fetch_optional(c)
                    .await?;
            Ok(row.map(Membership::try_from).transpose()?)
        }

        async fn active_owners(c: &mut Conn, org: OrgId) -> sqlx::Result<i64> {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM memberships WHERE org_id = $1 AND role = 'owner' AND status = 'active'",
            )
            .bind(org.to_string())
            .fetch_one(c)
            .await
        }

        fn is_active_owner(m: &Membership) -> bool {
            m.status == MembershipStatus::Active && m.role == MemberRole::Owner
        }

        pub async fn create_membership(
            s: &S,
            m: &Membership,
            new_user: Option<&User>,
            invite_token_hash: Option<&str>,
            audit: &[AuditEvent],
        ) -> Result<()> {
            run("create_membership", move || async move {
                let mut tx = s.begin().await?;
                if let Some(user) = new_user {
                    super::orgs::insert_user(&mut tx, user).await?;
                }
                sqlx::query(
                    "INSERT INTO memberships (org_id, user_id, role, status, invite_token_hash, invited_by_user_id, \
                     accepted_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(m.org_id.to_string())
                .bind(m.user_id.to_string())
                .bind(m.role.as_str())
                .bind(m.status.as_str())
                .bind(invite_token_hash)
                .bind(text(m.invited_by_user_id.as_ref()))
                .bind(millis(m.accepted_at))
                .bind(m.created_at.millis())
                .bind(m.updated_at.millis())
                .execute(&mut *tx)
                .await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn get_membership(s: &S, org: OrgId, user: UserId) -> Result<Option<Membership>> {
            let mut c = s.read.acquire().await.map_err(db)?;
            Ok(fetch(&mut c, org, user).await?)
        }

        pub async fn list_memberships(s: &S, org: OrgId) -> Result<Vec<Membership>> {
            let rows: Vec<MembershipRow> =
                sqlx::query_as(concat!(select_membership!(), "WHERE m.org_id = $1 ORDER BY m.created_at, m.user_id"))
                    .bind(org.to_string())
                    .fetch_all(&s.read)
                    .await
                    .map_err(db)?;
            rows.into_iter().map(Membership::try_from).collect()
        }

        pub async fn list_user_memberships(s: &S, user: UserId) -> Result<Vec<(Membership, Org)>> {
            let rows: Vec<MembershipOrgRow> = sqlx::query_as(
                "SELECT m.org_id, m.user_id, u.email, m.role, m.status, m.accepted_at, m.invited_by_user_id, \
                 m.created_at, m.updated_at, o.slug AS org_slug, o.billing_status AS org_billing_status, \
                 o.trial_ends_at AS org_trial_ends_at, o.created_at AS org_created_at, \
                 o.updated_at AS org_updated_at \
                 FROM memberships m JOIN users u ON u.id = m.user_id JOIN orgs o ON o.id = m.org_id \
                 WHERE m.user_id = $1 ORDER BY m.created_at, m.org_id",
            )
            .bind(user.to_string())
            .fetch_all(&s.read)
            .await
            .map_err(db)?;
            rows.into_iter().map(<(Membership, Org)>::try_from).collect()
        }

        pub async fn find_invitation(s: &S, token_hash: &str) -> Result<Option<Membership>> {
            let row: Option<MembershipRow> = sqlx::query_as(concat!(
                select_membership!(),
                "WHERE m.invite_token_hash = $1 AND m.status = 'pending'"
            ))
            .bind(token_hash)
            .fetch_optional(&s.read)
            .await
            .map_err(db)?;
            row.map(Membership::try_from).transpose()
        }

        pub async fn accept_invitation(
            s: &S,
            org: OrgId,
            user: UserId,
            password_hash: Option<&str>,
            now: Timestamp,
            audit: &[AuditEvent],
        ) -> Result<Membership> {
            run("accept_invitation", move || async move {
                let mut tx = s.begin().await?;
                let done = sqlx::query(
                    "UPDATE memberships SET status = 'active', accepted_at = $3, invite_token_hash = NULL, \
                     updated_at = $3 WHERE org_id = $1 AND user_id = $2 AND status = 'pending'",
                )
                .bind(org.to_string())
                .bind(user.to_string())
                .bind(now.millis())
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(not_found().into());
                }
                if let Some(hash) = password_hash {
                    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                        .bind(user.to_string())
                        .bind(hash)
                        .execute(&mut *tx)
                        .await?;
                }
                let m = fetch(&mut tx, org, user).await?.ok_or_else(not_found)?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(m)
            })
            .await
        }

        pub async fn update_membership_role(
            s: &S,
            org: OrgId,
            user: UserId,
            role: MemberRole,
            now: Timestamp,
            audit: &[AuditEvent],
        ) -> Result<Membership> {
            run("update_membership_role", move || async move {
                let mut tx = s.begin().await?;
                super::orgs::lock_org(&mut tx, org).await?;
                let mut m = fetch(&mut tx, org, user).await?.ok_or_else(not_found)?;
                if m.status == MembershipStatus::Pending {
                    return Err(Error::new(
                        ErrorCode::PendingInvitation,
                        "a pending invitation cannot change role; revoke it and invite again",
                    )
                    .into());
                }
                if is_active_owner(&m) && role != MemberRole::Owner && active_owners(&mut tx, org).await? <= 1 {
                    return Err(last_owner().into());
                }
                sqlx::query("UPDATE memberships SET role = $3, updated_at = $4 WHERE org_id = $1 AND user_id = $2")
                    .bind(org.to_string())
                    .bind(user.to_string())
                    .bind(role.as_str())
                    .bind(now.millis())
                    .execute(&mut *tx)
                    .await?;
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                m.role = role;
                m.updated_at = now;
                Ok(m)
            })
            .await
        }

        pub async fn delete_membership(
            s: &S,
            org: OrgId,
            user: UserId,
            now: Timestamp,
            audit: &[AuditEvent],
        ) -> Result<()> {
            run("delete_membership", move || async move {
                let mut tx = s.begin().await?;
                super::orgs::lock_org(&mut tx, org).await?;
                let m = fetch(&mut tx, org, user).await?.ok_or_else(not_found)?;
                if is_active_owner(&m) && active_owners(&mut tx, org).await? <= 1 {
                    return Err(last_owner().into());
                }
                sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2")
                    .bind(org.to_string())
                    .bind(user.to_string())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE sessions SET revoked_at = $3 WHERE org_id = $1 AND user_id = $2 AND revoked_at IS NULL",
                )
                .bind(org.to_string())
                .bind(user.to_string())
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
