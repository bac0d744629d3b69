//! The state every handler shares.

use std::sync::{Arc, OnceLock};

use evershell_app::App;
use metrics_exporter_prometheus::PrometheusHandle;

/// Request-size and request-time limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest JSON body.
    pub max_body_bytes: usize,
    /// Largest file written through `PUT …/sandbox/files/{path}`.
    pub max_upload_bytes: u64,
    /// Longest `?wait=true` hold.
    pub max_wait_ms: u64,
    /// Longest time to the response head of an ordinary request (`?wait=true` adds `max_wait_ms`).
    pub request_timeout_ms: u64,
    /// Longest file upload (`PUT …/sandbox/files/{path}`).
    pub upload_timeout_ms: u64,
    /// Always mark the session cookie `Secure` (the server is behind TLS); it is also marked so whenever a request
    /// arrives with `X-Forwarded-Proto: https`.
    pub secure_cookies: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_upload_bytes: 1 << 30,
            max_wait_ms: 300_000,
            request_timeout_ms: 60_000,
            upload_timeout_ms: 3_600_000,
            secure_cookies: false,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub app: Arc<App>,
    /// The OpenAPI document, serialised once the router is built.
    pub openapi: Arc<OnceLock<String>>,
    pub metrics: Option<PrometheusHandle>,
    pub limits: Limits,
}
