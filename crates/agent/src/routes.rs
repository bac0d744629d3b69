//! The agent's HTTP surface: `/healthz`, `/v1/info`, the live file routes under `/v1/files`, `/v1/exec`, and the
//! task routes of `evershell_core::agent_wire` (`/v1/tasks…`, `/v1/events`, `/v1/session`). One span per request
//! carrying the pod id; paths are logged, file contents and task text never.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use evershell_core::files::RelPath;
use tokio_util::io::ReaderStream;
use tracing::Instrument;

use crate::error::{AgentErr, envelope};
use crate::{exec, fsops, info, upload};

/// Header carrying the downloaded file's `FileEntry` as JSON.
pub const ENTRY_HEADER: &str = "x-evershell-entry";

pub struct AgentState {
    /// Canonical workspace root.
    pub root: PathBuf,
    pub pod_id: Option<String>,
    pub tasks: Arc<crate::task::Tasks>,
}

pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/info", get(info_route))
        .route("/v1/files", get(list_files))
        .route("/v1/files/{*path}", get(download).put(put_file).layer(DefaultBodyLimit::disable()))
        .route("/v1/exec", axum::routing::post(exec_route))
        .route("/v1/tasks", axum::routing::post(deliver_task))
        .route("/v1/tasks/{task_id}", get(task_status))
        .route("/v1/tasks/{task_id}/cancel", axum::routing::post(cancel_task))
        .route("/v1/events", get(events))
        .route("/v1/session", get(session_view))
        .fallback(|| async { envelope(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            envelope(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        })
        .layer(middleware::from_fn_with_state(state.clone(), trace_request))
        .with_state(state)
}

async fn trace_request(State(state): State<Arc<AgentState>>, req: Request, next: Next) -> Response {
    let pod = state.pod_id.as_deref().unwrap_or("-");
    let span = tracing::info_span!("request", pod_id = %pod, method = %req.method(), path = %req.uri().path());
    async move {
        let started = Instant::now();
        let res = next.run(req).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if res.status().is_server_error() {
            tracing::warn!(status = res.status().as_u16(), ms, "request failed");
        } else {
            tracing::debug!(status = res.status().as_u16(), ms, "request");
        }
        res
    }
    .instrument(span)
    .await
}

async fn healthz(State(state): State<Arc<AgentState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "pod_id": state.pod_id }))
}

async fn info_route(State(state): State<Arc<AgentState>>) -> Json<info::Info> {
    Json(info::collect(state.pod_id.clone()))
}

async fn list_files(State(state): State<Arc<AgentState>>) -> Result<Response, AgentErr> {
    let root = state.root.clone();
    let listing = tokio::task::spawn_blocking(move || fsops::list(&root, fsops::MAX_ENTRIES))
        .await
        .map_err(|e| AgentErr::Io(std::io::Error::other(e)))??;
    if listing.truncated {
        tracing::warn!(entries = listing.entries.len(), "file listing truncated");
    }
    let body = serde_json::json!({ "entries": listing.entries, "truncated": listing.truncated });
    Ok(Json(body).into_response())
}

fn parse_path(path: Result<Path<String>, PathRejection>) -> Result<RelPath, AgentErr> {
    let Path(raw) = path.map_err(|e| AgentErr::InvalidPath(e.body_text()))?;
    RelPath::parse(&raw).map_err(|why| AgentErr::InvalidPath(format!("path {why}")))
}

async fn download(
    State(state): State<Arc<AgentState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, AgentErr> {
    let rel = parse_path(path)?;
    let root = state.root.clone();
    let (file, entry) = tokio::task::spawn_blocking(move || fsops::open_for_read(&root, &rel))
        .await
        .map_err(|e| AgentErr::Io(std::io::Error::other(e)))??;
    let len = entry.size.max(0) as u64;
    let entry_json = serde_json::to_vec(&entry).map_err(|e| AgentErr::Io(std::io::Error::other(e)))?;
    // Read at most the length announced, so a file growing meanwhile cannot break the framing.
    let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), len);
    let mut res = Response::new(Body::from_stream(ReaderStream::with_capacity(reader, 64 * 1024)));
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_bytes(&entry_json) {
        headers.insert(ENTRY_HEADER, v);
    }
    Ok(res)
}

async fn put_file(
    State(state): State<Arc<AgentState>>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<evershell_core::files::FileEntry>, AgentErr> {
    let rel = parse_path(path)?;
    let entry = upload::put_file(&state.root, &rel, body).await?;
    tracing::info!(file = %rel, bytes = entry.size, "file written");
    Ok(Json(entry))
}

async fn exec_route(
    State(state): State<Arc<AgentState>>,
    body: Result<Json<evershell_core::exec::ExecRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<evershell_core::exec::ExecResult>, AgentErr> {
    let Json(req) = body.map_err(|e| AgentErr::BadBody(e.body_text()))?;
    req.validate().map_err(AgentErr::BadBody)?;
    let program = req.argv[0].clone();
    let result = exec::run(&state.root, req).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AgentErr::NotFound(format!("program `{program}`")),
        _ => AgentErr::Io(e),
    })?;
    tracing::info!(%program, exit_code = ?result.exit_code, ms = result.duration_ms, "command run");
    Ok(Json(result))
}

async fn deliver_task(
    State(state): State<Arc<AgentState>>,
    body: Result<Json<evershell_core::agent_wire::TaskDelivery>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(d) = match body {
        Ok(b) => b,
        Err(e) => return envelope(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    match state.tasks.deliver(d) {
        Ok(status) => (StatusCode::ACCEPTED, Json(status)).into_response(),
        Err(crate::task::DeliverError::Busy(id)) => {
            envelope(StatusCode::CONFLICT, "agent_busy", &format!("task {id} has not ended yet"))
        }
    }
}

fn unknown_task() -> Response {
    envelope(StatusCode::NOT_FOUND, "not_found", "this agent process never saw that task")
}

async fn task_status(State(state): State<Arc<AgentState>>, Path(raw): Path<String>) -> Response {
    let Ok(id) = raw.parse::<evershell_core::ids::TaskId>() else { return unknown_task() };
    match state.tasks.status(&id) {
        Some(s) => Json(s).into_response(),
        None => unknown_task(),
    }
}

async fn cancel_task(State(state): State<Arc<AgentState>>, Path(raw): Path<String>) -> Response {
    let Ok(id) = raw.parse::<evershell_core::ids::TaskId>() else { return unknown_task() };
    match state.tasks.cancel(&id) {
        Some(s) => (StatusCode::ACCEPTED, Json(s)).into_response(),
        None => unknown_task(),
    }
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    wait_ms: u64,
}

async fn events(
    State(state): State<Arc<AgentState>>,
    q: Result<axum::extract::Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => return envelope(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    Json(state.tasks.events.poll(q.after, q.wait_ms).await).into_response()
}

async fn session_view(State(state): State<Arc<AgentState>>) -> Result<Json<serde_json::Value>, AgentErr> {
    let tasks = state.tasks.clone();
    Ok(Json(tasks.session_view()?))
}
