//! The idle timeout's store side: when a workspace was last active, and the stop request written only while it has
//! no open task and no activity since the decision — which a task submission racing it can never slip past.

use evershell_core::idle::ACTIVITY_EVENTS;
use evershell_core::ids::TaskId;
use evershell_core::model::{Request, TaskOptions, TaskRecord};
use evershell_core::task::TaskStatus;
use evershell_store::TaskUpdate;

use crate::*;

store_tests!(
    last_activity_is_the_latest_task_or_listed_event,
    the_idle_stop_lands_only_on_an_inactive_workspace,
    a_submission_racing_the_idle_stop_never_both_win,
);

fn task(ws: &WorkspaceRecord, at: i64) -> TaskRecord {
    TaskRecord {
        id: TaskId::new(),
        org_id: ws.org_id,
        workspace_id: ws.id,
        created_by_user_id: None,
        description: "x".into(),
        status: TaskStatus::Submitted,
        reason: None,
        options: TaskOptions::default(),
        queue_seq: 0,
        created_at: ts(at),
        delivered_at: None,
        started_at: None,
        completed_at: None,
        result: None,
    }
}

fn ended(at: i64) -> TaskUpdate {
    TaskUpdate {
        status: TaskStatus::Completed,
        reason: None,
        delivered_at: None,
        started_at: None,
        completed_at: Some(ts(at)),
        result: None,
    }
}

/// `ws` with the idle timeout's stop request.
fn idle_stop(ws: &WorkspaceRecord) -> WorkspaceRecord {
    let mut next = ws.clone();
    next.intent.desired = Desired::Stopped;
    next.intent.request = Some(Request {
        seq: ws.observed.adopted + 1,
        status: WorkspaceStatus::Stopping,
        reason: StatusReason::IdleTimeout,
    });
    next
}

async fn last_activity_is_the_latest_task_or_listed_event(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    let last = || ctx.store.last_workspace_activity(ws.id, ACTIVITY_EVENTS);
    assert_eq!(last().await.unwrap(), None);
    let t = task(&ws, 2_000);
    ctx.store.insert_task(&t, &[]).await.unwrap();
    assert_eq!(last().await.unwrap(), Some(ts(2_000)));
    let mut exec = event(w.org.id, EventType::WorkspaceExec).workspace(ws.id);
    exec.timestamp = ts(5_000);
    // Rows of other types, or about other workspaces, do not count.
    let mut egress = event(w.org.id, EventType::EgressRequest).workspace(ws.id);
    egress.timestamp = ts(9_000);
    let mut elsewhere = event(w.org.id, EventType::WorkspaceExec).workspace(WorkspaceId::new());
    elsewhere.timestamp = ts(9_500);
    ctx.store.append_audit(&[exec, egress, elsewhere]).await.unwrap();
    assert_eq!(last().await.unwrap(), Some(ts(5_000)));
    assert!(ctx.store.update_task(t.id, TaskStatus::Submitted, &ended(7_000), &[]).await.unwrap());
    assert_eq!(last().await.unwrap(), Some(ts(7_000)));
    assert_eq!(ctx.store.last_workspace_activity(ws.id, &[]).await.unwrap(), Some(ts(7_000)), "tasks alone");
}

async fn the_idle_stop_lands_only_on_an_inactive_workspace(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    let (gi, go) = (ws.intent.generation, ws.observed.generation);
    let next = idle_stop(&ws);
    let stop = |since: i64| {
        let audit = event(w.org.id, EventType::WorkspaceStopRequested).workspace(ws.id).reason("idle_timeout");
        let next = next.clone();
        let store = ctx.store.clone();
        async move { store.update_intent_if_inactive(&next, gi, go, ts(since), ACTIVITY_EVENTS, &[audit]).await }
    };
    // A queued task, however old, is activity.
    let t = task(&ws, 2_000);
    ctx.store.insert_task(&t, &[]).await.unwrap();
    assert!(!stop(10_000).await.unwrap());
    // Ended after the decision's last activity: refused too.
    assert!(ctx.store.update_task(t.id, TaskStatus::Submitted, &ended(3_000), &[]).await.unwrap());
    assert!(!stop(2_999).await.unwrap());
    assert_eq!(audit_count(&ctx, w.org.id, EventType::WorkspaceStopRequested).await, 0);
    // Nothing since: it lands, with its reason, and a submission now is refused as on a stopping workspace.
    assert!(stop(3_000).await.unwrap());
    let got = ctx.store.get_workspace(w.org.id, ws.id).await.unwrap().unwrap();
    assert_eq!(got.public_status(false), (WorkspaceStatus::Stopping, Some(StatusReason::IdleTimeout)));
    assert_eq!(got.intent.generation, gi + 1);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::WorkspaceStopRequested).await, 1);
    assert_eq!(code(ctx.store.insert_task(&task(&ws, 4_000), &[]).await), ErrorCode::WorkspaceStopped);
    // The generation moved: the same write does not land twice.
    assert!(!stop(3_000).await.unwrap());
    // The reconciler takes it on and records the reason as observed (the new CHECK lists allow it).
    let mut adopted = got.clone();
    adopted.observed.status = WorkspaceStatus::Stopping;
    adopted.observed.status_reason = Some(StatusReason::IdleTimeout);
    adopted.observed.adopted = got.intent.request.unwrap().seq;
    observe(&ctx, &mut adopted).await;
    let got = ctx.store.get_workspace(w.org.id, ws.id).await.unwrap().unwrap();
    assert_eq!(got.public_status(false), (WorkspaceStatus::Stopping, Some(StatusReason::IdleTimeout)));
}

async fn a_submission_racing_the_idle_stop_never_both_win(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    for round in 0..12 {
        let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
        ctx.store.create_workspace(&ws, &[]).await.unwrap();
        let next = idle_stop(&ws);
        let (s1, s2) = (ctx.store.clone(), ctx.store.clone());
        let t = task(&ws, 500);
        let (gi, go) = (ws.intent.generation, ws.observed.generation);
        let stop = tokio::spawn(async move {
            s1.update_intent_if_inactive(&next, gi, go, ts(1_000), ACTIVITY_EVENTS, &[]).await.unwrap()
        });
        let submit = tokio::spawn(async move { s2.insert_task(&t, &[]).await });
        let (stopped, submitted) = (stop.await.unwrap(), submit.await.unwrap());
        match submitted {
            Ok(_) => assert!(!stopped, "round {round}: a task was accepted and the stop landed"),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::WorkspaceStopped, "round {round}");
                assert!(stopped, "round {round}: refused although no stop landed");
            }
        }
    }
}
