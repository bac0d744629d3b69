//! Request metrics: `evershell_http_requests_total{method,route,status}` and
//! `evershell_http_request_seconds{method,route}`. Every label has a bounded set of values, whatever clients send:
//! the method is one of the standard ones or `other`, the route is the matched template (never the raw path, which
//! holds ids) or `unmatched`, and the status is a number.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// The method label: a standard method's name, else `other` (clients may invent any number of methods).
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

pub async fn track(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let started = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("evershell_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("evershell_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}

#[cfg(test)]
mod tests {
    #[test]
    fn invented_methods_share_one_label() {
        use axum::http::Method;
        assert_eq!(super::method_label(&Method::GET), "GET");
        assert_eq!(super::method_label(&Method::from_bytes(b"FROB").unwrap()), "other");
        assert_eq!(super::method_label(&Method::from_bytes(b"get").unwrap()), "other");
    }
}
