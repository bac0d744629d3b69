//! `Idempotency-Key` bookkeeping: a key is claimed `in_flight` by one server process (`owner`) under a lease it
//! renews while the request runs, then `done` with the response to replay, or forgotten when its request failed. An
//! expired key counts as new, and so does an in-flight one whose lease lapsed (its owner died mid-request); expired
//! rows are deleted by the periodic sweep.

macro_rules! ops {
    () => {
        use evershell_core::ids::OrgId;
        use evershell_core::{Result, Timestamp};

        use $crate::api::{IdempotencyBegin, IdempotencyClaim};
        use $crate::rows::IdempotencyRow;
        use $crate::tx::run;

        /// Write the key as a fresh `in_flight` claim, replacing whatever row (expired, abandoned, or of a dead
        /// owner) held it.
        async fn claim(c: &mut Conn, org: OrgId, key: &str, cl: &IdempotencyClaim<'_>) -> sqlx::Result<()> {
            sqlx::query(
                "INSERT INTO idempotency_keys \
                 (org_id, key, fingerprint, state, created_at, expires_at, owner, lease_expires_at) \
                 VALUES ($1, $2, $3, 'in_flight', $4, $5, $6, $7) ON CONFLICT (org_id, key) DO UPDATE SET \
                 fingerprint = excluded.fingerprint, state = 'in_flight', status_code = NULL, response_body = NULL, \
                 created_at = excluded.created_at, expires_at = excluded.expires_at, owner = excluded.owner, \
                 lease_expires_at = excluded.lease_expires_at",
            )
            .bind(org.to_string())
            .bind(key)
            .bind(cl.fingerprint)
            .bind(cl.now.millis())
            .bind(cl.expires_at.millis())
            .bind(cl.owner)
            .bind(cl.lease_until.millis())
            .execute(c)
            .await?;
            Ok(())
        }

        pub async fn idempotency_begin(
            s: &S,
            org: OrgId,
            key: &str,
            cl: &IdempotencyClaim<'_>,
        ) -> Result<IdempotencyBegin> {
            let cl = *cl;
            run("idempotency_begin", move || async move {
                let mut tx = s.begin().await?;
                // Claim the key; a concurrent claimant waits here (PostgreSQL) or behind BEGIN IMMEDIATE (SQLite).
                let claimed = sqlx::query(
                    "INSERT INTO idempotency_keys \
                     (org_id, key, fingerprint, state, created_at, expires_at, owner, lease_expires_at) \
                     VALUES ($1, $2, $3, 'in_flight', $4, $5, $6, $7) ON CONFLICT (org_id, key) DO NOTHING",
                )
                .bind(org.to_string())
                .bind(key)
                .bind(cl.fingerprint)
                .bind(cl.now.millis())
                .bind(cl.expires_at.millis())
                .bind(cl.owner)
                .bind(cl.lease_until.millis())
                .execute(&mut *tx)
                .await?;
                let existing: Option<IdempotencyRow> = if claimed.rows_affected() == 1 {
                    None
                } else {
                    sqlx::query_as(concat!(
                        "SELECT fingerprint, state, status_code, response_body, expires_at, lease_expires_at \
                         FROM idempotency_keys WHERE org_id = $1 AND key = $2",
                        for_update!()
                    ))
                    .bind(org.to_string())
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?
                };
                let now = cl.now.millis();
                let outcome = match existing {
                    // Claimed now, or the conflicting row was abandoned since: (re)claim it.
                    None => {
                        if claimed.rows_affected() == 0 {
                            claim(&mut tx, org, key, &cl).await?;
                        }
                        IdempotencyBegin::New
                    }
                    Some(row) if row.expires_at <= now => {
                        claim(&mut tx, org, key, &cl).await?;
                        IdempotencyBegin::New
                    }
                    Some(row) if row.fingerprint != cl.fingerprint => IdempotencyBegin::Mismatch,
                    Some(row) if row.state == "done" => IdempotencyBegin::Replay {
                        status: row.status_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(200),
                        body: row.response_body.unwrap_or_default(),
                    },
                    // In flight, but its owner stopped renewing the lease (it died): take it over. Rows from
                    // before leases existed have none and count as lapsed.
                    Some(row) if row.lease_expires_at.is_none_or(|l| l <= now) => {
                        claim(&mut tx, org, key, &cl).await?;
                        IdempotencyBegin::New
                    }
                    Some(_) => IdempotencyBegin::InFlight,
                };
                tx.commit().await?;
                Ok(outcome)
            })
            .await
        }

        pub async fn idempotency_renew(
            s: &S,
            org: OrgId,
            key: &str,
            owner: &str,
            lease_until: Timestamp,
        ) -> Result<bool> {
            run("idempotency_renew", move || async move {
                let mut tx = s.begin().await?;
                let r = sqlx::query(
                    "UPDATE idempotency_keys SET lease_expires_at = $4 \
                     WHERE org_id = $1 AND key = $2 AND owner = $3 AND state = 'in_flight'",
                )
                .bind(org.to_string())
                .bind(key)
                .bind(owner)
                .bind(lease_until.millis())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(r.rows_affected() == 1)
            })
            .await
        }

        pub async fn idempotency_complete(
            s: &S,
            org: OrgId,
            key: &str,
            owner: &str,
            status: u16,
            body: &str,
        ) -> Result<bool> {
            run("idempotency_complete", move || async move {
                let mut tx = s.begin().await?;
                let r = sqlx::query(
                    "UPDATE idempotency_keys SET state = 'done', status_code = $4, response_body = $5, \
                     lease_expires_at = NULL WHERE org_id = $1 AND key = $2 AND owner = $3 AND state = 'in_flight'",
                )
                .bind(org.to_string())
                .bind(key)
                .bind(owner)
                .bind(i64::from(status))
                .bind(body)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(r.rows_affected() == 1)
            })
            .await
        }

        pub async fn idempotency_abandon(s: &S, org: OrgId, key: &str, owner: &str) -> Result<()> {
            run("idempotency_abandon", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(
                    "DELETE FROM idempotency_keys \
                     WHERE org_id = $1 AND key = $2 AND owner = $3 AND state = 'in_flight'",
                )
                .bind(org.to_string())
                .bind(key)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn idempotency_sweep(s: &S, now: Timestamp, limit: u32) -> Result<u64> {
            run("idempotency_sweep", move || async move {
                let mut tx = s.begin().await?;
                let r = sqlx::query(
                    "DELETE FROM idempotency_keys WHERE (org_id, key) IN \
                     (SELECT org_id, key FROM idempotency_keys WHERE expires_at <= $1 LIMIT $2)",
                )
                .bind(now.millis())
                .bind(i64::from(limit))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(r.rows_affected())
            })
            .await
        }
    };
}
pub(crate) use ops;
