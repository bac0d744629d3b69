//! The egress proxy's queries: a pod's network observation (address and capability token, narrow updates beside the
//! generation-guarded workspace row, fenced by the reconciler's lease like every observation write), the lookup by address, and the caps budget counters — read, moved all or
//! nothing by compare-and-set on the values read (so concurrent requests cannot both pass one ceiling), and grown
//! by response bytes after the fact.

macro_rules! ops {
    () => {
        use evershell_core::ids::{PodId, WorkspaceId};
        use evershell_core::policy::Counter;
        use evershell_core::{Result, Timestamp};

        use $crate::api::{BudgetCounterMove, Fence, ObservationWrite, PodNetwork};
        use $crate::errors::db;
        use $crate::tx::run;

        fn to_i64(v: u64) -> i64 {
            i64::try_from(v).unwrap_or(i64::MAX)
        }

        pub async fn set_pod_network(
            s: &S,
            ws: WorkspaceId,
            pod: PodId,
            net: Option<&PodNetwork>,
            fence: &Fence,
        ) -> Result<ObservationWrite> {
            run("set_pod_network", move || async move {
                let mut tx = s.begin().await?;
                let done = sqlx::query(
                    "UPDATE workspaces SET pod_address = $3, pod_capability = $4, pod_capability_expires_at = $5 \
                     WHERE id = $1 AND pod_id = $2 AND lease_owner = $6 AND lease_epoch = $7",
                )
                .bind(ws.to_string())
                .bind(pod.to_string())
                .bind(net.map(|n| n.address.clone()))
                .bind(net.map(|n| n.capability.clone()))
                .bind(net.map(|n| n.capability_expires_at.millis()))
                .bind(fence.owner.as_str())
                .bind(fence.epoch)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 1 {
                    tx.commit().await?;
                    return Ok(ObservationWrite::Written);
                }
                let held: Option<i64> = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM workspaces WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3",
                )
                .bind(ws.to_string())
                .bind(fence.owner.as_str())
                .bind(fence.epoch)
                .fetch_optional(&mut *tx)
                .await?;
                Ok(if held.unwrap_or(0) == 1 { ObservationWrite::Stale } else { ObservationWrite::Fenced })
            })
            .await
        }

        pub async fn pod_network(s: &S, ws: WorkspaceId) -> Result<Option<(PodId, PodNetwork)>> {
            let row: Option<(Option<String>, Option<String>, Option<String>, Option<i64>)> = sqlx::query_as(
                "SELECT pod_id, pod_address, pod_capability, pod_capability_expires_at FROM workspaces WHERE id = $1",
            )
            .bind(ws.to_string())
            .fetch_optional(&s.read)
            .await
            .map_err(db)?;
            Ok(match row {
                Some((Some(pod), Some(address), Some(capability), Some(exp))) => pod.parse().ok().map(|pod| {
                    (pod, PodNetwork { address, capability, capability_expires_at: Timestamp::from_millis(exp) })
                }),
                _ => None,
            })
        }

        pub async fn workspace_by_pod_address(
            s: &S,
            address: &str,
        ) -> Result<Option<(WorkspaceId, PodId, Option<Timestamp>)>> {
            let row: Option<(String, Option<String>, Option<String>, Option<i64>)> = sqlx::query_as(
                "SELECT id, pod_id, pod_capability, pod_capability_expires_at FROM workspaces \
                 WHERE pod_address = $1 AND archived_at IS NULL ORDER BY updated_at DESC LIMIT 1",
            )
            .bind(address)
            .fetch_optional(&s.read)
            .await
            .map_err(db)?;
            let Some((id, pod, cap, exp)) = row else { return Ok(None) };
            let (Ok(id), Some(Ok(pod))) = (id.parse::<WorkspaceId>(), pod.map(|p| p.parse::<PodId>())) else {
                return Ok(None);
            };
            Ok(Some((id, pod, cap.and(exp).map(Timestamp::from_millis))))
        }

        pub async fn budget_counters(s: &S, keys: &[(String, String)]) -> Result<Vec<Counter>> {
            let mut out = Vec::with_capacity(keys.len());
            for (scope, name) in keys {
                let row: Option<(i64, i64)> =
                    sqlx::query_as("SELECT requests, bytes FROM egress_budgets WHERE scope = $1 AND name = $2")
                        .bind(scope.as_str())
                        .bind(name.as_str())
                        .fetch_optional(&s.read)
                        .await
                        .map_err(db)?;
                out.push(row.map_or_else(Counter::default, |(r, b)| Counter {
                    requests: r.max(0) as u64,
                    bytes: b.max(0) as u64,
                }));
            }
            Ok(out)
        }

        pub async fn charge_budgets(s: &S, moves: &[BudgetCounterMove], now: Timestamp) -> Result<bool> {
            run("charge_budgets", move || async move {
                let mut tx = s.begin().await?;
                for m in moves {
                    let zero = m.seen == Counter::default();
                    // A missing counter reads as zero: a move from zero inserts it (or finds it still at zero).
                    let sql = if zero {
                        "INSERT INTO egress_budgets (scope, name, requests, bytes, updated_at) \
                         VALUES ($1, $2, $3, $4, $7) \
                         ON CONFLICT (scope, name) DO UPDATE SET requests = $3, bytes = $4, updated_at = $7 \
                         WHERE egress_budgets.requests = $5 AND egress_budgets.bytes = $6"
                    } else {
                        "UPDATE egress_budgets SET requests = $3, bytes = $4, updated_at = $7 \
                         WHERE scope = $1 AND name = $2 AND requests = $5 AND bytes = $6"
                    };
                    let done = sqlx::query(sql)
                        .bind(m.scope.as_str())
                        .bind(m.name.as_str())
                        .bind(to_i64(m.new.requests))
                        .bind(to_i64(m.new.bytes))
                        .bind(to_i64(m.seen.requests))
                        .bind(to_i64(m.seen.bytes))
                        .bind(now.millis())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1;
                    if !done {
                        // Another request moved it first: nothing of this charge is kept.
                        return Ok(false);
                    }
                }
                tx.commit().await?;
                Ok(true)
            })
            .await
        }

        pub async fn add_budget_bytes(s: &S, scope: &str, name: &str, bytes: u64, now: Timestamp) -> Result<()> {
            run("add_budget_bytes", move || async move {
                let mut tx = s.begin().await?;
                sqlx::query(
                    "INSERT INTO egress_budgets (scope, name, requests, bytes, updated_at) VALUES ($1, $2, 0, $3, $4) \
                     ON CONFLICT (scope, name) DO UPDATE SET bytes = egress_budgets.bytes + $3, updated_at = $4",
                )
                .bind(scope)
                .bind(name)
                .bind(to_i64(bytes))
                .bind(now.millis())
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
