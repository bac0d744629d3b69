//! The OpenAPI 3.1 document: the base (info, security scheme, shared schemas) plus a finishing pass that adds the
//! responses and headers every operation shares (401/403 on authenticated routes, 500/503 everywhere, the
//! `Idempotency-Key` header with its 409/422 on every authenticated POST), so handlers only declare what is theirs.

use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Doc, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "HTTP API for the Evershell control plane",
        description = "The `/v1` API of a self-hosted Evershell control plane. Errors always use the envelope \
`{\"error\":{\"code\",\"message\",\"request_id\",\"details\"?}}` with `code` from `ErrorCode`; every response carries \
`X-Request-Id`. Authenticate with `Authorization: Bearer <session JWT or sk_live_… API key>`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody, evershell_core::ErrorCode, evershell_core::scope::Scope)),
    modifiers(&Bearer),
    tags(
        (name = "meta", description = "Health, metrics and this document"),
        (name = "identity", description = "Sign-in and the caller"),
        (name = "api-keys", description = "API keys"),
        (name = "memberships", description = "People in the organisation"),
        (name = "providers", description = "LLM providers"),
        (name = "agent-roles", description = "Agent roles"),
        (name = "secrets", description = "Secrets: named values sealed at rest, referenced as `secrets[\"name\"]`"),
        (name = "credentials", description = "Credentials the egress proxy injects or mints, sealed at rest"),
        (name = "workspaces", description = "Workspaces and their lifecycle"),
        (name = "files", description = "Live and snapshot files of a workspace"),
        (name = "audit", description = "The audit trail"),
    )
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut Doc) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A session JWT (`eyJ…`) or an API key (`sk_live_…`)"))
                    .build(),
            ),
        );
    }
}

fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
        .build()
        .into()
}

fn is_public(op: &Operation) -> bool {
    op.security.as_ref().is_some_and(|s| {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|r| r.as_object().is_some_and(|o| o.is_empty()))
    })
}

fn add(op: &mut Operation, code: &str, description: &str) {
    op.responses.responses.entry(code.to_string()).or_insert_with(|| error_response(description));
}

/// axum spells a catch-all segment `{*path}`; OpenAPI has no such syntax, so the document says `{path}` (the
/// parameter's description says it may hold slashes).
fn normalise_catch_alls(doc: &mut Doc) {
    let paths = std::mem::take(&mut doc.paths.paths);
    for (path, mut item) in paths {
        if path.contains("{*") {
            let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
            for op in ops.into_iter().flatten() {
                for p in op.parameters.iter_mut().flatten() {
                    if let RefOr::T(p) = p {
                        p.name = p.name.trim_start_matches('*').to_string();
                    }
                }
            }
        }
        doc.paths.paths.insert(path.replace("{*", "{"), item);
    }
}

/// Add the shared responses and headers to every operation.
pub fn finish(doc: &mut Doc) {
    normalise_catch_alls(doc);
    for item in doc.paths.paths.values_mut() {
        let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
        for (i, op) in ops.into_iter().enumerate() {
            let Some(op) = op.as_mut() else { continue };
            let public = is_public(op);
            if !public {
                add(op, "401", "`unauthenticated`: missing, malformed, expired or revoked credential");
                add(op, "403", "`permission_denied`: the caller holds none of the listed scopes");
            }
            add(op, "500", "`internal`: unexpected error (see the server log for the request id)");
            add(op, "503", "`unavailable`: the store is unreachable");
            let is_post = i == 1;
            if is_post && !public {
                add(op, "422", "`idempotency_key_reused`: the Idempotency-Key was used with a different request");
                op.responses.responses.entry("409".into()).or_insert_with(|| {
                    error_response("`idempotency_key_in_flight`: the first request with this key is still running")
                });
                let header = ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header)
                    .description(Some(
                        "Retry safely: a retry with the same key and body within 24 h replays the first response",
                    ))
                    .schema(Some(
                        utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String),
                    ))
                    .build();
                op.parameters.get_or_insert_with(Vec::new).push(RefOr::T(header));
            }
        }
    }
}
