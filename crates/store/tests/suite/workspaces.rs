//! Workspaces (parent guards, listing, the generation guard, the reconciler's scans and leases) and snapshots.

use evershell_core::ids::{PackId, SnapshotId};
use evershell_core::model::{SnapshotRecord, SnapshotState};
use evershell_store::{WorkspaceFilter, WorkspaceQuota};

use crate::*;

store_tests!(
    workspace_round_trip,
    create_workspace_checks_its_parents,
    list_workspaces_newest_first_with_filters,
    generation_guard,
    reconcile_scans,
    leases,
    snapshots_pending_and_listed,
    commit_snapshot_is_all_or_nothing,
    superseded_snapshots_are_the_verified_ones_nothing_points_at,
    list_workspaces_pages_by_id_and_snapshots_come_in_one_batch,
    quotas_count_live_workspaces_in_the_create,
);

async fn list_workspaces_pages_by_id_and_snapshots_come_in_one_batch(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let mut made = Vec::new();
    for _ in 0..5 {
        let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopped);
        ctx.store.create_workspace(&ws, &[]).await.unwrap();
        made.push(ws.id);
    }
    made.reverse(); // newest first
    let mut seen = Vec::new();
    let mut f = WorkspaceFilter { limit: Some(2), ..Default::default() };
    loop {
        let page = ctx.store.list_workspaces(w.org.id, &f).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        f.before = page.last().map(|ws| ws.id);
        seen.extend(page.into_iter().map(|ws| ws.id));
    }
    assert_eq!(seen, made);
    // Snapshots by id in one call; unknown ids are skipped.
    let a = ctx.store.get_workspace(w.org.id, made[0]).await.unwrap().unwrap();
    let snaps: Vec<SnapshotRecord> = (0..3).map(|i| snapshot(&a, SnapshotState::Verified, 1_000 + i)).collect();
    for sn in &snaps {
        ctx.store.insert_snapshot(sn).await.unwrap();
    }
    let mut ids: Vec<SnapshotId> = snaps.iter().map(|s| s.id).collect();
    ids.push(SnapshotId::new());
    let mut got = ctx.store.get_snapshots(&ids).await.unwrap();
    got.sort_by_key(|s| s.id);
    let mut want = snaps.clone();
    want.sort_by_key(|s| s.id);
    assert_eq!(got, want);
    assert!(ctx.store.get_snapshots(&[]).await.unwrap().is_empty());
}

async fn quotas_count_live_workspaces_in_the_create(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let quota = WorkspaceQuota { per_org: Some(3), per_role: None, per_user: Some(1) };
    let user = UserId::new();
    let mut mine = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    mine.created_by_user_id = Some(user);
    ctx.store.create_workspace_within(&mine, &quota, &[]).await.unwrap();
    let mut again = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    again.created_by_user_id = Some(user);
    let e = ctx.store.create_workspace_within(&again, &quota, &[]).await.unwrap_err();
    assert_eq!(
        (e.code, e.details.clone().unwrap()["quota"].clone()),
        (ErrorCode::QuotaExceeded, "workspaces_per_user".into())
    );
    // Archived workspaces do not count; concurrent creates cannot overshoot the org limit.
    let mut archived = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopped);
    archived.archived_at = Some(ts(5));
    ctx.store.create_workspace(&archived, &[]).await.unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = ctx.store.clone();
            let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
            tokio::spawn(async move { store.create_workspace_within(&ws, &quota, &[]).await.is_ok() })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    assert_eq!(ok, 2, "3 live allowed, 1 existed");
    let live = ctx.store.list_workspaces(w.org.id, &WorkspaceFilter::default()).await.unwrap();
    assert_eq!(live.len(), 3);
    // Unarchiving counts like a create; the refused write changes nothing.
    let mut back = archived.clone();
    back.archived_at = None;
    let e = ctx.store.update_workspace_within(&back, archived.generation, &quota, &[]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    assert!(ctx.store.get_workspace(w.org.id, archived.id).await.unwrap().unwrap().archived_at.is_some());
    let roomy = WorkspaceQuota { per_org: Some(4), ..quota };
    assert!(ctx.store.update_workspace_within(&back, archived.generation, &roomy, &[]).await.unwrap());
}

async fn workspace_round_trip(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let mut ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    ws.environment = Some("staging".into());
    ws.created_by_user_id = Some(UserId::new());
    ws.pod_pack_ids = Some(vec![PackId::new()]);
    ws.last_error = Some("earlier".into());
    ctx.store.create_workspace(&ws, &[event(w.org.id, EventType::WorkspaceCreated).workspace(ws.id)]).await.unwrap();
    assert_eq!(ctx.store.get_workspace(w.org.id, ws.id).await.unwrap(), Some(ws.clone()));
    assert_eq!(ctx.store.get_workspace_by_id(ws.id).await.unwrap(), Some(ws.clone()));
    assert_eq!(ctx.store.get_workspace(OrgId::new(), ws.id).await.unwrap(), None);
    assert_eq!(ctx.store.get_workspace_by_id(WorkspaceId::new()).await.unwrap(), None);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::WorkspaceCreated).await, 1);
}

async fn create_workspace_checks_its_parents(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let other = org("other");
    ctx.store.create_org(&other, &[]).await.unwrap();
    let err = ctx.store.create_workspace(&workspace(w.org.id, RoleId::new(), WorkspaceStatus::Provisioning), &[]).await;
    assert_eq!(code(err), ErrorCode::RoleNotFound);
    let err = ctx.store.create_workspace(&workspace(other.id, w.role.id, WorkspaceStatus::Provisioning), &[]).await;
    assert_eq!(code(err), ErrorCode::RoleNotFound);

    // A live role under an archived provider (only reachable by editing the rows directly).
    ctx.raw(format!("UPDATE providers SET archived_at = 5 WHERE id = '{}'", w.provider.id)).await.unwrap();
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    let err = ctx.store.create_workspace(&ws, &[event(w.org.id, EventType::WorkspaceCreated)]).await;
    assert_eq!(code(err), ErrorCode::ProviderArchived);

    ctx.raw(format!("UPDATE providers SET archived_at = NULL WHERE id = '{}'", w.provider.id)).await.unwrap();
    ctx.store.archive_role(w.org.id, w.role.id, ts(2_000), &[]).await.unwrap();
    let err = ctx.store.create_workspace(&ws, &[event(w.org.id, EventType::WorkspaceCreated)]).await;
    assert_eq!(code(err), ErrorCode::RoleArchived);
    assert_eq!(ctx.store.get_workspace_by_id(ws.id).await.unwrap(), None);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::WorkspaceCreated).await, 0);
}

async fn list_workspaces_newest_first_with_filters(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let other_role = role(w.org.id, w.provider.id, "other");
    ctx.store.create_role(&other_role, &[]).await.unwrap();
    let ada = UserId::new();
    let mut a = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    a.created_by_user_id = Some(ada);
    let b = workspace(w.org.id, other_role.id, WorkspaceStatus::Stopped);
    let mut c = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopped);
    c.archived_at = Some(ts(2_000));
    c.created_by_user_id = Some(ada);
    for ws in [&a, &b, &c] {
        ctx.store.create_workspace(ws, &[]).await.unwrap();
    }
    // Another org's workspace never shows.
    let elsewhere = world(&ctx, "elsewhere").await;
    ctx.store
        .create_workspace(&workspace(elsewhere.org.id, elsewhere.role.id, WorkspaceStatus::Idle), &[])
        .await
        .unwrap();

    let ids = |v: Vec<WorkspaceRecord>| v.into_iter().map(|w| w.id).collect::<Vec<_>>();
    let list = |f: WorkspaceFilter| {
        let store = ctx.store.clone();
        let org = w.org.id;
        async move { ids(store.list_workspaces(org, &f).await.unwrap()) }
    };
    assert_eq!(list(WorkspaceFilter::default()).await, vec![b.id, a.id]);
    assert_eq!(list(WorkspaceFilter { include_archived: true, ..Default::default() }).await, vec![c.id, b.id, a.id]);
    assert_eq!(list(WorkspaceFilter { role_id: Some(other_role.id), ..Default::default() }).await, vec![b.id]);
    let stopped =
        WorkspaceFilter { status: Some(WorkspaceStatus::Stopped), include_archived: true, ..Default::default() };
    assert_eq!(list(stopped).await, vec![c.id, b.id]);
    let mine = WorkspaceFilter { created_by: Some(ada), include_archived: true, ..Default::default() };
    assert_eq!(list(mine).await, vec![c.id, a.id]);
    let none = WorkspaceFilter { created_by: Some(UserId::new()), ..Default::default() };
    assert!(list(none).await.is_empty());
}

async fn generation_guard(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();

    let mut next = ws.clone();
    next.status = WorkspaceStatus::Idle;
    next.status_reason = Some(StatusReason::Ready);
    next.pod_pack_ids = Some(vec![PackId::new()]);
    next.snapshot_id = Some(SnapshotId::new());
    next.last_snapshot_error = Some("once".into());
    next.environment = Some("prod".into());
    next.updated_at = ts(2_000);
    assert!(ctx.store.update_workspace(&next, 0, &[event(w.org.id, EventType::WorkspaceReady)]).await.unwrap());
    let stored = ctx.store.get_workspace(w.org.id, ws.id).await.unwrap().unwrap();
    assert_eq!(stored, WorkspaceRecord { generation: 1, ..next.clone() });

    // A writer that read generation 0 loses, changes nothing and audits nothing.
    let mut stale = ws.clone();
    stale.status = WorkspaceStatus::Failed;
    assert!(!ctx.store.update_workspace(&stale, 0, &[event(w.org.id, EventType::WorkspaceFailed)]).await.unwrap());
    assert_eq!(ctx.store.get_workspace(w.org.id, ws.id).await.unwrap().unwrap(), stored);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::WorkspaceFailed).await, 0);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::WorkspaceReady).await, 1);

    let mut ghost = ws.clone();
    ghost.id = WorkspaceId::new();
    assert!(!ctx.store.update_workspace(&ghost, 0, &[]).await.unwrap());
}

async fn reconcile_scans(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let prov = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    let idle = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    let stopping = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopping);
    let stopped = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopped);
    let mut failed_with_pod = workspace(w.org.id, w.role.id, WorkspaceStatus::Failed);
    failed_with_pod.pod_id = Some(PodId::new());
    let mut stopping_no_pod = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopping);
    stopping_no_pod.pod_id = None;
    for ws in [&prov, &idle, &stopping, &stopped, &failed_with_pod, &stopping_no_pod] {
        ctx.store.create_workspace(ws, &[]).await.unwrap();
    }
    let mut want = vec![prov.id, idle.id, stopping.id, failed_with_pod.id, stopping_no_pod.id];
    want.sort();
    let mut got = ctx.store.workspaces_to_reconcile().await.unwrap();
    got.sort();
    assert_eq!(got, want);

    let mut pods: Vec<_> = [&prov, &idle, &stopping, &failed_with_pod].iter().map(|w| w.pod_id.unwrap()).collect();
    pods.sort();
    let mut owned = ctx.store.owned_pod_ids().await.unwrap();
    owned.sort();
    assert_eq!(owned, pods);
}

async fn leases(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    let s = &ctx.store;

    assert!(s.claim_workspace(ws.id, "a", ts(100), ts(200)).await.unwrap());
    assert!(!s.claim_workspace(ws.id, "b", ts(150), ts(300)).await.unwrap());
    // The holder extends its own lease.
    assert!(s.claim_workspace(ws.id, "a", ts(190), ts(400)).await.unwrap());
    assert!(!s.claim_workspace(ws.id, "b", ts(399), ts(500)).await.unwrap());
    // An expired lease is up for grabs.
    assert!(s.claim_workspace(ws.id, "b", ts(401), ts(500)).await.unwrap());
    assert!(!s.claim_workspace(ws.id, "a", ts(402), ts(600)).await.unwrap());
    // Only the holder can release.
    s.release_workspace(ws.id, "a").await.unwrap();
    assert!(!s.claim_workspace(ws.id, "a", ts(403), ts(600)).await.unwrap());
    s.release_workspace(ws.id, "b").await.unwrap();
    assert!(s.claim_workspace(ws.id, "a", ts(404), ts(600)).await.unwrap());
    s.clear_leases().await.unwrap();
    assert!(s.claim_workspace(ws.id, "c", ts(405), ts(600)).await.unwrap());
    assert!(!s.claim_workspace(WorkspaceId::new(), "c", ts(405), ts(600)).await.unwrap());
    // Leases do not move the generation.
    assert_eq!(s.get_workspace_by_id(ws.id).await.unwrap().unwrap().generation, 0);
}

pub fn snapshot(ws: &WorkspaceRecord, state: SnapshotState, at: i64) -> SnapshotRecord {
    let id = SnapshotId::new();
    let verified = state == SnapshotState::Verified;
    SnapshotRecord {
        id,
        org_id: ws.org_id,
        workspace_id: ws.id,
        pod_id: ws.pod_id,
        state,
        archive_key: format!("orgs/{}/workspaces/{}/snapshots/{id}.tar.zst", ws.org_id, ws.id),
        manifest_key: format!("orgs/{}/workspaces/{}/snapshots/{id}.manifest.json", ws.org_id, ws.id),
        sha256: verified.then(|| "ab".repeat(32)),
        size_bytes: verified.then_some(1234),
        file_count: verified.then_some(7),
        created_at: ts(at),
    }
}

async fn snapshots_pending_and_listed(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let a = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopping);
    let b = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopping);
    ctx.store.create_workspace(&a, &[]).await.unwrap();
    ctx.store.create_workspace(&b, &[]).await.unwrap();
    let a2 = snapshot(&a, SnapshotState::Pending, 2_000);
    let a1 = snapshot(&a, SnapshotState::Verified, 1_000);
    let b1 = snapshot(&b, SnapshotState::Pending, 1_500);
    for s in [&a2, &a1, &b1] {
        ctx.store.insert_snapshot(s).await.unwrap();
    }
    assert_eq!(ctx.store.get_snapshot(a1.id).await.unwrap(), Some(a1.clone()));
    assert_eq!(ctx.store.get_snapshot(SnapshotId::new()).await.unwrap(), None);
    assert_eq!(ctx.store.list_snapshots(a.id).await.unwrap(), vec![a1.clone(), a2.clone()]);
    assert_eq!(ctx.store.list_pending_snapshots().await.unwrap(), vec![b1.clone(), a2.clone()]);

    // A verified snapshot must carry its manifest facts (CHECK constraint).
    let mut bad = snapshot(&a, SnapshotState::Verified, 3_000);
    bad.sha256 = None;
    assert_eq!(code(ctx.store.insert_snapshot(&bad).await), ErrorCode::Internal);

    ctx.store.delete_snapshot(a2.id, &[event(w.org.id, EventType::SnapshotDeleted).workspace(a.id)]).await.unwrap();
    assert_eq!(ctx.store.list_snapshots(a.id).await.unwrap(), vec![a1]);
    assert_eq!(ctx.store.list_pending_snapshots().await.unwrap(), vec![b1]);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::SnapshotDeleted).await, 1);
}

async fn commit_snapshot_is_all_or_nothing(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopping);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    let pending = snapshot(&ws, SnapshotState::Pending, 2_000);
    ctx.store.insert_snapshot(&pending).await.unwrap();

    // The writer verified the archive: the record now carries its facts (state is forced to verified).
    let done =
        SnapshotRecord { sha256: Some("cd".repeat(32)), size_bytes: Some(99), file_count: Some(3), ..pending.clone() };
    let mut stopped = ws.clone();
    stopped.status = WorkspaceStatus::Stopped;
    stopped.pod_id = None;
    stopped.snapshot_id = Some(done.id);

    // Someone else moved the workspace first: nothing is written.
    let bump = WorkspaceRecord { last_error: Some("raced".into()), ..ws.clone() };
    assert!(ctx.store.update_workspace(&bump, 0, &[]).await.unwrap());
    let ok = ctx.store.commit_snapshot(&done, &stopped, 0, &[event(w.org.id, EventType::SnapshotSaved)]).await.unwrap();
    assert!(!ok);
    assert_eq!(ctx.store.get_snapshot(pending.id).await.unwrap(), Some(pending.clone()));
    assert_eq!(ctx.store.get_workspace_by_id(ws.id).await.unwrap().unwrap().snapshot_id, None);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::SnapshotSaved).await, 0);

    assert!(ctx.store.commit_snapshot(&done, &stopped, 1, &[event(w.org.id, EventType::SnapshotSaved)]).await.unwrap());
    let snap = ctx.store.get_snapshot(pending.id).await.unwrap().unwrap();
    assert_eq!(snap, SnapshotRecord { state: SnapshotState::Verified, ..done.clone() });
    let stored = ctx.store.get_workspace_by_id(ws.id).await.unwrap().unwrap();
    assert_eq!((stored.snapshot_id, stored.generation, stored.status), (Some(done.id), 2, WorkspaceStatus::Stopped));
    assert!(ctx.store.list_pending_snapshots().await.unwrap().is_empty());
    assert_eq!(audit_count(&ctx, w.org.id, EventType::SnapshotSaved).await, 1);

    // A snapshot never inserted as pending is inserted by the commit.
    let direct = snapshot(&ws, SnapshotState::Verified, 3_000);
    let pointed = WorkspaceRecord { snapshot_id: Some(direct.id), ..stored.clone() };
    assert!(ctx.store.commit_snapshot(&direct, &pointed, 2, &[]).await.unwrap());
    assert_eq!(ctx.store.get_snapshot(direct.id).await.unwrap(), Some(direct));
}

async fn superseded_snapshots_are_the_verified_ones_nothing_points_at(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopping);
    let other = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopping);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    ctx.store.create_workspace(&other, &[]).await.unwrap();
    assert!(ctx.store.list_superseded_snapshots().await.unwrap().is_empty());
    // `ws`: a first snapshot, then a second one replacing it; a pending one besides (not superseded: being written).
    let first = snapshot(&ws, SnapshotState::Verified, 1_000);
    let at_first = WorkspaceRecord { snapshot_id: Some(first.id), ..ws.clone() };
    assert!(ctx.store.commit_snapshot(&first, &at_first, 0, &[]).await.unwrap());
    let second = snapshot(&ws, SnapshotState::Verified, 2_000);
    let at_second = WorkspaceRecord { snapshot_id: Some(second.id), generation: 1, ..ws.clone() };
    assert!(ctx.store.commit_snapshot(&second, &at_second, 1, &[]).await.unwrap());
    ctx.store.insert_snapshot(&snapshot(&ws, SnapshotState::Pending, 3_000)).await.unwrap();
    // `other`: its only snapshot is current.
    let current = snapshot(&other, SnapshotState::Verified, 1_500);
    let at_current = WorkspaceRecord { snapshot_id: Some(current.id), ..other.clone() };
    assert!(ctx.store.commit_snapshot(&current, &at_current, 0, &[]).await.unwrap());
    assert_eq!(ctx.store.list_superseded_snapshots().await.unwrap(), vec![first.clone()]);
    ctx.store.delete_snapshot(first.id, &[]).await.unwrap();
    assert!(ctx.store.list_superseded_snapshots().await.unwrap().is_empty());
}
