//! Sign-in throttle counters and password resets. The counters hold no policy: the app reads them, decides, and
//! counts an attempt with a compare-and-set on the values it read, so two replicas (or two connections) that read
//! the same counter cannot both pass one check — the loser gets `false` and reads again.

macro_rules! ops {
    () => {
        use evershell_core::audit::AuditEvent;
        use evershell_core::ids::UserId;
        use evershell_core::{Result, Timestamp};

        use $crate::api::{LoginClaim, LoginCounter};
        use $crate::errors::db;
        use $crate::tx::run;

        pub async fn login_counters(s: &S, keys: &[String]) -> Result<Vec<LoginCounter>> {
            // One round trip for an attempt's (at most two) keys: the throttled path is this read alone.
            let rows: Vec<(String, i64, i64, Option<i64>)> = match keys {
                [] => vec![],
                [a] => {
                    sqlx::query_as("SELECT key, failures, last_failure_at, noted_at FROM login_throttle WHERE key = $1")
                        .bind(a.as_str())
                        .fetch_all(&s.read)
                        .await
                        .map_err(db)?
                }
                [a, b] => sqlx::query_as(
                    "SELECT key, failures, last_failure_at, noted_at FROM login_throttle WHERE key IN ($1, $2)",
                )
                .bind(a.as_str())
                .bind(b.as_str())
                .fetch_all(&s.read)
                .await
                .map_err(db)?,
                more => {
                    let mut all = vec![];
                    for k in more.chunks(2) {
                        all.extend(Box::pin(login_counters(s, k)).await?.into_iter().map(|c| {
                            (c.key, c.failures, c.last_failure_at.millis(), c.noted_at.map(Timestamp::millis))
                        }));
                    }
                    all
                }
            };
            let mut out: Vec<LoginCounter> = rows
                .into_iter()
                .map(|(key, failures, last, noted)| LoginCounter {
                    key,
                    failures,
                    last_failure_at: Timestamp::from_millis(last),
                    noted_at: noted.map(Timestamp::from_millis),
                })
                .collect();
            // In the order the keys were asked for.
            out.sort_by_key(|c| keys.iter().position(|k| *k == c.key));
            Ok(out)
        }

        pub async fn count_login_attempt(
            s: &S,
            claims: &[LoginClaim],
            now: Timestamp,
            stale_before: Timestamp,
        ) -> Result<bool> {
            run("count_login_attempt", move || async move {
                let mut tx = s.begin().await?;
                for c in claims {
                    let done = match &c.seen {
                        None => {
                            sqlx::query(
                                "INSERT INTO login_throttle (key, failures, last_failure_at, noted_at) \
                                 VALUES ($1, $2, $3, NULL) ON CONFLICT (key) DO NOTHING",
                            )
                            .bind(c.key.as_str())
                            .bind(c.failures)
                            .bind(now.millis())
                            .execute(&mut *tx)
                            .await?
                        }
                        Some(seen) => {
                            sqlx::query(
                                "UPDATE login_throttle SET failures = $2, last_failure_at = $3, noted_at = NULL \
                                 WHERE key = $1 AND failures = $4 AND last_failure_at = $5",
                            )
                            .bind(c.key.as_str())
                            .bind(c.failures)
                            .bind(now.millis())
                            .bind(seen.failures)
                            .bind(seen.last_failure_at.millis())
                            .execute(&mut *tx)
                            .await?
                        }
                    };
                    if done.rows_affected() != 1 {
                        // Someone counted first: nothing of this attempt is kept (the transaction rolls back).
                        return Ok(false);
                    }
                }
                sqlx::query("DELETE FROM login_throttle WHERE last_failure_at < $1")
                    .bind(stale_before.millis())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            })
            .await
        }

        pub async fn settle_login_attempt(
            s: &S,
            clear: &[String],
            forgive: &[String],
            audit: &[AuditEvent],
        ) -> Result<()> {
            run("settle_login_attempt", move || async move {
                let mut tx = s.begin().await?;
                for key in clear {
                    sqlx::query("DELETE FROM login_throttle WHERE key = $1")
                        .bind(key.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                for key in forgive {
                    sqlx::query("UPDATE login_throttle SET failures = failures - 1 WHERE key = $1 AND failures > 0")
                        .bind(key.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn note_login_throttled(
            s: &S,
            key: &str,
            last_failure_at: Timestamp,
            audit: &[AuditEvent],
        ) -> Result<bool> {
            run("note_login_throttled", move || async move {
                let mut tx = s.begin().await?;
                let done = sqlx::query(
                    "UPDATE login_throttle SET noted_at = $2 \
                     WHERE key = $1 AND last_failure_at = $2 AND noted_at IS NULL",
                )
                .bind(key)
                .bind(last_failure_at.millis())
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

        pub async fn reset_password(
            s: &S,
            user: UserId,
            password_hash: &str,
            now: Timestamp,
            audit: &[AuditEvent],
        ) -> Result<u64> {
            run("reset_password", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                    .bind(user.to_string())
                    .bind(password_hash)
                    .execute(&mut *tx)
                    .await?;
                let revoked =
                    sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL")
                        .bind(user.to_string())
                        .bind(now.millis())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                super::audit::insert(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(revoked)
            })
            .await
        }
    };
}
pub(crate) use ops;
