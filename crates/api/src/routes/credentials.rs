//! Credentials: authentication to upstreams, sealed at rest, narrowed per caller (personal overrides).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use evershell_app::credentials::CreateCredential;
use evershell_core::model::Credential;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::identity::{Status, status};
use crate::access::Auth;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Json;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_credential, list_credentials))
        .routes(routes!(get_credential, delete_credential))
        .routes(routes!(start_oauth))
}

/// `{"credentials": […]}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CredentialList {
    pub credentials: Vec<Credential>,
}

/// Create a credential. The secret field the kind needs is required (400 names it); one it does not use is refused.
/// With only `auth:write:own` a member may create personal `oauth2_authorization_code` overrides of an org
/// credential that allows them. Kinds this deployment cannot mint are stored with `status: failed` and
/// `last_minted_status: kind_not_mintable_here`.
#[utoipa::path(post, path = "/v1/credentials", tag = "credentials",
    security(("bearer" = ["auth:write"]), ("bearer" = ["auth:write:own"])),
    request_body = CreateCredential,
    responses((status = 201, body = Credential), (status = 400, body = ErrorBody),
        (status = 409, description = "`already_exists`: the name is taken", body = ErrorBody), (status = 423, body = ErrorBody)))]
pub async fn create_credential(
    State(s): State<AppState>,
    Auth(c): Auth,
    Json(req): Json<CreateCredential>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, axum::Json(s.app.create_credential(&c, req).await?)))
}

/// The credentials the caller can see: the org's, plus their own personal ones; unscoped `auth:write` sees every
/// member's too. Secret material is never returned.
#[utoipa::path(get, path = "/v1/credentials", tag = "credentials", security(("bearer" = [])),
    responses((status = 200, body = CredentialList)))]
pub async fn list_credentials(State(s): State<AppState>, Auth(c): Auth) -> ApiResult<axum::Json<CredentialList>> {
    Ok(axum::Json(CredentialList { credentials: s.app.list_credentials(&c).await? }))
}

/// Get a credential. Another member's personal credential is 404 (its existence is not leaked).
#[utoipa::path(get, path = "/v1/credentials/{id}", tag = "credentials", security(("bearer" = [])),
    params(("id" = String, Path, description = "Credential id (`cred_…`)")),
    responses((status = 200, body = Credential), (status = 404, body = ErrorBody)))]
pub async fn get_credential(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Credential>> {
    Ok(axum::Json(s.app.get_credential(&c, &id).await?))
}

/// Delete a credential: the record and its sealed material go at once, so the next request that injects it fails
/// with `auth_unavailable`. With `auth:write:own`, only the caller's own personal credentials.
#[utoipa::path(delete, path = "/v1/credentials/{id}", tag = "credentials",
    security(("bearer" = ["auth:write"]), ("bearer" = ["auth:write:own"])),
    params(("id" = String, Path, description = "Credential id (`cred_…`)")),
    responses((status = 200, body = Status, example = json!({"status": "deleted"})), (status = 404, body = ErrorBody)))]
pub async fn delete_credential(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    s.app.delete_credential(&c, &id).await?;
    Ok(status("deleted"))
}

/// Start the OAuth consent flow. Not available in this deployment: after the visibility and ownership checks the
/// answer is 501 `not_supported` (no authorize URL is made up).
#[utoipa::path(post, path = "/v1/credentials/{id}/oauth/start", tag = "credentials",
    security(("bearer" = ["auth:write"]), ("bearer" = ["auth:write:own"])),
    params(("id" = String, Path, description = "Credential id (`cred_…`)")),
    responses((status = 400, description = "`validation_error`: not an oauth2_authorization_code credential", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 501, description = "`not_supported`: the authorization-code flow is not available here", body = ErrorBody)))]
pub async fn start_oauth(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Status>> {
    match s.app.start_oauth(&c, &id).await? {}
}
