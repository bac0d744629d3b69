//! Sign-in, the caller's identity, API keys and memberships.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use evershell_app::identity::{
    AcceptInviteRequest, CreateApiKeyRequest, CreatedApiKey, Invitation, InviteRequest, LoginRequest, MeSession,
    PatchMembershipRequest, SessionToken,
};
use evershell_app::signin::Attempt;
use evershell_core::ids::{ApiKeyId, OrgId, UserId};
use evershell_core::model::{ApiKey, Membership};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::{Auth, SESSION_COOKIE};
use crate::envelope::RequestId;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Params};
use crate::idempotency::SecretFields;
use crate::paging::{self, PageParams};
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
    /// Present when `limit` cut the list: pass it back as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `{"memberships": […]}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MembershipList {
    pub memberships: Vec<Membership>,
    /// Present when `limit` cut the list: pass it back as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Whether the client reached us over TLS: configured so, or a proxy says so (`X-Forwarded-Proto: https`, or
/// `Forwarded: proto=https`). Only ever adds `Secure`, so trusting the header costs nothing.
fn over_tls(s: &AppState, headers: &HeaderMap) -> bool {
    let first = |name: header::HeaderName| {
        headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.split(',').next().unwrap_or("").trim().to_string())
    };
    s.limits.secure_cookies
        || first(header::HeaderName::from_static("x-forwarded-proto")).is_some_and(|p| p.eq_ignore_ascii_case("https"))
        || first(header::FORWARDED)
            .is_some_and(|f| f.split(';').any(|kv| kv.trim().eq_ignore_ascii_case("proto=https")))
}

fn cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .unwrap_or(HeaderValue::from_static(""))
}

fn session_cookie(token: &SessionToken, secure: bool) -> HeaderValue {
    let max_age = ((token.expires_at.millis() - evershell_core::Timestamp::now().millis()) / 1000).max(0);
    cookie(&token.token, max_age, secure)
}

/// The TCP peer of the connection (behind a reverse proxy: the proxy), which sign-in throttling counts per address.
fn client(peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>) -> Option<std::net::IpAddr> {
    peer.map(|p| p.0.0.ip())
}

/// Sign in with email and password. Returns a session JWT (also set as an HttpOnly cookie for the console).
/// Failed attempts are throttled per account and per client address: `429 too_many_attempts` with `Retry-After`,
/// answered before any password check.
#[utoipa::path(post, path = "/v1/auth/login", tag = "identity", security(()), request_body = LoginRequest,
    responses((status = 200, body = SessionToken), (status = 400, body = ErrorBody),
        (status = 401, description = "Wrong email or password", body = ErrorBody),
        (status = 429, description = "`too_many_attempts`: wait `Retry-After` seconds", body = ErrorBody)))]
pub async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    rid: Option<axum::Extension<RequestId>>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<impl IntoResponse> {
    let at = Attempt { route: "login", client: client(peer), request_id: rid.as_ref().map(|r| r.0.0.as_str()) };
    let t = s.app.login(req, at).await?;
    Ok(([(header::SET_COOKIE, session_cookie(&t, over_tls(&s, &headers)))], axum::Json(t)))
}

/// End the caller's session; its token is refused from the next request.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "identity", security(("bearer" = [])),
    responses((status = 200, body = Status, example = json!({"status": "logged_out"}))))]
pub async fn logout(State(s): State<AppState>, headers: HeaderMap, Auth(c): Auth) -> ApiResult<impl IntoResponse> {
    s.app.logout(&c).await?;
    Ok(([(header::SET_COOKIE, cookie("", 0, over_tls(&s, &headers)))], status("logged_out")))
}

/// Accept an invitation: set the password (or, for an account that already has one, prove it), activate the
/// membership, sign in. Throttled like login.
#[utoipa::path(post, path = "/v1/auth/accept-invite", tag = "identity", security(()), request_body = AcceptInviteRequest,
    responses((status = 200, body = SessionToken), (status = 400, body = ErrorBody),
        (status = 429, description = "`too_many_attempts`: wait `Retry-After` seconds", body = ErrorBody)))]
pub async fn accept_invite(
    State(s): State<AppState>,
    headers: HeaderMap,
    rid: Option<axum::Extension<RequestId>>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Json(req): Json<AcceptInviteRequest>,
) -> ApiResult<impl IntoResponse> {
    let at = Attempt { route: "accept_invite", client: client(peer), request_id: rid.as_ref().map(|r| r.0.0.as_str()) };
    let t = s.app.accept_invite(req, at).await?;
    Ok(([(header::SET_COOKIE, session_cookie(&t, over_tls(&s, &headers)))], axum::Json(t)))
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
    let key = s.app.create_api_key(&c, req).await?;
    Ok((StatusCode::CREATED, Extension(SecretFields(&["value"])), axum::Json(key)))
}

/// The org's live API keys (values are never shown again).
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", security(("bearer" = ["apikeys:write"])),
    params(("limit" = Option<u32>, Query, description = "Page size (1-1000); without it the whole list"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, body = ApiKeyList), (status = 400, description = "`validation_error` (limit), `invalid_cursor`", body = ErrorBody)))]
pub async fn list_api_keys(State(s): State<AppState>, Auth(c): Auth, uri: Uri, p: Params) -> ApiResult<Response> {
    let pp = PageParams::parse(&p, "api_keys")?;
    let all = s.app.list_api_keys(&c).await?;
    let (api_keys, next) =
        paging::page(all, "api_keys", |k| format!("{:016}\u{1}{}", k.created_at.millis(), k.id), &pp);
    Ok(paging::answer(&uri, ApiKeyList { api_keys, next_cursor: next.clone() }, next.as_deref()))
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
    params(("id" = OrgId, Path, description = "The caller's org id"),
        ("limit" = Option<u32>, Query, description = "Page size (1-1000); without it the whole list"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, body = MembershipList), (status = 400, description = "`validation_error` (limit), `invalid_cursor`", body = ErrorBody)))]
pub async fn list_memberships(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(org): Path<String>,
    uri: Uri,
    p: Params,
) -> ApiResult<Response> {
    let pp = PageParams::parse(&p, "memberships")?;
    let all = s.app.list_memberships(&c, &org).await?;
    let (memberships, next) =
        paging::page(all, "memberships", |m| format!("{:016}\u{1}{}", m.created_at.millis(), m.user_id), &pp);
    Ok(paging::answer(&uri, MembershipList { memberships, next_cursor: next.clone() }, next.as_deref()))
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
    let invitation = s.app.invite(&c, &org, req).await?;
    Ok((StatusCode::CREATED, Extension(SecretFields(&["invite_token"])), axum::Json(invitation)))
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
