//! `Idempotency-Key` bookkeeping: a key is claimed `in_flight`, then `done` with the response to replay, or forgotten
//! when its request failed; an expired key counts as new.

macro_rules! ops {
    () => {
        use evershell_core::ids::OrgId;
        use evershell_core::{Result, Timestamp};

        use $crate::api::IdempotencyBegin;
        use $crate::rows::IdempotencyRow;
        use $crate::tx::run;

        /// Write the key as a fresh `in_flight` claim, replacing whatever row (expired or abandoned) held it.
        async fn claim(
            c: &mut Conn,
            org: OrgId,
            key: &str,
            fingerprint: &str,
            now: Timestamp,
            expires_at: Timestamp,
        ) -> sqlx::Result<()> {
            sqlx::query(
                "INSERT INTO idempotency_keys (org_id, key, fingerprint, state, created_at, expires_at) \
                 VALUES ($1, $2, $3, 'in_flight', $4, $5) ON CONFLICT (org_id, key) DO UPDATE SET \
                 fingerprint = excluded.fingerprint, state = 'in_flight', status_code = NULL, response_body = NULL, \
                 created_at = excluded.created_at, expires_at = excluded.expires_at",
            )
            .bind(org.to_string())
            .bind(key)
            .bind(fingerprint)
            .bind(now.millis())
            .bind(expires_at.millis())
            .execute(c)
            .await?;
            Ok(())
        }

        pub async fn idempotency_begin(
            s: &S,
            org: OrgId,
            key: &str,
            fingerprint: &str,
            now: Timestamp,
            expires_at: Timestamp,
        ) -> Result<IdempotencyBegin> {
            run("idempotency_begin", move || async move {
                let mut tx = s.begin().await?;
                // Claim the key; a concurrent claimant waits here (PostgreSQL) or behind BEGIN IMMEDIATE (SQLite).
                let claimed = sqlx::query(
                    "INSERT INTO idempotency_keys (org_id, key, fingerprint, state, created_at, expires_at) \
                     VALUES ($1, $2, $3, 'in_flight', $4, $5) ON CONFLICT (org_id, key) DO NOTHING",
                )
                .bind(org.to_string())
                .bind(key)
                .bind(fingerprint)
                .bind(now.millis())
                .bind(expires_at.millis())
                .execute(&mut *tx)
                .await?;
                let existing: Option<IdempotencyRow> = if claimed.rows_affected() == 1 {
                    None
                } else {
                    sqlx::query_as(concat!(
                        "SELECT fingerprint, state, status_code, response_body, expires_at FROM idempotency_keys \
                         WHERE org_id = $1 AND key = $2",
                        for_update!()
                    ))
                    .bind(org.to_string())
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?
                };
                let outcome = match existing {
                    // Claimed now, or the conflicting row was abandoned since: (re)claim it.
                    None => {
                        if claimed.rows_affected() == 0 {
                            claim(&mut tx, org, key, fingerprint, now, expires_at).await?;
                        }
                        IdempotencyBegin::New
                    }
                    Some(row) if row.expires_at <= now.millis() => {
                        claim(&mut tx, org, key, fingerprint, now, expires_at).await?;
                        IdempotencyBegin::New
                    }
                    Some(row) if row.fingerprint != fingerprint => IdempotencyBegin::Mismatch,
                    Some(row) if row.state == "done" => IdempotencyBegin::Replay {
                        status: row.status_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(200),
                        body: row.response_body.unwrap_or_default(),
                    },
                    Some(_) => IdempotencyBegin::InFlight,
                };
                tx.commit().await?;
                Ok(outcome)
            })
            .await
        }

        pub async fn idempotency_complete(s: &S, org: OrgId, key: &str, status: u16, body: &str) -> Result<()> {
            run("idempotency_complete", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(
                    "UPDATE idempotency_keys SET state = 'done', status_code = $3, response_body = $4 \
                     WHERE org_id = $1 AND key = $2",
                )
                .bind(org.to_string())
                .bind(key)
                .bind(i64::from(status))
                .bind(body)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn idempotency_abandon(s: &S, org: OrgId, key: &str) -> Result<()> {
            run("idempotency_abandon", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query("DELETE FROM idempotency_keys WHERE org_id = $1 AND key = $2 AND state = 'in_flight'")
                    .bind(org.to_string())
                    .bind(key)
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
