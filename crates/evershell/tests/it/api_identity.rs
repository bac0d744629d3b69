//! Identity: login/logout, sessions, API keys (shown once, hashed, revoked at once), memberships with the
//! Owner-only and last-Owner rules, invitations, cross-org access, billing postures.

use evershell_core::scope::MemberRole;
use reqwest::Method;
use serde_json::json;

use crate::harness::{PASSWORD, TestServer};

#[tokio::test]
async fn login_me_and_logout() {
    let ts = TestServer::start().await;
    let bad = ts
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": ts.owner_email, "password": "wrong-password"})),
        )
        .await;
    bad.expect(401, "unauthenticated");
    let unknown = ts
        .call(Method::POST, "/v1/auth/login", None, Some(json!({"email": "nobody@acme.example", "password": PASSWORD})))
        .await;
    unknown.expect(401, "unauthenticated");
    assert_eq!(bad.json["error"]["message"], unknown.json["error"]["message"], "never says which");

    let r = ts
        .call(Method::POST, "/v1/auth/login", None, Some(json!({"email": "OWNER@acme.example", "password": PASSWORD})))
        .await;
    let token = r.ok()["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("eyJ"));
    assert!(r.headers["set-cookie"].to_str().unwrap().contains("HttpOnly"));

    let me = ts.call(Method::GET, "/v1/me/session", Some(&token), None).await;
    let me = me.ok();
    assert_eq!(me["email"], "owner@acme.example");
    assert_eq!(me["role"], "owner");
    assert_eq!(me["org_id"], ts.org_id.as_str());
    assert!(me["permissions"].as_array().unwrap().contains(&json!("members:write")));
    assert_eq!(me["memberships"][0]["billing_status"], "active");

    // The cookie works too (console), but never for API keys.
    let r =
        ts.raw(ts.request(Method::GET, "/v1/me/session").header("cookie", format!("evershell_session={token}"))).await;
    assert_eq!(r.status, 200);

    let key_me = ts.get("/v1/me/session").await;
    assert_eq!(key_me.ok()["user_id"], "system");
    assert_eq!(key_me.json["api_key_permission_set"], "full_access");
    assert!(key_me.json["email"].is_null());

    ts.call(Method::POST, "/v1/auth/logout", Some(&token), None).await.ok();
    ts.call(Method::GET, "/v1/me/session", Some(&token), None).await.expect(401, "unauthenticated");
    // Garbage credentials.
    ts.call(Method::GET, "/v1/me/session", Some("eyJhbGciOiJIUzI1NiJ9.e30.x"), None)
        .await
        .expect(401, "unauthenticated");
    ts.call(Method::GET, "/v1/me/session", Some("sk_live_nope"), None).await.expect(401, "unauthenticated");
    ts.call(Method::GET, "/v1/me/session", None, None).await.expect(401, "unauthenticated");
    ts.stop().await;
}

#[tokio::test]
async fn api_keys_are_shown_once_and_revocation_is_immediate() {
    let ts = TestServer::start().await;
    let (_, owner) = ts.user("second-owner@acme.example", MemberRole::Owner).await;
    // Keys cannot issue keys.
    ts.post("/v1/api-keys", json!({"label": "x", "permission_set": "read_only"}))
        .await
        .expect(403, "permission_denied");
    let r = ts
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&owner),
            Some(json!({"label": "CI runner", "permission_set": "submit_observe"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let key = r.json["value"].as_str().unwrap().to_string();
    let id = r.json["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk_live_") && id.starts_with("api_key_"));
    assert!(r.json["prefix"].as_str().unwrap().ends_with(&key[key.len() - 4..]));
    let list = ts.call(Method::GET, "/v1/api-keys", Some(&owner), None).await;
    let listed = list.ok()["api_keys"].as_array().unwrap().iter().find(|k| k["id"] == id.as_str()).unwrap().clone();
    assert!(listed.get("value").is_none(), "the value is never shown again");
    // The key works, with its template's scopes.
    assert_eq!(ts.call(Method::GET, "/v1/workspaces", Some(&key), None).await.status, 200);
    ts.call(
        Method::POST,
        "/v1/providers",
        Some(&key),
        Some(json!({"name": "p", "kind": "openai", "domain": "api.openai.com"})),
    )
    .await
    .expect(403, "permission_denied");
    // The stored form is a hash.
    let found = ts.app.store().find_api_key(&key).await.unwrap();
    assert!(found.is_none(), "the raw value must not be a lookup key");
    // Revoke: 401 on the very next request.
    let r = ts.call(Method::DELETE, &format!("/v1/api-keys/{id}"), Some(&owner), None).await;
    assert_eq!(r.ok()["status"], "revoked");
    ts.call(Method::GET, "/v1/workspaces", Some(&key), None).await.expect(401, "unauthenticated");
    ts.call(Method::DELETE, &format!("/v1/api-keys/{id}"), Some(&owner), None).await.expect(404, "api_key_not_found");
    ts.call(Method::DELETE, "/v1/api-keys/not-an-id", Some(&owner), None).await.expect(404, "api_key_not_found");
    let r =
        ts.call(Method::POST, "/v1/api-keys", Some(&owner), Some(json!({"label": "", "permission_set": "root"}))).await;
    r.expect(400, "validation_error");
    ts.stop().await;
}

#[tokio::test]
async fn memberships_invitations_and_the_owner_rules() {
    let ts = TestServer::start().await;
    let owner = ts.login(&ts.owner_email).await;
    let (op_id, operator) = ts.user("op@acme.example", MemberRole::Operator).await;
    let (member_id, member) = ts.user("mem@acme.example", MemberRole::Member).await;
    let org = ts.org_id.clone();
    let path = format!("/v1/orgs/{org}/memberships");

    // Everyone reads the list; members:read holders see all rows.
    let all = ts.call(Method::GET, &path, Some(&member), None).await;
    assert_eq!(all.ok()["memberships"].as_array().unwrap().len(), 3);
    // Another org's memberships: 403 even for an Owner there.
    let other =
        evershell_app::admin::bootstrap(ts.app.store().as_ref(), "globex", "boss@globex.example", Some(PASSWORD))
            .await
            .unwrap();
    ts.call(Method::GET, &format!("/v1/orgs/{}/memberships", other.org.id), Some(&owner), None)
        .await
        .expect(403, "permission_denied");

    // Operators hold no members:write; only Owners invite Owners.
    ts.call(Method::POST, &path, Some(&operator), Some(json!({"email": "x@acme.example", "role": "member"})))
        .await
        .expect(403, "permission_denied");
    let inv =
        ts.call(Method::POST, &path, Some(&owner), Some(json!({"email": "New@Acme.example", "role": "member"}))).await;
    assert_eq!(inv.status, 201, "{}", inv.json);
    assert_eq!(inv.json["status"], "pending");
    assert!(inv.json["accepted_at"].is_null());
    let new_id = inv.json["user_id"].as_str().unwrap().to_string();
    let token = inv.json["invite_token"].as_str().unwrap().to_string();
    ts.call(Method::POST, &path, Some(&owner), Some(json!({"email": "new@acme.example", "role": "member"})))
        .await
        .expect(409, "already_exists");
    // Pending invites cannot be re-roled, and cannot sign in.
    ts.call(Method::PATCH, &format!("{path}/{new_id}"), Some(&owner), Some(json!({"role": "operator"})))
        .await
        .expect(409, "pending_invitation");
    let r = ts
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "new@acme.example", "password": "whatever-pass"})),
        )
        .await;
    r.expect(401, "unauthenticated");
    // Accept: sets the password, activates, signs in.
    let r = ts
        .call(
            Method::POST,
            "/v1/auth/accept-invite",
            None,
            Some(json!({"invite_token": token, "password": "new-user-password"})),
        )
        .await;
    let session = r.ok()["token"].as_str().unwrap().to_string();
    let me = ts.call(Method::GET, "/v1/me/session", Some(&session), None).await;
    assert_eq!(me.ok()["role"], "member");
    assert!(me.json["memberships"][0]["accepted_at"].is_string());
    ts.call(
        Method::POST,
        "/v1/auth/accept-invite",
        None,
        Some(json!({"invite_token": token, "password": "new-user-password"})),
    )
    .await
    .expect(400, "validation_error");

    // Role changes: Owner only; the last Owner can be neither demoted nor removed.
    ts.call(Method::PATCH, &format!("{path}/{member_id}"), Some(&operator), Some(json!({"role": "operator"})))
        .await
        .expect(403, "permission_denied");
    let r =
        ts.call(Method::PATCH, &format!("{path}/{member_id}"), Some(&owner), Some(json!({"role": "operator"}))).await;
    assert_eq!(r.ok()["role"], "operator");
    // The changed role applies to the member's existing session at once.
    let me = ts.call(Method::GET, "/v1/me/session", Some(&member), None).await;
    assert_eq!(me.ok()["role"], "operator");
    let owner_id =
        ts.call(Method::GET, "/v1/me/session", Some(&owner), None).await.json["user_id"].as_str().unwrap().to_string();
    ts.call(Method::PATCH, &format!("{path}/{owner_id}"), Some(&owner), Some(json!({"role": "member"})))
        .await
        .expect(409, "last_owner");
    ts.call(Method::DELETE, &format!("{path}/{owner_id}"), Some(&owner), None).await.expect(409, "last_owner");
    // With a second Owner the first may step down.
    let r = ts.call(Method::PATCH, &format!("{path}/{op_id}"), Some(&owner), Some(json!({"role": "owner"}))).await;
    assert_eq!(r.ok()["role"], "owner");
    let r = ts.call(Method::DELETE, &format!("{path}/{owner_id}"), Some(&operator), None).await;
    assert_eq!(r.ok()["status"], "deleted");
    // Removed members are signed out.
    ts.call(Method::GET, "/v1/me/session", Some(&owner), None).await.expect(401, "unauthenticated");
    ts.call(Method::DELETE, &format!("{path}/usr_01JD8X3Q5M2N4P6R8T0V2W4Y6Z"), Some(&operator), None)
        .await
        .expect(404, "membership_not_found");
    ts.call(Method::POST, &path, Some(&operator), Some(json!({"email": "not-an-email", "role": "member"})))
        .await
        .expect(400, "validation_error");
    ts.stop().await;
}

#[tokio::test]
async fn billing_postures_gate_create_class_calls_only() {
    let ts = TestServer::start().await;
    let (_, owner) = ts.user("boss@acme.example", MemberRole::Owner).await;
    let (pid, rid, _) = ts.role("coder").await;
    let org = evershell_app::admin::find_org(ts.app.store().as_ref(), "acme").await.unwrap();
    use evershell_core::model::BillingStatus::*;
    let expired = evershell_core::Timestamp::now().plus_millis(-1000);
    let future = evershell_core::Timestamp::now().plus_millis(3_600_000);
    for (status, ends, blocked) in [
        (PastDue, None, true),
        (Decommissioning, None, true),
        (Trial, Some(expired), true),
        (Trial, Some(future), false),
        (Active, None, false),
    ] {
        evershell_app::admin::set_billing(ts.app.store().as_ref(), &org, status, ends).await.unwrap();
        let r = ts.post("/v1/providers", json!({"name": format!("p-{}", status.as_str().replace('_', "-")), "kind": "openai", "domain": "api.openai.com"})).await;
        if blocked {
            r.expect(423, "billing_inactive");
            ts.patch(&format!("/v1/agent-roles/{rid}"), json!({"model": "m"})).await.expect(423, "billing_inactive");
            ts.call(
                Method::POST,
                "/v1/api-keys",
                Some(&owner),
                Some(json!({"label": "k", "permission_set": "read_only"})),
            )
            .await
            .expect(423, "billing_inactive");
        } else {
            assert_eq!(r.status, 201, "{}", r.json);
        }
        // Reads always pass; so do wind-down calls.
        assert_eq!(ts.get("/v1/providers").await.status, 200);
        assert_eq!(ts.get(&format!("/v1/agent-roles/{rid}")).await.status, 200);
    }
    evershell_app::admin::set_billing(ts.app.store().as_ref(), &org, PastDue, None).await.unwrap();
    let r = ts.post_empty(&format!("/v1/agent-roles/{rid}/archive")).await;
    assert_eq!(r.ok()["status"], "archived");
    let r = ts.post_empty(&format!("/v1/providers/{pid}/archive")).await;
    assert_eq!(r.ok()["status"], "archived");
    let keys = ts.call(Method::GET, "/v1/api-keys", Some(&owner), None).await;
    let kid = keys.ok()["api_keys"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(ts.call(Method::DELETE, &format!("/v1/api-keys/{kid}"), Some(&owner), None).await.status, 200);
    ts.stop().await;
}
