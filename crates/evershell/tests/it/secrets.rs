//! The secrets API through the real server: create/list/rotate/delete, values never returned and sealed at rest
//! (not in the database file, not in audit rows), the proxy-side lookup, and the master key's life: generated once
//! with 0600, reused across restarts, a wrong or world-readable key refused at start-up.

use std::os::unix::fs::PermissionsExt;

use evershell_core::scope::MemberRole;
use reqwest::Method;
use serde_json::json;

use crate::harness::{Db, TestServer, config};

const VALUE: &str = "s3cr3t-tenant-token-7f1e";
const ROTATED: &str = "rotated-token-0b9c";

/// Every byte the SQLite store has written (database, WAL and shared memory files).
fn database_bytes(ts: &TestServer) -> Vec<u8> {
    let mut all = vec![];
    for e in std::fs::read_dir(ts.dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("evershell.db") {
            all.extend(std::fs::read(&p).unwrap());
        }
    }
    all
}

/// Speak as the Owner (full_access API keys hold neither `auth:write` nor `secrets:write`); returns the API key.
async fn as_owner(ts: &mut TestServer) -> String {
    let owner = ts.login(&ts.owner_email.clone()).await;
    std::mem::replace(&mut ts.key, owner)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn crud(ts: &TestServer) {
    let r = ts.post("/v1/secrets", json!({"name": "tenant-token", "value": VALUE, "description": "Acme tenant"})).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let id = r.json["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sec_"));
    let mut keys: Vec<&str> = r.json.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["created_at", "description", "id", "name", "updated_at"]);
    assert!(!contains(&r.bytes, VALUE));

    ts.post("/v1/secrets", json!({"name": "tenant-token", "value": "x"})).await.expect(409, "already_exists");
    let r = ts.post("/v1/secrets", json!({"name": "bad name!", "value": "x"})).await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), ["name"]);
    let r = ts.post("/v1/secrets", json!({"name": "empty", "value": ""})).await;
    assert_eq!(r.fields(), ["value"]);
    ts.post("/v1/secrets", json!({"name": "novalue"})).await.expect(400, "validation_error");

    let list = ts.get("/v1/secrets").await;
    assert_eq!(list.ok()["secrets"].as_array().unwrap().len(), 1);
    assert_eq!(list.json["secrets"][0]["name"], "tenant-token");
    assert!(!contains(&list.bytes, VALUE));

    let org = ts.org_id.parse().unwrap();
    assert_eq!(ts.app.secret_value(org, "tenant-token").await.unwrap().as_deref().map(String::as_str), Some(VALUE));

    let r = ts.call(Method::PUT, &format!("/v1/secrets/{id}"), Some(&ts.key), Some(json!({"value": ROTATED}))).await;
    assert_eq!(r.ok()["id"], id.as_str());
    assert!(!contains(&r.bytes, ROTATED));
    assert!(r.json["updated_at"].as_str() >= list.json["secrets"][0]["updated_at"].as_str());
    assert_eq!(ts.app.secret_value(org, "tenant-token").await.unwrap().as_deref().map(String::as_str), Some(ROTATED));
    let ghost = "sec_01JD8X3Q5M2N4P6R8T0V2W4Y6Z";
    let r = ts.call(Method::PUT, &format!("/v1/secrets/{ghost}"), Some(&ts.key), Some(json!({"value": "x"}))).await;
    r.expect(404, "secret_not_found");

    // Audit rows name the secret, never the value.
    let audit = ts.get("/v1/audit?filter=event_type=secret_created,secret_rotated").await;
    let events = audit.ok()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 2, "{}", audit.json);
    assert!(events.iter().all(|e| e["details"]["name"] == "tenant-token"));
    assert!(!contains(&audit.bytes, VALUE) && !contains(&audit.bytes, ROTATED));

    let r = ts.call(Method::DELETE, &format!("/v1/secrets/{id}"), Some(&ts.key), None).await;
    assert_eq!(r.ok(), &json!({"status": "deleted"}));
    ts.call(Method::DELETE, &format!("/v1/secrets/{id}"), Some(&ts.key), None).await.expect(404, "secret_not_found");
    assert!(ts.app.secret_value(org, "tenant-token").await.unwrap().is_none());
    assert_eq!(ts.get("/v1/audit?filter=event_type=secret_deleted").await.ok()["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn secrets_round_trip_without_ever_showing_the_value() {
    let mut ts = TestServer::start().await;
    let api_key = as_owner(&mut ts).await;
    crud(&ts).await;
    // A member holds no secrets:write.
    let (_, member) = ts.user("m@acme.example", MemberRole::Member).await;
    ts.call(Method::GET, "/v1/secrets", Some(&member), None).await.expect(403, "permission_denied");
    // Nor do API keys: their templates stop at caps:write.
    ts.call(Method::GET, "/v1/secrets", Some(&api_key), None).await.expect(403, "permission_denied");
    ts.stop().await;
}

#[tokio::test]
async fn secrets_round_trip_on_postgres() {
    let mut ts = TestServer::start_on(Db::Postgres).await;
    as_owner(&mut ts).await;
    crud(&ts).await;
    ts.stop().await;
}

#[tokio::test]
async fn values_are_sealed_at_rest_and_survive_a_restart_with_the_same_key() {
    let mut ts = TestServer::start().await;
    as_owner(&mut ts).await;
    ts.post("/v1/secrets", json!({"name": "db-password", "value": VALUE})).await.ok();
    let key_file = ts.dir.path().join("master.key");
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!contains(&database_bytes(&ts), VALUE), "plaintext found in the database files");
    let (dir, db) = ts.stop().await;

    let ts = TestServer::start_at(dir, db, false).await;
    let org = evershell_app::admin::find_org(ts.app.store().as_ref(), "acme").await.unwrap().id;
    assert_eq!(ts.app.secret_value(org, "db-password").await.unwrap().as_deref().map(String::as_str), Some(VALUE));
    let (dir, db) = ts.stop().await;

    // Another key for the same database: refused at start-up, nothing changed.
    let other = dir.path().join("other.key");
    std::fs::write(&other, evershell_app::sealing::MasterKey::generate().to_file_text().as_bytes()).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg = config(dir.path(), &db);
    cfg.master_key_file = Some(other.clone());
    let err = format!("{:#}", evershell::server::start(cfg).await.err().expect("a wrong key is refused"));
    assert!(err.contains("does not match"), "{err}");

    // A key file others can read: refused.
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = config(dir.path(), &db);
    cfg.master_key_file = Some(other);
    let err = format!("{:#}", evershell::server::start(cfg).await.err().expect("a readable key is refused"));
    assert!(err.contains("group or others"), "{err}");
}

#[tokio::test]
async fn a_sealed_value_moved_to_another_row_does_not_open() {
    let mut ts = TestServer::start().await;
    as_owner(&mut ts).await;
    ts.post("/v1/secrets", json!({"name": "a", "value": VALUE})).await.ok();
    let b = ts.post("/v1/secrets", json!({"name": "b", "value": "other"})).await.ok()["id"].as_str().unwrap().parse();
    let org = ts.org_id.parse().unwrap();
    // Write a's sealed bytes into b's row, as someone with write access to the database could.
    let (_, sealed_a) = ts.app.store().secret_material(org, "a").await.unwrap().unwrap();
    ts.app.store().rotate_secret(org, b.unwrap(), &sealed_a, evershell_core::Timestamp::now(), &[]).await.unwrap();
    let err = ts.app.secret_value(org, "b").await.unwrap_err();
    assert_eq!(err.code, evershell_core::ErrorCode::Internal);
    assert!(!format!("{err:?}").contains(VALUE));
    assert_eq!(ts.app.secret_value(org, "a").await.unwrap().as_deref().map(String::as_str), Some(VALUE));
    ts.stop().await;
}
