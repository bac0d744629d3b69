//! Tasks: submit (with a new workspace, or on an existing one), list, get, cancel the running task, and the agent's
//! session view. Submissions answer `202 {"task_id","workspace_id","status":"submitted"}` at once; the dispatcher
//! delivers the task when the workspace is idle and its earlier tasks have ended.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use evershell_app::tasks::{CreateTask, SubmitTask, TaskAccepted};
use evershell_core::model::Task;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Auth;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Json;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_task))
        .routes(routes!(submit_task, list_tasks))
        .routes(routes!(get_task))
        .routes(routes!(cancel_task))
        .routes(routes!(get_session))
}

/// Create a workspace of the role (by `role_id` or `role_name`) and queue its first task; the workspace moves
/// `provisioning → idle → busy` on its own. Needs a tasks-write scope too (`tasks:write` or `tasks:write:own`).
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks",
    security(("bearer" = ["workspace:write"]), ("bearer" = ["workspace:write:own"])),
    request_body = CreateTask,
    responses((status = 202, body = TaskAccepted), (status = 400, body = ErrorBody),
        (status = 403, description = "`permission_denied` (no tasks-write scope)", body = ErrorBody),
        (status = 404, description = "`role_not_found`", body = ErrorBody),
        (status = 409, description = "`role_archived`, `provider_archived`, `quota_exceeded`, `invalid_state` (the provider names no model endpoint)", body = ErrorBody),
        (status = 423, body = ErrorBody)))]
pub async fn create_task(
    State(s): State<AppState>,
    Auth(c): Auth,
    Json(req): Json<CreateTask>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::ACCEPTED, axum::Json(s.app.create_task(&c, req).await?)))
}

/// Queue a task on the workspace; it runs after the workspace's earlier tasks (one at a time).
#[utoipa::path(post, path = "/v1/workspaces/{id}/tasks", tag = "tasks",
    security(("bearer" = ["tasks:write"]), ("bearer" = ["tasks:write:own"])),
    params(("id" = String, Path, description = "Workspace id (`ws_…`)")),
    request_body = SubmitTask,
    responses((status = 202, body = TaskAccepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`workspace_stopped` (stopped or stopping), `workspace_failed`, `workspace_archived`, `invalid_state` (the provider names no model endpoint)", body = ErrorBody),
        (status = 423, body = ErrorBody)))]
pub async fn submit_task(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    Json(req): Json<SubmitTask>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::ACCEPTED, axum::Json(s.app.submit_task(&c, &id, req).await?)))
}

/// The workspace's tasks, newest first (a bare array).
#[utoipa::path(get, path = "/v1/workspaces/{id}/tasks", tag = "tasks",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(("id" = String, Path, description = "Workspace id (`ws_…`)")),
    responses((status = 200, body = Vec<Task>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_tasks(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Vec<Task>>> {
    Ok(axum::Json(s.app.list_tasks(&c, &id).await?))
}

/// One task.
#[utoipa::path(get, path = "/v1/workspaces/{id}/tasks/{tid}", tag = "tasks",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(("id" = String, Path, description = "Workspace id (`ws_…`)"),
        ("tid" = String, Path, description = "Task id (`task_…`)")),
    responses((status = 200, body = Task), (status = 403, body = ErrorBody),
        (status = 404, description = "`workspace_not_found`, `task_not_found`", body = ErrorBody)))]
pub async fn get_task(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((id, tid)): Path<(String, String)>,
) -> ApiResult<axum::Json<Task>> {
    Ok(axum::Json(s.app.get_task(&c, &id, &tid).await?))
}

/// Cancel the workspace's running task: the agent finishes its current iteration, then the task ends `cancelled`;
/// the pod keeps running and later tasks run normally. A task still queued at the head ends `cancelled` at once.
#[utoipa::path(post, path = "/v1/workspaces/{id}/task/cancel", tag = "tasks",
    security(("bearer" = ["workspace:write"]), ("bearer" = ["workspace:write:own"])),
    params(("id" = String, Path, description = "Workspace id (`ws_…`)")),
    responses((status = 202, body = TaskAccepted), (status = 404, body = ErrorBody),
        (status = 409, description = "`workspace_stopped`, `workspace_failed`, `workspace_provisioning`; `invalid_state` when no task is running or queued", body = ErrorBody),
        (status = 502, description = "`agent_unreachable`", body = ErrorBody)))]
pub async fn cancel_task(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::ACCEPTED, axum::Json(s.app.cancel_task(&c, &id).await?)))
}

/// The agent's session view (task history, iteration counters, context usage), proxied from the pod; its shape
/// belongs to the agent.
#[utoipa::path(get, path = "/v1/workspaces/{id}/session", tag = "tasks",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(("id" = String, Path, description = "Workspace id (`ws_…`)")),
    responses((status = 200, description = "The agent's session view (opaque)", body = Object),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`workspace_stopped`, `workspace_failed`, `workspace_provisioning`", body = ErrorBody),
        (status = 502, description = "`agent_unreachable`", body = ErrorBody)))]
pub async fn get_session(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    Ok(axum::Json(s.app.task_session(&c, &id).await?))
}
