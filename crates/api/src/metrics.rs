//! Request metrics: `evershell_http_requests_total{method,route,status}` and
//! `evershell_http_request_seconds{method,route}`, labelled by the route template (never the raw path, which holds
//! ids).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

pub async fn track(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("evershell_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("evershell_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}
