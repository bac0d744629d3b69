//! Providers (LLM backends).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use evershell_app::providers::{CreateProvider, PatchProvider, ProviderArchived};
use evershell_core::FieldErrors;
use evershell_core::ids::ProviderId;
use evershell_core::model::Provider;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::identity::{Status, status};
use crate::access::Auth;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Params};
use crate::paging::{self, PageParams};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_provider, list_providers))
        .routes(routes!(get_provider, patch_provider))
        .routes(routes!(archive_provider))
        .routes(routes!(unarchive_provider))
}

/// `{"providers": […]}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProviderList {
    pub providers: Vec<Provider>,
    /// Present when `limit` cut the list: pass it back as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Read `include_archived`.
pub fn include_archived(p: &Params) -> evershell_core::Result<bool> {
    let mut errs = FieldErrors::default();
    let v = p.flag(&mut errs, "include_archived", false);
    errs.into_result().map(|()| v)
}

/// Create a provider. `capabilities` is caps.yaml, validated on write and stored as given.
#[utoipa::path(post, path = "/v1/providers", tag = "providers", security(("bearer" = ["caps:write"])),
    request_body = CreateProvider,
    responses((status = 201, body = Provider), (status = 400, body = ErrorBody),
        (status = 409, description = "`already_exists`: the name is taken", body = ErrorBody), (status = 423, body = ErrorBody)))]
pub async fn create_provider(
    State(s): State<AppState>,
    Auth(c): Auth,
    Json(req): Json<CreateProvider>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, axum::Json(s.app.create_provider(&c, req).await?)))
}

/// List providers; archived ones only with `include_archived=true`.
#[utoipa::path(get, path = "/v1/providers", tag = "providers", security(("bearer" = [])),
    params(("include_archived" = Option<bool>, Query, description = "Also list archived providers"),
        ("limit" = Option<u32>, Query, description = "Page size (1-1000); without it the whole list"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, body = ProviderList), (status = 400, description = "`validation_error` (limit), `invalid_cursor`", body = ErrorBody)))]
pub async fn list_providers(State(s): State<AppState>, Auth(c): Auth, uri: Uri, p: Params) -> ApiResult<Response> {
    let pp = PageParams::parse(&p, "providers")?;
    let all = s.app.list_providers(&c, include_archived(&p)?).await?;
    let (providers, next) = paging::page(all, "providers", |p| format!("{}\u{1}{}", p.name, p.id), &pp);
    Ok(paging::answer(&uri, ProviderList { providers, next_cursor: next.clone() }, next.as_deref()))
}

#[utoipa::path(get, path = "/v1/providers/{id}", tag = "providers", security(("bearer" = [])),
    params(("id" = ProviderId, Path, description = "Provider id (`prov_…`)")),
    responses((status = 200, body = Provider), (status = 404, body = ErrorBody)))]
pub async fn get_provider(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Provider>> {
    Ok(axum::Json(s.app.get_provider(&c, &id).await?))
}

/// Update a provider: only the fields present change; `config` merges key by key (`null` clears a key).
#[utoipa::path(patch, path = "/v1/providers/{id}", tag = "providers", security(("bearer" = ["caps:write"])),
    params(("id" = ProviderId, Path, description = "Provider id (`prov_…`)")), request_body = PatchProvider,
    responses((status = 200, body = Provider), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 423, body = ErrorBody)))]
pub async fn patch_provider(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
    Json(req): Json<PatchProvider>,
) -> ApiResult<axum::Json<Provider>> {
    Ok(axum::Json(s.app.patch_provider(&c, &id, req).await?))
}

/// Archive a provider and every role that uses it. Refused while their workspaces run.
#[utoipa::path(post, path = "/v1/providers/{id}/archive", tag = "providers", security(("bearer" = ["caps:write"])),
    params(("id" = ProviderId, Path, description = "Provider id (`prov_…`)")),
    responses((status = 200, body = ProviderArchived), (status = 404, body = ErrorBody),
        (status = 409, description = "`workspaces_active`", body = ErrorBody)))]
pub async fn archive_provider(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<ProviderArchived>> {
    Ok(axum::Json(s.app.archive_provider(&c, &id).await?))
}

/// Unarchive a provider (its roles stay archived until unarchived one by one).
#[utoipa::path(post, path = "/v1/providers/{id}/unarchive", tag = "providers", security(("bearer" = ["caps:write"])),
    params(("id" = ProviderId, Path, description = "Provider id (`prov_…`)")),
    responses((status = 200, body = Status, example = json!({"status": "unarchived"})), (status = 404, body = ErrorBody),
        (status = 409, description = "`not_archived`", body = ErrorBody), (status = 423, body = ErrorBody)))]
pub async fn unarchive_provider(
    State(s): State<AppState>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    s.app.unarchive_provider(&c, &id).await?;
    Ok(status("unarchived"))
}
