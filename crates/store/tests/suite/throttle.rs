//! Sign-in throttle counters (compare-and-set counting, all or nothing, shared by two stores on one database,
//! swept when stale), the once-per-period throttled note, and password resets revoking every session.

use evershell_core::ids::SessionId;
use evershell_core::model::Session;
use evershell_store::{LoginClaim, LoginCounter};

use crate::*;

store_tests!(
    counting_is_compare_and_set,
    counting_two_keys_is_all_or_nothing,
    concurrent_counts_from_two_stores_have_one_winner_per_read,
    settle_clears_forgives_and_audits,
    stale_counters_are_swept,
    throttled_note_is_written_once_per_period,
    reset_password_revokes_every_session,
);

fn keys(k: &[&str]) -> Vec<String> {
    k.iter().map(|s| s.to_string()).collect()
}

fn claim(key: &str, seen: Option<&LoginCounter>, failures: i64) -> LoginClaim {
    LoginClaim { key: key.into(), seen: seen.cloned(), failures }
}

async fn counter(ctx: &Ctx, key: &str) -> Option<LoginCounter> {
    ctx.store.login_counters(&keys(&[key])).await.unwrap().pop()
}

async fn counting_is_compare_and_set(ctx: Ctx) {
    assert_eq!(ctx.store.login_counters(&keys(&["a", "b"])).await.unwrap(), vec![]);
    assert!(ctx.store.count_login_attempt(&[claim("a", None, 1)], ts(10_000), ts(0)).await.unwrap());
    // A second writer that also read "no row" loses.
    assert!(!ctx.store.count_login_attempt(&[claim("a", None, 1)], ts(10_001), ts(0)).await.unwrap());
    let c = counter(&ctx, "a").await.unwrap();
    assert_eq!((c.failures, c.last_failure_at, c.noted_at), (1, ts(10_000), None));
    assert!(ctx.store.count_login_attempt(&[claim("a", Some(&c), 2)], ts(10_002), ts(0)).await.unwrap());
    // The counter moved since `c` was read: refused, nothing written.
    assert!(!ctx.store.count_login_attempt(&[claim("a", Some(&c), 2)], ts(10_003), ts(0)).await.unwrap());
    let c2 = counter(&ctx, "a").await.unwrap();
    assert_eq!((c2.failures, c2.last_failure_at), (2, ts(10_002)));
}

async fn counting_two_keys_is_all_or_nothing(ctx: Ctx) {
    assert!(ctx.store.count_login_attempt(&[claim("addr", None, 1)], ts(10_000), ts(0)).await.unwrap());
    // "acct" is new, but "addr" was read as absent: the whole attempt is refused and "acct" is not created.
    let stale = [claim("acct", None, 1), claim("addr", None, 1)];
    assert!(!ctx.store.count_login_attempt(&stale, ts(10_001), ts(0)).await.unwrap());
    assert_eq!(counter(&ctx, "acct").await, None);
    let addr = counter(&ctx, "addr").await.unwrap();
    let both = [claim("acct", None, 1), claim("addr", Some(&addr), 2)];
    assert!(ctx.store.count_login_attempt(&both, ts(10_002), ts(0)).await.unwrap());
    let got = ctx.store.login_counters(&keys(&["acct", "addr"])).await.unwrap();
    assert_eq!(got.iter().map(|c| (c.key.as_str(), c.failures)).collect::<Vec<_>>(), [("acct", 1), ("addr", 2)]);
}

async fn concurrent_counts_from_two_stores_have_one_winner_per_read(ctx: Ctx) {
    let other = ctx.reopen().await;
    ctx.store.count_login_attempt(&[claim("k", None, 1)], ts(10_000), ts(0)).await.unwrap();
    let seen = counter(&ctx, "k").await.unwrap();
    // Sixteen attempts (half through a second store, as another replica) all read the same counter.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = if i % 2 == 0 { ctx.store.clone() } else { other.clone() };
            let c = vec![claim("k", Some(&seen), 2)];
            tokio::spawn(async move { store.count_login_attempt(&c, ts(20_000 + i), ts(0)).await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1);
    assert_eq!(counter(&ctx, "k").await.unwrap().failures, 2);
}

async fn settle_clears_forgives_and_audits(ctx: Ctx) {
    let claims = [claim("acct", None, 3), claim("addr", None, 1)];
    ctx.store.count_login_attempt(&claims, ts(10_000), ts(0)).await.unwrap();
    let o = org("acme");
    ctx.store.create_org(&o, &[]).await.unwrap();
    let failed = [event(o.id, EventType::LoginFailed)];
    ctx.store.settle_login_attempt(&keys(&["acct"]), &keys(&["addr"]), &failed).await.unwrap();
    assert_eq!(audit_count(&ctx, o.id, EventType::LoginFailed).await, 1);
    assert_eq!(counter(&ctx, "acct").await, None);
    assert_eq!(counter(&ctx, "addr").await.unwrap().failures, 0);
    // Never below zero.
    ctx.store.settle_login_attempt(&[], &keys(&["addr", "missing"]), &[]).await.unwrap();
    assert_eq!(counter(&ctx, "addr").await.unwrap().failures, 0);
    assert_eq!(counter(&ctx, "missing").await, None);
}

async fn stale_counters_are_swept(ctx: Ctx) {
    ctx.store.count_login_attempt(&[claim("old", None, 4)], ts(1_000), ts(0)).await.unwrap();
    ctx.store.count_login_attempt(&[claim("recent", None, 1)], ts(50_000), ts(0)).await.unwrap();
    // An attempt at 100 s with a 60 s window deletes what last moved before 40 s, and keeps the rest.
    ctx.store.count_login_attempt(&[claim("new", None, 1)], ts(100_000), ts(40_000)).await.unwrap();
    let got = ctx.store.login_counters(&keys(&["old", "recent", "new"])).await.unwrap();
    assert_eq!(got.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["recent", "new"]);
}

async fn throttled_note_is_written_once_per_period(ctx: Ctx) {
    let o = org("acme");
    ctx.store.create_org(&o, &[]).await.unwrap();
    ctx.store.count_login_attempt(&[claim("acct", None, 5)], ts(10_000), ts(0)).await.unwrap();
    let note = || [event(o.id, EventType::LoginThrottled)];
    assert!(ctx.store.note_login_throttled("acct", ts(10_000), &note()).await.unwrap());
    assert!(!ctx.store.note_login_throttled("acct", ts(10_000), &note()).await.unwrap());
    // A stale read of an older period writes nothing.
    assert!(!ctx.store.note_login_throttled("acct", ts(9_000), &note()).await.unwrap());
    assert_eq!(counter(&ctx, "acct").await.unwrap().noted_at, Some(ts(10_000)));
    // The next counted failure opens a new period, which may be noted again.
    let c = counter(&ctx, "acct").await.unwrap();
    ctx.store.count_login_attempt(&[claim("acct", Some(&c), 6)], ts(12_000), ts(0)).await.unwrap();
    assert_eq!(counter(&ctx, "acct").await.unwrap().noted_at, None);
    assert!(ctx.store.note_login_throttled("acct", ts(12_000), &note()).await.unwrap());
    assert_eq!(audit_count(&ctx, o.id, EventType::LoginThrottled).await, 2);
}

async fn reset_password_revokes_every_session(ctx: Ctx) {
    let (a, b) = (org("acme"), org("globex"));
    ctx.store.create_org(&a, &[]).await.unwrap();
    ctx.store.create_org(&b, &[]).await.unwrap();
    let mut u = user("ada@example.com");
    u.password_hash = Some("old-hash".into());
    ctx.store.create_user(&u, &[]).await.unwrap();
    let mut sessions = vec![];
    for (o, n) in [(&a, 1), (&b, 2), (&b, 3)] {
        let s = Session {
            id: SessionId::new(),
            user_id: u.id,
            org_id: o.id,
            created_at: ts(n),
            expires_at: ts(1_000_000),
            revoked_at: if n == 3 { Some(ts(4)) } else { None },
        };
        ctx.store.create_session(&s, &[]).await.unwrap();
        sessions.push(s);
    }
    let audit = [event(a.id, EventType::PasswordReset), event(b.id, EventType::PasswordReset)];
    assert_eq!(ctx.store.reset_password(u.id, "new-hash", ts(50), &audit).await.unwrap(), 2);
    assert_eq!(ctx.store.get_user(u.id).await.unwrap().unwrap().password_hash.as_deref(), Some("new-hash"));
    let revoked: Vec<_> = futures_revoked(&ctx, &sessions).await;
    assert_eq!(revoked, vec![Some(ts(50)), Some(ts(50)), Some(ts(4))]);
    assert_eq!(audit_count(&ctx, a.id, EventType::PasswordReset).await, 1);
    assert_eq!(audit_count(&ctx, b.id, EventType::PasswordReset).await, 1);
}

async fn futures_revoked(ctx: &Ctx, sessions: &[Session]) -> Vec<Option<Timestamp>> {
    let mut out = vec![];
    for s in sessions {
        out.push(ctx.store.get_session(s.id).await.unwrap().unwrap().revoked_at);
    }
    out
}
