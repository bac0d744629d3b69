//! The audit log (filters, window, order, keyset pages) and idempotency keys.

use std::collections::HashSet;

use evershell_core::audit::{Actor, Category, Cursor};
use evershell_core::ids::TaskId;
use evershell_store::{IdempotencyBegin, IdempotencyClaim, Store};

use crate::*;

store_tests!(
    audit_round_trips_every_field,
    audit_filters,
    audit_window_and_order,
    audit_cursor_pages_cover_every_row_once,
    idempotency_outcomes,
    idempotency_expired_key_is_new,
    idempotency_claim_of_a_dead_owner_is_taken_over,
    idempotency_sweep_deletes_only_expired_keys,
    activity_feed_publishes_committed_activity_rows_only,
    get_audit_event_is_scoped_to_its_org,
);

/// Begin as owner `A` with a lease far beyond `now` (the key's own expiry is `exp`).
async fn begin(s: &dyn Store, o: OrgId, key: &str, fp: &str, now: Timestamp, exp: Timestamp) -> IdempotencyBegin {
    begin_as(s, o, key, fp, now, exp, "A", now.plus_millis(1_000_000)).await
}

#[allow(clippy::too_many_arguments)]
async fn begin_as(
    s: &dyn Store,
    o: OrgId,
    key: &str,
    fingerprint: &str,
    now: Timestamp,
    expires_at: Timestamp,
    owner: &str,
    lease_until: Timestamp,
) -> IdempotencyBegin {
    let claim = IdempotencyClaim { fingerprint, now, expires_at, owner, lease_until };
    s.idempotency_begin(o, key, &claim).await.unwrap()
}

async fn audit_round_trips_every_field(ctx: Ctx) {
    let o = OrgId::new();
    let mut e = event(o, EventType::WorkspaceReady).workspace(WorkspaceId::new()).target("workspace", "ws_x");
    e.timestamp = ts(1_234);
    e.actor = Actor::PolicyEngine;
    e.category = Category::Activity;
    e.task_id = Some(TaskId::new());
    e.agent_role = Some("coder".into());
    e.agent_provider = Some("anthropic".into());
    e.destination = Some("api.example.com".into());
    e.method = Some("POST".into());
    e.path = Some("/v1/x".into());
    e.decision = Some("allow".into());
    e.reason = Some("matched".into());
    e.latency_ms = Some(12);
    e.request_id = Some("req-1".into());
    e.details = Some(serde_json::json!({ "a": [1, 2], "b": null }));
    let bare = event(o, EventType::OrgCreated);
    ctx.store.append_audit(&[e.clone(), bare.clone()]).await.unwrap();
    ctx.store.append_audit(&[]).await.unwrap();
    let rows = audit_rows(&ctx, o).await;
    assert_eq!(rows, vec![e, bare]);
}

/// 24 events of one org, one per millisecond from 1000, cycling through types, users, workspaces and decisions; plus
/// noise in another org.
async fn seed(ctx: &Ctx) -> (OrgId, WorkspaceId, Vec<AuditEvent>) {
    let o = OrgId::new();
    let ws = WorkspaceId::new();
    let types = [EventType::ProviderCreated, EventType::AgentRoleCreated, EventType::WorkspaceReady];
    let events: Vec<AuditEvent> = (0..24)
        .map(|i| {
            let mut e = event(o, types[i % 3]);
            e.timestamp = ts(1_000 + i as i64);
            e.user_id = if i % 2 == 0 { "system".into() } else { "usr_ada".into() };
            if i % 4 == 0 {
                e.workspace_id = Some(ws);
            }
            e.decision = match i % 3 {
                0 => Some("allow".into()),
                1 => Some("deny".into()),
                _ => None,
            };
            if i == 5 {
                e.reason = Some(String::new());
            }
            if i == 7 {
                e.reason = Some("quota".into());
            }
            e
        })
        .collect();
    ctx.store.append_audit(&events).await.unwrap();
    ctx.store.append_audit(&[event(OrgId::new(), EventType::ProviderCreated)]).await.unwrap();
    (o, ws, events)
}

async fn run(ctx: &Ctx, q: &AuditQuery) -> Vec<uuid::Uuid> {
    ctx.store.query_audit(q).await.unwrap().into_iter().map(|e| e.id).collect()
}

fn ids(events: &[AuditEvent], keep: impl Fn(&AuditEvent) -> bool) -> Vec<uuid::Uuid> {
    events.iter().filter(|e| keep(e)).map(|e| e.id).collect()
}

fn cond(column: &'static str, op: FilterOp) -> Condition {
    Condition { column, op }
}

async fn audit_filters(ctx: Ctx) {
    let (o, ws, events) = seed(&ctx).await;
    let base = query(o, Order::Asc);
    assert_eq!(run(&ctx, &base).await, ids(&events, |_| true));

    let q = AuditQuery {
        conditions: vec![cond("event_type", FilterOp::In(vec!["provider_created".into(), "workspace_ready".into()]))],
        ..base.clone()
    };
    assert_eq!(run(&ctx, &q).await, ids(&events, |e| e.event_type != EventType::AgentRoleCreated));

    // NOT IN keeps rows without the column.
    let q = AuditQuery { conditions: vec![cond("decision", FilterOp::NotIn(vec!["deny".into()]))], ..base.clone() };
    assert_eq!(run(&ctx, &q).await, ids(&events, |e| e.decision.as_deref() != Some("deny")));

    let q = AuditQuery { conditions: vec![cond("workspace_id", FilterOp::NotEmpty)], ..base.clone() };
    assert_eq!(run(&ctx, &q).await, ids(&events, |e| e.workspace_id.is_some()));
    // An empty string is not "set".
    let q = AuditQuery { conditions: vec![cond("reason", FilterOp::NotEmpty)], ..base.clone() };
    assert_eq!(run(&ctx, &q).await, vec![events[7].id]);

    // Conditions AND together, and with the workspace and user scopes.
    let q = AuditQuery {
        conditions: vec![
            cond("user_id", FilterOp::NotIn(vec!["usr_ada".into()])),
            cond("decision", FilterOp::In(vec!["allow".into()])),
        ],
        ..base.clone()
    };
    assert_eq!(run(&ctx, &q).await, ids(&events, |e| e.user_id == "system" && e.decision.as_deref() == Some("allow")));
    let q = AuditQuery { workspace_id: Some(ws), user_id: Some("system".into()), ..base.clone() };
    assert_eq!(run(&ctx, &q).await, ids(&events, |e| e.workspace_id == Some(ws) && e.user_id == "system"));
    let q = AuditQuery { user_id: Some("usr_ada".into()), ..base.clone() };
    assert_eq!(run(&ctx, &q).await, ids(&events, |e| e.user_id == "usr_ada"));

    let q = AuditQuery { conditions: vec![cond("event_type", FilterOp::In(vec![]))], ..base.clone() };
    assert!(run(&ctx, &q).await.is_empty());
    let q = AuditQuery { conditions: vec![cond("event_type", FilterOp::In(vec!["nope".into()]))], ..base.clone() };
    assert!(run(&ctx, &q).await.is_empty());
}

async fn audit_window_and_order(ctx: Ctx) {
    let (o, _, events) = seed(&ctx).await;
    let asc = query(o, Order::Asc);
    let q = AuditQuery { from: Some(ts(1_005)), to: Some(ts(1_010)), ..asc.clone() };
    assert_eq!(run(&ctx, &q).await, ids(&events[5..10], |_| true));

    let desc = AuditQuery { limit: 3, ..query(o, Order::Desc) };
    let mut newest: Vec<_> = events.iter().rev().take(3).map(|e| e.id).collect();
    assert_eq!(run(&ctx, &desc).await, newest);
    let q = AuditQuery { to: Some(ts(1_010)), ..desc.clone() };
    newest = events[..10].iter().rev().take(3).map(|e| e.id).collect();
    assert_eq!(run(&ctx, &q).await, newest);
    let q = AuditQuery { limit: 0, ..asc };
    assert!(run(&ctx, &q).await.is_empty());
}

async fn audit_cursor_pages_cover_every_row_once(ctx: Ctx) {
    let o = OrgId::new();
    // 23 events over 6 distinct timestamps, so pages break inside runs of equal timestamps.
    let events: Vec<AuditEvent> = (0..23)
        .map(|i| {
            let mut e = event(o, EventType::WorkspaceReady);
            e.timestamp = ts(5_000 + (i % 6));
            e
        })
        .collect();
    ctx.store.append_audit(&events).await.unwrap();

    for order in [Order::Asc, Order::Desc] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let q = AuditQuery { limit: 4, after, ..query(o, order) };
            let page = ctx.store.query_audit(&q).await.unwrap();
            assert!(page.len() <= 4);
            let Some(last) = page.last() else { break };
            after = Some(Cursor { timestamp_ms: last.timestamp.millis(), id: last.id, order });
            seen.extend(page.iter().map(|e| (e.timestamp, e.id)));
        }
        assert_eq!(seen.len(), events.len(), "{order:?}");
        assert_eq!(seen.iter().map(|(_, id)| *id).collect::<HashSet<_>>().len(), events.len(), "{order:?}: duplicates");
        let mut sorted = seen.clone();
        sorted.sort();
        if order == Order::Desc {
            sorted.reverse();
        }
        assert_eq!(seen, sorted, "{order:?}: pages out of order");
    }
}

async fn idempotency_outcomes(ctx: Ctx) {
    let (o, other) = (OrgId::new(), OrgId::new());
    let s = &ctx.store;
    let (now, exp) = (ts(1_000), ts(100_000));
    assert_eq!(begin(s.as_ref(), o, "k", "fp", now, exp).await, IdempotencyBegin::New);
    assert_eq!(begin(s.as_ref(), o, "k", "fp", now, exp).await, IdempotencyBegin::InFlight);
    assert_eq!(begin(s.as_ref(), o, "k", "other", now, exp).await, IdempotencyBegin::Mismatch);
    // Keys are per org.
    assert_eq!(begin(s.as_ref(), other, "k", "other", now, exp).await, IdempotencyBegin::New);

    s.idempotency_complete(o, "k", "A", 201, "{\"id\":1}").await.unwrap();
    let replay = IdempotencyBegin::Replay { status: 201, body: "{\"id\":1}".into() };
    assert_eq!(begin(s.as_ref(), o, "k", "fp", now, exp).await, replay);
    assert_eq!(begin(s.as_ref(), o, "k", "other", now, exp).await, IdempotencyBegin::Mismatch);
    // A completed key cannot be abandoned.
    s.idempotency_abandon(o, "k", "A").await.unwrap();
    assert_eq!(begin(s.as_ref(), o, "k", "fp", now, exp).await, replay);

    // An abandoned in-flight key runs again.
    assert_eq!(begin(s.as_ref(), o, "retry", "fp", now, exp).await, IdempotencyBegin::New);
    s.idempotency_abandon(o, "retry", "A").await.unwrap();
    assert_eq!(begin(s.as_ref(), o, "retry", "fp2", now, exp).await, IdempotencyBegin::New);

    // Racing first uses: exactly one is new.
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = ctx.store.clone();
            tokio::spawn(async move { begin(store.as_ref(), o, "race", "fp", now, exp).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| **o == IdempotencyBegin::New).count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| **o == IdempotencyBegin::InFlight).count(), 5, "{outcomes:?}");
}

async fn idempotency_expired_key_is_new(ctx: Ctx) {
    let o = OrgId::new();
    let s = &ctx.store;
    assert_eq!(begin(s.as_ref(), o, "k", "fp", ts(1_000), ts(2_000)).await, IdempotencyBegin::New);
    s.idempotency_complete(o, "k", "A", 200, "old").await.unwrap();
    // Expired (at or after expires_at): the key starts over, even with another fingerprint.
    assert_eq!(begin(s.as_ref(), o, "k", "fp2", ts(2_000), ts(3_000)).await, IdempotencyBegin::New);
    assert_eq!(begin(s.as_ref(), o, "k", "fp2", ts(2_500), ts(4_000)).await, IdempotencyBegin::InFlight);
    assert_eq!(begin(s.as_ref(), o, "k", "fp", ts(2_500), ts(4_000)).await, IdempotencyBegin::Mismatch);
}

async fn idempotency_claim_of_a_dead_owner_is_taken_over(ctx: Ctx) {
    let o = OrgId::new();
    let s = ctx.store.as_ref();
    let exp = ts(1_000_000);
    // A claims with a lease to 2_000 and renews it to 5_000 while its request runs.
    assert_eq!(begin_as(s, o, "k", "fp", ts(1_000), exp, "A", ts(2_000)).await, IdempotencyBegin::New);
    assert!(s.idempotency_renew(o, "k", "A", ts(5_000)).await.unwrap());
    assert!(!s.idempotency_renew(o, "k", "B", ts(9_000)).await.unwrap(), "only the owner renews");
    // Inside the lease: still in flight for everyone.
    assert_eq!(begin_as(s, o, "k", "fp", ts(4_999), exp, "B", ts(9_000)).await, IdempotencyBegin::InFlight);
    // A died: once its lease lapses, B takes the key over and runs the request.
    assert_eq!(begin_as(s, o, "k", "fp", ts(5_000), exp, "B", ts(9_000)).await, IdempotencyBegin::New);
    // A late answer from A is not kept, and A can neither renew nor abandon B's claim.
    assert!(!s.idempotency_complete(o, "k", "A", 201, "from A").await.unwrap());
    assert!(!s.idempotency_renew(o, "k", "A", ts(20_000)).await.unwrap());
    s.idempotency_abandon(o, "k", "A").await.unwrap();
    assert_eq!(begin_as(s, o, "k", "fp", ts(6_000), exp, "C", ts(9_000)).await, IdempotencyBegin::InFlight);
    assert!(s.idempotency_complete(o, "k", "B", 201, "from B").await.unwrap());
    let replay = IdempotencyBegin::Replay { status: 201, body: "from B".into() };
    // A completed key is replayed however old its lease is.
    assert_eq!(begin_as(s, o, "k", "fp", ts(50_000), exp, "C", ts(60_000)).await, replay);
}

async fn idempotency_sweep_deletes_only_expired_keys(ctx: Ctx) {
    let o = OrgId::new();
    let s = ctx.store.as_ref();
    for i in 0..5 {
        assert_eq!(begin(s, o, &format!("old{i}"), "fp", ts(1_000), ts(2_000 + i)).await, IdempotencyBegin::New);
    }
    assert!(s.idempotency_complete(o, "old0", "A", 200, "x").await.unwrap());
    assert_eq!(begin(s, o, "live", "fp", ts(1_000), ts(10_000)).await, IdempotencyBegin::New);
    assert!(s.idempotency_complete(o, "live", "A", 200, "kept").await.unwrap());
    // In batches: 5 expired by 3_000 (done and in flight alike), the live one stays.
    assert_eq!(s.idempotency_sweep(ts(3_000), 3).await.unwrap(), 3);
    assert_eq!(s.idempotency_sweep(ts(3_000), 3).await.unwrap(), 2);
    assert_eq!(s.idempotency_sweep(ts(3_000), 3).await.unwrap(), 0);
    let replay = IdempotencyBegin::Replay { status: 200, body: "kept".into() };
    assert_eq!(begin(s, o, "live", "fp", ts(3_000), ts(10_000)).await, replay);
    // Only the live row is left for a later sweep.
    assert_eq!(s.idempotency_sweep(ts(10_000), 100).await.unwrap(), 1);
}

async fn activity_feed_publishes_committed_activity_rows_only(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let mut rx = ctx.store.activity_feed().subscribe();
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    let ready = event(w.org.id, EventType::WorkspaceReady).workspace(ws.id);
    let stale = event(w.org.id, EventType::WorkspaceFailed).workspace(ws.id);
    let audit_only = event(w.org.id, EventType::WorkspaceStopRequested).workspace(ws.id);
    // A write refused by the generation guard commits nothing and publishes nothing.
    let (gi, go) = (ws.intent.generation, ws.observed.generation);
    let quota = evershell_store::WorkspaceQuota::default();
    assert!(!ctx.store.update_intent(&ws, gi + 7, go, &quota, std::slice::from_ref(&stale)).await.unwrap());
    assert!(ctx.store.update_intent(&ws, gi, go, &quota, &[audit_only, ready.clone()]).await.unwrap());
    let got = rx.recv().await.unwrap();
    assert_eq!(got.event, ready);
    // Nothing else is queued: the failed write and the `audit`-category row were not published.
    let marker = event(w.org.id, EventType::SnapshotSaved).workspace(ws.id);
    ctx.store.append_audit(std::slice::from_ref(&marker)).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().event.id, marker.id);
    assert!(rx.try_recv().is_err());
}

async fn get_audit_event_is_scoped_to_its_org(ctx: Ctx) {
    let o = OrgId::new();
    let e = event(o, EventType::WorkspaceReady);
    ctx.store.append_audit(std::slice::from_ref(&e)).await.unwrap();
    assert_eq!(ctx.store.get_audit_event(o, e.id).await.unwrap(), Some(e.clone()));
    assert_eq!(ctx.store.get_audit_event(OrgId::new(), e.id).await.unwrap(), None);
    assert_eq!(ctx.store.get_audit_event(o, uuid::Uuid::now_v7()).await.unwrap(), None);
}
