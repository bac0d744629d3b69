//! The one domain error: a closed `ErrorCode`, a human message, optional structured details and an optional cause.
//!
//! It knows nothing of HTTP: the API crate maps each code to a status in exactly one place. Unexpected failures are
//! `ErrorCode::Internal` with the cause kept for the log and never shown to the caller.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Every error code the API can answer with. Closed: published in the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body, query or path failed validation; see `details.fields`.
    ValidationError,
    /// The audit or activity `cursor` is not one this server issued.
    InvalidCursor,
    /// Missing, malformed, expired or revoked credential (the message never says which).
    Unauthenticated,
    /// The caller holds none of the scopes the route lists, or acts on someone else's object with a `:own` scope.
    PermissionDenied,
    /// A `workspace:read:own` caller read another member's workspace.
    WorkspaceNotVisible,
    /// No route matches the path.
    NotFound,
    WorkspaceNotFound,
    RoleNotFound,
    ProviderNotFound,
    TaskNotFound,
    CredentialNotFound,
    SecretNotFound,
    ApiKeyNotFound,
    MembershipNotFound,
    OrgNotFound,
    /// A file path inside a workspace or snapshot does not exist.
    FileNotFound,
    /// The workspace has never been stopped, so it has no snapshot to read.
    SnapshotNotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The workspace is not in a state that allows the call.
    InvalidState,
    /// Restart of a busy workspace without `force=true`.
    WorkspaceBusy,
    /// The workspace is archived: unarchive it first.
    WorkspaceArchived,
    /// The agent role is archived.
    RoleArchived,
    /// The provider is archived.
    ProviderArchived,
    /// The call needs a running pod but the workspace is stopped.
    WorkspaceStopped,
    /// The call needs a running pod but the workspace has failed.
    WorkspaceFailed,
    /// The call needs a running pod but the workspace is still provisioning (or stopping).
    WorkspaceProvisioning,
    /// Dependent workspaces are still running.
    WorkspacesActive,
    /// Unarchive of something that is not archived.
    NotArchived,
    /// A pending invitation cannot be re-roled; revoke it and invite again.
    PendingInvitation,
    /// The change would leave the organisation without an active Owner.
    LastOwner,
    /// An object with that name (or email) already exists.
    AlreadyExists,
    /// Resume of a workspace that has no snapshot; pass `allow_empty=true` to start empty.
    SnapshotMissing,
    /// A configured limit (workspaces per org, per agent role, per member) would be exceeded; `details` names the
    /// quota and its limit.
    QuotaExceeded,
    /// The same `Idempotency-Key` was used with a different request.
    IdempotencyKeyReused,
    /// A request with this `Idempotency-Key` is still being processed.
    IdempotencyKeyInFlight,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// Too many failed sign-in attempts for this account or from this address; `details.retry_after_seconds` (and
    /// the `Retry-After` header) says when to try again.
    TooManyAttempts,
    /// A JSON route was sent a body with another `Content-Type`.
    UnsupportedMediaType,
    /// The organisation's billing posture does not allow create-class calls.
    BillingInactive,
    /// The call names a feature this deployment does not offer (e.g. the OAuth authorization-code flow).
    NotSupported,
    /// The agent service inside the pod did not answer.
    AgentUnreachable,
    /// The store (database) is unreachable.
    Unavailable,
    /// An unexpected server error; the request id correlates it with the server log.
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: &[ErrorCode] = &[
        ErrorCode::ValidationError,
        ErrorCode::InvalidCursor,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::WorkspaceNotVisible,
        ErrorCode::NotFound,
        ErrorCode::WorkspaceNotFound,
        ErrorCode::RoleNotFound,
        ErrorCode::ProviderNotFound,
        ErrorCode::TaskNotFound,
        ErrorCode::CredentialNotFound,
        ErrorCode::SecretNotFound,
        ErrorCode::ApiKeyNotFound,
        ErrorCode::MembershipNotFound,
        ErrorCode::OrgNotFound,
        ErrorCode::FileNotFound,
        ErrorCode::SnapshotNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::InvalidState,
        ErrorCode::WorkspaceBusy,
        ErrorCode::WorkspaceArchived,
        ErrorCode::RoleArchived,
        ErrorCode::ProviderArchived,
        ErrorCode::WorkspaceStopped,
        ErrorCode::WorkspaceFailed,
        ErrorCode::WorkspaceProvisioning,
        ErrorCode::WorkspacesActive,
        ErrorCode::NotArchived,
        ErrorCode::PendingInvitation,
        ErrorCode::LastOwner,
        ErrorCode::AlreadyExists,
        ErrorCode::SnapshotMissing,
        ErrorCode::QuotaExceeded,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::IdempotencyKeyInFlight,
        ErrorCode::PayloadTooLarge,
        ErrorCode::TooManyAttempts,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::BillingInactive,
        ErrorCode::NotSupported,
        ErrorCode::AgentUnreachable,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The wire slug (`workspace_not_found`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationError => "validation_error",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::WorkspaceNotVisible => "workspace_not_visible",
            ErrorCode::NotFound => "not_found",
            ErrorCode::WorkspaceNotFound => "workspace_not_found",
            ErrorCode::RoleNotFound => "role_not_found",
            ErrorCode::ProviderNotFound => "provider_not_found",
            ErrorCode::TaskNotFound => "task_not_found",
            ErrorCode::CredentialNotFound => "credential_not_found",
            ErrorCode::SecretNotFound => "secret_not_found",
            ErrorCode::ApiKeyNotFound => "api_key_not_found",
            ErrorCode::MembershipNotFound => "membership_not_found",
            ErrorCode::OrgNotFound => "org_not_found",
            ErrorCode::FileNotFound => "file_not_found",
            ErrorCode::SnapshotNotFound => "snapshot_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::WorkspaceBusy => "workspace_busy",
            ErrorCode::WorkspaceArchived => "workspace_archived",
            ErrorCode::RoleArchived => "role_archived",
            ErrorCode::ProviderArchived => "provider_archived",
            ErrorCode::WorkspaceStopped => "workspace_stopped",
            ErrorCode::WorkspaceFailed => "workspace_failed",
            ErrorCode::WorkspaceProvisioning => "workspace_provisioning",
            ErrorCode::WorkspacesActive => "workspaces_active",
            ErrorCode::NotArchived => "not_archived",
            ErrorCode::PendingInvitation => "pending_invitation",
            ErrorCode::LastOwner => "last_owner",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::SnapshotMissing => "snapshot_missing",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::IdempotencyKeyInFlight => "idempotency_key_in_flight",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::BillingInactive => "billing_inactive",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::AgentUnreachable => "agent_unreachable",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// The domain error.
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<serde_json::Value>,
    pub source: Option<anyhow::Error>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: None, source: None }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// A validation error naming the offending fields (`details.fields`).
    pub fn validation(fields: FieldErrors) -> Self {
        let message = match fields.0.iter().next() {
            Some((k, v)) if fields.0.len() == 1 => format!("invalid field `{k}`: {v}"),
            _ => format!("{} fields are invalid", fields.0.len()),
        };
        Self::new(ErrorCode::ValidationError, message).with_details(serde_json::json!({ "fields": fields.0 }))
    }

    /// A validation error on a single field.
    pub fn invalid_field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        let mut f = FieldErrors::default();
        f.add(field, problem);
        Self::validation(f)
    }

    pub fn unauthenticated() -> Self {
        Self::new(ErrorCode::Unauthenticated, "missing or invalid credential")
    }

    /// A refused sign-in attempt: retry after `retry_after_seconds` (at least 1). The same words whatever the account.
    pub fn too_many_attempts(retry_after_seconds: u64) -> Self {
        let s = retry_after_seconds.max(1);
        Self::new(ErrorCode::TooManyAttempts, format!("too many failed sign-in attempts; retry in {s} s"))
            .with_details(serde_json::json!({ "retry_after_seconds": s }))
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(code, message)
    }

    pub fn billing_inactive(status: &str) -> Self {
        Self::new(
            ErrorCode::BillingInactive,
            format!("the organisation's billing posture is `{status}`; only reads and wind-down calls are allowed"),
        )
    }

    pub fn unavailable(cause: impl Into<anyhow::Error>) -> Self {
        let mut e = Self::new(ErrorCode::Unavailable, "the store is unavailable; retry shortly");
        e.source = Some(cause.into());
        e
    }

    /// An unexpected failure. The cause is logged once by the API layer and never shown to the caller.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        let mut e = Self::new(ErrorCode::Internal, "internal error");
        e.source = Some(cause.into());
        e
    }

    pub fn agent_unreachable(cause: impl Into<anyhow::Error>) -> Self {
        let mut e = Self::new(ErrorCode::AgentUnreachable, "the workspace's agent service did not answer");
        e.source = Some(cause.into());
        e
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)?;
        if let Some(s) = &self.source {
            write!(f, " (cause: {s:#})")?;
        }
        Ok(())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// A per-field map of validation problems, keyed by the field's path (`capabilities[0].allow[1].methods`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldErrors(pub BTreeMap<String, String>);

impl FieldErrors {
    pub fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.entry(field.into()).or_insert_with(|| problem.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when empty, else the validation error.
    pub fn into_result(self) -> Result<()> {
        if self.is_empty() { Ok(()) } else { Err(Error::validation(self)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde_for_every_code() {
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::Value::String(c.as_str().into()));
        }
    }

    #[test]
    fn codes_are_snake_case() {
        assert_eq!(ErrorCode::WorkspaceNotVisible.as_str(), "workspace_not_visible");
        assert_eq!(ErrorCode::IdempotencyKeyReused.as_str(), "idempotency_key_reused");
    }

    #[test]
    fn validation_names_the_field() {
        let e = Error::invalid_field("name", "must not be empty");
        assert_eq!(e.code, ErrorCode::ValidationError);
        assert_eq!(e.details.unwrap()["fields"]["name"], "must not be empty");
    }
}
