//! Tasks: submit (with a new workspace, or on an existing one), list, get, cancel the running task, and the agent's
//! session view. Submissions answer `202 {"task_id","workspace_id","status":"submitted"}` at once; the dispatcher
//! delivers the task when the workspace is idle and its earlier tasks have ended.
//!
//! Both submissions take JSON or `multipart/form-data`: the same fields as text parts (numbers, booleans and the
//! `metadata` object parsed from their text, a 400 naming the field otherwise) plus repeatable `file` parts, which
//! are streamed to the server's staging directory (`tasks::uploads`) and land at `/data/uploads/<task_id>/<name>`
//! in the pod before the agent hears of the task.

use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use evershell_app::tasks::uploads::Incoming;
use evershell_app::tasks::{CreateTask, SubmitTask, TaskAccepted};
use evershell_core::model::Task;
use evershell_core::{Error, Result};
use serde::de::DeserializeOwned;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Auth;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, parse_json};
use crate::multipart::{Multipart, boundary_of};
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
    request_body(content((CreateTask = "application/json"), (CreateTaskForm = "multipart/form-data"))),
    responses((status = 202, body = TaskAccepted), (status = 400, body = ErrorBody),
        (status = 403, description = "`permission_denied` (no tasks-write scope)", body = ErrorBody),
        (status = 404, description = "`role_not_found`", body = ErrorBody),
        (status = 409, description = "`role_archived`, `provider_archived`, `quota_exceeded`, `invalid_state` (the provider names no model endpoint)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: too many files, a file or all of them too large", body = ErrorBody),
        (status = 423, body = ErrorBody)))]
pub async fn create_task(State(s): State<AppState>, Auth(c): Auth, req: Request) -> ApiResult<impl IntoResponse> {
    let accepted = match multipart_boundary(&req)? {
        None => {
            let Json(body) = Json::<CreateTask>::from_request(req, &s).await?;
            s.app.create_task(&c, body).await?
        }
        Some(boundary) => {
            s.app.check_task_creator(&c)?;
            let (body, files) = read_form::<CreateTask>(&s, req.into_body(), &boundary, CREATE_FIELDS).await?;
            s.app.create_task_with_files(&c, body, Some(files)).await?
        }
    };
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)))
}

/// Queue a task on the workspace; it runs after the workspace's earlier tasks (one at a time).
#[utoipa::path(post, path = "/v1/workspaces/{id}/tasks", tag = "tasks",
    security(("bearer" = ["tasks:write"]), ("bearer" = ["tasks:write:own"])),
    params(("id" = String, Path, description = "Workspace id (`ws_…`)")),
    request_body(content((SubmitTask = "application/json"), (SubmitTaskForm = "multipart/form-data"))),
    responses((status = 202, body = TaskAccepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`workspace_stopped` (stopped or stopping), `workspace_failed`, `workspace_archived`, `invalid_state` (the provider names no model endpoint)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: too many files, a file or all of them too large", body = ErrorBody),
        (status = 423, body = ErrorBody)))]
pub async fn submit_task(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<impl IntoResponse> {
    let accepted = match multipart_boundary(&req)? {
        None => {
            let Json(body) = Json::<SubmitTask>::from_request(req, &s).await?;
            s.app.submit_task(&c, &id, body).await?
        }
        Some(boundary) => {
            // 404 and 403 before any file is received.
            s.app.check_task_submitter(&c, &id).await?;
            let (body, files) = read_form::<SubmitTask>(&s, req.into_body(), &boundary, SUBMIT_FIELDS).await?;
            s.app.submit_task_with_files(&c, &id, body, Some(files)).await?
        }
    };
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)))
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

/// `POST /v1/tasks` as `multipart/form-data` (the JSON fields as text parts, plus files).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CreateTaskForm {
    role_id: Option<String>,
    role_name: Option<String>,
    environment: Option<String>,
    description: String,
    /// `true` or `false`.
    reset_session: Option<bool>,
    thinking_effort: Option<String>,
    max_continuations: Option<i64>,
    max_context_tokens: Option<i64>,
    /// A JSON object, as text.
    metadata: Option<String>,
    /// Repeatable; each part's `filename` (one path component: no `/`, `\\`, `..`, NUL; 1–255 bytes; unique)
    /// names the file at `/data/uploads/<task_id>/<filename>`.
    #[schema(value_type = Option<Vec<String>>, format = Binary)]
    file: Option<Vec<Vec<u8>>>,
}

/// `POST /v1/workspaces/{id}/tasks` as `multipart/form-data` (the JSON fields as text parts, plus files).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SubmitTaskForm {
    description: String,
    /// `true` or `false`.
    reset_session: Option<bool>,
    thinking_effort: Option<String>,
    max_continuations: Option<i64>,
    max_context_tokens: Option<i64>,
    /// A JSON object, as text.
    metadata: Option<String>,
    /// Repeatable; see `CreateTaskForm.file`.
    #[schema(value_type = Option<Vec<String>>, format = Binary)]
    file: Option<Vec<Vec<u8>>>,
}

/// How a text part becomes a JSON field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Int,
    Bool,
    Object,
}

const SUBMIT_FIELDS: &[(&str, Kind)] = &[
    ("description", Kind::Text),
    ("reset_session", Kind::Bool),
    ("thinking_effort", Kind::Text),
    ("max_continuations", Kind::Int),
    ("max_context_tokens", Kind::Int),
    ("metadata", Kind::Object),
];
const CREATE_FIELDS: &[(&str, Kind)] = &[
    ("role_id", Kind::Text),
    ("role_name", Kind::Text),
    ("environment", Kind::Text),
    ("description", Kind::Text),
    ("reset_session", Kind::Bool),
    ("thinking_effort", Kind::Text),
    ("max_continuations", Kind::Int),
    ("max_context_tokens", Kind::Int),
    ("metadata", Kind::Object),
];
/// Largest text part (the description's own limit is checked by the app).
const MAX_TEXT_PART: usize = 256 * 1024;
/// After a refusal, at most this much more of the body is read (and dropped) so the client hears the answer.
const DRAIN_LIMIT: u64 = 8 << 20;

/// `Some(boundary)` for a multipart body; `None` for anything else (the JSON extractor judges it).
fn multipart_boundary(req: &Request) -> Result<Option<String>> {
    let Some(ct) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    boundary_of(ct).transpose()
}

/// A text part's value as the JSON field it stands for (a 400 naming the field when it cannot be).
fn field_value(name: &str, kind: Kind, text: String) -> Result<serde_json::Value> {
    let t = text.trim();
    Ok(match kind {
        Kind::Text => serde_json::Value::String(text),
        Kind::Int => serde_json::Value::from(
            t.parse::<i64>().map_err(|_| Error::invalid_field(name, format!("must be an integer, not `{t}`")))?,
        ),
        Kind::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "1" => serde_json::Value::Bool(true),
            "false" | "0" => serde_json::Value::Bool(false),
            _ => return Err(Error::invalid_field(name, "must be `true` or `false`")),
        },
        Kind::Object => match serde_json::from_str::<serde_json::Value>(t) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => return Err(Error::invalid_field(name, "must be a JSON object")),
        },
    })
}

/// Read a multipart submission: its text fields as `T`, its files staged. On any refusal, what was staged is
/// dropped (removed) and the rest of the body is read (within `DRAIN_LIMIT`) so the client gets the answer.
async fn read_form<T: DeserializeOwned>(
    s: &AppState,
    body: Body,
    boundary: &str,
    fields: &[(&str, Kind)],
) -> Result<(T, Incoming)> {
    let mut m = Multipart::from_body(body, boundary);
    let mut incoming = s.app.task_uploads().begin().await?;
    match read_parts(&mut m, &mut incoming, fields).await {
        Ok(map) => {
            incoming.end_file().await?;
            let json = serde_json::to_vec(&serde_json::Value::Object(map))
                .map_err(|e| Error::internal(anyhow::Error::from(e)))?;
            Ok((parse_json(&json)?, incoming))
        }
        Err(e) => {
            drop(incoming);
            drain(&mut m).await;
            Err(e)
        }
    }
}

async fn read_parts<S, E>(
    m: &mut Multipart<S>,
    incoming: &mut Incoming,
    fields: &[(&str, Kind)],
) -> Result<serde_json::Map<String, serde_json::Value>>
where
    S: futures::Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut map = serde_json::Map::new();
    while let Some(part) = m.next_part().await? {
        if part.name == "file" {
            let Some(filename) = part.filename else {
                return Err(Error::invalid_field("file", "a `file` part needs a filename"));
            };
            incoming.start_file(&filename).await?;
            while let Some(chunk) = m.chunk().await? {
                incoming.write(&chunk).await?;
            }
            continue;
        }
        let Some(&(name, kind)) = fields.iter().find(|(n, _)| *n == part.name) else {
            let shown: String = part.name.chars().take(64).collect();
            return Err(Error::invalid_field(shown, "unknown field"));
        };
        if map.contains_key(name) {
            return Err(Error::invalid_field(name, "is sent twice"));
        }
        let text = m.text(name, MAX_TEXT_PART).await?;
        map.insert(name.to_string(), field_value(name, kind, text)?);
    }
    Ok(map)
}

/// Read and drop what is left of a refused body, at most `DRAIN_LIMIT` bytes.
async fn drain<S, E>(m: &mut Multipart<S>)
where
    S: futures::Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut seen = 0u64;
    loop {
        match m.chunk().await {
            Ok(Some(c)) => seen += c.len() as u64,
            Ok(None) => match m.next_part().await {
                Ok(Some(_)) => {}
                _ => return,
            },
            Err(_) => return,
        }
        if seen > DRAIN_LIMIT {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use evershell_core::ErrorCode;

    use super::*;

    #[test]
    fn text_parts_become_typed_fields_or_name_the_field() {
        assert_eq!(field_value("max_continuations", Kind::Int, " 12 ".into()).unwrap(), serde_json::json!(12));
        assert_eq!(field_value("reset_session", Kind::Bool, "TRUE".into()).unwrap(), serde_json::json!(true));
        assert_eq!(field_value("metadata", Kind::Object, r#"{"a":1}"#.into()).unwrap(), serde_json::json!({"a":1}));
        assert_eq!(field_value("description", Kind::Text, " keep ".into()).unwrap(), serde_json::json!(" keep "));
        for (name, kind, text) in [
            ("max_continuations", Kind::Int, "ten"),
            ("reset_session", Kind::Bool, "yes"),
            ("metadata", Kind::Object, "[1]"),
            ("metadata", Kind::Object, "{"),
        ] {
            let e = field_value(name, kind, text.into()).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationError);
            assert!(serde_json::to_string(&e.details).unwrap().contains(name), "{name}: {:?}", e.details);
        }
    }
}
