//! Secrets and credentials: names unique per org (personal overrides apart), sealed material stored byte-exact and
//! returned only by the material lookups, rotation, deletion, the broker's override-first lookup and mint bookkeeping.

use std::collections::BTreeMap;

use evershell_core::ids::{CredentialId, SecretId};
use evershell_core::model::{Credential, CredentialKind, CredentialStatus, Sealed, Secret};

use crate::*;

store_tests!(
    secrets_round_trip_rotate_and_delete,
    credentials_names_overrides_and_lookup,
    credential_mint_bookkeeping_and_delete,
);

fn secret(org: OrgId, name: &str) -> Secret {
    Secret {
        id: SecretId::new(),
        org_id: org,
        name: name.into(),
        description: Some("d".into()),
        created_at: ts(1_000),
        updated_at: ts(1_000),
    }
}

fn credential(org: OrgId, name: &str, user: Option<UserId>, kind: CredentialKind) -> Credential {
    let id = CredentialId::new();
    Credential {
        id,
        org_id: org,
        user_id: user,
        name: name.into(),
        provider: "github".into(),
        kind,
        scopes: vec!["repo".into()],
        durable_ref: format!("sealed:{id}"),
        provider_config: BTreeMap::from([("username".to_string(), "bot".to_string())]),
        last_minted_at: None,
        last_minted_status: None,
        allow_user_override: kind == CredentialKind::Oauth2AuthorizationCode,
        status: CredentialStatus::Active,
        created_by_user_id: user,
        created_at: ts(1_000),
        updated_at: ts(1_000),
    }
}

async fn secrets_round_trip_rotate_and_delete(ctx: Ctx) {
    let o = org("acme");
    let other = org("other");
    ctx.store.create_org(&o, &[]).await.unwrap();
    ctx.store.create_org(&other, &[]).await.unwrap();
    let (z, a) = (secret(o.id, "zeta"), secret(o.id, "alpha"));
    let sealed = Sealed(vec![0, 1, 2, 255, 254]);
    ctx.store.create_secret(&z, &sealed, &[event(o.id, EventType::SecretCreated)]).await.unwrap();
    ctx.store.create_secret(&a, &Sealed(vec![9]), &[]).await.unwrap();
    ctx.store.create_secret(&secret(other.id, "zeta"), &Sealed(vec![1]), &[]).await.unwrap();
    let err = ctx.store.create_secret(&secret(o.id, "zeta"), &Sealed(vec![1]), &[]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::AlreadyExists);
    assert_eq!(err.details.unwrap()["fields"]["name"], "is already taken");

    assert_eq!(ctx.store.list_secrets(o.id).await.unwrap(), vec![a.clone(), z.clone()]);
    assert_eq!(ctx.store.get_secret(o.id, z.id).await.unwrap(), Some(z.clone()));
    assert_eq!(ctx.store.get_secret(other.id, z.id).await.unwrap(), None);
    assert_eq!(ctx.store.secret_material(o.id, "zeta").await.unwrap(), Some((z.clone(), sealed)));
    assert_eq!(ctx.store.secret_material(o.id, "nope").await.unwrap(), None);

    let rotated_audit = [event(o.id, EventType::SecretRotated)];
    let rotated = ctx.store.rotate_secret(o.id, z.id, &Sealed(vec![7; 40]), ts(2_000), &rotated_audit).await.unwrap();
    assert_eq!(rotated.updated_at, ts(2_000));
    assert_eq!(rotated.created_at, ts(1_000));
    assert_eq!(ctx.store.secret_material(o.id, "zeta").await.unwrap().unwrap().1, Sealed(vec![7; 40]));
    assert_eq!(
        code(ctx.store.rotate_secret(other.id, z.id, &Sealed(vec![1]), ts(3_000), &[]).await),
        ErrorCode::SecretNotFound
    );

    ctx.store.delete_secret(o.id, z.id, &[event(o.id, EventType::SecretDeleted)]).await.unwrap();
    assert_eq!(code(ctx.store.delete_secret(o.id, z.id, &[]).await), ErrorCode::SecretNotFound);
    assert_eq!(ctx.store.secret_material(o.id, "zeta").await.unwrap(), None);
    assert_eq!(ctx.store.list_secrets(o.id).await.unwrap(), vec![a]);
    // The name is free again.
    ctx.store.create_secret(&secret(o.id, "zeta"), &Sealed(vec![1]), &[]).await.unwrap();
    for t in [EventType::SecretCreated, EventType::SecretRotated, EventType::SecretDeleted] {
        assert_eq!(audit_count(&ctx, o.id, t).await, 1, "{t:?}");
    }
}

async fn credentials_names_overrides_and_lookup(ctx: Ctx) {
    let o = org("acme");
    ctx.store.create_org(&o, &[]).await.unwrap();
    let (alice, bob) = (user("alice@acme.example"), user("bob@acme.example"));
    ctx.store.create_user(&alice, &[]).await.unwrap();
    ctx.store.create_user(&bob, &[]).await.unwrap();

    let shared = credential(o.id, "gdrive", None, CredentialKind::Oauth2AuthorizationCode);
    ctx.store.create_credential(&shared, &Sealed(vec![1]), &[event(o.id, EventType::CredentialCreated)]).await.unwrap();
    let err = ctx
        .store
        .create_credential(&credential(o.id, "gdrive", None, CredentialKind::ApiKey), &Sealed(vec![1]), &[])
        .await
        .unwrap_err();
    assert_eq!(
        (err.code, err.details.unwrap()["fields"]["name"].clone()),
        (ErrorCode::AlreadyExists, "is already taken".into())
    );
    // A personal override of the same name per user, once each.
    let mine = credential(o.id, "gdrive", Some(alice.id), CredentialKind::Oauth2AuthorizationCode);
    ctx.store.create_credential(&mine, &Sealed(vec![2]), &[]).await.unwrap();
    let again = credential(o.id, "gdrive", Some(alice.id), CredentialKind::Oauth2AuthorizationCode);
    assert_eq!(code(ctx.store.create_credential(&again, &Sealed(vec![3]), &[]).await), ErrorCode::AlreadyExists);

    assert_eq!(ctx.store.list_credentials(o.id).await.unwrap(), vec![shared.clone(), mine.clone()]);
    assert_eq!(ctx.store.get_credential(o.id, mine.id).await.unwrap(), Some(mine.clone()));
    assert_eq!(ctx.store.get_org_credential_by_name(o.id, "gdrive").await.unwrap(), Some(shared.clone()));

    // The broker: Alice gets her override, Bob and API keys the org's.
    let got = ctx.store.credential_material(o.id, "gdrive", Some(alice.id)).await.unwrap().unwrap();
    assert_eq!(got, (mine.clone(), Sealed(vec![2])));
    let got = ctx.store.credential_material(o.id, "gdrive", Some(bob.id)).await.unwrap().unwrap();
    assert_eq!(got, (shared.clone(), Sealed(vec![1])));
    let got = ctx.store.credential_material(o.id, "gdrive", None).await.unwrap().unwrap();
    assert_eq!(got.0.id, shared.id);
    assert_eq!(ctx.store.credential_material(o.id, "other", None).await.unwrap(), None);
    assert_eq!(audit_count(&ctx, o.id, EventType::CredentialCreated).await, 1);
}

async fn credential_mint_bookkeeping_and_delete(ctx: Ctx) {
    let o = org("acme");
    ctx.store.create_org(&o, &[]).await.unwrap();
    let c = credential(o.id, "gh", None, CredentialKind::Oauth2ClientCredentials);
    ctx.store.create_credential(&c, &Sealed(vec![5; 64]), &[]).await.unwrap();
    ctx.store
        .record_credential_mint(o.id, c.id, CredentialStatus::Active, Some(ts(5_000)), Some("ok"), ts(5_000))
        .await
        .unwrap();
    // A failed mint keeps the last success time.
    ctx.store
        .record_credential_mint(o.id, c.id, CredentialStatus::NeedsReauth, None, Some("invalid_grant"), ts(6_000))
        .await
        .unwrap();
    let got = ctx.store.get_credential(o.id, c.id).await.unwrap().unwrap();
    assert_eq!(
        (got.status, got.last_minted_at, got.last_minted_status.as_deref(), got.updated_at),
        (CredentialStatus::NeedsReauth, Some(ts(5_000)), Some("invalid_grant"), ts(6_000))
    );

    ctx.store.delete_credential(o.id, c.id, &[event(o.id, EventType::CredentialDeleted)]).await.unwrap();
    assert_eq!(ctx.store.get_credential(o.id, c.id).await.unwrap(), None);
    assert_eq!(ctx.store.credential_material(o.id, "gh", None).await.unwrap(), None);
    assert_eq!(code(ctx.store.delete_credential(o.id, c.id, &[]).await), ErrorCode::CredentialNotFound);
    assert_eq!(
        code(ctx.store.record_credential_mint(o.id, c.id, CredentialStatus::Active, None, None, ts(7_000)).await),
        ErrorCode::CredentialNotFound
    );
    assert_eq!(audit_count(&ctx, o.id, EventType::CredentialDeleted).await, 1);
}
