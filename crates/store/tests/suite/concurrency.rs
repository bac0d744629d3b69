//! Races the guards must win (generation, last Owner, archive against create), a second store writing the same
//! database, and what the schema itself refuses (audit rows are immutable, CHECK constraints).

use std::time::Duration;

use evershell_core::Error;
use sqlx::{Connection, Executor};

use crate::*;

store_tests!(
    generation_race_has_one_winner,
    concurrent_demotions_keep_an_owner,
    archive_role_and_create_workspace_cannot_interleave,
    archive_provider_and_create_workspace_cannot_interleave,
    two_stores_write_the_same_database,
    audit_rows_are_immutable,
    check_constraints_reject_bad_values,
);

async fn generation_race_has_one_winner(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = ctx.store.clone();
            let mut next = ws.clone();
            next.environment = Some(format!("writer {i}"));
            let audit = event(w.org.id, EventType::WorkspaceStopRequested);
            tokio::spawn(async move { store.update_intent(&next, 0, 0, &Default::default(), &[audit]).await.unwrap() })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
    assert_eq!(ctx.store.get_workspace_by_id(ws.id).await.unwrap().unwrap().intent.generation, 1);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::WorkspaceStopRequested).await, 1);
    // The same for observation writes under one fence.
    let f = fence(&ctx, ws.id).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = ctx.store.clone();
            let f = f.clone();
            let mut next = ws.clone();
            next.observed.last_error = Some(format!("writer {i}"));
            let audit = event(w.org.id, EventType::WorkspaceFailed);
            tokio::spawn(async move { store.record_observation(&next, 0, &f, &[audit]).await.unwrap() })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        let outcome = t.await.unwrap();
        assert_ne!(outcome, ObservationWrite::Fenced);
        wins += usize::from(outcome == ObservationWrite::Written);
    }
    assert_eq!(wins, 1);
    let stored = ctx.store.get_workspace_by_id(ws.id).await.unwrap().unwrap();
    assert_eq!((stored.observed.generation, stored.intent.generation), (1, 1));
    assert_eq!(audit_count(&ctx, w.org.id, EventType::WorkspaceFailed).await, 1);
}

async fn concurrent_demotions_keep_an_owner(ctx: Ctx) {
    for round in 0..5 {
        let o = org(&format!("acme-{round}"));
        ctx.store.create_org(&o, &[]).await.unwrap();
        let owners: Vec<User> = (0..2).map(|i| user(&format!("owner{i}-{round}@example.com"))).collect();
        for u in &owners {
            let m = membership(&o, u, MemberRole::Owner, MembershipStatus::Active, 1_000);
            ctx.store.create_membership(&m, Some(u), None, &[]).await.unwrap();
        }
        let demote = owners[0].id;
        let remove = owners[1].id;
        let (a, b) = (ctx.store.clone(), ctx.store.clone());
        let t1 =
            tokio::spawn(async move { a.update_membership_role(o.id, demote, MemberRole::Member, ts(2), &[]).await });
        let t2 = tokio::spawn(async move { b.delete_membership(o.id, remove, ts(2), &[]).await });
        let results: Vec<std::result::Result<(), Error>> = vec![t1.await.unwrap().map(drop), t2.await.unwrap()];
        let refused = results.iter().filter(|r| matches!(r, Err(e) if e.code == ErrorCode::LastOwner)).count();
        assert_eq!(refused, 1, "round {round}: {results:?}");
        let active_owners = ctx
            .store
            .list_memberships(o.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.role == MemberRole::Owner && m.status == MembershipStatus::Active)
            .count();
        assert_eq!(active_owners, 1, "round {round}");
    }
}

/// Either the archive happens first (the create sees `RoleArchived`) or the create does (the archive sees an active
/// workspace) — never both.
async fn archive_role_and_create_workspace_cannot_interleave(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    for round in 0..8 {
        let r = role(w.org.id, w.provider.id, &format!("r{round}"));
        ctx.store.create_role(&r, &[]).await.unwrap();
        let ws = workspace(w.org.id, r.id, WorkspaceStatus::Provisioning);
        let (a, b) = (ctx.store.clone(), ctx.store.clone());
        let (org, role_id) = (w.org.id, r.id);
        let archive = tokio::spawn(async move { a.archive_role(org, role_id, ts(2), &[]).await });
        let create = tokio::spawn(async move { b.create_workspace(&ws, &[]).await });
        let (archived, created) = (archive.await.unwrap(), create.await.unwrap());
        match (&archived, &created) {
            (Ok(()), Err(e)) => assert_eq!(e.code, ErrorCode::RoleArchived),
            (Err(e), Ok(())) => assert_eq!(e.code, ErrorCode::WorkspacesActive),
            _ => panic!("round {round}: archive {archived:?}, create {created:?}"),
        }
    }
}

async fn archive_provider_and_create_workspace_cannot_interleave(ctx: Ctx) {
    for round in 0..6 {
        let w = world(&ctx, &format!("acme-{round}")).await;
        let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Provisioning);
        let (a, b) = (ctx.store.clone(), ctx.store.clone());
        let (org, provider) = (w.org.id, w.provider.id);
        let archive = tokio::spawn(async move {
            a.archive_provider(org, provider, ts(2), &[], &|r| event(r.org_id, EventType::AgentRoleArchived)).await
        });
        let create = tokio::spawn(async move { b.create_workspace(&ws, &[]).await });
        let (archived, created) = (archive.await.unwrap(), create.await.unwrap());
        match (&archived, &created) {
            (Ok(1), Err(e)) => assert_eq!(e.code, ErrorCode::RoleArchived),
            (Err(e), Ok(())) => assert_eq!(e.code, ErrorCode::WorkspacesActive),
            _ => panic!("round {round}: archive {archived:?}, create {created:?}"),
        }
    }
}

/// A second store on the same database — for SQLite, what the admin CLI is while the server runs.
async fn two_stores_write_the_same_database(ctx: Ctx) {
    let second = ctx.reopen().await;
    let writer = |store: Arc<dyn Store>, name: &'static str| {
        tokio::spawn(async move {
            for i in 0..25 {
                let o = org(&format!("{name}-{i}"));
                store.create_org(&o, &[event(o.id, EventType::OrgCreated)]).await.unwrap();
            }
        })
    };
    let (a, b) = (writer(ctx.store.clone(), "first"), writer(second.clone(), "second"));
    a.await.unwrap();
    b.await.unwrap();
    for store in [&ctx.store, &second] {
        for name in ["first", "second"] {
            for i in 0..25 {
                assert!(store.get_org_by_slug(&format!("{name}-{i}")).await.unwrap().is_some(), "{name}-{i}");
            }
        }
    }
}

async fn audit_rows_are_immutable(ctx: Ctx) {
    let o = OrgId::new();
    ctx.store.append_audit(&[event(o, EventType::OrgCreated)]).await.unwrap();
    let update = ctx.raw(format!("UPDATE audit_events SET user_id = 'mallory' WHERE org_id = '{o}'")).await;
    assert!(update.unwrap_err().contains("immutable"));
    let delete = ctx.raw(format!("DELETE FROM audit_events WHERE org_id = '{o}'")).await;
    assert!(delete.unwrap_err().contains("immutable"));
    assert_eq!(audit_rows(&ctx, o).await[0].user_id, "system");
}

async fn check_constraints_reject_bad_values(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    for sql in [
        format!("UPDATE workspaces SET status = 'exploded' WHERE id = '{}'", ws.id),
        format!("UPDATE workspaces SET status_reason = 'bored' WHERE id = '{}'", ws.id),
        // A request asks for a transitional status, for a request's reason.
        format!("UPDATE workspaces SET request_status = 'idle' WHERE id = '{}'", ws.id),
        format!("UPDATE workspaces SET request_reason = 'ready' WHERE id = '{}'", ws.id),
        // Archived workspaces must be stopped or failed.
        format!("UPDATE workspaces SET archived_at = 1 WHERE id = '{}'", ws.id),
        format!("UPDATE orgs SET billing_status = 'free' WHERE id = '{}'", w.org.id),
        format!("UPDATE providers SET kind = 'llama' WHERE id = '{}'", w.provider.id),
        format!("UPDATE agent_roles SET pool_policy = 'huge' WHERE id = '{}'", w.role.id),
    ] {
        let err = ctx.raw(sql.clone()).await.expect_err(&sql);
        assert!(err.to_lowercase().contains("check"), "{sql}: {err}");
    }
    assert_eq!(ctx.store.get_workspace_by_id(ws.id).await.unwrap().unwrap(), ws);
}

// ---- SQLite only --------------------------------------------------------------------------------------------------

/// Another process holds the write lock for a while: the store's write waits for it instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_waits_for_another_writer() {
    let ctx = Ctx::sqlite().await;
    let mut other = sqlx::SqliteConnection::connect(&ctx.url).await.unwrap();
    other.execute("BEGIN IMMEDIATE").await.unwrap();
    other.execute("INSERT INTO server_keys (name, material, created_at) VALUES ('cli', 'aa', 1)").await.unwrap();
    let store = ctx.store.clone();
    let write = tokio::spawn(async move { store.create_org(&org("acme"), &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!write.is_finished(), "the write should wait for the other writer's lock");
    // Reads are not blocked by a writer (WAL).
    assert_eq!(ctx.store.get_org_by_slug("acme").await.unwrap(), None);
    other.execute("COMMIT").await.unwrap();
    write.await.unwrap().unwrap();
    assert!(ctx.store.get_org_by_slug("acme").await.unwrap().is_some());
    assert_eq!(ctx.store.server_key("cli", b"x").await.unwrap(), vec![0xaa]);
}

#[tokio::test]
async fn sqlite_connect_takes_a_plain_path_and_sets_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.db");
    let store = evershell_store::connect(path.to_str().unwrap()).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    store.ping().await.unwrap();
    assert!(path.exists());
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut c).await.unwrap();
    assert_eq!(mode, "wal");
    // Re-opening an existing, migrated file is fine.
    drop(store);
    evershell_store::SqliteStore::open(&path).await.unwrap();
    assert!(evershell_store::connect("sqlite::memory:").await.is_err());
}
