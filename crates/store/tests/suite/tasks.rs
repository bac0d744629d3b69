//! Tasks: queueing in order under the workspace's lock, refusal on workspaces that take no work, the narrow
//! guarded status update, and the dispatcher's scans.

use evershell_core::ids::TaskId;
use evershell_core::model::{TaskOptions, TaskRecord, ThinkingEffort};
use evershell_core::task::{TaskReason, TaskStatus};
use evershell_store::TaskUpdate;

use crate::*;

store_tests!(
    tasks_queue_in_order_and_list_newest_first,
    tasks_are_refused_on_workspaces_that_take_no_work,
    task_updates_are_guarded_by_status,
    concurrent_task_updates_have_one_winner,
    dispatcher_scans,
    ended_tasks_need_completed_at,
);

fn task(ws: &WorkspaceRecord, desc: &str) -> TaskRecord {
    TaskRecord {
        id: TaskId::new(),
        org_id: ws.org_id,
        workspace_id: ws.id,
        created_by_user_id: None,
        description: desc.to_string(),
        status: TaskStatus::Submitted,
        reason: None,
        options: TaskOptions::default(),
        queue_seq: 0,
        created_at: ts(2_000),
        delivered_at: None,
        started_at: None,
        completed_at: None,
        result: None,
    }
}

fn moved(status: TaskStatus) -> TaskUpdate {
    TaskUpdate { status, reason: None, delivered_at: None, started_at: None, completed_at: None, result: None }
}

async fn live_workspace(ctx: &Ctx, w: &World, status: WorkspaceStatus) -> WorkspaceRecord {
    let ws = workspace(w.org.id, w.role.id, status);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    ws
}

async fn tasks_queue_in_order_and_list_newest_first(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = live_workspace(&ctx, &w, WorkspaceStatus::Idle).await;
    let other = live_workspace(&ctx, &w, WorkspaceStatus::Provisioning).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut t = task(&ws, &format!("task {i}"));
        t.options = TaskOptions {
            thinking_effort: Some(ThinkingEffort::High),
            max_continuations: Some(i),
            metadata: Some(serde_json::json!({ "n": i })),
            uploads: vec!["a.txt".into()],
            ..Default::default()
        };
        let audit = event(w.org.id, EventType::TaskSubmitted).workspace(ws.id);
        let seq = ctx.store.insert_task(&t, &[audit]).await.unwrap();
        assert_eq!(seq, i + 1, "queue positions follow submission");
        ids.push(t.id);
    }
    // Another workspace has its own queue.
    assert_eq!(ctx.store.insert_task(&task(&other, "elsewhere"), &[]).await.unwrap(), 1);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::TaskSubmitted).await, 5);

    let listed = ctx.store.list_tasks(w.org.id, ws.id).await.unwrap();
    let listed_ids: Vec<TaskId> = listed.iter().map(|t| t.id).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed_ids, newest_first);
    let open: Vec<TaskId> = ctx.store.open_tasks(ws.id).await.unwrap().iter().map(|t| t.id).collect();
    assert_eq!(open, ids, "open tasks come in queue order");

    let got = ctx.store.get_task(w.org.id, ws.id, ids[2]).await.unwrap().unwrap();
    assert_eq!(got.description, "task 2");
    assert_eq!(got.queue_seq, 3);
    assert_eq!(got.options.max_continuations, Some(2));
    assert_eq!(got.options.metadata, Some(serde_json::json!({ "n": 2 })));
    assert_eq!(got.options.uploads, vec!["a.txt".to_string()]);
    assert_eq!(got.options.thinking_effort, Some(ThinkingEffort::High));
    // Scoped by org and workspace.
    assert!(ctx.store.get_task(w.org.id, other.id, ids[2]).await.unwrap().is_none());
    let stranger = world(&ctx, "other").await;
    assert!(ctx.store.get_task(stranger.org.id, ws.id, ids[2]).await.unwrap().is_none());
    assert!(ctx.store.list_tasks(stranger.org.id, ws.id).await.unwrap().is_empty());
}

async fn tasks_are_refused_on_workspaces_that_take_no_work(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    for (status, want) in [
        (WorkspaceStatus::Stopped, Some(ErrorCode::WorkspaceStopped)),
        (WorkspaceStatus::Stopping, Some(ErrorCode::WorkspaceStopped)),
        (WorkspaceStatus::Failed, Some(ErrorCode::WorkspaceFailed)),
        (WorkspaceStatus::Provisioning, None),
        (WorkspaceStatus::Idle, None),
        (WorkspaceStatus::Busy, None),
    ] {
        let ws = live_workspace(&ctx, &w, status).await;
        let audit = event(w.org.id, EventType::TaskSubmitted).workspace(ws.id);
        let r = ctx.store.insert_task(&task(&ws, "x"), &[audit]).await;
        match want {
            Some(c) => assert_eq!(code(r), c, "{status:?}"),
            None => assert_eq!(r.unwrap(), 1, "{status:?}"),
        }
    }
    // A refused submission writes no audit row.
    assert_eq!(audit_count(&ctx, w.org.id, EventType::TaskSubmitted).await, 3);
    let mut archived = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopped);
    archived.archived_at = Some(ts(1_500));
    ctx.store.create_workspace(&archived, &[]).await.unwrap();
    assert_eq!(code(ctx.store.insert_task(&task(&archived, "x"), &[]).await), ErrorCode::WorkspaceArchived);
    // Another org's workspace is not found.
    let stranger = world(&ctx, "other").await;
    let theirs = live_workspace(&ctx, &stranger, WorkspaceStatus::Idle).await;
    let mut t = task(&theirs, "x");
    t.org_id = w.org.id;
    assert_eq!(code(ctx.store.insert_task(&t, &[]).await), ErrorCode::WorkspaceNotFound);
}

async fn task_updates_are_guarded_by_status(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = live_workspace(&ctx, &w, WorkspaceStatus::Idle).await;
    let t = task(&ws, "x");
    ctx.store.insert_task(&t, &[]).await.unwrap();
    let delivered = TaskUpdate { delivered_at: Some(ts(3_000)), ..moved(TaskStatus::Delivered) };
    let audit = event(w.org.id, EventType::TaskDelivered).workspace(ws.id);
    assert!(
        ctx.store.update_task(t.id, TaskStatus::Submitted, &delivered, std::slice::from_ref(&audit)).await.unwrap()
    );
    // The same move again names a status the task has left: refused, and its audit row is not written.
    assert!(!ctx.store.update_task(t.id, TaskStatus::Submitted, &delivered, &[audit]).await.unwrap());
    assert_eq!(audit_count(&ctx, w.org.id, EventType::TaskDelivered).await, 1);
    // Timestamps are set once: a later move cannot rewrite them.
    let running =
        TaskUpdate { delivered_at: Some(ts(9_999)), started_at: Some(ts(4_000)), ..moved(TaskStatus::Running) };
    assert!(ctx.store.update_task(t.id, TaskStatus::Delivered, &running, &[]).await.unwrap());
    let done =
        TaskUpdate { completed_at: Some(ts(5_000)), result: Some("all done".into()), ..moved(TaskStatus::Completed) };
    assert!(ctx.store.update_task(t.id, TaskStatus::Running, &done, &[]).await.unwrap());
    let got = ctx.store.get_task(w.org.id, ws.id, t.id).await.unwrap().unwrap();
    assert_eq!(got.status, TaskStatus::Completed);
    assert_eq!(got.delivered_at, Some(ts(3_000)));
    assert_eq!(got.started_at, Some(ts(4_000)));
    assert_eq!(got.completed_at, Some(ts(5_000)));
    assert_eq!(got.result.as_deref(), Some("all done"));
    assert_eq!(got.reason, None);
    // An unknown task moves nothing.
    assert!(!ctx.store.update_task(TaskId::new(), TaskStatus::Submitted, &delivered, &[]).await.unwrap());
}

async fn concurrent_task_updates_have_one_winner(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = live_workspace(&ctx, &w, WorkspaceStatus::Idle).await;
    let t = task(&ws, "x");
    ctx.store.insert_task(&t, &[]).await.unwrap();
    let running = TaskUpdate { started_at: Some(ts(3_000)), ..moved(TaskStatus::Running) };
    ctx.store.update_task(t.id, TaskStatus::Submitted, &running, &[]).await.unwrap();
    // A completion from the agent and an interruption race from the same status: exactly one lands.
    let mut handles = Vec::new();
    for i in 0..8 {
        let store = ctx.reopen().await;
        let id = t.id;
        handles.push(tokio::spawn(async move {
            let u = if i % 2 == 0 {
                TaskUpdate { completed_at: Some(ts(4_000 + i)), ..moved(TaskStatus::Completed) }
            } else {
                TaskUpdate {
                    reason: Some(TaskReason::WorkspaceStopped),
                    completed_at: Some(ts(4_000 + i)),
                    ..moved(TaskStatus::Cancelled)
                }
            };
            store.update_task(id, TaskStatus::Running, &u, &[]).await.unwrap()
        }));
    }
    let mut wins = 0;
    for h in handles {
        wins += usize::from(h.await.unwrap());
    }
    assert_eq!(wins, 1);
    let got = ctx.store.get_task(w.org.id, ws.id, t.id).await.unwrap().unwrap();
    assert!(got.status.is_terminal());
    assert_eq!(got.reason.is_some(), got.status == TaskStatus::Cancelled);
}

async fn dispatcher_scans(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let a = live_workspace(&ctx, &w, WorkspaceStatus::Idle).await;
    let b = live_workspace(&ctx, &w, WorkspaceStatus::Idle).await;
    let c = live_workspace(&ctx, &w, WorkspaceStatus::Idle).await;
    let (ta, tb, tc) = (task(&a, "a"), task(&b, "b"), task(&c, "c"));
    for t in [&ta, &tb, &tc] {
        ctx.store.insert_task(t, &[]).await.unwrap();
    }
    let delivered = TaskUpdate { delivered_at: Some(ts(3_000)), ..moved(TaskStatus::Delivered) };
    ctx.store.update_task(tb.id, TaskStatus::Submitted, &delivered, &[]).await.unwrap();
    let ended = TaskUpdate {
        reason: Some(TaskReason::Cancelled),
        completed_at: Some(ts(3_000)),
        ..moved(TaskStatus::Cancelled)
    };
    ctx.store.update_task(tc.id, TaskStatus::Submitted, &ended, &[]).await.unwrap();

    let mut open = ctx.store.workspaces_with_open_tasks().await.unwrap();
    open.sort();
    let mut want = vec![a.id, b.id];
    want.sort();
    assert_eq!(open, want, "a has a queued task, b an active one, c only an ended one");
    assert_eq!(ctx.store.busy_workspaces(w.org.id).await.unwrap(), vec![b.id], "only a delivered task makes busy");
    let stranger = world(&ctx, "other").await;
    assert!(ctx.store.busy_workspaces(stranger.org.id).await.unwrap().is_empty());
    assert_eq!(ctx.store.count_tasks(c.id, TaskStatus::Cancelled).await.unwrap(), 1);
    assert_eq!(ctx.store.count_tasks(c.id, TaskStatus::Completed).await.unwrap(), 0);
    assert!(ctx.store.open_tasks(c.id).await.unwrap().is_empty());
}

async fn ended_tasks_need_completed_at(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = live_workspace(&ctx, &w, WorkspaceStatus::Idle).await;
    let t = task(&ws, "x");
    ctx.store.insert_task(&t, &[]).await.unwrap();
    // The schema refuses an end without its time (duration_seconds is computed from it).
    assert!(ctx.store.update_task(t.id, TaskStatus::Submitted, &moved(TaskStatus::Failed), &[]).await.is_err());
    let got = ctx.store.get_task(w.org.id, ws.id, t.id).await.unwrap().unwrap();
    assert_eq!(got.status, TaskStatus::Submitted);
}
