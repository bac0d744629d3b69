//! The credentials API through the real server: per-kind required fields, kinds stored but not mintable here, the
//! `auth:write` / `auth:write:own` rules with personal overrides, per-caller narrowing (another member's personal
//! credential is 404), delete revoking at once (the broker's next lookup is `auth_unavailable`), the refused OAuth
//! consent flow, and audit rows that never carry material.

use evershell_app::credentials::CredentialUse;
use evershell_core::scope::MemberRole;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Db, Resp, TestServer};

const KEY: &str = "ghp_live_9f8e7d6c5b4a";

/// Speak as the Owner (full_access API keys hold neither `auth:write` nor `secrets:write`); returns the API key.
async fn as_owner(ts: &mut TestServer) -> String {
    let owner = ts.login(&ts.owner_email.clone()).await;
    std::mem::replace(&mut ts.key, owner)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn post_as(ts: &TestServer, tok: &str, body: Value) -> Resp {
    ts.call(Method::POST, "/v1/credentials", Some(tok), Some(body)).await
}

async fn start(ts: &TestServer, tok: &str, id: &str) -> Resp {
    ts.call(Method::POST, &format!("/v1/credentials/{id}/oauth/start"), Some(tok), None).await
}

async fn del(ts: &TestServer, tok: &str, id: &str) -> Resp {
    ts.call(Method::DELETE, &format!("/v1/credentials/{id}"), Some(tok), None).await
}

#[tokio::test]
async fn each_kind_names_its_missing_field_and_unused_secrets_are_refused() {
    let mut ts = TestServer::start().await;
    let api_key = as_owner(&mut ts).await;
    let cases: &[(Value, &[&str])] = &[
        (json!({"name": "a", "provider": "github", "kind": "api_key"}), &["api_key"]),
        (json!({"name": "a", "provider": "github", "kind": "query_api_key"}), &["api_key"]),
        (json!({"name": "a", "provider": "jira", "kind": "basic_auth"}), &["password", "provider_config.username"]),
        (
            json!({"name": "a", "provider": "microsoft", "kind": "oauth2_client_credentials", "client_secret": "s",
                   "provider_config": {"client_id": "c"}}),
            &["provider_config.tenant_id"],
        ),
        (json!({"name": "a", "provider": "google", "kind": "oauth2_jwt_bearer"}), &["service_account_json"]),
        (
            json!({"name": "a", "provider": "google", "kind": "oauth2_jwt_bearer_with_subject",
                   "service_account_json": {"type": "service_account"}}),
            &["provider_config.subject"],
        ),
        (
            json!({"name": "a", "provider": "google", "kind": "oauth2_jwt_bearer", "service_account_json": "not json"}),
            &["service_account_json"],
        ),
        // A secret the kind does not use is refused, never ignored; secrets never go in provider_config.
        (json!({"name": "a", "provider": "github", "kind": "api_key", "api_key": "k", "password": "p"}), &["password"]),
        (
            json!({"name": "a", "provider": "github", "kind": "api_key", "api_key": "k",
                   "provider_config": {"client_secret": "x"}}),
            &["provider_config.client_secret"],
        ),
        (
            json!({"name": "a", "provider": "github", "kind": "api_key", "api_key": "k", "allow_user_override": true}),
            &["allow_user_override"],
        ),
        (json!({"name": "a b", "provider": "Git Hub", "kind": "api_key", "api_key": "k"}), &["name", "provider"]),
    ];
    for (body, fields) in cases {
        let r = ts.post("/v1/credentials", body.clone()).await;
        r.expect(400, "validation_error");
        assert_eq!(r.fields(), *fields, "{body}: {}", r.json);
    }
    ts.post("/v1/credentials", json!({"name": "a", "provider": "x", "kind": "kerberos"}))
        .await
        .expect(400, "validation_error");
    // API keys hold no auth:write (their templates stop at caps:write).
    let r = ts
        .call(
            Method::POST,
            "/v1/credentials",
            Some(&api_key),
            Some(json!({"name": "a", "provider": "github", "kind": "api_key", "api_key": "k"})),
        )
        .await;
    r.expect(403, "permission_denied");
    assert_eq!(ts.get("/v1/credentials").await.ok()["credentials"], json!([]), "nothing was stored");
    ts.stop().await;
}

async fn lifecycle(ts: &TestServer) {
    let r = ts
        .post(
            "/v1/credentials",
            json!({"name": "github", "provider": "github", "kind": "api_key", "api_key": KEY, "scopes": ["repo"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let c = r.json.clone();
    assert!(c["id"].as_str().unwrap().starts_with("cred_"));
    assert_eq!(
        (c["status"].clone(), c["last_minted_at"].clone(), c["last_minted_status"].clone()),
        (json!("active"), Value::Null, Value::Null)
    );
    assert_eq!(c["user_id"], Value::Null);
    assert_eq!(c["durable_ref"], format!("sealed:{}", c["id"].as_str().unwrap()));
    assert!(!contains(&r.bytes, KEY));
    let id = c["id"].as_str().unwrap().to_string();
    ts.post("/v1/credentials", json!({"name": "github", "provider": "github", "kind": "api_key", "api_key": "k"}))
        .await
        .expect(409, "already_exists");

    // A kind the broker cannot mint here is stored and says so.
    let r = ts
        .post(
            "/v1/credentials",
            json!({"name": "gsa", "provider": "google", "kind": "oauth2_jwt_bearer",
        "service_account_json": {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----x"}}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.json["status"].clone(), r.json["last_minted_status"].clone()),
        (201, json!("failed"), json!("kind_not_mintable_here"))
    );
    assert!(!contains(&r.bytes, "BEGIN PRIVATE KEY"));

    // The broker's view.
    let org = ts.org_id.parse().unwrap();
    match ts.app.credential_for_use(org, "github", None).await.unwrap() {
        CredentialUse::Ready { credential, secret } => {
            assert_eq!(credential.id.to_string(), id);
            assert_eq!(secret.api_key.as_deref(), Some(KEY));
            assert!(!format!("{secret:?}").contains(KEY));
        }
        other => panic!("expected a ready credential, got {other:?}"),
    }
    let u = ts.app.credential_for_use(org, "gsa", None).await.unwrap();
    assert_eq!(u.failure(), Some("kind_not_mintable_here"));

    assert_eq!(ts.get(&format!("/v1/credentials/{id}")).await.ok()["name"], "github");
    let list = ts.get("/v1/credentials").await;
    assert_eq!(list.ok()["credentials"].as_array().unwrap().len(), 2);
    assert!(!contains(&list.bytes, KEY));

    // Delete revokes at once.
    let r = ts.call(Method::DELETE, &format!("/v1/credentials/{id}"), Some(&ts.key), None).await;
    assert_eq!(r.ok(), &json!({"status": "deleted"}));
    let u = ts.app.credential_for_use(org, "github", None).await.unwrap();
    assert_eq!(u.failure(), Some("auth_unavailable"));
    ts.get(&format!("/v1/credentials/{id}")).await.expect(404, "credential_not_found");
    ts.call(Method::DELETE, &format!("/v1/credentials/{id}"), Some(&ts.key), None)
        .await
        .expect(404, "credential_not_found");

    let audit = ts.get("/v1/audit?filter=event_type=credential_created,credential_deleted").await;
    let events = audit.ok()["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{}", audit.json);
    assert!(!contains(&audit.bytes, KEY) && !contains(&audit.bytes, "PRIVATE KEY"));
}

#[tokio::test]
async fn credentials_are_stored_sealed_and_deleted_at_once() {
    let mut ts = TestServer::start().await;
    as_owner(&mut ts).await;
    lifecycle(&ts).await;
    ts.stop().await;
}

#[tokio::test]
async fn credentials_lifecycle_on_postgres() {
    let mut ts = TestServer::start_on(Db::Postgres).await;
    as_owner(&mut ts).await;
    lifecycle(&ts).await;
    ts.stop().await;
}

#[tokio::test]
async fn members_create_personal_overrides_and_see_only_their_own() {
    let mut ts = TestServer::start().await;
    as_owner(&mut ts).await;
    let (alice_id, alice) = ts.user("alice@acme.example", MemberRole::Member).await;
    let (_, bob) = ts.user("bob@acme.example", MemberRole::Member).await;
    let ac = |name: &str, extra: Value| {
        let mut b = json!({"name": name, "provider": "google", "kind": "oauth2_authorization_code", "client_secret": "cs",
            "provider_config": {"client_id": "cid"}});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let shared = ts.post("/v1/credentials", ac("gdrive", json!({"allow_user_override": true}))).await;
    assert_eq!(shared.status, 201, "{}", shared.json);
    assert_eq!(shared.json["last_minted_status"], "kind_not_mintable_here");
    let shared_id = shared.json["id"].as_str().unwrap().to_string();
    ts.post("/v1/credentials", ac("locked", json!({}))).await.ok();

    // :own may not create org credentials or other kinds, nor override one that does not allow it.
    post_as(&ts, &alice, ac("mine", json!({}))).await.expect(403, "permission_denied");
    post_as(
        &ts,
        &alice,
        json!({"name": "k", "provider": "github", "kind": "api_key", "api_key": "k", "personal": true}),
    )
    .await
    .expect(403, "permission_denied");
    post_as(&ts, &alice, ac("locked", json!({"personal": true}))).await.expect(403, "permission_denied");
    let own = post_as(&ts, &alice, ac("gdrive", json!({"personal": true}))).await;
    assert_eq!(own.status, 201, "{}", own.json);
    assert_eq!(own.json["user_id"], alice_id.as_str());
    let own_id = own.json["id"].as_str().unwrap().to_string();
    post_as(&ts, &alice, ac("gdrive", json!({"personal": true}))).await.expect(409, "already_exists");

    // Narrowing: Bob sees the org's credentials, not Alice's override; the owner sees everything.
    let names = |r: &Resp| -> Vec<(String, bool)> {
        r.json["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap().to_string(), c["user_id"].is_string()))
            .collect()
    };
    let bobs = ts.call(Method::GET, "/v1/credentials", Some(&bob), None).await;
    assert_eq!(names(&bobs), [("gdrive".to_string(), false), ("locked".to_string(), false)]);
    let alices = ts.call(Method::GET, "/v1/credentials", Some(&alice), None).await;
    assert_eq!(alices.json["credentials"].as_array().unwrap().len(), 3);
    assert_eq!(ts.get("/v1/credentials").await.json["credentials"].as_array().unwrap().len(), 3);
    ts.call(Method::GET, &format!("/v1/credentials/{own_id}"), Some(&bob), None)
        .await
        .expect(404, "credential_not_found");
    ts.call(Method::GET, &format!("/v1/credentials/{own_id}"), Some(&alice), None).await.ok();

    // The consent flow: not offered here (after the visibility and ownership checks).
    start(&ts, &bob, &own_id).await.expect(404, "credential_not_found");
    start(&ts, &bob, &shared_id).await.expect(403, "permission_denied");
    let r = start(&ts, &alice, &own_id).await;
    r.expect(501, "not_supported");
    assert!(r.json["error"]["message"].as_str().unwrap().contains("authorization-code flow is not available"));

    // Deleting: another member's personal one is 404, the org's is 403 for :own, one's own works.
    del(&ts, &bob, &own_id).await.expect(404, "credential_not_found");
    del(&ts, &alice, &shared_id).await.expect(403, "permission_denied");
    assert_eq!(del(&ts, &alice, &own_id).await.ok(), &json!({"status": "deleted"}));
    ts.stop().await;
}

#[tokio::test]
async fn the_broker_prefers_the_callers_personal_override() {
    let mut ts = TestServer::start().await;
    as_owner(&mut ts).await;
    let (_, operator) = ts.user("op@acme.example", MemberRole::Operator).await;
    ts.post("/v1/credentials", json!({"name": "gh", "provider": "github", "kind": "api_key", "api_key": "org-key"}))
        .await
        .ok();
    let r = ts
        .call(
            Method::POST,
            "/v1/credentials",
            Some(&operator),
            Some(json!({"name": "gh", "provider": "github", "kind": "api_key", "api_key": "my-key", "personal": true})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let op_id = r.json["user_id"].as_str().unwrap().parse().unwrap();
    let org = ts.org_id.parse().unwrap();
    let key_of = |u: CredentialUse| match u {
        CredentialUse::Ready { secret, .. } => secret.api_key.clone().unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(key_of(ts.app.credential_for_use(org, "gh", Some(op_id)).await.unwrap()), "my-key");
    assert_eq!(key_of(ts.app.credential_for_use(org, "gh", None).await.unwrap()), "org-key");
    ts.stop().await;
}
