//! The `/v1` routes, one module per resource. Each handler's `#[utoipa::path]` is its documentation and its access
//! declaration (`security`), see `access.rs`.

pub mod activity;
pub mod audit;
pub mod credentials;
pub mod identity;
pub mod meta;
pub mod providers;
pub mod roles;
pub mod secrets;
pub mod tasks;
pub mod workspace_files;
pub mod workspaces;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub fn all() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(meta::router())
        .merge(identity::router())
        .merge(providers::router())
        .merge(roles::router())
        .merge(secrets::router())
        .merge(credentials::router())
        .merge(audit::router())
        .merge(activity::router())
        .merge(workspaces::router())
        .merge(workspace_files::router())
        .merge(tasks::router())
}
