//! evershell-api: the `/v1` HTTP API. Routes are declared with their OpenAPI description and required scopes in one
//! place (`routes/*`); `access` enforces those scopes; `error` and `envelope` turn every failure into the error
//! envelope; `idempotency` replays retried POSTs. Handlers only parse, call `App`, and shape the answer.

pub mod access;
pub mod envelope;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod metrics;
pub mod multipart;
pub mod openapi;
pub mod paging;
pub mod routes;
pub mod state;
pub mod timeout;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use evershell_app::App;
use evershell_core::{Error, ErrorCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use access::AccessTable;
pub use state::{AppState, Limits};

/// The OpenAPI document as served (without building a server).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) =
        OpenApiRouter::<AppState>::with_openapi(openapi::ApiDoc::openapi()).merge(routes::all()).split_for_parts();
    openapi::finish(&mut doc);
    doc
}

/// Build the HTTP application.
pub fn router(app: Arc<App>, metrics: Option<PrometheusHandle>, limits: Limits) -> Router {
    let state = AppState { app: app.clone(), openapi: Arc::new(OnceLock::new()), metrics, limits };
    let (router, mut doc) =
        OpenApiRouter::with_openapi(openapi::ApiDoc::openapi()).merge(routes::all()).split_for_parts();
    openapi::finish(&mut doc);
    let table = Arc::new(AccessTable::from_openapi(&doc));
    let _ = state.openapi.set(doc.to_pretty_json().unwrap_or_default());
    router
        .route_layer(middleware::from_fn_with_state((app.clone(), limits.max_body_bytes), idempotency::layer))
        .route_layer(middleware::from_fn_with_state((app, table), access::enforce))
        .route_layer(middleware::from_fn(metrics::track))
        .fallback(|| async { error::ApiError(Error::new(ErrorCode::NotFound, "no such route")) })
        .with_state(state)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn_with_state(limits, timeout::enforce))
        .layer(middleware::from_fn(envelope::finish))
}
