//! Store-level administration for the operator's command line (`evershell admin …`): bootstrap, orgs, users, API
//! keys, session tokens and billing posture. These work directly on the store (also while the server runs) and
//! write audit rows attributed to `system` with `details.via = "admin-cli"`.

use evershell_core::audit::{AuditEvent, EventType};
use evershell_core::ids::{OrgId, UserId};
use evershell_core::model::{BillingStatus, Membership, MembershipStatus, Org, User};
use evershell_core::names;
use evershell_core::scope::{MemberRole, PermissionSet};
use evershell_core::{Error, ErrorCode, FieldErrors, Result, Timestamp};
use evershell_store::Store;
use serde::Serialize;

use crate::authn::{SessionKey, mint_session};
use crate::identity::new_key;
use crate::secrets;

/// Default session lifetime for tokens minted by the admin CLI (12 hours).
pub const ADMIN_SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

fn admin_audit(org: OrgId, t: EventType) -> AuditEvent {
    AuditEvent::system(org, t).details(serde_json::json!({ "via": "admin-cli" }))
}

/// Find an org by slug or id.
pub async fn find_org(store: &dyn Store, slug_or_id: &str) -> Result<Org> {
    let by_id = match slug_or_id.parse::<OrgId>() {
        Ok(id) => store.get_org(id).await?,
        Err(_) => None,
    };
    match by_id {
        Some(o) => Ok(o),
        None => store
            .get_org_by_slug(slug_or_id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::OrgNotFound, format!("no organisation `{slug_or_id}`"))),
    }
}

pub async fn create_org(store: &dyn Store, slug: &str) -> Result<Org> {
    let mut errs = FieldErrors::default();
    names::check_slug(&mut errs, "name", slug);
    errs.into_result()?;
    let now = Timestamp::now();
    let org = Org {
        id: OrgId::new(),
        slug: slug.to_string(),
        billing_status: BillingStatus::Active,
        trial_ends_at: None,
        created_at: now,
        updated_at: now,
    };
    store.create_org(&org, &[admin_audit(org.id, EventType::OrgCreated).target("org", org.id)]).await?;
    Ok(org)
}

/// A user added to an org.
#[derive(Debug, Clone, Serialize)]
pub struct AddedUser {
    pub user_id: UserId,
    pub email: String,
    pub org_id: OrgId,
    pub role: MemberRole,
    /// `active`, or `pending` when the account already existed: it signs in to this org only after accepting
    /// `invite_token` with its own password.
    pub status: MembershipStatus,
    /// The generated password (a new user without `--password`, or a reset without one). Shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_password: Option<String>,
    /// The invitation the existing account accepts (`POST /v1/auth/accept-invite`). Shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invite_token: Option<String>,
    /// True when this command replaced the account's password (`--reset-password`).
    pub password_reset: bool,
    /// Sessions of the account revoked by the reset, in every org.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_revoked: Option<u64>,
    /// The account's other orgs (slugs), whose sign-in a reset changes too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_orgs: Vec<String>,
}

/// What `add_member` does with an account that already exists (user accounts are global, shared by every org).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingAccount {
    /// A pending membership and an invitation: the person proves control by accepting it with their own password
    /// (or, for an account without one, by setting it).
    Invite,
    /// Replace the account's password (given, or generated and printed), revoke all its sessions in every org,
    /// write `password_reset` in each of its orgs, and make the membership active.
    ResetPassword,
}

fn generated_password() -> String {
    secrets::new_invite_token().0.trim_start_matches("inv_")[..20].to_string()
}

/// Add a user to an org: a new account is created (with `password`, or a generated one) as an active member; an
/// existing account is invited (see `ExistingAccount::Invite`) — never signed in with credentials another org set.
pub async fn add_user(
    store: &dyn Store,
    org: &Org,
    email: &str,
    role: MemberRole,
    password: Option<&str>,
) -> Result<AddedUser> {
    add_member(store, org, email, role, password, ExistingAccount::Invite).await
}

/// `add_user` with the choice for an existing account spelled out (`admin user add --reset-password`).
pub async fn add_member(
    store: &dyn Store,
    org: &Org,
    email: &str,
    role: MemberRole,
    password: Option<&str>,
    existing_account: ExistingAccount,
) -> Result<AddedUser> {
    let email = names::normalize_email(email);
    let mut errs = FieldErrors::default();
    names::check_email(&mut errs, "email", &email);
    if let Some(p) = password {
        names::check_password(&mut errs, "password", p);
    }
    errs.into_result()?;
    let now = Timestamp::now();
    let existing = store.get_user_by_email(&email).await?;
    let mut out = AddedUser {
        user_id: existing.as_ref().map(|u| u.id).unwrap_or_else(UserId::new),
        email: email.clone(),
        org_id: org.id,
        role,
        status: MembershipStatus::Active,
        generated_password: None,
        invite_token: None,
        password_reset: false,
        sessions_revoked: None,
        other_orgs: vec![],
    };
    let membership = |status: MembershipStatus| Membership {
        org_id: org.id,
        user_id: out.user_id,
        email: email.clone(),
        role,
        status,
        accepted_at: (status == MembershipStatus::Active).then_some(now),
        invited_by_user_id: None,
        created_at: now,
        updated_at: now,
    };
    let created = |status: MembershipStatus| {
        let t = if status == MembershipStatus::Active {
            EventType::MembershipCreated
        } else {
            EventType::MembershipInvited
        };
        admin_audit(org.id, t)
            .target("membership", out.user_id)
            .details(serde_json::json!({ "via": "admin-cli", "email": email, "role": role }))
    };
    let Some(user) = existing else {
        let p = match password {
            Some(p) => p.to_string(),
            None => {
                let p = generated_password();
                out.generated_password = Some(p.clone());
                p
            }
        };
        let user = User {
            id: out.user_id,
            email: email.clone(),
            password_hash: Some(secrets::hash_password(&p)?),
            created_at: now,
        };
        let audit = vec![
            created(MembershipStatus::Active),
            admin_audit(org.id, EventType::UserCreated).target("user", user.id),
        ];
        store.create_membership(&membership(MembershipStatus::Active), Some(&user), None, &audit).await?;
        return Ok(out);
    };
    if existing_account == ExistingAccount::Invite && password.is_some() {
        return Err(Error::invalid_field(
            "password",
            "the account already exists (accounts are shared by every org): omit --password to invite it \
             (it accepts with its own password), or add --reset-password to replace its password",
        ));
    }
    if store.get_membership(org.id, user.id).await?.is_some() {
        return Err(Error::new(
            ErrorCode::AlreadyExists,
            "the user is already a member of (or invited to) this organisation",
        )
        .with_details(serde_json::json!({ "fields": { "email": "is already a member" } })));
    }
    let others = store.list_user_memberships(user.id).await?;
    out.other_orgs = others.iter().map(|(_, o)| o.slug.clone()).collect();
    match existing_account {
        ExistingAccount::Invite => {
            let (token, hash) = secrets::new_invite_token();
            out.status = MembershipStatus::Pending;
            out.invite_token = Some(token);
            store
                .create_membership(
                    &membership(MembershipStatus::Pending),
                    None,
                    Some(&hash),
                    &[created(MembershipStatus::Pending)],
                )
                .await?;
        }
        ExistingAccount::ResetPassword => {
            let p = match password {
                Some(p) => p.to_string(),
                None => {
                    let p = generated_password();
                    out.generated_password = Some(p.clone());
                    p
                }
            };
            let hash = secrets::hash_password(&p)?;
            let mut orgs: Vec<OrgId> = others.iter().map(|(_, o)| o.id).collect();
            orgs.push(org.id);
            let audit: Vec<_> = orgs
                .iter()
                .map(|o| {
                    admin_audit(*o, EventType::PasswordReset).target("user", user.id).details(serde_json::json!({
                        "via": "admin-cli", "email": email, "requested_for_org": org.slug,
                    }))
                })
                .collect();
            // The password changes before the membership exists, so the new membership never signs in with the old
            // one.
            out.sessions_revoked = Some(store.reset_password(user.id, &hash, now, &audit).await?);
            out.password_reset = true;
            store
                .create_membership(
                    &membership(MembershipStatus::Active),
                    None,
                    None,
                    &[created(MembershipStatus::Active)],
                )
                .await?;
        }
    }
    Ok(out)
}

/// A new API key as the CLI prints it.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedKey {
    pub id: evershell_core::ids::ApiKeyId,
    pub org_id: OrgId,
    pub label: String,
    pub permission_set: PermissionSet,
    pub value: String,
}

pub async fn create_api_key(store: &dyn Store, org: &Org, set: PermissionSet, label: &str) -> Result<IssuedKey> {
    let (key, value, hash) = new_key(org.id, label, set, None);
    let audit = admin_audit(org.id, EventType::ApiKeyCreated)
        .target("api_key", key.id)
        .details(serde_json::json!({ "via": "admin-cli", "label": label, "permission_set": set }));
    store.create_api_key(&key, &hash, &[audit]).await?;
    Ok(IssuedKey { id: key.id, org_id: org.id, label: key.label, permission_set: set, value })
}

/// What `admin bootstrap` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    pub org: Org,
    pub owner: AddedUser,
    pub api_key: IssuedKey,
}

/// First org, its first Owner and a `full_access` API key.
pub async fn bootstrap(store: &dyn Store, slug: &str, email: &str, password: Option<&str>) -> Result<Bootstrap> {
    let org = create_org(store, slug).await?;
    let owner = add_user(store, &org, email, MemberRole::Owner, password).await?;
    let api_key = create_api_key(store, &org, PermissionSet::FullAccess, "bootstrap").await?;
    Ok(Bootstrap { org, owner, api_key })
}

/// A session token minted for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct MintedSession {
    pub token: String,
    pub expires_at: Timestamp,
    pub user_id: UserId,
    pub org_id: OrgId,
}

/// Mint a session for `email` in `org` (or the user's only org).
pub async fn mint_user_session(store: &dyn Store, email: &str, org: Option<&str>) -> Result<MintedSession> {
    let email = names::normalize_email(email);
    let user = store
        .get_user_by_email(&email)
        .await?
        .ok_or_else(|| Error::invalid_field("user", format!("no user with email `{email}`")))?;
    let memberships: Vec<_> = store
        .list_user_memberships(user.id)
        .await?
        .into_iter()
        .filter(|(m, _)| m.status == MembershipStatus::Active)
        .collect();
    let org_id = match org {
        Some(o) => {
            let org = find_org(store, o).await?;
            if !memberships.iter().any(|(m, _)| m.org_id == org.id) {
                return Err(Error::invalid_field("org", "the user is not an active member of that organisation"));
            }
            org.id
        }
        None => match memberships.as_slice() {
            [(m, _)] => m.org_id,
            [] => return Err(Error::invalid_field("user", "the user is not an active member of any organisation")),
            _ => return Err(Error::invalid_field("org", "the user belongs to several organisations; pass --org")),
        },
    };
    let (token, session) =
        mint_session(store, &SessionKey::default(), ADMIN_SESSION_TTL_MS, &user, org_id, None).await?;
    Ok(MintedSession { token, expires_at: session.expires_at, user_id: user.id, org_id })
}

pub async fn set_billing(
    store: &dyn Store,
    org: &Org,
    status: BillingStatus,
    trial_ends_at: Option<Timestamp>,
) -> Result<Org> {
    if trial_ends_at.is_some() && status != BillingStatus::Trial {
        return Err(Error::invalid_field("trial_ends_at", "only applies to status `trial`"));
    }
    let audit = admin_audit(org.id, EventType::OrgBillingChanged).target("org", org.id).details(serde_json::json!({
        "via": "admin-cli", "from": org.billing_status, "to": status, "trial_ends_at": trial_ends_at,
    }));
    store.set_org_billing(org.id, status, trial_ends_at, &[audit]).await
}
