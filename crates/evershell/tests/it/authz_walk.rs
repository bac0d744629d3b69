//! The authorisation walk: every route of the OpenAPI document, unauthenticated → 401; with a key that lacks the
//! route's scopes → 403; from another org → 404 (403 for memberships, as documented); with a revoked key → 401.

use evershell_core::ids::ApiKeyId;
use evershell_core::model::ApiKey;
use evershell_core::scope::{PermissionSet, Scope};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{PASSWORD, TestServer};

struct Route {
    method: Method,
    path: String,
    /// Alternatives of required scopes; `None` for public routes; `Some([])` for any signed-in caller.
    scopes: Option<Vec<Vec<Scope>>>,
}

fn routes(doc: &Value) -> Vec<Route> {
    let mut out = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (m, op) in item.as_object().unwrap() {
            let method: Method = m.to_uppercase().parse().unwrap();
            let sec = op["security"].as_array().expect("every operation declares security");
            let scopes = if sec.iter().any(|r| r.as_object().unwrap().is_empty()) {
                None
            } else {
                Some(
                    sec.iter()
                        .map(|r| {
                            r["bearer"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|s| s.as_str().unwrap().parse().unwrap())
                                .collect()
                        })
                        .filter(|v: &Vec<Scope>| !v.is_empty())
                        .collect(),
                )
            };
            out.push(Route { method, path: path.clone(), scopes });
        }
    }
    out
}

/// Fill the path's parameters with real ids of the org's objects.
fn concrete(path: &str, ids: &Value) -> String {
    let mut out = String::new();
    let segs: Vec<&str> = path.split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        let v = match *seg {
            "{id}" => match segs[i - 1] {
                "workspaces" => ids["ws"].as_str(),
                "providers" => ids["prov"].as_str(),
                "agent-roles" => ids["role"].as_str(),
                "api-keys" => ids["key"].as_str(),
                "orgs" => ids["org"].as_str(),
                "secrets" => ids["secret"].as_str(),
                "credentials" => ids["cred"].as_str(),
                other => panic!("unmapped id parameter after {other}"),
            },
            "{user_id}" => ids["user"].as_str(),
            "{path}" => Some("notes.txt"),
            "{tid}" => Some("task_01JD8X3Q5M2N4P6R8T0V2W4Y6Z"),
            s if s.starts_with('{') => panic!("unmapped parameter {s} in {path}"),
            s => Some(s),
        };
        out.push_str(v.unwrap());
    }
    out
}

/// A key holding every scope except one from each alternative, so no alternative is satisfied.
async fn key_without(ts: &TestServer, alternatives: &[Vec<Scope>]) -> String {
    let drop: Vec<Scope> = alternatives.iter().map(|a| a[0]).collect();
    let scopes: Vec<Scope> = Scope::ALL.iter().copied().filter(|s| !drop.contains(s)).collect();
    let (value, hash, masked) = evershell_app::secrets::new_api_key();
    let key = ApiKey {
        id: ApiKeyId::new(),
        org_id: ts.org_id.parse().unwrap(),
        label: "walk".into(),
        prefix: masked,
        permission_set: PermissionSet::FullAccess,
        permissions: scopes,
        created_by_user_id: None,
        created_at: evershell_core::Timestamp::now(),
    };
    ts.app.store().create_api_key(&key, &hash, &[]).await.unwrap();
    value
}

#[tokio::test]
async fn every_route_enforces_authentication_scopes_and_tenancy() {
    let ts = TestServer::start().await;
    let (pid, rid, role_name) = ts.role("walker").await;
    let ws = ts.idle_workspace(&role_name, &ts.key.clone()).await;
    let (member_id, _) = ts.user("mem@acme.example", evershell_core::scope::MemberRole::Member).await;
    let other =
        evershell_app::admin::bootstrap(ts.app.store().as_ref(), "globex", "boss@globex.example", Some(PASSWORD))
            .await
            .unwrap();
    let other_owner = {
        let r = ts
            .call(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({"email": "boss@globex.example", "password": PASSWORD})),
            )
            .await;
        r.ok()["token"].as_str().unwrap().to_string()
    };
    let own_key = {
        let org = evershell_app::admin::find_org(ts.app.store().as_ref(), "acme").await.unwrap();
        evershell_app::admin::create_api_key(ts.app.store().as_ref(), &org, PermissionSet::ReadOnly, "target")
            .await
            .unwrap()
    };
    // Keys hold neither secrets:write nor auth:write: the Owner makes these.
    let owner = ts.login(&ts.owner_email).await;
    let secret = ts
        .call(Method::POST, "/v1/secrets", Some(&owner), Some(json!({"name": "walk", "value": "v"})))
        .await
        .ok()["id"]
        .clone();
    let cred_body = json!({"name": "walk", "provider": "github", "kind": "api_key", "api_key": "k"});
    let cred = ts.call(Method::POST, "/v1/credentials", Some(&owner), Some(cred_body)).await.ok()["id"].clone();
    let ids = json!({"ws": ws, "prov": pid, "role": rid, "key": own_key.id.to_string(), "org": ts.org_id,
        "user": member_id, "secret": secret, "cred": cred});
    let doc = ts.call(Method::GET, "/v1/openapi.json", None, None).await.json;
    let all = routes(&doc);
    assert!(all.len() >= 40, "only {} operations in the document", all.len());

    let revoked = ts.key_with(PermissionSet::FullAccess).await;
    let revoked_id =
        ts.app.store().find_api_key(&evershell_app::secrets::hash_secret(&revoked)).await.unwrap().unwrap().id;
    ts.app
        .store()
        .revoke_api_key(ts.org_id.parse().unwrap(), revoked_id, evershell_core::Timestamp::now(), &[])
        .await
        .unwrap();

    let mut checked = 0;
    for r in &all {
        let path = concrete(&r.path, &ids);
        let Some(alternatives) = &r.scopes else { continue };
        // A body valid for the route, so that tenancy (not validation) decides the answer.
        let body = match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/v1/orgs/{id}/memberships") => Some(json!({"email": "walk@acme.example", "role": "member"})),
            ("PATCH", "/v1/orgs/{id}/memberships/{user_id}") => Some(json!({"role": "member"})),
            ("POST", "/v1/workspaces/{id}/sandbox/exec") => Some(json!({"argv": ["true"]})),
            ("POST", "/v1/workspaces/{id}/tasks") => Some(json!({"description": "walk"})),
            ("PUT", "/v1/secrets/{id}") => Some(json!({"value": "v2"})),
            ("POST" | "PATCH", _) => Some(json!({})),
            _ => None,
        };
        // Unauthenticated.
        let res = ts.call(r.method.clone(), &path, None, body.clone()).await;
        res.expect(401, "unauthenticated");
        // Revoked key.
        let res = ts.call(r.method.clone(), &path, Some(&revoked), body.clone()).await;
        res.expect(401, "unauthenticated");
        // Wrong scope.
        if !alternatives.is_empty() {
            let k = key_without(&ts, alternatives).await;
            let res = ts.call(r.method.clone(), &path, Some(&k), body.clone()).await;
            assert_eq!(
                (res.status.as_u16(), res.code()),
                (403, "permission_denied"),
                "{} {path}: {}",
                r.method,
                res.json
            );
        }
        // Another org's object.
        if r.path.contains('{') {
            let res = ts.call(r.method.clone(), &path, Some(&other_owner), body.clone()).await;
            let expected = if r.path.starts_with("/v1/orgs/") { 403 } else { 404 };
            assert_eq!(res.status.as_u16(), expected, "{} {path} from another org: {}", r.method, res.json);
            assert!(res.code().ends_with("not_found") || res.code() == "permission_denied", "{}", res.json);
        }
        checked += 1;
    }
    assert!(checked >= 35, "walked {checked} authenticated operations");
    // The other org's owner still works in its own org.
    let _ = other;
    assert_eq!(ts.call(Method::GET, "/v1/providers", Some(&other_owner), None).await.ok()["providers"], json!([]));
    ts.stop().await;
}
