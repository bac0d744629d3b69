//! The agent's error type and its one mapping to an HTTP response: `{"error":{"code":…,"message":…}}`.

use std::io;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use evershell_core::files::RelPath;

/// Why a file route failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentErr {
    #[error("invalid path: {0}")]
    InvalidPath(String),
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("is a directory: {0}")]
    IsDirectory(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("request body could not be read: {0}")]
    BadBody(String),
    #[error("no space left on the workspace volume")]
    NoSpace,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl AgentErr {
    /// Classify an I/O error met while working on `rel`.
    pub fn from_io(e: io::Error, rel: &RelPath) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => return AgentErr::NotFound(rel.to_string()),
            Some(libc::EISDIR) => return AgentErr::IsDirectory(rel.to_string()),
            Some(libc::ELOOP) => return AgentErr::InvalidPath(format!("`{rel}` is or passes through a symlink loop")),
            Some(libc::ENAMETOOLONG) => return AgentErr::InvalidPath(format!("`{rel}` has a component too long")),
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                return AgentErr::PermissionDenied(rel.to_string());
            }
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => return AgentErr::NoSpace,
            _ => {}
        }
        AgentErr::Io(e)
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AgentErr::InvalidPath(_) => (StatusCode::BAD_REQUEST, "invalid_path"),
            AgentErr::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AgentErr::IsDirectory(_) => (StatusCode::BAD_REQUEST, "is_a_directory"),
            AgentErr::NotADirectory(_) => (StatusCode::BAD_REQUEST, "not_a_directory"),
            AgentErr::PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission_denied"),
            AgentErr::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AgentErr::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
            AgentErr::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// An error envelope with an arbitrary status (for fallbacks).
pub fn envelope(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, Json(body)).into_response()
}

impl IntoResponse for AgentErr {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "file route failed");
        }
        envelope(status, code, &self.to_string())
    }
}
