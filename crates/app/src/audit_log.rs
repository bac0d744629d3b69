//! Reading the audit trail: `GET /v1/audit` and `GET /v1/workspaces/{id}/audit` (filter grammar, time range, order,
//! limit and keyset cursor), with `audit:read:own` narrowing to the caller's own events.

use evershell_core::audit::{AuditEvent, AuditQuery, Cursor, DEFAULT_LIMIT, MAX_LIMIT, Order, parse_filters};
use evershell_core::ids::WorkspaceId;
use evershell_core::scope::{Reach, Scope};
use evershell_core::{FieldErrors, Result, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::App;
use crate::caller::Caller;

/// The query string of the audit routes, as received.
#[derive(Debug, Clone, Default)]
pub struct AuditParams {
    pub filter: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub order: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// One page of audit events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Present when the page is full: pass it back as `cursor` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

fn parse_time(errs: &mut FieldErrors, field: &str, v: &Option<String>) -> Option<Timestamp> {
    let v = v.as_deref()?;
    let t = Timestamp::parse_rfc3339(v);
    if t.is_none() {
        errs.add(field, "must be an RFC 3339 timestamp");
    }
    t
}

impl App {
    pub async fn query_audit(
        &self,
        caller: &Caller,
        p: AuditParams,
        workspace: Option<WorkspaceId>,
    ) -> Result<AuditPage> {
        let mut errs = FieldErrors::default();
        let conditions = match parse_filters(&p.filter) {
            Ok(c) => c,
            Err(e) => return Err(e),
        };
        let from = parse_time(&mut errs, "from", &p.from);
        let to = parse_time(&mut errs, "to", &p.to);
        let (order, limit) = parse_page(&mut errs, p.order.as_deref(), p.limit.as_deref());
        errs.into_result()?;
        let after = p.cursor.as_deref().map(|c| Cursor::decode(c, order)).transpose()?;
        // `/workspaces/{id}/audit` shows every event of a visible workspace; the org-wide log narrows `:own` callers
        // to the events they caused.
        let user_id = match (workspace, caller.reach(Scope::AuditRead)?) {
            (Some(_), _) | (None, Reach::Org) => None,
            (None, Reach::Own) => Some(caller.audit_user()),
        };
        let q = AuditQuery {
            org_id: caller.org_id,
            conditions,
            workspace_id: workspace,
            user_id,
            from,
            to,
            order,
            limit,
            after,
        };
        let events = self.store.query_audit(&q).await?;
        let cursor = (events.len() as i64 == limit)
            .then(|| events.last().map(|e| Cursor { timestamp_ms: e.timestamp.millis(), id: e.id, order }.encode()))
            .flatten();
        Ok(AuditPage { events, cursor })
    }
}

/// `order` (asc/desc, default desc) and `limit` (1..=`MAX_LIMIT`, default `DEFAULT_LIMIT`) of an audit or activity
/// page, each bad value named in `errs`.
pub(crate) fn parse_page(errs: &mut FieldErrors, order: Option<&str>, limit: Option<&str>) -> (Order, i64) {
    let order = match order {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(_) => {
            errs.add("order", "must be asc or desc");
            Order::Desc
        }
    };
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                errs.add("limit", format!("must be an integer from 1 to {MAX_LIMIT}"));
                DEFAULT_LIMIT
            }
        },
    };
    (order, limit)
}
