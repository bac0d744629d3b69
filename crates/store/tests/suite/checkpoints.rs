//! Checkpoints (commit with their snapshot, pruning, what a stop and the collection of replaced snapshots leave
//! alone) and forks (created with their origin, refused once the checkpoint is pruned).

use evershell_core::ErrorCode;
use evershell_core::ids::WorkspaceId;
use evershell_core::lifecycle::WorkspaceStatus;
use evershell_core::model::{CheckpointRecord, ForkOrigin, SnapshotState};
use evershell_store::WorkspaceQuota;

use crate::workspaces::snapshot;
use crate::{Ctx, code, ts, workspace, world};

store_tests!(
    checkpoints_commit_with_their_snapshot_and_only_once,
    pruning_frees_only_snapshots_nothing_needs,
    forks_carry_their_origin_and_need_the_checkpoint,
);

fn cp(ws: WorkspaceId, n: i64, snap: Option<&evershell_core::model::SnapshotRecord>) -> CheckpointRecord {
    CheckpointRecord {
        workspace_id: ws,
        task_count: n,
        task_id: None,
        snapshot_id: snap.map(|s| s.id),
        error: snap.is_none().then(|| "capture failed".to_string()),
        created_at: ts(5_000 + n),
    }
}

async fn checkpoints_commit_with_their_snapshot_and_only_once(ctx: Ctx) {
    let w = world(&ctx, "cp").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    let mut s1 = snapshot(&ws, SnapshotState::Pending, 1_000);
    ctx.store.insert_snapshot(&s1).await.unwrap();
    s1.sha256 = Some("ab".repeat(32));
    s1.size_bytes = Some(10);
    s1.file_count = Some(2);
    assert!(ctx.store.commit_checkpoint(&cp(ws.id, 1, Some(&s1)), Some(&s1), &[]).await.unwrap());
    let got = ctx.store.get_snapshot(s1.id).await.unwrap().unwrap();
    assert_eq!(got.state, SnapshotState::Verified);
    assert_eq!(got.file_count, Some(2));
    // A second checkpoint at the same count is refused, and its snapshot stays pending (the caller discards it).
    let mut s1b = snapshot(&ws, SnapshotState::Pending, 1_001);
    ctx.store.insert_snapshot(&s1b).await.unwrap();
    s1b.sha256 = s1.sha256.clone();
    s1b.size_bytes = Some(10);
    s1b.file_count = Some(2);
    assert!(!ctx.store.commit_checkpoint(&cp(ws.id, 1, Some(&s1b)), Some(&s1b), &[]).await.unwrap());
    assert_eq!(ctx.store.get_snapshot(s1b.id).await.unwrap().unwrap().state, SnapshotState::Pending);
    // A pending row that is gone (a stop discarded it) writes nothing.
    let gone = snapshot(&ws, SnapshotState::Pending, 1_002);
    assert!(!ctx.store.commit_checkpoint(&cp(ws.id, 2, Some(&gone)), Some(&gone), &[]).await.unwrap());
    assert!(ctx.store.get_checkpoint(ws.id, 2).await.unwrap().is_none());
    // A failed capture is recorded with its reason.
    assert!(ctx.store.commit_checkpoint(&cp(ws.id, 2, None), None, &[]).await.unwrap());
    let all = ctx.store.list_checkpoints(ws.id).await.unwrap();
    assert_eq!(all.iter().map(|c| c.task_count).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(all[0].snapshot_id, Some(s1.id));
    assert_eq!(all[1].error.as_deref(), Some("capture failed"));
    // Checkpoint snapshots are neither "replaced" snapshots nor deletable while held.
    let superseded = ctx.store.list_superseded_snapshots().await.unwrap();
    assert!(!superseded.iter().any(|s| s.id == s1.id));
    assert_eq!(ctx.store.fork_kept_snapshots(ws.id).await.unwrap(), vec![s1.id]);
    assert!(ctx.store.delete_snapshot(s1.id, &[]).await.is_err(), "a held snapshot row cannot go");
    assert_eq!(ctx.store.completed_task_count(ws.id).await.unwrap(), 0);
}

async fn pruning_frees_only_snapshots_nothing_needs(ctx: Ctx) {
    let w = world(&ctx, "prune").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    let mut snaps = Vec::new();
    for n in 1..=3 {
        let mut s = snapshot(&ws, SnapshotState::Pending, 1_000 + n);
        ctx.store.insert_snapshot(&s).await.unwrap();
        s.sha256 = Some("cd".repeat(32));
        s.size_bytes = Some(1);
        s.file_count = Some(1);
        assert!(ctx.store.commit_checkpoint(&cp(ws.id, n, Some(&s)), Some(&s), &[]).await.unwrap());
        snaps.push(s);
    }
    // A fork restores checkpoint 1: pruning removes the row but does not free the snapshot.
    let child = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    let origin =
        ForkOrigin { parent_workspace_id: ws.id, source_snapshot_id: Some(snaps[0].id), fork_point_task_count: 1 };
    ctx.store.create_fork(&child, &origin, Some(1), &WorkspaceQuota::default(), &[]).await.unwrap();
    let free = ctx.store.prune_checkpoints(ws.id, Some(3), &[]).await.unwrap();
    assert_eq!(free.iter().map(|s| s.id).collect::<Vec<_>>(), vec![snaps[1].id]);
    let left = ctx.store.list_checkpoints(ws.id).await.unwrap();
    assert_eq!(left.iter().map(|c| c.task_count).collect::<Vec<_>>(), vec![3]);
    // The fork's source stays kept (and is no "replaced" snapshot); the freed one is.
    assert!(ctx.store.fork_kept_snapshots(ws.id).await.unwrap().contains(&snaps[0].id));
    let superseded: Vec<_> = ctx.store.list_superseded_snapshots().await.unwrap().into_iter().map(|s| s.id).collect();
    assert!(superseded.contains(&snaps[1].id));
    assert!(!superseded.contains(&snaps[0].id) && !superseded.contains(&snaps[2].id));
    // Pruning everything (the workspace going away) frees the rest.
    let free = ctx.store.prune_checkpoints(ws.id, None, &[]).await.unwrap();
    assert_eq!(free.iter().map(|s| s.id).collect::<Vec<_>>(), vec![snaps[2].id]);
    assert!(ctx.store.list_checkpoints(ws.id).await.unwrap().is_empty());
}

async fn forks_carry_their_origin_and_need_the_checkpoint(ctx: Ctx) {
    let w = world(&ctx, "fork").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    let mut s = snapshot(&ws, SnapshotState::Pending, 1_000);
    ctx.store.insert_snapshot(&s).await.unwrap();
    s.sha256 = Some("ef".repeat(32));
    s.size_bytes = Some(1);
    s.file_count = Some(1);
    assert!(ctx.store.commit_checkpoint(&cp(ws.id, 1, Some(&s)), Some(&s), &[]).await.unwrap());
    let at0 = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    let empty = ForkOrigin { parent_workspace_id: ws.id, source_snapshot_id: None, fork_point_task_count: 0 };
    ctx.store.create_fork(&at0, &empty, None, &WorkspaceQuota::default(), &[]).await.unwrap();
    let at1 = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    let one = ForkOrigin { parent_workspace_id: ws.id, source_snapshot_id: Some(s.id), fork_point_task_count: 1 };
    ctx.store.create_fork(&at1, &one, Some(1), &WorkspaceQuota::default(), &[]).await.unwrap();
    let mut got = ctx.store.get_fork_origins(&[ws.id, at0.id, at1.id]).await.unwrap();
    got.sort_by_key(|(id, _)| *id);
    let mut want = vec![(at0.id, empty), (at1.id, one)];
    want.sort_by_key(|(id, _)| *id);
    assert_eq!(got, want);
    // Once the checkpoint is pruned, a fork from it is refused and nothing is written.
    ctx.store.prune_checkpoints(ws.id, Some(2), &[]).await.unwrap();
    let late = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    let r = ctx.store.create_fork(&late, &one, Some(1), &WorkspaceQuota::default(), &[]).await;
    assert_eq!(code(r), ErrorCode::SnapshotMissing);
    assert!(ctx.store.get_workspace_by_id(late.id).await.unwrap().is_none());
}
