//! The OpenAPI 3.1 document: the base (info, security scheme, shared schemas) plus a finishing pass that makes every
//! operation say what the server really answers, from what the operation declares, so handlers only write what is
//! theirs and a route added later is documented right by default:
//! - 401/403 on authenticated routes; 500/503 everywhere;
//! - 400 wherever something can be invalid (a query parameter, a header, a body, a file path), 404 wherever a path
//!   names an object, 413 wherever a body is read, 415 wherever that body must be JSON;
//! - the `Idempotency-Key` header (with its exact shape) and its 409/422 on every authenticated POST;
//! - a description on every response, and the error envelope on every error response;
//! - response objects list every property as required: the server always writes each one (`null` when empty),
//!   except the few it leaves out ([`MAY_BE_ABSENT`]).

use std::collections::{BTreeMap, BTreeSet};

use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
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
    // Schemas that only query parameters name are not collected by the route macros: listed here (the
    // conformance test fails on a reference that does not resolve).
    components(schemas(ErrorBody, evershell_core::ErrorCode, evershell_core::scope::Scope, evershell_core::audit::Order)),
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
        (name = "tasks", description = "Tasks: submitted to a workspace's agent, queued, run one at a time"),
        (name = "audit", description = "The audit trail"),
        (name = "activity", description = "Workspace activity: its history and live SSE streams"),
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

/// Response properties the server leaves out instead of writing `null` (`skip_serializing_if`): (schema, property).
pub const MAY_BE_ABSENT: &[(&str, &str)] = &[
    ("ErrorDetail", "details"),
    ("AuditPage", "cursor"),
    // Paged lists: present only when another page follows.
    ("ApiKeyList", "next_cursor"),
    ("MembershipList", "next_cursor"),
    ("ProviderList", "next_cursor"),
    ("RoleList", "next_cursor"),
    ("WorkspaceList", "next_cursor"),
];

/// Objects that need one of several properties: (schema, properties).
const ONE_OF_REQUIRED: &[(&str, &[&str])] = &[("CreateWorkspace", &["role_id", "role_name"])];

/// The `Idempotency-Key` header's shape, as `idempotency::run` checks it.
const IDEMPOTENCY_KEY_PATTERN: &str = "^[\\x21-\\x7e]+$";
const IDEMPOTENCY_KEY_MAX: usize = 255;

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
/// parameter's description says it may hold slashes) with the shape `RelPath` accepts.
fn normalise_catch_alls(doc: &mut Doc) {
    let paths = std::mem::take(&mut doc.paths.paths);
    for (path, mut item) in paths {
        if path.contains("{*") {
            let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
            for op in ops.into_iter().flatten() {
                for p in op.parameters.iter_mut().flatten() {
                    if let RefOr::T(p) = p
                        && p.name.trim_start_matches('*') == "path"
                    {
                        p.name = p.name.trim_start_matches('*').to_string();
                        p.schema = Some(evershell_core::files::rel_path_schema().into());
                    }
                }
            }
        }
        doc.paths.paths.insert(path.replace("{*", "{"), item);
    }
}

/// What an operation takes, for the responses that follow from it.
struct Takes {
    public: bool,
    post: bool,
    query: bool,
    body: bool,
    json_body: bool,
    object_in_path: bool,
    file_path: bool,
}

fn takes(op: &Operation, post: bool) -> Takes {
    let params: Vec<_> = op
        .parameters
        .iter()
        .flatten()
        .filter_map(|p| match p {
            RefOr::T(p) => Some(p),
            RefOr::Ref(_) => None,
        })
        .collect();
    let path_names: Vec<&str> =
        params.iter().filter(|p| matches!(p.parameter_in, ParameterIn::Path)).map(|p| p.name.as_str()).collect();
    Takes {
        public: is_public(op),
        post,
        query: params.iter().any(|p| matches!(p.parameter_in, ParameterIn::Query)),
        body: op.request_body.is_some(),
        json_body: matches!(&op.request_body, Some(RefOr::T(b)) if b.content.contains_key("application/json")),
        object_in_path: path_names.iter().any(|n| *n != "path"),
        file_path: path_names.contains(&"path"),
    }
}

fn finish_operation(op: &mut Operation, t: &Takes) {
    let idempotent_post = t.post && !t.public;
    if !t.public {
        add(op, "401", "`unauthenticated`: missing, malformed, expired or revoked credential");
        add(op, "403", "`permission_denied`: the caller holds none of the listed scopes");
    }
    if t.query || t.body || t.file_path || idempotent_post {
        add(
            op,
            "400",
            "`validation_error`: a query parameter, header, path or body field is invalid (`details.fields` names it)",
        );
    }
    if t.object_in_path {
        add(op, "404", "`*_not_found`: no such object in the caller's organisation");
    }
    if t.body || idempotent_post {
        add(op, "413", "`payload_too_large`: the body is larger than the configured limit");
    }
    if t.json_body {
        add(op, "415", "`unsupported_media_type`: the body must be `application/json`");
    }
    add(op, "500", "`internal`: unexpected error (see the server log for the request id)");
    add(op, "503", "`unavailable`: the store is unreachable");
    if idempotent_post {
        add(op, "422", "`idempotency_key_reused`: the Idempotency-Key was used with a different request");
        add(op, "409", "`idempotency_key_in_flight`: the first request with this key is still running");
        let header = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .description(Some(
                "Retry safely: a retry with the same key and body within 24 h replays the first response",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(IDEMPOTENCY_KEY_MAX))
                    .pattern(Some(IDEMPOTENCY_KEY_PATTERN)),
            ))
            .build();
        op.parameters.get_or_insert_with(Vec::new).push(RefOr::T(header));
    }
    // OpenAPI requires a description on every response.
    for (code, r) in op.responses.responses.iter_mut() {
        if let RefOr::T(r) = r
            && r.description.is_empty()
        {
            r.description = default_description(code).to_string();
        }
    }
}

fn default_description(code: &str) -> &'static str {
    match code {
        "200" => "OK",
        "201" => "Created",
        "202" => "Accepted",
        "400" => "`validation_error`: a query parameter, header, path or body field is invalid",
        "404" => "`*_not_found`: no such object in the caller's organisation",
        "409" => "A state conflict (`code` says which)",
        "413" => "`payload_too_large`",
        "423" => "`billing_inactive`: the organisation's billing posture allows only reads and wind-down calls",
        "502" => "`agent_unreachable`: the workspace's agent did not answer",
        _ => "See `code` in the error envelope",
    }
}

/// Every `#/components/schemas/…` name referenced inside `v`.
fn refs_in(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref"
                    && let Some(name) = v.as_str().and_then(|s| s.strip_prefix("#/components/schemas/"))
                {
                    out.insert(name.to_string());
                }
                refs_in(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| refs_in(v, out)),
        _ => {}
    }
}

/// `roots` and every schema they reach.
fn closure(roots: BTreeSet<String>, schemas: &BTreeMap<String, serde_json::Value>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.into_iter().collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let mut next = BTreeSet::new();
        if let Some(s) = schemas.get(&name) {
            refs_in(s, &mut next);
        }
        todo.extend(next.into_iter().filter(|n| !seen.contains(n)));
    }
    seen
}

/// Response-only objects: every property required (the server writes each, `null` when empty).
fn require_response_properties(doc: &mut Doc) {
    let Some(components) = doc.components.as_mut() else { return };
    let json: BTreeMap<String, serde_json::Value> =
        components.schemas.iter().map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default())).collect();
    let (mut from_responses, mut from_requests) = (BTreeSet::new(), BTreeSet::new());
    for item in doc.paths.paths.values() {
        for op in [&item.get, &item.post, &item.put, &item.patch, &item.delete].into_iter().flatten() {
            refs_in(&serde_json::to_value(&op.responses).unwrap_or_default(), &mut from_responses);
            refs_in(&serde_json::to_value(&op.request_body).unwrap_or_default(), &mut from_requests);
            refs_in(&serde_json::to_value(&op.parameters).unwrap_or_default(), &mut from_requests);
        }
    }
    let responses = closure(from_responses, &json);
    let requests = closure(from_requests, &json);
    let require = |name: &str, o: &mut utoipa::openapi::schema::Object| {
        let absent: Vec<&str> = MAY_BE_ABSENT.iter().filter(|(s, _)| *s == name).map(|(_, p)| *p).collect();
        o.required = o.properties.keys().filter(|k| !absent.contains(&k.as_str())).cloned().collect();
    };
    for name in responses.difference(&requests) {
        match components.schemas.get_mut(name) {
            Some(RefOr::T(Schema::Object(o))) => require(name, o),
            Some(RefOr::T(Schema::AllOf(all))) => {
                for part in &mut all.items {
                    if let RefOr::T(Schema::Object(o)) = part {
                        require(name, o);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Objects that need one of several (non-null) properties become `allOf: [object, anyOf: [{required: [p]}, …]]`.
fn one_of_required(doc: &mut Doc) {
    use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder};
    let Some(components) = doc.components.as_mut() else { return };
    for (name, props) in ONE_OF_REQUIRED {
        let Some(RefOr::T(Schema::Object(o))) = components.schemas.get(*name) else { continue };
        let mut any = AnyOfBuilder::new();
        for p in props.iter() {
            any = any
                .item(ObjectBuilder::new().property(*p, ObjectBuilder::new().schema_type(Type::String)).required(*p));
        }
        let description = o.description.clone();
        let mut object = o.clone();
        object.description = None;
        let all = AllOfBuilder::new().description(description).item(object).item(any).build();
        components.schemas.insert(name.to_string(), RefOr::T(Schema::AllOf(all)));
    }
}

/// Add what follows from each operation, then tighten the schemas.
pub fn finish(doc: &mut Doc) {
    normalise_catch_alls(doc);
    for item in doc.paths.paths.values_mut() {
        let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
        for (i, op) in ops.into_iter().enumerate() {
            let Some(op) = op.as_mut() else { continue };
            let t = takes(op, i == 1);
            finish_operation(op, &t);
        }
    }
    require_response_properties(doc);
    one_of_required(doc);
}
