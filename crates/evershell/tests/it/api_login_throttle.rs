//! Sign-in throttling over HTTP: back-off per account and per client address answered `429` with `Retry-After`
//! before any argon2 work, a per-account lock that leaves other accounts alone, success clearing the counter,
//! concurrent guesses counted exactly, no account enumeration, accept-invite treated alike, and the audit rows.

use std::time::Duration;

use evershell_core::scope::MemberRole;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{PASSWORD, Resp, TestServer};

async fn login(ts: &TestServer, email: &str, password: &str) -> Resp {
    ts.call(Method::POST, "/v1/auth/login", None, Some(json!({ "email": email, "password": password }))).await
}

/// argon2 computations this server has started so far.
fn hashes(ts: &TestServer) -> u64 {
    ts.app.passwords().started()
}

#[track_caller]
fn retry_after(r: &Resp) -> u64 {
    r.expect(429, "too_many_attempts");
    let header: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(r.json["error"]["details"]["retry_after_seconds"], header, "header and envelope agree");
    assert!(header >= 1);
    header
}

async fn events(ts: &TestServer, key: &str, event_type: &str) -> Vec<Value> {
    let r = ts.call(Method::GET, &format!("/v1/audit?filter=event_type={event_type}"), Some(key), None).await;
    r.ok()["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn failures_back_off_per_account_before_any_hashing_and_success_clears_them() {
    let ts = TestServer::start_with(|c| {
        c.login.account_free_failures = 3;
        c.login.account_lock_after = 6;
        c.login.refusal_delay_ms = 0; // answered at once, so the next attempt meets the same back-off
    })
    .await;
    let owner = ts.owner_email.clone();
    let (_, _) = ts.user("other@acme.example", MemberRole::Member).await;

    let before = hashes(&ts);
    for _ in 0..3 {
        login(&ts, &owner, "wrong-password-1").await.expect(401, "unauthenticated");
    }
    assert_eq!(hashes(&ts) - before, 3, "each free attempt is one verification");
    // The fourth comes too soon: refused before the password is looked at, even the right one.
    let wait = retry_after(&login(&ts, &owner, "wrong-password-1").await);
    assert_eq!(wait, 1, "the first back-off is backoff_base_ms = 1 s");
    retry_after(&login(&ts, &owner, PASSWORD).await);
    assert_eq!(hashes(&ts) - before, 3, "a throttled attempt costs no argon2");
    // The lock is the account's: another account signs in from the same address meanwhile.
    login(&ts, "other@acme.example", PASSWORD).await.ok();

    // After the advertised wait the right password signs in, and the counter starts again from zero.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    login(&ts, &owner, PASSWORD).await.ok();
    for _ in 0..3 {
        login(&ts, &owner, "wrong-password-2").await.expect(401, "unauthenticated");
    }
    retry_after(&login(&ts, &owner, "wrong-password-2").await);

    // Audit: every failure that reached the password check, one throttled row per back-off period, no password.
    let failed = events(&ts, &ts.key, "login_failed").await;
    assert_eq!(failed.len(), 6);
    assert!(failed.iter().all(|e| e["target_type"] == "user" && e["details"]["route"] == "login"));
    assert!(failed.iter().all(|e| e["details"]["reason"] == "wrong_password"));
    assert_eq!(failed[0]["details"]["client_address"], "127.0.0.1");
    let throttled = events(&ts, &ts.key, "login_throttled").await;
    assert_eq!(throttled.len(), 2, "{throttled:?}");
    assert_eq!(throttled[0]["details"]["throttled_by"], "account");
    let all = serde_json::to_string(&[failed, throttled]).unwrap();
    assert!(!all.contains("wrong-password") && !all.contains(PASSWORD), "no password in the audit trail");
    ts.stop().await;
}

#[tokio::test]
async fn unknown_emails_cost_and_answer_the_same_as_wrong_passwords() {
    let ts = TestServer::start_with(|c| c.login.account_free_failures = 2).await;
    let mut answers = vec![];
    for email in [ts.owner_email.as_str(), "nobody@acme.example"] {
        let before = hashes(&ts);
        for _ in 0..2 {
            let r = login(&ts, email, "wrong-password").await;
            r.expect(401, "unauthenticated");
            answers.push(r.json["error"]["message"].clone());
        }
        assert_eq!(hashes(&ts) - before, 2, "{email}: one verification per attempt, a dummy one if unknown");
        let r = login(&ts, email, "wrong-password").await;
        retry_after(&r);
        answers.push(r.json["error"]["message"].clone());
    }
    assert_eq!(answers[..3], answers[3..], "known and unknown accounts cannot be told apart");
    // Nothing to audit for an account that does not exist; the known one has its rows.
    assert_eq!(events(&ts, &ts.key, "login_failed").await.len(), 2);
    ts.stop().await;
}

#[tokio::test]
async fn concurrent_guesses_cannot_all_pass_one_check() {
    let ts = TestServer::start_with(|c| {
        c.login.account_free_failures = 3;
        c.login.backoff_base_ms = 60_000;
    })
    .await;
    let before = hashes(&ts);
    let guesses: Vec<_> = (0..32).map(|_| login(&ts, &ts.owner_email, "guess-guess")).collect();
    let answers = futures::future::join_all(guesses).await;
    let count = |s: u16| answers.iter().filter(|r| r.status.as_u16() == s).count();
    // Each attempt is counted before its password is checked, by compare-and-set: exactly the free ones pass.
    assert_eq!((count(401), count(429)), (3, 29));
    assert_eq!(hashes(&ts) - before, 3);
    ts.stop().await;
}

#[tokio::test]
async fn refused_attempts_are_held_then_say_what_remains() {
    let ts = TestServer::start_with(|c| {
        c.login.account_free_failures = 1;
        c.login.backoff_base_ms = 3_000;
        c.login.backoff_max_ms = 3_000;
    })
    .await;
    login(&ts, &ts.owner_email, "wrong-password").await.expect(401, "unauthenticated");
    let started = std::time::Instant::now();
    let r = login(&ts, &ts.owner_email, "wrong-password").await;
    assert!(started.elapsed() >= Duration::from_millis(1_000), "held for login.refusal_delay_ms (1 s by default)");
    let wait = retry_after(&r);
    assert!(wait <= 2, "the 3 s back-off minus the 1 s held: {wait}");
    ts.stop().await;
}

#[tokio::test]
async fn one_address_guessing_many_accounts_is_throttled_too() {
    let ts = TestServer::start_with(|c| {
        c.login.address_free_failures = 3;
        c.login.address_lock_after = 5;
        c.login.refusal_delay_ms = 0;
    })
    .await;
    for i in 0..3 {
        login(&ts, &format!("user{i}@acme.example"), "wrong-password").await.expect(401, "unauthenticated");
    }
    // A fourth account from the same address: refused by the address's back-off, whichever account it names.
    let before = hashes(&ts);
    retry_after(&login(&ts, "user9@acme.example", "wrong-password").await);
    retry_after(&login(&ts, &ts.owner_email, PASSWORD).await);
    assert_eq!(hashes(&ts), before);
    let throttled = events(&ts, &ts.key, "login_throttled").await;
    assert_eq!(throttled.len(), 1);
    assert_eq!(throttled[0]["details"]["throttled_by"], "address");
    ts.stop().await;
}

#[tokio::test]
async fn accept_invite_is_throttled_like_login_and_audited_in_the_inviting_org() {
    let ts = TestServer::start_with(|c| {
        c.login.account_free_failures = 2;
        c.login.refusal_delay_ms = 0;
        // A back-off far longer than the test: on a loaded machine the hashing of the two failures can outlast a
        // 1 s back-off, and the next attempts would then be let through instead of refused.
        c.login.backoff_base_ms = 60_000;
        c.login.backoff_max_ms = 120_000;
    })
    .await;
    let (_, _) = ts.user("dev@acme.example", MemberRole::Member).await;
    let globex =
        evershell_app::admin::bootstrap(ts.app.store().as_ref(), "globex", "boss@globex.example", None).await.unwrap();
    // The account exists (it signs in to acme): globex's invitation must be accepted with its own password.
    let added = evershell_app::admin::add_user(
        ts.app.store().as_ref(),
        &globex.org,
        "dev@acme.example",
        MemberRole::Member,
        None,
    )
    .await
    .unwrap();
    let token = added.invite_token.expect("an existing account is invited");
    let accept = |password: &'static str| {
        ts.call(
            Method::POST,
            "/v1/auth/accept-invite",
            None,
            Some(json!({ "invite_token": token.clone(), "password": password })),
        )
    };
    let before = hashes(&ts);
    for _ in 0..2 {
        let r = accept("a-new-password").await;
        r.expect(400, "validation_error");
        assert_eq!(r.fields(), ["password"]);
    }
    retry_after(&accept("a-new-password").await);
    retry_after(&accept(PASSWORD).await);
    assert_eq!(hashes(&ts) - before, 2);
    let failed = events(&ts, &globex.api_key.value, "login_failed").await;
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["details"]["route"], "accept_invite");
    assert_eq!(events(&ts, &globex.api_key.value, "login_throttled").await.len(), 1);
    assert!(events(&ts, &ts.key, "login_failed").await.is_empty(), "acme's trail does not see globex's invitation");
    ts.stop().await;
}
