//! Per-task egress capability tokens: granted only while the task is open and only for the task's own workspace,
//! renewed in place, looked up by (workspace, pod) only while the task is open, replacing a stale token of another
//! task, and deleted when the task ends.

use evershell_core::ids::{PodId, TaskId};
use evershell_core::model::{TaskOptions, TaskRecord};
use evershell_core::task::TaskStatus;
use evershell_store::{TaskCapability, TaskUpdate};

use crate::*;

store_tests!(task_capabilities_follow_the_task);

fn task(ws: &WorkspaceRecord) -> TaskRecord {
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
        created_at: ts(2_000),
        delivered_at: None,
        started_at: None,
        completed_at: None,
        result: None,
    }
}

fn cap(t: &TaskRecord, pod: PodId, token: &str, exp: i64) -> TaskCapability {
    TaskCapability {
        task_id: t.id,
        workspace_id: t.workspace_id,
        pod_id: pod,
        capability: token.into(),
        expires_at: ts(exp),
    }
}

fn moved(status: TaskStatus, completed: Option<i64>) -> TaskUpdate {
    TaskUpdate {
        status,
        reason: None,
        delivered_at: None,
        started_at: None,
        completed_at: completed.map(ts),
        result: None,
    }
}

async fn task_capabilities_follow_the_task(ctx: Ctx) {
    let s = &ctx.store;
    let w = world(&ctx, "acme").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    s.create_workspace(&ws, &[]).await.unwrap();
    let other_ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    s.create_workspace(&other_ws, &[]).await.unwrap();
    let pod = ws.observed.pod_id.unwrap();
    let t1 = task(&ws);
    s.insert_task(&t1, &[]).await.unwrap();
    assert_eq!(s.task_capability_of_pod(ws.id, pod).await.unwrap(), None);

    // Granted while submitted (before delivery), looked up by the pod it is bound to only.
    assert!(s.set_task_capability(&cap(&t1, pod, "tok-1", 10_000), ts(1)).await.unwrap());
    assert_eq!(s.task_capability_of_pod(ws.id, pod).await.unwrap(), Some((t1.id, ts(10_000))));
    assert_eq!(s.task_capability_of_pod(ws.id, PodId::new()).await.unwrap(), None);
    assert_eq!(s.task_capability_of_pod(other_ws.id, pod).await.unwrap(), None);
    assert_eq!(s.task_capability(t1.id).await.unwrap(), Some(cap(&t1, pod, "tok-1", 10_000)));
    // A task of another workspace cannot be bound here.
    let mut wrong = cap(&t1, pod, "tok-x", 10_000);
    wrong.workspace_id = other_ws.id;
    assert!(!s.set_task_capability(&wrong, ts(1)).await.unwrap());
    assert_eq!(s.task_capability_of_pod(other_ws.id, pod).await.unwrap(), None);

    // Renewed in place while running.
    assert!(s.update_task(t1.id, TaskStatus::Submitted, &moved(TaskStatus::Running, None), &[]).await.unwrap());
    assert!(s.set_task_capability(&cap(&t1, pod, "tok-2", 20_000), ts(2)).await.unwrap());
    assert_eq!(s.task_capability(t1.id).await.unwrap(), Some(cap(&t1, pod, "tok-2", 20_000)));
    assert_eq!(s.task_capability_of_pod(ws.id, pod).await.unwrap(), Some((t1.id, ts(20_000))));

    // The task ends without its token being revoked (a crash): the lookup no longer finds it, and it cannot be
    // renewed.
    assert!(s.update_task(t1.id, TaskStatus::Running, &moved(TaskStatus::Completed, Some(3_000)), &[]).await.unwrap());
    assert_eq!(s.task_capability_of_pod(ws.id, pod).await.unwrap(), None);
    assert!(!s.set_task_capability(&cap(&t1, pod, "tok-3", 30_000), ts(3)).await.unwrap());

    // The next task's grant drops the stale token; its revoke leaves nothing.
    let t2 = task(&ws);
    s.insert_task(&t2, &[]).await.unwrap();
    assert!(s.set_task_capability(&cap(&t2, pod, "tok-4", 40_000), ts(4)).await.unwrap());
    assert_eq!(s.task_capability(t1.id).await.unwrap(), None);
    assert_eq!(s.task_capability_of_pod(ws.id, pod).await.unwrap(), Some((t2.id, ts(40_000))));
    s.revoke_task_capability(t2.id).await.unwrap();
    s.revoke_task_capability(t2.id).await.unwrap();
    assert_eq!(s.task_capability(t2.id).await.unwrap(), None);
    assert_eq!(s.task_capability_of_pod(ws.id, pod).await.unwrap(), None);
}
