//! The audit log: append-only inserts (in the caller's transaction) and `AuditQuery` — org, workspace and user
//! scoping, `filter=` conditions, a `[from, to)` window, `(timestamp, id)` order and its keyset cursor.

use evershell_core::audit::{AuditQuery, FilterOp, Order};

/// A value bound to a dynamically built statement.
pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

/// A statement assembled at run time: placeholders are numbered as values are pushed.
#[derive(Default)]
struct Sql {
    text: String,
    binds: Vec<Bind>,
}

impl Sql {
    fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// Append `$N` for `value`.
    fn bind(&mut self, value: Bind) -> &mut Self {
        self.binds.push(value);
        self.text.push_str(&format!("${}", self.binds.len()));
        self
    }

    fn bind_list(&mut self, values: &[String]) -> &mut Self {
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(Bind::Text(v.clone()));
        }
        self
    }
}

/// Every column of `audit_events`, in `AuditRow` order.
pub(crate) const AUDIT_COLS: &str = "id, org_id, user_id, \"timestamp\", event_type, category, actor, workspace_id, \
     task_id, agent_role, agent_provider, target_type, target_id, destination, method, path, decision, reason, \
     latency_ms, request_id, details";

/// The SELECT for one page of `q`. Condition columns come from `FILTER_COLUMNS` (static strings), so splicing them
/// is safe; every value is a bound parameter.
pub(crate) fn build_query(q: &AuditQuery) -> (String, Vec<Bind>) {
    let mut sql = Sql::default();
    sql.push("SELECT ").push(AUDIT_COLS).push(" FROM audit_events WHERE org_id = ");
    sql.bind(Bind::Text(q.org_id.to_string()));
    if let Some(ws) = q.workspace_id {
        sql.push(" AND workspace_id = ").bind(Bind::Text(ws.to_string()));
    }
    if let Some(user) = &q.user_id {
        sql.push(" AND user_id = ").bind(Bind::Text(user.clone()));
    }
    for c in &q.conditions {
        let col = c.column;
        match &c.op {
            FilterOp::In(vs) if vs.is_empty() => {
                sql.push(" AND 1 = 0");
            }
            FilterOp::In(vs) => {
                sql.push(&format!(" AND {col} IN (")).bind_list(vs).push(")");
            }
            FilterOp::NotIn(vs) if vs.is_empty() => {}
            // Rows without the column are "not one of these values" too.
            FilterOp::NotIn(vs) => {
                sql.push(&format!(" AND ({col} IS NULL OR {col} NOT IN (")).bind_list(vs).push("))");
            }
            FilterOp::NotEmpty => {
                sql.push(&format!(" AND {col} IS NOT NULL AND {col} <> ''"));
            }
        }
    }
    if let Some(from) = q.from {
        sql.push(" AND \"timestamp\" >= ").bind(Bind::Int(from.millis()));
    }
    if let Some(to) = q.to {
        sql.push(" AND \"timestamp\" < ").bind(Bind::Int(to.millis()));
    }
    let (cmp, dir) = match q.order {
        Order::Asc => (">", "ASC"),
        Order::Desc => ("<", "DESC"),
    };
    if let Some(after) = q.after {
        // `(timestamp, id) > (a, b)` written portably.
        sql.push(&format!(" AND (\"timestamp\" {cmp} ")).bind(Bind::Int(after.timestamp_ms));
        sql.push(" OR (\"timestamp\" = ").bind(Bind::Int(after.timestamp_ms));
        sql.push(&format!(" AND id {cmp} ")).bind(Bind::Text(after.id.to_string())).push("))");
    }
    sql.push(&format!(" ORDER BY \"timestamp\" {dir}, id {dir} LIMIT ")).bind(Bind::Int(q.limit.max(0)));
    (sql.text, sql.binds)
}

macro_rules! ops {
    () => {
        use evershell_core::Result;
        use evershell_core::audit::{AuditEvent, AuditQuery};

        use $crate::errors::db;
        use $crate::queries::audit::{Bind, build_query};
        use $crate::rows::{AuditRow, text, to_json};
        use $crate::tx::run;

        /// Write `events` in the caller's transaction; its activity rows are published when it commits.
        pub async fn insert(tx: &mut $crate::feed::Tx<Db>, events: &[AuditEvent]) -> $crate::tx::TxResult<()> {
            tx.note(events);
            let c = tx.conn();
            for e in events {
                let details = e.details.as_ref().map(to_json).transpose()?;
                sqlx::query(concat!(
                    "INSERT INTO audit_events (id, org_id, user_id, \"timestamp\", event_type, category, actor, ",
                    "workspace_id, task_id, agent_role, agent_provider, target_type, target_id, destination, method, ",
                    "path, decision, reason, latency_ms, request_id, details) VALUES ",
                    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
                ))
                .bind(e.id.to_string())
                .bind(e.org_id.to_string())
                .bind(e.user_id.as_str())
                .bind(e.timestamp.millis())
                .bind(e.event_type.as_str())
                .bind(e.category.as_str())
                .bind(e.actor.as_str())
                .bind(text(e.workspace_id.as_ref()))
                .bind(text(e.task_id.as_ref()))
                .bind(e.agent_role.as_deref())
                .bind(e.agent_provider.as_deref())
                .bind(e.target_type.as_deref())
                .bind(e.target_id.as_deref())
                .bind(e.destination.as_deref())
                .bind(e.method.as_deref())
                .bind(e.path.as_deref())
                .bind(e.decision.as_deref())
                .bind(e.reason.as_deref())
                .bind(e.latency_ms)
                .bind(e.request_id.as_deref())
                .bind(details)
                .execute(&mut *c)
                .await?;
            }
            Ok(())
        }

        pub async fn append_audit(s: &S, events: &[AuditEvent]) -> Result<()> {
            if events.is_empty() {
                return Ok(());
            }
            run("append_audit", move || async move {
                let mut tx = s.begin().await?;
                insert(&mut tx, events).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        }

        pub async fn query_audit(s: &S, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
            let (sql, binds) = build_query(q);
            let mut query = sqlx::query_as::<Db, AuditRow>(sqlx::AssertSqlSafe(sql));
            for b in binds {
                query = match b {
                    Bind::Text(t) => query.bind(t),
                    Bind::Int(i) => query.bind(i),
                };
            }
            let rows = query.fetch_all(&s.read).await.map_err(db)?;
            rows.into_iter().map(AuditEvent::try_from).collect()
        }

        pub async fn get_audit_event(
            s: &S,
            org: evershell_core::ids::OrgId,
            id: uuid::Uuid,
        ) -> Result<Option<AuditEvent>> {
            let sql = format!(
                "SELECT {} FROM audit_events WHERE org_id = $1 AND id = $2",
                $crate::queries::audit::AUDIT_COLS
            );
            let row = sqlx::query_as::<Db, AuditRow>(sqlx::AssertSqlSafe(sql))
                .bind(org.to_string())
                .bind(id.to_string())
                .fetch_optional(&s.read)
                .await
                .map_err(db)?;
            row.map(AuditEvent::try_from).transpose()
        }
    };
}
pub(crate) use ops;

#[cfg(test)]
mod tests {
    use evershell_core::audit::{Condition, Cursor, DEFAULT_LIMIT};
    use evershell_core::ids::OrgId;

    use super::*;

    #[test]
    fn numbers_placeholders_in_push_order() {
        let q = AuditQuery {
            org_id: OrgId::new(),
            conditions: vec![
                Condition { column: "event_type", op: FilterOp::In(vec!["a".into(), "b".into()]) },
                Condition { column: "decision", op: FilterOp::NotIn(vec!["deny".into()]) },
                Condition { column: "workspace_id", op: FilterOp::NotEmpty },
            ],
            workspace_id: None,
            user_id: Some("system".into()),
            from: None,
            to: None,
            order: Order::Asc,
            limit: DEFAULT_LIMIT,
            after: Some(Cursor { timestamp_ms: 5, id: uuid::Uuid::nil(), order: Order::Asc }),
        };
        let (sql, binds) = build_query(&q);
        assert_eq!(binds.len(), 9);
        for n in 1..=9 {
            assert!(sql.contains(&format!("${n}")), "{sql}");
        }
        assert!(sql.contains("event_type IN ($3, $4)"), "{sql}");
        assert!(sql.contains("(decision IS NULL OR decision NOT IN ($5))"), "{sql}");
        assert!(sql.contains("workspace_id IS NOT NULL AND workspace_id <> ''"), "{sql}");
        assert!(sql.ends_with("ORDER BY \"timestamp\" ASC, id ASC LIMIT $9"), "{sql}");
    }
}
