//! Activity: a workspace's history (`GET /v1/workspaces/{id}/activity`) and the live SSE streams, org-wide and per
//! workspace (`…/activity/stream`). The SSE routes also accept `?api_key=` (see `access`).

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use evershell_app::activity::{ActivityParams, StreamItem};
use evershell_app::audit_log::AuditPage;
use evershell_core::Timestamp;
use evershell_core::audit::{EventType, Order};
use evershell_core::ids::{TaskId, WorkspaceId};
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Auth;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Params;
use crate::state::AppState;

/// The OpenAPI paths of the streams: the only routes that accept `?api_key=`.
pub const STREAM_PATHS: &[&str] = &["/v1/activity/stream", "/v1/workspaces/{id}/activity/stream"];

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(workspace_activity))
        .routes(routes!(org_stream))
        .routes(routes!(workspace_stream))
}

/// A workspace's activity (`category = activity` events: lifecycle, agent and egress events), newest first by
/// default. `after` (events strictly after a timestamp) or `cursor`, not both; a `cursor` is returned when the page
/// is full.
#[utoipa::path(get, path = "/v1/workspaces/{id}/activity", tag = "activity",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(
        ("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)"),
        ("task_id" = Option<TaskId>, Query, description = "Only this task's events"),
        ("event_type" = Option<EventType>, Query, description = "Only events of this type"),
        ("after" = Option<Timestamp>, Query, description = "RFC 3339: only events strictly after it (not with `cursor`)"),
        ("order" = Option<Order>, Query, description = "`asc` or `desc` (default) on (timestamp, id)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 10000, description = "1–10000, default 100"),
        ("cursor" = Option<String>, Query, description = "Opaque; pass back unchanged (not with `after`)"),
    ),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, description = "`validation_error` (also `after` with `cursor`), `invalid_cursor`", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn workspace_activity(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    p: Params,
) -> ApiResult<axum::Json<AuditPage>> {
    let ws = s.app.readable_workspace(&c, &id).await?;
    let params = ActivityParams {
        task_id: p.get("task_id").map(str::to_string),
        event_type: p.get("event_type").map(str::to_string),
        after: p.get("after").map(str::to_string),
        cursor: p.get("cursor").map(str::to_string),
        order: p.get("order").map(str::to_string),
        limit: p.get("limit").map(str::to_string),
    };
    Ok(axum::Json(s.app.list_activity(&c, ws.id, params).await?))
}

const STREAM_DESCRIPTION: &str = "`text/event-stream`: frames `event: activity\\nid: <event id>\\ndata: <AuditEvent JSON>\\n\\n`, \
     a `: heartbeat` comment about every 15 s; the server ends the stream after 5 minutes (reconnect with \
     `Last-Event-ID` to get exactly the events missed).";

/// Live activity of the whole org (SSE). `workspace:read:own` callers get only the events of workspaces they
/// created. Send `Last-Event-ID` to replay what came after that event first. Clients that cannot set headers may
/// pass an API key as `?api_key=`.
#[utoipa::path(get, path = "/v1/activity/stream", tag = "activity",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(
        ("api_key" = Option<String>, Query, description = "An API key (`sk_…`) for clients that cannot set headers; never a session token"),
        ("Last-Event-ID" = Option<String>, Header, description = "Replay the events after this one"),
    ),
    responses(
        (status = 200, description = STREAM_DESCRIPTION, content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_cursor`: Last-Event-ID is not an event id", body = ErrorBody),
    ))]
pub async fn org_stream(State(s): State<AppState>, Auth(c): Auth, headers: HeaderMap) -> ApiResult<Response> {
    let rx = s.app.activity_stream(&c, None, last_event_id(&headers)).await?;
    Ok(sse(rx))
}

/// Live activity of one workspace (SSE); as `GET /v1/activity/stream`.
#[utoipa::path(get, path = "/v1/workspaces/{id}/activity/stream", tag = "activity",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(
        ("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)"),
        ("api_key" = Option<String>, Query, description = "An API key (`sk_…`) for clients that cannot set headers; never a session token"),
        ("Last-Event-ID" = Option<String>, Header, description = "Replay the events after this one"),
    ),
    responses(
        (status = 200, description = STREAM_DESCRIPTION, content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_cursor`: Last-Event-ID is not an event id", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn workspace_stream(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let ws = s.app.readable_workspace(&c, &id).await?;
    let rx = s.app.activity_stream(&c, Some(ws.id), last_event_id(&headers)).await?;
    Ok(sse(rx))
}

fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("last-event-id").and_then(|v| v.to_str().ok())
}

/// One SSE frame. The JSON of an event is one line (serde escapes newlines inside strings).
fn frame(item: StreamItem) -> Bytes {
    match item {
        StreamItem::Heartbeat => Bytes::from_static(b": heartbeat\n\n"),
        StreamItem::Event(e) => Bytes::from(format!("event: activity\nid: {}\ndata: {}\n\n", e.event.id, e.json())),
    }
}

fn sse(rx: mpsc::Receiver<StreamItem>) -> Response {
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (Ok::<_, Infallible>(frame(item)), rx))
    });
    let mut res = Body::from_stream(body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies must pass frames on as they come.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}
