//! `Idempotency-Key` on authenticated POSTs: the first request with a key runs and its answer (status and body, or
//! the error it produced) is stored; a retry with the same key and the same request within the TTL replays it; the
//! same key with a different request is `422 idempotency_key_reused`; while the first is still running, `409
//! idempotency_key_in_flight`. Server errors (5xx) are not stored, so a retry runs again. Keys are scoped to the
//! caller (org and principal).

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use evershell_app::{App, Caller, Principal};
use evershell_core::{Error, ErrorCode, Timestamp};
use evershell_store::IdempotencyBegin;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, PendingError};

pub const HEADER: &str = "idempotency-key";
/// Largest response kept for replay.
const MAX_STORED: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Stored {
    Ok { content_type: Option<String>, body: String },
    Error { code: ErrorCode, message: String, details: Option<serde_json::Value> },
}

fn principal(c: &Caller) -> String {
    match &c.principal {
        Principal::User { user_id, .. } => user_id.to_string(),
        Principal::ApiKey { key_id, .. } => key_id.to_string(),
    }
}

pub async fn layer(State((app, max_body)): State<(Arc<App>, usize)>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER).cloned() else { return next.run(req).await };
    let Some(caller) = req.extensions().get::<Caller>().cloned() else { return next.run(req).await };
    match run(&app, max_body, caller, key, req, next).await {
        Ok(r) => r,
        Err(e) => ApiError(e).into_response(),
    }
}

async fn run(
    app: &App,
    max_body: usize,
    caller: Caller,
    key: HeaderValue,
    req: Request,
    next: Next,
) -> Result<Response, Error> {
    let key = key
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| Error::invalid_field("Idempotency-Key", "must be 1-255 printable ASCII characters"))?
        .to_string();
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, max_body)
        .await
        .map_err(|_| Error::new(ErrorCode::PayloadTooLarge, "the request body is larger than the configured limit"))?;
    let mut h = Sha256::new();
    h.update(parts.method.as_str());
    h.update([0]);
    h.update(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""));
    h.update([0]);
    h.update(&bytes);
    let fingerprint = hex::encode(h.finalize());
    let scoped = format!("{}:{key}", principal(&caller));
    let now = Timestamp::now();
    let expires = now.plus_millis(app.config.idempotency_ttl_ms);
    match app.store.idempotency_begin(caller.org_id, &scoped, &fingerprint, now, expires).await? {
        IdempotencyBegin::Replay { status, body } => return Ok(replay(status, &body)),
        IdempotencyBegin::Mismatch => {
            return Err(Error::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request",
            ));
        }
        IdempotencyBegin::InFlight => {
            return Err(Error::new(
                ErrorCode::IdempotencyKeyInFlight,
                "a request with this Idempotency-Key is still being processed; retry shortly",
            ));
        }
        IdempotencyBegin::New => {}
    }
    let res = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = res.status();
    if status.is_server_error() {
        app.store.idempotency_abandon(caller.org_id, &scoped).await?;
        return Ok(res);
    }
    let (mut parts, body) = res.into_parts();
    let stored = match parts.extensions.get::<PendingError>() {
        Some(p) => Stored::Error { code: p.code, message: p.message.clone(), details: p.details.clone() },
        None => {
            let bytes = match to_bytes(body, MAX_STORED).await {
                Ok(b) => b,
                Err(_) => {
                    app.store.idempotency_abandon(caller.org_id, &scoped).await?;
                    return Err(Error::internal(anyhow::anyhow!("response too large to keep for idempotent replay")));
                }
            };
            let content_type =
                parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
            let s = Stored::Ok { content_type, body: String::from_utf8_lossy(&bytes).into_owned() };
            parts.headers.remove(header::CONTENT_LENGTH);
            let json = serde_json::to_string(&s).map_err(|e| Error::internal(anyhow::anyhow!(e)))?;
            app.store.idempotency_complete(caller.org_id, &scoped, status.as_u16(), &json).await?;
            return Ok(Response::from_parts(parts, Body::from(bytes)));
        }
    };
    let json = serde_json::to_string(&stored).map_err(|e| Error::internal(anyhow::anyhow!(e)))?;
    app.store.idempotency_complete(caller.org_id, &scoped, status.as_u16(), &json).await?;
    Ok(Response::from_parts(parts, body))
}

fn replay(status: u16, stored: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut res = match serde_json::from_str::<Stored>(stored) {
        Ok(Stored::Ok { content_type, body }) => {
            let mut r = (status, body).into_response();
            if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            r
        }
        Ok(Stored::Error { code, message, details }) => {
            let mut r = status.into_response();
            r.extensions_mut().insert(PendingError { code, message, details });
            r
        }
        Err(_) => ApiError(Error::internal(anyhow::anyhow!("unreadable stored idempotent response"))).into_response(),
    };
    res.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    res
}
