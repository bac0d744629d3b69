//! Workspaces (parent guards, listing, the generation guard, the reconciler's scans and leases) and snapshots.

use evershell_core::ids::{PackId, SnapshotId};
use evershell_core::model::{SnapshotRecord, SnapshotState};
use evershell_store::{WorkspaceFilter, WorkspaceQuota};

use crate::*;

store_tests!(
    workspace_round_trip,
    create_workspace_checks_its_parents,
    list_workspaces_newest_first_with_filters,
    intent_and_observation_writes_are_narrow,
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
    let e = ctx.store.update_intent(&back, 0, 0, &quota, &[]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    assert!(ctx.store.get_workspace(w.org.id, archived.id).await.unwrap().unwrap().archived_at.is_some());
    let roomy = WorkspaceQuota { per_org: Some(4), ..quota };
    assert!(ctx.store.update_intent(&back, 0, 0, &roomy, &[]).await.unwrap());
}

async fn workspace_round_trip(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let mut ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    ws.environment = Some("staging".into());
    ws.created_by_user_id = Some(UserId::new());
    ws.observed.pod_pack_ids = Some(vec![PackId::new()]);
    ws.observed.last_error = Some("earlier".into());
    ws.observed.adopted = 1;
    ws.intent.request = Some(Request { seq: 1, status: WorkspaceStatus::Provisioning, reason: StatusReason::Created });
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
    // Observed stopped with a resume the reconciler has not taken on: listed as provisioning.
    let mut d = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopped);
    d.intent.request =
        Some(Request { seq: 2, status: WorkspaceStatus::Provisioning, reason: StatusReason::ResumeRequested });
    d.observed.adopted = 1;
    c.archived_at = Some(ts(2_000));
    c.created_by_user_id = Some(ada);
    for ws in [&a, &b, &c, &d] {
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
    assert_eq!(list(WorkspaceFilter::default()).await, vec![d.id, b.id, a.id]);
    assert_eq!(
        list(WorkspaceFilter { include_archived: true, ..Default::default() }).await,
        vec![d.id, c.id, b.id, a.id]
    );
    let provisioning = WorkspaceFilter { status: Some(WorkspaceStatus::Provisioning), ..Default::default() };
    assert_eq!(list(provisioning).await, vec![d.id]);
    assert_eq!(list(WorkspaceFilter { role_id: Some(other_role.id), ..Default::default() }).await, vec![b.id]);
    let stopped =
        WorkspaceFilter { status: Some(WorkspaceStatus::Stopped), include_archived: true, ..Default::default() };
    assert_eq!(list(stopped).await, vec![c.id, b.id]);
    let mine = WorkspaceFilter { created_by: Some(ada), include_archived: true, ..Default::default() };
    assert_eq!(list(mine).await, vec![c.id, a.id]);
    let none = WorkspaceFilter { created_by: Some(UserId::new()), ..Default::default() };
    assert!(list(none).await.is_empty());
}

async fn intent_and_observation_writes_are_narrow(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    let f = fence(&ctx, ws.id).await;

    // The reconciler's write: every observation field; the intent fields it carries are not written.
    let mut next = ws.clone();
    next.observed.status = WorkspaceStatus::Idle;
    next.observed.status_reason = Some(StatusReason::Ready);
    next.observed.pod_pack_ids = Some(vec![PackId::new()]);
    next.observed.snapshot_id = Some(SnapshotId::new());
    next.observed.last_snapshot_error = Some("once".into());
    next.observed.adopted = 3;
    next.updated_at = ts(2_000);
    let mut careless = next.clone();
    careless.environment = Some("prod".into());
    careless.intent.desired = Desired::Stopped;
    let ready = [event(w.org.id, EventType::WorkspaceReady)];
    assert_eq!(ctx.store.record_observation(&careless, 0, &f, &ready).await.unwrap(), ObservationWrite::Written);
    let stored = ctx.store.get_workspace(w.org.id, ws.id).await.unwrap().unwrap();
    next.observed.generation = 1;
    assert_eq!(stored, next);

    // A reconciler that read generation 0 loses, changes nothing and audits nothing.
    let mut stale = ws.clone();
    stale.observed.status = WorkspaceStatus::Failed;
    let failed = [event(w.org.id, EventType::WorkspaceFailed)];
    assert_eq!(ctx.store.record_observation(&stale, 0, &f, &failed).await.unwrap(), ObservationWrite::Stale);
    assert_eq!(ctx.store.get_workspace(w.org.id, ws.id).await.unwrap().unwrap(), stored);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::WorkspaceFailed).await, 0);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::WorkspaceReady).await, 1);

    // The API's write: the intent fields only, whatever observation the record carries.
    let mut asked = ws.clone();
    asked.intent.desired = Desired::Stopped;
    asked.intent.request =
        Some(Request { seq: 4, status: WorkspaceStatus::Stopping, reason: StatusReason::StopRequested });
    asked.environment = Some("prod".into());
    asked.updated_at = ts(3_000);
    asked.observed.status = WorkspaceStatus::Failed;
    // Decided from an observation that has moved since: refused.
    assert!(!ctx.store.update_intent(&asked, 0, 0, &Default::default(), &[]).await.unwrap());
    assert!(ctx.store.update_intent(&asked, 0, 1, &Default::default(), &[]).await.unwrap());
    let both = ctx.store.get_workspace(w.org.id, ws.id).await.unwrap().unwrap();
    assert_eq!(both.observed, stored.observed);
    assert_eq!(both.intent, Intent { generation: 1, ..asked.intent.clone() });
    assert_eq!((both.environment.as_deref(), both.updated_at), (Some("prod"), ts(3_000)));
    assert_eq!(both.public_status(false), (WorkspaceStatus::Stopping, Some(StatusReason::StopRequested)));
    // A stale intent write loses too.
    assert!(!ctx.store.update_intent(&asked, 0, 1, &Default::default(), &[]).await.unwrap());
    // An intent write does not disturb the reconciler's next write, nor the reverse.
    let mut adopted = stored.clone();
    adopted.observed.adopted = 4;
    adopted.observed.status = WorkspaceStatus::Stopping;
    assert_eq!(ctx.store.record_observation(&adopted, 1, &f, &[]).await.unwrap(), ObservationWrite::Written);
    let after = ctx.store.get_workspace(w.org.id, ws.id).await.unwrap().unwrap();
    assert_eq!(after.intent, both.intent);
    assert_eq!(after.public_status(false), (WorkspaceStatus::Stopping, Some(StatusReason::Ready)));

    let mut ghost = ws.clone();
    ghost.id = WorkspaceId::new();
    assert_eq!(ctx.store.record_observation(&ghost, 0, &f, &[]).await.unwrap(), ObservationWrite::Fenced);
    assert!(!ctx.store.update_intent(&ghost, 0, 0, &Default::default(), &[]).await.unwrap());
}

async fn reconcile_scans(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let prov = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    let idle = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    let stopping = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopping);
    let stopped = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopped);
    let mut failed_with_pod = workspace(w.org.id, w.role.id, WorkspaceStatus::Failed);
    failed_with_pod.observed.pod_id = Some(PodId::new());
    let mut stopping_no_pod = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopping);
    stopping_no_pod.observed.pod_id = None;
    let mut resume_asked = workspace(w.org.id, w.role.id, WorkspaceStatus::Stopped);
    resume_asked.intent.request =
        Some(Request { seq: 1, status: WorkspaceStatus::Provisioning, reason: StatusReason::ResumeRequested });
    for ws in [&prov, &idle, &stopping, &stopped, &failed_with_pod, &stopping_no_pod, &resume_asked] {
        ctx.store.create_workspace(ws, &[]).await.unwrap();
    }
    let mut want = vec![prov.id, idle.id, stopping.id, failed_with_pod.id, stopping_no_pod.id, resume_asked.id];
    want.sort();
    let mut got = ctx.store.workspaces_to_reconcile().await.unwrap();
    got.sort();
    assert_eq!(got, want);

    let mut pods: Vec<_> =
        [&prov, &idle, &stopping, &failed_with_pod].iter().map(|w| w.observed.pod_id.unwrap()).collect();
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

    let a = s.claim_workspace(ws.id, "a", ts(100), ts(200)).await.unwrap().expect("free");
    assert_eq!(s.claim_workspace(ws.id, "b", ts(150), ts(300)).await.unwrap(), None);
    // The holder extends its own lease, keeping its fence.
    assert_eq!(s.claim_workspace(ws.id, "a", ts(190), ts(400)).await.unwrap(), Some(a.clone()));
    assert!(s.renew_workspace_lease(ws.id, &a, ts(399)).await.unwrap());
    assert_eq!(s.claim_workspace(ws.id, "b", ts(398), ts(500)).await.unwrap(), None);
    // An expired lease is up for grabs, under a new epoch: the old holder can neither renew nor write.
    let b = s.claim_workspace(ws.id, "b", ts(401), ts(500)).await.unwrap().expect("expired");
    assert!(b.epoch > a.epoch, "{a:?} {b:?}");
    assert_eq!(s.claim_workspace(ws.id, "a", ts(402), ts(600)).await.unwrap(), None);
    assert!(!s.renew_workspace_lease(ws.id, &a, ts(700)).await.unwrap());
    let mut late = ws.clone();
    late.observed.last_error = Some("late".into());
    assert_eq!(s.record_observation(&late, 0, &a, &[]).await.unwrap(), ObservationWrite::Fenced);
    // Only the holder can release.
    s.release_workspace(ws.id, &a).await.unwrap();
    assert_eq!(s.claim_workspace(ws.id, "a", ts(403), ts(600)).await.unwrap(), None);
    s.release_workspace(ws.id, &b).await.unwrap();
    let a2 = s.claim_workspace(ws.id, "a", ts(404), ts(600)).await.unwrap().expect("released");
    assert!(a2.epoch > b.epoch);
    s.clear_leases().await.unwrap();
    assert!(s.claim_workspace(ws.id, "c", ts(405), ts(600)).await.unwrap().is_some());
    assert!(!s.renew_workspace_lease(ws.id, &a2, ts(700)).await.unwrap());
    assert_eq!(s.claim_workspace(WorkspaceId::new(), "c", ts(405), ts(600)).await.unwrap(), None);
    // Leases do not move the generation.
    let stored = s.get_workspace_by_id(ws.id).await.unwrap().unwrap();
    assert_eq!((stored.observed.generation, stored.intent.generation, stored.observed.last_error), (0, 0, None));
}

pub fn snapshot(ws: &WorkspaceRecord, state: SnapshotState, at: i64) -> SnapshotRecord {
    let id = SnapshotId::new();
    let verified = state == SnapshotState::Verified;
    SnapshotRecord {
        id,
        org_id: ws.org_id,
        workspace_id: ws.id,
        pod_id: ws.observed.pod_id,
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
    stopped.observed.status = WorkspaceStatus::Stopped;
    stopped.observed.pod_id = None;
    stopped.observed.snapshot_id = Some(done.id);
    let saved = || [event(w.org.id, EventType::SnapshotSaved)];

    // Someone else moved the workspace first: nothing is written.
    let mut bump = WorkspaceRecord { ..ws.clone() };
    bump.observed.last_error = Some("raced".into());
    observe(&ctx, &mut bump).await;
    let f = fence(&ctx, ws.id).await;
    let outcome = ctx.store.commit_snapshot(&done, &stopped, 0, &f, &saved()).await.unwrap();
    assert_eq!(outcome, ObservationWrite::Stale);
    assert_eq!(ctx.store.get_snapshot(pending.id).await.unwrap(), Some(pending.clone()));
    assert_eq!(ctx.store.get_workspace_by_id(ws.id).await.unwrap().unwrap().observed.snapshot_id, None);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::SnapshotSaved).await, 0);
    // A writer without the lease writes nothing either.
    let other = Fence { owner: "someone-else".into(), epoch: f.epoch };
    let outcome = ctx.store.commit_snapshot(&done, &stopped, 1, &other, &saved()).await.unwrap();
    assert_eq!(outcome, ObservationWrite::Fenced);
    assert_eq!(ctx.store.get_snapshot(pending.id).await.unwrap(), Some(pending.clone()));

    let outcome = ctx.store.commit_snapshot(&done, &stopped, 1, &f, &saved()).await.unwrap();
    assert_eq!(outcome, ObservationWrite::Written);
    let snap = ctx.store.get_snapshot(pending.id).await.unwrap().unwrap();
    assert_eq!(snap, SnapshotRecord { state: SnapshotState::Verified, ..done.clone() });
    let stored = ctx.store.get_workspace_by_id(ws.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.observed.snapshot_id, stored.observed.generation, stored.observed.status),
        (Some(done.id), 2, WorkspaceStatus::Stopped)
    );
    assert!(ctx.store.list_pending_snapshots().await.unwrap().is_empty());
    assert_eq!(audit_count(&ctx, w.org.id, EventType::SnapshotSaved).await, 1);

    // A snapshot never inserted as pending is inserted by the commit.
    let direct = snapshot(&ws, SnapshotState::Verified, 3_000);
    let mut pointed = stored.clone();
    pointed.observed.snapshot_id = Some(direct.id);
    assert_eq!(ctx.store.commit_snapshot(&direct, &pointed, 2, &f, &[]).await.unwrap(), ObservationWrite::Written);
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
    let pointing = |ws: &WorkspaceRecord, s: &SnapshotRecord| {
        let mut at = ws.clone();
        at.observed.snapshot_id = Some(s.id);
        at
    };
    let written = ObservationWrite::Written;
    let f = fence(&ctx, ws.id).await;
    assert_eq!(ctx.store.commit_snapshot(&first, &pointing(&ws, &first), 0, &f, &[]).await.unwrap(), written);
    let second = snapshot(&ws, SnapshotState::Verified, 2_000);
    assert_eq!(ctx.store.commit_snapshot(&second, &pointing(&ws, &second), 1, &f, &[]).await.unwrap(), written);
    ctx.store.insert_snapshot(&snapshot(&ws, SnapshotState::Pending, 3_000)).await.unwrap();
    // `other`: its only snapshot is current.
    let current = snapshot(&other, SnapshotState::Verified, 1_500);
    let f = fence(&ctx, other.id).await;
    assert_eq!(ctx.store.commit_snapshot(&current, &pointing(&other, &current), 0, &f, &[]).await.unwrap(), written);
    assert_eq!(ctx.store.list_superseded_snapshots().await.unwrap(), vec![first.clone()]);
    ctx.store.delete_snapshot(first.id, &[]).await.unwrap();
    assert!(ctx.store.list_superseded_snapshots().await.unwrap().is_empty());
}
