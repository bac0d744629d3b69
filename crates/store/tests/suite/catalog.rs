//! Providers and agent roles: names unique per org, ordering, updates, and the archive guards and cascade.

use evershell_core::model::ThinkingEffort;

use crate::*;

store_tests!(
    providers_round_trip_and_names,
    roles_round_trip_and_names,
    role_needs_a_live_provider,
    archive_role_guards_and_is_idempotent,
    archive_provider_cascades_to_live_roles,
    archive_provider_refuses_with_active_workspaces,
    unarchive_role_needs_a_live_provider,
);

async fn providers_round_trip_and_names(ctx: Ctx) {
    let o = org("acme");
    let other = org("other");
    ctx.store.create_org(&o, &[]).await.unwrap();
    ctx.store.create_org(&other, &[]).await.unwrap();
    let (b, a) = (provider(o.id, "zeta"), provider(o.id, "alpha"));
    ctx.store.create_provider(&b, &[event(o.id, EventType::ProviderCreated)]).await.unwrap();
    ctx.store.create_provider(&a, &[]).await.unwrap();
    // The same name in another org is fine.
    ctx.store.create_provider(&provider(other.id, "zeta"), &[]).await.unwrap();

    let err = ctx.store.create_provider(&provider(o.id, "zeta"), &[]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::AlreadyExists);
    assert_eq!(err.details.unwrap()["fields"]["name"], "is already taken");

    assert_eq!(ctx.store.get_provider(o.id, b.id).await.unwrap(), Some(b.clone()));
    assert_eq!(ctx.store.get_provider(other.id, b.id).await.unwrap(), None);
    assert_eq!(ctx.store.list_providers(o.id, false).await.unwrap(), vec![a.clone(), b.clone()]);

    let mut changed = b.clone();
    changed.name = "omega".into();
    changed.kind = ProviderKind::AzureOpenai;
    changed.display_name = None;
    changed.domain = "x.openai.azure.com".into();
    changed.credential_name = None;
    changed.default_model = Some("gpt".into());
    changed.capabilities = None;
    changed.config = [("deployment".to_string(), "d".to_string())].into();
    changed.updated_at = ts(2_000);
    ctx.store.update_provider(&changed, &[event(o.id, EventType::ProviderUpdated)]).await.unwrap();
    assert_eq!(ctx.store.get_provider(o.id, b.id).await.unwrap(), Some(changed.clone()));

    let mut clash = changed.clone();
    clash.name = "alpha".into();
    let err = ctx.store.update_provider(&clash, &[]).await.unwrap_err();
    assert_eq!(err.details.unwrap()["fields"]["name"], "is already taken");
    let mut ghost = changed.clone();
    ghost.id = ProviderId::new();
    assert_eq!(code(ctx.store.update_provider(&ghost, &[]).await), ErrorCode::ProviderNotFound);
    assert_eq!(audit_count(&ctx, o.id, EventType::ProviderUpdated).await, 1);

    ctx.store.archive_provider(o.id, a.id, ts(3_000), &[], &|_| unreachable!("no roles")).await.unwrap();
    assert_eq!(ctx.store.list_providers(o.id, false).await.unwrap(), vec![changed.clone()]);
    let all = ctx.store.list_providers(o.id, true).await.unwrap();
    assert_eq!(all.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["alpha", "omega"]);
    assert_eq!(all[0].archived_at, Some(ts(3_000)));
}

async fn roles_round_trip_and_names(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let mut full = role(w.org.id, w.provider.id, "analyst");
    full.display_name = Some("Analyst".into());
    full.model = Some("claude-big".into());
    full.capabilities = Some("allow:\n  - domain: example.com\n".into());
    full.environment = Environment::Production;
    full.environment_description = Some("prod".into());
    full.idle_timeout_seconds = Some(60);
    full.thinking_effort = Some(ThinkingEffort::High);
    full.max_context_tokens = Some(100_000);
    full.memory_limit_bytes = Some(512 << 20);
    full.pids_limit = Some(256);
    full.cpu_limit_millis = Some(1500);
    full.pool_policy = PoolPolicy::Dynamic;
    full.pool_size = Some(1);
    full.pool_max_size = Some(4);
    full.pack_ids = vec![evershell_core::ids::PackId::new(), evershell_core::ids::PackId::new()];
    ctx.store.create_role(&full, &[event(w.org.id, EventType::AgentRoleCreated)]).await.unwrap();

    assert_eq!(ctx.store.get_role(w.org.id, full.id).await.unwrap(), Some(full.clone()));
    assert_eq!(ctx.store.get_role_by_name(w.org.id, "analyst").await.unwrap(), Some(full.clone()));
    assert_eq!(ctx.store.get_role_by_name(w.org.id, "nobody").await.unwrap(), None);
    assert_eq!(ctx.store.get_role(OrgId::new(), full.id).await.unwrap(), None);
    assert_eq!(ctx.store.list_roles(w.org.id, false).await.unwrap(), vec![full.clone(), w.role.clone()]);

    let err = ctx.store.create_role(&role(w.org.id, w.provider.id, "coder"), &[]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::AlreadyExists);
    assert_eq!(err.details.unwrap()["fields"]["name"], "is already taken");

    let mut changed = full.clone();
    changed.name = "analyst-2".into();
    changed.thinking_effort = None;
    changed.memory_limit_bytes = None;
    changed.pids_limit = Some(512);
    changed.pool_policy = PoolPolicy::Static;
    changed.pack_ids = vec![];
    changed.updated_at = ts(5_000);
    ctx.store.update_role(&changed, &[event(w.org.id, EventType::AgentRoleUpdated)]).await.unwrap();
    assert_eq!(ctx.store.get_role(w.org.id, full.id).await.unwrap(), Some(changed.clone()));
    changed.name = "coder".into();
    assert_eq!(code(ctx.store.update_role(&changed, &[]).await), ErrorCode::AlreadyExists);
    changed.id = RoleId::new();
    assert_eq!(code(ctx.store.update_role(&changed, &[]).await), ErrorCode::RoleNotFound);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::AgentRoleUpdated).await, 1);
}

async fn role_needs_a_live_provider(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let err = ctx.store.create_role(&role(w.org.id, ProviderId::new(), "ghost"), &[]).await;
    assert_eq!(code(err), ErrorCode::ProviderNotFound);
    // Another org's provider is not this org's.
    let other = org("other");
    ctx.store.create_org(&other, &[]).await.unwrap();
    assert_eq!(
        code(ctx.store.create_role(&role(other.id, w.provider.id, "x"), &[]).await),
        ErrorCode::ProviderNotFound
    );

    ctx.store
        .archive_provider(w.org.id, w.provider.id, ts(2_000), &[], &|r| event(r.org_id, EventType::AgentRoleArchived))
        .await
        .unwrap();
    let r = role(w.org.id, w.provider.id, "late");
    let err = ctx.store.create_role(&r, &[event(w.org.id, EventType::AgentRoleCreated)]).await;
    assert_eq!(code(err), ErrorCode::ProviderArchived);
    assert_eq!(ctx.store.get_role(w.org.id, r.id).await.unwrap(), None);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::AgentRoleCreated).await, 0);
}

async fn archive_role_guards_and_is_idempotent(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let mut ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();

    for status in
        [WorkspaceStatus::Idle, WorkspaceStatus::Busy, WorkspaceStatus::Provisioning, WorkspaceStatus::Stopping]
    {
        ws.observed.status = status;
        observe(&ctx, &mut ws).await;
        let err = ctx
            .store
            .archive_role(w.org.id, w.role.id, ts(2_000), &[event(w.org.id, EventType::AgentRoleArchived)])
            .await;
        assert_eq!(code(err), ErrorCode::WorkspacesActive, "{status:?}");
    }
    ws.observed.status = WorkspaceStatus::Stopped;
    ws.observed.pod_id = None;
    observe(&ctx, &mut ws).await;
    // A resume the reconciler has not taken on yet counts as active too.
    ws.intent.request =
        Some(Request { seq: 1, status: WorkspaceStatus::Provisioning, reason: StatusReason::ResumeRequested });
    assert!(ctx.store.update_intent(&ws, 0, ws.observed.generation, &Default::default(), &[]).await.unwrap());
    let err = ctx.store.archive_role(w.org.id, w.role.id, ts(2_500), &[]).await;
    assert_eq!(code(err), ErrorCode::WorkspacesActive, "pending resume");
    ws.observed.adopted = 1;
    observe(&ctx, &mut ws).await;

    ctx.store
        .archive_role(w.org.id, w.role.id, ts(3_000), &[event(w.org.id, EventType::AgentRoleArchived)])
        .await
        .unwrap();
    let archived = ctx.store.get_role(w.org.id, w.role.id).await.unwrap().unwrap();
    assert_eq!((archived.archived_at, archived.updated_at), (Some(ts(3_000)), ts(3_000)));
    // Again: nothing changes, nothing is audited.
    ctx.store
        .archive_role(w.org.id, w.role.id, ts(4_000), &[event(w.org.id, EventType::AgentRoleArchived)])
        .await
        .unwrap();
    assert_eq!(ctx.store.get_role(w.org.id, w.role.id).await.unwrap().unwrap().archived_at, Some(ts(3_000)));
    assert_eq!(audit_count(&ctx, w.org.id, EventType::AgentRoleArchived).await, 1);
    assert!(ctx.store.list_roles(w.org.id, false).await.unwrap().is_empty());
    assert_eq!(ctx.store.list_roles(w.org.id, true).await.unwrap().len(), 1);

    ctx.store
        .unarchive_role(w.org.id, w.role.id, ts(5_000), &[event(w.org.id, EventType::AgentRoleUnarchived)])
        .await
        .unwrap();
    assert_eq!(ctx.store.get_role(w.org.id, w.role.id).await.unwrap().unwrap().archived_at, None);
    assert_eq!(code(ctx.store.unarchive_role(w.org.id, w.role.id, ts(6_000), &[]).await), ErrorCode::NotArchived);
    assert_eq!(code(ctx.store.archive_role(w.org.id, RoleId::new(), ts(6_000), &[]).await), ErrorCode::RoleNotFound);
    assert_eq!(code(ctx.store.unarchive_role(w.org.id, RoleId::new(), ts(6_000), &[]).await), ErrorCode::RoleNotFound);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::AgentRoleUnarchived).await, 1);
}

async fn archive_provider_cascades_to_live_roles(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let second = role(w.org.id, w.provider.id, "second");
    let old = role(w.org.id, w.provider.id, "old");
    ctx.store.create_role(&second, &[]).await.unwrap();
    ctx.store.create_role(&old, &[]).await.unwrap();
    ctx.store.archive_role(w.org.id, old.id, ts(1_500), &[]).await.unwrap();
    // A stopped workspace does not block.
    ctx.store.create_workspace(&workspace(w.org.id, w.role.id, WorkspaceStatus::Stopped), &[]).await.unwrap();

    let role_audit = |r: &AgentRole| {
        assert_eq!(r.archived_at, Some(ts(2_000)));
        event(r.org_id, EventType::AgentRoleArchived).target("agent_role", r.id)
    };
    let n = ctx
        .store
        .archive_provider(
            w.org.id,
            w.provider.id,
            ts(2_000),
            &[event(w.org.id, EventType::ProviderArchived)],
            &role_audit,
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(ctx.store.get_provider(w.org.id, w.provider.id).await.unwrap().unwrap().archived_at, Some(ts(2_000)));
    for (r, at) in [(&w.role, 2_000), (&second, 2_000), (&old, 1_500)] {
        assert_eq!(ctx.store.get_role(w.org.id, r.id).await.unwrap().unwrap().archived_at, Some(ts(at)), "{}", r.name);
    }
    let mut targets: Vec<_> = audit_rows(&ctx, w.org.id)
        .await
        .into_iter()
        .filter(|e| e.event_type == EventType::AgentRoleArchived)
        .map(|e| e.target_id.unwrap())
        .collect();
    targets.sort();
    let mut expected = vec![w.role.id.to_string(), second.id.to_string()];
    expected.sort();
    assert_eq!(targets, expected);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::ProviderArchived).await, 1);

    // Archiving again cascades nothing and audits nothing.
    let again = ctx
        .store
        .archive_provider(
            w.org.id,
            w.provider.id,
            ts(3_000),
            &[event(w.org.id, EventType::ProviderArchived)],
            &role_audit,
        )
        .await
        .unwrap();
    assert_eq!(again, 0);
    assert_eq!(audit_count(&ctx, w.org.id, EventType::ProviderArchived).await, 1);

    ctx.store
        .unarchive_provider(w.org.id, w.provider.id, ts(4_000), &[event(w.org.id, EventType::ProviderUnarchived)])
        .await
        .unwrap();
    let p = ctx.store.get_provider(w.org.id, w.provider.id).await.unwrap().unwrap();
    assert_eq!((p.archived_at, p.updated_at), (None, ts(4_000)));
    // Roles stay archived until unarchived one by one.
    assert!(ctx.store.get_role(w.org.id, w.role.id).await.unwrap().unwrap().archived_at.is_some());
    let err = ctx.store.unarchive_provider(w.org.id, w.provider.id, ts(5_000), &[]).await;
    assert_eq!(code(err), ErrorCode::NotArchived);
    let err = ctx.store.unarchive_provider(w.org.id, ProviderId::new(), ts(5_000), &[]).await;
    assert_eq!(code(err), ErrorCode::ProviderNotFound);
    let err = ctx.store.archive_provider(w.org.id, ProviderId::new(), ts(5_000), &[], &role_audit).await;
    assert_eq!(code(err), ErrorCode::ProviderNotFound);
}

async fn archive_provider_refuses_with_active_workspaces(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let second = role(w.org.id, w.provider.id, "second");
    ctx.store.create_role(&second, &[]).await.unwrap();
    ctx.store.create_workspace(&workspace(w.org.id, second.id, WorkspaceStatus::Busy), &[]).await.unwrap();
    let err = ctx
        .store
        .archive_provider(w.org.id, w.provider.id, ts(2_000), &[event(w.org.id, EventType::ProviderArchived)], &|r| {
            event(r.org_id, EventType::AgentRoleArchived)
        })
        .await;
    assert_eq!(code(err), ErrorCode::WorkspacesActive);
    assert_eq!(ctx.store.get_provider(w.org.id, w.provider.id).await.unwrap().unwrap().archived_at, None);
    assert_eq!(ctx.store.get_role(w.org.id, w.role.id).await.unwrap().unwrap().archived_at, None);
    assert!(audit_rows(&ctx, w.org.id).await.is_empty());
}

async fn unarchive_role_needs_a_live_provider(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    ctx.store
        .archive_provider(w.org.id, w.provider.id, ts(2_000), &[], &|r| event(r.org_id, EventType::AgentRoleArchived))
        .await
        .unwrap();
    let err = ctx.store.unarchive_role(w.org.id, w.role.id, ts(3_000), &[]).await;
    assert_eq!(code(err), ErrorCode::ProviderArchived);
    ctx.store.unarchive_provider(w.org.id, w.provider.id, ts(4_000), &[]).await.unwrap();
    ctx.store.unarchive_role(w.org.id, w.role.id, ts(5_000), &[]).await.unwrap();
    assert_eq!(ctx.store.get_role(w.org.id, w.role.id).await.unwrap().unwrap().archived_at, None);
}
