//! The per-request time limit: a request whose response head is not ready within `limits.request_timeout_ms` is
//! dropped and answered `503 unavailable`. A `?wait=true` request may hold `limits.max_wait_ms` longer (its own
//! limit); a file upload (and a task submitted with files) gets `limits.upload_timeout_ms` instead, and a command run in a sandbox (`sandbox/exec`)
//! the longest deadline a command may have plus the base limit. Response bodies (downloads) stream past the limit.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use evershell_core::{Error, ErrorCode};

use crate::error::ApiError;
use crate::state::Limits;

/// The time limit of one request.
pub fn limit_of(limits: &Limits, method: &Method, path: &str, query: Option<&str>) -> Duration {
    let base = Duration::from_millis(limits.request_timeout_ms);
    if method == Method::PUT && path.contains("/sandbox/files/") {
        return Duration::from_millis(limits.upload_timeout_ms);
    }
    if method == Method::POST && path.ends_with("/sandbox/exec") {
        // The command's own deadline (at most `MAX_TIMEOUT_MS`) bounds it; the agent client adds its margin.
        return base + Duration::from_millis(evershell_core::exec::MAX_TIMEOUT_MS);
    }
    let waits = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "wait" && matches!(v.as_ref(), "true" | "1"))
    });
    if waits { base + Duration::from_millis(limits.max_wait_ms) } else { base }
}

pub async fn enforce(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let mut limit = limit_of(&limits, req.method(), req.uri().path(), req.uri().query());
    // A task submitted with files (multipart) is an upload.
    let multipart = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().to_ascii_lowercase().starts_with(b"multipart/"));
    if multipart && req.method() == Method::POST && req.uri().path().ends_with("/tasks") {
        limit = limit.max(Duration::from_millis(limits.upload_timeout_ms));
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!(limit_ms = limit.as_millis() as u64, "request timed out");
            ApiError(Error::new(
                ErrorCode::Unavailable,
                format!("the request was not answered within {} ms", limit.as_millis()),
            ))
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_and_uploads_get_their_own_limits() {
        let l = Limits { request_timeout_ms: 1000, max_wait_ms: 5000, upload_timeout_ms: 9000, ..Limits::default() };
        let ms = |m: Method, p: &str, q: Option<&str>| limit_of(&l, &m, p, q).as_millis();
        assert_eq!(ms(Method::GET, "/v1/workspaces", None), 1000);
        assert_eq!(ms(Method::POST, "/v1/workspaces", Some("wait=true&timeout_ms=10")), 6000);
        assert_eq!(ms(Method::POST, "/v1/workspaces", Some("wait=false")), 1000);
        assert_eq!(ms(Method::PUT, "/v1/workspaces/ws_1/sandbox/files/a/b", None), 9000);
        assert_eq!(ms(Method::GET, "/v1/workspaces/ws_1/sandbox/files/a/b", None), 1000);
        assert_eq!(ms(Method::POST, "/v1/workspaces/ws_1/sandbox/exec", None), 601_000);
    }
}
