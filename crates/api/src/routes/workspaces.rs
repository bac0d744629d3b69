//! Workspaces and their lifecycle calls. Lifecycle calls answer at once (`202 {"status": "stopping"}` …) or, with
//! `?wait=true&timeout_ms=N`, hold until the workspace settles and answer with the workspace itself (`200` when it
//! settled, `202` when the timeout passed first).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use evershell_app::workspaces::{CreateWorkspace, LifecycleCall, ListWorkspaces, StatusAnswer, StoppingAnswer};
use evershell_core::FieldErrors;
use evershell_core::ids::WorkspaceId;
use evershell_core::lifecycle::WorkspaceStatus;
use evershell_core::model::Workspace;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Auth;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Params};
use crate::paging::{self, PageParams};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_workspace, list_workspaces))
        .routes(routes!(get_workspace))
        .routes(routes!(stop_workspace))
        .routes(routes!(resume_workspace))
        .routes(routes!(restart_workspace))
        .routes(routes!(archive_workspace))
        .routes(routes!(unarchive_workspace))
        .routes(routes!(stop_all))
        .routes(routes!(fork_workspace))
}

/// `{"workspaces": […]}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceList {
    pub workspaces: Vec<Workspace>,
    /// Present when `limit` cut the list: pass it back as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Default `timeout_ms` of `?wait=true`.
const DEFAULT_WAIT_MS: u64 = 60_000;

/// `?wait=true&timeout_ms=N` → `Some(timeout)`.
fn wait_of(s: &AppState, p: &Params, errs: &mut FieldErrors) -> Option<Duration> {
    let wait = p.flag(errs, "wait", false);
    let timeout = p.uint(errs, "timeout_ms", s.limits.max_wait_ms).unwrap_or(DEFAULT_WAIT_MS.min(s.limits.max_wait_ms));
    wait.then(|| Duration::from_millis(timeout))
}

async fn lifecycle(
    s: &AppState,
    c: &evershell_app::Caller,
    id: &str,
    p: &Params,
    call: impl Fn(&Params, &mut FieldErrors) -> LifecycleCall,
) -> ApiResult<Response> {
    let mut errs = FieldErrors::default();
    let call = call(p, &mut errs);
    let wait = wait_of(s, p, &mut errs);
    errs.into_result()?;
    let ws = s.app.lifecycle(c, id, call).await?;
    if let Some(timeout) = wait {
        let (view, settled) = s.app.wait_settled(c, ws.id, timeout).await?;
        let code = if settled { StatusCode::OK } else { StatusCode::ACCEPTED };
        return Ok((code, axum::Json(view)).into_response());
    }
    let code = match call {
        LifecycleCall::Archive | LifecycleCall::Unarchive => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    Ok((code, axum::Json(StatusAnswer { status: call.answer().into() })).into_response())
}

/// Create a workspace (by `role_id` or `role_name`); it provisions a pod and becomes `idle`.
#[utoipa::path(post, path = "/v1/workspaces", tag = "workspaces",
    security(("bearer" = ["workspace:write"]), ("bearer" = ["workspace:write:own"])),
    params(("wait" = Option<bool>, Query, description = "Hold until the workspace settles"),
        ("timeout_ms" = Option<u64>, Query, maximum = 300000, description = "Longest hold for `wait` in ms (default 60000, at most `limits.max_wait_ms`, 300000 unless configured lower)")),
    request_body = CreateWorkspace,
    responses((status = 201, body = Workspace), (status = 400, body = ErrorBody),
        (status = 404, description = "`role_not_found`", body = ErrorBody),
        (status = 409, description = "`role_archived`, `provider_archived`, `quota_exceeded`", body = ErrorBody), (status = 423, body = ErrorBody)))]
pub async fn create_workspace(
    State(s): State<AppState>,
    Auth(c): Auth,
    p: Params,
    Json(req): Json<CreateWorkspace>,
) -> ApiResult<impl IntoResponse> {
    let mut errs = FieldErrors::default();
    let wait = wait_of(&s, &p, &mut errs);
    errs.into_result()?;
    let mut ws = s.app.create_workspace(&c, req).await?;
    if let Some(timeout) = wait {
        ws = s.app.wait_settled(&c, ws.id, timeout).await?.0;
    }
    Ok((StatusCode::CREATED, axum::Json(ws)))
}

/// List workspaces (`workspace:read:own`: only the caller's). An unknown `role_name` is 404 `role_not_found`.
#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(("role_name" = Option<String>, Query, description = "Only this role's workspaces"),
        ("status" = Option<WorkspaceStatus>, Query, description = "Only workspaces in this status"),
        ("include_archived" = Option<bool>, Query, description = "Also list archived workspaces"),
        ("limit" = Option<u32>, Query, description = "Page size (1-1000); without it the whole list"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, body = WorkspaceList), (status = 400, description = "`validation_error` (limit), `invalid_cursor`", body = ErrorBody),
        (status = 404, description = "`role_not_found`", body = ErrorBody)))]
pub async fn list_workspaces(State(s): State<AppState>, Auth(c): Auth, uri: Uri, p: Params) -> ApiResult<Response> {
    let mut errs = FieldErrors::default();
    let include_archived = p.flag(&mut errs, "include_archived", false);
    errs.into_result()?;
    let pp = PageParams::parse(&p, "workspaces")?;
    let before = match &pp.after {
        Some(id) => Some(id.parse().map_err(|_| {
            evershell_core::Error::new(evershell_core::ErrorCode::InvalidCursor, "the cursor is malformed")
        })?),
        None => None,
    };
    let q = ListWorkspaces {
        role_name: p.get("role_name").map(str::to_string),
        status: p.get("status").map(str::to_string),
        include_archived,
        before,
        // One more than asked, to know whether a next page exists.
        limit: pp.limit.map(|l| l + 1),
    };
    let mut workspaces = s.app.list_workspaces(&c, q).await?;
    let next = match pp.limit {
        Some(l) if workspaces.len() > l as usize => {
            workspaces.truncate(l as usize);
            workspaces.last().map(|w| paging::encode("workspaces", &w.id.to_string()))
        }
        _ => None,
    };
    Ok(paging::answer(&uri, WorkspaceList { workspaces, next_cursor: next.clone() }, next.as_deref()))
}

/// Get a workspace; with `wait=true`, once it has settled.
#[utoipa::path(get, path = "/v1/workspaces/{id}", tag = "workspaces",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)"),
        ("wait" = Option<bool>, Query, description = "Hold until the workspace settles"),
        ("timeout_ms" = Option<u64>, Query, maximum = 300000, description = "Longest hold for `wait` in ms (default 60000, at most `limits.max_wait_ms`, 300000 unless configured lower)")),
    responses((status = 200, body = Workspace), (status = 403, description = "`workspace_not_visible`", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get_workspace(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    p: Params,
) -> ApiResult<axum::Json<Workspace>> {
    let mut errs = FieldErrors::default();
    let wait = wait_of(&s, &p, &mut errs);
    errs.into_result()?;
    let ws = s.app.get_workspace(&c, &id).await?;
    match wait {
        Some(timeout) => Ok(axum::Json(s.app.wait_settled(&c, ws.id, timeout).await?.0)),
        None => Ok(axum::Json(ws)),
    }
}

/// Stop: `idle`/`busy` → `stopping` → `stopped`, `/workspace` saved to a verified snapshot.
#[utoipa::path(post, path = "/v1/workspaces/{id}/stop", tag = "workspaces",
    security(("bearer" = ["workspace:write"]), ("bearer" = ["workspace:write:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)"),
        ("wait" = Option<bool>, Query, description = "Hold until the workspace settles; answer with the workspace"),
        ("timeout_ms" = Option<u64>, Query, maximum = 300000, description = "Longest hold for `wait` in ms (default 60000, at most `limits.max_wait_ms`, 300000 unless configured lower)")),
    responses((status = 202, body = StatusAnswer, example = json!({"status": "stopping"})),
        (status = 200, description = "With `wait=true`: the settled workspace", body = Workspace),
        (status = 404, body = ErrorBody), (status = 409, description = "`invalid_state`", body = ErrorBody)))]
pub async fn stop_workspace(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    p: Params,
) -> ApiResult<Response> {
    lifecycle(&s, &c, &id, &p, |_, _| LifecycleCall::Stop).await
}

/// Resume: provisions a fresh pod and restores the saved snapshot (verified first); `stopped` → `provisioning` →
/// `idle`. Also recovers a `failed` workspace from its snapshot or its retained files. A workspace without any
/// snapshot needs `allow_empty=true`. Gated on `tasks:write` because it makes tasks runnable again.
#[utoipa::path(post, path = "/v1/workspaces/{id}/resume", tag = "workspaces",
    security(("bearer" = ["tasks:write"]), ("bearer" = ["tasks:write:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)"),
        ("allow_empty" = Option<bool>, Query, description = "Resume with an empty /workspace when there is no snapshot"),
        ("wait" = Option<bool>, Query, description = "Hold until the workspace settles; answer with the workspace"),
        ("timeout_ms" = Option<u64>, Query, maximum = 300000, description = "Longest hold for `wait` in ms (default 60000, at most `limits.max_wait_ms`, 300000 unless configured lower)")),
    responses((status = 202, description = "Resume initiated", body = StatusAnswer, example = json!({"status": "resuming"})),
        (status = 200, description = "With `wait=true`: the settled workspace", body = Workspace),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`workspace_archived`, `role_archived`, `provider_archived`, `invalid_state`, `snapshot_missing`", body = ErrorBody),
        (status = 423, body = ErrorBody)))]
pub async fn resume_workspace(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    p: Params,
) -> ApiResult<Response> {
    lifecycle(&s, &c, &id, &p, |p, errs| LifecycleCall::Resume { allow_empty: p.flag(errs, "allow_empty", false) })
        .await
}

/// Restart: snapshot, fresh pod, restore, `idle`. A `busy` workspace needs `force=true`.
#[utoipa::path(post, path = "/v1/workspaces/{id}/restart", tag = "workspaces",
    security(("bearer" = ["workspace:write"]), ("bearer" = ["workspace:write:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)"),
        ("force" = Option<bool>, Query, description = "Restart a busy workspace, interrupting its task"),
        ("wait" = Option<bool>, Query, description = "Hold until the workspace settles; answer with the workspace"),
        ("timeout_ms" = Option<u64>, Query, maximum = 300000, description = "Longest hold for `wait` in ms (default 60000, at most `limits.max_wait_ms`, 300000 unless configured lower)")),
    responses((status = 202, description = "Restart initiated", body = StatusAnswer, example = json!({"status": "restarting"})),
        (status = 200, description = "With `wait=true`: the settled workspace", body = Workspace),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`workspace_archived`, `invalid_state`, `workspace_busy`", body = ErrorBody),
        (status = 423, body = ErrorBody)))]
pub async fn restart_workspace(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    p: Params,
) -> ApiResult<Response> {
    lifecycle(&s, &c, &id, &p, |p, errs| LifecycleCall::Restart { force: p.flag(errs, "force", false) }).await
}

/// Archive a `stopped` or `failed` workspace (status unchanged; hidden from default listings).
#[utoipa::path(post, path = "/v1/workspaces/{id}/archive", tag = "workspaces",
    security(("bearer" = ["workspace:write"]), ("bearer" = ["workspace:write:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)")),
    responses((status = 200, body = StatusAnswer, example = json!({"status": "archived"})), (status = 404, body = ErrorBody),
        (status = 409, description = "`invalid_state`", body = ErrorBody)))]
pub async fn archive_workspace(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    p: Params,
) -> ApiResult<Response> {
    lifecycle(&s, &c, &id, &p, |_, _| LifecycleCall::Archive).await
}

/// Unarchive a workspace.
#[utoipa::path(post, path = "/v1/workspaces/{id}/unarchive", tag = "workspaces",
    security(("bearer" = ["workspace:write"]), ("bearer" = ["workspace:write:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)")),
    responses((status = 200, body = StatusAnswer, example = json!({"status": "unarchived"})), (status = 404, body = ErrorBody),
        (status = 409, description = "`not_archived`, `quota_exceeded`", body = ErrorBody), (status = 423, body = ErrorBody)))]
pub async fn unarchive_workspace(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    p: Params,
) -> ApiResult<Response> {
    lifecycle(&s, &c, &id, &p, |_, _| LifecycleCall::Unarchive).await
}

/// Stop every idle or busy workspace of the org (bulk: unscoped `workspace:write` only).
#[utoipa::path(post, path = "/v1/workspaces/stop-all", tag = "workspaces", security(("bearer" = ["workspace:write"])),
    responses((status = 200, body = StoppingAnswer)))]
pub async fn stop_all(State(s): State<AppState>, Auth(c): Auth) -> ApiResult<axum::Json<StoppingAnswer>> {
    Ok(axum::Json(s.app.stop_all(&c).await?))
}

/// Fork: a new workspace owned by the caller whose `/workspace` is the parent's right after
/// `fork_point_task_count` completed tasks (`0`: as the parent was created). It provisions like a resume, from that
/// checkpoint; the parent keeps running untouched. Reading the parent is enough.
#[utoipa::path(post, path = "/v1/workspaces/{id}/fork", tag = "workspaces",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(("id" = WorkspaceId, Path, description = "The parent workspace's id (`ws_…`)")),
    request_body = evershell_app::forks::ForkWorkspace,
    responses((status = 202, description = "Fork initiated", body = evershell_app::forks::ForkAnswer),
        (status = 400, description = "`validation_error` (`fork_point_task_count` missing, negative or not an integer)", body = ErrorBody),
        (status = 403, description = "`workspace_not_visible`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`snapshot_missing` (past the completed tasks, a checkpoint pruned, failed or not written yet), `role_archived`, `provider_archived`, `quota_exceeded`", body = ErrorBody),
        (status = 423, body = ErrorBody)))]
pub async fn fork_workspace(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    Json(req): Json<evershell_app::forks::ForkWorkspace>,
) -> ApiResult<Response> {
    let answer = s.app.fork_workspace(&c, &id, req).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(answer)).into_response())
}
