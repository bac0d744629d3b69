//! Providers and agent roles: create/list/get/patch/archive/unarchive, unique names, caps.yaml validation, config
//! merge, pack_ids replacement, archive cascade and guards.

use serde_json::json;

use crate::harness::TestServer;

#[tokio::test]
async fn providers_round_trip_with_config_merge_and_unique_names() {
    let ts = TestServer::start().await;
    let r = ts
        .post(
            "/v1/providers",
            json!({"name": "azure-prod", "kind": "azure-openai", "domain": "Example.OpenAI.Azure.com.",
                   "config": {"api_version": "2024-06-01", "api_type": "azure"}, "default_model": "gpt-4o"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let p = r.json.clone();
    let id = p["id"].as_str().unwrap();
    assert!(id.starts_with("prov_"));
    assert_eq!(p["domain"], "example.openai.azure.com", "normalised");
    assert_eq!(p["org_id"], ts.org_id.as_str());
    assert!(p["archived_at"].is_null());
    ts.post("/v1/providers", json!({"name": "azure-prod", "kind": "openai", "domain": "api.openai.com"}))
        .await
        .expect(409, "already_exists");
    // PATCH: config merges key by key, null clears; absent fields stay.
    let r = ts
        .patch(
            &format!("/v1/providers/{id}"),
            json!({"config": {"api_type": null, "region": "westeurope"}, "display_name": "Azure"}),
        )
        .await;
    let p = r.ok();
    assert_eq!(p["config"], json!({"api_version": "2024-06-01", "region": "westeurope"}));
    assert_eq!(p["display_name"], "Azure");
    assert_eq!(p["default_model"], "gpt-4o");
    let r = ts.patch(&format!("/v1/providers/{id}"), json!({"display_name": null})).await;
    assert!(r.ok()["display_name"].is_null());
    ts.patch(&format!("/v1/providers/{id}"), json!({"name": "renamed"})).await.expect(400, "validation_error");
    ts.patch(&format!("/v1/providers/{id}"), json!({"domain": "not a host"})).await.expect(400, "validation_error");
    assert_eq!(ts.get(&format!("/v1/providers/{id}")).await.ok()["domain"], "example.openai.azure.com");
    ts.get("/v1/providers/prov_01JD8X3Q5M2N4P6R8T0V2W4Y6Z").await.expect(404, "provider_not_found");
    ts.get("/v1/providers/ws_01JD8X3Q5M2N4P6R8T0V2W4Y6Z").await.expect(404, "provider_not_found");
    ts.post("/v1/providers", json!({"name": "Bad Name", "kind": "openai", "domain": "api.openai.com"}))
        .await
        .expect(400, "validation_error");
    ts.stop().await;
}

#[tokio::test]
async fn caps_yaml_is_validated_and_stored_as_given() {
    let ts = TestServer::start().await;
    let doc = "# github access\n- name: github\n  allow:\n    - domains: [api.github.com]\n      methods: [GET]\n";
    let r = ts
        .post(
            "/v1/providers",
            json!({"name": "p1", "kind": "anthropic", "domain": "api.anthropic.com", "capabilities": doc}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["capabilities"], doc, "stored exactly as given, comments included");
    let pid = r.json["id"].as_str().unwrap().to_string();
    let bad = "- name: github\n  allow:\n    - domains: [api.github.com]\n      methods: [GET, FETCH]\n";
    let r = ts.post("/v1/agent-roles", json!({"name": "r1", "provider_id": pid, "capabilities": bad})).await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), vec!["capabilities[0].allow[0].methods[1]"]);
    let r = ts
        .post("/v1/agent-roles", json!({"name": "r1", "provider_id": pid, "capabilities": "- name: [unclosed"}))
        .await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), vec!["capabilities"]);
    // Transforms and budgets are checked field by field, with the path named.
    let bad = "- name: up\n  allow:\n    - name: read\n      domains: ['*.example.com']\n      methods: [GET]\n  transforms:\n    - auth: { credential: k }\n      applies_to: [write]\n    - headers: { set: { Host: evil.test } }\n  budgets: { per_workspace: { requests: -1 } }\n";
    let r = ts.post("/v1/agent-roles", json!({"name": "r1", "provider_id": pid, "capabilities": bad})).await;
    r.expect(400, "validation_error");
    assert_eq!(
        r.fields(),
        vec![
            "capabilities[0].budgets.per_workspace.requests",
            "capabilities[0].transforms[0].applies_to[0]",
            "capabilities[0].transforms[1].headers.set.Host",
        ]
    );
    // None of the refused writes left a row.
    assert_eq!(ts.get("/v1/agent-roles?include_archived=true").await.ok()["agent_roles"], json!([]));
    let good = "- name: up\n  allow:\n    - name: read\n      domains: ['*.example.com']\n      methods: [GET]\n  transforms:\n    - auth: { credential: k }\n      applies_to: [read]\n    - headers: { set: { X-Tenant: '${secrets[\"tenant\"]}' } }\n  budgets: { per_workspace: { requests: 10 } }\n";
    let r = ts.post("/v1/agent-roles", json!({"name": "r1", "provider_id": pid, "capabilities": good})).await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["capabilities"], good);
    ts.stop().await;
}

#[tokio::test]
async fn roles_patch_archive_cascade_and_unarchive_guards() {
    let ts = TestServer::start().await;
    let (pid, rid, _) = ts.role("coder").await;
    let r = ts.get(&format!("/v1/agent-roles/{rid}")).await;
    let role = r.ok();
    assert_eq!(role["environment"], "development");
    assert_eq!(role["pool_policy"], "");
    assert_eq!(role["pack_ids"], json!([]));
    let packs = json!(["pack_01JD8X3Q5M2N4P6R8T0V2W4Y6Z", "pack_01JD8X3Q5M2N4P6R8T0V2W4Y70"]);
    let r = ts
        .patch(
            &format!("/v1/agent-roles/{rid}"),
            json!({"pack_ids": packs, "thinking_effort": "high", "idle_timeout_seconds": 600}),
        )
        .await;
    assert_eq!(r.ok()["pack_ids"], packs);
    let r = ts.patch(&format!("/v1/agent-roles/{rid}"), json!({"pack_ids": ["pack_01JD8X3Q5M2N4P6R8T0V2W4Y70"]})).await;
    assert_eq!(r.ok()["pack_ids"], json!(["pack_01JD8X3Q5M2N4P6R8T0V2W4Y70"]), "replaces the whole list");
    assert_eq!(r.json["thinking_effort"], "high");
    let r = ts.patch(&format!("/v1/agent-roles/{rid}"), json!({"pack_ids": ["nope"], "max_continuations": -1})).await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), vec!["max_continuations", "pack_ids[0]"]);
    ts.patch(&format!("/v1/agent-roles/{rid}"), json!({"environment": "prod"})).await.expect(400, "validation_error");
    ts.post("/v1/agent-roles", json!({"name": "coder", "provider_id": pid})).await.expect(409, "already_exists");
    ts.post("/v1/agent-roles", json!({"name": "x", "provider_id": "prov_01JD8X3Q5M2N4P6R8T0V2W4Y6Z"}))
        .await
        .expect(404, "provider_not_found");
    let (_, rid2, _) = {
        let r = ts.post("/v1/agent-roles", json!({"name": "reviewer", "provider_id": pid})).await;
        (pid.clone(), r.ok()["id"].as_str().unwrap().to_string(), ())
    };
    // Archive the provider: cascades to both roles.
    let r = ts.post_empty(&format!("/v1/providers/{pid}/archive")).await;
    assert_eq!(r.ok()["cascaded_roles"], 2);
    assert_eq!(ts.get("/v1/agent-roles").await.ok()["agent_roles"], json!([]), "hidden by default");
    assert_eq!(ts.get("/v1/agent-roles?include_archived=true").await.ok()["agent_roles"].as_array().unwrap().len(), 2);
    ts.get("/v1/agent-roles?include_archived=maybe").await.expect(400, "validation_error");
    ts.post_empty(&format!("/v1/agent-roles/{rid}/unarchive")).await.expect(409, "provider_archived");
    ts.post("/v1/agent-roles", json!({"name": "late", "provider_id": pid})).await.expect(409, "provider_archived");
    assert_eq!(ts.post_empty(&format!("/v1/providers/{pid}/unarchive")).await.ok()["status"], "unarchived");
    ts.post_empty(&format!("/v1/providers/{pid}/unarchive")).await.expect(409, "not_archived");
    assert_eq!(ts.post_empty(&format!("/v1/agent-roles/{rid}/unarchive")).await.ok()["status"], "unarchived");
    ts.post_empty(&format!("/v1/agent-roles/{rid}/unarchive")).await.expect(409, "not_archived");
    // The other role stays archived until unarchived on its own.
    let r2 = ts.get(&format!("/v1/agent-roles/{rid2}")).await;
    assert!(r2.ok()["archived_at"].is_string());
    // Audit rows for each cascaded role.
    let a = ts.get("/v1/audit?filter=event_type=agent_role_archived").await;
    assert_eq!(a.ok()["events"].as_array().unwrap().len(), 2);
    assert_eq!(a.json["events"][0]["reason"], "provider_archived");
    ts.stop().await;
}
