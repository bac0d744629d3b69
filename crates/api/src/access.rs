//! Route access, declared once: each handler's `#[utoipa::path(security(...))]` lists the scopes it needs, and this
//! module turns the generated OpenAPI document into the table the auth middleware enforces. `security(())` marks a
//! public route; `("bearer" = [])` any signed-in caller; several `("bearer" = [..])` entries are alternatives, the
//! scopes inside one entry are all required. A route that declares nothing is refused at start-up (fail closed).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use evershell_app::{App, Caller};
use evershell_core::scope::Scope;
use evershell_core::{Error, Result};
use utoipa::openapi::OpenApi;

use crate::envelope::RequestId;
use crate::error::ApiError;

/// Name of the session cookie (set by login for the console).
pub const SESSION_COOKIE: &str = "evershell_session";

/// What a route requires.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    Public,
    /// Authenticated, holding every scope of at least one alternative (no alternatives: any signed-in caller).
    Scopes(Vec<Vec<Scope>>),
}

/// (method, OpenAPI path) → requirement.
#[derive(Debug, Default, Clone)]
pub struct AccessTable(HashMap<(Method, String), Requirement>);

impl AccessTable {
    /// Build from the OpenAPI document. Panics on a route without a security declaration or with an unknown scope:
    /// that is a programming error caught by every test run.
    pub fn from_openapi(doc: &OpenApi) -> Self {
        let mut t = HashMap::new();
        for (path, item) in doc.paths.paths.iter() {
            let ops = [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::PATCH, &item.patch),
                (Method::DELETE, &item.delete),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let reqs = op.security.as_ref().unwrap_or_else(|| panic!("{method} {path} declares no security"));
                let json = serde_json::to_value(reqs).expect("security serialises");
                let alternatives: Vec<serde_json::Map<String, serde_json::Value>> =
                    serde_json::from_value(json).expect("security is a list of objects");
                let req = if alternatives.iter().any(|a| a.is_empty()) {
                    Requirement::Public
                } else {
                    let alts: Vec<Vec<Scope>> = alternatives
                        .iter()
                        .map(|a| {
                            a.values()
                                .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                                .map(|s| {
                                    let s = s.as_str().unwrap_or_default().to_string();
                                    s.parse::<Scope>().unwrap_or_else(|e| panic!("{method} {path}: {e}"))
                                })
                                .collect()
                        })
                        .filter(|a: &Vec<Scope>| !a.is_empty())
                        .collect();
                    Requirement::Scopes(alts)
                };
                t.insert((method, path.clone()), req);
            }
        }
        Self(t)
    }

    pub fn get(&self, method: &Method, path: &str) -> Option<&Requirement> {
        self.0.get(&(method.clone(), path.to_string()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&(Method, String), &Requirement)> {
        self.0.iter()
    }
}

/// axum writes a catch-all as `{*path}`; OpenAPI as `{path}`.
fn openapi_path(matched: &str) -> String {
    matched.replace("{*", "{")
}

/// The bearer credential of a request: `Authorization: Bearer …`, else the session cookie.
fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    cookie_credential(headers)
}

/// `?api_key=sk_…` on the SSE routes only (clients such as `EventSource` cannot set headers); never a session JWT.
/// The query string is not logged (request spans carry the path alone).
fn query_credential(path: &str, query: Option<&str>) -> Option<String> {
    if !crate::routes::activity::STREAM_PATHS.contains(&path) {
        return None;
    }
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| v.into_owned())
        .filter(|v| v.starts_with(evershell_app::secrets::API_KEY_PREFIX))
}

/// The session JWT of the `evershell_session` cookie (never an API key).
fn cookie_credential(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.starts_with("eyJ"))
}

/// The middleware: authenticate, then check the route's scopes (401 before 403).
pub async fn enforce(
    State((app, table)): State<(Arc<App>, Arc<AccessTable>)>,
    mut req: Request,
    next: Next,
) -> Response {
    match check(&app, &table, &mut req).await {
        Ok(()) => next.run(req).await,
        Err(e) => axum::response::IntoResponse::into_response(ApiError(e)),
    }
}

async fn check(app: &App, table: &AccessTable, req: &mut Request) -> Result<()> {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| openapi_path(m.as_str()))
        .ok_or_else(|| Error::new(evershell_core::ErrorCode::NotFound, "no such route"))?;
    let Some(requirement) = table.get(req.method(), &path) else {
        // The path is routed, but not for this method: the router's 405 would follow.
        return Err(Error::new(evershell_core::ErrorCode::MethodNotAllowed, "method not allowed on this route"));
    };
    let Requirement::Scopes(alternatives) = requirement else { return Ok(()) };
    let token = credential(req.headers())
        .or_else(|| query_credential(&path, req.uri().query()))
        .ok_or_else(Error::unauthenticated)?;
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let caller = app.authenticate(&token, request_id).await?;
    if !req.headers().contains_key(header::AUTHORIZATION) {
        check_cookie_write(req.method(), req.headers())?;
    }
    if !caller.scopes.satisfies(alternatives) {
        let wanted: Vec<String> =
            alternatives.iter().map(|a| a.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" + ")).collect();
        return Err(Error::permission_denied(format!("caller lacks the required scope ({})", wanted.join(" or "))));
    }
    req.extensions_mut().insert(caller);
    Ok(())
}

/// A state change authenticated by the session cookie alone must show it comes from script, not a cross-site form
/// or a bare request: `Content-Type: application/json` or an `X-Requested-With` header (neither can be sent
/// cross-site without a CORS preflight, which this server never grants). `SameSite=Strict` is the first line.
fn check_cookie_write(method: &Method, headers: &HeaderMap) -> Result<()> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if json || headers.contains_key("x-requested-with") {
        return Ok(());
    }
    Err(Error::permission_denied(
        "a change authenticated by the session cookie needs `Content-Type: application/json` or an \
         `X-Requested-With` header",
    ))
}

/// The authenticated caller, for handlers of non-public routes.
pub struct Auth(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> std::result::Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().map(Auth).ok_or_else(|| ApiError(Error::unauthenticated()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_then_cookie() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer sk_live_abc".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("sk_live_abc"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=b; evershell_session=eyJx.y.z".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("eyJx.y.z"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "evershell_session=sk_live_x".parse().unwrap());
        assert_eq!(credential(&h), None, "API keys are not accepted from cookies");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic Zm9v".parse().unwrap());
        assert_eq!(credential(&h), None);
    }

    #[test]
    fn api_key_in_the_query_only_on_streams_and_never_a_jwt() {
        let key = "sk_live_0123456789abcdef";
        let q = format!("api_key={key}");
        assert_eq!(query_credential("/v1/activity/stream", Some(&q)).as_deref(), Some(key));
        assert_eq!(query_credential("/v1/workspaces/{id}/activity/stream", Some(&q)).as_deref(), Some(key));
        assert_eq!(query_credential("/v1/workspaces/{id}/activity", Some(&q)), None);
        assert_eq!(query_credential("/v1/workspaces", Some(&q)), None);
        assert_eq!(query_credential("/v1/activity/stream", Some("api_key=eyJhbGciOi.x.y")), None);
        assert_eq!(query_credential("/v1/activity/stream", None), None);
    }

    #[test]
    fn catch_all_paths_map_to_openapi() {
        assert_eq!(
            openapi_path("/v1/workspaces/{id}/sandbox/files/{*path}"),
            "/v1/workspaces/{id}/sandbox/files/{path}"
        );
    }
}
