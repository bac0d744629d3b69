//! Issue 9 item 1: accounts are global, so an org must never set or learn the credentials a person uses in another
//! org. Reproduces the reported takeover (org A sets a password by accepting its own invitation for a globex email;
//! globex's operator then adds that email with `admin user add`) and checks every way in that remains.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{PASSWORD, Resp, TestServer};

async fn admin(ts: &TestServer, args: &[&str]) -> Value {
    let mut all = vec!["admin", "--database-url", ts.db_url.as_str()];
    all.extend_from_slice(args);
    all.push("--json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_evershell")).args(&all).output().await.unwrap();
    assert!(out.status.success(), "evershell {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn login(ts: &TestServer, email: &str, password: &str, org: &str) -> Resp {
    ts.call(Method::POST, "/v1/auth/login", None, Some(json!({ "email": email, "password": password, "org": org })))
        .await
}

async fn accept(ts: &TestServer, token: &str, password: &str) -> Resp {
    ts.call(Method::POST, "/v1/auth/accept-invite", None, Some(json!({ "invite_token": token, "password": password })))
        .await
}

#[tokio::test]
async fn an_org_cannot_take_over_an_account_another_org_adds() {
    let ts = TestServer::start().await;
    let victim = "victim@globex.example";
    let chosen_by_acme = "acme-chose-this-password";
    // Org A (acme) invites the globex email and accepts its own invitation with a password of its choosing.
    let acme_owner = ts.login(&ts.owner_email).await;
    let inv = ts
        .call(
            Method::POST,
            &format!("/v1/orgs/{}/memberships", ts.org_id),
            Some(&acme_owner),
            Some(json!({ "email": victim, "role": "member" })),
        )
        .await;
    let acme_token = inv.ok()["invite_token"].as_str().unwrap().to_string();
    accept(&ts, &acme_token, chosen_by_acme).await.ok();

    // Later globex's operator adds that email as an Owner.
    admin(&ts, &["org", "create", "--name", "globex"]).await;
    let added = admin(&ts, &["user", "add", "--org", "globex", "--email", victim, "--role", "owner"]).await;
    assert_eq!(added["status"], "pending", "an existing account is invited, not activated: {added}");
    assert_eq!(added["password_reset"], false);
    assert_eq!(added["other_orgs"], json!(["acme"]));
    let globex_token = added["invite_token"].as_str().unwrap().to_string();

    // The takeover: acme's password must not sign in to globex.
    login(&ts, victim, chosen_by_acme, "globex").await.expect(401, "unauthenticated");
    // The real person cannot choose a new password through globex's invitation either: the account has one.
    let r = accept(&ts, &globex_token, "the-real-victims-password").await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), ["password"]);
    // `--password` on an existing account is refused unless it is an explicit reset.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_evershell"));
    cmd.args(["admin", "--database-url", &ts.db_url, "user", "add", "--org", "globex", "--email", victim]);
    let out = cmd.args(["--role", "owner", "--password", "globex-sets-this"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reset-password"));

    // The operator's way out: an explicit reset, reported, which also ends acme's hold on the account.
    let acme_session = login(&ts, victim, chosen_by_acme, "acme").await.ok()["token"].as_str().unwrap().to_string();
    let globex_owner = admin(&ts, &["bootstrap", "--org", "initech", "--email", "boss@initech.example"]).await;
    let reset =
        admin(&ts, &["user", "add", "--org", "initech", "--email", victim, "--role", "member", "--reset-password"])
            .await;
    assert_eq!((reset["status"].as_str(), reset["password_reset"].as_bool()), (Some("active"), Some(true)));
    assert_eq!(reset["sessions_revoked"], 2, "the accept-invite session and the login");
    assert_eq!(reset["other_orgs"], json!(["acme", "globex"]));
    let fresh = reset["generated_password"].as_str().unwrap();
    ts.call(Method::GET, "/v1/me/session", Some(&acme_session), None).await.expect(401, "unauthenticated");
    login(&ts, victim, chosen_by_acme, "acme").await.expect(401, "unauthenticated");
    login(&ts, victim, fresh, "initech").await.ok();
    // Still not globex: that membership waits for its own acceptance, now with the reset password.
    login(&ts, victim, fresh, "globex").await.expect(401, "unauthenticated");
    let signed_in = accept(&ts, &globex_token, fresh).await;
    assert_eq!(signed_in.ok()["org_id"], added["org_id"]);
    // Every org of the account saw the reset.
    let rows = ts.get("/v1/audit?filter=event_type=password_reset").await;
    let rows = rows.ok()["events"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 1, "acme's trail reports the reset: {rows:?}");
    assert_eq!(rows[0]["details"]["requested_for_org"], "initech");
    let key = globex_owner["api_key"]["value"].as_str().unwrap();
    let initech = ts.call(Method::GET, "/v1/audit?filter=event_type=password_reset", Some(key), None).await;
    assert_eq!(initech.ok()["events"].as_array().unwrap().len(), 1);
    ts.stop().await;
}

#[tokio::test]
async fn the_same_person_joins_a_second_org_with_their_own_password() {
    let ts = TestServer::start().await;
    let (_, _) = ts.user("dev@acme.example", evershell_core::scope::MemberRole::Member).await;
    admin(&ts, &["org", "create", "--name", "globex"]).await;
    let added =
        admin(&ts, &["user", "add", "--org", "globex", "--email", "dev@acme.example", "--role", "member"]).await;
    let token = added["invite_token"].as_str().unwrap();
    // Pending: no sign-in to globex yet, even with the right password.
    login(&ts, "dev@acme.example", PASSWORD, "globex").await.expect(401, "unauthenticated");
    let r = accept(&ts, token, PASSWORD).await;
    assert_eq!(r.ok()["org_id"], added["org_id"]);
    login(&ts, "dev@acme.example", PASSWORD, "globex").await.ok();
    login(&ts, "dev@acme.example", PASSWORD, "acme").await.ok();
    ts.stop().await;
}
