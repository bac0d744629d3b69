//! Idempotency through the real server: a retried API-key creation or invitation replays without the secret (and
//! says so), the secret is nowhere in the database files; expired keys are swept periodically; a key left in flight
//! by a server that died is taken over once its lease lapses, while a live claim still answers 409.

use evershell_core::Timestamp;
use evershell_core::ids::OrgId;
use evershell_core::scope::MemberRole;
use evershell_store::IdempotencyClaim;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Resp, TestServer};

async fn post_keyed(ts: &TestServer, token: &str, path: &str, key: &str, body: Value) -> Resp {
    ts.raw(ts.request(Method::POST, path).bearer_auth(token).header("idempotency-key", key).json(&body)).await
}

/// Every byte SQLite holds for the database (main file and WAL).
fn database_bytes(ts: &TestServer) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["evershell.db", "evershell.db-wal"] {
        all.extend(std::fs::read(ts.dir.path().join(f)).unwrap_or_default());
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn secrets_are_never_replayed_or_stored() {
    let ts = TestServer::start().await;
    let (_, owner) = ts.user("boss@acme.example", MemberRole::Owner).await;
    let body = json!({"label": "ci", "permission_set": "read_only"});
    let first = post_keyed(&ts, &owner, "/v1/api-keys", "key-1", body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.json);
    let secret = first.json["value"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk_live_"));
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = post_keyed(&ts, &owner, "/v1/api-keys", "key-1", body).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.headers["idempotent-redacted"], "value");
    assert!(again.json["value"].is_null(), "the key was shown again: {}", again.json);
    assert_eq!(again.json["id"], first.json["id"], "the same key, not a second one");

    let invite = json!({"email": "new@acme.example", "role": "member"});
    let path = format!("/v1/orgs/{}/memberships", ts.org_id);
    let first = post_keyed(&ts, &owner, &path, "inv-1", invite.clone()).await;
    assert_eq!(first.status, 201, "{}", first.json);
    let token = first.json["invite_token"].as_str().unwrap().to_string();
    let again = post_keyed(&ts, &owner, &path, "inv-1", invite).await;
    assert_eq!((again.status.as_u16(), &again.headers["idempotent-redacted"]), (201, &"invite_token".parse().unwrap()));
    assert!(again.json["invite_token"].is_null(), "{}", again.json);
    assert_eq!(again.json["user_id"], first.json["user_id"]);
    // The stored answers hold neither secret (the key and the token themselves are stored as hashes only).
    let db = database_bytes(&ts);
    assert!(contains(&db, first.json["user_id"].as_str().unwrap()), "these are not the database's bytes");
    assert!(!contains(&db, &secret), "the API key is in the database");
    assert!(!contains(&db, &token), "the invite token is in the database");
    // The invitation still works with the token from the first answer.
    let r = ts
        .call(
            Method::POST,
            "/v1/auth/accept-invite",
            None,
            Some(json!({"invite_token": token, "password": crate::harness::PASSWORD})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    ts.stop().await;
}

#[tokio::test]
async fn expired_keys_are_swept_periodically() {
    let ts = TestServer::start_with(|c| {
        c.idempotency.ttl_ms = 1;
        c.idempotency.sweep_interval_ms = 20;
    })
    .await;
    let r = post_keyed(&ts, &ts.key, "/v1/providers", "p-1", json!({"name": "p1", "kind": "openai", "domain": "a.b"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    // The sweeper counts what it deletes; wait for it to have deleted our row.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let m = String::from_utf8(ts.call(Method::GET, "/metrics", None, None).await.bytes).unwrap();
        let swept: f64 = m
            .lines()
            .find(|l| l.starts_with("evershell_idempotency_keys_swept_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0);
        if swept >= 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no key was swept:\n{m}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Nothing expired is left for a sweep to find.
    assert_eq!(ts.app.sweep_idempotency_keys().await.unwrap(), 0);
    ts.stop().await;
}

#[tokio::test]
async fn a_claim_left_by_a_dead_server_is_taken_over_but_a_live_one_is_not() {
    let ts = TestServer::start().await;
    let (user_id, token) = ts.user("dev@acme.example", MemberRole::Owner).await;
    let org: OrgId = ts.org_id.parse().unwrap();
    let body = json!({"name": "p1", "kind": "openai", "domain": "a.b"});
    // The fingerprint the server computes for this request.
    let fingerprint = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update("POST");
        h.update([0]);
        h.update("/v1/providers");
        h.update([0]);
        h.update(serde_json::to_vec(&body).unwrap());
        hex::encode(h.finalize())
    };
    let now = Timestamp::now();
    let claim = |owner, lease_until| IdempotencyClaim {
        fingerprint: "",
        now,
        expires_at: now.plus_millis(3_600_000),
        owner,
        lease_until,
    };
    // Another server is running this request right now (its lease is live): 409.
    let live = IdempotencyClaim { fingerprint: &fingerprint, ..claim("alive", now.plus_millis(600_000)) };
    ts.app.store().idempotency_begin(org, &format!("{user_id}:live"), &live).await.unwrap();
    post_keyed(&ts, &token, "/v1/providers", "live", body.clone()).await.expect(409, "idempotency_key_in_flight");
    // A server died mid-request: its lease lapsed, so the retry runs (and is then replayed as usual).
    let dead = IdempotencyClaim { fingerprint: &fingerprint, ..claim("dead", now.plus_millis(-1)) };
    ts.app.store().idempotency_begin(org, &format!("{user_id}:dead"), &dead).await.unwrap();
    let r = post_keyed(&ts, &token, "/v1/providers", "dead", body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.json);
    let again = post_keyed(&ts, &token, "/v1/providers", "dead", body).await;
    assert_eq!((again.status.as_u16(), again.json["id"].clone()), (201, r.json["id"].clone()));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    ts.stop().await;
}
