//! The outermost middleware: assigns the request id (keeping a sane incoming `X-Request-Id`), opens the request's
//! tracing span, and makes sure every error response leaves as the envelope with that id — including responses
//! produced outside handlers (router 404/405, body limits, panics).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use evershell_core::ErrorCode;
use tracing::Instrument;

use crate::error::{ErrorBody, ErrorDetail, PendingError};

pub const REQUEST_ID: &str = "x-request-id";

/// The request id, available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn sane(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

pub async fn finish(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut res = next.run(req).instrument(span).await;
    let pending = res.extensions_mut().remove::<PendingError>();
    let status = res.status();
    let rendered = match pending {
        Some(p) => Some(p),
        None if (status.is_client_error() || status.is_server_error()) && !is_json(&res) => Some(fallback(status)),
        None => None,
    };
    if let Some(p) = rendered {
        let body = ErrorBody {
            error: ErrorDetail { code: p.code, message: p.message, request_id: id.clone(), details: p.details },
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let headers = res.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.remove(header::CONTENT_LENGTH);
        *res.body_mut() = Body::from(bytes);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    res
}

fn is_json(res: &Response) -> bool {
    res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
}

/// An envelope for error responses that did not come from a handler.
fn fallback(status: StatusCode) -> PendingError {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (ErrorCode::MethodNotAllowed, "method not allowed on this route"),
        StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, "the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (ErrorCode::UnsupportedMediaType, "unsupported Content-Type"),
        StatusCode::UNAUTHORIZED => (ErrorCode::Unauthenticated, "missing or invalid credential"),
        StatusCode::SERVICE_UNAVAILABLE => (ErrorCode::Unavailable, "the service is unavailable"),
        s if s.is_client_error() => (ErrorCode::ValidationError, "the request is invalid"),
        _ => (ErrorCode::Internal, "internal error"),
    };
    PendingError { code, message: message.into(), details: None }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_id_shape() {
        assert!(super::sane("7f3a9c2e"));
        assert!(super::sane("req-1.2_3:4"));
        assert!(!super::sane(""));
        assert!(!super::sane("has space"));
        assert!(!super::sane(&"a".repeat(129)));
    }
}
