//! Files of a workspace: the live sandbox (through the pod's agent) and the latest snapshot (read from the archive).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use evershell_app::files::{DEFAULT_MAX_BYTES, FileContent, FileList};
use evershell_core::files::FileEntry;
use evershell_core::ids::WorkspaceId;
use evershell_core::{Error, ErrorCode, FieldErrors};
use futures::{StreamExt, TryStreamExt};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Auth;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Params;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sandbox_list))
        .routes(routes!(sandbox_read, sandbox_put))
        .routes(routes!(sandbox_download))
        .routes(routes!(sandbox_exec))
        .routes(routes!(snapshot_list))
        .routes(routes!(snapshot_read))
        .routes(routes!(snapshot_download))
}

fn max_bytes(p: &Params) -> evershell_core::Result<u64> {
    let mut errs = FieldErrors::default();
    let v = p.uint(&mut errs, "max_bytes", 64 << 20).unwrap_or(DEFAULT_MAX_BYTES);
    errs.into_result().map(|()| v)
}

fn attachment(entry: &FileEntry, body: Body) -> Response {
    let name = entry.path.rsplit('/').next().unwrap_or("file").replace(['"', '\\', '\r', '\n'], "_");
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&entry.size.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    res
}

/// List every file in the live sandbox. Needs a running (`idle`/`busy`) workspace.
#[utoipa::path(get, path = "/v1/workspaces/{id}/sandbox/files", tag = "files",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)")),
    responses((status = 200, body = FileList), (status = 404, body = ErrorBody),
        (status = 409, description = "`workspace_stopped`, `workspace_failed`, `workspace_provisioning`", body = ErrorBody),
        (status = 502, description = "`agent_unreachable`", body = ErrorBody)))]
pub async fn sandbox_list(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<FileList>> {
    Ok(axum::Json(s.app.sandbox_list(&c, &id).await?))
}

/// Run a command in the live sandbox as the sandbox user, in `/workspace`, under the pod's own policy: its own
/// process group, stdin from `stdin` (else `/dev/null`), stdout and stderr capped at 1 MiB each (`truncated`), the
/// whole group killed at `timeout_ms` (default 30000, at most 600000). Returns once the command exits (a background
/// child it leaves keeps running). Audited as `workspace_exec` (program and exit code, never the arguments).
#[utoipa::path(post, path = "/v1/workspaces/{id}/sandbox/exec", tag = "files",
    security(("bearer" = ["workspace:write"]), ("bearer" = ["workspace:write:own"])),
    params(("id" = String, Path, description = "Workspace id (`ws_…`)")),
    request_body = evershell_core::exec::ExecRequest,
    responses((status = 200, body = evershell_core::exec::ExecResult),
        (status = 400, description = "Invalid request, or no such program in the sandbox", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`workspace_stopped`, `workspace_failed`, `workspace_provisioning`", body = ErrorBody),
        (status = 423, body = ErrorBody),
        (status = 502, description = "`agent_unreachable`", body = ErrorBody)))]
pub async fn sandbox_exec(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    crate::extract::Json(req): crate::extract::Json<evershell_core::exec::ExecRequest>,
) -> ApiResult<axum::Json<evershell_core::exec::ExecResult>> {
    Ok(axum::Json(s.app.sandbox_exec(&c, &id, req).await?))
}

/// Read one live file as JSON: UTF-8 `content` (or `null` for binary), cut at `max_bytes` (default 524288).
#[utoipa::path(get, path = "/v1/workspaces/{id}/sandbox/files/{*path}", tag = "files",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)"),
        ("path" = String, Path, description = "Slash-separated path under /workspace"),
        ("max_bytes" = Option<u64>, Query, maximum = 67108864, description = "Read at most this many bytes (default 524288, at most 64 MiB)")),
    responses((status = 200, body = FileContent), (status = 400, description = "Invalid path", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn sandbox_read(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((id, path)): Path<(String, String)>,
    p: Params,
) -> ApiResult<axum::Json<FileContent>> {
    Ok(axum::Json(s.app.sandbox_read(&c, &id, &path, max_bytes(&p)?).await?))
}

/// Write raw bytes to a file in the live sandbox (parent directories created, replaced atomically).
#[utoipa::path(put, path = "/v1/workspaces/{id}/sandbox/files/{*path}", tag = "files",
    security(("bearer" = ["workspace:write"]), ("bearer" = ["workspace:write:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)"),
        ("path" = String, Path, description = "Slash-separated path under /workspace")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = FileEntry), (status = 400, description = "Invalid path", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 423, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn sandbox_put(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((id, path)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<axum::Json<FileEntry>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let limit = s.limits.max_upload_bytes;
    let too_large = || Error::new(ErrorCode::PayloadTooLarge, format!("the upload is larger than {limit} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large().into());
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let flag = exceeded.clone();
    let mut seen = 0u64;
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .and_then(move |chunk| {
            seen += chunk.len() as u64;
            let over = seen > limit;
            if over {
                flag.store(true, Ordering::SeqCst);
            }
            async move { if over { Err(std::io::Error::other("upload too large")) } else { Ok(chunk) } }
        })
        .boxed();
    match s.app.sandbox_put(&c, &id, &path, stream).await {
        Err(_) if exceeded.load(Ordering::SeqCst) => Err(too_large().into()),
        other => Ok(axum::Json(other?)),
    }
}

/// Stream one live file as raw bytes (no size cap).
#[utoipa::path(get, path = "/v1/workspaces/{id}/sandbox/download/{*path}", tag = "files",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)"),
        ("path" = String, Path, description = "Slash-separated path under /workspace")),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
pub async fn sandbox_download(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((id, path)): Path<(String, String)>,
) -> ApiResult<Response> {
    let d = s.app.sandbox_download(&c, &id, &path).await?;
    Ok(attachment(&d.entry, Body::from_stream(d.body)))
}

/// List the files of the workspace's latest snapshot, read from the archive without unpacking it.
#[utoipa::path(get, path = "/v1/workspaces/{id}/snapshot/files", tag = "files",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)")),
    responses((status = 200, body = FileList),
        (status = 404, description = "`workspace_not_found`, `snapshot_not_found`", body = ErrorBody)))]
pub async fn snapshot_list(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<FileList>> {
    Ok(axum::Json(s.app.snapshot_list(&c, &id).await?))
}

/// Read one snapshot file as JSON: UTF-8 `content` (or `null` for binary), cut at `max_bytes` (default 524288).
#[utoipa::path(get, path = "/v1/workspaces/{id}/snapshot/files/{*path}", tag = "files",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)"),
        ("path" = String, Path, description = "Slash-separated path inside the snapshot"),
        ("max_bytes" = Option<u64>, Query, maximum = 67108864, description = "Read at most this many bytes (default 524288, at most 64 MiB)")),
    responses((status = 200, body = FileContent), (status = 400, body = ErrorBody),
        (status = 404, description = "`workspace_not_found`, `snapshot_not_found`, `file_not_found`", body = ErrorBody)))]
pub async fn snapshot_read(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((id, path)): Path<(String, String)>,
    p: Params,
) -> ApiResult<axum::Json<FileContent>> {
    Ok(axum::Json(s.app.snapshot_read(&c, &id, &path, max_bytes(&p)?).await?))
}

/// Stream one snapshot file as raw bytes (binary-safe, no size cap).
#[utoipa::path(get, path = "/v1/workspaces/{id}/snapshot/download/{*path}", tag = "files",
    security(("bearer" = ["workspace:read"]), ("bearer" = ["workspace:read:own"])),
    params(("id" = WorkspaceId, Path, description = "Workspace id (`ws_…`)"),
        ("path" = String, Path, description = "Slash-separated path inside the snapshot")),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn snapshot_download(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((id, path)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (entry, stream) = s.app.snapshot_download(&c, &id, &path).await?;
    Ok(attachment(&entry, Body::from_stream(stream)))
}
