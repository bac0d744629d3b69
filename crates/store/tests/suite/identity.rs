//! Orgs, users, memberships and invitations (with the last-Owner guard), API keys, sessions and server keys.

use evershell_core::ids::{ApiKeyId, SessionId};
use evershell_core::model::{ApiKey, Session};
use evershell_core::scope::{PermissionSet, Scope};

use crate::*;

store_tests!(
    ping_and_backend,
    orgs_round_trip,
    duplicate_slug_names_the_field_and_writes_nothing,
    users_round_trip_and_duplicate_email,
    memberships_list_oldest_first,
    duplicate_membership_is_already_exists,
    invitation_is_found_then_accepted_once,
    membership_role_changes_and_guards,
    delete_membership_guards_and_revokes_sessions,
    api_keys_live_and_revoked,
    sessions_revoke_keeps_the_first_time,
    server_key_first_writer_wins,
);

async fn ping_and_backend(ctx: Ctx) {
    ctx.store.ping().await.unwrap();
    assert_eq!(ctx.store.backend(), ctx.backend);
}

async fn orgs_round_trip(ctx: Ctx) {
    let o = org("acme");
    ctx.store.create_org(&o, &[event(o.id, EventType::OrgCreated)]).await.unwrap();
    assert_eq!(ctx.store.get_org(o.id).await.unwrap(), Some(o.clone()));
    assert_eq!(ctx.store.get_org_by_slug("acme").await.unwrap(), Some(o.clone()));
    assert_eq!(ctx.store.get_org_by_slug("nope").await.unwrap(), None);
    assert_eq!(ctx.store.get_org(OrgId::new()).await.unwrap(), None);

    let updated = ctx
        .store
        .set_org_billing(o.id, BillingStatus::Trial, Some(ts(9_000)), &[event(o.id, EventType::OrgBillingChanged)])
        .await
        .unwrap();
    assert_eq!(updated.billing_status, BillingStatus::Trial);
    assert_eq!(updated.trial_ends_at, Some(ts(9_000)));
    assert!(updated.updated_at > o.updated_at);
    assert_eq!(ctx.store.get_org(o.id).await.unwrap(), Some(updated));

    let missing = ctx.store.set_org_billing(OrgId::new(), BillingStatus::Active, None, &[]).await;
    assert_eq!(code(missing), ErrorCode::OrgNotFound);

    let types: Vec<_> = audit_rows(&ctx, o.id).await.into_iter().map(|e| e.event_type).collect();
    assert_eq!(types, vec![EventType::OrgCreated, EventType::OrgBillingChanged]);
}

async fn duplicate_slug_names_the_field_and_writes_nothing(ctx: Ctx) {
    let a = org("acme");
    ctx.store.create_org(&a, &[event(a.id, EventType::OrgCreated)]).await.unwrap();
    let b = org("acme");
    let err = ctx.store.create_org(&b, &[event(b.id, EventType::OrgCreated)]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::AlreadyExists);
    assert_eq!(err.details.unwrap()["fields"]["slug"], "is already taken");
    // The failed transaction left neither the org nor its audit row.
    assert_eq!(ctx.store.get_org(b.id).await.unwrap(), None);
    assert!(audit_rows(&ctx, b.id).await.is_empty());
}

async fn users_round_trip_and_duplicate_email(ctx: Ctx) {
    let mut u = user("ada@example.com");
    u.password_hash = Some("$argon2id$hash".into());
    ctx.store.create_user(&u, &[]).await.unwrap();
    assert_eq!(ctx.store.get_user(u.id).await.unwrap(), Some(u.clone()));
    assert_eq!(ctx.store.get_user_by_email("ada@example.com").await.unwrap(), Some(u.clone()));
    assert_eq!(ctx.store.get_user_by_email("bob@example.com").await.unwrap(), None);
    assert_eq!(ctx.store.get_user(UserId::new()).await.unwrap(), None);

    let err = ctx.store.create_user(&user("ada@example.com"), &[]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::AlreadyExists);
    assert_eq!(err.details.unwrap()["fields"]["email"], "is already taken");
}

async fn memberships_list_oldest_first(ctx: Ctx) {
    let o1 = org("one");
    let o2 = org("two");
    ctx.store.create_org(&o1, &[]).await.unwrap();
    ctx.store.create_org(&o2, &[]).await.unwrap();
    let ada = user("ada@example.com");
    let bob = user("bob@example.com");
    let m_ada = membership(&o1, &ada, MemberRole::Owner, MembershipStatus::Active, 2_000);
    let m_bob = membership(&o1, &bob, MemberRole::Member, MembershipStatus::Active, 1_500);
    let m_ada2 = membership(&o2, &ada, MemberRole::Member, MembershipStatus::Active, 1_000);
    ctx.store.create_membership(&m_ada, Some(&ada), None, &[event(o1.id, EventType::MembershipCreated)]).await.unwrap();
    ctx.store.create_membership(&m_bob, Some(&bob), None, &[]).await.unwrap();
    ctx.store.create_membership(&m_ada2, None, None, &[]).await.unwrap();

    assert_eq!(ctx.store.get_user(ada.id).await.unwrap().unwrap().email, "ada@example.com");
    assert_eq!(ctx.store.get_membership(o1.id, ada.id).await.unwrap(), Some(m_ada.clone()));
    assert_eq!(ctx.store.get_membership(o2.id, bob.id).await.unwrap(), None);
    assert_eq!(ctx.store.list_memberships(o1.id).await.unwrap(), vec![m_bob, m_ada.clone()]);
    assert_eq!(ctx.store.list_user_memberships(ada.id).await.unwrap(), vec![(m_ada2, o2), (m_ada, o1.clone())]);
    assert_eq!(audit_count(&ctx, o1.id, EventType::MembershipCreated).await, 1);
}

async fn duplicate_membership_is_already_exists(ctx: Ctx) {
    let o = org("acme");
    ctx.store.create_org(&o, &[]).await.unwrap();
    let ada = user("ada@example.com");
    let m = membership(&o, &ada, MemberRole::Owner, MembershipStatus::Active, 1_000);
    ctx.store.create_membership(&m, Some(&ada), None, &[]).await.unwrap();

    let err = ctx.store.create_membership(&m, None, None, &[]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::AlreadyExists);
    assert_eq!(err.details.unwrap()["fields"]["email"], "is already taken");

    // Inviting a brand-new user whose email is taken fails on the user, and writes no membership.
    let other = org("other");
    ctx.store.create_org(&other, &[]).await.unwrap();
    let clash = user("ada@example.com");
    let m2 = membership(&other, &clash, MemberRole::Member, MembershipStatus::Pending, 1_000);
    let err = ctx.store.create_membership(&m2, Some(&clash), Some("tok"), &[]).await.unwrap_err();
    assert_eq!(err.details.unwrap()["fields"]["email"], "is already taken");
    assert!(ctx.store.list_memberships(other.id).await.unwrap().is_empty());
}

async fn invitation_is_found_then_accepted_once(ctx: Ctx) {
    let o = org("acme");
    ctx.store.create_org(&o, &[]).await.unwrap();
    let bob = user("bob@example.com");
    let invite = membership(&o, &bob, MemberRole::Operator, MembershipStatus::Pending, 1_000);
    ctx.store.create_membership(&invite, Some(&bob), Some("token-hash"), &[]).await.unwrap();

    assert_eq!(ctx.store.find_invitation("token-hash").await.unwrap(), Some(invite.clone()));
    assert_eq!(ctx.store.find_invitation("other").await.unwrap(), None);

    let accepted = ctx
        .store
        .accept_invitation(o.id, bob.id, Some("pw-hash"), ts(5_000), &[event(o.id, EventType::InvitationAccepted)])
        .await
        .unwrap();
    assert_eq!(accepted.status, MembershipStatus::Active);
    assert_eq!(accepted.accepted_at, Some(ts(5_000)));
    assert_eq!(accepted.updated_at, ts(5_000));
    assert_eq!(accepted.role, MemberRole::Operator);
    assert_eq!(ctx.store.get_user(bob.id).await.unwrap().unwrap().password_hash.as_deref(), Some("pw-hash"));
    // The token is spent.
    assert_eq!(ctx.store.find_invitation("token-hash").await.unwrap(), None);

    let again = ctx.store.accept_invitation(o.id, bob.id, None, ts(6_000), &[]).await;
    assert_eq!(code(again), ErrorCode::MembershipNotFound);
    let unknown = ctx.store.accept_invitation(o.id, UserId::new(), None, ts(6_000), &[]).await;
    assert_eq!(code(unknown), ErrorCode::MembershipNotFound);
    assert_eq!(audit_count(&ctx, o.id, EventType::InvitationAccepted).await, 1);

    // Accepting without a password leaves the hash alone.
    let carl = user("carl@example.com");
    let invite = membership(&o, &carl, MemberRole::Member, MembershipStatus::Pending, 1_000);
    ctx.store.create_membership(&invite, Some(&carl), Some("t2"), &[]).await.unwrap();
    ctx.store.accept_invitation(o.id, carl.id, None, ts(7_000), &[]).await.unwrap();
    assert_eq!(ctx.store.get_user(carl.id).await.unwrap().unwrap().password_hash, None);
}

async fn membership_role_changes_and_guards(ctx: Ctx) {
    let o = org("acme");
    ctx.store.create_org(&o, &[]).await.unwrap();
    let ada = user("ada@example.com");
    let bob = user("bob@example.com");
    let pending = user("pending@example.com");
    for (u, r, s) in [
        (&ada, MemberRole::Owner, MembershipStatus::Active),
        (&bob, MemberRole::Member, MembershipStatus::Active),
        (&pending, MemberRole::Owner, MembershipStatus::Pending),
    ] {
        ctx.store.create_membership(&membership(&o, u, r, s, 1_000), Some(u), None, &[]).await.unwrap();
    }

    let m = ctx
        .store
        .update_membership_role(
            o.id,
            bob.id,
            MemberRole::Operator,
            ts(2_000),
            &[event(o.id, EventType::MembershipRoleChanged)],
        )
        .await
        .unwrap();
    assert_eq!((m.role, m.updated_at), (MemberRole::Operator, ts(2_000)));
    assert_eq!(ctx.store.get_membership(o.id, bob.id).await.unwrap(), Some(m));

    // A pending Owner invitation does not count as an Owner, and cannot be re-roled.
    let err = ctx.store.update_membership_role(o.id, ada.id, MemberRole::Member, ts(3_000), &[]).await;
    assert_eq!(code(err), ErrorCode::LastOwner);
    let err = ctx.store.update_membership_role(o.id, pending.id, MemberRole::Member, ts(3_000), &[]).await;
    assert_eq!(code(err), ErrorCode::PendingInvitation);
    let err = ctx.store.update_membership_role(o.id, UserId::new(), MemberRole::Member, ts(3_000), &[]).await;
    assert_eq!(code(err), ErrorCode::MembershipNotFound);
    // Re-affirming the last Owner is fine.
    ctx.store.update_membership_role(o.id, ada.id, MemberRole::Owner, ts(3_000), &[]).await.unwrap();

    // With a second Owner, one may step down — but not both.
    ctx.store.update_membership_role(o.id, bob.id, MemberRole::Owner, ts(4_000), &[]).await.unwrap();
    ctx.store.update_membership_role(o.id, ada.id, MemberRole::Member, ts(5_000), &[]).await.unwrap();
    let err = ctx.store.update_membership_role(o.id, bob.id, MemberRole::Operator, ts(6_000), &[]).await;
    assert_eq!(code(err), ErrorCode::LastOwner);
    assert_eq!(audit_count(&ctx, o.id, EventType::MembershipRoleChanged).await, 1);
}

async fn delete_membership_guards_and_revokes_sessions(ctx: Ctx) {
    let o = org("acme");
    let other = org("other");
    ctx.store.create_org(&o, &[]).await.unwrap();
    ctx.store.create_org(&other, &[]).await.unwrap();
    let ada = user("ada@example.com");
    let bob = user("bob@example.com");
    let invitee = user("invitee@example.com");
    ctx.store
        .create_membership(&membership(&o, &ada, MemberRole::Owner, MembershipStatus::Active, 1), Some(&ada), None, &[])
        .await
        .unwrap();
    ctx.store
        .create_membership(
            &membership(&o, &bob, MemberRole::Member, MembershipStatus::Active, 2),
            Some(&bob),
            None,
            &[],
        )
        .await
        .unwrap();
    ctx.store
        .create_membership(&membership(&other, &bob, MemberRole::Owner, MembershipStatus::Active, 3), None, None, &[])
        .await
        .unwrap();
    ctx.store
        .create_membership(
            &membership(&o, &invitee, MemberRole::Owner, MembershipStatus::Pending, 4),
            Some(&invitee),
            Some("t"),
            &[],
        )
        .await
        .unwrap();
    let session = |org: OrgId| Session {
        id: SessionId::new(),
        user_id: bob.id,
        org_id: org,
        created_at: ts(1),
        expires_at: ts(99_999),
        revoked_at: None,
    };
    let (s_here, s_there) = (session(o.id), session(other.id));
    ctx.store.create_session(&s_here, &[]).await.unwrap();
    ctx.store.create_session(&s_there, &[]).await.unwrap();

    assert_eq!(code(ctx.store.delete_membership(o.id, ada.id, ts(10), &[]).await), ErrorCode::LastOwner);
    assert_eq!(
        code(ctx.store.delete_membership(o.id, UserId::new(), ts(10), &[]).await),
        ErrorCode::MembershipNotFound
    );
    // A pending Owner invitation can be revoked.
    ctx.store.delete_membership(o.id, invitee.id, ts(10), &[]).await.unwrap();
    assert_eq!(ctx.store.find_invitation("t").await.unwrap(), None);

    ctx.store.delete_membership(o.id, bob.id, ts(20), &[event(o.id, EventType::MembershipRemoved)]).await.unwrap();
    assert_eq!(ctx.store.get_membership(o.id, bob.id).await.unwrap(), None);
    assert_eq!(ctx.store.get_session(s_here.id).await.unwrap().unwrap().revoked_at, Some(ts(20)));
    assert_eq!(ctx.store.get_session(s_there.id).await.unwrap().unwrap().revoked_at, None);
    assert!(ctx.store.get_membership(other.id, bob.id).await.unwrap().is_some());
    assert_eq!(audit_count(&ctx, o.id, EventType::MembershipRemoved).await, 1);
}

fn api_key(org: OrgId, label: &str, at: i64) -> ApiKey {
    ApiKey {
        id: ApiKeyId::new(),
        org_id: org,
        label: label.into(),
        prefix: format!("sk_live_…{label}"),
        permission_set: PermissionSet::SubmitObserve,
        permissions: vec![Scope::WorkspaceRead, Scope::TasksWrite],
        created_by_user_id: Some(UserId::new()),
        created_at: ts(at),
    }
}

async fn api_keys_live_and_revoked(ctx: Ctx) {
    let o = org("acme");
    let other = org("other");
    ctx.store.create_org(&o, &[]).await.unwrap();
    ctx.store.create_org(&other, &[]).await.unwrap();
    let (k1, k2) = (api_key(o.id, "b", 2_000), api_key(o.id, "a", 1_000));
    ctx.store.create_api_key(&k1, "hash-1", &[event(o.id, EventType::ApiKeyCreated)]).await.unwrap();
    ctx.store.create_api_key(&k2, "hash-2", &[]).await.unwrap();

    assert_eq!(ctx.store.list_api_keys(o.id).await.unwrap(), vec![k2.clone(), k1.clone()]);
    assert_eq!(ctx.store.find_api_key("hash-1").await.unwrap(), Some(k1.clone()));
    assert_eq!(ctx.store.find_api_key("nope").await.unwrap(), None);

    assert!(
        !ctx.store
            .revoke_api_key(other.id, k1.id, ts(3_000), &[event(other.id, EventType::ApiKeyRevoked)])
            .await
            .unwrap()
    );
    assert!(ctx.store.revoke_api_key(o.id, k1.id, ts(3_000), &[event(o.id, EventType::ApiKeyRevoked)]).await.unwrap());
    assert!(!ctx.store.revoke_api_key(o.id, k1.id, ts(4_000), &[event(o.id, EventType::ApiKeyRevoked)]).await.unwrap());
    assert_eq!(ctx.store.find_api_key("hash-1").await.unwrap(), None);
    assert_eq!(ctx.store.list_api_keys(o.id).await.unwrap(), vec![k2]);
    // Only the revocation that happened is audited.
    assert_eq!(audit_count(&ctx, o.id, EventType::ApiKeyRevoked).await, 1);
    assert_eq!(audit_count(&ctx, other.id, EventType::ApiKeyRevoked).await, 0);
}

async fn sessions_revoke_keeps_the_first_time(ctx: Ctx) {
    let o = org("acme");
    ctx.store.create_org(&o, &[]).await.unwrap();
    let u = user("ada@example.com");
    ctx.store.create_user(&u, &[]).await.unwrap();
    let s = Session {
        id: SessionId::new(),
        user_id: u.id,
        org_id: o.id,
        created_at: ts(1),
        expires_at: ts(9),
        revoked_at: None,
    };
    ctx.store.create_session(&s, &[event(o.id, EventType::LoginSucceeded)]).await.unwrap();
    assert_eq!(ctx.store.get_session(s.id).await.unwrap(), Some(s.clone()));
    assert_eq!(ctx.store.get_session(SessionId::new()).await.unwrap(), None);
    ctx.store.revoke_session(s.id, ts(5), &[event(o.id, EventType::LoggedOut)]).await.unwrap();
    ctx.store.revoke_session(s.id, ts(7), &[]).await.unwrap();
    assert_eq!(ctx.store.get_session(s.id).await.unwrap().unwrap().revoked_at, Some(ts(5)));
    assert_eq!(audit_count(&ctx, o.id, EventType::LoggedOut).await, 1);
}

async fn server_key_first_writer_wins(ctx: Ctx) {
    let first = ctx.store.server_key("jwt", &[0, 1, 2, 254, 255]).await.unwrap();
    assert_eq!(first, vec![0, 1, 2, 254, 255]);
    assert_eq!(ctx.store.server_key("jwt", b"other").await.unwrap(), first);
    assert_eq!(ctx.store.server_key("csrf", b"x").await.unwrap(), b"x".to_vec());

    // Racing creators all get the one stored value.
    let tasks: Vec<_> = (0..6u8)
        .map(|i| {
            let store = ctx.store.clone();
            tokio::spawn(async move { store.server_key("raced", &[i; 32]).await.unwrap() })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}
