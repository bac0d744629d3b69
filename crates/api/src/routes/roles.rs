//! Agent roles, including the role-wide stop.

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use evershell_app::roles::{CreateRole, PatchRole};
use evershell_app::workspaces::StoppingAnswer;
use evershell_core::ids::RoleId;
use evershell_core::model::AgentRole;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::identity::{Status, status};
use super::providers::include_archived;
use crate::access::Auth;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Params};
use crate::paging::{self, PageParams};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_role, list_roles))
        .routes(routes!(get_role, patch_role))
        .routes(routes!(archive_role))
        .routes(routes!(unarchive_role))
        .routes(routes!(stop_workspaces))
}

/// `{"agent_roles": […]}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoleList {
    pub agent_roles: Vec<AgentRole>,
    /// Present when `limit` cut the list: pass it back as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Create an agent role. `capabilities` is caps.yaml, validated on write and stored as given.
#[utoipa::path(post, path = "/v1/agent-roles", tag = "agent-roles", security(("bearer" = ["caps:write"])),
    request_body = CreateRole,
    responses((status = 201, body = AgentRole), (status = 400, body = ErrorBody),
        (status = 404, description = "`provider_not_found`", body = ErrorBody),
        (status = 409, description = "`already_exists`, `provider_archived`", body = ErrorBody), (status = 423, body = ErrorBody)))]
pub async fn create_role(
    State(s): State<AppState>,
    Auth(c): Auth,
    Json(req): Json<CreateRole>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, axum::Json(s.app.create_role(&c, req).await?)))
}

/// List agent roles; archived ones only with `include_archived=true`.
#[utoipa::path(get, path = "/v1/agent-roles", tag = "agent-roles", security(("bearer" = [])),
    params(("include_archived" = Option<bool>, Query, description = "Also list archived roles"),
        ("limit" = Option<u32>, Query, description = "Page size (1-1000); without it the whole list"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, body = RoleList), (status = 400, description = "`validation_error` (limit), `invalid_cursor`", body = ErrorBody)))]
pub async fn list_roles(State(s): State<AppState>, Auth(c): Auth, uri: Uri, p: Params) -> ApiResult<Response> {
    let pp = PageParams::parse(&p, "agent_roles")?;
    let all = s.app.list_roles(&c, include_archived(&p)?).await?;
    let (agent_roles, next) = paging::page(all, "agent_roles", |r| format!("{}\u{1}{}", r.name, r.id), &pp);
    Ok(paging::answer(&uri, RoleList { agent_roles, next_cursor: next.clone() }, next.as_deref()))
}

#[utoipa::path(get, path = "/v1/agent-roles/{id}", tag = "agent-roles", security(("bearer" = [])),
    params(("id" = RoleId, Path, description = "Role id (`role_…`)")),
    responses((status = 200, body = AgentRole), (status = 404, body = ErrorBody)))]
pub async fn get_role(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<AgentRole>> {
    Ok(axum::Json(s.app.get_role(&c, &id).await?))
}

/// Update a role: only the fields present change; a supplied `pack_ids` replaces the whole list.
#[utoipa::path(patch, path = "/v1/agent-roles/{id}", tag = "agent-roles", security(("bearer" = ["caps:write"])),
    params(("id" = RoleId, Path, description = "Role id (`role_…`)")), request_body = PatchRole,
    responses((status = 200, body = AgentRole), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`provider_archived`", body = ErrorBody), (status = 423, body = ErrorBody)))]
pub async fn patch_role(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    Json(req): Json<PatchRole>,
) -> ApiResult<axum::Json<AgentRole>> {
    Ok(axum::Json(s.app.patch_role(&c, &id, req).await?))
}

/// Archive a role. Refused with `workspaces_active` while any of its workspaces has a pod.
#[utoipa::path(post, path = "/v1/agent-roles/{id}/archive", tag = "agent-roles", security(("bearer" = ["caps:write"])),
    params(("id" = RoleId, Path, description = "Role id (`role_…`)")),
    responses((status = 200, body = Status, example = json!({"status": "archived"})), (status = 404, body = ErrorBody),
        (status = 409, description = "`workspaces_active`", body = ErrorBody)))]
pub async fn archive_role(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    s.app.archive_role(&c, &id).await?;
    Ok(status("archived"))
}

/// Unarchive a role. Refused while its provider is archived.
#[utoipa::path(post, path = "/v1/agent-roles/{id}/unarchive", tag = "agent-roles", security(("bearer" = ["caps:write"])),
    params(("id" = RoleId, Path, description = "Role id (`role_…`)")),
    responses((status = 200, body = Status, example = json!({"status": "unarchived"})), (status = 404, body = ErrorBody),
        (status = 409, description = "`not_archived`, `provider_archived`", body = ErrorBody), (status = 423, body = ErrorBody)))]
pub async fn unarchive_role(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    s.app.unarchive_role(&c, &id).await?;
    Ok(status("unarchived"))
}

/// Stop every idle or busy workspace of the role (bulk: unscoped `workspace:write` only). Idempotent.
#[utoipa::path(post, path = "/v1/agent-roles/{id}/stop-workspaces", tag = "agent-roles",
    security(("bearer" = ["workspace:write"])),
    params(("id" = RoleId, Path, description = "Role id (`role_…`)")),
    responses((status = 200, body = StoppingAnswer), (status = 404, body = ErrorBody)))]
pub async fn stop_workspaces(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<StoppingAnswer>> {
    Ok(axum::Json(s.app.stop_role_workspaces(&c, &id).await?))
}
