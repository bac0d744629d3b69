//! Contract conformance: real answers of the real server, on success and on error, checked by an independent JSON
//! Schema validator (the `jsonschema` crate, draft 2020-12, formats on) against the committed `docs/openapi.json`.
//! Every answer's status must be documented on its operation, its content type must be one the document lists, and
//! a JSON body must validate against the documented schema (a wrong enum spelling, a missing or mistyped field, a
//! `null` where the document promises none all fail). Every operation of the document is exercised at least once
//! with a 2xx and once with an error, partly by hand (the interesting cases) and partly by sweeps derived from the
//! document itself (no credential, a read-only key, invalid `Idempotency-Key`, wrong `Content-Type`, an oversized
//! body, unknown ids, a `past_due` org), so a route added later is held to its document without a line here.
//!
//! A second test checks the request side: values the document allows are values the server's own checks accept.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use evershell_core::scope::{MemberRole, PermissionSet};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{PASSWORD, Resp, TestServer};

/// Operations whose only error answers are the server's own failure (500/503): nothing a client sends can make
/// them fail, so the main test exercises them on success only (`a_lost_store_answers_the_documented_503` checks
/// the 503 of `/healthz`).
/// Operations this deployment answers only with an error: the authorization-code flow is not offered (`501
/// not_supported`, documented on the operation).
const NO_SUCCESS: &[(&str, &str)] = &[("POST", "/v1/credentials/{id}/oauth/start")];

const NO_CLIENT_ERROR: &[(&str, &str)] = &[("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/v1/openapi.json")];

fn committed_document() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/openapi.json")).expect("the document is JSON")
}

/// The document, a validator cache, and what was seen.
struct Contract {
    doc: Value,
    /// (METHOD, template) of every operation.
    ops: Vec<(String, String)>,
    validators: Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
    /// (METHOD, template) → (a 2xx was seen, an error was seen).
    seen: Mutex<BTreeMap<(String, String), (bool, bool)>>,
    failures: Mutex<Vec<String>>,
    checked: Mutex<usize>,
}

impl Contract {
    fn new(doc: Value) -> Self {
        let mut ops = vec![];
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                ops.push((method.to_uppercase(), path.clone()));
            }
        }
        Self {
            doc,
            ops,
            validators: Mutex::default(),
            seen: Mutex::default(),
            failures: Mutex::default(),
            checked: Mutex::default(),
        }
    }

    /// The template a concrete path belongs to: literal segments must match, `{x}` takes one segment, a trailing
    /// `{path}` takes the rest; the most literal match wins (`/v1/workspaces/stop-all` over `/v1/workspaces/{id}`).
    fn template(&self, method: &str, path: &str) -> Option<String> {
        let segs: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, &String)> = None;
        for (m, t) in &self.ops {
            if m != method {
                continue;
            }
            let tsegs: Vec<&str> = t.split('/').collect();
            let catch_all = tsegs.last() == Some(&"{path}");
            let fits = if catch_all { segs.len() >= tsegs.len() } else { segs.len() == tsegs.len() };
            if !fits {
                continue;
            }
            let mut literal = 0;
            let ok = tsegs.iter().zip(&segs).all(|(t, s)| {
                if t.starts_with('{') {
                    !s.is_empty()
                } else {
                    literal += 1;
                    t == s
                }
            });
            if ok && best.is_none_or(|(n, _)| literal > n) {
                best = Some((literal, t));
            }
        }
        best.map(|(_, t)| t.clone())
    }

    fn validator(&self, key: &str, schema: &Value) -> std::sync::Arc<jsonschema::Validator> {
        let mut cache = self.validators.lock().unwrap();
        cache
            .entry(key.to_string())
            .or_insert_with(|| {
                // The schema with the document's components beside it, so its `#/components/schemas/…` refs resolve.
                let mut root = json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "components": self.doc["components"].clone(),
                });
                for (k, v) in schema.as_object().expect("a schema object") {
                    root[k] = v.clone();
                }
                std::sync::Arc::new(
                    jsonschema::options()
                        .with_draft(jsonschema::Draft::Draft202012)
                        .should_validate_formats(true)
                        .build(&root)
                        .unwrap_or_else(|e| panic!("{key}: the document's schema does not compile: {e}")),
                )
            })
            .clone()
    }

    fn fail(&self, msg: String) {
        self.failures.lock().unwrap().push(msg);
    }

    /// Check one answer against the document.
    fn check(&self, method: &Method, url_path: &str, r: &Resp) {
        *self.checked.lock().unwrap() += 1;
        let method = method.as_str().to_string();
        let path = url_path.split('?').next().unwrap_or_default();
        let Some(template) = self.template(&method, path) else {
            return self.fail(format!("{method} {path}: no operation in the document"));
        };
        let status = r.status.as_u16();
        let what = format!("{method} {template} → {status}");
        {
            let mut seen = self.seen.lock().unwrap();
            let e = seen.entry((method.clone(), template.clone())).or_default();
            if r.status.is_success() {
                e.0 = true;
            } else {
                e.1 = true;
            }
        }
        let op = &self.doc["paths"][&template][method.to_lowercase()];
        let documented = &op["responses"][status.to_string()];
        if documented.is_null() {
            return self.fail(format!("{what}: status not documented (body {})", r.json));
        }
        let Some(content) = documented["content"].as_object() else {
            if !r.bytes.is_empty() {
                self.fail(format!("{what}: the document promises no body, got {} bytes", r.bytes.len()));
            }
            return;
        };
        let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        let media = ct.split(';').next().unwrap_or("").trim().to_string();
        let Some(schema) = content.get(&media) else {
            let listed: Vec<&String> = content.keys().collect();
            return self.fail(format!("{what}: content type `{ct}` is not one of {listed:?}"));
        };
        if media != "application/json" {
            return;
        }
        let Ok(body) = serde_json::from_slice::<Value>(&r.bytes) else {
            return self.fail(format!("{what}: the body is not JSON"));
        };
        let Some(schema) = schema.get("schema") else { return };
        let v = self.validator(&format!("{what} {media}"), schema);
        let errors: Vec<String> = v.iter_errors(&body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        if !errors.is_empty() {
            self.fail(format!("{what}: the body does not match the document: {}\n  body: {body}", errors.join("; ")));
        }
    }

    /// Every failure so far, and every operation seen on success and on error.
    fn assert_conforms(&self) {
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{} answers differ from docs/openapi.json:\n{}",
            failures.len(),
            failures.join("\n")
        );
        let seen = self.seen.lock().unwrap();
        let mut missing = vec![];
        for (m, t) in &self.ops {
            let (ok, err) = seen.get(&(m.clone(), t.clone())).copied().unwrap_or_default();
            if !ok && !NO_SUCCESS.contains(&(m.as_str(), t.as_str())) {
                missing.push(format!("{m} {t}: never answered 2xx"));
            }
            if !err && !NO_CLIENT_ERROR.contains(&(m.as_str(), t.as_str())) {
                missing.push(format!("{m} {t}: never answered an error"));
            }
        }
        assert!(missing.is_empty(), "operations not exercised:\n{}", missing.join("\n"));
    }
}

/// A body to send.
enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

/// The test server with every answer checked.
struct Client<'a> {
    ts: &'a TestServer,
    c: &'a Contract,
}

impl Client<'_> {
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Body,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut r = self.ts.request(method.clone(), path);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r = match body {
            Body::None => r,
            Body::Json(v) => r.json(&v),
            Body::Raw(ct, bytes) => r.header("content-type", ct).body(bytes),
        };
        let resp = self.ts.raw(r).await;
        self.c.check(&method, path, &resp);
        resp
    }

    async fn send(&self, method: Method, path: &str, token: Option<&str>, body: Body) -> Resp {
        self.send_with(method, path, token, body, &[]).await
    }

    async fn get(&self, path: &str, token: &str) -> Resp {
        self.send(Method::GET, path, Some(token), Body::None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.send(Method::POST, path, Some(token), Body::Json(body)).await
    }

    async fn post_empty(&self, path: &str, token: &str) -> Resp {
        self.send(Method::POST, path, Some(token), Body::None).await
    }

    async fn patch(&self, path: &str, token: &str, body: Value) -> Resp {
        self.send(Method::PATCH, path, Some(token), Body::Json(body)).await
    }

    async fn delete(&self, path: &str, token: &str) -> Resp {
        self.send(Method::DELETE, path, Some(token), Body::None).await
    }
}

fn id(r: &Resp) -> String {
    r.ok()["id"].as_str().unwrap_or_else(|| panic!("no id in {}", r.json)).to_string()
}

/// Concrete values for a template's parameters, and a body that would be valid for the operation.
struct Fixture {
    params: HashMap<&'static str, String>,
    bodies: HashMap<(String, String), Value>,
}

impl Fixture {
    fn path(&self, template: &str) -> String {
        let segs: Vec<String> = template
            .split('/')
            .enumerate()
            .map(|(i, s)| match s {
                "{id}" => {
                    let kind = template.split('/').nth(i - 1).unwrap_or_default();
                    self.params.get(kind).cloned().unwrap_or_else(|| panic!("no id for {template}"))
                }
                "{user_id}" => self.params["user_id"].clone(),
                "{path}" => self.params["path"].clone(),
                "{tid}" => self.params["tid"].clone(),
                s => s.to_string(),
            })
            .collect();
        segs.join("/")
    }

    fn body(&self, method: &str, template: &str) -> Body {
        match (method, self.bodies.get(&(method.to_string(), template.to_string()))) {
            ("PUT", _) => Body::Raw("application/octet-stream", b"swept".to_vec()),
            (_, Some(v)) => Body::Json(v.clone()),
            _ => Body::None,
        }
    }
}

#[tokio::test]
async fn real_answers_match_the_committed_document() {
    // SSE streams end after a moment here, so every answer (a stream's included) can be read to its end.
    let ts = TestServer::start_with(|c| {
        c.activity.max_duration_ms = 300;
        c.activity.heartbeat_ms = 100;
        // Model retries 250 ms, 500 ms, … apart: a task against the closed model port lives ~8 s, so the first one
        // is surely still at its agent when it is cancelled a few requests later, and `first_ws` is idle soon
        // (production waits held this test for half a minute).
        c.agent.model_retry_base_ms = Some(250);
    })
    .await;
    let contract = Contract::new(committed_document());
    let c = Client { ts: &ts, c: &contract };
    let key = ts.key.clone();
    let owner = ts.login(&ts.owner_email).await;
    let org = ts.org_id.clone();
    let read_only = ts.key_with(PermissionSet::ReadOnly).await;
    let (_, member) = ts.user("member@acme.example", MemberRole::Member).await;

    // Meta.
    c.send(Method::GET, "/healthz", None, Body::None).await.ok();
    c.send(Method::GET, "/metrics", None, Body::None).await.ok();
    c.send(Method::GET, "/v1/openapi.json", None, Body::None).await.ok();

    // Identity: sign-in, the caller, keys, memberships.
    let login = |email: &str, password: &str| json!({"email": email, "password": password, "org": "acme"});
    c.send(Method::POST, "/v1/auth/login", None, Body::Json(login(&ts.owner_email, PASSWORD))).await.ok();
    c.send(Method::POST, "/v1/auth/login", None, Body::Json(login(&ts.owner_email, "wrong-password"))).await;
    c.send(Method::POST, "/v1/auth/login", None, Body::Json(json!({"email": 5}))).await;
    let spare_session = ts.login(&ts.owner_email).await;
    c.post_empty("/v1/auth/logout", &spare_session).await.ok();
    c.post_empty("/v1/auth/logout", &spare_session).await.expect(401, "unauthenticated");
    c.get("/v1/me/session", &owner).await.ok();
    c.get("/v1/me/session", &key).await.ok();
    c.get("/v1/me/session", &member).await.ok();
    let created = c.post("/v1/api-keys", &owner, json!({"label": "ci", "permission_set": "full_access"})).await;
    let key_id = id(&created);
    c.post("/v1/api-keys", &owner, json!({"label": " ", "permission_set": "full_access"})).await;
    c.get("/v1/api-keys", &owner).await.ok();
    c.get("/v1/api-keys", &key).await;
    c.delete(&format!("/v1/api-keys/{key_id}"), &owner).await.ok();
    c.delete(&format!("/v1/api-keys/{key_id}"), &owner).await;
    let members = format!("/v1/orgs/{org}/memberships");
    c.get(&members, &owner).await.ok();
    c.get(&members, &member).await.ok();
    c.get("/v1/orgs/org_01JD8X3Q5M2N4P6R8T0V2W4Y6Z/memberships", &owner).await;
    let inv = c.post(&members, &owner, json!({"email": "new@acme.example", "role": "member"})).await;
    let invitee = inv.ok()["user_id"].as_str().unwrap().to_string();
    let token = inv.json["invite_token"].as_str().unwrap().to_string();
    c.post(&members, &owner, json!({"email": "new@acme.example", "role": "member"})).await;
    c.post(&members, &owner, json!({"email": "not-an-email", "role": "member"})).await;
    c.patch(&format!("{members}/{invitee}"), &owner, json!({"role": "operator"})).await;
    let accept = |t: &str, p: &str| json!({"invite_token": t, "password": p});
    c.send(Method::POST, "/v1/auth/accept-invite", None, Body::Json(accept(&token, "short"))).await;
    c.send(Method::POST, "/v1/auth/accept-invite", None, Body::Json(accept("nope", "new-user-password"))).await;
    c.send(Method::POST, "/v1/auth/accept-invite", None, Body::Json(accept(&token, "new-user-password"))).await.ok();
    c.patch(&format!("{members}/{invitee}"), &owner, json!({"role": "operator"})).await.ok();
    c.patch(&format!("{members}/{invitee}"), &owner, json!({"role": "chief"})).await;
    c.delete(&format!("{members}/{invitee}"), &owner).await.ok();
    c.delete(&format!("{members}/{invitee}"), &owner).await;

    // Providers and roles.
    let p = c
        .post(
            "/v1/providers",
            &key,
            json!({"name": "claude", "kind": "anthropic", "domain": "api.anthropic.com",
        "display_name": "Claude", "config": {"region": "eu"}}),
        )
        .await;
    let prov = id(&p);
    c.post("/v1/providers", &key, json!({"name": "claude", "kind": "anthropic", "domain": "api.anthropic.com"})).await;
    c.post("/v1/providers", &key, json!({"name": "Bad Name", "kind": "anthropic", "domain": "a.com"})).await;
    c.get("/v1/providers", &key).await.ok();
    c.get("/v1/providers?include_archived=maybe", &key).await;
    c.get(&format!("/v1/providers/{prov}"), &key).await.ok();
    c.get("/v1/providers/prov_01JD8X3Q5M2N4P6R8T0V2W4Y6Z", &key).await;
    c.patch(&format!("/v1/providers/{prov}"), &key, json!({"default_model": "claude-x", "config": {"region": null}}))
        .await
        .ok();
    c.patch(&format!("/v1/providers/{prov}"), &key, json!({"domain": "*.example.com"})).await;
    let caps = "- name: upstream\n  type: http\n  allow:\n    - domains: [api.example.com]\n      methods: [GET]\n";
    let r = c
        .post(
            "/v1/agent-roles",
            &key,
            json!({"name": "coder", "provider_id": prov, "capabilities": caps,
            "thinking_effort": "low", "pool_policy": "", "task_timeout_seconds": 600}),
        )
        .await;
    let role = id(&r);
    c.post("/v1/agent-roles", &key, json!({"name": "ghost", "provider_id": "prov_01JD8X3Q5M2N4P6R8T0V2W4Y6Z"})).await;
    let spare_role = id(&c.post("/v1/agent-roles", &key, json!({"name": "spare", "provider_id": prov})).await);
    c.get("/v1/agent-roles", &key).await.ok();
    c.get("/v1/agent-roles?include_archived=null", &key).await;
    c.get(&format!("/v1/agent-roles/{role}"), &key).await.ok();
    c.get("/v1/agent-roles/role_01JD8X3Q5M2N4P6R8T0V2W4Y6Z", &key).await;
    c.patch(&format!("/v1/agent-roles/{role}"), &key, json!({"pool_policy": "static", "pool_size": 1})).await.ok();
    c.patch(&format!("/v1/agent-roles/{role}"), &key, json!({"pool_size": 5, "pool_max_size": 1})).await;
    c.post_empty(&format!("/v1/agent-roles/{spare_role}/archive"), &key).await.ok();
    c.post_empty("/v1/agent-roles/role_01JD8X3Q5M2N4P6R8T0V2W4Y6Z/archive", &key).await;
    c.post_empty(&format!("/v1/agent-roles/{spare_role}/unarchive"), &key).await.ok();
    c.post_empty(&format!("/v1/agent-roles/{spare_role}/unarchive"), &key).await;
    let spare_prov = id(&c
        .post("/v1/providers", &key, json!({"name": "spare-prov", "kind": "openai", "domain": "api.openai.com"}))
        .await);
    c.post_empty(&format!("/v1/providers/{spare_prov}/archive"), &key).await.ok();
    c.post_empty("/v1/providers/prov_01JD8X3Q5M2N4P6R8T0V2W4Y6Z/archive", &key).await;
    c.post_empty(&format!("/v1/providers/{spare_prov}/unarchive"), &key).await.ok();
    c.post_empty(&format!("/v1/providers/{spare_prov}/unarchive"), &key).await;

    // Secrets and credentials (a session: API-key templates hold neither secrets:write nor auth:write).
    let sec =
        id(&c.post("/v1/secrets", &owner, json!({"name": "tenant-id", "value": "t-1", "description": "d"})).await);
    c.post("/v1/secrets", &owner, json!({"name": "tenant-id", "value": "again"})).await;
    c.get("/v1/secrets", &owner).await.ok();
    c.get("/v1/secrets", &key).await;
    c.send(Method::PUT, &format!("/v1/secrets/{sec}"), Some(&owner), Body::Json(json!({"value": "t-2"}))).await.ok();
    c.send(Method::PUT, "/v1/secrets/sec_01JD8X3Q5M2N4P6R8T0V2W4Y6Z", Some(&owner), Body::Json(json!({"value": "x"})))
        .await;
    let cred = id(&c
        .post("/v1/credentials", &owner, json!({"name": "gh", "provider": "github", "kind": "api_key", "api_key": "k"}))
        .await);
    c.post("/v1/credentials", &owner, json!({"name": "gh2", "provider": "github", "kind": "api_key"})).await;
    c.get("/v1/credentials", &owner).await.ok();
    c.get(&format!("/v1/credentials/{cred}"), &owner).await.ok();
    c.get("/v1/credentials/cred_01JD8X3Q5M2N4P6R8T0V2W4Y6Z", &owner).await;
    c.post_empty(&format!("/v1/credentials/{cred}/oauth/start"), &owner).await;
    let spare_sec = id(&c.post("/v1/secrets", &owner, json!({"name": "spare", "value": "v"})).await);
    let spare_cred = id(&c
        .post(
            "/v1/credentials",
            &owner,
            json!({"name": "spare", "provider": "github", "kind": "api_key", "api_key": "k"}),
        )
        .await);
    c.delete(&format!("/v1/secrets/{spare_sec}"), &owner).await.ok();
    c.delete(&format!("/v1/secrets/{spare_sec}"), &owner).await;
    c.delete(&format!("/v1/credentials/{spare_cred}"), &owner).await.ok();
    c.delete(&format!("/v1/credentials/{spare_cred}"), &owner).await;

    // Workspaces, their lifecycle and files.
    // Each step waits for the state the next one needs (`wait_status`), however slow the machine.
    let ws = id(&c.post("/v1/workspaces?wait=true&timeout_ms=60000", &key, json!({"role_name": "coder"})).await);
    ts.wait_status(&ws, "idle", 120).await;
    c.post("/v1/workspaces", &key, json!({"role_name": "nobody"})).await;
    c.post("/v1/workspaces", &key, json!({"environment": "staging"})).await;
    c.get("/v1/workspaces", &key).await.ok();
    c.get("/v1/workspaces?status=idle&include_archived=true", &key).await.ok();
    c.get("/v1/workspaces?status=sleeping", &key).await;
    let wsp = format!("/v1/workspaces/{ws}");
    c.get(&wsp, &key).await.ok();
    c.get(&format!("{wsp}?wait=true&timeout_ms=1000"), &key).await.ok();
    c.get("/v1/workspaces/ws_01JD8X3Q5M2N4P6R8T0V2W4Y6Z", &key).await;
    c.get(&format!("{wsp}?timeout_ms=-1"), &key).await;
    c.get(&format!("{wsp}/snapshot/files"), &key).await;
    for (path, bytes, ok) in
        [("notes/a.txt", &b"hello"[..], true), ("bin.dat", &[0xff, 0xfe, 0][..], true), ("a%5Cb", &b"x"[..], false)]
    {
        let raw = Body::Raw("application/octet-stream", bytes.to_vec());
        let r = c.send(Method::PUT, &format!("{wsp}/sandbox/files/{path}"), Some(&key), raw).await;
        assert_eq!(r.status.is_success(), ok, "{path}: {}", r.json);
    }
    c.get(&format!("{wsp}/sandbox/files"), &key).await.ok();
    c.get(&format!("{wsp}/sandbox/files/notes/a.txt"), &key).await.ok();
    c.get(&format!("{wsp}/sandbox/files/bin.dat?max_bytes=2"), &key).await.ok();
    c.get(&format!("{wsp}/sandbox/files/missing.txt"), &key).await;
    c.get(&format!("{wsp}/sandbox/files/a%5Cb"), &key).await;
    c.get(&format!("{wsp}/sandbox/download/notes/a.txt"), &key).await.ok();
    c.get(&format!("{wsp}/sandbox/download/missing.txt"), &key).await;
    c.post(&format!("{wsp}/sandbox/exec"), &key, json!({"argv": ["sh", "-c", "echo hi"]})).await.ok();
    c.post(&format!("{wsp}/sandbox/exec"), &key, json!({"argv": []})).await;
    // Tasks: queued on the idle workspace and handed to its agent.
    let body =
        json!({"description": "say hi", "thinking_effort": "high", "max_continuations": 3, "metadata": {"k": 1}});
    let task = c.post(&format!("{wsp}/tasks"), &key, body).await.ok()["task_id"].as_str().unwrap().to_string();
    c.post(&format!("{wsp}/tasks"), &key, json!({"description": ""})).await;
    c.post(&format!("{wsp}/tasks"), &key, json!({"description": "x", "max_continuations": -1, "metadata": []})).await;
    c.post(&format!("{wsp}/tasks"), &key, json!({"description": "x", "thinking_effort": "maximal"})).await;
    c.get(&format!("{wsp}/tasks"), &key).await.ok();
    c.get(&format!("{wsp}/tasks/{task}"), &key).await.ok();
    c.get(&format!("{wsp}/tasks/task_01JD8X3Q5M2N4P6R8T0V2W4Y6Z"), &key).await;
    // The real agent answers both (the head task is queued or at the agent: a cancel is accepted either way).
    c.post_empty(&format!("{wsp}/task/cancel"), &key).await.ok();
    c.get(&format!("{wsp}/session"), &key).await.ok();
    // Fork at 0 (the workspace as it was created), and its refusals.
    let fork = c.post(&format!("{wsp}/fork"), &key, json!({"fork_point_task_count": 0})).await;
    let child = fork.ok()["workspace_id"].as_str().unwrap().to_string();
    c.post(&format!("{wsp}/fork"), &key, json!({})).await;
    c.post(&format!("{wsp}/fork"), &key, json!({"fork_point_task_count": 99})).await;
    ts.wait_status(&child, "idle", 120).await;
    let first = c.post("/v1/tasks", &key, json!({"role_name": "coder", "description": "first"})).await;
    let first_ws = first.ok()["workspace_id"].as_str().unwrap().to_string();
    c.post("/v1/tasks", &key, json!({"role_name": "nobody", "description": "first"})).await;
    c.post("/v1/tasks", &key, json!({"description": "no role"})).await;
    ts.wait_status(&first_ws, "idle", 120).await;
    c.post_empty(&format!("/v1/workspaces/{first_ws}/task/cancel"), &key).await;
    c.post_empty(&format!("/v1/workspaces/{first_ws}/stop?wait=true&timeout_ms=60000"), &key).await.ok();
    c.post(&format!("/v1/workspaces/{first_ws}/tasks"), &key, json!({"description": "late"})).await;
    c.post_empty(&format!("/v1/workspaces/{first_ws}/task/cancel"), &key).await;
    c.get(&format!("/v1/workspaces/{first_ws}/session"), &key).await;
    c.post_empty(&format!("{wsp}/resume"), &key).await;
    c.post_empty(&format!("{wsp}/archive"), &key).await;
    c.post_empty(&format!("{wsp}/unarchive"), &key).await;
    c.post_empty(&format!("{wsp}/restart?force=maybe"), &key).await;
    c.post_empty(&format!("{wsp}/restart?wait=true&timeout_ms=60000"), &key).await.ok();
    ts.wait_status(&ws, "idle", 120).await;
    c.post_empty(&format!("{wsp}/stop"), &key).await.ok();
    ts.wait_status(&ws, "stopped", 120).await;
    c.post_empty(&format!("{wsp}/stop"), &key).await;
    c.post_empty(&format!("{wsp}/restart"), &key).await;
    c.get(&format!("{wsp}/sandbox/files"), &key).await;
    c.get(&format!("{wsp}/snapshot/files"), &key).await.ok();
    c.get(&format!("{wsp}/snapshot/files/notes/a.txt"), &key).await.ok();
    c.get(&format!("{wsp}/snapshot/files/bin.dat"), &key).await.ok();
    c.get(&format!("{wsp}/snapshot/files/missing.txt"), &key).await;
    c.get(&format!("{wsp}/snapshot/download/notes/a.txt"), &key).await.ok();
    c.get(&format!("{wsp}/snapshot/download/missing.txt"), &key).await;
    c.post_empty(&format!("{wsp}/archive"), &key).await.ok();
    c.post_empty(&format!("{wsp}/resume"), &key).await;
    c.post_empty(&format!("{wsp}/unarchive"), &key).await.ok();
    c.post_empty(&format!("{wsp}/resume"), &key).await.ok();
    ts.wait_status(&ws, "idle", 120).await;
    c.post_empty(&format!("{wsp}/stop?wait=true&timeout_ms=60000"), &key).await.ok();
    ts.wait_status(&ws, "stopped", 120).await;
    c.post_empty(&format!("{wsp}/resume?wait=true&timeout_ms=60000"), &key).await.ok();
    ts.wait_status(&ws, "idle", 120).await;
    c.post_empty(&format!("/v1/agent-roles/{role}/stop-workspaces"), &key).await.ok();
    c.post_empty("/v1/agent-roles/role_01JD8X3Q5M2N4P6R8T0V2W4Y6Z/stop-workspaces", &key).await;
    ts.wait_status(&ws, "stopped", 120).await;
    c.post_empty("/v1/workspaces/stop-all", &key).await.ok();
    c.post_empty("/v1/workspaces/stop-all", &member).await;
    let empty = id(&c.post("/v1/workspaces?wait=true&timeout_ms=60000", &key, json!({"role_id": role})).await);
    ts.wait_status(&empty, "idle", 120).await;
    c.post_empty(&format!("/v1/workspaces/{empty}/stop?wait=true&timeout_ms=60000"), &key).await.ok();

    // The audit trail.
    c.get("/v1/audit", &key).await.ok();
    c.get("/v1/audit?order=asc&limit=2&filter=category=activity", &key).await.ok();
    c.get("/v1/audit?limit=0", &key).await;
    c.get("/v1/audit?cursor=garbage", &key).await;
    c.get(&format!("{wsp}/audit"), &key).await.ok();
    c.get(&format!("{wsp}/audit?from=yesterday"), &key).await;

    // Activity: the history and the streams (which end after `max_duration_ms` above).
    c.get(&format!("{wsp}/activity"), &key).await.ok();
    c.get(&format!("{wsp}/activity?order=asc&limit=1&event_type=workspace_ready"), &key).await.ok();
    c.get(&format!("{wsp}/activity?cursor=garbage"), &key).await.expect(400, "invalid_cursor");
    c.get(&format!("{wsp}/activity?after=2026-01-01T00:00:00Z&cursor=x"), &key).await.expect(400, "validation_error");
    c.get("/v1/activity/stream", &key).await.ok();
    let oldest = c.get(&format!("{wsp}/activity?order=asc&limit=1"), &key).await;
    let oldest = oldest.ok()["events"][0]["id"].as_str().unwrap().to_string();
    let replay =
        c.send_with(Method::GET, "/v1/activity/stream", Some(&key), Body::None, &[("last-event-id", &oldest)]).await;
    assert!(String::from_utf8_lossy(&replay.bytes).contains("event: activity\nid: "), "the replay shows later events");
    c.get(&format!("{wsp}/activity/stream"), &member).await;
    c.get(&format!("{wsp}/activity/stream"), &key).await.ok();
    c.send_with(Method::GET, "/v1/activity/stream", Some(&key), Body::None, &[("last-event-id", "nope")])
        .await
        .expect(400, "invalid_cursor");

    // Idempotency: a replay, and the same key with another body.
    let idem = [("idempotency-key", "conformance-1")];
    let body = json!({"name": "idem", "kind": "gemini", "domain": "generativelanguage.googleapis.com"});
    c.send_with(Method::POST, "/v1/providers", Some(&key), Body::Json(body.clone()), &idem).await.ok();
    c.send_with(Method::POST, "/v1/providers", Some(&key), Body::Json(body), &idem).await.ok();
    let other = json!({"name": "idem2", "kind": "gemini", "domain": "generativelanguage.googleapis.com"});
    c.send_with(Method::POST, "/v1/providers", Some(&key), Body::Json(other), &idem)
        .await
        .expect(422, "idempotency_key_reused");

    // Sweeps over every operation of the document.
    let mut params = HashMap::new();
    params.insert("workspaces", ws.clone());
    params.insert("providers", prov.clone());
    params.insert("agent-roles", role.clone());
    params.insert("api-keys", "api_key_01JD8X3Q5M2N4P6R8T0V2W4Y6Z".to_string());
    params.insert("orgs", org.clone());
    params.insert("secrets", sec.clone());
    params.insert("credentials", cred.clone());
    params.insert("user_id", "usr_01JD8X3Q5M2N4P6R8T0V2W4Y6Z".to_string());
    params.insert("path", "notes/a.txt".to_string());
    params.insert("tid", task.clone());
    let mut bodies = HashMap::new();
    let b = |m: &str, t: &str| (m.to_string(), t.to_string());
    bodies.insert(b("POST", "/v1/providers"), json!({"name": "swept", "kind": "vertex", "domain": "vertex.example"}));
    bodies.insert(b("PATCH", "/v1/providers/{id}"), json!({"display_name": "Swept"}));
    bodies.insert(b("POST", "/v1/agent-roles"), json!({"name": "swept", "provider_id": prov}));
    bodies.insert(b("PATCH", "/v1/agent-roles/{id}"), json!({"description": "swept"}));
    bodies.insert(b("POST", "/v1/workspaces"), json!({"role_name": "coder"}));
    bodies.insert(b("POST", "/v1/api-keys"), json!({"label": "swept", "permission_set": "read_only"}));
    bodies.insert(b("POST", "/v1/secrets"), json!({"name": "swept", "value": "v"}));
    bodies.insert(b("PUT", "/v1/secrets/{id}"), json!({"value": "v"}));
    bodies.insert(
        b("POST", "/v1/credentials"),
        json!({"name": "swept", "provider": "github", "kind": "api_key", "api_key": "k"}),
    );
    bodies.insert(b("POST", "/v1/workspaces/{id}/sandbox/exec"), json!({"argv": ["true"]}));
    bodies.insert(b("POST", "/v1/workspaces/{id}/tasks"), json!({"description": "swept"}));
    bodies.insert(b("POST", "/v1/tasks"), json!({"role_name": "coder", "description": "swept"}));
    bodies.insert(b("POST", "/v1/orgs/{id}/memberships"), json!({"email": "swept@acme.example", "role": "member"}));
    bodies.insert(b("PATCH", "/v1/orgs/{id}/memberships/{user_id}"), json!({"role": "member"}));
    bodies.insert(b("POST", "/v1/auth/login"), login(&ts.owner_email, PASSWORD));
    bodies.insert(b("POST", "/v1/auth/accept-invite"), accept("swept", "swept-password"));
    let fx = Fixture { params, bodies };
    let doc = committed_document();
    let ops = contract.ops.clone();
    let op = |m: &str, t: &str| doc["paths"][t][m.to_lowercase()].clone();
    let public = |m: &str, t: &str| {
        op(m, t)["security"]
            .as_array()
            .is_some_and(|alts| alts.iter().any(|a| a.as_object().is_some_and(|o| o.is_empty())))
    };
    let method = |m: &str| Method::from_bytes(m.as_bytes()).unwrap();
    for (m, t) in &ops {
        let path = fx.path(t);
        if !public(m, t) {
            // No credential, a revoked-looking one, and a read-only key.
            c.send(method(m), &path, None, fx.body(m, t)).await;
            c.send(method(m), &path, Some("sk_live_nope"), fx.body(m, t)).await;
            if m != "GET" {
                c.send(method(m), &path, Some(&read_only), fx.body(m, t)).await;
            }
        }
        let takes_json = !op(m, t)["requestBody"]["content"]["application/json"].is_null();
        if takes_json {
            c.send(method(m), &path, Some(&owner), Body::Raw("text/plain", b"{}".to_vec())).await;
            let big = json!({"x": "y".repeat(2 << 20)});
            c.send(method(m), &path, Some(&owner), Body::Json(big)).await;
        }
        if m == "POST" && !public(m, t) {
            let long = "k".repeat(300);
            c.send_with(method(m), &path, Some(&owner), fx.body(m, t), &[("idempotency-key", &long)]).await;
        }
    }
    // Unknown ids of the right shape.
    for (m, t) in &ops {
        if t.contains("{id}") && !t.starts_with("/v1/orgs") {
            let unknown = t
                .replace("{id}", &unknown_id(t))
                .replace("{path}", "a.txt")
                .replace("{tid}", "task_01JD8X3Q5M2N4P6R8T0V2W4Y6Z");
            c.send(method(m), &unknown, Some(&owner), fx.body(m, t)).await;
        }
    }
    // Billing: every mutating operation of a past-due org (create-class calls must answer the documented 423).
    let acme = evershell_app::admin::find_org(ts.app.store().as_ref(), "acme").await.unwrap();
    evershell_app::admin::set_billing(
        ts.app.store().as_ref(),
        &acme,
        evershell_core::model::BillingStatus::PastDue,
        None,
    )
    .await
    .unwrap();
    let mut locked = BTreeSet::new();
    for (m, t) in &ops {
        // Sign-out would end the session the sweep uses; it is never billing-gated and is exercised above.
        if m == "GET" || m == "DELETE" || public(m, t) || t == "/v1/auth/logout" {
            continue;
        }
        let r = c.send(method(m), &fx.path(t), Some(&owner), fx.body(m, t)).await;
        if r.status.as_u16() == 423 {
            locked.insert(format!("{m} {t}"));
        }
    }
    for must in ["POST /v1/workspaces", "POST /v1/providers", "POST /v1/agent-roles", "POST /v1/api-keys"] {
        assert!(locked.contains(must), "{must} was not refused with 423 for a past-due org: {locked:?}");
    }

    println!("{} answers checked against docs/openapi.json", contract.checked.lock().unwrap());
    contract.assert_conforms();
    ts.stop().await;
}

/// With the store gone, answers are the documented 503 (the error `GET /healthz` can give, which the main test
/// cannot provoke).
#[tokio::test]
async fn a_lost_store_answers_the_documented_503() {
    let ts = TestServer::start_on(crate::harness::Db::Postgres).await;
    let contract = Contract::new(committed_document());
    let c = Client { ts: &ts, c: &contract };
    c.send(Method::GET, "/healthz", None, Body::None).await.ok();
    evershell_store::testing::drop_postgres_database(&ts.db_url).await;
    c.send(Method::GET, "/healthz", None, Body::None).await.expect(503, "unavailable");
    c.get("/v1/providers", &ts.key).await;
    c.post("/v1/providers", &ts.key, json!({"name": "p", "kind": "anthropic", "domain": "a.example"})).await;
    let failures = contract.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    ts.stop().await;
}

/// A well-formed id nobody has, of the kind `template`'s `{id}` names.
fn unknown_id(template: &str) -> String {
    let prefix = match template.split('/').nth(2).unwrap_or_default() {
        "workspaces" => "ws_",
        "providers" => "prov_",
        "agent-roles" => "role_",
        "api-keys" => "api_key_",
        "secrets" => "sec_",
        "credentials" => "cred_",
        other => panic!("no id kind for /{other}"),
    };
    format!("{prefix}01JD8X3Q5M2N4P6R8T0V2W4Y6Z")
}

/// Every `$ref` of the document points at something it defines (a dangling one silently disables checks in
/// generated clients and fuzzers).
#[test]
fn every_reference_in_the_document_resolves() {
    fn refs(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    out.insert(r.to_string());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let doc = committed_document();
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    let dangling: Vec<&String> = all
        .iter()
        .filter(|r| {
            let pointer = r.strip_prefix('#').unwrap_or("not a local reference");
            doc.pointer(pointer).is_none()
        })
        .collect();
    assert!(dangling.is_empty(), "references to nothing: {dangling:?}");
}

/// The request side: what the document allows, the server's own checks accept. Each request field with a pattern
/// is tried on tricky values; a value the document's schema accepts must pass the server's check.
#[test]
fn request_schemas_allow_only_what_the_server_accepts() {
    use evershell_core::FieldErrors;
    use evershell_core::names;
    let doc = committed_document();
    let prop = |schema: &str, field: &str| {
        let s = &doc["components"]["schemas"][schema];
        let s = if s["allOf"].is_array() { &s["allOf"][0] } else { s };
        s["properties"][field].clone()
    };
    let accepts = |schema: &Value, v: &str| {
        let mut root = schema.clone();
        root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        jsonschema::options().with_draft(jsonschema::Draft::Draft202012).build(&root).unwrap().is_valid(&json!(v))
    };
    let check = |f: fn(&mut FieldErrors, &str, &str), v: &str| {
        let mut e = FieldErrors::default();
        f(&mut e, "f", v);
        e.is_empty()
    };
    let long = |n: usize, c: &str| c.repeat(n);
    let corpus: Vec<String> = [
        "",
        " ",
        "\t\n",
        "\0",
        "a\0b",
        "a",
        "A",
        "-a",
        "a-",
        "a b",
        "9lives",
        "claude-prod",
        "ümlaut",
        "\u{3000}",
        "\u{feff}",
        "ada@example.com",
        "ada@localhost",
        "@example.com",
        "a@.com",
        "a@b.",
        "a@b.c",
        "a@@b.c",
        "a b@c.de",
        "ä@b.cd",
        "api.anthropic.com",
        "api.anthropic.com.",
        "host:443",
        "host:99999",
        "*.example.com",
        "-bad.com",
        "bad-.com",
        "a..b",
        "x.y:80.",
        "UPPER.Example.COM",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long(63, "a"), long(64, "a"), long(200, "é"), long(201, "é"), long(254, "a"), long(8, "p"), long(7, "p")])
    .chain([format!("{}@b.co", long(250, "a")), format!("{}.com", long(63, "a")), format!("{}.com", long(64, "a"))])
    .collect();
    type ServerCheck = Box<dyn Fn(&str) -> bool>;
    let cases: Vec<(&str, &str, ServerCheck)> = vec![
        ("CreateProvider", "name", Box::new(move |v| check(names::check_slug, v))),
        ("CreateRole", "name", Box::new(move |v| check(names::check_slug, v))),
        (
            "CreateApiKeyRequest",
            "label",
            Box::new(move |v| check(|e, f, v| names::check_text(e, f, v, names::MAX_LABEL), v)),
        ),
        (
            "CreateProvider",
            "display_name",
            Box::new(move |v| check(|e, f, v| names::check_text(e, f, v, names::MAX_LABEL), v)),
        ),
        ("InviteRequest", "email", Box::new(move |v| check(names::check_email, v))),
        ("AcceptInviteRequest", "password", Box::new(move |v| check(names::check_password, v))),
        (
            "CreateProvider",
            "domain",
            Box::new(|v: &str| {
                let d = v.trim().trim_end_matches('.').to_ascii_lowercase();
                evershell_core::caps::domain_problem(&d).is_none() && !d.contains('*')
            }),
        ),
    ];
    let mut wrong = vec![];
    for (schema, field, server) in &cases {
        let s = prop(schema, field);
        assert!(s.is_object(), "{schema}.{field} is not in the document");
        for v in &corpus {
            if accepts(&s, v) && !server(v) {
                wrong.push(format!("{schema}.{field}: the document allows {v:?}, the server refuses it"));
            }
        }
        assert!(corpus.iter().any(|v| accepts(&s, v)), "{schema}.{field} accepts nothing of the corpus");
    }
    // File paths: the document's pattern against `RelPath::parse`.
    let path_schema = serde_json::to_value(evershell_core::files::rel_path_schema().build()).unwrap();
    for v in ["a", "a/b", "a/", ".a", "..a", "...", ".", "..", "a/./b", "a/../b", "/a", "a//b", "a\\b", "a\0b", "é/ü"]
    {
        if accepts(&path_schema, v) && evershell_core::files::RelPath::parse(v).is_err() {
            wrong.push(format!("path: the document allows {v:?}, the server refuses it"));
        }
        if !accepts(&path_schema, v) && evershell_core::files::RelPath::parse(v).is_ok() && !v.contains("//") {
            wrong.push(format!("path: the server takes {v:?}, the document refuses it"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
