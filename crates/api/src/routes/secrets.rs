//! Secrets: named values sealed at rest, never returned.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use evershell_app::org_secrets::{CreateSecret, RotateSecret};
use evershell_core::model::Secret;
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
    OpenApiRouter::new().routes(routes!(create_secret, list_secrets)).routes(routes!(rotate_secret, delete_secret))
}

/// `{"secrets": […]}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<Secret>,
}

/// Create a secret. The value is sealed at rest and never returned by any route.
#[utoipa::path(post, path = "/v1/secrets", tag = "secrets", security(("bearer" = ["secrets:write"])),
    request_body = CreateSecret,
    responses((status = 201, body = Secret), (status = 400, body = ErrorBody),
        (status = 409, description = "`already_exists`: the name is taken", body = ErrorBody), (status = 423, body = ErrorBody)))]
pub async fn create_secret(
    State(s): State<AppState>,
    Auth(c): Auth,
    Json(req): Json<CreateSecret>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, axum::Json(s.app.create_secret(&c, req).await?)))
}

/// List the org's secrets: names and metadata, never values.
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", security(("bearer" = ["secrets:write"])),
    responses((status = 200, body = SecretList)))]
pub async fn list_secrets(State(s): State<AppState>, Auth(c): Auth) -> ApiResult<axum::Json<SecretList>> {
    Ok(axum::Json(SecretList { secrets: s.app.list_secrets(&c).await? }))
}

/// Rotate a secret's value; its id and name stay.
#[utoipa::path(put, path = "/v1/secrets/{id}", tag = "secrets", security(("bearer" = ["secrets:write"])),
    params(("id" = String, Path, description = "Secret id (`sec_…`)")), request_body = RotateSecret,
    responses((status = 200, body = Secret), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 423, body = ErrorBody)))]
pub async fn rotate_secret(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    Json(req): Json<RotateSecret>,
) -> ApiResult<axum::Json<Secret>> {
    Ok(axum::Json(s.app.rotate_secret(&c, &id, req).await?))
}

/// Delete a secret and its sealed value.
#[utoipa::path(delete, path = "/v1/secrets/{id}", tag = "secrets", security(("bearer" = ["secrets:write"])),
    params(("id" = String, Path, description = "Secret id (`sec_…`)")),
    responses((status = 200, body = Status, example = json!({"status": "deleted"})), (status = 404, body = ErrorBody)))]
pub async fn delete_secret(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    s.app.delete_secret(&c, &id).await?;
    Ok(status("deleted"))
}
