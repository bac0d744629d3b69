//! The audit log: org-wide and per workspace.

use axum::extract::{Path, State};
use evershell_app::audit_log::{AuditPage, AuditParams};
use evershell_core::Timestamp;
use evershell_core::audit::Order;
use evershell_core::ids::WorkspaceId;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Auth;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Params;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(query_audit)).routes(routes!(workspace_audit))
}

fn params(p: &Params) -> AuditParams {
    AuditParams {
        filter: p.all("filter"),
        from: p.get("from").map(str::to_string),
        to: p.get("to").map(str::to_string),
        order: p.get("order").map(str::to_string),
        limit: p.get("limit").map(str::to_string),
        cursor: p.get("cursor").map(str::to_string),
    }
}

/// Query the audit log (`audit:read:own`: only events the caller caused). Newest first by default; a `cursor` is
/// returned when the page is full.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    security(("bearer" = ["audit:read"]), ("bearer" = ["audit:read:own"])),
    params(
        ("filter" = Option<Vec<String>>, Query, description = "Repeatable (AND): `col=v1,v2` (IN), `col!=v1,v2` (NOT IN), `col!=` (set). Columns: event_type, category, actor, user_id, workspace_id, task_id, agent_role, agent_provider, target_type, target_id, destination, method, path, decision, reason, request_id"),
        ("from" = Option<Timestamp>, Query, description = "RFC 3339, inclusive"),
        ("to" = Option<Timestamp>, Query, description = "RFC 3339, exclusive"),
        ("order" = Option<Order>, Query, description = "`asc` or `desc` (default) on (timestamp, id)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 10000, description = "1–10000, default 100"),
        ("cursor" = Option<String>, Query, description = "Opaque; pass back unchanged"),
    ),
    responses((status = 200, body = AuditPage), (status = 400, description = "`validation_error`, `invalid_cursor`", body = ErrorBody)))]
pub async fn query_audit(State(s): State<AppState>, Auth(c): Auth, p: Params) -> ApiResult<axum::Json<AuditPage>> {
    Ok(axum::Json(s.app.query_audit(&c, params(&p), None).await?))
}

/// Every audit event of one workspace. Needs a workspace-read scope (creator match on `:own`) and an audit-read
/// scope; creators see every event of their workspace.
#[utoipa::path(get, path = "/v1/workspaces/{id}/audit", tag = "audit",
    security(
        ("bearer" = ["workspace:read", "audit:read"]), ("bearer" = ["workspace:read", "audit:read:own"]),
        ("bearer" = ["workspace:read:own", "audit:read"]), ("bearer" = ["workspace:read:own", "audit:read:own"]),
    ),
    params(
        ("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)"),
        ("filter" = Option<Vec<String>>, Query, description = "As for `GET /v1/audit`"),
        ("from" = Option<Timestamp>, Query, description = "RFC 3339, inclusive"),
        ("to" = Option<Timestamp>, Query, description = "RFC 3339, exclusive"),
        ("order" = Option<Order>, Query, description = "`asc` or `desc` (default)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 10000, description = "1–10000, default 100"),
        ("cursor" = Option<String>, Query, description = "Opaque; pass back unchanged"),
    ),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn workspace_audit(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    p: Params,
) -> ApiResult<axum::Json<AuditPage>> {
    let ws = s.app.readable_workspace(&c, &id).await?;
    Ok(axum::Json(s.app.query_audit(&c, params(&p), Some(ws.id)).await?))
}
