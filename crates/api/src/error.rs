//! The one place domain errors become HTTP: each `ErrorCode` maps to its status here, and every error response —
//! from a handler, an extractor, the router's 404/405, a body-limit 413 or a panic — leaves as the envelope
//! `{"error":{"code","message","request_id","details"?}}` (rendered by `envelope::finish`, which knows the request id).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use evershell_core::{Error, ErrorCode};
use serde::Serialize;
use utoipa::ToSchema;

/// The HTTP status of each error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        ValidationError | InvalidCursor => StatusCode::BAD_REQUEST,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        PermissionDenied | WorkspaceNotVisible => StatusCode::FORBIDDEN,
        NotFound | WorkspaceNotFound | RoleNotFound | ProviderNotFound | TaskNotFound | CredentialNotFound
        | SecretNotFound | ApiKeyNotFound | MembershipNotFound | OrgNotFound | FileNotFound | SnapshotNotFound => {
            StatusCode::NOT_FOUND
        }
        MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        InvalidState
        | WorkspaceBusy
        | WorkspaceArchived
        | RoleArchived
        | ProviderArchived
        | WorkspaceStopped
        | WorkspaceFailed
        | WorkspaceProvisioning
        | WorkspacesActive
        | NotArchived
        | PendingInvitation
        | LastOwner
        | AlreadyExists
        | SnapshotMissing
        | QuotaExceeded
        | IdempotencyKeyInFlight => StatusCode::CONFLICT,
        PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
        UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        BillingInactive => StatusCode::LOCKED,
        NotSupported => StatusCode::NOT_IMPLEMENTED,
        AgentUnreachable => StatusCode::BAD_GATEWAY,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error envelope as documented.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Closed-enum slug.
    pub code: ErrorCode,
    /// Human-readable summary.
    pub message: String,
    /// Server-generated request id for correlating logs.
    pub request_id: String,
    /// Structured context; validation errors put a per-field map at `details.fields`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// An error on its way out: carried as a response extension until `envelope::finish` renders it with the request id.
#[derive(Debug, Clone)]
pub struct PendingError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

/// A handler's error.
pub struct ApiError(pub Error);

pub type ApiResult<T> = Result<T, ApiError>;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        if matches!(e.code, ErrorCode::Internal | ErrorCode::Unavailable | ErrorCode::AgentUnreachable) {
            // Logged once here with the whole cause chain; the caller only sees the code and the request id.
            tracing::error!(code = e.code.as_str(), error = ?e, "request failed");
        }
        // A throttled sign-in says when to retry in the header as well as in the envelope's details.
        let retry_after = (e.code == ErrorCode::TooManyAttempts)
            .then(|| e.details.as_ref().and_then(|d| d["retry_after_seconds"].as_u64()))
            .flatten();
        let pending = PendingError { code: e.code, message: e.message, details: e.details };
        let mut res = status_of(pending.code).into_response();
        if let Some(secs) = retry_after {
            res.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        }
        res.extensions_mut().insert(pending);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_4xx_or_5xx_status() {
        for c in ErrorCode::ALL {
            let s = status_of(*c);
            assert!(s.is_client_error() || s.is_server_error(), "{c:?}");
        }
        assert_eq!(status_of(ErrorCode::BillingInactive).as_u16(), 423);
        assert_eq!(status_of(ErrorCode::AgentUnreachable).as_u16(), 502);
        assert_eq!(status_of(ErrorCode::WorkspaceNotVisible).as_u16(), 403);
    }
}
