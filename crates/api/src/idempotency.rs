//! `Idempotency-Key` on authenticated POSTs: the first request with a key runs and its answer (status and body, or
//! the error it produced) is stored; a retry with the same key and the same request within the TTL replays it; the
//! same key with a different request is `422 idempotency_key_reused`; while the first is still running, `409
//! idempotency_key_in_flight`. Server errors (5xx) are not stored, so a retry runs again. Keys are scoped to the
//! caller (org and principal).
//!
//! Secrets shown once are never stored: a route marks the top-level JSON fields of its answer that hold one
//! ([`SecretFields`]); they are kept as `null` and a replay says so in `Idempotent-Redacted`. A key in flight is
//! claimed by this server process under a lease renewed while the request runs, so a claim left by a process that
//! died mid-request is taken over once the lease lapses instead of answering 409 for a day.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use evershell_app::idempotency::IdempotencyBegin;
use evershell_app::{App, Caller, Principal};
use evershell_core::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, PendingError};

pub const HEADER: &str = "idempotency-key";
/// On a replay: the comma-separated fields whose secret was not kept (they are `null`).
pub const REDACTED_HEADER: &str = "idempotent-redacted";

/// Response extension: top-level JSON fields of this answer that hold a secret shown once (an API key's `value`,
/// an `invite_token`). The idempotency record keeps them as `null`.
#[derive(Debug, Clone, Copy)]
pub struct SecretFields(pub &'static [&'static str]);
/// Largest response kept for replay.
const MAX_STORED: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Stored {
    Ok {
        content_type: Option<String>,
        body: String,
        /// Fields set to `null` because they held a secret.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        redacted: Vec<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
        details: Option<serde_json::Value>,
    },
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
    let lease_ms = app.idempotency_lease_ms();
    match app.idempotency_begin(caller.org_id, &scoped, &fingerprint).await? {
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
    let res = {
        // Renew the lease while the request runs: the claim stays ours exactly as long as we are alive.
        let run = next.run(Request::from_parts(parts, Body::from(bytes)));
        tokio::pin!(run);
        let mut beat = tokio::time::interval(std::time::Duration::from_millis(lease_ms as u64 / 3));
        beat.tick().await;
        loop {
            tokio::select! {
                r = &mut run => break r,
                _ = beat.tick() => {
                    match app.idempotency_renew(caller.org_id, &scoped).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!("idempotency claim taken over while its request ran"),
                        Err(e) => tracing::warn!(error = ?e, "renewing an idempotency lease failed"),
                    }
                }
            }
        }
    };
    let status = res.status();
    if status.is_server_error() {
        app.idempotency_abandon(caller.org_id, &scoped).await?;
        return Ok(res);
    }
    let (mut parts, body) = res.into_parts();
    let stored = match parts.extensions.get::<PendingError>() {
        Some(p) => Stored::Error { code: p.code, message: p.message.clone(), details: p.details.clone() },
        None => {
            let bytes = match to_bytes(body, MAX_STORED).await {
                Ok(b) => b,
                Err(_) => {
                    app.idempotency_abandon(caller.org_id, &scoped).await?;
                    return Err(Error::internal(anyhow::anyhow!("response too large to keep for idempotent replay")));
                }
            };
            let content_type =
                parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
            let (body, redacted) = match parts.extensions.get::<SecretFields>() {
                Some(secrets) => redact(&bytes, secrets.0)?,
                None => (String::from_utf8_lossy(&bytes).into_owned(), Vec::new()),
            };
            let s = Stored::Ok { content_type, body, redacted };
            parts.headers.remove(header::CONTENT_LENGTH);
            let json = serde_json::to_string(&s).map_err(|e| Error::internal(anyhow::anyhow!(e)))?;
            complete(app, &caller, &scoped, status.as_u16(), &json).await?;
            return Ok(Response::from_parts(parts, Body::from(bytes)));
        }
    };
    let json = serde_json::to_string(&stored).map_err(|e| Error::internal(anyhow::anyhow!(e)))?;
    complete(app, &caller, &scoped, status.as_u16(), &json).await?;
    Ok(Response::from_parts(parts, body))
}

async fn complete(app: &App, caller: &Caller, key: &str, status: u16, json: &str) -> Result<(), Error> {
    if !app.idempotency_complete(caller.org_id, key, status, json).await? {
        // Our lease lapsed and another request took the key over; its answer is the one kept.
        tracing::warn!("idempotency claim taken over before its answer was kept");
    }
    Ok(())
}

/// The body with every field of `secrets` present at the top level set to `null`, and those fields' names.
fn redact(bytes: &[u8], secrets: &[&str]) -> Result<(String, Vec<String>), Error> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(anyhow::anyhow!("a secret-bearing answer is not JSON: {e}")))?;
    let mut redacted = Vec::new();
    if let Some(obj) = v.as_object_mut() {
        for f in secrets {
            if let Some(slot) = obj.get_mut(*f) {
                *slot = serde_json::Value::Null;
                redacted.push((*f).to_string());
            }
        }
    }
    Ok((v.to_string(), redacted))
}

fn replay(status: u16, stored: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut res = match serde_json::from_str::<Stored>(stored) {
        Ok(Stored::Ok { content_type, body, redacted }) => {
            let mut r = (status, body).into_response();
            if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            if let Ok(v) = HeaderValue::from_str(&redacted.join(","))
                && !redacted.is_empty()
            {
                r.headers_mut().insert(REDACTED_HEADER, v);
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
