//! Sign-in, the caller's identity, API keys and memberships.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use evershell_app::identity::{
    AcceptInviteRequest, CreateApiKeyRequest, CreatedApiKey, Invitation, InviteRequest, LoginRequest, MeSession,
    PatchMembershipRequest, SessionToken,
};
use evershell_core::ids::{ApiKeyId, OrgId, UserId};
use evershell_core::model::{ApiKey, Membership};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::{Auth, SESSION_COOKIE};
use crate::envelope::RequestId;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Json;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(accept_invite))
        .routes(routes!(me_session))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
        .routes(routes!(list_memberships, invite))
        .routes(routes!(patch_membership, delete_membership))
}

/// `{"status": …}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub status: String,
}

pub fn status(s: &str) -> axum::Json<Status> {
    axum::Json(Status { status: s.into() })
}

/// `{"api_keys": […]}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKey>,
}

/// `{"memberships": […]}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MembershipList {
    pub memberships: Vec<Membership>,
}

fn session_cookie(token: &SessionToken) -> HeaderValue {
    let max_age = ((token.expires_at.millis() - evershell_core::Timestamp::now().millis()) / 1000).max(0);
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}",
        token.token
    ))
    .unwrap_or(HeaderValue::from_static(""))
}

/// Sign in with email and password. Returns a session JWT (also set as an HttpOnly cookie for the console).
#[utoipa::path(post, path = "/v1/auth/login", tag = "identity", security(()), request_body = LoginRequest,
    responses((status = 200, body = SessionToken), (status = 400, body = ErrorBody),
        (status = 401, description = "Wrong email or password", body = ErrorBody)))]
pub async fn login(
    State(s): State<AppState>,
    rid: Option<axum::Extension<RequestId>>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<impl IntoResponse> {
    let t = s.app.login(req, rid.as_ref().map(|r| r.0.0.as_str())).await?;
    Ok(([(header::SET_COOKIE, session_cookie(&t))], axum::Json(t)))
}

/// End the caller's session; its token is refused from the next request.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "identity", security(("bearer" = [])),
    responses((status = 200, body = Status, example = json!({"status": "logged_out"}))))]
pub async fn logout(State(s): State<AppState>, Auth(c): Auth) -> ApiResult<impl IntoResponse> {
    s.app.logout(&c).await?;
    let clear = HeaderValue::from_str(&format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"))
        .unwrap_or(HeaderValue::from_static(""));
    Ok(([(header::SET_COOKIE, clear)], status("logged_out")))
}

/// Accept an invitation: set the password (or confirm an existing one), activate the membership, sign in.
#[utoipa::path(post, path = "/v1/auth/accept-invite", tag = "identity", security(()), request_body = AcceptInviteRequest,
    responses((status = 200, body = SessionToken), (status = 400, body = ErrorBody)))]
pub async fn accept_invite(
    State(s): State<AppState>,
    rid: Option<axum::Extension<RequestId>>,
    Json(req): Json<AcceptInviteRequest>,
) -> ApiResult<impl IntoResponse> {
    let t = s.app.accept_invite(req, rid.as_ref().map(|r| r.0.0.as_str())).await?;
    Ok(([(header::SET_COOKIE, session_cookie(&t))], axum::Json(t)))
}

/// The resolved caller and the orgs it belongs to.
#[utoipa::path(get, path = "/v1/me/session", tag = "identity", security(("bearer" = [])),
    responses((status = 200, body = MeSession)))]
pub async fn me_session(State(s): State<AppState>, Auth(c): Auth) -> ApiResult<axum::Json<MeSession>> {
    Ok(axum::Json(s.app.me_session(&c).await?))
}

/// Create an API key. Its `value` is returned exactly once. Only people can issue keys.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", security(("bearer" = ["apikeys:write"])),
    request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKey), (status = 400, body = ErrorBody), (status = 423, body = ErrorBody)))]
pub async fn create_api_key(
    State(s): State<AppState>,
    Auth(c): Auth,
    Json(req): Json<CreateApiKeyRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, axum::Json(s.app.create_api_key(&c, req).await?)))
}

/// The org's live API keys (values are never shown again).
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", security(("bearer" = ["apikeys:write"])),
    responses((status = 200, body = ApiKeyList)))]
pub async fn list_api_keys(State(s): State<AppState>, Auth(c): Auth) -> ApiResult<axum::Json<ApiKeyList>> {
    Ok(axum::Json(ApiKeyList { api_keys: s.app.list_api_keys(&c).await? }))
}

/// Revoke an API key: it gets 401 from the very next request. Works in any billing posture.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", security(("bearer" = ["apikeys:write"])),
    params(("id" = ApiKeyId, Path, description = "API key id (`api_key_…`)")),
    responses((status = 200, body = Status, example = json!({"status": "revoked"})), (status = 404, body = ErrorBody)))]
pub async fn revoke_api_key(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    s.app.revoke_api_key(&c, &id).await?;
    Ok(status("revoked"))
}

/// Memberships of the caller's org (`members:read:own`: only the caller's own). Another org's id is 403.
#[utoipa::path(get, path = "/v1/orgs/{id}/memberships", tag = "memberships",
    security(("bearer" = ["members:read"]), ("bearer" = ["members:read:own"])),
    params(("id" = OrgId, Path, description = "The caller's org id")),
    responses((status = 200, body = MembershipList)))]
pub async fn list_memberships(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(org): Path<String>,
) -> ApiResult<axum::Json<MembershipList>> {
    Ok(axum::Json(MembershipList { memberships: s.app.list_memberships(&c, &org).await? }))
}

/// Invite a member: a pending membership plus a one-time `invite_token` for `POST /v1/auth/accept-invite`.
/// Inviting an Owner needs an Owner.
#[utoipa::path(post, path = "/v1/orgs/{id}/memberships", tag = "memberships", security(("bearer" = ["members:write"])),
    params(("id" = OrgId, Path, description = "The caller's org id")), request_body = InviteRequest,
    responses((status = 201, body = Invitation), (status = 400, body = ErrorBody),
        (status = 409, description = "`already_exists`: already a member or invited", body = ErrorBody),
        (status = 423, body = ErrorBody)))]
pub async fn invite(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(org): Path<String>,
    Json(req): Json<InviteRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, axum::Json(s.app.invite(&c, &org, req).await?)))
}

/// Change a member's role (Owners only). Refused for pending invitations and for the last Owner.
#[utoipa::path(patch, path = "/v1/orgs/{id}/memberships/{user_id}", tag = "memberships",
    security(("bearer" = ["members:write"])),
    params(("id" = OrgId, Path, description = "The caller's org id"), ("user_id" = UserId, Path, description = "The member's user id")),
    request_body = PatchMembershipRequest,
    responses((status = 200, body = Membership), (status = 404, body = ErrorBody),
        (status = 409, description = "`pending_invitation` or `last_owner`", body = ErrorBody), (status = 423, body = ErrorBody)))]
pub async fn patch_membership(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((org, user)): Path<(String, String)>,
    Json(req): Json<PatchMembershipRequest>,
) -> ApiResult<axum::Json<Membership>> {
    Ok(axum::Json(s.app.patch_membership(&c, &org, &user, req).await?))
}

/// Remove a member or revoke an invitation. Never the last Owner; removing an Owner needs an Owner.
#[utoipa::path(delete, path = "/v1/orgs/{id}/memberships/{user_id}", tag = "memberships",
    security(("bearer" = ["members:write"])),
    params(("id" = OrgId, Path, description = "The caller's org id"), ("user_id" = UserId, Path, description = "The member's user id")),
    responses((status = 200, body = Status, example = json!({"status": "deleted"})), (status = 404, body = ErrorBody),
        (status = 409, description = "`last_owner`", body = ErrorBody)))]
pub async fn delete_membership(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path((org, user)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    s.app.delete_membership(&c, &org, &user).await?;
    Ok(status("deleted"))
}
